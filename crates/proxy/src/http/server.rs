//! Serving one downstream HTTP connection whose protocol detection already chose.
//!
//! HTTP/1 is served by [`h1`], in the connection's own task, with [`link`] between the loop
//! and the request body it reads; HTTP/2 by hyper. The proxy's own answers are here too:
//! [`error_response`] for a request that failed, and [`refuse`] for bad input before or
//! between requests, both with `x-weft-error`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::errors::{ERROR_HEADER, Reason};
use crate::http::body::{Body, BoxedRequest};
use crate::io::{Conn, Rewind};

pub mod h1;
pub mod h2_guard;
pub mod link;

pub use h1::{Limits, refuse};

/// The response the proxy sends for a failure it generated. gRPC clients get a trailers-only
/// response with the matching `grpc-status`.
pub fn error_response(reason: Reason, grpc: bool) -> Response<Body> {
    let mut resp = if grpc {
        let mut resp = Response::new(Body::empty());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(reason.grpc_status())),
        );
        headers.insert("grpc-message", HeaderValue::from_static(reason.as_str()));
        resp
    } else {
        let mut resp = Response::new(Body::full(reason.as_str().as_bytes()));
        *resp.status_mut() = reason.status();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    };
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason.as_str()));
    resp
}

/// A connection whose protocol detection found HTTP.
pub struct Detected {
    pub conn: Conn,
    /// The bytes detection read.
    pub buf: BytesMut,
    pub http2: bool,
    /// When the connection was accepted: its first request head is due within the
    /// header-read timeout of it, detection's reads included.
    pub accepted: std::time::Instant,
    /// Dialled by a peer proxy, which multiplexes its own clients' requests over it.
    pub from_peer: bool,
}

/// Streams reset by the client before they were accepted, at once, beyond which a connection
/// is refused as an attack (GOAWAY `ENHANCE_YOUR_CALM`): h2's guard against rapid reset
/// (CVE-2023-44487), as it stands for clients.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// The same, for a connection from a peer proxy. Its streams are many clients' requests,
/// and it cancels those its clients cancel: a rapid-reset attack on the peer is cut there, by
/// the guard above, but the streams it had already forwarded arrive here cancelled together.
/// Read as an attack, they would cost every request that shares the connection.
const PEER_MAX_PENDING_ACCEPT_RESETS: usize = 10_000;
/// Streams a client may have open at once on one HTTP/2 connection (hyper's default, said
/// here): beyond, the client waits, or (another weft) opens another connection.
const MAX_CONCURRENT_STREAMS: u32 = 200;

/// Serves a connection whose protocol detection found HTTP: HTTP/2 with hyper, HTTP/1 in
/// this task. Refused requests are counted by `refused`. (The protocol is chosen before the
/// future is made, so that the connection's future is just the one it serves.)
pub fn serve<F, Fut, R>(
    detected: Detected,
    limits: Limits,
    shutdown: CancellationToken,
    handler: F,
    refused: R,
) -> impl Future<Output = ()>
where
    F: Fn(BoxedRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
    R: Fn(Reason),
{
    use futures_util::future::Either;
    let Detected {
        conn,
        buf,
        http2,
        accepted,
        from_peer,
    } = detected;
    if http2 {
        Either::Left(serve_http2(
            Rewind::new(buf.freeze(), conn),
            limits,
            from_peer,
            shutdown,
            handler,
            refused,
        ))
    } else {
        let boxed = move |req| in_place(&handler, req);
        let first_head_by = accepted + limits.header_read_timeout;
        Either::Right(h1::serve(
            conn,
            buf,
            first_head_by,
            limits,
            shutdown,
            boxed,
            refused,
        ))
    }
}

/// Serves HTTP/2 on `io` until the client closes, or, once `shutdown` fires, until in-flight
/// requests finish (the client gets GOAWAY). A connection ended for abuse (a flood, a
/// protocol violation) is counted by `refused`.
async fn serve_http2<I, F, Fut, R>(
    io: I,
    limits: Limits,
    from_peer: bool,
    shutdown: CancellationToken,
    handler: F,
    refused: R,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(BoxedRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
    R: Fn(Reason),
{
    let flooded = Arc::new(AtomicBool::new(false));
    let io = h2_guard::FrameGuard::new(io, flooded.clone());
    // The handler's future is large (the whole route, retry and upstream state machine): it
    // lives in its own allocation per request, not in hyper's slot for each stream.
    let service = service_fn(move |req: Request<Incoming>| {
        let fut = in_place(&handler, Box::new(req.map(Body::Incoming)));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(Spawner);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(if from_peer {
            PEER_MAX_PENDING_ACCEPT_RESETS
        } else {
            MAX_PENDING_ACCEPT_RESETS
        });
    // No HTTP/2 PINGs: TCP keep-alive finds a vanished client (`io::tune`).
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), service));
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let abuse = if flooded.load(Ordering::Acquire) {
            Some(Reason::Http2Flood)
        } else {
            abuse_of(&e)
        };
        match abuse {
            Some(reason) => {
                refused(reason);
                tracing::info!(reason = reason.as_str(), error = %e, "downstream HTTP/2 connection ended for abuse");
            }
            None => tracing::debug!(error = %e, "downstream HTTP/2 connection ended with an error"),
        }
    }
}

/// Whether h2 ended a connection because of what the client did: a GOAWAY of its own, with
/// `ENHANCE_YOUR_CALM` for a flood (rapid reset, CONTINUATION, HPACK, provoked resets) or
/// another code for a protocol violation.
fn abuse_of(e: &hyper::Error) -> Option<Reason> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if !h2.is_go_away() || h2.is_remote() {
                return None;
            }
            return Some(match h2.reason() {
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Reason::Http2Flood,
                Some(h2::Reason::NO_ERROR) | None => return None,
                Some(_) => Reason::Http2ProtocolError,
            });
        }
        source = err.source();
    }
    None
}

/// `handler(req)`, boxed. The allocation comes first and the handler's result is written
/// straight into it: `Box::pin(handler(req))` builds the whole future on the stack and then
/// copies it, kilobytes per request of which only the captured request's box is set. (Under
/// callgrind, one hop: 280 instructions and 34 first-level cache misses per request.)
#[inline(never)]
fn in_place<F, Fut>(handler: &F, req: BoxedRequest) -> Pin<Box<Fut>>
where
    F: Fn(BoxedRequest) -> Fut,
{
    Box::into_pin(Box::write(Box::new_uninit(), make(handler, req)))
}

/// Kept out of line, so that the future is returned through the pointer it is written at.
#[inline(never)]
fn make<F, Fut>(handler: &F, req: BoxedRequest) -> Fut
where
    F: Fn(BoxedRequest) -> Fut,
{
    handler(req)
}

/// The executor for hyper's HTTP/2 server: spawns each future boxed.
///
/// hyper spawns a task for every HTTP/2 stream, and tokio moves a task's whole stage when the
/// task finishes and when its output is taken: a large stream future is copied twice more.
/// Spawned boxed, what tokio moves is a pointer (callgrind, two hops with mTLS: 190
/// instructions per request less on the server side; 1,340 less on the client side, while
/// hyper's HTTP/2 client was still in use there).
#[derive(Clone, Copy, Debug, Default)]
pub struct Spawner;

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// The client's side of a request that asked to leave HTTP (`Upgrade`, `CONNECT`), claimed
/// from the request before it is sent on: ready once the response agreeing to it is written.
pub enum OnUpgrade {
    Http1(h1::OnUpgrade),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Claims the client's connection of a request that may be upgraded.
pub fn on_upgrade(req: &mut Request<Body>) -> OnUpgrade {
    match req.extensions_mut().remove::<h1::OnUpgrade>() {
        Some(on) => OnUpgrade::Http1(on),
        None => OnUpgrade::Hyper(hyper::upgrade::on(req)),
    }
}

impl OnUpgrade {
    /// The client's connection, once the upgrade has happened.
    pub async fn wait(self) -> std::io::Result<Upgraded> {
        match self {
            OnUpgrade::Http1(on) => on.wait().await.map(Upgraded::Http1),
            OnUpgrade::Hyper(on) => on
                .await
                .map(|u| Upgraded::Hyper(TokioIo::new(u)))
                .map_err(std::io::Error::other),
        }
    }
}

/// A client's connection that has left HTTP.
pub enum Upgraded {
    Http1(Rewind<Conn>),
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

macro_rules! each_upgraded {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Upgraded::Http1($s) => $e,
            Upgraded::Hyper($s) => $e,
        }
    };
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_upgraded!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_upgraded!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_upgraded!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_upgraded!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn refusals_carry_the_error_header() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        refuse(&mut server, Reason::HeaderTooLarge).await;
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(out.contains("x-weft-error: header-too-large\r\n"), "{out}");
    }

    #[test]
    fn grpc_errors_are_trailers_only_responses() {
        let resp = error_response(Reason::Timeout, true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "4");
        assert_eq!(resp.headers()[ERROR_HEADER], "timeout");
        let resp = error_response(Reason::ConnectFailed, false);
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[ERROR_HEADER], "connect-failed");
    }
}
