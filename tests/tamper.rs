//! Tampering with real trail files, and the exact verdict for each kind.

mod common;

use std::path::{Path, PathBuf};

use common::audit_files;
use sha2::{Digest, Sha256};
use tracing_audit::{trail::FailureKind, trail::VerifyReport, verify, AuditLayer};
use tracing_subscriber::layer::SubscriberExt;

const FILES: [&str; 3] = [
    "audit.2026-11-20.jsonl",
    "audit.2026-11-21.jsonl",
    "audit.2026-11-22.jsonl",
];

/// Writes `n` records through the real layer, then lays the lines out over
/// three dated files exactly as daily rotation would (rotation only ever
/// cuts the stream between lines; `rotation_splits_between_records` in
/// tests/rotation.rs shows the writer doing it for real).
fn trail(n: usize, key: Option<&str>) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = common::tempdir();
    let mut b = AuditLayer::builder().file(dir.path()).host("h");
    if let Some(k) = key {
        b = b.chain_key(k.as_bytes().to_vec());
    }
    let (audit, guard) = b.build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..n {
            tracing::info!(
                audit.event = "data_access",
                audit.actor = format!("user-{}", i % 7).as_str(),
                i,
                "read"
            );
        }
    });
    drop(guard);
    let written = audit_files(dir.path());
    assert_eq!(written.len(), 1);
    let text = std::fs::read_to_string(&written[0]).unwrap();
    std::fs::remove_file(&written[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let per = lines.len().div_ceil(3);
    let mut paths = Vec::new();
    for (i, chunk) in lines.chunks(per).enumerate() {
        let p = dir.path().join(FILES[i]);
        std::fs::write(
            &p,
            chunk.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        paths.push(p);
    }
    (dir, paths)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn failed(r: &VerifyReport) -> (FailureKind, String, u64) {
    let f = r
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("verify passed: {r:?}"));
    (
        f.kind,
        f.file.file_name().unwrap().to_string_lossy().into_owned(),
        f.line,
    )
}

#[test]
fn intact_trail_verifies() {
    let (dir, _) = trail(30, None);
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.records, 32);
    assert_eq!(r.files, 3);
    assert_eq!((r.first_seq, r.last_seq), (Some(0), Some(31)));
}

#[test]
fn flipped_byte_in_a_field_is_a_modified_record() {
    let (dir, files) = trail(30, None);
    let mut l = lines(&files[1]);
    l[3] = l[3].replacen("\"actor\":\"user-", "\"actor\":\"usEr-", 1);
    write_lines(&files[1], &l);
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::Modified, FILES[1].into(), 4)
    );
}

/// The verifier's reader thread hashes most lines and leaves some to the
/// checking thread: an edit is found on every line, whichever hashed it.
#[test]
fn an_edit_on_any_line_is_a_modified_record() {
    let (dir, files) = trail(30, None);
    let original = lines(&files[1]);
    for at in 0..original.len() {
        let mut l = original.clone();
        l[at] = l[at].replacen("\"host\":\"h\"", "\"host\":\"H\"", 1);
        assert_ne!(l[at], original[at]);
        write_lines(&files[1], &l);
        assert_eq!(
            failed(&verify(dir.path(), None).unwrap()),
            (FailureKind::Modified, FILES[1].into(), at as u64 + 1),
            "edit on line {}",
            at + 1
        );
    }
    write_lines(&files[1], &original);
    assert!(verify(dir.path(), None).unwrap().is_ok());
}

#[test]
fn deleted_line_is_a_seq_gap() {
    let (dir, files) = trail(30, None);
    let mut l = lines(&files[1]);
    l.remove(4);
    write_lines(&files[1], &l);
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::Deleted, FILES[1].into(), 5)
    );
}

#[test]
fn duplicated_line_is_an_insertion() {
    let (dir, files) = trail(30, None);
    let mut l = lines(&files[0]);
    let dup = l[2].clone();
    l.insert(3, dup);
    write_lines(&files[0], &l);
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::InsertedOrReordered, FILES[0].into(), 4)
    );
}

#[test]
fn swapped_lines_are_a_reordering() {
    let (dir, files) = trail(30, None);
    let mut l = lines(&files[2]);
    l.swap(1, 2);
    write_lines(&files[2], &l);
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::InsertedOrReordered, FILES[2].into(), 2)
    );
}

#[test]
fn record_moved_is_a_reordering_and_a_copied_one_an_insertion() {
    let (dir, files) = trail(30, None);
    let mut l = lines(&files[1]);
    let moved = l.remove(1);
    l.insert(4, moved);
    write_lines(&files[1], &l);
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::InsertedOrReordered, FILES[1].into(), 2)
    );

    let (dir, files) = trail(30, None);
    let early = lines(&files[0])[1].clone();
    let mut l = lines(&files[1]);
    l.insert(2, early);
    write_lines(&files[1], &l);
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::InsertedOrReordered, FILES[1].into(), 3)
    );
}

#[test]
fn deleted_middle_file_is_a_missing_file() {
    let (dir, files) = trail(30, None);
    std::fs::remove_file(&files[1]).unwrap();
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::MissingFile, FILES[2].into(), 1)
    );
}

#[test]
fn swapped_files_are_out_of_order() {
    let (dir, files) = trail(30, None);
    let a = std::fs::read(&files[1]).unwrap();
    let b = std::fs::read(&files[2]).unwrap();
    std::fs::write(&files[1], b).unwrap();
    std::fs::write(&files[2], a).unwrap();
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()),
        (FailureKind::FileOrder, FILES[1].into(), 1)
    );
    std::fs::remove_file(&files[0]).unwrap();
    // Oldest file gone and no retention sealed: that is deletion.
    let r = verify(dir.path(), None).unwrap();
    assert_eq!(failed(&r), (FailureKind::Deleted, FILES[1].into(), 1));
}

#[test]
fn truncated_tail_is_a_crash_artefact() {
    let (dir, files) = trail(30, None);
    let bytes = std::fs::read(&files[2]).unwrap();
    std::fs::write(&files[2], &bytes[..bytes.len() - 40]).unwrap();
    let r = verify(dir.path(), None).unwrap();
    let (kind, file, line) = failed(&r);
    assert_eq!((kind, file.as_str()), (FailureKind::TornTail, FILES[2]));
    assert_eq!(line as usize, lines(&files[2]).len());
    assert!(!kind.is_tampering());
}

#[test]
fn keyed_chain_survives_no_plain_recompute() {
    let (dir, files) = trail(30, Some("k3y-material-for-tests-0123456789"));
    let key = b"k3y-material-for-tests-0123456789".as_slice();
    assert!(verify(dir.path(), Some(key)).unwrap().is_ok());
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()).0,
        FailureKind::KeyRequired
    );
    assert_eq!(
        failed(&verify(dir.path(), Some(b"wrong")).unwrap()).0,
        FailureKind::WrongKey
    );

    // Edit a record, then recompute a plain SHA-256 chain over everything.
    let mut prev = tracing_audit::record::GENESIS.to_owned();
    for (fi, f) in files.iter().enumerate() {
        let mut out = Vec::new();
        for (li, line) in lines(f).into_iter().enumerate() {
            let mut line = if fi == 1 && li == 2 {
                line.replace("\"read\"", "\"nothing happened\"")
            } else {
                line
            };
            let n = line.len();
            // ...,"prev_hash":"<64>","hash":"<64>"}
            line.replace_range(n - 74 - 66..n - 74 - 2, &prev);
            let hashed = &line[..n - 74];
            let h = hex(&Sha256::digest(hashed.as_bytes()));
            line.replace_range(n - 66..n - 2, &h);
            prev = h;
            out.push(line);
        }
        write_lines(f, &out);
    }
    // Without the key, the forgery is a valid plain chain...
    assert!(verify(dir.path(), None).unwrap().is_ok());
    // ...with it, the first record already fails.
    assert_eq!(
        failed(&verify(dir.path(), Some(key)).unwrap()),
        (FailureKind::Modified, FILES[0].into(), 1)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn random_single_byte_edits_are_always_detected() {
    let (dir, files) = trail(20, None);
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed_a0d1);
    for _ in 0..400 {
        let fi = rng.usize(..files.len());
        let mut bytes = originals[fi].clone();
        let pos = rng.usize(..bytes.len());
        let old = bytes[pos];
        let new = loop {
            let b = rng.u8(..);
            if b != old {
                break b;
            }
        };
        bytes[pos] = new;
        std::fs::write(&files[fi], &bytes).unwrap();
        let r = verify(dir.path(), None).unwrap();
        let f = r.failure.unwrap_or_else(|| {
            panic!(
                "edit of byte {pos} in {} ({old:#x} -> {new:#x}) undetected",
                FILES[fi]
            )
        });
        assert_eq!(f.file, files[fi], "reported in the wrong file");
        let line_of_pos = originals[fi][..pos].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        assert!(
            f.line == line_of_pos || f.line == line_of_pos + 1,
            "edit on line {line_of_pos} reported at line {} ({:?})",
            f.line,
            f.kind
        );
        std::fs::write(&files[fi], &originals[fi]).unwrap();
    }
    assert!(verify(dir.path(), None).unwrap().is_ok());
}

#[test]
fn torn_tail_then_restart_is_acknowledged_not_tampering() {
    let dir = common::tempdir();
    let emit = |n: usize| {
        let (audit, guard) = AuditLayer::builder().file(dir.path()).build().unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            for i in 0..n {
                tracing::info!(audit.event = "x", i);
            }
        });
        drop(guard);
    };
    emit(5);
    let f = audit_files(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&f).unwrap();
    let cut = bytes.len() - 30;
    std::fs::write(&f, &bytes[..cut]).unwrap();
    let torn_at = bytes[..cut].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(
        failed(&verify(dir.path(), None).unwrap()).0,
        FailureKind::TornTail
    );

    emit(3);
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(
        r.notes.iter().any(|n| n.contains("torn line")),
        "{:?}",
        r.notes
    );
    let started: Vec<serde_json::Value> = common::read_trail_lenient(dir.path())
        .into_iter()
        .filter(|r| r["event_type"] == "audit_started")
        .collect();
    let torn = &started[1]["details"]["torn_tail"][0];
    assert_eq!(torn["offset"].as_u64().unwrap() as usize, torn_at);
    assert_eq!(
        torn["file"],
        f.file_name().unwrap().to_string_lossy().as_ref()
    );
}
