//! The render farm's messages: jobs as users see them, and the conversation of a render node
//! with the appliance.
//!
//! A node joins once with a token ([`Request::NodeJoin`](crate::Request::NodeJoin)) and gets a
//! certificate; from then on it connects with mTLS and loops on
//! [`Request::NodeWork`](crate::Request::NodeWork): each call is its heartbeat (its
//! capabilities, the leases it holds, new log lines), carries the reports of the tasks that
//! ended since the last (after their outputs were uploaded), and asks for tasks: when idle,
//! one to start (the appliance holds the call up to `wait_ms` until one is there); when its
//! tasks are short, a few to queue, so the next starts the moment one ends and the report
//! travels while it runs. The answer may tell it to stop or drop a lease (canceled, or
//! expired).
//!
//! Files move by content: a BLAKE3 hash (64 hex digits) names every input and output, the
//! appliance stores each once ([`Request::BlobPut`](crate::Request::BlobPut), checked against
//! the hash when the last chunk arrives), and nodes fetch what they lack
//! ([`Request::BlobGet`](crate::Request::BlobGet)) into a cache of their own.

use serde::{Deserialize, Serialize};

/// The largest chunk of a file in one [`Request::BlobPut`](crate::Request::BlobPut) or
/// [`Request::BlobGet`](crate::Request::BlobGet): well inside the client frame limit.
pub const MAX_BLOB_CHUNK: usize = 512 * 1024;

/// Whether `s` is a content hash as used here: 64 lower-case hex digits (BLAKE3).
pub fn valid_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `p` is a relative path inside a job's tree: not empty, no `..`, not absolute,
/// no empty or `.` components, at most 512 bytes.
pub fn valid_job_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 512
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A file by content, at a path relative to the task's working directory (inputs) or the
/// job's output directory (outputs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    /// Relative path (`scene.blend`, `out/0001.png`).
    pub path: String,
    /// BLAKE3, 64 hex digits.
    pub hash: String,
    /// Bytes.
    pub size: u64,
}

/// Which template a job is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateSource {
    /// A built-in template by name (`blender`, `blender-video`, `command`).
    Builtin(String),
    /// An Open Job Description template (YAML or JSON).
    Document(String),
}

/// A job to queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubmission {
    /// The template.
    pub template: TemplateSource,
    /// Job parameters as typed (`Frames` = `1-100`).
    pub params: Vec<(String, String)>,
    /// Files the tasks need (already stored on the appliance by hash), placed at their path
    /// in each task's working directory.
    pub inputs: Vec<FileRef>,
    /// 0-100, higher first.
    pub priority: u8,
    /// Tags a node must carry.
    pub tags: Vec<String>,
    /// The user the job is for (an administrator may name another user; `None`: the caller).
    pub user: Option<String>,
}

/// Counts of a job's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Done.
    pub done: u32,
    /// Running.
    pub running: u32,
    /// Failed for good.
    pub failed: u32,
    /// Waiting.
    pub waiting: u32,
    /// Canceled.
    pub canceled: u32,
    /// All.
    pub total: u32,
}

/// A job, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Whose it is.
    pub user: String,
    /// `active`, `paused`, `done`, `failed`, `canceled`.
    pub state: String,
    /// 0-100.
    pub priority: u8,
    /// Tags.
    pub tags: Vec<String>,
    /// Its tasks by state.
    pub counts: TaskCounts,
    /// Unix seconds.
    pub submitted_at: u64,
    /// Seconds until done, from the pace so far (when something is done and something left).
    pub eta_secs: Option<u64>,
    /// Where its outputs land on the appliance.
    pub output_dir: String,
}

/// A task, as shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Its step.
    pub step: String,
    /// Index in the step.
    pub index: u32,
    /// Its parameters (`Frame=1-5`).
    pub params: String,
    /// `waiting`, `running`, `done`, `failed`, `canceled`.
    pub state: String,
    /// The node running it, or that ran it last.
    pub node: Option<String>,
    /// Failed attempts so far.
    pub failures: u32,
    /// The last failure.
    pub error: Option<String>,
    /// The last lines of its output.
    pub log_tail: Vec<String>,
    /// Its last progress report (`frame 3`, `sample 12/64`).
    pub progress: Option<String>,
    /// Its outputs, once done.
    pub outputs: Vec<FileRef>,
}

/// A job with its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The summary.
    pub summary: JobSummary,
    /// Steps in order with their dependencies.
    pub steps: Vec<(String, Vec<String>)>,
    /// The tasks.
    pub tasks: Vec<TaskInfo>,
    /// Why waiting tasks wait.
    pub why: Vec<String>,
    /// Nodes blocklisted for the job.
    pub blocklisted: Vec<String>,
}

/// What a user can do to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobAction {
    /// Hold: running tasks finish, no new ones start.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Cancel: waiting tasks are dropped, running ones stopped on their nodes.
    Cancel,
    /// Run failed and canceled tasks again (`all`: every task).
    Retry {
        /// Done tasks too.
        all: bool,
    },
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeCaps {
    /// Renderers found, with their versions (`blender` `3.4.1`, `ffmpeg` `5.1`).
    pub renderers: Vec<(String, String)>,
    /// CPU cores.
    pub cores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// GPUs found (render nodes under /dev/dri, NVIDIA devices).
    pub gpus: Vec<String>,
    /// Tags (given by the node's operator, plus `gpu` when a GPU was found).
    pub tags: Vec<String>,
}

/// A lease on a task, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireLease {
    /// Job.
    pub job: u64,
    /// Step index.
    pub step: u32,
    /// Task index.
    pub task: u32,
    /// Lease serial.
    pub serial: u32,
}

/// A node's heartbeat, its reports and its request for work, all in one: the node sends
/// one at a time on its control stream, so the appliance sees them in the order they
/// were sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWork {
    /// What it offers.
    pub caps: NodeCaps,
    /// The task it runs, if any.
    pub running: Option<WireLease>,
    /// Progress of that task (`frame 3`).
    pub progress: Option<String>,
    /// Its output lines since the last heartbeat (the appliance keeps a tail).
    pub log: Vec<String>,
    /// The leases it holds besides `running`: the tasks queued to go on to, in order.
    pub queued: Vec<WireLease>,
    /// Tasks that ended since its last call (outputs uploaded first), recorded before
    /// anything else in the call.
    pub done: Vec<TaskDone>,
    /// How many tasks it asks for: when idle, the one to start and those to queue behind
    /// it; when busy, more to queue. Short tasks queue a few, so no round trip to the
    /// appliance waits between them; the appliance caps how many a node holds.
    pub want: u32,
    /// When idle and no task is there: how long the appliance may hold the answer until
    /// one is, ms.
    pub wait_ms: u32,
}

/// A task for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// Its lease.
    pub lease: WireLease,
    /// The job's name, for logs.
    pub job_name: String,
    /// The step's name.
    pub step: String,
    /// The command and its arguments; relative paths are in the task's working directory.
    pub argv: Vec<String>,
    /// Files to place in the working directory first.
    pub inputs: Vec<FileRef>,
    /// Which attempt this is.
    pub attempt: u32,
}

/// The appliance's answer to a [`NodeWork`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReply {
    /// Tasks for the node in the order to run them, after those it holds: an idle node
    /// starts the first.
    pub tasks: Vec<TaskAssignment>,
    /// Leases the node must stop, or drop if it has not started them (their job was
    /// canceled or the lease expired).
    pub stop: Vec<WireLease>,
    /// Reports refused, with why: the node no longer held the lease (it expired, and the
    /// task went to another node), so their outputs are discarded.
    pub refused: Vec<(WireLease, String)>,
}

/// A finished task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDone {
    /// Its lease.
    pub lease: WireLease,
    /// The outputs (uploaded first), or why it failed.
    pub outcome: Result<Vec<FileRef>, String>,
    /// The last lines of its output.
    pub log_tail: Vec<String>,
}

/// A render node, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `idle`, `busy`, `offline`, `revoked`.
    pub state: String,
    /// What it offers (as last reported).
    pub caps: NodeCaps,
    /// What it runs (`job 3 Render[2]`).
    pub running: Option<String>,
    /// Unix seconds it joined.
    pub joined_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_paths_stay_inside_the_tree() {
        for ok in ["scene.blend", "out/0001.png", "a/b/c"] {
            assert!(valid_job_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "a\0b",
        ] {
            assert!(!valid_job_path(bad), "{bad:?}");
        }
        assert!(!valid_job_path(&"a".repeat(513)));
    }

    #[test]
    fn hashes_are_64_lower_hex() {
        assert!(valid_hash(&"ab".repeat(32)));
        assert!(!valid_hash(&"AB".repeat(32)));
        assert!(!valid_hash("abc"));
        assert!(!valid_hash(&"../".repeat(21)));
    }
}
