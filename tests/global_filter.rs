//! A global filter hides audit events from every layer; the audit layer
//! notices and says so. Its own binary: the max level is process-wide.

mod common;

use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

#[test]
fn per_layer_console_filter_keeps_audit_events_and_a_global_one_is_reported() {
    // Right: the console's filter is its own.
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(EnvFilter::new("warn"));
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(console).with(audit),
        || {
            let _s = tracing::debug_span!("req", audit.actor = "alice").entered();
            tracing::debug!(audit.event = "login");
        },
    );
    drop(guard);
    let all = common::read_trail(dir.path());
    let login = all
        .iter()
        .find(|r| r["event_type"] == "login")
        .expect("DEBUG audit event kept");
    assert_eq!(login["actor"], "alice");
    assert!(all
        .iter()
        .all(|r| r["event_type"] != "audit_config_warning"));

    // Wrong: a global EnvFilter; the INFO event is lost, and the trail says why.
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let sub = tracing_subscriber::registry()
        .with(EnvFilter::new("warn"))
        .with(audit);
    tracing::subscriber::with_default(sub, || {
        tracing::info!(audit.event = "login");
        tracing::warn!(audit.event = "auth_failure");
    });
    drop(guard);
    let all = common::read_trail(dir.path());
    assert!(all.iter().all(|r| r["event_type"] != "login"));
    let w = all
        .iter()
        .find(|r| r["event_type"] == "audit_config_warning")
        .expect("warning record");
    assert_eq!(w["details"]["max_level"], "warn");
}
