//! `verify --collected`: the copy a central store holds of many chains,
//! interleaved, out of order, with duplicates and a relay's prefixes; gaps,
//! edits and conflicting records per chain, and `--against` a local trail.

mod common;

use std::path::{Path, PathBuf};
#[cfg(feature = "cli")]
use std::process::Command;

use common::{raw_lines, reseal};
use tracing_audit::trail::{verify_collected, CollectedOptions, CollectedReport};
use tracing_audit::{AuditLayer, FileSink};
use tracing_subscriber::layer::SubscriberExt;

fn run(dir: &Path, n: usize) {
    let (audit, guard) = AuditLayer::builder()
        .file(FileSink::new(dir))
        .build()
        .unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..n {
            tracing::info!(audit.event = "data_access", audit.actor = "a{b}", i, "read");
        }
    });
    drop(guard);
}

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Three instances' trails (two restarts each), merged the way a relay
/// writes them: interleaved, locally out of order, some lines twice, with
/// a syslog-style prefix (holding a `{`) or a BOM, and the relay's own
/// messages between them.
fn fleet() -> (Vec<tempfile::TempDir>, Vec<String>) {
    let dirs: Vec<_> = (0..3).map(|_| common::tempdir()).collect();
    for d in &dirs {
        run(d.path(), 40);
        run(d.path(), 40);
    }
    let mut queues: Vec<Vec<String>> = dirs.iter().map(|d| raw_lines(d.path())).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        let i = (rng.next() % 3) as usize;
        if queues[i].is_empty() {
            continue;
        }
        // Take one of the next four: local reordering.
        let k = (rng.next() % 4) as usize % queues[i].len();
        let line = queues[i].remove(k);
        let framed = match rng.next() % 3 {
            0 => format!(
                "2026-12-04T10:00:00Z web-{i} billing-api [audit@32473 actor=\"a{{b}}\"] {line}"
            ),
            1 => format!("\u{feff}{line}"),
            _ => line.clone(),
        };
        out.push(framed.clone());
        if rng.next().is_multiple_of(10) {
            out.push(framed); // resent
        }
        if rng.next().is_multiple_of(25) {
            out.push("rsyslogd: imrelp: session closed by peer".to_owned());
        }
    }
    (dirs, out)
}

fn write(dir: &Path, lines: &[String]) -> PathBuf {
    let p = dir.join("collected.log");
    std::fs::write(
        &p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    p
}

fn check(path: &Path) -> CollectedReport {
    verify_collected(&[path], &CollectedOptions::default()).unwrap()
}

#[test]
fn three_interleaved_chains_out_of_order_with_duplicates_verify() {
    let (dirs, lines) = fleet();
    let work = common::tempdir();
    let r = check(&write(work.path(), &lines));
    assert!(r.is_ok(), "{r:#?}");
    assert_eq!(r.chains.len(), 3);
    let total: usize = dirs.iter().map(|d| raw_lines(d.path()).len()).sum();
    assert_eq!(
        r.chains.iter().map(|c| c.records).sum::<u64>() as usize,
        total
    );
    let dups = r.chains.iter().map(|c| c.duplicates).sum::<u64>() as usize;
    let noise = r.not_records as usize;
    assert_eq!(
        total + dups + noise,
        lines.len(),
        "every line accounted for"
    );
    assert!(dups > 0 && noise > 0);
    for c in &r.chains {
        assert_eq!(c.first_seq, Some(0));
        assert!(c.gaps.is_empty());
    }
    #[cfg(feature = "cli")]
    {
        // The same through the command, from standard input.
        let out = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
            .args(["verify", "--collected", "-"])
            .stdin(std::fs::File::open(work.path().join("collected.log")).unwrap())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert_eq!(text.matches("OK     chain").count(), 3, "{text}");
    }
}

#[test]
fn gaps_edits_and_conflicts_are_reported_per_chain_with_their_place() {
    let (_dirs, lines) = fleet();
    let work = common::tempdir();
    // Which chain each line belongs to, and its seq.
    let parse = |l: &str| -> Option<serde_json::Value> {
        l.find("{\"schema\":")
            .and_then(|i| serde_json::from_str(&l[i..]).ok())
    };
    let first_chain = parse(&lines[0]).unwrap()["chain_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let of = |l: &str, seq: u64| {
        parse(l).is_some_and(|v| v["chain_id"] == first_chain.as_str() && v["seq"] == seq)
    };
    // 1. Drop seq 10 and 11 of one chain (every copy): a gap 10-11.
    let gapped: Vec<String> = lines
        .iter()
        .filter(|l| !of(l, 10) && !of(l, 11))
        .cloned()
        .collect();
    let r = check(&write(work.path(), &gapped));
    assert!(!r.is_ok());
    let c = r.chains.iter().find(|c| c.chain_id == first_chain).unwrap();
    assert_eq!(c.gaps, vec![(10, 11)], "{c:?}");
    assert!(r
        .chains
        .iter()
        .filter(|c| c.chain_id != first_chain)
        .all(|c| c.is_ok()));
    #[cfg(feature = "cli")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
            .args(["verify", "--json", "--collected"])
            .arg(work.path().join("collected.log"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let gaps: Vec<_> = v["report"]["chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["gaps"].clone())
            .collect();
        assert!(gaps.contains(&serde_json::json!([[10, 11]])), "{gaps:?}");
    }

    // 2. An edited record (one byte of its message): the first mismatch,
    // with the line it was read from.
    let mut edited = lines.clone();
    let at = edited.iter().position(|l| of(l, 20)).unwrap();
    edited[at] = edited[at].replacen("\"read\"", "\"reed\"", 1);
    let r = check(&write(work.path(), &edited));
    let c = r.chains.iter().find(|c| c.chain_id == first_chain).unwrap();
    let m = c.first_mismatch.as_ref().expect("mismatch");
    assert_eq!((m.seq, m.at.line), (20, at as u64 + 1), "{m:?}");

    // 3. A different record with the same seq, resealed to link (as anyone
    // can without a key): a conflict, which is tampering.
    let mut forged = lines.clone();
    let at = forged.iter().position(|l| of(l, 30)).unwrap();
    let prev = forged.iter().position(|l| of(l, 29)).unwrap();
    let body = &forged[at][forged[at].find("{\"schema\":").unwrap()..];
    let prev_body = &forged[prev][forged[prev].find("{\"schema\":").unwrap()..];
    let twin = reseal(&body.replacen("\"read\"", "\"deleted\"", 1), prev_body);
    forged.push(twin);
    let r = check(&write(work.path(), &forged));
    let c = r.chains.iter().find(|c| c.chain_id == first_chain).unwrap();
    assert_eq!(c.conflicting, 1, "{c:?}");
    assert_eq!(c.conflicts[0].seq, 30);
    assert!(!c.is_ok());
}

#[cfg(feature = "cli")]
#[test]
fn against_a_local_trail_names_what_the_central_copy_lacks() {
    let local = common::tempdir();
    run(local.path(), 30);
    let lines = raw_lines(local.path());
    let work = common::tempdir();
    // The central copy lost records 5..=7 and everything from 25 on.
    let central: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !(5..=7).contains(i) && *i < 25)
        .map(|(_, l)| l.clone())
        .collect();
    let path = write(work.path(), &central);
    let out = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(["verify", "--json", "--collected"])
        .arg(&path)
        .arg("--against")
        .arg(local.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = lines.len() as u64 - 1;
    assert_eq!(
        v["against"]["missing"],
        serde_json::json!([[5, 7], [25, last]]),
        "{v}"
    );
    // Complete: exit 0, nothing lacking.
    let path = write(work.path(), &lines);
    let out = Command::new(env!("CARGO_BIN_EXE_tracing-audit"))
        .args(["verify", "--collected"])
        .arg(&path)
        .arg("--against")
        .arg(local.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("holds every record of the local trail"),
        "{text}"
    );
}

#[test]
fn a_record_beyond_the_window_is_late_and_an_in_order_copy_needs_no_window() {
    let local = common::tempdir();
    run(local.path(), 50);
    let mut lines = raw_lines(local.path());
    let work = common::tempdir();
    // In order, a window of 1 suffices.
    let path = write(work.path(), &lines);
    let r = verify_collected(&[&path], &CollectedOptions::default().window(1)).unwrap();
    assert!(r.is_ok(), "{r:?}");
    // Record 3 moved to the end: further out than a window of 8.
    let moved = lines.remove(3);
    lines.push(moved);
    let path = write(work.path(), &lines);
    let r = verify_collected(&[&path], &CollectedOptions::default().window(8)).unwrap();
    let c = &r.chains[0];
    assert_eq!((c.gaps.clone(), c.late), (vec![(3, 3)], 1), "{c:?}");
    // Within the default window it is only reordering.
    assert!(check(&path).is_ok());
}

#[test]
fn a_sealed_line_that_is_not_a_record_of_the_schema_is_not_accepted() {
    let local = common::tempdir();
    run(local.path(), 5);
    let mut lines = raw_lines(local.path());
    // An unknown risk, resealed so that its hash checks (anyone can, for
    // an unkeyed trail): not a record, as `verify` says too.
    let at = lines.iter().position(|l| l.contains("\"i\":2")).unwrap();
    let bad = lines[at].replacen("\"risk_level\":\"low\"", "\"risk_level\":\"severe\"", 1);
    assert_ne!(bad, lines[at]);
    lines[at] = reseal(&bad, &lines[at - 1]);
    for i in at + 1..lines.len() {
        lines[i] = reseal(&lines[i], &lines[i - 1].clone());
    }
    let work = common::tempdir();
    let r = check(&write(work.path(), &lines));
    assert!(!r.is_ok());
    let m = r.chains[0].first_mismatch.as_ref().expect("refused");
    assert_eq!(m.at.line, at as u64 + 1);
    assert!(
        m.detail.contains("not a record of the schema"),
        "{}",
        m.detail
    );
}
