//! The fault suite: real storage faults, real crash states, real processes.
//!
//! Tests that need root (tmpfs and loop mounts, a second user) print why
//! they skip when not root; CI runs as root. Every mount, loop device and
//! child a test starts is cleaned up by a guard, also when it fails.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing_audit::{trail::AuditTrail, verify, AuditLayer, FileSink};
use tracing_subscriber::layer::SubscriberExt;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (mounts a tmpfs / loop device or switches user); CI runs it as root");
            return;
        }
    };
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A mount that is undone on drop (lazily, so a failing test still cleans up).
struct Mount {
    at: PathBuf,
    loopdev: Option<String>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let plain = Command::new("umount")
            .arg(&self.at)
            .stderr(Stdio::null())
            .status();
        if !plain.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
        if let Some(dev) = &self.loopdev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

fn tmpfs(at: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(at).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size={size} tmpfs {}",
        at.display()
    ));
    Mount {
        at: at.to_path_buf(),
        loopdev: None,
    }
}

/// Fills the file system holding `file` (dd stops at ENOSPC).
fn fill(file: &Path, block: &str) {
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg(format!("bs={block}"))
        .stderr(Stdio::null())
        .status();
}

/// Kills and reaps a child on drop.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ENV: &str = "TRACING_AUDIT_FAULT_CHILD_DIR";

/// Threads of `durable_child` that write at once.
const CHILD_THREADS_ENV: &str = "TRACING_AUDIT_FAULT_CHILD_THREADS";

/// Record numbers of `durable_child`'s thread `t` start at `t * THREAD_BASE`.
const THREAD_BASE: u64 = 1_000_000_000;

/// The child: writes durable records and prints `acked N` after each one
/// returned; stops cleanly after `TRACING_AUDIT_FAULT_CHILD_SECS`. With
/// `TRACING_AUDIT_FAULT_CHILD_THREADS` > 1, that many threads write at once
/// (a sync then answers several waiters, through the worker's
/// acknowledgement thread).
#[test]
fn durable_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let secs: u64 = std::env::var("TRACING_AUDIT_FAULT_CHILD_SECS")
        .unwrap()
        .parse()
        .unwrap();
    let threads: u64 = std::env::var(CHILD_THREADS_ENV)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let (audit, guard) = AuditLayer::builder()
        .file(&dir)
        .shutdown_grace(Duration::from_secs(2))
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let start = Instant::now();
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let d = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    let pad = "x".repeat(2000);
                    let mut i = t * THREAD_BASE;
                    while start.elapsed() < Duration::from_secs(secs) {
                        tracing::info!(
                            audit.event = "payment",
                            audit.risk = "high",
                            i,
                            pad = pad.as_str()
                        );
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "acked {i}").unwrap();
                        out.flush().unwrap();
                        i += 1;
                    }
                })
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    drop(dispatch);
    drop(guard);
}

/// ext4 on a loop device backed by an image on a small tmpfs; `punch`
/// makes the image's free blocks holes (journal and metadata backed), so
/// that filling the tmpfs fails data write-back while ext4 stays usable.
fn ext4_on_thin_image(base: &Path, punch: bool) -> (Mount, Mount, PathBuf) {
    let backing = tmpfs(&base.join("backing"), "48m");
    let img = base.join("backing/img");
    sh(&format!("truncate -s 32M {}", img.display()));
    sh(&format!(
        "mkfs.ext4 -q -F -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 {}",
        img.display()
    ));
    if punch {
        sh(&format!("fallocate -l 32M {}", img.display()));
        let info = sh(&format!("dumpe2fs {} 2>/dev/null", img.display()));
        let bs: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for l in info.lines() {
            // Per group: "  Free blocks: a-b, c-d" (the summary line has no range).
            let Some(ranges) = l.strip_prefix("  Free blocks: ") else {
                continue;
            };
            for r in ranges.split(", ").filter(|r| !r.is_empty()) {
                let (a, b) = match r.split_once('-') {
                    Some((a, b)) => (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                };
                sh(&format!(
                    "fallocate --punch-hole -o {} -l {} {}",
                    a * bs,
                    (b - a + 1) * bs,
                    img.display()
                ));
            }
        }
    }
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let dev = sh(&format!("losetup -f --show {}", img.display()))
        .trim()
        .to_owned();
    one_page_requests(&dev);
    sh(&format!("mount -t ext4 {dev} {}", mnt.display()));
    let fs = Mount {
        at: mnt.clone(),
        loopdev: Some(dev),
    };
    (backing, fs, img)
}

/// Limits the loop device `dev` to requests of one page, so that it can
/// no longer confirm data it did not store.
///
/// A loop device completes a write request whose write to the backing
/// file came back short as a success (`lo_complete_rq` ends every request
/// that is not a read with `BLK_STS_OK` unless the result is negative).
/// Over a tmpfs that fills up, a request of several pages whose last ones
/// find no room is confirmed whole, and those pages read back as zeros:
/// storage that lies about a write, which no `fdatasync` can detect. A
/// 4 KiB request is all or nothing on tmpfs (a page is allocated or the
/// write fails), so with one page per request a failed write is reported
/// as the error it is. Checked by hand on this kernel: a 32 KiB `O_DIRECT`
/// write to the loop device with 8 KiB free on its tmpfs returned 32 768
/// with two pages stored; with one-page requests it fails with `ENOSPC`.
fn one_page_requests(dev: &str) {
    let name = dev.trim_start_matches("/dev/");
    let knob = format!("/sys/block/{name}/queue/max_sectors_kb");
    std::fs::write(&knob, "4").unwrap_or_else(|e| panic!("{knob}: {e}"));
    assert_eq!(
        std::fs::read_to_string(&knob).unwrap().trim(),
        "4",
        "{knob}"
    );
}

/// A running `durable_child`: what it acknowledged so far, read from its
/// stdout as it goes.
struct DurableChild {
    child: Reap,
    acked: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    reader: std::thread::JoinHandle<()>,
}

impl DurableChild {
    fn start(dir: &Path, run_secs: u64, threads: u64) -> Self {
        let mut child = Reap(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "durable_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir)
                .env("TRACING_AUDIT_FAULT_CHILD_SECS", run_secs.to_string())
                .env(CHILD_THREADS_ENV, threads.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.0.stdout.take().unwrap();
        let sink = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("acked ") {
                    sink.lock().unwrap().push(n.parse::<u64>().unwrap());
                }
            }
        });
        DurableChild {
            child,
            acked,
            reader,
        }
    }

    fn acked_so_far(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits up to `wait` for the child to stop by itself, kills it if it
    /// has not (a child still waiting on a file system that never recovers
    /// ends its stderr only when it dies); returns what it acknowledged and
    /// its stderr.
    fn finish(mut self, wait: Duration) -> (Vec<u64>, String) {
        let deadline = Instant::now() + wait;
        while self.child.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let stderr = self.child.0.stderr.take();
        drop(self.child);
        self.reader.join().unwrap();
        let mut err = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        eprintln!("child stderr: {err}");
        let acked = self.acked.lock().unwrap().clone();
        (acked, err)
    }
}

/// Fills the backing tmpfs for `hold`, then frees it, while a child writes
/// durable records from `threads` threads; returns the acknowledged numbers.
fn run_child_through_outage(
    dir: &Path,
    filler: &Path,
    hold: Duration,
    run_secs: u64,
    threads: u64,
) -> Vec<u64> {
    let child = DurableChild::start(dir, run_secs, threads);
    std::thread::sleep(Duration::from_millis(700));
    // Fill the tmpfs under the image.
    fill(filler, "1M");
    std::thread::sleep(hold);
    std::fs::remove_file(filler).unwrap();
    child.finish(Duration::from_secs(run_secs + 8)).0
}

/// Fills the backing tmpfs while a child writes durable records from
/// `threads` threads, kills it (SIGKILL) in the middle of the outage, and
/// has every page still dirty written out (and fail) before the store
/// gets room again, so nothing the child wrote can reach the disk after
/// it died. Returns the acknowledged numbers.
fn run_child_killed_in_outage(dir: &Path, filler: &Path, threads: u64) -> Vec<u64> {
    let child = DurableChild::start(dir, 60, threads);
    // Long enough for the child to start writing, short of filling the
    // file system itself.
    std::thread::sleep(Duration::from_millis(400));
    fill(filler, "1M");
    // Syncs fail meanwhile: the callers must wait, not be answered.
    std::thread::sleep(Duration::from_millis(1500));
    let (acked, _) = child.finish(Duration::ZERO);
    sh("sync");
    std::fs::remove_file(filler).unwrap();
    acked
}

/// For a failure: what each line that is not JSON is made of (its length,
/// NUL bytes, and where record heads start in it), to tell a hole of zeros
/// from two records run together.
fn describe_bad_lines(dir: &Path) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let mut at = 0usize;
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if !line.is_empty() && serde_json::from_slice::<serde_json::Value>(line).is_err() {
                let heads: Vec<usize> = line
                    .windows(10)
                    .enumerate()
                    .filter(|(_, w)| *w == b"{\"schema\":")
                    .map(|(i, _)| i)
                    .collect();
                let nul = line.iter().filter(|b| **b == 0).count();
                let first_nul = line.iter().position(|b| *b == 0);
                eprintln!(
                    "{}:{}: offset {at}, {} bytes, {nul} NUL (first at {first_nul:?}), record heads at {heads:?}",
                    f.display(),
                    n + 1,
                    line.len()
                );
            }
            at += line.len() + 1;
        }
    }
}

/// Mounts the image again and checks that every acknowledged record is
/// there. With `reported_loss_before: Some(n)`, a loss is accepted only
/// where the storage itself lost data after confirming a sync: the trail
/// must say so (an `audit_storage_lost` record), and only records among
/// the first `n` acknowledged (before the fault) may be missing, no more
/// than the bytes it reports can hold.
fn remount_and_check(
    fs: Mount,
    img: &Path,
    base: &Path,
    acked: &[u64],
    fsck: bool,
    reported_loss_before: Option<usize>,
) {
    let mnt = fs.at.clone();
    drop(fs);
    std::thread::sleep(Duration::from_millis(200));
    if fsck {
        let _ = Command::new("e2fsck").arg("-fy").arg(img).output();
    }
    let dev = sh(&format!("losetup -f --show {}", img.display()))
        .trim()
        .to_owned();
    one_page_requests(&dev);
    sh(&format!("mount -t ext4 {dev} {}", mnt.display()));
    let _fs = Mount {
        at: mnt.clone(),
        loopdev: Some(dev),
    };
    let dir = mnt.join("audit");
    for e in AuditTrail::open(&dir)
        .unwrap()
        .records()
        .filter_map(Result::err)
        .take(5)
    {
        eprintln!("not a record: {e}");
    }
    let records: Vec<_> = AuditTrail::open(&dir)
        .unwrap()
        .records()
        .filter_map(Result::ok)
        .collect();
    let found: std::collections::HashSet<u64> = records
        .iter()
        .filter(|r| r.event_type.as_deref() == Some("payment"))
        .filter_map(|r| r.details["i"].as_u64())
        .collect();
    let storage_lost: u64 = records
        .iter()
        .filter(|r| r.event_type.as_deref() == Some("audit_storage_lost"))
        .filter_map(|r| r.details["bytes"].as_u64())
        .sum();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| !found.contains(i))
        .collect();
    eprintln!(
        "acknowledged {} durable records, found {} after a fresh mount, lost {}",
        acked.len(),
        found.len(),
        lost.len()
    );
    if !lost.is_empty() {
        describe_bad_lines(&dir);
    }
    if let (Some(n), false) = (reported_loss_before, lost.is_empty()) {
        eprintln!(
            "the trail reports {storage_lost} bytes lost by the storage after a confirmed sync"
        );
        let before: std::collections::HashSet<u64> =
            acked[..n.min(acked.len())].iter().copied().collect();
        assert!(
            storage_lost > 0,
            "acknowledged and lost, and not reported: {lost:?}"
        );
        assert!(
            lost.iter().all(|i| before.contains(i)),
            "lost records acknowledged after the fault: {lost:?}"
        );
        // Each record is over 2000 bytes (its padding).
        assert!(
            lost.len() as u64 <= storage_lost / 2000 + 1,
            "{} records lost, more than {storage_lost} reported bytes hold",
            lost.len()
        );
        return;
    }
    assert!(
        lost.is_empty(),
        "acknowledged and lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    // A start and stop resumes whatever state was left, and the trail verifies.
    let (_, guard) = AuditLayer::builder()
        .file(&dir)
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    drop(guard);
    let r = verify(&dir, None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    let _ = base;
}

/// ext4 on a thin image whose free blocks are holes: `child` runs a
/// durable child on the audit directory (given it and the filler's path on
/// the backing tmpfs) and returns what it acknowledged, which must be more
/// than 100 records and all found after a fresh mount. Returns them.
fn acknowledged_survive_a_fresh_mount(child: impl FnOnce(&Path, &Path) -> Vec<u64>) -> Vec<u64> {
    let base = tempfile::tempdir().unwrap();
    let (backing, fs, img) = ext4_on_thin_image(base.path(), true);
    let acked = child(&fs.at.join("audit"), &backing.at.join("filler"));
    assert!(
        acked.len() > 100,
        "the child wrote too little: {}",
        acked.len()
    );
    remount_and_check(fs, &img, base.path(), &acked, false, None);
    drop(backing);
    acked
}

#[test]
fn failed_write_back_never_acknowledges_a_lost_record() {
    need_root!();
    acknowledged_survive_a_fresh_mount(|dir, filler| {
        run_child_through_outage(dir, filler, Duration::from_secs(4), 8, 1)
    });
}

/// The same outage with four threads writing durable records at once:
/// most syncs answer several waiters, which the worker hands to its
/// acknowledgement thread. No record may be acknowledged that a fresh mount
/// does not find.
#[test]
fn failed_write_back_never_acknowledges_a_lost_record_from_many_threads() {
    need_root!();
    let acked = acknowledged_survive_a_fresh_mount(|dir, filler| {
        run_child_through_outage(dir, filler, Duration::from_secs(2), 4, 4)
    });
    let writers: std::collections::HashSet<u64> = acked.iter().map(|i| i / THREAD_BASE).collect();
    assert_eq!(writers.len(), 4, "not every thread was acknowledged");
}

/// Four threads write durable records; the store fills and the process is
/// killed while it is full. Every record acknowledged before the kill is
/// found after a fresh mount: none was answered by a sync that failed
/// (whoever answers it, the worker or its acknowledgement thread).
#[test]
fn killed_while_the_disk_fails_no_acknowledged_record_is_lost() {
    need_root!();
    acknowledged_survive_a_fresh_mount(|dir, filler| run_child_killed_in_outage(dir, filler, 4));
}

/// Writeback the writer starts early (past `WRITEBACK_EVERY`, before any
/// sync) fails while the storage is full; the storage then recovers. The
/// next `fdatasync` must still report that failure, so the writer rewrites
/// and the records reach the disk. Were the early writeback to wait on its
/// I/O (`SYNC_FILE_RANGE_WAIT_AFTER`), it would take the error, the sync
/// would succeed over pages the kernel had given up on, and the records
/// would be missing after a fresh mount.
#[test]
fn an_early_writeback_failure_is_still_seen_by_the_sync() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let (backing, fs, img) = ext4_on_thin_image(base.path(), true);
    let dir = fs.at.join("audit");
    let (audit, guard) = AuditLayer::builder()
        .file(&dir)
        // No sync until the durable record asks for one.
        .sync_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = guard.handle();
    let filler = backing.at.join("filler");
    let big = "y".repeat(10_000);
    let d = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    tracing::dispatcher::with_default(&d, || {
        tracing::info!(audit.event = "before");
        std::thread::sleep(Duration::from_millis(300));
        fill(&filler, "1M");
        // ~1.2 MB of ordinary records: written, and their writeback started.
        for i in 0..120u64 {
            tracing::info!(audit.event = "bulk", i, pad = big.as_str());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.stats().records_written < 122 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(handle.stats().sync_errors, 0, "no sync yet");
        // Let the writeback fail, then give the storage room again.
        std::thread::sleep(Duration::from_secs(2));
        std::fs::remove_file(&filler).unwrap();
        tracing::info!(audit.event = "payment", audit.risk = "high", i = 0u64);
    });
    let st = handle.stats();
    drop(guard);
    eprintln!(
        "sync errors {}, write errors {}",
        st.sync_errors, st.write_errors
    );
    assert!(
        st.sync_errors >= 1,
        "the failed early writeback was never reported by a sync"
    );
    // The durable record is there after a fresh mount, and the trail
    // (the bulk records included) verifies after a restart.
    remount_and_check(fs, &img, base.path(), &[0], false, None);
    drop(backing);
}

#[test]
fn journal_abort_loses_no_acknowledged_record() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let (backing, fs, img) = ext4_on_thin_image(base.path(), false);
    let dir = fs.at.join("audit");
    let acked = run_child_through_outage(
        &dir,
        &backing.at.join("filler"),
        Duration::from_secs(3),
        6,
        1,
    );
    assert!(!acked.is_empty(), "the child acknowledged nothing");
    remount_and_check(fs, &img, base.path(), &acked, true, None);
    drop(backing);
}

#[test]
fn disk_full_across_a_rotation_never_splits_a_record() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let m = tmpfs(&base.path().join("t"), "3m");
    let dir = m.at.join("audit");
    // Start a couple of seconds before a minute boundary, fill the disk,
    // and free it after the minute turned.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_boundary = 60 - now % 60;
    if to_boundary > 4 {
        std::thread::sleep(Duration::from_secs(to_boundary - 4));
    }
    let sink = FileSink::new(&dir).rotation(tracing_appender::rolling::Rotation::MINUTELY);
    let (audit, guard) = AuditLayer::builder()
        .file(sink)
        .shutdown_grace(Duration::from_secs(30))
        .build()
        .unwrap();
    let filler = m.at.join("filler");
    let emitter = std::thread::spawn(move || {
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            // About 1.6 MB in all: it fits once the filler is gone.
            for i in 0..4_000u64 {
                tracing::info!(audit.event = "bulk", i);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
    });
    std::thread::sleep(Duration::from_millis(300));
    fill(&filler, "64k");
    std::thread::sleep(Duration::from_secs(6)); // the minute turns meanwhile
    std::fs::remove_file(&filler).unwrap();
    emitter.join().unwrap();
    let stats = guard.stats();
    drop(guard);
    assert!(stats.write_errors > 0, "the disk never filled: {stats:?}");
    // Keep the trail small enough to fit: every line of every file is a
    // whole record, and every record is there exactly once.
    let lines = common::raw_lines(&dir);
    let mut seen = std::collections::BTreeSet::new();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a split record ({e}): {l:.80}"));
        if v["event_type"] == "bulk" {
            assert!(seen.insert(v["details"]["i"].as_u64().unwrap()));
        }
    }
    assert_eq!(seen.len(), 4_000);
    assert!(common::audit_files(&dir).len() >= 2, "no rotation happened");
    let r = verify(&dir, None).unwrap();
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn files_are_never_readable_by_another_user() {
    need_root!();
    // A directory that already exists open to others, owned by another
    // user (so the crate cannot tighten it): only the files' own mode keeps
    // that user out, from the moment each file exists.
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = base.path().join("audit");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    // A process of user `nobody` opening every file it sees, all along.
    let watcher = Reap(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while true; do for f in {0}/*; do [ -e \"$f\" ] && cat \"$f\" >/dev/null 2>&1 && echo \"opened $f\"; done; done",
                dir.display()
            ))
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let sink = FileSink::new(&dir).rotation(tracing_appender::rolling::Rotation::MINUTELY);
    let (audit, guard) = AuditLayer::builder().file(sink).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..200 {
            tracing::info!(audit.event = "secret", i);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    drop(guard);
    let mut watcher = watcher;
    let _ = watcher.0.kill();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut watcher.0.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.is_empty(), "another user opened: {out}");
    let files = common::audit_files(&dir);
    assert!(!files.is_empty());
    for f in files {
        let m = std::fs::metadata(&f).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&m) & 0o777, 0o600);
    }
    let warned = common::read_trail(&dir).iter().any(|r| {
        r["event_type"] == "audit_config_warning"
            && r["message"].as_str().unwrap().contains("chmod 700")
    });
    assert!(warned, "the open directory is reported in the trail");
}

#[test]
fn a_full_disk_does_not_freeze_a_tokio_runtime() {
    need_root!();
    for durable in [false, true] {
        let base = tempfile::tempdir().unwrap();
        let m = tmpfs(&base.path().join("t"), "3m");
        let dir = m.at.join("audit");
        let (audit, guard) = AuditLayer::builder()
            .file(&dir)
            .queue_capacity(64)
            .shutdown_grace(Duration::from_secs(2))
            .build()
            .unwrap();
        fill(&m.at.join("filler"), "64k");
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let longest = rt.block_on(async move {
            for t in 0..8u64 {
                let d = dispatch.clone();
                let stop = stop2.clone();
                tokio::spawn(async move {
                    let pad = "z".repeat(400);
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        tracing::dispatcher::with_default(&d, || {
                            if durable {
                                tracing::error!(audit.event = "req", audit.risk = "critical", t, i);
                            } else {
                                tracing::info!(audit.event = "req", t, i, pad = pad.as_str());
                            }
                        });
                        i += 1;
                        tokio::task::yield_now().await;
                    }
                });
            }
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("durable={durable}: the health task's longest gap with a full disk: {longest:?}");
        assert!(
            guard.stats().storage_failing || guard.stats().write_errors > 0,
            "the disk never filled"
        );
        // Free the disk so the blocked tasks finish, then shut down.
        std::fs::remove_file(m.at.join("filler")).unwrap();
        rt.shutdown_timeout(Duration::from_secs(5));
        drop(guard);
        assert!(
            longest < Duration::from_millis(500),
            "durable={durable}: {longest:?}"
        );
    }
}

#[test]
fn dropping_the_guard_while_the_disk_fails_is_bounded_and_counted() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let m = tmpfs(&base.path().join("t"), "3m");
    let dir = m.at.join("audit");
    let grace = Duration::from_secs(2);
    let (audit, guard) = AuditLayer::builder()
        .file(&dir)
        .shutdown_grace(grace)
        .build()
        .unwrap();
    fill(&m.at.join("filler"), "64k");
    let pad = "w".repeat(2000);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..500u64 {
            tracing::info!(audit.event = "doomed", i, pad = pad.as_str());
        }
    });
    let handle = guard.handle();
    let t0 = Instant::now();
    drop(guard);
    let took = t0.elapsed();
    let stats = handle.stats();
    eprintln!("shutdown with a full disk took {took:?}: {stats:?}");
    assert!(took < grace + Duration::from_secs(2), "took {took:?}");
    assert!(stats.dropped_unwritten > 0, "{stats:?}");
    // Every record is on disk or counted as unwritten.
    std::fs::remove_file(m.at.join("filler")).unwrap();
    let on_disk = AuditTrail::open(&dir)
        .unwrap()
        .records()
        .filter_map(Result::ok)
        .filter(|r| r.event_type.as_deref() == Some("doomed"))
        .count() as u64;
    assert!(
        on_disk + stats.dropped_unwritten >= 500,
        "{on_disk} + {stats:?}"
    );
}

#[test]
fn the_space_watermark_is_crossed_both_ways_once_each() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let m = tmpfs(&base.path().join("t"), "8m");
    let dir = m.at.join("audit");
    let sink = FileSink::new(&dir).space_left(tracing_audit::file::SpaceLeft::Bytes(4 << 20));
    let (audit, guard) = AuditLayer::builder().file(sink).build().unwrap();
    let wait_for = |want: bool| {
        let t0 = Instant::now();
        while guard.stats().space_low != want {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "space_low never became {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!guard.stats().space_low, "8 MB free, 4 MB watermark");
    // 5 MB of filler: 3 MB left, below the watermark.
    std::fs::write(m.at.join("filler"), vec![0u8; 5 << 20]).unwrap();
    wait_for(true);
    assert!(!guard.handle().health().healthy);
    std::fs::remove_file(m.at.join("filler")).unwrap();
    wait_for(false);
    assert!(guard.handle().health().healthy);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "after");
    });
    drop(guard);
    let all = common::read_trail(&dir);
    let count = |t: &str| all.iter().filter(|r| r["event_type"] == t).count();
    assert_eq!(
        (count("disk_space_low"), count("disk_space_recovered")),
        (1, 1)
    );
    assert!(verify(&dir, None).unwrap().is_ok());
}

/// `FS_IOC_SHUTDOWN` (what `xfs_io -x -c shutdown` sends; ext4 has it too)
/// with `EXT4_GOING_FLAGS_NOLOGFLUSH`: from now on every write and sync on
/// the file system returns EIO, and what the journal had not committed is
/// gone, as after a power cut.
fn shut_down(mnt: &Path) {
    const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
    const NOLOGFLUSH: u32 = 2;
    let dir = std::fs::File::open(mnt).unwrap();
    let flags = NOLOGFLUSH;
    // SAFETY: a valid descriptor and a pointer to a u32, as the ioctl takes.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            FS_IOC_SHUTDOWN,
            &flags as *const u32,
        )
    };
    assert_eq!(rc, 0, "shutdown ioctl: {}", std::io::Error::last_os_error());
}

#[test]
fn an_io_error_is_seen_and_the_writer_goes_on_after_a_remount() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let (backing, mut fs, _) = ext4_on_thin_image(base.path(), false);
    let mnt = fs.at.clone();
    let dir = mnt.join("audit");
    let child = DurableChild::start(&dir, 6, 1);
    let count = || child.acked_so_far();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(count() > 20, "the child wrote too little before the fault");
    shut_down(&mnt);
    std::thread::sleep(Duration::from_millis(300));
    let during = count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(),
        during,
        "a durable record was acknowledged on a dead file system"
    );
    // Mount what the file system holds now, as a new one at the same place.
    // The dead mount goes lazily (the child still holds descriptors on it),
    // and it is torn down only when they close, writing its stale metadata
    // to its device; so the new mount is of a copy of the image, taken now.
    sh(&format!("umount -l {}", mnt.display()));
    let old_dev = fs.loopdev.take();
    std::mem::forget(fs);
    let img = base.path().join("img-after-shutdown");
    sh(&format!(
        "cp --sparse=always {} {}",
        backing.at.join("img").display(),
        img.display()
    ));
    let dev = sh(&format!("losetup -f --show {}", img.display()))
        .trim()
        .to_owned();
    one_page_requests(&dev);
    sh(&format!("mount -t ext4 {dev} {}", mnt.display()));
    let fs = Mount {
        at: mnt.clone(),
        loopdev: Some(dev),
    };
    // The writer reopens the file by path and goes on by itself.
    let (acked, err) = child.finish(Duration::from_secs(15));
    if let Some(dev) = old_dev {
        let _ = Command::new("losetup").arg("-d").arg(dev).status();
    }
    assert!(
        acked.len() > during + 20,
        "no durable record after the remount: {} then {}",
        during,
        acked.len()
    );
    // A shut-down ext4 answers EIO; one that went read-only first answers
    // EROFS. Which one the writer meets first depends on timing (EROFS in
    // 1 of 4 runs of this test with two CPU hogs).
    let failures = err
        .lines()
        .filter(|l| l.contains("Input/output error") || l.contains("Read-only file system"))
        .count();
    assert!(
        (1..=3).contains(&failures),
        "the error said once per episode, not per retry: {failures} lines:\n{err}"
    );
    remount_and_check(fs, &img, base.path(), &acked, false, Some(during));
    drop(backing);
}

/// `OnError::Drop` on a full disk: the application never waits for the
/// disk; every record is either in the trail or counted, exactly; a
/// `records_lost` record gives the count once writing works again; durable
/// records are never dropped (their callers wait); the chain stays whole.
#[test]
fn drop_mode_on_a_full_disk_never_blocks_and_counts_exactly() {
    need_root!();
    let base = tempfile::tempdir().unwrap();
    let m = tmpfs(&base.path().join("t"), "3m");
    let dir = m.at.join("audit");
    // Keyed, with a checkpoint every 20 records: a checkpoint in a dropped
    // batch is dropped with it, and the count goes back with the chain.
    let keys = common::tempdir();
    let (key, public) =
        tracing_audit::record::checkpoint::keygen(keys.path().join("signer")).unwrap();
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(&dir).on_error(tracing_audit::file::OnError::Drop))
        .queue_capacity(1024)
        .signing_key_file(&key)
        .checkpoint_every(20, Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = guard.handle();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(audit));
    let emit = |from: u64, to: u64| {
        let d = dispatch.clone();
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&d, || {
                for i in from..to {
                    tracing::info!(audit.event = "view", i, pad = "x".repeat(300).as_str());
                }
            })
        })
    };
    emit(0, 1000).join().unwrap();
    // Written and synced before the disk fills: a batch cut back after a
    // failed write would give back the room it had taken.
    assert!(handle.flush(), "{:?}", handle.stats());
    fill(&m.at.join("filler"), "64k");
    // The disk is full: 50 000 more records, through a queue of 1 024,
    // must not wait for it (in block mode this never returns).
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dispatch.clone();
    std::thread::spawn(move || {
        tracing::dispatcher::with_default(&d, || {
            for i in 1000..51_000u64 {
                tracing::info!(audit.event = "view", i, pad = "x".repeat(300).as_str());
            }
        });
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("drop mode blocked the application on a full disk");
    // A durable record waits for the disk instead of being dropped.
    let d = dispatch.clone();
    let durable = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&d, || {
            // Larger than any slack left in the file's last page.
            let pad = "p".repeat(7000);
            tracing::info!(
                audit.event = "payment",
                audit.risk = "high",
                pad = pad.as_str()
            );
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !durable.is_finished(),
        "a durable record returned on a full disk"
    );
    assert!(!handle.health().healthy, "{:?}", handle.health());
    std::fs::remove_file(m.at.join("filler")).unwrap();
    durable.join().unwrap();
    emit(51_000, 51_100).join().unwrap();
    drop(dispatch);
    drop(guard);
    let stats = handle.stats();
    let all = common::read_trail(&dir);
    let views = all.iter().filter(|r| r["event_type"] == "view").count() as u64;
    assert!(stats.dropped_write_error > 0, "{stats:?}");
    assert_eq!(
        views + stats.dropped_write_error,
        51_100,
        "written + counted = emitted: {stats:?}"
    );
    assert_eq!(stats.records_dropped, stats.dropped_write_error);
    assert_eq!(
        all.iter().filter(|r| r["event_type"] == "payment").count(),
        1
    );
    let lost: u64 = all
        .iter()
        .filter(|r| r["event_type"] == "records_lost")
        .map(|r| r["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, stats.dropped_write_error, "records_lost says it all");
    let r = verify(&dir, None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    // Checkpoints exactly every 20 records of what was written, and the
    // whole trail signed.
    common::assert_checkpoints_every(&all, 20);
    let key = tracing_audit::record::checkpoint::CheckpointPublicKey::read(&public).unwrap();
    let opts = tracing_audit::trail::VerifyOptions::default().checkpoint_key(key);
    let r = tracing_audit::trail::verify_opts(&FileSink::new(&dir), None, &opts).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.unverified_tail, Some(0), "{r:?}");
}
