//! Cluster mode end to end: `weft control --kubernetes` against a fake Kubernetes API server
//! (real HTTP: lists, watches, status patches, TokenReview, the CA Secret), with a real proxy
//! that proves its ServiceAccount token and routes by the cluster's HTTPRoute.

use std::time::{Duration, Instant};

use serde_json::Value;
use weft_tests::control::ControlPlane;
use weft_tests::eventually;
use weft_tests::kube_api::{self, FakeApi, collection};
use weft_tests::manifests::Manifests;
use weft_tests::pods::pod_ip;
use weft_tests::proxy::Proxy;

use crate::{app, get, tally};

const V1: &[(&str, &str)] = &[("app", "reviews"), ("version", "v1")];
const V2: &[(&str, &str)] = &[("app", "reviews"), ("version", "v2")];

fn split(generation: u32, v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews-split, namespace: shop, generation: {generation}}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]\n  rules:\n    - backendRefs:\n        - {{name: reviews-v1, port: 9080, weight: {v1}}}\n        - {{name: reviews-v2, port: 9080, weight: {v2}}}\n"
    )
}

/// weft's Accepted condition in the route's status, with its observed generation.
fn accepted(fake: &FakeApi) -> Option<(String, i64)> {
    let route = fake.object(
        &collection("gateway.networking.k8s.io/v1", "httproutes"),
        "shop",
        "reviews-split",
    )?;
    let parents = route.pointer("/status/parents")?.as_array()?.clone();
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/mesh")?;
    let condition = ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["observedGeneration"].as_i64()?,
    ))
}

#[tokio::test]
async fn cluster_mode_serves_the_clusters_routes_to_real_proxies() {
    let fake = FakeApi::default();
    let api = kube_api::start(&fake).await;
    let (v1, v2) = (app("reviews-v1").await, app("reviews-v2").await);
    let workloads = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", V1, v1.addr, false)
        .pod("shop", "v2", V2, v2.addr, false);
    kube_api::apply(&fake, &workloads.yaml(), false);
    kube_api::apply(&fake, &split(1, 100, 0), false);

    let cp = ControlPlane::start_kubernetes(pod_ip(), api).await;
    let log = cp.log();
    assert!(log.contains("generated a root CA into its Secret"), "{log}");
    assert!(
        fake.object("/api/v1/secrets", "weft-system", "weft-ca")
            .is_some(),
        "the CA is kept in its Secret"
    );

    // The proxy's certificate comes from its ServiceAccount token, checked by TokenReview.
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    let reviews = fake.reviews();
    assert!(
        reviews
            .iter()
            .any(|r| r["spec"]["token"] == "shop:productpage:weft"
                && r["spec"]["audiences"] == serde_json::json!(["weft"])),
        "{reviews:?}"
    );
    let before = tally(proxy.outbound, 50, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        before.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v1".into()), 50)]
    );
    eventually("the route's status", Duration::from_secs(10), || async {
        (accepted(&fake) == Some(("True".into(), 1))).then_some(())
    })
    .await;

    // An edit through the API moves the split.
    kube_api::apply(&fake, &split(2, 0, 100), true);
    let edited = Instant::now();
    eventually(
        "the edit to reach the proxy",
        Duration::from_secs(10),
        || async {
            let after = tally(proxy.outbound, 10, |_| get("http://reviews:9080/", &[])).await;
            (after.into_iter().collect::<Vec<_>>() == [((200, "reviews-v2".into()), 10)])
                .then_some(())
        },
    )
    .await;
    eprintln!("the split moved {:?} after the edit", edited.elapsed());
    eventually(
        "the status of generation 2",
        Duration::from_secs(10),
        || async { (accepted(&fake) == Some(("True".into(), 2))).then_some(()) },
    )
    .await;

    // A broken edit is refused: traffic keeps the last good route and the status says so.
    let broken = split(3, 0, 100).replace("weight: 100", "weight: 2000000");
    kube_api::apply(&fake, &broken, true);
    eventually(
        "the refusal in the status",
        Duration::from_secs(10),
        || async { (accepted(&fake) == Some(("False".into(), 3))).then_some(()) },
    )
    .await;
    let status: Value = cp.status().await;
    assert!(
        status.to_string().contains("HTTPRoute/shop/reviews-split:1:spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000"),
        "{status}"
    );
    let kept = tally(proxy.outbound, 20, |_| get("http://reviews:9080/", &[])).await;
    assert_eq!(
        kept.into_iter().collect::<Vec<_>>(),
        [((200, "reviews-v2".into()), 20)]
    );

    // A backend that is not there is no refusal: the route is accepted and serves, its share
    // (here all of it) answered 500, and ResolvedRefs says why.
    let partial = split(4, 0, 100).replace("reviews-v2, port", "ghost, port");
    kube_api::apply(&fake, &partial, true);
    eventually(
        "the partial failure in the status",
        Duration::from_secs(10),
        || async { (accepted(&fake) == Some(("True".into(), 4))).then_some(()) },
    )
    .await;
    let route = fake
        .object(
            &collection("gateway.networking.k8s.io/v1", "httproutes"),
            "shop",
            "reviews-split",
        )
        .unwrap();
    let ours = route["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/mesh")
        .unwrap()
        .clone();
    assert_eq!(ours["conditions"][1]["type"], "ResolvedRefs");
    assert_eq!(ours["conditions"][1]["status"], "False");
    assert_eq!(ours["conditions"][1]["reason"], "BackendNotFound");
    eventually(
        "the ghost's share answered 500",
        Duration::from_secs(10),
        || async {
            let failed = tally(proxy.outbound, 10, |_| get("http://reviews:9080/", &[])).await;
            (failed.into_iter().collect::<Vec<_>>() == [((500, String::new()), 10)]).then_some(())
        },
    )
    .await;
}
