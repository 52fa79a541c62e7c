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

pub mod body;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod replay;
pub mod server;
pub mod timer;
