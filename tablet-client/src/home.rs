//! The tablet's home directory: its key, its device certificate and the pinned appliance.
//!
//! Layout: `device.key` (PKCS#8 DER, mode 0600), `device.crt`, `appliance-ca.crt` (DER), and
//! `appliance.toml` (address, name, fingerprint, device id, user). Files are written to a
//! temporary name and renamed, so a crash never leaves half a pairing.

use std::path::{Path, PathBuf};

use periphery_client::files::{CredentialFiles, StoredCredentials};
use serde::{Deserialize, Serialize};

/// What the tablet remembers about the appliance it paired with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairing {
    /// Address as given at pairing (`host` or `host:port`).
    pub address: String,
    /// Appliance name.
    pub appliance: String,
    /// Appliance certificate fingerprint.
    pub fingerprint: String,
    /// This device's id.
    pub device_id: String,
    /// The user this device belongs to.
    pub user: String,
}

/// A paired tablet's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// What was paired.
    pub pairing: Pairing,
    /// Device key (PKCS#8 DER).
    pub key_der: Vec<u8>,
    /// Device certificate (DER).
    pub cert_der: Vec<u8>,
    /// Appliance CA (DER).
    pub ca_der: Vec<u8>,
}

/// Why the home directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Not paired yet.
    #[error("this tablet is not paired yet (home {0}); run `periphery-tablet pair <appliance> --code XXXX-XXXX`")]
    NotPaired(PathBuf),
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `appliance.toml` is damaged.
    #[error("{path} is damaged: {problem}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The home directory.
#[derive(Debug, Clone)]
pub struct Home(PathBuf);

const FILES: CredentialFiles = CredentialFiles {
    key: "device.key",
    cert: "device.crt",
    record: "appliance.toml",
};

fn io_error((path, source): (PathBuf, std::io::Error)) -> HomeError {
    HomeError::Io { path, source }
}

impl Home {
    /// The home at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self(dir)
    }

    /// The default home: `$PERIPHERY_TABLET_HOME`, else `~/.config/periphery-tablet`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
            return PathBuf::from(d).join("periphery-tablet");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".config/periphery-tablet"),
            None => PathBuf::from(".periphery-tablet"),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Stores a new pairing, replacing any earlier one.
    pub fn save(&self, c: &Credentials) -> Result<(), HomeError> {
        let record = toml::to_string(&c.pairing).map_err(|e| HomeError::Damaged {
            path: self.0.join(FILES.record),
            problem: e.to_string(),
        })?;
        let stored = StoredCredentials {
            record,
            key_der: c.key_der.clone(),
            cert_der: c.cert_der.clone(),
            ca_der: c.ca_der.clone(),
        };
        FILES.save(&self.0, &stored).map_err(io_error)
    }

    /// Loads the pairing.
    pub fn load(&self) -> Result<Credentials, HomeError> {
        let s = FILES
            .load(&self.0)
            .map_err(io_error)?
            .ok_or_else(|| HomeError::NotPaired(self.0.clone()))?;
        let pairing: Pairing = toml::from_str(&s.record).map_err(|e| HomeError::Damaged {
            path: self.0.join(FILES.record),
            problem: e.to_string(),
        })?;
        Ok(Credentials {
            pairing,
            key_der: s.key_der,
            cert_der: s.cert_der,
            ca_der: s.ca_der,
        })
    }
}
