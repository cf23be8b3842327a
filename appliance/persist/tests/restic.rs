//! A tree persisted to a local repository and restored, by this crate and by the standard
//! restic CLI (Debian's, installed by `scripts/setup.sh`): the same bytes and metadata.
//! Wrong passwords and corrupt packs are refused with clear errors.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use periphery_persist::{OpenError, Repo, RestoreError, Target};

const PASSWORD: &str = "correct horse battery staple";

/// Bytes that do not compress or repeat: `n` of them from `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree of many small files, a large one, nested and empty directories, a symlink, and
/// several modes and times.
fn make_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    for i in 0..200 {
        std::fs::write(dir.join(format!("sub/f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(dir.join("big.bin"), noise(7, 20 << 20)).unwrap();
    std::fs::write(dir.join("sub/deep/empty-file"), b"").unwrap();
    std::fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("secret"), b"mine").unwrap();
    std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("sub/f1.txt", dir.join("link")).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(dir.join("secret"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// What a tree is, path by path: kind, mode, mtime (files), contents or link target.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                dirs.push(p.clone());
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                let hash = blake(&std::fs::read(&p).unwrap());
                format!("file {:o} {} {hash}", m.mode() & 0o7777, m.mtime())
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A cheap content fingerprint (the test compares trees, it does not need a crypto hash).
fn blake(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{}:{h:016x}", b.len())
}

fn restic(repo: &Path, pwfile: &Path, args: &[&str]) -> String {
    let out = Command::new("restic")
        .arg("-r")
        .arg(repo)
        .arg("--password-file")
        .arg(pwfile)
        .args(["--no-cache", "--quiet"])
        .args(args)
        .output()
        .expect("restic is installed (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `dir`, with its size.
fn files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                out.insert(e.path(), e.metadata().unwrap().len());
            }
        }
    }
    out
}

#[test]
fn a_tree_restores_byte_identical_here_and_with_the_restic_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (dir.path().join("home"), dir.path().join("repo"));
    make_tree(&src);
    let target = Target::Local(repo_dir.clone());
    let (repo, made) = Repo::open_or_init(&target, PASSWORD).unwrap();
    assert!(made);
    let first = repo.persist("home/alice", &src).unwrap();
    assert_eq!(first.tree, "home/alice");
    assert_eq!(first.files, 205, "200 small, 4 others and the symlink");

    // Restored here: the same tree.
    let back = dir.path().join("back");
    repo.restore(&first.id[..8], None, &back).unwrap();
    assert_eq!(describe(&back), describe(&src));
    // A sub-directory alone.
    let sub = dir.path().join("sub");
    repo.restore(&first.id, Some("sub/deep"), &sub).unwrap();
    assert_eq!(describe(&sub), describe(&src.join("sub/deep")));

    // One byte changed in the 20 MB file: the next snapshot adds a chunk or two, not the
    // file; both are listed.
    let mut big = std::fs::read(src.join("big.bin")).unwrap();
    big[10 << 20] ^= 1;
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let second = repo.persist("home/alice", &src).unwrap();
    assert!(
        second.added < 9 << 20,
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
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, PASSWORD).unwrap();
    let json = restic(&repo_dir, &pwfile, &["snapshots", "--json"]);
    assert!(
        json.contains(&first.id) && json.contains(&second.id),
        "{json}"
    );
    restic(&repo_dir, &pwfile, &["check", "--read-data"]);
    let by_restic = dir.path().join("by-restic");
    restic(
        &repo_dir,
        &pwfile,
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
