//! ECS and OCSF mappings of a record: every field where the README's table
//! says, on a full record and on one with every optional field null; the
//! mapped document always names its record; `query --format`.

mod common;

use serde_json::Value;
use tracing_audit::record::mapping::Schema;
use tracing_audit::record::AuditRecord;
use tracing_audit::trail::AuditTrail;
use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;

fn records(full: bool) -> (tempfile::TempDir, Vec<AuditRecord>) {
    let d = common::tempdir();
    let mut b = AuditLayer::builder().file(d.path());
    if full {
        b = b
            .service("billing-api")
            .version("1.2.3")
            .environment("prod")
            .host("web-1");
    }
    let (audit, guard) = b.build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        if full {
            let span = tracing::info_span!("request", audit.session = "s-9");
            let _g = span.enter();
            tracing::warn!(
                audit.event = "auth_failure",
                audit.actor = "mallory",
                audit.resource = "/login",
                audit.action = "POST /login",
                audit.outcome = "failure",
                audit.risk = "high",
                audit.ip = "203.0.113.9",
                attempt = 3u64,
                "bad password"
            );
            tracing::info!(
                audit.event = "data_access",
                audit.actor = "alice",
                audit.resource = "invoice/42",
                audit.action = "read",
                audit.outcome = "success",
                "read invoice"
            );
        } else {
            tracing::info!(audit.event = "ping");
        }
    });
    drop(guard);
    let recs: Vec<AuditRecord> = AuditTrail::open(d.path())
        .unwrap()
        .records()
        .collect::<Result<_, _>>()
        .unwrap();
    (d, recs)
}

fn app(recs: &[AuditRecord], event: &str) -> AuditRecord {
    recs.iter()
        .find(|r| r.event_type.as_deref() == Some(event))
        .unwrap()
        .clone()
}

/// Every mapped document names the record it came from.
fn names_its_record(doc: &Value, r: &AuditRecord, schema: Schema) {
    match schema {
        Schema::Ecs => {
            assert_eq!(doc["event"]["id"], r.audit_id.as_str());
            assert_eq!(doc["event"]["sequence"], r.seq);
            assert_eq!(doc["event"]["hash"], r.hash.as_str());
            assert_eq!(doc["audit"]["chain_id"].as_str(), r.chain_id.as_deref());
        }
        _ => {
            assert_eq!(doc["metadata"]["uid"], r.audit_id.as_str());
            assert_eq!(doc["metadata"]["sequence"], r.seq);
            assert_eq!(doc["unmapped"]["hash"], r.hash.as_str());
            assert_eq!(doc["metadata"]["log_name"].as_str(), r.chain_id.as_deref());
        }
    }
}

#[test]
fn ecs_of_a_full_record() {
    let (_d, recs) = records(true);
    let r = app(&recs, "auth_failure");
    let e = r.to_schema(Schema::Ecs);
    names_its_record(&e, &r, Schema::Ecs);
    assert_eq!(e["event"]["action"], "auth_failure");
    assert_eq!(
        e["event"]["category"],
        serde_json::json!(["authentication"])
    );
    assert_eq!(e["event"]["outcome"], "failure");
    assert_eq!(e["event"]["severity"], 3);
    assert_eq!(e["user"]["name"], "mallory");
    assert_eq!(e["source"]["ip"], "203.0.113.9");
    assert_eq!(e["message"], "bad password");
    assert_eq!(e["service"]["name"], "billing-api");
    assert_eq!(e["service"]["version"], "1.2.3");
    assert_eq!(e["service"]["environment"], "prod");
    assert_eq!(e["host"]["name"], "web-1");
    assert_eq!(e["log"]["level"], "warn");
    assert_eq!(e["audit"]["resource"], "/login");
    assert_eq!(e["audit"]["action"], "POST /login");
    assert_eq!(e["audit"]["session_id"], "s-9");
    assert_eq!(e["audit"]["risk"], "high");
    assert_eq!(e["audit"]["details"]["attempt"], 3);
    assert_eq!(
        e["@timestamp"],
        r.timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .as_str()
    );
    let d = app(&recs, "data_access").to_schema(Schema::Ecs);
    assert_eq!(d["event"]["category"], serde_json::json!(["database"]));
    assert_eq!(d["event"]["severity"], 1);
}

#[test]
fn ocsf_of_a_full_record() {
    let (_d, recs) = records(true);
    let r = app(&recs, "auth_failure");
    let o = r.to_schema(Schema::Ocsf);
    names_its_record(&o, &r, Schema::Ocsf);
    assert_eq!(
        (o["class_uid"].clone(), o["activity_id"].clone()),
        (3002.into(), 1.into())
    );
    assert_eq!(o["type_uid"], 300201);
    assert_eq!(o["status_id"], 2);
    assert_eq!(o["status"], "Failure");
    assert_eq!(o["severity_id"], 4);
    assert_eq!(o["actor"]["user"]["name"], "mallory");
    assert_eq!(o["user"]["name"], "mallory");
    assert_eq!(o["actor"]["session"]["uid"], "s-9");
    assert_eq!(o["src_endpoint"]["ip"], "203.0.113.9");
    assert_eq!(o["resources"][0]["name"], "/login");
    assert_eq!(o["device"]["hostname"], "web-1");
    assert_eq!(o["time"], r.timestamp.timestamp_millis());
    assert_eq!(o["unmapped"]["details"]["attempt"], 3);
    assert_eq!(o["unmapped"]["service"], "billing-api");
    let d = app(&recs, "data_access");
    let od = d.to_schema(Schema::Ocsf);
    assert_eq!(
        (od["class_uid"].clone(), od["activity_id"].clone()),
        (6003.into(), 2.into())
    );
    assert_eq!(od["api"]["operation"], "data_access");
    assert_eq!(od["status_id"], 1);
    assert_eq!(od["severity_id"], 2);
}

#[test]
fn mappings_of_a_record_with_every_optional_field_null() {
    let (_d, recs) = records(false);
    let r = app(&recs, "ping");
    assert!(r.actor.is_none() && r.ip_address.is_none() && r.resource.is_none());
    let e = r.to_schema(Schema::Ecs);
    names_its_record(&e, &r, Schema::Ecs);
    for absent in ["user", "source", "service", "message"] {
        assert!(e.get(absent).is_none(), "{absent}: {e}");
    }
    assert_eq!(e["event"]["outcome"], "unknown");
    assert_eq!(e["event"]["category"], serde_json::json!(["process"]));
    assert!(e["audit"].get("resource").is_none());
    let o = r.to_schema(Schema::Ocsf);
    names_its_record(&o, &r, Schema::Ocsf);
    for absent in ["actor", "src_endpoint", "resources", "user", "message"] {
        assert!(o.get(absent).is_none(), "{absent}: {o}");
    }
    assert_eq!(
        (o["class_uid"].clone(), o["activity_id"].clone()),
        (6003.into(), 99.into())
    );
    assert_eq!(o["status_id"], 0);
    // Every record of the trail maps, the crate's own included.
    for r in &recs {
        for s in [Schema::Ecs, Schema::Ocsf] {
            names_its_record(&r.to_schema(s), r, s);
        }
    }
}

#[cfg(feature = "cli")]
#[test]
fn query_format_prints_mapped_json_lines() {
    let (d, recs) = records(true);
    for (format, key) in [("ecs", "event"), ("ocsf", "metadata")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
            .args(["query", "--format", format, "--event-type", "auth_failure"])
            .arg(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        let r = app(&recs, "auth_failure");
        let id = if key == "event" {
            &lines[0]["event"]["id"]
        } else {
            &lines[0]["metadata"]["uid"]
        };
        assert_eq!(id, r.audit_id.as_str());
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(["query", "--format", "cef"])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
