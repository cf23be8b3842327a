//! Real encode and decode through the system FFmpeg.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use periphery_media::convert::default_threads;
use periphery_media::{bgra_to_i420, i420_to_bgra, psnr_bgra, H264Decoder, H264Encoder, I420};

/// A desktop-like picture: flat areas, text-like stripes, and a block that moves with `t`.
fn picture(w: usize, h: usize, t: usize) -> Vec<u8> {
    let mut v = vec![0u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            let o = (y * w + x) * 4;
            let (mut b, mut g, mut r) = (40u8, 60u8, 90u8);
            if y > 40 && y < 200 && x > 40 && x < 400 {
                (b, g, r) = (250, 250, 250);
                if (y / 6) % 2 == 0 && (x / 3) % 5 != 0 && y < 150 {
                    (b, g, r) = (20, 20, 20);
                }
            }
            let bx = 50 + t * 8;
            if (bx..bx + 60).contains(&x) && (220..280).contains(&y) {
                (b, g, r) = (30, 160, 230);
            }
            v[o] = b;
            v[o + 1] = g;
            v[o + 2] = r;
        }
    }
    v
}

#[test]
fn the_probe_picks_an_encoder_and_says_why_it_passed_the_others() {
    let enc = H264Encoder::probe(640, 360, 30).unwrap();
    let r = enc.report();
    println!("encoder: {r}");
    if !r.hardware {
        assert_eq!(r.name, "libx264");
        // Every hardware encoder is listed with a reason.
        let names: Vec<&str> = r.rejected.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["h264_nvenc", "h264_vaapi", "h264_qsv"]);
        assert!(r.rejected.iter().all(|(_, why)| !why.is_empty()));
    }
}

#[test]
fn encoded_frames_decode_to_the_source_and_keyframes_come_on_demand() {
    let (w, h) = (640usize, 360usize);
    let mut enc = H264Encoder::probe(w as u32, h as u32, 30).unwrap();
    let mut dec = H264Decoder::new().unwrap();
    let mut img = I420::new(w as u32, h as u32);
    let mut keys = Vec::new();
    for t in 0..30 {
        let src = picture(w, h, t);
        bgra_to_i420(&src, w * 4, &mut img, default_threads());
        let packets = enc.encode(&img, t as i64 * 33_333, t == 15).unwrap();
        assert_eq!(packets.len(), 1, "zero latency: one packet per frame");
        keys.push(packets[0].key);
        let out = dec
            .decode(&packets[0].data)
            .unwrap()
            .expect("a picture per packet");
        let back = i420_to_bgra(&out);
        let p = psnr_bgra(&src, w * 4, &back, w * 4, w, h);
        assert!(p >= 35.0, "frame {t}: PSNR {p:.1} dB");
    }
    let key_frames: Vec<usize> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| **k)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(key_frames, vec![0, 15]);
}

#[test]
fn the_decoder_survives_garbage() {
    let mut dec = H264Decoder::new().unwrap();
    let mut seed = 7u32;
    for _ in 0..50 {
        let junk: Vec<u8> = (0..500)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        // An error or no picture; never a panic or a picture from nothing.
        if let Ok(Some(img)) = dec.decode(&junk) {
            assert!(img.width > 0);
        }
    }
}
