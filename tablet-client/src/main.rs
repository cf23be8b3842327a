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
use periphery_tablet::viewer::{Viewer, ViewerError};
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
    /// Render jobs: submit, watch, control (the same commands as `periphery render`).
    #[command(subcommand)]
    Render(periphery_client::render_cli::RenderCommand),
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
    /// Offer a workstation session to a colleague: control moves when they accept.
    Handoff {
        /// Workstation name (or user/name).
        name: String,
        /// The user to hand it to.
        #[arg(long)]
        to: String,
        /// Allow taking it back with `reclaim`.
        #[arg(long)]
        reclaimable: bool,
        /// How long the offer stands: 90s, 5m, 1h.
        #[arg(long, default_value = "120s")]
        expires: String,
    },
    /// Offers made to or by this user.
    Offers {
        /// Then keep listening: print offers and their outcomes as they come, until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Accept an offer: the session becomes yours, and this tablet attaches to it.
    Accept(AcceptArgs),
    /// Decline an offer made to you.
    Decline {
        /// The offer id.
        offer: String,
    },
    /// Withdraw an offer you made.
    Withdraw {
        /// The offer id.
        offer: String,
    },
    /// Take back a session you handed off with --reclaimable.
    Reclaim {
        /// Workstation (user/name).
        name: String,
    },
    /// Share a session without handing it off.
    Share {
        /// Workstation name.
        name: String,
        /// The user to share with.
        #[arg(long)]
        with: String,
        /// Watch only (the default).
        #[arg(long, conflicts_with = "control")]
        view_only: bool,
        /// Co-control: they may take the input floor.
        #[arg(long)]
        control: bool,
    },
    /// End a share (or leave one shared with you).
    Unshare {
        /// Workstation name.
        name: String,
        /// The user (default: yourself, leaving).
        #[arg(long)]
        with: Option<String>,
    },
    /// The input floor of a co-controlled session.
    Floor {
        /// `take`.
        action: FloorAction,
        /// Workstation (name or user/name).
        name: String,
    },
    /// Who controls and watches a session, and its pending offers.
    Session {
        /// Workstation (name or user/name).
        name: String,
    },
    /// A session's offers, accepts, declines, expiries, shares (owner and controller).
    History {
        /// Workstation (name or user/name).
        name: String,
    },
}

/// What to do with the floor.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FloorAction {
    /// Take the floor: your input is applied, the others' is not.
    Take,
}

/// "90s", "5m", "1h", or plain seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a duration like 90s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("'{s}': use s, m or h"),
    };
    Ok(Duration::from_secs(secs))
}

fn print_offer(o: &periphery_protocol::OfferInfo) {
    let left = o.expires_ms.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    ) / 1000;
    println!(
        "{}  {}  from {} (device {}) to {}  expires in {left}s{}",
        o.id,
        o.ws,
        o.from_user,
        o.from_device,
        o.to_user,
        if o.reclaimable { "  reclaimable" } else { "" }
    );
}

fn print_notice(n: &periphery_protocol::Notice) {
    use periphery_protocol::Notice;
    match n {
        Notice::Offered(o) => {
            eprintln!("notice: {} offers you {}:", o.from_user, o.ws);
            print_offer(o);
            eprintln!("  to take it: periphery-tablet accept {}", o.id);
        }
        Notice::OfferEnded { offer, outcome, by } => eprintln!(
            "notice: offer {} of {} to {} {outcome}{}",
            offer.id,
            offer.ws,
            offer.to_user,
            by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
        ),
        Notice::Floor { ws, holder } => eprintln!("notice: {holder} holds the floor of {ws}"),
        Notice::Shared { ws, by, access } => {
            eprintln!("notice: {by} shared {ws} with you ({access})")
        }
        Notice::Detached { reason, .. } => eprintln!("notice: detached: {reason}"),
        Notice::Closing { reason } => eprintln!("notice: the appliance is closing: {reason}"),
    }
}

/// How to accept, and how the accepting tablet attaches: it shows monitor 0 of the layout it
/// takes over, or extends it with a monitor of its own size.
#[derive(Debug, clap::Args)]
struct AcceptArgs {
    /// The offer id.
    offer: String,
    /// Only accept; do not attach.
    #[arg(long)]
    no_attach: bool,
    /// Extend the desktop with a monitor of this tablet's size instead of showing monitor 0.
    #[arg(long, conflicts_with = "mirror")]
    extend: bool,
    /// The size of that monitor (default: the screen's size in a full-screen window; 1280x800
    /// headless).
    #[arg(long, requires = "extend")]
    size: Option<String>,
    /// Show this monitor (default 0).
    #[arg(long)]
    mirror: Option<u32>,
    /// Attach without a window.
    #[arg(long)]
    headless: bool,
    /// Leave after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Save the latest frame as PNG when leaving.
    #[arg(long)]
    screenshot: Option<PathBuf>,
}

impl AcceptArgs {
    /// How to attach to `ws` once it is ours.
    fn attach_args(self, ws: String) -> AttachArgs {
        AttachArgs {
            name: ws,
            extend: self.extend,
            size: self.size,
            mirror: (!self.extend).then(|| self.mirror.unwrap_or(0)),
            view_only: false,
            headless: self.headless,
            screenshot: self.screenshot,
            seconds: self.seconds,
        }
    }
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
        Command::Accept(a) if !a.no_attach && !a.headless => {
            // Accept on the runtime, then the window on this thread.
            let home = Home::new(cli.home.unwrap_or_else(Home::default_dir));
            rt.block_on(accept(&home, a.offer.clone()))
                .and_then(|ws| attach_window(&rt, home, a.attach_args(ws)))
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
                Identity::Node { node_id, name } => println!("render node {node_id} ({name})"),
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
            let me = match &s.welcome.identity {
                Some(periphery_protocol::Identity::Device { user, .. }) => user.clone(),
                _ => String::new(),
            };
            for w in list {
                // Sessions handed or shared to this user are named with their owner.
                let name = if w.user == me {
                    w.name
                } else {
                    format!("{}/{}", w.user, w.name)
                };
                println!("{name:<20} {:<8} {}", w.backend, w.state);
            }
            s.close().await;
        }
        Command::Attach(args) => attach_headless(&home, &args).await?,
        Command::Handoff {
            name,
            to,
            reclaimable,
            expires,
        } => {
            let ttl = parse_duration(&expires)?;
            let mut s = connect(&home).await?;
            let r = s
                .request(Request::HandoffOffer {
                    ws: name,
                    to,
                    ttl_secs: ttl.as_secs(),
                    reclaimable,
                })
                .await?;
            let Response::Offer(o) = r else {
                anyhow::bail!("unexpected answer");
            };
            print_offer(&o);
            s.close().await;
        }
        Command::Offers { watch } => {
            let mut s = connect(&home).await?;
            let Response::Offers(list) = s.request(Request::Offers).await? else {
                anyhow::bail!("unexpected answer");
            };
            if list.is_empty() {
                println!("no pending offers");
            }
            for o in &list {
                print_offer(o);
            }
            if watch {
                loop {
                    tokio::select! {
                        n = s.recv_notice() => match n {
                            Some(n) => print_notice(&n),
                            None => anyhow::bail!("the appliance closed the connection"),
                        },
                        _ = tokio::signal::ctrl_c() => break,
                    }
                }
            }
            s.close().await;
        }
        Command::Accept(a) => {
            // (With a window, main() runs the accept and the window itself.)
            let ws = accept(&home, a.offer.clone()).await?;
            if !a.no_attach {
                attach_headless(&home, &a.attach_args(ws)).await?;
            }
        }
        Command::Decline { offer } => simple(&home, Request::HandoffDecline { offer }).await?,
        Command::Withdraw { offer } => simple(&home, Request::HandoffWithdraw { offer }).await?,
        Command::Reclaim { name } => simple(&home, Request::Reclaim { ws: name }).await?,
        Command::Share {
            name,
            with,
            view_only: _,
            control,
        } => {
            simple(
                &home,
                Request::Share {
                    ws: name,
                    with,
                    control,
                },
            )
            .await?
        }
        Command::Unshare { name, with } => {
            let with = match with {
                Some(w) => w,
                None => match connect(&home).await?.welcome.identity {
                    Some(periphery_protocol::Identity::Device { user, .. }) => user,
                    _ => anyhow::bail!("say whose share ends with --with"),
                },
            };
            simple(&home, Request::Unshare { ws: name, with }).await?
        }
        Command::Floor {
            action: FloorAction::Take,
            name,
        } => simple(&home, Request::FloorTake { ws: name }).await?,
        Command::Session { name } => {
            let mut s = connect(&home).await?;
            let Response::Session(i) = s.request(Request::SessionShow { ws: name }).await? else {
                anyhow::bail!("unexpected answer");
            };
            println!("{}", i.ws);
            println!("  controller {}  (epoch {})", i.holder, i.epoch);
            if let Some(r) = &i.reclaimer {
                println!("  reclaimable by {r}");
            }
            println!("  floor      {}", i.floor);
            for (u, a) in &i.shares {
                println!("  shared     {u} ({a})");
            }
            for o in &i.offers {
                print!("  offer      ");
                print_offer(o);
            }
            s.close().await;
        }
        Command::Render(c) => {
            let mut s = connect(&home).await?;
            let r = periphery_client::render_cli::run(&mut s, c).await;
            s.close().await;
            r?;
        }
        Command::History { name } => {
            let mut s = connect(&home).await?;
            let Response::Audit(rows) = s.request(Request::History { ws: name }).await? else {
                anyhow::bail!("unexpected answer");
            };
            for r in rows {
                println!(
                    "{:>6}  {}  {:<20} {:<20} {}",
                    r.seq, r.at, r.actor, r.event, r.detail
                );
            }
            s.close().await;
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
/// forwards the window's input, until Ctrl-C, `--seconds`, or the window closes (`true`), or
/// the appliance detaches this tablet (`false`, with the reason printed).
async fn watch(
    v: &mut Viewer,
    args: &AttachArgs,
    mut window: Option<(ToWindow, mpsc::Receiver<FromWindow>)>,
) -> anyhow::Result<bool> {
    let end = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            r = v.next_frame(Duration::from_millis(200)) => {
                let r = match r {
                    Err(ViewerError::Detached(reason)) => {
                        eprintln!("detached: {reason}");
                        return Ok(false);
                    }
                    r => r?,
                };
                if let (Some(d), Some((w, _))) = (r, &window) {
                    w.frame(d);
                }
                for n in v.notices.drain(..) {
                    print_notice(&n);
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
    Ok(true)
}

/// Saves the screenshot if asked, and detaches (unless the appliance already did).
async fn finish(v: Viewer, args: &AttachArgs, attached: bool) -> anyhow::Result<()> {
    if let Some(path) = &args.screenshot {
        let d = v.latest().context("no frame was decoded")?;
        let bgra = periphery_media::i420_to_bgra(&d.image);
        write_png(path, d.image.width, d.image.height, &bgra)?;
        eprintln!("saved frame {} to {}", d.header.sequence, path.display());
    }
    if !attached {
        v.abandon();
        return Ok(());
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
                finish(v, &args, *r.as_ref().unwrap_or(&true)).await?;
                r.map(|_| ())
            }
            .await;
            *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            to_window.finished();
        });
    })?;
    let r = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
    r.unwrap_or(Ok(()))
}

/// One request whose answer is `Done`.
async fn simple(home: &Home, request: Request) -> anyhow::Result<()> {
    let mut s = connect(home).await?;
    let name = request.name();
    match s.request(request).await? {
        Response::Done => println!("{name}: done"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
    s.close().await;
    Ok(())
}

/// Attaches without a window until Ctrl-C, `--seconds` or a detach by the appliance.
async fn attach_headless(home: &Home, args: &AttachArgs) -> anyhow::Result<()> {
    let size = match &args.size {
        Some(s) => parse_size(s)?,
        None => (1280, 800),
    };
    let mut v = attach(home, args, size).await?;
    let attached = watch(&mut v, args, None).await?;
    finish(v, args, attached).await
}

/// Accepts an offer; returns the workstation (`user/name`) now controlled.
async fn accept(home: &Home, offer: String) -> anyhow::Result<String> {
    let mut s = connect(home).await?;
    let r = s.request(Request::HandoffAccept { offer }).await?;
    let Response::HandedOff { ws, epoch } = r else {
        anyhow::bail!("unexpected answer");
    };
    println!("{ws} is yours (session epoch {epoch})");
    s.close().await;
    Ok(ws)
}
