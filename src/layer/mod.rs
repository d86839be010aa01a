//! The audit layer and its builder: what turns ordinary `tracing` events
//! carrying `audit.*` fields into audit records.
//!
//! [`AuditLayer`] (also at the crate root) is built by
//! [`AuditLayerBuilder`]; [`CHAIN_KEY_ENV`] names the environment variable
//! a chain key can come from.
//!
//! ```
//! use tracing_audit::layer::{AuditLayerBuilder, CHAIN_KEY_ENV};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let builder: AuditLayerBuilder = tracing_audit::AuditLayer::builder()
//!     .service("billing-api")
//!     .file(dir.path());
//! let (layer, guard) = builder.build::<tracing_subscriber::Registry>()?;
//! assert_eq!(CHAIN_KEY_ENV, "TRACING_AUDIT_CHAIN_KEY");
//! # drop((layer, guard));
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! `AuditLayer`: turns audit events into record bodies on the caller's
//! thread and hands them to the pipeline.
//!
//! Per event: visit the fields into a reused thread-local `Draft`,
//! merge the `audit.*` context of its audit spans (innermost wins; the
//! event's own fields win over any span), encode the body into a reused
//! buffer, and submit it. Sequencing, hashing and I/O happen on the worker.
//!
//! A span with its own `audit.event` is an *audited operation*: when it
//! closes, one record is written for it the same way, with its duration
//! (`details.duration_us`) and the outcome recorded on the span itself, or
//! `unknown` if none was (what an early `?` return or a dropped future
//! leaves); with `record_span_start`, an `<event>_started` record when it
//! opens. Its event type is never passed to the events inside it.

pub(crate) mod builder;
pub(crate) mod capture;
pub(crate) mod filter;
pub use builder::{AuditLayerBuilder, CHAIN_KEY_ENV};

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Subscriber};
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::layer::capture::{merge_span, with_reused, SpanContext};
use crate::layer::filter::{delegate_layer, AuditFilter};
use crate::pipeline::Submitter;
use crate::record::draft::Draft;
use crate::record::fields::ContextField;
use crate::record::redact::Redactor;
use crate::record::{encode_body, uuid_at, RecordConstants, Source};

/// Most span names kept for `source.span`.
const MAX_SPANS: usize = 32;

/// What every clone of the layer needs to make and submit records.
#[derive(Debug)]
pub(crate) struct LayerContext {
    pub(crate) submitter: Submitter,
    /// What the global-filter probe found, for the worker to report.
    pub(crate) probe: crate::pipeline::ProbeSlot,
    pub(crate) constants: RecordConstants,
    /// Longest value kept, in bytes (`max_value_len`).
    pub(crate) value_limit: usize,
    /// Which `details` names are redacted.
    pub(crate) redactor: Option<Arc<Redactor>>,
    /// Write `<event>_started` when an audited span opens.
    pub(crate) span_start: bool,
    /// The subscriber this layer joined (weakly: it owns the layer), for
    /// `tracing-opentelemetry`'s span contexts.
    #[cfg(feature = "opentelemetry")]
    pub(crate) dispatch: std::sync::OnceLock<tracing_core::dispatcher::WeakDispatch>,
}

/// The layer that does the work, behind the per-layer filter.
#[derive(Debug)]
pub(crate) struct AuditCore {
    shared: Arc<LayerContext>,
}

struct Scratch {
    capture: Draft,
    body: Vec<u8>,
    /// Empty body buffers from the worker (the pipeline's `BodyPool`).
    spare: Vec<Vec<u8>>,
}

impl Scratch {
    fn new(value_limit: usize) -> Self {
        Scratch {
            capture: Draft::new(value_limit),
            body: Vec::with_capacity(512),
            spare: Vec::new(),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new(usize::MAX));
}

impl AuditCore {
    fn record<S>(&self, s: &mut Scratch, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let at = SystemTime::now();
        let meta = event.metadata();
        let limit = self.shared.value_limit;
        s.capture.reset(limit);
        s.capture.use_redactor(&self.shared.redactor);
        event.record(&mut s.capture);
        let mut names = [""; MAX_SPANS];
        let mut n = 0;
        let mut cut = false;
        #[cfg(feature = "opentelemetry")]
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                #[cfg(feature = "opentelemetry")]
                if innermost.is_none() {
                    innermost = Some(span.id());
                }
                if n < MAX_SPANS {
                    names[n] = span.name();
                    n += 1;
                } else {
                    cut = true;
                }
                merge_span(&mut s.capture, &span);
            }
        }
        if cut {
            // `source.span` keeps the innermost spans; the record says so.
            s.capture.truncated.push("source.span".to_owned());
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(id) = innermost {
            self.otel_ids(&mut s.capture, &id);
        }
        let source = Source {
            target: meta.target(),
            level: meta.level(),
            spans: &names[..n],
        };
        self.submit(s, at, source);
    }

    /// With `tracing-opentelemetry` in the stack: the W3C trace and span
    /// ids of span `id` into `details` (`trace_id`, `span_id`), so a record
    /// leads to its trace. Nothing without it, or for an invalid context.
    #[cfg(feature = "opentelemetry")]
    fn otel_ids(&self, draft: &mut Draft, id: &Id) {
        if let Some((trace, span)) = self.otel_ids_of(id) {
            draft.detail_str("trace_id", &trace);
            draft.detail_str("span_id", &span);
        }
    }

    /// The W3C trace and span ids `tracing-opentelemetry` keeps for span
    /// `id` (no extension lock may be held by the caller).
    #[cfg(feature = "opentelemetry")]
    fn otel_ids_of(&self, id: &Id) -> Option<(String, String)> {
        use opentelemetry::trace::TraceContextExt as _;
        let dispatch = self.shared.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }

    /// Encodes the draft in `s` and submits it.
    fn submit(&self, s: &mut Scratch, at: SystemTime, source: Source<'_>) {
        let limit = self.shared.value_limit;
        s.body.clear();
        let keys = encode_body(
            &mut s.body,
            &mut s.capture,
            at,
            &self.shared.constants,
            source,
            limit,
        );
        if s.capture.panics > 0 {
            let c = &self.shared.submitter.counters;
            c.error(
                &c.callback_errors,
                "a panic while formatting an audit field was caught; the record keeps a marker and flags the field".into(),
            );
        }
        // The encoded body goes into the queue as it is; an empty buffer
        // from the worker takes its place here.
        let submitter = &self.shared.submitter;
        if s.spare.is_empty() {
            submitter.counters.bodies.take_bundle(&mut s.spare);
        }
        let next = s
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(s.body.len().max(512)));
        let body = std::mem::replace(&mut s.body, next);
        let used = body.len();
        submitter.submit(uuid_at(at), body, keys);
        own_lines(&mut s.body, used);
    }
}

/// Writes one byte in each cache line of the first `len` bytes of `buf`'s
/// spare capacity, so that the next record's body finds them owned by this
/// core.
///
/// A recycled buffer's lines were last read by the worker, on the other
/// core: the first store to each makes this core fetch the line and
/// invalidate the worker's copy. Done while encoding, those ownership
/// requests fill the store buffer and stall the caller; done here, after
/// the record is queued, a dozen stores retire into the store buffer at
/// once and the requests complete in the background (`--only latency`, 16
/// interleaved runs each: p50 350-380 ns against 420-450 ns while the VM's
/// two CPUs are close, 460-480 ns against 750-920 ns while they are far).
#[inline]
fn own_lines(buf: &mut Vec<u8>, len: usize) {
    let len = len.min(buf.capacity());
    let p = buf.as_mut_ptr();
    let mut i = 0;
    while i < len {
        // SAFETY: `i < capacity`, so within the allocation; these bytes are
        // spare capacity (the buffer is empty), which the next encode
        // overwrites. Volatile, so that the store is not optimised away.
        unsafe { p.add(i).write_volatile(0) };
        i += 64;
    }
}

impl AuditCore {
    /// The record of an audited span: `<event>_started` when it opens
    /// (`started`), or `<event>` with its duration when it closes.
    fn span_record<'a, R: LookupSpan<'a>>(
        &self,
        s: &mut Scratch,
        span: &tracing_subscriber::registry::SpanRef<'a, R>,
        started: bool,
    ) {
        let at = SystemTime::now();
        let meta = span.metadata();
        let (event, outcome, took, otel) = {
            let ext = span.extensions();
            let Some(sc) = ext.get::<SpanContext>() else {
                return;
            };
            let Some(event) = sc.event.clone() else {
                return;
            };
            let outcome = sc.own(ContextField::Outcome).map(str::to_owned);
            let took = sc.opened.map(|t| t.elapsed());
            (event, outcome, took, sc.otel_ids.clone())
        };
        #[cfg(not(feature = "opentelemetry"))]
        let _ = otel;
        s.capture.reset(self.shared.value_limit);
        s.capture.use_redactor(&self.shared.redactor);
        if started {
            s.capture.set_event_type(&format!("{event}_started"));
        } else {
            s.capture.set_event_type(&event);
        }
        s.capture.set_message(span.name());
        // The outcome is the span's own, never an enclosing span's: an
        // operation that recorded none ended in a way nobody said.
        let outcome = match (started, &outcome) {
            (false, Some(o)) => o.as_str(),
            _ => "unknown",
        };
        s.capture
            .set_context_if_absent(ContextField::Outcome, outcome);
        if let (false, Some(took)) = (started, took) {
            s.capture.detail_u64(
                "duration_us",
                u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            );
        }
        let mut names = [""; MAX_SPANS];
        let mut n = 0;
        let mut cut = false;
        for sp in span.scope() {
            if n < MAX_SPANS {
                names[n] = sp.name();
                n += 1;
            } else {
                cut = true;
            }
            merge_span(&mut s.capture, &sp);
        }
        if cut {
            s.capture.truncated.push("source.span".to_owned());
        }
        #[cfg(feature = "opentelemetry")]
        match otel {
            Some(ids) => {
                s.capture.detail_str("trace_id", &ids.0);
                s.capture.detail_str("span_id", &ids.1);
            }
            None => self.otel_ids(&mut s.capture, &span.id()),
        }
        let source = Source {
            target: meta.target(),
            level: meta.level(),
            spans: &names[..n],
        };
        self.submit(s, at, source);
    }

    /// Runs [`Self::span_record`] on this thread's scratch, counting a
    /// panic as a lost record.
    fn span_record_guarded<'a, R: LookupSpan<'a>>(
        &self,
        span: &tracing_subscriber::registry::SpanRef<'a, R>,
        started: bool,
    ) {
        let fresh = || Scratch::new(self.shared.value_limit);
        if !with_reused(&SCRATCH, fresh, |s| self.span_record(s, span, started)) {
            let c = &self.shared.submitter.counters;
            c.error(
                &c.callback_errors,
                "a panic while recording an audited span was caught".into(),
            );
            c.dropped(crate::pipeline::DropCause::Panic, 1);
        }
    }

    /// An audited span's OpenTelemetry ids, kept for its record at close.
    #[cfg(feature = "opentelemetry")]
    fn keep_otel_ids<'a, R: LookupSpan<'a>>(
        &self,
        span: &tracing_subscriber::registry::SpanRef<'a, R>,
    ) {
        let audited = span
            .extensions()
            .get::<SpanContext>()
            .is_some_and(|sc| sc.event.is_some());
        if !audited {
            return;
        }
        if let Some(ids) = self.otel_ids_of(&span.id()) {
            if let Some(sc) = span.extensions_mut().get_mut::<SpanContext>() {
                sc.otel_ids = Some(Box::new(ids));
            }
        }
    }

    fn span_panic(&self) {
        let c = &self.shared.submitter.counters;
        c.error(
            &c.callback_errors,
            "a panic while recording a span's audit fields was caught; the span keeps the values that formatted".into(),
        );
    }
}

impl<S> Layer<S> for AuditCore
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing_core::Dispatch) {
        // The subscriber is complete now: ask it once whether ordinary
        // audit events get through (a global filter discards them before
        // any layer could notice).
        #[cfg(feature = "opentelemetry")]
        let _ = self.shared.dispatch.set(subscriber.downgrade());
        let found = crate::layer::filter::probe(subscriber);
        if let Ok(mut p) = self.shared.probe.lock() {
            *p = Some(found);
        }
        self.shared.submitter.waker.wake();
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if !SpanContext::on_new_span(attrs, &span, self.shared.value_limit) {
                self.span_panic();
            }
            #[cfg(feature = "opentelemetry")]
            self.keep_otel_ids(&span);
            if self.shared.span_start {
                self.span_record_guarded(&span, true);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            self.span_record_guarded(&span, false);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if !SpanContext::on_record(values, &span, self.shared.value_limit) {
                self.span_panic();
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let fresh = || Scratch::new(self.shared.value_limit);
        if !with_reused(&SCRATCH, fresh, |s| self.record(s, event, &ctx)) {
            let c = &self.shared.submitter.counters;
            c.error(
                &c.callback_errors,
                "a panic while recording an audit event was caught".into(),
            );
            c.dropped(crate::pipeline::DropCause::Panic, 1);
        }
    }
}

/// A [`Layer`] that writes every `audit.*` event to a tamper-evident trail.
///
/// Built with [`AuditLayer::builder`]; see the crate docs for the field
/// convention. It selects its callsites with a per-layer filter, so other
/// layers in the stack see exactly what they saw without it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// use tracing_subscriber::prelude::*;
/// let (audit, guard) = tracing_audit::AuditLayer::builder().file(dir).build()?;
/// tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
///     tracing::warn!(audit.event = "auth_failure", audit.actor = "mallory", "bad password");
/// });
/// drop(guard);
/// # Ok(()) }
/// ```
pub struct AuditLayer<S> {
    pub(crate) inner: Filtered<AuditCore, AuditFilter, S>,
}

impl<S> AuditLayer<S> {
    pub(crate) fn new(shared: Arc<LayerContext>) -> Self {
        AuditLayer {
            inner: Filtered::new(AuditCore { shared }, AuditFilter),
        }
    }
}

impl AuditLayer<()> {
    /// Starts configuring an audit layer.
    pub fn builder() -> crate::layer::AuditLayerBuilder {
        crate::layer::AuditLayerBuilder::default()
    }
}

impl<S> std::fmt::Debug for AuditLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer").finish_non_exhaustive()
    }
}

delegate_layer!(AuditLayer);
