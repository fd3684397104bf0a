//! One backend's circuit breaker. The `failsafe` crate decides when to open and for how long;
//! this module owns what it lacks: a readable state (mirrored from its hooks into an atomic),
//! exactly one probe while half-open, and permits tagged with the generation of the circuit
//! they were taken in, so a call admitted before the circuit opened cannot close it again when
//! it finally ends. What counts as a failure is decided by the caller (`pool::Attempt`, from
//! `GatewayError::breaker_outcome`): connect errors, timeouts, 5xx and mid-stream failures;
//! never a client's 4xx.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use failsafe::backoff::{self, Exponential};
use failsafe::failure_policy::{
    self, ConsecutiveFailures, FailurePolicy, OrElse, SuccessRateOverTimeWindow,
};
use failsafe::{Instrument, StateMachine};

use crate::config::BreakerConfig;
use crate::telemetry::metrics;

/// The breaker states, as failsafe names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What one call says about the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Says nothing about the backend (a client error, a client that left, a 429).
    Neutral,
}

type Policy = OrElse<ConsecutiveFailures<Exponential>, SuccessRateOverTimeWindow<Exponential>>;

#[derive(Debug)]
pub struct Breaker {
    machine: StateMachine<Policy, Mirror>,
    state: Arc<AtomicU8>,
    /// Bumped each time the circuit opens.
    generation: Arc<AtomicU64>,
    probing: AtomicBool,
}

/// Permission to call a backend, taken in one generation of the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub kind: PermitKind,
    generation: u64,
}

/// A probe permit is the single trial call of a half-open circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitKind {
    Normal,
    Probe,
}

impl Breaker {
    /// `backend` names the breaker in metrics.
    pub fn new(config: &BreakerConfig, backend: &str) -> Self {
        let backoff = || backoff::exponential(config.open_for, config.max_open_for);
        let consecutive =
            failure_policy::consecutive_failures(config.consecutive_failures.get(), backoff());
        // Without a failure-rate rule the second policy can never trip: it would need more
        // requests in its window than can exist.
        let (rate, min_requests, window) = match config.failure_rate {
            Some(rate) => (1.0 - rate.threshold, rate.min_requests, rate.window),
            None => (0.0, u32::MAX, std::time::Duration::from_secs(1)),
        };
        let by_rate =
            failure_policy::success_rate_over_time_window(rate, min_requests, window, backoff());
        let state = Arc::new(AtomicU8::new(BreakerState::Closed as u8));
        let generation = Arc::new(AtomicU64::new(0));
        Self {
            machine: StateMachine::new(
                consecutive.or_else(by_rate),
                Mirror {
                    state: state.clone(),
                    generation: generation.clone(),
                    backend: backend.to_owned(),
                },
            ),
            state,
            generation,
            probing: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Asks to call the backend. Closed: yes. Open: only once its delay passed, and then as the
    /// one probe; every other caller is refused until the probe's outcome is recorded.
    pub fn try_acquire(&self) -> Option<Permit> {
        // The generation is read before the state and bumped after the state is set to Open,
        // so a permit seen as Closed can only carry an older generation, never the new one.
        let generation = self.generation.load(Ordering::Acquire);
        let permit = |kind| Permit { kind, generation };
        if self.state() == BreakerState::Closed {
            return Some(permit(PermitKind::Normal));
        }
        if !self.machine.is_call_permitted() {
            return None;
        }
        match self.state() {
            BreakerState::Closed => Some(permit(PermitKind::Normal)),
            BreakerState::Open | BreakerState::HalfOpen => self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then(|| permit(PermitKind::Probe)),
        }
    }

    /// Whether a call would be permitted now, without taking a permit: closed, or open past its
    /// delay (failsafe then moves it to half-open) with no probe in flight.
    pub fn may_permit(&self) -> bool {
        self.state() == BreakerState::Closed
            || (self.machine.is_call_permitted() && !self.probing.load(Ordering::Acquire))
    }

    /// Records a call's outcome, once. An outcome from a permit of an earlier generation
    /// describes the backend before its circuit last opened, so it is ignored.
    pub fn record(&self, permit: Permit, outcome: Outcome) {
        let current = permit.generation == self.generation.load(Ordering::Acquire);
        match outcome {
            Outcome::Success if current => self.machine.on_success(),
            Outcome::Failure if current => self.machine.on_error(),
            // A probe that proved nothing lets the next caller probe again.
            Outcome::Success | Outcome::Failure | Outcome::Neutral => {}
        }
        if permit.kind == PermitKind::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }
}

/// Mirrors failsafe's state changes, which it does not expose otherwise, into an atomic and
/// the breaker-state gauge.
#[derive(Debug)]
struct Mirror {
    state: Arc<AtomicU8>,
    generation: Arc<AtomicU64>,
    backend: String,
}

impl Mirror {
    fn set(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::Release);
        let exported = match state {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        metrics::record_breaker_state(&self.backend, exported);
    }
}

impl Instrument for Mirror {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.set(BreakerState::Open);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.set(BreakerState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: NonZeroU32::new(3).expect("non-zero"),
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(4),
            failure_rate: None,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_lets_exactly_one_probe_through() {
        let breaker = Breaker::new(&config(), "test");
        for _ in 0..3 {
            let permit = breaker.try_acquire().expect("closed");
            breaker.record(permit, Outcome::Failure);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.try_acquire(), None, "open: refused");
        std::thread::sleep(Duration::from_millis(1100));
        let probe = breaker.try_acquire().expect("the delay passed: one probe");
        assert_eq!(probe.kind, PermitKind::Probe);
        assert_eq!(breaker.try_acquire(), None, "only one probe at a time");
        breaker.record(probe, Outcome::Success);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(
            breaker.try_acquire().map(|p| p.kind),
            Some(PermitKind::Normal)
        );
    }

    #[test]
    fn a_call_admitted_before_the_circuit_opened_cannot_close_it() {
        let breaker = Breaker::new(&config(), "test");
        let old = breaker.try_acquire().expect("closed");
        for _ in 0..3 {
            let permit = breaker.try_acquire().expect("closed");
            breaker.record(permit, Outcome::Failure);
        }
        std::thread::sleep(Duration::from_millis(1100));
        let probe = breaker.try_acquire().expect("the delay passed: one probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.record(old, Outcome::Success);
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "the old call's success is ignored"
        );
        breaker.record(probe, Outcome::Failure);
        assert_eq!(breaker.state(), BreakerState::Open, "the probe decides");
    }

    #[test]
    fn neutral_outcomes_never_open_it() {
        let breaker = Breaker::new(&config(), "test");
        for _ in 0..10 {
            let permit = breaker.try_acquire().expect("closed");
            breaker.record(permit, Outcome::Neutral);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
