//! The resilience decisions, as pure functions and small state machines with time passed in,
//! so that they are tested with tables and paused time, no sockets:
//!
//! - [`weighted`]: picking a backend by weight;
//! - [`retry`]: whether an attempt may be retried, and how long to back off;
//! - [`budget`]: the retry budget;
//! - [`breaker`]: an endpoint's circuit breaker and success-rate outlier detection;
//! - [`balance`]: picking an endpoint (P2C peak-EWMA, round robin, least request, hash ring);
//! - [`limits`]: the token bucket of the client-side rate limit;
//! - [`deadline`]: a future cut off at an optional deadline (request and attempt timeouts).
//!
//! [`crate::backends`] holds this state per backend and endpoint, and the outbound request
//! path drives it.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod limits;
pub mod retry;
pub mod weighted;
