//! One watched monitor's pipeline: capture, conversion, one encode, and the fan-out of every
//! encoded frame to the monitor's subscribers, each sent on its own QUIC stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};

use periphery_media::{bgra_to_i420, H264Encoder, I420};
use periphery_protocol::media::{encode_video_frame, CodecParams, VideoFrameHeader};
use periphery_protocol::PipelineFigures;

use crate::workstations::Workstations;

use super::{lock, Pipelines, MAX_IN_FLIGHT};

/// How long capture waits for a change before looking at keyframe requests again.
const CAPTURE_WAIT: Duration = Duration::from_millis(20);
/// Encoder frame rate hint.
const FPS: u32 = 60;

/// A moving average of stage times, ms, weighted to the last few dozen frames.
fn ewma(old_ms: f32, took: Duration) -> f32 {
    let new = took.as_secs_f32() * 1000.0;
    if old_ms == 0.0 {
        new
    } else {
        old_ms * 0.9 + new * 0.1
    }
}

/// An encoded frame ready to send: the whole unidirectional stream's bytes.
#[derive(Debug)]
pub struct OutFrame {
    /// Sequence number within the monitor.
    pub sequence: u64,
    /// Whether it is a keyframe.
    pub keyframe: bool,
    /// Stream kind, header and payload.
    pub bytes: Vec<u8>,
}

pub(super) struct Sub {
    pub(super) attach_id: u64,
    pub(super) tx: mpsc::Sender<Arc<OutFrame>>,
    pub(super) behind: bool,
}

/// One watched monitor.
pub struct Pipeline {
    pub(super) ws_id: String,
    pub(super) monitor: u32,
    pub(super) subs: Mutex<Vec<Sub>>,
    pub(super) keyframe: AtomicBool,
    pub(super) last_key_request: Mutex<Option<Instant>>,
    pub(super) encoder: Mutex<String>,
    pub(super) encoded: AtomicU64,
    /// Recent figures, and (frames, since) of the current one-second window.
    pub(super) figures: Mutex<(PipelineFigures, u32, Instant)>,
    /// The last captured frames sent, by sequence (diagnostics; empty unless configured).
    pub(super) kept: Mutex<VecDeque<KeptFrame>>,
    pub(super) keep: usize,
}

/// A captured frame as its stream sent it.
pub(super) struct KeptFrame {
    pub(super) sequence: u64,
    pub(super) width: u32,
    pub(super) height: u32,
    /// BGRX, tightly packed.
    pub(super) data: Vec<u8>,
}

impl Pipeline {
    /// Folds one frame's capture and conversion times into the figures.
    fn record_capture(&self, capture: Duration, convert: Duration) {
        let mut f = lock(&self.figures);
        f.0.capture_ms = ewma(f.0.capture_ms, capture);
        f.0.convert_ms = ewma(f.0.convert_ms, convert);
    }

    /// Folds one frame's encoding time into the figures and counts it.
    fn record_encode(&self, took: Duration) {
        let mut f = lock(&self.figures);
        f.0.encode_ms = ewma(f.0.encode_ms, took);
        f.1 += 1;
        let window = f.2.elapsed();
        if window >= Duration::from_secs(1) {
            f.0.fps = f.1 as f32 / window.as_secs_f32();
            f.1 = 0;
            f.2 = Instant::now();
        }
    }

    /// Asks for a keyframe, at most twice a second.
    pub fn request_keyframe(&self) {
        let mut last = lock(&self.last_key_request);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            *last = Some(Instant::now());
            self.keyframe.store(true, Ordering::Relaxed);
        }
    }
}

/// A captured frame, converted, for the encoder.
struct Job {
    img: I420,
    captured_us: u64,
    force_key: bool,
    /// The captured BGRA, tight, when source frames are kept.
    source: Option<Vec<u8>>,
}

/// Captures, converts, encodes and fans out, in turn on one thread. (Capture and conversion
/// overlapped with encoding on a second thread was measured on 2 cores: the same rate, and
/// capture-to-decoded p50 23 -> 33 ms, as both stages are multi-threaded already.)
pub(super) fn run_pipeline(
    p: Arc<Pipeline>,
    workstations: Arc<Workstations>,
    pipelines: Pipelines,
    clock: Instant,
) {
    let key = (p.ws_id.clone(), p.monitor);
    let mut source = match workstations.frame_source(&p.ws_id, p.monitor) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(ws = %p.ws_id, monitor = p.monitor, error = %e, "cannot capture");
            lock(&pipelines).remove(&key);
            return;
        }
    };
    let threads = periphery_media::convert::default_threads();
    let mut stage = EncodeStage::default();
    let mut spare: Option<I420> = None;
    loop {
        if lock(&p.subs).is_empty() {
            let mut map = lock(&pipelines);
            if lock(&p.subs).is_empty() {
                map.remove(&key);
                break;
            }
        }
        if p.keyframe.load(Ordering::Relaxed) {
            source.request_full();
        }
        let waited = Instant::now();
        // Short waits: a keyframe request (a tablet joining, a handoff) is seen within 20 ms
        // on a still screen (accept -> first frame p50 was 106 ms with 100 ms waits, 26 ms).
        let frame = match source.next_frame(CAPTURE_WAIT) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                tracing::info!(ws = %p.ws_id, monitor = p.monitor, error = %e, "capture ended");
                break;
            }
        };
        let (w, h) = (frame.width & !1, frame.height & !1);
        let force_key = p.keyframe.swap(false, Ordering::Relaxed);
        let captured_us = frame
            .captured_at
            .saturating_duration_since(clock)
            .as_micros() as u64;
        let mut img = match spare.take() {
            Some(img) if (img.width, img.height) == (w, h) => img,
            _ => I420::new(w, h),
        };
        let t0 = Instant::now();
        bgra_to_i420(frame.data, frame.stride, &mut img, threads);
        p.record_capture(t0 - waited, t0.elapsed());
        let source_copy = (p.keep > 0).then(|| {
            let row = w as usize * 4;
            let mut copy = Vec::with_capacity(row * h as usize);
            for r in 0..h as usize {
                copy.extend_from_slice(&frame.data[r * frame.stride..r * frame.stride + row]);
            }
            copy
        });
        let job = Job {
            img,
            captured_us,
            force_key,
            source: source_copy,
        };
        match stage.run(&p, job) {
            Some(img) => spare = Some(img),
            None => break,
        }
    }
    // Capture ended, no encoder could run, or nobody watches any more; a new pipeline for the
    // same monitor may already have replaced this one.
    let mut map = lock(&pipelines);
    if map.get(&key).is_some_and(|q| Arc::ptr_eq(q, &p)) {
        map.remove(&key);
    }
}

/// The encoder of one pipeline: numbers the frames and fans them out.
#[derive(Default)]
struct EncodeStage {
    enc: Option<H264Encoder>,
    sequence: u64,
}

impl EncodeStage {
    /// Encodes `job` and sends it; returns the picture buffer for reuse, or `None` when no
    /// encoder can run (the pipeline ends).
    fn run(&mut self, p: &Pipeline, job: Job) -> Option<I420> {
        let (w, h) = (job.img.width, job.img.height);
        let mut force = job.force_key;
        if self.enc.as_ref().is_none_or(|e| e.size() != (w, h)) {
            match H264Encoder::probe(w, h, FPS) {
                Ok(e) => {
                    *lock(&p.encoder) = e.report().to_string();
                    self.enc = Some(e);
                    force = true;
                }
                Err(e) => {
                    tracing::error!(ws = %p.ws_id, error = %e, "no encoder; the monitor is not streamed");
                    return None;
                }
            }
        }
        let encoder = self.enc.as_mut()?;
        let t0 = Instant::now();
        let packets = encoder.encode(&job.img, job.captured_us as i64, force);
        p.record_encode(t0.elapsed());
        let packets = match packets {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "encode failed");
                return Some(job.img);
            }
        };
        let name = encoder.report().name.clone();
        let mut source = job.source;
        for pkt in packets {
            self.sequence += 1;
            let sequence = self.sequence;
            let header = VideoFrameHeader {
                monitor: p.monitor,
                sequence,
                capture_time_us: job.captured_us,
                keyframe: pkt.key,
                codec: pkt.key.then(|| CodecParams {
                    codec: "h264".into(),
                    encoder: name.clone(),
                    width: w,
                    height: h,
                }),
            };
            let out = Arc::new(OutFrame {
                sequence,
                keyframe: pkt.key,
                bytes: encode_video_frame(&header, &pkt.data),
            });
            p.encoded.fetch_add(1, Ordering::Relaxed);
            // The packet is this capture's (libx264 zerolatency and the hardware encoders
            // emit one access unit per input, no reordering).
            if let Some(data) = source.take() {
                let mut kept = lock(&p.kept);
                if kept.len() == p.keep {
                    kept.pop_front();
                }
                kept.push_back(KeptFrame {
                    sequence,
                    width: w,
                    height: h,
                    data,
                });
            }
            fan_out(p, &out);
        }
        Some(job.img)
    }
}

fn fan_out(p: &Pipeline, frame: &Arc<OutFrame>) {
    let mut want_key = false;
    lock(&p.subs).retain_mut(|s| {
        if s.behind && !frame.keyframe {
            return true;
        }
        match s.tx.try_send(frame.clone()) {
            Ok(()) => {
                s.behind = false;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.behind = true;
                want_key = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    });
    if want_key {
        p.request_keyframe();
    }
}

/// Sends one tablet's frames, each on its own stream.
pub(super) async fn send_frames(
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Arc<OutFrame>>,
    pipeline: Arc<Pipeline>,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (reset_tx, reset_rx) = watch::channel(0u64);
    let mut skipping = false;
    while let Some(frame) = rx.recv().await {
        if frame.keyframe {
            // Everything older still in flight is obsolete now.
            reset_tx.send_replace(frame.sequence);
            skipping = false;
        } else if skipping {
            continue;
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if frame.keyframe => match permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
            Err(_) => {
                // Too many frames in flight: this tablet is behind. Skip to a keyframe.
                skipping = true;
                pipeline.request_keyframe();
                continue;
            }
        };
        let conn2 = conn.clone();
        let mut reset = reset_rx.clone();
        tokio::spawn(async move {
            let conn = conn2;
            let _permit = permit;
            let Ok(mut s) = conn.open_uni().await else {
                return;
            };
            let _ = s.set_priority((frame.sequence % i32::MAX as u64) as i32);
            tokio::select! {
                r = s.write_all(&frame.bytes) => {
                    if r.is_ok() {
                        let _ = s.finish();
                    }
                }
                _ = reset.wait_for(|newest_key| *newest_key > frame.sequence) => {
                    let _ = s.reset(quinn::VarInt::from_u32(1));
                }
            }
        });
        if conn.close_reason().is_some() {
            return;
        }
    }
}
