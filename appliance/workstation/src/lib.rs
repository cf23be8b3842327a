//! Periphery workstations: the desktops the appliance hosts.
//!
//! Every backend gives the streaming layer the same two things per workstation:
//! - a [`FrameSource`] per monitor: BGRA frames with their capture time and damage rectangles,
//!   produced only when something changed (no busy capture loop);
//! - an [`InputSink`]: keys by keysym, absolute pointer motion in monitor coordinates,
//!   buttons, scroll, touch (mapped to the pointer for now).
//!
//! Both come from [`Workstation`], the interface every backend implements.
//!
//! Modules:
//! - [`spec`]: what a workstation is made of (backend, monitors, memory, CPUs), the limits a
//!   request is validated against, and where monitors sit in the framebuffer — sans-IO;
//! - [`frame`], [`input`]: the frame and input types and traits;
//! - [`xvfb`]: the Xvfb backend (Xvfb + window manager + session, x11rb capture with MIT-SHM
//!   and DAMAGE, XTEST input, RandR 1.5 monitors);
//! - [`qemu`]: the QEMU backend (QMP control, VNC frames and input, qcow2 overlay, KVM probe
//!   with TCG fallback);
//! - [`cgroup`]: memory and CPU limits with cgroup v2, where the kernel offers them;
//! - [`procs`]: finding and stopping every process of a workstation, even orphans of a
//!   crashed supervisor (processes carry a marker in their environment);
//! - [`png`](mod@png): screenshots.

pub mod backend;
pub mod cgroup;
pub mod frame;
pub mod initramfs;
pub mod input;
pub mod png;
pub mod procs;
pub mod qemu;
pub mod spec;
pub mod xauth;
pub mod xvfb;

pub use backend::{MonitorError, Workstation};
pub use frame::{CaptureError, Frame, FrameSource, Rect};
pub use input::{InputError, InputEvent, InputSink, MouseButton, TouchPhase};
pub use spec::{BackendKind, Limits, Monitor, MonitorSize, WorkstationSpec};
