//! Device identity over time: mTLS after a restart, revocation, and users kept apart.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use periphery_e2e::{Daemon, DaemonOptions, Tablet};
use periphery_protocol::{ErrorCode, Request, Response, Role};
use periphery_tablet::home::Home;
use periphery_tablet::session::{Session, SessionError};

fn pinned_session(t: &Tablet) -> impl std::future::Future<Output = Result<Session, SessionError>> {
    let c = Home::new(t.home.clone()).load().unwrap();
    async move {
        let addr = c.pairing.address.parse().unwrap();
        let cfg = periphery_tablet::tls::pinned(&c.ca_der, &c.cert_der, &c.key_der).unwrap();
        Session::connect(addr, cfg).await
    }
}

fn api_code(r: Result<Response, SessionError>) -> ErrorCode {
    match r {
        Err(SessionError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn reconnect_with_mtls_after_the_daemon_restarts_and_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = Daemon::start(&state, DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    let t = Tablet::new(&dir.path().join("t"));
    t.pair(&d, &d.pair_code("alice"));
    let who = t.ok(&["whoami"]);
    let (addr, fp) = (d.address(), d.banner.fingerprint.clone());

    // A clean stop, then a restart on the same address: same identity, same device.
    d.stop();
    let opts = DaemonOptions {
        listen: Some(addr.clone()),
        ..Default::default()
    };
    let d = Daemon::start(&state, opts.clone());
    assert_eq!(d.banner.fingerprint, fp, "the appliance identity changed");
    assert_eq!(t.ok(&["whoami"]), who);

    // SIGKILL, then a restart: the same again.
    d.kill();
    let d = Daemon::start(&state, opts);
    assert_eq!(d.banner.fingerprint, fp);
    assert_eq!(t.ok(&["whoami"]), who);
    assert!(d.ok(&["device", "list"]).contains("last seen"));
}

#[test]
fn a_revoked_device_is_refused_at_the_handshake_and_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    let t1 = Tablet::new(&dir.path().join("t1"));
    let t2 = Tablet::new(&dir.path().join("t2"));
    t1.pair(&d, &d.pair_code("alice"));
    t2.pair(&d, &d.pair_code("alice"));
    let id1 = Home::new(t1.home.clone()).load().unwrap().pairing.device_id;

    d.ok(&["device", "revoke", &id1]);
    let e = t1.fails(&["whoami"]);
    assert!(e.contains("revoked"), "{e}");
    assert!(t2.ok(&["whoami"]).starts_with("user alice"));
    let list = d.ok(&["device", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id1) && l.contains("revoked")),
        "{list}"
    );
    assert!(d.ok(&["audit"]).contains("device-revoke"));

    // Removing a user revokes all their devices.
    d.ok(&["user", "remove", "alice"]);
    let e = t2.fails(&["whoami"]);
    assert!(e.contains("revoked"), "{e}");
}

#[tokio::test]
async fn a_device_of_alice_cannot_act_as_bob() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    d.ok(&["user", "add", "bob", "--no-password"]);
    let ta = Tablet::new(&dir.path().join("ta"));
    let tb = Tablet::new(&dir.path().join("tb"));
    ta.pair(&d, &d.pair_code("alice"));
    tb.pair(&d, &d.pair_code("bob"));
    let bob_device = Home::new(tb.home.clone()).load().unwrap().pairing.device_id;

    let mut s = pinned_session(&ta).await.unwrap();
    // It is alice, whatever it asks.
    match s.request(Request::Whoami).await.unwrap() {
        Response::Whoami(periphery_protocol::Identity::Device { user, role, .. }) => {
            assert_eq!((user.as_str(), role), ("alice", Role::User));
        }
        other => panic!("{other:?}"),
    }
    // Bob's devices: not hers to list or revoke.
    let r = s
        .request(Request::DeviceList {
            user: Some("bob".into()),
        })
        .await;
    assert_eq!(api_code(r), ErrorCode::Forbidden);
    let r = s
        .request(Request::DeviceRevoke {
            id: bob_device.clone(),
        })
        .await;
    assert_eq!(api_code(r), ErrorCode::Forbidden);
    // Her own list holds only her device.
    let Response::Devices(mine) = s.request(Request::DeviceList { user: None }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(mine.len(), 1);
    assert!(mine.iter().all(|x| x.user == "alice"));
    // No admin actions, and no pairing on an authenticated connection.
    let r = s
        .request(Request::UserAdd {
            name: "mallory".into(),
            password: None,
            role: Role::Admin,
        })
        .await;
    assert_eq!(api_code(r), ErrorCode::Forbidden);
    let r = s
        .request(Request::PairCodeCreate { user: "bob".into() })
        .await;
    assert_eq!(api_code(r), ErrorCode::Forbidden);

    // While her session is open, the admin sees it in status.
    let status = d.ok(&["status"]);
    let version = format!(
        "version       0.1.0 (protocol {}-{})",
        periphery_protocol::MIN_PROTOCOL_VERSION,
        periphery_protocol::PROTOCOL_VERSION
    );
    for want in [
        version.as_str(),
        &format!("fingerprint   {}", d.banner.fingerprint),
        &format!("listening     {}", d.address()),
        "users (3)",
        "devices (2)",
        "connected tablets (1)",
    ] {
        assert!(status.contains(want), "status lacks {want:?}:\n{status}");
    }
    let tablet_line = status
        .lines()
        .skip_while(|l| !l.starts_with("connected tablets"))
        .nth(1)
        .unwrap_or_default();
    assert!(tablet_line.contains("alice"), "{status}");
    s.close().await;

    // Bob is untouched.
    assert!(tb.ok(&["whoami"]).starts_with("user bob"));
    assert!(!d.ok(&["user", "list"]).contains("mallory"));
}
