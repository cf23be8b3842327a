//! Capture benchmark (`make bench`): a 1080p monitor of a real Xvfb workstation.
//!
//! - The frame source (damage drain + MIT-SHM GetImage into its shared segment), with a full
//!   frame forced on every call, against a bare MIT-SHM GetImage loop on the same display, in
//!   the same run: the ratio is the frame source's overhead.
//! - An idle workstation: CPU used by the capturing process and by Xvfb while the frame source
//!   waits for changes that do not come.
//!
//! Figures, not pass/fail.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use periphery_workstation::xvfb::{XvfbOptions, XvfbWorkstation};
use periphery_workstation::{Limits, Workstation};
use x11rb::connection::Connection;
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xproto::ImageFormat;

const FRAMES: u32 = 300;

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return Duration::ZERO;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((f[11] + f[12]) * 10)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ws = XvfbWorkstation::start(
        XvfbOptions {
            marker: format!("bench-{}", std::process::id()),
            runtime_dir: dir.path().join("run"),
            home: dir.path().join("home"),
            run_as: None,
            framebuffer: Limits::default().framebuffer,
            window_manager: vec![],
            session: vec![],
            start_timeout: Duration::from_secs(20),
            cgroup: None,
            env: Vec::new(),
        },
        &["1920x1080".parse().unwrap()],
    )
    .unwrap();
    let access = ws.access();

    // Bare loop: MIT-SHM GetImage of the same rectangle into an attached segment.
    let conn = access.connect().unwrap();
    let root = conn.setup().roots[0].root;
    let fd = rustix::fs::memfd_create("bench", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 1920 * 1080 * 4).unwrap();
    let seg = conn.generate_id().unwrap();
    conn.shm_attach_fd(seg, fd, false).unwrap().check().unwrap();
    let bare = {
        let t = Instant::now();
        for _ in 0..FRAMES {
            conn.shm_get_image(
                root,
                0,
                0,
                1920,
                1080,
                !0,
                ImageFormat::Z_PIXMAP.into(),
                seg,
                0,
            )
            .unwrap()
            .reply()
            .unwrap();
        }
        t.elapsed() / FRAMES
    };

    let mut source = Workstation::frame_source(&ws, 0).unwrap();
    let ours = {
        let t = Instant::now();
        for _ in 0..FRAMES {
            source.request_full();
            let f = source.next_frame(Duration::from_secs(1)).unwrap().unwrap();
            std::hint::black_box(f.data[0]);
        }
        t.elapsed() / FRAMES
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "capture 1920x1080: frame source {:.2} ms/frame ({:.0} fps), bare MIT-SHM GetImage {:.2} ms/frame ({:.0} fps); frame source / bare = {:.2}",
        ms(ours),
        1000.0 / ms(ours),
        ms(bare),
        1000.0 / ms(bare),
        ms(ours) / ms(bare)
    );

    // Idle: nothing draws; the source waits for damage.
    let xvfb = ws.pids()[0].1;
    let me = std::process::id();
    let (me0, x0) = (cpu_of(me), cpu_of(xvfb));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert!(source.next_frame(Duration::from_secs(3)).unwrap().is_none());
    }
    let wall = t.elapsed();
    let (me1, x1) = (cpu_of(me), cpu_of(xvfb));
    println!(
        "idle workstation over {:.1} s: capture side {:.2}% of a core, Xvfb {:.2}% of a core",
        wall.as_secs_f64(),
        (me1 - me0).as_secs_f64() / wall.as_secs_f64() * 100.0,
        (x1 - x0).as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    ws.stop();
}
