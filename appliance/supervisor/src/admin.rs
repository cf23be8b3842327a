//! The local admin socket: `<state>/admin.sock`, mode 0600, in a 0700 state directory.
//!
//! The server side accepts connections from the state directory's owner (or root) and serves
//! them as [`Caller::LocalAdmin`](crate::appliance::Caller::LocalAdmin) through the same
//! control loop as QUIC. The client side is what the admin CLI commands use.

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

/// The socket's path in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
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
    let path = socket_path(state_dir);
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
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Serves admin connections until `shutdown` turns true.
pub async fn run(
    app: Arc<Appliance>,
    listener: UnixListener,
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
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read admin peer credentials");
                continue;
            }
        };
        if uid != 0 && uid != owner {
            tracing::warn!(uid, "refused an admin connection from another user");
            continue;
        }
        let app = app.clone();
        let span = tracing::info_span!("admin", uid);
        tokio::spawn(
            async move {
                let (r, w) = stream.into_split();
                let mut conv = Conversation::new(Caller::LocalAdmin { uid });
                if let Err(e) = control::serve(&app, &mut conv, r, w).await {
                    tracing::warn!(error = %e, reason = %e.reason(), "admin connection ended badly");
                }
            }
            .instrument(span),
        );
    }
    let _ = std::fs::remove_file(socket_path(&app.config.state_dir));
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
        let path = socket_path(state_dir);
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
