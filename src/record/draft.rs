//! A record before it is encoded: the values one audit event carries.
//!
//! [`Draft`] is filled by visiting an event (its `tracing` `Visit` impl is
//! here: reading a field is deciding where its value goes in the record):
//! `audit.*` values go to slots, the `message` to its own slot, everything
//! else straight into the `details` JSON with its type kept. Invalid values
//! are kept and flagged, long ones cut and flagged. It is reused
//! (thread-local in the layers), so a steady stream of events allocates
//! nothing here. The worker fills one for the trail's own records.
//!
//! May use: `record::{fields, encode}`. Knows nothing of spans, layers or
//! the pipeline; span context arrives through [`Draft::merge_context`].

use std::fmt::{self, Write as _};
use std::ops::Range;
use std::sync::Arc;

use tracing_core::callsite::Identifier;
use tracing_core::field::{Field, Visit};

use crate::record::encode;
use crate::record::fields::{classify, AuditName, ContextField, Outcome, Risk, CONTEXT_SLOTS};
use crate::record::redact::Redactor;

/// Everything one audit event says, before it is encoded.
#[derive(Debug)]
pub(crate) struct Draft {
    /// Backing text for `event`, `ctx` and `message`.
    arena: String,
    event: Option<Range<usize>>,
    ctx: [Option<Range<usize>>; CONTEXT_SLOTS],
    message: Option<Range<usize>>,
    /// Bytes a bounded `Debug` left out of each slot: the context slots,
    /// then `audit.event` ([`EVENT_SLOT`]) and the message ([`MESSAGE_SLOT`]).
    dropped: [usize; CONTEXT_SLOTS + 2],
    /// The innermost span's `audit.risk` when the event set its own (an
    /// invalid event value then falls back to it, never below it).
    span_risk: Option<Range<usize>>,
    /// The inside of the `details` object: `"k":v,"k2":v2`.
    pub(crate) details: Vec<u8>,
    /// The keys written to `details`, one after another (see `key_ends`):
    /// every key is unique (a repeated one gets `#2`, `#3`…).
    keys: String,
    /// Where each key in `keys` ends.
    key_ends: Vec<usize>,
    /// The [`key_bit`]s of every key in `keys` and of the crate's own
    /// detail keys: a name whose bit is clear is neither, with no scan.
    key_bits: u64,
    /// Fields whose value did not parse; kept as given in `details`.
    pub(crate) invalid: Vec<String>,
    /// Fields whose value was cut to the limit.
    pub(crate) truncated: Vec<String>,
    /// Values whose `Debug` panicked (each kept as a marker and flagged).
    pub(crate) panics: u32,
    /// Scratch for formatting `Debug` values headed for `details`.
    scratch: String,
    /// Longest value kept, in bytes.
    limit: usize,
    /// Whether non-audit fields are encoded into `details` (policy
    /// counting only needs the `audit.*` slots).
    keep_details: bool,
    /// Which `details` names never reach the trail in clear.
    redactor: Option<Arc<Redactor>>,
    /// Fields whose value was redacted.
    pub(crate) redacted: Vec<String>,
    /// What each recently seen field name means (see [`NameSlot`]).
    /// ([`NAME_SLOTS`] of them once the first field is read.)
    names: Vec<NameSlot>,
    /// The callsite whose fields `site_slots` remembers.
    site: Option<Identifier>,
    /// For each field of `site`, by index, the table slot its name was
    /// last found in ([`NO_SLOT`] until looked up): an event's fields are
    /// found without hashing their names, and a slot is still checked to
    /// hold the name before it is used.
    site_slots: [u8; SITE_FIELDS],
    /// Names worked out again (tests count the table's misses).
    #[cfg(test)]
    name_misses: usize,
}

/// Field names remembered per thread: a two-way table, so that two names
/// of one callsite that hash alike do not evict each other on every event
/// (direct-mapped, that happened with ordinary callsites in most runs,
/// depending on where the loader put the binary: two misses per event).
const NAME_SLOTS: usize = 64;

/// Fields remembered per callsite (a `tracing` callsite has at most 32).
const SITE_FIELDS: usize = 32;

/// A `site_slots` entry not looked up yet.
const NO_SLOT: u8 = u8::MAX;

const _: () = assert!(NAME_SLOTS < NO_SLOT as usize);

/// The first slot of the pair where `name` may sit: from its address.
#[inline]
fn home_slot(name: &'static str) -> usize {
    let at = name.as_ptr() as usize ^ name.len().rotate_left(40);
    (at.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) % NAME_SLOTS
}

/// Whether two static names are the same text at the same address.
#[inline]
fn same_name(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

/// Where [`Draft::audit_str_fast`] leaves a string field.
enum StrPath {
    /// Taken.
    Done,
    /// Remembered, not taken: its class and table slot.
    Known(Option<AuditName>, usize),
    /// Not remembered for this callsite.
    Unknown,
}

/// What a field name means for a draft, worked out once and kept while the
/// thread sees it: its `audit.*` class, whether the redactor hides its
/// value, and its JSON key. Names of `tracing` fields are `&'static str`,
/// so a name is known by its address and length: text at one static
/// address never changes.
#[derive(Debug, Default)]
struct NameSlot {
    name: Option<&'static str>,
    /// Used more recently than the other slot of its pair.
    recent: bool,
    class: Option<AuditName>,
    redact: bool,
    /// The name as a JSON string, quotes included.
    key: Vec<u8>,
}

/// A `details` key: a field's static name (looked up in the table, slot
/// given) or any other text.
#[derive(Clone, Copy, Debug)]
enum DetailKey<'a> {
    Static(&'static str, usize),
    Text(&'a str),
}

impl<'a> DetailKey<'a> {
    fn text(self) -> &'a str {
        match self {
            DetailKey::Static(s, _) => s,
            DetailKey::Text(s) => s,
        }
    }
}

impl Draft {
    pub(crate) fn new(limit: usize) -> Self {
        Draft {
            arena: String::with_capacity(256),
            event: None,
            ctx: Default::default(),
            message: None,
            dropped: [0; CONTEXT_SLOTS + 2],
            span_risk: None,
            details: Vec::with_capacity(256),
            keys: String::new(),
            key_ends: Vec::new(),
            key_bits: RESERVED_BITS,
            panics: 0,
            invalid: Vec::new(),
            truncated: Vec::new(),
            scratch: String::new(),
            limit,
            keep_details: true,
            redactor: None,
            redacted: Vec::new(),
            names: Vec::new(),
            site: None,
            site_slots: [NO_SLOT; SITE_FIELDS],
            #[cfg(test)]
            name_misses: 0,
        }
    }

    /// The table slot of `name`: one of the two of its pair (`i`, `i ^ 1`)
    /// that holds it, else an empty one of them, else the one used less
    /// recently, filled in.
    #[inline]
    fn name_slot(&mut self, name: &'static str) -> usize {
        let i = home_slot(name);
        if self.names.is_empty() {
            self.names.resize_with(NAME_SLOTS, NameSlot::default);
        }
        let holds = |s: &NameSlot| s.name.is_some_and(|n| same_name(n, name));
        let j = i ^ 1;
        for (k, other) in [(i, j), (j, i)] {
            if holds(&self.names[k]) {
                self.names[k].recent = true;
                self.names[other].recent = false;
                return k;
            }
        }
        let k = if self.names[i].name.is_none() || self.names[j].recent {
            i
        } else {
            j
        };
        self.names[k].recent = true;
        self.names[k ^ 1].recent = false;
        let slot = &mut self.names[k];
        slot.name = Some(name);
        slot.class = classify(name);
        slot.redact = self.redactor.as_ref().is_some_and(|r| r.matches(name));
        slot.key.clear();
        encode::write_plain_str(&mut slot.key, name);
        #[cfg(test)]
        {
            self.name_misses += 1;
        }
        k
    }

    /// The class of `field` and its slot in the name table (its `details`
    /// key is `DetailKey::Static(name, slot)`): from the callsite's memo
    /// when the slot there still holds the name, else from
    /// [`name_slot`](Self::name_slot), remembered. Two small values come
    /// back in registers; a pair holding the key came back through the
    /// stack, and the load that read it stalled (12 % of the PolicyLayer's
    /// samples by `perf`).
    #[inline(always)]
    fn field_name(&mut self, field: &Field) -> (Option<AuditName>, usize) {
        if self.site.as_ref() == Some(&field.callsite()) {
            if let Some(&k) = self.site_slots.get(field.index()) {
                if let Some(slot) = self.names.get(usize::from(k)) {
                    if slot.name.is_some_and(|n| same_name(n, field.name())) {
                        return (slot.class, usize::from(k));
                    }
                }
            }
        }
        self.field_name_missed(field)
    }

    /// [`field_name`](Self::field_name) when the memo does not hold it.
    #[inline(never)]
    fn field_name_missed(&mut self, field: &Field) -> (Option<AuditName>, usize) {
        let name = field.name();
        let site = field.callsite();
        if self.site.as_ref() != Some(&site) {
            self.site = Some(site);
            self.site_slots = [NO_SLOT; SITE_FIELDS];
        }
        let at = field.index();
        if let Some(&k) = self.site_slots.get(at) {
            if let Some(slot) = self.names.get(usize::from(k)) {
                if slot.name.is_some_and(|n| same_name(n, name)) {
                    return (slot.class, usize::from(k));
                }
            }
        }
        let i = self.name_slot(name);
        if let Some(k) = self.site_slots.get_mut(at) {
            *k = i as u8;
        }
        (self.names[i].class, i)
    }

    /// The key a non-`audit` field is written under: its name without a
    /// raw identifier's `r#`.
    #[inline]
    fn plain_key(&mut self, name: &'static str, key: DetailKey<'static>) -> DetailKey<'static> {
        match name.strip_prefix("r#") {
            Some(plain) => DetailKey::Static(plain, self.name_slot(plain)),
            None => key,
        }
    }

    /// Redacts with `r` from now on (kept across events: the `Arc` is
    /// cloned only when the layer's redactor differs from the last one).
    pub(crate) fn use_redactor(&mut self, r: &Option<Arc<Redactor>>) {
        let same = match (&self.redactor, r) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.redactor = r.clone();
            // Redaction verdicts were the old redactor's.
            self.names.iter_mut().for_each(|s| s.name = None);
        }
    }

    /// Whether the value of `name` is redacted.
    #[inline]
    fn redacts(&self, key: DetailKey<'_>) -> bool {
        match key {
            DetailKey::Static(_, i) => self.names[i].redact,
            DetailKey::Text(name) => self.redactor.as_ref().is_some_and(|r| r.matches(name)),
        }
    }

    /// Writes `name` with its value redacted (`raw` is the value's text);
    /// with `invalid`, flags it.
    fn detail_redacted(&mut self, name: DetailKey<'_>, raw: &[u8], invalid: bool) {
        let renamed = self.detail_key(name);
        if let Some(r) = &self.redactor {
            r.write_value(&mut self.details, raw);
        }
        let key = renamed.unwrap_or_else(|| name.text().to_owned());
        if invalid {
            self.invalid.push(key.clone());
        }
        self.redacted.push(key);
    }

    /// A capture that reads only the `audit.*` slots and skips `details`.
    pub(crate) fn audit_only() -> Self {
        let mut c = Draft::new(usize::MAX);
        c.keep_details = false;
        c
    }

    /// Empties the capture for the next event, keeping its allocations
    /// unless one event made them oversized (a thread must not keep a huge
    /// buffer for the rest of its life).
    pub(crate) fn reset(&mut self, limit: usize) {
        shrink(&mut self.arena);
        shrink(&mut self.scratch);
        shrink(&mut self.keys);
        if self.details.capacity() > KEEP_BYTES {
            self.details = Vec::with_capacity(256);
        }
        self.arena.clear();
        self.event = None;
        self.ctx = Default::default();
        self.message = None;
        self.dropped = [0; CONTEXT_SLOTS + 2];
        self.span_risk = None;
        self.details.clear();
        self.keys.clear();
        self.key_ends.clear();
        self.key_bits = RESERVED_BITS;
        self.invalid.clear();
        self.truncated.clear();
        self.redacted.clear();
        self.panics = 0;
        self.limit = limit;
    }

    /// Bytes a bounded `Debug` left out of `audit.event`.
    pub(crate) fn event_dropped(&self) -> usize {
        self.dropped[EVENT_SLOT]
    }

    /// Bytes left out of a context value.
    pub(crate) fn context_dropped(&self, f: ContextField) -> usize {
        self.dropped[f as usize]
    }

    /// Bytes left out of the message.
    pub(crate) fn message_dropped(&self) -> usize {
        self.dropped[MESSAGE_SLOT]
    }

    /// A context slot's bytes, for comparing with a known word (no
    /// `str` boundary checks: the range came from [`push_arena`](Self::push_arena)).
    #[inline]
    fn raw_context(&self, f: ContextField) -> Option<&[u8]> {
        let r = self.ctx[f as usize].as_ref()?;
        self.arena.as_bytes().get(r.clone())
    }

    fn get(&self, r: &Option<Range<usize>>) -> Option<&str> {
        r.as_ref().map(|r| &self.arena[r.clone()])
    }

    /// The `audit.event` value.
    pub(crate) fn event_type(&self) -> Option<&str> {
        self.get(&self.event)
    }

    /// A context value (from the event, or merged from spans).
    pub(crate) fn context(&self, f: ContextField) -> Option<&str> {
        self.get(&self.ctx[f as usize])
    }

    /// The event's message.
    pub(crate) fn message(&self) -> Option<&str> {
        self.get(&self.message)
    }

    fn push_arena(&mut self, s: &str) -> Range<usize> {
        let start = self.arena.len();
        // SAFETY: a whole `str` appended to a `String` keeps it UTF-8.
        encode::put(unsafe { self.arena.as_mut_vec() }, s.as_bytes());
        start..self.arena.len()
    }

    /// Formats `v` into the arena, keeping at most `limit` bytes; the count
    /// of the rest goes to `slot`'s dropped count.
    fn push_arena_fmt(&mut self, v: &dyn fmt::Debug, slot: usize, name: &str) -> Range<usize> {
        let start = self.arena.len();
        match fmt_bounded(&mut self.arena, v, self.limit) {
            Some(dropped) => self.dropped[slot] = dropped,
            None => {
                self.arena.truncate(start);
                self.arena.push_str(PANICKED);
                self.panics += 1;
                self.invalid.push(name.to_owned());
            }
        }
        start..self.arena.len()
    }

    /// Sets a context slot if the event did not set it already.
    pub(crate) fn set_context_if_absent(&mut self, f: ContextField, v: &str) {
        if self.ctx[f as usize].is_none() {
            self.ctx[f as usize] = Some(self.push_arena(v));
        }
    }

    /// Sets a value programmatically (records the crate writes itself).
    pub(crate) fn set_event_type(&mut self, v: &str) {
        self.event = Some(self.push_arena(v));
    }

    /// Sets the message programmatically.
    pub(crate) fn set_message(&mut self, v: &str) {
        self.message = Some(self.push_arena(v));
    }

    /// Whether `name` is a key already written or one of the crate's own;
    /// a clear bit answers inline, the rest is a call.
    #[inline(always)]
    fn key_used(&self, name: &str) -> bool {
        self.key_bits & key_bit(name) != 0 && self.key_listed(name)
    }

    #[inline(never)]
    fn key_listed(&self, name: &str) -> bool {
        name == INVALID_KEY || name == TRUNCATED_KEY || name == REDACTED_KEY || {
            // Lengths first: most keys differ there.
            let mut start = 0;
            self.key_ends.iter().any(|&end| {
                let k = &self.keys.as_bytes()[start..end];
                start = end;
                k.len() == name.len() && k == name.as_bytes()
            })
        }
    }

    /// Writes a unique key for `name` (a repeat, or a name the crate uses
    /// itself, gets `#2`, `#3`…). Returns the new name when it renamed
    /// (the common case allocates nothing).
    fn detail_key(&mut self, key: DetailKey<'_>) -> Option<String> {
        let (name, key_slot) = match key {
            DetailKey::Static(name, i) => (name, Some(i)),
            DetailKey::Text(name) => (name, None),
        };
        if !self.details.is_empty() {
            self.details.push(b',');
        }
        let renamed = self.key_used(name).then(|| {
            let mut n = 2;
            loop {
                let key = format!("{name}#{n}");
                if !self.key_used(&key) {
                    break key;
                }
                n += 1;
            }
        });
        let key = renamed.as_deref().unwrap_or(name);
        // SAFETY: a whole `str` appended to a `String` keeps it UTF-8.
        encode::put(unsafe { self.keys.as_mut_vec() }, key.as_bytes());
        self.key_ends.push(self.keys.len());
        self.key_bits |= key_bit(key);
        match (renamed.is_some(), key_slot) {
            (false, Some(i)) => encode::put(&mut self.details, &self.names[i].key),
            _ => encode::write_plain_str(&mut self.details, key),
        }
        self.details.push(b':');
        renamed
    }

    /// Adds a string value to `details`, truncating to the limit.
    pub(crate) fn detail_str(&mut self, name: &str, v: &str) {
        self.detail_str_dropped(DetailKey::Text(name), v, 0, false);
    }

    /// Adds a string value of which `dropped` bytes were already left out;
    /// with `invalid`, flags it (under the key it was written as).
    fn detail_str_dropped(&mut self, name: DetailKey<'_>, v: &str, dropped: usize, invalid: bool) {
        if !self.keep_details {
            return;
        }
        if self.redacts(name) {
            return self.detail_redacted(name, v.as_bytes(), invalid);
        }
        let renamed = self.detail_key(name);
        let cut = encode::write_str_dropped(&mut self.details, v, self.limit, dropped);
        if cut || invalid {
            let key = renamed.unwrap_or_else(|| name.text().to_owned());
            if cut {
                self.truncated.push(key.clone());
            }
            if invalid {
                self.invalid.push(key);
            }
        }
    }

    /// Adds an unsigned number to `details`.
    pub(crate) fn detail_u64(&mut self, name: &str, v: u64) {
        if !self.keep_details {
            return;
        }
        let name = DetailKey::Text(name);
        if self.redacts(name) {
            let mut digits = Vec::new();
            encode::write_u64(&mut digits, v);
            return self.detail_redacted(name, &digits, false);
        }
        self.detail_key(name);
        encode::write_u64(&mut self.details, v);
    }

    /// Adds an already-encoded JSON value to `details`.
    pub(crate) fn detail_raw(&mut self, name: &str, json: &[u8]) {
        if !self.keep_details {
            return;
        }
        let name = DetailKey::Text(name);
        if self.redacts(name) {
            return self.detail_redacted(name, json, false);
        }
        self.detail_key(name);
        self.details.extend_from_slice(json);
    }

    /// Adds a `Debug` value, formatted at most to the limit (the rest is
    /// counted, never built); with `invalid`, flags it.
    fn detail_debug(&mut self, name: DetailKey<'_>, v: &dyn fmt::Debug, invalid: bool) {
        if !self.keep_details {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        match fmt_bounded(&mut scratch, v, self.limit) {
            Some(dropped) => self.detail_str_dropped(name, &scratch, dropped, invalid),
            None => {
                self.panics += 1;
                self.detail_str_dropped(name, PANICKED, 0, true);
            }
        }
        self.scratch = scratch;
    }

    /// Resolves `audit.risk`: parsed if valid, else (kept as given in
    /// `details` and flagged) the innermost span's risk, else the level's
    /// default. An invalid value never lowers the risk below its span's.
    #[inline]
    pub(crate) fn resolve_risk(&mut self, level: &tracing_core::Level) -> Risk {
        match self.raw_context(ContextField::Risk) {
            None => Risk::from_level(level),
            Some(raw) => match Risk::exact(raw) {
                Some(r) => r,
                None => self.resolve_risk_other(level),
            },
        }
    }

    /// [`resolve_risk`](Self::resolve_risk) for a value other than the
    /// exact lower-case word.
    #[inline(never)]
    fn resolve_risk_other(&mut self, level: &tracing_core::Level) -> Risk {
        let raw = self.ctx[ContextField::Risk as usize].clone();
        match raw.map(|r| (self.arena[r.clone()].parse::<Risk>(), r)) {
            None => Risk::from_level(level),
            Some((Ok(risk), _)) => risk,
            Some((Err(_), r)) => {
                let s = self.arena[r].to_owned();
                let dropped = self.dropped[ContextField::Risk as usize];
                self.detail_str_dropped(DetailKey::Text("audit.risk"), &s, dropped, true);
                let from_span = self
                    .span_risk
                    .clone()
                    .and_then(|r| self.arena[r].parse::<Risk>().ok());
                from_span.unwrap_or_else(|| Risk::from_level(level))
            }
        }
    }

    /// Resolves `audit.outcome` the same way (default `unknown`).
    #[inline]
    pub(crate) fn resolve_outcome(&mut self) -> Outcome {
        match self.raw_context(ContextField::Outcome) {
            None => Outcome::Unknown,
            Some(raw) => match Outcome::exact(raw) {
                Some(o) => o,
                None => self.resolve_outcome_other(),
            },
        }
    }

    /// [`resolve_outcome`](Self::resolve_outcome) for a value other than
    /// the exact lower-case word.
    #[inline(never)]
    fn resolve_outcome_other(&mut self) -> Outcome {
        let raw = self.ctx[ContextField::Outcome as usize].clone();
        match raw.map(|r| (self.arena[r.clone()].parse::<Outcome>(), r)) {
            None => Outcome::Unknown,
            Some((Ok(o), _)) => o,
            Some((Err(_), r)) => {
                let s = self.arena[r].to_owned();
                let dropped = self.dropped[ContextField::Outcome as usize];
                self.detail_str_dropped(DetailKey::Text("audit.outcome"), &s, dropped, true);
                Outcome::Unknown
            }
        }
    }

    /// Fills unset context slots from one audit span's values (and the
    /// bytes cut from each). Call it for the event's spans innermost first,
    /// so the innermost value wins; a span's risk under an event's own is
    /// kept as the floor for an invalid event risk.
    pub(crate) fn merge_context(
        &mut self,
        values: &[Option<String>; CONTEXT_SLOTS],
        dropped: &[usize; CONTEXT_SLOTS],
    ) {
        let risk = ContextField::Risk as usize;
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            if self.ctx[i].is_none() {
                let start = self.arena.len();
                self.arena.push_str(v);
                self.ctx[i] = Some(start..self.arena.len());
                self.dropped[i] = dropped[i];
            } else if i == risk && self.span_risk.is_none() {
                let start = self.arena.len();
                self.arena.push_str(v);
                self.span_risk = Some(start..self.arena.len());
            }
        }
    }

    /// Whether every context slot (and the span risk) is set already, so
    /// no outer span can add anything.
    pub(crate) fn context_full(&self) -> bool {
        self.ctx.iter().all(Option::is_some) && self.span_risk.is_some()
    }

    /// [`Visit::record_str`] for a field of a remembered callsite: an
    /// audit slot's value of at most 32 bytes with the room for it in the
    /// arena is taken here ([`StrPath::Done`], the same result as
    /// [`record_string`](Self::record_string)); any other remembered field
    /// comes back with its class and slot, and the rest as unknown.
    #[inline(always)]
    fn audit_str_fast(&mut self, field: &Field, v: &str) -> StrPath {
        if self.site.as_ref() != Some(&field.callsite()) {
            return StrPath::Unknown;
        }
        let Some(&k) = self.site_slots.get(field.index()) else {
            return StrPath::Unknown;
        };
        let Some(slot) = self.names.get(usize::from(k)) else {
            return StrPath::Unknown;
        };
        if !slot.name.is_some_and(|n| same_name(n, field.name())) {
            return StrPath::Unknown;
        }
        let class = slot.class;
        let start = self.arena.len();
        let target = match class {
            Some(AuditName::Event) => &mut self.event,
            Some(AuditName::Context(c)) => match self.ctx.get_mut(c as usize) {
                Some(t) => t,
                None => return StrPath::Known(class, usize::from(k)),
            },
            _ => return StrPath::Known(class, usize::from(k)),
        };
        // SAFETY: a whole `str` appended to a `String` keeps it UTF-8.
        if !encode::put_small_in_room(unsafe { self.arena.as_mut_vec() }, v.as_bytes()) {
            return StrPath::Known(class, usize::from(k));
        }
        *target = Some(start..self.arena.len());
        StrPath::Done
    }

    /// [`Visit::record_str`] when [`audit_str_fast`](Self::audit_str_fast)
    /// does not apply.
    #[inline(never)]
    fn record_str_slow(&mut self, field: &Field, v: &str) {
        self.record_string(field, v);
    }

    /// A string value: the audit slots here, inline (every audit event
    /// has some, and the policy layer has nothing else); the rest in
    /// [`record_string_detail`](Self::record_string_detail).
    #[inline(always)]
    fn record_string(&mut self, field: &Field, v: &str) {
        match self.field_name(field) {
            (Some(AuditName::Event), _) => self.event = Some(self.push_arena(v)),
            (Some(AuditName::Context(c)), _) => self.ctx[c as usize] = Some(self.push_arena(v)),
            (class, slot) => self.record_string_detail(field, class, slot, v),
        }
    }

    #[inline(never)]
    fn record_string_detail(
        &mut self,
        field: &Field,
        class: Option<AuditName>,
        slot: usize,
        v: &str,
    ) {
        // The field, not its name: six arguments in registers, so that
        // `record_str` reaches this with a jump and needs no frame.
        let name = field.name();
        let key = DetailKey::Static(name, slot);
        match class {
            // Taken by `record_string`; kept whole here so no class is lost.
            Some(AuditName::Event) => self.event = Some(self.push_arena(v)),
            Some(AuditName::Context(c)) => self.ctx[c as usize] = Some(self.push_arena(v)),
            Some(AuditName::Details) => self.detail_str_dropped(key, v, 0, false),
            Some(AuditName::Unknown) => self.detail_str_dropped(key, v, 0, true),
            None if name == "message" && !self.keep_details => {}
            None if name == "message" => self.message = Some(self.push_arena(v)),
            None => {
                let key = self.plain_key(name, key);
                self.detail_str_dropped(key, v, 0, false)
            }
        }
    }

    /// For typed values: audit slots take their text, `details` keeps the type.
    fn record_typed(&mut self, field: &Field, v: &dyn fmt::Debug, json: impl FnOnce(&mut Vec<u8>)) {
        let name = field.name();
        let (class, slot) = self.field_name(field);
        let key = DetailKey::Static(name, slot);
        match class {
            Some(AuditName::Event) => self.event = Some(self.push_arena_fmt(v, EVENT_SLOT, name)),
            Some(AuditName::Context(c)) => {
                self.ctx[c as usize] = Some(self.push_arena_fmt(v, c as usize, name))
            }
            None if name == "message" && !self.keep_details => {}
            None if name == "message" => {
                self.message = Some(self.push_arena_fmt(v, MESSAGE_SLOT, name))
            }
            other => {
                if !self.keep_details {
                    return;
                }
                let plain = self.plain_key(name, key);
                if self.redacts(plain) {
                    let mut text = Vec::new();
                    json(&mut text);
                    let unknown = other == Some(AuditName::Unknown);
                    return self.detail_redacted(plain, &text, unknown);
                }
                let renamed = self.detail_key(plain);
                json(&mut self.details);
                if other == Some(AuditName::Unknown) {
                    self.invalid
                        .push(renamed.unwrap_or_else(|| plain.text().to_owned()));
                }
            }
        }
    }
}

/// Oversized buffers are dropped after the event that grew them.
const KEEP_BYTES: usize = 64 * 1024;

/// Where `audit.event` and the message sit in [`Draft`]'s dropped counts.
const EVENT_SLOT: usize = CONTEXT_SLOTS;
const MESSAGE_SLOT: usize = CONTEXT_SLOTS + 1;

/// The keys the crate writes into `details` itself.
const INVALID_KEY: &str = "audit.invalid";
const TRUNCATED_KEY: &str = "audit.truncated";
const REDACTED_KEY: &str = "audit.redacted";

/// One of 64 bits for a key, from its length and its first and last
/// bytes: keys with different bits differ, so most new keys need no
/// comparison with the ones before (the scan was 210 instructions of an
/// event with four details, callgrind).
const fn key_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let (first, last) = match b {
        [] => (0, 0),
        [f, .., l] => (*f, *l),
        [f] => (*f, *f),
    };
    let mix = (b.len() as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((first as u64) << 8 | last as u64)
        .wrapping_mul(0xff51_afd7_ed55_8ccd);
    1 << (mix >> 58)
}

/// The bits of the crate's own detail keys.
const RESERVED_BITS: u64 = key_bit(INVALID_KEY) | key_bit(TRUNCATED_KEY) | key_bit(REDACTED_KEY);

fn shrink(s: &mut String) {
    if s.capacity() > KEEP_BYTES {
        *s = String::with_capacity(256);
    }
}

/// A `fmt::Write` that keeps at most `room` more bytes and counts the rest.
struct Bounded<'a> {
    out: &'a mut String,
    room: usize,
    dropped: usize,
}

impl fmt::Write for Bounded<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.len() <= self.room {
            self.out.push_str(s);
            self.room -= s.len();
        } else {
            let kept = encode::cut_str(s, self.room);
            self.out.push_str(kept);
            self.room = 0;
            self.dropped += s.len() - kept.len();
        }
        Ok(())
    }
}

/// What a value that panicked while formatting is kept as (and flagged).
pub(crate) const PANICKED: &str = "<the value's Debug panicked>";

/// Formats `v` into `out`, keeping at most `limit` bytes of it: a huge
/// `Debug` is never built whole. Returns how many bytes were left out, or
/// `None` if the `Debug` panicked (caught here, so one bad field costs
/// only its own value, never the event or the span).
pub(crate) fn fmt_bounded(out: &mut String, v: &dyn fmt::Debug, limit: usize) -> Option<usize> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = Bounded {
            out,
            room: limit,
            dropped: 0,
        };
        let _ = write!(w, "{v:?}");
        w.dropped
    }))
    .ok()
}

impl Visit for Draft {
    /// An audit slot's value from a remembered callsite, short enough and
    /// with room in the arena (most of them), takes a path that calls
    /// nothing, so this needs no stack frame; anything else is a tail call.
    #[inline]
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.audit_str_fast(field, value) {
            StrPath::Done => {}
            StrPath::Known(class, slot) => self.record_string_detail(field, class, slot, value),
            StrPath::Unknown => self.record_str_slow(field, value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        let (class, slot) = self.field_name(field);
        let key = DetailKey::Static(name, slot);
        match class {
            Some(AuditName::Event) => {
                self.event = Some(self.push_arena_fmt(value, EVENT_SLOT, name))
            }
            Some(AuditName::Context(c)) => {
                self.ctx[c as usize] = Some(self.push_arena_fmt(value, c as usize, name))
            }
            None if name == "message" && !self.keep_details => {}
            None if name == "message" => {
                self.message = Some(self.push_arena_fmt(value, MESSAGE_SLOT, name))
            }
            Some(AuditName::Unknown) => self.detail_debug(key, value, true),
            _ => {
                let key = self.plain_key(name, key);
                self.detail_debug(key, value, false)
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_typed(field, &value, |b| encode::write_i64(b, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_typed(field, &value, |b| encode::write_u64(b, value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        // JSON numbers this large lose precision in most readers; keep the digits.
        self.record_typed(field, &value, |b| {
            encode::write_plain_str(b, &value.to_string())
        });
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.record_typed(field, &value, |b| {
            encode::write_plain_str(b, &value.to_string())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut finite = true;
        self.record_typed(field, &value, |b| finite = encode::write_f64(b, value));
        if !finite {
            self.invalid.push(field.name().to_owned());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_typed(field, &value, |b| {
            b.extend_from_slice(if value { b"true" } else { b"false" })
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_string(field, &error_chain(value));
    }

    #[cfg(all(tracing_unstable, feature = "valuable"))]
    fn record_value(&mut self, field: &Field, value: valuable::Value<'_>) {
        let name = field.name();
        // A convention slot takes a string, number or bool as its text; a
        // structured value cannot fill it and is kept in details, flagged.
        if let Some(AuditName::Event | AuditName::Context(_)) = classify(name) {
            if let Some(text) = primitive_text(value) {
                self.record_string(field, &text);
                return;
            }
        }
        let ser = valuable_serde::Serializable::new(value);
        match serde_json::to_value(&ser) {
            Ok(serde_json::Value::Object(map)) if name == "audit.details" => {
                for (k, v) in map {
                    // Written through this crate's stricter escaper.
                    let mut out = Vec::new();
                    reescape(&v, &mut out);
                    self.detail_raw(&k, &out);
                }
            }
            Ok(v) => {
                let mut out = Vec::new();
                reescape(&v, &mut out);
                self.detail_raw(name, &out);
                if matches!(
                    classify(name),
                    Some(AuditName::Event | AuditName::Context(_) | AuditName::Unknown)
                ) {
                    self.invalid.push(name.to_owned());
                }
            }
            Err(e) => {
                self.detail_str_dropped(
                    DetailKey::Text(name),
                    &format!("<unserialisable: {e}>"),
                    0,
                    true,
                );
            }
        }
    }
}

/// Writes a `serde_json::Value` through this crate's escaper.
#[cfg(all(tracing_unstable, feature = "valuable"))]
fn reescape(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::String(s) => encode::write_plain_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                reescape(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode::write_plain_str(out, k);
                out.push(b':');
                reescape(x, out);
            }
            out.push(b'}');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(value: &(dyn std::error::Error + 'static)) -> String {
    let mut text = value.to_string();
    let mut source = value.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// The text of a `valuable` string, number or bool (what a convention
/// slot can hold); `None` for structured values.
#[cfg(all(tracing_unstable, feature = "valuable"))]
pub(crate) fn primitive_text(value: valuable::Value<'_>) -> Option<String> {
    use valuable::Value as V;
    Some(match value {
        V::String(s) => s.to_owned(),
        V::Bool(b) => b.to_string(),
        V::I8(n) => n.to_string(),
        V::I16(n) => n.to_string(),
        V::I32(n) => n.to_string(),
        V::I64(n) => n.to_string(),
        V::U8(n) => n.to_string(),
        V::U16(n) => n.to_string(),
        V::U32(n) => n.to_string(),
        V::U64(n) => n.to_string(),
        V::F32(n) => n.to_string(),
        V::F64(n) => n.to_string(),
        V::Char(c) => c.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_keeps_nothing() {
        let mut c = Draft::new(10);
        c.set_event_type("x");
        c.set_message("m");
        c.detail_u64("n", 1);
        c.reset(10);
        assert!(c.event_type().is_none() && c.message().is_none() && c.details.is_empty());
    }

    /// 300 keys of every length and many first and last bytes (so many
    /// share a [`key_bit`]), each given three times, and the crate's own
    /// list keys: every repeat is renamed, never two keys alike, across a
    /// reset too.
    #[test]
    fn every_repeated_key_is_renamed_whatever_its_bit() {
        let mut c = Draft::new(100);
        for n in [INVALID_KEY, TRUNCATED_KEY, REDACTED_KEY] {
            // Alone, so no other key's bit can stand in for its own.
            c.reset(100);
            c.detail_str(n, "mine");
            let expect = format!("\"{n}#2\":\"mine\"");
            assert_eq!(String::from_utf8(c.details.clone()).unwrap(), expect);
        }
        for round in 0..2 {
            c.reset(100);
            let names: Vec<String> = (0..300)
                .map(|i| {
                    let len = 1 + i % 23;
                    let first = char::from(b'a' + (i % 7) as u8);
                    let last = char::from(b'a' + (i / 7 % 5) as u8);
                    let mid: String = format!("{i}").chars().cycle().take(len).collect();
                    format!("{first}{mid}{last}")
                })
                .collect();
            for n in names.iter().chain(&names).chain(&names) {
                c.detail_str(n, "v");
            }
            for n in [INVALID_KEY, TRUNCATED_KEY, REDACTED_KEY] {
                c.detail_str(n, "mine");
            }
            let json = format!("{{{}}}", String::from_utf8(c.details.clone()).unwrap());
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&json).unwrap();
            // serde_json keeps the last of equal keys: the count shows none.
            assert_eq!(map.len(), 903, "round {round}");
            for n in &names {
                for k in [n.clone(), format!("{n}#2"), format!("{n}#3")] {
                    assert!(map.contains_key(&k), "{k} missing");
                }
            }
            for n in [INVALID_KEY, TRUNCATED_KEY, REDACTED_KEY] {
                assert!(!map.contains_key(n) && map.contains_key(&format!("{n}#2")));
            }
        }
    }

    /// Visits every event into one reused draft per redactor, in turn (as
    /// two layers with different redaction on one thread do), and keeps
    /// each `details`.
    struct Visits {
        redactors: Vec<Option<Arc<Redactor>>>,
        out: Arc<std::sync::Mutex<Vec<String>>>,
        draft: std::sync::Mutex<Draft>,
    }

    impl<S: tracing_core::Subscriber> tracing_subscriber::Layer<S> for Visits {
        fn on_event(
            &self,
            e: &tracing_core::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut d = self.draft.lock().unwrap();
            for r in &self.redactors {
                d.use_redactor(r);
                d.reset(100);
                e.record(&mut *d);
                let details = String::from_utf8(d.details.clone()).unwrap();
                self.out.lock().unwrap().push(details);
            }
        }
    }

    /// The per-thread table of field names must never change a record: a
    /// name redacted under one redactor is clear under another on the same
    /// thread, raw identifiers lose their `r#`, and more names than the
    /// table holds (evicting one another) each keep their own key.
    #[test]
    fn remembered_field_names_give_the_same_details() {
        use tracing_subscriber::layer::SubscriberExt;
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let redactor = Redactor::new(&["password".to_owned()], None).map(Arc::new);
        let visits = Visits {
            redactors: vec![redactor, None],
            out: out.clone(),
            draft: std::sync::Mutex::new(Draft::new(100)),
        };
        macro_rules! many {
            ($($a:ident $b:ident),*) => {
                $( tracing::info!($a = 1u64, $b = "x", password = "p", r#type = true); )*
            };
        }
        tracing::subscriber::with_default(tracing_subscriber::registry().with(visits), || {
            for _ in 0..2 {
                many!(a0 b0, a1 b1, a2 b2, a3 b3, a4 b4, a5 b5, a6 b6, a7 b7, a8 b8, a9 b9,
                    a10 b10, a11 b11, a12 b12, a13 b13, a14 b14, a15 b15, a16 b16, a17 b17,
                    a18 b18, a19 b19, a20 b20, a21 b21, a22 b22, a23 b23, a24 b24, a25 b25,
                    a26 b26, a27 b27, a28 b28, a29 b29, a30 b30, a31 b31, a32 b32, a33 b33);
            }
        });
        let out = out.lock().unwrap();
        assert_eq!(out.len(), 2 * 34 * 2);
        for (n, details) in out.iter().enumerate() {
            let i = (n / 2) % 34;
            let password = if n % 2 == 0 {
                "\"[redacted]\""
            } else {
                "\"p\""
            };
            assert_eq!(
                details,
                &format!(r#""a{i}":1,"b{i}":"x","password":{password},"type":true"#),
                "event {n}"
            );
        }
    }

    /// Names whose addresses hash to one slot: two of them stay
    /// remembered side by side (direct-mapped, they evicted each other on
    /// every event), and a third evicts the one used less recently, each
    /// lookup still giving the name's own class and key.
    #[test]
    fn names_sharing_a_slot_pair_are_both_remembered() {
        let names: Vec<&'static str> = (0..4000)
            .map(|i| &*Box::leak(format!("audit.field{i}").into_boxed_str()))
            .collect();
        // Same home slot: what a direct-mapped table could not hold together.
        let home = home_slot(names[0]);
        let same: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|&n| home_slot(n) == home)
            .collect();
        assert!(same.len() >= 3, "4 000 names fill every slot");
        let (a, b, c) = (same[0], same[1], same[2]);
        let mut d = Draft::new(100);
        let check = |d: &mut Draft, n: &'static str| {
            let k = d.name_slot(n);
            assert_eq!(d.names[k].name, Some(n));
            assert_eq!(d.names[k].class, Some(AuditName::Unknown));
            assert_eq!(d.names[k].key, format!("\"{n}\"").as_bytes());
        };
        for _ in 0..100 {
            check(&mut d, a);
            check(&mut d, b);
        }
        assert_eq!(d.name_misses, 2, "two names of one pair both stay");
        check(&mut d, c); // evicts a (b was used more recently)
        check(&mut d, b);
        assert_eq!(d.name_misses, 3);
        check(&mut d, a); // evicts c
        assert_eq!(d.name_misses, 4);
        for n in [a, b, c, a, c, b] {
            check(&mut d, n);
        }
    }

    /// The per-callsite memo finds an event's fields without the table's
    /// hash, and is trusted only while the slot it names still holds the
    /// field's name: after every slot was taken by another name, each
    /// field is worked out again and keeps its own class and key.
    #[test]
    fn a_callsite_memo_is_used_only_while_its_slot_holds_the_name() {
        use tracing_subscriber::layer::SubscriberExt;
        struct Check(Arc<std::sync::atomic::AtomicUsize>);
        impl<S: tracing_core::Subscriber> tracing_subscriber::Layer<S> for Check {
            fn on_event(
                &self,
                e: &tracing_core::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let fields: Vec<Field> = e.fields().collect();
                let mut d = Draft::new(100);
                let look = |d: &mut Draft| {
                    for f in &fields {
                        let (class, k) = d.field_name(f);
                        assert_eq!(class, classify(f.name()), "{f}");
                        assert!(same_name(d.names[k].name.unwrap(), f.name()));
                    }
                };
                look(&mut d);
                assert_eq!(d.name_misses, fields.len());
                look(&mut d);
                assert_eq!(d.name_misses, fields.len(), "found through the memo");
                for slot in d.names.iter_mut() {
                    slot.name = Some("evicted");
                    slot.class = Some(AuditName::Unknown);
                }
                look(&mut d);
                assert_eq!(d.name_misses, 2 * fields.len(), "every stale slot seen");
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let layer = Check(done.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::info!(audit.event = "x", audit.actor = "a", note = 1u64, "m");
        });
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn invalid_risk_kept_and_flagged() {
        let mut c = Draft::new(100);
        c.set_context_if_absent(ContextField::Risk, "severe");
        let r = c.resolve_risk(&tracing_core::Level::ERROR);
        assert_eq!(r, Risk::High);
        assert_eq!(c.invalid, vec!["audit.risk"]);
        assert_eq!(
            std::str::from_utf8(&c.details).unwrap(),
            r#""audit.risk":"severe""#
        );
    }
}
