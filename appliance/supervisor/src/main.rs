//! `periphery`: the appliance daemon (`periphery serve`) and its admin CLI.
//!
//! Every admin command talks to the running daemon over `<state>/admin.sock`; the daemon owns
//! the state. See the crate README for the map of modules.

mod admin;
mod appliance;
mod clock;
mod codes;
mod config;
mod control;
mod discovery;
mod files_cli;
mod identity;
mod limits;
mod persistence;
mod quic;
mod render;
mod serve;
mod store;
mod streaming;
mod tls;
mod workstations;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use periphery_protocol::{Request, Response, Role};

use crate::admin::AdminClient;
use crate::config::{Config, FileConfig, LogFormat, Overrides};

/// Periphery: a desktop microcloud appliance.
#[derive(Debug, Parser)]
#[command(name = "periphery", version, about)]
struct Cli {
    /// State directory: database, identity, admin socket.
    #[arg(long, global = true, env = "PERIPHERY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance daemon.
    Serve(ServeArgs),
    /// Show the appliance's status.
    Status,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage paired devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manage workstations.
    #[command(subcommand)]
    Ws(WsCommand),
    /// Render jobs and nodes.
    #[command(subcommand)]
    Render(periphery_client::render_cli::RenderCommand),
    /// Where files persist to (object storage or a directory).
    #[command(subcommand)]
    Storage(files_cli::StorageCommand),
    /// Persisted files: status, snapshots, restores.
    #[command(subcommand)]
    Files(files_cli::FilesCommand),
    /// Show the audit log.
    Audit {
        /// Show at most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Config file (TOML). Default: <state>/periphery.toml if it exists.
    #[arg(long, env = "PERIPHERY_CONFIG")]
    config: Option<PathBuf>,
    /// Appliance name, announced on the LAN.
    #[arg(long, env = "PERIPHERY_NAME")]
    name: Option<String>,
    /// QUIC listen address (default 127.0.0.1:4470).
    #[arg(long, env = "PERIPHERY_LISTEN")]
    listen: Option<String>,
    /// Listen on all interfaces (0.0.0.0:4470): what an appliance on a LAN does.
    #[arg(long, conflicts_with = "listen")]
    public: bool,
    /// Do not announce by mDNS.
    #[arg(long)]
    no_discovery: bool,
    /// Log format: text or json.
    #[arg(long, env = "PERIPHERY_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or periphery=debug.
    #[arg(long, env = "PERIPHERY_LOG")]
    log_level: Option<String>,
    /// Do not run a render node on the appliance itself.
    #[arg(long)]
    no_local_node: bool,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user. Asks for a password unless --password-stdin or --no-password.
    Add {
        /// Login name.
        name: String,
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// No password: the user pairs devices with codes only.
        #[arg(long)]
        no_password: bool,
    },
    /// List users.
    List,
    /// Remove a user and revoke their devices.
    Remove {
        /// Login name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Print a one-time pairing code for a user.
    PairCode {
        /// The user the tablet will belong to.
        #[arg(long)]
        user: String,
    },
    /// List paired devices.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a device: it is refused from now on.
    Revoke {
        /// Device id (see `device list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum WsCommand {
    /// Create a workstation.
    Create {
        /// Owner.
        #[arg(long)]
        user: String,
        /// Name, unique per user.
        #[arg(long)]
        name: String,
        /// xvfb or qemu.
        #[arg(long, default_value = "xvfb")]
        backend: String,
        /// Monitor sizes, primary first: 1920x1080[,2732x2048…].
        #[arg(long, value_delimiter = ',', default_value = "1920x1080")]
        monitors: Vec<String>,
        /// qemu: the base disk image (never modified; the VM writes to an overlay).
        #[arg(long)]
        image: Option<String>,
        /// qemu: memory, e.g. 4G.
        #[arg(long)]
        memory: Option<String>,
        /// qemu: CPUs.
        #[arg(long)]
        cpus: Option<u32>,
        /// qemu: boot this kernel directly instead of the disk's boot loader.
        #[arg(long)]
        kernel: Option<String>,
        /// qemu: with --kernel, this initramfs.
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        /// qemu: with --kernel, this kernel command line.
        #[arg(long, requires = "kernel")]
        append: Option<String>,
    },
    /// List workstations.
    List,
    /// Start a workstation (`name` or `user/name`).
    Start {
        /// The workstation.
        ws: String,
    },
    /// Stop a workstation (a VM is asked to power down first).
    Stop {
        /// The workstation.
        ws: String,
        /// Stop at once (a VM is not asked to power down).
        #[arg(long)]
        force: bool,
    },
    /// Delete a workstation and its home directory.
    Delete {
        /// The workstation.
        ws: String,
    },
    /// Show state, monitors, processes and resource use.
    Show {
        /// The workstation.
        ws: String,
    },
    /// Add or remove monitors of a running workstation.
    #[command(subcommand)]
    Monitor(MonitorCommand),
    /// Save what a monitor shows as PNG.
    Screenshot {
        /// The workstation.
        ws: String,
        /// Monitor id.
        #[arg(long, default_value_t = 0)]
        monitor: u32,
        /// Instead of what it shows now: the captured frame its stream sent with this sequence
        /// number (needs `[streaming] keep_source_frames`).
        #[arg(long)]
        sequence: Option<u64>,
        /// Output file.
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum MonitorCommand {
    /// Add a monitor: `ws monitor add design 2732x2048`.
    Add {
        /// The workstation.
        ws: String,
        /// Size.
        size: String,
    },
    /// Remove a monitor; its windows move to monitor 0.
    Remove {
        /// The workstation.
        ws: String,
        /// Monitor id.
        monitor: u32,
    },
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("periphery");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/periphery"),
        None => PathBuf::from("/var/lib/periphery"),
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        "periphery".into()
    } else {
        format!("periphery-{clean}")
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let state_dir = cli.state_dir.unwrap_or_else(default_state_dir);
    match cli.command {
        Command::Serve(a) => {
            let file_path = a
                .config
                .clone()
                .or_else(|| Some(state_dir.join("periphery.toml")).filter(|p| p.exists()));
            let file = match &file_path {
                Some(p) => FileConfig::read(p)?,
                None => FileConfig::default(),
            };
            let over = Overrides {
                name: a.name,
                listen: a.listen,
                public: a.public,
                no_discovery: a.no_discovery,
                log_format: a.log_format,
                log_level: a.log_level,
                no_local_node: a.no_local_node,
            };
            let config = Config::from_parts(state_dir, default_name(), file, over)?;
            init_logging(&config);
            serve::serve(config).await
        }
        Command::Status => status(&state_dir).await,
        Command::User(c) => user(&state_dir, c).await,
        Command::Device(c) => device(&state_dir, c).await,
        Command::Ws(c) => ws(&state_dir, c).await,
        Command::Render(c) => {
            let mut admin = AdminClient::connect(&state_dir).await?;
            Ok(periphery_client::render_cli::run(&mut admin, c).await?)
        }
        Command::Storage(c) => files_cli::storage(&state_dir, c).await,
        Command::Files(c) => files_cli::files(&state_dir, c).await,
        Command::Audit { limit } => {
            let mut c = AdminClient::connect(&state_dir).await?;
            let Response::Audit(rows) = c.request(Request::Audit { limit }).await? else {
                anyhow::bail!("unexpected answer");
            };
            let now = crate::clock::unix_secs();
            for r in rows {
                println!(
                    "{:>6}  {:>8} ago  {:<18} {:<24} {}",
                    r.seq,
                    ago(now, r.at),
                    r.event,
                    r.actor,
                    r.detail
                );
            }
            Ok(())
        }
    }
}

fn init_logging(c: &Config) {
    // The S3 signing library logs its credentials, secret included, at debug: it never logs
    // below warn here, whatever the filter says.
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{},reqsign=warn,reqsign_core=warn,reqsign_aws_v4=warn",
        c.log_level
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// How long ago `then` was, shortly.
pub(crate) fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

async fn status(state_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut c = AdminClient::connect(state_dir).await?;
    let Response::Status(s) = c.request(Request::Status).await? else {
        anyhow::bail!("unexpected answer");
    };
    let now = crate::clock::unix_secs();
    println!("Periphery appliance {}", s.name);
    println!(
        "  version       {} (protocol {}-{})",
        s.version, s.protocol.0, s.protocol.1
    );
    println!("  uptime        {}", ago(s.uptime_secs, 0));
    println!("  listening     {}", s.listening.join(", "));
    println!("  fingerprint   {}", s.fingerprint);
    println!("  discovery     {}", s.discovery);
    println!("  state         {}", s.state_dir);
    println!("  render node   {}", s.local_render_node);
    println!("users ({})", s.users.len());
    for u in &s.users {
        println!("  {:<20} {:<6} devices {}", u.name, u.role, u.devices);
    }
    println!("devices ({})", s.devices.len());
    for d in &s.devices {
        println!(
            "  {:<14} {:<16} {:<20} {}{}",
            d.id,
            d.user,
            d.name,
            if d.revoked { "revoked" } else { "active" },
            if d.connected { ", connected" } else { "" }
        );
    }
    println!(
        "input dropped at the session gate: {} events",
        s.input_dropped_at_gate
    );
    println!("streams ({})", s.streams.len());
    for st in &s.streams {
        println!(
            "  {} monitor {}: {} tablet(s), {} frames, encoder {}",
            st.workstation, st.monitor, st.tablets, st.frames, st.encoder
        );
        let f = &st.figures;
        println!(
            "    pipeline: {:.1} fps, per frame: capture (incl. waiting for changes) {:.1} ms, convert {:.1} ms, encode {:.1} ms",
            f.fps, f.capture_ms, f.convert_ms, f.encode_ms
        );
        for (device, figures) in &st.tablet_stats {
            match figures {
                Some(f) => println!(
                    "    tablet {device}: {:.1} fps, latency p50 {:.1} ms p99 {:.1} ms, dropped {}",
                    f.fps, f.p50_ms, f.p99_ms, f.dropped
                ),
                None => println!("    tablet {device}: no figures yet"),
            }
        }
    }
    println!("connected tablets ({})", s.connections.len());
    for t in &s.connections {
        println!(
            "  {:<22} {:<16} {:<14} {}",
            t.remote,
            t.user.as_deref().unwrap_or("(unpaired)"),
            t.device_id.as_deref().unwrap_or("-"),
            ago(now, now.saturating_sub(t.connected_secs))
        );
    }
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no terminal to ask for a password: use --password-stdin or --no-password");
    }
    let p1 = rpassword::prompt_password("password: ")?;
    let p2 = rpassword::prompt_password("again: ")?;
    if p1 != p2 {
        anyhow::bail!("the passwords differ");
    }
    Ok(p1)
}

async fn user(state_dir: &std::path::Path, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            admin,
            password_stdin,
            no_password,
        } => {
            let password = if no_password {
                None
            } else if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                Some(read_password()?)
            };
            let role = if admin { Role::Admin } else { Role::User };
            let mut c = AdminClient::connect(state_dir).await?;
            c.request(Request::UserAdd {
                name: name.clone(),
                password,
                role,
            })
            .await?;
            println!("added {role} {name}");
        }
        UserCommand::List => {
            let mut c = AdminClient::connect(state_dir).await?;
            let Response::Users(users) = c.request(Request::UserList).await? else {
                anyhow::bail!("unexpected answer");
            };
            for u in users {
                println!(
                    "{:<20} {:<6} devices {:<3} {}",
                    u.name,
                    u.role,
                    u.devices,
                    if u.has_password {
                        "password"
                    } else {
                        "codes only"
                    }
                );
            }
        }
        UserCommand::Remove { name } => {
            let mut c = AdminClient::connect(state_dir).await?;
            c.request(Request::UserRemove { name: name.clone() })
                .await?;
            println!("removed user {name}; their devices are revoked");
        }
    }
    Ok(())
}

async fn device(state_dir: &std::path::Path, cmd: DeviceCommand) -> anyhow::Result<()> {
    let mut c = AdminClient::connect(state_dir).await?;
    match cmd {
        DeviceCommand::PairCode { user } => {
            let Response::PairCode {
                code,
                expires_in_secs,
            } = c
                .request(Request::PairCodeCreate { user: user.clone() })
                .await?
            else {
                anyhow::bail!("unexpected answer");
            };
            println!("{code}");
            eprintln!(
                "one-time code for {user}, valid {expires_in_secs} s: on the tablet run\n  periphery-tablet pair <appliance address> --code {code}\nand check that it shows fingerprint {}",
                c.welcome.fingerprint
            );
        }
        DeviceCommand::List { user } => {
            let Response::Devices(devices) = c.request(Request::DeviceList { user }).await? else {
                anyhow::bail!("unexpected answer");
            };
            let now = crate::clock::unix_secs();
            for d in devices {
                println!(
                    "{:<14} {:<16} {:<20} paired {:>8} ago  last seen {:<10} serial {}  {}{}",
                    d.id,
                    d.user,
                    d.name,
                    ago(now, d.paired_at),
                    d.last_seen
                        .map(|t| format!("{} ago", ago(now, t)))
                        .unwrap_or_else(|| "never".into()),
                    d.serial,
                    if d.revoked { "revoked" } else { "active" },
                    if d.connected { ", connected" } else { "" }
                );
            }
        }
        DeviceCommand::Revoke { id } => {
            c.request(Request::DeviceRevoke { id: id.clone() }).await?;
            println!("revoked {id}: it is refused from now on");
        }
    }
    Ok(())
}

fn print_workstation(w: &periphery_protocol::WorkstationInfo) {
    println!("{}/{}  {}  {}", w.user, w.name, w.backend, w.state);
    if let Some(r) = &w.reason {
        println!("  reason    {r}");
    }
    for m in &w.monitors {
        println!(
            "  monitor {}  {}x{}+{}+{}",
            m.id, m.width, m.height, m.x, m.y
        );
    }
    if !w.pids.is_empty() {
        let pids: Vec<String> = w.pids.iter().map(|(r, p)| format!("{r} {p}")).collect();
        println!("  pids      {}", pids.join(", "));
    }
    if let Some(b) = w.memory_bytes {
        println!(
            "  memory    {:.1} MiB resident",
            b as f64 / (1024.0 * 1024.0)
        );
    }
    if let Some(c) = w.cpu_secs {
        println!("  cpu       {c:.2} s used");
    }
    println!("  detail    {}", w.detail);
    println!("  limits    {}", w.limits);
}

async fn ws(state_dir: &std::path::Path, cmd: WsCommand) -> anyhow::Result<()> {
    let mut c = AdminClient::connect(state_dir).await?;
    let show = |r: Response| -> anyhow::Result<()> {
        match r {
            Response::Workstation(w) => print_workstation(&w),
            Response::Done => {}
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
        Ok(())
    };
    match cmd {
        WsCommand::Create {
            user,
            name,
            backend,
            monitors,
            image,
            memory,
            cpus,
            kernel,
            initrd,
            append,
        } => show(
            c.request(Request::WorkstationCreate {
                user: Some(user),
                name,
                backend,
                monitors,
                image,
                memory,
                cpus,
                kernel,
                initrd,
                append,
            })
            .await?,
        )?,
        WsCommand::List => {
            let Response::Workstations(list) = c.request(Request::WorkstationList).await? else {
                anyhow::bail!("unexpected answer");
            };
            for w in list {
                let mons: Vec<String> = w
                    .monitors
                    .iter()
                    .map(|m| format!("{}x{}", m.width, m.height))
                    .collect();
                println!(
                    "{:<24} {:<6} {:<11} {}{}",
                    format!("{}/{}", w.user, w.name),
                    w.backend,
                    w.state,
                    mons.join(","),
                    w.reason.map(|r| format!("  ({r})")).unwrap_or_default()
                );
            }
        }
        WsCommand::Start { ws } => show(c.request(Request::WorkstationStart { ws }).await?)?,
        WsCommand::Stop { ws, force } => {
            show(c.request(Request::WorkstationStop { ws, force }).await?)?
        }
        WsCommand::Delete { ws } => {
            c.request(Request::WorkstationDelete { ws: ws.clone() })
                .await?;
            println!("deleted {ws}");
        }
        WsCommand::Show { ws } => show(c.request(Request::WorkstationShow { ws }).await?)?,
        WsCommand::Monitor(MonitorCommand::Add { ws, size }) => {
            show(c.request(Request::MonitorAdd { ws, size }).await?)?
        }
        WsCommand::Monitor(MonitorCommand::Remove { ws, monitor }) => {
            show(c.request(Request::MonitorRemove { ws, monitor }).await?)?
        }
        WsCommand::Screenshot {
            ws,
            monitor,
            sequence,
            out,
        } => {
            let request = match sequence {
                Some(sequence) => Request::SourceFrame {
                    ws,
                    monitor,
                    sequence,
                },
                None => Request::Screenshot { ws, monitor },
            };
            let Response::Png(png) = c.request(request).await? else {
                anyhow::bail!("unexpected answer");
            };
            std::fs::write(&out, &png)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "saved monitor {monitor} to {} ({} bytes)",
                out.display(),
                png.len()
            );
        }
    }
    Ok(())
}
