//! The app the sidecar runs in child mode (`srvdns sidecar … -- COMMAND ARGS…`): starting it,
//! passing signals on, and turning its exit into the sidecar's exit code.
//!
//! The child gets a process group of its own. A Ctrl-C in a terminal (or a signal sent to the
//! whole group) would otherwise reach the app at the same moment as the sidecar, and the app
//! would stop before the sidecar had drained it out of DNS — the one thing the sidecar is
//! there to prevent. Its stdin is closed for the same reason (a background group reading the
//! terminal would be stopped); stdout and stderr are the sidecar's.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};

use tokio::process::{Child, Command};

use crate::signals::Shutdown;

/// The app, running.
pub struct App {
    child: Child,
    /// The command, for log lines.
    pub program: String,
}

/// Exit codes when the app cannot be started, as shells use them.
pub mod exit {
    /// The command was not found.
    pub const NOT_FOUND: u8 = 127;
    /// The command was found but could not be run (permissions, not an executable).
    pub const CANNOT_RUN: u8 = 126;
}

impl App {
    /// Starts `command` (program and arguments).
    pub fn spawn(command: &[OsString]) -> std::io::Result<Self> {
        let Some((program, args)) = command.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no command given after --",
            ));
        };
        let mut process = Command::new(program);
        process.args(args).stdin(Stdio::null());
        #[cfg(unix)]
        process.process_group(0);
        let child = process.spawn()?;
        Ok(Self {
            child,
            program: program.to_string_lossy().into_owned(),
        })
    }

    /// The process ID, while the app runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the app to exit. Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends the app a shutdown signal (SIGTERM or SIGINT, the one the sidecar got).
    pub fn stop(&mut self, signal: Shutdown) {
        #[cfg(unix)]
        self.signal(match signal {
            Shutdown::Interrupt => nix::sys::signal::Signal::SIGINT,
            Shutdown::Terminate => nix::sys::signal::Signal::SIGTERM,
        });
        #[cfg(not(unix))]
        {
            let _ = signal;
            let _ = self.child.start_kill();
        }
    }

    /// Passes a signal on to the app.
    pub fn pass(&mut self, signal: Passed) {
        tracing::info!(app = %self.program, signal = ?signal, "passing a signal on to the app");
        #[cfg(unix)]
        self.signal(match signal {
            Passed::Hangup => nix::sys::signal::Signal::SIGHUP,
            Passed::User1 => nix::sys::signal::Signal::SIGUSR1,
            Passed::User2 => nix::sys::signal::Signal::SIGUSR2,
        });
    }

    /// Sends the app a signal, if it still runs.
    #[cfg(unix)]
    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let Some(pid) = self.id().and_then(|id| i32::try_from(id).ok()) else {
            return;
        };
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            tracing::warn!(app = %self.program, signal = %signal, error = %e, "cannot signal the app");
        }
    }
}

/// The sidecar's exit code for an app that exited with `status`: its code, or 128 + the
/// signal that killed it, as shells report it.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        // Exit codes are 0–255 on Unix; anything else (Windows) is clamped to "failure".
        return u8::try_from(code).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(1);
        }
    }
    1
}

/// Signals passed on to the app at once: the ones apps use for "reload" or "reopen logs",
/// which have nothing to do with the sidecar's own lifecycle.
pub struct PassedSignals {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    user1: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    user2: Option<tokio::signal::unix::Signal>,
}

impl PassedSignals {
    /// Starts listening for SIGHUP, SIGUSR1 and SIGUSR2. Only in child mode: otherwise the
    /// sidecar keeps their default actions.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use crate::signals::listen;
            use tokio::signal::unix::SignalKind;
            let why = "cannot pass a signal on to the app";
            Self {
                hangup: listen(SignalKind::hangup(), why),
                user1: listen(SignalKind::user_defined1(), why),
                user2: listen(SignalKind::user_defined2(), why),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next of these signals.
    pub async fn recv(&mut self) -> Passed {
        #[cfg(unix)]
        {
            use crate::signals::next;
            tokio::select! {
                _ = next(&mut self.hangup) => Passed::Hangup,
                _ = next(&mut self.user1) => Passed::User1,
                _ = next(&mut self.user2) => Passed::User2,
            }
        }
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

/// A signal the sidecar passes on to the app as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    Hangup,
    User1,
    User2,
}
