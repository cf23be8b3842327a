//! `periphery-tablet`: discover an appliance, pair with it, and use it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use periphery_protocol::pairing::{fingerprint_matches, PairingCode};
use periphery_protocol::{AttachMode, Identity, Request, Response};
use periphery_tablet::home::Home;
use periphery_tablet::pairing::FirstContact;
use periphery_tablet::session::{resolve, Session};
use periphery_tablet::viewer::Viewer;
use periphery_tablet::window::{self, FromWindow, Sizing, ToWindow};
use periphery_tablet::{discover, tls};

/// The Periphery tablet client.
#[derive(Debug, Parser)]
#[command(name = "periphery-tablet", version, about)]
struct Cli {
    /// Where this tablet keeps its key and pairing.
    #[arg(long, global = true, env = "PERIPHERY_TABLET_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Find appliances on the LAN (mDNS/DNS-SD).
    Discover {
        /// How long to listen, in seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// Stop at the first appliance found.
        #[arg(long)]
        first: bool,
    },
    /// Pair with an appliance, by one-time code or by password.
    Pair {
        /// Appliance address: host or host:port (default port 4470).
        host: String,
        /// One-time code from the appliance (`periphery device pair-code`, or its console).
        #[arg(long, conflicts_with = "user")]
        code: Option<String>,
        /// Pair with this user's password instead of a code.
        #[arg(long, required_unless_present = "code")]
        user: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, requires = "user")]
        password_stdin: bool,
        /// The appliance fingerprint you expect (at least 16 hex digits), instead of a prompt.
        #[arg(long, requires = "user")]
        fingerprint: Option<String>,
        /// A name for this device, shown in device lists.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show who this tablet is on the appliance.
    Whoami,
    /// List this user's workstations.
    Workstations,
    /// Start one of this user's workstations.
    Start {
        /// Workstation name.
        name: String,
    },
    /// Stop one of this user's workstations.
    Stop {
        /// Workstation name.
        name: String,
    },
    /// Attach to a workstation: extend it with a monitor of this tablet's size, or mirror one.
    Attach(AttachArgs),
}

/// How to attach.
#[derive(Debug, clap::Args)]
struct AttachArgs {
    /// Workstation name.
    name: String,
    /// Extend: the workstation grows a monitor for this tablet (the default).
    #[arg(long, conflicts_with = "mirror")]
    extend: bool,
    /// The size of this tablet's monitor when extending (default: the screen's size in a
    /// full-screen window; 1280x800 headless).
    #[arg(long)]
    size: Option<String>,
    /// Mirror an existing monitor instead.
    #[arg(long)]
    mirror: Option<u32>,
    /// Watch only: send no input.
    #[arg(long)]
    view_only: bool,
    /// Decode without a window; print a stats line per second.
    #[arg(long)]
    headless: bool,
    /// Save the latest frame as PNG when leaving.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Leave after this many seconds (default: until Ctrl-C or the window closes).
    #[arg(long)]
    seconds: Option<f64>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERIPHERY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let outcome = match cli.command {
        Command::Attach(args) if !args.headless => {
            let home = Home::new(cli.home.unwrap_or_else(Home::default_dir));
            attach_window(&rt, home, args)
        }
        command => rt.block_on(run(cli.home, command)),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn default_device_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("tablet-{}", host.trim())
}

async fn run(home: Option<PathBuf>, command: Command) -> anyhow::Result<()> {
    let home = Home::new(home.unwrap_or_else(Home::default_dir));
    match command {
        Command::Discover { timeout, first } => {
            let timeout = Duration::from_secs_f64(timeout.clamp(0.1, 300.0));
            let found =
                tokio::task::spawn_blocking(move || discover::discover(timeout, first)).await??;
            if found.is_empty() {
                anyhow::bail!("no appliance answered within {timeout:?}");
            }
            for f in found {
                let addrs: Vec<String> = f.addresses.iter().map(|a| a.to_string()).collect();
                println!(
                    "{}  {}  port {}  protocol {}  version {}  {}",
                    f.name,
                    addrs.join(","),
                    f.port,
                    f.proto,
                    f.version,
                    f.fingerprint
                );
            }
        }
        Command::Pair {
            host,
            code,
            user,
            password_stdin,
            fingerprint,
            name,
        } => {
            let name = name.unwrap_or_else(default_device_name);
            let addr = resolve(&host)
                .await
                .with_context(|| format!("cannot resolve {host}"))?;
            let code = code
                .map(|c| PairingCode::parse(&c))
                .transpose()
                .context("invalid --code")?;
            let contact = FirstContact::connect(addr).await?;
            let fp = contact.fingerprint();
            let creds = match (code, user) {
                (Some(code), _) => {
                    eprintln!("appliance {} ({fp})", contact.session.welcome.appliance);
                    contact.pair_with_code(&host, &code, &name).await?
                }
                (None, Some(user)) => {
                    confirm_fingerprint(&contact.session.welcome.appliance, &fp, fingerprint)?;
                    let password = if password_stdin {
                        let mut line = String::new();
                        std::io::stdin().lock().read_line(&mut line)?;
                        line.trim_end_matches(['\r', '\n']).to_owned()
                    } else if std::io::stdin().is_terminal() {
                        rpassword::prompt_password(format!("password for {user}: "))?
                    } else {
                        anyhow::bail!("no terminal to ask for the password: use --password-stdin");
                    };
                    contact
                        .pair_with_password(&host, &user, password, &name)
                        .await?
                }
                (None, None) => anyhow::bail!("give --code or --user"),
            };
            home.save(&creds)?;
            println!(
                "paired with {} as {} (device {}); credentials in {}",
                creds.pairing.appliance,
                creds.pairing.user,
                creds.pairing.device_id,
                home.dir().display()
            );
        }
        Command::Whoami => {
            let mut s = connect(&home).await?;
            let Response::Whoami(id) = s.request(Request::Whoami).await? else {
                anyhow::bail!("unexpected answer");
            };
            match id {
                Identity::Device {
                    device_id,
                    device_name,
                    user,
                    role,
                } => println!(
                    "user {user} ({role}), device {device_id} ({device_name}), appliance {}",
                    s.welcome.appliance
                ),
                Identity::LocalAdmin { uid } => println!("local admin (uid {uid})"),
            }
            s.close().await;
        }
        Command::Workstations => {
            let mut s = connect(&home).await?;
            let Response::Workstations(list) = s.request(Request::WorkstationList).await? else {
                anyhow::bail!("unexpected answer");
            };
            if list.is_empty() {
                println!("no workstations");
            }
            for w in list {
                println!("{:<20} {:<8} {}", w.name, w.backend, w.state);
            }
            s.close().await;
        }
        Command::Attach(args) => {
            let size = match &args.size {
                Some(s) => parse_size(s)?,
                None => (1280, 800),
            };
            let mut v = attach(&home, &args, size).await?;
            watch(&mut v, &args, None).await?;
            finish(v, &args).await?;
        }
        Command::Start { name } => {
            let mut s = connect(&home).await?;
            let r = s.request(Request::WorkstationStart { ws: name }).await?;
            if let Response::Workstation(w) = r {
                println!("{} {}", w.name, w.state);
            }
            s.close().await;
        }
        Command::Stop { name } => {
            let mut s = connect(&home).await?;
            let r = s
                .request(Request::WorkstationStop {
                    ws: name,
                    force: false,
                })
                .await?;
            if let Response::Workstation(w) = r {
                println!("{} {}", w.name, w.state);
            }
            s.close().await;
        }
    }
    Ok(())
}

fn confirm_fingerprint(appliance: &str, fp: &str, expected: Option<String>) -> anyhow::Result<()> {
    if let Some(expected) = expected {
        if fingerprint_matches(fp, &expected) {
            return Ok(());
        }
        anyhow::bail!(
            "the appliance presented {fp}, not the fingerprint you gave: not sending the password"
        );
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("appliance {appliance} presents {fp}: confirm it with --fingerprint (no terminal to ask)");
    }
    eprint!("appliance {appliance} presents\n  {fp}\nDoes this match the fingerprint on the appliance's console? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("fingerprint not confirmed: not sending the password")
    }
}

async fn connect(home: &Home) -> anyhow::Result<Session> {
    let c = home.load()?;
    let addr = resolve(&c.pairing.address)
        .await
        .with_context(|| format!("cannot resolve {}", c.pairing.address))?;
    let config = tls::pinned(&c.ca_der, &c.cert_der, &c.key_der)?;
    Ok(Session::connect(addr, config).await?)
}

fn write_png(path: &std::path::Path, w: u32, h: u32, bgra: &[u8]) -> anyhow::Result<()> {
    let rgb: Vec<u8> = bgra
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .context("--size is WIDTHxHEIGHT, like 2732x2048")
}

/// Attaches as `args` say; an extended monitor is `size`.
async fn attach(home: &Home, args: &AttachArgs, size: (u32, u32)) -> anyhow::Result<Viewer> {
    let mode = match args.mirror {
        Some(monitor) => AttachMode::Mirror { monitor },
        None => AttachMode::Extend {
            width: size.0,
            height: size.1,
        },
    };
    let c = home.load()?;
    let addr = resolve(&c.pairing.address).await?;
    let config = tls::pinned(&c.ca_der, &c.cert_der, &c.key_der)?;
    let v = Viewer::attach(addr, config, &args.name, mode, args.view_only).await?;
    let m = &v.attachment.monitor;
    eprintln!(
        "attached to {} monitor {} ({}x{}); clock offset {:.1} ms",
        args.name,
        m.id,
        m.width,
        m.height,
        v.clock_offset_us() as f64 / 1000.0
    );
    Ok(v)
}

/// Receives, decodes and (with a window) shows frames, prints a stats line per second, and
/// forwards the window's input, until Ctrl-C, `--seconds`, or the window closes.
async fn watch(
    v: &mut Viewer,
    args: &AttachArgs,
    mut window: Option<(ToWindow, mpsc::Receiver<FromWindow>)>,
) -> anyhow::Result<()> {
    let end = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            r = v.next_frame(Duration::from_millis(200)) => {
                if let (Some(d), Some((w, _))) = (r?, &window) {
                    w.frame(d);
                }
            }
            _ = tick.tick() => {
                let st = v.take_stats();
                let line = format!(
                    "fps {:5.1}  latency p50 {:6.1} ms p99 {:6.1} ms  {:6.2} Mbit/s  dropped {}  frames {}  encoder {}",
                    st.fps, st.p50_ms, st.p99_ms, st.mbit_s, st.dropped, st.total, v.encoder
                );
                println!("{line}");
                if let Some((w, _)) = &window {
                    w.status(format!("{:.0} fps, {:.0} ms", st.fps, st.p50_ms));
                }
                v.report_stats(&st).await?;
            }
            m = async {
                match window.as_mut() {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match m {
                    Some(FromWindow::Input(e)) if !args.view_only => v.send_input(e).await?,
                    Some(FromWindow::Input(_)) => {}
                    Some(FromWindow::Close) | None => break,
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
        if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
            break;
        }
    }
    Ok(())
}

/// Saves the screenshot if asked, and detaches.
async fn finish(v: Viewer, args: &AttachArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.screenshot {
        let d = v.latest().context("no frame was decoded")?;
        let bgra = periphery_media::i420_to_bgra(&d.image);
        write_png(path, d.image.width, d.image.height, &bgra)?;
        eprintln!("saved frame {} to {}", d.header.sequence, path.display());
    }
    // Leaving anyway: a detach that fails (the appliance went away first) is only worth a note;
    // the appliance removes the monitor when the connection's grace runs out.
    if let Err(e) = v.detach().await {
        eprintln!("note: did not detach cleanly: {e:#}");
    }
    Ok(())
}

/// Attach with a window: winit runs on this thread, the network side on the runtime.
fn attach_window(rt: &tokio::runtime::Runtime, home: Home, args: AttachArgs) -> anyhow::Result<()> {
    let explicit = args.size.as_deref().map(parse_size).transpose()?;
    let sizing = match (explicit, args.mirror) {
        (None, None) => Sizing::FullScreen,
        (Some((w, h)), _) => Sizing::Windowed(w, h),
        (None, Some(_)) => Sizing::Windowed(1280, 800),
    };
    let title = match args.mirror {
        Some(m) => format!("{} (mirror of monitor {m})", args.name),
        None => args.name.clone(),
    };
    let (input_tx, input_rx) = mpsc::channel(1024);
    let outcome: Arc<Mutex<Option<anyhow::Result<()>>>> = Arc::default();
    let result = outcome.clone();
    let handle = rt.handle().clone();
    window::run(title, sizing, input_tx, move |screen, to_window| {
        handle.spawn(async move {
            let r = async {
                let mut v = attach(&home, &args, explicit.unwrap_or(screen)).await?;
                let r = watch(&mut v, &args, Some((to_window.clone(), input_rx))).await;
                finish(v, &args).await?;
                r
            }
            .await;
            *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            to_window.finished();
        });
    })?;
    let r = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
    r.unwrap_or(Ok(()))
}
