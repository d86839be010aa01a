//! The file writer: the one place that writes, rotates and syncs audit files.
//!
//! It owns its file handle. `tracing-appender`'s `RollingFileAppender`
//! chooses the file per `write` call and keeps its `File` private, so with
//! it a batch retried after a partial write could land in the next period's
//! file (a record split across two files), a failed `fdatasync` could not be
//! repaired, and a new file existed with the process umask before anyone
//! could tighten it. This writer keeps the appender's [`Rotation`] and file
//! naming, and adds:
//!
//! - **Rotation only between batches.** The worker asks
//!   [`rotation_due`](FileWriter::rotation_due) before it seals the first
//!   record of a batch and calls [`rotate`](FileWriter::rotate); a batch,
//!   and so a record, always goes whole into the file that was current when
//!   it was sealed, however long its write is retried.
//! - **No partial lines left behind.** Every write is positioned at the end
//!   of the last complete line. A write that fails part-way (`ENOSPC`) is cut
//!   back to that length at once, or before the next write if the cut fails
//!   too; the batch stays whole in the worker and is written again.
//! - **Files `0600` from the moment they exist**: created with that mode and
//!   `fchmod`ed before the first byte, whatever the umask. The directory
//!   entry of a new file is synced.
//! - **Sync that can be trusted.** The bytes written since the last
//!   successful `fdatasync` are kept (at most [`MAX_UNSYNCED`]; a write that
//!   would pass it syncs first, which also bounds what a power cut can take).
//!   When `fdatasync` fails, the page cache is not trusted: the kernel may
//!   have marked the failed pages clean, and a second `fdatasync` would
//!   report success without the data ever reaching the disk. So the writer
//!   reopens the file by path, cuts it back to the last synced length,
//!   writes the kept bytes again and syncs; only a sync that succeeded after
//!   that covers them. Until then [`sync`](FileWriter::sync) fails, and the
//!   worker keeps every durable caller waiting.
//! - **Writeback started early** (Linux): once [`WRITEBACK_EVERY`] bytes
//!   were written past the last sync, the writer asks the kernel to start
//!   writing them out (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`, which
//!   neither waits nor consumes a writeback error), so the next `fdatasync`
//!   finds most of its pages already on their way and blocks the worker far
//!   less. Nothing else changes: only a successful `fdatasync` makes a byte
//!   synced, and it still reports any error the early writeback met.
//! - **A write error other than "out of space"** (EIO, EROFS, a stale
//!   handle) makes the descriptor suspect too: the next attempt reopens the
//!   file by path and rewrites from the last good sync, so a file system
//!   that was shut down and mounted again is written without a restart.
//! - **Rotation only from a synced file**: the old file is synced (and
//!   repaired) before the new one is opened, so records never sit unsynced
//!   in a file the writer no longer holds.
//! - **Size limit** (`max_file_size`): [`rotation_due`](FileWriter::rotation_due)
//!   is also true once the file holds the limit, and [`room`](FileWriter::room)
//!   tells the worker how many bytes the next batch may take. The k-th
//!   extra file of a period is named `<prefix>.<period>_<k:06>.<suffix>`:
//!   `_` sorts after the `.` of the period's first file, so names sort in
//!   writing order and an existing trail's names are unchanged.
//! - `max_files` retention, applied when a new file is created.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, Utc};
use tracing_appender::rolling::Rotation;

#[cfg(feature = "gzip")]
use super::{is_compressed, GZ};
use super::{list_files, FileSink};

/// Most bytes kept for a rewrite after a failed sync; a write that would
/// pass it syncs first.
pub(crate) const MAX_UNSYNCED: usize = 8 << 20;

/// Bytes written past the last sync (or the last early writeback) after
/// which the kernel is asked to start writing them out.
pub(crate) const WRITEBACK_EVERY: u64 = 512 << 10;

/// Asks the kernel to start writing `len` bytes from `from` out to the
/// disk, without waiting. Its result is not looked at: a failure to start
/// writeback leaves the pages dirty for the next `fdatasync`, and an I/O
/// error of the writeback is reported by that `fdatasync` (this call does
/// not wait on writeback, so it never takes the error from it).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor this writer owns.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Elsewhere the next sync writes everything.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _len: u64) {}

/// The bytes written since the last successful sync, for a rewrite: the
/// batch buffers that carried them, in order, moved here rather than copied.
#[derive(Debug, Default)]
struct Unsynced {
    parts: Vec<Vec<u8>>,
    len: usize,
}

impl Unsynced {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the bytes of `batch` and leaves it empty; returns them. A
    /// large batch's buffer is moved here and `batch` gets a spare one; a
    /// small batch is copied (a buffer per small batch would hold far more
    /// memory than bytes).
    fn keep(&mut self, batch: &mut Vec<u8>, spare: &mut Vec<Vec<u8>>) -> &[u8] {
        let n = batch.len();
        self.len += n;
        if n >= MOVE_AT {
            // A spare buffer still holds its last bytes (see `recycle`); a new
            // one gets the capacity the batches grew to, so none regrows.
            let next = spare.pop().map_or_else(
                || Vec::with_capacity(batch.capacity()),
                |mut b| {
                    b.clear();
                    b
                },
            );
            self.parts.push(std::mem::replace(batch, next));
        } else {
            match self.parts.last_mut() {
                Some(p) if p.capacity() - p.len() >= n => p.extend_from_slice(batch),
                _ => {
                    let mut p = Vec::with_capacity(n.max(MOVE_AT));
                    p.extend_from_slice(batch);
                    self.parts.push(p);
                }
            }
            batch.clear();
        }
        self.parts.last().map_or(&[], |p| &p[p.len() - n..])
    }

    /// Writes every part, in order, from `at`.
    fn write_at(&self, f: &File, mut at: u64) -> io::Result<()> {
        for p in &self.parts {
            f.write_all_at(p, at)?;
            at += p.len() as u64;
        }
        Ok(())
    }

    /// Forgets the bytes (they are synced); the large buffers go to
    /// `spare`, as many as held [`MAX_UNSYNCED`] bytes.
    ///
    /// A spare buffer keeps its length until [`keep`](Self::keep) takes it:
    /// the bytes it held, not its capacity, are the memory it occupies (a
    /// batch one record past a power of two doubles its capacity, and the
    /// pages never written are not resident). Counted by capacity, about
    /// half of each sync's buffers were freed, and the next batches wrote
    /// into fresh memory, page-faulting on every page.
    fn recycle(&mut self, spare: &mut Vec<Vec<u8>>) {
        let mut held: usize = spare.iter().map(Vec::len).sum();
        for p in self.parts.drain(..) {
            if p.capacity() >= MOVE_AT && held + p.len() <= MAX_UNSYNCED {
                held += p.len();
                spare.push(p);
            }
        }
        self.len = 0;
    }
}

/// Batches at least this long are kept by moving their buffer, shorter
/// ones by copying.
const MOVE_AT: usize = 256 << 10;

/// What a successful [`FileWriter::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The file now written.
    pub(crate) name: String,
    /// Whether it was created (so its first record must say so).
    pub(crate) created: bool,
    /// The file written before it, if any.
    pub(crate) previous: Option<String>,
}

/// The file being written.
#[derive(Debug)]
struct Current {
    path: PathBuf,
    name: String,
    /// The rotation period it belongs to (its date part).
    period: String,
    /// Its place among the period's files (0 for the first).
    index: u32,
    file: File,
    /// End of the last complete line written.
    len: u64,
    /// Length covered by the last successful sync.
    synced_len: u64,
    /// Length up to which writeback was started early.
    written_back: u64,
    /// The bytes from `synced_len` to `len`, for a rewrite.
    unsynced: Unsynced,
    /// A sync failed: the page cache is not trusted until a rewrite synced.
    suspect: bool,
    /// A failed write may have left bytes after `len`.
    dirty_tail: bool,
}

/// The worker's side of the file sink.
#[derive(Debug)]
pub(crate) struct FileWriter {
    dir: PathBuf,
    sink: FileSink,
    cur: Option<Current>,
    warning: Option<String>,
    /// Empty batch buffers, back from a sync, for the worker to fill.
    spare: Vec<Vec<u8>>,
    /// `fdatasync` calls that failed since the worker last asked.
    failed_syncs: u64,
    /// A file found shorter than its last sync covered (name, bytes), for
    /// the worker to put on the record.
    storage_lost: Option<(String, u64)>,
    /// Compressions under way (feature `gzip`), and what failed in them.
    compressing: Vec<std::thread::JoinHandle<()>>,
    compress_errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The sinks that read the trail: retention says so when it deletes
    /// records one of them has not delivered.
    forwarders: Vec<std::sync::Arc<crate::sink::Progress>>,
    /// Such deletions, for the worker to put on the record.
    forward_gaps: Vec<ForwardGap>,
    _lock: super::DirLock,
}

/// Records retention deleted before every sink reading the trail had
/// delivered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForwardGap {
    /// The file deleted.
    pub(crate) file: String,
    /// First and last `seq` not delivered.
    pub(crate) from: u64,
    pub(crate) to: u64,
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        for h in self.compressing.drain(..) {
            let _ = h.join();
        }
    }
}

impl FileWriter {
    pub(crate) fn new(sink: &FileSink, dir: PathBuf, lock: super::DirLock) -> Self {
        FileWriter {
            dir,
            sink: sink.clone(),
            cur: None,
            warning: None,
            spare: Vec::new(),
            failed_syncs: 0,
            storage_lost: None,
            compressing: Vec::new(),
            forwarders: Vec::new(),
            forward_gaps: Vec::new(),
            compress_errors: Default::default(),
            _lock: lock,
        }
    }

    /// The period string (`2026-11-22`, `2026-11-22-13-05`, or empty for
    /// `NEVER`) of `now` under the sink's rotation, named as
    /// `tracing-appender` names files.
    fn period(&self, now: SystemTime) -> String {
        let t: DateTime<Utc> = now.into();
        let r = &self.sink.rotation;
        if *r == Rotation::MINUTELY {
            t.format("%Y-%m-%d-%H-%M").to_string()
        } else if *r == Rotation::HOURLY {
            t.format("%Y-%m-%d-%H").to_string()
        } else if *r == Rotation::DAILY {
            t.format("%Y-%m-%d").to_string()
        } else if *r == Rotation::NEVER {
            String::new()
        } else {
            // Weekly: the Sunday the week began on.
            let back = ChronoDuration::days(t.weekday().num_days_from_sunday().into());
            (t - back).format("%Y-%m-%d").to_string()
        }
    }

    /// The name of a period's file without its suffix.
    fn stem(&self, period: &str) -> String {
        if period.is_empty() {
            self.sink.prefix.clone()
        } else {
            format!("{}.{}", self.sink.prefix, period)
        }
    }

    fn file_name_for(&self, period: &str, index: u32) -> String {
        let stem = self.stem(period);
        match index {
            0 => format!("{stem}.{}", self.sink.suffix),
            k => format!("{stem}_{k:06}.{}", self.sink.suffix),
        }
    }

    /// The last file of `period` already in the directory: its index, and
    /// whether it is full.
    fn last_of_period(&self, period: &str) -> io::Result<Option<(u32, bool)>> {
        let stem = self.stem(period);
        let dot_suffix = format!(".{}", self.sink.suffix);
        let mut last: Option<(u32, u64)> = None;
        for path in list_files(&self.dir, &self.sink.prefix, &self.sink.suffix)? {
            let name = super::file_name(&path);
            let Some(rest) = name
                .strip_prefix(stem.as_str())
                .and_then(|r| r.strip_suffix(dot_suffix.as_str()))
            else {
                continue;
            };
            let index = match rest.strip_prefix('_') {
                None if rest.is_empty() => 0,
                Some(k) if k.len() == 6 && k.bytes().all(|b| b.is_ascii_digit()) => {
                    k.parse().unwrap_or(0)
                }
                _ => continue,
            };
            if last.is_none_or(|(i, _)| index > i) {
                last = Some((index, fs::metadata(&path)?.len()));
            }
        }
        Ok(last.map(|(i, len)| (i, self.full(len))))
    }

    fn full(&self, len: u64) -> bool {
        self.sink.max_file_size.is_some_and(|m| len >= m)
    }

    /// Whether the next batch belongs in another file than the current one:
    /// a new period, or the size limit reached.
    pub(crate) fn rotation_due(&self, now: SystemTime) -> bool {
        self.cur
            .as_ref()
            .is_none_or(|c| c.period != self.period(now) || self.full(c.len))
    }

    /// Bytes the next batch may take before the file reaches its size limit
    /// (`usize::MAX` without one).
    pub(crate) fn room(&self) -> usize {
        match (&self.cur, self.sink.max_file_size) {
            (Some(c), Some(max)) => {
                usize::try_from(max.saturating_sub(c.len)).unwrap_or(usize::MAX)
            }
            _ => usize::MAX,
        }
    }

    /// Moves to the file for `now`: syncs the current one first (failing if
    /// that sync fails), then opens or creates the new one `0600`, and
    /// applies `max_files`.
    pub(crate) fn rotate(&mut self, now: SystemTime) -> io::Result<Opened> {
        if self.cur.is_some() {
            self.sync()?;
        }
        let period = self.period(now);
        let index = match &self.cur {
            Some(c) if c.period == period => c.index + 1,
            Some(_) => 0,
            // Starting: continue the period's last file unless it is full.
            None => match self.last_of_period(&period)? {
                Some((i, true)) => i + 1,
                Some((i, false)) => i,
                None => 0,
            },
        };
        let name = self.file_name_for(&period, index);
        let path = self.dir.join(&name);
        let (file, created) =
            open_private(&path).map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
        let len = file.metadata()?.len();
        // What a previous process left may still be in the page cache only.
        file.sync_data()?;
        if created {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.warning = Some(format!("cannot sync the audit directory: {e}"));
            }
        }
        let starting = self.cur.is_none();
        let previous_path = self.cur.as_ref().map(|c| c.path.clone());
        let previous = self.cur.take().map(|c| c.name);
        self.cur = Some(Current {
            path,
            name: name.clone(),
            period,
            index,
            file,
            len,
            synced_len: len,
            written_back: len,
            unsynced: Unsynced::default(),
            suspect: false,
            dirty_tail: false,
        });
        if created {
            self.prune(&name);
        }
        if self.sink.compress {
            self.compress_after_rotation(starting, previous_path, &name);
        }
        Ok(Opened {
            name,
            created,
            previous,
        })
    }

    /// Applies retention: deletes the oldest files, in order, while there
    /// are more than `max_files`, the oldest is older than `max_age`, or all
    /// of them pass `max_total_bytes`. Only whole files from the oldest end
    /// (so `verify` sees a chain that starts at a file boundary), never the
    /// current one.
    fn prune(&mut self, current: &str) {
        let (max_files, max_age, max_total) = (
            self.sink.max_files,
            self.sink.max_age,
            self.sink.max_total_bytes,
        );
        if max_files.is_none() && max_age.is_none() && max_total.is_none() {
            return;
        }
        let files = match list_files(&self.dir, &self.sink.prefix, &self.sink.suffix) {
            Ok(f) => f,
            Err(e) => {
                self.warning = Some(format!("cannot list audit files for retention: {e}"));
                return;
            }
        };
        let meta: Vec<(u64, SystemTime)> = files
            .iter()
            .map(|f| {
                fs::metadata(f).map_or((0, SystemTime::now()), |m| {
                    (m.len(), m.modified().unwrap_or_else(|_| SystemTime::now()))
                })
            })
            .collect();
        let mut total: u64 = meta.iter().map(|m| m.0).sum();
        let now = SystemTime::now();
        for (i, (old, (size, modified))) in files.iter().zip(&meta).enumerate() {
            if super::file_name(old) == current {
                break;
            }
            let over_count = max_files.is_some_and(|m| files.len() - i > m);
            let too_old =
                max_age.is_some_and(|a| now.duration_since(*modified).is_ok_and(|age| age > a));
            let too_big = max_total.is_some_and(|cap| total > cap);
            if !(over_count || too_old || too_big) {
                break;
            }
            let gap = self.undelivered(old, files.get(i + 1));
            match fs::remove_file(old) {
                Ok(()) => {
                    total -= size;
                    self.forward_gaps.extend(gap);
                }
                Err(e) => {
                    self.warning = Some(format!(
                        "cannot remove {} for retention: {e}",
                        old.display()
                    ));
                    break;
                }
            }
        }
    }

    /// The sinks reading the trail (their progress), for retention.
    pub(crate) fn watch_forwarders(
        &mut self,
        forwarders: Vec<std::sync::Arc<crate::sink::Progress>>,
    ) {
        self.forwarders = forwarders;
    }

    /// Deletions of undelivered records since the last call.
    pub(crate) fn take_forward_gaps(&mut self) -> Vec<ForwardGap> {
        std::mem::take(&mut self.forward_gaps)
    }

    /// The records of `old` (followed by `next`) that a sink reading the
    /// trail has not delivered, if any: from the first one a sink still
    /// needs to the file's last.
    fn undelivered(&self, old: &Path, next: Option<&PathBuf>) -> Option<ForwardGap> {
        let need = self
            .forwarders
            .iter()
            .map(|p| p.delivered.load(std::sync::atomic::Ordering::SeqCst))
            .min()?;
        // The file's last record is the one before the next file's first.
        let last = match next.map(|n| super::follow::first_seq(n)) {
            Some(Ok(Some(first))) if first > 0 => Some(first - 1),
            _ => super::follow::last_seq(old).ok().flatten(),
        }?;
        if last < need {
            return None;
        }
        let first = super::follow::first_seq(old).ok().flatten().unwrap_or(need);
        Some(ForwardGap {
            file: super::file_name(old),
            from: first.max(need),
            to: last,
        })
    }

    /// Writes complete lines at the end of the current file. On failure the
    /// file is cut back to its last complete line (or will be before the
    /// next write), nothing of `batch` counts as written and `batch` is left
    /// as it was. On success the buffer itself is kept for a rewrite until
    /// the next sync (moved, not copied), `batch` becomes an empty buffer to
    /// fill next, and the written bytes are returned.
    pub(crate) fn write(&mut self, batch: &mut Vec<u8>) -> io::Result<&[u8]> {
        if self.cur.as_ref().is_some_and(|c| {
            c.suspect || (!c.unsynced.is_empty() && c.unsynced.len() + batch.len() > MAX_UNSYNCED)
        }) {
            // A suspect descriptor is repaired first (reopened by path).
            self.sync()?;
        }
        let FileWriter { cur, spare, .. } = self;
        let Some(c) = cur.as_mut() else {
            return Err(io::Error::other("no audit file is open"));
        };
        if c.dirty_tail {
            c.file.set_len(c.len)?;
            c.dirty_tail = false;
        }
        if let Err(e) = c.file.write_all_at(batch.as_slice(), c.len) {
            if c.file.set_len(c.len).is_err() {
                c.dirty_tail = true;
            }
            // Out of space, the descriptor is still good. Any other error
            // (EIO from a failing or shut-down file system, EROFS, a stale
            // handle) distrusts it: the next attempt reopens the file by
            // path, as after a failed sync, so a file system that was
            // remounted is written again without a restart.
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EINTR)
            ) {
                c.suspect = true;
            }
            return Err(e);
        }
        c.len += batch.len() as u64;
        let from = c.written_back.max(c.synced_len).min(c.len);
        if c.len - from >= WRITEBACK_EVERY {
            start_writeback(&c.file, from, c.len - from);
            c.written_back = c.len;
        }
        Ok(c.unsynced.keep(batch, spare))
    }

    /// [`write`](Self::write) of a copy of `bytes`.
    #[cfg(test)]
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(&mut bytes.to_vec()).map(|_| ())
    }

    /// Makes everything written so far durable, or fails. See the module
    /// doc for what happens after a failed `fdatasync`.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        let Some(c) = self.cur.as_mut() else {
            return Ok(());
        };
        if c.unsynced.is_empty() && !c.suspect {
            return Ok(());
        }
        if !c.suspect {
            match c.file.sync_data() {
                Ok(()) => {
                    c.synced_len = c.len;
                    c.unsynced.recycle(&mut self.spare);
                    return Ok(());
                }
                Err(e) => {
                    c.suspect = true;
                    self.failed_syncs += 1;
                    self.warning = Some(format!(
                        "fdatasync of {} failed ({e}); rewriting the {} bytes written since the last good sync",
                        c.name,
                        c.unsynced.len()
                    ));
                }
            }
        }
        if let Some(lost) = rewrite(c)? {
            self.storage_lost = Some((c.name.clone(), lost));
            self.warning = Some(format!(
                "{} holds {lost} bytes less than its last successful sync covered: the storage lost data it had confirmed (acknowledged records may be gone; verify reports the gap); the records kept since then were written after its last complete line",
                c.name
            ));
        }
        c.suspect = false;
        c.synced_len = c.len;
        c.unsynced.recycle(&mut self.spare);
        Ok(())
    }

    /// A loss of confirmed data found by the last rewrite (file name,
    /// bytes), once.
    pub(crate) fn take_storage_loss(&mut self) -> Option<(String, u64)> {
        self.storage_lost.take()
    }

    /// The directory written.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many `fdatasync` calls failed since the last call (each was
    /// answered by a rewrite, successful or not).
    pub(crate) fn take_failed_syncs(&mut self) -> u64 {
        std::mem::take(&mut self.failed_syncs)
    }

    /// A problem that did not fail an operation (or that a retry
    /// repaired), once.
    pub(crate) fn take_warning(&mut self) -> Option<String> {
        if let Some(w) = self.warning.take() {
            return Some(w);
        }
        self.compress_errors.lock().ok()?.pop()
    }

    /// Starts compressing the file just left; at start, finishes what a
    /// crash interrupted (a stale `.gz.tmp`, a compressed twin beside its
    /// plain file) and compresses every older plain file.
    #[cfg(feature = "gzip")]
    fn compress_after_rotation(
        &mut self,
        starting: bool,
        previous: Option<PathBuf>,
        current: &str,
    ) {
        self.compressing.retain(|h| !h.is_finished());
        let mut todo: Vec<PathBuf> = previous.into_iter().collect();
        if starting {
            if let Ok(entries) = fs::read_dir(&self.dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&self.sink.prefix) && name.ends_with(".gz.tmp") {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
            let files =
                list_files(&self.dir, &self.sink.prefix, &self.sink.suffix).unwrap_or_default();
            for p in files {
                if is_compressed(&p) || super::file_name(&p) == current {
                    continue;
                }
                let twin = PathBuf::from(format!("{}{GZ}", p.display()));
                let _ = fs::remove_file(&twin);
                todo.push(p);
            }
        }
        if todo.is_empty() {
            return;
        }
        // One thread for the lot, one file after another: a trail that
        // turns compression on may have hundreds of files to catch up on.
        let errors = self.compress_errors.clone();
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("tracing-audit-gzip".into())
            .spawn(move || {
                for path in todo {
                    if let Err(e) = compress(&dir, &path) {
                        if let Ok(mut v) = errors.lock() {
                            v.push(format!("cannot compress {}: {e}", path.display()));
                        }
                    }
                }
            });
        match spawned {
            Ok(h) => self.compressing.push(h),
            Err(e) => self.warning = Some(format!("cannot start a compression thread: {e}")),
        }
    }

    #[cfg(not(feature = "gzip"))]
    fn compress_after_rotation(&mut self, _: bool, _: Option<PathBuf>, _: &str) {}
}

/// Writes `path.gz` beside `path` (through a synced `.gz.tmp` renamed into
/// place), then removes `path`: at every moment one complete copy exists.
#[cfg(feature = "gzip")]
fn compress(dir: &Path, path: &Path) -> io::Result<()> {
    let tmp = PathBuf::from(format!("{}{GZ}.tmp", path.display()));
    let gz = PathBuf::from(format!("{}{GZ}", path.display()));
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(super::NOFOLLOW)
        .open(path)?;
    let (out, _) = open_private(&tmp)?;
    out.set_len(0)?;
    let mut enc = flate2::write::GzEncoder::new(
        io::BufWriter::with_capacity(1 << 16, out),
        flate2::Compression::default(),
    );
    io::copy(&mut input, &mut enc)?;
    let out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    fs::rename(&tmp, &gz)?;
    File::open(dir)?.sync_all()?;
    fs::remove_file(path)?;
    File::open(dir)?.sync_all()
}

/// Reopens the file by path, cuts it back to the last synced length and
/// writes the kept bytes again, synced. If the file is *shorter* than that
/// length, the storage lost bytes after confirming them: the gap is never
/// filled with zeros (that would glue the next record to garbage); the
/// kept bytes go after the last complete line instead, and the number of
/// bytes lost is returned.
fn rewrite(c: &mut Current) -> io::Result<Option<u64>> {
    let (f, _) = open_private(&c.path)?;
    let on_disk = f.metadata()?.len();
    let (at, lost) = if on_disk >= c.synced_len {
        (c.synced_len, None)
    } else {
        (last_line_end(&f, on_disk)?, Some(c.synced_len - on_disk))
    };
    f.set_len(at)?;
    c.unsynced.write_at(&f, at)?;
    f.sync_data()?;
    c.file = f;
    c.dirty_tail = false;
    c.synced_len = at;
    c.len = at + c.unsynced.len() as u64;
    Ok(lost)
}

/// The offset just after the last `\n` in the first `len` bytes of `f`
/// (0 if there is none).
fn last_line_end(f: &File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Opens `path` for reading and writing (a rewrite reads where the last
/// complete line ends), creating it `0600` if missing; says whether it
/// was created. A created file is `fchmod`ed to `0600` before anything is
/// written, so no umask can widen it.
fn open_private(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(super::NOFOLLOW)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            Ok((f, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Not blocking on a FIFO planted there (its open would wait
            // for a reader): refused below, like anything but a file.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(super::NOFOLLOW | libc::O_NONBLOCK)
                .open(path)?;
            if !f.metadata()?.is_file() {
                return Err(io::Error::other(
                    "not a regular file (a FIFO, socket or device planted in the audit directory?)",
                ));
            }
            // Back to blocking I/O, as every other open here (Linux ignores
            // the flag on a regular file; other systems may not).
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            // SAFETY: `fcntl` on our own open descriptor.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
            }
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path, rotation: Rotation) -> FileWriter {
        let sink = FileSink::new(dir).rotation(rotation);
        let lock = super::super::lock_dir(dir).unwrap();
        FileWriter::new(&sink, dir.to_path_buf(), lock)
    }

    #[test]
    fn names_follow_tracing_appender() {
        let d = tempfile::tempdir().unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_900_000);
        // 2025-11-23 12:13:20 UTC, a Sunday.
        let cases = [
            (Rotation::MINUTELY, "audit.2025-11-23-12-13.jsonl"),
            (Rotation::HOURLY, "audit.2025-11-23-12.jsonl"),
            (Rotation::DAILY, "audit.2025-11-23.jsonl"),
            (Rotation::WEEKLY, "audit.2025-11-23.jsonl"),
            (Rotation::NEVER, "audit.jsonl"),
        ];
        for (r, want) in cases {
            let w = writer(d.path(), r);
            assert_eq!(w.file_name_for(&w.period(t), 0), want);
        }
    }

    #[test]
    fn files_are_created_private_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let mut w = writer(d.path(), Rotation::NEVER);
        let opened = w.rotate(SystemTime::now());
        unsafe { libc::umask(old) };
        let opened = opened.unwrap();
        assert!(opened.created);
        let mode = fs::metadata(d.path().join(&opened.name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_is_only_between_batches_and_syncs_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let mut w = writer(d.path(), Rotation::MINUTELY);
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_900_000);
        let t1 = t0 + std::time::Duration::from_secs(60);
        assert!(w.rotation_due(t0));
        let a = w.rotate(t0).unwrap();
        w.write_bytes(b"{\"a\":1}\n").unwrap();
        assert!(!w.rotation_due(t0));
        assert!(w.rotation_due(t1));
        // Still written to the first file: the writer never moves by itself.
        w.write_bytes(b"{\"a\":2}\n").unwrap();
        let b = w.rotate(t1).unwrap();
        assert_eq!(b.previous.as_deref(), Some(a.name.as_str()));
        w.write_bytes(b"{\"b\":1}\n").unwrap();
        w.sync().unwrap();
        let first = fs::read_to_string(d.path().join(&a.name)).unwrap();
        let second = fs::read_to_string(d.path().join(&b.name)).unwrap();
        assert_eq!(first, "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(second, "{\"b\":1}\n");
    }

    #[test]
    fn a_suspect_file_is_cut_and_rewritten_from_the_kept_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut w = writer(d.path(), Rotation::NEVER);
        let opened = w.rotate(SystemTime::now()).unwrap();
        w.write_bytes(b"one\n").unwrap();
        w.sync().unwrap();
        w.write_bytes(b"two\n").unwrap();
        // What a failed write-back leaves: the page cache lost the data
        // (here: NULs where it was), and fdatasync reported it once.
        let path = d.path().join(&opened.name);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"\0\0\0\0", 4).unwrap();
        w.cur.as_mut().unwrap().suspect = true;
        w.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one\ntwo\n");
    }

    /// Large batches are kept by moving their buffers, small ones by
    /// copying; a rewrite writes them back in order, and after a sync the
    /// moved buffers come back empty for the next batches.
    #[test]
    fn kept_batches_moved_or_copied_are_rewritten_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut w = writer(d.path(), Rotation::NEVER);
        let opened = w.rotate(SystemTime::now()).unwrap();
        let line = |c: u8, n: usize| {
            let mut v = vec![c; n - 1];
            v.push(b'\n');
            v
        };
        let parts = [
            line(b'a', MOVE_AT + 10),
            line(b'b', 100),
            line(b'c', 50),
            line(b'd', MOVE_AT * 2),
            line(b'e', 10),
        ];
        let mut batch = Vec::new();
        for p in &parts {
            batch.extend_from_slice(p);
            let written = w.write(&mut batch).unwrap().to_vec();
            assert_eq!(&written, p);
            assert!(batch.is_empty());
        }
        let path = d.path().join(&opened.name);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![0u8; MOVE_AT * 3], 0).unwrap();
        w.cur.as_mut().unwrap().suspect = true;
        w.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), parts.concat());
        // The two moved buffers and the one the small batches were copied
        // into are spare now; the next large batch swaps its buffer for one.
        assert_eq!(w.spare.len(), 3);
        batch.extend_from_slice(&line(b'f', MOVE_AT));
        w.write(&mut batch).unwrap();
        assert!(batch.is_empty() && batch.capacity() >= MOVE_AT);
        assert_eq!(w.spare.len(), 2);
    }

    /// A sync's worth of batches whose buffers grew to twice their bytes
    /// all come back as spares (counted by capacity, half were freed), and
    /// the bound still holds.
    #[test]
    fn spare_buffers_count_the_bytes_they_held() {
        let per = MAX_UNSYNCED / 8;
        let mut u = Unsynced {
            parts: Vec::new(),
            len: 0,
        };
        let mut spare = Vec::new();
        for round in 0..2 {
            for i in 0..8 + round {
                let mut b = Vec::with_capacity(2 * per);
                b.resize(per, b'0' + i as u8);
                u.len += b.len();
                u.parts.push(b);
            }
            u.recycle(&mut spare);
            assert_eq!(spare.len(), 8, "round {round}");
            assert!(spare.iter().map(Vec::len).sum::<usize>() <= MAX_UNSYNCED);
            assert!(u.is_empty());
        }
        let mut batch = vec![b'x'; MOVE_AT];
        u.keep(&mut batch, &mut spare);
        assert!(batch.is_empty(), "a spare is emptied when taken");
        assert_eq!(spare.len(), 7);
    }

    #[test]
    fn a_file_shorter_than_its_last_sync_is_reported_not_filled_with_zeros() {
        let d = tempfile::tempdir().unwrap();
        let mut w = writer(d.path(), Rotation::NEVER);
        let opened = w.rotate(SystemTime::now()).unwrap();
        w.write_bytes(b"one\ntwo\n").unwrap();
        w.sync().unwrap();
        w.write_bytes(b"three\n").unwrap();
        // Storage that lost confirmed data: the file ends inside `two`.
        let path = d.path().join(&opened.name);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(6)
            .unwrap();
        w.cur.as_mut().unwrap().suspect = true;
        w.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one\nthree\n");
        let warning = w.take_warning().unwrap();
        assert!(warning.contains("2 bytes less"), "{warning}");
        // Writing goes on at the new end.
        w.write_bytes(b"four\n").unwrap();
        w.sync().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one\nthree\nfour\n");
    }
}
