//! Pending pairing codes, sans-IO (time is passed in).
//!
//! A code is issued for a user and lives for a fixed time. It is used at most once. Used and
//! expired codes are remembered for an hour after their expiry so a tablet is told "already
//! used" or "expired" rather than a bare "wrong code".

use std::collections::HashMap;
use std::time::{Duration, Instant};

use periphery_protocol::pairing::PairingCode;

const REMEMBER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Slot {
    code: PairingCode,
    user: String,
    expires: Instant,
    used: bool,
}

/// Why a code's slot cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeRefused {
    /// No such code.
    #[error("wrong pairing code")]
    Unknown,
    /// The code's time is over.
    #[error("this pairing code has expired; ask for a new one")]
    Expired,
    /// The code was used already.
    #[error("this pairing code was already used; ask for a new one")]
    Used,
}

/// The set of issued codes.
#[derive(Debug)]
pub struct PendingCodes {
    ttl: Duration,
    slots: HashMap<String, Slot>,
}

impl PendingCodes {
    /// Codes live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: HashMap::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        self.slots
            .retain(|_, s| now.saturating_duration_since(s.expires) < REMEMBER);
    }

    /// Issues a code for `user`, drawing codes from `generate` until one has a free slot.
    pub fn issue(
        &mut self,
        user: &str,
        now: Instant,
        mut generate: impl FnMut() -> PairingCode,
    ) -> PairingCode {
        self.prune(now);
        let code = loop {
            let c = generate();
            if !self.slots.contains_key(c.slot()) {
                break c;
            }
        };
        self.slots.insert(
            code.slot().to_owned(),
            Slot {
                code: code.clone(),
                user: user.to_owned(),
                expires: now + self.ttl,
                used: false,
            },
        );
        code
    }

    /// The code and user of a usable slot.
    pub fn lookup(
        &mut self,
        slot: &str,
        now: Instant,
    ) -> Result<(PairingCode, String), CodeRefused> {
        self.prune(now);
        let s = self.slots.get(slot).ok_or(CodeRefused::Unknown)?;
        if s.used {
            Err(CodeRefused::Used)
        } else if now >= s.expires {
            Err(CodeRefused::Expired)
        } else {
            Ok((s.code.clone(), s.user.clone()))
        }
    }

    /// Marks a slot used; fails if it is not usable any more (another tablet won the race,
    /// or time ran out during the exchange).
    pub fn consume(&mut self, slot: &str, now: Instant) -> Result<(), CodeRefused> {
        self.lookup(slot, now)?;
        if let Some(s) = self.slots.get_mut(slot) {
            s.used = true;
        }
        Ok(())
    }

    /// Invalidates every code of `user` (the user was removed).
    pub fn forget_user(&mut self, user: &str) {
        self.slots.retain(|_, s| s.user != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(codes: &'static [&'static str]) -> impl FnMut() -> PairingCode {
        let mut i = 0;
        move || {
            let c = PairingCode::parse(codes[i]).unwrap();
            i += 1;
            c
        }
    }

    #[test]
    fn a_code_works_once_and_then_says_used() {
        let t = Instant::now();
        let mut p = PendingCodes::new(Duration::from_secs(300));
        let c = p.issue("alice", t, seq(&["AAAA-1111"]));
        assert_eq!(p.lookup(c.slot(), t).unwrap().1, "alice");
        p.consume(c.slot(), t).unwrap();
        assert_eq!(p.lookup(c.slot(), t), Err(CodeRefused::Used));
        assert_eq!(p.consume(c.slot(), t), Err(CodeRefused::Used));
    }

    #[test]
    fn a_code_expires_after_its_ttl_and_is_forgotten_later() {
        let t = Instant::now();
        let mut p = PendingCodes::new(Duration::from_secs(300));
        let c = p.issue("alice", t, seq(&["AAAA-1111"]));
        let late = t + Duration::from_secs(300);
        assert_eq!(p.lookup(c.slot(), late), Err(CodeRefused::Expired));
        assert_eq!(
            p.lookup(c.slot(), late + REMEMBER),
            Err(CodeRefused::Unknown)
        );
        assert_eq!(p.lookup("ZZZZ", t), Err(CodeRefused::Unknown));
    }

    #[test]
    fn slots_never_collide() {
        let t = Instant::now();
        let mut p = PendingCodes::new(Duration::from_secs(300));
        p.issue("alice", t, seq(&["AAAA-1111"]));
        let c = p.issue("bob", t, seq(&["AAAA-2222", "BBBB-3333"]));
        assert_eq!(c.slot(), "BBBB");
        p.forget_user("bob");
        assert_eq!(p.lookup("BBBB", t), Err(CodeRefused::Unknown));
    }
}
