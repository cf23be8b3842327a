//! Workstations through the daemon: the admin CLI, tablets over QUIC, supervision, and a
//! supervisor killed while workstations run.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::time::Duration;

use periphery_e2e::{wait_for, Daemon, DaemonOptions, Tablet};
use periphery_workstation::procs;

/// Live Xvfb processes serving this daemon's state directory.
fn xvfbs(d: &Daemon) -> Vec<i32> {
    let needle = d.state.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| procs::alive(*p) && procs::command_name(*p).as_deref() == Some("Xvfb"))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The pid of a role in `ws show` output.
fn pid_of(show: &str, role: &str) -> Option<i32> {
    let line = show.lines().find(|l| l.trim_start().starts_with("pids"))?;
    line.split(',')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("pids")
                .trim()
                .strip_prefix(role)
        })
        .and_then(|p| p.trim().parse().ok())
}

fn daemon(dir: &std::path::Path) -> Daemon {
    let d = Daemon::start(&dir.join("state"), DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    d.ok(&["user", "add", "bob", "--no-password"]);
    d
}

#[test]
fn the_admin_runs_a_workstation_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let out = d.create_ws("alice", "design", "1280x720,1024x768");
    assert!(out.contains("alice/design  xvfb  stopped"), "{out}");
    let show = d.ok(&["ws", "start", "design"]);
    assert!(show.contains("running"), "{show}");
    assert!(show.contains("monitor 1  1024x768+1280+0"), "{show}");
    let xvfb = pid_of(&show, "Xvfb").expect("an Xvfb pid");
    assert!(
        show.contains("MiB resident") && show.contains("s used"),
        "{show}"
    );
    assert_eq!(xvfbs(&d), vec![xvfb]);

    // Monitors at run time.
    let show = d.ok(&["ws", "monitor", "add", "design", "800x600"]);
    assert!(show.contains("monitor 2  800x600+2304+0"), "{show}");
    let show = d.ok(&["ws", "monitor", "remove", "design", "2"]);
    assert!(!show.contains("monitor 2"), "{show}");

    // A screenshot is a PNG of the monitor, once the session has drawn something.
    let png = dir.path().join("shot.png");
    let (w, h) = wait_for("a non-blank screenshot", Duration::from_secs(30), || {
        d.ok(&[
            "ws",
            "screenshot",
            "design",
            "--monitor",
            "0",
            png.to_str().unwrap(),
        ]);
        let (w, h, rgb) = periphery_workstation::png::decode_rgb(&std::fs::read(&png).ok()?)?;
        rgb.iter().any(|b| *b > 200).then_some((w, h))
    });
    assert_eq!((w, h), (1280, 720));

    // Stop: nothing is left of it.
    let show = d.ok(&["ws", "stop", "design"]);
    assert!(show.contains("stopped"), "{show}");
    assert!(procs::tree(xvfb).is_empty(), "Xvfb survived");
    assert!(xvfbs(&d).is_empty());
    let audit = d.ok(&["audit"]);
    for e in ["ws-create", "ws-start", "ws-stop"] {
        assert!(audit.contains(e), "{e} missing from the audit log");
    }
    d.ok(&["ws", "delete", "design"]);
    assert!(d.ok(&["ws", "list"]).trim().is_empty());
}

#[test]
fn bad_requests_get_clear_errors_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    for (args, want) in [
        (vec!["--backend", "vmware"], "unknown backend 'vmware'"),
        (vec!["--monitors", "5000x2000,5000x2000"], "do not fit"),
        (
            vec!["--monitors", "800x600,800x600,800x600,800x600,800x600"],
            "at most 4 allowed",
        ),
        (vec!["--monitors", "wide"], "not a monitor size"),
        (
            vec!["--backend", "qemu", "--image", "/nonexistent/base.qcow2"],
            "base image /nonexistent/base.qcow2 not found",
        ),
        (vec!["--backend", "qemu"], "needs --image"),
    ] {
        let mut full = vec!["ws", "create", "--user", "alice", "--name", "x"];
        full.extend(args);
        let out = d.cli(&full);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let out = d.cli(&["ws", "create", "--user", "nobody", "--name", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("user 'nobody' not found"));
    assert!(
        d.ok(&["ws", "list"]).trim().is_empty(),
        "something was created"
    );
    assert!(
        !d.state.join("homes").exists()
            || std::fs::read_dir(d.state.join("homes"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn tablets_use_only_their_own_users_workstations() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    d.create_ws("alice", "design", "1024x768");
    d.create_ws("bob", "cad", "1024x768");
    d.create_ws("bob", "design", "1024x768");
    let alice = Tablet::new(&dir.path().join("alice"));
    alice.pair(&d, &d.pair_code("alice"));

    // She sees hers only.
    let list = alice.ok(&["workstations"]);
    assert!(list.contains("design"), "{list}");
    assert!(!list.contains("cad"), "{list}");
    assert_eq!(list.lines().count(), 1, "{list}");

    // She starts and stops hers; "design" is hers, not bob's design.
    assert!(alice.ok(&["start", "design"]).contains("running"));
    let all = d.ok(&["ws", "list"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with("alice/design") && l.contains("running")),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("bob/design") && l.contains("stopped")),
        "{all}"
    );
    assert!(alice.ok(&["stop", "design"]).contains("stopped"));

    // Bob's are out of reach, by name or by user/name.
    let e = alice.fails(&["start", "cad"]);
    assert!(e.contains("no workstation 'cad'"), "{e}");
    let e = alice.fails(&["start", "bob/cad"]);
    assert!(e.contains("only use your own"), "{e}");
    d.ok(&["ws", "start", "bob/cad"]);
    let e = alice.fails(&["stop", "bob/cad"]);
    assert!(e.contains("only use your own"), "{e}");
    let e = alice.fails(&["stop", "cad"]);
    assert!(e.contains("no workstation 'cad'"), "{e}");
    assert!(d.ok(&["ws", "show", "bob/cad"]).contains("running"));
    d.ok(&["ws", "stop", "bob/cad"]);
    assert!(d
        .ok(&["ws", "list"])
        .lines()
        .all(|l| !l.contains("running")));

    // The admin must say which "design" is meant.
    let out = d.cli(&["ws", "start", "design"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ambiguous"));
}

#[test]
fn a_dead_workstation_is_restarted_and_its_state_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    d.create_ws("alice", "design", "1024x768");
    let show = d.ok(&["ws", "start", "alice/design"]);
    let xvfb = pid_of(&show, "Xvfb").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", &xvfb.to_string()])
        .status();
    // Within the backoff the state shows what happened.
    let why = wait_for("the restarting state", Duration::from_secs(10), || {
        let show = d.ok(&["ws", "show", "design"]);
        show.contains("restarting").then_some(show)
    });
    assert!(
        why.contains("Xvfb exited") && why.contains("signal: 9"),
        "{why}"
    );
    // Then it runs again, with a new Xvfb and only that one.
    let new = wait_for("the restarted workstation", Duration::from_secs(30), || {
        let show = d.ok(&["ws", "show", "design"]);
        let pid = pid_of(&show, "Xvfb")?;
        (show.contains("running") && pid != xvfb).then_some(pid)
    });
    assert_eq!(xvfbs(&d), vec![new]);
}

#[test]
fn after_a_supervisor_sigkill_both_workstations_run_again_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = daemon(dir.path());
    for (u, n) in [("alice", "one"), ("bob", "two")] {
        d.create_ws(u, n, "1024x768");
        d.ok(&["ws", "start", n]);
    }
    let before = xvfbs(&d);
    assert_eq!(before.len(), 2);
    d.kill();
    // The workstations' processes outlive the supervisor...
    let d = Daemon::start(&state, DaemonOptions::default());
    // ...and the new one reaps them before it starts its own.
    wait_for("both workstations running", Duration::from_secs(60), || {
        let list = d.ok(&["ws", "list"]);
        (list.lines().filter(|l| l.contains("running")).count() == 2).then_some(())
    });
    let now = xvfbs(&d);
    assert_eq!(now.len(), 2, "duplicate or missing Xvfb: {now:?}");
    for old in before {
        assert!(
            !now.contains(&old) && !procs::alive(old),
            "an Xvfb of the killed supervisor survives"
        );
    }
    assert!(d.log().contains("reaping processes left by an earlier run"));
}

#[test]
fn a_qemu_workstation_runs_through_the_daemon() {
    use periphery_workstation::qemu::{host_kernel, static_busybox};
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let initrd = dir.path().join("guest.cpio");
    let init = "mount -t proc proc /proc\nmount -t devtmpfs dev /dev\necho GUEST-READY > /dev/ttyS0\nexec sh </dev/tty1 >/dev/tty1 2>&1\n";
    let bb = std::fs::read(static_busybox().expect("busybox-static")).unwrap();
    std::fs::write(&initrd, periphery_workstation::initramfs::busybox(bb, init)).unwrap();
    let kernel = host_kernel().expect("a kernel in /boot");
    d.ok(&[
        "ws",
        "create",
        "--user",
        "alice",
        "--name",
        "vm",
        "--backend",
        "qemu",
        "--memory",
        "256M",
        "--cpus",
        "1",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ]);
    let show = d.ok(&["ws", "start", "vm"]);
    assert!(show.contains("running"), "{show}");
    assert!(show.contains("accelerator"), "{show}");
    let qemu = pid_of(&show, "qemu").expect("a qemu pid");
    // Monitors of a VM are its own.
    let out = d.cli(&["ws", "monitor", "add", "vm", "800x600"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("one monitor"));
    // The console, once the guest printed on it.
    let png = dir.path().join("vm.png");
    wait_for("the guest console", Duration::from_secs(120), || {
        d.ok(&["ws", "screenshot", "vm", png.to_str().unwrap()]);
        let (_, _, rgb) = periphery_workstation::png::decode_rgb(&std::fs::read(&png).ok()?)?;
        (rgb.iter().filter(|b| **b > 100).count() > 1000).then_some(())
    });
    // The busybox guest ignores the ACPI power button: a graceful stop waits for the configured
    // time, a forced one does not.
    d.ok(&["ws", "stop", "vm", "--force"]);
    assert!(!procs::alive(qemu), "QEMU survived the stop");
}
