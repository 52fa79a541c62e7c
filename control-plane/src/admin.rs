//! The control plane's HTTP admin API (15192): probes, metrics, and `/status`, which
//! `weft status` reads.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use weft_api::resources::{ManifestError, Resource, Subject};

use crate::hub::{Generation, Hub};
use crate::route_status::{self, RouteView};

/// Serves the admin API until `shutdown`.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&hub, peer, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(hub: &Hub, _peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
        (&Method::GET, "/ready") => {
            if hub.current().number > 0 {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "loading manifests\n".into(),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, hub.metrics.encode());
            // prometheus-client writes OpenMetrics text: read as the Prometheus format, its
            // counters' `_total` samples would lack their HELP and TYPE.
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(weft_api::OPENMETRICS_CONTENT_TYPE),
            );
            resp
        }
        (&Method::GET, "/status") => {
            let body = serde_json::to_vec_pretty(&status(hub)).unwrap_or_default();
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// What `weft status` shows.
pub fn status(hub: &Hub) -> serde_json::Value {
    let generation = hub.current();
    let proxies: Vec<serde_json::Value> = hub
        .proxies()
        .into_iter()
        .map(|p| {
            let current = generation.for_target(&p.target()).version.clone();
            let up_to_date = p.acked.as_deref() == Some(current.as_str());
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            v["current"] = json!(current);
            v["upToDate"] = json!(up_to_date);
            v["certificate"] = json!(hub.certificate_of(&p));
            v
        })
        .collect();
    json!({
        "generation": generation.number,
        "manifests": {
            "accepted": generation.accepted.len(),
            "errors": generation.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "unresolved": generation.unresolved.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "routes": routes(&generation),
        "proxies": proxies,
    })
}

/// Each accepted route's Gateway API conditions per Service parent, as cluster mode writes
/// them into the route's status.
fn routes(generation: &Generation) -> Vec<serde_json::Value> {
    let since = route_status::rfc3339(time::OffsetDateTime::from(generation.published));
    generation
        .accepted
        .iter()
        .filter_map(|m| {
            let (kind, parents) = match &m.resource {
                Resource::HttpRoute(r) => ("HTTPRoute", &r.spec.parent_refs),
                Resource::GrpcRoute(r) => ("GRPCRoute", &r.spec.parent_refs),
                _ => return None,
            };
            let key = m.resource.key();
            let ours = |e: &&ManifestError| e.subject == Subject::Resource(key.clone());
            let errors: Vec<&ManifestError> = generation.errors.iter().filter(ours).collect();
            let unresolved: Vec<&ManifestError> =
                generation.unresolved.iter().filter(ours).collect();
            let view = RouteView {
                generation: None,
                parent_refs: parents
                    .iter()
                    .filter_map(|p| serde_json::to_value(p).ok())
                    .collect(),
                status_parents: Vec::new(),
            };
            let meta = m.resource.meta();
            Some(json!({
                "kind": kind,
                "namespace": meta.namespace(),
                "name": meta.name,
                "parents": route_status::entries(&view, &errors, &unresolved, true, &since),
            }))
        })
        .collect()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
