//! Traces over OTLP: two sidecars with mutual TLS export to a receiver in the test, and the
//! W3C trace context goes from the caller through both proxies to the application.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use weft_tests::client;
use weft_tests::control::ControlPlane;
use weft_tests::eventually;
use weft_tests::manifests::Manifests;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::otlp::{OtlpReceiver, ReceivedSpan};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

use crate::get;
use crate::identity::all_acked;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `GET url` through `proxy` with `headers`: the status, and the request head the
/// application saw (its `/head` answer).
async fn head_seen(
    proxy: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut conn = client::http1(proxy).await.unwrap();
    let resp = conn.send_request(get(url, headers)).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// The application's `traceparent`, split: (trace id, parent id, flags).
fn traceparent(seen: &serde_json::Value) -> (String, String, String) {
    let value = seen["headers"]["traceparent"].as_str().unwrap_or_default();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?} in {seen}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The spans of `trace`, once there are `n` of them.
async fn spans_of(receiver: &OtlpReceiver, trace: &str, n: usize) -> Vec<ReceivedSpan> {
    eventually(
        &format!("{n} spans of trace {trace}"),
        Duration::from_secs(15),
        || async {
            let spans: Vec<ReceivedSpan> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            (spans.len() >= n).then_some(spans)
        },
    )
    .await
}

fn of_kind<'a>(spans: &'a [ReceivedSpan], kind: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} span in {spans:#?}");
    found[0]
}

/// `shop/productpage` calling the Service `shop/reviews` over mutual TLS: both sidecars
/// joined to a control plane, with `flags`, and the configs acknowledged.
struct Pair {
    app: HttpBackend,
    server: Proxy,
    client: Proxy,
    _cp: ControlPlane,
}

impl Pair {
    async fn start(flags: &[&str]) -> Pair {
        let cp = ControlPlane::start(pod_ip()).await;
        let server_ip = pod_ip();
        let app = HttpBackend::start(at(server_ip, 8080), "reviews").await;
        let server = Proxy::joined(server_ip, &cp, "shop", "reviews", flags).await;
        let manifests = Manifests::new()
            .doc("apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  selector: {app: reviews}\n  ports: [{port: 9080, targetPort: 8080}]\n")
            .pod("shop", "reviews", &[("app", "reviews")], app.addr, true);
        cp.write("mesh.yaml", &manifests.yaml());
        let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", flags).await;
        all_acked(&cp, &manifests, &[(&client, None), (&server, None)]).await;
        Pair {
            app,
            server,
            client,
            _cp: cp,
        }
    }
}

#[tokio::test]
async fn both_proxies_trace_a_request_and_the_application_nests_under_them() {
    let receiver = OtlpReceiver::start(pod_ip()).await;
    let endpoint = receiver.endpoint();
    let Pair {
        app,
        server: _server,
        client,
        _cp,
    } = Pair::start(&["--otlp-endpoint", endpoint.as_str()]).await;

    // A caller's sampled trace goes on through both proxies.
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, seen) = head_seen(
        client.outbound,
        "http://reviews.shop:9080/head?x=1",
        &[("traceparent", &caller), ("tracestate", "vendor=opaque")],
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    let spans = spans_of(&receiver, TRACE, 2).await;
    let out = of_kind(&spans, "SPAN_KIND_CLIENT");
    let inb = of_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(
        out.parent_span_id, CALLER_SPAN,
        "the client span is the caller's child"
    );
    assert_eq!(
        inb.parent_span_id, out.span_id,
        "the server span is the client span's"
    );
    let (trace, parent, flags) = traceparent(&seen);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(
        parent, inb.span_id,
        "the application's parent is the server span"
    );
    assert_eq!(
        seen["headers"]["tracestate"], "vendor=opaque",
        "tracestate passes"
    );

    let want_out = [
        ("http.request.method", "GET"),
        ("url.full", "http://reviews.shop:9080/head?x=1"),
        ("server.address", "reviews.shop"),
        ("server.port", "9080"),
        ("http.response.status_code", "200"),
        ("weft.direction", "outbound"),
        ("weft.route", "default"),
        ("weft.backend", "shop/reviews:9080"),
        ("weft.endpoint", &app.addr.to_string()),
        ("weft.attempts", "1"),
        ("weft.mtls", "true"),
        (
            "weft.peer.identity",
            "spiffe://cluster.local/ns/shop/sa/reviews",
        ),
    ];
    let want_in = [
        ("http.request.method", "GET"),
        ("url.path", "/head"),
        ("url.query", "x=1"),
        ("http.response.status_code", "200"),
        ("weft.direction", "inbound"),
        ("weft.mtls", "true"),
        (
            "weft.peer.identity",
            "spiffe://cluster.local/ns/shop/sa/productpage",
        ),
    ];
    for (span, want) in [(out, &want_out[..]), (inb, &want_in[..])] {
        for (key, value) in want {
            assert_eq!(
                span.attributes.get(*key).map(String::as_str),
                Some(*value),
                "{} {key} in {:#?}",
                span.kind,
                span.attributes
            );
        }
        assert_eq!(span.name, "GET");
        assert_eq!(span.resource["service.name"], "weft-proxy");
        assert_eq!(span.resource["k8s.namespace.name"], "shop");
    }
    let attempts: Vec<&str> = out
        .events
        .iter()
        .filter(|(name, _)| name == "attempt")
        .map(|(_, a)| a["weft.outcome"].as_str())
        .collect();
    assert_eq!(attempts, ["response"]);

    // Without a traceparent the client's sidecar starts a trace, and the server's continues it.
    let (status, seen) = head_seen(client.outbound, "http://reviews.shop:9080/head", &[]).await;
    assert_eq!(status, 200);
    let (trace, parent, _) = traceparent(&seen);
    assert_ne!(trace, TRACE);
    let spans = spans_of(&receiver, &trace, 2).await;
    let out = of_kind(&spans, "SPAN_KIND_CLIENT");
    let inb = of_kind(&spans, "SPAN_KIND_SERVER");
    assert_eq!(out.parent_span_id, "", "a root span");
    assert_eq!(inb.parent_span_id, out.span_id);
    assert_eq!(parent, inb.span_id);

    // An unsampled caller is honoured: no span, and its traceparent reaches the application
    // as it was sent.
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "a".repeat(32));
    let (status, seen) = head_seen(
        client.outbound,
        "http://reviews.shop:9080/head",
        &[("traceparent", &unsampled)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["traceparent"], unsampled.as_str());
    // The spans of the next sampled request arrive after any of it would have.
    let (_, seen) = head_seen(client.outbound, "http://reviews.shop:9080/head", &[]).await;
    let (next, _, _) = traceparent(&seen);
    spans_of(&receiver, &next, 2).await;
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| s.trace_id == "a".repeat(32)),
        "no span of the unsampled trace"
    );
}

/// A failed request's span says so: the status is an error with the proxy's reason.
#[tokio::test]
async fn a_failed_request_has_an_error_span_with_its_reason() {
    let receiver = OtlpReceiver::start(pod_ip()).await;
    let endpoint = receiver.endpoint();
    let proxy = Proxy::start(
        pod_ip(),
        &Mesh::new("traced").build(),
        &["--otlp-endpoint", &endpoint],
    )
    .await;
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, _) = head_seen(
        proxy.outbound,
        "http://nowhere.example/",
        &[("traceparent", &caller)],
    )
    .await;
    assert_eq!(status, 503);
    let spans = spans_of(&receiver, TRACE, 1).await;
    let span = of_kind(&spans, "SPAN_KIND_CLIENT");
    assert_eq!(
        span.status,
        ("STATUS_CODE_ERROR".to_owned(), "no-route".to_owned())
    );
    assert_eq!(span.attributes["weft.error"], "no-route");
    assert_eq!(span.attributes["http.response.status_code"], "503");
}

/// A collector that accepts connections and never answers: every request is still served at
/// once, the spans that do not fit the export queue are dropped and counted, and the
/// proxy's memory stays bounded by that queue.
#[tokio::test]
async fn a_hung_collector_costs_only_the_dropped_spans() {
    let hung = tokio::net::TcpListener::bind(at(pod_ip(), 0))
        .await
        .unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            open.push(stream);
        }
    });
    let app = HttpBackend::start(at(pod_ip(), 8080), "app").await;
    let config = Mesh::new("traced")
        .service("shop", "app", None, 80, &[Ep::direct(app.addr)])
        .build();
    let proxy = Proxy::start(pod_ip(), &config, &["--otlp-endpoint", &endpoint]).await;
    let (rss_before, _) = proxy.memory_kib();
    let sent: u32 = 4_000;
    let mut ok: u32 = 0;
    let mut conn = client::http1(proxy.outbound).await.unwrap();
    for _ in 0..sent {
        let resp = conn
            .send_request(get("http://app.shop/", &[]))
            .await
            .unwrap();
        ok += u32::from(resp.status() == 200);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(ok, sent, "every request served");
    let dropped = proxy
        .metric(r#"weft_trace_spans_total{result="dropped"}"#)
        .await;
    let failed = proxy
        .metric(r#"weft_trace_spans_total{result="failed"}"#)
        .await;
    // Only the queue (2,048) and the batch in flight (512) wait for the collector; the rest
    // were dropped, or failed in an export that timed out.
    assert!(dropped > 0.0, "{dropped} dropped");
    assert!(
        dropped + failed >= f64::from(sent - 2048 - 512),
        "{dropped} dropped and {failed} failed of {sent}"
    );
    assert_eq!(
        proxy
            .metric(r#"weft_trace_spans_total{result="exported"}"#)
            .await,
        0.0
    );
    let (rss_after, _) = proxy.memory_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    held.abort();
}

/// The proxy's access log lines: its log's JSON lines that are a request's.
fn access_lines(proxy: &Proxy) -> Vec<serde_json::Value> {
    proxy
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("duration_ms").is_some())
        .collect()
}

/// `--access-log --log-format json`: one JSON line per request on each side, with the request
/// id the client's sidecar generated carried to the server's, and the caller's trace id.
#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_on_each_side() {
    let Pair {
        app,
        server,
        client,
        _cp,
    } = Pair::start(&["--access-log", "--log-format", "json"]).await;

    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, seen) = head_seen(
        client.outbound,
        "http://reviews.shop:9080/head",
        &[("traceparent", &caller)],
    )
    .await;
    assert_eq!(status, 200);
    let request_id = seen["headers"]["x-request-id"].as_str().unwrap().to_owned();
    let (status, _) = head_seen(
        client.outbound,
        "http://reviews.shop:9080/head",
        &[("x-request-id", "mine-1")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = head_seen(client.outbound, "http://nowhere.example/", &[]).await;
    assert_eq!(status, 503);

    let out = eventually("three outbound lines", Duration::from_secs(10), || async {
        let lines = access_lines(&client);
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(out.len(), 3, "{out:#?}");
    let inb = eventually("two inbound lines", Duration::from_secs(10), || async {
        let lines = access_lines(&server);
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    assert_eq!(inb.len(), 2, "{inb:#?}");

    let first = &out[0];
    for (key, want) in [
        ("direction", serde_json::json!("outbound")),
        ("method", "GET".into()),
        ("authority", "reviews.shop:9080".into()),
        ("path", "/head".into()),
        ("protocol", "1.1".into()),
        ("status", 200.into()),
        ("upstream", app.addr.to_string().into()),
        ("route", "default".into()),
        ("backend", "shop/reviews:9080".into()),
        ("attempts", 1.into()),
        ("peer", "spiffe://cluster.local/ns/shop/sa/reviews".into()),
        ("mtls", true.into()),
        ("error", serde_json::Value::Null),
        ("trace_id", TRACE.into()),
        ("request_id", request_id.clone().into()),
    ] {
        assert_eq!(first[key], want, "{key} in {first}");
    }
    assert!(
        first["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{first}"
    );
    assert!(
        first["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    // The server's side of the same request: the same request id, the caller's identity.
    let served = &inb[0];
    for (key, want) in [
        ("direction", serde_json::json!("inbound")),
        ("status", 200.into()),
        (
            "peer",
            "spiffe://cluster.local/ns/shop/sa/productpage".into(),
        ),
        ("mtls", true.into()),
        ("upstream", app.addr.to_string().into()),
        ("trace_id", TRACE.into()),
        ("request_id", request_id.into()),
    ] {
        assert_eq!(served[key], want, "{key} in {served}");
    }
    // The bytes of the body the application answered, counted on both sides as it passed.
    let bytes = first["bytes"].as_u64().unwrap_or_default();
    assert!(bytes > 100, "{first}");
    assert_eq!(served["bytes"], bytes, "{served}");
    assert_eq!(out[1]["request_id"], "mine-1", "a request id is kept");
    assert_eq!(inb[1]["request_id"], "mine-1");
    assert_eq!(
        out[1]["trace_id"],
        serde_json::Value::Null,
        "no trace without one"
    );
    let refused = &out[2];
    assert_eq!(
        (refused["status"].as_u64(), refused["error"].as_str()),
        (Some(503), Some("no-route")),
        "{refused}"
    );
}

/// `weft control --otlp-endpoint --log-format json`: a proxy's certificate request and each config push (from
/// its send to the proxy's ACK) are spans of the control plane's.
#[tokio::test]
async fn the_control_plane_traces_certificates_and_pushes() {
    let receiver = OtlpReceiver::start(pod_ip()).await;
    let cp = ControlPlane::start_with(
        pod_ip(),
        &[
            "--otlp-endpoint".to_owned(),
            receiver.endpoint(),
            "--log-format".to_owned(),
            "json".to_owned(),
        ],
    )
    .await;
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    let of_control = |name: &str| {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.resource.get("service.name").map(String::as_str) == Some("weft-control"))
            .find(|s| s.name == name)
    };
    let certificate = eventually("the certificate span", Duration::from_secs(20), || async {
        of_control("certificate")
    })
    .await;
    assert_eq!(
        certificate.attributes["identity"],
        "spiffe://cluster.local/ns/shop/sa/productpage"
    );
    assert_eq!(certificate.attributes["result"], "issued");
    let push = eventually("the push span", Duration::from_secs(20), || async {
        of_control("push").filter(|s| s.attributes.contains_key("result"))
    })
    .await;
    assert_eq!(push.attributes["result"], "ack", "{push:#?}");
    assert_eq!(push.attributes["proxy.namespace"], "shop");
    assert_eq!(push.attributes["proxy.pod_ip"], proxy.pod_ip.to_string());
    assert_eq!(push.parent_span_id, "", "each push is a trace of its own");
    // `--log-format json`: every line of its log is a JSON object.
    let log = cp.log();
    assert!(log.lines().count() > 2, "{log}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
}
