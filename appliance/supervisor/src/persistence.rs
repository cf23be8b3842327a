//! Lazy persistence of workstation homes and render outputs to object storage, around
//! [`periphery_persist`]'s engine.
//!
//! The repository comes from the store (`periphery storage set`), or is the embedded
//! default: `<state>/repository` with a password the appliance makes, shown once by
//! `periphery storage recovery-key`. The trees are every workstation's home
//! (`home/<user>/<workstation>`) and every render job's output directory
//! (`render/<user>/<job>`); [`Persistence::reconcile`] keeps the engine's set in step with
//! them. A repository that cannot be opened at start (the store unreachable) is retried with
//! backoff; meanwhile status says why, and nothing local is touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use periphery_persist::engine::{Engine, Settings, TreeRecord, TreeStatus};
use periphery_persist::{OpenError, Repo, Snapshot, Target};
use periphery_protocol::files::{
    Persisted, RestoreRequest, SnapshotInfo, StorageChanged, StorageInfo, StorageSet, TreeInfo,
};
use periphery_protocol::{ApiError, ErrorCode};

use crate::store::persist::StorageRecord;
use crate::store::Store;

/// The appliance's persistence.
pub struct Persistence {
    store: Arc<Store>,
    settings: Settings,
    default_dir: PathBuf,
    engine: Mutex<Option<Arc<Engine>>>,
    /// Signalled when an engine starts.
    opened: std::sync::Condvar,
    /// Why there is no engine, while there is none.
    down: Mutex<Option<String>>,
    /// The trees there should be: name -> (owner, directory).
    wanted: Mutex<BTreeMap<String, (String, PathBuf)>>,
    /// Serializes storage changes.
    changing: Mutex<()>,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A repository password: 160 random bits as 8 groups of 4 letters and digits (Crockford's
/// base 32, no look-alike characters).
fn make_password() -> String {
    use rand::RngCore;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u64::from(b);
        n += 8;
        while n >= 5 {
            n -= 5;
            if out.len() % 5 == 4 {
                out.push('-');
            }
            out.push(char::from(ALPHABET[((bits >> n) & 31) as usize]));
        }
    }
    out
}

fn info(s: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        id: s.id.clone(),
        tree: s.tree.clone(),
        time: s.time,
        files: s.files,
        bytes: s.bytes,
        added: s.added,
    }
}

/// The owner named in a tree's name (`home/<user>/...`, `render/<user>/...`).
fn owner(tree: &str) -> &str {
    tree.split('/').nth(1).unwrap_or("")
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn open_error(e: &OpenError) -> ApiError {
    let code = match e {
        OpenError::WrongPassword(_) | OpenError::Refused { .. } => ErrorCode::WrongCredentials,
        OpenError::NoBucket { .. } => ErrorCode::NotFound,
        OpenError::Unreachable { .. } | OpenError::Other { .. } => ErrorCode::Unavailable,
    };
    err(code, e.to_string())
}

impl Persistence {
    /// Persistence for the appliance (no repository open yet: see [`Persistence::open`]).
    pub fn new(store: Arc<Store>, settings: Settings, state_dir: &Path) -> Arc<Self> {
        Arc::new(Persistence {
            store,
            settings,
            default_dir: state_dir.join("repository"),
            engine: Mutex::new(None),
            opened: std::sync::Condvar::new(),
            down: Mutex::new(Some("starting".into())),
            wanted: Mutex::new(BTreeMap::new()),
            changing: Mutex::new(()),
        })
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        lock(&self.engine).clone()
    }

    /// The engine; just after a start, waits up to 10 s for the repository to open.
    fn engine_or_err(&self) -> Result<Arc<Engine>, ApiError> {
        let guard = lock(&self.engine);
        let (guard, _) = self
            .opened
            .wait_timeout_while(guard, Duration::from_secs(10), |e| e.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| {
            err(
                ErrorCode::Unavailable,
                format!(
                    "the repository is not open: {}",
                    lock(&self.down).clone().unwrap_or_default()
                ),
            )
        })
    }

    /// The stored repository, or the embedded default (made and stored on first use).
    fn record(&self) -> Result<StorageRecord, ApiError> {
        if let Some(r) = self.store.storage().map_err(|e| internal(&e))? {
            return Ok(r);
        }
        let rec = StorageRecord {
            target: Target::Local(self.default_dir.clone()),
            password: make_password(),
            default: true,
            recovery_pending: true,
        };
        self.store
            .set_storage(&rec, None)
            .map_err(|e| internal(&e))?;
        Ok(rec)
    }

    /// Opens the repository and starts the engine, retrying with backoff while it cannot be
    /// opened. Blocks: run it on its own thread.
    pub fn open(self: &Arc<Self>) {
        let mut delay = Duration::from_secs(2);
        loop {
            let _g = lock(&self.changing);
            if self.engine().is_some() {
                return;
            }
            let opened = self.record().map_err(|e| e.message).and_then(|rec| {
                Repo::open_or_init(&rec.target, &rec.password)
                    .map(|(repo, made)| (repo, made, rec))
                    .map_err(|e| e.to_string())
            });
            match opened {
                Ok((repo, made, rec)) => {
                    tracing::info!(target = %rec.target, made, "persisting files");
                    self.start_engine(repo);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot open the repository");
                    *lock(&self.down) = Some(format!("{e} (retrying)"));
                }
            }
            drop(_g);
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(300));
        }
    }

    fn start_engine(&self, repo: Repo) {
        let trees = self.store.persist_trees().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the persisted trees; starting afresh");
            Vec::new()
        });
        let engine = Engine::start(
            repo,
            Box::new(crate::store::persist::StoreJournal(self.store.clone())),
            self.settings.clone(),
            trees,
        );
        let wanted = lock(&self.wanted).clone();
        for (tree, (_, dir)) in &wanted {
            engine.add(tree, dir);
        }
        *lock(&self.engine) = Some(Arc::new(engine));
        *lock(&self.down) = None;
        self.opened.notify_all();
    }

    /// Follows exactly these trees (name -> owner, directory): new ones whose directory
    /// exists are added, vanished ones dropped (their snapshots stay).
    pub fn reconcile(&self, trees: BTreeMap<String, (String, PathBuf)>) {
        let trees: BTreeMap<_, _> = trees.into_iter().filter(|(_, (_, d))| d.is_dir()).collect();
        let mut wanted = lock(&self.wanted);
        if let Some(engine) = self.engine() {
            for (tree, (_, dir)) in &trees {
                if wanted.get(tree).map(|w| &w.1) != Some(dir) {
                    engine.add(tree, dir);
                }
            }
            for (tree, _) in engine.trees() {
                if !trees.contains_key(&tree) {
                    engine.remove(&tree);
                }
            }
        }
        *wanted = trees;
    }

    /// `storage set`: opens (or makes) the repository first; only then switches to it. Every
    /// tree is then persisted to it afresh.
    pub fn set(&self, req: StorageSet, actor: &str) -> Result<StorageChanged, ApiError> {
        let keys = match (req.access_key, req.secret_key) {
            (Some(a), Some(s)) => Some((a, s)),
            _ => None,
        };
        let target = Target::parse(
            &req.location,
            req.endpoint.as_deref(),
            req.region.as_deref(),
            keys,
        )
        .map_err(|e| err(ErrorCode::InvalidArgument, e.to_string()))?;
        let _g = lock(&self.changing);
        let (password, ours) = match req.password {
            Some(p) => (p, false),
            None => (make_password(), true),
        };
        let (repo, made) = match Repo::open_or_init(&target, &password) {
            Ok(x) => x,
            Err(OpenError::WrongPassword(t)) if ours => {
                return Err(err(
                    ErrorCode::WrongCredentials,
                    format!("{t} already holds a repository: give its password (--password-file or --password-stdin) to persist to it"),
                ))
            }
            Err(e) => return Err(open_error(&e)),
        };
        if let Some(old) = lock(&self.engine).take() {
            // Its current job ends first: two engines never write at once.
            match Arc::try_unwrap(old) {
                Ok(e) => e.stop(),
                Err(shared) => drop(shared),
            }
        }
        let rec = StorageRecord {
            target: target.clone(),
            password: password.clone(),
            default: false,
            recovery_pending: false,
        };
        let audit = crate::store::AuditRecord::new(
            actor.to_owned(),
            "storage-set",
            format!("{target} (made: {made})"),
        );
        self.store
            .set_storage(&rec, Some(&audit))
            .map_err(|e| internal(&e))?;
        // Snapshots in the old repository are not in this one: start every tree over.
        for (tree, old) in self.store.persist_trees().map_err(|e| internal(&e))? {
            let fresh = TreeRecord {
                dir: old.dir,
                dirty: true,
                ..TreeRecord::default()
            };
            self.store
                .save_persist_tree(&tree, &fresh)
                .map_err(|e| internal(&e))?;
        }
        self.start_engine(repo);
        Ok(StorageChanged {
            target: target.to_string(),
            made,
            recovery_key: (ours && made).then_some(password),
        })
    }

    /// `storage recovery-key`: the password the appliance made, once.
    pub fn recovery_key(&self) -> Result<String, ApiError> {
        let _g = lock(&self.changing);
        let mut rec = self.record()?;
        if !rec.recovery_pending {
            return Err(err(
                ErrorCode::Forbidden,
                "the recovery key was shown already (it is shown once); `periphery storage set` with a new location makes a new one",
            ));
        }
        rec.recovery_pending = false;
        self.store
            .set_storage(&rec, None)
            .map_err(|e| internal(&e))?;
        Ok(rec.password)
    }

    /// `storage show`.
    pub fn show(&self) -> Result<StorageInfo, ApiError> {
        let rec = self.record()?;
        let engine = self.engine();
        let retention = engine.as_ref().and_then(|e| e.retention()).map(|r| {
            let what = match r.result {
                Ok(n) => format!("forgot {n} snapshot(s)"),
                Err(e) => format!("failed: {e}"),
            };
            (r.at, what)
        });
        let k = &self.settings.keep;
        Ok(StorageInfo {
            target: match lock(&self.down).as_ref() {
                Some(why) => format!("{} (not open: {why})", rec.target),
                None => rec.target.to_string(),
            },
            default: rec.default,
            recovery_key_pending: rec.recovery_pending,
            upload_limit: self.settings.upload_limit,
            keep: (k.last, k.daily, k.weekly),
            retention,
            uploaded: engine.map_or(0, |e| {
                e.repo()
                    .meter()
                    .uploaded
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
        })
    }

    /// `files status`: the trees of `user` (all without). Walks dirty trees: blocking.
    pub fn status(&self, user: Option<&str>) -> Vec<TreeInfo> {
        let mine = |t: &str| user.is_none_or(|u| owner(t) == u);
        let Some(engine) = self.engine() else {
            let why = lock(&self.down).clone();
            return self
                .store
                .persist_trees()
                .unwrap_or_default()
                .into_iter()
                .filter(|(t, _)| mine(t))
                .map(|(tree, r)| TreeInfo {
                    user: owner(&tree).to_owned(),
                    tree,
                    dir: r.dir.display().to_string(),
                    last: r.last.as_ref().map(info),
                    dirty: r.dirty,
                    pending_files: 0,
                    pending_bytes: 0,
                    running: None,
                    last_error: why.clone().or(r.last_error),
                    failures: 0,
                    due_in_secs: None,
                })
                .collect();
        };
        engine
            .status(mine)
            .into_iter()
            .map(|t: TreeStatus| TreeInfo {
                user: owner(&t.tree).to_owned(),
                dir: t.dir.display().to_string(),
                last: t.last.as_ref().map(info),
                dirty: t.dirty,
                pending_files: t.pending_files,
                pending_bytes: t.pending_bytes,
                running: t.running.map(|u| (u.read, u.total, u.uploaded)),
                last_error: t.last_error,
                failures: t.failures,
                due_in_secs: t.due_in.map(|d| d.as_secs()),
                tree: t.tree,
            })
            .collect()
    }

    /// The trees a `files persist` names: `tree`, else every tree of `user`, else all.
    pub fn trees_of(
        &self,
        user: Option<&str>,
        tree: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        Ok(self
            .engine_or_err()?
            .trees()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| tree.is_none_or(|x| x == t))
            .filter(|t| user.is_none_or(|u| owner(t) == u))
            .collect())
    }

    /// `files persist --now`: snapshots `trees`; with `wait`, blocks until each is persisted
    /// or failed.
    pub fn persist(&self, trees: Vec<String>, wait: bool) -> Result<Vec<Persisted>, ApiError> {
        let engine = self.engine_or_err()?;
        let rx = engine.persist_now(trees);
        if !wait {
            return Ok(Vec::new());
        }
        let done = rx.recv().map_err(|_| {
            err(
                ErrorCode::Unavailable,
                "persistence stopped before the snapshots ended (the storage changed?)",
            )
        })?;
        Ok(done
            .into_iter()
            .map(|(tree, r)| Persisted {
                tree,
                result: r.map(|s| info(&s)),
            })
            .collect())
    }

    /// `files snapshots`: of `tree`, or of every tree of `user`.
    pub fn snapshots(&self, user: &str, tree: Option<&str>) -> Result<Vec<SnapshotInfo>, ApiError> {
        let engine = self.engine_or_err()?;
        let all = engine
            .snapshots(tree)
            .map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
        Ok(all
            .iter()
            .filter(|s| owner(&s.tree) == user)
            .map(info)
            .collect())
    }

    /// `files restore`.
    pub fn restore(&self, req: &RestoreRequest) -> Result<SnapshotInfo, ApiError> {
        let engine = self.engine_or_err()?;
        let to = PathBuf::from(&req.to);
        if !to.is_absolute() {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("--to {} is not an absolute path", req.to),
            ));
        }
        if std::fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some()) {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!(
                    "{} is not empty: restore into an empty or new directory",
                    req.to
                ),
            ));
        }
        let snaps = self.snapshots(&req.user, req.tree.as_deref())?;
        let snap = match &req.snapshot {
            Some(id) => snaps
                .iter()
                .find(|s| s.id.starts_with(id.as_str()))
                .ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("{} has no snapshot {id}", req.user),
                    )
                })?,
            None => {
                let homes: std::collections::BTreeSet<&str> = snaps
                    .iter()
                    .filter(|s| req.tree.is_some() || s.tree.starts_with("home/"))
                    .map(|s| s.tree.as_str())
                    .collect();
                if homes.len() > 1 {
                    let list: Vec<&str> = homes.into_iter().collect();
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!(
                            "{} has several trees: name one with --tree ({})",
                            req.user,
                            list.join(", ")
                        ),
                    ));
                }
                snaps
                    .iter()
                    .rev()
                    .find(|s| homes.contains(s.tree.as_str()))
                    .ok_or_else(|| {
                        err(
                            ErrorCode::NotFound,
                            format!("{} has no snapshots yet", req.user),
                        )
                    })?
            }
        };
        engine
            .restore(&snap.id, req.path.as_deref(), &to)
            .map_err(|e| match e {
                periphery_persist::RestoreError::NoPath { .. } => {
                    err(ErrorCode::NotFound, e.to_string())
                }
                other => err(ErrorCode::Unavailable, other.to_string()),
            })?;
        Ok(snap.clone())
    }
}

fn internal(e: &dyn std::error::Error) -> ApiError {
    tracing::error!(error = %e, "persistence state failed");
    err(ErrorCode::Internal, format!("internal error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_readable() {
        let a = make_password();
        let b = make_password();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32 + 7, "{a}");
        assert!(a
            .split('-')
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_alphanumeric())));
        assert_eq!(owner("home/alice/desk"), "alice");
        assert_eq!(owner("render/bob/7"), "bob");
    }
}
