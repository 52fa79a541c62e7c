use serde_json::{Value, json};

use super::*;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        weft.dev/exclude-outbound-ports: "5432"
        weft.dev/exclude-outbound-cidrs: 169.254.169.254/32
        weft.dev/proxy-memory-limit: 128Mi
    spec:
      serviceAccountName: web
      initContainers:
        - name: migrate
          image: web:1
      containers:
        - name: web
          image: web:1
          ports: [{name: http, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /healthz, port: http, httpHeaders: [{name: x-probe, value: kubelet}]}
            periodSeconds: 2
            timeoutSeconds: 3
          livenessProbe:
            tcpSocket: {port: 8080}
          startupProbe:
            exec: {command: [/bin/true]}
        - name: grpc
          image: api:1
          livenessProbe:
            grpc: {port: 9090, service: api}
"#;

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap()
}

fn inject(text: &str, settings: &Settings) -> (String, Vec<Notice>) {
    inject_stream("test.yaml", text, settings, Direction::Inject).unwrap()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn a_deployment_gets_the_init_container_the_native_sidecar_and_its_probes() {
    let (out, notices) = inject(DEPLOYMENT, &Settings::default());
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].outcome, Outcome::Injected { probes: 3 });
    let doc = yaml(&out);
    let pod = &doc["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["weft-init", "weft-proxy", "migrate"]
    );
    assert_eq!(names(&spec["containers"]), ["web", "grpc"]);

    let init = &spec["initContainers"][0];
    assert_eq!(
        init["args"],
        json!([
            "init",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32"
        ])
    );
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(init["securityContext"]["runAsUser"], 0);

    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        proxy["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(proxy["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "50m");
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(
        env("WEFT_POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        env("WEFT_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    let targets =
        weft_api::probes::parse(env("WEFT_APP_PROBES")["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        targets.keys().collect::<Vec<_>>(),
        ["grpc/liveness", "web/liveness", "web/readiness"]
    );
    let weft_api::probes::ProbeCheck::HttpGet(ready) = &targets["web/readiness"].check else {
        panic!("{targets:?}")
    };
    assert_eq!((ready.port, ready.path.as_str()), (8080, "/healthz"));
    assert_eq!(targets["web/readiness"].timeout_seconds, 3);

    let web = &spec["containers"][0];
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readiness", "port": 15191},
               "periodSeconds": 2, "timeoutSeconds": 3})
    );
    assert_eq!(web["startupProbe"]["exec"]["command"], json!(["/bin/true"]));
    let volumes = names(&spec["volumes"]);
    assert_eq!(volumes, ["weft-token", "weft-trust-anchor"]);
    assert_eq!(
        spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "weft"
    );

    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["weft.dev/inject"], "enabled");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "web"
    );
    let record: Value =
        serde_json::from_str(annotations["weft.dev/injected"].as_str().unwrap()).unwrap();
    assert_eq!(record["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(record["nativeSidecar"], true);
}

#[test]
fn injection_is_idempotent_and_uninjection_gives_the_original_back() {
    let settings = Settings::default();
    let (once, _) = inject(DEPLOYMENT, &settings);
    let (twice, notices) = inject(&once, &settings);
    assert_eq!(twice, once);
    assert_eq!(notices[0].outcome, Outcome::AlreadyInjected);
    let (back, notices) =
        inject_stream("test.yaml", &once, &settings, Direction::Uninject).unwrap();
    assert_eq!(notices[0].outcome, Outcome::Uninjected);
    assert_eq!(yaml(&back), yaml(DEPLOYMENT));
    // Uninjecting what has no mesh leaves it as written.
    let (same, _) = inject_stream("test.yaml", DEPLOYMENT, &settings, Direction::Uninject).unwrap();
    assert_eq!(same, DEPLOYMENT);
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container_and_holds_the_app() {
    let settings = Settings {
        native_sidecar: false,
        ..Settings::default()
    };
    let (out, _) = inject(DEPLOYMENT, &settings);
    let spec = &yaml(&out)["spec"]["template"]["spec"];
    assert_eq!(names(&spec["initContainers"]), ["weft-init", "migrate"]);
    assert_eq!(names(&spec["containers"]), ["weft-proxy", "web", "grpc"]);
    let proxy = &spec["containers"][0];
    assert!(proxy.get("restartPolicy").is_none());
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["/usr/local/bin/weft-proxy", "wait"])
    );
    let (back, _) = inject_stream("t", &out, &settings, Direction::Uninject).unwrap();
    assert_eq!(yaml(&back), yaml(DEPLOYMENT));
}

#[test]
fn opted_out_host_network_and_other_kinds_pass_through_byte_for_byte() {
    let text = "# a comment kept as written\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: off\n  annotations: {weft.dev/inject: disabled}\nspec: {containers: [{name: a, image: a}]}\n--- # host\napiVersion: v1\nkind: Pod\nmetadata: {name: host}\nspec:\n  hostNetwork: true\n  containers: [{name: a, image: a}]\n";
    let (out, notices) = inject(text, &Settings::default());
    assert_eq!(out, text);
    let outcomes: Vec<_> = notices.iter().map(|n| n.outcome.clone()).collect();
    assert_eq!(outcomes, [Outcome::OptedOut, Outcome::HostNetwork]);
    assert!(
        notices[1].to_string().contains("hostNetwork"),
        "{}",
        notices[1]
    );
}

#[test]
fn every_kind_with_a_pod_template_and_a_lists_items_are_injected() {
    let pod = "{metadata: {labels: {app: a}}, spec: {containers: [{name: a, image: a}]}}";
    let mut text = String::new();
    for (kind, api) in [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("ReplicaSet", "apps/v1"),
        ("Job", "batch/v1"),
    ] {
        text.push_str(&format!(
            "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: a}}\nspec: {{template: {pod}}}\n"
        ));
    }
    text.push_str(&format!("---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: a}}\nspec: {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {pod}}}}}}}\n"));
    text.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: a}]}\n");
    text.push_str(&format!("---\napiVersion: v1\nkind: List\nitems:\n  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: c}}}}\n  - {{apiVersion: apps/v1, kind: Deployment, metadata: {{name: b}}, spec: {{template: {pod}}}}}\n"));
    let (out, notices) = inject(&text, &Settings::default());
    assert_eq!(notices.len(), 8, "{notices:?}");
    assert!(
        notices
            .iter()
            .all(|n| n.outcome == Outcome::Injected { probes: 0 })
    );
    assert!(
        notices[7].subject.contains("item 2 (Deployment b)"),
        "{}",
        notices[7]
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(docs.len(), 8);
    let cron = &docs[5]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(names(&cron["initContainers"]), ["weft-init", "weft-proxy"]);
    assert_eq!(
        docs[7]["items"][0],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    );
    let (again, _) = inject(&out, &Settings::default());
    assert_eq!(again, out);
}

#[test]
fn bad_yaml_and_bad_annotations_name_their_document() {
    let text =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nspec: [unclosed\n";
    let e = inject_stream("in.yaml", text, &Settings::default(), Direction::Inject).unwrap_err();
    assert_eq!((e.origin.as_str(), e.document), ("in.yaml", 2));
    assert!(
        e.to_string()
            .starts_with("in.yaml: document 2: not valid YAML"),
        "{e}"
    );

    for (annotation, message) in [
        (
            "weft.dev/exclude-inbound-ports: '80,http'",
            "\"http\" is not a port",
        ),
        (
            "weft.dev/exclude-outbound-cidrs: 10.0.0.0/33",
            "the length is 0 to 32",
        ),
        ("weft.dev/proxy-cpu-limit: lots", "not a resource quantity"),
        ("weft.dev/inject: 'yes'", "neither enabled nor disabled"),
    ] {
        let text = format!(
            "kind: Pod\nmetadata:\n  name: p\n  annotations: {{{annotation}}}\nspec: {{containers: [{{name: a, image: a}}]}}\n"
        );
        let e =
            inject_stream("in.yaml", &text, &Settings::default(), Direction::Inject).unwrap_err();
        assert!(e.to_string().contains(message), "{annotation}: {e}");
    }
    for (spec, message) in [
        ("{containers: web}", "spec.containers is not a list"),
        (
            "{containers: [{name: a}], volumes: {a: 1}}",
            "spec.volumes is not a list",
        ),
        ("{initContainers: []}", "the pod has no containers"),
    ] {
        let text = format!("kind: Pod\nmetadata: {{name: p}}\nspec: {spec}\n");
        let e =
            inject_stream("in.yaml", &text, &Settings::default(), Direction::Inject).unwrap_err();
        assert!(e.to_string().contains(message), "{spec}: {e}");
    }
    let text = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n      livenessProbe: {httpGet: {port: admin}}\n";
    let e = inject_stream("in.yaml", text, &Settings::default(), Direction::Inject).unwrap_err();
    assert!(
        e.to_string().contains(
            "spec.containers[a].livenessProbe.httpGet.port: the container has no port named admin"
        ),
        "{e}"
    );
}
