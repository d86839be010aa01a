//! Verifying a trail: every line's hash, every link, every `seq`, across
//! files, in one streaming pass with memory bounded by the longest line.
//!
//! The verdict names the first failure: the file, the line and the kind
//! ([`FailureKind`]). What `verify` and the readers call a record is the
//! same: a complete line whose hash checks (its HMAC, with a key) and that
//! parses strictly as a record of the schema.
//!
//! - **Junk** (a line that is not a record) is accepted only when the next
//!   record is the restart's `audit_started` naming it in `torn_tail` by
//!   file, offset, length and SHA-256, and the record before it is not
//!   `audit_stopped` (a process that stopped cleanly leaves nothing after).
//!   Junk the restart named as `foreign_tail` is tampering. Junk at the very
//!   end of the trail, after a record that is not `audit_stopped`, is a
//!   crash not yet acknowledged ([`FailureKind::TornTail`]).
//! - **Retention is sealed.** A chain that starts above `seq` 0 passes only
//!   when its first line is the record that opened that file
//!   (`audit_started` or `audit_file_opened` with `opened_file`) and that
//!   record declares a retention; otherwise it is [`FailureKind::Deleted`].
//! - **Honest verdicts**: a chain that switches algorithm after an unkeyed
//!   start is tampering, a wrong key is [`FailureKind::WrongKey`], a trail
//!   with no record fails ([`FailureKind::NoRecords`]), and
//!   [`VerifyOptions::expect_service`] catches a trail swapped for another
//!   service's.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::record::chain::{
    check_line, check_line_hashed, hash_checks, hash_checks_pair, Hasher, Link, LinkError, GENESIS,
};
use crate::record::checkpoint::{check_checkpoint, CheckpointPublicKey};
use crate::record::{AuditRecord, CheckedRecord};
use crate::sink::file::{file_name, open_read, FileSink};
use crate::trail::AuditTrail;
use crate::trail::TrailError;

/// What kind of failure `verify` found.
///
/// ```
/// use tracing_audit::trail::FailureKind;
/// assert!(FailureKind::Modified.is_tampering());
/// assert!(!FailureKind::TornTail.is_tampering());
/// ```
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
    /// The key given does not match the trail's first keyed record.
    WrongKey,
    /// Bytes after a clean stop (`audit_stopped`), or bytes a restart named
    /// as foreign: someone else wrote to the trail.
    Foreign,
    /// A sealed line that is not a record of the schema (an unknown risk,
    /// a duplicate key, a number out of range…).
    NotARecord,
    /// The trail holds no record at all.
    NoRecords,
    /// The trail was written by another service than the one expected.
    OtherService,
    /// A record belongs to another chain than the trail's (`chain_id`
    /// differs, or a schema 1 record follows records with a chain id):
    /// chains were mixed or a trail was replaced.
    OtherChain,
    /// A `checkpoint` whose signature does not verify under the keys
    /// given, or that names a record the chain does not have: forged or
    /// altered.
    BadCheckpoint,
}

impl FailureKind {
    /// Whether this kind points to tampering (as opposed to a crash or usage).
    pub fn is_tampering(self) -> bool {
        !matches!(
            self,
            FailureKind::TornTail
                | FailureKind::KeyRequired
                | FailureKind::WrongKey
                | FailureKind::NoRecords
        )
    }
}

/// The first failure found.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let report = tracing_audit::verify(dir, None)?;
/// if let Some(f) = &report.failure {
///     eprintln!("{}:{}: {:?}: {}", f.file.display(), f.line, f.kind, f.detail);
/// }
/// # Ok(()) }
/// ```
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
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let report = tracing_audit::verify(dir, None)?;
/// println!("{} records, seq {:?}..{:?}", report.records, report.first_seq, report.last_seq);
/// # Ok(()) }
/// ```
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
    /// The trail's `chain_id` (`None` if it holds only schema 1 records,
    /// written before chains had ids).
    pub chain_id: Option<String>,
    /// `checkpoint` records seen (checked when keys were given).
    pub checkpoints: u64,
    /// With checkpoint keys: `seq` of the last checkpoint that verified.
    pub last_checkpoint_seq: Option<u64>,
    /// With checkpoint keys: records after the last verified checkpoint
    /// (all of them if there is none). Nothing vouches for them: a trail
    /// cut short there, or a tail someone else wrote, looks the same.
    pub unverified_tail: Option<u64>,
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
///
/// ```no_run
/// let report = tracing_audit::verify("./audit", None)?;
/// assert!(report.is_ok(), "{:?}", report.failure);
/// # Ok::<(), tracing_audit::trail::TrailError>(())
/// ```
pub fn verify(dir: impl AsRef<Path>, key: Option<&[u8]>) -> Result<VerifyReport, TrailError> {
    verify_with(&FileSink::new(dir), key)
}

/// [`verify`] for custom file names.
///
/// ```no_run
/// let sink = tracing_audit::FileSink::new("./audit").prefix("billing");
/// let report = tracing_audit::trail::verify_with(&sink, Some(b"the chain key"))?;
/// # let _ = report;
/// # Ok::<(), tracing_audit::trail::TrailError>(())
/// ```
pub fn verify_with(sink: &FileSink, key: Option<&[u8]>) -> Result<VerifyReport, TrailError> {
    verify_opts(sink, key, &VerifyOptions::default())
}

/// What else a verification must check.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let opts = tracing_audit::trail::VerifyOptions::default().expect_service("billing-api");
/// let report = tracing_audit::trail::verify_opts(&tracing_audit::FileSink::new(dir), None, &opts)?;
/// # let _ = report;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Every record must carry this `service` (catches a trail replaced by
    /// another service's trail written under the same key).
    pub expect_service: Option<String>,
    /// Public keys that checkpoints must verify under (any of them, chosen
    /// by the key id a checkpoint names).
    pub checkpoint_keys: Vec<CheckpointPublicKey>,
}

impl VerifyOptions {
    /// Requires every record's `service` to be `name`.
    ///
    /// ```
    /// let opts = tracing_audit::trail::VerifyOptions::default().expect_service("billing");
    /// # let _ = opts;
    /// ```
    #[must_use]
    pub fn expect_service(mut self, name: impl Into<String>) -> Self {
        self.expect_service = Some(name.into());
        self
    }

    /// Checks every `checkpoint` record against `key` (call again for each
    /// key the trail was signed with, e.g. across a key rotation), and
    /// reports the records after the last one as
    /// [`VerifyReport::unverified_tail`].
    ///
    /// ```no_run
    /// use tracing_audit::record::checkpoint::CheckpointPublicKey;
    /// let key = CheckpointPublicKey::read("audit.pub")?;
    /// let opts = tracing_audit::trail::VerifyOptions::default().checkpoint_key(key);
    /// # let _ = opts;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn checkpoint_key(mut self, key: CheckpointPublicKey) -> Self {
        self.checkpoint_keys.push(key);
        self
    }
}

/// [`verify_with`] with further checks ([`VerifyOptions`]).
///
/// ```no_run
/// use tracing_audit::{trail::verify_opts, FileSink, trail::VerifyOptions};
/// let opts = VerifyOptions::default().expect_service("billing");
/// let report = verify_opts(&FileSink::new("./audit"), None, &opts)?;
/// # let _ = report;
/// # Ok::<(), tracing_audit::trail::TrailError>(())
/// ```
pub fn verify_opts(
    sink: &FileSink,
    key: Option<&[u8]>,
    opts: &VerifyOptions,
) -> Result<VerifyReport, TrailError> {
    let trail = AuditTrail::open_with(sink)?;
    let hasher = Hasher::new(key);
    let mut v = Verifier {
        report: VerifyReport {
            algorithm: hasher.algorithm().into(),
            ..Default::default()
        },
        hasher,
        keyed: key.is_some(),
        expect_service: opts.expect_service.clone(),
        checkpoint_keys: opts.checkpoint_keys.clone(),
        expect: None,
        junk: Vec::new(),
        last_stopped: false,
        later: Vec::new(),
        last_ts: None,
    };
    v.report.files = trail.files().len();
    let n = trail.files().len();
    for (i, path) in trail.files().iter().enumerate() {
        v.later = trail.files()[i + 1..].to_vec();
        v.file(path, i == 0)
            .map_err(|e| TrailError::io("read audit file", path, e))?;
        if v.report.failure.is_some() {
            break;
        }
    }
    if v.report.failure.is_none() {
        v.end(sink, n);
    }
    v.report.last_time = v.last_ts.map(|t| String::from_utf8_lossy(&t).into_owned());
    if !v.checkpoint_keys.is_empty() {
        let last = v.report.last_seq;
        v.report.unverified_tail = Some(match (v.report.last_checkpoint_seq, last) {
            (Some(c), Some(l)) => l - c,
            _ => v.report.records,
        });
    }
    Ok(v.report)
}

/// A line that is not a record, waiting for the restart that names it.
struct Junk {
    file: PathBuf,
    line: u64,
    offset: u64,
    len: u64,
    sha256: String,
    /// Whether it ended without a newline (the trail's last bytes).
    unterminated: bool,
}

struct Verifier {
    hasher: Hasher,
    keyed: bool,
    expect_service: Option<String>,
    checkpoint_keys: Vec<CheckpointPublicKey>,
    report: VerifyReport,
    /// Next expected seq and the hash it must link to.
    expect: Option<(u64, [u8; 64])>,
    /// The last record's timestamp (kept as bytes; no allocation per record).
    last_ts: Option<[u8; 27]>,
    /// Lines since the last record that are not records.
    junk: Vec<Junk>,
    /// The last record was `audit_stopped`.
    last_stopped: bool,
    /// Files after the one being read (searched when `seq` jumps ahead).
    later: Vec<PathBuf>,
}

/// Where in the trail the line being checked is.
#[derive(Debug)]
struct Place<'p> {
    path: &'p Path,
    /// 1-based line number.
    line: u64,
    /// Byte offsets of the line's start and of its end (newline included).
    at: u64,
    end: u64,
    first_file: bool,
    /// No record of this file has been accepted yet.
    first_in_file: bool,
}

/// What [`Verifier::record`] read of a sealed line.
struct Parsed<'a> {
    event_type: Option<std::borrow::Cow<'a, str>>,
    /// The owned parse, where its details are read (the first record,
    /// after lines that are not records); boxed, as it is rare.
    full: Option<Box<AuditRecord>>,
}

/// What one line turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A record that links: counted.
    Record,
    /// Not a record: kept as junk until a restart names it.
    NotARecord,
    /// The first failure is in the report: stop.
    Failed,
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

    /// After the last file: junk nobody acknowledged, an empty trail.
    fn end(&mut self, sink: &FileSink, files: usize) {
        if self.report.records == 0 {
            let (file, detail) = match self.junk.first() {
                Some(j) => (
                    j.file.clone(),
                    format!(
                        "{} matches the audit file names but holds no audit record: it is not a trail written by tracing-audit (or the trail uses another --prefix/--suffix)",
                        j.file.display()
                    ),
                ),
                None if files == 0 => (
                    sink.dir.clone(),
                    format!(
                        "no audit files found in {} (prefix {:?}, suffix {:?})",
                        sink.dir.display(),
                        sink.prefix,
                        sink.suffix
                    ),
                ),
                None => (
                    sink.dir.clone(),
                    format!("no record in {files} file(s): nothing was verified"),
                ),
            };
            self.fail(FailureKind::NoRecords, &file, 0, detail);
            return;
        }
        if let Some(j) = self.junk.first() {
            let (file, line, offset, len) = (j.file.clone(), j.line, j.offset, j.len);
            if self.last_stopped {
                let detail = format!("{len} bytes at offset {offset} follow a clean stop (audit_stopped): no crash leaves bytes there");
                self.fail(FailureKind::Foreign, &file, line, detail);
            } else {
                let how = if self.junk.iter().any(|j| j.unterminated) {
                    "the trail ends in a torn line"
                } else {
                    "the trail ends in lines that are not records"
                };
                let detail = format!(
                    "{how} ({len} bytes at offset {offset}): a crash while writing, not yet acknowledged by a restart"
                );
                self.fail(FailureKind::TornTail, &file, line, detail);
            }
        }
    }

    /// Checks one file's lines in order. A second thread reads ahead and
    /// checks most lines' hashes ([`read_ahead`]); this one checks the rest
    /// (the other hashes, schema, links, restarts), so the two halves of the
    /// work overlap.
    fn file(&mut self, path: &Path, first_file: bool) -> std::io::Result<()> {
        let file = open_read(path)?;
        let hasher = self.hasher.clone();
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
            let (back, spare) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("audit-verify".into())
                .spawn_scoped(scope, move || read_ahead(file, &hasher, &tx, &spare))?;
            let mut place = Place {
                path,
                line: 0,
                at: 0,
                end: 0,
                first_file,
                first_in_file: true,
            };
            // Ends when the reader does (end of file or an error it sent);
            // returning early drops `rx`, which ends the reader.
            for batch in rx {
                let batch: Batch = batch?;
                for l in &batch.lines {
                    place.line += 1;
                    place.at = place.end;
                    place.end += l.read.consumed;
                    let line = &batch.data[l.start..l.end];
                    let hashed = match l.hash_checks {
                        Some(checks) => checks,
                        None => hash_checks(&self.hasher, line),
                    };
                    match self.line(&place, line, &l.read, hashed) {
                        Seen::Record => place.first_in_file = false,
                        Seen::NotARecord => {}
                        Seen::Failed => return Ok(()),
                    }
                }
                // The reader reuses it if it still runs.
                let _ = back.send(batch);
            }
            Ok(())
        })
    }

    /// Checks one line: a record that links, a line that is not a record
    /// (kept until a restart names it), or the first failure.
    fn line(
        &mut self,
        p: &Place<'_>,
        line: &[u8],
        read: &crate::sink::file::lines::Line,
        hashed: bool,
    ) -> Seen {
        let unterminated = !read.terminated;
        if let Some(digest) = read.overlong {
            // Longer than any record: not held, named by its digest.
            let mut hex = [0u8; 64];
            crate::record::encode::hex_into(&mut hex, &digest);
            self.junk.push(Junk {
                file: p.path.to_path_buf(),
                line: p.line,
                offset: p.at,
                len: read.len,
                sha256: String::from_utf8_lossy(&hex).into_owned(),
                unterminated,
            });
            return Seen::NotARecord;
        }
        if line.is_empty() {
            return Seen::NotARecord;
        }
        let link = match self.sealed(p, line, unterminated, hashed) {
            Ok(link) => link,
            Err(seen) => return seen,
        };
        let Parsed { event_type, full } = match self.record(p, line, &link) {
            Ok(r) => r,
            Err(seen) => return seen,
        };
        if !self.same_chain(p, &link) {
            return Seen::Failed;
        }
        let event_type = event_type.as_deref();
        if event_type == Some("checkpoint") && !self.checkpoint(p, line, &link) {
            return Seen::Failed;
        }
        match (&self.expect, &full) {
            (None, Some(record)) => {
                let first = p.first_file && p.first_in_file;
                self.chain_start(&link, record, p.path, p.line, first)
            }
            (Some((seq, prev)), _) => {
                if link.seq != *seq || link.prev_hash.as_bytes() != &prev[..] {
                    let seq = *seq;
                    self.broken(&link, seq, p.path, p.line, p.end, p.first_in_file);
                }
            }
            (None, None) => {}
        }
        if self.report.failure.is_some() {
            return Seen::Failed;
        }
        self.accept(&link, event_type, line);
        Seen::Record
    }

    /// The line's chain fields, if it is a sealed line whose hash checks.
    fn sealed<'a>(
        &mut self,
        p: &Place<'_>,
        line: &'a [u8],
        unterminated: bool,
        hashed: bool,
    ) -> Result<Link<'a>, Seen> {
        match check_line_hashed(line, hashed) {
            Ok(l) if !unterminated => Ok(l),
            Ok(_) | Err(LinkError::Malformed) => {
                self.push_junk(p.path, p.line, p.at, line, unterminated);
                Err(Seen::NotARecord)
            }
            Err(LinkError::HashMismatch)
                if self.last_stopped
                    && (self.keyed
                        || started_algorithm(line).as_deref() != Some("hmac-sha256")) =>
            {
                // After a clean stop nothing may follow but a restart: a
                // line that does not check there is someone else's.
                self.push_junk(p.path, p.line, p.at, line, unterminated);
                Err(Seen::NotARecord)
            }
            Err(LinkError::HashMismatch) => {
                self.hash_mismatch(p.path, p.line, line);
                Err(Seen::Failed)
            }
        }
    }

    /// Parses a sealed line strictly, but borrowing: the full owned parse
    /// only where its details are read (the first record, after junk).
    /// Checks what junk before it and the expected service require.
    fn record<'a>(
        &mut self,
        p: &Place<'_>,
        line: &'a [u8],
        link: &Link<'a>,
    ) -> Result<Parsed<'a>, Seen> {
        let not_a_record = |v: &mut Self, e: serde_json::Error| {
            let detail = format!("a sealed line that is not a record of the schema: {e}");
            v.fail(FailureKind::NotARecord, p.path, p.line, detail);
            Seen::Failed
        };
        let checked = CheckedRecord::check_linked(line, link).map_err(|e| not_a_record(self, e))?;
        let full = if !self.junk.is_empty() || self.expect.is_none() {
            Some(Box::new(
                AuditRecord::parse(line).map_err(|e| not_a_record(self, e))?,
            ))
        } else {
            None
        };
        if let Some(record) = full.as_ref().filter(|_| !self.junk.is_empty()) {
            if !self.acknowledge(record, link.seq) {
                return Err(Seen::Failed);
            }
        }
        if let Some(want) = &self.expect_service {
            if checked.service.as_deref() != Some(want.as_str()) {
                let detail = format!(
                    "record seq {} is from service {:?}, not {want:?}: the trail was replaced or mixed",
                    link.seq, checked.service
                );
                self.fail(FailureKind::OtherService, p.path, p.line, detail);
                return Err(Seen::Failed);
            }
        }
        // Only the event type is read after this: the record itself (a few
        // hundred bytes) is not moved about.
        Ok(Parsed {
            event_type: checked.event_type,
            full,
        })
    }

    /// Whether the record belongs to the trail's chain: every record with a
    /// `chain_id` carries the same one, and schema 1 records (no id) only
    /// come before the first that has one (a trail written before chain
    /// ids, continued by this version).
    fn same_chain(&mut self, p: &Place<'_>, link: &Link<'_>) -> bool {
        let detail = match (link.chain_id, self.report.chain_id.as_deref()) {
            (Some(id), None) => {
                self.report.chain_id = Some(id.to_owned());
                return true;
            }
            (None, None) => return true,
            (Some(id), Some(have)) if id == have => return true,
            (Some(id), Some(have)) => format!(
                "record seq {} belongs to chain {id}, the trail's is {have}: chains were mixed or a trail replaced",
                link.seq
            ),
            (None, Some(have)) => format!(
                "record seq {} has no chain_id (schema 1) after records of chain {have}",
                link.seq
            ),
        };
        self.fail(FailureKind::OtherChain, p.path, p.line, detail);
        false
    }

    /// A `checkpoint` record: with keys, its signature must verify under
    /// the key it names, and what it signs must be the record before it.
    fn checkpoint(&mut self, p: &Place<'_>, line: &[u8], link: &Link<'_>) -> bool {
        self.report.checkpoints += 1;
        if self.checkpoint_keys.is_empty() {
            return true;
        }
        match check_checkpoint(&self.checkpoint_keys, line, link) {
            Ok(()) => {
                self.report.last_checkpoint_seq = Some(link.seq);
                true
            }
            Err(detail) => {
                self.fail(FailureKind::BadCheckpoint, p.path, p.line, detail);
                false
            }
        }
    }

    /// Counts a record that linked, and expects the next one after it.
    fn accept(&mut self, link: &Link<'_>, event: Option<&str>, line: &[u8]) {
        // The checkpoint written at stop follows `audit_stopped`: the trail
        // is still stopped cleanly after it.
        if !(event == Some("checkpoint") && self.last_stopped) {
            self.last_stopped = event == Some("audit_stopped");
        }
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

    /// Remembers a line that is not a record until a restart names it.
    fn push_junk(&mut self, path: &Path, line: u64, offset: u64, bytes: &[u8], unterminated: bool) {
        self.junk.push(Junk {
            file: path.to_path_buf(),
            line,
            offset,
            len: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            unterminated,
        });
    }

    /// A well-formed line whose hash does not check: a missing or wrong
    /// key, an algorithm switch, or an edit.
    fn hash_mismatch(&mut self, path: &Path, line_no: u64, line: &[u8]) {
        let declared = started_algorithm(line);
        let (kind, detail) = if self.report.records == 0 && !self.keyed {
            if declared.as_deref() == Some("hmac-sha256") {
                (
                    FailureKind::KeyRequired,
                    "this trail is keyed (HMAC-SHA-256); give its key".to_owned(),
                )
            } else {
                (
                    FailureKind::Modified,
                    "the record's bytes do not match its hash (or the trail is keyed and needs its key)".to_owned(),
                )
            }
        } else if self.report.records == 0 && self.keyed {
            if check_line(&Hasher::Plain, line).is_ok() {
                (
                    FailureKind::Modified,
                    "a key was given, but the trail is an unkeyed SHA-256 chain: rewritten by someone without the key, or never keyed".to_owned(),
                )
            } else {
                (
                    FailureKind::WrongKey,
                    "the key does not match the trail's first keyed record".to_owned(),
                )
            }
        } else if !self.keyed && declared.as_deref() == Some("hmac-sha256") {
            (
                FailureKind::Modified,
                "the chain switches to HMAC after an unkeyed start: a chain never changes algorithm"
                    .to_owned(),
            )
        } else {
            (
                FailureKind::Modified,
                "the record's bytes do not match its hash".to_owned(),
            )
        };
        self.fail(kind, path, line_no, detail);
    }

    /// The record after junk must be the restart that names all of it by
    /// content, after a run that did not stop cleanly.
    fn acknowledge(&mut self, record: &AuditRecord, seq: u64) -> bool {
        let junk = std::mem::take(&mut self.junk);
        let first = &junk[0];
        let (file, line) = (first.file.clone(), first.line);
        if self.last_stopped {
            let detail = format!(
                "{} bytes at offset {} follow a clean stop (audit_stopped): no crash leaves bytes there",
                first.len, first.offset
            );
            self.fail(FailureKind::Foreign, &file, line, detail);
            return false;
        }
        let is_started = record.event_type.as_deref() == Some("audit_started");
        let named = |key: &str, j: &Junk| {
            record
                .details
                .get(key)
                .and_then(|v| v.as_array())
                .is_some_and(|a| {
                    a.iter().any(|t| {
                        t["file"] == file_name(&j.file).as_str()
                            && t["offset"] == j.offset
                            && t["bytes"] == j.len
                            && t["sha256"] == j.sha256.as_str()
                    })
                })
        };
        if is_started && junk.iter().any(|j| named("foreign_tail", j)) {
            let detail = "bytes the restart found after a clean stop and named as foreign".into();
            self.fail(FailureKind::Foreign, &file, line, detail);
            return false;
        }
        for j in &junk {
            if !is_started || !named("torn_tail", j) {
                let detail = format!(
                    "a line that is not a record ({} bytes at offset {}), not acknowledged by content (file, offset, length, SHA-256) in the next audit_started",
                    j.len, j.offset
                );
                self.fail(FailureKind::Malformed, &j.file, j.line, detail);
                return false;
            }
        }
        self.report.notes.push(format!(
            "{}:{line}: {} torn line(s) from a crash, acknowledged by content by the restart at seq {seq}",
            file.display(),
            junk.len()
        ));
        true
    }

    /// The first record seen: genesis, or sealed retention at a file start.
    fn chain_start(
        &mut self,
        link: &crate::record::chain::Link<'_>,
        record: &AuditRecord,
        path: &Path,
        line_no: u64,
        first_line: bool,
    ) {
        if link.seq == 0 {
            if link.prev_hash != GENESIS {
                let detail = "seq 0 does not start from the genesis hash".into();
                self.fail(FailureKind::BrokenLink, path, line_no, detail);
            }
            return;
        }
        let opened = record.details.get("opened_file").and_then(|v| v.as_str());
        let retention = record.details.get("retention").filter(|r| !r.is_null());
        match (
            first_line && opened == Some(file_name(path).as_str()),
            retention,
        ) {
            (true, Some(r)) => self.report.notes.push(format!(
                "the chain starts at seq {}: older files removed by the retention in force ({r})",
                link.seq
            )),
            (true, None) => {
                let detail = format!(
                    "the chain starts at seq {}, and no retention was configured: {} record(s) deleted",
                    link.seq, link.seq
                );
                self.fail(FailureKind::Deleted, path, line_no, detail);
            }
            (false, _) => {
                let detail = format!(
                    "the chain starts at seq {} inside a file (not where a file began): {} record(s) deleted",
                    link.seq, link.seq
                );
                self.fail(FailureKind::Deleted, path, line_no, detail);
            }
        }
    }

    /// `seq` or the link is not what the chain expects: name the failure.
    fn broken(
        &mut self,
        link: &crate::record::chain::Link<'_>,
        seq: u64,
        path: &Path,
        line_no: u64,
        offset: u64,
        first_in_file: bool,
    ) {
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
            (
                FailureKind::InsertedOrReordered,
                format!(
                    "seq {} after seq {}: a record was inserted, duplicated or moved",
                    link.seq,
                    seq - 1
                ),
            )
        } else if first_in_file {
            (
                FailureKind::BrokenLink,
                format!(
                    "seq {} does not link to the previous file's last record",
                    link.seq
                ),
            )
        } else {
            (
                FailureKind::InsertedOrReordered,
                format!(
                    "seq {} does not link to the record before it: a record was replaced",
                    link.seq
                ),
            )
        };
        self.fail(kind, path, line_no, detail);
    }
}

/// Batches the reader thread keeps ready ahead of the checking one.
const AHEAD: usize = 2;
/// Bytes of lines in one batch.
const BATCH_BYTES: usize = 256 * 1024;
/// One line in this many has its hash checked by the checking thread, not
/// the reader: hashing is about 70 % of the reader's work and the reader
/// sets the pace, so the checker takes a share (see [`read_ahead`]).
const CHECKER_HASHES_ONE_IN: u64 = 5;

/// Lines read ahead, with their hash checked.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    lines: Vec<AheadLine>,
}

struct AheadLine {
    start: usize,
    end: usize,
    read: crate::sink::file::lines::Line,
    /// [`hash_checks`] of the line, or `None`: left to the checker.
    hash_checks: Option<bool>,
}

/// The reader thread of [`Verifier::file`]: the file's lines in batches of
/// about [`BATCH_BYTES`], each with whether its hash checks under `hasher`
/// (the one pure, costly part of checking a line), except one ordinary line
/// in [`CHECKER_HASHES_ONE_IN`], which the checker hashes itself so the two
/// threads are about equally busy. The reader hashes its lines two at a
/// time ([`hash_pending`]). Stops at the end of the
/// file, at a read error (sent on), or when the checker stops listening.
///
/// Memory stays what reading one line at a time needs: at most
/// [`AHEAD`] + 2 batches of ordinary lines exist, and a line longer than a
/// batch (up to the 16 MiB a line may hold) is read only once every batch
/// sent has come back, goes alone (moved, not copied), and is back before
/// the next line is read: one such line is held at a time, as before.
fn read_ahead(
    file: impl std::io::Read,
    hasher: &Hasher,
    tx: &std::sync::mpsc::SyncSender<std::io::Result<Batch>>,
    spare: &std::sync::mpsc::Receiver<Batch>,
) {
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(1024);
    // Batches sent and not yet back.
    let mut out = 0usize;
    // Waits until every batch sent is back; false if the checker stopped.
    let drain = |out: &mut usize| {
        while *out > 0 {
            match spare.recv() {
                Ok(_) => *out -= 1,
                Err(_) => return false,
            }
        }
        true
    };
    // A batch back from the checker, kept for the next fill.
    let mut kept: Option<Batch> = None;
    // Lines of the batch the reader hashes, not hashed yet.
    let mut todo: Vec<usize> = Vec::new();
    let mut lines = 0u64;
    loop {
        let mut batch = match kept.take() {
            Some(b) => b,
            None => match spare.try_recv() {
                Ok(b) => {
                    out -= 1;
                    b
                }
                Err(_) => Batch::default(),
            },
        };
        batch.data.clear();
        batch.lines.clear();
        let mut end = false;
        while batch.data.len() < BATCH_BYTES {
            let read = match crate::sink::file::lines::next_line(&mut r, &mut buf) {
                Ok(read) => read,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            if read.consumed == 0 {
                end = true;
                break;
            }
            lines += 1;
            let hash_checks = if read.overlong.is_some() {
                Some(false)
            } else if lines.is_multiple_of(CHECKER_HASHES_ONE_IN) && buf.len() <= BATCH_BYTES {
                None
            } else if buf.len() > BATCH_BYTES {
                Some(hash_checks(hasher, &buf))
            } else {
                // Hashed with the next such line before the batch goes.
                todo.push(batch.lines.len());
                None
            };
            if buf.len() > BATCH_BYTES {
                // A long line: what is batched goes first, then the line
                // alone once nothing else is held, and it comes back
                // before the next line is read.
                if !batch.lines.is_empty() {
                    hash_pending(hasher, &mut batch, &mut todo);
                    if tx.send(Ok(std::mem::take(&mut batch))).is_err() {
                        return;
                    }
                    out += 1;
                }
                if !drain(&mut out) {
                    return;
                }
                let len = buf.len();
                let alone = Batch {
                    data: std::mem::replace(&mut buf, Vec::with_capacity(1024)),
                    lines: vec![AheadLine {
                        start: 0,
                        end: len,
                        hash_checks,
                        read,
                    }],
                };
                if tx.send(Ok(alone)).is_err() {
                    return;
                }
                out += 1;
                if !drain(&mut out) {
                    return;
                }
                continue;
            }
            let start = batch.data.len();
            batch.data.extend_from_slice(&buf);
            batch.lines.push(AheadLine {
                start,
                end: batch.data.len(),
                hash_checks,
                read,
            });
        }
        if !batch.lines.is_empty() {
            hash_pending(hasher, &mut batch, &mut todo);
            if tx.send(Ok(batch)).is_err() {
                return;
            }
            out += 1;
        }
        if end {
            return;
        }
        // Never more than the channel's batches, one being checked and
        // this one: wait for one back before filling another.
        if out > AHEAD + 1 {
            match spare.recv() {
                Ok(b) => {
                    out -= 1;
                    kept = Some(b);
                }
                Err(_) => return,
            }
        }
    }
}

/// Fills in [`hash_checks`] for the lines of `batch` listed in `todo`,
/// two at a time ([`hash_checks_pair`]: their hashing interleaved).
fn hash_pending(hasher: &Hasher, batch: &mut Batch, todo: &mut Vec<usize>) {
    let mut pairs = todo.chunks_exact(2);
    for p in &mut pairs {
        let (a, b) = (&batch.lines[p[0]], &batch.lines[p[1]]);
        let (ha, hb) = hash_checks_pair(
            hasher,
            &batch.data[a.start..a.end],
            &batch.data[b.start..b.end],
        );
        batch.lines[p[0]].hash_checks = Some(ha);
        batch.lines[p[1]].hash_checks = Some(hb);
    }
    if let [i] = *pairs.remainder() {
        let l = &batch.lines[i];
        let h = hash_checks(hasher, &batch.data[l.start..l.end]);
        batch.lines[i].hash_checks = Some(h);
    }
    todo.clear();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hex = [0u8; 64];
    crate::record::encode::hex_into(&mut hex, &Sha256::digest(bytes).into());
    String::from_utf8_lossy(&hex).into_owned()
}

impl Verifier {
    /// Looks for `seq` after byte `from` of `path` and in the later files
    /// (only on the failure path, to tell reordering from deletion).
    fn find_seq(&self, seq: u64, path: &Path, from: u64) -> Option<(PathBuf, u64)> {
        use std::io::Read;
        let mut budget: u64 = 1_000_000;
        for (i, p) in std::iter::once(path)
            .chain(self.later.iter().map(PathBuf::as_path))
            .enumerate()
        {
            let mut f = open_read(p).ok()?;
            let start = if i == 0 { from } else { 0 };
            std::io::copy(&mut (&mut f).take(start), &mut std::io::sink()).ok()?;
            let mut line_no = if i == 0 { count_lines(path, from)? } else { 0 };
            let mut r = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                let read = crate::sink::file::lines::next_line(&mut r, &mut line).ok()?;
                if read.consumed == 0 {
                    break;
                }
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
    let mut f = open_read(path).ok()?.take(upto);
    loop {
        let k = f.read(&mut buf).ok()?;
        if k == 0 {
            return Some(n);
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The `timestamp` value, at its fixed place: first in the body, which
/// starts right after the id in schema 3, after `seq`'s digits (and, in
/// schema 2, the chain id after them) in older lines.
fn timestamp(line: &[u8]) -> Option<&[u8]> {
    use crate::record::layout::{BODY_AT, CHAIN_END, CHAIN_KEY, HEAD, ID_LEN, SEQ_KEY_V2};
    const KEY: &[u8] = b",\"timestamp\":\"";
    let start = if line.starts_with(HEAD) {
        BODY_AT
    } else {
        // `{"schema":N,"audit_id":"<36>","seq":`
        let seq_at = HEAD.len() + ID_LEN + SEQ_KEY_V2.len();
        let digits = line
            .get(seq_at..)?
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let mut start = seq_at + digits;
        if line.get(start..start + CHAIN_KEY.len()) == Some(CHAIN_KEY) {
            start += CHAIN_KEY.len() + ID_LEN + CHAIN_END.len();
        }
        start
    };
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
