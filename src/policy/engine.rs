//! Counting audit events against policies in constant time and memory.
//!
//! Per policy:
//! - **Alerting window, exact.** Only whether the count within the window
//!   reaches the threshold matters, so the engine keeps the timestamps of
//!   the last `threshold` matching events and nothing more: the count within
//!   the window is exact up to the threshold, at any timestamp, with
//!   `threshold` words of memory. The window is half-open, `(now - window,
//!   now]`: an event exactly one window old is **out**.
//! - **Re-arming.** An alert fires when a matching event brings the count to
//!   the threshold while the policy is armed; the policy re-arms when an event
//!   arrives and finds the count below the threshold. One alert per crossing.
//! - **Retention and reports.** Counts per required kind in 64 buckets over
//!   the retention period; buckets older than retention are dropped.
//! - **Recent count for stats.** 64 buckets over the window (a count with
//!   1/64-window resolution; alerting does not use it).
//!
//! Every update is O(1) amortised per matching policy; memory is bounded
//! by policies × (threshold + buckets), whatever the number of events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::fields::{Outcome, Risk};

use super::config::Policy;

/// Nanoseconds since the Unix epoch.
pub(crate) type Nanos = u64;

const BUCKETS: u64 = 64;

/// One observed audit event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) actor: Option<&'a str>,
    pub(crate) resource: Option<&'a str>,
    pub(crate) outcome: Outcome,
    pub(crate) risk: Risk,
    pub(crate) at: Nanos,
}

/// A threshold crossing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crossing {
    pub(crate) policy: usize,
    pub(crate) count: u64,
    pub(crate) at: Nanos,
    pub(crate) actor: Option<String>,
    pub(crate) event_type: String,
}

/// FNV-1a: event types are short, trusted-ish keys; SipHash costs more than
/// the rest of the lookup.
#[derive(Default)]
pub(crate) struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}
type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// Counts in fixed-width time buckets, the newest last; old ones dropped.
#[derive(Debug, Clone)]
struct Buckets {
    width: Nanos,
    span: Nanos,
    /// (bucket index, counts per slot)
    ring: VecDeque<(u64, Vec<u64>)>,
    slots: usize,
}

impl Buckets {
    fn new(span: Nanos, slots: usize) -> Self {
        let width = (span / BUCKETS).max(1);
        Buckets {
            width,
            span,
            ring: VecDeque::with_capacity(BUCKETS as usize + 2),
            slots,
        }
    }

    fn prune(&mut self, now: Nanos) {
        let oldest_kept = now.saturating_sub(self.span) / self.width;
        while self.ring.front().is_some_and(|(i, _)| *i < oldest_kept) {
            self.ring.pop_front();
        }
    }

    fn add(&mut self, at: Nanos, slot: usize) {
        let idx = at / self.width;
        match self.ring.back_mut() {
            Some((i, c)) if *i == idx => c[slot] += 1,
            Some((i, _)) if *i > idx => {
                // Late event: add to its bucket if still kept.
                if let Some((_, c)) = self.ring.iter_mut().find(|(i, _)| *i == idx) {
                    c[slot] += 1;
                }
            }
            _ => {
                let mut c = vec![0; self.slots];
                c[slot] = 1;
                self.ring.push_back((idx, c));
                self.prune(at);
            }
        }
    }

    fn totals(&mut self, now: Nanos) -> Vec<u64> {
        self.prune(now);
        let mut t = vec![0; self.slots];
        for (_, c) in &self.ring {
            for (a, b) in t.iter_mut().zip(c) {
                *a += b;
            }
        }
        t
    }
}

/// The exact alerting window: timestamps of the last `threshold` events.
#[derive(Debug, Clone)]
struct Window {
    len: Nanos,
    threshold: usize,
    last: VecDeque<Nanos>,
}

impl Window {
    /// Events within `(now - len, now]`, exact up to the threshold.
    fn count(&self, now: Nanos) -> usize {
        let edge = now.saturating_sub(self.len);
        self.last
            .iter()
            .rev()
            .take_while(|&&t| t > edge && t <= now)
            .count()
    }

    /// Adds an event at `at`; returns the count before and after.
    fn push(&mut self, at: Nanos) -> (usize, usize) {
        let edge = at.saturating_sub(self.len);
        while self.last.front().is_some_and(|&t| t <= edge) {
            self.last.pop_front();
        }
        let before = self.last.len();
        self.last.push_back(at);
        if self.last.len() > self.threshold {
            self.last.pop_front();
        }
        (before, self.last.len())
    }
}

/// Approximate top-k counts (Space-Saving) in bounded memory.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    counts: FnvMap<String, u64>,
    /// Events whose key was evicted or replaced (the error bound).
    pub(crate) evicted: u64,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k: k.max(1),
            counts: FnvMap::default(),
            evicted: 0,
        }
    }

    fn add(&mut self, key: &str) {
        if let Some(c) = self.counts.get_mut(key) {
            *c += 1;
            return;
        }
        if self.counts.len() < self.k {
            self.counts.insert(key.to_owned(), 1);
            return;
        }
        // Replace the smallest: the newcomer inherits its count (+1).
        let (min_key, min) = match self.counts.iter().min_by_key(|(_, c)| **c) {
            Some((k, c)) => (k.clone(), *c),
            None => return,
        };
        self.counts.remove(&min_key);
        self.evicted += min;
        self.counts.insert(key.to_owned(), min + 1);
    }

    pub(crate) fn to_map(&self) -> BTreeMap<String, u64> {
        self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// One policy's counters.
#[derive(Debug, Clone)]
pub(crate) struct PolicyState {
    pub(crate) policy: Policy,
    window: Window,
    retained: Buckets,
    recent: Buckets,
    armed: bool,
    pub(crate) alerts: u64,
    /// The latest threshold crossings (at most [`MAX_CROSSINGS`]), for
    /// reports: when, the count, who and what brought it there.
    pub(crate) crossings: VecDeque<Crossing>,
}

/// Crossings kept per policy for reports.
pub(crate) const MAX_CROSSINGS: usize = 1000;

impl PolicyState {
    fn new(policy: Policy) -> Self {
        let slots = policy.require.len().max(1);
        PolicyState {
            window: Window {
                len: policy.window.as_nanos().max(1) as u64,
                threshold: policy.threshold.max(1) as usize,
                last: VecDeque::new(),
            },
            retained: Buckets::new(policy.retention.as_nanos().max(1) as u64, slots),
            recent: Buckets::new(policy.window.as_nanos().max(1) as u64, 1),
            armed: true,
            alerts: 0,
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
    pub(crate) fn retained(&mut self, now: Nanos) -> Vec<u64> {
        self.retained.totals(now)
    }

    /// Approximate count within the window.
    pub(crate) fn recent(&mut self, now: Nanos) -> u64 {
        self.recent.totals(now)[0]
    }

    /// Whether the window count is at or over the threshold now (exact).
    pub(crate) fn over_threshold(&self, now: Nanos) -> bool {
        self.window.count(now) >= self.window.threshold
    }
}

/// One event kind: the policies that count it (index, slot in `require`),
/// and how many events of it were seen.
#[derive(Debug, Default)]
struct Kind {
    hits: Vec<(usize, usize)>,
    seen: u64,
}

/// All policies and the global statistics.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) policies: Vec<PolicyState>,
    /// kind → which policies count it, and how often it was seen.
    kinds: FnvMap<String, Kind>,
    /// Events of kinds beyond the bound on distinct kinds.
    pub(crate) other_kinds: u64,
    max_kinds: usize,
    /// Policies with no required kinds (they count every event).
    any_kind: Vec<usize>,
    pub(crate) total: u64,
    pub(crate) by_actor: TopK,
    /// Latest time seen, so the clock never goes backwards for a window.
    last_at: Nanos,
}

impl Engine {
    pub(crate) fn new(policies: Vec<Policy>, top_k: usize) -> Self {
        let mut e = Engine {
            policies: Vec::new(),
            kinds: FnvMap::default(),
            other_kinds: 0,
            max_kinds: top_k.max(16) * 4,
            any_kind: Vec::new(),
            total: 0,
            by_actor: TopK::new(top_k),
            last_at: 0,
        };
        for p in policies {
            // A later policy with the same name replaces the earlier one.
            match e.policies.iter_mut().find(|s| s.policy.name == p.name) {
                Some(s) => *s = PolicyState::new(p),
                None => e.policies.push(PolicyState::new(p)),
            }
        }
        for (i, s) in e.policies.iter().enumerate() {
            if s.policy.require.is_empty() {
                e.any_kind.push(i);
            }
            for (slot, kind) in s.policy.require.iter().enumerate() {
                e.kinds
                    .entry(kind.clone())
                    .or_default()
                    .hits
                    .push((i, slot));
            }
        }
        e
    }

    /// Counts one event; appends threshold crossings to `out` unless `quiet`.
    pub(crate) fn observe(&mut self, e: &Observed<'_>, quiet: bool, out: &mut Vec<Crossing>) {
        let at = e.at.max(self.last_at);
        self.last_at = at;
        self.total += 1;
        self.by_actor.add(e.actor.unwrap_or("(none)"));
        let Engine {
            policies,
            kinds,
            any_kind,
            other_kinds,
            max_kinds,
            ..
        } = self;
        let known = kinds.len();
        let hits: &[(usize, usize)] = match kinds.get_mut(e.event_type) {
            Some(k) => {
                k.seen += 1;
                &k.hits
            }
            None if known < *max_kinds => {
                let k = Kind {
                    hits: Vec::new(),
                    seen: 1,
                };
                kinds.insert(e.event_type.to_owned(), k);
                &[]
            }
            None => {
                *other_kinds += 1;
                &[]
            }
        };
        for &(i, slot) in hits {
            count(&mut policies[i], i, slot, e, at, quiet, out);
        }
        for &i in any_kind.iter() {
            count(&mut policies[i], i, 0, e, at, quiet, out);
        }
    }

    /// Events seen per kind (kinds only named by policies, never seen, are left out).
    pub(crate) fn by_type(&self) -> BTreeMap<String, u64> {
        self.kinds
            .iter()
            .filter(|(_, k)| k.seen > 0)
            .map(|(n, k)| (n.clone(), k.seen))
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
    at: Nanos,
    quiet: bool,
    out: &mut Vec<Crossing>,
) {
    if !s.matches(e) {
        return;
    }
    s.retained.add(at, slot);
    s.recent.add(at, 0);
    let (before, after) = s.window.push(at);
    if before < s.window.threshold {
        s.armed = true;
    }
    if s.armed && after >= s.window.threshold {
        s.armed = false;
        s.alerts += 1;
        let crossing = Crossing {
            policy: i,
            count: after as u64,
            at,
            actor: e.actor.map(str::to_owned),
            event_type: e.event_type.to_owned(),
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
            outcome: Outcome::Failure,
            risk: Risk::Medium,
            at,
        }
    }

    fn engine(threshold: u64, window: u64) -> Engine {
        let p = Policy::new("p")
            .require(["auth_failure"])
            .threshold(threshold)
            .window(Duration::from_secs(window));
        Engine::new(vec![p], 10)
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
    fn memory_is_bounded_by_threshold_and_buckets() {
        let mut e = engine(5, 60);
        let mut out = Vec::new();
        for i in 0..200_000u64 {
            e.observe(&ev("auth_failure", i * S / 10), false, &mut out);
        }
        let s = &e.policies[0];
        assert!(s.window.last.len() <= 5);
        assert!(s.retained.ring.len() <= BUCKETS as usize + 1);
        assert!(s.recent.ring.len() <= BUCKETS as usize + 1);
    }

    #[test]
    fn retention_drops_old_counts() {
        let p = Policy::new("p")
            .require(["a", "b"])
            .retention(Duration::from_secs(640));
        let mut e = Engine::new(vec![p], 10);
        let mut out = Vec::new();
        e.observe(&ev("a", 1_000 * S), false, &mut out);
        e.observe(&ev("b", 1_500 * S), false, &mut out);
        assert_eq!(e.policies[0].retained(1_600 * S), vec![1, 1]);
        assert_eq!(e.policies[0].retained(1_000 * S + 700 * S), vec![0, 1]);
        assert_eq!(e.policies[0].retained(3_000 * S), vec![0, 0]);
    }

    #[test]
    fn top_k_is_bounded() {
        let mut t = TopK::new(3);
        for i in 0..1000 {
            t.add(&format!("actor-{}", i % 50));
            t.add("heavy");
        }
        assert_eq!(t.counts.len(), 3);
        assert!(t.counts["heavy"] >= 1000);
    }
}
