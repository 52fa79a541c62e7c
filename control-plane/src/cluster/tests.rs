//! Cluster mode against the Kubernetes API protocol, through kube's mock client.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use weft_api::resources::Resource;

use super::fake::{FakeApi, collection, eventually};
use super::*;
use crate::compile::{MeshSettings, Target};
use crate::metrics::ControlMetrics;

const WAIT: Duration = Duration::from_secs(20);

fn services() -> String {
    collection("v1", "services")
}
fn pods() -> String {
    collection("v1", "pods")
}
fn slices() -> String {
    collection("discovery.k8s.io/v1", "endpointslices")
}
fn http_routes() -> String {
    collection("gateway.networking.k8s.io/v1", "httproutes")
}

/// Objects as an API server returns them: server-set metadata, defaults and status
/// included.
fn service(name: &str, selector: Option<Value>) -> Value {
    // The API server gives each Service an address of its own.
    let ip = format!("10.96.0.{}", 10 + name.len());
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-11-23T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": {"selector": selector, "type": "ClusterIP", "sessionAffinity": "None",
            "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}},
    })
}

fn pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews"},
            "annotations": {"weft.dev/inject": "enabled"}, "uid": format!("uid-{name}")},
        "spec": {"serviceAccountName": "reviews", "nodeName": "node-1",
            "containers": [{"name": "app", "image": "reviews:1", "ports": [{"containerPort": 9080}]}],
            "initContainers": [{"name": "weft-proxy", "image": "weft:dev", "restartPolicy": "Always"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.2",
            "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn slice() -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-v2-abc", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "reviews-v2"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": true, "serving": true}, "nodeName": "node-2"}],
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
    })
}

fn route(generation: i64, backends: &[(&str, u32)]) -> Value {
    let refs: Vec<Value> = backends
        .iter()
        .map(|(name, weight)| json!({"group": "", "kind": "Service", "name": name, "port": 9080, "weight": weight}))
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": "shop", "generation": generation},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs}],
        },
        // Another implementation's entry, which weft must keep.
        "status": {"parents": [{"controllerName": "example.com/gateway",
            "parentRef": {"name": "elsewhere"}, "conditions": []}]},
    })
}

/// A route for a Gateway: another implementation's, which weft neither reads nor reports.
fn ingress_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "ingress", "namespace": "shop", "generation": 1},
        "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}],
            "hostnames": ["shop.example.com"], "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]},
    })
}

fn weights(hub: &Hub) -> Vec<u32> {
    hub.current()
        .accepted
        .iter()
        .find_map(|m| match &m.resource {
            Resource::HttpRoute(r) => Some(
                r.spec.rules[0]
                    .backend_refs
                    .iter()
                    .map(|b| b.weight.unwrap_or(1))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// The endpoints of a backend in the config of a proxy in `shop`, with their identities.
fn endpoints(hub: &Hub, backend: &str) -> Vec<(String, Option<String>)> {
    let compiled = hub.current().for_target(&Target::namespace("shop"));
    compiled
        .config
        .backends
        .iter()
        .filter(|b| b.name == backend)
        .flat_map(|b| &b.endpoints)
        .map(|e| {
            (
                e.address.to_string(),
                e.mesh.as_ref().map(|m| m.identity.clone()),
            )
        })
        .collect()
}

/// weft's conditions in the last status written for the route: (type, status, reason).
fn conditions(patch: &Value) -> Vec<(String, String, String)> {
    let parents = patch["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        parents[0]["controllerName"], "example.com/gateway",
        "another controller's entry is kept: {patch}"
    );
    let ours = &parents[1];
    assert_eq!(ours["controllerName"], CONTROLLER_NAME);
    assert_eq!(ours["parentRef"]["name"], "reviews");
    ours["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("status"), s("reason"))
        })
        .collect()
}

fn split_patches(fake: &FakeApi) -> Vec<Value> {
    fake.patches()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/httproutes/split"))
        .map(|(_, patch)| patch)
        .collect()
}

fn cond(kind: &str, status: &str, reason: &str) -> (String, String, String) {
    (kind.to_owned(), status.to_owned(), reason.to_owned())
}

#[tokio::test]
async fn the_cluster_is_mirrored_and_route_statuses_are_written_back() {
    let fake = FakeApi::default();
    fake.put(
        &services(),
        service("reviews", Some(json!({"app": "reviews"}))),
        false,
    );
    fake.put(&services(), service("reviews-v2", None), false);
    fake.put(&pods(), pod("reviews-1", "10.0.0.5"), false);
    fake.put(&slices(), slice(), false);
    fake.put(
        &http_routes(),
        route(1, &[("reviews", 90), ("reviews-v2", 10)]),
        false,
    );
    fake.put(&http_routes(), ingress_route(), false);
    // No GRPCRoute CRD in this cluster: the kind counts as empty.
    fake.set_missing(&collection("gateway.networking.k8s.io/v1", "grpcroutes"));

    let hub = Hub::new(MeshSettings::default(), ControlMetrics::new());
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(run(fake.client(), hub.clone(), synced_tx, shutdown.clone()));
    tokio::time::timeout(WAIT, synced).await.unwrap().unwrap();

    // The first config is the whole cluster.
    assert_eq!(weights(&hub), [90, 10]);
    assert_eq!(
        endpoints(&hub, "shop/reviews:9080"),
        [(
            "10.0.0.5:9080".to_owned(),
            Some("spiffe://cluster.local/ns/shop/sa/reviews".to_owned())
        )],
        "a selected, ready, meshed pod"
    );
    assert_eq!(
        endpoints(&hub, "shop/reviews-v2:9080"),
        [("10.0.0.9:9080".to_owned(), None)],
        "an EndpointSlice's endpoint"
    );
    assert!(
        hub.current().errors.is_empty(),
        "{:?}",
        hub.current().errors
    );

    let first = eventually(WAIT, "the route's first status", || {
        split_patches(&fake).pop()
    })
    .await;
    assert_eq!(
        conditions(&first),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(
        first["status"]["parents"][1]["conditions"][0]["observedGeneration"],
        1
    );

    for c in [services(), pods(), slices(), http_routes()] {
        eventually(WAIT, "the watches", || {
            (fake.watching(&c) > 0).then_some(())
        })
        .await;
    }

    // An edit moves the split; the status follows the generation.
    fake.put(
        &http_routes(),
        route(2, &[("reviews", 50), ("reviews-v2", 50)]),
        true,
    );
    eventually(WAIT, "the new weights", || {
        (weights(&hub) == [50, 50]).then_some(())
    })
    .await;
    eventually(WAIT, "the status of generation 2", || {
        split_patches(&fake)
            .iter()
            .any(|p| p["status"]["parents"][1]["conditions"][0]["observedGeneration"] == 2)
            .then_some(())
    })
    .await;

    // A reference to a Service that is not there: the route is accepted and serves without
    // it (its share answered 500), and ResolvedRefs says why.
    fake.put(
        &http_routes(),
        route(3, &[("reviews", 50), ("ghost", 50)]),
        true,
    );
    let partial = eventually(WAIT, "the unresolved reference in the status", || {
        split_patches(&fake)
            .into_iter()
            .find(|p| p["status"]["parents"][1]["conditions"][0]["observedGeneration"] == 3)
    })
    .await;
    assert_eq!(
        conditions(&partial),
        [
            cond("Accepted", "True", "Accepted"),
            cond("ResolvedRefs", "False", "BackendNotFound")
        ]
    );
    let message = partial["status"]["parents"][1]["conditions"][1]["message"]
        .as_str()
        .unwrap();
    assert_eq!(
        message,
        "spec.rules[0].backendRefs[1].name: no Service shop/ghost"
    );
    assert_eq!(weights(&hub), [50, 50]);
    assert!(
        hub.current().errors.is_empty(),
        "{:?}",
        hub.current().errors
    );
    let unresolved: Vec<String> = hub
        .current()
        .unresolved
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        unresolved,
        ["HTTPRoute/shop/split:1:spec.rules[0].backendRefs[1].name: no Service shop/ghost"]
    );

    // A broken edit is refused; the last good version keeps serving and the status says why.
    fake.put(
        &http_routes(),
        route(4, &[("reviews", 50), ("reviews-v2", 2_000_000)]),
        true,
    );
    let refused = eventually(WAIT, "the refusal in the status", || {
        split_patches(&fake)
            .into_iter()
            .find(|p| p["status"]["parents"][1]["conditions"][0]["observedGeneration"] == 4)
    })
    .await;
    // The version that serves is still the one whose backend is not there.
    assert_eq!(
        conditions(&refused),
        [
            cond("Accepted", "False", "UnsupportedValue"),
            cond("ResolvedRefs", "False", "BackendNotFound")
        ]
    );
    let message = refused["status"]["parents"][1]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("must be between 0 and 1000000")
            && message.contains("the last accepted version keeps serving"),
        "{message}"
    );
    assert_eq!(weights(&hub), [50, 50]);
    let errors: Vec<String> = hub
        .current()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "HTTPRoute/shop/split:1:spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000"
        ]
    );

    // A deletion the watch reports.
    fake.delete(&slices(), "shop", "reviews-v2-abc", true);
    eventually(WAIT, "the slice's endpoints to go", || {
        endpoints(&hub, "shop/reviews-v2:9080")
            .is_empty()
            .then_some(())
    })
    .await;

    // Changes the watch never reported, then the watch expires (410 Gone): the relist
    // replaces the kind's whole set, so the missed deletion and addition both apply.
    fake.delete(&pods(), "shop", "reviews-1", false);
    fake.put(&pods(), pod("reviews-2", "10.0.0.6"), false);
    fake.expire_watches(&pods());
    eventually(WAIT, "the relist", || {
        (endpoints(&hub, "shop/reviews:9080")
            == [(
                "10.0.0.6:9080".to_owned(),
                Some("spiffe://cluster.local/ns/shop/sa/reviews".to_owned()),
            )])
        .then_some(())
    })
    .await;

    // One write per change of the status (four generations), no echo loop, and nothing
    // for the Gateway's route.
    assert_eq!(split_patches(&fake).len(), 4, "{:#?}", fake.patches());
    assert!(
        fake.patches()
            .iter()
            .all(|(path, _)| !path.ends_with("/ingress"))
    );
    assert!(
        fake.object(&http_routes(), "shop", "ingress")
            .unwrap()
            .get("status")
            .is_none()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_route_whose_status_write_lost_a_race_is_written_again() {
    let fake = FakeApi::default();
    fake.put(&services(), service("reviews", None), false);
    fake.put(&http_routes(), route(1, &[("reviews", 1)]), false);
    let hub = Hub::new(MeshSettings::default(), ControlMetrics::new());
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(run(fake.client(), hub.clone(), synced_tx, shutdown.clone()));
    tokio::time::timeout(WAIT, synced).await.unwrap().unwrap();
    eventually(WAIT, "the first status", || split_patches(&fake).pop()).await;
    eventually(WAIT, "the route watch", || {
        (fake.watching(&http_routes()) > 0).then_some(())
    })
    .await;

    // Another writer replaces the whole status (weft's entry with it).
    fake.set_status(&http_routes(), "shop", "split", json!({"parents": []}));
    eventually(WAIT, "weft's entry to be written again", || {
        let object = fake.object(&http_routes(), "shop", "split")?;
        let parents = object["status"]["parents"].as_array()?.clone();
        parents
            .iter()
            .any(|p| p["controllerName"] == CONTROLLER_NAME)
            .then_some(())
    })
    .await;
    assert_eq!(split_patches(&fake).len(), 2);
    shutdown.cancel();
}

/// A Namespace's annotation sets its pods' outbound traffic policy, over the mesh's default,
/// and an edit of the annotation reaches the configs.
#[tokio::test]
async fn a_namespace_annotation_sets_its_pods_outbound_traffic_policy() {
    use weft_api::config::OutboundTrafficPolicy::{AllowAny, RegistryOnly};
    let namespaces = collection("v1", "namespaces");
    let namespace = |name: &str, policy: Option<&str>| {
        let mut ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        if let Some(p) = policy {
            ns["metadata"]["annotations"] = json!({"weft.dev/outbound-traffic-policy": p});
        }
        ns
    };
    let fake = FakeApi::default();
    fake.put(&services(), service("reviews", None), false);
    fake.put(&namespaces, namespace("shop", Some("REGISTRY_ONLY")), false);
    fake.put(&namespaces, namespace("web", None), false);
    let hub = Hub::new(MeshSettings::default(), ControlMetrics::new());
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(run(fake.client(), hub.clone(), synced_tx, shutdown.clone()));
    tokio::time::timeout(WAIT, synced).await.unwrap().unwrap();
    let policy = |ns: &str| {
        hub.current()
            .for_target(&Target::namespace(ns))
            .config
            .outbound
            .traffic_policy
    };
    assert!(
        hub.current().errors.is_empty(),
        "{:?}",
        hub.current().errors
    );
    assert_eq!(policy("shop"), RegistryOnly);
    assert_eq!(policy("web"), AllowAny, "no annotation: the mesh's default");

    eventually(WAIT, "the namespace watch", || {
        (fake.watching(&namespaces) > 0).then_some(())
    })
    .await;
    fake.put(&namespaces, namespace("shop", None), true);
    eventually(WAIT, "the annotation's removal", || {
        (policy("shop") == AllowAny).then_some(())
    })
    .await;
    // A value that is neither is an error named after the Namespace, and changes nothing.
    fake.put(&namespaces, namespace("web", Some("DENY")), true);
    let error = eventually(WAIT, "the bad annotation's error", || {
        hub.current().errors.first().map(|e| e.to_string())
    })
    .await;
    assert!(error.contains("Namespace/web"), "{error}");
    assert!(
        error.contains("neither ALLOW_ANY nor REGISTRY_ONLY"),
        "{error}"
    );
    assert_eq!(policy("web"), AllowAny);
    shutdown.cancel();
}

#[tokio::test]
async fn service_account_tokens_are_checked_by_token_review() {
    let fake = FakeApi::default();
    let reviewer = TokenReviewer::new(fake.client(), vec!["weft".to_owned()]);
    assert_eq!(
        reviewer.verify("shop:reviews:weft").await,
        Ok(("shop".to_owned(), "reviews".to_owned()))
    );
    let wrong_audience = reviewer.verify("shop:reviews:api").await.unwrap_err();
    assert!(
        wrong_audience.contains("not for audience weft"),
        "{wrong_audience}"
    );
    let invalid = reviewer.verify("garbage").await.unwrap_err();
    assert!(
        invalid.contains("does not authenticate") && invalid.contains("invalid bearer token"),
        "{invalid}"
    );
    let reviews = fake.reviews();
    assert_eq!(reviews.len(), 3);
    assert_eq!(reviews[0]["spec"]["token"], "shop:reviews:weft");
    assert_eq!(reviews[0]["spec"]["audiences"], json!(["weft"]));
}

#[tokio::test]
async fn the_ca_is_created_once_in_its_secret_and_read_back() {
    let fake = FakeApi::default();
    let first = ca_from_secret(fake.client(), "weft-system", "weft-ca", "cluster.local")
        .await
        .unwrap();
    let secret = fake
        .object("/api/v1/secrets", "weft-system", "weft-ca")
        .expect("the Secret was created");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let again = ca_from_secret(fake.client(), "weft-system", "weft-ca", "cluster.local")
        .await
        .unwrap();
    assert_eq!(
        again.cert_pem, first.cert_pem,
        "a restart keeps the same root"
    );
    assert_eq!(again.key_pem, first.key_pem);
    assert!(again.anchors_pem.is_none());

    let state = std::env::temp_dir().join(format!("weft-ca-secret-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let ca = crate::ca::Ca::from_material(&state, &again, Duration::from_secs(3600)).unwrap();
    assert_eq!(ca.anchors_pem(), first.cert_pem.as_str());
    std::fs::remove_dir_all(&state).unwrap();
}

/// The shipped RBAC grants what cluster mode does: list and watch of every watched kind,
/// route status writes, TokenReviews, the CA Secret, and what injection writes.
#[test]
fn the_install_manifest_grants_what_cluster_mode_uses() {
    let text = include_str!("../../../manifests/install/rbac.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
    let rules = |kind: &str| -> Vec<Value> {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .and_then(|d| d["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let grants = |rules: &[Value], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |field: &str, want: &str| {
                r[field]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == want))
            };
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let cluster = rules("ClusterRole");
    for kind in watched_kinds() {
        for verb in ["list", "watch"] {
            assert!(
                grants(&cluster, &kind.resource.group, &kind.resource.plural, verb),
                "{verb} {}",
                kind.resource.plural
            );
        }
        if kind.route {
            let status = format!("{}/status", kind.resource.plural);
            assert!(
                grants(&cluster, &kind.resource.group, &status, "patch"),
                "{status}"
            );
        }
    }
    assert!(grants(
        &cluster,
        "authentication.k8s.io",
        "tokenreviews",
        "create"
    ));
    // The webhook's namespace lookups, the published trust anchor, the caBundle.
    assert!(grants(&cluster, "", "namespaces", "get"));
    for verb in ["get", "create", "patch"] {
        assert!(
            grants(&cluster, "", "configmaps", verb),
            "{verb} configmaps"
        );
    }
    for verb in ["get", "patch"] {
        assert!(
            grants(
                &cluster,
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                verb
            ),
            "{verb} mutatingwebhookconfigurations"
        );
    }
    let namespaced = rules("Role");
    for verb in ["get", "create"] {
        assert!(grants(&namespaced, "", "secrets", verb), "{verb} secrets");
    }
}

/// At start-up the control plane sets its webhook configuration's caBundle, and it keeps
/// the trust anchor in its own namespace, in labelled namespaces and in those with meshed
/// pods, as they appear.
#[tokio::test]
async fn the_webhook_ca_bundle_is_set_and_the_trust_anchor_follows_meshed_namespaces() {
    let webhooks = collection(
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
    );
    let config_maps = collection("v1", "configmaps");
    let namespaces = collection("v1", "namespaces");
    let fake = FakeApi::default();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(include_str!("../../../manifests/install/webhook.yaml"))
            .unwrap();
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap()
        .clone();
    fake.put(&webhooks, webhook, false);
    fake.put(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "web", "labels": {"weft.dev/inject": "enabled"}}}),
        false,
    );
    let anchors = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    set_webhook_ca_bundle(fake.client(), "weft-control", anchors).await;
    let config = fake.object(&webhooks, "default", "weft-control").unwrap();
    let bundle = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, anchors);
    for webhook in config["webhooks"].as_array().unwrap() {
        assert_eq!(
            webhook["clientConfig"]["caBundle"], bundle,
            "{}",
            webhook["name"]
        );
        assert_eq!(webhook["clientConfig"]["service"]["port"], 15443);
    }

    let hub = Hub::new(MeshSettings::default(), ControlMetrics::new());
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(run(fake.client(), hub.clone(), synced_tx, shutdown.clone()));
    tokio::time::timeout(WAIT, synced).await.unwrap().unwrap();
    tokio::spawn(publish_trust_anchor(
        fake.client(),
        "weft-system".into(),
        hub.clone(),
        anchors.into(),
        shutdown.clone(),
    ));
    let anchor_in = |ns: &str| {
        fake.object(&config_maps, ns, "weft-trust-anchor")
            .and_then(|m| m["data"]["ca.crt"].as_str().map(str::to_owned))
    };
    for ns in ["weft-system", "web"] {
        let published =
            eventually(WAIT, &format!("the trust anchor in {ns}"), || anchor_in(ns)).await;
        assert_eq!(published, anchors);
    }
    assert_eq!(anchor_in("shop"), None, "no meshed pod in shop yet");
    // A meshed pod in another namespace brings the anchor there.
    fake.put(&pods(), pod("reviews-1", "10.0.0.5"), true);
    eventually(WAIT, "the trust anchor in shop", || anchor_in("shop")).await;
    shutdown.cancel();
}
