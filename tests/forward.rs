//! Forwarding from the trail with a durable cursor, against a real rsyslog
//! with `imrelp` on loopback and real child processes killed with SIGKILL:
//! a relay outage never blocks the application and delivery catches up; a
//! killed process resumes at its cursor; retention that deletes
//! undelivered records says so; three instances forward to one relay that
//! is killed mid-stream, and the relay's copy verifies as three intact,
//! gap-free chains.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::rsyslog::*;
use tracing_audit::trail::{verify_collected, CollectedOptions, CollectedReport};
use tracing_audit::{AuditLayer, FileSink, SyslogSink};
use tracing_subscriber::layer::SubscriberExt;

const DIR_ENV: &str = "TRACING_AUDIT_FORWARD_CHILD_DIR";
const PORT_ENV: &str = "TRACING_AUDIT_FORWARD_CHILD_PORT";
const FROM_ENV: &str = "TRACING_AUDIT_FORWARD_CHILD_FROM";
const TO_ENV: &str = "TRACING_AUDIT_FORWARD_CHILD_TO";

/// The instance: writes records `FROM..TO` to its trail and forwards them
/// over RELP, printing `emitted I` every 500 records; then waits until the
/// relay has everything, stops, and prints its stats as JSON. Does nothing
/// unless started by a test below.
#[test]
fn forward_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let env = |k: &str| -> u64 { std::env::var(k).unwrap().parse().unwrap() };
    let (port, from, to) = (env(PORT_ENV), env(FROM_ENV), env(TO_ENV));
    let (audit, guard) = AuditLayer::builder()
        .file(&dir)
        .syslog(
            SyslogSink::relp(format!("127.0.0.1:{port}"))
                .backoff(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in from..to {
        tracing::info!(
            audit.event = "data_access",
            audit.actor = "alice",
            audit.resource = "/accounts/42",
            i
        );
        if i % 500 == 0 {
            writeln!(out, "emitted {i}").unwrap();
            out.flush().unwrap();
        }
        if i % 20 == 0 {
            // About 10 000 records a second: a kill lands mid-stream.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    caught_up(&handle);
    drop(guard);
    let stats = serde_json::to_string(&handle.stats()).unwrap();
    writeln!(out, "stats {stats}").unwrap();
}

/// Waits (up to 90 s) until the syslog sinks have delivered everything
/// written so far.
fn caught_up(handle: &tracing_audit::AuditHandle) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while handle.stats().syslog_behind > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `forward_child` for `dir`.
fn start_child(dir: &Path, port: u16, from: u64, to: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "forward_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(PORT_ENV, port.to_string())
        .env(FROM_ENV, from.to_string())
        .env(TO_ENV, to.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's output: with `kill_after`, SIGKILLs it once it
/// emitted that record; else waits for its stats.
fn watch_child(mut child: Child, kill_after: Option<u64>) -> Option<serde_json::Value> {
    let mut stats = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let (Some(n), Some(k)) = (line.strip_prefix("emitted "), kill_after) {
            if n.parse::<u64>().unwrap() >= k {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        if let Some(s) = line.strip_prefix("stats ") {
            stats = Some(serde_json::from_str(s).unwrap());
        }
    }
    child.wait().unwrap();
    stats
}

/// The relay's copy, checked as a collected copy.
fn collected(work: &Path) -> CollectedReport {
    verify_collected(&[work.join("out.log")], &CollectedOptions::default()).unwrap()
}

/// `seq` → how many times the relay has it, for the chain of `dir`.
fn relay_seqs(got: &[Received], chain: &str) -> BTreeMap<u64, u64> {
    let mut seen = BTreeMap::new();
    for r in got.iter().filter(|r| r.record["chain_id"] == chain) {
        *seen.entry(r.seq()).or_insert(0) += 1;
    }
    seen
}

/// The trail's records (after a kill: without a torn last piece).
fn trail(dir: &Path) -> Vec<serde_json::Value> {
    common::read_trail_after_kill(dir).0
}

/// The forward cursor file of `dir`, parsed.
fn cursor(dir: &Path) -> serde_json::Value {
    let path = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".cursor"))
        .expect("a forward cursor in the audit directory");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Waits until the relay holds `n` distinct records of `chain`.
fn wait_relay(rs: &Rsyslog, chain: &str, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rs.received();
        if relay_seqs(&got, chain).len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A writer on `dir` (its chain keyed with `key`, if any) forwarding over
/// RELP to `port`, where nothing listens yet, with `n` `data_access`
/// records (`i` = 0..n) written and flushed: all of them wait in the trail.
fn write_with_relay_down(
    dir: &Path,
    port: u16,
    key: Option<&[u8]>,
    n: u64,
) -> (
    tracing_audit::AuditGuard,
    tracing_audit::AuditHandle,
    tracing::Dispatch,
) {
    let mut builder = AuditLayer::builder().file(dir).syslog(
        SyslogSink::relp(format!("127.0.0.1:{port}"))
            // A queue this small would hold the application back at
            // once; reading the trail, it does not apply.
            .capacity(16)
            .backoff(Duration::from_millis(20), Duration::from_millis(100)),
    );
    if let Some(key) = key {
        builder = builder.chain_key(key.to_vec());
    }
    let (audit, guard) = builder.build().unwrap();
    let handle = guard.handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..n {
            tracing::info!(audit.event = "data_access", audit.actor = "alice", i);
        }
    });
    assert!(handle.flush(), "flushed");
    (guard, handle, dispatch)
}

#[test]
fn a_relay_outage_never_blocks_and_delivery_catches_up_from_the_cursor() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let dir = common::tempdir();
    let port = free_tcp_port(); // nothing listens there yet
    let (guard, handle, dispatch) = write_with_relay_down(dir.path(), port, None, 20_000);
    let during = handle.stats();
    assert_eq!(during.syslog_sent, 0, "{during:?}");
    assert_eq!(during.syslog_dropped, 0, "{during:?}");
    assert_eq!(during.records_dropped, 0, "{during:?}");
    assert_eq!(
        during.syslog_behind, during.records_written,
        "everything written waits in the trail: {during:?}"
    );

    // The relay comes back: delivery starts at the cursor and catches up.
    let rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);
    let t0 = Instant::now();
    caught_up(&handle);
    let took = t0.elapsed();
    let caught_up = handle.stats();
    eprintln!(
        "caught up {} records in {took:?} after the outage",
        caught_up.syslog_sent
    );
    assert_eq!(caught_up.syslog_behind, 0, "{caught_up:?}");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(audit.event = "after_the_outage");
    });
    drop(dispatch);
    drop(guard);
    let stats = handle.stats();
    assert_eq!(stats.syslog_behind, 0, "{stats:?}");
    assert_eq!(stats.syslog_sent, stats.records_written, "{stats:?}");
    assert_eq!(stats.syslog_resent, 0, "{stats:?}");

    let records = common::read_trail(dir.path());
    let chain = records[0]["chain_id"].as_str().unwrap().to_owned();
    let got = wait_relay(&rs, &chain, records.len());
    let seen = relay_seqs(&got, &chain);
    assert_eq!(seen.len(), records.len(), "every record of the trail");
    assert!(seen.values().all(|&c| c == 1), "each once");
    let report = collected(work.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chains[0].first_seq, Some(0));
    assert_eq!(cursor(dir.path())["delivered"], records.len() as u64 - 1);
}

/// A record edited in the trail file while it waits there for the relay
/// (the relay was down), by whoever could write the files but holds no
/// key, is never forwarded: the relay gets every other record and a gap
/// at that `seq`, never the edit, and the sink counts and names it.
#[test]
fn a_record_edited_while_it_waits_for_the_relay_is_never_forwarded() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let dir = common::tempdir();
    let port = free_tcp_port(); // nothing listens there yet
                                // More records than the sink reads ahead into its window while it waits.
    let key = b"0123456789abcdef0123456789abcdef";
    let (guard, handle, dispatch) = write_with_relay_down(dir.path(), port, Some(key), 1_000);
    assert_eq!(handle.stats().syslog_sent, 0);

    // The attacker rewrites one waiting record: same length, same layout.
    let file = common::audit_files(dir.path()).pop().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let target = text
        .lines()
        .find(|l| l.contains("\"i\":900"))
        .expect("record i=900")
        .to_owned();
    let edited_seq = serde_json::from_str::<serde_json::Value>(&target).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let forged = target.replace("\"actor\":\"alice\"", "\"actor\":\"carol\"");
    assert_eq!(forged.len(), target.len());
    std::fs::write(&file, text.replace(&target, &forged)).unwrap();

    let rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!(audit.event = "after_the_edit");
    });
    assert!(handle.flush(), "flushed");
    caught_up(&handle);
    let stats = handle.stats();
    drop(dispatch);
    drop(guard);

    let chain = common::raw_lines(dir.path())[0].clone();
    let chain = serde_json::from_str::<serde_json::Value>(&chain).unwrap()["chain_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let written = stats.records_written;
    let got = wait_relay(&rs, &chain, written as usize - 1);
    let seen = relay_seqs(&got, &chain);
    assert!(
        !seen.contains_key(&edited_seq),
        "the edited record was forwarded"
    );
    assert!(
        got.iter().all(|r| r.record["actor"] != "carol"),
        "the edit reached the relay"
    );
    let want: BTreeSet<u64> = (0..written).filter(|&s| s != edited_seq).collect();
    let have: BTreeSet<u64> = seen.keys().copied().filter(|&s| s < written).collect();
    assert_eq!(have, want, "every other record");
    assert!(stats.syslog_errors >= 1, "{stats:?}");
    // The relay's copy says where its gap is.
    let report = collected(work.path());
    assert!(!report.is_ok(), "a gap at the edited record: {report:?}");
}

#[test]
fn a_killed_instance_resumes_at_its_cursor_and_the_relay_misses_nothing() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let dir = common::tempdir();
    let port = free_tcp_port();
    let rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);

    let child = start_child(dir.path(), port, 0, 1_000_000);
    // Two seconds in: the cursor has been saved since the first send.
    watch_child(child, Some(20_000));
    let at_kill = cursor(dir.path());
    let records = trail(dir.path());
    let chain = records[0]["chain_id"].as_str().unwrap().to_owned();
    assert!(
        records.iter().all(|r| r["event_type"] != "audit_stopped"),
        "killed, not stopped"
    );
    let delivered = at_kill["delivered"].as_u64().expect("a cursor was written");
    let sent = at_kill["sent"].as_u64().unwrap();

    let child = start_child(dir.path(), port, 1_000_000, 1_000_200);
    let stats = watch_child(child, None).expect("the restarted child's stats");
    let records = trail(dir.path());
    let last = records.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(records.last().unwrap()["event_type"], "audit_stopped");
    let got = wait_relay(&rs, &chain, last as usize + 1);
    let seen = relay_seqs(&got, &chain);
    let missing: Vec<u64> = (0..=last).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "the relay lacks {missing:?}");
    // Duplicates: only of records the relay had not acknowledged at the
    // kill (past `delivered`, up to `sent`), each counted as resent by the
    // restart, which resent exactly those: at most a window of 128 in
    // flight and the 128 `sent` is written ahead.
    let dups: Vec<u64> = seen
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&s, _)| s)
        .collect();
    assert!(
        dups.iter().all(|&s| s > delivered && s <= sent),
        "duplicates {dups:?} outside ({delivered}, {sent}]"
    );
    let resent = stats["syslog_resent"].as_u64().unwrap();
    eprintln!(
        "cursor at the kill: delivered {delivered}, sent {sent}; {} duplicates at the relay, {resent} counted as resent",
        dups.len()
    );
    assert_eq!(resent, sent - delivered, "{stats}");
    assert!(resent <= 128 + 128, "{stats}");
    assert!(dups.len() as u64 <= resent, "{} > {resent}", dups.len());
    assert_eq!(stats["syslog_behind"], 0, "{stats}");
    let report = collected(work.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chains[0].first_seq, Some(0));
    assert_eq!(report.chains[0].last_seq, Some(last));
}

#[test]
fn retention_that_deletes_undelivered_records_says_so() {
    if !relp_available() {
        return;
    }
    let work = common::tempdir();
    let dir = common::tempdir();
    let port = free_tcp_port(); // the relay is down while files rotate
    let sink = || {
        FileSink::new(dir.path())
            .max_file_size(8 * 1024)
            .max_files(3)
    };
    let relay = || {
        SyslogSink::relp(format!("127.0.0.1:{port}"))
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
    };
    let (audit, guard) = AuditLayer::builder()
        .file(sink())
        .syslog(relay())
        .shutdown_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..600u64 {
            tracing::info!(audit.event = "data_access", i);
        }
    });
    drop(guard);
    let stats = handle.stats();
    let records = common::read_trail(dir.path());
    let gaps: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r["event_type"] == "forward_gap")
        .map(|r| {
            let d = &r["details"];
            (
                d["from_seq"].as_u64().unwrap(),
                d["to_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!gaps.is_empty(), "retention deleted undelivered files");
    // Nothing was delivered: every record before the oldest file kept was
    // deleted undelivered, and counted. The deletions still on record
    // (older ones went with the files that held them) follow each other
    // without overlap up to that file.
    let oldest_kept = records[0]["seq"].as_u64().unwrap();
    assert!(oldest_kept > 0);
    assert_eq!(stats.forward_gap_records, oldest_kept, "{stats:?}");
    for w in gaps.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "{gaps:?}");
    }
    assert_eq!(gaps.last().unwrap().1 + 1, oldest_kept, "{gaps:?}");

    // The relay comes back; a restart sends what is left from the cursor.
    let rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);
    let (audit, guard) = AuditLayer::builder()
        .file(sink())
        .syslog(relay())
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    caught_up(&guard.handle());
    drop(audit);
    drop(guard);
    // The relay has every record from the oldest file kept (the restart
    // may have rotated and deleted one more: it says so too), none missing,
    // and with them the forward_gap records that say what it lacks.
    let records = common::read_trail(dir.path());
    let chain = records[0]["chain_id"].as_str().unwrap().to_owned();
    let first = records[0]["seq"].as_u64().unwrap();
    let last = records.last().unwrap()["seq"].as_u64().unwrap();
    let got = wait_relay(&rs, &chain, (last - first + 1) as usize);
    let report = collected(work.path());
    let c = &report.chains[0];
    assert!(c.first_seq <= Some(first), "{report:?}");
    assert_eq!(c.last_seq, Some(last));
    assert!(c.gaps.is_empty(), "{report:?}");
    assert!(
        c.first_mismatch.is_none() && c.conflicting == 0,
        "{report:?}"
    );
    let gap_records = |rs: &mut dyn Iterator<Item = &serde_json::Value>| -> BTreeSet<(u64, u64)> {
        rs.filter(|r| r["event_type"] == "forward_gap")
            .map(|r| {
                let d = &r["details"];
                (
                    d["from_seq"].as_u64().unwrap(),
                    d["to_seq"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let in_trail = gap_records(&mut records.iter());
    let relayed = gap_records(&mut got.iter().map(|r| &r.record));
    assert!(
        in_trail.is_subset(&relayed),
        "the relay has the gap records: {in_trail:?} vs {relayed:?}"
    );
}

/// The fleet: three instances forward 30 000 records each to one relay
/// over RELP. The relay is SIGKILLed and restarted mid-stream; one
/// instance is SIGKILLed and restarted. The relay's copy then verifies as
/// three intact chains, each gap-free from its first record to its last.
#[test]
fn three_instances_a_killed_relay_and_a_killed_instance_leave_three_intact_chains() {
    if !relp_available() {
        return;
    }
    const N: u64 = 30_000;
    let work = common::tempdir();
    let dirs: Vec<_> = (0..3).map(|_| common::tempdir()).collect();
    let port = free_tcp_port();
    let mut rs = Rsyslog::start(work.path(), &relp_input(port, ""));
    wait_listening(port);

    let watchers: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let child = start_child(d.path(), port, 0, N);
            // Instance 1 is killed a third of the way in.
            let kill = (k == 1).then_some(N / 3);
            std::thread::spawn(move || watch_child(child, kill))
        })
        .collect();

    // The relay dies mid-stream: stopped, so it takes nothing more and
    // cannot be cut in the middle of a write, then killed and restarted.
    // A second in: every instance paces itself to at least three seconds
    // of emitting, so all are mid-stream, whatever the machine's speed.
    std::thread::sleep(Duration::from_secs(1));
    let before = rs.received().len();
    rs.stop_and_kill();
    std::thread::sleep(Duration::from_millis(500));
    let rs = Rsyslog::spawn(work.path(), rs.conf.clone());

    let mut stats = Vec::new();
    for (k, w) in watchers.into_iter().enumerate() {
        let s = w.join().unwrap();
        if k == 1 {
            assert!(s.is_none(), "instance 1 was killed");
            // Restarted, it writes the rest of its records.
            let next = trail(dirs[1].path())
                .iter()
                .filter_map(|r| r["details"]["i"].as_u64())
                .max()
                .map_or(0, |i| i + 1);
            assert!(next < N, "killed mid-stream");
            let child = start_child(dirs[1].path(), port, next, N);
            stats.push(watch_child(child, None).expect("stats"));
        } else {
            stats.push(s.expect("stats"));
        }
    }
    assert!(before < 3 * N as usize, "the relay was killed mid-stream");
    for s in &stats {
        assert_eq!(s["syslog_behind"], 0, "{s}");
    }

    // Every chain is in the relay's copy, whole.
    let mut expect = BTreeMap::new();
    for (k, d) in dirs.iter().enumerate() {
        // Instance 1's kill may have cut a line, which its restart ended.
        let records = if k == 1 {
            common::read_trail_after_restart(d.path())
        } else {
            common::read_trail(d.path())
        };
        let chain = records[0]["chain_id"].as_str().unwrap().to_owned();
        let last = records.last().unwrap()["seq"].as_u64().unwrap();
        assert_eq!(records.len() as u64, last + 1);
        wait_relay(&rs, &chain, records.len());
        expect.insert(chain, last);
    }
    let report = collected(work.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chains.len(), 3, "{report:?}");
    for c in &report.chains {
        assert_eq!(c.first_seq, Some(0), "{c:?}");
        assert_eq!(Some(&c.last_seq.unwrap()), expect.get(&c.chain_id), "{c:?}");
        assert!(c.gaps.is_empty(), "{c:?}");
    }
    // The instances that lived through the relay's death emitted after it:
    // each noticed, and reconnected.
    for k in [0, 2] {
        assert!(
            stats[k]["syslog_reconnects"].as_u64() >= Some(1),
            "{}",
            stats[k]
        );
    }
    let dups: u64 = report.chains.iter().map(|c| c.duplicates).sum();
    let resent: u64 = stats
        .iter()
        .map(|s| s["syslog_resent"].as_u64().unwrap())
        .sum();
    eprintln!(
        "fleet: {} records relayed in 3 chains, relay killed after {before}; {dups} duplicates, {resent} resent",
        report.chains.iter().map(|c| c.records).sum::<u64>()
    );
}

/// A TCP "relay" that accepts and never reads: with a file sink the file
/// and the application never wait for it (the sink reads the trail; before,
/// its full queue held the pipeline back: 70 113 of 200 000 records in the
/// file after 20 s, the emitting thread blocked).
#[test]
fn a_stalled_tcp_relay_never_holds_back_the_file_or_the_application() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let relay = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let _ = hold_rx.recv(); // never reads; holds the connection
        drop(conn);
    });
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .syslog(SyslogSink::tcp(addr.to_string()))
        .shutdown_grace(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = guard.handle();
    let n = 200_000u64;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let emitter = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..n {
                tracing::info!(audit.event = "data_access", audit.actor = "alice", i);
            }
        });
        done_tx.send(()).unwrap();
    });
    // A hang detector, not a timing: blocked, the emitter never finishes.
    done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the application was held back by a relay that never reads");
    emitter.join().unwrap();
    assert!(handle.flush());
    let stats = handle.stats();
    assert_eq!(stats.records_written, n + 1, "{stats:?}");
    assert_eq!(stats.syslog_dropped, 0, "{stats:?}");
    assert!(
        stats.syslog_behind > 0,
        "the relay took everything? {stats:?}"
    );
    drop(guard);
    hold_tx.send(()).unwrap();
    relay.join().unwrap();
    let in_file = common::read_trail(dir.path())
        .iter()
        .filter(|r| r["event_type"] == "data_access")
        .count() as u64;
    assert_eq!(in_file, n);
}

/// The `seq` of every complete octet-counted syslog frame in `bytes`.
fn frame_seqs(bytes: &[u8]) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut at = 0;
    while let Some(sp) = bytes[at..].iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&bytes[at..at + sp])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            break;
        };
        let start = at + sp + 1;
        let Some(frame) = bytes.get(start..start + len) else {
            break; // cut by the crash
        };
        let text = String::from_utf8_lossy(frame);
        let seq = text
            .split_once(" seq=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .and_then(|(n, _)| n.parse().ok())
            .expect("a frame with its seq");
        seqs.push(seq);
        at = start + len;
    }
    seqs
}

/// A slow TCP receiver that then crashes with megabytes unread in the
/// kernels' buffers (before: 4 019 records lost, the resend window of 256
/// being far smaller). Reading the trail, the sink sends again everything
/// the buffers may have held, and the next connection gets every record.
#[test]
fn a_slow_tcp_relay_that_crashes_loses_nothing_read_back_from_the_trail() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = std::thread::spawn(move || {
        use std::io::Read;
        let mut got = Vec::new();
        let (mut slow, _) = listener.accept().unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        while start.elapsed() < Duration::from_secs(1) {
            match slow.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(slow); // the crash: what it did not read is gone (RST)
        let mut seqs = frame_seqs(&got);
        let (mut fresh, _) = listener.accept().unwrap();
        let mut rest = Vec::new();
        fresh.read_to_end(&mut rest).unwrap();
        seqs.extend(frame_seqs(&rest));
        seqs
    });
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .syslog(
            SyslogSink::tcp(addr.to_string())
                .backoff(Duration::from_millis(20), Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let handle = guard.handle();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..20_000u64 {
            tracing::info!(
                audit.event = "data_access",
                audit.actor = "alice",
                audit.resource = "/accounts/42",
                i
            );
        }
    });
    // The crash is seen, the buffers' worth resent, and everything written.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (handle.stats().syslog_resent == 0 || handle.stats().syslog_behind > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(guard);
    let stats = handle.stats();
    let got: BTreeSet<u64> = relay.join().unwrap().into_iter().collect();
    let last = common::read_trail(dir.path()).last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let missing: Vec<u64> = (0..=last).filter(|s| !got.contains(s)).collect();
    eprintln!(
        "slow relay crashed: {} resent, {} missing, {} reconnects",
        stats.syslog_resent,
        missing.len(),
        stats.syslog_reconnects
    );
    assert!(
        missing.is_empty(),
        "lost {} records: {:?}…",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        stats.syslog_resent > 256,
        "more than the old window: {stats:?}"
    );
    assert!(stats.syslog_reconnects >= 1, "{stats:?}");
}

/// Two sinks reading one trail keep two cursors: a shared name is refused
/// at build time, not left to overwrite each other.
#[test]
fn two_sinks_cannot_share_a_cursor() {
    let dir = common::tempdir();
    let port = free_tcp_port();
    let sink = || SyslogSink::relp(format!("127.0.0.1:{port}"));
    let Err(err) = AuditLayer::builder()
        .file(dir.path())
        .syslog(sink())
        .syslog(sink())
        .build::<tracing_subscriber::Registry>()
    else {
        panic!("two sinks with one cursor were accepted");
    };
    assert!(err.to_string().contains("cursor_name"), "{err}");
    let (_audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .syslog(sink())
        .syslog(sink().cursor_name("second-store"))
        .shutdown_grace(Duration::from_millis(200))
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    drop(guard);
    let cursors: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cursor"))
        .collect();
    assert_eq!(
        cursors,
        BTreeSet::from([
            format!(".forward-relp-127.0.0.1-{port}.cursor"),
            ".forward-second-store.cursor".to_owned()
        ])
    );
}
