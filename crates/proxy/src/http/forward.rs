//! Sending a downstream request upstream, and the response back.
//!
//! Bodies stream in both directions with trailers intact. A request that asks to leave HTTP
//! (WebSocket `Upgrade`, `CONNECT`) is forwarded like any other; when the upstream agrees
//! (101, or 2xx for CONNECT), both connections are taken over and spliced as a tunnel.
//!
//! [`prepare`] and [`complete`] bracket an exchange, so that the outbound side can make
//! several attempts in between; [`forward`] sends to one address with no policy, as the
//! inbound side does, sending again only what surely never reached the application.
//! [`Replay`] keeps a request (its head, and its body as it streams) to send it again.

use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::errors::ProxyError;
use crate::http::body::{Body, BoxedRequest};
use crate::http::client::{Pools, SendOptions};
use crate::http::headers::{self, Upgrade};
use crate::http::replay::Recorder;
use crate::http::server::{self, OnUpgrade};
use crate::io::splice;
use crate::policy::retry::Unsent;
use crate::upstream::Dial;

/// How many times [`forward`] sends a request again after it surely never reached the
/// application.
const RESENDS: u32 = 2;

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

/// Sends a request to `dial`, no policy. A request that surely never reached the application
/// on a connection that could not take it (one the upstream had closed, or was closing with
/// GOAWAY, or a stream it refused) is sent again on another, up to [`RESENDS`] times; an
/// HTTP/2 request is kept for that (its stream can be refused after its head went out), and
/// `resent` is told of each. A refused connection is not tried again: the application is not
/// listening. (Not an `async
/// fn`, which would keep the request twice: see `outbound::request`.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice: see outbound::request"
)]
pub fn forward(
    pools: &Arc<Pools>,
    tasks: &TaskTracker,
    dial: Dial,
    mut req: BoxedRequest,
    resent: impl Fn(Unsent),
) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
    async move {
        let prepared = prepare(&mut req);
        let opts = SendOptions {
            reuse: prepared.upgrade.is_none(),
            ..SendOptions::default()
        };
        // Boxed: most requests have no use for it.
        let replay = (opts.reuse && req.version() == Version::HTTP_2)
            .then(|| Box::new(Replay::record(&mut req)));
        let mut resends = 0;
        loop {
            match pools.send(dial.clone(), req, &opts).await {
                Ok(resp) => return Ok(complete(prepared, resp, tasks)),
                Err(e) => {
                    let unsent = e.error.unsent();
                    let again = match unsent {
                        Some(Unsent::ConnectFailed) | None => None,
                        Some(_) if resends >= RESENDS => None,
                        Some(_) => e.unsent.or_else(|| replay.as_ref()?.again()),
                    };
                    let (Some(again), Some(unsent)) = (again, unsent) else {
                        return Err(e.error);
                    };
                    resent(unsent);
                    tracing::debug!(addr = %dial.addr(), error = %e.error, "never reached the application; sending again");
                    resends += 1;
                    req = again;
                }
            }
        }
    }
}

/// A request kept to be sent again: its head, and its body recorded as it streams (up to
/// `replay::MAX_REPLAY`; nothing waits for it).
pub struct Replay {
    head: Head,
    recorder: Recorder,
}

impl Replay {
    /// Starts keeping `req`: its head now, its body as it is read.
    pub fn record(req: &mut Request<Body>) -> Replay {
        let recorder = if http_body::Body::is_end_stream(req.body()) {
            Recorder::empty()
        } else {
            let recorder = Recorder::default();
            let body = std::mem::replace(req.body_mut(), Body::Empty);
            *req.body_mut() = Body::Tee(recorder.tee(body));
            recorder
        };
        Replay {
            head: Head::of(req),
            recorder,
        }
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The request again, when its whole body was recorded.
    pub fn again(&self) -> Option<BoxedRequest> {
        let body = self.recorder.replay()?;
        Some(Box::new(self.head.request(Body::Replay(Box::new(body)))))
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
