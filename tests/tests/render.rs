//! The render farm end to end: a daemon, render nodes joined with a token (real
//! `periphery-render-node` processes), real Blender from Debian's packages.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use periphery_e2e::{
    bin, blender_scene as scene, job_id, wait_for, Daemon, DaemonOptions, RenderNode as Node,
};

/// A daemon whose silent nodes lose their lease after 5 s (30 s by default).
fn daemon(dir: &Path) -> Daemon {
    daemon_on(dir, None, 5)
}

fn daemon_on(dir: &Path, listen: Option<String>, lease_secs: u64) -> Daemon {
    Daemon::start(
        &dir.join("state"),
        DaemonOptions {
            listen,
            config: Some(format!("[render]\nlease_timeout_secs = {lease_secs}\n")),
            ..Default::default()
        },
    )
}

/// The line of `render show` for a task, e.g. `Run[1]`.
fn task_line(d: &Daemon, job: u64, task: &str) -> String {
    let show = d.ok(&["render", "show", &job.to_string()]);
    show.lines()
        .find(|l| l.trim_start().starts_with(task))
        .unwrap_or_else(|| panic!("no {task} in {show}"))
        .to_owned()
}

fn watch_ok(d: &Daemon, job: u64) {
    let watched = d.cli(&["render", "watch", &job.to_string()]);
    assert!(
        watched.status.success(),
        "{}{}",
        String::from_utf8_lossy(&watched.stdout),
        String::from_utf8_lossy(&watched.stderr)
    );
}

fn rgba(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// `render submit <cmd> --command --frames <frames> --no-wait`: the job's id.
fn submit_command(d: &Daemon, cmd: &str, frames: &str) -> u64 {
    job_id(&d.ok(&[
        "render",
        "submit",
        cmd,
        "--command",
        "--frames",
        frames,
        "--no-wait",
    ]))
}

#[test]
fn three_nodes_render_frames_equal_to_blender_and_assemble_the_video() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let scene = scene(dir.path());
    // The reference: Blender rendering the same frames directly.
    let reference = dir.path().join("ref");
    let out = Command::new("blender")
        .args(periphery_render_args(&scene, &reference))
        .output()
        .unwrap();
    assert!(out.status.success());
    let nodes: Vec<Node> = (1..=3)
        .map(|i| Node::start(&d, dir.path(), &format!("node{i}"), None))
        .collect();
    d.wait_render_nodes(3);
    let submitted = d.ok(&[
        "render",
        "submit",
        scene.to_str().unwrap(),
        "--frames",
        "1-10",
        "--chunk",
        "2",
        "--video",
        "turn.mp4",
        "--fps",
        "10",
    ]);
    let job = job_id(&submitted);
    assert!(
        submitted.contains("6 tasks"),
        "5 chunks and the video: {submitted}"
    );
    let show = d.ok(&["render", "show", &job.to_string()]);
    let out_dir = dir.path().join(format!("state/render/jobs/{job}/out"));
    for f in 1..=10 {
        let (w, h, got) = rgba(&out_dir.join(format!("{f:04}.png")));
        let (_, _, want) = rgba(&reference.join(format!("{f:04}.png")));
        assert_eq!((w, h), (64, 64));
        let p = psnr(&got, &want);
        assert!(
            p >= 45.0,
            "frame {f}: PSNR {p:.1} dB against Blender's own\n{show}"
        );
    }
    assert_eq!(
        periphery_media::video::count_frames(&out_dir.join("turn.mp4")).unwrap(),
        10,
        "the assembled video decodes to 10 frames"
    );
    let used: std::collections::BTreeSet<&str> = show
        .lines()
        .filter(|l| l.trim_start().starts_with("Render["))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(
        used.len() >= 2,
        "the frames were spread over the nodes: {show}"
    );
    drop(nodes);
}

/// The arguments Blender takes to render frames 1-10 of `scene` into `out/####.png`.
fn periphery_render_args(scene: &Path, out: &Path) -> Vec<String> {
    periphery_render::blender::args(scene.to_str().unwrap(), out.to_str().unwrap(), 1, 10)
}

#[test]
fn a_node_killed_mid_task_loses_its_lease_and_another_completes_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let mut a = Node::start(&d, dir.path(), "a", None);
    d.wait_render_nodes(1);
    // The first run of frame 2 marks itself and hangs; any later run finishes at once.
    let marker = dir.path().join("started");
    let cmd = format!(
        "if [ \"$1\" = 2-2 ] && mkdir {m} 2>/dev/null; then sleep 600; fi; echo \"frame $1\" > out/$1.txt",
        m = marker.display()
    );
    let job = submit_command(&d, &cmd, "1-3");
    wait_for("frame 2 to start", Duration::from_secs(30), || {
        marker.exists().then_some(())
    });
    a.kill();
    let _b = Node::start(&d, dir.path(), "b", None);
    // After the lease (5 s here) the task waits again and b takes it.
    watch_ok(&d, job);
    let frame2 = task_line(&d, job, "Run[1]");
    assert!(frame2.contains(" done "), "{frame2}");
    let out = dir
        .path()
        .join(format!("state/render/jobs/{job}/out/2-2.txt"));
    assert_eq!(std::fs::read_to_string(out).unwrap(), "frame 2-2\n");
    let audit = d.ok(&["audit", "--limit", "200"]);
    assert_eq!(
        audit.matches("render-done").count(),
        1,
        "one completion of the job: {audit}"
    );
}

#[test]
fn bad_submissions_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let scene = dir.path().join("x.blend");
    std::fs::write(&scene, b"not really a scene").unwrap();
    let s = scene.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["render", "submit", "/nope/missing.blend"],
            "does not exist",
        ),
        (
            vec!["render", "submit", s, "--frames", "10-1", "--no-wait"],
            "10-1",
        ),
        (
            vec!["render", "submit", s, "--chunk", "0", "--no-wait"],
            "Chunk",
        ),
        (
            vec!["render", "submit", s, "-p", "Bogus=1", "--no-wait"],
            "Bogus",
        ),
    ] {
        let out = d.cli(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let bad_template = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_template,
        "specificationVersion: jobtemplate-2023-09\nname: x\nsteps:\n  - name: A\n    script:\n      actions:\n        onRun:\n          command: '{{Task.Param.Nope}}'\n",
    )
    .unwrap();
    let out = d.cli(&["render", "submit", bad_template.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("steps[0]"), "{err}");
}

#[test]
fn a_failing_scene_fails_its_job_with_blenders_words_and_other_jobs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let _n = Node::start(&d, dir.path(), "n", None);
    d.wait_render_nodes(1);
    let broken = dir.path().join("broken.blend");
    std::fs::write(&broken, b"this is not a blend file").unwrap();
    let bad = job_id(&d.ok(&[
        "render",
        "submit",
        broken.to_str().unwrap(),
        "--frames",
        "1",
        "--no-wait",
    ]));
    let good = submit_command(&d, "echo ok > out/ok.txt", "1");
    let watched = d.cli(&["render", "watch", &bad.to_string()]);
    assert!(!watched.status.success());
    let show = d.ok(&["render", "show", &bad.to_string()]);
    assert!(show.contains("failed"), "{show}");
    assert!(
        show.contains("failures 3"),
        "retried up to the limit: {show}"
    );
    assert!(
        show.contains("error:"),
        "the renderer's output is attached: {show}"
    );
    watch_ok(&d, good);
    // Held, then retried: the failed task waits (and says why) until the job resumes, then
    // fails again on its own three attempts.
    let b = bad.to_string();
    d.ok(&["render", "pause", &b]);
    d.ok(&["render", "retry", &b, "--failed"]);
    let line = task_line(&d, bad, "Render[0]");
    assert!(line.contains("waiting"), "{line}");
    assert!(d.ok(&["render", "why", &b]).contains("paused"));
    d.ok(&["render", "resume", &b]);
    let watched = d.cli(&["render", "watch", &b]);
    assert!(!watched.status.success());
    assert!(task_line(&d, bad, "Render[0]").contains("failures 3"));
    // A template whose renderer this node does not have: the task fails with the reason.
    let template = dir.path().join("maya.yaml");
    std::fs::write(
        &template,
        "specificationVersion: jobtemplate-2023-09\nname: maya\nsteps:\n  - name: Render\n    script:\n      actions:\n        onRun:\n          command: no-such-renderer\n",
    )
    .unwrap();
    let maya = job_id(&d.ok(&["render", "submit", template.to_str().unwrap(), "--no-wait"]));
    let watched = d.cli(&["render", "watch", &maya.to_string()]);
    assert!(!watched.status.success());
    let line = task_line(&d, maya, "Render[0]");
    assert!(
        line.contains("failed") && line.contains("failures 3"),
        "{line}"
    );
    let show = d.ok(&["render", "show", &maya.to_string()]);
    assert!(show.contains("cannot run no-such-renderer"), "{show}");
}

#[test]
fn a_node_with_a_failing_blender_is_blocklisted_and_the_job_completes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let fake = dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("blender"),
        "#!/bin/sh\necho 'Error: CUDA error: this Blender always fails'\nexit 1\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["+x", fake.join("blender").to_str().unwrap()])
        .status()
        .unwrap();
    let _bad = Node::start(&d, dir.path(), "bad", Some(&fake));
    let _good = Node::start(&d, dir.path(), "good", None);
    d.wait_render_nodes(2);
    let scene = scene(dir.path());
    let job = job_id(&d.ok(&[
        "render",
        "submit",
        scene.to_str().unwrap(),
        "--frames",
        "1-4",
        "--no-wait",
    ]));
    // The bad node fails at once, 3 tasks of the job while the good one renders its first:
    // it is blocklisted for the job (were it the only node, the job would fail instead).
    wait_for(
        "the bad node to be blocklisted",
        Duration::from_secs(60),
        || {
            let show = d.ok(&["render", "show", &job.to_string()]);
            show.contains("blocklisted nodes:").then_some(())
        },
    );
    let why = d.ok(&["render", "why", &job.to_string()]);
    assert!(why.contains("blocklisted"), "{why}");
    watch_ok(&d, job);
}

#[test]
fn a_frozen_node_reporting_after_its_lease_expired_is_refused_and_its_output_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let mut a = Node::start(&d, dir.path(), "a", None);
    d.wait_render_nodes(1);
    let marker = dir.path().join("first");
    let cmd = format!(
        "if mkdir {m} 2>/dev/null; then sleep 8; echo late > out/f.txt; else echo on-time > out/f.txt; fi",
        m = marker.display()
    );
    let job = submit_command(&d, &cmd, "1");
    wait_for("the task to start on a", Duration::from_secs(30), || {
        marker.exists().then_some(())
    });
    let pid = a.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let _b = Node::start(&d, dir.path(), "b", None);
    watch_ok(&d, job);
    let out = dir
        .path()
        .join(format!("state/render/jobs/{job}/out/f.txt"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "on-time\n");
    // a wakes up after its command finished: whatever it says now is refused.
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let log = dir.path().join("a.log");
    wait_for(
        "a to hear that its lease is gone",
        Duration::from_secs(30),
        || {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            (l.contains("the report was refused") || l.contains("task stopped by the appliance"))
                .then_some(())
        },
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "on-time\n",
        "the late output was discarded"
    );
    assert!(task_line(&d, job, "Run[0]").contains(" done "));
    a.kill();
}

#[test]
fn the_supervisor_killed_mid_job_goes_on_without_losing_or_repeating_a_task() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than a node takes to notice the appliance is back (a QUIC handshake to a dead
    // address gives up after 10 s).
    let lease = 25;
    let d = daemon_on(dir.path(), None, lease);
    let addr = d.address();
    let _n1 = Node::start(&d, dir.path(), "n1", None);
    let _n2 = Node::start(&d, dir.path(), "n2", None);
    d.wait_render_nodes(2);
    let runs = dir.path().join("runs.log");
    let cmd = format!(
        "sleep 0.5; echo $1 > out/$1.txt; echo $1 >> {}",
        runs.display()
    );
    let job = submit_command(&d, &cmd, "1-10");
    wait_for("some frames done", Duration::from_secs(30), || {
        let n = std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count();
        (n >= 2).then_some(())
    });
    d.kill();
    let d = daemon_on(dir.path(), Some(addr), lease);
    watch_ok(&d, job);
    let mut ran: Vec<String> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    let want: Vec<String> = {
        let mut w: Vec<String> = (1..=10).map(|f| format!("{f}-{f}")).collect();
        w.sort();
        w
    };
    assert_eq!(ran, want, "every frame ran exactly once across the restart");
    for f in 1..=10 {
        let out = dir
            .path()
            .join(format!("state/render/jobs/{job}/out/{f}-{f}.txt"));
        assert!(
            out.is_file(),
            "frame {f}'s output is in the job's directory"
        );
    }
}

#[test]
fn cancel_stops_the_running_command_on_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let _n = Node::start(&d, dir.path(), "n", None);
    d.wait_render_nodes(1);
    let pidfile = dir.path().join("pid");
    let cmd = format!("echo $$ > {}; exec sleep 600", pidfile.display());
    let job = submit_command(&d, &cmd, "1");
    let pid = wait_for("the command to run", Duration::from_secs(30), || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
    });
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    d.ok(&["render", "cancel", &job.to_string()]);
    wait_for("the command to be killed", Duration::from_secs(15), || {
        let gone = std::fs::read_to_string(proc_dir.join("stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true);
        gone.then_some(())
    });
    wait_for("the job to be canceled", Duration::from_secs(15), || {
        d.ok(&["render", "list"]).contains("canceled").then_some(())
    });
}

#[test]
fn the_appliance_runs_a_render_node_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            local_node: true,
            ..Default::default()
        },
    );
    assert!(d.ok(&["status"]).contains("render node   on"));
    d.wait_render_nodes(1);
    assert!(d.ok(&["render", "nodes"]).contains("local"));
    let job = submit_command(&d, "echo hi > out/hi.txt", "1");
    watch_ok(&d, job);
    assert!(task_line(&d, job, "Run[0]").contains(" done "));
}

#[test]
fn a_job_submitted_from_inside_a_workstation_belongs_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let periphery = bin("periphery").display().to_string();
    let session = format!(
        "{periphery} status > $HOME/status.log 2>&1; \
         {periphery} render submit 'echo inside > out/w.txt' --command > $HOME/submit.log 2>&1"
    );
    let config =
        format!("[workstations]\nwindow_manager = []\nsession = [\"sh\", \"-c\", {session:?}]\n");
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some(config),
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "alice", "--no-password"]);
    let _n = Node::start(&d, dir.path(), "n", None);
    d.wait_render_nodes(1);
    d.create_ws("alice", "design", "640x480");
    d.ok(&["ws", "start", "design"]);
    let homes = dir.path().join("state/homes");
    let log = wait_for(
        "the session's submit to finish",
        Duration::from_secs(60),
        || {
            let home = std::fs::read_dir(&homes).ok()?.next()?.ok()?.path();
            let log = std::fs::read_to_string(home.join("submit.log")).ok()?;
            log.contains("outputs in").then_some((home, log))
        },
    );
    let (home, submit) = log;
    let job = job_id(&submit);
    let list = d.ok(&["render", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("job {job} ")) && l.ends_with("(alice)")),
        "the job is alice's: {list}"
    );
    let out = dir
        .path()
        .join(format!("state/render/jobs/{job}/out/w.txt"));
    assert_eq!(std::fs::read_to_string(out).unwrap(), "inside\n");
    let status = std::fs::read_to_string(home.join("status.log")).unwrap();
    assert!(
        status.contains("not available from inside a workstation"),
        "the session socket runs render jobs only: {status}"
    );
}

#[test]
fn a_tablet_queues_and_watches_jobs_of_its_own_user_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    for u in ["alice", "bob"] {
        d.ok(&["user", "add", u, "--no-password"]);
    }
    let alice = periphery_e2e::Tablet::paired(&d, &dir.path().join("ta"), "ta", "alice");
    let bob = periphery_e2e::Tablet::paired(&d, &dir.path().join("tb"), "tb", "bob");
    let _n = Node::start(&d, dir.path(), "n", None);
    d.wait_render_nodes(1);
    let submitted = alice.ok(&["render", "submit", "echo a > out/a.txt", "--command"]);
    let job = job_id(&submitted);
    assert!(
        submitted.contains("outputs in"),
        "watched to the end: {submitted}"
    );
    assert!(alice
        .ok(&["render", "list"])
        .contains(&format!("job {job} ")));
    assert!(!bob.ok(&["render", "list"]).contains(&format!("job {job} ")));
    let err = bob.fails(&["render", "show", &job.to_string()]);
    assert!(err.contains("belongs to another user"), "{err}");
    let err = bob.fails(&["render", "node-token"]);
    assert!(err.contains("administrator"), "{err}");
}

#[test]
fn a_directory_of_frames_is_assembled_into_a_video() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let _n = Node::start(&d, dir.path(), "n", None);
    d.wait_render_nodes(1);
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..6u8 {
        let f = std::fs::File::create(frames.join(format!("{i:04}.png"))).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 64, 48);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let px: Vec<u8> = (0..64 * 48)
            .flat_map(|p| [(p % 64) as u8 * 4, i * 40, 90])
            .collect();
        enc.write_header().unwrap().write_image_data(&px).unwrap();
    }
    let f = frames.to_str().unwrap();
    let err = String::from_utf8_lossy(&d.cli(&["render", "submit", f]).stderr).into_owned();
    assert!(err.contains("give --video"), "{err}");
    let job = job_id(&d.ok(&["render", "submit", f, "--video", "clip.mkv", "--fps", "12"]));
    let video = dir
        .path()
        .join(format!("state/render/jobs/{job}/out/clip.mkv"));
    assert_eq!(periphery_media::video::count_frames(&video).unwrap(), 6);
}

#[test]
fn short_tasks_go_on_to_a_queued_successor_and_each_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let _nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|n| Node::start(&d, dir.path(), n, None))
        .collect();
    d.wait_render_nodes(2);
    let seen = dir.path().join("seen");
    let cmd = format!("echo $1 >> {}; echo $1 > out/f$1.txt", seen.display());
    let job = submit_command(&d, &cmd, "1-60");
    watch_ok(&d, job);
    // Every frame ran exactly once, and its output landed.
    let mut ran: Vec<String> = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort_by_key(|f| f.split('-').next().unwrap().parse::<u32>().unwrap());
    let want: Vec<String> = (1..=60).map(|i| format!("{i}-{i}")).collect();
    assert_eq!(ran, want);
    let out = d
        .state
        .join("render/jobs")
        .join(job.to_string())
        .join("out");
    for i in 1..=60 {
        let f = std::fs::read_to_string(out.join(format!("f{i}-{i}.txt"))).unwrap();
        assert_eq!(f.trim(), format!("{i}-{i}"));
    }
    // The nodes asked ahead: tasks were queued behind running ones.
    assert!(
        d.log()
            .contains("task queued behind the node's current one"),
        "no task was queued"
    );
}
