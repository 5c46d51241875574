//! `srvdns serve`: wires the registry, the DNS sockets, the HTTP API and the health engine, and
//! stops them together.
//!
//! Every long-running task is spawned here, on one [`TaskTracker`], and watches one
//! [`CancellationToken`]: [`Server::stop`] cancels the token and waits for all of them. Sockets
//! are bound before [`Server::start`] returns, so a caller (a test, or `main`) knows the
//! addresses and can send traffic at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dns::answer::Authority;
use crate::dns::server::{self as dns_server, DnsService};
use crate::dns::zones::{StaticZones, ZoneError};
use crate::health;
use crate::health::engine::CheckStats;
use crate::health::probe::Prober;
use crate::http::{self, AppState, registration::Limits};
use crate::registry::{DnsPolicy, Registry, RegistrySettings};
use crate::signals::ShutdownSignals;

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
    #[error("cannot create the data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
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
}

/// Loads the static zones a configuration names, and checks them against its domain.
pub fn load_zones(config: &Config) -> Result<StaticZones, ZoneError> {
    let zones = match config.zones_dir() {
        Some(dir) => StaticZones::load_dir(dir)?,
        None => StaticZones::default(),
    };
    zones.require_soa(&config.domain)?;
    Ok(zones)
}

impl Server {
    /// Binds every socket and starts every task.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let zones = load_zones(&config)?;
        if let Some(dir) = &config.data_dir {
            // The durable store lives here (see the durability issue); for now srvdns only
            // makes sure it can create it, so a bad path fails at start, not later.
            std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let registry = Arc::new(Registry::new(RegistrySettings {
            dns: DnsPolicy {
                domain: config.domain.clone(),
                only_passing: config.only_passing,
            },
            static_names: zones.service_labels_taken(&config.domain),
        }));

        let (udp, tcp) = dns_server::bind(config.dns_listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "DNS",
                addr: config.dns_listen,
                source,
            })?;
        let dns_addr = udp.local_addr().map_err(|source| StartError::Bind {
            what: "DNS",
            addr: config.dns_listen,
            source,
        })?;
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
        let authority = Arc::new(Authority {
            domain: config.domain.clone(),
            ttl: config.ttl.as_secs() as u32,
            negative_ttl: config.negative_ttl.as_secs() as u32,
            max_answers: config.max_answers,
            ns_addresses,
            zones,
        });
        let dns = DnsService {
            authority,
            registry: Arc::clone(&registry),
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        tasks.spawn(dns_server::serve_udp(
            Arc::new(udp),
            dns.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(dns_server::serve_tcp(tcp, dns, shutdown.clone()));
        tasks.spawn(health::ttl::run(Arc::clone(&registry), shutdown.clone()));
        let check_stats = Arc::new(CheckStats::default());
        tasks.spawn(health::engine::run(
            Arc::clone(&registry),
            Prober::new()?,
            Arc::clone(&check_stats),
            shutdown.clone(),
        ));

        let app = http::router(AppState {
            registry: Arc::clone(&registry),
            limits: Limits {
                max_checks: config.max_checks,
                ..Limits::default()
            },
            token: config.token.as_deref().map(Arc::from),
            check_stats: Arc::clone(&check_stats),
            shutdown: shutdown.clone(),
        });
        let http_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(http_listener, service)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tasks.close();

        tracing::info!(
            dns = %dns_addr, http = %http_addr, domain = %config.domain,
            "srvdns serving"
        );
        Ok(Self {
            dns_addr,
            http_addr,
            registry,
            check_stats,
            shutdown,
            tasks,
        })
    }

    /// Stops every task and waits for them: sockets close, blocking reads return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
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
