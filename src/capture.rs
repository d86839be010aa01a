//! Reading one audit event's fields, and its spans' `audit.*` context.
//!
//! [`Capture`] is filled by visiting an event: `audit.*` values go to slots,
//! the `message` to its own slot, everything else straight into the
//! `details` JSON with its type kept. It is reused (thread-local in the
//! layers), so a steady stream of events allocates nothing here.
//!
//! [`SpanContext`] is the private extension stored once per audit span and
//! updated by `Span::record`. Both `AuditLayer` and `PolicyLayer` use these
//! two types: there is one reading of the convention.

use std::fmt::{self, Write as _};
use std::ops::Range;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Record};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::encode;
use crate::fields::{classify, AuditName, ContextField, Outcome, Risk, CONTEXT_SLOTS};

/// Runs `f` on this thread's reusable `T`, or on a fresh one when that is
/// already borrowed (an event emitted while another is being recorded, say
/// from a field's `Debug` impl) or destroyed (thread exit). Returns `false`
/// if `f` panicked: user code runs inside, and no panic may escape a layer
/// callback.
pub(crate) fn with_reused<T>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    fresh: impl FnOnce() -> T,
    f: impl Fn(&mut T),
) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let done = key
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut v) => {
                    f(&mut v);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !done {
            f(&mut fresh());
        }
    }))
    .is_ok()
}

/// Everything one audit event says, before it is encoded.
#[derive(Debug)]
pub(crate) struct Capture {
    /// Backing text for `event`, `ctx` and `message`.
    arena: String,
    event: Option<Range<usize>>,
    ctx: [Option<Range<usize>>; CONTEXT_SLOTS],
    message: Option<Range<usize>>,
    /// The inside of the `details` object: `"k":v,"k2":v2`.
    pub(crate) details: Vec<u8>,
    /// Fields whose value did not parse; kept as given in `details`.
    pub(crate) invalid: Vec<&'static str>,
    /// Fields whose value was cut to the limit.
    pub(crate) truncated: Vec<&'static str>,
    /// Scratch for formatting `Debug` values headed for `details`.
    scratch: String,
    /// Longest value kept, in bytes.
    limit: usize,
    /// Whether non-audit fields are encoded into `details` (policy
    /// counting only needs the `audit.*` slots).
    keep_details: bool,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Self {
        Capture {
            arena: String::with_capacity(256),
            event: None,
            ctx: Default::default(),
            message: None,
            details: Vec::with_capacity(256),
            invalid: Vec::new(),
            truncated: Vec::new(),
            scratch: String::new(),
            limit,
            keep_details: true,
        }
    }

    /// A capture that reads only the `audit.*` slots and skips `details`.
    pub(crate) fn audit_only() -> Self {
        let mut c = Capture::new(usize::MAX);
        c.keep_details = false;
        c
    }

    /// Empties the capture for the next event, keeping its allocations.
    pub(crate) fn reset(&mut self, limit: usize) {
        self.arena.clear();
        self.event = None;
        self.ctx = Default::default();
        self.message = None;
        self.details.clear();
        self.invalid.clear();
        self.truncated.clear();
        self.limit = limit;
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
        self.arena.push_str(s);
        start..self.arena.len()
    }

    fn push_arena_fmt(&mut self, v: &dyn fmt::Debug) -> Range<usize> {
        let start = self.arena.len();
        let _ = write!(self.arena, "{v:?}");
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

    fn detail_key(&mut self, name: &str) {
        if !self.keep_details {
            return;
        }
        if !self.details.is_empty() {
            self.details.push(b',');
        }
        encode::write_plain_str(&mut self.details, name);
        self.details.push(b':');
    }

    /// Adds a string value to `details`, truncating to the limit.
    pub(crate) fn detail_str(&mut self, name: &'static str, v: &str) {
        if !self.keep_details {
            return;
        }
        self.detail_key(name);
        if encode::write_str(&mut self.details, v, self.limit) {
            self.truncated.push(name);
        }
    }

    /// Adds an unsigned number to `details`.
    pub(crate) fn detail_u64(&mut self, name: &'static str, v: u64) {
        if !self.keep_details {
            return;
        }
        self.detail_key(name);
        encode::write_u64(&mut self.details, v);
    }

    /// Adds an already-encoded JSON value to `details`.
    pub(crate) fn detail_raw(&mut self, name: &str, json: &[u8]) {
        if !self.keep_details {
            return;
        }
        self.detail_key(name);
        self.details.extend_from_slice(json);
    }

    fn detail_debug(&mut self, name: &'static str, v: &dyn fmt::Debug) {
        if !self.keep_details {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{v:?}");
        self.detail_str(name, &scratch);
        self.scratch = scratch;
    }

    /// Resolves `audit.risk`: parsed if valid, else the level's default, with
    /// the raw value kept in `details` and flagged.
    pub(crate) fn resolve_risk(&mut self, level: &tracing_core::Level) -> Risk {
        let raw = self.ctx[ContextField::Risk as usize].clone();
        match raw.map(|r| (self.arena[r.clone()].parse::<Risk>(), r)) {
            None => Risk::from_level(level),
            Some((Ok(risk), _)) => risk,
            Some((Err(_), r)) => {
                let s = self.arena[r].to_owned();
                self.detail_str("audit.risk", &s);
                self.invalid.push("audit.risk");
                Risk::from_level(level)
            }
        }
    }

    /// Resolves `audit.outcome` the same way (default `unknown`).
    pub(crate) fn resolve_outcome(&mut self) -> Outcome {
        let raw = self.ctx[ContextField::Outcome as usize].clone();
        match raw.map(|r| (self.arena[r.clone()].parse::<Outcome>(), r)) {
            None => Outcome::Unknown,
            Some((Ok(o), _)) => o,
            Some((Err(_), r)) => {
                let s = self.arena[r].to_owned();
                self.detail_str("audit.outcome", &s);
                self.invalid.push("audit.outcome");
                Outcome::Unknown
            }
        }
    }

    /// Fills unset context slots from one audit span. Call it for the
    /// event's spans innermost first, so the innermost value wins.
    pub(crate) fn merge_span<'a, R: LookupSpan<'a>>(&mut self, span: &SpanRef<'a, R>) {
        if self.ctx.iter().all(Option::is_some) {
            return;
        }
        let ext = span.extensions();
        if let Some(sc) = ext.get::<SpanContext>() {
            for (i, v) in sc.values.iter().enumerate() {
                if let (None, Some(v)) = (&self.ctx[i], v) {
                    let start = self.arena.len();
                    self.arena.push_str(v);
                    self.ctx[i] = Some(start..self.arena.len());
                }
            }
        }
    }

    fn record_string(&mut self, field: &Field, v: &str) {
        let name = field.name();
        match classify(name) {
            Some(AuditName::Event) => self.event = Some(self.push_arena(v)),
            Some(AuditName::Context(c)) => self.ctx[c as usize] = Some(self.push_arena(v)),
            Some(AuditName::Details) => self.detail_str(name, v),
            Some(AuditName::Unknown) => {
                self.detail_str(name, v);
                self.invalid.push(name);
            }
            None if name == "message" && !self.keep_details => {}
            None if name == "message" => self.message = Some(self.push_arena(v)),
            None => self.detail_str(name.strip_prefix("r#").unwrap_or(name), v),
        }
    }

    /// For typed values: audit slots take their text, `details` keeps the type.
    fn record_typed(&mut self, field: &Field, v: &dyn fmt::Debug, json: impl FnOnce(&mut Vec<u8>)) {
        let name = field.name();
        match classify(name) {
            Some(AuditName::Event) => self.event = Some(self.push_arena_fmt(v)),
            Some(AuditName::Context(c)) => self.ctx[c as usize] = Some(self.push_arena_fmt(v)),
            None if name == "message" && !self.keep_details => {}
            None if name == "message" => self.message = Some(self.push_arena_fmt(v)),
            other => {
                if !self.keep_details {
                    return;
                }
                let key = name.strip_prefix("r#").unwrap_or(name);
                self.detail_key(key);
                json(&mut self.details);
                if other == Some(AuditName::Unknown) {
                    self.invalid.push(name);
                }
            }
        }
    }
}

impl Visit for Capture {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_string(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        match classify(name) {
            Some(AuditName::Event) => self.event = Some(self.push_arena_fmt(value)),
            Some(AuditName::Context(c)) => self.ctx[c as usize] = Some(self.push_arena_fmt(value)),
            None if name == "message" && !self.keep_details => {}
            None if name == "message" => self.message = Some(self.push_arena_fmt(value)),
            Some(AuditName::Unknown) => {
                self.detail_debug(name, value);
                self.invalid.push(name);
            }
            _ => self.detail_debug(name.strip_prefix("r#").unwrap_or(name), value),
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
            self.invalid.push(field.name());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_typed(field, &value, |b| {
            b.extend_from_slice(if value { b"true" } else { b"false" })
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(text, ": {s}");
            source = s.source();
        }
        self.record_string(field, &text);
    }

    #[cfg(all(tracing_unstable, feature = "valuable"))]
    fn record_value(&mut self, field: &Field, value: valuable::Value<'_>) {
        let ser = valuable_serde::Serializable::new(value);
        match serde_json::to_value(&ser) {
            Ok(serde_json::Value::Object(map)) if field.name() == "audit.details" => {
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
                self.detail_raw(field.name(), &out);
            }
            Err(e) => {
                self.detail_str(field.name(), &format!("<unserialisable: {e}>"));
                self.invalid.push(field.name());
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

/// The `audit.*` context of one span, stored in its extensions.
#[derive(Debug, Default, Clone)]
pub(crate) struct SpanContext {
    values: [Option<String>; CONTEXT_SLOTS],
}

impl SpanContext {
    /// Reads a new span's attributes.
    pub(crate) fn from_attrs(attrs: &Attributes<'_>) -> Self {
        let mut sc = SpanContext::default();
        attrs.record(&mut sc);
        sc
    }

    /// Applies `Span::record` values.
    pub(crate) fn update(&mut self, values: &Record<'_>) {
        values.record(self);
    }

    /// Stores the context of a new span. Both layers call this; whichever
    /// comes first inserts, the second finds it there (inserting twice would
    /// panic inside `Extensions::insert`).
    pub(crate) fn on_new_span<'a, R: LookupSpan<'a>>(
        attrs: &Attributes<'_>,
        span: &SpanRef<'a, R>,
    ) {
        let mut ext = span.extensions_mut();
        if ext.get_mut::<SpanContext>().is_none() {
            ext.insert(SpanContext::from_attrs(attrs));
        }
    }

    /// Applies a `Span::record` to a stored span. Idempotent, so two layers may both call it.
    pub(crate) fn on_record<'a, R: LookupSpan<'a>>(values: &Record<'_>, span: &SpanRef<'a, R>) {
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanContext>() {
            Some(sc) => sc.update(values),
            None => {
                let mut sc = SpanContext::default();
                sc.update(values);
                ext.insert(sc);
            }
        }
    }
}

impl Visit for SpanContext {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(AuditName::Context(c)) = classify(field.name()) {
            self.values[c as usize] = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(AuditName::Context(c)) = classify(field.name()) {
            self.values[c as usize] = Some(format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_keeps_nothing() {
        let mut c = Capture::new(10);
        c.set_event_type("x");
        c.set_message("m");
        c.detail_u64("n", 1);
        c.reset(10);
        assert!(c.event_type().is_none() && c.message().is_none() && c.details.is_empty());
    }

    #[test]
    fn invalid_risk_kept_and_flagged() {
        let mut c = Capture::new(100);
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
