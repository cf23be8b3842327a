//! The Xvfb backend: one Xvfb per workstation, a window manager, and the session.
//!
//! - [`XvfbWorkstation::start`] starts Xvfb on a display it picks (`-displayfd`), on its Unix
//!   socket only (`-nolisten tcp`), with a random MIT cookie; lays the monitors out as RandR 1.5
//!   monitors inside one fixed framebuffer ([`Limits::framebuffer`](crate::Limits)); then
//!   starts the window manager (openbox by default: it sees the monitors through Xinerama, which
//!   the X server answers from RandR) and the session command. When the supervisor runs as root,
//!   all of them run as the workstation's own uid.
//! - [`XvfbWorkstation::add_monitor`] / [`XvfbWorkstation::remove_monitor`] change the layout
//!   while it runs; windows left on a removed monitor are moved to monitor 0.
//! - [`capture::XvfbCapture`] is the [`FrameSource`](crate::FrameSource) of one monitor, and
//!   [`input::XvfbInput`] the [`InputSink`](crate::InputSink).
//! - Every process carries the workstation's marker (see [`procs`]), so [`XvfbWorkstation::stop`]
//!   leaves nothing behind.

pub mod capture;
pub mod input;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::{DefaultStream, RustConnection};
use x11rb::wrapper::ConnectionExt as _;

use crate::backend::MonitorError;
use crate::procs::{self, MARKER_VAR};
use crate::spec::{self, Monitor, MonitorSize};
use crate::xauth;

/// How an Xvfb workstation is run.
#[derive(Debug, Clone)]
pub struct XvfbOptions {
    /// Marks every process of this workstation (unique per workstation).
    pub marker: String,
    /// Private directory for the cookie and logs (created 0700).
    pub runtime_dir: PathBuf,
    /// Home directory of the session.
    pub home: PathBuf,
    /// Run as this uid and gid (when the supervisor is root).
    pub run_as: Option<(u32, u32)>,
    /// The framebuffer all monitors live in.
    pub framebuffer: MonitorSize,
    /// Window manager command; empty for none.
    pub window_manager: Vec<String>,
    /// Session command.
    pub session: Vec<String>,
    /// How long Xvfb may take to come up.
    pub start_timeout: Duration,
    /// The resource-limit group its processes go into, if limits are enforced.
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// More environment for the session's processes (the appliance's session socket).
    pub env: Vec<(String, String)>,
}

/// Why a workstation could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartXvfbError {
    /// A directory or file could not be prepared.
    #[error("cannot prepare {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {program} (is it installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Xvfb did not come up.
    #[error("Xvfb did not start: {0}")]
    NotReady(String),
    /// The display refused the supervisor.
    #[error("cannot connect to display :{display}")]
    Connect {
        /// Display number.
        display: u32,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The monitors could not be set up.
    #[error("cannot set up the monitors")]
    Monitors(#[source] MonitorError),
}

fn x_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> MonitorError {
    MonitorError::X(Box::new(e))
}

/// Connects to display `n` with `cookie`.
pub fn connect(
    display: u32,
    cookie: &[u8; 16],
) -> Result<RustConnection, Box<dyn std::error::Error + Send + Sync>> {
    let stream = UnixStream::connect(format!("/tmp/.X11-unix/X{display}"))?;
    let (stream, _) = DefaultStream::from_unix_stream(stream)?;
    Ok(RustConnection::connect_to_stream_with_auth_info(
        stream,
        0,
        xauth::PROTOCOL.as_bytes().to_vec(),
        cookie.to_vec(),
    )?)
}

/// What another process needs to reach this display.
#[derive(Debug, Clone)]
pub struct DisplayAccess {
    /// Display number.
    pub display: u32,
    /// The cookie.
    pub cookie: [u8; 16],
    /// Current monitors, shared with the workstation.
    pub monitors: Arc<RwLock<Vec<Monitor>>>,
}

impl DisplayAccess {
    /// A new connection to the display.
    pub fn connect(&self) -> Result<RustConnection, Box<dyn std::error::Error + Send + Sync>> {
        connect(self.display, &self.cookie)
    }

    /// The monitor with `id`, if it exists.
    pub fn monitor(&self, id: u32) -> Option<Monitor> {
        self.monitors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.id == id)
            .copied()
    }
}

/// A running Xvfb workstation.
pub struct XvfbWorkstation {
    opts: XvfbOptions,
    access: DisplayAccess,
    children: Vec<(&'static str, Child)>,
    ctl: RustConnection,
    root: xproto::Window,
    screen_output: randr::Output,
    next_id: u32,
    stopped: bool,
}

impl std::fmt::Debug for XvfbWorkstation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XvfbWorkstation")
            .field("display", &self.access.display)
            .field("marker", &self.opts.marker)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartXvfbError + '_ {
    move |source| StartXvfbError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `path` with `mode` and `owner`. Missing parents are created 0711, so that the
/// workstation's uid can reach its directories without being able to list their neighbours.
fn prepare_dir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), StartXvfbError> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(io_err(parent))?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err(path))?;
    }
    Ok(())
}

impl XvfbWorkstation {
    fn command(&self, argv: &[String], role: &str) -> Result<Command, StartXvfbError> {
        base_command(&self.opts, argv, role, Some(self.access.display))
    }

    /// Starts Xvfb, lays out `monitors`, then the window manager and the session.
    pub fn start(opts: XvfbOptions, monitors: &[MonitorSize]) -> Result<Self, StartXvfbError> {
        let layout = spec::layout(monitors, opts.framebuffer).ok_or(StartXvfbError::Monitors(
            MonitorError::NoRoom {
                size: monitors.first().copied().unwrap_or(opts.framebuffer),
                framebuffer: opts.framebuffer,
            },
        ))?;
        // Anything left from an earlier run of this workstation goes first.
        procs::stop_marked(&opts.marker, Duration::from_secs(2), || {});
        prepare_dir(&opts.runtime_dir, 0o700, opts.run_as)?;
        prepare_dir(&opts.home, 0o700, opts.run_as)?;
        let x11_dir = Path::new("/tmp/.X11-unix");
        if !x11_dir.exists() {
            prepare_dir(x11_dir, 0o1777, None)?;
        }
        let cookie = xauth::cookie();
        let auth = opts.runtime_dir.join("Xauthority");
        xauth::write(&auth, &cookie).map_err(io_err(&auth))?;
        if let Some((uid, gid)) = opts.run_as {
            std::os::unix::fs::chown(&auth, Some(uid), Some(gid)).map_err(io_err(&auth))?;
        }

        let (xvfb, display) = start_xvfb(&opts, &auth)?;
        if let Some(cg) = &opts.cgroup {
            cg.add(xvfb.id())
                .map_err(io_err(Path::new("cgroup.procs")))?;
        }
        let ctl = connect(display, &cookie)
            .map_err(|source| StartXvfbError::Connect { display, source })?;
        let root = ctl.setup().roots[0].root;
        let screen_output =
            screen_output(&ctl, root).map_err(|e| StartXvfbError::Monitors(MonitorError::X(e)))?;
        let mut ws = XvfbWorkstation {
            access: DisplayAccess {
                display,
                cookie,
                monitors: Arc::new(RwLock::new(Vec::new())),
            },
            children: vec![("Xvfb", xvfb)],
            ctl,
            root,
            screen_output,
            next_id: layout.len() as u32,
            stopped: false,
            opts,
        };
        for m in &layout {
            ws.set_monitor(m).map_err(StartXvfbError::Monitors)?;
        }
        *ws.access
            .monitors
            .write()
            .unwrap_or_else(|p| p.into_inner()) = layout;
        ws.ctl
            .sync()
            .map_err(|e| StartXvfbError::Monitors(x_err(e)))?;

        if !ws.opts.window_manager.is_empty() {
            let wm = ws.opts.window_manager.clone();
            let child = ws
                .command(&wm, "wm")?
                .spawn()
                .map_err(|source| StartXvfbError::Spawn {
                    program: wm[0].clone(),
                    source,
                })?;
            ws.join_cgroup(&child)?;
            ws.children.push(("window manager", child));
            // The session starts once the window manager has announced itself: a window mapped
            // while it is still starting can be lost (seen with openbox under load).
            ws.wait_for_window_manager()?;
        }
        let session = ws.opts.session.clone();
        if !session.is_empty() {
            let child = ws.command(&session, "session")?.spawn().map_err(|source| {
                StartXvfbError::Spawn {
                    program: session[0].clone(),
                    source,
                }
            })?;
            ws.children.push(("session", child));
        }
        tracing::info!(display = ws.access.display, marker = %ws.opts.marker, "xvfb workstation started");
        Ok(ws)
    }

    fn join_cgroup(&self, child: &Child) -> Result<(), StartXvfbError> {
        if let Some(cg) = &self.opts.cgroup {
            cg.add(child.id())
                .map_err(io_err(Path::new("cgroup.procs")))?;
        }
        Ok(())
    }

    fn wait_for_window_manager(&mut self) -> Result<(), StartXvfbError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| {
            StartXvfbError::NotReady(format!("window manager check failed: {e}"))
        };
        let atom = self
            .ctl
            .intern_atom(false, b"_NET_SUPPORTING_WM_CHECK")
            .map_err(|e| err(Box::new(e)))?
            .reply()
            .map_err(|e| err(Box::new(e)))?
            .atom;
        let deadline = std::time::Instant::now() + self.opts.start_timeout;
        loop {
            let prop = self
                .ctl
                .get_property(false, self.root, atom, xproto::AtomEnum::WINDOW, 0, 1)
                .map_err(|e| err(Box::new(e)))?
                .reply()
                .map_err(|e| err(Box::new(e)))?;
            if prop.value32().and_then(|mut v| v.next()).is_some() {
                return Ok(());
            }
            if let Some(why) = self.exited() {
                return Err(StartXvfbError::NotReady(why));
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(
                    display = self.access.display,
                    "the window manager did not announce itself (no _NET_SUPPORTING_WM_CHECK); starting the session anyway"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The private directory with the cookie and the processes' logs.
    pub fn runtime_dir(&self) -> &Path {
        &self.opts.runtime_dir
    }

    /// The display number.
    pub fn display(&self) -> u32 {
        self.access.display
    }

    /// What another thread needs to capture from or type into this display.
    pub fn access(&self) -> DisplayAccess {
        self.access.clone()
    }

    /// Current monitors.
    pub fn monitors(&self) -> Vec<Monitor> {
        self.access
            .monitors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pids of the processes the workstation started itself (Xvfb, window manager, session).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children.iter().map(|(r, c)| (*r, c.id())).collect()
    }

    /// The first started process that has exited, with how, if any.
    pub fn exited(&mut self) -> Option<String> {
        for (role, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(format!("{role} exited ({status})"));
            }
        }
        None
    }

    fn set_monitor(&self, m: &Monitor) -> Result<(), MonitorError> {
        let name = self
            .ctl
            .intern_atom(false, format!("PERIPHERY-{}", m.id).as_bytes())
            .map_err(x_err)?
            .reply()
            .map_err(x_err)?
            .atom;
        // Monitor 0 carries Xvfb's only output, which replaces the automatic monitor that
        // covers the whole framebuffer; the others carry none.
        let outputs = if m.id == 0 {
            vec![self.screen_output]
        } else {
            vec![]
        };
        let info = randr::MonitorInfo {
            name,
            primary: m.id == 0,
            automatic: false,
            x: m.x as i16,
            y: m.y as i16,
            width: m.width as u16,
            height: m.height as u16,
            // 96 dpi.
            width_in_millimeters: m.width * 254 / 960,
            height_in_millimeters: m.height * 254 / 960,
            outputs,
        };
        self.ctl
            .randr_set_monitor(self.root, info)
            .map_err(x_err)?
            .check()
            .map_err(x_err)
    }

    /// Adds a monitor where it fits; returns it.
    pub fn add_monitor(&mut self, size: MonitorSize, max: usize) -> Result<Monitor, MonitorError> {
        let current = self.monitors();
        if current.len() >= max {
            return Err(MonitorError::TooMany(max));
        }
        let fb = self.opts.framebuffer;
        let (x, y) = spec::place(&current, size, fb).ok_or(MonitorError::NoRoom {
            size,
            framebuffer: fb,
        })?;
        let m = Monitor {
            id: self.next_id,
            x,
            y,
            width: size.width,
            height: size.height,
        };
        self.set_monitor(&m)?;
        self.next_id += 1;
        self.access
            .monitors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(m);
        tracing::info!(display = self.access.display, monitor = m.id, %size, "monitor added");
        Ok(m)
    }

    /// Removes a monitor; windows on it move to monitor 0.
    pub fn remove_monitor(&mut self, id: u32) -> Result<(), MonitorError> {
        if id == 0 {
            return Err(MonitorError::Primary);
        }
        let removed = self
            .monitors()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(MonitorError::NotFound(id))?;
        let name = self
            .ctl
            .intern_atom(false, format!("PERIPHERY-{id}").as_bytes())
            .map_err(x_err)?
            .reply()
            .map_err(x_err)?
            .atom;
        self.ctl
            .randr_delete_monitor(self.root, name)
            .map_err(x_err)?
            .check()
            .map_err(x_err)?;
        self.access
            .monitors
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| m.id != id);
        let primary = self.monitors()[0];
        self.move_windows_off(&removed, &primary)?;
        tracing::info!(
            display = self.access.display,
            monitor = id,
            "monitor removed"
        );
        Ok(())
    }

    /// Moves every client window whose centre lies on `from` (or on no monitor at all) onto `to`.
    fn move_windows_off(&self, from: &Monitor, to: &Monitor) -> Result<(), MonitorError> {
        let remaining = self.monitors();
        let mut offset = 0i32;
        for w in top_level_windows(&self.ctl, self.root).map_err(MonitorError::X)? {
            let Ok(geo) = self.ctl.get_geometry(w).map_err(x_err)?.reply() else {
                continue;
            };
            let Ok(pos) = self
                .ctl
                .translate_coordinates(w, self.root, 0, 0)
                .map_err(x_err)?
                .reply()
            else {
                continue;
            };
            let cx = i32::from(pos.dst_x) + i32::from(geo.width) / 2;
            let cy = i32::from(pos.dst_y) + i32::from(geo.height) / 2;
            let on_removed = from.rect().contains(cx, cy);
            let on_none = !remaining.iter().any(|m| m.rect().contains(cx, cy));
            if on_removed || on_none {
                let aux = xproto::ConfigureWindowAux::new()
                    .x(to.x + 40 + offset)
                    .y(to.y + 40 + offset);
                self.ctl.configure_window(w, &aux).map_err(x_err)?;
                offset = (offset + 30) % 300;
            }
        }
        self.ctl.sync().map_err(x_err)
    }

    /// Stops every process of the workstation and waits until none is left.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let children = &mut self.children;
        let killed = procs::stop_marked(&self.opts.marker, Duration::from_secs(3), || {
            for (_, c) in children.iter_mut() {
                let _ = c.try_wait();
            }
        });
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
        tracing::info!(
            display = self.access.display,
            killed,
            "xvfb workstation stopped"
        );
    }
}

impl Drop for XvfbWorkstation {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The session's client windows (EWMH `_NET_CLIENT_LIST`), or the root's mapped children when
/// no window manager publishes one.
pub(crate) fn top_level_windows(
    conn: &RustConnection,
    root: xproto::Window,
) -> Result<Vec<xproto::Window>, Box<dyn std::error::Error + Send + Sync>> {
    let atom = conn.intern_atom(false, b"_NET_CLIENT_LIST")?.reply()?.atom;
    let prop = conn
        .get_property(false, root, atom, xproto::AtomEnum::WINDOW, 0, 4096)?
        .reply()?;
    if let Some(list) = prop.value32() {
        let list: Vec<u32> = list.collect();
        if !list.is_empty() {
            return Ok(list);
        }
    }
    let tree = conn.query_tree(root)?.reply()?;
    let mut out = Vec::new();
    for w in tree.children {
        if conn.get_window_attributes(w)?.reply()?.map_state == xproto::MapState::VIEWABLE {
            out.push(w);
        }
    }
    Ok(out)
}

fn screen_output(
    conn: &RustConnection,
    root: xproto::Window,
) -> Result<randr::Output, Box<dyn std::error::Error + Send + Sync>> {
    if conn
        .extension_information(randr::X11_EXTENSION_NAME)?
        .is_none()
    {
        return Err("the X server has no RANDR extension".into());
    }
    conn.randr_query_version(1, 5)?.reply()?;
    let res = conn.randr_get_screen_resources_current(root)?.reply()?;
    res.outputs
        .first()
        .copied()
        .ok_or_else(|| "the X server has no RandR output".into())
}

/// A display number nobody uses now, drawn at random from a wide range so that numbers are not
/// reused at once: a server that is still shutting down unlinks its socket path, which must not
/// be the path of the next workstation.
fn free_display() -> u32 {
    loop {
        let n = 100 + rand::random::<u32>() % 30_000;
        let taken = Path::new(&format!("/tmp/.X{n}-lock")).exists()
            || Path::new(&format!("/tmp/.X11-unix/X{n}")).exists();
        if !taken {
            return n;
        }
    }
}

/// Starts Xvfb on a free display; retries with another number if it collides.
fn start_xvfb(opts: &XvfbOptions, auth: &Path) -> Result<(Child, u32), StartXvfbError> {
    let fb = opts.framebuffer;
    let mut last = String::new();
    for _ in 0..5 {
        let number = free_display();
        let argv: Vec<String> = [
            "Xvfb",
            &format!(":{number}"),
            "-displayfd",
            "1",
            "-screen",
            "0",
            &format!("{}x{}x24", fb.width, fb.height),
            "-nolisten",
            "tcp",
            "-auth",
            &auth.display().to_string(),
            "-noreset",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut cmd = base_command(opts, &argv, "xvfb", None)?;
        cmd.stdout(Stdio::piped());
        let mut xvfb = cmd.spawn().map_err(|source| StartXvfbError::Spawn {
            program: "Xvfb".into(),
            source,
        })?;
        match read_display(&mut xvfb, opts.start_timeout) {
            Ok(d) if d == number => return Ok((xvfb, number)),
            outcome => {
                let _ = xvfb.kill();
                let _ = xvfb.wait();
                let log =
                    std::fs::read_to_string(opts.runtime_dir.join("xvfb.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                last = format!(
                    "{}; its log ends: {}",
                    match outcome {
                        Ok(d) => format!("it reported display {d}, not {number}"),
                        Err(why) => why,
                    },
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
                tracing::debug!(display = number, %last, "Xvfb did not start; trying another display");
            }
        }
    }
    Err(StartXvfbError::NotReady(last))
}

/// Reads the display number Xvfb writes to its stdout once it accepts connections.
fn read_display(xvfb: &mut Child, timeout: Duration) -> Result<u32, String> {
    let stdout = xvfb.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(timeout) {
        Ok(line) => line
            .trim()
            .parse()
            .map_err(|_| format!("it exited or printed {line:?} instead of a display number")),
        Err(_) => Err(format!("no display number within {timeout:?}")),
    }
}

fn base_command(
    opts: &XvfbOptions,
    argv: &[String],
    role: &str,
    display: Option<u32>,
) -> Result<Command, StartXvfbError> {
    let log_path = opts.runtime_dir.join(format!("{role}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let log2 = log.try_clone().map_err(io_err(&log_path))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env(MARKER_VAR, &opts.marker)
        .env("HOME", &opts.home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("SHELL", "/bin/sh")
        .env("LANG", "C.UTF-8")
        .env("XAUTHORITY", opts.runtime_dir.join("Xauthority"))
        .current_dir(&opts.home)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C meant for the supervisor's terminal is not theirs.
        .process_group(0);
    if let Some(d) = display {
        cmd.env("DISPLAY", format!(":{d}"));
    }
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    if let Some((uid, gid)) = opts.run_as {
        cmd.uid(uid).gid(gid).env("USER", format!("ws{uid}"));
    }
    Ok(cmd)
}
