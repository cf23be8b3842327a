//! Writing a video file from still frames: H.264 (libx264) in the container the file name
//! asks for (`.mp4`, `.mkv`, `.mov` …), through FFmpeg's muxers. The render farm's assembly
//! task uses it to turn rendered frames into a video.

use std::path::Path;

use ff::codec;
use ff::format::Pixel;
use ff::util::frame::video::Video as VideoFrame;
use ffmpeg_next as ff;

use crate::codec::{fill_frame, receive_packets, CodecError};
use crate::convert::{bgra_to_i420, default_threads, I420};

/// An open video file being written.
pub struct VideoWriter {
    out: ff::format::context::Output,
    enc: codec::encoder::video::Encoder,
    frame: VideoFrame,
    fps: i32,
    /// The stream's time base, which the muxer chose at `write_header`.
    time_base: ff::Rational,
    next_pts: i64,
    i420: I420,
}

impl std::fmt::Debug for VideoWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoWriter")
            .field("size", &(self.i420.width, self.i420.height))
            .field("frames", &self.next_pts)
            .finish()
    }
}

impl VideoWriter {
    /// Creates `path` for `width`x`height` frames (both even) at `fps`.
    pub fn create(path: &Path, width: u32, height: u32, fps: u32) -> Result<Self, CodecError> {
        crate::codec::init()?;
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) || width == 0 || height == 0 {
            return Err(CodecError::NoEncoder(format!(
                "frames of {width}x{height}: H.264 in 4:2:0 needs even sizes"
            )));
        }
        let fps = i32::try_from(fps.clamp(1, 1000)).unwrap_or(24);
        let mut out = ff::format::output(path)?;
        let global = out
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let x264 = ff::encoder::find_by_name("libx264")
            .ok_or_else(|| CodecError::NoEncoder("libx264 is not in this FFmpeg build".into()))?;
        let mut ctx = codec::context::Context::new_with_codec(x264)
            .encoder()
            .video()?;
        ctx.set_width(width);
        ctx.set_height(height);
        ctx.set_format(Pixel::YUV420P);
        ctx.set_time_base((1, fps));
        ctx.set_frame_rate(Some((fps, 1)));
        // No B-frames: no reordering delay and no edit list for players to honour.
        ctx.set_max_b_frames(0);
        if global {
            ctx.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ff::Dictionary::new();
        opts.set("preset", "veryfast");
        opts.set("crf", "18");
        let enc = ctx.open_with(opts)?;
        {
            let mut stream = out.add_stream(x264)?;
            stream.set_parameters(&enc);
            stream.set_time_base((1, fps));
        }
        out.write_header()?;
        let time_base = out
            .stream(0)
            .map_or(ff::Rational::new(1, fps), |s| s.time_base());
        Ok(Self {
            out,
            enc,
            frame: VideoFrame::new(Pixel::YUV420P, width, height),
            fps,
            time_base,
            next_pts: 0,
            i420: I420::new(width, height),
        })
    }

    /// Appends one frame, BGRA rows of `width * 4` bytes.
    pub fn push_bgra(&mut self, bgra: &[u8]) -> Result<(), CodecError> {
        let (w, h) = (self.i420.width as usize, self.i420.height as usize);
        if bgra.len() != w * h * 4 {
            return Err(CodecError::Size {
                got: (bgra.len() as u32 / 4, 1),
                want: (self.i420.width, self.i420.height),
            });
        }
        bgra_to_i420(bgra, w * 4, &mut self.i420, default_threads());
        fill_frame(&mut self.frame, &self.i420);
        self.frame.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.enc.send_frame(&self.frame)?;
        self.drain()
    }

    fn drain(&mut self) -> Result<(), CodecError> {
        let (fps, tb, out) = (self.fps, self.time_base, &mut self.out);
        receive_packets(&mut self.enc, |p| {
            p.set_stream(0);
            // Each frame lasts one tick: without a duration MP4's edit list would cut the
            // last frame.
            p.set_duration(1);
            p.rescale_ts((1, fps), tb);
            p.write_interleaved(out)?;
            Ok(())
        })
    }

    /// Flushes the encoder and closes the file; returns the number of frames written.
    pub fn finish(mut self) -> Result<u64, CodecError> {
        self.enc.send_eof()?;
        self.drain()?;
        self.out.write_trailer()?;
        Ok(self.next_pts as u64)
    }
}

/// Counts the video frames of a file by decoding it.
pub fn count_frames(path: &Path) -> Result<u64, CodecError> {
    crate::codec::init()?;
    let mut input = ff::format::input(path)?;
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| CodecError::NoEncoder("no video stream".into()))?;
    let index = stream.index();
    let mut dec = codec::context::Context::from_parameters(stream.parameters())?
        .decoder()
        .video()?;
    let mut n = 0;
    let mut frame = VideoFrame::empty();
    for (s, packet) in input.packets() {
        if s.index() == index {
            dec.send_packet(&packet)?;
            while dec.receive_frame(&mut frame).is_ok() {
                n += 1;
            }
        }
    }
    dec.send_eof()?;
    while dec.receive_frame(&mut frame).is_ok() {
        n += 1;
    }
    Ok(n)
}
