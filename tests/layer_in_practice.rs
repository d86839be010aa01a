//! The layer as real codebases use `tracing`: panics and re-entrancy in span
//! fields, fork, global filters, duplicate keys, invalid values inside risky
//! spans, huge values. Scenarios that depend on process-wide state (the
//! global default subscriber, the global max level, fork) each run in a
//! child process of this test binary.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

const SCENARIO: &str = "TRACING_AUDIT_LAYER_SCENARIO";
const DIR: &str = "TRACING_AUDIT_LAYER_DIR";

/// Runs `scenario` in a child process; returns its trail and stderr.
fn in_child(scenario: &str) -> (Vec<Value>, String) {
    let dir = common::tempdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario)
        .env(DIR, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{scenario}: the child hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(child.wait().unwrap().success(), "{scenario}: {err}");
    // Every line is a record under the strict reader: unique keys at any
    // depth, the schema's values.
    for l in common::raw_lines(dir.path()) {
        if let Err(e) = tracing_audit::record::AuditRecord::parse(l.as_bytes()) {
            panic!("{scenario}: not a strict record ({e}): {l:.200}");
        }
    }
    let r = tracing_audit::verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{scenario}: {r:?}");
    (common::read_trail(dir.path()), err)
}

fn of_type<'a>(trail: &'a [Value], t: &str) -> Vec<&'a Value> {
    trail.iter().filter(|r| r["event_type"] == t).collect()
}

/// The child side: does nothing unless started by `in_child`.
#[test]
fn child() {
    let (Ok(scenario), Ok(dir)) = (std::env::var(SCENARIO), std::env::var(DIR)) else {
        return;
    };
    macro_rules! build {
        () => {
            AuditLayer::builder().file(&dir).build().unwrap()
        };
    }
    match scenario.as_str() {
        "env_filter_warn" => {
            let (audit, guard) = build!();
            let sub = tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new("warn"))
                .with(audit);
            tracing::subscriber::set_global_default(sub).unwrap();
            for i in 0..10 {
                tracing::info!(audit.event = "login", i);
            }
            // No record arrives at all; the warning must not wait for one.
            std::thread::sleep(Duration::from_millis(1500));
            drop(guard);
        }
        "level_off" => {
            let (audit, guard) = build!();
            let sub = tracing_subscriber::registry()
                .with(tracing_subscriber::filter::LevelFilter::OFF)
                .with(audit);
            tracing::subscriber::set_global_default(sub).unwrap();
            tracing::error!(audit.event = "login");
            std::thread::sleep(Duration::from_millis(1500));
            drop(guard);
        }
        "own_filter" => {
            let (audit, guard) = build!();
            let sub = tracing_subscriber::registry()
                .with(audit.with_filter(tracing_subscriber::filter::LevelFilter::WARN));
            tracing::subscriber::set_global_default(sub).unwrap();
            tracing::info!(audit.event = "login");
            tracing::warn!(audit.event = "auth_failure");
            std::thread::sleep(Duration::from_millis(1500));
            drop(guard);
        }
        "spans" => {
            let (audit, guard) = build!();
            spans(audit, &guard);
            drop(guard);
        }
        "fork" => {
            let (audit, guard) = build!();
            fork(audit, guard);
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn a_global_filter_is_reported_at_once_and_a_filter_on_the_audit_layer_is_not() {
    let (trail, err) = in_child("env_filter_warn");
    assert!(of_type(&trail, "login").is_empty());
    let w = of_type(&trail, "audit_config_warning");
    assert_eq!(w.len(), 1, "{trail:?}");
    assert_eq!(w[0]["details"]["max_level"], "warn");
    assert!(err.contains(".with_filter"), "{err}");

    let (trail, _) = in_child("level_off");
    assert_eq!(of_type(&trail, "audit_config_warning").len(), 1);

    let (trail, err) = in_child("own_filter");
    assert!(of_type(&trail, "audit_config_warning").is_empty(), "{err}");
    assert_eq!(of_type(&trail, "auth_failure").len(), 1);
}

/// Panicking and re-entrant values in spans, late records, risk, keys, sizes.
fn spans(audit: AuditLayer<tracing_subscriber::Registry>, guard: &tracing_audit::AuditGuard) {
    struct Panics;
    impl std::fmt::Debug for Panics {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("user Debug impl panics")
        }
    }
    struct Reenters;
    impl std::fmt::Debug for Reenters {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            tracing::info!(audit.event = "from_inside_record");
            f.write_str("late-actor")
        }
    }
    /// A value whose Debug output is 50 MB.
    struct Huge;
    impl std::fmt::Debug for Huge {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let chunk = "h".repeat(1 << 20);
            for _ in 0..50 {
                f.write_str(&chunk)?;
            }
            Ok(())
        }
    }
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit)).unwrap();
    std::panic::set_hook(Box::new(|_| {}));
    // A panicking Debug at span creation and at Span::record: caught, and
    // the span keeps working.
    let span = tracing::info_span!(
        "req",
        audit.actor = ?Panics,
        audit.session = "s1",
        audit.resource = tracing::field::Empty
    );
    let _e = span.enter();
    span.record("audit.resource", tracing::field::debug(&Panics));
    tracing::info!(audit.event = "after_panics");
    // A value that emits an event while it is being recorded: no deadlock.
    span.record("audit.actor", tracing::field::debug(&Reenters));
    tracing::info!(audit.event = "after_reentry");
    // An invalid risk inside a critical span: still critical, flagged.
    {
        let _c = tracing::info_span!("critical_op", audit.risk = "critical").entered();
        tracing::info!(audit.event = "bad_risk", audit.risk = "severe");
    }
    // Duplicate keys: a repeated field, a name the crate uses itself.
    tracing::info!(
        audit.event = "dupes",
        k = 1,
        k = 2,
        audit.invalid = "mine",
        audit.risk = "nope"
    );
    // Huge values: cut while formatting, in events and in spans.
    {
        let _h = tracing::info_span!("huge", audit.action = ?Huge).entered();
        tracing::info!(audit.event = "huge", v = ?Huge);
    }
    assert_eq!(guard.stats().callback_errors, 2, "{:?}", guard.stats());
}

#[test]
fn span_callbacks_are_panic_free_reentrant_and_bounded() {
    let (trail, _) = in_child("spans");
    let one = |t: &str| {
        let v = of_type(&trail, t);
        assert_eq!(v.len(), 1, "{t}: {trail:?}");
        v[0].clone()
    };
    let after = one("after_panics");
    assert_eq!(after["session_id"], "s1", "the span kept working");
    assert_eq!(one("after_reentry")["actor"], "late-actor");
    assert_eq!(one("from_inside_record")["session_id"], "s1");

    let bad = one("bad_risk");
    assert_eq!(
        bad["risk_level"], "critical",
        "never lowered below the span's"
    );
    assert_eq!(bad["details"]["audit.risk"], "severe");
    assert_eq!(
        bad["details"]["audit.invalid"],
        serde_json::json!(["audit.risk"])
    );

    // Keys are unique in the line itself (checked strictly in `in_child`).
    let dupes = one("dupes");
    let d = dupes["details"].as_object().unwrap();
    assert_eq!((d["k"].as_u64(), d["k#2"].as_u64()), (Some(1), Some(2)));
    assert_eq!(d["audit.invalid#2"], "mine");
    let flagged: Vec<&str> = d["audit.invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        flagged.contains(&"audit.invalid#2") && flagged.contains(&"audit.risk"),
        "{flagged:?}"
    );

    let huge = one("huge");
    let v = huge["details"]["v"].as_str().unwrap();
    assert!(
        v.len() < 9 * 1024
            && v.ends_with(&format!("[truncated {} bytes]", 50 * (1 << 20) - 8 * 1024)),
        "{:.100}",
        &v[v.len() - 60..]
    );
    assert!(huge["action"].as_str().unwrap().len() < 9 * 1024);
    let cut: Vec<&str> = huge["details"]["audit.truncated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        cut.contains(&"v") && cut.contains(&"audit.action"),
        "{cut:?}"
    );
}

fn fork(audit: AuditLayer<tracing_subscriber::Registry>, guard: tracing_audit::AuditGuard) {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(audit)).unwrap();
    tracing::info!(audit.event = "before_fork");
    // SAFETY: the child only emits through the layer (which refuses and
    // counts), drops the guard and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        tracing::info!(audit.event = "in_child_low");
        tracing::error!(audit.event = "in_child_durable", audit.risk = "critical");
        let stats = guard.stats();
        let flushed = guard.flush();
        drop(guard);
        let ok = stats.dropped_forked == 2 && !flushed;
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    let mut status = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
    tracing::info!(audit.event = "after_fork");
    drop(guard);
}

#[test]
fn fork_after_build_never_hangs_and_the_parent_keeps_its_trail() {
    let (trail, err) = in_child("fork");
    assert!(err.contains("Build the AuditLayer after fork"), "{err}");
    assert_eq!(of_type(&trail, "before_fork").len(), 1);
    assert_eq!(of_type(&trail, "after_fork").len(), 1);
    assert!(of_type(&trail, "in_child_low").is_empty());
}
