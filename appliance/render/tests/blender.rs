//! The real Blender (Debian's, installed by `make test`'s setup): the arguments render the
//! frames they name, the output parser sees them saved, and a failure comes with Blender's
//! own line.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::process::Command;

use periphery_render::blender::{args, parse_line, parse_range, Event};

/// A tiny Cycles scene (4 samples, 64x48, no denoiser: Debian's build has none).
fn scene(dir: &std::path::Path) -> String {
    let path = dir.join("cube.blend");
    let out = Command::new("blender")
        .args(["-b", "--factory-startup", "--python-expr"])
        .arg(format!(
            "import bpy; s=bpy.context.scene; s.render.engine='CYCLES'; s.cycles.samples=4; \
             s.cycles.use_denoising=False; s.render.resolution_x=64; s.render.resolution_y=48; \
             bpy.ops.wm.save_as_mainfile(filepath='{}')",
            path.display()
        ))
        .output()
        .expect("blender is installed (scripts/setup.sh)");
    assert!(path.exists(), "{}", String::from_utf8_lossy(&out.stdout));
    path.display().to_string()
}

fn render(scene: &str, out: &str, frames: &str) -> (Vec<Event>, std::process::ExitStatus) {
    let (start, end) = parse_range(frames).unwrap();
    let o = Command::new("blender")
        .args(args(scene, out, start, end))
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(parse_line)
        .collect();
    (events, o.status)
}

#[test]
fn a_chunk_renders_its_frames_and_the_parser_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let scene = scene(dir.path());
    let out = dir.path().join("out");
    let (events, status) = render(&scene, out.to_str().unwrap(), "2-4");
    assert!(status.success());
    let saved: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Saved(p) => Some(p),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (2..=4)
        .map(|f| out.join(format!("{f:04}.png")).display().to_string())
        .collect();
    assert_eq!(saved, want.iter().collect::<Vec<_>>());
    for p in &want {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{p} is a PNG");
    }
    assert!(events.contains(&Event::Frame(3)));
    assert!(events.contains(&Event::Samples { done: 4, total: 4 }));
    assert!(!events.iter().any(|e| matches!(e, Event::Error(_))));
}

#[test]
fn failures_are_reported_with_blenders_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.blend");
    let (events, status) = render(missing.to_str().unwrap(), dir.path().to_str().unwrap(), "1");
    assert!(!status.success());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Error(l) if l.starts_with("Error: Cannot read file"))),
        "{events:?}"
    );
}
