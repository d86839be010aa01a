//! The OTLP sink against OTLP receivers running in the test process: a
//! gRPC server built from `opentelemetry-proto`'s service definition, and
//! an HTTP/protobuf endpoint on a plain socket. Every record arrives, its
//! body exactly the sealed line of the trail, its attributes the record's;
//! an endpoint down is caught up from the trail; a partial success is
//! retried and counted.
#![cfg(feature = "otlp")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use tracing_audit::otlp::OtlpSink;
use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;

/// What a receiver took: the log records of every accepted request, and
/// the resources' `service.name`.
#[derive(Clone, Default)]
struct Received {
    records: Arc<Mutex<Vec<LogRecord>>>,
    services: Arc<Mutex<Vec<String>>>,
    /// Requests still to answer with a partial success (nothing kept).
    reject: Arc<AtomicU64>,
}

impl Received {
    /// Keeps `req`, or answers with a partial success while rejecting.
    fn take(&self, req: ExportLogsServiceRequest) -> ExportLogsServiceResponse {
        let n: usize = req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        if self
            .reject
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
            .is_ok()
        {
            return ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: n as i64,
                    error_message: "quota exceeded".into(),
                }),
            };
        }
        for rl in req.resource_logs {
            let service = rl
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                });
            self.services.lock().unwrap().extend(service);
            for sl in rl.scope_logs {
                self.records.lock().unwrap().extend(sl.log_records);
            }
        }
        ExportLogsServiceResponse {
            partial_success: None,
        }
    }

    fn records(&self) -> Vec<LogRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `n` records arrived (or 60 s).
    fn wait_for(&self, n: usize) -> Vec<LogRecord> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.records.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.records()
    }
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.take(request.into_inner())))
    }
}

/// A gRPC OTLP receiver on `port`, on a runtime of its own; stops when the
/// returned sender is dropped.
fn grpc_receiver(port: u16, received: Received) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let server = tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(received))
                .serve_with_shutdown(addr, async {
                    let _ = stopped.await;
                });
            ready_tx.send(()).unwrap();
            server.await.unwrap();
        });
    });
    ready_rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the receiver did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop
}

/// The value of a string or int attribute, as text.
fn attr(r: &LogRecord, key: &str) -> Option<String> {
    r.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

fn body(r: &LogRecord) -> String {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("body is not a string: {other:?}"),
    }
}

/// Emits `n` records with every key field, a third of them high risk.
fn emit(n: u64) {
    for i in 0..n {
        if i % 3 == 0 {
            tracing::info!(
                audit.event = "payment",
                audit.actor = "alice",
                audit.resource = "/accounts/42",
                audit.action = "transfer",
                audit.outcome = "success",
                audit.risk = "high",
                audit.session = "s-1",
                audit.ip = "10.0.0.7",
                i
            );
        } else {
            tracing::info!(audit.event = "data_access", audit.actor = "bob", i);
        }
    }
}

/// Checks that `got` holds every line of the trail in `dir` once, each
/// body the exact sealed line and each attribute the record's own.
fn check_against_trail(dir: &std::path::Path, got: &[LogRecord]) {
    let lines = common::raw_lines(dir);
    let by_seq: BTreeMap<u64, &LogRecord> = got
        .iter()
        .map(|r| (attr(r, "audit.seq").unwrap().parse().unwrap(), r))
        .collect();
    assert_eq!(by_seq.len(), lines.len(), "every record, once");
    for line in &lines {
        let rec = tracing_audit::record::AuditRecord::parse(line.as_bytes()).unwrap();
        let r = by_seq[&rec.seq];
        assert_eq!(&body(r), line, "the body is the sealed line");
        assert_eq!(attr(r, "audit.id").as_deref(), Some(rec.audit_id.as_str()));
        assert_eq!(attr(r, "audit.hash").as_deref(), Some(rec.hash.as_str()));
        assert_eq!(attr(r, "audit.chain_id"), rec.chain_id);
        assert_eq!(attr(r, "audit.event_type"), rec.event_type);
        assert_eq!(attr(r, "audit.actor"), rec.actor);
        assert_eq!(attr(r, "audit.resource"), rec.resource);
        assert_eq!(attr(r, "audit.action"), rec.action);
        assert_eq!(attr(r, "audit.session_id"), rec.session_id);
        assert_eq!(attr(r, "audit.ip"), rec.ip_address);
        assert_eq!(
            attr(r, "audit.outcome").as_deref(),
            Some(rec.outcome.as_str())
        );
        assert_eq!(
            attr(r, "audit.risk").as_deref(),
            Some(rec.risk_level.as_str())
        );
        assert_eq!(r.severity_text, rec.risk_level.as_str());
        let severity = match rec.risk_level {
            tracing_audit::Risk::Low => 9,
            tracing_audit::Risk::Medium => 10,
            tracing_audit::Risk::High => 13,
            tracing_audit::Risk::Critical => 21,
        };
        assert_eq!(r.severity_number, severity);
        assert_eq!(
            r.time_unix_nano,
            rec.timestamp.timestamp_nanos_opt().unwrap() as u64
        );
    }
}

#[test]
fn every_record_arrives_over_grpc_after_an_outage_exactly_as_sealed() {
    let dir = common::tempdir();
    let port = common::rsyslog::free_tcp_port(); // no receiver yet
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .otlp(
            OtlpSink::grpc(format!("http://127.0.0.1:{port}"))
                .service_name("billing-api")
                .batch(100)
                .backoff(Duration::from_millis(20), Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || emit(1000));
    assert!(handle.flush());
    let during = handle.stats();
    assert_eq!(during.otlp_sent, 0, "{during:?}");
    assert_eq!(during.otlp_behind, during.records_written, "{during:?}");
    assert!(during.otlp_errors >= 1, "{during:?}");

    let received = Received::default();
    let stop = grpc_receiver(port, received.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.stats().otlp_behind > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
    let stats = handle.stats();
    let got = received.wait_for(stats.records_written as usize);
    drop(stop);
    assert_eq!(stats.otlp_behind, 0, "{stats:?}");
    assert_eq!(stats.otlp_sent, stats.records_written, "{stats:?}");
    assert_eq!(stats.otlp_dropped, 0, "{stats:?}");
    check_against_trail(dir.path(), &got);
    assert!(received
        .services
        .lock()
        .unwrap()
        .iter()
        .all(|s| s == "billing-api"));
}

#[test]
fn a_partial_success_is_retried_and_counted_not_taken_as_delivery() {
    let dir = common::tempdir();
    let port = common::rsyslog::free_tcp_port();
    let received = Received::default();
    received.reject.store(2, Ordering::SeqCst);
    let stop = grpc_receiver(port, received.clone());
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .otlp(
            OtlpSink::grpc(format!("http://127.0.0.1:{port}"))
                .backoff(Duration::from_millis(20), Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || emit(300));
    drop(guard);
    let stats = handle.stats();
    let got = received.wait_for(stats.records_written as usize);
    drop(stop);
    assert!(stats.otlp_rejected >= 2, "{stats:?}");
    assert!(stats.otlp_errors >= 2, "{stats:?}");
    assert!(stats.otlp_resent >= stats.otlp_rejected, "{stats:?}");
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("quota exceeded")),
        "{stats:?}"
    );
    assert_eq!(stats.otlp_sent, stats.records_written, "{stats:?}");
    check_against_trail(dir.path(), &got);
}

/// An OTLP/HTTP endpoint on a plain socket: `POST /v1/logs` with a
/// protobuf body, answered 200 with an empty export response.
fn http_receiver(received: Received) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let received = received.clone();
            std::thread::spawn(move || serve_http(conn, &received));
        }
    });
    port
}

fn serve_http(conn: std::net::TcpStream, received: &Received) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        assert!(request_line.starts_with("POST /v1/logs "), "{request_line}");
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap(),
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
        assert_eq!(content_type, "application/x-protobuf");
        let mut body = vec![0u8; length];
        r.read_exact(&mut body).unwrap();
        let req = ExportLogsServiceRequest::decode(&body[..]).unwrap();
        let answer = received.take(req).encode_to_vec();
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        )
        .unwrap();
        w.write_all(&answer).unwrap();
    }
}

#[test]
fn every_record_arrives_over_http_protobuf_also_without_a_file() {
    // From the trail.
    let received = Received::default();
    let port = http_receiver(received.clone());
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .otlp(OtlpSink::http(format!("http://127.0.0.1:{port}")))
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || emit(500));
    drop(guard);
    let stats = handle.stats();
    let got = received.wait_for(stats.records_written as usize);
    assert_eq!(stats.otlp_sent, stats.records_written, "{stats:?}");
    check_against_trail(dir.path(), &got);

    // From the queue in memory (no file sink), the body mapped to ECS.
    let received = Received::default();
    let port = http_receiver(received.clone());
    let (audit, guard) = AuditLayer::builder()
        .otlp(
            OtlpSink::http(format!("http://127.0.0.1:{port}"))
                .message_schema(tracing_audit::record::mapping::Schema::Ecs),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || emit(200));
    drop(guard);
    let stats = handle.stats();
    let got = received.wait_for(202);
    assert_eq!(stats.otlp_sent, 202, "{stats:?}");
    assert_eq!(stats.otlp_behind, 0, "{stats:?}");
    let seqs: std::collections::BTreeSet<u64> = got
        .iter()
        .map(|r| attr(r, "audit.seq").unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (0..202).collect());
    for r in &got {
        let ecs: serde_json::Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(ecs["event"]["id"].as_str(), attr(r, "audit.id").as_deref());
        assert_eq!(
            ecs["event"]["action"].as_str(),
            attr(r, "audit.event_type").as_deref()
        );
    }
}

/// An endpoint the sink cannot reach is refused at `build()`, saying why:
/// `https://` (no TLS is built in: every export would fail while records
/// waited) and anything but `http://host:port`. Nothing is sent anywhere.
#[test]
fn an_endpoint_the_sink_cannot_reach_is_refused_at_build() {
    for (sink, says) in [
        (OtlpSink::http("https://collector.example:4318"), "no TLS"),
        (OtlpSink::grpc("https://collector.example:4317"), "no TLS"),
        (OtlpSink::grpc("collector.example:4317"), "http://host:port"),
        (OtlpSink::http("http://"), "http://host:port"),
    ] {
        let dir = common::tempdir();
        let err = tracing_audit::AuditLayer::builder()
            .file(dir.path())
            .otlp(sink)
            .build::<tracing_subscriber::Registry>()
            .unwrap_err();
        assert!(
            matches!(err, tracing_audit::Error::Config(_)) && err.to_string().contains(says),
            "{err}"
        );
        assert!(
            common::audit_files(dir.path()).is_empty(),
            "refused before anything was written"
        );
    }
}
