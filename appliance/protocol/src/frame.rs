//! Length-prefixed framing, sans-IO.
//!
//! Every message on a Periphery stream is one *frame*: a 4-byte big-endian payload length
//! followed by that many bytes of postcard-encoded payload. [`FrameDecoder`] takes bytes as
//! they arrive (`push`), yields whole frames (`next_frame`), and is told when the stream ends
//! (`finish`) so that a frame cut off in the middle is reported rather than silently dropped.
//! Frames larger than the decoder's maximum are refused as soon as their header is seen,
//! before any of their payload is buffered.

use serde::{de::DeserializeOwned, Serialize};

/// Size of the length prefix in bytes.
pub const HEADER_LEN: usize = 4;

/// Default maximum payload size of one frame: 1 MiB. The appliance accepts no larger frame
/// from a client.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Maximum frame a client accepts from the appliance: 64 MiB (screenshots are large).
pub const MAX_SERVER_FRAME: usize = 64 << 20;

/// Why a byte stream could not be split into frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame header announced a payload larger than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: usize,
        /// The maximum the decoder accepts.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        have: usize,
        /// Bytes the frame needed (header included), or the header size if it was cut.
        need: usize,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message is larger than the maximum frame size.
    #[error("encoded message of {len} bytes exceeds the maximum frame of {max} bytes")]
    TooLarge {
        /// Encoded payload length.
        len: usize,
        /// The maximum frame size.
        max: usize,
    },
    /// The serializer failed.
    #[error("message could not be serialized")]
    Serialize(#[source] postcard::Error),
}

/// Why a frame's payload is not a valid message.
#[derive(Debug, thiserror::Error)]
#[error("malformed message payload")]
pub struct MalformedMessage(#[source] pub postcard::Error);

/// Encodes `msg` as one frame (header and payload), refusing payloads over `max`.
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(EncodeError::Serialize)?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(EncodeError::TooLarge { len, max });
    }
    // `len <= max`, and a max above u32::MAX would make no sense for a frame.
    let header = u32::try_from(len).map_err(|_| EncodeError::TooLarge { len, max })?;
    out[..HEADER_LEN].copy_from_slice(&header.to_be_bytes());
    Ok(out)
}

/// Decodes one frame's payload as a message of type `T`. Trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, MalformedMessage> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(MalformedMessage)?;
    if !rest.is_empty() {
        return Err(MalformedMessage(postcard::Error::DeserializeBadEncoding));
    }
    Ok(msg)
}

/// Splits a byte stream into frames. Holds at most one partial frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose payload exceeds `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            failed: None,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Returns the next whole frame's payload, `Ok(None)` if more bytes are needed.
    ///
    /// Once an error is returned the decoder stays failed: a stream with a bad frame
    /// cannot be resynchronised.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max {
            let e = FrameError::TooLarge { len, max: self.max };
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            return Err(e);
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(payload))
    }

    /// Tells the decoder the stream has ended; an incomplete frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.buf.get(..HEADER_LEN) {
            Some(h) => {
                let mut len_bytes = [0u8; HEADER_LEN];
                len_bytes.copy_from_slice(h);
                HEADER_LEN + u32::from_be_bytes(len_bytes) as usize
            }
            None => HEADER_LEN,
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    /// Bytes buffered that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes complete the frame whose length prefix is buffered, if one is.
    pub fn pending_len(&self) -> Option<usize> {
        let h = self.buf.get(..HEADER_LEN)?;
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        Some((HEADER_LEN + len).saturating_sub(self.buf.len()))
    }
}

/// Why bytes from a stream did not yield a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a sequence of frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame is not a valid message.
    #[error(transparent)]
    Malformed(#[from] MalformedMessage),
}

/// A [`FrameDecoder`] that yields typed messages: push bytes, pull messages.
#[derive(Debug)]
pub struct MessageDecoder<T> {
    frames: FrameDecoder,
    _msg: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> MessageDecoder<T> {
    /// A decoder refusing frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            frames: FrameDecoder::new(max),
            _msg: std::marker::PhantomData,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.frames.push(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<T>, DecodeError> {
        match self.frames.next_frame()? {
            Some(f) => Ok(Some(decode_payload(&f)?)),
            None => Ok(None),
        }
    }

    /// Tells the decoder the stream ended; a partial frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        self.frames.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_pushes_reassemble() {
        let a = encode_frame(&("hello", 7u32), 64).unwrap();
        let b = encode_frame(&("world", 9u32), 64).unwrap();
        let mut wire = a.clone();
        wire.extend_from_slice(&b);
        let mut dec = FrameDecoder::new(64);
        let mut got = Vec::new();
        for byte in &wire {
            dec.push(std::slice::from_ref(byte));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(decode_payload::<(String, u32)>(&f).unwrap());
            }
        }
        assert_eq!(got, vec![("hello".into(), 7), ("world".into(), 9)]);
        dec.finish().unwrap();
    }

    #[test]
    fn oversized_header_is_refused_before_payload_arrives() {
        let mut dec = FrameDecoder::new(16);
        dec.push(&17u32.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        // Stays failed.
        dec.push(&[0; 4]);
        assert!(dec.next_frame().is_err());
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn truncated_frame_is_reported_at_finish() {
        let f = encode_frame(&"abcdef", 64).unwrap();
        let mut dec = FrameDecoder::new(64);
        dec.push(&f[..f.len() - 2]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated {
                have: f.len() - 2,
                need: f.len()
            })
        );
        let mut dec = FrameDecoder::new(64);
        dec.push(&[0, 0]);
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { have: 2, need: 4 })
        );
    }

    #[test]
    fn encode_refuses_payload_over_max() {
        let big = vec![1u8; 100];
        assert!(matches!(
            encode_frame(&big, 50),
            Err(EncodeError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn trailing_bytes_in_payload_are_malformed() {
        let mut p = postcard::to_stdvec(&5u32).unwrap();
        p.push(0);
        assert!(decode_payload::<u32>(&p).is_err());
    }
}
