//! Control-stream codec throughput: the framed decoder (split into 1,200-byte chunks as QUIC
//! delivers them, frames reassembled, payloads decoded) against a baseline of decoding the same
//! payloads with postcard alone, in the same run. Prints the ratio; asserts nothing about time.

use std::hint::black_box;
use std::time::Instant;

use periphery_protocol::{
    decode_payload, encode_frame, ClientMessage, FrameDecoder, Request, Role, DEFAULT_MAX_FRAME,
};

fn messages(n: usize) -> Vec<ClientMessage> {
    (0..n)
        .map(|i| ClientMessage::Request {
            id: i as u32,
            body: Request::UserAdd {
                name: format!("user{i:06}"),
                password: Some("correct horse battery staple".into()),
                role: if i % 7 == 0 { Role::Admin } else { Role::User },
            },
        })
        .collect()
}

fn main() {
    let msgs = messages(200_000);
    let payloads: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| postcard::to_stdvec(m).expect("encode"))
        .collect();
    let mut wire = Vec::new();
    for m in &msgs {
        wire.extend_from_slice(&encode_frame(m, DEFAULT_MAX_FRAME).expect("frame"));
    }

    let best_of = |f: &dyn Fn() -> usize| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed()
            })
            .min()
            .expect("runs")
    };
    let baseline = best_of(&|| {
        payloads
            .iter()
            .filter(|p| decode_payload::<ClientMessage>(p).is_ok())
            .count()
    });
    let framed = best_of(&|| {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut n = 0;
        for chunk in wire.chunks(1200) {
            dec.push(chunk);
            while let Ok(Some(f)) = dec.next_frame() {
                n += usize::from(decode_payload::<ClientMessage>(&f).is_ok());
            }
        }
        assert_eq!(n, msgs.len());
        n
    });
    let mb = wire.len() as f64 / 1e6;
    println!(
        "codec: {} messages, {:.1} MB; postcard alone {:.0} MB/s, framed decode {:.0} MB/s; framed/baseline time ratio {:.2}",
        msgs.len(),
        mb,
        mb / baseline.as_secs_f64(),
        mb / framed.as_secs_f64(),
        framed.as_secs_f64() / baseline.as_secs_f64()
    );
}
