//! What the persistence tests share: trees to persist and compare, the restic CLI, and a
//! real S3-compatible server (`s3s-fs`, installed by `scripts/setup.sh`) on loopback.

#![allow(dead_code, clippy::unwrap_used)] // Each test file uses a part; tests fail loudly.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use periphery_persist::{S3Target, Target};

/// The repository password of the tests.
pub const PASSWORD: &str = "correct horse battery staple";

/// Bytes that do not compress or repeat: `n` of them from `seed`.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Sets a file's (or directory's) modification time, Unix seconds and nanoseconds.
pub fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    std::fs::File::open(p).unwrap().set_modified(t).unwrap();
}

/// A tree of `small` files (0 to 64 KiB, in nested directories), files of the `large`
/// sizes, empty directories and files, symbolic links (relative, absolute, dangling), and
/// several modes and times. Returns the number of files and links in it.
pub fn make_tree(dir: &Path, seed: u64, small: usize, large: &[usize]) -> usize {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    std::fs::create_dir_all(dir).unwrap();
    let modes = [0o644, 0o600, 0o640, 0o755, 0o444];
    let mut n = 0;
    for i in 0..small {
        let sub = dir.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let size = (next() % (64 << 10)) as usize >> (next() % 8);
        let p = sub.join(format!("f{i}.dat"));
        std::fs::write(&p, noise(seed + i as u64, size)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(modes[i % modes.len()]))
            .unwrap();
        set_mtime(
            &p,
            1_600_000_000 + (next() % 10_000_000),
            (next() % 1_000_000_000) as u32,
        );
        n += 1;
    }
    for (i, &size) in large.iter().enumerate() {
        std::fs::write(
            dir.join(format!("large{i}.bin")),
            noise((seed ^ 0xabc) + i as u64, size),
        )
        .unwrap();
        n += 1;
    }
    for e in ["empty", "d1/empty", "nest/ed/empty"] {
        std::fs::create_dir_all(dir.join(e)).unwrap();
    }
    std::fs::write(dir.join("d0/empty-file"), b"").unwrap();
    std::fs::write(dir.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("d0/e0/f0.dat", dir.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", dir.join("d1/dangling")).unwrap();
    std::fs::set_permissions(dir.join("d1"), std::fs::Permissions::from_mode(0o750)).unwrap();
    n + 5
}

/// What a tree is, path by path: kind, mode, owner, mtime (to the nanosecond), contents or
/// link target.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let owner = format!("{}:{}", m.uid(), m.gid());
            let what = if m.file_type().is_symlink() {
                format!(
                    "link {owner} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                )
            } else if m.is_dir() {
                dirs.push(p.clone());
                format!("dir {:o} {owner}", m.mode() & 0o7777)
            } else {
                let hash = digest(&std::fs::read(&p).unwrap());
                format!(
                    "file {:o} {owner} {}.{:09} {hash}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

/// Asserts two descriptions are equal, showing the first difference rather than both.
pub fn assert_same(got: &BTreeMap<PathBuf, String>, want: &BTreeMap<PathBuf, String>) {
    for (p, w) in want {
        assert_eq!(got.get(p), Some(w), "{} differs", p.display());
    }
    assert_eq!(got.len(), want.len(), "extra entries restored");
}

/// A content fingerprint (the tests compare trees; they need no cryptographic hash).
pub fn digest(b: &[u8]) -> String {
    format!("{}:{}", b.len(), blake3_like(b))
}

fn blake3_like(b: &[u8]) -> String {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(b);
    format!("{:016x}", h.finish())
}

/// Every file under `dir`, with its size.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
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

/// Runs the restic CLI on `repo` (a path, or `s3:http://...`) with the test password and
/// `env`; returns its standard output, or panics with its standard error.
pub fn restic(repo: &str, env: &[(&str, String)], args: &[&str]) -> String {
    let out = restic_output(repo, env, args);
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the restic CLI as [`restic`] does, whatever the outcome.
pub fn restic_output(repo: &str, env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    Command::new("restic")
        .arg("-r")
        .arg(repo)
        .args(["--no-cache", "--quiet"])
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("restic is installed (scripts/setup.sh)")
}

/// The access key and secret of the test server.
pub const ACCESS_KEY: &str = "periphery-test";
/// The test server's secret key.
pub const SECRET_KEY: &str = "periphery-test-secret";

/// An `s3s-fs` server on a loopback port, serving the buckets under `root`.
pub struct S3 {
    /// Its buckets, one directory each.
    pub root: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl S3 {
    /// Starts a server with one bucket, `bucket`.
    pub fn start() -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bucket")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = S3 {
            root,
            port,
            child: None,
        };
        s.restart();
        s
    }

    /// Starts it again on the same port (after [`S3::stop`]).
    pub fn restart(&mut self) {
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs is installed (scripts/setup.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it; connections are refused until [`S3::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The directory holding `prefix` of the bucket.
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.root.path().join("bucket").join(prefix)
    }

    /// The target for `prefix` of the bucket, with the server's keys.
    pub fn target(&self, prefix: &str) -> Target {
        Target::S3(S3Target {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            region: "us-east-1".into(),
            bucket: "bucket".into(),
            prefix: prefix.into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
        })
    }

    /// The bucket's `prefix` as a local repository path for the restic CLI: the very files
    /// the server stored. `restic check` needs this: s3s-fs 0.14.1 lists no keys below a
    /// nested prefix (`data/xx/...`) for a client that sends an empty delimiter, as
    /// minio-go (restic's S3 client) does, so restic sees no packs over S3. Snapshots,
    /// restores and everything else go over S3.
    pub fn restic_local(&self, prefix: &str) -> String {
        self.dir(prefix).display().to_string()
    }

    /// The restic CLI's name for `prefix` of the bucket, and the environment it needs.
    pub fn restic_repo(&self, prefix: &str) -> (String, Vec<(&'static str, String)>) {
        (
            format!("s3:http://127.0.0.1:{}/bucket/{prefix}", self.port),
            vec![
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
                ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ],
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}
