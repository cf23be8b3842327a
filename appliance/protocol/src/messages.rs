//! The messages of the control stream.
//!
//! A client (tablet, admin CLI, render node) opens one bidirectional *control stream* and sends
//! [`ClientMessage::Hello`] first; the appliance answers [`ServerMessage::Welcome`] with the
//! version both will speak, or closes the connection with
//! [`CloseCode::UnsupportedVersion`](crate::CloseCode::UnsupportedVersion). After that the
//! client sends [`ClientMessage::Request`]s, each with an id, and the appliance answers each
//! with a [`ServerMessage::Response`] carrying the same id. [`ServerMessage::Notice`] is
//! reserved for messages the appliance sends unasked.
//!
//! [`Request`] is the appliance's whole control API: one documented enum of actions. The
//! appliance checks each against the caller's identity before it runs it.
//!
//! Wire stability: postcard encodes enum variants by index, so new variants and fields are
//! only ever *appended*; a change that breaks this bumps [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).

use serde::{Deserialize, Serialize};

/// A message from a client to the appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first message on a control stream: the versions this client speaks.
    Hello(Hello),
    /// An action the client asks for.
    Request {
        /// Chosen by the client; echoed in the response.
        id: u32,
        /// The action.
        body: Request,
    },
}

/// Version negotiation, sent first by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the client speaks.
    pub min_version: u16,
    /// Newest protocol version the client speaks.
    pub max_version: u16,
    /// The client's software and version, for logs (e.g. `periphery-tablet 0.1.0`).
    pub software: String,
}

/// A message from the appliance to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Answer to [`Hello`].
    Welcome(Welcome),
    /// Answer to a [`ClientMessage::Request`].
    Response {
        /// The request's id.
        id: u32,
        /// The outcome.
        body: Result<Response, ApiError>,
    },
    /// Something the appliance tells the client unasked.
    Notice(Notice),
}

/// The appliance's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// The appliance's name.
    pub appliance: String,
    /// The appliance certificate's fingerprint (`sha256:` and 64 hex digits).
    pub fingerprint: String,
    /// Who the appliance takes the caller to be; `None` for an unpaired tablet.
    pub identity: Option<Identity>,
}

/// Unasked messages from the appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Notice {
    /// The appliance is about to close the connection, with the reason.
    Closing {
        /// Why, for the user.
        reason: String,
    },
    /// A workstation session was offered to this device's user.
    Offered(OfferInfo),
    /// An offer this device's user made or received ended.
    OfferEnded {
        /// The offer.
        offer: OfferInfo,
        /// How: `accepted`, `declined`, `withdrawn`, `expired`, `superseded`.
        outcome: String,
        /// Who ended it, when someone did.
        by: Option<String>,
    },
    /// One of this connection's attachments ended without being asked to.
    Detached {
        /// The attachment.
        attach_id: u64,
        /// Why, for the user (e.g. "handed off to bob").
        reason: String,
    },
    /// The input floor of a session this device watches moved.
    Floor {
        /// Workstation, `user/name`.
        ws: String,
        /// The user holding it now.
        holder: String,
    },
    /// A workstation session was shared with this device's user.
    Shared {
        /// Workstation, `user/name`.
        ws: String,
        /// Who shared it.
        by: String,
        /// `view-only` or `co-control`.
        access: String,
    },
}

/// A pending (or just ended) offer to hand a workstation session to another user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferInfo {
    /// The offer's id (what `accept` takes).
    pub id: String,
    /// Workstation, `user/name`.
    pub ws: String,
    /// Who offered.
    pub from_user: String,
    /// From which device.
    pub from_device: String,
    /// To whom.
    pub to_user: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds.
    pub expires_ms: u64,
    /// Whether the offerer may take it back.
    pub reclaimable: bool,
}

/// Who controls and watches a workstation session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Workstation, `user/name`.
    pub ws: String,
    /// The controller.
    pub holder: String,
    /// Who may reclaim it.
    pub reclaimer: Option<String>,
    /// The session epoch (grows when control moves).
    pub epoch: u64,
    /// Other users and their access (`view-only`, `co-control`).
    pub shares: Vec<(String, String)>,
    /// Who holds the input floor.
    pub floor: String,
    /// Pending offers.
    pub offers: Vec<OfferInfo>,
}

/// The role of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// May administer the appliance (users, devices, storage).
    Admin,
    /// May use their own workstations and devices.
    User,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::User => "user",
        })
    }
}

/// Who a caller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Identity {
    /// The local administrator, on the appliance's Unix socket.
    LocalAdmin {
        /// The caller's Unix uid.
        uid: u32,
    },
    /// A paired device, authenticated by its certificate.
    Device {
        /// The device's id.
        device_id: String,
        /// The device's name as given at pairing.
        device_name: String,
        /// The user the device belongs to.
        user: String,
        /// That user's role.
        role: Role,
    },
    /// A render node, authenticated by its certificate.
    Node {
        /// The node's id.
        node_id: String,
        /// Its name as given at join.
        name: String,
    },
}

/// The appliance's control API: every action a client can ask for.
///
/// Each is authorized against the caller before it runs: *admin* actions need the local
/// admin socket or a device of an admin user; *device* actions need a paired device;
/// *pairing* actions are the only ones an unpaired connection may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Appliance status (admin). Answer: [`Response::Status`].
    Status,
    /// Create a user (admin). A user without a password pairs with codes only.
    UserAdd {
        /// Login name: 1-32 of `a-z 0-9 . _ -`, starting with a letter.
        name: String,
        /// Password, hashed with argon2id before it is stored.
        password: Option<String>,
        /// The user's role.
        role: Role,
    },
    /// List users (admin). Answer: [`Response::Users`].
    UserList,
    /// Remove a user and revoke their devices (admin).
    UserRemove {
        /// Login name.
        name: String,
    },
    /// List devices, of one user or all (admin). Answer: [`Response::Devices`].
    DeviceList {
        /// Only this user's devices.
        user: Option<String>,
    },
    /// Revoke a device: its certificate is refused from now on (admin).
    DeviceRevoke {
        /// Device id.
        id: String,
    },
    /// Issue a one-time pairing code for a user (admin). Answer: [`Response::PairCode`].
    PairCodeCreate {
        /// The user the paired device will belong to.
        user: String,
    },
    /// Pairing step 1 (unpaired): the code's public slot and the tablet's SPAKE2 message.
    /// Answer: [`Response::PairChallenge`].
    PairCodeStart {
        /// The first group of the code, which names the pending pairing.
        slot: String,
        /// The tablet's SPAKE2 message (side A).
        spake: Vec<u8>,
    },
    /// Pairing step 2 (unpaired): proof of the code and the device's certificate request.
    /// Answer: [`Response::Paired`].
    PairCodeFinish {
        /// HMAC-SHA256 under the SPAKE2 key over the appliance fingerprint the tablet saw
        /// and the hash of `csr_der` (see [`pairing`](crate::pairing)).
        confirm: Vec<u8>,
        /// PKCS#10 certificate signing request for the device's key (DER).
        csr_der: Vec<u8>,
        /// A name for the device, shown in device lists.
        device_name: String,
    },
    /// Pair with a user's password (unpaired; the tablet confirmed the fingerprint first).
    /// Answer: [`Response::Paired`].
    PairPassword {
        /// Login name.
        user: String,
        /// Password.
        password: String,
        /// PKCS#10 certificate signing request for the device's key (DER).
        csr_der: Vec<u8>,
        /// A name for the device.
        device_name: String,
    },
    /// Who am I (any caller). Answer: [`Response::Whoami`].
    Whoami,
    /// The caller's workstations (device). Answer: [`Response::Workstations`].
    WorkstationList,
    /// The newest audit log entries (admin). Answer: [`Response::Audit`].
    Audit {
        /// At most this many entries, newest last.
        limit: u32,
    },
    /// Create a workstation (admin for anyone; a device for its own user).
    /// Answer: [`Response::Workstation`].
    WorkstationCreate {
        /// Owner; `None` means the calling device's user.
        user: Option<String>,
        /// Name, unique per user.
        name: String,
        /// `xvfb` or `qemu`.
        backend: String,
        /// Monitor sizes like `1920x1080`, primary first.
        monitors: Vec<String>,
        /// For qemu: the base disk image on the appliance.
        image: Option<String>,
        /// For qemu: memory like `4G`.
        memory: Option<String>,
        /// For qemu: CPUs.
        cpus: Option<u32>,
        /// For qemu: boot this kernel directly (a path on the appliance).
        kernel: Option<String>,
        /// For qemu: with `kernel`, this initramfs.
        initrd: Option<String>,
        /// For qemu: with `kernel`, this command line.
        append: Option<String>,
    },
    /// Start a workstation (owner or admin). Answer: [`Response::Workstation`].
    WorkstationStart {
        /// `name` (the caller's) or `user/name`.
        ws: String,
    },
    /// Stop a workstation (owner or admin); a VM is asked to power down first unless `force`.
    /// Answer: [`Response::Workstation`].
    WorkstationStop {
        /// `name` or `user/name`.
        ws: String,
        /// Stop at once, without asking the guest.
        force: bool,
    },
    /// Delete a stopped or running workstation and its state (owner or admin).
    WorkstationDelete {
        /// `name` or `user/name`.
        ws: String,
    },
    /// One workstation in detail (owner or admin). Answer: [`Response::Workstation`].
    WorkstationShow {
        /// `name` or `user/name`.
        ws: String,
    },
    /// Add a monitor to a running workstation. Answer: [`Response::Workstation`].
    MonitorAdd {
        /// `name` or `user/name`.
        ws: String,
        /// Size like `2732x2048`.
        size: String,
    },
    /// Remove a monitor from a running workstation; its windows move to monitor 0.
    /// Answer: [`Response::Workstation`].
    MonitorRemove {
        /// `name` or `user/name`.
        ws: String,
        /// Monitor id.
        monitor: u32,
    },
    /// What a monitor shows now, as PNG. Answer: [`Response::Png`].
    Screenshot {
        /// `name` or `user/name`.
        ws: String,
        /// Monitor id.
        monitor: u32,
    },
    /// Attach this connection to a monitor of a running workstation (device): frames of that
    /// monitor start arriving on unidirectional streams. Answer: [`Response::Attached`].
    Attach {
        /// `name` or `user/name`.
        ws: String,
        /// Extend (a new monitor of this size) or mirror (an existing monitor).
        mode: AttachMode,
        /// Watch only: input from this attachment is refused.
        view_only: bool,
    },
    /// Stop receiving a monitor; an extended monitor is removed.
    Detach {
        /// The attachment.
        attach_id: u64,
    },
    /// Ask for a keyframe (after a loss); rate-limited per monitor.
    KeyframeRequest {
        /// The attachment.
        attach_id: u64,
    },
    /// Clock sample: the appliance answers with its own clock. Answer: [`Response::Pong`].
    Ping {
        /// The tablet's clock, microseconds.
        client_time_us: u64,
    },
    /// What a tablet measured over the last second, for `periphery status`.
    ReportStats {
        /// The attachment.
        attach_id: u64,
        /// The figures.
        stats: TabletStats,
    },
    /// The captured frame a monitor's stream sent with `sequence`, as PNG: what tablets'
    /// decoded pictures are checked against. Only the last few are kept, and only when the
    /// appliance is configured to (`[streaming] keep_source_frames`). Answer: [`Response::Png`].
    SourceFrame {
        /// `name` or `user/name`.
        ws: String,
        /// Monitor id.
        monitor: u32,
        /// The frame's sequence number in its stream.
        sequence: u64,
    },
    /// Offer this workstation's session to another user (its controller, from a device).
    /// Answer: [`Response::Offer`].
    HandoffOffer {
        /// `name` or `user/name`.
        ws: String,
        /// The user to hand it to.
        to: String,
        /// How long the offer stands, seconds.
        ttl_secs: u64,
        /// Whether the offerer may take it back later.
        reclaimable: bool,
    },
    /// Pending offers made to or by the caller. Answer: [`Response::Offers`].
    Offers,
    /// Accept an offer: control moves to the caller. Answer: [`Response::HandedOff`].
    HandoffAccept {
        /// The offer id.
        offer: String,
    },
    /// Decline an offer made to the caller.
    HandoffDecline {
        /// The offer id.
        offer: String,
    },
    /// Withdraw an offer the caller made.
    HandoffWithdraw {
        /// The offer id.
        offer: String,
    },
    /// Take back a session handed off with `reclaimable`.
    Reclaim {
        /// `user/name` (or `name`).
        ws: String,
    },
    /// Share the session with another user.
    Share {
        /// `name` or `user/name`.
        ws: String,
        /// The user.
        with: String,
        /// Co-control (with the floor) rather than view-only.
        control: bool,
    },
    /// End a user's share (the controller), or leave a shared session (the user).
    Unshare {
        /// `name` or `user/name`.
        ws: String,
        /// The user.
        with: String,
    },
    /// Take the input floor of a co-controlled session.
    FloorTake {
        /// `name` or `user/name`.
        ws: String,
    },
    /// Who controls and watches the session. Answer: [`Response::Session`].
    SessionShow {
        /// `name` or `user/name`.
        ws: String,
    },
    /// The session's history: offers, accepts, declines, expiries, grants, revokes. Answer:
    /// [`Response::Audit`].
    History {
        /// `name` or `user/name`.
        ws: String,
    },
    /// Store a chunk of a file by content. Chunks come in order from offset 0 (at most
    /// [`MAX_BLOB_CHUNK`](crate::render::MAX_BLOB_CHUNK) bytes); with `last` the appliance
    /// checks the whole file against `hash` and keeps it. Answer: [`Response::Done`].
    BlobPut {
        /// BLAKE3 of the whole file.
        hash: String,
        /// Where this chunk starts.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Which of these files the appliance does not have. Answer: [`Response::Missing`].
    BlobMissing {
        /// Hashes.
        hashes: Vec<String>,
    },
    /// A chunk of a stored file. Answer: [`Response::Bytes`] (empty past the end).
    BlobGet {
        /// Hash.
        hash: String,
        /// Where to start.
        offset: u64,
        /// At most this many bytes (capped at [`MAX_BLOB_CHUNK`](crate::render::MAX_BLOB_CHUNK)).
        len: u32,
    },
    /// Queue a render job. Answer: [`Response::RenderJob`].
    RenderSubmit(crate::render::JobSubmission),
    /// Jobs (a user sees theirs, an administrator all). Answer: [`Response::RenderJobs`].
    RenderList,
    /// One job with its tasks. Answer: [`Response::RenderJob`].
    RenderShow {
        /// Job id.
        job: u64,
    },
    /// Pause, resume, cancel or retry a job. Answer: [`Response::RenderJob`].
    RenderControl {
        /// Job id.
        job: u64,
        /// What to do.
        action: crate::render::JobAction,
    },
    /// Render nodes. Answer: [`Response::RenderNodes`].
    RenderNodes,
    /// A join token for render nodes (administrators). Answer: [`Response::NodeToken`].
    RenderNodeToken,
    /// A render node joins with a token (unpaired connections only). Answer:
    /// [`Response::NodeJoined`].
    NodeJoin {
        /// The token's secret part.
        secret: String,
        /// The node's name.
        name: String,
        /// A certificate signing request for the node's key (DER).
        csr_der: Vec<u8>,
    },
    /// A node's heartbeat, reports and request for work. Answer: [`Response::Work`].
    NodeWork(Box<crate::render::NodeWork>),
    /// Retired: version 1's report of a finished task (since version 2 a node's reports ride
    /// in [`Request::NodeWork`]). Kept so the requests after it keep their place on the
    /// wire; refused.
    RetiredNodeTaskDone,
    /// A job's summary once its state or task counts differ from `seen` (at once without
    /// `seen`), or after `wait_ms` (capped at 10 s) when nothing changed: how `render watch`
    /// follows a job without polling. Answer: [`Response::RenderSummary`].
    RenderWatch {
        /// Job id.
        job: u64,
        /// The summary the caller has.
        seen: Option<crate::render::JobSummary>,
        /// How long to hold the request while nothing changes.
        wait_ms: u32,
    },
    /// Point persistence at a repository (admin). It is opened (or made) before anything
    /// changes: a refused key, a missing bucket or a wrong password is an error and nothing
    /// is written. Answer: [`Response::StorageChanged`].
    StorageSet(crate::files::StorageSet),
    /// The repository persisted to (admin). Answer: [`Response::Storage`].
    StorageShow,
    /// The password of the repository the appliance made, once (admin). Answer:
    /// [`Response::RecoveryKey`].
    StorageRecoveryKey,
    /// The persisted trees (a user's own; an administrator's of `user`, or all). Answer:
    /// [`Response::FilesStatus`].
    FilesStatus {
        /// Only this user's.
        user: Option<String>,
    },
    /// Snapshot trees now: `tree`, else every tree of `user` (the caller's own for a user),
    /// else all (admin). With `wait`, the answer comes once each is persisted or failed.
    /// Answer: [`Response::FilesPersisted`].
    FilesPersist {
        /// Whose trees.
        user: Option<String>,
        /// One tree.
        tree: Option<String>,
        /// Wait for the outcome.
        wait: bool,
    },
    /// The snapshots of a user's trees (or of one tree). Answer: [`Response::FilesSnapshots`].
    FilesSnapshots {
        /// Whose.
        user: String,
        /// One tree.
        tree: Option<String>,
    },
    /// Restore a snapshot into a directory on the appliance (admin). Answer:
    /// [`Response::FilesRestored`].
    FilesRestore(crate::files::RestoreRequest),
}

/// A tablet's figures over its last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TabletStats {
    /// Decoded frames per second.
    pub fps: f32,
    /// Capture-to-decoded latency, median, ms.
    pub p50_ms: f32,
    /// Capture-to-decoded latency, 99th percentile, ms.
    pub p99_ms: f32,
    /// Frames lost or skipped.
    pub dropped: u64,
}

/// How a tablet attaches to a workstation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachMode {
    /// The workstation grows a monitor of this size for this tablet.
    Extend {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The tablet shows an existing monitor.
    Mirror {
        /// Monitor id.
        monitor: u32,
    },
}

/// What an attached tablet needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Names the attachment in later requests.
    pub attach_id: u64,
    /// The monitor shown.
    pub monitor: MonitorInfo,
    /// The session epoch to put in input messages.
    pub epoch: u64,
    /// The encoder in use, and why the others were passed over.
    pub encoder: String,
}

impl Request {
    /// A short name for logs and audit entries; never includes secrets.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::UserAdd { .. } => "user-add",
            Request::UserList => "user-list",
            Request::UserRemove { .. } => "user-remove",
            Request::DeviceList { .. } => "device-list",
            Request::DeviceRevoke { .. } => "device-revoke",
            Request::PairCodeCreate { .. } => "pair-code-create",
            Request::PairCodeStart { .. } => "pair-code-start",
            Request::PairCodeFinish { .. } => "pair-code-finish",
            Request::PairPassword { .. } => "pair-password",
            Request::Whoami => "whoami",
            Request::WorkstationList => "workstation-list",
            Request::Audit { .. } => "audit",
            Request::WorkstationCreate { .. } => "ws-create",
            Request::WorkstationStart { .. } => "ws-start",
            Request::WorkstationStop { .. } => "ws-stop",
            Request::WorkstationDelete { .. } => "ws-delete",
            Request::WorkstationShow { .. } => "ws-show",
            Request::MonitorAdd { .. } => "monitor-add",
            Request::MonitorRemove { .. } => "monitor-remove",
            Request::Screenshot { .. } => "screenshot",
            Request::Attach { .. } => "attach",
            Request::Detach { .. } => "detach",
            Request::KeyframeRequest { .. } => "keyframe-request",
            Request::Ping { .. } => "ping",
            Request::ReportStats { .. } => "report-stats",
            Request::SourceFrame { .. } => "source-frame",
            Request::HandoffOffer { .. } => "handoff-offer",
            Request::Offers => "offers",
            Request::HandoffAccept { .. } => "handoff-accept",
            Request::HandoffDecline { .. } => "handoff-decline",
            Request::HandoffWithdraw { .. } => "handoff-withdraw",
            Request::Reclaim { .. } => "reclaim",
            Request::Share { .. } => "share",
            Request::Unshare { .. } => "unshare",
            Request::FloorTake { .. } => "floor-take",
            Request::SessionShow { .. } => "session-show",
            Request::History { .. } => "history",
            Request::BlobPut { .. } => "blob-put",
            Request::BlobMissing { .. } => "blob-missing",
            Request::BlobGet { .. } => "blob-get",
            Request::RenderSubmit(_) => "render-submit",
            Request::RenderList => "render-list",
            Request::RenderShow { .. } => "render-show",
            Request::RenderControl { .. } => "render-control",
            Request::RenderNodes => "render-nodes",
            Request::RenderNodeToken => "render-node-token",
            Request::NodeJoin { .. } => "node-join",
            Request::NodeWork(_) => "node-work",
            Request::RetiredNodeTaskDone => "retired-node-task-done",
            Request::RenderWatch { .. } => "render-watch",
            Request::StorageSet(_) => "storage-set",
            Request::StorageShow => "storage-show",
            Request::StorageRecoveryKey => "storage-recovery-key",
            Request::FilesStatus { .. } => "files-status",
            Request::FilesPersist { .. } => "files-persist",
            Request::FilesSnapshots { .. } => "files-snapshots",
            Request::FilesRestore(_) => "files-restore",
        }
    }
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The action was done and has nothing to report.
    Done,
    /// Appliance status.
    Status(StatusReport),
    /// Users.
    Users(Vec<UserInfo>),
    /// Devices.
    Devices(Vec<DeviceInfo>),
    /// A new pairing code.
    PairCode {
        /// The code to type on the tablet, `XXXX-XXXX`.
        code: String,
        /// Seconds until it expires.
        expires_in_secs: u64,
    },
    /// The appliance's SPAKE2 message (side B).
    PairChallenge {
        /// SPAKE2 message.
        spake: Vec<u8>,
    },
    /// The device is paired.
    Paired(PairedDevice),
    /// The caller's identity.
    Whoami(Identity),
    /// Workstations.
    Workstations(Vec<WorkstationInfo>),
    /// Audit log entries.
    Audit(Vec<AuditEntry>),
    /// One workstation.
    Workstation(WorkstationInfo),
    /// A PNG image.
    Png(Vec<u8>),
    /// Attached.
    Attached(Attachment),
    /// The appliance's clock, microseconds since its start.
    Pong {
        /// Echoed.
        client_time_us: u64,
        /// The appliance's clock when it answered.
        server_time_us: u64,
    },
    /// An offer was made.
    Offer(OfferInfo),
    /// Offers.
    Offers(Vec<OfferInfo>),
    /// Control moved to the caller.
    HandedOff {
        /// Workstation, `user/name`.
        ws: String,
        /// The new session epoch.
        epoch: u64,
    },
    /// A session.
    Session(SessionInfo),
    /// Hashes the appliance does not have.
    Missing(Vec<String>),
    /// Bytes of a stored file.
    Bytes(Vec<u8>),
    /// A render job.
    RenderJob(crate::render::JobDetail),
    /// Render jobs.
    RenderJobs(Vec<crate::render::JobSummary>),
    /// Render nodes.
    RenderNodes(Vec<crate::render::NodeInfo>),
    /// A join token for render nodes.
    NodeToken {
        /// What `periphery-render-node join` takes.
        token: String,
        /// Seconds until it expires.
        expires_in_secs: u64,
    },
    /// A node joined.
    NodeJoined {
        /// Its id.
        node_id: String,
        /// Its certificate (DER), signed by the appliance CA.
        cert_der: Vec<u8>,
        /// The appliance CA to pin (DER).
        ca_der: Vec<u8>,
    },
    /// Work for a node.
    Work(crate::render::WorkReply),
    /// A render job's summary.
    RenderSummary(crate::render::JobSummary),
    /// Persistence now goes to this repository.
    StorageChanged(crate::files::StorageChanged),
    /// The repository persisted to.
    Storage(crate::files::StorageInfo),
    /// The repository password.
    RecoveryKey(String),
    /// Persisted trees.
    FilesStatus(Vec<crate::files::TreeInfo>),
    /// Forced snapshots (empty without `wait`).
    FilesPersisted(Vec<crate::files::Persisted>),
    /// Snapshots, oldest first.
    FilesSnapshots(Vec<crate::files::SnapshotInfo>),
    /// A restore ended.
    FilesRestored {
        /// The snapshot restored.
        snapshot: crate::files::SnapshotInfo,
        /// Where to.
        to: String,
    },
}

/// What a tablet receives when it is paired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDevice {
    /// The device's id.
    pub device_id: String,
    /// The user it belongs to.
    pub user: String,
    /// The device certificate, signed by the appliance CA (DER).
    pub cert_der: Vec<u8>,
    /// The appliance CA certificate to pin (DER).
    pub ca_der: Vec<u8>,
    /// For code pairing: HMAC under the SPAKE2 key proving the appliance knew the code.
    pub confirm: Option<Vec<u8>>,
}

/// A user, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Whether password login is possible.
    pub has_password: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Devices not revoked.
    pub devices: u32,
}

/// A device, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device id.
    pub id: String,
    /// Name given at pairing.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Certificate serial number (hex).
    pub serial: String,
    /// Unix seconds.
    pub paired_at: u64,
    /// Unix seconds of the last connection, if any.
    pub last_seen: Option<u64>,
    /// Whether the device has been revoked.
    pub revoked: bool,
    /// Whether it is connected now.
    pub connected: bool,
}

/// A workstation, as listed and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkstationInfo {
    /// Name, unique per user.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Backend (`xvfb`, `qemu`).
    pub backend: String,
    /// State: `stopped`, `starting`, `running`, `restarting`, `failed`.
    pub state: String,
    /// Why it is in that state, when it is not the obvious one (a crash, a failed start).
    pub reason: Option<String>,
    /// Monitors: live geometry when running, the configured sizes otherwise.
    pub monitors: Vec<MonitorInfo>,
    /// Process ids of its main processes, with their role.
    pub pids: Vec<(String, u32)>,
    /// Resident memory of all its processes, bytes (when running).
    pub memory_bytes: Option<u64>,
    /// CPU time its processes have used, seconds (when running).
    pub cpu_secs: Option<f64>,
    /// Whether resource limits are enforced, and if not why.
    pub limits: String,
    /// Backend details (display, acceleration, image).
    pub detail: String,
}

/// A monitor of a workstation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// Stable id; 0 is the primary.
    pub id: u32,
    /// Left edge in the framebuffer.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number, increasing.
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// Who did it (a user, `local-admin`, or an address for unpaired attempts).
    pub actor: String,
    /// What happened (`user-add`, `device-paired`, `pair-failed`, ...).
    pub event: String,
    /// Details for a person.
    pub detail: String,
}

/// A connected client, as shown in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Remote address.
    pub remote: String,
    /// Device id, if paired.
    pub device_id: Option<String>,
    /// User, if paired.
    pub user: Option<String>,
    /// Seconds since it connected.
    pub connected_secs: u64,
}

/// The appliance's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Appliance name.
    pub name: String,
    /// Software version.
    pub version: String,
    /// Protocol version range spoken.
    pub protocol: (u16, u16),
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Addresses the QUIC endpoint listens on.
    pub listening: Vec<String>,
    /// Certificate fingerprint.
    pub fingerprint: String,
    /// Whether it is announced by mDNS, and if not why.
    pub discovery: String,
    /// Users.
    pub users: Vec<UserInfo>,
    /// Devices.
    pub devices: Vec<DeviceInfo>,
    /// Connected clients.
    pub connections: Vec<ConnectionInfo>,
    /// Path of the state directory.
    pub state_dir: String,
    /// Monitors being streamed.
    pub streams: Vec<StreamInfo>,
    /// Input events dropped at the session gate since start (an older epoch after a
    /// handoff, a viewer, a co-controller without the floor).
    pub input_dropped_at_gate: u64,
    /// Whether the appliance runs a render node of its own, and if not why.
    pub local_render_node: String,
}

/// A monitor being streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Workstation, `user/name`.
    pub workstation: String,
    /// Monitor id.
    pub monitor: u32,
    /// The encoder and why the others were passed over.
    pub encoder: String,
    /// Tablets attached.
    pub tablets: u32,
    /// Frames encoded so far.
    pub frames: u64,
    /// The attached tablets' device ids and their last reported figures.
    pub tablet_stats: Vec<(String, Option<TabletStats>)>,
    /// Where the pipeline's time goes, averaged over recent frames.
    pub figures: PipelineFigures,
}

/// A streamed monitor's pipeline figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineFigures {
    /// Frames encoded per second over the last second.
    pub fps: f32,
    /// Waiting for the screen to change and reading it, per frame, ms: high when the content
    /// is what limits the rate, near zero when the pipeline is.
    pub capture_ms: f32,
    /// BGRA->YUV conversion per frame, ms.
    pub convert_ms: f32,
    /// Encoding per frame, ms.
    pub encode_ms: f32,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind of failure, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// For [`ErrorCode::TooManyAttempts`]: seconds until another attempt is accepted.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

/// Kinds of request failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The caller must be a paired device (or the local admin) for this.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// The named thing does not exist.
    NotFound,
    /// The named thing exists already.
    AlreadyExists,
    /// An argument is invalid; the message says which.
    InvalidArgument,
    /// The pairing code or password is wrong.
    WrongCredentials,
    /// The pairing code has expired.
    CodeExpired,
    /// The pairing code was already used.
    CodeUsed,
    /// Too many failed attempts; see `retry_after_secs`.
    TooManyAttempts,
    /// The request does not fit the state of the conversation (e.g. finish before start).
    OutOfOrder,
    /// The appliance failed; its log says more.
    Internal,
    /// Something the appliance depends on (the storage service) cannot be reached now;
    /// the message says what. Trying again later may work.
    Unavailable,
}
