//! The end-to-end test harness: it runs the real `weft-proxy` binary as a process next to test
//! workloads, on loopback "pod" addresses or inside network namespaces.
//!
//! # Layout
//! - [`pods`]: a unique loopback address per pod, so tests run in parallel without sharing a
//!   port.
//! - [`paths`]: the binaries under test, and scratch directories.
//! - [`proxy`]: a `weft-proxy run` process, its admin API, its memory, its exit.
//! - [`control`]: a `weft control` process serving a manifest directory.
//! - [`fake_control`]: a control plane in the test process (real protocol, test CA), for what
//!   the real one never does.
//! - [`mesh`]: building the compiled config a proxy runs on.
//! - [`manifests`]: the examples in `manifests/examples/` with the test's own pods, compiled by
//!   `weft compile`.
//! - [`client`]: HTTP/1 and HTTP/2 clients that talk to a proxy as an application would.
//! - [`h2raw`]: HTTP/2 frame by frame, for the attacks no client library would send.
//! - [`workloads`]: the applications behind the proxies; [`echo`], the Gateway API
//!   conformance tests' echo application and its client.
//! - [`netns`]: network namespaces as pods, with real iptables interception (root only).
//! - [`kubelet`]: a pod spec run as a kubelet runs it, in a network namespace (root only).
//! - [`tools`]: third-party tools as users have them: nginx as an upstream, h2load, the
//!   Prometheus project's OpenMetrics parser.
//! - [`otlp`]: an OTLP trace receiver, the collector end of the proxies' spans.
//! - [`kube_types`]: manifests read as the Kubernetes types, unknown fields refused.
//!
//! # Layers
//! From the top. A module uses only modules of its own layer or of the layers below it, and
//! no files use each other around a circle (`tests/house.rs` checks both):
//!
//! 1. the processes under test: [`proxy`], [`control`], [`fake_control`], [`manifests`],
//!    [`mesh`], [`kubelet`]
//! 2. what talks to them: [`legit`], [`client`], [`h2raw`], [`workloads`], [`echo`], [`tools`],
//!    [`kube_api`], [`netns`], [`otlp`]
//! 3. foundations: [`paths`], [`pods`], [`kube_types`]

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a failed expectation is reported"
)]

pub mod client;
pub mod control;
pub mod echo;
pub mod fake_control;
pub mod h2raw;
pub mod kube_api;
pub mod kube_types;
pub mod kubelet;
pub mod legit;
pub mod manifests;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod paths;
pub mod pods;
pub mod proxy;
pub mod tools;
pub mod workloads;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
