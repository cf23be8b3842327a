//! When to persist which tree, and when to apply retention: sans-IO, time passed in.
//!
//! A tree turns dirty when a change is seen. It is persisted once changes have been quiet
//! for [`Policy::quiet`], or [`Policy::max_wait`] after it first turned dirty under constant
//! change, or at once when forced. A failed attempt leaves the tree dirty and retries after
//! an exponential backoff ([`Policy::backoff_min`] doubling up to [`Policy::backoff_max`]); a
//! forced attempt does not wait for the backoff. Retention runs every
//! [`Policy::retention_every`] once no tree is due, so it never delays a due snapshot; the
//! caller runs one job at a time, so retention never overlaps a backup.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest wait for the first retention after a start.
const FIRST_RETENTION: Duration = Duration::from_secs(900);

/// The timing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long changes must be quiet before a snapshot.
    pub quiet: Duration,
    /// The longest a dirty tree waits under constant change.
    pub max_wait: Duration,
    /// The first retry delay after a failure.
    pub backoff_min: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// How often retention (forget and prune) runs.
    pub retention_every: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            quiet: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(600),
            retention_every: Duration::from_secs(24 * 3600),
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Take a snapshot of this tree.
    Persist(String),
    /// Forget snapshots past the retention policy and prune what they alone used.
    Retention,
}

#[derive(Debug, Clone, Default)]
struct Tree {
    /// When it first turned dirty since its last good snapshot began.
    dirty_since: Option<Instant>,
    /// The last change seen.
    last_change: Option<Instant>,
    /// Asked for now.
    forced: bool,
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this (after a failure).
    retry_at: Option<Instant>,
    /// The state taken by the attempt running now, put back if it fails.
    running: Option<(Option<Instant>, Option<Instant>)>,
}

impl Tree {
    fn due_at(&self, policy: &Policy) -> Option<Instant> {
        if self.running.is_some() {
            return None;
        }
        let since = self.dirty_since?;
        if self.forced {
            return Some(since);
        }
        let quiet = self.last_change.unwrap_or(since) + policy.quiet;
        let due = quiet.min(since + policy.max_wait);
        Some(self.retry_at.map_or(due, |r| due.max(r)))
    }
}

/// The schedule of every tree.
#[derive(Debug, Clone)]
pub struct Schedule {
    policy: Policy,
    trees: BTreeMap<String, Tree>,
    retention_at: Instant,
    retention_running: bool,
}

impl Schedule {
    /// An empty schedule. Retention first runs 15 minutes after `now` (or sooner when its
    /// interval is shorter), so an appliance restarted more often than the interval still
    /// applies it; then every `policy.retention_every`.
    pub fn new(policy: Policy, now: Instant) -> Self {
        Schedule {
            retention_at: now + policy.retention_every.min(FIRST_RETENTION),
            policy,
            trees: BTreeMap::new(),
            retention_running: false,
        }
    }

    /// The rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Starts following `tree` (clean until a change is seen).
    pub fn add(&mut self, tree: &str) {
        self.trees.entry(tree.to_owned()).or_default();
    }

    /// Stops following `tree`.
    pub fn remove(&mut self, tree: &str) {
        self.trees.remove(tree);
    }

    /// A change in `tree` was seen at `now` (a tree not followed yet is added).
    pub fn changed(&mut self, tree: &str, now: Instant) {
        let t = self.trees.entry(tree.to_owned()).or_default();
        t.dirty_since.get_or_insert(now);
        t.last_change = Some(now);
    }

    /// Persist `tree` as soon as possible, changed or not, past any backoff.
    pub fn force(&mut self, tree: &str, now: Instant) {
        let t = self.trees.entry(tree.to_owned()).or_default();
        t.dirty_since.get_or_insert(now);
        t.forced = true;
        t.retry_at = None;
    }

    /// Whether `tree` has changes not yet in a snapshot (or one is being taken).
    pub fn is_dirty(&self, tree: &str) -> bool {
        self.trees
            .get(tree)
            .is_some_and(|t| t.dirty_since.is_some() || t.running.is_some())
    }

    /// Failed attempts in a row for `tree`.
    pub fn failures(&self, tree: &str) -> u32 {
        self.trees.get(tree).map_or(0, |t| t.failures)
    }

    /// When `tree` is next due, if it is dirty.
    pub fn due_at(&self, tree: &str) -> Option<Instant> {
        self.trees.get(tree)?.due_at(&self.policy)
    }

    /// The job to run now, if any, marked as running: changes seen from now on count for the
    /// next snapshot. Call [`Schedule::finished`] when it ends.
    pub fn next(&mut self, now: Instant) -> Option<Job> {
        if self.retention_running {
            return None;
        }
        let policy = &self.policy;
        let due = self
            .trees
            .iter_mut()
            .filter(|(_, t)| t.running.is_none())
            .filter_map(|(name, t)| Some((t.due_at(policy)?, !t.forced, name, t)))
            .filter(|(at, ..)| *at <= now)
            // Forced first, then the longest due.
            .min_by_key(|(at, not_forced, ..)| (*not_forced, *at));
        if let Some((_, _, name, t)) = due {
            t.running = Some((t.dirty_since.take(), t.last_change.take()));
            t.forced = false;
            return Some(Job::Persist(name.clone()));
        }
        let busy = self.trees.values().any(|t| t.running.is_some());
        if !busy && now >= self.retention_at {
            self.retention_running = true;
            return Some(Job::Retention);
        }
        None
    }

    /// `job` ended at `now`, well or not.
    pub fn finished(&mut self, job: &Job, ok: bool, now: Instant) {
        match job {
            Job::Retention => {
                self.retention_running = false;
                // A failed retention waits for the next round: nothing is at risk meanwhile.
                self.retention_at = now + self.policy.retention_every;
            }
            Job::Persist(name) => {
                let policy = &self.policy;
                let Some(t) = self.trees.get_mut(name) else {
                    return;
                };
                let Some((since, last)) = t.running.take() else {
                    return;
                };
                if ok {
                    t.failures = 0;
                    t.retry_at = None;
                    return;
                }
                t.failures = t.failures.saturating_add(1);
                let shift = (t.failures - 1).min(20);
                let delay = policy
                    .backoff_min
                    .saturating_mul(1 << shift)
                    .min(policy.backoff_max);
                t.retry_at = Some(now + delay);
                // Still dirty, since the first change the failed attempt was to cover.
                t.dirty_since = match (since, t.dirty_since) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                t.last_change = t.last_change.or(last);
            }
        }
    }

    /// The earliest moment [`Schedule::next`] may have something, if any.
    pub fn wake_at(&self) -> Option<Instant> {
        if self.retention_running {
            return None;
        }
        let trees = self
            .trees
            .values()
            .filter_map(|t| t.due_at(&self.policy))
            .min();
        Some(trees.map_or(self.retention_at, |t| t.min(self.retention_at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn sched() -> (Schedule, Instant) {
        let t0 = Instant::now();
        (Schedule::new(Policy::default(), t0), t0)
    }

    #[test]
    fn a_tree_is_persisted_after_changes_go_quiet() {
        let (mut s, t0) = sched();
        s.add("home/a");
        assert_eq!(s.next(t0), None);
        s.changed("home/a", t0);
        s.changed("home/a", t0 + 10 * S);
        assert_eq!(s.next(t0 + 39 * S), None, "quiet only since 10 s");
        assert_eq!(s.wake_at(), Some(t0 + 40 * S));
        assert_eq!(s.next(t0 + 40 * S), Some(Job::Persist("home/a".into())));
        assert!(s.is_dirty("home/a"), "dirty while it runs");
        assert_eq!(s.next(t0 + 41 * S), None, "one attempt at a time");
        s.finished(&Job::Persist("home/a".into()), true, t0 + 50 * S);
        assert!(!s.is_dirty("home/a"));
        assert_eq!(s.next(t0 + 500 * S), None);
    }

    #[test]
    fn constant_change_waits_at_most_max_wait() {
        let (mut s, t0) = sched();
        for i in 0..299 {
            s.changed("t", t0 + i * S);
            assert_eq!(s.next(t0 + i * S), None, "at {i} s");
        }
        s.changed("t", t0 + 300 * S);
        assert_eq!(s.next(t0 + 300 * S), Some(Job::Persist("t".into())));
    }

    #[test]
    fn changes_during_a_snapshot_count_for_the_next() {
        let (mut s, t0) = sched();
        s.changed("t", t0);
        let job = s.next(t0 + 30 * S).unwrap();
        s.changed("t", t0 + 31 * S);
        s.finished(&job, true, t0 + 40 * S);
        assert!(s.is_dirty("t"));
        assert_eq!(s.due_at("t"), Some(t0 + 61 * S));
    }

    #[test]
    fn failures_back_off_exponentially_and_force_skips_the_wait() {
        let (mut s, t0) = sched();
        // As if retention had just run: its next run is a day away, past this test's span.
        s.finished(&Job::Retention, true, t0);
        s.changed("t", t0);
        let mut now = t0 + 30 * S;
        let mut delays = vec![];
        for _ in 0..10 {
            let job = s.next(now).expect("due");
            s.finished(&job, false, now);
            assert!(s.is_dirty("t"), "a failure keeps the tree dirty");
            let at = s.due_at("t").unwrap();
            delays.push((at - now).as_secs());
            assert_eq!(s.next(at - Duration::from_millis(1)), None);
            now = at;
        }
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(s.failures("t"), 10);
        s.force("t", now + S);
        assert_eq!(s.next(now + S), Some(Job::Persist("t".into())));
        s.finished(&Job::Persist("t".into()), true, now + 2 * S);
        assert_eq!(s.failures("t"), 0);
        assert!(!s.is_dirty("t"));
    }

    #[test]
    fn retention_first_runs_soon_after_a_start() {
        let (mut s, t0) = sched();
        assert_eq!(s.wake_at(), Some(t0 + FIRST_RETENTION));
        assert_eq!(s.next(t0 + FIRST_RETENTION), Some(Job::Retention));
    }

    #[test]
    fn forced_trees_go_first_and_retention_waits_for_idle() {
        let (mut s, t0) = sched();
        let day = s.policy().retention_every;
        s.changed("a", t0);
        s.force("b", t0 + day);
        let now = t0 + day;
        assert_eq!(s.next(now), Some(Job::Persist("b".into())));
        assert_eq!(s.next(now), Some(Job::Persist("a".into())));
        assert_eq!(s.next(now), None, "retention waits for the snapshots");
        s.finished(&Job::Persist("a".into()), true, now);
        s.finished(&Job::Persist("b".into()), true, now);
        assert_eq!(s.next(now), Some(Job::Retention));
        s.changed("a", now);
        assert_eq!(
            s.next(now + 40 * S),
            None,
            "no snapshot while retention runs"
        );
        s.finished(&Job::Retention, true, now + 40 * S);
        assert_eq!(s.next(now + 40 * S), Some(Job::Persist("a".into())));
        assert_eq!(s.wake_at(), Some(now + 40 * S + day));
    }
}
