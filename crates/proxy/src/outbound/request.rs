//! One outbound HTTP request, from routing to the response:
//!
//! route → rule → backend by weight → request filters → rate limit → mirrors → in-flight limit
//! → attempts (endpoint pick, per-try timeout, outcome to the breaker, retry decision under the
//! budget, backoff) within the request timeout → response filters.
//!
//! Every request's future nests those of the steps below it, so its size is paid in the memory
//! of every request in flight and in any copy of it (the servers write it into its box in
//! place), and the request itself travels as one box ([`BoxedRequest`]) from the server to
//! the upstream connection. Hence two more habits on this path: the steps that take a request
//! are plain functions returning an `async move` block, because an `async fn` keeps each
//! argument twice in its future (once as passed, once moved into the body:
//! rust-lang/rust#62958), and a future given a deadline is pinned where it stands, so that
//! [`within`] moves a pointer.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, Request, Response, Version};
use tokio::time::Instant;

use crate::backends::{Backend, NoEndpoint};
use crate::errors::{self, Blame, ProxyError, SendError};
use crate::filters;
use crate::http::body::{Body, BoxedRequest, DeadlineBody};
use crate::http::client::{SendOptions, UNSENT_HEADER};
use crate::http::forward::{self, Head, Replay};
use crate::http::headers;
use crate::http::replay::Recorder;
use crate::io::splice;
use crate::metrics::{Direction, Name, RouteId};
use crate::policy::breaker::Outcome;
use crate::policy::deadline::within;
use crate::policy::retry::{self, Attempt, Safety, Unsent};
use crate::policy::weighted;
use crate::shared::Shared;
use crate::state::{Destination, Rule};
use crate::traces::{self, Span};
use crate::transport_header;
use crate::upstream::Dial;
use opentelemetry::trace::SpanKind;

const DIRECTION: Direction = Direction::Outbound;
/// Retries of requests that never reached the application, when the route sets none.
const SAFE_RETRIES: u32 = 2;
/// The first backoff of those retries.
const SAFE_BACKOFF: Duration = Duration::from_millis(25);
/// Sends again of a request an HTTP/2 upstream did not process (streams above a GOAWAY's last
/// stream, REFUSED_STREAM), beyond the retries: each goes out on another connection, none
/// reached the application, and an upstream recycling its connections (nginx's
/// `keepalive_requests`) may turn a request away more than twice in a row.
const MAX_UNPROCESSED: u32 = 4;
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// Mirrored copies in flight at once; beyond, copies are dropped.
const MAX_MIRRORS: usize = 64;
/// How long a mirrored copy may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// What one request's handling carries from its start to its end.
struct Call<'a> {
    start: Instant,
    grpc: bool,
    method: Method,
    span: Option<&'a Span>,
}

/// Routes the requests of one outbound HTTP connection.
pub struct Http {
    pub shared: Arc<Shared>,
    pub orig: Option<SocketAddr>,
}

static NO_ROUTE: std::sync::LazyLock<Name> = std::sync::LazyLock::new(Name::default);
static NO_ROUTE_ID: std::sync::LazyLock<RouteId> = std::sync::LazyLock::new(RouteId::default);
/// The `backend` label of requests sent to an address that is no Service's.
static PASSTHROUGH: std::sync::LazyLock<Name> =
    std::sync::LazyLock::new(|| Name("passthrough".into()));

impl Http {
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    pub fn handle(self: Arc<Self>, mut req: BoxedRequest) -> impl Future<Output = Response<Body>> {
        async move {
            let Some(observer) = &self.shared.observer else {
                return self.route(req, None).await;
            };
            let span = observer.start(
                SpanKind::Client,
                traces::span_name(req.method()),
                req.headers_mut(),
            );
            if let Some(span) = &span {
                traces::on_request(span, &req, DIRECTION);
            }
            let resp = self.route(req, span.as_deref()).await;
            let Some(span) = span else { return resp };
            traces::on_response(span.as_ref(), &resp, false);
            // The record ends with the response body.
            let observer = observer.clone();
            resp.map(|body| Body::observed(body, move |bytes| observer.end(span, bytes)))
        }
    }

    /// Routes one request and sends it on; `span` records what happened.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    fn route(
        self: &Arc<Self>,
        req: BoxedRequest,
        span: Option<&Span>,
    ) -> impl Future<Output = Response<Body>> {
        async move {
            let call = Call {
                start: Instant::now(),
                grpc: errors::is_grpc(&req),
                method: req.method().clone(),
                span,
            };
            let (dest, by_authority) = self.destination(&req);
            let Some(dest) = dest else {
                let result = match self.to_address(&req) {
                    Some(Ok(dial)) => {
                        let result = self.passthrough(req, dial).await;
                        return self.finish(&call, &NO_ROUTE_ID, &PASSTHROUGH, result);
                    }
                    Some(Err(addr)) => Err(ProxyError::OutsideRegistry(addr)),
                    None => Err(ProxyError::NoRoute(
                        headers::authority_of(&req).unwrap_or_default().to_owned(),
                    )),
                };
                return self.finish(&call, &NO_ROUTE_ID, &NO_ROUTE, result);
            };
            if call.method == Method::CONNECT && by_authority {
                let result = self.tunnel(req, &dest).await;
                return self.finish(&call, &dest.default_rule.route, &dest.backend.name, result);
            }
            let (rule, prefix) = match &dest.router {
                None => (dest.default_rule.clone(), None),
                Some(router) => match router.route(req.method(), req.uri(), req.headers()) {
                    Some(m) => (m.action.clone(), m.prefix.map(str::to_owned)),
                    None => {
                        return self.finish(
                            &call,
                            &NO_ROUTE_ID,
                            &dest.backend.name,
                            Err(ProxyError::RouteNotFound),
                        );
                    }
                },
            };
            if let Some(answer) = rule.cors.as_ref().and_then(|c| c.preflight(&req)) {
                let answer = answer.map(|()| Body::empty());
                return self.finish(&call, &rule.route, &NO_ROUTE, Ok(answer));
            }
            let cors = rule.cors.as_ref().and_then(|c| c.for_actual(&req));
            if let Some(redirect) = &rule.redirect {
                let result = redirect_response(&req, redirect, prefix.as_deref(), dest.port);
                return self.finish(&call, &rule.route, &NO_ROUTE, result);
            }
            let picked = weighted::pick(
                &rule.weights,
                fastrand::u64(..weighted::total(&rule.weights).max(1)),
            );
            let Some((index, backend)) = picked.and_then(|i| Some((i, rule.backends.get(i)?)))
            else {
                return self.finish(&call, &rule.route, &NO_ROUTE, Err(ProxyError::NoBackend));
            };
            let result = self
                .exchange(req, &rule, index, prefix.as_deref(), &call)
                .await;
            let mut resp = self.shared.respond(DIRECTION, result, call.grpc);
            if let Some(cors) = cors {
                crate::cors::mark(resp.headers_mut(), *cors);
            }
            let status = resp.status().as_u16();
            let elapsed = call.start.elapsed();
            match rule.stats(index, &self.shared.metrics) {
                Some(stats) => stats.record(&self.shared.metrics, status, elapsed),
                None => self.shared.metrics.request(
                    DIRECTION,
                    &rule.route,
                    &backend.name,
                    status,
                    elapsed,
                ),
            }
            self.record_route(&call, &rule.route, &backend.name);
            resp
        }
    }

    /// The Service the request is for, and whether its authority named it. A redirected
    /// connection's original destination decides, whatever the authority says: the Service
    /// of a cluster IP, or none. Otherwise (HTTP proxy mode) the authority does.
    fn destination(&self, req: &Request<Body>) -> (Option<Arc<Destination>>, bool) {
        let snapshot = self.shared.state.load();
        let named = || headers::authority_of(req).and_then(|a| snapshot.by_authority(a));
        let Some(orig) = self.orig else {
            let named = named();
            return (named.cloned(), named.is_some());
        };
        let Some(d) = snapshot.by_vip(orig) else {
            return (None, false);
        };
        // Only a CONNECT asks whether its authority named the Service too.
        let by_authority =
            req.method() == Method::CONNECT && named().is_some_and(|n| Arc::ptr_eq(n, d));
        (Some(d.clone()), by_authority)
    }

    /// A request for an address that is no Service's (the redirected connection's original
    /// destination, else the authority's): to a meshed pod through its sidecar, anywhere else
    /// straight, once, as without a mesh. `None` when the authority is not an address, and
    /// the address when REGISTRY_ONLY refuses it.
    fn to_address(&self, req: &Request<Body>) -> Option<Result<Dial, SocketAddr>> {
        let addr = match self.orig {
            Some(orig) => orig,
            None => {
                let authority: http::uri::Authority = headers::authority_of(req)?.parse().ok()?;
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let ip: std::net::IpAddr = host.parse().ok()?;
                let addr = SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
                // The proxy's own outbound listener would take the request again, and
                // again: a loop.
                let own = self.shared.settings.outbound_addr;
                if addr == own || (own.ip().is_unspecified() && addr.port() == own.port()) {
                    return None;
                }
                addr
            }
        };
        Some(self.shared.state.load().address_dial(addr).ok_or(addr))
    }

    /// Sends a request to `dial` once: no route, no policy, no retry.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    fn passthrough(
        &self,
        mut req: BoxedRequest,
        dial: Dial,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
        async move {
            let prepared = forward::prepare(&mut req);
            let opts = SendOptions {
                reuse: prepared.upgrade.is_none(),
                backend: PASSTHROUGH.0.clone(),
                ..SendOptions::default()
            };
            let resp = self
                .shared
                .pools
                .send(dial, req, &opts)
                .await
                .map_err(|e| e.error)?;
            Ok(forward::complete(prepared, resp, &self.shared.tasks))
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    /// Sends the request to the rule's backend at `index`.
    fn exchange(
        &self,
        mut req: BoxedRequest,
        rule: &Rule,
        index: usize,
        prefix: Option<&str>,
        call: &Call<'_>,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
        async move {
            let (grpc, start, span) = (call.grpc, call.start, call.span);
            let Some(backend) = rule.backends.get(index) else {
                return Err(ProxyError::NoBackend);
            };
            let backend_filters = rule.backend_filters.get(index);
            // The rule's modifiers, then the chosen backend's.
            let request_headers = [
                rule.request_headers.as_ref(),
                backend_filters.and_then(|f| f.request_headers.as_ref()),
            ];
            for m in request_headers.into_iter().flatten() {
                m.apply(req.headers_mut());
            }
            if let Some(r) = &rule.rewrite {
                filters::rewrite_url(&mut req, r, prefix);
            }
            // The request's arrival time stands for the admission decisions made together here
            // and for the first attempt's start: microseconds apart, and a clock reading less.
            let now = start;
            if !backend.admit_rate(now) {
                return Err(ProxyError::RateLimited(backend.name.0.clone()));
            }
            let prepared = forward::prepare(&mut req);
            let upgrade = prepared.upgrade.is_some();

            let safety = OwnedSafety {
                method: req.method().clone(),
                idempotency_key: req.headers().contains_key(&IDEMPOTENCY_KEY),
                grpc,
                policy_opt_in: backend.policy.retry.retry_non_idempotent,
                extra_non_idempotent: backend.policy.retry.non_idempotent_methods.clone(),
            };
            // A retry after the request reached the upstream needs its head and body again:
            // keep them only when such a retry is possible (a retry policy; a request safe to
            // repeat, sent again after a reset; HTTP/2's REFUSED_STREAM and GOAWAY; a peer
            // sidecar's word that its application never had the request).
            let may_resend = !upgrade
                && (rule.retry.is_some()
                    || safety.borrow().resent_after_reset()
                    || req.version() == Version::HTTP_2
                    || backend.meshed);
            let keep = may_resend || !rule.mirrors.is_empty();
            // Boxed: the request future would otherwise keep its room whether or not it is.
            let replay = keep.then(|| Box::new(Replay::record(&mut req)));
            if let Some(replay) = &replay {
                for (mirror, numerator, denominator) in &rule.mirrors {
                    if fastrand::u32(..(*denominator).max(1)) < *numerator {
                        self.mirror(
                            mirror.clone(),
                            replay.head().clone(),
                            Some(replay.recorder().clone()),
                        );
                    }
                }
            }

            let Some(_in_flight) = backend.enter() else {
                return Err(ProxyError::Overloaded(backend.name.0.clone()));
            };
            backend.deposit(now);
            let deadline = rule.request_timeout.map(|t| start + t);
            // Pinned where it stands, so that `within` moves a pointer, not the future.
            let attempts = pin!(self.attempts(
                req,
                rule,
                backend,
                replay.as_deref().filter(|_| may_resend),
                &safety,
                upgrade,
                now,
                span,
            ));
            let attempts = within(deadline, attempts).await;
            // `None`: the deadline passed, so there was a request timeout.
            let result = attempts.unwrap_or_else(|| {
                Err(ProxyError::Timeout(
                    rule.request_timeout.unwrap_or_default(),
                ))
            });
            let mut resp = forward::complete(prepared, result?, &self.shared.tasks);
            let response_headers = [
                rule.response_headers.as_ref(),
                backend_filters.and_then(|f| f.response_headers.as_ref()),
            ];
            for m in response_headers.into_iter().flatten() {
                m.apply(resp.headers_mut());
            }
            // The attempts have put the body's deadline on it.
            Ok(resp)
        }
    }

    /// Attempts until one succeeds or may not be retried.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice: see the module docs"
    )]
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a borrow or a copy from the exchange's own state, which it outlives"
    )]
    fn attempts(
        &self,
        mut req: BoxedRequest,
        rule: &Rule,
        backend: &Arc<Backend>,
        replay: Option<&Replay>,
        safety: &OwnedSafety,
        upgrade: bool,
        now: Instant,
        span: Option<&Span>,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
        async move {
            let (max_retries, base_backoff) = rule
                .retry
                .as_ref()
                .map_or((SAFE_RETRIES, SAFE_BACKOFF), |r| (r.attempts, r.backoff.0));
            let opts = SendOptions {
                // An upgraded connection leaves HTTP: it never returns to a pool or shares one.
                reuse: !upgrade,
                limiter: backend.conn_limiter(),
                connect_timeout: backend.policy.connect_timeout,
                backend: backend.name.0.clone(),
            };
            let hash_headers: HeaderMap = match backend.policy.hash_header.as_ref() {
                Some(h) => req
                    .headers()
                    .get(h)
                    .map(|v| HeaderMap::from_iter([(h.clone(), v.clone())]))
                    .unwrap_or_default(),
                None => HeaderMap::new(),
            };
            let mut tried = Vec::new();
            let mut retries = 0;
            let mut unprocessed = 0;
            // The first attempt starts at `now`; a retry, after its backoff, reads the clock.
            let mut first = Some(now);
            loop {
                let sent_at = first.take().unwrap_or_else(Instant::now);
                let picked = match backend.pick(&hash_headers, &tried, sent_at) {
                    Ok(p) => p,
                    Err(NoEndpoint::Empty) => {
                        return Err(ProxyError::NoEndpoints(backend.name.0.clone()));
                    }
                    Err(NoEndpoint::AllEjected) => {
                        return Err(ProxyError::BreakerOpen(backend.name.0.clone()));
                    }
                };
                tried.push(picked.index);
                // In a block, so that the send's future is gone before any backoff.
                let sent = {
                    let send = pin!(self.shared.pools.send(
                        picked.endpoint.dial.clone(),
                        req,
                        &opts
                    ));
                    within(rule.backend_timeout.map(|t| sent_at + t), send).await
                };
                let result = sent.unwrap_or_else(|| {
                    Err(SendError {
                        error: ProxyError::Timeout(rule.backend_timeout.unwrap_or_default()),
                        unsent: None,
                    })
                });
                let Ended {
                    attempt,
                    outcome,
                    result,
                    unsent,
                } = classify(
                    result,
                    safety.grpc,
                    matches!(picked.endpoint.dial, Dial::Peer { .. }),
                );
                if let Some(span) = span {
                    let identity = match &picked.endpoint.dial {
                        Dial::Peer { identity, .. } => identity.as_deref(),
                        Dial::Direct(_) => None,
                    };
                    traces::on_attempt(
                        span,
                        i64::from(retries + unprocessed) + 1,
                        picked.endpoint.address,
                        &attempt,
                        identity,
                    );
                }
                let ended_at = Instant::now();
                let latency = match attempt {
                    Attempt::Response { .. } | Attempt::TimedOut => Some(ended_at - sent_at),
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    backend.record(
                        picked.index,
                        outcome,
                        latency,
                        ended_at,
                        &self.shared.metrics,
                    );
                }
                drop(picked);

                // The answer the client gets: its body must end by the earlier of the request
                // timeout and this attempt's (the Gateway API's backendRequest runs until the
                // whole response has arrived), one deadline for both.
                let answer = |result: Result<Response<Body>, ProxyError>| {
                    let deadline = [
                        rule.request_timeout.map(|t| now + t),
                        rule.backend_timeout.map(|t| sent_at + t),
                    ]
                    .into_iter()
                    .flatten()
                    .min();
                    result.map(|resp| with_deadline(resp, deadline))
                };
                let reason = retry::reason(attempt, rule.retry.as_ref(), &safety.borrow());
                let not_processed = matches!(
                    attempt,
                    Attempt::NotSent(Unsent::GoAway | Unsent::RefusedStream)
                );
                let exhausted = if not_processed {
                    unprocessed >= MAX_UNPROCESSED
                } else {
                    retries >= max_retries
                };
                if reason.is_none() || exhausted {
                    return answer(result);
                }
                // The next attempt sends the request as it was, if it never left, or again from its
                // head and recorded body.
                let again = unsent.or_else(|| replay?.again());
                let Some(again) = again else {
                    return answer(result);
                };
                if !backend.try_retry(Instant::now()) {
                    self.shared.metrics.budget_exhausted(&backend.name);
                    return answer(
                        result.or(Err(ProxyError::BudgetExhausted(backend.name.0.clone()))),
                    );
                }
                let reason = reason.map_or("unknown", retry::Reason::as_str);
                self.shared
                    .metrics
                    .retry(DIRECTION, &rule.route, &backend.name, reason);
                if let Some(span) = span {
                    traces::on_retry(span, reason);
                }
                tracing::debug!(
                    backend = &*backend.name.0,
                    reason,
                    retry = retries + unprocessed + 1,
                    "retrying"
                );
                drop(result);
                if not_processed {
                    // Another connection takes it at once.
                    unprocessed += 1;
                } else {
                    tokio::time::sleep(retry::backoff(base_backoff, retries, fastrand::f64()))
                        .await;
                    retries += 1;
                }
                req = again;
            }
        }
    }

    /// Sends a copy of the request to `backend`, ignoring the answer. The copy waits for the
    /// original's body to be recorded; a body too large to record is not mirrored.
    fn mirror(&self, backend: Arc<Backend>, head: Head, recorder: Option<Recorder>) {
        let shared = self.shared.clone();
        if shared.mirrors_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_MIRRORS {
            shared.mirrors_in_flight.fetch_sub(1, Ordering::AcqRel);
            shared.metrics.mirror(&backend.name, "dropped");
            return;
        }
        tokio::spawn(async move {
            let result = async {
                let body = match recorder {
                    Some(r) => Body::Replay(Box::new(r.settled().await.ok_or("skipped")?)),
                    None => Body::Empty,
                };
                let req = Box::new(head.request(body));
                let picked = backend
                    .pick(req.headers(), &[], Instant::now())
                    .map_err(|_| "no-endpoint")?;
                let opts = SendOptions::reusable();
                let send = shared.pools.send(picked.endpoint.dial.clone(), req, &opts);
                match tokio::time::timeout(MIRROR_TIMEOUT, send).await {
                    Ok(Ok(resp)) => {
                        // Read the answer so the connection can be reused.
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                        Ok("ok")
                    }
                    Ok(Err(_)) => Err("error"),
                    Err(_) => Err("timeout"),
                }
            }
            .await;
            shared
                .metrics
                .mirror(&backend.name, result.unwrap_or_else(|e| e));
            shared.mirrors_in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// `CONNECT` to a Service: the proxy is the tunnel's end, and carries the bytes to an
    /// endpoint as opaque TCP.
    async fn tunnel(
        &self,
        mut req: BoxedRequest,
        dest: &Destination,
    ) -> Result<Response<Body>, ProxyError> {
        let backend = &dest.backend;
        let picked = match backend.pick(req.headers(), &[], Instant::now()) {
            Ok(p) => p,
            Err(NoEndpoint::Empty) => return Err(ProxyError::NoEndpoints(backend.name.0.clone())),
            Err(NoEndpoint::AllEjected) => {
                return Err(ProxyError::BreakerOpen(backend.name.0.clone()));
            }
        };
        let connected = self
            .shared
            .pools
            .connector()
            .connect(&picked.endpoint.dial, transport_header::Protocol::Opaque)
            .await;
        let outcome = if connected.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        backend.record(
            picked.index,
            outcome,
            None,
            Instant::now(),
            &self.shared.metrics,
        );
        let mut upstream = connected?;
        let on_upgrade = crate::http::server::on_upgrade(&mut req);
        self.shared.tasks.spawn(async move {
            match on_upgrade.wait().await {
                Ok(mut down) => {
                    if let Err(e) = splice(&mut down, &mut upstream).await {
                        tracing::debug!(error = %e, "CONNECT tunnel ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        Ok(Response::new(Body::empty()))
    }

    /// Ends a request that was not routed to a backend's rule: the response, its metrics and
    /// its access log line.
    fn finish(
        &self,
        call: &Call<'_>,
        route: &RouteId,
        backend: &Name,
        result: Result<Response<Body>, ProxyError>,
    ) -> Response<Body> {
        let resp = self.shared.respond(DIRECTION, result, call.grpc);
        let status = resp.status().as_u16();
        let elapsed = call.start.elapsed();
        self.shared
            .metrics
            .request(DIRECTION, route, backend, status, elapsed);
        self.record_route(call, route, backend);
        resp
    }

    /// Records the route and backend that took the request on its record, for its span and
    /// access log line.
    fn record_route(&self, call: &Call<'_>, route: &RouteId, backend: &Name) {
        if let Some(span) = call.span {
            traces::on_route(span, route, backend);
        }
    }
}

/// A response whose body fails if it has not ended by `deadline`.
fn with_deadline(resp: Response<Body>, deadline: Option<Instant>) -> Response<Body> {
    match deadline {
        None => resp,
        Some(deadline) => resp.map(|inner| {
            Body::Deadline(Box::new(DeadlineBody {
                inner,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
            }))
        }),
    }
}

/// A RequestRedirect's answer: its status, the `Location`, and no body. A request without
/// the host that the Location needs is a bad one.
fn redirect_response(
    req: &Request<Body>,
    redirect: &weft_api::gateway::RequestRedirect,
    prefix: Option<&str>,
    port: u16,
) -> Result<Response<Body>, ProxyError> {
    let location = filters::redirect_location(req, redirect, prefix, port)
        .ok_or(ProxyError::Denied(errors::Reason::BadRequest))?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() =
        http::StatusCode::from_u16(redirect.status()).unwrap_or(http::StatusCode::FOUND);
    resp.headers_mut().insert(http::header::LOCATION, location);
    Ok(resp)
}

/// What makes the request safe to repeat ([`Safety`]), kept while the request is in flight.
struct OwnedSafety {
    method: Method,
    idempotency_key: bool,
    grpc: bool,
    policy_opt_in: bool,
    extra_non_idempotent: Vec<String>,
}

impl OwnedSafety {
    fn borrow(&self) -> Safety<'_> {
        Safety {
            method: &self.method,
            idempotency_key: self.idempotency_key,
            grpc: self.grpc,
            policy_opt_in: self.policy_opt_in,
            extra_non_idempotent: &self.extra_non_idempotent,
        }
    }
}

/// gRPC statuses that mean the server failed, not that the call was wrong.
fn grpc_failure(code: u8) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

/// How an attempt ended.
struct Ended {
    attempt: Attempt,
    /// For the breaker; nothing when the client caused the failure.
    outcome: Option<Outcome>,
    result: Result<Response<Body>, ProxyError>,
    /// The request, if it was never sent.
    unsent: Option<Box<Request<Body>>>,
}

/// How an attempt ended; only a gRPC call's response is read for a `grpc-status`. An answer
/// from a peer sidecar (`from_peer`) may say that its application never had the request
/// ([`UNSENT_HEADER`], taken off here): that is the attempt's end.
fn classify(result: Result<Response<Body>, SendError<Body>>, grpc: bool, from_peer: bool) -> Ended {
    match result {
        Ok(mut resp) => {
            if from_peer
                && let Some(unsent) = resp.headers_mut().remove(&UNSENT_HEADER)
                && let Some(unsent) = Unsent::parse(unsent.as_bytes())
            {
                return Ended {
                    attempt: Attempt::NotSent(unsent),
                    outcome: unsent.is_failure().then_some(Outcome::Failure),
                    result: Ok(resp),
                    unsent: None,
                };
            }
            let status = resp.status().as_u16();
            let grpc_status = grpc
                .then(|| resp.headers().get(&GRPC_STATUS))
                .flatten()
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let failed = status >= 500 || grpc_status.is_some_and(grpc_failure);
            let outcome = if failed {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            Ended {
                attempt: Attempt::Response {
                    status,
                    grpc_status,
                },
                outcome: Some(outcome),
                result: Ok(resp),
                unsent: None,
            }
        }
        Err(SendError { error, unsent }) => {
            let attempt = match &error {
                ProxyError::Timeout(_) => Attempt::TimedOut,
                e if e.blame() == Blame::Downstream => Attempt::Aborted,
                e => e.unsent().map_or(Attempt::Reset, Attempt::NotSent),
            };
            // Neither the client leaving nor a connection's ordinary end is the endpoint's
            // fault.
            let outcome = match attempt {
                Attempt::Aborted => None,
                Attempt::NotSent(unsent) if !unsent.is_failure() => None,
                _ => Some(Outcome::Failure),
            };
            Ended {
                attempt,
                outcome,
                result: Err(error),
                unsent,
            }
        }
    }
}
