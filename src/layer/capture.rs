//! Reading the `audit.*` context of spans, and the reused per-thread
//! [`Draft`] an event is visited into.
//!
//! [`SpanContext`] is the private extension stored once per audit span and
//! updated by `Span::record`; [`merge_span`] copies it into an event's
//! draft. Both `AuditLayer` and `PolicyLayer` use these: there is one
//! reading of the convention.
//!
//! May use: `record` (the draft and the field convention).

use std::fmt;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Record};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

#[cfg(all(tracing_unstable, feature = "valuable"))]
use crate::record::draft::primitive_text;
use crate::record::draft::{error_chain, fmt_bounded, Draft, PANICKED};
use crate::record::encode;
use crate::record::fields::{classify, AuditName, ContextField, CONTEXT_SLOTS};

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

/// Fills unset context slots of `draft` from one audit span. Call it for
/// the event's spans innermost first, so the innermost value wins.
pub(crate) fn merge_span<'a, R: LookupSpan<'a>>(draft: &mut Draft, span: &SpanRef<'a, R>) {
    if draft.context_full() {
        return;
    }
    let ext = span.extensions();
    if let Some(sc) = ext.get::<SpanContext>() {
        draft.merge_context(&sc.values, &sc.dropped);
    }
}

/// The `audit.*` context of one span, stored in its extensions.
///
/// Values are formatted *before* the span's extensions are locked, under
/// `catch_unwind`: a panicking `Debug` is caught (and counted by the caller)
/// instead of reaching the application or poisoning the lock, and a `Debug`
/// that emits an event (which reads the extensions) cannot deadlock. Each
/// value is cut to the value limit as it is formatted.
#[derive(Debug, Clone)]
pub(crate) struct SpanContext {
    values: [Option<String>; CONTEXT_SLOTS],
    dropped: [usize; CONTEXT_SLOTS],
    limit: usize,
    /// Values whose `Debug` panicked (kept as a marker).
    panics: u32,
    /// The span's own `audit.event`: it is an audited operation, recorded
    /// when it closes. Never merged into the events inside it.
    pub(crate) event: Option<String>,
    /// When the span opened (for an audited operation's duration).
    pub(crate) opened: Option<std::time::Instant>,
    /// An audited span's OpenTelemetry trace and span ids, taken when it
    /// opens (by the time it closes, `tracing-opentelemetry` has ended it).
    pub(crate) otel_ids: Option<Box<(String, String)>>,
}

impl SpanContext {
    fn new(limit: usize) -> Self {
        SpanContext {
            values: Default::default(),
            dropped: [0; CONTEXT_SLOTS],
            limit,
            panics: 0,
            event: None,
            opened: None,
            otel_ids: None,
        }
    }

    /// The span's own value of a context field (not its parents').
    pub(crate) fn own(&self, c: ContextField) -> Option<&str> {
        self.values[c as usize].as_deref()
    }

    /// Reads a new span's attributes (outside any lock).
    fn from_attrs(attrs: &Attributes<'_>, limit: usize) -> Option<Self> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut sc = SpanContext::new(limit);
            attrs.record(&mut sc);
            sc
        }))
        .ok()
    }

    /// Stores the context of a new span. Both layers call this; whichever
    /// comes first inserts, the second finds it there (inserting twice would
    /// panic inside `Extensions::insert`). Returns `false` if formatting a
    /// value panicked (the span then carries the values that did format).
    pub(crate) fn on_new_span<'a, R: LookupSpan<'a>>(
        attrs: &Attributes<'_>,
        span: &SpanRef<'a, R>,
        limit: usize,
    ) -> bool {
        if span.extensions().get::<SpanContext>().is_some() {
            return true;
        }
        let (mut sc, ok) = match SpanContext::from_attrs(attrs, limit) {
            Some(sc) => {
                let ok = sc.panics == 0;
                (sc, ok)
            }
            None => (SpanContext::new(limit), false),
        };
        if sc.event.is_some() {
            sc.opened = Some(std::time::Instant::now());
        }
        let mut ext = span.extensions_mut();
        if ext.get_mut::<SpanContext>().is_none() {
            ext.insert(sc);
        }
        ok
    }

    /// Applies a `Span::record` to a stored span: the new values are
    /// formatted first, then merged under the lock. Idempotent, so two
    /// layers may both call it. Returns `false` if formatting panicked.
    pub(crate) fn on_record<'a, R: LookupSpan<'a>>(
        values: &Record<'_>,
        span: &SpanRef<'a, R>,
        limit: usize,
    ) -> bool {
        let delta = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut d = SpanContext::new(limit);
            values.record(&mut d);
            d
        }));
        let Ok(delta) = delta else { return false };
        let ok = delta.panics == 0;
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanContext>() {
            Some(sc) => sc.merge(delta),
            None => {
                ext.insert(delta);
            }
        }
        ok
    }

    fn merge(&mut self, delta: SpanContext) {
        if delta.event.is_some() {
            // Recorded late: the operation is audited from here on.
            self.opened.get_or_insert_with(std::time::Instant::now);
            self.event = delta.event;
        }
        for (i, v) in delta.values.into_iter().enumerate() {
            if v.is_some() {
                self.values[i] = v;
                self.dropped[i] = delta.dropped[i];
            }
        }
    }

    fn set(&mut self, c: ContextField, v: &str) {
        let kept = encode::cut_str(v, self.limit);
        self.values[c as usize] = Some(kept.to_owned());
        self.dropped[c as usize] = v.len() - kept.len();
    }

    fn set_debug(&mut self, c: ContextField, v: &dyn fmt::Debug) {
        let mut s = String::new();
        match fmt_bounded(&mut s, v, self.limit) {
            Some(dropped) => {
                self.dropped[c as usize] = dropped;
                self.values[c as usize] = Some(s);
            }
            None => {
                self.panics += 1;
                self.dropped[c as usize] = 0;
                self.values[c as usize] = Some(PANICKED.to_owned());
            }
        }
    }
}

impl Visit for SpanContext {
    fn record_str(&mut self, field: &Field, value: &str) {
        match classify(field.name()) {
            Some(AuditName::Context(c)) => self.set(c, value),
            Some(AuditName::Event) => {
                self.event = Some(encode::cut_str(value, self.limit).to_owned());
            }
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match classify(field.name()) {
            Some(AuditName::Context(c)) => self.set_debug(c, value),
            Some(AuditName::Event) => {
                let mut s = String::new();
                self.event = Some(match fmt_bounded(&mut s, value, self.limit) {
                    Some(_) => s,
                    None => {
                        self.panics += 1;
                        PANICKED.to_owned()
                    }
                });
            }
            _ => {}
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if let Some(AuditName::Context(c)) = classify(field.name()) {
            self.set(c, &error_chain(value));
        }
    }

    #[cfg(all(tracing_unstable, feature = "valuable"))]
    fn record_value(&mut self, field: &Field, value: valuable::Value<'_>) {
        if let Some(AuditName::Context(c)) = classify(field.name()) {
            match primitive_text(value) {
                Some(text) => self.set(c, &text),
                None => self.set_debug(c, &value),
            }
        }
    }
}
