//! Still frames into a video file and back, through the system FFmpeg.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use periphery_media::video::{count_frames, VideoWriter};

fn frame(w: usize, h: usize, t: usize) -> Vec<u8> {
    let mut v = vec![0u8; w * h * 4];
    for (i, px) in v.chunks_exact_mut(4).enumerate() {
        let (x, y) = (i % w, i / w);
        px.copy_from_slice(&[(x * 4) as u8, (y * 4) as u8, (t * 25) as u8, 255]);
    }
    v
}

#[test]
fn every_frame_written_is_decoded_back_whatever_the_container() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["v.mkv", "v.mov", "v.mp4"] {
        let path = dir.path().join(name);
        let mut w = VideoWriter::create(&path, 64, 64, 10).unwrap();
        for t in 0..10 {
            w.push_bgra(&frame(64, 64, t)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 10);
        assert_eq!(count_frames(&path).unwrap(), 10, "{name}");
    }
}

#[test]
fn odd_sizes_and_wrong_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(VideoWriter::create(&dir.path().join("v.mp4"), 63, 64, 10).is_err());
    let mut w = VideoWriter::create(&dir.path().join("v.mp4"), 64, 64, 10).unwrap();
    assert!(w.push_bgra(&[0u8; 16]).is_err());
}
