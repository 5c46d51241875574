//! `srvdns sidecar`: runs next to one app instance and keeps its registration honest.
//!
//! - It registers the instance with a `ttl` check (three intervals long by default), probes
//!   the app locally every interval with the health engine's [`Prober`], heartbeats while the
//!   probe passes and reports `warning`/`critical` with the probe's output when it does not.
//! - When the registry is down or restarts, it retries with capped exponential backoff and
//!   jitter, registers again when a heartbeat answers 404, and logs each state change once.
//! - On SIGTERM or SIGINT it puts the instance in maintenance (out of DNS at once), waits
//!   `--drain`, deregisters, and exits 0. A second signal cuts the drain short.
//! - With `-- COMMAND ARGS…` it runs the app as its child: the shutdown signal reaches the app
//!   only after the drain and the deregistration, and the sidecar exits with the app's status;
//!   if the app exits on its own, the sidecar deregisters and exits with that status.
//!   SIGHUP, SIGUSR1 and SIGUSR2 are passed on to the app at once.
//!
//! The decisions live in `machine.rs` (pure, unit-tested); this module is the I/O around them:
//! probes, HTTP requests, timers, signals and the child process. The sidecar talks to the
//! registry only through the public HTTP API ([`Client`]), like any other client.

mod child;
mod machine;

use std::ffi::OsString;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::{RegistryArgs, parse_key_value};
use crate::client::{Check, Client, ClientError, Registration};
use crate::config::LogFormat;
use crate::health::probe::{Prober, Target};
use crate::health::transitions::Outcome;
use crate::registry::model::{InstanceId, ServiceName, Status};
use crate::signals::{Shutdown, ShutdownSignals};
use child::{App, PassedSignals};
use machine::{Answer, Backoff, Event, Machine, Probe, Request, Step};

/// Retries against an unavailable registry: 250 ms, doubling, at most 10 s (with jitter).
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(250),
    cap: Duration::from_secs(10),
};

/// The longest each request of the shutdown sequence may take: a hung registry must not hold
/// the app's shutdown up for long.
const SHUTDOWN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most check output the registry keeps.
const MAX_OUTPUT_BYTES: usize = 4096;

/// `srvdns sidecar` flags. Each also reads an `SRVDNS_*` environment variable (lists:
/// comma-separated).
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The service to register the app in
    #[arg(long, env = "SRVDNS_SERVICE")]
    pub service: String,
    /// The instance ID
    #[arg(long, env = "SRVDNS_ID")]
    pub id: String,
    /// The app's address as clients should reach it [default: the address the sidecar's
    /// requests come from]
    #[arg(long, env = "SRVDNS_ADDRESS")]
    pub address: Option<String>,
    /// The app's port
    #[arg(long, env = "SRVDNS_PORT")]
    pub port: u16,
    /// Probe the app with an HTTP GET of this URL (2xx passing, 429 warning, else critical)
    #[arg(long, env = "SRVDNS_CHECK_HTTP", value_name = "URL")]
    pub check_http: Option<String>,
    /// Probe the app by connecting to HOST:PORT
    #[arg(long, env = "SRVDNS_CHECK_TCP", value_name = "HOST:PORT")]
    pub check_tcp: Option<String>,
    /// How often to probe the app and heartbeat
    #[arg(
        long,
        env = "SRVDNS_INTERVAL",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub interval: humantime::Duration,
    /// Timeout of each probe [default: the interval, at most 5s]
    #[arg(long, env = "SRVDNS_TIMEOUT", value_name = "DURATION")]
    pub timeout: Option<humantime::Duration>,
    /// The ttl of the registered check: without a heartbeat for this long, the registry
    /// takes the instance out of DNS [default: 3 × the interval]
    #[arg(long, env = "SRVDNS_CHECK_TTL", value_name = "DURATION")]
    pub check_ttl: Option<humantime::Duration>,
    /// A tag (repeatable)
    #[arg(
        long = "tag",
        env = "SRVDNS_TAGS",
        value_delimiter = ',',
        value_name = "TAG"
    )]
    pub tags: Vec<String>,
    /// Metadata as KEY=VALUE (repeatable)
    #[arg(long = "meta", env = "SRVDNS_META", value_delimiter = ',', value_name = "KEY=VALUE",
          value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// SRV weight [default: 1]
    #[arg(long, env = "SRVDNS_WEIGHT")]
    pub weight: Option<u16>,
    /// SRV priority [default: 0]
    #[arg(long, env = "SRVDNS_PRIORITY")]
    pub priority: Option<u16>,
    /// On SIGTERM/SIGINT, how long to stay in maintenance (out of DNS, still serving) before
    /// deregistering and stopping the app
    #[arg(
        long,
        env = "SRVDNS_DRAIN",
        default_value = "5s",
        value_name = "DURATION"
    )]
    pub drain: humantime::Duration,
    /// Log format [default: plain]
    #[arg(long, env = "SRVDNS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// The app to run as a child, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Why the sidecar stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("--{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot set up the HTTP client for probes: {0}")]
    Prober(reqwest::Error),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the registry refused the instance: {0}")]
    Refused(String),
}

impl SidecarError {
    /// The process exit code: 2 for bad flags, 127/126 when the app cannot be started (as
    /// shells do), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Invalid { .. } | Self::Client(ClientError::BadUrl { .. }) => {
                crate::cli::exit::USAGE
            }
            Self::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                child::exit::NOT_FOUND
            }
            Self::Spawn { .. } => child::exit::CANNOT_RUN,
            _ => crate::cli::exit::FAILURE,
        }
    }
}

/// The validated settings.
#[derive(Debug, Clone)]
struct Settings {
    service: String,
    id: String,
    registration: Registration,
    check_ttl: Duration,
    targets: Vec<Target>,
    interval: Duration,
    timeout: Duration,
    drain: Duration,
    command: Vec<OsString>,
}

impl Settings {
    fn from_args(args: &SidecarArgs) -> Result<Self, SidecarError> {
        let invalid = |flag, message: String| SidecarError::Invalid { flag, message };
        let service = ServiceName::try_from(args.service.as_str())
            .map_err(|e| invalid("service", e.message))?;
        let id = InstanceId::try_from(args.id.as_str()).map_err(|e| invalid("id", e.message))?;
        let interval = Duration::from(args.interval);
        if interval.is_zero() {
            return Err(invalid("interval", "must be more than 0".into()));
        }
        let timeout = args
            .timeout
            .map_or(interval.min(Duration::from_secs(5)), Duration::from);
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be more than 0".into()));
        }
        let check_ttl = args.check_ttl.map_or(interval * 3, Duration::from);
        if check_ttl <= interval {
            return Err(invalid(
                "check-ttl",
                format!(
                    "must be longer than --interval ({}), or every late heartbeat takes the \
                     instance out of DNS",
                    humantime::format_duration(interval)
                ),
            ));
        }
        let mut targets = Vec::new();
        if let Some(url) = &args.check_http {
            match reqwest::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => {
                    return Err(invalid(
                        "check-http",
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            targets.push(Target::Http {
                url: url.clone(),
                method: "GET".into(),
                headers: Vec::new(),
                tls_skip_verify: false,
            });
        }
        if let Some(address) = &args.check_tcp {
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(invalid(
                    "check-tcp",
                    format!("{address:?} is not HOST:PORT"),
                ));
            }
            targets.push(Target::Tcp {
                address: address.clone(),
            });
        }
        Ok(Self {
            service: service.as_str().to_owned(),
            id: id.as_str().to_owned(),
            registration: Registration {
                address: args.address.clone().filter(|a| !a.is_empty()),
                port: args.port,
                priority: args.priority,
                weight: args.weight,
                tags: args
                    .tags
                    .iter()
                    .filter(|t| !t.is_empty())
                    .cloned()
                    .collect(),
                meta: args.meta.iter().cloned().collect(),
                checks: Vec::new(),
            },
            check_ttl,
            targets,
            interval,
            timeout,
            drain: args.drain.into(),
            command: args.command.clone(),
        })
    }

    /// The registration, with the ttl check starting at `status`.
    fn registration(&self, status: Status) -> Registration {
        Registration {
            checks: vec![Check::Ttl {
                ttl: self.check_ttl,
                status: Some(status),
                deregister_after: None,
            }],
            ..self.registration.clone()
        }
    }
}

/// Why the sidecar stopped keeping the registration.
enum Ending {
    Signal(Shutdown),
    AppExited(std::io::Result<std::process::ExitStatus>),
    Refused(String),
}

/// Runs the sidecar until a shutdown signal (or the app's exit); returns the exit code.
pub async fn run(args: SidecarArgs) -> Result<u8, SidecarError> {
    // Signals first: from here on SIGTERM means "drain", never "die half-started".
    let mut signals = ShutdownSignals::install();
    let mut passed = (!args.command.is_empty()).then(PassedSignals::install);
    let settings = Settings::from_args(&args)?;
    let client = args.registry.client()?;
    let prober = Prober::new().map_err(SidecarError::Prober)?;
    let mut app = match settings.command.is_empty() {
        true => None,
        false => Some(
            App::spawn(&settings.command).map_err(|source| SidecarError::Spawn {
                program: settings.command[0].to_string_lossy().into_owned(),
                source,
            })?,
        ),
    };
    tracing::info!(
        service = %settings.service, instance = %settings.id, registry = %client.registry(),
        app = app.as_ref().map(|a| a.program.as_str()), pid = app.as_ref().and_then(App::id),
        interval = %humantime::format_duration(settings.interval),
        check_ttl = %humantime::format_duration(settings.check_ttl),
        "sidecar started"
    );
    let mut sidecar = Sidecar {
        settings,
        client,
        prober,
        machine: Machine::new(BACKOFF),
        maybe_registered: false,
    };
    let ending = sidecar
        .keep_registered(&mut signals, &mut app, &mut passed)
        .await;
    match ending {
        Ending::Signal(signal) => {
            tracing::info!(signal = signal.name(), "shutting down: draining");
            sidecar.drain_and_deregister(&mut signals).await;
            match app {
                Some(mut app) => {
                    tracing::info!(app = %app.program, signal = signal.name(), "stopping the app");
                    app.stop(signal);
                    Ok(wait_for_app(&mut app, &mut signals).await)
                }
                None => Ok(0),
            }
        }
        Ending::AppExited(status) => {
            let code = match status {
                Ok(status) => {
                    tracing::warn!(status = %status, "the app exited: deregistering");
                    child::exit_code(status)
                }
                Err(e) => {
                    tracing::error!(error = %e, "lost track of the app: deregistering");
                    crate::cli::exit::FAILURE
                }
            };
            sidecar.deregister().await;
            Ok(code)
        }
        Ending::Refused(message) => {
            tracing::error!(error = %message, "the registry refused the instance: stopping");
            if let Some(mut app) = app {
                app.stop(Shutdown::Terminate);
                wait_for_app(&mut app, &mut signals).await;
            }
            Err(SidecarError::Refused(message))
        }
    }
}

/// Waits for the app to exit, passing further shutdown signals on; returns its exit code.
async fn wait_for_app(app: &mut App, signals: &mut ShutdownSignals) -> u8 {
    loop {
        tokio::select! {
            status = app.wait() => {
                return match status {
                    Ok(status) => {
                        tracing::info!(status = %status, "the app exited");
                        child::exit_code(status)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "lost track of the app");
                        crate::cli::exit::FAILURE
                    }
                };
            }
            signal = signals.recv() => app.stop(signal),
        }
    }
}

/// Waits for the app's exit; never returns without an app.
async fn app_exit(app: &mut Option<App>) -> std::io::Result<std::process::ExitStatus> {
    match app {
        Some(app) => app.wait().await,
        None => std::future::pending().await,
    }
}

struct Sidecar {
    settings: Settings,
    client: Client,
    prober: Prober,
    machine: Machine,
    /// A registration was sent (its answer may not have arrived): the shutdown sequence must
    /// clean up.
    maybe_registered: bool,
}

impl Sidecar {
    /// Rounds of probe-and-report until a shutdown signal, the app's exit or a refusal.
    async fn keep_registered(
        &mut self,
        signals: &mut ShutdownSignals,
        app: &mut Option<App>,
        passed: &mut Option<PassedSignals>,
    ) -> Ending {
        let mut next_round = Instant::now();
        loop {
            let round = async {
                tokio::time::sleep_until(next_round).await;
                self.round().await
            };
            tokio::select! {
                result = round => match result {
                    Ok(next) => next_round = next,
                    Err(message) => return Ending::Refused(message),
                },
                signal = signals.recv() => return Ending::Signal(signal),
                status = app_exit(app) => return Ending::AppExited(status),
                signal = next_passed(passed) => {
                    if let Some(app) = app.as_mut() {
                        app.pass(signal);
                    }
                }
            }
        }
    }

    /// One round: probe the app, then the requests the machine asks for. Returns when the
    /// next round is due, or the refusal that ends the sidecar.
    async fn round(&mut self) -> Result<Instant, String> {
        let started = Instant::now();
        let probe = self.probe().await;
        let mut step = self.machine.probed(probe);
        loop {
            self.log_events();
            match step {
                Step::Send(request) => {
                    let answer = self.send(&request).await;
                    step = self.machine.answered(&request, answer, rand::random());
                }
                Step::WaitInterval => return Ok(started + self.settings.interval),
                Step::Backoff(delay) => {
                    tracing::debug!(delay = ?delay, "retrying after a pause");
                    return Ok(Instant::now() + delay);
                }
                Step::Stop(message) => return Err(message),
            }
        }
    }

    /// Probes every target; the worst outcome wins. No target: the app counts as healthy
    /// while it (and the sidecar) runs.
    async fn probe(&self) -> Probe {
        if self.settings.targets.is_empty() {
            return Probe {
                status: Status::Passing,
                output: "no local check".into(),
            };
        }
        let mut status = Status::Passing;
        let mut outputs = Vec::new();
        for target in &self.settings.targets {
            let result = self.prober.probe(target, self.settings.timeout).await;
            let this = match result.outcome {
                Outcome::Success => Status::Passing,
                Outcome::Warning => Status::Warning,
                Outcome::Failure => Status::Critical,
            };
            status = status.max(this);
            outputs.push(result.output);
        }
        Probe {
            status,
            output: truncate(outputs.join("; "), MAX_OUTPUT_BYTES),
        }
    }

    async fn send(&mut self, request: &Request) -> Answer {
        let (service, id) = (&self.settings.service, &self.settings.id);
        let result = match request {
            Request::Register { status } => {
                self.maybe_registered = true;
                let registration = self.settings.registration(*status);
                self.client
                    .register(service, id, &registration)
                    .await
                    .map(drop)
            }
            Request::Heartbeat => self.client.heartbeat(service, id).await.map(drop),
            Request::Report { status, output } => self
                .client
                .set_status(service, id, *status, output)
                .await
                .map(drop),
        };
        match result {
            Ok(()) => Answer::Ok,
            Err(ClientError::NotFound { message, .. }) => Answer::NotFound(message),
            Err(e) if e.is_transient() => Answer::Unavailable(e.to_string()),
            Err(e) => Answer::Refused(e.to_string()),
        }
    }

    /// One log line per state change.
    fn log_events(&mut self) {
        let (service, instance) = (&self.settings.service, &self.settings.id);
        for event in self.machine.take_events() {
            match event {
                Event::Registered { status } => tracing::info!(
                    %service, %instance, status = status.as_str(), "registered"
                ),
                Event::Lost => tracing::warn!(
                    %service, %instance,
                    "the registry does not know the instance (restarted?): registering again"
                ),
                Event::RegistryUnavailable { reason } => tracing::warn!(
                    %service, %instance, error = %reason,
                    "the registry is unavailable: retrying with backoff"
                ),
                Event::RegistryBack => {
                    tracing::info!(%service, %instance, "the registry answers again")
                }
                Event::AppStatus {
                    from: None,
                    to,
                    output,
                } => tracing::info!(
                    %service, %instance, status = to.as_str(), %output, "first probe of the app"
                ),
                Event::AppStatus {
                    from: Some(from),
                    to: Status::Passing,
                    output,
                } => tracing::info!(
                    %service, %instance, from = from.as_str(), to = "passing", %output,
                    "the app is healthy again"
                ),
                Event::AppStatus {
                    from: Some(from),
                    to,
                    output,
                } => tracing::warn!(
                    %service, %instance, from = from.as_str(), to = to.as_str(), %output,
                    "the app's health changed"
                ),
            }
        }
    }

    /// Maintenance on (out of DNS at once), wait `--drain` (cut short by a second signal),
    /// deregister.
    async fn drain_and_deregister(&mut self, signals: &mut ShutdownSignals) {
        if !self.maybe_registered {
            return;
        }
        let (service, id) = (&self.settings.service, &self.settings.id);
        let maintenance = tokio::time::timeout(
            SHUTDOWN_REQUEST_TIMEOUT,
            self.client
                .set_maintenance(service, id, Some("the sidecar is shutting down")),
        )
        .await;
        match maintenance {
            Ok(Ok(())) => {
                tracing::info!(%service, instance = %id, drain = %humantime::format_duration(self.settings.drain), "in maintenance: out of DNS");
            }
            Ok(Err(ClientError::NotFound { .. })) => {
                tracing::info!(%service, instance = %id, "the registry does not have the instance: nothing to drain");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%service, instance = %id, error = %e, "cannot put the instance in maintenance")
            }
            Err(_) => {
                tracing::warn!(%service, instance = %id, "cannot put the instance in maintenance: no answer in time")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(self.settings.drain) => {}
            signal = signals.recv() => {
                tracing::info!(signal = signal.name(), "second signal: cutting the drain short");
            }
        }
        self.deregister().await;
    }

    async fn deregister(&mut self) {
        if !self.maybe_registered {
            return;
        }
        let (service, id) = (&self.settings.service, &self.settings.id);
        let result = tokio::time::timeout(
            SHUTDOWN_REQUEST_TIMEOUT,
            self.client.deregister(service, id),
        )
        .await;
        match result {
            Ok(Ok(())) | Ok(Err(ClientError::NotFound { .. })) => {
                tracing::info!(%service, instance = %id, "deregistered");
            }
            Ok(Err(e)) => {
                tracing::warn!(%service, instance = %id, error = %e, "cannot deregister")
            }
            Err(_) => {
                tracing::warn!(%service, instance = %id, "cannot deregister: no answer in time")
            }
        }
        self.maybe_registered = false;
    }
}

async fn next_passed(passed: &mut Option<PassedSignals>) -> child::Passed {
    match passed {
        Some(passed) => passed.recv().await,
        None => std::future::pending().await,
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
