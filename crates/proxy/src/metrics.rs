//! The proxy's Prometheus metrics (SPEC section 8), all prefixed `weft_`.
//!
//! Labels are small owned values; names (routes, backends) are shared `Arc<str>`s taken from
//! the config snapshot, so recording a request allocates nothing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::errors::Reason;

/// Which way traffic flows through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local application to the mesh.
    Outbound,
    /// From the mesh to the local application.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A shared name used as a label value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// The `route` label, and the `rule` label when the rule that took the request has a name
/// (an HTTPRoute or GRPCRoute rule's `name`). The series of an unnamed rule have no `rule`
/// label, which Prometheus reads as an empty one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RouteId {
    pub route: Name,
    pub rule: Option<Name>,
}

impl RouteId {
    pub fn new(route: &str) -> RouteId {
        RouteId {
            route: Name(route.into()),
            rule: None,
        }
    }
}

impl EncodeLabelSet for RouteId {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("route", self.route.clone()).encode(encoder.encode_label())?;
        if let Some(rule) = &self.rule {
            ("rule", rule.clone()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    direction: Direction,
    #[prometheus(flatten)]
    route: RouteId,
    backend: Name,
    status_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LatencyLabels {
    direction: Direction,
    #[prometheus(flatten)]
    route: RouteId,
    backend: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetryLabels {
    direction: Direction,
    #[prometheus(flatten)]
    route: RouteId,
    backend: Name,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    backend: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EjectionLabels {
    backend: Name,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    backend: Name,
    endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MirrorLabels {
    backend: Name,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    direction: Direction,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    direction: Direction,
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BytesLabels {
    direction: Direction,
    /// `sent` toward the destination, `received` back from it.
    flow: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets from 100 µs (a proxy's own share of a fast request) to 10 s, and 30 s for the
/// slowest requests.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ])
}

/// One backend's state as a scrape reads it: gauges that are read from the config in force,
/// not recorded as things happen.
pub struct BackendGauges<'a> {
    pub backend: &'a Name,
    /// Requests sent and not yet answered (what `maxRequests` bounds).
    pub in_flight: usize,
    /// Requests waiting for an upstream connection under `maxConnections`.
    pub pending: usize,
    /// Each endpoint's breaker: 0 closed, 1 open, 2 half-open.
    pub endpoints: Vec<(SocketAddr, i64)>,
}

/// Every metric the proxy records.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<LatencyLabels>,
    errors: Family<ErrorLabels, Counter>,
    connections: Family<ConnectionLabels, Counter>,
    open_connections: Family<DirectionLabels, Gauge>,
    refused_connections: Family<DirectionLabels, Counter>,
    tcp_bytes: Family<BytesLabels, Counter>,
    upstream_connects: Family<ResultLabels, Counter>,
    config_info: Family<VersionLabels, Gauge>,
    config_updates: Family<ResultLabels, Counter>,
    draining: Gauge,
    retries: Family<RetryLabels, Counter>,
    budget_exhausted: Family<BackendLabels, Counter>,
    ejections: Family<EjectionLabels, Counter>,
    breaker_state: Family<EndpointLabels, Gauge>,
    in_flight: Family<BackendLabels, Gauge>,
    pending: Family<BackendLabels, Gauge>,
    /// Held while the read gauges are set and encoded, so that two scrapes never mix.
    scrape: Mutex<()>,
    mirrors: Family<MirrorLabels, Counter>,
    spans: Family<ResultLabels, Counter>,
    access_log_dropped: Counter,
    identity_expiry: Gauge,
    identity_renewals: Family<ResultLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    inbound_denied: Family<DeniedLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    direction: Direction,
    result: &'static str,
    reason: &'static str,
    /// The negotiated version, for a handshake that succeeded.
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeniedLabels {
    policy: Name,
    reason: &'static str,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("weft");
        let requests = Family::default();
        registry.register(
            "requests",
            "HTTP requests completed, by the status code sent to the client",
            requests.clone(),
        );
        let request_duration: HistogramFamily<LatencyLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head",
            request_duration.clone(),
        );
        let errors = Family::default();
        registry.register(
            "proxy_errors",
            "Responses and refusals the proxy generated itself, by reason",
            errors.clone(),
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "Connections accepted, by detected protocol",
            connections.clone(),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Connections currently open",
            open_connections.clone(),
        );
        let refused_connections = Family::default();
        registry.register(
            "refused_connections",
            "Connections closed as soon as accepted: the proxy held --max-connections already",
            refused_connections.clone(),
        );
        let tcp_bytes = Family::default();
        registry.register(
            "tcp_bytes",
            "Bytes forwarded over opaque TCP connections",
            tcp_bytes.clone(),
        );
        let upstream_connects = Family::default();
        registry.register(
            "upstream_connects",
            "Upstream connections opened for HTTP, by result",
            upstream_connects.clone(),
        );
        let config_info = Family::default();
        registry.register(
            "config_info",
            "The config version in force (value 1)",
            config_info.clone(),
        );
        let config_updates = Family::default();
        registry.register(
            "config_updates",
            "Config updates, by result",
            config_updates.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the proxy drains before exit",
            draining.clone(),
        );
        let retries = Family::default();
        registry.register("retries", "Retries sent, by reason", retries.clone());
        let budget_exhausted = Family::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries the retry budget refused; the last upstream answer was returned",
            budget_exhausted.clone(),
        );
        let ejections = Family::default();
        registry.register(
            "breaker_ejections",
            "Endpoints ejected by their circuit breaker, by reason",
            ejections.clone(),
        );
        let breaker_state = Family::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state of every endpoint in force: 0 closed, 1 open (ejected), 2 half-open",
            breaker_state.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "in_flight_requests",
            "Requests sent to the backend and not yet answered",
            in_flight.clone(),
        );
        let pending = Family::default();
        registry.register(
            "pending_requests",
            "Requests waiting for an upstream connection under the backend's maxConnections",
            pending.clone(),
        );
        let mirrors = Family::default();
        registry.register(
            "mirror_requests",
            "Mirrored request copies, by result",
            mirrors.clone(),
        );
        let spans = Family::default();
        registry.register(
            "trace_spans",
            "Spans ended, by what became of them: exported, failed (the collector refused or was unreachable) or dropped (the export queue was full)",
            spans.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer's queue was full (a slow reader of standard output)",
            access_log_dropped.clone(),
        );
        let identity_expiry = Gauge::default();
        registry.register(
            "identity_expiry_timestamp_seconds",
            "When the workload certificate in force expires (Unix time; 0 without one)",
            identity_expiry.clone(),
        );
        let identity_renewals = Family::default();
        registry.register(
            "identity_renewals",
            "Certificate requests to the CA, by result",
            identity_renewals.clone(),
        );
        let handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "Mesh TLS handshakes, by result and failure reason",
            handshakes.clone(),
        );
        let inbound_denied = Family::default();
        registry.register(
            "inbound_denied",
            "Inbound requests and connections a ServerPolicy refused, by reason (plaintext, unauthorized, rate-limited)",
            inbound_denied.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            request_duration,
            errors,
            connections,
            open_connections,
            refused_connections,
            tcp_bytes,
            upstream_connects,
            config_info,
            config_updates,
            draining,
            retries,
            budget_exhausted,
            ejections,
            breaker_state,
            in_flight,
            pending,
            scrape: Mutex::new(()),
            mirrors,
            spans,
            access_log_dropped,
            identity_expiry,
            identity_renewals,
            handshakes,
            inbound_denied,
        })
    }

    /// Records one completed request exchange.
    pub fn request(
        &self,
        direction: Direction,
        route: &RouteId,
        backend: &Name,
        status: u16,
        latency: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                route: route.clone(),
                backend: backend.clone(),
                status_code: status,
            })
            .inc();
        self.request_duration
            .get_or_create(&LatencyLabels {
                direction,
                route: route.clone(),
                backend: backend.clone(),
            })
            .observe(latency.as_secs_f64());
    }

    /// The request metrics of one direction, route and backend, to record many requests
    /// without looking their labels up each time.
    pub fn request_stats(
        &self,
        direction: Direction,
        route: &RouteId,
        backend: &Name,
    ) -> RequestStats {
        let labels = LatencyLabels {
            direction,
            route: route.clone(),
            backend: backend.clone(),
        };
        RequestStats {
            duration: self.request_duration.get_or_create(&labels).clone(),
            labels,
            by_status: RwLock::new(Vec::new()),
        }
    }

    pub fn proxy_error(&self, direction: Direction, reason: Reason) {
        self.errors
            .get_or_create(&ErrorLabels {
                direction,
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts an accepted connection and returns a guard that keeps it in the open gauge.
    pub fn connection_opened(self: &Arc<Self>, direction: Direction) -> OpenConnection {
        self.open_connections
            .get_or_create(&DirectionLabels { direction })
            .inc();
        OpenConnection {
            metrics: self.clone(),
            direction,
        }
    }

    pub fn connection_protocol(&self, direction: Direction, protocol: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                direction,
                protocol,
            })
            .inc();
    }

    /// Counts a connection refused at the connection limit.
    pub fn connection_refused(&self, direction: Direction) {
        self.refused_connections
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    pub fn tcp_bytes(&self, direction: Direction, sent: u64, received: u64) {
        self.tcp_bytes
            .get_or_create(&BytesLabels {
                direction,
                flow: "sent",
            })
            .inc_by(sent);
        self.tcp_bytes
            .get_or_create(&BytesLabels {
                direction,
                flow: "received",
            })
            .inc_by(received);
    }

    pub fn upstream_connect(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.upstream_connects
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records the version now in force, replacing the previous one.
    pub fn config_applied(&self, version: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
        self.config_updates
            .get_or_create(&ResultLabels { result: "applied" })
            .inc();
    }

    pub fn retry(
        &self,
        direction: Direction,
        route: &RouteId,
        backend: &Name,
        reason: &'static str,
    ) {
        self.retries
            .get_or_create(&RetryLabels {
                direction,
                route: route.clone(),
                backend: backend.clone(),
                reason,
            })
            .inc();
    }

    pub fn budget_exhausted(&self, backend: &Name) {
        self.budget_exhausted
            .get_or_create(&BackendLabels {
                backend: backend.clone(),
            })
            .inc();
    }

    pub fn ejection(&self, backend: &Name, reason: &'static str) {
        self.ejections
            .get_or_create(&EjectionLabels {
                backend: backend.clone(),
                reason,
            })
            .inc();
    }

    pub fn spans(&self, result: &'static str, n: u64) {
        self.spans.get_or_create(&ResultLabels { result }).inc_by(n);
    }

    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub fn mirror(&self, backend: &Name, result: &'static str) {
        self.mirrors
            .get_or_create(&MirrorLabels {
                backend: backend.clone(),
                result,
            })
            .inc();
    }

    pub fn config_rejected(&self) {
        self.config_updates
            .get_or_create(&ResultLabels { result: "rejected" })
            .inc();
    }

    pub fn identity_renewed(&self, ok: bool, not_after: i64) {
        self.identity_renewals
            .get_or_create(&ResultLabels {
                result: if ok { "issued" } else { "failed" },
            })
            .inc();
        self.identity_expiry.set(not_after);
    }

    /// A mesh TLS handshake: the negotiated version, or why it failed.
    pub fn handshake(&self, direction: Direction, result: Result<&'static str, &'static str>) {
        let (result, reason, version) = match result {
            Ok(version) => ("ok", "", version),
            Err(reason) => ("error", reason, ""),
        };
        self.handshakes
            .get_or_create(&HandshakeLabels {
                direction,
                result,
                reason,
                version,
            })
            .inc();
    }

    /// An inbound request or connection refused by the ServerPolicy `policy`.
    pub fn inbound_denied(&self, policy: &Name, reason: &'static str) {
        self.inbound_denied
            .get_or_create(&DeniedLabels {
                policy: policy.clone(),
                reason,
            })
            .inc();
    }

    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    /// The exposition, with the read gauges set from `backends` (those of the config in
    /// force) first: every endpoint has its breaker state, 0 when healthy, and an endpoint or
    /// backend the config dropped has no series left.
    pub fn encode_with<'a>(&self, backends: impl IntoIterator<Item = BackendGauges<'a>>) -> String {
        let _one = weft_api::sync::lock(&self.scrape);
        self.breaker_state.clear();
        self.in_flight.clear();
        self.pending.clear();
        for b in backends {
            let labels = BackendLabels {
                backend: b.backend.clone(),
            };
            self.in_flight
                .get_or_create(&labels)
                .set(i64::try_from(b.in_flight).unwrap_or(i64::MAX));
            self.pending
                .get_or_create(&labels)
                .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
            for (endpoint, state) in b.endpoints {
                self.breaker_state
                    .get_or_create(&EndpointLabels {
                        backend: b.backend.clone(),
                        endpoint: endpoint.to_string(),
                    })
                    .set(state);
            }
        }
        self.encode()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

/// Keeps a connection counted in `weft_open_connections` until dropped.
/// The counters and histogram of [`Metrics::request`] for one direction, route and backend,
/// resolved once: recording through it hashes no labels and clones no names. The series are
/// the family's own, so they outlive this handle and a config swap that rebuilds it.
pub struct RequestStats {
    labels: LatencyLabels,
    duration: Histogram,
    /// `weft_requests_total` by status code, in the order the codes were first seen (at most
    /// the 500 valid codes).
    by_status: RwLock<Vec<(u16, Counter)>>,
}

impl RequestStats {
    pub fn record(&self, metrics: &Metrics, status: u16, latency: Duration) {
        self.duration.observe(latency.as_secs_f64());
        let known = self
            .by_status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.inc())
            .is_some();
        if known {
            return;
        }
        let counter = metrics
            .requests
            .get_or_create(&RequestLabels {
                direction: self.labels.direction,
                route: self.labels.route.clone(),
                backend: self.labels.backend.clone(),
                status_code: status,
            })
            .clone();
        counter.inc();
        let mut by_status = self.by_status.write().unwrap_or_else(|p| p.into_inner());
        if !by_status.iter().any(|(s, _)| *s == status) {
            by_status.push((status, counter));
        }
    }
}

pub struct OpenConnection {
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics
            .open_connections
            .get_or_create(&DirectionLabels {
                direction: self.direction,
            })
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_encoded_with_their_labels() {
        let m = Metrics::new();
        let route = RouteId::new("default");
        let backend = Name("shop/reviews:9080".into());
        m.request(
            Direction::Outbound,
            &route,
            &backend,
            200,
            Duration::from_millis(3),
        );
        m.request(
            Direction::Outbound,
            &route,
            &backend,
            200,
            Duration::from_millis(4),
        );
        let stats = m.request_stats(Direction::Outbound, &route, &backend);
        stats.record(&m, 200, Duration::from_millis(5));
        stats.record(&m, 503, Duration::from_millis(6));
        stats.record(&m, 503, Duration::from_millis(7));
        let named = RouteId {
            route: Name("shop/split".into()),
            rule: Some(Name("canary".into())),
        };
        m.request(
            Direction::Outbound,
            &named,
            &backend,
            200,
            Duration::from_millis(1),
        );
        m.retry(Direction::Outbound, &named, &backend, "status");
        m.proxy_error(Direction::Inbound, Reason::ConnectFailed);
        let open = m.connection_opened(Direction::Inbound);
        m.config_applied("v1");
        m.config_applied("v2");
        let text = m.encode();
        assert!(
            text.contains(r#"weft_requests_total{direction="outbound",route="default",backend="shop/reviews:9080",status_code="200"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_requests_total{direction="outbound",route="shop/split",rule="canary",backend="shop/reviews:9080",status_code="200"} 1"#),
            "a named rule adds its rule label: {text}"
        );
        assert!(
            text.contains(r#"weft_retries_total{direction="outbound",route="shop/split",rule="canary",backend="shop/reviews:9080",reason="status"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_requests_total{direction="outbound",route="default",backend="shop/reviews:9080",status_code="503"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_request_duration_seconds_count{direction="outbound",route="default",backend="shop/reviews:9080"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"weft_proxy_errors_total{direction="inbound",reason="connect-failed"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_open_connections{direction="inbound"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_config_info{version="v2"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"version="v1""#), "{text}");
        drop(open);
        assert!(
            m.encode()
                .contains(r#"weft_open_connections{direction="inbound"} 0"#)
        );
    }
}
