//! User code inside a field value: a panic, and an audit event emitted while
//! the outer event is being recorded. Its own binary, as it sets the global
//! default subscriber (a scoped default drops re-entrant events).

mod common;

use common::app_records;
use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn a_panicking_field_and_a_reentrant_event_do_not_escape() {
    struct Panics;
    impl std::fmt::Debug for Panics {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("user Debug impl panics")
        }
    }
    /// Emits an audit event from inside its own formatting.
    struct Reenters;
    impl std::fmt::Debug for Reenters {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            tracing::info!(audit.event = "inner");
            f.write_str("outer-value")
        }
    }
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let handle = guard.handle();
    let sub = tracing_subscriber::registry().with(audit);
    // A global default lets the re-entrant event dispatch (a scoped one would drop it).
    let _ = tracing::subscriber::set_global_default(sub);
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    tracing::info!(audit.event = "outer", v = ?Reenters);
    tracing::info!(audit.event = "boom", v = ?Panics);
    std::panic::set_hook(prev);
    tracing::info!(audit.event = "after");
    drop(guard);
    let kinds: Vec<String> = app_records(dir.path())
        .iter()
        .map(|r| r["event_type"].as_str().unwrap().to_owned())
        .collect();
    // The panicking field costs only its own value: the event is kept,
    // with a marker in its place, flagged.
    assert_eq!(kinds, ["inner", "outer", "boom", "after"]);
    assert_eq!(handle.stats().callback_errors, 1);
    assert_eq!(handle.stats().records_dropped, 0);
    let outer = &app_records(dir.path())[1];
    assert_eq!(outer["details"]["v"], "outer-value");
    let boom = &app_records(dir.path())[2];
    assert_eq!(boom["details"]["v"], "<the value's Debug panicked>");
    assert_eq!(boom["details"]["audit.invalid"], serde_json::json!(["v"]));
}
