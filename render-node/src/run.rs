//! The node's work loop: ask the appliance for work (the call is held until a task fits),
//! fetch the task's inputs into the cache by hash, run its command in a fresh working
//! directory with a heartbeat every second (progress and new output lines; the answer may
//! say stop), upload the outputs the appliance lacks, and report.
//!
//! Short tasks: a node whose last task ran under [`PREFETCH_BELOW`] asks for the next task
//! ahead and holds it queued; when its task ends it starts the queued one first and reports
//! after, so the report's round trip to the appliance overlaps work instead of idling.
//!
//! A lost connection is retried with backoff (for two minutes a request) while the task keeps
//! running, and finished work is reported once the appliance is back; if the lease
//! expired meanwhile, the report is refused and the outputs are discarded by the appliance.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use periphery_client::session::Session;
use periphery_client::tls;
use periphery_protocol::render::{
    FileRef, NodeCaps, NodeWork, TaskAssignment, TaskDone, WireLease, WorkReply, MAX_BLOB_CHUNK,
};
use periphery_protocol::{Request, Response};
use periphery_render::blender::{parse_line, Event};

use crate::home::Credentials;
use crate::spawn::Out;

const SOFTWARE: &str = concat!("periphery-render-node ", env!("CARGO_PKG_VERSION"));
/// Lines of output kept for the report.
const TAIL: usize = 40;
/// How long a request is retried while the appliance cannot be reached.
const APPLIANCE_GRACE: Duration = Duration::from_secs(120);

/// A joined node, ready to work.
#[derive(Debug)]
pub struct Node {
    /// Its credentials.
    pub creds: Credentials,
    /// Where inputs are cached and tasks run.
    pub cache: PathBuf,
    /// What it offers.
    pub caps: NodeCaps,
}

/// The appliance refused this node's certificate: it was revoked or forgotten.
#[derive(Debug, thiserror::Error)]
#[error("the appliance refused this node ({0}); join it again")]
pub struct Refused(String);

async fn connect(creds: &Credentials) -> anyhow::Result<Session> {
    let addr = periphery_client::session::resolve(&creds.joined.address)
        .await
        .with_context(|| format!("cannot resolve {}", creds.joined.address))?;
    let config = tls::pinned(&creds.ca_der, &creds.cert_der, &creds.key_der)?;
    match Session::connect_as(addr, config, SOFTWARE).await {
        Ok(s) => Ok(s),
        Err(e) if e.is_refused() => Err(Refused(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

/// The connection, re-made when it breaks.
struct Link<'a> {
    creds: &'a Credentials,
    session: Option<Session>,
}

impl Link<'_> {
    /// Runs a request. While the appliance cannot be reached (restarting, the network gone)
    /// it tries again with backoff for up to [`APPLIANCE_GRACE`], so work finished meanwhile
    /// is not lost to a restart; a refusal (an API error, a refused certificate) returns at
    /// once.
    async fn request(&mut self, body: Request) -> anyhow::Result<Response> {
        let give_up = tokio::time::Instant::now() + APPLIANCE_GRACE;
        let mut backoff = Duration::from_millis(250);
        loop {
            let failure = match self.session.as_mut() {
                None => match connect(self.creds).await {
                    Ok(s) => {
                        tracing::info!("connected to the appliance");
                        self.session = Some(s);
                        continue;
                    }
                    Err(e) if e.is::<Refused>() => return Err(e),
                    Err(e) => e,
                },
                Some(s) => match s.request(body.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(periphery_client::session::SessionError::Api(e)) => return Err(e.into()),
                    Err(e) => {
                        self.session = None;
                        anyhow::Error::from(e)
                    }
                },
            };
            if tokio::time::Instant::now() >= give_up {
                return Err(failure.context("the appliance cannot be reached"));
            }
            tracing::warn!(error = %format!("{failure:#}"), retry_in = ?backoff, "the appliance cannot be reached");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

impl Node {
    /// Works until the process is stopped.
    pub async fn run(&self) -> anyhow::Result<()> {
        // What an earlier run left.
        let _ = std::fs::remove_dir_all(self.cache.join("work"));
        let mut w = Worker {
            node: self,
            link: Link {
                creds: &self.creds,
                session: None,
            },
            slot: 0,
            prefetch: false,
        };
        loop {
            let ask = NodeWork {
                caps: self.caps.clone(),
                wait_ms: 5_000,
                prefetch: w.prefetch,
                ..NodeWork::default()
            };
            match w.link.request(Request::NodeWork(ask)).await {
                Ok(Response::Work(r)) => {
                    if let Some(t) = r.task {
                        w.work_through(t, r.next).await;
                        w.tidy();
                    }
                }
                Ok(other) => anyhow::bail!("unexpected answer from the appliance: {other:?}"),
                Err(e) if e.is::<Refused>() => return Err(e),
                // The link has tried for a while already; keep asking.
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot ask for work"),
            }
        }
    }

    /// Makes sure the cache holds `f`; returns its path there.
    async fn fetch(&self, link: &mut Link<'_>, f: &FileRef) -> anyhow::Result<PathBuf> {
        let dir = self.cache.join("blobs");
        let path = dir.join(&f.hash);
        if path.is_file() {
            return Ok(path);
        }
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{}.part", f.hash));
        let mut data = Vec::with_capacity(f.size as usize);
        while (data.len() as u64) < f.size {
            let Response::Bytes(chunk) = link
                .request(Request::BlobGet {
                    hash: f.hash.clone(),
                    offset: data.len() as u64,
                    len: MAX_BLOB_CHUNK as u32,
                })
                .await?
            else {
                anyhow::bail!("unexpected answer to a file request");
            };
            if chunk.is_empty() {
                anyhow::bail!("the appliance's copy of {} is short", f.path);
            }
            data.extend_from_slice(&chunk);
        }
        let actual = blake3::hash(&data).to_hex().to_string();
        if actual != f.hash {
            anyhow::bail!("{} arrived with hash {actual}, not {}", f.path, f.hash);
        }
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Uploads `path` (the appliance lacks it).
    async fn upload(&self, link: &mut Link<'_>, path: &Path, hash: &str) -> anyhow::Result<()> {
        let data = std::fs::read(path)?;
        for chunk in periphery_client::blobs::blob_chunks(hash, &data) {
            link.request(chunk).await?;
        }
        Ok(())
    }
}

/// Tasks that ran shorter than this ask for their successor ahead ([`NodeWork::prefetch`]):
/// for them a round trip to the appliance between two tasks is a cost worth hiding; for
/// longer ones it is not worth a task waiting behind a busy node.
const PREFETCH_BELOW: Duration = Duration::from_secs(1);

/// Working directories, used in turn: the next task starts while the report of the last
/// one is on its way.
const SLOTS: usize = 2;

/// A node at work: its link, and what it learnt of its tasks.
struct Worker<'a> {
    node: &'a Node,
    link: Link<'a>,
    /// The working directory the next task takes.
    slot: usize,
    /// The last task was short: ask for the next ahead.
    prefetch: bool,
}

/// A task, started or not.
enum Current {
    /// Its command runs.
    Running(Box<Running>),
    /// It could not start (an input missing, the command not found): reported as failed.
    Failed(TaskAssignment, String),
}

impl Current {
    fn lease(&self) -> WireLease {
        match self {
            Current::Running(r) => r.t.lease,
            Current::Failed(t, _) => t.lease,
        }
    }
}

/// A task whose command runs.
struct Running {
    t: TaskAssignment,
    child: crate::spawn::Child,
    /// Its output, a line at a time, from both pipes.
    lines: mpsc::UnboundedReceiver<String>,
    work: PathBuf,
    inputs: HashSet<(String, String)>,
    began: std::time::Instant,
}

/// What a running command said: its last lines, those not yet sent, its progress and the
/// last error line Blender printed.
#[derive(Default)]
struct Output {
    tail: std::collections::VecDeque<String>,
    fresh: Vec<String>,
    progress: Option<String>,
    error: Option<String>,
}

impl Output {
    fn take(&mut self, l: String) {
        match parse_line(&l) {
            Some(Event::Frame(f)) => self.progress = Some(format!("frame {f}")),
            Some(Event::Samples { done, total }) => {
                self.progress = Some(format!("sample {done}/{total}"))
            }
            Some(Event::Saved(p)) => self.progress = Some(format!("saved {p}")),
            Some(Event::Error(e)) => self.error = Some(e),
            None => {}
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(l.clone());
        self.fresh.push(l);
    }
}

/// Makes `dir` an empty working directory with an empty `out` in it; cheap when it is one.
fn prepare(dir: &Path) -> std::io::Result<()> {
    fn remove(e: &std::fs::DirEntry) -> std::io::Result<()> {
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        }
    }
    std::fs::create_dir_all(dir.join("out"))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == "out" && e.file_type()?.is_dir() {
            for o in std::fs::read_dir(e.path())? {
                remove(&o?)?;
            }
        } else {
            remove(&e)?;
        }
    }
    Ok(())
}

impl Worker<'_> {
    /// Runs `first`, going on to a queued task as soon as one ends and reporting each,
    /// until the appliance hands out nothing more.
    async fn work_through(&mut self, first: TaskAssignment, mut queued: Option<TaskAssignment>) {
        let mut current = self.start(first).await;
        loop {
            let ended = self.finish(current, &mut queued).await;
            // Start the queued task before reporting: the report's round trip overlaps it.
            let next = match queued.take() {
                Some(q) => Some(self.start(q).await),
                None => None,
            };
            let reply = match ended {
                Some(mut done) => {
                    done.running = next.as_ref().map(Current::lease);
                    done.prefetch = self.prefetch;
                    self.report(done).await
                }
                None => None,
            };
            current = match (next, reply) {
                (Some(n), reply) => {
                    queued = reply.and_then(|r| r.task);
                    n
                }
                (
                    None,
                    Some(WorkReply {
                        task: Some(t),
                        next,
                        ..
                    }),
                ) => {
                    queued = next;
                    self.start(t).await
                }
                (None, _) => return,
            };
        }
    }

    /// Empties the working directories (the node goes idle).
    fn tidy(&self) {
        for slot in 0..SLOTS {
            let _ = prepare(&self.node.cache.join("work").join(slot.to_string()));
        }
    }

    /// Fetches the task's inputs into a working directory and starts its command.
    async fn start(&mut self, t: TaskAssignment) -> Current {
        let l = t.lease;
        tracing::debug!(job = l.job, step = %t.step, task = l.task, attempt = t.attempt, argv = ?t.argv, "task started");
        let work = self.node.cache.join("work").join(self.slot.to_string());
        self.slot = (self.slot + 1) % SLOTS;
        match self.spawn(&t, &work).await {
            Ok((child, lines, inputs)) => Current::Running(Box::new(Running {
                t,
                child,
                lines,
                work,
                inputs,
                began: std::time::Instant::now(),
            })),
            Err(e) => {
                let why = format!("{e:#}");
                Current::Failed(t, why)
            }
        }
    }

    async fn spawn(
        &mut self,
        t: &TaskAssignment,
        work: &Path,
    ) -> anyhow::Result<(
        crate::spawn::Child,
        mpsc::UnboundedReceiver<String>,
        HashSet<(String, String)>,
    )> {
        prepare(work).with_context(|| format!("cannot prepare {}", work.display()))?;
        let mut inputs = HashSet::new();
        for f in &t.inputs {
            if !periphery_protocol::render::valid_job_path(&f.path) {
                anyhow::bail!("input path '{}' leaves the working directory", f.path);
            }
            let cached = self
                .node
                .fetch(&mut self.link, f)
                .await
                .with_context(|| format!("cannot fetch input {}", f.path))?;
            let dest = work.join(&f.path);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d)?;
            }
            if std::fs::hard_link(&cached, &dest).is_err() {
                std::fs::copy(&cached, &dest)?;
            }
            inputs.insert((f.path.clone(), f.hash.clone()));
        }
        let Some(program) = t.argv.first() else {
            anyhow::bail!("the task has no command");
        };
        let program = if program == "periphery-render-node" {
            std::env::current_exe()?
        } else {
            PathBuf::from(program)
        };
        let mut child = crate::spawn::spawn(&program, &t.argv[1..], work, Out::Pipe, Out::Pipe)
            .with_context(|| format!("cannot run {}", program.display()))?;
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        for pipe in [child.stdout.take(), child.stderr.take()]
            .into_iter()
            .flatten()
        {
            let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Ok((child, rx, inputs))
    }

    /// Waits for the task's command with a heartbeat every second (which may also drop
    /// `queued`), then uploads its outputs; the report, or `None` when the appliance said
    /// stop.
    async fn finish(
        &mut self,
        current: Current,
        queued: &mut Option<TaskAssignment>,
    ) -> Option<TaskDone> {
        let lease = current.lease();
        let (outcome, log_tail) = match current {
            Current::Failed(_, why) => (Err(why), Vec::new()),
            Current::Running(mut r) => match self.wait(&mut r, queued).await {
                Ok(Some(done)) => done,
                Ok(None) => {
                    tracing::info!(
                        job = lease.job,
                        task = lease.task,
                        "task stopped by the appliance"
                    );
                    return None;
                }
                Err(e) => (Err(format!("{e:#}")), Vec::new()),
            },
        };
        match &outcome {
            Ok(o) => tracing::debug!(
                job = lease.job,
                task = lease.task,
                outputs = o.len(),
                "task done"
            ),
            Err(e) => tracing::warn!(job = lease.job, task = lease.task, error = %e, "task failed"),
        }
        Some(TaskDone {
            lease,
            outcome,
            log_tail,
            running: None,
            prefetch: false,
        })
    }

    /// The command's outcome and output tail; `None` when the appliance said stop.
    async fn wait(
        &mut self,
        r: &mut Running,
        queued: &mut Option<TaskAssignment>,
    ) -> anyhow::Result<Option<(Result<Vec<FileRef>, String>, Vec<String>)>> {
        let mut out = Output::default();
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        beat.tick().await;
        let mut lines_open = true;
        let status = loop {
            tokio::select! {
                s = r.child.wait() => break s?,
                l = r.lines.recv(), if lines_open => match l {
                    Some(l) => out.take(l),
                    None => lines_open = false,
                },
                _ = beat.tick() => {
                    let hb = NodeWork {
                        caps: self.node.caps.clone(),
                        running: Some(r.t.lease),
                        queued: queued.as_ref().map(|q| q.lease),
                        progress: out.progress.clone(),
                        log: std::mem::take(&mut out.fresh),
                        ..NodeWork::default()
                    };
                    match self.link.request(Request::NodeWork(hb)).await {
                        Ok(Response::Work(w)) if w.stop == Some(r.t.lease) => {
                            // The command leads its own process group: stop all of it.
                            r.child.kill();
                            let _ = r.child.wait().await;
                            return Ok(None);
                        }
                        Ok(Response::Work(w)) if w.stop.is_some() && w.stop == queued.as_ref().map(|q| q.lease) => {
                            tracing::info!("the queued task was withdrawn");
                            *queued = None;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed; the task goes on"),
                    }
                }
            }
        };
        self.prefetch = r.began.elapsed() < PREFETCH_BELOW;
        while let Some(l) = r.lines.recv().await {
            out.take(l);
        }
        let tail: Vec<String> = out.tail.into();
        if !status.success() {
            let why = out
                .error
                .or_else(|| tail.iter().rev().find(|l| !l.trim().is_empty()).cloned())
                .unwrap_or_default();
            return Ok(Some((Err(format!("{status}: {why}")), tail)));
        }
        let outputs = self
            .node
            .outputs(&mut self.link, &r.work, &r.inputs)
            .await?;
        Ok(Some((Ok(outputs), tail)))
    }

    /// Reports a task; the appliance's answer, or `None` when it refused the report (the
    /// lease had expired: the outputs are discarded) or could not be reached.
    async fn report(&mut self, done: TaskDone) -> Option<WorkReply> {
        match self.link.request(Request::NodeTaskDone(done)).await {
            Ok(Response::Work(w)) => Some(w),
            Ok(_) => None,
            Err(e) if e.is::<periphery_protocol::ApiError>() => {
                tracing::warn!(error = %e, "the report was refused; the outputs are discarded");
                None
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the report is dropped");
                None
            }
        }
    }
}

impl Node {
    /// Files under `work/out` that are not inputs, uploaded where the appliance lacks them.
    async fn outputs(
        &self,
        link: &mut Link<'_>,
        work: &Path,
        inputs: &HashSet<(String, String)>,
    ) -> anyhow::Result<Vec<FileRef>> {
        let mut files = Vec::new();
        let mut dirs = vec![work.join("out")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.is_file() {
                    let rel = p
                        .strip_prefix(work)?
                        .to_str()
                        .context("an output's name is not UTF-8")?
                        .to_owned();
                    let hash = periphery_client::blobs::hash_file(&p)?;
                    if !inputs.contains(&(rel.clone(), hash.clone())) {
                        let size = std::fs::metadata(&p)?.len();
                        files.push((
                            p,
                            FileRef {
                                path: rel,
                                hash,
                                size,
                            },
                        ));
                    }
                }
            }
        }
        files.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let Response::Missing(missing) = link
            .request(Request::BlobMissing {
                hashes: files.iter().map(|f| f.1.hash.clone()).collect(),
            })
            .await?
        else {
            anyhow::bail!("unexpected answer to a file query");
        };
        let missing: HashSet<String> = missing.into_iter().collect();
        let mut sent = HashSet::new();
        for (p, f) in &files {
            if missing.contains(&f.hash) && sent.insert(f.hash.clone()) {
                self.upload(link, p, &f.hash)
                    .await
                    .with_context(|| format!("cannot upload {}", f.path))?;
            }
        }
        Ok(files.into_iter().map(|f| f.1).collect())
    }
}
