//! `PolicyLayer`: compliance policies counted over audit events as they
//! happen, alerts, reports and statistics; and the same reports computed
//! offline from a trail's files.
//!
//! The layer recognises audit events with the same per-layer filter and the
//! same field reading as `AuditLayer` (span context included), and works
//! with or without an `AuditLayer` in the stack. Counting is in
//! [`engine`]: O(1) per event per matching policy, bounded memory.
//!
//! Alerts leave the hot path: a crossing is queued to an alert thread that
//! runs the callback and emits a `policy_threshold_exceeded` audit event
//! through the subscriber the layer is part of. Events emitted by that
//! thread are counted but can never raise an alert, so an alert record that
//! matches a policy cannot loop.

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

pub use config::Policy;
use engine::{Crossing, Engine, Nanos, Observed};

use crate::capture::{with_reused, Capture, SpanContext};

/// Longest span value the policy layer keeps (as the audit layer's default).
const POLICY_VALUE_LIMIT: usize = 8 * 1024;
use crate::error::Error;
use crate::fields::ContextField;
use crate::filter::{delegate_layer, AuditFilter};
use crate::reader::AuditTrail;

/// A clock for the layer (tests inject one).
///
/// ```
/// let clock: tracing_audit::Clock = std::sync::Arc::new(std::time::SystemTime::now);
/// let (_layer, _c) = tracing_audit::PolicyLayer::builder()
///     .clock(move || clock())
///     .build::<tracing_subscriber::Registry>();
/// ```
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A callback run on the alert thread.
///
/// ```
/// let handler: tracing_audit::AlertHandler = std::sync::Arc::new(|a| eprintln!("{}", a.policy));
/// let (_layer, _c) = tracing_audit::PolicyLayer::builder()
///     .on_alert(move |a| handler(a))
///     .build::<tracing_subscriber::Registry>();
/// ```
pub type AlertHandler = Arc<dyn Fn(&Alert) + Send + Sync>;

/// The default clock: `CLOCK_REALTIME_COARSE`, a few nanoseconds a read
/// instead of ~80 on a VM, with the kernel tick's resolution (1–4 ms), which
/// is ample for policy windows of seconds to days.
fn coarse_now() -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return SystemTime::now();
    }
    UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn nanos(t: SystemTime) -> Nanos {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn time(n: Nanos) -> DateTime<Utc> {
    DateTime::<Utc>::from(UNIX_EPOCH + Duration::from_nanos(n))
}

/// A policy's window count reached its threshold.
///
/// ```
/// use tracing_audit::{Policy, PolicyLayer};
/// let (_layer, _compliance) = PolicyLayer::builder()
///     .policy(Policy::new("failed_logins").require(["auth_failure"]).threshold(5))
///     .on_alert(|a: &tracing_audit::Alert| eprintln!("{} crossed {} at {}", a.policy, a.threshold, a.at))
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
}

/// Configures a [`PolicyLayer`]. Start from [`PolicyLayer::builder`].
///
/// | setting | default |
/// |---|---|
/// | policies | none |
/// | alert callback | none (alerts are still counted and written) |
/// | `policy_threshold_exceeded` records | emitted |
/// | top actors kept for stats | 100 |
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

    /// How many actors (and 4× as many event types) statistics keep.
    #[must_use]
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k.max(1);
        self
    }

    /// Replaces the clock (for tests, replays, or finer resolution with
    /// `SystemTime::now`).
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Builds the layer and its [`Compliance`] handle.
    pub fn build<S>(self) -> (PolicyLayer<S>, Compliance) {
        let policies: Vec<Policy> = self
            .policies
            .into_iter()
            .map(|mut p| {
                p.window = p.window.max(Duration::from_millis(1));
                p.retention = p.retention.max(Duration::from_secs(1));
                p.threshold = p.threshold.clamp(1, 1_000_000);
                p
            })
            .collect();
        let shared = Arc::new(PolicyShared {
            engine: Mutex::new(Engine::new(policies, self.top_k)),
            clock: self.clock.unwrap_or_else(|| Arc::new(coarse_now)),
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
    clock: Clock,
    /// Started on the first crossing.
    alerts: OnceLock<SyncSender<Alert>>,
    on_alert: Option<AlertHandler>,
    emit_records: bool,
    dispatch: OnceLock<tracing_core::dispatcher::WeakDispatch>,
    alerts_dropped: AtomicU64,
    callback_errors: AtomicU64,
}

thread_local! {
    /// Set on the alert thread: events it emits never raise alerts.
    static IN_ALERT: Cell<bool> = const { Cell::new(false) };
    static CAPTURE: RefCell<Capture> = RefCell::new(Capture::audit_only());
}

impl PolicyShared {
    fn observe(&self, c: &mut Capture, level: &tracing_core::Level) {
        let risk = c.resolve_risk(level);
        let outcome = c.resolve_outcome();
        let Some(event_type) = c.event_type() else {
            return;
        };
        let e = Observed {
            event_type,
            actor: c.context(ContextField::Actor),
            resource: c.context(ContextField::Resource),
            outcome,
            risk,
            at: nanos((self.clock)()),
        };
        let quiet = IN_ALERT.try_with(Cell::get).unwrap_or(true);
        let mut crossings = Vec::new();
        let alerts: Vec<Alert> = {
            let Ok(mut engine) = self.engine.lock() else {
                return;
            };
            engine.observe(&e, quiet, &mut crossings);
            if crossings.is_empty() {
                return;
            }
            crossings.into_iter().map(|c| alert(&engine, c)).collect()
        };
        for a in alerts {
            self.raise(a);
        }
    }

    fn raise(self: &PolicyShared, a: Alert) {
        let Some(tx) = self.alerts.get() else {
            self.alerts_dropped.fetch_add(1, Relaxed);
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(a) {
            self.alerts_dropped.fetch_add(1, Relaxed);
        }
    }
}

fn alert(engine: &Engine, c: Crossing) -> Alert {
    let p = &engine.policies[c.policy].policy;
    Alert {
        policy: p.name.clone(),
        count: c.count,
        threshold: p.threshold,
        window: p.window,
        at: time(c.at),
        actor: c.actor,
        event_type: c.event_type,
    }
}

/// Starts the alert thread (once per layer).
fn start_alert_thread(shared: &Arc<PolicyShared>) {
    let weak = Arc::downgrade(shared);
    let (tx, rx) = mpsc::sync_channel::<Alert>(1024);
    if shared.alerts.set(tx).is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("tracing-audit-alerts".into())
        .spawn(move || {
            let _ = IN_ALERT.try_with(|f| f.set(true));
            for a in rx {
                let Some(shared) = weak.upgrade() else { return };
                if let Some(cb) = &shared.on_alert {
                    let cb = cb.clone();
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&a))).is_err() {
                        shared.callback_errors.fetch_add(1, Relaxed);
                    }
                }
                if shared.emit_records {
                    if let Some(d) = shared.dispatch.get().and_then(|w| w.upgrade()) {
                        tracing::dispatcher::with_default(&d, || emit(&a));
                    }
                }
            }
        });
}

/// The `policy_threshold_exceeded` audit event.
fn emit(a: &Alert) {
    let window_secs = a.window.as_secs();
    let msg = "compliance policy threshold exceeded";
    match a.actor.as_deref() {
        Some(actor) => tracing::warn!(
            audit.event = "policy_threshold_exceeded",
            audit.actor = actor,
            audit.risk = "high",
            policy = a.policy.as_str(),
            count = a.count,
            threshold = a.threshold,
            window_secs,
            trigger_event = a.event_type.as_str(),
            "{msg}"
        ),
        None => tracing::warn!(
            audit.event = "policy_threshold_exceeded",
            audit.risk = "high",
            policy = a.policy.as_str(),
            count = a.count,
            threshold = a.threshold,
            window_secs,
            trigger_event = a.event_type.as_str(),
            "{msg}"
        ),
    }
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

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let run = |c: &mut Capture| {
            c.reset(usize::MAX);
            event.record(c);
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope {
                    c.merge_span(&span);
                }
            }
            self.shared.observe(c, event.metadata().level());
        };
        if !with_reused(&CAPTURE, Capture::audit_only, run) {
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
/// use tracing_audit::Status;
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
/// use tracing_audit::{Policy, PolicyLayer, Status};
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
    /// Matching events within retention.
    pub total_events: u64,
    /// Matching events within retention, per required kind (zeros included).
    pub events_by_type: BTreeMap<String, u64>,
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
    /// Retention in days.
    pub retention_days: f64,
    /// Alerts raised since start.
    pub alerts: u64,
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
    /// Compliant or violation.
    pub status: Status,
    /// Alerts raised since start.
    pub alerts: u64,
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
    /// By event type (the first 4 × top-k distinct types; see `other_event_types`).
    pub events_by_type: BTreeMap<String, u64>,
    /// Events of types beyond that bound.
    pub other_event_types: u64,
    /// By actor (bounded top-k; counts of evicted actors are in `actors_evicted`).
    pub events_by_actor: BTreeMap<String, u64>,
    /// Events whose actor fell out of the top-k.
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
    /// The report for policy `name`.
    pub fn report(&self, name: &str) -> Result<ComplianceReport, Error> {
        let now = nanos((self.shared.clock)());
        let mut engine = self
            .shared
            .engine
            .lock()
            .map_err(|_| Error::UnknownPolicy(name.into()))?;
        let i = engine
            .index(name)
            .ok_or_else(|| Error::UnknownPolicy(name.into()))?;
        Ok(report(&mut engine, i, now))
    }

    /// Reports for every policy, in the order they were given.
    pub fn reports(&self) -> Vec<ComplianceReport> {
        let now = nanos((self.shared.clock)());
        let Ok(mut engine) = self.shared.engine.lock() else {
            return Vec::new();
        };
        (0..engine.policies.len())
            .map(|i| report(&mut engine, i, now))
            .collect()
    }

    /// Totals, top actors and every policy's status.
    pub fn stats(&self) -> ComplianceStats {
        let now = nanos((self.shared.clock)());
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
        let Ok(mut engine) = self.shared.engine.lock() else {
            return stats;
        };
        stats.total_events = engine.total;
        stats.events_by_type = engine.by_type();
        stats.other_event_types = engine.other_kinds;
        stats.events_by_actor = engine.by_actor.to_map();
        stats.actors_evicted = engine.by_actor.evicted;
        for s in engine.policies.iter_mut() {
            let total = s.retained(now).iter().sum();
            let over = s.over_threshold(now);
            stats.policy_status.insert(
                s.policy.name.clone(),
                PolicyStatus {
                    total_events: total,
                    recent_events: s.recent(now),
                    violation_threshold: s.policy.threshold,
                    status: if over {
                        Status::Violation
                    } else {
                        Status::Compliant
                    },
                    alerts: s.alerts,
                },
            );
        }
        stats
    }

    /// Replays a trail's records (their own timestamps) through `policies`,
    /// without alerts: the report `tracing-audit report` prints. Returns the
    /// handle and the number of unreadable lines skipped.
    pub fn from_trail(trail: &AuditTrail, policies: Vec<Policy>) -> (Compliance, u64) {
        let (_, compliance) = PolicyLayer::builder()
            .policies(policies)
            .emit_records(false)
            .build::<()>();
        let mut unreadable = 0;
        let mut engine = match compliance.shared.engine.lock() {
            Ok(e) => e,
            Err(_) => return (compliance.clone(), 0),
        };
        let mut sink = Vec::new();
        for r in trail.records() {
            let Ok(r) = r else {
                unreadable += 1;
                continue;
            };
            let Some(kind) = r.event_type.as_deref() else {
                continue;
            };
            let at = r.timestamp.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
            let e = Observed {
                event_type: kind,
                actor: r.actor.as_deref(),
                resource: r.resource.as_deref(),
                outcome: r.outcome,
                risk: r.risk_level,
                at,
            };
            engine.observe(&e, true, &mut sink);
        }
        drop(engine);
        (compliance, unreadable)
    }
}

fn report(engine: &mut Engine, i: usize, now: Nanos) -> ComplianceReport {
    let s = &mut engine.policies[i];
    let counts = s.retained(now);
    let mut events_by_type = BTreeMap::new();
    let mut coverage = Vec::new();
    for (kind, n) in s.policy.require.iter().zip(&counts) {
        events_by_type.insert(kind.clone(), *n);
        if *n == 0 {
            coverage.push(format!(
                "no {kind} event within the {:.0}-day retention (coverage, not a violation)",
                s.policy.retention.as_secs_f64() / 86_400.0
            ));
        }
    }
    let window_events = s.recent(now);
    let since = now.saturating_sub(s.policy.retention.as_nanos() as u64);
    let crossings: Vec<CrossingReport> = s
        .crossings
        .iter()
        .filter(|c| c.at > since && c.at <= now)
        .map(|c| CrossingReport {
            at: time(c.at),
            count: c.count,
            actor: c.actor.clone(),
            event_type: c.event_type.clone(),
        })
        .collect();
    let window = s.policy.window.as_secs();
    let mut violations: Vec<String> = crossings
        .iter()
        .map(|c| {
            format!(
                "threshold {} reached within {window}s at {} ({} events; last {} by {})",
                s.policy.threshold,
                c.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                c.count,
                c.event_type,
                c.actor.as_deref().unwrap_or("(no actor)")
            )
        })
        .collect();
    if violations.is_empty() && s.over_threshold(now) {
        violations.push(format!(
            "threshold {} reached: at least {} events within {window}s now",
            s.policy.threshold, s.policy.threshold
        ));
    }
    let p = &s.policy;
    ComplianceReport {
        policy: p.name.clone(),
        policy_name: p.title.clone().unwrap_or_else(|| p.name.clone()),
        description: p.description.clone(),
        generated_at: time(now),
        total_events: counts.iter().sum(),
        events_by_type,
        coverage,
        crossings,
        status: if violations.is_empty() {
            Status::Compliant
        } else {
            Status::Violation
        },
        violations,
        window_events,
        threshold: p.threshold,
        retention_days: p.retention.as_secs_f64() / 86_400.0,
        alerts: s.alerts,
    }
}
