//! Fuzzes what the appliance does with bytes from the network: a control stream arriving in
//! arbitrary chunks, split into frames and decoded as client (and server) messages.
//!
//! Properties: no panic; the decoder never buffers more than one frame's worth; a frame it
//! yields is never over the maximum; every message that decodes re-encodes to a frame that
//! decodes to the same message.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use periphery_protocol::{
    decode_payload, encode_frame, ClientMessage, FrameDecoder, ServerMessage,
};

const MAX: usize = 4096;

#[derive(Debug, Arbitrary)]
enum Op {
    Push(Vec<u8>),
    Next,
    Finish,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut dec = FrameDecoder::new(MAX);
    for op in ops {
        match op {
            Op::Push(bytes) => {
                dec.push(&bytes);
            }
            Op::Next => match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX);
                    if let Ok(m) = decode_payload::<ClientMessage>(&frame) {
                        let again = encode_frame(&m, usize::MAX).expect("re-encode");
                        let mut d2 = FrameDecoder::new(usize::MAX);
                        d2.push(&again);
                        let f2 = d2.next_frame().expect("frame").expect("whole");
                        assert_eq!(decode_payload::<ClientMessage>(&f2).expect("decode"), m);
                    }
                    let _ = decode_payload::<ServerMessage>(&frame);
                }
                Ok(None) | Err(_) => {}
            },
            Op::Finish => {
                let _ = dec.finish();
            }
        }
    }
});
