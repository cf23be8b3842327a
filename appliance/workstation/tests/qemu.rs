//! The QEMU backend against real QEMU: a Debian kernel and a busybox initramfs the test builds.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use periphery_workstation::input::type_text;
use periphery_workstation::qemu::rfb::RfbClient;
use periphery_workstation::qemu::{
    host_kernel, probe_accel, static_busybox, Accel, AccelPreference, QemuOptions, QemuWorkstation,
};
use periphery_workstation::{initramfs, procs, FrameSource, InputSink};

fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const INIT: &str = r#"
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo GUEST-READY > /dev/ttyS0
exec setsid sh -c 'exec sh </dev/tty1 >/dev/tty1 2>&1'
"#;

fn guest(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let kernel =
        host_kernel().expect("a kernel in /boot (linux-image-amd64; make test installs it)");
    let busybox = static_busybox().expect("busybox-static (make test installs it)");
    let initrd = dir.join("guest.cpio");
    std::fs::write(
        &initrd,
        initramfs::busybox(std::fs::read(busybox).unwrap(), INIT),
    )
    .unwrap();
    (kernel, initrd)
}

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_tiny_guest_boots_shows_its_console_and_obeys_the_keyboard() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, initrd) = guest(dir.path());
    let base = dir.path().join("base.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let base_sum = sha(&base);

    let marker = format!("test-qemu-{}", std::process::id());
    let started = Instant::now();
    let mut vm = QemuWorkstation::start(QemuOptions {
        marker: marker.clone(),
        runtime_dir: dir.path().join("run"),
        disk: dir.path().join("disk.qcow2"),
        run_as: None,
        image: Some(base.clone()),
        kernel: Some((
            kernel,
            Some(initrd),
            "console=tty1 console=ttyS0 panic=-1 quiet".into(),
        )),
        memory_mib: 256,
        cpus: 1,
        accel: AccelPreference::Auto,
        start_timeout: Duration::from_secs(30),
        cgroup: None,
    })
    .unwrap();
    println!(
        "accelerator: {:?} ({})",
        vm.accel().accel,
        vm.accel().reason
    );
    assert!(!vm.accel().reason.is_empty());

    // The disk is an overlay over the base.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(dir.path().join("disk.qcow2"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(&base.display().to_string()),
        "no backing file: {info}"
    );

    let serial = vm.serial_log();
    wait_for("the guest to boot", Duration::from_secs(120), || {
        std::fs::read_to_string(&serial)
            .ok()
            .filter(|s| s.contains("GUEST-READY"))
    });
    println!("booted in {:.1} s", started.elapsed().as_secs_f64());

    // The console framebuffer: a first full frame, then frames as the console changes.
    let mut frames = RfbClient::connect(&vm.vnc_socket()).unwrap();
    let first = frames.next_frame(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(first.damage.len(), 1);
    let (w, h) = (first.width, first.height);
    assert!(w >= 640 && h >= 350, "{w}x{h}");
    let lit = first.data.chunks(4).filter(|p| p[..3] != [0, 0, 0]).count();
    assert!(lit > 100, "the console shows nothing");

    // Type a command whose output only a running shell can produce.
    let mut keys = RfbClient::connect(&vm.vnc_socket()).unwrap();
    for ev in type_text("echo typed-$((6*7)) > /dev/ttyS0\n") {
        keys.send(0, &ev).unwrap();
    }
    wait_for(
        "the typed command's output",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&serial)
                .ok()
                .filter(|s| s.contains("typed-42"))
        },
    );
    // The typing showed on the console: a later frame with damage.
    let later = frames
        .next_frame(Duration::from_secs(10))
        .unwrap()
        .expect("a frame after typing");
    assert!(!later.damage.is_empty());
    assert!(vm.exited().is_none());

    // Hard stop: no QEMU left; the base image is untouched.
    let pid = vm.pid() as i32;
    vm.stop();
    assert!(!procs::alive(pid));
    assert!(procs::marked(&marker).is_empty());
    assert_eq!(sha(&base), base_sum, "the base image changed");
}

#[test]
fn the_accelerator_choice_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let c = probe_accel(AccelPreference::Tcg, dir.path());
    assert_eq!(c.accel, Accel::Tcg);
    let auto = probe_accel(AccelPreference::Auto, dir.path());
    println!("auto: {:?} because {}", auto.accel, auto.reason);
    assert!(auto.reason.contains("KVM"), "{}", auto.reason);
}
