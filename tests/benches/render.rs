//! Render farm benchmark (`make bench-render`). Figures, not pass/fail; each is printed next
//! to a baseline measured in the same run:
//!
//! 1. throughput: the same CPU-bound commands (about a quarter of a second each) through the
//!    farm (a daemon and N local nodes) and through `xargs -P N` directly — ratio of the
//!    times (goal >= 0.95);
//! 2. scheduling overhead: 10,000 no-op tasks through the farm against `xargs -P N` running
//!    the same `sh -c true` 10,000 times — the extra time per task (goal <= 2 ms).
//!
//! Both run [`ROUNDS`] times, farm and baseline in turn; the figure is the median of the
//! rounds' comparisons.
//! 3. the scheduler alone (the sans-IO farm, in process) over 10,000 tasks, per task.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use periphery_e2e::{blender_scene, cpu_time, job_id, Daemon, DaemonOptions, RenderNode};
use periphery_render::farm::{Farm, JobRequest};

const NODES: usize = 2;

/// Runs `cmd` with `$1` = `i-i` for i in 1..=n, N at a time; returns the wall time.
fn xargs(cmd: &str, n: usize) -> Duration {
    let input: String = (1..=n).map(|i| format!("{i}-{i}\n")).collect();
    let t = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &NODES.to_string(), "-n", "1", "sh", "-c", cmd, "sh"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    t.elapsed()
}

/// Queues `cmd` over frames 1..=n and waits for the job; returns the wall time.
fn farm(d: &Daemon, cmd: &str, n: usize) -> Duration {
    let frames = format!("1-{n}");
    submit_and_wait(d, &[cmd, "--command", "--frames", &frames])
}

/// `render submit <args> --no-wait`, then waits for the job; returns the wall time.
fn submit_and_wait(d: &Daemon, args: &[&str]) -> Duration {
    let t = Instant::now();
    let mut all = vec!["render", "submit"];
    all.extend_from_slice(args);
    all.push("--no-wait");
    let id = job_id(&d.ok(&all)).to_string();
    // One watching process, as a user would; polling with many CLI processes would take
    // the CPU the tasks need.
    let watched = d.cli(&["render", "watch", &id]);
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stdout)
    );
    t.elapsed()
}

/// Rounds of each measurement: the machine's speed drifts by tens of percent over a minute
/// (a shared VM), so the farm and its baseline run in turn, each round's pair is compared,
/// and the median of the rounds is the figure.
const ROUNDS: usize = 5;

/// Runs `a` and `b` in turn, [`ROUNDS`] times each; their times in seconds.
fn in_turn(
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Vec<f64>, Vec<f64>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        x.push(a().as_secs_f64());
        y.push(b().as_secs_f64());
    }
    (x, y)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `v` with `digits` decimals, separated by spaces.
fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn scheduler_alone(tasks: usize) -> (Duration, Duration) {
    let mut f = Farm::new();
    f.submit(
        0,
        JobRequest {
            name: "noop".into(),
            priority: 50,
            tags: BTreeSet::new(),
            steps: vec![("Run".into(), vec![], tasks)],
        },
    )
    .unwrap();
    for n in 0..NODES {
        f.node_seen(0, &format!("n{n}"), BTreeSet::new(), None, &[]);
    }
    let t = Instant::now();
    let mut now = 1;
    while f.progress(1).unwrap().done < tasks {
        for a in f.assign(now) {
            f.finished(now, &a.node, a.lease, Ok(())).unwrap();
        }
        now += 1;
    }
    let farm = t.elapsed();
    // Baseline: handing out the same number of work items from a queue.
    let t = Instant::now();
    let mut q: std::collections::VecDeque<usize> = (0..tasks).collect();
    let mut done = 0usize;
    while let Some(i) = q.pop_front() {
        done = done.wrapping_add(std::hint::black_box(i));
    }
    std::hint::black_box(done);
    (farm, t.elapsed())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    // Logging as in production.
    let opts = DaemonOptions {
        log_level: Some("info".into()),
        ..DaemonOptions::default()
    };
    let d = Daemon::start(&dir.path().join("state"), opts);
    let nodes: Vec<RenderNode> = (0..NODES)
        .map(|i| RenderNode::start_logging(&d, dir.path(), &format!("n{i}"), None, "info"))
        .collect();
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    // CPU time so far: the daemon's, the nodes' own, the tasks'.
    let cpu = || {
        let (daemon, _) = cpu_time(d.pid());
        let (mut node, mut tasks) = (Duration::ZERO, Duration::ZERO);
        for &p in &pids {
            let (own, children) = cpu_time(p);
            node += own;
            tasks += children;
        }
        [daemon, node, tasks]
    };
    let breakdown = |before: [Duration; 3], n: usize| {
        let after = cpu();
        let ms = |i: usize| (after[i] - before[i]).as_secs_f64() * 1000.0 / n as f64;
        println!(
            "  CPU a task: appliance {:.2} ms, node {:.2} ms, the command {:.2} ms",
            ms(0),
            ms(1),
            ms(2)
        );
    };
    d.wait_render_nodes(NODES);

    // CPU-bound tasks of about a quarter of a second each, whatever the machine's speed:
    // long enough that the ratio measures the farm, not the start of a job.
    let busy = |loops: u64| format!("i=0; while [ $i -lt {loops} ]; do i=$((i+1)); done");
    let probe = 40_000;
    let t = Instant::now();
    assert!(Command::new("sh")
        .args(["-c", &busy(probe)])
        .status()
        .unwrap()
        .success());
    let loops = (probe as f64 * 0.25 / t.elapsed().as_secs_f64()) as u64;
    let busy = busy(loops);
    let n = 40;
    let before = cpu();
    let (through, base) = in_turn(|| farm(&d, &busy, n), || xargs(&busy, n));
    let ratio: Vec<f64> = base.iter().zip(&through).map(|(b, f)| b / f).collect();
    println!(
        "throughput: {n} CPU-bound tasks on {NODES} nodes, {ROUNDS} rounds in turn: farm {} s, xargs -P {NODES} {} s; ratio {:.2} (median; rounds {}; goal >= 0.95)",
        list(&through, 2),
        list(&base, 2),
        median(&ratio),
        list(&ratio, 2)
    );
    breakdown(before, n * ROUNDS);

    let n = 10_000;
    let before = cpu();
    let (through, base) = in_turn(|| farm(&d, "true", n), || xargs("true", n));
    let extra: Vec<f64> = base
        .iter()
        .zip(&through)
        .map(|(b, f)| (f - b) * NODES as f64 / n as f64 * 1000.0)
        .collect();
    let ratio: Vec<f64> = base.iter().zip(&through).map(|(b, f)| b / f).collect();
    println!(
        "overhead: {n} no-op tasks on {NODES} nodes, {ROUNDS} rounds in turn: farm {} s, xargs -P {NODES} {} s; ratio {:.2}, extra per task per node {:.2} ms (medians; rounds {}; goal <= 2 ms)",
        list(&through, 2),
        list(&base, 2),
        median(&ratio),
        median(&extra),
        list(&extra, 2)
    );
    breakdown(before, n * ROUNDS);

    // Blender: what starting Blender and loading the scene costs per task, against one
    // Blender process rendering all 10 frames of the test scene.
    let scene = blender_scene(dir.path());
    let s = scene.to_str().unwrap();
    let t = Instant::now();
    let direct = Command::new("blender")
        .args(periphery_render::blender::args(
            s,
            dir.path().join("direct").to_str().unwrap(),
            1,
            10,
        ))
        .output()
        .unwrap();
    assert!(direct.status.success());
    let one_process = t.elapsed();
    for chunk in ["1", "5"] {
        let took = submit_and_wait(&d, &[s, "--frames", "1-10", "--chunk", chunk]);
        println!(
            "blender: 10 frames 64x64, chunk {chunk}, on {NODES} nodes: {:.2} s, {:.0} ms a frame of node time; one Blender rendering all 10 alone: {:.2} s ({:.0} ms a frame); ratio {:.2}",
            took.as_secs_f64(),
            took.as_secs_f64() * NODES as f64 * 100.0,
            one_process.as_secs_f64(),
            one_process.as_secs_f64() * 100.0,
            one_process.as_secs_f64() / took.as_secs_f64()
        );
    }

    let (alone, queue) = scheduler_alone(n);
    println!(
        "scheduler alone: {n} tasks in {:.1} ms ({:.1} us a task); a bare queue {:.3} ms; ratio {:.0}x",
        alone.as_secs_f64() * 1000.0,
        alone.as_secs_f64() * 1e6 / n as f64,
        queue.as_secs_f64() * 1000.0,
        alone.as_secs_f64() / queue.as_secs_f64().max(1e-9)
    );
    drop(nodes);
}
