//! The render farm inside the appliance: the sans-IO [`Farm`] driven with the appliance's
//! clock, its decisions written to the store before anyone hears of them, files by content
//! in [`blobs::Blobs`], and finished outputs placed in each job's output directory.
//!
//! Nodes pull: [`RenderFarm::node_work`] is a node's heartbeat, carries its reports, and
//! hands it tasks; when the node is idle and none fits, it holds the call until one does (or
//! `wait_ms` pass). Anything that can free work (a submit, a resume or retry, a finished
//! task, a lost node) wakes the waiting nodes.
//!
//! Time is Unix milliseconds, so stored leases and submission times mean the same after a
//! restart; [`RenderFarm::open`] rebuilds the farm from the store, and tasks that were running
//! keep their lease for the lease timeout (`[render] lease_timeout_secs`) so their nodes can
//! report them.

pub mod blobs;
pub mod local;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use periphery_protocol::render::{
    valid_job_path, FileRef, JobAction, JobDetail, JobSubmission, NodeCaps, NodeWork,
    TaskAssignment, TaskDone, TemplateSource, WireLease, WorkReply,
};
use periphery_protocol::{ApiError, ErrorCode};
use periphery_render::builtin;
use periphery_render::farm::{
    Farm, FarmError, JobId, JobRequest, Lease, Millis, TaskRef, TaskState,
};
use periphery_render::template::Template;

use crate::store::{AuditRecord, JobFacts, JobRow, Store, StoreError, TaskFacts, TaskRow};
use blobs::Blobs;

/// Lines of a task's output kept.
const LOG_TAIL: usize = 40;
/// The longest a node's request for work is held.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Unix milliseconds now.
pub fn now_ms() -> Millis {
    crate::clock::unix_ms()
}

/// The appliance's part of a job, as stored, with its tasks' parts step by step.
#[derive(Debug, Clone)]
struct JobExtra {
    facts: JobFacts,
    tasks: Vec<Vec<TaskFacts>>,
}

#[derive(Debug, Default)]
struct Inner {
    farm: Farm,
    jobs: BTreeMap<JobId, JobExtra>,
    /// What each node offers, from its last heartbeat.
    nodes: HashMap<String, NodeCaps>,
    /// What running tasks last said of their progress (`frame 3`); not stored.
    progress: HashMap<TaskRef, String>,
    /// The number of each node's newest call ([`RenderFarm::try_work`]).
    calls: HashMap<String, u64>,
    /// Tasks whose extra fields changed (the farm tracks its own).
    dirty: BTreeSet<TaskRef>,
    audit: Vec<AuditRecord>,
}

impl Inner {
    /// A task for node `id` to start (it is idle), or with `queue` to go on to after the one
    /// it runs: leased, with its inputs (the job's files and the outputs of the steps it
    /// waits for).
    fn assign_to(
        &mut self,
        now: Millis,
        id: &str,
        queue: bool,
    ) -> Result<Option<TaskAssignment>, ApiError> {
        let a = if queue {
            self.farm.queue_node(now, id)
        } else {
            self.farm.assign_node(now, id)
        };
        let Some(a) = a else {
            return Ok(None);
        };
        if queue {
            tracing::debug!(node = %id, job = a.lease.task.job, task = a.lease.task.task, "task queued behind the node's current one");
        }
        let t = a.lease.task;
        // Borrowed apart: the farm's meta and the appliance's extras.
        let Some((meta, job)) = self.farm.job_meta(t.job).zip(self.jobs.get_mut(&t.job)) else {
            return Err(farm_err(FarmError::NoJob(t.job)));
        };
        let mut inputs = job.facts.inputs.clone();
        for d in &meta.steps[t.step].depends_on {
            for x in &job.tasks[*d] {
                inputs.extend(x.outputs.iter().cloned());
            }
        }
        let x = &mut job.tasks[t.step][t.task];
        x.node = Some(id.to_owned());
        x.log_tail.clear();
        self.progress.remove(&t);
        self.dirty.insert(t);
        tracing::debug!(job = t.job, step = t.step, task = t.task, node = %id, attempt = a.attempt, "task assigned");
        Ok(Some(TaskAssignment {
            lease: wire(a.lease),
            job_name: meta.name.clone(),
            step: meta.steps[t.step].name.clone(),
            argv: x.argv.clone(),
            inputs,
            attempt: a.attempt,
        }))
    }
}

/// The appliance's render farm.
#[derive(Debug)]
pub struct RenderFarm {
    inner: Mutex<Inner>,
    store: Arc<Store>,
    /// Files by content.
    pub blobs: Blobs,
    jobs_dir: PathBuf,
    work: tokio::sync::Notify,
    /// Something about a job changed (watchers look).
    changed: tokio::sync::Notify,
    /// Whether the appliance's own node runs, or why not.
    pub local_node: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, msg)
}

fn farm_err(e: FarmError) -> ApiError {
    match e {
        FarmError::NoJob(j) => ApiError::new(ErrorCode::NotFound, format!("no render job {j}")),
        FarmError::NotHeld(..) => ApiError::new(ErrorCode::OutOfOrder, e.to_string()),
        other => invalid(other.to_string()),
    }
}

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "render farm: the store failed");
    ApiError::new(ErrorCode::Internal, format!("internal error: {e}"))
}

fn wire(l: Lease) -> WireLease {
    WireLease {
        job: l.task.job,
        step: l.task.step as u32,
        task: l.task.task as u32,
        serial: l.serial,
    }
}

fn unwire(l: WireLease) -> Lease {
    Lease {
        task: TaskRef {
            job: l.job,
            step: l.step as usize,
            task: l.task as usize,
        },
        serial: l.serial,
    }
}

impl RenderFarm {
    /// The farm as the store left it; files under `state_dir/blobs`, outputs under
    /// `state_dir/render/jobs/<id>`.
    pub fn open(
        store: Arc<Store>,
        state_dir: &std::path::Path,
        lease_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let stored = store.render_jobs()?;
        let mut jobs = BTreeMap::new();
        let mut rows = Vec::new();
        for (id, row, tasks) in stored {
            let (facts, recs): (Vec<Vec<TaskFacts>>, Vec<Vec<_>>) = tasks
                .into_iter()
                .map(|step| step.into_iter().map(|t| (t.facts, t.rec)).unzip())
                .unzip();
            jobs.insert(
                id,
                JobExtra {
                    facts: row.facts,
                    tasks: facts,
                },
            );
            rows.push((id, row.meta, recs));
        }
        let farm =
            Farm::restore(now_ms(), rows).with_node_timeout(lease_timeout.as_millis() as Millis);
        if !jobs.is_empty() {
            tracing::info!(jobs = jobs.len(), "render farm restored");
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                farm,
                jobs,
                ..Default::default()
            }),
            store,
            blobs: Blobs::new(state_dir.join("blobs")),
            jobs_dir: state_dir.join("render").join("jobs"),
            work: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
            local_node: Mutex::new("starting".into()),
        })
    }

    /// Writes what changed in `inner` to the store (one transaction).
    fn commit(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let changes = inner.farm.take_changes();
        let mut job_rows = Vec::new();
        for id in &changes.jobs {
            if let (Some(meta), Some(x)) = (inner.farm.job_meta(*id), inner.jobs.get(id)) {
                job_rows.push((
                    *id,
                    JobRow {
                        meta: meta.clone(),
                        facts: x.facts.clone(),
                    },
                ));
            }
        }
        let mut dirty = std::mem::take(&mut inner.dirty);
        dirty.extend(changes.tasks);
        let mut task_rows = Vec::with_capacity(dirty.len());
        for t in dirty {
            let (Some(rec), Some(x)) = (
                inner.farm.task(t),
                inner
                    .jobs
                    .get(&t.job)
                    .and_then(|j| j.tasks.get(t.step)?.get(t.task)),
            ) else {
                continue;
            };
            task_rows.push((
                (t.job, t.step as u32, t.task as u32),
                TaskRow {
                    rec: rec.clone(),
                    facts: x.clone(),
                },
            ));
        }
        let audit = std::mem::take(&mut inner.audit);
        if self.store.write_render(&job_rows, &task_rows, &audit)? {
            self.changed.notify_waiters();
        }
        Ok(())
    }

    /// Runs `f` on the farm and commits what it changed before returning its outcome.
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut inner = lock(&self.inner);
        let out = f(&mut inner);
        self.commit(&mut inner).map_err(store_err)?;
        out
    }

    /// Each job's output directory, with the job and its owner (the trees persisted).
    pub fn output_dirs(&self) -> Vec<(JobId, String, PathBuf)> {
        lock(&self.inner)
            .jobs
            .iter()
            .map(|(id, j)| {
                (
                    *id,
                    j.facts.user.clone(),
                    self.jobs_dir.join(id.to_string()),
                )
            })
            .collect()
    }

    /// The owner of a job.
    pub fn owner(&self, job: JobId) -> Option<String> {
        lock(&self.inner)
            .jobs
            .get(&job)
            .map(|j| j.facts.user.clone())
    }

    /// Queues a job for `user`.
    pub fn submit(
        &self,
        user: &str,
        actor: String,
        sub: JobSubmission,
    ) -> Result<JobDetail, ApiError> {
        let (doc, builtin_name) = match &sub.template {
            TemplateSource::Builtin(name) => (
                builtin::by_name(name).ok_or_else(|| {
                    invalid(format!(
                        "no built-in template '{name}'; there are {}",
                        builtin::names()
                    ))
                })?,
                Some(name.as_str()),
            ),
            TemplateSource::Document(d) => (d.as_str(), None),
        };
        let template = Template::parse(doc).map_err(|e| invalid(e.to_string()))?;
        let spec = template
            .instantiate(&sub.params, "/")
            .map_err(|e| invalid(e.to_string()))?;
        if sub.priority > 100 {
            return Err(invalid(format!(
                "priority {} is outside 0..=100",
                sub.priority
            )));
        }
        let mut seen = BTreeSet::new();
        for f in &sub.inputs {
            if !valid_job_path(&f.path) {
                return Err(invalid(format!(
                    "input path '{}' is not a relative path inside the job",
                    f.path
                )));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(invalid(format!("input '{}' is named twice", f.path)));
            }
            if self.blobs.size(&f.hash) != Some(f.size) {
                return Err(invalid(format!(
                    "input '{}' ({}) was not uploaded to the appliance",
                    f.path, f.hash
                )));
            }
        }
        if let Some(name) = builtin_name {
            let paths: Vec<&str> = sub.inputs.iter().map(|f| f.path.as_str()).collect();
            builtin::check_inputs(name, &sub.params, &paths).map_err(invalid)?;
        }
        let steps: Vec<(String, Vec<String>, usize)> = spec
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.depends_on.clone(), s.tasks.len()))
            .collect();
        let request = JobRequest {
            name: spec.name.clone(),
            priority: sub.priority,
            tags: sub.tags.iter().cloned().collect(),
            steps,
        };
        let id = self.with(|inner| {
            let now = now_ms();
            let id = inner.farm.submit(now, request).map_err(farm_err)?;
            inner.jobs.insert(
                id,
                JobExtra {
                    facts: JobFacts {
                        user: user.to_owned(),
                        submitted_at: now / 1000,
                        inputs: sub.inputs.clone(),
                    },
                    tasks: spec
                        .steps
                        .iter()
                        .map(|s| {
                            s.tasks
                                .iter()
                                .map(|t| TaskFacts {
                                    params: t
                                        .params
                                        .iter()
                                        .map(|(k, v)| format!("{k}={v}"))
                                        .collect::<Vec<_>>()
                                        .join(" "),
                                    argv: t.argv.clone(),
                                    ..Default::default()
                                })
                                .collect()
                        })
                        .collect(),
                },
            );
            let total: usize = spec.steps.iter().map(|s| s.tasks.len()).sum();
            inner.audit.push(AuditRecord::new(
                actor.clone(),
                "render-submit",
                format!("job {id} '{}' for {user}: {total} tasks", spec.name),
            ));
            Ok(id)
        })?;
        tracing::info!(job = id, %user, name = %spec.name, "render job queued");
        self.work.notify_waiters();
        self.show(id)
    }

    /// Pauses, resumes, cancels or retries a job.
    pub fn control(
        &self,
        id: JobId,
        action: JobAction,
        actor: String,
    ) -> Result<JobDetail, ApiError> {
        self.with(|inner| {
            match action {
                JobAction::Pause => inner.farm.pause(id),
                JobAction::Resume => inner.farm.resume(id),
                JobAction::Cancel => inner.farm.cancel(id).map(|_| ()),
                JobAction::Retry { all } => inner.farm.retry(id, all).map(|_| ()),
            }
            .map_err(farm_err)?;
            inner.audit.push(AuditRecord::new(
                actor,
                "render-control",
                format!("job {id}: {action:?}"),
            ));
            Ok(())
        })?;
        self.work.notify_waiters();
        self.show(id)
    }

    /// Expires the leases of silent nodes; wakes the others when tasks came free.
    pub fn tick(&self) {
        let lost = {
            let mut inner = lock(&self.inner);
            let lost = inner.farm.tick(now_ms());
            if let Err(e) = self.commit(&mut inner) {
                tracing::error!(error = %e, "render farm: cannot record lost nodes");
            }
            lost
        };
        for n in &lost {
            tracing::warn!(node = %n, "render node silent: its lease expired and its task waits again");
        }
        if !lost.is_empty() {
            self.work.notify_waiters();
        }
    }

    /// One call of node `id` without waiting, in one transaction (one durable commit for
    /// however many reports it carries): its reports recorded, its heartbeat, and as many
    /// tasks as it asks for and may have. `call` numbers the node's calls: `None` for a new
    /// one (numbered here); a call held for work that is no longer the node's newest (it
    /// reconnected and called again) does nothing more and answers `None`. Also says whether
    /// tasks came free for other nodes.
    fn try_work(
        &self,
        id: &str,
        w: &NodeWork,
        call: &mut Option<u64>,
    ) -> Result<Option<(WorkReply, bool)>, ApiError> {
        self.with(|inner| {
            let newest = inner.calls.entry(id.to_owned()).or_default();
            match call {
                None => {
                    *newest += 1;
                    *call = Some(*newest);
                }
                Some(c) if *c != *newest => return Ok(None),
                Some(_) => {}
            }
            let now = now_ms();
            let mut reply = WorkReply::default();
            for d in &w.done {
                if let Err(why) = self.record_done(inner, now, id, d) {
                    reply.refused.push((d.lease, why));
                }
            }
            let running = w.running.map(unwire);
            let queued: Vec<Lease> = w.queued.iter().copied().map(unwire).collect();
            let tags = w.caps.tags.iter().cloned().collect();
            let seen = inner.farm.node_seen(now, id, tags, running, &queued);
            reply.stop = seen.stop.into_iter().map(wire).collect();
            inner.nodes.insert(id.to_owned(), w.caps.clone());
            if let Some(l) = running.filter(|l| inner.farm.holds(id, *l)) {
                match &w.progress {
                    Some(p) => inner.progress.insert(l.task, p.clone()),
                    None => inner.progress.remove(&l.task),
                };
                if let Some(x) = inner
                    .jobs
                    .get_mut(&l.task.job)
                    .and_then(|j| j.tasks.get_mut(l.task.step)?.get_mut(l.task.task))
                {
                    for line in &w.log {
                        if x.log_tail.len() == LOG_TAIL {
                            x.log_tail.pop_front();
                        }
                        x.log_tail.push_back(line.chars().take(500).collect());
                    }
                }
            }
            // An idle node gets a task to start; a busy one (or one that just got a task)
            // tasks to queue, while no idle node could take them.
            let mut busy = running.is_some() || !queued.is_empty();
            while reply.tasks.len() < w.want as usize {
                match inner.assign_to(now, id, busy)? {
                    Some(t) => reply.tasks.push(t),
                    None => break,
                }
                busy = true;
            }
            // Finished tasks may free others (the steps that wait for them).
            let freed = seen.freed > 0 || !w.done.is_empty();
            Ok(Some((reply, freed)))
        })
    }

    /// A node's heartbeat, reports and request for work. An idle node that gets no task
    /// waits up to `wait_ms` until one fits it.
    pub async fn node_work(
        self: &Arc<Self>,
        id: String,
        mut w: NodeWork,
    ) -> Result<WorkReply, ApiError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(w.wait_ms.into()).min(MAX_WAIT);
        let idle = w.running.is_none() && w.queued.is_empty();
        let mut call = None;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (me, i) = (self.clone(), id.clone());
            let (back, number, answer) = tokio::task::spawn_blocking(move || {
                let r = me.try_work(&i, &w, &mut call);
                (w, call, r)
            })
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            let Some((reply, freed)) = answer? else {
                return Ok(WorkReply::default());
            };
            (w, call) = (back, number);
            if freed {
                self.work.notify_waiters();
            }
            // Recorded once.
            w.done.clear();
            w.log.clear();
            let nothing = reply == WorkReply::default();
            if !(idle && nothing && w.want > 0) {
                return Ok(reply);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(reply);
            }
        }
    }

    /// Records a task a node reports ended (its outputs stored already); why not, when the
    /// node no longer holds its lease (it expired: the outputs are discarded).
    fn record_done(
        &self,
        inner: &mut Inner,
        now: Millis,
        id: &str,
        done: &TaskDone,
    ) -> Result<(), String> {
        let lease = unwire(done.lease);
        let t = lease.task;
        if !inner.farm.holds(id, lease) {
            let node = inner
                .jobs
                .get(&t.job)
                .and_then(|j| j.tasks.get(t.step)?.get(t.task)?.node.as_deref());
            let recorded = inner
                .farm
                .task(t)
                .is_some_and(|r| r.leases == lease.serial && r.state == TaskState::Done);
            if recorded && node == Some(id) {
                // Sent again after its answer was lost (the link reconnected): recorded
                // the first time.
                return Ok(());
            }
            tracing::info!(job = t.job, step = t.step, task = t.task, node = %id, "late report refused; its outputs are discarded");
            return Err(FarmError::NotHeld(lease, id.to_owned()).to_string());
        }
        let outcome = match &done.outcome {
            Ok(outputs) => self.place_outputs(t.job, outputs).map(|()| outputs.clone()),
            Err(e) => Err(e.clone()),
        };
        if let Some(x) = inner
            .jobs
            .get_mut(&t.job)
            .and_then(|j| j.tasks.get_mut(t.step)?.get_mut(t.task))
        {
            x.log_tail = done
                .log_tail
                .iter()
                .rev()
                .take(LOG_TAIL)
                .rev()
                .map(|l| l.chars().take(500).collect())
                .collect();
            match &outcome {
                Ok(outputs) => {
                    x.outputs = outputs.clone();
                    x.error = None;
                }
                Err(e) => x.error = Some(e.clone()),
            }
        }
        inner.progress.remove(&t);
        inner.dirty.insert(t);
        match &outcome {
            Ok(_) => {
                tracing::debug!(job = t.job, step = t.step, task = t.task, node = %id, "task done")
            }
            Err(e) => {
                tracing::warn!(job = t.job, step = t.step, task = t.task, node = %id, error = %e, "task failed")
            }
        }
        inner
            .farm
            .finished(now, id, lease, outcome.map(|_| ()))
            .map_err(|e| e.to_string())?;
        if let Ok(state) = inner.farm.state(t.job) {
            if state.is_final() {
                let name = inner.farm.name(t.job).unwrap_or("").to_owned();
                tracing::info!(job = t.job, state = state.as_str(), "render job ended");
                inner.audit.push(AuditRecord::new(
                    format!("node {id}"),
                    &format!("render-{}", state.as_str()),
                    format!("job {} '{name}' {}", t.job, state.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// Checks that every output was uploaded and places it in the job's output directory.
    fn place_outputs(&self, job: JobId, outputs: &[FileRef]) -> Result<(), String> {
        let dir = self.jobs_dir.join(job.to_string());
        for f in outputs {
            if !valid_job_path(&f.path) {
                return Err(format!(
                    "output path '{}' leaves the job's directory",
                    f.path
                ));
            }
            if self.blobs.size(&f.hash) != Some(f.size) {
                return Err(format!("output '{}' was not uploaded", f.path));
            }
        }
        for f in outputs {
            self.blobs
                .place(&f.hash, &dir.join(&f.path))
                .map_err(|e| format!("cannot place output '{}': {e}", f.path))?;
        }
        Ok(())
    }

    /// Node `id` (if a node) is alive: files it moves count as its heartbeat, so a long
    /// upload or fetch does not cost it its leases.
    pub fn node_alive(&self, id: Option<&str>) {
        if let Some(id) = id {
            lock(&self.inner).farm.touch(now_ms(), id);
        }
    }

    /// A node was revoked or removed: its task waits again.
    pub fn node_gone(&self, id: &str) {
        let mut inner = lock(&self.inner);
        inner.farm.node_gone(id);
        inner.nodes.remove(id);
        if let Err(e) = self.commit(&mut inner) {
            tracing::error!(error = %e, "render farm: cannot record a removed node");
        }
        drop(inner);
        self.work.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periphery_protocol::render::{JobSummary, TemplateSource};

    fn farm(dir: &std::path::Path) -> Arc<RenderFarm> {
        let store = Arc::new(Store::open(&dir.join("store.redb")).unwrap());
        Arc::new(RenderFarm::open(store, dir, Duration::from_secs(30)).unwrap())
    }

    fn submit(f: &RenderFarm, frames: &str) -> JobSummary {
        let sub = JobSubmission {
            template: TemplateSource::Builtin("command".into()),
            params: vec![
                ("Command".into(), "true".into()),
                ("Frames".into(), frames.into()),
            ],
            inputs: vec![],
            priority: 50,
            tags: vec![],
            user: None,
        };
        f.submit("alice", "test".into(), sub).unwrap().summary
    }

    fn idle() -> NodeWork {
        NodeWork {
            want: 1,
            ..NodeWork::default()
        }
    }

    /// A node's report of `lease`, done, asking for the next task.
    fn report(lease: WireLease) -> NodeWork {
        NodeWork {
            done: vec![TaskDone {
                lease,
                outcome: Ok(vec![]),
                log_tail: vec![],
            }],
            ..idle()
        }
    }

    /// One call of node `n-1`, answered.
    fn work(f: &RenderFarm, w: &NodeWork) -> WorkReply {
        f.try_work("n-1", w, &mut None).unwrap().unwrap().0
    }

    #[test]
    fn reports_go_together_and_a_refused_one_does_not_refuse_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let f = farm(dir.path());
        let id = submit(&f, "1-6").id;
        let first = work(&f, &idle()).tasks.remove(0);
        // Reported, the step's tasks are known short: the idle node asks for one to start
        // and three to queue.
        let got = work(
            &f,
            &NodeWork {
                want: 4,
                ..report(first.lease)
            },
        )
        .tasks;
        assert_eq!(got.len(), 4);
        // Two end while the node's last call is out; they go together in the next, with a
        // report for a task the node does not hold, and the first again (its answer was
        // lost, say): that one was recorded already.
        let done = |lease: WireLease| TaskDone {
            lease,
            outcome: Ok(vec![]),
            log_tail: vec!["ok".into()],
        };
        let never = WireLease {
            task: 5,
            serial: 1,
            ..first.lease
        };
        let reply = work(
            &f,
            &NodeWork {
                running: Some(got[2].lease),
                queued: vec![got[3].lease],
                done: vec![
                    done(never),
                    done(got[0].lease),
                    done(first.lease),
                    done(got[1].lease),
                ],
                ..NodeWork::default()
            },
        );
        assert_eq!(reply.refused.len(), 1, "{reply:?}");
        assert_eq!(reply.refused[0].0, never);
        assert!(reply.stop.is_empty() && reply.tasks.is_empty());
        let shown = f.show(id).unwrap();
        assert_eq!(shown.summary.counts.done, 3);
        assert_eq!(shown.summary.counts.running, 2);
        // A restart of the farm finds the same.
        drop(f);
        let g = farm(dir.path());
        assert_eq!(g.show(id).unwrap().summary.counts.done, 3);
    }

    #[test]
    fn a_held_call_that_is_no_longer_the_nodes_newest_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = farm(dir.path());
        let id = submit(&f, "1-2").id;
        // An idle call waits; the node reconnects and calls again, getting a task.
        let mut old = None;
        let (reply, _) = f.try_work("n-1", &idle(), &mut old).unwrap().unwrap();
        assert_eq!(reply.tasks.len(), 1);
        let t = reply.tasks[0].lease;
        let (reply, _) = f
            .try_work(
                "n-1",
                &NodeWork {
                    running: Some(t),
                    ..idle()
                },
                &mut None,
            )
            .unwrap()
            .unwrap();
        assert!(reply.stop.is_empty());
        // The old call wakes: it must not release the task the node runs.
        assert!(f.try_work("n-1", &idle(), &mut old).unwrap().is_none());
        assert_eq!(f.show(id).unwrap().summary.counts.running, 1);
    }

    #[tokio::test]
    async fn watch_answers_on_change_coalesced_and_at_once_on_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = farm(dir.path());
        let s = submit(&f, "1-2");
        let id = s.id;
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(3600);

        // Without a summary to compare: at once.
        assert_eq!(f.watch(id, None, MAX_WAIT).await.unwrap(), s);
        // Nothing changes: held for the wait, then the same summary.
        let t = std::time::Instant::now();
        let same = f.watch(id, Some(s.clone()), short).await.unwrap();
        assert_eq!(same.counts, s.counts);
        assert!(t.elapsed() >= short);

        // A node takes a task while a watcher waits: the watcher hears of it after the
        // coalescing window, not the wait.
        let watcher = {
            let (f, s) = (f.clone(), s.clone());
            tokio::spawn(async move { f.watch_coalesced(id, Some(s), long, short).await })
        };
        tokio::task::yield_now().await;
        let t = std::time::Instant::now();
        let task = work(&f, &idle()).tasks.remove(0);
        let running = watcher.await.unwrap().unwrap();
        assert_eq!(running.counts.running, 1);
        assert!(t.elapsed() >= short && t.elapsed() < MAX_WAIT);

        // Both tasks done: the end is answered without the (here: endless) coalescing.
        let watcher = {
            let (f, s) = (f.clone(), running.clone());
            tokio::spawn(async move { f.watch_coalesced(id, Some(s), MAX_WAIT, long).await })
        };
        tokio::task::yield_now().await;
        let t = std::time::Instant::now();
        let next = work(&f, &report(task.lease)).tasks.remove(0);
        assert_eq!(work(&f, &report(next.lease)), WorkReply::default());
        let end = watcher.await.unwrap().unwrap();
        assert_eq!(end.state, "done");
        assert_eq!(end.counts.done, 2);
        assert!(
            t.elapsed() < MAX_WAIT / 2,
            "the end waited for the deadline"
        );

        // An unknown job is an error, not a wait.
        assert!(f.watch(id + 100, Some(s), MAX_WAIT).await.is_err());
    }
}
