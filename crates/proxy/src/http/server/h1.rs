//! HTTP/1.1 served in the connection's own task.
//!
//! One loop per connection reads a request head, hands the request to the handler, writes the
//! response, and reads the next head. The request body is read by whoever polls it (the
//! upstream exchange writing it on), through a [`Link`] the loop shares with it; the loop
//! itself reads only between requests, and while a request whose body has been read waits
//! for its response, to see the client leave (which cancels the request) or pipeline the
//! next one.
//!
//! Nothing is kept between requests: an idle connection holds no buffer until bytes arrive,
//! reads ask for [`READ_SIZE`] and grow only for large messages, and a response's head is
//! written with its first body bytes straight from where they are.
//!
//! Every request head is judged the same way (the first and each later one on a
//! keep-alive connection): a malformed head gets 400, a head over the size or field limit
//! 431, a head that does not arrive in time 408, each with `x-weft-error` and the connection
//! closed. A body is framed as RFC 9112 section 6.3 says for requests, and anything a
//! proxy behind or ahead of this one could frame differently (request smuggling) is refused:
//! `Transfer-Encoding` with `Content-Length`, a transfer coding other than `chunked`,
//! conflicting lengths, `Transfer-Encoding` in HTTP/1.0, obsolete line folding.

use std::cell::RefCell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::errors::{ERROR_HEADER, Reason};
use crate::http::body::{Body, BoxedRequest};
use crate::http::h1::{
    Encoding, Fill, Framing, Sink, Writer, add_length, fields, fields_len, poll_decode, put_fields,
    spans,
};
use crate::http::server::link::{Link, LinkRef, RequestBody, lock};
use crate::http::timer::CoarseTimer;
use crate::io::{Conn, READ_SIZE, Rewind};

/// The most headers a request may carry (Envoy's default).
const MAX_HEADERS: usize = 100;
/// The most of an unread request body the server reads and discards to keep the connection
/// after answering early; a longer one closes it.
const MAX_DRAIN: u64 = 64 * 1024;
/// How long, and for how many bytes, a closing connection still reads what the client sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const MAX_LINGER_BYTES: usize = 1 << 20;

/// Limits applied to downstream connections (the HTTP/2 server reads `max_header_bytes`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Keeps the header-read deadline of each request on an HTTP/1 connection.
    pub timer: CoarseTimer,
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

/// The connection as the loop writes to it: taken for each write, never across an await (a
/// request body may need it in between).
struct LinkIo<'a>(&'a Mutex<Link>);

impl Sink for LinkIo<'_> {
    fn with<R>(&mut self, f: impl FnOnce(Pin<&mut Conn>) -> R) -> R {
        f(Pin::new(&mut lock(self.0).io))
    }
}

impl AsyncWrite for LinkIo<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut lock(self.0).io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut lock(self.0).io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut lock(self.0).io).poll_shutdown(cx)
    }
}

/// The client's side of an upgrade (`Upgrade` or `CONNECT`) once the response agreeing to it
/// has been written: the connection, with what the client sent after its request first. (In
/// an `Arc` because request extensions must be `Clone`; the first to take it has it.)
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Rewind<Conn>>>>>);

impl OnUpgrade {
    pub async fn wait(self) -> std::io::Result<Rewind<Conn>> {
        let rx = weft_api::sync::lock(&self.0).take();
        match rx {
            Some(rx) => rx
                .await
                .map_err(|_| std::io::Error::other("the connection was not upgraded")),
            None => Err(std::io::Error::other("the upgrade was already claimed")),
        }
    }
}

/// A request head, parsed.
struct Parsed {
    /// Boxed as soon as it is made, and passed on as the box: see [`BoxedRequest`].
    req: BoxedRequest,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    /// `Upgrade` named by `Connection`, or CONNECT: the connection may leave HTTP.
    wants_upgrade: bool,
}

/// What a request head's fields say about its framing and its connection, found in one pass
/// over them (a lookup per name hashes each).
#[derive(Default)]
struct Hop {
    /// Whether `Transfer-Encoding` is there at all, the codings it lists, and whether the
    /// last is `chunked`.
    te: bool,
    codings: usize,
    chunked: bool,
    length: Option<u64>,
    bad_length: bool,
    close: bool,
    keep_alive: bool,
    connection_upgrade: bool,
    upgrade: bool,
    expect_continue: bool,
    /// How many `Host` fields, and whether one is not a host (RFC 9112 section 3.2).
    hosts: u8,
    bad_host: bool,
}

impl Hop {
    fn of(fields: &HeaderMap) -> Hop {
        let mut hop = Hop::default();
        for (name, value) in fields {
            if name == TRANSFER_ENCODING {
                hop.te = true;
                for t in value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                {
                    if !t.is_empty() {
                        hop.codings += 1;
                        hop.chunked = t.eq_ignore_ascii_case(b"chunked");
                    }
                }
            } else if name == CONTENT_LENGTH {
                hop.bad_length |= add_length(&mut hop.length, value).is_err();
            } else if name == CONNECTION {
                for t in value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                {
                    hop.close |= t.eq_ignore_ascii_case(b"close");
                    hop.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    hop.connection_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
                }
            } else if name == UPGRADE {
                hop.upgrade = true;
            } else if name == EXPECT {
                hop.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            } else if name == HOST {
                hop.hosts = hop.hosts.saturating_add(1);
                hop.bad_host |= !value.as_bytes().iter().all(|&b| is_host_byte(b));
            }
        }
        hop
    }
}

/// Whether `b` may appear in a `Host` value: an authority without userinfo (RFC 3986 section
/// 3.2), that is a name, an IPv4 address or a bracketed IP literal, and an optional port. Empty
/// is allowed (a target without an authority). Checked byte by byte rather than parsed into an
/// `Authority`, which would copy the value for every request.
fn is_host_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~' | b'%'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b':' | b'[' | b']')
}

/// Parses a request head at the start of `bytes` as a connection does: the request and how
/// many bytes its head took, `None` while incomplete (for the fuzz targets, [`crate::fuzzing`]).
pub fn parse_request_head(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<Option<(BoxedRequest, usize)>, Reason> {
    let mut read = BytesMut::from(bytes);
    let parsed = parse_request(&mut read, max_bytes)?;
    Ok(parsed.map(|p| (p.req, bytes.len() - read.len())))
}

/// Parses a request head at the start of `read` and takes it off; `None` while incomplete.
fn parse_request(read: &mut BytesMut, max_bytes: usize) -> Result<Option<Parsed>, Reason> {
    // Left uninitialised: httparse writes the fields it finds, and nothing reads the rest.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(read, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
        Ok(httparse::Status::Complete(_)) => return Err(Reason::HeaderTooLarge),
        Ok(httparse::Status::Partial) if read.len() > max_bytes => {
            return Err(Reason::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reason::HeaderTooLarge),
        Err(_) => return Err(Reason::BadRequest),
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Reason::BadRequest)?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let path = req.path.unwrap_or_default();
    let target_at = (path.as_ptr() as usize)
        .checked_sub(read.as_ptr() as usize)
        .ok_or(Reason::BadRequest)?;
    let target = (target_at, path.len());
    let at = spans(read, req.headers).map_err(|_| Reason::BadRequest)?;
    let block = read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(block.slice(target.0..target.0 + target.1))
        .map_err(|_| Reason::BadRequest)?;
    let form_ok = if method == Method::CONNECT {
        uri.authority().is_some() && uri.scheme().is_none()
    } else if uri.scheme().is_some() {
        uri.authority().is_some()
    } else {
        uri.path().starts_with('/') || (method == Method::OPTIONS && uri.path() == "*")
    };
    if !form_ok {
        return Err(Reason::BadRequest);
    }
    let map = fields(&block, &at).map_err(|_| Reason::BadRequest)?;
    let hop = Hop::of(&map);
    // An HTTP/1.1 request names its host exactly once, in `Host` or in an absolute target
    // (HTTP/1.0 may leave it out): a second or a malformed one could be read differently by
    // the next hop.
    let hostless = hop.hosts == 0 && uri.authority().is_none();
    if hop.hosts > 1 || hop.bad_host || (version == Version::HTTP_11 && hostless) {
        return Err(Reason::BadRequest);
    }
    let framing = request_framing(&hop, version)?;
    let keep_alive = if version == Version::HTTP_11 {
        !hop.close
    } else {
        hop.keep_alive
    };
    let expect_continue = version == Version::HTTP_11 && hop.expect_continue;
    let wants_upgrade = method == Method::CONNECT || (hop.upgrade && hop.connection_upgrade);
    let mut req = Box::new(Request::new(Body::Empty));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = map;
    Ok(Some(Parsed {
        req,
        framing,
        keep_alive,
        expect_continue,
        wants_upgrade,
    }))
}

/// RFC 9112 section 6.3 for a request, refusing whatever another hop could read differently.
fn request_framing(hop: &Hop, version: Version) -> Result<Framing, Reason> {
    if hop.te {
        let chunked_only = hop.codings == 1 && hop.chunked;
        if version == Version::HTTP_10 || hop.length.is_some() || hop.bad_length || !chunked_only {
            return Err(Reason::BadRequest);
        }
        return Ok(Framing::CHUNKED);
    }
    match (hop.bad_length, hop.length) {
        (true, _) => Err(Reason::BadRequest),
        (false, Some(0) | None) => Ok(Framing::Done),
        (false, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// How a wait for the next request head ended.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing would allocate per request"
)]
enum HeadWait {
    Parsed(Parsed),
    Refuse(Reason),
    /// The client left, or the connection is idle and the proxy drains or timed it out.
    Close,
}

/// Serves HTTP/1 on `io` (whose first bytes are already in `read`) until the client closes,
/// or, once `shutdown` fires, until the request in flight has been answered. The first
/// request head is due by `first_head_by` (the time detection took counts against it); each
/// later one within the header-read timeout of when the proxy starts to wait for it.
/// `handler` gives each request's future in its own allocation (see `server::in_place`): it
/// is large (the whole route, retry and upstream state machine), and lives there while the
/// request is in flight.
pub fn serve<F, P, R>(
    io: Conn,
    read: BytesMut,
    first_head_by: Instant,
    limits: Limits,
    shutdown: CancellationToken,
    handler: F,
    refused: R,
) -> impl Future<Output = ()>
where
    F: Fn(BoxedRequest) -> P,
    P: Future<Output = Response<Body>> + Unpin,
    R: Fn(Reason),
{
    // Made before the future: the connection and its buffer go to the heap at once, and the
    // future (which every connection is) keeps neither.
    let link: LinkRef = Arc::new(Mutex::new(Link {
        io,
        read,
        read_size: READ_SIZE,
        body: Framing::Done,
        generation: 0,
        continue_owed: None,
    }));
    async move {
        let mut draining = pin!(shutdown.cancelled());
        let mut first = Some(first_head_by);
        loop {
            let by = first.take();
            let parsed = match read_head(&link, &limits, by, draining.as_mut()).await {
                HeadWait::Parsed(parsed) => parsed,
                HeadWait::Refuse(reason) => {
                    refused(reason);
                    refuse(&mut LinkIo(&link), reason).await;
                    return;
                }
                HeadWait::Close => {
                    close(&link).await;
                    return;
                }
            };
            let Parsed {
                mut req,
                framing,
                keep_alive,
                expect_continue,
                wants_upgrade,
            } = parsed;
            let generation = {
                let mut l = lock(&link);
                l.generation += 1;
                l.body = framing;
                l.continue_owed = (expect_continue && framing != Framing::Done).then_some(0);
                l.generation
            };
            let method = req.method().clone();
            let version = req.version();
            if framing != Framing::Done {
                *req.body_mut() = Body::Downstream(RequestBody::new(link.clone(), generation));
            }
            let upgrade = wants_upgrade.then(|| {
                let (tx, rx) = oneshot::channel();
                req.extensions_mut()
                    .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
                tx
            });

            let mut pending = handler(req);
            let mut watching = true;
            let resp = std::future::poll_fn(|cx| {
                if let Poll::Ready(resp) = Pin::new(&mut pending).poll(cx) {
                    return Poll::Ready(Some(resp));
                }
                // Once the body has been read, the connection is the loop's to watch.
                let mut l = lock(&link);
                while watching && l.body == Framing::Done {
                    match l.poll_fill(cx) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                        // The next request, pipelined: kept for when this one is over, up to a
                        // head's worth.
                        Poll::Ready(Ok(_)) => watching = l.read.len() <= limits.max_header_bytes,
                        Poll::Pending => break,
                    }
                }
                Poll::Pending
            })
            .await;
            drop(pending);
            let Some(resp) = resp else {
                tracing::debug!("the client left before its response");
                return;
            };

            let (parts, body) = resp.into_parts();
            let upgraded = upgrade.is_some()
                && if method == Method::CONNECT {
                    parts.status.is_success()
                } else {
                    parts.status == StatusCode::SWITCHING_PROTOCOLS
                };
            let mut keep = keep_alive && !shutdown.is_cancelled() && !upgraded && !answered(&link);
            let (head, encoding) =
                response_head(&parts, &method, version, upgraded, &body, &mut keep);
            let body = if upgraded || is_bodiless(&method, parts.status) {
                Body::empty()
            } else {
                body
            };
            let mut writer = Writer::new(head, body, encoding, true);
            let written = std::future::poll_fn(|cx| writer.poll(&mut LinkIo(&link), cx)).await;
            drop(writer);
            if let Err(e) = written {
                tracing::debug!(error = %e, "writing the response failed");
                return;
            }

            if upgraded {
                if let (Some(tx), Ok(link)) = (upgrade, Arc::try_unwrap(link)) {
                    let link = link.into_inner().unwrap_or_else(|p| p.into_inner());
                    let _ = tx.send(Rewind::new(link.read.freeze(), link.io));
                }
                return;
            }
            drop(upgrade);
            if !keep {
                close(&link).await;
                return;
            }
            if !drain(&link, generation, &limits).await {
                close(&link).await;
                return;
            }
            let mut l = lock(&link);
            if l.read.is_empty() {
                // An idle connection keeps no buffer.
                l.read = BytesMut::new();
                l.read_size = READ_SIZE;
            }
            drop(l);
        }
    }
}

/// Waits for the next request head, by `by` or else the header-read timeout from when the
/// wait begins.
async fn read_head(
    link: &Mutex<Link>,
    limits: &Limits,
    by: Option<Instant>,
    mut draining: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> HeadWait {
    use hyper::rt::Timer as _;
    let mut deadline: Option<Pin<Box<dyn hyper::rt::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        let mut l = lock(link);
        loop {
            if !l.read.is_empty() {
                match parse_request(&mut l.read, limits.max_header_bytes) {
                    Ok(Some(parsed)) => return Poll::Ready(HeadWait::Parsed(parsed)),
                    Ok(None) => {}
                    Err(reason) => return Poll::Ready(HeadWait::Refuse(reason)),
                }
            }
            match l.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(HeadWait::Close),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        // Draining: a connection with no request begun closes.
        if l.read.is_empty() && draining.as_mut().poll(cx).is_ready() {
            return Poll::Ready(HeadWait::Close);
        }
        let sleep = deadline.get_or_insert_with(|| {
            limits
                .timer
                .sleep_until(by.unwrap_or_else(|| Instant::now() + limits.header_read_timeout))
        });
        if sleep.as_mut().poll(cx).is_ready() {
            // A keep-alive connection with nothing sent is just idle.
            return Poll::Ready(if l.read.is_empty() {
                HeadWait::Close
            } else {
                HeadWait::Refuse(Reason::HeaderTimeout)
            });
        }
        Poll::Pending
    })
    .await
}

/// Whether a response to `method` with `status` has no body, whatever its head says.
fn is_bodiless(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (method == Method::CONNECT && status.is_success())
}

/// The response's head, and how its body goes on the wire. `keep` turns false when the body
/// can only be ended by closing the connection.
/// A `date` field for a response that came without one: weft's own answers, and an upstream's
/// that lacked it (RFC 9110 section 6.6.1), as hyper and Envoy add it. Formatted once a second.
fn put_date(head: &mut BytesMut) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(text.as_bytes());
        head.extend_from_slice(b"\r\n");
    });
}

fn response_head(
    parts: &http::response::Parts,
    method: &Method,
    version: Version,
    upgraded: bool,
    body: &Body,
    keep: &mut bool,
) -> (Bytes, Encoding) {
    use http_body::Body as _;
    let status = parts.status;
    let reason = status.canonical_reason().unwrap_or("");
    let mut head = BytesMut::with_capacity(64 + reason.len() + fields_len(&parts.headers));
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(b"\r\n");
    let bodiless = is_bodiless(method, status);
    // The framing is this hop's: only a length that is about the body stays.
    let (mut declared, mut bad_length, mut te, mut connection) = (None, false, false, false);
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            bad_length |= add_length(&mut declared, value).is_err();
        } else if name == TRANSFER_ENCODING {
            te = true;
        } else if name == CONNECTION {
            connection = true;
        } else if name == DATE {
            dated = true;
        }
    }
    if bad_length {
        declared = None;
    }
    let has_length = declared.is_some() || bad_length;
    let keep_length = declared.is_some()
        && (method == Method::HEAD || status == StatusCode::NOT_MODIFIED || !bodiless);
    if te || (connection && !upgraded) || (has_length && !keep_length) {
        let mut fields = parts.headers.clone();
        fields.remove(TRANSFER_ENCODING);
        if !upgraded {
            fields.remove(CONNECTION);
        }
        if !keep_length {
            fields.remove(CONTENT_LENGTH);
        }
        put_fields(&mut head, &fields);
    } else {
        put_fields(&mut head, &parts.headers);
    }
    if !dated {
        put_date(&mut head);
    }
    let encoding = if bodiless || upgraded {
        // A HEAD answered here says how long the GET's body would be.
        if method == Method::HEAD
            && declared.is_none()
            && let Some(n) = body.size_hint().exact()
        {
            head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Encoding::Raw
    } else if let Some(n) = declared {
        Encoding::Length(n)
    } else if body.is_end_stream() {
        head.extend_from_slice(b"content-length: 0\r\n");
        Encoding::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        Encoding::Length(n)
    } else if version == Version::HTTP_11 {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Encoding::Chunked
    } else {
        // HTTP/1.0 has no chunks: the end of the connection ends the body.
        *keep = false;
        Encoding::Raw
    };
    if !upgraded {
        if !*keep && version == Version::HTTP_11 {
            head.extend_from_slice(b"connection: close\r\n");
        } else if *keep && version == Version::HTTP_10 {
            head.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    head.extend_from_slice(b"\r\n");
    (head.freeze(), encoding)
}

/// The response is about to be written: a `100 Continue` not sent by now never will be.
/// Whether the connection must then close after the response (and the response say so):
/// the client was still waiting to be asked for its body, which it may never send, or the
/// body is unread, nobody holds it any more, and it is too long to drain.
fn answered(link: &LinkRef) -> bool {
    let holders = Arc::strong_count(link);
    let mut l = lock(link);
    let waits_for_continue = l.continue_owed.take().is_some();
    match l.body {
        Framing::Done => false,
        _ if waits_for_continue => true,
        Framing::Length(n) => holders == 1 && n > MAX_DRAIN,
        _ => false,
    }
}

/// Reads and discards what the client still sends of a request answered before its body was
/// read, so that the connection can carry the next one. False when it is too long or broken.
async fn drain(link: &Mutex<Link>, generation: u64, limits: &Limits) -> bool {
    {
        let l = lock(link);
        if l.generation != generation || l.body == Framing::Done {
            return true;
        }
        let too_long = match l.body {
            Framing::Length(n) => n > MAX_DRAIN,
            _ => false,
        };
        if too_long {
            return false;
        }
    }
    let mut seen = 0u64;
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    let discard = std::future::poll_fn(|cx| {
        let mut l = lock(link);
        loop {
            let mut framing = l.body;
            let frame = ready!(poll_decode(&mut framing, &mut *l, cx));
            l.body = framing;
            match frame {
                None => return Poll::Ready(true),
                Some(Err(_)) => return Poll::Ready(false),
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > MAX_DRAIN {
                        return Poll::Ready(false);
                    }
                }
            }
        }
    });
    tokio::time::timeout_at(deadline, discard)
        .await
        .unwrap_or(false)
}

/// Ends the connection. When the client may still be sending a request body nobody read,
/// what it sends is read and discarded for a while after the FIN: closing a socket with
/// unread bytes resets it, and the reset can destroy the response before the client reads it.
async fn close(link: &Mutex<Link>) {
    let _ = LinkIo(link).shutdown().await;
    let unread = {
        let l = lock(link);
        l.body != Framing::Done || !l.read.is_empty()
    };
    if !unread {
        return;
    }
    let mut left = MAX_LINGER_BYTES;
    let linger = std::future::poll_fn(|cx| {
        let mut l = lock(link);
        loop {
            l.read.clear();
            match ready!(l.poll_fill(cx)) {
                Ok(n) if n > 0 && n < left => left -= n,
                _ => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, linger).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Parsed>, Reason> {
        parse_request(&mut BytesMut::from(text.as_bytes()), 8192)
    }

    fn parsed(text: &str) -> Parsed {
        match parse(text) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("incomplete: {text:?}"),
            Err(r) => panic!("refused ({}): {text:?}", r.as_str()),
        }
    }

    #[test]
    fn request_heads_and_their_framing() {
        let p = parsed("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (p.req.method().clone(), p.req.uri().to_string()),
            (Method::GET, "/a?b".into())
        );
        assert_eq!((p.framing, p.keep_alive), (Framing::Done, true));
        let p = parsed("POST http://x/y HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(p.req.uri().authority().unwrap(), "x");
        assert_eq!(p.framing, Framing::Length(5));
        let p = parsed("POST / HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(p.framing, Framing::CHUNKED);
        let p = parsed("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert!(!p.keep_alive);
        let p = parsed("GET / HTTP/1.0\r\n\r\n");
        assert_eq!((p.req.version(), p.keep_alive), (Version::HTTP_10, false));
        assert!(
            p.req.headers().get(HOST).is_none(),
            "HTTP/1.0 may leave Host out"
        );
        let p = parsed("GET http://x/ HTTP/1.1\r\nhost:\r\n\r\n");
        assert_eq!(p.req.uri().host(), Some("x"), "an empty Host is one");
        let p = parsed("GET http://x/ HTTP/1.1\r\n\r\n");
        assert_eq!(
            p.req.uri().host(),
            Some("x"),
            "an absolute target names the host"
        );
        let p = parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(p.keep_alive);
        let p = parsed(
            "PUT / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
        );
        assert!(p.expect_continue);
        let p = parsed("CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n\r\n");
        assert_eq!(p.req.uri().authority().unwrap(), "db:5432");
        let p = parsed("OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(p.req.uri().path(), "*");
        let mut two = BytesMut::from(
            &b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        );
        let first = parse_request(&mut two, 8192).unwrap().unwrap();
        assert_eq!(first.req.uri().path(), "/1");
        assert_eq!(
            &two[..],
            b"GET /2 HTTP/1.1\r\nhost: x\r\n\r\n",
            "the next head stays"
        );
        assert!(matches!(parse("GET / HTTP/1.1\r\nhost: a"), Ok(None)));
    }

    #[test]
    fn requests_another_hop_could_frame_differently_are_refused() {
        for bad in [
            // CL.TE and TE.CL smuggling.
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            // Obsolete line folding, and whitespace before the colon.
            "GET / HTTP/1.1\r\nhost: x\r\nx-a: b\r\n c\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding : chunked\r\n\r\n",
            // Targets that are not a request target.
            "GET a/b HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET * HTTP/1.1\r\nhost: x\r\n\r\n",
            "CONNECT /path HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            // Host missing from HTTP/1.1, given twice, or not a host.
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.0\r\nhost: a\r\nhost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: user@a\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a/b\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Reason::BadRequest)),
                "{bad:?} was not refused"
            );
        }
        let p = parsed("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 4\r\n\r\n");
        assert_eq!(
            p.framing,
            Framing::Length(4),
            "repeated equal lengths are one"
        );
    }

    #[test]
    fn oversized_heads_and_too_many_fields_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        big.resize(10_000, b'a');
        assert!(matches!(
            parse_request(&mut BytesMut::from(&big[..]), 8192),
            Err(Reason::HeaderTooLarge)
        ));
        let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
        for i in 1..MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        assert_eq!(
            parsed(&(many.clone() + "\r\n")).req.headers().len(),
            MAX_HEADERS
        );
        many.push_str("x-one-more: v\r\n\r\n");
        assert!(matches!(parse(&many), Err(Reason::HeaderTooLarge)));
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers with a head, a refusal or "more", and
        /// never panics.
        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_request(&mut BytesMut::from(&bytes[..]), 8192);
        }

        #[test]
        fn heads_made_of_header_like_lines_parse_without_panicking(
            lines in proptest::collection::vec("[ -~]{0,40}", 0..12),
            target in "[ -~]{0,20}",
        ) {
            let mut text = format!("POST {target} HTTP/1.1\r\n");
            for l in &lines {
                text.push_str(l);
                text.push_str("\r\n");
            }
            text.push_str("\r\n");
            let _ = parse_request(&mut BytesMut::from(text.as_bytes()), 8192);
        }
    }

    fn head_of(resp: Response<Body>, method: Method, version: Version) -> (String, Encoding, bool) {
        let (parts, body) = resp.into_parts();
        let mut keep = true;
        let (head, enc) = response_head(&parts, &method, version, false, &body, &mut keep);
        let head = String::from_utf8(head.to_vec()).unwrap();
        // Every head has one date: the response's own, or the one added here, which is taken
        // out so that the rest can be compared exactly.
        let dates: Vec<&str> = head.lines().filter(|l| l.starts_with("date: ")).collect();
        assert_eq!(dates.len(), 1, "{head}");
        if parts.headers.contains_key(DATE) {
            return (head, enc, keep);
        }
        let line = format!("{}\r\n", dates[0]);
        let date = line.trim_start_matches("date: ").trim_end();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
        (head.replacen(&line, "", 1), enc, keep)
    }

    #[test]
    fn a_response_without_a_date_gets_one_and_one_with_a_date_keeps_it() {
        let (h, _, _) = head_of(Response::new(Body::empty()), Method::GET, Version::HTTP_11);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let mut resp = Response::new(Body::empty());
        resp.headers_mut()
            .insert(DATE, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        let (h, _, _) = head_of(resp, Method::GET, Version::HTTP_11);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_frame_the_body_for_this_hop() {
        let (h, enc, keep) = head_of(
            Response::new(Body::full("hello")),
            Method::GET,
            Version::HTTP_11,
        );
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert_eq!((enc, keep), (Encoding::Length(5), true));

        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut()
            .insert(CONNECTION, "keep-alive".parse().unwrap());
        resp.headers_mut()
            .insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        let (h, enc, _) = head_of(resp, Method::GET, Version::HTTP_11);
        assert_eq!(h, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(enc, Encoding::Length(0));

        let mut resp = Response::new(Body::empty());
        resp.headers_mut()
            .insert(CONTENT_LENGTH, "42".parse().unwrap());
        let (h, enc, _) = head_of(resp, Method::HEAD, Version::HTTP_11);
        assert_eq!(
            h, "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n",
            "HEAD keeps the GET's length"
        );
        assert_eq!(enc, Encoding::Raw);

        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut()
            .insert(CONTENT_LENGTH, "0".parse().unwrap());
        let (h, _, _) = head_of(resp, Method::GET, Version::HTTP_11);
        assert_eq!(h, "HTTP/1.1 204 No Content\r\n\r\n");

        let (h, enc, keep) = head_of(
            Response::new(Body::full("x")),
            Method::GET,
            Version::HTTP_10,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n"
        );
        assert_eq!((enc, keep), (Encoding::Length(1), true));
    }

    /// Serving over real sockets: a server on an ephemeral loopback port whose handler is
    /// `handler`, every connection served by [`serve`].
    mod served {
        use std::net::SocketAddr;
        use std::time::Duration;

        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        use super::*;
        use crate::http::server::link::CONTINUE;

        fn limits(header_read_timeout: Duration) -> Limits {
            Limits {
                header_read_timeout,
                max_header_bytes: 8192,
                timer: CoarseTimer::default(),
            }
        }

        async fn start<F, Fut>(timeout: Duration, handler: F) -> SocketAddr
        where
            F: Fn(Request<Body>) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Response<Body>> + Send + 'static,
        {
            let handler = move |req: BoxedRequest| Box::pin(handler(*req));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let handler = handler.clone();
                    tokio::spawn(serve(
                        Conn::Tcp(stream),
                        BytesMut::new(),
                        Instant::now() + timeout,
                        limits(timeout),
                        CancellationToken::new(),
                        handler,
                        |_| {},
                    ));
                }
            });
            addr
        }

        /// Answers with what arrived: method, target, body, and trailers as `t-*` headers.
        async fn echo(req: Request<Body>) -> Response<Body> {
            let (parts, body) = req.into_parts();
            let collected = match body.collect().await {
                Ok(c) => c,
                Err(e) => return Response::new(Body::full(format!("body error: {e}"))),
            };
            let mut resp = Response::builder();
            if let Some(trailers) = collected.trailers() {
                for (name, value) in trailers {
                    resp = resp.header(format!("t-{name}"), value);
                }
            }
            let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
            resp.body(Body::full(format!("{} {} {body}", parts.method, parts.uri)))
                .unwrap()
        }

        /// Reads one response: its head, and its body by its content-length or chunks.
        async fn response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
            read_response(stream, pending, false).await
        }

        async fn read_response(
            stream: &mut TcpStream,
            pending: &mut Vec<u8>,
            head_request: bool,
        ) -> (String, String) {
            async fn more(stream: &mut TcpStream, pending: &mut Vec<u8>) {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "closed early; have {:?}",
                    String::from_utf8_lossy(pending)
                );
                pending.extend_from_slice(&chunk[..n]);
            }
            let end = loop {
                if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                more(stream, pending).await;
            };
            let head = String::from_utf8(pending.drain(..end).collect()).unwrap();
            let lower = head.to_ascii_lowercase();
            let body = if head_request {
                Vec::new()
            } else if let Some(at) = lower.find("content-length: ") {
                let n: usize = lower[at + 16..]
                    .split("\r\n")
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                while pending.len() < n {
                    more(stream, pending).await;
                }
                pending.drain(..n).collect()
            } else if lower.contains("transfer-encoding: chunked") {
                while !pending.windows(5).any(|w| w == b"0\r\n\r\n") {
                    more(stream, pending).await;
                }
                let end = pending.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
                pending.drain(..end).collect()
            } else {
                Vec::new()
            };
            (head, String::from_utf8(body).unwrap())
        }

        async fn closed(stream: &mut TcpStream) -> bool {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
                .await
                .is_ok_and(|r| r.is_ok())
        }

        #[tokio::test]
        async fn pipelined_requests_are_answered_in_order() {
            let addr = start(Duration::from_secs(5), echo).await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(
                b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\n\
                  POST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
                  POST /3 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n0\r\nx-sum: 9\r\n\r\n\
                  HEAD /4 HTTP/1.1\r\nhost: a\r\n\r\n\
                  GET /5 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut pending = Vec::new();
            let (h, b) = response(&mut c, &mut pending).await;
            assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
            assert_eq!(b, "GET /1 ");
            assert_eq!(response(&mut c, &mut pending).await.1, "POST /2 hello");
            let (h, b) = response(&mut c, &mut pending).await;
            assert_eq!(b, "POST /3 abc");
            assert!(
                h.contains("t-x-sum: 9\r\n"),
                "trailers reach the handler: {h}"
            );
            let (h, b) = read_response(&mut c, &mut pending, true).await;
            assert!(h.contains("content-length: 8\r\n"), "{h}");
            assert_eq!(b, "", "HEAD has a length but no body");
            let (h, b) = response(&mut c, &mut pending).await;
            assert!(h.contains("connection: close"), "{h}");
            assert_eq!(b, "GET /5 ");
            assert!(closed(&mut c).await, "then the connection closes");
        }

        #[tokio::test]
        async fn a_client_waiting_for_100_continue_gets_it_when_its_body_is_read() {
            let addr = start(Duration::from_secs(5), echo).await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(
                b"PUT /up HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
            )
            .await
            .unwrap();
            let mut interim = [0u8; CONTINUE.len()];
            c.read_exact(&mut interim).await.unwrap();
            assert_eq!(&interim[..], CONTINUE);
            c.write_all(b"data").await.unwrap();
            let (h, b) = response(&mut c, &mut Vec::new()).await;
            assert!(h.starts_with("HTTP/1.1 200 "), "{h}");
            assert_eq!(b, "PUT /up data");
        }

        #[tokio::test]
        async fn bad_heads_after_the_first_are_refused_with_the_error_header() {
            let addr = start(Duration::from_secs(5), echo).await;
            for (bad, status, reason) in [
                (&b"GET /x HTTP/1.1 junk\r\n\r\n"[..], "400", "bad-request"),
                (
                    b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                    "400",
                    "bad-request",
                ),
                (b"GET / HTTP/1.1\r\nx-big: ", "431", "header-too-large"),
            ] {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
                    .await
                    .unwrap();
                let mut pending = Vec::new();
                assert_eq!(response(&mut c, &mut pending).await.1, "GET /ok ");
                let mut next = bad.to_vec();
                if status == "431" {
                    next.resize(9000, b'a');
                }
                c.write_all(&next).await.unwrap();
                let (h, _) = response(&mut c, &mut pending).await;
                assert!(h.starts_with(&format!("HTTP/1.1 {status} ")), "{h}");
                assert!(h.contains(&format!("x-weft-error: {reason}\r\n")), "{h}");
                assert!(closed(&mut c).await);
            }
        }

        #[tokio::test]
        async fn a_partial_head_times_out_with_408_and_an_idle_connection_just_closes() {
            let addr = start(Duration::from_millis(300), echo).await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\nGET /slow HTTP/1.1\r\n")
                .await
                .unwrap();
            let mut pending = Vec::new();
            assert_eq!(response(&mut c, &mut pending).await.1, "GET /ok ");
            let (h, _) = response(&mut c, &mut pending).await;
            assert!(h.starts_with("HTTP/1.1 408 "), "{h}");
            assert!(h.contains("x-weft-error: header-timeout\r\n"), "{h}");

            let mut idle = TcpStream::connect(addr).await.unwrap();
            idle.write_all(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            let mut pending = Vec::new();
            assert_eq!(response(&mut idle, &mut pending).await.1, "GET /ok ");
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
                .await
                .expect("the idle connection is closed")
                .unwrap();
            assert!(rest.is_empty(), "closed without a word: {rest:?}");
        }

        #[tokio::test]
        async fn a_client_that_leaves_cancels_its_request() {
            let (dropped_tx, dropped_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            struct Guard(tokio::sync::mpsc::UnboundedSender<()>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            let addr = start(Duration::from_secs(5), move |_req| {
                let guard = Guard(dropped_tx.clone());
                let _ = started_tx.send(());
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Response::new(Body::empty())
                }
            })
            .await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /forever HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            // Once the request is in the handler, the client goes.
            tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
                .await
                .expect("the request reached the handler");
            drop(c);
            let mut rx = dropped_rx;
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the request was cancelled");
        }

        #[tokio::test]
        async fn an_early_answer_drains_a_small_body_and_closes_after_a_large_one() {
            let addr = start(Duration::from_secs(5), |req: Request<Body>| async move {
                Response::new(Body::full(format!("early {}", req.uri())))
            })
            .await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"POST /small HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n0123456789GET /next HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            let mut pending = Vec::new();
            assert_eq!(response(&mut c, &mut pending).await.1, "early /small");
            assert_eq!(
                response(&mut c, &mut pending).await.1,
                "early /next",
                "kept alive"
            );

            let mut c = TcpStream::connect(addr).await.unwrap();
            let size = 4 << 20;
            let head = format!("POST /large HTTP/1.1\r\nhost: a\r\ncontent-length: {size}\r\n\r\n");
            c.write_all(head.as_bytes()).await.unwrap();
            let (mut r, mut w) = c.into_split();
            let sender = tokio::spawn(async move {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..size / chunk.len() {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            let mut all = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut all))
                .await
                .expect("the connection closes")
                .expect("with the response read whole, not reset");
            let text = String::from_utf8_lossy(&all);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("connection: close\r\n"), "{text}");
            assert!(text.ends_with("early /large"), "{text}");
            sender.abort();
        }

        #[tokio::test]
        async fn an_early_answer_to_a_client_waiting_for_100_continue_closes() {
            let addr = start(Duration::from_secs(30), |_req: Request<Body>| async move {
                Response::new(Body::full("no thanks"))
            })
            .await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(
                b"PUT /up HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
            )
            .await
            .unwrap();
            // The client never sends its body: it was not asked for it. The answer comes, and
            // the connection closes rather than wait for a body that may never come.
            let mut all = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all))
                .await
                .expect("closed without waiting for the body")
                .unwrap();
            let text = String::from_utf8_lossy(&all);
            assert!(
                text.starts_with("HTTP/1.1 200 OK\r\n"),
                "no 100 Continue first: {text}"
            );
            assert!(text.contains("connection: close\r\n"), "{text}");
            assert!(text.ends_with("no thanks"), "{text}");
        }

        #[tokio::test]
        async fn an_upgrade_hands_over_the_connection_with_what_followed_the_head() {
            let addr = start(
                Duration::from_secs(5),
                |mut req: Request<Body>| async move {
                    let on = req.extensions_mut().remove::<OnUpgrade>().unwrap();
                    tokio::spawn(async move {
                        let mut io = on.wait().await.unwrap();
                        let mut got = [0u8; 4];
                        io.read_exact(&mut got).await.unwrap();
                        io.write_all(&got).await.unwrap();
                        io.write_all(b"!").await.unwrap();
                    });
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(Body::empty())
                        .unwrap()
                },
            )
            .await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(
                b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nping",
            )
            .await
            .unwrap();
            let mut pending = Vec::new();
            let (h, _) = read_response(&mut c, &mut pending, true).await;
            assert!(h.starts_with("HTTP/1.1 101 "), "{h}");
            assert!(h.contains("upgrade: echo\r\n"), "{h}");
            while pending.len() < 5 {
                let mut b = [0u8; 16];
                let n = c.read(&mut b).await.unwrap();
                assert!(n > 0);
                pending.extend_from_slice(&b[..n]);
            }
            assert_eq!(&pending[..], b"ping!");
        }

        #[tokio::test]
        async fn http_1_0_closes_unless_kept_alive_and_streams_until_close() {
            let addr = start(Duration::from_secs(5), |req: Request<Body>| async move {
                if req.uri().path() == "/stream" {
                    let (tx, body) = channel_body();
                    tokio::spawn(async move {
                        for part in ["one ", "two"] {
                            let _ = tx
                                .send(http_body::Frame::data(Bytes::from_static(part.as_bytes())))
                                .await;
                        }
                    });
                    return Response::new(body);
                }
                Response::new(Body::full("fixed"))
            })
            .await;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(
                b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /stream HTTP/1.0\r\n\r\n",
            )
            .await
            .unwrap();
            let mut pending = Vec::new();
            let (h, b) = response(&mut c, &mut pending).await;
            assert!(h.contains("connection: keep-alive\r\n"), "{h}");
            assert_eq!(b, "fixed");
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            pending.extend_from_slice(&rest);
            let text = String::from_utf8(pending).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                !head.contains("content-length") && !head.contains("chunked"),
                "{head}"
            );
            assert_eq!(body, "one two", "the end of the connection ends the body");
        }

        /// A body fed through a channel, of unknown length.
        fn channel_body() -> (tokio::sync::mpsc::Sender<http_body::Frame<Bytes>>, Body) {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            (tx, Body::Channel(rx))
        }
    }
}
