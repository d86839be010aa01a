//! Helpers shared by the integration tests: real temp dirs, reading trails back.
#![allow(dead_code, unreachable_pub)]

pub mod rsyslog;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every line of every audit file in `dir`, in file-name order, parsed.
pub fn read_trail(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    each_record(dir, |r| out.push(r));
    out
}

/// Hands every line of every audit file in `dir`, in file-name order, to
/// `f`, parsed, one at a time: a large trail is never held whole (a million
/// records as JSON values take gigabytes).
pub fn each_record(dir: &Path, mut f: impl FnMut(Value)) {
    use std::io::BufRead;
    for path in audit_files(dir) {
        let mut lines = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let mut line = Vec::new();
        loop {
            line.clear();
            if lines.read_until(b'\n', &mut line).unwrap() == 0 {
                break;
            }
            assert!(
                line.ends_with(b"\n"),
                "{} does not end with a newline",
                path.display()
            );
            let text = &line[..line.len() - 1];
            f(serde_json::from_slice(text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(text))));
        }
    }
}

/// Bytes an unprivileged writer may still use on the file system that
/// holds `dir`.
#[allow(clippy::useless_conversion)] // u64 on 64-bit Linux, narrower elsewhere
pub fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the struct it is given; the path is a C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", dir.display());
    u64::from(st.f_bavail) * u64::from(st.f_frsize)
}

/// Fails at once, saying so, when the file system under `dir` has less
/// than `need` bytes free for a test that writes about half of that. On a
/// full disk the default `OnError::Block` makes callers wait for space,
/// so such a test would otherwise wait until CI's time limit, silently.
pub fn require_free_space(dir: &Path, need: u64) {
    let free = free_bytes(dir);
    assert!(
        free >= need,
        "this test needs {} MB free under {}, the file system has {} MB",
        need >> 20,
        dir.display(),
        free >> 20
    );
}

/// Panics, with what the handle says and the free space, when the audit
/// storage is failing: a load test on a healthy disk never sees that, and
/// its callers would wait for space forever.
pub fn assert_storage_healthy(handle: &tracing_audit::AuditHandle, dir: &Path) {
    let stats = handle.stats();
    assert!(
        !stats.storage_failing,
        "the audit storage failed under load ({} MB free under {}): {:?}",
        free_bytes(dir) >> 20,
        dir.display(),
        handle.health().reasons
    );
}

/// Every line of every audit file, unparsed.
pub fn raw_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in audit_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} does not end with a newline",
            f.display()
        );
        out.extend(text.lines().map(str::to_owned));
    }
    out
}

/// The records of a trail left by processes killed with SIGKILL, and
/// whether its newest file ends in a torn line. Linux stops a `write` at a
/// page boundary when a fatal signal is pending, so a kill can leave part of
/// a line; only the newest file may end that way. Torn pieces (a restart
/// ends them with a newline and names them in its `audit_started`) are left
/// out; `verify` is what proves they are only that.
pub fn read_trail_after_kill(dir: &Path) -> (Vec<Value>, bool) {
    let files = audit_files(dir);
    let mut out = Vec::new();
    let mut torn = false;
    for (n, f) in files.iter().enumerate() {
        let mut text = std::fs::read_to_string(f).unwrap();
        if !text.is_empty() && !text.ends_with('\n') {
            assert_eq!(
                n + 1,
                files.len(),
                "{} does not end with a newline and is not the newest file",
                f.display()
            );
            let end = text.rfind('\n').map_or(0, |i| i + 1);
            text.truncate(end);
            torn = true;
        }
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    (out, torn)
}

/// The audit files in `dir` (regular `audit*.jsonl` files), sorted.
pub fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("audit")
                && n.ends_with("jsonl")
                && p.symlink_metadata().unwrap().is_file()
        })
        .collect();
    files.sort();
    files
}

/// Records written by the application (not the crate's own bookkeeping).
pub fn app_records(dir: &Path) -> Vec<Value> {
    read_trail(dir)
        .into_iter()
        .filter(|r| {
            !matches!(
                r["event_type"].as_str(),
                Some(
                    "audit_started"
                        | "audit_stopped"
                        | "records_lost"
                        | "audit_file_opened"
                        | "audit_config_warning"
                )
            )
        })
        .collect()
}

/// The records of a trail whose writer was killed and then restarted. A
/// kill can cut a line short (see [`read_trail_after_kill`]); the restart
/// ends it with a newline and names it in its `audit_started` (`torn_tail`),
/// so it stays in the file, not a record. `verify` must accept each such
/// line as exactly that, and fails on any other line that is not a record.
pub fn read_trail_after_restart(dir: &Path) -> Vec<Value> {
    let report = tracing_audit::verify(dir, None).unwrap();
    assert!(report.is_ok(), "{report:?}");
    read_trail_lenient(dir)
}

/// Like [`read_trail`] but skips lines that are not JSON (torn fragments).
pub fn read_trail_lenient(dir: &Path) -> Vec<Value> {
    raw_lines(dir)
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Re-seals an edited line (unkeyed SHA-256) so that it links to `prev`,
/// as anyone can for an unkeyed trail: the hash covers the line's bytes up
/// to and including the comma before `"hash"`.
pub fn reseal(line: &str, prev: &str) -> String {
    use sha2::{Digest, Sha256};
    let prev_hash = &prev[prev.len() - 66..prev.len() - 2];
    let cut = line.rfind(",\"prev_hash\":\"").unwrap();
    let mut out = format!("{},\"prev_hash\":\"{prev_hash}\",", &line[..cut]);
    let digest = Sha256::digest(out.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    out.push_str(&format!("\"hash\":\"{hex}\"}}"));
    out
}

/// A private temporary directory (`0700`), as an audit directory should be:
/// the crate reports and tightens a directory other users can enter, which
/// would add an `audit_config_warning` record to every trail.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// Exactly `every` records (the application's and the trail's own alike)
/// before each checkpoint not at stop, never more than `every` without
/// one, and each checkpoint names the record right before it.
pub fn assert_checkpoints_every(recs: &[serde_json::Value], every: u64) {
    let mut since = 0;
    for r in recs {
        if r["event_type"] == "checkpoint" {
            if r["details"]["at_stop"] != true {
                assert_eq!(since, every, "a checkpoint after {since} records: {r}");
            }
            since = 0;
        } else {
            since += 1;
            assert!(since <= every, "{since} records without a checkpoint: {r}");
        }
    }
    for w in recs.windows(2) {
        if w[1]["event_type"] == "checkpoint" {
            assert_eq!(w[1]["details"]["seq"], w[0]["seq"]);
            assert_eq!(w[1]["details"]["hash"], w[0]["hash"]);
            assert_eq!(w[1]["details"]["chain_id"], w[0]["chain_id"]);
        }
    }
}
