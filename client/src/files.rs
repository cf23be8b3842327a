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

/// The files a client keeps its credentials in, under its home: its key (0600), its
/// certificate, and a TOML record of what it paired or joined with (written last, so its
/// presence means the rest is complete). The appliance CA is always `appliance-ca.crt`.
#[derive(Debug, Clone, Copy)]
pub struct CredentialFiles {
    /// The key (PKCS#8 DER).
    pub key: &'static str,
    /// The certificate (DER).
    pub cert: &'static str,
    /// The TOML record.
    pub record: &'static str,
}

/// A client's credentials as stored: the TOML record's text and the DER files.
#[derive(Debug, Clone)]
pub struct StoredCredentials {
    /// The record, TOML.
    pub record: String,
    /// The key (PKCS#8 DER).
    pub key_der: Vec<u8>,
    /// The certificate.
    pub cert_der: Vec<u8>,
    /// The appliance CA.
    pub ca_der: Vec<u8>,
}

const CA: &str = "appliance-ca.crt";

impl CredentialFiles {
    /// Writes `c` under `dir` (created 0700), replacing what was there.
    pub fn save(&self, dir: &Path, c: &StoredCredentials) -> Result<(), (PathBuf, std::io::Error)> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| (dir.to_owned(), e))?;
        write_atomic(&dir.join(self.key), &c.key_der, 0o600)?;
        write_atomic(&dir.join(self.cert), &c.cert_der, 0o644)?;
        write_atomic(&dir.join(CA), &c.ca_der, 0o644)?;
        write_atomic(&dir.join(self.record), c.record.as_bytes(), 0o644)
    }

    /// Reads the credentials under `dir`; `None` when there is no record (never paired or
    /// joined).
    pub fn load(&self, dir: &Path) -> Result<Option<StoredCredentials>, (PathBuf, std::io::Error)> {
        let record_path = dir.join(self.record);
        let record = match fs::read_to_string(&record_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err((record_path, e)),
        };
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read(&p).map_err(|e| (p, e))
        };
        Ok(Some(StoredCredentials {
            record,
            key_der: read(self.key)?,
            cert_der: read(self.cert)?,
            ca_der: read(CA)?,
        }))
    }
}
