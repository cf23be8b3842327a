//! Persistence through the daemon: a workstation's home persists to the embedded default
//! repository and restores through the CLI; the recovery key is shown once and opens the
//! repository with the restic CLI; `storage set` refuses a missing bucket and changes
//! nothing, then moves persistence to a real S3-compatible server (s3s-fs).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use periphery_e2e::{wait_for, Daemon, DaemonOptions};

const CONFIG: &str = "[files]\nquiet_secs = 1\nmax_wait_secs = 2\nscan_every_secs = 2\n";

/// The directory `files status` gives for `tree`.
fn dir_of(d: &Daemon, tree: &str) -> Option<String> {
    let out = d.ok(&["files", "status", "--user", "alice"]);
    out.lines()
        .find(|l| l.starts_with(tree))
        .and_then(|l| l.split_once("  (")?.1.strip_suffix(')').map(str::to_owned))
}

/// A daemon with `config`, user alice and her running workstation desk; and the directory
/// of its home tree, once persistence follows it.
fn alice_desk(state: &std::path::Path, opts: DaemonOptions) -> (Daemon, String) {
    let d = Daemon::start(state, opts);
    d.ok(&["user", "add", "alice", "--no-password"]);
    d.create_ws("alice", "desk", "1024x768");
    // Its home exists once it first runs.
    d.ok(&["ws", "start", "alice/desk"]);
    let home = wait_for("the home tree", Duration::from_secs(30), || {
        dir_of(&d, "home/alice/desk")
    });
    (d, home)
}

struct S3s(Child);

impl Drop for S3s {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_home_persists_restores_and_moves_to_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (d, home) = alice_desk(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some(CONFIG.into()),
            ..DaemonOptions::default()
        },
    );
    let tree = "home/alice/desk";
    std::fs::write(format!("{home}/notes.txt"), b"persist me").unwrap();

    // Forced and waited for: a snapshot that holds the file.
    let out = d.ok(&["files", "persist", "--now", "--wait", "--user", "alice"]);
    assert!(out.contains(&format!("{tree}: snapshot")), "{out}");
    let snaps = d.ok(&["files", "snapshots", "--user", "alice"]);
    assert!(snaps.contains(tree), "{snaps}");
    let status = d.ok(&["files", "status", "--user", "alice"]);
    assert!(status.contains("pending        nothing"), "{status}");

    // Restored through the CLI: the same bytes.
    let to = dir.path().join("restored");
    let out = d.ok(&[
        "files",
        "restore",
        "--user",
        "alice",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.contains("restored home/alice/desk"), "{out}");
    assert_eq!(std::fs::read(to.join("notes.txt")).unwrap(), b"persist me");
    // Not into a directory that holds something.
    let again = d.cli(&[
        "files",
        "restore",
        "--user",
        "alice",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // The recovery key, once; with it the restic CLI reads the embedded repository.
    let key = d.ok(&["storage", "recovery-key"]).trim().to_owned();
    assert_eq!(key.len(), 39, "{key}");
    let twice = d.cli(&["storage", "recovery-key"]);
    assert!(!twice.status.success(), "the key was shown twice");
    let repo = d.state.join("repository");
    let listed = Command::new("restic")
        .args(["--no-cache", "-r"])
        .arg(&repo)
        .args(["snapshots", "--json"])
        .env("RESTIC_PASSWORD", &key)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("home/alice/desk"));

    // An S3 server; a missing bucket is refused and nothing changes.
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("bucket")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _s3 = S3s(Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "AK", "--secret-key", "SK"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs is installed (scripts/setup.sh)"));
    wait_for("s3s-fs", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let set = |location: &str| {
        let mut c = Command::new(periphery_e2e::bin("periphery"));
        c.arg("--state-dir")
            .arg(&d.state)
            .args(["storage", "set", location, "--endpoint", &endpoint])
            .args(["--region", "us-east-1"])
            .env("AWS_ACCESS_KEY_ID", "AK")
            .env("AWS_SECRET_ACCESS_KEY", "SK")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let refused = set("s3://nope/office");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("nope") && why.contains("does not exist"),
        "{why}"
    );
    assert!(
        !root.join("nope").exists(),
        "the missing bucket was written to"
    );
    let show = d.ok(&["storage", "show"]);
    assert!(show.contains("embedded default"), "{show}");

    // The real bucket: a new repository, its key shown once, and the home persisted there.
    let moved = set("s3://bucket/office");
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let said = String::from_utf8_lossy(&moved.stdout);
    assert!(
        said.contains("a new repository") && said.contains("recovery key"),
        "{said}"
    );
    assert!(!said.contains("SK"), "the secret was printed");
    let out = d.ok(&["files", "persist", "--now", "--wait", "--user", "alice"]);
    assert!(out.contains(&format!("{tree}: snapshot")), "{out}");
    assert!(
        root.join("bucket/office/snapshots")
            .read_dir()
            .unwrap()
            .count()
            >= 1
    );
    let log = d.log();
    if let Some(at) = log.find("SK\"") {
        panic!(
            "the secret reached the log: {}",
            &log[at.saturating_sub(400)..at + 10]
        );
    }
}

#[test]
fn a_killed_daemon_resumes_its_pending_changes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Changes wait a minute: the daemon is killed while one is pending.
    let opts = DaemonOptions {
        config: Some("[files]\nquiet_secs = 60\nmax_wait_secs = 120\n".into()),
        ..DaemonOptions::default()
    };
    let (d, home) = alice_desk(&state, opts.clone());
    let tree = "home/alice/desk";
    let out = d.ok(&["files", "persist", "--now", "--wait", "--user", "alice"]);
    assert!(out.contains("snapshot"), "{out}");
    std::fs::write(format!("{home}/late.txt"), b"written just before the crash").unwrap();
    wait_for("the change seen", Duration::from_secs(20), || {
        let s = d.ok(&["files", "status", "--user", "alice"]);
        (s.contains("pending") && !s.contains("pending        nothing")).then_some(())
    });
    d.kill();

    // After the restart the tree is still dirty (from the store, and the scan), and a
    // forced snapshot holds the file.
    let d = Daemon::start(&state, opts);
    let s = wait_for("the tree back", Duration::from_secs(30), || {
        let s = d.ok(&["files", "status", "--user", "alice"]);
        s.contains(tree).then_some(s)
    });
    assert!(!s.contains("pending        nothing"), "{s}");
    let out = d.ok(&["files", "persist", "--now", "--wait", "--user", "alice"]);
    assert!(out.contains("snapshot"), "{out}");
    let to = dir.path().join("back");
    d.ok(&[
        "files",
        "restore",
        "--user",
        "alice",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(to.join("late.txt")).unwrap(),
        b"written just before the crash"
    );
}
