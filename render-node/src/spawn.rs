//! Starting a task's command: cheaply, and tied to the node's life.
//!
//! A task's command must die with the node (a killed node must not leave Blender rendering
//! for nobody), so it gets `PR_SET_PDEATHSIG`; it also leads its own process group, so a
//! cancel stops all of it. `std::process::Command` can set the death signal only from a
//! `pre_exec` closure, and with one it falls back from `posix_spawn` to `fork`, which copies
//! the node's page tables: with FFmpeg's 130 libraries mapped that was most of a short
//! task's cost (measured in `make bench-render`). So this module does what glibc's
//! `posix_spawn` does, plus the death signal: `clone(CLONE_VM | CLONE_VFORK)`, the child
//! running only async-signal-safe calls on its own stack until it execs.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Where a child's standard output or error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// A pipe the parent reads ([`Child::stdout`], [`Child::stderr`]).
    Pipe,
    /// The parent's own.
    Inherit,
}

/// A started command. Dropping it before it was waited for kills its process group.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    /// Readable once it exited: first plain, then registered with the runtime.
    pidfd: Option<OwnedFd>,
    exited: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    /// The read end of its standard output, with [`Out::Pipe`].
    pub stdout: Option<OwnedFd>,
    /// The read end of its standard error, with [`Out::Pipe`].
    pub stderr: Option<OwnedFd>,
    reaped: bool,
}

/// What the child reads; everything prepared by the parent, so the child allocates nothing.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// (fd, target) pairs to dup2; fd -1 leaves the target alone.
    fds: [(RawFd, RawFd); 3],
    parent: libc::pid_t,
    /// The errno of the step that failed, written by the child (shared memory).
    err: libc::c_int,
}

const STACK: usize = 64 * 1024;

/// Finds `program` on PATH unless it names a path.
fn resolve(program: &Path) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(m) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} is not on PATH", program.display()),
    ))
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} holds a NUL byte"),
        )
    })
}

/// The node's environment but `PWD`, as `K=V` strings: built once, every task inherits it.
fn inherited_env() -> &'static [CString] {
    static ENV: std::sync::OnceLock<Vec<CString>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| k != "PWD")
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                // The environment cannot hold NUL bytes; none is dropped in practice.
                CString::new(kv).ok()
            })
            .collect()
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `program` with `args` in `cwd` (and `PWD` set to it), standard input from
/// /dev/null, leading its own process group and killed when the node's thread that started
/// it ends.
pub fn spawn(
    program: &Path,
    args: &[impl AsRef<OsStr>],
    cwd: &Path,
    stdout: Out,
    stderr: Out,
) -> io::Result<Child> {
    let path = cstring(resolve(program)?.as_os_str())?;
    let mut argv_c = vec![cstring(program.as_os_str())?];
    for a in args {
        argv_c.push(cstring(a.as_ref())?);
    }
    let mut pwd = b"PWD=".to_vec();
    pwd.extend_from_slice(cwd.as_os_str().as_bytes());
    let pwd = cstring(OsStr::from_bytes(&pwd))?;
    let cwd_c = cstring(cwd.as_os_str())?;
    let argv: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = inherited_env()
        .iter()
        .chain([&pwd])
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect();

    let null = std::fs::File::open("/dev/null")?;
    let out = (stdout == Out::Pipe).then(pipe).transpose()?;
    let err = (stderr == Out::Pipe).then(pipe).transpose()?;
    let fd_of = |p: &Option<(OwnedFd, OwnedFd)>| p.as_ref().map_or(-1, |p| p.1.as_raw_fd());
    let mut child_args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd_c.as_ptr(),
        fds: [(null.as_raw_fd(), 0), (fd_of(&out), 1), (fd_of(&err), 2)],
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        err: 0,
    };
    let mut stack = vec![0u8; STACK];
    // The stack grows down on every architecture we build for; keep it 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;

    // No signal handler of ours may run in the child while it shares our memory: block
    // everything around the clone; the child resets its handlers before unblocking.
    // SAFETY: sigset_t is plain data, filled by sigfillset / pthread_sigmask.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY: the child runs `child_main` on its own stack with CLONE_VM; it reads
        // `child_args`, which outlives it (CLONE_VFORK suspends this thread until the
        // child execs or exits), and calls only async-signal-safe functions.
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut child_args as *mut ChildArgs).cast(),
        );
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(e);
        }
        pid
    };
    drop(stack);
    // SAFETY: the child wrote `err` before it exec'd or exited, and runs no more code of
    // ours; a volatile read keeps the compiler from assuming it is still 0.
    let failed = unsafe { std::ptr::read_volatile(&child_args.err) };
    if failed != 0 {
        reap(pid);
        return Err(io::Error::from_raw_os_error(failed));
    }
    // SAFETY: pidfd_open takes a pid (ours to reap, so not reused) and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = io::Error::last_os_error();
        kill_group(pid);
        reap(pid);
        return Err(e);
    }
    Ok(Child {
        pid,
        // SAFETY: a fresh descriptor, owned by nobody else.
        pidfd: Some(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) }),
        exited: None,
        stdout: out.map(|p| p.0),
        stderr: err.map(|p| p.0),
        reaped: false,
    })
}

/// The child, between clone and exec. Only async-signal-safe calls, no allocation, no
/// panics: it shares the parent's memory.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the parent's ChildArgs, alive while the parent is suspended.
    unsafe {
        let a = &mut *arg.cast::<ChildArgs>();
        let fail = |a: &mut ChildArgs| -> ! {
            a.err = *libc::__errno_location();
            if a.err == 0 {
                a.err = libc::ECHILD;
            }
            libc::_exit(127)
        };
        // Handlers of the parent must not run here; SIGPIPE goes back to its default
        // (Rust ignores it), as std does for its children.
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && old.sa_sigaction != libc::SIG_DFL
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::setpgid(0, 0) != 0 {
            fail(a);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(a);
        }
        // The parent may have died before the death signal was armed.
        if libc::getppid() != a.parent {
            libc::_exit(127);
        }
        for (fd, target) in a.fds {
            if fd < 0 {
                continue;
            }
            if fd == target {
                // dup2 onto itself keeps close-on-exec; clear it.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    fail(a);
                }
            } else if libc::dup2(fd, target) < 0 {
                fail(a);
            }
        }
        if libc::chdir(a.cwd) != 0 {
            fail(a);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail(a)
    }
}

/// Waits for `pid` (blocking), retrying on EINTR; returns its raw status.
fn reap(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status of our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Sends SIGKILL to the process group `pid` leads.
pub fn kill_group(pid: libc::pid_t) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is shared.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

impl Child {
    /// Kills its whole process group.
    pub fn kill(&self) {
        if !self.reaped {
            kill_group(self.pid);
        }
    }

    /// Waits for it to exit, blocking the thread.
    pub fn wait_blocking(&mut self) -> io::Result<ExitStatus> {
        let status = reap(self.pid).ok_or_else(io::Error::last_os_error)?;
        self.reaped = true;
        Ok(ExitStatus::from_raw(status))
    }

    /// Waits for it to exit without blocking the runtime (the pidfd turns readable), then
    /// kills what is left of its process group (what it started and left running), before
    /// reaping it so the group's id cannot be reused meanwhile. Cancel-safe: dropping the
    /// future and waiting again loses nothing.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(fd) = self.pidfd.take() {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same until the
            // AsyncFd is dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            self.exited = Some(registered.map_err(io::Error::from)?);
        }
        if let Some(fd) = &self.exited {
            let _ready = fd.readable().await?;
        }
        // It exited but is not reaped: the group id is still its own.
        kill_group(self.pid);
        // Reaping does not block.
        self.wait_blocking()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pid);
            let _ = reap(self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    /// Processes of group `pgid` that are not zombies.
    fn live_in_group(pgid: libc::pid_t) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                let f: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or("", |r| r.1)
                    .split_whitespace()
                    .collect();
                // Fields 3 (state) and 5 (process group) of stat(5).
                f.first() != Some(&"Z") && f.get(2) == Some(&pgid.to_string().as_str())
            })
            .count()
    }

    #[test]
    fn runs_with_args_cwd_pwd_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = spawn(
            Path::new("sh"),
            &[
                "-c",
                "pwd; echo \"$PWD\"; echo err >&2; read x || echo eof; exit 3",
            ],
            dir.path(),
            Out::Pipe,
            Out::Pipe,
        )
        .unwrap();
        let out = read_all(c.stdout.take().unwrap());
        let err = read_all(c.stderr.take().unwrap());
        let status = c.wait_blocking().unwrap();
        let d = dir.path().canonicalize().unwrap();
        assert_eq!(
            out,
            format!("{}\n{}\neof\n", d.display(), dir.path().display())
        );
        assert_eq!(err, "err\n");
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn leads_its_own_group_with_default_signals() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = spawn(
            Path::new("sleep"),
            &["30"],
            dir.path(),
            Out::Inherit,
            Out::Inherit,
        )
        .unwrap();
        // SAFETY: getpgid only reads.
        assert_eq!(unsafe { libc::getpgid(c.pid) }, c.pid);
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        // Nothing blocked; SIGPIPE (13) not ignored, as a shell would start it.
        assert_eq!(field("SigBlk:"), 0);
        assert_eq!(field("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0);
        c.kill();
        assert_eq!(c.wait_blocking().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn dies_with_the_thread_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let pid = std::thread::spawn(move || {
            let c = spawn(
                Path::new("sleep"),
                &["30"],
                &path,
                Out::Inherit,
                Out::Inherit,
            );
            let c = c.unwrap();
            let pid = c.pid;
            // Keep it running past this thread: its death signal, not Drop, must end it.
            std::mem::forget(c);
            pid
        })
        .join()
        .unwrap();
        let status = reap(pid).unwrap();
        assert_eq!(ExitStatus::from_raw(status).signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = spawn(
            Path::new("no-such-program-here"),
            &[""; 0],
            dir.path(),
            Out::Pipe,
            Out::Pipe,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no-such-program-here"), "{e}");
        // A path that cannot be executed: the child's execve errno comes back.
        let e = spawn(
            &dir.path().join("missing"),
            &[""; 0],
            dir.path(),
            Out::Pipe,
            Out::Pipe,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = spawn(
            Path::new("true"),
            &[""; 0],
            &dir.path().join("gone"),
            Out::Pipe,
            Out::Pipe,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[tokio::test]
    async fn waits_without_blocking_and_drop_kills() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = spawn(
            Path::new("sh"),
            &["-c", "exit 7"],
            dir.path(),
            Out::Inherit,
            Out::Inherit,
        )
        .unwrap();
        assert_eq!(c.wait().await.unwrap().code(), Some(7));
        let c = spawn(
            Path::new("sh"),
            &["-c", "sleep 30 & sleep 30"],
            dir.path(),
            Out::Inherit,
            Out::Inherit,
        )
        .unwrap();
        let pid = c.pid;
        drop(c);
        // Every process of its group was killed (the orphaned `sleep` too).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while live_in_group(pid) > 0 {
            assert!(std::time::Instant::now() < deadline, "the group lives on");
            std::thread::yield_now();
        }
    }

    #[tokio::test]
    async fn what_a_command_leaves_running_dies_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        // It leaves a sleeper holding its output pipe.
        let mut c = spawn(
            Path::new("sh"),
            &["-c", "sleep 30 & exit 0"],
            dir.path(),
            Out::Pipe,
            Out::Inherit,
        )
        .unwrap();
        let pid = c.pid;
        let out = c.stdout.take().unwrap();
        assert!(c.wait().await.unwrap().success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while live_in_group(pid) > 0 {
            assert!(std::time::Instant::now() < deadline, "the sleeper lives on");
            std::thread::yield_now();
        }
        // The pipe closes: reading it to the end does not wait for the sleeper.
        let t = std::time::Instant::now();
        assert_eq!(read_all(out), "");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }
}
