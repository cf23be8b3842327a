//! Blender on the command line: the arguments of a render task, and its output read line by
//! line into progress and failures (sans-IO: feed lines, read events).
//!
//! Blender prints `Fra:12 Mem:… | Time:… | Rendering 5 / 64 samples` (Cycles) or
//! `… | Sample 5/64`, `Saved: '/out/0012.png'` when a frame is written, and since 4.2 prefixes
//! lines with `render | `. Known error lines fail the task with the line shown: a scene that
//! does not open, an output that cannot be written, a GPU error.

/// The arguments for rendering `scene` frames `start..=end` to `out_dir/####.png`, in the
/// documented order: options first, the frames last (Blender acts on arguments in order).
pub fn args(scene: &str, out_dir: &str, start: i64, end: i64) -> Vec<String> {
    vec![
        "-b".into(),
        "-y".into(),
        scene.into(),
        "-o".into(),
        format!("{}/####", out_dir.trim_end_matches('/')),
        "-F".into(),
        "PNG".into(),
        "-x".into(),
        "1".into(),
        "-s".into(),
        start.to_string(),
        "-e".into(),
        end.to_string(),
        "-a".into(),
    ]
}

/// A frame range `a-b` or a single frame `a`, as OpenJD chunks print them.
pub fn parse_range(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    // A leading minus is a negative frame, not a separator.
    let separator = s.char_indices().skip(1).find(|&(_, c)| c == '-');
    match separator.map(|(i, _)| i) {
        Some(i) => {
            let (a, b) = (s[..i].trim().parse().ok()?, s[i + 1..].trim().parse().ok()?);
            (a <= b).then_some((a, b))
        }
        None => {
            let a = s.parse().ok()?;
            Some((a, a))
        }
    }
}

/// What a line of Blender's output means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Working on a frame.
    Frame(i64),
    /// Sample progress within the frame (Cycles).
    Samples {
        /// Done.
        done: u32,
        /// Of.
        total: u32,
    },
    /// A frame was written.
    Saved(String),
    /// A failure: the task fails with this line.
    Error(String),
}

const ERRORS: &[&str] = &[
    "Unable to open",
    "cannot save",
    "Cannot save",
    "CUDA error",
    "OptiX error",
    "HIP error",
    "Error: Cannot read file",
    "Error: File format is not supported",
    "EXCEPTION_ACCESS_VIOLATION",
    "Segmentation fault",
];

/// Reads one line of Blender's output.
pub fn parse_line(line: &str) -> Option<Event> {
    let line = line.trim_end();
    let line = line.strip_prefix("render | ").unwrap_or(line);
    // Blender reports failures as `Error: …` (measured with 3.4.1: a missing scene, a build
    // without the denoiser the scene asks for); that line is what the user is shown.
    if line.starts_with("Error: ") || ERRORS.iter().any(|e| line.contains(e)) {
        return Some(Event::Error(line.to_owned()));
    }
    if let Some(rest) = line.strip_prefix("Saved: ") {
        let path = rest
            .split(" Time:")
            .next()
            .unwrap_or(rest)
            .trim()
            .trim_matches('\'')
            .to_owned();
        return Some(Event::Saved(path));
    }
    if let Some(rest) = line.strip_prefix("Fra:") {
        // Sample progress first: it is the finer figure.
        for marker in ["Sample ", "Rendering "] {
            if let Some(i) = line.rfind(marker) {
                let tail = &line[i + marker.len()..];
                let (done, total) = tail
                    .split_once('/')
                    .map(|(a, b)| (a.trim(), b.split_whitespace().next().unwrap_or("")))?;
                if let (Ok(done), Ok(total)) = (done.parse(), total.parse()) {
                    return Some(Event::Samples { done, total });
                }
            }
        }
        let n: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        return n.parse().ok().map(Event::Frame);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_put_the_frames_last() {
        let a = args("/jobs/1/shot.blend", "/jobs/1/out/", 11, 15);
        assert_eq!(
            a.join(" "),
            "-b -y /jobs/1/shot.blend -o /jobs/1/out/#### -F PNG -x 1 -s 11 -e 15 -a"
        );
    }

    #[test]
    fn ranges_as_openjd_prints_them() {
        assert_eq!(parse_range("1-5"), Some((1, 5)));
        assert_eq!(parse_range("7"), Some((7, 7)));
        assert_eq!(parse_range("-3--1"), Some((-3, -1)));
        assert_eq!(parse_range("-2"), Some((-2, -2)));
        assert_eq!(parse_range("5-1"), None);
        assert_eq!(parse_range("x"), None);
        assert_eq!(parse_range(""), None);
    }

    #[test]
    fn progress_lines_of_old_and_new_blender() {
        assert_eq!(
            parse_line("Fra:12 Mem:35.2M (Peak 36.1M) | Time:00:01.20 | Syncing Cube"),
            Some(Event::Frame(12))
        );
        assert_eq!(
            parse_line("Fra:3 Mem:88.00M (Peak 90M) | Time:00:02.11 | Remaining:00:05.01 | Mem:12M, Peak:12M | Scene, ViewLayer | Sample 5/64"),
            Some(Event::Samples { done: 5, total: 64 })
        );
        assert_eq!(
            parse_line("render | Fra:3 Mem:88M | Time:00:02.11 | Rendering 17 / 128 samples"),
            Some(Event::Samples {
                done: 17,
                total: 128
            })
        );
        assert_eq!(
            parse_line("Saved: '/out/0012.png'"),
            Some(Event::Saved("/out/0012.png".into()))
        );
        assert_eq!(
            parse_line("render | Saved: '/out/0013.png' Time: 00:01.02 (Saving: 00:00.01)"),
            Some(Event::Saved("/out/0013.png".into()))
        );
        assert_eq!(
            parse_line("Blender 4.2.1 (hash 396f546c9d82 built 2024-08-19)"),
            None
        );
    }

    #[test]
    fn blender_3_4_lines_as_measured() {
        // From Debian's Blender 3.4.1 rendering a Cycles scene, frames 1-2.
        assert_eq!(
            parse_line("Fra:2 Mem:9.90M (Peak 10.83M) | Time:00:00.00 | Mem:0.76M, Peak:0.76M | Scene, ViewLayer | Sample 0/4"),
            Some(Event::Samples { done: 0, total: 4 })
        );
        assert_eq!(
            parse_line("Fra:2 Mem:10.06M (Peak 10.83M) | Time:00:00.00 | Mem:0.86M, Peak:0.86M | Scene, ViewLayer | Finished"),
            Some(Event::Frame(2))
        );
        assert_eq!(
            parse_line("Saved: '/tmp/bl/out/0002.png'"),
            Some(Event::Saved("/tmp/bl/out/0002.png".into()))
        );
        assert_eq!(parse_line(" Time: 00:00.00 (Saving: 00:00.00)"), None);
        assert_eq!(parse_line("Blender quit"), None);
        for l in [
            "Error: Cannot read file '/tmp/bl/nope.blend': No such file or directory",
            "Error: Build without OpenImageDenoiser",
        ] {
            assert_eq!(parse_line(l), Some(Event::Error(l.into())));
        }
    }

    #[test]
    fn known_errors_fail_with_the_line() {
        for l in [
            "Error: Unable to open \"/nope.blend\": No such file or directory.",
            "render | CUDA error: Out of memory in cuMemAlloc",
            "Error: cannot save /ro/0001.png",
        ] {
            let shown = l.trim_start_matches("render | ");
            assert_eq!(parse_line(l), Some(Event::Error(shown.into())), "{l}");
        }
    }
}
