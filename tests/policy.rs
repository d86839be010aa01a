//! The PolicyLayer in real subscriber stacks, with an injected clock.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_audit::{policy::Status, AuditLayer, Outcome, Policy, PolicyLayer};
use tracing_subscriber::layer::SubscriberExt;

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);
impl TestClock {
    fn new() -> Self {
        TestClock(Arc::new(AtomicU64::new(1_700_000_000)))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

fn failed_logins() -> Policy {
    Policy::new("failed_logins")
        .require(["auth_failure"])
        .outcome(Outcome::Failure)
        .threshold(3)
        .window(Duration::from_secs(300))
        .retention(Duration::from_secs(30 * 86_400))
}

#[test]
fn defaults_are_the_seed_policies_and_report_missing_kinds() {
    let (layer, compliance) = PolicyLayer::builder().policies(Policy::defaults()).build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::info!(audit.event = "login", audit.actor = "alice");
        tracing::info!(audit.event = "logout", audit.actor = "alice");
        tracing::info!(audit.event = "data_access", audit.actor = "bob");
        tracing::info!("not an audit event");
    });
    let names: Vec<String> = compliance.reports().into_iter().map(|r| r.policy).collect();
    assert_eq!(
        names,
        [
            "data_access_tracking",
            "authentication_monitoring",
            "security_compliance"
        ]
    );
    let auth = compliance.report("authentication_monitoring").unwrap();
    assert_eq!(auth.policy_name, "Authentication Monitoring");
    assert_eq!(auth.description, "Monitor authentication failures");
    // Successful logins are not what this policy counts (the seed's did).
    assert_eq!(auth.total_events, 0);
    assert_eq!(auth.events_by_type["auth_failure"], 0);
    // A kind never seen is a coverage finding, not a violation.
    assert_eq!(auth.coverage.len(), 3);
    assert!(auth.coverage[0].contains("coverage, not a violation"));
    assert!(auth.violations.is_empty());
    assert_eq!(auth.status, Status::Compliant);
    assert_eq!(auth.threshold, 3);
    assert_eq!(auth.retention_days, 30.0);
    let json = serde_json::to_value(&auth).unwrap();
    for k in [
        "policy_name",
        "description",
        "generated_at",
        "total_events",
        "events_by_type",
        "violations",
        "coverage",
        "crossings",
        "status",
    ] {
        assert!(json.get(k).is_some(), "{k} missing from {json}");
    }
    assert_eq!(json["status"], "compliant");
    assert!(compliance.report("nope").is_err());

    let stats = compliance.stats();
    assert_eq!(stats.total_events, 3);
    assert_eq!(stats.events_by_actor["alice"], 2);
    assert_eq!(
        stats.policy_status["security_compliance"].status,
        Status::Compliant
    );
    assert_eq!(stats.policy_status["data_access_tracking"].total_events, 1);
    serde_json::to_string(&stats).unwrap();
}

#[test]
fn window_edges_alerts_rearm_and_retention_with_a_test_clock() {
    let clock = TestClock::new();
    let c = clock.clone();
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        .clock(move || c.now())
        .on_alert(move |a| tx.send(a.clone()).unwrap())
        .build();
    let fail = || {
        tracing::warn!(
            audit.event = "auth_failure",
            audit.outcome = "failure",
            audit.actor = "mallory"
        )
    };
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        fail();
        clock.advance(100);
        fail();
        clock.advance(200); // the first is now exactly one window old: out
        fail();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "2 in window, no alert yet"
        );
        clock.advance(1);
        fail(); // 3 within (now-300, now]
        let a = rx.recv_timeout(Duration::from_secs(5)).expect("alert");
        assert_eq!(
            (a.policy.as_str(), a.count, a.actor.as_deref()),
            ("failed_logins", 3, Some("mallory"))
        );
        for _ in 0..10 {
            fail();
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "one alert per crossing"
        );
        // Successes never count for this policy.
        tracing::info!(audit.event = "auth_failure", audit.outcome = "success");
        clock.advance(301);
        for _ in 0..3 {
            fail();
        }
        rx.recv_timeout(Duration::from_secs(5))
            .expect("re-armed after the window emptied");
    });
    let r = compliance.report("failed_logins").unwrap();
    assert_eq!(r.total_events, 17);
    assert_eq!(r.alerts, 2);
    assert_eq!(r.status, Status::Violation);
    // Both crossings are listed, with when, how many and who.
    assert_eq!(r.crossings.len(), 2, "{:?}", r.crossings);
    assert_eq!(r.crossings[0].count, 3);
    assert_eq!(r.crossings[0].actor.as_deref(), Some("mallory"));
    assert_eq!(r.violations.len(), 2);
    // Ten minutes later the window is empty, but the crossings happened
    // within the report period: still a violation.
    clock.advance(600);
    let r = compliance.report("failed_logins").unwrap();
    assert_eq!(r.status, Status::Violation);
    clock.advance(31 * 86_400);
    let r = compliance.report("failed_logins").unwrap();
    assert_eq!(r.total_events, 0, "retention pruned the counts");
    assert!(r.violations.is_empty() && r.crossings.is_empty());
    assert_eq!(r.status, Status::Compliant);
    assert_eq!(r.coverage.len(), 1);
}

#[test]
fn span_context_counts_and_no_audit_layer_needed() {
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins().actor("eve"))
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let span = tracing::info_span!("req", audit.actor = "eve", audit.outcome = "failure");
        let _e = span.enter();
        tracing::warn!(audit.event = "auth_failure");
        tracing::warn!(audit.event = "auth_failure", audit.actor = "bob");
    });
    assert_eq!(compliance.report("failed_logins").unwrap().total_events, 1);
}

#[test]
fn alert_records_enter_the_audit_stream_without_loops() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        // Names the alert record's kind: counts it, and its own alert is
        // delivered; the record of that alert is counted by no one.
        .policy(
            Policy::new("meta")
                .require(["policy_threshold_exceeded"])
                .threshold(1),
        )
        .on_alert(move |a| tx.send(a.policy.clone()).unwrap())
        .build();
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(audit).with(layer),
        || {
            for _ in 0..5 {
                tracing::warn!(
                    audit.event = "auth_failure",
                    audit.outcome = "failure",
                    audit.actor = "mallory"
                );
            }
            let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!((first.as_str(), second.as_str()), ("failed_logins", "meta"));
            assert!(
                rx.recv_timeout(Duration::from_millis(300)).is_err(),
                "meta's own record must not alert again"
            );
        },
    );
    drop(guard);
    let meta = compliance.report("meta").unwrap();
    assert_eq!(meta.total_events, 1, "only failed_logins' record counted");
    assert_eq!(meta.alerts, 1);
    let recs: Vec<_> = common::app_records(dir.path())
        .into_iter()
        .filter(|r| r["event_type"] == "policy_threshold_exceeded")
        .collect();
    assert_eq!(recs.len(), 2);
    let r = &recs[0];
    assert_eq!(r["details"]["policy"], "failed_logins");
    assert_eq!(r["details"]["count"], 3);
    assert_eq!(r["details"]["window"], "5m");
    assert_eq!(r["details"]["window_secs"], 300.0);
    assert_eq!(r["details"]["triggered_by_alert"], false);
    assert_eq!(r["actor"], "mallory");
    assert_eq!(r["risk_level"], "high");
    assert_eq!(recs[1]["details"]["policy"], "meta");
    assert_eq!(recs[1]["details"]["triggered_by_alert"], true);
}

/// Events from the alert thread neither count nor disarm a policy that
/// does not name their kind: its later alerts are all delivered.
#[test]
fn alert_records_do_not_feed_policies_that_do_not_name_them() {
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(Policy::new("a").require(["breach"]).threshold(1))
        // Any kind, high risk: the alert record (risk high) would match.
        .policy(
            Policy::new("b")
                .min_risk(tracing_audit::Risk::High)
                .threshold(2),
        )
        .on_alert(move |a| tx.send(a.policy.clone()).unwrap())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::warn!(audit.event = "breach", audit.risk = "high");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "a");
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "b counted a's alert record");
        tracing::warn!(audit.event = "escalation", audit.risk = "high");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "b");
    });
    let b = compliance.report("b").unwrap();
    assert_eq!((b.total_events, b.alerts), (2, 1));
}

/// Runs `tracing-audit report <dir> [--defaults] --policies <file> --json`
/// with `policies_toml` written into `dir`.
#[cfg(feature = "cli")]
fn report_offline(
    dir: &std::path::Path,
    policies_toml: &str,
    defaults: bool,
) -> std::process::Output {
    let policies = dir.join("policies.toml");
    std::fs::write(&policies, policies_toml).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tracing-audit"));
    cmd.arg("report").arg(dir);
    if defaults {
        cmd.arg("--defaults");
    }
    cmd.arg("--policies").arg(&policies).arg("--json");
    cmd.output().unwrap()
}

#[cfg(feature = "cli")]
#[test]
fn offline_report_matches_the_live_one() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let (layer, compliance) = PolicyLayer::builder()
        .policies(Policy::defaults())
        .emit_records(false)
        .build();
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(audit).with(layer),
        || {
            for i in 0..7 {
                tracing::info!(audit.event = "data_access", audit.actor = "bob", i);
            }
            tracing::warn!(audit.event = "auth_failure", audit.actor = "x");
            tracing::info!(audit.event = "login", audit.actor = "x");
        },
    );
    drop(guard);
    let out = report_offline(
        dir.path(),
        "[[policy]]\nname = \"exports\"\nrequire = [\"data_export\"]\n",
        true,
    );
    // 7 data_access events cross data_access_tracking's threshold of 5:
    // `report` exits 1 so CI and cron can gate on it.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offline.len(), 4);
    for live in compliance.reports() {
        let off = offline
            .iter()
            .find(|r| r["policy"] == live.policy.as_str())
            .unwrap();
        assert_eq!(off["total_events"], live.total_events, "{}", live.policy);
        assert_eq!(off["status"], serde_json::to_value(live.status).unwrap());
        assert_eq!(
            off["events_by_type"],
            serde_json::to_value(&live.events_by_type).unwrap()
        );
    }
    assert_eq!(offline[0]["status"], "violation");
    assert_eq!(offline[0]["crossings"].as_array().unwrap().len(), 1);
    // No data_export recorded: a coverage finding, not a violation.
    assert_eq!(offline[3]["status"], "compliant");
    assert_eq!(offline[3]["coverage"].as_array().unwrap().len(), 1);
}

/// An audited span's record (written when it closes) counts live as it does
/// in a replay of the trail: its kind, its own outcome (never an enclosing
/// span's), its actor from the span scope.
#[test]
fn audited_spans_count_live_as_in_the_trail() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let failed_exports = Policy::new("failed_exports")
        .require(["data_export"])
        .outcome(Outcome::Failure)
        .threshold(2)
        .window(Duration::from_secs(3600));
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_exports)
        .emit_records(false)
        .build();
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(audit).with(layer),
        || {
            let outer = tracing::info_span!("req", audit.actor = "bob", audit.outcome = "failure");
            let _o = outer.enter();
            for outcome in ["failure", "failure", "success"] {
                let export = tracing::info_span!(
                    "export",
                    audit.event = "data_export",
                    audit.outcome = tracing::field::Empty
                );
                export.record("audit.outcome", outcome);
                drop(export);
            }
            // No outcome of its own: "unknown", not the enclosing "failure".
            drop(tracing::info_span!("export", audit.event = "data_export"));
            // Context only: no record, nothing counted.
            drop(tracing::info_span!("ctx", audit.actor = "eve"));
        },
    );
    drop(guard);
    let live = compliance.report("failed_exports").unwrap();
    assert_eq!(live.total_events, 2, "{live:?}");
    assert_eq!(live.events_by_type.get("data_export"), Some(&2));
    assert_eq!(live.status, Status::Violation);
    // The same trail replayed by `tracing-audit report` (the command needs
    // the `cli` feature) gives the same report.
    #[cfg(feature = "cli")]
    {
        let out = report_offline(
            dir.path(),
            "[[policy]]\nname = \"failed_exports\"\nrequire = [\"data_export\"]\noutcome = \"failure\"\nthreshold = 2\nwindow = \"1h\"\n",
            false,
        );
        let offline: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(offline.len(), 1);
        assert_eq!(offline[0]["total_events"], live.total_events);
        assert_eq!(
            offline[0]["events_by_type"],
            serde_json::to_value(&live.events_by_type).unwrap()
        );
        assert_eq!(offline[0]["status"], "violation");
        assert_eq!(
            offline[0]["crossings"].as_array().unwrap().len(),
            live.crossings.len()
        );
    }
    #[cfg(not(feature = "cli"))]
    let _ = dir;
}

/// A clock the test sets to any reading, backwards included.
#[derive(Clone)]
struct SetClock(Arc<std::sync::Mutex<SystemTime>>);
impl SetClock {
    fn at(t: SystemTime) -> Self {
        SetClock(Arc::new(std::sync::Mutex::new(t)))
    }
    fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap() = t;
    }
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn fail_as(actor: &str) {
    tracing::warn!(
        audit.event = "auth_failure",
        audit.outcome = "failure",
        audit.actor = actor
    );
}

/// Alerts seen so far, waiting up to `wait` for the first.
fn drain(
    rx: &mpsc::Receiver<tracing_audit::policy::Alert>,
    wait: Duration,
) -> Vec<tracing_audit::policy::Alert> {
    let mut v: Vec<_> = rx.recv_timeout(wait).into_iter().collect();
    std::thread::sleep(Duration::from_millis(100));
    v.extend(rx.try_iter());
    v
}

#[test]
fn a_clock_step_back_counts_each_event_at_its_own_time() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let min = |m: u64| t0 + Duration::from_secs(60 * m);
    let clock = SetClock::at(min(60));
    let c = clock.clone();
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        .clock(move || c.now())
        .on_alert(move |a| tx.send(a.clone()).unwrap())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        fail_as("mallory");
        // NTP steps the clock back an hour: events at 0, 25 and 50 min are
        // never three within five minutes.
        for m in [0, 25, 50] {
            clock.set(min(m));
            fail_as("mallory");
        }
        assert!(drain(&rx, Duration::from_millis(300)).is_empty());
    });
    // A report at 50 min, earlier than the newest event: compliant, with
    // counts within the retention.
    let r = compliance.report("failed_logins").unwrap();
    assert_eq!(
        (r.status, r.alerts, r.total_events),
        (Status::Compliant, 0, 4)
    );
}

#[test]
fn a_report_at_an_earlier_reading_still_sees_the_violation() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let clock = SetClock::at(t0);
    let c = clock.clone();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        .clock(move || c.now())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        for s in [0, 10, 20, 30] {
            clock.set(t0 + Duration::from_secs(s));
            fail_as("mallory");
        }
    });
    let at30 = compliance.report("failed_logins").unwrap();
    clock.set(t0 + Duration::from_secs(29));
    let at29 = compliance.report("failed_logins").unwrap();
    for r in [&at30, &at29] {
        assert_eq!(r.status, Status::Violation);
        assert_eq!(r.crossings.len(), 1);
        assert_eq!(
            r.crossings[0].at,
            chrono::DateTime::<chrono::Utc>::from(t0 + Duration::from_secs(20))
        );
    }
    assert_eq!(
        compliance.stats().policy_status["failed_logins"].status,
        Status::Violation
    );
}

#[test]
fn readings_before_the_epoch_count() {
    let clock = SetClock::at(UNIX_EPOCH - Duration::from_secs(3600));
    let c = clock.clone();
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        .clock(move || c.now())
        .on_alert(move |a| tx.send(a.clone()).unwrap())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        for s in [0, 1, 2] {
            clock.set(UNIX_EPOCH - Duration::from_secs(3600 - s));
            fail_as("mallory");
        }
        let a = drain(&rx, Duration::from_secs(5));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].at.timestamp(), -3598);
    });
    assert_eq!(compliance.report("failed_logins").unwrap().total_events, 3);
}

#[test]
fn out_of_range_settings_are_rejected_at_load_and_shown_as_counted() {
    let dir = common::tempdir();
    let file = dir.path().join("p.toml");
    for (body, field, range) in [
        ("retention = \"213504d\"", "retention", "1s..=36500d"),
        ("window = \"0s\"", "window", "1ms..=36500d"),
        ("threshold = 2000000", "threshold", "1..=10000"),
        (
            "require = [\"data_access\", \"data_access\"]",
            "require",
            "twice",
        ),
    ] {
        std::fs::write(&file, format!("[[policy]]\nname = \"p\"\n{body}\n")).unwrap();
        let e = Policy::load(&file).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(range), "{body}: {e}");
    }
    // The builder's try_build rejects the same; build counts the policy as
    // brought into range, and shows it so.
    let huge = Policy::new("huge")
        .require(["auth_failure"])
        .window(Duration::MAX)
        .retention(Duration::from_secs(213_504 * 86_400));
    assert_eq!(
        PolicyLayer::builder()
            .policy(huge.clone())
            .try_build::<tracing_subscriber::Registry>()
            .unwrap_err()
            .field,
        "window"
    );
    let tiny = Policy::new("tiny")
        .require(["auth_failure"])
        .window(Duration::from_nanos(1))
        .threshold(2);
    let twice = Policy::new("twice")
        .require(["data_access", "data_access"])
        .threshold(3);
    let now = SystemTime::now();
    let clock = SetClock::at(now - Duration::from_secs(3600));
    let c = clock.clone();
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policies([huge, tiny, twice])
        .clock(move || c.now())
        .on_alert(move |a| tx.send(a.clone()).unwrap())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        fail_as("mallory");
        fail_as("mallory");
        tracing::info!(audit.event = "data_access");
        tracing::info!(audit.event = "data_access");
        let a = drain(&rx, Duration::from_secs(5));
        let tiny = a.iter().find(|a| a.policy == "tiny").expect("tiny alerts");
        assert_eq!(
            tiny.window,
            Duration::from_millis(1),
            "the window as counted"
        );
    });
    clock.set(now);
    let huge = compliance.report("huge").unwrap();
    assert_eq!(
        huge.total_events, 2,
        "a one-hour-old event is within 100 years"
    );
    assert_eq!(huge.window, "36500d");
    assert_eq!(compliance.report("tiny").unwrap().window, "1ms");
    let twice = compliance.report("twice").unwrap();
    assert_eq!(twice.total_events, 2, "a kind named twice is counted once");
    assert_eq!(twice.events_by_type.len(), 1);
    assert_eq!(twice.status, Status::Compliant);
}

#[test]
fn actors_are_bounded_in_number_and_size_and_evictions_add_up() {
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(Policy::new("any").threshold(1))
        .top_k(2)
        .emit_records(false)
        .on_alert(move |a| tx.send(a.clone()).unwrap())
        .build();
    let big = "x".repeat(1 << 20);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::info!(audit.event = "login", audit.actor = big.as_str());
        for a in ["b", "c", "d", "e"] {
            tracing::info!(audit.event = "login", audit.actor = a);
        }
        let a = drain(&rx, Duration::from_secs(5));
        assert!(
            a[0].actor.as_ref().unwrap().len() <= 8 * 1024,
            "alert actor cut"
        );
    });
    let s = compliance.stats();
    assert_eq!(s.actors_evicted, 3, "five actors once each, top 2");
    assert_eq!(
        s.events_by_actor.values().sum::<u64>() + s.actors_evicted,
        5
    );
    assert!(s.events_by_actor.keys().all(|k| k.len() <= 8 * 1024));
}

#[test]
fn event_type_stats_keep_their_bound_beside_policy_kinds() {
    let kinds: Vec<String> = (0..400).map(|i| format!("kind{i}")).collect();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(Policy::new("many").require(kinds))
        .top_k(10)
        .emit_records(false)
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::info!(audit.event = "kind7");
        for i in 0..100 {
            tracing::info!(audit.event = "other", i);
            let kind = format!("unnamed{i}");
            tracing::info!(audit.event = kind.as_str());
        }
    });
    let s = compliance.stats();
    assert_eq!(s.events_by_type["kind7"], 1);
    assert_eq!(s.events_by_type["other"], 100);
    assert_eq!(s.events_by_type.len(), 1 + 40, "kind7 + 4 × top-k others");
    assert_eq!(s.other_event_types, 100 - 39);
}

#[test]
fn stats_and_report_give_one_verdict() {
    let clock = TestClock::new();
    let c = clock.clone();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        .clock(move || c.now())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        for _ in 0..3 {
            fail_as("mallory");
        }
    });
    // An hour later the window is empty, but the crossing is within retention.
    clock.advance(3600);
    let r = compliance.report("failed_logins").unwrap();
    let s = &compliance.stats().policy_status["failed_logins"];
    assert_eq!((r.status, s.status), (Status::Violation, Status::Violation));
    // Counts are kept in 64 buckets per period, and the report says so.
    assert_eq!(r.counts_precision_secs, 30.0 * 86_400.0 / 64.0);
}

#[test]
fn group_by_counts_each_actor_and_source_on_its_own() {
    let dir = common::tempdir();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[[policy]]\nname = \"brute_force\"\nrequire = [\"auth_failure\"]\noutcome = \"failure\"\nthreshold = 3\nwindow = \"5m\"\ngroup_by = \"actor\"\n\n[[policy]]\nname = \"by_ip\"\nrequire = [\"auth_failure\"]\nthreshold = 3\nwindow = \"5m\"\ngroup_by = \"ip\"\n",
    )
    .unwrap();
    let policies = Policy::load(&file).unwrap();
    assert_eq!(
        policies[0].group_by,
        Some(tracing_audit::policy::GroupBy::Actor)
    );
    let (tx, rx) = mpsc::channel();
    let (layer, compliance) = PolicyLayer::builder()
        .policies(policies)
        .max_groups(4)
        .on_alert(move |a| tx.send(a.clone()).unwrap())
        .build();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        // Five users failing once each, from five addresses: no alert.
        for (u, ip) in [
            ("u1", "10.0.0.1"),
            ("u2", "10.0.0.2"),
            ("u3", "10.0.0.3"),
            ("u4", "10.0.0.4"),
            ("u5", "10.0.0.5"),
        ] {
            tracing::warn!(
                audit.event = "auth_failure",
                audit.outcome = "failure",
                audit.actor = u,
                audit.ip = ip
            );
        }
        assert!(drain(&rx, Duration::from_millis(300)).is_empty());
        // One address tries three accounts: by_ip alerts, naming it.
        for u in ["root", "admin", "oracle"] {
            tracing::warn!(
                audit.event = "auth_failure",
                audit.outcome = "failure",
                audit.actor = u,
                audit.ip = "203.0.113.9"
            );
        }
        let a = drain(&rx, Duration::from_secs(5));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].policy, "by_ip");
        assert_eq!(
            a[0].group,
            Some((
                tracing_audit::policy::GroupBy::Ip,
                "203.0.113.9".to_string()
            ))
        );
        // One account failing three times: brute_force alerts, naming it.
        for _ in 0..3 {
            tracing::warn!(
                audit.event = "auth_failure",
                audit.outcome = "failure",
                audit.actor = "alice",
                audit.ip = "198.51.100.7"
            );
        }
        let a = drain(&rx, Duration::from_secs(5));
        let mut who: Vec<_> = a.iter().map(|a| a.group.clone().unwrap()).collect();
        who.sort();
        use tracing_audit::policy::GroupBy;
        assert_eq!(
            who,
            [
                (GroupBy::Actor, "alice".to_string()),
                (GroupBy::Ip, "198.51.100.7".to_string())
            ]
        );
    });
    let r = compliance.report("brute_force").unwrap();
    assert_eq!(r.crossings[0].group.as_deref(), Some("alice"));
    assert!(
        r.violations[0].contains("for actor alice"),
        "{:?}",
        r.violations
    );
    // Nine actors seen, four tracked: five evicted, and said.
    assert_eq!(r.groups_evicted, 5);
    let s = &compliance.stats().policy_status["brute_force"];
    assert_eq!((s.groups, s.groups_evicted), (4, 5));
}

/// A collected copy merged from several instances holds records out of
/// time order; the offline report counts each at its own timestamp.
#[test]
fn offline_replay_counts_out_of_order_records_at_their_own_time() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for _ in 0..4 {
            fail_as("mallory");
        }
    });
    drop(guard);
    // In file order: 0 s, 100 s, 50 s, 60 s. No 10 seconds hold three of
    // them; clamping each to the latest seen would put three at 100 s.
    let file = common::audit_files(dir.path()).pop().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut offsets = [0i64, 100, 50, 60].into_iter();
    for line in &lines {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let line = if v["event_type"] == "auth_failure" {
            let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap()
                + chrono::Duration::seconds(offsets.next().unwrap());
            let old = v["timestamp"].as_str().unwrap().to_owned();
            v["timestamp"] = at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into();
            line.replace(&old, v["timestamp"].as_str().unwrap())
        } else {
            line.clone()
        };
        let sealed = match out.last() {
            Some(prev) => common::reseal(&line, prev),
            None => line,
        };
        out.push(sealed);
    }
    std::fs::write(&file, out.join("\n") + "\n").unwrap();
    tracing_audit::verify(dir.path(), None).unwrap();
    let policy = Policy::new("p")
        .require(["auth_failure"])
        .threshold(3)
        .window(Duration::from_secs(10))
        .retention(Duration::from_secs(10 * 365 * 86_400));
    let trail = tracing_audit::trail::AuditTrail::open(dir.path()).unwrap();
    let (c, unreadable) = trail.compliance(vec![policy.clone().threshold(3)]);
    assert_eq!(unreadable, 0);
    let r = c.report("p").unwrap();
    assert_eq!(r.total_events, 4);
    assert_eq!((r.status, r.alerts), (Status::Compliant, 0), "{r:?}");
    // Threshold 2 in 20 s: only 50 s and 60 s are close enough, so the one
    // crossing is at 60 s (the fourth record), not at the second.
    let (c, _) = trail.compliance(vec![policy.threshold(2).window(Duration::from_secs(20))]);
    let r = c.report("p").unwrap();
    assert_eq!(r.alerts, 1);
    assert_eq!(r.crossings[0].at.to_rfc3339(), "2026-01-01T00:01:00+00:00");
}
