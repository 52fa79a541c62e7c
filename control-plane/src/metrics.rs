//! The control plane's metrics, prefixed `weft_control_`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct ControlMetrics {
    registry: Registry,
    proxies: Gauge,
    generation: Gauge,
    manifest_errors: Gauge,
    reloads: Family<ResultLabels, Counter>,
    snapshots: Counter,
    replies: Family<ResultLabels, Counter>,
    ack_latency: Histogram,
    certificates: Family<ResultLabels, Counter>,
    nacks: Family<ReasonLabels, Counter>,
    reconcile: Histogram,
    injections: Family<ResultLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

impl ControlMetrics {
    pub fn new() -> Arc<ControlMetrics> {
        let mut registry = Registry::with_prefix("weft_control");
        let proxies = Gauge::default();
        registry.register(
            "proxies",
            "Proxies subscribed to the config stream",
            proxies.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "generation",
            "The generation of the accepted manifests",
            generation.clone(),
        );
        let manifest_errors = Gauge::default();
        registry.register(
            "manifest_errors",
            "Errors in the manifests now",
            manifest_errors.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "reloads",
            "Manifest reloads, by whether anything changed",
            reloads.clone(),
        );
        let snapshots = Counter::default();
        registry.register(
            "snapshots_sent",
            "Config snapshots sent to proxies",
            snapshots.clone(),
        );
        let replies = Family::default();
        registry.register(
            "replies",
            "Proxy replies to snapshots: ack or nack",
            replies.clone(),
        );
        let ack_latency = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "ack_latency_seconds",
            "From noticing a manifest change to a proxy's ACK of the config it produced",
            ack_latency.clone(),
        );
        let certificates = Family::default();
        registry.register(
            "certificates",
            "Certificate requests, by result",
            certificates.clone(),
        );
        let nacks = Family::default();
        registry.register(
            "nacks",
            "Configs proxies refused, by the kind of reason (too-large, unreadable, version-mismatch, invalid; unknown from older proxies)",
            nacks.clone(),
        );
        let reconcile = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time to rebuild the accepted manifests after a change: parse, validate, index",
            reconcile.clone(),
        );
        let injections = Family::default();
        registry.register(
            "injections",
            "Pods the admission webhook reviewed: injected, skipped (not selected, opted out, injected already) or refused (a bad annotation)",
            injections.clone(),
        );
        Arc::new(ControlMetrics {
            registry,
            proxies,
            generation,
            manifest_errors,
            reloads,
            snapshots,
            replies,
            ack_latency,
            certificates,
            nacks,
            reconcile,
            injections,
        })
    }

    pub fn proxies(&self, n: usize) {
        self.proxies.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn generation(&self, number: u64, errors: usize) {
        self.generation
            .set(i64::try_from(number).unwrap_or(i64::MAX));
        self.manifest_errors
            .set(i64::try_from(errors).unwrap_or(i64::MAX));
    }

    pub fn reload(&self, changed: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if changed { "changed" } else { "unchanged" },
            })
            .inc();
    }

    pub fn snapshot_sent(&self) {
        self.snapshots.inc();
    }

    pub fn reply(&self, ack: bool, latency: Option<std::time::Duration>) {
        self.replies
            .get_or_create(&ResultLabels {
                result: if ack { "ack" } else { "nack" },
            })
            .inc();
        if let Some(l) = latency {
            self.ack_latency.observe(l.as_secs_f64());
        }
    }

    /// A NACK, by its kind: only the kinds proxies send are labels, so a proxy cannot grow
    /// the family.
    pub fn nack(&self, kind: &str) {
        let reason = match kind {
            "too-large" | "unreadable" | "version-mismatch" | "invalid" => kind,
            _ => "unknown",
        };
        self.nacks
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn reconciled(&self, took: std::time::Duration) {
        self.reconcile.observe(took.as_secs_f64());
    }

    pub fn certificate(&self, issued: bool) {
        self.certificates
            .get_or_create(&ResultLabels {
                result: if issued { "issued" } else { "refused" },
            })
            .inc();
    }

    /// An admission review's result: `injected`, `skipped` or `refused`.
    pub fn injection(&self, result: &'static str) {
        self.injections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
