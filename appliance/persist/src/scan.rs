//! The periodic scan: the safety net under inotify (an overflowed queue, a restart, a
//! change made while nothing watched). It walks a tree without following symbolic links and
//! sums up what it finds; two scans that differ mean the tree changed.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a walk of a tree found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// A digest of every entry's path, type, size, mode, owner, mtime and ctime.
    pub fingerprint: u64,
    /// Entries (files, directories, links).
    pub entries: u64,
    /// Bytes in regular files.
    pub bytes: u64,
    /// Regular files changed (mtime or ctime) at or after the `since` given.
    pub changed_files: u64,
    /// Their bytes.
    pub changed_bytes: u64,
}

/// Walks `dir`; counts files changed at or after `since` (Unix seconds). Entries that vanish
/// during the walk are skipped; an unreadable directory counts in the fingerprint by its error.
pub fn scan(dir: &Path, since: i64) -> std::io::Result<Scan> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut out = Scan::default();
    let mut stack = vec![dir.to_owned()];
    std::fs::metadata(dir)?;
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = match std::fs::read_dir(&d) {
            Ok(r) => r.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(e) => {
                (d.as_os_str(), e.kind() as u8).hash(&mut h);
                continue;
            }
        };
        names.sort();
        for p in names {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            out.entries += 1;
            let rel = p.strip_prefix(dir).unwrap_or(&p);
            (
                rel.as_os_str(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
                .hash(&mut h);
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.bytes += m.size();
                if m.mtime().max(m.ctime()) >= since {
                    out.changed_files += 1;
                    out.changed_bytes += m.size();
                }
            }
        }
    }
    out.fingerprint = h.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_sees_content_mode_and_name_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), b"hello").unwrap();
        let first = scan(d.path(), 0).unwrap();
        assert_eq!((first.entries, first.bytes), (2, 5));
        assert_eq!(first.changed_files, 1);
        assert_eq!(scan(d.path(), 0).unwrap(), first, "nothing changed");
        assert_eq!(scan(d.path(), i64::MAX).unwrap().changed_files, 0);

        std::fs::rename(d.path().join("sub/a"), d.path().join("sub/b")).unwrap();
        let renamed = scan(d.path(), 0).unwrap();
        assert_ne!(renamed.fingerprint, first.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.path().join("sub/b"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_ne!(scan(d.path(), 0).unwrap().fingerprint, renamed.fingerprint);
        assert!(scan(&d.path().join("missing"), 0).is_err());
    }
}
