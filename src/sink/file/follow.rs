//! Reading sealed records from the trail files in `seq` order, while the
//! worker is still writing them: what a forwarder reads when the file is
//! its write-ahead log.
//!
//! A [`Follower`] starts at a wanted `seq` (the one after the forwarder's
//! cursor): in the newest file whose first record is not after it, skipping
//! records before it. It then reads complete lines only (a line still being
//! written waits for its newline), across rotation (a newer file is looked
//! for only when the current one is read to its end and the worker said it
//! wrote further), and across compression (a file compressed while open is
//! still read through its descriptor; a file found compressed is read
//! decompressed). Lines that are not sealed records (torn pieces a restart
//! ended with a newline, junk) are skipped. A line laid out as a sealed
//! record whose hash does not check under the chain's key (edited after it
//! was written, or planted by whoever could write the files) is never
//! handed on: it is skipped and reported ([`Follower::take_refused`]), so a
//! relay sees a gap in `seq`, never the edit. Memory: the reader's 64 KiB
//! buffer and one line.
//!
//! When retention deleted files not yet read, the follower goes on with the
//! oldest file left; the writer says so in the trail (`forward_gap`).

use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use super::lines::{self, read_line};
use super::{list_files, open_read, plain_name, AuditRead};
use crate::record::chain::{hash_checks, read_link, Hasher};

/// Refused lines held between two [`Follower::take_refused`] calls.
const MAX_REFUSED_HELD: usize = 64;

/// One file being read.
struct Open {
    /// Its name before compression (the order of files).
    name: String,
    reader: BufReader<AuditRead>,
}

/// Reads records from an audit directory in order; see the module doc.
pub(crate) struct Follower {
    dir: PathBuf,
    prefix: String,
    suffix: String,
    cur: Option<Open>,
    /// A line read up to the end of the file without its newline yet.
    partial: Vec<u8>,
    /// The next `seq` wanted.
    next: u64,
    /// The chain's hash (keyed or not): every line handed on checks under it.
    hasher: Hasher,
    /// Lines refused since [`Follower::take_refused`]: their `seq` and file.
    refused: Vec<(u64, String)>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("dir", &self.dir)
            .field("file", &self.cur.as_ref().map(|c| &c.name))
            .field("next", &self.next)
            .finish()
    }
}

impl Follower {
    /// A follower of the files `prefix*suffix` in `dir`, from `next`, that
    /// hands on only lines whose hash checks under `hasher`.
    pub(crate) fn new(dir: &Path, prefix: &str, suffix: &str, next: u64, hasher: Hasher) -> Self {
        Follower {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            cur: None,
            partial: Vec::new(),
            next,
            hasher,
            refused: Vec::new(),
        }
    }

    /// The lines refused since the last call (laid out as records, but
    /// their hash does not check): `seq` and file name of each.
    pub(crate) fn take_refused(&mut self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.refused)
    }

    /// Reads again from `seq` (a stream died with records in its buffers):
    /// the start is looked for as at the beginning.
    pub(crate) fn restart_at(&mut self, seq: u64) {
        self.cur = None;
        self.partial.clear();
        self.next = seq;
    }

    /// The next record's line (without its newline) and `seq`, or `None`
    /// when everything written so far was read. `written` is the highest
    /// `seq` written to the files (if any): the follower looks for a newer
    /// file only while it is behind that.
    pub(crate) fn next_record(
        &mut self,
        written: Option<u64>,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.cur.is_none() && !self.open_start()? {
            return Ok(None);
        }
        loop {
            if let Some(rec) = self.read_current()? {
                return Ok(Some(rec));
            }
            if written.is_none_or(|w| w < self.next) {
                return Ok(None);
            }
            let Some(newer) = self.newer_file()? else {
                return Ok(None);
            };
            // What the worker wrote to the current file before it rotated
            // counts; a line still without its newline then is a torn
            // piece (nothing is written to a file after the next exists).
            if let Some(rec) = self.read_current()? {
                return Ok(Some(rec));
            }
            self.partial.clear();
            self.open(&newer)?;
        }
    }

    /// Reads the current file to its next record with a wanted `seq`;
    /// `None` at its end (a line without its newline waits in `partial`).
    fn read_current(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(None);
        };
        loop {
            let line = read_line(&mut cur.reader, &mut self.partial, lines::MAX_LINE)?;
            if !line.terminated {
                return Ok(None);
            }
            let bytes = std::mem::take(&mut self.partial);
            if line.overlong.is_some() {
                continue;
            }
            let Ok(link) = read_link(&bytes) else {
                continue; // not a record: a torn piece or junk
            };
            let seq = link.seq;
            if seq < self.next {
                continue;
            }
            if !hash_checks(&self.hasher, &bytes) {
                // Not a record of this chain: skipped without moving
                // `next`, so the genuine record of that `seq`, if the
                // writer puts it after, is still handed on.
                if self.refused.len() < MAX_REFUSED_HELD {
                    self.refused.push((seq, cur.name.clone()));
                }
                continue;
            }
            self.next = seq + 1;
            return Ok(Some((seq, bytes)));
        }
    }

    /// Opens the file to start from: the newest whose first record is not
    /// after the wanted `seq` (the oldest if every file starts after it).
    /// `false` when there is no audit file yet.
    fn open_start(&mut self) -> io::Result<bool> {
        let files = list_files(&self.dir, &self.prefix, &self.suffix)?;
        let mut pick = None;
        for f in files.iter().rev() {
            pick = Some(f);
            if first_seq(f)?.is_some_and(|s| s <= self.next) {
                break;
            }
        }
        match pick {
            Some(f) => {
                self.open(f)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The first file after the current one, if there is one yet.
    fn newer_file(&self) -> io::Result<Option<PathBuf>> {
        let Some(cur) = &self.cur else {
            return Ok(None);
        };
        let files = list_files(&self.dir, &self.prefix, &self.suffix)?;
        Ok(files.into_iter().find(|f| plain_name(f) > cur.name))
    }

    fn open(&mut self, path: &Path) -> io::Result<()> {
        let reader = BufReader::with_capacity(1 << 16, open_read(path)?);
        self.cur = Some(Open {
            name: plain_name(path),
            reader,
        });
        Ok(())
    }
}

/// The `seq` of the first record of an audit file (`None` if it holds
/// none).
pub(crate) fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut r = BufReader::new(open_read(path)?);
    let mut buf = Vec::new();
    loop {
        let line = lines::next_line(&mut r, &mut buf)?;
        if line.consumed == 0 {
            return Ok(None);
        }
        if let Ok(link) = read_link(&buf) {
            return Ok(Some(link.seq));
        }
    }
}

/// The `seq` of the last record of an audit file (`None` if it holds
/// none). Reads the whole file: used only when retention deletes a file a
/// forwarder has not delivered yet.
pub(crate) fn last_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut r = BufReader::with_capacity(1 << 16, open_read(path)?);
    let mut buf = Vec::new();
    let mut last = None;
    loop {
        let line = lines::next_line(&mut r, &mut buf)?;
        if line.consumed == 0 {
            return Ok(last);
        }
        if let Ok(link) = read_link(&buf) {
            last = Some(link.seq);
        }
    }
}
