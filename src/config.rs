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
    /// Cap on A/AAAA/SRV records per answer (a weighted random subset) [default: no cap]
    #[arg(long, env = "SRVDNS_MAX_ANSWERS", value_name = "N")]
    pub max_answers: Option<usize>,
    /// Log format [default: plain]
    #[arg(long, env = "SRVDNS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
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
    pub max_answers: Option<usize>,
    pub log_format: Option<LogFormat>,
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
    pub token: Option<String>,
    pub max_answers: Option<usize>,
    /// Most checks one instance may have.
    pub max_checks: usize,
    pub log_format: LogFormat,
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
            max_answers: None,
            max_checks: 16,
            log_format: LogFormat::Plain,
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
            max_answers: args.max_answers.or(file.max_answers),
            max_checks: defaults.max_checks,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
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
        if self.max_answers == Some(0) {
            return Err(invalid("max-answers", "must be at least 1"));
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
    fn domains_are_validated() {
        assert_eq!(
            parse_domain("service.local").unwrap().to_string(),
            "service.local."
        );
        assert!(parse_domain(".").is_err());
        assert!(parse_domain("a..b").is_err());
    }
}
