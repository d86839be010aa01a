//! The pipeline between the layer and the sinks: the bounded queue, the
//! worker thread, and the handles that flush it, stop it and read its
//! counters.
//!
//! [`AuditGuard`] (keep it alive; dropping it drains and syncs the trail),
//! [`AuditHandle`] (flush, stats and health from anywhere), [`AuditStats`]
//! and [`Health`]. The guard, handle and stats are also at the crate root.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let (layer, guard) = tracing_audit::AuditLayer::builder()
//!     .file(dir.path())
//!     .build::<tracing_subscriber::Registry>()?;
//! let handle = guard.handle();
//! let health: tracing_audit::pipeline::Health = handle.health();
//! assert!(health.healthy, "{health:?}");
//! # drop((layer, guard));
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! The caller's side of the pipeline: the bounded queue into the worker,
//! lossless/lossy submission, durability waits, shutdown refusal, and the
//! shared counters.
//!
//! Every record handed to `Submitter::submit` ends in exactly one place:
//! the trail, or one of the dropped counters with its cause. Once shutdown
//! has begun (`Counters::closed`), new records are refused and counted;
//! the worker waits for submissions already under way (`inflight`) before
//! its last look at the queue, so none slips past uncounted.
//!
//! A caller that must wait (a full queue in lossless mode, a durable record
//! waiting for its sync) blocks its thread. On a worker thread of a tokio
//! multi-thread runtime that wait goes through `tokio::task::block_in_place`
//! (feature `tokio`, on by default), so the runtime moves its other tasks
//! to another thread and keeps serving them. A current-thread runtime has no
//! other thread to move them to: there, the wait blocks the runtime.

pub(crate) mod guard;
pub(crate) mod worker;
pub use guard::{AuditGuard, AuditHandle, AuditStats, Health};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime};

use crate::queue::ring::{self, Receiver, Sender};
use crate::queue::{offer, Offered, Room};
pub(crate) use crate::queue::{wait, QueueMode};
use crate::record::chain::{Midstate, Prehasher};
use crate::record::fields::Risk;
use crate::record::layout::KeyFields;
use crate::sink::LastError;

/// What the probe found when the audit layer joined a subscriber (set in
/// `on_register_dispatch`), for the worker to report.
pub(crate) type ProbeSlot = std::sync::Arc<std::sync::Mutex<Option<Probed>>>;

/// What the user's subscriber does with an INFO audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probed {
    /// It reaches the audit layer.
    Delivered,
    /// The audit layer wanted it and a global filter discarded it: every
    /// such event is lost before any layer sees it. Carries the most
    /// verbose level that still gets through (`OFF` if none).
    DiscardedByGlobalFilter(tracing_core::LevelFilter),
    /// A filter in front of the audit layer stopped it: a per-layer filter
    /// on the audit layer (the user's choice), or a global filter added
    /// after it, which cannot be told apart from here.
    FilteredBeforeAudit,
}

/// A record body waiting to be sequenced, chained and written.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: uuid::Uuid,
    pub(crate) body: Vec<u8>,
    /// Where its key fields sit in `body`, with its risk and outcome.
    pub(crate) keys: KeyFields,
    /// Answered once the record is synced (`true`) or given up (`false`).
    /// Boxed: durable records are few, and the eight bytes saved keep a
    /// queue slot at two cache lines (below).
    pub(crate) done: Option<Box<SyncSender<bool>>>,
    /// The start of its line, hashed by the thread that made it (`None`
    /// for the worker's own records, which it hashes whole).
    pub(crate) mid: Option<Midstate>,
}

/// A queue slot is the message and its 8-byte `ready` stamp, on 64-byte
/// lines: at 128 bytes or less a record's slot is two lines that the
/// caller's core writes and the worker's reads, where 136 bytes made it
/// three (`Pending` grew by the caller's midstate).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Msg>() + 8 <= 128);

/// What the worker receives.
#[derive(Debug)]
pub(crate) enum Msg {
    Record(Pending),
    /// Write and sync everything before this, then answer.
    Flush(SyncSender<bool>),
    /// Look at the shutdown flag now (sent when shutdown begins).
    Wake,
}

/// Why a record was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropCause {
    /// Lossy mode, queue full.
    QueueFull,
    /// Sent after shutdown began (or after the worker stopped).
    Closed,
    /// Still unwritten when the shutdown grace ran out.
    Unwritten,
    /// A panic while recording the event (a field's `Debug`, say).
    Panic,
    /// Emitted in a child process forked after the pipeline was built (the
    /// child has none of the pipeline's threads).
    Forked,
    /// Not written because the file failed, with `OnError::Drop`.
    WriteError,
}

/// Counters shared by the layer, the worker and the handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) records_written: AtomicU64,
    /// Records written whose line start the caller hashed ([`CallersHash`]).
    pub(crate) records_prehashed: AtomicU64,
    /// Records retention deleted before a syslog sink reading the trail
    /// delivered them.
    pub(crate) forward_gap_records: AtomicU64,
    pub(crate) records_dropped: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_closed: AtomicU64,
    pub(crate) dropped_unwritten: AtomicU64,
    pub(crate) dropped_panic: AtomicU64,
    pub(crate) dropped_forked: AtomicU64,
    pub(crate) dropped_write_error: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) sync_errors: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) callback_errors: AtomicU64,
    /// The storage is failing now (a write or sync failed and none has
    /// succeeded since).
    pub(crate) storage_failing: AtomicBool,
    /// Shutdown has begun: new records are refused.
    pub(crate) closed: AtomicBool,
    /// Free space on the audit file system is below the watermark.
    pub(crate) space_low: AtomicBool,
    /// The worker thread has ended (shutdown, or a bug).
    pub(crate) worker_gone: AtomicBool,
    /// When the current storage failure episode began.
    pub(crate) failing_since: Mutex<Option<SystemTime>>,
    /// Submissions under way.
    pub(crate) inflight: Inflight,
    pub(crate) last_error: Mutex<Option<LastError>>,
    /// Body buffers the worker hands back to the callers (see [`BodyPool`]).
    pub(crate) bodies: BodyPool,
    /// Where callers that found the queue full wait; the worker wakes them
    /// after each batch it takes.
    pub(crate) room: Room,
    /// Whether callers hash the start of their records' lines.
    pub(crate) callers_hash: CallersHash,
}

/// Whether the submitting threads hash the start of each record's line
/// ([`crate::record::chain::Midstate`]) or leave all of it to the worker.
///
/// Hashing on the caller's thread takes most of the SHA-256 off the worker,
/// which every record passes through: it pays when the worker is the limit
/// (a backlog) and costs each caller the digest, about 0.3-0.5 µs, when it
/// is not. So the worker sets it when it finds a backlog (a drain that took
/// [`HELP_FROM`] messages or more, or stopped at the batch limit) and clears
/// it when it keeps up again (a drain that emptied the queue with at most
/// [`HELP_UNTIL`]); it stores only on a change, so callers read a line that
/// stays in their caches. Either way the line's bytes and hash are the same.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CallersHash {
    on: AtomicBool,
    /// Tests hold it at one value.
    #[cfg(test)]
    pinned: AtomicBool,
}

/// Messages in one drain from which callers are asked to hash.
pub(crate) const HELP_FROM: usize = 64;
/// Messages in one drain (that emptied the queue) up to which they stop.
pub(crate) const HELP_UNTIL: usize = 16;

impl CallersHash {
    /// Whether callers hash now.
    #[inline]
    pub(crate) fn get(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Holds it at `on` whatever the worker finds (tests).
    #[cfg(test)]
    pub(crate) fn pin(&self, on: bool) {
        self.pinned.store(true, Relaxed);
        self.on.store(on, Relaxed);
    }

    /// After a drain that took `n` messages (`emptied`: until the queue
    /// was empty).
    pub(crate) fn after_drain(&self, n: usize, emptied: bool) {
        #[cfg(test)]
        if self.pinned.load(Relaxed) {
            return;
        }
        let want = if n >= HELP_FROM || !emptied {
            true
        } else if n <= HELP_UNTIL {
            false
        } else {
            return;
        };
        if self.on.load(Relaxed) != want {
            self.on.store(want, Relaxed);
        }
    }
}

/// Record body buffers on their way back from the worker to the callers.
///
/// A caller encodes a record's body into its scratch buffer and moves that
/// buffer into the queue, taking an empty one from here in exchange; the
/// worker, once it has sealed the body into its batch, clears the buffer
/// and returns it. So the hot path allocates, copies and frees no body
/// (allocating on one thread and freeing on another is what glibc's
/// allocator is slowest at). Both sides move buffers in bundles, so the
/// lock is taken once per [`BODY_BUNDLE`] records, and the pool is bounded:
/// at most [`BODY_POOL_MAX`] buffers of at most [`BODY_KEEP`] bytes each
/// (larger ones, from an exceptional record, are freed).
///
/// While the worker is behind, the queue holds thousands of bodies; the
/// pool keeps as many as a default queue holds, so that a backlog that
/// drains and fills again reuses them instead of freeing them on the worker
/// and allocating them again on the callers (with 1 024, `--only
/// e2e-plain` made 609 000 `malloc` calls for 2 M records; with 16 384,
/// 99 000, most of them each run's first fill). Once the worker has been
/// idle a while it trims the pool to [`BODY_POOL_IDLE`], so a burst does
/// not leave its buffers held.
#[derive(Debug, Default)]
pub(crate) struct BodyPool(Mutex<Vec<Vec<u8>>>);

/// The queue's capacity unless the builder is told otherwise.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 16 * 1024;
/// Most buffers the pool keeps: as many as a default queue holds.
const BODY_POOL_MAX: usize = DEFAULT_QUEUE_CAPACITY;
/// Most buffers the pool keeps once the worker is idle.
pub(crate) const BODY_POOL_IDLE: usize = 1024;
/// Buffers moved per lock, each way.
pub(crate) const BODY_BUNDLE: usize = 32;
/// Largest buffer capacity kept for reuse.
pub(crate) const BODY_KEEP: usize = 4096;

impl BodyPool {
    /// Moves the buffers of `spare` into the pool, as far as it has room;
    /// the rest are freed. Leaves `spare` empty.
    pub(crate) fn give_back(&self, spare: &mut Vec<Vec<u8>>) {
        if spare.is_empty() {
            return;
        }
        if let Ok(mut pool) = self.0.lock() {
            let room = BODY_POOL_MAX.saturating_sub(pool.len());
            let n = spare.len().min(room);
            pool.extend(spare.drain(..n));
        }
        spare.clear();
    }

    /// Frees the buffers past the first `keep`.
    pub(crate) fn trim(&self, keep: usize) {
        let extra = match self.0.lock() {
            Ok(mut pool) if pool.len() > keep => pool.split_off(keep),
            _ => return,
        };
        // Freed outside the lock.
        drop(extra);
    }

    /// Moves up to [`BODY_BUNDLE`] buffers from the pool into `local`.
    /// Never waits: when the worker holds the lock, the caller allocates
    /// instead (and in a child forked while a thread held it, no thread
    /// will ever release it).
    pub(crate) fn take_bundle(&self, local: &mut Vec<Vec<u8>>) {
        if let Ok(mut pool) = self.0.try_lock() {
            let at = pool.len().saturating_sub(BODY_BUNDLE);
            local.extend(pool.drain(at..));
        }
    }
}

impl Counters {
    pub(crate) fn error(&self, counter: &AtomicU64, msg: String) {
        counter.fetch_add(1, Relaxed);
        LastError::set(&self.last_error, msg);
    }

    /// Counts `n` dropped records with their cause.
    pub(crate) fn dropped(&self, cause: DropCause, n: u64) {
        if n == 0 {
            return;
        }
        let c = match cause {
            DropCause::QueueFull => &self.dropped_queue_full,
            DropCause::Closed => &self.dropped_closed,
            DropCause::Unwritten => &self.dropped_unwritten,
            DropCause::Panic => &self.dropped_panic,
            DropCause::Forked => &self.dropped_forked,
            DropCause::WriteError => &self.dropped_write_error,
        };
        c.fetch_add(n, Relaxed);
        self.records_dropped.fetch_add(n, Relaxed);
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

/// Bumped in every child process a `fork` creates (a `pthread_atfork`
/// handler), so a pipeline built before the fork knows it is in a child:
/// there it has no worker thread, and waiting for one would hang forever.
/// The same handler closes the child's copies of the directory locks.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn in_forked_child() {
    FORK_GENERATION.fetch_add(1, Relaxed);
    crate::sink::file::close_locks_in_child();
}

/// The current fork generation; installs the `fork` handler once.
pub(crate) fn fork_generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only touches atomics and calls
        // `close`, which are async-signal-safe, as a child handler must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_forked_child));
        }
    });
    FORK_GENERATION.load(Relaxed)
}

/// Whether this process is a child forked after generation `built`.
pub(crate) fn forked_since(built: u64) -> bool {
    FORK_GENERATION.load(Relaxed) != built
}

/// The handle the layer submits through.
#[derive(Debug)]
pub(crate) struct Submitter {
    tx: Sender<Msg>,
    mode: QueueMode,
    durable_at: Risk,
    /// The fork generation the pipeline was built in.
    generation: u64,
    /// The refusal in a forked child was said on stderr.
    said_forked: AtomicBool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) waker: Waker,
    /// Hashes the start of each record's line on the submitting thread.
    prehasher: Prehasher,
}

/// Submissions under way, counted in per-thread shards on cache lines of
/// their own: every event touches it twice, and one shared counter would
/// make emitting threads contend for one cache line. A submission
/// increments and decrements the same shard, so the sum is exact.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicUsize);

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
}

impl Inflight {
    /// Counts one submission until the returned guard drops.
    fn enter(&self) -> InflightGuard<'_> {
        let shard = &self.shards[SHARD.try_with(|s| *s).unwrap_or(0)].0;
        shard.fetch_add(1, SeqCst);
        InflightGuard(shard)
    }

    /// Whether no submission is under way.
    pub(crate) fn is_zero(&self) -> bool {
        self.shards.iter().all(|s| s.0.load(SeqCst) == 0)
    }
}

/// Ends a submission's count however it ends.
struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Submitter {
    pub(crate) fn new(
        capacity: usize,
        mode: QueueMode,
        durable_at: Risk,
        counters: Arc<Counters>,
        prehasher: Prehasher,
    ) -> (Self, Receiver<Msg>) {
        let (tx, rx) = ring::channel(capacity);
        (
            Submitter {
                tx,
                mode,
                durable_at,
                generation: fork_generation(),
                said_forked: AtomicBool::new(false),
                counters,
                waker: Waker::default(),
                prehasher,
            },
            rx,
        )
    }

    pub(crate) fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }

    /// Queues a record; for a durable one, waits until it is synced.
    pub(crate) fn submit(&self, id: uuid::Uuid, body: Vec<u8>, keys: KeyFields) {
        let risk = keys.risk;
        if forked_since(self.generation) {
            self.counters.dropped(DropCause::Forked, 1);
            if !self.said_forked.swap(true, Relaxed) {
                eprintln!("tracing-audit: this process was forked after the audit pipeline was built; the child has no audit worker, so its audit events are dropped and counted. Build the AuditLayer after fork.");
            }
            return;
        }
        let durable = risk >= self.durable_at;
        // Most of the line's hashing here rather than on the worker, which
        // every record passes through, while the worker is the limit
        // ([`CallersHash`]).
        let mid = self
            .counters
            .callers_hash
            .get()
            .then(|| self.prehasher.midstate(&id, &body))
            .flatten();
        let (done, done_rx) = if durable {
            let (t, r) = mpsc::sync_channel(1);
            (Some(Box::new(t)), Some(r))
        } else {
            (None, None)
        };
        if !self.enqueue(
            Msg::Record(Pending {
                id,
                body,
                keys,
                done,
                mid,
            }),
            durable,
        ) {
            return;
        }
        if let Some(rx) = done_rx {
            self.waker.wake();
            // `false` or `Err`: the worker gave up at shutdown and counted it.
            let _ = wait(|| rx.recv());
        }
    }
}

impl Submitter {
    /// Puts `msg` on the queue unless shutdown has begun; counts a refusal
    /// or a lossy drop. Returns whether it was queued.
    fn enqueue(&self, msg: Msg, durable: bool) -> bool {
        let _inflight = self.counters.inflight.enter();
        if self.counters.closed.load(SeqCst) {
            self.counters.dropped(DropCause::Closed, 1);
            return false;
        }
        let lossy = self.mode == QueueMode::Lossy && !durable;
        let room = &self.counters.room;
        let sent = match offer(&self.tx, msg, lossy, |m| {
            room.send(&self.tx, m, || self.waker.wake())
        }) {
            Offered::Queued => true,
            Offered::Closed => false,
            Offered::Full => {
                self.counters.dropped(DropCause::QueueFull, 1);
                return false;
            }
        };
        if !sent {
            self.counters.dropped(DropCause::Closed, 1);
        }
        sent
    }
}

/// Sends a flush and waits up to `timeout` for it.
pub(crate) fn flush(
    tx: &Sender<Msg>,
    room: &Room,
    waker: &Waker,
    timeout: Option<Duration>,
) -> bool {
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let wait_for_room = |m| room.send(tx, m, || waker.wake());
    if offer(tx, Msg::Flush(done_tx), false, wait_for_room) != Offered::Queued {
        return false;
    }
    waker.wake();
    wait(|| match timeout {
        Some(t) => done_rx.recv_timeout(t).unwrap_or(false),
        None => done_rx.recv().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_pool_is_bounded_and_moves_bundles() {
        let pool = BodyPool::default();
        let mut spare: Vec<Vec<u8>> = (0..BODY_POOL_MAX + 10)
            .map(|_| Vec::with_capacity(64))
            .collect();
        pool.give_back(&mut spare);
        assert!(spare.is_empty());
        assert_eq!(pool.0.lock().unwrap().len(), BODY_POOL_MAX);
        let mut local = Vec::new();
        pool.take_bundle(&mut local);
        assert_eq!(local.len(), BODY_BUNDLE);
        assert!(local.iter().all(|b| b.is_empty() && b.capacity() >= 64));
        assert_eq!(pool.0.lock().unwrap().len(), BODY_POOL_MAX - BODY_BUNDLE);
        let empty = BodyPool::default();
        let mut none = Vec::new();
        empty.take_bundle(&mut none);
        assert!(none.is_empty());
        pool.trim(BODY_POOL_IDLE);
        assert_eq!(pool.0.lock().unwrap().len(), BODY_POOL_IDLE);
        pool.trim(BODY_POOL_MAX);
        assert_eq!(
            pool.0.lock().unwrap().len(),
            BODY_POOL_IDLE,
            "trim never adds"
        );
    }

    /// The buffers a backlog left in the pool (here put there directly)
    /// are freed down to the idle bound once the worker has nothing to do.
    #[test]
    fn an_idle_worker_trims_the_body_pool() {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let (_layer, guard) = crate::AuditLayer::builder()
            .file(dir.path())
            .build::<tracing_subscriber::Registry>()
            .unwrap();
        let handle = guard.handle();
        let pool = &handle.counters.bodies;
        let mut burst: Vec<Vec<u8>> = (0..BODY_POOL_IDLE * 4)
            .map(|_| Vec::with_capacity(512))
            .collect();
        pool.give_back(&mut burst);
        assert_eq!(pool.0.lock().unwrap().len(), BODY_POOL_IDLE * 4);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.0.lock().unwrap().len() > BODY_POOL_IDLE {
            assert!(
                std::time::Instant::now() < deadline,
                "still {} buffers after 10 s idle",
                pool.0.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.0.lock().unwrap().len(), BODY_POOL_IDLE);
    }

    #[test]
    fn callers_hash_from_a_backlog_until_the_worker_keeps_up() {
        let h = CallersHash::default();
        assert!(!h.get(), "off at the start");
        h.after_drain(HELP_FROM - 1, true);
        assert!(!h.get());
        h.after_drain(HELP_FROM, true);
        assert!(h.get(), "a drain of HELP_FROM messages is a backlog");
        h.after_drain(HELP_UNTIL + 1, true);
        assert!(h.get(), "between the two: unchanged");
        h.after_drain(HELP_UNTIL, true);
        assert!(!h.get(), "kept up");
        h.after_drain(1, false);
        assert!(h.get(), "stopped at the batch limit: a backlog");
        h.after_drain(0, true);
        assert!(!h.get());
    }

    /// Records whose callers began hashing their lines (here held so;
    /// bodies of every length modulo a block) are written as the worker
    /// writes the others: every line checks and links, unkeyed and keyed
    /// (and not under another key), and the stats count them.
    #[test]
    fn records_the_callers_began_hashing_verify_as_the_others() {
        use tracing_subscriber::layer::SubscriberExt;
        for key in [None, Some(b"a chain key".to_vec())] {
            let dir = tempfile::tempdir().unwrap();
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o700);
            std::fs::set_permissions(dir.path(), private).unwrap();
            let mut b = crate::AuditLayer::builder().file(dir.path());
            if let Some(k) = &key {
                b = b.chain_key(k.clone());
            }
            let (layer, guard) = b.build().unwrap();
            let handle = guard.handle();
            handle.counters.callers_hash.pin(true);
            let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
            tracing::dispatcher::with_default(&dispatch, || {
                for i in 0..200usize {
                    tracing::info!(audit.event = "data_access", pad = "x".repeat(i), "m");
                }
            });
            drop(dispatch);
            drop(guard);
            let st = handle.stats();
            assert_eq!(st.records_prehashed, 200, "{st:?}");
            assert_eq!(
                st.records_written, 202,
                "with audit_started and audit_stopped"
            );
            // Every line's hash is its bytes' and links to the one before.
            let hasher = crate::record::chain::Hasher::new(key.as_deref());
            let other = crate::record::chain::Hasher::new(Some(b"another key"));
            let mut prev = crate::record::GENESIS.to_owned();
            let mut n = 0;
            for f in std::fs::read_dir(dir.path()).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_none_or(|e| e != "jsonl") {
                    continue;
                }
                let text = std::fs::read(&f).unwrap();
                for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let link = crate::record::chain::check_line(&hasher, line).unwrap();
                    assert_eq!((link.seq, link.prev_hash), (n, prev.as_str()));
                    if key.is_some() {
                        assert!(crate::record::chain::check_line(&other, line).is_err());
                    }
                    prev = link.hash.to_owned();
                    n += 1;
                }
            }
            assert_eq!(n, 202);
        }
    }
}
