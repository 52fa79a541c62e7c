//! The demo's sample workload: an HTTP/1 and HTTP/2 server that says which service, version
//! and pod answered.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Who a sample workload is.
#[derive(Debug, Clone)]
pub struct Workload {
    pub service: &'static str,
    pub version: &'static str,
    pub pod: String,
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(addr: SocketAddr, who: Workload) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the demo app on {addr}: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let who = who.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let who = who.clone();
                    async move { Ok::<_, Infallible>(respond(&who, &req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn respond(who: &Workload, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "service": who.service,
        "version": who.version,
        "pod": who.pod,
        "path": req.uri().path(),
        "protocol": format!("{:?}", req.version()),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    let served_by = format!("{}-{}", who.service, who.version);
    if let Ok(v) = HeaderValue::from_str(&served_by) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}
