//! Reading a trail back: records in order across rotated files, filters,
//! the newest `n`, and summary statistics. Everything streams line by line;
//! no file is ever loaded whole.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Error;
use crate::fields::{Outcome, Risk};
use crate::file::{list_files, FileSink};
use crate::record::AuditRecord;

/// An audit directory opened for reading.
#[derive(Debug, Clone)]
pub struct AuditTrail {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl AuditTrail {
    /// Opens a directory written with the default file names (`audit.*.jsonl`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(&FileSink::new(dir))
    }

    /// Opens a directory written with a custom prefix/suffix.
    pub fn open_with(sink: &FileSink) -> Result<Self, Error> {
        let files = list_files(&sink.dir, &sink.prefix, &sink.suffix)
            .map_err(|e| Error::io("read audit directory", &sink.dir, e))?;
        Ok(AuditTrail {
            dir: sink.dir.clone(),
            files,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The audit files, oldest first (the order their names sort in).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every record, oldest first. Lines that do not parse are yielded as
    /// errors (with file and line) and reading goes on.
    pub fn records(&self) -> Records {
        Records {
            files: self.files.clone().into(),
            current: None,
            buf: Vec::new(),
        }
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
        for r in self.query(query) {
            match r {
                Ok(r) => s.add(&r),
                Err(_) => s.unreadable += 1,
            }
        }
        s
    }
}

/// A line that is not a readable record.
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
#[derive(Debug)]
pub struct Records {
    files: VecDeque<PathBuf>,
    current: Option<(PathBuf, BufReader<File>, u64)>,
    buf: Vec<u8>,
}

impl Iterator for Records {
    type Item = Result<AuditRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let path = self.files.pop_front()?;
                match File::open(&path) {
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
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => {
                    *line_no += 1;
                    let complete = self.buf.last() == Some(&b'\n');
                    let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                    if line.is_empty() {
                        continue;
                    }
                    let err = |message: String| ReadError {
                        file: path.clone(),
                        line: *line_no,
                        message,
                    };
                    if !complete {
                        return Some(Err(err("torn last line (no newline)".into())));
                    }
                    return Some(
                        serde_json::from_slice(line).map_err(|e| err(format!("not a record: {e}"))),
                    );
                }
                Err(e) => {
                    let e = ReadError {
                        file: path.clone(),
                        line: *line_no + 1,
                        message: format!("read error: {e}"),
                    };
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A filter over records; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// Exact event type.
    pub event_type: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact session id.
    pub session: Option<String>,
    /// Exact resource.
    pub resource: Option<String>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// At least this risk.
    pub min_risk: Option<Risk>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// At or before.
    pub until: Option<DateTime<Utc>>,
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

/// Most actors listed in [`TrailStats::by_actor`]; the rest are summed in `other_actors`.
pub const TOP_ACTORS: usize = 50;

/// Totals over a trail.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TrailStats {
    /// Records counted.
    pub total: u64,
    /// Lines that were not readable records.
    pub unreadable: u64,
    /// By event type.
    pub by_event_type: BTreeMap<String, u64>,
    /// By actor: the [`TOP_ACTORS`] most frequent (see [`TrailStats::top_actors`]).
    pub by_actor: BTreeMap<String, u64>,
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
        *self
            .by_actor
            .entry(r.actor.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
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

/// Reads lines appended to a trail since the last call, following rotation
/// (the basis of `tracing-audit tail -f`).
#[derive(Debug)]
pub struct Follower {
    sink: FileSink,
    file: Option<(PathBuf, BufReader<File>)>,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the end of the newest file.
    pub fn from_end(sink: FileSink) -> io::Result<Self> {
        let mut f = Follower {
            sink,
            file: None,
            partial: Vec::new(),
        };
        if let Some(newest) = list_files(&f.sink.dir, &f.sink.prefix, &f.sink.suffix)?.pop() {
            let mut r = BufReader::new(File::open(&newest)?);
            io::copy(&mut r, &mut io::sink())?;
            f.file = Some((newest, r));
        }
        Ok(f)
    }

    /// Complete new lines, parsed (unparseable ones as errors).
    pub fn poll(&mut self) -> io::Result<Vec<Result<AuditRecord, String>>> {
        let mut out = Vec::new();
        loop {
            self.drain(&mut out)?;
            let files = list_files(&self.sink.dir, &self.sink.prefix, &self.sink.suffix)?;
            let next = match &self.file {
                Some((cur, _)) => files.into_iter().find(|f| f > cur),
                None => files.into_iter().next(),
            };
            let Some(next) = next else { return Ok(out) };
            // The writer finished the old file before starting the new one:
            // read what reached it after the last read, then switch.
            self.drain(&mut out)?;
            self.partial.clear();
            self.file = Some((next.clone(), BufReader::new(File::open(&next)?)));
        }
    }

    fn drain(&mut self, out: &mut Vec<Result<AuditRecord, String>>) -> io::Result<()> {
        let Some((_, r)) = &mut self.file else {
            return Ok(());
        };
        loop {
            let n = r.read_until(b'\n', &mut self.partial)?;
            if n == 0 || self.partial.last() != Some(&b'\n') {
                return Ok(());
            }
            let line = std::mem::take(&mut self.partial);
            out.push(serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| e.to_string()));
        }
    }
}
