//! Crash safety: the persist process (`periphery-persist`) is killed with SIGKILL at 30
//! random moments while it uploads to a real S3-compatible server. After each kill the
//! restic CLI checks the repository clean; at the end a run completes and the restore is
//! byte-identical.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{assert_same, describe, make_tree, noise, restic, PASSWORD, S3};

fn persist_cmd(s3: &S3, tree: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_periphery-persist"));
    c.arg("s3://bucket/k")
        .args(["--endpoint", &format!("http://127.0.0.1:{}", s3.port)])
        .args(["--region", "us-east-1", "persist", tree])
        .arg(dir)
        .env("PERIPHERY_REPO_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn killed_at_thirty_random_moments_the_repository_stays_valid() {
    let s3 = S3::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("home");
    make_tree(&src, 3, 300, &[12 << 20, 6 << 20]);
    let (url, env) = s3.restic_repo("k");

    // One whole run first: how long an upload of this much takes here.
    let t0 = Instant::now();
    let out = persist_cmd(&s3, "home/carol/ws", &src).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = t0.elapsed();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("a whole run takes {whole:?}; kill moments from seed {seed}");
    let mut x = seed | 1;
    let mut killed_running = 0;
    for round in 0..30u64 {
        // New data each round, so every run has something to upload.
        std::fs::write(src.join("large0.bin"), noise(1000 + round, 12 << 20)).unwrap();
        std::fs::write(src.join(format!("d{}/round{round}", round % 7)), b"x").unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = whole.mul_f64((x % 1000) as f64 / 1000.0);
        let mut child = persist_cmd(&s3, "home/carol/ws", &src).spawn().unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        // SIGKILL: no chance to clean up.
        let _ = child.kill();
        let status = child.wait().unwrap();
        println!("round {round}: killed after {at:?} ({status})");
        // restic's own check passes after every kill (unreferenced packs are a hint, not an
        // error).
        restic(&s3.restic_local("k"), &[], &["check"]);
    }
    assert!(
        killed_running >= 20,
        "only {killed_running} of 30 kills hit a running upload"
    );

    // The next run continues and completes; what it stored restores byte for byte.
    let out = persist_cmd(&s3, "home/carol/ws", &src).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restic(&s3.restic_local("k"), &[], &["check", "--read-data"]);
    let back = work.path().join("back");
    let dest = back.to_str().unwrap();
    restic(&url, &env, &["restore", "latest", "--target", dest]);
    assert_same(&describe(&back.join("home/carol/ws")), &describe(&src));
}
