//! The appliance's durable state: one redb file, ACID and crash-safe.
//!
//! Tables (schema version [`SCHEMA_VERSION`], kept in `meta`):
//! - `users`: name -> [`UserRecord`]
//! - `devices`: id -> [`DeviceRecord`]
//! - `device_by_fingerprint`: certificate fingerprint -> device id (since schema 2)
//! - `audit`: sequence -> [`AuditRecord`]
//! - `workstations`: id -> [`WorkstationRecord`] (since schema 3)
//! - `sessions`: workstation id -> [`periphery_session::Session`] (since schema 4; a workstation
//!   without one has a fresh session of its owner)
//! - `render_jobs`, `render_tasks`: the render farm's jobs and tasks (since schema 5; see
//!   [`render`])
//! - `storage`, `persist_trees`: where files persist to, and each tree's state (since schema
//!   6; see [`persist`])
//!
//! Records are postcard-encoded, which is not self-describing: a change to a record is a new
//! schema version with a migration in [`migrate`] and a test that opens a file of the old
//! version. Every mutation commits with `Durability::Immediate` and writes its audit entry in
//! the same transaction, so an acknowledged change survives a crash or a power cut with its
//! audit trail.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use periphery_protocol::Role;
use periphery_session::Session;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u64 = 6;

pub mod persist;
pub mod render;
pub use render::{JobFacts, JobRow, TaskFacts, TaskRow};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const DEVICE_BY_FP: TableDefinition<&str, &str> = TableDefinition::new("device_by_fingerprint");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const WORKSTATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("workstations");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// The first uid handed to workstations when the supervisor runs as root (the range systemd
/// uses for dynamic users, 61184-65519).
pub const WORKSTATION_UID_BASE: u32 = 61_184;
/// The last uid handed to workstations.
pub const WORKSTATION_UID_LAST: u32 = 65_519;

/// A workstation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkstationRecord {
    /// Id (`w-` and hex), stable for its life; names its directories and process marker.
    pub id: String,
    /// Owner.
    pub user: String,
    /// Name, unique per user.
    pub name: String,
    /// What it is made of.
    pub spec: periphery_workstation::WorkstationSpec,
    /// Whether it should be running.
    pub desired_running: bool,
    /// Its own uid (and gid).
    pub uid: u32,
    /// Unix seconds.
    pub created_at: u64,
    /// Why it last failed, if it did.
    pub last_error: Option<String>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// argon2id PHC string, if the user has a password.
    pub password_hash: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
}

/// Whether a device record is a render node's: nodes are enrolled like devices, with `n-`
/// ids and no user, so the handshake's allow-list and revocation cover them too.
pub fn is_render_node(device_id: &str) -> bool {
    device_id.starts_with("n-")
}

/// A paired device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// Name given at pairing.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Certificate serial (hex).
    pub serial: String,
    /// Certificate fingerprint.
    pub fingerprint: String,
    /// Unix seconds.
    pub paired_at: u64,
    /// Unix seconds of the last connection.
    pub last_seen: Option<u64>,
    /// Unix seconds of revocation.
    pub revoked_at: Option<u64>,
}

/// An audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix seconds.
    pub at: u64,
    /// Who did it.
    pub actor: String,
    /// What happened.
    pub event: String,
    /// Details.
    pub detail: String,
}

impl AuditRecord {
    /// An entry for now.
    pub fn new(actor: String, event: &str, detail: String) -> Self {
        AuditRecord {
            at: crate::clock::unix_secs(),
            actor,
            event: event.to_owned(),
            detail,
        }
    }
}

/// The store failed underneath an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, a full disk).
    #[error("database error")]
    Db(#[from] redb::Error),
    /// A record could not be decoded.
    #[error("record {key} in table {table} is corrupt")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
    },
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// Another process has the file open.
    #[error("the state database is in use by another process (is another `periphery serve` running on this state directory?)")]
    InUse,
    /// The file was written by a newer Periphery.
    #[error("the state database has schema {found}, newer than this build's {SCHEMA_VERSION}; run a newer Periphery")]
    TooNew {
        /// Schema version in the file.
        found: u64,
    },
    /// redb could not open or migrate the file.
    #[error("cannot open the state database")]
    Store(#[from] StoreError),
}

/// Why a user could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    /// The name is taken.
    #[error("user '{0}' already exists")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an operation on a named record failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No such record.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records serialize infallibly (no maps with non-string keys, no custom impls).
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<T: for<'a> Deserialize<'a>>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt {
        table,
        key: key.to_owned(),
    })
}

/// The appliance's state database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, OpenStoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(OpenStoreError::InUse),
            Err(e) => return Err(db_err(e).into()),
        };
        let store = Store { db };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(db(e)),
        };
        Ok(meta
            .get("schema_version")
            .map_err(db)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Brings the file to [`SCHEMA_VERSION`], one step per transaction.
    fn migrate(&self) -> Result<(), OpenStoreError> {
        loop {
            let found = self.schema_version()?;
            if found > SCHEMA_VERSION {
                return Err(OpenStoreError::TooNew { found });
            }
            if found == SCHEMA_VERSION {
                return Ok(());
            }
            let tx = self.db.begin_write().map_err(db)?;
            let to = migrate(&tx, found)?;
            tx.open_table(META)
                .map_err(db)?
                .insert("schema_version", to)
                .map_err(db)?;
            tx.commit().map_err(db)?;
            if found > 0 {
                tracing::info!(from = found, to, "migrated state database");
            }
        }
    }

    /// Runs `f` in a write transaction and commits it with `audit`. When `f` returns an inner
    /// `Err`, the transaction is dropped (nothing is written, no audit entry) and that error
    /// is returned.
    fn write<T, E: From<StoreError>>(
        &self,
        audit: Option<&AuditRecord>,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<Result<T, E>, StoreError>,
    ) -> Result<T, E> {
        let tx = self.db.begin_write().map_err(db)?;
        let out = f(&tx)??;
        if let Some(a) = audit {
            append_audit(&tx, a)?;
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// Adds a user.
    pub fn add_user(&self, user: &UserRecord, audit: &AuditRecord) -> Result<(), AddUserError> {
        self.write(Some(audit), |tx| {
            let mut t = tx.open_table(USERS).map_err(db)?;
            if t.get(user.name.as_str()).map_err(db)?.is_some() {
                return Ok(Err(AddUserError::Exists(user.name.clone())));
            }
            t.insert(user.name.as_str(), encode(user).as_slice())
                .map_err(db)?;
            Ok(Ok(()))
        })
    }

    /// Removes a user and revokes their devices; returns the revoked devices' fingerprints.
    pub fn remove_user(
        &self,
        name: &str,
        now: u64,
        audit: &AuditRecord,
    ) -> Result<Vec<String>, LookupError> {
        self.write(Some(audit), |tx| {
            if tx
                .open_table(USERS)
                .map_err(db)?
                .remove(name)
                .map_err(db)?
                .is_none()
            {
                return Ok(Err(LookupError::NotFound(format!("user '{name}'"))));
            }
            let mut devices = tx.open_table(DEVICES).map_err(db)?;
            let mut revoked = Vec::new();
            let mut updates = Vec::new();
            for row in devices.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                let mut d: DeviceRecord = decode("devices", k.value(), v.value())?;
                if d.user == name && d.revoked_at.is_none() {
                    d.revoked_at = Some(now);
                    revoked.push(d.fingerprint.clone());
                    updates.push(d);
                }
            }
            for d in updates {
                devices
                    .insert(d.id.as_str(), encode(&d).as_slice())
                    .map_err(db)?;
            }
            Ok(Ok(revoked))
        })
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(USERS).map_err(db)?;
        t.get(name)
            .map_err(db)?
            .map(|v| decode("users", name, v.value()))
            .transpose()
    }

    /// All users, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(USERS).map_err(db)?;
        let mut out = Vec::with_capacity(t.len().map_err(db)? as usize);
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push(decode("users", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Adds a paired device (its owner must exist).
    pub fn add_device(&self, d: &DeviceRecord, audit: &AuditRecord) -> Result<(), LookupError> {
        self.write(Some(audit), |tx| {
            let owner = tx.open_table(USERS).map_err(db)?;
            let node = is_render_node(&d.id) && d.user.is_empty();
            if !node && owner.get(d.user.as_str()).map_err(db)?.is_none() {
                return Ok(Err(LookupError::NotFound(format!("user '{}'", d.user))));
            }
            tx.open_table(DEVICES)
                .map_err(db)?
                .insert(d.id.as_str(), encode(d).as_slice())
                .map_err(db)?;
            tx.open_table(DEVICE_BY_FP)
                .map_err(db)?
                .insert(d.fingerprint.as_str(), d.id.as_str())
                .map_err(db)?;
            Ok(Ok(()))
        })
    }

    /// One device.
    pub fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(DEVICES).map_err(db)?;
        t.get(id)
            .map_err(db)?
            .map(|v| decode("devices", id, v.value()))
            .transpose()
    }

    /// The device holding the certificate with `fingerprint`.
    pub fn device_by_fingerprint(&self, fp: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let id = {
            let tx = self.db.begin_read().map_err(db)?;
            let t = tx.open_table(DEVICE_BY_FP).map_err(db)?;
            let Some(id) = t.get(fp).map_err(db)? else {
                return Ok(None);
            };
            id.value().to_owned()
        };
        self.device(&id)
    }

    /// All devices.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(DEVICES).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push(decode("devices", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Marks a device revoked; returns it.
    pub fn revoke_device(
        &self,
        id: &str,
        now: u64,
        audit: &AuditRecord,
    ) -> Result<DeviceRecord, LookupError> {
        self.write(Some(audit), |tx| {
            let mut t = tx.open_table(DEVICES).map_err(db)?;
            let found = t.get(id).map_err(db)?.map(|v| v.value().to_vec());
            let Some(bytes) = found else {
                return Ok(Err(LookupError::NotFound(format!("device '{id}'"))));
            };
            let mut d: DeviceRecord = decode("devices", id, &bytes)?;
            if d.revoked_at.is_none() {
                d.revoked_at = Some(now);
                t.insert(id, encode(&d).as_slice()).map_err(db)?;
            }
            Ok(Ok(d))
        })
    }

    /// Records that a device connected.
    pub fn touch_device(&self, id: &str, now: u64) -> Result<(), StoreError> {
        self.write(None, |tx| {
            let mut t = tx.open_table(DEVICES).map_err(db)?;
            let found = t.get(id).map_err(db)?.map(|v| v.value().to_vec());
            if let Some(bytes) = found {
                let mut d: DeviceRecord = decode("devices", id, &bytes)?;
                d.last_seen = Some(now);
                t.insert(id, encode(&d).as_slice()).map_err(db)?;
            }
            Ok(Ok(()))
        })
    }

    /// Appends an audit entry on its own.
    pub fn audit(&self, a: &AuditRecord) -> Result<(), StoreError> {
        self.write(Some(a), |_| Ok(Ok(())))
    }

    /// The newest `limit` audit entries, oldest first, with their sequence numbers.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(AUDIT).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)?.rev().take(limit) {
            let (k, v) = row.map_err(db)?;
            out.push((
                k.value(),
                decode("audit", &k.value().to_string(), v.value())?,
            ));
        }
        out.reverse();
        Ok(out)
    }
}

impl Store {
    /// Adds a workstation, allocating its uid; fails if the user has one of that name or the
    /// owner does not exist.
    pub fn add_workstation(
        &self,
        mut w: WorkstationRecord,
        audit: &AuditRecord,
    ) -> Result<WorkstationRecord, AddWorkstationError> {
        self.write(Some(audit), |tx| {
            if tx
                .open_table(USERS)
                .map_err(db)?
                .get(w.user.as_str())
                .map_err(db)?
                .is_none()
            {
                return Ok(Err(AddWorkstationError::NoUser(w.user.clone())));
            }
            let mut t = tx.open_table(WORKSTATIONS).map_err(db)?;
            let mut used = Vec::new();
            for row in t.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                let o: WorkstationRecord = decode("workstations", k.value(), v.value())?;
                if o.user == w.user && o.name == w.name {
                    return Ok(Err(AddWorkstationError::Exists(format!(
                        "{}/{}",
                        w.user, w.name
                    ))));
                }
                used.push(o.uid);
            }
            let Some(uid) =
                (WORKSTATION_UID_BASE..=WORKSTATION_UID_LAST).find(|u| !used.contains(u))
            else {
                return Ok(Err(AddWorkstationError::NoUid));
            };
            w.uid = uid;
            t.insert(w.id.as_str(), encode(&w).as_slice()).map_err(db)?;
            Ok(Ok(w))
        })
    }

    /// All workstations.
    pub fn workstations(&self) -> Result<Vec<WorkstationRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(WORKSTATIONS).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push(decode("workstations", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Changes a workstation with `f` (desired state, last error) and records `audit`.
    pub fn update_workstation(
        &self,
        id: &str,
        audit: Option<&AuditRecord>,
        f: impl FnOnce(&mut WorkstationRecord),
    ) -> Result<WorkstationRecord, LookupError> {
        self.write(audit, |tx| {
            let mut t = tx.open_table(WORKSTATIONS).map_err(db)?;
            let found = t.get(id).map_err(db)?.map(|v| v.value().to_vec());
            let Some(bytes) = found else {
                return Ok(Err(LookupError::NotFound(format!("workstation {id}"))));
            };
            let mut w: WorkstationRecord = decode("workstations", id, &bytes)?;
            f(&mut w);
            t.insert(id, encode(&w).as_slice()).map_err(db)?;
            Ok(Ok(w))
        })
    }

    /// Deletes a workstation record.
    pub fn delete_workstation(&self, id: &str, audit: &AuditRecord) -> Result<(), LookupError> {
        self.write(Some(audit), |tx| {
            let mut t = tx.open_table(WORKSTATIONS).map_err(db)?;
            if t.remove(id).map_err(db)?.is_none() {
                return Ok(Err(LookupError::NotFound(format!("workstation {id}"))));
            }
            tx.open_table(SESSIONS)
                .map_err(db)?
                .remove(id)
                .map_err(db)?;
            Ok(Ok(()))
        })
    }
}

/// Why a workstation could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddWorkstationError {
    /// The owner does not exist.
    #[error("user '{0}' not found")]
    NoUser(String),
    /// The user has a workstation of that name.
    #[error("workstation {0} already exists")]
    Exists(String),
    /// Every workstation uid is taken.
    #[error("no free workstation uid left")]
    NoUid,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn append_audit(tx: &redb::WriteTransaction, a: &AuditRecord) -> Result<(), StoreError> {
    let mut t = tx.open_table(AUDIT).map_err(db)?;
    let next = t
        .last()
        .map_err(db)?
        .map(|(k, _)| k.value() + 1)
        .unwrap_or(1);
    t.insert(next, encode(a).as_slice()).map_err(db)?;
    Ok(())
}

impl Store {
    /// The session of workstation `ws`, if one was stored.
    #[cfg(test)]
    pub fn session(&self, ws: &str) -> Result<Option<Session>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SESSIONS).map_err(db)?;
        let v = t.get(ws).map_err(db)?;
        v.map(|v| decode("sessions", ws, v.value())).transpose()
    }

    /// Every stored session, by workstation id.
    pub fn sessions(&self) -> Result<Vec<(String, Session)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(SESSIONS).map_err(db)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push((
                k.value().to_owned(),
                decode("sessions", k.value(), v.value())?,
            ));
        }
        Ok(out)
    }

    /// One session transition, atomically: `f` changes the session of workstation `ws` (a
    /// fresh one of `owner` when none is stored) and returns its outcome with the audit
    /// entries it earns; the session and the entries are written in one transaction, or
    /// nothing is when `f` refuses.
    pub fn update_session<T, E>(
        &self,
        ws: &str,
        owner: &str,
        f: impl FnOnce(&mut Session) -> Result<(T, Vec<AuditRecord>), E>,
    ) -> Result<Result<T, E>, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let out = {
            let mut t = tx.open_table(SESSIONS).map_err(db)?;
            let stored = t.get(ws).map_err(db)?.map(|v| v.value().to_vec());
            let mut session = match stored {
                Some(bytes) => decode("sessions", ws, &bytes)?,
                None => Session::new(owner),
            };
            match f(&mut session) {
                Err(e) => return Ok(Err(e)),
                Ok((out, audit)) => {
                    t.insert(ws, encode(&session).as_slice()).map_err(db)?;
                    for a in &audit {
                        append_audit(&tx, a)?;
                    }
                    out
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(Ok(out))
    }
}

fn db_err(e: redb::DatabaseError) -> StoreError {
    db(e)
}

/// One migration step from schema `from`, inside `tx`; returns the version reached.
fn migrate(tx: &redb::WriteTransaction, from: u64) -> Result<u64, StoreError> {
    Ok(match from {
        // A new file: create every table.
        0 => {
            tx.open_table(USERS).map_err(db)?;
            tx.open_table(DEVICES).map_err(db)?;
            tx.open_table(DEVICE_BY_FP).map_err(db)?;
            tx.open_table(AUDIT).map_err(db)?;
            tx.open_table(WORKSTATIONS).map_err(db)?;
            tx.open_table(SESSIONS).map_err(db)?;
            tx.open_table(render::RENDER_JOBS).map_err(db)?;
            tx.open_table(render::RENDER_TASKS).map_err(db)?;
            tx.open_table(persist::STORAGE).map_err(db)?;
            tx.open_table(persist::PERSIST_TREES).map_err(db)?;
            SCHEMA_VERSION
        }
        // 1 -> 2: index devices by certificate fingerprint (the TLS handshake looks them up).
        1 => {
            let devices = tx.open_table(DEVICES).map_err(db)?;
            let mut index = tx.open_table(DEVICE_BY_FP).map_err(db)?;
            for row in devices.iter().map_err(db)? {
                let (k, v) = row.map_err(db)?;
                let d: DeviceRecord = decode("devices", k.value(), v.value())?;
                index
                    .insert(d.fingerprint.as_str(), d.id.as_str())
                    .map_err(db)?;
            }
            2
        }
        // 2 -> 3: workstations.
        2 => {
            tx.open_table(WORKSTATIONS).map_err(db)?;
            3
        }
        // 3 -> 4: sessions (handoffs and shares).
        3 => {
            tx.open_table(SESSIONS).map_err(db)?;
            4
        }
        // 4 -> 5: render jobs and tasks.
        4 => {
            tx.open_table(render::RENDER_JOBS).map_err(db)?;
            tx.open_table(render::RENDER_TASKS).map_err(db)?;
            5
        }
        // 5 -> 6: persistence.
        5 => {
            tx.open_table(persist::STORAGE).map_err(db)?;
            tx.open_table(persist::PERSIST_TREES).map_err(db)?;
            6
        }
        _ => unreachable!("migrate called past SCHEMA_VERSION"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> AuditRecord {
        AuditRecord {
            at: 1,
            actor: "test".into(),
            event: "e".into(),
            detail: String::new(),
        }
    }

    fn user(name: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            role: Role::User,
            password_hash: None,
            created_at: 5,
        }
    }

    fn device(id: &str, user: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            name: "tab".into(),
            user: user.into(),
            serial: "01".into(),
            fingerprint: format!("fp-{id}"),
            paired_at: 3,
            last_seen: None,
            revoked_at: None,
        }
    }

    #[test]
    fn users_and_devices_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.add_user(&user("alice"), &audit()).unwrap();
            assert!(matches!(
                s.add_user(&user("alice"), &audit()),
                Err(AddUserError::Exists(_))
            ));
            s.add_device(&device("d1", "alice"), &audit()).unwrap();
            assert!(matches!(
                s.add_device(&device("d2", "nobody"), &audit()),
                Err(LookupError::NotFound(_))
            ));
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.users().unwrap(), vec![user("alice")]);
        // The refused add and the refused device wrote no audit entries.
        assert_eq!(s.device_by_fingerprint("fp-d1").unwrap().unwrap().id, "d1");
        assert_eq!(s.audit_tail(10).unwrap().len(), 2);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn removing_a_user_revokes_their_devices() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.add_user(&user("alice"), &audit()).unwrap();
        s.add_device(&device("d1", "alice"), &audit()).unwrap();
        let fps = s.remove_user("alice", 9, &audit()).unwrap();
        assert_eq!(fps, vec!["fp-d1".to_string()]);
        assert_eq!(s.device("d1").unwrap().unwrap().revoked_at, Some(9));
        assert!(matches!(
            s.remove_user("alice", 9, &audit()),
            Err(LookupError::NotFound(_))
        ));
    }

    /// Writes a file as schema 1 wrote it: devices without the fingerprint index.
    fn write_schema_1(path: &Path) {
        let db = Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
        tx.open_table(USERS)
            .unwrap()
            .insert("alice", encode(&user("alice")).as_slice())
            .unwrap();
        tx.open_table(DEVICES)
            .unwrap()
            .insert("d1", encode(&device("d1", "alice")).as_slice())
            .unwrap();
        tx.open_table(AUDIT).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn schema_1_file_migrates_to_current_with_fingerprint_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        write_schema_1(&path);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            s.device_by_fingerprint("fp-d1").unwrap().unwrap().user,
            "alice"
        );
        assert_eq!(s.users().unwrap().len(), 1);
        assert!(s.workstations().unwrap().is_empty());
    }

    fn ws(id: &str, user: &str, name: &str) -> WorkstationRecord {
        WorkstationRecord {
            id: id.into(),
            user: user.into(),
            name: name.into(),
            spec: periphery_workstation::WorkstationSpec {
                backend: periphery_workstation::BackendKind::Xvfb,
                monitors: vec!["1024x768".parse().unwrap()],
                image: None,
                memory_mib: 0,
                cpus: 0,
                kernel: None,
            },
            desired_running: false,
            uid: 0,
            created_at: 1,
            last_error: None,
        }
    }

    #[test]
    fn workstations_get_distinct_uids_and_unique_names_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.add_user(&user("alice"), &audit()).unwrap();
        s.add_user(&user("bob"), &audit()).unwrap();
        let a = s
            .add_workstation(ws("w-1", "alice", "design"), &audit())
            .unwrap();
        let b = s
            .add_workstation(ws("w-2", "bob", "design"), &audit())
            .unwrap();
        assert_eq!(a.uid, WORKSTATION_UID_BASE);
        assert_eq!(b.uid, WORKSTATION_UID_BASE + 1);
        assert!(matches!(
            s.add_workstation(ws("w-3", "alice", "design"), &audit()),
            Err(AddWorkstationError::Exists(_))
        ));
        assert!(matches!(
            s.add_workstation(ws("w-4", "carol", "x"), &audit()),
            Err(AddWorkstationError::NoUser(_))
        ));
        s.update_workstation("w-1", None, |w| w.desired_running = true)
            .unwrap();
        s.delete_workstation("w-2", &audit()).unwrap();
        let all = s.workstations().unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].desired_running);
        // The freed uid is reused.
        let c = s
            .add_workstation(ws("w-5", "bob", "other"), &audit())
            .unwrap();
        assert_eq!(c.uid, WORKSTATION_UID_BASE + 1);
    }

    #[test]
    fn session_transitions_commit_with_their_audit_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path).unwrap();
            s.add_user(&user("alice"), &audit()).unwrap();
            s.add_workstation(ws("w-1", "alice", "design"), &audit())
                .unwrap();
            assert_eq!(s.session("w-1").unwrap(), None);
            let before = s.audit_tail(100).unwrap().len();
            s.update_session("w-1", "alice", |x| {
                x.offer(0, "o1", "alice", "d1", "bob", 60_000, false)
                    .map(|_| ((), vec![audit(), audit()]))
            })
            .unwrap()
            .unwrap();
            assert_eq!(s.audit_tail(100).unwrap().len(), before + 2);
            // A refused transition writes neither the session nor an audit entry.
            let refused = s
                .update_session("w-1", "alice", |x| {
                    x.accept(1, "o1", "carol").map(|_| ((), vec![audit()]))
                })
                .unwrap();
            assert!(refused.is_err());
            assert_eq!(s.audit_tail(100).unwrap().len(), before + 2);
        }
        // Reopened: the offer is there, nothing half-applied.
        let s = Store::open(&path).unwrap();
        let session = s.session("w-1").unwrap().unwrap();
        assert_eq!(session.holder, "alice");
        assert_eq!(session.offers.len(), 1);
        assert_eq!(s.sessions().unwrap().len(), 1);
        s.delete_workstation("w-1", &audit()).unwrap();
        assert_eq!(s.session("w-1").unwrap(), None);
    }

    #[test]
    fn schema_3_file_gains_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", 3)
                .unwrap();
            for t in [USERS, DEVICES, WORKSTATIONS] {
                tx.open_table(t).unwrap();
            }
            tx.open_table(DEVICE_BY_FP).unwrap();
            tx.open_table(AUDIT).unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert!(s.sessions().unwrap().is_empty());
        assert!(
            s.render_jobs().unwrap().is_empty(),
            "4 -> 5 adds the render tables"
        );
    }

    #[test]
    fn newer_schema_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(e, OpenStoreError::TooNew { found } if found == SCHEMA_VERSION + 1));
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _s = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(OpenStoreError::InUse)));
    }
}
