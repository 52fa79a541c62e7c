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
mod bad_input;
mod drain;
mod grpc;
mod http1;
mod http2;
mod intercept;
mod tcp;
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

    pub fn endpoint(&self) -> Ep {
        Ep::meshed(self.app.addr)
    }
}
