//! A workstation's input thread: events checked at the session gate and injected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use periphery_protocol::media::{WireButton, WireInput, WireTouch};
use periphery_workstation::{InputEvent, MouseButton, TouchPhase};

use crate::workstations::Workstations;

use super::SessionGate;

/// One event for a workstation's input thread.
pub(super) struct QueuedInput {
    pub(super) monitor: u32,
    pub(super) event: InputEvent,
    pub(super) user: String,
    pub(super) epoch: u64,
}

pub(super) fn to_event(e: &WireInput) -> InputEvent {
    match *e {
        WireInput::Key { keysym, down } => InputEvent::Key { keysym, down },
        WireInput::PointerMove { x, y } => InputEvent::PointerMove { x, y },
        WireInput::Button { button, down } => InputEvent::Button {
            button: match button {
                WireButton::Left => MouseButton::Left,
                WireButton::Middle => MouseButton::Middle,
                WireButton::Right => MouseButton::Right,
            },
            down,
        },
        WireInput::Scroll { dx, dy } => InputEvent::Scroll { dx, dy },
        WireInput::Touch { id, phase, x, y } => InputEvent::Touch {
            id,
            phase: match phase {
                WireTouch::Start => TouchPhase::Start,
                WireTouch::Move => TouchPhase::Move,
                WireTouch::End => TouchPhase::End,
            },
            x,
            y,
        },
    }
}

/// The thread that injects a workstation's input, each event checked at the session gate
/// right before it reaches the display.
pub(super) fn spawn_input_thread(
    workstations: Arc<Workstations>,
    ws_id: String,
    sessions: SessionGate,
    dropped: Arc<AtomicU64>,
) -> std::sync::mpsc::Sender<QueuedInput> {
    let (tx, rx) = std::sync::mpsc::channel::<QueuedInput>();
    let _ = std::thread::Builder::new()
        .name(format!("input-{ws_id}"))
        .spawn(move || {
            let mut sink = match workstations.input_sink(&ws_id) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(ws = %ws_id, error = %e, "no input sink");
                    return;
                }
            };
            while let Ok(q) = rx.recv() {
                let gate = sessions.blocking_read();
                if !gate
                    .get(&ws_id)
                    .is_some_and(|s| s.accepts_input(&q.user, q.epoch))
                {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let sent = sink.send(q.monitor, &q.event);
                drop(gate);
                if let Err(e) = sent {
                    tracing::debug!(ws = %ws_id, error = %e, "input not delivered");
                    if matches!(e, periphery_workstation::InputError::Connection(_)) {
                        return;
                    }
                }
            }
        });
    tx
}
