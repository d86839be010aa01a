//! An attacker who can write the trail files but holds no HMAC key: every
//! attack is reported by `verify`, and nothing forged is shown as a record
//! by the readers (issue: "a keyed trail accepts forged and rewritten
//! records through the torn-line path").

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::audit_files;
use tracing_audit::{
    trail::verify_opts, trail::AuditTrail, trail::FailureKind, trail::Query, trail::VerifyOptions,
    trail::VerifyReport, verify, AuditLayer, FileSink,
};
use tracing_subscriber::layer::SubscriberExt;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Runs one process lifetime over `dir`: start, `n` events, clean stop.
fn run(dir: &Path, key: Option<&[u8]>, service: &str, n: usize) {
    let mut b = AuditLayer::builder().file(dir).host("h").service(service);
    if let Some(k) = key {
        b = b.chain_key(k.to_vec());
    }
    let (audit, guard) = b.build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..n {
            tracing::info!(audit.event = "data_access", audit.actor = "bob", i, "read");
        }
    });
    drop(guard);
}

fn only_file(dir: &Path) -> PathBuf {
    let f = audit_files(dir);
    assert_eq!(f.len(), 1);
    f[0].clone()
}

fn append(p: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn failure(r: &VerifyReport) -> FailureKind {
    r.failure
        .as_ref()
        .unwrap_or_else(|| panic!("verify passed: {r:?}"))
        .kind
}

/// A forged record in the shape of a genuine one: the attacker copies a
/// real line and edits it, with made-up hashes.
fn forged(dir: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(only_file(dir)).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"data_access\""))
        .unwrap()
        .to_owned();
    line.replace("\"data_access\"", "\"data_export\"")
        .replace("\"bob\"", "\"alice\"")
        .replace("\"risk_level\":\"low\"", "\"risk_level\":\"critical\"")
        .into_bytes()
}

/// Whether any reader shows alice's forged export as a record.
fn readers_show_forgery(dir: &Path, key: Option<&[u8]>) -> bool {
    let mut t = AuditTrail::open(dir).unwrap();
    if let Some(k) = key {
        t = t.with_key(k);
    }
    let shown = t
        .records()
        .filter_map(Result::ok)
        .any(|r| r.actor.as_deref() == Some("alice"));
    let stats = t.stats(&Query::default());
    shown || stats.by_actor.contains_key("alice")
}

#[test]
fn insert_after_a_clean_stop_is_foreign_and_never_a_record() {
    let d = common::tempdir();
    run(d.path(), Some(KEY), "svc", 3);
    let bad = forged(d.path());
    append(&only_file(d.path()), &bad); // no newline: "a torn line"
    run(d.path(), Some(KEY), "svc", 1);
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert_eq!(failure(&r), FailureKind::Foreign, "{r:?}");
    assert!(failure(&r).is_tampering());
    assert!(!readers_show_forgery(d.path(), Some(KEY)));
    // The restart sealed what it found as foreign, not torn.
    let started: Vec<_> = common::read_trail_lenient(d.path())
        .into_iter()
        .filter(|r| r["event_type"] == "audit_started")
        .collect();
    assert!(started[1]["details"]["foreign_tail"].is_array());
}

/// A run that did not stop cleanly, then a restart that acknowledges a real
/// torn line. Returns the torn bytes' offset.
fn crash_with_torn_tail(dir: &Path) -> u64 {
    run(dir, Some(KEY), "svc", 3);
    let p = only_file(dir);
    // Make it look like a crash: drop audit_stopped, leave half a record.
    let text = std::fs::read(&p).unwrap();
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let mut kept: Vec<u8> = lines[..lines.len() - 1].concat();
    let offset = kept.len() as u64;
    kept.extend_from_slice(&lines[lines.len() - 1][..100]);
    std::fs::write(&p, kept).unwrap();
    run(dir, Some(KEY), "svc", 1);
    offset
}

#[test]
fn a_real_torn_tail_is_acknowledged_by_content() {
    let d = common::tempdir();
    crash_with_torn_tail(d.path());
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(r
        .notes
        .iter()
        .any(|n| n.contains("acknowledged by content")));
    // The readers name the torn line as not a record.
    let t = AuditTrail::open(d.path()).unwrap().with_key(KEY);
    let errors: Vec<_> = t.records().filter_map(Result::err).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn rewriting_an_acknowledged_torn_line_is_caught() {
    for how in [
        "longer",
        "same_length",
        "reordered_record",
        "carriage_return",
    ] {
        let d = common::tempdir();
        let offset = crash_with_torn_tail(d.path()) as usize;
        let p = only_file(d.path());
        let text = std::fs::read(&p).unwrap();
        let end = offset + text[offset..].iter().position(|&b| b == b'\n').unwrap();
        let torn = &text[offset..end];
        let replacement: Vec<u8> = match how {
            "longer" => forged(d.path()),
            "same_length" => {
                let mut t = torn.to_vec();
                let at = t.len() - 5;
                t[at] = if t[at] == b'a' { b'b' } else { b'a' };
                t
            }
            "reordered_record" => {
                // A record-shaped line with its keys in another order.
                let v: serde_json::Value = serde_json::from_slice(&forged(d.path())).unwrap();
                let mut m: Vec<(String, serde_json::Value)> =
                    v.as_object().unwrap().clone().into_iter().collect();
                m.reverse();
                let obj: serde_json::Map<_, _> = m.into_iter().collect();
                serde_json::to_vec(&obj).unwrap()
            }
            _ => {
                let mut t = torn.to_vec();
                t.push(b'\r');
                t
            }
        };
        let mut out = text[..offset].to_vec();
        out.extend_from_slice(&replacement);
        out.extend_from_slice(&text[end..]);
        std::fs::write(&p, out).unwrap();
        let r = verify(d.path(), Some(KEY)).unwrap();
        let kind = failure(&r);
        assert!(kind.is_tampering(), "{how}: {kind:?}");
        assert!(!readers_show_forgery(d.path(), Some(KEY)), "{how}");
    }
}

#[test]
fn a_genuine_record_cut_short_is_completed_not_demoted() {
    let d = common::tempdir();
    run(d.path(), Some(KEY), "svc", 3);
    let p = only_file(d.path());
    let text = std::fs::read(&p).unwrap();
    // Remove audit_stopped (as a crash would), then the last two bytes.
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let kept: Vec<u8> = lines[..lines.len() - 1].concat();
    std::fs::write(&p, &kept[..kept.len() - 2]).unwrap();
    run(d.path(), Some(KEY), "svc", 1);
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert!(r.is_ok(), "{r:?}");
    let seqs: Vec<u64> = AuditTrail::open(d.path())
        .unwrap()
        .with_key(KEY)
        .records()
        .map(|r| r.unwrap().seq)
        .collect();
    let want: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, want, "the completed record kept its seq, none twice");
    // Now rewrite the completed record's actor: that is an edit.
    let text = std::fs::read_to_string(&p).unwrap();
    let edited = text.replacen("\"actor\":\"bob\"", "\"actor\":\"eve\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&p, edited).unwrap();
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert_eq!(failure(&r), FailureKind::Modified);
}

#[test]
fn deleting_the_head_without_retention_is_deletion() {
    let d = common::tempdir();
    run(d.path(), Some(KEY), "svc", 5);
    let p = only_file(d.path());
    let text = std::fs::read_to_string(&p).unwrap();
    let rest: String = text.lines().skip(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&p, rest).unwrap();
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert_eq!(failure(&r), FailureKind::Deleted, "{r:?}");
}

#[test]
fn retention_is_sealed_and_only_accepted_at_a_file_start() {
    let d = common::tempdir();
    // Two processes, each in a new file, under max_files retention.
    let lifetime = || {
        let sink = FileSink::new(d.path())
            .rotation(tracing_audit::file::Rotation::NEVER)
            .max_files(1);
        let (audit, guard) = AuditLayer::builder()
            .file(sink)
            .chain_key(KEY.to_vec())
            .build()
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            tracing::info!(audit.event = "x");
        });
        drop(guard);
    };
    lifetime();
    // Rename the file to look like an old period, and start again: the new
    // file is created, sealed with its retention, and the old one pruned.
    let p = only_file(d.path());
    std::fs::rename(&p, d.path().join("audit.2020-01-01.jsonl")).unwrap();
    lifetime();
    let files = audit_files(d.path());
    assert_eq!(files.len(), 1, "max_files 1 pruned the old file");
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(r.notes.iter().any(|n| n.contains("retention")), "{r:?}");
    // Removing the first lines inside the kept file is never retention.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let rest: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&files[0], rest).unwrap();
    let r = verify(d.path(), Some(KEY)).unwrap();
    assert_eq!(failure(&r), FailureKind::Deleted, "{r:?}");
}

#[test]
fn honest_verdicts_for_keys_algorithms_and_swapped_trails() {
    // An unkeyed trail whose later audit_started declares HMAC: tampering.
    let d = common::tempdir();
    run(d.path(), None, "svc", 2);
    run(d.path(), None, "svc", 2);
    let p = only_file(d.path());
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let i = lines
        .iter()
        .rposition(|l| l.contains("\"audit_started\""))
        .unwrap();
    lines[i] = lines[i].replace("\"chain\":\"sha256\"", "\"chain\":\"hmac-sha256\"");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let r = verify(d.path(), None).unwrap();
    assert_eq!(failure(&r), FailureKind::Modified, "{r:?}");
    assert!(r.failure.unwrap().detail.contains("switches"));

    // A wrong key is a wrong key, not a modified record.
    let d = common::tempdir();
    run(d.path(), Some(KEY), "svc", 2);
    let r = verify(d.path(), Some(b"not the key")).unwrap();
    assert_eq!(failure(&r), FailureKind::WrongKey, "{r:?}");
    assert!(!FailureKind::WrongKey.is_tampering());

    // Another service's trail under the same key: caught when asked.
    let other = common::tempdir();
    run(other.path(), Some(KEY), "other-svc", 2);
    let opts = VerifyOptions::default().expect_service("svc");
    let r = verify_opts(&FileSink::new(other.path()), Some(KEY), &opts).unwrap();
    assert_eq!(failure(&r), FailureKind::OtherService, "{r:?}");
    let r = verify_opts(&FileSink::new(d.path()), Some(KEY), &opts).unwrap();
    assert!(r.is_ok(), "{r:?}");

    // A verify that checked nothing fails.
    let empty = common::tempdir();
    let r = verify(empty.path(), None).unwrap();
    assert_eq!(failure(&r), FailureKind::NoRecords);
}

#[test]
fn sealed_lines_that_are_not_records_fail_verify_and_readers_agree() {
    // Unkeyed: anyone can recompute the hash, so the check is the schema.
    let cases = [
        ("\"risk_level\":\"low\"", "\"risk_level\":\"apocalyptic\""),
        ("\"details\":{", "\"details\":{\"i\":1,"),
        ("\"message\":\"read\"", "\"message\":\"\\ud800\""),
        ("\"details\":{", "\"details\":{\"big\":1e400,"),
        // `details` must be an object for verify as for the readers.
        ("\"details\":{\"i\":0}", "\"details\":[0]"),
    ];
    for (from, to) in cases {
        let d = common::tempdir();
        run(d.path(), None, "svc", 1);
        let p = only_file(d.path());
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let i = lines
            .iter()
            .position(|l| l.contains("\"data_access\""))
            .unwrap();
        assert!(lines[i].contains(from), "{from}");
        let edited = lines[i].replacen(from, to, 1);
        lines[i] = common::reseal(&edited, &lines[i - 1]);
        // Re-link the records after it.
        for j in i + 1..lines.len() {
            lines[j] = common::reseal(&lines[j].clone(), &lines[j - 1]);
        }
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let r = verify(d.path(), None).unwrap();
        assert_eq!(failure(&r), FailureKind::NotARecord, "{to}: {r:?}");
        let t = AuditTrail::open(d.path()).unwrap();
        assert_eq!(t.stats(&Query::default()).unreadable, 1, "{to}");
    }
}

#[test]
fn tail_follow_started_mid_line_prints_that_record_once_complete() {
    let d = common::tempdir();
    run(d.path(), None, "svc", 2);
    let p = only_file(d.path());
    let text = std::fs::read(&p).unwrap();
    // Take the last record away and put back only its first half, as if the
    // writer were in the middle of it.
    let start = text[..text.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let last = text[start..].to_vec();
    std::fs::write(&p, &text[..start + 50]).unwrap();
    let mut f = tracing_audit::trail::Follower::from_end(FileSink::new(d.path())).unwrap();
    assert!(f.poll().unwrap().is_empty());
    append(&p, &last[50..]);
    let got = f.poll().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].as_ref().unwrap().event_type.as_deref(),
        Some("audit_stopped")
    );
}

#[test]
fn age_and_size_retention_remove_whole_old_files_and_verify_as_retention() {
    let d = common::tempdir();
    let day = std::time::Duration::from_secs(86_400);
    // Three old "days", written by earlier runs, last touched long ago.
    let mut old = Vec::new();
    for date in ["2020-01-01", "2020-01-02"] {
        let (audit, guard) = AuditLayer::builder()
            .file(FileSink::new(d.path()).rotation(tracing_audit::file::Rotation::NEVER))
            .build()
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            tracing::info!(audit.event = "old");
        });
        drop(guard);
        let p = d.path().join(format!("audit.{date}.jsonl"));
        std::fs::rename(d.path().join("audit.jsonl"), &p).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() - 30 * day)
            .unwrap();
        old.push(p);
    }
    // Today's run starts a new file under max_age: both old files go.
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(d.path()).max_age(7 * day))
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "new");
    });
    drop(guard);
    assert!(
        old.iter().all(|p| !p.exists()),
        "files older than max_age pruned"
    );
    let r = verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(r.notes.iter().any(|n| n.contains("max_age_secs")), "{r:?}");
    // A size cap: the next new file leaves only what fits (never itself).
    let today = only_file(d.path());
    std::fs::rename(&today, d.path().join("audit.2021-01-01.jsonl")).unwrap();
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(d.path()).max_total_bytes(1))
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "newest");
    });
    drop(guard);
    assert_eq!(audit_files(d.path()).len(), 1);
    let r = verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(
        r.notes.iter().any(|n| n.contains("max_total_bytes")),
        "{r:?}"
    );
}

/// `verify` reads a file on two threads, in batches of 256 KiB: an edit far
/// into a multi-batch trail is still named by its own line, nothing after
/// it counts, and the same trail unedited verifies whole.
#[test]
fn an_edit_deep_in_a_large_trail_is_named_by_its_line() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), Some(KEY), "svc", 4000);
    let path = only_file(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.len() > 4 * 256 * 1024,
        "{} bytes: too few batches",
        text.len()
    );
    let whole = verify(dir.path(), Some(KEY)).unwrap();
    assert!(whole.is_ok(), "{whole:?}");
    // Every line is a record (start, events, stop and its checkpoint).
    assert_eq!(whole.records, text.lines().count() as u64);

    // Line 3001 (seq 3000): same length, one value changed.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[3000].contains("\"actor\":\"bob\""));
    lines[3000] = lines[3000].replacen("\"actor\":\"bob\"", "\"actor\":\"eve\"", 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let r = verify(dir.path(), Some(KEY)).unwrap();
    assert_eq!(failure(&r), FailureKind::Modified);
    assert_eq!(r.failure.as_ref().unwrap().line, 3001);
    assert_eq!(r.records, 3000);
}
