//! Reaching an endpoint: how it is dialled ([`Dial`]), opening the connection ([`Connector`]:
//! TCP, and to a peer proxy mutual TLS and the transport header), the key connections are
//! pooled by ([`Key`]), and a backend's limits on its connections ([`ConnLimiter`] and the
//! [`ConnectionPermit`] each connection holds).
//!
//! Nothing here speaks HTTP: the pools and exchanges above (`http::client`) do.
//!
//! Opening a connection is boxed ([`Connector::connect`]): its state (a TLS handshake among
//! it) is large, and every future that may connect (each request's, each opaque
//! connection's) would otherwise carry it even when, as usual, a pooled connection serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::errors::ProxyError;
use crate::identity::Identity;
use crate::io::Conn;
use crate::metrics::Metrics;
use crate::transport_header::{self, Header};

/// How to reach an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dial {
    /// Connect to the address itself.
    Direct(SocketAddr),
    /// Connect to the weft proxy in front of the endpoint and ask it for `port`. When this
    /// proxy has an identity and the peer takes mesh TLS (`identity` is set), the connection
    /// is mutual TLS and the peer must present exactly `identity`.
    Peer {
        proxy: SocketAddr,
        port: u16,
        identity: Option<Arc<str>>,
    },
}

impl Dial {
    /// To `addr` through the sidecar in front of it, listening on `inbound_port`; with mesh
    /// TLS when `identity` names what the sidecar must present.
    pub fn through_sidecar(
        addr: SocketAddr,
        inbound_port: u16,
        identity: Option<Arc<str>>,
    ) -> Dial {
        Dial::Peer {
            proxy: SocketAddr::new(addr.ip(), inbound_port),
            port: addr.port(),
            identity,
        }
    }

    /// The address the TCP connection goes to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Dial::Direct(addr) => *addr,
            Dial::Peer { proxy, .. } => *proxy,
        }
    }
}

/// What pooled connections are kept by: how the endpoint is dialled, and whether the
/// connection speaks HTTP/2. Never a config object, so that a config swap keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub dial: Dial,
    pub http2: bool,
}

/// Opens upstream connections.
#[derive(Clone)]
pub struct Connector {
    pub connect_timeout: Duration,
    /// With an identity, connections to meshed peers are mutual TLS.
    pub identity: Option<Arc<Identity>>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Connector {
    /// Connects, and to a peer proxy: with TLS when this proxy has an identity, then the
    /// transport header that says what follows. Boxed: see the module docs.
    pub async fn connect(
        &self,
        dial: &Dial,
        protocol: transport_header::Protocol,
    ) -> Result<Conn, ProxyError> {
        Box::pin(self.open(dial, protocol)).await
    }

    async fn open(
        &self,
        dial: &Dial,
        protocol: transport_header::Protocol,
    ) -> Result<Conn, ProxyError> {
        let addr = dial.addr();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
                Err(_) => {
                    return Err(ProxyError::ConnectTimeout {
                        addr,
                        timeout: self.connect_timeout,
                    });
                }
            };
        crate::io::tune(&stream);
        let Dial::Peer {
            port,
            identity: expected,
            ..
        } = dial
        else {
            return Ok(Conn::Tcp(stream));
        };
        // Plaintext when this proxy has no identity, or the peer's policy disables mesh TLS.
        let mut conn = match (&self.identity, expected) {
            (Some(identity), Some(expected)) => Conn::TlsClient(Box::new(
                crate::mesh_tls::connect(
                    identity,
                    expected,
                    addr,
                    stream,
                    self.connect_timeout,
                    &self.metrics,
                )
                .await?,
            )),
            _ => Conn::Tcp(stream),
        };
        let mut header = BytesMut::new();
        Header {
            port: *port,
            protocol,
        }
        .encode(&mut header);
        conn.write_all(&header)
            .await
            .map_err(|source| ProxyError::Connect { addr, source })?;
        Ok(conn)
    }
}

/// Holds a place under the backend's `maxConnections` for as long as a connection lives.
pub struct ConnectionPermit(
    #[allow(dead_code, reason = "held for its Drop")] Option<OwnedSemaphorePermit>,
);

impl ConnectionPermit {
    /// The permit of a backend without a connection limit.
    pub fn unlimited() -> ConnectionPermit {
        ConnectionPermit(None)
    }
}

/// Limits on a backend's upstream connections: at most `max` open, and at most `max_pending`
/// requests waiting `timeout` for one.
pub struct ConnLimiter {
    permits: Arc<Semaphore>,
    /// Told when a connection closed or went back to its pool, so that a request waiting for
    /// room can take it.
    pub freed: Notify,
    max: u32,
    max_pending: usize,
    pending: AtomicUsize,
    timeout: Duration,
}

impl ConnLimiter {
    pub fn new(max: u32, max_pending: usize, timeout: Duration) -> ConnLimiter {
        ConnLimiter {
            permits: Arc::new(Semaphore::new(max as usize)),
            freed: Notify::new(),
            max,
            max_pending,
            pending: AtomicUsize::new(0),
            timeout,
        }
    }

    /// Whether this limiter enforces these limits (a config swap keeps it when they are
    /// unchanged).
    pub fn is_for(&self, max: u32, max_pending: usize, timeout: Duration) -> bool {
        self.max == max && self.max_pending == max_pending && self.timeout == timeout
    }

    /// Joins the queue of requests waiting for a connection, if it has room.
    fn enqueue(self: &Arc<Self>) -> Option<PendingGuard> {
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PendingGuard(self.clone()))
    }

    /// Requests waiting for a connection.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// A request's place in the queue for a connection, until dropped.
struct PendingGuard(Arc<ConnLimiter>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A permit to open one more connection to a backend. Without a limit, an unlimited permit;
/// at the limit, the request waits its turn in a bounded queue, and is refused as
/// `overloaded` (naming `backend`) when the queue is full or the wait too long. `Ok(None)`
/// means a connection was freed meanwhile (an idle one may be back in its pool).
pub async fn connection_permit(
    limiter: Option<&Arc<ConnLimiter>>,
    backend: &Arc<str>,
) -> Result<Option<ConnectionPermit>, ProxyError> {
    let Some(limiter) = limiter else {
        return Ok(Some(ConnectionPermit::unlimited()));
    };
    if let Ok(permit) = limiter.permits.clone().try_acquire_owned() {
        return Ok(Some(ConnectionPermit(Some(permit))));
    }
    let overloaded = || ProxyError::Overloaded(backend.clone());
    let Some(_queued) = limiter.enqueue() else {
        return Err(overloaded());
    };
    let wait = async {
        tokio::select! {
            permit = limiter.permits.clone().acquire_owned() => permit.ok().map(|p| ConnectionPermit(Some(p))),
            () = limiter.freed.notified() => None,
        }
    };
    tokio::time::timeout(limiter.timeout, wait)
        .await
        .map_err(|_| overloaded())
}

/// A permit for a new connection, waiting on when a connection is freed instead (for callers
/// that cannot use an idle one).
pub async fn new_connection_permit(
    limiter: Option<&Arc<ConnLimiter>>,
    backend: &Arc<str>,
) -> Result<ConnectionPermit, ProxyError> {
    loop {
        if let Some(permit) = connection_permit(limiter, backend).await? {
            return Ok(permit);
        }
    }
}
