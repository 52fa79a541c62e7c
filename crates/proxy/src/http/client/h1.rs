//! HTTP/1.1 to an upstream, driven by the task of the request that uses the connection.
//!
//! hyper's client runs every connection as a task of its own, and hands it each request and
//! takes back each response and body chunk through channels: three crossings between tasks per
//! request, with their wake-ups and allocations. Here nothing runs beside the request: [`send`]
//! writes the head and streams the request body until the response head has arrived, and from
//! then on the response body ([`H1Body`]) drives both the rest of the request body and the
//! response body, so that an upstream may answer while it still reads (an echo). When both
//! have ended and the connection may be kept, it goes back to the pool. An idle connection is
//! polled by nobody; [`H1Conn::is_open`] checks it before it is used again.
//!
//! Upgrades and CONNECT, whose connection leaves HTTP, stay with hyper's client.
//!
//! The exchange writes any request body type (`H1Body<B>`), and gives a finished connection
//! back through [`Checkin`], which the pools implement: it names neither.

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncRead;

use crate::errors::{BoxError, ExchangeError, ProxyError, SendError};
use crate::http::h1::{
    CodecError, Encoding, Fill, Framing, MAX_FRAMING_BYTES, WriteError, Writer, content_length,
    fields, fields_len, has_token, poll_decode, put_fields, spans,
};
use crate::io::{Conn, READ_SIZE};
use crate::upstream::{ConnLimiter, ConnectionPermit, Key};

/// The most headers a response may carry.
const MAX_HEADERS: usize = 128;
/// The largest response head.
const MAX_HEAD_BYTES: usize = MAX_FRAMING_BYTES;

/// An open HTTP/1 connection to an upstream, idle or in one exchange.
pub struct H1Conn {
    io: Conn,
    read: BytesMut,
    addr: SocketAddr,
    /// How much room the next read asks for.
    read_size: usize,
    /// Holds the connection's place under the backend's `maxConnections`.
    permit: Option<ConnectionPermit>,
    limiter: Option<Arc<ConnLimiter>>,
}

impl H1Conn {
    pub fn new(
        io: Conn,
        addr: SocketAddr,
        permit: ConnectionPermit,
        limiter: Option<Arc<ConnLimiter>>,
    ) -> H1Conn {
        H1Conn {
            io,
            read: BytesMut::new(),
            read_size: READ_SIZE,
            addr,
            permit: Some(permit),
            limiter,
        }
    }

    pub fn limiter(&self) -> Option<&Arc<ConnLimiter>> {
        self.limiter.as_ref()
    }

    /// Whether an idle connection can carry another request: the upstream has neither closed
    /// it nor sent anything unasked.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        // Nothing has arrived since the last read: no read(2) needed to know.
        if let Some(Poll::Pending) = self.io.plain_read_ready(&mut cx) {
            return true;
        }
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

impl Fill for H1Conn {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.read
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        crate::io::poll_fill(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        // The place first, then the news that there is one.
        drop(self.permit.take());
        if let Some(l) = &self.limiter {
            l.freed.notify_waiters();
        }
    }
}

/// Where a connection whose exchange is over goes (the pools, for the key it was opened for).
pub trait Checkin: Send + Sync {
    fn checkin(&self, key: Key, conn: H1Conn);
}

/// Where a finished connection goes back to.
pub struct Release {
    pub pool: Arc<dyn Checkin>,
    pub key: Key,
}

/// Sends `req` on `conn` and returns the response once its head has arrived, its body (an
/// [`H1Body`]) as the caller's body type `R`. A request that met a connection the upstream
/// had closed comes back unsent when `conn` was reused and the request's body was not
/// touched, so that another connection can take it.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice: see the module docs of upstream"
)]
pub fn send<B, R>(
    mut conn: H1Conn,
    req: Box<Request<B>>,
    reused: bool,
    release: Option<Release>,
) -> impl Future<Output = Result<Response<R>, SendError<B>>>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
    R: From<Box<H1Body<B>>>,
{
    async move {
        let head_request = req.method() == Method::HEAD;
        let (parts, body) = (*req).into_parts();
        let mut out = request_writer(&parts, body);
        let keep_request = parts.version == Version::HTTP_11;
        // A response may come before the request body has all been written, and an upstream
        // that answers early and closes with body bytes unread resets the connection: the
        // write fails while the answer waits to be read. So a failed write is believed only
        // once the read has nothing either.
        let mut write_failed = None;
        let result = std::future::poll_fn(|cx| {
            if write_failed.is_none() && !out.is_done() {
                match out.poll(&mut conn.io, cx) {
                    Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            match poll_head(&mut conn, head_request, cx) {
                Poll::Ready(Err(read)) if read.is_closed() => {
                    Poll::Ready(Err(write_failed.take().map_or(read, ExchangeError::Io)))
                }
                poll => poll,
            }
        })
        .await;
        let addr = conn.addr;
        match result {
            Ok((head, framing, keep_response)) => {
                let wrote_all = write_failed.is_none();
                if let Some(e) = write_failed {
                    tracing::debug!(%addr, error = %e, "the upstream answered before it read the whole request");
                    out.abandon();
                }
                let body = Box::new(H1Body {
                    conn: Some(conn),
                    out,
                    framing,
                    keep: keep_request && keep_response && wrote_all,
                    release,
                });
                Ok(Response::from_parts(head, R::from(body)))
            }
            Err(source) => {
                let unsent = (reused && source.is_closed())
                    .then(|| out.untouched())
                    .flatten()
                    .map(|body| Box::new(Request::from_parts(parts, body)));
                Err(SendError {
                    error: ProxyError::Exchange { addr, source },
                    unsent,
                })
            }
        }
    }
}

/// The request's head, and a writer of it and its body.
fn request_writer<B>(parts: &http::request::Parts, body: B) -> Writer<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = BytesMut::with_capacity(
        parts.method.as_str().len() + target.len() + 40 + fields_len(&parts.headers),
    );
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    put_fields(&mut head, &parts.headers);
    let ended = body.is_end_stream();
    let encoding = match content_length(&parts.headers) {
        Ok(Some(n)) => Encoding::Length(n),
        // Not ours to judge: it goes as it came.
        Err(_) => Encoding::Raw,
        Ok(None) => match body.size_hint().exact() {
            // A body-less request says so when its method usually carries one.
            Some(0) if ended => {
                if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                    head.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoding::Length(0)
            }
            Some(n) => {
                head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                Encoding::Length(n)
            }
            None if parts.version == Version::HTTP_11 => {
                head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoding::Chunked
            }
            // HTTP/1.0 has no chunks; the upstream reads until the end of the request.
            None => Encoding::Raw,
        },
    };
    head.extend_from_slice(b"\r\n");
    Writer::new(head.freeze(), body, encoding, false)
}

impl From<CodecError> for ExchangeError {
    fn from(e: CodecError) -> ExchangeError {
        match e {
            CodecError::Io(e) => ExchangeError::Io(e),
            CodecError::Closed => ExchangeError::Closed,
            CodecError::Malformed(what) => ExchangeError::Malformed(what),
        }
    }
}

impl From<WriteError> for ExchangeError {
    fn from(e: WriteError) -> ExchangeError {
        match e {
            WriteError::Io(e) => ExchangeError::Io(e),
            WriteError::Body(e) => ExchangeError::RequestBody(e),
        }
    }
}

/// Reads until a final response head is in; informational (1xx) responses are skipped.
fn poll_head(
    conn: &mut H1Conn,
    head_request: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(http::response::Parts, Framing, bool), ExchangeError>> {
    loop {
        if !conn.read.is_empty() {
            match parse_head(&mut conn.read, head_request)? {
                Some(Parsed::Informational) => continue,
                Some(Parsed::Final(head, framing, keep)) => {
                    return Poll::Ready(Ok((head, framing, keep)));
                }
                None if conn.read.len() > MAX_HEAD_BYTES => {
                    return Poll::Ready(Err(ExchangeError::Malformed("response head too large")));
                }
                None => {}
            }
        }
        let had = conn.read.len();
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(if had == 0 {
                ExchangeError::Closed
            } else {
                ExchangeError::Malformed("the connection closed inside the response head")
            }));
        }
    }
}

enum Parsed {
    Informational,
    Final(http::response::Parts, Framing, bool),
}

/// Parses a response head at the start of `bytes` as an exchange does: the final head (`None`
/// for an informational one) and how many bytes it took, `None` while incomplete (for the
/// fuzz targets, [`crate::fuzzing`]).
#[allow(
    clippy::type_complexity,
    reason = "a one-off summary for the fuzz targets"
)]
pub fn parse_response_head(
    bytes: &[u8],
    head_request: bool,
) -> Result<Option<(Option<http::response::Parts>, usize)>, ExchangeError> {
    let mut read = BytesMut::from(bytes);
    let parsed = parse_head(&mut read, head_request)?;
    let took = bytes.len() - read.len();
    Ok(parsed.map(|p| match p {
        Parsed::Informational => (None, took),
        Parsed::Final(parts, _, _) => (Some(parts), took),
    }))
}

/// Parses a response head at the start of `read` and takes it off; `None` while incomplete.
fn parse_head(read: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, ExchangeError> {
    // Left uninitialised: httparse writes the fields it finds, and nothing reads the rest.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Malformed("too many headers"));
        }
        Err(_) => return Err(ExchangeError::Malformed("not an HTTP/1 response head")),
    };
    let code = parsed.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Malformed("bad status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Malformed(
                "an upgrade that was not asked for",
            ));
        }
        read.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let at = spans(read, parsed.headers)?;
    let mut map = fields(&read.split_to(len).freeze(), &at)?;
    let framing = framing(&map, status, head_request)?;
    let mut keep = version == Version::HTTP_11
        && framing != Framing::Eof
        && !has_token(&map, &CONNECTION, "close");
    // Both lengths: the chunks win, and the other goes, so that nothing downstream frames the
    // body by it (response splitting); such an upstream is not trusted with another request.
    if map.contains_key(TRANSFER_ENCODING) && map.remove(CONTENT_LENGTH).is_some() {
        keep = false;
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = map;
    Ok(Some(Parsed::Final(parts, framing, keep)))
}

/// RFC 9112 section 6.3: how the body of a response is delimited.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> Result<Framing, ExchangeError> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::CHUNKED,
            _ => Framing::Eof,
        });
    }
    Ok(match content_length(headers)? {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Eof,
    })
}

/// A response body read from its upstream connection by the task that polls it, which also
/// writes whatever is left of the request body.
pub struct H1Body<B> {
    /// `None` once the connection has gone back to the pool or been closed.
    conn: Option<H1Conn>,
    out: Writer<B>,
    framing: Framing,
    /// Whether the connection may carry another request once this one is over.
    keep: bool,
    release: Option<Release>,
}

impl<B> H1Body<B> {
    /// Back to the pool when the whole exchange is over and the connection may be kept.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.framing == Framing::Done
            && self.out.is_done()
            && self.keep
            && conn.read.is_empty()
            && let Some(Release { pool, key }) = self.release.take()
        {
            // An idle connection keeps no buffer.
            conn.read = BytesMut::new();
            conn.read_size = READ_SIZE;
            pool.checkin(key, conn);
        }
    }
}

impl<B> H1Body<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if !self.out.is_done()
            && let Poll::Ready(Err(e)) = self.out.poll(&mut conn.io, cx)
        {
            // The upstream stopped reading the request; its answer may still come whole,
            // but the connection cannot be reused.
            tracing::debug!(addr = %conn.addr, error = %e, "writing the rest of the request failed");
            self.keep = false;
            self.out.abandon();
        }
        poll_decode(&mut self.framing, conn, cx)
            .map(|frame| frame.map(|r| r.map_err(|e| BoxError::from(ExchangeError::from(e)))))
    }
}

impl<B> http_body::Body for H1Body<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let poll = this.poll_body(cx);
        match &poll {
            Poll::Ready(None) => this.finish(),
            // A broken exchange leaves the connection unusable.
            Poll::Ready(Some(Err(_))) => drop(this.conn.take()),
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for H1Body<B> {
    fn drop(&mut self) {
        // A server that knows the length stops polling after the last byte: the exchange may
        // be over without a last poll.
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Parsed>, ExchangeError> {
        parse_head(&mut BytesMut::from(text.as_bytes()), false)
    }

    fn final_head(text: &str) -> (http::response::Parts, Framing, bool) {
        match parse(text) {
            Ok(Some(Parsed::Final(p, f, k))) => (p, f, k),
            Ok(Some(Parsed::Informational)) => panic!("informational"),
            Ok(None) => panic!("incomplete"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn response_heads_and_their_framing() {
        let (p, f, keep) = final_head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok");
        assert_eq!((p.status, p.version), (StatusCode::OK, Version::HTTP_11));
        assert_eq!(p.headers["x-a"], "b");
        assert_eq!((f, keep), (Framing::Length(2), true));
        let (_, f, keep) =
            final_head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!((f, keep), (Framing::CHUNKED, true));
        let (_, f, keep) = final_head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((f, keep), (Framing::Eof, false));
        let (_, f, keep) = final_head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((f, keep), (Framing::Eof, false), "read until close");
        let (p, f, keep) = final_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        );
        assert_eq!((f, keep), (Framing::CHUNKED, false));
        assert!(!p.headers.contains_key(CONTENT_LENGTH), "the length goes");
        let (_, f, keep) = final_head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((f, keep), (Framing::Done, true));
        let (_, f, keep) =
            final_head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n");
        assert_eq!((f, keep), (Framing::Length(5), false));
        let (p, _, keep) = final_head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!((p.version, keep), (Version::HTTP_10, false));
        let mut head = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut head, true),
            Ok(Some(Parsed::Final(_, Framing::Done, true)))
        ));
        assert!(matches!(
            parse("HTTP/1.1 100 Continue\r\n\r\n"),
            Ok(Some(Parsed::Informational))
        ));
        assert!(matches!(parse("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
    }

    #[test]
    fn bad_response_heads_are_errors() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let (_, f, _) = final_head("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n");
        assert_eq!(f, Framing::Length(3), "repeated equal lengths are one");
    }

    proptest::proptest! {
        /// Whatever an upstream sends, parsing answers with a head, an error or "more", and
        /// never panics.
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_head(&mut BytesMut::from(&bytes[..]), false);
            let _ = crate::http::h1::chunk_size(&mut BytesMut::from(&bytes[..]));
            let _ = crate::http::h1::trailers(&mut BytesMut::from(&bytes[..]));
        }

        #[test]
        fn heads_made_of_header_like_lines_parse_without_panicking(
            lines in proptest::collection::vec("[ -~]{0,40}", 0..12),
            status in 0u16..1000,
        ) {
            let mut text = format!("HTTP/1.1 {status} X\r\n");
            for l in &lines {
                text.push_str(l);
                text.push_str("\r\n");
            }
            text.push_str("\r\n");
            let _ = parse_head(&mut BytesMut::from(text.as_bytes()), false);
        }
    }

    #[test]
    fn empty_header_values_are_kept() {
        let (p, _, _) = final_head("HTTP/1.1 200 OK\r\nx-empty:\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(p.headers["x-empty"], "");
    }

    #[test]
    fn heads_with_many_fields_parse_whole_and_too_many_are_refused() {
        let head = |n: usize| {
            let mut text = String::from("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n");
            for i in 1..n {
                text.push_str(&format!("x-{i}: v{i}\r\n"));
            }
            text + "\r\n"
        };
        let (p, _, _) = final_head(&head(MAX_HEADERS));
        assert_eq!(p.headers.len(), MAX_HEADERS);
        assert_eq!(p.headers["x-1"], "v1");
        assert_eq!(
            p.headers[format!("x-{}", MAX_HEADERS - 1)],
            format!("v{}", MAX_HEADERS - 1)
        );
        assert!(matches!(
            parse(&head(MAX_HEADERS + 1)),
            Err(ExchangeError::Malformed("too many headers"))
        ));
    }

    /// The pool's check before reuse: open while the upstream is silent, closed once it has
    /// closed or sent something nobody asked for.
    #[tokio::test]
    async fn an_idle_connection_is_open_until_the_upstream_closes_or_speaks() {
        use tokio::io::AsyncWriteExt;
        async fn pair() -> (H1Conn, tokio::net::TcpStream) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let conn = H1Conn::new(Conn::Tcp(client), addr, ConnectionPermit::unlimited(), None);
            (conn, server)
        }
        async fn readable(conn: &H1Conn) {
            if let Conn::Tcp(tcp) = &conn.io {
                tcp.readable().await.unwrap();
            }
        }

        // An exchange ends with a read that stops short of its buffer.
        let (mut conn, mut upstream) = pair().await;
        upstream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        readable(&conn).await;
        let n = std::future::poll_fn(|cx| conn.poll_fill(cx)).await.unwrap();
        assert!(n > 0 && n < READ_SIZE);
        conn.read.clear();
        assert!(conn.is_open(), "a silent upstream");
        assert!(conn.is_open(), "asking again changes nothing");

        upstream.write_all(b"x").await.unwrap();
        readable(&conn).await;
        assert!(!conn.is_open(), "bytes nobody asked for");

        let (mut conn, upstream) = pair().await;
        assert!(conn.is_open(), "a new connection");
        drop(upstream);
        readable(&conn).await;
        assert!(!conn.is_open(), "the upstream closed it");
    }
}
