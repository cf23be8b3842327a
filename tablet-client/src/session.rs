//! A control-stream session with an appliance: connect, Hello/Welcome, request/response.

use std::net::SocketAddr;

use periphery_protocol::{
    encode_frame, hello, ApiError, ClientMessage, CloseCode, MessageDecoder, Request, Response,
    ServerMessage, Welcome, DEFAULT_MAX_FRAME, MAX_SERVER_FRAME, SERVER_NAME,
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

/// An open control stream.
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: MessageDecoder<ServerMessage>,
    next_id: u32,
    /// The appliance's welcome.
    pub welcome: Welcome,
    _endpoint: quinn::Endpoint,
}

impl Session {
    /// Connects to `addr` with `config`, opens the control stream and says hello.
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<Self, SessionError> {
        let (conn, endpoint) = connect(addr, config).await?;
        let (send, recv) = conn.open_bi().await.map_err(SessionError::Connection)?;
        let mut s = Self {
            conn,
            send,
            recv,
            dec: MessageDecoder::new(MAX_SERVER_FRAME),
            next_id: 1,
            welcome: Welcome {
                version: 0,
                appliance: String::new(),
                fingerprint: String::new(),
                identity: None,
            },
            _endpoint: endpoint,
        };
        s.send(&ClientMessage::Hello(hello(concat!(
            "periphery-tablet ",
            env!("CARGO_PKG_VERSION")
        ))))
        .await?;
        match s.recv().await? {
            ServerMessage::Welcome(w) => s.welcome = w,
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        }
        Ok(s)
    }

    fn lost(&self, what: String) -> SessionError {
        match self.conn.close_reason() {
            Some(e) => SessionError::Connection(e),
            None => SessionError::Stream(what),
        }
    }

    async fn send(&mut self, m: &ClientMessage) -> Result<(), SessionError> {
        let bytes = encode_frame(m, DEFAULT_MAX_FRAME)
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        if let Err(e) = self.send.write_all(&bytes).await {
            return Err(self.lost(e.to_string()));
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<ServerMessage, SessionError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(m) = self
                .dec
                .next_message()
                .map_err(|e| SessionError::Protocol(e.to_string()))?
            {
                return Ok(m);
            }
            match self.recv.read(&mut buf).await {
                Ok(None) => {
                    // Wait briefly for the close frame that explains why.
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(2), self.conn.closed())
                            .await;
                    return Err(self.lost("the appliance ended the stream".into()));
                }
                Ok(Some(n)) => self.dec.push(&buf[..n]),
                Err(e) => {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(2), self.conn.closed())
                            .await;
                    return Err(self.lost(e.to_string()));
                }
            }
        }
    }

    /// Runs one request.
    pub async fn request(&mut self, body: Request) -> Result<Response, SessionError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&ClientMessage::Request { id, body }).await?;
        match self.recv().await? {
            ServerMessage::Response { id: rid, body } if rid == id => Ok(body?),
            other => Err(SessionError::Protocol(format!("{other:?}"))),
        }
    }

    /// Ends the session politely and waits until the appliance has seen it.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.conn.close(CloseCode::Normal.as_u32().into(), b"bye");
        self._endpoint.wait_idle().await;
    }
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
