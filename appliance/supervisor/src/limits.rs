//! Failed-attempt limits for pairing and password login, sans-IO (time is passed in).
//!
//! Failures are counted per [`Subject`] — a user and a source address are counted
//! separately, so an attacker cannot spread guesses over many users from one address, nor
//! over many addresses against one user. Once a subject has `max_failures` failures within
//! `window`, further attempts are refused until the oldest of them leaves the window.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user name.
    User(String),
    /// A source address.
    Addr(IpAddr),
}

/// Counts failed attempts and refuses subjects that had too many.
#[derive(Debug)]
pub struct AttemptLimiter {
    max_failures: usize,
    window: Duration,
    failures: HashMap<Subject, VecDeque<Instant>>,
}

impl AttemptLimiter {
    /// A limiter allowing `max_failures` failures per subject within `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures as usize,
            window,
            failures: HashMap::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.failures.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// `Err(retry_after)` if any of `subjects` may not try now.
    pub fn check(&mut self, subjects: &[Subject], now: Instant) -> Result<(), Duration> {
        self.prune(now);
        let mut wait = Duration::ZERO;
        for s in subjects {
            if let Some(q) = self.failures.get(s) {
                if q.len() >= self.max_failures {
                    // The attempt is allowed again when enough failures leave the window.
                    let oldest_blocking = q[q.len() - self.max_failures];
                    let until = oldest_blocking + self.window;
                    wait = wait.max(until.saturating_duration_since(now));
                }
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Records one failed attempt against each of `subjects`.
    pub fn fail(&mut self, subjects: &[Subject], now: Instant) {
        for s in subjects {
            self.failures.entry(s.clone()).or_default().push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Subject {
        Subject::Addr("10.0.0.1".parse().unwrap())
    }

    #[test]
    fn sixth_attempt_after_five_failures_is_refused_until_the_window_passes() {
        let t0 = Instant::now();
        let mut l = AttemptLimiter::new(5, Duration::from_secs(600));
        for i in 0..5 {
            let t = t0 + Duration::from_secs(i * 10);
            assert_eq!(l.check(&[addr()], t), Ok(()));
            l.fail(&[addr()], t);
        }
        let t = t0 + Duration::from_secs(60);
        assert_eq!(l.check(&[addr()], t), Err(Duration::from_secs(540)));
        // The first failure leaves the window at t0+600: one more attempt is allowed.
        assert_eq!(l.check(&[addr()], t0 + Duration::from_secs(600)), Ok(()));
    }

    #[test]
    fn subjects_are_counted_separately_and_together() {
        let t0 = Instant::now();
        let mut l = AttemptLimiter::new(2, Duration::from_secs(60));
        let alice = Subject::User("alice".into());
        l.fail(&[addr(), alice.clone()], t0);
        l.fail(&[addr()], t0);
        assert!(l.check(&[addr()], t0).is_err());
        assert!(l.check(std::slice::from_ref(&alice), t0).is_ok());
        // An attempt is refused if any of its subjects is blocked.
        assert!(l.check(&[alice, addr()], t0).is_err());
        assert!(l
            .check(&[Subject::Addr("10.0.0.2".parse().unwrap())], t0)
            .is_ok());
    }
}
