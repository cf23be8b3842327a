//! The persistence engine: one thread that keeps every followed tree persisted.
//!
//! It learns of changes from the [`Watcher`] (inotify) and from a periodic [`scan`], asks
//! the [`Schedule`] what is due, and runs one job at a time against the [`Repo`]: a snapshot
//! of one tree, or retention. A failed upload leaves the tree dirty and is retried with
//! backoff; nothing local is touched. Each tree's state is written through a [`Journal`]
//! (the appliance's database) whenever it changes in a way a restart must know: dirty or
//! clean, its last snapshot, its last error. Restores and listings run on the caller's
//! thread, alongside backups, but never alongside retention.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::scan::scan;
use crate::schedule::{Job, Policy, Schedule};
use crate::watch::{Seen, Watcher};
use crate::{Keep, Repo, RestoreError, Snapshot};

/// What is kept of a tree across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRecord {
    /// Its directory.
    pub dir: PathBuf,
    /// Changes not yet in a snapshot (or not known to be).
    pub dirty: bool,
    /// The scan fingerprint taken as its last snapshot began.
    pub fingerprint: Option<u64>,
    /// Its last snapshot, once read back from the store.
    pub last: Option<Snapshot>,
    /// The last attempt's error, until an attempt succeeds.
    pub last_error: Option<String>,
}

/// Where the engine writes tree records (the appliance's database). Errors are logged.
pub trait Journal: Send + Sync + 'static {
    /// Writes `tree`'s record.
    fn save(&self, tree: &str, rec: &TreeRecord) -> Result<(), String>;
    /// Drops `tree`'s record.
    fn remove(&self, tree: &str) -> Result<(), String>;
}

/// The engine's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// When to persist.
    pub policy: Policy,
    /// What retention keeps.
    pub keep: Keep,
    /// How often every tree is scanned for changes inotify missed.
    pub scan_every: Duration,
    /// Upload bandwidth, bytes per second (0: no limit).
    pub upload_limit: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy::default(),
            keep: Keep::default(),
            scan_every: Duration::from_secs(600),
            upload_limit: 0,
        }
    }
}

/// A snapshot being taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    /// Source bytes read so far.
    pub read: u64,
    /// Source bytes in all (0 until rustic has scanned the tree).
    pub total: u64,
    /// Bytes uploaded so far, after deduplication, compression and encryption.
    pub uploaded: u64,
}

/// A tree as `files status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeStatus {
    /// Its name.
    pub tree: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its last snapshot.
    pub last: Option<Snapshot>,
    /// Changes not yet in a snapshot.
    pub dirty: bool,
    /// Files changed since the last snapshot began (counted when dirty).
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// The snapshot being taken now.
    pub running: Option<Upload>,
    /// The last error, until an attempt succeeds.
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// When it is next due, from now.
    pub due_in: Option<Duration>,
}

/// The outcome of retention's last run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRun {
    /// When it ended, Unix seconds.
    pub at: i64,
    /// Snapshots forgotten, or the error.
    pub result: Result<usize, String>,
}

/// What one forced snapshot came to.
pub type Forced = Vec<(String, Result<Snapshot, String>)>;

enum Cmd {
    Seen(Seen),
    Add(String, PathBuf),
    Remove(String),
    Force(Vec<String>, mpsc::Sender<Forced>),
    Stop,
}

struct Waiter {
    /// Only jobs started after this count.
    after: u64,
    left: BTreeSet<String>,
    done: Forced,
    reply: mpsc::Sender<Forced>,
}

struct State {
    sched: Schedule,
    trees: BTreeMap<String, TreeRecord>,
    /// The tree being persisted, and the upload counter as it began.
    running: Option<(String, u64)>,
    retention: Option<RetentionRun>,
}

struct Shared {
    repo: Repo,
    /// Held for writing by retention, for reading by restores.
    prune_lock: RwLock<()>,
    state: Mutex<State>,
    journal: Box<dyn Journal>,
    settings: Settings,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, tree: &str, rec: &TreeRecord) {
        if let Err(e) = self.journal.save(tree, rec) {
            tracing::error!(tree, error = %e, "cannot record the persistence state");
        }
    }
}

/// The running engine. Dropping it stops the thread after its current job.
pub struct Engine {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    watcher: Option<Watcher>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("target", &self.shared.repo.target())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Engine {
    /// Starts the engine on `repo` with the trees a previous run recorded: dirty ones are
    /// persisted when due, and every tree is scanned at once for changes made while nothing
    /// watched.
    pub fn start(
        repo: Repo,
        journal: Box<dyn Journal>,
        settings: Settings,
        trees: Vec<(String, TreeRecord)>,
    ) -> Engine {
        let now = Instant::now();
        repo.set_upload_limit(settings.upload_limit);
        let mut sched = Schedule::new(settings.policy.clone(), now);
        for (name, rec) in &trees {
            sched.add(name);
            if rec.dirty || rec.last.is_none() {
                sched.changed(name, now);
            }
        }
        let shared = Arc::new(Shared {
            repo,
            prune_lock: RwLock::new(()),
            state: Mutex::new(State {
                sched,
                trees: trees.into_iter().collect(),
                running: None,
                retention: None,
            }),
            journal,
            settings,
        });
        let (tx, rx) = mpsc::channel();
        let seen_tx = Mutex::new(tx.clone());
        let watcher = Watcher::start(move |s| {
            let _ = seen_tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Cmd::Seen(s));
        })
        .map_err(|e| tracing::warn!(error = %e, "no inotify: only the periodic scan sees changes"))
        .ok();
        if let Some(w) = &watcher {
            for (name, rec) in shared.state().trees.iter() {
                w.add(name, &rec.dir);
            }
        }
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("persist".into())
            .spawn(move || run(&s, &rx))
            .expect("spawning the persistence thread");
        Engine {
            shared,
            tx,
            thread: Some(thread),
            watcher,
        }
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.shared.repo
    }

    /// Starts following `tree` at `dir` (persisted soon if it has never been).
    pub fn add(&self, tree: &str, dir: &Path) {
        if let Some(w) = &self.watcher {
            if !w.add(tree, dir) {
                tracing::warn!(
                    tree,
                    "not every directory could be watched: the scan covers it"
                );
            }
        }
        let _ = self.tx.send(Cmd::Add(tree.to_owned(), dir.to_owned()));
    }

    /// Stops following `tree` (its snapshots stay in the repository).
    pub fn remove(&self, tree: &str) {
        if let Some(w) = &self.watcher {
            w.remove(tree);
        }
        let _ = self.tx.send(Cmd::Remove(tree.to_owned()));
    }

    /// Takes a snapshot of each of `trees` as soon as possible; the receiver gets every
    /// outcome once all are known.
    pub fn persist_now(&self, trees: Vec<String>) -> mpsc::Receiver<Forced> {
        let (reply, rx) = mpsc::channel();
        let _ = self.tx.send(Cmd::Force(trees, reply));
        rx
    }

    /// The followed trees, by name.
    pub fn trees(&self) -> Vec<(String, PathBuf)> {
        let st = self.shared.state();
        st.trees
            .iter()
            .map(|(n, r)| (n.clone(), r.dir.clone()))
            .collect()
    }

    /// Every followed tree for which `filter` holds, with what is pending (this walks the
    /// dirty trees: call it off the async runtime).
    pub fn status(&self, filter: impl Fn(&str) -> bool) -> Vec<TreeStatus> {
        let now = Instant::now();
        let mut out: Vec<TreeStatus> =
            {
                let st = self.shared.state();
                let uploaded = self.shared.repo.meter().uploaded.load(Ordering::Relaxed);
                let (read, total) = self.shared.repo.backup_progress();
                st.trees
                    .iter()
                    .filter(|(n, _)| filter(n))
                    .map(|(n, r)| TreeStatus {
                        tree: n.clone(),
                        dir: r.dir.clone(),
                        last: r.last.clone(),
                        dirty: st.sched.is_dirty(n),
                        pending_files: 0,
                        pending_bytes: 0,
                        running: st.running.as_ref().filter(|(t, _)| t == n).map(|(_, u0)| {
                            Upload {
                                read,
                                total,
                                uploaded: uploaded.saturating_sub(*u0),
                            }
                        }),
                        last_error: r.last_error.clone(),
                        failures: st.sched.failures(n),
                        due_in: st
                            .sched
                            .due_at(n)
                            .map(|at| at.saturating_duration_since(now)),
                    })
                    .collect()
            };
        for t in out.iter_mut().filter(|t| t.dirty) {
            let since = t.last.as_ref().map_or(i64::MIN, |s| s.time);
            if let Ok(s) = scan(&t.dir, since) {
                t.pending_files = s.changed_files;
                t.pending_bytes = s.changed_bytes;
            }
        }
        out
    }

    /// Retention's last run.
    pub fn retention(&self) -> Option<RetentionRun> {
        self.shared.state().retention.clone()
    }

    /// Lists snapshots (of `tree`, or all), oldest first.
    pub fn snapshots(&self, tree: Option<&str>) -> Result<Vec<Snapshot>, RestoreError> {
        let _g = self
            .shared
            .prune_lock
            .read()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.repo.snapshots(tree)
    }

    /// Restores a snapshot (see [`Repo::restore`]); waits while retention runs.
    pub fn restore(
        &self,
        id: &str,
        sub: Option<&str>,
        dest: &Path,
    ) -> Result<Snapshot, RestoreError> {
        let _g = self
            .shared
            .prune_lock
            .read()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.repo.restore(id, sub, dest)
    }

    /// Stops the thread after its current job and waits for it (so a new engine on the same
    /// repository never overlaps this one).
    pub fn stop(mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
    }
}

fn run(sh: &Shared, rx: &mpsc::Receiver<Cmd>) {
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut started: u64 = 0;
    let mut next_scan = Instant::now();
    loop {
        // Everything that arrived first: a forced tree goes before a merely due one.
        loop {
            match rx.try_recv() {
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                Ok(cmd) => handle(sh, cmd, &mut waiters, started),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let now = Instant::now();
        if now >= next_scan {
            scan_all(sh, now);
            next_scan = now + sh.settings.scan_every;
            continue;
        }
        let job = sh.state().sched.next(now);
        if let Some(job) = job {
            started += 1;
            run_job(sh, &job, started, &mut waiters);
            continue;
        }
        let wake = sh
            .state()
            .sched
            .wake_at()
            .map_or(next_scan, |w| w.min(next_scan));
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(cmd) => handle(sh, cmd, &mut waiters, started),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

fn handle(sh: &Shared, cmd: Cmd, waiters: &mut Vec<Waiter>, started: u64) {
    let now = Instant::now();
    let mut st = sh.state();
    match cmd {
        Cmd::Seen(Seen::Changed(tree)) => mark_changed(sh, &mut st, &tree, now),
        Cmd::Seen(Seen::Overflow) => {
            tracing::warn!("inotify lost events: every tree counts as changed");
            let names: Vec<String> = st.trees.keys().cloned().collect();
            for n in names {
                mark_changed(sh, &mut st, &n, now);
            }
        }
        Cmd::Add(tree, dir) => {
            let rec = st.trees.entry(tree.clone()).or_default();
            let fresh = rec.dir != dir || rec.last.is_none();
            rec.dir = dir;
            st.sched.add(&tree);
            if fresh {
                mark_changed(sh, &mut st, &tree, now);
            }
        }
        Cmd::Remove(tree) => {
            st.sched.remove(&tree);
            st.trees.remove(&tree);
            if let Err(e) = sh.journal.remove(&tree) {
                tracing::error!(tree, error = %e, "cannot drop the persistence state");
            }
            let gone = Err(format!("{tree} is no longer persisted"));
            resolve(waiters, &tree, u64::MAX, &gone);
        }
        Cmd::Force(trees, reply) => {
            let mut w = Waiter {
                after: started,
                left: BTreeSet::new(),
                done: Vec::new(),
                reply,
            };
            for t in trees {
                if st.trees.contains_key(&t) {
                    st.sched.force(&t, now);
                    w.left.insert(t);
                } else {
                    w.done
                        .push((t.clone(), Err(format!("no tree {t} is persisted"))));
                }
            }
            if w.left.is_empty() {
                let _ = w.reply.send(w.done);
            } else {
                waiters.push(w);
            }
        }
        Cmd::Stop => {}
    }
}

fn mark_changed(sh: &Shared, st: &mut State, tree: &str, now: Instant) {
    if !st.trees.contains_key(tree) {
        return;
    }
    st.sched.changed(tree, now);
    if let Some(rec) = st.trees.get_mut(tree) {
        if !rec.dirty {
            rec.dirty = true;
            sh.save(tree, rec);
        }
    }
}

fn scan_all(sh: &Shared, now: Instant) {
    let trees: Vec<(String, PathBuf, Option<u64>)> = sh
        .state()
        .trees
        .iter()
        .map(|(n, r)| (n.clone(), r.dir.clone(), r.fingerprint))
        .collect();
    for (name, dir, before) in trees {
        let now_fp = scan(&dir, i64::MAX).ok().map(|s| s.fingerprint);
        if now_fp != before {
            let mut st = sh.state();
            tracing::debug!(tree = name, "the scan found changes");
            mark_changed(sh, &mut st, &name, now);
        }
    }
}

fn run_job(sh: &Shared, job: &Job, seq: u64, waiters: &mut Vec<Waiter>) {
    match job {
        Job::Retention => {
            let r = {
                let _g = sh.prune_lock.write().unwrap_or_else(|e| e.into_inner());
                sh.repo.retention(&sh.settings.keep)
            };
            match &r {
                Ok(done) => tracing::info!(
                    forgotten = done.forgotten,
                    freed = done.freed,
                    "retention applied"
                ),
                Err(e) => tracing::warn!(error = %e, "retention failed; it runs again next round"),
            }
            let mut st = sh.state();
            st.sched.finished(job, r.is_ok(), Instant::now());
            st.retention = Some(RetentionRun {
                at: unix_now(),
                result: r.map(|d| d.forgotten).map_err(|e| e.to_string()),
            });
        }
        Job::Persist(tree) => {
            let dir = {
                let mut st = sh.state();
                let Some(dir) = st.trees.get(tree).map(|r| r.dir.clone()) else {
                    st.sched.finished(job, true, Instant::now());
                    return;
                };
                let u0 = sh.repo.meter().uploaded.load(Ordering::Relaxed);
                st.running = Some((tree.clone(), u0));
                dir
            };
            let fingerprint = scan(&dir, i64::MAX).ok().map(|s| s.fingerprint);
            let t0 = Instant::now();
            let r = sh.repo.persist(tree, &dir).map_err(|e| e.to_string());
            let mut st = sh.state();
            st.running = None;
            st.sched.finished(job, r.is_ok(), Instant::now());
            let dirty = st.sched.is_dirty(tree);
            let failures = st.sched.failures(tree);
            if let Some(rec) = st.trees.get_mut(tree) {
                match &r {
                    Ok(snap) => {
                        tracing::info!(
                            tree,
                            snapshot = &snap.id[..8],
                            files = snap.files,
                            added = snap.added,
                            secs = t0.elapsed().as_secs_f64(),
                            "persisted"
                        );
                        rec.last = Some(snap.clone());
                        rec.last_error = None;
                        rec.fingerprint = fingerprint;
                    }
                    Err(e) => {
                        tracing::warn!(tree, error = %e, failures, "persisting failed; it is retried");
                        rec.last_error = Some(e.clone());
                    }
                }
                rec.dirty = dirty;
                sh.save(tree, rec);
            }
            drop(st);
            resolve(waiters, tree, seq, &r);
        }
    }
}

/// Hands the outcome of `tree`'s job number `seq` to the waiters it counts for.
fn resolve(waiters: &mut Vec<Waiter>, tree: &str, seq: u64, r: &Result<Snapshot, String>) {
    waiters.retain_mut(|w| {
        if w.after < seq && w.left.remove(tree) {
            w.done.push((tree.to_owned(), r.clone()));
        }
        if w.left.is_empty() {
            let _ = w.reply.send(std::mem::take(&mut w.done));
            return false;
        }
        true
    });
}
