//! Pixel conversion: BGRA (what capture gives) to I420 (what H.264 encoders take) and back.
//!
//! BT.601 limited range in integer arithmetic. Single-threaded swscale at 1080p costs as much as
//! the encode itself, so [`bgra_to_i420`] splits the image into bands of rows converted on all
//! cores at once. Odd widths and heights are cropped to even (4:2:0 needs pairs).

/// A planar 4:2:0 image with tight strides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420 {
    /// Width (even).
    pub width: u32,
    /// Height (even).
    pub height: u32,
    /// Luma, `width * height`.
    pub y: Vec<u8>,
    /// Blue-difference chroma, `width/2 * height/2`.
    pub u: Vec<u8>,
    /// Red-difference chroma.
    pub v: Vec<u8>,
}

impl I420 {
    /// A black image.
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = ((width & !1) as usize, (height & !1) as usize);
        Self {
            width: w as u32,
            height: h as u32,
            y: vec![16; w * h],
            u: vec![128; w * h / 4],
            v: vec![128; w * h / 4],
        }
    }
}

#[inline]
fn luma(b: i32, g: i32, r: i32) -> u8 {
    (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8
}

/// Converts one band of rows (`y0` even; `rows` even) into the band's slices of the planes.
fn band(
    bgra: &[u8],
    stride: usize,
    width: usize,
    y0: usize,
    ys: &mut [u8],
    us: &mut [u8],
    vs: &mut [u8],
) {
    let rows = ys.len() / width;
    for pair in 0..rows / 2 {
        let r0 = y0 + pair * 2;
        let top = &bgra[r0 * stride..];
        let bottom = &bgra[(r0 + 1) * stride..];
        let (yt, yb) = ys[pair * 2 * width..(pair * 2 + 2) * width].split_at_mut(width);
        let uo = &mut us[pair * width / 2..(pair + 1) * width / 2];
        let vo = &mut vs[pair * width / 2..(pair + 1) * width / 2];
        for cx in 0..width / 2 {
            let mut sum = [0i32; 3];
            for (row, out) in [(top, &mut *yt), (bottom, &mut *yb)] {
                for dx in 0..2 {
                    let x = cx * 2 + dx;
                    let p = &row[x * 4..x * 4 + 3];
                    let (b, g, r) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
                    out[x] = luma(b, g, r);
                    sum[0] += b;
                    sum[1] += g;
                    sum[2] += r;
                }
            }
            let (b, g, r) = ((sum[0] + 2) >> 2, (sum[1] + 2) >> 2, (sum[2] + 2) >> 2);
            uo[cx] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
            vo[cx] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        }
    }
}

/// Converts BGRA (`stride` bytes per row) into `out`, whose size decides the (even) area
/// converted, using up to `threads` threads.
pub fn bgra_to_i420(bgra: &[u8], stride: usize, out: &mut I420, threads: usize) {
    let (w, h) = (out.width as usize, out.height as usize);
    assert!(
        bgra.len() >= (h - 1) * stride + w * 4,
        "the source is smaller than the image"
    );
    let threads = threads.clamp(1, (h / 2).max(1));
    // Bands of an even number of rows.
    let rows_per = (h / 2).div_ceil(threads) * 2;
    std::thread::scope(|s| {
        let mut ys = out.y.chunks_mut(rows_per * w);
        let mut us = out.u.chunks_mut(rows_per * w / 4);
        let mut vs = out.v.chunks_mut(rows_per * w / 4);
        let mut y0 = 0;
        while let (Some(y), Some(u), Some(v)) = (ys.next(), us.next(), vs.next()) {
            let start = y0;
            s.spawn(move || band(bgra, stride, w, start, y, u, v));
            y0 += rows_per;
        }
    });
}

/// The number of threads conversion uses by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn clip(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Converts I420 back to BGRA (A = 255), tightly packed.
pub fn i420_to_bgra(img: &I420) -> Vec<u8> {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut out = vec![0u8; w * h * 4];
    for y in 0..h {
        for x in 0..w {
            let c = i32::from(img.y[y * w + x]) - 16;
            let d = i32::from(img.u[(y / 2) * (w / 2) + x / 2]) - 128;
            let e = i32::from(img.v[(y / 2) * (w / 2) + x / 2]) - 128;
            let o = (y * w + x) * 4;
            out[o] = clip((298 * c + 516 * d + 128) >> 8);
            out[o + 1] = clip((298 * c - 100 * d - 208 * e + 128) >> 8);
            out[o + 2] = clip((298 * c + 409 * e + 128) >> 8);
            out[o + 3] = 255;
        }
    }
    out
}

/// Peak signal-to-noise ratio of two images of the same size over their B, G, R channels, dB.
pub fn psnr_bgra(
    a: &[u8],
    a_stride: usize,
    b: &[u8],
    b_stride: usize,
    width: usize,
    height: usize,
) -> f64 {
    let mut sq = 0u64;
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                let d =
                    i64::from(a[y * a_stride + x * 4 + c]) - i64::from(b[y * b_stride + x * 4 + c]);
                sq += (d * d) as u64;
            }
        }
    }
    if sq == 0 {
        return f64::INFINITY;
    }
    let mse = sq as f64 / (width * height * 3) as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: usize, h: usize) -> Vec<u8> {
        let mut v = vec![0u8; w * h * 4];
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 4;
                v[o] = (x * 255 / w) as u8;
                v[o + 1] = (y * 255 / h) as u8;
                v[o + 2] = ((x + y) * 255 / (w + h)) as u8;
            }
        }
        v
    }

    #[test]
    fn known_colours_convert_to_their_bt601_values() {
        let mut px = Vec::new();
        for (b, g, r) in [(0u8, 0u8, 0u8), (255, 255, 255), (0, 0, 255), (255, 0, 0)] {
            px.extend_from_slice(&[b, g, r, 0, b, g, r, 0]);
        }
        // 2x4: rows black, white, red, blue.
        let mut img = I420::new(2, 4);
        bgra_to_i420(&px, 8, &mut img, 1);
        assert_eq!(img.y, vec![16, 16, 235, 235, 82, 82, 41, 41]);
        // Rows 2-3 average red and blue: b = r = 128, g = 0.
        assert_eq!((img.u[1], img.v[1]), (165, 175));
    }

    #[test]
    fn threaded_conversion_equals_single_threaded_and_round_trips() {
        let (w, h) = (642, 362);
        let src = pattern(w, h);
        let mut one = I420::new(w as u32, h as u32);
        let mut many = I420::new(w as u32, h as u32);
        bgra_to_i420(&src, w * 4, &mut one, 1);
        bgra_to_i420(&src, w * 4, &mut many, 7);
        assert_eq!(one, many);
        let back = i420_to_bgra(&one);
        let p = psnr_bgra(&src, w * 4, &back, w * 4, w, h);
        assert!(p > 35.0, "round trip PSNR {p:.1} dB");
    }

    #[test]
    fn odd_sizes_are_cropped_to_even() {
        let img = I420::new(1367, 769);
        assert_eq!((img.width, img.height), (1366, 768));
    }
}
