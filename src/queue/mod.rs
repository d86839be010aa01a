//! Bounded queues: what a full one does ([`QueueMode`]), and the one way
//! this crate offers a message to one (the layer's queue to the worker and
//! each syslog forwarder's queue use it alike).
//!
//! [`ring`] is the pipeline's queue; the syslog forwarders' queues are
//! `std::sync::mpsc` channels.
//!
//! A leaf: imports nothing from the crate.

pub(crate) mod ring;

use std::sync::atomic::{fence, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

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

/// The sending half of a bounded queue.
pub(crate) trait TrySend<T> {
    /// Queues `msg` unless the queue is full or its receiver is gone.
    fn try_send(&self, msg: T) -> Result<(), TrySendError<T>>;
}

impl<T> TrySend<T> for SyncSender<T> {
    fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        SyncSender::try_send(self, msg)
    }
}

impl<T> TrySend<T> for ring::Sender<T> {
    fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        ring::Sender::try_send(self, msg)
    }
}

/// Offers `msg` to `tx`. A full queue drops it when `lossy`; otherwise
/// the caller waits for room in `wait_for_room` (which returns whether it
/// sent it), in a way that cannot freeze an async runtime ([`wait`]).
pub(crate) fn offer<T, S: TrySend<T>>(
    tx: &S,
    msg: T,
    lossy: bool,
    wait_for_room: impl FnOnce(T) -> bool,
) -> Offered {
    match tx.try_send(msg) {
        Ok(()) => Offered::Queued,
        Err(TrySendError::Disconnected(_)) => Offered::Closed,
        Err(TrySendError::Full(_)) if lossy => Offered::Full,
        Err(TrySendError::Full(msg)) => {
            if wait(|| wait_for_room(msg)) {
                Offered::Queued
            } else {
                Offered::Closed
            }
        }
    }
}

/// Where producers that found a queue full wait for room, woken once per
/// batch the consumer takes instead of once per message.
///
/// A channel's own blocking `send` wakes one waiting producer for every
/// message taken: when producers outrun a consumer that takes in batches
/// (the pipeline worker), each record then costs a futex wait, a futex
/// wake and two context switches (`perf`: about a fifth of the records of
/// the two-thread bench, a sixth of its CPU). Here a producer retries
/// `try_send` and sleeps on a condition variable; the consumer calls
/// [`Room::made`] after each batch it took, which costs a fence and one load
/// while nobody waits.
///
/// No wake-up is lost: a producer registers in `waiting` (under the lock)
/// before its last `try_send`, and the consumer reads `waiting` after
/// taking, both across a `SeqCst` fence; so either the producer's
/// `try_send` sees the room, or the consumer sees the producer and must
/// take the lock, which it gets only once the producer sleeps. A wait is
/// also bounded ([`ROOM_RECHECK`]), so a consumer that is gone is noticed.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Room {
    waiting: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
    /// Longest sleep before a waiting producer looks again.
    recheck: Duration,
}

/// Longest sleep of a producer waiting for room before it looks again (a
/// consumer that is gone wakes nobody).
const ROOM_RECHECK: Duration = Duration::from_millis(20);

impl Default for Room {
    fn default() -> Self {
        Room::with_recheck(ROOM_RECHECK)
    }
}

impl Room {
    fn with_recheck(recheck: Duration) -> Self {
        Room {
            waiting: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
            recheck,
        }
    }

    /// The consumer took messages: wakes every producer waiting for room.
    pub(crate) fn made(&self) {
        fence(SeqCst);
        if self.waiting.load(SeqCst) != 0 {
            let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.freed.notify_all();
        }
    }

    /// Sends `msg`, sleeping while the queue is full (`on_full` before each
    /// sleep). `false`: the receiver is gone.
    pub(crate) fn send<T>(
        &self,
        tx: &impl TrySend<T>,
        mut msg: T,
        mut on_full: impl FnMut(),
    ) -> bool {
        let mut held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiting.fetch_add(1, SeqCst);
        fence(SeqCst);
        let sent = loop {
            match tx.try_send(msg) {
                Ok(()) => break true,
                Err(TrySendError::Disconnected(_)) => break false,
                Err(TrySendError::Full(m)) => {
                    msg = m;
                    on_full();
                    held = self
                        .freed
                        .wait_timeout(held, self.recheck)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        };
        self.waiting.fetch_sub(1, SeqCst);
        sent
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
    use std::sync::mpsc;

    #[test]
    fn offer_modes_std_channel() {
        let (tx, rx) = mpsc::sync_channel(1);
        let block = |m| tx.send(m).is_ok();
        assert_eq!(offer(&tx, 1, true, block), Offered::Queued);
        assert_eq!(offer(&tx, 2, true, block), Offered::Full);
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                (rx.recv().unwrap(), rx.recv().unwrap())
            });
            assert_eq!(offer(&tx, 3, false, block), Offered::Queued);
            assert_eq!(t.join().unwrap(), (1, 3));
        });
        // The consumer is gone.
        assert_eq!(offer(&tx, 4, false, block), Offered::Closed);
    }

    #[test]
    fn offer_modes_ring_with_room() {
        let room = &Room::default();
        let (tx, rx) = ring::channel(1);
        assert_eq!(offer(&tx, 1, true, |_| unreachable!()), Offered::Queued);
        assert_eq!(offer(&tx, 2, true, |_| unreachable!()), Offered::Full);
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
                room.made();
                (first, rx.recv_timeout(Duration::from_secs(5)).unwrap())
            });
            let mut woke = false;
            let sent = offer(&tx, 3, false, |m| room.send(&tx, m, || woke = true));
            assert_eq!(sent, Offered::Queued);
            assert!(woke);
            assert_eq!(t.join().unwrap(), (1, 3));
        });
        // The consumer is gone.
        let sent = offer(&tx, 4, false, |m| room.send(&tx, m, || {}));
        assert_eq!(sent, Offered::Closed);
    }

    /// Producers outrun a consumer that takes in batches and wakes them only
    /// through `made`. Their sleeps time out only after 10 s here, so a lost
    /// wake-up stalls the run and the consumer's 5 s watchdog fails it (the
    /// receiver then drops, and the producers see it at their next look).
    /// Every message arrives once, in each producer's order.
    #[test]
    fn room_loses_no_wake_up_and_no_message() {
        let room = &Room::with_recheck(Duration::from_secs(10));
        let (tx, rx) = ring::channel::<(usize, u32)>(4);
        let producers = 3;
        let each = 20_000u32;
        std::thread::scope(move |s| {
            for p in 0..producers {
                let tx = tx.clone();
                s.spawn(move || {
                    for i in 0..each {
                        let sent = offer(&tx, (p, i), false, |m| room.send(&tx, m, || {}));
                        if sent != Offered::Queued {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut next = vec![0u32; producers];
            let mut total = 0u64;
            loop {
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(m) => {
                        let mut take = |(p, i): (usize, u32)| {
                            assert_eq!(i, next[p], "producer {p} out of order");
                            next[p] += 1;
                            total += 1;
                        };
                        take(m);
                        while let Ok(m) = rx.try_recv() {
                            take(m);
                        }
                        room.made();
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        panic!("stalled after {total} messages: a wake-up was lost")
                    }
                }
            }
            assert_eq!(total, producers as u64 * u64::from(each));
        });
    }

    /// A producer waiting for room learns that the consumer is gone.
    #[test]
    fn a_waiting_producer_sees_the_consumer_go() {
        let room = Room::default();
        let (tx, rx) = ring::channel(1);
        let wait_for_room = |m| room.send(&tx, m, || {});
        assert_eq!(offer(&tx, 1, false, wait_for_room), Offered::Queued);
        std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                drop(rx);
            });
            assert_eq!(offer(&tx, 2, false, wait_for_room), Offered::Closed);
        });
    }
}
