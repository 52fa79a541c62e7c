//! Errors the proxy generates itself, and the responses that report them (SPEC section 7).
//!
//! Every failure on the request path becomes a [`ProxyError`]. It knows its [`Reason`] (the
//! `x-weft-error` value and the status code), who caused it ([`Blame`]), and whether the
//! request surely never reached the application, which is what makes a retry safe. The
//! responses that carry them are made by the HTTP server (`http::server::error_response`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{StatusCode, header};

use crate::policy::retry::Unsent;

/// The error of any body in the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header that marks a response the proxy generated itself.
pub const ERROR_HEADER: &str = "x-weft-error";

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoRoute,
    NoHealthyEndpoints,
    BreakerOpen,
    Overloaded,
    RetryBudgetExhausted,
    Timeout,
    UpstreamReset,
    ConnectFailed,
    Unauthorized,
    RateLimited,
    /// Routes are attached to the Service and none matched (GAMMA: 404).
    RouteNotFound,
    /// The matched rule has no backend with weight (Gateway API: 500).
    NoBackend,
    /// A request that is not valid HTTP.
    BadRequest,
    /// A request head larger than the limit.
    HeaderTooLarge,
    /// A request head that did not arrive in time.
    HeaderTimeout,
    /// The client gave up inside its request body (nginx's 499): nobody reads the answer, but
    /// the request is counted as the client's doing, not the upstream's.
    ClientCancelled,
    /// An HTTP/2 client flooded its connection (rapid reset, CONTINUATION frames, an HPACK
    /// bomb, SETTINGS or PING frames): the connection was ended. Counted, never answered.
    Http2Flood,
    /// An HTTP/2 client broke the protocol: the connection was ended with GOAWAY.
    Http2ProtocolError,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no-route",
            Reason::NoHealthyEndpoints => "no-healthy-endpoints",
            Reason::BreakerOpen => "breaker-open",
            Reason::Overloaded => "overloaded",
            Reason::RetryBudgetExhausted => "retry-budget-exhausted",
            Reason::Timeout => "timeout",
            Reason::UpstreamReset => "upstream-reset",
            Reason::ConnectFailed => "connect-failed",
            Reason::Unauthorized => "unauthorized",
            Reason::RateLimited => "rate-limited",
            Reason::RouteNotFound => "route-not-found",
            Reason::NoBackend => "no-backend",
            Reason::BadRequest => "bad-request",
            Reason::HeaderTooLarge => "header-too-large",
            Reason::HeaderTimeout => "header-timeout",
            Reason::ClientCancelled => "client-cancelled",
            Reason::Http2Flood => "http2-flood",
            Reason::Http2ProtocolError => "http2-protocol-error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::NoRoute
            | Reason::NoHealthyEndpoints
            | Reason::BreakerOpen
            | Reason::Overloaded
            | Reason::RetryBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::UpstreamReset | Reason::ConnectFailed => StatusCode::BAD_GATEWAY,
            Reason::Unauthorized => StatusCode::FORBIDDEN,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::RouteNotFound => StatusCode::NOT_FOUND,
            Reason::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::ClientCancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Reason::Http2Flood => StatusCode::TOO_MANY_REQUESTS,
            Reason::Http2ProtocolError => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code with the same meaning.
    pub fn grpc_status(self) -> u8 {
        const CANCELLED: u8 = 1;
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const PERMISSION_DENIED: u8 = 7;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const UNAVAILABLE: u8 = 14;
        match self {
            Reason::RouteNotFound => UNIMPLEMENTED,
            Reason::Timeout | Reason::HeaderTimeout => DEADLINE_EXCEEDED,
            Reason::Unauthorized => PERMISSION_DENIED,
            Reason::RateLimited | Reason::Http2Flood => RESOURCE_EXHAUSTED,
            Reason::BadRequest | Reason::HeaderTooLarge | Reason::Http2ProtocolError => {
                INVALID_ARGUMENT
            }
            Reason::ClientCancelled => CANCELLED,
            _ => UNAVAILABLE,
        }
    }
}

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something wrong.
    Downstream,
    /// The upstream failed or could not be reached.
    Upstream,
    /// The proxy's own configuration or policy refused.
    Local,
}

/// A failure on the request path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for {0:?}")]
    NoRoute(String),
    /// The outbound traffic policy REGISTRY_ONLY refuses an address no endpoint has.
    #[error("{0} is outside the registry, and the outbound traffic policy is REGISTRY_ONLY")]
    OutsideRegistry(SocketAddr),
    #[error("backend {0} has no endpoints")]
    NoEndpoints(Arc<str>),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("mesh TLS with {addr} failed ({reason}): {detail}")]
    Tls {
        addr: SocketAddr,
        reason: &'static str,
        detail: String,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    /// From hyper's HTTP/1 client, which carries upgrades and CONNECT.
    #[error("upstream {addr}: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// On a shared HTTP/2 connection; `sent` is false when the connection could not take the
    /// request (it had closed or was going away), so that it never left.
    #[error("upstream {addr}: {source}")]
    Http2 {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
        sent: bool,
    },
    #[error("upstream {addr}: {source}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: ExchangeError,
    },
    #[error("no route matches the request")]
    RouteNotFound,
    #[error(
        "the matched rule has no backend to send this request to (none with weight, or a reference that names none)"
    )]
    NoBackend,
    #[error("every endpoint of {0} is ejected by its circuit breaker")]
    BreakerOpen(Arc<str>),
    #[error("{0} is at its connection limits")]
    Overloaded(Arc<str>),
    #[error("{0} is over its rate limit")]
    RateLimited(Arc<str>),
    /// Refused by the inbound ServerPolicy (403 `unauthorized` or 429 `rate-limited`).
    #[error("refused by the server's policy ({})", .0.as_str())]
    Denied(Reason),
    #[error("the retry budget of {0} is exhausted")]
    BudgetExhausted(Arc<str>),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

impl ProxyError {
    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::NoRoute(_) | ProxyError::OutsideRegistry(_) => Reason::NoRoute,
            ProxyError::NoEndpoints(_) => Reason::NoHealthyEndpoints,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. } => Reason::ConnectFailed,
            ProxyError::Upstream { source, .. } if source.is_timeout() => Reason::Timeout,
            ProxyError::Http2 { source, .. } if is_own_cancel(source) => Reason::ClientCancelled,
            ProxyError::Exchange {
                source: ExchangeError::RequestBody(_),
                ..
            } => Reason::ClientCancelled,
            ProxyError::Upstream { .. }
            | ProxyError::Http2 { .. }
            | ProxyError::Exchange { .. } => Reason::UpstreamReset,
            ProxyError::RouteNotFound => Reason::RouteNotFound,
            ProxyError::NoBackend => Reason::NoBackend,
            ProxyError::BreakerOpen(_) => Reason::BreakerOpen,
            ProxyError::Overloaded(_) => Reason::Overloaded,
            ProxyError::RateLimited(_) => Reason::RateLimited,
            ProxyError::Denied(reason) => *reason,
            ProxyError::BudgetExhausted(_) => Reason::RetryBudgetExhausted,
            ProxyError::Timeout(_) => Reason::Timeout,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute(_)
            | ProxyError::OutsideRegistry(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::RouteNotFound
            | ProxyError::NoBackend
            | ProxyError::BreakerOpen(_)
            | ProxyError::Overloaded(_)
            | ProxyError::RateLimited(_)
            | ProxyError::Denied(_)
            | ProxyError::BudgetExhausted(_) => Blame::Local,
            ProxyError::Upstream { source, .. } if source.is_user() => Blame::Downstream,
            // The proxy reset the stream itself because the client's request body broke off:
            // the client left, the upstream did nothing wrong.
            ProxyError::Http2 { source, .. } if is_own_cancel(source) => Blame::Downstream,
            ProxyError::Exchange {
                source: ExchangeError::RequestBody(_),
                ..
            } => Blame::Downstream,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Http2 { .. }
            | ProxyError::Exchange { .. }
            | ProxyError::Timeout(_) => Blame::Upstream,
        }
    }

    /// True when the request surely never reached the application, so that sending it again,
    /// whatever its method, cannot do anything twice.
    pub fn never_reached_app(&self) -> bool {
        self.unsent().is_some()
    }

    /// How the request surely never reached the application, if it did not.
    pub fn unsent(&self) -> Option<Unsent> {
        match self {
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. } => Some(Unsent::ConnectFailed),
            ProxyError::Upstream { source, .. } if source.is_canceled() => {
                Some(Unsent::ConnectionClosed)
            }
            ProxyError::Http2 { sent: false, .. } => Some(Unsent::ConnectionClosed),
            // RFC 9113 section 6.8: streams above the GOAWAY's last stream were not processed.
            ProxyError::Http2 { source, .. } if source.is_go_away() && source.is_remote() => {
                Some(Unsent::GoAway)
            }
            ProxyError::Http2 { .. } if self.is_refused_stream() => Some(Unsent::RefusedStream),
            _ => None,
        }
    }

    /// For a TLS failure, its reason (`unknown-ca`, `identity-mismatch`, ...).
    pub fn tls_reason(&self) -> &'static str {
        match self {
            ProxyError::Tls { reason, .. } => reason,
            _ => "",
        }
    }

    /// HTTP/2 `REFUSED_STREAM`: the server guarantees it did not process the request.
    pub fn is_refused_stream(&self) -> bool {
        matches!(self, ProxyError::Http2 { source, .. } if source.is_reset() && source.reason() == Some(h2::Reason::REFUSED_STREAM))
    }
}

/// A stream this proxy reset with `CANCEL` itself (neither the peer nor h2 did): the pipe of
/// a request body does that when the body breaks off, which is the client leaving.
fn is_own_cancel(e: &h2::Error) -> bool {
    e.is_reset() && !e.is_remote() && !e.is_library() && e.reason() == Some(h2::Reason::CANCEL)
}

/// How an HTTP/1 exchange with an upstream failed (`upstream::h1`).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before the response ended")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
}

impl ExchangeError {
    /// Whether the upstream had closed the connection: on a reused connection, a request
    /// that met this was never read.
    pub fn is_closed(&self) -> bool {
        match self {
            ExchangeError::Closed => true,
            ExchangeError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A failed send upstream, with the request when it was never sent, so that it can go to
/// another connection or endpoint as it is.
pub struct SendError<B> {
    pub error: ProxyError,
    pub unsent: Option<Box<http::Request<B>>>,
}

impl<B> SendError<B> {
    pub fn unsent(error: ProxyError, req: Box<http::Request<B>>) -> SendError<B> {
        SendError {
            error,
            unsent: Some(req),
        }
    }
}

/// True for requests that speak gRPC, which get their errors as `grpc-status`.
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_the_spec_statuses() {
        let cases = [
            (Reason::NoRoute, 503, 14),
            (Reason::NoHealthyEndpoints, 503, 14),
            (Reason::BreakerOpen, 503, 14),
            (Reason::Overloaded, 503, 14),
            (Reason::RetryBudgetExhausted, 503, 14),
            (Reason::Timeout, 504, 4),
            (Reason::UpstreamReset, 502, 14),
            (Reason::ConnectFailed, 502, 14),
            (Reason::Unauthorized, 403, 7),
            (Reason::RateLimited, 429, 8),
            (Reason::BadRequest, 400, 3),
            (Reason::HeaderTooLarge, 431, 3),
            (Reason::HeaderTimeout, 408, 4),
            (Reason::ClientCancelled, 499, 1),
            (Reason::Http2Flood, 429, 8),
            (Reason::Http2ProtocolError, 400, 3),
        ];
        for (reason, status, grpc) in cases {
            assert_eq!(reason.status().as_u16(), status, "{reason:?}");
            assert_eq!(reason.grpc_status(), grpc, "{reason:?}");
        }
    }

    /// A connection that could not take the request never sent it; a stream that failed
    /// after its head went out may have reached the application. (How h2 ended a stream,
    /// REFUSED_STREAM, GOAWAY, a reset of the proxy's own, is tested against real servers in
    /// `http::client::h2`.)
    #[test]
    fn http2_failures_sent_or_not() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let error = |sent| ProxyError::Http2 {
            addr,
            source: h2::Error::from(h2::Reason::INTERNAL_ERROR),
            sent,
        };
        assert_eq!(error(false).unsent(), Some(Unsent::ConnectionClosed));
        assert_eq!(error(true).unsent(), None);
        assert_eq!(error(true).blame(), Blame::Upstream);
    }

    #[test]
    fn connect_failures_never_reached_the_app() {
        let err = ProxyError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(err.never_reached_app());
        assert_eq!(err.reason(), Reason::ConnectFailed);
        assert_eq!(err.blame(), Blame::Upstream);
    }
}
