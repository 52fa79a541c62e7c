//! Retry eligibility and backoff.
//!
//! A failure where the request surely never reached the application ([`Unsent`]: the
//! connection was refused or timed out, a pooled connection had closed, HTTP/2
//! `REFUSED_STREAM`, a stream above the last one a GOAWAY said the upstream would process) is
//! always safe to retry, whatever the method.
//! A failure after that (a status code in the route's `retry.codes`, a gRPC status in its gRPC
//! codes, a per-try timeout as 504, a reset as 502) is retried only when repeating the request
//! cannot do something twice: its method is idempotent, or it carries an `Idempotency-Key`, or
//! the backend's policy opts in. gRPC calls are POSTs; listing gRPC codes on a route is the
//! operator saying those calls are safe to repeat, as in Envoy and Linkerd.

use std::time::Duration;

use http::Method;
use weft_api::config::Retry;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A response head arrived.
    Response {
        status: u16,
        grpc_status: Option<u8>,
    },
    /// The request never reached the application.
    NotSent(Unsent),
    /// The connection failed after the request was sent.
    Reset,
    /// The per-try timeout passed.
    TimedOut,
    /// The client failed mid-request (its body broke off): the endpoint is not to blame, and
    /// there is no one to retry for.
    Aborted,
}

/// How a request surely never reached the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// No connection to the endpoint could be opened (refused, timed out, TLS failed).
    ConnectFailed,
    /// A pooled connection could take no new request: it had closed, or its upstream had
    /// said with GOAWAY that it takes no more streams.
    ConnectionClosed,
    /// HTTP/2 `REFUSED_STREAM`: the upstream says it did not process the stream.
    RefusedStream,
    /// The upstream's GOAWAY named a last stream below this one: it was never processed.
    GoAway,
}

impl Unsent {
    /// Whether the endpoint is to blame, for its breaker. A closed or going-away connection is
    /// the ordinary end of a connection's life (an upstream recycles them: nginx sends
    /// GOAWAY every 1,000 requests); a refused stream says the upstream is shedding load.
    pub fn is_failure(self) -> bool {
        matches!(self, Unsent::ConnectFailed | Unsent::RefusedStream)
    }

    /// Its name, as the mark between proxies carries it.
    pub fn as_str(self) -> &'static str {
        self.reason().as_str()
    }

    /// The cause a mark names; `None` for anything else.
    pub fn parse(name: &[u8]) -> Option<Unsent> {
        [
            Unsent::ConnectFailed,
            Unsent::ConnectionClosed,
            Unsent::RefusedStream,
            Unsent::GoAway,
        ]
        .into_iter()
        .find(|u| u.as_str().as_bytes() == name)
    }

    /// The retry reason of sending such a request again.
    pub fn reason(self) -> Reason {
        match self {
            Unsent::ConnectFailed => Reason::ConnectFailed,
            Unsent::ConnectionClosed => Reason::ConnectionClosed,
            Unsent::RefusedStream => Reason::RefusedStream,
            Unsent::GoAway => Reason::GoAway,
        }
    }
}

/// Why a request was retried: the `reason` label of `weft_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Status,
    GrpcStatus,
    ConnectFailed,
    ConnectionClosed,
    RefusedStream,
    GoAway,
    Reset,
    Timeout,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Status => "status",
            Reason::GrpcStatus => "grpc-status",
            Reason::ConnectFailed => "connect-failed",
            Reason::ConnectionClosed => "connection-closed",
            Reason::RefusedStream => "refused-stream",
            Reason::GoAway => "goaway",
            Reason::Reset => "reset",
            Reason::Timeout => "timeout",
        }
    }
}

/// What makes a request safe to repeat after it reached the application.
#[derive(Debug, Clone, Copy)]
pub struct Safety<'a> {
    pub method: &'a Method,
    pub idempotency_key: bool,
    pub grpc: bool,
    /// BackendPolicy `retry.retryNonIdempotent`.
    pub policy_opt_in: bool,
    /// BackendPolicy `retry.nonIdempotentMethods`.
    pub extra_non_idempotent: &'a [String],
}

impl Safety<'_> {
    /// POST, PATCH and the methods the policy lists may do something twice.
    pub fn repeatable(&self) -> bool {
        let non_idempotent = *self.method == Method::POST
            || *self.method == Method::PATCH
            || *self.method == Method::CONNECT
            || self
                .extra_non_idempotent
                .iter()
                .any(|m| m.as_str() == self.method.as_str());
        !non_idempotent || self.idempotency_key || self.policy_opt_in
    }

    /// Whether a reset before the response head sends the request again, whatever the
    /// policy says (as a connect failure does): a request safe to repeat, unless it is a gRPC
    /// call, whose retries the route's codes decide.
    pub fn resent_after_reset(&self) -> bool {
        !self.grpc && self.repeatable()
    }
}

/// Whether an attempt may be retried, and why.
pub fn reason(attempt: Attempt, retry: Option<&Retry>, safety: &Safety<'_>) -> Option<Reason> {
    if let Attempt::NotSent(unsent) = attempt {
        return Some(unsent.reason());
    }
    // Reset before its response head (the endpoint, its sidecar or the connection died): a
    // request safe to repeat goes again whatever the policy says, as a connect failure does.
    if attempt == Attempt::Reset && safety.resent_after_reset() {
        return Some(Reason::Reset);
    }
    let retry = retry?;
    let (by_status, reason) = match attempt {
        Attempt::Response {
            grpc_status: Some(g),
            ..
        } if safety.grpc && g != 0 => {
            return retry.grpc_codes.contains(&g).then_some(Reason::GrpcStatus);
        }
        Attempt::Response { status, .. } => (status, Reason::Status),
        Attempt::Reset => (502, Reason::Reset),
        Attempt::TimedOut if safety.grpc => {
            return (retry.grpc_codes.contains(&4) || retry.codes.contains(&504))
                .then_some(Reason::Timeout);
        }
        Attempt::TimedOut => (504, Reason::Timeout),
        Attempt::NotSent(_) | Attempt::Aborted => return None,
    };
    (retry.codes.contains(&by_status) && (safety.grpc || safety.repeatable())).then_some(reason)
}

/// The backoff before retry number `n` (0 for the first): full jitter over an exponential
/// ceiling that starts at `base` and stops growing at ten times `base`. `unit` is a uniform
/// sample in `[0, 1)`.
pub fn backoff(base: Duration, n: u32, unit: f64) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << n.min(16))
        .min(base.saturating_mul(10));
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(codes: &[u16], grpc: &[u8]) -> Retry {
        Retry {
            codes: codes.to_vec(),
            grpc_codes: grpc.to_vec(),
            attempts: 2,
            backoff: weft_api::duration::Dur::from_millis(25),
        }
    }

    fn safety(method: &Method) -> Safety<'_> {
        Safety {
            method,
            idempotency_key: false,
            grpc: false,
            policy_opt_in: false,
            extra_non_idempotent: &[],
        }
    }

    #[test]
    fn eligibility_table() {
        let r = retry(&[503, 502, 504], &[14]);
        let only_503 = retry(&[503], &[]);
        let get = Method::GET;
        let post = Method::POST;
        let charge = Method::from_bytes(b"CHARGE").unwrap();
        let extra = ["CHARGE".to_owned()];
        let resp = |status| Attempt::Response {
            status,
            grpc_status: None,
        };
        let cases: Vec<(Attempt, Option<&Retry>, Safety<'_>, Option<Reason>)> = vec![
            (
                Attempt::NotSent(Unsent::ConnectFailed),
                None,
                safety(&post),
                Some(Reason::ConnectFailed),
            ),
            (
                Attempt::NotSent(Unsent::ConnectionClosed),
                None,
                safety(&post),
                Some(Reason::ConnectionClosed),
            ),
            (
                Attempt::NotSent(Unsent::RefusedStream),
                None,
                safety(&post),
                Some(Reason::RefusedStream),
            ),
            (
                Attempt::NotSent(Unsent::GoAway),
                Some(&only_503),
                safety(&post),
                Some(Reason::GoAway),
            ),
            (resp(503), None, safety(&get), None),
            (resp(503), Some(&r), safety(&get), Some(Reason::Status)),
            (resp(500), Some(&r), safety(&get), None),
            (resp(503), Some(&r), safety(&post), None),
            (
                resp(503),
                Some(&r),
                Safety {
                    idempotency_key: true,
                    ..safety(&post)
                },
                Some(Reason::Status),
            ),
            (
                resp(503),
                Some(&r),
                Safety {
                    policy_opt_in: true,
                    ..safety(&post)
                },
                Some(Reason::Status),
            ),
            (resp(503), Some(&r), safety(&Method::PATCH), None),
            (
                resp(503),
                Some(&r),
                safety(&Method::PUT),
                Some(Reason::Status),
            ),
            (
                resp(503),
                Some(&r),
                Safety {
                    extra_non_idempotent: &extra,
                    ..safety(&charge)
                },
                None,
            ),
            (resp(503), Some(&r), safety(&charge), Some(Reason::Status)),
            (Attempt::Reset, Some(&r), safety(&get), Some(Reason::Reset)),
            (Attempt::Reset, None, safety(&get), Some(Reason::Reset)),
            (
                Attempt::Reset,
                Some(&only_503),
                safety(&get),
                Some(Reason::Reset),
            ),
            (Attempt::Reset, Some(&r), safety(&post), None),
            (Attempt::Reset, None, safety(&post), None),
            (Attempt::Aborted, Some(&r), safety(&get), None),
            (
                Attempt::TimedOut,
                Some(&r),
                safety(&get),
                Some(Reason::Timeout),
            ),
            (Attempt::TimedOut, Some(&only_503), safety(&get), None),
            (
                Attempt::Response {
                    status: 200,
                    grpc_status: Some(14),
                },
                Some(&r),
                Safety {
                    grpc: true,
                    ..safety(&post)
                },
                Some(Reason::GrpcStatus),
            ),
            (
                Attempt::Response {
                    status: 200,
                    grpc_status: Some(13),
                },
                Some(&r),
                Safety {
                    grpc: true,
                    ..safety(&post)
                },
                None,
            ),
            (
                Attempt::Response {
                    status: 200,
                    grpc_status: Some(0),
                },
                Some(&r),
                Safety {
                    grpc: true,
                    ..safety(&post)
                },
                None,
            ),
        ];
        for (i, (attempt, retry, safety, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                reason(attempt, retry, &safety),
                want,
                "case {i}: {attempt:?} {:?}",
                safety.method
            );
        }
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        let base = Duration::from_millis(100);
        assert_eq!(
            backoff(base, 0, 0.999),
            Duration::from_millis(100).mul_f64(0.999)
        );
        assert_eq!(backoff(base, 1, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(base, 3, 1.0), Duration::from_millis(800));
        assert_eq!(
            backoff(base, 9, 1.0),
            Duration::from_secs(1),
            "capped at ten times the base"
        );
        assert_eq!(backoff(base, 40, 1.0), Duration::from_secs(1));
        assert_eq!(
            backoff(base, 2, 0.0),
            Duration::ZERO,
            "full jitter reaches zero"
        );
    }
}
