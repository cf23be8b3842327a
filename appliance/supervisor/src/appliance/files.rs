//! Storage and files requests: where files persist to (admin), and each user's persisted
//! trees, snapshots and restores. Blocking work runs on the blocking pool; a `--wait` holds
//! only its own request.

use std::collections::BTreeMap;
use std::sync::Arc;

use periphery_protocol::{ApiError, ErrorCode, Request, Response};

use super::{Appliance, Caller};

impl Appliance {
    /// The user whose trees `caller` asks about: `user` for an administrator (or all when
    /// none), else the caller's own (another's is refused).
    fn files_user(caller: &Caller, user: Option<String>) -> Result<Option<String>, ApiError> {
        if caller.is_admin() {
            return Ok(user);
        }
        let own = match caller {
            Caller::Device { device, .. } => device.user.clone(),
            _ => return Err(ApiError::new(ErrorCode::Forbidden, "not a user")),
        };
        match user {
            Some(u) if u != own => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("{u}'s files are theirs: ask an administrator"),
            )),
            _ => Ok(Some(own)),
        }
    }

    /// Brings the persisted trees in step with the workstations and render jobs.
    pub async fn reconcile_trees(&self) {
        let records = self.blocking(|s| s.workstations()).await;
        let mut trees = BTreeMap::new();
        if let Ok(records) = records {
            for r in records {
                let dir = self.workstations.home(&r);
                trees.insert(format!("home/{}/{}", r.user, r.name), (r.user, dir));
            }
        }
        for (job, user, dir) in self.render.output_dirs() {
            trees.insert(format!("render/{user}/{job}"), (user, dir));
        }
        let p = self.persistence.clone();
        let _ = tokio::task::spawn_blocking(move || p.reconcile(trees)).await;
    }

    pub(super) async fn files_request(
        &self,
        caller: &Caller,
        actor: String,
        req: Request,
    ) -> Result<Response, ApiError> {
        let p = self.persistence.clone();
        let run = |f: Box<dyn FnOnce() -> Result<Response, ApiError> + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        match req {
            Request::StorageSet(set) => {
                let changed = run(Box::new(move || {
                    p.set(set, &actor).map(Response::StorageChanged)
                }))
                .await?;
                self.reconcile_trees().await;
                Ok(changed)
            }
            Request::StorageShow => run(Box::new(move || p.show().map(Response::Storage))).await,
            Request::StorageRecoveryKey => {
                run(Box::new(move || {
                    p.recovery_key().map(Response::RecoveryKey)
                }))
                .await
            }
            Request::FilesStatus { user } => {
                let user = Self::files_user(caller, user)?;
                self.reconcile_trees().await;
                run(Box::new(move || {
                    Ok(Response::FilesStatus(p.status(user.as_deref())))
                }))
                .await
            }
            Request::FilesPersist { user, tree, wait } => {
                let user = Self::files_user(caller, user)?;
                if let (Some(t), Some(u)) = (&tree, &user) {
                    if t.split('/').nth(1) != Some(u.as_str()) {
                        return Err(ApiError::new(
                            ErrorCode::Forbidden,
                            format!("{t} is not {u}'s"),
                        ));
                    }
                }
                self.reconcile_trees().await;
                run(Box::new(move || {
                    let trees = p.trees_of(user.as_deref(), tree.as_deref())?;
                    if trees.is_empty() {
                        return Err(ApiError::new(
                            ErrorCode::NotFound,
                            "no persisted tree matches (a workstation's home appears once it exists)",
                        ));
                    }
                    p.persist(trees, wait).map(Response::FilesPersisted)
                }))
                .await
            }
            Request::FilesSnapshots { user, tree } => {
                let user = Self::files_user(caller, Some(user))?.unwrap_or_default();
                run(Box::new(move || {
                    p.snapshots(&user, tree.as_deref())
                        .map(Response::FilesSnapshots)
                }))
                .await
            }
            Request::FilesRestore(r) => {
                let a = super::audit(
                    actor,
                    "files-restore",
                    format!(
                        "{} {} to {}",
                        r.user,
                        r.tree.as_deref().unwrap_or("home"),
                        r.to
                    ),
                );
                let to = r.to.clone();
                let snap = run(Box::new(move || {
                    p.restore(&r).map(|s| Response::FilesRestored {
                        snapshot: s,
                        to: r.to.clone(),
                    })
                }))
                .await?;
                let _ = self.blocking(move |s| s.audit(&a)).await;
                tracing::info!(to, "files restored");
                Ok(snap)
            }
            _ => Err(ApiError::new(ErrorCode::Internal, "not a files request")),
        }
    }
}

/// Keeps the trees in step every few seconds (workstations and jobs come and go).
pub async fn follow_trees(app: Arc<Appliance>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        app.reconcile_trees().await;
    }
}
