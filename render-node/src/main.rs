//! `periphery-render-node`: a render node for a Periphery appliance.
//!
//! ```text
//! periphery-render-node join <appliance> --token T [--name N]   # once
//! periphery-render-node run [--tags gpu,fast]                    # works until stopped
//! ```
//! and the helpers the built-in job templates call: `blender <scene> <frames> <out>` and
//! `assemble --fps N <frames dir> <video>`.

mod helpers;
mod home;
mod run;
mod spawn;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rcgen::{CertificateParams, KeyPair};

use periphery_client::session::Session;
use periphery_protocol::pairing::fingerprint;
use periphery_protocol::render::NodeCaps;
use periphery_protocol::{Request, Response};

#[derive(Parser)]
#[command(
    name = "periphery-render-node",
    version,
    about = "A Periphery render node"
)]
struct Cli {
    /// Where the node keeps its credentials and cache.
    #[arg(long, global = true, env = "PERIPHERY_NODE_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join an appliance with a token from `periphery render node-token`.
    Join {
        /// The appliance's address (`host` or `host:port`).
        appliance: String,
        /// The join token.
        #[arg(long)]
        token: String,
        /// The node's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull and run render tasks until stopped.
    Run {
        /// Tags this node carries (jobs may require them), comma-separated.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Where inputs are cached and tasks run (default: <home>/cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The appliance's address, instead of the one stored at join.
        #[arg(long)]
        appliance: Option<String>,
        /// Exit when the parent process does (the appliance's own node).
        #[arg(long)]
        die_with_parent: bool,
    },
    /// Render frames of a Blender scene (used by the built-in Blender templates).
    Blender {
        /// The scene.
        scene: String,
        /// Frames: `a-b` or `a`.
        frames: String,
        /// The output directory (`####.png` in it).
        out: String,
    },
    /// Encode PNG frames into a video (used by the built-in video template).
    Assemble {
        /// Frames per second.
        #[arg(long, default_value_t = 24)]
        fps: u32,
        /// The directory of frames.
        frames: PathBuf,
        /// The video file (the container follows its extension).
        video: PathBuf,
    },
}

fn caps(tags: Vec<String>) -> NodeCaps {
    let mut renderers = vec![("command".to_owned(), "sh".to_owned())];
    if let Ok(o) = std::process::Command::new("blender")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
    {
        let first = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("Blender "))
            .map(|l| l.trim_start_matches("Blender ").trim().to_owned());
        if let Some(v) = first {
            renderers.push(("blender".into(), v));
        }
    }
    renderers.push(("ffmpeg".into(), periphery_media::codec::ffmpeg_version()));
    let mut gpus: Vec<String> = std::fs::read_dir("/dev/dri")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("renderD"))
        .collect();
    if std::path::Path::new("/dev/nvidia0").exists() {
        gpus.push("nvidia0".into());
    }
    let mut tags = tags;
    if !gpus.is_empty() && !tags.iter().any(|t| t == "gpu") {
        tags.push("gpu".into());
    }
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    NodeCaps {
        renderers,
        cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes,
        gpus,
        tags,
    }
}

async fn join(
    home: PathBuf,
    appliance: String,
    token: String,
    name: Option<String>,
) -> anyhow::Result<()> {
    let (secret, fp) = token.split_once('.').context(
        "a join token is <secret>.<fingerprint>, as `periphery render node-token` prints it",
    )?;
    let addr = periphery_client::session::resolve(&appliance)
        .await
        .with_context(|| format!("cannot resolve {appliance}"))?;
    let software = concat!("periphery-render-node ", env!("CARGO_PKG_VERSION"));
    let (mut s, cert) = Session::first_contact(addr, software).await?;
    let got = fingerprint(&cert);
    if got.trim_start_matches("sha256:") != fp {
        anyhow::bail!(
            "the appliance at {appliance} is not the one the token was made for (its certificate is {got}); nothing was sent"
        );
    }
    let name = name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "render-node".into())
    });
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    let Response::NodeJoined {
        node_id,
        cert_der,
        ca_der,
    } = s
        .request(Request::NodeJoin {
            secret: secret.to_owned(),
            name: name.clone(),
            csr_der: csr.der().to_vec(),
        })
        .await?
    else {
        anyhow::bail!("unexpected answer from the appliance");
    };
    s.close().await;
    home::save(
        &home,
        &home::Credentials {
            joined: home::Joined {
                address: addr.to_string(),
                node_id: node_id.clone(),
                name,
            },
            key_der: key.serialize_der(),
            cert_der,
            ca_der,
        },
    )?;
    println!("joined as render node {node_id}; start it with `periphery-render-node run`");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let home = cli.home.clone().unwrap_or_else(home::default_dir);
    let result = match cli.command {
        Command::Blender { scene, frames, out } => helpers::blender(&scene, &frames, &out),
        Command::Assemble { fps, frames, video } => helpers::assemble(fps, &frames, &video),
        Command::Join {
            appliance,
            token,
            name,
        } => runtime().and_then(|rt| rt.block_on(join(home, appliance, token, name))),
        Command::Run {
            tags,
            cache,
            appliance,
            die_with_parent,
        } => {
            if die_with_parent {
                #[allow(unsafe_code)]
                // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("PERIPHERY_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            home::load(&home).and_then(|mut creds| {
                if let Some(a) = appliance {
                    creds.joined.address = a;
                }
                let node = run::Node {
                    cache: cache.unwrap_or_else(|| home.join("cache")),
                    caps: caps(tags),
                    creds,
                };
                tracing::info!(node = %node.creds.joined.node_id, caps = ?node.caps, "render node ready");
                runtime()?.block_on(node.run())
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<run::Refused>() => {
            eprintln!("error: {e:#}");
            // The appliance's own node rejoins on this code.
            std::process::ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One thread: a node runs one task at a time and its loop waits on one call at a time, so
/// threads would only hand wake-ups to each other (measured: a third of the node's CPU a
/// short task). The thread that starts a task's command is the one whose exit the
/// command's death signal follows, and this one lives as long as the node.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
