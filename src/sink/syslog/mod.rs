//! Forwarding the audit trail to a syslog server (rsyslog, syslog-ng, a SIEM
//! relay): configuration ([`SyslogSink`]) and the sink's own worker thread.
//!
//! The sink's thread frames and sends every sealed line (hash included, so
//! the SIEM holds an off-host copy of the chain), taken from one of two
//! inputs:
//!
//! - **The trail** (with a file sink, the default): the file is the
//!   write-ahead log. The worker only notes the last `seq` it wrote and
//!   wakes the thread, which reads the lines back from the files
//!   ([`crate::sink::file::follow`]) after its durable [`cursor`]: an
//!   outage never blocks the worker nor grows memory past a batch, and a
//!   restart resumes at the cursor. What the relay has not taken at
//!   shutdown stays in the trail.
//! - **A bounded queue** (no file sink, or `from_trail(false)`): the worker
//!   hands each line over; a full queue waits (lossless) or drops and
//!   counts (lossy), and what is left at the end of the shutdown grace is
//!   dropped and counted.
//!
//! The application's threads never touch the network. On a send error or a closed peer the thread reconnects with
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
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use frame::{severity, Facility, Format};
pub use transport::Framing;

use crate::error::Error;
use crate::queue::QueueMode;
use crate::record::mapping::Schema;
use crate::record::AuditRecord;
use crate::sink::forward::{
    self, jitter, ForwardCounters, Forwarder, Input, Intake, Taken, TrailSource,
};
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
/// | input with a file sink | the trail, after a durable cursor ([`from_trail`](Self::from_trail)) |
/// | queue without a file sink | 65 536 messages, [`QueueMode::Lossless`] |
/// | reconnect backoff | 100 ms doubling to 30 s, ±25 % jitter |
/// | resent after a dead stream | RELP: exactly the unacknowledged; TCP/TLS from the trail: what both kernels may buffer (Linux `tcp_wmem` + `tcp_rmem` maxima); TCP/TLS from the queue: last 256 messages |
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
    from_trail: bool,
    cursor_name: Option<String>,
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
            from_trail: true,
            cursor_name: None,
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

    /// Messages the queue may hold while the server is away (the queue in
    /// memory: no file sink, or [`from_trail(false)`](Self::from_trail)).
    #[must_use]
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages.max(1);
        self
    }

    /// Whether a full queue waits (default) or drops and counts. Waiting
    /// means a server outage longer than the queue eventually holds back the
    /// audit pipeline, and so the application: that is what lossless costs.
    /// A sink reading the trail has no queue: this does not apply.
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

    /// How many recent messages a sink with a queue in memory resends after
    /// a TCP or TLS stream is found dead (RELP resends exactly what the
    /// relay did not acknowledge; a sink reading the trail reads again
    /// everything both kernels' buffers may have held, see the README).
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

    /// With a file sink (default `true`): read the records to send from the
    /// trail files, the write-ahead log, instead of a queue in memory. The
    /// sink keeps a durable cursor in the audit directory (the last `seq`
    /// the relay acknowledged or took), so a relay outage of any length
    /// never blocks the application and never holds more than a batch in
    /// memory, and a restart resumes at the cursor. `capacity` and
    /// `queue_mode` then do not apply. Without a file sink the queue in
    /// memory is used whatever this says.
    #[must_use]
    pub fn from_trail(mut self, yes: bool) -> Self {
        self.from_trail = yes;
        self
    }

    /// The name of this sink's cursor file in the audit directory,
    /// `.forward-<name>.cursor` (default: the transport and address, e.g.
    /// `relp-127.0.0.1-2514`). Keep it when the relay's address changes
    /// but it is the same store; two sinks need two names.
    #[must_use]
    pub fn cursor_name(mut self, name: impl Into<String>) -> Self {
        self.cursor_name = Some(name.into());
        self
    }

    /// The name of the cursor this sink keeps when it reads `trail`, if it
    /// does (two sinks of a pipeline must not share one).
    pub(crate) fn cursor_in(&self, trail: Option<&TrailSource>) -> Option<String> {
        (trail.is_some() && self.from_trail).then(|| self.cursor_file_name())
    }

    /// The cursor's name, made safe for a file name.
    fn cursor_file_name(&self) -> String {
        let raw = self
            .cursor_name
            .clone()
            .unwrap_or_else(|| format!("{:?}", self.target).replacen("://", "-", 1));
        forward::file_safe(&raw)
    }

    /// How long a stopping sink keeps trying an unreachable server before
    /// it counts what is left as dropped (default 10 s). A sink reading
    /// the trail drops nothing: what it could not send stays in the trail
    /// (`syslog_behind`) for the next start.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Starts the sink's thread; the first connection is made there (a
    /// server that is down at start is retried like any outage). With
    /// `trail` (a file sink) and [`from_trail`](Self::from_trail), the
    /// cursor is loaded here, before the writer applies retention.
    pub(crate) fn start(
        self,
        counters: Arc<ForwardCounters>,
        host: Option<&str>,
        trail: Option<&TrailSource>,
    ) -> Result<(Forwarder, JoinHandle<()>), Error> {
        let header = Header {
            facility: self.facility,
            format: self.format,
            hostname: host.unwrap_or("-").to_owned(),
            app_name: self.app_name.clone(),
            procid: std::process::id().to_string(),
            sd_id: self.sd_id.clone(),
        };
        let what = format!("syslog sink {:?}", self.target);
        let mode = self.mode;
        let closing = Arc::new(AtomicBool::new(false));
        let name = self.cursor_in(trail);
        let (input, tx, progress) =
            forward::input(trail, name.as_deref(), self.capacity, &counters);
        let grace = self.shutdown_grace;
        let sender = Sender {
            cfg: self,
            header,
            counters: counters.clone(),
            intake: Intake::new(input, closing.clone(), grace),
            conn: None,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, Relaxed)
            },
            recent: VecDeque::new(),
            inflight: VecDeque::new(),
            conn_since: None,
            pending: VecDeque::new(),
            backoff: Duration::ZERO,
            scratch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tracing-audit-syslog".into())
            .spawn(move || sender.run())
            .map_err(|source| Error::Network { what, source })?;
        let thread_handle = thread.thread().clone();
        Ok((
            Forwarder::new(tx, mode, counters, closing, progress, thread_handle),
            thread,
        ))
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

/// Default for [`SyslogSink::shutdown_grace`].
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A framed message and the record's `seq`.
struct Message {
    seq: u64,
    bytes: Vec<u8>,
}

/// The sink's thread state.
struct Sender {
    cfg: SyslogSink,
    header: Header,
    counters: Arc<ForwardCounters>,
    intake: Intake,
    conn: Option<Conn>,
    /// This sink's key in `counters.aborts`.
    id: u64,
    /// Messages sent on the current stream, for a resend if it proves dead.
    recent: VecDeque<Message>,
    /// The `seq` of each message sent and not yet acknowledged (RELP).
    inflight: VecDeque<u64>,
    /// When the current connection was opened.
    conn_since: Option<Instant>,
    /// Framed messages taken from the input, not yet sent (in order).
    pending: VecDeque<Message>,
    /// The next pause before a retry.
    backoff: Duration,
    /// Reused buffer for transport framing.
    scratch: Vec<u8>,
}

/// How long a connection must stay up before it counts as healthy (and the
/// reconnect backoff starts again from its minimum).
const HEALTHY_AFTER: Duration = Duration::from_secs(2);

/// Most messages taken from the input at once; with the RELP window and
/// the TCP resend buffer, the bound on what a sink reading the trail holds
/// in memory, whatever the outage.
const BATCH: usize = 1024;

impl Sender {
    /// The sink's thread: take lines, send them in order, retry with
    /// backoff, and when the pipeline closes, send what is left within the
    /// shutdown grace and count the rest.
    fn run(mut self) {
        self.backoff = self.cfg.backoff_min;
        while self.fill() {
            if !self.send_pending() {
                break; // gave up at the end of the shutdown grace
            }
        }
        self.counters.aborts.set(self.id, None);
        if let Some(c) = self.conn.take() {
            c.close();
        }
        self.stop_trail();
    }

    /// Takes what the input holds into `pending`; `false` when there is
    /// nothing left to do.
    fn fill(&mut self) -> bool {
        let (cfg, header, counters) = (&self.cfg, &self.header, &self.counters);
        self.intake.fill(&mut self.pending, BATCH, counters, |t| {
            message(cfg, header, counters, t)
        })
    }

    /// Sends `pending` in order. Returns `false` if the shutdown grace ran
    /// out with messages unsent (they are counted as dropped).
    fn send_pending(&mut self) -> bool {
        loop {
            if !self.send_each() {
                return false;
            }
            // RELP: what was sent counts once the relay acknowledged it.
            let settled = match &mut self.conn {
                Some(c) => c.settle(),
                None => Ok(0),
            };
            match settled {
                Ok(n) => {
                    self.acknowledged(n);
                    self.write_cursor();
                    return true;
                }
                Err(e) => {
                    if !self.failed(&e) {
                        return false;
                    }
                }
            }
        }
    }

    /// Sends `pending` in order; the part of [`Self::send_pending`] before
    /// the wait for acknowledgements.
    fn send_each(&mut self) -> bool {
        while let Some(msg) = self.pending.pop_front() {
            let left = self
                .intake
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let (Some(left), Some(c)) = (left, &self.conn) {
                // A blocked write must not outlive the shutdown grace.
                c.bound_timeouts(left);
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            self.before_send(msg.seq);
            let sent = self.send(&msg.bytes, &mut scratch, left.unwrap_or(Duration::MAX));
            self.scratch = scratch;
            match sent {
                Ok(delivered) => self.sent(msg, delivered),
                Err(e) => {
                    self.pending.push_front(msg);
                    if !self.failed(&e) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Reading the trail, before `seq` goes out: see
    /// [`forward::TrailInput::before_send`].
    fn before_send(&mut self, seq: u64) {
        let have = self.pending.back().map_or(seq, |m| m.seq);
        if let Input::Trail(t) = &mut self.intake.input {
            t.before_send(seq, have, &self.counters);
        }
    }

    /// Counts what is now delivered and keeps a sent message for a resend
    /// if the stream proves dead (TCP/TLS; a RELP session keeps its own
    /// unacknowledged messages).
    fn sent(&mut self, msg: Message, delivered: u64) {
        // Only a connection that stayed up proves the peer healthy: one
        // that accepts and closes at once must not reset the backoff (it
        // would reconnect every 100 ms forever).
        if self
            .conn_since
            .is_some_and(|t| t.elapsed() >= HEALTHY_AFTER)
        {
            self.backoff = self.cfg.backoff_min;
        }
        if self.cfg.target.is_acknowledged() {
            self.inflight.push_back(msg.seq);
            self.acknowledged(delivered);
            return;
        }
        self.counters.sent.fetch_add(delivered, Relaxed);
        self.delivered_up_to(msg.seq);
        if self.cfg.target.is_datagram() {
            return;
        }
        if let Input::Trail(t) = &mut self.intake.input {
            t.wrote(msg.seq, msg.bytes.len());
        } else if self.cfg.replay > 0 {
            if self.recent.len() >= self.cfg.replay {
                self.recent.pop_front();
            }
            self.recent.push_back(msg);
        }
    }

    /// The relay acknowledged the oldest `n` messages in flight; reading
    /// the trail, the cursor is written at once, so a killed process
    /// resends only what was unacknowledged.
    fn acknowledged(&mut self, n: u64) {
        self.counters.sent.fetch_add(n, Relaxed);
        let mut last = None;
        for _ in 0..n {
            last = self.inflight.pop_front().or(last);
        }
        if let Some(seq) = last {
            self.delivered_up_to(seq);
            self.write_cursor();
        }
    }

    /// Reading the trail: the cursor moves to `seq`.
    fn delivered_up_to(&mut self, seq: u64) {
        if let Input::Trail(t) = &mut self.intake.input {
            t.delivered_up_to(seq);
        }
    }

    /// Reading the trail, after a batch the relay settled or an
    /// acknowledgement: the cursor is written (synced at most once a
    /// second).
    fn write_cursor(&mut self) {
        if let Input::Trail(t) = &mut self.intake.input {
            t.write_cursor(&self.counters);
        }
    }

    /// After the thread's loop: a sink reading the trail syncs its cursor
    /// and says what is left for the next start.
    fn stop_trail(&mut self) {
        let what = format!("syslog {:?}", self.cfg.target);
        if let Input::Trail(t) = &mut self.intake.input {
            t.stop(&self.counters, &what);
        }
    }

    /// After a failed send: drop the connection (what went into it lately
    /// goes back in front), then wait out the backoff while still taking
    /// the queue. Returns `false` when the shutdown grace has run out.
    fn failed(&mut self, e: &std::io::Error) -> bool {
        self.counters
            .error(format!("syslog {:?}: {e}", self.cfg.target));
        self.counters.aborts.set(self.id, None);
        // Answers read before the stream broke are acknowledgements: count
        // them (and move the cursor) first, so what is left in flight is
        // exactly what the session hands back.
        let answered = self.conn.as_mut().map_or(0, Conn::acknowledged);
        if answered > 0 {
            self.acknowledged(answered);
        }
        if let Some(c) = self.conn.take() {
            // The stream died: over RELP what the relay did not acknowledge,
            // over TCP/TLS what went into it lately, may not have arrived.
            let back: Vec<Message> = if self.cfg.target.is_acknowledged() {
                let seqs = std::mem::take(&mut self.inflight);
                let unacked = c.abandon();
                debug_assert_eq!(seqs.len(), unacked.len(), "in flight");
                seqs.into_iter()
                    .zip(unacked)
                    .map(|(seq, bytes)| Message { seq, bytes })
                    .collect()
            } else if let Input::Trail(t) = &mut self.intake.input {
                // From the trail: everything the kernels may have held is
                // read and sent again, not only the last few messages.
                c.abandon();
                self.pending.clear();
                let n = t.rewind();
                self.counters.resent.fetch_add(n, Relaxed);
                Vec::new()
            } else {
                c.abandon();
                self.recent.drain(..).collect()
            };
            self.counters.resent.fetch_add(back.len() as u64, Relaxed);
            for m in back.into_iter().rev() {
                self.pending.push_front(m);
            }
        }
        self.intake.closing();
        if self.intake.expired() || self.counters.aborts.fired() {
            self.give_up();
            return false;
        }
        // While retrying, keep taking the queue (in order) so a closed one
        // starts the shutdown grace. The trail stays where it is: it is
        // read again when the relay is back.
        if matches!(self.intake.input, Input::Queue(_)) {
            let (cfg, header, counters) = (&self.cfg, &self.header, &self.counters);
            self.intake
                .take_more(&mut self.pending, cfg.capacity, counters, |t| {
                    message(cfg, header, counters, t)
                });
        }
        let mut pause = jitter(self.backoff);
        if let Some(d) = self.intake.deadline {
            pause = pause.min(d.saturating_duration_since(Instant::now()));
        }
        self.intake.pause(pause);
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        true
    }

    /// The shutdown grace ran out with the relay unreachable. From a queue,
    /// everything not sent is dropped and counted; from the trail nothing
    /// is: it stays there for the next start.
    fn give_up(&mut self) {
        let Input::Queue(rx) = &self.intake.input else {
            return;
        };
        let n = (self.pending.len() + rx.try_iter().count()) as u64;
        self.counters.dropped.fetch_add(n, Relaxed);
        eprintln!(
            "tracing-audit: syslog {:?} unreachable at shutdown; {n} messages not sent",
            self.cfg.target
        );
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
            self.counters.aborts.set(self.id, c.aborter());
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

/// Frames a record taken from the input; `None` for a trail line that
/// is not a record of the schema after all (skipped, never sent as one).
fn message(
    cfg: &SyslogSink,
    header: &Header,
    counters: &ForwardCounters,
    taken: Taken,
) -> Option<Message> {
    let to_schema = |r: &AuditRecord| {
        cfg.schema
            .and_then(|schema| serde_json::to_vec(&r.to_schema(schema)).ok())
    };
    match taken {
        Taken::Line(line) => {
            let line = line.as_line();
            let mapped = cfg
                .schema
                .and_then(|_| AuditRecord::parse(line.bytes).ok())
                .and_then(|r| to_schema(&r));
            let keys = SdFields::from_line(&line);
            Some(frame(
                cfg, header, counters, line.seq, line.bytes, &keys, mapped,
            ))
        }
        Taken::Trail(seq, bytes) => match AuditRecord::parse(&bytes) {
            Ok(r) => Some(frame(
                cfg,
                header,
                counters,
                seq,
                &bytes,
                &SdFields::from_record(&r),
                to_schema(&r),
            )),
            Err(e) => {
                counters.error(format!(
                    "trail line with seq {seq} is not a record ({e}); not forwarded"
                ));
                None
            }
        },
    }
}

/// The syslog message for a sealed line (or its `mapped` document).
#[allow(clippy::too_many_arguments)]
fn frame(
    cfg: &SyslogSink,
    header: &Header,
    counters: &ForwardCounters,
    seq: u64,
    line: &[u8],
    keys: &SdFields<'_>,
    mapped: Option<Vec<u8>>,
) -> Message {
    let line = mapped.as_deref().unwrap_or(line);
    let max = cfg.target.is_datagram().then_some(cfg.max_datagram);
    let (bytes, cut) = header.build(line, Some(keys), max);
    if cut {
        counters.truncated.fetch_add(1, Relaxed);
    }
    Message { seq, bytes }
}
