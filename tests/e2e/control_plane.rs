//! The control plane end to end: manifests in a directory, `weft control`, proxies subscribed
//! to it. Edits propagate, bad manifests are refused alone, nothing is dropped while configs
//! change, and the proxies ride out control-plane outages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use weft_tests::client::{self, served_by};
use weft_tests::control::ControlPlane;
use weft_tests::eventually;
use weft_tests::manifests::Manifests;
use weft_tests::paths::bin_path;
use weft_tests::pods::pod_ip;
use weft_tests::proxy::Proxy;

use crate::{ServerPod, app, get, tally};

const V1: &[(&str, &str)] = &[("app", "reviews"), ("version", "v1")];
const V2: &[(&str, &str)] = &[("app", "reviews"), ("version", "v2")];

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews-split, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: reviews, port: 9080}}]\n  rules:\n    - backendRefs:\n        - {{name: reviews-v1, port: 9080, weight: {v1}}}\n        - {{name: reviews-v2, port: 9080, weight: {v2}}}\n"
    )
}

/// The version a proxy in `shop` runs once the control plane has read `manifests`: the same
/// compiler, so the same digest.
fn version_of(manifests: &Manifests) -> String {
    manifests.compile("shop").version
}

/// Waits until the control plane reports `proxies` proxies, all having acknowledged `version`.
async fn acked(cp: &ControlPlane, proxies: usize, version: &str) {
    eventually(
        &format!("{proxies} proxies to ack {version}"),
        Duration::from_secs(10),
        || async {
            let status = cp.status().await;
            let list = status["proxies"].as_array()?;
            let all = list.len() == proxies
                && list
                    .iter()
                    .all(|p| p["acked"] == version && p["upToDate"] == true);
            all.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_weight_edit_moves_the_split_within_a_second() {
    let cp = ControlPlane::start(pod_ip()).await;
    let (v1, v2) = (app("reviews-v1").await, app("reviews-v2").await);
    let pods = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", V1, v1.addr, false)
        .pod("shop", "v2", V2, v2.addr, false);
    cp.write("workloads.yaml", &pods.yaml());
    cp.write("split.yaml", &split(100, 0));
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    acked(&cp, 1, &version_of(&pods.clone().doc(&split(100, 0)))).await;
    let before = tally(proxy.outbound, 50, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        before.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v1".into()), 50)]
    );

    cp.write("split.yaml", &split(0, 100));
    let edited = Instant::now();
    let mut conn = client::http1(proxy.outbound).await.unwrap();
    loop {
        conn.ready().await.unwrap();
        let resp = conn
            .send_request(get("http://reviews:9080/", &[]))
            .await
            .unwrap();
        let who = served_by(&resp);
        client::text(resp).await.unwrap();
        if who == "reviews-v2" {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(1),
            "the edit had not reached the proxy after a second"
        );
    }
    eprintln!("the split moved {:?} after the edit", edited.elapsed());
    let after = tally(proxy.outbound, 50, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        after.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v2".into()), 50)]
    );
}

#[tokio::test]
async fn fifty_config_changes_under_load_fail_no_request() {
    let cp = ControlPlane::start(pod_ip()).await;
    let v1 = ServerPod::joined("reviews-v1", &cp, "v1").await;
    let v2 = ServerPod::joined("reviews-v2", &cp, "v2").await;
    let extra = app("reviews-v1b").await;
    let base = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", V1, v1.app.addr, true)
        .pod("shop", "v2", V2, v2.app.addr, true);
    let with_extra = base.clone().pod("shop", "v1b", V1, extra.addr, false);
    cp.write("workloads.yaml", &base.yaml());
    cp.write("split.yaml", &split(50, 50));
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    acked(&cp, 3, &version_of(&base.clone().doc(&split(50, 50)))).await;
    // The four configs the changes cycle through.
    let version = |pods: &Manifests, a, b| version_of(&pods.clone().doc(&split(a, b)));
    let versions = [
        [version(&base, 90, 10), version(&base, 10, 90)],
        [version(&with_extra, 90, 10), version(&with_extra, 10, 90)],
    ];
    let applied_before = proxy
        .metric(r#"weft_config_updates_total{result="applied"}"#)
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    // HTTP/1 keep-alive clients.
    for _ in 0..2 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.outbound);
        load.push(tokio::spawn(async move {
            let mut conn = client::http1(addr).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                conn.ready().await.unwrap();
                let good = match conn.send_request(get("http://reviews:9080/", &[])).await {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    // HTTP/2 streams.
    {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.outbound);
        load.push(tokio::spawn(async move {
            let h2 = client::http2(addr).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..8)
                    .map(|_| {
                        let mut h2 = h2.clone();
                        let req = Request::get("http://reviews:9080/")
                            .version(http::Version::HTTP_2)
                            .body(client::empty())
                            .unwrap();
                        tokio::spawn(async move {
                            let resp = h2.send_request(req).await?;
                            let status = resp.status();
                            resp.into_body().collect().await?;
                            anyhow::Ok(status)
                        })
                    })
                    .collect();
                for call in batch {
                    match call.await.unwrap() {
                        Ok(s) if s == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }
    // Long streaming responses that span many config changes.
    let drips: Vec<_> = (0..3)
        .map(|_| {
            let addr = proxy.outbound;
            tokio::spawn(async move {
                let resp = client::get(addr, "http://reviews:9080/drip/300").await?;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                Ok(resp.body().len())
            })
        })
        .collect();

    for change in 0..50 {
        // The weights flip every time; an extra v1 pod comes and goes every fifth time, so
        // the endpoint set changes under load too.
        let (a, b) = if change % 2 == 0 { (90, 10) } else { (10, 90) };
        let extra_pod = (change / 5) % 2 == 0;
        if change % 5 == 0 {
            cp.write(
                "workloads.yaml",
                &if extra_pod { &with_extra } else { &base }.yaml(),
            );
        }
        cp.write("split.yaml", &split(a, b));
        acked(&cp, 3, &versions[usize::from(extra_pod)][change % 2]).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    for d in drips {
        assert_eq!(
            d.await.unwrap().unwrap(),
            300 * 1024,
            "a long stream was cut"
        );
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let applied = proxy
        .metric(r#"weft_config_updates_total{result="applied"}"#)
        .await
        - applied_before;
    eprintln!("{ok} requests succeeded, {failed} failed, across {applied} configs applied");
    assert_eq!(failed, 0, "requests failed while configs changed");
    assert!(ok > 500, "the load ran: {ok}");
    assert!(applied >= 50.0, "every change was applied: {applied}");
    assert!(
        extra.requests() > 0,
        "the extra endpoint served while it was there"
    );
}

#[tokio::test]
async fn the_last_config_serves_through_a_control_plane_outage() {
    let mut cp = ControlPlane::start(pod_ip()).await;
    let (v1, v2) = (app("reviews-v1").await, app("reviews-v2").await);
    let pods = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", V1, v1.addr, false)
        .pod("shop", "v2", V2, v2.addr, false);
    cp.write("workloads.yaml", &pods.yaml());
    cp.write("split.yaml", &split(100, 0));
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    let version = version_of(&pods.clone().doc(&split(100, 0)));
    acked(&cp, 1, &version).await;
    let applied = proxy
        .metric(r#"weft_config_updates_total{result="applied"}"#)
        .await;

    cp.kill();
    let during = tally(proxy.outbound, 100, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        during.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v1".into()), 100)]
    );
    assert_eq!(
        proxy.admin_get("/ready").await.unwrap().0,
        200,
        "still ready on its last config"
    );

    cp.restart().await;
    acked(&cp, 1, &version).await;
    let after = proxy
        .metric(r#"weft_config_updates_total{result="applied"}"#)
        .await;
    assert_eq!(
        after, applied,
        "an unchanged config was not sent again on reconnect"
    );

    cp.write("split.yaml", &split(0, 100));
    eventually(
        "the resynced proxy follows a new edit",
        Duration::from_secs(10),
        || async {
            let t = tally(proxy.outbound, 5, |_| get("http://reviews:9080/", &[])).await;
            (t.keys().all(|(_, who)| who == "reviews-v2")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_bad_manifest_is_refused_alone_while_traffic_keeps_its_config() {
    let cp = ControlPlane::start(pod_ip()).await;
    let (v1, v2, ratings) = (
        app("reviews-v1").await,
        app("reviews-v2").await,
        app("ratings").await,
    );
    let pods = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", V1, v1.addr, false)
        .pod("shop", "v2", V2, v2.addr, false);
    cp.write("workloads.yaml", &pods.yaml());
    cp.write("split.yaml", &split(100, 0));
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    acked(&cp, 1, &version_of(&pods.clone().doc(&split(100, 0)))).await;

    // A broken edit of the route, and a new Service in another file.
    cp.write(
        "split.yaml",
        &split(100, 0)
            .replace("weight: 100", "weight: -100")
            .replace("weight: 0", "weight: 100"),
    );
    let new_service = Manifests::new()
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: shop}\nspec: {selector: {app: ratings}, ports: [{port: 9080}]}\n")
        .pod("shop", "ratings", &[("app", "ratings")], ratings.addr, false);
    cp.write("ratings.yaml", &new_service.yaml());
    let errors = eventually("the error is reported", Duration::from_secs(10), || async {
        let status = cp.status().await;
        let errors = status["manifests"]["errors"].as_array()?.clone();
        (!errors.is_empty()).then_some(errors)
    })
    .await;
    let file = cp.manifests.join("split.yaml");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "{}:1:spec.rules[0].backendRefs[0].weight: invalid value: integer `-100`",
            file.display()
        )),
        "{error}"
    );
    // What the proxy runs: the last good route, and the new Service.
    acked(
        &cp,
        1,
        &version_of(&pods.clone().doc(&split(100, 0)).doc(&new_service.yaml())),
    )
    .await;
    let counts = tally(proxy.outbound, 30, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v1".into()), 30)],
        "the last good route serves"
    );
    let counts = tally(proxy.outbound, 5, |_| get("http://ratings:9080/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((200, "ratings".into()), 5)],
        "the good manifest applied"
    );

    let out = tokio::process::Command::new(bin_path("weft"))
        .args(["status", "--control-plane", &cp.admin.to_string()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "weft status reports trouble");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("MANIFEST ERRORS (1)")
            && table.contains("split.yaml:1:spec.rules[0].backendRefs[0].weight"),
        "{table}"
    );
    assert!(
        table.contains("shop/") && table.contains("up to date"),
        "{table}"
    );
}

#[tokio::test]
async fn breaker_state_survives_a_config_swap() {
    let cp = ControlPlane::start(pod_ip()).await;
    let (a, b, bad) = (app("good-a").await, app("good-b").await, app("bad").await);
    bad.fail_with(500);
    let policy = "apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: breaker, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: reviews}]\n  loadBalancer: {type: RoundRobin}\n  circuitBreaker: {consecutiveFailures: 3, baseEjectionTime: 5m, maxEjectionTime: 5m}\n";
    let pods = Manifests::new()
        .example("workloads")
        .doc(policy)
        .pod("shop", "a", V1, a.addr, false)
        .pod("shop", "b", V1, b.addr, false)
        .pod("shop", "bad", V1, bad.addr, false);
    cp.write("workloads.yaml", &pods.yaml());
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    acked(&cp, 1, &version_of(&pods)).await;
    tally(proxy.outbound, 30, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(bad.requests(), 3, "ejected");

    // A change elsewhere: a new Service.
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec: {selector: {app: other}, ports: [{port: 80}]}\n";
    cp.write("other.yaml", other);
    acked(&cp, 1, &version_of(&pods.clone().doc(other))).await;
    let counts = tally(proxy.outbound, 30, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        bad.requests(),
        3,
        "still ejected after the swap: {counts:?}"
    );
}

#[tokio::test]
async fn a_proxy_is_not_ready_until_it_is_certified() {
    let cp = ControlPlane::start(pod_ip()).await;
    cp.write(
        "workloads.yaml",
        &Manifests::new().example("workloads").yaml(),
    );
    let mut flags = cp.proxy_flags("shop", "productpage");
    // The token file does not exist yet: the CA cannot be asked.
    let token = cp.state.join("token-later");
    let at = flags.iter().position(|f| f == "--token-file").unwrap() + 1;
    let issued = std::mem::replace(&mut flags[at], token.display().to_string());
    let proxy = Proxy::spawn_raw(pod_ip(), &flags);
    eventually("the admin API answers", Duration::from_secs(10), || async {
        proxy.admin_get("/live").await.ok()
    })
    .await;
    let (status, body) = proxy.admin_get("/ready").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "waiting for a certificate\n")
    );
    std::fs::copy(&issued, &token).unwrap();
    proxy.wait_ready().await;
    let (_, certs) = proxy.admin_get("/certs").await.unwrap();
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(
        certs["spiffeId"],
        "spiffe://cluster.local/ns/shop/sa/productpage"
    );
    assert_eq!(certs["certified"], true);
    assert!(
        certs["trustAnchorFingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{certs}"
    );
}

/// The next ACK or NACK from the proxy.
async fn next_reply(
    replies: &mut tokio::sync::mpsc::Receiver<weft_api::proto::ProxyMessage>,
) -> weft_api::proto::proxy_message::Message {
    use weft_api::proto::proxy_message::Message;
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.recv())
            .await
            .expect("a reply in time")
            .expect("replies");
        match reply.message {
            Some(Message::Ack(a)) => return Message::Ack(a),
            Some(Message::Nack(n)) => return Message::Nack(n),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_snapshot_the_proxy_refuses_is_nacked_and_the_old_config_keeps_serving() {
    use weft_api::proto::proxy_message::Message;
    use weft_tests::mesh::{Ep, Mesh};

    let backend = app("kept").await;
    let mut fake = weft_tests::fake_control::FakeControlPlane::start(pod_ip()).await;
    let proxy = Proxy::spawn_raw(pod_ip(), &fake.proxy_flags());
    let (snapshot_tx, replies) = (fake.snapshots.clone(), &mut fake.replies);

    let good = Mesh::new("good-1")
        .service("shop", "kept", None, 80, &[Ep::direct(backend.addr)])
        .build();
    let send = |config: &weft_api::config::ProxyConfig| weft_api::proto::Snapshot {
        version: config.version.clone(),
        config: serde_json::to_vec(config).unwrap().into(),
    };
    snapshot_tx.send(send(&good)).await.unwrap();
    assert!(matches!(next_reply(replies).await, Message::Ack(a) if a.version == "good-1"));
    proxy.wait_ready().await;

    let mut bad = good.clone();
    bad.version = "bad-2".into();
    bad.services[0].ports[0].backend = "nowhere".into();
    snapshot_tx.send(send(&bad)).await.unwrap();
    match next_reply(replies).await {
        Message::Nack(n) => {
            assert_eq!(n.version, "bad-2");
            assert_eq!(n.kind, "invalid");
            assert!(
                n.reason
                    .contains("services[0].ports[0].backend: no backend named \"nowhere\""),
                "{}",
                n.reason
            );
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    let (_, dump) = proxy.admin_get("/config_dump").await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["version"], "good-1",
        "the refused config did not replace the good one"
    );
    let resp = client::get(proxy.outbound, "http://kept.shop/")
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), served_by(&resp)),
        (200, "kept".into())
    );
    assert_eq!(
        proxy
            .metric(r#"weft_config_updates_total{result="rejected"}"#)
            .await,
        1.0
    );
}

/// A Service without a selector, its endpoints in two EndpointSlices (one endpoint not
/// ready), through the real control plane; then a slice edited to drop an endpoint, and the
/// traffic follows.
#[tokio::test]
async fn a_service_backed_by_endpoint_slices_serves_their_ready_endpoints_and_follows_edits() {
    let cp = ControlPlane::start(pod_ip()).await;
    let (a, b, unready) = (
        app("slice-a").await,
        app("slice-b").await,
        app("unready").await,
    );
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: legacy, namespace: shop}\nspec:\n  ports: [{name: http, port: 80, targetPort: 9080}]\n";
    let slice = |name: &str, endpoints: &[(std::net::SocketAddr, bool)]| {
        let endpoints: String = endpoints
            .iter()
            .map(|(addr, ready)| {
                format!(
                    "  - addresses: [\"{}\"]\n    conditions: {{ready: {ready}}}\n",
                    addr.ip()
                )
            })
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{kubernetes.io/service-name: legacy}}\naddressType: IPv4\nports: [{{name: http, port: 9080}}]\nendpoints:\n{endpoints}"
        )
    };
    let first = slice("legacy-1", &[(a.addr, true), (unready.addr, false)]);
    let manifests = Manifests::new()
        .doc(service)
        .doc(&first)
        .doc(&slice("legacy-2", &[(b.addr, true)]));
    cp.write("legacy.yaml", &manifests.yaml());
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "client", &[]).await;
    acked(&cp, 1, &version_of(&manifests)).await;
    let counts = tally(proxy.outbound, 40, |_| get("http://legacy.shop/", &[])).await;
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        [(200, "slice-a".to_owned()), (200, "slice-b".to_owned())],
        "both slices' ready endpoints, never the unready one: {counts:?}"
    );
    assert_eq!(unready.requests(), 0);

    // The first slice loses its ready endpoint.
    let edited = Manifests::new()
        .doc(service)
        .doc(&slice("legacy-1", &[(unready.addr, false)]))
        .doc(&slice("legacy-2", &[(b.addr, true)]));
    cp.write("legacy.yaml", &edited.yaml());
    acked(&cp, 1, &version_of(&edited)).await;
    let counts = tally(proxy.outbound, 20, |_| get("http://legacy.shop/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((200, "slice-b".to_owned()), 20)]
    );
    assert_eq!(unready.requests(), 0);
}

/// A NACK through the real control plane: a proxy that caps the config it takes refuses a
/// snapshot over its cap; the control plane shows the refusal and counts it, the proxy keeps
/// serving the config in force, and the next config within the cap is taken.
#[tokio::test]
async fn a_config_over_a_proxys_cap_is_nacked_through_the_real_control_plane() {
    let cp = ControlPlane::start(pod_ip()).await;
    let v1 = app("reviews-v1").await;
    let pods = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", V1, v1.addr, false);
    cp.write("workloads.yaml", &pods.yaml());
    let size = serde_json::to_vec(&pods.compile("shop")).unwrap().len();
    let cap = (size + 1_024).to_string();
    let proxy = Proxy::joined(
        pod_ip(),
        &cp,
        "shop",
        "productpage",
        &["--max-config-bytes", &cap],
    )
    .await;
    let good = version_of(&pods);
    acked(&cp, 1, &good).await;

    // Forty more Services: several kilobytes more config.
    let more: String = (0..40)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: extra-{i}, namespace: shop}}\nspec:\n  selector: {{app: extra-{i}}}\n  ports: [{{port: 80}}]\n---\n"
            )
        })
        .collect();
    let big = Manifests::new().doc(&pods.yaml()).doc(&more);
    let refused = version_of(&big);
    cp.write("more.yaml", &more);
    let reason = eventually(
        "the control plane to record the proxy's NACK",
        Duration::from_secs(10),
        || async {
            let status = cp.status().await;
            let nacked = &status["proxies"][0]["nacked"];
            (nacked[0] == refused.as_str()).then(|| nacked[1].as_str().unwrap_or("").to_owned())
        },
    )
    .await;
    assert!(
        reason.contains("over this proxy's --max-config-bytes"),
        "{reason}"
    );
    let (_, metrics) = cp.get("/metrics").await.unwrap();
    assert!(
        weft_tests::proxy::metric_value(&metrics, r#"weft_control_replies_total{result="nack"}"#)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        weft_tests::proxy::metric_value(
            &metrics,
            r#"weft_control_nacks_total{reason="too-large"}"#
        ) >= 1.0,
        "the NACK by its kind: {metrics}"
    );
    assert!(
        weft_tests::proxy::metric_value(&metrics, "weft_control_reconcile_duration_seconds_count")
            >= 2.0,
        "each rebuild timed: {metrics}"
    );
    let (_, dump) = proxy.admin_get("/config_dump").await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["version"],
        good.as_str(),
        "the config in force is kept"
    );
    let counts = tally(proxy.outbound, 10, |_| get("http://reviews-v1:9080/", &[])).await;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v1".into()), 10)]
    );
    assert_eq!(
        proxy
            .metric(r#"weft_config_updates_total{result="rejected"}"#)
            .await,
        1.0
    );
    let (_, text) = cp.get("/status").await.unwrap();
    assert!(text.contains("max-config-bytes"), "{text}");

    // Back within the cap: taken, and the proxy is up to date again.
    cp.remove("more.yaml");
    acked(&cp, 1, &good).await;
}

/// `weft status` shows each proxy's certificate expiry; `weft status POD` shows one proxy's
/// versions, certificate and config, the config read from the proxy's own admin API.
#[tokio::test]
async fn weft_status_shows_certificates_and_one_proxys_config() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let manifests = Manifests::new()
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  selector: {app: reviews}\n  ports: [{port: 9080, targetPort: 8080}]\n")
        .pod("shop", "reviews", &[("app", "reviews")], server.app.addr, true);
    cp.write("mesh.yaml", &manifests.yaml());
    let proxy = Proxy::joined(
        pod_ip(),
        &cp,
        "shop",
        "productpage",
        &["--pod-name", "productpage-1"],
    )
    .await;
    acked(&cp, 2, &version_of(&manifests)).await;
    let status = |args: &[&str]| {
        let out = std::process::Command::new(bin_path("weft"))
            .args(["status", "--control-plane", &cp.admin.to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, table, _) = status(&[]);
    assert_eq!(code, Some(0), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("shop/productpage-1"))
        .unwrap_or_else(|| panic!("{table}"));
    // The default lifetime is 24 hours.
    assert!(row.contains(" 24h00m ") || row.contains(" 23h5"), "{table}");
    let (_, json, _) = status(&["-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let record = json["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podName"] == "productpage-1")
        .unwrap()
        .clone();
    assert_eq!(
        record["certificate"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/productpage"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = record["certificate"]["notAfter"].as_u64().unwrap() - now;
    assert!(
        (23 * 3600..=24 * 3600 + 60).contains(&left),
        "{left} s left"
    );

    let (code, one, _) = status(&["productpage-1"]);
    assert_eq!(code, Some(0), "{one}");
    for want in [
        &format!("shop/productpage-1 ({})", proxy.pod_ip),
        "certificate      spiffe://cluster.local/ns/shop/sa/productpage",
        "), expires in 2",
        &format!(
            "CONFIG {} in force: 1 Services, 1 backends",
            version_of(&manifests)
        ),
        "shop/reviews",
        "shop/reviews:9080",
        "1 (1 meshed)",
    ] {
        assert!(one.contains(want), "{want:?} in\n{one}");
    }
    let (_, json, _) = status(&["shop/productpage-1", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["configDump"]["version"], json["acked"]);
    let (code, _, err) = status(&["nobody"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("no connected proxy is pod \"nobody\""),
        "{err}"
    );
}
