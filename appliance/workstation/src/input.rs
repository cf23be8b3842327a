//! Input events and the input sink.

use serde::{Deserialize, Serialize};

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MouseButton {
    /// Primary.
    Left,
    /// Middle.
    Middle,
    /// Secondary.
    Right,
}

/// The phase of a touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TouchPhase {
    /// Finger down.
    Start,
    /// Finger moved.
    Move,
    /// Finger up.
    End,
}

/// One input event; coordinates are in the target monitor's pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputEvent {
    /// A key by X keysym (Latin-1 characters are their own keysym; see [`keysym_for_char`]).
    Key {
        /// The keysym.
        keysym: u32,
        /// Press or release.
        down: bool,
    },
    /// Absolute pointer motion.
    PointerMove {
        /// X in the monitor.
        x: i32,
        /// Y in the monitor.
        y: i32,
    },
    /// A button press or release at the current pointer position.
    Button {
        /// Which.
        button: MouseButton,
        /// Press or release.
        down: bool,
    },
    /// Scroll steps: positive `dy` is down, positive `dx` is right.
    Scroll {
        /// Horizontal steps.
        dx: i32,
        /// Vertical steps.
        dy: i32,
    },
    /// A touch; mapped to the pointer and the left button for now.
    Touch {
        /// Finger id.
        id: u32,
        /// Phase.
        phase: TouchPhase,
        /// X in the monitor.
        x: i32,
        /// Y in the monitor.
        y: i32,
    },
}

/// Keysym of Return.
pub const KEY_RETURN: u32 = 0xff0d;
/// Keysym of left Shift.
pub const KEY_SHIFT_L: u32 = 0xffe1;

/// The keysym that types `c`: Latin-1 characters are their own keysym, newline is Return,
/// other Unicode characters use the `0x0100_0000 + code point` range.
pub fn keysym_for_char(c: char) -> u32 {
    match c {
        '\n' | '\r' => KEY_RETURN,
        '\t' => 0xff09,
        c if (' '..='~').contains(&c) || ('\u{a0}'..='\u{ff}').contains(&c) => c as u32,
        c => 0x0100_0000 + c as u32,
    }
}

/// Press and release events that type `text`.
pub fn type_text(text: &str) -> Vec<InputEvent> {
    text.chars()
        .flat_map(|c| {
            let keysym = keysym_for_char(c);
            [
                InputEvent::Key { keysym, down: true },
                InputEvent::Key {
                    keysym,
                    down: false,
                },
            ]
        })
        .collect()
}

/// Why input could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The display connection failed (the workstation stopped).
    #[error("the display connection failed")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The display lacks the XTEST extension.
    #[error("the display lacks the XTEST extension")]
    NoXtest,
    /// No monitor with that id.
    #[error("no monitor {0}")]
    NoMonitor(u32),
    /// No key can produce the keysym.
    #[error("no key produces keysym {0:#x}")]
    UnknownKeysym(u32),
}

/// Where input for a workstation goes.
pub trait InputSink: Send {
    /// Delivers one event to monitor `monitor`.
    fn send(&mut self, monitor: u32, event: &InputEvent) -> Result<(), InputError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_map_to_keysyms() {
        assert_eq!(keysym_for_char('a'), 0x61);
        assert_eq!(keysym_for_char('~'), 0x7e);
        assert_eq!(keysym_for_char('\n'), KEY_RETURN);
        assert_eq!(keysym_for_char('é'), 0xe9);
        assert_eq!(keysym_for_char('€'), 0x0100_20ac);
        assert_eq!(type_text("ab").len(), 4);
    }
}
