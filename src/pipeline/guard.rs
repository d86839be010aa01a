//! The guard that owns the pipeline's threads, the cloneable handle, and
//! the counters they report.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pipeline::{self, Counters, Msg, Waker};
use crate::queue::ring::Sender;
use crate::sink::forward::ForwardCounters;
use crate::sink::LastError;

/// A snapshot of the pipeline's counters.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// let (_audit, guard) = tracing_audit::AuditLayer::builder()
///     .file(dir)
///     .build::<tracing_subscriber::Registry>()?;
/// let stats = guard.stats();
/// assert!(!stats.storage_failing);
/// drop(guard);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditStats {
    /// Records written to the trail (including the crate's own records).
    pub records_written: u64,
    /// Of the records written, those whose line the emitting thread began
    /// hashing (SHA-256 of everything before `seq`) because the pipeline
    /// worker was behind; the worker hashed the others whole. The trail's
    /// bytes are the same either way: this shows where the work went.
    pub records_prehashed: u64,
    /// Records lost, all causes: the sum of the `dropped_*` counts.
    pub records_dropped: u64,
    /// Dropped because the queue was full (lossy mode only).
    pub dropped_queue_full: u64,
    /// Refused because they were emitted after shutdown began.
    pub dropped_after_shutdown: u64,
    /// Still unwritten when the shutdown grace ran out.
    pub dropped_unwritten: u64,
    /// Records dropped because writing failed, with [`OnError::Drop`](crate::file::OnError::Drop)
    /// (never a durable record; a `records_lost` record says how many once
    /// writing works again).
    pub dropped_write_error: u64,
    /// Lost to a panic while recording the event (a field's `Debug`, say).
    pub dropped_panic: u64,
    /// Emitted in a child process forked after the pipeline was built.
    pub dropped_forked: u64,
    /// Failed writes or syncs (each retried; see `last_error`).
    pub write_errors: u64,
    /// Failed `fdatasync` calls (each answered by a rewrite of what it
    /// should have covered, counted also when the rewrite succeeded), and
    /// syncs that failed otherwise; see the file writer's rules in the
    /// README's guarantees.
    pub sync_errors: u64,
    /// Free space on the audit file system is below the
    /// [`space_left`](crate::FileSink::space_left) watermark.
    pub space_low: bool,
    /// Whether the storage is failing now: a write or sync failed and none
    /// has succeeded since. Durable callers wait while this is `true`.
    pub storage_failing: bool,
    /// Bytes written to the file.
    pub bytes_written: u64,
    /// Write calls to the file (records per write shows the batching).
    pub writes: u64,
    /// `fdatasync` calls made.
    pub syncs: u64,
    /// Panics caught inside a layer callback (e.g. from a field's `Debug`).
    pub callback_errors: u64,
    /// Syslog messages delivered: acknowledged by the relay (RELP), or
    /// for the other transports written (UDP and Unix datagrams sent,
    /// messages written into a TCP/TLS connection). Plain TCP and TLS
    /// cannot confirm that the relay read them: a connection that then dies
    /// may have lost what sat in the kernel's buffers (the last messages
    /// are resent after a dead stream; see the README's syslog section).
    pub syslog_sent: u64,
    /// Messages sent again after a connection died: over RELP those the
    /// relay had not acknowledged, over TCP/TLS the last ones written. Each
    /// may arrive twice (a duplicate has the same `seq` and `id`).
    pub syslog_resent: u64,
    /// Messages a syslog sink dropped (lossy mode, or unsendable). A sink
    /// reading the trail ([`SyslogSink::from_trail`](crate::SyslogSink::from_trail))
    /// drops nothing: what it has not sent is in `syslog_behind`.
    pub syslog_dropped: u64,
    /// Records in the trail not yet delivered by the syslog sinks that read
    /// it (summed over them): during a relay outage, how far behind they
    /// are; after the guard dropped, what the next start sends from the
    /// cursor.
    pub syslog_behind: u64,
    /// Records retention (`max_files`, `max_age`, `max_total_bytes`)
    /// deleted before a syslog sink reading the trail delivered them; each
    /// deletion is a `forward_gap` record with the `seq` range.
    pub forward_gap_records: u64,
    /// Syslog messages cut to the UDP size limit.
    pub syslog_truncated: u64,
    /// Syslog reconnections.
    pub syslog_reconnects: u64,
    /// Syslog send or connect errors.
    pub syslog_errors: u64,
    /// Records an OTLP sink delivered: its export request answered with
    /// success and nothing rejected.
    pub otlp_sent: u64,
    /// Records an OTLP sink sent again (a failed or partly rejected
    /// request is sent again whole; after a restart, what the process
    /// before may have sent past its cursor).
    pub otlp_resent: u64,
    /// Records an OTLP endpoint rejected (partial success); each such
    /// request was sent again.
    pub otlp_rejected: u64,
    /// Records an OTLP sink dropped (queue in memory: lossy mode, or still
    /// unsent at the end of the shutdown grace).
    pub otlp_dropped: u64,
    /// Records in the trail not yet delivered by the OTLP sinks that read
    /// it.
    pub otlp_behind: u64,
    /// OTLP export errors (transport, status, timeout, partial success).
    pub otlp_errors: u64,
    /// The most recent error, if any (see `storage_failing` for whether
    /// it is over).
    pub last_error: Option<String>,
    /// When the most recent error happened (RFC 3339, UTC).
    pub last_error_at: Option<String>,
}

/// Whether the audit trail can take and keep records now: what a readiness
/// probe of a fail-closed service asks (an instance that cannot audit
/// should stop taking traffic, not hang or crash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// `true` when nothing below is wrong.
    pub healthy: bool,
    /// What is wrong, one line each (empty when healthy).
    pub reasons: Vec<String>,
    /// Since when writes or syncs have been failing (RFC 3339), while they do.
    pub blocked_since: Option<String>,
}

/// A cloneable handle for reading counters and flushing at run time.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// let (_audit, guard) = tracing_audit::AuditLayer::builder()
///     .file(dir)
///     .build::<tracing_subscriber::Registry>()?;
/// let handle = guard.handle(); // cloneable: hand it to a health endpoint
/// assert_eq!(handle.stats().records_dropped, 0);
/// drop(guard);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AuditHandle {
    generation: u64,
    pub(crate) counters: Arc<Counters>,
    syslog: Arc<ForwardCounters>,
    otlp: Arc<ForwardCounters>,
    tx: Sender<Msg>,
    waker: Waker,
}

impl AuditHandle {
    pub(crate) fn new(
        counters: Arc<Counters>,
        syslog: Arc<ForwardCounters>,
        otlp: Arc<ForwardCounters>,
        tx: Sender<Msg>,
        waker: Waker,
    ) -> Self {
        AuditHandle {
            generation: pipeline::fork_generation(),
            counters,
            syslog,
            otlp,
            tx,
            waker,
        }
    }

    /// The counters now.
    pub fn stats(&self) -> AuditStats {
        let c = &self.counters;
        let s = &self.syslog;
        let read =
            |slot: &std::sync::Mutex<Option<LastError>>| slot.lock().ok().and_then(|e| e.clone());
        // The latest of the pipeline's and the forwarders' last errors.
        let later = |a: Option<LastError>, b: Option<LastError>| match (a, b) {
            (Some(a), Some(b)) => Some(if b.at > a.at { b } else { a }),
            (a, b) => a.or(b),
        };
        let o = &self.otlp;
        let last = later(
            later(read(&c.last_error), read(&s.last_error)),
            read(&o.last_error),
        );
        AuditStats {
            records_written: c.records_written.load(Relaxed),
            records_prehashed: c.records_prehashed.load(Relaxed),
            records_dropped: c.records_dropped.load(Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Relaxed),
            dropped_after_shutdown: c.dropped_closed.load(Relaxed),
            dropped_unwritten: c.dropped_unwritten.load(Relaxed),
            dropped_write_error: c.dropped_write_error.load(Relaxed),
            dropped_panic: c.dropped_panic.load(Relaxed),
            dropped_forked: c.dropped_forked.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            sync_errors: c.sync_errors.load(Relaxed),
            storage_failing: c.storage_failing.load(Relaxed),
            space_low: c.space_low.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            writes: c.writes.load(Relaxed),
            syncs: c.syncs.load(Relaxed),
            callback_errors: c.callback_errors.load(Relaxed),
            syslog_sent: s.sent.load(Relaxed),
            syslog_dropped: s.dropped.load(Relaxed),
            syslog_behind: s.behind(),
            forward_gap_records: c.forward_gap_records.load(Relaxed),
            syslog_truncated: s.truncated.load(Relaxed),
            syslog_reconnects: s.reconnects.load(Relaxed),
            syslog_resent: s.resent.load(Relaxed),
            syslog_errors: s.errors.load(Relaxed),
            otlp_sent: o.sent.load(Relaxed),
            otlp_resent: o.resent.load(Relaxed),
            otlp_rejected: o.rejected.load(Relaxed),
            otlp_dropped: o.dropped.load(Relaxed),
            otlp_behind: o.behind(),
            otlp_errors: o.errors.load(Relaxed),
            last_error: last.as_ref().map(|e| e.message.clone()),
            last_error_at: last.map(|e| {
                chrono::DateTime::<chrono::Utc>::from(e.at)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            }),
        }
    }

    /// Whether the trail can take and keep records now. Degraded when the
    /// storage is failing (durable callers are waiting; with the reason and
    /// since when), when free space is below the `space_left` watermark,
    /// when the pipeline is shutting down or its worker is
    /// gone, or in a process forked after the pipeline was built.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let tmp = tempfile::tempdir()?;
    /// let (_audit, guard) = tracing_audit::AuditLayer::builder()
    ///     .file(tmp.path())
    ///     .build::<tracing_subscriber::Registry>()?;
    /// let handle = guard.handle();
    /// // In a readiness route: 200 when healthy, 503 with the reasons otherwise.
    /// let h = handle.health();
    /// assert!(h.healthy, "{:?}", h.reasons);
    /// drop(guard);
    /// assert!(!handle.health().healthy);
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> Health {
        let c = &self.counters;
        let mut reasons = Vec::new();
        let mut blocked_since = None;
        if c.storage_failing.load(Relaxed) {
            let since = c.failing_since.lock().ok().and_then(|s| *s);
            blocked_since = since.map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            });
            let last = c
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.as_ref().map(|e| e.message.clone()))
                .unwrap_or_default();
            reasons.push(format!(
                "the audit storage is failing since {}: {last}",
                blocked_since.as_deref().unwrap_or("now")
            ));
        }
        if c.space_low.load(Relaxed) {
            reasons.push(
                "free space on the audit file system is below the space_left watermark".into(),
            );
        }
        if pipeline::forked_since(self.generation) {
            reasons.push("this process was forked after the audit pipeline was built".into());
        } else if c.worker_gone.load(Relaxed) {
            reasons.push("the audit worker has stopped".into());
        } else if c.closed.load(Relaxed) {
            reasons.push("the audit trail is shutting down".into());
        }
        Health {
            healthy: reasons.is_empty(),
            reasons,
            blocked_since,
        }
    }

    /// Writes and syncs every record emitted before this call. Returns
    /// `false` if the pipeline has stopped or the sync failed.
    pub fn flush(&self) -> bool {
        !pipeline::forked_since(self.generation)
            && pipeline::flush(&self.tx, &self.counters.room, &self.waker, None)
    }

    /// Like [`flush`](Self::flush), giving up after `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        !pipeline::forked_since(self.generation)
            && pipeline::flush(&self.tx, &self.counters.room, &self.waker, Some(timeout))
    }

    /// Installs a panic hook that flushes the trail (waiting up to 5 s)
    /// before running the previous hook, so records emitted just before a
    /// panic reach disk even when the panic aborts the process.
    pub fn install_panic_hook(&self) {
        let handle = self.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            handle.flush_timeout(Duration::from_secs(5));
            previous(info);
        }));
    }
}

/// Owns the audit pipeline's worker threads.
///
/// Dropping it writes everything still queued, writes an `audit_stopped`
/// record, syncs, and joins the workers. Keep it alive for as long as the
/// application may emit audit events: bind it to a named variable in
/// `main`, **not** to `_`, which drops it at once.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// let (_audit, guard) = tracing_audit::AuditLayer::builder()
///     .file(dir)
///     .build::<tracing_subscriber::Registry>()?;
/// // Keep `guard` alive for as long as the service runs; dropping it writes
/// // what is queued and `audit_stopped`, and syncs.
/// assert!(guard.flush());
/// drop(guard);
/// # Ok(()) }
/// ```
#[must_use = "dropping the guard stops the audit trail; bind it to a variable, not `_`"]
#[derive(Debug)]
pub struct AuditGuard {
    handle: AuditHandle,
    threads: Vec<JoinHandle<()>>,
    grace: Duration,
}

impl AuditGuard {
    pub(crate) fn new(handle: AuditHandle, threads: Vec<JoinHandle<()>>, grace: Duration) -> Self {
        AuditGuard {
            handle,
            threads,
            grace,
        }
    }

    /// A cloneable handle for reading counters and flushing at run time.
    pub fn handle(&self) -> AuditHandle {
        self.handle.clone()
    }

    /// The counters now.
    pub fn stats(&self) -> AuditStats {
        self.handle.stats()
    }

    /// Writes and syncs every record emitted so far.
    pub fn flush(&self) -> bool {
        self.handle.flush()
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if pipeline::forked_since(self.handle.generation) {
            // A forked child has none of the pipeline's threads: nothing to
            // stop, nothing to wait for (the parent's guard does that).
            std::mem::forget(std::mem::take(&mut self.threads));
            return;
        }
        let c = &self.handle.counters;
        c.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.handle.tx.try_send(Msg::Wake);
        self.handle.waker.wake();
        // The worker bounds itself by the grace; the margin covers its last
        // count of what was still queued and the syslog sinks' close.
        let start = Instant::now();
        let until = start + self.grace + Duration::from_secs(2);
        // A syslog thread still there a second after the grace is blocked in
        // a socket call that began before shutdown: shutting its socket down
        // ends the call, and the thread counts what it did not deliver.
        let abort_at = start + self.grace + Duration::from_secs(1);
        let mut aborted = false;
        for t in self.threads.drain(..) {
            while !t.is_finished() && Instant::now() < until {
                if !aborted && Instant::now() >= abort_at {
                    aborted = true;
                    self.handle.syslog.aborts.abort_all();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                let name = t.thread().name().unwrap_or("tracing-audit").to_owned();
                eprintln!(
                    "tracing-audit: thread {name} did not stop within the shutdown grace; leaving it behind"
                );
            }
        }
    }
}
