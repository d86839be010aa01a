//! The rolling audit file: configuration ([`FileSink`]) and the writer the
//! pipeline worker drives.
//!
//! Rotation, naming and `max_files` pruning are `tracing-appender`'s
//! [`RollingFileAppender`]. It is used as a plain `io::Write` from the one
//! worker thread, which hands it whole batches of complete lines in a single
//! `write`; the appender picks the file per `write` call, so a record is
//! never split across files. What the appender does not do, this module
//! adds around it:
//!
//! - the directory is created `0700`, and each file is set to `0600` as soon
//!   as it appears (the appender opens files with the process umask; the
//!   `0700` directory keeps everyone else out in between);
//! - `fdatasync`: the appender keeps its `File` private, so the worker syncs
//!   through its own descriptor of the current file, found through the
//!   appender's `latest_symlink` (syncing is per inode, not per descriptor);
//! - an exclusive lock file, so two processes never interleave one chain;
//! - finding where the chain left off on disk (and a torn last line).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing_appender::rolling::{RollingFileAppender, Rotation};

use crate::chain::{self, Hasher};
use crate::error::Error;

/// Name of the symlink to the file being written.
pub(crate) const CURRENT_LINK: &str = ".current";
/// How often the writer looks for a rotation between syncs.
const TRACK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Name of the lock file held while a process writes the directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// Where and how audit records are written to disk.
///
/// | setting | default |
/// |---|---|
/// | rotation | [`Rotation::DAILY`] |
/// | `max_files` | unlimited (keep every file) |
/// | file name prefix | `audit` |
/// | file name suffix | `jsonl` |
///
/// Files are named `<prefix>.<date>.<suffix>` by `tracing-appender`, e.g.
/// `audit.2026-11-22.jsonl`.
///
/// ```
/// use tracing_audit::FileSink;
/// use tracing_appender::rolling::Rotation;
/// let sink = FileSink::new("./audit").rotation(Rotation::HOURLY).max_files(24 * 90);
/// # let _ = sink;
/// ```
#[derive(Clone, Debug)]
pub struct FileSink {
    pub(crate) dir: PathBuf,
    pub(crate) rotation: Rotation,
    pub(crate) max_files: Option<usize>,
    pub(crate) prefix: String,
    pub(crate) suffix: String,
}

impl FileSink {
    /// Audit files in `dir`, rotated daily.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        FileSink {
            dir: dir.as_ref().to_path_buf(),
            rotation: Rotation::DAILY,
            max_files: None,
            prefix: "audit".into(),
            suffix: "jsonl".into(),
        }
    }

    /// How often a new file is started.
    #[must_use]
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// Keep at most `n` files; older ones are deleted on rotation.
    ///
    /// Deleted files take their records with them: `verify` then reports the
    /// chain as starting later (retention), not as tampering.
    #[must_use]
    pub fn max_files(mut self, n: usize) -> Self {
        self.max_files = Some(n.max(1));
        self
    }

    /// File name prefix (default `audit`). Must not be empty or start with `.`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// File name suffix (default `jsonl`).
    #[must_use]
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = suffix.into();
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl<P: AsRef<Path>> From<P> for FileSink {
    fn from(dir: P) -> Self {
        FileSink::new(dir)
    }
}

/// Where the chain stands on disk when a process starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// `seq` and `hash` of the last complete record, if any.
    pub(crate) last: Option<(u64, String)>,
    /// Torn last lines: file name, byte offset, length.
    pub(crate) torn: Vec<(String, u64, u64)>,
}

/// Lists the audit files of a directory (regular files with the prefix and
/// suffix; links and dot files excluded), sorted by name.
pub(crate) fn list_files(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.')
            || !name.starts_with(prefix)
            || !name.ends_with(suffix)
            || !entry.file_type()?.is_file()
        {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Reads the last line that ends at or before byte `end` of `f` (looking
/// back at most `max` bytes). Returns the line without `\n`, its offset, and
/// whether it is complete (ends with `\n`).
fn last_line(f: &mut File, end: u64, max: u64) -> io::Result<(Vec<u8>, u64, bool)> {
    if end == 0 {
        return Ok((Vec::new(), 0, true));
    }
    let start = end.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = vec![0u8; (end - start) as usize];
    f.read_exact(&mut tail)?;
    let complete = tail.last() == Some(&b'\n');
    let body = if complete {
        &tail[..tail.len() - 1]
    } else {
        &tail[..]
    };
    let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    Ok((
        body[line_start..].to_vec(),
        start + line_start as u64,
        complete,
    ))
}

/// How far back to look for a line; records are truncated well below this.
const MAX_LINE: u64 = 4 << 20;

/// Finds the last complete record across the directory's files, and torn
/// last lines. A torn line is terminated with `\n` (so the next record
/// starts on a line of its own) and reported.
pub(crate) fn find_resume(sink: &FileSink, dir: &Path, hasher: &Hasher) -> Result<Resume, Error> {
    let ctx = |what: &'static str| move |e| Error::io(what, dir, e);
    let files = list_files(dir, &sink.prefix, &sink.suffix).map_err(ctx("list audit directory"))?;
    let mut resume = Resume::default();
    for path in &files {
        let mut f = File::open(path).map_err(ctx("open audit file"))?;
        let len = f.metadata().map_err(ctx("read audit file"))?.len();
        let (mut line, off, complete) =
            last_line(&mut f, len, MAX_LINE).map_err(ctx("read audit file"))?;
        if !complete {
            resume.torn.push((file_name(path), off, line.len() as u64));
            OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut w| w.write_all(b"\n").and_then(|_| w.sync_data()))
                .map_err(ctx("terminate torn audit line"))?;
            line = last_line(&mut f, off, MAX_LINE)
                .map_err(ctx("read audit file"))?
                .0;
        }
        if line.is_empty() {
            continue;
        }
        // A line that does not check under this key still tells where the
        // chain stands; `verify` is the one to report the mismatch.
        let found = match chain::check_line(hasher, &line) {
            Ok(l) => Some((l.seq, l.hash.to_owned())),
            Err(_) => read_link_loose(&line),
        };
        if let Some((seq, hash)) = found {
            if resume.last.as_ref().is_none_or(|b| seq >= b.0) {
                resume.last = Some((seq, hash));
            }
        }
    }
    Ok(resume)
}

/// Reads `seq` and `hash` from a line whose hash does not check (e.g. a key
/// change), so the chain still continues from it.
fn read_link_loose(line: &[u8]) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some((v.get("seq")?.as_u64()?, v.get("hash")?.as_str()?.to_owned()))
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Creates the directory `0700` if missing and returns its absolute path.
pub(crate) fn prepare_dir(dir: &Path) -> Result<PathBuf, Error> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create audit directory", dir, e))?;
    }
    let abs = fs::canonicalize(dir).map_err(|e| Error::io("resolve audit directory", dir, e))?;
    if !abs.is_dir() {
        return Err(Error::io(
            "use audit directory",
            dir,
            io::Error::other("not a directory"),
        ));
    }
    Ok(abs)
}

/// Takes the directory's exclusive lock, or says who holds it.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    let _ = f.set_permissions(fs::Permissions::from_mode(0o600));
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::DirectoryInUse {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock audit directory", &path, e)),
    }
}

/// The worker's side of the file sink.
#[derive(Debug)]
pub(crate) struct FileWriter {
    appender: RollingFileAppender,
    dir: PathBuf,
    /// The file the link pointed at after the last write, opened for syncing.
    current: Option<(PathBuf, File)>,
    /// A file rotated away from that still has unsynced data.
    rotated_unsynced: Option<File>,
    warning: Option<String>,
    last_track: std::time::Instant,
    _lock: File,
}

impl FileWriter {
    pub(crate) fn open(sink: &FileSink, dir: PathBuf, lock: File) -> Result<Self, Error> {
        if sink.prefix.is_empty() || sink.prefix.starts_with('.') || sink.prefix.contains('/') {
            return Err(Error::Config(format!(
                "file prefix {:?} must be non-empty, without '/', and not start with '.'",
                sink.prefix
            )));
        }
        let mut b = RollingFileAppender::builder()
            .rotation(sink.rotation.clone())
            .filename_prefix(sink.prefix.clone())
            .filename_suffix(sink.suffix.clone())
            .latest_symlink(CURRENT_LINK);
        if let Some(n) = sink.max_files {
            b = b.max_log_files(n);
        }
        let appender = b.build(&dir).map_err(|e| Error::Appender {
            dir: dir.clone(),
            source: Box::new(e),
        })?;
        let mut w = FileWriter {
            appender,
            dir,
            current: None,
            rotated_unsynced: None,
            warning: None,
            last_track: std::time::Instant::now(),
            _lock: lock,
        };
        w.track_current()
            .map_err(|e| Error::io("open current audit file", &w.dir, e))?;
        Ok(w)
    }

    /// Follows the current-file link; on a change, sets `0600` on the new
    /// file and keeps the old one for a final sync.
    fn track_current(&mut self) -> io::Result<()> {
        let link = self.dir.join(CURRENT_LINK);
        let target = fs::read_link(&link)?;
        let target = if target.is_absolute() {
            target
        } else {
            self.dir.join(target)
        };
        if self.current.as_ref().is_some_and(|(p, _)| *p == target) {
            return Ok(());
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
        let f = File::open(&target)?;
        if let Some((_, old)) = self.current.replace((target, f)) {
            self.rotated_unsynced = Some(old);
        }
        Ok(())
    }

    /// Writes complete lines in one call to the appender. On failure, says
    /// how many bytes did reach the file.
    pub(crate) fn write(&mut self, batch: &[u8]) -> Result<(), (usize, io::Error)> {
        let mut done = 0;
        while done < batch.len() {
            match self.appender.write(&batch[done..]) {
                Ok(0) => {
                    return Err((
                        done,
                        io::Error::new(io::ErrorKind::WriteZero, "audit file accepted no bytes"),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((done, e)),
            }
        }
        // New files get their 0600 soon after they appear; the 0700
        // directory keeps everyone else out meanwhile.
        if self.last_track.elapsed() >= TRACK_EVERY {
            self.follow();
        }
        Ok(())
    }

    /// A problem that did not stop a write (e.g. the current-file link
    /// vanished), once.
    pub(crate) fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    fn follow(&mut self) {
        self.last_track = std::time::Instant::now();
        if let Err(e) = self.track_current() {
            self.warning = Some(format!("cannot follow the current audit file: {e}"));
        }
    }

    /// `fdatasync` of everything written so far (in the current file and
    /// any file rotated away from since the last sync).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.follow();
        if let Some(old) = self.rotated_unsynced.take() {
            old.sync_data()?;
        }
        if let Some((_, f)) = &self.current {
            f.sync_data()?;
        }
        Ok(())
    }
}
