//! The `tracing-audit` command on real trails: exit codes and output.
#![cfg(feature = "cli")]

mod common;

use std::process::{Command, Output};

use tracing_audit::AuditLayer;
use tracing_subscriber::layer::SubscriberExt;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn sample(dir: &std::path::Path, key: Option<&str>) {
    let mut b = AuditLayer::builder().file(dir);
    if let Some(k) = key {
        b = b.chain_key(k.as_bytes().to_vec());
    }
    let (audit, guard) = b.build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..12u32 {
            let actor = if i.is_multiple_of(3) { "alice" } else { "bob" };
            tracing::info!(
                audit.event = "login",
                audit.actor = actor,
                audit.outcome = "success",
                i
            );
        }
        tracing::warn!(
            audit.event = "auth_failure",
            audit.actor = "mallory",
            audit.outcome = "failure",
            audit.session = "s9"
        );
        tracing::error!(
            audit.event = "data_export",
            audit.actor = "bob",
            audit.resource = "/export",
            audit.risk = "critical"
        );
    });
    drop(guard);
}

#[test]
fn verify_exit_codes_and_json() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    sample(dir.path(), None);
    let ok = bin(&["verify", d]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        text(&ok).starts_with("OK: 16 records in 1 file, seq 0..15"),
        "{}",
        text(&ok)
    );

    let json = bin(&["verify", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["records"], 16);
    assert_eq!(v["failure"], serde_json::Value::Null);

    let f = common::audit_files(dir.path()).pop().unwrap();
    let s = std::fs::read_to_string(&f)
        .unwrap()
        .replacen("mallory", "nobody1", 1);
    std::fs::write(&f, s).unwrap();
    let bad = bin(&["verify", d]);
    assert_eq!(bad.status.code(), Some(1));
    let out = text(&bad);
    assert!(
        out.contains("FAILED:") && out.contains(":14: Modified"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&bin(&["verify", d, "--json"]).stdout).unwrap();
    assert_eq!(v["failure"]["kind"], "modified");
    assert_eq!(v["failure"]["line"], 14);

    assert_eq!(
        bin(&["verify", "/nonexistent/trail"]).status.code(),
        Some(2)
    );
    assert_eq!(bin(&["verify"]).status.code(), Some(2));
}

#[test]
fn verify_with_key_from_env() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    sample(dir.path(), Some("cli-test-key-0123456789abcdef"));
    let no_key = bin(&["verify", d]);
    assert_eq!(no_key.status.code(), Some(2), "{}", text(&no_key));
    assert!(text(&no_key).contains("KeyRequired"));
    let o = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(["verify", d, "--key-env", "AUDIT_TEST_KEY"])
        .env("AUDIT_TEST_KEY", "cli-test-key-0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("hmac-sha256"));
    let o = bin(&["verify", d, "--key-env", "AUDIT_TEST_KEY_UNSET"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn query_filters_limit_and_json() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    sample(dir.path(), None);
    let o = bin(&[
        "query",
        d,
        "--actor",
        "bob",
        "--event-type",
        "login",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 8);
    assert!(rows
        .iter()
        .all(|r| r["actor"] == "bob" && r["event_type"] == "login"));

    let o = bin(&["query", d, "--min-risk", "high", "--json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["event_type"], "data_export");

    let o = bin(&["query", d, "--limit", "2"]);
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "header, the newest two, the count: {out}");
    assert_eq!(lines[3], "2 records");
    assert!(
        lines[0].contains("SEQ")
            && lines[1].contains("data_export")
            && lines[2].contains("audit_stopped"),
        "{out}"
    );

    let o = bin(&[
        "query",
        d,
        "--outcome",
        "failure",
        "--session",
        "s9",
        "--json",
    ]);
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 1);
    assert_eq!(
        bin(&["query", d, "--min-risk", "extreme"]).status.code(),
        Some(2)
    );
}

#[test]
fn stats_counts() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    sample(dir.path(), None);
    let o = bin(&["stats", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total"], 16);
    assert_eq!(v["by_event_type"]["login"], 12);
    assert_eq!(v["by_actor"]["bob"], 9);
    assert_eq!(v["by_outcome"]["failure"], 1);
    assert_eq!(v["by_risk"]["critical"], 1);
    assert_eq!(
        v["by_day"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        16
    );
    let human = text(&bin(&["stats", d]));
    assert!(
        human.contains("records: 16") && human.contains("login"),
        "{human}"
    );
}

#[test]
fn tail_follows_new_records() {
    use std::io::{BufRead, BufReader};
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    sample(dir.path(), None);
    let o = bin(&["tail", d, "-n", "3", "--json"]);
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 3);

    let mut child = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(["tail", d, "-n", "0", "-f", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "followed", n = 1);
    });
    drop(guard);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let l = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        kinds.push(v["event_type"].as_str().unwrap().to_owned());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(kinds, ["audit_started", "followed", "audit_stopped"]);
}

/// Runs the command and returns its exit code and peak resident memory (KiB).
// Reaped by `wait4`, which also reports its resource usage.
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&str]) -> (i32, i64) {
    let child = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter; the pid is our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// A sample trail with `chunk` appended `times` to its last file.
fn sample_with_appended(chunk: &[u8], times: usize) -> tempfile::TempDir {
    use std::io::Write;
    let dir = common::tempdir();
    sample(dir.path(), None);
    let f = common::audit_files(dir.path()).pop().unwrap();
    let mut w = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    for _ in 0..times {
        w.write_all(chunk).unwrap();
    }
    dir
}

#[test]
fn a_huge_line_is_not_a_record_and_memory_stays_bounded() {
    // 80 MB without a newline, appended to the trail.
    let dir = sample_with_appended(&vec![b'a'; 1 << 20], 80);
    let d = dir.path().to_str().unwrap();
    for cmd in ["verify", "query"] {
        let (code, rss_kib) = run_measured(&[cmd, d]);
        eprintln!(
            "{cmd} over an 80 MB line: exit {code}, peak RSS {} MiB",
            rss_kib / 1024
        );
        assert!(rss_kib < 48 * 1024, "{cmd}: {rss_kib} KiB");
        if cmd == "verify" {
            // Bytes after audit_stopped: no crash leaves them there.
            assert_eq!(code, 1);
        }
    }
    let o = bin(&["stats", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["total"].as_u64(), v["unreadable"].as_u64()),
        (Some(16), Some(1))
    );
}

/// Lines long enough to be held (under 16 MiB) but far longer than a
/// record: `verify` reads ahead on a second thread, and still holds one
/// such line at a time (six of 15 MiB: holding them as ordinary batches
/// would take about 75 MiB).
#[test]
fn long_lines_are_held_one_at_a_time_when_verifying() {
    let mut line = vec![b'a'; 15 << 20];
    line.push(b'\n');
    let dir = sample_with_appended(&line, 6);
    let d = dir.path().to_str().unwrap();
    let (code, rss_kib) = run_measured(&["verify", d]);
    eprintln!(
        "verify over six 15 MiB lines: exit {code}, peak RSS {} MiB",
        rss_kib / 1024
    );
    // Lines after audit_stopped that no restart named: someone else's.
    assert_eq!(code, 1);
    assert!(rss_kib < 40 * 1024, "{rss_kib} KiB");
}

/// Writes a trail whose records carry attacker-controlled text.
fn hostile(dir: &std::path::Path) {
    let (audit, guard) = AuditLayer::builder().file(dir).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(
            audit.event = "data_access",
            audit.actor = "mallory\u{202e}gnp.exe",
            audit.resource = "/invoices/\u{1b}[2J\u{1b}[31mPWNED\nfake-line",
            audit.session = "s\u{7f}1",
            note = "\u{2028}line separator"
        );
    });
    drop(guard);
}

#[test]
fn human_output_never_passes_control_or_bidi_characters() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    hostile(dir.path());
    for args in [vec!["query", d], vec!["tail", d, "-n", "5"]] {
        let o = bin(&args);
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(
            !out.chars()
                .any(|c| (c.is_control() && c != '\n') || ('\u{2028}'..='\u{202e}').contains(&c)),
            "{args:?}: {out:?}"
        );
        assert!(
            out.contains("\\x1b[2J") && out.contains("\\u{202e}"),
            "{out}"
        );
        assert!(
            !out.lines().any(|l| l.starts_with("fake-line")),
            "a forged row: {out}"
        );
        assert!(
            out.lines().all(|l| !l.ends_with(' ')),
            "trailing spaces: {out:?}"
        );
    }
}

#[test]
fn json_output_is_the_stored_bytes_and_hashes_to_its_own_hash() {
    use sha2::{Digest, Sha256};
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    hostile(dir.path());
    let stored = common::raw_lines(dir.path());
    for args in [
        vec!["query", d, "--json"],
        vec!["query", d, "--json", "--limit", "2"],
        vec!["tail", d, "--json"],
    ] {
        let o = bin(&args);
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(!out.is_empty());
        for line in out.lines() {
            assert!(
                stored.iter().any(|s| s == line),
                "{args:?}: re-encoded: {line}"
            );
            let cut = line.rfind("\"hash\":\"").unwrap();
            let hex: String = Sha256::digest(&line.as_bytes()[..cut])
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(&line[cut + 8..cut + 72], hex, "{args:?}");
        }
    }
}

#[test]
fn first_hour_edges() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    // No trail at all: a failure that says why.
    let o = bin(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no audit files found"), "{}", text(&o));
    // A stray file matching the names.
    std::fs::write(dir.path().join("audit.app.jsonl"), "not an audit record\n").unwrap();
    let o = bin(&["verify", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("not a trail written by tracing-audit"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(dir.path().join("audit.app.jsonl")).unwrap();

    sample(dir.path(), None);
    // No match: a header and "0 records".
    let o = bin(&["query", d, "--actor", "nobody-at-all"]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.starts_with("     SEQ") && out.ends_with("0 records\n"),
        "{out}"
    );
    // Dates and times ago.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for since in [today.as_str(), "1h", "30m"] {
        let o = bin(&["query", d, "--since", since, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{since}: {}", text(&o));
        assert_eq!(
            String::from_utf8(o.stdout).unwrap().lines().count(),
            16,
            "{since}"
        );
    }
    let o = bin(&["query", d, "--until", "2001-01-01", "--json"]);
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 0);
    // report alone names both ways to give policies.
    let o = bin(&["report", d]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("--defaults") && text(&o).contains("--policies"),
        "{}",
        text(&o)
    );
    // One time format: RFC 3339 with microseconds and Z.
    let o = bin(&["stats", d]);
    let out = text(&o);
    let from = out.lines().find(|l| l.starts_with("from ")).unwrap();
    assert!(from.split(' ').nth(1).unwrap().ends_with('Z'), "{from}");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = common::tempdir();
    let d = dir.path().to_str().unwrap();
    sample(dir.path(), None);
    for cmd in ["stats", "query", "verify"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
            .args([cmd, d])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close our end at once, as `| head -0` would.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_ne!(
            o.status.code(),
            Some(101),
            "{cmd} panicked: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("panicked"),
            "{cmd}"
        );
    }
}
