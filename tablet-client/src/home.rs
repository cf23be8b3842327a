//! The tablet's home directory: its key, its device certificate and the pinned appliance.
//!
//! Layout: `device.key` (PKCS#8 DER, mode 0600), `device.crt`, `appliance-ca.crt` (DER), and
//! `appliance.toml` (address, name, fingerprint, device id, user). Files are written to a
//! temporary name and renamed, so a crash never leaves half a pairing.

use std::fs;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HomeError> {
    periphery_client::files::write_atomic(path, bytes, mode)
        .map_err(|(path, source)| HomeError::Io { path, source })
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
            .map_err(io(&self.0))?;
        let toml = toml::to_string(&c.pairing).map_err(|e| HomeError::Damaged {
            path: self.0.join("appliance.toml"),
            problem: e.to_string(),
        })?;
        write_atomic(&self.0.join("device.key"), &c.key_der, 0o600)?;
        write_atomic(&self.0.join("device.crt"), &c.cert_der, 0o644)?;
        write_atomic(&self.0.join("appliance-ca.crt"), &c.ca_der, 0o644)?;
        // Written last: its presence means the pairing is complete.
        write_atomic(&self.0.join("appliance.toml"), toml.as_bytes(), 0o644)
    }

    /// Loads the pairing.
    pub fn load(&self) -> Result<Credentials, HomeError> {
        let toml_path = self.0.join("appliance.toml");
        let text = match fs::read_to_string(&toml_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NotPaired(self.0.clone()))
            }
            Err(e) => return Err(io(&toml_path)(e)),
        };
        let pairing: Pairing = toml::from_str(&text).map_err(|e| HomeError::Damaged {
            path: toml_path.clone(),
            problem: e.to_string(),
        })?;
        let read = |name: &str| {
            let p = self.0.join(name);
            fs::read(&p).map_err(io(&p))
        };
        Ok(Credentials {
            pairing,
            key_der: read("device.key")?,
            cert_der: read("device.crt")?,
            ca_der: read("appliance-ca.crt")?,
        })
    }
}
