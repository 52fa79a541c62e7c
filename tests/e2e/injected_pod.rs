//! The injected pod really runs: `weft inject`'s output, read back and run as a kubelet runs
//! it ([`weft_tests::kubelet`]), in network namespaces with real iptables. Needs root.
//!
//! On `<net>.0.0/24` (10.79 with native sidecars, 10.80 without):
//! - `node` (.100): where the kubelet's probes come from.
//! - `control` (.10): `weft control` serving the manifests, with the Pods as the API server
//!   would hold them (the injected templates, an address each).
//! - `api-0` (.2): the injected `api` Deployment's pod, under a STRICT ServerPolicy.
//! - `client-0` (.1): the injected `client` Deployment's pod.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use weft_tests::kubelet::{Kubelet, PodMeta, exec_json};
use weft_tests::netns::{Lan, root_tests_enabled};
use weft_tests::paths::{bin_path, scratch_dir, weft_cli};

const TESTBED: &str = env!("CARGO_BIN_EXE_weft-testbed");

/// The workloads as their owners write them, before injection.
const WORKLOADS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api}
    spec:
      serviceAccountName: api
      containers:
        - name: api
          image: registry.example/testbed:1
          command: [/usr/local/bin/weft-testbed]
          args: [http, --listen, "0.0.0.0:8080", --name, api]
          ports: [{name: http, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
          livenessProbe:
            tcpSocket: {port: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata:
      labels: {app: client}
    spec:
      serviceAccountName: client
      containers:
        - name: client
          image: registry.example/testbed:1
          command: [/usr/local/bin/weft-testbed]
          args: [http, --listen, "0.0.0.0:8080", --name, client]
"#;

const MESH: &str = r#"apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: ServerPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  mtls: STRICT
"#;

fn weft(args: &[&str], stdin: &str) -> String {
    let out = weft_cli(args, stdin);
    assert!(
        out.status.success(),
        "weft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Pod the API server would hold for a Deployment's template.
fn pod_object(deployment: &Value, name: &str, ip: &str) -> Value {
    let template = &deployment["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["name"] = json!(name);
    metadata["namespace"] = deployment["metadata"]["namespace"].clone();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
           "spec": template["spec"], "status": {"podIP": ip}})
}

#[test]
fn an_injected_deployment_runs_intercepted_with_mtls_and_its_probes_pass_under_strict() {
    if !root_tests_enabled(
        "an_injected_deployment_runs_intercepted_with_mtls_and_its_probes_pass_under_strict",
    ) {
        return;
    }
    injected_pods_run(true, "10.79");
}

/// Without native sidecars the proxy is the first container, and its postStart hook
/// (`weft-proxy wait`) holds the app until the proxy is ready.
#[test]
fn without_native_sidecars_the_proxy_holds_the_app_until_it_is_ready() {
    if !root_tests_enabled("without_native_sidecars_the_proxy_holds_the_app_until_it_is_ready") {
        return;
    }
    injected_pods_run(false, "10.80");
}

/// The whole path for pods on `<net>.0.0/24`.
fn injected_pods_run(native: bool, net: &str) {
    let dir = scratch_dir("injected-pod");
    let control = format!("{net}.0.10");
    let injected = weft(
        &[
            "inject",
            "--control-plane",
            &format!("{control}:15190"),
            &format!("--native-sidecar={native}"),
            "-f",
            "-",
        ],
        WORKLOADS,
    );
    let deployments: Vec<Value> = serde_saphyr::from_multiple(&injected).unwrap();
    let (api, client) = (&deployments[0], &deployments[1]);

    let mut lan = Lan::new();
    let six = net.replace('.', "");
    let node = lan.add_pod(
        "node",
        &format!("{net}.0.100/24"),
        &format!("fd00:{six}::100/64"),
    );
    let control_pod = lan.add_pod(
        "control",
        &format!("{control}/24"),
        &format!("fd00:{six}::10/64"),
    );
    let api_ns = lan.add_pod(
        "api",
        &format!("{net}.0.2/24"),
        &format!("fd00:{six}::2/64"),
    );
    let client_ns = lan.add_pod(
        "client",
        &format!("{net}.0.1/24"),
        &format!("fd00:{six}::1/64"),
    );
    let (api_ip, client_ip) = (format!("{net}.0.2"), format!("{net}.0.1"));

    // The control plane, with the pods as the cluster would list them.
    let manifests = dir.join("manifests");
    let state = dir.join("state");
    std::fs::create_dir_all(&manifests).unwrap();
    let pods = [
        pod_object(api, "api-0", &api_ip),
        pod_object(client, "client-0", &client_ip),
    ];
    let mut stream = MESH.to_owned();
    for pod in &pods {
        stream.push_str("---\n");
        stream.push_str(&serde_saphyr::to_string(pod).unwrap());
    }
    std::fs::write(manifests.join("mesh.yaml"), stream).unwrap();
    let control_ns = &lan.pods[control_pod];
    let _control = control_ns.spawn(
        control_ns
            .command(bin_path("weft").to_str().unwrap())
            .arg("control")
            .arg("--manifests")
            .arg(&manifests)
            .arg("--state")
            .arg(&state)
            .args(["--listen", &format!("{control}:15190")])
            .args(["--admin-listen", &format!("{control}:15192")]),
        &dir.join("control.log"),
    );
    let kubelet = Kubelet {
        node: &lan.pods[node],
        testbed: PathBuf::from(TESTBED),
        dir: dir.clone(),
    };
    let control_meta = PodMeta {
        name: "weft-control".into(),
        namespace: "weft-system".into(),
        ip: control.clone(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while kubelet
        .probe(
            &control_meta,
            &json!({"httpGet": {"path": "/ready", "port": 15192}}),
        )
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the control plane never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The volumes the kubelet would fill: the projected token (in local mode, a bootstrap
    // token for the same identity) and the trust-anchor ConfigMap.
    let volumes = |sa: &str| {
        let token = dir.join(format!("{sa}-token"));
        let trust = dir.join(format!("{sa}-trust"));
        std::fs::create_dir_all(&token).unwrap();
        std::fs::create_dir_all(&trust).unwrap();
        let out = Command::new(bin_path("weft"))
            .args([
                "token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                sa,
                "--state",
            ])
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(token.join("token"), out.stdout).unwrap();
        std::fs::copy(state.join("trust-anchor.pem"), trust.join("ca.crt")).unwrap();
        // The proxy runs as 2102 and reads them, as the kubelet's projected files allow.
        for d in [&token, &trust] {
            Command::new("chmod")
                .args(["-R", "a+rX"])
                .arg(d)
                .status()
                .unwrap();
        }
        BTreeMap::from([
            ("weft-token".to_owned(), token),
            ("weft-trust-anchor".to_owned(), trust),
        ])
    };
    let api_meta = PodMeta {
        name: "api-0".into(),
        namespace: "shop".into(),
        ip: api_ip.clone(),
    };
    let client_meta = PodMeta {
        name: "client-0".into(),
        namespace: "shop".into(),
        ip: client_ip.clone(),
    };
    // Each pod starts whole: weft-init as root, the sidecar until its startup probe passes,
    // then the app, then every probe (the app's through the proxy) passes.
    let template = |d: &Value| d["spec"]["template"]["spec"].clone();
    let (list, at) = if native {
        ("initContainers", 1)
    } else {
        ("containers", 0)
    };
    assert_eq!(template(api)[list][at]["name"], "weft-proxy");
    let api_pod = kubelet.run_pod(
        &lan.pods[api_ns],
        &api_meta,
        &api["spec"]["template"]["spec"],
        &volumes("api"),
    );
    let client_pod = kubelet.run_pod(
        &lan.pods[client_ns],
        &client_meta,
        &client["spec"]["template"]["spec"],
        &volumes("client"),
    );

    // The sidecars run as 2102, as the spec says.
    for pod in [&api_pod, &client_pod] {
        let pid = pod.containers["weft-proxy"].child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(uid.split_whitespace().nth(1), Some("2102"), "{uid}");
    }

    // The app's plain request to the Service's virtual IP is intercepted and crosses mTLS to
    // the api pod's app.
    let answer = exec_json(
        &lan.pods[client_ns],
        TESTBED.as_ref(),
        &["get", "http://10.96.0.20/head"],
    )
    .unwrap_or_else(|e| {
        panic!(
            "the client's request failed: {e}\n{}",
            client_pod.containers["weft-proxy"].log()
        )
    });
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["headers"]["x-served-by"], "api");
    let head: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        head["headers"]["x-weft-peer-identity"], "spiffe://cluster.local/ns/shop/sa/client",
        "the api's proxy authenticated the client's: {head}"
    );

    // The rewritten probe passes through the proxy while STRICT refuses a plaintext client
    // on the app's own port.
    let app = template(api)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api")
        .unwrap()
        .clone();
    let rewritten = &app["readinessProbe"];
    assert_eq!(rewritten["httpGet"]["path"], "/app-health/api/readiness");
    kubelet.probe(&api_meta, rewritten).unwrap();
    let original = json!({"httpGet": {"path": "/healthz", "port": 8080}});
    let refused = kubelet.probe(&api_meta, &original);
    assert!(
        refused.is_err(),
        "a plaintext client reached the app under STRICT"
    );
    let metrics = exec_json(
        &lan.pods[node],
        TESTBED.as_ref(),
        &["get", &format!("http://{api_ip}:15191/metrics")],
    )
    .unwrap();
    let denied = weft_tests::proxy::metric_value(
        metrics["body"].as_str().unwrap(),
        r#"weft_inbound_denied_total{policy="shop/api",reason="plaintext"}"#,
    );
    assert!(
        denied >= 1.0,
        "the api's proxy refused the plaintext client: {denied}"
    );
    // And when the app stops, its probe through the proxy fails.
    let mut api_pod = api_pod;
    drop(api_pod.containers.remove("api"));
    assert!(
        kubelet.probe(&api_meta, rewritten).is_err(),
        "the probe passed with the app gone"
    );
    drop(client_pod);
    drop(api_pod);
    drop(lan);
    let _ = std::fs::remove_dir_all(&dir);
}
