//! HTTP/1.1 framing, shared by the proxy's two HTTP/1 ends: the server that reads requests
//! from clients (`http::server::h1`) and the client that sends them upstream
//! (`http::client::h1`).
//!
//! - Parsed fields become a [`HeaderMap`] whose values share the buffer they were read into.
//! - A body is delimited by its [`Framing`], and [`poll_decode`] turns the bytes of either end
//!   into frames: data, and the trailers of a chunked body.
//! - A [`Writer`] writes a message's head and then its body, encoding it as its [`Encoding`]
//!   says, with the body polled between writes. It holds any body (`Writer<B>`), so that the
//!   framing knows nothing of the proxy's own body type.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use tokio::io::AsyncWrite;

use crate::errors::BoxError;
use crate::io::Conn;

/// The most fields a trailer section may carry.
const MAX_TRAILERS: usize = 128;
/// The longest chunk-size line or trailer section.
pub const MAX_FRAMING_BYTES: usize = 64 * 1024;

/// What went wrong reading a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed inside the message")]
    Closed,
    #[error("{0}")]
    Malformed(&'static str),
}

/// A connection's read side: its buffer, and a way to read more into it.
pub trait Fill {
    fn buf(&mut self) -> &mut BytesMut;
    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>>;
}

/// Where a parsed field's name and value sit in the buffer it was parsed from: (name start,
/// name length, value start, value length).
pub type Span = (usize, usize, usize, usize);

/// The spans of `parsed`, fields that httparse found in `buf`. (A vector the size of the
/// head, not an array for the most fields there may be: zeroing that cost more than the
/// parse.)
pub fn spans(buf: &[u8], parsed: &[httparse::Header<'_>]) -> Result<Vec<Span>, CodecError> {
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize).checked_sub(base);
    let mut out = Vec::with_capacity(parsed.len());
    for h in parsed {
        let (Some(n), Some(v)) = (offset(h.name.as_ptr()), offset(h.value.as_ptr())) else {
            return Err(CodecError::Malformed("bad header"));
        };
        // An empty value need not point into the buffer.
        let v = if h.value.is_empty() { 0 } else { v };
        out.push((n, h.name.len(), v, h.value.len()));
    }
    Ok(out)
}

/// The fields at `spans` in `block`, their values sharing its buffer.
pub fn fields(block: &Bytes, spans: &[Span]) -> Result<HeaderMap, CodecError> {
    let mut map = HeaderMap::with_capacity(spans.len());
    for &(n, nl, v, vl) in spans {
        let name = block
            .get(n..n + nl)
            .ok_or(CodecError::Malformed("bad header"))?;
        let name =
            HeaderName::from_bytes(name).map_err(|_| CodecError::Malformed("bad header name"))?;
        if v + vl > block.len() {
            return Err(CodecError::Malformed("bad header"));
        }
        let value = HeaderValue::from_maybe_shared(block.slice(v..v + vl))
            .map_err(|_| CodecError::Malformed("bad header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Writes `name: value` lines.
pub fn put_fields(buf: &mut BytesMut, fields: &HeaderMap) {
    for (name, value) in fields {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// The room `fields` take as [`put_fields`] writes them.
pub fn fields_len(fields: &HeaderMap) -> usize {
    fields
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The message's `Content-Length`: equal repeated values are one, anything else that is not
/// a plain decimal number is an error (RFC 9112 section 6.3).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, CodecError> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        add_length(&mut length, value)?;
    }
    Ok(length)
}

/// Folds one `Content-Length` field into the length found so far (see [`content_length`]).
pub fn add_length(length: &mut Option<u64>, value: &HeaderValue) -> Result<(), CodecError> {
    for part in value.as_bytes().split(|b| *b == b',') {
        let n = std::str::from_utf8(part)
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(CodecError::Malformed("bad content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(CodecError::Malformed("conflicting content-length"));
        }
        *length = Some(n);
    }
    Ok(())
}

/// Whether a comma-separated header (`Connection`, `Transfer-Encoding`) lists `token`.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing (left) to read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes the connection (responses only).
    Eof,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Framing {
    pub const CHUNKED: Framing = Framing::Chunked(Chunk::Size);
}

/// The next frame of a body delimited by `framing`, read from `src`; `None` once it has
/// ended (and `framing` is [`Framing::Done`]).
pub fn poll_decode(
    framing: &mut Framing,
    src: &mut impl Fill,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, CodecError>>> {
    let result = loop {
        match *framing {
            Framing::Done => return Poll::Ready(None),
            Framing::Length(left) => {
                if src.buf().is_empty() && ready!(src.poll_fill(cx))? == 0 {
                    break Err(CodecError::Closed);
                }
                let read = src.buf();
                let n = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                *framing = if left == 0 {
                    Framing::Done
                } else {
                    Framing::Length(left)
                };
                break Ok(Frame::data(read.split_to(n).freeze()));
            }
            Framing::Eof => {
                if src.buf().is_empty() && ready!(src.poll_fill(cx))? == 0 {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                let read = src.buf();
                let all = read.len();
                break Ok(Frame::data(read.split_to(all).freeze()));
            }
            Framing::Chunked(chunk) => {
                let (next, frame) = ready!(poll_chunk(src, chunk, cx))?;
                *framing = next;
                if let Some(frame) = frame {
                    break Ok(frame);
                }
            }
        }
    };
    Poll::Ready(Some(result))
}

/// One step of the chunked decoder: the next state, and a frame when the step made one.
type ChunkStep = (Framing, Option<Frame<Bytes>>);

fn poll_chunk(
    src: &mut impl Fill,
    chunk: Chunk,
    cx: &mut Context<'_>,
) -> Poll<Result<ChunkStep, CodecError>> {
    loop {
        let read = src.buf();
        let step = match chunk {
            Chunk::Size => chunk_size(read)?.map(|size| {
                let next = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
                (Framing::Chunked(next), None)
            }),
            Chunk::Data(left) if !read.is_empty() => {
                let n = read.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                let next = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                let data = read.split_to(n).freeze();
                Some((Framing::Chunked(next), Some(Frame::data(data))))
            }
            Chunk::Data(_) => None,
            Chunk::DataEnd if read.len() >= 2 => {
                if &read[..2] != b"\r\n" {
                    return Poll::Ready(Err(CodecError::Malformed("chunk without its CRLF")));
                }
                read.advance(2);
                Some((Framing::CHUNKED, None))
            }
            Chunk::DataEnd => None,
            Chunk::Trailers => trailers(read)?.map(|t| (Framing::Done, t)),
        };
        if let Some(step) = step {
            return Poll::Ready(Ok(step));
        }
        if read.len() > MAX_FRAMING_BYTES {
            return Poll::Ready(Err(CodecError::Malformed("chunk framing too long")));
        }
        if ready!(src.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(CodecError::Closed));
        }
    }
}

/// A chunk-size line (`1a;ext=1\r\n`), taken off `read`; `None` while incomplete.
pub fn chunk_size(read: &mut BytesMut) -> Result<Option<u64>, CodecError> {
    let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &read[..end];
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .map_err(|_| CodecError::Malformed("bad chunk size"))?
        .trim_matches(|c| c == ' ' || c == '\t');
    if digits.is_empty() || digits.len() > 16 {
        return Err(CodecError::Malformed("bad chunk size"));
    }
    let size =
        u64::from_str_radix(digits, 16).map_err(|_| CodecError::Malformed("bad chunk size"))?;
    read.advance(end + 2);
    Ok(Some(size))
}

/// The trailer section after the last chunk, taken off `read`: `Some(None)` when it is empty.
pub fn trailers(read: &mut BytesMut) -> Result<Option<Option<Frame<Bytes>>>, CodecError> {
    if read.starts_with(b"\r\n") {
        read.advance(2);
        return Ok(Some(None));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, parsed) = match httparse::parse_headers(read, &mut headers) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(CodecError::Malformed("bad trailers")),
    };
    let at = spans(read, parsed)?;
    let map = fields(&read.split_to(len).freeze(), &at)?;
    Ok(Some(Some(Frame::trailers(map))))
}

/// How a [`Writer`] puts a body on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Exactly this many bytes, as the head declared.
    Length(u64),
    Chunked,
    /// As it comes, ended by closing the connection (or no body at all).
    Raw,
}

/// A body that did not keep to the length its head declared: the message on the wire is
/// broken, and so is its connection.
#[derive(Debug, thiserror::Error)]
#[error("the body did not match its content-length")]
pub struct LengthMismatch;

/// Why a [`Writer`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("reading the body: {0}")]
    Body(BoxError),
}

/// Access to the connection a [`Writer`] writes to, taken only around each write, never
/// while the body is polled (which may itself need the connection: a request body read from
/// the client whose response is being written).
pub trait Sink {
    fn with<R>(&mut self, f: impl FnOnce(Pin<&mut Conn>) -> R) -> R;
}

impl Sink for Conn {
    fn with<R>(&mut self, f: impl FnOnce(Pin<&mut Conn>) -> R) -> R {
        f(Pin::new(self))
    }
}

/// A message's bytes still to write: the head and any framing first, then the body frame by
/// frame.
pub struct Writer<B> {
    queue: VecDeque<Bytes>,
    /// `None` once the body has ended (or there was none).
    body: Option<B>,
    encoding: Encoding,
    /// Whether the body has been polled: before that it can still be sent elsewhere.
    touched: bool,
    /// A body with nothing to write, kept whole in case the request must go elsewhere.
    empty: Option<B>,
    /// Whether bytes were written since the last flush (TLS buffers them).
    need_flush: bool,
    /// Whether to take the body's ready frames before writing, so that a head and a small
    /// body leave in one write.
    gather: bool,
}

/// The most bytes of several pieces that are copied into one write rather than gathered.
const MAX_COALESCE: usize = 4096;
/// The most pieces one write takes.
const MAX_SLICES: usize = 8;

impl<B> Writer<B> {
    pub fn is_done(&self) -> bool {
        self.body.is_none() && self.queue.is_empty() && !self.need_flush
    }

    /// The body, if it was never read from.
    pub fn untouched(&mut self) -> Option<B> {
        if self.touched {
            return None;
        }
        self.empty.take().or_else(|| self.body.take())
    }

    /// Gives up on what is left to write.
    pub fn abandon(&mut self) {
        self.body = None;
        self.queue.clear();
        self.need_flush = false;
    }
}

impl<B> Writer<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    /// Writes `head`, then `body` (unless it has already ended) as `encoding` says.
    pub fn new(head: Bytes, body: B, encoding: Encoding, gather: bool) -> Writer<B> {
        let (body, empty) = if body.is_end_stream() {
            (None, Some(body))
        } else {
            (Some(body), None)
        };
        let mut queue = VecDeque::with_capacity(if body.is_some() { 4 } else { 1 });
        queue.push_back(head);
        Writer {
            queue,
            body,
            encoding,
            touched: false,
            empty,
            need_flush: false,
            gather,
        }
    }

    /// Writes what it can; ready once the whole message has been written.
    pub fn poll(
        &mut self,
        io: &mut impl Sink,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            let mut body_pending = false;
            if self.gather || self.queue.is_empty() {
                while self.body.is_some() && self.queue.len() + 3 <= MAX_SLICES {
                    match self.poll_body(cx) {
                        Poll::Ready(r) => r?,
                        Poll::Pending => {
                            body_pending = true;
                            break;
                        }
                    }
                }
            }
            if self.queue.is_empty() {
                if self.need_flush {
                    ready!(io.with(|io| io.poll_flush(cx)))?;
                    self.need_flush = false;
                }
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    debug_assert!(body_pending);
                    Poll::Pending
                };
            }
            // One piece goes by `send(2)`, several by `writev(2)`, which costs the kernel more
            // per call: small pieces (a head and a short body) are copied into one.
            if self.queue.len() > 1 {
                let total: usize = self.queue.iter().map(Bytes::len).sum();
                if total <= MAX_COALESCE {
                    let mut one = BytesMut::with_capacity(total);
                    for piece in self.queue.drain(..) {
                        one.extend_from_slice(&piece);
                    }
                    self.queue.push_back(one.freeze());
                }
            }
            let queue = &self.queue;
            let written = ready!(io.with(|io| {
                if queue.len() == 1 {
                    io.poll_write(cx, &queue[0])
                } else {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let n = queue.len().min(MAX_SLICES);
                    for (slice, bytes) in slices.iter_mut().zip(queue.iter()) {
                        *slice = IoSlice::new(bytes);
                    }
                    io.poll_write_vectored(cx, &slices[..n])
                }
            }))?;
            self.need_flush = true;
            if written == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            let mut written = written;
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
    }

    /// Takes the body's next frame into the queue, encoded.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        let Some(body) = &mut self.body else {
            return Poll::Ready(Ok(()));
        };
        self.touched = true;
        let frame = ready!(Pin::new(body).poll_frame(cx));
        let chunked = self.encoding == Encoding::Chunked;
        match frame {
            None => {
                self.body = None;
                match self.encoding {
                    Encoding::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                    Encoding::Length(0) | Encoding::Raw => {}
                    Encoding::Length(_) => {
                        return Poll::Ready(Err(WriteError::Body(Box::new(LengthMismatch))));
                    }
                }
            }
            Some(Err(e)) => {
                self.body = None;
                return Poll::Ready(Err(WriteError::Body(e)));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if let Encoding::Length(left) = &mut self.encoding {
                        *left = left
                            .checked_sub(data.len() as u64)
                            .ok_or_else(|| WriteError::Body(Box::new(LengthMismatch)))?;
                    }
                    if chunked {
                        let mut size = BytesMut::with_capacity(18);
                        size.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        self.queue.push_back(size.freeze());
                        self.queue.push_back(data);
                        self.queue.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        self.queue.push_back(data);
                    }
                }
                Err(frame) => {
                    // Trailers end the body; without chunks there is no room for them.
                    if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                        let mut last = BytesMut::with_capacity(5 + fields_len(&trailers));
                        last.extend_from_slice(b"0\r\n");
                        put_fields(&mut last, &trailers);
                        last.extend_from_slice(b"\r\n");
                        self.queue.push_back(last.freeze());
                        self.body = None;
                    }
                }
            },
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn content_lengths() {
        let map = |values: &[&'static str]| {
            let mut m = HeaderMap::new();
            for v in values {
                m.append(CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(content_length(&map(&[])).unwrap(), None);
        assert_eq!(content_length(&map(&["12"])).unwrap(), Some(12));
        assert_eq!(content_length(&map(&["3, 3", "3"])).unwrap(), Some(3));
        for bad in [
            &["1", "2"][..],
            &["-1"],
            &["+1"],
            &["0x10"],
            &[""],
            &["1 2"],
        ] {
            assert!(content_length(&map(bad)).is_err(), "{bad:?}");
        }
    }

    /// A buffer that is all there will ever be: reading more finds the end of the stream.
    struct Fixed(BytesMut);

    impl Fill for Fixed {
        fn buf(&mut self) -> &mut BytesMut {
            &mut self.0
        }
        fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(0))
        }
    }

    fn decode_all(framing: Framing, input: &[u8]) -> (Result<Vec<u8>, String>, BytesMut) {
        let mut src = Fixed(BytesMut::from(input));
        let mut framing = framing;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            match poll_decode(&mut framing, &mut src, &mut cx) {
                Poll::Ready(None) => return (Ok(out), src.0),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        out.extend_from_slice(d);
                    }
                }
                Poll::Ready(Some(Err(e))) => return (Err(e.to_string()), src.0),
                Poll::Pending => unreachable!("a fixed source never waits"),
            }
        }
    }

    #[test]
    fn bodies_decode_to_their_end_and_leave_what_follows() {
        let (body, rest) = decode_all(Framing::Length(5), b"helloGET /");
        assert_eq!(
            (body.unwrap(), &rest[..]),
            (b"hello".to_vec(), &b"GET /"[..])
        );
        let (body, rest) = decode_all(
            Framing::CHUNKED,
            b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nnext",
        );
        assert_eq!(
            (body.unwrap(), &rest[..]),
            (b"abcde".to_vec(), &b"next"[..])
        );
        let (body, _) = decode_all(Framing::Eof, b"until the end");
        assert_eq!(body.unwrap(), b"until the end");
        let (body, _) = decode_all(Framing::Length(10), b"short");
        assert!(body.is_err(), "a body cut short is an error");
        let (body, _) = decode_all(Framing::CHUNKED, b"3\r\nabcX\r\n");
        assert!(body.is_err(), "a chunk without its CRLF");
    }
}
