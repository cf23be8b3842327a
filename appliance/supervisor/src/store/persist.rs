//! Persistence state in the store (since schema 6).
//!
//! - `storage`: `"current"` -> [`StorageRecord`]: where the repository is, with its keys and
//!   password (the state directory is the owner's alone).
//! - `persist_trees`: tree name -> [`TreeRecord`]: dirty or clean, last snapshot, last error,
//!   so a restart resumes what was pending.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use periphery_persist::engine::{Journal, TreeRecord};
use periphery_persist::Target;

use super::{db, decode, encode, AuditRecord, Store, StoreError};

pub(super) const STORAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("storage");
pub(super) const PERSIST_TREES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("persist_trees");

/// The repository persisted to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRecord {
    /// Where it is, with its keys.
    pub target: Target,
    /// Its password.
    pub password: String,
    /// Whether it is the embedded default.
    pub default: bool,
    /// Whether the appliance made the password, and it is yet to be shown.
    pub recovery_pending: bool,
}

impl std::fmt::Debug for StorageRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageRecord")
            .field("target", &self.target)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The repository persisted to, once one is set.
    pub fn storage(&self) -> Result<Option<StorageRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(STORAGE).map_err(db)?;
        t.get("current")
            .map_err(db)?
            .map(|v| decode("storage", "current", v.value()))
            .transpose()
    }

    /// Sets the repository persisted to.
    pub fn set_storage(
        &self,
        rec: &StorageRecord,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StoreError> {
        self.write(audit, |tx| {
            tx.open_table(STORAGE)
                .map_err(db)?
                .insert("current", encode(rec).as_slice())
                .map_err(db)?;
            Ok(Ok::<(), StoreError>(()))
        })
    }

    /// Every persisted tree's record.
    pub fn persist_trees(&self) -> Result<Vec<(String, TreeRecord)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(PERSIST_TREES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push((
                k.value().to_owned(),
                decode("persist_trees", k.value(), v.value())?,
            ));
        }
        Ok(out)
    }

    /// Writes one tree's record.
    pub fn save_persist_tree(&self, tree: &str, rec: &TreeRecord) -> Result<(), StoreError> {
        self.write(None, |tx| {
            tx.open_table(PERSIST_TREES)
                .map_err(db)?
                .insert(tree, encode(rec).as_slice())
                .map_err(db)?;
            Ok(Ok::<(), StoreError>(()))
        })
    }

    /// Drops one tree's record.
    pub fn remove_persist_tree(&self, tree: &str) -> Result<(), StoreError> {
        self.write(None, |tx| {
            tx.open_table(PERSIST_TREES)
                .map_err(db)?
                .remove(tree)
                .map_err(db)?;
            Ok(Ok::<(), StoreError>(()))
        })
    }
}

/// The engine writes tree records through the store.
#[derive(Debug, Clone)]
pub struct StoreJournal(pub std::sync::Arc<Store>);

impl Journal for StoreJournal {
    fn save(&self, tree: &str, rec: &TreeRecord) -> Result<(), String> {
        self.0
            .save_persist_tree(tree, rec)
            .map_err(|e| e.to_string())
    }
    fn remove(&self, tree: &str) -> Result<(), String> {
        self.0.remove_persist_tree(tree).map_err(|e| e.to_string())
    }
}
