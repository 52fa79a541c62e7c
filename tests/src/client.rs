//! Clients that talk to a proxy the way an application does: as to an HTTP proxy (absolute-
//! form requests, `http_proxy=`), or with HTTP/2 prior knowledge.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::workloads::TestBody;

pub fn body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    body(Bytes::new())
}

/// An HTTP/1.1 connection to `addr`.
pub async fn http1(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<TestBody>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// An HTTP/2 prior-knowledge connection to `addr`.
pub async fn http2(addr: SocketAddr) -> anyhow::Result<http2::SendRequest<TestBody>> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        // A client that cancels thousands of its own streams (a test of cancellations) must
        // not close its connection for it, as h2 does past 1,024 (hyperium/h2#856).
        .max_local_error_reset_streams(None)
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a whole response body.
pub async fn text(resp: Response<Incoming>) -> anyhow::Result<(u16, String)> {
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request on a new HTTP/1 connection to `addr` (a proxy, for an absolute `url`).
pub async fn request_text(
    addr: SocketAddr,
    method: &str,
    url: &str,
    body_text: &str,
) -> anyhow::Result<(u16, String)> {
    let mut sender = http1(addr).await?;
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(body(body_text.to_owned()))?;
    text(sender.send_request(req).await?).await
}

/// `GET url` through the proxy at `proxy`, returning the whole response.
pub async fn get(proxy: SocketAddr, url: &str) -> anyhow::Result<Response<Bytes>> {
    let mut sender = http1(proxy).await?;
    let resp = sender
        .send_request(Request::get(url).body(empty())?)
        .await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

/// The `x-served-by` header of a response.
pub fn served_by<B>(resp: &Response<B>) -> String {
    resp.headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub fn error_header<B>(resp: &Response<B>) -> String {
    resp.headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
