//! `weft-proxy`: the sidecar data plane.
//!
//! # Layout
//! The connection path reads top-down: [`app`] binds the listeners and accepts; [`outbound`]
//! and [`inbound`] decide where each connection goes ([`orig_dst`], [`detect`],
//! [`transport_header`], [`state`]); HTTP is served and forwarded by [`http`] over pooled
//! connections that [`upstream`] opens (mutual TLS in [`mesh_tls`]); anything else is spliced
//! by [`tcp`]. [`admin`] serves the admin API (the app's own probes included); [`metrics`],
//! [`telemetry`], [`traces`] and [`access_log`] observe. Beside `run`, [`init`] installs a
//! pod's iptables rules and [`wait`] holds an app until its proxy is ready.
//!
//! # Layers
//! From the top. A module uses only modules of its own layer or of the layers below it, and
//! no files use each other around a circle (`tests/house.rs` checks both):
//!
//! 1. wiring: [`app`], [`admin`], [`cli`], [`init`], [`wait`], and the fuzz targets
//!    [`fuzzing`]
//! 2. the two directions: [`outbound`], [`inbound`], [`tcp`], [`config_client`]
//! 3. what every connection task holds: [`shared`]
//! 4. the config in force: [`state`], [`backends`], [`authz`], [`routing`], [`filters`],
//!    [`cors`]
//! 5. HTTP: [`http`]
//! 6. connections: [`upstream`], [`mesh_tls`], [`detect`], [`transport_header`], [`orig_dst`]
//! 7. identity: [`identity`], [`grpc`]
//! 8. foundations: [`io`], [`errors`], [`metrics`], [`policy`], [`map`], [`count`],
//!    [`settings`], [`telemetry`], [`traces`], [`access_log`]
//!
//! Invariant: below layer 4 nothing knows the config; below layer 3 nothing holds the shared
//! state; [`policy`] is pure decisions with time passed in, and does no I/O.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod authz;
pub mod backends;
pub mod cli;
pub mod config_client;
pub mod cors;
pub mod count;
pub mod detect;
pub mod errors;
pub mod filters;
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod map;
pub mod mesh_tls;
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
pub mod traces;
pub mod transport_header;
pub mod upstream;
pub mod wait;
