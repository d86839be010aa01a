//! SIEM schemas: the record mapped to Elastic Common Schema (ECS 8) and to
//! OCSF 1.1 (Authentication for authentication events, API Activity for
//! the rest), for stores that expect them.
//!
//! The chained line stays the source of truth: a mapped document is
//! derived from one record and names it (`audit_id`, `seq`, `hash`,
//! `chain_id`), so it can always be traced back to the line that verifies.
//! Fields the schema has no place for keep their own names under the
//! schema's extension point (`audit.*` in ECS, `unmapped` in OCSF); nothing
//! of the record is dropped.
//!
//! | record | ECS | OCSF |
//! |---|---|---|
//! | `timestamp` | `@timestamp` | `time` (ms), `time_dt` |
//! | `event_type` | `event.action` | `api.operation` / `activity_name` |
//! | `actor` | `user.name` | `actor.user.name` (Authentication: also `user.name`) |
//! | `outcome` | `event.outcome` | `status_id` + `status` |
//! | `risk_level` | `event.severity` (1–4) + `audit.risk` | `severity_id` (2–5) + `severity` |
//! | `ip_address` | `source.ip` | `src_endpoint.ip` |
//! | `session_id` | `audit.session_id` | `actor.session.uid` |
//! | `resource` | `audit.resource` | `resources[0].name` |
//! | `action` | `audit.action` | `unmapped.action` (and `activity_id`: create, read, update, delete or other) |
//! | `message` | `message` | `message` |
//! | `service`, `version`, `environment` | `service.name`, `.version`, `.environment` | `unmapped.service`, `.version`, `.environment` |
//! | `host` | `host.name` | `device.hostname` |
//! | `source.target`, `.level` | `log.logger`, `log.level` | `unmapped.source` |
//! | `details` | `audit.details` (and `trace.id`, `span.id` from `details.trace_id`, `.span_id`) | `unmapped.details` |
//! | `audit_id`, `seq`, `hash`, `chain_id` | `event.id`, `event.sequence`, `event.hash`, `audit.chain_id` | `metadata.uid`, `metadata.sequence`, `unmapped.hash`, `metadata.log_name` |
//!
//! A leaf of `record`: uses only the record types.

use serde_json::{json, Map, Value};

use crate::record::{AuditRecord, Outcome, Risk};

/// A SIEM schema a record can be mapped to.
///
/// ```
/// use tracing_audit::record::mapping::Schema;
/// assert_eq!("ecs".parse::<Schema>(), Ok(Schema::Ecs));
/// assert_eq!("ocsf".parse::<Schema>(), Ok(Schema::Ocsf));
/// assert!("cef".parse::<Schema>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schema {
    /// Elastic Common Schema 8.
    Ecs,
    /// Open Cybersecurity Schema Framework 1.1.
    Ocsf,
}

impl std::str::FromStr for Schema {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ecs" => Ok(Schema::Ecs),
            "ocsf" => Ok(Schema::Ocsf),
            other => Err(format!("unknown schema {other:?}: ecs or ocsf")),
        }
    }
}

impl AuditRecord {
    /// The record mapped to `schema` (see the module doc for the table).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir.path()).build::<tracing_subscriber::Registry>()?; drop(g);
    /// use tracing_audit::record::mapping::Schema;
    /// let record = tracing_audit::trail::AuditTrail::open(dir.path())?.records().next().unwrap()?;
    /// let ecs = record.to_schema(Schema::Ecs);
    /// assert_eq!(ecs["event"]["action"], "audit_started");
    /// assert_eq!(ecs["event"]["id"], record.audit_id.as_str());
    /// # Ok(()) }
    /// ```
    pub fn to_schema(&self, schema: Schema) -> Value {
        match schema {
            Schema::Ecs => ecs(self),
            Schema::Ocsf => ocsf(self),
        }
    }
}

/// `Some(v)` as a JSON string, `None` as nothing (the key is left out).
fn put(obj: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        obj.insert(key.to_owned(), Value::String(v.clone()));
    }
}

fn obj(v: Map<String, Value>) -> Value {
    Value::Object(v)
}

fn ecs(r: &AuditRecord) -> Value {
    let severity = match r.risk_level {
        Risk::Low => 1,
        Risk::Medium => 2,
        Risk::High => 3,
        Risk::Critical => 4,
    };
    let mut event = Map::new();
    event.insert("kind".into(), json!("event"));
    event.insert("category".into(), json!([ecs_category(r)]));
    put(&mut event, "action", &r.event_type);
    event.insert("outcome".into(), json!(r.outcome.as_str()));
    event.insert("severity".into(), json!(severity));
    event.insert("id".into(), json!(r.audit_id));
    event.insert("sequence".into(), json!(r.seq));
    event.insert("hash".into(), json!(r.hash));
    event.insert("dataset".into(), json!("tracing_audit.audit"));
    event.insert("provider".into(), json!("tracing-audit"));
    let mut doc = Map::new();
    doc.insert(
        "@timestamp".into(),
        json!(r
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
    );
    doc.insert("event".into(), obj(event));
    doc.insert("ecs".into(), json!({"version": "8.11.0"}));
    put(&mut doc, "message", &r.message);
    if let Some(a) = &r.actor {
        doc.insert("user".into(), json!({ "name": a }));
    }
    if let Some(ip) = &r.ip_address {
        doc.insert("source".into(), json!({ "ip": ip }));
    }
    let mut service = Map::new();
    put(&mut service, "name", &r.service);
    put(&mut service, "version", &r.version);
    put(&mut service, "environment", &r.environment);
    if !service.is_empty() {
        doc.insert("service".into(), obj(service));
    }
    if let Some(h) = &r.host {
        doc.insert("host".into(), json!({ "name": h }));
    }
    // OpenTelemetry correlation (feature `opentelemetry`), where ECS has it.
    for (key, ecs_key) in [("trace_id", "trace"), ("span_id", "span")] {
        if let Some(id) = r.details.get(key).and_then(Value::as_str) {
            doc.insert(ecs_key.into(), json!({ "id": id }));
        }
    }
    doc.insert(
        "log".into(),
        json!({ "logger": r.source.target, "level": r.source.level.to_ascii_lowercase() }),
    );
    let mut audit = Map::new();
    audit.insert("schema".into(), json!(r.schema));
    put(&mut audit, "chain_id", &r.chain_id);
    audit.insert("prev_hash".into(), json!(r.prev_hash));
    audit.insert("risk".into(), json!(r.risk_level.as_str()));
    put(&mut audit, "resource", &r.resource);
    put(&mut audit, "action", &r.action);
    put(&mut audit, "session_id", &r.session_id);
    put(&mut audit, "span", &r.source.span);
    audit.insert("details".into(), Value::Object(r.details.clone()));
    doc.insert("audit".into(), obj(audit));
    obj(doc)
}

/// ECS `event.category`, from the event type's words: `authentication`
/// (logins), `iam` (permissions, roles, users), `configuration`,
/// `database` (data access and exports); ECS has no catch-all, so
/// anything else is `process` (an application's own action).
fn ecs_category(r: &AuditRecord) -> &'static str {
    let t = r.event_type.as_deref().unwrap_or("").to_ascii_lowercase();
    if is_authentication(&t) {
        "authentication"
    } else if t.contains("permission") || t.contains("role") || t.contains("user_") {
        "iam"
    } else if t.contains("config") {
        "configuration"
    } else if t.contains("data") || t.contains("export") || t.contains("record") {
        "database"
    } else {
        "process"
    }
}

fn is_authentication(event_type: &str) -> bool {
    [
        "auth", "login", "logon", "logout", "logoff", "sign_in", "signin", "mfa",
    ]
    .iter()
    .any(|w| event_type.contains(w))
}

fn ocsf(r: &AuditRecord) -> Value {
    let t = r.event_type.as_deref().unwrap_or("").to_ascii_lowercase();
    let auth = is_authentication(&t);
    let (class_uid, class_name, category_uid, category_name) = if auth {
        (3002, "Authentication", 3, "Identity & Access Management")
    } else {
        (6003, "API Activity", 6, "Application Activity")
    };
    let (activity_id, activity_name) = if auth {
        if t.contains("logout") || t.contains("logoff") {
            (2, "Logoff")
        } else {
            (1, "Logon")
        }
    } else {
        let a = r.action.as_deref().unwrap_or(&t).to_ascii_lowercase();
        if a.contains("create") || a.contains("post") || a.contains("insert") {
            (1, "Create")
        } else if a.contains("read")
            || a.contains("get")
            || a.contains("access")
            || a.contains("export")
        {
            (2, "Read")
        } else if a.contains("update")
            || a.contains("put")
            || a.contains("patch")
            || a.contains("change")
        {
            (3, "Update")
        } else if a.contains("delete") || a.contains("remove") {
            (4, "Delete")
        } else {
            (99, "Other")
        }
    };
    let (severity_id, severity) = match r.risk_level {
        Risk::Low => (2, "Low"),
        Risk::Medium => (3, "Medium"),
        Risk::High => (4, "High"),
        Risk::Critical => (5, "Critical"),
    };
    let (status_id, status) = match r.outcome {
        Outcome::Success => (1, "Success"),
        Outcome::Failure => (2, "Failure"),
        Outcome::Unknown => (0, "Unknown"),
    };
    let mut doc = Map::new();
    doc.insert("class_uid".into(), json!(class_uid));
    doc.insert("class_name".into(), json!(class_name));
    doc.insert("category_uid".into(), json!(category_uid));
    doc.insert("category_name".into(), json!(category_name));
    doc.insert("activity_id".into(), json!(activity_id));
    doc.insert("activity_name".into(), json!(activity_name));
    doc.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    doc.insert("time".into(), json!(r.timestamp.timestamp_millis()));
    doc.insert(
        "time_dt".into(),
        json!(r
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
    );
    doc.insert("severity_id".into(), json!(severity_id));
    doc.insert("severity".into(), json!(severity));
    doc.insert("status_id".into(), json!(status_id));
    doc.insert("status".into(), json!(status));
    put(&mut doc, "message", &r.message);
    let mut actor = Map::new();
    if let Some(a) = &r.actor {
        actor.insert("user".into(), json!({ "name": a }));
    }
    if let Some(s) = &r.session_id {
        actor.insert("session".into(), json!({ "uid": s }));
    }
    if !actor.is_empty() {
        doc.insert("actor".into(), obj(actor));
    }
    if auth {
        if let Some(a) = &r.actor {
            doc.insert("user".into(), json!({ "name": a }));
        }
    } else {
        doc.insert(
            "api".into(),
            json!({ "operation": r.event_type.clone().unwrap_or_else(|| "unknown".into()) }),
        );
    }
    if let Some(ip) = &r.ip_address {
        doc.insert("src_endpoint".into(), json!({ "ip": ip }));
    }
    if let Some(res) = &r.resource {
        doc.insert("resources".into(), json!([{ "name": res }]));
    }
    if let Some(h) = &r.host {
        doc.insert("device".into(), json!({ "hostname": h, "type_id": 0 }));
    }
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!("1.1.0"));
    metadata.insert(
        "product".into(),
        json!({ "name": "tracing-audit", "vendor_name": "tracing-audit", "version": env!("CARGO_PKG_VERSION") }),
    );
    metadata.insert("uid".into(), json!(r.audit_id));
    metadata.insert("sequence".into(), json!(r.seq));
    put(&mut metadata, "log_name", &r.chain_id);
    doc.insert("metadata".into(), obj(metadata));
    let mut unmapped = Map::new();
    put(&mut unmapped, "event_type", &r.event_type);
    put(&mut unmapped, "action", &r.action);
    put(&mut unmapped, "service", &r.service);
    put(&mut unmapped, "version", &r.version);
    put(&mut unmapped, "environment", &r.environment);
    unmapped.insert("schema".into(), json!(r.schema));
    unmapped.insert("hash".into(), json!(r.hash));
    unmapped.insert("prev_hash".into(), json!(r.prev_hash));
    unmapped.insert("risk".into(), json!(r.risk_level.as_str()));
    unmapped.insert(
        "source".into(),
        json!({ "target": r.source.target, "level": r.source.level, "span": r.source.span }),
    );
    unmapped.insert("details".into(), Value::Object(r.details.clone()));
    doc.insert("unmapped".into(), obj(unmapped));
    obj(doc)
}
