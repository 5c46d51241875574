//! Health state transitions for active checks: `status + probe result → status`. Pure.
//!
//! - A check that was never probed turns `passing` on its first success (a new instance joins
//!   DNS as soon as it answers).
//! - Afterwards, `failures_before_critical` consecutive failures turn a passing (or warning)
//!   check critical, and `successes_before_passing` consecutive successes turn a critical
//!   check passing.
//! - A `warning` result (HTTP 429) is not a failure: it applies at once, and a success after
//!   it applies at once too.

use crate::registry::model::{CheckSpec, Status};

/// The outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Warning,
    Failure,
}

/// A check's probe state: its status and the run of results pointing away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    pub status: Status,
    /// Consecutive results that point away from `status` (failures while not critical,
    /// successes while critical).
    pub streak: u32,
    /// Has this check been probed before?
    pub probed: bool,
}

/// The state after one more probe result.
pub fn next(state: ProbeState, outcome: Outcome, spec: &CheckSpec) -> ProbeState {
    let settle = |status| ProbeState {
        status,
        streak: 0,
        probed: true,
    };
    let lean = |streak| ProbeState {
        status: state.status,
        streak,
        probed: true,
    };
    match (outcome, state.status) {
        (Outcome::Warning, _) => settle(Status::Warning),
        (Outcome::Success, Status::Critical) if !state.probed => settle(Status::Passing),
        (Outcome::Success, Status::Critical) => {
            let streak = state.streak + 1;
            if streak >= spec.successes_before_passing {
                settle(Status::Passing)
            } else {
                lean(streak)
            }
        }
        (Outcome::Success, _) => settle(Status::Passing),
        (Outcome::Failure, Status::Critical) => settle(Status::Critical),
        (Outcome::Failure, _) => {
            let streak = state.streak + 1;
            if streak >= spec.failures_before_critical {
                settle(Status::Critical)
            } else {
                lean(streak)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::CheckKind;

    fn spec(failures: u32, successes: u32) -> CheckSpec {
        CheckSpec {
            name: "http".into(),
            kind: CheckKind::Tcp { target: None },
            interval: CheckSpec::DEFAULT_INTERVAL,
            timeout: CheckSpec::DEFAULT_TIMEOUT,
            failures_before_critical: failures,
            successes_before_passing: successes,
            deregister_after: None,
            initial_status: Status::Critical,
        }
    }

    fn run(spec: &CheckSpec, outcomes: &[Outcome]) -> Vec<Status> {
        let mut state = ProbeState {
            status: spec.initial_status,
            streak: 0,
            probed: false,
        };
        outcomes
            .iter()
            .map(|&o| {
                state = next(state, o, spec);
                state.status
            })
            .collect()
    }

    use Outcome::{Failure as F, Success as S, Warning as W};
    use Status::{Critical as C, Passing as P, Warning as Wa};

    #[test]
    fn the_first_success_passes_then_thresholds_apply() {
        let spec = spec(3, 2);
        assert_eq!(run(&spec, &[S, F, F, F, S, S]), [P, P, P, C, C, P]);
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let spec = spec(3, 2);
        assert_eq!(run(&spec, &[S, F, F, S, F, F, F]), [P, P, P, P, P, P, C]);
    }

    #[test]
    fn a_failure_resets_the_recovery_run() {
        let spec = spec(1, 2);
        assert_eq!(run(&spec, &[S, F, S, F, S, S]), [P, C, C, C, C, P]);
    }

    #[test]
    fn failing_from_the_start_stays_critical() {
        let spec = spec(3, 2);
        assert_eq!(run(&spec, &[F, F, S, S]), [C, C, C, P]);
    }

    #[test]
    fn warnings_apply_at_once() {
        let spec = spec(3, 2);
        assert_eq!(
            run(&spec, &[S, W, S, W, F, F, F]),
            [P, Wa, P, Wa, Wa, Wa, C]
        );
    }

    #[test]
    fn consul_style_thresholds_of_one() {
        let spec = spec(1, 1);
        assert_eq!(run(&spec, &[S, F, S]), [P, C, P]);
    }
}
