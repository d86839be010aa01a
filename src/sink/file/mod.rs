//! The audit files: configuration ([`FileSink`]), the directory (created
//! `0700`, checked when it already exists, locked by one writer), the
//! writer the pipeline worker drives ([`writer`]), and where a restart
//! resumes the chain ([`resume`]).
//!
//! This module owns everything that touches the audit directory for
//! writing. It knows nothing of records beyond "a line that checks under
//! the chain" ([`crate::record::chain::check_line`]); it never calls upstream into
//! the layer or the worker.

pub(crate) mod follow;
pub(crate) mod lines;
pub(crate) mod resume;
pub(crate) mod writer;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing_appender::rolling::Rotation;

use crate::error::Error;

pub(crate) use resume::{find_resume, Resume};
pub(crate) use writer::FileWriter;

/// Name of the lock file held while a process writes the directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// What the pipeline does with records while the audit file fails (a
/// write or sync returns ENOSPC, EIO, EROFS, EDQUOT, ...). Either way the
/// failure is said once per episode on stderr, shows in the stats
/// (`storage_failing`, `write_errors`, `last_error_at`) and in `health()`,
/// and the worker retries with a backoff (10 ms to 1 s) and resumes by
/// itself.
///
/// ```
/// use tracing_audit::file::OnError;
/// assert_eq!(OnError::default(), OnError::Block);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Nothing is lost: the records wait, the queue fills, and callers
    /// wait for room (a lossless queue) until the file works again. For
    /// services that must not act without an audit record.
    #[default]
    Block,
    /// Callers never wait for the disk: records that cannot be written are
    /// dropped and counted (`dropped_write_error`), and once writing works
    /// again a `records_lost` record gives the exact count. The chain stays
    /// contiguous (a dropped record never got a `seq`). Durable records
    /// (`durable_at`) and the trail's own records are never dropped: they
    /// wait for the file, and so do their callers.
    Drop,
}

/// Where and how audit records are written to disk.
///
/// | setting | default |
/// |---|---|
/// | rotation | [`Rotation::DAILY`] |
/// | `max_files` | unlimited (keep every file) |
/// | `max_file_size` | none (time rotation only) |
/// | `on_error` | [`OnError::Block`] |
/// | file name prefix | `audit` |
/// | file name suffix | `jsonl` |
///
/// Files are named as `tracing-appender` names them, `<prefix>.<date>.<suffix>`
/// (e.g. `audit.2026-11-22.jsonl`; `<prefix>.<suffix>` with
/// [`Rotation::NEVER`]), in UTC; with [`max_file_size`](FileSink::max_file_size),
/// the second and later files of a period are `<prefix>.<date>_000001.<suffix>`,
/// `_000002`, …, so that names sort in the order files were written. Every
/// file is created `0600`; the directory
/// is created `0700` (see [`AuditLayerBuilder::build`](crate::layer::AuditLayerBuilder::build)
/// for a directory that already exists).
///
/// ```
/// use tracing_audit::FileSink;
/// use tracing_appender::rolling::Rotation;
/// let sink = FileSink::new("./audit").rotation(Rotation::HOURLY).max_files(24 * 90);
/// # let _ = sink;
/// ```
#[derive(Clone)]
pub struct FileSink {
    pub(crate) dir: PathBuf,
    pub(crate) rotation: Rotation,
    pub(crate) max_files: Option<usize>,
    pub(crate) max_age: Option<std::time::Duration>,
    pub(crate) max_total_bytes: Option<u64>,
    pub(crate) max_file_size: Option<u64>,
    pub(crate) on_error: OnError,
    pub(crate) compress: bool,
    pub(crate) prefix: String,
    pub(crate) suffix: String,
    pub(crate) space_left: Option<SpaceLeft>,
    pub(crate) on_space_low: Option<SpaceHandler>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.dir)
            .field("rotation", &self.rotation)
            .field("max_files", &self.max_files)
            .field("max_age", &self.max_age)
            .field("max_total_bytes", &self.max_total_bytes)
            .field("max_file_size", &self.max_file_size)
            .field("on_error", &self.on_error)
            .field("compress", &self.compress)
            .field("prefix", &self.prefix)
            .field("suffix", &self.suffix)
            .field("space_left", &self.space_left)
            .field("on_space_low", &self.on_space_low.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// A free-space watermark for the audit file system (see
/// [`FileSink::space_left`]).
///
/// ```
/// use tracing_audit::{FileSink, file::SpaceLeft};
/// let sink = FileSink::new("./audit").space_left(SpaceLeft::Bytes(512 << 20));
/// # let _ = sink;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum SpaceLeft {
    /// At least this many bytes must stay free.
    Bytes(u64),
    /// At least this percentage of the file system must stay free.
    Percent(f64),
}

impl SpaceLeft {
    /// The watermark in bytes for a file system of `total` bytes.
    pub(crate) fn bytes(self, total: u64) -> u64 {
        match self {
            SpaceLeft::Bytes(b) => b,
            SpaceLeft::Percent(p) => (total as f64 * p.clamp(0.0, 100.0) / 100.0) as u64,
        }
    }
}

/// What a free-space crossing reports (to [`FileSink::on_space_low`]).
///
/// ```
/// let sink = tracing_audit::FileSink::new("./audit")
///     .space_left(tracing_audit::file::SpaceLeft::Percent(10.0))
///     .on_space_low(|s: &tracing_audit::file::SpaceLow| {
///         eprintln!("audit disk: {} of {} bytes free (watermark {})", s.available, s.total, s.watermark)
///     });
/// # let _ = sink;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpaceLow {
    /// Bytes free for this process.
    pub available: u64,
    /// Size of the file system.
    pub total: u64,
    /// The watermark, in bytes.
    pub watermark: u64,
    /// `true` when the space fell below the watermark, `false` when it
    /// came back above it.
    pub low: bool,
}

/// A callback for free-space crossings; runs on a thread of its own.
pub(crate) type SpaceHandler = std::sync::Arc<dyn Fn(&SpaceLow) + Send + Sync>;

/// Free and total bytes of the file system holding `dir`.
pub(crate) fn free_space(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a zeroed statvfs is a valid out-parameter, the path is a
    // NUL-terminated string that outlives the call.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = fs.f_frsize as u64;
    Ok((fs.f_bavail as u64 * frsize, fs.f_blocks as u64 * frsize))
}

impl FileSink {
    /// Audit files in `dir`, rotated daily.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("/var/log/my-service/audit");
    /// # let _ = sink;
    /// ```
    pub fn new(dir: impl AsRef<Path>) -> Self {
        FileSink {
            dir: dir.as_ref().to_path_buf(),
            rotation: Rotation::DAILY,
            max_files: None,
            max_age: None,
            max_total_bytes: None,
            max_file_size: None,
            on_error: OnError::Block,
            compress: false,
            space_left: None,
            on_space_low: None,
            prefix: "audit".into(),
            suffix: "jsonl".into(),
        }
    }

    /// How often a new file is started.
    ///
    /// ```
    /// use tracing_appender::rolling::Rotation;
    /// let sink = tracing_audit::FileSink::new("./audit").rotation(Rotation::HOURLY);
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// Keep at most `n` files; older ones are deleted when a new file starts.
    ///
    /// The retention in force is sealed into every `audit_started` and
    /// `audit_file_opened` record, so `verify` reports a trail whose oldest
    /// files are gone as retention only when retention was configured and
    /// the oldest kept file begins where a file began; otherwise as deletion.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit").max_files(90);
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn max_files(mut self, n: usize) -> Self {
        self.max_files = Some(n.max(1));
        self
    }

    /// Watches the free space of the audit file system: when it falls below
    /// the watermark, once per crossing, a `disk_space_low` record enters
    /// the trail, `AuditStats::space_low` and `health()` show it, stderr says
    /// so, and [`on_space_low`](Self::on_space_low) runs; when space returns,
    /// a `disk_space_recovered` record and the callback again. Checked about
    /// once a second by the worker.
    ///
    /// ```
    /// use tracing_audit::{FileSink, file::SpaceLeft};
    /// let sink = FileSink::new("./audit").space_left(SpaceLeft::Percent(5.0));
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn space_left(mut self, watermark: SpaceLeft) -> Self {
        self.space_left = Some(watermark);
        self
    }

    /// Runs `f` (on a thread of its own, never the worker's) at every
    /// free-space crossing of the [`space_left`](Self::space_left) watermark.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit")
    ///     .space_left(tracing_audit::file::SpaceLeft::Bytes(1 << 30))
    ///     .on_space_low(|s| eprintln!("audit disk low: {s:?}"));
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn on_space_low(mut self, f: impl Fn(&SpaceLow) + Send + Sync + 'static) -> Self {
        self.on_space_low = Some(std::sync::Arc::new(f));
        self
    }

    /// Deletes files last written more than `age` ago, oldest first, when
    /// a new file starts. Like every retention setting it is sealed into the
    /// trail, so `verify` can tell it from deletion.
    ///
    /// ```
    /// use std::time::Duration;
    /// let sink = tracing_audit::FileSink::new("./audit").max_age(Duration::from_secs(400 * 86_400));
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn max_age(mut self, age: std::time::Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Keeps the audit files under `bytes` in all: when a new file starts,
    /// the oldest files are deleted until the rest fit (never the current
    /// one). Sealed into the trail like every retention setting.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit").max_total_bytes(10 << 30);
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn max_total_bytes(mut self, bytes: u64) -> Self {
        self.max_total_bytes = Some(bytes);
        self
    }

    /// Starts a new file once the current one holds `bytes` (at least 1),
    /// as well as at each rotation period: whichever comes first. `tracing-appender`
    /// rotates by time only; the crate's own writer does this, and keeps its
    /// rule that a batch, and so a record, is never split across files: a
    /// batch takes records only while the file has room, so a file passes
    /// `bytes` by less than one record (a record larger than the limit gets
    /// a file of its own). The one exception is the last batch at shutdown,
    /// which takes everything still queued.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit").max_file_size(64 << 20);
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = Some(bytes.max(1));
        self
    }

    /// What happens to records while the file cannot be written or synced
    /// (ENOSPC, EIO, EROFS, EDQUOT): see [`OnError`].
    ///
    /// ```
    /// use tracing_audit::{FileSink, file::OnError};
    /// let sink = FileSink::new("./audit").on_error(OnError::Drop);
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn on_error(mut self, action: OnError) -> Self {
        self.on_error = action;
        self
    }

    /// Compresses each file with gzip once the writer has moved to the next
    /// one (feature `gzip`): `<name>.gz` is written beside it (`0600`),
    /// synced, renamed into place, and only then is the plain file removed,
    /// so a crash at any point leaves one complete copy (a plain file and a
    /// compressed twin: the plain one counts, and the twin is removed at the
    /// next start, which also compresses files a crash left plain).
    /// `verify`, the reader, `Follower` and the command read `.gz` files
    /// transparently; the chain runs across plain and compressed files.
    /// Compression runs on its own thread, never the worker's.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit").compress_rotated(true);
    /// # let _ = sink;
    /// ```
    #[cfg(feature = "gzip")]
    #[must_use]
    pub fn compress_rotated(mut self, yes: bool) -> Self {
        self.compress = yes;
        self
    }

    /// File name prefix (default `audit`). Must not be empty or start with `.`.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit").prefix("billing");
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// File name suffix (default `jsonl`).
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit").suffix("log");
    /// # let _ = sink;
    /// ```
    #[must_use]
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = suffix.into();
        self
    }

    /// The directory.
    ///
    /// ```
    /// let sink = tracing_audit::FileSink::new("./audit");
    /// assert_eq!(sink.dir(), std::path::Path::new("./audit"));
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The retention in force, as sealed into the trail: a JSON object, or
    /// `null` when every file is kept.
    pub(crate) fn retention_json(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.max_files {
            parts.push(format!("\"max_files\":{n}"));
        }
        if let Some(a) = self.max_age {
            parts.push(format!("\"max_age_secs\":{}", a.as_secs()));
        }
        if let Some(b) = self.max_total_bytes {
            parts.push(format!("\"max_total_bytes\":{b}"));
        }
        if parts.is_empty() {
            "null".to_owned()
        } else {
            format!("{{{}}}", parts.join(","))
        }
    }

    pub(crate) fn check_names(&self) -> Result<(), Error> {
        let bad = |s: &str| s.is_empty() || s.starts_with('.') || s.contains('/');
        if bad(&self.prefix) || self.suffix.contains('/') {
            return Err(Error::Config(format!(
                "file prefix {:?} must be non-empty, without '/', and not start with '.'; suffix {:?} without '/'",
                self.prefix, self.suffix
            )));
        }
        Ok(())
    }
}

impl<P: AsRef<Path>> From<P> for FileSink {
    fn from(dir: P) -> Self {
        FileSink::new(dir)
    }
}

/// `open` flag for every file the crate opens in the audit directory to
/// write: a symbolic link planted there (by whoever could write the
/// directory) is refused with `ELOOP`, never written through, so the trail
/// cannot be turned into a write, or a truncation, of a file elsewhere.
pub(crate) const NOFOLLOW: i32 = libc::O_NOFOLLOW;

/// Refuses to start on a directory holding a symbolic link, or anything but
/// a regular file, named like an audit file, the lock or a cursor (the
/// writer would open it to continue; a FIFO would block its writes): the
/// error names it.
pub(crate) fn refuse_planted(dir: &Path, prefix: &str, suffix: &str) -> Result<(), Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list audit directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list audit directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let named_like_ours = named_like_audit_file(name, prefix, suffix)
            || name == LOCK_FILE
            || crate::sink::cursor::is_cursor_name(name);
        if !named_like_ours {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("list audit directory", dir, e))?;
        if kind.is_symlink() {
            return Err(Error::Config(format!(
                "{} is a symbolic link: audit files are never written through links (someone who could write the directory may have planted it); remove it",
                entry.path().display()
            )));
        }
        if !kind.is_file() {
            return Err(Error::Config(format!(
                "{} is not a regular file (a FIFO, socket, device or directory): the audit trail writes only regular files; remove it",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// Whether `name` is an audit file's (`prefix*suffix`, or that and `.gz`).
fn named_like_audit_file(name: &str, prefix: &str, suffix: &str) -> bool {
    let plain = name.strip_suffix(GZ).unwrap_or(name);
    name.starts_with(prefix) && plain.ends_with(suffix)
}

/// What a compressed audit file's name ends with, after the suffix.
pub(crate) const GZ: &str = ".gz";

/// Lists the audit files of a directory (regular files with the prefix and
/// suffix, or the suffix and `.gz`; links and dot files excluded), sorted
/// by name. A compressed copy whose plain file is still there (compression
/// was interrupted before the plain one was removed) is left out: the
/// plain file is the one that counts.
pub(crate) fn list_files(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.')
            || !named_like_audit_file(name, prefix, suffix)
            || !entry.file_type()?.is_file()
        {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    let names: std::collections::HashSet<PathBuf> = files.clone().into_iter().collect();
    files.retain(|p| !is_compressed(p) || !names.contains(&p.with_extension("")));
    Ok(files)
}

/// Whether `path` names a compressed audit file.
pub(crate) fn is_compressed(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// The name an audit file has (or had) before compression: the order of
/// files, whatever became of them since.
pub(crate) fn plain_name(path: &Path) -> String {
    let name = file_name(path);
    match name.strip_suffix(GZ) {
        Some(plain) => plain.to_owned(),
        None => name,
    }
}

/// An audit file open for reading, plain or decompressed.
pub(crate) struct AuditRead(Box<dyn io::Read + Send>);

impl io::Read for AuditRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::fmt::Debug for AuditRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditRead")
    }
}

/// Opens an audit file for reading, decompressing a `.gz` one (also when a
/// plain file listed a moment ago has just been compressed).
pub(crate) fn open_read(path: &Path) -> io::Result<AuditRead> {
    let (f, path) = match fs::File::open(path) {
        Ok(f) => (f, path.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !is_compressed(path) => {
            let twin = PathBuf::from(format!("{}{GZ}", path.display()));
            match fs::File::open(&twin) {
                Ok(f) => (f, twin),
                Err(_) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if !is_compressed(&path) {
        return Ok(AuditRead(Box::new(f)));
    }
    #[cfg(feature = "gzip")]
    {
        Ok(AuditRead(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::new(f),
        ))))
    }
    #[cfg(not(feature = "gzip"))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} is compressed: build tracing-audit with the `gzip` feature to read it",
                path.display()
            ),
        ))
    }
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The audit directory, ready to write: its absolute path, and a warning
/// when it already existed open to other users.
#[derive(Debug)]
pub(crate) struct PreparedDir {
    pub(crate) path: PathBuf,
    pub(crate) warning: Option<String>,
}

/// Creates the directory `0700` if missing. An existing directory that
/// other users can enter is tightened to `0700` when this process owns it,
/// and reported either way (the caller says so on stderr and in the trail).
pub(crate) fn prepare_dir(dir: &Path) -> Result<PreparedDir, Error> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create audit directory", dir, e))?;
    }
    let abs = fs::canonicalize(dir).map_err(|e| Error::io("resolve audit directory", dir, e))?;
    let meta = fs::metadata(&abs).map_err(|e| Error::io("read audit directory", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            "use audit directory",
            dir,
            io::Error::other("not a directory"),
        ));
    }
    let mode = meta.mode() & 0o7777;
    let mut warning = None;
    if mode & 0o077 != 0 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let shown = abs.display();
        if meta.uid() == me
            && fs::set_permissions(&abs, fs::Permissions::from_mode(mode & 0o700)).is_ok()
        {
            warning = Some(format!(
                "the audit directory {shown} was mode {mode:04o}, open to other users; it was tightened to {:04o}",
                mode & 0o700
            ));
        } else {
            warning = Some(format!(
                "the audit directory {shown} is mode {mode:04o} and not owned by this process: other users can enter it; run `chmod 700 {shown}`"
            ));
        }
    }
    Ok(PreparedDir { path: abs, warning })
}

/// How long [`lock_dir`] waits for a lock that is held before it says the
/// directory is in use. A child process `fork` creates holds a copy of each
/// of its parent's descriptors, the lock's included (an `flock` belongs to
/// the open file, which lives while any copy does). The crate's `fork`
/// handler closes the copy in the child at once ([`close_locks_in_child`]);
/// a child made without running `fork` handlers (a raw `clone`, `vfork`)
/// keeps it until its `exec`, so a pipeline started again in-process while
/// such a child is spawned can find the lock of the one just stopped still
/// held for that moment.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Lock descriptors (two a directory) a process can hold at once with the
/// child's copy closed at `fork`; one beyond them works the same, without
/// that.
const LOCK_SLOTS: usize = 32;

/// The descriptors of the directory locks this process holds (`-1`: free).
/// Atomics, so the `fork` child handler can read them (async-signal-safe).
static LOCK_FDS: [std::sync::atomic::AtomicI32; LOCK_SLOTS] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; LOCK_SLOTS];

/// Bumped by [`close_locks_in_child`]: a lock taken in another generation
/// is a child's copy, already closed.
static LOCKS_CLOSED_IN_CHILD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// In a child `fork` just created (called by the crate's `fork` handler,
/// which the pipeline installs): closes its copies of the parent's
/// directory locks, so the child never keeps a directory locked (a
/// pre-fork server's worker, a daemon's helper, a child between `fork` and
/// `exec`) after the process that locked it stopped. The parent's own
/// descriptors, and so its locks, are untouched. Only atomics and `close`:
/// async-signal-safe, as a `fork` child handler must be.
pub(crate) fn close_locks_in_child() {
    use std::sync::atomic::Ordering::AcqRel;
    LOCKS_CLOSED_IN_CHILD.fetch_add(1, AcqRel);
    for slot in &LOCK_FDS {
        let fd = slot.swap(-1, AcqRel);
        if fd >= 0 {
            // SAFETY: `fd` is this process's copy of a lock descriptor
            // (registered by `DirLock`), which nothing in the child uses;
            // the slot is cleared first, so `DirLock` will not close it too.
            unsafe { libc::close(fd) };
        }
    }
}

/// A directory's exclusive lock, held while this value lives: an `flock`
/// on `.lock` (what versions before this one take, so that they and this
/// one exclude each other) and one on the directory itself, which deleting
/// `.lock` (a cleanup script, `systemd-tmpfiles` aging it out) does not
/// release. A child `fork` creates holds neither ([`close_locks_in_child`]).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: HeldLock,
    /// `None` where the file system cannot lock a directory (NFS emulates
    /// `flock` with write locks, which a directory opened to read cannot
    /// take): `.lock` alone then, as before.
    _dir: Option<HeldLock>,
}

/// One locked descriptor, registered for [`close_locks_in_child`].
#[derive(Debug)]
struct HeldLock {
    file: std::mem::ManuallyDrop<File>,
    /// The entry of [`LOCK_FDS`] that names it, if one was free.
    slot: Option<usize>,
    /// The fork generation it was taken in: in a child, its descriptor is
    /// the child's copy, closed at `fork`, and its number may be reused.
    generation: u64,
}

impl HeldLock {
    fn new(file: File) -> Self {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
        // Before the entry exists (or the pipeline's `fork` handler is
        // installed), a fork leaves the child holding its copy, as it did
        // before there were entries.
        let generation = LOCKS_CLOSED_IN_CHILD.load(Acquire);
        let fd = file.as_raw_fd();
        let slot = LOCK_FDS
            .iter()
            .position(|s| s.compare_exchange(-1, fd, AcqRel, Relaxed).is_ok());
        HeldLock {
            file: std::mem::ManuallyDrop::new(file),
            slot,
            generation,
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
        let fd = self.file.as_raw_fd();
        let ours = match self.slot {
            // In a child the handler cleared the entry and closed the copy
            // already: closing it again could close another file that took
            // its number (the entry may even name that file's lock now).
            _ if LOCKS_CLOSED_IN_CHILD.load(Acquire) != self.generation => false,
            // The entry is cleared before the descriptor is closed, so a
            // fork in between never closes a number reused since.
            Some(i) => LOCK_FDS[i]
                .compare_exchange(fd, -1, AcqRel, Relaxed)
                .is_ok(),
            None => true,
        };
        if ours {
            // SAFETY: dropped once, here; not used after.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.file) };
        }
    }
}

/// Takes `f`'s exclusive `flock`, waiting up to [`LOCK_WAIT`] from `start`:
/// `Ok(false)` if another holds it still.
fn try_lock_until(f: &File, start: std::time::Instant) -> io::Result<bool> {
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(true),
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => return Ok(false),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Takes the directory's exclusive lock, or says who holds it (after
/// [`LOCK_WAIT`]).
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, Error> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    let in_use = || Error::DirectoryInUse {
        dir: dir.to_path_buf(),
    };
    let start = std::time::Instant::now();
    if !try_lock_until(&f, start).map_err(|e| Error::io("lock audit directory", &path, e))? {
        return Err(in_use());
    }
    let file = HeldLock::new(f);
    // The directory too. Where it cannot be locked (an error other than
    // "held"), `.lock` alone stands, as it always did.
    let dir_lock = match File::open(dir) {
        Ok(d) => match try_lock_until(&d, start) {
            Ok(true) => Some(HeldLock::new(d)),
            Ok(false) => return Err(in_use()),
            Err(_) => None,
        },
        Err(_) => None,
    };
    Ok(DirLock {
        _file: file,
        _dir: dir_lock,
    })
}
