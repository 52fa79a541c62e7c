//! The body type of every request and response the proxy handles, and the boxed request.
//!
//! [`Body`] sits above its variants: each is defined where it is read (a client's request
//! body by the server's link, an upstream's response body by the client exchange that reads
//! it, a recording by `replay`), and those that hold a body are generic over it, so none of
//! them knows this type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::errors::BoxError;
use crate::http::client::h1::H1Body;
use crate::http::client::h2::H2Body;
use crate::http::replay::{ReplayBody, TeeBody};
use crate::http::server::link::RequestBody;

/// A request, boxed from the moment the server has it (parsed from HTTP/1, or from hyper's
/// HTTP/2) until an upstream connection writes it. Each step on the way, from the server's
/// handler down to the exchange, is a future that keeps the place of every argument it was
/// given for its whole life: a request passed by value (272 bytes) was paid at every step, in
/// each request future's size and in a copy.
pub type BoxedRequest = Box<http::Request<Body>>;

/// A streamed message body: a request body from an HTTP/1 client, what arrived over HTTP/2
/// from a client (or an upgrade's answer), what an upstream HTTP/1 connection sends back
/// (which returns its connection to the pool when done), what an upstream sends back over
/// HTTP/2, a small body the proxy made, a request body recorded for a retry or replayed for
/// one, or a response body that must end by a deadline.
pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Downstream(RequestBody),
    Incoming(Incoming),
    Upstream(Box<H1Body<Body>>),
    Multiplexed(H2Body),
    Tee(TeeBody<Body>),
    /// Boxed: only a retry or a mirror replays, and every request and response carries a `Body`.
    Replay(Box<ReplayBody>),
    Deadline(Box<DeadlineBody>),
    /// Boxed: only an observed request's response (tracing or the access log on) is one.
    Observed(Box<ObservedBody>),
    /// Frames as a test sends them, of no known length.
    #[cfg(test)]
    Channel(tokio::sync::mpsc::Receiver<Frame<Bytes>>),
}

/// A body that fails if it has not ended by a deadline (the route's request timeout).
pub struct DeadlineBody {
    pub inner: Body,
    pub sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// A response body that reports, once, when it ended (or was dropped unfinished) and how many
/// bytes of data it carried: how a request's span and access log line learn their end.
pub struct ObservedBody {
    inner: Body,
    bytes: u64,
    on_end: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl ObservedBody {
    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a timeout of the route passed while the response body was streaming")]
pub struct BodyTimeout;

impl Body {
    pub fn empty() -> Self {
        Body::Empty
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    /// `inner`, calling `on_end` with its data bytes once it ends or is dropped.
    pub fn observed(inner: Body, on_end: impl FnOnce(u64) + Send + 'static) -> Self {
        Body::Observed(Box::new(ObservedBody {
            inner,
            bytes: 0,
            on_end: Some(Box::new(on_end)),
        }))
    }
}

impl From<Box<H1Body<Body>>> for Body {
    fn from(body: Box<H1Body<Body>>) -> Self {
        Body::Upstream(body)
    }
}

impl From<H2Body> for Body {
    fn from(body: H2Body) -> Self {
        Body::Multiplexed(body)
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Body::Incoming(body)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let boxed = |p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| {
            p.map(|o| o.map(|r| r.map_err(BoxError::from)))
        };
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Downstream(body) => Pin::new(body).poll_frame(cx),
            Body::Incoming(body) => boxed(Pin::new(body).poll_frame(cx)),
            Body::Upstream(body) => Pin::new(body.as_mut()).poll_frame(cx),
            Body::Multiplexed(body) => Pin::new(body).poll_frame(cx),
            Body::Tee(body) => Pin::new(body).poll_frame(cx),
            Body::Replay(body) => Pin::new(body.as_mut()).poll_frame(cx),
            Body::Deadline(d) => {
                if d.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Pin::new(&mut d.inner).poll_frame(cx)
            }
            Body::Observed(o) => {
                let polled = Pin::new(&mut o.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            o.bytes += data.len() as u64;
                        }
                    }
                    Poll::Ready(_) => o.finish(),
                    Poll::Pending => {}
                }
                polled
            }
            #[cfg(test)]
            Body::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(data) => data.is_none(),
            Body::Downstream(body) => body.is_end_stream(),
            Body::Incoming(body) => body.is_end_stream(),
            Body::Upstream(body) => body.is_end_stream(),
            Body::Multiplexed(body) => body.is_end_stream(),
            Body::Tee(body) => body.is_end_stream(),
            Body::Replay(body) => body.is_end_stream(),
            Body::Deadline(d) => d.inner.is_end_stream(),
            Body::Observed(o) => o.inner.is_end_stream(),
            #[cfg(test)]
            Body::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Downstream(body) => body.size_hint(),
            Body::Incoming(body) => body.size_hint(),
            Body::Upstream(body) => body.size_hint(),
            Body::Multiplexed(body) => body.size_hint(),
            Body::Tee(body) => body.size_hint(),
            Body::Replay(body) => body.size_hint(),
            Body::Deadline(d) => d.inner.size_hint(),
            Body::Observed(o) => o.inner.size_hint(),
            #[cfg(test)]
            Body::Channel(_) => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Empty => "Body::Empty",
            Body::Full(_) => "Body::Full",
            Body::Downstream(_) => "Body::Downstream",
            Body::Incoming(_) => "Body::Incoming",
            Body::Upstream(_) => "Body::Upstream",
            Body::Multiplexed(_) => "Body::Multiplexed",
            Body::Tee(_) => "Body::Tee",
            Body::Replay(_) => "Body::Replay",
            Body::Deadline(_) => "Body::Deadline",
            Body::Observed(_) => "Body::Observed",
            #[cfg(test)]
            Body::Channel(_) => "Body::Channel",
        })
    }
}
