//! Traces: W3C trace context, parent-based sampling, and spans exported over OTLP.
//!
//! The request path holds no OpenTelemetry machinery. A sampled request gets a [`Span`], a
//! plain record of its ids, start time and attributes, and its end hands the span to a
//! bounded queue with `try_send`. One task drains the queue in batches to the collector
//! through opentelemetry-otlp's gRPC exporter. When the queue is full (a slow or dead
//! collector) the span is dropped and counted: nothing on the request path ever waits for
//! the exporter.
//!
//! Sampling is parent-based: a request that carries a `traceparent` is sampled as its sampled
//! flag says; one without is sampled with the `--trace-sampling` ratio. A sampled request's
//! `traceparent` is replaced by one naming the proxy's span, so that the next hop's spans
//! (the peer proxy's, then the application's) nest under it; `tracestate` passes as it came.
//! An unsampled request's headers are left as they arrived.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::mpsc;

use std::net::SocketAddr;

use crate::access_log::{AccessLog, Entry};
use crate::metrics::{Direction, Metrics, Name, RouteId};
use crate::policy::retry::Attempt;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Spans waiting for the exporter; beyond, new ones are dropped.
const QUEUE: usize = 2048;
/// The most spans sent in one export.
const BATCH: usize = 512;
/// How long a batch waits to fill before it is sent anyway.
const LINGER: Duration = Duration::from_millis(500);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A W3C trace context: the `traceparent` header's trace id, parent id and sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` value: `version-traceid-parentid-flags`, lower-case hex. A later
    /// version may append fields after a dash; version `ff`, all-zero ids and anything
    /// malformed are refused, and the request is then treated as carrying none.
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        let hex = |b: &[u8]| -> Option<u128> {
            if b.iter().any(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            u128::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
        };
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex(&value[..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value.len() > 55 && value[55] != b'-' {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let span_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = hex(&value[53..55])?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value naming this context.
    pub fn header(&self) -> HeaderValue {
        let text = format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// One request's record while it runs: everything its span and its access log line need but
/// the end. Only a sampled one is exported; with the access log on, every request has one.
pub struct Span {
    kind: SpanKind,
    name: &'static str,
    /// A sampled span's own context; otherwise the caller's, if it sent one (its trace id is
    /// logged).
    context: Option<TraceContext>,
    parent: Option<u64>,
    sampled: bool,
    start: SystemTime,
    started: std::time::Instant,
    recorded: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    error: Option<String>,
    attempts: i64,
    retry_reasons: Vec<&'static str>,
}

impl Span {
    /// Sets an attribute, replacing the key's earlier value.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        let mut recorded = weft_api::sync::lock(&self.recorded);
        let value = value.into();
        match recorded
            .attributes
            .iter_mut()
            .find(|kv| kv.key.as_str() == key)
        {
            Some(kv) => kv.value = value,
            None => recorded.attributes.push(KeyValue::new(key, value)),
        }
    }

    /// Records an event now, with its attributes.
    pub fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        weft_api::sync::lock(&self.recorded).events.push(Event::new(
            name,
            SystemTime::now(),
            attributes,
            0,
        ));
    }

    /// Marks the span failed, with a description (the span status).
    pub fn fail(&self, description: impl Into<String>) {
        weft_api::sync::lock(&self.recorded).error = Some(description.into());
    }

    pub fn context(&self) -> Option<TraceContext> {
        self.context
    }
}

impl Recorded {
    /// An attribute's value as text, if it is set.
    fn get(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }
}

/// What watches requests: the trace exporter, the access log, either or both. A proxy with
/// neither has no observer, and its requests pay nothing.
pub struct Observer {
    export: Option<Export>,
    access_log: Option<AccessLog>,
    metrics: Arc<Metrics>,
}

/// The trace exporter's end of the queue, and how requests are sampled.
struct Export {
    /// A request without a parent is sampled when a random `u64` is below this.
    threshold: u64,
    queue: mpsc::Sender<SpanData>,
    scope: InstrumentationScope,
}

impl Observer {
    pub fn new(metrics: Arc<Metrics>) -> Observer {
        Observer {
            export: None,
            access_log: None,
            metrics,
        }
    }

    /// Exports spans to `endpoint` (`http://collector:4317`) with the resource's attributes;
    /// `ratio` is the share of requests without a parent that are sampled, 0 to 1. Returns
    /// the task that exports, to be spawned on the runtime.
    pub fn export_to(
        &mut self,
        endpoint: &str,
        ratio: f64,
        resource: Vec<KeyValue>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("the OTLP exporter for {endpoint:?}: {e}"))?;
        exporter.set_resource(&Resource::builder_empty().with_attributes(resource).build());
        let (queue, rx) = mpsc::channel(QUEUE);
        self.export = Some(Export {
            threshold: threshold(ratio),
            queue,
            scope: InstrumentationScope::builder("weft-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        });
        Ok(export(rx, exporter, self.metrics.clone()))
    }

    /// Writes a line per request.
    pub fn log_to(&mut self, access_log: AccessLog) {
        self.access_log = Some(access_log);
    }

    /// Starts the record of a request whose headers are `headers`: `None` when it is neither
    /// sampled nor logged, and then its headers are left as they came. A recorded request
    /// without `x-request-id` gets one (generating and forwarding it costs about 12% of a
    /// request's instructions, so an unrecorded request is spared it). A sampled request's
    /// `traceparent` is replaced by the new span's.
    pub fn start(
        &self,
        kind: SpanKind,
        name: &'static str,
        headers: &mut HeaderMap,
    ) -> Option<Box<Span>> {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_bytes()));
        let sampled = self.export.as_ref().is_some_and(|e| match parent {
            Some(p) => p.sampled,
            None => e.threshold != 0 && fastrand::u64(..) < e.threshold,
        });
        if !sampled && self.access_log.is_none() {
            return None;
        }
        if !headers.contains_key(&REQUEST_ID) {
            headers.insert(REQUEST_ID.clone(), request_id());
        }
        let context = if sampled {
            let own = TraceContext {
                trace_id: parent.map_or_else(nonzero_u128, |p| p.trace_id),
                span_id: nonzero_u64(),
                sampled: true,
            };
            headers.insert(TRACEPARENT.clone(), own.header());
            Some(own)
        } else {
            parent
        };
        Some(Box::new(Span {
            kind,
            name,
            context,
            parent: parent.map(|p| p.span_id),
            sampled,
            start: SystemTime::now(),
            started: std::time::Instant::now(),
            recorded: Mutex::new(Recorded::default()),
        }))
    }

    /// Ends a request's record now, its response having carried `bytes` of body: its access
    /// log line, and for a sampled one its span, queued for export (dropped and counted when
    /// the queue is full).
    pub fn end(&self, span: Box<Span>, bytes: u64) {
        span.set(
            "http.response.body.size",
            i64::try_from(bytes).unwrap_or(i64::MAX),
        );
        if let Some(log) = &self.access_log {
            let recorded = weft_api::sync::lock(&span.recorded);
            let get = |key| recorded.get(key);
            let entry = Entry {
                time: span.start,
                direction: get("weft.direction"),
                method: get("http.request.method"),
                authority: get("server.address").map(|host| match get("server.port") {
                    Some(port) if port != "80" => format!("{host}:{port}"),
                    _ => host,
                }),
                path: get("url.path"),
                protocol: get("network.protocol.version"),
                status: get("http.response.status_code").and_then(|s| s.parse().ok()),
                duration: span.started.elapsed(),
                bytes,
                upstream: get("weft.endpoint"),
                route: get("weft.route"),
                rule: get("weft.rule"),
                backend: get("weft.backend"),
                attempts: recorded.attempts,
                retry_reasons: recorded.retry_reasons.clone(),
                peer: get("weft.peer.identity"),
                mtls: get("weft.mtls").map(|m| m == "true"),
                error: get("weft.error"),
                trace_id: span.context.map(|c| format!("{:032x}", c.trace_id)),
                span_id: span
                    .context
                    .filter(|_| span.sampled)
                    .map(|c| format!("{:016x}", c.span_id)),
                request_id: get("weft.request_id"),
            };
            drop(recorded);
            if !log.write(&entry) {
                self.metrics.access_log_dropped();
            }
        }
        let Some(export) = &self.export else { return };
        if !span.sampled {
            return;
        }
        let Span {
            kind,
            name,
            context,
            parent,
            start,
            recorded,
            ..
        } = *span;
        let Some(context) = context else { return };
        let mut recorded = recorded.into_inner().unwrap_or_else(|e| e.into_inner());
        if recorded.attempts > 0 {
            recorded
                .attributes
                .push(KeyValue::new("weft.attempts", recorded.attempts));
        }
        if !recorded.retry_reasons.is_empty() {
            let reasons: Vec<opentelemetry::StringValue> =
                recorded.retry_reasons.iter().map(|r| (*r).into()).collect();
            recorded.attributes.push(KeyValue::new(
                "weft.retry_reasons",
                Value::Array(reasons.into()),
            ));
        }
        let mut events = SpanEvents::default();
        events.events = recorded.events;
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(context.trace_id.to_be_bytes()),
                SpanId::from_bytes(context.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(parent.unwrap_or(0).to_be_bytes()),
            parent_span_is_remote: parent.is_some(),
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: SystemTime::now(),
            attributes: recorded.attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: match recorded.error {
                Some(description) => Status::error(description),
                None => Status::Unset,
            },
            instrumentation_scope: export.scope.clone(),
        };
        if export.queue.try_send(data).is_err() {
            self.metrics.spans("dropped", 1);
        }
    }
}

/// A random version 4 UUID, as Envoy's request ids are, written in place (one copy, into the
/// header value).
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (fastrand::u128(..) & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut text = [b'-'; 36];
    let mut nibble = 0;
    for (i, byte) in text.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *byte = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The span name the HTTP semantic conventions give a request without a route template: its
/// method, or `HTTP` for a method of its own.
pub fn span_name(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "HTTP",
    }
}

/// The request's attributes, as the OpenTelemetry HTTP semantic conventions name them.
pub fn on_request<B>(span: &Span, req: &http::Request<B>, direction: Direction) {
    span.set("weft.direction", direction.as_str());
    span.set("http.request.method", req.method().as_str().to_owned());
    span.set("url.path", req.uri().path().to_owned());
    if let Some(query) = req.uri().query() {
        span.set("url.query", query.to_owned());
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok());
    if let Some(authority) = authority
        && let Ok(authority) = authority.parse::<http::uri::Authority>()
    {
        span.set("server.address", authority.host().to_owned());
        span.set("server.port", i64::from(authority.port_u16().unwrap_or(80)));
        if direction == Direction::Outbound {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            span.set("url.full", format!("http://{authority}{path}"));
        }
    }
    span.set(
        "network.protocol.version",
        match req.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    );
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(agent) = header("user-agent") {
        span.set("user_agent.original", agent.to_owned());
    }
    if let Some(id) = header("x-request-id") {
        span.set("weft.request_id", id.to_owned());
    }
}

/// The response's attributes, and the span's status: an error for a 5xx answer, and on the
/// client side for a 4xx too, as the HTTP conventions say.
pub fn on_response<B>(span: &Span, resp: &http::Response<B>, server: bool) {
    let status = resp.status().as_u16();
    span.set("http.response.status_code", i64::from(status));
    let error = resp
        .headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok());
    if let Some(error) = error {
        span.set("weft.error", error.to_owned());
    }
    let failed = status >= 500 || (!server && status >= 400);
    if failed {
        span.fail(error.map_or_else(|| format!("HTTP {status}"), str::to_owned));
    }
}

/// The route, rule and backend that took the request.
pub fn on_route(span: &Span, route: &RouteId, backend: &Name) {
    if !route.route.0.is_empty() {
        span.set("weft.route", route.route.0.to_string());
    }
    if let Some(rule) = &route.rule {
        span.set("weft.rule", rule.0.to_string());
    }
    if !backend.0.is_empty() {
        span.set("weft.backend", backend.0.to_string());
    }
}

/// One attempt's end: an event with its endpoint and outcome; the span's endpoint, peer and
/// mTLS attributes are the last attempt's. `identity` is the peer sidecar's expected SPIFFE
/// ID when the endpoint is reached over mesh TLS.
pub fn on_attempt(
    span: &Span,
    number: i64,
    endpoint: SocketAddr,
    attempt: &Attempt,
    identity: Option<&str>,
) {
    let outcome = match attempt {
        Attempt::Response { .. } => "response",
        Attempt::NotSent(_) => "not-sent",
        Attempt::Reset => "reset",
        Attempt::TimedOut => "timeout",
        Attempt::Aborted => "aborted",
    };
    let mut attributes = vec![
        KeyValue::new("weft.attempt", number),
        KeyValue::new("weft.endpoint", endpoint.to_string()),
        KeyValue::new("weft.outcome", outcome),
    ];
    if let Attempt::Response { status, .. } = attempt {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(*status),
        ));
    }
    span.event("attempt", attributes);
    span.set("weft.endpoint", endpoint.to_string());
    span.set("weft.mtls", identity.is_some());
    if let Some(identity) = identity {
        span.set("weft.peer.identity", identity.to_owned());
    }
    weft_api::sync::lock(&span.recorded).attempts = number;
}

/// A retry about to be sent, and why.
pub fn on_retry(span: &Span, reason: &'static str) {
    weft_api::sync::lock(&span.recorded)
        .retry_reasons
        .push(reason);
}

/// Sends the queued spans in batches until every tracer is gone.
async fn export(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        if batch.len() < BATCH {
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while batch.len() < BATCH {
                let room = BATCH - batch.len();
                tokio::select! {
                    _ = &mut linger => break,
                    n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                }
            }
        }
        let n = batch.len() as u64;
        match exporter.export(std::mem::take(&mut batch)).await {
            Ok(()) => metrics.spans("exported", n),
            Err(e) => {
                metrics.spans("failed", n);
                tracing::debug!(error = %e, spans = n, "exporting spans failed");
            }
        }
        batch = Vec::with_capacity(BATCH);
    }
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio > 0.0 {
        (ratio * u64::MAX as f64) as u64
    } else {
        0
    }
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_and_formats_as_w3c_says() {
        let sample = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(sample).unwrap();
        assert_eq!(
            parsed,
            TraceContext {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                span_id: 0x00f067aa0ba902b7,
                sampled: true,
            }
        );
        assert_eq!(parsed.header().as_bytes(), sample);
        let refused: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ];
        for value in refused {
            assert_eq!(
                TraceContext::parse(value),
                None,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        // A later version may carry more fields; the first four are read.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert_eq!(TraceContext::parse(later).map(|c| c.sampled), Some(false));
    }

    fn tracer(ratio: f64) -> (Observer, mpsc::Receiver<SpanData>) {
        let (queue, rx) = mpsc::channel(4);
        let mut observer = Observer::new(Metrics::new());
        observer.export = Some(Export {
            threshold: threshold(ratio),
            queue,
            scope: InstrumentationScope::builder("test").build(),
        });
        (observer, rx)
    }

    #[test]
    fn sampling_follows_the_parent_and_else_the_ratio() {
        let parent = |flags: &str| {
            let mut headers = HeaderMap::new();
            let value = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            headers.insert(&TRACEPARENT, HeaderValue::from_str(&value).unwrap());
            headers.insert(&REQUEST_ID, HeaderValue::from_static("r-1"));
            headers
        };
        let (never, _) = tracer(0.0);
        // A sampled parent is followed whatever the ratio: the trace goes on, under a new
        // span of the proxy's, which the next hop sees as its parent.
        let mut headers = parent("01");
        let span = never.start(SpanKind::Server, "t", &mut headers).unwrap();
        let sent = TraceContext::parse(headers[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(sent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(Some(sent), span.context());
        assert_ne!(sent.span_id, 0x00f067aa0ba902b7);
        assert_eq!(span.parent, Some(0x00f067aa0ba902b7));
        assert_eq!(headers[&REQUEST_ID], "r-1", "a request id is kept");
        // An unsampled parent is followed too, and its header left as it came.
        let (always, mut rx) = tracer(1.0);
        let mut headers = parent("00");
        assert!(always.start(SpanKind::Server, "t", &mut headers).is_none());
        assert_eq!(headers, parent("00"));
        // Without a parent, the ratio decides, and a sampled request starts a trace. An
        // unrecorded request is left as it came; a recorded one without an id gets one, a
        // version 4 UUID.
        let mut headers = HeaderMap::new();
        assert!(never.start(SpanKind::Client, "t", &mut headers).is_none());
        assert!(headers.is_empty());
        let mut first = HeaderMap::new();
        let span = always.start(SpanKind::Client, "t", &mut first).unwrap();
        always.end(span, 0);
        let _ = rx.try_recv();
        let id = first[&REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!((&id[14..15], &id[8..9]), ("4", "-"), "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        let mut headers = HeaderMap::new();
        let span = always.start(SpanKind::Client, "t", &mut headers).unwrap();
        assert_eq!(span.parent, None);
        assert_ne!(headers[&REQUEST_ID], id, "each request its own id");
        span.set("http.response.status_code", 200_i64);
        always.end(span, 0);
        let exported = rx.try_recv().unwrap();
        assert_eq!(exported.span_kind, SpanKind::Client);
        assert_eq!(exported.attributes.len(), 2, "the status and the body size");
        assert!(!exported.parent_span_is_remote);
        // A full queue drops, and counts.
        for _ in 0..5 {
            let span = always
                .start(SpanKind::Client, "t", &mut HeaderMap::new())
                .unwrap();
            always.end(span, 0);
        }
        assert!(
            always
                .metrics
                .encode()
                .contains(r#"weft_trace_spans_total{result="dropped"} 1"#)
        );
    }

    #[test]
    fn the_ratio_is_a_threshold() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(2.0), u64::MAX);
        let half = threshold(0.5);
        assert!(half > u64::MAX / 2 - 1000 && half < u64::MAX / 2 + 1000);
    }
}
