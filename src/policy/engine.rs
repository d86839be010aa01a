//! Counting audit events against policies, exactly, under any clock, in
//! bounded memory.
//!
//! # Semantics (what the property test's reference model also computes)
//! Every event counts **at its own timestamp**, whatever order events
//! arrive in (a clock that stepped back, records merged from many
//! instances). With `c(x)` the number of a policy's matching events with a
//! timestamp in the half-open window `(x − window, x]`:
//! - the policy is **over its threshold** at `x` when `c(x) ≥ threshold`;
//! - the set of such `x` is a union of intervals, the **episodes**; an
//!   **alert** (a crossing) is raised when an arriving event creates an
//!   episode that touches no earlier one. One alert per episode: a burst is
//!   one alert, and so is a steady stream that never lets the count drop.
//!   An event that joins two episodes raises nothing. The crossing's time
//!   is the episode's start (for events in time order, the event's own time).
//! - With `group_by`, each group (actor, ip, resource or session) has its own
//!   window and episodes.
//!
//! # State and its bounds
//! Per window (a policy, or one group of it):
//! - the matching timestamps, sorted and **thinned**: in a run of
//!   `2·threshold + 1` events that fits in one window, the middle one can
//!   never change `min(c(x), threshold)` for any `x`, now or after any later
//!   event, so it is dropped. At most about `2·threshold` timestamps per
//!   window length are kept, and at most [`kept_cap`] in all; the oldest go
//!   first, and the time of the last one forgotten is the **horizon**.
//! - the episodes (at most [`MAX_EPISODES`]).
//!
//! An event is evaluated exactly when its window does not reach back past
//! the horizon (always for an event no older than the newest one seen);
//! otherwise it is still counted and evaluated with what is kept, and the
//! policy's `inexact` count says so.
//!
//! Retention and the recent-window count are 64 time buckets each: a report's
//! counts may include events up to one bucket (1/64 of the period) outside
//! it at either edge; reports state that width.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::record::fields::{Outcome, Risk};

use super::config::{GroupBy, Policy};

/// A point on the policy timeline: nanoseconds since the Unix epoch plus
/// [`EPOCH`], so that readings before 1970 order correctly.
pub(crate) type Nanos = u64;

/// The Unix epoch on the policy timeline.
pub(crate) const EPOCH: Nanos = 1 << 63;

const BUCKETS: u64 = 64;

/// Episodes kept per window.
pub(crate) const MAX_EPISODES: usize = 1024;

/// Timestamps kept per window: enough for four full windows at the
/// threshold, and at least 256.
pub(crate) fn kept_cap(threshold: usize) -> usize {
    threshold.saturating_mul(4).saturating_add(4).max(256)
}

/// Where an observed event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The application.
    App,
    /// The alert thread: an alert record or an `on_alert` callback's event.
    /// Counted only by policies that name its kind.
    Alert,
    /// The alert thread, handling an alert that an alert-thread event
    /// caused. Counted by no policy, so alerts cannot loop.
    ChainedAlert,
}

/// One observed audit event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) actor: Option<&'a str>,
    pub(crate) resource: Option<&'a str>,
    pub(crate) ip: Option<&'a str>,
    pub(crate) session: Option<&'a str>,
    pub(crate) outcome: Outcome,
    pub(crate) risk: Risk,
    pub(crate) at: Nanos,
    pub(crate) source: Source,
}

impl Observed<'_> {
    fn group_key(&self, by: GroupBy) -> &str {
        let v = match by {
            GroupBy::Actor => self.actor,
            GroupBy::Ip => self.ip,
            GroupBy::Resource => self.resource,
            GroupBy::Session => self.session,
        };
        v.unwrap_or(NO_KEY)
    }
}

/// The group key of events that lack the grouping field.
pub(crate) const NO_KEY: &str = "(none)";

/// A threshold crossing: the start of a new episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crossing {
    pub(crate) policy: usize,
    pub(crate) count: u64,
    pub(crate) at: Nanos,
    pub(crate) actor: Option<String>,
    pub(crate) event_type: String,
    /// The group's key, for a policy with `group_by`.
    pub(crate) group: Option<String>,
    /// Caused by an event from the alert thread.
    pub(crate) chained: bool,
}

/// A word-at-a-time hash: each 8-byte word goes through a folded multiply
/// (the 128-bit product's halves xor-ed, as foldhash and wyhash do), so the
/// low bits the table indexes with depend on every input bit. Keys here are
/// short (event kinds, actors, group keys) and the maps are bounded, so
/// SipHash's flood resistance buys nothing and costs more than the rest of
/// the lookup; byte-at-a-time FNV-1a was one dependent multiply per byte.
#[derive(Default)]
pub(crate) struct KeyHash(u64);

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 4 bytes of `s` from `at`, as a number (little-endian).
#[inline]
fn u32_at(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The 8 bytes of `s` from `at`, as a number (little-endian).
#[inline]
fn u64_at(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

impl KeyHash {
    #[inline]
    fn add(&mut self, word: u64) {
        let p = u128::from(self.0 ^ word) * u128::from(MIX);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl Hasher for KeyHash {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64_at(c, 0));
        }
        // The last 1-7 bytes in at most two loads (overlapping when they
        // are 5-7; with the length mixed in, still one word per text), not
        // a variable-length copy, which is a call to `memcpy`.
        let rest = chunks.remainder();
        let n = rest.len();
        let tail = match n {
            0 => return,
            1..=3 => {
                u64::from(rest[0]) | u64::from(rest[n / 2]) << 8 | u64::from(rest[n - 1]) << 16
            }
            _ => u64::from(u32_at(rest, 0)) | u64::from(u32_at(rest, n - 4)) << 32,
        };
        self.add(tail ^ ((n as u64) << 60));
    }
    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b) | 1 << 63);
    }
}
type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHash>>;

/// An owned map key: text that is looked up as [`Text`].
#[derive(Debug, Clone)]
pub(crate) struct Key(Box<str>);

impl Key {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(s.into())
    }
}

/// Borrowed key text, compared inline: equal hashes almost always mean
/// equal keys here, and `str`'s `==` calls `memcmp` for every hit (7 % of
/// the PolicyLayer's time by `perf`, for two lookups an event).
#[repr(transparent)]
pub(crate) struct Text(str);

impl Text {
    #[inline]
    fn of(s: &str) -> &Text {
        // SAFETY: `Text` is `repr(transparent)` over `str`, so the two
        // pointers have the same layout and metadata.
        unsafe { &*(s as *const str as *const Text) }
    }
}

impl PartialEq for Text {
    #[inline(always)]
    fn eq(&self, other: &Text) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        // Up to 16 bytes: the first and last eight (or four) bytes, which
        // overlap and so cover every byte; longer keys go to `memcmp`.
        let n = a.len();
        match n {
            0..=3 => a == b,
            4..=7 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, n - 4) == u32_at(b, n - 4),
            8..=16 => u64_at(a, 0) == u64_at(b, 0) && u64_at(a, n - 8) == u64_at(b, n - 8),
            _ => a == b,
        }
    }
}

impl Eq for Text {}

impl std::hash::Hash for Text {
    /// The bytes alone: a map key is one text, so the terminator `str`
    /// adds for composite keys (one more multiply) buys nothing here.
    #[inline(always)]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

impl std::borrow::Borrow<Text> for Key {
    fn borrow(&self) -> &Text {
        Text::of(&self.0)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        Text::of(&self.0) == Text::of(&other.0)
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Text::of(&self.0).hash(state);
    }
}

/// Counts in fixed-width time buckets; buckets older than the span before
/// the newest event are dropped. Late events land in their own bucket.
#[derive(Debug, Clone)]
struct Buckets {
    width: Nanos,
    span: Nanos,
    slots: usize,
    /// (bucket index, counts per slot), sorted by index
    ring: VecDeque<(u64, Vec<u64>)>,
    newest: Option<Nanos>,
}

impl Buckets {
    fn new(span: Nanos, slots: usize) -> Self {
        Buckets {
            width: (span / BUCKETS).max(1),
            span,
            slots,
            ring: VecDeque::new(),
            newest: None,
        }
    }

    #[inline]
    fn add(&mut self, at: Nanos, slot: usize) {
        // Another event at the newest time (the coarse clock makes that
        // the common case): its bucket is the last one, and nothing ages
        // out since `newest` does not move.
        if self.newest == Some(at) {
            if let Some((_, c)) = self.ring.back_mut() {
                c[slot] += 1;
                return;
            }
        }
        self.add_moving(at, slot);
    }

    /// [`Buckets::add`] for an event at another time than the newest.
    #[inline(never)]
    fn add_moving(&mut self, at: Nanos, slot: usize) {
        let newest = self.newest.map_or(at, |n| n.max(at));
        self.newest = Some(newest);
        let oldest_kept = newest.saturating_sub(self.span) / self.width;
        let idx = at / self.width;
        if idx < oldest_kept {
            return; // older than the span before the newest event
        }
        match self.ring.back_mut() {
            Some((i, c)) if *i == idx => c[slot] += 1,
            Some((i, _)) if *i > idx => {
                // A late event: its own bucket, made if need be.
                match self.ring.binary_search_by_key(&idx, |(i, _)| *i) {
                    Ok(at) => self.ring[at].1[slot] += 1,
                    Err(at) => self.ring.insert(at, (idx, self.fresh(slot))),
                }
            }
            _ => {
                let c = self.fresh(slot);
                self.ring.push_back((idx, c));
            }
        }
        while self.ring.front().is_some_and(|(i, _)| *i < oldest_kept) {
            self.ring.pop_front();
        }
    }

    fn fresh(&self, slot: usize) -> Vec<u64> {
        let mut c = vec![0; self.slots];
        c[slot] = 1;
        c
    }

    /// Counts in the buckets that overlap `(now − span, now]`.
    fn totals(&self, now: Nanos) -> Vec<u64> {
        let lo = now.saturating_sub(self.span) / self.width;
        let hi = now / self.width;
        let mut t = vec![0; self.slots];
        let from = self.ring.partition_point(|(i, _)| *i < lo);
        for (_, c) in self.ring.range(from..).take_while(|(i, _)| *i <= hi) {
            for (a, b) in t.iter_mut().zip(c) {
                *a += b;
            }
        }
        t
    }
}

/// A policy's window length, threshold and memory bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) len: Nanos,
    pub(crate) threshold: usize,
    pub(crate) cap: usize,
}

/// The exact alerting state of one policy, or of one group of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    /// Matching timestamps, sorted, thinned.
    times: VecDeque<Nanos>,
    /// Episodes `[start, end)`: disjoint, not touching.
    episodes: VecDeque<(Nanos, Nanos)>,
    /// Everything at or before this was forgotten.
    horizon: Option<Nanos>,
}

impl Window {
    /// Events within `(now − len, now]`, exact up to the threshold.
    pub(crate) fn count(&self, now: Nanos, shape: &Shape) -> usize {
        let hi = self.times.partition_point(|&t| t <= now);
        let lo = self
            .times
            .partition_point(|&t| t <= now.saturating_sub(shape.len));
        hi - lo
    }

    /// Adds an event at `at`, pushing the start of every new episode to
    /// `out`. Returns false when the evaluation may be inexact (the event's
    /// window reaches back past the horizon).
    pub(crate) fn insert(&mut self, at: Nanos, shape: &Shape, out: &mut Vec<Nanos>) -> bool {
        let exact = self
            .horizon
            .is_none_or(|h| at.saturating_sub(shape.len) >= h);
        let t = shape.threshold;
        if self.saturated_at(at, shape) {
            return exact;
        }
        let p = if self.times.back().is_none_or(|&b| b <= at) {
            self.times.len()
        } else {
            self.times.partition_point(|&x| x <= at)
        };
        self.times.insert(p, at);
        let n = self.times.len();
        if n >= t {
            // The runs of `t` consecutive timestamps that contain the new
            // one; each spanning less than a window is over the threshold
            // on [its last, its first + len). Starts and ends both grow.
            let mut run: Option<(Nanos, Nanos)> = None;
            for i in (p + 1).saturating_sub(t)..=p.min(n - t) {
                let (s, e) = (
                    self.times[i + t - 1],
                    self.times[i].saturating_add(shape.len),
                );
                if s >= e {
                    continue;
                }
                run = match run {
                    Some((a, b)) if s <= b => Some((a, b.max(e))),
                    Some((a, b)) => {
                        self.add_episode(a, b, out);
                        Some((s, e))
                    }
                    None => Some((s, e)),
                };
            }
            if let Some((a, b)) = run {
                self.add_episode(a, b, out);
            }
        }
        self.thin(p, shape);
        while self.times.len() > shape.cap {
            if let Some(old) = self.times.pop_front() {
                self.forget(old);
            }
        }
        while self.episodes.len() > MAX_EPISODES {
            if let Some((_, end)) = self.episodes.pop_front() {
                self.forget(end);
            }
        }
        exact
    }

    /// Whether one more event at `at` can leave the window as it is: the
    /// last `threshold` kept timestamps are all `at`, the newest time. Any
    /// window holding `at` already counts `threshold` events, so a further
    /// copy never changes `min(c(x), threshold)` for any `x`, now or later;
    /// for the same reason the episodes already cover `[at, at + len)`,
    /// the only interval the event could add. The coarse clock gives most
    /// events of a busy policy this path.
    fn saturated_at(&self, at: Nanos, shape: &Shape) -> bool {
        let (n, t) = (self.times.len(), shape.threshold);
        n >= t && self.times.back() == Some(&at) && self.times[n - t] == at
    }

    fn forget(&mut self, t: Nanos) {
        self.horizon = Some(self.horizon.map_or(t, |h| h.max(t)));
    }

    /// Merges `[a, b)` into the episodes; a new episode's start goes to `out`.
    fn add_episode(&mut self, a: Nanos, b: Nanos, out: &mut Vec<Nanos>) {
        // In time order, only the last episode can touch (the common case).
        match self.episodes.back_mut() {
            Some(last) if last.0 <= a && a <= last.1 => {
                last.1 = last.1.max(b);
                return;
            }
            Some(last) if last.1 < a => {}
            None => {}
            Some(_) => return self.merge_episode(a, b, out),
        }
        self.episodes.push_back((a, b));
        out.push(a);
    }

    /// [`add_episode`](Self::add_episode) for an interval that is not last.
    fn merge_episode(&mut self, a: Nanos, b: Nanos, out: &mut Vec<Nanos>) {
        // The episodes touching [a, b) (start <= b, end >= a) are a
        // contiguous range: episodes are sorted and disjoint.
        let first = self.episodes.partition_point(|&(_, e)| e < a);
        let last = self.episodes.partition_point(|&(s, _)| s <= b);
        if first == last {
            self.episodes.insert(first, (a, b));
            out.push(a);
            return;
        }
        let start = a.min(self.episodes[first].0);
        let end = b.max(self.episodes[last - 1].1);
        self.episodes.drain(first + 1..last);
        self.episodes[first] = (start, end);
    }

    /// Drops the middle of every run of `2t + 1` timestamps near `p` that
    /// fits in one window: with `t` others on each side it can never
    /// change whether a window holds `t` events.
    fn thin(&mut self, mut p: usize, shape: &Shape) {
        let t = shape.threshold;
        loop {
            let n = self.times.len();
            if n <= 2 * t {
                return;
            }
            let lo = p.saturating_sub(2 * t);
            let hi = p.min(n - 1 - 2 * t);
            let Some(k) = (lo..=hi).find(|&k| self.times[k + 2 * t] - self.times[k] < shape.len)
            else {
                return;
            };
            self.times.remove(k + t);
            if k + t < p {
                p -= 1;
            }
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.times.len()
    }
}

/// Per-group windows, the least recently used evicted past the bound.
#[derive(Debug, Clone)]
struct Groups {
    map: KeyMap<Arc<str>, (Window, u64)>,
    /// use tick → key
    order: BTreeMap<u64, Arc<str>>,
    tick: u64,
    max: usize,
    evicted: u64,
}

impl Groups {
    fn window(&mut self, key: &str) -> &mut Window {
        self.tick += 1;
        let tick = self.tick;
        if let Some((k, _)) = self.map.get_key_value(key) {
            let k = k.clone();
            if let Some(entry) = self.map.get_mut(key) {
                self.order.remove(&entry.1);
                entry.1 = tick;
            }
            self.order.insert(tick, k);
        } else {
            while self.map.len() >= self.max {
                let Some((_, old)) = self.order.pop_first() else {
                    break;
                };
                self.map.remove(&old);
                self.evicted += 1;
            }
            let k: Arc<str> = Arc::from(key);
            self.order.insert(tick, k.clone());
            self.map.insert(k, (Window::default(), tick));
        }
        match self.map.get_mut(key) {
            Some(entry) => &mut entry.0,
            None => unreachable!("inserted above"),
        }
    }
}

#[derive(Debug, Clone)]
enum Windows {
    One(Window),
    Grouped(Groups),
}

/// Approximate top-k counts in bounded memory: the kept keys' counts are
/// exact since they were last admitted; every event of an evicted key is in
/// `evicted`, so kept counts plus `evicted` is the total.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    counts: KeyMap<Key, u64>,
    /// Events counted under keys that were later evicted.
    pub(crate) evicted: u64,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k: k.max(1),
            counts: KeyMap::default(),
            evicted: 0,
        }
    }

    fn add(&mut self, key: &str) {
        if let Some(c) = self.counts.get_mut(Text::of(key)) {
            *c += 1;
            return;
        }
        if self.counts.len() >= self.k {
            self.evict_smaller_half();
        }
        self.counts.insert(Key::from(key), 1);
    }

    /// Evicts the half of the keys with the smallest counts (at least one;
    /// ties broken arbitrarily), counting their events as evicted. Once a
    /// half at a time, not the smallest key for every new one: a stream of
    /// keys never seen again (an attacker spraying user names into
    /// `auth_failure`) would otherwise cost a scan of all `k` counts per
    /// event, under the engine's lock (`top_k` 10 000: 24 µs an event, the
    /// bench's `--only policy-spray`), where this is O(1) amortised.
    #[cold]
    fn evict_smaller_half(&mut self) {
        let n = self.counts.len();
        let remove = (n / 2).max(1);
        let mut counts: Vec<u64> = self.counts.values().copied().collect();
        let (_, &mut at, _) = counts.select_nth_unstable(remove - 1);
        let below = counts.iter().filter(|&&c| c < at).count();
        let mut ties = remove - below;
        let mut evicted = 0;
        self.counts.retain(|_, c| {
            let goes = *c < at || (*c == at && ties > 0);
            if goes {
                if *c == at {
                    ties -= 1;
                }
                evicted += *c;
            }
            !goes
        });
        self.evicted += evicted;
    }

    pub(crate) fn to_map(&self) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), *v))
            .collect()
    }
}

/// One policy's counters.
#[derive(Debug, Clone)]
pub(crate) struct PolicyState {
    pub(crate) policy: Policy,
    shape: Shape,
    windows: Windows,
    retained: Buckets,
    recent: Buckets,
    pub(crate) alerts: u64,
    /// Events evaluated with part of their window forgotten.
    pub(crate) inexact: u64,
    /// The latest threshold crossings (at most [`MAX_CROSSINGS`]), for
    /// reports: when, the count, who and what brought it there.
    pub(crate) crossings: VecDeque<Crossing>,
}

/// Crossings kept per policy for reports.
pub(crate) const MAX_CROSSINGS: usize = 1000;

/// Saturating nanoseconds of a duration.
pub(crate) fn span(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl PolicyState {
    fn new(policy: Policy, max_groups: usize) -> Self {
        let slots = policy.require.len().max(1);
        let threshold = policy.threshold.clamp(1, usize::MAX as u64) as usize;
        let shape = Shape {
            len: span(policy.window),
            threshold,
            cap: kept_cap(threshold),
        };
        let windows = match policy.group_by {
            None => Windows::One(Window::default()),
            Some(_) => Windows::Grouped(Groups {
                map: KeyMap::default(),
                order: BTreeMap::new(),
                tick: 0,
                max: max_groups.max(1),
                evicted: 0,
            }),
        };
        PolicyState {
            shape,
            windows,
            retained: Buckets::new(span(policy.retention), slots),
            recent: Buckets::new(span(policy.window), 1),
            alerts: 0,
            inexact: 0,
            crossings: VecDeque::new(),
            policy,
        }
    }

    fn matches(&self, e: &Observed<'_>) -> bool {
        let p = &self.policy;
        p.outcome.is_none_or(|o| o == e.outcome)
            && p.min_risk.is_none_or(|r| e.risk >= r)
            && p.actor.as_deref().is_none_or(|a| e.actor == Some(a))
            && p.resource.as_deref().is_none_or(|r| e.resource == Some(r))
    }

    /// Counts within retention per required kind (or all, with no kinds).
    pub(crate) fn retained(&self, now: Nanos) -> Vec<u64> {
        self.retained.totals(now)
    }

    /// Count within the window, to one bucket.
    pub(crate) fn recent(&self, now: Nanos) -> u64 {
        self.recent.totals(now)[0]
    }

    /// How far outside their period counts may reach: one retention bucket.
    pub(crate) fn precision(&self) -> Nanos {
        self.retained.width
    }

    /// Whether the window count (of any group) is at or over the threshold
    /// at `now` (exact).
    pub(crate) fn over_threshold(&self, now: Nanos) -> bool {
        let t = self.shape.threshold;
        match &self.windows {
            Windows::One(w) => w.count(now, &self.shape) >= t,
            Windows::Grouped(g) => g.map.values().any(|(w, _)| w.count(now, &self.shape) >= t),
        }
    }

    /// Crossings within the report period `(now − retention, now]`, oldest first.
    pub(crate) fn crossings_within(&self, now: Nanos) -> Vec<&Crossing> {
        let since = now.saturating_sub(span(self.policy.retention));
        let mut v: Vec<&Crossing> = self
            .crossings
            .iter()
            .filter(|c| c.at > since && c.at <= now)
            .collect();
        v.sort_by_key(|c| c.at);
        v
    }

    /// The one definition of a violation, used by reports and stats: a
    /// crossing within the report period, or the window over the threshold now.
    pub(crate) fn violated(&self, now: Nanos) -> bool {
        !self.crossings_within(now).is_empty() || self.over_threshold(now)
    }

    /// Groups evicted past the bound (0 without `group_by`).
    pub(crate) fn groups_evicted(&self) -> u64 {
        match &self.windows {
            Windows::One(_) => 0,
            Windows::Grouped(g) => g.evicted,
        }
    }

    /// Groups tracked now (0 without `group_by`).
    pub(crate) fn groups(&self) -> usize {
        match &self.windows {
            Windows::One(_) => 0,
            Windows::Grouped(g) => g.map.len(),
        }
    }
}

/// One event kind: the policies that count it (index, slot in `require`),
/// and how many events of it were seen.
#[derive(Debug, Default)]
struct KindEntry {
    counted_by: Vec<(usize, usize)>,
    seen: u64,
}

/// All policies and the global statistics.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) policies: Vec<PolicyState>,
    /// kind → which policies count it, and how often it was seen.
    kinds: KeyMap<Key, KindEntry>,
    /// Kinds no policy names, admitted to `kinds` so far.
    unnamed_kinds: usize,
    /// Bound on `unnamed_kinds`.
    max_unnamed: usize,
    /// Events of kinds beyond that bound.
    pub(crate) other_kinds: u64,
    /// Policies with no required kinds (they count every event).
    any_kind: Vec<usize>,
    pub(crate) total: u64,
    pub(crate) by_actor: TopK,
    /// The episode starts one event makes, reused across events.
    starts: Vec<Nanos>,
}

impl Engine {
    /// `policies` must already be valid (see `Policy::validate`).
    pub(crate) fn new(policies: Vec<Policy>, top_k: usize, max_groups: usize) -> Self {
        let mut e = Engine {
            policies: Vec::new(),
            kinds: KeyMap::default(),
            unnamed_kinds: 0,
            max_unnamed: top_k.max(1).saturating_mul(4),
            other_kinds: 0,
            any_kind: Vec::new(),
            total: 0,
            by_actor: TopK::new(top_k),
            starts: Vec::new(),
        };
        for p in policies {
            // A later policy with the same name replaces the earlier one.
            let state = PolicyState::new(p, max_groups);
            match e
                .policies
                .iter_mut()
                .find(|s| s.policy.name == state.policy.name)
            {
                Some(s) => *s = state,
                None => e.policies.push(state),
            }
        }
        for (i, s) in e.policies.iter().enumerate() {
            if s.policy.require.is_empty() {
                e.any_kind.push(i);
            }
            for (slot, kind) in s.policy.require.iter().enumerate() {
                e.kinds
                    .entry(Key::from(kind.as_str()))
                    .or_default()
                    .counted_by
                    .push((i, slot));
            }
        }
        e
    }

    /// Counts one event; appends threshold crossings to `out` unless `quiet`.
    pub(crate) fn observe(&mut self, e: &Observed<'_>, quiet: bool, out: &mut Vec<Crossing>) {
        self.total += 1;
        self.by_actor.add(e.actor.unwrap_or(NO_KEY));
        let Engine {
            policies,
            kinds,
            any_kind,
            other_kinds,
            unnamed_kinds,
            max_unnamed,
            starts,
            ..
        } = self;
        let counted_by: &[(usize, usize)] = match kinds.get_mut(Text::of(e.event_type)) {
            Some(k) => {
                k.seen += 1;
                &k.counted_by
            }
            None if *unnamed_kinds < *max_unnamed => {
                *unnamed_kinds += 1;
                let k = KindEntry {
                    counted_by: Vec::new(),
                    seen: 1,
                };
                kinds.insert(Key::from(e.event_type), k);
                &[]
            }
            None => {
                *other_kinds += 1;
                &[]
            }
        };
        if e.source == Source::ChainedAlert {
            return;
        }
        for &(i, slot) in counted_by {
            count(&mut policies[i], i, slot, e, quiet, starts, out);
        }
        if e.source == Source::App {
            for &i in any_kind.iter() {
                count(&mut policies[i], i, 0, e, quiet, starts, out);
            }
        }
    }

    /// Events seen per kind (kinds only named by policies, never seen, are left out).
    pub(crate) fn by_type(&self) -> BTreeMap<String, u64> {
        self.kinds
            .iter()
            .filter(|(_, k)| k.seen > 0)
            .map(|(n, k)| (n.as_str().to_owned(), k.seen))
            .collect()
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|s| s.policy.name == name)
    }
}

/// Counts `e` for one policy (slot = index of its kind in `require`).
fn count(
    s: &mut PolicyState,
    i: usize,
    slot: usize,
    e: &Observed<'_>,
    quiet: bool,
    starts: &mut Vec<Nanos>,
    out: &mut Vec<Crossing>,
) {
    if !s.matches(e) {
        return;
    }
    s.retained.add(e.at, slot);
    s.recent.add(e.at, 0);
    let group = s.policy.group_by.map(|g| e.group_key(g));
    let window = match (&mut s.windows, group) {
        (Windows::Grouped(g), Some(key)) => g.window(key),
        (Windows::One(w), _) => w,
        (Windows::Grouped(g), None) => g.window(NO_KEY),
    };
    starts.clear();
    if !window.insert(e.at, &s.shape, starts) {
        s.inexact += 1;
    }
    for &at in starts.iter() {
        s.alerts += 1;
        let crossing = Crossing {
            policy: i,
            count: s.shape.threshold as u64,
            at,
            actor: e.actor.map(str::to_owned),
            event_type: e.event_type.to_owned(),
            group: group.map(str::to_owned),
            chained: e.source != Source::App,
        };
        if s.crossings.len() == MAX_CROSSINGS {
            s.crossings.pop_front();
        }
        s.crossings.push_back(crossing.clone());
        if !quiet {
            out.push(crossing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: Nanos = 1_000_000_000;

    fn ev(kind: &str, at: Nanos) -> Observed<'_> {
        Observed {
            event_type: kind,
            actor: Some("mallory"),
            resource: None,
            ip: None,
            session: None,
            outcome: Outcome::Failure,
            risk: Risk::Medium,
            at,
            source: Source::App,
        }
    }

    fn engine(threshold: u64, window: u64) -> Engine {
        let p = Policy::new("p")
            .require(["auth_failure"])
            .threshold(threshold)
            .window(Duration::from_secs(window));
        Engine::new(vec![p], 10, 100)
    }

    /// Keys never seen again cannot push out a key with many events, every
    /// event stays counted (kept or evicted), and at most `k` are kept.
    #[test]
    fn top_k_keeps_heavy_keys_through_a_spray_of_new_ones() {
        let mut t = TopK::new(8);
        for _ in 0..100 {
            t.add("alice");
        }
        for _ in 0..30 {
            t.add("bob");
        }
        for i in 0..10_000 {
            t.add(&format!("spray{i}"));
            assert!(t.counts.len() <= 8);
        }
        let kept = t.to_map();
        assert_eq!(kept.get("alice"), Some(&100));
        assert_eq!(kept.get("bob"), Some(&30));
        assert_eq!(kept.values().sum::<u64>() + t.evicted, 10_130);
        // Ties at the cut: all keys at one count, half of them go.
        let mut t = TopK::new(4);
        for k in ["a", "b", "c", "d", "e"] {
            t.add(k);
        }
        assert_eq!((t.counts.len(), t.evicted), (3, 2));
    }

    #[test]
    fn key_text_compares_every_byte() {
        for n in 0..40usize {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            let same = a.clone(); // another allocation
            assert!(Text::of(&a) == Text::of(&same), "length {n}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'Z';
                let b = String::from_utf8(b).unwrap();
                assert!(Text::of(&a) != Text::of(&b), "length {n}, byte {at}");
            }
            let longer = format!("{a}x");
            assert!(Text::of(&a) != Text::of(&longer));
        }
    }

    #[test]
    fn key_hash_spreads_similar_keys_over_the_low_bits() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHash>::default();
        let hashes: Vec<u64> = (0..1000)
            .map(|i| build.hash_one(format!("user{i}")))
            .collect();
        // The table picks buckets with the low bits: all 64 values taken.
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 63).collect();
        assert_eq!(low.len(), 64);
        let all: std::collections::HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(all.len(), 1000);
        // Keys that differ only by trailing zero bytes, and by the split.
        assert_ne!(build.hash_one("a"), build.hash_one("a\0"));
        assert_ne!(build.hash_one(("ab", "c")), build.hash_one(("a", "bc")));
    }

    #[test]
    fn window_edge_is_half_open() {
        let mut e = engine(2, 300);
        let mut out = Vec::new();
        let t0 = 1_000 * S;
        e.observe(&ev("auth_failure", t0), false, &mut out);
        // Exactly one window later: the first event is out -> count 1, no alert.
        e.observe(&ev("auth_failure", t0 + 300 * S), false, &mut out);
        assert!(out.is_empty());
        // One nanosecond inside the window of the second: count 2 -> alert.
        e.observe(&ev("auth_failure", t0 + 300 * S + 1), false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 2);
        assert_eq!(out[0].at, t0 + 300 * S + 1);
    }

    #[test]
    fn one_alert_per_crossing_then_rearm() {
        let mut e = engine(3, 60);
        let mut out = Vec::new();
        let t0 = 10_000 * S;
        for i in 0..10 {
            e.observe(&ev("auth_failure", t0 + i * S), false, &mut out);
        }
        assert_eq!(out.len(), 1, "a burst is one alert");
        // A quiet minute, then another burst: a second crossing.
        for i in 0..3 {
            e.observe(&ev("auth_failure", t0 + 200 * S + i * S), false, &mut out);
        }
        assert_eq!(out.len(), 2);
        // Other kinds never count.
        e.observe(&ev("login", t0 + 201 * S), false, &mut out);
        assert_eq!(e.policies[0].retained(t0 + 202 * S), vec![13]);
    }

    #[test]
    fn a_clock_step_back_counts_each_event_at_its_own_time() {
        // Threshold 3 in 5 minutes: one event at 60 min, then the clock
        // steps back and events come at 0, 25 and 50 min. No five
        // minutes hold three of them.
        let mut e = engine(3, 300);
        let mut out = Vec::new();
        let base = EPOCH + 1_700_000_000 * S;
        for m in [60, 0, 25, 50] {
            e.observe(&ev("auth_failure", base + m * 60 * S), false, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        // Two more at 51 and 52 min: three within five minutes, one alert,
        // at the time of the third.
        for m in [51, 52] {
            e.observe(&ev("auth_failure", base + m * 60 * S), false, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].at, base + 52 * 60 * S);
        assert_eq!(e.policies[0].inexact, 0);
    }

    #[test]
    fn a_late_event_completing_an_earlier_window_alerts_at_that_window() {
        let mut e = engine(3, 300);
        let mut out = Vec::new();
        let t0 = EPOCH + 1_000_000 * S;
        e.observe(&ev("auth_failure", t0), false, &mut out);
        e.observe(&ev("auth_failure", t0 + 200 * S), false, &mut out);
        e.observe(&ev("auth_failure", t0 + 900 * S), false, &mut out);
        assert!(out.is_empty());
        // Arrives last, happened between the first two.
        e.observe(&ev("auth_failure", t0 + 100 * S), false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].at,
            t0 + 200 * S,
            "the window reached 3 at the second"
        );
        // A report at 250 s sees the violation; one at 50 s does not.
        assert!(e.policies[0].violated(t0 + 250 * S));
        assert!(!e.policies[0].violated(t0 + 50 * S));
    }

    #[test]
    fn an_event_joining_two_episodes_raises_nothing() {
        // Threshold 2 in 10 s: episodes around 0 s and 12 s, then an event
        // at 8 s bridges them.
        let mut e = engine(2, 10);
        let mut out = Vec::new();
        let t0 = EPOCH + 1_000_000 * S;
        for at in [0, 1, 19, 20] {
            e.observe(&ev("auth_failure", t0 + at * S), false, &mut out);
        }
        assert_eq!(out.len(), 2);
        e.observe(&ev("auth_failure", t0 + 10 * S), false, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn memory_is_bounded_and_thinning_is_exact() {
        let mut e = engine(5, 60);
        let mut out = Vec::new();
        for i in 0..200_000u64 {
            e.observe(&ev("auth_failure", EPOCH + i * S / 10), false, &mut out);
        }
        assert_eq!(out.len(), 1, "a steady stream is one episode");
        let s = &e.policies[0];
        let Windows::One(w) = &s.windows else {
            panic!()
        };
        assert!(w.kept() <= kept_cap(5), "{}", w.kept());
        // Thinned to about 2T per window, though 600 events fit in one.
        let now = EPOCH + 199_999 * S / 10;
        assert!(w.count(now, &s.shape) >= 5 && w.count(now, &s.shape) <= 11);
        assert!(s.retained.ring.len() <= BUCKETS as usize + 1);
        assert!(s.recent.ring.len() <= BUCKETS as usize + 1);
        assert_eq!(s.inexact, 0);
    }

    #[test]
    fn events_older_than_the_horizon_are_counted_as_inexact() {
        let mut e = engine(1, 1);
        let mut out = Vec::new();
        let t0 = EPOCH + 1_000_000 * S;
        for i in 0..1000 {
            e.observe(&ev("auth_failure", t0 + i * 10 * S), false, &mut out);
        }
        assert_eq!(e.policies[0].inexact, 0);
        e.observe(&ev("auth_failure", t0 + 5), false, &mut out);
        assert_eq!(e.policies[0].inexact, 1);
    }

    #[test]
    fn retention_drops_old_counts_and_keeps_late_ones() {
        let p = Policy::new("p")
            .require(["a", "b"])
            .retention(Duration::from_secs(640));
        let mut e = Engine::new(vec![p], 10, 100);
        let mut out = Vec::new();
        e.observe(&ev("b", 1_500 * S), false, &mut out);
        // Late, but within retention of the newest: counted in its bucket.
        e.observe(&ev("a", 1_000 * S), false, &mut out);
        assert_eq!(e.policies[0].retained(1_600 * S), vec![1, 1]);
        assert_eq!(e.policies[0].retained(1_000 * S + 700 * S), vec![0, 1]);
        assert_eq!(e.policies[0].retained(3_000 * S), vec![0, 0]);
        // A report at an earlier reading than the newest event still sees
        // what was within its period.
        assert_eq!(e.policies[0].retained(1_200 * S), vec![1, 0]);
    }

    #[test]
    fn top_k_counts_evictions_exactly() {
        let mut t = TopK::new(2);
        for a in ["a", "b", "c", "d", "e"] {
            t.add(a);
        }
        assert_eq!(t.evicted, 3);
        assert_eq!(t.to_map().values().sum::<u64>() + t.evicted, 5);
        let mut t = TopK::new(3);
        for i in 0..1000 {
            t.add(&format!("actor-{}", i % 50));
            t.add("heavy");
        }
        assert_eq!(t.counts.len(), 3);
        assert_eq!(t.counts[Text::of("heavy")], 1000);
        assert_eq!(t.to_map().values().sum::<u64>() + t.evicted, 2000);
    }

    #[test]
    fn groups_have_their_own_windows_and_are_bounded() {
        let p = Policy::new("p")
            .require(["auth_failure"])
            .threshold(2)
            .window(Duration::from_secs(60))
            .group_by(GroupBy::Actor);
        let mut e = Engine::new(vec![p], 10, 3);
        let mut out = Vec::new();
        let t0 = EPOCH + 1_000 * S;
        for (i, who) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let mut o = ev("auth_failure", t0 + i as u64 * S);
            o.actor = Some(who);
            e.observe(&o, false, &mut out);
        }
        assert!(out.is_empty(), "five users failing once each: no alert");
        let mut o = ev("auth_failure", t0 + 10 * S);
        o.actor = Some("e");
        e.observe(&o, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].group.as_deref(), Some("e"));
        assert_eq!(e.policies[0].groups(), 3);
        assert_eq!(e.policies[0].groups_evicted(), 2);
    }
}

/// The engine against a brute-force model of the semantics in the module
/// doc: every event kept, episodes recomputed from scratch after each one.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const MS: Nanos = 1_000_000;
    const KINDS: [&str; 3] = ["a", "b", "c"];
    const KEYS: [&str; 3] = ["k1", "k2", "k3"];

    /// Over-threshold intervals of sorted `times`, merged when they touch.
    fn episodes(times: &[Nanos], t: usize, len: Nanos) -> Vec<(Nanos, Nanos)> {
        let mut out: Vec<(Nanos, Nanos)> = Vec::new();
        for i in 0..times.len().saturating_sub(t - 1) {
            let (s, e) = (times[i + t - 1], times[i] + len);
            if s >= e {
                continue;
            }
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }

    struct ModelPolicy {
        p: Policy,
        /// group key → matching timestamps, sorted
        events: BTreeMap<String, Vec<Nanos>>,
        all: Vec<(Nanos, usize)>,
        crossings: Vec<Nanos>,
    }

    impl ModelPolicy {
        fn counts(&self, e: &Observed<'_>) -> bool {
            let p = &self.p;
            let named = p.require.iter().any(|k| k == e.event_type);
            let kind_ok = match e.source {
                Source::App => p.require.is_empty() || named,
                Source::Alert => named,
                Source::ChainedAlert => false,
            };
            kind_ok
                && p.outcome.is_none_or(|o| o == e.outcome)
                && p.min_risk.is_none_or(|r| e.risk >= r)
        }

        /// Starts of the new episodes the event creates.
        fn observe(&mut self, e: &Observed<'_>) -> Vec<Nanos> {
            if !self.counts(e) {
                return Vec::new();
            }
            let slot = self.p.require.iter().position(|k| k == e.event_type);
            self.all.push((e.at, slot.unwrap_or(0)));
            let key = self.p.group_by.map_or(NO_KEY, |g| e.group_key(g));
            let t = self.p.threshold as usize;
            let len = span(self.p.window);
            let times = self.events.entry(key.to_owned()).or_default();
            let old = episodes(times, t, len);
            let at = times.partition_point(|&x| x <= e.at);
            times.insert(at, e.at);
            let new: Vec<Nanos> = episodes(times, t, len)
                .into_iter()
                .filter(|&(a, b)| !old.iter().any(|&(s, f)| s <= b && a <= f))
                .map(|(a, _)| a)
                .collect();
            self.crossings.extend(&new);
            new
        }

        fn violated(&self, now: Nanos) -> bool {
            let since = now.saturating_sub(span(self.p.retention));
            let len = span(self.p.window);
            self.crossings.iter().any(|&c| c > since && c <= now)
                || self.events.values().any(|ts| {
                    ts.iter()
                        .filter(|&&x| x > now.saturating_sub(len) && x <= now)
                        .count()
                        >= self.p.threshold as usize
                })
        }

        fn retained_between(&self, lo: Nanos, hi: Nanos) -> u64 {
            self.all.iter().filter(|(x, _)| *x > lo && *x <= hi).count() as u64
        }
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            1u64..5,
            prop_oneof![
                4 => prop_oneof![Just(1_000u64), Just(5_000), Just(10_000), Just(3)],
                1 => Just(super::super::MAX_DURATION.as_millis() as u64),
            ],
            prop_oneof![Just(1u64), Just(10), Just(64)],
            proptest::sample::subsequence(KINDS.to_vec(), 0..=3),
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some(GroupBy::Actor)),
                Just(Some(GroupBy::Ip))
            ],
            prop_oneof![Just(None), Just(Some(Outcome::Failure))],
            prop_oneof![Just(None), Just(Some(Risk::High))],
        )
            .prop_map(
                |(t, w_ms, r_mult, mut kinds, twice, group, outcome, risk)| {
                    if twice && !kinds.is_empty() {
                        kinds.push(kinds[0]); // counted once, as `effective` keeps it
                    }
                    let mut p = Policy::new("p")
                        .threshold(t)
                        .window(Duration::from_millis(w_ms))
                        .retention(Duration::from_millis((w_ms * r_mult).max(1_000)))
                        .require(kinds);
                    p.group_by = group;
                    p.outcome = outcome;
                    p.min_risk = risk;
                    p.effective()
                },
            )
    }

    /// Time steps: mostly small forward moves, with equal times, steps of
    /// exactly a window (±1 ns), and clock steps backwards.
    fn step() -> impl Strategy<Value = i64> {
        prop_oneof![
            6 => 0i64..2_000,
            2 => Just(0i64),
            1 => Just(1_000i64),
            1 => Just(5_000i64),
            1 => Just(10_000i64),
            1 => -30_000i64..0,
        ]
    }

    #[derive(Debug, Clone)]
    struct Ev {
        step_ms: i64,
        nudge: i64,
        kind: usize,
        key: usize,
        failure: bool,
        high: bool,
        source: u8,
    }

    fn event() -> impl Strategy<Value = Ev> {
        (
            step(),
            prop_oneof![4 => Just(0i64), 1 => -1i64..=1],
            0usize..4,
            0usize..3,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        )
            .prop_map(|(step_ms, nudge, kind, key, failure, high, source)| Ev {
                step_ms,
                nudge,
                kind,
                key,
                failure,
                high,
                source,
            })
    }

    /// Bursts: most events at the time of the one before (as the coarse
    /// clock gives them), so windows fill with equal timestamps.
    fn burst_event() -> impl Strategy<Value = Ev> {
        (event(), prop_oneof![6 => Just(true), 1 => Just(false)]).prop_map(|(mut e, same)| {
            if same {
                e.step_ms = 0;
                e.nudge = 0;
            }
            e
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]
        #[test]
        fn engine_matches_the_model(
            policies in proptest::collection::vec(policy(), 1..4),
            events in proptest::collection::vec(event(), 1..150),
            probes in proptest::collection::vec(-40_000i64..40_000, 1..6),
        ) {
            check(policies, &events, &probes)?;
        }

        #[test]
        fn bursts_match_the_model(
            policies in proptest::collection::vec(policy(), 1..4),
            events in proptest::collection::vec(burst_event(), 1..150),
            probes in proptest::collection::vec(-40_000i64..40_000, 1..6),
        ) {
            check(policies, &events, &probes)?;
        }
    }

    /// Runs `events` through the engine and the model side by side: the
    /// same crossings after every event, then the same verdicts and counts
    /// at the `probes` (milliseconds from the last event) and window edges.
    fn check(policies: Vec<Policy>, events: &[Ev], probes: &[i64]) -> Result<(), TestCaseError> {
        let policies: Vec<Policy> = policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| Policy {
                name: format!("p{i}"),
                ..p
            })
            .collect();
        let mut engine = Engine::new(policies.clone(), 10, 100);
        let mut model: Vec<ModelPolicy> = policies
            .into_iter()
            .map(|p| ModelPolicy {
                p,
                events: BTreeMap::new(),
                all: Vec::new(),
                crossings: Vec::new(),
            })
            .collect();
        let mut clock: Nanos = EPOCH + 1_700_000_000_000 * MS;
        let mut newest = clock;
        for ev in events {
            clock = clock.saturating_add_signed(ev.step_ms * MS as i64 + ev.nudge);
            newest = newest.max(clock);
            let kind = if ev.kind < 3 {
                KINDS[ev.kind]
            } else {
                "policy_threshold_exceeded"
            };
            let o = Observed {
                event_type: kind,
                actor: Some(KEYS[ev.key]),
                resource: None,
                ip: Some(KEYS[(ev.key + 1) % 3]),
                session: None,
                outcome: if ev.failure {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                risk: if ev.high { Risk::High } else { Risk::Low },
                at: clock,
                source: [Source::App, Source::Alert, Source::ChainedAlert][ev.source as usize],
            };
            let mut out = Vec::new();
            engine.observe(&o, false, &mut out);
            let mut got: Vec<(usize, Nanos)> = out.iter().map(|c| (c.policy, c.at)).collect();
            let mut want: Vec<(usize, Nanos)> = Vec::new();
            for (i, m) in model.iter_mut().enumerate() {
                want.extend(m.observe(&o).into_iter().map(|at| (i, at)));
            }
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want, "after {:?}", ev);
        }
        for (s, m) in engine.policies.iter().zip(&model) {
            prop_assert_eq!(s.inexact, 0);
            prop_assert_eq!(s.alerts, m.crossings.len() as u64);
            // Random readings, and readings exactly at window edges.
            let len = span(m.p.window);
            let edges = m
                .all
                .iter()
                .take(3)
                .flat_map(|&(t, _)| [t + len - 1, t + len]);
            let readings: Vec<Nanos> = probes
                .iter()
                .map(|&probe| clock.saturating_add_signed(probe * MS as i64))
                .chain(edges)
                .collect();
            for now in readings {
                prop_assert_eq!(s.violated(now), m.violated(now), "report at {}", now);
                let r = report(&engine, engine.index(&s.policy.name).unwrap(), now);
                prop_assert_eq!(r.status == super::super::Status::Violation, m.violated(now));
                prop_assert_eq!(r.crossings.len(), {
                    let since = now.saturating_sub(span(m.p.retention));
                    m.crossings
                        .iter()
                        .filter(|&&c| c > since && c <= now)
                        .count()
                });
                if now >= newest {
                    // Retention counts, to one bucket at the old edge.
                    let total: u64 = s.retained(now).iter().sum();
                    let r = span(m.p.retention);
                    let lo = m.retained_between(now.saturating_sub(r), now);
                    let hi = m.retained_between(now.saturating_sub(r + s.precision()), now);
                    prop_assert!(
                        lo <= total && total <= hi,
                        "{} not in {}..={}",
                        total,
                        lo,
                        hi
                    );
                }
            }
        }
        Ok(())
    }

    use super::super::report;
}
