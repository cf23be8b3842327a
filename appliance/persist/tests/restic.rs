//! A tree persisted to a local repository and restored, by this crate and by the standard
//! restic CLI (Debian's, installed by `scripts/setup.sh`): the same bytes and metadata.
//! Wrong passwords and corrupt packs are refused with clear errors.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use periphery_persist::{OpenError, Repo, RestoreError, Target};

mod common;
use common::{describe, files, make_tree, noise, restic, PASSWORD};

#[test]
fn a_tree_restores_byte_identical_here_and_with_the_restic_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (dir.path().join("home"), dir.path().join("repo"));
    let n = make_tree(&src, 1, 200, &[20 << 20]);
    let target = Target::Local(repo_dir.clone());
    let (repo, made) = Repo::open_or_init(&target, PASSWORD).unwrap();
    assert!(made);
    let first = repo.persist("home/alice", &src).unwrap();
    assert_eq!(first.tree, "home/alice");
    assert_eq!(first.files as usize, n);

    // Restored here: the same tree.
    let back = dir.path().join("back");
    repo.restore(&first.id[..8], None, &back).unwrap();
    assert_eq!(describe(&back), describe(&src));
    // A sub-directory alone.
    let sub = dir.path().join("sub");
    repo.restore(&first.id, Some("d1/e2"), &sub).unwrap();
    assert_eq!(describe(&sub), describe(&src.join("d1/e2")));

    // One byte changed in the 20 MB file: the next snapshot adds a chunk or two, not the
    // file; both are listed.
    let mut big = std::fs::read(src.join("large0.bin")).unwrap();
    big[10 << 20] ^= 1;
    std::fs::write(src.join("large0.bin"), &big).unwrap();
    let second = repo.persist("home/alice", &src).unwrap();
    assert!(
        second.added < 4 << 20,
        "one changed byte added {} bytes",
        second.added
    );
    let listed = repo.snapshots(Some("home/alice")).unwrap();
    assert_eq!(
        listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
        [&first.id, &second.id]
    );
    assert!(repo.snapshots(Some("home/bob")).unwrap().is_empty());
    repo.check(true).unwrap();

    // The restic CLI opens it with the password, lists both, checks it, and restores the
    // same bytes: no lock-in.
    let repo_str = repo_dir.to_str().unwrap();
    let json = restic(repo_str, &[], &["snapshots", "--json"]);
    assert!(
        json.contains(&first.id) && json.contains(&second.id),
        "{json}"
    );
    restic(repo_str, &[], &["check", "--read-data"]);
    let by_restic = dir.path().join("by-restic");
    restic(
        repo_str,
        &[],
        &[
            "restore",
            &second.id,
            "--target",
            by_restic.to_str().unwrap(),
        ],
    );
    assert_eq!(describe(&by_restic.join("home/alice")), describe(&src));
}

#[test]
fn a_wrong_password_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::Local(dir.path().join("repo"));
    Repo::open_or_init(&target, PASSWORD).unwrap();
    let before = files(&dir.path().join("repo"));
    match Repo::open_or_init(&target, "guess") {
        Err(OpenError::WrongPassword(t)) => assert!(t.contains("repo"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(files(&dir.path().join("repo")), before);
}

#[test]
fn a_corrupt_pack_is_named_by_check_and_never_restored_as_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (dir.path().join("src"), dir.path().join("repo"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), noise(3, 4 << 20)).unwrap();
    let target = Target::Local(repo_dir.clone());
    let (repo, _) = Repo::open_or_init(&target, PASSWORD).unwrap();
    let snap = repo.persist("render/1", &src).unwrap();

    // Flip one byte in the middle of the largest pack: same size, wrong contents.
    let (pack, size) = files(&repo_dir.join("data"))
        .into_iter()
        .max_by_key(|f| f.1)
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[size as usize / 2] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap().to_owned();

    let (repo, _) = Repo::open_or_init(&target, PASSWORD).unwrap();
    repo.check(false)
        .expect("the structure is intact: only reading the data finds it");
    let found = repo.check(true).unwrap_err().to_string();
    assert!(found.contains(&name[..8]), "{found}");

    let out = dir.path().join("out");
    match repo.restore(&snap.id, None, &out) {
        Err(RestoreError::Failed(why)) => assert!(!why.is_empty()),
        other => panic!("a corrupt pack restored: {other:?}"),
    }
}

#[test]
fn retention_forgets_past_the_policy_and_prunes_what_only_they_used() {
    let dir = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (dir.path().join("src"), dir.path().join("repo"));
    std::fs::create_dir_all(&src).unwrap();
    let target = Target::Local(repo_dir.clone());
    let (repo, _) = Repo::open_or_init(&target, PASSWORD).unwrap();
    let mut ids = vec![];
    for i in 0..5u64 {
        // Each snapshot holds only its own data.
        std::fs::write(src.join("data.bin"), noise(50 + i, 1 << 20)).unwrap();
        ids.push(repo.persist("home/dana/ws", &src).unwrap().id);
    }
    repo.persist("render/dana/1", &src).unwrap();
    let before: u64 = files(&repo_dir.join("data")).values().sum();
    let keep = periphery_persist::Keep {
        last: 2,
        daily: 0,
        weekly: 0,
    };
    let done = repo.retention(&keep).unwrap();
    assert_eq!(
        done.forgotten, 3,
        "5 snapshots of one tree, keep 2; the other tree's one stays"
    );
    let left: Vec<String> = repo
        .snapshots(Some("home/dana/ws"))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, ids[3..].to_vec());
    assert_eq!(repo.snapshots(Some("render/dana/1")).unwrap().len(), 1);
    let after: u64 = files(&repo_dir.join("data")).values().sum();
    assert!(
        after + (2 << 20) < before,
        "the forgotten data stays: {before} -> {after} bytes"
    );
    repo.check(true).unwrap();
    restic(repo_dir.to_str().unwrap(), &[], &["check", "--read-data"]);
}
