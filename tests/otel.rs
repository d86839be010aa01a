//! With `tracing-opentelemetry` in the stack (a real layer over an SDK
//! tracer provider), each audit record carries the W3C trace and span ids
//! of its span, the ones the OpenTelemetry span has; without it, nothing.
#![cfg(feature = "opentelemetry")]

mod common;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use tracing_audit::AuditLayer;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn records_carry_the_trace_and_span_ids_of_their_span() {
    let d = common::tempdir();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("audit-test"));
    let (audit, guard) = AuditLayer::builder().file(d.path()).build().unwrap();
    let subscriber = tracing_subscriber::registry().with(otel).with(audit);
    let mut want = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        for user in ["alice", "bob"] {
            let span = tracing::info_span!("request", audit.actor = user);
            let _g = span.enter();
            tracing::info!(audit.event = "data_access", "read");
            let sc = span.context().span().span_context().clone();
            want.push((sc.trace_id().to_string(), sc.span_id().to_string()));
            // An audited span gets its own span id.
            let op = tracing::info_span!(
                "export",
                audit.event = "data_export",
                audit.outcome = "success"
            );
            let osc = op.context().span().span_context().clone();
            want.push((osc.trace_id().to_string(), osc.span_id().to_string()));
            drop(op);
        }
        // No span: no ids.
        tracing::info!(audit.event = "no_span");
    });
    drop(guard);
    let recs = common::app_records(d.path());
    let got: Vec<(String, String)> = recs
        .iter()
        .filter(|r| r["event_type"] != "no_span")
        .map(|r| {
            (
                r["details"]["trace_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{r}"))
                    .to_owned(),
                r["details"]["span_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want, "{recs:#?}");
    for (t, s) in &got {
        assert_eq!((t.len(), s.len()), (32, 16));
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()) && t != &"0".repeat(32));
    }
    // Two requests, two traces; the audited span shares its request's trace.
    assert_eq!(got[0].0, got[1].0);
    assert_ne!(got[0].0, got[2].0);
    assert_ne!(got[0].1, got[1].1);
    let lone = recs.iter().find(|r| r["event_type"] == "no_span").unwrap();
    assert!(lone["details"].get("trace_id").is_none());
    assert!(tracing_audit::verify(d.path(), None).unwrap().is_ok());
    // ECS carries them where ECS has them.
    let trail = tracing_audit::trail::AuditTrail::open(d.path()).unwrap();
    let first = trail
        .records()
        .map(Result::unwrap)
        .find(|r| r.event_type.as_deref() == Some("data_access"))
        .unwrap();
    let ecs = first.to_schema(tracing_audit::record::mapping::Schema::Ecs);
    assert_eq!(ecs["trace"]["id"], got[0].0.as_str());
    assert_eq!(ecs["span"]["id"], got[0].1.as_str());
}

#[test]
fn without_tracing_opentelemetry_nothing_changes() {
    let d = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(d.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        let span = tracing::info_span!("request", audit.actor = "alice");
        let _g = span.enter();
        tracing::info!(audit.event = "data_access");
    });
    drop(guard);
    let recs = common::app_records(d.path());
    assert_eq!(recs.len(), 1);
    assert!(recs[0]["details"].get("trace_id").is_none());
}
