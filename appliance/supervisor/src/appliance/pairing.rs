//! Pairing requests: a one-time code (SPAKE2) or a password, the failed-attempt limits that
//! guard both, and the enrolment that signs the device certificate and records the device.

use super::*;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use periphery_protocol::pairing::{PakeState, SessionKey};
use periphery_protocol::PairedDevice;

use crate::codes::CodeRefused;
use crate::limits::Subject;

/// A code pairing in progress on one control stream: its slot, its user and the SPAKE2 key.
#[derive(Debug)]
pub(super) struct PendingPake {
    slot: String,
    user: String,
    key: SessionKey,
}

/// What [`Appliance::enrol_key`] enrols.
#[derive(Debug, Clone, Copy)]
pub(super) enum Enrolee<'a> {
    /// A tablet of `user`.
    Device {
        /// Its user.
        user: &'a str,
    },
    /// A render node (no user).
    Node,
}

impl Appliance {
    /// Issues a pairing code for `user` (who must exist).
    pub fn issue_code(&self, user: &str) -> PairingCode {
        let mut rng = rand::rngs::OsRng;
        lock(&self.codes).issue(user, Instant::now(), || {
            PairingCode::generate(|| (rng.next_u32() & 0xff) as u8)
        })
    }

    fn check_limits(&self, subjects: &[Subject]) -> Result<(), ApiError> {
        lock(&self.limiter)
            .check(subjects, Instant::now())
            .map_err(|wait| {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                ApiError {
                    code: ErrorCode::TooManyAttempts,
                    message: format!("too many attempts, retry after {secs} s"),
                    retry_after_secs: Some(secs),
                }
            })
    }

    async fn failed(&self, subjects: &[Subject], actor: String, event: &str, detail: String) {
        lock(&self.limiter).fail(subjects, Instant::now());
        tracing::warn!(%actor, event, %detail, "authentication attempt failed");
        let a = audit(actor, event, detail);
        if let Err(e) = self.blocking(move |s| s.audit(&a)).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    pub(super) async fn pair_start(
        &self,
        conv: &mut Conversation,
        slot: String,
        spake: Vec<u8>,
    ) -> Result<Response, ApiError> {
        let Caller::Unpaired { addr } = conv.caller else {
            unreachable!("authorize lets only unpaired callers pair")
        };
        let mut subjects = vec![Subject::Addr(addr.ip())];
        self.check_limits(&subjects)?;
        let looked_up = lock(&self.codes).lookup(&slot, Instant::now());
        let (code, user) = match looked_up {
            Ok(v) => v,
            Err(refused) => {
                let code = match refused {
                    CodeRefused::Unknown => ErrorCode::WrongCredentials,
                    CodeRefused::Expired => ErrorCode::CodeExpired,
                    CodeRefused::Used => ErrorCode::CodeUsed,
                };
                self.failed(
                    &subjects,
                    conv.caller.actor(),
                    "pair-failed",
                    refused.to_string(),
                )
                .await;
                return Err(ApiError::new(code, refused.to_string()));
            }
        };
        subjects.push(Subject::User(user.clone()));
        self.check_limits(&subjects)?;
        let (state, msg) = PakeState::start_appliance(&code);
        let key = state
            .finish(&spake)
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        conv.pake = Some(PendingPake { slot, user, key });
        Ok(Response::PairChallenge { spake: msg })
    }

    pub(super) async fn pair_finish(
        &self,
        conv: &mut Conversation,
        confirm: Vec<u8>,
        csr_der: Vec<u8>,
        device_name: String,
    ) -> Result<Response, ApiError> {
        let Caller::Unpaired { addr } = conv.caller else {
            unreachable!("authorize lets only unpaired callers pair")
        };
        let pake = conv.pake.take().ok_or_else(|| {
            ApiError::new(
                ErrorCode::OutOfOrder,
                "pair-code-finish without pair-code-start",
            )
        })?;
        let subjects = [Subject::Addr(addr.ip()), Subject::User(pake.user.clone())];
        self.check_limits(&subjects)?;
        if !pake
            .key
            .verify_client(self.identity.server_der(), &csr_der, &confirm)
        {
            self.failed(
                &subjects,
                conv.caller.actor(),
                "pair-failed",
                format!("wrong code for slot {} (user {})", pake.slot, pake.user),
            )
            .await;
            return Err(ApiError::new(
                ErrorCode::WrongCredentials,
                "wrong pairing code",
            ));
        }
        let consumed = lock(&self.codes).consume(&pake.slot, Instant::now());
        if let Err(refused) = consumed {
            let code = match refused {
                CodeRefused::Expired => ErrorCode::CodeExpired,
                _ => ErrorCode::CodeUsed,
            };
            return Err(ApiError::new(code, refused.to_string()));
        }
        let mut paired = self
            .enrol(&conv.caller, &pake.user, &csr_der, device_name, "code")
            .await?;
        paired.confirm = Some(pake.key.server_confirm(
            self.identity.server_der(),
            &paired.cert_der,
            &paired.ca_der,
        ));
        Ok(Response::Paired(paired))
    }

    pub(super) async fn pair_password(
        &self,
        conv: &mut Conversation,
        user: String,
        password: String,
        csr_der: Vec<u8>,
        device_name: String,
    ) -> Result<Response, ApiError> {
        let Caller::Unpaired { addr } = conv.caller else {
            unreachable!("authorize lets only unpaired callers pair")
        };
        let subjects = [Subject::Addr(addr.ip()), Subject::User(user.clone())];
        self.check_limits(&subjects)?;
        let u = user.clone();
        let rec = self.blocking(move |s| s.user(&u)).await.map_err(internal)?;
        let hash = rec.and_then(|r| r.password_hash);
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => PasswordHash::new(&h)
                .map(|ph| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &ph)
                        .is_ok()
                })
                .unwrap_or(false),
            None => {
                // Spend the same time for unknown users, so timing does not tell who exists.
                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                let _ = Argon2::default().hash_password(password.as_bytes(), &salt);
                false
            }
        })
        .await
        .map_err(internal)?;
        if !ok {
            self.failed(
                &subjects,
                conv.caller.actor(),
                "login-failed",
                format!("wrong password for {user}"),
            )
            .await;
            return Err(ApiError::new(
                ErrorCode::WrongCredentials,
                "wrong user name or password",
            ));
        }
        let paired = self
            .enrol(&conv.caller, &user, &csr_der, device_name, "password")
            .await?;
        Ok(Response::Paired(paired))
    }

    /// Signs a device certificate and records the device.
    async fn enrol(
        &self,
        caller: &Caller,
        user: &str,
        csr_der: &[u8],
        device_name: String,
        how: &str,
    ) -> Result<PairedDevice, ApiError> {
        let (device_id, cert_der) = self
            .enrol_key(
                caller,
                Enrolee::Device { user },
                csr_der,
                &device_name,
                |id, name| format!("paired device {id} ({name}) for {user} by {how}"),
            )
            .await?;
        tracing::info!(device = %device_id, %user, how, "device paired");
        Ok(PairedDevice {
            device_id,
            user: user.to_owned(),
            cert_der,
            ca_der: self.identity.ca_der().to_vec(),
            confirm: None,
        })
    }

    /// Signs a client certificate for the key in `csr_der`, records it (a device of a user,
    /// or a render node) with a fresh id, audits it with `detail(id, name)`, and allows it at
    /// the handshake. Returns the id and the certificate.
    pub(super) async fn enrol_key(
        &self,
        caller: &Caller,
        who: Enrolee<'_>,
        csr_der: &[u8],
        name: &str,
        detail: impl FnOnce(&str, &str) -> String,
    ) -> Result<(String, Vec<u8>), ApiError> {
        let (prefix, user, event) = match who {
            Enrolee::Device { user } => ("d", user, "device-paired"),
            Enrolee::Node => ("n", "", "node-joined"),
        };
        let name: String = name.chars().take(64).collect();
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = format!("{prefix}-{}", hex::encode(&raw[..5]));
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let cert = self
            .identity
            .issue_device_cert(csr_der, &id, raw)
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        let rec = DeviceRecord {
            id: id.clone(),
            name: name.clone(),
            user: user.to_owned(),
            serial: cert.serial.clone(),
            fingerprint: cert.fingerprint.clone(),
            paired_at: crate::clock::unix_secs(),
            last_seen: None,
            revoked_at: None,
        };
        let a = audit(caller.actor(), event, detail(&id, &name));
        self.blocking(move |s| s.add_device(&rec, &a))
            .await
            .map_err(lookup_err)?;
        self.devices.set(&cert.fingerprint, DeviceStanding::Allowed);
        Ok((id, cert.der))
    }

    /// Checks a render node's join token, under the same attempt limits as pairing.
    pub(super) async fn check_node_token(
        &self,
        caller: &Caller,
        secret: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let Caller::Unpaired { addr } = caller else {
            unreachable!("authorize lets only unpaired callers join")
        };
        let subjects = [Subject::Addr(addr.ip())];
        self.check_limits(&subjects)?;
        let now = Instant::now();
        let valid = lock(&self.node_tokens).iter().any(|(s, exp)| {
            *exp > now
                && s.len() == secret.len()
                && s.bytes()
                    .zip(secret.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if valid {
            return Ok(());
        }
        self.failed(
            &subjects,
            caller.actor(),
            "node-join-failed",
            format!("render node '{name}' offered an unknown or expired token"),
        )
        .await;
        Err(ApiError::new(
            ErrorCode::WrongCredentials,
            "the join token is unknown or expired; make a new one with `periphery render node-token`",
        ))
    }
}
