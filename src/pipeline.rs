//! The caller's side of the pipeline: the bounded queue into the worker,
//! lossless/lossy submission, durability waits, and the shared counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crate::fields::Risk;

/// A record body waiting to be sequenced, chained and written.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: uuid::Uuid,
    pub(crate) body: Vec<u8>,
    /// Answered once the record is synced (`true`) or could not be (`false`).
    pub(crate) done: Option<SyncSender<bool>>,
}

/// What the worker receives.
#[derive(Debug)]
pub(crate) enum Msg {
    Record(Pending),
    /// Write and sync everything before this, then answer.
    Flush(SyncSender<bool>),
    /// Finish: write what is queued, write `audit_stopped`, sync, exit.
    Shutdown,
}

/// Counters shared by the layer, the worker and the handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) records_written: AtomicU64,
    pub(crate) records_dropped: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) callback_errors: AtomicU64,
    pub(crate) syslog_sent: AtomicU64,
    pub(crate) syslog_dropped: AtomicU64,
    pub(crate) syslog_truncated: AtomicU64,
    pub(crate) syslog_reconnects: AtomicU64,
    pub(crate) syslog_errors: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn error(&self, counter: &AtomicU64, msg: String) {
        counter.fetch_add(1, Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(msg);
        }
    }
}

/// Wakes the worker when it is polling (see `worker.rs`): callers that wait
/// for it (durable records, flushes, shutdown) use this; ordinary records
/// never do, so they cost no system call.
#[derive(Clone, Debug, Default)]
pub(crate) struct Waker(Arc<OnceLock<Thread>>);

impl Waker {
    pub(crate) fn set(&self, t: Thread) {
        let _ = self.0.set(t);
    }

    pub(crate) fn wake(&self) {
        if let Some(t) = self.0.get() {
            t.unpark();
        }
    }
}

/// Whether a full queue makes the caller wait or drops the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueueMode {
    /// The caller waits for room: nothing is lost (default).
    #[default]
    Lossless,
    /// A record that finds the queue full is dropped and counted, and a
    /// `records_lost` record with the exact count enters the trail. Records
    /// at or above the durability threshold are never dropped.
    Lossy,
}

/// The handle the layer submits through.
#[derive(Debug)]
pub(crate) struct Submitter {
    tx: SyncSender<Msg>,
    mode: QueueMode,
    durable_at: Risk,
    pub(crate) counters: Arc<Counters>,
    pub(crate) waker: Waker,
}

impl Submitter {
    pub(crate) fn new(
        capacity: usize,
        mode: QueueMode,
        durable_at: Risk,
        counters: Arc<Counters>,
    ) -> (Self, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        (
            Submitter {
                tx,
                mode,
                durable_at,
                counters,
                waker: Waker::default(),
            },
            rx,
        )
    }

    pub(crate) fn sender(&self) -> SyncSender<Msg> {
        self.tx.clone()
    }

    /// Queues a record; for a durable one, waits until it is synced.
    pub(crate) fn submit(&self, id: uuid::Uuid, body: Vec<u8>, risk: Risk) {
        if risk >= self.durable_at {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            let msg = Msg::Record(Pending {
                id,
                body,
                done: Some(done_tx),
            });
            if self.tx.send(msg).is_err() {
                self.counters.records_dropped.fetch_add(1, Relaxed);
                return;
            }
            self.waker.wake();
            // `Err` means the worker is gone; it counted what it lost.
            let _ = done_rx.recv();
            return;
        }
        let msg = Msg::Record(Pending {
            id,
            body,
            done: None,
        });
        let sent = match self.mode {
            QueueMode::Lossless => self.tx.send(msg).is_ok(),
            QueueMode::Lossy => match self.tx.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
        };
        if !sent {
            self.counters.records_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Sends a flush and waits up to `timeout` for it.
pub(crate) fn flush(tx: &SyncSender<Msg>, waker: &Waker, timeout: Option<Duration>) -> bool {
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    if tx.send(Msg::Flush(done_tx)).is_err() {
        return false;
    }
    waker.wake();
    match timeout {
        Some(t) => done_rx.recv_timeout(t).unwrap_or(false),
        None => done_rx.recv().unwrap_or(false),
    }
}
