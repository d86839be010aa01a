//! Forwarding the audit trail as OTLP log records (feature `otlp`): to an
//! OpenTelemetry Collector or any OTLP endpoint, over gRPC or
//! HTTP/protobuf.
//!
//! Each sealed record becomes one `LogRecord`: the body is the sealed line,
//! exactly as the trail holds it (so the store keeps a verifiable copy of
//! the chain), the attributes are the key fields under `audit.*` names,
//! the severity follows the risk, and the trace context is set when the
//! record carries one (feature `opentelemetry`).
//!
//! The delivery contract is the syslog sinks' ([`crate::sink::forward`]):
//! with a file sink the records are read back from the trail after a
//! durable cursor, else from a bounded queue; batches are retried with
//! backoff until the grace at shutdown; everything is counted. The request
//! is built with `opentelemetry-proto`'s types and sent directly, not
//! through the SDK's batch log processor (which drops records when its
//! channel is full, open-telemetry/opentelemetry-rust#2177) nor through
//! `opentelemetry-otlp`'s exporter, which logs a partial success and
//! reports the export as done: here a partial success (a positive
//! `rejected_log_records`) is a failure, counted in `otlp_rejected`, and
//! the batch is sent again.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::error::Error;
use crate::queue::QueueMode;
use crate::record::fields::Risk;
use crate::record::mapping::Schema;
use crate::record::AuditRecord;
use crate::sink::forward::{
    self, jitter, ForwardCounters, Forwarder, Input, Intake, Taken, TrailSource,
};

/// How an [`OtlpSink`] reaches its endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// An OTLP destination for the audit trail (feature `otlp`).
///
/// | setting | default |
/// |---|---|
/// | input with a file sink | the trail, after a durable cursor ([`from_trail`](Self::from_trail)) |
/// | queue without a file sink | 65 536 records, [`QueueMode::Lossless`] |
/// | batch | up to 512 records per export request |
/// | request timeout | 10 s |
/// | retry backoff | 100 ms doubling to 30 s, ±25 % jitter |
/// | shutdown grace for an unreachable endpoint | 10 s |
///
/// ```no_run
/// use tracing_audit::{AuditLayer, otlp::OtlpSink};
/// let (layer, guard) = AuditLayer::builder()
///     .file("./audit")
///     .otlp(OtlpSink::grpc("http://127.0.0.1:4317").service_name("billing-api"))
///     .build::<tracing_subscriber::Registry>()?;
/// # Ok::<(), tracing_audit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct OtlpSink {
    protocol: Protocol,
    endpoint: String,
    service_name: Option<String>,
    batch: usize,
    timeout: Duration,
    capacity: usize,
    mode: QueueMode,
    backoff_min: Duration,
    backoff_max: Duration,
    shutdown_grace: Duration,
    from_trail: bool,
    cursor_name: Option<String>,
    schema: Option<Schema>,
}

impl OtlpSink {
    fn new(protocol: Protocol, endpoint: String) -> Self {
        OtlpSink {
            protocol,
            endpoint,
            service_name: None,
            batch: 512,
            timeout: Duration::from_secs(10),
            capacity: 65_536,
            mode: QueueMode::Lossless,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            from_trail: true,
            cursor_name: None,
            schema: None,
        }
    }

    /// OTLP over gRPC (`http://host:4317`; plain text).
    pub fn grpc(endpoint: impl Into<String>) -> Self {
        Self::new(Protocol::Grpc, endpoint.into())
    }

    /// OTLP over HTTP with protobuf bodies: `POST <endpoint>/v1/logs`
    /// (`http://host:4318`; plain text).
    pub fn http(endpoint: impl Into<String>) -> Self {
        Self::new(Protocol::HttpProtobuf, endpoint.into())
    }

    /// The resource's `service.name` (default: the builder's service, if
    /// set, else `tracing-audit`).
    #[must_use]
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Most records in one export request (at least 1).
    #[must_use]
    pub fn batch(mut self, records: usize) -> Self {
        self.batch = records.max(1);
        self
    }

    /// How long one export request may take.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Records the queue may hold (without a file sink, or with
    /// [`from_trail(false)`](Self::from_trail)).
    #[must_use]
    pub fn capacity(mut self, records: usize) -> Self {
        self.capacity = records.max(1);
        self
    }

    /// Whether a full queue waits (default) or drops and counts; a sink
    /// reading the trail has no queue.
    #[must_use]
    pub fn queue_mode(mut self, mode: QueueMode) -> Self {
        self.mode = mode;
        self
    }

    /// Retry backoff bounds.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// How long a stopping sink keeps trying an unreachable endpoint
    /// (default 10 s). From the trail, what is left stays there for the
    /// next start; from the queue it is dropped and counted.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// With a file sink (default `true`): read the records from the trail
    /// files after a durable cursor, as [`SyslogSink::from_trail`](crate::SyslogSink::from_trail).
    #[must_use]
    pub fn from_trail(mut self, yes: bool) -> Self {
        self.from_trail = yes;
        self
    }

    /// Makes each log record's body the record mapped to a SIEM schema
    /// (ECS or OCSF, see [`crate::record::mapping`]) instead of the sealed
    /// line; the attributes are the same. The mapped document names its
    /// record (`audit_id`, `seq`, `hash`), but a store that keeps only it
    /// holds no chain to verify: keep the sealed lines somewhere too.
    #[must_use]
    pub fn message_schema(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The name of this sink's cursor file, `.forward-<name>.cursor`
    /// (default `otlp-<endpoint>`).
    #[must_use]
    pub fn cursor_name(mut self, name: impl Into<String>) -> Self {
        self.cursor_name = Some(name.into());
        self
    }

    /// The name of the cursor this sink keeps when it reads `trail`.
    pub(crate) fn cursor_in(&self, trail: Option<&TrailSource>) -> Option<String> {
        (trail.is_some() && self.from_trail).then(|| {
            let raw = self
                .cursor_name
                .clone()
                .unwrap_or_else(|| format!("otlp-{}", self.endpoint.replacen("://", "-", 1)));
            forward::file_safe(&raw)
        })
    }

    /// The sink with its shutdown grace no longer than `grace`.
    pub(crate) fn bounded_by(mut self, grace: Duration) -> Self {
        self.shutdown_grace = self.shutdown_grace.min(grace);
        self
    }

    /// Refuses an endpoint this sink cannot reach, at `build()`: anything
    /// but `http://host[:port]`. An `https://` one would otherwise fail on
    /// every attempt while records wait: no TLS is built into this sink.
    pub(crate) fn check_endpoint(&self) -> Result<(), Error> {
        let e = self.endpoint.as_str();
        if e.starts_with("https://") {
            return Err(Error::Config(format!(
                "OTLP endpoint {e}: this sink speaks plain text only (no TLS is built in); send to an OpenTelemetry Collector on this machine at http://127.0.0.1:<port> and let it forward over TLS"
            )));
        }
        match e.strip_prefix("http://") {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
            _ => Err(Error::Config(format!(
                "OTLP endpoint {e:?}: expected http://host:port"
            ))),
        }
    }

    /// Starts the sink's thread (connections are made there).
    pub(crate) fn start(
        self,
        counters: Arc<ForwardCounters>,
        service: Option<&str>,
        trail: Option<&TrailSource>,
    ) -> Result<(Forwarder, JoinHandle<()>), Error> {
        let what = format!("OTLP sink {}", self.endpoint);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Network {
                what: what.clone(),
                source,
            })?;
        let name = self.cursor_in(trail);
        let (input, tx, progress) =
            forward::input(trail, name.as_deref(), self.capacity, &counters);
        let closing = Arc::new(AtomicBool::new(false));
        let service = self
            .service_name
            .clone()
            .or_else(|| service.map(str::to_owned))
            .unwrap_or_else(|| "tracing-audit".to_owned());
        let mode = self.mode;
        let sender = Exporter {
            intake: Intake::new(input, closing.clone(), self.shutdown_grace),
            backoff: self.backoff_min,
            cfg: self,
            counters: counters.clone(),
            runtime,
            grpc: None,
            resource: Resource {
                attributes: vec![string_kv("service.name", &service)],
                ..Default::default()
            },
            pending: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tracing-audit-otlp".into())
            .spawn(move || sender.run())
            .map_err(|source| Error::Network { what, source })?;
        let handle = thread.thread().clone();
        Ok((
            Forwarder::new(tx, mode, counters, closing, progress, handle),
            thread,
        ))
    }
}

/// One record ready to export.
struct Pending {
    seq: u64,
    record: LogRecord,
}

/// The sink's thread.
struct Exporter {
    cfg: OtlpSink,
    counters: Arc<ForwardCounters>,
    intake: Intake,
    runtime: tokio::runtime::Runtime,
    grpc: Option<LogsServiceClient<tonic::transport::Channel>>,
    resource: Resource,
    pending: VecDeque<Pending>,
    backoff: Duration,
}

/// Why an export did not deliver its batch.
enum Failure {
    /// Transport, status or timeout.
    Error(String),
    /// The endpoint answered with a partial success: this many refused.
    Rejected(i64, String),
}

impl Exporter {
    fn run(mut self) {
        loop {
            let (counters, schema) = (&self.counters, self.cfg.schema);
            let more = self
                .intake
                .fill(&mut self.pending, self.cfg.batch, counters, |t| {
                    log_record(t, schema, counters)
                });
            if !more || !self.export_pending() {
                break;
            }
        }
        let what = format!("OTLP {}", self.cfg.endpoint);
        if let Input::Trail(t) = &mut self.intake.input {
            t.stop(&self.counters, &what);
        }
    }

    /// Exports `pending` as one request until it is delivered; `false` if
    /// the shutdown grace ran out first.
    fn export_pending(&mut self) -> bool {
        let (Some(first), Some(last)) = (self.pending.front(), self.pending.back()) else {
            return true;
        };
        let (first, last) = (first.seq, last.seq);
        let n = self.pending.len() as u64;
        if let Input::Trail(t) = &mut self.intake.input {
            for seq in first..=last {
                t.before_send(seq, last, &self.counters);
            }
        }
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "tracing-audit".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records: self.pending.iter().map(|p| p.record.clone()).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        loop {
            let failure = match self.send(&request) {
                Ok(response) => match response.partial_success {
                    Some(p) if p.rejected_log_records > 0 => {
                        Failure::Rejected(p.rejected_log_records, p.error_message)
                    }
                    _ => {
                        self.counters.sent.fetch_add(n, Relaxed);
                        self.pending.clear();
                        self.backoff = self.cfg.backoff_min;
                        if let Input::Trail(t) = &mut self.intake.input {
                            t.delivered_up_to(last);
                            t.write_cursor(&self.counters);
                        }
                        return true;
                    }
                },
                Err(e) => Failure::Error(e),
            };
            let message = match failure {
                Failure::Rejected(k, why) => {
                    self.counters.rejected.fetch_add(k as u64, Relaxed);
                    format!(
                        "OTLP {}: {k} of {n} records rejected (partial success: {why}); the batch is sent again",
                        self.cfg.endpoint
                    )
                }
                Failure::Error(e) => format!("OTLP {}: {e}", self.cfg.endpoint),
            };
            self.counters.error(message);
            self.grpc = None;
            self.intake.closing();
            if self.intake.expired() {
                self.give_up();
                return false;
            }
            let mut pause = jitter(self.backoff);
            if let Some(d) = self.intake.deadline {
                pause = pause.min(d.saturating_duration_since(std::time::Instant::now()));
            }
            self.intake.pause(pause);
            self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
            self.counters.resent.fetch_add(n, Relaxed);
        }
    }

    /// The grace ran out: from a queue, what is left is dropped and
    /// counted; from the trail it stays there.
    fn give_up(&mut self) {
        let Input::Queue(rx) = &self.intake.input else {
            return;
        };
        let n = (self.pending.len() + rx.try_iter().count()) as u64;
        self.counters.dropped.fetch_add(n, Relaxed);
        eprintln!(
            "tracing-audit: OTLP {} unreachable at shutdown; {n} records not sent",
            self.cfg.endpoint
        );
    }

    /// One export request, under the request timeout (and the grace).
    fn send(
        &mut self,
        request: &ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, String> {
        let mut limit = self.cfg.timeout;
        if let Some(d) = self.intake.deadline {
            limit = limit.min(d.saturating_duration_since(std::time::Instant::now()));
        }
        match self.cfg.protocol {
            Protocol::Grpc => self.send_grpc(request, limit),
            Protocol::HttpProtobuf => self.send_http(request, limit),
        }
    }

    fn send_grpc(
        &mut self,
        request: &ExportLogsServiceRequest,
        limit: Duration,
    ) -> Result<ExportLogsServiceResponse, String> {
        if self.grpc.is_none() {
            let endpoint = tonic::transport::Endpoint::from_shared(self.cfg.endpoint.clone())
                .map_err(|e| format!("bad endpoint: {e}"))?
                .connect_timeout(limit)
                .timeout(limit);
            let _in_runtime = self.runtime.enter();
            self.grpc = Some(LogsServiceClient::new(endpoint.connect_lazy()));
        }
        let Some(client) = self.grpc.as_mut() else {
            return Err("no client".into());
        };
        let call = client.export(request.clone());
        self.runtime.block_on(async {
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(format!(
                    "gRPC status {:?}: {}",
                    status.code(),
                    status.message()
                )),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        })
    }

    fn send_http(
        &mut self,
        request: &ExportLogsServiceRequest,
        limit: Duration,
    ) -> Result<ExportLogsServiceResponse, String> {
        let url = format!("{}/v1/logs", self.cfg.endpoint.trim_end_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(limit))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .post(&url)
            .content_type("application/x-protobuf")
            .send(&request.encode_to_vec()[..])
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
        if status != 200 {
            let why = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("POST {url}: HTTP {status} {why}"));
        }
        ExportLogsServiceResponse::decode(&body[..])
            .map_err(|e| format!("POST {url}: an answer that is not an export response: {e}"))
    }
}

/// The OTLP log record for a record taken from the input, its body the
/// sealed line or the record mapped to `schema` (`None` for a trail line
/// that is not a record after all, counted).
fn log_record(taken: Taken, schema: Option<Schema>, counters: &ForwardCounters) -> Option<Pending> {
    let (seq, line) = match taken {
        Taken::Line(l) => (l.seq, l.bytes),
        Taken::Trail(seq, bytes) => (seq, bytes),
    };
    let record = match AuditRecord::parse(&line) {
        Ok(r) => r,
        Err(e) => {
            counters.error(format!(
                "trail line with seq {seq} is not a record ({e}); not forwarded"
            ));
            return None;
        }
    };
    let body = match schema {
        Some(schema) => serde_json::to_string(&record.to_schema(schema)).ok()?,
        None => String::from_utf8(line).ok()?,
    };
    Some(Pending {
        seq,
        record: to_log_record(&record, body),
    })
}

/// The attributes a record's log record carries, by OTLP name.
pub(crate) fn to_log_record(r: &AuditRecord, line: String) -> LogRecord {
    let mut attributes = vec![
        string_kv("audit.id", &r.audit_id),
        int_kv("audit.seq", r.seq),
        string_kv("audit.hash", &r.hash),
        string_kv("audit.outcome", r.outcome.as_str()),
        string_kv("audit.risk", r.risk_level.as_str()),
    ];
    let optional = [
        ("audit.chain_id", &r.chain_id),
        ("audit.event_type", &r.event_type),
        ("audit.actor", &r.actor),
        ("audit.resource", &r.resource),
        ("audit.action", &r.action),
        ("audit.session_id", &r.session_id),
        ("audit.ip", &r.ip_address),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attributes.push(string_kv(key, v));
        }
    }
    let nanos =
        |t: chrono::DateTime<chrono::Utc>| t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
    let hex = |key: &str| {
        r.details
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(decode_hex)
            .unwrap_or_default()
    };
    let severity = match r.risk_level {
        Risk::Low => SeverityNumber::Info,
        Risk::Medium => SeverityNumber::Info2,
        Risk::High => SeverityNumber::Warn,
        Risk::Critical => SeverityNumber::Fatal,
    };
    LogRecord {
        time_unix_nano: nanos(r.timestamp),
        observed_time_unix_nano: nanos(chrono::Utc::now()),
        severity_number: severity as i32,
        severity_text: r.risk_level.as_str().to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(line)),
        }),
        attributes,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: hex("trace_id"),
        span_id: hex("span_id"),
        event_name: r.event_type.clone().unwrap_or_default(),
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int_kv(key: &str, value: u64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value as i64)),
        }),
        ..Default::default()
    }
}

/// Lower- or upper-case hex to bytes (`None` if it is not hex).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
