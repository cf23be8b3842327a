//! The QUIC endpoint: accepts connections, identifies them, and serves their control stream.
//!
//! One task per connection, inside a `conn` span with the remote address and device. A
//! connection whose client misbehaves is closed with the matching
//! [`CloseCode`](periphery_protocol::CloseCode); other connections are not affected.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tracing::Instrument;

use periphery_protocol::pairing::fingerprint;
use periphery_protocol::CloseCode;

use crate::appliance::{Appliance, Caller, Conversation};
use crate::control::{self, HELLO_TIMEOUT};

/// Accepts connections until `shutdown` turns true.
pub async fn run(
    app: Arc<Appliance>,
    endpoint: quinn::Endpoint,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tokio::spawn(handle(app.clone(), incoming));
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    endpoint.close(
        CloseCode::ShuttingDown.as_u32().into(),
        CloseCode::ShuttingDown.reason().as_bytes(),
    );
    // Give peers a moment to receive the close.
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| fingerprint(c))
}

async fn handle(app: Arc<Appliance>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Includes refused device certificates; the verifier logged those.
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let caller = app.identify(remote, peer_fingerprint(&conn)).await;
    let device = match &caller {
        Caller::Device { device, .. } => format!("{}@{}", device.user, device.id),
        Caller::Node { id, .. } => format!("node {id}"),
        _ => "unpaired".to_owned(),
    };
    let span = tracing::info_span!("conn", %remote, %device);
    async move {
        tracing::debug!("connected");
        let (id, notices) = app.register(remote, &caller);
        let unpaired = matches!(caller, Caller::Unpaired { .. });
        let mut conv = Conversation::new(caller);
        conv.notices = Some(notices);
        if !unpaired {
            conv.conn = Some((conn.clone(), id));
            tokio::spawn(accept_input(app.clone(), conn.clone(), id));
        }
        let outcome = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
            Err(_) => Err((CloseCode::Timeout, "no control stream".to_owned())),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "closed before opening a stream");
                Ok(())
            }
            Ok(Ok((send, recv))) => {
                let serve = control::serve(&app, &mut conv, recv, send);
                let served = if unpaired {
                    // Long enough to type a code or a password, short enough that unpaired
                    // peers cannot hoard connections.
                    tokio::time::timeout(app.config.unpaired_window, serve)
                        .await
                        .unwrap_or(Err(control::ControlError::Timeout))
                } else {
                    serve.await
                };
                served.map_err(|e| (e.close_code(), e.reason()))
            }
        };
        match outcome {
            Ok(()) => {
                // The client ended its side; let it close the connection (it has our last
                // response) or time out.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                conn.close(CloseCode::Normal.as_u32().into(), b"bye");
            }
            Err(_) if conn.close_reason().is_some() => {
                // The client closed the connection while we were reading: it left.
                tracing::debug!(reason = ?conn.close_reason(), "client closed the connection");
            }
            Err((code, reason)) => {
                tracing::warn!(close = ?code, %reason, "closing a misbehaving connection");
                conn.close(code.as_u32().into(), reason.as_bytes());
            }
        }
        app.streaming.connection_closed(id).await;
        app.unregister(id);
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await;
}

/// Reads the input streams a tablet opens and hands each event to the streaming layer, which
/// validates and applies it. Rejected events are counted and logged at debug level: a
/// misbehaving tablet cannot make the log grow without bound.
async fn accept_input(app: Arc<Appliance>, conn: quinn::Connection, conn_id: u64) {
    use periphery_protocol::media::{InputMessage, MAX_MEDIA_HEADER, STREAM_INPUT};
    while let Ok(mut recv) = conn.accept_uni().await {
        let app = app.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() || kind[0] != STREAM_INPUT {
                let _ = recv.stop(quinn::VarInt::from_u32(
                    CloseCode::ProtocolViolation.as_u32(),
                ));
                return;
            }
            let mut dec = periphery_protocol::MessageDecoder::<InputMessage>::new(MAX_MEDIA_HEADER);
            let mut buf = vec![0u8; 16 * 1024];
            let mut rejected = 0u64;
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => dec.push(&buf[..n]),
                    _ => break,
                }
                loop {
                    match dec.next_message() {
                        Ok(Some(msg)) => {
                            if let Err(why) = app.streaming.input(conn_id, &msg) {
                                rejected += 1;
                                if rejected <= 3 {
                                    tracing::debug!(%why, "input rejected");
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed input stream");
                            let _ =
                                recv.stop(quinn::VarInt::from_u32(CloseCode::Malformed.as_u32()));
                            return;
                        }
                    }
                }
            }
            if rejected > 0 {
                tracing::info!(rejected, "input events rejected on this stream");
            }
        });
    }
}
