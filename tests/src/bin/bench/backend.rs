//! The backend behind every target: a minimal hyper server, HTTP/1 and HTTP/2, run as
//! `weft-bench backend ADDR`. `/` answers "ok" at once and `/slow` after two seconds; a gRPC
//! call gets one empty message and `grpc-status: 0`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub(crate) async fn backend(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let grpc = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                if grpc {
                    // A unary gRPC answer: one empty message, then `grpc-status: 0` trailers.
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames = futures_util::stream::iter([
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(&[
                            0, 0, 0, 0, 0,
                        ]))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ]);
                    let mut resp = Response::new(http_body_util::StreamBody::new(frames).boxed());
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    return Ok::<_, Infallible>(resp);
                }
                Ok(Response::new(
                    Full::new(Bytes::from_static(b"ok"))
                        .map_err(|e| match e {})
                        .boxed(),
                ))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
