//! A fake Kubernetes API server for cluster mode end to end: the one weft-control's unit
//! tests drive through kube's mock client (`weft_control::cluster::fake`, behind its
//! `testing` feature), here serving real HTTP to `weft control --kubernetes`.

use std::net::SocketAddr;

pub use weft_control::cluster::fake::{FakeApi, collection};

/// Starts the fake on an ephemeral port of 127.0.0.1; returns its address.
pub async fn start(fake: &FakeApi) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the fake API server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(fake.clone().serve(listener));
    addr
}

/// A kubeconfig for the API server at `api`.
pub fn kubeconfig(api: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]\nusers: [{{name: fake, user: {{token: test}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n"
    )
}

/// The token the fake's TokenReview authenticates as `namespace/service_account`, for the
/// audience weft asks for.
pub fn service_account_token(namespace: &str, service_account: &str) -> String {
    format!("{namespace}:{service_account}:weft")
}

/// The API collection of a manifest kind.
pub fn collection_of(kind: &str) -> Option<String> {
    let (api_version, plural) = match kind {
        "Service" => ("v1", "services"),
        "Pod" => ("v1", "pods"),
        "EndpointSlice" => ("discovery.k8s.io/v1", "endpointslices"),
        "HTTPRoute" => ("gateway.networking.k8s.io/v1", "httproutes"),
        "GRPCRoute" => ("gateway.networking.k8s.io/v1", "grpcroutes"),
        "BackendPolicy" => ("policy.weft.dev/v1alpha1", "backendpolicies"),
        "ServerPolicy" => ("policy.weft.dev/v1alpha1", "serverpolicies"),
        _ => return None,
    };
    Some(collection(api_version, plural))
}

/// Applies every document of a manifest stream to the fake, as `kubectl apply` would,
/// telling the watchers when `announce`.
pub fn apply(fake: &FakeApi, yaml: &str, announce: bool) {
    for doc in yaml.split("\n---") {
        let value: serde_json::Value = match serde_saphyr::from_str(doc) {
            Ok(v) => v,
            Err(e) => panic!("a test manifest is not YAML: {e}\n{doc}"),
        };
        let Some(kind) = value["kind"].as_str() else {
            continue;
        };
        let collection = collection_of(kind).unwrap_or_else(|| panic!("no collection for {kind}"));
        let mut value = value.clone();
        if value["metadata"]["namespace"].is_null() {
            value["metadata"]["namespace"] = "default".into();
        }
        fake.put(&collection, value, announce);
    }
}
