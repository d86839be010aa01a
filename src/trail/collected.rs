//! Verifying the copy a central store collected: records exported from a
//! SIEM or written by a relay (`imrelp` → `omfile`), many chains
//! interleaved, in any order, duplicates possible.
//!
//! Each input line is one record's JSON, optionally preceded by anything
//! before it (a UTF-8 BOM, a relay template's timestamp, host and
//! structured data, which may itself hold a `{`): the record starts at the
//! first `{"schema":`. Records are grouped by `chain_id` (schema 1 records, which have
//! none, form one group named `-`) and consumed per chain in `seq` order:
//! a record that arrives early waits in a per-chain reordering window;
//! when the window is full, or the input ends, the chain moves on to the
//! lowest waiting `seq` and what it skipped is a gap.
//!
//! Per chain it reports the `seq` range, the gaps as ranges, identical
//! duplicates (tolerated, counted), different records with the same `seq`
//! (tampering), and the first failure with its file and line: a record
//! whose bytes do not match its hash, or one that does not link to the
//! record before it. With checkpoint keys, every `checkpoint` record is
//! checked as `verify` does ([`crate::record::checkpoint`]) and the records
//! after a chain's last good one are its unverified tail.
//!
//! Memory is bounded by the number of chains times the window, never by
//! the size of the input: per chain, each waiting record costs about 100
//! bytes and each of the last `window` consumed ones 16 (about 1 MiB at the
//! default window once a chain has that many records; an in-order input
//! never has more than one record waiting).
//!
//! A leaf of `trail`: uses `record::chain` to read and check lines.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::record::chain::{hash_checks_pair, hash_matches, read_link, Hasher, Link, GENESIS};
use crate::record::checkpoint::{check_checkpoint, CheckpointPublicKey};
use crate::record::CheckedRecord;
use crate::trail::TrailError;

/// The default [`CollectedOptions::window`].
pub const DEFAULT_WINDOW: usize = 65_536;
/// Lines that are not records are counted; this many are listed.
const LISTED: usize = 20;
/// The longest line read; longer ones are counted as not records.
const MAX_LINE: usize = 4 << 20;

/// How to verify a collected copy.
///
/// ```
/// let opts = tracing_audit::trail::CollectedOptions::default().window(1024);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct CollectedOptions {
    key: Option<Vec<u8>>,
    window: usize,
    checkpoint_keys: Vec<CheckpointPublicKey>,
}

impl Default for CollectedOptions {
    fn default() -> Self {
        CollectedOptions {
            key: None,
            window: DEFAULT_WINDOW,
            checkpoint_keys: Vec::new(),
        }
    }
}

impl CollectedOptions {
    /// The chain key, for trails sealed with HMAC-SHA-256 (all chains of
    /// the input are checked under it).
    #[must_use]
    pub fn key(mut self, key: &[u8]) -> Self {
        self.key = Some(key.to_vec());
        self
    }

    /// How far out of order a record may arrive, in records of its chain
    /// (default 65 536; at least 1). A record further out than that is
    /// reported as a gap where it belonged and counted as late.
    #[must_use]
    pub fn window(mut self, records: usize) -> Self {
        self.window = records.max(1);
        self
    }

    /// Checks every `checkpoint` record against `key` (call again for each
    /// key), as [`crate::trail::VerifyOptions::checkpoint_key`] does.
    #[must_use]
    pub fn checkpoint_key(mut self, key: CheckpointPublicKey) -> Self {
        self.checkpoint_keys.push(key);
        self
    }
}

/// Where a line was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// The input file (`-` for standard input).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
}

/// What was found wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectedFailure {
    /// `seq` of the record.
    pub seq: u64,
    /// Where it was read.
    pub at: Place,
    /// What is wrong.
    pub detail: String,
}

/// One chain of a collected copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The chain's id (`-` for schema 1 records, which have none).
    pub chain_id: String,
    /// Distinct records.
    pub records: u64,
    /// Lowest `seq` seen.
    pub first_seq: Option<u64>,
    /// Highest `seq` seen.
    pub last_seq: Option<u64>,
    /// Missing `seq` ranges between them (inclusive).
    pub gaps: Vec<(u64, u64)>,
    /// Copies of a record identical to one already seen (tolerated).
    pub duplicates: u64,
    /// Records that arrived further out of order than the window (they
    /// sit in a reported gap).
    pub late: u64,
    /// Different records with the same `seq`: tampering (the first few).
    pub conflicts: Vec<CollectedFailure>,
    /// Records that conflict with another, in all.
    pub conflicting: u64,
    /// The first record whose hash does not match its bytes, that is not a
    /// record of the schema, or that does not link to the record before it.
    pub first_mismatch: Option<CollectedFailure>,
    /// `checkpoint` records seen (checked when keys were given).
    pub checkpoints: u64,
    /// With checkpoint keys: the first checkpoint that did not verify.
    pub bad_checkpoint: Option<CollectedFailure>,
    /// With checkpoint keys: `seq` of the highest checkpoint that verified.
    pub last_checkpoint_seq: Option<u64>,
    /// With checkpoint keys: records above it (all if none verified).
    pub unverified_tail: Option<u64>,
}

impl ChainReport {
    /// Intact and gap-free: no gap, no conflict, no mismatch, nothing late.
    pub fn is_ok(&self) -> bool {
        self.gaps.is_empty()
            && self.conflicting == 0
            && self.first_mismatch.is_none()
            && self.bad_checkpoint.is_none()
            && self.late == 0
    }
}

/// What [`verify_collected`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CollectedReport {
    /// Per chain, by chain id.
    pub chains: Vec<ChainReport>,
    /// Lines read.
    pub lines: u64,
    /// Lines that are not sealed records (a relay's own messages, blank
    /// lines, records cut short), in all.
    pub not_records: u64,
    /// The first few of them.
    pub not_record_places: Vec<Place>,
}

impl CollectedReport {
    /// Whether every chain is intact and gap-free, and there is at least
    /// one record.
    pub fn is_ok(&self) -> bool {
        !self.chains.is_empty() && self.chains.iter().all(ChainReport::is_ok)
    }
}

/// A record kept while it waits for its turn, or after it (to tell a
/// duplicate from a conflict).
#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: [u8; 32],
    prev: [u8; 32],
    file: u32,
    line: u64,
}

/// One chain's progress.
#[derive(Debug, Default)]
struct ChainState {
    report: ChainReport,
    /// The next `seq` to consume, once known.
    next: Option<u64>,
    /// The hash of the record consumed just before `next` (none after a gap).
    prev: Option<[u8; 32]>,
    /// Records ahead of `next`.
    waiting: BTreeMap<u64, Entry>,
    /// The last `window` consumed records, oldest first (so sorted by
    /// `seq`), with the first 8 bytes of their hash: enough to tell a copy
    /// from a different record (a forger would need a 64-bit second
    /// preimage of SHA-256) at 16 bytes a record.
    done: VecDeque<(u64, u64)>,
}

/// The first 8 bytes of a hash.
fn prefix(hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// The verifier's state over all inputs.
struct Collector {
    hasher: Hasher,
    checkpoint_keys: Vec<CheckpointPublicKey>,
    window: usize,
    chains: HashMap<String, ChainState>,
    files: Vec<PathBuf>,
    report: CollectedReport,
}

impl Collector {
    fn place(&self, file: u32, line: u64) -> Place {
        Place {
            file: self.files[file as usize].clone(),
            line,
        }
    }

    fn not_a_record(&mut self, file: u32, line: u64) {
        self.report.not_records += 1;
        if self.report.not_record_places.len() < LISTED {
            let p = self.place(file, line);
            self.report.not_record_places.push(p);
        }
    }

    /// Two input lines, in order: their hashes are checked together
    /// ([`hash_checks_pair`]: the hashing interleaved) when both hold a
    /// record.
    fn line_pair(&mut self, a: (&[u8], u64), b: (&[u8], u64), file: u32) {
        let (ra, rb) = (record_part(a.0), record_part(b.0));
        let (ha, hb) = match (ra, rb) {
            (Some(ra), Some(rb)) => {
                let (ha, hb) = hash_checks_pair(&self.hasher, ra, rb);
                (Some(ha), Some(hb))
            }
            _ => (None, None),
        };
        self.line(a.0, file, a.1, ha);
        self.line(b.0, file, b.1, hb);
    }

    /// One input line; `hashed`, whether the hash of its record checks,
    /// when already known.
    fn line(&mut self, bytes: &[u8], file: u32, line: u64, hashed: Option<bool>) {
        self.report.lines += 1;
        let Some(rec) = record_part(bytes) else {
            return self.not_a_record(file, line);
        };
        let Ok(link) = read_link(rec) else {
            return self.not_a_record(file, line);
        };
        // Only sealed records are records: a line whose hash checks must
        // also parse strictly under the schema, as `verify` requires.
        let hash_ok = hashed.unwrap_or_else(|| hash_matches(&self.hasher, rec));
        let wrong = if !hash_ok {
            Some("the record's bytes do not match its hash: it was edited (or sealed under another key)".to_owned())
        } else {
            CheckedRecord::check_linked(rec, &link)
                .err()
                .map(|e| format!("a sealed line that is not a record of the schema: {e}"))
        };
        let matches = wrong.is_none();
        let checkpoint =
            matches && memchr::memmem::find(rec, b"\"event_type\":\"checkpoint\"").is_some();
        let verdict = match checkpoint {
            true if !self.checkpoint_keys.is_empty() => {
                Some(check_checkpoint(&self.checkpoint_keys, rec, &link))
            }
            _ => None,
        };
        let at = Place {
            file: self.files[file as usize].clone(),
            line,
        };
        if let Some(st) = self.chain_mut(&link) {
            if checkpoint {
                st.report.checkpoints += 1;
            }
            match verdict {
                Some(Ok(())) => {
                    let r = &mut st.report;
                    r.last_checkpoint_seq =
                        Some(r.last_checkpoint_seq.map_or(link.seq, |s| s.max(link.seq)));
                }
                Some(Err(detail)) if st.report.bad_checkpoint.is_none() => {
                    st.report.bad_checkpoint = Some(CollectedFailure {
                        seq: link.seq,
                        at,
                        detail,
                    });
                }
                _ => {}
            }
        }
        self.record(&link, wrong, file, line);
    }

    /// The state of `link`'s chain, made on its first record.
    fn chain_mut(&mut self, link: &Link<'_>) -> Option<&mut ChainState> {
        let id = link.chain_id.unwrap_or("-");
        if !self.chains.contains_key(id) {
            let mut st = ChainState::default();
            st.report.chain_id = id.to_owned();
            self.chains.insert(id.to_owned(), st);
        }
        self.chains.get_mut(id)
    }

    /// One sealed line of chain `link`; `wrong` says why it is not a
    /// genuine record, if it is not.
    fn record(&mut self, link: &Link<'_>, wrong: Option<String>, file: u32, line: u64) {
        let id = link.chain_id.unwrap_or("-");
        let entry = Entry {
            hash: unhex(link.hash),
            prev: unhex(link.prev_hash),
            file,
            line,
        };
        let seq = link.seq;
        let window = self.window;
        let files = &self.files;
        let place = |e: &Entry| Place {
            file: files[e.file as usize].clone(),
            line: e.line,
        };
        let Some(st) = self.chains.get_mut(id) else {
            return;
        };
        let r = &mut st.report;
        r.first_seq = Some(r.first_seq.map_or(seq, |f| f.min(seq)));
        r.last_seq = Some(r.last_seq.map_or(seq, |l| l.max(seq)));
        if let Some(detail) = wrong {
            if r.first_mismatch.is_none() {
                r.first_mismatch = Some(CollectedFailure {
                    seq,
                    at: place(&entry),
                    detail,
                });
            }
            return;
        }
        // Seen before: waiting, or consumed (then behind `next`).
        let consumed = || {
            let i = st.done.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
            Some(st.done[i].1)
        };
        let earlier = match st.waiting.get(&seq) {
            Some(e) => Some(prefix(&e.hash)),
            None if st.next.is_some_and(|n| seq < n) => consumed(),
            None => None,
        };
        if let Some(h) = earlier {
            if h == prefix(&entry.hash) {
                st.report.duplicates += 1;
            } else {
                st.report.conflicting += 1;
                if st.report.conflicts.len() < LISTED {
                    st.report.conflicts.push(CollectedFailure {
                        seq,
                        at: place(&entry),
                        detail: "a different record with the same seq: tampering".into(),
                    });
                }
            }
            return;
        }
        if st.next.is_some_and(|n| seq < n) {
            // Behind the chain, and older than what is remembered.
            st.report.late += 1;
            return;
        }
        if st.next.is_none() && seq == 0 {
            st.next = Some(0);
        }
        st.waiting.insert(seq, entry);
        Self::advance(st, window, files, false);
    }

    /// Consumes waiting records in order; when the window overflows (or at
    /// the end, `flush`), skips to the lowest waiting `seq` as a gap.
    fn advance(st: &mut ChainState, window: usize, files: &[PathBuf], flush: bool) {
        loop {
            if let Some(next) = st.next {
                if let Some(e) = st.waiting.remove(&next) {
                    Self::consume(st, next, e, window, files);
                    continue;
                }
            }
            let over = st.waiting.len() > window || (flush && !st.waiting.is_empty());
            if !over {
                return;
            }
            let Some((&low, _)) = st.waiting.iter().next() else {
                return;
            };
            if let Some(next) = st.next {
                st.report.gaps.push((next, low - 1));
            }
            st.next = Some(low);
            st.prev = None;
        }
    }

    fn consume(st: &mut ChainState, seq: u64, e: Entry, window: usize, files: &[PathBuf]) {
        let want = match (seq, st.prev) {
            (0, _) => Some(unhex(GENESIS)),
            (_, p) => p,
        };
        if let Some(want) = want {
            if want != e.prev && st.report.first_mismatch.is_none() {
                st.report.first_mismatch = Some(CollectedFailure {
                    seq,
                    at: Place {
                        file: files[e.file as usize].clone(),
                        line: e.line,
                    },
                    detail: format!(
                        "does not link to the record before it (seq {}): records were altered, inserted or reordered",
                        seq.saturating_sub(1)
                    ),
                });
            }
        }
        st.report.records += 1;
        st.prev = Some(e.hash);
        st.next = Some(seq + 1);
        st.done.push_back((seq, prefix(&e.hash)));
        if st.done.len() > window {
            st.done.pop_front();
        }
    }

    fn finish(mut self) -> CollectedReport {
        let window = self.window;
        let mut chains: Vec<ChainState> = self.chains.into_values().collect();
        let keyed = !self.checkpoint_keys.is_empty();
        for st in &mut chains {
            Self::advance(st, window, &self.files, true);
            if keyed {
                let r = &mut st.report;
                r.unverified_tail = Some(match (r.last_checkpoint_seq, r.last_seq) {
                    (Some(c), Some(l)) => l - c,
                    _ => r.records,
                });
            }
        }
        let mut reports: Vec<ChainReport> = chains.into_iter().map(|s| s.report).collect();
        reports.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        self.report.chains = reports;
        self.report
    }
}

/// Verifies a collected copy read from `inputs` (a path, or `-` for
/// standard input, each).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let (_l, g) = tracing_audit::AuditLayer::builder().file(tmp.path()).build::<tracing_subscriber::Registry>()?; drop(g);
/// # let export = tmp.path().join("export.log");
/// # let mut text = String::new();
/// # for f in std::fs::read_dir(tmp.path())? { let f = f?.path(); if f.extension().is_some_and(|e| e == "jsonl") { text += &std::fs::read_to_string(f)?; } }
/// # std::fs::write(&export, text)?;
/// use tracing_audit::trail::{verify_collected, CollectedOptions};
/// let report = verify_collected(&[export], &CollectedOptions::default())?;
/// assert!(report.is_ok(), "{report:?}");
/// # Ok(()) }
/// ```
pub fn verify_collected(
    inputs: &[impl AsRef<Path>],
    opts: &CollectedOptions,
) -> Result<CollectedReport, TrailError> {
    let mut c = Collector {
        hasher: Hasher::new(opts.key.as_deref()),
        checkpoint_keys: opts.checkpoint_keys.clone(),
        window: opts.window,
        chains: HashMap::new(),
        files: Vec::new(),
        report: CollectedReport::default(),
    };
    for input in inputs {
        let path = input.as_ref();
        let file = c.files.len() as u32;
        c.files.push(path.to_path_buf());
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).map_err(|e| TrailError::io("open", path, e))?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, f))
        };
        // Lines go to the collector two at a time (see `line_pair`): the
        // first of each two is held until the second is read.
        let mut held = Vec::new();
        let mut held_at: Option<u64> = None;
        read_lines(reader, |bytes, line| match held_at.take() {
            None => {
                held.clear();
                held.extend_from_slice(bytes);
                held_at = Some(line);
            }
            Some(at) => c.line_pair((&held, at), (bytes, line), file),
        })
        .map_err(|e| TrailError::io("read", path, e))?;
        if let Some(at) = held_at {
            c.line(&held, file, at, None);
        }
    }
    Ok(c.finish())
}

/// The record in a collected line: from `{"schema":` (a collector may put
/// a prefix before it) to its end, trailing blanks left out.
fn record_part(bytes: &[u8]) -> Option<&[u8]> {
    let start = memchr::memmem::find(bytes, b"{\"schema\":")?;
    let mut rec = &bytes[start..];
    while let Some((&last, rest)) = rec.split_last() {
        if last == b'\n' || last == b'\r' || last == b' ' {
            rec = rest;
        } else {
            break;
        }
    }
    Some(rec)
}

/// Calls `each` with every line (without its newline) and its number; a
/// line longer than [`MAX_LINE`] is passed cut (it is then not a record).
fn read_lines(mut r: Box<dyn BufRead>, mut each: impl FnMut(&[u8], u64)) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let mut too_long = false;
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let (take, end) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if buf.len() + take <= MAX_LINE {
                buf.extend_from_slice(&chunk[..take]);
            } else {
                too_long = true;
            }
            r.consume(take);
            if end {
                break;
            }
        }
        if buf.is_empty() && !too_long {
            return Ok(());
        }
        n += 1;
        if too_long {
            // Never a record: pass something that is not one.
            each(b"", n);
        } else {
            each(&buf, n);
        }
    }
}
