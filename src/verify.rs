//! Verifying a trail: every line's hash, every link, every `seq`, across
//! files, in one streaming pass with memory bounded by the longest line.
//!
//! The verdict names the first failure: the file, the line and the kind
//! ([`FailureKind`]). A torn last line is reported as a crash artefact, not
//! tampering; one that a later `audit_started` record acknowledges (the
//! writer found it on restart and said so in the chain) is a note, not a
//! failure. A chain that starts above `seq` 0 is a note too: older files
//! were removed by `max_files` retention, which the chain alone cannot tell
//! from deletion (see the README on what the chain proves).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::chain::{check_line, Hasher, LinkError, GENESIS};
use crate::error::Error;
use crate::file::{file_name, FileSink};
use crate::reader::AuditTrail;

/// What kind of failure `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// A record's bytes do not match its hash: it was edited.
    Modified,
    /// A line is not a sealed record at all (garbage, or a record cut short).
    Malformed,
    /// `seq` jumps forward inside a file: records were deleted.
    Deleted,
    /// `seq` goes back or repeats, or a record does not link to the one
    /// before it: records were inserted, duplicated or reordered.
    InsertedOrReordered,
    /// A file starts later than the previous one ended: a file is missing.
    MissingFile,
    /// A file starts before the previous one ended: files are out of order.
    FileOrder,
    /// A file's first record does not link to the previous file's last.
    BrokenLink,
    /// The newest file ends in a line without a newline: a crash while
    /// writing (power loss, full disk), not tampering.
    TornTail,
    /// The trail is keyed (HMAC) and no key was given.
    KeyRequired,
}

impl FailureKind {
    /// Whether this kind points to tampering (as opposed to a crash or usage).
    pub fn is_tampering(self) -> bool {
        !matches!(self, FailureKind::TornTail | FailureKind::KeyRequired)
    }
}

/// The first failure found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Kind of failure.
    pub kind: FailureKind,
    /// The file.
    pub file: PathBuf,
    /// 1-based line number in it.
    pub line: u64,
    /// Human explanation.
    pub detail: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Files read.
    pub files: usize,
    /// First and last `seq`.
    pub first_seq: Option<u64>,
    /// Last `seq`.
    pub last_seq: Option<u64>,
    /// First record's timestamp.
    pub first_time: Option<String>,
    /// Last record's timestamp.
    pub last_time: Option<String>,
    /// The chain algorithm checked (`sha256` or `hmac-sha256`).
    pub algorithm: String,
    /// Things worth knowing that are not failures.
    pub notes: Vec<String>,
    /// The first failure, if any.
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// Whether the trail verified.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Verifies the trail in `dir` (default file names). With `key`, checks
/// HMAC-SHA-256; without, SHA-256.
pub fn verify(dir: impl AsRef<Path>, key: Option<&[u8]>) -> Result<VerifyReport, Error> {
    verify_with(&FileSink::new(dir), key)
}

/// [`verify`] for custom file names.
pub fn verify_with(sink: &FileSink, key: Option<&[u8]>) -> Result<VerifyReport, Error> {
    let trail = AuditTrail::open_with(sink)?;
    let hasher = Hasher::new(key);
    let mut v = Verifier {
        hasher,
        report: VerifyReport {
            algorithm: Hasher::new(key).algorithm().into(),
            ..Default::default()
        },
        expect: None,
        torn: None,
        later: Vec::new(),
        last_ts: None,
    };
    v.report.files = trail.files().len();
    let n = trail.files().len();
    for (i, path) in trail.files().iter().enumerate() {
        v.later = trail.files()[i + 1..].to_vec();
        v.file(path, i + 1 == n)
            .map_err(|e| Error::io("read audit file", path, e))?;
        if v.report.failure.is_some() {
            break;
        }
    }
    if v.report.failure.is_none() {
        if let Some((file, line, _)) = v.torn.take() {
            v.fail(
                FailureKind::Malformed,
                &file,
                line,
                "a line that is not a record, not acknowledged by a restart".into(),
            );
        }
    }
    v.report.last_time = v.last_ts.map(|t| String::from_utf8_lossy(&t).into_owned());
    Ok(v.report)
}

struct Verifier {
    hasher: Hasher,
    report: VerifyReport,
    /// Next expected seq and the hash it must link to.
    expect: Option<(u64, [u8; 64])>,
    /// The last record's timestamp (kept as bytes; no allocation per record).
    last_ts: Option<[u8; 27]>,
    /// An unreadable line awaiting an `audit_started` that acknowledges it:
    /// (file, line number, byte offset).
    torn: Option<(PathBuf, u64, u64)>,
    /// Files after the one being read (searched when `seq` jumps ahead).
    later: Vec<PathBuf>,
}

impl Verifier {
    fn fail(&mut self, kind: FailureKind, file: &Path, line: u64, detail: String) {
        if self.report.failure.is_none() {
            self.report.failure = Some(Failure {
                kind,
                file: file.to_path_buf(),
                line,
                detail,
            });
        }
    }

    fn file(&mut self, path: &Path, newest: bool) -> std::io::Result<()> {
        let mut r = BufReader::with_capacity(1 << 16, File::open(path)?);
        let mut buf = Vec::with_capacity(1024);
        let (mut line_no, mut offset) = (0u64, 0u64);
        let mut first_in_file = true;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            line_no += 1;
            let at = offset;
            offset += n as u64;
            let Some(line) = buf.strip_suffix(b"\n") else {
                let (kind, what) = if newest {
                    (
                        FailureKind::TornTail,
                        "the newest file ends in a torn line: a crash while writing, not tampering",
                    )
                } else {
                    (
                        FailureKind::Malformed,
                        "an older file ends without a newline",
                    )
                };
                self.fail(
                    kind,
                    path,
                    line_no,
                    format!("{what} ({n} bytes at offset {at})"),
                );
                return Ok(());
            };
            if line.is_empty() {
                continue;
            }
            let link = match check_line(&self.hasher, line) {
                Ok(l) => l,
                Err(LinkError::Malformed) => {
                    if self.torn.is_some() {
                        let (f, l, _) = self.torn.take().unwrap_or_default();
                        self.fail(
                            FailureKind::Malformed,
                            &f,
                            l,
                            "a line that is not a record".into(),
                        );
                        return Ok(());
                    }
                    self.torn = Some((path.to_path_buf(), line_no, at));
                    continue;
                }
                Err(LinkError::HashMismatch) => {
                    let unkeyed = matches!(self.hasher, Hasher::Plain);
                    if unkeyed && started_algorithm(line).as_deref() == Some("hmac-sha256") {
                        let detail = "this trail is keyed (HMAC-SHA-256); give its key".into();
                        self.fail(FailureKind::KeyRequired, path, line_no, detail);
                    } else {
                        let hint = if unkeyed {
                            " (or the trail is keyed and needs its key)"
                        } else {
                            ""
                        };
                        let detail = format!("the record's bytes do not match its hash{hint}");
                        self.fail(FailureKind::Modified, path, line_no, detail);
                    }
                    return Ok(());
                }
            };
            if let Some((file, l, off)) = self.torn.take() {
                if !acknowledges(line, &file_name(&file), off) {
                    self.fail(
                        FailureKind::Malformed,
                        &file,
                        l,
                        "a line that is not a record".into(),
                    );
                    return Ok(());
                }
                self.report.notes.push(format!(
                    "{}:{l}: torn line from a crash, acknowledged by the restart at seq {}",
                    file.display(),
                    link.seq
                ));
            }
            match &self.expect {
                None => {
                    if link.seq == 0 && link.prev_hash != GENESIS {
                        self.fail(
                            FailureKind::BrokenLink,
                            path,
                            line_no,
                            "seq 0 does not start from the genesis hash".into(),
                        );
                        return Ok(());
                    }
                    if link.seq > 0 {
                        self.report.notes.push(format!(
                            "the chain starts at seq {} (older files removed by retention, or deleted)",
                            link.seq
                        ));
                    }
                }
                Some((seq, prev)) => {
                    let (seq, ok_link) = (*seq, link.prev_hash.as_bytes() == &prev[..]);
                    if link.seq != seq || !ok_link {
                        let found = if link.seq > seq {
                            self.find_seq(seq, path, offset)
                        } else {
                            None
                        };
                        let (kind, detail) = if let Some((f, l)) = found {
                            let here = f == path;
                            let kind = if here {
                                FailureKind::InsertedOrReordered
                            } else {
                                FailureKind::FileOrder
                            };
                            let detail = format!(
                                "seq {} comes here, but the expected seq {seq} is later, at {}:{l}: {} out of order",
                                link.seq,
                                f.display(),
                                if here { "records" } else { "files" }
                            );
                            (kind, detail)
                        } else if link.seq > seq && first_in_file {
                            (FailureKind::MissingFile, format!("file starts at seq {} but the previous file ended at seq {}: a file or its last records are missing", link.seq, seq - 1))
                        } else if link.seq > seq {
                            (
                                FailureKind::Deleted,
                                format!(
                                    "seq jumps from {} to {}: {} record(s) deleted",
                                    seq - 1,
                                    link.seq,
                                    link.seq - seq
                                ),
                            )
                        } else if link.seq < seq && first_in_file {
                            (FailureKind::FileOrder, format!("file starts at seq {} but the previous file ended at seq {}: files out of order", link.seq, seq - 1))
                        } else if link.seq < seq {
                            (FailureKind::InsertedOrReordered, format!("seq {} after seq {}: a record was inserted, duplicated or moved", link.seq, seq - 1))
                        } else if first_in_file {
                            (
                                FailureKind::BrokenLink,
                                format!(
                                    "seq {} does not link to the previous file's last record",
                                    link.seq
                                ),
                            )
                        } else {
                            (FailureKind::InsertedOrReordered, format!("seq {} does not link to the record before it: a record was replaced", link.seq))
                        };
                        self.fail(kind, path, line_no, detail);
                        return Ok(());
                    }
                }
            }
            first_in_file = false;
            let mut next = [0u8; 64];
            next.copy_from_slice(link.hash.as_bytes());
            self.expect = Some((link.seq + 1, next));
            self.report.records += 1;
            self.report.first_seq.get_or_insert(link.seq);
            self.report.last_seq = Some(link.seq);
            if let Some(ts) = timestamp(line) {
                if self.report.first_time.is_none() {
                    self.report.first_time = Some(String::from_utf8_lossy(ts).into_owned());
                }
                let mut t = [0u8; 27];
                t.copy_from_slice(ts);
                self.last_ts = Some(t);
            }
        }
    }
}

impl Verifier {
    /// Looks for `seq` after byte `from` of `path` and in the later files
    /// (only on the failure path, to tell reordering from deletion).
    fn find_seq(&self, seq: u64, path: &Path, from: u64) -> Option<(PathBuf, u64)> {
        use std::io::{Seek, SeekFrom};
        let mut budget: u64 = 1_000_000;
        for (i, p) in std::iter::once(path)
            .chain(self.later.iter().map(PathBuf::as_path))
            .enumerate()
        {
            let mut f = File::open(p).ok()?;
            let start = if i == 0 { from } else { 0 };
            f.seek(SeekFrom::Start(start)).ok()?;
            let mut line_no = if i == 0 { count_lines(path, from)? } else { 0 };
            for line in BufReader::new(f).split(b'\n') {
                let line = line.ok()?;
                line_no += 1;
                budget = budget.checked_sub(1)?;
                if check_line(&self.hasher, &line).is_ok_and(|l| l.seq == seq) {
                    return Some((p.to_path_buf(), line_no));
                }
            }
        }
        None
    }
}

/// Lines in the first `upto` bytes of `path`.
fn count_lines(path: &Path, upto: u64) -> Option<u64> {
    use std::io::Read;
    let mut n = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut f = File::open(path).ok()?.take(upto);
    loop {
        let k = f.read(&mut buf).ok()?;
        if k == 0 {
            return Some(n);
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The `timestamp` value, at its fixed place right after `seq`'s digits.
fn timestamp(line: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b",\"timestamp\":\"";
    // `{"schema":1,"audit_id":"<36>","seq":` is 68 bytes.
    let digits = line
        .get(68..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let start = 68 + digits;
    if line.get(start..start + KEY.len())? != KEY {
        return None;
    }
    line.get(start + KEY.len()..start + KEY.len() + 27)
}

/// The chain algorithm an `audit_started` line declares.
fn started_algorithm(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    if v.get("event_type")?.as_str()? != "audit_started" {
        return None;
    }
    Some(v.get("details")?.get("chain")?.as_str()?.to_owned())
}

/// Whether a (verified) line is an `audit_started` naming a torn line at
/// `file`/`offset`.
fn acknowledges(line: &[u8], file: &str, offset: u64) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return false;
    };
    if v["event_type"] != "audit_started" {
        return false;
    }
    v["details"]["torn_tail"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["file"] == file && t["offset"] == offset))
}
