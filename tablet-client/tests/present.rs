//! The wgpu YUV->RGB shader against swscale, on whatever adapter there is (Mesa's software
//! adapter in CI).

use periphery_media::{bgra_to_i420, i420_to_bgra, swscale_i420_to_bgra, I420};
use periphery_tablet::present::{describe, Offscreen};

/// A picture with what desktops have: flat colours, saturated primaries, gradients, text-like
/// high-frequency detail.
fn picture(w: usize, h: usize) -> Vec<u8> {
    let mut bgra = vec![0u8; w * h * 4];
    let mut seed = 0x2545_f491u32;
    for y in 0..h {
        for x in 0..w {
            let p = &mut bgra[(y * w + x) * 4..][..4];
            let (b, g, r) = match (x * 4 / w, y * 3 / h) {
                (0, 0) => (0, 0, 255),
                (1, 0) => (0, 255, 0),
                (2, 0) => (255, 0, 0),
                (3, 0) => (255, 255, 255),
                (_, 1) => ((x * 255 / w) as u8, (y * 255 / h) as u8, 128),
                _ => {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let s = seed.to_le_bytes();
                    (s[0], s[1], s[2])
                }
            };
            p.copy_from_slice(&[b, g, r, 255]);
        }
    }
    bgra
}

#[test]
fn shader_matches_swscale_on_the_available_adapter() {
    let mut gpu = Offscreen::new().expect("an adapter (Mesa's software one where there is no GPU)");
    eprintln!("adapter: {}", describe(&gpu.info));
    // 1920x1080 and a size whose rows are not a multiple of wgpu's 256-byte copy alignment.
    for (w, h) in [(1920usize, 1080usize), (642, 362)] {
        let src = picture(w, h);
        let mut img = I420::new(w as u32, h as u32);
        bgra_to_i420(&src, w * 4, &mut img, 2);
        let ours = gpu.to_bgra(&img).expect("GPU conversion");
        let reference = swscale_i420_to_bgra(&img).expect("swscale conversion");
        assert_eq!(ours.len(), reference.len());
        let vs_swscale = compare(&ours, &reference);
        let vs_exact = compare(&ours, &i420_to_bgra(&img));
        eprintln!("{w}x{h}: against swscale {vs_swscale:?}; against the exact integer conversion {vs_exact:?}");
        // swscale's unscaled YUV->RGB path truncates where the shader rounds: it comes out about
        // one level darker, never more than a few.
        assert!(
            vs_swscale.worst <= 4,
            "{w}x{h}: {vs_swscale:?} against swscale"
        );
        assert!(
            vs_swscale.mean < 1.25,
            "{w}x{h}: {vs_swscale:?} against swscale"
        );
        // Against the exact conversion only float rounding remains.
        assert!(
            vs_exact.worst <= 1,
            "{w}x{h}: {vs_exact:?} against the exact conversion"
        );
        // The conversion is not trivially close: the picture has saturated colours in it.
        let red = &ours[(10 * w + 10) * 4..][..3];
        assert!(
            red[2] > 240 && red[0] < 15 && red[1] < 15,
            "red stays red: {red:?}"
        );
    }
}

/// Per-channel differences over B, G, R (alpha must be opaque).
#[derive(Debug)]
#[allow(dead_code)] // Read through Debug.
struct Difference {
    worst: u8,
    mean: f64,
    bias: f64,
}

fn compare(ours: &[u8], reference: &[u8]) -> Difference {
    assert_eq!(ours.len(), reference.len());
    let (mut worst, mut sum, mut signed, mut n) = (0u8, 0u64, 0i64, 0u64);
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        if i % 4 == 3 {
            assert_eq!(*a, 255, "alpha is opaque");
            continue;
        }
        worst = worst.max(a.abs_diff(*b));
        sum += u64::from(a.abs_diff(*b));
        signed += i64::from(*a) - i64::from(*b);
        n += 1;
    }
    Difference {
        worst,
        mean: sum as f64 / n as f64,
        bias: signed as f64 / n as f64,
    }
}
