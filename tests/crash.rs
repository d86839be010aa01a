//! A real child process writing an audit trail is killed with SIGKILL.
//! Every durable record it acknowledged must be on disk, the chain must
//! verify, and a restart must continue it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use tracing_audit::{trail::FailureKind, verify, AuditLayer};
use tracing_subscriber::layer::SubscriberExt;

const CHILD_ENV: &str = "TRACING_AUDIT_CRASH_CHILD_DIR";
const PANIC_ENV: &str = "TRACING_AUDIT_PANIC_CHILD_DIR";
const SIZE_ENV: &str = "TRACING_AUDIT_CRASH_CHILD_FILE_SIZE";
const ROUND_ENV: &str = "TRACING_AUDIT_CRASH_CHILD_ROUND";

/// The child for the panic hook: emits ordinary records, never drops its
/// guard, and panics at once. Only the hook can get them to disk in time.
#[test]
fn panic_child() {
    let Ok(dir) = std::env::var(PANIC_ENV) else {
        return;
    };
    let (audit, guard) = AuditLayer::builder()
        .file(&dir)
        .sync_interval(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    guard.handle().install_panic_hook();
    std::mem::forget(guard);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit)).unwrap();
    for i in 0..20_000u64 {
        tracing::info!(audit.event = "page_view", i);
    }
    panic!("boom");
}

#[test]
fn panic_hook_flushes_what_was_emitted() {
    let dir = common::tempdir();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["panic_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(PANIC_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!out.success(), "the child panicked");
    let views = common::read_trail(dir.path())
        .iter()
        .filter(|r| r["event_type"] == "page_view")
        .count();
    assert_eq!(views, 20_000, "records emitted before the panic");
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// The child: emits forever, printing `acked N` after each durable record
/// returned. Does nothing unless started by the parent test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    // With a size limit, the parent kills it in the middle of rotations.
    let sink = match std::env::var(SIZE_ENV) {
        Ok(bytes) => tracing_audit::FileSink::new(&dir).max_file_size(bytes.parse().unwrap()),
        Err(_) => tracing_audit::FileSink::new(&dir),
    };
    let (audit, _guard) = AuditLayer::builder().file(sink).build().unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit)).unwrap();
    let round: u64 = std::env::var(ROUND_ENV).map_or(0, |r| r.parse().unwrap());
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        // Non-durable records in between, which may or may not survive.
        for j in 0..20 {
            tracing::info!(audit.event = "page_view", i, j);
        }
        tracing::info!(audit.event = "payment", audit.risk = "high", i, round);
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Runs `crash_child` in `dir` with `envs` and kills it (SIGKILL) once it
/// acknowledged payment `kill_at`; returns the last number it acknowledged.
fn kill_child_after(dir: &std::path::Path, envs: &[(&str, String)], kill_at: u64) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("acked ") {
            let n: u64 = n.parse().unwrap();
            acked = Some(n);
            if n == kill_at {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    acked
}

#[test]
fn sigkill_loses_no_acknowledged_record() {
    let dir = common::tempdir();
    let acked = kill_child_after(dir.path(), &[], 300);
    let acked = acked.expect("child acknowledged nothing");

    let (records, torn) = common::read_trail_after_kill(dir.path());
    let payments: Vec<u64> = records
        .iter()
        .filter(|r| r["event_type"] == "payment")
        .map(|r| r["details"]["i"].as_u64().unwrap())
        .collect();
    for i in 0..=acked {
        assert!(
            payments.contains(&i),
            "acknowledged durable record {i} lost"
        );
    }
    assert!(
        records.iter().all(|r| r["event_type"] != "audit_stopped"),
        "the child was killed, not stopped"
    );
    let r = verify(dir.path(), None).unwrap();
    killed_trail_is_intact(&r, torn);

    // A new process continues the chain where the killed one left it.
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "after_restart");
    });
    drop(guard);
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "after restart: {r:?}");
    assert_eq!(r.records as usize, records.len() + 3);
}

/// SIGKILL while files rotate (a 4 KiB size limit: a rotation every few
/// records), five times over in one directory, at different points: after
/// each kill every acknowledged durable record is there and the chain
/// verifies; each restart continues it.
#[test]
fn sigkill_during_rotation_loses_nothing_and_restarts_continue() {
    let dir = common::tempdir();
    for (round, kill_at) in [37u64, 5, 120, 1, 64].into_iter().enumerate() {
        let envs = [
            (SIZE_ENV, "4096".to_owned()),
            (ROUND_ENV, round.to_string()),
        ];
        let acked = kill_child_after(dir.path(), &envs, kill_at);
        assert_eq!(acked, Some(kill_at), "round {round}");
        // Every acknowledged payment of every round so far is there.
        let (records, torn) = common::read_trail_after_kill(dir.path());
        let payments: std::collections::HashSet<(u64, u64)> = records
            .iter()
            .filter(|r| r["event_type"] == "payment")
            .map(|r| {
                (
                    r["details"]["round"].as_u64().unwrap(),
                    r["details"]["i"].as_u64().unwrap(),
                )
            })
            .collect();
        for (r, k) in [37u64, 5, 120, 1, 64]
            .into_iter()
            .enumerate()
            .take(round + 1)
        {
            for i in 0..=k {
                assert!(
                    payments.contains(&(r as u64, i)),
                    "round {r}: acknowledged payment {i} lost"
                );
            }
        }
        let r = verify(dir.path(), None).unwrap();
        killed_trail_is_intact(&r, torn);
        assert!(
            common::audit_files(dir.path()).len() > round + 2,
            "the size limit rotated files"
        );
    }
    // The next start acknowledges whatever the last kill tore.
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "after_restart");
    });
    drop(guard);
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "after the last restart: {r:?}");
}

/// Right after a kill, the chain verifies, or its only fault is the torn
/// last line the kill left, which the next start acknowledges.
fn killed_trail_is_intact(r: &tracing_audit::trail::VerifyReport, torn: bool) {
    match &r.failure {
        None => assert!(!torn, "a torn line verify did not report: {r:?}"),
        Some(f) => assert!(
            torn && f.kind == FailureKind::TornTail,
            "after SIGKILL: {r:?}"
        ),
    }
}
