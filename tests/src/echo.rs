//! The echo application of the Gateway API conformance tests, and a client for it. Every
//! request is answered 200 with what arrived (method, path and query, host, protocol, every
//! header) and who answered (pod and namespace), as JSON. A gRPC call (`application/grpc`) is
//! answered the same JSON as its one message, with `grpc-status: 0` in the trailers.
//!
//! The pod listens where the conformance suite's does: HTTP on 8080 and gRPC on 7070 (both
//! take HTTP/1.1 and HTTP/2 prior knowledge).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client;
use crate::workloads::{BoxError, TestBody};

/// The ports an echo pod serves.
pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 7070;

/// An echo application on a pod address; it stops when dropped.
pub struct EchoApp {
    pub ip: IpAddr,
    /// Requests answered, on both ports.
    pub requests: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl EchoApp {
    /// Serves as pod `<namespace>/<pod>` on `ip`, ports 8080 and 7070.
    pub async fn start(ip: IpAddr, namespace: &str, pod: &str) -> EchoApp {
        let mut tasks = Vec::new();
        let requests = Arc::new(AtomicUsize::new(0));
        for port in [HTTP_PORT, GRPC_PORT] {
            let addr = SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("binding echo {pod} on {addr}: {e}"));
            tasks.push(tokio::spawn(serve(
                listener,
                namespace.to_owned(),
                pod.to_owned(),
                requests.clone(),
            )));
        }
        EchoApp {
            ip,
            requests,
            tasks,
        }
    }
}

async fn serve(listener: TcpListener, namespace: String, pod: String, requests: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (namespace, pod, requests) = (namespace.clone(), pod.clone(), requests.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (namespace, pod) = (namespace.clone(), pod.clone());
                requests.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Infallible>(answer(req, &namespace, &pod).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What the echo application saw of a request.
#[derive(Debug, Clone, Deserialize)]
pub struct Echoed {
    pub pod: String,
    pub namespace: String,
    pub method: String,
    /// Path and query as they arrived.
    pub path: String,
    /// The Host header, or the HTTP/2 authority.
    pub host: String,
    pub proto: String,
    /// Each header by its lowercase name, its values joined with `,` (as the suite compares
    /// them).
    pub headers: BTreeMap<String, String>,
}

impl Echoed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

async fn answer(req: Request<Incoming>, namespace: &str, pod: &str) -> Response<TestBody> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let echoed = serde_json::json!({
        "pod": pod,
        "namespace": namespace,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        "host": host,
        "proto": format!("{:?}", req.version()),
        "headers": headers,
    })
    .to_string();
    // The whole request is read, so that the connection can carry the next one.
    let _ = req.into_body().collect().await;
    if !grpc {
        return Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(client::body(echoed))
            .unwrap_or_default();
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(grpc_frame(echoed.as_bytes()))),
        Ok(Frame::trailers(trailers)),
    ]);
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
        .unwrap_or_default()
}

/// A gRPC length-prefixed message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// An answer as a client of a proxy got it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// `grpc-status`, from the trailers (or the headers of a trailers-only answer).
    pub grpc_status: Option<String>,
    /// What the echo application saw; `None` when something else answered (the proxy).
    pub echoed: Option<Echoed>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The pod that answered, or `-` when none did.
    pub fn pod(&self) -> &str {
        self.echoed.as_ref().map_or("-", |e| e.pod.as_str())
    }
}

/// Sends `method url` with `headers` through the proxy listening on `proxy`, as HTTP/1.1 in
/// absolute form (an application with `http_proxy=`), on a new connection.
pub async fn http(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let mut conn = client::http1(proxy).await?;
    let uri: http::Uri = url.parse()?;
    let mut req = Request::builder().method(method).uri(&uri);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"))
        && let Some(authority) = uri.authority()
    {
        req = req.header(http::header::HOST, authority.as_str());
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = conn.send_request(req.body(client::empty())?).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        grpc_status: None,
        echoed: serde_json::from_slice(&bytes).ok(),
        headers: parts.headers,
    })
}

/// One unary gRPC call to `authority` (`host:port`) with `metadata`, over HTTP/2 prior
/// knowledge through the proxy listening on `proxy`.
pub async fn grpc(
    proxy: SocketAddr,
    authority: &str,
    metadata: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let mut conn = client::http2(proxy).await?;
    let mut req = Request::post(format!("http://{authority}/conformance.Echo/Echo"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    for (name, value) in metadata {
        req = req.header(*name, *value);
    }
    let body = Full::new(grpc_frame(b"hello"))
        .map_err(|never| match never {})
        .boxed();
    let resp = conn.send_request(req.body(body)?).await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let echoed = bytes
        .get(5..)
        .and_then(|message| serde_json::from_slice(message).ok());
    Ok(Answer {
        status: parts.status.as_u16(),
        grpc_status,
        echoed,
        headers: parts.headers,
    })
}
