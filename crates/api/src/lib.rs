//! `weft-api`: the vocabulary shared by the data plane and the control plane.
//!
//! # Layout
//! - [`config`]: the compiled proxy configuration, the immutable snapshot that a proxy runs on.
//!   The control plane produces it per proxy; `weft-proxy run --config FILE` reads the same
//!   format from a file.
//! - [`duration`]: the Gateway API duration syntax (`1h30m`, `250ms`), used by flags and
//!   manifests alike.
//! - [`gateway`]: Gateway API value types (matches, header modifiers, URL rewrites) shared by
//!   manifests and the compiled config.
//! - [`identity`]: SPIFFE IDs, reading them from certificates, and the certificate checks of
//!   mesh connections (pure crypto: rustls with ring, x509-parser).
//! - [`probes`]: the app's own probes, as the injector hands them to the proxy for
//!   `/app-health`.
//! - [`proto`]: the config stream between the control plane and the proxies (gRPC, compiled
//!   by protox at build time).
//! - [`resources`]: the manifests operators apply (Service, Pod, EndpointSlice, HTTPRoute,
//!   GRPCRoute, BackendPolicy): parsing with `file:document:field` errors, and checks.
//! - [`sync`]: the poison-tolerant lock helper both binaries share.
//! - [`validate`]: problems collected with their field paths.
//!
//! # Layers
//! From the top. A module uses only modules of its own layer or of the layers below it, and
//! no files use each other around a circle (`tests/house.rs` checks both):
//!
//! 1. manifests: [`resources`]
//! 2. the compiled config: [`config`]
//! 3. values: [`gateway`], [`duration`], [`identity`], [`probes`], [`proto`], [`validate`],
//!    [`sync`], and the fuzz target of the wire messages, [`fuzzing`]
//!
//! Invariant: this crate knows nothing about tokio, sockets or processes. It is plain data,
//! parsing and validation, and the generated protocol types and service traits (tonic's
//! `codegen` only, no transport), so that both binaries and the tests can depend on it cheaply.

pub mod config;
pub mod duration;
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod probes;
pub mod proto;
pub mod resources;
pub mod sync;
pub mod validate;

/// The content type of both binaries' `/metrics`: prometheus-client writes OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
