//! The pipeline worker: the one thread that orders, writes and syncs records.
//!
//! Each turn of its loop is one [`Step`]:
//!
//! 1. **Intake.** When the last batch is written, it takes record bodies
//!    from the queue, gives each its `seq` and hash ([`Chain::seal`]) and
//!    appends the sealed line to the batch. Before the first record of a
//!    batch it asks the file writer whether the rotation period turned; a new
//!    file begins with an `audit_file_opened` record, so a batch, and every
//!    record in it, goes whole into one file.
//! 2. **Write** the batch in one call, then hand each line to the
//!    forwarders (syslog). A failed write leaves the batch whole (the writer
//!    cut the file back) for a retry.
//! 3. **Sync** at once when the batch held a durable record or a flush (one
//!    `fdatasync` answers every waiter: group commit), otherwise at most
//!    `sync_interval` after the first unsynced write. A waiter is answered
//!    only by a sync that succeeded after its record was written; while
//!    syncs fail, durable callers wait.
//!    The waiters of a sync are answered by an [`Acker`] thread when there
//!    are several: each answer wakes a sleeping caller (a system call, and
//!    on a VM often an interrupt to the other CPU), and the worker goes on
//!    to the next batch's write and sync meanwhile.
//! 4. **Failure** of a write or sync starts an episode: said once on
//!    stderr, counted, `storage_failing` set; retries back off from 10 ms to
//!    1 s; intake stops while a batch is unwritten, so the queue pushes back.
//!
//! While records keep coming, the worker polls the queue (a short
//! `park_timeout`) instead of blocking on it, so an ordinary `send` never
//! has to wake it with a system call; callers that wait unpark it.
//!
//! **Shutdown** begins when the guard sets the `closed` flag: from then on
//! new records are refused and counted by the submitter. The worker takes
//! what is queued, writes `audit_stopped` and syncs, all before the
//! shutdown grace runs out. Past it, what is still unwritten is counted as
//! dropped and said on stderr. Last, it waits for submissions still under
//! way and counts whatever they queued: every record is written or counted.
//!
//! It also writes the trail's own records: `audit_started` (how the chain
//! was resumed, what junk it skipped, the retention in force),
//! `audit_file_opened`, `records_lost` (exact counts by cause),
//! `audit_config_warning`, `audit_stopped`, and with a signing key
//! `checkpoint` ([`crate::record::checkpoint`]): right after the Nth
//! record since the last one, the application's and the trail's own alike
//! (inside a batch if need be), after a batch once T seconds have passed
//! since the last, and after `audit_stopped`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing_core::Level;

use crate::pipeline::{Counters, DropCause, Msg, Pending, BODY_BUNDLE, BODY_KEEP, BODY_POOL_IDLE};
use crate::queue::ring::Receiver;
use crate::record::chain::{Chain, Sealed};
use crate::record::checkpoint::CheckpointKey;
use crate::record::draft::Draft;
use crate::record::encode;
use crate::record::layout::{KeyFields, SEAL_MAX_EXTRA};
use crate::record::{encode_body, RecordConstants, Source};
use crate::sink::file::{FileWriter, Resume};
use crate::sink::{LineSink, SealedLine};

/// Largest batch written in one call.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Messages the worker receives ahead of the one it seals (see
/// [`Worker::drain`]).
const LOOK_AHEAD: usize = 4;

/// The most bytes `m` adds to a batch.
fn planned_len(m: &Msg) -> usize {
    match m {
        Msg::Record(p) => p.body.len() + SEAL_MAX_EXTRA,
        Msg::Flush(_) | Msg::Wake => 0,
    }
}

/// Asks the CPU to bring `bytes` into its caches, without waiting (a hint:
/// nothing on targets without one).
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64; a prefetch never faults and reads
        // nothing into the program, and `line` is a live slice anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
/// After the last message, how long the worker polls before it blocks.
const POLL_FOR: Duration = Duration::from_millis(5);
/// How often it looks while polling.
const POLL_EVERY: Duration = Duration::from_micros(200);
/// First and longest wait before retrying a failed write or sync.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One line of the batch: where it ends, and what a forwarder needs of it.
#[derive(Debug, Clone, Copy)]
struct LineEnd {
    end: usize,
    seq: u64,
    body_at: usize,
    keys: KeyFields,
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
    pub(crate) shutdown_grace: Duration,
    pub(crate) constants: RecordConstants,
    pub(crate) value_limit: usize,
    pub(crate) resume: Resume,
    /// The retention in force, as JSON (sealed into the trail).
    pub(crate) retention: String,
    /// Said once in the trail after `audit_started` (e.g. the directory mode).
    pub(crate) config_warnings: Vec<String>,
    /// What the global-filter probe found when the layer joined a subscriber.
    pub(crate) probe: crate::pipeline::ProbeSlot,
    /// The free-space watermark, if one is set.
    pub(crate) space: Option<SpaceWatch>,
    pub(crate) pid: u32,
    /// `OnError::Drop`: records that cannot be written are dropped and
    /// counted instead of waiting (durable and own records excepted).
    pub(crate) drop_on_error: bool,
    /// Signed checkpoints, with a signing key.
    pub(crate) checkpoints: Option<Checkpoints>,
}

/// When the next signed checkpoint is due.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    pub(crate) key: CheckpointKey,
    /// The key's id, written into each checkpoint.
    pub(crate) key_id: String,
    /// At most this many records between two checkpoints…
    pub(crate) every: u64,
    /// …and at most this long.
    pub(crate) interval: Duration,
    /// Records sealed since the last checkpoint.
    pub(crate) since: u64,
    pub(crate) last_at: Instant,
}

/// A free-space watermark the worker checks about once a second.
pub(crate) struct SpaceWatch {
    pub(crate) watermark: crate::sink::file::SpaceLeft,
    pub(crate) handler: Option<crate::sink::file::SpaceHandler>,
    pub(crate) low: bool,
    pub(crate) last_check: Option<Instant>,
}

impl SpaceWatch {
    /// The watch a file sink asks for (`space_left`), if any.
    pub(crate) fn new(sink: &crate::sink::file::FileSink) -> Option<Self> {
        let watermark = sink.space_left?;
        Some(SpaceWatch {
            watermark,
            handler: sink.on_space_low.clone(),
            low: false,
            last_check: None,
        })
    }
}

impl std::fmt::Debug for SpaceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceWatch")
            .field("watermark", &self.watermark)
            .field("low", &self.low)
            .finish_non_exhaustive()
    }
}

/// How often free space is looked at.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What one turn of the loop decided.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Done,
}

/// The worker's moving parts.
struct State {
    batch: Vec<u8>,
    /// With `OnError::Drop`: the chain as it was before the batch's first
    /// record (with the records counted since the last checkpoint then),
    /// and the records of the batch that must not be dropped.
    batch_chain: Option<(Chain, u64)>,
    kept: Vec<(uuid::Uuid, Vec<u8>, KeyFields)>,
    /// Durable records taken off the queue while the file fails (with
    /// `OnError::Drop`), sealed first when it works again.
    held: Vec<Pending>,
    /// The last drain stopped because the queue was empty.
    queue_empty: bool,
    /// Answers the waiters of a successful sync.
    acker: Acker,
    /// Where each line of `batch` ends, and its key fields (for the
    /// forwarders).
    lines: Vec<LineEnd>,
    records_in_batch: u64,
    /// Of those, checkpoints: not the application's, and not kept when
    /// `OnError::Drop` drops the batch (so not counted as dropped).
    checkpoints_in_batch: u64,
    /// Of those, records whose line start the caller hashed.
    prehashed_in_batch: u64,
    /// Waiters of what is in `batch`.
    batch_waiters: Vec<SyncSender<bool>>,
    /// Waiters whose records are written and wait for a sync.
    sync_waiters: Vec<SyncSender<bool>>,
    /// Written and not yet synced since.
    unsynced_since: Option<Instant>,
    want_sync: bool,
    lost_reported: u64,
    capture: Draft,
    body: Vec<u8>,
    level_checked: bool,
    /// `audit_started` is still to be sealed (the file was not ready).
    started_pending: bool,
    /// Set when shutdown began: the grace's end.
    deadline: Option<Instant>,
    stopped_sealed: bool,
    /// When the next retry of a failed write or sync may run.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_busy: Instant,
    /// The file the batch goes to was just created (set by `prepare`).
    opened: Option<crate::sink::file::writer::Opened>,
    /// Sealed bodies' buffers, on their way back to the callers.
    spare: Vec<Vec<u8>>,
    /// [`Worker::drain`]'s messages received ahead (empty between calls;
    /// kept for its allocation).
    ahead: VecDeque<Msg>,
}

impl Worker {
    /// Runs until shutdown (or until every sender is gone).
    pub(crate) fn run(mut self) {
        let mut state = State {
            batch: Vec::with_capacity(64 * 1024),
            batch_chain: None,
            kept: Vec::new(),
            held: Vec::new(),
            queue_empty: false,
            acker: Acker::default(),
            lines: Vec::new(),
            records_in_batch: 0,
            checkpoints_in_batch: 0,
            prehashed_in_batch: 0,
            batch_waiters: Vec::new(),
            sync_waiters: Vec::new(),
            unsynced_since: None,
            want_sync: true,
            lost_reported: 0,
            capture: Draft::new(self.value_limit),
            body: Vec::new(),
            level_checked: false,
            started_pending: true,
            deadline: None,
            stopped_sealed: false,
            retry_at: None,
            backoff: BACKOFF_MIN,
            last_busy: Instant::now(),
            opened: None,
            spare: Vec::with_capacity(BODY_BUNDLE),
            ahead: VecDeque::with_capacity(LOOK_AHEAD),
        };
        /// Marks the worker gone however `run` ends (a panic included), so
        /// `health()` can never report a dead pipeline as healthy.
        struct Gone(Arc<Counters>);
        impl Drop for Gone {
            fn drop(&mut self) {
                self.0.worker_gone.store(true, SeqCst);
            }
        }
        let _gone = Gone(self.counters.clone());
        while self.step(&mut state) == Step::Continue {}
        self.finish();
    }

    fn step(&mut self, state: &mut State) -> Step {
        if state.deadline.is_none() && self.counters.closed.load(SeqCst) {
            state.deadline = Some(Instant::now() + self.shutdown_grace);
        }
        let now = Instant::now();
        let healthy = state.retry_at.is_none_or(|t| now >= t);
        let stopping = state.deadline.is_some();
        if stopping && !state.stopped_sealed {
            // Read before the last look at the queue: once nothing is under
            // way, every later submission sees `closed` and is refused, so
            // nothing can follow `audit_stopped`.
            let settled = self.counters.inflight.is_zero();
            self.take_all(state);
            self.report_lost(state);
            self.check_max_level(state);
            if settled && state.queue_empty && self.prepare(state) {
                self.stopped(state);
                self.checkpoint(state, true);
                state.stopped_sealed = true;
                state.want_sync = true;
            }
        } else if !stopping && healthy && state.batch.is_empty() && self.prepare(state) {
            self.seal_held(state);
            self.intake(state);
            self.checkpoint(state, false);
        } else if !stopping && !healthy && self.drop_on_error {
            self.shed(state);
        }
        if !stopping {
            self.report_lost(state);
            self.check_max_level(state);
            self.check_space(state);
        }
        // Not right after this step's own failure (a file that could not be
        // started, say): a sync of the file before it would otherwise call
        // the storage recovered while the new one still fails.
        if healthy && state.retry_at.is_none_or(|t| Instant::now() >= t) {
            self.write_and_sync(state, stopping);
        }
        if let Some(deadline) = state.deadline {
            let settled = state.stopped_sealed
                && state.batch.is_empty()
                && state.unsynced_since.is_none()
                && state.sync_waiters.is_empty();
            if settled {
                return Step::Done;
            }
            if Instant::now() >= deadline {
                self.give_up(state);
                return Step::Done;
            }
        }
        if let Some(t) = state.retry_at {
            let wait = t.saturating_duration_since(Instant::now());
            std::thread::park_timeout(wait.min(Duration::from_millis(50)));
        }
        Step::Continue
    }

    /// Makes the file ready for a new batch (rotation, `audit_started`).
    /// Only when the batch is empty: a batch never spans two files.
    fn prepare(&mut self, state: &mut State) -> bool {
        if !state.batch.is_empty() {
            return true;
        }
        let now = SystemTime::now();
        if let Some(file) = &mut self.file {
            if file.rotation_due(now) {
                match file.rotate(now) {
                    Ok(opened) => {
                        self.recovered();
                        state.opened = Some(opened);
                    }
                    Err(e) => {
                        self.failure(state, format!("cannot start the audit file: {e}"));
                        return false;
                    }
                }
            }
        }
        if state.started_pending {
            state.started_pending = false;
            self.started(state);
            for w in std::mem::take(&mut self.config_warnings) {
                eprintln!("tracing-audit: {w}");
                self.own_record(state, "audit_config_warning", &Level::WARN, &w, |_| {});
            }
        } else if let Some(o) = state.opened.take().filter(|o| o.created) {
            let retention = self.retention.clone();
            let msg = format!("audit file {} opened", o.name);
            let algorithm = self.chain.hasher().algorithm();
            self.own_record(state, "audit_file_opened", &Level::INFO, &msg, |c| {
                c.detail_str("chain", algorithm);
                c.detail_str("opened_file", &o.name);
                match &o.previous {
                    Some(p) => c.detail_str("previous_file", p),
                    None => c.detail_raw("previous_file", b"null"),
                }
                c.detail_raw("retention", retention.as_bytes());
            });
        }
        state.opened = None;
        self.report_forward_gaps(state);
        true
    }

    /// Puts on the record that retention deleted records a syslog sink
    /// reading the trail had not delivered (`forward_gap`), and counts them.
    fn report_forward_gaps(&mut self, state: &mut State) {
        let gaps = self
            .file
            .as_mut()
            .map(FileWriter::take_forward_gaps)
            .unwrap_or_default();
        for g in gaps {
            let n = g.to - g.from + 1;
            self.counters.forward_gap_records.fetch_add(n, Relaxed);
            let msg = format!(
                "retention deleted {} with records {}..={} ({n}) not yet delivered by a syslog sink; they never reach it",
                g.file, g.from, g.to
            );
            eprintln!("tracing-audit: {msg}");
            self.own_record(state, "forward_gap", &Level::WARN, &msg, |c| {
                c.detail_str("file", &g.file);
                c.detail_u64("from_seq", g.from);
                c.detail_u64("to_seq", g.to);
                c.detail_u64("records", n);
            });
        }
    }

    /// Takes what is queued, blocking a little when nothing is.
    fn intake(&mut self, state: &mut State) {
        let timeout = match state.unsynced_since {
            Some(t) => self.sync_interval.saturating_sub(t.elapsed()),
            None => self.sync_interval,
        };
        let limit = self.batch_limit();
        let mut n = self.drain(state, limit);
        self.counters.callers_hash.after_drain(n, state.queue_empty);
        if n == 0 {
            if state.last_busy.elapsed() < POLL_FOR {
                // Recently busy: poll, so senders never pay for a wake-up.
                std::thread::park_timeout(POLL_EVERY.min(timeout));
            } else {
                // Idle: what a burst left in the body pool goes back.
                self.counters.bodies.trim(BODY_POOL_IDLE);
                match self.rx.recv_timeout(timeout) {
                    Ok(m) => {
                        n += 1;
                        self.take(state, m);
                        self.counters.room.made();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        self.counters.closed.store(true, SeqCst);
                    }
                }
            }
            n += self.drain(state, limit);
        }
        if n > 0 {
            state.last_busy = Instant::now();
        }
    }

    /// Most bytes in a batch: [`MAX_BATCH_BYTES`], or less when the file's
    /// size limit is nearer (the batch is never empty: a record that does
    /// not fit the room gets the batch, and the file after it rotates).
    fn batch_limit(&self) -> usize {
        let room = self.file.as_ref().map_or(usize::MAX, |f| f.room());
        MAX_BATCH_BYTES.min(room.max(1))
    }

    /// During shutdown: takes what is queued (bounded by the queue's
    /// capacity, since new records are refused) into the current batch, as
    /// far as the file's size limit lets it; the rest waits for the next
    /// batch, and `audit_stopped` for an empty queue.
    fn take_all(&mut self, state: &mut State) {
        if !self.prepare(state) {
            return;
        }
        let limit = match self.file.as_ref().map(|f| f.room()) {
            Some(room) if room < usize::MAX => room.max(1),
            _ => usize::MAX,
        };
        self.drain(state, limit);
    }

    /// Takes what is queued, without blocking; returns how many messages.
    /// Sets `queue_empty` when it stopped because nothing was left.
    ///
    /// It receives up to [`LOOK_AHEAD`] messages ahead of the one it seals
    /// and asks the CPU to fetch their bodies, which the callers wrote on
    /// other cores, so those fetches overlap the hashing of the records
    /// before them instead of stalling the copy into the batch. Messages are
    /// taken in the order received, and none is left ahead when it returns.
    /// A message is received only while the batch, with what is ahead
    /// counted at its sealed size at most ([`SEAL_MAX_EXTRA`]), is under
    /// `max_bytes`: a batch passes it by at most one record, as without the
    /// look-ahead. A record followed by another is sealed together with it
    /// ([`Chain::seal_pair`]: their hashing interleaved), which the
    /// look-ahead had already received.
    fn drain(&mut self, state: &mut State, max_bytes: usize) -> usize {
        let mut n = 0;
        state.queue_empty = false;
        let mut ahead = std::mem::take(&mut state.ahead);
        let mut ahead_bytes = 0;
        loop {
            while ahead.len() < LOOK_AHEAD
                && !state.queue_empty
                && state.batch.len() + ahead_bytes < max_bytes
            {
                match self.rx.try_recv() {
                    Ok(m) => {
                        if let Msg::Record(p) = &m {
                            prefetch(&p.body);
                        }
                        ahead_bytes += planned_len(&m);
                        ahead.push_back(m);
                    }
                    Err(TryRecvError::Empty) => state.queue_empty = true,
                    Err(TryRecvError::Disconnected) => {
                        self.counters.closed.store(true, SeqCst);
                        state.queue_empty = true;
                    }
                }
            }
            let Some(m) = ahead.pop_front() else { break };
            ahead_bytes -= planned_len(&m);
            n += 1;
            // Two records in a row are sealed together, their hashing
            // interleaved.
            // Not across a checkpoint due after the first.
            let next = match (&m, ahead.front()) {
                (Msg::Record(_), Some(Msg::Record(_))) if !self.checkpoint_due_after(1) => {
                    ahead.pop_front()
                }
                _ => None,
            };
            if let Some(next) = &next {
                ahead_bytes -= planned_len(next);
                n += 1;
            }
            match (m, next) {
                (Msg::Record(a), Some(Msg::Record(b))) => self.seal_pair(state, a, b),
                (m, next) => {
                    self.take(state, m);
                    if let Some(next) = next {
                        self.take(state, next);
                    }
                }
            }
            // Right after the record that reached the count, not after the
            // batch: a batch can hold many times `every` records, and the
            // count bounds what a cut tail can hide.
            self.checkpoint_if_counted(state);
        }
        state.ahead = ahead;
        if n > 0 {
            self.counters.room.made();
        }
        n
    }

    fn take(&mut self, state: &mut State, m: Msg) {
        match m {
            Msg::Record(p) => {
                // A durable record is synced with this batch (group commit).
                state.want_sync |= p.done.is_some();
                let keep = p.done.is_some();
                self.seal(state, p, keep);
            }
            Msg::Flush(w) => {
                state.batch_waiters.push(w);
                state.want_sync = true;
            }
            Msg::Wake => {}
        }
    }

    /// Seals `p` into the batch. With `OnError::Drop`, `keep` marks a
    /// record that a failed write must not drop (durable, or the trail's own).
    fn seal(&mut self, state: &mut State, p: Pending, keep: bool) {
        self.before_seal(state, &p, keep);
        state.prehashed_in_batch += u64::from(p.mid.is_some());
        let sealed = self
            .chain
            .seal(&mut state.batch, &p.id, &p.body, p.mid.as_ref());
        self.after_seal(state, p, sealed);
    }

    /// Seals two records from the queue, as two [`Worker::seal`] calls
    /// would (see [`Chain::seal_pair`]).
    fn seal_pair(&mut self, state: &mut State, a: Pending, b: Pending) {
        for p in [&a, &b] {
            state.want_sync |= p.done.is_some();
        }
        self.before_seal(state, &a, a.done.is_some());
        self.before_seal(state, &b, b.done.is_some());
        state.prehashed_in_batch += u64::from(a.mid.is_some()) + u64::from(b.mid.is_some());
        let (sa, sb) = self.chain.seal_pair(
            &mut state.batch,
            (&a.id, &a.body, a.mid.as_ref()),
            (&b.id, &b.body, b.mid.as_ref()),
        );
        self.after_seal(state, a, sa);
        self.after_seal(state, b, sb);
    }

    /// Before sealing `p`: with `OnError::Drop`, the chain as it was before
    /// the batch's first record, and the records a failed write must keep.
    fn before_seal(&mut self, state: &mut State, p: &Pending, keep: bool) {
        if self.drop_on_error {
            if state.records_in_batch == 0 {
                let since = self.checkpoints.as_ref().map_or(0, |c| c.since);
                state.batch_chain = Some((self.chain.clone(), since));
            }
            if keep {
                state.kept.push((p.id, p.body.clone(), p.keys));
            }
        }
    }

    /// After sealing `p`: its body buffer back to the pool, the counts, and
    /// its line's place for the forwarders.
    fn after_seal(&mut self, state: &mut State, p: Pending, sealed: Sealed) {
        let mut body = p.body;
        if body.capacity() <= BODY_KEEP {
            body.clear();
            state.spare.push(body);
            if state.spare.len() >= BODY_BUNDLE {
                self.counters.bodies.give_back(&mut state.spare);
            }
        }
        if let Some(c) = &mut self.checkpoints {
            c.since += 1;
        }
        if !self.forwards.is_empty() {
            state.lines.push(LineEnd {
                end: sealed.end,
                seq: sealed.seq,
                body_at: sealed.body_at,
                keys: p.keys,
            });
        }
        state.records_in_batch += 1;
        if let Some(w) = p.done {
            state.batch_waiters.push(*w);
        }
    }

    /// Writes the batch, then syncs if a waiter, the interval or shutdown
    /// asks for it.
    fn write_and_sync(&mut self, state: &mut State, stopping: bool) {
        if !state.batch.is_empty() || !state.batch_waiters.is_empty() {
            if let Err(e) = self.write_batch(state) {
                self.failure(state, format!("audit file write failed: {e}"));
                if self.drop_on_error {
                    self.drop_batch(state);
                }
                return;
            }
        }
        let due = state
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= self.sync_interval);
        let wanted = state.want_sync || due || (stopping && state.stopped_sealed);
        if !wanted || (state.unsynced_since.is_none() && state.sync_waiters.is_empty()) {
            state.want_sync = false;
            return;
        }
        match self.file.as_mut().map_or(Ok(()), FileWriter::sync) {
            Ok(()) => {
                if state.unsynced_since.is_some() {
                    self.counters.syncs.fetch_add(1, Relaxed);
                }
                self.take_writer_warning();
                // A failed fdatasync repaired by a rewrite still counts.
                self.count_sync_errors(0);
                self.recovered();
                self.report_storage_loss(state);
                state.unsynced_since = None;
                state.want_sync = false;
                state.acker.synced(&mut state.sync_waiters);
            }
            Err(e) => {
                self.take_writer_warning();
                self.count_sync_errors(1);
                self.failure(state, format!("audit file sync failed: {e}"));
            }
        }
    }

    /// Writes the whole batch or nothing of it.
    fn write_batch(&mut self, state: &mut State) -> std::io::Result<()> {
        if !state.batch.is_empty() {
            let bytes = state.batch.len() as u64;
            match &mut self.file {
                Some(file) => {
                    self.counters.writes.fetch_add(1, Relaxed);
                    // The writer keeps the batch's buffer for a rewrite and
                    // hands an empty one back.
                    let written = file.write(&mut state.batch)?;
                    forward(&mut self.forwards, written, &state.lines);
                }
                None => {
                    forward(&mut self.forwards, &state.batch, &state.lines);
                    state.batch.clear();
                }
            }
            self.take_writer_warning();
            self.counters
                .records_written
                .fetch_add(state.records_in_batch, Relaxed);
            self.counters
                .records_prehashed
                .fetch_add(state.prehashed_in_batch, Relaxed);
            self.counters.bytes_written.fetch_add(bytes, Relaxed);
            state.unsynced_since.get_or_insert_with(Instant::now);
            state.lines.clear();
            state.records_in_batch = 0;
            state.checkpoints_in_batch = 0;
            state.prehashed_in_batch = 0;
            state.batch_chain = None;
            state.kept.clear();
        }
        state.sync_waiters.append(&mut state.batch_waiters);
        if self.file.is_none() {
            state.unsynced_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Adds the writer's failed `fdatasync` calls to `sync_errors`, at
    /// least `at_least` of them.
    fn count_sync_errors(&mut self, at_least: u64) {
        let failed = self.file.as_mut().map_or(0, FileWriter::take_failed_syncs);
        self.counters
            .sync_errors
            .fetch_add(failed.max(at_least), Relaxed);
    }

    fn take_writer_warning(&mut self) {
        if let Some(w) = self.file.as_mut().and_then(FileWriter::take_warning) {
            eprintln!("tracing-audit: {w}");
            self.counters.error(&self.counters.write_errors, w);
        }
    }

    /// Puts on the record that the storage lost bytes it had confirmed
    /// synced (found when the file was reopened after a failure): the
    /// trail then says where its gap comes from, next to it.
    fn report_storage_loss(&mut self, state: &mut State) {
        let Some((file, bytes)) = self.file.as_mut().and_then(FileWriter::take_storage_loss) else {
            return;
        };
        let msg = format!(
            "the storage lost {bytes} bytes of {file} after confirming them synced; acknowledged records before this one may be missing"
        );
        self.own_record(state, "audit_storage_lost", &Level::ERROR, &msg, |c| {
            c.detail_str("file", &file);
            c.detail_u64("bytes", bytes);
        });
        state.want_sync = true;
    }

    /// A failed write or sync: counted, said once per episode, retried
    /// after a growing pause.
    fn failure(&mut self, state: &mut State, msg: String) {
        self.counters
            .error(&self.counters.write_errors, msg.clone());
        if !self.counters.storage_failing.load(SeqCst) {
            // The time first, then the flag: whoever sees the flag sees when.
            if let Ok(mut since) = self.counters.failing_since.lock() {
                *since = Some(SystemTime::now());
            }
        }
        if !self.counters.storage_failing.swap(true, SeqCst) {
            let meanwhile = if self.drop_on_error {
                "records are dropped and counted until it works (on_error = drop); durable records wait"
            } else {
                "nothing is dropped: records wait, and once the queue is full so do their callers (on_error = block)"
            };
            eprintln!("tracing-audit: {msg}; retrying ({meanwhile})");
            state.backoff = BACKOFF_MIN;
        } else {
            state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
        }
        state.retry_at = Some(Instant::now() + state.backoff);
    }

    fn recovered(&mut self) {
        if self.counters.storage_failing.swap(false, SeqCst) {
            if let Ok(mut since) = self.counters.failing_since.lock() {
                *since = None;
            }
            eprintln!("tracing-audit: the audit file is writable and synced again");
        }
    }

    /// Whether `more` further records would bring the count since the
    /// last checkpoint to its limit.
    fn checkpoint_due_after(&self, more: u64) -> bool {
        self.checkpoints
            .as_ref()
            .is_some_and(|c| c.since + more >= c.every)
    }

    /// A checkpoint right after the record that reached the count, wherever
    /// it was sealed. The guard keeps [`Self::checkpoint`]'s clock read (its
    /// interval test) off the per-record path.
    fn checkpoint_if_counted(&mut self, state: &mut State) {
        if self.checkpoint_due_after(0) {
            self.checkpoint(state, false);
        }
    }

    /// Writes a signed checkpoint of the last record sealed, if one is
    /// due (or `at_stop`). Not kept by `OnError::Drop`: a checkpoint names
    /// the record before it, so after a dropped batch it would name a
    /// record the trail does not have; the next one comes soon after.
    fn checkpoint(&mut self, state: &mut State, at_stop: bool) {
        let Some(c) = &self.checkpoints else { return };
        let due = c.since > 0 && (c.since >= c.every || c.last_at.elapsed() >= c.interval);
        if !(due || at_stop) {
            return;
        }
        let Some((seq, hash)) = self.chain.last() else {
            return;
        };
        let chain_id = self.chain.chain_id().to_owned();
        let hash = hash.to_owned();
        let signature = c.key.sign(&chain_id, seq, &hash);
        let key_id = c.key_id.clone();
        let msg = format!("signed checkpoint of the trail up to seq {seq}");
        self.own_record_kept(state, "checkpoint", &Level::INFO, &msg, false, |d| {
            d.detail_str("chain_id", &chain_id);
            d.detail_u64("seq", seq);
            d.detail_str("hash", &hash);
            d.detail_str("key_id", &key_id);
            d.detail_str("signature", &signature);
            if at_stop {
                d.detail_raw("at_stop", b"true");
            }
        });
        state.checkpoints_in_batch += 1;
        if let Some(c) = &mut self.checkpoints {
            c.since = 0;
            c.last_at = Instant::now();
        }
    }

    /// Writes a record of the crate's own into the batch, and a checkpoint
    /// right after it if it reached the count: the trail's own records
    /// count as the application's do, so the tail a cut can hide stays at
    /// most `every` records whoever wrote them.
    fn own_record(
        &mut self,
        state: &mut State,
        event: &str,
        level: &Level,
        message: &str,
        details: impl FnOnce(&mut Draft),
    ) {
        self.own_record_kept(state, event, level, message, true, details);
        self.checkpoint_if_counted(state);
    }

    /// [`Self::own_record`]; `keep`: whether `OnError::Drop` keeps it
    /// when its batch fails.
    fn own_record_kept(
        &mut self,
        state: &mut State,
        event: &str,
        level: &Level,
        message: &str,
        keep: bool,
        details: impl FnOnce(&mut Draft),
    ) {
        state.capture.reset(self.value_limit);
        state.capture.set_event_type(event);
        state.capture.set_message(message);
        state
            .capture
            .set_context_if_absent(crate::record::fields::ContextField::Actor, "tracing-audit");
        details(&mut state.capture);
        state.body.clear();
        let source = Source {
            target: "tracing_audit",
            level,
            spans: &[],
        };
        let now = SystemTime::now();
        let keys = encode_body(
            &mut state.body,
            &mut state.capture,
            now,
            &self.constants,
            source,
            self.value_limit,
        );
        let body = std::mem::take(&mut state.body);
        self.seal(
            state,
            Pending {
                id: crate::record::uuid_at(now),
                body,
                keys,
                done: None,
                mid: None,
            },
            keep,
        );
    }

    /// `OnError::Drop`, after a failed write: the batch's records are
    /// dropped and counted, except those kept (durable, own), which are
    /// sealed again from where the chain stood before the batch: the trail
    /// stays contiguous. The waiters stay: their records are still there.
    /// The count toward the next checkpoint goes back with the chain (a
    /// checkpoint in the dropped batch is dropped with it), and a
    /// checkpoint follows the kept records if they reach it.
    fn drop_batch(&mut self, state: &mut State) {
        let Some((chain, since)) = state.batch_chain.take() else {
            return;
        };
        let kept = std::mem::take(&mut state.kept);
        // A checkpoint dropped with the batch is not a record lost: the
        // next one, after the kept records, replaces it.
        let dropped = state
            .records_in_batch
            .saturating_sub(state.checkpoints_in_batch + kept.len() as u64);
        self.chain = chain;
        if let Some(c) = &mut self.checkpoints {
            c.since = since;
        }
        state.batch.clear();
        state.lines.clear();
        state.records_in_batch = 0;
        state.checkpoints_in_batch = 0;
        state.prehashed_in_batch = 0;
        for (id, body, keys) in kept {
            let p = Pending {
                id,
                body,
                keys,
                done: None,
                mid: None,
            };
            self.seal(state, p, true);
        }
        self.checkpoint_if_counted(state);
        self.counters.dropped(DropCause::WriteError, dropped);
    }

    /// `OnError::Drop`, while the file fails: takes what is queued so that
    /// callers never wait for the disk; ordinary records are dropped and
    /// counted, durable ones held (their callers wait), flushes answered
    /// "not synced".
    fn shed(&mut self, state: &mut State) {
        let mut dropped = 0;
        for _ in 0..65_536 {
            match self.rx.try_recv() {
                Ok(Msg::Record(p)) if p.done.is_some() => state.held.push(p),
                Ok(Msg::Record(_)) => dropped += 1,
                Ok(Msg::Flush(w)) => {
                    let _ = w.try_send(false);
                }
                Ok(Msg::Wake) => {}
                Err(_) => break,
            }
        }
        self.counters.room.made();
        self.counters.dropped(DropCause::WriteError, dropped);
    }

    /// Seals the durable records held while the file failed, in order.
    fn seal_held(&mut self, state: &mut State) {
        for p in std::mem::take(&mut state.held) {
            state.want_sync = true;
            self.seal(state, p, true);
            self.checkpoint_if_counted(state);
        }
    }

    fn started(&mut self, state: &mut State) {
        let algorithm = self.chain.hasher().algorithm();
        let resumed = self.resume.last.as_ref().map(|(s, _)| *s);
        let junk = std::mem::take(&mut self.resume.junk);
        let foreign = self.resume.clean_stop && !junk.is_empty();
        let clean_stop: &[u8] = match (resumed, self.resume.clean_stop) {
            (None, _) => b"null",
            (Some(_), true) => b"true",
            (Some(_), false) => b"false",
        };
        let completed = self.resume.completed.take();
        let pid = self.pid;
        let retention = self.retention.clone();
        let opened = state
            .opened
            .as_ref()
            .filter(|o| o.created)
            .map(|o| o.name.clone());
        let msg = match (resumed, foreign) {
            (_, true) => format!(
                "audit trail resumed after seq {}; {} piece(s) of foreign bytes follow the last clean stop",
                resumed.unwrap_or(0),
                junk.len()
            ),
            (Some(s), false) => format!("audit trail resumed after seq {s}"),
            (None, false) => "audit trail started".to_owned(),
        };
        if foreign {
            eprintln!("tracing-audit: {msg}: the trail was written to by someone else (verify reports it)");
        }
        let level = if junk.is_empty() {
            Level::INFO
        } else {
            Level::WARN
        };
        self.own_record(state, "audit_started", &level, &msg, |c| {
            c.detail_str("chain", algorithm);
            c.detail_u64("pid", pid as u64);
            c.detail_str("crate_version", env!("CARGO_PKG_VERSION"));
            match resumed {
                Some(s) => c.detail_u64("resumed_after_seq", s),
                None => c.detail_raw("resumed_after_seq", b"null"),
            }
            // Whether the run before this one stopped cleanly (null: none).
            c.detail_raw("clean_stop", clean_stop);
            match &opened {
                Some(f) => c.detail_str("opened_file", f),
                None => c.detail_raw("opened_file", b"null"),
            }
            c.detail_raw("retention", retention.as_bytes());
            if let Some((file, bytes)) = &completed {
                let mut json = b"{\"file\":".to_vec();
                encode::write_plain_str(&mut json, file);
                json.extend_from_slice(b",\"bytes_added\":");
                encode::write_u64(&mut json, *bytes);
                json.push(b'}');
                c.detail_raw("completed_record", &json);
            }
            if !junk.is_empty() {
                let mut json = vec![b'['];
                for (i, j) in junk.iter().enumerate() {
                    if i > 0 {
                        json.push(b',');
                    }
                    j.write_json(&mut json);
                }
                json.push(b']');
                let key = if foreign { "foreign_tail" } else { "torn_tail" };
                c.detail_raw(key, &json);
            }
        });
    }

    fn report_lost(&mut self, state: &mut State) {
        let c = &self.counters;
        let dropped = c.records_dropped.load(Relaxed);
        // Said once the file works again: while it fails, one record with
        // the whole count follows, instead of one per retry.
        if dropped <= state.lost_reported
            || (c.storage_failing.load(SeqCst) && !c.closed.load(SeqCst))
            || !self.prepare(state)
        {
            return;
        }
        let c = &self.counters;
        let n = dropped - state.lost_reported;
        state.lost_reported = dropped;
        let full = c.dropped_queue_full.load(Relaxed);
        let closed = c.dropped_closed.load(Relaxed);
        let panic = c.dropped_panic.load(Relaxed);
        let unwritten = c.dropped_unwritten.load(Relaxed);
        let write_error = c.dropped_write_error.load(Relaxed);
        let mut causes = Vec::new();
        for (k, what) in [
            (c.dropped_forked.load(Relaxed), "emitted in a forked child"),
            (full, "the queue was full (lossy mode)"),
            (closed, "sent after shutdown began"),
            (panic, "a panic while recording the event"),
            (unwritten, "unwritable before the shutdown grace ran out"),
            (write_error, "the audit file failed (on_error = drop)"),
        ] {
            if k > 0 {
                causes.push(format!("{k} {what}"));
            }
        }
        let msg = format!("audit records were dropped: {}", causes.join("; "));
        self.own_record(state, "records_lost", &Level::ERROR, &msg, |c| {
            c.detail_u64("count", n);
            c.detail_u64("total", dropped);
            c.detail_u64("queue_full", full);
            c.detail_u64("after_shutdown", closed);
            c.detail_u64("panic", panic);
            c.detail_u64("write_error", write_error);
        });
    }

    /// A global filter (an `EnvFilter` added with `.with(..)`, say) caps
    /// the level of every layer, audit included: events below it never
    /// reach this crate, not even as a first record. So the check does not
    /// wait for one: as soon as the layer is part of a subscriber, the
    /// layer probes it once (`layer::filter::probe`) and, if an INFO
    /// audit event would be discarded by a global filter, says so in the
    /// trail and on stderr, naming the fix.
    fn check_max_level(&mut self, state: &mut State) {
        use crate::pipeline::Probed;
        if state.level_checked {
            return;
        }
        let found = self.probe.lock().ok().and_then(|p| *p);
        let Some(found) = found else { return };
        let Probed::DiscardedByGlobalFilter(through) = found else {
            state.level_checked = true;
            return;
        };
        if !self.prepare(state) {
            return;
        }
        state.level_checked = true;
        let max = through.to_string();
        let msg = format!(
            "a global filter caps tracing at {max}: INFO audit events (and any less severe than that) are discarded before they reach the audit layer; give that filter to the fmt layer with .with_filter(..) instead"
        );
        eprintln!("tracing-audit: {msg}");
        self.own_record(state, "audit_config_warning", &Level::WARN, &msg, |c| {
            c.detail_str("max_level", &max);
        });
    }

    /// Once a second: has free space crossed the watermark? Each crossing
    /// is a record, a stats flag, a line on stderr and the callback.
    fn check_space(&mut self, state: &mut State) {
        let (Some(space), Some(file)) = (&mut self.space, &self.file) else {
            return;
        };
        if space
            .last_check
            .is_some_and(|t| t.elapsed() < SPACE_CHECK_EVERY)
        {
            return;
        }
        space.last_check = Some(Instant::now());
        let Ok((available, total)) = crate::sink::file::free_space(file.dir()) else {
            return;
        };
        let watermark = space.watermark.bytes(total);
        let low = available < watermark;
        if low == space.low {
            return;
        }
        if !self.prepare(state) {
            return;
        }
        let Some(space) = &mut self.space else { return };
        space.low = low;
        let report = crate::sink::file::SpaceLow {
            available,
            total,
            watermark,
            low,
        };
        if let Some(h) = space.handler.clone() {
            let r = report.clone();
            let _ = std::thread::Builder::new()
                .name("tracing-audit-space".into())
                .spawn(move || h(&r));
        }
        self.counters.space_low.store(low, SeqCst);
        let (event, level, msg) = if low {
            (
                "disk_space_low",
                Level::WARN,
                format!("free space on the audit file system is below the watermark: {available} of {total} bytes free, watermark {watermark}"),
            )
        } else {
            (
                "disk_space_recovered",
                Level::INFO,
                format!("free space on the audit file system is above the watermark again: {available} of {total} bytes free"),
            )
        };
        eprintln!("tracing-audit: {msg}");
        self.own_record(state, event, &level, &msg, |c| {
            c.detail_u64("available_bytes", available);
            c.detail_u64("total_bytes", total);
            c.detail_u64("watermark_bytes", watermark);
        });
    }

    fn stopped(&mut self, state: &mut State) {
        let written = self.counters.records_written.load(Relaxed) + state.records_in_batch + 1;
        let dropped = self.counters.records_dropped.load(Relaxed);
        let last = self.chain.next_seq();
        // Not `own_record`: the checkpoint at stop follows this one.
        self.own_record_kept(
            state,
            "audit_stopped",
            &Level::INFO,
            "audit trail stopped",
            true,
            |c| {
                c.detail_u64("records_written", written);
                c.detail_u64("records_dropped", dropped);
                c.detail_u64("last_seq", last);
            },
        );
    }

    /// The shutdown grace ran out: count what is not written, say so, and
    /// release every waiter.
    fn give_up(&mut self, state: &mut State) {
        let held = std::mem::take(&mut state.held);
        for p in &held {
            if let Some(w) = &p.done {
                let _ = w.try_send(false);
            }
        }
        let lost = state.records_in_batch + held.len() as u64;
        self.counters.dropped(DropCause::Unwritten, lost);
        let unsynced = state.unsynced_since.is_some();
        eprintln!(
            "tracing-audit: shutdown grace of {:?} ran out: {lost} audit record(s) could not be written{}",
            self.shutdown_grace,
            if unsynced {
                "; records written since the last good sync may not be on disk"
            } else {
                ""
            }
        );
        state.batch.clear();
        state.lines.clear();
        state.records_in_batch = 0;
        state.checkpoints_in_batch = 0;
        for w in state
            .batch_waiters
            .drain(..)
            .chain(state.sync_waiters.drain(..))
        {
            let _ = w.try_send(false);
        }
    }

    /// After the loop: waits (briefly) for submissions under way and counts
    /// whatever is still queued, then closes the forwarders.
    fn finish(&mut self) {
        self.counters.closed.store(true, SeqCst);
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let settled = self.counters.inflight.is_zero();
            while let Ok(m) = self.rx.try_recv() {
                match m {
                    Msg::Record(_) => self.counters.dropped(DropCause::Unwritten, 1),
                    Msg::Flush(w) => {
                        let _ = w.try_send(false);
                    }
                    Msg::Wake => {}
                }
            }
            self.counters.room.made();
            if settled || Instant::now() >= until {
                break;
            }
            std::thread::yield_now();
        }
        let refused = self.counters.dropped_closed.load(Relaxed);
        if refused > 0 {
            eprintln!("tracing-audit: {refused} audit record(s) emitted after shutdown began were refused (counted in dropped_after_shutdown)");
        }
        for f in &mut self.forwards {
            f.close();
        }
    }
}

/// Waiters of one sync from which they are answered on the acker thread.
const ACK_AWAY_FROM: usize = 2;

/// Answers the waiters of a successful sync with `true`.
///
/// With one waiter the worker answers it itself: handing it over would cost
/// the same wake-up. With more, the list goes to a thread of its own
/// (started the first time), and the worker writes and syncs the next batch
/// while the callers are woken one by one: measured on the durable bench,
/// the worker spent more time in those wake-ups than in `fdatasync`. An
/// answer is never sent before the sync that covers its record succeeded,
/// and every list handed over is answered before the acker is dropped (the
/// worker's end joins the thread), so a caller never waits past shutdown.
#[derive(Default)]
struct Acker {
    tx: Option<std::sync::mpsc::Sender<Vec<SyncSender<bool>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The thread could not be started (or is gone): answer inline.
    inline: bool,
}

impl Acker {
    /// Answers every waiter in `waiters` (leaving it empty).
    fn synced(&mut self, waiters: &mut Vec<SyncSender<bool>>) {
        if waiters.len() >= ACK_AWAY_FROM && !self.inline {
            if self.tx.is_none() {
                self.start();
            }
            if let Some(tx) = &self.tx {
                match tx.send(std::mem::take(waiters)) {
                    Ok(()) => return,
                    // Gone (it cannot panic, but if it were): answer here.
                    Err(std::sync::mpsc::SendError(back)) => {
                        *waiters = back;
                        self.tx = None;
                        self.inline = true;
                    }
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.try_send(true);
        }
    }

    fn start(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<SyncSender<bool>>>();
        match std::thread::Builder::new()
            .name("tracing-audit-ack".into())
            .spawn(move || {
                for list in rx {
                    for w in list {
                        let _ = w.try_send(true);
                    }
                }
            }) {
            Ok(h) => {
                self.tx = Some(tx);
                self.thread = Some(h);
            }
            Err(e) => {
                self.inline = true;
                eprintln!("tracing-audit: cannot start the durable acknowledgement thread ({e}); the worker answers its waiters itself");
            }
        }
    }
}

impl Drop for Acker {
    /// Every list handed over is answered before this returns.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// Hands complete lines of `bytes` (those ending within it) to the
/// forwarders, each with its key fields.
fn forward(forwards: &mut [Box<dyn LineSink>], bytes: &[u8], lines: &[LineEnd]) {
    if forwards.is_empty() {
        return;
    }
    let mut start = 0;
    for l in lines {
        let Some(b) = bytes.get(start..l.end) else {
            break;
        };
        let line = SealedLine {
            bytes: b.strip_suffix(b"\n").unwrap_or(b),
            seq: l.seq,
            body_at: l.body_at,
            keys: l.keys,
        };
        for f in forwards.iter_mut() {
            f.send_line(&line);
        }
        start = l.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver as Rx};

    fn waiters(n: usize) -> (Vec<SyncSender<bool>>, Vec<Rx<bool>>) {
        (0..n).map(|_| sync_channel(1)).unzip()
    }

    #[test]
    fn one_waiter_is_answered_by_the_worker_itself() {
        let mut acker = Acker::default();
        let (mut tx, rx) = waiters(1);
        acker.synced(&mut tx);
        assert!(tx.is_empty());
        assert_eq!(rx[0].try_recv(), Ok(true));
        assert!(acker.thread.is_none(), "no thread for a single waiter");
    }

    /// Many lists handed over: every waiter is answered `true`, and all of
    /// them by the time the acker is dropped (the worker's end), never later.
    #[test]
    fn every_waiter_handed_over_is_answered_before_the_acker_is_dropped() {
        let mut acker = Acker::default();
        let mut all = Vec::new();
        for _ in 0..500 {
            let (mut tx, rx) = waiters(ACK_AWAY_FROM + 8);
            acker.synced(&mut tx);
            assert!(tx.is_empty());
            all.extend(rx);
        }
        assert!(acker.thread.is_some(), "several waiters go to the thread");
        drop(acker);
        for (i, rx) in all.iter().enumerate() {
            assert_eq!(rx.try_recv(), Ok(true), "waiter {i}");
        }
    }
}
