//! Change detection with inotify: one watch per directory of each tree, added as
//! directories appear. A full queue (`IN_Q_OVERFLOW`) or a watch that cannot be added (the
//! per-user limit) reports every tree as changed: the periodic scan stays the safety net.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Something in this tree changed.
    Changed(String),
    /// Events were lost: any tree may have changed.
    Overflow,
}

#[derive(Debug, Default)]
struct Watches {
    /// Watch descriptor -> (tree, directory).
    by_wd: HashMap<i32, (String, PathBuf)>,
}

/// Watches trees; reports through a callback from its own thread.
#[derive(Debug, Clone)]
pub struct Watcher {
    fd: Arc<OwnedFd>,
    watches: Arc<Mutex<Watches>>,
}

const MASK: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::DONT_FOLLOW)
    .union(WatchFlags::ONLYDIR);

impl Watcher {
    /// Starts the watcher thread; `report` is called from it. The thread ends when every
    /// clone of the watcher is dropped.
    pub fn start(report: impl Fn(Seen) + Send + 'static) -> std::io::Result<Watcher> {
        let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?);
        let watches = Arc::new(Mutex::new(Watches::default()));
        let w = Watcher {
            fd: fd.clone(),
            watches: watches.clone(),
        };
        let weak = Arc::downgrade(&fd);
        drop(fd);
        std::thread::Builder::new()
            .name("persist-watch".into())
            .spawn(move || run(weak, watches, report))?;
        Ok(w)
    }

    /// Watches every directory under `dir` as `tree`; false if some could not be watched
    /// (then only the scan sees changes there).
    pub fn add(&self, tree: &str, dir: &Path) -> bool {
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        add_recursive(&self.fd, &mut w, tree, dir)
    }

    /// Stops watching `tree`.
    pub fn remove(&self, tree: &str) {
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let fd = &self.fd;
        w.by_wd.retain(|wd, (t, _)| {
            let keep = t != tree;
            if !keep {
                let _ = inotify::remove_watch(fd.as_fd(), *wd);
            }
            keep
        });
    }
}

fn add_recursive(fd: &OwnedFd, w: &mut Watches, tree: &str, dir: &Path) -> bool {
    let mut all = true;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        match inotify::add_watch(fd.as_fd(), &d, MASK) {
            Ok(wd) => {
                w.by_wd.insert(wd, (tree.to_owned(), d.clone()));
            }
            Err(_) => all = false,
        }
        if let Ok(r) = std::fs::read_dir(&d) {
            for e in r.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    all
}

fn run(fd: std::sync::Weak<OwnedFd>, watches: Arc<Mutex<Watches>>, report: impl Fn(Seen)) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    loop {
        let Some(fd) = fd.upgrade() else {
            return;
        };
        let mut pfd = [rustix::event::PollFd::new(
            &*fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 500_000_000,
        };
        if rustix::event::poll(&mut pfd, Some(&timeout)).unwrap_or(0) == 0 {
            continue;
        }
        let mut changed: Vec<String> = Vec::new();
        let mut overflow = false;
        {
            let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
            let mut w = watches.lock().unwrap_or_else(|e| e.into_inner());
            let mut new_dirs = Vec::new();
            // Until EAGAIN: drained.
            while let Ok(ev) = reader.next() {
                let flags = ev.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                let Some((tree, dir)) = w.by_wd.get(&ev.wd()).cloned() else {
                    continue;
                };
                if flags.contains(ReadFlags::IGNORED) {
                    w.by_wd.remove(&ev.wd());
                    continue;
                }
                if flags.contains(ReadFlags::ISDIR)
                    && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
                {
                    if let Some(name) = ev.file_name() {
                        use std::os::unix::ffi::OsStrExt;
                        let p = dir.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                        new_dirs.push((tree.clone(), p));
                    }
                }
                if !changed.contains(&tree) {
                    changed.push(tree);
                }
            }
            for (tree, p) in new_dirs {
                if !add_recursive(&fd, &mut w, &tree, &p) {
                    overflow = true;
                }
            }
        }
        drop(fd);
        if overflow {
            report(Seen::Overflow);
        }
        for t in changed {
            report(Seen::Changed(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn expect(rx: &mpsc::Receiver<Seen>, want: &Seen) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) if &s == want => return,
                Ok(_) => {}
                Err(_) => panic!("no {want:?} within 10 s"),
            }
        }
    }

    #[test]
    fn changes_deep_in_new_directories_are_seen() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let w = Watcher::start(move |s| {
            let _ = tx.lock().unwrap().send(s);
        })
        .unwrap();
        assert!(w.add("a", a.path()));
        assert!(w.add("b", b.path()));
        std::fs::create_dir_all(a.path().join("x")).unwrap();
        expect(&rx, &Seen::Changed("a".into()));
        // The new directory is watched from now on.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while w.watches.lock().unwrap().by_wd.len() < 3 {
            assert!(std::time::Instant::now() < deadline, "x never watched");
            std::thread::sleep(Duration::from_millis(10));
        }
        while rx.try_recv().is_ok() {}
        std::fs::write(a.path().join("x/file"), b"1").unwrap();
        expect(&rx, &Seen::Changed("a".into()));
        std::fs::write(b.path().join("f"), b"1").unwrap();
        expect(&rx, &Seen::Changed("b".into()));
        w.remove("b");
        while rx.try_recv().is_ok() {}
        std::fs::write(b.path().join("g"), b"1").unwrap();
        std::fs::write(a.path().join("h"), b"1").unwrap();
        // Events arrive in order: once a's is in, b's would have been before it.
        let mut seen = vec![];
        while let Ok(s) = rx.recv_timeout(Duration::from_secs(10)) {
            seen.push(s.clone());
            if s == Seen::Changed("a".into()) {
                break;
            }
        }
        assert_eq!(seen, [Seen::Changed("a".into())]);
    }
}
