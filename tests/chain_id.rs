//! Chain identity (schema 2 on): every record carries the `chain_id` its
//! directory's chain got when it started, kept across restarts and
//! rotation; schema 1 trails (no id) and schema 2 trails (`seq` and
//! `chain_id` before the body) are still read, verified and continued; a
//! record of another chain is caught even when it links.

mod common;

use std::path::Path;

use common::{audit_files, raw_lines, read_trail, reseal};
use tracing_audit::{
    record::AuditRecord, trail::AuditTrail, trail::FailureKind, verify, AuditLayer, FileSink,
};
use tracing_subscriber::layer::SubscriberExt;

/// One process lifetime: start, `n` events, clean stop.
fn run(sink: FileSink, n: usize) {
    let (audit, guard) = AuditLayer::builder().file(sink).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
        for i in 0..n {
            tracing::info!(audit.event = "data_access", audit.actor = "bob", i, "read");
        }
    });
    drop(guard);
}

fn chain_ids(dir: &Path) -> Vec<String> {
    read_trail(dir)
        .iter()
        .map(|r| r["chain_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn one_chain_id_across_restarts_and_rotation_and_another_per_directory() {
    let a = common::tempdir();
    for _ in 0..3 {
        run(FileSink::new(a.path()).max_file_size(8 * 1024), 60);
    }
    assert!(audit_files(a.path()).len() > 3, "rotated by size");
    let ids = chain_ids(a.path());
    let app = read_trail(a.path())
        .iter()
        .filter(|r| r["event_type"] == "data_access")
        .count();
    assert_eq!(app, 3 * 60);
    let id = uuid::Uuid::parse_str(&ids[0]).unwrap();
    assert_eq!(id.get_version_num(), 7, "made when the chain started");
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let r = verify(a.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.chain_id.as_deref(), Some(ids[0].as_str()));
    // The verifier still finds each record's time after the chain id.
    let times: Vec<_> = read_trail(a.path())
        .iter()
        .map(|r| r["timestamp"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(r.first_time.as_deref(), times.first().map(String::as_str));
    assert_eq!(r.last_time.as_deref(), times.last().map(String::as_str));

    let b = common::tempdir();
    run(FileSink::new(b.path()), 1);
    assert_ne!(
        chain_ids(b.path())[0],
        ids[0],
        "each directory its own chain"
    );
    // The reader exposes it.
    let trail = AuditTrail::open(a.path()).unwrap();
    let first: AuditRecord = trail.records().next().unwrap().unwrap();
    assert_eq!(
        (first.schema, first.chain_id.as_deref()),
        (3, Some(ids[0].as_str()))
    );
}

/// `line` (schema 3, as written now) in the layout an older version wrote:
/// schema 2 (`seq` and `chain_id` right after the id) or schema 1 (`seq`
/// there, no `chain_id`). Not resealed.
fn in_older_layout(line: &str, schema: u32) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let (id, seq, chain) = (
        v["audit_id"].as_str().unwrap(),
        v["seq"].as_u64().unwrap(),
        v["chain_id"].as_str().unwrap(),
    );
    let tail = format!(",\"seq\":{seq},\"chain_id\":\"{chain}\",\"prev_hash\":");
    let at = line.rfind(&tail).unwrap();
    let body_at = "{\"schema\":3,\"audit_id\":\"".len() + 36 + 1;
    assert!(line.starts_with("{\"schema\":3,"), "{line}");
    let head = match schema {
        2 => format!("{{\"schema\":2,\"audit_id\":\"{id}\",\"seq\":{seq},\"chain_id\":\"{chain}\""),
        _ => format!("{{\"schema\":1,\"audit_id\":\"{id}\",\"seq\":{seq}"),
    };
    let rest = &line[at + tail.len() - ",\"prev_hash\":".len()..];
    format!("{head}{}{rest}", &line[body_at..at])
}

/// Rewrites a trail as the schema 1 trail an older version would have
/// written: no `chain_id`, `"schema":1`, resealed (unkeyed).
fn downgrade_to_schema_1(dir: &Path) {
    let files = audit_files(dir);
    let mut prev: Option<String> = None;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            let v1 = in_older_layout(line, 1);
            let sealed = match &prev {
                Some(p) => reseal(&v1, p),
                None => reseal(
                    &v1,
                    "x\"0000000000000000000000000000000000000000000000000000000000000000\"}",
                ),
            };
            out.push_str(&sealed);
            out.push('\n');
            prev = Some(sealed);
        }
        std::fs::write(&f, out).unwrap();
    }
}

#[test]
fn a_schema_1_trail_is_read_verified_and_continued_under_one_new_id() {
    let d = common::tempdir();
    run(FileSink::new(d.path()), 5);
    downgrade_to_schema_1(d.path());
    let r = verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "a schema 1 trail verifies: {r:?}");
    assert_eq!((r.records, r.chain_id.as_deref()), (7, None));
    assert!(r.first_time.is_some() && r.last_time.is_some(), "{r:?}");
    let old: Vec<AuditRecord> = AuditTrail::open(d.path())
        .unwrap()
        .records()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(old.iter().all(|r| r.schema == 1 && r.chain_id.is_none()));

    // This version continues it: the new records get one chain id.
    run(FileSink::new(d.path()), 3);
    run(FileSink::new(d.path()), 3);
    let all = read_trail(d.path());
    assert_eq!(all.len(), 7 + 5 + 5);
    let new_ids: Vec<_> = all[7..].iter().map(|r| r["chain_id"].clone()).collect();
    assert!(new_ids.iter().all(|i| *i == new_ids[0] && i.is_string()));
    assert!(all[..7].iter().all(|r| r["schema"] == 1));
    let r = verify(d.path(), None).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        r.chain_id.as_ref(),
        new_ids[0].as_str().map(str::to_owned).as_ref()
    );
    assert_eq!(r.records, 17);
}

#[test]
fn a_record_of_another_chain_is_caught_even_when_it_links() {
    // Two trails; the last record of B, resealed to link after A's last
    // record (anyone can for an unkeyed trail), keeps B's chain id.
    let a = common::tempdir();
    let b = common::tempdir();
    run(FileSink::new(a.path()), 2);
    run(FileSink::new(b.path()), 2);
    let a_lines = raw_lines(a.path());
    let b_lines = raw_lines(b.path());
    let last_a = a_lines.last().unwrap();
    let foreign = reseal(b_lines.last().unwrap(), last_a);
    let seq_a = read_trail(a.path()).last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    // Give it the next seq, so only the chain id is wrong.
    let v: serde_json::Value = serde_json::from_str(&foreign).unwrap();
    let foreign = foreign.replacen(
        &format!("\"seq\":{},", v["seq"]),
        &format!("\"seq\":{},", seq_a + 1),
        1,
    );
    let foreign = reseal(&foreign, last_a);
    let file = audit_files(a.path()).pop().unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&foreign);
    text.push('\n');
    std::fs::write(&file, text).unwrap();
    let r = verify(a.path(), None).unwrap();
    let f = r.failure.expect("another chain's record must fail");
    // After a clean stop the verifier may see it as foreign first; either
    // way it is tampering, and never accepted.
    assert!(
        matches!(f.kind, FailureKind::OtherChain | FailureKind::Foreign),
        "{f:?}"
    );
    assert!(f.kind.is_tampering());

    // Mid-trail (no clean stop before it): exactly OtherChain.
    let c = common::tempdir();
    run(FileSink::new(c.path()), 2);
    let file = audit_files(c.path()).pop().unwrap();
    let lines = raw_lines(c.path());
    // Replace the stop record (last) with a same-seq record of chain B.
    let stop = lines.last().unwrap();
    let stop_v: serde_json::Value = serde_json::from_str(stop).unwrap();
    let other = uuid::Uuid::now_v7().to_string();
    let swapped = stop.replacen(stop_v["chain_id"].as_str().unwrap(), &other, 1);
    let swapped = reseal(&swapped, &lines[lines.len() - 2]);
    let mut text: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&swapped);
    text.push('\n');
    std::fs::write(&file, text).unwrap();
    let r = verify(c.path(), None).unwrap();
    let f = r.failure.expect("a changed chain id must fail");
    assert_eq!(f.kind, FailureKind::OtherChain, "{f:?}");
    assert!(f.detail.contains(&other), "{}", f.detail);

    // A schema 1 record after schema 3 records is caught the same way.
    let d = common::tempdir();
    run(FileSink::new(d.path()), 2);
    let file = audit_files(d.path()).pop().unwrap();
    let lines = raw_lines(d.path());
    let stop = lines.last().unwrap();
    let v1 = reseal(&in_older_layout(stop, 1), &lines[lines.len() - 2]);
    let mut text: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&v1);
    text.push('\n');
    std::fs::write(&file, text).unwrap();
    let f = verify(d.path(), None).unwrap().failure.unwrap();
    assert_eq!(f.kind, FailureKind::OtherChain, "{f:?}");
}

#[test]
fn the_reader_refuses_a_schema_that_does_not_match_its_chain_id() {
    let d = common::tempdir();
    run(FileSink::new(d.path()), 1);
    let line = raw_lines(d.path())[0].clone();
    assert!(AuditRecord::parse(line.as_bytes()).is_ok());
    let v2 = in_older_layout(&line, 2);
    assert_eq!(AuditRecord::parse(v2.as_bytes()).unwrap().schema, 2);
    // Schema 1 with a chain id, schemas 2 and 3 without, a chain id that
    // is not a UUID, an unknown schema: not records.
    let v1_with_id = line.replacen("{\"schema\":3,", "{\"schema\":1,", 1);
    let at = line.find(",\"chain_id\":\"").unwrap();
    let v3_without = format!("{}{}", &line[..at], &line[at + 13 + 36 + 1..]);
    let v2_without = v3_without.replacen("{\"schema\":3,", "{\"schema\":2,", 1);
    let bad_id = format!(
        "{}not-a-uuid-but-36-characters-long!!{}",
        &line[..at + 13],
        &line[at + 13 + 36..]
    );
    let v4 = line.replacen("{\"schema\":3,", "{\"schema\":4,", 1);
    for bad in [v1_with_id, v3_without, v2_without, bad_id, v4] {
        assert!(AuditRecord::parse(bad.as_bytes()).is_err(), "{bad}");
    }
}

/// The schema 2 trails in `tests/fixtures/schema2` were written by this
/// crate before schema 3 (two runs each, one unkeyed, one under
/// [`FIXTURE_KEY`]). They verify as they are, and this version continues
/// each chain in schema 3: the old lines untouched, one chain id, `seq`
/// contiguous across the change, the whole trail verifying (the keyed one
/// under its key only). The new lines put `seq` and `chain_id` after the
/// body.
#[test]
fn a_schema_2_trail_written_before_is_verified_and_continued_in_schema_3() {
    const FIXTURE_KEY: &[u8] = b"schema-2-fixture-key-0123456789ab";
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema2");
    for (name, key) in [("plain", None), ("keyed", Some(FIXTURE_KEY))] {
        let d = common::tempdir();
        let src = fixtures.join(name).join("audit.2026-12-06.jsonl");
        let old_text = std::fs::read_to_string(&src).unwrap();
        let dst = d.path().join("audit.2026-12-06.jsonl");
        std::fs::write(&dst, &old_text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
        let old: Vec<&str> = old_text.lines().collect();
        let r = verify(d.path(), key).unwrap();
        assert!(r.is_ok(), "{name}: the fixture verifies: {r:?}");
        assert_eq!(r.records, old.len() as u64, "{name}");

        let mut b = AuditLayer::builder().file(FileSink::new(d.path()));
        if let Some(k) = key {
            b = b.chain_key(k.to_vec());
        }
        let (audit, guard) = b.build().unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(audit), || {
            for i in 0..40 {
                tracing::info!(audit.event = "data_access", audit.actor = "bob", i, "read");
            }
        });
        drop(guard);

        let lines = raw_lines(d.path());
        assert_eq!(&lines[..old.len()], &old[..], "{name}: old lines untouched");
        let all = read_trail(d.path());
        let chain = all[0]["chain_id"].as_str().unwrap().to_owned();
        for (i, r) in all.iter().enumerate() {
            let want = if i < old.len() { 2 } else { 3 };
            assert_eq!(r["schema"], want, "{name} {i}");
            assert_eq!(r["seq"], i as u64, "{name} {i}");
            assert_eq!(r["chain_id"].as_str(), Some(chain.as_str()), "{name} {i}");
        }
        assert!(all.len() >= old.len() + 40 + 2, "{name}: {}", all.len());
        for line in &lines[old.len()..] {
            let seq_at = line.rfind(",\"seq\":").unwrap();
            assert!(line[..seq_at].ends_with("\"span\":null}"), "{name}: {line}");
            assert!(line.starts_with("{\"schema\":3,\"audit_id\":\""), "{line}");
        }
        let r = verify(d.path(), key).unwrap();
        assert!(r.is_ok(), "{name}: schema 2 then 3 verifies: {r:?}");
        assert_eq!(r.records, all.len() as u64, "{name}");
        assert_eq!(r.chain_id.as_deref(), Some(chain.as_str()), "{name}");
        if key.is_some() {
            let wrong = verify(d.path(), Some(b"another key")).unwrap();
            assert!(!wrong.is_ok(), "{name}: another key must fail: {wrong:?}");
        }
    }
}
