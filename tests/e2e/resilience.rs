//! Resilience through the real proxy: retries and their budget, circuit breakers, timeouts,
//! the bulkhead and the rate limit, from the examples in `manifests/examples/`.

use std::time::{Duration, Instant};

use http::Request;
use weft_tests::client::{self, error_header, served_by};
use weft_tests::eventually;
use weft_tests::manifests::Manifests;
use weft_tests::paths::bin_path;
use weft_tests::pods::pod_ip;
use weft_tests::proxy::Proxy;

use crate::{app, get, tally};

const REVIEWS: &[(&str, &str)] = &[("app", "reviews"), ("version", "v1")];

async fn client_for(manifests: &Manifests) -> Proxy {
    Proxy::start(
        pod_ip(),
        &manifests.compile("shop"),
        &["--namespace", "shop"],
    )
    .await
}

/// A budget that lets every request retry once, for the tests that want retries to work
/// rather than to be limited.
const GENEROUS_BUDGET: &str = "apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: generous, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: reviews}]\n  retryBudget: {percent: 100}\n";

#[tokio::test]
async fn retries_turn_first_attempt_failures_into_successes() {
    let backend = app("flaky").await;
    let manifests = Manifests::new()
        .example("workloads")
        .example("retries")
        .doc(GENEROUS_BUDGET)
        .pod("shop", "flaky", REVIEWS, backend.addr, false);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 200, |i| {
        get(
            "http://reviews:9080/flaky",
            &[("x-request-id", &format!("get-{i}"))],
        )
    })
    .await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((200, "flaky".into()), 200)],
        "every request succeeded"
    );
    assert_eq!(backend.requests(), 400, "each took two attempts");
    let retries = client.metric(r#"weft_retries_total{direction="outbound",route="shop/reviews-retries",backend="shop/reviews:9080",reason="status"}"#).await;
    assert_eq!(retries, 200.0);

    // A POST could charge twice: it is retried only with an Idempotency-Key.
    let post = |key: Option<&str>, id: &str| {
        let mut b = Request::post("http://reviews:9080/flaky").header("x-request-id", id);
        if let Some(key) = key {
            b = b.header("idempotency-key", key);
        }
        b.body(client::body("pay 10")).unwrap()
    };
    let counts = tally(client.outbound, 1, |_| post(None, "post-1")).await;
    assert_eq!(
        counts.into_keys().next().unwrap().0,
        503,
        "a bare POST is not retried after a response"
    );
    let counts = tally(client.outbound, 1, |_| post(Some("k-1"), "post-2")).await;
    assert_eq!(
        counts.into_keys().next().unwrap().0,
        200,
        "with an Idempotency-Key it is, with its body replayed"
    );
}

#[tokio::test]
async fn connection_failures_are_retried_on_another_endpoint_whatever_the_method() {
    let good = app("good").await;
    let refused = std::net::TcpListener::bind(weft_tests::pods::at(pod_ip(), 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let manifests = Manifests::new()
        .example("workloads")
        .pod("shop", "good", REVIEWS, good.addr, false)
        .pod("shop", "gone", REVIEWS, refused, false);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 50, |i| {
        Request::post("http://reviews-v1:9080/")
            .body(client::body(format!("{i}")))
            .unwrap()
    })
    .await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((200, "good".into()), 50)]
    );
    assert!(client.metric(r#"weft_retries_total{direction="outbound",route="default",backend="shop/reviews-v1:9080",reason="connect-failed"}"#).await >= 1.0);
}

#[tokio::test]
async fn the_retry_budget_caps_attempts_against_a_backend_that_always_fails() {
    budget_caps_attempts(&[]).await;
}

/// The same, with the budget left out of the policy: the default (20% plus 10 a second)
/// holds.
#[tokio::test]
async fn the_default_retry_budget_caps_attempts_as_well() {
    budget_caps_attempts(&[(
        "  retryBudget: {percent: 20, minRetriesPerSecond: 10, window: 10s}\n",
        "",
    )])
    .await;
}

/// Four clients for three seconds against a backend that fails every request, under the
/// `retry-budget` example with `edits`: upstream attempts stay within 20% of the requests
/// plus 10 a second, and a request whose retry the budget refused gets the backend's answer.
async fn budget_caps_attempts(edits: &[(&str, &str)]) {
    let backend = app("broken").await;
    backend.fail_with(503);
    let manifests = Manifests::new()
        .example("workloads")
        .example_with("retry-budget", edits)
        .pod("shop", "broken", REVIEWS, backend.addr, false);
    let config = manifests.compile("shop");
    // The budget's floor accrues from the proxy's start: measure from there.
    let born = Instant::now();
    let client = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;
    let start = Instant::now();
    // Steady load from four clients for three seconds.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let proxy = client.outbound;
            tokio::spawn(async move {
                let mut conn = client::http1(proxy).await.unwrap();
                let (mut sent, mut answered_by_backend) = (0u64, 0u64);
                while start.elapsed() < Duration::from_secs(3) {
                    conn.ready().await.unwrap();
                    let resp = conn
                        .send_request(crate::get("http://reviews:9080/", &[]))
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 503);
                    if error_header(&resp).is_empty() {
                        answered_by_backend += 1;
                    }
                    client::text(resp).await.unwrap();
                    sent += 1;
                }
                (sent, answered_by_backend)
            })
        })
        .collect();
    let (mut requests, mut real_answers) = (0, 0);
    for w in workers {
        let (s, a) = w.await.unwrap();
        requests += s;
        real_answers += a;
    }
    let elapsed = born.elapsed().as_secs_f64();
    let attempts = backend.requests() as f64;
    // 20% of the requests, plus 10 per second of the budget's life (and one bucket's start).
    let bound = 1.2 * requests as f64 + 10.0 * (elapsed + 1.0);
    eprintln!(
        "{requests} requests in {elapsed:.1}s made {attempts} upstream attempts (bound {bound:.0})"
    );
    assert!(
        attempts <= bound,
        "{attempts} attempts for {requests} requests exceed the budget's {bound:.0}"
    );
    assert!(attempts > requests as f64, "some retries were allowed");
    assert_eq!(
        real_answers, requests,
        "an exhausted budget returns the backend's own answer"
    );
    assert!(
        client
            .metric(r#"weft_retry_budget_exhausted_total{backend="shop/reviews:9080"}"#)
            .await
            > 0.0
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_readmitted_once_it_recovers() {
    let (a, b, bad) = (app("good-a").await, app("good-b").await, app("bad").await);
    bad.fail_with(500);
    let manifests = Manifests::new()
        .example("workloads")
        .example("circuit-breaker")
        .pod("shop", "good-a", REVIEWS, a.addr, false)
        .pod("shop", "good-b", REVIEWS, b.addr, false)
        .pod("shop", "bad", REVIEWS, bad.addr, false);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 100, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        bad.requests(),
        3,
        "ejected at its third consecutive failure"
    );
    assert_eq!(counts.get(&(500, "bad".into())), Some(&3));
    assert_eq!(counts.values().sum::<usize>(), 100);
    assert_eq!(
        counts.get(&(200, "good-a".into())).unwrap_or(&0)
            + counts.get(&(200, "good-b".into())).unwrap_or(&0),
        97
    );
    let ejections = r#"weft_breaker_ejections_total{backend="shop/reviews:9080",reason="consecutive-failures"}"#;
    assert_eq!(client.metric(ejections).await, 1.0);

    bad.fail_with(0);
    // After the ejection time (2s ± 10%) one probe goes to the endpoint; it succeeds, and the
    // endpoint serves again.
    eventually(
        "the recovered endpoint serves again",
        Duration::from_secs(20),
        || async {
            let counts = tally(client.outbound, 20, |_| get("http://reviews:9080/", &[])).await;
            counts.contains_key(&(200, "bad".into())).then_some(())
        },
    )
    .await;
    assert_eq!(client.metric(ejections).await, 1.0, "no second ejection");
    let (_, clusters) = client.admin_get("/clusters").await.unwrap();
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let reviews = clusters["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "shop/reviews:9080")
        .unwrap();
    assert!(
        reviews["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["breaker"] == "closed"),
        "{reviews}"
    );
}

/// Every endpoint ejected: the proxy answers 503 `breaker-open` itself, at once, and the
/// endpoint gets nothing more until its ejection ends.
#[tokio::test]
async fn with_every_endpoint_ejected_requests_get_503_breaker_open() {
    let bad = app("bad").await;
    bad.fail_with(500);
    let manifests = Manifests::new()
        .example("workloads")
        .example("circuit-breaker")
        .pod("shop", "bad", REVIEWS, bad.addr, false);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 10, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((500, "bad".into()), 3), ((503, String::new()), 7)]
    );
    let resp = client::get(client.outbound, "http://reviews:9080/")
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_header(&resp)),
        (503, "breaker-open".into())
    );
    assert_eq!(bad.requests(), 3, "nothing reached the ejected endpoint");
    let answered = r#"weft_proxy_errors_total{direction="outbound",reason="breaker-open"}"#;
    assert_eq!(client.metric(answered).await, 8.0);
    let state = format!(
        r#"weft_breaker_state{{backend="shop/reviews:9080",endpoint="{}"}}"#,
        bad.addr
    );
    assert_eq!(client.metric(&state).await, 1.0, "open");
}

/// A request whose connect failed, whose retry the budget refuses, has no answer of the
/// upstream's to return: the proxy answers 503 `retry-budget-exhausted`.
#[tokio::test]
async fn a_retry_the_budget_refuses_with_no_answer_to_return_gets_503_retry_budget_exhausted() {
    let refused = std::net::TcpListener::bind(weft_tests::pods::at(pod_ip(), 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let no_budget = "apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: no-retries, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: reviews}]\n  retryBudget: {percent: 0, minRetriesPerSecond: 0}\n  circuitBreaker: {consecutiveFailures: 0}\n";
    let manifests = Manifests::new()
        .example("workloads")
        .doc(no_budget)
        .pod("shop", "gone", REVIEWS, refused, false);
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 5, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((503, String::new()), 5)]
    );
    let resp = client::get(client.outbound, "http://reviews:9080/")
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_header(&resp)),
        (503, "retry-budget-exhausted".into())
    );
    let sample = r#"weft_retry_budget_exhausted_total{backend="shop/reviews:9080"}"#;
    assert_eq!(client.metric(sample).await, 6.0);
}

/// The request timeout bounds the whole exchange and the per-try timeout each attempt, apart:
/// with only the first, an attempt is never cut to be retried; with only the second, each
/// attempt is, and retried; with both, the retries stop at the request's deadline.
#[tokio::test]
async fn the_request_timeout_and_the_per_try_timeout_act_apart() {
    let backend = app("slow").await;
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews-timeouts, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]\n  rules:\n    - matches: [{headers: [{name: x-case, value: request}]}]\n      backendRefs: [{name: reviews, port: 9080}]\n      timeouts: {request: 300ms}\n      retry: {codes: [504], attempts: 5, backoff: 1ms}\n    - matches: [{headers: [{name: x-case, value: per-try}]}]\n      backendRefs: [{name: reviews, port: 9080}]\n      timeouts: {backendRequest: 100ms}\n      retry: {codes: [504], attempts: 2, backoff: 1ms}\n    - matches: [{headers: [{name: x-case, value: both}]}]\n      backendRefs: [{name: reviews, port: 9080}]\n      timeouts: {request: 500ms, backendRequest: 200ms}\n      retry: {codes: [504], attempts: 10, backoff: 1ms}\n";
    let manifests = Manifests::new()
        .example("workloads")
        .doc(route)
        // Retries unlimited and the breaker off: what bounds the attempts is the timeouts.
        .doc(&GENEROUS_BUDGET.replace(
            "  retryBudget: {percent: 100}\n",
            "  retryBudget: {percent: 100}\n  circuitBreaker: {consecutiveFailures: 0}\n",
        ))
        .pod("shop", "slow", REVIEWS, backend.addr, false);
    let client = client_for(&manifests).await;
    // (case, attempts the application may see)
    for (case, attempts) in [("request", 1..=1), ("per-try", 3..=3), ("both", 2..=3)] {
        let before = backend.requests();
        let started = Instant::now();
        let mut conn = client::http1(client.outbound).await.unwrap();
        let resp = conn
            .send_request(get("http://reviews:9080/hold", &[("x-case", case)]))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(
            (resp.status().as_u16(), error_header(&resp).as_str()),
            (504, "timeout"),
            "{case} after {took:?}"
        );
        // Every attempt was sent before the answer: the count is final.
        let seen = backend.requests() - before;
        assert!(
            attempts.contains(&seen),
            "{case}: {seen} attempts, not {attempts:?}"
        );
        eprintln!("{case}: 504 after {took:?}, {seen} attempts");
    }
    backend.release();
}

/// The Gateway API's backendRequest covers an attempt until its whole response has arrived:
/// a response body still streaming at the per-try timeout is cut off there, as one still
/// streaming at the request timeout is.
#[tokio::test]
async fn the_per_try_timeout_bounds_the_response_body_too() {
    use http_body_util::BodyExt;
    let backend = app("drip").await;
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews-timeouts, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]\n  rules:\n    - matches: [{headers: [{name: x-case, value: per-try}]}]\n      backendRefs: [{name: reviews, port: 9080}]\n      timeouts: {backendRequest: 300ms}\n    - backendRefs: [{name: reviews, port: 9080}]\n";
    let manifests = Manifests::new().example("workloads").doc(route).pod(
        "shop",
        "drip",
        REVIEWS,
        backend.addr,
        false,
    );
    let client = client_for(&manifests).await;
    // 100 KiB at 1 KiB every 20 ms: two seconds of body.
    for (case, whole) in [("per-try", false), ("none", true)] {
        let mut conn = client::http1(client.outbound).await.unwrap();
        let started = Instant::now();
        let resp = conn
            .send_request(get("http://reviews:9080/drip/100", &[("x-case", case)]))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{case}: the head came in time");
        let body = resp.into_body().collect().await;
        let took = started.elapsed();
        eprintln!(
            "{case}: body {} after {took:?}",
            if body.is_ok() { "whole" } else { "cut" }
        );
        assert_eq!(body.is_ok(), whole, "{case} after {took:?}");
        if let Ok(body) = body {
            assert_eq!(body.to_bytes().len(), 100 * 1024);
        }
    }
}

#[tokio::test]
async fn a_slow_backend_gets_504() {
    let backend = app("slow").await;
    let manifests = Manifests::new()
        .example("workloads")
        .example("timeouts")
        .pod("shop", "slow", REVIEWS, backend.addr, false);
    let client = client_for(&manifests).await;
    let resp = client::get(client.outbound, "http://reviews:9080/hold")
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_header(&resp)),
        (504, "timeout".into())
    );
    let resp = client::get(client.outbound, "http://reviews:9080/fast")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a fast request is unaffected");
    backend.release();
}

#[tokio::test]
async fn beyond_the_in_flight_limit_requests_get_503_overloaded_at_once() {
    let backend = app("busy").await;
    let manifests = Manifests::new()
        .example("workloads")
        .example("connection-limits")
        .pod("shop", "busy", REVIEWS, backend.addr, false);
    let client = client_for(&manifests).await;
    let held: Vec<_> = (0..3)
        .map(|_| {
            let proxy = client.outbound;
            tokio::spawn(async move { client::get(proxy, "http://reviews:9080/hold").await })
        })
        .collect();
    eventually("three requests held", Duration::from_secs(10), || async {
        (backend.held() == 3).then_some(())
    })
    .await;
    for _ in 0..5 {
        let resp = client::get(client.outbound, "http://reviews:9080/")
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), error_header(&resp)),
            (503, "overloaded".into())
        );
    }
    backend.release();
    for h in held {
        let resp = h.await.unwrap().unwrap();
        assert_eq!(
            (resp.status().as_u16(), served_by(&resp)),
            (200, "busy".into()),
            "admitted requests still succeed"
        );
    }
    assert_eq!(
        backend.requests(),
        3,
        "refused requests never reached the backend"
    );
}

#[tokio::test]
async fn the_client_side_rate_limit_answers_429() {
    let backend = app("limited").await;
    let policy = "apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: slow-down, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: reviews}]\n  rateLimit: {requestsPerSecond: 1, burst: 5}\n";
    let manifests = Manifests::new().example("workloads").doc(policy).pod(
        "shop",
        "limited",
        REVIEWS,
        backend.addr,
        false,
    );
    let client = client_for(&manifests).await;
    let counts = tally(client.outbound, 20, |_| get("http://reviews:9080/", &[])).await;
    let ok = counts.get(&(200, "limited".into())).copied().unwrap_or(0);
    let limited = counts.get(&(429, String::new())).copied().unwrap_or(0);
    assert!((5..=8).contains(&ok) && ok + limited == 20, "{counts:?}");
    assert!(
        client
            .metric(r#"weft_proxy_errors_total{direction="outbound",reason="rate-limited"}"#)
            .await
            >= 12.0
    );
}

#[tokio::test]
async fn weft_check_names_every_invalid_field() {
    let dir = Manifests::new()
        .example("workloads")
        .doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: reviews}]\n  rules:\n    - backendRefs: [{name: reviews, port: 9080, weight: -1}]\n")
        .doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad2, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: reviews}]\n  rules:\n    - matches: [{path: {type: RegularExpression, value: '(unclosed'}}]\n      backendRefs: [{name: missing, port: 9080}]\n      timeouts: {request: 5 seconds}\n")
        .doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad3, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: reviews}]\n  rules:\n    - backendRefs: [{name: reviews, port: 9080}]\n      retry: {codes: [302]}\n")
        .doc("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
        .write();
    let out = std::process::Command::new(bin_path("weft"))
        .args(["check", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        ":spec.rules[0].backendRefs[0].weight: invalid value: integer `-1`",
        ":spec.rules[0].timeouts.request: invalid duration",
        ":spec.rules[0].retry.codes[0]: 302 is not a status code between 400 and 599",
        ":kind: unknown kind \"Widget\"",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    // Fix the duration and the regex and missing backend show up: references and semantics.
    let fixed = std::fs::read_to_string(dir.join("manifests.yaml"))
        .unwrap()
        .replace("5 seconds", "5s");
    std::fs::write(dir.join("manifests.yaml"), fixed).unwrap();
    let out = std::process::Command::new(bin_path("weft"))
        .args(["check", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(":spec.rules[0].matches[0].path.value: invalid regular expression"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn at_the_connection_limit_requests_queue_briefly_and_the_excess_is_refused() {
    let backend = app("one-at-a-time").await;
    let policy = "apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: one, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: reviews}]\n  connectionLimits: {maxConnections: 1, maxPendingRequests: 1, pendingTimeout: 10s}\n";
    let manifests = Manifests::new().example("workloads").doc(policy).pod(
        "shop",
        "one",
        REVIEWS,
        backend.addr,
        false,
    );
    let client = client_for(&manifests).await;
    let proxy = client.outbound;
    // The only connection is busy with a held request.
    let first = tokio::spawn(async move { client::get(proxy, "http://reviews:9080/hold").await });
    eventually(
        "the first request held",
        Duration::from_secs(10),
        || async { (backend.held() == 1).then_some(()) },
    )
    .await;
    // The second waits for the connection.
    let second =
        tokio::spawn(async move { client::get(proxy, "http://reviews:9080/queued").await });
    eventually("one request pending", Duration::from_secs(10), || async {
        let (_, clusters) = client.admin_get("/clusters").await.ok()?;
        let clusters: serde_json::Value = serde_json::from_str(&clusters).ok()?;
        let b = clusters["backends"]
            .as_array()?
            .iter()
            .find(|b| b["name"] == "shop/reviews:9080")?
            .clone();
        (b["pending"] == 1).then_some(())
    })
    .await;
    // The queue is full: the third is refused at once.
    let resp = client::get(proxy, "http://reviews:9080/refused")
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), error_header(&resp)),
        (503, "overloaded".into())
    );
    backend.release();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let resp = second.await.unwrap().unwrap();
    assert_eq!(
        (resp.status().as_u16(), served_by(&resp)),
        (200, "one-at-a-time".into()),
        "the queued request got the connection"
    );
    assert_eq!(
        backend.connections(),
        1,
        "one upstream connection served both"
    );
}

/// A dead application behind a live sidecar: the sidecar answers 502 `connect-failed` and
/// marks the answer as never having reached its application; the client's sidecar sends the
/// request, whatever its method, to the other endpoint, and counts the failure against the
/// dead one, whose breaker opens.
#[tokio::test]
async fn a_dead_application_behind_a_live_sidecar_is_retried_elsewhere() {
    use weft_tests::mesh::{Ep, Mesh};
    use weft_tests::pods::at;
    let live = crate::ServerPod::start("reviews").await;
    let dead_ip = pod_ip();
    let _dead_sidecar = Proxy::start(dead_ip, &Mesh::new("dead").build(), &[]).await;
    let config = Mesh::new("client")
        .service(
            "shop",
            "reviews",
            None,
            8080,
            &[live.endpoint(), Ep::meshed(at(dead_ip, 8080))],
        )
        .build();
    let client = Proxy::start(pod_ip(), &config, &[]).await;
    let gets = tally(client.outbound, 30, |_| {
        get("http://reviews.shop:8080/", &[])
    })
    .await;
    assert_eq!(
        gets.into_iter().collect::<Vec<_>>(),
        [((200, "reviews".to_owned()), 30)]
    );
    let posts = tally(client.outbound, 10, |_| {
        Request::post("http://reviews.shop:8080/echo")
            .body(client::body("payload"))
            .unwrap()
    })
    .await;
    assert_eq!(
        posts.into_iter().collect::<Vec<_>>(),
        [((200, "reviews".to_owned()), 10)],
        "POSTs too: the dead application never had them"
    );
    let retried = r#"weft_retries_total{direction="outbound",route="default",backend="shop/reviews:8080",reason="connect-failed"}"#;
    assert!(client.metric(retried).await >= 1.0, "{}", client.log());
    let ejected = r#"weft_breaker_ejections_total{backend="shop/reviews:8080",reason="consecutive-failures"}"#;
    eventually(
        "the dead endpoint ejected",
        Duration::from_secs(10),
        || async { (client.metric(ejected).await >= 1.0).then_some(()) },
    )
    .await;
}
