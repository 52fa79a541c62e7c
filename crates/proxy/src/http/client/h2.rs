//! HTTP/2 to an upstream, on the `h2` crate: one connection per key, shared by every request
//! to it and driven by a task of its own.
//!
//! hyper's client puts a dispatcher between the requests and that connection: each request
//! crosses a channel to the dispatcher, which spawns a task to await the response and hands
//! it back through a oneshot channel. Here the request's own task opens the stream and awaits
//! the response itself; a task is spawned only for a request body that is still streaming
//! when the response is awaited ([`Pipe`]). Requests may carry any body type; the response
//! body is an [`H2Body`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

use crate::count::Counted;
use crate::errors::{BoxError, ProxyError, SendError};
use crate::io::Conn;

// Flow-control windows and limits, as hyper's client had them: the protocol's 64 KiB
// windows hold a fast stream back on any link with latency.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams opened before the server's SETTINGS say how many it takes (RFC 9113 section
/// 6.5.2 recommends servers allow at least 100).
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// A shared HTTP/2 connection to an upstream.
#[derive(Clone)]
pub struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    /// Cleared when the connection's task ends, and once the upstream's GOAWAY has said that
    /// it takes no more streams (its task goes on, for the streams it still finishes).
    open: Arc<AtomicBool>,
    /// Streams in use: each counted from its request until its response body ends or is
    /// dropped (a [`Counted`] place). h2 counts its own, behind its unstable feature, which also
    /// turns on assertions meant for its own tests.
    streams: Arc<AtomicUsize>,
    /// Whether the peer has answered the PING sent after the handshake: a connection is
    /// used once it has, so that a peer that accepts and never speaks HTTP/2 costs a
    /// connect failure (the request goes elsewhere), never a request that hangs.
    live: Arc<Liveness>,
}

/// The answer to the first PING: none yet (0), [`LIVE`] or [`DEAD`], and the requests that
/// wait for it.
#[derive(Default)]
struct Liveness {
    state: AtomicU8,
    known: tokio::sync::Notify,
}

const LIVE: u8 = 1;
const DEAD: u8 = 2;

impl Liveness {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.known.notify_waiters();
    }

    /// Whether the peer answered, once it is known.
    async fn answered(&self) -> bool {
        loop {
            let known = self.known.notified();
            match self.state.load(Ordering::Acquire) {
                LIVE => return true,
                DEAD => return false,
                _ => known.await,
            }
        }
    }
}

impl H2Conn {
    /// The HTTP/2 handshake on `stream`; the connection is then driven by a task that calls
    /// `closed` when it ends.
    ///
    /// The peer must answer a PING within `answer_within` (the connect timeout) before the
    /// connection carries requests.
    pub async fn handshake(
        stream: Conn,
        addr: SocketAddr,
        answer_within: std::time::Duration,
        closed: impl FnOnce() + Send + 'static,
    ) -> Result<H2Conn, h2::Error> {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false)
            // h2 closes a connection on which it reset more than 1,024 streams itself
            // (hyperium/h2#856). The proxy resets a stream when its client cancels (a gRPC
            // deadline, a closed download): those are its clients' doing, bounded by the guard
            // on their own connections, and must never tear down a connection that other
            // requests share.
            .max_local_error_reset_streams(None)
            .handshake::<_, Bytes>(stream)
            .await?;
        let open = Arc::new(AtomicBool::new(true));
        let live = Arc::new(Liveness::default());
        let ping = connection.ping_pong();
        let (driver, answer) = (open.clone(), live.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // The PING's answer is awaited while the connection is driven; requests wait for
            // it together (a round trip, once per connection).
            let mut ended = None;
            let answered = match ping {
                Some(mut ping) => {
                    let pong = tokio::time::timeout(answer_within, ping.ping(h2::Ping::opaque()));
                    tokio::select! {
                        pong = pong => matches!(pong, Ok(Ok(_))),
                        result = &mut connection => {
                            ended = Some(result);
                            false
                        }
                    }
                }
                None => true,
            };
            if !answered {
                driver.store(false, Ordering::Release);
            }
            answer.set(if answered { LIVE } else { DEAD });
            let result = match ended {
                Some(result) => result,
                None if answered => connection.await,
                None => {
                    tracing::info!(%addr, "upstream answered no HTTP/2 PING within {answer_within:?}; connection dropped");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
            driver.store(false, Ordering::Release);
            closed();
        });
        Ok(H2Conn {
            send,
            addr,
            open,
            streams: Arc::default(),
            live,
        })
    }

    /// Whether the connection takes no more requests (it ended, failed, or is going away): a
    /// new one is needed.
    pub fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// Whether the connection has room for another stream under its peer's
    /// `MAX_CONCURRENT_STREAMS`; beyond, h2 queues the stream until one ends.
    pub fn has_room(&self) -> bool {
        self.active_streams() < self.send.current_max_send_streams()
    }

    /// Streams in use on the connection.
    pub fn active_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Marks the connection as taking no more requests when `e` says it is going away or
    /// gone, so that the pool opens another for the next one.
    fn note(&self, e: &h2::Error) {
        if e.is_go_away() || e.is_io() {
            self.open.store(false, Ordering::Release);
        }
    }

    /// Sends `req` on a new stream and awaits the response head; its body (an [`H2Body`]) as
    /// the caller's body type `R`. The request comes back when the connection could not take
    /// it.
    pub async fn send<B, R>(&self, req: Box<Request<B>>) -> Result<Response<R>, SendError<B>>
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
        R: From<H2Body>,
    {
        let addr = self.addr;
        if self.live.state.load(Ordering::Acquire) != LIVE && !self.live.answered().await {
            return Err(SendError {
                error: ProxyError::Handshake {
                    addr,
                    source: "the upstream answered no HTTP/2 PING after the handshake".into(),
                },
                unsent: Some(req),
            });
        }
        let mut send = match self.send.clone().ready().await {
            Ok(send) => send,
            // Closed or going away: nothing was sent.
            Err(source) => {
                self.open.store(false, Ordering::Release);
                return Err(SendError {
                    error: ProxyError::Http2 {
                        addr,
                        source,
                        sent: false,
                    },
                    unsent: Some(req),
                });
            }
        };
        let slot = Counted::take(&self.streams);
        let (parts, body) = req.into_parts();
        let end = body.is_end_stream();
        let sent = |source: h2::Error| {
            self.note(&source);
            SendError {
                error: ProxyError::Http2 {
                    addr,
                    source,
                    sent: true,
                },
                unsent: None,
            }
        };
        let (response, stream) = send
            .send_request(Request::from_parts(parts, ()), end)
            .map_err(sent)?;
        // A body that is ready whole (a small one, or a replay) is sent here; the rest of one
        // still arriving is piped by a task of its own while the response is awaited.
        let mut cancel = None;
        if !end {
            let (tx, rx) = oneshot::channel();
            let mut pipe = Pipe {
                body,
                stream,
                cancel: Some(rx),
            };
            let done = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx))).await;
            if done.is_pending() {
                tokio::spawn(pipe);
                cancel = Some(CancelOnDrop(Some(tx)));
            }
        }
        let resp = response.await.map_err(sent)?;
        // From here the pipe finishes on its own, even if the response ends first.
        if let Some(mut cancel) = cancel {
            cancel.0.take();
        }
        let length = crate::http::h1::content_length(resp.headers())
            .ok()
            .flatten();
        Ok(resp.map(|recv| {
            R::from(H2Body {
                recv,
                length,
                data_done: false,
                _slot: slot,
            })
        }))
    }
}

/// Tells the request body's [`Pipe`] to reset the stream when the request is dropped before
/// its response arrived (the client went away, or the attempt timed out).
struct CancelOnDrop(Option<oneshot::Sender<()>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Streams a request body onto its HTTP/2 stream, as the peer's flow control allows.
struct Pipe<B> {
    body: B,
    stream: SendStream<Bytes>,
    cancel: Option<oneshot::Receiver<()>>,
}

impl<B> Future for Pipe<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(cancel) = &mut this.cancel {
                match Pin::new(cancel).poll(cx) {
                    Poll::Ready(Ok(())) => {
                        this.stream.send_reset(h2::Reason::CANCEL);
                        return Poll::Ready(());
                    }
                    // The response arrived: the body goes on to its end.
                    Poll::Ready(Err(_)) => this.cancel = None,
                    Poll::Pending => {}
                }
            }
            // Room for at least a byte before the next chunk is read; h2 holds what exceeds
            // the window, up to its send buffer, and sends it as the window opens.
            this.stream.reserve_capacity(1);
            if this.stream.capacity() == 0 {
                match ready!(this.stream.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    // Reset by the peer, or the connection ended.
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            }
            if let Poll::Ready(reason) = this.stream.poll_reset(cx) {
                tracing::debug!(?reason, "the upstream reset the stream of a request body");
                return Poll::Ready(());
            }
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // The client's body broke: the upstream must not take what it got as whole.
                    tracing::debug!(error = %e, "request body failed while streaming upstream");
                    this.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let end = this.body.is_end_stream();
                    if this.stream.send_data(data, end).is_err() || end {
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        this.stream.reserve_capacity(0);
                        let _ = this.stream.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

/// A response body arriving on an HTTP/2 stream. Each chunk read gives its room in the
/// flow-control window back to the upstream.
pub struct H2Body {
    recv: RecvStream,
    /// What is left of the `Content-Length`, if the response had one.
    length: Option<u64>,
    data_done: bool,
    _slot: Counted,
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.length {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    /// A client connection to an h2 server on an ephemeral port, whose streams `serve` gets.
    async fn connected<F, Fut>(serve: F) -> H2Conn
    where
        F: Fn(Request<RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((req, respond))) = conn.accept().await {
                tokio::spawn(serve(req, respond));
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        H2Conn::handshake(Conn::Tcp(tcp), addr, Duration::from_secs(5), || {})
            .await
            .unwrap()
    }

    /// Everything a request body carried: its data and its trailers.
    async fn read_all(mut body: RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        (data, body.trailers().await.unwrap())
    }

    /// A request body as a test sends it: none, one piece, or frames from a channel, of no
    /// known length.
    enum TestBody {
        Empty,
        Full(Option<Bytes>),
        Channel(tokio::sync::mpsc::Receiver<Frame<Bytes>>),
        /// Frames from a channel, then an error once the channel closes: a client that left
        /// in the middle of its body.
        Breaks(tokio::sync::mpsc::Receiver<Frame<Bytes>>),
    }

    impl http_body::Body for TestBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.get_mut() {
                TestBody::Empty => Poll::Ready(None),
                TestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
                TestBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(Ok)),
                TestBody::Breaks(rx) => rx
                    .poll_recv(cx)
                    .map(|o| Some(o.map(Ok).unwrap_or_else(|| Err("the client left".into())))),
            }
        }

        fn is_end_stream(&self) -> bool {
            match self {
                TestBody::Empty => true,
                TestBody::Full(data) => data.is_none(),
                TestBody::Channel(_) | TestBody::Breaks(_) => false,
            }
        }
    }

    fn request(body: TestBody) -> Box<Request<TestBody>> {
        Box::new(
            Request::post("http://upstream/echo")
                .version(http::Version::HTTP_2)
                .body(body)
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn bodies_and_trailers_cross_both_ways_beyond_the_flow_control_windows() {
        let conn = connected(|req, mut respond| async move {
            let (data, trailers) = read_all(req.into_body()).await;
            let resp = Response::builder()
                .header("content-length", data.len())
                .body(())
                .unwrap();
            let mut stream = respond.send_response(resp, false).unwrap();
            stream.send_data(Bytes::from(data), false).unwrap();
            let mut echoed = trailers.unwrap_or_default();
            echoed.insert("x-echoed", "yes".parse().unwrap());
            stream.send_trailers(echoed).unwrap();
        })
        .await;
        // Larger than the stream window (2 MiB), sent in chunks as a client would.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let total = 3 * 1024 * 1024 + 17;
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len());
                tx.send(Frame::data(chunk.slice(..n))).await.unwrap();
                left -= n;
            }
        });
        let resp = conn
            .send::<_, H2Body>(request(TestBody::Channel(rx)))
            .await
            .ok()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            http_body::Body::size_hint(resp.body()).exact(),
            Some(total as u64)
        );
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["x-echoed"], "yes");
        let data = collected.to_bytes();
        assert_eq!(data.len(), total);
        assert!(data.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn request_trailers_reach_the_upstream() {
        let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = connected(move |req, mut respond| {
            let seen = seen_tx.clone();
            async move {
                seen.send(read_all(req.into_body()).await).unwrap();
                let resp = Response::new(());
                respond.send_response(resp, true).unwrap();
            }
        })
        .await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Frame::data(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        tx.send(Frame::trailers(trailers)).await.unwrap();
        drop(tx);
        let resp = conn
            .send::<_, H2Body>(request(TestBody::Channel(rx)))
            .await
            .ok()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut seen_rx = seen_rx;
        let (data, trailers) = seen_rx.recv().await.unwrap();
        assert_eq!(data, b"abc");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_response_resets_its_stream() {
        for streaming in [false, true] {
            let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
            let conn = connected(move |req, mut respond| {
                let seen = seen_tx.clone();
                async move {
                    // Never answers: says the request arrived, then how its stream ended.
                    let _body = req.into_body();
                    seen.send(None).unwrap();
                    let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                    seen.send(reason.ok()).unwrap();
                }
            })
            .await;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let body = if streaming {
                // A body that has not ended: its stream is held by the task piping it too.
                tx.send(Frame::data(Bytes::from_static(b"x")))
                    .await
                    .unwrap();
                TestBody::Channel(rx)
            } else {
                TestBody::Empty
            };
            tokio::select! {
                _ = conn.send::<_, H2Body>(request(body)) => panic!("the upstream never answers"),
                arrived = seen_rx.recv() => assert_eq!(arrived, Some(None)),
            }
            // The send was dropped with the select.
            assert_eq!(
                seen_rx.recv().await,
                Some(Some(h2::Reason::CANCEL)),
                "streaming body: {streaming}"
            );
            drop(tx);
        }
    }

    #[tokio::test]
    async fn a_refused_stream_never_reached_the_app() {
        let conn = connected(|_req, mut respond| async move {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        })
        .await;
        let err = conn
            .send::<_, H2Body>(request(TestBody::Empty))
            .await
            .err()
            .unwrap();
        assert!(err.error.is_refused_stream(), "{}", err.error);
        assert!(err.error.never_reached_app());
        assert!(err.unsent.is_none(), "the head went out");
    }

    #[tokio::test]
    async fn a_closed_connection_hands_the_request_back_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // The handshake, then the connection is dropped.
            drop(h2::server::handshake(tcp).await.unwrap());
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (closed_tx, closed_rx) = oneshot::channel();
        let conn = H2Conn::handshake(Conn::Tcp(tcp), addr, Duration::from_secs(5), move || {
            let _ = closed_tx.send(());
        })
        .await
        .unwrap();
        closed_rx.await.unwrap();
        assert!(conn.is_closed());
        let err = conn
            .send::<_, H2Body>(request(TestBody::Full(Some(Bytes::from_static(b"kept")))))
            .await
            .err()
            .unwrap();
        assert!(err.error.never_reached_app(), "{}", err.error);
        let unsent = err.unsent.unwrap();
        assert_eq!(unsent.uri(), "http://upstream/echo");
    }

    /// A request body that breaks off makes the pipe reset the stream; the failure that comes
    /// back is the client's, not the upstream's (nor its breaker's business).
    #[tokio::test]
    async fn a_request_body_that_breaks_off_is_blamed_on_the_client() {
        let conn = connected(|req, _respond| async move {
            // Reads the body and never answers.
            let _ = read_all(req.into_body()).await;
            std::future::pending::<()>().await;
        })
        .await;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Frame::data(Bytes::from_static(b"part")))
            .await
            .unwrap();
        let sending = conn.send::<_, H2Body>(request(TestBody::Breaks(rx)));
        drop(tx);
        let err = sending.await.err().unwrap();
        assert_eq!(
            err.error.blame(),
            crate::errors::Blame::Downstream,
            "{}",
            err.error
        );
        assert!(!conn.is_closed(), "the connection serves on");
    }

    /// A server that answers stream 1 only, and on seeing stream 3 sends GOAWAY naming stream 1
    /// as the last it processes: a graceful close, as nginx makes every 1,000 requests.
    async fn going_away_server() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let len = payload.len() as u32;
            let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            tcp.read_exact(&mut preface).await.unwrap();
            tcp.write_all(&frame(4, 0, 0, &[])).await.unwrap();
            let mut seen = Vec::new();
            loop {
                let mut head = [0u8; 9];
                if tcp.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = (usize::from(head[0]) << 16)
                    | (usize::from(head[1]) << 8)
                    | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                tcp.read_exact(&mut payload).await.unwrap();
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                match head[3] {
                    // SETTINGS, not an ACK: acknowledged.
                    4 if head[4] & 1 == 0 => tcp.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
                    // PING: answered.
                    6 if head[4] & 1 == 0 => {
                        tcp.write_all(&frame(6, 1, 0, &payload)).await.unwrap()
                    }
                    // HEADERS.
                    1 => {
                        seen.push(stream);
                        if seen == [1, 3] {
                            // GOAWAY: last stream 1, NO_ERROR. Then stream 1's answer:
                            // `:status: 200` (HPACK static index 8), END_STREAM | END_HEADERS.
                            let mut goaway = 1u32.to_be_bytes().to_vec();
                            goaway.extend_from_slice(&0u32.to_be_bytes());
                            tcp.write_all(&frame(7, 0, 0, &goaway)).await.unwrap();
                            tcp.write_all(&frame(1, 0x5, 1, &[0x88])).await.unwrap();
                        }
                    }
                    _ => {}
                }
            }
        });
        addr
    }

    /// A peer that accepts the connection and never says a word: the request comes back
    /// unsent, as from a connect failure, once the PING goes unanswered.
    #[tokio::test]
    async fn a_peer_that_never_answers_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(tcp);
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let conn = H2Conn::handshake(Conn::Tcp(tcp), addr, Duration::from_millis(200), || {})
            .await
            .unwrap();
        let err = conn
            .send::<_, H2Body>(request(TestBody::Empty))
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.error.unsent(),
            Some(crate::policy::retry::Unsent::ConnectFailed),
            "{}",
            err.error
        );
        assert!(err.unsent.is_some(), "the request comes back");
        assert!(conn.is_closed());
    }

    /// The streams a GOAWAY refuses never reached the application, and are not the endpoint's
    /// failure; the one it names finishes; the connection takes no new requests.
    #[tokio::test]
    async fn streams_above_a_goaways_last_stream_never_reached_the_app() {
        use crate::policy::retry::Unsent;
        let addr = going_away_server().await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let conn = H2Conn::handshake(Conn::Tcp(tcp), addr, Duration::from_secs(5), || {})
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            conn.send::<_, H2Body>(request(TestBody::Empty)),
            conn.send::<_, H2Body>(request(TestBody::Empty)),
        );
        // Which of the two took stream 1 is the scheduler's choice.
        let (answered, err) = match (a, b) {
            (Ok(resp), Err(err)) | (Err(err), Ok(resp)) => (resp, err),
            (a, b) => panic!("one answered, one refused: {:?} {:?}", a.is_ok(), b.is_ok()),
        };
        assert_eq!(answered.status(), 200, "stream 1 is answered");
        assert_eq!(err.error.unsent(), Some(Unsent::GoAway), "{}", err.error);
        assert!(!Unsent::GoAway.is_failure());
        assert!(
            conn.is_closed(),
            "a going-away connection takes no new requests"
        );
        let third = conn
            .send::<_, H2Body>(request(TestBody::Empty))
            .await
            .err()
            .unwrap();
        assert!(
            third.unsent.is_some(),
            "nothing was sent on it: the request comes back"
        );
        assert_eq!(third.error.unsent(), Some(Unsent::ConnectionClosed));
    }
}
