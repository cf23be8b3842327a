//! `periphery-test-animate`: a session program for benchmarks. It repaints an area of the root
//! window at a fixed rate with a pattern that changes everywhere on every frame (a grid of
//! colour blocks whose hues drift, crossed by a moving band), so a streaming benchmark is not
//! bounded by how often the content changes.
//!
//! `periphery-test-animate [WIDTHxHEIGHT] [FPS]` (defaults 1920x1080 and 60; FPS 0 paints as
//! fast as the X server takes it). Uses `DISPLAY` and `XAUTHORITY` like any X client.

use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ChangeGCAux, ConnectionExt as _, CreateGCAux, Rectangle};

const BLOCK: u16 = 60;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (w, h) = match args.next() {
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or("size is WIDTHxHEIGHT")?;
            (w.parse::<u16>()?, h.parse::<u16>()?)
        }
        None => (1920, 1080),
    };
    let fps: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let (conn, screen) = x11rb::connect(None)?;
    let root = conn.setup().roots[screen].root;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, root, &CreateGCAux::new())?;
    let period = (fps > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(fps)));
    let start = Instant::now();
    for frame in 0u64.. {
        let t = frame as f64 / 60.0;
        for by in 0..h.div_ceil(BLOCK) {
            for bx in 0..w.div_ceil(BLOCK) {
                let phase = t * 2.0 + f64::from(bx) * 0.21 + f64::from(by) * 0.37;
                let c = |o: f64| ((phase + o).sin() * 0.5 + 0.5) * 255.0;
                let pixel = (c(0.0) as u32) << 16 | (c(2.1) as u32) << 8 | c(4.2) as u32;
                conn.change_gc(gc, &ChangeGCAux::new().foreground(pixel))?;
                conn.poly_fill_rectangle(
                    root,
                    gc,
                    &[Rectangle {
                        x: (bx * BLOCK) as i16,
                        y: (by * BLOCK) as i16,
                        width: BLOCK,
                        height: BLOCK,
                    }],
                )?;
            }
        }
        // A white band sweeping across.
        let x = ((frame * 24) % u64::from(w)) as i16;
        conn.change_gc(gc, &ChangeGCAux::new().foreground(0x00ff_ffff))?;
        conn.poly_fill_rectangle(
            root,
            gc,
            &[Rectangle {
                x,
                y: 0,
                width: 40,
                height: h,
            }],
        )?;
        // Wait for the server to have drawn it: the rate is what was painted, not queued.
        conn.get_input_focus()?.reply()?;
        if frame % 300 == 299 {
            eprintln!(
                "periphery-test-animate: {:.1} frames/s painted",
                (frame + 1) as f64 / start.elapsed().as_secs_f64()
            );
        }
        if let Some(p) = period {
            let next = start + p * (frame as u32 + 1);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(())
}
