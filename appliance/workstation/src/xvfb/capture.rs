//! Capture of one monitor of an Xvfb display: MIT-SHM for the pixels, DAMAGE for what changed.
//!
//! The source has its own X connection, its own DAMAGE object on the root window (reporting
//! only "became non-empty", so events do not pile up while the screen changes), and its own
//! shared-memory segment the size of the monitor. When a notify arrives it *subtracts* the
//! damage into an XFixes region and fetches that region's rectangles — the server has already
//! merged them, instead of the heavily overlapping raw rectangles. Between changes it blocks in
//! `poll(2)` on the connection: an idle desktop costs no CPU.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::damage::{self, ConnectionExt as _};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ImageFormat};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

use super::DisplayAccess;
use crate::frame::{damage_for_monitor, CaptureError, Frame, FrameSource, Rect};
use crate::spec::Monitor;

/// At most this many damage rectangles per frame; beyond, their bounding box.
const MAX_RECTS: usize = 16;

fn conn_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> CaptureError {
    CaptureError::Connection(Box::new(e))
}

/// The frame source of one monitor of an Xvfb display.
pub struct XvfbCapture {
    conn: RustConnection,
    access: DisplayAccess,
    root: xproto::Window,
    monitor: Monitor,
    damage: damage::Damage,
    region: xfixes::Region,
    seg: shm::Seg,
    map: MmapMut,
    pending: Vec<Rect>,
    full: bool,
}

impl std::fmt::Debug for XvfbCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XvfbCapture")
            .field("monitor", &self.monitor)
            .finish_non_exhaustive()
    }
}

impl XvfbCapture {
    /// A source for monitor `id`.
    pub fn new(access: &DisplayAccess, id: u32) -> Result<Self, CaptureError> {
        let monitor = access.monitor(id).ok_or(CaptureError::NoMonitor(id))?;
        let conn = access.connect().map_err(CaptureError::Connection)?;
        for (name, ext) in [
            ("MIT-SHM", shm::X11_EXTENSION_NAME),
            ("DAMAGE", damage::X11_EXTENSION_NAME),
            ("XFIXES", xfixes::X11_EXTENSION_NAME),
        ] {
            if conn.extension_information(ext).map_err(conn_err)?.is_none() {
                return Err(CaptureError::MissingExtension(name));
            }
        }
        conn.xfixes_query_version(5, 0)
            .map_err(conn_err)?
            .reply()
            .map_err(conn_err)?;
        conn.damage_query_version(1, 1)
            .map_err(conn_err)?
            .reply()
            .map_err(conn_err)?;
        let root = conn.setup().roots[0].root;

        let size = monitor.width as u64 * monitor.height as u64 * 4;
        let fd = rustix::fs::memfd_create("periphery-capture", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| CaptureError::SharedMemory(e.into()))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| CaptureError::SharedMemory(e.into()))?;
        let file = std::fs::File::from(fd);
        // SAFETY: the mapping is of a memfd only this process and the X server hold. The X
        // server writes into it only while a ShmGetImage request is being answered, and frames
        // are read from it only after that request's reply has arrived (see `capture`), so no
        // read overlaps a write.
        #[allow(unsafe_code)]
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(CaptureError::SharedMemory)?;
        let seg = conn.generate_id().map_err(conn_err)?;
        let dup = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(CaptureError::SharedMemory)?;
        conn.shm_attach_fd(seg, dup, false)
            .map_err(conn_err)?
            .check()
            .map_err(conn_err)?;

        let dmg = conn.generate_id().map_err(conn_err)?;
        conn.damage_create(dmg, root, damage::ReportLevel::NON_EMPTY)
            .map_err(conn_err)?
            .check()
            .map_err(conn_err)?;
        let region = conn.generate_id().map_err(conn_err)?;
        conn.xfixes_create_region(region, &[])
            .map_err(conn_err)?
            .check()
            .map_err(conn_err)?;
        Ok(Self {
            conn,
            access: access.clone(),
            root,
            monitor,
            damage: dmg,
            region,
            seg,
            map,
            pending: Vec::new(),
            full: true,
        })
    }

    /// Collects damage reported so far (without blocking).
    fn drain(&mut self) -> Result<(), CaptureError> {
        let mut notified = false;
        while let Some(ev) = self.conn.poll_for_event().map_err(conn_err)? {
            if let Event::DamageNotify(n) = ev {
                notified |= n.damage == self.damage;
            }
        }
        if notified {
            self.conn
                .damage_subtract(self.damage, x11rb::NONE, self.region)
                .map_err(conn_err)?;
            let rects = self
                .conn
                .xfixes_fetch_region(self.region)
                .map_err(conn_err)?
                .reply()
                .map_err(conn_err)?
                .rectangles;
            let screen: Vec<Rect> = rects
                .iter()
                .map(|r| Rect::new(r.x.into(), r.y.into(), r.width.into(), r.height.into()))
                .collect();
            self.pending
                .extend(damage_for_monitor(&self.monitor.rect(), &screen, MAX_RECTS));
            if self.pending.len() > MAX_RECTS {
                let first = self.pending[0];
                let bbox = self.pending.iter().fold(first, |a, r| a.union(r));
                self.pending = vec![bbox];
            }
        }
        Ok(())
    }

    fn wait_readable(&self, left: Duration) -> Result<(), CaptureError> {
        let fd = self.conn.stream().as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(CaptureError::Connection(Box::new(std::io::Error::from(e)))),
        }
    }
}

impl FrameSource for XvfbCapture {
    fn monitor(&self) -> Monitor {
        self.monitor
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        let id = self.monitor.id;
        match self.access.monitor(id) {
            Some(m) if m == self.monitor => {}
            _ => return Err(CaptureError::NoMonitor(id)),
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.drain()?;
            if self.full || !self.pending.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.conn.flush().map_err(conn_err)?;
            self.wait_readable(deadline - now)?;
        }
        let m = self.monitor;
        self.conn
            .shm_get_image(
                self.root,
                m.x as i16,
                m.y as i16,
                m.width as u16,
                m.height as u16,
                !0,
                ImageFormat::Z_PIXMAP.into(),
                self.seg,
                0,
            )
            .map_err(conn_err)?
            .reply()
            .map_err(conn_err)?;
        let captured_at = Instant::now();
        let damage = if std::mem::take(&mut self.full) {
            self.pending.clear();
            vec![Rect::new(0, 0, m.width, m.height)]
        } else {
            std::mem::take(&mut self.pending)
        };
        let len = m.width as usize * m.height as usize * 4;
        Ok(Some(Frame {
            width: m.width,
            height: m.height,
            stride: m.width as usize * 4,
            data: &self.map[..len],
            captured_at,
            damage,
        }))
    }

    fn request_full(&mut self) {
        self.full = true;
    }
}
