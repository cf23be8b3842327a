//! Running workstations: the supervisor's side of `periphery-workstation`.
//!
//! [`Workstations`] keeps the live state of every workstation next to the desired state in the
//! store and makes reality follow it:
//! - [`Workstations::start`] / [`Workstations::stop`] on request;
//! - [`Workstations::supervise`] notices a workstation whose processes died, records why, and
//!   restarts it with exponential backoff (1 s, 2 s, 4 s … 60 s; the count resets after a
//!   minute of good running);
//! - [`Workstations::reconcile`] at start-up first reaps processes a crashed supervisor left
//!   behind (every workstation process carries this appliance's marker prefix), then starts the
//!   workstations that should run — so a crash never leaves a duplicate Xvfb.
//!
//! Blocking work (starting Xvfb, stopping processes, capture) runs on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use periphery_protocol::{MonitorInfo, WorkstationInfo};
use periphery_workstation::cgroup::{Cgroup, CgroupLimits, Cgroups};
use periphery_workstation::qemu::{AccelPreference, QemuOptions, QemuWorkstation};
use periphery_workstation::xvfb::{XvfbOptions, XvfbWorkstation};
use periphery_workstation::{procs, BackendKind, Limits, MonitorSize, Workstation};

use crate::store::{Store, WorkstationRecord};

/// How workstations are run; from the config.
#[derive(Debug, Clone)]
pub struct WorkstationSettings {
    /// Window manager command for xvfb workstations.
    pub window_manager: Vec<String>,
    /// Session command for xvfb workstations.
    pub session: Vec<String>,
    /// Request limits.
    pub limits: Limits,
    /// Accelerator of qemu workstations.
    pub accel: AccelPreference,
    /// How long a graceful stop waits for a VM to power down before stopping it hard.
    pub shutdown_timeout: Duration,
}

impl Default for WorkstationSettings {
    fn default() -> Self {
        Self {
            window_manager: vec!["openbox".into()],
            session: vec!["xterm".into()],
            limits: Limits::default(),
            accel: AccelPreference::Auto,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

type Handle = Arc<Mutex<Option<Box<dyn Workstation>>>>;

#[derive(Debug)]
enum LiveState {
    Starting,
    Running { handle: Handle, since: Instant },
    Restarting { at: Instant, why: String },
    Failed(String),
}

#[derive(Debug)]
struct Live {
    state: LiveState,
    attempt: u32,
}

/// Why a workstation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkstationOpError {
    /// It is not running.
    #[error("workstation {0} is not running")]
    NotRunning(String),
    /// The backend refused.
    #[error("{0}")]
    Backend(String),
}

/// The live workstations of this appliance.
#[derive(Debug)]
pub struct Workstations {
    store: Arc<Store>,
    state_dir: PathBuf,
    instance: String,
    settings: WorkstationSettings,
    as_root: bool,
    cgroups: Result<Cgroups, String>,
    live: Mutex<HashMap<String, Live>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Backoff before restart attempt `n` (1-based): 1 s, 2 s, 4 s, … at most 60 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Workstations {
    /// `instance` tells this appliance's processes from another's on the same machine.
    pub fn new(
        store: Arc<Store>,
        state_dir: PathBuf,
        instance: String,
        settings: WorkstationSettings,
    ) -> Self {
        Self {
            store,
            state_dir,
            instance,
            settings,
            as_root: rustix::process::geteuid().is_root(),
            cgroups: Cgroups::detect(Path::new("/sys/fs/cgroup")),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    fn marker(&self, id: &str) -> String {
        format!("{}/{id}", self.instance)
    }

    /// The id of this appliance's workstation that process `pid` belongs to, by the marker
    /// in its environment.
    pub fn workstation_of_process(&self, pid: i32) -> Option<String> {
        let marker = periphery_workstation::procs::marker_of(pid)?;
        Some(
            marker
                .strip_prefix(&format!("{}/", self.instance))?
                .to_owned(),
        )
    }

    /// The uid a workstation's processes run as: its own as root, else the supervisor's.
    pub fn process_uid(&self, rec: &WorkstationRecord) -> u32 {
        if self.as_root {
            rec.uid
        } else {
            rustix::process::geteuid().as_raw()
        }
    }

    /// A workstation's home directory.
    pub fn home(&self, rec: &WorkstationRecord) -> PathBuf {
        self.state_dir.join("homes").join(&rec.id)
    }

    fn runtime_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("run").join(id)
    }

    /// The group with `rec`'s limits, or `None` where limits cannot be enforced.
    fn cgroup(&self, rec: &WorkstationRecord) -> Option<Cgroup> {
        let cgroups = self.cgroups.as_ref().ok()?;
        let limits = CgroupLimits {
            memory_mib: rec.spec.memory_mib,
            cpus: rec.spec.cpus,
        };
        match cgroups.create(&rec.id, limits) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(ws = %rec.id, error = %e, "cannot create the workstation's cgroup; running without limits");
                None
            }
        }
    }

    /// Whether `rec`'s limits are enforced, and if not why.
    fn limits_status(&self, rec: &WorkstationRecord) -> String {
        match &self.cgroups {
            Ok(_) => format!(
                "cgroup v2: memory.max {} MiB, cpu.max {} CPU(s)",
                rec.spec.memory_mib, rec.spec.cpus
            ),
            Err(why) => format!("not enforced: {why}"),
        }
    }

    fn options(&self, rec: &WorkstationRecord) -> XvfbOptions {
        XvfbOptions {
            marker: self.marker(&rec.id),
            runtime_dir: self.runtime_dir(&rec.id),
            home: self.home(rec),
            run_as: self.as_root.then_some((rec.uid, rec.uid)),
            framebuffer: self.settings.limits.framebuffer,
            window_manager: self.settings.window_manager.clone(),
            session: self.settings.session.clone(),
            start_timeout: Duration::from_secs(30),
            cgroup: self.cgroup(rec),
            // `periphery render …` inside the session reaches the appliance as its owner.
            env: vec![(
                "PERIPHERY_SOCKET".into(),
                crate::admin::session_socket_path(&self.state_dir)
                    .display()
                    .to_string(),
            )],
        }
    }

    fn qemu_options(&self, rec: &WorkstationRecord) -> QemuOptions {
        QemuOptions {
            marker: self.marker(&rec.id),
            runtime_dir: self.runtime_dir(&rec.id),
            disk: self
                .state_dir
                .join("disks")
                .join(format!("{}.qcow2", rec.id)),
            run_as: self.as_root.then_some((rec.uid, rec.uid)),
            image: rec.spec.image.as_ref().map(PathBuf::from),
            kernel: rec.spec.kernel.as_ref().map(|k| {
                (
                    PathBuf::from(&k.kernel),
                    k.initrd.as_ref().map(PathBuf::from),
                    k.append.clone(),
                )
            }),
            memory_mib: rec.spec.memory_mib,
            cpus: rec.spec.cpus,
            accel: self.settings.accel,
            start_timeout: Duration::from_secs(30),
            cgroup: self.cgroup(rec),
        }
    }

    /// A workstation's overlay disk (qemu).
    pub fn disk(&self, rec: &WorkstationRecord) -> PathBuf {
        self.state_dir
            .join("disks")
            .join(format!("{}.qcow2", rec.id))
    }

    fn handle(&self, id: &str) -> Option<Handle> {
        match &lock(&self.live).get(id)?.state {
            LiveState::Running { handle, .. } => Some(handle.clone()),
            _ => None,
        }
    }

    /// Starts `rec` unless it runs already; waits until it runs or fails.
    pub async fn start(&self, rec: &WorkstationRecord) -> Result<(), WorkstationOpError> {
        {
            let mut live = lock(&self.live);
            let entry = live.entry(rec.id.clone()).or_insert(Live {
                state: LiveState::Failed(String::new()),
                attempt: 0,
            });
            match entry.state {
                LiveState::Running { .. } | LiveState::Starting => return Ok(()),
                _ => entry.state = LiveState::Starting,
            }
        }
        let outcome: Result<Box<dyn Workstation>, String> = match rec.spec.backend {
            BackendKind::Xvfb => {
                let opts = self.options(rec);
                let monitors = rec.spec.monitors.clone();
                blocking(move || XvfbWorkstation::start(opts, &monitors))
                    .await
                    .map(|w| Box::new(w) as Box<dyn Workstation>)
                    .map_err(|e| chain(&e))
            }
            BackendKind::Qemu => {
                let opts = self.qemu_options(rec);
                blocking(move || QemuWorkstation::start(opts))
                    .await
                    .map(|w| Box::new(w) as Box<dyn Workstation>)
                    .map_err(|e| chain(&e))
            }
        };
        // Decide under the lock, act after it (a guard must not live across an await).
        let orphan = {
            let mut live = lock(&self.live);
            match (live.get_mut(&rec.id), outcome) {
                (None, Ok(ws)) => Err(Some(ws)),
                (None, Err(_)) => Err(None),
                (Some(entry), Ok(ws)) => {
                    entry.state = LiveState::Running {
                        handle: Arc::new(Mutex::new(Some(ws))),
                        since: Instant::now(),
                    };
                    Ok(Ok(()))
                }
                (Some(entry), Err(why)) => {
                    entry.state = LiveState::Failed(why.clone());
                    Ok(Err(why))
                }
            }
        };
        match orphan {
            Err(started) => {
                // Deleted while starting: stop what started.
                if let Some(ws) = started {
                    blocking(move || ws.stop()).await;
                }
                Err(WorkstationOpError::Backend("deleted while starting".into()))
            }
            Ok(Ok(())) => {
                tracing::info!(ws = %rec.id, user = %rec.user, name = %rec.name, "workstation running");
                let _ = self.set_error(&rec.id, None).await;
                Ok(())
            }
            Ok(Err(why)) => {
                tracing::error!(ws = %rec.id, error = %why, "workstation failed to start");
                let _ = self.set_error(&rec.id, Some(why.clone())).await;
                Err(WorkstationOpError::Backend(why))
            }
        }
    }

    async fn set_error(
        &self,
        id: &str,
        why: Option<String>,
    ) -> Result<(), crate::store::LookupError> {
        let store = self.store.clone();
        let id = id.to_owned();
        blocking(move || {
            store
                .update_workstation(&id, None, |w| w.last_error = why)
                .map(|_| ())
        })
        .await
    }

    /// Stops `id` and waits until none of its processes is left. With `graceful`, a VM is
    /// first asked to power down and given the configured time to do so.
    pub async fn stop(&self, id: &str, graceful: bool) {
        let removed = lock(&self.live).remove(id);
        if let Some(Live {
            state: LiveState::Running { handle, .. },
            ..
        }) = removed
        {
            let ws = lock(&handle).take();
            if let Some(mut ws) = ws {
                let timeout = self.settings.shutdown_timeout;
                blocking(move || {
                    if graceful && ws.request_shutdown() {
                        let deadline = Instant::now() + timeout;
                        while Instant::now() < deadline && ws.exited().is_none() {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    ws.stop()
                })
                .await;
            }
        }
        // Whatever else carries its marker (a crashed start, an orphan) goes too.
        let marker = self.marker(id);
        blocking(move || procs::stop_marked(&marker, Duration::from_secs(2), || {})).await;
    }

    /// Stops every workstation (supervisor shutdown); desired states stay as they are.
    pub async fn stop_all(&self) {
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            self.stop(&id, true).await;
        }
    }

    /// Reaps what a previous run left and starts what should run.
    pub async fn reconcile(&self) {
        let prefix = format!("{}/", self.instance);
        let orphans = blocking(move || procs::marked_with_prefix(&prefix)).await;
        let mut markers: Vec<String> = orphans.into_iter().map(|(_, m)| m).collect();
        markers.sort();
        markers.dedup();
        for m in markers {
            tracing::warn!(marker = %m, "reaping processes left by an earlier run");
            blocking(move || procs::stop_marked(&m, Duration::from_secs(2), || {})).await;
        }
        let store = self.store.clone();
        let records = match blocking(move || store.workstations()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read workstations to reconcile");
                return;
            }
        };
        for rec in records.into_iter().filter(|r| r.desired_running) {
            if let Err(e) = self.start(&rec).await {
                tracing::error!(ws = %rec.id, error = %e, "could not restart workstation");
                self.schedule_restart(&rec.id, e.to_string());
            }
        }
    }

    fn schedule_restart(&self, id: &str, why: String) {
        let mut live = lock(&self.live);
        let entry = live.entry(id.to_owned()).or_insert(Live {
            state: LiveState::Starting,
            attempt: 0,
        });
        entry.attempt += 1;
        let wait = backoff(entry.attempt);
        tracing::warn!(ws = %id, attempt = entry.attempt, ?wait, %why, "workstation will be restarted");
        entry.state = LiveState::Restarting {
            at: Instant::now() + wait,
            why,
        };
    }

    /// Watches running workstations and restarts dead ones, forever.
    pub async fn supervise(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let mut died = Vec::new();
            let mut due = Vec::new();
            {
                let mut live = lock(&self.live);
                for (id, l) in live.iter_mut() {
                    match &l.state {
                        LiveState::Running { handle, since } => {
                            let why = lock(handle).as_mut().and_then(|ws| ws.exited());
                            if let Some(why) = why {
                                if since.elapsed() > Duration::from_secs(60) {
                                    l.attempt = 0;
                                }
                                died.push((id.clone(), handle.clone(), why));
                            }
                        }
                        LiveState::Restarting { at, .. } if *at <= Instant::now() => {
                            due.push(id.clone());
                        }
                        _ => {}
                    }
                }
            }
            for (id, handle, why) in died {
                tracing::error!(ws = %id, %why, "workstation died");
                let ws = lock(&handle).take();
                if let Some(ws) = ws {
                    blocking(move || ws.stop()).await;
                }
                let _ = self.set_error(&id, Some(why.clone())).await;
                self.schedule_restart(&id, why);
            }
            for id in due {
                let store = self.store.clone();
                let rec = blocking(move || store.workstations())
                    .await
                    .ok()
                    .and_then(|all| all.into_iter().find(|r| r.id == id));
                match rec {
                    Some(rec) if rec.desired_running => {
                        if let Err(e) = self.start(&rec).await {
                            self.schedule_restart(&id, e.to_string());
                        }
                    }
                    _ => {
                        lock(&self.live).remove(&id);
                    }
                }
            }
        }
    }

    /// The workstation as shown to people.
    pub fn info(&self, rec: &WorkstationRecord) -> WorkstationInfo {
        let live = lock(&self.live);
        let l = live.get(&rec.id);
        let (state, reason) = match l.map(|l| &l.state) {
            None if rec.desired_running => ("starting".to_owned(), None),
            None => ("stopped".to_owned(), rec.last_error.clone()),
            Some(LiveState::Starting) => ("starting".to_owned(), None),
            Some(LiveState::Running { .. }) => ("running".to_owned(), None),
            Some(LiveState::Restarting { at, why }) => (
                "restarting".to_owned(),
                Some(format!(
                    "{why}; attempt {} in {} s",
                    l.map(|l| l.attempt).unwrap_or(0) + 1,
                    at.saturating_duration_since(Instant::now()).as_secs()
                )),
            ),
            Some(LiveState::Failed(why)) => ("failed".to_owned(), Some(why.clone())),
        };
        let running = match l.map(|l| &l.state) {
            Some(LiveState::Running { handle, .. }) => lock(handle).as_ref().map(|ws| {
                (
                    ws.monitors(),
                    ws.pids()
                        .into_iter()
                        .map(|(r, p)| (r.to_owned(), p))
                        .collect::<Vec<_>>(),
                    ws.detail(),
                )
            }),
            _ => None,
        };
        drop(live);
        let (monitors, pids, usage, detail) = match running {
            Some((mons, pids, backend_detail)) => {
                let marked = procs::marked(&self.marker(&rec.id));
                (
                    mons.iter()
                        .map(|m| MonitorInfo {
                            id: m.id,
                            x: m.x,
                            y: m.y,
                            width: m.width,
                            height: m.height,
                        })
                        .collect(),
                    pids,
                    Some((procs::rss_bytes(&marked), procs::cpu_time(&marked))),
                    format!("{backend_detail}, uid {}", self.uid_shown(rec)),
                )
            }
            None => (
                periphery_workstation::spec::layout(
                    &rec.spec.monitors,
                    self.settings.limits.framebuffer,
                )
                .unwrap_or_default()
                .iter()
                .map(|m| MonitorInfo {
                    id: m.id,
                    x: m.x,
                    y: m.y,
                    width: m.width,
                    height: m.height,
                })
                .collect(),
                Vec::new(),
                None,
                format!("uid {}", self.uid_shown(rec)),
            ),
        };
        WorkstationInfo {
            name: rec.name.clone(),
            user: rec.user.clone(),
            backend: rec.spec.backend.to_string(),
            state,
            reason,
            monitors,
            pids,
            memory_bytes: usage.map(|u| u.0),
            cpu_secs: usage.map(|u| u.1.as_secs_f64()),
            limits: self.limits_status(rec),
            detail,
        }
    }

    fn uid_shown(&self, rec: &WorkstationRecord) -> String {
        if self.as_root {
            rec.uid.to_string()
        } else {
            "of the supervisor (not root)".into()
        }
    }

    /// Runs `f` on the running workstation `rec`, on the blocking pool.
    async fn with_running<T: Send + 'static>(
        &self,
        rec: &WorkstationRecord,
        f: impl FnOnce(&mut dyn Workstation) -> Result<T, WorkstationOpError> + Send + 'static,
    ) -> Result<T, WorkstationOpError> {
        let not_running = || WorkstationOpError::NotRunning(rec.name.clone());
        let handle = self.handle(&rec.id).ok_or_else(not_running)?;
        let name = rec.name.clone();
        blocking(move || match lock(&handle).as_mut() {
            Some(ws) => f(ws.as_mut()),
            None => Err(WorkstationOpError::NotRunning(name)),
        })
        .await
    }

    /// The record of workstation `id`, if it exists.
    pub async fn record(&self, id: &str) -> Option<WorkstationRecord> {
        let store = self.store.clone();
        let id = id.to_owned();
        blocking(move || store.workstations())
            .await
            .ok()?
            .into_iter()
            .find(|r| r.id == id)
    }

    /// Runs `f` on running workstation `id`, right here (for quick calls: connections, lists).
    fn with_live<T>(
        &self,
        id: &str,
        f: impl FnOnce(&dyn Workstation) -> T,
    ) -> Result<T, WorkstationOpError> {
        let not_running = || WorkstationOpError::NotRunning(id.to_owned());
        let handle = self.handle(id).ok_or_else(not_running)?;
        let guard = lock(&handle);
        guard.as_deref().map(f).ok_or_else(not_running)
    }

    /// A new frame source of monitor `monitor` of running workstation `id`.
    pub fn frame_source(
        &self,
        id: &str,
        monitor: u32,
    ) -> Result<Box<dyn periphery_workstation::FrameSource>, WorkstationOpError> {
        self.with_live(id, |ws| ws.frame_source(monitor))?
            .map_err(|e| WorkstationOpError::Backend(chain(&e)))
    }

    /// A new input sink of running workstation `id`.
    pub fn input_sink(
        &self,
        id: &str,
    ) -> Result<Box<dyn periphery_workstation::InputSink>, WorkstationOpError> {
        self.with_live(id, |ws| ws.input_sink())?
            .map_err(|e| WorkstationOpError::Backend(chain(&e)))
    }

    /// Current monitors of running workstation `id`.
    pub fn monitors(&self, id: &str) -> Option<Vec<periphery_workstation::Monitor>> {
        self.with_live(id, |ws| ws.monitors()).ok()
    }

    /// Adds a monitor to a running workstation; returns it.
    pub async fn monitor_add(
        &self,
        rec: &WorkstationRecord,
        size: MonitorSize,
    ) -> Result<periphery_workstation::Monitor, WorkstationOpError> {
        let max = self.settings.limits.max_monitors;
        self.with_running(rec, move |ws| {
            ws.add_monitor(size, max)
                .map_err(|e| WorkstationOpError::Backend(chain(&e)))
        })
        .await
    }

    /// Removes a monitor from a running workstation.
    pub async fn monitor_remove(
        &self,
        rec: &WorkstationRecord,
        id: u32,
    ) -> Result<(), WorkstationOpError> {
        self.with_running(rec, move |ws| {
            ws.remove_monitor(id)
                .map_err(|e| WorkstationOpError::Backend(chain(&e)))
        })
        .await
    }

    /// A PNG of what monitor `id` shows.
    pub async fn screenshot(
        &self,
        rec: &WorkstationRecord,
        id: u32,
    ) -> Result<Vec<u8>, WorkstationOpError> {
        let be = |e: &dyn std::error::Error| WorkstationOpError::Backend(chain(e));
        let mut cap = self.frame_source(&rec.id, id)?;
        blocking(move || {
            cap.request_full();
            let frame = cap
                .next_frame(Duration::from_secs(5))
                .map_err(|e| be(&e))?
                .ok_or_else(|| WorkstationOpError::Backend("no frame within 5 s".into()))?;
            periphery_workstation::png::encode(&frame).map_err(|e| be(&e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
