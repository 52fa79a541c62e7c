//! Reaching upstreams: the [`Connector`] opens TCP connections (through the peer proxy's
//! inbound port for meshed endpoints), and [`Pools`] keeps HTTP connections for reuse.
//!
//! Pools are keyed by how an endpoint is dialled and the HTTP version, not by any config
//! object, so they survive config swaps: a route edit does not drop warm connections to
//! endpoints that still exist. HTTP/1 connections are reused one request at a time (a
//! connection returns to the pool when its response body has been read to the end) and are
//! driven by the request that uses them ([`h1`]); an HTTP/2 connection is shared by all
//! requests to its key, and driven by a task of its own ([`http2`]).
//!
//! Sending is on every request's path, and its future is part of every request's future
//! (see `outbound::request` on why that size matters): the send functions return `async move`
//! blocks rather than being `async fn`s, which would keep the request twice, and opening a
//! connection is boxed, so that a send that reuses one carries no handshake state.

mod h1;
mod http2;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::FastMap;
use crate::backends::ConnLimiter;
use crate::errors::ProxyError;
use crate::http::BoxedRequest;
use crate::http::body::Body;
use crate::identity::{Identity, MESH_ALPN};
use crate::io::Conn;
use crate::metrics::Direction;
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
    /// The address the TCP connection goes to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Dial::Direct(addr) => *addr,
            Dial::Peer { proxy, .. } => *proxy,
        }
    }
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
    /// transport header that says what follows.
    ///
    /// The connecting state (a TLS handshake among it) is boxed: it is large, and every future
    /// that may connect (each request's, each opaque connection's) would otherwise carry it
    /// even when, as usual, a pooled connection serves.
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
                self.handshake(identity, expected, addr, stream).await?,
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

    async fn handshake(
        &self,
        identity: &Arc<Identity>,
        expected: &str,
        addr: SocketAddr,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
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
        let result = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                let reason = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map_or("handshake", weft_api::identity::failure_reason);
                Err(tls(reason, e.to_string()))
            }
            Err(_) => Err(tls(
                "timeout",
                format!("no TLS handshake within {:?}", self.connect_timeout),
            )),
        };
        self.metrics.handshake(
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
}

/// Set on an HTTP/1 request carried over HTTP/2 between proxies: the version the application
/// must receive (`HTTP/1.1` or `HTTP/1.0`).
pub static ORIG_PROTO_HEADER: http::HeaderName = http::HeaderName::from_static("x-weft-orig-proto");

/// The absolute URI an HTTP/1 request (origin form, with `Host`) takes over HTTP/2: the
/// authority from `Host`. `None` when `Host` is missing or unusable.
fn multiplexed_uri<B>(req: &Request<B>) -> Option<http::Uri> {
    let authority = req
        .headers()
        .get(http::header::HOST)?
        .to_str()
        .ok()?
        .parse::<http::uri::Authority>()
        .ok()?;
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    http::Uri::from_parts(parts).ok()
}

/// Readies an HTTP/1 request for HTTP/2 with `uri`; the original version goes in
/// [`ORIG_PROTO_HEADER`].
fn to_multiplexed<B>(req: &mut Request<B>, uri: http::Uri) {
    let orig = if req.version() == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    req.headers_mut().insert(
        ORIG_PROTO_HEADER.clone(),
        http::HeaderValue::from_static(orig),
    );
}

/// Undoes [`to_multiplexed`] for a request that was never sent.
fn from_multiplexed<B>(mut req: Request<B>, version: http::Version) -> Request<B> {
    req.headers_mut().remove(&ORIG_PROTO_HEADER);
    *req.version_mut() = version;
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = http::Uri::from(pq);
    }
    req
}

/// The version an HTTP/1 request carried over HTTP/2 by a peer proxy asked for, taking the
/// marker off. `None` for a request that was HTTP/2 to begin with.
pub fn restore_orig_proto<B>(req: &mut Request<B>) -> Option<http::Version> {
    let value = req.headers_mut().remove(&ORIG_PROTO_HEADER)?;
    let version = match value.as_bytes() {
        b"HTTP/1.0" => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    *req.version_mut() = version;
    Some(version)
}

/// How one request is sent.
#[derive(Clone, Default)]
pub struct SendOptions {
    /// False for upgrades and CONNECT, whose connection leaves HTTP: it cannot return to the
    /// pool, nor ride a peer's shared HTTP/2 connection.
    pub reuse: bool,
    /// The backend's connection limits, if it has any.
    pub limiter: Option<Arc<ConnLimiter>>,
    /// The backend's connect timeout, when it overrides the proxy's.
    pub connect_timeout: Option<Duration>,
    /// The backend, for errors.
    pub backend: Arc<str>,
}

impl SendOptions {
    pub fn reusable() -> SendOptions {
        SendOptions {
            reuse: true,
            ..SendOptions::default()
        }
    }
}

/// A failed send, with the request when it was never sent.
pub struct SendError {
    pub error: ProxyError,
    pub unsent: Option<BoxedRequest>,
}

impl SendError {
    fn unsent(error: ProxyError, req: BoxedRequest) -> SendError {
        SendError {
            error,
            unsent: Some(req),
        }
    }

    /// From hyper's error, which has the request when it was not sent.
    fn from_hyper(
        addr: SocketAddr,
        mut err: hyper::client::conn::TrySendError<Request<Body>>,
    ) -> SendError {
        let unsent = err.take_message().map(Box::new);
        SendError {
            error: ProxyError::Upstream {
                addr,
                source: err.into_error(),
            },
            unsent,
        }
    }
}

/// Holds a place under the backend's `maxConnections` for as long as a connection lives.
struct ConnectionPermit(
    #[allow(dead_code, reason = "held for its Drop")] Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Pool tuning.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Idle HTTP/1 connections older than this are closed rather than reused.
    pub idle_timeout: Duration,
    /// At most this many idle HTTP/1 connections are kept per key.
    pub max_idle_per_key: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    dial: Dial,
    http2: bool,
}

pub use h1::H1Body;
pub use http2::H2Body;

struct Idle {
    conn: h1::H1Conn,
    since: Instant,
}

type SharedH2 = Arc<tokio::sync::Mutex<Option<http2::H2Conn>>>;

/// Reusable upstream HTTP connections.
pub struct Pools {
    connector: Connector,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    http1: Mutex<FastMap<Key, Vec<Idle>>>,
    http2: Mutex<FastMap<Key, SharedH2>>,
}

/// A snapshot of one pool, for `/clusters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    pub addr: SocketAddr,
    pub peer_port: Option<u16>,
    pub http2: bool,
    pub idle: usize,
}

impl Pools {
    pub fn new(connector: Connector, settings: PoolSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Pools {
            connector,
            settings,
            metrics,
            http1: Mutex::new(FastMap::default()),
            http2: Mutex::new(FastMap::default()),
        })
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends a request and returns the response head. The request goes over HTTP/2 when its
    /// version says so and over HTTP/1 otherwise. On failure, the request comes back if it was
    /// never sent, so that it can be sent elsewhere as it is.
    ///
    /// Between proxies, HTTP/1 requests ride the peer's one multiplexed HTTP/2 connection
    /// instead of a connection each; [`ORIG_PROTO_HEADER`] tells the peer to restore HTTP/1
    /// for the application. Upgrades and CONNECT keep a connection of their own.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    pub fn send(
        self: &Arc<Self>,
        dial: Dial,
        mut req: BoxedRequest,
        opts: &SendOptions,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> {
        async move {
            let version = req.version();
            let multiplexed =
                version != http::Version::HTTP_2 && opts.reuse && matches!(dial, Dial::Peer { .. });
            let uri = if multiplexed {
                multiplexed_uri(&req)
            } else {
                None
            };
            if version != http::Version::HTTP_2 && uri.is_none() {
                return self.send_http1(Key { dial, http2: false }, req, opts).await;
            }
            if let Some(uri) = uri {
                to_multiplexed(&mut req, uri);
            }
            // One await of each protocol's send: the future holds the larger of the two, not a
            // copy per branch.
            let mut result = self.send_http2(Key { dial, http2: true }, req, opts).await;
            if version != http::Version::HTTP_2 {
                match &mut result {
                    Ok(resp) => *resp.version_mut() = version,
                    Err(e) => {
                        e.unsent = e
                            .unsent
                            .take()
                            .map(|r| Box::new(from_multiplexed(*r, version)))
                    }
                }
            }
            result
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    fn send_http1(
        self: &Arc<Self>,
        key: Key,
        mut req: BoxedRequest,
        opts: &SendOptions,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> {
        async move {
            if !opts.reuse {
                return Box::pin(self.send_upgrade(key, req, opts)).await;
            }
            loop {
                // Idle connections first; one the upstream had closed hands the request back
                // unsent, and the next one is tried. Without one, a new connection (boxed, so
                // that the request future holds no handshake).
                let (conn, reused) = match self.checkout_http1(&key) {
                    Some(conn) => (conn, true),
                    None => match Box::pin(self.open_http1(&key, opts)).await {
                        Ok(Some(conn)) => (conn, false),
                        // An idle connection came back while waiting for a permit: try it.
                        Ok(None) => continue,
                        Err(error) => return Err(SendError::unsent(error, req)),
                    },
                };
                let release = h1::Release {
                    pools: self.clone(),
                    key: key.clone(),
                };
                match h1::send(conn, req, reused, Some(release)).await {
                    Err(SendError {
                        unsent: Some(unsent),
                        ..
                    }) if reused => req = unsent,
                    result => return result,
                }
            }
        }
    }

    /// An upgrade or CONNECT: a connection of its own, with hyper's client, which hands the
    /// connection over once the upstream agrees.
    async fn send_upgrade(
        &self,
        key: Key,
        req: BoxedRequest,
        opts: &SendOptions,
    ) -> Result<Response<Body>, SendError> {
        let addr = key.dial.addr();
        let permit = match self.new_connection_permit(opts).await {
            Ok(permit) => permit,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        let stream = match self.connect(&key, opts).await {
            Ok(stream) => stream,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        let (mut sender, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(handshake) => handshake,
            Err(source) => {
                return Err(SendError::unsent(
                    ProxyError::Handshake {
                        addr,
                        source: source.into(),
                    },
                    req,
                ));
            }
        };
        let limiter = opts.limiter.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
            drop(permit);
            if let Some(l) = limiter {
                l.freed.notify_waiters();
            }
        });
        match sender.try_send_request(*req).await {
            Ok(resp) => Ok(resp.map(Body::Incoming)),
            Err(err) => Err(SendError::from_hyper(addr, err)),
        }
    }

    /// A new HTTP/1 connection for `key`, under the backend's connection limit; `None` when
    /// an idle connection came back while waiting for room.
    async fn open_http1(
        &self,
        key: &Key,
        opts: &SendOptions,
    ) -> Result<Option<h1::H1Conn>, ProxyError> {
        let Some(permit) = self.connection_permit(opts).await? else {
            return Ok(None);
        };
        let stream = self.connect(key, opts).await?;
        Ok(Some(h1::H1Conn::new(
            stream,
            key.dial.addr(),
            permit,
            opts.limiter.clone(),
        )))
    }

    /// A permit to open one more connection to the backend. Without a limit, an empty permit;
    /// at the limit, the request waits its turn in a bounded queue. `Ok(None)` means an idle
    /// connection was returned meanwhile.
    async fn connection_permit(
        &self,
        opts: &SendOptions,
    ) -> Result<Option<ConnectionPermit>, ProxyError> {
        let Some(limiter) = &opts.limiter else {
            return Ok(Some(ConnectionPermit(None)));
        };
        if let Ok(permit) = limiter.permits.clone().try_acquire_owned() {
            return Ok(Some(ConnectionPermit(Some(permit))));
        }
        let overloaded = || ProxyError::Overloaded(opts.backend.clone());
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

    /// A permit for a new connection, waiting on when an idle HTTP/1 connection comes back
    /// instead (for callers that cannot use one).
    async fn new_connection_permit(
        &self,
        opts: &SendOptions,
    ) -> Result<ConnectionPermit, ProxyError> {
        loop {
            if let Some(permit) = self.connection_permit(opts).await? {
                return Ok(permit);
            }
        }
    }

    fn checkout_http1(&self, key: &Key) -> Option<h1::H1Conn> {
        let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pools.get_mut(key)?;
        let now = Instant::now();
        while let Some(mut entry) = idle.pop() {
            if now.duration_since(entry.since) < self.settings.idle_timeout && entry.conn.is_open()
            {
                return Some(entry.conn);
            }
        }
        None
    }

    /// An HTTP/1 connection whose exchange is over, back to the pool; a request waiting for
    /// room under the backend's connection limit is told.
    fn checkin_http1(&self, key: Key, conn: h1::H1Conn) {
        let limiter = conn.limiter().cloned();
        {
            let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
            let idle = pools.entry(key).or_default();
            if idle.len() < self.settings.max_idle_per_key {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
        if let Some(l) = limiter {
            l.freed.notify_waiters();
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    fn send_http2(
        &self,
        key: Key,
        req: BoxedRequest,
        opts: &SendOptions,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> {
        async move {
            let ready = self.ready_http2(&key);
            let sender = match ready {
                Some(sender) => Ok(sender),
                // Connecting is boxed, so that the request future holds no handshake.
                None => Box::pin(self.http2_sender(&key, opts)).await,
            };
            match sender {
                Ok(sender) => sender.send(req).await,
                Err(error) => Err(SendError::unsent(error, req)),
            }
        }
    }

    /// The shared HTTP/2 connection for a key when it is open and nobody is connecting it.
    fn ready_http2(&self, key: &Key) -> Option<http2::H2Conn> {
        let pools = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        let slot = pools.get(key)?.try_lock().ok()?;
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The shared HTTP/2 connection for a key, connecting when there is none (or it closed).
    /// Concurrent first requests wait for one connection rather than each opening their own.
    async fn http2_sender(
        &self,
        key: &Key,
        opts: &SendOptions,
    ) -> Result<http2::H2Conn, ProxyError> {
        let slot = {
            let mut pools = self.http2.lock().unwrap_or_else(|p| p.into_inner());
            pools.entry(key.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let addr = key.dial.addr();
        let permit = self.new_connection_permit(opts).await?;
        let stream = self.connect(key, opts).await?;
        // No HTTP/2 PINGs: TCP keep-alive finds a vanished peer (`io::tune`).
        let limiter = opts.limiter.clone();
        let sender = http2::H2Conn::handshake(stream, addr, move || {
            drop(permit);
            if let Some(l) = limiter {
                l.freed.notify_waiters();
            }
        })
        .await
        .map_err(|source| ProxyError::Handshake {
            addr,
            source: source.into(),
        })?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, key: &Key, opts: &SendOptions) -> Result<Conn, ProxyError> {
        let protocol = if key.http2 {
            transport_header::Protocol::Http2
        } else {
            transport_header::Protocol::Http1
        };
        let connector = match opts.connect_timeout {
            Some(connect_timeout) => Connector {
                connect_timeout,
                ..self.connector.clone()
            },
            None => self.connector.clone(),
        };
        let result = connector.connect(&key.dial, protocol).await;
        self.metrics.upstream_connect(result.is_ok());
        result
    }

    /// Drops idle connections that timed out or closed, and empty pool entries, so pools of
    /// endpoints that left the config do not linger.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, idle| {
            idle.retain_mut(|e| {
                now.duration_since(e.since) < self.settings.idle_timeout && e.conn.is_open()
            });
            !idle.is_empty()
        });
        drop(pools);
        let mut pools = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, slot| match slot.try_lock() {
            Ok(sender) => sender.as_ref().is_some_and(|s| !s.is_closed()),
            Err(_) => true,
        });
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        let mut out = Vec::new();
        let stat = |key: &Key, idle: usize| PoolStats {
            addr: key.dial.addr(),
            peer_port: match &key.dial {
                Dial::Peer { port, .. } => Some(*port),
                Dial::Direct(_) => None,
            },
            http2: key.http2,
            idle,
        };
        for (key, idle) in self.http1.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push(stat(key, idle.len()));
        }
        for key in self.http2.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            out.push(stat(key, 1));
        }
        out.sort_by_key(|s| (s.addr, s.http2));
        out
    }
}

/// The label for a negotiated TLS version.
pub fn tls_version(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_over_http2_round_trips() {
        for version in [http::Version::HTTP_11, http::Version::HTTP_10] {
            let mut req = Request::get("/a?b=c")
                .version(version)
                .header("host", "reviews.shop:9080")
                .body(())
                .unwrap();
            let uri = multiplexed_uri(&req).unwrap();
            to_multiplexed(&mut req, uri);
            assert_eq!(req.uri(), "http://reviews.shop:9080/a?b=c");
            assert_eq!(req.version(), http::Version::HTTP_2);
            let mut arrived = req;
            assert_eq!(restore_orig_proto(&mut arrived), Some(version));
            assert!(arrived.headers().get(&ORIG_PROTO_HEADER).is_none());
            assert_eq!(arrived.version(), version);
            // A request that was never sent goes back to what it was.
            to_multiplexed(
                &mut arrived,
                "http://reviews.shop:9080/a?b=c".parse().unwrap(),
            );
            let back = from_multiplexed(arrived, version);
            assert_eq!(
                (back.uri().to_string(), back.version()),
                ("/a?b=c".to_owned(), version)
            );
        }
        let no_host = Request::get("/").body(()).unwrap();
        assert_eq!(multiplexed_uri(&no_host), None);
        let mut h2 = Request::get("http://x/").body(()).unwrap();
        assert_eq!(restore_orig_proto(&mut h2), None, "no marker, no change");
    }
}
