//! `weft inject`, `weft uninject` and `weft install` as a user runs them: the real binary on
//! files and standard input, its output read as the Kubernetes types with unknown fields
//! refused.

use std::process::Output;

use serde_json::{Value, json};
use weft_tests::kube_types;
use weft_tests::paths::{scratch_dir, weft_cli};

fn weft(args: &[&str], stdin: &str) -> Output {
    weft_cli(args, stdin)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "weft failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The app's pod spec: two containers, with httpGet (on a named port), tcpSocket and gRPC
/// probes.
fn pod_spec(restart: Option<&str>) -> Value {
    let mut spec = json!({
        "serviceAccountName": "web",
        "containers": [
            {"name": "web", "image": "registry.example/web:1",
             "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 3},
             "livenessProbe": {"tcpSocket": {"port": 8080}}},
            {"name": "api", "image": "registry.example/api:1",
             "startupProbe": {"grpc": {"port": 9090}, "failureThreshold": 30}},
        ],
    });
    if let Some(policy) = restart {
        spec["restartPolicy"] = json!(policy);
    }
    spec
}

/// Every kind with a pod template, a List, and documents that are not workloads.
fn workloads() -> String {
    let template =
        |restart| json!({"metadata": {"labels": {"app": "web"}}, "spec": pod_spec(restart)});
    let selector = json!({"matchLabels": {"app": "web"}});
    let meta = json!({"name": "web", "namespace": "shop"});
    let docs = [
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
               "spec": {"selector": selector, "template": template(None)}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta,
               "spec": {"selector": selector, "serviceName": "web", "template": template(None)}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta,
               "spec": {"selector": selector, "template": template(None)}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta,
               "spec": {"selector": selector, "template": template(None)}}),
        json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": meta,
               "spec": {"selector": {"app": "web"}, "template": template(None)}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
               "spec": {"backoffLimit": 2, "template": template(Some("Never"))}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
               "spec": {"schedule": "0 3 * * *",
                        "jobTemplate": {"spec": {"template": template(Some("OnFailure"))}}}}),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
               "spec": pod_spec(None)}),
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "listed", "namespace": "shop"},
             "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "listed", "namespace": "shop"},
             "spec": {"ports": [{"port": 80}]}},
        ]}),
    ];
    let mut out = String::from(HEAD);
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&doc).unwrap());
    }
    out
}

/// Documents that are not workloads, as a person writes them (flow style, a comment).
const HEAD: &str = "# the shop's workloads\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: shop}\ndata: {mode: fast}\n";

#[test]
fn weft_inject_writes_valid_kubernetes_for_every_kind_and_is_idempotent() {
    let input = workloads();
    assert_eq!(
        kube_types::check_stream(&input),
        Vec::<String>::new(),
        "the input itself is valid"
    );
    let dir = scratch_dir("inject");
    let file = dir.join("shop.yaml");
    std::fs::write(&file, &input).unwrap();
    let out = weft(&["inject", "-f", file.to_str().unwrap()], "");
    let injected = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches(": injected").count(),
        9,
        "seven templates, a Pod and a List's Pod: {stderr}"
    );

    let errors = kube_types::check_stream(&injected);
    assert!(
        errors.is_empty(),
        "weft inject wrote invalid objects: {errors:#?}"
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&injected).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Service",
            "ConfigMap",
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "ReplicationController",
            "Job",
            "CronJob",
            "Pod",
            "List"
        ],
        "the same documents in the same order"
    );
    // The documents that are not workloads are written back as they were.
    assert!(injected.starts_with(HEAD), "{injected}");
    let specs = [
        &docs[2]["spec"]["template"]["spec"],
        &docs[8]["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        &docs[9]["spec"],
        &docs[10]["items"][0]["spec"],
    ];
    for spec in specs {
        let inits: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, ["weft-init", "weft-proxy"]);
        assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
    }
    let web = &docs[2]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        web["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readiness"
    );
    assert_eq!(web["readinessProbe"]["periodSeconds"], 3);
    let api = &docs[2]["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(
        api["startupProbe"]["httpGet"]["path"],
        "/app-health/api/startup"
    );
    assert_eq!(api["startupProbe"]["failureThreshold"], 30);
    assert_eq!(
        docs[10]["items"][1],
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "listed", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}})
    );

    // A second pass, from standard input, changes nothing.
    let again = weft(&["inject", "-f", "-"], &injected);
    assert_eq!(ok(&again), injected);
    assert_eq!(
        String::from_utf8_lossy(&again.stderr)
            .matches("already injected")
            .count(),
        9
    );

    // uninject gives back the objects as written.
    let back = ok(&weft(&["uninject", "-f", "-"], &injected));
    let original: Vec<Value> = serde_saphyr::from_multiple(&input).unwrap();
    let restored: Vec<Value> = serde_saphyr::from_multiple(&back).unwrap();
    assert_eq!(restored, original);

    // Without native sidecars: the proxy leads the containers, still valid.
    let legacy = ok(&weft(
        &["inject", "--native-sidecar=false", "-f", "-"],
        &input,
    ));
    assert!(kube_types::check_stream(&legacy).is_empty());
    let docs: Vec<Value> = serde_saphyr::from_multiple(&legacy).unwrap();
    assert_eq!(
        docs[2]["spec"]["template"]["spec"]["containers"][0]["name"],
        "weft-proxy"
    );
}

#[test]
fn opted_out_host_network_and_injected_inputs_pass_unchanged_and_bad_yaml_names_its_document() {
    let pod = |meta: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {meta}\nspec:\n{spec}  containers: [{{name: a, image: a}}]\n"
        )
    };
    let injected = ok(&weft(&["inject", "-f", "-"], &pod("{name: done}", "")));
    for (what, input, reason) in [
        (
            "opted out",
            pod("{name: off, annotations: {weft.dev/inject: disabled}}", ""),
            "weft.dev/inject: disabled",
        ),
        (
            "hostNetwork",
            pod("{name: host}", "  hostNetwork: true\n"),
            "hostNetwork is true",
        ),
        ("already injected", injected.clone(), "already injected"),
    ] {
        let out = weft(&["inject", "-f", "-"], &input);
        assert_eq!(ok(&out), input, "{what} is written back byte for byte");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{what}: {stderr}");
    }

    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b\n";
    let out = weft(&["inject", "-f", "-"], bad);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing is written on an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<stdin>: document 2: not valid YAML"),
        "{stderr}"
    );

    let bad_port = pod(
        "{name: p, annotations: {weft.dev/exclude-inbound-ports: '22,ssh'}}",
        "",
    );
    let out = weft(&["inject", "-f", "-"], &bad_port);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "document 1: annotation weft.dev/exclude-inbound-ports: \"ssh\" is not a port"
        ),
        "{stderr}"
    );
}

/// The check itself: a misspelt field is refused with its path.
#[test]
fn the_kubernetes_check_refuses_unknown_fields() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: a, imagePullPolicyy: Always}]\n";
    let errors = kube_types::check_stream(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("spec.containers.0.imagePullPolicyy"),
        "{}",
        errors[0]
    );
}

/// `manifests/install/` and `manifests/crds/` are valid Kubernetes, and `weft install`
/// prints the install set in its kustomization's order.
#[test]
fn the_install_and_the_crds_are_valid_kubernetes_and_weft_install_prints_them() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let kustomization: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("install/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut expected = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let text =
            std::fs::read_to_string(root.join("install").join(file.as_str().unwrap())).unwrap();
        let errors = kube_types::check_stream(&text);
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        expected.push(text);
    }
    let printed = ok(&weft(&["install"], ""));
    assert_eq!(printed, expected.join("---\n"));
    let kinds: Vec<String> = serde_saphyr::from_multiple::<Value>(&printed)
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ConfigMap",
        "Service",
        "Deployment",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "the install has a {kind}");
    }
    let custom = ok(&weft(
        &["install", "--image", "registry.example/weft:9"],
        "",
    ));
    assert!(kube_types::check_stream(&custom).is_empty());
    assert!(custom.contains("image: registry.example/weft:9"));

    for entry in std::fs::read_dir(root.join("crds")).unwrap() {
        let path = entry.unwrap().path();
        let errors = kube_types::check_stream(&std::fs::read_to_string(&path).unwrap());
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}
