//! A backend wrapper that counts the bytes uploaded and holds uploads to a bandwidth limit;
//! and the progress counter rustic reports a backup's bytes to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustic_core::{
    BytesList, FileType, Id, Progress, ProgressBars, ProgressType, ReadBackend, RusticProgress,
    RusticResult, WriteBackend,
};

/// Upload figures shared between a [`Metered`] backend and its owner.
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes written to the store (packs, indexes, snapshots, keys), in total.
    pub uploaded: AtomicU64,
    /// Bytes per second, 0 for no limit.
    pub limit: AtomicU64,
    /// When the link is free again under the limit.
    free_at: Mutex<Option<Instant>>,
}

impl Meter {
    /// Waits until `n` more bytes fit under the limit (each upload books its time first, so
    /// concurrent uploads queue behind each other).
    fn book(&self, n: u64) {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let start = {
            let mut free = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = free.map_or(now, |f| f.max(now));
            *free = Some(start + Duration::from_secs_f64(n as f64 / limit as f64));
            start
        };
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
    }
}

/// A backend that counts and paces what is written through it.
#[derive(Debug)]
pub struct Metered {
    /// The real backend.
    pub inner: Arc<dyn WriteBackend>,
    /// The figures.
    pub meter: Arc<Meter>,
}

impl ReadBackend for Metered {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list_with_size(&self, t: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(t)
    }
    fn list(&self, t: FileType) -> RusticResult<Vec<Id>> {
        self.inner.list(t)
    }
    fn read_full(&self, t: FileType, id: &Id) -> RusticResult<Bytes> {
        self.inner.read_full(t, id)
    }
    fn read_partial(
        &self,
        t: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        self.inner.read_partial(t, id, cacheable, offset, length)
    }
    fn warmup_path(&self, t: FileType, id: &Id) -> String {
        self.inner.warmup_path(t, id)
    }
    fn needs_warm_up(&self) -> bool {
        self.inner.needs_warm_up()
    }
    fn warm_up(&self, t: FileType, id: &Id) -> RusticResult<()> {
        self.inner.warm_up(t, id)
    }
}

impl WriteBackend for Metered {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }
    fn write_bytes(
        &self,
        t: FileType,
        id: &Id,
        cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let n = content.size() as u64;
        self.meter.book(n);
        self.inner.write_bytes(t, id, cacheable, content)?;
        self.meter.uploaded.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
    fn remove(&self, t: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(t, id, cacheable)
    }
}

/// Source bytes a backup has read, of how many.
#[derive(Debug, Default, Clone)]
pub struct Counter {
    /// Read so far.
    pub done: Arc<AtomicU64>,
    /// In all (from rustic's scan of the source).
    pub total: Arc<AtomicU64>,
}

impl RusticProgress for Counter {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.total.store(len, Ordering::Relaxed);
    }
    fn set_title(&self, _: &str) {}
    fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn finish(&self) {}
}

/// Hands rustic the backup's byte counter; every other progress is hidden.
#[derive(Debug, Clone, Default)]
pub struct Bars {
    /// The backup's bytes.
    pub backup: Counter,
}

impl ProgressBars for Bars {
    fn progress(&self, t: ProgressType, prefix: &str) -> Progress {
        match (t, prefix) {
            (ProgressType::Bytes, "backing up...") => Progress::new(self.backup.clone()),
            _ => Progress::hidden(),
        }
    }
}
