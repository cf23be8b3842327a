//! Harness for Periphery's end-to-end tests: real `periphery` daemons and `periphery-tablet`
//! processes in temporary directories, talking QUIC over loopback (or across network
//! namespaces the tests create).
//!
//! The binaries are found next to the test executable's directory (`target/<profile>/`);
//! `make test` builds them first. Nothing here sleeps and hopes: every wait is on a condition
//! with a deadline.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of a workspace binary built alongside the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; `make test` does)",
        p.display()
    );
    p
}

/// Polls `f` every few milliseconds until it returns `Some`, or panics after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// What the daemon printed on its console at start.
#[derive(Debug, Clone)]
pub struct Banner {
    /// The bound QUIC address.
    pub addr: SocketAddr,
    /// The certificate fingerprint.
    pub fingerprint: String,
    /// The first-boot pairing code for the admin, if shown.
    pub admin_code: Option<String>,
}

/// A running `periphery serve`.
pub struct Daemon {
    /// State directory.
    pub state: PathBuf,
    /// Its console banner.
    pub banner: Banner,
    child: Child,
    prefix: Vec<String>,
}

/// How to start a daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// `--listen` (default 127.0.0.1:0).
    pub listen: Option<String>,
    /// Config file contents, written to `<state>/periphery.toml`.
    pub config: Option<String>,
    /// Keep mDNS on.
    pub discovery: bool,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Extra arguments to `serve`.
    pub extra: Vec<String>,
    /// Let the appliance run its own render node (off in tests unless asked for, so each
    /// test decides which nodes exist).
    pub local_node: bool,
    /// `--log-level` (default `debug`; benchmarks use the production default, `info`).
    pub log_level: Option<String>,
}

impl Daemon {
    /// Starts a daemon on `state` and waits for its banner.
    pub fn start(state: &Path, opts: DaemonOptions) -> Self {
        std::fs::create_dir_all(state).expect("state dir");
        if let Some(c) = &opts.config {
            std::fs::write(state.join("periphery.toml"), c).expect("config");
        }
        let prefix: Vec<String> = match &opts.netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => vec![],
        };
        let mut args: Vec<String> = prefix.clone();
        args.push(bin("periphery").display().to_string());
        args.extend([
            "--state-dir".into(),
            state.display().to_string(),
            "serve".into(),
            "--listen".into(),
            opts.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into()),
            "--log-level".into(),
            opts.log_level.clone().unwrap_or_else(|| "debug".into()),
        ]);
        if !opts.discovery {
            args.push("--no-discovery".into());
        }
        if !opts.local_node {
            args.push("--no-local-node".into());
        }
        args.extend(opts.extra.iter().cloned());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.with_extension("log"))
            .expect("log file");
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn periphery serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the daemon never blocks.
                    continue;
                }
            }
        });
        let banner = read_banner(&rx, &mut child, state);
        Daemon {
            state: state.to_owned(),
            banner,
            child,
            prefix,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `periphery --state-dir <state> args...` (inside the namespace, if any).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    /// Like [`Self::cli`] with standard input.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = command(&self.prefix, &bin("periphery"));
        cmd.arg("--state-dir").arg(&self.state).args(args);
        run(cmd, stdin)
    }

    /// Starts `periphery --state-dir <state> args...` without waiting for it.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        let mut cmd = command(&self.prefix, &bin("periphery"));
        cmd.arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn periphery")
    }

    /// Runs a CLI command that must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "periphery {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates an Xvfb workstation `name` of `user` with `monitors` (`1024x768[,…]`).
    pub fn create_ws(&self, user: &str, name: &str, monitors: &str) -> String {
        self.ok(&[
            "ws",
            "create",
            "--user",
            user,
            "--name",
            name,
            "--monitors",
            monitors,
        ])
    }

    /// A fresh pairing code for `user`.
    pub fn pair_code(&self, user: &str) -> String {
        self.ok(&["device", "pair-code", "--user", user])
            .trim()
            .to_owned()
    }

    /// The QUIC address as a tablet would type it.
    pub fn address(&self) -> String {
        self.banner.addr.to_string()
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = wait_for("daemon exit", Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        });
        assert!(status.success(), "daemon exited with {status}");
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    /// Shuts the daemon down as a user would (SIGTERM), so that it stops its workstations; a
    /// SIGKILL would orphan them. SIGKILL only if it does not exit in time.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_banner(rx: &mpsc::Receiver<String>, child: &mut Child, state: &Path) -> Banner {
    let end = Instant::now() + Duration::from_secs(60);
    let (mut addr, mut fingerprint, mut admin_code) = (None, None, None);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("address"), Some(a), _) => addr = a.parse().ok(),
                    (Some("fingerprint"), Some(f), _) => fingerprint = Some(f.to_owned()),
                    (Some("pairing"), Some("code"), Some(c)) => admin_code = Some(c.to_owned()),
                    (Some("state"), _, _) => break,
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "periphery serve exited with {status} before it was ready:\n{}",
                std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < end,
            "no banner from periphery serve within 60 s"
        );
    }
    Banner {
        addr: addr.expect("banner has an address"),
        fingerprint: fingerprint.expect("banner has a fingerprint"),
        admin_code,
    }
}

fn command(prefix: &[String], program: &Path) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// A `periphery-tablet` with its own home directory.
pub struct Tablet {
    /// Home directory.
    pub home: PathBuf,
    netns: Option<String>,
}

impl Tablet {
    /// A tablet whose home is `home`.
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_owned(),
            netns: None,
        }
    }

    /// A tablet with its home in `dir/name`, paired with `daemon` for `user`.
    pub fn paired(daemon: &Daemon, dir: &Path, name: &str, user: &str) -> Self {
        let t = Self::new(&dir.join(name));
        t.pair(daemon, &daemon.pair_code(user));
        t
    }

    /// The pinned QUIC configuration from its home, for clients built on the library.
    pub fn client_config(&self) -> quinn::ClientConfig {
        let c = periphery_tablet::home::Home::new(self.home.clone())
            .load()
            .expect("the tablet is paired");
        periphery_tablet::tls::pinned(&c.ca_der, &c.cert_der, &c.key_der)
            .expect("its stored credentials make a TLS configuration")
    }

    /// A tablet that runs inside a network namespace.
    pub fn in_netns(home: &Path, ns: &str) -> Self {
        Self {
            home: home.to_owned(),
            netns: Some(ns.to_owned()),
        }
    }

    /// Runs `periphery-tablet --home <home> args...`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let prefix: Vec<String> = match &self.netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => vec![],
        };
        let mut cmd = command(&prefix, &bin("periphery-tablet"));
        cmd.arg("--home").arg(&self.home).args(args);
        run(cmd, stdin)
    }

    /// Runs a command that must succeed; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args, None);
        assert!(
            out.status.success(),
            "periphery-tablet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail; returns standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args, None);
        assert!(
            !out.status.success(),
            "periphery-tablet {args:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Pairs with a code; must succeed.
    pub fn pair(&self, daemon: &Daemon, code: &str) -> String {
        self.ok(&[
            "pair",
            &daemon.address(),
            "--code",
            code,
            "--name",
            "test-tablet",
        ])
    }
}

/// A running `periphery-render-node run`.
pub struct RenderNode {
    /// The process.
    pub child: Child,
    /// Its home (credentials, cache).
    pub home: PathBuf,
}

impl RenderNode {
    /// Joins `daemon` with a fresh token and starts working; `path_first` goes before PATH
    /// (a directory with a fake `blender`, say).
    pub fn start(daemon: &Daemon, dir: &Path, name: &str, path_first: Option<&Path>) -> Self {
        Self::start_logging(daemon, dir, name, path_first, "debug")
    }

    /// [`RenderNode::start`] with `PERIPHERY_LOG` set to `level`.
    pub fn start_logging(
        daemon: &Daemon,
        dir: &Path,
        name: &str,
        path_first: Option<&Path>,
        level: &str,
    ) -> Self {
        let token = daemon.ok(&["render", "node-token"]).trim().to_owned();
        let home = dir.join(name);
        let out = Command::new(bin("periphery-render-node"))
            .arg("--home")
            .arg(&home)
            .args(["join", &daemon.address(), "--token", &token, "--name", name])
            .output()
            .expect("run periphery-render-node join");
        assert!(
            out.status.success(),
            "join: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(p) = path_first {
            path = format!("{}:{path}", p.display());
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("node log");
        let child = Command::new(bin("periphery-render-node"))
            .arg("--home")
            .arg(&home)
            .arg("run")
            .env("PATH", path)
            .env("PERIPHERY_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn periphery-render-node run");
        RenderNode { child, home }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RenderNode {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Daemon {
    /// Waits until `n` nodes are idle or busy in `render nodes`.
    pub fn wait_render_nodes(&self, n: usize) {
        wait_for("nodes online", Duration::from_secs(30), || {
            let out = self.ok(&["render", "nodes"]);
            let live = out
                .lines()
                .filter(|l| l.contains(" idle ") || l.contains(" busy "))
                .count();
            (live >= n).then_some(())
        });
    }
}

/// The job id `render submit` printed (`queued job N …`).
pub fn job_id(submit_stdout: &str) -> u64 {
    submit_stdout
        .lines()
        .find_map(|l| l.strip_prefix("queued job "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no job id in {submit_stdout}"))
}

/// CPU time a process has used: (its own, its reaped children's).
pub fn cpu_time(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 of stat(5); `rest` starts at field 3.
    let tick = |i: usize| f.get(i - 3).copied().unwrap_or(0);
    // In USER_HZ ticks, 100 a second on Linux.
    let d = |t: u64| Duration::from_millis(t * 10);
    (d(tick(14) + tick(15)), d(tick(16) + tick(17)))
}

/// A Cycles scene of a few objects, the cube turning over 10 frames, 64x64.
pub fn blender_scene(dir: &Path) -> PathBuf {
    let path = dir.join("turn.blend");
    let script = format!(
        "import bpy, math\n\
         s = bpy.context.scene\n\
         s.render.engine = 'CYCLES'; s.cycles.samples = 4; s.cycles.use_denoising = False\n\
         s.cycles.seed = 7; s.render.resolution_x = 64; s.render.resolution_y = 64\n\
         s.render.resolution_percentage = 100; s.frame_start = 1; s.frame_end = 10\n\
         bpy.ops.mesh.primitive_uv_sphere_add(location=(2, 0, 0), radius=0.7)\n\
         bpy.ops.mesh.primitive_cone_add(location=(-2, 0, 0))\n\
         cube = bpy.data.objects['Cube']\n\
         cube.rotation_euler = (0, 0, 0); cube.keyframe_insert('rotation_euler', frame=1)\n\
         cube.rotation_euler = (0, 0, math.pi); cube.keyframe_insert('rotation_euler', frame=10)\n\
         bpy.ops.wm.save_as_mainfile(filepath='{}')\n",
        path.display()
    );
    let out = Command::new("blender")
        .args(["-b", "--factory-startup", "--python-expr", &script])
        .output()
        .expect("blender is installed (scripts/setup.sh)");
    assert!(path.exists(), "{}", String::from_utf8_lossy(&out.stdout));
    path
}
