//! Audited operations as spans: a span with its own `audit.event` is
//! recorded when it closes, with its duration and the outcome recorded on
//! it, or `unknown` (an early `?` return, a dropped future); optionally an
//! `<event>_started` record when it opens. Events inside inherit its
//! context, never its event type.

mod common;

use std::time::Duration;

use common::app_records;
use tracing::instrument;
use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;

#[instrument(fields(audit.event = "data_export", audit.actor = "alice", audit.resource = %table, audit.outcome))]
fn export(table: &str) -> Result<usize, String> {
    std::thread::sleep(Duration::from_millis(20));
    tracing::info!(audit.event = "row_read", rows = 3u64);
    tracing::Span::current().record("audit.outcome", "success");
    Ok(3)
}

fn parse_id(s: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|e| e.to_string())
}

#[instrument(fields(audit.event = "account_delete", audit.actor = "bob", audit.outcome))]
fn delete(id: &str) -> Result<(), String> {
    let id = parse_id(id)?; // returns early: the outcome is never recorded
    tracing::Span::current().record("audit.outcome", "success");
    let _ = id;
    Ok(())
}

#[instrument(fields(audit.event = "batch_import", audit.actor = "carol", audit.outcome))]
fn import() {
    inner_step();
    tracing::Span::current().record("audit.outcome", "success");
}

#[instrument(fields(audit.event = "import_step"))]
fn inner_step() {}

fn collect(start: bool, f: impl FnOnce()) -> Vec<serde_json::Value> {
    let d = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(d.path())
        .record_span_start(start)
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), f);
    drop(guard);
    let r = tracing_audit::verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    app_records(d.path())
}

#[test]
fn a_successful_operation_is_one_record_with_its_duration_and_outcome() {
    let recs = collect(false, || {
        export("invoices").unwrap();
    });
    let types: Vec<_> = recs.iter().map(|r| r["event_type"].clone()).collect();
    assert_eq!(types, ["row_read", "data_export"], "{recs:#?}");
    let op = &recs[1];
    assert_eq!(op["outcome"], "success");
    assert_eq!(op["actor"], "alice");
    assert_eq!(op["resource"], "invoices");
    assert_eq!(op["message"], "export");
    let us = op["details"]["duration_us"].as_u64().unwrap();
    assert!(us >= 20_000, "{us} µs");
    assert_eq!(op["source"]["span"], "export");
    // The event inside inherits the span's context, not its event type,
    // and not an outcome it had not recorded yet.
    let row = &recs[0];
    assert_eq!(row["actor"], "alice");
    assert_eq!(row["resource"], "invoices");
    assert_eq!(row["outcome"], "unknown");
}

#[test]
fn an_early_question_mark_return_leaves_the_outcome_unknown() {
    let recs = collect(false, || {
        assert!(delete("not-a-number").is_err());
        delete("42").unwrap();
    });
    let ops: Vec<_> = recs
        .iter()
        .filter(|r| r["event_type"] == "account_delete")
        .collect();
    assert_eq!(ops.len(), 2, "{recs:#?}");
    assert_eq!(ops[0]["outcome"], "unknown");
    assert_eq!(ops[1]["outcome"], "success");
    assert!(ops.iter().all(|r| r["actor"] == "bob"));
}

#[test]
fn nested_audited_spans_are_two_records_and_the_outer_outcome_does_not_leak() {
    let recs = collect(false, import);
    let types: Vec<_> = recs.iter().map(|r| r["event_type"].clone()).collect();
    // The inner closes first.
    assert_eq!(types, ["import_step", "batch_import"], "{recs:#?}");
    assert_eq!(recs[0]["actor"], "carol", "context from the enclosing span");
    assert_eq!(
        recs[0]["outcome"], "unknown",
        "the outer span's outcome is its own"
    );
    assert_eq!(recs[0]["source"]["span"], "import>inner_step");
    assert_eq!(recs[1]["outcome"], "success");
}

#[instrument(fields(audit.event = "report_build", audit.actor = "dave", audit.outcome))]
async fn slow_report() {
    tokio::time::sleep(Duration::from_secs(30)).await;
    tracing::Span::current().record("audit.outcome", "success");
}

#[test]
fn a_cancelled_future_is_recorded_as_an_attempt_with_outcome_unknown() {
    let mut around = Duration::ZERO;
    let recs = collect(true, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Started, then dropped as a timeout drops it: the span closes
            // without an outcome. (The wait is a thread sleep, which lasts
            // at least its time; tokio's timer once fired a little early
            // under load.)
            let t0 = std::time::Instant::now();
            let mut op = Box::pin(slow_report());
            std::future::poll_fn(|cx| {
                assert!(std::future::Future::poll(op.as_mut(), cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
            std::thread::sleep(Duration::from_millis(50));
            drop(op);
            around = t0.elapsed();
        });
    });
    let types: Vec<_> = recs.iter().map(|r| r["event_type"].clone()).collect();
    assert_eq!(types, ["report_build_started", "report_build"], "{recs:#?}");
    assert_eq!(recs[0]["outcome"], "unknown");
    assert!(recs[0]["details"].get("duration_us").is_none());
    let op = &recs[1];
    assert_eq!(op["outcome"], "unknown");
    assert_eq!(op["actor"], "dave");
    // From the span's creation to the future's drop: at least the wait,
    // at most the time measured around both.
    let us = op["details"]["duration_us"].as_u64().unwrap();
    let around = u64::try_from(around.as_micros()).unwrap();
    assert!(
        (50_000..=around).contains(&us),
        "{us} µs, {around} µs around"
    );
}

#[test]
fn spans_without_their_own_event_stay_context_only() {
    let recs = collect(true, || {
        let span = tracing::info_span!("request", audit.actor = "erin", audit.outcome = "success");
        let _g = span.enter();
        tracing::warn!(audit.event = "auth_failure", "bad password");
    });
    let types: Vec<_> = recs.iter().map(|r| r["event_type"].clone()).collect();
    assert_eq!(types, ["auth_failure"], "{recs:#?}");
    assert_eq!(recs[0]["actor"], "erin");
}
