//! Sending a downstream request upstream, and the response back.
//!
//! Bodies stream in both directions with trailers intact. A request that asks to leave HTTP
//! (WebSocket `Upgrade`, `CONNECT`) is forwarded like any other; when the upstream agrees
//! (101, or 2xx for CONNECT), both connections are taken over and spliced as a tunnel.
//!
//! [`prepare`] and [`complete`] bracket an exchange, so that the outbound side can make
//! several attempts in between; [`forward`] is a single attempt, as the inbound side makes.

use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::errors::ProxyError;
use crate::http::body::{Body, BoxedRequest};
use crate::http::client::{Pools, SendOptions};
use crate::http::headers::{self, Upgrade};
use crate::http::server::{self, OnUpgrade};
use crate::io::splice;
use crate::upstream::Dial;

/// A request readied for upstream, with the downstream half of a tunnel it may open.
pub struct Prepared {
    pub upgrade: Option<Upgrade>,
    downstream: Option<OnUpgrade>,
}

/// Readies a downstream request: hop-by-hop headers go, and for an upgrade the downstream
/// connection is claimed.
pub fn prepare(req: &mut Request<Body>) -> Prepared {
    let upgrade = headers::upgrade_of(req);
    let downstream = upgrade.map(|_| server::on_upgrade(req));
    headers::prepare_request(req, upgrade);
    Prepared {
        upgrade,
        downstream,
    }
}

/// Finishes an exchange: an accepted upgrade becomes a tunnel; hop-by-hop headers go.
pub fn complete(
    prepared: Prepared,
    mut resp: Response<Body>,
    tasks: &TaskTracker,
) -> Response<Body> {
    let upgraded = match prepared.upgrade {
        Some(Upgrade::Protocol) => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
        Some(Upgrade::Connect) => resp.status().is_success(),
        None => false,
    };
    if let (true, Some(downstream)) = (upgraded, prepared.downstream) {
        let upstream = hyper::upgrade::on(&mut resp);
        tasks.spawn(tunnel(downstream, upstream));
    }
    headers::prepare_response(
        &mut resp,
        upgraded && prepared.upgrade == Some(Upgrade::Protocol),
    );
    resp
}

/// One attempt, no policy. (Not an `async fn`, which would keep the request twice: see
/// `outbound::request`.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice: see outbound::request"
)]
pub fn forward(
    pools: &Arc<Pools>,
    tasks: &TaskTracker,
    dial: Dial,
    mut req: BoxedRequest,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
    async move {
        let prepared = prepare(&mut req);
        let opts = SendOptions {
            reuse: prepared.upgrade.is_none(),
            ..SendOptions::default()
        };
        let resp = pools.send(dial, req, &opts).await.map_err(|e| e.error)?;
        Ok(complete(prepared, resp, tasks))
    }
}

/// A request head kept to send the request again.
#[derive(Debug, Clone)]
pub struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    pub fn of<B>(req: &Request<B>) -> Head {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        }
    }

    pub fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Splices an upgraded downstream connection with an upgraded upstream one.
async fn tunnel(downstream: OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let upstream = async { upstream.await.map_err(std::io::Error::other) };
    match tokio::try_join!(downstream.wait(), upstream) {
        Ok((mut down, up)) => {
            let mut up = TokioIo::new(up);
            if let Err(e) = splice(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}
