//! `weft-control`: the control plane and the operator's CLI.
//!
//! # Layout
//! - [`demo`]: `weft demo`, the mesh on loopback, with its sample workloads in
//!   [`demo::app`].
//!
//! Invariant: `weft-control` never depends on `weft-proxy`. The two share only `weft-api`;
//! `weft demo` starts proxies as processes, as a cluster would.

pub mod demo;
