//! Discovery: a tablet finds the appliance by mDNS/DNS-SD and pairs with the address it found.
//!
//! The appliance and the tablet run in two network namespaces joined by a veth pair — a
//! two-host LAN made by the test. Where namespaces cannot be made (not root, no `ip`), the
//! test says why and is skipped; it never passes silently.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::process::Command;

use periphery_e2e::{Daemon, DaemonOptions, Tablet};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Lan {
    appliance: String,
    tablet: String,
}

impl Lan {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let lan = Lan {
            appliance: format!("pa{id}"),
            tablet: format!("pt{id}"),
        };
        let (va, vt) = (format!("va{id}"), format!("vt{id}"));
        let subnet = 1 + id % 250;
        ip(&["netns", "add", &lan.appliance])?;
        ip(&["netns", "add", &lan.tablet])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vt])?;
        ip(&["link", "set", &va, "netns", &lan.appliance])?;
        ip(&["link", "set", &vt, "netns", &lan.tablet])?;
        for (ns, dev, host) in [(&lan.appliance, &va, 1), (&lan.tablet, &vt, 2)] {
            let addr = format!("10.231.{subnet}.{host}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // No default route in a namespace: multicast needs a route of its own.
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.appliance]);
        let _ = ip(&["netns", "del", &self.tablet]);
    }
}

#[test]
fn a_tablet_discovers_the_appliance_on_the_lan_and_pairs_with_it() {
    let lan = match Lan::create() {
        Ok(l) => l,
        Err(why) => {
            println!("SKIPPED: cannot build a virtual LAN here ({why}); discovery was not tested");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("state"),
        DaemonOptions {
            listen: Some("0.0.0.0:4470".into()),
            discovery: true,
            netns: Some(lan.appliance.clone()),
            ..Default::default()
        },
    );
    d.ok(&["user", "add", "alice", "--no-password"]);

    let t = Tablet::in_netns(&dir.path().join("t"), &lan.tablet);
    let found = t.ok(&["discover", "--timeout", "20", "--first"]);
    println!("discovered: {found}");
    let line = found
        .lines()
        .find(|l| l.contains(&d.banner.fingerprint))
        .unwrap_or_else(|| panic!("the appliance's fingerprint is not in: {found}"));
    let versions = format!(
        "protocol {}-{}",
        periphery_protocol::MIN_PROTOCOL_VERSION,
        periphery_protocol::PROTOCOL_VERSION
    );
    assert!(
        line.contains("port 4470") && line.contains(&versions),
        "{line}"
    );
    let addr = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.split(',').find(|a| a.starts_with("10.231.")))
        .unwrap_or_else(|| panic!("no LAN address in: {line}"));

    // Pair with what discovery gave, across the namespaces.
    let code = d.pair_code("alice");
    t.ok(&["pair", addr, "--code", &code]);
    assert!(t.ok(&["whoami"]).starts_with("user alice"));
}
