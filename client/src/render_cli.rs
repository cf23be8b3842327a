//! The `render …` commands, as `periphery render` (the admin CLI, and from inside a
//! workstation) and `periphery-tablet render` offer them: one set of commands over any
//! [`Requester`]. Files are uploaded by content (only what the appliance lacks), then the job
//! is queued and watched.

use std::future::Future;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use periphery_protocol::render::{
    FileRef, JobAction, JobDetail, JobSubmission, JobSummary, TemplateSource,
};
use periphery_protocol::{Request, Response};

/// Something that runs requests on an appliance: a tablet's [`Session`](crate::session::Session),
/// the admin socket's client.
pub trait Requester {
    /// Why a request failed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Runs one request.
    fn request(&mut self, body: Request) -> impl Future<Output = Result<Response, Self::Error>>;
}

impl Requester for crate::session::Session {
    type Error = crate::session::SessionError;
    fn request(&mut self, body: Request) -> impl Future<Output = Result<Response, Self::Error>> {
        crate::session::Session::request(self, body)
    }
}

/// Why a render command failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderCliError {
    /// The appliance refused a request, or could not be reached.
    #[error(transparent)]
    Request(Box<dyn std::error::Error + Send + Sync>),
    /// A local file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command line does not make sense.
    #[error("{0}")]
    Usage(String),
    /// The appliance answered with something else than the request asks for.
    #[error("unexpected answer from the appliance: {0}")]
    Unexpected(String),
    /// The watched job ended without succeeding.
    #[error("job {job} {state}")]
    Ended {
        /// The job.
        job: u64,
        /// `failed` or `canceled`.
        state: String,
    },
}

async fn ask<R: Requester>(c: &mut R, body: Request) -> Result<Response, RenderCliError> {
    c.request(body)
        .await
        .map_err(|e| RenderCliError::Request(Box::new(e)))
}

fn unexpected(r: Response) -> RenderCliError {
    RenderCliError::Unexpected(format!("{r:?}"))
}

/// Render farm commands.
#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// Queue a job: a Blender scene (`.blend`), an Open Job Description template (`.yaml`,
    /// `.yml`, `.json`), or a directory of PNG frames to encode (with `--video`); then show
    /// its progress until it ends (Ctrl-C leaves it running).
    Submit {
        /// The scene or the template.
        file: PathBuf,
        /// Frames to render (`1-250`).
        #[arg(long)]
        frames: Option<String>,
        /// Frames per task.
        #[arg(long)]
        chunk: Option<u32>,
        /// 0-100, higher first.
        #[arg(long, default_value_t = 50)]
        priority: u8,
        /// Tags a node must carry, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Encode the frames into this video when they are done.
        #[arg(long)]
        video: Option<String>,
        /// The video's frame rate.
        #[arg(long, default_value_t = 24)]
        fps: u32,
        /// A template parameter, `Name=value` (repeatable).
        #[arg(short = 'p', long = "param")]
        params: Vec<String>,
        /// A file the tasks need, placed by its name in their working directory (repeatable).
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Run any command line over the frames instead (`$1` is the chunk, e.g. `1-5`).
        #[arg(long, conflicts_with = "video")]
        command: bool,
        /// The user the job is for.
        #[arg(long)]
        user: Option<String>,
        /// Return once queued.
        #[arg(long)]
        no_wait: bool,
    },
    /// List jobs.
    List,
    /// A job's tasks, nodes and log tails.
    Show {
        /// Job id.
        job: u64,
    },
    /// Show a job's progress until it ends.
    Watch {
        /// Job id.
        job: u64,
    },
    /// Cancel a job (running tasks are stopped on their nodes).
    Cancel {
        /// Job id.
        job: u64,
    },
    /// Hold a job: running tasks finish, no new ones start.
    Pause {
        /// Job id.
        job: u64,
    },
    /// Let a paused job go on.
    Resume {
        /// Job id.
        job: u64,
    },
    /// Run a job's failed and canceled tasks again (`--all`: every task).
    Retry {
        /// Job id.
        job: u64,
        /// Done tasks too.
        #[arg(long)]
        all: bool,
        /// Only the failed ones (the default; kept for clarity).
        #[arg(long, conflicts_with = "all")]
        failed: bool,
    },
    /// Why a job's tasks wait.
    Why {
        /// Job id.
        job: u64,
    },
    /// Render nodes.
    Nodes,
    /// A token for `periphery-render-node join`.
    NodeToken,
}

/// Uploads `path` unless the appliance has it; returns its reference as `name`.
pub async fn upload<R: Requester>(
    c: &mut R,
    path: &Path,
    name: &str,
) -> Result<FileRef, RenderCliError> {
    let data = std::fs::read(path).map_err(|source| RenderCliError::Read {
        path: path.to_owned(),
        source,
    })?;
    let hash = blake3::hash(&data).to_hex().to_string();
    let missing = match ask(
        c,
        Request::BlobMissing {
            hashes: vec![hash.clone()],
        },
    )
    .await?
    {
        Response::Missing(m) => m,
        other => return Err(unexpected(other)),
    };
    if !missing.is_empty() {
        for chunk in crate::blobs::blob_chunks(&hash, &data) {
            ask(c, chunk).await?;
        }
    }
    Ok(FileRef {
        path: name.to_owned(),
        hash,
        size: data.len() as u64,
    })
}

fn file_name(p: &Path) -> Result<String, RenderCliError> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| RenderCliError::Usage(format!("{} has no usable file name", p.display())))
}

fn line(s: &JobSummary) -> String {
    let c = &s.counts;
    let mut l = format!(
        "job {} {:<8} {}/{} done, {} running, {} failed, {} waiting",
        s.id, s.state, c.done, c.total, c.running, c.failed, c.waiting
    );
    if c.canceled > 0 {
        l.push_str(&format!(", {} canceled", c.canceled));
    }
    if let Some(eta) = s.eta_secs {
        l.push_str(&format!(", ETA {eta} s"));
    }
    l
}

fn print_detail(d: &JobDetail) {
    let s = &d.summary;
    println!(
        "job {} '{}' of {} (priority {})",
        s.id, s.name, s.user, s.priority
    );
    println!("  {}", line(s));
    println!("  outputs in {}", s.output_dir);
    for w in &d.why {
        println!("  waiting: {w}");
    }
    if !d.blocklisted.is_empty() {
        println!("  blocklisted nodes: {}", d.blocklisted.join(", "));
    }
    for t in &d.tasks {
        println!(
            "  {}[{}] {:<9} {:<14} {}{}{}",
            t.step,
            t.index,
            t.state,
            t.node.as_deref().unwrap_or("-"),
            t.params,
            t.progress
                .as_deref()
                .map(|p| format!("  ({p})"))
                .unwrap_or_default(),
            if t.failures > 0 {
                format!("  failures {}", t.failures)
            } else {
                String::new()
            }
        );
        if let Some(e) = &t.error {
            println!("      error: {e}");
        }
        if matches!(t.state.as_str(), "failed" | "running") {
            for l in t.log_tail.iter().rev().take(5).rev() {
                println!("      | {l}");
            }
        }
    }
}

async fn detail<R: Requester>(c: &mut R, req: Request) -> Result<JobDetail, RenderCliError> {
    match ask(c, req).await? {
        Response::RenderJob(d) => Ok(d),
        other => Err(unexpected(other)),
    }
}

/// A job's summary, without its tasks (cheap to poll, whatever the job's size).
/// The job's summary once it differs from `seen` (the appliance holds the request until it
/// does, or for a few seconds).
async fn next_summary<R: Requester>(
    c: &mut R,
    job: u64,
    seen: &JobSummary,
) -> Result<JobSummary, RenderCliError> {
    let req = Request::RenderWatch {
        job,
        seen: Some(seen.clone()),
        wait_ms: 5_000,
    };
    match ask(c, req).await? {
        Response::RenderSummary(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}

/// Prints progress until the job ends; fails when it failed.
async fn watch<R: Requester>(c: &mut R, job: u64) -> Result<(), RenderCliError> {
    // The first look goes through `show`: it says so when the job is not there or not ours.
    let mut s = detail(c, Request::RenderShow { job }).await?.summary;
    // A bar on a terminal; a line per change elsewhere (logs, scripts, tests).
    let bar = std::io::IsTerminal::is_terminal(&std::io::stdout()).then(|| {
        let b = indicatif::ProgressBar::new(s.counts.total.into());
        b.set_style(
            indicatif::ProgressStyle::with_template("job {prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_prefix(job.to_string());
        b
    });
    let mut last = String::new();
    loop {
        match &bar {
            Some(b) => {
                let c = &s.counts;
                b.set_position(c.done.into());
                b.set_message(format!(
                    "{} running, {} failed{}",
                    c.running,
                    c.failed,
                    s.eta_secs
                        .map(|e| format!(", ETA {e} s"))
                        .unwrap_or_default()
                ));
            }
            None => {
                let l = line(&s);
                if l != last {
                    println!("{l}");
                    last = l;
                }
            }
        }
        if s.state != "active" && s.state != "paused" {
            if let Some(b) = &bar {
                b.finish_with_message(s.state.clone());
            }
        }
        match s.state.as_str() {
            "done" => {
                println!("outputs in {}", s.output_dir);
                return Ok(());
            }
            "failed" | "canceled" => {
                let d = detail(c, Request::RenderShow { job }).await?;
                for t in d.tasks.iter().filter(|t| t.state == "failed") {
                    println!(
                        "{}[{}] failed: {}",
                        t.step,
                        t.index,
                        t.error.as_deref().unwrap_or("")
                    );
                }
                return Err(RenderCliError::Ended {
                    job,
                    state: s.state,
                });
            }
            _ => s = next_summary(c, job, &s).await?,
        }
    }
}

/// Runs a render command over `c`.
pub async fn run<R: Requester>(c: &mut R, cmd: RenderCommand) -> Result<(), RenderCliError> {
    match cmd {
        RenderCommand::Submit {
            file,
            frames,
            chunk,
            priority,
            tags,
            video,
            fps,
            params,
            inputs,
            command,
            user,
            no_wait,
        } => {
            let mut ps: Vec<(String, String)> = Vec::new();
            for p in &params {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    RenderCliError::Usage(format!("'{p}': a parameter is Name=value"))
                })?;
                ps.push((k.to_owned(), v.to_owned()));
            }
            let mut refs = Vec::new();
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            let template = if command {
                ps.push(("Command".into(), file.display().to_string()));
                TemplateSource::Builtin("command".into())
            } else if file.is_dir() {
                let video = video.clone().ok_or_else(|| {
                    RenderCliError::Usage(format!(
                        "{} is a directory: give --video to encode its PNG frames",
                        file.display()
                    ))
                })?;
                let read = |source| RenderCliError::Read {
                    path: file.clone(),
                    source,
                };
                let mut pngs: Vec<PathBuf> = std::fs::read_dir(&file)
                    .map_err(read)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "png"))
                    .collect();
                pngs.sort();
                for p in &pngs {
                    refs.push(upload(c, p, &format!("frames/{}", file_name(p)?)).await?);
                }
                ps.push(("Video".into(), video));
                ps.push(("Fps".into(), fps.to_string()));
                TemplateSource::Builtin("assemble".into())
            } else if matches!(ext, "yaml" | "yml" | "json") {
                TemplateSource::Document(std::fs::read_to_string(&file).map_err(|source| {
                    RenderCliError::Read {
                        path: file.clone(),
                        source,
                    }
                })?)
            } else {
                if !file.is_file() {
                    return Err(RenderCliError::Usage(format!(
                        "the scene {} does not exist",
                        file.display()
                    )));
                }
                let name = file_name(&file)?;
                refs.push(upload(c, &file, &name).await?);
                ps.push(("Scene".into(), name));
                match &video {
                    Some(v) => {
                        ps.push(("Video".into(), v.clone()));
                        ps.push(("Fps".into(), fps.to_string()));
                        TemplateSource::Builtin("blender-video".into())
                    }
                    None => TemplateSource::Builtin("blender".into()),
                }
            };
            if let Some(f) = frames {
                ps.push(("Frames".into(), f));
            }
            if let Some(n) = chunk {
                ps.push(("Chunk".into(), n.to_string()));
            }
            for i in &inputs {
                let name = file_name(i)?;
                refs.push(upload(c, i, &name).await?);
            }
            let d = detail(
                c,
                Request::RenderSubmit(JobSubmission {
                    template,
                    params: ps,
                    inputs: refs,
                    priority,
                    tags,
                    user,
                }),
            )
            .await?;
            println!(
                "queued job {} '{}': {} tasks",
                d.summary.id, d.summary.name, d.summary.counts.total
            );
            if !no_wait {
                watch(c, d.summary.id).await?;
            }
        }
        RenderCommand::List => {
            let jobs = match ask(c, Request::RenderList).await? {
                Response::RenderJobs(j) => j,
                other => return Err(unexpected(other)),
            };
            for j in &jobs {
                println!("{}  {} ({})", line(j), j.name, j.user);
            }
        }
        RenderCommand::Show { job } => print_detail(&detail(c, Request::RenderShow { job }).await?),
        RenderCommand::Watch { job } => watch(c, job).await?,
        RenderCommand::Cancel { job }
        | RenderCommand::Pause { job }
        | RenderCommand::Resume { job }
        | RenderCommand::Retry { job, .. } => {
            let action = match cmd {
                RenderCommand::Cancel { .. } => JobAction::Cancel,
                RenderCommand::Pause { .. } => JobAction::Pause,
                RenderCommand::Resume { .. } => JobAction::Resume,
                RenderCommand::Retry { all, .. } => JobAction::Retry { all },
                _ => unreachable!(),
            };
            let d = detail(c, Request::RenderControl { job, action }).await?;
            println!("{}", line(&d.summary));
        }
        RenderCommand::Why { job } => {
            let d = detail(c, Request::RenderShow { job }).await?;
            if d.why.is_empty() {
                println!("job {job}: no task is waiting");
            }
            for w in &d.why {
                println!("{w}");
            }
        }
        RenderCommand::Nodes => {
            let nodes = match ask(c, Request::RenderNodes).await? {
                Response::RenderNodes(n) => n,
                other => return Err(unexpected(other)),
            };
            for n in &nodes {
                let renderers: Vec<String> = n
                    .caps
                    .renderers
                    .iter()
                    .map(|(r, v)| format!("{r} {v}"))
                    .collect();
                println!(
                    "{:<14} {:<20} {:<8} {} cores, {} MiB, renderers: {}; tags: {}; gpus: {}{}",
                    n.id,
                    n.name,
                    n.state,
                    n.caps.cores,
                    n.caps.memory_bytes >> 20,
                    renderers.join(", "),
                    if n.caps.tags.is_empty() {
                        "none".to_owned()
                    } else {
                        n.caps.tags.join(",")
                    },
                    if n.caps.gpus.is_empty() {
                        "none".to_owned()
                    } else {
                        n.caps.gpus.join(",")
                    },
                    n.running
                        .as_deref()
                        .map(|r| format!("; running {r}"))
                        .unwrap_or_default()
                );
            }
        }
        RenderCommand::NodeToken => {
            let (token, expires_in_secs) = match ask(c, Request::RenderNodeToken).await? {
                Response::NodeToken {
                    token,
                    expires_in_secs,
                } => (token, expires_in_secs),
                other => return Err(unexpected(other)),
            };
            println!("{token}");
            eprintln!(
                "(valid {} min, for any number of nodes: periphery-render-node join <appliance> --token {token})",
                expires_in_secs / 60
            );
        }
    }
    Ok(())
}
