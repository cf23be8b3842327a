//! The built-in job templates: Open Job Description documents like any other, chosen by name
//! (`periphery render submit scene.blend …` uses `blender` or `blender-video`, a directory of
//! frames with `--video` uses `assemble`, `--command` uses `command`). A cloud farm that takes OpenJD can run them as they are, given
//! `periphery-render-node` on its workers for the Blender and assembly helpers.

// The parts the two Blender templates share, as literals so `concat!` can join them.
macro_rules! blender_parameters {
    () => {
        r#"
specificationVersion: jobtemplate-2023-09
extensions: [TASK_CHUNKING]
parameterDefinitions:
  - name: Scene
    type: STRING
    minLength: 1
  - name: Frames
    type: STRING
    default: "1-10"
  - name: Chunk
    type: INT
    default: 1
    minValue: 1
"#
    };
}

// A step's task parameter `Frame`: the job's `Frames` in chunks of at most `Chunk`.
macro_rules! chunked_frames {
    () => {
        r#"
    parameterSpace:
      taskParameterDefinitions:
        - name: Frame
          type: CHUNK[INT]
          range: "{{Param.Frames}}"
          chunks:
            defaultTaskCount: "{{Param.Chunk}}"
            rangeConstraint: CONTIGUOUS
"#
    };
}

// `Video` and `Fps`: what an assembly makes.
macro_rules! video_parameters {
    () => {
        r#"
  - name: Video
    type: STRING
    default: video.mp4
    minLength: 1
  - name: Fps
    type: INT
    default: 24
    minValue: 1
    maxValue: 240
"#
    };
}

macro_rules! blender_render_step {
    () => {
        concat!(
            r#"
  - name: Render"#,
            chunked_frames!(),
            r#"    script:
      actions:
        onRun:
          command: periphery-render-node
          args: [blender, "{{Param.Scene}}", "{{Task.Param.Frame}}", out]
"#
        )
    };
}

/// Blender frames, chunked: each task renders `Task.Param.Frame` (a range such as `1-5`) of
/// `Scene` into `out/####.png` through `periphery-render-node blender`, which runs Blender
/// with the documented arguments and fails the task on Blender's error lines.
pub const BLENDER: &str = concat!(
    blender_parameters!(),
    r#"name: "{{Param.Scene}} {{Param.Frames}}"
steps:"#,
    blender_render_step!()
);

/// [`BLENDER`] and then one task that encodes the frames into `out/<Video>` (H.264 in MP4)
/// at `Fps` through `periphery-render-node assemble`.
pub const BLENDER_VIDEO: &str = concat!(
    blender_parameters!(),
    video_parameters!(),
    r#"name: "{{Param.Scene}} {{Param.Frames}} -> {{Param.Video}}"
steps:"#,
    blender_render_step!(),
    r#"  - name: Assemble
    dependencies:
      - dependsOn: Render
    script:
      actions:
        onRun:
          command: periphery-render-node
          args: [assemble, --fps, "{{Param.Fps}}", out, "out/{{Param.Video}}"]
"#
);

/// FFmpeg assembly alone: the PNG frames under `frames/` (in name order) encoded into
/// `out/<Video>` at `Fps`.
pub const ASSEMBLE: &str = concat!(
    r#"
specificationVersion: jobtemplate-2023-09
name: "assemble {{Param.Video}}"
parameterDefinitions:"#,
    video_parameters!(),
    r#"steps:
  - name: Assemble
    script:
      actions:
        onRun:
          command: periphery-render-node
          args: [assemble, --fps, "{{Param.Fps}}", frames, "out/{{Param.Video}}"]
"#
);

/// Any command line over a frame range: each task runs `sh -c Command` with the chunk of
/// frames (`1-5`; a single frame is `7-7`) as `$1`.
pub const COMMAND: &str = concat!(
    r#"
specificationVersion: jobtemplate-2023-09
extensions: [TASK_CHUNKING]
name: "{{Param.Name}}"
parameterDefinitions:
  - name: Command
    type: STRING
    minLength: 1
  - name: Name
    type: STRING
    default: command
  - name: Frames
    type: STRING
    default: "1"
  - name: Chunk
    type: INT
    default: 1
    minValue: 1
steps:
  - name: Run"#,
    chunked_frames!(),
    r#"    script:
      actions:
        onRun:
          command: sh
          args: ["-c", "{{Param.Command}}", "sh", "{{Task.Param.Frame}}"]
"#
);

/// The built-in templates, by name.
pub const BUILTINS: &[(&str, &str)] = &[
    ("blender", BLENDER),
    ("blender-video", BLENDER_VIDEO),
    ("assemble", ASSEMBLE),
    ("command", COMMAND),
];

/// A built-in template by name.
pub fn by_name(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The names [`by_name`] knows, comma-separated.
pub fn names() -> String {
    BUILTINS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What built-in template `name` needs of a job's input files (their paths `inputs`) beyond
/// its parameters, so a job that could not run is refused at submit time: an assembly
/// needs frames under `frames/`, a Blender render its `Scene` among the inputs.
pub fn check_inputs(
    name: &str,
    params: &[(String, String)],
    inputs: &[&str],
) -> Result<(), String> {
    if name == "assemble" && !inputs.iter().any(|p| p.starts_with("frames/")) {
        return Err("an assembly needs PNG frames, uploaded under frames/".into());
    }
    if name == "blender" || name == "blender-video" {
        let scene = params
            .iter()
            .find(|(k, _)| k == "Scene")
            .map_or("", |(_, v)| v.as_str());
        if !inputs.contains(&scene) {
            return Err(format!(
                "the scene '{scene}' is not among the job's input files"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::template::Template;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn every_builtin_is_a_valid_template() {
        for (n, _) in BUILTINS {
            Template::parse(by_name(n).unwrap()).unwrap();
        }
        assert!(by_name("maya").is_none());
        assert_eq!(names(), "blender, blender-video, assemble, command");
    }

    #[test]
    fn builtins_refuse_jobs_missing_their_inputs() {
        let scene = [p("Scene", "s.blend")];
        assert!(check_inputs("blender", &scene, &["s.blend"]).is_ok());
        let e = check_inputs("blender-video", &scene, &["other.blend"]).unwrap_err();
        assert!(e.contains("'s.blend' is not among"), "{e}");
        assert!(check_inputs("assemble", &[], &["frames/0001.png"]).is_ok());
        assert!(check_inputs("assemble", &[], &["0001.png"])
            .unwrap_err()
            .contains("frames/"));
        assert!(check_inputs("command", &[], &[]).is_ok());
    }

    #[test]
    fn blender_tasks_render_their_chunk_and_the_video_waits() {
        let t = Template::parse(BLENDER_VIDEO).unwrap();
        let job = t
            .instantiate(
                &[
                    p("Scene", "shot.blend"),
                    p("Frames", "1-10"),
                    p("Chunk", "4"),
                ],
                "/",
            )
            .unwrap();
        let argv: Vec<String> = job.steps[0]
            .tasks
            .iter()
            .map(|t| t.argv.join(" "))
            .collect();
        assert_eq!(
            argv,
            [
                "periphery-render-node blender shot.blend 1-4 out",
                "periphery-render-node blender shot.blend 5-7 out",
                "periphery-render-node blender shot.blend 8-10 out",
            ]
        );
        assert_eq!(job.steps[1].depends_on, ["Render"]);
        assert_eq!(
            job.steps[1].tasks[0].argv.join(" "),
            "periphery-render-node assemble --fps 24 out out/video.mp4"
        );
    }

    #[test]
    fn bad_blender_parameters_are_refused_with_their_name() {
        let t = Template::parse(BLENDER).unwrap();
        for (params, needle) in [
            (vec![p("Scene", "s"), p("Chunk", "0")], "Chunk"),
            (vec![p("Scene", "s"), p("Frames", "10-1")], "10-1"),
            (vec![p("Scene", "s"), p("Bogus", "1")], "Bogus"),
            (vec![], "Scene"),
        ] {
            let e = t.instantiate(&params, "/").unwrap_err().to_string();
            assert!(e.contains(needle), "{params:?}: {e}");
        }
    }

    #[test]
    fn a_command_gets_its_frames_as_the_first_argument() {
        let t = Template::parse(COMMAND).unwrap();
        let job = t
            .instantiate(&[p("Command", "echo $1"), p("Frames", "1-3")], "/")
            .unwrap();
        assert_eq!(job.steps[0].tasks.len(), 3);
        // A chunk of one frame is still a range.
        assert_eq!(
            job.steps[0].tasks[2].argv,
            ["sh", "-c", "echo $1", "sh", "3-3"]
        );
    }
}
