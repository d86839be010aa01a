//! Load: many threads at once through frequent rotations with a syslog
//! sink on, and a large burst against a relay that is down, in bounded memory.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tracing_audit::{syslog::Framing, verify, AuditLayer, FileSink, QueueMode, SyslogSink};
use tracing_subscriber::layer::SubscriberExt;

const THREADS: u64 = 32;
const PER_THREAD: u64 = 10_000;

/// 32 threads × 10 000 events, files rotating every 256 KiB (about every
/// 450 records), a syslog sink to a TCP receiver on loopback: every
/// (thread, i) exactly once in the files and at the receiver, `seq`
/// contiguous, the chain verifies.
#[test]
fn thirty_two_threads_through_rotations_and_syslog_each_event_once() {
    let dir = common::tempdir();
    // The trail takes about 200 MB.
    common::require_free_space(dir.path(), 400 << 20);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // The receiver: every line of every connection.
    let receiver = std::thread::spawn(move || {
        let mut lines = Vec::new();
        // One connection is expected; a reconnect would add another.
        listener.set_nonblocking(false).unwrap();
        let (conn, _) = listener.accept().unwrap();
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            lines.push(line);
        }
        lines
    });
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(dir.path()).max_file_size(256 * 1024))
        .syslog(
            SyslogSink::tcp(addr)
                .framing(Framing::Lf)
                .queue_mode(QueueMode::Lossless),
        )
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let d = dispatch.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    start.wait();
                    for i in 0..PER_THREAD {
                        tracing::info!(audit.event = "load", audit.actor = "t", t, i);
                    }
                })
            })
        })
        .collect();
    // Waiting on the writers, not joining them blindly: should the disk
    // fill, they would wait for space forever (OnError::Block), so the test
    // fails then, saying so.
    let stats = guard.handle();
    let until = Instant::now() + Duration::from_secs(600);
    while !threads.iter().all(|t| t.is_finished()) {
        common::assert_storage_healthy(&stats, dir.path());
        assert!(Instant::now() < until, "the writers took 10 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in threads {
        t.join().unwrap();
    }
    // The sink reads the trail, so it trails the writers: in a debug build
    // about 250 000 records behind when they finish, drained at some 26 000
    // a second, the whole of the default 10 s grace. Waiting for it here
    // keeps this test about each event once, not about the grace (what a
    // grace leaves behind is resent from the cursor: tests/forward.rs).
    let until = Instant::now() + Duration::from_secs(120);
    while stats.stats().syslog_behind > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stats.stats().syslog_behind, 0, "the relay never caught up");
    drop(guard);
    drop(dispatch);
    let stats = stats.stats();
    assert_eq!(stats.records_dropped, 0, "{stats:?}");
    assert_eq!(stats.syslog_dropped, 0, "{stats:?}");

    let files = common::audit_files(dir.path());
    assert!(
        files.len() > 100,
        "{} files: rotation every 256 KiB",
        files.len()
    );
    let mut seen = HashSet::new();
    let mut records = 0u64;
    common::each_record(dir.path(), |r| {
        assert_eq!(r["seq"].as_u64().unwrap(), records, "seq contiguous");
        records += 1;
        if r["event_type"] == "load" {
            let key = (
                r["details"]["t"].as_u64().unwrap(),
                r["details"]["i"].as_u64().unwrap(),
            );
            assert!(seen.insert(key), "{key:?} twice in the files");
        }
    });
    assert_eq!(seen.len() as u64, THREADS * PER_THREAD);
    let report = verify(dir.path(), None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, records);

    // The receiver saw each once too (the connection closes at shutdown).
    let lines = receiver.join().unwrap();
    let mut at_relay = HashSet::new();
    for line in &lines {
        let Some(json) = line.find("{\"schema\"").map(|at| &line[at..]) else {
            continue;
        };
        let r: serde_json::Value = serde_json::from_str(json).unwrap();
        if r["event_type"] == "load" {
            let key = (
                r["details"]["t"].as_u64().unwrap(),
                r["details"]["i"].as_u64().unwrap(),
            );
            assert!(at_relay.insert(key), "{key:?} twice at the relay");
        }
    }
    assert_eq!(at_relay, seen);
}

const BURST_ENV: &str = "TRACING_AUDIT_BURST_CHILD_DIR";
const BURST: u64 = 1_000_000;

/// The child of the burst test: a file sink and a lossy syslog sink whose
/// relay is down; prints its peak RSS and the stats after the guard drops.
#[test]
fn burst_child() {
    let Ok(dir) = std::env::var(BURST_ENV) else {
        return;
    };
    // A port nothing listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (audit, guard) = AuditLayer::builder()
        .file(&dir)
        .syslog(
            SyslogSink::tcp(format!("127.0.0.1:{port}"))
                .queue_mode(QueueMode::Lossy)
                .shutdown_grace(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..BURST {
            tracing::info!(
                audit.event = "burst",
                audit.actor = "load-test",
                audit.resource = "/api/v1/items",
                i,
                note = "a burst of ordinary records while the relay is down"
            );
        }
    });
    drop(guard);
    let s = handle.stats();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .to_owned();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "burst written={} dropped={} syslog_sent={} syslog_dropped={} syslog_behind={} peak_rss_kb={hwm}",
        s.records_written, s.records_dropped, s.syslog_sent, s.syslog_dropped, s.syslog_behind
    )
    .unwrap();
}

/// A 1 000 000-event burst with the syslog relay down: the file gets every
/// record, the syslog sink (reading the trail) drops none and reports every
/// one as not yet delivered, left in the trail for the next start, and the
/// process's peak RSS stays bounded (the sink holds a batch, not the
/// outage; nothing accumulates per record).
#[test]
fn a_million_event_burst_with_the_relay_down_stays_in_bounded_memory() {
    let dir = common::tempdir();
    // The trail takes about 660 MB.
    common::require_free_space(dir.path(), 1400 << 20);
    let output = common::tempdir();
    let (out_path, err_path) = (output.path().join("out"), output.path().join("err"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["burst_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(BURST_ENV, dir.path())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    // A debug build takes some 30 s. Should the disk fill, the child's
    // callers wait for space (OnError::Block) and it says so on stderr:
    // the test ends then with that, not at CI's time limit.
    let until = Instant::now() + Duration::from_secs(600);
    while child.try_wait().unwrap().is_none() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        // What the worker says once when writing or syncing fails.
        let storage_failed = stderr.contains("; retrying (");
        if storage_failed || Instant::now() > until {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "the burst child {} ({} MB free under {}); its stderr:\n{stderr}",
                if storage_failed {
                    "could not write its trail"
                } else {
                    "took 10 minutes"
                },
                common::free_bytes(dir.path()) >> 20,
                dir.path().display(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&out_path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.find("burst written=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("child printed no figures: {text}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    println!("{line}");
    let mut bursts = 0u64;
    common::each_record(dir.path(), |r| {
        bursts += u64::from(r["event_type"] == "burst")
    });
    assert_eq!(bursts, BURST, "the file has every record");
    assert_eq!(field("dropped"), 0);
    // Nothing reached the relay; nothing is dropped: every record written
    // is still to be delivered, from the trail.
    assert_eq!(field("syslog_sent"), 0);
    assert_eq!(field("syslog_dropped"), 0, "{line}");
    assert_eq!(field("syslog_behind"), field("written"), "{line}");
    let rss_mb = field("peak_rss_kb") / 1024;
    assert!(rss_mb < 400, "peak RSS {rss_mb} MB for a 1M burst: {line}");
}
