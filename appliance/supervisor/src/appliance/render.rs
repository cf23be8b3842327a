//! Render requests: jobs (submit, list, show, control) kept to their owner unless the caller
//! is an administrator; files by content; render nodes joining with a token, then asking for
//! work and reporting it.
//!
//! A join token is `<secret>.<appliance fingerprint hex>`: the node checks the certificate it
//! meets against the fingerprint before it sends the secret, so a first contact on a hostile
//! LAN cannot be intercepted (kubeadm's `--discovery-token-ca-cert-hash`, in one string).
//! Tokens are reusable by any number of nodes until they expire (an hour), and live in memory:
//! a restart of the appliance ends them.

use super::*;

use periphery_protocol::render::{JobSubmission, NodeInfo};

use super::pairing::Enrolee;

/// How long a join token is good for.
const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Appliance {
    /// A new join token, `<secret>.<fingerprint hex>`, good for [`TOKEN_TTL`].
    pub fn issue_node_token(&self) -> String {
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = hex::encode(raw);
        let now = Instant::now();
        let mut tokens = lock(&self.node_tokens);
        tokens.retain(|(_, exp)| *exp > now);
        tokens.push((secret.clone(), now + TOKEN_TTL));
        let fp = self.identity.fingerprint();
        format!("{secret}.{}", fp.trim_start_matches("sha256:"))
    }

    /// The user a render request acts for, and whether the caller may see every job.
    fn render_user(caller: &Caller) -> (String, bool) {
        match caller {
            Caller::Device { device, role } => (device.user.clone(), *role == Role::Admin),
            Caller::Session { user, role, .. } => (user.clone(), *role == Role::Admin),
            _ => ("admin".into(), true),
        }
    }

    fn own_job(&self, caller: &Caller, job: u64) -> Result<(), ApiError> {
        let (user, all) = Self::render_user(caller);
        match self.render.owner(job) {
            None => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no render job {job}"),
            )),
            Some(owner) if all || owner == user => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("render job {job} belongs to another user"),
            )),
        }
    }

    async fn render_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::render::RenderFarm) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let r = self.render.clone();
        tokio::task::spawn_blocking(move || f(&r))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
    }

    /// Runs a render request (dispatched here by [`Appliance::handle`]).
    pub(super) async fn render_request(
        &self,
        conv: &mut Conversation,
        actor: String,
        req: Request,
    ) -> Result<Response, ApiError> {
        let conn = conv.conn.as_ref().map(|c| c.1).unwrap_or(0);
        // A node moving files is alive, though its heartbeat waits behind them.
        let node = match &conv.caller {
            Caller::Node { id, .. } => Some(id.clone()),
            _ => None,
        };
        match req {
            Request::BlobPut {
                hash,
                offset,
                data,
                last,
            } => {
                self.render_blocking(move |r| {
                    r.node_alive(node.as_deref());
                    r.blobs
                        .put(conn, &hash, offset, &data, last)
                        .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))
                })
                .await?;
                Ok(Response::Done)
            }
            Request::BlobMissing { hashes } => {
                if hashes.len() > 100_000 {
                    return Err(ApiError::new(
                        ErrorCode::InvalidArgument,
                        "at most 100,000 hashes at once",
                    ));
                }
                let missing = self
                    .render_blocking(move |r| {
                        r.node_alive(node.as_deref());
                        Ok(hashes.into_iter().filter(|h| !r.blobs.has(h)).collect())
                    })
                    .await?;
                Ok(Response::Missing(missing))
            }
            Request::BlobGet { hash, offset, len } => {
                let bytes = self
                    .render_blocking(move |r| {
                        r.node_alive(node.as_deref());
                        r.blobs
                            .get(&hash, offset, len)
                            .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))
                    })
                    .await?;
                Ok(Response::Bytes(bytes))
            }
            Request::RenderSubmit(sub) => {
                let (me, admin) = Self::render_user(&conv.caller);
                let user = match &sub.user {
                    Some(u) if *u != me && !admin => {
                        return Err(ApiError::new(
                            ErrorCode::Forbidden,
                            "only an administrator may submit jobs for another user",
                        ))
                    }
                    Some(u) => {
                        self.require_user(u).await?;
                        u.clone()
                    }
                    None => me,
                };
                let sub: JobSubmission = sub;
                let detail = self
                    .render_blocking(move |r| r.submit(&user, actor, sub))
                    .await?;
                Ok(Response::RenderJob(detail))
            }
            Request::RenderList => {
                let (user, all) = Self::render_user(&conv.caller);
                let jobs = self
                    .render_blocking(move |r| Ok(r.list((!all).then_some(user.as_str()))))
                    .await?;
                Ok(Response::RenderJobs(jobs))
            }
            Request::RenderShow { job } => {
                self.own_job(&conv.caller, job)?;
                Ok(Response::RenderJob(
                    self.render_blocking(move |r| r.show(job)).await?,
                ))
            }
            Request::RenderWatch { job, seen, wait_ms } => {
                self.own_job(&conv.caller, job)?;
                let wait = std::time::Duration::from_millis(wait_ms.into());
                Ok(Response::RenderSummary(
                    self.render.watch(job, seen, wait).await?,
                ))
            }
            Request::RenderControl { job, action } => {
                self.own_job(&conv.caller, job)?;
                Ok(Response::RenderJob(
                    self.render_blocking(move |r| r.control(job, action, actor))
                        .await?,
                ))
            }
            Request::RenderNodes => Ok(Response::RenderNodes(self.node_infos().await?)),
            Request::RenderNodeToken => {
                let token = self.issue_node_token();
                let a = audit(actor, "node-token", "render node join token issued".into());
                self.blocking(move |s| s.audit(&a))
                    .await
                    .map_err(internal)?;
                Ok(Response::NodeToken {
                    token,
                    expires_in_secs: TOKEN_TTL.as_secs(),
                })
            }
            Request::NodeJoin {
                secret,
                name,
                csr_der,
            } => self.node_join(conv, secret, name, csr_der).await,
            Request::NodeWork(w) => {
                let Caller::Node { id, .. } = &conv.caller else {
                    unreachable!("authorized for nodes only")
                };
                Ok(Response::Work(self.render.node_work(id.clone(), *w).await?))
            }
            _ => unreachable!("render_request got a request it does not handle"),
        }
    }

    async fn node_join(
        &self,
        conv: &Conversation,
        secret: String,
        name: String,
        csr_der: Vec<u8>,
    ) -> Result<Response, ApiError> {
        self.check_node_token(&conv.caller, &secret, &name).await?;
        let (node_id, cert_der) = self
            .enrol_key(&conv.caller, Enrolee::Node, &csr_der, &name, |id, name| {
                format!("render node {id} ({name}) joined")
            })
            .await?;
        tracing::info!(node = %node_id, %name, "render node joined");
        Ok(Response::NodeJoined {
            node_id,
            cert_der,
            ca_der: self.identity.ca_der().to_vec(),
        })
    }

    async fn node_infos(&self) -> Result<Vec<NodeInfo>, ApiError> {
        let devices = self.blocking(|s| s.devices()).await.map_err(internal)?;
        let live = self.render.live_nodes();
        Ok(devices
            .into_iter()
            .filter(|d| is_render_node(&d.id))
            .map(|d| {
                let l = live.iter().find(|l| l.id == d.id);
                NodeInfo {
                    state: match l {
                        _ if d.revoked_at.is_some() => "revoked",
                        None => "offline",
                        Some(l) if l.running.is_some() => "busy",
                        Some(_) => "idle",
                    }
                    .into(),
                    caps: l.map(|l| l.caps.clone()).unwrap_or_default(),
                    running: l.and_then(|l| l.running.clone()),
                    id: d.id,
                    name: d.name,
                    joined_at: d.paired_at,
                }
            })
            .collect())
    }
}
