//! Handoffs and shares: the session requests, committed through the session gate.
//!
//! Every transition runs [`periphery_session::Session`]'s logic inside one store transaction
//! (the session record and its audit entries) while holding the gate's write lock, then
//! updates the gate's copy before releasing it: input checked at the gate afterwards sees the
//! new epoch. Only then are tablets detached (with the reason) and notified.

use rand::RngCore;

use periphery_protocol::{ApiError, ErrorCode, Notice, OfferInfo, Request, Response, SessionInfo};
use periphery_session::{Access, Event, Millis, Offer, OfferEnd, Session, SessionError};

use super::{audit, audit_entry, internal, lock, Appliance, Caller, Conversation};
use crate::store::{AuditRecord, WorkstationRecord};

fn now_ms() -> Millis {
    crate::clock::unix_ms()
}

fn ws_name(rec: &WorkstationRecord) -> String {
    format!("{}/{}", rec.user, rec.name)
}

fn offer_info(ws: &str, o: &Offer) -> OfferInfo {
    OfferInfo {
        id: o.id.clone(),
        ws: ws.to_owned(),
        from_user: o.from_user.clone(),
        from_device: o.from_device.clone(),
        to_user: o.to_user.clone(),
        created_ms: o.created,
        expires_ms: o.expires,
        reclaimable: o.reclaimable,
    }
}

fn session_err(e: SessionError) -> ApiError {
    let code = match &e {
        SessionError::NotController { .. }
        | SessionError::NotYours { .. }
        | SessionError::NotOfferer { .. }
        | SessionError::CannotReclaim { .. }
        | SessionError::NotAllowed(_) => ErrorCode::Forbidden,
        SessionError::NoSuchOffer(_) => ErrorCode::NotFound,
        SessionError::Expired(_) | SessionError::Superseded(_) => ErrorCode::OutOfOrder,
        SessionError::AlreadyController(_)
        | SessionError::BadTtl(_)
        | SessionError::DuplicateOffer(_) => ErrorCode::InvalidArgument,
    };
    ApiError::new(code, e.to_string())
}

/// The audit entry of one event; the detail starts with the workstation, which is how
/// `history` finds a session's entries.
fn audit_for(actor: &str, ws: &str, e: &Event) -> AuditRecord {
    let (event, detail) = match e {
        Event::Offered(o) => (
            "handoff-offer",
            format!(
                "offer {} to {} from device {}{}, until {} ms",
                o.id,
                o.to_user,
                o.from_device,
                if o.reclaimable { ", reclaimable" } else { "" },
                o.expires
            ),
        ),
        Event::OfferEnded { offer, end, by } => (
            match end {
                OfferEnd::Accepted => "handoff-accept",
                OfferEnd::Declined => "handoff-decline",
                OfferEnd::Withdrawn => "handoff-withdraw",
                OfferEnd::Expired => "handoff-expire",
                OfferEnd::Superseded => "handoff-superseded",
            },
            format!(
                "offer {} from {} to {} {end}{}",
                offer.id,
                offer.from_user,
                offer.to_user,
                by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
            ),
        ),
        Event::ControlMoved {
            from,
            to,
            epoch,
            reclaim,
            unshared,
        } => (
            if *reclaim {
                "session-reclaim"
            } else {
                "session-handoff"
            },
            format!(
                "control moved from {from} to {to} (epoch {epoch}){}",
                if unshared.is_empty() {
                    String::new()
                } else {
                    format!("; shares ended: {}", unshared.join(", "))
                }
            ),
        ),
        Event::Shared { with, access } => ("session-share", format!("shared {access} with {with}")),
        Event::Unshared { with } => ("session-unshare", format!("share of {with} ended")),
        Event::Floor { holder } => ("session-floor", format!("{holder} holds the floor")),
    };
    audit(actor.to_owned(), event, format!("{ws}: {detail}"))
}

impl Appliance {
    /// Every workstation with its session (a fresh one of its owner when none is stored).
    pub(super) async fn ws_sessions(&self) -> Result<Vec<(WorkstationRecord, Session)>, ApiError> {
        self.blocking(|s| {
            let stored = s.sessions()?;
            Ok::<_, crate::store::StoreError>(
                s.workstations()?
                    .into_iter()
                    .map(|w| {
                        let session = stored
                            .iter()
                            .find(|(id, _)| *id == w.id)
                            .map(|(_, x)| x.clone())
                            .unwrap_or_else(|| Session::new(&w.user));
                        (w, session)
                    })
                    .collect(),
            )
        })
        .await
        .map_err(internal)
    }

    /// The workstation `ws` names for a session request: `user/name`, or a name among the
    /// caller's own, held, shared and reclaimable sessions.
    pub(super) async fn resolve_session(
        &self,
        caller: &Caller,
        ws: &str,
    ) -> Result<(WorkstationRecord, Session), ApiError> {
        let me = match caller {
            Caller::Device { device, .. } => Some(device.user.as_str()),
            _ => None,
        };
        let (owner, name) = match ws.split_once('/') {
            Some((u, n)) => (Some(u), n),
            None => (None, ws),
        };
        let mut found: Vec<(WorkstationRecord, Session)> = self
            .ws_sessions()
            .await?
            .into_iter()
            .filter(|(w, s)| {
                w.name == name
                    && owner.is_none_or(|o| o == w.user)
                    && me.is_none_or(|u| {
                        w.user == u || s.may_view(u) || s.reclaimer.as_deref() == Some(u)
                    })
            })
            .collect();
        match found.len() {
            0 => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no workstation session '{ws}' you take part in"),
            )),
            1 => Ok(found.remove(0)),
            _ => Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("'{ws}' is ambiguous; say which as user/name"),
            )),
        }
    }

    /// The workstation and session holding offer `id`.
    async fn find_offer(&self, id: &str) -> Result<(WorkstationRecord, Session), ApiError> {
        let found = self
            .ws_sessions()
            .await?
            .into_iter()
            .find(|(_, s)| s.offers.iter().any(|o| o.id == id));
        found.ok_or_else(|| self.offer_gone(id))
    }

    /// The error for an offer that is not pending: how it ended, when known.
    fn offer_gone(&self, id: &str) -> ApiError {
        let ended = lock(&self.ended_offers).get(id).cloned();
        ApiError::new(
            ErrorCode::NotFound,
            match ended {
                Some(how) => format!("offer {id} is no longer pending: it was {how}"),
                None => format!("no pending offer {id}"),
            },
        )
    }

    /// Commits one transition of `rec`'s session (see the module docs) and applies its
    /// events; returns what `f` returned.
    pub(super) async fn transition<T: Send + 'static>(
        &self,
        rec: &WorkstationRecord,
        actor: String,
        f: impl FnOnce(&mut Session, Millis) -> Result<(T, Vec<Event>), SessionError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let gate = self.streaming.sessions().clone();
        let mut sessions = gate.write().await;
        let (id, owner, ws) = (rec.id.clone(), rec.user.clone(), ws_name(rec));
        let store = self.store.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            store.update_session(&id, &owner, |s| {
                let (out, events) = f(s, now)?;
                let audit = events.iter().map(|e| audit_for(&actor, &ws, e)).collect();
                Ok::<_, SessionError>(((out, events, s.clone()), audit))
            })
        })
        .await
        .map_err(internal)?
        .map_err(internal)?
        .map_err(|e| match e {
            SessionError::NoSuchOffer(id) => self.offer_gone(&id),
            e => session_err(e),
        })?;
        let (out, events, session) = committed;
        sessions.insert(rec.id.clone(), session);
        // Before the gate opens: a request that lost a race learns how the offer ended.
        for e in &events {
            if let Event::OfferEnded { offer, end, by } = e {
                let how = match (end, by) {
                    (OfferEnd::Superseded, _) => {
                        "superseded: control of the session moved first".to_owned()
                    }
                    (end, Some(by)) => format!("{end} by {by}"),
                    (end, None) => end.to_string(),
                };
                let mut ended = lock(&self.ended_offers);
                // Only for clearer errors: bounded, the oldest knowledge is the least needed.
                if ended.len() >= 4096 {
                    ended.clear();
                }
                ended.insert(offer.id.clone(), how);
            }
        }
        drop(sessions);
        self.apply_events(rec, &events);
        Ok(out)
    }

    /// Makes the live state follow committed events: detaches with reasons, notices.
    fn apply_events(&self, rec: &WorkstationRecord, events: &[Event]) {
        let ws = ws_name(rec);
        let detach = |users: &[String], reason: &str| {
            for (conn, attach_id) in self.streaming.detach_users(&rec.id, users) {
                self.notify_connection(
                    conn,
                    Notice::Detached {
                        attach_id,
                        reason: reason.to_owned(),
                    },
                );
            }
        };
        for e in events {
            match e {
                Event::Offered(o) => {
                    tracing::info!(ws = %ws, offer = %o.id, to = %o.to_user, "session offered");
                    self.notify_user(&o.to_user, &Notice::Offered(offer_info(&ws, o)));
                }
                Event::OfferEnded { offer, end, by } => {
                    let n = Notice::OfferEnded {
                        offer: offer_info(&ws, offer),
                        outcome: end.to_string(),
                        by: by.clone(),
                    };
                    self.notify_user(&offer.from_user, &n);
                    self.notify_user(&offer.to_user, &n);
                }
                Event::ControlMoved {
                    from,
                    to,
                    epoch,
                    reclaim,
                    unshared,
                } => {
                    tracing::info!(ws = %ws, %from, %to, epoch, reclaim, "session control moved");
                    let reason = if *reclaim {
                        format!("reclaimed by {to}")
                    } else {
                        format!("handed off to {to}")
                    };
                    detach(std::slice::from_ref(from), &reason);
                    detach(unshared, &format!("the share ended: {reason}"));
                }
                Event::Shared { with, access } => self.notify_user(
                    with,
                    &Notice::Shared {
                        ws: ws.clone(),
                        by: rec.user.clone(),
                        access: access.to_string(),
                    },
                ),
                Event::Unshared { with } => detach(
                    std::slice::from_ref(with),
                    &format!("{ws} is no longer shared with {with}"),
                ),
                Event::Floor { holder } => {
                    for conn in self.streaming.connections_of(&rec.id) {
                        self.notify_connection(
                            conn,
                            Notice::Floor {
                                ws: ws.clone(),
                                holder: holder.clone(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Ends the offers whose time ran out; run every second by the daemon.
    pub async fn expire_offers(&self) -> Result<(), ApiError> {
        let now = now_ms();
        // Only stored sessions can hold offers; workstations are read only when one is due.
        let due: Vec<String> = self
            .blocking(|s| s.sessions())
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|(_, s)| s.next_expiry().is_some_and(|t| t <= now))
            .map(|(id, _)| id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let records = self
            .blocking(|s| s.workstations())
            .await
            .map_err(internal)?;
        for rec in records.iter().filter(|r| due.contains(&r.id)) {
            self.transition(rec, "appliance".into(), |s, now| Ok(((), s.expire(now))))
                .await?;
        }
        Ok(())
    }

    /// Serves the session requests.
    pub(super) async fn session_request(
        &self,
        conv: &mut Conversation,
        req: Request,
    ) -> Result<Response, ApiError> {
        let actor = conv.caller.actor();
        let device = match &conv.caller {
            Caller::Device { device, .. } => Some(device.clone()),
            _ => None,
        };
        let tablet_only = || {
            device.clone().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Forbidden,
                    format!("'{}' is for a user's devices", req.name()),
                )
            })
        };
        match req.clone() {
            Request::HandoffOffer {
                ws,
                to,
                ttl_secs,
                reclaimable,
            } => {
                let d = tablet_only()?;
                let (rec, _) = self.resolve_session(&conv.caller, &ws).await?;
                self.require_user(&to).await?;
                let mut raw = [0u8; 4];
                rand::thread_rng().fill_bytes(&mut raw);
                let id = hex::encode(raw);
                let ttl = ttl_secs.saturating_mul(1000);
                let name = ws_name(&rec);
                let offer = self
                    .transition(&rec, actor, move |s, now| {
                        let events = s.offer(now, &id, &d.user, &d.id, &to, ttl, reclaimable)?;
                        let offer = s.offers.last().cloned();
                        Ok((offer, events))
                    })
                    .await?
                    .ok_or_else(|| ApiError::new(ErrorCode::Internal, "offer not recorded"))?;
                Ok(Response::Offer(offer_info(&name, &offer)))
            }
            Request::Offers => {
                let me = device.as_ref().map(|d| d.user.clone());
                let mut out = Vec::new();
                for (rec, s) in self.ws_sessions().await? {
                    for o in &s.offers {
                        if me
                            .as_ref()
                            .is_none_or(|u| *u == o.to_user || *u == o.from_user)
                        {
                            out.push(offer_info(&ws_name(&rec), o));
                        }
                    }
                }
                Ok(Response::Offers(out))
            }
            Request::HandoffAccept { offer } => {
                let d = tablet_only()?;
                let (rec, _) = self.find_offer(&offer).await?;
                let epoch = self
                    .transition(&rec, actor, move |s, now| {
                        let events = s.accept(now, &offer, &d.user)?;
                        Ok((s.epoch, events))
                    })
                    .await?;
                Ok(Response::HandedOff {
                    ws: ws_name(&rec),
                    epoch,
                })
            }
            Request::HandoffDecline { offer } | Request::HandoffWithdraw { offer } => {
                let d = tablet_only()?;
                let decline = matches!(req, Request::HandoffDecline { .. });
                let (rec, _) = self.find_offer(&offer).await?;
                self.transition(&rec, actor, move |s, _| {
                    let events = if decline {
                        s.decline(&offer, &d.user)?
                    } else {
                        s.withdraw(&offer, &d.user)?
                    };
                    Ok(((), events))
                })
                .await?;
                Ok(Response::Done)
            }
            Request::Reclaim { ws } => {
                let d = tablet_only()?;
                let (rec, _) = self.resolve_session(&conv.caller, &ws).await?;
                self.transition(&rec, actor, move |s, _| Ok(((), s.reclaim(&d.user)?)))
                    .await?;
                Ok(Response::Done)
            }
            Request::Share { ws, with, control } => {
                let d = tablet_only()?;
                let (rec, _) = self.resolve_session(&conv.caller, &ws).await?;
                self.require_user(&with).await?;
                let access = if control {
                    Access::Control
                } else {
                    Access::View
                };
                self.transition(&rec, actor, move |s, _| {
                    Ok(((), s.share(&d.user, &with, access)?))
                })
                .await?;
                Ok(Response::Done)
            }
            Request::Unshare { ws, with } => {
                let d = tablet_only()?;
                let (rec, _) = self.resolve_session(&conv.caller, &ws).await?;
                self.transition(&rec, actor, move |s, _| {
                    Ok(((), s.unshare(&d.user, &with)?))
                })
                .await?;
                Ok(Response::Done)
            }
            Request::FloorTake { ws } => {
                let d = tablet_only()?;
                let (rec, _) = self.resolve_session(&conv.caller, &ws).await?;
                self.transition(&rec, actor, move |s, _| Ok(((), s.take_floor(&d.user)?)))
                    .await?;
                Ok(Response::Done)
            }
            Request::SessionShow { ws } => {
                let (rec, s) = self.resolve_session(&conv.caller, &ws).await?;
                let name = ws_name(&rec);
                Ok(Response::Session(SessionInfo {
                    ws: name.clone(),
                    holder: s.holder.clone(),
                    reclaimer: s.reclaimer.clone(),
                    epoch: s.epoch,
                    shares: s
                        .shares
                        .iter()
                        .map(|(u, a)| (u.clone(), a.to_string()))
                        .collect(),
                    floor: s.floor_holder().to_owned(),
                    offers: s.offers.iter().map(|o| offer_info(&name, o)).collect(),
                }))
            }
            Request::History { ws } => {
                let (rec, s) = self.resolve_session(&conv.caller, &ws).await?;
                if let Some(d) = &device {
                    if !conv.caller.is_admin() && d.user != rec.user && d.user != s.holder {
                        return Err(ApiError::new(
                            ErrorCode::Forbidden,
                            "a session's history is for its owner and its controller",
                        ));
                    }
                }
                let prefix = format!("{}: ", ws_name(&rec));
                let entries = self
                    .blocking(|s| s.audit_tail(100_000))
                    .await
                    .map_err(internal)?
                    .into_iter()
                    .filter(|(_, a)| {
                        (a.event.starts_with("handoff-") || a.event.starts_with("session-"))
                            && a.detail.starts_with(&prefix)
                    })
                    .map(audit_entry)
                    .collect();
                Ok(Response::Audit(entries))
            }
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("{} is not a session request", other.name()),
            )),
        }
    }
}
