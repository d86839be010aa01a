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

#[test]
fn valuable_convention_fields_fill_their_slots_or_are_flagged() {
    #[derive(Valuable)]
    struct Clash {
        reason: String,
    }
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let actor = String::from("alice");
    let clash = Clash {
        reason: "from valuable".into(),
    };
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        let _s = tracing::info_span!("req", audit.session = "s1".as_value()).entered();
        tracing::info!(
            audit.event = "login".as_value(),
            audit.actor = actor.as_value(),
            audit.risk = "high".as_value(),
            audit.resource = clash.as_value(),
            audit.details = clash.as_value(),
            reason = "from the event"
        );
    });
    drop(guard);
    let r = &common::app_records(dir.path())[0];
    assert_eq!(r["event_type"], "login");
    assert_eq!(r["actor"], "alice");
    assert_eq!(r["risk_level"], "high");
    assert_eq!(r["session_id"], "s1", "no literal quotes from a span");
    // A structured value cannot fill a slot: kept in details, flagged.
    assert_eq!(r["resource"], serde_json::Value::Null);
    assert_eq!(r["details"]["audit.resource"]["reason"], "from valuable");
    assert!(r["details"]["audit.invalid"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "audit.resource"));
    // A details key that clashes with an event field: both kept.
    let d = r["details"].as_object().unwrap();
    let reasons: Vec<&str> = ["reason", "reason#2"]
        .iter()
        .map(|k| d[*k].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"from valuable") && reasons.contains(&"from the event"));
}

#[derive(Valuable)]
struct Login {
    user: String,
    password: String,
    api_key: u64,
}

#[test]
fn secret_keys_of_a_structured_details_map_are_redacted() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let login = Login {
        user: "alice".into(),
        password: "s3cr3t-in-a-map".into(),
        api_key: 4_242_424_242,
    };
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "login", audit.details = login.as_value());
    });
    drop(guard);
    let raw = common::raw_lines(dir.path()).join("\n");
    assert!(
        !raw.contains("s3cr3t") && !raw.contains("4242424242"),
        "{raw}"
    );
    let r = &common::app_records(dir.path())[0];
    assert_eq!(r["details"]["user"], "alice");
    assert_eq!(r["details"]["password"], tracing_audit::record::REDACTED);
    assert_eq!(r["details"]["api_key"], tracing_audit::record::REDACTED);
    let mut names: Vec<&str> = r["details"]["audit.redacted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["api_key", "password"]);
}
