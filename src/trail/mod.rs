//! The read side: a trail a file sink wrote, opened to read, query,
//! follow, summarise and verify, and to replay through policies.
//!
//! [`AuditTrail`] opens a directory; [`Query`] filters; [`Follower`] tails
//! the newest file; [`verify`] (also at the crate root) checks every hash,
//! link and sequence number. The `tracing-audit` command uses only this.
//!
//! ```
//! use tracing_audit::trail::{AuditTrail, Query};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir.path()).build::<tracing_subscriber::Registry>()?; drop(g);
//! let report = tracing_audit::verify(dir.path(), None)?;
//! assert!(report.is_ok());
//! let trail = AuditTrail::open(dir.path())?;
//! let started = trail
//!     .query(&Query {
//!         event_type: Some("audit_started".into()),
//!         ..Query::default()
//!     })
//!     .count();
//! assert_eq!(started, 1);
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Reading a trail back: records in order across rotated files, filters,
//! the newest `n`, and summary statistics. Everything streams line by line;
//! no file is ever loaded whole.
//!
//! Only sealed records are records: a line is yielded as a record when it
//! is complete, its hash checks and it parses strictly as a record of the
//! schema. On a keyed trail, give the key ([`AuditTrail::with_key`]);
//! without it the HMAC cannot be checked, and every record counts as
//! unverified ([`Records::unverified`], [`TrailStats::unverified`]). Torn
//! lines and other bytes that are not records are reported as errors with
//! their place, never as records.

pub(crate) mod collected;
pub(crate) mod verify;
pub use collected::{
    verify_collected, ChainReport, CollectedFailure, CollectedOptions, CollectedReport, Place,
    DEFAULT_WINDOW,
};
pub use verify::{
    verify, verify_opts, verify_with, Failure, FailureKind, VerifyOptions, VerifyReport,
};

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::policy::{Compliance, Policy};
use crate::record::chain::{check_line, Hasher, LinkError};
use crate::record::fields::{Outcome, Risk};
use crate::record::AuditRecord;
use crate::sink::file::{list_files, open_read, plain_name, AuditRead, FileSink};

/// An audit directory opened for reading.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// use tracing_audit::{trail::AuditTrail, trail::Query, Risk};
/// let trail = AuditTrail::open(dir)?;
/// let risky = Query { min_risk: Some(Risk::High), ..Query::default() };
/// for r in trail.query(&risky).flatten() {
///     println!("{} {:?} {:?}", r.seq, r.event_type, r.actor);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AuditTrail {
    dir: PathBuf,
    files: Vec<PathBuf>,
    hasher: Hasher,
    /// A key was given.
    keyed: bool,
    /// The trail declares HMAC (from its first record).
    declares_keyed: bool,
}

impl AuditTrail {
    /// Opens a directory written with the default file names (`audit.*.jsonl`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, TrailError> {
        Self::open_with(&FileSink::new(dir))
    }

    /// Opens a directory written with a custom prefix/suffix.
    pub fn open_with(sink: &FileSink) -> Result<Self, TrailError> {
        let files = list_files(&sink.dir, &sink.prefix, &sink.suffix)
            .map_err(|e| TrailError::io("read audit directory", &sink.dir, e))?;
        let declares_keyed = match files.first() {
            Some(f) => {
                first_line_declares_keyed(f).map_err(|e| TrailError::io("read audit file", f, e))?
            }
            None => false,
        };
        Ok(AuditTrail {
            dir: sink.dir.clone(),
            files,
            hasher: Hasher::Plain,
            keyed: false,
            declares_keyed,
        })
    }

    /// Checks each record's HMAC with `key` (a keyed trail); a line whose
    /// HMAC does not check is not a record.
    ///
    /// ```no_run
    /// let trail = tracing_audit::trail::AuditTrail::open("./audit")?.with_key(b"the chain key");
    /// # let _ = trail;
    /// # Ok::<(), tracing_audit::trail::TrailError>(())
    /// ```
    #[must_use]
    pub fn with_key(mut self, key: &[u8]) -> Self {
        self.hasher = Hasher::new(Some(key));
        self.keyed = true;
        self
    }

    /// Whether the trail is keyed and no key was given: its records cannot
    /// be authenticated, only read.
    pub fn unverified(&self) -> bool {
        self.declares_keyed && !self.keyed
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The audit files, oldest first (the order their names sort in).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Replays every record through `policies` (see
    /// [`Compliance::replay`]): the report `tracing-audit report` prints.
    /// Returns the handle and the number of unreadable lines skipped.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let tmp = tempfile::tempdir()?;
    /// # let dir = tmp.path();
    /// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
    /// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
    /// let (compliance, unreadable) = trail.compliance(tracing_audit::Policy::defaults());
    /// assert_eq!(unreadable, 0);
    /// assert_eq!(compliance.reports().len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn compliance(&self, policies: Vec<Policy>) -> (Compliance, u64) {
        Compliance::replay(self.records(), policies)
    }

    /// Every record, oldest first. Lines that do not parse are yielded as
    /// errors (with file and line) and reading goes on.
    pub fn records(&self) -> Records {
        Records {
            files: self.files.clone().into(),
            current: None,
            buf: Vec::new(),
            check: SealCheck {
                hasher: self.hasher.clone(),
                accept_unverified: self.unverified(),
                unverified: 0,
            },
            offset: 0,
            last_line: Vec::new(),
        }
    }

    /// Every record with the exact bytes it was stored as, oldest first.
    ///
    /// ```no_run
    /// use std::io::Write;
    /// let trail = tracing_audit::trail::AuditTrail::open("./audit")?;
    /// let mut out = std::io::stdout().lock();
    /// for s in trail.sealed().flatten() {
    ///     out.write_all(&s.line)?;
    ///     out.write_all(b"\n")?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sealed(&self) -> SealedRecords {
        SealedRecords(self.records())
    }

    /// The records that match `query`, oldest first.
    pub fn query<'q>(
        &self,
        query: &'q Query,
    ) -> impl Iterator<Item = Result<AuditRecord, ReadError>> + 'q {
        self.records()
            .filter(move |r| r.as_ref().map_or(true, |r| query.matches(r)))
    }

    /// The newest `n` records that match `query` (oldest of them first),
    /// and the lines that could not be read.
    pub fn recent(&self, n: usize, query: &Query) -> (Vec<AuditRecord>, Vec<ReadError>) {
        let mut ring = VecDeque::with_capacity(n.min(4096));
        let mut errors = Vec::new();
        for r in self.query(query) {
            match r {
                Ok(r) => {
                    if n == 0 {
                        continue;
                    }
                    if ring.len() == n {
                        ring.pop_front();
                    }
                    ring.push_back(r);
                }
                Err(e) => errors.push(e),
            }
        }
        (ring.into(), errors)
    }

    /// Counts by event type, actor, outcome, risk and day.
    pub fn stats(&self, query: &Query) -> TrailStats {
        let mut s = TrailStats::default();
        let mut records = self.records();
        for r in records.by_ref() {
            match r {
                Ok(r) if query.matches(&r) => s.add(&r),
                Ok(_) => {}
                Err(_) => s.unreadable += 1,
            }
        }
        s.unverified = records.unverified();
        s.finish();
        s
    }
}

/// A record together with the exact bytes it was read from (without the
/// newline): what a SIEM export must print, since only those bytes hash to
/// the record's `hash`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// use std::io::Write;
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// let mut out = Vec::new();
/// for s in trail.sealed().flatten() {
///     out.extend_from_slice(&s.line); // the exact stored bytes: they hash to s.record.hash
///     out.push(b'\n');
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    /// The parsed record.
    pub record: AuditRecord,
    /// The line as stored.
    pub line: Vec<u8>,
}

/// Iterator over a trail's records with their stored bytes (see
/// [`AuditTrail::sealed`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// let lines: Vec<Vec<u8>> = trail.sealed().flatten().map(|s| s.line).collect();
/// # let _ = lines;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SealedRecords(Records);

impl Iterator for SealedRecords {
    type Item = Result<Sealed, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.0.next()?;
        Some(r.map(|record| Sealed {
            record,
            line: std::mem::take(&mut self.0.last_line),
        }))
    }
}

impl SealedRecords {
    /// Records yielded whose HMAC could not be checked (keyed trail, no key).
    pub fn unverified(&self) -> u64 {
        self.0.check.unverified
    }
}

/// Why a trail could not be opened, read or verified (a line that is not
/// a record is not this: it is a [`ReadError`] item, or a verify
/// [`Failure`]).
///
/// ```
/// use tracing_audit::trail::{AuditTrail, TrailError};
/// let err = AuditTrail::open("/nonexistent/audit").unwrap_err();
/// assert!(matches!(err, TrailError::Io { .. }), "{err}");
/// assert!(err.to_string().contains("/nonexistent/audit"), "{err}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrailError {
    /// A file system operation failed.
    #[error("failed to {what} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl TrailError {
    pub(crate) fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        TrailError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A line that is not a readable record.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// for e in trail.records().filter_map(Result::err) {
///     eprintln!("{}:{}: {}", e.file.display(), e.line, e.message);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ReadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// Iterator over a trail's records (see [`AuditTrail::records`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// let mut records = trail.records();
/// let n = records.by_ref().filter(|r| r.is_ok()).count();
/// println!("{n} records, {} unverified", records.unverified());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Records {
    files: VecDeque<PathBuf>,
    current: Option<(PathBuf, BufReader<AuditRead>, u64)>,
    buf: Vec<u8>,
    check: SealCheck,
    /// Byte offset of the next line in the current file.
    offset: u64,
    /// The bytes of the last record yielded (for [`SealedRecords`]).
    last_line: Vec<u8>,
}

impl Records {
    /// Records yielded whose HMAC could not be checked (keyed trail, no key).
    pub fn unverified(&self) -> u64 {
        self.check.unverified
    }
}

/// Whether a complete line is a record: its hash (or HMAC) checks, and it
/// parses strictly. Shared by [`Records`] and [`Follower`].
#[derive(Debug, Clone)]
struct SealCheck {
    hasher: Hasher,
    /// Keyed trail, no key: yield well-formed sealed lines, counted.
    accept_unverified: bool,
    unverified: u64,
}

impl SealCheck {
    /// `line` is complete, without its newline.
    fn record(&mut self, line: &[u8]) -> Result<AuditRecord, String> {
        match check_line(&self.hasher, line) {
            Ok(_) => {}
            Err(LinkError::HashMismatch) if self.accept_unverified => self.unverified += 1,
            Err(LinkError::HashMismatch) => {
                return Err("not a record: its hash does not check (edited, or a wrong key)".into())
            }
            Err(LinkError::Malformed) => {
                return Err(format!(
                "not a record ({} bytes): a torn line from a crash, or bytes someone else wrote",
                line.len()
            ))
            }
        }
        AuditRecord::parse(line).map_err(|e| format!("not a record of the schema: {e}"))
    }
}

impl Iterator for Records {
    type Item = Result<AuditRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let path = self.files.pop_front()?;
                match open_read(&path) {
                    Ok(f) => self.current = Some((path, BufReader::with_capacity(1 << 16, f), 0)),
                    Err(e) => {
                        return Some(Err(ReadError {
                            file: path,
                            line: 0,
                            message: format!("cannot open: {e}"),
                        }))
                    }
                }
            }
            let (path, reader, line_no) = self.current.as_mut()?;
            match crate::sink::file::lines::next_line(reader, &mut self.buf) {
                Ok(read) if read.consumed == 0 => {
                    self.current = None;
                    self.offset = 0;
                    continue;
                }
                Ok(read) => {
                    *line_no += 1;
                    let (file, line_no, at) = (path.clone(), *line_no, self.offset);
                    self.offset += read.consumed;
                    if read.len == 0 {
                        continue;
                    }
                    let err = |message: String| ReadError {
                        file,
                        line: line_no,
                        message: format!("{message} (offset {at})"),
                    };
                    if read.overlong.is_some() {
                        return Some(Err(err(format!(
                            "not a record: a line of {} bytes, longer than any record",
                            read.len
                        ))));
                    }
                    if !read.terminated {
                        return Some(Err(err("torn last line (no newline): not a record".into())));
                    }
                    let line = std::mem::take(&mut self.buf);
                    let r = self.check.record(&line).map_err(err);
                    self.last_line.clear();
                    self.last_line.extend_from_slice(&line);
                    self.buf = line;
                    return Some(r);
                }
                Err(e) => {
                    let e = ReadError {
                        file: path.clone(),
                        line: *line_no + 1,
                        message: format!("read error: {e}"),
                    };
                    self.current = None;
                    self.offset = 0;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Whether the first line of `path` declares an HMAC chain.
fn first_line_declares_keyed(path: &Path) -> io::Result<bool> {
    let mut line = Vec::new();
    BufReader::new(open_read(path)?)
        .take(crate::sink::file::resume::MAX_LINE)
        .read_until(b'\n', &mut line)?;
    let declared = serde_json::from_slice::<serde_json::Value>(line.trim_ascii_end())
        .ok()
        .and_then(|v| v["details"]["chain"].as_str().map(str::to_owned));
    Ok(declared.as_deref() == Some("hmac-sha256"))
}

/// A filter over records; every field that is set must match.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// use tracing_audit::{Outcome, trail::Query};
/// let q = Query { actor: Some("mallory".into()), outcome: Some(Outcome::Failure), ..Query::default() };
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// let (newest, _errors) = trail.recent(10, &q);
/// assert!(newest.len() <= 10);
/// # Ok(()) }
/// ```
///
/// With feature `cli` it is also the command's filter options (`clap`),
/// so the command and the library filter the same way; its times are read
/// with [`parse_time`].
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args), group(id = "filters"))]
pub struct Query {
    /// Only this event type.
    #[cfg_attr(feature = "cli", arg(long))]
    pub event_type: Option<String>,
    /// Only this actor.
    #[cfg_attr(feature = "cli", arg(long))]
    pub actor: Option<String>,
    /// Only this session id.
    #[cfg_attr(feature = "cli", arg(long))]
    pub session: Option<String>,
    /// Only this resource.
    #[cfg_attr(feature = "cli", arg(long))]
    pub resource: Option<String>,
    /// Only this outcome (success, failure, unknown).
    #[cfg_attr(feature = "cli", arg(long))]
    pub outcome: Option<Outcome>,
    /// Only this risk or higher (low, medium, high, critical).
    #[cfg_attr(feature = "cli", arg(long))]
    pub min_risk: Option<Risk>,
    /// Only at or after this time: RFC 3339, a date (`2026-11-22`, UTC
    /// midnight), or a time ago (`30s`, `15m`, `1h`, `7d`).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_time))]
    pub since: Option<DateTime<Utc>>,
    /// Only at or before this time (same forms as `since`).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_time))]
    pub until: Option<DateTime<Utc>>,
}

/// Reads a time as the command's `--since` and `--until` take it: RFC 3339,
/// a date `YYYY-MM-DD` (UTC midnight), or a time ago, `N` followed by `s`,
/// `m`, `h` or `d`.
///
/// ```
/// use tracing_audit::trail::parse_time;
/// assert_eq!(parse_time("2026-11-22").unwrap().to_rfc3339(), "2026-11-22T00:00:00+00:00");
/// let hour_ago = parse_time("1h").unwrap();
/// assert!(chrono::Utc::now() - hour_ago >= chrono::Duration::minutes(59));
/// assert!(parse_time("yesterday").is_err());
/// ```
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| {
        format!("{s:?}: expected RFC 3339, YYYY-MM-DD, or a time ago like 30m, 1h, 7d")
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: a time ago ends in s, m, h or d")),
    };
    Ok(Utc::now() - chrono::Duration::seconds(secs))
}

impl Query {
    /// Whether `r` passes every set filter.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        }
        eq(&self.event_type, &r.event_type)
            && eq(&self.actor, &r.actor)
            && eq(&self.session, &r.session_id)
            && eq(&self.resource, &r.resource)
            && self.outcome.is_none_or(|o| o == r.outcome)
            && self.min_risk.is_none_or(|m| r.risk_level >= m)
            && self.since.is_none_or(|t| r.timestamp >= t)
            && self.until.is_none_or(|t| r.timestamp <= t)
    }
}

/// Distinct actors counted one by one while computing [`TrailStats`].
///
/// ```
/// assert!(tracing_audit::trail::ACTORS_TRACKED >= tracing_audit::trail::TOP_ACTORS);
/// ```
pub const ACTORS_TRACKED: usize = 100_000;

/// Most actors listed in [`TrailStats::by_actor`]; the rest are summed in
/// [`TrailStats::other_actors`].
///
/// ```
/// assert!(tracing_audit::trail::TOP_ACTORS >= 10);
/// ```
pub const TOP_ACTORS: usize = 50;

/// Totals over a trail.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let trail = tracing_audit::trail::AuditTrail::open(dir)?;
/// let stats = trail.stats(&tracing_audit::trail::Query::default());
/// for (actor, n) in stats.top_actors(5) {
///     println!("{n:>6} {actor}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TrailStats {
    /// Records counted.
    pub total: u64,
    /// Lines that were not readable records.
    pub unreadable: u64,
    /// Records whose HMAC could not be checked (a keyed trail read without
    /// its key).
    pub unverified: u64,
    /// By event type.
    pub by_event_type: BTreeMap<String, u64>,
    /// By actor: the [`TOP_ACTORS`] most frequent (see [`TrailStats::top_actors`]).
    pub by_actor: BTreeMap<String, u64>,
    /// Records of every other actor, summed. While reading, at most
    /// [`ACTORS_TRACKED`] distinct actors are counted one by one (memory
    /// stays bounded whatever the trail holds); records of actors first seen
    /// after that are summed here too.
    pub other_actors: u64,
    /// By outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// By risk.
    pub by_risk: BTreeMap<String, u64>,
    /// By UTC day (`YYYY-MM-DD`).
    pub by_day: BTreeMap<String, u64>,
    /// First and last timestamp.
    pub first: Option<DateTime<Utc>>,
    /// Last timestamp.
    pub last: Option<DateTime<Utc>>,
}

impl TrailStats {
    fn add(&mut self, r: &AuditRecord) {
        self.total += 1;
        *self
            .by_event_type
            .entry(r.event_type.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
        let actor = r.actor.as_deref().unwrap_or("(none)");
        let tracked = self.by_actor.len();
        match self.by_actor.get_mut(actor) {
            Some(n) => *n += 1,
            None if tracked < ACTORS_TRACKED => {
                self.by_actor.insert(actor.to_owned(), 1);
            }
            None => self.other_actors += 1,
        }
        *self
            .by_outcome
            .entry(r.outcome.as_str().into())
            .or_default() += 1;
        *self
            .by_risk
            .entry(r.risk_level.as_str().into())
            .or_default() += 1;
        *self
            .by_day
            .entry(r.timestamp.format("%Y-%m-%d").to_string())
            .or_default() += 1;
        self.first = Some(self.first.map_or(r.timestamp, |f| f.min(r.timestamp)));
        self.last = Some(self.last.map_or(r.timestamp, |l| l.max(r.timestamp)));
    }

    /// Keeps the [`TOP_ACTORS`] most frequent actors and sums the rest into
    /// `other_actors`.
    fn finish(&mut self) {
        if self.by_actor.len() <= TOP_ACTORS {
            return;
        }
        let top: BTreeMap<String, u64> = self
            .top_actors(TOP_ACTORS)
            .into_iter()
            .map(|(a, n)| (a.to_owned(), n))
            .collect();
        let kept: u64 = top.values().sum();
        let all: u64 = self.by_actor.values().sum();
        self.other_actors += all - kept;
        self.by_actor = top;
    }

    /// Actors by count, most first, at most `k`.
    pub fn top_actors(&self, k: usize) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .by_actor
            .iter()
            .map(|(a, n)| (a.as_str(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(k);
        v
    }
}

/// Reads records appended to a trail since the last call, following
/// rotation (the basis of `tracing-audit tail -f`). Like [`Records`], it
/// yields only sealed records; a line still being written is kept until
/// its newline arrives.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(dir).build::<tracing_subscriber::Registry>()?; drop(g);
/// let mut f = tracing_audit::trail::Follower::from_end(tracing_audit::FileSink::new(dir))?;
/// for r in f.poll()?.into_iter().flatten() {
///     println!("{} {:?}", r.seq, r.event_type);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Follower {
    sink: FileSink,
    file: Option<(PathBuf, BufReader<AuditRead>)>,
    /// Complete lines read from the current file.
    line: u64,
    partial: Vec<u8>,
    /// The line being read passed the length cap.
    overlong: bool,
    check: SealCheck,
}

impl Follower {
    /// Starts at the end of the newest file's last complete line (a line
    /// still being written is printed once it is complete).
    pub fn from_end(sink: FileSink) -> Result<Self, TrailError> {
        Self::from_end_keyed(sink, None)
    }

    /// [`from_end`](Self::from_end), checking each record's HMAC with `key`.
    pub fn from_end_keyed(sink: FileSink, key: Option<&[u8]>) -> Result<Self, TrailError> {
        let files = list_files(&sink.dir, &sink.prefix, &sink.suffix)
            .map_err(|e| TrailError::io("read audit directory", &sink.dir, e))?;
        let declares_keyed = match files.first() {
            Some(f) => {
                first_line_declares_keyed(f).map_err(|e| TrailError::io("read audit file", f, e))?
            }
            None => false,
        };
        let mut f = Follower {
            sink,
            file: None,
            line: 0,
            partial: Vec::new(),
            overlong: false,
            check: SealCheck {
                hasher: Hasher::new(key),
                accept_unverified: key.is_none() && declares_keyed,
                unverified: 0,
            },
        };
        if let Some(newest) = files.last() {
            let (r, lines) = Self::skip_complete(newest)
                .map_err(|e| TrailError::io("read audit file", newest, e))?;
            f.file = Some((newest.clone(), r));
            f.line = lines;
        }
        Ok(f)
    }

    /// Opens `path` just past its last complete line; returns the reader
    /// and the number of lines skipped.
    fn skip_complete(path: &Path) -> io::Result<(BufReader<AuditRead>, u64)> {
        let mut r = BufReader::new(open_read(path)?);
        let mut line = Vec::new();
        let (mut complete_end, mut at, mut lines) = (0u64, 0u64, 0u64);
        loop {
            let read = crate::sink::file::lines::next_line(&mut r, &mut line)?;
            if read.consumed == 0 {
                break;
            }
            at += read.consumed;
            if read.terminated {
                complete_end = at;
                lines += 1;
            }
        }
        // Again from the start, up to the end of the last complete line
        // (a compressed file cannot seek).
        let mut r = BufReader::new(open_read(path)?);
        io::copy(&mut (&mut r).take(complete_end), &mut io::sink())?;
        Ok((r, lines))
    }

    /// Complete new records; lines that are not records as errors (the
    /// same errors, with file and line, as [`AuditTrail::records`] gives).
    pub fn poll(&mut self) -> Result<Vec<Result<AuditRecord, ReadError>>, TrailError> {
        Ok(self
            .poll_sealed()?
            .into_iter()
            .map(|r| r.map(|s| s.record))
            .collect())
    }

    /// Like [`poll`](Self::poll), with each record's stored bytes.
    pub fn poll_sealed(&mut self) -> Result<Vec<Result<Sealed, ReadError>>, TrailError> {
        let mut out = Vec::new();
        loop {
            self.drain_current(&mut out)?;
            let dir = &self.sink.dir;
            let files = list_files(dir, &self.sink.prefix, &self.sink.suffix)
                .map_err(|e| TrailError::io("read audit directory", dir, e))?;
            // By name before compression: the file being read may have
            // become `<name>.gz` meanwhile, and is not a next file.
            let next = match &self.file {
                Some((cur, _)) => {
                    let cur = plain_name(cur);
                    files.into_iter().find(|f| plain_name(f) > cur)
                }
                None => files.into_iter().next(),
            };
            let Some(next) = next else { return Ok(out) };
            // The writer finished the old file before starting the new one:
            // read what reached it after the last read, then switch.
            self.drain_current(&mut out)?;
            self.partial.clear();
            let r = open_read(&next).map_err(|e| TrailError::io("open audit file", &next, e))?;
            self.file = Some((next, BufReader::new(r)));
            self.line = 0;
        }
    }

    fn drain_current(
        &mut self,
        out: &mut Vec<Result<Sealed, ReadError>>,
    ) -> Result<(), TrailError> {
        let path = match &self.file {
            Some((p, _)) => p.clone(),
            None => return Ok(()),
        };
        self.drain(&path, out)
            .map_err(|e| TrailError::io("read audit file", &path, e))
    }

    fn drain(&mut self, path: &Path, out: &mut Vec<Result<Sealed, ReadError>>) -> io::Result<()> {
        let Some((_, r)) = &mut self.file else {
            return Ok(());
        };
        loop {
            let read = crate::sink::file::lines::read_line(
                r,
                &mut self.partial,
                crate::sink::file::lines::MAX_LINE,
            )?;
            if read.overlong.is_some() {
                self.overlong = true;
            }
            if !read.terminated {
                return Ok(());
            }
            let line = std::mem::take(&mut self.partial);
            self.line += 1;
            let err = |line: u64, message: String| ReadError {
                file: path.to_path_buf(),
                line,
                message,
            };
            if std::mem::take(&mut self.overlong) {
                out.push(Err(err(
                    self.line,
                    "not a record: a line longer than any record".into(),
                )));
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let at = self.line;
            out.push(
                self.check
                    .record(&line)
                    .map(|record| Sealed { record, line })
                    .map_err(|m| err(at, m)),
            );
        }
    }
}
