//! The HTTP client: [`Pools`] of upstream connections, and the exchanges on them ([`h1`],
//! [`h2`]).
//!
//! Pools are keyed by how an endpoint is dialled and the HTTP version (`upstream::Key`), not
//! by any config object, so they survive config swaps: a route edit does not drop warm
//! connections to endpoints that still exist. HTTP/1 connections are reused one request at a
//! time (a connection returns to the pool, through [`h1::Checkin`], when its response body has
//! been read to the end) and are driven by the request that uses them; an HTTP/2 connection
//! is shared by all requests to its key, and driven by a task of its own.
//!
//! Between proxies, HTTP/1 requests ride the peer's one multiplexed HTTP/2 connection,
//! marked with [`ORIG_PROTO_HEADER`]; the peer restores them ([`restore_orig_proto`]).
//!
//! Sending is on every request's path, and its future is part of every request's future
//! (see `outbound::request` on why that size matters): the send functions return `async move`
//! blocks rather than being `async fn`s, which would keep the request twice, and opening a
//! connection is boxed, so that a send that reuses one carries no handshake state.

pub mod h1;
pub mod h2;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use weft_api::sync::lock;

use crate::errors::{ProxyError, SendError};
use crate::http::body::{Body, BoxedRequest};
use crate::io::Conn;
use crate::map::FastMap;
use crate::metrics::Metrics;
use crate::transport_header;
use crate::upstream::{
    ConnLimiter, Connector, Dial, Key, connection_permit, new_connection_permit,
};

/// Set by a server's sidecar on its own answer to a request that surely never reached its
/// application (it was not listening, say), naming how (`policy::retry::Unsent`): the
/// client's sidecar takes it as its own such failure, and sends the request elsewhere. Read
/// only on answers from a peer proxy, which removes it from its application's answers.
pub static UNSENT_HEADER: http::HeaderName = http::HeaderName::from_static("x-weft-unsent");

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

/// A failed send from hyper's client (upgrades and CONNECT), which has the request when it
/// was not sent.
fn from_hyper(
    addr: SocketAddr,
    mut err: hyper::client::conn::TrySendError<Request<Body>>,
) -> SendError<Body> {
    let unsent = err.take_message().map(Box::new);
    SendError {
        error: ProxyError::Upstream {
            addr,
            source: err.into_error(),
        },
        unsent,
    }
}

/// Pool tuning.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Idle HTTP/1 connections older than this are closed rather than reused.
    pub idle_timeout: Duration,
    /// At most this many idle HTTP/1 connections are kept per key.
    pub max_idle_per_key: usize,
}

struct Idle {
    conn: h1::H1Conn,
    since: Instant,
}

/// The HTTP/2 connections of a key, locked while one is being opened.
type H2Slot = Arc<tokio::sync::Mutex<Vec<h2::H2Conn>>>;

/// The most HTTP/2 connections a key gets. Requests share the first that has room for
/// another stream (its peer's `MAX_CONCURRENT_STREAMS`); when every one is full, another is
/// opened, so that long requests (slow uploads, streams) filling one never hold up the rest.
/// At this many, a request waits for a stream on the least loaded.
const MAX_HTTP2_CONNECTIONS: usize = 8;

/// The connection of `conns` a new request should take: the first open one with room, else,
/// once there are [`MAX_HTTP2_CONNECTIONS`], the least loaded open one. `None`: another is
/// to be opened.
fn pick_http2(conns: &[h2::H2Conn]) -> Option<&h2::H2Conn> {
    let open = || conns.iter().filter(|c| !c.is_closed());
    open().find(|c| c.has_room()).or_else(|| {
        (conns.len() >= MAX_HTTP2_CONNECTIONS)
            .then(|| open().min_by_key(|c| c.active_streams()))
            .flatten()
    })
}

/// Reusable upstream HTTP connections.
pub struct Pools {
    connector: Connector,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    http1: Mutex<FastMap<Key, Vec<Idle>>>,
    http2: Mutex<FastMap<Key, H2Slot>>,
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
    ) -> impl Future<Output = Result<Response<Body>, SendError<Body>>> {
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
    ) -> impl Future<Output = Result<Response<Body>, SendError<Body>>> {
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
                    pool: self.clone(),
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
    ) -> Result<Response<Body>, SendError<Body>> {
        let addr = key.dial.addr();
        let permit = match new_connection_permit(opts.limiter.as_ref(), &opts.backend).await {
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
            Err(err) => Err(from_hyper(addr, err)),
        }
    }

    /// A new HTTP/1 connection for `key`, under the backend's connection limit; `None` when
    /// an idle connection came back while waiting for room.
    async fn open_http1(
        &self,
        key: &Key,
        opts: &SendOptions,
    ) -> Result<Option<h1::H1Conn>, ProxyError> {
        let Some(permit) = connection_permit(opts.limiter.as_ref(), &opts.backend).await? else {
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

    fn checkout_http1(&self, key: &Key) -> Option<h1::H1Conn> {
        let mut pools = lock(&self.http1);
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
            let mut pools = lock(&self.http1);
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
    ) -> impl Future<Output = Result<Response<Body>, SendError<Body>>> {
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

    /// An HTTP/2 connection of a key with room for a stream, when there is one and nobody is
    /// connecting.
    fn ready_http2(&self, key: &Key) -> Option<h2::H2Conn> {
        let pools = lock(&self.http2);
        let conns = pools.get(key)?.try_lock().ok()?;
        pick_http2(&conns).cloned()
    }

    /// An HTTP/2 connection for a key, connecting when none is open or every open one is full
    /// (up to [`MAX_HTTP2_CONNECTIONS`]). Concurrent requests wait for one new connection
    /// rather than each opening their own.
    async fn http2_sender(&self, key: &Key, opts: &SendOptions) -> Result<h2::H2Conn, ProxyError> {
        let slot = {
            let mut pools = lock(&self.http2);
            pools.entry(key.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        slot.retain(|c| !c.is_closed());
        if let Some(conn) = pick_http2(&slot) {
            return Ok(conn.clone());
        }
        let addr = key.dial.addr();
        let permit = new_connection_permit(opts.limiter.as_ref(), &opts.backend).await?;
        let stream = self.connect(key, opts).await?;
        // One HTTP/2 PING, after the handshake: a peer that accepts and never answers is
        // found within the connect timeout. No PINGs after it: TCP keep-alive finds a
        // vanished peer (`io::tune`).
        let answer_within = opts
            .connect_timeout
            .unwrap_or(self.connector.connect_timeout);
        let limiter = opts.limiter.clone();
        let sender = h2::H2Conn::handshake(stream, addr, answer_within, move || {
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
        slot.push(sender.clone());
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
        let mut pools = lock(&self.http1);
        pools.retain(|_, idle| {
            idle.retain_mut(|e| {
                now.duration_since(e.since) < self.settings.idle_timeout && e.conn.is_open()
            });
            !idle.is_empty()
        });
        drop(pools);
        let mut pools = lock(&self.http2);
        pools.retain(|_, slot| match slot.try_lock() {
            Ok(mut conns) => {
                conns.retain(|c| !c.is_closed());
                !conns.is_empty()
            }
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
        for (key, idle) in lock(&self.http1).iter() {
            out.push(stat(key, idle.len()));
        }
        for (key, slot) in lock(&self.http2).iter() {
            out.push(stat(key, slot.try_lock().map_or(1, |c| c.len())));
        }
        out.sort_by_key(|s| (s.addr, s.http2));
        out
    }
}

impl h1::Checkin for Pools {
    fn checkin(&self, key: Key, conn: h1::H1Conn) {
        self.checkin_http1(key, conn);
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
