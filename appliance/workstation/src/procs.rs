//! Every process of a workstation, found and stopped — including orphans of a supervisor that
//! was killed.
//!
//! Each process a workstation starts carries `PERIPHERY_WORKSTATION=<marker>` in its
//! environment, and its descendants inherit it (terminals, shells, apps). Scanning
//! `/proc/*/environ` for the marker finds them all, whoever their parent is now: that is how a
//! stop leaves nothing behind, and how a restarted supervisor reaps what a crashed one left.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// The environment variable that marks a workstation's processes.
pub const MARKER_VAR: &str = "PERIPHERY_WORKSTATION";

/// The workstation marker in process `pid`'s environment, if it has one.
pub fn marker_of(pid: i32) -> Option<String> {
    let needle = format!("{MARKER_VAR}=");
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let kv = env
        .split(|b| *b == 0)
        .find(|kv| kv.starts_with(needle.as_bytes()))?;
    Some(String::from_utf8_lossy(&kv[needle.len()..]).into_owned())
}

/// Live processes whose marker starts with `prefix`, with their marker.
pub fn marked_with_prefix(prefix: &str) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, marker_of(pid).filter(|m| m.starts_with(prefix))?)))
        .filter(|(pid, _)| !is_zombie(*pid))
        .collect()
}

/// Pids whose environment has `PERIPHERY_WORKSTATION=<marker>`.
pub fn marked(marker: &str) -> Vec<i32> {
    marked_with_prefix(marker)
        .into_iter()
        .filter(|(_, m)| m == marker)
        .map(|(p, _)| p)
        .collect()
}

/// CPU time (user + system) used so far by `pids` together.
pub fn cpu_time(pids: &[i32]) -> Duration {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| {
            let user: u64 = stat_field(*p, 11)?.parse().ok()?;
            let system: u64 = stat_field(*p, 12)?.parse().ok()?;
            Some(user + system)
        })
        .sum();
    // Linux reports clock ticks of 1/100 s (USER_HZ).
    Duration::from_millis(ticks * 10)
}

/// Resident memory of `pids` together, bytes.
pub fn rss_bytes(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let statm = std::fs::read_to_string(format!("/proc/{p}/statm")).ok()?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            Some(pages * 4096)
        })
        .sum()
}

fn is_zombie(pid: i32) -> bool {
    stat_field(pid, 0).is_some_and(|s| s == "Z")
}

/// Field `n` (0 = state) after the command name of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && stat_field(pid, 0).is_some_and(|s| s != "Z")
}

/// The parent of `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    stat_field(pid, 1)?.parse().ok()
}

/// The command name of `pid` (`comm`).
pub fn command_name(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `pid` and all its descendants, found by walking `/proc`.
pub fn tree(pid: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, parent(p)?)))
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.retain(|p| alive(*p));
    out
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = kill_process(p, sig);
    }
}

/// Asks every marked process to stop (SIGTERM), waits up to `grace`, then kills what remains
/// (SIGKILL) and waits until none is left. Returns how many had to be killed.
///
/// `reap` is called while waiting so that a caller can collect its own exited children
/// (otherwise they linger as zombies, which are not counted as running).
pub fn stop_marked(marker: &str, grace: Duration, mut reap: impl FnMut()) -> usize {
    for pid in marked(marker) {
        signal(pid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap();
        if marked(marker).is_empty() {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = 0;
    let hard = Instant::now() + Duration::from_secs(10);
    loop {
        reap();
        let left = marked(marker);
        if left.is_empty() || Instant::now() > hard {
            if !left.is_empty() {
                tracing::error!(?left, marker, "processes survived SIGKILL");
            }
            return killed;
        }
        for pid in left {
            signal(pid, Signal::KILL);
            killed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
