//! The admin HTTP API (SPEC section 6): probes, metrics, the config in force, the log filter,
//! and drain.
//!
//! It runs on its own listener and keeps answering while the proxy drains, so that `/ready`
//! can say 503 until the process exits. Calls that change anything are refused unless they
//! come from a loopback address.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

mod app_health;

use crate::http::body::Body;
use crate::shared::Shared;
use crate::telemetry::LogHandle;

pub struct Admin {
    pub shared: Arc<Shared>,
    pub log: LogHandle,
}

/// Serves the admin API until the process exits.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

impl Admin {
    async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
        if mutating && !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
            return text(
                StatusCode::FORBIDDEN,
                "admin changes are accepted only from loopback\n",
            );
        }
        match (req.method().clone(), req.uri().path()) {
            (Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (Method::GET, "/ready") => self.ready(),
            (Method::GET, "/metrics") => {
                let snapshot = self.shared.state.load();
                let now = tokio::time::Instant::now();
                let text = self
                    .shared
                    .metrics
                    .encode_with(snapshot.backends().iter().map(|b| b.gauges(now)));
                let mut resp = Response::new(Body::full(text));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(weft_api::OPENMETRICS_CONTENT_TYPE),
                );
                resp
            }
            (Method::GET, "/config_dump") => json_response(&self.config_dump()),
            (Method::GET, "/clusters") => json_response(&self.clusters()),
            (Method::GET, "/certs") => match &self.shared.identity {
                Some(identity) => json_response(&identity.describe()),
                None => json_response(
                    &json!({"spiffeId": null, "certified": false, "note": "no CA configured (--trust-anchor)"}),
                ),
            },
            (Method::GET, "/log-level") => text(StatusCode::OK, &format!("{}\n", self.log.get())),
            (Method::PUT, "/log-level") => self.set_log_level(req).await,
            (Method::POST, "/drain") => {
                tracing::info!(%peer, "drain requested through the admin API");
                self.shared.shutdown.cancel();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            (Method::GET, "/") => self.index(),
            (Method::GET, path) if path.starts_with("/app-health/") => {
                self.app_health(&path["/app-health/".len()..]).await
            }
            (
                _,
                "/live" | "/ready" | "/metrics" | "/config_dump" | "/clusters" | "/certs"
                | "/log-level" | "/drain" | "/",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Runs the app's probe named `<container>/<kind>`: 200 when it passes, 503 with why not.
    async fn app_health(&self, key: &str) -> Response<Body> {
        let settings = &self.shared.settings;
        let Some(probe) = settings.app_probes.get(key) else {
            return text(StatusCode::NOT_FOUND, &format!("no app probe {key}\n"));
        };
        let pod_ip = settings
            .pod_ip
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        match app_health::run(probe, pod_ip).await {
            Ok(passed) => text(StatusCode::OK, &format!("{passed}\n")),
            Err(why) => {
                tracing::debug!(probe = key, %why, "app probe failed");
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n"))
            }
        }
    }

    fn ready(&self) -> Response<Body> {
        if self.shared.shutdown.is_cancelled() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if self.shared.is_ready() {
            text(StatusCode::OK, "ready\n")
        } else if self
            .shared
            .identity
            .as_ref()
            .is_some_and(|i| !i.is_certified())
        {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for a certificate\n",
            )
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for a first config\n",
            )
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let snapshot = self.shared.state.load();
        let s = &self.shared.settings;
        json!({
            "version": &*snapshot.version,
            "listeners": {
                "outbound": s.outbound_addr.to_string(),
                "inbound": s.inbound_addr.to_string(),
                "admin": s.admin_addr.to_string(),
            },
            "settings": s,
            "updatedAt": crate::telemetry::rfc3339(snapshot.built_at),
            "config": snapshot.config,
        })
    }

    fn clusters(&self) -> serde_json::Value {
        let snapshot = self.shared.state.load();
        let now = tokio::time::Instant::now();
        let backends: Vec<_> = snapshot
            .backends()
            .iter()
            .map(|b| b.describe(now))
            .collect();
        json!({ "version": &*snapshot.version, "backends": backends, "pools": self.shared.pools.stats() })
    }

    async fn set_log_level(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "filter too long\n"),
        };
        let filter = String::from_utf8_lossy(&body).trim().to_owned();
        match self.log.set(&filter) {
            Ok(()) => {
                tracing::info!(%filter, "log filter changed");
                text(StatusCode::OK, &format!("{filter}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        }
    }

    /// The live page: one self-contained document whose script refreshes it every second
    /// from `/config_dump`, `/clusters` and `/certs`, with no external asset.
    fn index(&self) -> Response<Body> {
        let mut resp = Response::new(Body::full(Bytes::from_static(PAGE.as_bytes())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

const PAGE: &str = include_str!("admin/page.html");

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::full(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Body::full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
