//! The core layer end to end: real subscriber stacks, real files in temp dirs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{app_records, audit_files, raw_lines, read_trail};
use serde_json::Value;
use tracing::instrument::WithSubscriber;
use tracing::Instrument;
use tracing_audit::{AuditLayer, Error, FileSink, QueueMode, Risk};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const KEYS: [&str; 23] = [
    "schema",
    "audit_id",
    "timestamp",
    "event_type",
    "actor",
    "resource",
    "action",
    "outcome",
    "risk_level",
    "session_id",
    "ip_address",
    "message",
    "details",
    "service",
    "version",
    "environment",
    "host",
    "source",
    "seq",
    "chain_id",
    "prev_hash",
    "hash",
    "",
];

/// Counts every event it sees; knows nothing of audit.
struct CountAll(Arc<AtomicUsize>);
impl<S: tracing::Subscriber> Layer<S> for CountAll {
    fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn records_follow_the_schema_and_other_layers_see_everything() {
    let dir = common::tempdir();
    let seen = Arc::new(AtomicUsize::new(0));
    let (audit, guard) = AuditLayer::builder()
        .service("billing-api")
        .version("1.2.3")
        .environment("test")
        .host("test-host")
        .file(dir.path())
        .build()
        .unwrap();
    let sub = tracing_subscriber::registry()
        .with(CountAll(seen.clone()))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .with(audit);
    tracing::subscriber::with_default(sub, || {
        tracing::info!("plain event");
        let span = tracing::info_span!(
            "request",
            audit.actor = "key_42",
            audit.ip = "203.0.113.9",
            audit.session = "s-1"
        );
        let _e = span.enter();
        tracing::warn!(
            audit.event = "auth_failure",
            audit.resource = "/login",
            audit.outcome = "failure",
            reason = "bad password",
            attempts = 3u64,
            delta = -2i64,
            ratio = 0.5,
            locked = true,
            "authentication failed"
        );
        tracing::debug!(count = 1, "another plain event");
    });
    drop(guard);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "the other layer saw every event"
    );

    let lines = raw_lines(dir.path());
    let all = read_trail(dir.path());
    for (line, rec) in lines.iter().zip(&all) {
        // Every key, in order.
        let mut at = 0;
        for k in KEYS.iter().filter(|k| !k.is_empty()) {
            let needle = format!("\"{k}\":");
            let pos = line[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{k} missing or out of order in {line}"));
            at += pos;
        }
        assert_eq!(rec.as_object().unwrap().len(), 22);
        assert_eq!(rec["schema"], 3);
        let id = uuid::Uuid::parse_str(rec["audit_id"].as_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
        // One chain id in every record of the directory.
        assert_eq!(rec["chain_id"], all[0]["chain_id"]);
        uuid::Uuid::parse_str(rec["chain_id"].as_str().unwrap()).unwrap();
        let ts = rec["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..all.len() as u64).collect::<Vec<_>>(),
        "seq is contiguous from 0"
    );

    let app = app_records(dir.path());
    assert_eq!(app.len(), 1);
    let r = &app[0];
    assert_eq!(r["event_type"], "auth_failure");
    assert_eq!(r["actor"], "key_42");
    assert_eq!(r["ip_address"], "203.0.113.9");
    assert_eq!(r["session_id"], "s-1");
    assert_eq!(r["resource"], "/login");
    assert_eq!(r["action"], Value::Null);
    assert_eq!(r["outcome"], "failure");
    assert_eq!(r["risk_level"], "medium", "WARN defaults to medium");
    assert_eq!(r["message"], "authentication failed");
    assert_eq!(r["details"]["reason"], "bad password");
    assert_eq!(r["details"]["attempts"], 3);
    assert_eq!(r["details"]["delta"], -2);
    assert_eq!(r["details"]["ratio"], 0.5);
    assert_eq!(r["details"]["locked"], true);
    assert_eq!(r["service"], "billing-api");
    assert_eq!(r["version"], "1.2.3");
    assert_eq!(r["environment"], "test");
    assert_eq!(r["host"], "test-host");
    assert_eq!(r["source"]["level"], "WARN");
    assert_eq!(r["source"]["span"], "request");
    assert_eq!(r["source"]["target"], "core");
    assert_eq!(all.first().unwrap()["event_type"], "audit_started");
    assert_eq!(all.last().unwrap()["event_type"], "audit_stopped");
}

#[test]
fn span_context_inner_wins_event_wins_and_record_later_counts() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let sub = tracing_subscriber::registry().with(audit);
    tracing::subscriber::with_default(sub, || {
        let outer = tracing::info_span!(
            "outer",
            audit.actor = "outer-actor",
            audit.session = "sess",
            audit.resource = tracing::field::Empty
        );
        let _o = outer.enter();
        outer.record("audit.resource", "recorded-later");
        let plain = tracing::info_span!("plain", user = "not taken");
        let _p = plain.enter();
        let inner = tracing::info_span!("inner", audit.actor = "inner-actor");
        let _i = inner.enter();
        tracing::info!(audit.event = "a");
        tracing::info!(audit.event = "b", audit.actor = "event-actor");
    });
    drop(guard);
    let app = app_records(dir.path());
    assert_eq!(app[0]["actor"], "inner-actor");
    assert_eq!(app[0]["session_id"], "sess");
    assert_eq!(app[0]["resource"], "recorded-later");
    assert_eq!(
        app[0]["source"]["span"], "outer>inner",
        "only audit spans are named"
    );
    assert!(
        app[0]["details"].get("user").is_none(),
        "non-audit span fields are never taken"
    );
    assert_eq!(app[1]["actor"], "event-actor");
}

#[test]
fn instrumented_futures_on_multithread_runtime_keep_their_context() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let d = dispatch.clone();
            let span = tracing::dispatcher::with_default(&d, || {
                tracing::info_span!(
                    "task",
                    audit.actor = format!("user-{i}").as_str(),
                    audit.session = i
                )
            });
            tasks.push(tokio::spawn(
                async move {
                    for step in 0..4 {
                        tokio::task::yield_now().await;
                        tokio::time::sleep(std::time::Duration::from_micros(50)).await;
                        tracing::info!(audit.event = "step", step, task = i);
                    }
                }
                .instrument(span)
                .with_subscriber(d),
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(guard);
    let app = app_records(dir.path());
    assert_eq!(app.len(), 200);
    for r in &app {
        let task = r["details"]["task"].as_u64().unwrap();
        assert_eq!(
            r["actor"],
            format!("user-{task}"),
            "context crossed tasks: {r}"
        );
        assert_eq!(r["session_id"], task.to_string());
    }
}

#[test]
fn bad_values_are_kept_and_flagged() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::error!(
            audit.event = "x",
            audit.risk = "severe",
            audit.outcome = "maybe",
            audit.colour = "blue",
            nan = f64::NAN
        );
        tracing::info!(audit.event = "y", audit.risk = "CRITICAL");
    });
    drop(guard);
    let app = app_records(dir.path());
    let d = &app[0]["details"];
    assert_eq!(
        app[0]["risk_level"], "high",
        "ERROR default when audit.risk is bad"
    );
    assert_eq!(app[0]["outcome"], "unknown");
    assert_eq!(d["audit.risk"], "severe");
    assert_eq!(d["audit.outcome"], "maybe");
    assert_eq!(d["audit.colour"], "blue");
    assert_eq!(d["nan"], "NaN");
    let flagged: Vec<&str> = d["audit.invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in ["audit.risk", "audit.outcome", "audit.colour", "nan"] {
        assert!(flagged.contains(&f), "{f} not flagged: {flagged:?}");
    }
    assert_eq!(app[1]["risk_level"], "critical");
}

#[test]
fn hostile_values_stay_on_one_valid_line() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .max_value_len(64 * 1024)
        .build()
        .unwrap();
    let huge = "A".repeat(1 << 20);
    let hostile = "evil\r\n{\"forged\":true}\n\u{1b}[2J\"quote\\ \u{0} \u{85} \u{2028} end";
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "inject",
            audit.actor = hostile,
            note = hostile,
            "{hostile}"
        );
        tracing::info!(audit.event = "big", blob = huge.as_str());
        tracing::info!(audit.event = hostile);
    });
    drop(guard);
    let raw = raw_lines(dir.path());
    for l in &raw {
        assert!(
            l.bytes().all(|b| b >= 0x20 && b != 0x7f),
            "raw control byte in line"
        );
        assert!(!l.contains('\u{85}') && !l.contains('\u{2028}'));
    }
    let app = app_records(dir.path());
    assert_eq!(app.len(), 3);
    assert_eq!(app[0]["actor"], hostile);
    assert_eq!(app[0]["details"]["note"], hostile);
    assert_eq!(app[0]["message"], hostile);
    let blob = app[1]["details"]["blob"].as_str().unwrap();
    assert!(
        blob.len() < 70 * 1024 && blob.ends_with("...[truncated 983040 bytes]"),
        "{}",
        &blob[blob.len() - 40..]
    );
    assert_eq!(
        app[1]["details"]["audit.truncated"],
        serde_json::json!(["blob"])
    );
    assert_eq!(app[2]["event_type"], hostile);
}

#[test]
fn files_are_private() {
    let dir = common::tempdir();
    let trail = dir.path().join("nested/audit");
    let (audit, guard) = AuditLayer::builder().file(&trail).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "x");
    });
    drop(guard);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&trail), 0o700);
    let files = audit_files(&trail);
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600);
}

#[test]
fn broken_directory_is_a_clear_error() {
    let dir = common::tempdir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = AuditLayer::builder()
        .file(file.join("audit"))
        .build::<tracing_subscriber::Registry>()
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("a-file/audit"), "{err}");

    let err = AuditLayer::builder()
        .build::<tracing_subscriber::Registry>()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)));
}

/// A child process made without running `fork` handlers (a raw `clone`, as
/// `vfork`-style spawners do) holds a copy of the lock's descriptor until
/// its `exec` or exit: a pipeline started again on the same directory right
/// after the first stopped waits for it instead of failing.
#[test]
fn a_restart_while_a_raw_child_holds_the_lock_waits_for_it() {
    let dir = common::tempdir();
    let (_a, guard) = AuditLayer::builder()
        .file(dir.path())
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    // The child leaves once it reads a byte from this pipe.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: a plain `clone` with SIGCHLD is `fork` without its handlers;
    // the child only reads and leaves with `_exit`, both async-signal-safe.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) } as libc::pid_t;
    assert!(pid >= 0, "clone failed");
    if pid == 0 {
        unsafe {
            let mut b = 0u8;
            libc::read(read_end, (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(guard);
    // The child goes 200 ms after the second start begins, within its wait.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: the pipe's write end, ours.
        unsafe { libc::write(write_end, b"x".as_ptr().cast(), 1) };
    });
    let started = std::time::Instant::now();
    let again = AuditLayer::builder()
        .file(dir.path())
        .build::<tracing_subscriber::Registry>();
    let waited = started.elapsed();
    release.join().unwrap();
    let mut status = 0;
    // SAFETY: our own child and pipe.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::close(read_end);
        libc::close(write_end);
    }
    assert!(again.is_ok(), "{:?}", again.err());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // It waited for the child (what the test is about).
    assert!(
        waited >= std::time::Duration::from_millis(150),
        "{waited:?}"
    );
}

/// A child forked without `exec` (a pre-fork server's worker, a daemon's
/// helper) does not keep the audit directory locked: once the parent's
/// pipeline stops, another starts on the directory while the child still
/// runs. (Before, the child's copy of the lock's descriptor held it for as
/// long as the child lived: `DirectoryInUse` after the second's wait.)
#[test]
fn a_child_forked_without_exec_does_not_hold_the_directory() {
    let dir = common::tempdir();
    let (_a, guard) = AuditLayer::builder()
        .file(dir.path())
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    // SAFETY: the child only sleeps (`nanosleep`) and leaves with `_exit`,
    // both async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            let ts = libc::timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
            libc::_exit(0);
        }
    }
    drop(guard);
    let again = AuditLayer::builder()
        .file(dir.path())
        .build::<tracing_subscriber::Registry>();
    let alive = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0;
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    assert!(
        alive,
        "the child left before the second start: nothing was tested"
    );
    assert!(again.is_ok(), "{:?}", again.err());
}

/// A second writer on a directory whose writer runs is refused, after
/// `meanwhile` ran, and the directory is free again once the first stops.
fn second_writer_is_refused_while_the_first_runs(meanwhile: impl FnOnce(&std::path::Path)) {
    let dir = common::tempdir();
    let build = || {
        AuditLayer::builder()
            .file(dir.path())
            .build::<tracing_subscriber::Registry>()
    };
    let (_a, guard) = build().unwrap();
    meanwhile(dir.path());
    let err = build().unwrap_err();
    assert!(matches!(err, Error::DirectoryInUse { .. }), "{err:?}");
    drop(guard);
    // Free again once the first is gone.
    let (_b, _g) = build().unwrap();
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    second_writer_is_refused_while_the_first_runs(|_| {});
}

/// Deleting `.lock` while a writer runs (a cleanup script, an aged-out
/// dot file) does not let a second writer start on the directory and fork
/// its chain: the directory itself is locked too.
#[test]
fn a_deleted_lock_file_does_not_let_a_second_writer_in() {
    second_writer_is_refused_while_the_first_runs(|dir| {
        std::fs::remove_file(dir.join(".lock")).unwrap();
    });
}

#[test]
fn durable_records_are_synced_with_group_commit() {
    let dir = common::tempdir();
    // An hour-long interval: only the durability rule can make this sync now.
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .durable_at(Risk::High)
        .sync_interval(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = guard.handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dispatch.clone();
    std::thread::spawn(move || {
        tracing::dispatcher::with_default(&d, || tracing::error!(audit.event = "one"));
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("a durable record waited for the interval");
    // On disk (and synced) before the macro returned.
    assert_eq!(app_records(dir.path()).len(), 1);
    assert!(handle.stats().syncs >= 1);

    let before = handle.stats().syncs;
    // Eight callers at once: a sync answers several waiters, which the
    // worker hands to its acknowledgement thread. Each answer must still
    // come after a sync that began after the record was queued, with the
    // record in the file.
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let d = dispatch.clone();
            let h = handle.clone();
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    for i in 0..40u64 {
                        let synced_before = h.stats().syncs;
                        tracing::info!(audit.event = "export", audit.risk = "critical", t, i);
                        assert!(
                            h.stats().syncs > synced_before,
                            "acknowledged before a sync that covers it"
                        );
                        // The other threads' records are being written
                        // meanwhile: the newest line may be unfinished, as
                        // after a kill, and is left out.
                        assert!(
                            common::read_trail_after_kill(&dir)
                                .0
                                .iter()
                                .any(|r| r["details"]["t"] == t && r["details"]["i"] == i),
                            "acknowledged and not in the file: thread {t}, record {i}"
                        );
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = handle.stats().syncs - before;
    assert_eq!(app_records(dir.path()).len(), 321);
    assert!(
        syncs < 320,
        "group commit: {syncs} syncs for 320 durable records"
    );
    drop(guard);
}

#[test]
fn lossy_mode_counts_exactly_what_it_drops() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(dir.path())
        .queue_mode(QueueMode::Lossy)
        .queue_capacity(1)
        .build()
        .unwrap();
    let handle = guard.handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let d = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    for i in 0..20_000u32 {
                        tracing::info!(audit.event = "burst", i);
                        if i % 1000 == 999 {
                            // Durable records are never dropped, even in lossy mode.
                            tracing::info!(audit.event = "payment", audit.risk = "high", i);
                        }
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(guard);
    let dropped = handle.stats().records_dropped;
    let trail = read_trail(dir.path());
    let kept = trail.iter().filter(|r| r["event_type"] == "burst").count() as u64;
    let reported: u64 = trail
        .iter()
        .filter(|r| r["event_type"] == "records_lost")
        .map(|r| r["details"]["count"].as_u64().unwrap())
        .sum();
    assert!(
        dropped > 0,
        "a queue of one should overflow under two producers"
    );
    assert_eq!(
        kept + dropped,
        40_000,
        "every record is either written or counted"
    );
    assert_eq!(
        reported, dropped,
        "records_lost records carry the exact count"
    );
}

#[test]
fn restart_continues_the_chain() {
    let dir = common::tempdir();
    for run in 0..3 {
        let (audit, guard) = AuditLayer::builder()
            .file(FileSink::new(dir.path()))
            .build()
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            tracing::info!(audit.event = "x", run);
        });
        drop(guard);
    }
    let all = read_trail(dir.path());
    assert_eq!(all.len(), 9);
    for (i, pair) in all.windows(2).enumerate() {
        assert_eq!(pair[1]["seq"].as_u64().unwrap(), i as u64 + 1);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    assert_eq!(all[3]["event_type"], "audit_started");
    assert_eq!(all[3]["details"]["resumed_after_seq"], 2);
}

#[test]
fn debug_output_never_shows_the_chain_key() {
    let b = AuditLayer::builder()
        .file("./unused")
        .chain_key(b"super-secret-key-material".to_vec());
    let shown = format!("{b:?}");
    assert!(
        !shown.contains("super-secret") && !shown.contains("115, 117, 112"),
        "{shown}"
    );
    assert!(shown.contains("hmac-sha256"), "{shown}");
}

#[test]
fn spans_deeper_than_the_kept_names_are_marked_as_cut() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        fn nest(depth: usize) {
            if depth == 0 {
                tracing::info!(audit.event = "deep");
                return;
            }
            let _s = tracing::info_span!("level", audit.action = depth).entered();
            nest(depth - 1);
        }
        nest(40);
        let _s = tracing::info_span!("shallow", audit.action = "x").entered();
        tracing::info!(audit.event = "shallow");
    });
    drop(guard);
    let app = app_records(dir.path());
    let deep = &app[0];
    assert_eq!(
        deep["source"]["span"].as_str().unwrap().split('>').count(),
        32
    );
    assert_eq!(deep["action"], "1", "the innermost span still wins");
    assert!(deep["details"]["audit.truncated"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "source.span"));
    assert!(app[1]["details"].get("audit.truncated").is_none());
}

#[test]
fn a_free_space_watermark_is_seen_before_the_disk_fills() {
    // A watermark above any real free space: low from the first check.
    let dir = common::tempdir();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = tracing_audit::FileSink::new(dir.path())
        .space_left(tracing_audit::file::SpaceLeft::Percent(100.0))
        .on_space_low(move |s| tx.send(s.clone()).unwrap());
    let (audit, guard) = AuditLayer::builder().file(sink).build().unwrap();
    let report = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the callback ran");
    assert!(
        report.low && report.available < report.watermark,
        "{report:?}"
    );
    assert!(guard.stats().space_low);
    let health = guard.handle().health();
    assert!(
        !health.healthy && health.reasons[0].contains("watermark"),
        "{health:?}"
    );
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "still_written");
    });
    drop(guard);
    let all = common::read_trail(dir.path());
    let low: Vec<_> = all
        .iter()
        .filter(|r| r["event_type"] == "disk_space_low")
        .collect();
    assert_eq!(low.len(), 1, "once per crossing");
    assert!(low[0]["details"]["available_bytes"].as_u64().is_some());
    assert!(all.iter().any(|r| r["event_type"] == "still_written"));
}

#[test]
fn trail_stats_keep_the_top_actors_and_sum_the_rest() {
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..60 {
            // user-0 most often, then a long tail of one event each.
            let n = if i == 0 { 5 } else { 1 };
            for _ in 0..n {
                tracing::info!(
                    audit.event = "e",
                    audit.actor = format!("user-{i}").as_str()
                );
            }
        }
    });
    drop(guard);
    let s = tracing_audit::trail::AuditTrail::open(dir.path())
        .unwrap()
        .stats(&tracing_audit::trail::Query::default());
    assert_eq!(s.by_actor.len(), tracing_audit::trail::TOP_ACTORS);
    assert_eq!(s.by_actor["user-0"], 5);
    assert_eq!(s.by_actor.values().sum::<u64>() + s.other_actors, s.total);
    assert!(s.other_actors > 0);
}

/// A symbolic link named like an audit file, the lock or a forward cursor
/// (planted by whoever could write the directory) is refused at start,
/// naming it; the file it points to, outside the trail, is untouched.
#[test]
fn a_symlink_named_like_an_audit_file_is_refused_at_start() {
    for name in [
        "audit.jsonl",
        "audit_000003.jsonl",
        ".lock",
        ".forward-siem.cursor",
    ] {
        let outside = common::tempdir();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious\n").unwrap();
        let dir = common::tempdir();
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        let sink = FileSink::new(dir.path()).rotation(tracing_audit::file::Rotation::NEVER);
        let err = AuditLayer::builder()
            .file(sink)
            .build::<tracing_subscriber::Registry>()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(name) && (text.contains("symbolic link") || text.contains("links")),
            "{name}: {text}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n", "{name}");
    }
}

/// A trail of 4 000-byte files whose writer started (`audit.jsonl`); then
/// `plant` runs on its directory and 20 records follow, enough to need the
/// next file. Returns the directory, the guard, whether a flush then
/// succeeded within 2 s, and the health after it.
fn plant_then_rotate(
    plant: impl FnOnce(&std::path::Path),
) -> (
    tempfile::TempDir,
    tracing_audit::AuditGuard,
    bool,
    tracing_audit::pipeline::Health,
) {
    let dir = common::tempdir();
    let sink = FileSink::new(dir.path())
        .rotation(tracing_audit::file::Rotation::NEVER)
        .max_file_size(4_000);
    let (layer, guard) = AuditLayer::builder()
        .file(sink)
        .shutdown_grace(std::time::Duration::from_millis(500))
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    let handle = guard.handle();
    assert!(handle.flush());
    plant(dir.path());
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..20 {
            tracing::info!(
                audit.event = "into_a_planted_file",
                audit.actor = "mallory",
                i
            );
        }
    });
    let flushed = handle.flush_timeout(std::time::Duration::from_secs(2));
    let health = handle.health();
    (dir, guard, flushed, health)
}

/// A link planted while the trail runs, where the writer opens its next
/// file, is never written through: the open is refused (`O_NOFOLLOW`), the
/// failure is visible (no flush succeeds, the health says why), and the
/// file it points to stays as it was. (Before, the writer appended the
/// trail's records to it.)
#[test]
fn a_symlink_planted_while_running_is_never_written_through() {
    let outside = common::tempdir();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let (_dir, guard, flushed, health) = plant_then_rotate(|dir| {
        for k in 1..=3 {
            let link = dir.join(format!("audit_{k:06}.jsonl"));
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
    });
    assert!(!flushed, "a flush succeeded through a planted link");
    assert!(
        !health.healthy
            && health
                .reasons
                .iter()
                .any(|r| r.contains("audit_000001.jsonl")),
        "{health:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    drop(guard);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A FIFO named like an audit file is refused at start, naming it.
#[test]
fn a_fifo_named_like_an_audit_file_is_refused_at_start() {
    let dir = common::tempdir();
    mkfifo(&dir.path().join("audit.jsonl"));
    let sink = FileSink::new(dir.path()).rotation(tracing_audit::file::Rotation::NEVER);
    let err = AuditLayer::builder()
        .file(sink)
        .build::<tracing_subscriber::Registry>()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("audit.jsonl") && text.contains("not a regular file"),
        "{text}"
    );
}

/// A FIFO planted where the writer opens its next file neither takes the
/// trail's records nor blocks the worker (its open would wait for a reader,
/// its writes once its buffer is full): refused as a storage failure that
/// the health names, and the pipeline still stops within its grace.
#[test]
fn a_fifo_planted_while_running_is_refused_without_blocking() {
    let (_dir, guard, flushed, health) =
        plant_then_rotate(|dir| mkfifo(&dir.join("audit_000001.jsonl")));
    assert!(!flushed);
    assert!(
        !health.healthy
            && health
                .reasons
                .iter()
                .any(|r| r.contains("audit_000001.jsonl") && r.contains("not a regular file")),
        "{health:?}"
    );
    let started = std::time::Instant::now();
    drop(guard);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
