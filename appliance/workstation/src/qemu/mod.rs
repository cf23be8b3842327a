//! The QEMU backend: a VM controlled through QMP, seen and driven through its VNC server.
//!
//! - [`QemuWorkstation::start`] writes the VM's disk as a qcow2 overlay over the base image (the
//!   base is never modified), chooses the accelerator ([`probe_accel`]), starts QEMU with QMP
//!   and VNC on private Unix sockets and the serial console in a log file, and waits for QMP.
//! - Frames and input go through [`rfb::RfbClient`] connections to the VNC socket.
//! - [`QemuWorkstation::stop`] asks QMP to quit, then kills whatever carries the marker.
//!
//! Acceleration: `/dev/kvm` existing is not enough — under some nested hypervisors normal
//! guests hang in the kernel decompressor, or QEMU pauses with "KVM internal error". So the
//! probe boots a tiny guest (a kernel from /boot and a busybox initramfs) with KVM and waits
//! for it to print a marker on the serial port; if it does not within the deadline, TCG is
//! used. The verdict is cached for the rest of the boot (keyed by the kernel's boot id).

pub mod qmp;
pub mod rfb;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{self, MARKER_VAR};
use crate::spec::Monitor;

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The chosen accelerator and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why it was chosen.
    pub reason: String,
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelPreference {
    /// Probe KVM, fall back to TCG.
    Auto,
    /// KVM, no probe.
    Kvm,
    /// TCG.
    Tcg,
}

/// How a VM is run.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// Marks every process of this workstation.
    pub marker: String,
    /// Private directory for sockets and logs.
    pub runtime_dir: PathBuf,
    /// Where the overlay disk lives (kept across restarts).
    pub disk: PathBuf,
    /// Run as this uid (and gid).
    pub run_as: Option<(u32, u32)>,
    /// Base disk image.
    pub image: Option<PathBuf>,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// CPUs.
    pub cpus: u32,
    /// Accelerator preference.
    pub accel: AccelPreference,
    /// How long QEMU may take to come up.
    pub start_timeout: Duration,
    /// The resource-limit group QEMU goes into, if limits are enforced.
    pub cgroup: Option<crate::cgroup::Cgroup>,
}

/// Why a VM could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartQemuError {
    /// A file or directory could not be prepared.
    #[error("cannot prepare {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{program} failed: {detail}")]
    Program {
        /// The program.
        program: String,
        /// What it said.
        detail: String,
    },
    /// QEMU did not come up.
    #[error("QEMU did not start: {0}")]
    NotReady(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartQemuError + '_ {
    move |source| StartQemuError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A running VM.
pub struct QemuWorkstation {
    opts: QemuOptions,
    child: Child,
    qmp: qmp::Qmp,
    accel: AccelChoice,
    size: (u32, u32),
    stopped: bool,
}

impl std::fmt::Debug for QemuWorkstation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuWorkstation")
            .field("marker", &self.opts.marker)
            .field("accel", &self.accel)
            .finish_non_exhaustive()
    }
}

/// The newest kernel in /boot, if any.
pub fn host_kernel() -> Option<PathBuf> {
    let mut ks: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    ks.sort();
    ks.pop()
}

/// The statically linked busybox, if installed.
pub fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Chooses the accelerator (see the module docs). `work_dir` holds the probe's files.
pub fn probe_accel(pref: AccelPreference, work_dir: &Path) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    match pref {
        AccelPreference::Tcg => return tcg("TCG configured".into()),
        AccelPreference::Kvm => {
            return AccelChoice {
                accel: Accel::Kvm,
                reason: "KVM configured (not probed)".into(),
            }
        }
        AccelPreference::Auto => {}
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("KVM unavailable: /dev/kvm: {e}"));
    }
    let cache = std::env::temp_dir().join(format!("periphery-accel-{}", boot_id()));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some(reason) = text.strip_prefix("kvm\n") {
            return AccelChoice {
                accel: Accel::Kvm,
                reason: reason.to_owned(),
            };
        }
        if let Some(reason) = text.strip_prefix("tcg\n") {
            return tcg(reason.to_owned());
        }
    }
    let choice = run_probe(work_dir);
    let line = format!("{}\n{}", choice.accel.arg(), choice.reason);
    let _ = std::fs::write(&cache, line);
    choice
}

const PROBE_MARKER: &str = "PERIPHERY-PROBE-OK";

fn run_probe(work_dir: &Path) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    let (Some(kernel), Some(busybox)) = (host_kernel(), static_busybox()) else {
        return tcg(
            "KVM not probed (no kernel in /boot or no static busybox); TCG is the safe choice"
                .into(),
        );
    };
    let Ok(bb) = std::fs::read(&busybox) else {
        return tcg(format!("KVM not probed: cannot read {}", busybox.display()));
    };
    let _ = std::fs::create_dir_all(work_dir);
    let initrd = work_dir.join("probe.cpio");
    let serial = work_dir.join("probe-serial.log");
    let _ = std::fs::remove_file(&serial);
    let init = format!("echo {PROBE_MARKER} > /dev/console\nreboot -f\n");
    if std::fs::write(&initrd, crate::initramfs::busybox(bb, &init)).is_err() {
        return tcg("KVM not probed: cannot write the probe initramfs".into());
    }
    let started = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return tcg(format!(
                "KVM not probed: cannot run qemu-system-x86_64: {e}"
            ))
        }
    };
    let deadline = started + Duration::from_secs(20);
    let verdict = loop {
        let seen = std::fs::read_to_string(&serial).unwrap_or_default();
        if seen.contains(PROBE_MARKER) {
            break AccelChoice {
                accel: Accel::Kvm,
                reason: format!(
                    "KVM probed: a test guest booted in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            break tcg(format!(
                "KVM probe failed: QEMU exited ({status}) without the guest booting: {}",
                err.lines().next().unwrap_or("no message")
            ));
        }
        if Instant::now() > deadline {
            break tcg(
                "KVM probe failed: the test guest did not boot within 20 s (nested KVM that cannot run guests)"
                    .into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    verdict
}

/// Runs `qemu-img` and returns its standard output, or what it said on failure.
fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, StartQemuError> {
    let what = format!(
        "qemu-img {}",
        args.first()
            .map(|a| a.to_string_lossy())
            .unwrap_or_default()
    );
    let out =
        Command::new("qemu-img")
            .args(args)
            .output()
            .map_err(|e| StartQemuError::Program {
                program: what.clone(),
                detail: e.to_string(),
            })?;
    if !out.status.success() {
        return Err(StartQemuError::Program {
            program: what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

fn base_format(image: &Path) -> Result<String, StartQemuError> {
    let out = qemu_img(&["info".as_ref(), "--output=json".as_ref(), image.as_os_str()])?;
    let bad = |detail: String| StartQemuError::Program {
        program: "qemu-img info".into(),
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
    v.get("format")
        .and_then(|f| f.as_str())
        .map(str::to_owned)
        .ok_or_else(|| bad("no format".into()))
}

fn create_overlay(image: &Path, disk: &Path) -> Result<(), StartQemuError> {
    if disk.exists() {
        return Ok(());
    }
    if let Some(p) = disk.parent() {
        std::fs::create_dir_all(p).map_err(io_err(p))?;
    }
    let fmt = base_format(image)?;
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        fmt.as_ref(),
        "-b".as_ref(),
        image.as_os_str(),
        disk.as_os_str(),
    ])
    .map(|_| ())
}

impl QemuWorkstation {
    /// Starts the VM and waits for QMP and VNC.
    pub fn start(opts: QemuOptions) -> Result<Self, StartQemuError> {
        procs::stop_marked(&opts.marker, Duration::from_secs(2), || {});
        let rd = &opts.runtime_dir;
        std::fs::create_dir_all(rd).map_err(io_err(rd))?;
        for f in ["qmp.sock", "vnc.sock"] {
            let _ = std::fs::remove_file(rd.join(f));
        }
        if let Some(image) = &opts.image {
            create_overlay(image, &opts.disk)?;
        }
        let accel = probe_accel(opts.accel, &rd.join("probe"));
        if let Some((uid, gid)) = opts.run_as {
            for p in [rd.as_path(), opts.disk.as_path()] {
                if p.exists() {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p))?;
                }
            }
        }
        let log = rd.join("qemu.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(&log))?;
        let log2 = log_file.try_clone().map_err(io_err(&log))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-name", &opts.marker, "-accel", accel.accel.arg()])
            .args([
                "-m",
                &opts.memory_mib.to_string(),
                "-smp",
                &opts.cpus.to_string(),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-vga",
                "std",
                "-display",
                "none",
            ])
            .arg("-vnc")
            .arg(format!("unix:{}", rd.join("vnc.sock").display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                rd.join("qmp.sock").display()
            ))
            .arg("-serial")
            .arg(format!("file:{}", rd.join("serial.log").display()))
            .args(["-device", "qemu-xhci", "-device", "usb-tablet"])
            .args(["-nic", "user,model=virtio-net-pci"]);
        if opts.image.is_some() {
            cmd.arg("-drive").arg(format!(
                "file={},if=virtio,format=qcow2",
                opts.disk.display()
            ));
        }
        if let Some((kernel, initrd, append)) = &opts.kernel {
            cmd.arg("-kernel").arg(kernel);
            if let Some(i) = initrd {
                cmd.arg("-initrd").arg(i);
            }
            cmd.arg("-append").arg(append);
        }
        cmd.env_clear()
            .env(MARKER_VAR, &opts.marker)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log2)
            .process_group(0);
        if let Some((uid, gid)) = opts.run_as {
            cmd.uid(uid).gid(
                kvm_gid()
                    .filter(|_| accel.accel == Accel::Kvm)
                    .unwrap_or(gid),
            );
        }
        let mut child = cmd.spawn().map_err(|e| StartQemuError::Program {
            program: "qemu-system-x86_64".into(),
            detail: e.to_string(),
        })?;
        if let Some(cg) = &opts.cgroup {
            cg.add(child.id())
                .map_err(io_err(Path::new("cgroup.procs")))?;
        }
        let deadline = Instant::now() + opts.start_timeout;
        let qmp = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(StartQemuError::NotReady(format!(
                    "QEMU exited ({status}): {}",
                    text.lines().last().unwrap_or("no message")
                )));
            }
            if let Ok(q) = qmp::Qmp::connect(&rd.join("qmp.sock")) {
                break q;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartQemuError::NotReady("no QMP socket in time".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let size = rfb::RfbClient::connect(&rd.join("vnc.sock"))
            .map(|c| c.size())
            .map_err(|e| StartQemuError::NotReady(format!("VNC: {e}")))?;
        tracing::info!(marker = %opts.marker, accel = ?accel.accel, reason = %accel.reason, "qemu workstation started");
        Ok(Self {
            opts,
            child,
            qmp,
            accel,
            size,
            stopped: false,
        })
    }

    /// The accelerator and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// The VNC socket.
    pub fn vnc_socket(&self) -> PathBuf {
        self.opts.runtime_dir.join("vnc.sock")
    }

    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.opts.runtime_dir.join("serial.log")
    }

    /// The VM's one monitor.
    pub fn monitors(&self) -> Vec<Monitor> {
        vec![Monitor {
            id: 0,
            x: 0,
            y: 0,
            width: self.size.0,
            height: self.size.1,
        }]
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU exited or the VM stopped for good, and how.
    pub fn exited(&mut self) -> Option<String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(format!("QEMU exited ({status})"));
        }
        match self.qmp.status() {
            Ok(s) if s == "internal-error" => {
                Some("the VM stopped with an internal error (KVM cannot run it?)".into())
            }
            Ok(s) if s == "shutdown" => Some("the guest shut down".into()),
            _ => None,
        }
    }

    /// Asks the guest to power down (ACPI).
    pub fn powerdown(&mut self) -> Result<(), qmp::QmpError> {
        self.qmp
            .execute("system_powerdown", serde_json::json!({}))
            .map(|_| ())
    }

    /// Stops QEMU at once and leaves no process behind.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self.qmp.execute("quit", serde_json::json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = &mut self.child;
        procs::stop_marked(&self.opts.marker, Duration::from_secs(2), || {
            let _ = child.try_wait();
        });
        let _ = self.child.wait();
        if let Some(cg) = &self.opts.cgroup {
            cg.remove();
        }
        tracing::info!(marker = %self.opts.marker, "qemu workstation stopped");
    }
}

impl Drop for QemuWorkstation {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The gid of the `kvm` group, which may open /dev/kvm.
fn kvm_gid() -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups
        .lines()
        .find(|l| l.starts_with("kvm:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|g| g.parse().ok())
}
