//! The one interface every backend gives the supervisor and the streaming layer.

use crate::frame::{CaptureError, FrameSource};
use crate::input::{InputError, InputSink};
use crate::spec::{Monitor, MonitorSize};

/// Why a monitor change failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The new monitor does not fit in the framebuffer.
    #[error("a {size} monitor does not fit next to the others in the {framebuffer} framebuffer")]
    NoRoom {
        /// Requested size.
        size: MonitorSize,
        /// The framebuffer.
        framebuffer: MonitorSize,
    },
    /// Too many monitors.
    #[error("at most {0} monitors")]
    TooMany(usize),
    /// No such monitor.
    #[error("no monitor {0}")]
    NotFound(u32),
    /// Monitor 0 cannot be removed.
    #[error("monitor 0 is the primary monitor and cannot be removed")]
    Primary,
    /// The X server refused.
    #[error("the X server refused the monitor change")]
    X(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend has a fixed set of monitors.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A running workstation, whatever its backend.
pub trait Workstation: Send + std::fmt::Debug {
    /// Current monitors.
    fn monitors(&self) -> Vec<Monitor>;
    /// Its main processes, with their roles.
    fn pids(&self) -> Vec<(&'static str, u32)>;
    /// The first main process that exited (or a VM that stopped for good), and how.
    fn exited(&mut self) -> Option<String>;
    /// A new frame source for monitor `id`.
    fn frame_source(&self, id: u32) -> Result<Box<dyn FrameSource>, CaptureError>;
    /// A new input sink.
    fn input_sink(&self) -> Result<Box<dyn InputSink>, InputError>;
    /// Adds a monitor where it fits.
    fn add_monitor(&mut self, size: MonitorSize, max: usize) -> Result<Monitor, MonitorError>;
    /// Removes a monitor; its windows go to monitor 0.
    fn remove_monitor(&mut self, id: u32) -> Result<(), MonitorError>;
    /// Backend details for people (display, accelerator).
    fn detail(&self) -> String;
    /// Asks the guest to shut down by itself (ACPI power button); `false` if the backend has
    /// no such thing. Watch [`Workstation::exited`] for the result.
    fn request_shutdown(&mut self) -> bool {
        false
    }
    /// Stops every process of the workstation and waits until none is left.
    fn stop(self: Box<Self>);
}

impl Workstation for crate::xvfb::XvfbWorkstation {
    fn monitors(&self) -> Vec<Monitor> {
        crate::xvfb::XvfbWorkstation::monitors(self)
    }
    fn pids(&self) -> Vec<(&'static str, u32)> {
        crate::xvfb::XvfbWorkstation::pids(self)
    }
    fn exited(&mut self) -> Option<String> {
        crate::xvfb::XvfbWorkstation::exited(self)
    }
    fn frame_source(&self, id: u32) -> Result<Box<dyn FrameSource>, CaptureError> {
        Ok(Box::new(crate::xvfb::capture::XvfbCapture::new(
            &self.access(),
            id,
        )?))
    }
    fn input_sink(&self) -> Result<Box<dyn InputSink>, InputError> {
        Ok(Box::new(crate::xvfb::input::XvfbInput::new(
            &self.access(),
        )?))
    }
    fn add_monitor(&mut self, size: MonitorSize, max: usize) -> Result<Monitor, MonitorError> {
        crate::xvfb::XvfbWorkstation::add_monitor(self, size, max)
    }
    fn remove_monitor(&mut self, id: u32) -> Result<(), MonitorError> {
        crate::xvfb::XvfbWorkstation::remove_monitor(self, id)
    }
    fn detail(&self) -> String {
        format!("display :{}", self.display())
    }
    fn stop(self: Box<Self>) {
        crate::xvfb::XvfbWorkstation::stop(*self)
    }
}

impl Workstation for crate::qemu::QemuWorkstation {
    fn monitors(&self) -> Vec<Monitor> {
        crate::qemu::QemuWorkstation::monitors(self)
    }
    fn pids(&self) -> Vec<(&'static str, u32)> {
        vec![("qemu", self.pid())]
    }
    fn exited(&mut self) -> Option<String> {
        crate::qemu::QemuWorkstation::exited(self)
    }
    fn frame_source(&self, id: u32) -> Result<Box<dyn FrameSource>, CaptureError> {
        if id != 0 {
            return Err(CaptureError::NoMonitor(id));
        }
        crate::qemu::rfb::RfbClient::connect(&self.vnc_socket())
            .map(|c| Box::new(c) as Box<dyn FrameSource>)
            .map_err(|e| CaptureError::Connection(Box::new(e)))
    }
    fn input_sink(&self) -> Result<Box<dyn InputSink>, InputError> {
        crate::qemu::rfb::RfbClient::connect(&self.vnc_socket())
            .map(|c| Box::new(c) as Box<dyn InputSink>)
            .map_err(|e| InputError::Connection(Box::new(e)))
    }
    fn add_monitor(&mut self, _: MonitorSize, _: usize) -> Result<Monitor, MonitorError> {
        Err(MonitorError::Unsupported(
            "a qemu workstation has the one monitor of its VM",
        ))
    }
    fn remove_monitor(&mut self, _: u32) -> Result<(), MonitorError> {
        Err(MonitorError::Unsupported(
            "a qemu workstation has the one monitor of its VM",
        ))
    }
    fn request_shutdown(&mut self) -> bool {
        self.powerdown().is_ok()
    }
    fn detail(&self) -> String {
        let a = self.accel();
        format!("accelerator {:?}: {}", a.accel, a.reason)
    }
    fn stop(self: Box<Self>) {
        crate::qemu::QemuWorkstation::stop(*self)
    }
}
