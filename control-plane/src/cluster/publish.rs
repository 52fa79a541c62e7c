//! What the control plane writes into the cluster for injection: the caBundle of its own
//! MutatingWebhookConfiguration, and the trust anchor as a ConfigMap in every namespace
//! with meshed pods (the CA's Secret lives in the control plane's namespace, which other
//! namespaces' pods cannot mount; Istio publishes `istio-ca-root-cert` the same way).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use weft_api::resources::Resource;

use crate::hub::Hub;
use crate::inject::pod::{INJECT, TRUST_ANCHOR_CONFIG_MAP, TRUST_ANCHOR_KEY};

const FIELD_MANAGER: &str = "weft-control";

/// Sets the caBundle of every webhook in the configuration `name` to the trust anchors, so
/// that the API server trusts the webhook's certificate. Failing is logged, not fatal: the
/// control plane still serves its proxies, and the error says what to fix.
pub async fn set_webhook_ca_bundle(client: Client, name: &str, anchors_pem: &str) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = match api.get(name).await {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(configuration = name, error = %e,
                "cannot read the MutatingWebhookConfiguration; pods will not be injected until its caBundle is set");
            return;
        }
    };
    let bundle = k8s_openapi::ByteString(anchors_pem.as_bytes().to_vec());
    let bundle = match serde_json::to_value(&bundle) {
        Ok(v) => v,
        Err(_) => return,
    };
    // Each write is guarded by a test of the webhook's name, so a configuration edited in
    // between is refused rather than patched in the wrong place.
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        ops.push(
            json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}),
        );
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}));
    }
    if ops.is_empty() {
        tracing::warn!(
            configuration = name,
            "the MutatingWebhookConfiguration has no webhooks"
        );
        return;
    }
    let patch: json_patch::Patch = match serde_json::from_value(json!(ops)) {
        Ok(p) => p,
        Err(_) => return,
    };
    match api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => tracing::info!(configuration = name, "webhook caBundle set"),
        Err(e) => tracing::error!(configuration = name, error = %e,
            "cannot set the webhook's caBundle; pods will not be injected until it is set"),
    }
}

/// Keeps the ConfigMap [`TRUST_ANCHOR_CONFIG_MAP`] in the control plane's namespace and in
/// every namespace that is labelled `weft.dev/inject=enabled` or holds a meshed pod, until `shutdown`. Each namespace is
/// written once per start (server-side apply, so a changed anchor replaces the old one), and
/// retried every 5 s after a failure.
pub async fn publish_trust_anchor(
    client: Client,
    own_namespace: String,
    hub: Arc<Hub>,
    anchors_pem: String,
    shutdown: CancellationToken,
) {
    let mut generations = hub.subscribe();
    let mut published = BTreeSet::new();
    loop {
        let mut failed = false;
        let mut wanted = meshed_namespaces(&hub.current().accepted);
        wanted.insert(own_namespace.clone());
        for namespace in wanted.difference(&published.clone()) {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            let map = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": TRUST_ANCHOR_CONFIG_MAP, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "weft-control"}},
                "data": {TRUST_ANCHOR_KEY: anchors_pem},
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch(TRUST_ANCHOR_CONFIG_MAP, &params, &Patch::Apply(&map))
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %namespace, "trust anchor published");
                    published.insert(namespace.clone());
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(namespace = %namespace, error = %e, "publishing the trust anchor failed; retrying");
                }
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = generations.changed() => if changed.is_err() { return },
            () = retry => {}
        }
    }
}

/// The namespaces that need the trust anchor.
fn meshed_namespaces(accepted: &[weft_api::resources::Manifest]) -> BTreeSet<String> {
    accepted
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::Namespace(ns)
                if ns.metadata.labels.get(INJECT).map(String::as_str) == Some("enabled") =>
            {
                Some(ns.metadata.name.clone())
            }
            Resource::Pod(pod) if pod.is_meshed() => Some(pod.metadata.namespace().to_owned()),
            _ => None,
        })
        .collect()
}
