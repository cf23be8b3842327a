//! Pairing against a real daemon: by code, by password, and every way it must refuse.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use periphery_e2e::{Daemon, DaemonOptions, Tablet};

fn setup() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("state"), DaemonOptions::default());
    d.ok(&["user", "add", "alice", "--no-password"]);
    (dir, d)
}

#[test]
fn pair_with_a_code_then_whoami_and_workstations_over_mtls() {
    let (dir, d) = setup();
    let t = Tablet::new(&dir.path().join("t1"));
    let out = t.pair(&d, &d.pair_code("alice"));
    assert!(out.contains("paired with"), "{out}");
    let who = t.ok(&["whoami"]);
    assert!(who.starts_with("user alice (user), device d-"), "{who}");
    assert_eq!(t.ok(&["workstations"]).trim(), "no workstations");
    // The appliance lists the device with the name the tablet gave.
    let devices = d.ok(&["device", "list", "--user", "alice"]);
    assert!(
        devices.contains("test-tablet") && devices.contains("active"),
        "{devices}"
    );
    // The audit log has the code and the pairing.
    let audit = d.ok(&["audit"]);
    assert!(
        audit.contains("pair-code") && audit.contains("device-paired"),
        "{audit}"
    );
}

#[test]
fn the_console_code_pairs_the_first_admin() {
    let (dir, d) = setup();
    let code = d
        .banner
        .admin_code
        .clone()
        .expect("first boot shows a code");
    let t = Tablet::new(&dir.path().join("t"));
    t.pair(&d, &code);
    assert!(t.ok(&["whoami"]).starts_with("user admin (admin)"));
}

/// `periphery-tablet pair` as bob with a password on stdin and an expected fingerprint.
fn pair_bob(t: &Tablet, d: &Daemon, fingerprint: &str, password: &str) -> std::process::Output {
    t.cli(
        &[
            "pair",
            &d.address(),
            "--user",
            "bob",
            "--password-stdin",
            "--fingerprint",
            fingerprint,
        ],
        Some(password),
    )
}

#[test]
fn pair_with_a_password_after_confirming_the_fingerprint() {
    let (dir, d) = setup();
    let out = d.cli_with_stdin(
        &["user", "add", "bob", "--password-stdin"],
        Some("correct horse\n"),
    );
    assert!(out.status.success());
    let t = Tablet::new(&dir.path().join("t"));
    let fp = d.banner.fingerprint.clone();

    // A fingerprint that is not the appliance's: the password is never sent.
    let wrong = pair_bob(&t, &d, "sha256:00112233445566778899", "correct horse\n");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not sending the password"));
    assert!(
        !d.ok(&["audit"]).contains("login-failed"),
        "a password was tried"
    );

    // A wrong password.
    let bad = pair_bob(&t, &d, &fp, "wrong horse\n");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong user name or password"));

    // The right one, with a 16-digit fingerprint prefix.
    let short = &fp[7..23];
    let ok = pair_bob(&t, &d, short, "correct horse\n");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(t.ok(&["whoami"]).starts_with("user bob (user)"));
}

#[test]
fn wrong_expired_and_reused_codes_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            config: Some("[pairing]\ncode_ttl_secs = 1\n".into()),
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "alice", "--no-password"]);
    let t = Tablet::new(&dir.path().join("t"));

    // Wrong code.
    let e = t.fails(&["pair", &d.address(), "--code", "ZZZZ-ZZZZ"]);
    assert!(e.contains("wrong pairing code"), "{e}");

    // A code whose time is over: wait until its announced lifetime has passed.
    let code = d.pair_code("alice");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let e = t.fails(&["pair", &d.address(), "--code", &code]);
    assert!(e.contains("expired"), "{e}");

    // Right slot, wrong secret: the proof fails.
    let code = d.pair_code("alice");
    let wrong_secret = format!("{}-0000", &code[..4]);
    let e = t.fails(&["pair", &d.address(), "--code", &wrong_secret]);
    assert!(e.contains("wrong pairing code"), "{e}");
    assert!(
        !t.home.join("appliance.toml").exists(),
        "a failed pairing stored credentials"
    );
}

#[test]
fn a_code_works_once() {
    let (dir, d) = setup();
    let code = d.pair_code("alice");
    Tablet::new(&dir.path().join("t1")).pair(&d, &code);
    let e = Tablet::new(&dir.path().join("t2")).fails(&["pair", &d.address(), "--code", &code]);
    assert!(e.contains("already used"), "{e}");
}

#[test]
fn the_sixth_wrong_attempt_is_rate_limited() {
    let (dir, d) = setup();
    let t = Tablet::new(&dir.path().join("t"));
    for i in 0..5 {
        let e = t.fails(&["pair", &d.address(), "--code", &format!("ZZZZ-ZZZ{i}")]);
        assert!(e.contains("wrong pairing code"), "attempt {}: {e}", i + 1);
    }
    let e = t.fails(&["pair", &d.address(), "--code", "ZZZZ-ZZZ9"]);
    assert!(e.contains("too many attempts, retry after"), "{e}");
    // Even the right code is refused from this address now.
    let e = t.fails(&["pair", &d.address(), "--code", &d.pair_code("alice")]);
    assert!(e.contains("too many attempts"), "{e}");
}

#[test]
fn a_bad_config_names_the_key_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let cfg = dir.path().join("bad.toml");
    for (text, key) in [
        ("listen = \"not-an-address\"", "`listen`"),
        ("[pairing]\nmax_failures = 0", "pairing.max_failures"),
        ("[pairing]\nmax_fialures = 3", "max_fialures"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(periphery_e2e::bin("periphery"))
            .arg("--state-dir")
            .arg(&state)
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    assert!(
        !state.join("state.redb").exists(),
        "a bad config created state"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            extra: vec!["--log-format".into(), "json".into()],
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "carol", "--no-password"]);
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        assert!(
            l.starts_with('{') && l.ends_with('}') && l.contains("\"level\""),
            "{l}"
        );
    }
}
