//! The helpers the built-in templates call (`periphery-render-node blender …`,
//! `periphery-render-node assemble …`): small programs of their own, so a task is always
//! one command line and a template stays plain Open Job Description.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context};

use periphery_render::blender::{args, parse_line, parse_range, Event};

use crate::spawn::Out;

/// Renders frames `frames` (`1-5`, `7`) of `scene` into `out/####.png` with the `blender`
/// on PATH. Blender's lines pass through; an error line, a non-zero exit or a frame not
/// saved fails the task with Blender's own words.
pub fn blender(scene: &str, frames: &str, out: &str) -> anyhow::Result<()> {
    let (start, end) = parse_range(frames)
        .with_context(|| format!("'{frames}' is not a frame range (a-b with a <= b, or a)"))?;
    if !Path::new(scene).is_file() {
        bail!("Error: Cannot read file '{scene}': No such file");
    }
    // Blender resolves relative paths against $PWD, not the working directory: give it
    // absolute ones.
    let cwd = std::env::current_dir()?;
    let (scene, out) = (cwd.join(scene), cwd.join(out));
    let (scene, out) = (scene.to_string_lossy(), out.to_string_lossy());
    let mut child = crate::spawn::spawn(
        Path::new("blender"),
        &args(&scene, &out, start, end),
        &cwd,
        Out::Pipe,
        Out::Inherit,
    )
    .context("cannot run blender (is it installed and on PATH?)")?;
    let mut error = None;
    let mut saved = 0;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(std::fs::File::from(stdout)).lines() {
            let line = line.unwrap_or_default();
            println!("{line}");
            match parse_line(&line) {
                Some(Event::Error(e)) => error = error.or(Some(e)),
                Some(Event::Saved(_)) => saved += 1,
                _ => {}
            }
        }
    }
    let status = child.wait_blocking()?;
    if let Some(e) = error {
        bail!("{e}");
    }
    if !status.success() {
        bail!("blender exited with {status}");
    }
    let want = end - start + 1;
    if saved != want {
        bail!("blender saved {saved} of {want} frames");
    }
    Ok(())
}

/// Encodes the PNG frames in `dir` (in name order) into the video `out` at `fps`.
pub fn assemble(fps: u32, dir: &Path, out: &Path) -> anyhow::Result<()> {
    let mut frames: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!("no PNG frames in {}", dir.display());
    }
    let mut writer = None;
    for f in &frames {
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
        ));
        let mut reader = decoder
            .read_info()
            .with_context(|| format!("{} is not a PNG", f.display()))?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf)?;
        let (w, h) = (info.width, info.height);
        let px = match (info.color_type, info.bit_depth) {
            (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
            (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
            other => bail!("{}: unsupported PNG format {other:?}", f.display()),
        };
        let mut bgra = Vec::with_capacity((w * h * 4) as usize);
        for p in buf[..(w * h) as usize * px].chunks_exact(px) {
            bgra.extend_from_slice(&[p[2], p[1], p[0], 255]);
        }
        let wr = match &mut writer {
            Some(wr) => wr,
            None => writer.insert(periphery_media::video::VideoWriter::create(out, w, h, fps)?),
        };
        wr.push_bgra(&bgra)
            .with_context(|| format!("{}: all frames must have one size", f.display()))?;
    }
    let n = writer.map(|w| w.finish()).transpose()?.unwrap_or(0);
    println!("assembled {n} frames into {}", out.display());
    Ok(())
}
