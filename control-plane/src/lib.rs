//! `weft-control`: the control plane and the operator's CLI.
//!
//! # Layout
//! - [`control`]: `weft control`: [`watch`] keeps the [`store`] in step with the manifest
//!   directory; every rebuild is published to the [`hub`], from which [`server`] streams each
//!   proxy its config; [`admin`] serves `/status` and `/metrics`; [`webhook`] injects pods
//!   the API server sends it.
//! - [`compile`]: from accepted manifests to one proxy's config.
//! - [`status`]: `weft status`.
//! - [`load`]: reading manifests from files and directories.
//! - [`store`]: the manifest store: files, the accepted set, last good versions, errors.
//! - [`route_status`]: a route's Gateway API conditions per Service parent, from its errors
//!   and unresolved references (written back in cluster mode, shown by `/status`).
//! - [`install`]: `weft install`, the manifests of `manifests/install/`.
//! - [`inject`]: `weft inject` and `weft uninject`, and the admission webhook's mutation.
//! - [`demo`]: `weft demo`, the mesh on loopback, with its sample workloads in
//!   [`demo::app`].
//!
//! # Layers
//! From the top. A module uses only modules of its own layer or of the layers below it, and
//! no files use each other around a circle (`tests/house.rs` checks both):
//!
//! 1. commands: [`control`], [`demo`], [`status`], [`crds`], [`install`], and the fuzz target [`fuzzing`]
//! 2. serving: [`server`], [`admin`], [`webhook`], [`tls`]
//! 3. manifest sources: [`cluster`], [`watch`], [`load`]
//! 4. manifests and configs: [`hub`], [`store`], [`compile`], [`route_status`], [`inject`]
//! 5. identity: [`ca`], [`token`]
//! 6. foundations: [`metrics`], [`telemetry`]
//!
//! Invariant: `weft-control` never depends on `weft-proxy`. The two share only `weft-api`;
//! `weft demo` starts proxies as processes, as a cluster would.

pub mod admin;
pub mod ca;
pub mod cluster;
pub mod compile;
pub mod control;
pub mod crds;
pub mod demo;
pub mod fuzzing;
pub mod hub;
pub mod inject;
pub mod install;
pub mod load;
pub mod metrics;
pub mod route_status;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod watch;
pub mod webhook;
