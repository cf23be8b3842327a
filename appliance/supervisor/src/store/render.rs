//! Render jobs and their tasks in the store (since schema 5).
//!
//! - `render_jobs`: job id -> [`JobRow`]
//! - `render_tasks`: (job, step, task) -> [`TaskRow`]
//!
//! The farm names what changed after each decision ([`periphery_render::farm::Changes`]);
//! [`Store::write_render`] writes just those rows, with their audit entries, in one
//! transaction, so a 10,000-task job costs one row per task that moved.

use std::collections::VecDeque;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use periphery_protocol::render::FileRef;
use periphery_render::farm::{JobId, JobMeta, TaskRecord};

use super::{append_audit, db, decode, encode, AuditRecord, Store, StoreError};

pub(super) const RENDER_JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("render_jobs");
pub(super) const RENDER_TASKS: TableDefinition<(u64, u32, u32), &[u8]> =
    TableDefinition::new("render_tasks");

/// What the appliance keeps of a job besides the scheduler's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFacts {
    /// Whose job it is.
    pub user: String,
    /// Unix seconds.
    pub submitted_at: u64,
    /// Its input files.
    pub inputs: Vec<FileRef>,
}

/// A job as stored. (postcard writes a nested struct as its fields in order, so this is
/// the same bytes as the fields written flat: schema 5 as it was.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    /// The scheduler's part.
    pub meta: JobMeta,
    /// The appliance's part.
    pub facts: JobFacts,
}

/// What the appliance keeps of a task besides the scheduler's part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFacts {
    /// Its parameters (`Frame=1-5`).
    pub params: String,
    /// Its command line.
    pub argv: Vec<String>,
    /// Its outputs, once done.
    pub outputs: Vec<FileRef>,
    /// The node that ran it last.
    pub node: Option<String>,
    /// The last failure.
    pub error: Option<String>,
    /// The last lines of its output (a sequence, as a `Vec` is written).
    pub log_tail: VecDeque<String>,
}

/// A task as stored (the same bytes as its fields written flat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The scheduler's part.
    pub rec: TaskRecord,
    /// The appliance's part.
    pub facts: TaskFacts,
}

/// A stored job with its tasks, step by step.
pub type StoredJob = (JobId, JobRow, Vec<Vec<TaskRow>>);

impl Store {
    /// Writes changed job and task rows and their audit entries in one transaction;
    /// whether there was anything to write.
    pub fn write_render(
        &self,
        jobs: &[(JobId, JobRow)],
        tasks: &[((u64, u32, u32), TaskRow)],
        audit: &[AuditRecord],
    ) -> Result<bool, StoreError> {
        if jobs.is_empty() && tasks.is_empty() && audit.is_empty() {
            return Ok(false);
        }
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut j = tx.open_table(RENDER_JOBS).map_err(db)?;
            for (id, row) in jobs {
                j.insert(*id, encode(row).as_slice()).map_err(db)?;
            }
            let mut t = tx.open_table(RENDER_TASKS).map_err(db)?;
            for (key, row) in tasks {
                t.insert(*key, encode(row).as_slice()).map_err(db)?;
            }
        }
        for a in audit {
            append_audit(&tx, a)?;
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    /// Every stored job with its tasks, for the farm to start from.
    pub fn render_jobs(&self) -> Result<Vec<StoredJob>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let jobs = tx.open_table(RENDER_JOBS).map_err(db)?;
        let tasks = tx.open_table(RENDER_TASKS).map_err(db)?;
        let mut out = Vec::new();
        for row in jobs.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let id = k.value();
            let job: JobRow = decode("render_jobs", &id.to_string(), v.value())?;
            let mut steps: Vec<Vec<TaskRow>> = job
                .meta
                .steps
                .iter()
                .map(|s| Vec::with_capacity(s.tasks))
                .collect();
            for t in tasks
                .range((id, 0, 0)..=(id, u32::MAX, u32::MAX))
                .map_err(db)?
            {
                let (k, v) = t.map_err(db)?;
                let (_, step, task) = k.value();
                let key = format!("{id}/{step}/{task}");
                let row: TaskRow = decode("render_tasks", &key, v.value())?;
                let Some(s) = steps.get_mut(step as usize) else {
                    return Err(StoreError::Corrupt {
                        table: "render_tasks",
                        key,
                    });
                };
                if s.len() != task as usize {
                    return Err(StoreError::Corrupt {
                        table: "render_tasks",
                        key,
                    });
                }
                s.push(row);
            }
            if steps
                .iter()
                .zip(&job.meta.steps)
                .any(|(t, m)| t.len() != m.tasks)
            {
                return Err(StoreError::Corrupt {
                    table: "render_tasks",
                    key: format!("{id}: missing tasks"),
                });
            }
            out.push((id, job, steps));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use periphery_render::farm::{StepMeta, TaskState};

    fn row(tasks: usize) -> JobRow {
        JobRow {
            meta: JobMeta {
                name: "j".into(),
                priority: 50,
                tags: Default::default(),
                submitted: 1,
                paused: false,
                canceled: false,
                steps: vec![StepMeta {
                    name: "Render".into(),
                    depends_on: vec![],
                    tasks,
                }],
                failures: Default::default(),
            },
            facts: JobFacts {
                user: "alice".into(),
                submitted_at: 1,
                inputs: vec![],
            },
        }
    }

    fn task(state: TaskState) -> TaskRow {
        TaskRow {
            rec: TaskRecord {
                state,
                ..Default::default()
            },
            facts: TaskFacts {
                params: "Frame=1".into(),
                argv: vec!["true".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn rows_are_the_bytes_schema_5_wrote_flat() {
        #[derive(Serialize)]
        struct FlatTask {
            rec: TaskRecord,
            params: String,
            argv: Vec<String>,
            outputs: Vec<FileRef>,
            node: Option<String>,
            error: Option<String>,
            log_tail: Vec<String>,
        }
        let mut t = task(TaskState::Done);
        t.facts.node = Some("n-1".into());
        t.facts.log_tail = ["a".to_string(), "b".to_string()].into();
        let flat = FlatTask {
            rec: t.rec.clone(),
            params: t.facts.params.clone(),
            argv: t.facts.argv.clone(),
            outputs: vec![],
            node: t.facts.node.clone(),
            error: None,
            log_tail: vec!["a".into(), "b".into()],
        };
        assert_eq!(encode(&flat), encode(&t));
        #[derive(Serialize)]
        struct FlatJob {
            meta: JobMeta,
            user: String,
            submitted_at: u64,
            inputs: Vec<FileRef>,
        }
        let j = row(2);
        let flat = FlatJob {
            meta: j.meta.clone(),
            user: j.facts.user.clone(),
            submitted_at: j.facts.submitted_at,
            inputs: vec![],
        };
        assert_eq!(encode(&flat), encode(&j));
    }

    #[test]
    fn jobs_and_changed_tasks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|i| ((7, 0, i), task(TaskState::Waiting)))
            .collect();
        s.write_render(&[(7, row(3))], &tasks, &[]).unwrap();
        s.write_render(&[], &[((7, 0, 1), task(TaskState::Done))], &[])
            .unwrap();
        let jobs = s.render_jobs().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0, 7);
        let states: Vec<_> = jobs[0].2[0].iter().map(|t| t.rec.state.clone()).collect();
        assert_eq!(
            states,
            [TaskState::Waiting, TaskState::Done, TaskState::Waiting]
        );
    }

    #[test]
    fn a_job_missing_tasks_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.write_render(
            &[(1, row(2))],
            &[((1, 0, 0), task(TaskState::Waiting))],
            &[],
        )
        .unwrap();
        assert!(matches!(
            s.render_jobs(),
            Err(StoreError::Corrupt {
                table: "render_tasks",
                ..
            })
        ));
    }
}
