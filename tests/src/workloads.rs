//! Test workloads: the applications behind the proxies. Each runs in-process on an address the
//! test chooses, or as the `weft-testbed` binary inside a network namespace.
//!
//! - [`HttpBackend`]: HTTP/1 and HTTP/2, with endpoints that echo, stream, count, hold until
//!   released, and describe the request they saw;
//! - [`tcp_echo`] and [`greeter`]: client-first and server-first opaque TCP;
//! - [`ws_echo`], a WebSocket server;
//! - [`grpc_echo`]: a tonic service;
//! - [`reset_before_response`], [`reset_mid_response`], [`h2_reset_mid_response`]: upstreams
//!   that fail on purpose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// What an [`HttpBackend`] has seen.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Requests to `/hold` waiting for release.
    pub held: AtomicUsize,
    /// Bytes read from request bodies by `/count`.
    pub body_bytes: AtomicU64,
    /// When not 0, every request but `/head` is answered with this status.
    pub fail_with: std::sync::atomic::AtomicU16,
    /// Milliseconds every answer waits before it is sent: a slow endpoint.
    pub delay_ms: AtomicU64,
    /// `x-request-id`s seen by `/flaky`, which fails each one's first attempt.
    pub seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Bodies of requests received, in order (kept for `/record`).
    pub recorded: std::sync::Mutex<Vec<(String, String)>>,
}

/// An HTTP/1 and HTTP/2 test server.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub stats: Arc<Stats>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpBackend {
    /// Serves on `addr` (port 0 picks one). Every response carries `x-served-by: <name>`.
    pub async fn start(addr: SocketAddr, name: &str) -> HttpBackend {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding backend {name} on {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let (release, released) = watch::channel(false);
        let task = tokio::spawn(serve_http(
            listener,
            name.to_owned(),
            stats.clone(),
            released,
        ));
        HttpBackend {
            addr,
            name: name.to_owned(),
            stats,
            release,
            task,
        }
    }

    /// Lets every held request (and every later one) complete.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn held(&self) -> usize {
        self.stats.held.load(Ordering::SeqCst)
    }

    /// Makes every request but `/head` fail with `status` (0: succeed again).
    pub fn fail_with(&self, status: u16) {
        self.stats.fail_with.store(status, Ordering::SeqCst);
    }

    /// Makes every answer wait `delay` (zero: none).
    pub fn delay(&self, delay: Duration) {
        self.stats
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// `(path, body)` of every request to `/record...`.
    pub fn recorded(&self) -> Vec<(String, String)> {
        self.stats.recorded.lock().unwrap().clone()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP until the task is dropped; the body of [`HttpBackend::start`] and of
/// `weft-testbed http`.
pub async fn serve_http(
    listener: TcpListener,
    name: String,
    stats: Arc<Stats>,
    released: watch::Receiver<bool>,
) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let (name, stats, released) = (name.clone(), stats.clone(), released.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (name, stats, released) = (name.clone(), stats.clone(), released.clone());
                async move { Ok::<_, Infallible>(respond(&name, &stats, released, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn respond(
    name: &str,
    stats: &Stats,
    mut released: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<TestBody> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let delay = stats.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let path = req.uri().path().to_owned();
    let fail = stats.fail_with.load(Ordering::SeqCst);
    let mut resp = match path.as_str() {
        p if fail != 0 && p != "/head" => {
            let mut resp = Response::new(full(format!("failing with {fail}")));
            *resp.status_mut() =
                StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            resp
        }
        "/flaky" => {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let first = stats
                .seen
                .lock()
                .map(|mut seen| seen.insert(id))
                .unwrap_or(false);
            let mut resp = Response::new(full(if first { "first attempt fails" } else { "ok" }));
            if first {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }
        p if p.starts_with("/record") => {
            let uri = req.uri().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if let Ok(mut recorded) = stats.recorded.lock() {
                recorded.push((uri, String::from_utf8_lossy(&body).into_owned()));
            }
            Response::new(full("recorded"))
        }
        p if p == "/head" || p.starts_with("/head/") => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into(),
                    )
                })
                .collect();
            let head = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            Response::new(full(head.to_string()))
        }
        // The request body comes back as it went, trailers included.
        "/echo" => Response::new(req.into_body().map_err(BoxError::from).boxed()),
        "/count" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => n += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return Response::new(full(format!("body error after {n}: {e}"))),
                }
            }
            stats.body_bytes.fetch_add(n, Ordering::SeqCst);
            Response::new(full(n.to_string()))
        }
        "/hold" => {
            stats.held.fetch_add(1, Ordering::SeqCst);
            let _ = released.wait_for(|r| *r).await;
            Response::new(full("released"))
        }
        p if p.starts_with("/drip/") => {
            // A long response: 1 KiB every 20 ms.
            let n: u64 = p["/drip/".len()..].parse().unwrap_or(0);
            static KIB: [u8; 1024] = [b'd'; 1024];
            let stream = futures_util::stream::unfold(0, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(&KIB))),
                    i + 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse().unwrap_or(0);
            Response::new(stream_bytes(n))
        }
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..].parse().unwrap_or(500);
            let mut resp = Response::new(full(format!("status {code}")));
            *resp.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            resp
        }
        _ => Response::new(full(name.to_owned())),
    };
    if let Ok(v) = HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}

/// `n` bytes in 64 KiB chunks that all share one buffer, so the backend itself stays small.
pub fn stream_bytes(n: u64) -> TestBody {
    static CHUNK: [u8; 65536] = [b'w'; 65536];
    let chunks = n.div_ceil(CHUNK.len() as u64);
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let len = (n - i * CHUNK.len() as u64).min(CHUNK.len() as u64) as usize;
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(&CHUNK[..len])))
    }));
    BodyExt::boxed(StreamBody::new(stream))
}

/// Accepts on `listener` and runs `f` per connection, until the task is dropped.
fn serve_tcp<F, Fut>(listener: TcpListener, f: F) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(f(stream));
            }
        }
    })
}

/// Echoes bytes until the client half-closes, then half-closes back.
pub async fn echo_conn(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

pub async fn tcp_echo(listener: TcpListener) -> JoinHandle<()> {
    serve_tcp(listener, echo_conn)
}

/// A server-first protocol (like SMTP or MySQL): it greets before the client says anything,
/// then echoes.
pub async fn greeter(listener: TcpListener, banner: &'static str) -> JoinHandle<()> {
    serve_tcp(listener, move |mut stream| async move {
        if stream.write_all(banner.as_bytes()).await.is_ok() {
            echo_conn(stream).await;
        }
    })
}

/// A WebSocket server that echoes every message.
pub async fn ws_echo(listener: TcpListener) -> JoinHandle<()> {
    serve_tcp(listener, |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    })
}

/// Reads a request head, then resets the connection without answering.
pub async fn reset_before_response(listener: TcpListener) -> JoinHandle<()> {
    serve_tcp(listener, |mut stream| async move {
        read_head(&mut stream).await;
        reset(stream);
    })
}

/// Answers with a head promising 1000 bytes, sends 10, then resets.
pub async fn reset_mid_response(listener: TcpListener) -> JoinHandle<()> {
    serve_tcp(listener, |mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
        let _ = stream.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        reset(stream);
    })
}

/// An HTTP/2 server whose streams send a head and some data, then `RST_STREAM`.
pub async fn h2_reset_mid_response(listener: TcpListener) -> JoinHandle<()> {
    serve_tcp(listener, |stream| async move {
        let Ok(mut conn) = h2::server::handshake(stream).await else {
            return;
        };
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let Ok(mut send) = respond.send_response(Response::new(()), false) else {
                    return;
                };
                let _ = send.send_data(Bytes::from_static(b"partial"), false);
                tokio::time::sleep(Duration::from_millis(50)).await;
                send.send_reset(h2::Reason::INTERNAL_ERROR);
            });
        }
    })
}

async fn read_head(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers one request with a keep-alive response, then closes the connection (as a server
/// whose idle timeout is short does). Counts the connections it accepted in `accepted`.
pub async fn close_after_response(
    listener: TcpListener,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> JoinHandle<()> {
    serve_tcp(listener, move |mut stream| {
        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            read_head(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            let _ = stream.shutdown().await;
        }
    })
}

/// Closes with RST rather than FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

pub mod grpc {
    //! The tonic test service.
    tonic::include_proto!("weft.test");
}

/// The gRPC echo service, served over HTTP/2 by hyper.
pub async fn grpc_echo(listener: TcpListener) -> JoinHandle<()> {
    use grpc::echo_server::EchoServer;
    serve_tcp(listener, |stream| async move {
        let svc = hyper_util::service::TowerToHyperService::new(EchoServer::new(GrpcEcho));
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
}

#[derive(Debug, Clone, Copy)]
struct GrpcEcho;

type ReplyStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<grpc::EchoReply, tonic::Status>> + Send>>;

fn failure(code: i32) -> tonic::Status {
    let mut status = tonic::Status::new(
        tonic::Code::from(code),
        format!("failed on request with code {code}"),
    );
    status
        .metadata_mut()
        .insert("x-failure-detail", "requested".parse().expect("ascii"));
    status
}

#[tonic::async_trait]
impl grpc::echo_server::Echo for GrpcEcho {
    async fn unary(
        &self,
        req: tonic::Request<grpc::EchoRequest>,
    ) -> Result<tonic::Response<grpc::EchoReply>, tonic::Status> {
        let req = req.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms.unsigned_abs().into())).await;
        }
        if req.fail_with != 0 {
            return Err(failure(req.fail_with));
        }
        Ok(tonic::Response::new(grpc::EchoReply {
            message: req.message,
            index: 0,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: tonic::Request<grpc::StreamRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, tonic::Status> {
        let req = req.into_inner();
        let replies = (0..req.count).map({
            let message = req.message.clone();
            move |index| {
                Ok(grpc::EchoReply {
                    message: message.clone(),
                    index,
                })
            }
        });
        let end = (req.fail_with != 0).then(|| Err(failure(req.fail_with)));
        let delay = Duration::from_millis(req.delay_ms.unsigned_abs().into());
        let stream = futures_util::StreamExt::then(
            futures_util::stream::iter(replies.chain(end).enumerate()),
            move |(i, item)| async move {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                item
            },
        );
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}
