//! `PolicyLayer`: compliance policies counted over audit events as they
//! happen, alerts, reports and statistics; and the same reports computed
//! offline from a trail's files.
//!
//! The layer recognises audit events with the same per-layer filter and the
//! same field reading as `AuditLayer` (span context included), and works
//! with or without an `AuditLayer` in the stack.
//!
//! Counting (the private `engine` module) is exact under any clock: every
//! event counts at its own timestamp, whatever order events arrive in (a
//! clock stepped back by NTP, records merged from many instances). A policy
//! is over its threshold at time `x` when `threshold` of its events fall in
//! `(x − window, x]`; an alert is raised when an event starts a new
//! stretch of such times, so a burst is one alert. Memory is bounded: at
//! most max(4 × threshold + 4, 256) timestamps and 1 024 episodes per
//! policy (per group with `group_by`, and at most `max_groups` groups); an
//! event so late that part of its window was already forgotten is still
//! counted, and `inexact_events` says so. In-order events are O(1) per
//! matching policy.
//!
//! Policies are checked when loaded ([`Policy::validate`]): a threshold in
//! `1..=`[`MAX_THRESHOLD`], durations up to [`MAX_DURATION`], each required
//! kind named once.
//!
//! ```
//! use std::time::Duration;
//! use tracing_audit::policy::{GroupBy, Policy, PolicyLayer};
//! // PCI DSS 8.3.4: lock out after at most 10 invalid attempts, per account.
//! let (layer, compliance) = PolicyLayer::builder()
//!     .policy(
//!         Policy::new("brute_force")
//!             .require(["auth_failure"])
//!             .threshold(10)
//!             .window(Duration::from_secs(15 * 60))
//!             .group_by(GroupBy::Actor),
//!     )
//!     .try_build::<tracing_subscriber::Registry>()?;
//! assert_eq!(compliance.report("brute_force")?.group_by, Some(GroupBy::Actor));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Alerts leave the hot path: a crossing is queued to an alert thread that
//! runs the callback and emits a `policy_threshold_exceeded` audit event
//! through the subscriber the layer is part of. Events emitted on that
//! thread (the alert records, and whatever a callback emits) are counted
//! only by policies that name their kind, and their alerts are delivered
//! like any other; the events emitted while handling *such* an alert are
//! counted by no policy, so alerts cannot loop.

mod config;
mod engine;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Subscriber};
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use config::show_duration;
pub use config::{
    GroupBy, InvalidPolicy, Policy, PolicyError, MAX_DURATION, MAX_THRESHOLD, MIN_RETENTION,
    MIN_WINDOW,
};
use engine::{Crossing, Engine, Nanos, Observed, Source, EPOCH};

use crate::layer::capture::{merge_span, with_reused, SpanContext};
use crate::record::draft::Draft;
use crate::record::encode::cut_str as cut;

/// Longest value (span field, actor, group key) the policy layer keeps,
/// as the audit layer's default `max_value_len`: longer ones are cut.
const POLICY_VALUE_LIMIT: usize = 8 * 1024;

/// Groups tracked per `group_by` policy unless the builder says otherwise.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;
use crate::layer::filter::{delegate_layer, AuditFilter};
use crate::record::fields::ContextField;
use crate::record::AuditRecord;

/// A clock for the layer (tests inject one).
///
/// ```
/// let clock: tracing_audit::policy::Clock = std::sync::Arc::new(std::time::SystemTime::now);
/// let (_layer, _c) = tracing_audit::PolicyLayer::builder()
///     .clock(move || clock())
///     .build::<tracing_subscriber::Registry>();
/// ```
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A callback run on the alert thread.
///
/// ```
/// let handler: tracing_audit::policy::AlertHandler = std::sync::Arc::new(|a| eprintln!("{}", a.policy));
/// let (_layer, _c) = tracing_audit::PolicyLayer::builder()
///     .on_alert(move |a| handler(a))
///     .build::<tracing_subscriber::Registry>();
/// ```
pub type AlertHandler = Arc<dyn Fn(&Alert) + Send + Sync>;

/// The default clock on Linux: `CLOCK_REALTIME_COARSE`, a few nanoseconds a
/// read instead of ~80 on a VM, with the kernel tick's resolution (1–4 ms),
/// which is ample for policy windows of seconds to days. Read straight onto
/// the policy timeline (no `SystemTime` round trip).
#[cfg(target_os = "linux")]
fn coarse_now() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return nanos(SystemTime::now());
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
        .saturating_add(EPOCH)
}

/// The default clock elsewhere: the system clock.
#[cfg(not(target_os = "linux"))]
fn coarse_now() -> Nanos {
    nanos(SystemTime::now())
}

/// A clock reading on the policy timeline (before the epoch included).
fn nanos(t: SystemTime) -> Nanos {
    let cap = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => EPOCH.saturating_add(cap(d)),
        Err(e) => EPOCH.saturating_sub(cap(e.duration())),
    }
}

fn time(n: Nanos) -> DateTime<Utc> {
    let t = if n >= EPOCH {
        UNIX_EPOCH.checked_add(Duration::from_nanos(n - EPOCH))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_nanos(EPOCH - n))
    };
    t.map_or(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::from)
}

/// A policy's window count reached its threshold.
///
/// ```
/// use tracing_audit::{Policy, PolicyLayer};
/// let (_layer, _compliance) = PolicyLayer::builder()
///     .policy(Policy::new("failed_logins").require(["auth_failure"]).threshold(5))
///     .on_alert(|a: &tracing_audit::policy::Alert| eprintln!("{} crossed {} at {}", a.policy, a.threshold, a.at))
///     .build::<tracing_subscriber::Registry>();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// The policy's name.
    pub policy: String,
    /// Events in the window when it fired (= the threshold).
    pub count: u64,
    /// The threshold.
    pub threshold: u64,
    /// The window.
    pub window: Duration,
    /// When the triggering event was counted.
    pub at: DateTime<Utc>,
    /// The actor of the triggering event.
    pub actor: Option<String>,
    /// The kind of the triggering event.
    pub event_type: String,
    /// For a policy with `group_by`: which field, and the group's key.
    pub group: Option<(GroupBy, String)>,
}

/// Configures a [`PolicyLayer`]. Start from [`PolicyLayer::builder`].
///
/// | setting | default |
/// |---|---|
/// | policies | none |
/// | alert callback | none (alerts are still counted and written) |
/// | `policy_threshold_exceeded` records | emitted |
/// | top actors kept for stats | 100 |
/// | groups tracked per `group_by` policy | 10 000 ([`DEFAULT_MAX_GROUPS`]) |
/// | clock | the system's coarse real-time clock (1–4 ms resolution) |
///
/// ```
/// let (_layer, _compliance) = tracing_audit::PolicyLayer::builder()
///     .policy(tracing_audit::Policy::new("exports").require(["data_export"]))
///     .emit_records(false)
///     .build::<tracing_subscriber::Registry>();
/// ```
pub struct PolicyLayerBuilder {
    policies: Vec<Policy>,
    on_alert: Option<AlertHandler>,
    clock: Option<Clock>,
    emit_records: bool,
    top_k: usize,
    max_groups: usize,
}

impl std::fmt::Debug for PolicyLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLayerBuilder")
            .field("policies", &self.policies)
            .field("on_alert", &self.on_alert.is_some())
            .field("emit_records", &self.emit_records)
            .finish_non_exhaustive()
    }
}

impl PolicyLayerBuilder {
    /// Adds policies (a later policy with the same name replaces an earlier one).
    #[must_use]
    pub fn policies(mut self, p: impl IntoIterator<Item = Policy>) -> Self {
        self.policies.extend(p);
        self
    }

    /// Adds one policy.
    #[must_use]
    pub fn policy(mut self, p: Policy) -> Self {
        self.policies.push(p);
        self
    }

    /// Runs `f` on the alert thread for every threshold crossing.
    #[must_use]
    pub fn on_alert(mut self, f: impl Fn(&Alert) + Send + Sync + 'static) -> Self {
        self.on_alert = Some(Arc::new(f));
        self
    }

    /// Whether crossings are written into the audit stream as
    /// `policy_threshold_exceeded` events (default yes).
    #[must_use]
    pub fn emit_records(mut self, yes: bool) -> Self {
        self.emit_records = yes;
        self
    }

    /// How many actors statistics keep, and how many event types beyond
    /// those the policies name (4× as many).
    #[must_use]
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k.max(1);
        self
    }

    /// How many groups each `group_by` policy tracks (least recently seen
    /// evicted first, counted in `groups_evicted`). Each group holds at
    /// most max(4 × threshold + 4, 256) timestamps and 1 024 episodes.
    ///
    /// ```
    /// let (_layer, _c) = tracing_audit::PolicyLayer::builder()
    ///     .max_groups(1_000)
    ///     .build::<tracing_subscriber::Registry>();
    /// ```
    #[must_use]
    pub fn max_groups(mut self, n: usize) -> Self {
        self.max_groups = n.max(1);
        self
    }

    /// Replaces the clock (for tests, replays, or finer resolution with
    /// `SystemTime::now`).
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Builds the layer and its [`Compliance`] handle, after checking every
    /// policy with [`Policy::validate`].
    ///
    /// ```
    /// let err = tracing_audit::PolicyLayer::builder()
    ///     .policy(tracing_audit::Policy::new("p").require(["a", "a"]))
    ///     .try_build::<tracing_subscriber::Registry>()
    ///     .unwrap_err();
    /// assert_eq!(err.field, "require");
    /// ```
    pub fn try_build<S>(self) -> Result<(PolicyLayer<S>, Compliance), InvalidPolicy> {
        for p in &self.policies {
            p.validate()?;
        }
        Ok(self.build())
    }

    /// Builds the layer and its [`Compliance`] handle. A setting out of its
    /// range is brought into it and a kind named twice is counted once
    /// (use [`try_build`](Self::try_build) to reject them instead); reports,
    /// stats and alerts show the policy as counted.
    pub fn build<S>(self) -> (PolicyLayer<S>, Compliance) {
        let policies: Vec<Policy> = self.policies.into_iter().map(Policy::effective).collect();
        let shared = Arc::new(PolicyShared {
            engine: Mutex::new(Engine::new(policies, self.top_k, self.max_groups)),
            clock: self.clock,
            alerts: OnceLock::new(),
            on_alert: self.on_alert,
            emit_records: self.emit_records,
            dispatch: OnceLock::new(),
            alerts_dropped: AtomicU64::new(0),
            callback_errors: AtomicU64::new(0),
        });
        let layer = PolicyLayer {
            inner: Filtered::new(
                PolicyCore {
                    shared: shared.clone(),
                },
                AuditFilter,
            ),
        };
        (layer, Compliance { shared })
    }
}

/// State shared by the layer, the alert thread and [`Compliance`].
struct PolicyShared {
    engine: Mutex<Engine>,
    /// The builder's clock, else [`coarse_now`].
    clock: Option<Clock>,
    /// Started on the first crossing.
    alerts: OnceLock<SyncSender<(Alert, bool)>>,
    on_alert: Option<AlertHandler>,
    emit_records: bool,
    dispatch: OnceLock<tracing_core::dispatcher::WeakDispatch>,
    alerts_dropped: AtomicU64,
    callback_errors: AtomicU64,
}

thread_local! {
    /// Where events emitted on this thread come from (the alert thread
    /// changes it).
    static SOURCE: Cell<Source> = const { Cell::new(Source::App) };
    static CAPTURE: RefCell<Draft> = RefCell::new(Draft::audit_only());
}

impl PolicyShared {
    /// The clock's reading on the policy timeline.
    fn now(&self) -> Nanos {
        match &self.clock {
            Some(clock) => nanos(clock()),
            None => coarse_now(),
        }
    }

    fn observe(&self, c: &mut Draft, level: &tracing_core::Level) {
        let risk = c.resolve_risk(level);
        let outcome = c.resolve_outcome();
        let Some(event_type) = c.event_type() else {
            return;
        };
        let ctx = |f| c.context(f).map(|v| cut(v, POLICY_VALUE_LIMIT));
        let e = Observed {
            event_type: cut(event_type, POLICY_VALUE_LIMIT),
            actor: ctx(ContextField::Actor),
            resource: ctx(ContextField::Resource),
            ip: ctx(ContextField::Ip),
            session: ctx(ContextField::Session),
            outcome,
            risk,
            at: self.now(),
            source: SOURCE.try_with(Cell::get).unwrap_or(Source::ChainedAlert),
        };
        let mut crossings = Vec::new();
        let alerts: Vec<(Alert, bool)> = {
            let Ok(mut engine) = self.engine.lock() else {
                self.callback_errors.fetch_add(1, Relaxed);
                return;
            };
            engine.observe(&e, false, &mut crossings);
            if crossings.is_empty() {
                return;
            }
            crossings
                .into_iter()
                .map(|c| (alert(&engine, &c), c.chained))
                .collect()
        };
        for a in alerts {
            self.raise(a);
        }
    }

    fn raise(self: &PolicyShared, a: (Alert, bool)) {
        let Some(tx) = self.alerts.get() else {
            self.alerts_dropped.fetch_add(1, Relaxed);
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(a) {
            self.alerts_dropped.fetch_add(1, Relaxed);
        }
    }
}

fn alert(engine: &Engine, c: &Crossing) -> Alert {
    let p = &engine.policies[c.policy].policy;
    Alert {
        policy: p.name.clone(),
        count: c.count,
        threshold: p.threshold,
        window: p.window,
        at: time(c.at),
        actor: c.actor.clone(),
        event_type: c.event_type.clone(),
        group: p.group_by.zip(c.group.clone()),
    }
}

/// Starts the alert thread (once per layer).
fn start_alert_thread(shared: &Arc<PolicyShared>) {
    let weak = Arc::downgrade(shared);
    // (alert, caused by an alert-thread event)
    let (tx, rx) = mpsc::sync_channel::<(Alert, bool)>(1024);
    if shared.alerts.set(tx).is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("tracing-audit-alerts".into())
        .spawn(move || {
            for (a, chained) in rx {
                let source = if chained {
                    Source::ChainedAlert
                } else {
                    Source::Alert
                };
                let _ = SOURCE.try_with(|f| f.set(source));
                let Some(shared) = weak.upgrade() else { return };
                if let Some(cb) = &shared.on_alert {
                    let cb = cb.clone();
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&a))).is_err() {
                        shared.callback_errors.fetch_add(1, Relaxed);
                    }
                }
                if shared.emit_records {
                    if let Some(d) = shared.dispatch.get().and_then(|w| w.upgrade()) {
                        tracing::dispatcher::with_default(&d, || emit(&a, chained));
                    }
                }
            }
        });
}

/// The field of an alert record that marks one caused by an alert-thread
/// event; offline replay skips such records as the live layer does.
pub(crate) const CHAINED_FIELD: &str = "triggered_by_alert";

/// The `policy_threshold_exceeded` audit event.
fn emit(a: &Alert, chained: bool) {
    let window_secs = a.window.as_secs_f64();
    let window = show_duration(a.window);
    let group_by = a.group.as_ref().map(|(by, _)| by.as_str());
    let group = a.group.as_ref().map(|(_, key)| key.as_str());
    tracing::warn!(
        audit.event = "policy_threshold_exceeded",
        audit.actor = a.actor.as_deref(),
        audit.risk = "high",
        policy = a.policy.as_str(),
        count = a.count,
        threshold = a.threshold,
        window = window.as_str(),
        window_secs,
        trigger_event = a.event_type.as_str(),
        group_by,
        group,
        triggered_by_alert = chained,
        "compliance policy threshold exceeded"
    );
}

/// The layer behind the per-layer filter.
struct PolicyCore {
    shared: Arc<PolicyShared>,
}

impl<S> Layer<S> for PolicyCore
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing_core::Dispatch) {
        let _ = self.shared.dispatch.set(subscriber.downgrade());
        start_alert_thread(&self.shared);
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            // A panic is caught and counted by the audit layer, if any.
            let _ = SpanContext::on_new_span(attrs, &span, POLICY_VALUE_LIMIT);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let _ = SpanContext::on_record(values, &span, POLICY_VALUE_LIMIT);
        }
    }

    /// An audited span (one with `audit.event`) that closes is the record
    /// `AuditLayer` writes then: it is counted the same way, so the live
    /// counts and a replay of the trail agree. Its outcome is the span's
    /// own or `unknown`, never an enclosing span's, as in the record.
    /// (`<event>_started` records, written with `record_span_start`, are
    /// not counted here: this layer cannot see that setting.)
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let (event, outcome) = {
            let ext = span.extensions();
            let Some(sc) = ext.get::<SpanContext>() else {
                return;
            };
            let Some(event) = sc.event.clone() else {
                return;
            };
            (event, sc.own(ContextField::Outcome).map(str::to_owned))
        };
        let run = |c: &mut Draft| {
            c.reset(POLICY_VALUE_LIMIT);
            c.set_event_type(&event);
            c.set_context_if_absent(
                ContextField::Outcome,
                outcome.as_deref().unwrap_or("unknown"),
            );
            for sp in span.scope() {
                merge_span(c, &sp);
            }
            self.shared.observe(c, span.metadata().level());
        };
        if !with_reused(&CAPTURE, Draft::audit_only, run) {
            self.shared.callback_errors.fetch_add(1, Relaxed);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let run = |c: &mut Draft| {
            c.reset(POLICY_VALUE_LIMIT);
            event.record(c);
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope {
                    merge_span(c, &span);
                }
            }
            self.shared.observe(c, event.metadata().level());
        };
        if !with_reused(&CAPTURE, Draft::audit_only, run) {
            self.shared.callback_errors.fetch_add(1, Relaxed);
        }
    }
}

/// A [`Layer`] that counts audit events against compliance policies.
///
/// ```
/// use tracing_subscriber::prelude::*;
/// let (policies, compliance) = tracing_audit::PolicyLayer::builder()
///     .policies(tracing_audit::Policy::defaults())
///     .build();
/// tracing::subscriber::with_default(tracing_subscriber::registry().with(policies), || {
///     tracing::info!(audit.event = "data_access", audit.actor = "bob");
/// });
/// assert_eq!(compliance.stats().total_events, 1);
/// ```
pub struct PolicyLayer<S> {
    inner: Filtered<PolicyCore, AuditFilter, S>,
}

impl PolicyLayer<()> {
    /// Starts configuring a policy layer.
    pub fn builder() -> PolicyLayerBuilder {
        PolicyLayerBuilder {
            policies: Vec::new(),
            on_alert: None,
            clock: None,
            emit_records: true,
            top_k: 100,
            max_groups: DEFAULT_MAX_GROUPS,
        }
    }
}

impl<S> std::fmt::Debug for PolicyLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLayer").finish_non_exhaustive()
    }
}

delegate_layer!(PolicyLayer);

/// Compliant or not.
///
/// ```
/// use tracing_audit::policy::Status;
/// assert_eq!(serde_json::to_string(&Status::Violation).unwrap(), "\"violation\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every required kind occurred within retention, and the window count is below the threshold.
    Compliant,
    /// A required kind is missing, or the threshold is reached.
    Violation,
}

/// A compliance report for one policy (the seed monitor's fields, plus status).
///
/// ```
/// use tracing_audit::{Policy, PolicyLayer, policy::Status};
/// let (_layer, compliance) = PolicyLayer::builder()
///     .policies(Policy::defaults())
///     .build::<tracing_subscriber::Registry>();
/// for r in compliance.reports() {
///     // Nothing recorded yet: coverage findings, no violation.
///     assert_eq!(r.status, Status::Compliant);
///     assert!(!r.coverage.is_empty());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComplianceReport {
    /// The policy's key.
    pub policy: String,
    /// The policy's title.
    pub policy_name: String,
    /// What it is for.
    pub description: String,
    /// When the report was made.
    pub generated_at: DateTime<Utc>,
    /// Matching events within retention (to `counts_precision_secs`).
    pub total_events: u64,
    /// Matching events within retention, per required kind (zeros included).
    pub events_by_type: BTreeMap<String, u64>,
    /// How far outside their period counted events may lie: counts are kept
    /// in 64 buckets per period, so `total_events` and `events_by_type` may
    /// include events up to this many seconds older than the retention (or
    /// newer than `generated_at`), and `window_events` up to 1/64 of the
    /// window. Crossings, violations and `status` are exact.
    pub counts_precision_secs: f64,
    /// Coverage findings, informational: required kinds with no event
    /// within retention (no `data_breach` recorded is not a violation).
    pub coverage: Vec<String>,
    /// Every threshold crossing within the report period (retention),
    /// oldest first.
    pub crossings: Vec<CrossingReport>,
    /// The violations: one line per crossing within the report period.
    pub violations: Vec<String>,
    /// `violation` when the threshold was crossed within the report period
    /// (or the window is at the threshold now), else `compliant`.
    pub status: Status,
    /// Matching events in the current window (1/64-window resolution).
    pub window_events: u64,
    /// The alert threshold.
    pub threshold: u64,
    /// The window, as counted (e.g. `"5m"`).
    pub window: String,
    /// Retention in days.
    pub retention_days: f64,
    /// Alerts raised since start.
    pub alerts: u64,
    /// What the policy counts per (`actor`, `ip`, `resource`, `session`), if anything.
    pub group_by: Option<GroupBy>,
    /// Groups forgotten to stay within the bound (least recently seen
    /// first); a forgotten group's window starts again empty.
    pub groups_evicted: u64,
    /// Events that arrived so late that part of their window had already
    /// been forgotten: counted, but their alerting was judged on what was
    /// kept. 0 means every alert decision was exact.
    pub inexact_events: u64,
}

/// A threshold crossing, as reports list it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (_layer, compliance) = tracing_audit::PolicyLayer::builder()
///     .policies(tracing_audit::Policy::defaults())
///     .build::<tracing_subscriber::Registry>();
/// let report = compliance.report("security_compliance")?;
/// for c in &report.crossings {
///     println!("{}: {} events, last {} by {:?}", c.at, c.count, c.event_type, c.actor);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrossingReport {
    /// When the event that reached the threshold happened.
    pub at: DateTime<Utc>,
    /// Matching events in the window then.
    pub count: u64,
    /// That event's actor.
    pub actor: Option<String>,
    /// That event's type.
    pub event_type: String,
    /// The group's key, for a policy with `group_by`.
    pub group: Option<String>,
}

/// One policy in [`ComplianceStats`].
///
/// ```
/// let (_layer, compliance) = tracing_audit::PolicyLayer::builder()
///     .policies(tracing_audit::Policy::defaults())
///     .build::<tracing_subscriber::Registry>();
/// let s = &compliance.stats().policy_status["security_compliance"];
/// assert_eq!(s.violation_threshold, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyStatus {
    /// Matching events within retention.
    pub total_events: u64,
    /// Matching events in the window (1/64-window resolution).
    pub recent_events: u64,
    /// The threshold.
    pub violation_threshold: u64,
    /// Compliant or violation: the same verdict as the policy's report.
    pub status: Status,
    /// Alerts raised since start.
    pub alerts: u64,
    /// Groups tracked now (policies with `group_by`).
    pub groups: usize,
    /// Groups forgotten to stay within the bound.
    pub groups_evicted: u64,
    /// Events judged with part of their window forgotten (see the report).
    pub inexact_events: u64,
}

/// Statistics over everything the layer has counted.
///
/// ```
/// let (_layer, compliance) = tracing_audit::PolicyLayer::builder()
///     .policies(tracing_audit::Policy::defaults())
///     .build::<tracing_subscriber::Registry>();
/// let stats = compliance.stats();
/// assert_eq!(stats.total_events, 0);
/// assert_eq!(stats.policy_status.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComplianceStats {
    /// Audit events counted.
    pub total_events: u64,
    /// By event type: every type a policy names, plus the first 4 × top-k
    /// other distinct types (see `other_event_types`).
    pub events_by_type: BTreeMap<String, u64>,
    /// Events of types beyond that bound.
    pub other_event_types: u64,
    /// By actor: at most top-k actors, each counted since it was last
    /// admitted (actors longer than 8 KiB are cut, as record values are).
    pub events_by_actor: BTreeMap<String, u64>,
    /// Events whose actor was evicted from the top-k: with
    /// `events_by_actor` they sum to `total_events`.
    pub actors_evicted: u64,
    /// Every policy's status.
    pub policy_status: BTreeMap<String, PolicyStatus>,
    /// Alerts not delivered because the alert queue was full.
    pub alerts_dropped: u64,
    /// Panics caught in callbacks.
    pub callback_errors: u64,
}

/// The handle for reports and statistics. Cheap to clone.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tracing_audit::{Policy, PolicyLayer};
/// let (_layer, compliance) = PolicyLayer::builder()
///     .policies(Policy::defaults())
///     .build::<tracing_subscriber::Registry>();
/// let report = compliance.report("authentication_monitoring")?;
/// assert_eq!(report.total_events, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Compliance {
    shared: Arc<PolicyShared>,
}

impl std::fmt::Debug for Compliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compliance").finish_non_exhaustive()
    }
}

impl Compliance {
    /// The engine, even if a panic elsewhere poisoned its lock: every
    /// update leaves it consistent, and a report is better than none.
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.shared
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The report for policy `name`.
    pub fn report(&self, name: &str) -> Result<ComplianceReport, PolicyError> {
        let now = self.shared.now();
        let engine = self.engine();
        let i = engine
            .index(name)
            .ok_or_else(|| PolicyError::Unknown(name.into()))?;
        Ok(report(&engine, i, now))
    }

    /// Reports for every policy, in the order they were given.
    pub fn reports(&self) -> Vec<ComplianceReport> {
        let now = self.shared.now();
        let engine = self.engine();
        (0..engine.policies.len())
            .map(|i| report(&engine, i, now))
            .collect()
    }

    /// Totals, top actors and every policy's status.
    pub fn stats(&self) -> ComplianceStats {
        let now = self.shared.now();
        let mut stats = ComplianceStats {
            total_events: 0,
            events_by_type: BTreeMap::new(),
            other_event_types: 0,
            events_by_actor: BTreeMap::new(),
            actors_evicted: 0,
            policy_status: BTreeMap::new(),
            alerts_dropped: self.shared.alerts_dropped.load(Relaxed),
            callback_errors: self.shared.callback_errors.load(Relaxed),
        };
        let engine = self.engine();
        stats.total_events = engine.total;
        stats.events_by_type = engine.by_type();
        stats.other_event_types = engine.other_kinds;
        stats.events_by_actor = engine.by_actor.to_map();
        stats.actors_evicted = engine.by_actor.evicted;
        for s in engine.policies.iter() {
            stats.policy_status.insert(
                s.policy.name.clone(),
                PolicyStatus {
                    total_events: s.retained(now).iter().sum(),
                    recent_events: s.recent(now),
                    violation_threshold: s.policy.threshold,
                    status: status(s.violated(now)),
                    alerts: s.alerts,
                    groups: s.groups(),
                    groups_evicted: s.groups_evicted(),
                    inexact_events: s.inexact,
                },
            );
        }
        stats
    }

    /// Replays records through `policies`, each at its own timestamp in
    /// whatever order they come, without alerts: the report
    /// `tracing-audit report` prints (through
    /// [`AuditTrail::compliance`](crate::trail::AuditTrail::compliance)),
    /// or one over records from anywhere else (a SIEM export read with
    /// [`AuditRecord::parse`]). Alert records count as on the live layer
    /// (only for policies that name their kind; those an alert record
    /// caused, for none). Returns the handle and the number of `Err`
    /// items skipped.
    ///
    /// ```
    /// use tracing_audit::{record::AuditRecord, policy::Compliance, Policy};
    ///
    /// let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    /// let line = format!(r#"{{"schema":1,"audit_id":"0190c0de-0000-7000-8000-000000000000","seq":0,"timestamp":"{now}","event_type":"data_access","actor":"alice","resource":null,"action":null,"outcome":"success","risk_level":"low","session_id":null,"ip_address":null,"message":null,"details":{{}},"service":null,"version":null,"environment":null,"host":null,"source":{{"target":"t","level":"INFO","span":null}},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","hash":"0000000000000000000000000000000000000000000000000000000000000000"}}"#);
    /// let records = [AuditRecord::parse(line.as_bytes())];
    /// let (compliance, skipped) = Compliance::replay(records, Policy::defaults());
    /// assert_eq!(skipped, 0);
    /// let data = compliance.report("data_access_tracking")?;
    /// assert_eq!(data.events_by_type["data_access"], 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Reports read the system clock, but never earlier than the newest
    /// record: a trail written on a host whose clock ran ahead of this one
    /// (or a moment ago, with the precise clock the records carry) still
    /// counts its newest records.
    pub fn replay<E>(
        records: impl IntoIterator<Item = Result<AuditRecord, E>>,
        policies: Vec<Policy>,
    ) -> (Compliance, u64) {
        let newest = Arc::new(Mutex::new(UNIX_EPOCH));
        let seen = Arc::clone(&newest);
        let (_, compliance) = PolicyLayer::builder()
            .policies(policies)
            .emit_records(false)
            .clock(move || {
                let newest = *seen.lock().unwrap_or_else(|e| e.into_inner());
                SystemTime::now().max(newest)
            })
            .build::<()>();
        let mut unreadable = 0;
        let mut engine = compliance.engine();
        let mut sink = Vec::new();
        let mut newest_seen = UNIX_EPOCH;
        for r in records {
            let Ok(r) = r else {
                unreadable += 1;
                continue;
            };
            let Some(kind) = r.event_type.as_deref() else {
                continue;
            };
            let source = if kind != "policy_threshold_exceeded" {
                Source::App
            } else if r.details.get(CHAINED_FIELD) == Some(&serde_json::Value::Bool(true)) {
                Source::ChainedAlert
            } else {
                Source::Alert
            };
            newest_seen = newest_seen.max(SystemTime::from(r.timestamp));
            let at = r.timestamp.timestamp_nanos_opt().map_or(0, |n| {
                (i128::from(n) + i128::from(EPOCH)).clamp(0, i128::from(u64::MAX)) as u64
            });
            fn cut_opt(v: &Option<String>) -> Option<&str> {
                v.as_deref().map(|v| cut(v, POLICY_VALUE_LIMIT))
            }
            let cut = cut_opt;
            let e = Observed {
                event_type: kind,
                actor: cut(&r.actor),
                resource: cut(&r.resource),
                ip: cut(&r.ip_address),
                session: cut(&r.session_id),
                outcome: r.outcome,
                risk: r.risk_level,
                at,
                source,
            };
            engine.observe(&e, true, &mut sink);
        }
        drop(engine);
        *newest.lock().unwrap_or_else(|e| e.into_inner()) = newest_seen;
        (compliance, unreadable)
    }
}

fn status(violated: bool) -> Status {
    if violated {
        Status::Violation
    } else {
        Status::Compliant
    }
}

fn report(engine: &Engine, i: usize, now: Nanos) -> ComplianceReport {
    let s = &engine.policies[i];
    let p = &s.policy;
    let counts = s.retained(now);
    let retention = show_duration(p.retention);
    let mut events_by_type = BTreeMap::new();
    let mut coverage = Vec::new();
    for (kind, n) in p.require.iter().zip(&counts) {
        events_by_type.insert(kind.clone(), *n);
        if *n == 0 {
            coverage.push(format!(
                "no {kind} event within the {retention} retention (coverage, not a violation)"
            ));
        }
    }
    let crossings: Vec<CrossingReport> = s
        .crossings_within(now)
        .into_iter()
        .map(|c| CrossingReport {
            at: time(c.at),
            count: c.count,
            actor: c.actor.clone(),
            event_type: c.event_type.clone(),
            group: c.group.clone(),
        })
        .collect();
    let window = show_duration(p.window);
    let mut violations: Vec<String> = crossings
        .iter()
        .map(|c| {
            let group = match (p.group_by, &c.group) {
                (Some(by), Some(key)) => format!(" for {} {key}", by.as_str()),
                _ => String::new(),
            };
            format!(
                "threshold {} reached within {window}{group} at {} ({} events; last {} by {})",
                p.threshold,
                c.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                c.count,
                c.event_type,
                c.actor.as_deref().unwrap_or("(no actor)")
            )
        })
        .collect();
    if violations.is_empty() && s.over_threshold(now) {
        violations.push(format!(
            "threshold {} reached: at least {} events within {window} now",
            p.threshold, p.threshold
        ));
    }
    ComplianceReport {
        policy: p.name.clone(),
        policy_name: p.title.clone().unwrap_or_else(|| p.name.clone()),
        description: p.description.clone(),
        generated_at: time(now),
        total_events: counts.iter().sum(),
        events_by_type,
        counts_precision_secs: s.precision() as f64 / 1e9,
        coverage,
        crossings,
        status: status(s.violated(now)),
        violations,
        window_events: s.recent(now),
        threshold: p.threshold,
        window,
        retention_days: p.retention.as_secs_f64() / 86_400.0,
        alerts: s.alerts,
        group_by: p.group_by,
        groups_evicted: s.groups_evicted(),
        inexact_events: s.inexact,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_reads_the_system_time_on_the_policy_timeline() {
        let before = nanos(SystemTime::now());
        let coarse = coarse_now();
        let after = nanos(SystemTime::now());
        // The coarse clock lags by at most a kernel tick (10 ms at HZ=100).
        let tick = 50_000_000;
        assert!(
            before - tick <= coarse && coarse <= after,
            "{before} {coarse} {after}"
        );
    }
}
