//! Files by content: `<state>/blobs/<first two hex digits>/<BLAKE3 hash>`, written once,
//! checked against their hash before they are kept.
//!
//! An upload arrives in chunks in order (`tmp/<hash>.<uploader>` grows); the last chunk
//! makes the appliance hash the whole file and keep it only if the hash matches, so a
//! broken or lying upload never becomes a stored file.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use periphery_protocol::render::{valid_hash, MAX_BLOB_CHUNK};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not a 64-hex-digit BLAKE3 hash.
    #[error("'{0}' is not a content hash (64 lower-case hex digits)")]
    BadHash(String),
    /// A chunk that does not continue the upload.
    #[error(
        "chunk at offset {offset} does not continue the upload of {hash} ({have} bytes so far)"
    )]
    OutOfOrder {
        /// The file.
        hash: String,
        /// Where the chunk starts.
        offset: u64,
        /// What is there.
        have: u64,
    },
    /// A chunk over the limit.
    #[error("a chunk of {0} bytes is over the limit of {MAX_BLOB_CHUNK}")]
    TooLarge(usize),
    /// The uploaded bytes have another hash.
    #[error("the uploaded file's hash is {actual}, not {claimed}; it was discarded")]
    Mismatch {
        /// What the uploader said.
        claimed: String,
        /// What the bytes are.
        actual: String,
    },
    /// No such file.
    #[error("no stored file {0}")]
    Missing(String),
    /// The disk failed (or is full).
    #[error("cannot write {path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The blob store.
#[derive(Debug)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    /// The store under `root` (created when needed).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn check(hash: &str) -> Result<(), BlobError> {
        if valid_hash(hash) {
            Ok(())
        } else {
            Err(BlobError::BadHash(hash.chars().take(80).collect()))
        }
    }

    /// Where a stored file lives.
    pub fn path(&self, hash: &str) -> Result<PathBuf, BlobError> {
        Self::check(hash)?;
        Ok(self.root.join(&hash[..2]).join(hash))
    }

    /// Whether the file is stored.
    pub fn has(&self, hash: &str) -> bool {
        self.path(hash).is_ok_and(|p| p.is_file())
    }

    /// Size of a stored file.
    pub fn size(&self, hash: &str) -> Option<u64> {
        fs::metadata(self.path(hash).ok()?).ok().map(|m| m.len())
    }

    /// Takes a chunk of an upload by `uploader`; the last one checks and keeps the file.
    pub fn put(
        &self,
        uploader: u64,
        hash: &str,
        offset: u64,
        data: &[u8],
        last: bool,
    ) -> Result<(), BlobError> {
        let dest = self.path(hash)?;
        if data.len() > MAX_BLOB_CHUNK {
            return Err(BlobError::TooLarge(data.len()));
        }
        if dest.is_file() {
            // Stored already (another uploader was first): nothing to do.
            return Ok(());
        }
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let tmp = tmp_dir.join(format!("{hash}.{uploader}"));
        let mut f = if offset == 0 {
            fs::File::create(&tmp).map_err(io(&tmp))?
        } else {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&tmp)
                .map_err(|_| BlobError::OutOfOrder {
                    hash: hash.to_owned(),
                    offset,
                    have: 0,
                })?;
            let have = f.seek(SeekFrom::End(0)).map_err(io(&tmp))?;
            if have != offset {
                return Err(BlobError::OutOfOrder {
                    hash: hash.to_owned(),
                    offset,
                    have,
                });
            }
            f
        };
        f.write_all(data).map_err(io(&tmp))?;
        if !last {
            return Ok(());
        }
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        let actual = periphery_client::blobs::hash_file(&tmp).map_err(io(&tmp))?;
        if actual != hash {
            let _ = fs::remove_file(&tmp);
            return Err(BlobError::Mismatch {
                claimed: hash.to_owned(),
                actual,
            });
        }
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::rename(&tmp, &dest).map_err(io(&dest))
    }

    /// Reads up to `len` bytes (capped at [`MAX_BLOB_CHUNK`]) from `offset`.
    pub fn get(&self, hash: &str, offset: u64, len: u32) -> Result<Vec<u8>, BlobError> {
        let p = self.path(hash)?;
        let mut f = fs::File::open(&p).map_err(|_| BlobError::Missing(hash.to_owned()))?;
        f.seek(SeekFrom::Start(offset)).map_err(io(&p))?;
        let mut buf = Vec::new();
        f.take((len as usize).min(MAX_BLOB_CHUNK) as u64)
            .read_to_end(&mut buf)
            .map_err(io(&p))?;
        Ok(buf)
    }

    /// Places a stored file at `dest` (a hard link where possible, else a copy).
    pub fn place(&self, hash: &str, dest: &Path) -> Result<(), BlobError> {
        let src = self.path(hash)?;
        if !src.is_file() {
            return Err(BlobError::Missing(hash.to_owned()));
        }
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let _ = fs::remove_file(dest);
        if fs::hard_link(&src, dest).is_err() {
            fs::copy(&src, dest).map_err(io(dest))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn hash(b: &[u8]) -> String {
        blake3::hash(b).to_hex().to_string()
    }

    #[test]
    fn chunks_in_order_make_a_checked_file() {
        let d = tempfile::tempdir().unwrap();
        let b = Blobs::new(d.path().to_owned());
        let data = vec![7u8; 1000];
        let h = hash(&data);
        b.put(1, &h, 0, &data[..600], false).unwrap();
        assert!(!b.has(&h));
        assert!(matches!(
            b.put(1, &h, 100, &data[600..], true),
            Err(BlobError::OutOfOrder { have: 600, .. })
        ));
        b.put(1, &h, 600, &data[600..], true).unwrap();
        assert!(b.has(&h));
        assert_eq!(b.get(&h, 990, 100).unwrap(), vec![7u8; 10]);
        assert_eq!(b.size(&h), Some(1000));
    }

    #[test]
    fn a_lying_upload_is_discarded() {
        let d = tempfile::tempdir().unwrap();
        let b = Blobs::new(d.path().to_owned());
        let h = hash(b"the real thing");
        assert!(matches!(
            b.put(1, &h, 0, b"something else", true),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(!b.has(&h));
        assert!(matches!(
            b.put(1, "../../etc/passwd", 0, b"x", true),
            Err(BlobError::BadHash(_))
        ));
        assert!(matches!(b.get(&h, 0, 1), Err(BlobError::Missing(_))));
    }

    #[test]
    fn stored_files_are_placed() {
        let d = tempfile::tempdir().unwrap();
        let b = Blobs::new(d.path().join("blobs"));
        let h = hash(b"BLENDER");
        b.put(1, &h, 0, b"BLENDER", true).unwrap();
        let dest = d.path().join("job/out/scene.blend");
        b.place(&h, &dest).unwrap();
        assert_eq!(fs::read(dest).unwrap(), b"BLENDER");
    }
}
