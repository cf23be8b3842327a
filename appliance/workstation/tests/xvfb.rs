//! The Xvfb backend against real Xvfb, openbox and xterm.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use periphery_workstation::input::type_text;
use periphery_workstation::procs;
use periphery_workstation::xvfb::capture::XvfbCapture;
use periphery_workstation::xvfb::input::XvfbInput;
use periphery_workstation::xvfb::{XvfbOptions, XvfbWorkstation};
use periphery_workstation::{FrameSource, InputEvent, InputSink, Limits, MonitorSize};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::ConnectionExt as _;

const TEST_UID: u32 = 61_234;

fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn options(dir: &Path, marker: &str, session: &[&str]) -> XvfbOptions {
    XvfbOptions {
        marker: marker.into(),
        runtime_dir: dir.join("run"),
        home: dir.join("home"),
        run_as: is_root().then_some((TEST_UID, TEST_UID)),
        framebuffer: Limits::default().framebuffer,
        window_manager: vec!["openbox".into()],
        session: session.iter().map(|s| s.to_string()).collect(),
        start_timeout: Duration::from_secs(20),
        cgroup: None,
        env: Vec::new(),
    }
}

fn sizes(s: &[&str]) -> Vec<MonitorSize> {
    s.iter().map(|m| m.parse().unwrap()).collect()
}

fn marker(name: &str) -> String {
    format!("test-{name}-{}", std::process::id())
}

/// Waits until the window manager lists at least `n` client windows.
fn wait_windows(ws: &XvfbWorkstation, n: usize) -> Vec<u32> {
    let conn = ws.access().connect().unwrap();
    let root = conn.setup().roots[0].root;
    let logs = || {
        let dir = ws.runtime_dir();
        ["xvfb", "wm", "session"]
            .iter()
            .map(|r| {
                format!(
                    "{r}: {}",
                    std::fs::read_to_string(dir.join(format!("{r}.log"))).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let end = Instant::now() + Duration::from_secs(30);
    let mut ok = None;
    while ok.is_none() && Instant::now() < end {
        ok = (|| {
            let atom = conn
                .intern_atom(false, b"_NET_CLIENT_LIST")
                .ok()?
                .reply()
                .ok()?
                .atom;
            let prop = conn
                .get_property(
                    false,
                    root,
                    atom,
                    x11rb::protocol::xproto::AtomEnum::WINDOW,
                    0,
                    64,
                )
                .ok()?
                .reply()
                .ok()?;
            let list: Vec<u32> = prop.value32()?.collect();
            (list.len() >= n).then_some(list)
        })();
        std::thread::sleep(Duration::from_millis(20));
    }
    ok.unwrap_or_else(|| {
        let tree = conn.query_tree(root).unwrap().reply().unwrap().children;
        let states: Vec<String> = tree
            .iter()
            .map(|w| {
                let a = conn.get_window_attributes(*w).unwrap().reply().unwrap();
                let g = conn.get_geometry(*w).unwrap().reply().unwrap();
                format!("{w:#x} {:?} {}x{}+{}+{}", a.map_state, g.width, g.height, g.x, g.y)
            })
            .collect();
        let alive: Vec<bool> = ws.pids().iter().map(|(_, p)| procs::alive(*p as i32)).collect();
        panic!(
            "no client window in 30 s ({ws:?}); pids {:?} alive {alive:?}; root children {states:?}; logs:\n{}",
            ws.pids(),
            logs()
        )
    })
}

/// Clicks the window and waits until it (or a child) has the input focus.
fn focus(ws: &XvfbWorkstation, input: &mut XvfbInput, win: u32) {
    let conn = ws.access().connect().unwrap();
    let root = conn.setup().roots[0].root;
    let pos = conn
        .translate_coordinates(win, root, 10, 10)
        .unwrap()
        .reply()
        .unwrap();
    let mon = ws.monitors()[0];
    input
        .send(
            0,
            &InputEvent::PointerMove {
                x: i32::from(pos.dst_x) - mon.x,
                y: i32::from(pos.dst_y) - mon.y,
            },
        )
        .unwrap();
    for down in [true, false] {
        let ev = InputEvent::Button {
            button: periphery_workstation::MouseButton::Left,
            down,
        };
        input.send(0, &ev).unwrap();
    }
    wait_for(
        "the input focus on the terminal",
        Duration::from_secs(20),
        || {
            let mut f = conn.get_input_focus().ok()?.reply().ok()?.focus;
            // The focus may be on a child of the client window, or the client itself.
            for _ in 0..4 {
                if f == win {
                    return Some(());
                }
                f = conn.query_tree(f).ok()?.reply().ok()?.parent;
            }
            None
        },
    );
}

#[test]
fn typing_into_the_terminal_writes_a_file_owned_by_the_workstation() {
    let dir = tempfile::tempdir().unwrap();
    let ws = XvfbWorkstation::start(
        options(dir.path(), &marker("type"), &["xterm"]),
        &sizes(&["1280x800"]),
    )
    .unwrap();
    let win = wait_windows(&ws, 1)[0];
    let mut input = XvfbInput::new(&ws.access()).unwrap();
    focus(&ws, &mut input, win);
    for ev in type_text("echo hello > ~/probe\n") {
        input.send(0, &ev).unwrap();
    }
    let probe = dir.path().join("home/probe");
    wait_for("the probe file", Duration::from_secs(20), || {
        std::fs::read_to_string(&probe)
            .ok()
            .filter(|s| s == "hello\n")
    });
    if is_root() {
        assert_eq!(std::fs::metadata(&probe).unwrap().uid(), TEST_UID);
    } else {
        println!("not root: the workstation ran as this user, uid separation not tested");
    }
    let marker = marker("type");
    ws.stop();
    assert!(procs::marked(&marker).is_empty());
}

#[test]
fn damage_follows_changes_and_an_idle_screen_produces_no_frames() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("damage");
    let ws =
        XvfbWorkstation::start(options(dir.path(), &m, &["xterm"]), &sizes(&["1024x768"])).unwrap();
    let win = wait_windows(&ws, 1)[0];
    let mut input = XvfbInput::new(&ws.access()).unwrap();
    focus(&ws, &mut input, win);
    let mut cap = XvfbCapture::new(&ws.access(), 0).unwrap();
    let first = cap.next_frame(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((first.width, first.height), (1024, 768));
    assert_eq!(first.damage.len(), 1);
    assert_eq!(first.damage[0].area(), 1024 * 768);
    // The pixels are the screen's: the terminal's white background inside its window, the
    // black root outside it.
    let conn = ws.access().connect().unwrap();
    let root = conn.setup().roots[0].root;
    let p = conn
        .translate_coordinates(win, root, 100, 100)
        .unwrap()
        .reply()
        .unwrap();
    assert_eq!(
        first.pixel(p.dst_x as u32, p.dst_y as u32)[..3],
        [255, 255, 255]
    );
    assert_eq!(first.pixel(2, 2)[..3], [0, 0, 0]);

    // Let the desktop settle (cursor blink is off in xterm by default), then it must be still.
    wait_for("a quiet screen", Duration::from_secs(20), || {
        cap.next_frame(Duration::from_millis(500))
            .unwrap()
            .is_none()
            .then_some(())
    });
    let cpu_before = own_cpu();
    let t = Instant::now();
    assert!(
        cap.next_frame(Duration::from_secs(2)).unwrap().is_none(),
        "frames while idle"
    );
    let cpu = own_cpu() - cpu_before;
    println!("idle capture: {:?} CPU over {:?}", cpu, t.elapsed());
    assert!(
        cpu < Duration::from_millis(100),
        "capture busy-waits: {cpu:?} CPU in 2 s"
    );

    // Typing changes pixels: a frame with damage inside the monitor arrives.
    for ev in type_text("xyz") {
        input.send(0, &ev).unwrap();
    }
    let frame = cap
        .next_frame(Duration::from_secs(5))
        .unwrap()
        .expect("a frame after typing");
    assert!(!frame.damage.is_empty());
    for r in &frame.damage {
        assert!(
            r.x >= 0 && r.y >= 0 && r.x as u32 + r.w <= 1024 && r.y as u32 + r.h <= 768,
            "{r:?}"
        );
        assert!(
            r.area() < 1024 * 768,
            "damage covers the whole monitor: {r:?}"
        );
    }
}

/// User plus system CPU time of the calling thread (other tests run in other threads).
fn own_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((f[11] + f[12]) * 10)
}

#[test]
fn two_monitors_two_sources_and_the_pointer_lands_on_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let ws = XvfbWorkstation::start(
        options(dir.path(), &marker("two"), &[]),
        &sizes(&["1920x1080", "1024x768"]),
    )
    .unwrap();
    let mons = ws.monitors();
    assert_eq!(mons.len(), 2);
    let mut c0 = XvfbCapture::new(&ws.access(), 0).unwrap();
    let mut c1 = XvfbCapture::new(&ws.access(), 1).unwrap();
    let f0 = c0.next_frame(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((f0.width, f0.height), (1920, 1080));
    let f1 = c1.next_frame(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((f1.width, f1.height), (1024, 768));

    let mut input = XvfbInput::new(&ws.access()).unwrap();
    input
        .send(1, &InputEvent::PointerMove { x: 100, y: 50 })
        .unwrap();
    let conn = ws.access().connect().unwrap();
    let root = conn.setup().roots[0].root;
    let p = conn.query_pointer(root).unwrap().reply().unwrap();
    assert_eq!(
        (i32::from(p.root_x), i32::from(p.root_y)),
        (mons[1].x + 100, 50)
    );
    assert!(mons[1].rect().contains(p.root_x.into(), p.root_y.into()));
    // The X server's own view of the monitors (RandR) matches.
    let listed = conn
        .randr_get_monitors(root, true)
        .unwrap()
        .reply()
        .unwrap()
        .monitors;
    assert_eq!(
        listed.len(),
        2,
        "the automatic full-framebuffer monitor is gone"
    );
}

use x11rb::protocol::randr::ConnectionExt as _;

#[test]
fn monitors_come_and_go_at_run_time_and_windows_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut ws = XvfbWorkstation::start(
        options(dir.path(), &marker("hotplug"), &["xterm"]),
        &sizes(&["1280x800"]),
    )
    .unwrap();
    let win = wait_windows(&ws, 1)[0];
    let added = ws.add_monitor("1024x768".parse().unwrap(), 4).unwrap();
    assert_eq!((added.id, added.x), (1, 1280));
    let mut cap = XvfbCapture::new(&ws.access(), 1).unwrap();
    assert!(cap.next_frame(Duration::from_secs(5)).unwrap().is_some());

    // Move the terminal onto the new monitor, then remove the monitor.
    let conn = ws.access().connect().unwrap();
    let root = conn.setup().roots[0].root;
    let aux = x11rb::protocol::xproto::ConfigureWindowAux::new()
        .x(1400)
        .y(100);
    conn.configure_window(win, &aux).unwrap();
    conn.flush().unwrap();
    let on = |lo: i32, hi: i32| {
        let p = conn
            .translate_coordinates(win, root, 0, 0)
            .ok()?
            .reply()
            .ok()?;
        (i32::from(p.dst_x) >= lo && i32::from(p.dst_x) < hi).then_some(())
    };
    wait_for("the terminal on monitor 1", Duration::from_secs(10), || {
        on(1280, 2304)
    });
    ws.remove_monitor(1).unwrap();
    wait_for(
        "the terminal back on monitor 0",
        Duration::from_secs(10),
        || on(0, 1280),
    );
    assert!(
        cap.next_frame(Duration::from_millis(10)).is_err(),
        "a removed monitor still captures"
    );
    assert!(ws.remove_monitor(0).is_err());
    assert!(ws.add_monitor("7000x768".parse().unwrap(), 4).is_err());
}

#[test]
fn stopping_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("stop");
    let ws =
        XvfbWorkstation::start(options(dir.path(), &m, &["xterm"]), &sizes(&["800x600"])).unwrap();
    wait_windows(&ws, 1);
    let pids: Vec<u32> = ws.pids().iter().map(|(_, p)| *p).collect();
    let mut all: Vec<i32> = Vec::new();
    for p in &pids {
        all.extend(procs::tree(*p as i32));
    }
    // Xvfb, openbox, xterm and the shell inside it at least.
    assert!(all.len() >= 4, "{all:?}");
    let names: Vec<String> = all.iter().filter_map(|p| procs::command_name(*p)).collect();
    assert!(names.iter().any(|n| n == "Xvfb"), "{names:?}");
    ws.stop();
    for p in all {
        assert!(
            !procs::alive(p),
            "process {p} ({:?}) survived the stop",
            procs::command_name(p)
        );
    }
    assert!(procs::marked(&m).is_empty());
}
