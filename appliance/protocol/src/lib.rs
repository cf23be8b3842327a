//! Periphery's wire protocol: messages, framing and version negotiation, sans-IO.
//!
//! This crate has no runtime and no sockets. It is used on both ends of every Periphery
//! connection (appliance, tablet, admin CLI, render node) and by the fuzz targets:
//!
//! - [`frame`]: the length-prefixed frame codec ([`FrameDecoder`], [`encode_frame`]) with a
//!   maximum frame size and typed errors;
//! - [`messages`]: the control stream's messages — [`ClientMessage`], [`ServerMessage`] and the
//!   control API, [`Request`];
//! - [`media`]: video frame streams and input messages, their validation and rate limit;
//! - [`render`]: render jobs, nodes, and files by content hash;
//! - [`negotiate`]: the version handshake carried by [`Hello`];
//! - [`pairing`]: the pairing code format and the transcript MACs that bind a SPAKE2 exchange
//!   to the appliance certificate and the tablet's key;
//! - [`CloseCode`]: the QUIC application error codes a connection is closed with.
//!
//! Transport: QUIC with ALPN [`ALPN`]; one bidirectional control stream per connection.

pub mod files;
pub mod frame;
pub mod media;
pub mod messages;
pub mod pairing;
pub mod render;

pub use frame::{
    decode_payload, encode_frame, DecodeError, EncodeError, FrameDecoder, FrameError,
    MalformedMessage, MessageDecoder, DEFAULT_MAX_FRAME, MAX_SERVER_FRAME,
};
pub use messages::*;

/// The ALPN protocol id of Periphery over QUIC.
pub const ALPN: &[u8] = b"periphery/1";

/// The newest protocol version this build speaks. Version 2: a render node's reports travel
/// in its [`Request::NodeWork`] calls (version 1's `NodeTaskDone` is
/// [`Request::RetiredNodeTaskDone`]), and it may hold several queued tasks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this build speaks (tablets and the admin CLI of version 1
/// send nothing that changed).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The oldest version render nodes may speak: their calls changed shape in version 2, so a
/// node of version 1 is told at its hello rather than misread.
pub const MIN_NODE_PROTOCOL_VERSION: u16 = 2;

/// The DNS-SD service type the appliance announces.
pub const SERVICE_TYPE: &str = "_periphery._udp.local.";

/// The TLS server name clients use: the appliance certificate carries it, and a paired
/// client verifies it against the pinned appliance CA (the address may change with DHCP).
pub const SERVER_NAME: &str = "appliance.periphery";

/// The default UDP port of the QUIC endpoint.
pub const DEFAULT_PORT: u16 = 4470;

/// The [`Hello`] this build sends.
pub fn hello(software: impl Into<String>) -> Hello {
    Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        software: software.into(),
    }
}

/// The version ranges of the two sides do not overlap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no common protocol version: peer speaks {peer_min}..={peer_max}, we speak {our_min}..={our_max}")]
pub struct VersionMismatch {
    /// Peer's oldest version.
    pub peer_min: u16,
    /// Peer's newest version.
    pub peer_max: u16,
    /// Our oldest version.
    pub our_min: u16,
    /// Our newest version.
    pub our_max: u16,
}

/// Picks the newest version both sides speak.
pub fn negotiate(hello: &Hello) -> Result<u16, VersionMismatch> {
    let lo = hello.min_version.max(MIN_PROTOCOL_VERSION);
    let hi = hello.max_version.min(PROTOCOL_VERSION);
    if hello.min_version > hello.max_version || lo > hi {
        return Err(VersionMismatch {
            peer_min: hello.min_version,
            peer_max: hello.max_version,
            our_min: MIN_PROTOCOL_VERSION,
            our_max: PROTOCOL_VERSION,
        });
    }
    Ok(hi)
}

/// QUIC application error codes a connection is closed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal close.
    Normal = 0,
    /// A valid message arrived where the protocol does not allow it.
    ProtocolViolation = 1,
    /// A frame exceeded the maximum size.
    FrameTooLarge = 2,
    /// A frame's payload is not a valid message.
    Malformed = 3,
    /// No common protocol version.
    UnsupportedVersion = 4,
    /// The stream ended inside a frame.
    Truncated = 5,
    /// The device has been revoked.
    Revoked = 6,
    /// The appliance is shutting down.
    ShuttingDown = 7,
    /// The appliance failed internally.
    Internal = 8,
    /// The peer took too long.
    Timeout = 9,
}

impl CloseCode {
    /// The code as sent on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a wire value, if known.
    pub fn from_u32(v: u32) -> Option<Self> {
        use CloseCode::*;
        [
            Normal,
            ProtocolViolation,
            FrameTooLarge,
            Malformed,
            UnsupportedVersion,
            Truncated,
            Revoked,
            ShuttingDown,
            Internal,
            Timeout,
        ]
        .into_iter()
        .find(|c| c.as_u32() == v)
    }

    /// The reason phrase sent with the close.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::FrameTooLarge => "frame too large",
            CloseCode::Malformed => "malformed message",
            CloseCode::UnsupportedVersion => "unsupported protocol version",
            CloseCode::Truncated => "truncated frame",
            CloseCode::Revoked => "device revoked",
            CloseCode::ShuttingDown => "appliance shutting down",
            CloseCode::Internal => "internal error",
            CloseCode::Timeout => "timed out",
        }
    }
}

impl From<&FrameError> for CloseCode {
    fn from(e: &FrameError) -> Self {
        match e {
            FrameError::TooLarge { .. } => CloseCode::FrameTooLarge,
            FrameError::Truncated { .. } => CloseCode::Truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(min: u16, max: u16) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            software: "t".into(),
        }
    }

    #[test]
    fn negotiation_picks_newest_common_version() {
        assert_eq!(negotiate(&h(1, 1)), Ok(1));
        assert_eq!(negotiate(&h(1, 2)), Ok(2));
        assert_eq!(negotiate(&h(0, 9)), Ok(PROTOCOL_VERSION));
    }

    #[test]
    fn negotiation_refuses_disjoint_or_inverted_ranges() {
        assert!(negotiate(&h(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5)).is_err());
        assert!(negotiate(&h(0, 0)).is_err());
        assert!(negotiate(&h(1, 0)).is_err());
    }

    #[test]
    fn close_codes_round_trip() {
        for v in 0..20 {
            if let Some(c) = CloseCode::from_u32(v) {
                assert_eq!(c.as_u32(), v);
            }
        }
        assert_eq!(CloseCode::from_u32(9), Some(CloseCode::Timeout));
        assert_eq!(CloseCode::from_u32(10), None);
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let msgs = vec![
            ClientMessage::Hello(hello("x")),
            ClientMessage::Request {
                id: 3,
                body: Request::UserAdd {
                    name: "alice".into(),
                    password: Some("pw".into()),
                    role: Role::User,
                },
            },
        ];
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        for m in &msgs {
            dec.push(&encode_frame(m, DEFAULT_MAX_FRAME).unwrap());
        }
        for m in &msgs {
            let f = dec.next_frame().unwrap().unwrap();
            assert_eq!(&decode_payload::<ClientMessage>(&f).unwrap(), m);
        }
    }
}
