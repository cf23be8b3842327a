//! The node's credentials: which appliance, its own id, key and certificate, the pinned CA.
//! In `--home` (default `~/.local/state/periphery-render-node`), keys 0600.

use std::path::{Path, PathBuf};

use anyhow::Context;
use periphery_client::files::{CredentialFiles, StoredCredentials};
use serde::{Deserialize, Serialize};

/// What `join` learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    /// The appliance's address.
    pub address: String,
    /// The node's id.
    pub node_id: String,
    /// The node's name.
    pub name: String,
}

/// Everything needed to connect.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// What `join` learned.
    pub joined: Joined,
    /// The node's key (PKCS#8 DER).
    pub key_der: Vec<u8>,
    /// Its certificate.
    pub cert_der: Vec<u8>,
    /// The appliance CA.
    pub ca_der: Vec<u8>,
}

/// The default home.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/periphery-render-node"),
        None => PathBuf::from(".periphery-render-node"),
    }
}

const FILES: CredentialFiles = CredentialFiles {
    key: "node.key",
    cert: "node.crt",
    record: "node.toml",
};

fn io_error((p, e): (PathBuf, std::io::Error)) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("cannot access {}", p.display()))
}

/// Saves the credentials.
pub fn save(dir: &Path, c: &Credentials) -> anyhow::Result<()> {
    let stored = StoredCredentials {
        record: toml::to_string(&c.joined)?,
        key_der: c.key_der.clone(),
        cert_der: c.cert_der.clone(),
        ca_der: c.ca_der.clone(),
    };
    FILES.save(dir, &stored).map_err(io_error)
}

/// Loads the credentials.
pub fn load(dir: &Path) -> anyhow::Result<Credentials> {
    let toml_path = dir.join(FILES.record);
    let Some(s) = FILES.load(dir).map_err(io_error)? else {
        anyhow::bail!(
            "this node has not joined an appliance (no {}); run `periphery-render-node join <appliance> --token T`",
            toml_path.display()
        );
    };
    let joined: Joined =
        toml::from_str(&s.record).with_context(|| format!("{} is damaged", toml_path.display()))?;
    Ok(Credentials {
        joined,
        key_der: s.key_der,
        cert_der: s.cert_der,
        ca_der: s.ca_der,
    })
}
