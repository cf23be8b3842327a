//! A client's credentials on disk: each file written whole or not at all, with its mode
//! (keys 0600), so a crash while pairing or joining never leaves half a key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file that is synced and renamed; on failure,
/// the path that failed (the temporary file or `path`) and why.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (PathBuf, std::io::Error)> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let on_tmp = |e| (tmp.clone(), e);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(on_tmp)?;
    f.write_all(bytes).map_err(on_tmp)?;
    f.sync_all().map_err(on_tmp)?;
    fs::rename(&tmp, path).map_err(|e| (path.to_owned(), e))
}
