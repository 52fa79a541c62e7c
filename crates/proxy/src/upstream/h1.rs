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

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ConnectionPermit, Key, Outgoing, Pools, SendError};
use crate::backends::ConnLimiter;
use crate::errors::{ExchangeError, ProxyError};
use crate::http::body::{Body, BoxError};
use crate::io::Conn;

/// The most headers a response (or its trailers) may carry.
const MAX_HEADERS: usize = 128;
/// The largest response head, and the longest chunk-size line.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How much room the first read of an exchange asks for: enough for most response heads and
/// small bodies whole, in a quarter of a page. Each read that fills its room doubles the
/// next, up to [`MAX_READ_SIZE`], so that a large body is read in large pieces while a
/// thousand small exchanges in flight hold little. All are jemalloc small size classes,
/// served from its thread cache.
const READ_SIZE: usize = 1024;
const MAX_READ_SIZE: usize = 64 * 1024;

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
    pub(super) fn new(
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

    pub(super) fn limiter(&self) -> Option<&Arc<ConnLimiter>> {
        self.limiter.as_ref()
    }

    /// Whether an idle connection can carry another request: the upstream has neither closed
    /// it nor sent anything unasked.
    pub(super) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        // Nothing has arrived since the last read: no read(2) needed to know.
        if let Some(Poll::Pending) = self.plain_read_ready(&mut cx) {
            return true;
        }
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// The socket's read readiness as tokio keeps it, on a plain connection: cleared by a
    /// read that stopped short of its buffer, set again when epoll reports data or the
    /// upstream's FIN, so `Pending` means nothing has arrived since. `None` over TLS, whose
    /// stream may hold a record it has already read: there only a read tells.
    fn plain_read_ready(&self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<()>>> {
        match &self.io {
            Conn::Tcp(tcp) => Some(tcp.poll_read_ready(cx)),
            Conn::TlsClient(_) | Conn::TlsServer(_) => None,
        }
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        // An exchange that waits for its response holds no buffer until there is something
        // to read.
        if self.read.capacity() == 0
            && let Some(ready) = self.plain_read_ready(cx)
        {
            ready!(ready)?;
        }
        if self.read.capacity() - self.read.len() < self.read_size / 4 {
            self.read.reserve(self.read_size);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read
        ))?;
        if n >= self.read_size && self.read_size < MAX_READ_SIZE {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
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

/// Where a finished connection goes back to.
pub(super) struct Release {
    pub pools: Arc<Pools>,
    pub key: Key,
}

/// Sends `req` on `conn` and returns the response once its head has arrived. A request that
/// met a connection the upstream had closed comes back unsent when `conn` was reused and the
/// request's body was not touched, so that another connection can take it.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice: see the module docs of upstream"
)]
pub(super) fn send(
    mut conn: H1Conn,
    req: Outgoing,
    reused: bool,
    release: Option<Release>,
) -> impl Future<Output = Result<Response<Body>, SendError>> {
    async move {
        let head_request = req.method() == Method::HEAD;
        let (parts, body) = (*req).into_parts();
        let mut out = Writer::new(&parts, body);
        let keep_request = parts.version == Version::HTTP_11;
        let result = std::future::poll_fn(|cx| {
            // A response may come before the request body has all been written.
            if !out.is_done()
                && let Poll::Ready(Err(e)) = out.poll(&mut conn.io, cx)
            {
                return Poll::Ready(Err(e));
            }
            poll_head(&mut conn, head_request, cx)
        })
        .await;
        let addr = conn.addr;
        match result {
            Ok((head, framing, keep_response)) => {
                let body = H1Body {
                    conn: Some(conn),
                    out,
                    framing,
                    keep: keep_request && keep_response,
                    release,
                };
                Ok(Response::from_parts(head, body.into()))
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

/// The request's bytes still to write: the head and any framing first, then the body frame
/// by frame.
struct Writer {
    queue: VecDeque<Bytes>,
    /// `None` once the body has ended (or there was none).
    body: Option<Body>,
    chunked: bool,
    /// Whether the body has been polled: before that it can still be sent elsewhere.
    touched: bool,
    /// A body with nothing to write, kept whole in case the request must go elsewhere.
    empty: Option<Body>,
    /// Whether bytes were written since the last flush (TLS buffers them).
    need_flush: bool,
}

impl Writer {
    fn new(parts: &http::request::Parts, body: Body) -> Writer {
        let mut head = BytesMut::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.extend_from_slice(b" ");
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(if parts.version == Version::HTTP_10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        put_fields(&mut head, &parts.headers);
        let ended = body.is_end_stream();
        let has_length = parts.headers.contains_key(CONTENT_LENGTH);
        let mut chunked = false;
        if !has_length {
            match body.size_hint().exact() {
                // A body-less request says so when its method usually carries one.
                Some(0) if ended => {
                    if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                        head.extend_from_slice(b"content-length: 0\r\n");
                    }
                }
                Some(n) => {
                    head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                }
                None if parts.version == Version::HTTP_11 => {
                    head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
                // HTTP/1.0 has no chunks; the upstream reads until the end of the request.
                None => {}
            }
        }
        head.extend_from_slice(b"\r\n");
        let (body, empty) = if ended {
            (None, Some(body))
        } else {
            (Some(body), None)
        };
        Writer {
            queue: VecDeque::from([head.freeze()]),
            body,
            chunked,
            touched: false,
            empty,
            need_flush: false,
        }
    }

    fn is_done(&self) -> bool {
        self.body.is_none() && self.queue.is_empty() && !self.need_flush
    }

    /// The body, if it was never read from.
    fn untouched(&mut self) -> Option<Body> {
        if self.touched {
            return None;
        }
        self.empty.take().or_else(|| self.body.take())
    }

    /// Writes what it can; ready once the whole request has been written.
    fn poll(&mut self, io: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        loop {
            while let Some(first) = self.queue.front() {
                // One piece goes by `send(2)`, several by `writev(2)`, which costs the kernel
                // more per call.
                let mut written = if self.queue.len() == 1 {
                    ready!(Pin::new(&mut *io).poll_write(cx, first))?
                } else {
                    let mut slices = [IoSlice::new(&[]); 8];
                    let n = self.queue.len().min(slices.len());
                    for (slice, bytes) in slices.iter_mut().zip(self.queue.iter()) {
                        *slice = IoSlice::new(bytes);
                    }
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?
                };
                self.need_flush = true;
                if written == 0 {
                    return Poll::Ready(Err(
                        std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                    ));
                }
                while written > 0 {
                    let Some(front) = self.queue.front_mut() else {
                        break;
                    };
                    if written >= front.len() {
                        written -= front.len();
                        self.queue.pop_front();
                    } else {
                        front.advance(written);
                        written = 0;
                    }
                }
            }
            let Some(body) = &mut self.body else {
                if self.need_flush {
                    ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Ready(Ok(()));
            };
            self.touched = true;
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // What was written goes out while the body waits for more.
                    if self.need_flush
                        && let Poll::Ready(flushed) = Pin::new(&mut *io).poll_flush(cx)
                    {
                        flushed?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            };
            match frame {
                None => {
                    self.body = None;
                    if self.chunked {
                        self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(ExchangeError::RequestBody(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        let mut size = BytesMut::with_capacity(18);
                        size.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        self.queue.push_back(size.freeze());
                        self.queue.push_back(data);
                        self.queue.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => self.queue.push_back(data),
                    Err(frame) => {
                        // Trailers end the body; without chunks there is no room for them.
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            let mut last = BytesMut::from(&b"0\r\n"[..]);
                            put_fields(&mut last, &trailers);
                            last.extend_from_slice(b"\r\n");
                            self.queue.push_back(last.freeze());
                            self.body = None;
                        }
                    }
                },
            }
        }
    }
}

/// Writes `name: value` lines.
fn put_fields(buf: &mut BytesMut, fields: &HeaderMap) {
    for (name, value) in fields {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// Where a parsed field's name and value sit in the buffer it was parsed from: (name start,
/// name length, value start, value length).
type Span = (usize, usize, usize, usize);

/// The spans of `parsed`, fields that httparse found in `buf`. (A vector the size of the
/// head, not an array for the most fields there may be: zeroing that cost more than the
/// parse.)
fn spans(buf: &[u8], parsed: &[httparse::Header<'_>]) -> Result<Vec<Span>, ExchangeError> {
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize).checked_sub(base);
    let mut out = Vec::with_capacity(parsed.len());
    for h in parsed {
        let (Some(n), Some(v)) = (offset(h.name.as_ptr()), offset(h.value.as_ptr())) else {
            return Err(ExchangeError::Malformed("bad header"));
        };
        // An empty value need not point into the buffer.
        let v = if h.value.is_empty() { 0 } else { v };
        out.push((n, h.name.len(), v, h.value.len()));
    }
    Ok(out)
}

/// The fields at `spans` in `block`, their values sharing its buffer.
fn fields(block: &Bytes, spans: &[Span]) -> Result<HeaderMap, ExchangeError> {
    let mut map = HeaderMap::with_capacity(spans.len());
    for &(n, nl, v, vl) in spans {
        let name = block
            .get(n..n + nl)
            .ok_or(ExchangeError::Malformed("bad header"))?;
        let name = HeaderName::from_bytes(name)
            .map_err(|_| ExchangeError::Malformed("bad header name"))?;
        if v + vl > block.len() {
            return Err(ExchangeError::Malformed("bad header"));
        }
        let value = HeaderValue::from_maybe_shared(block.slice(v..v + vl))
            .map_err(|_| ExchangeError::Malformed("bad header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Nothing (left) to read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
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
    let mut keep = version == Version::HTTP_11 && framing != Framing::Eof && !has_close(&map);
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
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunk::Size),
            _ => Framing::Eof,
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = std::str::from_utf8(part)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ExchangeError::Malformed("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Malformed("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Eof,
    })
}

fn has_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// A response body read from its upstream connection by the task that polls it, which also
/// writes whatever is left of the request body.
pub struct H1Body {
    /// `None` once the connection has gone back to the pool or been closed.
    conn: Option<H1Conn>,
    out: Writer,
    framing: Framing,
    /// Whether the connection may carry another request once this one is over.
    keep: bool,
    release: Option<Release>,
}

impl From<H1Body> for Body {
    fn from(body: H1Body) -> Body {
        Body::Upstream(Box::new(body))
    }
}

impl H1Body {
    /// Back to the pool when the whole exchange is over and the connection may be kept.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.framing == Framing::Done
            && self.out.is_done()
            && self.keep
            && conn.read.is_empty()
            && let Some(Release { pools, key }) = self.release.take()
        {
            // An idle connection keeps no buffer.
            conn.read = BytesMut::new();
            conn.read_size = READ_SIZE;
            pools.checkin_http1(key, conn);
        }
    }

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
            self.out.body = None;
            self.out.queue.clear();
            self.out.need_flush = false;
        }
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(ExchangeError::Closed.into())));
                    }
                    let n = conn
                        .read
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(conn.read.split_to(n).freeze()))));
                }
                Framing::Eof => {
                    if conn.read.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let all = conn.read.len();
                    return Poll::Ready(Some(Ok(Frame::data(conn.read.split_to(all).freeze()))));
                }
                Framing::Chunked(chunk) => {
                    let (next, frame) = ready!(poll_chunk(conn, chunk, cx))?;
                    self.framing = next;
                    if let Some(frame) = frame {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
            }
        }
    }
}

/// One step of the chunked decoder: the next state, and a frame when the step made one.
type ChunkStep = (Framing, Option<Frame<Bytes>>);

fn poll_chunk(
    conn: &mut H1Conn,
    chunk: Chunk,
    cx: &mut Context<'_>,
) -> Poll<Result<ChunkStep, ExchangeError>> {
    loop {
        let step = match chunk {
            Chunk::Size => chunk_size(&mut conn.read)?.map(|size| {
                let next = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
                (Framing::Chunked(next), None)
            }),
            Chunk::Data(left) if !conn.read.is_empty() => {
                let n = conn
                    .read
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                let next = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                let data = conn.read.split_to(n).freeze();
                Some((Framing::Chunked(next), Some(Frame::data(data))))
            }
            Chunk::Data(_) => None,
            Chunk::DataEnd if conn.read.len() >= 2 => {
                if &conn.read[..2] != b"\r\n" {
                    return Poll::Ready(Err(ExchangeError::Malformed("chunk without its CRLF")));
                }
                conn.read.advance(2);
                Some((Framing::Chunked(Chunk::Size), None))
            }
            Chunk::DataEnd => None,
            Chunk::Trailers => trailers(&mut conn.read)?.map(|t| (Framing::Done, t)),
        };
        if let Some(step) = step {
            return Poll::Ready(Ok(step));
        }
        if conn.read.len() > MAX_HEAD_BYTES {
            return Poll::Ready(Err(ExchangeError::Malformed("chunk framing too long")));
        }
        if ready!(conn.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(ExchangeError::Closed));
        }
    }
}

/// A chunk-size line (`1a;ext=1\r\n`), taken off `read`; `None` while incomplete.
fn chunk_size(read: &mut BytesMut) -> Result<Option<u64>, ExchangeError> {
    let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &read[..end];
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .map_err(|_| ExchangeError::Malformed("bad chunk size"))?
        .trim_matches(|c| c == ' ' || c == '\t');
    if digits.is_empty() || digits.len() > 16 {
        return Err(ExchangeError::Malformed("bad chunk size"));
    }
    let size =
        u64::from_str_radix(digits, 16).map_err(|_| ExchangeError::Malformed("bad chunk size"))?;
    read.advance(end + 2);
    Ok(Some(size))
}

/// The trailer section after the last chunk, taken off `read`: `Some(None)` when it is empty.
fn trailers(read: &mut BytesMut) -> Result<Option<Option<Frame<Bytes>>>, ExchangeError> {
    if read.starts_with(b"\r\n") {
        read.advance(2);
        return Ok(Some(None));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, parsed) = match httparse::parse_headers(read, &mut headers) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Malformed("bad trailers")),
    };
    let at = spans(read, parsed)?;
    let map = fields(&read.split_to(len).freeze(), &at)?;
    Ok(Some(Some(Frame::trailers(map))))
}

impl http_body::Body for H1Body {
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

impl Drop for H1Body {
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
        assert_eq!((f, keep), (Framing::Chunked(Chunk::Size), true));
        let (_, f, keep) = final_head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((f, keep), (Framing::Eof, false));
        let (_, f, keep) = final_head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((f, keep), (Framing::Eof, false), "read until close");
        let (p, f, keep) = final_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        );
        assert_eq!((f, keep), (Framing::Chunked(Chunk::Size), false));
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
            let _ = chunk_size(&mut BytesMut::from(&bytes[..]));
            let _ = trailers(&mut BytesMut::from(&bytes[..]));
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
    fn chunk_sizes_and_trailers() {
        let mut b = BytesMut::from(&b"1A;ext=1\r\nrest"[..]);
        assert_eq!(chunk_size(&mut b).unwrap(), Some(26));
        assert_eq!(&b[..], b"rest");
        assert_eq!(chunk_size(&mut BytesMut::from(&b"1a"[..])).unwrap(), None);
        assert!(chunk_size(&mut BytesMut::from(&b"zz\r\n"[..])).is_err());
        assert!(chunk_size(&mut BytesMut::from(&b"11111111111111111\r\n"[..])).is_err());
        let mut t = BytesMut::from(&b"grpc-status: 0\r\n\r\nnext"[..]);
        let frame = trailers(&mut t).unwrap().unwrap().unwrap();
        assert_eq!(frame.trailers_ref().unwrap()["grpc-status"], "0");
        assert_eq!(&t[..], b"next");
        let mut none = BytesMut::from(&b"\r\n"[..]);
        assert!(matches!(trailers(&mut none), Ok(Some(None))));
        assert!(matches!(
            trailers(&mut BytesMut::from(&b"a: b\r\n"[..])),
            Ok(None)
        ));
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
            let conn = H1Conn::new(Conn::Tcp(client), addr, ConnectionPermit(None), None);
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
