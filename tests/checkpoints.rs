//! Signed checkpoints: `keygen`, checkpoints every N records / T seconds
//! and at stop, `verify --pubkey`; a trail cut after its last checkpoint
//! shows an unverified tail, and whoever can rewrite the files (and even
//! reseal the whole unkeyed chain) but cannot sign gets a BadCheckpoint.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
#[cfg(feature = "cli")]
use std::process::Command;
use std::time::Duration;

use common::{audit_files, raw_lines, read_trail, reseal};
use tracing_audit::record::checkpoint::{keygen, CheckpointKey, CheckpointPublicKey};
use tracing_audit::trail::{verify_opts, FailureKind, VerifyOptions, VerifyReport};
use tracing_audit::{AuditLayer, FileSink};
use tracing_subscriber::layer::SubscriberExt;

#[cfg(feature = "cli")]
fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
}

fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    keygen(dir.join("signer")).unwrap()
}

/// One run: `n` events, checkpoints every `every` records.
fn run(dir: &Path, key: &Path, every: u64, n: usize) {
    run_paced(dir, key, every, n, true);
}

/// `n` records, checkpoints every `every`; `paced`: a short pause every
/// seven records, so that the worker takes small batches; without it, a
/// burst the worker takes in batches of many times `every`.
fn run_paced(dir: &Path, key: &Path, every: u64, n: usize, paced: bool) {
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(dir))
        .signing_key_file(key)
        .checkpoint_every(every, Duration::from_secs(3600))
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..n {
            tracing::info!(audit.event = "data_access", audit.actor = "bob", i, "read");
            if paced && i % 7 == 6 {
                // Let the worker take a batch, so checkpoints fall between.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    drop(guard);
}

fn check(dir: &Path, public: &Path) -> VerifyReport {
    let opts = VerifyOptions::default().checkpoint_key(CheckpointPublicKey::read(public).unwrap());
    verify_opts(&FileSink::new(dir), None, &opts).unwrap()
}

/// `lines` without its last `n` (and without any checkpoint then last).
fn cut(lines: &[String], n: usize) -> &[String] {
    let mut kept = &lines[..lines.len() - n];
    while kept
        .last()
        .is_some_and(|l| l.contains("\"event_type\":\"checkpoint\""))
    {
        kept = &kept[..kept.len() - 1];
    }
    kept
}

fn rewrite(dir: &Path, lines: &[String]) {
    let files = audit_files(dir);
    assert_eq!(files.len(), 1);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&files[0], text).unwrap();
}

#[cfg(feature = "cli")]
#[test]
fn keygen_writes_a_private_key_only_the_owner_reads_and_never_overwrites() {
    let d = common::tempdir();
    let out = cli()
        .arg("keygen")
        .arg(d.path().join("k"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = d.path().join("k.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
    // Nothing of the key on the terminal.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains(text.lines().nth(1).unwrap()), "{said}");
    let public = CheckpointPublicKey::read(d.path().join("k.pub")).unwrap();
    assert_eq!(CheckpointKey::read(&key).unwrap().public(), public);
    // Never overwritten.
    let again = cli()
        .arg("keygen")
        .arg(d.path().join("k"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let d = common::tempdir();
    let (key, _) = keys(d.path());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(
        keygen(d.path().join("signer")).is_err(),
        "never overwritten"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = AuditLayer::builder()
        .file(d.path().join("trail"))
        .signing_key_file(&key)
        .build::<tracing_subscriber::Registry>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(text.lines().nth(1).unwrap()));
}

#[test]
fn checkpoints_every_n_records_and_at_stop_cover_the_whole_trail() {
    let d = common::tempdir();
    let (key, public) = keys(d.path());
    let trail = d.path().join("trail");
    run(&trail, &key, 10, 45);
    run(&trail, &key, 10, 20);
    run_paced(&trail, &key, 10, 2000, false);
    let recs = read_trail(&trail);
    let cps: Vec<_> = recs
        .iter()
        .filter(|r| r["event_type"] == "checkpoint")
        .collect();
    // One at each stop, and in between one right after every tenth record
    // since the last, even inside the burst's batches of hundreds.
    assert!(cps.len() >= 3 + 200, "{} checkpoints", cps.len());
    common::assert_checkpoints_every(&recs, 10);
    // Each run ends: audit_stopped, then the checkpoint at stop.
    let last = recs.last().unwrap();
    assert_eq!(last["event_type"], "checkpoint");
    assert_eq!(last["details"]["at_stop"], true);
    assert_eq!(recs[recs.len() - 2]["event_type"], "audit_stopped");
    let r = check(&trail, &public);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.checkpoints as usize, cps.len());
    assert_eq!(r.unverified_tail, Some(0), "{r:?}");
    // The restart recognised the clean stop behind the final checkpoint.
    let second_start = recs
        .iter()
        .filter(|r| r["event_type"] == "audit_started")
        .nth(1)
        .unwrap();
    assert_eq!(
        second_start["details"]["clean_stop"], true,
        "{second_start}"
    );
    #[cfg(feature = "cli")]
    {
        // The command says so too.
        let out = cli()
            .args(["verify"])
            .arg(&trail)
            .arg("--pubkey")
            .arg(&public)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("covers the whole trail"), "{text}");
    }
}

/// The trail's own records count toward a checkpoint as the application's
/// do: a file rotated by size every few records starts with an
/// `audit_file_opened` of the trail's own, and a checkpoint follows it when
/// it is the record that reaches the count (not only after the next
/// record from the application, which could be long in coming).
#[test]
fn the_trails_own_records_count_toward_a_checkpoint() {
    let d = common::tempdir();
    let (key, public) = keys(d.path());
    let trail = d.path().join("trail");
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(&trail).max_file_size(1_200))
        .signing_key_file(&key)
        .checkpoint_every(3, Duration::from_secs(3600))
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..120 {
            tracing::info!(audit.event = "data_access", audit.actor = "bob", i, "read");
            if i % 2 == 1 {
                // Small batches, so that rotations fall between records.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    drop(guard);
    let mut recs = read_trail(&trail);
    recs.sort_by_key(|r| r["seq"].as_u64().unwrap());
    let opened = recs
        .iter()
        .filter(|r| r["event_type"] == "audit_file_opened")
        .count();
    assert!(opened >= 10, "{opened} files opened");
    // Some file's own first record was the one that reached the count.
    let after_opened = recs
        .windows(2)
        .filter(|w| w[0]["event_type"] == "audit_file_opened" && w[1]["event_type"] == "checkpoint")
        .count();
    assert!(
        after_opened > 0,
        "no checkpoint right after a file's first record"
    );
    common::assert_checkpoints_every(&recs, 3);
    let r = check(&trail, &public);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.unverified_tail, Some(0), "{r:?}");
}

#[test]
fn a_trail_cut_after_its_last_checkpoint_has_an_unverified_tail() {
    let d = common::tempdir();
    let (key, public) = keys(d.path());
    let trail = d.path().join("trail");
    run(&trail, &key, 10, 45);
    let lines = raw_lines(&trail);
    // Cut the last records (the stop checkpoint among them): the chain
    // alone still verifies, as a shorter trail.
    let kept = cut(&lines, 6);
    rewrite(&trail, kept);
    let plain = tracing_audit::verify(&trail, None).unwrap();
    assert!(plain.is_ok(), "{plain:?}");
    let r = check(&trail, &public);
    assert!(r.is_ok(), "{r:?}");
    let recs = read_trail(&trail);
    let last_cp = recs
        .iter()
        .rev()
        .find(|r| r["event_type"] == "checkpoint")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let last = recs.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(r.last_checkpoint_seq, Some(last_cp));
    assert_eq!(r.unverified_tail, Some(last - last_cp));
    assert!(
        last > last_cp,
        "the cut left records after the last checkpoint"
    );
    #[cfg(feature = "cli")]
    {
        let out = cli()
            .args(["verify"])
            .arg(&trail)
            .arg("--pubkey")
            .arg(&public)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("UNVERIFIED TAIL"), "{text}");
    }
}

#[test]
fn whoever_cannot_sign_cannot_rewrite_history_or_forge_a_checkpoint() {
    let d = common::tempdir();
    let (key, public) = keys(d.path());
    let trail = d.path().join("trail");
    run(&trail, &key, 10, 45);
    let lines = raw_lines(&trail);

    // 1. Edit a record in the middle and reseal everything after it (an
    // unkeyed chain lets anyone do that): the chain verifies, the next
    // checkpoint names the old hash.
    let mut edited = lines.clone();
    let at = edited.iter().position(|l| l.contains("\"i\":5")).unwrap();
    edited[at] = edited[at].replacen("\"actor\":\"bob\"", "\"actor\":\"eve\"", 1);
    for i in at..edited.len() {
        let prev = if i == 0 {
            String::new()
        } else {
            edited[i - 1].clone()
        };
        edited[i] = reseal(&edited[i], &prev);
    }
    rewrite(&trail, &edited);
    assert!(tracing_audit::verify(&trail, None).unwrap().is_ok());
    let f = check(&trail, &public).failure.expect("rewritten history");
    assert_eq!(f.kind, FailureKind::BadCheckpoint, "{f:?}");
    assert!(f.kind.is_tampering());

    // 2. A checkpoint whose signature is altered.
    let mut forged = lines.clone();
    let cp = forged
        .iter()
        .position(|l| l.contains("\"event_type\":\"checkpoint\""))
        .unwrap();
    let sig_at = forged[cp].find("\"signature\":\"").unwrap() + 13;
    let flipped = if &forged[cp][sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    forged[cp].replace_range(sig_at..sig_at + 1, flipped);
    for i in cp..forged.len() {
        forged[i] = reseal(&forged[i], &forged[i - 1].clone());
    }
    rewrite(&trail, &forged);
    let f = check(&trail, &public).failure.expect("altered signature");
    assert_eq!(f.kind, FailureKind::BadCheckpoint);
    assert!(f.detail.contains("does not verify"), "{}", f.detail);

    // 3. Records appended after the stop with a checkpoint signed by the
    // attacker's own key: not one of the keys given.
    let mut appended = lines.clone();
    let theirs = CheckpointKey::generate().unwrap();
    let last: serde_json::Value = serde_json::from_str(appended.last().unwrap()).unwrap();
    let line = appended[appended.len() - 1].clone();
    // Their "checkpoint": the real one with their key id and signature.
    let mut fake = line.replacen(
        last["details"]["key_id"].as_str().unwrap(),
        &theirs.public().key_id(),
        1,
    );
    fake = fake.replacen(
        &format!("\"seq\":{},", last["seq"]),
        &format!("\"seq\":{},", last["seq"].as_u64().unwrap() + 1),
        1,
    );
    appended.push(reseal(&fake, &line));
    rewrite(&trail, &appended);
    let f = check(&trail, &public).failure.expect("a foreign key");
    assert!(
        matches!(f.kind, FailureKind::BadCheckpoint | FailureKind::Foreign),
        "{f:?}"
    );
    assert!(f.kind.is_tampering());

    // The genuine trail, for contrast.
    rewrite(&trail, &lines);
    assert!(check(&trail, &public).is_ok());
    // And under the wrong public key every checkpoint is refused.
    let (_, other) = keygen(d.path().join("other")).unwrap();
    let f = check(&trail, &other).failure.expect("wrong public key");
    assert_eq!(f.kind, FailureKind::BadCheckpoint);
}

#[test]
fn a_checkpoint_after_an_idle_interval_and_the_key_from_the_environment() {
    let d = common::tempdir();
    let (key, public) = keys(d.path());
    let pem = std::fs::read_to_string(&key).unwrap();
    std::env::set_var("TRACING_AUDIT_TEST_SIGNING_KEY", &pem);
    let trail = d.path().join("trail");
    let builder = AuditLayer::builder()
        .file(FileSink::new(&trail))
        .signing_key_env("TRACING_AUDIT_TEST_SIGNING_KEY")
        .checkpoint_every(1_000_000, Duration::from_millis(100));
    assert!(!format!("{builder:?}").contains(pem.lines().nth(1).unwrap()));
    let (audit, guard) = builder.build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        tracing::info!(audit.event = "data_access", "one");
    });
    // The worker looks at least once per sync interval (1 s).
    std::thread::sleep(Duration::from_millis(1600));
    drop(guard);
    let recs = read_trail(&trail);
    let cps = recs
        .iter()
        .filter(|r| r["event_type"] == "checkpoint")
        .count();
    assert!(cps >= 2, "one for the interval, one at stop: {recs:?}");
    let r = check(&trail, &public);
    assert!(r.is_ok() && r.unverified_tail == Some(0), "{r:?}");
    // An unset or non-key variable fails the build, saying which.
    let err = AuditLayer::builder()
        .file(d.path().join("t2"))
        .signing_key_env("TRACING_AUDIT_TEST_NO_SUCH_VAR")
        .build::<tracing_subscriber::Registry>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("TRACING_AUDIT_TEST_NO_SUCH_VAR"), "{err}");
}

#[test]
fn the_collected_copy_checks_checkpoints_per_chain() {
    use tracing_audit::trail::{verify_collected, CollectedOptions};
    let d = common::tempdir();
    let (key, public) = keys(d.path());
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    run(&a, &key, 10, 30);
    run(&b, &key, 10, 30);
    let (la, lb) = (raw_lines(&a), raw_lines(&b));
    let opts =
        CollectedOptions::default().checkpoint_key(CheckpointPublicKey::read(&public).unwrap());
    let export = d.path().join("export.log");
    let write = |lines: Vec<&String>| {
        let text: String = lines
            .iter()
            .map(|l| format!("<14>1 relay: {l}\n"))
            .collect();
        std::fs::write(&export, text).unwrap();
    };
    // Interleaved, complete: both chains end in their stop checkpoint. Were
    // the two runs to differ in length (a slow machine, another record of
    // the trail's own), the longer one's rest follows; `zip` alone cut it.
    let mut both: Vec<&String> = la.iter().zip(&lb).flat_map(|(x, y)| [x, y]).collect();
    let common = la.len().min(lb.len());
    both.extend(la[common..].iter().chain(&lb[common..]));
    assert_eq!(both.len(), la.len() + lb.len());
    write(both);
    let r = verify_collected(&[&export], &opts).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(r
        .chains
        .iter()
        .all(|c| c.unverified_tail == Some(0) && c.checkpoints >= 2));
    // Chain b cut at its end (4 records or more, so that a record other
    // than a checkpoint is last): still intact, with a tail.
    write(la.iter().chain(cut(&lb, 4)).collect());
    let r = verify_collected(&[&export], &opts).unwrap();
    let tails: Vec<_> = r
        .chains
        .iter()
        .map(|c| c.unverified_tail.unwrap())
        .collect();
    assert!(
        tails.contains(&0) && tails.iter().any(|t| *t > 0),
        "{tails:?}"
    );
    // A checkpoint resealed with a changed signature: bad, on that chain.
    let mut forged = la.clone();
    let cp = forged
        .iter()
        .position(|l| l.contains("\"event_type\":\"checkpoint\""))
        .unwrap();
    let sig_at = forged[cp].find("\"signature\":\"").unwrap() + 13;
    let flipped = if &forged[cp][sig_at..sig_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    forged[cp].replace_range(sig_at..sig_at + 1, flipped);
    for i in cp..forged.len() {
        forged[i] = reseal(&forged[i], &forged[i - 1].clone());
    }
    write(forged.iter().chain(&lb).collect());
    let r = verify_collected(&[&export], &opts).unwrap();
    assert!(!r.is_ok());
    let bad: Vec<_> = r
        .chains
        .iter()
        .filter(|c| c.bad_checkpoint.is_some())
        .collect();
    assert_eq!(bad.len(), 1, "{r:?}");
    assert_eq!(
        bad[0].bad_checkpoint.as_ref().unwrap().at.line,
        cp as u64 + 1
    );
    // Without keys, checkpoints are counted and not judged.
    let r = verify_collected(&[&export], &CollectedOptions::default()).unwrap();
    assert!(r.is_ok() && r.chains.iter().all(|c| c.unverified_tail.is_none()));
}
