//! Bad input on the wire: each misbehaving connection is closed with its error code, and a
//! well-behaved tablet connected at the same time keeps working.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::time::Duration;

use periphery_e2e::{Daemon, DaemonOptions, RenderNode, Tablet};
use periphery_protocol::{
    encode_frame, ClientMessage, CloseCode, Hello, Request, Response, DEFAULT_MAX_FRAME,
};
use periphery_tablet::session::{connect, Session};
use periphery_tablet::tls::{first_contact, SeenCert};

/// Sends `bytes` on a fresh unpaired connection's first stream (then ends the stream if
/// `finish`), and returns the close code the appliance ended the connection with.
async fn close_code_for(d: &Daemon, bytes: &[u8], finish: bool) -> (u32, String) {
    let cfg = first_contact(SeenCert::default()).unwrap();
    let (conn, _endpoint) = connect(d.banner.addr, cfg).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // A write may fail once the appliance has closed; the close reason is what matters.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    let err = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the appliance did not close the connection");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner() as u32,
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("closed without an application code: {other}"),
    }
}

fn frame(m: &ClientMessage) -> Vec<u8> {
    encode_frame(m, DEFAULT_MAX_FRAME).unwrap()
}

/// A hello speaking exactly this build's version.
fn hello_now() -> ClientMessage {
    hello(
        periphery_protocol::PROTOCOL_VERSION,
        periphery_protocol::PROTOCOL_VERSION,
    )
}

fn hello(min: u16, max: u16) -> ClientMessage {
    ClientMessage::Hello(Hello {
        min_version: min,
        max_version: max,
        software: "wire-test".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    let t = Tablet::new(&dir.path().join("t"));
    t.pair(&d, &d.pair_code("alice"));
    let cfg = t.client_config();
    // The well-behaved tablet stays connected through all of it.
    let mut good = Session::connect(d.banner.addr, cfg).await.unwrap();

    let request = frame(&ClientMessage::Request {
        id: 1,
        body: Request::Whoami,
    });
    let mut oversize = ((DEFAULT_MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    oversize.extend_from_slice(&[0u8; 64]);
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0u8; 10]);
    let mut garbage_payload = 8u32.to_be_bytes().to_vec();
    garbage_payload.extend_from_slice(&[0xff; 8]);
    let mut twice = frame(&hello_now());
    twice.extend_from_slice(&frame(&hello_now()));

    let cases: Vec<(&str, Vec<u8>, bool, CloseCode)> = vec![
        (
            "garbage payload",
            garbage_payload,
            false,
            CloseCode::Malformed,
        ),
        (
            "frame over the maximum",
            oversize,
            false,
            CloseCode::FrameTooLarge,
        ),
        ("truncated frame", truncated, true, CloseCode::Truncated),
        (
            "unknown protocol version",
            frame(&hello(99, 99)),
            false,
            CloseCode::UnsupportedVersion,
        ),
        (
            "request before hello",
            request,
            false,
            CloseCode::ProtocolViolation,
        ),
        ("hello twice", twice, false, CloseCode::ProtocolViolation),
    ];
    for (what, bytes, finish, want) in cases {
        let (code, reason) = close_code_for(&d, &bytes, finish).await;
        assert_eq!(
            CloseCode::from_u32(code),
            Some(want),
            "{what}: closed with {code} ({reason})"
        );
        if want == CloseCode::UnsupportedVersion {
            assert!(reason.contains("99..=99"), "{reason}");
        }
        // The good tablet is unaffected.
        let r = good.request(Request::Whoami).await.unwrap();
        assert!(matches!(r, Response::Whoami(_)), "{what}: {r:?}");
    }

    // Random bytes: whatever they say, the connection is closed with an error code.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..8 {
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        let (code, reason) = close_code_for(&d, &bytes, true).await;
        let c = CloseCode::from_u32(code);
        assert!(
            matches!(
                c,
                Some(
                    CloseCode::Malformed
                        | CloseCode::FrameTooLarge
                        | CloseCode::Truncated
                        | CloseCode::ProtocolViolation
                        | CloseCode::UnsupportedVersion
                )
            ),
            "random round {round}: closed with {code} ({reason})"
        );
    }
    assert!(matches!(
        good.request(Request::Whoami).await.unwrap(),
        Response::Whoami(_)
    ));
    good.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaired_connection_is_closed_after_its_window_and_paired_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some("[pairing]\nunpaired_window_secs = 1\n".into()),
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "alice", "--no-password"]);
    let t = Tablet::new(&dir.path().join("t"));
    t.pair(&d, &d.pair_code("alice"));
    let cfg = t.client_config();
    let mut good = Session::connect(d.banner.addr, cfg).await.unwrap();

    // An unpaired peer says hello and then nothing: closed with Timeout after its window.
    let (code, reason) = close_code_for(&d, &frame(&hello_now()), false).await;
    assert_eq!(
        CloseCode::from_u32(code),
        Some(CloseCode::Timeout),
        "{reason}"
    );
    // The paired session opened before it is still served.
    assert!(matches!(
        good.request(Request::Whoami).await.unwrap(),
        Response::Whoami(_)
    ));
    good.close().await;
}

/// A render node of protocol version 1 (its calls had another shape) is told at its hello
/// which version render nodes need; a tablet of version 1 is still spoken to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_node_of_version_1_is_refused_at_its_hello() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    let mut node = RenderNode::start(&d, dir.path(), "old", None);
    node.kill();
    let home = dir.path().join("old");
    let read = |f: &str| std::fs::read(home.join(f)).unwrap();
    let cfg = periphery_tablet::tls::pinned(
        &read("appliance-ca.crt"),
        &read("node.crt"),
        &read("node.key"),
    )
    .unwrap();
    let (conn, _endpoint) = connect(d.banner.addr, cfg).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(&frame(&hello(1, 1))).await;
    let err = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the appliance did not close the connection");
    let quinn::ConnectionError::ApplicationClosed(c) = err else {
        panic!("closed without an application code: {err}");
    };
    assert_eq!(
        CloseCode::from_u32(c.error_code.into_inner() as u32),
        Some(CloseCode::UnsupportedVersion)
    );
    let reason = String::from_utf8_lossy(&c.reason);
    let need = format!(
        "{}..={}",
        periphery_protocol::MIN_NODE_PROTOCOL_VERSION,
        periphery_protocol::PROTOCOL_VERSION
    );
    assert!(
        reason.contains("1..=1") && reason.contains(&need),
        "{reason}"
    );

    // A tablet of version 1 (unpaired here) is welcomed with version 1.
    let cfg = first_contact(SeenCert::default()).unwrap();
    let (conn, _endpoint) = connect(d.banner.addr, cfg).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(&hello(1, 1))).await.unwrap();
    let mut dec =
        periphery_protocol::MessageDecoder::<periphery_protocol::ServerMessage>::new(1 << 20);
    let welcome = loop {
        let mut buf = [0u8; 4096];
        let n = recv.read(&mut buf).await.unwrap().expect("a welcome");
        dec.push(&buf[..n]);
        if let Some(m) = dec.next_message().unwrap() {
            break m;
        }
    };
    match welcome {
        periphery_protocol::ServerMessage::Welcome(w) => assert_eq!(w.version, 1),
        other => panic!("{other:?}"),
    }
}
