//! The appliance's own render node: `periphery-render-node` (found next to `periphery`) run as
//! a child, joined through the same token exchange as any node and working over QUIC on
//! loopback, so it is scheduled, revoked and shown like the others. Its home is
//! `<state>/local-node`; it dies with the appliance, and is started again with backoff when it
//! exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// Where the node binary is expected: beside this executable.
pub fn node_binary() -> Option<PathBuf> {
    let p = std::env::current_exe()
        .ok()?
        .parent()?
        .join("periphery-render-node");
    p.is_file().then_some(p)
}

/// The address the local node dials: loopback when the appliance listens on all addresses.
fn dial(bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], bound.port()))
    } else {
        bound
    }
}

async fn join(bin: &Path, home: &Path, addr: SocketAddr, token: &str) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--home")
        .arg(home)
        .args([
            "join",
            &addr.to_string(),
            "--token",
            token,
            "--name",
            "local",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Runs the local node until `shutdown`; `token` makes a join token when the node has none.
pub async fn run(
    bin: PathBuf,
    home: PathBuf,
    bound: SocketAddr,
    token: impl Fn() -> String + Send,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let addr = dial(bound);
    let mut backoff = Duration::from_secs(1);
    loop {
        if !home.join("node.toml").is_file() {
            if let Err(e) = join(&bin, &home, addr, &token()).await {
                tracing::warn!(error = %e, "the local render node cannot join");
            }
        }
        let child = Command::new(&bin)
            .arg("--home")
            .arg(&home)
            .args(["run", "--appliance", &addr.to_string(), "--die-with-parent"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the local render node cannot start");
                return;
            }
        };
        tracing::info!(pid = child.id(), "local render node started");
        let started = tokio::time::Instant::now();
        let stopping = tokio::select! {
            status = child.wait() => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(?status, retry_in = ?backoff, "the local render node exited");
                // A node whose credentials were refused (revoked) joins again.
                if matches!(status, Ok(s) if s.code() == Some(3)) {
                    let _ = std::fs::remove_file(home.join("node.toml"));
                }
                false
            }
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if stopping {
            let _ = child.kill().await;
            return;
        }
        let stopping = tokio::select! {
            _ = tokio::time::sleep(backoff) => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if stopping {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
