//! The signals that stop srvdns's long-running commands (`serve`, `sidecar`): SIGINT and
//! SIGTERM.
//!
//! They are registered up front, before a command binds sockets or starts a child: once tokio
//! listens for a signal, its default action (killing the process) is off, so a signal that
//! arrives while the command is still starting is queued for [`ShutdownSignals::recv`] instead
//! of killing the process half-started.

/// Which shutdown signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what service managers and orchestrators send).
    Terminate,
}

impl Shutdown {
    /// The signal's conventional name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

/// SIGINT and SIGTERM, registered up front.
pub struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Starts listening. Needs a tokio runtime.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            let why = "cannot listen for a shutdown signal";
            Self {
                interrupt: listen(SignalKind::interrupt(), why),
                terminate: listen(SignalKind::terminate(), why),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next SIGINT or SIGTERM. Can be called again for the one after.
    pub async fn recv(&mut self) -> Shutdown {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = next(&mut self.interrupt) => Shutdown::Interrupt,
                _ = next(&mut self.terminate) => Shutdown::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Shutdown::Interrupt
        }
    }
}

/// Starts listening for `kind`; `None` (logged with `why`) when the system refuses.
#[cfg(unix)]
pub(crate) fn listen(
    kind: tokio::signal::unix::SignalKind,
    why: &'static str,
) -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(kind) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "{why}");
            None
        }
    }
}

/// The next delivery of a signal; never, for one that is not listened for.
#[cfg(unix)]
pub(crate) async fn next(stream: &mut Option<tokio::signal::unix::Signal>) {
    match stream {
        Some(stream) => {
            if stream.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
