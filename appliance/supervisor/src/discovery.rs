//! DNS-SD announcement of the appliance: `_periphery._udp`, with TXT records `proto`
//! (protocol versions, `min-max`), `fp` (certificate fingerprint) and `ver` (software).

use std::net::SocketAddr;

use mdns_sd::{ServiceDaemon, ServiceInfo};

/// Why the appliance could not be announced.
#[derive(Debug, thiserror::Error)]
#[error("mDNS announcement failed")]
pub struct AnnounceError(#[from] mdns_sd::Error);

/// Announces the appliance; keep the returned daemon alive for as long as it should be.
pub fn announce(
    name: &str,
    listen: SocketAddr,
    fingerprint: &str,
) -> Result<ServiceDaemon, AnnounceError> {
    let mdns = ServiceDaemon::new()?;
    let props = [
        (
            "proto",
            format!(
                "{}-{}",
                periphery_protocol::MIN_PROTOCOL_VERSION,
                periphery_protocol::PROTOCOL_VERSION
            ),
        ),
        ("fp", fingerprint.to_owned()),
        ("ver", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    let host = format!("{name}.local.");
    let info = if listen.ip().is_unspecified() {
        ServiceInfo::new(
            periphery_protocol::SERVICE_TYPE,
            name,
            &host,
            "",
            listen.port(),
            &props[..],
        )?
        .enable_addr_auto()
    } else {
        ServiceInfo::new(
            periphery_protocol::SERVICE_TYPE,
            name,
            &host,
            listen.ip(),
            listen.port(),
            &props[..],
        )?
    };
    mdns.register(info)?;
    Ok(mdns)
}
