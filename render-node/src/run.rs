//! The node's work loop: one task runs at a time, in a fresh working directory, with the
//! tasks queued behind it; one call to the appliance is on the link at a time, and the loop
//! never waits for it. Each call ([`NodeWork`]) is a heartbeat (the leases held, progress,
//! new output lines; at least every second while a task runs), carries the reports of the
//! tasks that ended since the last (their outputs uploaded first), and asks for tasks. The
//! answer may say stop or drop a lease.
//!
//! Short tasks: a node whose tasks run under [`PREFETCH_BELOW`] asks for enough queued tasks
//! to cover two round trips to the appliance, so when one ends the next starts at once and
//! the report travels while it runs; reports that end meanwhile go together in the next
//! call. A queued task's inputs are fetched into the cache while the one before it runs.
//!
//! A lost connection is retried with backoff (for two minutes a request) while the task keeps
//! running, and finished work is reported once the appliance is back; if the lease
//! expired meanwhile, the report is refused and the outputs are discarded by the appliance.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use periphery_client::session::Session;
use periphery_client::tls;
use periphery_protocol::render::{
    valid_hash, FileRef, NodeCaps, NodeWork, TaskAssignment, TaskDone, WireLease, WorkReply,
    MAX_BLOB_CHUNK,
};
use periphery_protocol::{Request, Response, MIN_NODE_PROTOCOL_VERSION};
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

/// The appliance speaks an older protocol than render nodes need.
#[derive(Debug, thiserror::Error)]
#[error("the appliance speaks protocol version {0}; render nodes need version {MIN_NODE_PROTOCOL_VERSION}: update the appliance")]
pub struct ApplianceTooOld(u16);

/// Whether `e` ends the node: trying again cannot help.
fn fatal(e: &anyhow::Error) -> bool {
    e.is::<Refused>() || e.is::<ApplianceTooOld>()
}

async fn connect(creds: &Credentials) -> anyhow::Result<Session> {
    let addr = periphery_client::session::resolve(&creds.joined.address)
        .await
        .with_context(|| format!("cannot resolve {}", creds.joined.address))?;
    let config = tls::pinned(&creds.ca_der, &creds.cert_der, &creds.key_der)?;
    match Session::connect_as(addr, config, SOFTWARE).await {
        Ok(s) if s.welcome.version < MIN_NODE_PROTOCOL_VERSION => {
            Err(ApplianceTooOld(s.welcome.version).into())
        }
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
                    Err(e) if fatal(&e) => return Err(e),
                    Err(e) => e,
                },
                Some(s) => match s.request(body.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(periphery_client::session::SessionError::Api(e)) => return Err(e.into()),
                    // Sending it again would fail the same way (a call too large, say).
                    Err(e @ periphery_client::session::SessionError::Protocol(_)) => {
                        return Err(e.into())
                    }
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
        for d in [WORK, OUTGOING] {
            let _ = std::fs::remove_dir_all(self.cache.join(d));
        }
        Worker::new(self).run().await
    }

    /// Where the cache holds `f`, if it does.
    fn cached(&self, f: &FileRef) -> Option<PathBuf> {
        let path = self.cache.join("blobs").join(&f.hash);
        (valid_hash(&f.hash) && path.is_file()).then_some(path)
    }

    /// Makes sure the cache holds `f`; returns its path there.
    async fn fetch(&self, link: &mut Link<'_>, f: &FileRef) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.cached(f) {
            return Ok(path);
        }
        if !valid_hash(&f.hash) {
            anyhow::bail!("'{}' is not a content hash", f.hash);
        }
        let dir = self.cache.join("blobs");
        let path = dir.join(&f.hash);
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

/// Tasks that ran shorter than this queue successors ([`NodeWork::want`]): for them a round
/// trip to the appliance between two tasks is a cost worth hiding; for longer ones it is
/// not worth tasks waiting behind a busy node.
const PREFETCH_BELOW: Duration = Duration::from_secs(1);
/// The most tasks a node asks to hold queued behind the one it runs.
const MAX_AHEAD: usize = 8;
/// How often a busy node's heartbeat goes when no other call went.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long an idle node's call for work may be held.
const IDLE_WAIT_MS: u32 = 5_000;
/// The pause after a call that failed, before the next.
const AFTER_FAILURE: Duration = Duration::from_secs(1);
/// The working directory, under the cache.
const WORK: &str = "work";
/// How long the output of a command that exited is read for, at most.
const DRAIN: Duration = Duration::from_secs(5);
/// Where outputs wait for their report, under the cache.
const OUTGOING: &str = "outgoing";

/// A call to the appliance in flight; it owns the link and gives it back.
type Call<'a> = Pin<Box<dyn Future<Output = (Link<'a>, Called)> + 'a>>;

/// What a call was, and what came of it.
enum Called {
    /// A [`NodeWork`] call: when it went, whether the node was idle (the appliance may
    /// hold the call).
    Work {
        sent: Instant,
        idle: bool,
        reply: Box<anyhow::Result<Response>>,
    },
    /// A queued task's inputs fetched into the cache, or why not.
    Fetched {
        lease: WireLease,
        result: anyhow::Result<()>,
    },
}

/// A task to run after the current one.
struct Queued {
    t: TaskAssignment,
    /// Why its inputs could not be fetched: it fails when its turn comes.
    unfetched: Option<String>,
}

/// A task that ended, to report: with its outputs staged under [`OUTGOING`], so the working
/// directory is free for the next task before the report goes.
struct Ended {
    done: TaskDone,
    staged: Vec<(PathBuf, FileRef)>,
}

/// A task whose command runs.
struct Running {
    t: TaskAssignment,
    child: crate::spawn::Child,
    /// Its output, a line at a time, from both pipes.
    lines: mpsc::UnboundedReceiver<String>,
    lines_open: bool,
    inputs: HashSet<(String, String)>,
    began: Instant,
    out: Output,
}

/// What a running command did.
enum Happened {
    Line(String),
    LinesClosed,
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// What a running command said: its last lines, those not yet sent, its progress and the
/// last error line Blender printed.
#[derive(Default)]
struct Output {
    tail: VecDeque<String>,
    fresh: VecDeque<String>,
    progress: Option<String>,
    error: Option<String>,
}

/// The longest output line kept, bytes (the appliance keeps as much).
const LINE: usize = 500;

/// `l` cut to [`LINE`] bytes at a character boundary.
fn cut(mut l: String) -> String {
    if l.len() > LINE {
        let mut end = LINE;
        while !l.is_char_boundary(end) {
            end -= 1;
        }
        l.truncate(end);
    }
    l
}

impl Output {
    /// Takes a line: kept in the tail, and among the fresh lines for the next call (the
    /// newest [`TAIL`] of them: the appliance keeps no more), so a call stays small however
    /// much a command prints.
    fn take(&mut self, l: String) {
        let l = cut(l);
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
        if self.fresh.len() == TAIL {
            self.fresh.pop_front();
        }
        self.fresh.push_back(l);
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

/// How many tasks to hold queued behind the running one, for tasks that run `task_time` and
/// calls that take `round_trip`: none for long tasks (or before one ended); for short ones
/// as many as run in two round trips, at least one and at most [`MAX_AHEAD`].
fn ahead(task_time: Option<Duration>, round_trip: Option<Duration>) -> usize {
    match task_time {
        Some(t) if t < PREFETCH_BELOW => {
            let trip = round_trip.unwrap_or(Duration::from_millis(5));
            let n = (trip.as_micros() * 2).div_ceil(t.as_micros().max(1));
            (n as usize).clamp(1, MAX_AHEAD)
        }
        _ => 0,
    }
}

/// An average that follows the recent: three parts the old, one the new.
fn follow(old: Option<Duration>, new: Duration) -> Duration {
    old.map_or(new, |o| (o * 3 + new) / 4)
}

/// The next thing the running command does; never, when nothing runs.
async fn event(running: &mut Option<Running>) -> Happened {
    let Some(r) = running else {
        return std::future::pending().await;
    };
    tokio::select! {
        s = r.child.wait() => Happened::Exited(s),
        l = r.lines.recv(), if r.lines_open => match l {
            Some(l) => Happened::Line(l),
            None => Happened::LinesClosed,
        },
    }
}

/// The call in flight's end; never, when none is.
async fn called<'a>(call: &mut Option<Call<'a>>) -> (Link<'a>, Called) {
    match call {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

/// A node at work.
struct Worker<'a> {
    node: &'a Node,
    /// The link, while no call is on it.
    link: Option<Link<'a>>,
    call: Option<Call<'a>>,
    running: Option<Running>,
    /// Tasks to run after the current one, in order.
    queue: VecDeque<Queued>,
    /// Tasks ended and not yet reported.
    ended: Vec<Ended>,
    last_call: Instant,
    /// No call before this (one failed).
    hold_until: Instant,
    /// How long a call that is not held takes; a recent average.
    round_trip: Option<Duration>,
    /// How long tasks of the step (job, step) last reported run; a recent average. The
    /// appliance queues tasks of that step only.
    task_time: Option<((u64, u32), Duration)>,
    /// Names outputs staged under [`OUTGOING`].
    staged: u64,
}

impl<'a> Worker<'a> {
    fn new(node: &'a Node) -> Self {
        let now = Instant::now();
        Self {
            node,
            link: Some(Link {
                creds: &node.creds,
                session: None,
            }),
            call: None,
            running: None,
            queue: VecDeque::new(),
            ended: Vec::new(),
            last_call: now,
            hold_until: now,
            round_trip: None,
            task_time: None,
            staged: 0,
        }
    }

    /// Works until the appliance refuses the node.
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            self.start_next();
            if self.call.is_none() {
                self.call = self.next_call();
            }
            let wake = match Instant::now() < self.hold_until {
                true => self.hold_until,
                false => self.last_call + HEARTBEAT,
            };
            let linked = self.call.is_none();
            tokio::select! {
                e = event(&mut self.running) => match e {
                    Happened::Line(l) => {
                        if let Some(r) = &mut self.running {
                            r.out.take(l);
                        }
                    }
                    Happened::LinesClosed => {
                        if let Some(r) = &mut self.running {
                            r.lines_open = false;
                        }
                    }
                    Happened::Exited(status) => self.exited(status).await,
                },
                (link, c) = called(&mut self.call) => {
                    self.link = Some(link);
                    self.call = None;
                    self.answered(c).await?;
                }
                _ = tokio::time::sleep_until(wake), if linked => {}
            }
        }
    }

    /// How many tasks to hold queued behind the running one: known only when it is of the
    /// step last timed (or nothing runs: the appliance queues only that step's tasks).
    fn ahead(&self) -> usize {
        let Some((step, time)) = self.task_time else {
            return 0;
        };
        if let Some(r) = &self.running {
            if (r.t.lease.job, r.t.lease.step) != step {
                return 0;
            }
        }
        ahead(Some(time), self.round_trip)
    }

    /// Starts the first queued task when nothing runs and its inputs are in the cache;
    /// a task that cannot start is reported failed.
    fn start_next(&mut self) {
        while self.running.is_none() {
            let Some(front) = self.queue.front() else {
                return;
            };
            let lease = front.t.lease;
            if let Some(why) = front.unfetched.clone() {
                self.queue.pop_front();
                self.failed(lease, why);
                continue;
            }
            if !front.t.inputs.iter().all(|f| self.node.cached(f).is_some()) {
                // A fetch brings them first.
                return;
            }
            let t = self.queue.pop_front().expect("a front").t;
            tracing::debug!(job = lease.job, step = %t.step, task = lease.task, attempt = t.attempt, argv = ?t.argv, "task started");
            match self.spawn(t) {
                Ok(r) => self.running = Some(r),
                Err(e) => self.failed(lease, format!("{e:#}")),
            }
        }
    }

    /// Reports a task that could not start (an input missing, the command not found).
    fn failed(&mut self, lease: WireLease, why: String) {
        tracing::warn!(job = lease.job, task = lease.task, error = %why, "task failed");
        self.ended.push(Ended {
            done: TaskDone {
                lease,
                outcome: Err(why),
                log_tail: Vec::new(),
            },
            staged: Vec::new(),
        });
    }

    /// The call to make now, if any: reports, an idle node's request for work, a
    /// heartbeat that is due, else the inputs of a queued task.
    fn next_call(&mut self) -> Option<Call<'a>> {
        let now = Instant::now();
        if now < self.hold_until {
            return None;
        }
        let link = self.link.take()?;
        let idle = self.running.is_none() && self.queue.is_empty();
        let beat = self.running.is_some() && now >= self.last_call + HEARTBEAT;
        if !self.ended.is_empty() || idle || beat {
            return Some(self.work_call(link, idle));
        }
        let fetch = self.queue.iter().find(|q| {
            q.unfetched.is_none() && q.t.inputs.iter().any(|f| self.node.cached(f).is_none())
        });
        if let Some(q) = fetch {
            let (lease, inputs, node) = (q.t.lease, q.t.inputs.clone(), self.node);
            return Some(Box::pin(async move {
                let mut link = link;
                let mut result = Ok(());
                for f in &inputs {
                    if let Err(e) = node.fetch(&mut link, f).await {
                        result = Err(e.context(format!("cannot fetch input {}", f.path)));
                        break;
                    }
                }
                (link, Called::Fetched { lease, result })
            }));
        }
        self.link = Some(link);
        None
    }

    /// A [`NodeWork`] call: the heartbeat, the reports of the tasks that ended (their
    /// outputs uploaded first), and the tasks asked for.
    fn work_call(&mut self, link: Link<'a>, idle: bool) -> Call<'a> {
        if idle {
            let _ = prepare(&self.node.cache.join(WORK));
        }
        let have = self.queue.len() + usize::from(self.running.is_some());
        let (running, progress, log) = match &mut self.running {
            Some(r) => (
                Some(r.t.lease),
                r.out.progress.clone(),
                std::mem::take(&mut r.out.fresh).into(),
            ),
            None => (None, None, Vec::new()),
        };
        let w = NodeWork {
            caps: self.node.caps.clone(),
            running,
            progress,
            log,
            queued: self.queue.iter().map(|q| q.t.lease).collect(),
            done: Vec::new(),
            want: (self.ahead() + 1).saturating_sub(have) as u32,
            wait_ms: if idle { IDLE_WAIT_MS } else { 0 },
        };
        let ended = std::mem::take(&mut self.ended);
        self.last_call = Instant::now();
        let node = self.node;
        Box::pin(async move {
            let mut link = link;
            let mut w = w;
            w.done = node.upload_outputs(&mut link, ended).await;
            let sent = Instant::now();
            let reply = Box::new(link.request(Request::NodeWork(Box::new(w))).await);
            (link, Called::Work { sent, idle, reply })
        })
    }

    /// Takes what the appliance answered.
    async fn answered(&mut self, c: Called) -> anyhow::Result<()> {
        match c {
            Called::Fetched { lease, result } => {
                if let Err(e) = result {
                    if let Some(q) = self.queue.iter_mut().find(|q| q.t.lease == lease) {
                        q.unfetched = Some(format!("{e:#}"));
                    }
                }
            }
            Called::Work { sent, idle, reply } => match *reply {
                Ok(Response::Work(w)) => {
                    if !idle {
                        self.round_trip = Some(follow(self.round_trip, sent.elapsed()));
                    }
                    self.take(w).await;
                }
                Ok(other) => anyhow::bail!("unexpected answer from the appliance: {other:?}"),
                Err(e) if fatal(&e) => return Err(e),
                // The link has tried for a while already; whatever the call reported is
                // lost (its leases expire and the tasks run again elsewhere).
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "a call to the appliance failed");
                    self.hold_until = Instant::now() + AFTER_FAILURE;
                }
            },
        }
        Ok(())
    }

    /// Applies a reply: leases to stop or drop, refused reports, tasks to queue.
    async fn take(&mut self, w: WorkReply) {
        for (lease, why) in w.refused {
            tracing::warn!(job = lease.job, task = lease.task, reason = %why, "the report was refused; the outputs are discarded");
        }
        for lease in w.stop {
            if self.running.as_ref().is_some_and(|r| r.t.lease == lease) {
                let mut r = self.running.take().expect("running");
                // The command leads its own process group: stop all of it.
                r.child.kill();
                let _ = r.child.wait().await;
                tracing::info!(
                    job = lease.job,
                    task = lease.task,
                    "task stopped by the appliance"
                );
            } else if let Some(i) = self.queue.iter().position(|q| q.t.lease == lease) {
                self.queue.remove(i);
                tracing::info!(
                    job = lease.job,
                    task = lease.task,
                    "a queued task was withdrawn"
                );
            }
        }
        self.queue
            .extend(w.tasks.into_iter().map(|t| Queued { t, unfetched: None }));
    }

    /// Places the task's inputs from the cache in the working directory and starts its
    /// command.
    fn spawn(&mut self, t: TaskAssignment) -> anyhow::Result<Running> {
        let work = self.node.cache.join(WORK);
        prepare(&work).with_context(|| format!("cannot prepare {}", work.display()))?;
        let mut inputs = HashSet::new();
        for f in &t.inputs {
            if !periphery_protocol::render::valid_job_path(&f.path) {
                anyhow::bail!("input path '{}' leaves the working directory", f.path);
            }
            let cached = self
                .node
                .cached(f)
                .with_context(|| format!("input {} is not in the cache", f.path))?;
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
        let mut child = crate::spawn::spawn(&program, &t.argv[1..], &work, Out::Pipe, Out::Pipe)
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
        Ok(Running {
            t,
            child,
            lines: rx,
            lines_open: true,
            inputs,
            began: Instant::now(),
            out: Output::default(),
        })
    }

    /// The running command exited: its outcome, with its outputs staged, waits to be
    /// reported.
    async fn exited(&mut self, status: std::io::Result<std::process::ExitStatus>) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        let took = r.began.elapsed();
        // The rest of its output; the pipes close when the last process holding them
        // ends (the command's process group was killed as it exited; one that left the
        // group is not waited for long).
        let _ = tokio::time::timeout(DRAIN, async {
            while let Some(l) = r.lines.recv().await {
                r.out.take(l);
            }
        })
        .await;
        let lease = r.t.lease;
        if status.as_ref().is_ok_and(|s| s.success()) {
            // Only tasks that ran tell how long the step's tasks run.
            let step = (lease.job, lease.step);
            let time = match self.task_time {
                Some((s, old)) if s == step && old < PREFETCH_BELOW && took < PREFETCH_BELOW => {
                    follow(Some(old), took)
                }
                _ => took,
            };
            self.task_time = Some((step, time));
        }
        let tail: Vec<String> = r.out.tail.into();
        let outcome = match status {
            Err(e) => Err(format!("cannot wait for the command: {e}")),
            Ok(s) if !s.success() => {
                let why = r
                    .out
                    .error
                    .or_else(|| tail.iter().rev().find(|l| !l.trim().is_empty()).cloned())
                    .unwrap_or_default();
                Err(format!("{s}: {why}"))
            }
            Ok(_) => self.stage_outputs(&r.inputs).map_err(|e| format!("{e:#}")),
        };
        let staged = match outcome {
            Ok(staged) => {
                tracing::debug!(
                    job = lease.job,
                    task = lease.task,
                    outputs = staged.len(),
                    "task done"
                );
                staged
            }
            Err(why) => {
                tracing::warn!(job = lease.job, task = lease.task, error = %why, "task failed");
                self.ended.push(Ended {
                    done: TaskDone {
                        lease,
                        outcome: Err(why),
                        log_tail: tail,
                    },
                    staged: Vec::new(),
                });
                return;
            }
        };
        self.ended.push(Ended {
            done: TaskDone {
                lease,
                outcome: Ok(staged.iter().map(|s| s.1.clone()).collect()),
                log_tail: tail,
            },
            staged,
        });
    }

    /// The files under `work/out` that are not inputs, hashed and linked under
    /// [`OUTGOING`] until their report goes.
    fn stage_outputs(
        &mut self,
        inputs: &HashSet<(String, String)>,
    ) -> anyhow::Result<Vec<(PathBuf, FileRef)>> {
        let work = self.node.cache.join(WORK);
        let outgoing = self.node.cache.join(OUTGOING);
        let mut files = Vec::new();
        let mut dirs = vec![work.join("out")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.is_file() {
                    let rel = p
                        .strip_prefix(&work)?
                        .to_str()
                        .context("an output's name is not UTF-8")?
                        .to_owned();
                    let hash = periphery_client::blobs::hash_file(&p)?;
                    if inputs.contains(&(rel.clone(), hash.clone())) {
                        continue;
                    }
                    let size = std::fs::metadata(&p)?.len();
                    std::fs::create_dir_all(&outgoing)?;
                    self.staged += 1;
                    let staged = outgoing.join(self.staged.to_string());
                    if std::fs::hard_link(&p, &staged).is_err() {
                        std::fs::copy(&p, &staged)?;
                    }
                    files.push((
                        staged,
                        FileRef {
                            path: rel,
                            hash,
                            size,
                        },
                    ));
                }
            }
        }
        files.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        Ok(files)
    }
}

impl Node {
    /// Uploads the staged outputs of `ended` that the appliance lacks and removes them; the
    /// reports, a task failed when its outputs could not be uploaded.
    async fn upload_outputs(&self, link: &mut Link<'_>, ended: Vec<Ended>) -> Vec<TaskDone> {
        let hashes: Vec<String> = ended
            .iter()
            .flat_map(|e| e.staged.iter().map(|s| s.1.hash.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let missing = match hashes.is_empty() {
            true => Ok(HashSet::new()),
            false => match link.request(Request::BlobMissing { hashes }).await {
                Ok(Response::Missing(m)) => Ok(m.into_iter().collect::<HashSet<String>>()),
                Ok(other) => Err(format!("unexpected answer to a file query: {other:?}")),
                Err(e) => Err(format!(
                    "cannot ask which outputs the appliance lacks: {e:#}"
                )),
            },
        };
        let mut sent = HashSet::new();
        let mut reports = Vec::with_capacity(ended.len());
        for Ended { mut done, staged } in ended {
            for (p, f) in &staged {
                let missing = match &missing {
                    Ok(m) => m,
                    Err(why) => {
                        done.outcome = Err(why.clone());
                        break;
                    }
                };
                if missing.contains(&f.hash) && !sent.contains(&f.hash) {
                    if let Err(e) = self.upload(link, p, &f.hash).await {
                        done.outcome = Err(format!("cannot upload {}: {e:#}", f.path));
                        break;
                    }
                    sent.insert(f.hash.clone());
                }
            }
            for (p, _) in &staged {
                let _ = std::fs::remove_file(p);
            }
            reports.push(done);
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tasks_queue_enough_to_cover_two_round_trips() {
        let ms = Duration::from_millis;
        assert_eq!(ahead(None, Some(ms(2))), 0, "nothing known yet");
        assert_eq!(ahead(Some(ms(1500)), Some(ms(2))), 0, "long tasks");
        assert_eq!(ahead(Some(ms(500)), Some(ms(2))), 1);
        assert_eq!(ahead(Some(ms(2)), Some(ms(2))), 2);
        assert_eq!(ahead(Some(ms(1)), Some(ms(3))), 6);
        assert_eq!(ahead(Some(Duration::ZERO), Some(ms(50))), MAX_AHEAD);
    }

    #[test]
    fn the_average_follows_the_recent() {
        let ms = Duration::from_millis;
        assert_eq!(follow(None, ms(8)), ms(8));
        assert_eq!(follow(Some(ms(8)), ms(4)), ms(7));
    }
}
