//! HTTP proxying shared by both directions.
//!
//! - [`body`]: the one body type that flows through the proxy, streamed, never buffered whole.
//! - [`replay`]: a copy of a small request body, for retries and mirrors.
//! - [`headers`]: what a proxy must change in a message, and nothing else (hop-by-hop headers,
//!   request-target form).
//! - [`server`]: serving a detected HTTP/1 or HTTP/2 connection, with drain and the first
//!   request head checked so bad input gets a proper error.
//! - [`timer`]: the coarse timer behind the header-read deadline of keep-alive requests.
//! - [`forward`]: sending one request upstream through the pools, upgrades and CONNECT
//!   included.

pub mod body;
pub mod forward;
pub mod headers;
pub mod replay;
pub mod server;
pub mod timer;
