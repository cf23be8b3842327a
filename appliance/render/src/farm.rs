//! The farm's scheduling, sans-IO: jobs of steps of tasks, render nodes with tags, and the
//! decisions — which task runs on which node, retries, blocklists, dependencies, and why a
//! task waits. Time is passed in (milliseconds); the appliance drives it and does the I/O.
//!
//! Order: among jobs with a runnable task, the highest priority first, then the oldest. A task
//! is runnable when its job is neither paused nor ended, every step its step depends on is
//! done, and a free node carries all the job's tags and is not blocklisted for the job. A
//! failed task is retried up to [`MAX_ATTEMPTS`] times; a node that failed
//! [`BLOCKLIST_AFTER`] tasks of a job gets no more of them. A node silent for
//! [`NODE_TIMEOUT`] is lost: its task goes back to waiting (not counted as an attempt).

use std::collections::{BTreeMap, BTreeSet};

/// Milliseconds (the appliance's clock).
pub type Millis = u64;

/// Attempts per task before it fails for good.
pub const MAX_ATTEMPTS: u32 = 3;
/// Failures of one job's tasks on one node before the node is blocklisted for the job.
pub const BLOCKLIST_AFTER: u32 = 2;
/// Silence after which a node is lost.
pub const NODE_TIMEOUT: Millis = 30_000;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Not started (or to be run again).
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

#[derive(Debug, Clone)]
struct Task {
    state: TaskState,
    attempts: u32,
}

#[derive(Debug, Clone)]
struct Step {
    name: String,
    depends_on: Vec<usize>,
    tasks: Vec<Task>,
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

#[derive(Debug, Clone)]
struct Job {
    name: String,
    priority: u8,
    tags: BTreeSet<String>,
    submitted: Millis,
    paused: bool,
    canceled: bool,
    steps: Vec<Step>,
    /// Failures per node.
    failures: BTreeMap<String, u32>,
}

#[derive(Debug, Clone)]
struct Node {
    tags: BTreeSet<String>,
    last_seen: Millis,
    running: Option<TaskRef>,
}

/// A task's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskRef {
    /// The job.
    pub job: JobId,
    /// Step index.
    pub step: usize,
    /// Task index within the step.
    pub task: usize,
}

/// Work handed to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The node.
    pub node: String,
    /// The task.
    pub task: TaskRef,
    /// Which attempt this is (1 first).
    pub attempt: u32,
}

/// A job's counts.
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
    /// A report for a task that is not running on that node (late, or from a lost node).
    #[error("task {0:?} is not running on node {1}")]
    NotRunning(TaskRef, String),
    /// Priority over 100.
    #[error("priority {0} is outside 0..=100")]
    BadPriority(u8),
}

/// The farm.
#[derive(Debug, Default)]
pub struct Farm {
    jobs: BTreeMap<JobId, Job>,
    nodes: BTreeMap<String, Node>,
    next_job: JobId,
}

impl Farm {
    /// An empty farm.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a job.
    pub fn submit(&mut self, now: Millis, req: JobRequest) -> Result<JobId, FarmError> {
        if req.priority > 100 {
            return Err(FarmError::BadPriority(req.priority));
        }
        let mut steps: Vec<Step> = Vec::new();
        for (name, deps, count) in &req.steps {
            let depends_on = deps
                .iter()
                .map(|d| {
                    steps.iter().position(|s| s.name == *d).ok_or_else(|| {
                        FarmError::BadDependency {
                            step: name.clone(),
                            on: d.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            steps.push(Step {
                name: name.clone(),
                depends_on,
                tasks: vec![
                    Task {
                        state: TaskState::Waiting,
                        attempts: 0,
                    };
                    *count
                ],
            });
        }
        self.next_job += 1;
        let id = self.next_job;
        self.jobs.insert(
            id,
            Job {
                name: req.name,
                priority: req.priority,
                tags: req.tags,
                submitted: now,
                paused: false,
                canceled: false,
                steps,
                failures: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// A node joins (or comes back) with its tags.
    pub fn node_seen(&mut self, now: Millis, id: &str, tags: BTreeSet<String>) {
        let n = self.nodes.entry(id.to_owned()).or_insert(Node {
            tags: BTreeSet::new(),
            last_seen: now,
            running: None,
        });
        n.tags = tags;
        n.last_seen = now;
    }

    /// Nodes silent for [`NODE_TIMEOUT`] are lost; their tasks wait again. Returns them.
    pub fn tick(&mut self, now: Millis) -> Vec<String> {
        let lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.saturating_sub(n.last_seen) >= NODE_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            if let Some(n) = self.nodes.remove(id) {
                if let Some(t) = n.running {
                    if let Some(task) = self.task_mut(t) {
                        task.state = TaskState::Waiting;
                        // The node vanished; the task did not fail.
                        task.attempts = task.attempts.saturating_sub(1);
                    }
                }
            }
        }
        lost
    }

    fn task_mut(&mut self, t: TaskRef) -> Option<&mut Task> {
        self.jobs
            .get_mut(&t.job)?
            .steps
            .get_mut(t.step)?
            .tasks
            .get_mut(t.task)
    }

    fn step_done(job: &Job, step: usize) -> bool {
        job.steps[step]
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Done)
    }

    /// Whether `step` can never run: a step it depends on (directly or not) has failed tasks.
    fn doomed(job: &Job, step: usize) -> bool {
        job.steps[step].depends_on.iter().any(|d| {
            job.steps[*d]
                .tasks
                .iter()
                .any(|t| matches!(t.state, TaskState::Failed(_)))
                || Self::doomed(job, *d)
        })
    }

    fn node_may_run(job: &Job, id: &str, node: &Node) -> bool {
        job.tags.is_subset(&node.tags)
            && job.failures.get(id).copied().unwrap_or(0) < BLOCKLIST_AFTER
    }

    /// The next waiting task of `job` whose step's dependencies are done.
    fn ready_task(job: &Job, job_id: JobId) -> Option<TaskRef> {
        if job.paused || job.canceled {
            return None;
        }
        job.steps.iter().enumerate().find_map(|(si, s)| {
            if !s.depends_on.iter().all(|d| Self::step_done(job, *d)) {
                return None;
            }
            s.tasks
                .iter()
                .position(|t| t.state == TaskState::Waiting)
                .map(|ti| TaskRef {
                    job: job_id,
                    step: si,
                    task: ti,
                })
        })
    }

    /// Hands waiting tasks to free nodes; the caller sends each to its node.
    pub fn assign(&mut self, now: Millis) -> Vec<Assignment> {
        let mut order: Vec<(u8, Millis, JobId)> = self
            .jobs
            .iter()
            .map(|(id, j)| (j.priority, j.submitted, *id))
            .collect();
        // Highest priority, then oldest.
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let free: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.running.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for node_id in free {
            let pick = order.iter().find_map(|(_, _, jid)| {
                let job = &self.jobs[jid];
                let node = &self.nodes[&node_id];
                if !Self::node_may_run(job, &node_id, node) {
                    return None;
                }
                Self::ready_task(job, *jid)
            });
            let Some(t) = pick else { continue };
            let Some(task) = self.task_mut(t) else {
                continue;
            };
            task.attempts += 1;
            task.state = TaskState::Running {
                node: node_id.clone(),
                since: now,
            };
            let attempt = task.attempts;
            if let Some(n) = self.nodes.get_mut(&node_id) {
                n.running = Some(t);
            }
            out.push(Assignment {
                node: node_id,
                task: t,
                attempt,
            });
        }
        out
    }

    /// A node reports a task's end: `Ok` when done, `Err` with the failure.
    pub fn finished(
        &mut self,
        now: Millis,
        node_id: &str,
        t: TaskRef,
        outcome: Result<(), String>,
    ) -> Result<(), FarmError> {
        let running_here = self.nodes.get(node_id).and_then(|n| n.running) == Some(t);
        if !running_here {
            return Err(FarmError::NotRunning(t, node_id.to_owned()));
        }
        if let Some(n) = self.nodes.get_mut(node_id) {
            n.running = None;
            n.last_seen = now;
        }
        let canceled = self.jobs.get(&t.job).is_some_and(|j| j.canceled);
        let job = self.jobs.get_mut(&t.job).ok_or(FarmError::NoJob(t.job))?;
        let task = &mut job.steps[t.step].tasks[t.task];
        match outcome {
            Ok(()) => task.state = TaskState::Done,
            Err(_) if canceled => task.state = TaskState::Canceled,
            Err(e) => {
                task.state = if task.attempts >= MAX_ATTEMPTS {
                    TaskState::Failed(e)
                } else {
                    TaskState::Waiting
                };
                *job.failures.entry(node_id.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job, FarmError> {
        self.jobs.get_mut(&id).ok_or(FarmError::NoJob(id))
    }

    /// Holds a job: running tasks finish, no new ones start.
    pub fn pause(&mut self, id: JobId) -> Result<(), FarmError> {
        self.job_mut(id)?.paused = true;
        Ok(())
    }

    /// Lets a paused job run again.
    pub fn resume(&mut self, id: JobId) -> Result<(), FarmError> {
        self.job_mut(id)?.paused = false;
        Ok(())
    }

    /// Cancels a job: waiting tasks are canceled; returns the running ones to stop.
    pub fn cancel(&mut self, id: JobId) -> Result<Vec<Assignment>, FarmError> {
        let job = self.job_mut(id)?;
        job.canceled = true;
        let mut running = Vec::new();
        for (si, s) in job.steps.iter_mut().enumerate() {
            for (ti, t) in s.tasks.iter_mut().enumerate() {
                match &t.state {
                    TaskState::Waiting => t.state = TaskState::Canceled,
                    TaskState::Running { node, .. } => running.push(Assignment {
                        node: node.clone(),
                        task: TaskRef {
                            job: id,
                            step: si,
                            task: ti,
                        },
                        attempt: t.attempts,
                    }),
                    _ => {}
                }
            }
        }
        Ok(running)
    }

    /// Runs failed (or, with `all`, also done and canceled) tasks again, with fresh attempts
    /// and blocklist.
    pub fn retry(&mut self, id: JobId, all: bool) -> Result<usize, FarmError> {
        let job = self.job_mut(id)?;
        job.canceled = false;
        job.failures.clear();
        let mut n = 0;
        for t in job.steps.iter_mut().flat_map(|s| s.tasks.iter_mut()) {
            let again = match t.state {
                TaskState::Failed(_) | TaskState::Canceled => true,
                TaskState::Done => all,
                _ => false,
            };
            if again {
                t.state = TaskState::Waiting;
                t.attempts = 0;
                n += 1;
            }
        }
        Ok(n)
    }

    /// A job's counts.
    pub fn progress(&self, id: JobId) -> Result<Progress, FarmError> {
        let job = self.jobs.get(&id).ok_or(FarmError::NoJob(id))?;
        let mut p = Progress::default();
        for t in job.steps.iter().flat_map(|s| &s.tasks) {
            p.total += 1;
            match t.state {
                TaskState::Waiting => p.waiting += 1,
                TaskState::Running { .. } => p.running += 1,
                TaskState::Done => p.done += 1,
                TaskState::Failed(_) => p.failed += 1,
                TaskState::Canceled => p.canceled += 1,
            }
        }
        Ok(p)
    }

    /// A job's state.
    pub fn state(&self, id: JobId) -> Result<JobState, FarmError> {
        let job = self.jobs.get(&id).ok_or(FarmError::NoJob(id))?;
        let p = self.progress(id)?;
        // Failed once nothing runs and nothing left can: what waits depends on failed tasks.
        let stuck = job.steps.iter().enumerate().all(|(si, s)| {
            !s.tasks.iter().any(|t| t.state == TaskState::Waiting) || Self::doomed(job, si)
        });
        Ok(if job.canceled && p.running == 0 {
            JobState::Canceled
        } else if p.running == 0 && p.failed > 0 && stuck {
            JobState::Failed
        } else if p.done == p.total {
            JobState::Done
        } else if job.paused {
            JobState::Paused
        } else {
            JobState::Active
        })
    }

    /// A task's state.
    pub fn task_state(&self, t: TaskRef) -> Option<&TaskState> {
        Some(
            &self
                .jobs
                .get(&t.job)?
                .steps
                .get(t.step)?
                .tasks
                .get(t.task)?
                .state,
        )
    }

    /// Why a job's waiting tasks wait, one reason per line (empty when nothing waits).
    pub fn why(&self, id: JobId) -> Result<Vec<String>, FarmError> {
        let job = self.jobs.get(&id).ok_or(FarmError::NoJob(id))?;
        let mut why = Vec::new();
        let waiting = |s: &Step| s.tasks.iter().any(|t| t.state == TaskState::Waiting);
        if !job.steps.iter().any(waiting) {
            return Ok(why);
        }
        if job.canceled {
            why.push("the job was canceled".into());
        }
        if job.paused {
            why.push("the job is paused (render resume)".into());
        }
        for s in job.steps.iter().filter(|s| waiting(s)) {
            let pending: Vec<&str> = s
                .depends_on
                .iter()
                .filter(|d| !Self::step_done(job, **d))
                .map(|d| job.steps[*d].name.as_str())
                .collect();
            if !pending.is_empty() {
                let si = job.steps.iter().position(|x| x.name == s.name).unwrap_or(0);
                why.push(if Self::doomed(job, si) {
                    format!(
                        "step '{}' waits for step(s) {}, which have failed tasks (render retry --failed)",
                        s.name,
                        pending.join(", ")
                    )
                } else {
                    format!(
                        "step '{}' waits for step(s) {} to finish",
                        s.name,
                        pending.join(", ")
                    )
                });
            }
        }
        let tagged: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, n)| job.tags.is_subset(&n.tags))
            .map(|(id, _)| id)
            .collect();
        if self.nodes.is_empty() {
            why.push("no render node is connected".into());
        } else if tagged.is_empty() {
            let tags: Vec<&str> = job.tags.iter().map(String::as_str).collect();
            why.push(format!("no node has the tags {}", tags.join(", ")));
        } else {
            let allowed: Vec<&&String> = tagged
                .iter()
                .filter(|id| job.failures.get(**id).copied().unwrap_or(0) < BLOCKLIST_AFTER)
                .collect();
            if allowed.is_empty() {
                why.push(format!(
                    "every node with the tags is blocklisted for this job after {BLOCKLIST_AFTER} failures ({}); render retry clears it",
                    tagged.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            } else if allowed.iter().all(|id| self.nodes[**id].running.is_some()) {
                why.push(format!(
                    "all {} suitable node(s) are busy (jobs of higher priority or submitted earlier first)",
                    allowed.len()
                ));
            }
        }
        Ok(why)
    }

    /// The job's name.
    pub fn name(&self, id: JobId) -> Option<&str> {
        self.jobs.get(&id).map(|j| j.name.as_str())
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

    #[test]
    fn steps_run_after_their_dependencies() {
        let mut f = Farm::new();
        let j = f.submit(0, job("a", 50, &[], 2)).unwrap();
        f.node_seen(0, "n1", tags(&[]));
        f.node_seen(0, "n2", tags(&[]));
        f.node_seen(0, "n3", tags(&[]));
        let a = f.assign(1);
        assert_eq!(a.len(), 2, "two render tasks; assembly waits");
        assert!(a.iter().all(|x| x.task.step == 0));
        assert!(f.why(j).unwrap()[0].contains("waits for step(s) Render"));
        f.finished(2, &a[0].node, a[0].task, Ok(())).unwrap();
        assert!(f.assign(3).is_empty(), "one render task still runs");
        f.finished(4, &a[1].node, a[1].task, Ok(())).unwrap();
        let b = f.assign(5);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].task.step, 1);
        f.finished(6, &b[0].node, b[0].task, Ok(())).unwrap();
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
        f.node_seen(0, "cpu", tags(&["linux"]));
        let a = f.assign(5);
        assert_eq!(
            a[0].task.job, old,
            "the gpu job cannot run here; the older of two 60s first"
        );
        assert!(f
            .why(gpu)
            .unwrap()
            .iter()
            .any(|w| w.contains("no node has the tags gpu")));
        assert!(f.why(new).unwrap().iter().any(|w| w.contains("busy")));
        assert!(f.why(low).unwrap().iter().any(|w| w.contains("busy")));
        f.node_seen(5, "big", tags(&["gpu", "linux"]));
        let b = f.assign(6);
        assert_eq!(b[0].task.job, gpu);
    }

    #[test]
    fn failures_retry_then_fail_and_blocklist_the_node() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 1)).unwrap();
        f.node_seen(0, "bad", tags(&[]));
        let a = f.assign(1);
        f.finished(2, "bad", a[0].task, Err("Unable to open scene".into()))
            .unwrap();
        let a = f.assign(3);
        assert_eq!(a[0].attempt, 2);
        f.finished(4, "bad", a[0].task, Err("Unable to open scene".into()))
            .unwrap();
        // Two failures here: this node gets no more of this job.
        assert!(f.assign(5).is_empty());
        assert!(f.why(j).unwrap().iter().any(|w| w.contains("blocklisted")));
        f.node_seen(5, "good", tags(&[]));
        let a = f.assign(6);
        assert_eq!((a[0].node.as_str(), a[0].attempt), ("good", 3));
        f.finished(7, "good", a[0].task, Err("CUDA error".into()))
            .unwrap();
        assert_eq!(
            f.task_state(a[0].task),
            Some(&TaskState::Failed("CUDA error".into()))
        );
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
        let a = f.assign(8);
        assert_eq!(a.len(), 1, "one of the two free nodes takes it");
        assert_eq!(a[0].attempt, 1);
    }

    #[test]
    fn lost_nodes_give_their_task_back_without_an_attempt() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 1)).unwrap();
        f.node_seen(0, "n1", tags(&[]));
        let a = f.assign(1);
        assert_eq!(f.tick(NODE_TIMEOUT - 1), Vec::<String>::new());
        assert_eq!(f.tick(NODE_TIMEOUT), vec!["n1".to_string()]);
        assert_eq!(f.task_state(a[0].task), Some(&TaskState::Waiting));
        assert!(f
            .why(j)
            .unwrap()
            .iter()
            .any(|w| w.contains("no render node")));
        // A late report from the lost node is refused.
        assert!(matches!(
            f.finished(NODE_TIMEOUT + 1, "n1", a[0].task, Ok(())),
            Err(FarmError::NotRunning(..))
        ));
        f.node_seen(NODE_TIMEOUT + 2, "n2", tags(&[]));
        assert_eq!(f.assign(NODE_TIMEOUT + 3)[0].attempt, 1);
    }

    #[test]
    fn pause_resume_cancel() {
        let mut f = Farm::new();
        let j = f.submit(0, job("j", 50, &[], 3)).unwrap();
        f.node_seen(0, "n1", tags(&[]));
        let a = f.assign(1);
        f.pause(j).unwrap();
        f.finished(2, "n1", a[0].task, Ok(())).unwrap();
        assert!(f.assign(3).is_empty());
        assert_eq!(f.state(j).unwrap(), JobState::Paused);
        assert!(f.why(j).unwrap().iter().any(|w| w.contains("paused")));
        f.resume(j).unwrap();
        let a = f.assign(4);
        assert_eq!(a.len(), 1);
        let running = f.cancel(j).unwrap();
        assert_eq!(running, a, "the running task is returned to be stopped");
        f.finished(5, "n1", a[0].task, Err("killed".into()))
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
        assert!(matches!(f.pause(9), Err(FarmError::NoJob(9))));
    }
}
