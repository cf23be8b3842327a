//! `periphery storage ...` and `periphery files ...`: where files persist to, and what is
//! persisted. Secrets come from the environment, a file or a prompt, go only to the daemon,
//! and are never printed (the recovery key is printed once, on purpose).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use periphery_protocol::files::{RestoreRequest, StorageSet, TreeInfo};
use periphery_protocol::{Request, Response};

use crate::admin::AdminClient;

/// `periphery storage`.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Persist to this repository: a local directory, or s3://bucket/prefix. It is opened
    /// (or made) first; a refused key, a missing bucket or a wrong password changes nothing.
    /// S3 keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, --credentials-file, or a
    /// prompt.
    Set {
        /// A local directory or s3://bucket/prefix.
        location: String,
        /// The S3 service's URL (default: AWS in --region).
        #[arg(long)]
        endpoint: Option<String>,
        /// The S3 region.
        #[arg(long)]
        region: Option<String>,
        /// An AWS-style credentials file (aws_access_key_id = ..., aws_secret_access_key = ...).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
        /// The password of a repository that exists there, from this file's first line.
        #[arg(long, conflicts_with = "password_stdin")]
        password_file: Option<PathBuf>,
        /// The password of a repository that exists there, from standard input's first line.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Where files persist to, retention, and uploads.
    Show,
    /// Print the repository password the appliance made (once): keep it safe; restoring
    /// elsewhere, or with the restic CLI, needs it.
    RecoveryKey,
}

/// `periphery files`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Each persisted tree: last snapshot and its age, pending changes, upload progress,
    /// last error.
    Status {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Take snapshots now (of a user's trees, one tree, or all).
    Persist {
        /// Now, not when changes go quiet (the only mode; kept for clarity in scripts).
        #[arg(long)]
        now: bool,
        /// Wait until each snapshot is stored (before a shutdown or an update).
        #[arg(long)]
        wait: bool,
        /// Only this user's trees.
        #[arg(long)]
        user: Option<String>,
        /// Only this tree.
        #[arg(long)]
        tree: Option<String>,
    },
    /// A user's snapshots.
    Snapshots {
        /// Whose.
        #[arg(long)]
        user: String,
        /// Only this tree.
        #[arg(long)]
        tree: Option<String>,
    },
    /// Restore a user's tree into a directory on the appliance.
    Restore {
        /// Whose.
        #[arg(long)]
        user: String,
        /// Where to (empty or new).
        #[arg(long)]
        to: PathBuf,
        /// Which tree (default: the user's only home).
        #[arg(long)]
        tree: Option<String>,
        /// Which snapshot (default: the latest).
        #[arg(long)]
        snapshot: Option<String>,
        /// Only this path inside the tree.
        #[arg(long)]
        path: Option<String>,
    },
}

fn first_line(r: impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    let mut r = r;
    r.read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Keys from an AWS-style credentials file (its `[default]` profile, or its only one).
fn read_credentials(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut access, mut secret) = (None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim() {
            "aws_access_key_id" | "access_key" => access = Some(v.trim().to_owned()),
            "aws_secret_access_key" | "secret_key" => secret = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    match (access, secret) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => anyhow::bail!(
            "{} has no aws_access_key_id and aws_secret_access_key",
            path.display()
        ),
    }
}

fn keys(credentials_file: Option<&std::path::Path>) -> anyhow::Result<(String, String)> {
    if let Some(f) = credentials_file {
        return read_credentials(f);
    }
    if let (Ok(a), Ok(s)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok((a, s));
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --credentials-file");
    }
    eprint!("access key id: ");
    std::io::stderr().flush()?;
    let access = first_line(std::io::stdin().lock())?;
    let secret = rpassword::prompt_password("secret access key: ")?;
    Ok((access, secret))
}

fn ago(now: i64, then: i64) -> String {
    crate::ago(now.max(0) as u64, then.max(0) as u64)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// `[#######.............]  35%`
fn bar(done: u64, total: u64) -> String {
    let frac = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (frac * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(20 - filled),
        frac * 100.0
    )
}

fn print_tree(t: &TreeInfo, now: i64) {
    println!("{}  ({})", t.tree, t.dir);
    match &t.last {
        Some(s) => println!(
            "  last snapshot  {} {} ago, {} files, {}",
            &s.id[..8],
            ago(now, s.time),
            s.files,
            mib(s.bytes)
        ),
        None => println!("  last snapshot  none yet"),
    }
    if t.dirty {
        let due = t
            .due_in_secs
            .map(|s| format!(", next attempt in {s} s"))
            .unwrap_or_default();
        println!(
            "  pending        {} files, {}{due}",
            t.pending_files,
            mib(t.pending_bytes)
        );
    } else {
        println!("  pending        nothing");
    }
    if let Some((read, total, up)) = t.running {
        println!(
            "  uploading      {} {} of {} read, {} uploaded",
            bar(read, total),
            mib(read),
            mib(total),
            mib(up)
        );
    }
    if let Some(e) = &t.last_error {
        println!("  last error     {e} ({} failed attempts)", t.failures);
    }
}

/// Runs a storage command.
pub async fn storage(state_dir: &std::path::Path, cmd: StorageCommand) -> anyhow::Result<()> {
    match cmd {
        StorageCommand::Set {
            location,
            endpoint,
            region,
            credentials_file,
            password_file,
            password_stdin,
        } => {
            let (access_key, secret_key) = if location.starts_with("s3://") {
                let (a, s) = keys(credentials_file.as_deref())?;
                (Some(a), Some(s))
            } else {
                (None, None)
            };
            let password = match (password_file, password_stdin) {
                (Some(f), _) => Some(first_line(std::io::BufReader::new(
                    std::fs::File::open(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?,
                ))?),
                (None, true) => Some(first_line(std::io::stdin().lock())?),
                (None, false) => None,
            };
            let mut c = AdminClient::connect(state_dir).await?;
            let Response::StorageChanged(ch) = c
                .request(Request::StorageSet(StorageSet {
                    location,
                    endpoint,
                    region,
                    access_key,
                    secret_key,
                    password,
                }))
                .await?
            else {
                anyhow::bail!("unexpected answer");
            };
            println!(
                "persisting to {} ({})",
                ch.target,
                if ch.made {
                    "a new repository"
                } else {
                    "an existing repository"
                }
            );
            if let Some(key) = ch.recovery_key {
                println!("recovery key (shown once; restoring elsewhere needs it):\n  {key}");
            }
        }
        StorageCommand::Show => {
            let mut c = AdminClient::connect(state_dir).await?;
            let Response::Storage(s) = c.request(Request::StorageShow).await? else {
                anyhow::bail!("unexpected answer");
            };
            println!(
                "repository    {}{}",
                s.target,
                if s.default { " (embedded default)" } else { "" }
            );
            if s.recovery_key_pending {
                println!("recovery key  not shown yet: `periphery storage recovery-key`");
            }
            println!(
                "uploads       {} since start, limit {}",
                mib(s.uploaded),
                if s.upload_limit == 0 {
                    "none".into()
                } else {
                    format!("{}/s", mib(s.upload_limit))
                }
            );
            println!(
                "retention     keep last {}, daily {}, weekly {}",
                s.keep.0, s.keep.1, s.keep.2
            );
            if let Some((at, what)) = s.retention {
                println!(
                    "  last run    {} ago: {what}",
                    ago(crate::clock::unix_secs() as i64, at)
                );
            }
        }
        StorageCommand::RecoveryKey => {
            let mut c = AdminClient::connect(state_dir).await?;
            let Response::RecoveryKey(k) = c.request(Request::StorageRecoveryKey).await? else {
                anyhow::bail!("unexpected answer");
            };
            println!("{k}");
            eprintln!("this is shown once: keep it safe (restic -r <repository> with this password restores anywhere)");
        }
    }
    Ok(())
}

/// Runs a files command.
pub async fn files(state_dir: &std::path::Path, cmd: FilesCommand) -> anyhow::Result<()> {
    let now = crate::clock::unix_secs() as i64;
    let mut c = AdminClient::connect(state_dir).await?;
    match cmd {
        FilesCommand::Status { user } => {
            let Response::FilesStatus(trees) = c.request(Request::FilesStatus { user }).await?
            else {
                anyhow::bail!("unexpected answer");
            };
            if trees.is_empty() {
                println!("no persisted trees yet");
            }
            for t in &trees {
                print_tree(t, now);
            }
        }
        FilesCommand::Persist {
            now: _,
            wait,
            user,
            tree,
        } => {
            let req = Request::FilesPersist {
                user: user.clone(),
                tree,
                wait,
            };
            let answer = if wait && std::io::stderr().is_terminal() {
                // A progress line from a second connection while the first waits.
                let mut watcher = AdminClient::connect(state_dir).await?;
                let wait = c.request(req);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        r = &mut wait => break r?,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {
                            if let Ok(Response::FilesStatus(ts)) =
                                watcher.request(Request::FilesStatus { user: user.clone() }).await
                            {
                                if let Some((t, (read, total, up))) =
                                    ts.iter().find_map(|t| t.running.map(|r| (t, r)))
                                {
                                    eprint!("\r{} {} {} uploaded   ", t.tree, bar(read, total), mib(up));
                                }
                            }
                        }
                    }
                }
            } else {
                c.request(req).await?
            };
            let Response::FilesPersisted(done) = answer else {
                anyhow::bail!("unexpected answer");
            };
            if !wait {
                println!("snapshots asked for; `periphery files status` follows them");
                return Ok(());
            }
            eprint!("\r");
            let mut failed = 0;
            for p in done {
                match p.result {
                    Ok(s) => println!(
                        "{}: snapshot {} ({} files, {} added)",
                        p.tree,
                        &s.id[..8],
                        s.files,
                        mib(s.added)
                    ),
                    Err(e) => {
                        failed += 1;
                        println!("{}: failed: {e}", p.tree);
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} tree(s) not persisted");
            }
        }
        FilesCommand::Snapshots { user, tree } => {
            let Response::FilesSnapshots(snaps) =
                c.request(Request::FilesSnapshots { user, tree }).await?
            else {
                anyhow::bail!("unexpected answer");
            };
            for s in snaps {
                println!(
                    "{}  {:<28} {:>8} ago  {:>6} files  {:>10}  added {}",
                    &s.id[..8],
                    s.tree,
                    ago(now, s.time),
                    s.files,
                    mib(s.bytes),
                    mib(s.added)
                );
            }
        }
        FilesCommand::Restore {
            user,
            to,
            tree,
            snapshot,
            path,
        } => {
            let to = if to.is_absolute() {
                to
            } else {
                std::env::current_dir()?.join(to)
            };
            let Response::FilesRestored { snapshot, to } = c
                .request(Request::FilesRestore(RestoreRequest {
                    user,
                    tree,
                    snapshot,
                    path,
                    to: to.display().to_string(),
                }))
                .await?
            else {
                anyhow::bail!("unexpected answer");
            };
            println!(
                "restored {} snapshot {} ({} ago) to {to}",
                snapshot.tree,
                &snapshot.id[..8],
                ago(now, snapshot.time)
            );
        }
    }
    Ok(())
}
