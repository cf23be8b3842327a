//! Persistence to a real S3-compatible server (`s3s-fs` on loopback, started by each test):
//! a large mixed tree round trip, here and with the restic CLI; the cost of a one-byte
//! change; corrupt and truncated packs in the bucket; refused credentials, a missing bucket
//! and a wrong password; and an outage, which delays snapshots and loses nothing.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_same, describe, files, make_tree, noise, restic, PASSWORD, S3};
use periphery_persist::engine::{Engine, Journal, Settings, TreeRecord, TreeStatus};
use periphery_persist::schedule::Policy;
use periphery_persist::{OpenError, Repo, RestoreError, S3Target, Target};

/// Bytes stored under `dir` (the server's side of what was uploaded).
fn stored(dir: &std::path::Path) -> u64 {
    files(dir).values().sum()
}

#[test]
fn a_thousand_mixed_files_round_trip_through_s3_here_and_with_restic() {
    let s3 = S3::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let n = make_tree(
        &src,
        11,
        990,
        &[100 << 20, 12 << 20, 5 << 20, 1 << 20, 300 << 10],
    );
    assert_eq!(n, 1000);
    let (repo, made) = Repo::open_or_init(&s3.target("office/one"), PASSWORD).unwrap();
    assert!(made);
    let first = repo.persist("home/alice/desk", &src).unwrap();
    assert_eq!(first.files as usize, n);

    let back = work.path().join("back");
    repo.restore(&first.id, None, &back).unwrap();
    let want = describe(&src);
    assert_same(&describe(&back), &want);

    // One byte of the 100 MB file: the server stores less than 4 MB more, and the backend's
    // own counter says as much.
    let mut big = std::fs::read(src.join("large0.bin")).unwrap();
    big[57 << 20] ^= 0x10;
    std::fs::write(src.join("large0.bin"), &big).unwrap();
    drop(big);
    let on_server = stored(&s3.dir("office/one"));
    let counted = repo.meter().uploaded.load(Ordering::Relaxed);
    let second = repo.persist("home/alice/desk", &src).unwrap();
    let server_added = stored(&s3.dir("office/one")) - on_server;
    let meter_added = repo.meter().uploaded.load(Ordering::Relaxed) - counted;
    println!("one changed byte of 100 MB: {server_added} bytes stored, {meter_added} uploaded");
    assert!(server_added < 4_000_000, "{server_added} bytes stored");
    assert!(meter_added < 4_000_000, "{meter_added} bytes uploaded");
    assert_eq!(server_added, meter_added, "the counter sees every upload");

    // The restic CLI lists both snapshots, checks the repository, and restores the same
    // bytes and metadata.
    let (url, env) = s3.restic_repo("office/one");
    let json = restic(&url, &env, &["snapshots", "--json"]);
    assert!(
        json.contains(&first.id) && json.contains(&second.id),
        "{json}"
    );
    restic(&s3.restic_local("office/one"), &[], &["check"]);
    let by_restic = work.path().join("by-restic");
    let dest = by_restic.to_str().unwrap();
    restic(&url, &env, &["restore", &second.id, "--target", dest]);
    assert_same(
        &describe(&by_restic.join("home/alice/desk")),
        &describe(&src),
    );
}

#[test]
fn corrupt_and_truncated_packs_in_the_bucket_are_named_and_never_restored() {
    let s3 = S3::start();
    let work = tempfile::tempdir().unwrap();
    let target = s3.target("r");
    let (repo, _) = Repo::open_or_init(&target, PASSWORD).unwrap();
    let mut snaps = vec![];
    let mut packs = vec![];
    for i in 0..2u64 {
        // Each snapshot writes packs of its own: new data.
        let src = work.path().join(format!("src{i}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("data.bin"), noise(100 + i, 3 << 20)).unwrap();
        let before = files(&s3.dir("r/data"));
        snaps.push(repo.persist(&format!("render/{i}"), &src).unwrap());
        let new: Vec<_> = files(&s3.dir("r/data"))
            .into_iter()
            .filter(|(p, _)| !before.contains_key(p))
            .collect();
        assert!(!new.is_empty(), "snapshot {i} wrote no pack");
        packs.push(new.into_iter().max_by_key(|f| f.1).unwrap());
    }
    // The first pack: one byte flipped. The second: cut to half its size.
    let (flipped, size) = &packs[0];
    let mut bytes = std::fs::read(flipped).unwrap();
    bytes[*size as usize / 2] ^= 0x40;
    std::fs::write(flipped, &bytes).unwrap();
    let (cut, size) = &packs[1];
    let bytes = std::fs::read(cut).unwrap();
    std::fs::write(cut, &bytes[..*size as usize / 2]).unwrap();
    let name = |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap()[..8].to_owned();

    let (repo, _) = Repo::open_or_init(&target, PASSWORD).unwrap();
    let found = repo.check(true).unwrap_err().to_string();
    println!("check: {found}");
    assert!(found.contains(&name(flipped)), "{found}");
    assert!(found.contains(&name(cut)), "{found}");
    for (i, snap) in snaps.iter().enumerate() {
        let out = work.path().join(format!("out{i}"));
        match repo.restore(&snap.id, None, &out) {
            Err(RestoreError::Failed(why)) => {
                println!("restore {i}: {why}");
                match i {
                    0 => assert!(why.contains("corrupt"), "{why}"),
                    _ => assert!(why.contains(&name(cut)), "{why}"),
                }
            }
            other => panic!("a damaged pack restored: {other:?}"),
        }
    }
    // The restic CLI agrees.
    let out = common::restic_output(&s3.restic_local("r"), &[], &["check", "--read-data"]);
    assert!(
        !out.status.success(),
        "restic check passed a damaged repository"
    );
}

#[test]
fn refused_keys_a_missing_bucket_and_a_wrong_password_are_clear_and_write_nothing() {
    let mut s3 = S3::start();
    let bad_secret = match s3.target("p") {
        Target::S3(t) => Target::S3(S3Target {
            secret_key: "not-the-secret".into(),
            ..t
        }),
        Target::Local(_) => unreachable!(),
    };
    match Repo::open_or_init(&bad_secret, PASSWORD) {
        Err(e @ OpenError::Refused { .. }) => println!("bad key: {e}"),
        other => panic!("{other:?}"),
    }
    let no_bucket = match s3.target("p") {
        Target::S3(t) => Target::S3(S3Target {
            bucket: "nope".into(),
            ..t
        }),
        Target::Local(_) => unreachable!(),
    };
    match Repo::open_or_init(&no_bucket, PASSWORD) {
        Err(e @ OpenError::NoBucket { .. }) => println!("no bucket: {e}"),
        other => panic!("{other:?}"),
    }
    assert!(files(s3.root.path()).is_empty(), "something was written");
    assert!(!s3.root.path().join("nope").exists());

    Repo::open_or_init(&s3.target("p"), PASSWORD).unwrap();
    let before = files(s3.root.path());
    match Repo::open_or_init(&s3.target("p"), "guess") {
        Err(e @ OpenError::WrongPassword(_)) => println!("wrong password: {e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(files(s3.root.path()), before);

    s3.stop();
    match Repo::open_or_init(&s3.target("p"), PASSWORD) {
        Err(e @ OpenError::Unreachable { .. }) => println!("server down: {e}"),
        other => panic!("{other:?}"),
    }
}

/// Tree records kept in memory, as the appliance keeps them in its database.
#[derive(Default, Clone)]
struct MemJournal(Arc<Mutex<Vec<(String, TreeRecord)>>>);

impl Journal for MemJournal {
    fn save(&self, tree: &str, rec: &TreeRecord) -> Result<(), String> {
        self.0.lock().unwrap().push((tree.to_owned(), rec.clone()));
        Ok(())
    }
    fn remove(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Waits until `cond` holds for the tree's status; panics with the last status after `secs`.
fn wait_for(
    engine: &Engine,
    secs: u64,
    what: &str,
    cond: impl Fn(&TreeStatus) -> bool,
) -> TreeStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = engine.status(|_| true).pop();
        if let Some(st) = st.as_ref().filter(|s| cond(s)) {
            return st.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_outage_shows_the_error_and_backlog_then_the_snapshot_completes() {
    let mut s3 = S3::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("home");
    make_tree(&src, 5, 50, &[2 << 20]);
    let (repo, _) = Repo::open_or_init(&s3.target("o"), PASSWORD).unwrap();
    let journal = MemJournal::default();
    let settings = Settings {
        policy: Policy {
            quiet: Duration::from_millis(200),
            max_wait: Duration::from_secs(2),
            backoff_min: Duration::from_millis(300),
            backoff_max: Duration::from_secs(2),
            retention_every: Duration::from_secs(3600),
        },
        ..Settings::default()
    };
    let engine = Engine::start(repo, Box::new(journal.clone()), settings, vec![]);
    engine.add("home/bob/ws", &src);
    let first = wait_for(&engine, 60, "first snapshot", |t| {
        t.last.is_some() && !t.dirty
    });
    assert_eq!(first.last_error, None);

    // The server goes away; the user keeps working.
    s3.stop();
    std::fs::write(src.join("new-work.txt"), noise(9, 300_000)).unwrap();
    std::fs::write(src.join("d0/more.txt"), b"more").unwrap();
    let down = wait_for(&engine, 90, "the error and the backlog", |t| {
        t.last_error.is_some() && t.failures >= 2 && t.pending_files >= 2
    });
    println!("while down: {down:?}");
    assert!(down.pending_bytes >= 300_000, "{down:?}");
    assert_eq!(
        down.last, first.last,
        "the last good snapshot stays the last"
    );
    assert!(
        src.join("new-work.txt").exists(),
        "nothing local is touched"
    );
    assert!(
        journal
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| r.dirty && r.last_error.is_some()),
        "a restart would know the tree is dirty and why"
    );

    // Back up: the next attempt completes, and holds the new work.
    s3.restart();
    let done = wait_for(&engine, 90, "the snapshot after the outage", |t| {
        t.last != first.last && t.last_error.is_none() && !t.dirty
    });
    assert_eq!(done.failures, 0);
    let back = work.path().join("back");
    engine.restore(&done.last.unwrap().id, None, &back).unwrap();
    assert_same(&describe(&back), &describe(&src));
    engine.stop();
}
