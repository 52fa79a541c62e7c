//! End-to-end tests: the real `weft-proxy` binary, real sockets, real processes.
//!
//! Each test builds its own pods on fresh loopback addresses (`weft_tests::pods`), so tests run
//! in parallel. Tests that need root (network namespaces, iptables) skip loudly without it,
//! and fail instead under `WEFT_REQUIRE_ROOT_TESTS=1`.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a failed expectation is reported"
)]

mod admin;
mod app_health;
mod bad_input;
mod cancel;
mod chaos;
mod cluster;
mod conformance;
mod control_plane;
mod demo;
mod drain;
mod floods;
mod grpc;
mod h2_attacks;
mod hostile_manifests;
mod http1;
mod http2;
mod identity;
mod inject;
mod injected_pod;
mod intercept;
mod rapid_reset;
mod resilience;
mod routes;
mod tcp;
mod traces;
mod upstream_close;
mod webhook;
mod websocket;

use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

/// A server pod: an HTTP application on port 8080 with its own sidecar.
pub struct ServerPod {
    pub app: HttpBackend,
    pub proxy: Proxy,
}

impl ServerPod {
    pub async fn start(name: &str) -> ServerPod {
        let ip = pod_ip();
        let app = HttpBackend::start(at(ip, 8080), name).await;
        let proxy = Proxy::start(ip, &Mesh::new("server").build(), &[]).await;
        ServerPod { app, proxy }
    }

    /// A server pod whose sidecar joins `cp` as `shop/<service_account>` (the service account
    /// its Pod manifest names).
    pub async fn joined(
        name: &str,
        cp: &weft_tests::control::ControlPlane,
        service_account: &str,
    ) -> ServerPod {
        let ip = pod_ip();
        let app = HttpBackend::start(at(ip, 8080), name).await;
        let proxy = Proxy::joined(ip, cp, "shop", service_account, &[]).await;
        ServerPod { app, proxy }
    }

    pub fn endpoint(&self) -> Ep {
        Ep::meshed(self.app.addr)
    }
}

/// A backend application on a fresh pod address, port 9080.
pub async fn app(name: &str) -> HttpBackend {
    HttpBackend::start(at(pod_ip(), 9080), name).await
}

/// Sends `n` requests on one keep-alive connection and counts the answers by status and
/// `x-served-by`.
pub async fn tally(
    proxy: std::net::SocketAddr,
    n: usize,
    request: impl Fn(usize) -> http::Request<weft_tests::workloads::TestBody>,
) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut conn = weft_tests::client::http1(proxy).await.unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..n {
        conn.ready().await.unwrap();
        let resp = conn.send_request(request(i)).await.unwrap();
        let key = (resp.status().as_u16(), weft_tests::client::served_by(&resp));
        weft_tests::client::text(resp).await.unwrap();
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// `GET url`, with `headers`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> http::Request<weft_tests::workloads::TestBody> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(weft_tests::client::empty()).unwrap()
}
