//! The admission webhook end to end: `weft control --webhook-listen` as a process, sent
//! AdmissionReview v1 payloads shaped as the API server sends them, over HTTPS verified
//! against the trust anchor the install puts in the caBundle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weft_tests::control::ControlPlane;
use weft_tests::paths::weft_cli;
use weft_tests::pods::{at, pod_ip};

const NAMESPACES: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n  labels: {weft.dev/inject: enabled}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

/// A pod as a ReplicaSet controller creates it: defaults filled in, the API access volume,
/// no name yet.
fn pod(namespace: &str, annotations: Value) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "web-7d4b9c-",
            "namespace": namespace,
            "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                "uid": "5c1e0d7a-2f7e-4a43-9d7e-1f9f3c0b8a11", "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": [{
                "name": "web", "image": "registry.example/web:1",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access-x1", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "web",
            "serviceAccount": "web",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    })
}

fn review(uid: &str, namespace: &str, object: Value, dry_run: bool) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0b1f3e1c", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// POSTs `body` to the webhook over TLS, trusting only the control plane's trust anchor and
/// naming the Service as the API server does.
async fn post(addr: SocketAddr, anchors: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    post_to(addr, anchors, "/inject", body).await
}

async fn post_to(addr: SocketAddr, anchors: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let roots = weft_api::identity::anchors_from_pem(anchors).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(weft_api::identity::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("weft-control.weft-system.svc").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the webhook's certificate verifies against the trust anchor");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("{path}?timeout=10s"))
        .header("host", "weft-control.weft-system.svc:15443")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

async fn answer(addr: SocketAddr, anchors: &str, review: &Value) -> Value {
    let (status, body) = post(addr, anchors, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    answer["response"].clone()
}

/// The JSONPatch of an answer, applied to `pod`.
fn patched(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// `weft inject` of the same pod, read back.
fn injected_by_cli(pod: &Value) -> Value {
    let out = weft_cli(&["inject", "-f", "-"], &serde_json::to_string(pod).unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap()
}

#[tokio::test]
async fn the_webhook_injects_selected_pods_with_the_same_patch_as_weft_inject() {
    let ip = pod_ip();
    let webhook = at(ip, 15443);
    let cp = ControlPlane::start_with(ip, &["--webhook-listen".into(), webhook.to_string()]).await;
    cp.write("namespaces.yaml", NAMESPACES);
    let anchors = std::fs::read_to_string(cp.trust_anchor()).unwrap();

    // A pod in the labelled namespace, once the control plane has read the namespace.
    let web_pod = pod("web", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        let response = answer(
            webhook,
            &anchors,
            &review("a1", "web", web_pod.clone(), false),
        )
        .await;
        assert_eq!(response["allowed"], true);
        if response.get("patch").is_some() {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "the labelled namespace was never read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let injected = patched(&web_pod, &response);
    assert_eq!(
        injected,
        injected_by_cli(&web_pod),
        "the webhook and weft inject agree"
    );
    assert_eq!(
        injected["spec"]["initContainers"][1]["name"], "weft-proxy",
        "{injected:#}"
    );
    assert_eq!(
        injected["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readiness"
    );
    assert!(weft_tests::kube_types::check(&injected).is_ok());

    // A dry run gets the same answer.
    let dry = answer(
        webhook,
        &anchors,
        &review("a2", "web", web_pod.clone(), true),
    )
    .await;
    assert_eq!(patched(&web_pod, &dry), injected);

    // Unlabelled, opted out, and opted in against the namespace.
    for (uid, namespace, annotations, wants_patch) in [
        ("b1", "shop", json!({}), false),
        ("b2", "web", json!({"weft.dev/inject": "disabled"}), false),
        ("b3", "shop", json!({"weft.dev/inject": "enabled"}), true),
        ("b4", "nowhere", json!({}), false),
    ] {
        let pod = pod(namespace, annotations);
        let response = answer(
            webhook,
            &anchors,
            &review(uid, namespace, pod.clone(), false),
        )
        .await;
        assert_eq!(response["allowed"], true, "{uid}");
        assert_eq!(
            response.get("patch").is_some(),
            wants_patch,
            "{uid}: {response}"
        );
        if wants_patch {
            assert_eq!(patched(&pod, &response), injected_by_cli(&pod), "{uid}");
        }
    }

    // The entry for labelled namespaces: the API server matched the label, so a namespace
    // the control plane has not seen yet is injected all the same, and an opt-out still wins.
    for (uid, annotations, wants_patch) in [
        ("e1", json!({}), true),
        ("e2", json!({"weft.dev/inject": "disabled"}), false),
    ] {
        let pod = pod("created-a-moment-ago", annotations);
        let body =
            serde_json::to_vec(&review(uid, "created-a-moment-ago", pod.clone(), false)).unwrap();
        let (status, body) = post_to(webhook, &anchors, "/inject/labelled-namespace", body).await;
        assert_eq!(status, 200);
        let response: Value = serde_json::from_slice::<Value>(&body).unwrap()["response"].clone();
        assert_eq!(
            response.get("patch").is_some(),
            wants_patch,
            "{uid}: {response}"
        );
        if wants_patch {
            assert_eq!(patched(&pod, &response), injected_by_cli(&pod));
        }
    }

    // An annotation weft cannot read: refused with the reason, for the pod's creator.
    let bad = pod(
        "web",
        json!({"weft.dev/exclude-outbound-ports": "postgres"}),
    );
    let response = answer(webhook, &anchors, &review("c1", "web", bad, false)).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"postgres\" is not a port"), "{response}");

    // Not a review at all: a clear 400, and the next review is served.
    for body in [
        &b"{not json"[..],
        &br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}"#[..],
    ] {
        let (status, text) = post(webhook, &anchors, body.to_vec()).await;
        assert_eq!(status, 400);
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("AdmissionReview"), "{text}");
    }
    let again = answer(
        webhook,
        &anchors,
        &review("d1", "web", web_pod.clone(), false),
    )
    .await;
    assert_eq!(patched(&web_pod, &again), injected);

    let (_, metrics) = cp.get("/metrics").await.unwrap();
    let count = |result: &str| {
        weft_tests::proxy::metric_value(
            &metrics,
            &format!("weft_control_injections_total{{result=\"{result}\"}}"),
        )
    };
    assert!(count("injected") >= 5.0, "{metrics}");
    assert_eq!(count("refused"), 1.0);
}
