//! Every crash state resumes the chain (the way ALICE and CrashMonkey test
//! crash consistency): a trail file cut at every byte offset within its last
//! three records, a torn line already ended by a restart that died too, and
//! a run of NUL bytes. After each, a start and a stop must leave a trail
//! that verifies, with every record before the cut still there.

mod common;

use std::path::Path;

use tracing_audit::{trail::AuditTrail, verify, AuditLayer};
use tracing_subscriber::layer::SubscriberExt;

/// A trail of one crashed run: records whose last one is not `audit_stopped`.
fn crashed_trail(dir: &Path) -> Vec<u8> {
    let (audit, guard) = AuditLayer::builder().file(dir).host("h").build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..6 {
            tracing::info!(audit.event = "data_access", audit.actor = "bob", i, "read");
        }
    });
    drop(guard);
    let f = &common::audit_files(dir)[0];
    let text = std::fs::read(f).unwrap();
    // Drop audit_stopped: the run "crashed" after its last record.
    let end = text[..text.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    text[..end].to_vec()
}

fn start_and_stop(dir: &Path) {
    let (audit, guard) = AuditLayer::builder().file(dir).host("h").build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "after_restart");
    });
    drop(guard);
}

fn seqs(dir: &Path) -> Vec<u64> {
    AuditTrail::open(dir)
        .unwrap()
        .records()
        .filter_map(Result::ok)
        .map(|r| r.seq)
        .collect()
}

#[test]
fn a_cut_at_every_byte_of_the_last_three_records_resumes() {
    let pristine_dir = common::tempdir();
    let pristine = crashed_trail(pristine_dir.path());
    let name = common::audit_files(pristine_dir.path())[0]
        .file_name()
        .unwrap()
        .to_owned();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            pristine
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let from = line_starts[line_starts.len() - 4];
    let mut tried = 0;
    for cut in from..=pristine.len() {
        let d = common::tempdir();
        std::fs::write(d.path().join(&name), &pristine[..cut]).unwrap();
        // Records wholly before the cut (their newline included, or all but
        // the bytes after their hash) must survive.
        let whole = line_starts.iter().filter(|&&s| s > 0 && s <= cut).count();
        start_and_stop(d.path());
        let r = verify(d.path(), None).unwrap();
        assert!(r.is_ok(), "cut at {cut}: {r:?}");
        let s = seqs(d.path());
        let want: Vec<u64> = (0..s.len() as u64).collect();
        assert_eq!(s, want, "cut at {cut}: every seq once, in order");
        assert!(
            s.len() >= whole + 3,
            "cut at {cut}: a record before the cut was lost"
        );
        tried += 1;
    }
    eprintln!("crash states tried: {tried}");
}

#[test]
fn a_torn_line_ended_by_a_restart_that_died_too_resumes() {
    let d = common::tempdir();
    let mut trail = crashed_trail(d.path());
    let name = common::audit_files(d.path())[0].clone();
    // First crash: half a record. A restart ended it with `\n`, then died
    // before writing audit_started; then it happened again.
    trail.extend_from_slice(b"{\"schema\":1,\"audit_id\":\"x\n");
    trail.extend_from_slice(b"{\"schema\":1,\"audit_id\":\"y");
    std::fs::write(&name, &trail).unwrap();
    let before = seqs(d.path()).len();
    start_and_stop(d.path());
    let r = verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        seqs(d.path()).len(),
        before + 3,
        "the chain continued, not forked"
    );
    let started = common::read_trail_lenient(d.path())
        .into_iter()
        .rfind(|r| r["event_type"] == "audit_started")
        .unwrap();
    assert_eq!(started["details"]["torn_tail"].as_array().unwrap().len(), 2);
}

#[test]
fn a_run_of_nul_bytes_resumes() {
    let d = common::tempdir();
    let mut trail = crashed_trail(d.path());
    let name = common::audit_files(d.path())[0].clone();
    // ext4 after a crash: the size reached disk, the data did not.
    trail.extend(std::iter::repeat_n(0u8, 3000));
    std::fs::write(&name, &trail).unwrap();
    let before = seqs(d.path()).len();
    start_and_stop(d.path());
    let r = verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(seqs(d.path()).len(), before + 3);
}
