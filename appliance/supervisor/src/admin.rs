//! The local sockets: `<state>/admin.sock` (mode 0600) and `<state>/session.sock` (0666).
//!
//! The admin socket accepts connections from the state directory's owner (or root) and serves
//! them as [`Caller::LocalAdmin`](crate::appliance::Caller::LocalAdmin). The session socket is
//! what a workstation's own processes reach (`PERIPHERY_SOCKET` in their environment): a peer
//! is taken to be the owner of the workstation its process belongs to (the marker in its
//! environment, and the uid that workstation runs as, must both say so), and may run render
//! requests as that user ([`Caller::Session`](crate::appliance::Caller::Session)). Both are
//! served by the same control loop as QUIC. The client side is what the CLI commands use;
//! it dials `PERIPHERY_SOCKET` when that is set (inside a workstation), else the admin socket.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;

use periphery_protocol::{
    encode_frame, hello, ApiError, ClientMessage, MessageDecoder, Request, Response, ServerMessage,
    Welcome, DEFAULT_MAX_FRAME, MAX_SERVER_FRAME,
};

use crate::appliance::{Appliance, Caller, Conversation};
use crate::control;

/// The admin socket's path in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

/// The session socket's path in a state directory.
pub fn session_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("session.sock")
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindAdminError {
    /// Another daemon answers on it.
    #[error("another periphery daemon is already serving {0}")]
    InUse(PathBuf),
    /// Binding or setting permissions failed.
    #[error("cannot create the admin socket {path}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the admin socket, replacing a stale one left by a crash.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, BindAdminError> {
    bind_at(socket_path(state_dir), 0o600).await
}

/// Binds the session socket (anyone may connect; who they are is checked per connection).
pub async fn bind_sessions(state_dir: &Path) -> Result<UnixListener, BindAdminError> {
    bind_at(session_socket_path(state_dir), 0o666).await
}

async fn bind_at(path: PathBuf, mode: u32) -> Result<UnixListener, BindAdminError> {
    let io = |source| BindAdminError::Io {
        path: path.clone(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(BindAdminError::InUse(path));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let l = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(l)
}

/// Which socket is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `admin.sock`: the state directory's owner or root, as the local administrator.
    Admin,
    /// `session.sock`: a workstation's processes, as its owner.
    Session,
}

/// Who a peer of a session socket is: the owner of the workstation its process belongs to.
async fn session_caller(app: &Appliance, pid: Option<i32>, uid: u32) -> Option<Caller> {
    let id = app.workstations.workstation_of_process(pid?)?;
    let rec = app.workstations.record(&id).await?;
    if uid != 0 && uid != app.workstations.process_uid(&rec) {
        // A process claiming another workstation's marker.
        return None;
    }
    let u = rec.user.clone();
    let role = app.blocking(move |s| s.user(&u)).await.ok().flatten()?.role;
    Some(Caller::Session {
        user: rec.user,
        role,
        ws: rec.name,
    })
}

/// Serves connections on `listener` until `shutdown` turns true.
pub async fn run(
    app: Arc<Appliance>,
    listener: UnixListener,
    kind: SocketKind,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let owner = std::fs::metadata(&app.config.state_dir)
        .map(|m| m.uid())
        .unwrap_or(0);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (uid, pid) = match stream.peer_cred() {
            Ok(c) => (c.uid(), c.pid()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read local peer credentials");
                continue;
            }
        };
        let app = app.clone();
        let span = tracing::info_span!("local", ?kind, uid);
        tokio::spawn(
            async move {
                let caller = match kind {
                    SocketKind::Admin if uid == 0 || uid == owner => Caller::LocalAdmin { uid },
                    SocketKind::Admin => {
                        tracing::warn!("refused an admin connection from another user");
                        return;
                    }
                    SocketKind::Session => match session_caller(&app, pid, uid).await {
                        Some(c) => c,
                        None => {
                            tracing::warn!(?pid, "refused a session-socket peer that is no workstation's");
                            return;
                        }
                    },
                };
                let (r, w) = stream.into_split();
                let mut conv = Conversation::new(caller);
                if let Err(e) = control::serve(&app, &mut conv, r, w).await {
                    tracing::warn!(error = %e, reason = %e.reason(), "local connection ended badly");
                }
            }
            .instrument(span),
        );
    }
    let _ = std::fs::remove_file(match kind {
        SocketKind::Admin => socket_path(&app.config.state_dir),
        SocketKind::Session => session_socket_path(&app.config.state_dir),
    });
}

/// Why an admin request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// No daemon answers on the socket.
    #[error("cannot reach the periphery daemon at {path} (is `periphery serve` running with this --state-dir?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The conversation failed.
    #[error("the daemon connection failed")]
    Io(#[from] std::io::Error),
    /// The daemon sent something unexpected.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A connection to the daemon's admin socket.
pub struct AdminClient {
    stream: UnixStream,
    dec: MessageDecoder<ServerMessage>,
    next_id: u32,
    /// The daemon's welcome.
    pub welcome: Welcome,
}

impl AdminClient {
    /// Connects and says hello.
    pub async fn connect(state_dir: &Path) -> Result<Self, AdminClientError> {
        let path = std::env::var_os("PERIPHERY_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| socket_path(state_dir));
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| AdminClientError::Connect { path, source })?;
        let mut c = Self {
            stream,
            dec: MessageDecoder::new(MAX_SERVER_FRAME),
            next_id: 1,
            welcome: Welcome {
                version: 0,
                appliance: String::new(),
                fingerprint: String::new(),
                identity: None,
            },
        };
        c.send(&ClientMessage::Hello(hello(concat!(
            "periphery-cli ",
            env!("CARGO_PKG_VERSION")
        ))))
        .await?;
        match c.recv().await? {
            ServerMessage::Welcome(w) => c.welcome = w,
            other => return Err(AdminClientError::Protocol(format!("{other:?}"))),
        }
        Ok(c)
    }

    async fn send(&mut self, m: &ClientMessage) -> Result<(), AdminClientError> {
        let bytes = encode_frame(m, DEFAULT_MAX_FRAME)
            .map_err(|e| AdminClientError::Protocol(e.to_string()))?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<ServerMessage, AdminClientError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(m) = self
                .dec
                .next_message()
                .map_err(|e| AdminClientError::Protocol(e.to_string()))?
            {
                return Ok(m);
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Err(AdminClientError::Protocol(
                    "the daemon closed the connection".into(),
                ));
            }
            self.dec.push(&buf[..n]);
        }
    }

    /// Runs one request.
    pub async fn request(&mut self, body: Request) -> Result<Response, AdminClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&ClientMessage::Request { id, body }).await?;
        match self.recv().await? {
            ServerMessage::Response { id: rid, body } if rid == id => Ok(body?),
            other => Err(AdminClientError::Protocol(format!("{other:?}"))),
        }
    }
}

impl periphery_client::render_cli::Requester for AdminClient {
    type Error = AdminClientError;
    fn request(
        &mut self,
        body: Request,
    ) -> impl std::future::Future<Output = Result<Response, Self::Error>> {
        AdminClient::request(self, body)
    }
}
