//! The tablet's window (winit + wgpu on Mesa's software adapter), end to end: the tablet's own
//! screen is a second Xvfb; what the window shows is captured from that screen and compared
//! with the workstation's monitor, and input injected into the tablet's screen must come out
//! on the workstation.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use periphery_e2e::{bin, wait_for, Daemon, DaemonOptions, Tablet};
use periphery_workstation::xvfb::capture::XvfbCapture;
use periphery_workstation::xvfb::input::XvfbInput;
use periphery_workstation::xvfb::{XvfbOptions, XvfbWorkstation};
use periphery_workstation::{FrameSource, InputEvent, InputSink, Limits, MonitorSize, MouseButton};

/// The monitor `ws show` lists with this size: (id, x offset).
fn monitor_of_size(show: &str, size: &str) -> Option<(u32, i32)> {
    show.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("monitor ")?;
        let (id, geo) = rest.split_once(char::is_whitespace)?;
        let geo = geo.trim();
        let tail = geo.strip_prefix(size)?.strip_prefix('+')?;
        let x = tail.split('+').next()?.parse().ok()?;
        Some((id.parse().ok()?, x))
    })
}

/// The tablet screen's pixels (BGRA, tight) and the workstation monitor's, compared.
fn psnr(screen: &[u8], png: &[u8], w: usize, h: usize) -> f64 {
    let (pw, ph, rgb) = periphery_workstation::png::decode_rgb(png).unwrap();
    assert_eq!((pw as usize, ph as usize), (w, h));
    let shot: Vec<u8> = rgb
        .chunks(3)
        .flat_map(|p| [p[2], p[1], p[0], 255])
        .collect();
    periphery_media::psnr_bgra(screen, w * 4, &shot, w * 4, w, h)
}

/// The share of pixels that differ from the most common colour: a desktop with a menu open
/// is far from uniform; a window that shows nothing is.
fn busy(bgra: &[u8]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for p in bgra.chunks(4) {
        *counts.entry([p[0], p[1], p[2]]).or_insert(0usize) += 1;
    }
    let top = counts.values().max().copied().unwrap_or(0);
    1.0 - top as f64 / (bgra.len() / 4) as f64
}

#[test]
fn a_full_screen_window_extends_the_desktop_shows_it_and_sends_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    d.create_ws("alice", "design", "1024x768");
    d.ok(&["ws", "start", "design"]);
    let t = Tablet::new(&dir.path().join("tablet"));
    t.pair(&d, &d.pair_code("alice"));

    // The tablet's screen: 800x600, with a window manager that honours full screen.
    let size = MonitorSize {
        width: 800,
        height: 600,
    };
    let screen = XvfbWorkstation::start(
        XvfbOptions {
            marker: format!("periphery-test-tablet-screen-{}", std::process::id()),
            runtime_dir: dir.path().join("screen"),
            home: dir.path().join("screen-home"),
            run_as: None,
            framebuffer: size,
            window_manager: vec!["openbox".into()],
            session: vec!["sleep".into(), "3600".into()],
            start_timeout: Duration::from_secs(20),
            cgroup: None,
            env: Vec::new(),
        },
        &[size],
    )
    .unwrap();
    let access = screen.access();
    assert!(Limits::default().framebuffer.width >= 1024 + 800);

    let mut tablet = Command::new(bin("periphery-tablet"))
        .arg("--home")
        .arg(&t.home)
        .args(["attach", "design", "--seconds", "300"])
        .env("DISPLAY", format!(":{}", access.display))
        .env("XAUTHORITY", screen.runtime_dir().join("Xauthority"))
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The stats lines, as they come.
    let stdout = tablet.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    // No --size: the monitor the workstation grows is the tablet screen's size, measured.
    let (id, _) = wait_for("the extended monitor", Duration::from_secs(60), || {
        monitor_of_size(&d.ok(&["ws", "show", "design"]), "800x600")
    });
    assert_ne!(id, 0);

    // Right-click in the middle of the tablet's window: openbox's root menu opens on the
    // workstation's new monitor, where the pointer lands (on monitor 0 it would leave the
    // new monitor's black background uniform).
    let mut input = XvfbInput::new(&access).unwrap();
    let mut capture = XvfbCapture::new(&access, 0).unwrap();
    let png = dir.path().join("extended.png");
    let mut best = 0.0f64;
    let end = Instant::now() + Duration::from_secs(90);
    let mut clicked = None::<Instant>;
    loop {
        // Until the window shows frames and the menu is open, click again now and then (the
        // first clicks can come before the window exists or before the tablet attached).
        if clicked.is_none_or(|c| c.elapsed() > Duration::from_secs(5)) {
            // Two moves: the pointer may already sit at the centre, and a move to where it is
            // is no motion at all.
            for (x, y) in [(390, 290), (400, 300)] {
                input.send(0, &InputEvent::PointerMove { x, y }).unwrap();
            }
            for down in [true, false] {
                input
                    .send(
                        0,
                        &InputEvent::Button {
                            button: MouseButton::Right,
                            down,
                        },
                    )
                    .unwrap();
            }
            clicked = Some(Instant::now());
        }
        capture.request_full();
        let frame = capture
            .next_frame(Duration::from_secs(1))
            .unwrap()
            .expect("a full frame");
        let (w, h) = (frame.width as usize, frame.height as usize);
        let pixels: Vec<u8> = (0..h)
            .flat_map(|r| frame.data[r * frame.stride..r * frame.stride + w * 4].to_vec())
            .collect();
        d.ok(&[
            "ws",
            "screenshot",
            "design",
            "--monitor",
            &id.to_string(),
            png.to_str().unwrap(),
        ]);
        let p = psnr(&pixels, &std::fs::read(&png).unwrap(), w, h);
        best = best.max(p);
        let last_busy = busy(&pixels);
        if p >= 35.0 && last_busy > 0.01 {
            println!(
                "the window shows the extended monitor: PSNR {p:.1} dB, {:.1}% non-background",
                last_busy * 100.0
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "the tablet's window never showed the extended monitor with the menu: best PSNR {best:.1} dB, {:.2}% non-background",
            last_busy * 100.0
        );
    }

    // A stats line a second, naming the encoder.
    let line = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("a stats line");
    assert!(line.contains("fps") && line.contains("encoder "), "{line}");

    // Ctrl-C: the tablet detaches, its monitor goes, and it says what it ran on.
    let pid = tablet.id();
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = wait_for("the tablet to exit", Duration::from_secs(30), || {
        tablet.try_wait().unwrap()
    });
    let mut err = String::new();
    tablet
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "tablet failed: {err}");
    assert!(err.contains("presenting with"), "{err}");
    wait_for(
        "the extended monitor to go",
        Duration::from_secs(30),
        || {
            monitor_of_size(&d.ok(&["ws", "show", "design"]), "800x600")
                .is_none()
                .then_some(())
        },
    );
    screen.stop();
}
