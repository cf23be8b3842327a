//! Watching a monitor: attach, receive frame streams, decode in order, send input.
//!
//! Frames arrive each on its own unidirectional stream, so they may complete out of order; the
//! viewer reorders them by sequence. A stream the appliance reset (the tablet was behind) or a
//! gap that does not fill is a loss: the viewer drops frames until the next keyframe and asks
//! for one. Latency is capture time (appliance clock) to decoded (tablet clock), corrected by
//! the clock offset measured with pings over the control stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use periphery_media::{H264Decoder, I420};
use periphery_protocol::media::{
    InputMessage, VideoFrame, VideoFrameHeader, VideoFrameReader, WireInput, STREAM_INPUT,
};
use periphery_protocol::{
    encode_frame, AttachMode, Attachment, Notice, Request, Response, DEFAULT_MAX_FRAME,
};

use crate::session::{Session, SessionError};

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The decoder failed.
    #[error("decoding failed")]
    Decode(#[from] periphery_media::CodecError),
    /// The appliance answered something else.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// Sending input failed.
    #[error("input stream failed: {0}")]
    Input(String),
    /// The appliance ended this attachment (a handoff, a revoked share).
    #[error("detached by the appliance: {0}")]
    Detached(String),
}

/// Figures over the last window (normally one second).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Decoded frames per second.
    pub fps: f64,
    /// Capture-to-decoded latency, median, ms.
    pub p50_ms: f64,
    /// Capture-to-decoded latency, 99th percentile, ms.
    pub p99_ms: f64,
    /// Received video bitrate, Mbit/s.
    pub mbit_s: f64,
    /// Frames lost or skipped in the window.
    pub dropped: u64,
    /// Frames decoded since attaching.
    pub total: u64,
}

/// A decoded picture and its header.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The frame header.
    pub header: VideoFrameHeader,
    /// The picture.
    pub image: I420,
}

/// A tablet attached to one monitor.
pub struct Viewer {
    session: Session,
    /// What the appliance granted.
    pub attachment: Attachment,
    /// Encoder named in the latest keyframe.
    pub encoder: String,
    frames: mpsc::Receiver<Result<VideoFrame, ()>>,
    decoder: H264Decoder,
    next_seq: Option<u64>,
    waiting_key: bool,
    pending: BTreeMap<u64, VideoFrame>,
    gap_since: Option<Instant>,
    clock: Instant,
    offset_us: i64,
    input: Option<quinn::SendStream>,
    window_start: Instant,
    window_frames: u64,
    window_bytes: u64,
    window_dropped: u64,
    window_latency: Vec<f64>,
    total: u64,
    latest: Option<Decoded>,
    read_delay_ms: Arc<AtomicU64>,
    /// Notices that were not about this attachment, oldest first.
    pub notices: Vec<Notice>,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("attachment", &self.attachment)
            .finish_non_exhaustive()
    }
}

impl Viewer {
    /// Connects with `config`, measures the clock offset, and attaches to `ws`.
    pub async fn attach(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        ws: &str,
        mode: AttachMode,
        view_only: bool,
    ) -> Result<Self, ViewerError> {
        let mut session = Session::connect(addr, config).await?;
        let clock = Instant::now();
        let offset_us = measure_offset(&mut session, clock).await?;
        let (tx, rx) = mpsc::channel(64);
        let read_delay_ms = Arc::new(AtomicU64::new(0));
        tokio::spawn(accept_frames(
            session.conn.clone(),
            tx,
            read_delay_ms.clone(),
        ));
        let reply = session
            .request(Request::Attach {
                ws: ws.to_owned(),
                mode,
                view_only,
            })
            .await?;
        let Response::Attached(attachment) = reply else {
            return Err(ViewerError::Unexpected(format!("{reply:?}")));
        };
        Ok(Self {
            session,
            encoder: attachment.encoder.clone(),
            attachment,
            frames: rx,
            decoder: H264Decoder::new()?,
            next_seq: None,
            waiting_key: true,
            pending: BTreeMap::new(),
            gap_since: None,
            clock,
            offset_us,
            input: None,
            window_start: Instant::now(),
            window_frames: 0,
            window_bytes: 0,
            window_dropped: 0,
            window_latency: Vec::new(),
            total: 0,
            latest: None,
            read_delay_ms,
            notices: Vec::new(),
        })
    }

    /// Makes this tablet slow: it waits `delay` before reading each frame stream (tests, and
    /// to try what a weak network does). Zero restores normal reading.
    pub fn set_read_delay(&self, delay: Duration) {
        self.read_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    fn now_us(&self) -> i64 {
        self.clock.elapsed().as_micros() as i64
    }

    /// The latest decoded picture.
    pub fn latest(&self) -> Option<&Decoded> {
        self.latest.as_ref()
    }

    /// The estimated offset of the appliance's clock from this tablet's, microseconds.
    pub fn clock_offset_us(&self) -> i64 {
        self.offset_us
    }

    async fn lost(&mut self) -> Result<(), ViewerError> {
        self.window_dropped += 1;
        if !self.waiting_key {
            self.waiting_key = true;
            self.session
                .request(Request::KeyframeRequest {
                    attach_id: self.attachment.attach_id,
                })
                .await?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the next decoded picture.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<&Decoded>, ViewerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(()) = self.decode_ready().await? {
                return Ok(self.latest.as_ref());
            }
            let wait = if self.pending.is_empty() {
                deadline
            } else {
                // A gap: give the missing stream a moment, then call it lost.
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(50))
            };
            let next = tokio::select! {
                n = self.session.recv_notice() => match n {
                    Some(Notice::Detached { attach_id, reason })
                        if attach_id == self.attachment.attach_id =>
                    {
                        return Err(ViewerError::Detached(reason));
                    }
                    Some(n) => {
                        self.notices.push(n);
                        continue;
                    }
                    // The session ended: the frames channel says so next.
                    None => tokio::time::timeout_at(wait, self.frames.recv()).await,
                },
                f = tokio::time::timeout_at(wait, self.frames.recv()) => f,
            };
            match next {
                Ok(Some(Ok(f))) => {
                    self.window_bytes += f.payload.len() as u64;
                    if self.next_seq.is_none_or(|n| f.header.sequence >= n) {
                        self.pending.insert(f.header.sequence, f);
                    }
                }
                Ok(Some(Err(()))) => self.lost().await?,
                Ok(None) => {
                    return Err(ViewerError::Session(SessionError::Stream(
                        "the appliance stopped sending".into(),
                    )))
                }
                Err(_) if tokio::time::Instant::now() >= deadline => return Ok(None),
                Err(_) => {}
            }
        }
    }

    /// Decodes the next frame in order if it is here; handles losses and keyframe resyncs.
    async fn decode_ready(&mut self) -> Result<Option<()>, ViewerError> {
        if self.waiting_key {
            let key = self
                .pending
                .iter()
                .find(|(_, f)| f.header.keyframe)
                .map(|(s, _)| *s);
            let Some(key) = key else {
                return Ok(None);
            };
            let skipped = self.pending.range(..key).count() as u64;
            self.window_dropped += skipped;
            self.pending = self.pending.split_off(&key);
            self.next_seq = Some(key);
            self.waiting_key = false;
        }
        let Some(next) = self
            .next_seq
            .or_else(|| self.pending.keys().next().copied())
        else {
            return Ok(None);
        };
        let Some(frame) = self.pending.remove(&next) else {
            if !self.pending.is_empty() {
                let since = *self.gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(200) || self.pending.len() > 8 {
                    self.gap_since = None;
                    self.lost().await?;
                }
            }
            return Ok(None);
        };
        self.gap_since = None;
        self.next_seq = Some(next + 1);
        if let Some(c) = &frame.header.codec {
            self.encoder = c.encoder.clone();
        }
        match self.decoder.decode(&frame.payload) {
            Ok(Some(image)) => {
                let latency_us =
                    self.now_us() + self.offset_us - frame.header.capture_time_us as i64;
                self.window_latency.push(latency_us as f64 / 1000.0);
                self.window_frames += 1;
                self.total += 1;
                self.latest = Some(Decoded {
                    header: frame.header,
                    image,
                });
                Ok(Some(()))
            }
            Ok(None) => Ok(None),
            Err(_) => {
                self.lost().await?;
                Ok(None)
            }
        }
    }

    /// The figures since the last call, and a new window.
    pub fn take_stats(&mut self) -> Stats {
        let secs = self.window_start.elapsed().as_secs_f64().max(1e-3);
        let mut lat = std::mem::take(&mut self.window_latency);
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        let s = Stats {
            fps: self.window_frames as f64 / secs,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            mbit_s: self.window_bytes as f64 * 8.0 / secs / 1e6,
            dropped: self.window_dropped,
            total: self.total,
        };
        self.window_start = Instant::now();
        self.window_frames = 0;
        self.window_bytes = 0;
        self.window_dropped = 0;
        s
    }

    /// Tells the appliance what this tablet measured (shown in `periphery status`).
    pub async fn report_stats(&mut self, st: &Stats) -> Result<(), ViewerError> {
        self.session
            .request(Request::ReportStats {
                attach_id: self.attachment.attach_id,
                stats: periphery_protocol::TabletStats {
                    fps: st.fps as f32,
                    p50_ms: st.p50_ms as f32,
                    p99_ms: st.p99_ms as f32,
                    dropped: st.dropped,
                },
            })
            .await?;
        Ok(())
    }

    /// Sends one input event to this tablet's monitor.
    pub async fn send_input(&mut self, event: WireInput) -> Result<(), ViewerError> {
        if self.input.is_none() {
            let mut s = self
                .session
                .conn
                .open_uni()
                .await
                .map_err(|e| ViewerError::Input(e.to_string()))?;
            s.write_all(&[STREAM_INPUT])
                .await
                .map_err(|e| ViewerError::Input(e.to_string()))?;
            self.input = Some(s);
        }
        let msg = InputMessage {
            epoch: self.attachment.epoch,
            monitor: self.attachment.monitor.id,
            event,
        };
        let bytes =
            encode_frame(&msg, DEFAULT_MAX_FRAME).map_err(|e| ViewerError::Input(e.to_string()))?;
        if let Some(s) = self.input.as_mut() {
            s.write_all(&bytes)
                .await
                .map_err(|e| ViewerError::Input(e.to_string()))?;
        }
        Ok(())
    }

    /// Detaches and closes the connection.
    pub async fn detach(mut self) -> Result<(), ViewerError> {
        if let Some(mut s) = self.input.take() {
            let _ = s.finish();
        }
        self.session
            .request(Request::Detach {
                attach_id: self.attachment.attach_id,
            })
            .await?;
        self.session.close().await;
        Ok(())
    }

    /// Drops the connection without a word (tests: an abrupt disconnect).
    pub fn abandon(self) {
        self.session
            .conn
            .close(quinn::VarInt::from_u32(0), b"abandoned");
    }
}

/// NTP-style: a few pings, the offset of the one with the shortest round trip.
async fn measure_offset(session: &mut Session, clock: Instant) -> Result<i64, ViewerError> {
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..5 {
        let t0 = clock.elapsed().as_micros() as i64;
        let reply = session
            .request(Request::Ping {
                client_time_us: t0 as u64,
            })
            .await?;
        let t1 = clock.elapsed().as_micros() as i64;
        let Response::Pong { server_time_us, .. } = reply else {
            return Err(ViewerError::Unexpected(format!("{reply:?}")));
        };
        let rtt = t1 - t0;
        let offset = server_time_us as i64 - (t0 + t1) / 2;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, offset));
        }
    }
    Ok(best.map(|b| b.1).unwrap_or(0))
}

/// Accepts frame streams and reads each fully, concurrently.
async fn accept_frames(
    conn: quinn::Connection,
    tx: mpsc::Sender<Result<VideoFrame, ()>>,
    read_delay_ms: Arc<AtomicU64>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let tx = tx.clone();
        let delay = Duration::from_millis(read_delay_ms.load(Ordering::Relaxed));
        if !delay.is_zero() {
            // Slow tablet: streams wait, so QUIC flow control pushes back on the appliance.
            tokio::time::sleep(delay).await;
        }
        tokio::spawn(async move {
            let mut reader = VideoFrameReader::default();
            let mut buf = vec![0u8; 64 * 1024];
            let outcome = loop {
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => {
                        if reader.push(&buf[..n]).is_err() {
                            break Err(());
                        }
                    }
                    Ok(None) => break reader.finish().map_err(|_| ()),
                    Err(_) => break Err(()),
                }
            };
            let _ = tx.send(outcome).await;
        });
    }
}
