//! Periphery render jobs.
//!
//! - [`template`]: Open Job Description (2023-09) templates parsed and validated by
//!   `openjd-model`, instantiated with parameter values, and expanded into the tasks of each
//!   step (frame ranges chunked with `CHUNK[INT]`), with the steps' dependencies.
//! - [`builtin`]: the built-in templates (Blender frames, Blender frames to a video, any
//!   command line);
//! - [`blender`]: a render task's Blender arguments and its output read into progress and
//!   failures;
//! - [`farm`]: the scheduling, sans-IO with time passed in: priorities, tags, dependencies,
//!   retries, blocklists, lost nodes, pause/resume/cancel/retry, and why tasks wait.

pub mod blender;
pub mod builtin;
pub mod farm;
pub mod template;
