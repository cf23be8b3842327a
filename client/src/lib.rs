//! Talking to a Periphery appliance, for every client that is not the appliance: the tablet
//! and the render node.
//!
//! - [`tls`]: first-contact (any certificate, recorded, to be bound by pairing or checked
//!   against a known fingerprint) and pinned (the appliance CA, with a client certificate)
//!   QUIC configurations;
//! - [`session`]: a control-stream session: connect, Hello/Welcome, requests matched to their
//!   responses, notices queued;
//! - [`blobs`]: files by content (BLAKE3) and their chunked upload;
//! - [`files`]: credentials written atomically with their mode;
//! - [`render_cli`]: the `render …` commands both CLIs offer (the admin CLI over its socket,
//!   the tablet over QUIC), over any [`render_cli::Requester`].

pub mod blobs;
pub mod files;
pub mod render_cli;
pub mod session;
pub mod tls;
