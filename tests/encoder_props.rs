//! Property test of the encoder, end to end: any Unicode in any field, any
//! nesting of spans, up to 24 extra fields beside the audit ones (tracing
//! allows 32 per callsite) → exactly one line, valid JSON, every value
//! round-trips or is cut at a character boundary with the marker, and the
//! trail verifies.

mod common;

use proptest::prelude::*;
use serde_json::Value;
use tracing_audit::{verify, AuditLayer};
use tracing_subscriber::layer::SubscriberExt;

/// The value limit of the layer under test: small, so cuts are common.
const LIMIT: usize = 64;

/// What the record must hold for `v`: itself, or its first bytes up to a
/// character boundary within the limit and the marker.
fn expected(v: &str) -> String {
    if v.len() <= LIMIT {
        return v.to_owned();
    }
    let mut cut = LIMIT;
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...[truncated {} bytes]", &v[..cut], v.len() - cut)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        // Quotes, escapes, controls, line breaks, multi-byte characters.
        2 => proptest::string::string_regex("[\"\\\\\n\r\t\u{0}\u{1f}\u{7f}\u{2028}é€𝄞a-z ]{0,100}").unwrap(),
        1 => (any::<String>(), 1usize..40).prop_map(|(s, n)| s.repeat(n)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    event: String,
    actor: Option<String>,
    resource: String,
    message: String,
    fields: Vec<Option<String>>,
    /// Span actors, outermost first.
    spans: Vec<Option<String>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        text(),
        proptest::option::of(text()),
        text(),
        text(),
        proptest::collection::vec(proptest::option::of(text()), 24),
        proptest::collection::vec(proptest::option::of(text()), 0..5),
    )
        .prop_map(|(event, actor, resource, message, fields, spans)| Case {
            event,
            actor,
            resource,
            message,
            fields,
            spans,
        })
}

/// Emits the case's event inside its spans.
fn emit(c: &Case, depth: usize) {
    if depth < c.spans.len() {
        let span = tracing::info_span!("layer", audit.actor = c.spans[depth].as_deref());
        let _e = span.enter();
        return emit(c, depth + 1);
    }
    let f = |i: usize| c.fields[i].as_deref();
    tracing::info!(
        audit.event = c.event.as_str(),
        audit.actor = c.actor.as_deref(),
        audit.resource = c.resource.as_str(),
        f0 = f(0),
        f1 = f(1),
        f2 = f(2),
        f3 = f(3),
        f4 = f(4),
        f5 = f(5),
        f6 = f(6),
        f7 = f(7),
        f8 = f(8),
        f9 = f(9),
        f10 = f(10),
        f11 = f(11),
        f12 = f(12),
        f13 = f(13),
        f14 = f(14),
        f15 = f(15),
        f16 = f(16),
        f17 = f(17),
        f18 = f(18),
        f19 = f(19),
        f20 = f(20),
        f21 = f(21),
        f22 = f(22),
        f23 = f(23),
        "{}",
        c.message
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn any_event_is_one_valid_line_that_round_trips_and_verifies(c in case()) {
        let dir = common::tempdir();
        let (audit, guard) = AuditLayer::builder()
            .file(dir.path())
            .max_value_len(LIMIT)
            .build()
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || emit(&c, 0));
        drop(guard);
        // Every line parses (read_trail panics otherwise); one is ours.
        let records = common::app_records(dir.path());
        prop_assert_eq!(records.len(), 1, "{:?}", records);
        let r = &records[0];
        let s = |v: &Value| v.as_str().map(str::to_owned);
        prop_assert_eq!(s(&r["event_type"]), Some(expected(&c.event)));
        prop_assert_eq!(s(&r["resource"]), Some(expected(&c.resource)));
        prop_assert_eq!(s(&r["message"]), Some(expected(&c.message)));
        // The event's actor, else the innermost span's that has one.
        let actor = c.actor.clone().or_else(|| c.spans.iter().rev().flatten().next().cloned());
        prop_assert_eq!(s(&r["actor"]), actor.as_deref().map(expected));
        for (i, v) in c.fields.iter().enumerate() {
            let got = &r["details"][format!("f{i}")];
            match v {
                Some(v) => prop_assert_eq!(s(got), Some(expected(v)), "f{}", i),
                None => prop_assert!(got.is_null(), "f{} absent, got {}", i, got),
            }
        }
        let report = verify(dir.path(), None).unwrap();
        prop_assert!(report.is_ok(), "{:?}", report);
    }
}
