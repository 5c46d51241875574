//! Finds the instances of a service through plain DNS with hickory-resolver: one SRV query to
//! srvdns (`_<service>._tcp.<domain>`), whose answer carries every healthy instance's port,
//! priority, weight and target, and the targets' addresses as glue.
//!
//! ```sh
//! cargo run --example find_service -- [SERVICE] [DNS_SERVER:PORT]
//! ```
//!
//! SERVICE defaults to `$SRVDNS_SERVICE` or `payment`; the server to `$SRVDNS_DNS` or
//! `127.0.0.1:8600`; the domain is `$SRVDNS_DOMAIN` or `service.local`. Prints one line per
//! instance: target, port, priority, weight, address.

use std::error::Error;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

fn setting(position: usize, env: &str, default: &str) -> String {
    std::env::args()
        .nth(position)
        .or_else(|| std::env::var(env).ok())
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let service = setting(1, "SRVDNS_SERVICE", "payment");
    let server: SocketAddr = setting(2, "SRVDNS_DNS", "127.0.0.1:8600").parse()?;
    let domain = std::env::var("SRVDNS_DOMAIN").unwrap_or_else(|_| "service.local".into());

    // Ask srvdns only, on its port, over UDP (and TCP when an answer is truncated).
    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut name_server.connections {
        connection.port = server.port();
    }
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![name_server]),
        TokioRuntimeProvider::default(),
    )
    .build()?;

    let name = format!("_{service}._tcp.{}.", domain.trim_end_matches('.'));
    let lookup = resolver.srv_lookup(name.as_str()).await?;
    for record in lookup.answers() {
        let RData::SRV(srv) = &record.data else {
            continue;
        };
        // The glue in the additional section, or a lookup when there is none.
        let glue = lookup.additionals().iter().find_map(|r| match &r.data {
            RData::A(a) if r.name == srv.target => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) if r.name == srv.target => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        });
        let address = match glue {
            Some(address) => address,
            None => resolver
                .lookup_ip(srv.target.clone())
                .await?
                .iter()
                .next()
                .ok_or_else(|| format!("{} has no address", srv.target))?,
        };
        let target = srv.target.to_string();
        println!(
            "{} {} {} {} {address}",
            target.trim_end_matches('.'),
            srv.port,
            srv.priority,
            srv.weight
        );
    }
    Ok(())
}
