//! Mutual TLS between proxies, both directions in one place: the client handshake to a peer
//! proxy, which must present exactly the identity the config names for the endpoint, and the
//! server handshake on the inbound port, which reads the client's SPIFFE ID. Both are TLS 1.3
//! with ALPN `weft/1`, bounded in time, counted in `weft_proxy_tls_handshakes_total` by
//! result, and logged with their reason when they fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::errors::ProxyError;
use crate::identity::{Identity, MESH_ALPN};
use crate::io::Rewind;
use crate::metrics::{Direction, Metrics};

/// Opens mesh TLS on `stream` to the peer proxy at `addr`, which must present `expected`.
pub async fn connect(
    identity: &Arc<Identity>,
    expected: &str,
    addr: SocketAddr,
    stream: TcpStream,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<client::TlsStream<TcpStream>, ProxyError> {
    let tls = |reason: &'static str, detail: String| ProxyError::Tls {
        addr,
        reason,
        detail,
    };
    let config = identity
        .client_config(expected, MESH_ALPN)
        .map_err(|e| tls("config", e.to_string()))?;
    let name = ServerName::try_from("weft-mesh").map_err(|e| tls("config", e.to_string()))?;
    let connecting = TlsConnector::from(config).connect(name, stream);
    let result = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(tls(failure_reason(&e), e.to_string())),
        Err(_) => Err(tls(
            "timeout",
            format!("no TLS handshake within {timeout:?}"),
        )),
    };
    metrics.handshake(
        Direction::Outbound,
        match &result {
            Ok(tls) => Ok(tls_version(tls.get_ref().1.protocol_version())),
            Err(e) => Err(e.tls_reason()),
        },
    );
    if let Err(e) = &result {
        tracing::warn!(%addr, %expected, error = %e, "mesh TLS handshake failed");
    }
    result
}

/// A mesh TLS connection accepted on the inbound port, and the SPIFFE ID of the client's
/// certificate when it presented one.
pub struct Accepted {
    pub stream: server::TlsStream<Rewind<TcpStream>>,
    pub peer_identity: Option<Arc<str>>,
}

/// Terminates mesh TLS on `io` (whose first bytes, read to detect TLS, it replays) from the
/// client at `client`. `None` when the handshake failed or timed out; the failure is counted
/// and logged, and the caller closes the connection.
pub async fn accept(
    identity: &Arc<Identity>,
    io: Rewind<TcpStream>,
    client: SocketAddr,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<Accepted> {
    let config = match identity.server_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no TLS server config");
            return None;
        }
    };
    let handshake = tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(io)).await;
    match handshake {
        Ok(Ok(stream)) => {
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let peer_identity = match presented.map(|c| peer_identity(identity, c.as_ref())) {
                None => None,
                Some(Ok(id)) => Some(Arc::from(id)),
                // Chained to the trust anchors, but not a workload of this mesh: refused as a
                // certificate for the wrong identity is.
                Some(Err(e)) => {
                    metrics.handshake(Direction::Inbound, Err("identity-mismatch"));
                    tracing::info!(%client, reason = "identity-mismatch", error = %e, "mesh TLS handshake refused");
                    return None;
                }
            };
            metrics.handshake(
                Direction::Inbound,
                Ok(tls_version(stream.get_ref().1.protocol_version())),
            );
            Some(Accepted {
                stream,
                peer_identity,
            })
        }
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            metrics.handshake(Direction::Inbound, Err(reason));
            tracing::info!(%client, reason, error = %e, "mesh TLS handshake refused");
            None
        }
        Err(_) => {
            metrics.handshake(Direction::Inbound, Err("timeout"));
            tracing::info!(%client, "mesh TLS handshake timed out");
            None
        }
    }
}

/// The SPIFFE ID of a client's certificate, which must name a workload of this proxy's trust
/// domain.
fn peer_identity(identity: &Identity, cert: &[u8]) -> Result<String, String> {
    let id = weft_api::identity::spiffe_id_of(cert).map_err(|e| e.to_string())?;
    let parsed = weft_api::identity::SpiffeId::parse(&id).map_err(|e| e.to_string())?;
    if parsed.trust_domain != identity.id.trust_domain {
        return Err(format!(
            "{id} is not of the trust domain {}",
            identity.id.trust_domain
        ));
    }
    Ok(id)
}

/// The reason a handshake failed (`unknown-ca`, `identity-mismatch`, ...), from the error
/// tokio-rustls reports.
fn failure_reason(e: &std::io::Error) -> &'static str {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or("handshake", weft_api::identity::failure_reason)
}

/// The label for a negotiated TLS version.
fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    }
}
