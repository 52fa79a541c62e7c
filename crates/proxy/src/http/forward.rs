//! Sending one downstream request to an upstream, and the response back.
//!
//! Bodies stream in both directions with trailers intact. A request that asks to leave HTTP
//! (WebSocket `Upgrade`, `CONNECT`) is forwarded like any other; when the upstream agrees
//! (101, or 2xx for CONNECT), both connections are taken over and spliced as a tunnel.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::errors::ProxyError;
use crate::http::body::Body;
use crate::http::headers::{self, Upgrade};
use crate::io::splice;
use crate::upstream::{Dial, Pools};

pub async fn forward(
    pools: &Arc<Pools>,
    tasks: &TaskTracker,
    dial: Dial,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = headers::upgrade_of(&req);
    let downstream = upgrade.map(|_| hyper::upgrade::on(&mut req));
    headers::prepare_request(&mut req, upgrade);
    let mut resp = pools
        .send(dial, req.map(Body::Incoming), upgrade.is_none())
        .await?;
    let upgraded = match upgrade {
        Some(Upgrade::Protocol) => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
        Some(Upgrade::Connect) => resp.status().is_success(),
        None => false,
    };
    if let (true, Some(downstream)) = (upgraded, downstream) {
        let upstream = hyper::upgrade::on(&mut resp);
        tasks.spawn(tunnel(downstream, upstream));
    }
    headers::prepare_response(&mut resp, upgraded && upgrade == Some(Upgrade::Protocol));
    Ok(resp)
}

/// Splices an upgraded downstream connection with an upgraded upstream one.
async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(e) = splice(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
    }
}
