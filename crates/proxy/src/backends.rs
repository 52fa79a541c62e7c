//! Backends at run time: the endpoints of each backend with their state, and the policy that
//! governs them.
//!
//! Config snapshots are rebuilt on every change, but what was learnt about an endpoint (its
//! latency estimate, its breaker, its outstanding requests) and a backend's counters (retry
//! budget, rate limiter, connection limiter) outlive them: the [`Registry`] hands the same
//! state to the next snapshot for every backend and endpoint that is still there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tokio::time::Instant;
use weft_api::config::policy::{
    BackendPolicySpec, CircuitBreaker, ConnectionLimits, LoadBalancerType, OutlierDetection,
    RetryBudget, RetryOptions,
};
use weft_api::config::{self};
use weft_api::sync::lock;

use crate::metrics::{BackendGauges, Metrics, Name};
use crate::policy::balance::{self, Candidate, PeakEwma, Ring};
use crate::policy::breaker::{self, Admit, Breaker, Outcome, State};
use crate::policy::budget::Budget;
use crate::policy::limits::TokenBucket;
use crate::upstream::{ConnLimiter, Dial};

/// The latency a new endpoint is assumed to have.
const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// How long a half-open probe may stay unanswered before another is let through.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known about one endpoint.
pub struct EndpointState {
    pub address: SocketAddr,
    outstanding: AtomicUsize,
    inner: Mutex<EndpointInner>,
}

struct EndpointInner {
    ewma: PeakEwma,
    breaker: Breaker,
}

/// One endpoint of a backend in a snapshot.
pub struct Endpoint {
    pub address: SocketAddr,
    pub dial: Dial,
    pub state: Arc<EndpointState>,
}

/// A backend's counters.
pub struct BackendShared {
    in_flight: AtomicUsize,
    round_robin: AtomicUsize,
    budget: Mutex<Budget>,
    rate: Mutex<Option<TokenBucket>>,
    connections: Mutex<Option<Arc<ConnLimiter>>>,
}

/// The policy in force for a backend, defaults filled in.
#[derive(Debug, Clone)]
pub struct Policy {
    pub load_balancer: LoadBalancerType,
    pub hash_header: Option<HeaderName>,
    pub breaker: CircuitBreaker,
    pub outlier: Option<OutlierDetection>,
    pub limits: ConnectionLimits,
    pub retry_budget: RetryBudget,
    pub retry: RetryOptions,
    pub connect_timeout: Option<Duration>,
    pub rate_limit: Option<(u32, u32)>,
}

impl Policy {
    pub fn resolve(spec: &BackendPolicySpec) -> Policy {
        let lb = spec
            .load_balancer
            .clone()
            .unwrap_or(config::policy::LoadBalancer {
                kind: LoadBalancerType::PeakEWMA,
                consistent_hash: None,
            });
        Policy {
            load_balancer: lb.kind,
            hash_header: lb
                .consistent_hash
                .and_then(|h| HeaderName::from_bytes(h.header.as_bytes()).ok()),
            breaker: spec.circuit_breaker.clone().unwrap_or_default(),
            outlier: spec.outlier_detection.clone(),
            limits: spec.connection_limits.clone().unwrap_or_default(),
            retry_budget: spec.retry_budget.clone().unwrap_or_default(),
            retry: spec.retry.clone().unwrap_or_default(),
            connect_timeout: spec.connect_timeout.map(|d| d.0),
            rate_limit: spec.rate_limit.as_ref().map(|r| {
                (
                    r.requests_per_second,
                    r.burst.unwrap_or(r.requests_per_second),
                )
            }),
        }
    }
}

/// A backend in a snapshot.
pub struct Backend {
    pub name: Name,
    pub endpoints: Vec<Endpoint>,
    /// Whether any endpoint has a sidecar, which can say that a request never reached its
    /// application: such requests are kept, to be sent to another endpoint.
    pub meshed: bool,
    pub policy: Policy,
    ring: Option<Ring>,
    pub shared: Arc<BackendShared>,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The backend has none.
    Empty,
    /// Every endpoint is ejected by its breaker.
    AllEjected,
}

/// An endpoint picked for one attempt; its outstanding count drops when this does.
pub struct Picked<'a> {
    pub index: usize,
    pub endpoint: &'a Endpoint,
    pub probe: bool,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.endpoint
            .state
            .outstanding
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backend {
    /// A backend with no endpoints and the default policy, for a name the config lacks.
    pub fn placeholder() -> Backend {
        Registry::default().backend(
            &config::Backend {
                name: "unknown".into(),
                endpoints: Vec::new(),
                policy: BackendPolicySpec::default(),
            },
            Instant::now(),
        )
    }

    /// Picks an endpoint for an attempt, avoiding `tried` where another is eligible.
    pub fn pick(
        &self,
        headers: &HeaderMap,
        tried: &[usize],
        now: Instant,
    ) -> Result<Picked<'_>, NoEndpoint> {
        if self.endpoints.is_empty() {
            return Err(NoEndpoint::Empty);
        }
        // Endpoints whose breaker refused the request just now (a probe already out).
        let mut refused: Vec<usize> = Vec::new();
        // First avoid the endpoints already tried; when none other is left, a tried one is
        // better than none.
        for avoid_tried in [true, false] {
            if !avoid_tried && tried.is_empty() {
                break;
            }
            loop {
                let mut excluded = refused.clone();
                if avoid_tried {
                    excluded.extend_from_slice(tried);
                }
                let Some(index) = self.choose(headers, &excluded, now) else {
                    break;
                };
                let endpoint = &self.endpoints[index];
                let admit = lock(&endpoint.state.inner)
                    .breaker
                    .admit(now, PROBE_TIMEOUT);
                match admit {
                    Admit::No => refused.push(index),
                    Admit::Yes | Admit::Probe => {
                        endpoint.state.outstanding.fetch_add(1, Ordering::AcqRel);
                        return Ok(Picked {
                            index,
                            endpoint,
                            probe: admit == Admit::Probe,
                        });
                    }
                }
            }
        }
        Err(NoEndpoint::AllEjected)
    }

    fn choose(&self, headers: &HeaderMap, excluded: &[usize], now: Instant) -> Option<usize> {
        type Balance = fn(&[Candidate], &mut fastrand::Rng) -> Option<usize>;
        let eligible = |i: usize| {
            !excluded.contains(&i) && !lock(&self.endpoints[i].state.inner).breaker.is_ejected(now)
        };
        if let (Some(ring), Some(header)) = (&self.ring, &self.policy.hash_header)
            && let Some(key) = headers.get(header)
        {
            return ring.pick(key.as_bytes(), eligible);
        }
        let candidate = |i: usize| {
            let state = &self.endpoints[i].state;
            Candidate {
                index: i,
                outstanding: state.outstanding.load(Ordering::Acquire),
                latency: lock(&state.inner).ewma.estimate(now),
            }
        };
        let mut rng = fastrand::Rng::new();
        let p2c = match self.policy.load_balancer {
            LoadBalancerType::RoundRobin => None,
            LoadBalancerType::LeastRequest => Some(balance::least_request as Balance),
            // Without its header, a hashed request is balanced like any other.
            LoadBalancerType::PeakEWMA | LoadBalancerType::ConsistentHash => {
                Some(balance::peak_ewma as Balance)
            }
        };
        // The power of two choices needs only the two endpoints it draws: when both may take
        // the request, the others are not looked at. Otherwise it draws among all eligible.
        if let Some(p2c) = p2c {
            match self.endpoints.len() {
                1 if eligible(0) => return Some(0),
                n if n >= 2 => {
                    let a = rng.usize(..n);
                    let b = (a + 1 + rng.usize(..n - 1)) % n;
                    if eligible(a) && eligible(b) {
                        return p2c(&[candidate(a), candidate(b)], &mut rng);
                    }
                }
                _ => {}
            }
        }
        let candidates: Vec<Candidate> = (0..self.endpoints.len())
            .filter(|i| eligible(*i))
            .map(candidate)
            .collect();
        match p2c {
            Some(p2c) => p2c(&candidates, &mut rng),
            None => balance::round_robin(
                &candidates,
                self.shared.round_robin.fetch_add(1, Ordering::Relaxed),
            ),
        }
    }

    /// Records how an attempt to endpoint `index` ended, ejecting the endpoint if its breaker
    /// trips and `maxEjectionPercent` allows.
    pub fn record(
        &self,
        index: usize,
        outcome: Outcome,
        latency: Option<Duration>,
        now: Instant,
        metrics: &Metrics,
    ) {
        let Some(endpoint) = self.endpoints.get(index) else {
            return;
        };
        let (trip, closed) = {
            let mut inner = lock(&endpoint.state.inner);
            if let Some(rtt) = latency {
                inner.ewma.observe(rtt, now);
            }
            let was_half_open = matches!(inner.breaker.state(now), State::HalfOpen { .. });
            let trip = inner.breaker.record(
                outcome,
                now,
                &self.policy.breaker,
                self.policy.outlier.as_ref(),
            );
            let closed = was_half_open && inner.breaker.state(now) == State::Closed;
            (trip, closed)
        };
        if closed {
            tracing::info!(backend = &*self.name.0, endpoint = %endpoint.address, "breaker closed: the probe succeeded");
        }
        let Some(trip) = trip else { return };
        let ejected = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, e)| *i != index && lock(&e.state.inner).breaker.is_ejected(now))
            .count();
        let allowed = breaker::max_ejected(
            self.endpoints.len(),
            self.policy.breaker.max_ejection_percent,
        );
        let mut inner = lock(&endpoint.state.inner);
        if ejected < allowed {
            let time = inner
                .breaker
                .eject(now, &self.policy.breaker, fastrand::f64());
            drop(inner);
            metrics.ejection(&self.name, trip.as_str());
            tracing::info!(
                backend = &*self.name.0,
                endpoint = %endpoint.address,
                reason = trip.as_str(),
                ejection = ?time,
                "breaker opened: endpoint ejected"
            );
        } else {
            inner.breaker.spare(trip);
            tracing::debug!(backend = &*self.name.0, endpoint = %endpoint.address, "ejection refused by maxEjectionPercent");
        }
    }

    /// Enters the in-flight limit (`maxRequests`); `None` when the backend is full.
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        let before = self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.shared.clone());
        match self.policy.limits.max_requests {
            Some(max) if before >= max as usize => None,
            _ => Some(guard),
        }
    }

    /// Counts a request into the retry budget.
    pub fn deposit(&self, now: Instant) {
        lock(&self.shared.budget).deposit(now);
    }

    pub fn try_retry(&self, now: Instant) -> bool {
        lock(&self.shared.budget).try_withdraw(now)
    }

    /// The client-side rate limit: false when the request must be refused.
    pub fn admit_rate(&self, now: Instant) -> bool {
        lock(&self.shared.rate)
            .as_mut()
            .is_none_or(|b| b.try_take(now))
    }

    pub fn conn_limiter(&self) -> Option<Arc<ConnLimiter>> {
        lock(&self.shared.connections).clone()
    }

    /// The gauges a scrape reads: in-flight and pending requests, each endpoint's breaker.
    pub fn gauges(&self, now: Instant) -> BackendGauges<'_> {
        BackendGauges {
            backend: &self.name,
            in_flight: self.shared.in_flight.load(Ordering::Acquire),
            pending: self.conn_limiter().map_or(0, |l| l.pending()),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| (e.address, lock(&e.state.inner).breaker.state(now).code()))
                .collect(),
        }
    }

    /// `/clusters`: the endpoints with their state.
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .map(|e| {
                let mut inner = lock(&e.state.inner);
                let state = inner.breaker.state(now);
                let until = match state {
                    State::Open { until } => Some(until.saturating_duration_since(now).as_millis()),
                    _ => None,
                };
                serde_json::json!({
                    "address": e.address.to_string(),
                    "dial": format!("{:?}", e.dial),
                    "health": if state == State::Closed { "healthy" } else { "ejected" },
                    "breaker": state.name(),
                    "ejectedForMs": until,
                    "ewmaLatencyMs": inner.ewma.estimate(now) / 1e6,
                    "outstanding": e.state.outstanding.load(Ordering::Acquire),
                })
            })
            .collect();
        let budget = lock(&self.shared.budget).state(now);
        serde_json::json!({
            "name": &*self.name.0,
            "loadBalancer": format!("{:?}", self.policy.load_balancer),
            "inFlight": self.shared.in_flight.load(Ordering::Acquire),
            "pending": self.conn_limiter().map_or(0, |l| l.pending()),
            "retryBudget": {"requests": budget.0, "retries": budget.1, "allowed": budget.2},
            "endpoints": endpoints,
        })
    }
}

/// A request counted against `maxRequests` until dropped.
pub struct InFlight(Arc<BackendShared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An endpoint is known by its backend and address.
type EndpointKey = (Arc<str>, SocketAddr);

/// Keeps backend and endpoint state across snapshots.
#[derive(Default)]
pub struct Registry {
    endpoints: Mutex<HashMap<EndpointKey, Weak<EndpointState>>>,
    backends: Mutex<HashMap<Arc<str>, Weak<BackendShared>>>,
}

impl Registry {
    /// Builds a backend for a snapshot, reusing what the registry knows.
    pub fn backend(&self, spec: &config::Backend, now: Instant) -> Backend {
        let name: Arc<str> = spec.name.as_str().into();
        let policy = Policy::resolve(&spec.policy);
        let endpoints: Vec<Endpoint> = {
            let mut known = lock(&self.endpoints);
            spec.endpoints
                .iter()
                .map(|e| {
                    let key = (name.clone(), e.address);
                    let state = known.get(&key).and_then(Weak::upgrade).unwrap_or_else(|| {
                        let state = Arc::new(EndpointState {
                            address: e.address,
                            outstanding: AtomicUsize::new(0),
                            inner: Mutex::new(EndpointInner {
                                ewma: PeakEwma::new(DEFAULT_RTT, now),
                                breaker: Breaker::new(now),
                            }),
                        });
                        known.insert(key, Arc::downgrade(&state));
                        state
                    });
                    Endpoint {
                        address: e.address,
                        dial: match &e.mesh {
                            Some(mesh) => Dial::through_sidecar(
                                e.address,
                                mesh.inbound_port,
                                mesh.tls.then(|| mesh.identity.as_str().into()),
                            ),
                            None => Dial::Direct(e.address),
                        },
                        state,
                    }
                })
                .collect()
        };
        let shared = {
            let mut known = lock(&self.backends);
            known.get(&name).and_then(Weak::upgrade).unwrap_or_else(|| {
                let shared = Arc::new(BackendShared {
                    in_flight: AtomicUsize::new(0),
                    round_robin: AtomicUsize::new(0),
                    budget: Mutex::new(Budget::new(&policy.retry_budget, now)),
                    rate: Mutex::new(None),
                    connections: Mutex::new(None),
                });
                known.insert(name.clone(), Arc::downgrade(&shared));
                shared
            })
        };
        // Counters persist, but a changed policy replaces the parts it shapes.
        {
            let mut budget = lock(&shared.budget);
            if !budget.is_for(&policy.retry_budget) {
                *budget = Budget::new(&policy.retry_budget, now);
            }
        }
        {
            let mut rate = lock(&shared.rate);
            match policy.rate_limit {
                None => *rate = None,
                Some((per_second, burst))
                    if !rate.as_ref().is_some_and(|b| b.is_for(per_second, burst)) =>
                {
                    *rate = Some(TokenBucket::new(per_second, burst, now));
                }
                Some(_) => {}
            }
        }
        {
            let mut conns = lock(&shared.connections);
            let want = policy.limits.max_connections.map(|max| {
                let pending = policy.limits.max_pending_requests.unwrap_or(u32::MAX) as usize;
                let timeout = policy
                    .limits
                    .pending_timeout
                    .map_or(Duration::from_secs(1), |d| d.0);
                (max, pending, timeout)
            });
            let same = match (&*conns, want) {
                (Some(l), Some((max, pending, timeout))) => l.is_for(max, pending, timeout),
                (None, None) => true,
                _ => false,
            };
            if !same {
                *conns = want.map(|(max, pending, timeout)| {
                    Arc::new(ConnLimiter::new(max, pending, timeout))
                });
            }
        }
        let ring = (policy.load_balancer == LoadBalancerType::ConsistentHash)
            .then(|| Ring::new(&endpoints.iter().map(|e| e.address).collect::<Vec<_>>()));
        Backend {
            name: Name(name),
            meshed: endpoints
                .iter()
                .any(|e| matches!(e.dial, Dial::Peer { .. })),
            endpoints,
            policy,
            ring,
            shared,
        }
    }

    /// Forgets state nothing refers to any more.
    pub fn prune(&self) {
        lock(&self.endpoints).retain(|_, w| w.strong_count() > 0);
        lock(&self.backends).retain(|_, w| w.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::duration::Dur;

    fn spec(addrs: &[&str], policy: BackendPolicySpec) -> config::Backend {
        config::Backend {
            name: "shop/app:80".into(),
            endpoints: addrs
                .iter()
                .map(|a| config::Endpoint {
                    address: a.parse().unwrap(),
                    mesh: None,
                    pod: None,
                })
                .collect(),
            policy,
        }
    }

    fn breaker_policy(failures: u32, percent: u32) -> BackendPolicySpec {
        BackendPolicySpec {
            circuit_breaker: Some(CircuitBreaker {
                consecutive_failures: failures,
                base_ejection_time: Dur::from_secs(10),
                max_ejection_time: Dur::from_secs(60),
                max_ejection_percent: percent,
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn state_survives_a_rebuild_for_endpoints_that_remain() {
        let registry = Registry::default();
        let metrics = Metrics::new();
        let now = Instant::now();
        let b1 = registry.backend(
            &spec(&["10.0.0.1:80", "10.0.0.2:80"], breaker_policy(1, 100)),
            now,
        );
        b1.record(0, Outcome::Failure, None, now, &metrics);
        assert!(lock(&b1.endpoints[0].state.inner).breaker.is_ejected(now));
        let b2 = registry.backend(
            &spec(&["10.0.0.1:80", "10.0.0.3:80"], breaker_policy(1, 100)),
            now,
        );
        assert!(
            Arc::ptr_eq(&b1.endpoints[0].state, &b2.endpoints[0].state),
            "10.0.0.1 keeps its state"
        );
        assert!(
            lock(&b2.endpoints[0].state.inner).breaker.is_ejected(now),
            "and its ejection"
        );
        assert!(
            Arc::ptr_eq(&b1.shared, &b2.shared),
            "the backend keeps its counters"
        );
        drop(b1);
        registry.prune();
        assert_eq!(
            lock(&registry.endpoints).len(),
            2,
            "10.0.0.2 is forgotten once no snapshot has it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn picks_avoid_ejected_and_tried_endpoints() {
        let registry = Registry::default();
        let metrics = Metrics::new();
        let b = registry.backend(
            &spec(
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
                breaker_policy(1, 100),
            ),
            Instant::now(),
        );
        let now = Instant::now();
        b.record(1, Outcome::Failure, None, now, &metrics);
        for _ in 0..50 {
            let p = b.pick(&HeaderMap::new(), &[0], now).unwrap();
            assert_eq!(p.index, 2, "0 was tried and 1 is ejected");
        }
        b.record(0, Outcome::Failure, None, now, &metrics);
        b.record(2, Outcome::Failure, None, now, &metrics);
        assert_eq!(
            b.pick(&HeaderMap::new(), &[], now).err(),
            Some(NoEndpoint::AllEjected)
        );
        let only = registry.backend(&spec(&["10.0.0.9:80"], breaker_policy(1, 100)), now);
        assert_eq!(
            only.pick(&HeaderMap::new(), &[0], now).unwrap().index,
            0,
            "a tried endpoint beats none"
        );
        let empty = registry.backend(&spec(&[], BackendPolicySpec::default()), now);
        assert_eq!(
            empty.pick(&HeaderMap::new(), &[], now).err(),
            Some(NoEndpoint::Empty)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_spreads_over_healthy_endpoints_and_prefers_the_idle_one() {
        let registry = Registry::default();
        let now = Instant::now();
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let b = registry.backend(&spec(&addrs, BackendPolicySpec::default()), now);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let p = b.pick(&HeaderMap::new(), &[], now).unwrap();
            counts[p.index] += 1;
            drop(p);
        }
        assert!(counts.iter().all(|c| *c > 30), "{counts:?}");
        // Endpoint 1 has 100 requests outstanding: of any pair drawn with it, the other wins.
        b.endpoints[1]
            .state
            .outstanding
            .store(100, Ordering::Release);
        for _ in 0..100 {
            assert_ne!(b.pick(&HeaderMap::new(), &[], now).unwrap().index, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_keeps_endpoints_serving() {
        let registry = Registry::default();
        let metrics = Metrics::new();
        let b = registry.backend(
            &spec(
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"],
                breaker_policy(1, 50),
            ),
            Instant::now(),
        );
        let now = Instant::now();
        for i in 0..4 {
            b.record(i, Outcome::Failure, None, now, &metrics);
        }
        let ejected = b
            .endpoints
            .iter()
            .filter(|e| lock(&e.state.inner).breaker.is_ejected(now))
            .count();
        assert_eq!(ejected, 2, "half of four");
        assert!(b.pick(&HeaderMap::new(), &[], now).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_limit_refuses_the_excess() {
        let registry = Registry::default();
        let policy = BackendPolicySpec {
            connection_limits: Some(ConnectionLimits {
                max_requests: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let b = Arc::new(registry.backend(&spec(&["10.0.0.1:80"], policy), Instant::now()));
        let one = b.enter().unwrap();
        let _two = b.enter().unwrap();
        assert!(b.enter().is_none());
        drop(one);
        assert!(b.enter().is_some());
    }
}
