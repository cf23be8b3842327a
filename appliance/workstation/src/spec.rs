//! What a workstation is made of, the limits a request must fit, and where monitors sit in
//! the framebuffer. Sans-IO: no process, no file is touched here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::frame::Rect;

/// The kind of desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendKind {
    /// An Xvfb X server with a window manager and a session.
    Xvfb,
    /// A QEMU virtual machine.
    Qemu,
}

impl FromStr for BackendKind {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "xvfb" => Ok(Self::Xvfb),
            "qemu" => Ok(Self::Qemu),
            other => Err(SpecError::UnknownBackend(other.to_owned())),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Xvfb => "xvfb",
            Self::Qemu => "qemu",
        })
    }
}

/// A monitor's size in pixels, written `1920x1080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorSize {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl FromStr for MonitorSize {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadMonitorSize(s.to_owned());
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        Ok(Self {
            width: w.trim().parse().map_err(|_| bad())?,
            height: h.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for MonitorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// A monitor placed in the framebuffer. Ids are stable while the workstation runs; monitor 0
/// is the primary and always exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitor {
    /// Stable id.
    pub id: u32,
    /// Left edge in the framebuffer.
    pub x: i32,
    /// Top edge in the framebuffer.
    pub y: i32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Monitor {
    /// The monitor's rectangle in the framebuffer.
    pub fn rect(&self) -> Rect {
        Rect::new(self.x, self.y, self.width, self.height)
    }
}

/// What may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Monitors per workstation.
    pub max_monitors: usize,
    /// Smallest monitor.
    pub min_monitor: MonitorSize,
    /// The framebuffer every Xvfb workstation gets: monitors are laid out inside it, so it
    /// bounds the layout (total width side by side, tallest height).
    pub framebuffer: MonitorSize,
    /// Memory of a VM, MiB.
    pub max_memory_mib: u64,
    /// CPUs of a VM.
    pub max_cpus: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_monitors: 4,
            min_monitor: MonitorSize {
                width: 320,
                height: 200,
            },
            // 96 MiB of framebuffer: e.g. 1920x1080 + two 2732x2048 tablets side by side, or a
            // portrait 2048x2732.
            framebuffer: MonitorSize {
                width: 8192,
                height: 3072,
            },
            max_memory_mib: 64 * 1024,
            max_cpus: 32,
        }
    }
}

/// A workstation as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkstationSpec {
    /// Backend.
    pub backend: BackendKind,
    /// Monitor sizes at start, primary first.
    pub monitors: Vec<MonitorSize>,
    /// For qemu: the base disk image (never modified; an overlay is used).
    pub image: Option<String>,
    /// For qemu: memory in MiB.
    pub memory_mib: u64,
    /// For qemu: CPUs.
    pub cpus: u32,
    /// For qemu: direct kernel boot (kernel, initrd, command line) instead of the disk's
    /// boot loader.
    pub kernel: Option<KernelBoot>,
}

/// Direct kernel boot of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    /// The kernel image.
    pub kernel: String,
    /// The initramfs.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub append: String,
}

/// A workstation request that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Unknown backend name.
    #[error("unknown backend '{0}': use xvfb or qemu")]
    UnknownBackend(String),
    /// A monitor size that does not parse.
    #[error("'{0}' is not a monitor size like 1920x1080")]
    BadMonitorSize(String),
    /// A memory size that does not parse.
    #[error("'{0}' is not a memory size like 4G or 512M")]
    BadMemory(String),
    /// No monitor.
    #[error("a workstation needs at least one monitor")]
    NoMonitors,
    /// Too many monitors.
    #[error("{asked} monitors asked, at most {max} allowed")]
    TooManyMonitors {
        /// Requested.
        asked: usize,
        /// Allowed.
        max: usize,
    },
    /// A monitor below the minimum.
    #[error("monitor {size} is smaller than the minimum {min}")]
    MonitorTooSmall {
        /// Requested.
        size: MonitorSize,
        /// Minimum.
        min: MonitorSize,
    },
    /// The layout does not fit the framebuffer.
    #[error("monitors {layout} do not fit side by side in the {framebuffer} framebuffer")]
    LayoutTooLarge {
        /// The requested layout.
        layout: String,
        /// The framebuffer.
        framebuffer: MonitorSize,
    },
    /// Memory out of range.
    #[error("memory {asked} MiB is outside 64..={max} MiB")]
    Memory {
        /// Requested.
        asked: u64,
        /// Allowed.
        max: u64,
    },
    /// CPUs out of range.
    #[error("{asked} CPUs is outside 1..={max}")]
    Cpus {
        /// Requested.
        asked: u32,
        /// Allowed.
        max: u32,
    },
    /// A qemu workstation without an image.
    #[error("a qemu workstation needs --image (a disk image to boot) or --kernel")]
    NoImage,
}

/// Parses `4G`, `512M`, `2048` (MiB) into MiB.
pub fn parse_memory_mib(s: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::BadMemory(s.to_owned());
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('G' | 'g') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], 1),
        Some('T' | 't') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(bad)
}

impl WorkstationSpec {
    /// Checks the request against `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), SpecError> {
        if self.monitors.is_empty() {
            return Err(SpecError::NoMonitors);
        }
        if self.monitors.len() > limits.max_monitors {
            return Err(SpecError::TooManyMonitors {
                asked: self.monitors.len(),
                max: limits.max_monitors,
            });
        }
        for m in &self.monitors {
            if m.width < limits.min_monitor.width || m.height < limits.min_monitor.height {
                return Err(SpecError::MonitorTooSmall {
                    size: *m,
                    min: limits.min_monitor,
                });
            }
        }
        if layout(&self.monitors, limits.framebuffer).is_none() {
            return Err(SpecError::LayoutTooLarge {
                layout: self
                    .monitors
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(" + "),
                framebuffer: limits.framebuffer,
            });
        }
        if self.backend == BackendKind::Qemu {
            if self.image.is_none() && self.kernel.is_none() {
                return Err(SpecError::NoImage);
            }
            if !(64..=limits.max_memory_mib).contains(&self.memory_mib) {
                return Err(SpecError::Memory {
                    asked: self.memory_mib,
                    max: limits.max_memory_mib,
                });
            }
            if !(1..=limits.max_cpus).contains(&self.cpus) {
                return Err(SpecError::Cpus {
                    asked: self.cpus,
                    max: limits.max_cpus,
                });
            }
        }
        Ok(())
    }
}

/// Where a new monitor of `size` goes next to `existing`: the leftmost free spot on the top
/// edge of the framebuffer, or `None` if it does not fit.
pub fn place(existing: &[Monitor], size: MonitorSize, fb: MonitorSize) -> Option<(i32, i32)> {
    if size.height > fb.height {
        return None;
    }
    let mut candidates: Vec<i64> = std::iter::once(0)
        .chain(existing.iter().map(|m| i64::from(m.x) + i64::from(m.width)))
        .collect();
    candidates.sort_unstable();
    candidates.into_iter().find_map(|x| {
        let r = Rect::new(x as i32, 0, size.width, size.height);
        let fits = x + i64::from(size.width) <= i64::from(fb.width)
            && existing.iter().all(|m| m.rect().intersect(&r).is_none());
        fits.then_some((x as i32, 0))
    })
}

/// Lays out `sizes` left to right with ids 0, 1, …; `None` if they do not fit.
pub fn layout(sizes: &[MonitorSize], fb: MonitorSize) -> Option<Vec<Monitor>> {
    let mut out: Vec<Monitor> = Vec::with_capacity(sizes.len());
    for (i, s) in sizes.iter().enumerate() {
        let (x, y) = place(&out, *s, fb)?;
        out.push(Monitor {
            id: i as u32,
            x,
            y,
            width: s.width,
            height: s.height,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sz(s: &str) -> MonitorSize {
        s.parse().unwrap()
    }

    fn xvfb(monitors: &[&str]) -> WorkstationSpec {
        WorkstationSpec {
            backend: BackendKind::Xvfb,
            monitors: monitors.iter().map(|m| sz(m)).collect(),
            image: None,
            memory_mib: 0,
            cpus: 0,
            kernel: None,
        }
    }

    #[test]
    fn sizes_memory_and_backends_parse() {
        assert_eq!(
            sz("1920x1080"),
            MonitorSize {
                width: 1920,
                height: 1080
            }
        );
        assert!("1920".parse::<MonitorSize>().is_err());
        assert_eq!(parse_memory_mib("4G").unwrap(), 4096);
        assert_eq!(parse_memory_mib("512M").unwrap(), 512);
        assert!(parse_memory_mib("lots").is_err());
        assert_eq!(
            "vmware".parse::<BackendKind>(),
            Err(SpecError::UnknownBackend("vmware".into()))
        );
    }

    #[test]
    fn layouts_beyond_the_limits_are_refused_clearly() {
        let l = Limits::default();
        assert!(xvfb(&["1920x1080", "2732x2048"]).validate(&l).is_ok());
        assert!(matches!(
            xvfb(&["3000x2000", "3000x2000", "3000x2000"]).validate(&l),
            Err(SpecError::LayoutTooLarge { .. })
        ));
        assert!(matches!(
            xvfb(&["1920x4000"]).validate(&l),
            Err(SpecError::LayoutTooLarge { .. })
        ));
        assert!(matches!(
            xvfb(&["800x600"; 5]).validate(&l),
            Err(SpecError::TooManyMonitors { asked: 5, max: 4 })
        ));
        assert!(matches!(
            xvfb(&["100x100"]).validate(&l),
            Err(SpecError::MonitorTooSmall { .. })
        ));
        assert_eq!(xvfb(&[]).validate(&l), Err(SpecError::NoMonitors));
        let mut q = xvfb(&["1024x768"]);
        q.backend = BackendKind::Qemu;
        q.memory_mib = 4096;
        q.cpus = 2;
        assert_eq!(q.validate(&l), Err(SpecError::NoImage));
        q.image = Some("disk.qcow2".into());
        assert!(q.validate(&l).is_ok());
        q.cpus = 99;
        assert!(matches!(q.validate(&l), Err(SpecError::Cpus { .. })));
    }

    #[test]
    fn monitors_are_placed_left_to_right_and_gaps_are_reused() {
        let fb = Limits::default().framebuffer;
        let mons = layout(&[sz("1920x1080"), sz("1000x800")], fb).unwrap();
        assert_eq!((mons[1].x, mons[1].y), (1920, 0));
        // Monitor 1 removed: a new small monitor goes into its gap, a big one after.
        let only0 = [mons[0]];
        let third = Monitor {
            id: 2,
            x: 2920,
            y: 0,
            width: 500,
            height: 500,
        };
        assert_eq!(
            place(&[only0[0], third], sz("900x600"), fb),
            Some((1920, 0))
        );
        assert_eq!(
            place(&[only0[0], third], sz("1100x600"), fb),
            Some((3420, 0))
        );
        assert_eq!(place(&only0, sz("7000x600"), fb), None);
    }
}
