//! Fuzzes the media decoders: a video frame stream arriving in arbitrary chunks (the tablet
//! reads these), and an input stream of messages validated against a monitor (the appliance
//! reads these).
//!
//! Properties: no panic; a video payload never exceeds its bound; an input message that
//! validates lies inside the monitor; the limiter never lets more through than its burst plus
//! its rate allow.

#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use periphery_protocol::media::{InputLimiter, InputMessage, VideoFrameReader, WireInput};
use periphery_protocol::MessageDecoder;

#[derive(Debug, Arbitrary)]
struct Input {
    video_chunks: Vec<Vec<u8>>,
    input_chunks: Vec<Vec<u8>>,
    width: u16,
    height: u16,
}

fuzz_target!(|inp: Input| {
    let mut r = VideoFrameReader::new(64 * 1024);
    let mut ok = true;
    for c in &inp.video_chunks {
        if r.push(c).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        if let Ok(f) = r.finish() {
            assert!(f.payload.len() <= 64 * 1024);
        }
    }

    let (w, h) = (u32::from(inp.width).max(1), u32::from(inp.height).max(1));
    let mut dec = MessageDecoder::<InputMessage>::new(4096);
    let t0 = Instant::now();
    let mut limiter = InputLimiter::new(1000, 100);
    let mut passed = 0u32;
    for c in &inp.input_chunks {
        dec.push(c);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => {
                    if m.validate(w, h).is_ok() {
                        if let WireInput::PointerMove { x, y } = m.event {
                            assert!(x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h);
                        }
                    }
                    // All at the same instant: at most the burst passes.
                    if limiter.allow(t0 + Duration::ZERO) {
                        passed += 1;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert!(passed <= 100);
});
