//! What every forwarder shares (the syslog sinks and the OTLP sink): where
//! its thread takes records from ([`Input`]: the trail after a durable
//! [`Cursor`], or a bounded queue), the worker's end ([`Forwarder`]), the
//! counters, and the bookkeeping of a sink reading the trail (what it may
//! have sent, what was delivered, what the next start resends).
//!
//! May use: `record`, `queue`, and the file sink's reading side.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use crate::queue::{offer, Offered, QueueMode};
use crate::record::layout::OwnedLine;
use crate::sink::cursor::Cursor;
use crate::sink::file::follow::Follower;
use crate::sink::{LastError, LineSink, Progress, SealedLine};

/// Where a sink reading the trail finds it: the audit directory, the file
/// names, the chain, and the last `seq` already in the files at start.
#[derive(Debug, Clone)]
pub(crate) struct TrailSource {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) prefix: String,
    pub(crate) suffix: String,
    pub(crate) chain_id: String,
    pub(crate) written: Option<u64>,
    /// The chain's hash: a line is forwarded only if it checks under it.
    pub(crate) hasher: crate::record::chain::Hasher,
}

/// The pipeline worker's end of a forwarder (a syslog or OTLP sink).
#[derive(Debug)]
pub(crate) struct Forwarder {
    /// The queue (a sink without the trail).
    tx: Option<SyncSender<OwnedLine>>,
    mode: QueueMode,
    counters: Arc<ForwardCounters>,
    /// Tells the sink's thread that no more lines come, even while the
    /// queue is still full (a closed channel is only seen once empty).
    closing: Arc<AtomicBool>,
    /// A sink reading the trail: told what was written, and woken.
    progress: Option<Arc<Progress>>,
    thread: Thread,
}

impl Forwarder {
    /// The progress of a sink reading the trail (for the file writer).
    pub(crate) fn progress(&self) -> Option<Arc<Progress>> {
        self.progress.clone()
    }
}

impl LineSink for Forwarder {
    fn send_line(&mut self, line: &SealedLine<'_>) {
        if let Some(p) = &self.progress {
            // Already in the file: the sink reads it there.
            p.written.fetch_max(line.seq + 1, SeqCst);
            self.thread.unpark();
            return;
        }
        let Some(tx) = &self.tx else { return };
        let lossy = self.mode == QueueMode::Lossy;
        if offer(tx, OwnedLine::new(line), lossy, |l| tx.send(l).is_ok()) != Offered::Queued {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    fn close(&mut self) {
        self.closing.store(true, SeqCst);
        self.tx = None;
        self.thread.unpark();
    }
}

/// What a kind of forwarder did (one set for the syslog sinks, one for the
/// OTLP sinks), read into [`crate::AuditStats`].
#[derive(Debug, Default)]
pub(crate) struct ForwardCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) resent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Records a receiver refused (OTLP partial success), each retried.
    pub(crate) rejected: AtomicU64,
    pub(crate) last_error: Mutex<Option<LastError>>,
    /// The progress of each sink reading the trail.
    pub(crate) progress: Mutex<Vec<Arc<Progress>>>,
    /// How to shut down each sink's open connection (see [`Aborts`]).
    pub(crate) aborts: Aborts,
}

/// A way to shut down one open connection from another thread.
pub(crate) type Abort = Box<dyn Fn() + Send>;

/// Each sink's open connection, as a way to shut it down from another
/// thread: a socket call that began before shutdown (a 5 s read of an
/// answer that never comes) cannot learn the deadline, and shutting the
/// socket down is what ends it at once. The guard does that when a sink's
/// thread outlives the shutdown grace, so the thread counts what it had not
/// delivered and ends, instead of being left behind uncounted.
#[derive(Default)]
pub(crate) struct Aborts(
    Mutex<std::collections::HashMap<u64, Abort>>,
    std::sync::atomic::AtomicBool,
);

impl std::fmt::Debug for Aborts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "Aborts({n} open)")
    }
}

impl Aborts {
    /// Sink `id`'s connection is now `abort` (`None`: it has none).
    pub(crate) fn set(&self, id: u64, abort: Option<Abort>) {
        if let Ok(mut m) = self.0.lock() {
            match abort {
                Some(a) => m.insert(id, a),
                None => m.remove(&id),
            };
        }
    }

    /// Whether the guard shut the connections down: the sinks give up now,
    /// their grace is over.
    pub(crate) fn fired(&self) -> bool {
        self.1.load(SeqCst)
    }

    /// Shuts down every open connection.
    pub(crate) fn abort_all(&self) {
        self.1.store(true, SeqCst);
        if let Ok(mut m) = self.0.lock() {
            for (_, a) in m.drain() {
                a();
            }
        }
    }
}

impl ForwardCounters {
    /// Counts an error and keeps it as the last one.
    pub(crate) fn error(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        LastError::set(&self.last_error, message);
    }

    /// Records written and not yet delivered, summed over the sinks that
    /// read the trail.
    pub(crate) fn behind(&self) -> u64 {
        self.progress
            .lock()
            .map_or(0, |all| all.iter().map(|p| p.behind()).sum())
    }
}

/// Where a sink's thread takes its records from.
pub(crate) enum Input {
    /// The bounded queue the worker fills (no file sink, or not asked).
    Queue(Receiver<OwnedLine>),
    /// The trail files, after the durable cursor.
    Trail(Box<TrailInput>),
}

/// The state of a sink reading the trail.
pub(crate) struct TrailInput {
    pub(crate) follower: Follower,
    pub(crate) progress: Arc<Progress>,
    pub(crate) cursor: Cursor,
    /// Records up to here may have been sent by the process before.
    pub(crate) replay_until: Option<u64>,
    /// The last of those counted as resent.
    pub(crate) replayed: Option<u64>,
    /// TCP/TLS: `seq` and size of the messages written lately, covering at
    /// least [`Self::window_limit`] bytes: what both kernels' buffers may
    /// hold, resent from the trail if the stream dies.
    pub(crate) written: VecDeque<(u64, usize)>,
    pub(crate) written_bytes: usize,
    pub(crate) window_limit: usize,
}

impl TrailInput {
    /// Notes a message written to a TCP/TLS stream.
    pub(crate) fn wrote(&mut self, seq: u64, len: usize) {
        self.written.push_back((seq, len));
        self.written_bytes += len;
        while let Some(&(_, first)) = self.written.front() {
            if self.written_bytes - first < self.window_limit {
                break;
            }
            self.written.pop_front();
            self.written_bytes -= first;
        }
    }

    /// The stream died: reading starts again at the oldest message that
    /// may still have been in a kernel buffer. Returns how many are sent
    /// again.
    pub(crate) fn rewind(&mut self) -> u64 {
        let n = self.written.len() as u64;
        if let Some(&(first, _)) = self.written.front() {
            self.follower.restart_at(first);
        }
        self.written.clear();
        self.written_bytes = 0;
        n
    }
}

/// What the kernels may buffer on one TCP connection: the largest send
/// buffer here and the largest receive buffer there (taken to be this
/// host's), from Linux's `tcp_wmem` and `tcp_rmem`; 16 MiB where unknown.
fn tcp_buffers() -> usize {
    let max = |name: &str| -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    match (max("tcp_wmem"), max("tcp_rmem")) {
        (Some(w), Some(r)) => w + r,
        _ => 16 << 20,
    }
}

/// One record taken from the input.
pub(crate) enum Taken {
    Line(OwnedLine),
    Trail(u64, Vec<u8>),
}

/// What the input had.
pub(crate) enum Next {
    Took(Taken),
    /// Nothing now (after waiting, when allowed to).
    Idle,
    /// Closed and nothing left.
    Done,
}

impl Input {
    /// The next record: waiting up to half a second when `wait`, else
    /// returning at once. `closed` says the pipeline closed the sink.
    pub(crate) fn next(&mut self, wait: bool, closed: bool, counters: &ForwardCounters) -> Next {
        match self {
            Input::Queue(rx) if wait => match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => Next::Took(Taken::Line(line)),
                Err(RecvTimeoutError::Timeout) => Next::Idle,
                Err(RecvTimeoutError::Disconnected) => Next::Done,
            },
            Input::Queue(rx) => match rx.try_recv() {
                Ok(line) => Next::Took(Taken::Line(line)),
                Err(mpsc::TryRecvError::Empty) => Next::Idle,
                Err(mpsc::TryRecvError::Disconnected) => Next::Done,
            },
            Input::Trail(t) => {
                let written = t.progress.written.load(SeqCst).checked_sub(1);
                let got = t.follower.next_record(written);
                for (seq, file) in t.follower.take_refused() {
                    let msg = format!(
                        "a line of {file} laid out as record seq {seq} does not check under the chain's key (edited after it was written, or planted): not forwarded; the relay sees a gap there"
                    );
                    eprintln!("tracing-audit: {msg}");
                    counters.error(msg);
                }
                match got {
                    Ok(Some((seq, line))) => return Next::Took(Taken::Trail(seq, line)),
                    Ok(None) => {}
                    Err(e) => counters.error(format!("reading the trail to forward: {e}")),
                }
                if closed {
                    // The worker wrote its last record before it closed
                    // the sink: what is not read now is not there.
                    return Next::Done;
                }
                if wait {
                    // The worker wakes this thread after each write.
                    std::thread::park_timeout(Duration::from_millis(500));
                }
                Next::Idle
            }
        }
    }
}

/// The trail input: the cursor loaded, the follower placed after it, the
/// progress registered with the counters.
pub(crate) fn trail_input(
    t: &TrailSource,
    cursor_name: &str,
    counters: &ForwardCounters,
) -> (TrailInput, Arc<Progress>) {
    let (cursor, loaded, problem) = Cursor::load(&t.dir, cursor_name, &t.chain_id);
    if let Some(p) = problem {
        eprintln!("tracing-audit: {p}");
        counters.error(p);
    }
    let next = loaded.delivered.map_or(0, |d| d + 1);
    let progress = Arc::new(Progress::default());
    progress
        .written
        .store(t.written.map_or(0, |w| w + 1), SeqCst);
    progress.delivered.store(next, SeqCst);
    if let Ok(mut all) = counters.progress.lock() {
        all.push(progress.clone());
    }
    // What the process before may have sent past its cursor: sent
    // again now, counted as resent.
    let replay_until = match (loaded.may_have_sent, t.written) {
        (Some(l), Some(w)) => Some(l.min(w)),
        _ => None,
    };
    let input = TrailInput {
        follower: Follower::new(&t.dir, &t.prefix, &t.suffix, next, t.hasher.clone()),
        progress: progress.clone(),
        cursor,
        replay_until,
        replayed: loaded.delivered,
        written: VecDeque::new(),
        written_bytes: 0,
        window_limit: tcp_buffers(),
    };
    (input, progress)
}

/// The input of a new forwarder: the trail when there is one and the sink
/// reads it (`cursor_name` then names its cursor), else a queue of
/// `capacity`; with the queue's sending end, or the trail's progress.
pub(crate) fn input(
    trail: Option<&TrailSource>,
    cursor_name: Option<&str>,
    capacity: usize,
    counters: &ForwardCounters,
) -> (Input, Option<SyncSender<OwnedLine>>, Option<Arc<Progress>>) {
    match (trail, cursor_name) {
        (Some(t), Some(name)) => {
            let (input, progress) = trail_input(t, name, counters);
            (Input::Trail(Box::new(input)), None, Some(progress))
        }
        _ => {
            let (tx, rx) = mpsc::sync_channel::<OwnedLine>(capacity);
            (Input::Queue(rx), Some(tx), None)
        }
    }
}

impl Forwarder {
    /// The worker's end of a forwarder whose thread is `thread`.
    pub(crate) fn new(
        tx: Option<SyncSender<OwnedLine>>,
        mode: QueueMode,
        counters: Arc<ForwardCounters>,
        closing: Arc<AtomicBool>,
        progress: Option<Arc<Progress>>,
        thread: Thread,
    ) -> Self {
        Forwarder {
            tx,
            mode,
            counters,
            closing,
            progress,
            thread,
        }
    }
}

/// How far ahead of the message being sent the cursor's `sent` is
/// written: one write per this many messages, and after a kill at most
/// this many counted as resent that never went out.
pub(crate) const SENT_AHEAD: u64 = 128;

impl TrailInput {
    /// Before `seq` goes out (`have`: the highest `seq` taken so far): the
    /// cursor says first that it may have (`sent`, written [`SENT_AHEAD`]
    /// ahead, so once per that many; and the lease). A failed write is
    /// counted and the record sent anyway: delivery comes before the
    /// accounting of duplicates. A record the process before may have sent
    /// already is counted as resent (once).
    pub(crate) fn before_send(&mut self, seq: u64, have: u64, counters: &ForwardCounters) {
        if self.cursor.sent().is_none_or(|s| seq > s) {
            if let Err(e) = self.cursor.sending(have.max(seq).min(seq + SENT_AHEAD - 1)) {
                counters.error(format!("cannot write the forward cursor: {e}"));
            }
        }
        if self.replay_until.is_some_and(|r| seq <= r) && self.replayed.is_none_or(|d| seq > d) {
            self.replayed = Some(seq);
            counters.resent.fetch_add(1, Relaxed);
        }
    }

    /// The relay has everything up to `seq` (written by [`Self::write_cursor`]).
    pub(crate) fn delivered_up_to(&mut self, seq: u64) {
        self.cursor.deliver(seq);
        self.progress.delivered.fetch_max(seq + 1, SeqCst);
    }

    /// Writes the cursor (synced at most once a second).
    pub(crate) fn write_cursor(&mut self, counters: &ForwardCounters) {
        if let Err(e) = self.cursor.write_and_sync_if_due() {
            counters.error(format!("cannot write the forward cursor: {e}"));
        }
    }

    /// At the end of the sink's thread: syncs the cursor and says what is
    /// left for the next start (`what` names the sink).
    pub(crate) fn stop(&mut self, counters: &ForwardCounters, what: &str) {
        if let Err(e) = self.cursor.write_and_sync() {
            counters.error(format!("cannot write the forward cursor: {e}"));
        }
        let behind = self.progress.behind();
        if behind > 0 {
            eprintln!(
                "tracing-audit: {what}: {behind} records not yet delivered stay in the trail; the next start sends them from the cursor"
            );
        }
    }
}

/// `d` ± 25 %.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = d.as_nanos() as u64;
    let spread = nanos / 4;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos() as u64)
        .unwrap_or(0);
    let offset = if spread == 0 { 0 } else { seed % (2 * spread) };
    Duration::from_nanos(nanos - spread + offset)
}

/// A forwarder thread's side of its input: the input, the pipeline's
/// "closing" flag, and the shutdown grace once closing began. Takes
/// records in order into the thread's pending list, framed by the caller.
pub(crate) struct Intake {
    pub(crate) input: Input,
    /// Set by the pipeline when it closes the forwarder.
    pub(crate) closing: Arc<AtomicBool>,
    /// When the shutdown grace ends (set once closing begins).
    pub(crate) deadline: Option<std::time::Instant>,
    grace: Duration,
}

/// What [`Intake::take`] did.
enum Step {
    /// A message went into the pending list.
    Took,
    Idle,
    Done,
}

impl Intake {
    pub(crate) fn new(input: Input, closing: Arc<AtomicBool>, grace: Duration) -> Self {
        Intake {
            input,
            closing,
            deadline: None,
            grace,
        }
    }

    /// Starts the shutdown grace (once): a receiver that is down then gets
    /// this long before what is left is given up.
    pub(crate) fn start_grace(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(std::time::Instant::now() + self.grace);
        }
    }

    /// Whether the pipeline is closing (starting the grace if so).
    pub(crate) fn closing(&mut self) -> bool {
        let closing = self.closing.load(SeqCst);
        if closing {
            self.start_grace();
        }
        closing
    }

    /// Whether the shutdown grace has run out.
    pub(crate) fn expired(&self) -> bool {
        self.deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
    }

    /// Takes the next record into `out`, framed by `frame` (`None`: not a
    /// record after all, skipped).
    fn take<T>(
        &mut self,
        wait: bool,
        out: &mut VecDeque<T>,
        counters: &ForwardCounters,
        frame: &mut impl FnMut(Taken) -> Option<T>,
    ) -> Step {
        let closed = self.closing.load(SeqCst);
        loop {
            match self.input.next(wait, closed, counters) {
                Next::Took(t) => {
                    if let Some(m) = frame(t) {
                        out.push_back(m);
                        return Step::Took;
                    }
                }
                Next::Idle => return Step::Idle,
                Next::Done => return Step::Done,
            }
        }
    }

    /// Takes what the input holds into `out` (waiting for the first one
    /// while `out` is empty), up to `up_to`. Returns `false` when there is
    /// nothing left to do: closing, and nothing pending or left to read.
    pub(crate) fn fill<T>(
        &mut self,
        out: &mut VecDeque<T>,
        up_to: usize,
        counters: &ForwardCounters,
        mut frame: impl FnMut(Taken) -> Option<T>,
    ) -> bool {
        self.closing();
        while out.is_empty() {
            // Closing: what is still there is taken without waiting.
            let wait = self.deadline.is_none();
            match self.take(wait, out, counters, &mut frame) {
                Step::Took => break,
                Step::Idle if !wait => return false,
                Step::Idle => {
                    self.closing();
                }
                Step::Done if wait => self.start_grace(),
                Step::Done => return false,
            }
        }
        // A batch, also while closing: a batch ends with a wait for the
        // receiver's answers, which one record at a time would make a
        // round trip per record.
        self.take_more(out, up_to, counters, frame);
        true
    }

    /// Moves what the input has now into `out` (in order) until `out`
    /// holds `up_to`; a closed queue starts the grace.
    pub(crate) fn take_more<T>(
        &mut self,
        out: &mut VecDeque<T>,
        up_to: usize,
        counters: &ForwardCounters,
        mut frame: impl FnMut(Taken) -> Option<T>,
    ) {
        while out.len() < up_to {
            match self.take(false, out, counters, &mut frame) {
                Step::Took => {}
                Step::Idle => break,
                Step::Done => {
                    self.start_grace();
                    break;
                }
            }
        }
    }

    /// Sleeps `d`; before the grace began, wakes early once the pipeline
    /// closes (a long backoff must not outlast the shutdown grace).
    pub(crate) fn pause(&self, d: Duration) {
        let until_closing = self.deadline.is_none();
        let end = std::time::Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || (until_closing && self.closing.load(SeqCst)) {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }
}

/// `raw` made safe for a file name: ASCII letters, digits, `.`, `-` and
/// `_` are kept, everything else becomes `-`.
pub(crate) fn file_safe(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect()
}
