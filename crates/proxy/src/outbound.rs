//! The outbound side: connections from the local application to the mesh.
//!
//! accept → original destination → detect → route → connect → forward.
//!
//! Where a connection goes:
//! - redirected by iptables to an address that is no Service: opaque passthrough to that
//!   address, without reading a byte (an unknown server may speak first);
//! - redirected to a Service's cluster IP and port: by protocol, HTTP requests are routed per
//!   request, anything else goes to the Service's endpoints as opaque TCP;
//! - not redirected (local mode: the application uses the proxy as its HTTP proxy): HTTP
//!   only, routed by each request's authority.
//!
//! Per request, the authority (absolute URI, `:authority` or `Host`) names the Service when it
//! matches one; otherwise the original destination does; otherwise the answer is 503
//! `no-route`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use weft_api::config::Protocol as ServiceProtocol;

use crate::detect::{self, Protocol, Undecided};
use crate::errors::{self, ProxyError, Reason};
use crate::http::body::Body;
use crate::http::server::{self, Head};
use crate::http::{forward, headers};
use crate::io::{Rewind, splice};
use crate::metrics::{Direction, Name};
use crate::orig_dst::original_dst;
use crate::shared::Shared;
use crate::state::Destination;
use crate::tcp;
use crate::transport_header;
use crate::upstream::Dial;

const DIRECTION: Direction = Direction::Outbound;

/// Handles one accepted outbound connection to its end.
pub async fn handle(shared: Arc<Shared>, mut stream: TcpStream, client: SocketAddr) {
    let _open = shared.metrics.connection_opened(DIRECTION);
    let orig = original_dst(&stream);
    let dest = orig.and_then(|o| shared.state.load().by_vip(o).cloned());
    if let (Some(orig), None) = (orig, &dest) {
        shared.metrics.connection_protocol(DIRECTION, "passthrough");
        tracing::debug!(%client, %orig, "unknown destination: opaque passthrough");
        tcp::forward(&shared, DIRECTION, stream, Dial::Direct(orig)).await;
        return;
    }
    if let Some(d) = &dest
        && (d.protocol == ServiceProtocol::Opaque || shared.settings.opaque_ports.contains(&d.port))
    {
        shared.metrics.connection_protocol(DIRECTION, "opaque");
        to_destination(&shared, stream, d).await;
        return;
    }

    let mut buf = BytesMut::with_capacity(4096);
    // A silent connection to a Service may be a server-first protocol: after the detection
    // timeout it is forwarded as it is. With no destination there is nowhere to forward it.
    let timeout = match dest {
        Some(_) => shared.settings.detect_timeout.0,
        None => shared.settings.header_read_timeout.0,
    };
    let detected = match detect::read_and_classify(&mut stream, &mut buf, timeout).await {
        Ok(detected) => detected,
        Err(e) => {
            tracing::debug!(%client, error = %e, "reading the first bytes failed");
            return;
        }
    };
    let protocol = match detected {
        Ok(p) => p,
        Err(Undecided::Timeout) => Protocol::Opaque,
        Err(Undecided::Eof) => return,
    };
    shared
        .metrics
        .connection_protocol(DIRECTION, protocol.as_str());
    match (protocol, dest) {
        (Protocol::Http1, _) => {
            match server::check_first_head(&mut stream, &mut buf, limits(&shared)).await {
                Head::Ok => {}
                Head::Refuse(reason) => {
                    shared.metrics.proxy_error(DIRECTION, reason);
                    server::refuse(&mut stream, reason).await;
                    return;
                }
                Head::Closed => return,
            }
            serve_http(shared, Rewind::new(buf.freeze(), stream), false, orig).await;
        }
        (Protocol::Http2, _) => {
            serve_http(shared, Rewind::new(buf.freeze(), stream), true, orig).await
        }
        (_, Some(dest)) => to_destination(&shared, Rewind::new(buf.freeze(), stream), &dest).await,
        (Protocol::Opaque, None) if !buf.is_empty() => {
            // The client addressed us as an HTTP proxy and sent something else.
            shared.metrics.proxy_error(DIRECTION, Reason::BadRequest);
            server::refuse(&mut stream, Reason::BadRequest).await;
        }
        (_, None) => {
            tracing::debug!(%client, protocol = protocol.as_str(), "no destination for a non-HTTP connection")
        }
    }
}

fn limits(shared: &Shared) -> server::Limits {
    server::Limits {
        header_read_timeout: shared.settings.header_read_timeout.0,
        max_header_bytes: shared.settings.max_header_bytes,
    }
}

/// Forwards a whole connection to one of a Service's endpoints as opaque TCP.
async fn to_destination<I>(shared: &Shared, io: I, dest: &Destination)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match dest.backend.pick() {
        Some(ep) => tcp::forward(shared, DIRECTION, io, ep.dial).await,
        None => {
            shared
                .metrics
                .proxy_error(DIRECTION, Reason::NoHealthyEndpoints);
            tracing::info!(
                destination = &*dest.name.0,
                "no endpoints; closing the connection"
            );
        }
    }
}

async fn serve_http(
    shared: Arc<Shared>,
    io: Rewind<TcpStream>,
    http2: bool,
    orig: Option<SocketAddr>,
) {
    let handler = Arc::new(Http {
        shared: shared.clone(),
        orig,
    });
    server::serve(
        io,
        http2,
        limits(&shared),
        shared.shutdown.clone(),
        move |req| handler.clone().handle(req),
    )
    .await;
}

/// Routes the requests of one outbound HTTP connection.
struct Http {
    shared: Arc<Shared>,
    orig: Option<SocketAddr>,
}

static DEFAULT_ROUTE: std::sync::LazyLock<Name> =
    std::sync::LazyLock::new(|| Name("default".into()));
static NO_ROUTE: std::sync::LazyLock<Name> = std::sync::LazyLock::new(Name::default);

impl Http {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let grpc = errors::is_grpc(&req);
        let method = req.method().clone();
        let (dest, by_authority) = self.destination(&req);
        let Some(dest) = dest else {
            let authority = headers::authority_of(&req).unwrap_or_default().to_owned();
            tracing::debug!(%authority, "no route");
            return self.finish(
                start,
                &NO_ROUTE,
                &NO_ROUTE,
                Err(ProxyError::NoRoute(authority)),
                grpc,
                &method,
            );
        };
        let backend = &dest.backend;
        let result = if method == Method::CONNECT && by_authority {
            self.tunnel(req, &dest).await
        } else {
            match backend.pick() {
                Some(ep) => {
                    forward::forward(&self.shared.pools, &self.shared.tasks, ep.dial, req).await
                }
                None => Err(ProxyError::NoEndpoints(backend.name.0.clone())),
            }
        };
        self.finish(start, &DEFAULT_ROUTE, &backend.name, result, grpc, &method)
    }

    /// The Service the request is for, and whether its authority named it.
    fn destination(&self, req: &Request<Incoming>) -> (Option<Arc<Destination>>, bool) {
        let snapshot = self.shared.state.load();
        if let Some(d) = headers::authority_of(req).and_then(|a| snapshot.by_authority(a)) {
            return (Some(d.clone()), true);
        }
        (self.orig.and_then(|o| snapshot.by_vip(o)).cloned(), false)
    }

    /// `CONNECT` to a Service: the proxy is the tunnel's end, and carries the bytes to an
    /// endpoint as opaque TCP.
    async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        dest: &Destination,
    ) -> Result<Response<Body>, ProxyError> {
        let ep = dest
            .backend
            .pick()
            .ok_or_else(|| ProxyError::NoEndpoints(dest.backend.name.0.clone()))?;
        let mut upstream = self
            .shared
            .pools
            .connector()
            .connect(&ep.dial, transport_header::Protocol::Opaque)
            .await?;
        let on_upgrade = hyper::upgrade::on(&mut req);
        self.shared.tasks.spawn(async move {
            match on_upgrade.await {
                Ok(down) => {
                    if let Err(e) = splice(&mut TokioIo::new(down), &mut upstream).await {
                        tracing::debug!(error = %e, "CONNECT tunnel ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        Ok(Response::new(Body::empty()))
    }

    fn finish(
        &self,
        start: Instant,
        route: &Name,
        backend: &Name,
        result: Result<Response<Body>, ProxyError>,
        grpc: bool,
        method: &Method,
    ) -> Response<Body> {
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let reason = e.reason();
                tracing::debug!(error = %e, reason = reason.as_str(), "request failed");
                self.shared.metrics.proxy_error(DIRECTION, reason);
                errors::error_response(reason, grpc)
            }
        };
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        self.shared
            .metrics
            .request(DIRECTION, route, backend, status, elapsed);
        if self.shared.settings.access_log {
            tracing::info!(
                target: "weft::access",
                direction = "outbound",
                %method,
                route = &*route.0,
                backend = &*backend.0,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
        resp
    }
}
