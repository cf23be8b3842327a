//! The control stream: Hello, then requests and responses, over any byte stream.
//!
//! The same loop serves QUIC streams from tablets and Unix sockets from the admin CLI. It
//! reads frames with the sans-IO [`FrameDecoder`], insists on [`ClientMessage::Hello`] first,
//! and hands each request to [`Appliance::handle`]. Anything a well-behaved client never
//! sends ends the conversation with a [`ControlError`], which the transport turns into a
//! [`CloseCode`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use periphery_protocol::{
    encode_frame, negotiate, ClientMessage, CloseCode, DecodeError, FrameError, MalformedMessage,
    MessageDecoder, ServerMessage, VersionMismatch, Welcome, DEFAULT_MAX_FRAME, MAX_SERVER_FRAME,
    MIN_NODE_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

use crate::appliance::{Appliance, Caller, Conversation};

/// How long a client has to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a conversation ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The byte stream is not a sequence of frames.
    #[error("bad framing")]
    Frame(#[from] FrameError),
    /// A frame is not a valid message.
    #[error("bad message")]
    Malformed(#[from] MalformedMessage),
    /// A valid message where it is not allowed.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// No common version.
    #[error("version negotiation failed")]
    Version(#[from] VersionMismatch),
    /// No Hello in time, or an unpaired connection outstayed its window.
    #[error("timed out")]
    Timeout,
    /// The transport failed.
    #[error("stream failed")]
    Io(#[from] std::io::Error),
}

impl From<DecodeError> for ControlError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Frame(e) => ControlError::Frame(e),
            DecodeError::Malformed(e) => ControlError::Malformed(e),
        }
    }
}

impl ControlError {
    /// The close code to end the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ControlError::Frame(e) => CloseCode::from(e),
            ControlError::Malformed(_) => CloseCode::Malformed,
            ControlError::Violation(_) => CloseCode::ProtocolViolation,
            ControlError::Version(_) => CloseCode::UnsupportedVersion,
            ControlError::Timeout => CloseCode::Timeout,
            ControlError::Io(_) => CloseCode::Internal,
        }
    }

    /// The reason sent with the close: the code's phrase and, where it helps, the detail.
    pub fn reason(&self) -> String {
        match self {
            ControlError::Frame(e) => e.to_string(),
            ControlError::Version(e) => e.to_string(),
            ControlError::Violation(v) => format!("protocol violation: {v}"),
            other => other.close_code().reason().to_owned(),
        }
    }
}

struct Reader<R> {
    inner: R,
    dec: MessageDecoder<ClientMessage>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next message, or `None` at a clean end of stream.
    async fn next(&mut self) -> Result<Option<ClientMessage>, ControlError> {
        loop {
            if let Some(msg) = self.dec.next_message()? {
                return Ok(Some(msg));
            }
            let n = self.inner.read(&mut self.buf).await?;
            if n == 0 {
                self.dec.finish()?;
                return Ok(None);
            }
            self.dec.push(&self.buf[..n]);
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &ServerMessage) -> Result<(), ControlError> {
    let bytes = match encode_frame(msg, MAX_SERVER_FRAME) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "response too large to send");
            return Err(ControlError::Io(std::io::Error::other(e)));
        }
    };
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Serves one control stream until the client ends it or misbehaves.
pub async fn serve<R, W>(
    app: &Appliance,
    conv: &mut Conversation,
    read: R,
    mut write: W,
) -> Result<(), ControlError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut r = Reader {
        inner: read,
        dec: MessageDecoder::new(DEFAULT_MAX_FRAME),
        buf: vec![0u8; 16 * 1024],
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, r.next()).await {
        Err(_) => return Err(ControlError::Timeout),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(ClientMessage::Hello(h)))) => h,
        Ok(Ok(Some(_))) => return Err(ControlError::Violation("the first message must be Hello")),
        Ok(Err(e)) => return Err(e),
    };
    let version = negotiate(&hello)?;
    if matches!(conv.caller, Caller::Node { .. }) && version < MIN_NODE_PROTOCOL_VERSION {
        return Err(ControlError::Version(VersionMismatch {
            peer_min: hello.min_version,
            peer_max: hello.max_version,
            our_min: MIN_NODE_PROTOCOL_VERSION,
            our_max: PROTOCOL_VERSION,
        }));
    }
    tracing::debug!(software = %hello.software, version, "hello");
    send(
        &mut write,
        &ServerMessage::Welcome(Welcome {
            version,
            appliance: app.config.name.clone(),
            fingerprint: app.identity.fingerprint().to_owned(),
            identity: conv.caller.identity(),
        }),
    )
    .await?;
    loop {
        let msg = match conv.notices.as_mut() {
            Some(notices) => tokio::select! {
                m = r.next() => m?,
                n = notices.recv() => {
                    match n {
                        Some(n) => send(&mut write, &ServerMessage::Notice(n)).await?,
                        None => conv.notices = None,
                    }
                    continue;
                }
            },
            None => r.next().await?,
        };
        let Some(msg) = msg else { break };
        let ClientMessage::Request { id, body } = msg else {
            return Err(ControlError::Violation("Hello sent twice"));
        };
        let name = body.name();
        let result = app.handle(conv, body).await;
        match &result {
            Ok(_) => tracing::debug!(request = name, "done"),
            Err(e) => tracing::debug!(request = name, error = %e, "refused"),
        }
        send(&mut write, &ServerMessage::Response { id, body: result }).await?;
    }
    write.shutdown().await.ok();
    Ok(())
}
