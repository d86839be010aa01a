//! Bounded queues: what a full one does ([`QueueMode`]), and the one way
//! this crate offers a message to one (the layer's queue to the worker and
//! each syslog forwarder's queue use it alike).
//!
//! A leaf: imports nothing from the crate.

use std::sync::mpsc::{SyncSender, TrySendError};

/// Whether a full queue makes the caller wait or drops the record.
///
/// ```
/// use tracing_audit::{AuditLayer, QueueMode};
/// let builder = AuditLayer::builder().file("./audit").queue_mode(QueueMode::Lossy);
/// # let _ = builder;
/// ```
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

/// What became of an offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// It is in the queue.
    Queued,
    /// The queue was full and the offer was lossy: dropped.
    Full,
    /// The receiver is gone: dropped.
    Closed,
}

/// Offers `msg` to `tx`. A full queue drops it when `lossy`; otherwise
/// `on_full` runs (to wake the consumer) and the caller waits for room,
/// in a way that cannot freeze an async runtime ([`wait`]).
pub(crate) fn offer<T>(tx: &SyncSender<T>, msg: T, lossy: bool, on_full: impl FnOnce()) -> Offered {
    match tx.try_send(msg) {
        Ok(()) => Offered::Queued,
        Err(TrySendError::Disconnected(_)) => Offered::Closed,
        Err(TrySendError::Full(_)) if lossy => Offered::Full,
        Err(TrySendError::Full(msg)) => {
            on_full();
            if wait(|| tx.send(msg).is_ok()) {
                Offered::Queued
            } else {
                Offered::Closed
            }
        }
    }
}

/// Runs a blocking wait so that it cannot freeze an async runtime: on a
/// worker thread of a tokio multi-thread runtime, through `block_in_place`.
pub(crate) fn wait<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "tokio")]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if let Ok(h) = Handle::try_current() {
            if h.runtime_flavor() == RuntimeFlavor::MultiThread {
                return tokio::task::block_in_place(f);
            }
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_modes() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        assert_eq!(offer(&tx, 1, true, || {}), Offered::Queued);
        assert_eq!(offer(&tx, 2, true, || {}), Offered::Full);
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            (rx.recv().unwrap(), rx.recv().unwrap())
        });
        let mut woke = false;
        assert_eq!(offer(&tx, 3, false, || woke = true), Offered::Queued);
        assert!(woke);
        assert_eq!(t.join().unwrap(), (1, 3));
        assert_eq!(offer(&tx, 4, false, || {}), Offered::Closed);
    }
}
