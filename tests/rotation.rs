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
