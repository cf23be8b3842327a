//! Periphery media: what turns captured frames into a video stream and back.
//!
//! - [`convert`]: BGRA to I420 on all cores (and back), PSNR;
//! - [`codec`]: the H.264 encoder chosen by probing (NVENC, VAAPI, QSV, then libx264, with the
//!   reason each was passed over) and the decoder;
//! - [`video`]: still frames into a video file (H.264 in the container the name asks for).

pub mod codec;
pub mod convert;
pub mod video;

pub use codec::{
    swscale_i420_to_bgra, CodecError, EncoderReport, H264Decoder, H264Encoder, Packet,
};
pub use convert::{bgra_to_i420, i420_to_bgra, psnr_bgra, I420};
