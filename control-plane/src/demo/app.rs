//! The demo's sample workload: an HTTP/1 and HTTP/2 server that says which service, version
//! and pod answered, and that can be told to fail, to show what the mesh does about it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
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

/// A running workload.
pub struct App {
    pub who: Workload,
    failing: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    /// Answers 500 to everything while `fail` is set.
    pub fn set_failing(&self, fail: bool) {
        self.failing.store(fail, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves until the app is dropped.
pub async fn serve(addr: SocketAddr, who: Workload) -> anyhow::Result<App> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the demo app on {addr}: {e}"))?;
    let failing = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let state = (who.clone(), failing.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (who, failing, requests) = state.clone();
                    async move {
                        requests.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(
                            respond(&who, failing.load(Ordering::SeqCst), &req).await,
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(App {
        who,
        failing,
        requests,
        task,
    })
}

async fn respond(who: &Workload, failing: bool, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path().starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let body = serde_json::json!({
        "service": who.service,
        "version": who.version,
        "pod": who.pod,
        "path": req.uri().path(),
        "protocol": format!("{:?}", req.version()),
        // Set by this pod's sidecar from the caller's mesh certificate.
        "caller": req.headers().get("x-weft-peer-identity").and_then(|v| v.to_str().ok()),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    if failing {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    let served_by = format!("{}-{}", who.service, who.version);
    if let Ok(v) = HeaderValue::from_str(&served_by) {
        resp.headers_mut().insert("x-served-by", v);
    }
    resp
}
