//! Handoff benchmark (part of `make bench-stream`): accept -> first decoded frame on the
//! accepting tablet, over 20 handoffs back and forth between two users on loopback, next to
//! a plain attach -> first frame in the same run. Figures, not pass/fail.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use periphery_e2e::{Daemon, DaemonOptions, Tablet};
use periphery_protocol::{AttachMode, Request, Response};
use periphery_tablet::session::Session;
use periphery_tablet::viewer::Viewer;

fn cfg(t: &Tablet) -> quinn::ClientConfig {
    t.client_config()
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Attaches to monitor 0 and waits for the first decoded frame.
async fn first_frame(d: &Daemon, t: &Tablet) -> Viewer {
    let mut v = Viewer::attach(
        d.banner.addr,
        cfg(t),
        "alice/design",
        AttachMode::Mirror { monitor: 0 },
        false,
    )
    .await
    .unwrap();
    v.next_frame(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a frame");
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    for u in ["alice", "bob"] {
        d.ok(&["user", "add", u, "--no-password"]);
    }
    d.create_ws("alice", "design", "1920x1080");
    d.ok(&["ws", "start", "design"]);
    let tablets = [
        Tablet::new(&dir.path().join("alice")),
        Tablet::new(&dir.path().join("bob")),
    ];
    tablets[0].pair(&d, &d.pair_code("alice"));
    tablets[1].pair(&d, &d.pair_code("bob"));
    let users = ["alice", "bob"];
    let mut sessions = Vec::new();
    for t in &tablets {
        sessions.push(Session::connect(d.banner.addr, cfg(t)).await.unwrap());
    }

    // Baseline: a plain attach -> first frame.
    let mut attach_ms = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let v = first_frame(&d, &tablets[0]).await;
        attach_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        v.detach().await.unwrap();
    }

    let (mut accept_ms, mut handoff_ms) = (Vec::new(), Vec::new());
    let mut holder = 0;
    let mut viewer = Some(first_frame(&d, &tablets[0]).await);
    for _ in 0..20 {
        let to = 1 - holder;
        let Response::Offer(o) = sessions[holder]
            .request(Request::HandoffOffer {
                ws: "alice/design".into(),
                to: users[to].into(),
                ttl_secs: 60,
                reclaimable: false,
            })
            .await
            .unwrap()
        else {
            panic!("no offer")
        };
        let t0 = Instant::now();
        sessions[to]
            .request(Request::HandoffAccept { offer: o.id })
            .await
            .unwrap();
        accept_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let v = first_frame(&d, &tablets[to]).await;
        handoff_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if let Some(old) = viewer.replace(v) {
            old.abandon();
        }
        holder = to;
    }
    println!("handoff, 1080p desktop, loopback");
    let (attach, handoff) = (p50(&mut attach_ms), p50(&mut handoff_ms));
    println!("  attach -> first frame (no handoff): p50 {attach:.0} ms");
    println!(
        "  accept committed: p50 {:.1} ms; accept -> first decoded frame on the new controller's tablet: p50 {handoff:.0} ms over 20 handoffs (goal <= 200 ms)",
        p50(&mut accept_ms),
    );
    println!(
        "  handoff / plain attach = {:.2}; handoff / goal = {:.2}",
        handoff / attach,
        handoff / 200.0
    );
}
