//! The appliance's control API: who may run which [`Request`], and what each one does.
//!
//! [`Appliance`] holds the shared state (store, identity, pending codes, limits, live
//! connections). Every request from every transport — QUIC from tablets, the Unix socket from
//! the admin CLI — goes through [`Appliance::handle`], which first checks it with
//! [`authorize`] against the [`Caller`], then runs it. A [`Conversation`] carries what one
//! control stream remembers between requests (the pairing exchange in progress).
//!
//! The handlers live by concern: users, devices and status here; [`pairing`] (codes,
//! passwords, attempt limits, enrolment); [`desktops`] (workstations and their streams);
//! `sessions` (handoffs and shares); `render` (render jobs, nodes and their join tokens,
//! files by content); `files` (where files persist to, and each user's snapshots).

mod desktops;
mod files;
mod pairing;
mod render;
mod sessions;

pub use files::follow_trees;
use pairing::PendingPake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use rand::RngCore;

use periphery_protocol::pairing::PairingCode;
use periphery_protocol::{
    ApiError, AuditEntry, ConnectionInfo, DeviceInfo, ErrorCode, Identity, Notice, Request,
    Response, Role, StatusReport, StreamInfo, UserInfo,
};

use crate::codes::PendingCodes;
use crate::config::Config;
use crate::identity::ApplianceIdentity;
use crate::limits::AttemptLimiter;
use crate::store::{
    is_render_node, AddUserError, AuditRecord, DeviceRecord, LookupError, Store, StoreError,
    UserRecord,
};
use crate::streaming::Streaming;
use crate::tls::{DeviceAllowList, DeviceStanding};
use crate::workstations::Workstations;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The local administrator on the Unix socket.
    LocalAdmin {
        /// Unix uid.
        uid: u32,
    },
    /// A paired device.
    Device {
        /// The device.
        device: DeviceRecord,
        /// Its user's role.
        role: Role,
    },
    /// A process inside one of `user`'s workstations, on the session socket.
    Session {
        /// The workstation's owner.
        user: String,
        /// Their role.
        role: Role,
        /// The workstation's name.
        ws: String,
    },
    /// A render node, by its certificate.
    Node {
        /// Its id (`n-…`).
        id: String,
        /// Its name.
        name: String,
    },
    /// A QUIC connection without a device certificate.
    Unpaired {
        /// Its address.
        addr: SocketAddr,
    },
}

impl Caller {
    fn is_admin(&self) -> bool {
        matches!(
            self,
            Caller::LocalAdmin { .. }
                | Caller::Device {
                    role: Role::Admin,
                    ..
                }
        )
    }

    /// Name for the audit log.
    pub fn actor(&self) -> String {
        match self {
            Caller::LocalAdmin { uid } => format!("local-admin(uid {uid})"),
            Caller::Device { device, .. } => format!("{}@{}", device.user, device.id),
            Caller::Node { id, .. } => format!("node {id}"),
            Caller::Session { user, ws, .. } => format!("{user}@workstation {ws}"),
            Caller::Unpaired { addr } => addr.ip().to_string(),
        }
    }

    /// The identity reported to the caller.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Caller::LocalAdmin { uid } => Some(Identity::LocalAdmin { uid: *uid }),
            Caller::Device { device, role } => Some(Identity::Device {
                device_id: device.id.clone(),
                device_name: device.name.clone(),
                user: device.user.clone(),
                role: *role,
            }),
            Caller::Node { id, name } => Some(Identity::Node {
                node_id: id.clone(),
                name: name.clone(),
            }),
            Caller::Session { .. } | Caller::Unpaired { .. } => None,
        }
    }
}

/// Checks that `caller` may run `req` at all. Handlers check ownership of the named objects.
pub fn authorize(caller: &Caller, req: &Request) -> Result<(), ApiError> {
    if let Caller::Session { .. } = caller {
        // Inside a workstation: its owner's render jobs, nothing else.
        return match req {
            Request::BlobPut { .. }
            | Request::BlobMissing { .. }
            | Request::BlobGet { .. }
            | Request::RenderSubmit(_)
            | Request::RenderList
            | Request::RenderShow { .. }
            | Request::RenderWatch { .. }
            | Request::RenderControl { .. }
            | Request::RenderNodes => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "'{}' is not available from inside a workstation (only render jobs are)",
                    req.name()
                ),
            )),
        };
    }
    let admin_only = || {
        if caller.is_admin() {
            Ok(())
        } else if matches!(caller, Caller::Unpaired { .. }) {
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this device is not paired; pair it first",
            ))
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("'{}' needs an administrator", req.name()),
            ))
        }
    };
    let paired = || match caller {
        Caller::Unpaired { .. } => Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "this device is not paired; pair it first",
        )),
        Caller::Node { .. } => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("a render node may not run '{}'", req.name()),
        )),
        _ => Ok(()),
    };
    let node = || match caller {
        Caller::Node { .. } => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("'{}' is for render nodes", req.name()),
        )),
    };
    match req {
        Request::Status
        | Request::UserAdd { .. }
        | Request::UserList
        | Request::UserRemove { .. }
        | Request::PairCodeCreate { .. }
        | Request::Audit { .. } => admin_only(),
        Request::DeviceList { user } => match (caller, user) {
            (Caller::Device { device, .. }, Some(u)) if *u != device.user => admin_only(),
            _ => paired(),
        },
        Request::DeviceRevoke { .. }
        | Request::Whoami
        | Request::WorkstationList
        | Request::WorkstationCreate { .. }
        | Request::WorkstationStart { .. }
        | Request::WorkstationStop { .. }
        | Request::WorkstationDelete { .. }
        | Request::WorkstationShow { .. }
        | Request::MonitorAdd { .. }
        | Request::MonitorRemove { .. }
        | Request::Screenshot { .. }
        | Request::SourceFrame { .. }
        | Request::Attach { .. }
        | Request::Detach { .. }
        | Request::KeyframeRequest { .. }
        | Request::Ping { .. }
        | Request::ReportStats { .. }
        | Request::HandoffOffer { .. }
        | Request::Offers
        | Request::HandoffAccept { .. }
        | Request::HandoffDecline { .. }
        | Request::HandoffWithdraw { .. }
        | Request::Reclaim { .. }
        | Request::Share { .. }
        | Request::Unshare { .. }
        | Request::FloorTake { .. }
        | Request::SessionShow { .. }
        | Request::History { .. }
        | Request::RenderSubmit(_)
        | Request::RenderList
        | Request::RenderShow { .. }
        | Request::RenderWatch { .. }
        | Request::RenderControl { .. }
        | Request::RenderNodes => paired(),
        Request::RenderNodeToken
        | Request::StorageSet(_)
        | Request::StorageShow
        | Request::StorageRecoveryKey
        | Request::FilesRestore(_) => admin_only(),
        Request::FilesStatus { .. }
        | Request::FilesPersist { .. }
        | Request::FilesSnapshots { .. } => paired(),
        Request::BlobPut { .. } | Request::BlobMissing { .. } | Request::BlobGet { .. } => {
            match caller {
                Caller::Node { .. } => Ok(()),
                _ => paired(),
            }
        }
        Request::NodeWork(_) | Request::RetiredNodeTaskDone => node(),
        Request::PairCodeStart { .. }
        | Request::PairCodeFinish { .. }
        | Request::PairPassword { .. }
        | Request::NodeJoin { .. } => match caller {
            Caller::Unpaired { .. } => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Forbidden,
                "pairing is for unpaired devices; this connection is already authenticated",
            )),
        },
    }
}

/// What one control stream remembers between requests.
#[derive(Debug)]
pub struct Conversation {
    /// The caller.
    pub caller: Caller,
    pake: Option<PendingPake>,
    /// The QUIC connection and its id, for streams (none on the admin socket).
    pub conn: Option<(quinn::Connection, u64)>,
    /// Notices for this connection, sent between responses.
    pub notices: Option<tokio::sync::mpsc::UnboundedReceiver<Notice>>,
}

impl Conversation {
    /// A new conversation with `caller`.
    pub fn new(caller: Caller) -> Self {
        Self {
            caller,
            pake: None,
            conn: None,
            notices: None,
        }
    }
}

/// A live QUIC connection, for status.
#[derive(Debug, Clone)]
struct LiveConnection {
    remote: SocketAddr,
    device: Option<(String, String)>,
    since: Instant,
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
}

/// The shared state of a running appliance.
#[derive(Debug)]
pub struct Appliance {
    /// Validated configuration.
    pub config: Config,
    /// Durable state.
    pub store: Arc<Store>,
    /// Keys and certificates.
    pub identity: ApplianceIdentity,
    /// Devices allowed at the handshake.
    pub devices: Arc<DeviceAllowList>,
    codes: Mutex<PendingCodes>,
    limiter: Mutex<AttemptLimiter>,
    connections: Mutex<HashMap<u64, LiveConnection>>,
    /// How recently ended offers ended, for clear errors when they are used late.
    ended_offers: Mutex<HashMap<String, String>>,
    next_conn: AtomicU64,
    started: Instant,
    /// Addresses the endpoint listens on.
    pub listening: Vec<SocketAddr>,
    /// Whether discovery runs, or why not.
    pub discovery: Mutex<String>,
    /// Live workstations.
    pub workstations: Arc<Workstations>,
    /// Live streams.
    pub streaming: Arc<Streaming>,
    /// The render farm.
    pub render: Arc<crate::render::RenderFarm>,
    /// Files persisted to object storage.
    pub persistence: Arc<crate::persistence::Persistence>,
    /// Join tokens for render nodes: secret and expiry.
    node_tokens: Mutex<Vec<(String, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(e: impl std::error::Error) -> ApiError {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    tracing::error!(error = %msg, "request failed inside the appliance");
    ApiError::new(ErrorCode::Internal, format!("internal error: {msg}"))
}

fn lookup_err(e: LookupError) -> ApiError {
    match e {
        LookupError::NotFound(what) => {
            ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
        }
        LookupError::Store(e) => internal(e),
    }
}

/// Checks a user name: 1-32 of `a-z 0-9 . _ -`, starting with a letter.
pub fn valid_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// A stored audit record as the API shows it.
fn audit_entry((seq, a): (u64, AuditRecord)) -> AuditEntry {
    AuditEntry {
        seq,
        at: a.at,
        actor: a.actor,
        event: a.event,
        detail: a.detail,
    }
}

fn audit(actor: String, event: &str, detail: String) -> AuditRecord {
    AuditRecord::new(actor, event, detail)
}

impl Appliance {
    /// Builds the shared state; the allow-list is filled from the store.
    pub fn new(
        config: Config,
        store: Arc<Store>,
        identity: ApplianceIdentity,
        listening: Vec<SocketAddr>,
        workstations: Arc<Workstations>,
    ) -> Result<Self, StoreError> {
        let devices = Arc::new(DeviceAllowList::default());
        for d in store.devices()? {
            let standing = if d.revoked_at.is_some() {
                DeviceStanding::Revoked
            } else {
                DeviceStanding::Allowed
            };
            devices.set(&d.fingerprint, standing);
        }
        let keep_source_frames = config.keep_source_frames;
        let render = Arc::new(crate::render::RenderFarm::open(
            store.clone(),
            &config.state_dir,
            config.lease_timeout,
        )?);
        let persistence = crate::persistence::Persistence::new(
            store.clone(),
            config.files.clone(),
            &config.state_dir,
        );
        Ok(Self {
            render,
            persistence,
            node_tokens: Mutex::new(Vec::new()),
            codes: Mutex::new(PendingCodes::new(config.code_ttl)),
            limiter: Mutex::new(AttemptLimiter::new(
                config.max_failures,
                config.failure_window,
            )),
            config,
            store,
            identity,
            devices,
            connections: Mutex::new(HashMap::new()),
            ended_offers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            listening,
            discovery: Mutex::new("starting".into()),
            streaming: Arc::new(Streaming::new(workstations.clone(), keep_source_frames)),
            workstations,
        })
    }

    /// Runs `f` on the store on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Identifies a QUIC peer by its certificate (already checked at the handshake).
    pub async fn identify(&self, addr: SocketAddr, cert_fp: Option<String>) -> Caller {
        let Some(fp) = cert_fp else {
            return Caller::Unpaired { addr };
        };
        let found = self
            .blocking(move |s| -> Result<_, StoreError> {
                let Some(d) = s.device_by_fingerprint(&fp)? else {
                    return Ok(None);
                };
                let _ = s.touch_device(&d.id, crate::clock::unix_secs());
                if d.revoked_at.is_some() {
                    return Ok(None);
                }
                if is_render_node(&d.id) {
                    return Ok(Some(Caller::Node {
                        id: d.id,
                        name: d.name,
                    }));
                }
                Ok(s.user(&d.user)?.map(|u| Caller::Device {
                    device: d,
                    role: u.role,
                }))
            })
            .await;
        match found {
            Ok(Some(caller)) => caller,
            Ok(None) => Caller::Unpaired { addr },
            Err(e) => {
                tracing::error!(error = %e, "cannot look up a device; treating it as unpaired");
                Caller::Unpaired { addr }
            }
        }
    }

    /// Registers a live connection; returns its id for [`Self::unregister`] and the receiver
    /// of the notices for it.
    pub fn register(
        &self,
        remote: SocketAddr,
        caller: &Caller,
    ) -> (u64, tokio::sync::mpsc::UnboundedReceiver<Notice>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let device = match caller {
            Caller::Device { device, .. } => Some((device.id.clone(), device.user.clone())),
            _ => None,
        };
        lock(&self.connections).insert(
            id,
            LiveConnection {
                remote,
                device,
                since: Instant::now(),
                notices: tx,
            },
        );
        (id, rx)
    }

    /// Fails with `NotFound` unless user `name` exists.
    async fn require_user(&self, name: &str) -> Result<(), ApiError> {
        let n = name.to_owned();
        match self.blocking(move |s| s.user(&n)).await.map_err(internal)? {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("user '{name}' not found"),
            )),
        }
    }

    /// Sends `notice` to every connection of `user`'s devices.
    pub fn notify_user(&self, user: &str, notice: &Notice) {
        for c in lock(&self.connections).values() {
            if c.device.as_ref().is_some_and(|(_, u)| u == user) {
                let _ = c.notices.send(notice.clone());
            }
        }
    }

    /// Sends `notice` to connection `id`.
    pub fn notify_connection(&self, id: u64, notice: Notice) {
        if let Some(c) = lock(&self.connections).get(&id) {
            let _ = c.notices.send(notice);
        }
    }

    /// Forgets a live connection.
    pub fn unregister(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// Runs one request for the conversation's caller.
    pub async fn handle(
        &self,
        conv: &mut Conversation,
        req: Request,
    ) -> Result<Response, ApiError> {
        authorize(&conv.caller, &req)?;
        let actor = conv.caller.actor();
        match req {
            Request::Status => self.status().await,
            Request::UserAdd {
                name,
                password,
                role,
            } => self.user_add(actor, name, password, role).await,
            Request::UserList => Ok(Response::Users(self.user_infos().await?)),
            Request::UserRemove { name } => {
                let audit = audit(actor, "user-remove", format!("removed user {name}"));
                let n = name.clone();
                let fps = self
                    .blocking(move |s| s.remove_user(&n, crate::clock::unix_secs(), &audit))
                    .await
                    .map_err(lookup_err)?;
                for fp in fps {
                    self.devices.set(&fp, DeviceStanding::Revoked);
                }
                lock(&self.codes).forget_user(&name);
                tracing::info!(user = %name, "user removed");
                Ok(Response::Done)
            }
            Request::DeviceList { user } => {
                let user = match (&conv.caller, user) {
                    (Caller::Device { device, role }, None) if *role != Role::Admin => {
                        Some(device.user.clone())
                    }
                    (_, u) => u,
                };
                let all = self.device_infos().await?;
                Ok(Response::Devices(
                    all.into_iter()
                        .filter(|d| user.as_ref().is_none_or(|u| *u == d.user))
                        .collect(),
                ))
            }
            Request::DeviceRevoke { id } => self.device_revoke(&conv.caller, actor, id).await,
            Request::PairCodeCreate { user } => {
                self.require_user(&user).await?;
                let code = self.issue_code(&user);
                let a = audit(
                    actor,
                    "pair-code",
                    format!("pairing code {}-… for {user}", code.slot()),
                );
                self.blocking(move |s| s.audit(&a))
                    .await
                    .map_err(internal)?;
                Ok(Response::PairCode {
                    code: code.to_string(),
                    expires_in_secs: self.config.code_ttl.as_secs(),
                })
            }
            Request::PairCodeStart { slot, spake } => self.pair_start(conv, slot, spake).await,
            Request::PairCodeFinish {
                confirm,
                csr_der,
                device_name,
            } => self.pair_finish(conv, confirm, csr_der, device_name).await,
            Request::PairPassword {
                user,
                password,
                csr_der,
                device_name,
            } => {
                self.pair_password(conv, user, password, csr_der, device_name)
                    .await
            }
            Request::Whoami => conv
                .caller
                .identity()
                .map(Response::Whoami)
                .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "not paired")),
            req @ (Request::WorkstationList
            | Request::WorkstationCreate { .. }
            | Request::WorkstationStart { .. }
            | Request::WorkstationStop { .. }
            | Request::WorkstationDelete { .. }
            | Request::WorkstationShow { .. }
            | Request::MonitorAdd { .. }
            | Request::MonitorRemove { .. }
            | Request::Screenshot { .. }
            | Request::SourceFrame { .. }
            | Request::Attach { .. }
            | Request::Detach { .. }
            | Request::KeyframeRequest { .. }
            | Request::ReportStats { .. }
            | Request::Ping { .. }) => self.desktop_request(conv, actor, req).await,
            req @ (Request::HandoffOffer { .. }
            | Request::Offers
            | Request::HandoffAccept { .. }
            | Request::HandoffDecline { .. }
            | Request::HandoffWithdraw { .. }
            | Request::Reclaim { .. }
            | Request::Share { .. }
            | Request::Unshare { .. }
            | Request::FloorTake { .. }
            | Request::SessionShow { .. }
            | Request::History { .. }) => self.session_request(conv, req).await,
            req @ (Request::BlobPut { .. }
            | Request::BlobMissing { .. }
            | Request::BlobGet { .. }
            | Request::RenderSubmit(_)
            | Request::RenderList
            | Request::RenderShow { .. }
            | Request::RenderWatch { .. }
            | Request::RenderControl { .. }
            | Request::RenderNodes
            | Request::RenderNodeToken
            | Request::NodeJoin { .. }
            | Request::NodeWork(_)) => self.render_request(conv, actor, req).await,
            req @ (Request::StorageSet(_)
            | Request::StorageShow
            | Request::StorageRecoveryKey
            | Request::FilesStatus { .. }
            | Request::FilesPersist { .. }
            | Request::FilesSnapshots { .. }
            | Request::FilesRestore(_)) => self.files_request(&conv.caller, actor, req).await,
            Request::RetiredNodeTaskDone => Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "NodeTaskDone is retired: reports ride in NodeWork since protocol version 2",
            )),
            Request::Audit { limit } => {
                let rows = self
                    .blocking(move |s| s.audit_tail(limit.min(10_000) as usize))
                    .await
                    .map_err(internal)?;
                Ok(Response::Audit(rows.into_iter().map(audit_entry).collect()))
            }
        }
    }

    async fn user_add(
        &self,
        actor: String,
        name: String,
        password: Option<String>,
        role: Role,
    ) -> Result<Response, ApiError> {
        if !valid_user_name(&name) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("'{name}' is not a valid user name: 1-32 of a-z 0-9 . _ -, starting with a letter"),
            ));
        }
        let password_hash = match password {
            None => None,
            Some(p) if p.chars().count() < 8 => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "a password needs at least 8 characters",
                ))
            }
            Some(p) => Some(
                tokio::task::spawn_blocking(move || {
                    let salt = SaltString::generate(&mut rand::rngs::OsRng);
                    Argon2::default()
                        .hash_password(p.as_bytes(), &salt)
                        .map(|h| h.to_string())
                })
                .await
                .map_err(internal)?
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("hashing failed: {e}")))?,
            ),
        };
        let rec = UserRecord {
            name: name.clone(),
            role,
            password_hash,
            created_at: crate::clock::unix_secs(),
        };
        let a = audit(actor, "user-add", format!("added {role} {name}"));
        match self.blocking(move |s| s.add_user(&rec, &a)).await {
            Ok(()) => {
                tracing::info!(user = %name, %role, "user added");
                Ok(Response::Done)
            }
            Err(AddUserError::Exists(n)) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("user '{n}' already exists"),
            )),
            Err(AddUserError::Store(e)) => Err(internal(e)),
        }
    }

    async fn device_revoke(
        &self,
        caller: &Caller,
        actor: String,
        id: String,
    ) -> Result<Response, ApiError> {
        let i = id.clone();
        let dev = self
            .blocking(move |s| s.device(&i))
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("device '{id}' not found"))
            })?;
        if let Caller::Device { device, .. } = caller {
            if !caller.is_admin() && device.user != dev.user {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("device '{id}' belongs to another user"),
                ));
            }
        }
        let a = audit(
            actor,
            "device-revoke",
            format!("revoked device {id} ({}) of {}", dev.name, dev.user),
        );
        let i = id.clone();
        let d = self
            .blocking(move |s| s.revoke_device(&i, crate::clock::unix_secs(), &a))
            .await
            .map_err(lookup_err)?;
        self.devices.set(&d.fingerprint, DeviceStanding::Revoked);
        if is_render_node(&id) {
            self.render.node_gone(&id);
        }
        tracing::info!(device = %id, user = %d.user, "device revoked");
        Ok(Response::Done)
    }

    async fn user_infos(&self) -> Result<Vec<UserInfo>, ApiError> {
        let (users, devices) = self
            .blocking(|s| Ok::<_, StoreError>((s.users()?, s.devices()?)))
            .await
            .map_err(internal)?;
        Ok(users
            .into_iter()
            .map(|u| UserInfo {
                devices: devices
                    .iter()
                    .filter(|d| d.user == u.name && d.revoked_at.is_none())
                    .count() as u32,
                has_password: u.password_hash.is_some(),
                name: u.name,
                role: u.role,
                created_at: u.created_at,
            })
            .collect())
    }

    async fn device_infos(&self) -> Result<Vec<DeviceInfo>, ApiError> {
        let devices = self.blocking(|s| s.devices()).await.map_err(internal)?;
        let live: Vec<String> = lock(&self.connections)
            .values()
            .filter_map(|c| c.device.as_ref().map(|d| d.0.clone()))
            .collect();
        Ok(devices
            .into_iter()
            .filter(|d| !is_render_node(&d.id))
            .map(|d| DeviceInfo {
                connected: live.contains(&d.id),
                id: d.id,
                name: d.name,
                user: d.user,
                serial: d.serial,
                paired_at: d.paired_at,
                last_seen: d.last_seen,
                revoked: d.revoked_at.is_some(),
            })
            .collect())
    }

    async fn status(&self) -> Result<Response, ApiError> {
        let discovery = lock(&self.discovery).clone();
        let records = self
            .blocking(|s| s.workstations())
            .await
            .map_err(internal)?;
        let streams = self
            .streaming
            .status()
            .into_iter()
            .map(|p| StreamInfo {
                workstation: records
                    .iter()
                    .find(|r| r.id == p.ws_id)
                    .map(|r| format!("{}/{}", r.user, r.name))
                    .unwrap_or(p.ws_id),
                monitor: p.monitor,
                encoder: p.encoder,
                tablets: p.tablets as u32,
                frames: p.encoded,
                figures: p.figures,
                tablet_stats: p.tablets_stats,
            })
            .collect();
        let users = self.user_infos().await?;
        let devices = self.device_infos().await?;
        let connections = lock(&self.connections)
            .values()
            .map(|c| ConnectionInfo {
                remote: c.remote.to_string(),
                device_id: c.device.as_ref().map(|d| d.0.clone()),
                user: c.device.as_ref().map(|d| d.1.clone()),
                connected_secs: c.since.elapsed().as_secs(),
            })
            .collect();
        Ok(Response::Status(StatusReport {
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: (
                periphery_protocol::MIN_PROTOCOL_VERSION,
                periphery_protocol::PROTOCOL_VERSION,
            ),
            uptime_secs: self.started.elapsed().as_secs(),
            listening: self.listening.iter().map(|a| a.to_string()).collect(),
            fingerprint: self.identity.fingerprint().to_owned(),
            discovery,
            users,
            devices,
            connections,
            state_dir: self.config.state_dir.display().to_string(),
            streams,
            input_dropped_at_gate: self.streaming.dropped_at_gate(),
            local_render_node: lock(&self.render.local_node).clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user: &str, role: Role) -> Caller {
        Caller::Device {
            device: DeviceRecord {
                id: "d-1".into(),
                name: "t".into(),
                user: user.into(),
                serial: "01".into(),
                fingerprint: "fp".into(),
                paired_at: 0,
                last_seen: None,
                revoked_at: None,
            },
            role,
        }
    }

    fn unpaired() -> Caller {
        Caller::Unpaired {
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn code(r: Result<(), ApiError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn admin_actions_need_an_admin() {
        let add = Request::UserAdd {
            name: "x".into(),
            password: None,
            role: Role::User,
        };
        assert_eq!(code(authorize(&Caller::LocalAdmin { uid: 0 }, &add)), None);
        assert_eq!(code(authorize(&device("root", Role::Admin), &add)), None);
        assert_eq!(
            code(authorize(&device("alice", Role::User), &add)),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(authorize(&unpaired(), &add)),
            Some(ErrorCode::Unauthenticated)
        );
    }

    #[test]
    fn a_user_lists_only_their_own_devices() {
        let alice = device("alice", Role::User);
        let own = Request::DeviceList {
            user: Some("alice".into()),
        };
        let bobs = Request::DeviceList {
            user: Some("bob".into()),
        };
        assert_eq!(code(authorize(&alice, &own)), None);
        assert_eq!(code(authorize(&alice, &bobs)), Some(ErrorCode::Forbidden));
        assert_eq!(
            code(authorize(&alice, &Request::DeviceList { user: None })),
            None
        );
    }

    #[test]
    fn only_unpaired_connections_pair_and_they_do_nothing_else() {
        let start = Request::PairCodeStart {
            slot: "AAAA".into(),
            spake: vec![],
        };
        assert_eq!(code(authorize(&unpaired(), &start)), None);
        assert_eq!(
            code(authorize(&device("alice", Role::User), &start)),
            Some(ErrorCode::Forbidden)
        );
        for r in [Request::Whoami, Request::WorkstationList, Request::Status] {
            assert!(authorize(&unpaired(), &r).is_err(), "{r:?}");
        }
    }

    #[test]
    fn render_nodes_ask_for_work_and_files_and_nothing_else() {
        let node = Caller::Node {
            id: "n-1".into(),
            name: "big".into(),
        };
        let work = Request::NodeWork(Default::default());
        let blob = Request::BlobMissing { hashes: vec![] };
        assert_eq!(code(authorize(&node, &work)), None);
        assert_eq!(code(authorize(&node, &blob)), None);
        for r in [
            Request::Whoami,
            Request::WorkstationList,
            Request::RenderList,
        ] {
            assert_eq!(
                code(authorize(&node, &r)),
                Some(ErrorCode::Forbidden),
                "{r:?}"
            );
        }
        // A tablet cannot pose as a node, and only admins make join tokens.
        let alice = device("alice", Role::User);
        assert_eq!(code(authorize(&alice, &work)), Some(ErrorCode::Forbidden));
        assert_eq!(
            code(authorize(&alice, &Request::RenderNodeToken)),
            Some(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn a_workstation_session_runs_render_requests_only() {
        let session = Caller::Session {
            user: "alice".into(),
            role: Role::Admin,
            ws: "design".into(),
        };
        assert_eq!(code(authorize(&session, &Request::RenderList)), None);
        for r in [
            Request::Status,
            Request::Whoami,
            Request::RenderNodeToken,
            Request::WorkstationList,
        ] {
            assert_eq!(
                code(authorize(&session, &r)),
                Some(ErrorCode::Forbidden),
                "{r:?}: even an admin's session"
            );
        }
    }

    #[test]
    fn user_names_are_checked() {
        assert!(valid_user_name("alice"));
        assert!(valid_user_name("a.b-c_9"));
        for bad in ["", "Alice", "9lives", "a b", &"a".repeat(33)] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }
}
