//! The Gateway API's mesh conformance tests (kubernetes-sigs/gateway-api,
//! `conformance/tests/mesh/`), each translated into one test named by its ShortName, that runs
//! its table of requests through real sidecars in local mode: the suite's Services and pods,
//! its route manifests, compiled by `weft compile` for each pod's proxy.
//!
//! The suite checks only status codes, some headers and the answering pod's name; these tests
//! also check the path and host the echo application saw, its namespace, and every redirect's
//! whole `Location`.

mod grpc;
mod http;
mod partial;

use std::net::IpAddr;

use weft_tests::echo::{self, Answer, EchoApp};
use weft_tests::manifests::Manifests;
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;

/// The suite's namespaces.
pub const NS: &str = "gateway-conformance-mesh";
pub const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";

/// The suite's Services: `echo` selects both versions, `echo-v1` and `echo-v2` one each.
/// Each has HTTP on 80 and 8080, and gRPC on 7070, in front of the pods' 8080 and 7070.
pub fn services() -> String {
    let service = |name: &str, selector: &str, grpc_protocol: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {{{selector}}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, appProtocol: http}}\n  - {{name: http-alt, port: 8080, targetPort: 8080, appProtocol: http}}\n  - {{name: grpc, port: 7070, targetPort: 7070{grpc_protocol}}}\n"
        )
    };
    [
        service("echo-v1", "app: echo, version: v1", ""),
        service("echo-v2", "app: echo, version: v2", ""),
        service("echo", "app: echo", ", appProtocol: kubernetes.io/h2c"),
    ]
    .join("---\n")
}

/// A pod of the suite: the echo application and its sidecar.
pub struct Pod {
    pub name: &'static str,
    pub namespace: &'static str,
    pub ip: IpAddr,
    pub proxy: Proxy,
    pub app: EchoApp,
}

/// The suite's pods, `echo-v1` and `echo-v2` in the mesh namespace and the consumer
/// namespace's own `echo-v1`, with `routes` applied.
pub struct Suite {
    pub v1: Pod,
    pub v2: Pod,
    pub consumer: Pod,
}

impl Suite {
    pub async fn start(routes: &str) -> Suite {
        Suite::start_with(routes, &[]).await
    }

    /// As [`Suite::start`], with more arguments for `weft compile` (the mesh's settings).
    pub async fn start_with(routes: &str, compile_args: &[&str]) -> Suite {
        let pods = [
            (NS, "echo-v1", "v1"),
            (NS, "echo-v2", "v2"),
            (CONSUMER_NS, "echo-v1", "v1"),
        ];
        let mut manifests = Manifests::new().doc(&services());
        let mut apps = Vec::new();
        for (namespace, name, version) in pods {
            let ip = pod_ip();
            apps.push((
                namespace,
                name,
                ip,
                EchoApp::start(ip, namespace, name).await,
            ));
            manifests = manifests.pod(
                namespace,
                name,
                &[("app", "echo"), ("version", version)],
                at(ip, echo::HTTP_PORT),
                true,
            );
        }
        for doc in routes.split("---\n").filter(|d| !d.trim().is_empty()) {
            manifests = manifests.doc(doc);
        }
        let mut started = Vec::new();
        for (namespace, name, ip, app) in apps {
            let config = manifests.compile_pod_with(namespace, name, compile_args);
            let proxy = Proxy::start(ip, &config, &["--namespace", namespace]).await;
            started.push(Pod {
                name,
                namespace,
                ip,
                proxy,
                app,
            });
        }
        let consumer = started.pop().expect("three pods");
        let v2 = started.pop().expect("three pods");
        let v1 = started.pop().expect("three pods");
        Suite { v1, v2, consumer }
    }

    /// `GET url` from the `echo-v1` pod, with `headers`.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        from(&self.v1, "GET", url, headers).await
    }

    /// `method url` from the `echo-v1` pod, with `headers`.
    pub async fn request(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
        from(&self.v1, method, url, headers).await
    }
}

/// The requests `pod`'s application has had once at least `lower` have (mirrored copies
/// arrive on their own after the requests they copy).
pub async fn copies_at(pod: &Pod, lower: usize) -> usize {
    weft_tests::eventually(
        "the mirrored copies",
        std::time::Duration::from_secs(10),
        || async {
            let got = pod.app.requests.load(std::sync::atomic::Ordering::SeqCst);
            (got >= lower).then_some(got)
        },
    )
    .await
}

/// `method url` from `pod`'s application, through its sidecar.
pub async fn from(pod: &Pod, method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    echo::http(pod.proxy.outbound, method, url, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {url} from {}: {e:#}", pod.name))
}

/// One row of a conformance test's table: a request from `echo-v1` to `http://echo<path>`, and
/// what must come of it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Case {
    pub path: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    pub status: u16,
    /// The pod that answers (in the mesh namespace); empty when the proxy answers itself.
    pub pod: &'static str,
    /// The path and query the application sees; empty: as sent.
    pub seen_path: &'static str,
    /// Headers the application sees, with these values (repeated ones joined with `,`).
    pub sees: &'static [(&'static str, &'static str)],
    /// Headers the application must not see.
    pub absent: &'static [&'static str],
    /// Response headers the client sees.
    pub answer_headers: &'static [(&'static str, &'static str)],
    /// The whole `Location` of a redirect.
    pub location: &'static str,
}

impl Case {
    pub const fn ok(path: &'static str, pod: &'static str) -> Case {
        Case {
            path,
            headers: &[],
            status: 200,
            pod,
            seen_path: "",
            sees: &[],
            absent: &[],
            answer_headers: &[],
            location: "",
        }
    }

    pub const fn redirect(path: &'static str, status: u16, location: &'static str) -> Case {
        Case {
            status,
            location,
            ..Case::ok(path, "")
        }
    }

    /// Checks `answer` against the row; `what` names the test.
    pub fn check(&self, what: &str, answer: &Answer) {
        let at = format!("{what} {} {:?}", self.path, self.headers);
        assert_eq!(answer.status, self.status, "{at}: status ({answer:?})");
        if !self.location.is_empty() {
            assert_eq!(
                answer.header("location"),
                Some(self.location),
                "{at}: Location"
            );
        }
        for (name, value) in self.answer_headers {
            assert_eq!(answer.header(name), Some(*value), "{at}: response {name}");
        }
        if self.pod.is_empty() {
            assert!(
                answer.echoed.is_none(),
                "{at}: the proxy answers, yet {} did",
                answer.pod()
            );
            return;
        }
        let echoed = answer
            .echoed
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: no pod answered ({answer:?})"));
        assert_eq!(
            (echoed.namespace.as_str(), echoed.pod.as_str()),
            (NS, self.pod),
            "{at}: who answered"
        );
        let seen_path = if self.seen_path.is_empty() {
            self.path
        } else {
            self.seen_path
        };
        assert_eq!(echoed.path, seen_path, "{at}: the path the application saw");
        for (name, value) in self.sees {
            assert_eq!(
                echoed.header(name),
                Some(*value),
                "{at}: {name} at the application"
            );
        }
        for name in self.absent {
            assert_eq!(
                echoed.header(name),
                None,
                "{at}: {name} reached the application"
            );
        }
    }
}

/// Runs each row as a request from `echo-v1` to `http://echo<path>`.
pub async fn run(what: &str, suite: &Suite, cases: &[Case]) {
    for case in cases {
        let answer = suite
            .get(&format!("http://echo{}", case.path), case.headers)
            .await;
        case.check(what, &answer);
    }
}

/// The route manifest header every test's routes share: an HTTPRoute `name` in the mesh
/// namespace, attached to Service `parent` (and `port`, if any).
pub fn http_route(name: &str, parent: &str, port: Option<u16>, rules: &str) -> String {
    let port = port.map(|p| format!(", port: {p}")).unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}{port}}}]\n  rules:\n{rules}"
    )
}
