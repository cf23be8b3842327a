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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustic_backend::BackendOptions;
use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, CheckOptions, ConfigOptions, Credentials, KeyOptions, LocalDestination,
    LsOptions, OpenStatus, PathList, Repository, RepositoryBackends, RepositoryOptions,
    RestoreOptions, RusticError, SnapshotOptions,
};

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A directory on a local (or mounted) file system.
    Local(PathBuf),
    /// A bucket on an S3-compatible service, path-style.
    S3(S3Target),
}

/// An S3-compatible bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Target {
    /// The service's URL (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`).
    pub endpoint: String,
    /// The region (any value for services that ignore it).
    pub region: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// The key prefix inside the bucket.
    pub prefix: String,
    /// The access key id.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
}

impl std::fmt::Debug for S3Target {
    /// Everything but the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local(p) => write!(f, "{}", p.display()),
            Target::S3(s) => write!(
                f,
                "s3://{}/{} at {}",
                s.bucket,
                s.prefix.trim_matches('/'),
                s.endpoint
            ),
        }
    }
}

impl Target {
    fn backends(&self) -> Result<RepositoryBackends, Box<RusticError>> {
        match self {
            Target::Local(p) => BackendOptions::default()
                .repository(format!("local:{}", p.display()))
                .to_backends(),
            Target::S3(s) => {
                let options: BTreeMap<String, String> = [
                    ("bucket", s.bucket.as_str()),
                    ("root", s.prefix.as_str()),
                    ("endpoint", s.endpoint.as_str()),
                    ("region", s.region.as_str()),
                    ("access_key_id", s.access_key.as_str()),
                    ("secret_access_key", s.secret_key.as_str()),
                    // Only what is given here: no AWS_* variables, no instance metadata.
                    ("disable_config_load", "true"),
                    ("disable_ec2_metadata", "true"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
                BackendOptions::default()
                    .repository("opendal:s3")
                    .options(options)
                    .to_backends()
            }
        }
    }
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

/// Why a repository could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The password does not open any of the repository's keys.
    #[error("wrong repository password for {0}")]
    WrongPassword(String),
    /// The target could not be reached or read (missing bucket, refused credentials, ...).
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

/// The repository failed a check.
#[derive(Debug, thiserror::Error)]
#[error("the repository check found errors: {}", .0.join("; "))]
pub struct CheckFailed(pub Vec<String>);

/// A snapshot of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug)]
pub struct Repo {
    backends: RepositoryBackends,
    /// Its master key, once the password opened it (opening again costs no key derivation).
    creds: Credentials,
    target: String,
}

impl Repo {
    /// Opens the repository at `target` with `password`, making it first when there is none
    /// there; says whether it was made.
    pub fn open_or_init(target: &Target, password: &str) -> Result<(Repo, bool), OpenError> {
        let name = target.to_string();
        let unreachable = |e: Box<RusticError>| OpenError::Unreachable {
            target: name.clone(),
            why: line(&e),
        };
        let backends = target.backends().map_err(unreachable)?;
        let repo = Repository::new(&RepositoryOptions::default().no_cache(true), &backends)
            .map_err(unreachable)?;
        let creds = Credentials::password(password);
        let made = repo.config_id().map_err(unreachable)?.is_none();
        let repo = if made {
            repo.init(&creds, &KeyOptions::default(), &ConfigOptions::default())
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
            creds: Credentials::Masterkey(repo.key()),
            target: name,
        };
        Ok((repo, made))
    }

    /// The repository, opened with the master key: each operation takes its own (an indexed
    /// repository is made from an open one and consumes it).
    fn open(&self) -> Result<Repository<OpenStatus>, Box<RusticError>> {
        Repository::new(&RepositoryOptions::default().no_cache(true), &self.backends)?
            .open(&self.creds)
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
        let saved = repo.backup(&opts, &source, snap).map_err(failed)?;
        Ok(Snapshot::from_file(&saved))
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
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "reading the repository failed".into());
                return Err(RestoreError::Failed(why));
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
