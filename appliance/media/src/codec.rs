//! H.264 encoding and decoding through FFmpeg (ffmpeg-next), with the encoder chosen at run time.
//!
//! [`H264Encoder::probe`] tries, in order, NVENC, VAAPI, QSV and libx264, and keeps the reason
//! each one it could not use was rejected: that list is what `periphery status` and the tablet's
//! stats show. libx264 runs ultrafast/zerolatency with slice threads (frame threads would add
//! frames of delay), no B-frames, and IDR frames on demand.

use std::path::Path;

use ff::codec;
use ff::format::Pixel;
use ff::util::frame::video::Video as VideoFrame;
use ffmpeg_next as ff;

use crate::convert::I420;

/// Why an encoder or decoder failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// FFmpeg failed.
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ff::Error),
    /// No usable encoder.
    #[error("no usable H.264 encoder: {0}")]
    NoEncoder(String),
    /// Frame of the wrong size.
    #[error("frame is {got:?}, the encoder was opened for {want:?}")]
    Size {
        /// Given.
        got: (u32, u32),
        /// Expected.
        want: (u32, u32),
    },
}

/// One encoded access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Annex B bytes (SPS and PPS in-band before every keyframe).
    pub data: Vec<u8>,
    /// Whether decoding can start here.
    pub key: bool,
    /// Presentation time in the encoder's time base (microseconds).
    pub pts: i64,
}

/// The encoder in use and the ones passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderReport {
    /// The FFmpeg encoder name, e.g. `libx264`.
    pub name: String,
    /// Whether it runs on hardware.
    pub hardware: bool,
    /// Each encoder tried before it, with why it was not used.
    pub rejected: Vec<(String, String)>,
}

impl std::fmt::Display for EncoderReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        for (name, why) in &self.rejected {
            write!(f, "; {name}: {why}")?;
        }
        Ok(())
    }
}

pub(crate) fn init() -> Result<(), CodecError> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        ff::init().map_err(|e| e.to_string())?;
        ff::util::log::set_level(ff::util::log::Level::Error);
        Ok(())
    })
    .clone()
    .map_err(CodecError::NoEncoder)
}

/// The FFmpeg libraries' version, e.g. `libavcodec 59.37.100`.
pub fn ffmpeg_version() -> String {
    let v = ff::codec::version();
    format!("libavcodec {}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// An open H.264 encoder.
pub struct H264Encoder {
    enc: codec::encoder::video::Encoder,
    frame: VideoFrame,
    report: EncoderReport,
    size: (u32, u32),
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder")
            .field("report", &self.report)
            .finish()
    }
}

fn open(
    name: &str,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<codec::encoder::video::Encoder, String> {
    let codec = ff::encoder::find_by_name(name).ok_or("not in this FFmpeg build")?;
    let mut ctx = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| e.to_string())?;
    ctx.set_width(width);
    ctx.set_height(height);
    ctx.set_format(Pixel::YUV420P);
    ctx.set_time_base((1, 1_000_000));
    ctx.set_frame_rate(Some((fps as i32, 1)));
    ctx.set_max_b_frames(0);
    // Keyframes come on demand (new viewers, losses); a long GOP otherwise.
    ctx.set_gop(fps * 10);
    ctx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Slice,
        count: 0,
        ..Default::default()
    });
    let mut opts = ff::Dictionary::new();
    if name == "libx264" {
        opts.set("preset", "ultrafast");
        opts.set("tune", "zerolatency");
        opts.set("forced-idr", "1");
    }
    ctx.open_with(opts).map_err(|e| e.to_string())
}

impl H264Encoder {
    /// Opens the first encoder that works for `width`x`height` at `fps`.
    pub fn probe(width: u32, height: u32, fps: u32) -> Result<Self, CodecError> {
        init()?;
        let render_node = Path::new("/dev/dri/renderD128").exists();
        let mut rejected = Vec::new();
        for (name, hardware) in [
            ("h264_nvenc", true),
            ("h264_vaapi", true),
            ("h264_qsv", true),
            ("libx264", false),
        ] {
            if name == "h264_nvenc" && !Path::new("/dev/nvidia0").exists() {
                rejected.push((name.to_owned(), "no NVIDIA GPU (/dev/nvidia0)".to_owned()));
                continue;
            }
            if matches!(name, "h264_vaapi" | "h264_qsv") && !render_node {
                rejected.push((
                    name.to_owned(),
                    "no GPU render node (/dev/dri/renderD128)".to_owned(),
                ));
                continue;
            }
            match open(name, width, height, fps) {
                Ok(enc) => {
                    let report = EncoderReport {
                        name: name.to_owned(),
                        hardware,
                        rejected,
                    };
                    tracing::info!(encoder = %report, "H.264 encoder chosen");
                    return Ok(Self {
                        enc,
                        frame: VideoFrame::new(Pixel::YUV420P, width, height),
                        report,
                        size: (width, height),
                    });
                }
                Err(why) => rejected.push((name.to_owned(), why)),
            }
        }
        let all: Vec<String> = rejected.iter().map(|(n, w)| format!("{n}: {w}")).collect();
        Err(CodecError::NoEncoder(all.join("; ")))
    }

    /// Which encoder runs, and why the others do not.
    pub fn report(&self) -> &EncoderReport {
        &self.report
    }

    /// The picture size it was opened for.
    pub fn size(&self) -> (u32, u32) {
        self.size
    }

    /// Encodes one picture; `keyframe` forces an IDR frame. Returns the packets ready now
    /// (zero-latency settings: normally exactly one).
    pub fn encode(
        &mut self,
        img: &I420,
        pts_us: i64,
        keyframe: bool,
    ) -> Result<Vec<Packet>, CodecError> {
        if (img.width, img.height) != self.size {
            return Err(CodecError::Size {
                got: (img.width, img.height),
                want: self.size,
            });
        }
        fill_frame(&mut self.frame, img);
        self.frame.set_pts(Some(pts_us));
        self.frame.set_kind(if keyframe {
            ff::picture::Type::I
        } else {
            ff::picture::Type::None
        });
        self.enc.send_frame(&self.frame)?;
        self.drain()
    }

    fn drain(&mut self) -> Result<Vec<Packet>, CodecError> {
        let mut out = Vec::new();
        receive_packets(&mut self.enc, |p| {
            out.push(Packet {
                data: p.data().map(<[u8]>::to_vec).unwrap_or_default(),
                key: p.is_key(),
                pts: p.pts().unwrap_or(0),
            });
            Ok(())
        })?;
        Ok(out)
    }
}

/// Copies `img`'s planes into `frame` (a YUV420P frame of its size), row by row: FFmpeg's
/// rows may be padded.
pub(crate) fn fill_frame(frame: &mut VideoFrame, img: &I420) {
    let (w, h) = (img.width as usize, img.height as usize);
    for (plane, src, pw, ph) in [
        (0, &img.y, w, h),
        (1, &img.u, w / 2, h / 2),
        (2, &img.v, w / 2, h / 2),
    ] {
        let stride = frame.stride(plane);
        let dst = frame.data_mut(plane);
        for row in 0..ph {
            dst[row * stride..row * stride + pw].copy_from_slice(&src[row * pw..(row + 1) * pw]);
        }
    }
}

/// Hands every packet `enc` has ready to `f`, until it needs more input or is drained.
pub(crate) fn receive_packets(
    enc: &mut codec::encoder::video::Encoder,
    mut f: impl FnMut(&mut ff::Packet) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    loop {
        let mut p = ff::Packet::empty();
        match enc.receive_packet(&mut p) {
            Ok(()) => f(&mut p)?,
            Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => return Ok(()),
            Err(ff::Error::Eof) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// An H.264 decoder.
pub struct H264Decoder {
    dec: codec::decoder::Video,
    frame: VideoFrame,
}

impl std::fmt::Debug for H264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Decoder").finish_non_exhaustive()
    }
}

impl H264Decoder {
    /// A software decoder.
    pub fn new() -> Result<Self, CodecError> {
        init()?;
        let codec = ff::decoder::find(codec::Id::H264)
            .ok_or_else(|| CodecError::NoEncoder("no H.264 decoder in this FFmpeg build".into()))?;
        let mut ctx = codec::context::Context::new_with_codec(codec);
        ctx.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Slice,
            count: 0,
            ..Default::default()
        });
        Ok(Self {
            dec: ctx.decoder().video()?,
            frame: VideoFrame::empty(),
        })
    }

    /// Decodes one access unit; returns the picture it completes, if any.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<I420>, CodecError> {
        self.dec.send_packet(&ff::Packet::copy(data))?;
        match self.dec.receive_frame(&mut self.frame) {
            Ok(()) => {}
            Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let (w, h) = (self.frame.width(), self.frame.height());
        let mut img = I420::new(w, h);
        let (pw, ph) = (img.width as usize, img.height as usize);
        for (plane, dst, cw, ch) in [
            (0, &mut img.y, pw, ph),
            (1, &mut img.u, pw / 2, ph / 2),
            (2, &mut img.v, pw / 2, ph / 2),
        ] {
            let stride = self.frame.stride(plane);
            let src = self.frame.data(plane);
            for row in 0..ch {
                dst[row * cw..(row + 1) * cw]
                    .copy_from_slice(&src[row * stride..row * stride + cw]);
            }
        }
        Ok(Some(img))
    }
}

/// Converts I420 to tightly packed BGRA with FFmpeg's swscale (BT.601 limited range, the
/// reference the tablet's GPU conversion is checked against).
pub fn swscale_i420_to_bgra(img: &I420) -> Result<Vec<u8>, CodecError> {
    init()?;
    let (w, h) = (img.width, img.height);
    let mut sws = ff::software::scaling::Context::get(
        Pixel::YUV420P,
        w,
        h,
        Pixel::BGRA,
        w,
        h,
        ff::software::scaling::Flags::POINT,
    )?;
    let mut src = VideoFrame::new(Pixel::YUV420P, w, h);
    let (pw, ph) = (w as usize, h as usize);
    fill_frame(&mut src, img);
    let mut out = VideoFrame::empty();
    sws.run(&src, &mut out)?;
    let stride = out.stride(0);
    let mut bgra = Vec::with_capacity(pw * ph * 4);
    for row in 0..ph {
        bgra.extend_from_slice(&out.data(0)[row * stride..row * stride + pw * 4]);
    }
    Ok(bgra)
}
