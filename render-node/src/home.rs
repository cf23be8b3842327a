//! The node's credentials: which appliance, its own id, key and certificate, the pinned CA.
//! In `--home` (default `~/.local/state/periphery-render-node`), keys 0600.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
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

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    periphery_client::files::write_atomic(path, bytes, mode)
        .map_err(|(p, e)| anyhow::Error::new(e).context(format!("cannot write {}", p.display())))
}

/// Saves the credentials.
pub fn save(dir: &Path, c: &Credentials) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("node.key"), &c.key_der, 0o600)?;
    write_atomic(&dir.join("node.crt"), &c.cert_der, 0o644)?;
    write_atomic(&dir.join("appliance-ca.crt"), &c.ca_der, 0o644)?;
    write_atomic(
        &dir.join("node.toml"),
        toml::to_string(&c.joined)?.as_bytes(),
        0o644,
    )
}

/// Loads the credentials.
pub fn load(dir: &Path) -> anyhow::Result<Credentials> {
    let toml_path = dir.join("node.toml");
    let text = fs::read_to_string(&toml_path).with_context(|| {
        format!(
            "this node has not joined an appliance (no {}); run `periphery-render-node join <appliance> --token T`",
            toml_path.display()
        )
    })?;
    let joined: Joined =
        toml::from_str(&text).with_context(|| format!("{} is damaged", toml_path.display()))?;
    let read = |n: &str| {
        let p = dir.join(n);
        fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(Credentials {
        joined,
        key_der: read("node.key")?,
        cert_der: read("node.crt")?,
        ca_der: read("appliance-ca.crt")?,
    })
}
