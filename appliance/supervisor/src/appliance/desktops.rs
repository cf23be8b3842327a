//! Workstation and streaming requests: resolving `name` / `user/name` against the caller,
//! validating what is created, and handing the rest to the workstation manager and the
//! streaming layer.

use super::*;

use periphery_protocol::WorkstationInfo;
use periphery_workstation::spec::{KernelBoot, SpecError};
use periphery_workstation::{BackendKind, MonitorSize, WorkstationSpec};

use crate::store::{AddWorkstationError, WorkstationRecord};
use crate::workstations::WorkstationOpError;

fn ws_op_err(e: WorkstationOpError) -> ApiError {
    match e {
        WorkstationOpError::NotRunning(_) => ApiError::new(ErrorCode::OutOfOrder, e.to_string()),
        WorkstationOpError::Backend(_) => ApiError::new(ErrorCode::InvalidArgument, e.to_string()),
    }
}

impl Appliance {
    /// Runs a workstation or streaming request (dispatched here by [`Appliance::handle`]).
    pub(super) async fn desktop_request(
        &self,
        conv: &mut Conversation,
        actor: String,
        req: Request,
    ) -> Result<Response, ApiError> {
        match req {
            Request::WorkstationList => {
                let own = match &conv.caller {
                    Caller::Device { device, role } if *role != Role::Admin => {
                        Some(device.user.clone())
                    }
                    _ => None,
                };
                // A user's own workstations and the sessions they watch (handed to them,
                // shared with them).
                let mut list: Vec<WorkstationInfo> = self
                    .ws_sessions()
                    .await?
                    .iter()
                    .filter(|(w, s)| own.as_ref().is_none_or(|u| *u == w.user || s.may_view(u)))
                    .map(|(w, _)| self.workstations.info(w))
                    .collect();
                list.sort_by(|a, b| (&a.user, &a.name).cmp(&(&b.user, &b.name)));
                Ok(Response::Workstations(list))
            }
            Request::WorkstationCreate {
                user,
                name,
                backend,
                monitors,
                image,
                memory,
                cpus,
                kernel,
                initrd,
                append,
            } => {
                let user = match (&conv.caller, user) {
                    (Caller::Device { device, role }, u) if *role != Role::Admin => {
                        if u.as_ref().is_some_and(|u| *u != device.user) {
                            return Err(ApiError::new(
                                ErrorCode::Forbidden,
                                "you can only create workstations for yourself",
                            ));
                        }
                        device.user.clone()
                    }
                    (Caller::Device { device, .. }, None) => device.user.clone(),
                    (_, Some(u)) => u,
                    (_, None) => {
                        return Err(ApiError::new(
                            ErrorCode::InvalidArgument,
                            "say whose workstation it is (--user)",
                        ))
                    }
                };
                let boot = kernel.map(|k| (k, initrd, append));
                let spec = self.workstation_spec(&backend, &monitors, image, memory, cpus, boot)?;
                self.ws_create(actor, user, name, spec).await
            }
            Request::WorkstationStart { ws } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                let rec = self.set_desired(&rec, true, actor).await?;
                if let Err(e) = self.workstations.start(&rec).await {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("workstation {} did not start: {e}", rec.name),
                    ));
                }
                Ok(Response::Workstation(self.workstations.info(&rec)))
            }
            Request::WorkstationStop { ws, force } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                let rec = self.set_desired(&rec, false, actor).await?;
                self.workstations.stop(&rec.id, !force).await;
                Ok(Response::Workstation(self.workstations.info(&rec)))
            }
            Request::WorkstationDelete { ws } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                self.workstations.stop(&rec.id, false).await;
                let a = audit(
                    actor,
                    "ws-delete",
                    format!("deleted workstation {}/{}", rec.user, rec.name),
                );
                let id = rec.id.clone();
                self.blocking(move |s| s.delete_workstation(&id, &a))
                    .await
                    .map_err(lookup_err)?;
                let home = self.workstations.home(&rec);
                let disk = self.workstations.disk(&rec);
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(home);
                    let _ = std::fs::remove_file(disk);
                })
                .await;
                tracing::info!(ws = %rec.id, user = %rec.user, name = %rec.name, "workstation deleted");
                Ok(Response::Done)
            }
            Request::WorkstationShow { ws } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                Ok(Response::Workstation(self.workstations.info(&rec)))
            }
            Request::MonitorAdd { ws, size } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                let size: MonitorSize = size.parse().map_err(|e: SpecError| {
                    ApiError::new(ErrorCode::InvalidArgument, e.to_string())
                })?;
                self.workstations
                    .monitor_add(&rec, size)
                    .await
                    .map_err(ws_op_err)?;
                Ok(Response::Workstation(self.workstations.info(&rec)))
            }
            Request::MonitorRemove { ws, monitor } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                self.workstations
                    .monitor_remove(&rec, monitor)
                    .await
                    .map_err(ws_op_err)?;
                Ok(Response::Workstation(self.workstations.info(&rec)))
            }
            Request::Attach {
                ws,
                mode,
                view_only,
            } => {
                let Caller::Device { device, .. } = &conv.caller else {
                    return Err(ApiError::new(ErrorCode::Forbidden, "attach is for tablets"));
                };
                let (device_id, user) = (device.id.clone(), device.user.clone());
                let Some((conn, conn_id)) = conv.conn.clone() else {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "attach needs a QUIC connection",
                    ));
                };
                // Any session the user watches: their own, handed to them, or shared.
                let (rec, session) = self.resolve_session(&conv.caller, &ws).await?;
                if self.workstations.monitors(&rec.id).is_none() {
                    let rec = self.set_desired(&rec, true, actor.clone()).await?;
                    self.workstations.start(&rec).await.map_err(|e| {
                        ApiError::new(
                            ErrorCode::Internal,
                            format!("workstation {} did not start: {e}", rec.name),
                        )
                    })?;
                }
                let a = self
                    .streaming
                    .attach(
                        crate::streaming::Tablet {
                            conn,
                            conn_id,
                            device_id,
                            user,
                        },
                        &rec,
                        session,
                        mode,
                        view_only,
                    )
                    .await?;
                Ok(Response::Attached(a))
            }
            Request::Detach { attach_id } => {
                let conn_id = conv.conn.as_ref().map(|c| c.1).unwrap_or(0);
                self.streaming.detach(attach_id, conn_id).await?;
                Ok(Response::Done)
            }
            Request::KeyframeRequest { attach_id } => {
                let conn_id = conv.conn.as_ref().map(|c| c.1).unwrap_or(0);
                self.streaming.keyframe_request(attach_id, conn_id)?;
                Ok(Response::Done)
            }
            Request::ReportStats { attach_id, stats } => {
                let conn_id = conv.conn.as_ref().map(|c| c.1).unwrap_or(0);
                self.streaming.report_stats(attach_id, conn_id, stats)?;
                Ok(Response::Done)
            }
            Request::Ping { client_time_us } => Ok(Response::Pong {
                client_time_us,
                server_time_us: self.streaming.now_us(),
            }),
            Request::Screenshot { ws, monitor } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                let png = self
                    .workstations
                    .screenshot(&rec, monitor)
                    .await
                    .map_err(ws_op_err)?;
                Ok(Response::Png(png))
            }
            Request::SourceFrame {
                ws,
                monitor,
                sequence,
            } => {
                let rec = self.resolve_ws(&conv.caller, &ws).await?;
                Ok(Response::Png(
                    self.streaming.source_frame(&rec.id, monitor, sequence)?,
                ))
            }
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("{} is not a workstation request", other.name()),
            )),
        }
    }

    fn workstation_spec(
        &self,
        backend: &str,
        monitors: &[String],
        image: Option<String>,
        memory: Option<String>,
        cpus: Option<u32>,
        boot: Option<(String, Option<String>, Option<String>)>,
    ) -> Result<WorkstationSpec, ApiError> {
        let bad = |e: SpecError| ApiError::new(ErrorCode::InvalidArgument, e.to_string());
        let backend: BackendKind = backend.parse().map_err(bad)?;
        let monitors = if monitors.is_empty() {
            vec![MonitorSize {
                width: 1920,
                height: 1080,
            }]
        } else {
            monitors
                .iter()
                .map(|m| m.parse())
                .collect::<Result<Vec<MonitorSize>, _>>()
                .map_err(bad)?
        };
        let memory_mib = match memory {
            Some(m) => periphery_workstation::spec::parse_memory_mib(&m).map_err(bad)?,
            None => 2048,
        };
        let existing = |what: &str, path: String| -> Result<String, ApiError> {
            let p = std::path::Path::new(&path);
            if !p.is_file() {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("{what} {path} not found on the appliance"),
                ));
            }
            p.canonicalize()
                .map(|c| c.display().to_string())
                .map_err(|e| {
                    ApiError::new(ErrorCode::InvalidArgument, format!("{what} {path}: {e}"))
                })
        };
        let image = image.map(|p| existing("base image", p)).transpose()?;
        let kernel = match boot {
            Some((kernel, initrd, append)) => Some(KernelBoot {
                kernel: existing("kernel", kernel)?,
                initrd: initrd.map(|i| existing("initrd", i)).transpose()?,
                append: append.unwrap_or_else(|| "console=tty1 console=ttyS0".into()),
            }),
            None => None,
        };
        let spec = WorkstationSpec {
            backend,
            monitors,
            image,
            memory_mib,
            cpus: cpus.unwrap_or(2),
            kernel,
        };
        spec.validate(self.workstations.limits()).map_err(bad)?;
        Ok(spec)
    }

    async fn ws_create(
        &self,
        actor: String,
        user: String,
        name: String,
        spec: WorkstationSpec,
    ) -> Result<Response, ApiError> {
        if !valid_user_name(&name) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("'{name}' is not a valid workstation name: 1-32 of a-z 0-9 . _ -, starting with a letter"),
            ));
        }
        let mut raw = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let rec = WorkstationRecord {
            id: format!("w-{}", hex::encode(raw)),
            user: user.clone(),
            name: name.clone(),
            spec,
            desired_running: false,
            uid: 0,
            created_at: crate::clock::unix_secs(),
            last_error: None,
        };
        let a = audit(
            actor,
            "ws-create",
            format!("created {} workstation {user}/{name}", rec.spec.backend),
        );
        let rec = match self.blocking(move |s| s.add_workstation(rec, &a)).await {
            Ok(r) => r,
            Err(AddWorkstationError::Exists(w)) => {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("workstation {w} already exists"),
                ))
            }
            Err(AddWorkstationError::NoUser(u)) => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("user '{u}' not found"),
                ))
            }
            Err(e) => return Err(internal(e)),
        };
        tracing::info!(ws = %rec.id, %user, %name, "workstation created");
        Ok(Response::Workstation(self.workstations.info(&rec)))
    }

    /// Finds the workstation `ws` (`name` or `user/name`) as `caller` may see it.
    async fn resolve_ws(&self, caller: &Caller, ws: &str) -> Result<WorkstationRecord, ApiError> {
        let (user, name) = match ws.split_once('/') {
            Some((u, n)) => (Some(u.to_owned()), n.to_owned()),
            None => (None, ws.to_owned()),
        };
        let user = match caller {
            Caller::Device { device, role } if *role != Role::Admin => {
                if user.as_ref().is_some_and(|u| *u != device.user) {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "you can only use your own workstations",
                    ));
                }
                Some(device.user.clone())
            }
            _ => user,
        };
        let all = self
            .blocking(|s| s.workstations())
            .await
            .map_err(internal)?;
        let mut found: Vec<WorkstationRecord> = all
            .into_iter()
            .filter(|w| w.name == name && user.as_ref().is_none_or(|u| *u == w.user))
            .collect();
        match found.len() {
            0 => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no workstation '{ws}'"),
            )),
            1 => Ok(found.remove(0)),
            _ => Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "'{name}' is ambiguous: {}; say which as user/name",
                    found
                        .iter()
                        .map(|w| format!("{}/{}", w.user, w.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn set_desired(
        &self,
        rec: &WorkstationRecord,
        running: bool,
        actor: String,
    ) -> Result<WorkstationRecord, ApiError> {
        let a = audit(
            actor,
            if running { "ws-start" } else { "ws-stop" },
            format!("{}/{}", rec.user, rec.name),
        );
        let id = rec.id.clone();
        self.blocking(move |s| s.update_workstation(&id, Some(&a), |w| w.desired_running = running))
            .await
            .map_err(lookup_err)
    }
}
