//! Streaming: one encoder per watched monitor, its frames fanned out to every attached tablet.
//!
//! - A [`Pipeline`] exists while a monitor has at least one tablet: its own thread captures
//!   (the monitor's `FrameSource`, which waits for damage), converts on all cores, encodes once
//!   and hands the same bytes to every subscriber. Idle monitors encode nothing.
//! - Each subscriber has a small channel. A tablet that cannot keep up fills it: it is marked
//!   behind and skips to the next keyframe, which is requested (at most twice a second per
//!   monitor). The pipeline never waits for a tablet, so a slow one cannot slow the others.
//! - Per connection, a sender task puts each frame on its own unidirectional QUIC stream, newer
//!   frames at higher priority, at most [`MAX_IN_FLIGHT`] at once; when a keyframe goes out,
//!   older streams still in flight are reset.
//! - Input from a tablet is applied only to the monitor it is attached to, never from a
//!   view-only attachment, validated and rate-limited, through one input thread per workstation.
//! - An extended monitor outlives its tablet's connection for [`RECONNECT_GRACE`]: the same
//!   device attaching again gets it back; otherwise it is removed.

mod input;
mod pipeline;

use input::{spawn_input_thread, to_event, QueuedInput};
pub use pipeline::Pipeline;
use pipeline::{run_pipeline, send_frames, Sub};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use periphery_protocol::media::{InputLimiter, InputMessage};
use periphery_protocol::{
    ApiError, AttachMode, Attachment, ErrorCode, MonitorInfo, PipelineFigures, TabletStats,
};
use periphery_workstation::MonitorSize;

use periphery_session::Session;

use crate::store::WorkstationRecord;
use crate::workstations::Workstations;

/// Frames one tablet may have in flight.
pub const MAX_IN_FLIGHT: usize = 4;
/// How long an extended monitor waits for its tablet to come back.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(10);
/// Frames a subscriber's channel holds before it counts as behind.
const CHANNEL: usize = 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
#[derive(Debug, Clone)]
struct Attached {
    ws_id: String,
    monitor: u32,
    extended: bool,
    view_only: bool,
    conn_id: u64,
    device_id: String,
    user: String,
    stats: Option<TabletStats>,
}

/// The committed sessions of workstations, by id: who may watch and control. It is also the
/// input gate: each event is checked and injected under a read lock, and a transition is
/// committed to the store and applied here under the write lock, so no event of an older
/// epoch reaches the display after a commit.
pub type SessionGate = Arc<tokio::sync::RwLock<HashMap<String, Session>>>;

/// Who is attaching.
#[derive(Debug)]
pub struct Tablet {
    /// Its connection.
    pub conn: quinn::Connection,
    /// The connection's id.
    pub conn_id: u64,
    /// The device.
    pub device_id: String,
    /// The device's user.
    pub user: String,
}

type Pipelines = Arc<Mutex<HashMap<(String, u32), Arc<Pipeline>>>>;

/// (device id, workstation id) of an extended monitor waiting for its tablet.
type OrphanKey = (String, String);

/// The appliance's streams.
pub struct Streaming {
    clock: Instant,
    workstations: Arc<Workstations>,
    pipelines: Pipelines,
    attachments: Mutex<HashMap<u64, Attached>>,
    /// Extended monitors whose tablet left.
    orphans: Mutex<HashMap<OrphanKey, (u32, MonitorSize, Instant)>>,
    inputs: Mutex<HashMap<String, std::sync::mpsc::Sender<QueuedInput>>>,
    sessions: SessionGate,
    /// Input events dropped at the gate (stale epoch, no control, no floor).
    dropped_at_gate: Arc<AtomicU64>,
    limiters: Mutex<HashMap<u64, InputLimiter>>,
    next_id: AtomicU64,
    keep_source_frames: usize,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

/// What status shows about one watched monitor.
#[derive(Debug, Clone)]
pub struct PipelineStatus {
    /// Workstation id.
    pub ws_id: String,
    /// Monitor.
    pub monitor: u32,
    /// Encoder and why.
    pub encoder: String,
    /// Tablets attached.
    pub tablets: usize,
    /// Frames encoded so far.
    pub encoded: u64,
    /// Recent rate and stage times.
    pub figures: PipelineFigures,
    /// Attached tablets (device ids) and what they last reported.
    pub tablets_stats: Vec<(String, Option<TabletStats>)>,
}

impl Streaming {
    /// Streams of `workstations`; each streamed monitor keeps its last `keep_source_frames`
    /// captured frames for [`Streaming::source_frame`].
    pub fn new(workstations: Arc<Workstations>, keep_source_frames: usize) -> Self {
        Self {
            clock: Instant::now(),
            workstations,
            pipelines: Arc::new(Mutex::new(HashMap::new())),
            attachments: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            inputs: Mutex::new(HashMap::new()),
            sessions: Arc::default(),
            dropped_at_gate: Arc::default(),
            limiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            keep_source_frames,
        }
    }

    /// The captured frame monitor `monitor` of `ws_id` sent with `sequence`, as PNG.
    pub fn source_frame(
        &self,
        ws_id: &str,
        monitor: u32,
        sequence: u64,
    ) -> Result<Vec<u8>, ApiError> {
        if self.keep_source_frames == 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "the appliance keeps no source frames: set [streaming] keep_source_frames",
            ));
        }
        let p = lock(&self.pipelines)
            .get(&(ws_id.to_owned(), monitor))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("monitor {monitor} is not being streamed"),
                )
            })?;
        let kept = lock(&p.kept);
        let f = kept
            .iter()
            .find(|f| f.sequence == sequence)
            .ok_or_else(|| {
                let range = match (kept.front(), kept.back()) {
                    (Some(a), Some(b)) => format!("{}..={}", a.sequence, b.sequence),
                    _ => "none".into(),
                };
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("frame {sequence} is not kept (kept: {range})"),
                )
            })?;
        let frame = periphery_workstation::Frame {
            width: f.width,
            height: f.height,
            stride: f.width as usize * 4,
            data: &f.data,
            captured_at: Instant::now(),
            damage: Vec::new(),
        };
        periphery_workstation::png::encode(&frame)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    }

    /// The session gate (see [`SessionGate`]).
    pub fn sessions(&self) -> &SessionGate {
        &self.sessions
    }

    /// Input events dropped at the gate so far.
    pub fn dropped_at_gate(&self) -> u64 {
        self.dropped_at_gate.load(Ordering::Relaxed)
    }

    /// Ends the attachments of `users` to workstation `ws_id` (a handoff, a revoked share);
    /// their extended monitors stay (the layout belongs to the session). Returns
    /// `(connection, attachment)` pairs, for the notices.
    pub fn detach_users(&self, ws_id: &str, users: &[String]) -> Vec<(u64, u64)> {
        let ids: Vec<(u64, u64)> = lock(&self.attachments)
            .iter()
            .filter(|(_, a)| a.ws_id == ws_id && users.contains(&a.user))
            .map(|(id, a)| (a.conn_id, *id))
            .collect();
        for (_, id) in &ids {
            self.unsubscribe(*id);
        }
        ids
    }

    /// The connections attached to workstation `ws_id`.
    pub fn connections_of(&self, ws_id: &str) -> Vec<u64> {
        let mut c: Vec<u64> = lock(&self.attachments)
            .values()
            .filter(|a| a.ws_id == ws_id)
            .map(|a| a.conn_id)
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// The appliance clock: microseconds since start.
    pub fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// The watched monitors.
    pub fn status(&self) -> Vec<PipelineStatus> {
        let attachments = lock(&self.attachments).clone();
        lock(&self.pipelines)
            .values()
            .map(|p| PipelineStatus {
                ws_id: p.ws_id.clone(),
                monitor: p.monitor,
                encoder: lock(&p.encoder).clone(),
                tablets: lock(&p.subs).len(),
                encoded: p.encoded.load(Ordering::Relaxed),
                figures: {
                    let f = lock(&p.figures);
                    let mut figures = f.0;
                    // A still screen encodes nothing: the rate decays instead of freezing.
                    let window = f.2.elapsed();
                    if window > Duration::from_secs(2) {
                        figures.fps = f.1 as f32 / window.as_secs_f32();
                    }
                    figures
                },
                tablets_stats: attachments
                    .values()
                    .filter(|a| a.ws_id == p.ws_id && a.monitor == p.monitor)
                    .map(|a| (a.device_id.clone(), a.stats.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Records what a tablet measured.
    pub fn report_stats(
        &self,
        attach_id: u64,
        conn_id: u64,
        stats: TabletStats,
    ) -> Result<(), ApiError> {
        match lock(&self.attachments).get_mut(&attach_id) {
            Some(a) if a.conn_id == conn_id => {
                a.stats = Some(stats);
                Ok(())
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such attachment")),
        }
    }

    /// Attaches a connection to a monitor of running workstation `rec`, whose stored session
    /// is `stored`.
    pub async fn attach(
        &self,
        tablet: Tablet,
        rec: &WorkstationRecord,
        stored: Session,
        mode: AttachMode,
        view_only: bool,
    ) -> Result<Attachment, ApiError> {
        let Tablet {
            conn,
            conn_id,
            device_id,
            user,
        } = tablet;
        let (device_id, user) = (device_id.as_str(), user.as_str());
        let bad = |m: String| ApiError::new(ErrorCode::InvalidArgument, m);
        let session = self
            .sessions
            .write()
            .await
            .entry(rec.id.clone())
            // The gate's copy, when there is one, is never older than the store's.
            .or_insert(stored)
            .clone();
        if !session.may_view(user) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "{user} may not watch {}/{} ({} controls it)",
                    rec.user, rec.name, session.holder
                ),
            ));
        }
        let view_only = view_only || !session.may_control(user);
        let monitors = self.workstations.monitors(&rec.id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::OutOfOrder,
                format!("workstation {} is not running", rec.name),
            )
        })?;
        let (monitor, extended) = match mode {
            AttachMode::Mirror { monitor } => {
                let m = monitors
                    .iter()
                    .find(|m| m.id == monitor)
                    .copied()
                    .ok_or_else(|| bad(format!("no monitor {monitor}")))?;
                (m, false)
            }
            AttachMode::Extend { width, height } => {
                let size = MonitorSize { width, height };
                let key = (device_id.to_owned(), rec.id.clone());
                let reclaimed = match lock(&self.orphans).remove(&key) {
                    Some((id, s, _)) if s == size => monitors.iter().find(|m| m.id == id).copied(),
                    _ => None,
                };
                match reclaimed {
                    Some(m) => (m, true),
                    None => (
                        self.workstations
                            .monitor_add(rec, size)
                            .await
                            .map_err(|e| bad(e.to_string()))?,
                        true,
                    ),
                }
            }
        };
        let attach_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let pipeline = {
            let mut map = lock(&self.pipelines);
            let p = map
                .entry((rec.id.clone(), monitor.id))
                .or_insert_with(|| {
                    let p = Arc::new(Pipeline {
                        ws_id: rec.id.clone(),
                        monitor: monitor.id,
                        subs: Mutex::new(Vec::new()),
                        keyframe: AtomicBool::new(true),
                        last_key_request: Mutex::new(None),
                        encoder: Mutex::new("starting".into()),
                        encoded: AtomicU64::new(0),
                        figures: Mutex::new((PipelineFigures::default(), 0, Instant::now())),
                        kept: Mutex::new(VecDeque::new()),
                        keep: self.keep_source_frames,
                    });
                    let (p2, ws, map2, clock) = (
                        p.clone(),
                        self.workstations.clone(),
                        self.pipelines.clone(),
                        self.clock,
                    );
                    std::thread::Builder::new()
                        .name(format!("capture-{}-{}", rec.id, monitor.id))
                        .spawn(move || run_pipeline(p2, ws, map2, clock))
                        .map(|_| ())
                        .unwrap_or_else(
                            |e| tracing::error!(error = %e, "cannot start an encoder thread"),
                        );
                    p
                })
                .clone();
            lock(&p.subs).push(Sub {
                attach_id,
                tx,
                behind: true,
            });
            p
        };
        // A tablet joining gets a keyframe promptly.
        pipeline.keyframe.store(true, Ordering::Relaxed);
        tokio::spawn(send_frames(conn, rx, pipeline.clone()));
        lock(&self.attachments).insert(
            attach_id,
            Attached {
                ws_id: rec.id.clone(),
                monitor: monitor.id,
                extended,
                view_only,
                conn_id,
                device_id: device_id.to_owned(),
                user: user.to_owned(),
                stats: None,
            },
        );
        // Control may have moved while this attachment was being set up: a transition
        // detaches (after committing) the attachments it finds, so one it could not see yet
        // must see the transition here.
        let now = self.sessions.read().await.get(&rec.id).cloned();
        if now.is_none_or(|s| s.epoch != session.epoch || !s.may_view(user)) {
            self.unsubscribe(attach_id);
            return Err(ApiError::new(
                ErrorCode::OutOfOrder,
                "control of the session moved while attaching; try again",
            ));
        }
        tracing::info!(ws = %rec.id, monitor = monitor.id, attach_id, extended, view_only, "tablet attached");
        let encoder = lock(&pipeline.encoder).clone();
        Ok(Attachment {
            attach_id,
            monitor: MonitorInfo {
                id: monitor.id,
                x: monitor.x,
                y: monitor.y,
                width: monitor.width,
                height: monitor.height,
            },
            epoch: session.epoch,
            encoder,
        })
    }

    fn unsubscribe(&self, attach_id: u64) -> Option<Attached> {
        let a = lock(&self.attachments).remove(&attach_id)?;
        if let Some(p) = lock(&self.pipelines).get(&(a.ws_id.clone(), a.monitor)) {
            lock(&p.subs).retain(|s| s.attach_id != attach_id);
        }
        lock(&self.limiters).remove(&attach_id);
        Some(a)
    }

    /// Detaches on request: an extended monitor goes at once.
    pub async fn detach(&self, attach_id: u64, conn_id: u64) -> Result<(), ApiError> {
        let owned = lock(&self.attachments)
            .get(&attach_id)
            .is_some_and(|a| a.conn_id == conn_id);
        if !owned {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no attachment {attach_id} on this connection"),
            ));
        }
        if let Some(a) = self.unsubscribe(attach_id) {
            if a.extended {
                self.remove_monitor(&a.ws_id, a.monitor).await;
            }
        }
        Ok(())
    }

    async fn remove_monitor(&self, ws_id: &str, monitor: u32) {
        if let Some(rec) = self.workstations.record(ws_id).await {
            if let Err(e) = self.workstations.monitor_remove(&rec, monitor).await {
                tracing::debug!(ws = ws_id, monitor, error = %e, "extended monitor already gone");
            }
        }
    }

    /// A connection ended: its attachments go; extended monitors wait for the device to return.
    pub async fn connection_closed(self: &Arc<Self>, conn_id: u64) {
        let ids: Vec<u64> = lock(&self.attachments)
            .iter()
            .filter(|(_, a)| a.conn_id == conn_id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(a) = self.unsubscribe(id) else {
                continue;
            };
            if !a.extended {
                continue;
            }
            let size = self
                .workstations
                .monitors(&a.ws_id)
                .and_then(|ms| ms.into_iter().find(|m| m.id == a.monitor))
                .map(|m| MonitorSize {
                    width: m.width,
                    height: m.height,
                });
            let Some(size) = size else {
                continue;
            };
            let key = (a.device_id.clone(), a.ws_id.clone());
            let since = Instant::now();
            lock(&self.orphans).insert(key.clone(), (a.monitor, size, since));
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RECONNECT_GRACE).await;
                let expired = {
                    let mut o = lock(&me.orphans);
                    match o.get(&key) {
                        Some((_, _, t)) if *t == since => o.remove(&key),
                        _ => None,
                    }
                };
                if let Some((monitor, _, _)) = expired {
                    tracing::info!(ws = %key.1, monitor, "extended monitor removed: its tablet did not come back");
                    me.remove_monitor(&key.1, monitor).await;
                }
            });
        }
    }

    /// A keyframe for an attachment of this connection.
    pub fn keyframe_request(&self, attach_id: u64, conn_id: u64) -> Result<(), ApiError> {
        let a = lock(&self.attachments)
            .get(&attach_id)
            .filter(|a| a.conn_id == conn_id)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such attachment"))?;
        if let Some(p) = lock(&self.pipelines).get(&(a.ws_id, a.monitor)) {
            p.request_keyframe();
        }
        Ok(())
    }

    /// Input from connection `conn_id`: applied if it targets a monitor this connection is
    /// attached to with control, lies inside it, and fits the rate limit.
    pub fn input(&self, conn_id: u64, msg: &InputMessage) -> Result<(), String> {
        let (attach_id, a) = lock(&self.attachments)
            .iter()
            .find(|(_, a)| a.conn_id == conn_id && a.monitor == msg.monitor)
            .map(|(id, a)| (*id, a.clone()))
            .ok_or_else(|| format!("not attached to monitor {}", msg.monitor))?;
        if a.view_only {
            return Err("this attachment is view-only".into());
        }
        let monitor = self
            .workstations
            .monitors(&a.ws_id)
            .and_then(|ms| ms.into_iter().find(|m| m.id == a.monitor))
            .ok_or("the monitor is gone")?;
        msg.validate(monitor.width, monitor.height)
            .map_err(|e| e.to_string())?;
        let allowed = lock(&self.limiters)
            .entry(attach_id)
            .or_insert_with(|| InputLimiter::new(2000, 500))
            .allow(Instant::now());
        if !allowed {
            return Err("input rate limit".into());
        }
        let tx = {
            let mut inputs = lock(&self.inputs);
            inputs
                .entry(a.ws_id.clone())
                .or_insert_with(|| {
                    spawn_input_thread(
                        self.workstations.clone(),
                        a.ws_id.clone(),
                        self.sessions.clone(),
                        self.dropped_at_gate.clone(),
                    )
                })
                .clone()
        };
        let queued = QueuedInput {
            monitor: msg.monitor,
            event: to_event(&msg.event),
            user: a.user.clone(),
            epoch: msg.epoch,
        };
        if tx.send(queued).is_err() {
            lock(&self.inputs).remove(&a.ws_id);
            return Err("the workstation's input is gone".into());
        }
        Ok(())
    }
}
