//! HTTP proxying shared by both directions, from the bottom up:
//!
//! - [`h1`]: HTTP/1.1 framing shared by the server and the client, over any body type.
//! - [`headers`]: what a proxy must change in a message, and nothing else (hop-by-hop headers,
//!   request-target form).
//! - [`timer`]: the coarse timer behind the header-read deadline of keep-alive requests.
//! - [`replay`]: a copy of a small request body, for retries and mirrors.
//! - [`server::link`], [`client::h1`] and [`client::h2`]: the bodies that read from a
//!   connection (a client's request body; an upstream's HTTP/1 or HTTP/2 response body),
//!   generic over the body they write, if any.
//! - [`body`]: the one body type that flows through the proxy, made of the variants below it,
//!   streamed, never buffered whole; and [`body::BoxedRequest`].
//! - [`server`]: serving a detected HTTP/1 connection (in its own task) or HTTP/2 connection
//!   (with hyper), with drain, and the proxy's own answers with `x-weft-error`.
//! - [`client`]: the pools of upstream connections and the HTTP/1 and HTTP/2 exchanges.
//! - [`forward`]: sending one request upstream through the pools, upgrades and CONNECT
//!   included.
//!
//! Invariant: nothing here knows the config, routes or policies; a request arrives with where
//! to send it.

pub mod body;
pub mod client;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod replay;
pub mod server;
pub mod timer;
