//! Where a restart resumes the chain, whatever state a crash left.
//!
//! The newest files are read backwards, line by line, to the last line that
//! checks under the chain's hasher. Everything after it is *junk*: a torn
//! line (a crash mid-write), a torn line a previous restart already ended
//! with `\n` before it died too, a run of NUL bytes (ext4 leaves those when a
//! file's size reached the disk before its data), or bytes someone appended.
//! Each piece (bytes between newlines) is named by file, offset, length and
//! SHA-256, so the next `audit_started` seals exactly what was skipped, and
//! `verify` accepts those bytes only if they are still the same.
//!
//! - **A sealed record is never demoted.** A last line that is a complete
//!   record missing only bytes after its hash (the closing `"`, `}`, the
//!   newline) is completed and kept; the chain continues after it.
//! - **Nothing follows a clean stop.** If the last record is `audit_stopped`,
//!   that process wrote, synced and exited: junk after it cannot come from a
//!   crash, and is named *foreign* instead of *torn*.
//! - A trail of which no line checks under the configured key (a key change,
//!   or not a trail) is refused rather than forked at genesis.
//!
//! Junk pieces without a newline are ended with one, so the next record
//! starts on a line of its own. Nothing else is ever changed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{file_name, list_files, FileSink};
use crate::error::Error;
use crate::record::chain::{self, Hasher};
use crate::record::encode;

/// Longest line considered as a record; records are cut far below this.
pub(crate) const MAX_LINE: u64 = crate::sink::file::lines::MAX_LINE as u64;
/// Most junk bytes looked through before a restart gives up.
const MAX_JUNK: u64 = 1 << 30;

/// One run of bytes between newlines that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Junk {
    pub(crate) file: String,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub(crate) sha256: String,
}

impl Junk {
    /// `{"file":…,"offset":…,"bytes":…,"sha256":…}`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"file\":");
        encode::write_plain_str(out, &self.file);
        out.extend_from_slice(b",\"offset\":");
        encode::write_u64(out, self.offset);
        out.extend_from_slice(b",\"bytes\":");
        encode::write_u64(out, self.len);
        out.extend_from_slice(b",\"sha256\":\"");
        out.extend_from_slice(self.sha256.as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

/// Where the chain stands on disk when a process starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// `seq` and `hash` of the last record that checks, if any.
    pub(crate) last: Option<(u64, String)>,
    /// That record's `chain_id` (`None` for a schema 1 record, written
    /// before chains had ids).
    pub(crate) chain_id: Option<uuid::Uuid>,
    /// Whether that record is `audit_stopped` (the last run stopped cleanly).
    pub(crate) clean_stop: bool,
    /// Junk after it, oldest first.
    pub(crate) junk: Vec<Junk>,
    /// A last record that had lost only bytes after its hash, and was
    /// completed: file and the bytes added.
    pub(crate) completed: Option<(String, u64)>,
}

/// Finds the last record that checks and names everything after it.
pub(crate) fn find_resume(sink: &FileSink, dir: &Path, hasher: &Hasher) -> Result<Resume, Error> {
    let ctx = |what: &'static str| move |e| Error::io(what, dir, e);
    let files = list_files(dir, &sink.prefix, &sink.suffix).map_err(ctx("list audit directory"))?;
    let mut resume = Resume::default();
    let mut junk_rev: Vec<Junk> = Vec::new();
    let mut budget = MAX_JUNK;
    for path in files.iter().rev() {
        let found = scan_file(path, hasher, &mut junk_rev, &mut budget, &mut resume)
            .map_err(|e| Error::io("read audit file", path, e))?;
        if let Some(line) = found {
            let link = chain::check_line(hasher, &line)
                .map_err(|_| Error::Config("resume: a record stopped checking".into()))?;
            resume.last = Some((link.seq, link.hash.to_owned()));
            resume.chain_id = link.chain_id.and_then(|id| uuid::Uuid::parse_str(id).ok());
            resume.clean_stop = is_clean_stop(&line);
            break;
        }
        if budget == 0 {
            return Err(Error::Config(format!(
                "the audit files in {} end in more than {MAX_JUNK} bytes that are not records; move them away before starting",
                dir.display()
            )));
        }
    }
    if resume.last.is_none() && junk_rev.iter().any(|j| j.len > 0) {
        return Err(Error::Config(format!(
            "no line of the audit files in {} checks under the configured chain {}: the trail was written under another key (or is not a trail); start a new directory",
            dir.display(),
            hasher.algorithm()
        )));
    }
    junk_rev.reverse();
    resume.junk = junk_rev;
    Ok(resume)
}

/// The last line of a compressed file that checks, read forwards (a
/// compressed file was complete when it was compressed, and was read back
/// by a restart before that: it holds nothing new to report).
fn last_checking_line(path: &Path, hasher: &Hasher) -> io::Result<Option<Vec<u8>>> {
    let mut r = io::BufReader::new(super::open_read(path)?);
    let (mut line, mut last) = (Vec::new(), None);
    loop {
        let read = crate::sink::file::lines::next_line(&mut r, &mut line)?;
        if read.consumed == 0 {
            return Ok(last);
        }
        if chain::check_line(hasher, &line).is_ok() {
            last = Some(line.clone());
        }
    }
}

/// Scans `path` backwards; pushes junk pieces (newest first) and returns
/// the last line that checks, if the file has one.
fn scan_file(
    path: &Path,
    hasher: &Hasher,
    junk: &mut Vec<Junk>,
    budget: &mut u64,
    resume: &mut Resume,
) -> io::Result<Option<Vec<u8>>> {
    if super::is_compressed(path) {
        return last_checking_line(path, hasher);
    }
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let name = file_name(path);
    let mut end = len;
    if len > 0 && read_byte(&f, len - 1)? != b'\n' {
        // The last piece has no newline: a complete record missing only its
        // last bytes, or junk.
        let start = prev_newline(&mut f, len)?.map_or(0, |p| p + 1);
        if len - start <= MAX_LINE {
            let line = read_range(&f, start, len - start)?;
            for tail in [&b""[..], b"}", b"\"}"] {
                let mut whole = line.clone();
                whole.extend_from_slice(tail);
                if chain::check_line(hasher, &whole).is_ok() {
                    let mut add = tail.to_vec();
                    add.push(b'\n');
                    append(path, len, &add)?;
                    resume.completed = Some((name, add.len() as u64));
                    return Ok(Some(whole));
                }
            }
        }
        junk.push(piece(&f, &name, start, len - start)?);
        append(path, len, b"\n")?;
        *budget = budget.saturating_sub(len - start);
        end = start;
    }
    // `end` is now 0 or just after a newline.
    while end > 0 && *budget > 0 {
        let line_end = end - 1; // the newline
        let start = prev_newline(&mut f, line_end)?.map_or(0, |p| p + 1);
        let n = line_end - start;
        if n > 0 && n <= MAX_LINE {
            let line = read_range(&f, start, n)?;
            if chain::check_line(hasher, &line).is_ok() {
                return Ok(Some(line));
            }
        }
        if n > 0 {
            junk.push(piece(&f, &name, start, n)?);
        }
        *budget = budget.saturating_sub(n + 1);
        end = start;
    }
    Ok(None)
}

fn piece(f: &File, name: &str, offset: u64, len: u64) -> io::Result<Junk> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = offset;
    while at < offset + len {
        let want = ((offset + len - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..want], at)?;
        h.update(&buf[..want]);
        at += want as u64;
    }
    let mut hex = [0u8; 64];
    encode::hex_into(&mut hex, &h.finalize().into());
    Ok(Junk {
        file: name.to_owned(),
        offset,
        len,
        sha256: String::from_utf8_lossy(&hex).into_owned(),
    })
}

fn read_byte(f: &File, at: u64) -> io::Result<u8> {
    let mut b = [0u8];
    f.read_exact_at(&mut b, at)?;
    Ok(b[0])
}

fn read_range(f: &File, at: u64, n: u64) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n as usize];
    f.read_exact_at(&mut v, at)?;
    Ok(v)
}

/// The offset of the last `\n` before byte `before`, if any.
fn prev_newline(f: &mut File, before: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 16];
    let mut end = before;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + p as u64));
        }
        end = start;
    }
    Ok(None)
}

/// Writes `bytes` at `at` (the end of the file) and syncs.
fn append(path: &Path, at: u64, bytes: &[u8]) -> io::Result<()> {
    let w = OpenOptions::new()
        .write(true)
        .custom_flags(super::NOFOLLOW)
        .open(path)?;
    w.write_all_at(bytes, at)?;
    w.sync_data()
}

/// The `event_type` of a checked line.
/// Whether the last record says the last run stopped cleanly:
/// `audit_stopped`, or the signed checkpoint written right after it.
fn is_clean_stop(line: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return false;
    };
    match v.get("event_type").and_then(|e| e.as_str()) {
        Some("audit_stopped") => true,
        Some("checkpoint") => v["details"]["at_stop"] == serde_json::Value::Bool(true),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::chain::Chain;

    fn trail(dir: &Path, events: &[&str]) -> Vec<u8> {
        let mut c = Chain::new(Hasher::Plain, &uuid::Uuid::now_v7());
        let mut out = Vec::new();
        for e in events {
            let body = format!(",\"timestamp\":\"x\",\"event_type\":\"{e}\"");
            c.seal(&mut out, &uuid::Uuid::now_v7(), body.as_bytes(), None);
        }
        std::fs::write(dir.join("audit.2026-01-01.jsonl"), &out).unwrap();
        out
    }

    fn resume(dir: &Path) -> Resume {
        find_resume(&FileSink::new(dir), dir, &Hasher::Plain).unwrap()
    }

    #[test]
    fn a_record_missing_its_last_bytes_is_completed_not_demoted() {
        for cut in 1..=3 {
            let d = tempfile::tempdir().unwrap();
            let full = trail(d.path(), &["a", "b"]);
            let p = d.path().join("audit.2026-01-01.jsonl");
            std::fs::write(&p, &full[..full.len() - cut]).unwrap();
            let r = resume(d.path());
            assert_eq!(r.last.as_ref().map(|l| l.0), Some(1), "cut {cut}");
            assert!(r.junk.is_empty());
            assert_eq!(std::fs::read(&p).unwrap(), full, "cut {cut}");
        }
    }

    #[test]
    fn every_line_after_the_last_record_is_named_with_its_digest() {
        let d = tempfile::tempdir().unwrap();
        let mut full = trail(d.path(), &["a", "b"]);
        let good = full.len() as u64;
        full.extend_from_slice(b"{\"schema\":1,\"audit_id\":\"x\n");
        full.extend_from_slice(&[0u8; 100]);
        full.extend_from_slice(b"torn");
        let p = d.path().join("audit.2026-01-01.jsonl");
        std::fs::write(&p, &full).unwrap();
        let r = resume(d.path());
        assert_eq!(r.last.as_ref().map(|l| l.0), Some(1));
        assert!(!r.clean_stop);
        let offsets: Vec<(u64, u64)> = r.junk.iter().map(|j| (j.offset, j.len)).collect();
        assert_eq!(offsets, vec![(good, 25), (good + 26, 104)]);
        let mut h = Sha256::new();
        h.update(&full[good as usize + 26..]);
        let mut hex = [0u8; 64];
        encode::hex_into(&mut hex, &h.finalize().into());
        assert_eq!(r.junk[1].sha256.as_bytes(), &hex[..]);
        assert!(std::fs::read(&p).unwrap().ends_with(b"torn\n"));
    }

    #[test]
    fn a_clean_stop_is_recognised() {
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), &["audit_started", "audit_stopped"]);
        assert!(resume(d.path()).clean_stop);
    }

    #[test]
    fn a_trail_under_another_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), &["a"]);
        let keyed = Hasher::new(Some(b"k"));
        let e = find_resume(&FileSink::new(d.path()), d.path(), &keyed).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
    }
}
