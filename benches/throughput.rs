//! `cargo bench`: what the README's performance figures come from.
//!
//! 1. End-to-end audit records/s into a real file, 1 and 2 emitting threads,
//!    against `tracing_subscriber::fmt().json()` into a lossless
//!    `tracing_appender::non_blocking` writer on the same events; nothing lost
//!    is checked on both sides.
//! 2. The cost of a non-audit event with and without `AuditLayer` installed.
//! 3. `verify` throughput on a 1 M-record trail, and its peak memory (in a
//!    child process that only verifies); the same for `verify --collected`
//!    on that trail exported as one file.
//! 4. The syslog path alone: records/s through a TCP syslog sink, no file;
//!    and through a RELP sink to a real rsyslog (`imrelp` into `omfile`),
//!    every record acknowledged.
//! 5. `PolicyLayer` per-event cost with 3 default + 5 custom policies, at
//!    10 k and 10 M events.
//!
//! 6. SHA-256 on this CPU (`sha`): a 64-byte block's cost for one stream and
//!    for two streams whose blocks alternate, as the worker's pair sealing
//!    and `verify` hash them. Which of the two this machine is fast at
//!    decides what pair sealing is worth, so every run prints it first.
//!
//! `BENCH_QUICK=1` runs smaller sizes (for a smoke run). `-- --only X` runs
//! one part: `policy`, `verify`, `collected`, `syslog`, `relp`, `plain` (non-audit overhead), `split` (caller
//! cost without backpressure vs worker rate), `e2e` (part 1 alone), `e2e-plain` (this crate
//! alone, plain event, two threads: for A/B runs), `e2e-plain-keyed` (the same, the chain
//! keyed),
//! `sha` (part 6), `policy-spray` (PolicyLayer when every event names a new actor),
//! `latency` (caller cost at a steady rate), `durable` (32 threads of
//! durable records), `e2e1` (one small end-to-end
//! run, for profiling under callgrind).

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing_audit::{AuditLayer, Outcome, Policy, PolicyLayer};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A private (0700) temporary directory, as an audit directory should be:
/// an open one gets tightened and reported with an extra record.
fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

/// The event every end-to-end run emits: context from a span, four fields.
fn emit(i: u64) {
    tracing::info!(
        audit.event = "data_access",
        audit.resource = "invoice/2026-0042",
        audit.action = "read",
        audit.outcome = "success",
        rows = i,
        table = "invoices",
        "invoice viewed"
    );
}

/// The plain event of issue 11: six `audit.*` fields and four others, no
/// span (what most services emit, and where the peer's formatter is fast).
fn emit_plain(i: u64) {
    tracing::info!(
        audit.event = "data_access",
        audit.actor = "key_42",
        audit.ip = "203.0.113.9",
        audit.resource = "invoice/2026-0042",
        audit.action = "read",
        audit.outcome = "success",
        rows = i,
        table = "invoices",
        region = "eu-west-1",
        cached = false,
        "invoice viewed"
    );
}

/// Which event an end-to-end run emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// [`emit`] inside a `request` span carrying actor, ip and session.
    Span,
    /// [`emit_plain`], no span.
    Plain,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Span => "span context + 4 fields",
            Workload::Plain => "plain: 6 audit.* + 4 fields, no span",
        }
    }
}

fn run_threads(threads: u64, per_thread: u64, dispatch: &tracing::Dispatch) {
    run_workload(Workload::Span, threads, per_thread, dispatch)
}

fn run_workload(w: Workload, threads: u64, per_thread: u64, dispatch: &tracing::Dispatch) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let d = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || match w {
                    Workload::Span => {
                        let span = tracing::info_span!(
                            "request",
                            audit.actor = "key_42",
                            audit.ip = "203.0.113.9",
                            audit.session = t
                        );
                        let _e = span.enter();
                        for i in 0..per_thread {
                            emit(i);
                        }
                    }
                    Workload::Plain => {
                        for i in 0..per_thread {
                            emit_plain(i);
                        }
                    }
                })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// User + system CPU time of the whole process (every thread) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One end-to-end run's rate, total CPU (all threads) per record, and the
/// share of records whose callers began hashing their lines (the worker
/// was behind).
#[derive(Clone, Copy, Debug)]
struct Run {
    per_sec: f64,
    cpu_us: f64,
    prehashed: f64,
}

fn best_run<F: FnMut() -> Run>(runs: usize, mut f: F) -> Run {
    let mut b = Run {
        per_sec: 0.0,
        cpu_us: f64::MAX,
        prehashed: 0.0,
    };
    for _ in 0..runs {
        let r = f();
        if r.per_sec > b.per_sec {
            b.per_sec = r.per_sec;
            b.prehashed = r.prehashed;
        }
        b.cpu_us = b.cpu_us.min(r.cpu_us);
    }
    b
}

fn audit_run(threads: u64, per_thread: u64) -> f64 {
    audit_workload(Workload::Span, threads, per_thread).per_sec
}

fn audit_workload(w: Workload, threads: u64, per_thread: u64) -> Run {
    audit_workload_keyed(w, threads, per_thread, None)
}

/// [`audit_workload`], the chain keyed (HMAC-SHA-256) when `key` is given.
fn audit_workload_keyed(w: Workload, threads: u64, per_thread: u64, key: Option<&[u8]>) -> Run {
    let dir = private_tempdir();
    let mut builder = AuditLayer::builder().service("bench").file(dir.path());
    if let Some(k) = key {
        builder = builder.chain_key(k);
    }
    let (audit, guard) = builder.build().unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let cpu = cpu_time();
    let start = Instant::now();
    run_workload(w, threads, per_thread, &dispatch);
    let caller = start.elapsed().as_nanos() as f64 / per_thread as f64;
    CALLER_NS.with(|c| c.set(c.get().min(caller)));
    let h = guard.handle();
    drop(guard); // everything written and synced
    let secs = start.elapsed().as_secs_f64();
    let s = h.stats();
    assert_eq!(s.records_dropped, 0);
    assert_eq!(
        s.records_written,
        threads * per_thread + 2,
        "audit lost records"
    );
    let n = (threads * per_thread) as f64;
    Run {
        per_sec: n / secs,
        cpu_us: (cpu_time() - cpu).as_secs_f64() * 1e6 / n,
        prehashed: s.records_prehashed as f64 / s.records_written as f64,
    }
}

/// Records/s through the syslog path alone (no file): capture, seal, then
/// the sink's frame building (RFC 5424 with structured data, octet-counted)
/// and a lossless TCP send to a receiver on loopback that reads everything.
fn syslog_run(n: u64) -> f64 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(k) => total += k as u64,
            }
        }
    });
    let (audit, guard) = AuditLayer::builder()
        .service("bench")
        .syslog(
            tracing_audit::SyslogSink::tcp(addr.to_string())
                .queue_mode(tracing_audit::QueueMode::Lossless),
        )
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let start = Instant::now();
    run_threads(1, n, &dispatch);
    let h = guard.handle();
    drop(guard);
    let secs = start.elapsed().as_secs_f64();
    drop(dispatch);
    let bytes = reader.join().unwrap();
    let s = h.stats();
    assert_eq!(s.syslog_dropped, 0);
    assert_eq!(s.syslog_sent, n + 2, "syslog lost records");
    assert!(bytes > n * 100, "the receiver read {bytes} bytes");
    n as f64 / secs
}

fn peer_run(w: Workload, threads: u64, per_thread: u64) -> Run {
    let dir = private_tempdir();
    let appender = tracing_appender::rolling::never(dir.path(), "peer.log");
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(appender);
    let sub = tracing_subscriber::fmt()
        .json()
        .with_writer(writer)
        .with_current_span(true)
        .finish();
    let dispatch = tracing::Dispatch::new(sub);
    let cpu = cpu_time();
    let start = Instant::now();
    run_workload(w, threads, per_thread, &dispatch);
    drop(guard);
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu;
    let lines = std::fs::read_to_string(dir.path().join("peer.log"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(lines, threads * per_thread, "peer lost lines");
    let n = (threads * per_thread) as f64;
    Run {
        per_sec: n / secs,
        cpu_us: cpu.as_secs_f64() * 1e6 / n,
        prehashed: 0.0, // the peer has no chain
    }
}

thread_local! {
    /// Best caller-side ns per event seen by `audit_run` (per thread).
    static CALLER_NS: std::cell::Cell<f64> = const { std::cell::Cell::new(f64::MAX) };
}

fn best<F: FnMut() -> f64>(runs: usize, mut f: F) -> f64 {
    (0..runs).map(|_| f()).fold(0.0, f64::max)
}

struct Count(Arc<AtomicU64>);
impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn ns_per_plain_event(dispatch: &tracing::Dispatch, n: u64) -> f64 {
    tracing::dispatcher::with_default(dispatch, || {
        let start = Instant::now();
        for i in 0..n {
            tracing::info!(user = black_box(i), "plain event");
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

fn non_audit_overhead() {
    let n = if quick() { 200_000 } else { 20_000_000 };
    let dir = private_tempdir();
    let base = tracing::Dispatch::new(tracing_subscriber::registry().with(Count(Arc::default())));
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let with = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(Count(Arc::default()))
            .with(audit),
    );
    // Interleave runs; keep each side's best.
    let (mut b, mut w) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        b = b.min(ns_per_plain_event(&base, n));
        w = w.min(ns_per_plain_event(&with, n));
    }
    drop(guard);
    // Any per-layer-filtered layer costs tracing-subscriber's filter
    // bookkeeping; this is that cost alone, for comparison.
    let plf = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(Count(Arc::default()))
            .with(
                Count(Arc::default()).with_filter(tracing_subscriber::filter::filter_fn(|_| false)),
            ),
    );
    let mut p = f64::MAX;
    for _ in 0..5 {
        p = p.min(ns_per_plain_event(&plf, n));
    }
    println!("non-audit event, stack = registry + counting layer:");
    println!("  without AuditLayer  {b:>7.2} ns/event");
    println!(
        "  with AuditLayer     {w:>7.2} ns/event   (+{:.2} ns)",
        w - b
    );
    println!(
        "  with instead a no-op layer behind filter_fn(false) {p:>7.2} ns/event   (+{:.2} ns: what any per-layer filter costs)",
        p - b
    );
}

fn write_trail(dir: &Path, n: u64) {
    let (audit, guard) = AuditLayer::builder()
        .service("bench")
        .file(dir)
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    run_threads(1, n, &dispatch);
    drop(guard);
}

fn verify_bench() {
    let n = if quick() { 20_000 } else { 1_000_000 };
    let dir = private_tempdir();
    write_trail(dir.path(), n);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // Wall-clock rate (a reader thread checks hashes while the caller's
    // checks the rest) and records per CPU-second of all threads: what one
    // core alone would do at best.
    let (mut best_rate, mut best_cpu_rate) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let (start, cpu) = (Instant::now(), cpu_time());
        let r = tracing_audit::verify(dir.path(), None).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let cpu_secs = (cpu_time() - cpu).as_secs_f64();
        assert!(r.is_ok());
        assert_eq!(r.records, n + 2);
        best_rate = best_rate.max(r.records as f64 / secs);
        best_cpu_rate = best_cpu_rate.max(r.records as f64 / cpu_secs);
    }
    // Peak memory of a process that only verifies.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--verify-only")
        .arg(dir.path())
        .output()
        .unwrap();
    let rss = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!(
        "verify ({} records, {:.0} MB; reader thread + checking thread):",
        n + 2,
        bytes as f64 / 1e6
    );
    println!(
        "  {:>10.0} records/s  {:>6.0} MB/s   {:>10.0} records per CPU-second   peak RSS of a verify-only process: {rss}",
        best_rate,
        best_rate * bytes as f64 / (n as f64) / 1e6,
        best_cpu_rate
    );
}

/// `verify --collected` on a 1 M-record trail exported as one in-order
/// file (what a relay writes for one instance): records/s, and the peak
/// memory of a process that only does that.
fn collected_bench() {
    let n = if quick() { 20_000 } else { 1_000_000 };
    let dir = private_tempdir();
    write_trail(dir.path(), n);
    let export = dir.path().join("export.log");
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &export)
        .collect();
    files.sort();
    let mut out = std::fs::File::create(&export).unwrap();
    for f in &files {
        std::io::copy(&mut std::fs::File::open(f).unwrap(), &mut out).unwrap();
    }
    drop(out);
    let bytes = std::fs::metadata(&export).unwrap().len();
    let mut best_rate = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let r = tracing_audit::trail::verify_collected(
            &[&export],
            &tracing_audit::trail::CollectedOptions::default(),
        )
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.chains[0].records, n + 2);
        best_rate = best_rate.max((n + 2) as f64 / secs);
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--collected-only")
        .arg(&export)
        .output()
        .unwrap();
    let rss = String::from_utf8_lossy(&child.stdout).trim().to_owned();
    println!(
        "verify --collected (one core, {} records in order, {:.0} MB):",
        n + 2,
        bytes as f64 / 1e6
    );
    println!(
        "  {:>10.0} records/s  {:>6.0} MB/s   peak RSS of a collected-only process: {rss}",
        best_rate,
        best_rate * bytes as f64 / (n as f64) / 1e6
    );
}

fn policy_bench() {
    let mut policies = Policy::defaults();
    policies.push(
        Policy::new("failed_logins")
            .require(["auth_failure"])
            .outcome(Outcome::Failure)
            .threshold(5)
            .window(Duration::from_secs(300)),
    );
    policies.push(
        Policy::new("exports")
            .require(["data_export"])
            .threshold(10)
            .window(Duration::from_secs(3600)),
    );
    policies.push(
        Policy::new("admin")
            .require(["permission_change", "config_change"])
            .threshold(3),
    );
    policies.push(
        Policy::new("access_denied")
            .require(["access_denied"])
            .threshold(20)
            .window(Duration::from_secs(60)),
    );
    policies.push(
        Policy::new("bob")
            .require(["data_access"])
            .actor("bob")
            .threshold(1000),
    );
    let kinds = [
        "data_access",
        "login",
        "auth_failure",
        "data_export",
        "access_denied",
        "logout",
        "config_change",
        "page_view",
    ];
    let sizes: &[u64] = if quick() {
        &[10_000, 100_000]
    } else {
        &[10_000, 10_000_000]
    };
    // The floor: the same event through a registry and a layer that does
    // nothing behind a per-layer filter that accepts it.
    let noop = tracing_subscriber::registry()
        .with(Count(Arc::default()).with_filter(tracing_subscriber::filter::filter_fn(|_| true)));
    let floor = tracing::dispatcher::with_default(&tracing::Dispatch::new(noop), || {
        let n = 1_000_000u64;
        let start = Instant::now();
        for i in 0..n {
            let kind = kinds[(i % kinds.len() as u64) as usize];
            tracing::info!(
                audit.event = kind,
                audit.actor = "alice",
                audit.outcome = "failure"
            );
        }
        start.elapsed().as_nanos() as f64 / n as f64
    });
    println!("PolicyLayer, 3 default + 5 custom policies (registry + PolicyLayer, one thread):");
    println!(
        "  floor: the same event to a no-op layer behind a per-layer filter {floor:>7.1} ns/event"
    );
    for &n in sizes {
        let (layer, compliance) = PolicyLayer::builder()
            .policies(policies.clone())
            .emit_records(false)
            .build();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        let ns = tracing::dispatcher::with_default(&dispatch, || {
            let start = Instant::now();
            for i in 0..n {
                let kind = kinds[(i % kinds.len() as u64) as usize];
                tracing::info!(
                    audit.event = kind,
                    audit.actor = "alice",
                    audit.outcome = "failure"
                );
            }
            start.elapsed().as_nanos() as f64 / n as f64
        });
        assert_eq!(compliance.stats().total_events, n);
        println!("  {n:>10} events  {ns:>7.1} ns/event");
    }
}

/// `PolicyLayer` (the three default policies) when every event names an
/// actor never seen before, as an attacker spraying user names into
/// `auth_failure` makes it, against one actor throughout; with the default
/// `top_k` (100) and a large one (10 000). The actors' names are made
/// before the clock starts.
fn policy_spray_bench() {
    let n: usize = if quick() { 50_000 } else { 1_000_000 };
    let names: Vec<String> = (0..n).map(|i| format!("user{i:07}")).collect();
    println!("PolicyLayer, every event a new actor (3 default policies, one thread, {n} events):");
    for top_k in [100usize, 10_000] {
        let mut row = Vec::new();
        for spray in [false, true] {
            let (layer, compliance) = PolicyLayer::builder()
                .policies(Policy::defaults())
                .top_k(top_k)
                .emit_records(false)
                .build();
            let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
            let ns = tracing::dispatcher::with_default(&dispatch, || {
                let start = Instant::now();
                for name in &names {
                    let actor = if spray { name.as_str() } else { "alice" };
                    tracing::info!(
                        audit.event = "auth_failure",
                        audit.actor = actor,
                        audit.outcome = "failure"
                    );
                }
                start.elapsed().as_nanos() as f64 / n as f64
            });
            let stats = compliance.stats();
            let counted: u64 = stats.events_by_actor.values().sum::<u64>() + stats.actors_evicted;
            assert_eq!(counted, n as u64);
            row.push(ns);
        }
        println!(
            "  top_k {top_k:>6}: one actor {:>7.1} ns/event, a new actor every event {:>7.1} ns/event",
            row[0], row[1]
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--collected-only") {
        let opts = tracing_audit::trail::CollectedOptions::default();
        let r = tracing_audit::trail::verify_collected(&[&args[i + 1]], &opts).unwrap();
        assert!(r.is_ok(), "{r:?}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("VmHWM: ?");
        println!("{}", hwm.trim_start_matches("VmHWM:").trim());
        return;
    }
    // For profiling verify alone: `--write-trail DIR N` leaves a trail.
    if let Some(i) = args.iter().position(|a| a == "--write-trail") {
        let n = args[i + 2].parse().expect("--write-trail DIR N");
        write_trail(Path::new(&args[i + 1]), n);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--verify-only") {
        let r = tracing_audit::verify(&args[i + 1], None).unwrap();
        assert!(r.is_ok());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("VmHWM: ?");
        println!("{}", hwm.trim_start_matches("VmHWM:").trim());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args[i + 1].clone());
    match only.as_deref() {
        Some("policy") => return policy_bench(),
        Some("policy-spray") => return policy_spray_bench(),
        Some("sha") => return sha_bench(),
        Some("verify") => return verify_bench(),
        Some("collected") => return collected_bench(),
        Some("plain") => return non_audit_overhead(),
        Some("syslog") => return syslog_bench(),
        Some("relp") => return relp_bench(),
        #[cfg(feature = "otlp")]
        Some("otlp") => return otlp_bench(),
        Some("e2e") => return e2e_bench(),
        Some("e2e-plain") => {
            // This crate alone, plain event, 2 threads: for A/B runs.
            let r = best_run(5, || audit_workload(Workload::Plain, 2, 200_000));
            println!(
                "{:.0}/s, {:.2} µs CPU/record, {:.0} % prehashed by callers",
                r.per_sec,
                r.cpu_us,
                r.prehashed * 100.0
            );
            return;
        }
        Some("e2e-plain-keyed") => {
            // The same with a keyed chain (HMAC-SHA-256).
            let key = [0x5a; 32];
            let r = best_run(5, || {
                audit_workload_keyed(Workload::Plain, 2, 200_000, Some(&key))
            });
            println!(
                "{:.0}/s, {:.2} µs CPU/record (keyed chain)",
                r.per_sec, r.cpu_us
            );
            return;
        }
        Some("latency") => return caller_latency_bench(),
        Some("durable") => return durable_bench(),
        Some("e2e1-plain") => {
            // One thread, 50 000 plain events: small enough for callgrind.
            let r = audit_workload(Workload::Plain, 1, 50_000);
            println!("{:.0}/s, {:.2} µs CPU/record", r.per_sec, r.cpu_us);
            return;
        }
        Some("e2e1") => {
            println!("{:.0}/s", audit_run(1, 50_000));
            return;
        }
        Some("split") => {
            // Caller cost without backpressure vs the worker's rate.
            let dir = private_tempdir();
            let (audit, guard) = AuditLayer::builder()
                .file(dir.path())
                .queue_capacity(1 << 21)
                .build()
                .unwrap();
            let d = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
            let n = 400_000;
            let start = Instant::now();
            run_threads(1, n, &d);
            let caller = start.elapsed();
            let h = guard.handle();
            drop(guard);
            let total = start.elapsed();
            let st = h.stats();
            println!(
                "caller {:.0} ns/event; worker done at {:.0} records/s; {:.1} records per write",
                caller.as_nanos() as f64 / n as f64,
                n as f64 / total.as_secs_f64(),
                st.records_written as f64 / st.writes as f64
            );
            return;
        }
        _ => {}
    }
    sha_bench();
    e2e_bench();
    caller_latency_bench();
    durable_bench();
    syslog_bench();
    relp_bench();
    #[cfg(feature = "otlp")]
    otlp_bench();
    non_audit_overhead();
    verify_bench();
    collected_bench();
    policy_bench();
    policy_spray_bench();
}

/// SHA-256's compression function on this CPU (SHA instructions when it has
/// them, as `sha2` picks): ns per 64-byte block for one message, for two
/// messages whose blocks alternate (what `Chain::seal_pair` and `verify`'s
/// reader do), and for one message given to one call whole. The best of
/// many short trials, so a VM's stolen time does not count.
///
/// Hosts differ: where one stream is latency-bound the CPU overlaps two
/// alternating ones and pairs pay; where it is throughput-bound they do not,
/// and the per-call cost shows instead.
fn sha_bench() {
    use sha2::digest::generic_array::{typenum::U64, GenericArray};
    const BLOCKS: usize = 10;
    let a: Vec<u8> = (0..64 * BLOCKS as u32).map(|i| (i * 7 + 3) as u8).collect();
    let b: Vec<u8> = (0..64 * BLOCKS as u32)
        .map(|i| (i * 13 + 1) as u8)
        .collect();
    let block = |m: &[u8], i: usize| -> GenericArray<u8, U64> {
        GenericArray::clone_from_slice(&m[i * 64..][..64])
    };
    let (ba, bb): (Vec<_>, Vec<_>) = (0..BLOCKS).map(|i| (block(&a, i), block(&b, i))).unzip();
    let iv = [
        0x6a09_e667u32,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    let trials = if quick() { 200 } else { 3000 };
    // ns per block: the best of `trials` runs of 100 calls of `f`, which
    // hashes `blocks` blocks.
    let best = |blocks: usize, f: &mut dyn FnMut() -> u32| {
        let mut best = f64::MAX;
        let mut sink = 0u32;
        for _ in 0..trials {
            let t = Instant::now();
            for _ in 0..100 {
                sink ^= f();
            }
            best = best.min(t.elapsed().as_nanos() as f64 / (100 * blocks) as f64);
        }
        black_box(sink);
        best
    };
    let one = best(BLOCKS, &mut || {
        let mut s = iv;
        for blk in black_box(&ba) {
            sha2::compress256(&mut s, std::slice::from_ref(blk));
        }
        s[0]
    });
    let two = best(2 * BLOCKS, &mut || {
        let (mut sa, mut sb) = (iv, iv);
        for (x, y) in black_box(&ba).iter().zip(black_box(&bb)) {
            sha2::compress256(&mut sa, std::slice::from_ref(x));
            sha2::compress256(&mut sb, std::slice::from_ref(y));
        }
        sa[0] ^ sb[0]
    });
    let whole = best(BLOCKS, &mut || {
        let mut s = iv;
        sha2::compress256(&mut s, black_box(&ba));
        s[0]
    });
    println!("SHA-256 on this CPU (best of {trials} trials, ns per 64-byte block):");
    println!("  one stream, a call per block        {one:>6.1}");
    println!(
        "  two streams alternating (pairs)     {two:>6.1}  ({:.2}x one stream)",
        two / one
    );
    println!("  one stream, one call for all blocks {whole:>6.1}");
}

/// A free port on loopback (nothing listens there once this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// rsyslogd with `imrelp` on `port`, writing every message to a file, and
/// its work directory; `None` without rsyslogd/imrelp.
fn relay_on(port: u16) -> Option<(tempfile::TempDir, std::process::Child)> {
    let imrelp = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .any(|d| d.path().join("rsyslog/imrelp.so").exists());
    if !imrelp {
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display();
    std::fs::create_dir_all(work.path().join("spool")).unwrap();
    let conf = work.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{w}/spool\" maxMessageSize=\"256k\")\nmodule(load=\"imrelp\")\ninput(type=\"imrelp\" address=\"127.0.0.1\" port=\"{port}\" maxDataSize=\"256k\")\ntemplate(name=\"m\" type=\"string\" string=\"%msg%\\n\")\naction(type=\"omfile\" file=\"{w}/out.log\" template=\"m\")\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(work.path().join("pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "imrelp did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((work, child))
}

/// Records/s through a RELP sink to rsyslogd with `imrelp` writing every
/// message to a file, over loopback, window 128; the relay acknowledged
/// every record (checked). With `file`, the sink reads the trail (the
/// default with a file sink); without, its queue in memory. `None` without
/// rsyslogd/imrelp.
fn relp_run(n: u64, file: bool) -> Option<f64> {
    let port = free_port();
    let (_work, mut child) = relay_on(port)?;
    let dir = private_tempdir();
    let mut builder = AuditLayer::builder()
        .service("bench")
        .syslog(tracing_audit::SyslogSink::relp(format!("127.0.0.1:{port}")));
    if file {
        builder = builder.file(dir.path());
    }
    let (audit, guard) = builder.build().unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let start = Instant::now();
    run_threads(1, n, &dispatch);
    let h = guard.handle();
    // From the trail, the application is done long before the relay: the
    // rate is until it has acknowledged everything.
    while file && h.stats().syslog_behind > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(guard);
    let secs = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let s = h.stats();
    assert_eq!(s.syslog_dropped, 0);
    assert_eq!(s.syslog_behind, 0, "{s:?}");
    assert_eq!(
        s.syslog_sent,
        n + 2 + s.syslog_resent,
        "the relay did not acknowledge every record: {s:?}"
    );
    Some(n as f64 / secs)
}

/// Catch-up after an outage: `n` records written to the trail while the
/// relay is down, then rsyslogd (imrelp) starts on the sink's port; records/s
/// from then until the relay has acknowledged them all (read back from the
/// trail from the cursor). `None` without rsyslogd/imrelp.
fn catchup_run(n: u64) -> Option<f64> {
    let port = free_port();
    let dir = private_tempdir();
    let (audit, guard) = AuditLayer::builder()
        .service("bench")
        .file(dir.path())
        .syslog(
            tracing_audit::SyslogSink::relp(format!("127.0.0.1:{port}"))
                .backoff(Duration::from_millis(5), Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    run_threads(1, n, &dispatch);
    let h = guard.handle();
    assert!(h.flush());
    assert_eq!(h.stats().syslog_sent, 0);
    let behind = h.stats().syslog_behind;
    let (_work, mut child) = relay_on(port)?;
    let start = Instant::now();
    while h.stats().syslog_behind > 0 {
        assert!(start.elapsed() < Duration::from_secs(600), "no catch-up");
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(guard);
    let _ = child.kill();
    let _ = child.wait();
    Some(behind as f64 / secs)
}

fn relp_bench() {
    let n = if quick() { 20_000 } else { 200_000 };
    let show = |what: &str, f: &dyn Fn() -> Option<f64>| {
        let mut runs = Vec::new();
        for _ in 0..3 {
            match f() {
                Some(r) => runs.push(r),
                None => {
                    println!("{what}: skipped (rsyslogd with imrelp not installed: apt-get install rsyslog rsyslog-relp)");
                    return;
                }
            }
        }
        let r = runs.iter().cloned().fold(0.0, f64::max);
        println!("{what} (best of 3; window 128; span context + 4 fields): {r:.0}/s");
    };
    show(
        "RELP to rsyslog (imrelp -> omfile), no file, records/s acknowledged",
        &|| relp_run(n, false),
    );
    show(
        "RELP to rsyslog forwarding from the trail (file sink on), records/s acknowledged",
        &|| relp_run(n, true),
    );
    show(
        "RELP catch-up after an outage, records/s read from the trail and acknowledged",
        &|| catchup_run(n),
    );
}

fn syslog_bench() {
    let n = if quick() { 20_000 } else { 200_000 };
    let r = best(3, || syslog_run(n));
    println!(
        "syslog path alone, records/s (best of 3; RFC 5424 + SD over lossless TCP to a loopback reader; span context + 4 fields): {r:.0}/s"
    );
}

/// An OTLP/gRPC receiver in this process that counts the log records it
/// accepts.
#[cfg(feature = "otlp")]
#[derive(Clone, Default)]
struct OtlpCount(Arc<AtomicU64>);

#[cfg(feature = "otlp")]
#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService
    for OtlpCount
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
        >,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse>,
        tonic::Status,
    > {
        let n: usize = request
            .into_inner()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Records/s exported over OTLP/gRPC to a receiver in this process, from
/// the trail (file sink on): from the first event until the receiver
/// accepted every record.
#[cfg(feature = "otlp")]
fn otlp_run(n: u64) -> f64 {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer;
    let port = free_port();
    let count = OtlpCount::default();
    let received = count.0.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(count))
                .serve(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap();
        });
    });
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = private_tempdir();
    let (audit, guard) = AuditLayer::builder()
        .service("bench")
        .file(dir.path())
        .otlp(tracing_audit::otlp::OtlpSink::grpc(format!(
            "http://127.0.0.1:{port}"
        )))
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let start = Instant::now();
    run_threads(1, n, &dispatch);
    let h = guard.handle();
    while h.stats().otlp_behind > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(guard);
    let s = h.stats();
    assert_eq!(s.otlp_sent, n + 2, "{s:?}");
    assert_eq!(received.load(Ordering::Relaxed), n + 2);
    n as f64 / secs
}

#[cfg(feature = "otlp")]
fn otlp_bench() {
    let n = if quick() { 20_000 } else { 200_000 };
    let r = best(3, || otlp_run(n));
    println!(
        "OTLP/gRPC export from the trail to an in-process receiver, records/s accepted (best of 3; batches of 512; span context + 4 fields): {r:.0}/s"
    );
}

/// Part 1: end-to-end records/s and total CPU per record, both workloads,
/// 1 and 2 emitting threads, against the peer in the same run.
fn e2e_bench() {
    let per = if quick() { 20_000 } else { 400_000 };
    println!("end-to-end into a real file, nothing lost on either side (best of 3 runs; CPU = user+system of all threads / records):");
    for w in [Workload::Plain, Workload::Span] {
        println!("  {}:", w.name());
        for threads in [1u64, 2] {
            let per_thread = per / threads;
            CALLER_NS.with(|c| c.set(f64::MAX));
            let a = best_run(3, || audit_workload(w, threads, per_thread));
            let p = best_run(3, || peer_run(w, threads, per_thread));
            let caller = CALLER_NS.with(|c| c.get());
            println!(
                "    {threads} thread(s): tracing-audit {:>8.0}/s ({:.2} µs CPU/record)   fmt().json()+non_blocking(lossless) {:>8.0}/s ({:.2} µs CPU/line)   ratio {:.2}x   (caller: {caller:.0} ns/event per thread)",
                a.per_sec, a.cpu_us, p.per_sec, p.cpu_us, a.per_sec / p.per_sec
            );
        }
    }
}

/// The `q` quantile of sorted `v`.
fn quantile(v: &[u64], q: f64) -> u64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Caller cost at a steady rate from one thread (plain event): each
/// event's time in the macro, paced to 100 000 events/s.
fn caller_latency_bench() {
    let rate = 100_000u64;
    let n = if quick() { 50_000 } else { 500_000 };
    let dir = private_tempdir();
    let (audit, guard) = AuditLayer::builder()
        .service("bench")
        .file(dir.path())
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let mut took = Vec::with_capacity(n as usize);
    tracing::dispatcher::with_default(&dispatch, || {
        let gap = Duration::from_nanos(1_000_000_000 / rate);
        let start = Instant::now();
        for i in 0..n {
            let due = start + gap * i as u32;
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let t = Instant::now();
            emit_plain(i);
            took.push(t.elapsed().as_nanos() as u64);
        }
    });
    let h = guard.handle();
    drop(guard);
    assert_eq!(h.stats().records_written, n + 2, "records lost");
    took.sort_unstable();
    println!(
        "caller cost at a steady {rate} events/s, one thread, plain event ({n} events): p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        quantile(&took, 0.5),
        quantile(&took, 0.99),
        quantile(&took, 0.999),
        took[took.len() - 1]
    );
}

/// Durable records (risk high: synced before the macro returns) from 32
/// threads: records/s and each caller's wait, against one `fdatasync` of
/// a record-sized append on the same file system.
fn durable_bench() {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let threads = 32u64;
    let per = if quick() { 200 } else { 3_000 };
    let dir = private_tempdir();
    // One sync alone, on the same file system.
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut one = Vec::new();
    for _ in 0..200 {
        f.write_all(&[b'x'; 650]).unwrap();
        let t = Instant::now();
        // SAFETY: a valid open descriptor.
        assert_eq!(unsafe { libc::fdatasync(f.as_raw_fd()) }, 0);
        one.push(t.elapsed().as_nanos() as u64);
    }
    one.sort_unstable();
    let sync = quantile(&one, 0.5);
    drop(f);
    let (audit, guard) = AuditLayer::builder()
        .service("bench")
        .file(dir.path().join("trail"))
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let d = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    let mut took = Vec::with_capacity(per as usize);
                    for i in 0..per {
                        let t = Instant::now();
                        tracing::warn!(
                            audit.event = "permission_change",
                            audit.actor = "admin_7",
                            audit.resource = "role/billing-admin",
                            audit.action = "grant",
                            audit.outcome = "success",
                            audit.risk = "high",
                            grant = i,
                            "role granted"
                        );
                        took.push(t.elapsed().as_nanos() as u64);
                    }
                    took
                })
            })
        })
        .collect();
    let mut waits: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = start.elapsed().as_secs_f64();
    let h = guard.handle();
    drop(guard);
    let st = h.stats();
    assert_eq!(st.records_written, threads * per + 2, "records lost");
    waits.sort_unstable();
    let p99 = quantile(&waits, 0.99);
    println!(
        "durable records from {threads} threads: {:.0} records/s, {:.1} records per fdatasync; wait p50 {:.0} µs, p99 {:.0} µs = {:.1}x one fdatasync ({:.0} µs, median of 200 alone)",
        (threads * per) as f64 / secs,
        (threads * per) as f64 / st.syncs.max(1) as f64,
        quantile(&waits, 0.5) as f64 / 1e3,
        p99 as f64 / 1e3,
        p99 as f64 / sync as f64,
        sync as f64 / 1e3
    );
}
