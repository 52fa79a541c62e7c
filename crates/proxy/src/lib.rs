//! `weft-proxy`: the sidecar data plane.
//!
//! # Layout
//! The connection path reads top-down:
//! [`app`] binds the listeners and accepts; [`outbound`] and [`inbound`] decide where each
//! connection goes ([`orig_dst`], [`detect`], [`transport_header`], [`state`]); HTTP is served
//! and forwarded by [`http`] over pooled connections from [`upstream`]; anything else is
//! spliced by [`tcp`]. [`admin`] serves the admin API, [`metrics`] and [`telemetry`] observe.
//!
//! Lower layers ([`detect`], [`transport_header`], [`io`], [`errors`], [`metrics`],
//! [`upstream`], [`http`]) know nothing of the config or of each other's callers; [`outbound`]
//! and [`inbound`] wire them together, and [`app`] wires those.

pub mod admin;
pub mod app;
pub mod authz;
pub mod backends;
pub mod cli;
pub mod config_client;
pub mod detect;
pub mod errors;
pub mod filters;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod routing;
pub mod settings;
pub mod shared;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod transport_header;
pub mod upstream;

/// A hash map for the per-request lookups (Service by host, pooled connections by endpoint).
/// Its keys come from the config, never from a client, so it trades SipHash's resistance to
/// chosen keys for speed; the seed is still random per process.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
