//! The admin API and the proxy's start-up checks.

use std::time::Duration;

use weft_tests::client;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::paths::bin_path;
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

#[tokio::test]
async fn probes_metrics_config_and_log_level() {
    let app = HttpBackend::start(at(pod_ip(), 8080), "app").await;
    let config = Mesh::new("v-admin-7")
        .service(
            "shop",
            "app",
            Some("10.96.3.4".parse().unwrap()),
            80,
            &[Ep::direct(app.addr)],
        )
        .build();
    let proxy = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;

    assert_eq!(
        proxy.admin_get("/live").await.unwrap(),
        (200, "live\n".into())
    );
    assert_eq!(
        proxy.admin_get("/ready").await.unwrap(),
        (200, "ready\n".into())
    );
    for _ in 0..3 {
        assert_eq!(
            client::get(proxy.outbound, "http://app/")
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        client::get(proxy.outbound, "http://10.96.3.4/")
            .await
            .unwrap()
            .status(),
        200,
        "cluster IP as authority"
    );
    let sample = r#"weft_requests_total{direction="outbound",route="default",backend="shop/app:80",status_code="200"}"#;
    assert_eq!(proxy.metric(sample).await, 4.0);
    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("weft_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_config_info{version="v-admin-7"} 1"#),
        "{metrics}"
    );

    let (status, dump) = proxy.admin_get("/config_dump").await.unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], "v-admin-7");
    assert_eq!(dump["listeners"]["outbound"], proxy.outbound.to_string());
    assert_eq!(dump["config"]["services"][0]["name"], "app");

    let (status, clusters) = proxy.admin_get("/clusters").await.unwrap();
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    assert_eq!(
        clusters["backends"][0]["endpoints"][0]["address"],
        app.addr.to_string()
    );

    assert_eq!(
        proxy.admin_get("/log-level").await.unwrap(),
        (200, "info,weft_proxy=debug\n".into())
    );
    let url = format!("http://{}/log-level", proxy.admin);
    assert_eq!(
        client::request_text(proxy.admin, "PUT", &url, "warn")
            .await
            .unwrap(),
        (200, "warn\n".into())
    );
    assert_eq!(
        proxy.admin_get("/log-level").await.unwrap(),
        (200, "warn\n".into())
    );
    let (status, body) = client::request_text(proxy.admin, "PUT", &url, "[[[")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        proxy.admin_get("/log-level").await.unwrap().1,
        "warn\n",
        "a bad filter changes nothing"
    );

    // The page is one document that fills itself from the JSON endpoints (its content is
    // tested in a browser below), with nothing fetched from elsewhere.
    let (status, page) = proxy.admin_get("/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"json("/config_dump")"#) && page.contains(r#"json("/clusters")"#),
        "{page}"
    );
    assert!(
        !page.contains("src=") && !page.contains("<link") && !page.contains("://"),
        "no external asset: {page}"
    );
    assert_eq!(proxy.admin_get("/nope").await.unwrap().0, 404);
}

#[tokio::test]
async fn an_invalid_config_fails_the_start_and_names_the_field() {
    let dir = weft_tests::paths::scratch_dir("bad-config");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "version: bad\nservices:\n  - name: app\n    namespace: shop\n    ports: [{port: 80, backend: missing}]\n",
    )
    .unwrap();
    let ip = pod_ip().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(bin_path("weft-proxy"))
            .args(["run", "--pod-ip", &ip, "--config"])
            .arg(&path)
            .output(),
    )
    .await
    .expect("the proxy exits")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("services[0].ports[0].backend: no backend named \"missing\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_taken_port_fails_the_start_loudly() {
    let ip = pod_ip();
    let _squatter = std::net::TcpListener::bind(at(ip, 15143)).unwrap();
    let mut proxy = Proxy::spawn(ip, &Mesh::new("x").build(), &[]);
    let exit = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits");
    assert!(!exit.success());
    assert!(
        proxy.log().contains("binding the inbound listener"),
        "{}",
        proxy.log()
    );
}

/// The families of an exposition, parsed by the Prometheus project's OpenMetrics parser, each
/// checked to carry help text and a type. `None` when the parser is missing (skipped).
fn openmetrics_families(test: &str, text: &str) -> Option<Vec<serde_json::Value>> {
    let families = weft_tests::tools::parse_openmetrics(test, text)?
        .unwrap_or_else(|e| panic!("not OpenMetrics: {e}\n{text}"));
    let families = families.as_array().cloned().unwrap_or_default();
    assert!(!families.is_empty(), "{text}");
    for f in &families {
        assert!(
            f["help"].as_str().is_some_and(|h| !h.is_empty()),
            "{} has no help text",
            f["name"]
        );
        assert_ne!(f["type"], "unknown", "{} has no type", f["name"]);
    }
    Some(families)
}

/// The samples named `name` whose labels include every one of `labels`, as (labels, value).
fn samples<'a>(
    families: &'a [serde_json::Value],
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(&'a serde_json::Value, f64)> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| (&s["labels"], s["value"].as_f64().unwrap_or(f64::NAN)))
        .collect()
}

/// `/metrics` is OpenMetrics, labelled so, and a strict parser reads it: every family has
/// help text, the request counts match the traffic sent, and the gauges read at the scrape
/// cover every endpoint in force (breaker 0 for the healthy one, 1 for the ejected one) and
/// every backend (in-flight and pending requests).
#[tokio::test]
async fn metrics_are_openmetrics_and_count_the_traffic_sent() {
    const TEST: &str = "metrics_are_openmetrics_and_count_the_traffic_sent";
    let good = HttpBackend::start(at(pod_ip(), 9080), "good").await;
    let bad = HttpBackend::start(at(pod_ip(), 9080), "bad").await;
    bad.fail_with(500);
    let reviews = [("app", "reviews"), ("version", "v1")];
    let manifests = weft_tests::manifests::Manifests::new()
        .example("workloads")
        .example("circuit-breaker")
        .pod("shop", "good", &reviews, good.addr, false)
        .pod("shop", "bad", &reviews, bad.addr, false);
    let proxy = Proxy::start(
        pod_ip(),
        &manifests.compile("shop"),
        &["--namespace", "shop"],
    )
    .await;
    let sent = 40;
    let mut by_status = std::collections::BTreeMap::new();
    for _ in 0..sent {
        let resp = client::get(proxy.outbound, "http://reviews:9080/")
            .await
            .unwrap();
        *by_status.entry(resp.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(
        by_status.get(&500).copied(),
        Some(3),
        "the bad endpoint's three failures before its ejection: {by_status:?}"
    );

    let url = format!("http://{}/metrics", proxy.admin);
    let resp = client::get(proxy.admin, &url).await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(resp.body().to_vec()).unwrap();
    let Some(families) = openmetrics_families(TEST, &text) else {
        return;
    };
    let backend = ("backend", "shop/reviews:9080");
    let counted: Vec<(u16, f64)> = samples(&families, "weft_requests_total", &[backend])
        .into_iter()
        .map(|(labels, v)| (labels["status_code"].as_str().unwrap().parse().unwrap(), v))
        .collect();
    let want: Vec<(u16, f64)> = by_status.iter().map(|(s, n)| (*s, f64::from(*n))).collect();
    let mut counted_sorted = counted.clone();
    counted_sorted.sort_by_key(|(s, _)| *s);
    assert_eq!(counted_sorted, want, "weft_requests_total by status");
    let durations = samples(&families, "weft_request_duration_seconds_count", &[backend]);
    assert_eq!(durations.len(), 1);
    assert_eq!(durations[0].1, f64::from(sent));
    let bounds: Vec<&str> = samples(
        &families,
        "weft_request_duration_seconds_bucket",
        &[backend],
    )
    .iter()
    .filter_map(|(labels, _)| labels["le"].as_str())
    .collect();
    for le in ["0.0001", "0.001", "1.0", "10.0", "+Inf"] {
        assert!(bounds.contains(&le), "bucket {le} in {bounds:?}");
    }
    let breaker = |addr: std::net::SocketAddr| {
        let endpoint = addr.to_string();
        let got = samples(
            &families,
            "weft_breaker_state",
            &[backend, ("endpoint", endpoint.as_str())],
        );
        assert_eq!(got.len(), 1, "one breaker series for {endpoint}");
        got[0].1
    };
    assert_eq!(breaker(good.addr), 0.0, "healthy: closed");
    assert_eq!(breaker(bad.addr), 1.0, "ejected: open");
    for gauge in ["weft_in_flight_requests", "weft_pending_requests"] {
        let got = samples(&families, gauge, &[backend]);
        assert_eq!(got.len(), 1, "{gauge}");
        assert_eq!(got[0].1, 0.0, "{gauge} once every request has its answer");
    }
}

/// The control plane's `/metrics` is OpenMetrics too, labelled so, with help on every family.
#[tokio::test]
async fn the_control_planes_metrics_are_openmetrics() {
    let cp = weft_tests::control::ControlPlane::start(pod_ip()).await;
    let url = format!("http://{}/metrics", cp.admin);
    let resp = client::get(cp.admin, &url).await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(resp.body().to_vec()).unwrap();
    openmetrics_families("the_control_planes_metrics_are_openmetrics", &text);
}

/// The admin page in headless Chromium: it shows the routes by name with their matches, the
/// endpoints' state and the certificate, and an endpoint made to fail shows as ejected
/// without a reload. The screenshot is kept in the target directory's `tmp/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_routes_endpoints_and_the_certificate_live() {
    let Some(mut browser) = weft_tests::tools::Browser::start(
        "the_admin_page_shows_routes_endpoints_and_the_certificate_live",
    ) else {
        return;
    };
    let good = HttpBackend::start(at(pod_ip(), 9080), "good").await;
    let bad = HttpBackend::start(at(pod_ip(), 9080), "bad").await;
    let reviews = [("app", "reviews"), ("version", "v1")];
    let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews-routes, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]\n  rules:\n  - name: canary\n    matches: [{headers: [{name: x-canary, value: \"true\"}]}]\n    backendRefs: [{name: reviews, port: 9080}]\n  - backendRefs: [{name: reviews, port: 9080}]\n";
    let manifests = weft_tests::manifests::Manifests::new()
        .example("workloads")
        .example("circuit-breaker")
        .doc(routes)
        .pod("shop", "good", &reviews, good.addr, false)
        .pod("shop", "bad", &reviews, bad.addr, false);
    let cp = weft_tests::control::ControlPlane::start(pod_ip()).await;
    cp.write("mesh.yaml", &manifests.yaml());
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    crate::identity::all_acked(&cp, &manifests, &[(&proxy, None)]).await;

    browser.navigate(&format!("http://{}/", proxy.admin));
    let endpoint = |addr: std::net::SocketAddr, cell: &str| {
        format!(
            r#"(document.querySelector('#endpoints tr[data-endpoint="{addr}"] td.{cell}') || {{}}).textContent"#
        )
    };
    let ready = weft_tests::eventually("the page's first refresh", Duration::from_secs(20), || {
        let value = browser.eval(&endpoint(bad.addr, "breaker"));
        async move { (value == "closed").then_some(()) }
    });
    ready.await;
    let rows = browser.eval("[...document.querySelectorAll('#routes tbody tr')].map(r => [...r.cells].map(c => c.textContent).join(' | '))");
    let rows: Vec<String> = serde_json::from_value(rows).unwrap();
    assert!(
        rows.iter()
            .any(|r| r
                .contains("shop/reviews-routes | canary | PathPrefix /, header x-canary = true")),
        "{rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("shop/reviews-routes | #1 | PathPrefix /")),
        "{rows:#?}"
    );
    assert_eq!(browser.eval(&endpoint(good.addr, "health")), "healthy");
    let identity = browser.eval("document.getElementById('identity').textContent");
    let identity = identity.as_str().unwrap_or_default();
    assert!(
        identity.starts_with("spiffe://cluster.local/ns/shop/sa/productpage, expires 20"),
        "{identity}"
    );
    // A mark on the page: a reload would lose it.
    browser.eval("window.weftMark = 'unchanged'");
    let refreshes: u64 = browser
        .eval("Number(document.getElementById('refreshes').textContent)")
        .as_u64()
        .unwrap_or_default();

    bad.fail_with(500);
    for _ in 0..10 {
        let _ = client::get(proxy.outbound, "http://reviews.shop:9080/").await;
    }
    let ejected =
        weft_tests::eventually("the ejection on the page", Duration::from_secs(20), || {
            let state = (
                browser.eval(&endpoint(bad.addr, "breaker")),
                browser.eval(&endpoint(bad.addr, "health")),
            );
            async move { (state.0 == "open" && state.1 == "ejected").then_some(()) }
        });
    ejected.await;
    assert_eq!(browser.eval("window.weftMark"), "unchanged", "no reload");
    let later = browser
        .eval("Number(document.getElementById('refreshes').textContent)")
        .as_u64()
        .unwrap_or_default();
    assert!(later > refreshes, "{later} refreshes after {refreshes}");
    assert_eq!(browser.eval(&endpoint(good.addr, "breaker")), "closed");

    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("the admin page: {} ({} bytes)", path.display(), png.len());
}

/// The Grafana dashboard in `manifests/grafana/` is valid JSON whose every query names only
/// metric families the binaries register: those a running proxy and control plane expose
/// (a family shows once it has a sample), and those their metrics modules register.
#[tokio::test]
async fn the_grafana_dashboard_names_only_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("manifests/grafana/weft-golden-signals.json")).unwrap();
    let proxy = Proxy::start(pod_ip(), &Mesh::new("dash").build(), &[]).await;
    let cp = weft_tests::control::ControlPlane::start(pod_ip()).await;
    let (_, proxy_metrics) = proxy.admin_get("/metrics").await.unwrap();
    let (_, control_metrics) = cp.get("/metrics").await.unwrap();
    let mut families: std::collections::BTreeSet<String> = [proxy_metrics, control_metrics]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for (source, prefix) in [
        ("crates/proxy/src/metrics.rs", "weft_"),
        ("control-plane/src/metrics.rs", "weft_control_"),
    ] {
        let text = read(source);
        for registration in text.split("registry.register(").skip(1) {
            let name = registration.split('"').nth(1).unwrap();
            families.insert(format!("{prefix}{name}"));
        }
    }
    let panels = dashboard["panels"].as_array().unwrap();
    let mut named = std::collections::BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("weft_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    families.contains(family),
                    "{} uses {name}, which no binary exposes; they expose {families:?}",
                    panel["title"]
                );
                named.insert(family.to_owned());
            }
        }
    }
    // The golden signals are there: traffic, errors and latency per route and per backend,
    // saturation, and the control plane's pushes.
    for family in [
        "weft_requests",
        "weft_request_duration_seconds",
        "weft_in_flight_requests",
        "weft_pending_requests",
        "weft_breaker_state",
        "weft_control_ack_latency_seconds",
    ] {
        assert!(named.contains(family), "{family} in {named:?}");
    }
}
