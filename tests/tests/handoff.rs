//! Handing a live session off, and sharing it: real daemon, real Xvfb workstation, headless
//! tablets. The workstation's session is an input recorder (`xinput test-xi2 --root`), so the
//! tests see, in order, every key event that reached the X server.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use periphery_e2e::{wait_for, Daemon, DaemonOptions, Tablet};
use periphery_protocol::media::WireInput;
use periphery_protocol::{AttachMode, Notice, Request, Response};
use periphery_tablet::session::Session;
use periphery_tablet::viewer::{Viewer, ViewerError};
use periphery_workstation::input::keysym_for_char;

struct Setup {
    dir: tempfile::TempDir,
    d: Daemon,
}

/// The daemon of these tests: the workstation's session records input.
fn daemon(state: &std::path::Path, listen: Option<String>) -> Daemon {
    Daemon::start(
        state,
        DaemonOptions {
            listen,
            config: Some(
                "[streaming]\nkeep_source_frames = 120\n[workstations]\nsession = [\"sh\", \"-c\", \"exec stdbuf -oL xinput test-xi2 --root > \\\"$HOME/input.log\\\"\"]\n"
                    .into(),
            ),
            ..Default::default()
        },
    )
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir.path().join("state"), None);
    for u in ["alice", "bob", "carol"] {
        d.ok(&["user", "add", u, "--no-password"]);
    }
    d.create_ws("alice", "design", "1024x768");
    d.ok(&["ws", "start", "design"]);
    Setup { dir, d }
}

fn tablet(s: &Setup, name: &str, user: &str) -> Tablet {
    Tablet::paired(&s.d, s.dir.path(), name, user)
}

fn cfg(t: &Tablet) -> quinn::ClientConfig {
    t.client_config()
}

async fn session(s: &Setup, t: &Tablet) -> Session {
    Session::connect(s.d.banner.addr, cfg(t)).await.unwrap()
}

async fn view(s: &Setup, t: &Tablet, ws: &str, mode: AttachMode) -> Result<Viewer, ViewerError> {
    Viewer::attach(s.d.banner.addr, cfg(t), ws, mode, false).await
}

fn input_log(s: &Setup) -> PathBuf {
    let homes = s.d.state.join("homes");
    let home = std::fs::read_dir(&homes)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    home.join("input.log")
}

/// The keycodes of the key presses the X server delivered, in order.
fn key_presses(s: &Setup) -> Vec<u32> {
    let log = std::fs::read_to_string(input_log(s)).unwrap_or_default();
    let mut out = Vec::new();
    let mut in_press = false;
    for line in log.lines() {
        if line.starts_with("EVENT ") {
            in_press = line.contains("(RawKeyPress)");
        } else if in_press {
            if let Some(d) = line.trim().strip_prefix("detail: ") {
                if let Ok(k) = d.trim().parse() {
                    out.push(k);
                }
                in_press = false;
            }
        }
    }
    out
}

async fn press(v: &mut Viewer, c: char) -> Result<(), ViewerError> {
    let keysym = keysym_for_char(c);
    v.send_input(WireInput::Key { keysym, down: true }).await?;
    v.send_input(WireInput::Key {
        keysym,
        down: false,
    })
    .await
}

/// Types `c` from `v` until `stop`, counting presses in `sent`, polling for frames and notices
/// in between; returns the reason the appliance detached it, if it did.
async fn keep_typing(
    mut v: Viewer,
    c: char,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Option<String> {
    let mut detached = None;
    while !stop.load(Ordering::Relaxed) {
        if press(&mut v, c).await.is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if detached.is_none() {
            if let Err(ViewerError::Detached(reason)) = v.next_frame(Duration::from_millis(2)).await
            {
                detached = Some(reason);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    detached
}

/// Waits for a notice matching `f`.
async fn notice<T>(s: &mut Session, what: &str, mut f: impl FnMut(&Notice) -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "no notice: {what}");
        if let Some(n) = s.next_notice(left).await {
            if let Some(t) = f(&n) {
                return t;
            }
        }
    }
}

fn offer_id(out: &str) -> String {
    out.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_moves_the_desktop_and_no_input_of_the_old_owner_lands_after_it() {
    let s = setup();
    let (a1, a2, tb) = (
        tablet(&s, "a1", "alice"),
        tablet(&s, "a2", "alice"),
        tablet(&s, "b", "bob"),
    );
    let mut v1 = view(
        &s,
        &a1,
        "design",
        AttachMode::Extend {
            width: 800,
            height: 600,
        },
    )
    .await
    .unwrap();
    let mut v2 = view(&s, &a2, "design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap();
    assert_eq!(v1.attachment.epoch, 1);
    v1.next_frame(Duration::from_secs(30)).await.unwrap();
    v2.next_frame(Duration::from_secs(30)).await.unwrap();
    wait_for("the input recorder", Duration::from_secs(30), || {
        input_log(&s).exists().then_some(())
    });

    // Alice's two tablets type 'a' without pause, through the handoff and after it.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let t1 = tokio::spawn(keep_typing(v1, 'a', stop.clone(), sent.clone()));
    let t2 = tokio::spawn(keep_typing(v2, 'a', stop.clone(), sent.clone()));
    let alice_key = wait_for(
        "alice's keys at the X server",
        Duration::from_secs(30),
        || key_presses(&s).first().copied(),
    );

    // Bob is connected: he is told of the offer.
    let mut bob = session(&s, &tb).await;
    let out = a1.ok(&["handoff", "design", "--to", "bob", "--expires", "5m"]);
    let id = offer_id(&out);
    let offered = notice(&mut bob, "the offer", |n| match n {
        Notice::Offered(o) => Some(o.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (offered.id.as_str(), offered.ws.as_str()),
        (id.as_str(), "alice/design")
    );
    assert_eq!(offered.from_user, "alice");
    let listed = tb.ok(&["offers"]);
    assert!(listed.contains(&id), "{listed}");

    // Bob accepts: control moves, the epoch grows.
    let Response::HandedOff { ws, epoch } = bob
        .request(Request::HandoffAccept { offer: id.clone() })
        .await
        .unwrap()
    else {
        panic!("unexpected answer")
    };
    assert_eq!((ws.as_str(), epoch), ("alice/design", 2));
    let mut vb = view(&s, &tb, "alice/design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap();
    assert_eq!(vb.attachment.epoch, 2);
    vb.next_frame(Duration::from_secs(30)).await.unwrap();
    for _ in 0..20 {
        press(&mut vb, 'b').await.unwrap();
    }
    let bob_key = wait_for(
        "bob's keys at the X server",
        Duration::from_secs(30),
        || {
            let keys = key_presses(&s);
            (keys.iter().filter(|k| **k != alice_key).count() >= 20)
                .then(|| *keys.iter().find(|k| **k != alice_key).unwrap())
        },
    );
    // Alice keeps typing for another 100 presses after bob's keys arrived, then stops.
    let at_bob = sent.load(Ordering::Relaxed);
    wait_for("alice typing on", Duration::from_secs(30), || {
        (sent.load(Ordering::Relaxed) >= at_bob + 100).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let why1 = t1.await.unwrap();
    let why2 = t2.await.unwrap();
    let sent = sent.load(Ordering::Relaxed);

    // Both of alice's tablets were told why they were detached.
    assert_eq!(why1.as_deref(), Some("handed off to bob"));
    assert_eq!(why2.as_deref(), Some("handed off to bob"));
    // Not one of alice's keys reached X after bob's first: the commit is a clean cut.
    let keys = key_presses(&s);
    let first_bob = keys.iter().position(|k| *k == bob_key).unwrap();
    let alice_before = keys[..first_bob]
        .iter()
        .filter(|k| **k == alice_key)
        .count();
    let alice_after = keys[first_bob..]
        .iter()
        .filter(|k| **k == alice_key)
        .count();
    println!(
        "alice sent {sent} presses; {alice_before} reached X before the handoff, {alice_after} after bob's first; bob's 20 all arrived"
    );
    assert!(alice_before > 0);
    assert_eq!(alice_after, 0, "alice's input arrived after the commit");
    assert!(
        sent as usize > alice_before + 100,
        "alice's tablets kept sending after the handoff"
    );

    // Bob sees the same desktop: his decoded picture against the captured frame.
    while vb
        .next_frame(Duration::from_millis(300))
        .await
        .unwrap()
        .is_some()
    {}
    let d = vb.latest().unwrap();
    let png = s.dir.path().join("bob.png");
    s.d.ok(&[
        "ws",
        "screenshot",
        "alice/design",
        "--monitor",
        "0",
        "--sequence",
        &d.header.sequence.to_string(),
        png.to_str().unwrap(),
    ]);
    let (w, h, rgb) =
        periphery_workstation::png::decode_rgb(&std::fs::read(&png).unwrap()).unwrap();
    let source: Vec<u8> = rgb
        .chunks(3)
        .flat_map(|p| [p[2], p[1], p[0], 255])
        .collect();
    let psnr = periphery_media::psnr_bgra(
        &periphery_media::i420_to_bgra(&d.image),
        w as usize * 4,
        &source,
        w as usize * 4,
        w as usize,
        h as usize,
    );
    assert!(psnr >= 35.0, "bob's picture: PSNR {psnr:.1} dB");

    // Alice cannot come back on her own.
    let e = view(&s, &a1, "design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bob controls it"), "{e}");
    // Bob lists it with its owner's name.
    let list = tb.ok(&["workstations"]);
    assert!(list.contains("alice/design"), "{list}");
    // The history shows the offer, the accept and the handoff.
    let history = a1.ok(&["history", "design"]);
    for event in ["handoff-offer", "handoff-accept", "session-handoff"] {
        assert!(history.contains(event), "{history}");
    }
    let audit = s.d.ok(&["audit"]);
    assert!(audit.contains("control moved from alice to bob"), "{audit}");
    vb.detach().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_only_for_their_recipient_and_only_while_they_stand() {
    let s = setup();
    let (ta, tb, tc) = (
        tablet(&s, "a", "alice"),
        tablet(&s, "b", "bob"),
        tablet(&s, "c", "carol"),
    );
    let mut alice = session(&s, &ta).await;
    let mut bob = session(&s, &tb).await;

    // Carol's tablet listens for offers (`offers --watch`), as a person at a tablet would.
    let mut watching = std::process::Command::new(periphery_e2e::bin("periphery-tablet"))
        .arg("--home")
        .arg(&tc.home)
        .args(["offers", "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = watching.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(l);
        }
    });
    // Its first listing shows nothing pending; wait until it is listening.
    let mut out = watching.stdout.take().unwrap();
    let mut first = [0u8; 17];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"no pending offers");

    // To carol: bob cannot take it.
    let to_carol = offer_id(&ta.ok(&["handoff", "design", "--to", "carol"]));
    let told = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(told.contains("alice offers you alice/design"), "{told}");
    let _ = watching.kill();
    let _ = watching.wait();
    let e = tb.fails(&["accept", &to_carol, "--no-attach"]);
    assert!(e.contains("was made to carol, not to bob"), "{e}");
    let e = tb.fails(&["decline", &to_carol]);
    assert!(e.contains("was made to carol"), "{e}");

    // Withdrawn: gone, with a clear error.
    ta.ok(&["withdraw", &to_carol]);
    let e = tc.fails(&["accept", &to_carol, "--no-attach"]);
    assert!(
        e.contains("no longer pending: it was withdrawn by alice"),
        "{e}"
    );

    // Expired: the appliance ends it on time and says so to both.
    let short = offer_id(&ta.ok(&["handoff", "design", "--to", "bob", "--expires", "1s"]));
    notice(&mut bob, "the expiry", |n| match n {
        Notice::OfferEnded { offer, outcome, .. } if offer.id == short => {
            (outcome == "expired").then_some(())
        }
        _ => None,
    })
    .await;
    let e = tb.fails(&["accept", &short, "--no-attach"]);
    assert!(e.contains("it was expired"), "{e}");

    // Declined: alice is told.
    let declined = offer_id(&ta.ok(&["handoff", "design", "--to", "bob"]));
    tb.ok(&["decline", &declined]);
    let by = notice(&mut alice, "the decline", |n| match n {
        Notice::OfferEnded {
            offer, outcome, by, ..
        } if offer.id == declined && outcome == "declined" => Some(by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by.as_deref(), Some("bob"));

    // Through all that, alice kept control.
    let show = ta.ok(&["session", "design"]);
    assert!(show.contains("controller alice  (epoch 1)"), "{show}");
    let history = ta.ok(&["history", "design"]);
    for event in ["handoff-withdraw", "handoff-expire", "handoff-decline"] {
        assert!(history.contains(event), "{history}");
    }
    // Bob, who does not take part, sees no history.
    let e = tb.fails(&["history", "alice/design"]);
    assert!(e.contains("you take part in"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_offers_accepted_at_once_exactly_one_hands_off() {
    let s = setup();
    let (a1, a2, tb, tc) = (
        tablet(&s, "a1", "alice"),
        tablet(&s, "a2", "alice"),
        tablet(&s, "b", "bob"),
        tablet(&s, "c", "carol"),
    );
    let to_bob = offer_id(&a1.ok(&["handoff", "design", "--to", "bob"]));
    let to_carol = offer_id(&a2.ok(&["handoff", "design", "--to", "carol"]));
    let mut bob = session(&s, &tb).await;
    let mut carol = session(&s, &tc).await;
    let (rb, rc) = tokio::join!(
        bob.request(Request::HandoffAccept { offer: to_bob }),
        carol.request(Request::HandoffAccept { offer: to_carol }),
    );
    let (winner, loser) = match (&rb, &rc) {
        (Ok(_), Err(e)) => ("bob", e.to_string()),
        (Err(e), Ok(_)) => ("carol", e.to_string()),
        other => panic!("exactly one accept must win: {other:?}"),
    };
    assert!(
        loser.contains("no longer pending: it was superseded"),
        "{loser}"
    );
    let show = a1.ok(&["session", "design"]);
    assert!(
        show.contains(&format!("controller {winner}  (epoch 2)")),
        "{show}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_shares_and_the_floor() {
    let s = setup();
    let (ta, tb, tc) = (
        tablet(&s, "a", "alice"),
        tablet(&s, "b", "bob"),
        tablet(&s, "c", "carol"),
    );
    // Not reclaimable: alice cannot take it back.
    let id = offer_id(&ta.ok(&["handoff", "design", "--to", "bob"]));
    // Bob's accepting tablet extends the desktop with a monitor of its own size.
    let out = tb.cli(
        &[
            "accept",
            &id,
            "--headless",
            "--extend",
            "--size",
            "640x480",
            "--seconds",
            "1",
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("attached to alice/design monitor") && err.contains("(640x480)"),
        "{err}"
    );
    let e = ta.fails(&["reclaim", "alice/design"]);
    assert!(e.contains("not handed off with --reclaimable"), "{e}");
    // Bob hands it back reclaimably; bob (and only bob) reclaims.
    let id = offer_id(&tb.ok(&["handoff", "alice/design", "--to", "alice", "--reclaimable"]));
    ta.ok(&["accept", &id, "--no-attach"]);
    let e = tc.fails(&["reclaim", "alice/design"]);
    assert!(e.contains("you take part in"), "{e}");
    let mut va = view(&s, &ta, "design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap();
    va.next_frame(Duration::from_secs(30)).await.unwrap();
    tb.ok(&["reclaim", "alice/design"]);
    let e = va.next_frame(Duration::from_secs(10)).await.unwrap_err();
    assert!(e.to_string().contains("reclaimed by bob"), "{e}");
    let id = offer_id(&tb.ok(&["handoff", "alice/design", "--to", "alice"]));
    ta.ok(&["accept", &id, "--no-attach"]);

    // View-only share: carol watches, her keys never reach X.
    ta.ok(&["share", "design", "--with", "carol", "--view-only"]);
    let mut vc = view(&s, &tc, "alice/design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap();
    vc.next_frame(Duration::from_secs(30)).await.unwrap();
    let mut va = view(&s, &ta, "design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap();
    va.next_frame(Duration::from_secs(30)).await.unwrap();
    wait_for("the input recorder", Duration::from_secs(30), || {
        input_log(&s).exists().then_some(())
    });
    for _ in 0..10 {
        let _ = press(&mut vc, 'c').await;
    }
    for _ in 0..10 {
        press(&mut va, 'a').await.unwrap();
    }
    let keys = wait_for("alice's keys", Duration::from_secs(30), || {
        let k = key_presses(&s);
        (k.len() >= 10).then_some(k)
    });
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "a viewer's key reached X: {keys:?}"
    );
    let alice_key = keys[0];

    // Co-control: only the floor holder's input lands.
    ta.ok(&["share", "design", "--with", "bob", "--control"]);
    let mut vb = view(&s, &tb, "alice/design", AttachMode::Mirror { monitor: 0 })
        .await
        .unwrap();
    vb.next_frame(Duration::from_secs(30)).await.unwrap();
    let before = key_presses(&s).len();
    for _ in 0..10 {
        press(&mut vb, 'b').await.unwrap();
    }
    // Bob has no floor yet: alice's next keys arrive, bob's did not.
    for _ in 0..5 {
        press(&mut va, 'a').await.unwrap();
    }
    let k = wait_for("alice's 5 keys", Duration::from_secs(30), || {
        let k = key_presses(&s);
        (k.len() >= before + 5).then_some(k)
    });
    assert!(k[before..].iter().all(|x| *x == alice_key), "{k:?}");
    tb.ok(&["floor", "take", "alice/design"]);
    let before = key_presses(&s).len();
    for _ in 0..5 {
        press(&mut va, 'a').await.unwrap();
    }
    for _ in 0..5 {
        press(&mut vb, 'b').await.unwrap();
    }
    let k = wait_for("bob's 5 keys", Duration::from_secs(30), || {
        let k = key_presses(&s);
        (k.len() >= before + 5).then_some(k)
    });
    assert!(
        k[before..].iter().all(|x| *x != alice_key) && k.len() == before + 5,
        "only the floor holder's keys land: {:?}",
        &k[before..]
    );
    let show = ta.ok(&["session", "design"]);
    assert!(show.contains("floor      bob"), "{show}");
    let status = s.d.ok(&["status"]);
    assert!(
        !status.contains("dropped at the session gate: 0 events"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_survives_a_supervisor_sigkill_and_is_never_half_applied() {
    let s = setup();
    let (ta, tb) = (tablet(&s, "a", "alice"), tablet(&s, "b", "bob"));
    let kept = offer_id(&ta.ok(&["handoff", "design", "--to", "bob", "--expires", "10m"]));
    let lapsing = offer_id(&ta.ok(&["handoff", "design", "--to", "bob", "--expires", "2s"]));
    let Setup { dir, d } = s;
    let (state, addr) = (d.state.clone(), d.address());
    d.kill();
    // Same address: the tablets know it.
    let d2 = daemon(&state, Some(addr));
    let _dir = dir;
    // The lapsing offer expires by its time, also across the restart.
    wait_for("the short offer to lapse", Duration::from_secs(20), || {
        (!tb.ok(&["offers"]).contains(&lapsing)).then_some(())
    });
    let show = ta.ok(&["session", "design"]);
    assert!(show.contains("controller alice  (epoch 1)"), "{show}");
    assert!(show.contains(&kept), "{show}");
    tb.ok(&["accept", &kept, "--no-attach"]);
    let show = tb.ok(&["session", "alice/design"]);
    assert!(show.contains("controller bob  (epoch 2)"), "{show}");

    // After another SIGKILL the committed handoff holds: alice cannot attach, bob can, in
    // the new epoch.
    let (state, addr) = (d2.state.clone(), d2.address());
    d2.kill();
    let d = daemon(&state, Some(addr));
    let e = Viewer::attach(
        d.banner.addr,
        cfg(&ta),
        "design",
        AttachMode::Mirror { monitor: 0 },
        false,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("bob controls it"), "{e}");
    let v = Viewer::attach(
        d.banner.addr,
        cfg(&tb),
        "alice/design",
        AttachMode::Mirror { monitor: 0 },
        false,
    )
    .await
    .unwrap();
    assert_eq!(v.attachment.epoch, 2);
    v.detach().await.unwrap();
}
