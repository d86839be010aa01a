//! Forwarding the audit trail to a syslog server (rsyslog, syslog-ng, a SIEM
//! relay): configuration ([`SyslogSink`]) and the sink's own worker thread.
//!
//! The pipeline worker hands every sealed line (hash included, so the SIEM
//! holds an off-host copy of the chain) to this sink's bounded queue; the
//! sink's thread frames and sends it. The application's threads never touch
//! the network. On a send error or a closed peer the thread reconnects with
//! exponential backoff and jitter, keeping the message. What was in flight
//! on a connection that died is sent again: over RELP exactly the messages
//! the relay did not acknowledge ([`relp`]), over plain TCP/TLS, which
//! cannot say what the relay took, the last few messages sent (delivery is
//! at least once across a reconnect; `seq` and `id` in the structured data
//! identify duplicates, and `syslog_resent` counts them).
//!
//! Hand-written rather than a syslog crate: the existing ones send
//! synchronously from the caller's thread, lack RFC 6587 octet counting on
//! TCP/TLS, do not reconnect, and none speaks RELP.

mod frame;
mod relp;
mod transport;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use frame::{severity, Facility, Format};
pub use transport::Framing;

use crate::error::Error;
use crate::queue::{offer, Offered, QueueMode};
use crate::record::layout::OwnedLine;
use crate::record::mapping::Schema;
use crate::record::AuditRecord;
use crate::sink::{LastError, LineSink, SealedLine};
use frame::{Header, SdFields};
use transport::{Conn, Target};

/// A syslog destination.
///
/// | setting | default |
/// |---|---|
/// | format | [`Format::Rfc5424`] |
/// | facility | [`Facility::Local7`] |
/// | app name | `tracing-audit` |
/// | SD-ID | `audit@32473` |
/// | framing (TCP) | [`Framing::OctetCounting`] |
/// | UDP message cap | 2048 bytes (MSG cut at a UTF-8 boundary, SD kept, counted) |
/// | queue | 65 536 messages, [`QueueMode::Lossless`] |
/// | reconnect backoff | 100 ms doubling to 30 s, ±25 % jitter |
/// | resent after a dead stream | RELP: exactly the unacknowledged; TCP/TLS: last 256 messages |
/// | RELP window (unacknowledged messages in flight) | 128 |
/// | shutdown grace for an unreachable server | 10 s |
///
/// ```no_run
/// use tracing_audit::{AuditLayer, SyslogSink, syslog::Facility};
/// let (layer, guard) = AuditLayer::builder()
///     .file("./audit")
///     .syslog(SyslogSink::tcp("127.0.0.1:6514").app_name("billing-api").facility(Facility::Local7))
///     .build::<tracing_subscriber::Registry>()?;
/// # Ok::<(), tracing_audit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SyslogSink {
    target: Target,
    format: Format,
    facility: Facility,
    app_name: String,
    sd_id: String,
    framing: Framing,
    max_datagram: usize,
    capacity: usize,
    mode: QueueMode,
    backoff_min: Duration,
    backoff_max: Duration,
    replay: usize,
    shutdown_grace: Duration,
    schema: Option<Schema>,
}

impl SyslogSink {
    fn new(target: Target) -> Self {
        SyslogSink {
            target,
            format: Format::Rfc5424,
            facility: Facility::Local7,
            app_name: "tracing-audit".into(),
            sd_id: "audit@32473".into(),
            framing: Framing::OctetCounting,
            max_datagram: 2048,
            capacity: 65536,
            mode: QueueMode::Lossless,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            replay: 256,
            shutdown_grace: SHUTDOWN_GRACE,
            schema: None,
        }
    }

    /// UDP, one message per datagram.
    pub fn udp(addr: impl Into<String>) -> Self {
        Self::new(Target::Udp(addr.into()))
    }

    /// TCP with RFC 6587 framing (octet counting by default).
    pub fn tcp(addr: impl Into<String>) -> Self {
        Self::new(Target::Tcp(addr.into()))
    }

    /// TLS (RFC 5425) with a rustls client configuration, which decides
    /// server certificate verification and an optional client certificate.
    /// `server_name` is the name the server's certificate must carry.
    #[cfg(feature = "tls")]
    pub fn tls(
        addr: impl Into<String>,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        Self::new(Target::Tls(addr.into(), config, server_name))
    }

    /// RELP over TCP, to rsyslog's `imrelp` (or anything speaking RELP):
    /// the relay acknowledges every message, so `syslog_sent` counts what
    /// it took, and after a reconnect exactly the unacknowledged messages
    /// are sent again. Up to [`relp_window`](Self::relp_window) messages
    /// are in flight at once.
    ///
    /// ```no_run
    /// use tracing_audit::{AuditLayer, SyslogSink};
    /// let (layer, guard) = AuditLayer::builder()
    ///     .file("./audit")
    ///     .syslog(SyslogSink::relp("127.0.0.1:2514"))
    ///     .build::<tracing_subscriber::Registry>()?;
    /// # Ok::<(), tracing_audit::Error>(())
    /// ```
    pub fn relp(addr: impl Into<String>) -> Self {
        Self::new(Target::Relp(addr.into(), RELP_WINDOW))
    }

    /// RELP over TLS (imrelp's `tls="on"`), with a rustls client
    /// configuration as for [`tls`](Self::tls).
    #[cfg(feature = "tls")]
    pub fn relp_tls(
        addr: impl Into<String>,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        Self::new(Target::RelpTls(
            addr.into(),
            RELP_WINDOW,
            config,
            server_name,
        ))
    }

    /// How many messages a RELP sink sends before it waits for the relay's
    /// acknowledgements (default 128, librelp's own; at least 1). Ignored
    /// by the other transports.
    #[must_use]
    pub fn relp_window(mut self, messages: usize) -> Self {
        let messages = messages.max(1);
        match &mut self.target {
            Target::Relp(_, w) => *w = messages,
            #[cfg(feature = "tls")]
            Target::RelpTls(_, w, ..) => *w = messages,
            _ => {}
        }
        self
    }

    /// A Unix datagram socket (the local syslog daemon's is `/dev/log`).
    pub fn unix(path: impl AsRef<Path>) -> Self {
        Self::new(Target::Unix(path.as_ref().to_path_buf()))
    }

    /// The local syslog daemon at `/dev/log`.
    pub fn local() -> Self {
        Self::unix("/dev/log")
    }

    /// RFC 5424 (default) or RFC 3164.
    #[must_use]
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The facility (default `local7`).
    #[must_use]
    pub fn facility(mut self, facility: Facility) -> Self {
        self.facility = facility;
        self
    }

    /// APP-NAME (cut to 48 printable ASCII characters).
    #[must_use]
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = name.into();
        self
    }

    /// The SD-ID of the structured data element (default `audit@32473`).
    #[must_use]
    pub fn sd_id(mut self, id: impl Into<String>) -> Self {
        self.sd_id = id.into();
        self
    }

    /// Stream framing (ignored for datagrams and RELP; TLS always counts
    /// octets).
    #[must_use]
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Largest datagram sent (UDP/Unix).
    #[must_use]
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = bytes.max(480);
        self
    }

    /// Messages the sink may hold while the server is away.
    #[must_use]
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages.max(1);
        self
    }

    /// Whether a full queue waits (default) or drops and counts. Waiting
    /// means a server outage longer than the queue eventually holds back the
    /// audit pipeline, and so the application: that is what lossless costs.
    #[must_use]
    pub fn queue_mode(mut self, mode: QueueMode) -> Self {
        self.mode = mode;
        self
    }

    /// Reconnect backoff bounds.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// How many recent messages are resent after a TCP or TLS stream is
    /// found dead (RELP resends exactly what the relay did not acknowledge).
    #[must_use]
    pub fn replay(mut self, messages: usize) -> Self {
        self.replay = messages;
        self
    }

    /// Sends each record mapped to a SIEM schema (ECS or OCSF, see
    /// [`crate::record::mapping`]) as the MSG instead of the sealed line.
    /// The structured data is the same; the mapped document names its
    /// record (`audit_id`, `seq`, `hash`), but a store that keeps only it
    /// holds no chain to verify: keep the sealed lines somewhere too (the
    /// file, or a second sink without this).
    #[must_use]
    pub fn message_schema(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// How long a stopping sink keeps trying an unreachable server before
    /// it counts what is left as dropped (default 10 s).
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Starts the sink's thread; the first connection is made there (a
    /// server that is down at start is retried like any outage).
    pub(crate) fn start(
        self,
        counters: Arc<SyslogCounters>,
        host: Option<&str>,
    ) -> Result<(Forwarder, JoinHandle<()>), Error> {
        let header = Header {
            facility: self.facility,
            format: self.format,
            hostname: host.unwrap_or("-").to_owned(),
            app_name: self.app_name.clone(),
            procid: std::process::id().to_string(),
            sd_id: self.sd_id.clone(),
        };
        let (tx, rx) = mpsc::sync_channel::<OwnedLine>(self.capacity);
        let what = format!("syslog sink {:?}", self.target);
        let mode = self.mode;
        let closing = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            cfg: self,
            header,
            counters: counters.clone(),
            conn: None,
            recent: VecDeque::new(),
            conn_since: None,
            closing: closing.clone(),
            pending: VecDeque::new(),
            deadline: None,
            backoff: Duration::ZERO,
            scratch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tracing-audit-syslog".into())
            .spawn(move || sender.run(rx))
            .map_err(|source| Error::Network { what, source })?;
        Ok((
            Forwarder {
                tx: Some(tx),
                mode,
                counters,
                closing,
            },
            thread,
        ))
    }
}

/// The pipeline worker's end of a syslog sink.
#[derive(Debug)]
pub(crate) struct Forwarder {
    tx: Option<SyncSender<OwnedLine>>,
    mode: QueueMode,
    counters: Arc<SyslogCounters>,
    /// Tells the sink's thread that no more lines come, even while the
    /// queue is still full (a closed channel is only seen once empty).
    closing: Arc<AtomicBool>,
}

impl LineSink for Forwarder {
    fn send_line(&mut self, line: &SealedLine<'_>) {
        let Some(tx) = &self.tx else { return };
        let lossy = self.mode == QueueMode::Lossy;
        if offer(tx, OwnedLine::new(line), lossy, || {}) != Offered::Queued {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    fn close(&mut self) {
        self.closing.store(true, SeqCst);
        self.tx = None;
    }
}

impl SyslogSink {
    /// The sink with its shutdown grace no longer than `grace`.
    pub(crate) fn bounded_by(mut self, grace: Duration) -> Self {
        self.shutdown_grace = self.shutdown_grace.min(grace);
        self
    }
}

/// The default [`SyslogSink::relp_window`].
const RELP_WINDOW: usize = 128;

/// What the syslog sinks did, read into [`crate::AuditStats`]. One set is
/// shared by all of a pipeline's syslog sinks.
#[derive(Debug, Default)]
pub(crate) struct SyslogCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) resent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) last_error: Mutex<Option<LastError>>,
}

impl SyslogCounters {
    /// Counts an error and keeps it as the last one.
    fn error(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        LastError::set(&self.last_error, message);
    }
}

/// Default for [`SyslogSink::shutdown_grace`].
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The sink's thread state.
struct Sender {
    cfg: SyslogSink,
    header: Header,
    counters: Arc<SyslogCounters>,
    conn: Option<Conn>,
    /// Messages sent on the current stream, for a resend if it proves dead.
    recent: VecDeque<Vec<u8>>,
    /// When the current connection was opened.
    conn_since: Option<Instant>,
    /// Set by the pipeline when it closes the queue.
    closing: Arc<AtomicBool>,
    /// Framed messages taken from the queue, not yet sent (in order).
    pending: VecDeque<Vec<u8>>,
    /// When the shutdown grace ends (set once closing begins).
    deadline: Option<Instant>,
    /// The next pause before a retry.
    backoff: Duration,
    /// Reused buffer for transport framing.
    scratch: Vec<u8>,
}

/// How long a connection must stay up before it counts as healthy (and the
/// reconnect backoff starts again from its minimum).
const HEALTHY_AFTER: Duration = Duration::from_secs(2);

impl Sender {
    /// The sink's thread: take lines, send them in order, retry with
    /// backoff, and when the pipeline closes, send what is left within the
    /// shutdown grace and count the rest.
    fn run(mut self, rx: Receiver<OwnedLine>) {
        self.backoff = self.cfg.backoff_min;
        while self.fill(&rx) {
            if !self.send_pending(&rx) {
                return; // gave up at the end of the shutdown grace
            }
        }
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }

    /// Starts the shutdown grace (once): a server that is down then gets
    /// this long before what is left is counted as dropped.
    fn start_grace(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.cfg.shutdown_grace);
        }
    }

    /// Takes what the queue holds into `pending` (waiting for the first
    /// one while nothing is pending). Returns `false` when there is
    /// nothing left to do: closing, and nothing pending or queued.
    fn fill(&mut self, rx: &Receiver<OwnedLine>) -> bool {
        if self.closing.load(SeqCst) {
            self.start_grace();
        }
        while self.pending.is_empty() {
            if self.deadline.is_some() {
                // Closing: what is still queued is taken in order.
                match rx.try_recv() {
                    Ok(line) => self.pending.push_back(self.message(&line)),
                    Err(_) => return false,
                }
                break;
            }
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => self.pending.push_back(self.message(&line)),
                Err(RecvTimeoutError::Timeout) => {
                    if self.closing.load(SeqCst) {
                        self.start_grace();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => self.start_grace(),
            }
        }
        // A batch, also while closing: over RELP each batch ends with a wait
        // for the relay's answers, which one message at a time would make a
        // round trip per message.
        self.take_queued(rx, 1024);
        true
    }

    /// Moves queued lines into `pending` (in order) until the queue is
    /// empty or `pending` holds `up_to`; a closed queue starts the grace.
    fn take_queued(&mut self, rx: &Receiver<OwnedLine>, up_to: usize) {
        while self.pending.len() < up_to {
            match rx.try_recv() {
                Ok(line) => self.pending.push_back(self.message(&line)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.start_grace();
                    break;
                }
            }
        }
    }

    /// Sends `pending` in order. Returns `false` if the shutdown grace ran
    /// out with messages unsent (they are counted as dropped).
    fn send_pending(&mut self, rx: &Receiver<OwnedLine>) -> bool {
        loop {
            if !self.send_each(rx) {
                return false;
            }
            // RELP: what was sent counts once the relay acknowledged it.
            let settled = match &mut self.conn {
                Some(c) => c.settle(),
                None => Ok(0),
            };
            match settled {
                Ok(n) => {
                    self.counters.sent.fetch_add(n, Relaxed);
                    return true;
                }
                Err(e) => {
                    if !self.failed(&e, rx) {
                        return false;
                    }
                }
            }
        }
    }

    /// Sends `pending` in order; the part of [`Self::send_pending`] before
    /// the wait for acknowledgements.
    fn send_each(&mut self, rx: &Receiver<OwnedLine>) -> bool {
        while let Some(msg) = self.pending.pop_front() {
            let left = self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let (Some(left), Some(c)) = (left, &self.conn) {
                // A blocked write must not outlive the shutdown grace.
                c.bound_timeouts(left);
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let sent = self.send(&msg, &mut scratch, left.unwrap_or(Duration::MAX));
            self.scratch = scratch;
            match sent {
                Ok(delivered) => self.sent(msg, delivered),
                Err(e) => {
                    self.pending.push_front(msg);
                    if !self.failed(&e, rx) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Counts what is now delivered and keeps a sent message for a resend
    /// if the stream proves dead (TCP/TLS; a RELP session keeps its own
    /// unacknowledged messages).
    fn sent(&mut self, msg: Vec<u8>, delivered: u64) {
        self.counters.sent.fetch_add(delivered, Relaxed);
        // Only a connection that stayed up proves the peer healthy: one
        // that accepts and closes at once must not reset the backoff (it
        // would reconnect every 100 ms forever).
        if self
            .conn_since
            .is_some_and(|t| t.elapsed() >= HEALTHY_AFTER)
        {
            self.backoff = self.cfg.backoff_min;
        }
        let guessed = !self.cfg.target.is_datagram() && !self.cfg.target.is_acknowledged();
        if guessed && self.cfg.replay > 0 {
            if self.recent.len() >= self.cfg.replay {
                self.recent.pop_front();
            }
            self.recent.push_back(msg);
        }
    }

    /// After a failed send: drop the connection (what went into it lately
    /// goes back in front), then wait out the backoff while still taking
    /// the queue. Returns `false` when the shutdown grace has run out.
    fn failed(&mut self, e: &std::io::Error, rx: &Receiver<OwnedLine>) -> bool {
        self.counters
            .error(format!("syslog {:?}: {e}", self.cfg.target));
        if let Some(c) = self.conn.take() {
            // The stream died: over RELP what the relay did not acknowledge,
            // over TCP/TLS what went into it lately, may not have arrived.
            let mut back = c.abandon();
            if !self.cfg.target.is_acknowledged() {
                back = self.recent.drain(..).collect();
            }
            self.counters.resent.fetch_add(back.len() as u64, Relaxed);
            for m in back.into_iter().rev() {
                self.pending.push_front(m);
            }
        }
        if self.closing.load(SeqCst) {
            self.start_grace();
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            // Everything not sent: the pending messages and what is still
            // queued behind them.
            let n = (self.pending.len() + rx.try_iter().count()) as u64;
            self.counters.dropped.fetch_add(n, Relaxed);
            eprintln!(
                "tracing-audit: syslog {:?} unreachable at shutdown; {n} messages not sent",
                self.cfg.target
            );
            return false;
        }
        // While retrying, keep taking the queue (in order) so a closed one
        // starts the shutdown grace.
        self.take_queued(rx, self.cfg.capacity);
        let mut pause = jitter(self.backoff);
        if let Some(d) = self.deadline {
            pause = pause.min(d.saturating_duration_since(Instant::now()));
        }
        self.pause(pause, self.deadline.is_none());
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        true
    }

    /// Sleeps `d`; when `until_closing`, wakes early once the pipeline
    /// closes the queue (a long backoff must not outlast the shutdown grace).
    fn pause(&self, d: Duration, until_closing: bool) {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || (until_closing && self.closing.load(SeqCst)) {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    fn message(&self, line: &OwnedLine) -> Vec<u8> {
        let line = line.as_line();
        let keys = SdFields::from_line(&line);
        let mapped = self.cfg.schema.and_then(|schema| {
            let record = AuditRecord::parse(line.bytes).ok()?;
            serde_json::to_vec(&record.to_schema(schema)).ok()
        });
        let line = mapped.as_deref().unwrap_or(line.bytes);
        let max = self
            .cfg
            .target
            .is_datagram()
            .then_some(self.cfg.max_datagram);
        let (msg, cut) = self.header.build(line, Some(&keys), max);
        if cut {
            self.counters.truncated.fetch_add(1, Relaxed);
        }
        msg
    }

    fn send(&mut self, msg: &[u8], scratch: &mut Vec<u8>, limit: Duration) -> std::io::Result<u64> {
        // A RELP session learns of a dead relay from its answers; a plain
        // stream is checked before each message goes into it.
        let check = !self.cfg.target.is_acknowledged();
        if check && self.conn.as_ref().is_some_and(Conn::peer_closed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the server closed the connection",
            ));
        }
        if self.conn.is_none() {
            let c = Conn::open(&self.cfg.target, limit)?;
            if self.counters.sent.load(Relaxed) > 0 || self.counters.errors.load(Relaxed) > 0 {
                self.counters.reconnects.fetch_add(1, Relaxed);
            }
            self.conn = Some(c);
            self.conn_since = Some(Instant::now());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        conn.send(msg, self.cfg.framing, scratch)
    }
}

/// `d` ± 25 %.
fn jitter(d: Duration) -> Duration {
    let nanos = d.as_nanos() as u64;
    let spread = nanos / 4;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos() as u64)
        .unwrap_or(0);
    let offset = if spread == 0 { 0 } else { seed % (2 * spread) };
    Duration::from_nanos(nanos - spread + offset)
}
