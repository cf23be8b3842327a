//! Streaming to several tablets of one user: real Xvfb, real encode and decode, real QUIC.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::PathBuf;
use std::time::Duration;

use periphery_e2e::{wait_for, Daemon, DaemonOptions, Tablet};
use periphery_protocol::media::{WireButton, WireInput};
use periphery_protocol::AttachMode;
use periphery_tablet::viewer::{Viewer, ViewerError};
use periphery_workstation::input::keysym_for_char;

struct Setup {
    dir: tempfile::TempDir,
    d: Daemon,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // Keep captured frames, so decoded pictures can be checked against the frame with the
    // same sequence number.
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some("[streaming]\nkeep_source_frames = 120\n".into()),
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "alice", "--no-password"]);
    d.ok(&["user", "add", "bob", "--no-password"]);
    d.create_ws("alice", "design", "1024x768");
    d.ok(&["ws", "start", "design"]);
    Setup { dir, d }
}

fn tablet(s: &Setup, name: &str, user: &str) -> Tablet {
    Tablet::paired(&s.d, s.dir.path(), name, user)
}

async fn view(
    s: &Setup,
    t: &Tablet,
    mode: AttachMode,
    view_only: bool,
) -> Result<Viewer, ViewerError> {
    Viewer::attach(
        s.d.banner.addr,
        t.client_config(),
        "design",
        mode,
        view_only,
    )
    .await
}

fn extend(width: u32, height: u32) -> AttachMode {
    AttachMode::Extend { width, height }
}

fn home_of(s: &Setup) -> PathBuf {
    let homes = s.d.state.join("homes");
    std::fs::read_dir(&homes)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// Waits for a decoded frame and returns its size.
async fn first_frame(v: &mut Viewer) -> (u32, u32) {
    let f = v
        .next_frame(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a frame");
    (f.image.width, f.image.height)
}

async fn type_text(v: &mut Viewer, text: &str) {
    for c in text.chars() {
        let keysym = keysym_for_char(c);
        for down in [true, false] {
            v.send_input(WireInput::Key { keysym, down }).await.unwrap();
        }
    }
}

/// Clicks the middle of monitor 0, where openbox centres the terminal.
/// Waits until monitor 0, as this tablet decodes it, shows the terminal (its white
/// background): typed keys need a window to go to, and under load the session can map its
/// window after the tablet attached.
async fn wait_for_terminal(v: &mut Viewer) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = v.latest() {
            // Luma 235 is white; the terminal is 484x316 pixels of it.
            if d.image.y.iter().filter(|y| **y > 230).count() > 50_000 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the terminal never appeared on monitor 0"
        );
        let _ = v.next_frame(Duration::from_millis(500)).await.unwrap();
    }
}

/// Waits for the terminal, then clicks it so it has the focus.
async fn click_terminal(v: &mut Viewer) {
    wait_for_terminal(v).await;
    v.send_input(WireInput::PointerMove { x: 512, y: 384 })
        .await
        .unwrap();
    for down in [true, false] {
        v.send_input(WireInput::Button {
            button: WireButton::Left,
            down,
        })
        .await
        .unwrap();
    }
}

/// Decodes what has arrived, then compares the newest picture with the captured frame the
/// appliance sent with its sequence number; returns the PSNR.
async fn psnr_against_source(s: &Setup, v: &mut Viewer) -> f64 {
    while v
        .next_frame(Duration::from_millis(300))
        .await
        .unwrap()
        .is_some()
    {}
    let d = v.latest().expect("a frame");
    let (seq, monitor) = (d.header.sequence, v.attachment.monitor.id);
    let png = s.dir.path().join(format!("source-{monitor}-{seq}.png"));
    s.d.ok(&[
        "ws",
        "screenshot",
        "design",
        "--monitor",
        &monitor.to_string(),
        "--sequence",
        &seq.to_string(),
        png.to_str().unwrap(),
    ]);
    let (w, h) = (d.image.width as usize, d.image.height as usize);
    let (sw, sh, rgb) =
        periphery_workstation::png::decode_rgb(&std::fs::read(&png).unwrap()).unwrap();
    assert_eq!((sw as usize, sh as usize), (w, h));
    let source: Vec<u8> = rgb
        .chunks(3)
        .flat_map(|p| [p[2], p[1], p[0], 255])
        .collect();
    let decoded = periphery_media::i420_to_bgra(&d.image);
    let psnr = periphery_media::psnr_bgra(&decoded, w * 4, &source, w * 4, w, h);
    println!("monitor {monitor} frame {seq}: decoded vs captured PSNR {psnr:.1} dB");
    psnr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tablets_see_their_own_monitors_and_type_into_the_desktop() {
    let s = setup();
    let (ta, tb, tc) = (
        tablet(&s, "a", "alice"),
        tablet(&s, "b", "alice"),
        tablet(&s, "c", "alice"),
    );
    let mut a = view(&s, &ta, extend(800, 600), false).await.unwrap();
    let mut b = view(&s, &tb, extend(640, 480), false).await.unwrap();
    let mut c = view(&s, &tc, AttachMode::Mirror { monitor: 0 }, false)
        .await
        .unwrap();
    assert_ne!(a.attachment.monitor.id, b.attachment.monitor.id);
    assert_eq!(c.attachment.monitor.id, 0);
    assert_eq!(first_frame(&mut a).await, (800, 600));
    assert_eq!(first_frame(&mut b).await, (640, 480));
    assert_eq!(first_frame(&mut c).await, (1024, 768));
    let show = s.d.ok(&["ws", "show", "design"]);
    assert!(
        show.contains("800x600") && show.contains("640x480"),
        "{show}"
    );
    let status = s.d.ok(&["status"]);
    assert!(
        status.contains("streams (3)") && status.contains("encoder libx264"),
        "{status}"
    );
    // Tablets report their figures; status shows them per tablet.
    let st = a.take_stats();
    a.report_stats(&st).await.unwrap();
    let status = s.d.ok(&["status"]);
    assert!(status.contains("fps, latency p50"), "{status}");

    // What each tablet decoded is what was captured: the frame with the same sequence number.
    for v in [&mut a, &mut b, &mut c] {
        let psnr = psnr_against_source(&s, v).await;
        assert!(psnr >= 35.0, "PSNR {psnr:.1} dB");
    }
    // Frames not kept (any more) are refused with what is.
    let err =
        s.d.cli(&["ws", "screenshot", "design", "--sequence", "0", "/dev/null"]);
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("frame 0 is not kept (kept: "), "{err}");

    // Typing from the mirroring tablet reaches the terminal; the change comes back as frames.
    click_terminal(&mut c).await;
    type_text(&mut c, "echo streamed > ~/probe\n").await;
    let probe = home_of(&s).join("probe");
    wait_for("the typed file", Duration::from_secs(30), || {
        std::fs::read_to_string(&probe)
            .ok()
            .filter(|t| t == "streamed\n")
    });
    assert!(c
        .next_frame(Duration::from_secs(10))
        .await
        .unwrap()
        .is_some());
    // The typing came back as new frames (P-frames after the first keyframe), and they too
    // match their captured frames.
    let psnr = psnr_against_source(&s, &mut c).await;
    let seq = c.latest().unwrap().header.sequence;
    assert!(seq > 1, "only frame {seq} arrived");
    assert!(psnr >= 35.0, "frame {seq}: PSNR {psnr:.1} dB");

    // Detaching an extended tablet removes its monitor.
    let gone = a.attachment.monitor.id;
    a.detach().await.unwrap();
    let show = s.d.ok(&["ws", "show", "design"]);
    assert!(!show.contains(&format!("monitor {gone} ")), "{show}");
    b.detach().await.unwrap();
    c.detach().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_attach_and_viewers_cannot_type() {
    let s = setup();
    let bob = tablet(&s, "bob", "bob");
    let e = view(&s, &bob, AttachMode::Mirror { monitor: 0 }, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no workstation session 'design'"),
        "{e}"
    );
    let e = {
        Viewer::attach(
            s.d.banner.addr,
            bob.client_config(),
            "alice/design",
            AttachMode::Mirror { monitor: 0 },
            false,
        )
        .await
        .unwrap_err()
    };
    // Naming alice's workstation does not help: bob takes no part in its session.
    assert!(
        e.to_string()
            .contains("no workstation session 'alice/design' you take part in"),
        "{e}"
    );

    let tv = tablet(&s, "viewer", "alice");
    let tc = tablet(&s, "controller", "alice");
    let mut viewer = view(&s, &tv, AttachMode::Mirror { monitor: 0 }, true)
        .await
        .unwrap();
    let mut controller = view(&s, &tc, AttachMode::Mirror { monitor: 0 }, false)
        .await
        .unwrap();
    first_frame(&mut viewer).await;
    click_terminal(&mut viewer).await;
    type_text(&mut viewer, "echo viewer > ~/bad\n").await;
    click_terminal(&mut controller).await;
    type_text(&mut controller, "echo controller > ~/good\n").await;
    let home = home_of(&s);
    wait_for("the controller's file", Duration::from_secs(30), || {
        std::fs::read_to_string(home.join("good"))
            .ok()
            .filter(|t| t == "controller\n")
    });
    assert!(
        !home.join("bad").exists(),
        "a view-only tablet's input reached the desktop"
    );
    viewer.detach().await.unwrap();
    controller.detach().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_flooding_input_is_bounded_and_the_desktop_keeps_serving() {
    let s = setup();
    let t = tablet(&s, "t", "alice");
    let mut v = view(&s, &t, AttachMode::Mirror { monitor: 0 }, false)
        .await
        .unwrap();
    first_frame(&mut v).await;
    for ev in [
        WireInput::PointerMove { x: 5000, y: 10 },
        WireInput::PointerMove { x: -3, y: 10 },
        WireInput::Key {
            keysym: 0x7fff_ffff,
            down: true,
        },
        WireInput::Scroll {
            dx: 0,
            dy: 1_000_000,
        },
    ] {
        v.send_input(ev).await.unwrap();
    }
    // A flood: 100k pointer moves as fast as the stream takes them.
    for i in 0..100_000i32 {
        v.send_input(WireInput::PointerMove {
            x: i % 1024,
            y: (i / 1024) % 768,
        })
        .await
        .unwrap();
    }
    // The flooding tablet is bounded, not served blindly: its stream is still read and it still
    // receives frames; the desktop keeps serving another tablet's typing.
    assert!(v.next_frame(Duration::from_secs(10)).await.is_ok());
    v.detach().await.unwrap();
    let t2 = tablet(&s, "t2", "alice");
    let mut other = view(&s, &t2, AttachMode::Mirror { monitor: 0 }, false)
        .await
        .unwrap();
    first_frame(&mut other).await;
    click_terminal(&mut other).await;
    type_text(&mut other, "echo alive > ~/alive\n").await;
    let home = home_of(&s);
    wait_for("typing after the flood", Duration::from_secs(60), || {
        std::fs::read_to_string(home.join("alive"))
            .ok()
            .filter(|t| t == "alive\n")
    });
    assert!(s.d.ok(&["ws", "show", "design"]).contains("running"));
    wait_for("the rejections reported", Duration::from_secs(10), || {
        s.d.log().contains("input events rejected").then_some(())
    });
    other.detach().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_monitor_survives_a_short_disconnect_and_goes_after_the_grace() {
    let s = setup();
    let t = tablet(&s, "t", "alice");
    let ext = extend(800, 600);
    let mut v = view(&s, &t, ext.clone(), false).await.unwrap();
    first_frame(&mut v).await;
    let id = v.attachment.monitor.id;
    v.abandon();
    // Back within the grace: the same monitor, and frames again.
    let mut v = view(&s, &t, ext.clone(), false).await.unwrap();
    assert_eq!(v.attachment.monitor.id, id);
    assert_eq!(first_frame(&mut v).await, (800, 600));
    v.abandon();
    // Not back: the monitor goes.
    let mon = format!("monitor {id}  800x600");
    wait_for(
        "the monitor removed after the grace",
        Duration::from_secs(40),
        || (!s.d.ok(&["ws", "show", "design"]).contains(&mon)).then_some(()),
    );
}

/// Decoded frames per second over `span`.
async fn fps(v: &mut Viewer, span: Duration) -> f64 {
    let _ = v.take_stats();
    let end = tokio::time::Instant::now() + span;
    while tokio::time::Instant::now() < end {
        let left = end - tokio::time::Instant::now();
        let _ = v
            .next_frame(left.min(Duration::from_millis(200)))
            .await
            .unwrap();
    }
    let st = v.take_stats();
    st.fps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tablet_does_not_slow_the_others_and_recovers_at_a_keyframe() {
    let s = setup();
    let (ta, tb, ts) = (
        tablet(&s, "a", "alice"),
        tablet(&s, "b", "alice"),
        tablet(&s, "s", "alice"),
    );
    let mirror = AttachMode::Mirror { monitor: 0 };
    let mut a = view(&s, &ta, mirror.clone(), false).await.unwrap();
    let mut b = view(&s, &tb, mirror.clone(), false).await.unwrap();
    first_frame(&mut a).await;
    first_frame(&mut b).await;
    // Moving content: the terminal prints without pause.
    click_terminal(&mut a).await;
    type_text(&mut a, "while :; do date +%N; done\n").await;

    // Baseline: a and b alone (each reads while the other's frames queue in its own channel).
    let (base_a, base_b) = tokio::join!(
        fps(&mut a, Duration::from_secs(3)),
        fps(&mut b, Duration::from_secs(3))
    );
    println!("baseline: a {base_a:.1} fps, b {base_b:.1} fps");
    assert!(base_a > 3.0, "the content is not moving ({base_a:.1} fps)");

    // A third tablet that reads slowly joins.
    let mut slow = view(&s, &ts, mirror.clone(), false).await.unwrap();
    slow.set_read_delay(Duration::from_millis(400));
    let slow_task = tokio::spawn(async move {
        let st = {
            let _ = fps(&mut slow, Duration::from_secs(3)).await;
            slow.take_stats()
        };
        (slow, st)
    });
    let (with_a, with_b) = tokio::join!(
        fps(&mut a, Duration::from_secs(3)),
        fps(&mut b, Duration::from_secs(3))
    );
    let (mut slow, _) = slow_task.await.unwrap();
    println!(
        "with a slow tablet: a {with_a:.1} fps ({:.2}x), b {with_b:.1} fps ({:.2}x)",
        with_a / base_a,
        with_b / base_b
    );
    assert!(
        with_a / base_a > 0.5 && with_b / base_b > 0.5,
        "a slow tablet slowed the others"
    );

    // The slow one recovers once it reads normally again: it skips to a keyframe and decodes.
    slow.set_read_delay(Duration::ZERO);
    let recovered = fps(&mut slow, Duration::from_secs(3)).await;
    println!("slow tablet after recovering: {recovered:.1} fps");
    assert!(recovered > 1.0, "the slow tablet did not recover");
    a.abandon();
    b.abandon();
    slow.abandon();
}

/// The X pointer of the (only) workstation, read with its own cookie (the test runs as the
/// appliance's user, which may read the workstation's runtime directory).
fn x_pointer(s: &Setup) -> (i32, i32) {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::ConnectionExt as _;
    let show = s.d.ok(&["ws", "show", "design"]);
    let display: u32 = show
        .split("display :")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("a display in ws show");
    let run = std::fs::read_dir(s.d.state.join("run"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let auth = std::fs::read(run.join("Xauthority")).unwrap();
    let mut cookie = [0u8; 16];
    cookie.copy_from_slice(&auth[auth.len() - 16..]);
    let conn = periphery_workstation::xvfb::connect(display, &cookie).unwrap();
    let root = conn.setup().roots[0].root;
    let p = conn.query_pointer(root).unwrap().reply().unwrap();
    (p.root_x.into(), p.root_y.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tablets_pointer_lands_on_its_own_monitor() {
    let s = setup();
    let (ta, tb) = (tablet(&s, "a", "alice"), tablet(&s, "b", "alice"));
    let mut a = view(&s, &ta, extend(800, 600), false).await.unwrap();
    let mut b = view(&s, &tb, extend(640, 480), false).await.unwrap();
    let (ma, mb) = (a.attachment.monitor, b.attachment.monitor);
    b.send_input(WireInput::PointerMove { x: 100, y: 50 })
        .await
        .unwrap();
    let want_b = (mb.x + 100, mb.y + 50);
    wait_for(
        "b's pointer on b's monitor",
        Duration::from_secs(10),
        || (x_pointer(&s) == want_b).then_some(()),
    );
    assert!(
        !(ma.x..ma.x + ma.width as i32).contains(&want_b.0),
        "b's pointer is on a's monitor"
    );
    a.send_input(WireInput::PointerMove { x: 10, y: 20 })
        .await
        .unwrap();
    let want_a = (ma.x + 10, ma.y + 20);
    wait_for(
        "a's pointer on a's monitor",
        Duration::from_secs(10),
        || (x_pointer(&s) == want_a).then_some(()),
    );
    a.detach().await.unwrap();
    b.detach().await.unwrap();
}
