//! The pipeline worker: the one thread that orders records.
//!
//! It takes record bodies from the queue in batches, gives each its `seq`
//! and hash ([`Chain::seal`]), writes the batch to the file in one call,
//! hands each sealed line to the forwarders (syslog), and syncs:
//!
//! - at once when the batch holds a durable record or a flush — one
//!   `fdatasync` answers every waiter of the batch (group commit);
//! - otherwise at most `sync_interval` after the first unsynced write.
//!
//! While records keep coming, the worker polls the queue (a short
//! `park_timeout`) instead of blocking on it, so an ordinary `send` from the
//! application never has to wake it with a system call; callers that wait
//! (durable records, flushes, shutdown) unpark it. After 5 ms without work
//! it blocks on the queue again.
//!
//! It also writes the trail's own records: `audit_started` (with how the
//! chain was resumed and any torn line it found), `records_lost` (exact
//! count of lossy drops) and `audit_stopped`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing_core::Level;

use crate::capture::Capture;
use crate::chain::Chain;
use crate::encode;
use crate::file::{FileWriter, Resume};
use crate::pipeline::{Counters, Msg, Pending};
use crate::record::{encode_body, Source, Statics};

/// Largest batch written in one call.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// After the last message, how long the worker polls before it blocks.
const POLL_FOR: Duration = Duration::from_millis(5);
/// How often it looks while polling.
const POLL_EVERY: Duration = Duration::from_micros(200);

/// Somewhere sealed lines go besides the file (the syslog sinks).
pub(crate) trait LineSink: Send + std::fmt::Debug {
    /// Takes one sealed line (with its `\n`).
    fn send_line(&mut self, line: &[u8]);
    /// Called once when the worker stops.
    fn close(&mut self);
}

/// Everything the worker owns.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) rx: Receiver<Msg>,
    pub(crate) chain: Chain,
    pub(crate) file: Option<FileWriter>,
    pub(crate) forwards: Vec<Box<dyn LineSink>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) sync_interval: Duration,
    pub(crate) statics: Statics,
    pub(crate) limit: usize,
    pub(crate) resume: Resume,
    pub(crate) pid: u32,
}

struct State {
    batch: Vec<u8>,
    /// End offsets of the lines in `batch` (for forwarding).
    ends: Vec<usize>,
    records_in_batch: u64,
    waiters: Vec<SyncSender<bool>>,
    unsynced_since: Option<Instant>,
    lost_reported: u64,
    capture: Capture,
    body: Vec<u8>,
    /// An application record has arrived (so a subscriber is installed).
    saw_app: bool,
    level_checked: bool,
}

impl Worker {
    /// Runs until `Shutdown` or until every sender is gone.
    pub(crate) fn run(mut self) {
        let mut st = State {
            batch: Vec::with_capacity(64 * 1024),
            ends: Vec::new(),
            records_in_batch: 0,
            waiters: Vec::new(),
            unsynced_since: None,
            lost_reported: 0,
            capture: Capture::new(self.limit),
            body: Vec::new(),
            saw_app: false,
            level_checked: false,
        };
        self.started(&mut st);
        let mut want_sync = true;
        let mut stop = false;
        let mut last_busy = Instant::now();
        loop {
            // Only take more when the last batch went out (a failing disk
            // stops intake, so the queue applies backpressure).
            if !stop && st.batch.is_empty() {
                let timeout = match st.unsynced_since {
                    Some(t) => self.sync_interval.saturating_sub(t.elapsed()),
                    None => self.sync_interval,
                };
                let mut n = self.drain(&mut st, &mut want_sync, &mut stop);
                if n == 0 && !stop {
                    if last_busy.elapsed() < POLL_FOR {
                        // Recently busy: poll, so senders never pay for a wake-up.
                        std::thread::park_timeout(POLL_EVERY.min(timeout));
                    } else {
                        match self.rx.recv_timeout(timeout) {
                            Ok(m) => {
                                n += 1;
                                self.take(&mut st, m, &mut want_sync, &mut stop)
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => stop = true,
                        }
                    }
                    n += self.drain(&mut st, &mut want_sync, &mut stop);
                }
                if n > 0 {
                    last_busy = Instant::now();
                }
            } else if !stop {
                std::thread::sleep(Duration::from_millis(50));
            }
            if stop {
                // Whatever is still queued was sent before the shutdown.
                while let Ok(m) = self.rx.try_recv() {
                    let mut ignore = false;
                    self.take(&mut st, m, &mut want_sync, &mut ignore);
                }
            }
            self.report_lost(&mut st);
            self.check_max_level(&mut st);
            if stop {
                self.stopped(&mut st);
                want_sync = true;
            }
            let written = self.write_batch(&mut st);
            let due = st
                .unsynced_since
                .is_some_and(|t| t.elapsed() >= self.sync_interval);
            if written && (want_sync || due || stop) {
                let ok = self.sync(&mut st);
                for w in st.waiters.drain(..) {
                    let _ = w.try_send(ok);
                }
                want_sync = false;
            }
            if stop && (written || self.give_up(&mut st)) {
                break;
            }
        }
        for f in &mut self.forwards {
            f.close();
        }
    }

    /// Takes what is queued, without blocking; returns how many messages.
    fn drain(&mut self, st: &mut State, want_sync: &mut bool, stop: &mut bool) -> usize {
        let mut n = 0;
        while !*stop && st.batch.len() < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(m) => {
                    n += 1;
                    self.take(st, m, want_sync, stop);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => *stop = true,
            }
        }
        n
    }

    fn take(&mut self, st: &mut State, m: Msg, want_sync: &mut bool, stop: &mut bool) {
        match m {
            Msg::Record(p) => {
                st.saw_app = true;
                // A durable record is synced with this batch (group commit).
                *want_sync |= p.done.is_some();
                self.seal(st, p);
            }
            Msg::Flush(w) => {
                st.waiters.push(w);
                *want_sync = true;
            }
            Msg::Shutdown => *stop = true,
        }
    }

    fn seal(&mut self, st: &mut State, p: Pending) {
        self.chain.seal(&mut st.batch, &p.id, &p.body);
        st.ends.push(st.batch.len());
        st.records_in_batch += 1;
        if let Some(w) = p.done {
            st.waiters.push(w);
        }
    }

    /// Writes a record of the crate's own into the batch.
    fn own_record(
        &mut self,
        st: &mut State,
        event: &str,
        level: &Level,
        message: &str,
        details: impl FnOnce(&mut Capture),
    ) {
        st.capture.reset(self.limit);
        st.capture.set_event_type(event);
        st.capture.set_message(message);
        st.capture
            .set_context_if_absent(crate::fields::ContextField::Actor, "tracing-audit");
        details(&mut st.capture);
        st.body.clear();
        let source = Source {
            target: "tracing_audit",
            level,
            spans: &[],
        };
        let now = SystemTime::now();
        encode_body(
            &mut st.body,
            &mut st.capture,
            now,
            &self.statics,
            source,
            self.limit,
        );
        let body = std::mem::take(&mut st.body);
        self.seal(
            st,
            Pending {
                id: crate::layer::uuid_at(now),
                body,
                done: None,
            },
        );
        st.body = Vec::new();
    }

    fn started(&mut self, st: &mut State) {
        let algorithm = self.chain.hasher().algorithm();
        let resumed = self.resume.last.as_ref().map(|(s, _)| *s);
        let torn = std::mem::take(&mut self.resume.torn);
        let pid = self.pid;
        let msg = match resumed {
            Some(s) => format!("audit trail resumed after seq {s}"),
            None => "audit trail started".to_owned(),
        };
        let level = if torn.is_empty() {
            Level::INFO
        } else {
            Level::WARN
        };
        self.own_record(st, "audit_started", &level, &msg, |c| {
            c.detail_str("chain", algorithm);
            c.detail_u64("pid", pid as u64);
            c.detail_str("crate_version", env!("CARGO_PKG_VERSION"));
            match resumed {
                Some(s) => c.detail_u64("resumed_after_seq", s),
                None => c.detail_raw("resumed_after_seq", b"null"),
            }
            if !torn.is_empty() {
                let mut json = vec![b'['];
                for (i, (file, offset, len)) in torn.iter().enumerate() {
                    if i > 0 {
                        json.push(b',');
                    }
                    json.extend_from_slice(b"{\"file\":");
                    encode::write_plain_str(&mut json, file);
                    json.extend_from_slice(b",\"offset\":");
                    encode::write_u64(&mut json, *offset);
                    json.extend_from_slice(b",\"bytes\":");
                    encode::write_u64(&mut json, *len);
                    json.push(b'}');
                }
                json.push(b']');
                c.detail_raw("torn_tail", &json);
            }
        });
    }

    fn report_lost(&mut self, st: &mut State) {
        let dropped = self.counters.records_dropped.load(Relaxed);
        if dropped > st.lost_reported {
            let n = dropped - st.lost_reported;
            st.lost_reported = dropped;
            self.own_record(
                st,
                "records_lost",
                &Level::ERROR,
                "audit records were dropped: the queue was full",
                |c| {
                    c.detail_u64("count", n);
                    c.detail_u64("total", dropped);
                },
            );
        }
    }

    /// A global filter (an `EnvFilter` added with `.with(..)`, say) caps
    /// the level of every layer, audit included: events below it never reach
    /// this crate. Say so once, in the trail and on stderr.
    fn check_max_level(&mut self, st: &mut State) {
        use tracing_core::LevelFilter;
        if st.level_checked || !st.saw_app {
            return;
        }
        st.level_checked = true;
        let max = LevelFilter::current();
        if max == LevelFilter::TRACE {
            return;
        }
        let msg = format!(
            "a global filter caps tracing at {max}: audit events less severe than that are discarded before they reach the audit layer; give that filter to the fmt layer with .with_filter(..) instead"
        );
        eprintln!("tracing-audit: {msg}");
        let shown = max.to_string();
        self.own_record(st, "audit_config_warning", &Level::WARN, &msg, |c| {
            c.detail_str("max_level", &shown);
        });
    }

    fn stopped(&mut self, st: &mut State) {
        let written = self.counters.records_written.load(Relaxed) + st.records_in_batch + 1;
        let dropped = self.counters.records_dropped.load(Relaxed);
        let last = self.chain.next_seq();
        self.own_record(
            st,
            "audit_stopped",
            &Level::INFO,
            "audit trail stopped",
            |c| {
                c.detail_u64("records_written", written);
                c.detail_u64("records_dropped", dropped);
                c.detail_u64("last_seq", last);
            },
        );
    }

    /// Writes the batch; on failure keeps the unwritten part for a retry.
    fn write_batch(&mut self, st: &mut State) -> bool {
        if st.batch.is_empty() {
            return true;
        }
        if let Some(file) = &mut self.file {
            self.counters.writes.fetch_add(1, Relaxed);
            if let Err((done, e)) = file.write(&st.batch) {
                self.counters.error(
                    &self.counters.write_errors,
                    format!("audit file write failed: {e}"),
                );
                // Drop the part that did reach the file; keep the rest.
                self.forward(&st.batch[..done], &st.ends);
                st.batch.drain(..done);
                let mut removed = 0;
                st.ends.retain(|&e| {
                    let keep = e > done;
                    removed += u64::from(!keep);
                    keep
                });
                for e in &mut st.ends {
                    *e -= done;
                }
                self.counters.records_written.fetch_add(removed, Relaxed);
                st.records_in_batch -= removed;
                self.counters.bytes_written.fetch_add(done as u64, Relaxed);
                st.unsynced_since.get_or_insert_with(Instant::now);
                return false;
            }
        }
        if let Some(w) = self.file.as_mut().and_then(FileWriter::take_warning) {
            self.counters.error(&self.counters.write_errors, w);
        }
        let batch = std::mem::take(&mut st.batch);
        self.forward(&batch, &st.ends);
        st.batch = batch;
        self.counters
            .records_written
            .fetch_add(st.records_in_batch, Relaxed);
        self.counters
            .bytes_written
            .fetch_add(st.batch.len() as u64, Relaxed);
        st.unsynced_since.get_or_insert_with(Instant::now);
        st.batch.clear();
        st.ends.clear();
        st.records_in_batch = 0;
        true
    }

    /// Hands complete lines of `bytes` (those ending within it) to the forwarders.
    fn forward(&mut self, bytes: &[u8], ends: &[usize]) {
        if self.forwards.is_empty() {
            return;
        }
        let mut start = 0;
        for &end in ends {
            if end > bytes.len() {
                break;
            }
            for f in &mut self.forwards {
                f.send_line(&bytes[start..end]);
            }
            start = end;
        }
    }

    fn sync(&mut self, st: &mut State) -> bool {
        st.unsynced_since = None;
        let Some(file) = &mut self.file else {
            return true;
        };
        match file.sync() {
            Ok(()) => {
                self.counters.syncs.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                self.counters.error(
                    &self.counters.write_errors,
                    format!("audit file sync failed: {e}"),
                );
                false
            }
        }
    }

    /// On shutdown with a failing disk: try a few times, then count the
    /// unwritten records as dropped, say so on stderr, and stop.
    fn give_up(&mut self, st: &mut State) -> bool {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            if self.write_batch(st) {
                return true;
            }
        }
        let lost = st.records_in_batch;
        self.counters.records_dropped.fetch_add(lost, Relaxed);
        eprintln!("tracing-audit: {lost} audit records could not be written at shutdown");
        for w in st.waiters.drain(..) {
            let _ = w.try_send(false);
        }
        true
    }
}
