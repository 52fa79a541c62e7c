//! The inbound side: connections from the mesh to the local application.
//!
//! accept → target port → detect → forward to the application at `<pod IP>:<port>`.
//!
//! The target port comes from the connection's metadata: the original destination when
//! iptables redirected it (a client without a proxy), or the transport header that a peer
//! proxy sends first when it dials the inbound port directly (every meshed connection, and
//! all of local mode).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::detect::{self, Protocol, Undecided};
use crate::errors::{self, ProxyError, Reason};
use crate::http::body::Body;
use crate::http::forward;
use crate::http::server::{self, Head};
use crate::io::Rewind;
use crate::metrics::{Direction, Name};
use crate::orig_dst::{canonical, original_dst};
use crate::shared::Shared;
use crate::tcp;
use crate::transport_header::{self, Header};
use crate::upstream::Dial;

const DIRECTION: Direction = Direction::Inbound;

/// Handles one accepted inbound connection to its end.
pub async fn handle(shared: Arc<Shared>, mut stream: TcpStream, client: SocketAddr) {
    let _open = shared.metrics.connection_opened(DIRECTION);
    let Ok(local) = stream.local_addr().map(canonical) else {
        return;
    };
    let mut buf = BytesMut::with_capacity(4096);
    let detect_timeout = shared.settings.detect_timeout.0;
    let (app, hint) = match original_dst(&stream) {
        Some(orig) => (orig, None),
        None => match read_header(&mut stream, &mut buf, detect_timeout).await {
            Ok(header) => (
                SocketAddr::new(local.ip(), header.port),
                Some(header.protocol),
            ),
            Err(e) => {
                shared.metrics.proxy_error(DIRECTION, Reason::BadRequest);
                tracing::info!(%client, error = %e, "inbound connection without a target; closing");
                return;
            }
        },
    };
    if app.ip() == local.ip() && shared.settings.is_own_port(app.port()) {
        tracing::warn!(%client, %app, "refusing to forward to the proxy's own listener");
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
        None => match detect::read_and_classify(&mut stream, &mut buf, detect_timeout).await {
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
            let http2 = protocol == Protocol::Http2;
            if !http2 {
                let limits = limits(&shared);
                match server::check_first_head(&mut stream, &mut buf, limits).await {
                    Head::Ok => {}
                    Head::Refuse(reason) => {
                        shared.metrics.proxy_error(DIRECTION, reason);
                        server::refuse(&mut stream, reason).await;
                        return;
                    }
                    Head::Closed => return,
                }
            }
            let io = Rewind::new(buf.freeze(), stream);
            let handler = Arc::new(Http {
                shared: shared.clone(),
                app,
                backend: Name(app.to_string().into()),
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
        // Application TLS and other opaque protocols go to the application as they are.
        _ => {
            tcp::forward(
                &shared,
                DIRECTION,
                Rewind::new(buf.freeze(), stream),
                Dial::Direct(app),
            )
            .await
        }
    }
}

fn limits(shared: &Shared) -> server::Limits {
    server::Limits {
        header_read_timeout: shared.settings.header_read_timeout.0,
        max_header_bytes: shared.settings.max_header_bytes,
    }
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
async fn read_header(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<Header, HeaderError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some((header, used)) = Header::decode(buf)? {
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
    backend: Name,
}

static INBOUND_ROUTE: std::sync::LazyLock<Name> =
    std::sync::LazyLock::new(|| Name("inbound".into()));

impl Http {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let grpc = errors::is_grpc(&req);
        let method: Method = req.method().clone();
        let result: Result<Response<Body>, ProxyError> = forward::forward(
            &self.shared.pools,
            &self.shared.tasks,
            Dial::Direct(self.app),
            req,
        )
        .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let reason = e.reason();
                tracing::debug!(error = %e, reason = reason.as_str(), "inbound request failed");
                self.shared.metrics.proxy_error(DIRECTION, reason);
                errors::error_response(reason, grpc)
            }
        };
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        self.shared
            .metrics
            .request(DIRECTION, &INBOUND_ROUTE, &self.backend, status, elapsed);
        if self.shared.settings.access_log {
            tracing::info!(
                target: "weft::access",
                direction = "inbound",
                %method,
                app = %self.app,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
        resp
    }
}
