//! A control-stream session with an appliance: connect, Hello/Welcome, request/response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use periphery_protocol::{
    encode_frame, hello, ApiError, ClientMessage, CloseCode, MessageDecoder, Notice, Request,
    Response, ServerMessage, Welcome, DEFAULT_MAX_FRAME, MAX_SERVER_FRAME, SERVER_NAME,
};

/// TLS alert codes that mean the appliance refused this device's certificate.
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_BAD_CERTIFICATE: u8 = 42;

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No QUIC endpoint could be created locally.
    #[error("cannot open a local UDP socket")]
    Endpoint(#[source] std::io::Error),
    /// The connection could not be started.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The appliance address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: quinn::ConnectError,
    },
    /// The connection failed or was closed by the appliance.
    #[error("{}", describe(.0))]
    Connection(#[source] quinn::ConnectionError),
    /// A stream failed.
    #[error("the control stream failed: {0}")]
    Stream(String),
    /// The appliance sent something this client does not understand.
    #[error("unexpected message from the appliance: {0}")]
    Protocol(String),
    /// The appliance refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] crate::tls::ClientTlsError),
}

impl SessionError {
    /// Whether the appliance refused this client's certificate at the handshake (revoked,
    /// or unknown): trying again will not help; pairing (or joining) again will.
    pub fn is_refused(&self) -> bool {
        let SessionError::Connection(quinn::ConnectionError::ConnectionClosed(c)) = self else {
            return false;
        };
        [
            ALERT_CERTIFICATE_REVOKED,
            ALERT_UNKNOWN_CA,
            ALERT_BAD_CERTIFICATE,
        ]
        .iter()
        .any(|a| c.error_code == quinn::TransportErrorCode::crypto(*a))
    }
}

/// A person's explanation of a connection failure.
pub fn describe(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as C;
    match e {
        C::ApplicationClosed(c) => {
            let code = u32::try_from(c.error_code.into_inner())
                .ok()
                .and_then(CloseCode::from_u32);
            let reason = String::from_utf8_lossy(&c.reason);
            match code {
                Some(code) => format!("the appliance closed the connection ({code:?}): {reason}"),
                None => format!("the appliance closed the connection: {reason}"),
            }
        }
        C::ConnectionClosed(c) => {
            let code = c.error_code;
            if code == quinn::TransportErrorCode::crypto(ALERT_CERTIFICATE_REVOKED) {
                "the appliance refused this device: it has been revoked (pair it again)".into()
            } else if code == quinn::TransportErrorCode::crypto(ALERT_UNKNOWN_CA)
                || code == quinn::TransportErrorCode::crypto(ALERT_BAD_CERTIFICATE)
            {
                "the appliance does not know this device (was it removed, or the appliance reset?); pair it again".into()
            } else {
                format!("the appliance closed the connection: {c}")
            }
        }
        C::TimedOut => {
            "no answer from the appliance (is it running, and is the address right?)".into()
        }
        other => format!("connection failed: {other}"),
    }
}

/// Resolves `host` or `host:port` (default port 4470).
pub async fn resolve(host: &str) -> std::io::Result<SocketAddr> {
    let with_port = if host.parse::<SocketAddr>().is_ok()
        || host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", periphery_protocol::DEFAULT_PORT)
    } else {
        format!("{host}:{}", periphery_protocol::DEFAULT_PORT)
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str()).await?;
    addrs
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))
}

/// Responses awaited, by request id.
type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Response, ApiError>>>>>;

/// An open control stream. A reader task takes every message the appliance sends: responses
/// go to the request waiting for them, notices (offers, detaches, ...) queue for
/// [`Session::next_notice`].
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    pending: Pending,
    notices: mpsc::UnboundedReceiver<Notice>,
    /// Why the reader stopped, once it has.
    ended: Arc<Mutex<Option<String>>>,
    next_id: u32,
    /// The appliance's welcome.
    pub welcome: Welcome,
    _endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// Connects without credentials as `software`, accepting the certificate the appliance
    /// shows, for the caller to bind by pairing or check against a fingerprint it knows
    /// (a join token's). Returns the session and that certificate (DER).
    pub async fn first_contact(
        addr: SocketAddr,
        software: &str,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let seen = crate::tls::SeenCert::default();
        let session =
            Self::connect_as(addr, crate::tls::first_contact(seen.clone())?, software).await?;
        let cert = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SessionError::Protocol("the appliance showed no certificate".into()))?;
        Ok((session, cert))
    }

    /// Connects to `addr` with `config`, opens the control stream and says hello as a
    /// tablet.
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<Self, SessionError> {
        Self::connect_as(
            addr,
            config,
            concat!("periphery-tablet ", env!("CARGO_PKG_VERSION")),
        )
        .await
    }

    /// Connects to `addr` with `config`, opens the control stream and says hello as
    /// `software` (name and version, for the appliance's logs).
    pub async fn connect_as(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        software: &str,
    ) -> Result<Self, SessionError> {
        let (conn, endpoint) = connect(addr, config).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(SessionError::Connection)?;
        let hello = ClientMessage::Hello(hello(software));
        write(&conn, &mut send, &hello).await?;
        let mut dec = MessageDecoder::new(MAX_SERVER_FRAME);
        let welcome = match read(&conn, &mut recv, &mut dec).await? {
            ServerMessage::Welcome(w) => w,
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        };
        let pending: Pending = Arc::default();
        let ended = Arc::new(Mutex::new(None));
        let (notices_tx, notices) = mpsc::unbounded_channel();
        tokio::spawn(reader(
            conn.clone(),
            recv,
            dec,
            pending.clone(),
            notices_tx,
            ended.clone(),
        ));
        Ok(Self {
            conn,
            send,
            pending,
            notices,
            ended,
            next_id: 1,
            welcome,
            _endpoint: endpoint,
        })
    }

    fn lost(&self) -> SessionError {
        match self.conn.close_reason() {
            Some(e) => SessionError::Connection(e),
            None => SessionError::Stream(
                lock(&self.ended)
                    .clone()
                    .unwrap_or_else(|| "the appliance ended the stream".into()),
            ),
        }
    }

    /// Runs one request.
    pub async fn request(&mut self, body: Request) -> Result<Response, SessionError> {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if let Err(e) = write(
            &self.conn,
            &mut self.send,
            &ClientMessage::Request { id, body },
        )
        .await
        {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match rx.await {
            Ok(r) => Ok(r?),
            Err(_) => {
                // The reader ended: wait briefly for the close frame that explains why.
                let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.closed()).await;
                Err(self.lost())
            }
        }
    }

    /// The next notice from the appliance, waiting up to `timeout`.
    pub async fn next_notice(&mut self, timeout: Duration) -> Option<Notice> {
        tokio::time::timeout(timeout, self.notices.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next notice; `None` once the session ended (cancel-safe, for `select!`).
    pub async fn recv_notice(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }

    /// A notice already received, without waiting.
    pub fn try_notice(&mut self) -> Option<Notice> {
        self.notices.try_recv().ok()
    }

    /// Ends the session politely and waits until the appliance has seen it.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.conn.close(CloseCode::Normal.as_u32().into(), b"bye");
        self._endpoint.wait_idle().await;
    }
}

async fn write(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    m: &ClientMessage,
) -> Result<(), SessionError> {
    let bytes =
        encode_frame(m, DEFAULT_MAX_FRAME).map_err(|e| SessionError::Protocol(e.to_string()))?;
    if let Err(e) = send.write_all(&bytes).await {
        return Err(match conn.close_reason() {
            Some(c) => SessionError::Connection(c),
            None => SessionError::Stream(e.to_string()),
        });
    }
    Ok(())
}

async fn read(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    dec: &mut MessageDecoder<ServerMessage>,
) -> Result<ServerMessage, SessionError> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(m) = dec
            .next_message()
            .map_err(|e| SessionError::Protocol(e.to_string()))?
        {
            return Ok(m);
        }
        let failure = match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                dec.push(&buf[..n]);
                continue;
            }
            Ok(None) => "the appliance ended the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        // Wait briefly for the close frame that explains why.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        return Err(match conn.close_reason() {
            Some(c) => SessionError::Connection(c),
            None => SessionError::Stream(failure),
        });
    }
}

/// Takes every message after the welcome: responses to their requests, notices to the queue.
async fn reader(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    mut dec: MessageDecoder<ServerMessage>,
    pending: Pending,
    notices: mpsc::UnboundedSender<Notice>,
    ended: Arc<Mutex<Option<String>>>,
) {
    let why = loop {
        match read(&conn, &mut recv, &mut dec).await {
            Ok(ServerMessage::Response { id, body }) => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(body);
                }
            }
            Ok(ServerMessage::Notice(n)) => {
                let _ = notices.send(n);
            }
            Ok(other) => break format!("unexpected message from the appliance: {other:?}"),
            Err(e) => break e.to_string(),
        }
    };
    *lock(&ended) = Some(why);
    // Requests still waiting learn that the stream is gone.
    lock(&pending).clear();
}

/// Opens a QUIC connection (no stream yet). Returns the endpoint too: it must outlive the
/// connection.
pub async fn connect(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<(quinn::Connection, quinn::Endpoint), SessionError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap_or_else(|_| unreachable!())
    } else {
        "0.0.0.0:0".parse().unwrap_or_else(|_| unreachable!())
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(SessionError::Endpoint)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|source| SessionError::Connect { addr, source })?
        .await
        .map_err(SessionError::Connection)?;
    Ok((conn, endpoint))
}
