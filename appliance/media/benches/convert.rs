//! Conversion and encode cost at 1080p (`make bench`): our threaded BGRA->I420 against FFmpeg's
//! swscale on one thread (the baseline MEASURED.md warns about), and the libx264 encode of the
//! same frames, in the same run. Figures, not pass/fail.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ffmpeg_next as ff;
use periphery_media::convert::default_threads;
use periphery_media::{bgra_to_i420, H264Encoder, I420};

const W: usize = 1920;
const H: usize = 1080;
const N: u32 = 60;

fn frame(t: usize) -> Vec<u8> {
    (0..W * H * 4)
        .map(|i| ((i / 4 % W + i / 4 / W + t * 7) % 251) as u8 ^ (i % 4) as u8)
        .collect()
}

fn per_frame(f: impl FnMut(usize)) -> Duration {
    let mut f = f;
    let t = Instant::now();
    for i in 0..N as usize {
        f(i);
    }
    t.elapsed() / N
}

fn main() {
    ff::init().unwrap();
    let frames: Vec<Vec<u8>> = (0..4).map(frame).collect();
    let mut img = I420::new(W as u32, H as u32);

    let ours = per_frame(|i| bgra_to_i420(&frames[i % 4], W * 4, &mut img, default_threads()));
    let ours_one = per_frame(|i| bgra_to_i420(&frames[i % 4], W * 4, &mut img, 1));

    let mut sws = ff::software::scaling::Context::get(
        ff::format::Pixel::BGRA,
        W as u32,
        H as u32,
        ff::format::Pixel::YUV420P,
        W as u32,
        H as u32,
        ff::software::scaling::Flags::POINT,
    )
    .unwrap();
    let mut src = ff::util::frame::video::Video::new(ff::format::Pixel::BGRA, W as u32, H as u32);
    let mut dst = ff::util::frame::video::Video::empty();
    let swscale = per_frame(|i| {
        let stride = src.stride(0);
        let data = src.data_mut(0);
        for row in 0..H {
            data[row * stride..row * stride + W * 4]
                .copy_from_slice(&frames[i % 4][row * W * 4..(row + 1) * W * 4]);
        }
        sws.run(&src, &mut dst).unwrap();
    });

    let mut enc = H264Encoder::probe(W as u32, H as u32, 60).unwrap();
    let encode = per_frame(|i| {
        bgra_to_i420(&frames[i % 4], W * 4, &mut img, default_threads());
        enc.encode(&img, i as i64 * 16_666, false).unwrap();
    });
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "BGRA->I420 1080p: ours on {} threads {:.2} ms, ours on 1 thread {:.2} ms, swscale 1 thread {:.2} ms (incl. copy-in); ours/swscale = {:.2}",
        default_threads(),
        ms(ours),
        ms(ours_one),
        ms(swscale),
        ms(ours) / ms(swscale)
    );
    println!(
        "convert+encode 1080p with {}: {:.2} ms/frame ({:.0} fps); conversion share {:.0}%",
        enc.report().name,
        ms(encode),
        1000.0 / ms(encode),
        ms(ours) / ms(encode) * 100.0
    );
}
