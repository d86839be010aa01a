//! The per-layer filter that selects audit callsites, and the delegation
//! that lets a public layer type wrap a private `Filtered` layer.
//!
//! Selection is per layer, never global: `callsite_enabled` answers
//! `always`/`never` for *this* layer only, so every other layer in the
//! user's stack keeps seeing every event (`tracing-subscriber`'s "Per-Layer
//! Filtering"). `Layer::register_callsite` returning `never` would disable
//! the callsite for the whole subscriber, which must never happen.

use std::cell::Cell;

use tracing_core::callsite::Callsite;
use tracing_core::dispatcher::Dispatch;
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;
use tracing_core::subscriber::Interest;
use tracing_core::LevelFilter;
use tracing_core::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

use crate::pipeline::Probed;
use crate::record::fields::is_audit_callsite;

/// Lets through audit events (`audit.event`) and audit spans (any `audit.*`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AuditFilter;

impl<S> Filter<S> for AuditFilter {
    #[inline]
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        // Every event of the application passes here: the common answer
        // (not audit) is one scan of its field names, the probe's pointer
        // test only runs for audit callsites (the probes are ones).
        if !audit_callsite_cached(meta) {
            return false;
        }
        if PROBE_META.iter().any(|p| std::ptr::eq(meta, p)) {
            PROBE_REACHED.with(|r| r.set(true));
        }
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_audit_callsite(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
}

/// Entries of [`AUDIT_SEEN`].
const SEEN: usize = 8;

thread_local! {
    /// The callsites this thread's events last came from, with whether
    /// each is an audit callsite: a direct-mapped table keyed by the
    /// callsite's address (a callsite is static and has one field set, so
    /// the answer never changes; the metadata's own address would not do,
    /// since a bridge such as `tracing-log` builds metadata on the stack).
    static AUDIT_SEEN: [Cell<(usize, bool)>; SEEN] =
        const { [const { Cell::new((0, false)) }; SEEN] };
}

/// [`is_audit_callsite`], remembered per callsite and thread: every event
/// of the application passes the filter, and the scan compares each of
/// its field names with `audit.event` (a same-length one byte by byte).
/// `--only plain`: +2.1-2.3 ns for a non-audit event with the scan, +0.8-1.1
/// with this table (a no-op per-layer filter: +0.5-0.9).
#[inline]
fn audit_callsite_cached(meta: &Metadata<'_>) -> bool {
    // The address `Identifier`'s equality compares. (Its field is public
    // but not promised; if it changes, this stops compiling.)
    let key = meta.callsite().0 as *const dyn Callsite as *const () as usize;
    let slot = (key >> 4) % SEEN;
    AUDIT_SEEN
        .try_with(|seen| {
            let (k, audit) = seen[slot].get();
            if k == key {
                return audit;
            }
            let audit = is_audit_callsite(meta);
            seen[slot].set((key, audit));
            audit
        })
        .unwrap_or_else(|_| is_audit_callsite(meta))
}

/// Callsites that are never reached: their metadata, audit events at INFO,
/// WARN and ERROR, ask the user's subscriber whether audit events get
/// through.
struct Probe(usize);

static PROBES: [Probe; 3] = [Probe(0), Probe(1), Probe(2)];

macro_rules! probe_meta {
    ($i:expr, $level:expr) => {
        Metadata::new(
            "tracing-audit level probe",
            "tracing_audit::probe",
            $level,
            None,
            None,
            None,
            FieldSet::new(
                &["audit.event"],
                tracing_core::identify_callsite!(&PROBES[$i]),
            ),
            Kind::EVENT,
        )
    };
}

static PROBE_META: [Metadata<'static>; 3] = [
    probe_meta!(0, Level::INFO),
    probe_meta!(1, Level::WARN),
    probe_meta!(2, Level::ERROR),
];

impl Callsite for Probe {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        &PROBE_META[self.0]
    }
}

thread_local! {
    /// A probe reached an audit layer's filter on this thread.
    static PROBE_REACHED: Cell<bool> = const { Cell::new(false) };
}

/// Asks `d` whether INFO (then WARN, ERROR) audit events are enabled, and
/// whether the question reached an audit layer's filter.
/// (`LevelFilter::current()` cannot tell a global filter from a per-layer
/// one on the audit layer, and an event below the global maximum never
/// reaches any layer to tell.)
///
/// It runs on a thread of its own: asking `enabled` leaves per-layer filter
/// state in the asking thread's locals, which must never leak into the
/// application's next event.
pub(crate) fn probe(d: &Dispatch) -> Probed {
    let ask = |meta: &'static Metadata<'static>| {
        PROBE_REACHED.with(|r| r.set(false));
        let enabled = d.enabled(meta);
        (enabled, PROBE_REACHED.with(|r| r.replace(false)))
    };
    let run = || match ask(&PROBE_META[0]) {
        (true, _) => Probed::Delivered,
        (false, false) => Probed::FilteredBeforeAudit,
        (false, true) => {
            let through = if ask(&PROBE_META[1]).0 {
                LevelFilter::WARN
            } else if ask(&PROBE_META[2]).0 {
                LevelFilter::ERROR
            } else {
                LevelFilter::OFF
            };
            Probed::DiscardedByGlobalFilter(through)
        }
    };
    std::thread::scope(|s| s.spawn(run).join()).unwrap_or(Probed::Delivered)
}

/// Implements `Layer<S>` for `$outer<S>` by delegating every method to its
/// `inner: Filtered<..>` field (including `downcast_raw`, through which
/// `Layered` detects per-layer filters). Inline, so that a non-audit event
/// pays for the wrapper no more than for a bare `Filtered` layer.
macro_rules! delegate_layer {
    ($outer:ident) => {
        impl<S> tracing_subscriber::Layer<S> for $outer<S>
        where
            S: tracing_core::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        {
            #[inline]
            fn on_register_dispatch(&self, subscriber: &tracing_core::Dispatch) {
                self.inner.on_register_dispatch(subscriber)
            }
            #[inline]
            fn on_layer(&mut self, subscriber: &mut S) {
                self.inner.on_layer(subscriber)
            }
            #[inline]
            fn register_callsite(
                &self,
                metadata: &'static tracing_core::Metadata<'static>,
            ) -> tracing_core::subscriber::Interest {
                self.inner.register_callsite(metadata)
            }
            #[inline]
            fn enabled(
                &self,
                metadata: &tracing_core::Metadata<'_>,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) -> bool {
                self.inner.enabled(metadata, ctx)
            }
            #[inline]
            fn on_new_span(
                &self,
                attrs: &tracing_core::span::Attributes<'_>,
                id: &tracing_core::span::Id,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_new_span(attrs, id, ctx)
            }
            #[inline]
            fn max_level_hint(&self) -> Option<tracing_core::LevelFilter> {
                self.inner.max_level_hint()
            }
            #[inline]
            fn on_record(
                &self,
                span: &tracing_core::span::Id,
                values: &tracing_core::span::Record<'_>,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_record(span, values, ctx)
            }
            #[inline]
            fn on_follows_from(
                &self,
                span: &tracing_core::span::Id,
                follows: &tracing_core::span::Id,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_follows_from(span, follows, ctx)
            }
            #[inline]
            fn event_enabled(
                &self,
                event: &tracing_core::Event<'_>,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) -> bool {
                self.inner.event_enabled(event, ctx)
            }
            #[inline]
            fn on_event(
                &self,
                event: &tracing_core::Event<'_>,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_event(event, ctx)
            }
            #[inline]
            fn on_enter(
                &self,
                id: &tracing_core::span::Id,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_enter(id, ctx)
            }
            #[inline]
            fn on_exit(
                &self,
                id: &tracing_core::span::Id,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_exit(id, ctx)
            }
            #[inline]
            fn on_close(
                &self,
                id: tracing_core::span::Id,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_close(id, ctx)
            }
            #[inline]
            fn on_id_change(
                &self,
                old: &tracing_core::span::Id,
                new: &tracing_core::span::Id,
                ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.inner.on_id_change(old, new, ctx)
            }
            #[doc(hidden)]
            unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
                if id == std::any::TypeId::of::<Self>() {
                    return Some(self as *const Self as *const ());
                }
                // SAFETY: forwards to the wrapped layer, which upholds the
                // contract for the types it reports.
                unsafe { self.inner.downcast_raw(id) }
            }
        }
    };
}
pub(crate) use delegate_layer;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::Layer;

    /// Panics on any non-audit event or span it is shown.
    struct StrictLayer(Arc<AtomicUsize>);
    impl<S: tracing_core::Subscriber> Layer<S> for StrictLayer {
        fn on_event(&self, e: &tracing_core::Event<'_>, _: Context<'_, S>) {
            assert!(
                is_audit_callsite(e.metadata()),
                "non-audit event leaked: {:?}",
                e.metadata()
            );
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn on_new_span(
            &self,
            a: &tracing_core::span::Attributes<'_>,
            _: &tracing_core::span::Id,
            _: Context<'_, S>,
        ) {
            assert!(is_audit_callsite(a.metadata()), "non-audit span leaked");
        }
    }

    /// Counts everything, unfiltered.
    struct CountAll(Arc<AtomicUsize>);
    impl<S: tracing_core::Subscriber> Layer<S> for CountAll {
        fn on_event(&self, _: &tracing_core::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Callsites for metadata built on the stack, as `tracing-log` does
    /// (not zero-sized: a callsite is known by its address).
    struct Site(#[allow(dead_code)] u8);
    static SITES: [Site; 12] = [const { Site(0) }; 12];
    impl Callsite for Site {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &PROBE_META[0]
        }
    }

    fn stack_meta(i: usize) -> Metadata<'static> {
        let names: &'static [&'static str] = if i.is_multiple_of(2) {
            &["audit.event", "user"]
        } else {
            &["message", "user"]
        };
        Metadata::new(
            "m",
            "t",
            Level::INFO,
            None,
            None,
            None,
            FieldSet::new(names, tracing_core::identify_callsite!(&SITES[i])),
            Kind::EVENT,
        )
    }

    /// The remembered answer is the callsite's: metadata built in the same
    /// stack slot for different callsites (one address, alternately audit
    /// and not) and twelve callsites sharing a table of eight are each
    /// answered as the scan answers them, round after round.
    #[test]
    fn remembered_answers_follow_the_callsite_not_the_metadata_address() {
        for round in 0..4 {
            for i in 0..SITES.len() {
                let meta = stack_meta(i);
                assert_eq!(
                    audit_callsite_cached(&meta),
                    i.is_multiple_of(2),
                    "callsite {i}, round {round}"
                );
            }
        }
    }

    #[test]
    fn filter_keeps_non_audit_out_and_others_see_all() {
        let audit = Arc::new(AtomicUsize::new(0));
        let all = Arc::new(AtomicUsize::new(0));
        let sub = tracing_subscriber::registry()
            .with(CountAll(all.clone()))
            .with(StrictLayer(audit.clone()).with_filter(AuditFilter));
        tracing::subscriber::with_default(sub, || {
            let _s = tracing::info_span!("plain", user = 1).entered();
            let _a = tracing::info_span!("ctx", audit.actor = "alice").entered();
            tracing::info!("not audit");
            tracing::info!(audit.actor = "x", "context only is not an audit event");
            tracing::warn!(audit.event = "login", "audit");
            tracing::error!(answer = 42, "not audit either");
        });
        assert_eq!(audit.load(Ordering::SeqCst), 1);
        assert_eq!(all.load(Ordering::SeqCst), 4);
    }
}
