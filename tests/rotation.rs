//! Real rotation by tracing-appender's clock: records written across a
//! minute boundary land whole in two files, and the chain links across them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_appender::rolling::Rotation;
use tracing_audit::{verify, AuditLayer, FileSink};
use tracing_subscriber::layer::SubscriberExt;

fn second_of_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60
}

#[test]
fn rotation_splits_between_records() {
    // Start two seconds before a minute boundary (waits up to a minute).
    while second_of_minute() != 58 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = common::tempdir();
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(dir.path()).rotation(Rotation::MINUTELY))
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    let mut n = 0u64;
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        while start.elapsed() < Duration::from_secs(4) {
            tracing::info!(audit.event = "tick", n, pad = "x".repeat(200).as_str());
            n += 1;
            if n.is_multiple_of(100) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    drop(guard);
    let files = common::audit_files(dir.path());
    assert!(files.len() >= 2, "expected a rotation, got {files:?}");
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    // Every line of every file is a whole record (read_trail parses each).
    let all = common::read_trail(dir.path());
    assert_eq!(
        all.iter().filter(|r| r["event_type"] == "tick").count() as u64,
        n
    );
    let first_of_second = std::fs::read_to_string(&files[0]).unwrap().lines().count();
    assert_eq!(
        all[first_of_second]["prev_hash"],
        all[first_of_second - 1]["hash"],
        "link across files"
    );
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.files, files.len());
    // The second file begins with the record that says it was opened.
    assert_eq!(all[first_of_second]["event_type"], "audit_file_opened");
    assert_eq!(
        all[first_of_second]["details"]["previous_file"],
        files[0].file_name().unwrap().to_str().unwrap()
    );
}

/// `max_file_size`: files close once they hold the limit, never split a
/// record, pass it by less than one record, sort in writing order, and a
/// restart continues the period's last file (or the next one when full)
/// without forking the chain.
#[test]
fn size_limit_rotates_between_records_and_survives_restarts() {
    const LIMIT: u64 = 16 * 1024;
    let dir = common::tempdir();
    let sink = || FileSink::new(dir.path()).max_file_size(LIMIT);
    let mut emitted = 0u64;
    let mut longest = 0usize;
    for run in 0..3 {
        let (audit, guard) = AuditLayer::builder()
            .file(sink())
            .max_value_len(64 * 1024)
            .build()
            .unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            for i in 0..300u64 {
                // Records of varied sizes, one far larger than the limit.
                let pad = if run == 1 && i == 150 {
                    "y".repeat(40 * 1024)
                } else {
                    "x".repeat((i as usize * 37) % 400)
                };
                tracing::info!(audit.event = "tick", run, i, pad = pad.as_str());
                emitted += 1;
            }
        });
        drop(guard);
    }
    let files = common::audit_files(dir.path());
    assert!(files.len() >= 6, "{files:?}");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The first file of the period keeps the appender's name; the rest are
    // numbered in order.
    assert!(
        names[0].ends_with(".jsonl") && !names[0].contains('_'),
        "{names:?}"
    );
    for (k, n) in names.iter().enumerate().skip(1) {
        assert!(n.contains(&format!("_{k:06}.")), "{names:?}");
    }
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let last = lines.last().unwrap().len() as u64 + 1;
        longest = longest.max(last as usize);
        let before_last = text.len() as u64 - last;
        // Without its last record, a file is under the limit.
        assert!(before_last < LIMIT, "{}: {} bytes", f.display(), text.len());
    }
    assert!(longest > 40 * 1024, "the large record was written whole");
    let r = verify(dir.path(), None).unwrap();
    assert!(r.failure.is_none(), "{r:?}");
    let ticks = common::read_trail(dir.path())
        .into_iter()
        .filter(|r| r["event_type"] == "tick")
        .count() as u64;
    assert_eq!(ticks, emitted);
}

/// `compress_rotated`: files the writer has left are gzipped beside the
/// current plain one; `verify`, the reader and a `Follower` read across
/// plain and compressed files, each record once; an interrupted
/// compression (a plain file and its compressed twin) counts once and is
/// finished at the next start.
#[cfg(feature = "gzip")]
#[test]
fn rotated_files_are_compressed_and_read_transparently() {
    use std::collections::HashSet;
    let dir = common::tempdir();
    let sink = || {
        FileSink::new(dir.path())
            .max_file_size(8 * 1024)
            .compress_rotated(true)
    };
    let mut follower = None;
    let mut followed: Vec<u64> = Vec::new();
    let mut emitted = 0u64;
    for run in 0..3u64 {
        let (audit, guard) = AuditLayer::builder().file(sink()).build().unwrap();
        let f = follower.get_or_insert_with(|| {
            tracing_audit::trail::Follower::from_end(tracing_audit::FileSink::new(dir.path()))
                .unwrap()
        });
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            for i in 0..200u64 {
                tracing::info!(audit.event = "tick", run, i, pad = "x".repeat(100).as_str());
                emitted += 1;
                if i % 50 == 0 {
                    guard.handle().flush();
                    for r in f.poll().unwrap() {
                        let r = r.unwrap();
                        if r.event_type.as_deref() == Some("tick") {
                            followed.push(r.seq);
                        }
                    }
                }
            }
        });
        drop(guard);
    }
    for r in follower.as_mut().unwrap().poll().unwrap() {
        let r = r.unwrap();
        if r.event_type.as_deref() == Some("tick") {
            followed.push(r.seq);
        }
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit"))
        .collect();
    let gz = names.iter().filter(|n| n.ends_with(".jsonl.gz")).count();
    let plain = names.iter().filter(|n| n.ends_with(".jsonl")).count();
    assert!(gz >= 5, "{names:?}");
    assert_eq!(plain, 1, "only the current file stays plain: {names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

    let count_ticks = || {
        tracing_audit::trail::AuditTrail::open(dir.path())
            .unwrap()
            .records()
            .map(Result::unwrap)
            .filter(|r| r.event_type.as_deref() == Some("tick"))
            .count() as u64
    };
    assert_eq!(count_ticks(), emitted);
    let r = verify(dir.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    // The follower saw every record once, across files that were
    // compressed under it.
    let unique: HashSet<u64> = followed.iter().copied().collect();
    assert_eq!(unique.len(), followed.len(), "a record followed twice");
    assert_eq!(followed.len() as u64, emitted);

    // A crash between the rename and the removal: both copies exist.
    let mut gzs: Vec<_> = names.iter().filter(|n| n.ends_with(".gz")).collect();
    gzs.sort();
    let twin = dir.path().join(gzs[0]);
    let plain_path = dir.path().join(gzs[0].trim_end_matches(".gz"));
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&twin).unwrap()),
        &mut text,
    )
    .unwrap();
    std::fs::write(&plain_path, &text).unwrap();
    assert_eq!(count_ticks(), emitted, "the twin is not read twice");
    assert!(verify(dir.path(), None).unwrap().is_ok());
    let (_, guard) = AuditLayer::builder()
        .file(sink())
        .build::<tracing_subscriber::Registry>()
        .unwrap();
    drop(guard);
    assert!(
        !plain_path.exists() && twin.exists(),
        "finished at the next start"
    );
    assert_eq!(count_ticks(), emitted);
    assert!(verify(dir.path(), None).unwrap().is_ok());
}
