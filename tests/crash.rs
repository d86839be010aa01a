//! A real child process writing an audit trail is killed with SIGKILL.
//! Every durable record it acknowledged must be on disk, the chain must
//! verify, and a restart must continue it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use tracing_audit::{verify, AuditLayer};
use tracing_subscriber::layer::SubscriberExt;

const CHILD_ENV: &str = "TRACING_AUDIT_CRASH_CHILD_DIR";
const PANIC_ENV: &str = "TRACING_AUDIT_PANIC_CHILD_DIR";

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
    let (audit, _guard) = AuditLayer::builder().file(&dir).build().unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        // Non-durable records in between, which may or may not survive.
        for j in 0..20 {
            tracing::info!(audit.event = "page_view", i, j);
        }
        tracing::info!(audit.event = "payment", audit.risk = "high", i);
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_loses_no_acknowledged_record() {
    let dir = common::tempdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            let n: u64 = n.parse().unwrap();
            acked = Some(n);
            if n == 300 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    let acked = acked.expect("child acknowledged nothing");

    let records = common::read_trail(dir.path());
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
    assert!(r.is_ok(), "after SIGKILL: {r:?}");

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
