//! What every connection task shares: the config in force, upstream pools, metrics, and the
//! drain signal with the tracker of work that a drain waits for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::Response;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::RateBuckets;
use crate::backends::Registry;
use crate::errors::ProxyError;
use crate::http::body::Body;
use crate::http::client::Pools;
use crate::http::server::{self, Limits};
use crate::identity::{Identity, Issuer};
use crate::metrics::{Direction, Metrics};
use crate::settings::Settings;
use crate::state::State;
use crate::traces::Observer;

pub struct Shared {
    pub settings: Settings,
    /// The settings' limits on downstream HTTP, with the header-read timer they share.
    pub http_limits: Limits,
    pub state: State,
    pub pools: Arc<Pools>,
    pub metrics: Arc<Metrics>,
    /// Connection tasks and tunnels: a drain waits for them until the grace period ends.
    pub tasks: TaskTracker,
    /// The one drain signal: cancelled by SIGTERM, SIGINT or `POST /drain`.
    pub shutdown: CancellationToken,
    /// Set once a first config is in force.
    pub config_loaded: AtomicBool,
    /// Backend and endpoint state that outlives config snapshots.
    pub registry: Registry,
    /// The ServerPolicies' rate-limit buckets, which outlive config snapshots too.
    pub inbound_buckets: RateBuckets,
    /// Mirrored copies in flight.
    pub mirrors_in_flight: AtomicUsize,
    /// The workload's identity, when the proxy has a CA to get certificates from.
    pub identity: Option<Arc<Identity>>,
    /// Where certificates come from.
    pub issuer: Option<Issuer>,
    /// With `--otlp-endpoint` or `--access-log`: records requests, exports their spans and
    /// writes their access log lines.
    pub observer: Option<Arc<Observer>>,
}

impl Shared {
    /// A request's response: its own, or for a failure the error's response, counted under
    /// `weft_proxy_errors_total` and logged at debug.
    pub fn respond(
        &self,
        direction: Direction,
        result: Result<Response<Body>, ProxyError>,
        grpc: bool,
    ) -> Response<Body> {
        match result {
            Ok(resp) => resp,
            Err(e) => {
                let reason = e.reason();
                tracing::debug!(direction = direction.as_str(), error = %e, reason = reason.as_str(), "request failed");
                self.metrics.proxy_error(direction, reason);
                server::error_response(reason, grpc)
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.config_loaded.load(Ordering::Acquire)
            && self.identity.as_ref().is_none_or(|i| i.is_certified())
            && !self.shutdown.is_cancelled()
    }
}

/// A `Shared` with default settings, no config and no identity, for unit tests that need one.
#[cfg(test)]
pub fn for_tests() -> Arc<Shared> {
    use crate::http::client::PoolSettings;
    use crate::upstream::Connector;
    let settings = Settings::default();
    let metrics = Metrics::new();
    let pools = Pools::new(
        Connector {
            connect_timeout: settings.connect_timeout.0,
            identity: None,
            metrics: metrics.clone(),
        },
        PoolSettings {
            idle_timeout: settings.upstream_idle_timeout.0,
            max_idle_per_key: 16,
        },
        metrics.clone(),
    );
    let registry = Registry::default();
    let inbound_buckets = RateBuckets::default();
    let snapshot = crate::state::Snapshot::build(
        weft_api::config::ProxyConfig::default(),
        &settings.namespace,
        &registry,
        &inbound_buckets,
    );
    Arc::new(Shared {
        http_limits: Limits {
            header_read_timeout: settings.header_read_timeout.0,
            max_header_bytes: settings.max_header_bytes,
            timer: Default::default(),
        },
        settings,
        state: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
        pools,
        metrics,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        config_loaded: AtomicBool::new(true),
        registry,
        inbound_buckets,
        mirrors_in_flight: AtomicUsize::new(0),
        identity: None,
        issuer: None,
        observer: None,
    })
}
