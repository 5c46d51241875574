//! The `srvdns` command line: parses flags and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use srvdns::cli::{
    self, CommandError, DeregisterArgs, InstancesArgs, RegisterArgs, ServicesArgs, WatchArgs,
};
use srvdns::config::{Config, LogFormat, ServeArgs};
use srvdns::sidecar::SidecarArgs;
use tracing_subscriber::EnvFilter;

/// A service-discovery DNS server: register services over HTTP, find them with plain DNS.
#[derive(Parser)]
#[command(name = "srvdns", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: DNS authority for the service domain plus the HTTP registry API.
    Serve(Box<ServeArgs>),
    /// Register one local app and keep its registration honest: probe it, heartbeat, drain
    /// and deregister on SIGTERM; optionally run the app as a child (`-- COMMAND ARGS…`).
    Sidecar(SidecarArgs),
    /// List the registered services with their instance counts by status.
    Services(ServicesArgs),
    /// List the instances of a service: status, address, port, weight, last check output.
    Instances(InstancesArgs),
    /// Register (or replace) an instance.
    Register(RegisterArgs),
    /// Deregister an instance.
    Deregister(DeregisterArgs),
    /// Print the instances of a service, then one line per change as it happens.
    Watch(WatchArgs),
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    match cli.command {
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("srvdns: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Sidecar(args) => sidecar(args),
        Command::Services(args) => client(cli::services(&args, &mut out)),
        Command::Instances(args) => client(cli::instances(&args, &mut out)),
        Command::Register(args) => client(cli::register(&args, &mut out)),
        Command::Deregister(args) => client(cli::deregister(&args, &mut out)),
        Command::Watch(args) => client(cli::watch(&args, &mut out)),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let check_only = args.check_config;
    let config = Config::resolve(args)?;
    if check_only {
        let report = srvdns::serve::check_config(&config)?;
        print!("{report}");
        return Ok(());
    }
    init_logging(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(srvdns::serve::run(config))?;
    Ok(())
}

fn sidecar(args: SidecarArgs) -> ExitCode {
    init_logging(args.log_format.unwrap_or_default());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("srvdns sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(srvdns::sidecar::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("srvdns sidecar: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs a client command on a small runtime; its error becomes one line on stderr and its
/// exit code (see `srvdns::cli`).
fn client(command: impl Future<Output = Result<(), CommandError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("srvdns: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srvdns: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
