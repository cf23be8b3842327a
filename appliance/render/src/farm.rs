//! The farm's scheduling, sans-IO: jobs of steps of tasks, render nodes with tags, and the
//! decisions — which task runs on which node, retries, blocklists, dependencies, leases, and
//! why a task waits. Time is passed in (milliseconds); the appliance drives it, does the I/O
//! and persists what [`Farm::take_changes`] names.
//!
//! Order: among jobs with a runnable task, the highest priority first, then the oldest. A task
//! is runnable when its job is neither paused nor ended, every step its step depends on is
//! done, and a free node carries all the job's tags and is not blocklisted for the job. A
//! failed task is retried up to [`MAX_ATTEMPTS`] times; a node that failed
//! [`BLOCKLIST_AFTER`] tasks of a job gets no more of them.
//!
//! Leases: an assignment is a [`Lease`] (task and attempt) held by one node while it sends
//! heartbeats ([`Farm::node_seen`]). A node silent for [`NODE_TIMEOUT`] is lost: its task
//! waits again (not counted as an attempt). A completion is accepted only from the node that
//! holds the task's current lease, so a late report from a lost node — or a report for an
//! earlier attempt — is refused: each task completes at most once.
//!
//! Queueing: a busy node may hold more leases, up to [`MAX_HELD`], the tasks it goes on to as
//! soon as its current one ends ([`Farm::queue_node`]), so short tasks do not wait for a
//! round trip to the appliance between them. A task is queued on a busy node only while no
//! idle node could take it.
//!
//! Cost: each step keeps its waiting tasks in order and counts of its tasks by state, so
//! handing out a task, or reporting one, costs the same whatever the queue's length
//! ([`Farm::examined`] counts the work, and a test holds it flat over 10,000 tasks).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Milliseconds (the appliance's clock).
pub type Millis = u64;

/// Attempts per task before it fails for good.
pub const MAX_ATTEMPTS: u32 = 3;
/// Failures of one job's tasks on one node before the node is blocklisted for the job.
pub const BLOCKLIST_AFTER: u32 = 3;
/// Silence after which a node is lost and its lease expires, unless the farm is made with
/// another ([`Farm::with_node_timeout`]).
pub const NODE_TIMEOUT: Millis = 30_000;
/// Leases a node holds at most: the task it runs and those queued behind it (as many as
/// cover a report's round trip when tasks take about a millisecond).
pub const MAX_HELD: usize = 9;
/// The default job priority (0-100).
pub const DEFAULT_PRIORITY: u8 = 50;

/// A job id.
pub type JobId = u64;

/// What is submitted: steps with their dependencies and task counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The job's name.
    pub name: String,
    /// 0-100, higher first.
    pub priority: u8,
    /// Tags a node must carry to run it (e.g. `gpu`).
    pub tags: BTreeSet<String>,
    /// (step name, steps it depends on, number of tasks).
    pub steps: Vec<(String, Vec<String>, usize)>,
}

/// A task's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Not started (or to be run again).
    #[default]
    Waiting,
    /// Running on a node since a time.
    Running {
        /// The node.
        node: String,
        /// Since when.
        since: Millis,
    },
    /// Finished.
    Done,
    /// Failed for good, with the last error.
    Failed(String),
    /// Canceled with its job.
    Canceled,
}

/// A task as stored: its state, its failures and the leases given out for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its state.
    pub state: TaskState,
    /// Failed attempts since the last retry.
    pub failures: u32,
    /// Leases given out so far; the newest is the only one a report is accepted for.
    pub leases: u32,
    /// The node it last failed on: it goes to another node first when one asks.
    pub last_failed_on: Option<String>,
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMeta {
    /// Its name.
    pub name: String,
    /// Indexes of the earlier steps it waits for.
    pub depends_on: Vec<usize>,
    /// How many tasks it has.
    pub tasks: usize,
}

/// A job as stored, without its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    /// Its name.
    pub name: String,
    /// 0-100.
    pub priority: u8,
    /// Tags a node must carry.
    pub tags: BTreeSet<String>,
    /// When it was submitted.
    pub submitted: Millis,
    /// Held.
    pub paused: bool,
    /// Canceled.
    pub canceled: bool,
    /// Its steps.
    pub steps: Vec<StepMeta>,
    /// Failures of its tasks per node (the blocklist).
    pub failures: BTreeMap<String, u32>,
}

impl JobMeta {
    /// Whether node `id` failed enough of this job's tasks to get no more of them.
    fn blocklists(&self, id: &str) -> bool {
        self.failures.get(id).copied().unwrap_or(0) >= BLOCKLIST_AFTER
    }
}

/// Counts of a step's (or a job's) tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks done.
    pub done: usize,
    /// Tasks running.
    pub running: usize,
    /// Tasks failed for good.
    pub failed: usize,
    /// Tasks waiting.
    pub waiting: usize,
    /// Tasks canceled.
    pub canceled: usize,
    /// All tasks.
    pub total: usize,
}

impl Progress {
    fn slot(&mut self, s: &TaskState) -> &mut usize {
        match s {
            TaskState::Waiting => &mut self.waiting,
            TaskState::Running { .. } => &mut self.running,
            TaskState::Done => &mut self.done,
            TaskState::Failed(_) => &mut self.failed,
            TaskState::Canceled => &mut self.canceled,
        }
    }

    fn add(&mut self, o: &Progress) {
        self.done += o.done;
        self.running += o.running;
        self.failed += o.failed;
        self.waiting += o.waiting;
        self.canceled += o.canceled;
        self.total += o.total;
    }
}

#[derive(Debug, Clone)]
struct Step {
    tasks: Vec<TaskRecord>,
    /// Indexes of waiting tasks, in order.
    waiting: BTreeSet<usize>,
    counts: Progress,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Tasks wait or run.
    Active,
    /// Held: running tasks finish, no new ones start.
    Paused,
    /// Every task done.
    Done,
    /// Some task failed for good; the rest ran.
    Failed,
    /// Canceled.
    Canceled,
}

impl JobState {
    /// Lower-case name, as shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Active => "active",
            JobState::Paused => "paused",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// Whether nothing more will happen without a retry.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Canceled)
    }
}

#[derive(Debug, Clone)]
struct Job {
    meta: JobMeta,
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
struct Node {
    tags: BTreeSet<String>,
    last_seen: Millis,
    /// The tasks it holds leases of, the one it runs first.
    held: Vec<TaskRef>,
    /// The job and step of the last task it reported: the tasks it may queue more of.
    last_step: Option<(JobId, usize)>,
}

impl Node {
    fn new(now: Millis) -> Self {
        Node {
            tags: BTreeSet::new(),
            last_seen: now,
            held: Vec::new(),
            last_step: None,
        }
    }
}

/// A task's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// The job.
    pub job: JobId,
    /// Step index.
    pub step: usize,
    /// Task index within the step.
    pub task: usize,
}

/// The right to run a task once, held by one node. Serials grow with every lease of the
/// task, so a report for an older lease is recognised and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The task.
    pub task: TaskRef,
    /// The lease's serial (1 first).
    pub serial: u32,
}

/// What a node's heartbeat changed ([`Farm::node_seen`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Leases the node should stop, or drop if it has not started them.
    pub stop: Vec<Lease>,
    /// Tasks that wait again (the node no longer held them, or held them queued for a job
    /// that is now paused): idle nodes may take them.
    pub freed: usize,
}

/// Work handed to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The node.
    pub node: String,
    /// The lease it now holds.
    pub lease: Lease,
    /// Which attempt this is (1, then 2 after a failure ...).
    pub attempt: u32,
}

/// What changed since the last [`Farm::take_changes`]: the rows to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Jobs whose [`JobMeta`] changed (or that are new).
    pub jobs: BTreeSet<JobId>,
    /// Tasks whose [`TaskRecord`] changed.
    pub tasks: BTreeSet<TaskRef>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.tasks.is_empty()
    }
}

/// Why a request about a job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FarmError {
    /// No such job.
    #[error("no job {0}")]
    NoJob(JobId),
    /// A step depends on a step the job does not have, or on itself.
    #[error("step '{step}' depends on '{on}', which is not an earlier step of the job")]
    BadDependency {
        /// The step.
        step: String,
        /// What it names.
        on: String,
    },
    /// A report for a lease the node does not hold (late, from a lost node, or for an
    /// earlier attempt).
    #[error("node {1} does not hold the lease of task {0:?} (it expired or was never given)")]
    NotHeld(Lease, String),
    /// Priority over 100.
    #[error("priority {0} is outside 0..=100")]
    BadPriority(u8),
    /// A job without tasks.
    #[error("the job has no tasks")]
    Empty,
}

/// The farm.
#[derive(Debug)]
pub struct Farm {
    jobs: BTreeMap<JobId, Job>,
    /// The jobs with waiting tasks that may start, in the order they are served: highest
    /// priority, then oldest. Kept as tasks change, so finished jobs cost nothing.
    runnable: BTreeSet<(std::cmp::Reverse<u8>, Millis, JobId)>,
    nodes: BTreeMap<String, Node>,
    next_job: JobId,
    changes: Changes,
    examined: u64,
    node_timeout: Millis,
}

impl Default for Farm {
    fn default() -> Self {
        Self {
            jobs: BTreeMap::new(),
            runnable: BTreeSet::new(),
            nodes: BTreeMap::new(),
            next_job: 0,
            changes: Changes::default(),
            examined: 0,
            node_timeout: NODE_TIMEOUT,
        }
    }
}

impl Step {
    fn new(n: usize) -> Self {
        let mut s = Step {
            tasks: Vec::with_capacity(n),
            waiting: BTreeSet::new(),
            counts: Progress::default(),
        };
        for _ in 0..n {
            s.push(TaskRecord::default());
        }
        s
    }

    fn push(&mut self, t: TaskRecord) {
        let i = self.tasks.len();
        *self.counts.slot(&t.state) += 1;
        self.counts.total += 1;
        if t.state == TaskState::Waiting {
            self.waiting.insert(i);
        }
        self.tasks.push(t);
    }

    /// Moves task `i` to `state`, keeping the counts and the waiting set.
    fn set(&mut self, i: usize, state: TaskState) {
        let t = &mut self.tasks[i];
        *self.counts.slot(&t.state) -= 1;
        if t.state == TaskState::Waiting {
            self.waiting.remove(&i);
        }
        *self.counts.slot(&state) += 1;
        if state == TaskState::Waiting {
            self.waiting.insert(i);
        }
        t.state = state;
    }

    fn done(&self) -> bool {
        self.counts.done == self.counts.total
    }
}

impl Job {
    /// Whether `step` can never run: a step it depends on (directly or not) has failed tasks.
    fn doomed(&self, step: usize) -> bool {
        self.meta.steps[step]
            .depends_on
            .iter()
            .any(|d| self.steps[*d].counts.failed > 0 || self.doomed(*d))
    }

    fn may_run_on(&self, id: &str, node: &Node) -> bool {
        self.meta.tags.is_subset(&node.tags) && !self.meta.blocklists(id)
    }

    fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for s in &self.steps {
            p.add(&s.counts);
        }
        p
    }
}

impl Farm {
    /// An empty farm.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same farm, losing nodes after `timeout` of silence instead of [`NODE_TIMEOUT`].
    pub fn with_node_timeout(mut self, timeout: Millis) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// A farm from stored jobs (`(id, meta, tasks per step)`), after a restart at `now`.
    /// Tasks that were running keep their lease: their node has the node timeout from `now`
    /// to come back and report, else the tasks wait again.
    pub fn restore(
        now: Millis,
        jobs: impl IntoIterator<Item = (JobId, JobMeta, Vec<Vec<TaskRecord>>)>,
    ) -> Self {
        let mut f = Farm::new();
        for (id, meta, tasks) in jobs {
            let mut steps = Vec::new();
            for (si, step_tasks) in tasks.into_iter().enumerate() {
                let mut s = Step::new(0);
                for (ti, t) in step_tasks.into_iter().enumerate() {
                    if let TaskState::Running { node, .. } = &t.state {
                        f.nodes
                            .entry(node.clone())
                            .or_insert_with(|| Node::new(now))
                            .held
                            .push(TaskRef {
                                job: id,
                                step: si,
                                task: ti,
                            });
                    }
                    s.push(t);
                }
                steps.push(s);
            }
            f.next_job = f.next_job.max(id);
            f.jobs.insert(id, Job { meta, steps });
            f.refresh(id);
        }
        f
    }

    /// Rows changed since the last call, for the caller to persist.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Work done choosing tasks so far (jobs and steps looked at): a measure of scheduling
    /// cost that does not depend on the machine.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// A job's stored form.
    pub fn job_meta(&self, id: JobId) -> Option<&JobMeta> {
        self.jobs.get(&id).map(|j| &j.meta)
    }

    /// A task's stored form.
    pub fn task(&self, t: TaskRef) -> Option<&TaskRecord> {
        self.jobs.get(&t.job)?.steps.get(t.step)?.tasks.get(t.task)
    }

    /// The jobs, oldest first.
    pub fn job_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs.keys().copied()
    }

    /// The node ids known, with the task each runs.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, Option<TaskRef>)> {
        self.nodes
            .iter()
            .map(|(id, n)| (id.as_str(), n.held.first().copied()))
    }

    fn set_task(&mut self, t: TaskRef, state: TaskState) {
        if let Some(job) = self.jobs.get_mut(&t.job) {
            job.steps[t.step].set(t.task, state);
            self.changes.tasks.insert(t);
            self.refresh(t.job);
        }
    }

    /// Puts job `id` in [`Farm::runnable`] or takes it out, as it now is.
    fn refresh(&mut self, id: JobId) {
        let Some(j) = self.jobs.get(&id) else { return };
        let key = (std::cmp::Reverse(j.meta.priority), j.meta.submitted, id);
        let waiting = j.steps.iter().any(|s| s.counts.waiting > 0);
        if !j.meta.paused && !j.meta.canceled && waiting {
            self.runnable.insert(key);
        } else {
            self.runnable.remove(&key);
        }
    }

    /// Queues a job.
    pub fn submit(&mut self, now: Millis, req: JobRequest) -> Result<JobId, FarmError> {
        if req.priority > 100 {
            return Err(FarmError::BadPriority(req.priority));
        }
        if req.steps.iter().all(|s| s.2 == 0) {
            return Err(FarmError::Empty);
        }
        let mut metas: Vec<StepMeta> = Vec::new();
        for (name, deps, count) in &req.steps {
            let depends_on = deps
                .iter()
                .map(|d| {
                    metas.iter().position(|s| s.name == *d).ok_or_else(|| {
                        FarmError::BadDependency {
                            step: name.clone(),
                            on: d.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            metas.push(StepMeta {
                name: name.clone(),
                depends_on,
                tasks: *count,
            });
        }
        self.next_job += 1;
        let id = self.next_job;
        let steps = metas.iter().map(|m| Step::new(m.tasks)).collect();
        self.jobs.insert(
            id,
            Job {
                meta: JobMeta {
                    name: req.name,
                    priority: req.priority,
                    tags: req.tags,
                    submitted: now,
                    paused: false,
                    canceled: false,
                    steps: metas,
                    failures: BTreeMap::new(),
                },
                steps,
            },
        );
        self.changes.jobs.insert(id);
        self.refresh(id);
        for (si, m) in self.jobs[&id].meta.steps.iter().enumerate() {
            for ti in 0..m.tasks {
                self.changes.tasks.insert(TaskRef {
                    job: id,
                    step: si,
                    task: ti,
                });
            }
        }
        Ok(id)
    }

    /// A node's heartbeat: it is alive, with `tags`, running the task of lease `running`
    /// (none when idle) with the tasks of `queued` to go on to. A task the farm had leased
    /// to it that it no longer names (it restarted), or holds queued for a job that is now
    /// paused, waits again. Says which leases the node should stop or drop: those it holds
    /// that are no longer current (expired, canceled, unknown, or released just now).
    pub fn node_seen(
        &mut self,
        now: Millis,
        id: &str,
        tags: BTreeSet<String>,
        running: Option<Lease>,
        queued: &[Lease],
    ) -> Seen {
        let named: Vec<Lease> = running.into_iter().chain(queued.iter().copied()).collect();
        let n = self
            .nodes
            .entry(id.to_owned())
            .or_insert_with(|| Node::new(now));
        n.tags = tags;
        n.last_seen = now;
        // The node lost these (it restarted): they did not fail.
        let mut lost: Vec<TaskRef> = n
            .held
            .iter()
            .filter(|t| !named.iter().any(|l| l.task == **t))
            .copied()
            .collect();
        // No new task of a paused job starts, queued ones neither.
        lost.extend(
            queued
                .iter()
                .filter(|l| {
                    self.holds(id, **l) && self.jobs.get(&l.task.job).is_some_and(|j| j.meta.paused)
                })
                .map(|l| l.task),
        );
        let freed = lost.len();
        for t in lost {
            self.release(id, t);
        }
        let stop = named
            .into_iter()
            .filter(|l| {
                !self.holds(id, *l) || self.jobs.get(&l.task.job).is_some_and(|j| j.meta.canceled)
            })
            .collect();
        Seen { stop, freed }
    }

    /// Node `id` is alive (it moves files), without a heartbeat's news.
    pub fn touch(&mut self, now: Millis, id: &str) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.last_seen = n.last_seen.max(now);
        }
    }

    /// Puts a node's task back to waiting without counting a failure.
    fn release(&mut self, node: &str, t: TaskRef) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.held.retain(|h| *h != t);
        }
        let canceled = self.jobs.get(&t.job).is_some_and(|j| j.meta.canceled);
        if let Some(rec) = self.task(t) {
            if matches!(rec.state, TaskState::Running { .. }) {
                self.set_task(
                    t,
                    if canceled {
                        TaskState::Canceled
                    } else {
                        TaskState::Waiting
                    },
                );
            }
        }
    }

    /// A node leaves for good (or was removed): its tasks wait again.
    pub fn node_gone(&mut self, id: &str) {
        for t in self
            .nodes
            .get(id)
            .map(|n| n.held.clone())
            .unwrap_or_default()
        {
            self.release(id, t);
        }
        self.nodes.remove(id);
    }

    /// Nodes silent for the node timeout are lost; their leases expire and their tasks wait
    /// again. Returns them.
    pub fn tick(&mut self, now: Millis) -> Vec<String> {
        let lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.saturating_sub(n.last_seen) >= self.node_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            self.node_gone(id);
        }
        lost
    }

    /// The next waiting task of `job` whose step's dependencies are done, for `node`: among
    /// the first few waiting, one that did not just fail there, else the first.
    fn ready_task(&mut self, job_id: JobId, node: &str) -> Option<TaskRef> {
        let job = &self.jobs[&job_id];
        if job.meta.paused || job.meta.canceled {
            return None;
        }
        for (si, s) in job.steps.iter().enumerate() {
            self.examined += 1;
            let Some(&first) = s.waiting.first() else {
                continue;
            };
            // Fewer than BLOCKLIST_AFTER tasks can have failed here before the node is
            // blocklisted, so looking that far bounds the work.
            let ti = s
                .waiting
                .iter()
                .take(BLOCKLIST_AFTER as usize + 1)
                .find(|i| s.tasks[**i].last_failed_on.as_deref() != Some(node))
                .copied()
                .unwrap_or(first);
            if job.meta.steps[si]
                .depends_on
                .iter()
                .all(|d| job.steps[*d].done())
            {
                return Some(TaskRef {
                    job: job_id,
                    step: si,
                    task: ti,
                });
            }
        }
        None
    }

    /// Jobs with waiting tasks that may start, in the order they are served.
    fn runnable_jobs(&self) -> Vec<JobId> {
        self.runnable.iter().map(|k| k.2).collect()
    }

    /// Hands waiting tasks to every free node; the caller sends each to its node.
    pub fn assign(&mut self, now: Millis) -> Vec<Assignment> {
        let free: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.held.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        let order = self.runnable_jobs();
        free.into_iter()
            .filter_map(|n| self.assign_in_order(now, &n, &order))
            .collect()
    }

    /// The next task for node `id` (which asks for work), if it is free and a task fits.
    pub fn assign_node(&mut self, now: Millis, id: &str) -> Option<Assignment> {
        if !self.nodes.get(id)?.held.is_empty() {
            return None;
        }
        let order = self.runnable_jobs();
        self.assign_in_order(now, id, &order)
    }

    /// A task for busy node `id` to go on to after those it holds: only while it holds
    /// fewer than [`MAX_HELD`], all of the step of the last task it reported, and only of
    /// that step (a node asks for queued tasks knowing how long that step's tasks run); only
    /// while no idle node could run that job and no job served before it has a task ready.
    pub fn queue_node(&mut self, now: Millis, id: &str) -> Option<Assignment> {
        let node = self.nodes.get(id)?;
        let (job_id, step) = node.last_step?;
        if node.held.is_empty()
            || node.held.len() >= MAX_HELD
            || node.held.iter().any(|t| (t.job, t.step) != (job_id, step))
        {
            return None;
        }
        let job = self.jobs.get(&job_id)?;
        let others_idle = self
            .nodes
            .iter()
            .any(|(other, n)| other != id && n.held.is_empty() && job.may_run_on(other, n));
        if others_idle || !job.may_run_on(id, node) {
            return None;
        }
        // A job served before this one with a task ready waits for the node to be free.
        for j in self.runnable_jobs() {
            if j == job_id {
                break;
            }
            self.examined += 1;
            if self.jobs[&j].may_run_on(id, &self.nodes[id]) && self.ready_task(j, id).is_some() {
                return None;
            }
        }
        let t = self.ready_task(job_id, id).filter(|t| t.step == step)?;
        self.lease_to(now, id, t)
    }

    fn assign_in_order(
        &mut self,
        now: Millis,
        node_id: &str,
        order: &[JobId],
    ) -> Option<Assignment> {
        let mut pick = None;
        for jid in order {
            self.examined += 1;
            let may = self.jobs[jid].may_run_on(node_id, &self.nodes[node_id]);
            if let Some(t) = may.then(|| self.ready_task(*jid, node_id)).flatten() {
                pick = Some(t);
                break;
            }
        }
        self.lease_to(now, node_id, pick?)
    }

    /// Leases task `t` to node `node_id`.
    fn lease_to(&mut self, now: Millis, node_id: &str, t: TaskRef) -> Option<Assignment> {
        self.set_task(
            t,
            TaskState::Running {
                node: node_id.to_owned(),
                since: now,
            },
        );
        let rec = &mut self.jobs.get_mut(&t.job)?.steps[t.step].tasks[t.task];
        rec.leases += 1;
        let (serial, attempt) = (rec.leases, rec.failures + 1);
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.held.push(t);
        }
        Some(Assignment {
            node: node_id.to_owned(),
            lease: Lease { task: t, serial },
            attempt,
        })
    }

    /// Whether `node` holds `lease` now.
    pub fn holds(&self, node: &str, lease: Lease) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.held.contains(&lease.task))
            && self.task(lease.task).map(|r| r.leases) == Some(lease.serial)
    }

    /// A node reports the end of the task it holds the lease of: `Ok` when done, `Err` with
    /// the failure. A report for a lease the node does not hold is refused (and its output
    /// must be discarded).
    pub fn finished(
        &mut self,
        now: Millis,
        node_id: &str,
        lease: Lease,
        outcome: Result<(), String>,
    ) -> Result<(), FarmError> {
        let t = lease.task;
        if !self.holds(node_id, lease) {
            return Err(FarmError::NotHeld(lease, node_id.to_owned()));
        }
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.held.retain(|h| *h != t);
            n.last_seen = now;
            n.last_step = Some((t.job, t.step));
        }
        let others = self.nodes_left(t.job, node_id);
        let job = self.jobs.get_mut(&t.job).ok_or(FarmError::NoJob(t.job))?;
        let canceled = job.meta.canceled;
        let (mut blocklisted, mut stuck) = (false, false);
        let state = match outcome {
            Ok(()) => TaskState::Done,
            Err(_) if canceled => TaskState::Canceled,
            Err(e) => {
                let here = job.meta.failures.entry(node_id.to_owned()).or_insert(0);
                *here += 1;
                blocklisted = *here >= BLOCKLIST_AFTER;
                // The last node that may run the job is blocklisted: nothing would run it.
                stuck = blocklisted && !others;
                self.changes.jobs.insert(t.job);
                let rec = &mut job.steps[t.step].tasks[t.task];
                rec.failures += 1;
                rec.last_failed_on = Some(node_id.to_owned());
                if rec.failures >= MAX_ATTEMPTS || stuck {
                    TaskState::Failed(e)
                } else {
                    TaskState::Waiting
                }
            }
        };
        self.set_task(t, state);
        if blocklisted {
            // What else the node holds of the job (queued) goes to other nodes, or fails
            // with the rest when there are none.
            let mine: Vec<TaskRef> = self.nodes[node_id]
                .held
                .iter()
                .filter(|h| h.job == t.job)
                .copied()
                .collect();
            for h in mine {
                self.release(node_id, h);
            }
        }
        if stuck {
            self.fail_waiting(t.job);
        }
        Ok(())
    }

    /// Whether a node other than `but` may run job `id`'s tasks.
    fn nodes_left(&self, id: JobId, but: &str) -> bool {
        self.jobs.get(&id).is_some_and(|job| {
            self.nodes
                .iter()
                .any(|(n, node)| n != but && job.may_run_on(n, node))
        })
    }

    /// Every node that may run job `id` is blocklisted for it: its waiting tasks fail
    /// rather than wait for ever (`retry` clears the blocklist and runs them again).
    fn fail_waiting(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let why = format!(
            "not run: every node that may run this job is blocklisted for it after {BLOCKLIST_AFTER} failures (render retry runs it again)"
        );
        let waiting: Vec<TaskRef> = job
            .steps
            .iter()
            .enumerate()
            .flat_map(|(si, s)| {
                s.waiting.iter().map(move |&ti| TaskRef {
                    job: id,
                    step: si,
                    task: ti,
                })
            })
            .collect();
        for t in waiting {
            self.set_task(t, TaskState::Failed(why.clone()));
        }
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut JobMeta, FarmError> {
        self.changes.jobs.insert(id);
        self.jobs
            .get_mut(&id)
            .map(|j| &mut j.meta)
            .ok_or(FarmError::NoJob(id))
    }

    /// Holds a job: running tasks finish, no new ones start.
    pub fn pause(&mut self, id: JobId) -> Result<(), FarmError> {
        self.job_mut(id)?.paused = true;
        self.refresh(id);
        Ok(())
    }

    /// Lets a paused job run again.
    pub fn resume(&mut self, id: JobId) -> Result<(), FarmError> {
        self.job_mut(id)?.paused = false;
        self.refresh(id);
        Ok(())
    }

    /// Cancels a job: waiting tasks are canceled; returns the running ones, whose nodes are
    /// told to stop them at their next heartbeat.
    pub fn cancel(&mut self, id: JobId) -> Result<Vec<Assignment>, FarmError> {
        self.job_mut(id)?.canceled = true;
        let job = &self.jobs[&id];
        let mut running = Vec::new();
        let mut waiting = Vec::new();
        for (si, s) in job.steps.iter().enumerate() {
            let t = |ti| TaskRef {
                job: id,
                step: si,
                task: ti,
            };
            waiting.extend(s.waiting.iter().map(|ti| t(*ti)));
            if s.counts.running > 0 {
                for (ti, rec) in s.tasks.iter().enumerate() {
                    if let TaskState::Running { node, .. } = &rec.state {
                        running.push(Assignment {
                            node: node.clone(),
                            lease: Lease {
                                task: t(ti),
                                serial: rec.leases,
                            },
                            attempt: rec.failures + 1,
                        });
                    }
                }
            }
        }
        for t in waiting {
            self.set_task(t, TaskState::Canceled);
        }
        self.refresh(id);
        Ok(running)
    }

    /// Runs failed and canceled (or, with `all`, also done) tasks again, with fresh attempts
    /// and blocklist. Returns how many.
    pub fn retry(&mut self, id: JobId, all: bool) -> Result<usize, FarmError> {
        let meta = self.job_mut(id)?;
        meta.canceled = false;
        meta.failures.clear();
        let job = &self.jobs[&id];
        let again: Vec<TaskRef> = job
            .steps
            .iter()
            .enumerate()
            .flat_map(|(si, s)| {
                s.tasks.iter().enumerate().filter_map(move |(ti, t)| {
                    let again = match t.state {
                        TaskState::Failed(_) | TaskState::Canceled => true,
                        TaskState::Done => all,
                        _ => false,
                    };
                    again.then_some(TaskRef {
                        job: id,
                        step: si,
                        task: ti,
                    })
                })
            })
            .collect();
        for t in &again {
            self.set_task(*t, TaskState::Waiting);
            if let Some(job) = self.jobs.get_mut(&id) {
                job.steps[t.step].tasks[t.task].failures = 0;
            }
        }
        self.refresh(id);
        Ok(again.len())
    }

    /// A job's counts.
    pub fn progress(&self, id: JobId) -> Result<Progress, FarmError> {
        Ok(self.jobs.get(&id).ok_or(FarmError::NoJob(id))?.progress())
    }

    /// A job's state.
    pub fn state(&self, id: JobId) -> Result<JobState, FarmError> {
        let job = self.jobs.get(&id).ok_or(FarmError::NoJob(id))?;
        let p = job.progress();
        // Failed once nothing runs and nothing left can: what waits depends on failed tasks.
        let stuck = job
            .steps
            .iter()
            .enumerate()
            .all(|(si, s)| s.counts.waiting == 0 || job.doomed(si));
        Ok(if job.meta.canceled && p.running == 0 {
            JobState::Canceled
        } else if p.running == 0 && p.failed > 0 && stuck {
            JobState::Failed
        } else if p.done == p.total {
            JobState::Done
        } else if job.meta.paused {
            JobState::Paused
        } else {
            JobState::Active
        })
    }

    /// A task's state.
    pub fn task_state(&self, t: TaskRef) -> Option<&TaskState> {
        self.task(t).map(|r| &r.state)
    }

    /// Why a job's waiting tasks wait, one reason per line (empty when nothing waits).
    pub fn why(&self, id: JobId) -> Result<Vec<String>, FarmError> {
        let job = self.jobs.get(&id).ok_or(FarmError::NoJob(id))?;
        let mut why = Vec::new();
        if job.progress().waiting == 0 {
            return Ok(why);
        }
        if job.meta.canceled {
            why.push("the job was canceled".into());
        }
        if job.meta.paused {
            why.push("the job is paused (render resume)".into());
        }
        for (si, s) in job.steps.iter().enumerate() {
            if s.counts.waiting == 0 {
                continue;
            }
            let meta = &job.meta.steps[si];
            let pending: Vec<&str> = meta
                .depends_on
                .iter()
                .filter(|d| !job.steps[**d].done())
                .map(|d| job.meta.steps[*d].name.as_str())
                .collect();
            if !pending.is_empty() {
                why.push(if job.doomed(si) {
                    format!(
                        "step '{}' waits for step(s) {}, which have failed tasks (render retry --failed)",
                        meta.name,
                        pending.join(", ")
                    )
                } else {
                    format!(
                        "step '{}' waits for step(s) {} to finish",
                        meta.name,
                        pending.join(", ")
                    )
                });
            }
        }
        let tagged: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, n)| job.meta.tags.is_subset(&n.tags))
            .map(|(id, _)| id)
            .collect();
        if self.nodes.is_empty() {
            why.push("no render node is connected".into());
        } else if tagged.is_empty() {
            let tags: Vec<&str> = job.meta.tags.iter().map(String::as_str).collect();
            why.push(format!("no node has the tags {}", tags.join(", ")));
        } else {
            let allowed: Vec<&&String> = tagged
                .iter()
                .filter(|id| !job.meta.blocklists(id))
                .collect();
            let blocked: Vec<&str> = tagged
                .iter()
                .filter(|id| !allowed.contains(id))
                .map(|s| s.as_str())
                .collect();
            if allowed.is_empty() {
                why.push(format!(
                    "every node with the tags is blocklisted for this job after {BLOCKLIST_AFTER} failures ({}); render retry clears it",
                    blocked.join(", ")
                ));
            } else {
                if !blocked.is_empty() {
                    why.push(format!(
                        "blocklisted for this job after {BLOCKLIST_AFTER} failures: {}",
                        blocked.join(", ")
                    ));
                }
                if allowed.iter().all(|id| !self.nodes[**id].held.is_empty()) {
                    why.push(format!(
                        "all {} suitable node(s) are busy (jobs of higher priority or submitted earlier first)",
                        allowed.len()
                    ));
                }
            }
        }
        Ok(why)
    }

    /// The nodes blocklisted for a job.
    pub fn blocklisted(&self, id: JobId) -> Vec<String> {
        self.jobs
            .get(&id)
            .map(|j| {
                j.meta
                    .failures
                    .iter()
                    .filter(|(id, _)| j.meta.blocklists(id))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The job's name.
    pub fn name(&self, id: JobId) -> Option<&str> {
        self.jobs.get(&id).map(|j| j.meta.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tags(t: &[&str]) -> BTreeSet<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn job(name: &str, priority: u8, t: &[&str], frames: usize) -> JobRequest {
        JobRequest {
            name: name.into(),
            priority,
            tags: tags(t),
            steps: vec![
                ("Render".into(), vec![], frames),
                ("Assemble".into(), vec!["Render".into()], 1),
            ],
        }
    }

    fn seen(f: &mut Farm, now: Millis, node: &str) {
        f.node_seen(now, node, tags(&[]), None, &[]);
    }

    #[test]
    fn a_busy_node_queues_tasks_only_while_no_idle_node_could_take_them() {
        let mut f = Farm::new();
        let j = f.submit(0, job("a", 50, &["linux"], 30)).unwrap();
        let linux = || tags(&["linux"]);
        f.node_seen(0, "n1", linux(), None, &[]);
        f.node_seen(0, "n2", linux(), None, &[]);
        // An idle node that lacks the job's tags does not count.
        f.node_seen(0, "tagged", tags(&["other"]), None, &[]);
        assert!(
            f.queue_node(1, "n1").is_none(),
            "n1 runs nothing: nothing to queue behind"
        );
        let a = f.assign_node(1, "n1").unwrap();
        assert!(
            f.queue_node(1, "n1").is_none(),
            "n1 has not reported a task of the step: it does not know how long they run"
        );
        f.finished(1, "n1", a.lease, Ok(())).unwrap();
        let a = f.assign_node(1, "n1").unwrap();
        assert!(f.queue_node(1, "n1").is_none(), "n2 is idle and takes it");
        let b = f.assign_node(1, "n2").unwrap();
        let queued: Vec<Assignment> = (0..).map_while(|_| f.queue_node(2, "n1")).collect();
        assert_eq!(queued.len(), MAX_HELD - 1, "queued up to the cap");
        assert!(f.assign_node(2, "n1").is_none(), "busy");
        assert!(f.holds("n1", a.lease) && queued.iter().all(|q| f.holds("n1", q.lease)));
        assert_eq!(f.progress(j).unwrap().running, MAX_HELD + 1);
        f.finished(2, "n2", b.lease, Ok(())).unwrap();
        let b = f.assign_node(2, "n2").unwrap();
        let d = f.queue_node(2, "n2").unwrap();

        // n1 ends its task and goes on to the first queued one; it may queue another.
        f.finished(3, "n1", a.lease, Ok(())).unwrap();
        let c = queued[0].clone();
        assert_eq!(
            f.nodes().find(|n| n.0 == "n1").unwrap().1,
            Some(c.lease.task),
            "the node's current task is the oldest it holds"
        );
        let e = f.queue_node(3, "n1").unwrap();
        assert!(f.queue_node(3, "n1").is_none());

        // A job of higher priority waits for a free node rather than queue behind.
        let urgent = f.submit(3, job("urgent", 90, &["linux"], 1)).unwrap();
        f.finished(3, "n1", c.lease, Ok(())).unwrap();
        assert!(
            f.queue_node(3, "n1").is_none(),
            "the urgent job comes first"
        );
        f.pause(urgent).unwrap();
        let c = f.queue_node(3, "n1").unwrap();

        // n2 restarts holding nothing: both its tasks wait again, not as failures.
        assert_eq!(
            f.node_seen(4, "n2", linux(), None, &[]),
            Seen {
                stop: vec![],
                freed: 2
            }
        );
        for l in [b.lease, d.lease] {
            assert!(!f.holds("n2", l));
            assert_eq!(f.task(l.task).unwrap().state, TaskState::Waiting);
            assert_eq!(f.task(l.task).unwrap().failures, 0);
        }
        // A node that dropped its queued tasks keeps the one it runs.
        let first = queued[1].lease;
        assert!(f
            .node_seen(5, "n1", linux(), Some(first), &[])
            .stop
            .is_empty());
        assert!(f.holds("n1", first));
        for l in queued[2..]
            .iter()
            .map(|q| q.lease)
            .chain([e.lease, c.lease])
        {
            assert_eq!(f.task(l.task).unwrap().state, TaskState::Waiting);
        }

        // Cancel: the running and the queued tasks are all named to stop; a heartbeat
        // holding canceled leases is told to drop each.
        assert!(f.queue_node(6, "n1").is_none(), "n2 is idle again");
        f.assign_node(6, "n2").unwrap();
        let q = f.queue_node(6, "n1").unwrap();
        let stop = f.cancel(j).unwrap();
        assert!(stop.iter().any(|x| x.lease == first) && stop.iter().any(|x| x.lease == q.lease));
        assert_eq!(
            f.node_seen(7, "n1", linux(), Some(first), &[q.lease]).stop,
            vec![first, q.lease]
        );
        f.node_gone("n1");
        for l in [first, q.lease] {
            assert_eq!(f.task(l.task).unwrap().state, TaskState::Canceled);
        }
    }

    #[test]
    fn queued_tasks_of_a_paused_job_wait_again_and_a_running_one_goes_on() {
        let mut f = Farm::new();
        let j = f.submit(0, job("a", 50, &[], 6)).unwrap();
        seen(&mut f, 0, "n1");
        let a = f.assign_node(1, "n1").unwrap();
        f.finished(1, "n1", a.lease, Ok(())).unwrap();
        let run = f.assign_node(2, "n1").unwrap().lease;
        let q: Vec<Lease> = (0..2)
            .map(|_| f.queue_node(2, "n1").unwrap().lease)
            .collect();
        f.pause(j).unwrap();
        let seen = f.node_seen(3, "n1", tags(&[]), Some(run), &q);
        assert_eq!(seen.stop, q, "the queued ones are dropped");
        assert_eq!(seen.freed, 2);
        assert!(f.holds("n1", run), "the running one finishes");
        for l in &q {
            assert_eq!(f.task(l.task).unwrap().state, TaskState::Waiting);
        }
    }

    #[test]
    fn a_lone_node_blocklisted_with_tasks_queued_fails_the_job_rather_than_hang() {
        let mut f = Farm::new();
        let j = f.submit(0, job("a", 50, &[], 8)).unwrap();
        seen(&mut f, 0, "n1");
        let a = f.assign_node(1, "n1").unwrap();
        f.finished(1, "n1", a.lease, Ok(())).unwrap();
        let mut held: Vec<Lease> = vec![f.assign_node(2, "n1").unwrap().lease];
        held.extend((0..5).map(|_| f.queue_node(2, "n1").unwrap().lease));
        // The first three fail: the node is blocklisted while it holds three more.
        for l in &held[..3] {
            f.finished(3, "n1", *l, Err("boom".into())).unwrap();
        }
        for l in &held[3..] {
            assert!(!f.holds("n1", *l), "what it held of the job is taken back");
        }
        assert_eq!(f.state(j).unwrap(), JobState::Failed);
        let stop = f
            .node_seen(4, "n1", tags(&[]), Some(held[3]), &held[4..])
            .stop;
        assert_eq!(stop, held[3..].to_vec(), "and the node told to drop it");
    }

    #[test]
    fn nothing_is_queued_behind_a_task_of_another_step() {
        let mut f = Farm::new();
        let frames = f.submit(0, job("frames", 50, &[], 20)).unwrap();
        seen(&mut f, 0, "n1");
        let a = f.assign_node(1, "n1").unwrap();
        f.finished(1, "n1", a.lease, Ok(())).unwrap();
        let long = f.submit(1, job("long", 90, &[], 1)).unwrap();
        let b = f.assign_node(2, "n1").unwrap();
        assert_eq!(b.lease.task.job, long);
        assert!(
            f.queue_node(2, "n1").is_none(),
            "job {frames}'s short tasks wait for a free node, not behind a long one"
        );
    }

    #[test]
    fn a_node_moving_files_stays_alive() {
        let mut f = Farm::new();
        seen(&mut f, 0, "n1");
        f.touch(NODE_TIMEOUT - 1, "n1");
        assert!(f.tick(NODE_TIMEOUT).is_empty());
        assert_eq!(f.tick(2 * NODE_TIMEOUT - 1), vec!["n1".to_string()]);
    }

    #[test]
    fn only_tasks_of_the_step_a_node_last_reported_are_queued_on_it() {
        let mut f = Farm::new();
        let j = f.submit(0, job("a", 50, &[], 2)).unwrap();
        seen(&mut f, 0, "n1");
        for now in 1..=2 {
            let a = f.assign_node(now, "n1").unwrap();
            assert!(now == 1 || f.queue_node(now, "n1").is_none(), "one left");
            f.finished(now, "n1", a.lease, Ok(())).unwrap();
        }
        // The render step is done: the assembly starts, and nothing of it is queued on
        // the strength of how long frames took.
        let assemble = f.assign_node(3, "n1").unwrap();
        assert_eq!(assemble.lease.task.step, 1);
        let other = f.submit(3, job("b", 50, &[], 3)).unwrap();
        assert!(f.queue_node(3, "n1").is_none());
        f.finished(4, "n1", assemble.lease, Ok(())).unwrap();
        assert_eq!(f.state(j).unwrap(), JobState::Done);
        let b = f.assign_node(5, "n1").unwrap();
        assert_eq!(b.lease.task.job, other);
        assert!(
            f.queue_node(5, "n1").is_none(),
            "a new job: not before one is reported"
        );
    }

    #[test]
    fn steps_run_after_their_dependencies() {
        let mut f = Farm::new();
        let j = f.submit(0, job("a", 50, &[], 2)).unwrap();
        for n in ["n1", "n2", "n3"] {
            seen(&mut f, 0, n);
        }
        let a = f.assign(1);
        assert_eq!(a.len(), 2, "two render tasks; assembly waits");
        assert!(a.iter().all(|x| x.lease.task.step == 0));
        assert!(f.why(j).unwrap()[0].contains("waits for step(s) Render"));
        f.finished(2, &a[0].node, a[0].lease, Ok(())).unwrap();
        assert!(f.assign(3).is_empty(), "one render task still runs");
        f.finished(4, &a[1].node, a[1].lease, Ok(())).unwrap();
        let b = f.assign(5);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].lease.task.step, 1);
        f.finished(6, &b[0].node, b[0].lease, Ok(())).unwrap();
        assert_eq!(f.state(j).unwrap(), JobState::Done);
        assert_eq!(f.progress(j).unwrap().done, 3);
    }

    #[test]
    fn priority_then_age_and_tags() {
        let mut f = Farm::new();
        let low = f.submit(0, job("low", 10, &[], 1)).unwrap();
        let old = f.submit(1, job("old", 60, &[], 1)).unwrap();
        let new = f.submit(2, job("new", 60, &[], 1)).unwrap();
        let gpu = f.submit(3, job("gpu", 90, &["gpu"], 1)).unwrap();
        f.node_seen(0, "cpu", tags(&["linux"]), None, &[]);
        let a = f.assign(5);
        assert_eq!(
            a[0].lease.task.job, old,
            "the gpu job cannot run here; the older of two 60s first"
        );
        assert!(f
            .why(gpu)
            .unwrap()
            .iter()
            .any(|w| w.contains("no node has the tags gpu")));
        assert!(f.why(new).unwrap().iter().any(|w| w.contains("busy")));
        assert!(f.why(low).unwrap().iter().any(|w| w.contains("busy")));
        f.node_seen(5, "big", tags(&["gpu", "linux"]), None, &[]);
        let b = f.assign(6);
        assert_eq!(b[0].lease.task.job, gpu);
    }

    #[test]
    fn failures_retry_then_fail_and_blocklist_the_node() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 2)).unwrap();
        seen(&mut f, 0, "bad");
        seen(&mut f, 0, "good");
        // A task that failed on a node goes to another task first there; after 3 failures
        // of the job the node gets no more of it.
        for (i, (want_task, want_attempt)) in [(0, 1), (1, 1), (0, 2)].into_iter().enumerate() {
            let i = i as u64;
            let a = f.assign_node(1 + i, "bad").unwrap();
            assert_eq!(
                (a.lease.task.task, a.attempt),
                (want_task, want_attempt),
                "{a:?}"
            );
            f.finished(2 + i, "bad", a.lease, Err("CUDA error".into()))
                .unwrap();
        }
        assert!(f.assign_node(5, "bad").is_none());
        assert_eq!(f.blocklisted(j), ["bad"]);
        assert!(f.why(j).unwrap().iter().any(|w| w.contains("blocklisted")));
        let a = f.assign(6);
        assert_eq!((a[0].node.as_str(), a[0].attempt), ("good", 3));
        f.finished(7, "good", a[0].lease, Err("CUDA error".into()))
            .unwrap();
        assert_eq!(
            f.task_state(a[0].lease.task),
            Some(&TaskState::Failed("CUDA error".into())),
            "three attempts, then it fails for good"
        );
        let a = f.assign(8);
        f.finished(9, "good", a[0].lease, Ok(())).unwrap();
        // The assembly can never run: the job failed, and says why.
        assert_eq!(f.state(j).unwrap(), JobState::Failed);
        assert!(f
            .why(j)
            .unwrap()
            .iter()
            .any(|w| w.contains("which have failed tasks")));
        assert_eq!(f.progress(j).unwrap().failed, 1);
        // Retry of the failed tasks: fresh attempts, blocklist cleared.
        assert_eq!(f.retry(j, false).unwrap(), 1);
        let a = f.assign(10);
        assert_eq!(a.len(), 1, "both nodes may run it again; one takes it");
        assert_eq!(a[0].attempt, 1);
        assert!(f.blocklisted(j).is_empty());
    }

    #[test]
    fn blocklisting_the_last_node_that_may_run_a_job_fails_it_rather_than_wait() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 3)).unwrap();
        seen(&mut f, 0, "only");
        for i in 0..BLOCKLIST_AFTER as u64 {
            assert_eq!(f.state(j).unwrap(), JobState::Active);
            let a = f.assign_node(1 + i, "only").unwrap();
            f.finished(1 + i, "only", a.lease, Err(format!("Error {i}")))
                .unwrap();
        }
        // No task reached 3 attempts, but nothing could ever run them: the job fails, each
        // task saying why; the one that failed last keeps its own error.
        assert_eq!(f.state(j).unwrap(), JobState::Failed);
        let p = f.progress(j).unwrap();
        assert_eq!((p.failed, p.waiting), (4, 0));
        let errors: Vec<String> = (0..3)
            .filter_map(|ti| {
                match f.task_state(TaskRef {
                    job: j,
                    step: 0,
                    task: ti,
                }) {
                    Some(TaskState::Failed(e)) => Some(e.clone()),
                    _ => None,
                }
            })
            .collect();
        assert!(errors.contains(&"Error 2".to_string()), "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("blocklisted")),
            "{errors:?}"
        );
        // Retry clears the blocklist and runs them again.
        assert_eq!(f.retry(j, false).unwrap(), 4);
        assert!(f.assign_node(10, "only").is_some());
    }

    #[test]
    fn lost_nodes_give_their_task_back_without_an_attempt() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 1)).unwrap();
        seen(&mut f, 0, "n1");
        let a = f.assign(1);
        assert_eq!(f.tick(NODE_TIMEOUT - 1), Vec::<String>::new());
        assert_eq!(f.tick(NODE_TIMEOUT), vec!["n1".to_string()]);
        assert_eq!(f.task_state(a[0].lease.task), Some(&TaskState::Waiting));
        assert!(f
            .why(j)
            .unwrap()
            .iter()
            .any(|w| w.contains("no render node")));
        // A late report from the lost node is refused ...
        assert!(matches!(
            f.finished(NODE_TIMEOUT + 1, "n1", a[0].lease, Ok(())),
            Err(FarmError::NotHeld(..))
        ));
        // ... and when it comes back still running it, it is told to stop.
        assert_eq!(
            f.node_seen(NODE_TIMEOUT + 2, "n1", tags(&[]), Some(a[0].lease), &[])
                .stop,
            vec![a[0].lease]
        );
        seen(&mut f, NODE_TIMEOUT + 2, "n2");
        let b = f.assign(NODE_TIMEOUT + 3);
        assert_eq!(b[0].attempt, 1, "a lost node is not a failure");
        assert_eq!(b[0].lease.serial, 2, "but a new lease");
    }

    #[test]
    fn a_report_for_an_earlier_attempt_is_refused() {
        let mut f = Farm::new();
        f.submit(0, job("j", 50, &[], 1)).unwrap();
        seen(&mut f, 0, "n1");
        let first = f.assign(1)[0].lease;
        // The node restarts and says it runs nothing: the task waits again, and goes back
        // to the same node as a new attempt.
        assert_eq!(f.node_seen(2, "n1", tags(&[]), None, &[]).freed, 1);
        let second = f.assign(3)[0].lease;
        assert_eq!(second.task, first.task);
        assert!(matches!(
            f.finished(4, "n1", first, Ok(())),
            Err(FarmError::NotHeld(..))
        ));
        f.finished(5, "n1", second, Ok(())).unwrap();
        assert!(
            f.finished(6, "n1", second, Ok(())).is_err(),
            "a task completes once"
        );
    }

    #[test]
    fn pause_resume_cancel() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 3)).unwrap();
        seen(&mut f, 0, "n1");
        let a = f.assign(1);
        f.pause(j).unwrap();
        f.finished(2, "n1", a[0].lease, Ok(())).unwrap();
        assert!(f.assign(3).is_empty());
        assert_eq!(f.state(j).unwrap(), JobState::Paused);
        assert!(f.why(j).unwrap().iter().any(|w| w.contains("paused")));
        f.resume(j).unwrap();
        let a = f.assign(4);
        assert_eq!(a.len(), 1);
        let running = f.cancel(j).unwrap();
        assert_eq!(running, a, "the running task is returned to be stopped");
        // The node's next heartbeat is told to stop it.
        assert_eq!(
            f.node_seen(5, "n1", tags(&[]), Some(a[0].lease), &[]).stop,
            vec![a[0].lease]
        );
        f.finished(5, "n1", a[0].lease, Err("killed".into()))
            .unwrap();
        assert_eq!(f.state(j).unwrap(), JobState::Canceled);
        let p = f.progress(j).unwrap();
        assert_eq!((p.done, p.canceled), (1, 3));
        assert!(f.assign(6).is_empty());
        assert_eq!(
            f.retry(j, false).unwrap(),
            3,
            "canceled tasks run again on retry"
        );
        assert_eq!(f.retry(j, true).unwrap(), 1, "with --all the done one too");
    }

    #[test]
    fn bad_jobs_are_refused() {
        let mut f = Farm::new();
        let mut bad = job("j", 50, &[], 1);
        bad.steps[1].1 = vec!["Nope".into()];
        assert!(matches!(
            f.submit(0, bad),
            Err(FarmError::BadDependency { .. })
        ));
        assert!(matches!(
            f.submit(0, job("j", 101, &[], 1)),
            Err(FarmError::BadPriority(101))
        ));
        let mut empty = job("j", 50, &[], 0);
        empty.steps.truncate(1);
        assert!(matches!(f.submit(0, empty), Err(FarmError::Empty)));
        assert!(matches!(f.pause(9), Err(FarmError::NoJob(9))));
    }

    /// Rebuilds a farm from what `take_changes` named, as the store would.
    fn persist(f: &mut Farm, rows: &mut BTreeMap<JobId, (JobMeta, Vec<Vec<TaskRecord>>)>) {
        let c = f.take_changes();
        for j in c.jobs {
            let meta = f.job_meta(j).unwrap().clone();
            let e = rows.entry(j).or_insert_with(|| {
                let tasks = meta
                    .steps
                    .iter()
                    .map(|s| vec![TaskRecord::default(); s.tasks])
                    .collect();
                (meta.clone(), tasks)
            });
            e.0 = meta;
        }
        for t in c.tasks {
            rows.get_mut(&t.job).unwrap().1[t.step][t.task] = f.task(t).unwrap().clone();
        }
    }

    #[test]
    fn a_restored_farm_goes_on_where_the_changes_left_it() {
        let mut f = Farm::new();
        let mut rows = BTreeMap::new();
        let j = f.submit(0, job("j", 50, &[], 3)).unwrap();
        seen(&mut f, 0, "n1");
        seen(&mut f, 0, "n2");
        let a = f.assign(1);
        f.finished(2, "n1", a[0].lease, Ok(())).unwrap();
        f.pause(j).unwrap();
        persist(&mut f, &mut rows);
        assert!(f.take_changes().is_empty());

        // The appliance restarts: n2 still runs its task and reports it within the lease.
        let mut g = Farm::restore(
            100,
            rows.iter().map(|(id, (m, t))| (*id, m.clone(), t.clone())),
        );
        assert_eq!(g.progress(j).unwrap(), f.progress(j).unwrap());
        assert_eq!(g.state(j).unwrap(), JobState::Paused);
        assert!(g
            .node_seen(101, "n2", tags(&[]), Some(a[1].lease), &[])
            .stop
            .is_empty());
        g.finished(102, "n2", a[1].lease, Ok(())).unwrap();
        assert_eq!(g.progress(j).unwrap().done, 2);
        g.resume(j).unwrap();
        let b = g.assign(103);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].lease.task.task, 2);
        // A new job after the restart gets a new id.
        assert!(g.submit(104, job("k", 50, &[], 1)).unwrap() > j);

        // A restart where the node never comes back: the lease expires.
        let mut h = Farm::restore(
            200,
            rows.iter().map(|(id, (m, t))| (*id, m.clone(), t.clone())),
        );
        h.tick(200 + NODE_TIMEOUT);
        assert_eq!(h.task_state(a[1].lease.task), Some(&TaskState::Waiting));
    }

    #[test]
    fn scheduling_cost_per_task_does_not_grow_with_the_queue() {
        let mut f = Farm::new();
        let j = f
            .submit(
                0,
                JobRequest {
                    name: "noop".into(),
                    priority: 50,
                    tags: BTreeSet::new(),
                    steps: vec![("Run".into(), vec![], 10_000)],
                },
            )
            .unwrap();
        // Other jobs' tasks in the queue too.
        for i in 0..20 {
            f.submit(1 + i, job("other", 10, &[], 100)).unwrap();
        }
        seen(&mut f, 0, "n1");
        let mut cost = Vec::new();
        for i in 0..10_000u64 {
            let before = f.examined();
            let a = f.assign(100 + i);
            cost.push(f.examined() - before);
            f.finished(100 + i, "n1", a[0].lease, Ok(())).unwrap();
        }
        assert_eq!(f.progress(j).unwrap().done, 10_000);
        let first: u64 = cost[..100].iter().sum();
        let last: u64 = cost[9_900..].iter().sum();
        assert_eq!(
            first, last,
            "the same work for the first and the last tasks"
        );
        assert!(first <= 100 * 4, "a handful of steps per task: {first}");
    }

    #[test]
    fn only_jobs_that_may_start_a_task_are_looked_at() {
        let mut f = Farm::new();
        seen(&mut f, 0, "n1");
        let runnable = |f: &Farm| f.runnable.iter().map(|k| k.2).collect::<Vec<_>>();
        // A long history of ended jobs...
        for i in 0..1_000 {
            let j = f.submit(i, job("old", 50, &[], 1)).unwrap();
            while f.state(j).unwrap() != JobState::Done {
                let a = f.assign(i);
                f.finished(i, "n1", a[0].lease, Ok(())).unwrap();
            }
        }
        assert!(runnable(&f).is_empty(), "ended jobs are not looked at");
        // ...and the life of a new job, in the served order.
        let low = f.submit(2_000, job("low", 10, &[], 1)).unwrap();
        let high = f.submit(2_001, job("high", 90, &[], 1)).unwrap();
        assert_eq!(runnable(&f), [high, low]);
        f.pause(high).unwrap();
        assert_eq!(runnable(&f), [low]);
        f.resume(high).unwrap();
        f.cancel(low).unwrap();
        assert_eq!(runnable(&f), [high]);
        f.retry(low, false).unwrap();
        assert_eq!(runnable(&f), [high, low]);
        let a = f.assign(2_002);
        assert_eq!(a[0].lease.task.job, high);
        f.finished(2_003, "n1", a[0].lease, Err("boom".into()))
            .unwrap();
        assert_eq!(runnable(&f), [high, low], "a failed task waits again");
        // What restore rebuilds is the same.
        let rows: Vec<_> = f
            .job_ids()
            .map(|id| {
                let meta = f.job_meta(id).unwrap().clone();
                let tasks = (0..meta.steps.len())
                    .map(|si| {
                        (0..meta.steps[si].tasks)
                            .map(|ti| {
                                f.task(TaskRef {
                                    job: id,
                                    step: si,
                                    task: ti,
                                })
                                .unwrap()
                                .clone()
                            })
                            .collect()
                    })
                    .collect();
                (id, meta, tasks)
            })
            .collect();
        assert_eq!(runnable(&Farm::restore(3_000, rows)), [high, low]);
    }
}
