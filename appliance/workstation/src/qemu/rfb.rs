//! An RFB (VNC) client for QEMU's VNC server on a Unix socket: the frame source and the input
//! sink of a VM.
//!
//! RFB 3.8 with security "None" (the socket is private to the supervisor), 32-bit BGRX pixels,
//! Raw encoding (local, so bandwidth is free) and the DesktopSize pseudo-encoding (the guest
//! changes video mode). Damage is the union of the rectangles of each FramebufferUpdate. QEMU
//! holds an incremental update request until something changes, so waiting costs nothing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::frame::{CaptureError, Frame, FrameSource, Rect};
use crate::input::{InputError, InputEvent, InputSink, MouseButton, TouchPhase, KEY_SHIFT_L};
use crate::spec::Monitor;

const ENCODING_RAW: i32 = 0;
const ENCODING_DESKTOP_SIZE: i32 = -223;
/// At most this many damage rectangles per frame; beyond, their bounding box.
const MAX_RECTS: usize = 16;

/// Why the RFB session failed.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    /// The socket failed.
    #[error("VNC connection failed")]
    Io(#[from] std::io::Error),
    /// The server spoke something else.
    #[error("VNC protocol error: {0}")]
    Protocol(String),
}

fn io_to_capture(e: RfbError) -> CaptureError {
    CaptureError::Connection(Box::new(e))
}

/// An RFB connection with a local copy of the framebuffer.
pub struct RfbClient {
    stream: UnixStream,
    width: u32,
    height: u32,
    fb: Vec<u8>,
    pending_request: bool,
    damage: Vec<Rect>,
    full: bool,
    buttons: u8,
    pointer: (u16, u16),
}

impl std::fmt::Debug for RfbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RfbClient")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

fn u16be(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl RfbClient {
    /// Connects and completes the handshake.
    pub fn connect(path: &Path) -> Result<Self, RfbError> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut version = [0u8; 12];
        s.read_exact(&mut version)?;
        if !version.starts_with(b"RFB 003.") {
            return Err(RfbError::Protocol(format!(
                "not an RFB server: {:?}",
                String::from_utf8_lossy(&version)
            )));
        }
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        s.read_exact(&mut n)?;
        if n[0] == 0 {
            let mut len = [0u8; 4];
            s.read_exact(&mut len)?;
            let mut reason = vec![0u8; u32::from_be_bytes(len).min(4096) as usize];
            s.read_exact(&mut reason)?;
            return Err(RfbError::Protocol(format!(
                "server refused: {}",
                String::from_utf8_lossy(&reason)
            )));
        }
        let mut types = vec![0u8; n[0] as usize];
        s.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(RfbError::Protocol(format!(
                "server wants authentication {types:?}; only None is supported on the local socket"
            )));
        }
        s.write_all(&[1])?;
        let mut result = [0u8; 4];
        s.read_exact(&mut result)?;
        if u32::from_be_bytes(result) != 0 {
            return Err(RfbError::Protocol("security handshake failed".into()));
        }
        s.write_all(&[1])?; // ClientInit: shared
        let mut init = [0u8; 24];
        s.read_exact(&mut init)?;
        let (width, height) = (u32::from(u16be(&init[0..2])), u32::from(u16be(&init[2..4])));
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len.min(4096) as usize];
        s.read_exact(&mut name)?;

        // 32 bpp, depth 24, little endian, true colour, 8 bits each: B, G, R, X in memory.
        let mut pf = vec![0u8, 0, 0, 0];
        pf.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        s.write_all(&pf)?;
        let mut enc = vec![2u8, 0];
        enc.extend_from_slice(&2u16.to_be_bytes());
        for e in [ENCODING_RAW, ENCODING_DESKTOP_SIZE] {
            enc.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&enc)?;
        Ok(Self {
            stream: s,
            width,
            height,
            fb: vec![0; width as usize * height as usize * 4],
            pending_request: false,
            damage: Vec::new(),
            full: true,
            buttons: 0,
            pointer: (0, 0),
        })
    }

    /// Framebuffer size.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn request(&mut self, incremental: bool) -> Result<(), RfbError> {
        let mut m = vec![3u8, u8::from(incremental)];
        for v in [0u16, 0, self.width as u16, self.height as u16] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        self.stream.write_all(&m)?;
        self.pending_request = true;
        Ok(())
    }

    /// Reads one server message; `false` if none started within `wait`.
    fn read_message(&mut self, wait: Duration) -> Result<bool, RfbError> {
        let mut kind = [0u8; 1];
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match self.stream.read(&mut kind) {
            Ok(0) => {
                return Err(RfbError::Protocol(
                    "the VNC server closed the connection".into(),
                ))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e.into()),
        }
        // A message has started: read the rest without the short deadline.
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        match kind[0] {
            0 => self.read_update()?,
            1 => {
                let mut h = [0u8; 5];
                self.stream.read_exact(&mut h)?;
                let mut colours = vec![0u8; usize::from(u16be(&h[3..5])) * 6];
                self.stream.read_exact(&mut colours)?;
            }
            2 => {}
            3 => {
                let mut h = [0u8; 7];
                self.stream.read_exact(&mut h)?;
                let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
                if len > 1 << 20 {
                    return Err(RfbError::Protocol(format!("cut text of {len} bytes")));
                }
                let mut text = vec![0u8; len as usize];
                self.stream.read_exact(&mut text)?;
            }
            other => return Err(RfbError::Protocol(format!("unknown message type {other}"))),
        }
        Ok(true)
    }

    fn read_update(&mut self) -> Result<(), RfbError> {
        let mut h = [0u8; 3];
        self.stream.read_exact(&mut h)?;
        let rects = u16be(&h[1..3]);
        for _ in 0..rects {
            let mut r = [0u8; 12];
            self.stream.read_exact(&mut r)?;
            let (x, y, w, hh) = (
                u16be(&r[0..2]),
                u16be(&r[2..4]),
                u16be(&r[4..6]),
                u16be(&r[6..8]),
            );
            let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            match enc {
                ENCODING_RAW => {
                    let (x, y, w, hh) = (x as usize, y as usize, w as usize, hh as usize);
                    if x + w > self.width as usize || y + hh > self.height as usize {
                        return Err(RfbError::Protocol(format!(
                            "rectangle {w}x{hh}+{x}+{y} outside the {}x{} framebuffer",
                            self.width, self.height
                        )));
                    }
                    let mut row = vec![0u8; w * 4];
                    for line in 0..hh {
                        self.stream.read_exact(&mut row)?;
                        let off = ((y + line) * self.width as usize + x) * 4;
                        self.fb[off..off + w * 4].copy_from_slice(&row);
                    }
                    self.damage
                        .push(Rect::new(x as i32, y as i32, w as u32, hh as u32));
                }
                ENCODING_DESKTOP_SIZE => {
                    self.width = u32::from(w);
                    self.height = u32::from(hh);
                    self.fb = vec![0; self.width as usize * self.height as usize * 4];
                    self.full = true;
                    self.damage.clear();
                }
                other => {
                    return Err(RfbError::Protocol(format!("unrequested encoding {other}")));
                }
            }
        }
        self.pending_request = false;
        Ok(())
    }

    fn key(&mut self, keysym: u32, down: bool) -> std::io::Result<()> {
        let mut m = vec![4u8, u8::from(down), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.stream.write_all(&m)
    }

    fn send_pointer(&mut self) -> Result<(), RfbError> {
        let mut m = vec![5u8, self.buttons];
        m.extend_from_slice(&self.pointer.0.to_be_bytes());
        m.extend_from_slice(&self.pointer.1.to_be_bytes());
        self.stream.write_all(&m)?;
        Ok(())
    }
}

impl FrameSource for RfbClient {
    fn monitor(&self) -> Monitor {
        Monitor {
            id: 0,
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.pending_request {
                let full = self.full;
                self.request(!full).map_err(io_to_capture)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.read_message(left).map_err(io_to_capture)? {
                return Ok(None);
            }
            if !self.pending_request && (self.full || !self.damage.is_empty()) {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
        let damage = if std::mem::take(&mut self.full) {
            self.damage.clear();
            vec![Rect::new(0, 0, self.width, self.height)]
        } else {
            let mut d = std::mem::take(&mut self.damage);
            if d.len() > MAX_RECTS {
                let first = d[0];
                d = vec![d.iter().fold(first, |a, r| a.union(r))];
            }
            d
        };
        Ok(Some(Frame {
            width: self.width,
            height: self.height,
            stride: self.width as usize * 4,
            data: &self.fb,
            captured_at: Instant::now(),
            damage,
        }))
    }

    fn request_full(&mut self) {
        self.full = true;
    }
}

/// Whether a keysym is typed with Shift on a US keyboard.
pub fn needs_shift(keysym: u32) -> bool {
    match char::from_u32(keysym) {
        Some(c) if c.is_ascii_uppercase() => true,
        Some(c) => "~!@#$%^&*()_+{}|:\"<>?".contains(c),
        None => false,
    }
}

fn input_err(e: std::io::Error) -> InputError {
    InputError::Connection(Box::new(e))
}

impl InputSink for RfbClient {
    fn send(&mut self, monitor: u32, event: &InputEvent) -> Result<(), InputError> {
        if monitor != 0 {
            return Err(InputError::NoMonitor(monitor));
        }
        let clamp = |v: i32, max: u32| v.clamp(0, max as i32 - 1) as u16;
        match *event {
            InputEvent::Key { keysym, down } => {
                // QEMU turns a keysym into its key on a US keyboard and expects the client to
                // hold Shift itself, as a real keyboard does: wrap shifted symbols in Shift.
                let shifted = needs_shift(keysym);
                if shifted && down {
                    self.key(KEY_SHIFT_L, true).map_err(input_err)?;
                }
                self.key(keysym, down).map_err(input_err)?;
                if shifted && !down {
                    self.key(KEY_SHIFT_L, false).map_err(input_err)?;
                }
            }
            InputEvent::PointerMove { x, y } => {
                self.pointer = (clamp(x, self.width), clamp(y, self.height));
                self.send_pointer()
                    .map_err(|e| InputError::Connection(Box::new(e)))?;
            }
            InputEvent::Button { button, down } => {
                let bit = match button {
                    MouseButton::Left => 1,
                    MouseButton::Middle => 2,
                    MouseButton::Right => 4,
                };
                if down {
                    self.buttons |= bit;
                } else {
                    self.buttons &= !bit;
                }
                self.send_pointer()
                    .map_err(|e| InputError::Connection(Box::new(e)))?;
            }
            InputEvent::Scroll { dx, dy } => {
                for (amount, pos, neg) in [(dy, 16u8, 8u8), (dx, 64, 32)] {
                    let bit = if amount > 0 { pos } else { neg };
                    for _ in 0..amount.unsigned_abs().min(100) {
                        self.buttons |= bit;
                        self.send_pointer()
                            .map_err(|e| InputError::Connection(Box::new(e)))?;
                        self.buttons &= !bit;
                        self.send_pointer()
                            .map_err(|e| InputError::Connection(Box::new(e)))?;
                    }
                }
            }
            InputEvent::Touch { phase, x, y, .. } => {
                self.pointer = (clamp(x, self.width), clamp(y, self.height));
                match phase {
                    TouchPhase::Start => self.buttons |= 1,
                    TouchPhase::End => self.buttons &= !1,
                    TouchPhase::Move => {}
                }
                self.send_pointer()
                    .map_err(|e| InputError::Connection(Box::new(e)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_symbols_of_a_us_keyboard() {
        for c in ['$', '(', '*', '>', 'A', '~', '"'] {
            assert!(needs_shift(c as u32), "{c}");
        }
        for c in ['4', '9', 'a', '.', '/', ' '] {
            assert!(!needs_shift(c as u32), "{c}");
        }
        assert!(!needs_shift(crate::input::KEY_RETURN));
    }
}
