//! Reaching upstreams: the [`Connector`] opens TCP connections (through the peer proxy's
//! inbound port for meshed endpoints), and [`Pools`] keeps HTTP connections for reuse.
//!
//! Pools are keyed by how an endpoint is dialled and the HTTP version, not by any config
//! object, so they survive config swaps: a route edit does not drop warm connections to
//! endpoints that still exist. HTTP/1 connections are reused one request at a time (a
//! connection returns to the pool when its response body has been read to the end); an
//! HTTP/2 connection is shared by all requests to its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::errors::ProxyError;
use crate::http::body::Body;
use crate::metrics::Metrics;
use crate::transport_header::{self, Header};

/// How to reach an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dial {
    /// Connect to the address itself.
    Direct(SocketAddr),
    /// Connect to the weft proxy in front of the endpoint and ask it for `port`.
    Peer { proxy: SocketAddr, port: u16 },
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
#[derive(Debug, Clone)]
pub struct Connector {
    pub connect_timeout: Duration,
}

impl Connector {
    /// Connects and, for a peer proxy, sends the transport header that says what follows.
    pub async fn connect(
        &self,
        dial: &Dial,
        protocol: transport_header::Protocol,
    ) -> Result<TcpStream, ProxyError> {
        let addr = dial.addr();
        let mut stream =
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
        // Latency matters more than packet count for request/response traffic.
        let _ = stream.set_nodelay(true);
        if let Dial::Peer { port, .. } = dial {
            let mut header = BytesMut::new();
            Header {
                port: *port,
                protocol,
            }
            .encode(&mut header);
            stream
                .write_all(&header)
                .await
                .map_err(|source| ProxyError::Connect { addr, source })?;
        }
        Ok(stream)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dial: Dial,
    http2: bool,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

type SharedH2 = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// Reusable upstream HTTP connections.
pub struct Pools {
    connector: Connector,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    http1: Mutex<HashMap<Key, Vec<Idle>>>,
    http2: Mutex<HashMap<Key, SharedH2>>,
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
            http1: Mutex::new(HashMap::new()),
            http2: Mutex::new(HashMap::new()),
        })
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends a request and returns the response head. The request goes over HTTP/2 when its
    /// version says so and over HTTP/1 otherwise. `reuse` is false for upgrades and CONNECT,
    /// whose connection leaves HTTP and cannot return to the pool.
    pub async fn send(
        self: &Arc<Self>,
        dial: Dial,
        req: Request<Body>,
        reuse: bool,
    ) -> Result<Response<Body>, ProxyError> {
        if req.version() == http::Version::HTTP_2 {
            self.send_http2(Key { dial, http2: true }, req).await
        } else {
            self.send_http1(Key { dial, http2: false }, req, reuse)
                .await
        }
    }

    async fn send_http1(
        self: &Arc<Self>,
        key: Key,
        mut req: Request<Body>,
        reuse: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let addr = key.dial.addr();
        // Idle connections first; one that turns out closed hands the request back unsent,
        // and the next one is tried, then a new connection.
        while let Some(mut sender) = self.checkout_http1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled_response(key, sender, resp, reuse)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(ProxyError::Upstream {
                            addr,
                            source: err.into_error(),
                        });
                    }
                },
            }
        }
        let stream = self.connect(&key).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ProxyError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.pooled_response(key, sender, resp, reuse)),
            Err(source) => Err(ProxyError::Upstream { addr, source }),
        }
    }

    fn checkout_http1(&self, key: &Key) -> Option<http1::SendRequest<Body>> {
        let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pools.get_mut(key)?;
        let now = Instant::now();
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready()
                && now.duration_since(entry.since) < self.settings.idle_timeout
            {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin_http1(&self, key: Key, sender: http1::SendRequest<Body>) {
        let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pools.entry(key).or_default();
        if idle.len() < self.settings.max_idle_per_key {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn pooled_response(
        self: &Arc<Self>,
        key: Key,
        sender: http1::SendRequest<Body>,
        resp: Response<Incoming>,
        reuse: bool,
    ) -> Response<Body> {
        let release = reuse.then(|| Release {
            pools: self.clone(),
            key,
            sender,
        });
        resp.map(|inner| {
            Body::Pooled(PooledBody {
                inner,
                done: false,
                release,
            })
        })
    }

    async fn send_http2(&self, key: Key, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let addr = key.dial.addr();
        let mut sender = self.http2_sender(&key).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(resp.map(Body::Incoming)),
            Err(source) => Err(ProxyError::Upstream { addr, source }),
        }
    }

    /// The shared HTTP/2 connection for a key, connecting when there is none (or it closed).
    /// Concurrent first requests wait for one connection rather than each opening their own.
    async fn http2_sender(&self, key: &Key) -> Result<http2::SendRequest<Body>, ProxyError> {
        let slot = {
            let mut pools = self.http2.lock().unwrap_or_else(|p| p.into_inner());
            pools.entry(*key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let addr = key.dial.addr();
        let stream = self.connect(key).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ProxyError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, key: &Key) -> Result<TcpStream, ProxyError> {
        let protocol = if key.http2 {
            transport_header::Protocol::Http2
        } else {
            transport_header::Protocol::Http1
        };
        let result = self.connector.connect(&key.dial, protocol).await;
        self.metrics.upstream_connect(result.is_ok());
        result
    }

    /// Drops idle connections that timed out or closed, and empty pool entries, so pools of
    /// endpoints that left the config do not linger.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut pools = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, idle| {
            idle.retain(|e| {
                !e.sender.is_closed() && now.duration_since(e.since) < self.settings.idle_timeout
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
            peer_port: match key.dial {
                Dial::Peer { port, .. } => Some(port),
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

struct Release {
    pools: Arc<Pools>,
    key: Key,
    sender: http1::SendRequest<Body>,
}

impl Release {
    fn give_back(self) {
        let Release {
            pools,
            key,
            mut sender,
        } = self;
        if sender.is_ready() {
            pools.checkin_http1(key, sender);
        } else if !sender.is_closed() {
            // The connection task has not yet noticed the response ended; let it catch up.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pools.checkin_http1(key, sender);
                }
            });
        }
    }
}

/// An upstream HTTP/1 response body. Once read to the end, its connection goes back to the
/// pool; dropped early, the connection is closed, because unread bytes would corrupt the
/// next response.
pub struct PooledBody {
    inner: Incoming,
    done: bool,
    release: Option<Release>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if (self.done || self.inner.is_end_stream())
            && let Some(release) = self.release.take()
        {
            release.give_back();
        }
    }
}
