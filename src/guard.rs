//! The guard that owns the pipeline's threads, the cloneable handle, and
//! the counters they report.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::pipeline::{self, Counters, Msg, Waker};

/// A snapshot of the pipeline's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditStats {
    /// Records written to the trail (including the crate's own records).
    pub records_written: u64,
    /// Records lost: dropped by a full queue in lossy mode, sent after
    /// shutdown, or unwritable at shutdown.
    pub records_dropped: u64,
    /// Failed writes or syncs (each retried; see `last_error`).
    pub write_errors: u64,
    /// Bytes written to the file.
    pub bytes_written: u64,
    /// Write calls to the file (records per write shows the batching).
    pub writes: u64,
    /// `fdatasync` calls made.
    pub syncs: u64,
    /// Panics caught inside a layer callback (e.g. from a field's `Debug`).
    pub callback_errors: u64,
    /// Messages delivered to syslog servers.
    pub syslog_sent: u64,
    /// Messages a syslog sink dropped (lossy mode, or unsendable).
    pub syslog_dropped: u64,
    /// Syslog messages cut to the UDP size limit.
    pub syslog_truncated: u64,
    /// Syslog reconnections.
    pub syslog_reconnects: u64,
    /// Syslog send or connect errors.
    pub syslog_errors: u64,
    /// The most recent error, if any.
    pub last_error: Option<String>,
}

/// A cloneable handle for reading counters and flushing at run time.
#[derive(Clone, Debug)]
pub struct AuditHandle {
    counters: Arc<Counters>,
    tx: SyncSender<Msg>,
    waker: Waker,
}

impl AuditHandle {
    pub(crate) fn new(counters: Arc<Counters>, tx: SyncSender<Msg>, waker: Waker) -> Self {
        AuditHandle {
            counters,
            tx,
            waker,
        }
    }

    /// The counters now.
    pub fn stats(&self) -> AuditStats {
        let c = &self.counters;
        AuditStats {
            records_written: c.records_written.load(Relaxed),
            records_dropped: c.records_dropped.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            writes: c.writes.load(Relaxed),
            syncs: c.syncs.load(Relaxed),
            callback_errors: c.callback_errors.load(Relaxed),
            syslog_sent: c.syslog_sent.load(Relaxed),
            syslog_dropped: c.syslog_dropped.load(Relaxed),
            syslog_truncated: c.syslog_truncated.load(Relaxed),
            syslog_reconnects: c.syslog_reconnects.load(Relaxed),
            syslog_errors: c.syslog_errors.load(Relaxed),
            last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Writes and syncs every record emitted before this call. Returns
    /// `false` if the pipeline has stopped or the sync failed.
    pub fn flush(&self) -> bool {
        pipeline::flush(&self.tx, &self.waker, None)
    }

    /// Like [`flush`](Self::flush), giving up after `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        pipeline::flush(&self.tx, &self.waker, Some(timeout))
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
#[must_use = "dropping the guard stops the audit trail; bind it to a variable, not `_`"]
#[derive(Debug)]
pub struct AuditGuard {
    handle: AuditHandle,
    threads: Vec<JoinHandle<()>>,
}

impl AuditGuard {
    pub(crate) fn new(handle: AuditHandle, threads: Vec<JoinHandle<()>>) -> Self {
        AuditGuard { handle, threads }
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
        let _ = self.handle.tx.send(Msg::Shutdown);
        self.handle.waker.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
