//! BackendPolicy: how a client proxy treats one backend (SPEC section 4). The same type is the
//! `spec` of a `policy.weft.dev/v1alpha1` BackendPolicy manifest and the `policy` of a
//! compiled backend; every knob is optional, and the proxy fills in the documented defaults.

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::gateway::is_http_method;
use crate::validate::Problems;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendPolicySpec {
    /// The Services the policy applies to (manifests only; empty in a compiled config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A Gateway API policy target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LoadBalancerType {
    /// Power of two choices over peak-EWMA latency times outstanding requests.
    #[default]
    PeakEWMA,
    RoundRobin,
    /// Power of two choices over outstanding requests.
    LeastRequest,
    /// A hash ring over a request header: the same value goes to the same endpoint.
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    pub header: String,
}

/// Ejects an endpoint after consecutive failures (5xx, connect errors, timeouts), for a time
/// that doubles with each ejection up to a cap; then one probe request decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// 0 turns the breaker off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// At most this share of a backend's endpoints is ejected at once (at least one may be).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Dur {
    Dur::from_secs(5)
}
fn default_max_ejection() -> Dur {
    Dur::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// Ejects an endpoint whose success rate over a window falls below a threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Percent of successful requests below which an endpoint is ejected.
    pub success_rate_threshold: u32,
    /// Fewer requests in a window than this say nothing.
    #[serde(default = "default_minimum_requests")]
    pub minimum_requests: u32,
    #[serde(default = "default_interval")]
    pub interval: Dur,
}

fn default_minimum_requests() -> u32 {
    20
}
fn default_interval() -> Dur {
    Dur::from_secs(10)
}

/// The bulkhead: what one backend may hold. Beyond a limit the answer is 503 `overloaded` at
/// once; waiting for a connection is bounded by `maxPendingRequests` and `pendingTimeout`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_timeout: Option<Dur>,
    /// Requests in flight to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

/// Retries may add at most `percent` of the recent requests, plus `minRetriesPerSecond`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
    #[serde(default = "default_budget_window")]
    pub window: Dur,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: default_budget_percent(),
            min_retries_per_second: default_min_retries(),
            window: default_budget_window(),
        }
    }
}

fn default_budget_percent() -> u32 {
    20
}
fn default_min_retries() -> u32 {
    10
}
fn default_budget_window() -> Dur {
    Dur::from_secs(10)
}

/// Which requests may be retried after a response.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryOptions {
    /// Methods treated like POST and PATCH: never retried after a response unless the
    /// request carries `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_idempotent_methods: Vec<String>,
    /// Retry non-idempotent requests after a response anyway (the application deduplicates).
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

/// A client-side token bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    /// Requests allowed in a burst; defaults to one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.requests_per_second == 0 {
            problems.add(format!("{at}.requestsPerSecond"), "must be at least 1");
        }
        if self.burst == Some(0) {
            problems.add(format!("{at}.burst"), "must be at least 1");
        }
    }
}

impl BackendPolicySpec {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        for (i, t) in self.target_refs.iter().enumerate() {
            if !(t.group.is_empty() || t.group == "core") || t.kind != "Service" {
                problems.add(
                    format!("{at}.targetRefs[{i}]"),
                    "must refer to a Service (group \"\", kind Service)",
                );
            }
        }
        if let Some(lb) = &self.load_balancer {
            match (lb.kind, &lb.consistent_hash) {
                (LoadBalancerType::ConsistentHash, None) => {
                    problems.add(
                        format!("{at}.loadBalancer.consistentHash"),
                        "is required with type ConsistentHash",
                    );
                }
                (LoadBalancerType::ConsistentHash, Some(h))
                    if !crate::gateway::is_header_name(&h.header) =>
                {
                    problems.add(
                        format!("{at}.loadBalancer.consistentHash.header"),
                        "must be a header name",
                    );
                }
                (LoadBalancerType::ConsistentHash, Some(_)) => {}
                (_, Some(_)) => problems.add(
                    format!("{at}.loadBalancer.consistentHash"),
                    "is only for type ConsistentHash",
                ),
                (_, None) => {}
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            if cb.base_ejection_time.0.is_zero() {
                problems.add(
                    format!("{at}.circuitBreaker.baseEjectionTime"),
                    "must be more than 0s",
                );
            }
            if cb.max_ejection_time < cb.base_ejection_time {
                problems.add(
                    format!("{at}.circuitBreaker.maxEjectionTime"),
                    "must not be less than baseEjectionTime",
                );
            }
            if cb.max_ejection_percent > 100 {
                problems.add(
                    format!("{at}.circuitBreaker.maxEjectionPercent"),
                    "must be between 0 and 100",
                );
            }
        }
        if let Some(od) = &self.outlier_detection {
            if od.success_rate_threshold > 100 {
                problems.add(
                    format!("{at}.outlierDetection.successRateThreshold"),
                    "must be between 0 and 100",
                );
            }
            if od.interval.0.is_zero() {
                problems.add(
                    format!("{at}.outlierDetection.interval"),
                    "must be more than 0s",
                );
            }
        }
        if let Some(l) = &self.connection_limits {
            for (field, v) in [
                ("maxConnections", l.max_connections),
                ("maxRequests", l.max_requests),
            ] {
                if v == Some(0) {
                    problems.add(
                        format!("{at}.connectionLimits.{field}"),
                        "must be at least 1 (omit it for no limit)",
                    );
                }
            }
        }
        if let Some(b) = &self.retry_budget {
            if b.percent > 1000 {
                problems.add(
                    format!("{at}.retryBudget.percent"),
                    "must be between 0 and 1000",
                );
            }
            if b.window.0 < std::time::Duration::from_secs(1) {
                problems.add(format!("{at}.retryBudget.window"), "must be at least 1s");
            }
        }
        if let Some(r) = &self.retry {
            for (i, m) in r.non_idempotent_methods.iter().enumerate() {
                if !crate::gateway::is_header_name(m)
                    || is_http_method(m)
                        && m != "POST"
                        && m != "PATCH"
                        && m != "PUT"
                        && m != "DELETE"
                {
                    problems.add(
                        format!("{at}.retry.nonIdempotentMethods[{i}]"),
                        format!("{m:?} is not a method to list"),
                    );
                }
            }
        }
        if let Some(t) = &self.connect_timeout
            && t.0.is_zero()
        {
            problems.add(format!("{at}.connectTimeout"), "must be more than 0s");
        }
        if let Some(r) = &self.rate_limit {
            r.validate(&format!("{at}.rateLimit"), problems);
        }
    }
}
