//! HTTP proxying shared by both directions.
//!
//! - [`body`]: the one body type that flows through the proxy, streamed, never buffered whole.
//! - [`replay`]: a copy of a small request body, for retries and mirrors.
//! - [`headers`]: what a proxy must change in a message, and nothing else (hop-by-hop headers,
//!   request-target form).
//! - [`h1`]: HTTP/1.1 framing shared by the server and the upstream client.
//! - [`server`]: serving a detected HTTP/1 connection (in its own task) or HTTP/2 connection
//!   (with hyper), with drain, and bad input answered with a proper error.
//! - [`timer`]: the coarse timer behind the header-read deadline of keep-alive requests.
//! - [`forward`]: sending one request upstream through the pools, upgrades and CONNECT
//!   included.
//!
//! [`Spawner`] runs the tasks hyper's HTTP/2 server starts for each stream.

pub mod body;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod replay;
pub mod server;
pub mod timer;

/// A request, boxed from the moment the server has it (parsed from HTTP/1, or from hyper's
/// HTTP/2) until an upstream connection writes it. Each step on the way, from the server's
/// handler down to the exchange, is a future that keeps the place of every argument it was
/// given for its whole life: a request passed by value (272 bytes) was paid at every step, in
/// each request future's size and in a copy.
pub type BoxedRequest = Box<http::Request<body::Body>>;

/// The executor for hyper's HTTP/2 server: spawns each future boxed.
///
/// hyper spawns a task for every HTTP/2 stream, and tokio moves a task's whole stage when the
/// task finishes and when its output is taken: a large stream future is copied twice more.
/// Spawned boxed, what tokio moves is a pointer (callgrind, two hops with mTLS: 190
/// instructions per request less on the server side; 1,340 less on the client side, while
/// hyper's HTTP/2 client was still in use there).
#[derive(Clone, Copy, Debug, Default)]
pub struct Spawner;

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}
