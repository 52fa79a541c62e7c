//! The demo's clients: requests sent through a sidecar as an application sends them, tallied
//! by who answered, and reads of the admin APIs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Sends requests continuously for `n` windows of `width`, counting each window's answers.
pub async fn windows(
    proxy: SocketAddr,
    n: usize,
    width: Duration,
) -> anyhow::Result<Vec<BTreeMap<String, usize>>> {
    let mut conn = http1(proxy).await?;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = Instant::now() + width;
        let mut tally = BTreeMap::new();
        while Instant::now() < end {
            conn.ready().await?;
            let resp = conn
                .send_request(
                    Request::get("http://reviews.shop:9080/reviews").body(Empty::<Bytes>::new())?,
                )
                .await?;
            let key = format!("{} {}", resp.status().as_u16(), served_by(&resp));
            resp.into_body().collect().await?;
            *tally.entry(key).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.push(tally);
    }
    Ok(out)
}

/// Sends `n` requests to reviews through the sidecar, counting answers by status and replier.
pub async fn send(
    proxy: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
    path: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut conn = http1(proxy).await?;
    let mut tally = BTreeMap::new();
    for _ in 0..n {
        conn.ready().await?;
        let mut req = Request::get(format!("http://reviews.shop:9080{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = conn.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let key = format!("{} {}", resp.status().as_u16(), served_by(&resp));
        resp.into_body().collect().await?;
        *tally.entry(key).or_insert(0) += 1;
    }
    Ok(tally)
}

pub fn show(tally: &BTreeMap<String, usize>, total: usize) {
    for (what, n) in tally {
        let bar = "#".repeat((n * 50).div_ceil(total.max(1)));
        println!("  {what:<18} {n:>4}  {bar}");
    }
}

pub async fn get_once(proxy: SocketAddr, url: &str) -> anyhow::Result<(u16, String)> {
    let (status, error, _) = call(proxy, Method::GET, url).await?;
    Ok((status, error))
}

/// One request: its status, `x-weft-error` and body.
pub async fn call(
    proxy: SocketAddr,
    method: Method,
    url: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut conn = http1(proxy).await?;
    let resp = conn
        .send_request(
            Request::builder()
                .method(method)
                .uri(url)
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let error = resp
        .headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, error, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends a good request on a new connection, then `bytes` (padded past the header limit when
/// it ends inside a header), and returns the status line and `x-weft-error` of the second
/// answer.
pub async fn raw_after_good_request(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            b"GET http://reviews.shop:9080/reviews HTTP/1.1\r\nHost: reviews.shop:9080\r\n\r\n",
        )
        .await?;
    let mut next = bytes.to_vec();
    if next.ends_with(b": ") {
        next.resize(70 * 1024, b'a');
    }
    // The first answer comes back before the second request is sent: a keep-alive exchange.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await??;
        if n == 0 {
            bail!("the proxy closed the connection after a good request");
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(&next).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await??;
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    let last = answers.last().copied().unwrap_or_default();
    let status = last.lines().next().unwrap_or_default().to_owned();
    let error = last
        .lines()
        .find_map(|l| l.strip_prefix("x-weft-error: "))
        .map(|e| format!(" (x-weft-error: {e})"))
        .unwrap_or_default();
    let closed = if answers.len() == 2 {
        ", then closed"
    } else {
        ""
    };
    Ok(format!("{status}{error}{closed}"))
}

pub async fn http1(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(addr).await?))
            .await?;
    tokio::spawn(conn);
    Ok(sender)
}

pub async fn http2(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(addr).await?),
    )
    .await?;
    tokio::spawn(conn);
    Ok(sender)
}

pub async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = http1(addr).await?;
    let resp = conn
        .send_request(
            Request::get(path)
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    Ok(String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned())
}

pub fn served_by<B>(resp: &http::Response<B>) -> String {
    resp.headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}
