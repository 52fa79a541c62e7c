//! Serving one downstream HTTP connection whose protocol detection already chose.
//!
//! hyper parses and frames. Before hyper sees an HTTP/1 connection, [`check_first_head`]
//! reads and checks its first request head, so that malformed, oversized or slow requests get
//! an answer carrying `x-weft-error` (hyper's own error responses cannot carry a header).
//! Later requests on the connection are held to the same limits by hyper.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::errors::{ERROR_HEADER, Reason};
use crate::http::body::Body;
use crate::http::timer::CoarseTimer;

/// Limits applied to downstream connections.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Keeps the header-read deadline of later requests on an HTTP/1 connection.
    pub timer: CoarseTimer,
}

/// The most headers a request may carry: hyper's own limit (and Envoy's default), which
/// hyper parses into arrays on the stack. Setting any other limit on hyper's builder makes it
/// allocate two arrays of that many entries for every request it parses.
const MAX_HEADERS: usize = 100;

/// What [`check_first_head`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A complete, well-formed head is in the buffer.
    Ok,
    /// The request must be refused with this reason.
    Refuse(Reason),
    /// The client went away before sending a whole head.
    Closed,
}

/// Reads until `buf` holds one complete request head, and checks it.
pub async fn check_first_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    limits: &Limits,
) -> Head {
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        if let Some(verdict) = judge_head(buf, limits) {
            return verdict;
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => return Head::Refuse(Reason::HeaderTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// The verdict on the bytes read so far, or `None` while the head is incomplete. A function of
/// its own so that the 4 KiB of parsed headers never live across an await (they would sit in
/// every connection's task for its whole life).
fn judge_head(buf: &[u8], limits: &Limits) -> Option<Head> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    match httparse::Request::new(&mut []).parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_header_bytes => Some(Head::Ok),
        Ok(httparse::Status::Complete(_)) => Some(Head::Refuse(Reason::HeaderTooLarge)),
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_bytes => {
            Some(Head::Refuse(Reason::HeaderTooLarge))
        }
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::Refuse(Reason::HeaderTooLarge)),
        Err(_) => Some(Head::Refuse(Reason::BadRequest)),
    }
}

/// Answers a request the proxy refuses before HTTP is being served, then closes.
pub async fn refuse<W: AsyncWrite + Unpin>(io: &mut W, reason: Reason) {
    let status = reason.status();
    let body = reason.as_str();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\n{ERROR_HEADER}: {body}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    let _ = io.write_all(head.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// Serves HTTP/1 or HTTP/2 on `io` until the client closes, or, once `shutdown` fires, until
/// in-flight requests finish: HTTP/2 clients get GOAWAY, HTTP/1 responses `Connection: close`.
pub async fn serve<I, F, Fut>(
    io: I,
    http2: bool,
    limits: Limits,
    shutdown: CancellationToken,
    handler: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // hyper keeps a slot for the in-flight request's future in every connection, allocated
    // with the connection and moved into on each request. The handler's future is large (the
    // whole route, retry and upstream state machine), so it lives in its own allocation made
    // per request: an idle connection then costs a pointer, not the future.
    let service = service_fn(move |req| {
        let fut = Box::pin(handler(req));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let io = TokioIo::new(io);
    let result = if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30));
        // Boxed, so that the far more numerous HTTP/1 connections do not carry its size.
        let mut conn = Box::pin(builder.serve_connection(io, service));
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(limits.timer)
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 8192,
            timer: CoarseTimer::default(),
        }
    }

    async fn check(input: &'static [u8]) -> Head {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client.write_all(input).await.unwrap();
        drop(client);
        check_first_head(&mut server, &mut BytesMut::new(), &limits()).await
    }

    #[tokio::test]
    async fn first_heads_are_judged() {
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await, Head::Ok);
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody follows").await,
            Head::Ok
        );
        assert_eq!(
            check(b"GET / HTTP/1.1 junk\r\n\r\n").await,
            Head::Refuse(Reason::BadRequest)
        );
        assert_eq!(
            check(b"GET /\x01 HTTP/1.1\r\n\r\n").await,
            Head::Refuse(Reason::BadRequest)
        );
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nbad header\r\n\r\n").await,
            Head::Refuse(Reason::BadRequest)
        );
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n").await, Head::Closed);
    }

    #[tokio::test]
    async fn oversized_heads_are_refused_without_reading_them_whole() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut big = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        big.resize(100_000, b'a');
        client.write_all(&big).await.unwrap();
        let got = check_first_head(&mut server, &mut BytesMut::new(), &limits()).await;
        assert_eq!(got, Head::Refuse(Reason::HeaderTooLarge));
    }

    #[tokio::test]
    async fn too_many_headers_are_refused() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            req.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        client.write_all(&req).await.unwrap();
        let limits = Limits {
            max_header_bytes: 1 << 16,
            ..limits()
        };
        assert_eq!(
            check_first_head(&mut server, &mut BytesMut::new(), &limits).await,
            Head::Refuse(Reason::HeaderTooLarge)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_heads_time_out() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let got = check_first_head(&mut server, &mut BytesMut::new(), &limits()).await;
        assert_eq!(got, Head::Refuse(Reason::HeaderTimeout));
        drop(client);
    }

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
}
