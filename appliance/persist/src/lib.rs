//! Persisting directory trees to object storage in the restic repository format, through
//! `rustic_core`: content-defined chunks, deduplication across trees and snapshots,
//! encryption, packs. Anyone with the password restores with the standard restic CLI.
//!
//! A [`Repo`] is one repository at a [`Target`] (a local directory, or an S3-compatible
//! bucket). Each tree (a workstation's home, a render job's output) is persisted as its own
//! snapshots, labelled with the tree's name and stored under `/<name>` inside the snapshot,
//! so `restic restore latest --tag ... --target DIR` puts it at `DIR/<name>`.
//!
//! Calls block (rustic_core is synchronous, and its S3 backend runs its own runtime): from
//! async code, call them with `spawn_blocking`. Notes on the rustic_core API this builds on,
//! and on its pitfalls, are in `RUSTIC.md`.

pub mod engine;
mod meter;
pub mod scan;
pub mod schedule;
mod target;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use meter::Meter;
use meter::{Bars, Metered};
pub use target::{S3Target, Target, TargetError};

use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, ForgetGroups, Grouped, KeepOptions,
    KeyOptions, LimitOption, LocalDestination, LsOptions, OpenStatus, PathList, PruneOptions,
    Repository, RepositoryBackends, RepositoryOptions, RestoreOptions, RusticError,
    SnapshotGroupCriterion, SnapshotOptions,
};

/// The chunker settings of the repositories made here: restic's content-defined (Rabin)
/// chunker, with chunks of 256 KiB to 2 MiB (512 KiB more than the minimum on average)
/// instead of restic's 512 KiB to 8 MiB. A small edit then uploads at most a chunk or two
/// of 2 MiB; restic reads such a repository as any other (it ignores the settings, which
/// only decide where new chunks are cut).
fn chunking() -> ConfigOptions {
    ConfigOptions::default()
        .set_chunk_size(bytesize::ByteSize::kib(512))
        .set_chunk_min_size(bytesize::ByteSize::kib(256))
        .set_chunk_max_size(bytesize::ByteSize::mib(2))
}

/// One line of a rustic error (its `Display` is a page).
fn line(e: &RusticError) -> String {
    e.display_log()
        .trim_start_matches("Error: ")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A rustic error with every error under it, for telling causes apart.
fn chain(e: &RusticError) -> String {
    let mut out = format!("{e:?}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        out.push_str(&format!(" / {s} {s:?}"));
        src = s.source();
    }
    out
}

/// A clear line for what rustic's restore panicked with (its text is a debug dump).
fn restore_failure(raw: &str) -> String {
    tracing::warn!(rustic = raw, "restore failed");
    let what = if raw.contains("MAC check failed") || raw.contains("C001") {
        "data in the repository failed verification (a corrupt pack)"
    } else if raw.contains("Partially reading") || raw.contains("Reading file") {
        "a pack could not be read (missing or truncated)"
    } else {
        "reading the repository failed"
    };
    // A pack named in it: data/xx/<64 hex digits>.
    let pack = raw.match_indices("data/").find_map(|(i, _)| {
        let id = raw.get(i + 8..i + 8 + 64)?;
        id.bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| id[..16].to_owned())
    });
    format!(
        "{what}{}; nothing unverified was written. A check that reads the data names every damaged pack",
        pack.map(|p| format!(": pack {p}")).unwrap_or_default()
    )
}

/// Why a repository could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The password does not open any of the repository's keys.
    #[error("wrong repository password for {0}")]
    WrongPassword(String),
    /// The service refused the credentials.
    #[error("the storage service refused the credentials for {target}: {why}")]
    Refused {
        /// The target.
        target: String,
        /// What the service said.
        why: String,
    },
    /// The bucket does not exist (it is never made here).
    #[error("there is no bucket for {target}: {why}")]
    NoBucket {
        /// The target.
        target: String,
        /// What the service said.
        why: String,
    },
    /// The target could not be reached or read.
    #[error("cannot reach the repository at {target}: {why}")]
    Unreachable {
        /// The target.
        target: String,
        /// What the backend said.
        why: String,
    },
    /// Something else went wrong.
    #[error("cannot open the repository at {target}: {why}")]
    Other {
        /// The target.
        target: String,
        /// What rustic said.
        why: String,
    },
}

/// Why a tree could not be persisted.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The tree's directory is missing or is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The tree's name is not a relative path of plain components.
    #[error("'{0}' is not a tree name (a relative path such as home/alice)")]
    BadName(String),
    /// The snapshot could not be made or stored.
    #[error("cannot persist {tree}: {why}")]
    Failed {
        /// The tree.
        tree: String,
        /// What rustic said.
        why: String,
    },
}

/// Why a snapshot could not be listed or restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No snapshot of that id (or no snapshot of the tree at all).
    #[error("no snapshot {0}")]
    NoSnapshot(String),
    /// The snapshot has no such path.
    #[error("snapshot {snapshot} has no {path}")]
    NoPath {
        /// The snapshot.
        snapshot: String,
        /// The path asked for.
        path: String,
    },
    /// Reading the repository failed (a corrupt or missing pack, the store unreachable).
    #[error("cannot restore: {0}")]
    Failed(String),
}

/// How many snapshots of each tree retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Keep {
    /// The last N.
    pub last: u32,
    /// The last of each of the last D days.
    pub daily: u32,
    /// The last of each of the last W weeks.
    pub weekly: u32,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            last: 10,
            daily: 7,
            weekly: 8,
        }
    }
}

/// What retention did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Snapshots forgotten.
    pub forgotten: usize,
    /// Bytes of blobs removed, and of packs no index named (left by an interrupted backup).
    pub freed: u64,
}

/// Retention failed (the repository is unchanged or still valid: rustic deletes packs only
/// after writing the index that no longer names them).
#[derive(Debug, thiserror::Error)]
#[error("retention failed: {0}")]
pub struct RetentionError(pub String);

/// The repository failed a check.
#[derive(Debug, thiserror::Error)]
#[error("the repository check found errors: {}", .0.join("; "))]
pub struct CheckFailed(pub Vec<String>);

/// A snapshot of a tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Its id (64 hex digits; restic accepts any unique prefix).
    pub id: String,
    /// The tree it is of.
    pub tree: String,
    /// When it was taken, Unix seconds.
    pub time: i64,
    /// Files in it.
    pub files: u64,
    /// Bytes in it.
    pub bytes: u64,
    /// Bytes it added to the repository, after deduplication, compression and encryption.
    pub added: u64,
}

impl Snapshot {
    fn from_file(s: &SnapshotFile) -> Self {
        let summary = s.summary.as_ref();
        Snapshot {
            id: s.id.to_hex().to_string(),
            tree: s.label.clone(),
            time: s.time.timestamp().as_second(),
            files: summary.map_or(0, |x| x.total_files_processed),
            bytes: summary.map_or(0, |x| x.total_bytes_processed),
            added: summary.map_or(0, |x| x.data_added_packed),
        }
    }
}

/// Whether `name` names a tree: a relative path of plain components.
pub fn valid_tree_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\0', ',']))
}

/// An open repository.
pub struct Repo {
    /// The target's backends, behind the [`Meter`].
    backends: RepositoryBackends,
    meter: Arc<Meter>,
    bars: Bars,
    /// Its master key, once the password opened it (opening again costs no key derivation).
    creds: Credentials,
    target: String,
}

impl std::fmt::Debug for Repo {
    /// Where it is; never its key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Repo {
    /// Opens the repository at `target` with `password`, making it first when there is none
    /// there; says whether it was made.
    pub fn open_or_init(target: &Target, password: &str) -> Result<(Repo, bool), OpenError> {
        let name = target.to_string();
        let unreachable = |e: Box<RusticError>| {
            let chain = chain(&e);
            let (target, why) = (name.clone(), line(&e));
            if chain.contains("NoSuchBucket") {
                OpenError::NoBucket { target, why }
            } else if [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "PermissionDenied",
            ]
            .iter()
            .any(|c| chain.contains(c))
            {
                let why = "access denied (HTTP 403): check the access key and the secret".into();
                OpenError::Refused { target, why }
            } else {
                OpenError::Unreachable { target, why }
            }
        };
        let raw = target.backends().map_err(unreachable)?;
        let meter = Arc::new(Meter::default());
        let metered = Metered {
            inner: raw.repository(),
            meter: meter.clone(),
        };
        let backends = RepositoryBackends::new(Arc::new(metered), raw.repo_hot());
        let repo = Repository::new(&RepositoryOptions::default().no_cache(true), &backends)
            .map_err(unreachable)?;
        let creds = Credentials::password(password);
        let made = repo.config_id().map_err(unreachable)?.is_none();
        if made {
            // A missing config may be a missing bucket: a stat there is only "not found",
            // and some services (s3s-fs) would even make the bucket on the first write.
            if let Target::S3(s) = target {
                s.bucket_exists().map_err(|why| OpenError::NoBucket {
                    target: name.clone(),
                    why,
                })?;
            }
        }
        let repo = if made {
            repo.init(&creds, &KeyOptions::default(), &chunking())
        } else {
            repo.open(&creds)
        }
        .map_err(|e| {
            if e.is_incorrect_password() {
                OpenError::WrongPassword(name.clone())
            } else {
                OpenError::Other {
                    target: name.clone(),
                    why: line(&e),
                }
            }
        })?;
        if made {
            if let Target::Local(dir) = target {
                // restic expects it; rustic does not make it.
                let _ = std::fs::create_dir_all(dir.join("locks"));
            }
        }
        let repo = Repo {
            backends,
            meter,
            bars: Bars::default(),
            creds: Credentials::Masterkey(repo.key()),
            target: name,
        };
        Ok((repo, made))
    }

    /// The repository, opened with the master key: each operation takes its own (an indexed
    /// repository is made from an open one and consumes it).
    fn open(&self) -> Result<Repository<OpenStatus>, Box<RusticError>> {
        Repository::new_with_progress(
            &RepositoryOptions::default().no_cache(true),
            &self.backends,
            self.bars.clone(),
        )?
        .open(&self.creds)
    }

    /// The upload figures: bytes written so far, and the bandwidth limit to set.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Limits uploads to `bytes_per_sec` (0: no limit).
    pub fn set_upload_limit(&self, bytes_per_sec: u64) {
        self.meter.limit.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Source bytes the running backup has read, of how many (both 0 when none runs).
    pub fn backup_progress(&self) -> (u64, u64) {
        let c = &self.bars.backup;
        (
            c.done.load(Ordering::Relaxed),
            c.total.load(Ordering::Relaxed),
        )
    }

    /// Where it is.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Takes a snapshot of directory `dir` as tree `tree` (unchanged files are not read
    /// again: the tree's last snapshot is the parent).
    pub fn persist(&self, tree: &str, dir: &Path) -> Result<Snapshot, PersistError> {
        if !valid_tree_name(tree) {
            return Err(PersistError::BadName(tree.to_owned()));
        }
        if !dir.is_dir() {
            return Err(PersistError::NotADirectory(dir.to_owned()));
        }
        let failed = |e: Box<RusticError>| PersistError::Failed {
            tree: tree.to_owned(),
            why: line(&e),
        };
        let source = PathList::from_iter([dir.to_owned()]);
        let snap = SnapshotOptions::default()
            .label(tree.to_owned())
            .host("periphery".to_owned())
            .command("periphery persist".to_owned())
            .to_snapshot()
            .map_err(failed)?;
        let opts = BackupOptions::default().as_path(PathBuf::from(format!("/{tree}")));
        let repo = self
            .open()
            .and_then(|r| r.to_indexed_ids())
            .map_err(failed)?;
        let c = &self.bars.backup;
        c.done.store(0, Ordering::Relaxed);
        c.total.store(0, Ordering::Relaxed);
        let saved = repo.backup(&opts, &source, snap);
        c.done.store(0, Ordering::Relaxed);
        c.total.store(0, Ordering::Relaxed);
        let saved = saved.map_err(failed)?;
        // It counts only once its snapshot file reads back from the store.
        let id = saved.id.to_hex().to_string();
        let read = self
            .open()
            .and_then(|r| r.get_snapshots(&[id.as_str()]))
            .map_err(failed)?;
        match read.first() {
            Some(s) if s.id == saved.id && s.tree == saved.tree => Ok(Snapshot::from_file(s)),
            _ => Err(PersistError::Failed {
                tree: tree.to_owned(),
                why: format!("snapshot {id} did not read back"),
            }),
        }
    }

    /// Applies `keep` to each tree's snapshots: forgets the others, then prunes the data only
    /// they used. Must not run while a backup writes to the repository.
    pub fn retention(&self, keep: &Keep) -> Result<Retained, RetentionError> {
        let failed = |e: Box<RusticError>| RetentionError(line(&e));
        let repo = self.open().map_err(failed)?;
        let all = repo.get_all_snapshots().map_err(failed)?;
        let grouped = Grouped::from_items(all, SnapshotGroupCriterion::new().label(true));
        let opts = KeepOptions::default()
            .keep_last(keep.last as i32)
            .keep_daily(keep.daily as i32)
            .keep_weekly(keep.weekly as i32);
        let now = rustic_core::jiff::Zoned::now();
        let groups = ForgetGroups::from_grouped_snapshots_with_retention(grouped, &opts, &now)
            .map_err(failed)?;
        let ids = groups.into_forget_ids();
        if !ids.is_empty() {
            repo.delete_snapshots(&ids).map_err(failed)?;
        }
        let popts = PruneOptions::default()
            .instant_delete(true)
            .keep_delete(rustic_core::jiff::Span::new())
            .max_unused(LimitOption::Percentage(0));
        let plan = repo.prune_plan(&popts).map_err(failed)?;
        let sizes = plan.stats.size_sum();
        let freed = sizes.remove + sizes.repackrm + plan.stats.size_unref;
        repo.prune(&popts, plan).map_err(failed)?;
        Ok(Retained {
            forgotten: ids.len(),
            freed,
        })
    }

    /// The snapshots of `tree` (of every tree without one), oldest first.
    pub fn snapshots(&self, tree: Option<&str>) -> Result<Vec<Snapshot>, RestoreError> {
        let mut all = self
            .open()
            .and_then(|r| r.get_matching_snapshots(|s| tree.is_none_or(|t| s.label == t)))
            .map_err(|e| RestoreError::Failed(line(&e)))?;
        all.sort();
        Ok(all.iter().map(Snapshot::from_file).collect())
    }

    /// Restores snapshot `id` (a unique prefix will do) into `dest`, or only `sub`, a path
    /// inside its tree; returns the snapshot. Contents are verified as they are read: a
    /// corrupt pack is an error, never wrong bytes.
    pub fn restore(
        &self,
        id: &str,
        sub: Option<&str>,
        dest: &Path,
    ) -> Result<Snapshot, RestoreError> {
        let failed = |e: Box<RusticError>| RestoreError::Failed(line(&e));
        let repo = self.open().and_then(|r| r.to_indexed()).map_err(failed)?;
        let snap = repo
            .get_snapshot_from_str(id, |_| true)
            .map_err(|_| RestoreError::NoSnapshot(id.to_owned()))?;
        let path = match sub {
            Some(s) => format!("{}/{}", snap.label, s.trim_matches('/')),
            None => snap.label.clone(),
        };
        let node = repo
            .node_from_snapshot_and_path(&snap, &path)
            .map_err(|_| RestoreError::NoPath {
                snapshot: id.to_owned(),
                path: sub.unwrap_or("").to_owned(),
            })?;
        let ls = repo.ls(&node, &LsOptions::default()).map_err(failed)?;
        let dest_str = dest
            .to_str()
            .ok_or_else(|| RestoreError::Failed(format!("{} is not UTF-8", dest.display())))?;
        let dest = LocalDestination::new(dest_str, true, !node.is_dir()).map_err(failed)?;
        // Owners by number as root (a restore elsewhere keeps them); else the caller's.
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let opts = RestoreOptions::default()
            .numeric_id(true)
            .no_ownership(!root);
        let plan = repo
            .prepare_restore(&opts, ls.clone(), &dest, false)
            .map_err(failed)?;
        // rustic 0.13 panics on a pack it cannot read or verify (rustic#1914): that is an
        // error here, with what it said.
        let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            repo.restore(plan, &opts, ls, &dest)
        }));
        match restored {
            Ok(r) => r.map_err(failed)?,
            Err(panic) => {
                let raw = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                return Err(RestoreError::Failed(restore_failure(&raw)));
            }
        }
        Ok(Snapshot::from_file(&snap))
    }

    /// Checks the repository's structure, and with `read_data` every pack's contents.
    pub fn check(&self, read_data: bool) -> Result<(), CheckFailed> {
        let results = self
            .open()
            .and_then(|r| r.check(CheckOptions::default().read_data(read_data)))
            .map_err(|e| CheckFailed(vec![line(&e)]))?;
        let errors: Vec<String> = results
            .0
            .iter()
            .filter(|(level, _)| format!("{level:?}") == "Error")
            .map(|(_, e)| e.to_string())
            .collect();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(CheckFailed(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_names_are_plain_relative_paths() {
        for ok in ["home/alice", "render/3", "a"] {
            assert!(valid_tree_name(ok), "{ok}");
        }
        for bad in ["", "/home", "a//b", "../x", "a/./b", "a,b"] {
            assert!(!valid_tree_name(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let t = Target::S3(S3Target {
            endpoint: "http://127.0.0.1:1".into(),
            region: "r".into(),
            bucket: "b".into(),
            prefix: "p".into(),
            access_key: "AK".into(),
            secret_key: "very-secret".into(),
        });
        assert!(!format!("{t:?} {t}").contains("very-secret"));
    }
}
