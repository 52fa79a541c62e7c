//! Opaque TCP: a connection forwarded byte for byte, half-close included.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::splice;
use crate::metrics::Direction;
use crate::shared::Shared;
use crate::transport_header;
use crate::upstream::Dial;

/// Connects to `dial` and splices `io` with it until both sides close.
pub async fn forward<I>(shared: &Shared, direction: Direction, mut io: I, dial: Dial)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = match shared
        .pools
        .connector()
        .connect(&dial, transport_header::Protocol::Opaque)
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            shared.metrics.proxy_error(direction, e.reason());
            tracing::info!(direction = direction.as_str(), error = %e, "TCP connect failed; closing the client connection");
            return;
        }
    };
    match splice(&mut io, &mut upstream).await {
        Ok(moved) => shared
            .metrics
            .tcp_bytes(direction, moved.sent, moved.received),
        Err(e) => {
            tracing::debug!(direction = direction.as_str(), error = %e, "TCP connection ended with an error")
        }
    }
}
