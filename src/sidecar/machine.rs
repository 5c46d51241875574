//! The sidecar's decisions, without I/O: what to send the registry after each local probe and
//! each answer, when to try again, and which state changes are worth one log line.
//!
//! The driver ([`super::run`]) feeds it probe results ([`Machine::probed`]) and the registry's
//! answers ([`Machine::answered`]) and carries out the [`Step`]s it returns; time and
//! randomness come in as arguments (the backoff's jitter), so every transition is a plain
//! unit test.
//!
//! The rules:
//! - Not registered yet (or the registry forgot the instance): register, with the probe's
//!   status as the `ttl` check's initial status, so an app that is not ready never shows up in
//!   DNS; then report the probe's output when it is not passing.
//! - Registered: heartbeat while the probe passes, report `warning`/`critical` with the
//!   probe's output when it does not.
//! - A 404 on a heartbeat or a report: the registry lost the instance (restarted, or removed
//!   it after `deregister_after`): register again at once — at most once per round, so a
//!   registry that keeps forgetting cannot make the sidecar spin.
//! - The registry unreachable, or answering 5xx/429: capped exponential backoff with jitter,
//!   then a new round (probe, then whatever the state calls for).
//! - Any other error answer (bad token, invalid registration): stop — retrying cannot fix it.
//! - Each change of the registry's reachability and of the app's health is one [`Event`].

use std::time::Duration;

use crate::registry::model::Status;

/// One local probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub status: Status,
    pub output: String,
}

/// A request to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Register (or replace) the instance; `status` is the ttl check's initial status.
    Register { status: Status },
    /// `PUT …/heartbeat`
    Heartbeat,
    /// `PUT …/status` with the probe's status and output.
    Report { status: Status, output: String },
}

/// How the registry answered a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// 404.
    NotFound(String),
    /// Unreachable, 5xx, 429: worth retrying later.
    Unavailable(String),
    /// Any other error answer: retrying will not help.
    Refused(String),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(Request),
    /// Done for this round: the next one starts an interval after this one started.
    WaitInterval,
    /// The registry is unavailable: start the next round after this long.
    Backoff(Duration),
    /// Give up: the registry refuses the instance.
    Stop(String),
}

/// A state change, logged once by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The registry accepted the registration (first time, or again after it was lost).
    Registered { status: Status },
    /// The registry answered 404 to a heartbeat or report.
    Lost,
    /// The registry stopped answering (first failure of a run).
    RegistryUnavailable { reason: String },
    /// The registry answers again.
    RegistryBack,
    /// The app's probe status changed (`from: None` for the first probe).
    AppStatus {
        from: Option<Status>,
        to: Status,
        output: String,
    },
}

/// Capped exponential backoff: `first`, doubling per consecutive failure, at most `cap`; the
/// delay is drawn from its upper half ("equal jitter"), so sidecars that lost the registry
/// together do not all come back in the same instant, yet none waits less than half the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (≥ 1); `jitter` in `[0, 1)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let step = self.first.saturating_mul(1u32 << doublings).min(self.cap);
        step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// The sidecar's state.
#[derive(Debug)]
pub struct Machine {
    backoff: Backoff,
    /// Does the registry (as far as we know) have the instance?
    registered: bool,
    /// Consecutive requests the registry did not answer.
    failures: u32,
    /// Consecutive rounds in which the registry lost the instance right after registering it.
    lost_in_a_row: u32,
    /// The last probe.
    app: Option<Probe>,
    /// Registered in the current round already (guards against a 404 loop).
    registered_this_round: bool,
    events: Vec<Event>,
}

impl Machine {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            registered: false,
            failures: 0,
            lost_in_a_row: 0,
            app: None,
            registered_this_round: false,
            events: Vec::new(),
        }
    }

    /// Whether the registry should have the instance: it accepted a registration and has not
    /// said it lost it since.
    #[cfg(test)]
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// A new round: the app was just probed.
    pub fn probed(&mut self, probe: Probe) -> Step {
        let from = self.app.as_ref().map(|p| p.status);
        if from != Some(probe.status) {
            self.events.push(Event::AppStatus {
                from,
                to: probe.status,
                output: probe.output.clone(),
            });
        }
        self.app = Some(probe);
        self.registered_this_round = false;
        Step::Send(self.request())
    }

    /// The registry answered `request`.
    pub fn answered(&mut self, request: &Request, answer: Answer, jitter: f64) -> Step {
        if !matches!(answer, Answer::Unavailable(_)) && self.failures > 0 {
            // Any answer, even a 404, means the registry is back.
            self.events.push(Event::RegistryBack);
            self.failures = 0;
        }
        match answer {
            Answer::Ok => {
                match request {
                    Request::Register { status } => {
                        self.registered = true;
                        self.registered_this_round = true;
                        self.events.push(Event::Registered { status: *status });
                        match &self.app {
                            // Registration counted as the first heartbeat; only a failing
                            // probe has more to say (its output).
                            Some(probe) if probe.status != Status::Passing => {
                                Step::Send(self.report(probe))
                            }
                            _ => Step::WaitInterval,
                        }
                    }
                    Request::Heartbeat | Request::Report { .. } => {
                        self.lost_in_a_row = 0;
                        Step::WaitInterval
                    }
                }
            }
            Answer::NotFound(message) => match request {
                // Only a registry without the endpoint answers 404 to a registration.
                Request::Register { .. } => Step::Stop(format!(
                    "the registry has no registration endpoint here ({message}): is this \
                     srvdns's HTTP address?"
                )),
                Request::Heartbeat | Request::Report { .. } => {
                    self.events.push(Event::Lost);
                    self.registered = false;
                    if self.registered_this_round {
                        // Registered and lost within one round: wait before trying again.
                        self.lost_in_a_row += 1;
                        Step::Backoff(self.backoff.delay(self.lost_in_a_row, jitter))
                    } else {
                        Step::Send(self.request())
                    }
                }
            },
            Answer::Unavailable(reason) => {
                self.failures += 1;
                if self.failures == 1 {
                    self.events.push(Event::RegistryUnavailable { reason });
                }
                Step::Backoff(self.backoff.delay(self.failures, jitter))
            }
            Answer::Refused(message) => Step::Stop(message),
        }
    }

    /// What the current state and the last probe call for.
    fn request(&self) -> Request {
        let status = self.app.as_ref().map_or(Status::Passing, |p| p.status);
        if !self.registered {
            return Request::Register { status };
        }
        match &self.app {
            Some(probe) if probe.status != Status::Passing => self.report(probe),
            _ => Request::Heartbeat,
        }
    }

    fn report(&self, probe: &Probe) -> Request {
        Request::Report {
            status: probe.status,
            output: probe.output.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        first: Duration::from_millis(100),
        cap: Duration::from_secs(2),
    };

    fn probe(status: Status, output: &str) -> Probe {
        Probe {
            status,
            output: output.into(),
        }
    }

    fn passing() -> Probe {
        probe(Status::Passing, "HTTP GET /health: 200 OK")
    }

    fn critical() -> Probe {
        probe(Status::Critical, "HTTP GET /health: 500")
    }

    /// A machine that registered a passing app.
    fn registered() -> Machine {
        let mut m = Machine::new(BACKOFF);
        let step = m.probed(passing());
        let Step::Send(request) = step else {
            panic!("{step:?}")
        };
        assert_eq!(m.answered(&request, Answer::Ok, 0.0), Step::WaitInterval);
        m.take_events();
        m
    }

    #[test]
    fn a_healthy_app_is_registered_passing_then_heartbeats() {
        let mut m = Machine::new(BACKOFF);
        let register = Request::Register {
            status: Status::Passing,
        };
        assert_eq!(m.probed(passing()), Step::Send(register.clone()));
        assert!(!m.is_registered());
        assert_eq!(m.answered(&register, Answer::Ok, 0.5), Step::WaitInterval);
        assert!(m.is_registered());
        assert_eq!(
            m.take_events(),
            [
                Event::AppStatus {
                    from: None,
                    to: Status::Passing,
                    output: "HTTP GET /health: 200 OK".into()
                },
                Event::Registered {
                    status: Status::Passing
                },
            ]
        );
        assert_eq!(m.probed(passing()), Step::Send(Request::Heartbeat));
        assert_eq!(
            m.answered(&Request::Heartbeat, Answer::Ok, 0.5),
            Step::WaitInterval
        );
        assert_eq!(m.take_events(), [], "nothing changed, nothing to log");
    }

    #[test]
    fn an_app_that_is_not_ready_is_registered_critical_with_its_output() {
        let mut m = Machine::new(BACKOFF);
        let register = Request::Register {
            status: Status::Critical,
        };
        assert_eq!(m.probed(critical()), Step::Send(register.clone()));
        let report = Request::Report {
            status: Status::Critical,
            output: "HTTP GET /health: 500".into(),
        };
        assert_eq!(
            m.answered(&register, Answer::Ok, 0.5),
            Step::Send(report.clone())
        );
        assert_eq!(m.answered(&report, Answer::Ok, 0.5), Step::WaitInterval);
    }

    #[test]
    fn health_flips_are_reported_and_logged_once() {
        let mut m = registered();
        let report = Request::Report {
            status: Status::Critical,
            output: "HTTP GET /health: 500".into(),
        };
        for _ in 0..3 {
            assert_eq!(m.probed(critical()), Step::Send(report.clone()));
            assert_eq!(m.answered(&report, Answer::Ok, 0.5), Step::WaitInterval);
        }
        let warning = probe(Status::Warning, "HTTP GET /health: 429");
        assert_eq!(
            m.probed(warning),
            Step::Send(Request::Report {
                status: Status::Warning,
                output: "HTTP GET /health: 429".into()
            })
        );
        assert_eq!(m.probed(passing()), Step::Send(Request::Heartbeat));
        let statuses: Vec<(Option<Status>, Status)> = m
            .take_events()
            .into_iter()
            .map(|e| match e {
                Event::AppStatus { from, to, .. } => (from, to),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            statuses,
            [
                (Some(Status::Passing), Status::Critical),
                (Some(Status::Critical), Status::Warning),
                (Some(Status::Warning), Status::Passing),
            ]
        );
    }

    #[test]
    fn a_lost_instance_is_registered_again_at_once_with_the_current_status() {
        let mut m = registered();
        assert_eq!(m.probed(critical()), Step::Send(m.request()));
        let report = m.request();
        let again = m.answered(&report, Answer::NotFound("no such instance".into()), 0.5);
        assert_eq!(
            again,
            Step::Send(Request::Register {
                status: Status::Critical
            })
        );
        assert!(!m.is_registered());
        let Step::Send(register) = again else {
            unreachable!()
        };
        // Registered critical: the output follows.
        assert!(matches!(
            m.answered(&register, Answer::Ok, 0.5),
            Step::Send(Request::Report { .. })
        ));
        let events = m.take_events();
        assert!(events.contains(&Event::Lost), "{events:?}");
        assert!(events.contains(&Event::Registered {
            status: Status::Critical
        }));
    }

    #[test]
    fn a_registry_that_keeps_forgetting_gets_backoff_not_a_loop() {
        let mut m = Machine::new(BACKOFF);
        let Step::Send(register) = m.probed(critical()) else {
            unreachable!()
        };
        let Step::Send(report) = m.answered(&register, Answer::Ok, 0.0) else {
            unreachable!()
        };
        assert_eq!(
            m.answered(&report, Answer::NotFound("gone".into()), 0.0),
            Step::Backoff(Duration::from_millis(50))
        );
        // The next round registers again.
        assert!(matches!(
            m.probed(critical()),
            Step::Send(Request::Register { .. })
        ));
    }

    #[test]
    fn an_unreachable_registry_backs_off_and_is_logged_once_each_way() {
        let mut m = registered();
        let mut delays = Vec::new();
        for _ in 0..7 {
            assert_eq!(m.probed(passing()), Step::Send(Request::Heartbeat));
            match m.answered(
                &Request::Heartbeat,
                Answer::Unavailable("connection refused".into()),
                0.0,
            ) {
                Step::Backoff(delay) => delays.push(delay.as_millis()),
                other => panic!("{other:?}"),
            }
        }
        // Half of 100, 200, 400, … capped at 2 s (jitter 0 gives the lower bound).
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            m.take_events(),
            [Event::RegistryUnavailable {
                reason: "connection refused".into()
            }]
        );
        assert!(m.is_registered(), "the registry may still have it");
        // Back, but restarted empty: the heartbeat is a 404, and the instance registers again.
        m.probed(passing());
        let step = m.answered(&Request::Heartbeat, Answer::NotFound("gone".into()), 0.0);
        assert_eq!(
            step,
            Step::Send(Request::Register {
                status: Status::Passing
            })
        );
        let Step::Send(register) = step else {
            unreachable!()
        };
        assert_eq!(m.answered(&register, Answer::Ok, 0.0), Step::WaitInterval);
        assert_eq!(
            m.take_events(),
            [
                Event::RegistryBack,
                Event::Lost,
                Event::Registered {
                    status: Status::Passing
                }
            ]
        );
    }

    #[test]
    fn a_refusal_stops_the_sidecar() {
        let mut m = Machine::new(BACKOFF);
        let Step::Send(register) = m.probed(passing()) else {
            unreachable!()
        };
        assert_eq!(
            m.answered(&register, Answer::Refused("401: token".into()), 0.5),
            Step::Stop("401: token".into())
        );
        assert!(matches!(
            m.answered(&register, Answer::NotFound("no such endpoint".into()), 0.5),
            Step::Stop(_)
        ));
    }

    #[test]
    fn backoff_jitter_stays_within_the_upper_half_of_the_step() {
        let backoff = Backoff {
            first: Duration::from_millis(250),
            cap: Duration::from_secs(10),
        };
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(125));
        assert!(backoff.delay(1, 0.999_999) < Duration::from_millis(250));
        assert_eq!(backoff.delay(3, 0.5), Duration::from_millis(750));
        assert_eq!(backoff.delay(1000, 0.0), Duration::from_secs(5));
        assert!(backoff.delay(1000, 1.0) <= Duration::from_secs(10));
    }
}
