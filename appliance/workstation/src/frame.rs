//! Frames and the per-monitor frame source.

use std::time::{Duration, Instant};

use crate::spec::Monitor;

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// A rectangle.
    pub const fn new(x: i32, y: i32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    fn right(&self) -> i64 {
        i64::from(self.x) + i64::from(self.w)
    }

    fn bottom(&self) -> i64 {
        i64::from(self.y) + i64::from(self.h)
    }

    /// The overlap of two rectangles, if any.
    pub fn intersect(&self, o: &Rect) -> Option<Rect> {
        let x = self.x.max(o.x);
        let y = self.y.max(o.y);
        let r = self.right().min(o.right());
        let b = self.bottom().min(o.bottom());
        (r > i64::from(x) && b > i64::from(y))
            .then(|| Rect::new(x, y, (r - i64::from(x)) as u32, (b - i64::from(y)) as u32))
    }

    /// The smallest rectangle holding both.
    pub fn union(&self, o: &Rect) -> Rect {
        let x = self.x.min(o.x);
        let y = self.y.min(o.y);
        let r = self.right().max(o.right());
        let b = self.bottom().max(o.bottom());
        Rect::new(x, y, (r - i64::from(x)) as u32, (b - i64::from(y)) as u32)
    }

    /// Moved by `(dx, dy)`.
    pub fn translate(&self, dx: i32, dy: i32) -> Rect {
        Rect::new(self.x + dx, self.y + dy, self.w, self.h)
    }

    /// Area in pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }

    /// Whether the point lies inside.
    pub fn contains(&self, x: i32, y: i32) -> bool {
        i64::from(x) >= i64::from(self.x)
            && i64::from(x) < self.right()
            && i64::from(y) >= i64::from(self.y)
            && i64::from(y) < self.bottom()
    }
}

/// Clips screen-space damage to a monitor and returns it in monitor coordinates. Beyond
/// `max_rects` rectangles the result collapses to their bounding box (encoders prefer few
/// rectangles; the region is still covered).
pub fn damage_for_monitor(monitor: &Rect, damage: &[Rect], max_rects: usize) -> Vec<Rect> {
    let mut out: Vec<Rect> = damage
        .iter()
        .filter_map(|d| d.intersect(monitor))
        .map(|r| r.translate(-monitor.x, -monitor.y))
        .collect();
    if out.len() > max_rects {
        let bbox = out.iter().skip(1).fold(out[0], |acc, r| acc.union(r));
        out = vec![bbox];
    }
    out
}

/// One captured frame of a monitor. Borrowed from the source: it is valid until the next call
/// (for the Xvfb backend it *is* the shared-memory segment the X server wrote: no copy).
#[derive(Debug)]
pub struct Frame<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per row.
    pub stride: usize,
    /// Pixels, 4 bytes each in B, G, R, A order; A is undefined (X has no alpha here).
    pub data: &'a [u8],
    /// When the pixels were read.
    pub captured_at: Instant,
    /// What changed since the previous frame, in monitor coordinates. The whole monitor on
    /// the first frame and after [`FrameSource::request_full`].
    pub damage: Vec<Rect>,
}

impl Frame<'_> {
    /// The pixel at `(x, y)` as `[b, g, r, a]`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let i = y as usize * self.stride + x as usize * 4;
        [
            self.data[i],
            self.data[i + 1],
            self.data[i + 2],
            self.data[i + 3],
        ]
    }
}

/// Why capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The display connection failed or was closed (the workstation stopped).
    #[error("the display connection failed")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The display lacks an extension capture needs.
    #[error("the display lacks the {0} extension")]
    MissingExtension(&'static str),
    /// Shared memory could not be set up.
    #[error("shared memory for capture failed")]
    SharedMemory(#[source] std::io::Error),
    /// The monitor does not exist (any more).
    #[error("no monitor {0}")]
    NoMonitor(u32),
}

/// Frames of one monitor, produced when something changed.
pub trait FrameSource: Send {
    /// The monitor this source captures.
    fn monitor(&self) -> Monitor;

    /// Waits up to `timeout` for the monitor to change and returns the new frame, or `None`
    /// if nothing changed. Never busy-waits.
    fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame<'_>>, CaptureError>;

    /// Makes the next frame a full one (a new viewer, a keyframe request).
    fn request_full(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rectangles_intersect_and_unite() {
        let a = Rect::new(0, 0, 100, 100);
        let b = Rect::new(50, 80, 100, 100);
        assert_eq!(a.intersect(&b), Some(Rect::new(50, 80, 50, 20)));
        assert_eq!(a.intersect(&Rect::new(100, 0, 5, 5)), None);
        assert_eq!(a.union(&b), Rect::new(0, 0, 150, 180));
        assert!(a.contains(99, 0) && !a.contains(100, 0));
    }

    #[test]
    fn damage_is_clipped_to_the_monitor_in_its_coordinates() {
        let mon = Rect::new(1920, 0, 1000, 800);
        let damage = [Rect::new(1900, 10, 40, 10), Rect::new(0, 0, 10, 10)];
        assert_eq!(
            damage_for_monitor(&mon, &damage, 8),
            vec![Rect::new(0, 10, 20, 10)]
        );
        let many: Vec<Rect> = (0..10).map(|i| Rect::new(1920 + i * 10, i, 5, 5)).collect();
        assert_eq!(
            damage_for_monitor(&mon, &many, 4),
            vec![Rect::new(0, 0, 95, 14)]
        );
    }
}
