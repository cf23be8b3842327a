//! The Periphery tablet client as a library: the `periphery-tablet` binary is a thin CLI over
//! it, and end-to-end tests use it to act as tablets (well-behaved or not).
//!
//! - [`tls`] and [`session`]: from `periphery-client` (TLS configurations, the
//!   control-stream session), shared with the render node;
//! - [`pairing`]: pairing by code (SPAKE2) and by password;
//! - [`home`]: the tablet's stored credentials;
//! - [`discover`]: finding appliances by DNS-SD;
//! - [`viewer`]: attaching to a monitor: frames in, decoded in order, input out, statistics.
//! - [`present`]: the wgpu YUV->RGB renderer (window or offscreen);
//! - [`window`]: the winit window that shows a monitor and captures input.

pub mod discover;
pub mod home;
pub mod pairing;
pub mod present;
pub mod viewer;
pub mod window;

pub use periphery_client::{session, tls};
