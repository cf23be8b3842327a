//! The persistence part of the control API: where the repository is (`storage`), and each
//! persisted tree's state, snapshots and restores (`files`).

use serde::{Deserialize, Serialize};

/// Where to persist to, as `periphery storage set` sends it. The secret and the password
/// travel only on the admin socket or an admin's pinned QUIC connection, and are never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageSet {
    /// A local directory on the appliance, or `s3://bucket/prefix`.
    pub location: String,
    /// The S3 service's URL.
    pub endpoint: Option<String>,
    /// The S3 region.
    pub region: Option<String>,
    /// The S3 access key id.
    pub access_key: Option<String>,
    /// The S3 secret key.
    pub secret_key: Option<String>,
    /// The password of an existing repository (to take over one another appliance made);
    /// without it a new repository is made with a password of the appliance's own.
    pub password: Option<String>,
}

impl std::fmt::Debug for StorageSet {
    /// Everything but the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSet")
            .field("location", &self.location)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// The repository the appliance persists to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageInfo {
    /// Where it is (no secrets).
    pub target: String,
    /// Whether it is the embedded default (a directory in the state directory).
    pub default: bool,
    /// Whether the recovery key is still to be shown (`storage recovery-key`).
    pub recovery_key_pending: bool,
    /// Upload limit, bytes per second (0: none).
    pub upload_limit: u64,
    /// Retention: keep the last N, daily D, weekly W.
    pub keep: (u32, u32, u32),
    /// The last retention run: Unix seconds and what it did or why it failed.
    pub retention: Option<(i64, String)>,
    /// Bytes uploaded since the appliance started.
    pub uploaded: u64,
}

/// The answer to [`StorageSet`](crate::Request::StorageSet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageChanged {
    /// Where it is now.
    pub target: String,
    /// Whether a new repository was made there.
    pub made: bool,
    /// The repository password, shown once, when the appliance made it: anyone restoring
    /// elsewhere (or with the restic CLI) needs it.
    pub recovery_key: Option<String>,
}

/// A snapshot of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its id (64 hex digits).
    pub id: String,
    /// The tree.
    pub tree: String,
    /// Unix seconds.
    pub time: i64,
    /// Files in it.
    pub files: u64,
    /// Bytes in it.
    pub bytes: u64,
    /// Bytes it added to the repository.
    pub added: u64,
}

/// A persisted tree, as `periphery files status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeInfo {
    /// Its name: `home/<user>/<workstation>` or `render/<user>/<job>`.
    pub tree: String,
    /// Its owner.
    pub user: String,
    /// Its directory on the appliance.
    pub dir: String,
    /// Its last snapshot.
    pub last: Option<SnapshotInfo>,
    /// Changes not yet in a snapshot.
    pub dirty: bool,
    /// Files changed since the last snapshot.
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// The snapshot being taken: source bytes read, of how many, and bytes uploaded.
    pub running: Option<(u64, u64, u64)>,
    /// The last error, until an attempt succeeds.
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Seconds until the next attempt, when one is due.
    pub due_in_secs: Option<u64>,
}

/// What a forced snapshot of one tree came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The tree.
    pub tree: String,
    /// The snapshot, or why there is none.
    pub result: Result<SnapshotInfo, String>,
}

/// A restore, as `periphery files restore` asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// Whose tree.
    pub user: String,
    /// Which tree (default: the user's only home tree).
    pub tree: Option<String>,
    /// Which snapshot (default: the tree's latest).
    pub snapshot: Option<String>,
    /// A path inside the tree (default: all of it).
    pub path: Option<String>,
    /// The directory on the appliance to restore into; it must be empty or missing.
    pub to: String,
}
