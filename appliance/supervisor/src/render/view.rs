//! What users and `render nodes` see of the farm: job summaries and details, the watch long
//! poll, and the live nodes. Reads only; the decisions are in the parent module.

use std::collections::HashMap;
use std::time::Duration;

use periphery_protocol::render::{JobDetail, JobSummary, NodeCaps, TaskCounts, TaskInfo};
use periphery_protocol::ApiError;
use periphery_render::farm::{FarmError, JobId, Progress, TaskRef, TaskState};

use super::{farm_err, lock, now_ms, Inner, RenderFarm, MAX_WAIT};

/// A watcher hears of progress at most this often (a job's end at once).
const WATCH_COALESCE: Duration = Duration::from_millis(100);

/// A node the farm knows now, as `render nodes` shows it.
#[derive(Debug, Clone)]
pub struct LiveNode {
    /// Its id (`n-…`).
    pub id: String,
    /// What it offers, from its last heartbeat.
    pub caps: NodeCaps,
    /// The task it runs (`job 3 Render[2]`).
    pub running: Option<String>,
}

fn counts(p: Progress) -> TaskCounts {
    let c = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    TaskCounts {
        done: c(p.done),
        running: c(p.running),
        failed: c(p.failed),
        waiting: c(p.waiting),
        canceled: c(p.canceled),
        total: c(p.total),
    }
}

fn state_name(s: &TaskState) -> &'static str {
    match s {
        TaskState::Waiting => "waiting",
        TaskState::Running { .. } => "running",
        TaskState::Done => "done",
        TaskState::Failed(_) => "failed",
        TaskState::Canceled => "canceled",
    }
}

impl RenderFarm {
    fn summary(&self, inner: &Inner, id: JobId) -> Option<JobSummary> {
        let x = inner.jobs.get(&id)?;
        let meta = inner.farm.job_meta(id)?;
        let p = inner.farm.progress(id).ok()?;
        let state = inner.farm.state(id).ok()?;
        let left = p.waiting + p.running;
        let elapsed = (now_ms() / 1000).saturating_sub(x.facts.submitted_at);
        let eta_secs = (p.done > 0 && left > 0 && !state.is_final())
            .then(|| elapsed * left as u64 / p.done as u64);
        Some(JobSummary {
            id,
            name: meta.name.clone(),
            user: x.facts.user.clone(),
            state: state.as_str().into(),
            priority: meta.priority,
            tags: meta.tags.iter().cloned().collect(),
            counts: counts(p),
            submitted_at: x.facts.submitted_at,
            eta_secs,
            output_dir: self.jobs_dir.join(id.to_string()).display().to_string(),
        })
    }

    /// Job `id`'s summary once its state or counts differ from `seen`, or after `wait`
    /// (capped at [`MAX_WAIT`]). Progress is coalesced to one answer per
    /// [`WATCH_COALESCE`]; the job's end is answered at once.
    pub async fn watch(
        &self,
        id: JobId,
        seen: Option<JobSummary>,
        wait: Duration,
    ) -> Result<JobSummary, ApiError> {
        self.watch_coalesced(id, seen, wait, WATCH_COALESCE).await
    }

    pub(super) async fn watch_coalesced(
        &self,
        id: JobId,
        seen: Option<JobSummary>,
        wait: Duration,
        coalesce: Duration,
    ) -> Result<JobSummary, ApiError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut changed_at = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let s = self
                .summary(&lock(&self.inner), id)
                .ok_or_else(|| farm_err(FarmError::NoJob(id)))?;
            let Some(seen) = &seen else { return Ok(s) };
            let now = tokio::time::Instant::now();
            if seen.state != s.state || seen.counts != s.counts {
                let at = *changed_at.get_or_insert(now);
                let ended = s.state != "active" && s.state != "paused";
                if ended || now >= at + coalesce || now >= deadline {
                    return Ok(s);
                }
            } else if now >= deadline {
                return Ok(s);
            }
            let until = changed_at.map_or(deadline, |at| (at + coalesce).min(deadline));
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// Jobs of `user` (every job for `None`), oldest first.
    pub fn list(&self, user: Option<&str>) -> Vec<JobSummary> {
        let inner = lock(&self.inner);
        inner
            .farm
            .job_ids()
            .filter(|id| user.is_none_or(|u| inner.jobs.get(id).is_some_and(|j| j.facts.user == u)))
            .filter_map(|id| self.summary(&inner, id))
            .collect()
    }

    /// One job with its tasks.
    pub fn show(&self, id: JobId) -> Result<JobDetail, ApiError> {
        let inner = lock(&self.inner);
        let summary = self
            .summary(&inner, id)
            .ok_or_else(|| farm_err(FarmError::NoJob(id)))?;
        let meta = inner
            .farm
            .job_meta(id)
            .ok_or(farm_err(FarmError::NoJob(id)))?;
        let x = &inner.jobs[&id];
        let mut tasks = Vec::new();
        for (si, step) in x.tasks.iter().enumerate() {
            for (ti, t) in step.iter().enumerate() {
                let r = TaskRef {
                    job: id,
                    step: si,
                    task: ti,
                };
                let Some(rec) = inner.farm.task(r) else {
                    continue;
                };
                tasks.push(TaskInfo {
                    step: meta.steps[si].name.clone(),
                    index: ti as u32,
                    params: t.params.clone(),
                    state: state_name(&rec.state).into(),
                    node: t.node.clone(),
                    failures: rec.failures,
                    error: match &rec.state {
                        TaskState::Failed(e) => Some(e.clone()),
                        _ => t.error.clone(),
                    },
                    log_tail: t.log_tail.iter().cloned().collect(),
                    progress: inner.progress.get(&r).cloned(),
                    outputs: t.outputs.clone(),
                });
            }
        }
        Ok(JobDetail {
            summary,
            steps: meta
                .steps
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.depends_on
                            .iter()
                            .map(|d| meta.steps[*d].name.clone())
                            .collect(),
                    )
                })
                .collect(),
            tasks,
            why: inner.farm.why(id).unwrap_or_default(),
            blocklisted: inner.farm.blocklisted(id),
        })
    }

    /// The nodes the farm knows now: capabilities, and what each runs.
    pub fn live_nodes(&self) -> Vec<LiveNode> {
        let inner = lock(&self.inner);
        let running: HashMap<&str, Option<TaskRef>> = inner.farm.nodes().collect();
        inner
            .nodes
            .iter()
            .filter(|(id, _)| running.contains_key(id.as_str()))
            .map(|(id, caps)| {
                let what = running.get(id.as_str()).copied().flatten().map(|t| {
                    let step = inner
                        .farm
                        .job_meta(t.job)
                        .map(|m| m.steps[t.step].name.clone())
                        .unwrap_or_default();
                    format!("job {} {step}[{}]", t.job, t.task)
                });
                LiveNode {
                    id: id.clone(),
                    caps: caps.clone(),
                    running: what,
                }
            })
            .collect()
    }
}
