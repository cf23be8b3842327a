//! A minimal initramfs writer (cpio "newc"), enough for a busybox guest: the acceleration probe
//! boots one, and tests build their tiny guests with it. No external `cpio` needed.

/// One entry of the archive.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A regular file with its mode and contents.
    File(String, u32, Vec<u8>),
    /// A symbolic link: path, target.
    Symlink(String, String),
    /// A character device: path, major, minor.
    CharDev(String, u32, u32),
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        size as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive bytes (uncompressed; the kernel accepts that).
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir(p) => header(&mut out, ino, 0o040_755, 0, (0, 0), p),
            Entry::File(p, mode, data) => {
                header(&mut out, ino, 0o100_000 | mode, data.len(), (0, 0), p);
                out.extend_from_slice(data);
                pad(&mut out);
            }
            Entry::Symlink(p, target) => {
                header(&mut out, ino, 0o120_777, target.len(), (0, 0), p);
                out.extend_from_slice(target.as_bytes());
                pad(&mut out);
            }
            Entry::CharDev(p, major, minor) => {
                header(&mut out, ino, 0o020_600, 0, (*major, *minor), p)
            }
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

/// A busybox initramfs whose `/init` is `init_script` (run by busybox sh). `busybox` is the
/// bytes of a statically linked busybox.
pub fn busybox(busybox: Vec<u8>, init_script: &str) -> Vec<u8> {
    let mut entries = vec![
        Entry::Dir("bin".into()),
        Entry::Dir("dev".into()),
        Entry::Dir("proc".into()),
        Entry::Dir("sys".into()),
        Entry::Dir("tmp".into()),
        Entry::CharDev("dev/console".into(), 5, 1),
        Entry::File("bin/busybox".into(), 0o755, busybox),
    ];
    for applet in [
        "sh", "echo", "mount", "cat", "ls", "sleep", "reboot", "poweroff", "setsid", "seq",
    ] {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    entries.push(Entry::File(
        "init".into(),
        0o755,
        format!("#!/bin/sh\n{init_script}").into_bytes(),
    ));
    archive(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_the_trailer() {
        let a = archive(&[
            Entry::Dir("bin".into()),
            Entry::File("bin/x".into(), 0o755, b"abc".to_vec()),
        ]);
        assert!(a.starts_with(b"070701"));
        assert!(a.len().is_multiple_of(4));
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("TRAILER!!!"));
        // The file's size field (7th) is 3.
        let second = s.match_indices("070701").nth(1).unwrap().0;
        assert_eq!(&s[second + 6 + 6 * 8..second + 6 + 7 * 8], "00000003");
    }
}
