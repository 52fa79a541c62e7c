//! The inbound side: connections from the mesh to the local application.
//!
//! accept → mesh TLS → target port → detect → forward to the application at `<pod IP>:<port>`.
//!
//! A connection dialled straight at the inbound port comes from a peer proxy. When this proxy
//! has an identity it is mutual TLS: terminated here, the client's certificate verified against
//! the trust anchors and its SPIFFE ID read. Inside, the transport header names the target port
//! and protocol. A connection iptables redirected here comes from a client without a proxy: its
//! original destination names the port, and any TLS in it is the application's own, passed
//! through untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::authz::{self, Denied, InboundPolicy, Operation, Peer};
use crate::detect::{self, Protocol, Undecided};
use crate::errors::{self, ProxyError, Reason};
use crate::http::body::{Body, BoxedRequest};
use crate::http::client::{UNSENT_HEADER, restore_orig_proto};
use crate::http::forward;
use crate::http::server;
use crate::io::{Conn, Rewind};
use crate::metrics::{Direction, Name, RequestStats, RouteId};
use crate::orig_dst::{canonical, original_dst};
use crate::policy::retry::Unsent;
use crate::shared::Shared;
use crate::tcp;
use crate::traces;
use crate::transport_header::{self, Header};
use crate::upstream::Dial;
use opentelemetry::trace::SpanKind;

const DIRECTION: Direction = Direction::Inbound;

/// The header that tells the application which workload called, set from the caller's
/// certificate (and removed from any request that did not come over mesh TLS).
pub static PEER_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-weft-peer-identity");

/// Handles one accepted inbound connection to its end.
pub async fn handle(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let accepted = Instant::now();
    let _open = shared.metrics.connection_opened(DIRECTION);
    let Ok(local) = stream.local_addr().map(canonical) else {
        return;
    };
    let detect_timeout = shared.settings.detect_timeout.0;
    let (mut conn, mut buf, peer, app, hint) = match original_dst(&stream) {
        Some(orig) => (
            Conn::Tcp(stream),
            BytesMut::new(),
            Peer::default(),
            orig,
            None,
        ),
        None => {
            let mut buf = BytesMut::new();
            // Boxed: the handshake's state is large and gone once it completes.
            let Some((mut conn, peer)) =
                Box::pin(accept_mesh(&shared, stream, &mut buf, client)).await
            else {
                return;
            };
            match read_header(&mut conn, &mut buf, detect_timeout).await {
                Ok(header) => (
                    conn,
                    buf,
                    peer,
                    SocketAddr::new(local.ip(), header.port),
                    Some(header.protocol),
                ),
                Err(e) => {
                    shared.metrics.proxy_error(DIRECTION, Reason::BadRequest);
                    tracing::info!(%client, error = %e, "inbound connection without a target; closing");
                    return;
                }
            }
        }
    };
    if app.ip() == local.ip() && shared.settings.is_own_port(app.port()) {
        tracing::warn!(%client, %app, "refusing to forward to the proxy's own listener");
        return;
    }
    // The mTLS mode decides whether the peer may talk to this port at all; the rules and the
    // rate limit apply per request (HTTP) or here (opaque TCP).
    if let Some(policy) = shared.state.load().inbound_policy(app.port())
        && let Err(denied) = policy.admits(&peer)
    {
        deny(&shared, policy, denied, client, app);
        return;
    }
    let opaque = shared.settings.opaque_ports.contains(&app.port())
        || shared
            .state
            .load()
            .inbound_opaque_ports
            .contains(&app.port());
    let protocol = match hint {
        _ if opaque => Protocol::Opaque,
        Some(transport_header::Protocol::Opaque) => Protocol::Opaque,
        Some(transport_header::Protocol::Http1) => Protocol::Http1,
        Some(transport_header::Protocol::Http2) => Protocol::Http2,
        None => match detect::read_and_classify(&mut conn, &mut buf, detect_timeout).await {
            Ok(Ok(p)) => p,
            Ok(Err(Undecided::Timeout)) => Protocol::Opaque,
            Ok(Err(Undecided::Eof)) | Err(_) => return,
        },
    };
    shared
        .metrics
        .connection_protocol(DIRECTION, protocol.as_str());
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let backend = Name(app.to_string().into());
            // A peer proxy, as far as it can be told: with a transport header, and
            // authenticated by mesh TLS unless this proxy has no identity to check with.
            let from_peer = hint.is_some() && (peer.tls || shared.identity.is_none());
            let handler = Arc::new(Http {
                shared: shared.clone(),
                app,
                stats: shared
                    .metrics
                    .request_stats(DIRECTION, &INBOUND_ROUTE, &backend),
                backend,
                identity_header: peer
                    .identity
                    .as_deref()
                    .and_then(|id| HeaderValue::from_str(id).ok()),
                peer,
                from_proxy: hint.is_some(),
            });
            let detected = server::Detected {
                conn,
                buf,
                http2: protocol == Protocol::Http2,
                accepted,
                from_peer,
            };
            server::serve(
                detected,
                shared.http_limits.clone(),
                shared.shutdown.clone(),
                move |req| handler.clone().handle(req),
                |reason| shared.metrics.proxy_error(DIRECTION, reason),
            )
            .await;
        }
        // Application TLS and other opaque protocols go to the application as they are.
        _ => {
            if let Some(policy) = shared.state.load().inbound_policy(app.port())
                && let Err(denied) = policy.check(&peer, None)
            {
                deny(&shared, policy, denied, client, app);
                return;
            }
            tcp::forward(
                &shared,
                DIRECTION,
                Rewind::new(buf.freeze(), conn),
                Dial::Direct(app),
            )
            .await
        }
    }
}

/// For a connection a peer proxy dialled: terminates mesh TLS when this proxy has an identity
/// and the peer speaks TLS. Plaintext is left as it is (the bytes read stay in `buf`).
async fn accept_mesh(
    shared: &Shared,
    mut stream: TcpStream,
    buf: &mut BytesMut,
    client: SocketAddr,
) -> Option<(Conn, Peer)> {
    let Some(identity) = &shared.identity else {
        return Some((Conn::Tcp(stream), Peer::default()));
    };
    let timeout = shared.settings.detect_timeout.0.max(Duration::from_secs(1));
    match detect::read_and_classify(&mut stream, buf, timeout).await {
        Ok(Ok(Protocol::Tls)) => {}
        Ok(Ok(_)) => return Some((Conn::Tcp(stream), Peer::default())),
        Ok(Err(_)) | Err(_) => return None,
    }
    let rewind = Rewind::new(std::mem::take(buf).freeze(), stream);
    let accepted = crate::mesh_tls::accept(
        identity,
        rewind,
        client,
        Duration::from_secs(10),
        &shared.metrics,
    )
    .await?;
    Some((
        Conn::TlsServer(Box::new(accepted.stream)),
        Peer {
            identity: accepted.peer_identity,
            tls: true,
        },
    ))
}

/// Counts and logs a refusal; the caller closes the connection.
fn deny(
    shared: &Shared,
    policy: &InboundPolicy,
    denied: Denied,
    client: SocketAddr,
    app: SocketAddr,
) {
    shared.metrics.inbound_denied(&policy.name, denied.as_str());
    tracing::info!(%client, %app, policy = %policy.name.0, reason = denied.as_str(), "inbound connection refused by policy");
}

#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error(transparent)]
    Decode(#[from] transport_header::DecodeError),
    #[error("no transport header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the transport header")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the transport header, leaving whatever followed it in `buf`.
async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<Header, HeaderError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !buf.is_empty()
            && let Some((header, used)) = Header::decode(buf)?
        {
            buf.advance(used);
            return Ok(header);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err(HeaderError::Timeout(timeout)),
            Ok(Ok(0)) => return Err(HeaderError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Forwards the requests of one inbound HTTP connection to the application.
struct Http {
    shared: Arc<Shared>,
    app: SocketAddr,
    /// The request metrics of this connection's application port.
    stats: RequestStats,
    /// The application's address, the `backend` label of its metrics.
    backend: Name,
    peer: Peer,
    /// The peer's identity as the application gets it in [`PEER_IDENTITY_HEADER`], made once
    /// for the connection.
    identity_header: Option<HeaderValue>,
    /// Dialled by a peer proxy (with a transport header): it may carry HTTP/1 requests over
    /// HTTP/2, to be restored for the application.
    from_proxy: bool,
}

impl Http {
    /// Applies the port's ServerPolicy to one request, loaded afresh so that a policy change
    /// reaches long-lived connections. With path rules, the application gets the normalized
    /// path that was authorized.
    fn authorize(&self, req: &mut Request<Body>) -> Result<(), ProxyError> {
        let snapshot = self.shared.state.load();
        let Some(policy) = snapshot.inbound_policy(self.app.port()) else {
            return Ok(());
        };
        let refuse = |denied: Denied| {
            self.shared
                .metrics
                .inbound_denied(&policy.name, denied.as_str());
            tracing::info!(policy = %policy.name.0, reason = denied.as_str(), peer = self.peer.identity.as_deref().unwrap_or("-"), path = req.uri().path(), "request refused by policy");
            ProxyError::Denied(denied.reason())
        };
        if !policy.matches_paths {
            let op = Operation {
                method: req.method().as_str(),
                path: req.uri().path(),
            };
            return policy.check(&self.peer, Some(op)).map_err(refuse);
        }
        let Some(path) = authz::normalize_path(req.uri().path()) else {
            return Err(refuse(Denied::Unauthorized));
        };
        let op = Operation {
            method: req.method().as_str(),
            path: &path,
        };
        policy.check(&self.peer, Some(op)).map_err(refuse)?;
        if path != req.uri().path() {
            let mut parts = req.uri().clone().into_parts();
            let with_query = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            parts.path_and_query = with_query.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        Ok(())
    }
}

static INBOUND_ROUTE: std::sync::LazyLock<RouteId> =
    std::sync::LazyLock::new(|| RouteId::new("inbound"));

impl Http {
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see outbound::request"
    )]
    fn handle(self: Arc<Self>, mut req: BoxedRequest) -> impl Future<Output = Response<Body>> {
        async move {
            let start = Instant::now();
            let grpc = errors::is_grpc(&req);
            if self.from_proxy {
                restore_orig_proto(&mut req);
            }
            // Whatever the client put there is replaced (or removed): only a verified
            // certificate names the caller.
            let headers = req.headers_mut();
            match &self.identity_header {
                Some(id) => headers.insert(PEER_IDENTITY_HEADER.clone(), id.clone()),
                None => headers.remove(&PEER_IDENTITY_HEADER),
            };
            // The span's traceparent goes to the application, so that its spans nest under
            // this one.
            let span = self.shared.observer.as_ref().and_then(|t| {
                t.start(
                    SpanKind::Server,
                    traces::span_name(req.method()),
                    req.headers_mut(),
                )
            });
            if let Some(span) = &span {
                traces::on_request(span, &req, DIRECTION);
                traces::on_route(span, &INBOUND_ROUTE, &self.backend);
                span.set("weft.endpoint", self.app.to_string());
                span.set("weft.mtls", self.peer.tls);
                if let Some(identity) = &self.peer.identity {
                    span.set("weft.peer.identity", identity.to_string());
                }
            }
            let result = match self.authorize(&mut req) {
                Ok(()) => {
                    let resent = |unsent: Unsent| {
                        self.shared.metrics.retry(
                            DIRECTION,
                            &INBOUND_ROUTE,
                            &self.backend,
                            unsent.reason().as_str(),
                        )
                    };
                    forward::forward(
                        &self.shared.pools,
                        &self.shared.tasks,
                        Dial::Direct(self.app),
                        req,
                        resent,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            // To a peer proxy, an answer says whether the request reached the application.
            let unsent = match &result {
                Err(e) if self.from_proxy => e.unsent(),
                _ => None,
            };
            let mut resp = self.shared.respond(DIRECTION, result, grpc);
            if self.from_proxy {
                match unsent {
                    Some(u) => {
                        resp.headers_mut()
                            .insert(UNSENT_HEADER.clone(), HeaderValue::from_static(u.as_str()));
                    }
                    None => {
                        resp.headers_mut().remove(&UNSENT_HEADER);
                    }
                }
            }
            if let (Some(span), Some(observer)) = (span, &self.shared.observer) {
                traces::on_response(&span, &resp, true);
                // The record ends with the response body.
                let observer = observer.clone();
                resp =
                    resp.map(|body| Body::observed(body, move |bytes| observer.end(span, bytes)));
            }
            let status = resp.status().as_u16();
            let elapsed = start.elapsed();
            self.stats.record(&self.shared.metrics, status, elapsed);
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// See `outbound`'s test of the same name on why these sizes are guarded.
    #[tokio::test]
    async fn the_connection_and_request_futures_stay_small() {
        let shared = crate::shared::for_tests();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = client.local_addr().unwrap();
        let connection = handle(shared.clone(), client, peer);
        let size = std::mem::size_of_val(&connection);
        assert!(
            size <= 1_500,
            "an inbound connection's future is {size} bytes"
        );
        drop(connection);

        let app: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let backend = Name(app.to_string().into());
        let http = Arc::new(Http {
            stats: shared
                .metrics
                .request_stats(DIRECTION, &INBOUND_ROUTE, &backend),
            backend,
            shared,
            app,
            peer: Peer::default(),
            identity_header: None,
            from_proxy: true,
        });
        let req = Box::new(Request::new(Body::empty()));
        let request = http.handle(req);
        let size = std::mem::size_of_val(&request);
        assert!(size <= 1_450, "an inbound request's future is {size} bytes");
    }
}
