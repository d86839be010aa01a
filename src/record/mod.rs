//! The audit record, as it is written and read back: schema version 3
//! (schema 2, the same keys with `seq` and `chain_id` before the body, and
//! schema 1, without `chain_id`, are still read).
//!
//! [`AuditRecord`] is one parsed line; [`Risk`] and [`Outcome`] (also at
//! the crate root) are the vocabulary of its `risk_level` and `outcome`;
//! [`GENESIS`] is the `prev_hash` of a trail's first record.
//!
//! ```
//! use tracing_audit::record::{AuditRecord, Risk, SCHEMA_VERSION};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir.path()).build::<tracing_subscriber::Registry>()?; drop(g);
//! let trail = tracing_audit::trail::AuditTrail::open(dir.path())?;
//! let first: AuditRecord = trail.records().next().unwrap()?;
//! assert_eq!(first.schema, SCHEMA_VERSION);
//! assert_eq!(first.prev_hash, tracing_audit::record::GENESIS);
//! assert!(first.risk_level >= Risk::Low);
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! The audit record: schema version 3, its key order, and its encoding.
//!
//! A line is built in two halves. The caller's thread encodes the *body*
//! (everything from `timestamp` to `source`), which is where nearly all the
//! work is, and hashes `{"schema":3,"audit_id":…` + body as far as whole
//! SHA-256 blocks go. The pipeline worker, which alone knows the order of
//! records, finishes the line: `,"seq":N,"chain_id":…,"prev_hash":…,"hash":…}`
//! (see the private `chain` and `layout` modules).
//!
//! [`AuditRecord`] is the owned, parsed form used by the reader, the
//! verifier and the command-line tool.

mod canonical;
pub(crate) mod chain;
pub mod checkpoint;
pub(crate) mod draft;
pub(crate) mod encode;
pub(crate) mod fields;
pub(crate) mod layout;
pub mod mapping;
pub(crate) mod redact;
pub use chain::GENESIS;
pub use fields::{Outcome, ParseValueError, Risk};
pub use redact::{redaction_hmac, DEFAULT_REDACTED_NAMES, REDACTED};

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing_core::Level;

use crate::record::draft::Draft;
use crate::record::fields::ContextField;
use crate::record::layout::{Key, KeyFields};

/// The schema version written in every record's `schema` key.
///
/// Version 2 added `chain_id`; version 3 has the same keys, with `seq` and
/// `chain_id` written after the body (so that the thread that made a
/// record hashes nearly all of its line). Readers and the verifier read all
/// three, and a trail continues from any of them.
///
/// ```
/// assert_eq!(tracing_audit::record::SCHEMA_VERSION, 3);
/// ```
pub const SCHEMA_VERSION: u32 = 3;

/// Whether `schema` and `chain_id` go together: versions 2 and 3 have a
/// chain id (a UUID), version 1 none.
fn check_schema(schema: u32, chain_id: Option<&str>) -> Result<(), serde_json::Error> {
    use serde::de::Error as _;
    match (schema, chain_id) {
        (1, None) => Ok(()),
        (2 | 3, Some(id)) if uuid::Uuid::try_parse(id).is_ok() => Ok(()),
        (2 | 3, Some(id)) => Err(serde_json::Error::custom(format!(
            "chain_id {id:?} is not a UUID"
        ))),
        (2 | 3, None) => Err(serde_json::Error::custom(format!(
            "a schema {schema} record without chain_id"
        ))),
        (1, Some(_)) => Err(serde_json::Error::custom(
            "a schema 1 record with a chain_id",
        )),
        (v, _) => Err(serde_json::Error::custom(format!(
            "schema version {v} (this reader knows 1 to {SCHEMA_VERSION})"
        ))),
    }
}

/// Record-wide values fixed at build time (`service`, `version`,
/// `environment`, `host`), pre-encoded once.
#[derive(Debug, Clone)]
pub(crate) struct RecordConstants {
    encoded: Vec<u8>,
}

impl RecordConstants {
    pub(crate) fn new(
        service: Option<&str>,
        version: Option<&str>,
        environment: Option<&str>,
        host: Option<&str>,
    ) -> Self {
        let mut encoded = Vec::new();
        for (key, v) in [
            ("service", service),
            ("version", version),
            ("environment", environment),
            ("host", host),
        ] {
            encoded.extend_from_slice(b",\"");
            encoded.extend_from_slice(key.as_bytes());
            encoded.extend_from_slice(b"\":");
            opt_str(&mut encoded, v, usize::MAX);
        }
        RecordConstants { encoded }
    }
}

fn opt_str(buf: &mut Vec<u8>, v: Option<&str>, limit: usize) -> bool {
    opt_str_dropped(buf, v, limit, 0)
}

/// A value of which a bounded `Debug` already left out `dropped` bytes.
fn opt_str_dropped(buf: &mut Vec<u8>, v: Option<&str>, limit: usize, dropped: usize) -> bool {
    match v {
        Some(v) => encode::write_str_dropped(buf, v, limit, dropped),
        None => {
            buf.extend_from_slice(b"null");
            false
        }
    }
}

/// A UUID v7 for the record's own timestamp (one clock read per event;
/// the random bits make ids unique, `seq` orders them).
pub(crate) fn uuid_at(at: SystemTime) -> uuid::Uuid {
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos());
    uuid::Uuid::new_v7(ts)
}

/// Where an event came from, for the `source` key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) target: &'a str,
    pub(crate) level: &'a Level,
    /// Span names, innermost first.
    pub(crate) spans: &'a [&'a str],
}

/// Encodes the body of a record (from `,"timestamp"` to the end of
/// `"source":{…}`) into `out`. Resolves risk and outcome (flagging bad
/// values in `details`) and returns where its key fields sit, with the
/// resolved risk and outcome.
pub(crate) fn encode_body(
    out: &mut Vec<u8>,
    c: &mut Draft,
    at: SystemTime,
    constants: &RecordConstants,
    source: Source<'_>,
    limit: usize,
) -> KeyFields {
    let risk = c.resolve_risk(source.level);
    let outcome = c.resolve_outcome();
    let mut keys = KeyFields::new(risk, outcome);
    let cut = encode_key_fields(out, c, at, limit, &mut keys);
    encode_details(out, c, &cut);
    out.extend_from_slice(&constants.encoded);
    encode_source(out, source, limit);
    keys
}

/// Writes `name` (`,"key":`, whole) and the value of an optional string,
/// noting where the value starts; returns whether it was cut to the limit.
#[inline(always)]
fn key_field(
    out: &mut Vec<u8>,
    base: usize,
    name: &[u8],
    value: Option<&str>,
    (limit, dropped): (usize, usize),
    located: (&mut KeyFields, Key),
) -> bool {
    encode::put(out, name);
    let start = out.len();
    let cut = opt_str_dropped(out, value, limit, dropped);
    let (keys, key) = located;
    keys.locate(key, &out[base..], start - base);
    cut
}

/// The key fields, `timestamp` to `message`. Returns the names of those cut
/// to the limit.
fn encode_key_fields(
    out: &mut Vec<u8>,
    c: &Draft,
    at: SystemTime,
    limit: usize,
    keys: &mut KeyFields,
) -> Vec<&'static str> {
    let base = out.len();
    let mut cut = Vec::new();
    out.extend_from_slice(b",\"timestamp\":\"");
    let start = out.len() - 1;
    encode::write_timestamp(out, at);
    out.push(b'"');
    keys.locate(Key::Timestamp, &out[base..], start - base);
    let event = (limit, c.event_dropped());
    if key_field(
        out,
        base,
        b",\"event_type\":",
        c.event_type(),
        event,
        (keys, Key::EventType),
    ) {
        cut.push("audit.event");
    }
    let context = |f: ContextField| (c.context(f), (limit, c.context_dropped(f)));
    for (name, f, k) in [
        (&b",\"actor\":"[..], ContextField::Actor, Key::Actor),
        (b",\"resource\":", ContextField::Resource, Key::Resource),
        (b",\"action\":", ContextField::Action, Key::Action),
    ] {
        let (v, bounds) = context(f);
        if key_field(out, base, name, v, bounds, (keys, k)) {
            cut.push(f.name());
        }
    }
    out.extend_from_slice(b",\"outcome\":\"");
    encode::put(out, keys.outcome.as_str().as_bytes());
    out.extend_from_slice(b"\",\"risk_level\":\"");
    encode::put(out, keys.risk.as_str().as_bytes());
    out.push(b'"');
    for (name, f, k) in [
        (
            &b",\"session_id\":"[..],
            ContextField::Session,
            Key::Session,
        ),
        (b",\"ip_address\":", ContextField::Ip, Key::Ip),
    ] {
        let (v, bounds) = context(f);
        if key_field(out, base, name, v, bounds, (keys, k)) {
            cut.push(f.name());
        }
    }
    out.extend_from_slice(b",\"message\":");
    if opt_str_dropped(out, c.message(), limit, c.message_dropped()) {
        cut.push("message");
    }
    cut
}

/// `,"details":{…}`: the draft's details, then the `audit.invalid`,
/// `audit.truncated` (the key fields in `cut` first) and `audit.redacted`
/// lists.
fn encode_details(out: &mut Vec<u8>, c: &Draft, cut: &[&str]) {
    out.extend_from_slice(b",\"details\":{");
    out.extend_from_slice(&c.details);
    if cut.is_empty() && c.truncated.is_empty() && c.invalid.is_empty() && c.redacted.is_empty() {
        // Nothing flagged, as in most records: no lists to gather.
        out.push(b'}');
        return;
    }
    let mut sep = !c.details.is_empty();
    let truncated: Vec<&str> = cut
        .iter()
        .copied()
        .chain(c.truncated.iter().map(String::as_str))
        .collect();
    let invalid: Vec<&str> = c.invalid.iter().map(String::as_str).collect();
    let redacted: Vec<&str> = c.redacted.iter().map(String::as_str).collect();
    for (key, names) in [
        ("audit.invalid", &invalid),
        ("audit.truncated", &truncated),
        ("audit.redacted", &redacted),
    ] {
        if names.is_empty() {
            continue;
        }
        if sep {
            out.push(b',');
        }
        sep = true;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":[");
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            encode::write_plain_str(out, n);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// `,"source":{…}`: target, level and the span path (outermost first).
fn encode_source(out: &mut Vec<u8>, source: Source<'_>, limit: usize) {
    out.extend_from_slice(b",\"source\":{\"target\":");
    encode::write_str(out, source.target, limit);
    out.extend_from_slice(b",\"level\":\"");
    encode::put(out, source.level.as_str().as_bytes());
    out.extend_from_slice(b"\",\"span\":");
    if source.spans.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'"');
        for (i, name) in source.spans.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'>');
            }
            encode::escape_into(out, name);
        }
        out.push(b'"');
    }
    out.push(b'}');
}

/// Where a record was emitted from.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// for r in trail.records().flatten() {
///     println!("{} {} {:?}", r.source.level, r.source.target, r.source.span);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSource {
    /// The tracing target (usually the module path).
    pub target: String,
    /// The tracing level, upper case (`"WARN"`).
    pub level: String,
    /// Enclosing audit span names, outermost first, joined by `>`.
    pub span: Option<String>,
}

/// One audit record as read back from a trail (schema version 2, or 1).
///
/// Field order and names follow the JSON line exactly. Reading is strict:
/// an unknown or duplicate key (at any depth), an unknown risk or outcome,
/// a lone surrogate or a number out of range make the line not a record.
///
/// ```
/// let line = br#"{"schema":1}"#;
/// // Strict: a line that is not a whole record of the schema is an error.
/// assert!(tracing_audit::record::AuditRecord::parse(line).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Schema version (2; 1 for records written before chain ids).
    pub schema: u32,
    /// UUID v7 of the record.
    pub audit_id: String,
    /// Position in the chain, contiguous from 0 across files.
    pub seq: u64,
    /// The chain's id: made when the audit directory's chain started and
    /// kept across restarts and rotation, so a store collecting many
    /// instances can tell their chains apart. `None` in schema 1 records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// When the event happened (RFC 3339, UTC).
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// The `audit.event` value.
    pub event_type: Option<String>,
    /// Who.
    pub actor: Option<String>,
    /// What was affected.
    pub resource: Option<String>,
    /// What was done.
    pub action: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// How much it matters.
    pub risk_level: Risk,
    /// Session or correlation id.
    pub session_id: Option<String>,
    /// Source address.
    pub ip_address: Option<String>,
    /// The event's message.
    pub message: Option<String>,
    /// All other fields, with their JSON types.
    #[serde(deserialize_with = "strict::map")]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Configured service name.
    pub service: Option<String>,
    /// Configured service version.
    pub version: Option<String>,
    /// Configured environment.
    pub environment: Option<String>,
    /// Host name.
    pub host: Option<String>,
    /// Where it was emitted.
    pub source: RecordSource,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

impl AuditRecord {
    /// Parses one line (without its newline) strictly as a record of
    /// schema version [`SCHEMA_VERSION`] (or 1).
    ///
    /// ```
    /// let line = r#"{"schema":4}"#;
    /// assert!(tracing_audit::record::AuditRecord::parse(line.as_bytes()).is_err());
    /// ```
    pub fn parse(line: &[u8]) -> Result<AuditRecord, serde_json::Error> {
        let r: AuditRecord = serde_json::from_slice(line)?;
        check_schema(r.schema, r.chain_id.as_deref())?;
        Ok(r)
    }
}

/// What `verify` needs of a record on its hot path, read strictly (the same
/// rules as [`AuditRecord::parse`]: unknown or duplicate keys at any depth,
/// unknown vocabularies, bad numbers or strings fail) but borrowing from the
/// line instead of building owned values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckedRecord<'a> {
    schema: u32,
    #[serde(rename = "audit_id")]
    _audit_id: strict::CheckedStr,
    #[serde(rename = "seq")]
    _seq: u64,
    #[serde(borrow, default)]
    chain_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "timestamp")]
    _timestamp: chrono::DateTime<chrono::Utc>,
    #[serde(borrow)]
    pub(crate) event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "actor")]
    _actor: Option<strict::CheckedStr>,
    #[serde(rename = "resource")]
    _resource: Option<strict::CheckedStr>,
    #[serde(rename = "action")]
    _action: Option<strict::CheckedStr>,
    #[serde(rename = "outcome")]
    _outcome: Outcome,
    #[serde(rename = "risk_level")]
    _risk_level: Risk,
    #[serde(rename = "session_id")]
    _session_id: Option<strict::CheckedStr>,
    #[serde(rename = "ip_address")]
    _ip_address: Option<strict::CheckedStr>,
    #[serde(rename = "message")]
    _message: Option<strict::CheckedStr>,
    #[serde(rename = "details")]
    _details: strict::CheckedObject,
    #[serde(borrow)]
    pub(crate) service: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "version")]
    _version: Option<strict::CheckedStr>,
    #[serde(rename = "environment")]
    _environment: Option<strict::CheckedStr>,
    #[serde(rename = "host")]
    _host: Option<strict::CheckedStr>,
    #[serde(rename = "source")]
    _source: CheckedSource,
    #[serde(rename = "prev_hash")]
    _prev_hash: strict::CheckedStr,
    #[serde(rename = "hash")]
    _hash: strict::CheckedStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckedSource {
    #[serde(rename = "target")]
    _target: strict::CheckedStr,
    #[serde(rename = "level")]
    _level: strict::CheckedStr,
    #[serde(rename = "span")]
    _span: Option<strict::CheckedStr>,
}

impl<'a> CheckedRecord<'a> {
    /// Checks `line` strictly as a record of schema [`SCHEMA_VERSION`]
    /// (or 1). (The readers have the line's chain fields at hand and call
    /// [`check_linked`](Self::check_linked).)
    #[cfg(test)]
    pub(crate) fn check(line: &'a [u8]) -> Result<Self, serde_json::Error> {
        // A line in the written form is checked in one pass; anything else
        // (and every failure, with its explanation) by serde.
        // The fast path reads only schemas 2 and 3 with a UUID for
        // `chain_id`.
        if let Some(r) = canonical::check(line) {
            return Ok(r);
        }
        Self::check_by_serde(line)
    }

    /// [`check`](Self::check), for a line whose chain fields
    /// [`read_link`](chain::read_link) has read as `link`: the same verdict,
    /// without reading them twice.
    pub(crate) fn check_linked(
        line: &'a [u8],
        link: &chain::Link<'a>,
    ) -> Result<Self, serde_json::Error> {
        match canonical::check_linked(line, link) {
            Some(r) => Ok(r),
            None => Self::check_by_serde(line),
        }
    }

    /// The serde parse: decides and explains whatever the fast path leaves.
    fn check_by_serde(line: &'a [u8]) -> Result<Self, serde_json::Error> {
        let r: Self = serde_json::from_slice(line)?;
        check_schema(r.schema, r.chain_id.as_deref())?;
        Ok(r)
    }
}

/// JSON values that refuse duplicate object keys at any depth (serde_json
/// keeps the last one silently, which would hide a value from a reader).
mod strict {
    use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};
    use std::fmt;

    /// A value checked like [`map`]'s, without building it.
    #[derive(Debug)]
    pub(super) struct Checked;

    /// A string checked and not kept: the fields of a record that a reader
    /// only checks (refused unless a string, as `Cow<str>` refuses it), so
    /// that a checked record is small to build and move.
    #[derive(Debug)]
    pub(super) struct CheckedStr;

    impl<'de> serde::Deserialize<'de> for CheckedStr {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = CheckedStr;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E>(self, _: &str) -> Result<CheckedStr, E> {
                    Ok(CheckedStr)
                }
            }
            d.deserialize_str(V)
        }
    }

    /// An object checked like [`map`]'s (anything else is refused, as
    /// [`map`] refuses it), without building it.
    #[derive(Debug)]
    pub(super) struct CheckedObject;

    impl<'de> serde::Deserialize<'de> for CheckedObject {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(CheckVisitor).map(|()| CheckedObject)
        }
    }

    impl<'de> serde::Deserialize<'de> for Checked {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(CheckVisitor).map(|()| Checked)
        }
    }

    struct CheckVisitor;

    /// A map key, borrowed from the line unless it had escapes (serde's own
    /// `Cow<str>` always allocates).
    struct Key<'de>(std::borrow::Cow<'de, str>);

    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(V)
        }
    }

    impl<'de> Visitor<'de> for CheckVisitor {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value without duplicate keys")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<(), E> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(E::custom("a number that is not finite"))
            }
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys: Vec<Key<'de>> = Vec::new();
            while let Some(k) = map.next_key::<Key<'de>>()? {
                if keys.iter().any(|seen| seen.0 == k.0) {
                    return Err(A::Error::custom(format!("duplicate key {:?}", k.0)));
                }
                map.next_value::<Checked>()?;
                keys.push(k);
            }
            Ok(())
        }
    }

    pub(super) fn map<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        match d.deserialize_any(StrictVisitor)? {
            Value::Object(m) => Ok(m),
            _ => Err(D::Error::custom("details must be an object")),
        }
    }

    struct StrictVisitor;

    struct Strict(Value);

    impl<'de> serde::Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value without duplicate keys")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| E::custom("a number that is not finite"))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut v = Vec::new();
            while let Some(Strict(x)) = seq.next_element()? {
                v.push(x);
            }
            Ok(Value::Array(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = map.next_key::<String>()? {
                let Strict(v) = map.next_value()?;
                if m.insert(k.clone(), v).is_some() {
                    return Err(A::Error::custom(format!("duplicate key {k:?}")));
                }
            }
            Ok(Value::Object(m))
        }
    }
}
