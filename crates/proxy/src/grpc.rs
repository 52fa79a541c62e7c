//! The transport of the proxy's gRPC clients (the config stream and certificate signing):
//! tonic's generated clients call a tower `Service`, and [`Channel`] is one over a single
//! hyper HTTP/2 connection to the control plane, with no tonic transport.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2;

/// A gRPC transport over one hyper HTTP/2 connection.
#[derive(Clone)]
pub struct Channel(pub http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}
