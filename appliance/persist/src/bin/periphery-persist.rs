//! `periphery-persist`: one operation on a repository, from the command line. The appliance
//! persists through its daemon; this is for engineers and for the crash tests, which kill it.
//!
//! ```text
//! periphery-persist LOCATION [--endpoint URL] [--region R] persist TREE DIR
//! periphery-persist LOCATION snapshots | check [--read-data] | restore ID DEST
//! ```
//! The password comes from `PERIPHERY_REPO_PASSWORD`, S3 keys from `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use periphery_persist::{Repo, Target};

#[derive(Debug, Parser)]
#[command(name = "periphery-persist", about)]
struct Cli {
    /// A local directory, or s3://bucket/prefix.
    location: String,
    /// The S3 service's URL.
    #[arg(long)]
    endpoint: Option<String>,
    /// The S3 region.
    #[arg(long)]
    region: Option<String>,
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// Take a snapshot of DIR as TREE.
    Persist {
        /// The tree's name (home/alice/desk).
        tree: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// List the snapshots.
    Snapshots,
    /// Check the repository.
    Check {
        /// Read and verify every pack.
        #[arg(long)]
        read_data: bool,
    },
    /// Restore a snapshot into DEST.
    Restore {
        /// The snapshot (a unique prefix will do).
        id: String,
        /// Where to.
        dest: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let password = std::env::var("PERIPHERY_REPO_PASSWORD")
        .context("set PERIPHERY_REPO_PASSWORD to the repository password")?;
    let keys = match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(a), Ok(s)) => Some((a, s)),
        _ => None,
    };
    let target = Target::parse(
        &cli.location,
        cli.endpoint.as_deref(),
        cli.region.as_deref(),
        keys,
    )?;
    let (repo, _) = Repo::open_or_init(&target, &password)?;
    match cli.op {
        Op::Persist { tree, dir } => {
            let s = repo.persist(&tree, &dir)?;
            println!(
                "{} {} files {} bytes added {}",
                s.id, s.tree, s.files, s.added
            );
        }
        Op::Snapshots => {
            for s in repo.snapshots(None)? {
                println!(
                    "{} {} {} {} files {} bytes",
                    s.id, s.tree, s.time, s.files, s.bytes
                );
            }
        }
        Op::Check { read_data } => repo.check(read_data)?,
        Op::Restore { id, dest } => {
            repo.restore(&id, None, &dest)?;
        }
    }
    Ok(())
}
