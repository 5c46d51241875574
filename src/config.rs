//! The server's configuration: one [`Config`], from flags, `SRVDNS_*` environment variables,
//! an optional TOML file, and defaults — in that order of precedence.
//!
//! [`ServeArgs`] is what clap parses (every field optional, so that "not given" is visible);
//! [`FileConfig`] is what the TOML file may say (the same names, snake_case); [`Config`] is the
//! validated result the rest of the server uses. Validation happens once, here, and its errors
//! name the flag or the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use serde::Deserialize;

use crate::dns::rrl::RrlConfig;
use crate::dns::server::TcpLimits;
use crate::http::admission::HttpLimits;
use crate::http::auth::TokenFile;
use crate::http::registration::Limits;
use crate::registry::InstanceLimits;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Where the registry is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A file in the data directory: one server (the default).
    #[default]
    Embedded,
    /// An etcd cluster shared by several servers (needs a build with the `etcd` feature).
    Etcd,
}

/// `srvdns serve` flags. Each also reads an `SRVDNS_*` environment variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the options below (snake_case keys: `dns_listen = "…"`).
    #[arg(long, env = "SRVDNS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for DNS over UDP and TCP [default: 127.0.0.1:8600]
    #[arg(long, env = "SRVDNS_DNS_LISTEN", value_name = "ADDR")]
    pub dns_listen: Option<SocketAddr>,
    /// Address for the HTTP API [default: 127.0.0.1:8500]
    #[arg(long, env = "SRVDNS_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// The domain srvdns is the authority for [default: service.local]
    #[arg(long, env = "SRVDNS_DOMAIN")]
    pub domain: Option<String>,
    /// TTL of service answers [default: 5s]
    #[arg(long, env = "SRVDNS_TTL", value_name = "DURATION")]
    pub ttl: Option<humantime::Duration>,
    /// SOA minimum, the TTL of negative answers [default: 5s]
    #[arg(long, env = "SRVDNS_NEGATIVE_TTL", value_name = "DURATION")]
    pub negative_ttl: Option<humantime::Duration>,
    /// Directory of static zone files (*.zone) [default: zones/ when it exists]
    #[arg(long, env = "SRVDNS_ZONES", value_name = "DIR")]
    pub zones: Option<PathBuf>,
    /// Directory for srvdns's data [default: ./srvdns-data]
    #[arg(long, env = "SRVDNS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve only `passing` instances, not `warning` ones [default: false]
    #[arg(long, env = "SRVDNS_ONLY_PASSING", num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub only_passing: Option<bool>,
    /// Bearer token required for writes to the HTTP API [default: none]
    #[arg(long, env = "SRVDNS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Require a token for reads too (all but GET /v1/health) [default: false]
    #[arg(long, env = "SRVDNS_TOKEN_READS", num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub token_reads: Option<bool>,
    /// TOML file of per-service write tokens (see examples/tokens.toml) [default: none]
    #[arg(long, env = "SRVDNS_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Allow the HTTP API on a non-loopback address without any token [default: false]
    #[arg(long, env = "SRVDNS_INSECURE_HTTP", num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub insecure_http: Option<bool>,
    /// PEM certificate chain: serve the HTTP API over TLS (with --tls-key) [default: plain]
    #[arg(long, env = "SRVDNS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "SRVDNS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Largest HTTP request body [default: 262144]
    #[arg(long, env = "SRVDNS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most checks per instance [default: 16]
    #[arg(long, env = "SRVDNS_MAX_CHECKS", value_name = "N")]
    pub max_checks: Option<usize>,
    /// Most tags per instance [default: 64]
    #[arg(long, env = "SRVDNS_MAX_TAGS", value_name = "N")]
    pub max_tags: Option<usize>,
    /// Longest tag [default: 255]
    #[arg(long, env = "SRVDNS_MAX_TAG_BYTES", value_name = "BYTES")]
    pub max_tag_bytes: Option<usize>,
    /// Most meta entries per instance [default: 64]
    #[arg(long, env = "SRVDNS_MAX_META", value_name = "N")]
    pub max_meta: Option<usize>,
    /// Longest meta key [default: 128]
    #[arg(long, env = "SRVDNS_MAX_META_KEY_BYTES", value_name = "BYTES")]
    pub max_meta_key_bytes: Option<usize>,
    /// Longest meta value [default: 512]
    #[arg(long, env = "SRVDNS_MAX_META_VALUE_BYTES", value_name = "BYTES")]
    pub max_meta_value_bytes: Option<usize>,
    /// Most instances of one service [default: 10000]
    #[arg(long, env = "SRVDNS_MAX_INSTANCES_PER_SERVICE", value_name = "N")]
    pub max_instances_per_service: Option<usize>,
    /// Most instances in all [default: 100000]
    #[arg(long, env = "SRVDNS_MAX_INSTANCES", value_name = "N")]
    pub max_instances: Option<usize>,
    /// Longest an HTTP request may take, headers and body included (blocking reads: plus
    /// their wait) [default: 30s]
    #[arg(long, env = "SRVDNS_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<humantime::Duration>,
    /// HTTP requests handled at once; more get 503 [default: 1024]
    #[arg(long, env = "SRVDNS_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub max_concurrent_requests: Option<usize>,
    /// Open HTTP connections at most [default: 4096]
    #[arg(long, env = "SRVDNS_MAX_HTTP_CONNECTIONS", value_name = "N")]
    pub max_http_connections: Option<usize>,
    /// DNS over TCP: close a connection idle this long [default: 10s]
    #[arg(long, env = "SRVDNS_TCP_IDLE_TIMEOUT", value_name = "DURATION")]
    pub tcp_idle_timeout: Option<humantime::Duration>,
    /// DNS over TCP: open connections at most [default: 512]
    #[arg(long, env = "SRVDNS_MAX_TCP_CONNECTIONS", value_name = "N")]
    pub max_tcp_connections: Option<usize>,
    /// DNS over TCP: queries per connection at most [default: 1000]
    #[arg(long, env = "SRVDNS_MAX_TCP_QUERIES", value_name = "N")]
    pub max_tcp_queries: Option<usize>,
    /// UDP response-rate limit: responses a second per source prefix, 0 = off [default: 1000]
    #[arg(long, env = "SRVDNS_RRL_RATE", value_name = "N")]
    pub rrl_rate: Option<u32>,
    /// UDP response-rate limit: burst per prefix [default: 2 × --rrl-rate]
    #[arg(long, env = "SRVDNS_RRL_BURST", value_name = "N")]
    pub rrl_burst: Option<u32>,
    /// Every Nth limited response is sent truncated (TC), the rest dropped; 0 drops all
    /// [default: 1]
    #[arg(long, env = "SRVDNS_RRL_SLIP", value_name = "N")]
    pub rrl_slip: Option<u32>,
    /// IPv4 prefix length sources are counted by [default: 24]
    #[arg(long, env = "SRVDNS_RRL_IPV4_PREFIX", value_name = "BITS")]
    pub rrl_ipv4_prefix: Option<u8>,
    /// IPv6 prefix length sources are counted by [default: 56]
    #[arg(long, env = "SRVDNS_RRL_IPV6_PREFIX", value_name = "BITS")]
    pub rrl_ipv6_prefix: Option<u8>,
    /// Rate-limit loopback sources too [default: false]
    #[arg(long, env = "SRVDNS_RRL_LOOPBACK", num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub rrl_loopback: Option<bool>,
    /// Cap on A/AAAA/SRV records per answer (a weighted random subset) [default: no cap]
    #[arg(long, env = "SRVDNS_MAX_ANSWERS", value_name = "N")]
    pub max_answers: Option<usize>,
    /// Log format [default: plain]
    #[arg(long, env = "SRVDNS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// UDP worker threads, each with its own socket [default: one per CPU]
    #[arg(long, env = "SRVDNS_DNS_WORKERS", value_name = "N")]
    pub dns_workers: Option<usize>,
    /// Where the registry lives: `embedded` (a file in the data dir) or `etcd` (shared by
    /// several servers, see docs/cluster.md) [default: embedded]
    #[arg(long, env = "SRVDNS_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// etcd client URLs, comma-separated (`http://…` or `https://…`) [default: none]
    #[arg(
        long,
        env = "SRVDNS_ETCD_ENDPOINTS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix of the registry in etcd [default: /srvdns/]
    #[arg(long, env = "SRVDNS_ETCD_PREFIX", value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// etcd user (with --etcd-password) [default: none]
    #[arg(long, env = "SRVDNS_ETCD_USER", value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// etcd password [default: none]
    #[arg(long, env = "SRVDNS_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) that signs the etcd servers' certificates [default: the system's]
    #[arg(long, env = "SRVDNS_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd, with --etcd-key-file [default: none]
    #[arg(long, env = "SRVDNS_ETCD_CERT_FILE", value_name = "FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for etcd [default: none]
    #[arg(long, env = "SRVDNS_ETCD_KEY_FILE", value_name = "FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// TTL of the lease that makes one server the one running health checks; it bounds the
    /// handover when that server dies [default: 5s]
    #[arg(long, env = "SRVDNS_ETCD_LEASE_TTL", value_name = "DURATION")]
    pub etcd_lease_ttl: Option<humantime::Duration>,
    /// Check the configuration, the zone files and the data directory's store, print what
    /// would be served, and exit (0 when all is well) without opening any socket
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML configuration file: the same options as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dns_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub domain: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub negative_ttl: Option<Duration>,
    pub zones: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub only_passing: Option<bool>,
    pub token: Option<String>,
    pub token_reads: Option<bool>,
    pub token_file: Option<PathBuf>,
    pub insecure_http: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub max_checks: Option<usize>,
    pub max_tags: Option<usize>,
    pub max_tag_bytes: Option<usize>,
    pub max_meta: Option<usize>,
    pub max_meta_key_bytes: Option<usize>,
    pub max_meta_value_bytes: Option<usize>,
    pub max_instances_per_service: Option<usize>,
    pub max_instances: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub request_timeout: Option<Duration>,
    pub max_concurrent_requests: Option<usize>,
    pub max_http_connections: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub tcp_idle_timeout: Option<Duration>,
    pub max_tcp_connections: Option<usize>,
    pub max_tcp_queries: Option<usize>,
    pub rrl_rate: Option<u32>,
    pub rrl_burst: Option<u32>,
    pub rrl_slip: Option<u32>,
    pub rrl_ipv4_prefix: Option<u8>,
    pub rrl_ipv6_prefix: Option<u8>,
    pub rrl_loopback: Option<bool>,
    pub max_answers: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub dns_workers: Option<usize>,
    pub store: Option<StoreKind>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_prefix: Option<String>,
    pub etcd_user: Option<String>,
    pub etcd_password: Option<String>,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    pub etcd_lease_ttl: Option<Duration>,
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
    }
}

/// Where static zones come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZonesSource {
    /// `zones/` in the working directory, used when it exists.
    DefaultDir,
    /// A directory the user named; it must exist.
    Dir(PathBuf),
    /// No static zones.
    None,
}

/// How to reach etcd (used with [`StoreKind::Etcd`]).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key srvdns writes starts with it.
    pub prefix: String,
    /// User name and password.
    pub user: Option<(String, String)>,
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub lease_ttl: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: String::from("/srvdns/"),
            user: None,
            ca_file: None,
            identity: None,
            lease_ttl: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for EtcdConfig {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("ca_file", &self.ca_file)
            .field("identity", &self.identity)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// The validated configuration of `srvdns serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub dns_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Lowercase, fully qualified.
    pub domain: Name,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub zones: ZonesSource,
    /// `None`: memory only.
    pub data_dir: Option<PathBuf>,
    pub only_passing: bool,
    /// The token that may do anything on the HTTP API (`--token`).
    pub token: Option<String>,
    /// Reads need a token too (`--token-reads`).
    pub token_reads: bool,
    /// Per-service write tokens (`--token-file`), loaded and checked.
    pub token_file: Option<TokenFile>,
    /// Allow a non-loopback HTTP address without any token (`--insecure-http`).
    pub insecure_http: bool,
    /// Serve the HTTP API over TLS with these PEM files.
    pub tls: Option<TlsFiles>,
    /// What one registration may carry (checks, tags, meta, ports).
    pub limits: Limits,
    /// How many instances the registry holds.
    pub instance_limits: InstanceLimits,
    /// HTTP body size, timeouts, concurrency, connections.
    pub http_limits: HttpLimits,
    /// DNS over TCP: idle timeout, connections, queries per connection.
    pub tcp_limits: TcpLimits,
    /// DNS over UDP: response-rate limiting.
    pub rrl: RrlConfig,
    pub max_answers: Option<usize>,
    pub log_format: LogFormat,
    /// UDP worker threads.
    pub dns_workers: usize,
    pub store: StoreKind,
    pub etcd: EtcdConfig,
}

/// The certificate chain and key of the HTTP API's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dns_listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8500)),
            domain: Name::from_ascii("service.local.").unwrap_or_default(),
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(5),
            zones: ZonesSource::DefaultDir,
            data_dir: Some(PathBuf::from("srvdns-data")),
            only_passing: false,
            token: None,
            token_reads: false,
            token_file: None,
            insecure_http: false,
            tls: None,
            limits: Limits::default(),
            instance_limits: InstanceLimits::default(),
            http_limits: HttpLimits::default(),
            tcp_limits: TcpLimits::default(),
            rrl: RrlConfig::default(),
            max_answers: None,
            log_format: LogFormat::Plain,
            dns_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            store: StoreKind::Embedded,
            etcd: EtcdConfig::default(),
        }
    }
}

/// A configuration that cannot be used; says which flag or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("--{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error("--token-file {}: {message}", path.display())]
    TokenFile { path: PathBuf, message: String },
}

impl Config {
    /// Resolves flags over the config file over defaults, and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = Self::default();
        let domain = args.domain.or(file.domain);
        let etcd = EtcdConfig {
            endpoints: args
                .etcd_endpoints
                .or(file.etcd_endpoints)
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: args
                .etcd_prefix
                .or(file.etcd_prefix)
                .unwrap_or(defaults.etcd.prefix.clone()),
            user: match (
                args.etcd_user.or(file.etcd_user),
                args.etcd_password.or(file.etcd_password),
            ) {
                (Some(user), Some(password)) => Some((user, password)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        flag: "etcd-password",
                        message: "--etcd-user needs --etcd-password".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        flag: "etcd-user",
                        message: "--etcd-password needs --etcd-user".into(),
                    });
                }
            },
            ca_file: args.etcd_ca_file.or(file.etcd_ca_file),
            identity: match (
                args.etcd_cert_file.or(file.etcd_cert_file),
                args.etcd_key_file.or(file.etcd_key_file),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        flag: "etcd-key-file",
                        message: "--etcd-cert-file needs --etcd-key-file".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        flag: "etcd-cert-file",
                        message: "--etcd-key-file needs --etcd-cert-file".into(),
                    });
                }
            },
            lease_ttl: args
                .etcd_lease_ttl
                .map(Into::into)
                .or(file.etcd_lease_ttl)
                .unwrap_or(defaults.etcd.lease_ttl),
        };
        let token_file = match args.token_file.or(file.token_file) {
            Some(path) => {
                Some(
                    TokenFile::load(&path).map_err(|message| ConfigError::TokenFile {
                        path: path.clone(),
                        message,
                    })?,
                )
            }
            None => None,
        };
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    flag: "tls-cert",
                    message: "needs --tls-key too".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "tls-key",
                    message: "needs --tls-cert too".into(),
                });
            }
        };
        let dl = defaults.limits;
        let limits = Limits {
            max_checks: args.max_checks.or(file.max_checks).unwrap_or(dl.max_checks),
            max_tags: args.max_tags.or(file.max_tags).unwrap_or(dl.max_tags),
            max_tag_bytes: args
                .max_tag_bytes
                .or(file.max_tag_bytes)
                .unwrap_or(dl.max_tag_bytes),
            max_meta: args.max_meta.or(file.max_meta).unwrap_or(dl.max_meta),
            max_meta_key_bytes: args
                .max_meta_key_bytes
                .or(file.max_meta_key_bytes)
                .unwrap_or(dl.max_meta_key_bytes),
            max_meta_value_bytes: args
                .max_meta_value_bytes
                .or(file.max_meta_value_bytes)
                .unwrap_or(dl.max_meta_value_bytes),
            max_ports: dl.max_ports,
        };
        let di = defaults.instance_limits;
        let instance_limits = InstanceLimits {
            per_service: args
                .max_instances_per_service
                .or(file.max_instances_per_service)
                .unwrap_or(di.per_service),
            total: args
                .max_instances
                .or(file.max_instances)
                .unwrap_or(di.total),
        };
        let dh = defaults.http_limits;
        let http_limits = HttpLimits {
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(dh.max_body_bytes),
            request_timeout: args
                .request_timeout
                .map(Into::into)
                .or(file.request_timeout)
                .unwrap_or(dh.request_timeout),
            max_concurrent_requests: args
                .max_concurrent_requests
                .or(file.max_concurrent_requests)
                .unwrap_or(dh.max_concurrent_requests),
            max_connections: args
                .max_http_connections
                .or(file.max_http_connections)
                .unwrap_or(dh.max_connections),
        };
        let dt = defaults.tcp_limits;
        let tcp_limits = TcpLimits {
            idle_timeout: args
                .tcp_idle_timeout
                .map(Into::into)
                .or(file.tcp_idle_timeout)
                .unwrap_or(dt.idle_timeout),
            max_connections: args
                .max_tcp_connections
                .or(file.max_tcp_connections)
                .unwrap_or(dt.max_connections),
            max_queries_per_connection: args
                .max_tcp_queries
                .or(file.max_tcp_queries)
                .unwrap_or(dt.max_queries_per_connection),
        };
        let dr = defaults.rrl;
        let rrl_rate = args.rrl_rate.or(file.rrl_rate).unwrap_or(dr.rate);
        let rrl = RrlConfig {
            rate: rrl_rate,
            burst: args
                .rrl_burst
                .or(file.rrl_burst)
                .unwrap_or(rrl_rate.saturating_mul(2)),
            slip: args.rrl_slip.or(file.rrl_slip).unwrap_or(dr.slip),
            ipv4_prefix: args
                .rrl_ipv4_prefix
                .or(file.rrl_ipv4_prefix)
                .unwrap_or(dr.ipv4_prefix),
            ipv6_prefix: args
                .rrl_ipv6_prefix
                .or(file.rrl_ipv6_prefix)
                .unwrap_or(dr.ipv6_prefix),
            limit_loopback: args
                .rrl_loopback
                .or(file.rrl_loopback)
                .unwrap_or(dr.limit_loopback),
        };
        let config = Self {
            dns_listen: args
                .dns_listen
                .or(file.dns_listen)
                .unwrap_or(defaults.dns_listen),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or(defaults.http_listen),
            domain: match domain {
                Some(domain) => parse_domain(&domain)?,
                None => defaults.domain,
            },
            ttl: args
                .ttl
                .map(Into::into)
                .or(file.ttl)
                .unwrap_or(defaults.ttl),
            negative_ttl: args
                .negative_ttl
                .map(Into::into)
                .or(file.negative_ttl)
                .unwrap_or(defaults.negative_ttl),
            zones: match args.zones.or(file.zones) {
                Some(dir) if dir.as_os_str() == "none" => ZonesSource::None,
                Some(dir) => ZonesSource::Dir(dir),
                None => ZonesSource::DefaultDir,
            },
            data_dir: match args.data_dir.or(file.data_dir) {
                Some(dir) if dir.as_os_str() == "none" => None,
                Some(dir) => Some(dir),
                None => defaults.data_dir,
            },
            only_passing: args.only_passing.or(file.only_passing).unwrap_or(false),
            token: args.token.or(file.token).filter(|t| !t.is_empty()),
            token_reads: args.token_reads.or(file.token_reads).unwrap_or(false),
            token_file,
            insecure_http: args.insecure_http.or(file.insecure_http).unwrap_or(false),
            tls,
            limits,
            instance_limits,
            http_limits,
            tcp_limits,
            rrl,
            max_answers: args.max_answers.or(file.max_answers),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            dns_workers: args
                .dns_workers
                .or(file.dns_workers)
                .unwrap_or(defaults.dns_workers),
            store: args.store.or(file.store).unwrap_or(defaults.store),
            etcd,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |flag, message: &str| ConfigError::Invalid {
            flag,
            message: message.to_owned(),
        };
        if self.ttl.as_secs() > u64::from(u32::MAX >> 1) {
            return Err(invalid("ttl", "must be under 68 years (RFC 2181 §8)"));
        }
        if self.negative_ttl.as_secs() > 3 * 3600 {
            return Err(invalid("negative-ttl", "must be at most 3h (RFC 2308 §5)"));
        }
        if self.dns_workers == 0 || self.dns_workers > 256 {
            return Err(invalid("dns-workers", "must be between 1 and 256"));
        }
        if self.max_answers == Some(0) {
            return Err(invalid("max-answers", "must be at least 1"));
        }
        if self.store == StoreKind::Etcd {
            if !cfg!(feature = "etcd") {
                return Err(invalid(
                    "store",
                    "this srvdns was built without etcd support: build it with \
                     `cargo build --release --features etcd` (needs protoc)",
                ));
            }
            if self.etcd.endpoints.is_empty() {
                return Err(invalid(
                    "etcd-endpoints",
                    "--store etcd needs at least one endpoint (http://127.0.0.1:2379,…)",
                ));
            }
            if let Some(bad) = self
                .etcd
                .endpoints
                .iter()
                .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                return Err(invalid(
                    "etcd-endpoints",
                    &format!("{bad:?} is not an http:// or https:// URL"),
                ));
            }
            if self.etcd.prefix.is_empty() {
                return Err(invalid("etcd-prefix", "must not be empty"));
            }
            if self.etcd.lease_ttl < Duration::from_secs(2) {
                return Err(invalid(
                    "etcd-lease-ttl",
                    "must be at least 2s (etcd's shortest lease)",
                ));
            }
        }
        let has_token = self.token.is_some() || self.token_file.is_some();
        if !self.http_listen.ip().is_loopback() && !has_token && !self.insecure_http {
            return Err(invalid(
                "http-listen",
                &format!(
                    "{} is not a loopback address, and no --token or --token-file is set: \
                     anyone who can reach it could register, change and deregister services. \
                     Set a token (and --tls-cert/--tls-key), or pass --insecure-http if every \
                     client that can reach this address is trusted",
                    self.http_listen
                ),
            ));
        }
        if self.token_reads && !has_token {
            return Err(invalid(
                "token-reads",
                "needs --token or --token-file: no token could ever be accepted",
            ));
        }
        let at_least_one = [
            ("max-body-bytes", self.http_limits.max_body_bytes),
            (
                "max-concurrent-requests",
                self.http_limits.max_concurrent_requests,
            ),
            ("max-http-connections", self.http_limits.max_connections),
            (
                "max-instances-per-service",
                self.instance_limits.per_service,
            ),
            ("max-instances", self.instance_limits.total),
            ("max-tcp-connections", self.tcp_limits.max_connections),
            (
                "max-tcp-queries",
                self.tcp_limits.max_queries_per_connection,
            ),
            ("max-tag-bytes", self.limits.max_tag_bytes),
            ("max-meta-key-bytes", self.limits.max_meta_key_bytes),
        ];
        for (flag, value) in at_least_one {
            if value == 0 {
                return Err(invalid(flag, "must be at least 1"));
            }
        }
        if self.http_limits.request_timeout.is_zero() {
            return Err(invalid("request-timeout", "must be more than 0"));
        }
        if self.tcp_limits.idle_timeout.is_zero() {
            return Err(invalid("tcp-idle-timeout", "must be more than 0"));
        }
        if self.rrl.rate > 0 && self.rrl.burst == 0 {
            return Err(invalid("rrl-burst", "must be at least 1"));
        }
        if !(1..=32).contains(&self.rrl.ipv4_prefix) {
            return Err(invalid("rrl-ipv4-prefix", "must be 1-32"));
        }
        if !(1..=128).contains(&self.rrl.ipv6_prefix) {
            return Err(invalid("rrl-ipv6-prefix", "must be 1-128"));
        }
        if let ZonesSource::Dir(dir) = &self.zones
            && !dir.is_dir()
        {
            return Err(invalid(
                "zones",
                &format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(())
    }

    /// The directory to load static zones from, if any.
    pub fn zones_dir(&self) -> Option<&Path> {
        match &self.zones {
            ZonesSource::DefaultDir => Some(Path::new("zones")).filter(|dir| dir.is_dir()),
            ZonesSource::Dir(dir) => Some(dir),
            ZonesSource::None => None,
        }
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    toml::from_str(&text).map_err(|e| error(e.to_string()))
}

/// Parses a domain: a fully qualified, lowercase name short enough to leave room for
/// `<addr>.addr.` and service labels below it.
pub fn parse_domain(raw: &str) -> Result<Name, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        flag: "domain",
        message,
    };
    let trimmed = raw.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(invalid("the root domain cannot be served".into()));
    }
    let name = Name::from_ascii(format!("{trimmed}."))
        .map_err(|e| invalid(format!("{raw:?} is not a domain name: {e}")))?
        .to_lowercase();
    if name.len() > 200 {
        return Err(invalid(format!("{raw:?} is longer than 200 characters")));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("srvdns-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("srvdns.toml");
        std::fs::write(
            &path,
            "domain = \"Service.Consul\"\nttl = \"30s\"\nonly_passing = true\n",
        )
        .unwrap();
        let config = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            ttl: Some("10s".parse().unwrap()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.domain.to_string(), "service.consul.");
        assert_eq!(config.ttl, Duration::from_secs(10));
        assert!(config.only_passing);
        assert_eq!(config.dns_listen, "127.0.0.1:8600".parse().unwrap());

        std::fs::write(&path, "tll = \"30s\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("srvdns.toml") && err.contains("tll"), "{err}");
    }

    #[test]
    fn etcd_options_come_from_flags_and_the_file() {
        let dir = std::env::temp_dir().join(format!("srvdns-config-etcd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("srvdns.toml");
        std::fs::write(
            &path,
            "store = \"etcd\"\netcd_endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n\
             etcd_lease_ttl = \"3s\"\n",
        )
        .unwrap();
        let resolved = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            etcd_prefix: Some("/dns/".into()),
            ..ServeArgs::default()
        });
        if !cfg!(feature = "etcd") {
            let err = resolved.unwrap_err().to_string();
            assert!(err.contains("--store") && err.contains("etcd"), "{err}");
            return;
        }
        let config = resolved.unwrap();
        assert_eq!(config.store, StoreKind::Etcd);
        assert_eq!(config.etcd.endpoints.len(), 2);
        assert_eq!(config.etcd.prefix, "/dns/");
        assert_eq!(config.etcd.lease_ttl, Duration::from_secs(3));
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            etcd_user: Some("srvdns".into()),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--etcd-password"), "{err}");
    }

    #[test]
    fn domains_are_validated() {
        assert_eq!(
            parse_domain("service.local").unwrap().to_string(),
            "service.local."
        );
        assert!(parse_domain(".").is_err());
        assert!(parse_domain("a..b").is_err());
    }
}
