//! Finding appliances on the LAN by DNS-SD (`_periphery._udp.local.`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};

/// An appliance that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Instance name.
    pub name: String,
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// QUIC port.
    pub port: u16,
    /// Protocol versions (`min-max`).
    pub proto: String,
    /// Certificate fingerprint.
    pub fingerprint: String,
    /// Software version.
    pub version: String,
}

/// Why discovery could not run.
#[derive(Debug, thiserror::Error)]
#[error("mDNS discovery failed")]
pub struct DiscoverError(#[from] mdns_sd::Error);

/// Browses for `timeout`, or until the first appliance if `first`.
pub fn discover(timeout: Duration, first: bool) -> Result<Vec<Found>, DiscoverError> {
    let mdns = ServiceDaemon::new()?;
    let rx = mdns.browse(periphery_protocol::SERVICE_TYPE)?;
    let deadline = Instant::now() + timeout;
    let mut found: Vec<Found> = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(ev) = rx.recv_timeout(left) else { break };
        if let ServiceEvent::ServiceResolved(s) = ev {
            let name = s
                .fullname
                .strip_suffix(&format!(".{}", periphery_protocol::SERVICE_TYPE))
                .unwrap_or(&s.fullname)
                .to_owned();
            let prop = |k: &str| {
                s.txt_properties
                    .get_property_val_str(k)
                    .unwrap_or_default()
                    .to_owned()
            };
            let mut addresses: Vec<IpAddr> = s.addresses.iter().map(|a| a.to_ip_addr()).collect();
            addresses.sort();
            let f = Found {
                name,
                addresses,
                port: s.port,
                proto: prop("proto"),
                fingerprint: prop("fp"),
                version: prop("ver"),
            };
            found.retain(|x| x.name != f.name);
            found.push(f);
            if first {
                break;
            }
        }
    }
    let _ = mdns.shutdown();
    Ok(found)
}
