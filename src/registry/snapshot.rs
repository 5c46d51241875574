//! The immutable view of the registry that readers (DNS, HTTP reads) use without locks.
//!
//! The [`Registry`](super::Registry) publishes a new [`Snapshot`] after every committed change.
//! Only the changed service's [`ServiceEntry`] is rebuilt; the others are shared by `Arc`.
//! Each entry carries a DNS-ready view ([`ServiceDns`]): the served (healthy) instances with
//! their effective weights and SRV targets, prepared when data changes so that the query path
//! only filters and orders.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

use super::instance::Instance;
use super::model::{Address, InstanceStatus, Protocol, ServiceName, is_dns_label};

/// An immutable, consistent view of the whole registry at one `index`.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The registry index this view reflects; bumped by every committed change.
    pub index: u64,
    pub services: Arc<BTreeMap<ServiceName, Arc<ServiceEntry>>>,
}

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceEntry>> {
        self.services.get(name)
    }
}

impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// One service: its instances (sorted by ID) and the DNS view of them.
#[derive(Debug)]
pub struct ServiceEntry {
    pub name: ServiceName,
    /// The registry index of the last change to this service.
    pub index: u64,
    pub instances: Vec<Arc<Instance>>,
    pub dns: ServiceDns,
}

/// How the DNS side should treat instance health; fixed for the server's lifetime.
#[derive(Debug, Clone)]
pub struct DnsPolicy {
    /// The served domain, lowercase, fully qualified (`service.local.`).
    pub domain: Name,
    /// Serve `passing` only, not `warning`.
    pub only_passing: bool,
}

/// The DNS-ready view of one service.
#[derive(Debug, Default)]
pub struct ServiceDns {
    /// Instances that DNS serves, with their effective weight.
    pub served: Vec<Served>,
    /// Lowercase DNS-label tags of every registered instance, healthy or not: a tag name
    /// exists (NODATA rather than NXDOMAIN) while any instance carries the tag.
    pub tags: BTreeSet<String>,
    /// Protocols of every registered instance.
    pub protocols: BTreeSet<&'static str>,
    /// `(port name, protocol)` of every registered instance.
    pub port_names: BTreeSet<(String, &'static str)>,
}

/// One instance as DNS serves it.
#[derive(Debug, Clone)]
pub struct Served {
    pub priority: u16,
    /// The SRV weight in force: `weight`, or the warning weight while `warning`.
    pub weight: u16,
    pub port: u16,
    pub protocol: Protocol,
    /// Lowercase tags that are DNS labels.
    pub tags: Vec<String>,
    pub ports: BTreeMap<String, u16>,
    /// The SRV target: `<addr>.addr.<domain>` for IP instances, the hostname otherwise.
    pub target: Name,
    /// The address for A/AAAA answers and glue; `None` for hostname instances.
    pub ip: Option<IpAddr>,
}

impl ServiceEntry {
    pub fn build(
        name: ServiceName,
        index: u64,
        instances: Vec<Arc<Instance>>,
        policy: &DnsPolicy,
    ) -> Self {
        let mut dns = ServiceDns::default();
        for instance in &instances {
            let reg = &instance.registration;
            let tags: Vec<String> = reg
                .tags
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .filter(|t| is_dns_label(t))
                .collect();
            dns.tags.extend(tags.iter().cloned());
            dns.protocols.insert(reg.protocol.as_str());
            dns.port_names.extend(
                reg.ports
                    .keys()
                    .map(|port| (port.clone(), reg.protocol.as_str())),
            );
            let weight = match instance.status {
                InstanceStatus::Passing => reg.weight,
                InstanceStatus::Warning if !policy.only_passing => reg.warning_weight,
                _ => continue,
            };
            let (target, ip) = match &reg.address {
                Address::Ip(ip) => (addr_name(*ip, &policy.domain), Some(*ip)),
                Address::Host(host) => match Name::from_ascii(format!("{host}.")) {
                    Ok(name) => (name, None),
                    // Validated at registration; a name hickory cannot hold is not served.
                    Err(_) => continue,
                },
            };
            dns.served.push(Served {
                priority: reg.priority,
                weight,
                port: reg.port,
                protocol: reg.protocol,
                tags,
                ports: reg.ports.clone(),
                target,
                ip,
            });
        }
        Self {
            name,
            index,
            instances,
            dns,
        }
    }
}

/// The label that names an address under `addr.<domain>`: `10-0-1-5`, `2001-db8--1`.
pub fn addr_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{a}-{b}-{c}-{d}")
        }
        IpAddr::V6(v6) => {
            // RFC 5952 form without the dotted IPv4 tail, so the label never holds a '.'.
            let segments = v6.segments();
            let mut best = (0, 0);
            let mut run_start = None;
            for (i, segment) in segments.iter().enumerate() {
                match (segment, run_start) {
                    (0, None) => run_start = Some(i),
                    (0, Some(_)) => {}
                    (_, Some(start)) => {
                        if i - start > best.1 - best.0 {
                            best = (start, i);
                        }
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(start) = run_start
                && 8 - start > best.1 - best.0
            {
                best = (start, 8);
            }
            let hex = |s: &[u16]| {
                s.iter()
                    .map(|g| format!("{g:x}"))
                    .collect::<Vec<_>>()
                    .join("-")
            };
            if best.1 - best.0 >= 2 {
                format!("{}--{}", hex(&segments[..best.0]), hex(&segments[best.1..]))
            } else {
                hex(&segments)
            }
        }
    }
}

/// Parses an [`addr_label`] back into an address.
pub fn parse_addr_label(label: &str) -> Option<IpAddr> {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return label.replace('-', ".").parse().ok();
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// `<addr>.addr.<domain>`.
pub fn addr_name(ip: IpAddr, domain: &Name) -> Name {
    // Both labels are short ASCII and the domain was accepted as a name: this cannot fail
    // for domains up to 200 bytes, which config validation enforces.
    Name::from_ascii(format!("{}.addr.{}", addr_label(ip), domain))
        .unwrap_or_else(|_| domain.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_labels_round_trip() {
        for (ip, label) in [
            ("10.0.1.5", "10-0-1-5"),
            ("2001:db8::1", "2001-db8--1"),
            ("::1", "--1"),
            ("::", "--"),
            ("fe80::", "fe80--"),
            ("2001:db8:0:1:1:1:1:1", "2001-db8-0-1-1-1-1-1"),
            ("::ffff:1.2.3.4", "--ffff-102-304"),
            ("1:0:0:2:0:0:0:3", "1-0-0-2--3"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(addr_label(ip), label);
            assert_eq!(parse_addr_label(label), Some(ip));
        }
        assert_eq!(parse_addr_label("10-0-1-999"), None);
        assert_eq!(parse_addr_label("web"), None);
    }
}
