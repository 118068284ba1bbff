//! Which interfaces to announce on, their real broadcast addresses, and their ranking.

use std::net::Ipv4Addr;
use std::path::Path;

use if_addrs::IfAddr;

/// Where announcements go out: one per IPv4 address of a suitable interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastTarget {
    pub interface: String,
    pub address: Ipv4Addr,
    /// `address | !netmask`: the subnet's broadcast address (for loopback's /8,
    /// 127.255.255.255, which reaches every listener on the host).
    pub broadcast: Ipv4Addr,
    /// Higher is better: 3 physical, 2 other virtual links, 1 container bridges, 0 loopback.
    pub priority: u8,
}

/// Which interfaces take part.
#[derive(Debug, Clone, Default)]
pub struct InterfaceFilter {
    /// Only these interfaces (names; a trailing `*` matches a prefix). Empty: all.
    pub include: Vec<String>,
    /// Never these.
    pub exclude: Vec<String>,
}

impl InterfaceFilter {
    /// Parses `lo,eth*`-style lists.
    pub fn parse(include: &str, exclude: &str) -> Self {
        let list = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        InterfaceFilter {
            include: list(include),
            exclude: list(exclude),
        }
    }

    pub fn allows(&self, name: &str) -> bool {
        let matches = |pattern: &String| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        };
        (self.include.is_empty() || self.include.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }
}

/// The broadcast targets of this host, best first.
pub fn broadcast_targets(filter: &InterfaceFilter) -> std::io::Result<Vec<BroadcastTarget>> {
    let mut targets: Vec<BroadcastTarget> = if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|iface| filter.allows(&iface.name) && !iface.is_p2p() && is_up(&iface.name))
        .filter_map(|iface| {
            let IfAddr::V4(v4) = iface.addr.clone() else {
                return None;
            };
            let broadcast = Ipv4Addr::from(u32::from(v4.ip) | !u32::from(v4.netmask));
            // A /32 has no one else to broadcast to.
            let priority = priority(&iface.name, iface.is_loopback());
            (broadcast != v4.ip).then_some(BroadcastTarget {
                priority,
                interface: iface.name,
                address: v4.ip,
                broadcast,
            })
        })
        .collect();
    targets.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.interface.cmp(&b.interface))
    });
    Ok(targets)
}

/// Interfaces the kernel reports down are skipped (loopback reports "unknown").
fn is_up(name: &str) -> bool {
    let state = std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("operstate"));
    !matches!(
        state.as_deref().map(str::trim),
        Ok("down") | Ok("lowerlayerdown")
    )
}

const CONTAINER_PREFIXES: [&str; 8] = [
    "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "podman",
];

fn priority(name: &str, loopback: bool) -> u8 {
    if loopback {
        0
    } else if CONTAINER_PREFIXES.iter().any(|p| name.starts_with(p)) {
        1
    } else if cfg!(target_os = "linux")
        && !Path::new("/sys/class/net")
            .join(name)
            .join("device")
            .exists()
    {
        // No device behind it: a tunnel, a bond, a bridge of our own.
        2
    } else {
        3
    }
}
