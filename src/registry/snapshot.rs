//! The immutable view of the registry that readers (DNS, HTTP reads) use without locks.
//!
//! The [`Registry`](super::Registry) publishes a new [`Snapshot`] after every committed change.
//! Only the changed service's [`ServiceEntry`] is rebuilt; the others are shared by `Arc`.
//! Each entry carries a DNS-ready view ([`ServiceDns`]): the served (healthy) instances with
//! their effective weights and SRV targets, prepared when data changes so that the query path
//! only filters and orders.

use std::borrow::Borrow;
use std::collections::BTreeMap;
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
    /// One entry per instance, parallel to [`ServiceEntry::instances`]. Built once per
    /// instance version and shared by later snapshots while the instance does not change, so
    /// a change to one instance of a large service costs little more than that instance.
    pub instances: Vec<Arc<InstanceDns>>,
}

impl ServiceDns {
    /// The instances DNS serves.
    pub fn served(&self) -> impl Iterator<Item = &Served> {
        self.instances.iter().filter_map(|i| i.served.as_ref())
    }
}

/// What DNS needs of one instance.
#[derive(Debug)]
pub struct InstanceDns {
    /// `None` while the instance is not served (critical, maintenance, warning with
    /// `only_passing`).
    pub served: Option<Served>,
    /// Lowercase tags that are DNS labels.
    pub tags: Vec<String>,
    pub protocol: &'static str,
    pub port_names: Vec<String>,
}

impl InstanceDns {
    fn build(instance: &Instance, policy: &DnsPolicy) -> Self {
        let reg = &instance.registration;
        let tags: Vec<String> = reg
            .tags
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .filter(|t| is_dns_label(t))
            .collect();
        let weight = match instance.status {
            InstanceStatus::Passing => Some(reg.weight),
            InstanceStatus::Warning if !policy.only_passing => Some(reg.warning_weight),
            _ => None,
        };
        let target = match &reg.address {
            Address::Ip(ip) => Some((addr_name(*ip, &policy.domain), Some(*ip))),
            // Validated at registration; a name hickory cannot hold is not served.
            Address::Host(host) => Name::from_ascii(format!("{host}."))
                .ok()
                .map(|name| (name, None)),
        };
        let served = weight.zip(target).map(|(weight, (target, ip))| Served {
            priority: reg.priority,
            weight,
            port: reg.port,
            protocol: reg.protocol,
            tags: tags.clone(),
            ports: reg.ports.clone(),
            target_wire: wire_name(&target),
            target,
            ip,
        });
        Self {
            served,
            tags,
            protocol: reg.protocol.as_str(),
            port_names: reg.ports.keys().cloned().collect(),
        }
    }
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
    /// `target` in wire format (uncompressed, lowercase), for the DNS fast path.
    pub target_wire: Vec<u8>,
    /// The address for A/AAAA answers and glue; `None` for hostname instances.
    pub ip: Option<IpAddr>,
}

/// A name in uncompressed wire format, lowercase.
pub fn wire_name(name: &Name) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire
}

impl ServiceEntry {
    /// Builds the entry for `instances` (sorted by ID), reusing the DNS data of instances
    /// that are unchanged since `previous`.
    pub fn build(
        name: ServiceName,
        index: u64,
        instances: Vec<Arc<Instance>>,
        policy: &DnsPolicy,
        previous: Option<&ServiceEntry>,
    ) -> Self {
        let mut reusable =
            previous.map(|p| p.instances.iter().zip(p.dns.instances.iter()).peekable());
        let mut dns = ServiceDns {
            instances: Vec::with_capacity(instances.len()),
        };
        for instance in &instances {
            let mut cached = None;
            if let Some(old) = reusable.as_mut() {
                // Both lists are sorted by ID: advance past IDs that are gone.
                while let Some((old_instance, _)) = old.peek() {
                    if old_instance.registration.id < instance.registration.id {
                        old.next();
                    } else {
                        break;
                    }
                }
                if let Some((old_instance, old_dns)) = old.peek()
                    && Arc::ptr_eq(old_instance, instance)
                {
                    cached = Some(Arc::clone(old_dns));
                }
            }
            dns.instances
                .push(cached.unwrap_or_else(|| Arc::new(InstanceDns::build(instance, policy))));
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
