//! The client commands of the command line — `srvdns services`, `instances`, `register`,
//! `deregister` and `watch` — for people and scripts. Each is a few calls of the
//! [`Client`] and a plain-text rendering of the answer; `--json` prints the registry's JSON
//! instead.
//!
//! Output goes to the writer the caller passes (stdout in `main`), so the rendering is tested
//! without a process. Failures are a [`CommandError`], whose [`exit_code`](CommandError::exit_code)
//! tells scripts what went wrong:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the registry answered an error (invalid registration, bad token, …) |
//! | 2 | bad usage: unknown flag, missing argument, unusable `--registry` URL |
//! | 3 | the registry cannot be reached (refused, timed out, name does not resolve) |
//! | 4 | not found: no such service or instance |

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::client::{Check, Client, ClientError, Instance, Registration, ServiceState};

/// Exit codes of the client commands (see the module docs).
pub mod exit {
    /// The registry answered an error, or the output could not be written.
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// The registry cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// No such service or instance.
    pub const NOT_FOUND: u8 = 4;
}

/// The registry to talk to; shared by every client command and the sidecar.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// URL of the srvdns HTTP API
    #[arg(
        long,
        env = "SRVDNS_REGISTRY",
        default_value = "http://127.0.0.1:8500",
        value_name = "URL"
    )]
    pub registry: String,
    /// Bearer token, for a registry started with --token
    #[arg(long, env = "SRVDNS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RegistryArgs {
    /// A client of this registry.
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(&self.registry, self.token.clone())
    }
}

/// `srvdns services`
#[derive(Debug, Clone, clap::Args)]
pub struct ServicesArgs {
    /// Print the registry's JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `srvdns instances <service>`
#[derive(Debug, Clone, clap::Args)]
pub struct InstancesArgs {
    /// The service
    pub service: String,
    /// Print the registry's JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `srvdns register <service> <id> …`
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// The service (a DNS label: a-z, 0-9, -)
    pub service: String,
    /// The instance ID (1-128 of A-Z a-z 0-9 . _ : -)
    pub id: String,
    /// IP address or hostname of the instance [default: the address this request comes from]
    #[arg(long)]
    pub address: Option<String>,
    /// Port of the instance
    #[arg(long)]
    pub port: u16,
    /// A tag (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Metadata as KEY=VALUE (repeatable)
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// SRV weight [default: 1]
    #[arg(long)]
    pub weight: Option<u16>,
    /// SRV priority [default: 0]
    #[arg(long)]
    pub priority: Option<u16>,
    /// Health check: srvdns GETs this URL (2xx passing, 429 warning, else critical)
    #[arg(long, value_name = "URL")]
    pub check_http: Option<String>,
    /// Health check: srvdns connects to HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    pub check_tcp: Option<String>,
    /// Health check: heartbeats (PUT …/heartbeat) must arrive at least this often
    #[arg(long, value_name = "DURATION")]
    pub check_ttl: Option<humantime::Duration>,
    /// Interval of the HTTP and TCP checks [default: the registry's, 10s]
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<humantime::Duration>,
    /// Timeout of the HTTP and TCP checks [default: the registry's]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<humantime::Duration>,
    /// Print the registered instance as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `srvdns deregister <service> <id>`
#[derive(Debug, Clone, clap::Args)]
pub struct DeregisterArgs {
    /// The service
    pub service: String,
    /// The instance ID
    pub id: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `srvdns watch <service>`
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The service
    pub service: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `KEY=VALUE`, for `--meta`.
pub fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CommandError {
    /// The process exit code for this failure (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Client(ClientError::Unreachable { .. }) => exit::UNREACHABLE,
            Self::Client(ClientError::NotFound { .. }) => exit::NOT_FOUND,
            Self::Client(ClientError::BadUrl { .. }) => exit::USAGE,
            Self::Client(ClientError::Api { .. } | ClientError::BadAnswer { .. }) => exit::FAILURE,
            Self::Output(_) => exit::FAILURE,
        }
    }

    /// A closed pipe (`srvdns instances x | head -1`) is not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `srvdns services`: a table of services with counts by status.
pub async fn services(args: &ServicesArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let services = args.registry.client()?.services().await?;
    if args.json {
        return write_json(out, &services);
    }
    let rows = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.instances.to_string(),
                s.passing.to_string(),
                s.warning.to_string(),
                s.critical.to_string(),
                s.maintenance.to_string(),
            ]
        })
        .collect();
    let headers = [
        "NAME",
        "INSTANCES",
        "PASSING",
        "WARNING",
        "CRITICAL",
        "MAINTENANCE",
    ];
    out.write_all(table(&headers, rows).as_bytes())?;
    Ok(())
}

/// `srvdns instances <service>`: a table of its instances.
pub async fn instances(args: &InstancesArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let client = args.registry.client()?;
    if args.json {
        let json = client.service_json(&args.service).await?;
        return write_json(out, &json);
    }
    let service = client.service(&args.service).await?;
    out.write_all(instance_table(&service.instances).as_bytes())?;
    Ok(())
}

/// The `instances` table: ID, STATUS, ADDRESS, PORT, WEIGHT, OUTPUT (the last check output,
/// or the maintenance reason).
pub fn instance_table(instances: &[Instance]) -> String {
    let rows = instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.status.clone(),
                i.address.clone(),
                i.port.to_string(),
                i.weight.to_string(),
                one_line(i.shown_output()),
            ]
        })
        .collect();
    table(
        &["ID", "STATUS", "ADDRESS", "PORT", "WEIGHT", "OUTPUT"],
        rows,
    )
}

/// `srvdns register <service> <id> …`
pub async fn register(args: &RegisterArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let client = args.registry.client()?;
    let registration = registration_of(args);
    let instance = client
        .register(&args.service, &args.id, &registration)
        .await?;
    if args.json {
        return write_json(out, &instance);
    }
    let field = |name: &str| {
        instance
            .get(name)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    writeln!(
        out,
        "registered {}/{} at {}:{} ({})",
        field("service"),
        field("id"),
        field("address"),
        field("port"),
        field("status")
    )?;
    Ok(())
}

/// The registration body `register`'s flags describe.
pub fn registration_of(args: &RegisterArgs) -> Registration {
    let interval = args.interval.map(Duration::from);
    let timeout = args.timeout.map(Duration::from);
    let mut checks = Vec::new();
    if let Some(url) = &args.check_http {
        checks.push(Check::Http {
            url: url.clone(),
            interval,
            timeout,
        });
    }
    if let Some(target) = &args.check_tcp {
        checks.push(Check::Tcp {
            target: Some(target.clone()),
            interval,
            timeout,
        });
    }
    if let Some(ttl) = args.check_ttl {
        checks.push(Check::Ttl {
            ttl: ttl.into(),
            status: None,
            deregister_after: None,
        });
    }
    Registration {
        address: args.address.clone(),
        port: args.port,
        priority: args.priority,
        weight: args.weight,
        tags: args.tags.clone(),
        meta: args.meta.iter().cloned().collect(),
        checks,
    }
}

/// `srvdns deregister <service> <id>`
pub async fn deregister(args: &DeregisterArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let client = args.registry.client()?;
    client.deregister(&args.service, &args.id).await?;
    writeln!(out, "deregistered {}/{}", args.service, args.id)?;
    Ok(())
}

/// How long one blocking read of `watch` waits (the registry's maximum).
const WATCH_WAIT: Duration = Duration::from_secs(300);
/// The longest pause between reconnection attempts of `watch`.
const WATCH_RETRY_CAP: Duration = Duration::from_secs(5);

/// `srvdns watch <service>`: prints the current instances, then one line per change as it
/// happens, until interrupted.
///
/// It loops on blocking reads (`?index=N&wait=5m`), so a change is printed as soon as the
/// registry commits it. Only what DNS cares about counts as a change (status, address, port,
/// priority, weight, tags), not each new check output. When the registry goes away, `watch`
/// says so once on stderr, retries, and re-reads the whole service when it is back (its
/// index may have started over).
pub async fn watch(args: &WatchArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let client = args.registry.client()?;
    // The first read must succeed: a typo in --registry fails at once, with its exit code.
    let first = client
        .watch_service(&args.service, None, WATCH_WAIT)
        .await?;
    let mut known = BTreeMap::new();
    write_changes(out, &mut known, &first, true)?;
    let mut index = Some(first.index);
    let mut retry = Duration::from_millis(100);
    let mut lost = false;
    loop {
        match client.watch_service(&args.service, index, WATCH_WAIT).await {
            Ok(state) => {
                if lost {
                    eprintln!("srvdns: the registry at {} is back", client.registry());
                    lost = false;
                    retry = Duration::from_millis(100);
                }
                write_changes(out, &mut known, &state, false)?;
                // A blocking read that ends without a change either timed out or was ended by
                // a registry shutting down; a plain read next resynchronizes with whatever
                // answers now (a restarted registry counts from a lower index).
                index = match index {
                    Some(previous) if state.index == previous => None,
                    _ => Some(state.index),
                };
            }
            Err(e) if e.is_transient() => {
                if !lost {
                    eprintln!("srvdns: {e}; retrying");
                    lost = true;
                }
                index = None;
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(WATCH_RETRY_CAP);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a watcher compares: the fields that change DNS answers.
fn fingerprint(i: &Instance) -> (&str, &str, u16, u16, u16, &[String]) {
    (&i.status, &i.address, i.port, i.priority, i.weight, &i.tags)
}

/// Prints one line per instance that appeared, changed or disappeared between `known` and
/// `state`, and updates `known`. `initial` marks the first listing (`present`).
fn write_changes(
    out: &mut dyn Write,
    known: &mut BTreeMap<String, Instance>,
    state: &ServiceState,
    initial: bool,
) -> std::io::Result<()> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let current: BTreeMap<String, Instance> = state
        .service
        .iter()
        .flat_map(|s| s.instances.iter())
        .map(|i| (i.id.clone(), i.clone()))
        .collect();
    for (id, before) in known.iter() {
        if !current.contains_key(id) {
            writeln!(out, "{now} {}/{id} deregistered", before.service)?;
        }
    }
    for (id, instance) in &current {
        let what = match known.get(id) {
            None if initial => "present".to_owned(),
            None => "registered".to_owned(),
            Some(before) if fingerprint(before) != fingerprint(instance) => {
                if before.status != instance.status {
                    format!("changed (was {})", before.status)
                } else {
                    "changed".to_owned()
                }
            }
            Some(_) => continue,
        };
        let tags = if instance.tags.is_empty() {
            String::new()
        } else {
            format!(" tags={}", instance.tags.join(","))
        };
        let output = match instance.shown_output() {
            "" => String::new(),
            shown => format!(" output={:?}", one_line(shown)),
        };
        writeln!(
            out,
            "{now} {}/{id} {what} status={} address={}:{} priority={} weight={}{tags}{output}",
            instance.service,
            instance.status,
            instance.address,
            instance.port,
            instance.priority,
            instance.weight,
        )?;
    }
    out.flush()?;
    *known = current;
    Ok(())
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "-".to_owned()
    } else {
        line
    }
}

fn write_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<(), CommandError> {
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(&rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, status: &str, weight: u16, output: &str) -> Instance {
        Instance {
            service: "payment".into(),
            id: id.into(),
            address: "10.0.1.5".into(),
            port: 8080,
            priority: 0,
            weight,
            tags: vec![],
            meta: BTreeMap::new(),
            status: status.into(),
            output: output.into(),
            last_change: String::new(),
            maintenance: Default::default(),
        }
    }

    #[test]
    fn tables_align_columns() {
        let text = instance_table(&[
            instance("payment-1", "passing", 1, "heartbeat"),
            instance(
                "p2",
                "critical",
                300,
                "HTTP GET http://x/health: 500\n in 3 ms",
            ),
        ]);
        assert_eq!(
            text,
            "ID         STATUS    ADDRESS   PORT  WEIGHT  OUTPUT\n\
             payment-1  passing   10.0.1.5  8080  1       heartbeat\n\
             p2         critical  10.0.1.5  8080  300     HTTP GET http://x/health: 500 in 3 ms\n"
        );
    }

    #[test]
    fn meta_flags_need_a_key() {
        assert_eq!(
            parse_key_value("zone=us-east=1"),
            Ok(("zone".into(), "us-east=1".into()))
        );
        assert_eq!(parse_key_value("empty="), Ok(("empty".into(), "".into())));
        assert!(parse_key_value("=v").is_err());
        assert!(parse_key_value("novalue").is_err());
    }

    #[test]
    fn watch_lines_report_joins_changes_and_leaves() {
        let mut known = BTreeMap::new();
        let state = |instances: Vec<Instance>| ServiceState {
            index: 1,
            service: Some(crate::client::Service {
                name: "payment".into(),
                index: 1,
                instances,
            }),
        };
        let mut out = Vec::new();
        write_changes(
            &mut out,
            &mut known,
            &state(vec![instance("a", "passing", 1, "")]),
            true,
        )
        .unwrap();
        // A new output alone is not a change; a new status is.
        write_changes(
            &mut out,
            &mut known,
            &state(vec![instance("a", "passing", 1, "heartbeat")]),
            false,
        )
        .unwrap();
        write_changes(
            &mut out,
            &mut known,
            &state(vec![
                instance("a", "critical", 1, "timed out"),
                instance("b", "passing", 2, ""),
            ]),
            false,
        )
        .unwrap();
        write_changes(
            &mut out,
            &mut known,
            &ServiceState {
                index: 2,
                service: None,
            },
            false,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            lines,
            [
                "payment/a present status=passing address=10.0.1.5:8080 priority=0 weight=1",
                "payment/a changed (was passing) status=critical address=10.0.1.5:8080 \
                 priority=0 weight=1 output=\"timed out\"",
                "payment/b registered status=passing address=10.0.1.5:8080 priority=0 weight=2",
                "payment/a deregistered",
                "payment/b deregistered",
            ]
        );
    }
}
