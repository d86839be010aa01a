//! Configuring and starting an audit pipeline.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;
use crate::layer::{AuditLayer, LayerContext};
use crate::pipeline::guard::{AuditGuard, AuditHandle};
use crate::pipeline::worker::{Checkpoints, SpaceWatch, Worker};
use crate::pipeline::{Counters, QueueMode, Submitter};
use crate::record::chain::{Chain, Hasher};
use crate::record::checkpoint::CheckpointKey;
use crate::record::fields::Risk;
use crate::record::redact::Redactor;
use crate::record::RecordConstants;
use crate::sink::file::{self, FileSink, FileWriter, Resume};
use crate::sink::forward::{ForwardCounters, TrailSource};
use crate::sink::syslog::SyslogSink;
use crate::sink::{LineSink, Progress};

/// Default of [`AuditLayerBuilder::checkpoint_every`]: records…
const DEFAULT_CHECKPOINT_RECORDS: u64 = 1000;
/// …and time.
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// The environment variable the README and the command-line tool use for
/// the chain key by convention (see [`AuditLayerBuilder::chain_key_env`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// // In the service: the key comes from the environment at build time.
/// std::env::set_var(tracing_audit::layer::CHAIN_KEY_ENV, "0123456789abcdef0123456789abcdef");
/// let (_audit, guard) = tracing_audit::AuditLayer::builder()
///     .file(dir)
///     .chain_key_env(tracing_audit::layer::CHAIN_KEY_ENV)
///     .build::<tracing_subscriber::Registry>()?;
/// drop(guard);
/// # Ok(()) }
/// ```
pub const CHAIN_KEY_ENV: &str = "TRACING_AUDIT_CHAIN_KEY";

/// Configures an [`AuditLayer`]. Start from [`AuditLayer::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`durable_at`](Self::durable_at) | [`Risk::High`]: synced before the macro returns |
/// | [`sync_interval`](Self::sync_interval) | 1 s: the longest any record waits to be synced |
/// | [`queue_capacity`](Self::queue_capacity) | 16 384 records |
/// | [`queue_mode`](Self::queue_mode) | [`QueueMode::Lossless`]: the caller waits when the queue is full |
/// | [`max_value_len`](Self::max_value_len) | 8 KiB per value, longer values truncated with a marker |
/// | [`redact`](Self::redact) | [`DEFAULT_REDACTED_NAMES`](crate::record::DEFAULT_REDACTED_NAMES), replaced by `"[redacted]"` |
/// | [`shutdown_grace`](Self::shutdown_grace) | 10 s: the longest dropping the guard takes |
/// | chain | SHA-256; HMAC-SHA-256 with [`chain_key`](Self::chain_key) |
/// | `host` | the machine's host name |
/// | `service`, `version`, `environment` | `null` |
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// use std::time::Duration;
/// use tracing_audit::{AuditLayer, Risk};
/// use tracing_subscriber::prelude::*;
///
/// let (audit, guard) = AuditLayer::builder()
///     .service("billing-api")
///     .file(dir)
///     .durable_at(Risk::High)
///     .sync_interval(Duration::from_millis(500))
///     .build()?;
/// let _subscriber = tracing_subscriber::registry().with(audit);
/// drop(guard);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AuditLayerBuilder {
    service: Option<String>,
    version: Option<String>,
    environment: Option<String>,
    host: Option<String>,
    file: Option<FileSink>,
    syslog: Vec<SyslogSink>,
    #[cfg(feature = "otlp")]
    otlp: Vec<crate::sink::otlp::OtlpSink>,
    durable_at: Risk,
    sync_interval: Duration,
    queue_capacity: usize,
    queue_mode: QueueMode,
    max_value_len: usize,
    /// Names whose `details` values are redacted.
    redact: Vec<String>,
    /// Redacted values become their HMAC under the chain key.
    redact_hmac: bool,
    /// Write `<event>_started` when an audited span opens.
    span_start: bool,
    shutdown_grace: Duration,
    /// The keyed hasher (its `Debug` never shows the key), or why not.
    chain_key: Option<Result<Hasher, String>>,
    /// The checkpoint signing key (its `Debug` shows only its id), or why not.
    signing_key: Option<Result<CheckpointKey, String>>,
    /// A checkpoint after at most this many records, or this long.
    checkpoint_every: (u64, Duration),
}

impl Default for AuditLayerBuilder {
    fn default() -> Self {
        AuditLayerBuilder {
            service: None,
            version: None,
            environment: None,
            host: Some(gethostname::gethostname().to_string_lossy().into_owned()),
            file: None,
            syslog: Vec::new(),
            #[cfg(feature = "otlp")]
            otlp: Vec::new(),
            durable_at: Risk::High,
            sync_interval: Duration::from_secs(1),
            queue_capacity: crate::pipeline::DEFAULT_QUEUE_CAPACITY,
            queue_mode: QueueMode::Lossless,
            max_value_len: 8 * 1024,
            redact: crate::record::DEFAULT_REDACTED_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            redact_hmac: false,
            span_start: false,
            shutdown_grace: Duration::from_secs(10),
            chain_key: None,
            signing_key: None,
            checkpoint_every: (DEFAULT_CHECKPOINT_RECORDS, DEFAULT_CHECKPOINT_INTERVAL),
        }
    }
}

impl AuditLayerBuilder {
    /// The service name written in every record.
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// The service version written in every record.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The environment (`production`, `staging`, …) written in every record.
    #[must_use]
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }

    /// Overrides the host name written in every record.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Writes the trail to rolling files: a [`FileSink`], or just a
    /// directory (daily rotation, every file kept).
    #[must_use]
    pub fn file(mut self, sink: impl Into<FileSink>) -> Self {
        self.file = Some(sink.into());
        self
    }

    /// Also forwards every record to a syslog server (may be called more
    /// than once; may be the only sink).
    #[must_use]
    pub fn syslog(mut self, sink: SyslogSink) -> Self {
        self.syslog.push(sink);
        self
    }

    /// Also exports every record as an OTLP log record (feature `otlp`;
    /// may be called more than once; may be the only sink).
    #[cfg(feature = "otlp")]
    #[must_use]
    pub fn otlp(mut self, sink: crate::sink::otlp::OtlpSink) -> Self {
        self.otlp.push(sink);
        self
    }

    /// Records at or above this risk are written and `fdatasync`ed before
    /// the tracing macro returns (concurrent waiters share one sync).
    #[must_use]
    pub fn durable_at(mut self, risk: Risk) -> Self {
        self.durable_at = risk;
        self
    }

    /// The longest a record waits before it is synced to disk.
    #[must_use]
    pub fn sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every.max(Duration::from_millis(1));
        self
    }

    /// How many records may wait in the queue.
    #[must_use]
    pub fn queue_capacity(mut self, records: usize) -> Self {
        self.queue_capacity = records.max(1);
        self
    }

    /// What a full queue does: wait (default) or drop and count.
    #[must_use]
    pub fn queue_mode(mut self, mode: QueueMode) -> Self {
        self.queue_mode = mode;
        self
    }

    /// Longest value kept, in bytes; longer ones are cut at a character
    /// boundary with `...[truncated N bytes]`, and the record lists them in
    /// `details["audit.truncated"]`.
    #[must_use]
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.max_value_len = bytes.max(16);
        self
    }

    /// Field names whose values never reach the trail in clear (replacing
    /// the defaults, [`DEFAULT_REDACTED_NAMES`](crate::record::DEFAULT_REDACTED_NAMES):
    /// `password`, `passwd`, `secret`, `token`, `authorization`, `cookie`,
    /// `api_key`, `private_key`). A field matches when its name contains an
    /// entry, ignoring ASCII case (`user.password`, `Authorization`,
    /// `refresh_token`); its value is written as `"[redacted]"` (or its
    /// HMAC, with [`redact_with_hmac`](Self::redact_with_hmac)) and the
    /// record lists it in `details["audit.redacted"]`. This applies to
    /// every field that goes to `details`, including each key of a
    /// `valuable` `audit.details` map; the `audit.*` slots are never
    /// redacted. An empty list turns redaction off.
    ///
    /// ```
    /// let builder = tracing_audit::AuditLayer::builder()
    ///     .file("./audit")
    ///     .redact(["password", "token", "ssn", "card_number"]);
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn redact<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.redact = names.into_iter().map(Into::into).collect();
        self
    }

    /// Redacted values become `hmac-sha256:<hex>` under the chain key
    /// (domain-separated from the chain's own HMAC; see
    /// [`redaction_hmac`](crate::record::redaction_hmac)) instead of
    /// `"[redacted]"`, as HashiCorp Vault's audit devices do: an auditor
    /// with the key can check whether a known value appeared, and equal
    /// values correlate across records. A value longer than
    /// [`max_value_len`](Self::max_value_len) is hashed as cut. Needs a
    /// [`chain_key`](Self::chain_key): `build` fails without one.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let (layer, guard) = tracing_audit::AuditLayer::builder()
    ///     .file(dir.path())
    ///     .chain_key(b"a key of at least 32 bytes from a secret store".to_vec())
    ///     .redact_with_hmac()
    ///     .build::<tracing_subscriber::Registry>()?;
    /// # drop((layer, guard));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn redact_with_hmac(mut self) -> Self {
        self.redact_hmac = true;
        self
    }

    /// The longest dropping the [`AuditGuard`] may take. Shutdown refuses
    /// new records at once (counting them), writes what is queued and
    /// `audit_stopped`, and syncs; whatever a failing disk or a stuck relay
    /// keeps from finishing within the grace is counted as dropped and said
    /// on stderr, and the drop returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = tracing_audit::AuditLayer::builder()
    ///     .file("./audit")
    ///     .shutdown_grace(Duration::from_secs(3));
    /// # let _ = builder;
    /// ```
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Keys the chain with HMAC-SHA-256, so whoever can edit the files but
    /// does not hold the key cannot recompute it. Use at least 32 random bytes.
    #[must_use]
    pub fn chain_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        let key = key.into();
        self.chain_key = Some(if key.is_empty() {
            Err("the chain key is empty".into())
        } else {
            Ok(Hasher::new(Some(&key)))
        });
        self
    }

    /// Reads the chain key from an environment variable at
    /// [`build`](Self::build) (conventionally [`CHAIN_KEY_ENV`]); its UTF-8
    /// bytes are the key. `build` fails if it is unset or empty.
    #[must_use]
    pub fn chain_key_env(mut self, var: &str) -> Self {
        self.chain_key = Some(match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Hasher::new(Some(v.as_bytes()))),
            _ => Err(format!("environment variable {var} is unset or empty")),
        });
        self
    }

    /// A span with its own `audit.event` is an audited operation, recorded
    /// when it closes (with its duration and the outcome recorded on it, or
    /// `unknown`). With `record_span_start(true)` an `<event>_started`
    /// record is also written when it opens, so the attempt is on disk even
    /// if the process dies before it ends (default off).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let (layer, guard) = tracing_audit::AuditLayer::builder()
    ///     .file(dir.path())
    ///     .record_span_start(true)
    ///     .build::<tracing_subscriber::Registry>()?;
    /// # drop((layer, guard));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn record_span_start(mut self, on: bool) -> Self {
        self.span_start = on;
        self
    }

    /// Signs checkpoints with the Ed25519 key in `path` (PKCS#8 PEM, as
    /// `tracing-audit keygen` writes it; a file others can read is
    /// refused). The worker then writes a signed `checkpoint` record every
    /// [`checkpoint_every`](Self::checkpoint_every) and at stop, so that a
    /// verifier with the public key (`verify --pubkey`) can tell a trail
    /// cut short or a forged tail (see [`crate::record::checkpoint`]). The
    /// key is never printed; `build` fails if it cannot be read.
    #[must_use]
    pub fn signing_key_file(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.signing_key = Some(CheckpointKey::read(path).map_err(|e| e.to_string()));
        self
    }

    /// [`signing_key_file`](Self::signing_key_file) with the PEM text in
    /// the environment variable `var`; `build` fails if it is unset or not
    /// a key.
    #[must_use]
    pub fn signing_key_env(mut self, var: &str) -> Self {
        self.signing_key = Some(match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                CheckpointKey::from_pem(&v).map_err(|e| format!("environment variable {var}: {e}"))
            }
            _ => Err(format!("environment variable {var} is unset or empty")),
        });
        self
    }

    /// With a signing key: a checkpoint right after every `records`th
    /// record since the last one, and after the first batch once `interval`
    /// has passed since the last (default 1 000 records, 10 s); and one at
    /// stop. The trail's own records (`audit_file_opened`, `records_lost`,
    /// …) count as the application's do. So a running trail's unverified
    /// tail is at most `records` records or `interval` old.
    #[must_use]
    pub fn checkpoint_every(mut self, records: u64, interval: Duration) -> Self {
        self.checkpoint_every = (records.max(1), interval.max(Duration::from_millis(10)));
        self
    }

    /// Checks the configuration, opens the sinks, resumes the chain from
    /// the files on disk, and starts the worker threads.
    pub fn build<S>(mut self) -> Result<(AuditLayer<S>, AuditGuard), Error> {
        #[cfg(feature = "otlp")]
        let no_otlp = self.otlp.is_empty();
        #[cfg(not(feature = "otlp"))]
        let no_otlp = true;
        if self.file.is_none() && self.syslog.is_empty() && no_otlp {
            return Err(Error::Config(
                "no sink: call .file(..), .syslog(..) and/or .otlp(..)".into(),
            ));
        }
        #[cfg(feature = "otlp")]
        for sink in &self.otlp {
            sink.check_endpoint()?;
        }
        let hasher = match self.chain_key.take() {
            None => Hasher::Plain,
            Some(Ok(h)) => h,
            Some(Err(e)) => return Err(Error::Config(e)),
        };

        let redactor = self.redactor(&hasher)?;
        let checkpoints = match self.signing_key.take() {
            None => None,
            Some(Err(e)) => return Err(Error::Config(format!("signing key: {e}"))),
            Some(Ok(key)) => Some(Checkpoints {
                key_id: key.public().key_id(),
                key,
                every: self.checkpoint_every.0,
                interval: self.checkpoint_every.1,
                since: 0,
                last_at: std::time::Instant::now(),
            }),
        };
        let (mut file, resume, config_warnings) = self.open_file(&hasher)?;
        let retention = self
            .file
            .as_ref()
            .map_or_else(|| "null".to_owned(), FileSink::retention_json);
        // A directory's chain keeps the id it got when it started; a trail
        // of schema 1 records (no id yet) gets one at its first new record.
        let chain_id = resume.chain_id.unwrap_or_else(uuid::Uuid::now_v7);
        let chain = match &resume.last {
            Some((seq, hash)) => Chain::resume(hasher, &chain_id, *seq, hash),
            None => Chain::new(hasher, &chain_id),
        };

        let counters = Arc::new(Counters::default());
        let syslog_counters = Arc::new(ForwardCounters::default());
        let grace = self.shutdown_grace;
        // With a file, the syslog sinks read the trail: where it is, its
        // chain, and what it already holds.
        let trail = match (&file, &self.file) {
            (Some(w), Some(sink)) => Some(TrailSource {
                dir: w.dir().to_path_buf(),
                prefix: sink.prefix.clone(),
                suffix: sink.suffix.clone(),
                chain_id: chain_id.to_string(),
                written: resume.last.as_ref().map(|(seq, _)| *seq),
                // They forward only lines that check under the chain's hash.
                hasher: chain.hasher().clone(),
            }),
            _ => None,
        };
        #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
        let mut cursors: Vec<String> = self
            .syslog
            .iter()
            .filter_map(|s| s.cursor_in(trail.as_ref()))
            .collect();
        #[cfg(feature = "otlp")]
        cursors.extend(self.otlp.iter().filter_map(|s| s.cursor_in(trail.as_ref())));
        check_cursor_names(cursors)?;
        #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
        let (mut forwards, mut progress, mut threads) = start_syslog(
            std::mem::take(&mut self.syslog),
            &syslog_counters,
            grace,
            self.host.as_deref(),
            trail.as_ref(),
        )?;
        let otlp_counters = Arc::new(ForwardCounters::default());
        #[cfg(feature = "otlp")]
        for sink in std::mem::take(&mut self.otlp) {
            let (fwd, thread) = sink.bounded_by(grace).start(
                otlp_counters.clone(),
                self.service.as_deref(),
                trail.as_ref(),
            )?;
            progress.extend(fwd.progress());
            forwards.push(Box::new(fwd));
            threads.push(thread);
        }
        if let Some(w) = &mut file {
            w.watch_forwarders(progress);
        }

        let (submitter, rx) = Submitter::new(
            self.queue_capacity,
            self.queue_mode,
            self.durable_at,
            counters.clone(),
            chain.hasher().prehasher(),
        );
        let handle = AuditHandle::new(
            counters.clone(),
            syslog_counters,
            otlp_counters,
            submitter.sender(),
            submitter.waker.clone(),
        );
        let constants = RecordConstants::new(
            self.service.as_deref(),
            self.version.as_deref(),
            self.environment.as_deref(),
            self.host.as_deref(),
        );
        let probe = crate::pipeline::ProbeSlot::default();
        let space = self.file.as_ref().and_then(SpaceWatch::new);
        let worker = Worker {
            probe: probe.clone(),
            space,
            rx,
            chain,
            file,
            forwards,
            counters,
            sync_interval: self.sync_interval,
            shutdown_grace: self.shutdown_grace,
            constants: constants.clone(),
            value_limit: self.max_value_len,
            resume,
            retention,
            config_warnings,
            pid: std::process::id(),
            drop_on_error: self
                .file
                .as_ref()
                .is_some_and(|f| f.on_error == crate::sink::file::OnError::Drop),
            checkpoints,
        };
        let main = spawn_worker(worker)?;
        submitter.waker.set(main.thread().clone());
        // The pipeline worker must stop first (it closes the syslog queues).
        threads.insert(0, main);

        let shared = Arc::new(LayerContext {
            submitter,
            probe,
            constants,
            value_limit: self.max_value_len,
            redactor,
            span_start: self.span_start,
            #[cfg(feature = "opentelemetry")]
            dispatch: std::sync::OnceLock::new(),
        });
        Ok((
            AuditLayer::new(shared),
            AuditGuard::new(handle, threads, self.shutdown_grace),
        ))
    }

    /// The redactor the builder asks for (`None` with an empty list).
    fn redactor(&self, hasher: &Hasher) -> Result<Option<Arc<Redactor>>, Error> {
        let mac = match (self.redact_hmac, hasher.mac()) {
            (false, _) => None,
            (true, Some(mac)) => Some(mac),
            (true, None) => {
                return Err(Error::Config(
                    "redact_with_hmac needs a chain key (chain_key or chain_key_env)".into(),
                ))
            }
        };
        Ok(Redactor::new(&self.redact, mac).map(Arc::new))
    }

    /// Prepares the audit directory (created `0700`, locked), and finds
    /// where the trail resumes. Returns the writer, the resume point and
    /// warnings for the first record.
    fn open_file(
        &self,
        hasher: &Hasher,
    ) -> Result<(Option<FileWriter>, Resume, Vec<String>), Error> {
        let Some(sink) = &self.file else {
            return Ok((None, Resume::default(), Vec::new()));
        };
        sink.check_names()?;
        let dir = file::prepare_dir(&sink.dir)?;
        let warnings = dir.warning.into_iter().collect();
        let lock = file::lock_dir(&dir.path)?;
        file::refuse_planted(&dir.path, &sink.prefix, &sink.suffix)?;
        let resume = file::find_resume(sink, &dir.path, hasher)?;
        Ok((
            Some(FileWriter::new(sink, dir.path, lock)),
            resume,
            warnings,
        ))
    }
}

/// The forwarders the worker hands each sealed line to.
type Forwards = Vec<Box<dyn LineSink>>;

/// The started syslog sinks: forwarders, the progress of those reading
/// the trail, and their threads.
type Started = (Forwards, Vec<Arc<Progress>>, Vec<JoinHandle<()>>);

/// Starts each syslog sink's thread; a sink never gets a longer shutdown
/// grace than the pipeline's own (the guard's drop is bounded by it).
/// Returns the forwarders, the progress of those reading the trail, and
/// the threads.
fn start_syslog(
    sinks: Vec<SyslogSink>,
    counters: &Arc<ForwardCounters>,
    grace: Duration,
    host: Option<&str>,
    trail: Option<&TrailSource>,
) -> Result<Started, Error> {
    let mut forwards: Forwards = Vec::new();
    let mut progress = Vec::new();
    let mut threads = Vec::new();
    for sink in sinks {
        let (fwd, thread) = sink
            .bounded_by(grace)
            .start(counters.clone(), host, trail)?;
        progress.extend(fwd.progress());
        forwards.push(Box::new(fwd));
        threads.push(thread);
    }
    Ok((forwards, progress, threads))
}

/// Two sinks reading one trail need two cursors.
fn check_cursor_names(names: Vec<String>) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name.clone()) {
            return Err(Error::Config(format!(
                "two sinks would share the forward cursor `{name}`: give each its own .cursor_name(..)"
            )));
        }
    }
    Ok(())
}

/// Runs the worker on its own thread.
fn spawn_worker(worker: Worker) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name("tracing-audit".into())
        .spawn(move || worker.run())
        .map_err(|e| Error::io("start the audit worker thread", Path::new("."), e))
}
