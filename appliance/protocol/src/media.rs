//! Media streams, sans-IO: video frames from the appliance, input from tablets.
//!
//! Every encoded frame travels on its own unidirectional QUIC stream (newer frames get higher
//! priority, and a stale one can be reset without touching the others):
//!
//! ```text
//! [STREAM_VIDEO_FRAME] [frame: VideoFrameHeader] [payload: the encoded access unit, to the end]
//! ```
//!
//! Input travels from the tablet on one unidirectional stream of frames, each an
//! [`InputMessage`]:
//!
//! ```text
//! [STREAM_INPUT] [frame: InputMessage] [frame: InputMessage] ...
//! ```
//!
//! [`VideoFrameReader`] reassembles a frame stream with a bound on the payload;
//! [`InputMessage::validate`] checks an event against the monitor it targets; and
//! [`InputLimiter`] bounds how many events per second a tablet may send (time passed in).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::frame::{decode_payload, FrameDecoder, FrameError, MalformedMessage, HEADER_LEN};

/// First byte of a unidirectional stream carrying one video frame.
pub const STREAM_VIDEO_FRAME: u8 = 0x01;
/// First byte of a tablet's input stream.
pub const STREAM_INPUT: u8 = 0x02;
/// Largest encoded frame accepted: 8 MiB (a 4K keyframe at high quality fits).
pub const MAX_VIDEO_PAYLOAD: usize = 8 << 20;
/// Largest header or input message.
pub const MAX_MEDIA_HEADER: usize = 4096;

/// How a stream of frames is coded; sent with every keyframe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecParams {
    /// `h264`.
    pub codec: String,
    /// The encoder that produced it (`libx264`, `h264_nvenc`, …).
    pub encoder: String,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
}

/// The header in front of every encoded frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoFrameHeader {
    /// The monitor it shows.
    pub monitor: u32,
    /// Increases by one per encoded frame of this monitor.
    pub sequence: u64,
    /// When it was captured, appliance clock, microseconds.
    pub capture_time_us: u64,
    /// Decoding can start here.
    pub keyframe: bool,
    /// Present on keyframes.
    pub codec: Option<CodecParams>,
}

/// A frame stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VideoStreamError {
    /// Not a video frame stream.
    #[error("stream kind {0:#x} is not a video frame")]
    WrongKind(u8),
    /// The header's framing failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The header is not a header.
    #[error(transparent)]
    Malformed(#[from] MalformedMessage),
    /// The payload is over the bound.
    #[error("frame payload over {MAX_VIDEO_PAYLOAD} bytes")]
    TooLarge,
    /// The stream ended before the header.
    #[error("the stream ended before the frame header")]
    Truncated,
}

/// A whole video frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// Its header.
    pub header: VideoFrameHeader,
    /// The encoded access unit.
    pub payload: Vec<u8>,
}

/// Encodes a video frame stream's bytes.
pub fn encode_video_frame(header: &VideoFrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![STREAM_VIDEO_FRAME];
    // A header is a few dozen bytes; it always fits.
    out.extend(crate::frame::encode_frame(header, MAX_MEDIA_HEADER).unwrap_or_default());
    out.extend_from_slice(payload);
    out
}

/// Reassembles one video frame stream from its bytes.
#[derive(Debug)]
pub struct VideoFrameReader {
    kind_seen: bool,
    header_dec: FrameDecoder,
    header: Option<VideoFrameHeader>,
    payload: Vec<u8>,
    max_payload: usize,
}

impl Default for VideoFrameReader {
    fn default() -> Self {
        Self::new(MAX_VIDEO_PAYLOAD)
    }
}

impl VideoFrameReader {
    /// A reader accepting payloads up to `max_payload`.
    pub fn new(max_payload: usize) -> Self {
        Self {
            kind_seen: false,
            header_dec: FrameDecoder::new(MAX_MEDIA_HEADER),
            header: None,
            payload: Vec::new(),
            max_payload,
        }
    }

    /// The header, as soon as it has arrived (a reader may drop a stale frame early).
    pub fn header(&self) -> Option<&VideoFrameHeader> {
        self.header.as_ref()
    }

    /// Takes bytes from the stream.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), VideoStreamError> {
        if !self.kind_seen {
            let Some((&kind, rest)) = bytes.split_first() else {
                return Ok(());
            };
            if kind != STREAM_VIDEO_FRAME {
                return Err(VideoStreamError::WrongKind(kind));
            }
            self.kind_seen = true;
            bytes = rest;
        }
        // Feed the header decoder only the bytes the header needs (first its length prefix,
        // then its body), so that the payload is not buffered twice.
        while self.header.is_none() && !bytes.is_empty() {
            let need = self.header_need(bytes);
            if need == 0 {
                break;
            }
            self.header_dec.push(&bytes[..need]);
            bytes = &bytes[need..];
            if let Some(f) = self.header_dec.next_frame()? {
                self.header = Some(decode_payload(&f)?);
            }
        }
        if self.header.is_some() {
            if self.payload.len() + bytes.len() > self.max_payload {
                return Err(VideoStreamError::TooLarge);
            }
            self.payload.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn header_need(&self, bytes: &[u8]) -> usize {
        let have = self.header_dec.buffered();
        if have < HEADER_LEN {
            return bytes.len().min(HEADER_LEN - have);
        }
        // The length prefix is buffered; `push` is called again for the rest.
        bytes.len().min(self.header_dec.pending_len().unwrap_or(0))
    }

    /// The stream ended: the whole frame.
    pub fn finish(self) -> Result<VideoFrame, VideoStreamError> {
        match self.header {
            Some(header) => Ok(VideoFrame {
                header,
                payload: self.payload,
            }),
            None => Err(VideoStreamError::Truncated),
        }
    }
}

/// A mouse button on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireButton {
    /// Primary.
    Left,
    /// Middle.
    Middle,
    /// Secondary.
    Right,
}

/// Touch phase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireTouch {
    /// Down.
    Start,
    /// Moved.
    Move,
    /// Up.
    End,
}

/// One input event, in the coordinates of its monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireInput {
    /// A key by X keysym.
    Key {
        /// Keysym.
        keysym: u32,
        /// Press or release.
        down: bool,
    },
    /// Absolute pointer position.
    PointerMove {
        /// X.
        x: i32,
        /// Y.
        y: i32,
    },
    /// A button.
    Button {
        /// Which.
        button: WireButton,
        /// Press or release.
        down: bool,
    },
    /// Scroll steps.
    Scroll {
        /// Horizontal.
        dx: i32,
        /// Vertical.
        dy: i32,
    },
    /// A touch (or pen) contact.
    Touch {
        /// Contact id.
        id: u32,
        /// Phase.
        phase: WireTouch,
        /// X.
        x: i32,
        /// Y.
        y: i32,
    },
}

/// One message on the input stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMessage {
    /// The session epoch the tablet believes in; the appliance drops older ones (handoff).
    pub epoch: u64,
    /// Target monitor.
    pub monitor: u32,
    /// The event.
    pub event: WireInput,
}

/// Why an input event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputRejected {
    /// Coordinates outside the monitor.
    #[error("({x}, {y}) is outside the {width}x{height} monitor")]
    OutOfRange {
        /// X.
        x: i32,
        /// Y.
        y: i32,
        /// Monitor width.
        width: u32,
        /// Monitor height.
        height: u32,
    },
    /// A keysym outside the ranges X defines.
    #[error("keysym {0:#x} is not a known keysym")]
    UnknownKeysym(u32),
    /// Too many scroll steps at once.
    #[error("scroll of {0} steps at once")]
    ScrollTooLarge(i32),
}

/// Whether X defines `keysym`: Latin-1, the legacy 0x100-0x13ff and 0x20a0 sets, function
/// keys (0xfd00-0xffff), and Unicode (0x0100_0100-0x0110_ffff).
pub fn known_keysym(keysym: u32) -> bool {
    matches!(keysym,
        0x20..=0x7e | 0xa0..=0xff | 0x100..=0x13ff | 0x20a0..=0x20ff | 0xfd00..=0xffff
        | 0x0100_0100..=0x0110_ffff)
}

impl InputMessage {
    /// Checks the event against the monitor it targets.
    pub fn validate(&self, width: u32, height: u32) -> Result<(), InputRejected> {
        let inside = |x: i32, y: i32| {
            if x < 0 || y < 0 || x as u32 >= width || y as u32 >= height {
                Err(InputRejected::OutOfRange {
                    x,
                    y,
                    width,
                    height,
                })
            } else {
                Ok(())
            }
        };
        match self.event {
            WireInput::Key { keysym, .. } if !known_keysym(keysym) => {
                Err(InputRejected::UnknownKeysym(keysym))
            }
            WireInput::PointerMove { x, y } | WireInput::Touch { x, y, .. } => inside(x, y),
            WireInput::Scroll { dx, dy } if dx.abs() > 100 || dy.abs() > 100 => {
                Err(InputRejected::ScrollTooLarge(dx.abs().max(dy.abs())))
            }
            _ => Ok(()),
        }
    }
}

/// A token bucket bounding input events per tablet: `rate` per second, bursts of `burst`.
/// Sans-IO: time is passed in.
#[derive(Debug)]
pub struct InputLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    dropped: u64,
}

impl InputLimiter {
    /// A limiter of `rate` events per second with bursts up to `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
            dropped: 0,
        }
    }

    /// Whether one more event may pass at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Events refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header(seq: u64, key: bool) -> VideoFrameHeader {
        VideoFrameHeader {
            monitor: 1,
            sequence: seq,
            capture_time_us: 123_456,
            keyframe: key,
            codec: key.then(|| CodecParams {
                codec: "h264".into(),
                encoder: "libx264".into(),
                width: 1920,
                height: 1080,
            }),
        }
    }

    #[test]
    fn a_frame_stream_reassembles_from_any_split() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let bytes = encode_video_frame(&header(7, true), &payload);
        for chunk in [1, 3, 17, 1000, bytes.len()] {
            let mut r = VideoFrameReader::default();
            for c in bytes.chunks(chunk) {
                r.push(c).unwrap();
            }
            let f = r.finish().unwrap();
            assert_eq!(f.header, header(7, true));
            assert_eq!(f.payload, payload);
        }
    }

    #[test]
    fn bad_frame_streams_are_refused() {
        let mut r = VideoFrameReader::default();
        assert!(matches!(
            r.push(&[9, 0, 0]),
            Err(VideoStreamError::WrongKind(9))
        ));
        let mut r = VideoFrameReader::new(10);
        let bytes = encode_video_frame(&header(1, false), &[0u8; 11]);
        assert!(matches!(r.push(&bytes), Err(VideoStreamError::TooLarge)));
        let mut r = VideoFrameReader::default();
        r.push(&[STREAM_VIDEO_FRAME, 0, 0]).unwrap();
        assert!(matches!(r.finish(), Err(VideoStreamError::Truncated)));
        let mut r = VideoFrameReader::default();
        let mut big = vec![STREAM_VIDEO_FRAME];
        big.extend_from_slice(&((MAX_MEDIA_HEADER + 1) as u32).to_be_bytes());
        assert!(matches!(r.push(&big), Err(VideoStreamError::Frame(_))));
    }

    fn msg(event: WireInput) -> InputMessage {
        InputMessage {
            epoch: 1,
            monitor: 0,
            event,
        }
    }

    #[test]
    fn input_is_checked_against_its_monitor() {
        assert!(msg(WireInput::PointerMove { x: 1919, y: 1079 })
            .validate(1920, 1080)
            .is_ok());
        assert!(msg(WireInput::PointerMove { x: 1920, y: 0 })
            .validate(1920, 1080)
            .is_err());
        assert!(msg(WireInput::PointerMove { x: -1, y: 0 })
            .validate(1920, 1080)
            .is_err());
        assert!(msg(WireInput::Key {
            keysym: 'a' as u32,
            down: true
        })
        .validate(1, 1)
        .is_ok());
        assert!(msg(WireInput::Key {
            keysym: 0xff0d,
            down: true
        })
        .validate(1, 1)
        .is_ok());
        assert_eq!(
            msg(WireInput::Key {
                keysym: 0x7fff_0000,
                down: true
            })
            .validate(1, 1),
            Err(InputRejected::UnknownKeysym(0x7fff_0000))
        );
        assert!(msg(WireInput::Scroll { dx: 0, dy: 1000 })
            .validate(1, 1)
            .is_err());
    }

    #[test]
    fn a_flood_is_bounded_to_the_rate() {
        let t0 = Instant::now();
        let mut l = InputLimiter::new(1000, 200);
        // 100k events within one second: the burst plus one second's rate pass.
        let passed = (0..100_000u32)
            .filter(|i| l.allow(t0 + Duration::from_micros(u64::from(*i) * 10)))
            .count();
        assert!((1150..=1250).contains(&passed), "{passed}");
        assert_eq!(l.dropped(), 100_000 - passed as u64);
    }
}
