//! `weft-control`: the control plane and the operator's CLI.
//!
//! # Layout
//! - [`compile`]: from accepted manifests to one proxy's config.
//! - [`load`]: reading manifests from files and directories.
//! - [`demo`]: `weft demo`, the mesh on loopback, with its sample workloads in
//!   [`demo::app`].
//!
//! Invariant: `weft-control` never depends on `weft-proxy`. The two share only `weft-api`;
//! `weft demo` starts proxies as processes, as a cluster would.

pub mod compile;
pub mod demo;
pub mod load;
