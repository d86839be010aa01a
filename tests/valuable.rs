//! `audit.details` as a structured `valuable` value (feature `valuable`,
//! built with `--cfg tracing_unstable`).
#![cfg(all(tracing_unstable, feature = "valuable"))]

mod common;

use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;
use valuable::Valuable;

#[derive(Valuable)]
struct Export {
    rows: u64,
    format: String,
    columns: Vec<String>,
    note: String,
}

#[test]
fn structured_details_are_merged_with_types_kept() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let export = Export {
        rows: 1520,
        format: "csv".into(),
        columns: vec!["id".into(), "email".into()],
        note: "line\nbreak \u{1b}[31m".into(),
    };
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "data_export",
            audit.details = export.as_value(),
            reason = "monthly"
        );
    });
    drop(guard);
    for l in common::raw_lines(dir.path()) {
        assert!(l.bytes().all(|b| b >= 0x20), "raw control byte");
    }
    let r = &common::app_records(dir.path())[0];
    let d = &r["details"];
    assert_eq!(d["rows"], 1520);
    assert_eq!(d["format"], "csv");
    assert_eq!(d["columns"], serde_json::json!(["id", "email"]));
    assert_eq!(d["note"], "line\nbreak \u{1b}[31m");
    assert_eq!(d["reason"], "monthly");
}
