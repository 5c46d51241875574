//! `srvdns serve`: wires the registry, the DNS sockets, the HTTP API and the health engine, and
//! stops them together.
//!
//! With `--store etcd` (feature `etcd`) it also runs the cluster's watch task, and runs the
//! health engine and the TTL task only while this server holds the cluster's leadership
//! ([`crate::cluster::leader`]).
//!
//! Every long-running task is spawned here, on one [`TaskTracker`], and watches one
//! [`CancellationToken`]: [`Server::stop`] cancels the token and waits for all of them. Sockets
//! are bound before [`Server::start`] returns, so a caller (a test, or `main`) knows the
//! addresses and can send traffic at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, StoreKind, ZonesSource};
use crate::dns::answer::Authority;
use crate::dns::metrics::DnsMetrics;
use crate::dns::rrl::RateLimiter;
use crate::dns::server::{self as dns_server, DnsService};
use crate::dns::udp;
use crate::dns::zones::{StaticZones, ZoneError};
use crate::health;
use crate::health::engine::CheckStats;
use crate::health::probe::Prober;
use crate::http::admission::Admission;
use crate::http::auth::Tokens;
use crate::http::server::TlsError;
use crate::http::{self, AppState};
use crate::metrics::{self, Metrics};
use crate::registry::{DnsPolicy, Registry, RegistrySettings};
use crate::signals::ShutdownSignals;
use crate::store::StoreError;
use crate::store::embedded::{self, EmbeddedStore, Inspection};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Zones(#[from] ZoneError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client for health checks: {0}")]
    Prober(#[from] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("--store etcd: this srvdns was built without the `etcd` feature")]
    EtcdNotBuilt,
}

/// The cluster's tasks, started with the other tasks once sockets are bound.
#[cfg(feature = "etcd")]
struct ClusterTasks {
    follower: crate::cluster::follow::Follower,
    client: etcd_client::Client,
}

#[cfg(not(feature = "etcd"))]
struct ClusterTasks;

/// The health work: the TTL task and the active check engine, until `token` is cancelled.
async fn run_health(
    registry: Arc<Registry>,
    prober: Prober,
    stats: Arc<CheckStats>,
    token: CancellationToken,
) {
    tokio::join!(
        health::ttl::run(Arc::clone(&registry), token.clone()),
        health::engine::run(registry, prober, stats, token),
    );
}

/// Opens the registry on the configured store; restored before any socket opens, so the first
/// DNS answer and the first HTTP read already see every acknowledged registration.
async fn open_registry(
    config: &Config,
    settings: RegistrySettings,
) -> Result<(Arc<Registry>, Option<ClusterTasks>), StartError> {
    if config.store == StoreKind::Etcd {
        return open_cluster(config, settings).await;
    }
    let registry = match &config.data_dir {
        Some(dir) => {
            let store = EmbeddedStore::open(dir)?;
            let registry = Registry::open(settings, Arc::new(store))?;
            let snapshot = registry.snapshot();
            tracing::info!(
                data_dir = %dir.display(),
                services = snapshot.services.len(),
                instances = snapshot.services.values().map(|s| s.instances.len()).sum::<usize>(),
                index = snapshot.index,
                "registry restored"
            );
            registry
        }
        None => {
            tracing::info!("memory-only registry (--data-dir none): nothing survives a restart");
            Arc::new(Registry::new(settings))
        }
    };
    Ok((registry, None))
}

#[cfg(feature = "etcd")]
async fn open_cluster(
    config: &Config,
    settings: RegistrySettings,
) -> Result<(Arc<Registry>, Option<ClusterTasks>), StartError> {
    if config.data_dir.is_none() {
        tracing::warn!(
            "--store etcd with --data-dir none: a restart while etcd is down starts empty"
        );
    }
    let started = crate::cluster::start(&config.etcd, config.data_dir.as_deref()).await?;
    let registry = Registry::open(settings, started.store)?;
    let snapshot = registry.snapshot();
    tracing::info!(
        endpoints = %config.etcd.endpoints.join(","), prefix = %config.etcd.prefix,
        services = snapshot.services.len(),
        instances = snapshot.services.values().map(|s| s.instances.len()).sum::<usize>(),
        "registry opened on etcd"
    );
    Ok((
        registry,
        Some(ClusterTasks {
            follower: started.follower,
            client: started.client,
        }),
    ))
}

#[cfg(not(feature = "etcd"))]
async fn open_cluster(
    _config: &Config,
    _settings: RegistrySettings,
) -> Result<(Arc<Registry>, Option<ClusterTasks>), StartError> {
    Err(StartError::EtcdNotBuilt)
}

/// A running server.
pub struct Server {
    /// Where DNS listens (UDP and TCP).
    pub dns_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    pub registry: Arc<Registry>,
    /// Counters of the active health checks.
    pub check_stats: Arc<CheckStats>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The UDP worker threads and their stop flag.
    udp_workers: Vec<std::thread::JoinHandle<()>>,
    udp_stop: Arc<AtomicBool>,
}

/// Loads the static zones a configuration names, and checks them against its domain.
pub fn load_zones(config: &Config) -> Result<StaticZones, ZoneError> {
    let mut zones = match config.zones_dir() {
        Some(dir) => StaticZones::load_dir(dir)?,
        None => StaticZones::default(),
    };
    if config.zones == ZonesSource::DefaultDir {
        // The default directory may hold examples for another domain (zones/service.local.zone
        // has no SOA of its own): skip those rather than refuse to start.
        for path in zones.drop_incomplete(&config.domain) {
            tracing::warn!(
                file = %path.display(),
                domain = %config.domain,
                "zone file skipped: it has no SOA and is not the served domain"
            );
        }
    }
    zones.require_soa(&config.domain)?;
    Ok(zones)
}

/// What `srvdns serve --check-config` found: the configuration, the zones and the store as
/// the server would use them. Displayed as a few lines for people.
#[derive(Debug)]
pub struct ConfigReport {
    lines: Vec<String>,
}

impl std::fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Checks what [`Server::start`] would load — the zone files against the domain, and the
/// store in the data directory — without binding a socket or writing a file. A store that a
/// running srvdns holds is reported, not read (so the check can run beside the server).
pub fn check_config(config: &Config) -> Result<ConfigReport, StartError> {
    let mut skipped = Vec::new();
    let zones = match config.zones_dir() {
        Some(dir) => StaticZones::load_dir(dir)?,
        None => StaticZones::default(),
    };
    let mut zones = zones;
    if config.zones == ZonesSource::DefaultDir {
        skipped = zones.drop_incomplete(&config.domain);
    }
    zones.require_soa(&config.domain)?;

    let human = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let mut lines = vec![
        String::from("srvdns: configuration OK"),
        format!("  dns        {} (UDP and TCP)", config.dns_listen),
        format!("  http       {}", config.http_listen),
        format!(
            "  domain     {} (ttl {}, negative ttl {})",
            config.domain,
            human(config.ttl),
            human(config.negative_ttl)
        ),
        format!(
            "  answers    {}{}",
            if config.only_passing {
                "passing instances only"
            } else {
                "passing and warning instances"
            },
            config
                .max_answers
                .map_or(String::new(), |n| format!(", at most {n} records"))
        ),
        format!(
            "  writes     {}",
            if config.token.is_some() {
                "need the bearer token"
            } else {
                "open (no --token)"
            }
        ),
    ];
    match config.zones_dir() {
        Some(dir) => lines.push(format!("  zones      {}", dir.display())),
        None => lines.push(String::from("  zones      none")),
    }
    let mut loaded: Vec<_> = zones.iter().collect();
    loaded.sort_by(|a, b| a.path.cmp(&b.path));
    for zone in loaded {
        let records: usize = zone.records.values().map(Vec::len).sum();
        lines.push(format!(
            "    {}  {}: {records} record{}{}",
            zone.path.display(),
            zone.origin,
            if records == 1 { "" } else { "s" },
            if zone.soa.is_some() {
                " and the SOA"
            } else {
                ""
            }
        ));
    }
    for path in skipped {
        lines.push(format!(
            "    {}  skipped: no SOA, and not the served domain",
            path.display()
        ));
    }
    let store = match &config.data_dir {
        None => String::from("none: memory only, nothing survives a restart"),
        Some(dir) => match embedded::inspect(dir)? {
            Inspection::Absent { file } => format!("{}: new, created on start", file.display()),
            Inspection::Readable { file, restored } => {
                let services: std::collections::BTreeSet<&str> = restored
                    .instances
                    .iter()
                    .map(|i| i.registration.service.as_str())
                    .collect();
                format!(
                    "{}: {} instances of {} services, index {}",
                    file.display(),
                    restored.instances.len(),
                    services.len(),
                    restored.index
                )
            }
            Inspection::InUse { file } => {
                format!("{}: in use by a running srvdns (not read)", file.display())
            }
            Inspection::NeedsRecovery { file } => format!(
                "{}: not closed cleanly; repaired when srvdns opens it",
                file.display()
            ),
        },
    };
    lines.push(format!("  data       {store}"));
    Ok(ConfigReport { lines })
}

impl Server {
    /// Binds every socket and starts every task.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let zones = load_zones(&config)?;
        let settings = RegistrySettings {
            dns: DnsPolicy {
                domain: config.domain.clone(),
                only_passing: config.only_passing,
            },
            static_names: zones.service_labels_taken(&config.domain),
            limits: config.instance_limits,
        };
        // TLS files are read before anything is bound or restored: a bad one stops the start.
        let tls = match &config.tls {
            Some(files) => Some(http::server::tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let (registry, cluster) = open_registry(&config, settings).await?;

        let bind_error = |source| StartError::Bind {
            what: "DNS",
            addr: config.dns_listen,
            source,
        };
        let (udp, tcp) =
            dns_server::bind(config.dns_listen, config.dns_workers).map_err(bind_error)?;
        let dns_addr = tcp.local_addr().map_err(bind_error)?;
        let http_listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "HTTP",
                addr: config.http_listen,
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "HTTP",
                addr: config.http_listen,
                source,
            })?;

        let ns_addresses = if dns_addr.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![dns_addr.ip()]
        };
        let authority = Arc::new(Authority::new(
            config.domain.clone(),
            config.ttl.as_secs() as u32,
            config.negative_ttl.as_secs() as u32,
            config.max_answers,
            ns_addresses,
            zones,
        ));
        let dns_metrics = Arc::new(DnsMetrics::default());
        let dns = DnsService {
            authority,
            registry: Arc::clone(&registry),
            rrl: RateLimiter::new(config.rrl).map(Arc::new),
            metrics: Arc::clone(&dns_metrics),
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let udp_stop = Arc::new(AtomicBool::new(false));
        let udp_workers =
            udp::spawn(udp, dns.clone(), Arc::clone(&udp_stop)).map_err(bind_error)?;
        tasks.spawn(dns_server::serve_tcp(
            tcp,
            dns,
            config.tcp_limits,
            shutdown.clone(),
        ));
        let check_stats = Arc::new(CheckStats::default());
        let prober = Prober::new()?;
        match cluster {
            None => {
                tasks.spawn(run_health(
                    Arc::clone(&registry),
                    prober,
                    Arc::clone(&check_stats),
                    shutdown.clone(),
                ));
            }
            #[cfg(feature = "etcd")]
            Some(cluster) => {
                tasks.spawn(
                    cluster
                        .follower
                        .run(Arc::clone(&registry), shutdown.clone()),
                );
                let (registry, stats) = (Arc::clone(&registry), Arc::clone(&check_stats));
                let identity = format!("srvdns http={http_addr} pid={}", std::process::id());
                tasks.spawn(crate::cluster::leader::run(
                    cluster.client,
                    config.etcd.prefix.clone(),
                    config.etcd.lease_ttl,
                    identity,
                    move |token| {
                        run_health(
                            Arc::clone(&registry),
                            prober.clone(),
                            Arc::clone(&stats),
                            token,
                        )
                    },
                    shutdown.clone(),
                ));
            }
            #[cfg(not(feature = "etcd"))]
            Some(ClusterTasks) => return Err(StartError::EtcdNotBuilt),
        }

        let metrics = Arc::new(Metrics::new(metrics::Sources {
            dns: dns_metrics,
            registry: Arc::clone(&registry),
            checks: Arc::clone(&check_stats),
        }));
        let app = http::router(AppState {
            registry: Arc::clone(&registry),
            limits: config.limits,
            tokens: Arc::new(Tokens {
                admin: config.token.clone(),
                file: config.token_file.clone().unwrap_or_default(),
                reads: config.token_reads,
            }),
            admission: Arc::new(Admission::new(config.http_limits)),
            check_stats: Arc::clone(&check_stats),
            consul: Arc::new(http::consul::view::Agent::new(http_addr)),
            shutdown: shutdown.clone(),
            metrics,
        });
        let tls_enabled = tls.is_some();
        tasks.spawn(http::server::serve(
            http_listener,
            app,
            tls,
            config.http_limits,
            shutdown.clone(),
        ));
        tasks.close();

        tracing::info!(
            dns = %dns_addr, http = %http_addr, domain = %config.domain, tls = tls_enabled,
            "srvdns serving"
        );
        if !http_addr.ip().is_loopback() && !tls_enabled {
            tracing::warn!(
                http = %http_addr,
                "the HTTP API is reachable from the network without TLS: tokens travel in \
                 clear text (set --tls-cert and --tls-key)"
            );
        }
        Ok(Self {
            dns_addr,
            http_addr,
            registry,
            check_stats,
            shutdown,
            tasks,
            udp_workers,
            udp_stop,
        })
    }

    /// Stops every task and waits for them: sockets close, blocking reads return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.udp_stop.store(true, Ordering::Relaxed);
        self.tasks.wait().await;
        let workers = self.udp_workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        // Every task has ended: nothing writes any more. Close the store (releasing its lock)
        // before returning, so a restart can open it at once.
        let registry = self.registry;
        let _ = tokio::task::spawn_blocking(move || registry.close()).await;
        tracing::info!("srvdns stopped");
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Runs the server until SIGINT or SIGTERM, then stops it gracefully.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Listen for the signals before anything is bound: a signal that arrives while the server
    // starts must stop it gracefully, not kill it.
    let mut signals = ShutdownSignals::install();
    let server = Server::start(config).await?;
    let signal = signals.recv().await;
    tracing::info!(signal = signal.name(), "shutting down");
    server.stop().await;
    Ok(())
}
