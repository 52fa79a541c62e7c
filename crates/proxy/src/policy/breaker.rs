//! One endpoint's circuit breaker.
//!
//! ```text
//! Closed --(N consecutive failures, or success rate under the threshold)--> Open
//! Open --(ejection time passes)--> HalfOpen: one probe request is let through
//! HalfOpen --(probe succeeds)--> Closed      HalfOpen --(probe fails)--> Open, longer
//! ```
//!
//! The ejection time doubles with each ejection, from the base time up to the cap, with
//! ±10% jitter so that endpoints ejected together do not all return at once; each base period
//! spent healthy forgives one ejection. Whether an ejection may happen at all (the backend's
//! `maxEjectionPercent`) is the caller's decision: [`Breaker::record`] asks, and
//! [`Breaker::eject`] acts.

use std::time::Duration;

use tokio::time::Instant;
use weft_api::config::policy::{CircuitBreaker, OutlierDetection};

/// What a request to the endpoint ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx, a connect error, a reset or a timeout.
    Failure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probe` is when the probe request was let through, if one is in flight.
    HalfOpen {
        probe: Option<Instant>,
    },
}

impl State {
    /// Its name, as `/clusters` and the admin page say it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }

    /// Its value in `weft_breaker_state`.
    pub fn code(&self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

/// Why the breaker wants to eject its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    ConsecutiveFailures,
    SuccessRate,
    ProbeFailed,
}

impl Trip {
    pub fn as_str(self) -> &'static str {
        match self {
            Trip::ConsecutiveFailures => "consecutive-failures",
            Trip::SuccessRate => "success-rate",
            Trip::ProbeFailed => "probe-failed",
        }
    }
}

/// Whether a request may go to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe.
    Probe,
    No,
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
    ejections: u32,
    last_ejection_end: Option<Instant>,
    window_start: Instant,
    window_total: u32,
    window_failures: u32,
}

impl Breaker {
    pub fn new(now: Instant) -> Breaker {
        Breaker {
            state: State::Closed,
            consecutive_failures: 0,
            ejections: 0,
            last_ejection_end: None,
            window_start: now,
            window_total: 0,
            window_failures: 0,
        }
    }

    /// The state, with an elapsed ejection turned half-open.
    pub fn state(&mut self, now: Instant) -> State {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen { probe: None };
            self.last_ejection_end = Some(until);
        }
        self.state
    }

    pub fn is_ejected(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => false,
            State::Open { .. } => true,
            // While a probe is out, the endpoint takes nothing else.
            State::HalfOpen { probe } => probe.is_some(),
        }
    }

    /// Admits a request, making it the probe when the breaker is half-open. A probe that never
    /// reports (its request was abandoned) is replaced after `probe_timeout`.
    pub fn admit(&mut self, now: Instant, probe_timeout: Duration) -> Admit {
        match self.state(now) {
            State::Closed => Admit::Yes,
            State::Open { .. } => Admit::No,
            State::HalfOpen { probe: Some(at) } if now.duration_since(at) < probe_timeout => {
                Admit::No
            }
            State::HalfOpen { .. } => {
                self.state = State::HalfOpen { probe: Some(now) };
                Admit::Probe
            }
        }
    }

    /// Records an outcome; returns a trip when the breaker wants to eject its endpoint. The
    /// caller checks `maxEjectionPercent` and calls [`Breaker::eject`].
    pub fn record(
        &mut self,
        outcome: Outcome,
        now: Instant,
        cb: &CircuitBreaker,
        od: Option<&OutlierDetection>,
    ) -> Option<Trip> {
        let state = self.state(now);
        let rate_trip = od.and_then(|od| self.count_window(outcome, now, od));
        match (state, outcome) {
            (State::Open { .. }, _) => None,
            (State::HalfOpen { .. }, Outcome::Success) => {
                self.state = State::Closed;
                self.consecutive_failures = 0;
                None
            }
            (State::HalfOpen { .. }, Outcome::Failure) => Some(Trip::ProbeFailed),
            (State::Closed, Outcome::Success) => {
                self.consecutive_failures = 0;
                rate_trip
            }
            (State::Closed, Outcome::Failure) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if cb.consecutive_failures > 0
                    && self.consecutive_failures >= cb.consecutive_failures
                {
                    Some(Trip::ConsecutiveFailures)
                } else {
                    rate_trip
                }
            }
        }
    }

    /// Counts an outcome into the success-rate window; when a window has closed, judges it.
    fn count_window(
        &mut self,
        outcome: Outcome,
        now: Instant,
        od: &OutlierDetection,
    ) -> Option<Trip> {
        let mut trip = None;
        if now.duration_since(self.window_start) >= od.interval.0 {
            let (total, failures) = (
                u64::from(self.window_total),
                u64::from(self.window_failures),
            );
            if total >= u64::from(od.minimum_requests.max(1))
                && (total - failures) * 100 < u64::from(od.success_rate_threshold) * total
            {
                trip = Some(Trip::SuccessRate);
            }
            self.window_start = now;
            self.window_total = 0;
            self.window_failures = 0;
        }
        self.window_total += 1;
        if outcome == Outcome::Failure {
            self.window_failures += 1;
        }
        trip
    }

    /// Ejects the endpoint; `jitter` is a uniform sample in `[0, 1)`. Returns how long.
    pub fn eject(&mut self, now: Instant, cb: &CircuitBreaker, jitter: f64) -> Duration {
        let base = cb.base_ejection_time.0;
        // Time spent healthy since the last ejection forgives earlier ones.
        if let Some(end) = self.last_ejection_end
            && !base.is_zero()
        {
            let healthy = now.saturating_duration_since(end);
            let forgiven = (healthy.as_nanos() / base.as_nanos()).min(u128::from(u32::MAX)) as u32;
            self.ejections = self.ejections.saturating_sub(forgiven);
        }
        let time = base
            .saturating_mul(1u32 << self.ejections.min(20))
            .min(cb.max_ejection_time.0);
        let time = time.mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0));
        self.ejections = self.ejections.saturating_add(1);
        self.consecutive_failures = 0;
        self.state = State::Open { until: now + time };
        time
    }

    /// Keeps the endpoint serving after a trip that `maxEjectionPercent` did not allow.
    pub fn spare(&mut self, trip: Trip) {
        if trip == Trip::ProbeFailed {
            self.state = State::Closed;
        }
    }
}

/// How many of `endpoints` may be ejected at once: `percent` of them, rounded down, but at
/// least one unless `percent` is 0.
pub fn max_ejected(endpoints: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    (endpoints * percent.min(100) as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::duration::Dur;

    fn cb(failures: u32) -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures: failures,
            base_ejection_time: Dur::from_secs(10),
            max_ejection_time: Dur::from_secs(60),
            max_ejection_percent: 50,
        }
    }

    const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_trip_and_successes_reset_the_count() {
        let mut b = Breaker::new(Instant::now());
        let cfg = cb(3);
        let now = Instant::now();
        assert_eq!(b.record(Outcome::Failure, now, &cfg, None), None);
        assert_eq!(b.record(Outcome::Failure, now, &cfg, None), None);
        assert_eq!(b.record(Outcome::Success, now, &cfg, None), None);
        assert_eq!(b.record(Outcome::Failure, now, &cfg, None), None);
        assert_eq!(b.record(Outcome::Failure, now, &cfg, None), None);
        assert_eq!(
            b.record(Outcome::Failure, now, &cfg, None),
            Some(Trip::ConsecutiveFailures)
        );
        assert_eq!(
            b.state(now),
            State::Closed,
            "nothing happens until the caller ejects"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_then_one_probe_decides() {
        let cfg = cb(1);
        let mut b = Breaker::new(Instant::now());
        assert_eq!(
            b.record(Outcome::Failure, Instant::now(), &cfg, None),
            Some(Trip::ConsecutiveFailures)
        );
        let time = b.eject(Instant::now(), &cfg, 0.5);
        assert_eq!(time, Duration::from_secs(10));
        assert!(b.is_ejected(Instant::now()));
        assert_eq!(b.admit(Instant::now(), PROBE_TIMEOUT), Admit::No);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!b.is_ejected(Instant::now()), "half-open, no probe yet");
        assert_eq!(b.admit(Instant::now(), PROBE_TIMEOUT), Admit::Probe);
        assert_eq!(
            b.admit(Instant::now(), PROBE_TIMEOUT),
            Admit::No,
            "one probe at a time"
        );
        assert!(b.is_ejected(Instant::now()));
        assert_eq!(b.record(Outcome::Success, Instant::now(), &cfg, None), None);
        assert_eq!(b.state(Instant::now()), State::Closed);
        assert_eq!(b.admit(Instant::now(), PROBE_TIMEOUT), Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_ejections_grow_to_the_cap_and_healthy_time_forgives() {
        let cfg = cb(1);
        let mut b = Breaker::new(Instant::now());
        let mut times = Vec::new();
        for _ in 0..5 {
            b.record(Outcome::Failure, Instant::now(), &cfg, None);
            let t = b.eject(Instant::now(), &cfg, 0.5);
            times.push(t.as_secs());
            tokio::time::advance(t).await;
            assert_eq!(b.admit(Instant::now(), PROBE_TIMEOUT), Admit::Probe);
            assert_eq!(
                b.record(Outcome::Failure, Instant::now(), &cfg, None),
                Some(Trip::ProbeFailed)
            );
        }
        assert_eq!(times, [10, 20, 40, 60, 60]);
        // A long healthy spell: the next ejection starts small again.
        b.spare(Trip::ProbeFailed);
        tokio::time::advance(Duration::from_secs(600)).await;
        b.record(Outcome::Failure, Instant::now(), &cfg, None);
        assert_eq!(b.eject(Instant::now(), &cfg, 0.5), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_ten_percent() {
        let cfg = cb(1);
        let lo = Breaker::new(Instant::now()).eject(Instant::now(), &cfg, 0.0);
        let hi = Breaker::new(Instant::now()).eject(Instant::now(), &cfg, 0.999_999);
        assert_eq!(lo, Duration::from_secs(9));
        assert!(
            hi > Duration::from_millis(10_990) && hi <= Duration::from_secs(11),
            "{hi:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_success_rate_trips_after_its_window() {
        let cfg = cb(0);
        let od = OutlierDetection {
            success_rate_threshold: 80,
            minimum_requests: 10,
            interval: Dur::from_secs(10),
        };
        let mut b = Breaker::new(Instant::now());
        // 30% failures, never three in a row: only the rate can catch it.
        for i in 0..20 {
            let outcome = if i % 3 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(b.record(outcome, Instant::now(), &cfg, Some(&od)), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            b.record(Outcome::Success, Instant::now(), &cfg, Some(&od)),
            Some(Trip::SuccessRate)
        );
        // Too few requests in a window say nothing.
        let mut quiet = Breaker::new(Instant::now());
        for _ in 0..5 {
            quiet.record(Outcome::Failure, Instant::now(), &cfg, Some(&od));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            quiet.record(Outcome::Success, Instant::now(), &cfg, Some(&od)),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_is_replaced() {
        let cfg = cb(1);
        let mut b = Breaker::new(Instant::now());
        b.eject(Instant::now(), &cfg, 0.5);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.admit(Instant::now(), PROBE_TIMEOUT), Admit::Probe);
        tokio::time::advance(PROBE_TIMEOUT).await;
        assert_eq!(b.admit(Instant::now(), PROBE_TIMEOUT), Admit::Probe);
    }

    #[test]
    fn max_ejected_keeps_a_floor() {
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(
            max_ejected(1, 50),
            1,
            "a lone endpoint can still be ejected: its breaker opens"
        );
        assert_eq!(max_ejected(4, 100), 4);
        assert_eq!(max_ejected(4, 0), 0);
    }
}
