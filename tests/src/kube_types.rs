//! Reading manifests as the Kubernetes types, with unknown fields refused.
//!
//! k8s-openapi's types skip fields they do not know, as an API server in a lenient mode
//! would; `kubectl apply --validate=strict` refuses them. [`check`] reads an object as the
//! type of its kind through serde_ignored, which reports every field the type skipped, so a
//! misspelt or misplaced field fails the test with its path.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads `value` as `T`, failing on any field `T` does not have.
pub fn strict<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let parsed: T = serde_ignored::deserialize(value.clone(), |path| {
        // serde_ignored marks each Option it passes through with `?`.
        unknown.push(path.to_string().replace(".?", "").replace("?.", ""));
    })
    .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(parsed)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

/// Checks one object (a `List`'s items each) against the Kubernetes type of its kind.
pub fn check(value: &Value) -> Result<(), String> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::{
        ConfigMap, Namespace, Pod, ReplicationController, Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    let kind = value["kind"].as_str().unwrap_or_default();
    let name = value["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    let result = match kind {
        "List" => {
            let items = value["items"].as_array().cloned().unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                check(item).map_err(|e| format!("List item {}: {e}", i + 1))?;
            }
            Ok(())
        }
        "Namespace" => strict::<Namespace>(value).map(drop),
        "ServiceAccount" => strict::<ServiceAccount>(value).map(drop),
        "ClusterRole" => strict::<ClusterRole>(value).map(drop),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(value).map(drop),
        "Role" => strict::<Role>(value).map(drop),
        "RoleBinding" => strict::<RoleBinding>(value).map(drop),
        "ConfigMap" => strict::<ConfigMap>(value).map(drop),
        "Secret" => strict::<Secret>(value).map(drop),
        "Service" => strict::<Service>(value).map(drop),
        "Pod" => strict::<Pod>(value).map(drop),
        "Deployment" => strict::<Deployment>(value).map(drop),
        "StatefulSet" => strict::<StatefulSet>(value).map(drop),
        "DaemonSet" => strict::<DaemonSet>(value).map(drop),
        "ReplicaSet" => strict::<ReplicaSet>(value).map(drop),
        "ReplicationController" => strict::<ReplicationController>(value).map(drop),
        "Job" => strict::<Job>(value).map(drop),
        "CronJob" => strict::<CronJob>(value).map(drop),
        "MutatingWebhookConfiguration" => strict::<MutatingWebhookConfiguration>(value).map(drop),
        "CustomResourceDefinition" => strict::<CustomResourceDefinition>(value).map(drop),
        other => Err(format!("no Kubernetes type for kind {other:?}")),
    };
    result.map_err(|e| format!("{kind} {name}: {e}"))
}

/// Every document of a YAML stream, each checked; the errors, each naming its document.
pub fn check_stream(text: &str) -> Vec<String> {
    let docs: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    docs.iter()
        .enumerate()
        .filter(|(_, d)| !d.is_null())
        .filter_map(|(i, d)| check(d).err().map(|e| format!("document {}: {e}", i + 1)))
        .collect()
}
