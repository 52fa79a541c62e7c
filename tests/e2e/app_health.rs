//! `GET /app-health/<container>/<kind>`: the app's own probes, run by the proxy against the
//! pod's address (what an injected pod's kubelet probes reach): HTTP, HTTPS, TCP and gRPC
//! health, passing and failing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use weft_tests::mesh::Mesh;
use weft_tests::paths::bin_path;
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

/// A gRPC server whose `grpc.health.v1.Health/Check` answers `status` (1 SERVING, 2
/// NOT_SERVING), with grpc-status in the trailers.
async fn health_server(addr: SocketAddr, status: Arc<AtomicU8>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let status = status.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let status = status.load(Ordering::SeqCst);
                    async move {
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                            if path == "/grpc.health.v1.Health/Check" {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                vec![
                                    Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                                    Ok(Frame::trailers(trailers)),
                                ]
                            } else {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "12".parse().unwrap());
                                vec![Ok(Frame::trailers(trailers))]
                            };
                        let body =
                            http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                        let mut resp = Response::new(body);
                        resp.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// An HTTPS server with a self-signed certificate, answering 204.
async fn https_server(addr: SocketAddr) {
    let cert = rcgen::generate_simple_self_signed(vec!["app.internal".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(weft_api::identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = http::StatusCode::NO_CONTENT;
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn app_probes_run_through_the_proxy_against_the_pods_address() {
    let ip = pod_ip();
    let app = HttpBackend::start(at(ip, 8080), "app").await;
    let serving = Arc::new(AtomicU8::new(1));
    health_server(at(ip, 9090), serving.clone()).await;
    https_server(at(ip, 8443)).await;
    let probes = json!({
        "web/readiness": {"httpGet": {"port": 8080, "path": "/record/healthz",
                          "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]}},
        "web/liveness": {"tcpSocket": {"port": 8080}},
        "api/readiness": {"grpc": {"port": 9090, "service": "shop.Api"}, "timeoutSeconds": 2},
        "tls/startup": {"httpGet": {"port": 8443, "path": "/", "scheme": "HTTPS"}},
        "gone/liveness": {"tcpSocket": {"port": 1}},
    })
    .to_string();
    let proxy = Proxy::start(ip, &Mesh::new("probes").build(), &["--app-probes", &probes]).await;

    let get = |path: &'static str| {
        let proxy = &proxy;
        async move { proxy.admin_get(path).await.unwrap() }
    };
    assert_eq!(
        get("/app-health/web/readiness").await,
        (200, "HTTP 200\n".into())
    );
    assert_eq!(
        app.recorded().len(),
        1,
        "the probe reached the app's own path"
    );
    assert_eq!(get("/app-health/web/liveness").await.0, 200);
    assert_eq!(
        get("/app-health/api/readiness").await,
        (200, "SERVING\n".into())
    );
    assert_eq!(
        get("/app-health/tls/startup").await,
        (200, "HTTP 204\n".into())
    );

    app.fail_with(503);
    let (status, body) = get("/app-health/web/readiness").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("HTTP 503 from"), "{body}");
    serving.store(2, Ordering::SeqCst);
    let (status, body) = get("/app-health/api/readiness").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "the health service says NOT_SERVING\n")
    );
    let (status, body) = get("/app-health/gone/liveness").await;
    assert_eq!(status, 503);
    assert!(body.contains("connecting to"), "{body}");
    assert_eq!(get("/app-health/nobody/readiness").await.0, 404);

    // A probe list the proxy cannot read stops it at start, saying why.
    let out = std::process::Command::new(bin_path("weft-proxy"))
        .args([
            "run",
            "--config",
            "/nonexistent",
            "--app-probes",
            r#"{"web": {"tcpSocket": {"port": 1}}}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--app-probes") && stderr.contains("<container>/<kind>"),
        "{stderr}"
    );
}
