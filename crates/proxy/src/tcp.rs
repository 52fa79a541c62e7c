//! Opaque TCP: a connection forwarded byte for byte, half-close included.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::backends::{Backend, NoEndpoint};
use crate::errors::{ProxyError, Reason};
use crate::io::{Conn, splice};
use crate::metrics::Direction;
use crate::policy::breaker::Outcome;
use crate::shared::Shared;
use crate::transport_header;
use crate::upstream::Dial;

/// Connection attempts to a backend's endpoints before giving up: a failed connect sent
/// nothing, so another endpoint is always safe to try.
const CONNECT_ATTEMPTS: usize = 3;

/// Connects to `dial` and splices `io` with it until both sides close.
pub async fn forward<I>(shared: &Shared, direction: Direction, io: I, dial: Dial)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    match shared
        .pools
        .connector()
        .connect(&dial, transport_header::Protocol::Opaque)
        .await
    {
        Ok(upstream) => relay(shared, direction, io, upstream).await,
        Err(e) => connect_failed(shared, direction, &e),
    }
}

/// Forwards `io` to an endpoint of `backend`, trying others if connecting fails.
pub async fn to_backend<I>(shared: &Shared, direction: Direction, io: I, backend: &Backend)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut tried = Vec::new();
    let mut last = None;
    for _ in 0..CONNECT_ATTEMPTS {
        let picked = match backend.pick(&http::HeaderMap::new(), &tried, Instant::now()) {
            Ok(p) => p,
            Err(NoEndpoint::Empty) => {
                return refuse(
                    shared,
                    direction,
                    ProxyError::NoEndpoints(backend.name.0.clone()),
                );
            }
            Err(NoEndpoint::AllEjected) => {
                return refuse(
                    shared,
                    direction,
                    ProxyError::BreakerOpen(backend.name.0.clone()),
                );
            }
        };
        tried.push(picked.index);
        let connected = shared
            .pools
            .connector()
            .connect(&picked.endpoint.dial, transport_header::Protocol::Opaque)
            .await;
        let outcome = if connected.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        backend.record(picked.index, outcome, None, Instant::now(), &shared.metrics);
        match connected {
            // The endpoint stays picked (counted as outstanding) while the connection lasts.
            Ok(upstream) => return relay(shared, direction, io, upstream).await,
            Err(e) => {
                tracing::debug!(backend = &*backend.name.0, error = %e, "TCP connect failed; trying another endpoint");
                last = Some(e);
            }
        }
    }
    if let Some(e) = last {
        connect_failed(shared, direction, &e);
    }
}

async fn relay<I>(shared: &Shared, direction: Direction, mut io: I, mut upstream: Conn)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    match splice(&mut io, &mut upstream).await {
        Ok(moved) => shared
            .metrics
            .tcp_bytes(direction, moved.sent, moved.received),
        Err(e) => {
            tracing::debug!(direction = direction.as_str(), error = %e, "TCP connection ended with an error")
        }
    }
}

fn connect_failed(shared: &Shared, direction: Direction, e: &ProxyError) {
    shared.metrics.proxy_error(direction, Reason::ConnectFailed);
    tracing::info!(direction = direction.as_str(), error = %e, "TCP connect failed; closing the client connection");
}

fn refuse(shared: &Shared, direction: Direction, e: ProxyError) {
    shared.metrics.proxy_error(direction, e.reason());
    tracing::info!(direction = direction.as_str(), error = %e, "no endpoint for a TCP connection; closing it");
}
