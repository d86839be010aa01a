//! The pipeline's queue: a bounded multi-producer, single-consumer ring
//! whose producers do not read, per message, a cache line the consumer
//! writes.
//!
//! Why not `std::sync::mpsc::sync_channel`: each of its slots carries a
//! stamp that the receiver rewrites when it takes the message, and a
//! sender reads that stamp before it writes the slot. With the worker on
//! another core, every record then begins with a load that misses (the
//! line last written by the worker), and the caller waits for it: `perf`
//! put that load and what waits behind it at about 7 % of the two-thread
//! bench. Here a producer decides that a slot is free from the consumer's
//! position, and reads that position only when the copy it keeps beside
//! the tail says the ring is full; its writes to the slot still move the
//! line, but a store does not stall the caller as a load does.
//!
//! How it works:
//! - Positions count up forever; position `p` lives in slot `p & mask`
//!   (the slot array is `capacity` rounded up to a power of two; a ring
//!   holds at most `capacity` messages).
//! - A producer claims position `tail` with a compare-and-swap once
//!   `tail - head < capacity` (by the copy `head_seen`, else by `head`
//!   itself), writes the message into its slot and publishes it by
//!   storing `ready = p + 1` (release).
//! - The consumer takes position `head` once its slot's `ready` is
//!   `head + 1` (acquire), moves the message out and then publishes
//!   `head + 1` (release), which is what lets a producer reuse the slot.
//! - The receiver going away sets [`GONE`] in `tail` (so a producer's
//!   claim and the receiver's last look at `tail` cannot cross) and drops
//!   every message still in the ring, waiting for any claimed one to be
//!   written: a message with a waiter in it (a durable record) is never
//!   left behind with its waiter blocked.
//! - A consumer about to sleep sets `sleeping`, then looks at `tail`; a
//!   producer, after its claim, looks at `sleeping`. Both are sequentially
//!   consistent, so either the consumer sees the claim or the producer
//!   sees the sleeper and unparks it (no lost wake-up). The last sender
//!   leaving does the same.
//!
//! A leaf: imports nothing from the crate.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Set in `tail` when the receiver is gone.
const GONE: usize = 1 << (usize::BITS - 1);

/// Keeps what it holds on cache lines of its own (two, for the adjacent
/// line prefetcher).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The producers' line.
#[derive(Debug, Default)]
struct Producers {
    /// The next position to claim, with [`GONE`].
    tail: AtomicUsize,
    /// A value `head` had (never more than it has now): as long as it
    /// shows room, producers need not read `head`.
    head_seen: AtomicUsize,
}

/// Rarely written state.
#[derive(Debug, Default)]
struct Control {
    senders: AtomicUsize,
    /// The consumer is asleep, or about to be.
    sleeping: AtomicBool,
    /// The consumer's thread, while it sleeps.
    consumer: Mutex<Option<Thread>>,
}

#[repr(align(64))]
struct Slot<T> {
    /// `p + 1` once position `p`'s message is written here.
    ready: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Shared<T> {
    producers: Padded<Producers>,
    /// The next position the consumer takes (written by it alone).
    head: Padded<AtomicUsize>,
    control: Padded<Control>,
    slots: Box<[Slot<T>]>,
    mask: usize,
    capacity: usize,
}

// SAFETY: a message is written by the one producer that claimed its
// position and read by the one consumer, with the `ready` and `head`
// release/acquire pairs ordering them; `T: Send` because messages cross
// threads.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above; no `&T` is ever shared between threads.
unsafe impl<T: Send> Sync for Shared<T> {}

/// A bounded queue of `capacity` messages (at least one).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.clamp(1, GONE >> 1);
    let len = capacity.next_power_of_two();
    let slots = (0..len)
        .map(|_| Slot {
            ready: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    let shared = Arc::new(Shared {
        producers: Padded::default(),
        head: Padded::default(),
        control: Padded(Control {
            senders: AtomicUsize::new(1),
            ..Control::default()
        }),
        slots,
        mask: len - 1,
        capacity,
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            _not_sync: PhantomData,
        },
    )
}

/// The sending side; clone it for more producers.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side (one consumer).
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// One consumer at a time: `Send`, not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> Shared<T> {
    /// Unparks the consumer if it sleeps (after a claim or the last
    /// sender's leaving, both sequentially consistent).
    fn wake_consumer(&self) {
        if self.control.0.sleeping.load(SeqCst) {
            let t = self
                .control
                .0
                .consumer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(t) = t {
                t.unpark();
            }
        }
    }
}

impl<T> Sender<T> {
    /// Queues `msg` unless the ring is full or the receiver is gone.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let s = &*self.shared;
        let p = &s.producers.0;
        let mut tail = p.tail.load(Relaxed);
        loop {
            if tail & GONE != 0 {
                return Err(TrySendError::Disconnected(msg));
            }
            // Full by the copy of `head` (or `tail` is stale, and the
            // difference wrapped): look at the real ones.
            if tail.wrapping_sub(p.head_seen.load(Acquire)) >= s.capacity {
                let head = s.head.0.load(Acquire);
                let now = p.tail.load(Relaxed);
                if now != tail {
                    tail = now;
                    continue;
                }
                // `head` was read first and never passes `tail`.
                if tail - head >= s.capacity {
                    return Err(TrySendError::Full(msg));
                }
                p.head_seen.store(head, Release);
            }
            match p
                .tail
                .compare_exchange_weak(tail, tail + 1, SeqCst, Relaxed)
            {
                Ok(_) => break,
                Err(now) => tail = now,
            }
        }
        let slot = &s.slots[tail & s.mask];
        // SAFETY: position `tail` is ours alone (the claim), and its slot's
        // previous message (position `tail - len`, below `head`) was moved
        // out before `head` passed it, which the acquire load of `head` or
        // `head_seen` orders before this write.
        unsafe { (*slot.value.get()).write(msg) };
        slot.ready.store(tail + 1, Release);
        s.wake_consumer();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.control.0.senders.fetch_add(1, Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.control.0.senders.fetch_sub(1, SeqCst) == 1 {
            self.shared.wake_consumer();
        }
    }
}

impl<T> Receiver<T> {
    /// Takes the next message if it is there.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        if let Some(m) = self.take() {
            return Ok(m);
        }
        // A sender publishes its messages before it leaves: look again
        // after seeing that none is left.
        if self.shared.control.0.senders.load(SeqCst) == 0 {
            return self.take().ok_or(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    /// Takes the next message, waiting up to `timeout` for one.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            self.sleep(left);
        }
    }

    /// Sleeps up to `left` unless a message was claimed or the last
    /// sender left meanwhile.
    fn sleep(&self, left: Duration) {
        let s = &*self.shared;
        let c = &s.control.0;
        *c.consumer.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::thread::current());
        c.sleeping.store(true, SeqCst);
        let claimed = s.producers.0.tail.load(SeqCst) & !GONE != s.head.0.load(Relaxed);
        if claimed {
            // Claimed and not yet written: the producer is between its
            // claim and its store.
            std::thread::yield_now();
        } else if c.senders.load(SeqCst) != 0 {
            std::thread::park_timeout(left);
        }
        c.sleeping.store(false, Relaxed);
    }

    /// Moves the message at `head` out if it is written.
    fn take(&self) -> Option<T> {
        let s = &*self.shared;
        let head = s.head.0.load(Relaxed);
        let slot = &s.slots[head & s.mask];
        if slot.ready.load(Acquire) != head + 1 {
            return None;
        }
        // SAFETY: `ready` says position `head`'s message is written (the
        // acquire load orders its write before this read); only this
        // consumer reads it, once, and `head` moves past it right after.
        let m = unsafe { (*slot.value.get()).assume_init_read() };
        s.head.0.store(head + 1, Release);
        Some(m)
    }
}

impl<T> Drop for Receiver<T> {
    /// Refuses new messages and drops the ones left (so a waiter inside
    /// one learns at once that nobody will answer).
    fn drop(&mut self) {
        let s = &*self.shared;
        let end = s.producers.0.tail.fetch_or(GONE, SeqCst) & !GONE;
        loop {
            let head = s.head.0.load(Relaxed);
            if head == end {
                break;
            }
            match self.take() {
                Some(m) => drop(m),
                // Claimed before the refusal, not yet written.
                None => std::thread::yield_now(),
            }
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // The receiver drops what is left when it goes; something is left
        // here only if it was forgotten instead (`mem::forget`).
        let head = *self.head.0.get_mut();
        let tail = *self.producers.0.tail.get_mut() & !GONE;
        for p in head..tail {
            let slot = &mut self.slots[p & self.mask];
            if *slot.ready.get_mut() == p + 1 {
                // SAFETY: written and never taken.
                unsafe { slot.value.get_mut().assume_init_drop() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn holds_exactly_its_capacity_and_keeps_order_across_laps() {
        let (tx, rx) = channel::<u32>(5);
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        assert!(matches!(tx.try_send(5), Err(TrySendError::Full(5))));
        assert_eq!(rx.try_recv(), Ok(0));
        tx.try_send(5).unwrap();
        assert!(matches!(tx.try_send(6), Err(TrySendError::Full(6))));
        let mut next = 1;
        let mut sent = 6;
        // Many laps of the 8-slot array, the ring kept between 1 and 5 full.
        while next < 10_000 {
            assert_eq!(rx.try_recv(), Ok(next));
            next += 1;
            while tx.try_send(sent).is_ok() {
                sent += 1;
            }
            assert_eq!(sent - next, 5);
        }
        drop(tx);
        for i in next..sent {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    /// Four producers race on a ring of eight: every message arrives once,
    /// in each producer's order, and the end is seen once all are gone.
    #[test]
    fn racing_producers_lose_and_reorder_nothing() {
        let (tx, rx) = channel::<(usize, u32)>(8);
        let producers = 4;
        let each = 100_000u32;
        std::thread::scope(|s| {
            for p in 0..producers {
                let tx = tx.clone();
                s.spawn(move || {
                    for i in 0..each {
                        let mut m = (p, i);
                        loop {
                            match tx.try_send(m) {
                                Ok(()) => break,
                                Err(TrySendError::Full(back)) => {
                                    m = back;
                                    std::hint::spin_loop();
                                }
                                Err(TrySendError::Disconnected(_)) => panic!("receiver gone"),
                            }
                        }
                    }
                });
            }
            drop(tx);
            let mut next = vec![0u32; producers];
            let mut total = 0u64;
            loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok((p, i)) => {
                        assert_eq!(i, next[p], "producer {p} out of order");
                        next[p] += 1;
                        total += 1;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => panic!("stalled after {total}"),
                }
            }
            assert_eq!(total, producers as u64 * u64::from(each));
        });
    }

    /// One message at a time, each answered before the next is sent: the
    /// consumer sleeps before nearly every one, so a wake-up lost between
    /// its last look and its sleep would leave it asleep until its 10 s
    /// timeout (it then finds the message), which fails the run.
    #[test]
    fn a_sleeping_consumer_is_always_woken() {
        let (tx, rx) = channel::<u32>(4);
        let (ack_tx, ack_rx) = mpsc::sync_channel::<u32>(1);
        let timeout = Duration::from_secs(10);
        std::thread::scope(|s| {
            s.spawn(move || loop {
                let asleep = Instant::now();
                match rx.recv_timeout(timeout) {
                    Ok(i) => {
                        assert!(asleep.elapsed() < timeout, "woken by the timeout at {i}");
                        ack_tx.send(i).unwrap();
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        assert!(asleep.elapsed() < timeout, "the last sender woke nobody");
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => panic!("a wake-up was lost"),
                }
            });
            for i in 0..5_000 {
                tx.try_send(i).unwrap();
                assert_eq!(ack_rx.recv_timeout(Duration::from_secs(20)), Ok(i));
            }
            // The last sender leaving wakes it too.
            drop(tx);
        });
    }

    /// What is left when the receiver goes is dropped then, not when the
    /// last sender goes: a waiter inside a message learns at once that
    /// nobody will answer. New messages are refused and handed back.
    #[test]
    fn the_receiver_going_drops_what_is_left_and_refuses_more() {
        let (tx, rx) = channel::<mpsc::SyncSender<bool>>(4);
        let (w1, r1) = mpsc::sync_channel(1);
        let (w2, r2) = mpsc::sync_channel(1);
        tx.try_send(w1).unwrap();
        tx.try_send(w2).unwrap();
        drop(rx);
        assert_eq!(r1.try_recv(), Err(mpsc::TryRecvError::Disconnected));
        assert_eq!(r2.try_recv(), Err(mpsc::TryRecvError::Disconnected));
        let (w3, r3) = mpsc::sync_channel(1);
        match tx.try_send(w3) {
            Err(TrySendError::Disconnected(w)) => w.send(true).unwrap(),
            other => panic!("{other:?}"),
        }
        assert_eq!(r3.try_recv(), Ok(true));
    }

    /// A ring forgotten by its receiver still frees its messages when the
    /// last sender goes.
    #[test]
    fn messages_of_a_forgotten_receiver_are_freed_with_the_ring() {
        let (tx, rx) = channel::<Arc<()>>(4);
        let counted = Arc::new(());
        tx.try_send(counted.clone()).unwrap();
        tx.try_send(counted.clone()).unwrap();
        assert_eq!(rx.try_recv().map(|a| Arc::strong_count(&a)), Ok(3));
        // `forget` leaks the receiver's handle, so the ring is never freed;
        // read the count through the shared ring instead.
        let shared = rx.shared.clone();
        std::mem::forget(rx);
        drop(tx);
        assert_eq!(Arc::strong_count(&counted), 2);
        // SAFETY (test): the forgotten receiver's share is given back so
        // the ring is freed here.
        unsafe { Arc::decrement_strong_count(Arc::as_ptr(&shared)) };
        drop(shared);
        assert_eq!(Arc::strong_count(&counted), 1);
    }
}
