//! Periphery sessions: who controls a live workstation, who watches it, and how control moves
//! between people — handoff offers (accept, decline, withdraw, expiry), reclaim, shares
//! (view-only or co-control) and the input floor.
//!
//! Sans-IO: a [`Session`] is plain data (it is what the appliance stores, one record per
//! workstation), every transition is a method that takes the time as an argument, checks
//! everything first and changes nothing when it refuses. A transition returns the [`Event`]s it
//! caused; the appliance commits the new record and the events' audit entries in one
//! transaction, then makes the live state (attachments, notices) follow.
//!
//! The commit point of a handoff is the [`Session::epoch`]: it grows with every change of
//! controller, attachments carry the epoch they were granted, and input stamped with an older
//! epoch is dropped ([`Session::accepts_input`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (the appliance's wall clock).
pub type Millis = u64;

/// The longest an offer may stay open: a day.
pub const MAX_OFFER_TTL: Millis = 24 * 3600 * 1000;

/// How a user other than the controller takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Sees the desktop; input is never applied.
    View,
    /// May control the desktop while holding the floor.
    Control,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::View => "view-only",
            Access::Control => "co-control",
        })
    }
}

/// A pending offer to hand the session to another user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Identifier (chosen by the appliance, unique among its offers).
    pub id: String,
    /// The controller who offered.
    pub from_user: String,
    /// The device it was offered from.
    pub from_device: String,
    /// Who may accept.
    pub to_user: String,
    /// When it was made.
    pub created: Millis,
    /// When it lapses.
    pub expires: Millis,
    /// Whether `from_user` may take the session back after it is accepted.
    pub reclaimable: bool,
    /// The session epoch it was made in: an offer is valid only while control has not moved.
    pub epoch: u64,
}

/// How an offer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferEnd {
    /// Accepted: control moved.
    Accepted,
    /// The recipient declined.
    Declined,
    /// The offerer withdrew it.
    Withdrawn,
    /// Its time ran out.
    Expired,
    /// Control moved another way first (another offer accepted, or a reclaim).
    Superseded,
}

impl std::fmt::Display for OfferEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OfferEnd::Accepted => "accepted",
            OfferEnd::Declined => "declined",
            OfferEnd::Withdrawn => "withdrawn",
            OfferEnd::Expired => "expired",
            OfferEnd::Superseded => "superseded",
        })
    }
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new offer.
    Offered(Offer),
    /// An offer ended.
    OfferEnded {
        /// The offer.
        offer: Offer,
        /// How.
        end: OfferEnd,
        /// Who ended it (`None` for expiry and supersession).
        by: Option<String>,
    },
    /// Control moved from one user to another (a handoff or a reclaim).
    ControlMoved {
        /// The previous controller: their tablets are detached.
        from: String,
        /// The new controller.
        to: String,
        /// The new epoch.
        epoch: u64,
        /// Whether this was a reclaim.
        reclaim: bool,
        /// Users whose shares ended with it (their tablets are detached too).
        unshared: Vec<String>,
    },
    /// A user was given access.
    Shared {
        /// Who.
        with: String,
        /// How.
        access: Access,
    },
    /// A user's access ended.
    Unshared {
        /// Who.
        with: String,
    },
    /// The input floor moved.
    Floor {
        /// The user now holding it.
        holder: String,
    },
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Only the controller may do this.
    #[error("{user} does not control this session ({holder} does)")]
    NotController {
        /// Who asked.
        user: String,
        /// Who controls.
        holder: String,
    },
    /// No such offer (it may have ended).
    #[error("no pending offer {0}")]
    NoSuchOffer(String),
    /// The offer is someone else's to accept or decline.
    #[error("offer {offer} was made to {to}, not to {user}")]
    NotYours {
        /// The offer.
        offer: String,
        /// Its recipient.
        to: String,
        /// Who asked.
        user: String,
    },
    /// Only the offer's maker may withdraw it.
    #[error("offer {offer} was made by {from}, not by {user}")]
    NotOfferer {
        /// The offer.
        offer: String,
        /// Who made it.
        from: String,
        /// Who asked.
        user: String,
    },
    /// The offer lapsed.
    #[error("offer {0} has expired")]
    Expired(String),
    /// Control moved after the offer was made.
    #[error("offer {0} no longer applies: control of the session has moved since it was made")]
    Superseded(String),
    /// Offering, sharing with or reclaiming from oneself.
    #[error("{0} already controls this session")]
    AlreadyController(String),
    /// The offer's lifetime is zero or over a day.
    #[error("an offer must last between 1 ms and 24 h, not {0} ms")]
    BadTtl(Millis),
    /// Reclaiming without the right to.
    #[error("{user} cannot reclaim this session: {why}")]
    CannotReclaim {
        /// Who asked.
        user: String,
        /// Why not.
        why: String,
    },
    /// Taking the floor without control.
    #[error("{0} may not control this session")]
    NotAllowed(String),
    /// The offer id is taken.
    #[error("offer id {0} is in use")]
    DuplicateOffer(String),
}

/// One workstation's live session: the stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who controls it now.
    pub holder: String,
    /// Who may take it back (set by a reclaimable handoff).
    pub reclaimer: Option<String>,
    /// Grows whenever control moves; input from an older epoch is dropped.
    pub epoch: u64,
    /// Other users and their access.
    pub shares: BTreeMap<String, Access>,
    /// Who holds the input floor when not the controller.
    pub floor: Option<String>,
    /// Pending offers.
    pub offers: Vec<Offer>,
}

impl Session {
    /// A fresh session controlled by the workstation's owner.
    pub fn new(owner: &str) -> Self {
        Self {
            holder: owner.to_owned(),
            reclaimer: None,
            epoch: 1,
            shares: BTreeMap::new(),
            floor: None,
            offers: Vec::new(),
        }
    }

    fn must_hold(&self, user: &str) -> Result<(), SessionError> {
        if user == self.holder {
            Ok(())
        } else {
            Err(SessionError::NotController {
                user: user.to_owned(),
                holder: self.holder.clone(),
            })
        }
    }

    fn take_offer(&mut self, id: &str) -> Result<Offer, SessionError> {
        let i = self
            .offers
            .iter()
            .position(|o| o.id == id)
            .ok_or_else(|| SessionError::NoSuchOffer(id.to_owned()))?;
        Ok(self.offers.remove(i))
    }

    fn offer_ref(&self, id: &str) -> Result<&Offer, SessionError> {
        self.offers
            .iter()
            .find(|o| o.id == id)
            .ok_or_else(|| SessionError::NoSuchOffer(id.to_owned()))
    }

    /// The controller offers the session to `to`, lasting `ttl` from `now`.
    #[allow(clippy::too_many_arguments)] // Each is a distinct fact of the offer.
    pub fn offer(
        &mut self,
        now: Millis,
        id: &str,
        by_user: &str,
        by_device: &str,
        to: &str,
        ttl: Millis,
        reclaimable: bool,
    ) -> Result<Vec<Event>, SessionError> {
        self.must_hold(by_user)?;
        if to == self.holder {
            return Err(SessionError::AlreadyController(to.to_owned()));
        }
        if ttl == 0 || ttl > MAX_OFFER_TTL {
            return Err(SessionError::BadTtl(ttl));
        }
        if self.offers.iter().any(|o| o.id == id) {
            return Err(SessionError::DuplicateOffer(id.to_owned()));
        }
        let offer = Offer {
            id: id.to_owned(),
            from_user: by_user.to_owned(),
            from_device: by_device.to_owned(),
            to_user: to.to_owned(),
            created: now,
            expires: now.saturating_add(ttl),
            reclaimable,
            epoch: self.epoch,
        };
        self.offers.push(offer.clone());
        Ok(vec![Event::Offered(offer)])
    }

    /// `by` accepts offer `id`: control moves to them, the epoch grows, the previous
    /// controller's shares and every other offer end.
    pub fn accept(&mut self, now: Millis, id: &str, by: &str) -> Result<Vec<Event>, SessionError> {
        let offer = self.offer_ref(id)?;
        if offer.to_user != by {
            return Err(SessionError::NotYours {
                offer: id.to_owned(),
                to: offer.to_user.clone(),
                user: by.to_owned(),
            });
        }
        if now >= offer.expires {
            return Err(SessionError::Expired(id.to_owned()));
        }
        if offer.epoch != self.epoch || offer.from_user != self.holder {
            return Err(SessionError::Superseded(id.to_owned()));
        }
        let offer = self.take_offer(id)?;
        let mut events = vec![Event::OfferEnded {
            offer: offer.clone(),
            end: OfferEnd::Accepted,
            by: Some(by.to_owned()),
        }];
        events.extend(self.move_control(&offer.to_user, false));
        self.reclaimer = offer.reclaimable.then(|| offer.from_user.clone());
        Ok(events)
    }

    /// Moves control to `to`: a new epoch; shares, floor and pending offers end.
    fn move_control(&mut self, to: &str, reclaim: bool) -> Vec<Event> {
        let from = std::mem::replace(&mut self.holder, to.to_owned());
        self.epoch += 1;
        self.floor = None;
        let unshared: Vec<String> = std::mem::take(&mut self.shares).into_keys().collect();
        let mut events: Vec<Event> = std::mem::take(&mut self.offers)
            .into_iter()
            .map(|offer| Event::OfferEnded {
                offer,
                end: OfferEnd::Superseded,
                by: None,
            })
            .collect();
        events.push(Event::ControlMoved {
            from,
            to: to.to_owned(),
            epoch: self.epoch,
            reclaim,
            unshared,
        });
        events
    }

    /// The recipient declines offer `id`.
    pub fn decline(&mut self, id: &str, by: &str) -> Result<Vec<Event>, SessionError> {
        self.end_offer(id, by, OfferEnd::Declined)
    }

    /// The offerer withdraws offer `id` before it is accepted.
    pub fn withdraw(&mut self, id: &str, by: &str) -> Result<Vec<Event>, SessionError> {
        self.end_offer(id, by, OfferEnd::Withdrawn)
    }

    /// Ends offer `id` on behalf of `by`: its recipient declines, its maker withdraws.
    fn end_offer(&mut self, id: &str, by: &str, end: OfferEnd) -> Result<Vec<Event>, SessionError> {
        let offer = self.offer_ref(id)?;
        if end == OfferEnd::Withdrawn && offer.from_user != by {
            return Err(SessionError::NotOfferer {
                offer: id.to_owned(),
                from: offer.from_user.clone(),
                user: by.to_owned(),
            });
        }
        if end != OfferEnd::Withdrawn && offer.to_user != by {
            return Err(SessionError::NotYours {
                offer: id.to_owned(),
                to: offer.to_user.clone(),
                user: by.to_owned(),
            });
        }
        let offer = self.take_offer(id)?;
        Ok(vec![Event::OfferEnded {
            offer,
            end,
            by: Some(by.to_owned()),
        }])
    }

    /// Ends the offers whose time ran out by `now`.
    pub fn expire(&mut self, now: Millis) -> Vec<Event> {
        let (gone, kept): (Vec<Offer>, Vec<Offer>) = std::mem::take(&mut self.offers)
            .into_iter()
            .partition(|o| now >= o.expires);
        self.offers = kept;
        gone.into_iter()
            .map(|offer| Event::OfferEnded {
                offer,
                end: OfferEnd::Expired,
                by: None,
            })
            .collect()
    }

    /// When the next offer lapses.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.offers.iter().map(|o| o.expires).min()
    }

    /// The user who handed the session off reclaimably takes it back.
    pub fn reclaim(&mut self, by: &str) -> Result<Vec<Event>, SessionError> {
        if by == self.holder {
            return Err(SessionError::AlreadyController(by.to_owned()));
        }
        match &self.reclaimer {
            Some(r) if r == by => {}
            Some(r) => {
                return Err(SessionError::CannotReclaim {
                    user: by.to_owned(),
                    why: format!("only {r} may"),
                })
            }
            None => {
                return Err(SessionError::CannotReclaim {
                    user: by.to_owned(),
                    why: "the session was not handed off with --reclaimable".into(),
                })
            }
        }
        self.reclaimer = None;
        Ok(self.move_control(by, true))
    }

    /// The controller shares the session with `with`.
    pub fn share(
        &mut self,
        by: &str,
        with: &str,
        access: Access,
    ) -> Result<Vec<Event>, SessionError> {
        self.must_hold(by)?;
        if with == self.holder {
            return Err(SessionError::AlreadyController(with.to_owned()));
        }
        self.shares.insert(with.to_owned(), access);
        if access == Access::View && self.floor.as_deref() == Some(with) {
            self.floor = None;
        }
        Ok(vec![Event::Shared {
            with: with.to_owned(),
            access,
        }])
    }

    /// The controller ends `with`'s share (or `with` leaves).
    pub fn unshare(&mut self, by: &str, with: &str) -> Result<Vec<Event>, SessionError> {
        if by != with {
            self.must_hold(by)?;
        }
        if self.shares.remove(with).is_none() {
            return Err(SessionError::NotAllowed(with.to_owned()));
        }
        let mut events = vec![Event::Unshared {
            with: with.to_owned(),
        }];
        if self.floor.as_deref() == Some(with) {
            self.floor = None;
            events.push(Event::Floor {
                holder: self.holder.clone(),
            });
        }
        Ok(events)
    }

    /// A controller takes the input floor.
    pub fn take_floor(&mut self, by: &str) -> Result<Vec<Event>, SessionError> {
        if !self.may_control(by) {
            return Err(SessionError::NotAllowed(by.to_owned()));
        }
        self.floor = (by != self.holder).then(|| by.to_owned());
        Ok(vec![Event::Floor {
            holder: by.to_owned(),
        }])
    }

    /// Who holds the input floor.
    pub fn floor_holder(&self) -> &str {
        self.floor.as_deref().unwrap_or(&self.holder)
    }

    /// Whether `user` may watch.
    pub fn may_view(&self, user: &str) -> bool {
        user == self.holder || self.shares.contains_key(user)
    }

    /// Whether `user` may control (when holding the floor).
    pub fn may_control(&self, user: &str) -> bool {
        user == self.holder || self.shares.get(user) == Some(&Access::Control)
    }

    /// Whether input from `user`, stamped with `epoch`, is applied now.
    pub fn accepts_input(&self, user: &str, epoch: u64) -> bool {
        epoch == self.epoch && self.may_control(user) && self.floor_holder() == user
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MIN: Millis = 60_000;

    fn offered(s: &mut Session, now: Millis, id: &str, to: &str) {
        s.offer(now, id, &s.holder.clone(), "tab-1", to, MIN, false)
            .unwrap();
    }

    #[test]
    fn a_handoff_moves_control_and_the_epoch() {
        let mut s = Session::new("alice");
        assert!(s.accepts_input("alice", 1));
        offered(&mut s, 0, "o1", "bob");
        // Nothing moves before the accept.
        assert_eq!(s.holder, "alice");
        assert!(s.accepts_input("alice", 1));
        let ev = s.accept(1000, "o1", "bob").unwrap();
        assert_eq!(s.holder, "bob");
        assert_eq!(s.epoch, 2);
        assert!(matches!(
            &ev[..],
            [
                Event::OfferEnded {
                    end: OfferEnd::Accepted,
                    ..
                },
                Event::ControlMoved { from, to, epoch: 2, reclaim: false, .. }
            ] if from == "alice" && to == "bob"
        ));
        // Alice's input, stamped with the old epoch or not, is no longer applied; bob's is
        // with the new epoch only.
        assert!(!s.accepts_input("alice", 1));
        assert!(!s.accepts_input("alice", 2));
        assert!(!s.accepts_input("bob", 1));
        assert!(s.accepts_input("bob", 2));
        assert!(s.offers.is_empty());
    }

    #[test]
    fn only_the_recipient_accepts_and_only_in_time() {
        let mut s = Session::new("alice");
        offered(&mut s, 0, "o1", "carol");
        let before = s.clone();
        assert!(matches!(
            s.accept(10, "o1", "bob"),
            Err(SessionError::NotYours { .. })
        ));
        assert!(matches!(
            s.decline("o1", "bob"),
            Err(SessionError::NotYours { .. })
        ));
        assert!(matches!(
            s.accept(MIN, "o1", "carol"),
            Err(SessionError::Expired(_))
        ));
        assert_eq!(s, before, "refusals change nothing");
        assert_eq!(s.next_expiry(), Some(MIN));
        let ev = s.expire(MIN);
        assert!(matches!(
            &ev[..],
            [Event::OfferEnded {
                end: OfferEnd::Expired,
                by: None,
                ..
            }]
        ));
        assert!(matches!(
            s.accept(10, "o1", "carol"),
            Err(SessionError::NoSuchOffer(_))
        ));
        assert_eq!(s.holder, "alice");
    }

    #[test]
    fn withdrawn_and_declined_offers_are_gone() {
        let mut s = Session::new("alice");
        offered(&mut s, 0, "o1", "bob");
        offered(&mut s, 0, "o2", "bob");
        let e = s.withdraw("o1", "bob").unwrap_err();
        assert_eq!(e.to_string(), "offer o1 was made by alice, not by bob");
        s.withdraw("o1", "alice").unwrap();
        assert!(matches!(
            s.accept(1, "o1", "bob"),
            Err(SessionError::NoSuchOffer(_))
        ));
        let ev = s.decline("o2", "bob").unwrap();
        assert!(matches!(
            &ev[..],
            [Event::OfferEnded { end: OfferEnd::Declined, by: Some(b), .. }] if b == "bob"
        ));
        assert_eq!(s.holder, "alice");
        assert_eq!(s.epoch, 1);
    }

    #[test]
    fn of_two_offers_accepted_at_once_exactly_one_wins() {
        let mut s = Session::new("alice");
        s.offer(0, "to-bob", "alice", "tab-1", "bob", MIN, false)
            .unwrap();
        s.offer(0, "to-carol", "alice", "tab-2", "carol", MIN, false)
            .unwrap();
        let ev = s.accept(5, "to-carol", "carol").unwrap();
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::OfferEnded { offer, end: OfferEnd::Superseded, .. } if offer.id == "to-bob"
        )));
        assert!(matches!(
            s.accept(5, "to-bob", "bob"),
            Err(SessionError::NoSuchOffer(_))
        ));
        assert_eq!(s.holder, "carol");
        assert_eq!(s.epoch, 2);
    }

    #[test]
    fn an_offer_from_an_earlier_epoch_is_superseded() {
        // An offer restored from before a change of control (a stale record) never applies.
        let mut s = Session::new("alice");
        offered(&mut s, 0, "o1", "bob");
        let stale = s.offers[0].clone();
        offered(&mut s, 0, "o2", "carol");
        s.accept(1, "o2", "carol").unwrap();
        s.offers.push(stale);
        assert!(matches!(
            s.accept(2, "o1", "bob"),
            Err(SessionError::Superseded(_))
        ));
    }

    #[test]
    fn reclaim_needs_a_reclaimable_handoff_by_the_same_user() {
        let mut s = Session::new("alice");
        offered(&mut s, 0, "o1", "bob");
        s.accept(1, "o1", "bob").unwrap();
        assert!(matches!(
            s.reclaim("alice"),
            Err(SessionError::CannotReclaim { .. })
        ));
        s.offer(2, "o2", "bob", "b-tab", "alice", MIN, true)
            .unwrap();
        s.accept(3, "o2", "alice").unwrap();
        assert_eq!((s.holder.as_str(), s.epoch), ("alice", 3));
        // Bob handed it back reclaimably: bob, and only bob, may take it again.
        assert!(matches!(
            s.reclaim("carol"),
            Err(SessionError::CannotReclaim { .. })
        ));
        assert!(matches!(
            s.reclaim("alice"),
            Err(SessionError::AlreadyController(_))
        ));
        let ev = s.reclaim("bob").unwrap();
        assert!(matches!(
            &ev[..],
            [Event::ControlMoved { from, to, reclaim: true, epoch: 4, .. }] if from == "alice" && to == "bob"
        ));
        assert!(s.reclaim("bob").is_err());
        assert!(!s.accepts_input("alice", 3));
    }

    #[test]
    fn viewers_never_input_and_co_controllers_only_with_the_floor() {
        let mut s = Session::new("alice");
        assert!(matches!(
            s.share("bob", "carol", Access::View),
            Err(SessionError::NotController { .. })
        ));
        s.share("alice", "bob", Access::View).unwrap();
        s.share("alice", "carol", Access::Control).unwrap();
        assert!(s.may_view("bob") && s.may_view("carol") && !s.may_view("dave"));
        assert!(
            !s.accepts_input("bob", 1),
            "a viewer's input is never applied"
        );
        assert!(matches!(
            s.take_floor("bob"),
            Err(SessionError::NotAllowed(_))
        ));
        // The controller holds the floor until a co-controller takes it.
        assert!(s.accepts_input("alice", 1) && !s.accepts_input("carol", 1));
        s.take_floor("carol").unwrap();
        assert!(!s.accepts_input("alice", 1) && s.accepts_input("carol", 1));
        s.take_floor("alice").unwrap();
        assert!(s.accepts_input("alice", 1) && !s.accepts_input("carol", 1));
        // Unsharing the floor holder gives the floor back to the controller.
        s.take_floor("carol").unwrap();
        let ev = s.unshare("alice", "carol").unwrap();
        assert!(ev.contains(&Event::Floor {
            holder: "alice".into()
        }));
        assert!(s.accepts_input("alice", 1));
        assert!(!s.may_view("carol"));
        // A viewer may leave on their own; nobody else but the controller may remove them.
        assert!(s.unshare("carol", "bob").is_err());
        s.unshare("bob", "bob").unwrap();
        assert!(s.shares.is_empty());
    }

    #[test]
    fn a_handoff_ends_the_previous_controllers_shares() {
        let mut s = Session::new("alice");
        s.share("alice", "dave", Access::Control).unwrap();
        s.take_floor("dave").unwrap();
        offered(&mut s, 0, "o1", "bob");
        let ev = s.accept(1, "o1", "bob").unwrap();
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::ControlMoved { unshared, .. } if unshared == &vec!["dave".to_owned()]
        )));
        assert!(!s.may_view("dave"));
        assert_eq!(s.floor_holder(), "bob");
    }

    #[test]
    fn bad_offers_are_refused() {
        let mut s = Session::new("alice");
        assert!(matches!(
            s.offer(0, "o", "bob", "d", "carol", MIN, false),
            Err(SessionError::NotController { .. })
        ));
        assert!(matches!(
            s.offer(0, "o", "alice", "d", "alice", MIN, false),
            Err(SessionError::AlreadyController(_))
        ));
        assert!(matches!(
            s.offer(0, "o", "alice", "d", "bob", 0, false),
            Err(SessionError::BadTtl(0))
        ));
        assert!(matches!(
            s.offer(0, "o", "alice", "d", "bob", MAX_OFFER_TTL + 1, false),
            Err(SessionError::BadTtl(_))
        ));
        offered(&mut s, 0, "o", "bob");
        assert!(matches!(
            s.offer(0, "o", "alice", "d", "carol", MIN, false),
            Err(SessionError::DuplicateOffer(_))
        ));
    }

    #[test]
    fn the_record_round_trips_through_postcard() {
        let mut s = Session::new("alice");
        s.share("alice", "bob", Access::View).unwrap();
        offered(&mut s, 7, "o1", "carol");
        let bytes = postcard::to_allocvec(&s).unwrap();
        let back: Session = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
    }
}
