//! `periphery render …`: the admin CLI's side of the render farm. Files are uploaded by
//! content (only what the appliance lacks), then the job is queued and watched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use periphery_protocol::render::{
    FileRef, JobAction, JobDetail, JobSubmission, JobSummary, TemplateSource, MAX_BLOB_CHUNK,
};
use periphery_protocol::{Request, Response};

use crate::admin::AdminClient;

/// Render farm commands.
#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// Queue a job: a Blender scene (`.blend`), or an Open Job Description template
    /// (`.yaml`, `.yml`, `.json`); then show its progress until it ends (Ctrl-C leaves it
    /// running).
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
pub async fn upload(c: &mut AdminClient, path: &Path, name: &str) -> anyhow::Result<FileRef> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let hash = blake3::hash(&data).to_hex().to_string();
    let Response::Missing(missing) = c
        .request(Request::BlobMissing {
            hashes: vec![hash.clone()],
        })
        .await?
    else {
        anyhow::bail!("unexpected answer");
    };
    if !missing.is_empty() {
        let mut offset = 0;
        loop {
            let end = (offset + MAX_BLOB_CHUNK).min(data.len());
            c.request(Request::BlobPut {
                hash: hash.clone(),
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                last: end == data.len(),
            })
            .await?;
            if end == data.len() {
                break;
            }
            offset = end;
        }
    }
    Ok(FileRef {
        path: name.to_owned(),
        hash,
        size: data.len() as u64,
    })
}

fn file_name(p: &Path) -> anyhow::Result<String> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no usable file name", p.display()))
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
        if t.state == "failed" {
            for l in t.log_tail.iter().rev().take(5).rev() {
                println!("      | {l}");
            }
        }
    }
}

async fn detail(c: &mut AdminClient, req: Request) -> anyhow::Result<JobDetail> {
    match c.request(req).await? {
        Response::RenderJob(d) => Ok(d),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Prints progress until the job ends; fails when it failed.
async fn watch(c: &mut AdminClient, job: u64) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let d = detail(c, Request::RenderShow { job }).await?;
        let l = line(&d.summary);
        if l != last {
            println!("{l}");
            last = l;
        }
        match d.summary.state.as_str() {
            "done" => {
                println!("outputs in {}", d.summary.output_dir);
                return Ok(());
            }
            "failed" | "canceled" => {
                for t in d.tasks.iter().filter(|t| t.state == "failed") {
                    println!(
                        "{}[{}] failed: {}",
                        t.step,
                        t.index,
                        t.error.as_deref().unwrap_or("")
                    );
                }
                anyhow::bail!("job {job} {}", d.summary.state);
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs a render command.
pub async fn render(state_dir: &Path, cmd: RenderCommand) -> anyhow::Result<()> {
    let mut c = AdminClient::connect(state_dir).await?;
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
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("'{p}': a parameter is Name=value"))?;
                ps.push((k.to_owned(), v.to_owned()));
            }
            let mut refs = Vec::new();
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            let template = if command {
                ps.push(("Command".into(), file.display().to_string()));
                TemplateSource::Builtin("command".into())
            } else if matches!(ext, "yaml" | "yml" | "json") {
                TemplateSource::Document(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                )
            } else {
                if !file.is_file() {
                    anyhow::bail!("the scene {} does not exist", file.display());
                }
                let name = file_name(&file)?;
                refs.push(upload(&mut c, &file, &name).await?);
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
                refs.push(upload(&mut c, i, &name).await?);
            }
            let d = detail(
                &mut c,
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
                watch(&mut c, d.summary.id).await?;
            }
        }
        RenderCommand::List => {
            let Response::RenderJobs(jobs) = c.request(Request::RenderList).await? else {
                anyhow::bail!("unexpected answer");
            };
            for j in &jobs {
                println!("{}  {} ({})", line(j), j.name, j.user);
            }
        }
        RenderCommand::Show { job } => {
            print_detail(&detail(&mut c, Request::RenderShow { job }).await?)
        }
        RenderCommand::Watch { job } => watch(&mut c, job).await?,
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
            let d = detail(&mut c, Request::RenderControl { job, action }).await?;
            println!("{}", line(&d.summary));
        }
        RenderCommand::Why { job } => {
            let d = detail(&mut c, Request::RenderShow { job }).await?;
            if d.why.is_empty() {
                println!("job {job}: no task is waiting");
            }
            for w in &d.why {
                println!("{w}");
            }
        }
        RenderCommand::Nodes => {
            let Response::RenderNodes(nodes) = c.request(Request::RenderNodes).await? else {
                anyhow::bail!("unexpected answer");
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
                    n.caps.tags.join(","),
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
            let Response::NodeToken {
                token,
                expires_in_secs,
            } = c.request(Request::RenderNodeToken).await?
            else {
                anyhow::bail!("unexpected answer");
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
