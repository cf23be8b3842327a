//! Screenshots: a frame as PNG.

use crate::frame::Frame;

/// Why a PNG could not be made.
#[derive(Debug, thiserror::Error)]
#[error("PNG encoding failed")]
pub struct PngError(#[from] ::png::EncodingError);

/// Encodes a frame (BGRX) as an RGB PNG.
pub fn encode(frame: &Frame<'_>) -> Result<Vec<u8>, PngError> {
    let mut rgb = Vec::with_capacity(frame.width as usize * frame.height as usize * 3);
    for row in frame.data.chunks(frame.stride).take(frame.height as usize) {
        for px in row[..frame.width as usize * 4].chunks_exact(4) {
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut out, frame.width, frame.height);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        enc.set_compression(::png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(&rgb)?;
    }
    Ok(out)
}

/// Decodes an RGB(A) PNG into `(width, height, rgb bytes)`; for tests and tools.
pub fn decode_rgb(png_bytes: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let dec = ::png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = dec.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).ok()?;
    let channels = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Some((info.width, info.height, rgb))
}
