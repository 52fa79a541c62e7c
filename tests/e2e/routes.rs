//! Routing through the real proxy, from the examples in `manifests/examples/`: weighted
//! splits, header canaries, rewrites and header filters, mirrors, consistent hashing, gRPC.

use std::time::Duration;

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use weft_tests::client::{self, served_by};
use weft_tests::eventually;
use weft_tests::manifests::Manifests;
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;

use crate::{ServerPod, app, get, tally};

const V1: &[(&str, &str)] = &[("app", "reviews"), ("version", "v1")];
const V2: &[(&str, &str)] = &[("app", "reviews"), ("version", "v2")];

async fn client_for(manifests: &Manifests) -> Proxy {
    Proxy::start(
        pod_ip(),
        &manifests.compile("shop"),
        &["--namespace", "shop"],
    )
    .await
}

#[tokio::test]
async fn a_weighted_split_holds_within_three_points_over_2000_requests() {
    let v1 = ServerPod::start("reviews-v1").await;
    let v2 = ServerPod::start("reviews-v2").await;
    let manifests = Manifests::new()
        .example("workloads")
        .example("traffic-split")
        .pod("shop", "reviews-v1", V1, v1.app.addr, true)
        .pod("shop", "reviews-v2", V2, v2.app.addr, true);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 2000, |_| get("http://reviews:9080/", &[])).await;
    let v2_share = counts
        .get(&(200, "reviews-v2".into()))
        .copied()
        .unwrap_or(0) as f64
        / 2000.0;
    let v1_share = counts
        .get(&(200, "reviews-v1".into()))
        .copied()
        .unwrap_or(0) as f64
        / 2000.0;
    eprintln!(
        "split over 2000 requests: v1 {:.1}%, v2 {:.1}%",
        v1_share * 100.0,
        v2_share * 100.0
    );
    assert!(
        (v2_share - 0.10).abs() <= 0.03,
        "v2 got {:.1}% instead of 10 ± 3",
        v2_share * 100.0
    );
    assert!(
        (v1_share + v2_share - 1.0).abs() < f64::EPSILON,
        "every request succeeded: {counts:?}"
    );
}

#[tokio::test]
async fn a_header_sends_requests_to_the_canary() {
    let (v1, v2) = (app("reviews-v1").await, app("reviews-v2").await);
    let manifests = Manifests::new()
        .example("workloads")
        .example("canary-by-header")
        .pod("shop", "reviews-v1", V1, v1.addr, false)
        .pod("shop", "reviews-v2", V2, v2.addr, false);
    let client = client_for(&manifests).await;
    let canary = tally(client.outbound, 100, |_| {
        get("http://reviews:9080/", &[("x-canary", "true")])
    })
    .await;
    assert_eq!(
        canary.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v2".into()), 100)]
    );
    let stable = tally(client.outbound, 100, |_| {
        get("http://reviews:9080/", &[("x-canary", "false")])
    })
    .await;
    assert_eq!(
        stable.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v1".into()), 100)]
    );
}

#[tokio::test]
async fn rewritten_path_and_headers_arrive_at_the_backend() {
    let v1 = app("reviews-v1").await;
    let manifests = Manifests::new()
        .example("workloads")
        .example("rewrite")
        .pod("shop", "reviews-v1", V1, v1.addr, false);
    let client = client_for(&manifests).await;
    let mut conn = client::http1(client.outbound).await.unwrap();
    let req = Request::get("http://reviews:9080/legacy/items?page=2")
        .header("x-internal-token", "secret")
        .header("x-env", "prod")
        .body(client::empty())
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-rewritten"],
        "yes",
        "the response filter ran"
    );
    let (_, body) = client::text(resp).await.unwrap();
    let head: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        head["uri"], "/head/items?page=2",
        "ReplacePrefixMatch kept the rest of the path and the query"
    );
    let headers = &head["headers"];
    assert_eq!(headers["host"], "reviews.internal");
    assert_eq!(headers["x-env"], "canary", "set replaces");
    assert_eq!(headers["x-via"], "weft", "add adds");
    assert!(
        headers.get("x-internal-token").is_none(),
        "remove removes: {headers}"
    );
}

#[tokio::test]
async fn the_mirror_receives_copies() {
    let (v1, shadow) = (app("reviews-v1").await, app("reviews-shadow").await);
    let manifests = Manifests::new()
        .example("workloads")
        .example("mirror")
        .pod("shop", "reviews-v1", V1, v1.addr, false)
        .pod(
            "shop",
            "reviews-shadow",
            &[("app", "reviews-shadow")],
            shadow.addr,
            false,
        );
    let client = client_for(&manifests).await;
    let mut conn = client::http1(client.outbound).await.unwrap();
    for i in 0..10 {
        conn.ready().await.unwrap();
        let req = Request::post(format!("http://reviews:9080/record/{i}"))
            .body(client::body(format!("copy-me-{i}")))
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        assert_eq!(
            (resp.status().as_u16(), served_by(&resp)),
            (200, "reviews-v1".into())
        );
        client::text(resp).await.unwrap();
    }
    let copies = eventually("ten mirrored copies", Duration::from_secs(10), || async {
        let r = shadow.recorded();
        (r.len() == 10).then_some(r)
    })
    .await;
    let mut copies = copies;
    copies.sort();
    let mut originals = v1.recorded();
    originals.sort();
    assert_eq!(
        copies, originals,
        "the copies carry the original path and body"
    );
    assert_eq!(
        client
            .metric(r#"weft_mirror_requests_total{backend="shop/reviews-shadow:9080",result="ok"}"#)
            .await,
        10.0
    );
}

#[tokio::test]
async fn a_stuck_mirror_never_slows_the_real_request() {
    let v1 = app("reviews-v1").await;
    // The shadow accepts connections and never answers.
    let black_hole = TcpListener::bind(at(pod_ip(), 9080)).await.unwrap();
    let shadow_addr = black_hole.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            held.push(s);
        }
    });
    let manifests = Manifests::new()
        .example("workloads")
        .example("mirror")
        .pod("shop", "reviews-v1", V1, v1.addr, false)
        .pod(
            "shop",
            "reviews-shadow",
            &[("app", "reviews-shadow")],
            shadow_addr,
            false,
        );
    let client = client_for(&manifests).await;
    // Well past the proxy's limit of mirrored copies in flight: the excess is dropped. Each
    // real request is answered as if there were no mirror: not after the mirror's timeout
    // (5 s), never waiting for the black hole.
    let mut conn = weft_tests::client::http1(client.outbound).await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let started = std::time::Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(2),
            conn.send_request(get(&format!("http://reviews:9080/{i}"), &[])),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} waited 2 s behind its stuck mirror"))
        .unwrap();
        assert_eq!(
            (resp.status().as_u16(), weft_tests::client::served_by(&resp)),
            (200, "reviews-v1".to_owned())
        );
        weft_tests::client::text(resp).await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("the slowest of 100 requests beside a stuck mirror: {slowest:?}");
    assert!(
        client
            .metric(
                r#"weft_mirror_requests_total{backend="shop/reviews-shadow:9080",result="dropped"}"#
            )
            .await
            > 0.0
    );
}

#[tokio::test]
async fn consistent_hashing_keeps_a_user_on_one_endpoint() {
    let (a, b, c) = (
        app("reviews-a").await,
        app("reviews-b").await,
        app("reviews-c").await,
    );
    let manifests = Manifests::new()
        .example("workloads")
        .example("load-balancing")
        .pod("shop", "reviews-a", V1, a.addr, false)
        .pod("shop", "reviews-b", V1, b.addr, false)
        .pod("shop", "reviews-c", V2, c.addr, false);
    let client = client_for(&manifests).await;
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..30 {
        let header = format!("user-{user}");
        let counts = tally(client.outbound, 10, |_| {
            get("http://reviews:9080/", &[("x-user", header.as_str())])
        })
        .await;
        assert_eq!(
            counts.len(),
            1,
            "{header} was served by more than one endpoint: {counts:?}"
        );
        seen.extend(counts.into_keys().map(|(_, who)| who));
    }
    assert_eq!(seen.len(), 3, "users spread over all endpoints: {seen:?}");
}

#[tokio::test]
async fn grpc_routes_match_methods_and_retry_on_status() {
    use weft_tests::workloads::grpc::EchoRequest;
    use weft_tests::workloads::grpc::echo_client::EchoClient;
    let ip = pod_ip();
    let _server =
        weft_tests::workloads::grpc_echo(TcpListener::bind(at(ip, 50051)).await.unwrap()).await;
    // The example, whose second rule (every other method) goes to a Service of its own, so
    // that which rule matched shows in the backend label.
    let manifests = Manifests::new()
        .example("workloads")
        .example_with(
            "grpc-route",
            &[(
                "    - backendRefs: [{name: echo, port: 50051}]",
                "    - backendRefs: [{name: echo-other, port: 50051}]",
            )],
        )
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: echo-other, namespace: shop}\nspec:\n  selector: {app: echo}\n  ports: [{name: grpc, port: 50051, targetPort: 50051, appProtocol: kubernetes.io/h2c}]\n")
        .pod("shop", "echo", &[("app", "echo")], at(ip, 50051), false);
    let client_proxy = client_for(&manifests).await;
    let answered_by = |backend: &str| {
        format!(
            r#"weft_requests_total{{direction="outbound",route="shop/echo",backend="shop/{backend}:50051",status_code="200"}}"#
        )
    };
    let proxy = client_proxy.outbound;
    let channel = tonic::transport::Endpoint::from_static("http://echo.shop:50051")
        .connect_with_connector(tower::service_fn(move |_| async move {
            TcpStream::connect(proxy).await.map(TokioIo::new)
        }))
        .await
        .unwrap();
    let mut echo = EchoClient::new(channel);
    assert_eq!(
        echo.unary(EchoRequest {
            message: "hi".into(),
            fail_with: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message,
        "hi"
    );
    assert_eq!(client_proxy.metric(&answered_by("echo")).await, 1.0);
    assert_eq!(client_proxy.metric(&answered_by("echo-other")).await, 0.0);
    // Another method of the service matches the second rule.
    let mut stream = echo
        .server_stream(weft_tests::workloads::grpc::StreamRequest {
            message: "s".into(),
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    assert_eq!(client_proxy.metric(&answered_by("echo-other")).await, 1.0);
    assert_eq!(client_proxy.metric(&answered_by("echo")).await, 1.0);
    let status = echo
        .unary(EchoRequest {
            message: "x".into(),
            fail_with: tonic::Code::Unavailable as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let retries = client_proxy.metric(r#"weft_retries_total{direction="outbound",route="shop/echo",backend="shop/echo:50051",reason="grpc-status"}"#).await;
    assert_eq!(
        retries, 2.0,
        "UNAVAILABLE was retried twice, as the route's annotations say"
    );
    let status = echo
        .unary(EchoRequest {
            message: "x".into(),
            fail_with: tonic::Code::NotFound as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "other codes are not retried"
    );
    let after = client_proxy.metric(r#"weft_retries_total{direction="outbound",route="shop/echo",backend="shop/echo:50051",reason="grpc-status"}"#).await;
    assert_eq!(after, 2.0);
}

/// The `load-balancing` example with `algorithm` in place of its consistent hash.
fn balanced_by(algorithm: &str) -> Manifests {
    Manifests::new().example("workloads").example_with(
        "load-balancing",
        &[(
            "    type: ConsistentHash\n    consistentHash: {header: x-user}\n",
            &format!("    type: {algorithm}\n"),
        )],
    )
}

/// Four clients sending requests one after another for `window`: how many each endpoint
/// served.
async fn four_clients(
    proxy: std::net::SocketAddr,
    window: Duration,
) -> std::collections::BTreeMap<String, usize> {
    let until = std::time::Instant::now() + window;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = client::http1(proxy).await.unwrap();
                let mut served = Vec::new();
                while std::time::Instant::now() < until {
                    let resp = conn
                        .send_request(get("http://reviews:9080/", &[]))
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    served.push(served_by(&resp));
                    client::text(resp).await.unwrap();
                }
                served
            })
        })
        .collect();
    let mut served = std::collections::BTreeMap::new();
    for c in clients {
        for by in c.await.unwrap() {
            *served.entry(by).or_insert(0) += 1;
        }
    }
    served
}

#[tokio::test]
async fn round_robin_takes_the_endpoints_in_turn() {
    let (a, b, c) = (
        app("reviews-a").await,
        app("reviews-b").await,
        app("reviews-c").await,
    );
    let manifests = balanced_by("RoundRobin")
        .pod("shop", "reviews-a", V1, a.addr, false)
        .pod("shop", "reviews-b", V1, b.addr, false)
        .pod("shop", "reviews-c", V2, c.addr, false);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 30, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [
            ((200, "reviews-a".into()), 10),
            ((200, "reviews-b".into()), 10),
            ((200, "reviews-c".into()), 10)
        ]
    );
}

/// An endpoint that takes a second and one that answers at once, under four clients for
/// three seconds: least request sends a request to the slow one only when it has no more
/// outstanding than the fast one, and peak EWMA (the default) only as its latency estimate
/// decays; round robin would give it half of them.
#[tokio::test]
async fn least_request_and_peak_ewma_keep_requests_off_a_slow_endpoint() {
    for algorithm in ["LeastRequest", "PeakEWMA"] {
        let (slow, fast) = (app("slow").await, app("fast").await);
        slow.delay(Duration::from_secs(1));
        let manifests = balanced_by(algorithm)
            .pod("shop", "slow", V1, slow.addr, false)
            .pod("shop", "fast", V1, fast.addr, false);
        let client = client_for(&manifests).await;
        let served = four_clients(client.outbound, Duration::from_secs(3)).await;
        let (to_slow, all) = (
            served.get("slow").copied().unwrap_or(0),
            served.values().sum::<usize>(),
        );
        eprintln!("{algorithm}: {served:?}");
        assert!(
            all >= 100 && to_slow * 10 <= all,
            "{algorithm}: the slow endpoint served {to_slow} of {all}"
        );
    }
}
