//! Input into an Xvfb display through XTEST.
//!
//! Keys arrive as keysyms and are mapped to keycodes with the server's keyboard mapping; a
//! keysym in a key's second column is typed with Shift held, and a keysym no key produces is
//! bound for the moment to a spare keycode (as xdotool does). Pointer coordinates are in the
//! target monitor and are moved into the framebuffer by the monitor's offset.

use std::collections::HashMap;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::DisplayAccess;
use crate::input::{InputError, InputEvent, InputSink, MouseButton, TouchPhase, KEY_SHIFT_L};

fn conn_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> InputError {
    InputError::Connection(Box::new(e))
}

/// The input sink of an Xvfb display.
pub struct XvfbInput {
    conn: RustConnection,
    access: DisplayAccess,
    root: xproto::Window,
    keys: HashMap<u32, (u8, bool)>,
    shift: u8,
    spare: Option<u8>,
    per_keycode: u8,
}

impl std::fmt::Debug for XvfbInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XvfbInput").finish_non_exhaustive()
    }
}

impl XvfbInput {
    /// An input sink for the display.
    pub fn new(access: &DisplayAccess) -> Result<Self, InputError> {
        let conn = access.connect().map_err(InputError::Connection)?;
        if conn
            .extension_information(xtest::X11_EXTENSION_NAME)
            .map_err(conn_err)?
            .is_none()
        {
            return Err(InputError::NoXtest);
        }
        conn.xtest_get_version(2, 2)
            .map_err(conn_err)?
            .reply()
            .map_err(conn_err)?;
        let root = conn.setup().roots[0].root;
        let mut sink = Self {
            conn,
            access: access.clone(),
            root,
            keys: HashMap::new(),
            shift: 0,
            spare: None,
            per_keycode: 1,
        };
        sink.load_keymap()?;
        Ok(sink)
    }

    fn load_keymap(&mut self) -> Result<(), InputError> {
        let (min, max) = (self.conn.setup().min_keycode, self.conn.setup().max_keycode);
        let map = self
            .conn
            .get_keyboard_mapping(min, max - min + 1)
            .map_err(conn_err)?
            .reply()
            .map_err(conn_err)?;
        let per = map.keysyms_per_keycode.max(1);
        self.per_keycode = per;
        self.keys.clear();
        self.spare = None;
        for (i, syms) in map.keysyms.chunks(per as usize).enumerate() {
            let code = min + i as u8;
            if syms.iter().all(|s| *s == 0) {
                self.spare.get_or_insert(code);
                continue;
            }
            for (col, sym) in syms.iter().take(2).enumerate() {
                if *sym != 0 {
                    self.keys.entry(*sym).or_insert((code, col == 1));
                }
            }
        }
        self.shift = self.keys.get(&KEY_SHIFT_L).map(|k| k.0).unwrap_or(50);
        Ok(())
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<(), InputError> {
        self.conn
            .xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)
            .map_err(conn_err)?;
        Ok(())
    }

    fn keycode(&mut self, keysym: u32) -> Result<(u8, bool), InputError> {
        if let Some(k) = self.keys.get(&keysym) {
            return Ok(*k);
        }
        // Bind the keysym to a spare keycode (both columns, so Shift does not matter).
        let spare = self.spare.ok_or(InputError::UnknownKeysym(keysym))?;
        let mut syms = vec![0u32; self.per_keycode as usize];
        syms[0] = keysym;
        if syms.len() > 1 {
            syms[1] = keysym;
        }
        self.conn
            .change_keyboard_mapping(1, spare, self.per_keycode, &syms)
            .map_err(conn_err)?
            .check()
            .map_err(conn_err)?;
        self.keys.retain(|_, (code, _)| *code != spare);
        self.keys.insert(keysym, (spare, false));
        Ok((spare, false))
    }

    fn to_screen(&self, monitor: u32, x: i32, y: i32) -> Result<(i16, i16), InputError> {
        let m = self
            .access
            .monitor(monitor)
            .ok_or(InputError::NoMonitor(monitor))?;
        let cx = x.clamp(0, m.width as i32 - 1) + m.x;
        let cy = y.clamp(0, m.height as i32 - 1) + m.y;
        Ok((cx as i16, cy as i16))
    }
}

impl InputSink for XvfbInput {
    fn send(&mut self, monitor: u32, event: &InputEvent) -> Result<(), InputError> {
        match *event {
            InputEvent::Key { keysym, down } => {
                let (code, shifted) = self.keycode(keysym)?;
                let kind = if down {
                    xproto::KEY_PRESS_EVENT
                } else {
                    xproto::KEY_RELEASE_EVENT
                };
                if shifted && down {
                    self.fake(xproto::KEY_PRESS_EVENT, self.shift, 0, 0)?;
                }
                self.fake(kind, code, 0, 0)?;
                if shifted && !down {
                    self.fake(xproto::KEY_RELEASE_EVENT, self.shift, 0, 0)?;
                }
            }
            InputEvent::PointerMove { x, y } => {
                let (sx, sy) = self.to_screen(monitor, x, y)?;
                self.fake(xproto::MOTION_NOTIFY_EVENT, 0, sx, sy)?;
            }
            InputEvent::Button { button, down } => {
                self.access
                    .monitor(monitor)
                    .ok_or(InputError::NoMonitor(monitor))?;
                let detail = match button {
                    MouseButton::Left => 1,
                    MouseButton::Middle => 2,
                    MouseButton::Right => 3,
                };
                let kind = if down {
                    xproto::BUTTON_PRESS_EVENT
                } else {
                    xproto::BUTTON_RELEASE_EVENT
                };
                self.fake(kind, detail, 0, 0)?;
            }
            InputEvent::Scroll { dx, dy } => {
                let steps = [(dy, 5u8, 4u8), (dx, 7, 6)];
                for (amount, positive, negative) in steps {
                    let button = if amount > 0 { positive } else { negative };
                    for _ in 0..amount.unsigned_abs().min(100) {
                        self.fake(xproto::BUTTON_PRESS_EVENT, button, 0, 0)?;
                        self.fake(xproto::BUTTON_RELEASE_EVENT, button, 0, 0)?;
                    }
                }
            }
            InputEvent::Touch { phase, x, y, .. } => {
                let (sx, sy) = self.to_screen(monitor, x, y)?;
                self.fake(xproto::MOTION_NOTIFY_EVENT, 0, sx, sy)?;
                match phase {
                    TouchPhase::Start => self.fake(xproto::BUTTON_PRESS_EVENT, 1, 0, 0)?,
                    TouchPhase::End => self.fake(xproto::BUTTON_RELEASE_EVENT, 1, 0, 0)?,
                    TouchPhase::Move => {}
                }
            }
        }
        // One round trip: when `send` returns, the server has processed the event.
        self.conn.sync().map_err(conn_err)?;
        Ok(())
    }
}
