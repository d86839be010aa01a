//! The PolicyLayer in real subscriber stacks, with an injected clock.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_audit::{AuditLayer, Outcome, Policy, PolicyLayer, Status};
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
    let alerts = Arc::new(AtomicU64::new(0));
    let n = alerts.clone();
    let (layer, compliance) = PolicyLayer::builder()
        .policy(failed_logins())
        // Matches the alert record itself; must not alert again because of it.
        .policy(
            Policy::new("meta")
                .require(["policy_threshold_exceeded"])
                .threshold(1),
        )
        .on_alert(move |_| {
            n.fetch_add(1, Ordering::SeqCst);
        })
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
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while compliance.report("meta").unwrap().total_events == 0
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
        },
    );
    drop(guard);
    assert_eq!(
        alerts.load(Ordering::SeqCst),
        1,
        "one alert: failed_logins, none from meta"
    );
    assert_eq!(
        compliance.report("meta").unwrap().total_events,
        1,
        "the alert record was counted"
    );
    let recs: Vec<_> = common::app_records(dir.path())
        .into_iter()
        .filter(|r| r["event_type"] == "policy_threshold_exceeded")
        .collect();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["details"]["policy"], "failed_logins");
    assert_eq!(r["details"]["count"], 3);
    assert_eq!(r["details"]["window_secs"], 300);
    assert_eq!(r["actor"], "mallory");
    assert_eq!(r["risk_level"], "high");
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
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        "[[policy]]\nname = \"exports\"\nrequire = [\"data_export\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args([
            "report",
            dir.path().to_str().unwrap(),
            "--defaults",
            "--policies",
        ])
        .arg(&policies)
        .arg("--json")
        .output()
        .unwrap();
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
