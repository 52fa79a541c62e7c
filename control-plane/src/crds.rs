//! The CustomResourceDefinitions of weft's own kinds (`policy.weft.dev`), generated from the
//! Rust types the control plane reads them into, so that what the API server accepts and
//! what weft reads cannot drift apart. `weft crds` prints them; `manifests/crds/` holds them
//! checked in, and a test fails when those files are stale.

use std::path::Path;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};
use weft_api::config::policy::BackendPolicySpec;
use weft_api::config::server::ServerPolicySpec;

pub const GROUP: &str = "policy.weft.dev";
pub const VERSION: &str = "v1alpha1";

const HEADER: &str = "# Generated from weft's Rust types by `weft crds`; do not edit.\n";

/// Every CRD: its file name and its YAML.
pub fn rendered() -> anyhow::Result<Vec<(String, String)>> {
    [
        crd::<BackendPolicySpec>(
            "BackendPolicy",
            "backendpolicies",
            "How client proxies treat the Services in spec.targetRefs: load balancing, circuit breaking, outlier detection, connection limits, retry budget and options, connect timeout, rate limit.",
        ),
        crd::<ServerPolicySpec>(
            "ServerPolicy",
            "serverpolicies",
            "What the proxies of the pods spec.selector picks accept: mTLS mode, authorization rules, inbound rate limit.",
        ),
    ]
    .into_iter()
    .map(|crd| {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        Ok((format!("{name}.yaml"), format!("{HEADER}{}", serde_saphyr::to_string(&crd)?)))
    })
    .collect()
}

/// Writes the CRDs into `dir`, one file each.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, yaml) in rendered()? {
        std::fs::write(dir.join(file), yaml)?;
    }
    Ok(())
}

fn crd<T: JsonSchema>(kind: &str, plural: &str, description: &str) -> Value {
    let mut spec = spec_schema::<T>();
    spec["description"] = description.into();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{GROUP}"),
            "labels": {"app.kubernetes.io/part-of": "weft"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
                "categories": ["weft"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
            }],
        },
    })
}

/// The type's schema in the structural form Kubernetes requires: inlined, no `$ref`, no
/// `additionalProperties` beside `properties`.
fn spec_schema<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let generator = settings
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut schema =
        serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or_default();
    if let Some(map) = schema.as_object_mut() {
        for key in ["$schema", "title", "definitions", "$defs"] {
            map.remove(key);
        }
    }
    structural(&mut schema);
    schema
}

fn structural(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            // Unknown fields are refused by weft's own validation (`weft check`, the control
            // plane), with the field's path; the API server prunes them.
            if map.contains_key("properties")
                && map.get("additionalProperties") == Some(&Value::Bool(false))
            {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(structural);
        }
        Value::Array(items) => items.iter_mut().for_each(structural),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
        let rendered = rendered().unwrap();
        for (file, yaml) in &rendered {
            let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                on_disk == *yaml,
                "manifests/crds/{file} is stale: regenerate with `cargo run -p weft-control --bin weft -- crds --output-dir manifests/crds`"
            );
        }
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut expected: Vec<String> = rendered.into_iter().map(|(f, _)| f).collect();
        expected.sort();
        assert_eq!(
            files, expected,
            "manifests/crds/ holds exactly the generated CRDs"
        );
    }

    /// Kubernetes refuses a CRD whose schema is not structural: every node typed, nothing
    /// referenced, no additionalProperties beside properties.
    #[test]
    fn the_schemas_are_structural() {
        fn walk(node: &Value, at: &str) {
            let Some(map) = node.as_object() else { return };
            assert!(!map.contains_key("$ref"), "{at}: $ref");
            assert!(
                map.contains_key("type")
                    || map.contains_key("x-kubernetes-int-or-string")
                    || map.contains_key("x-kubernetes-preserve-unknown-fields"),
                "{at}: no type in {node}"
            );
            assert!(
                !(map.contains_key("properties") && map.contains_key("additionalProperties")),
                "{at}"
            );
            if let Some(props) = map.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    walk(v, &format!("{at}.{k}"));
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(v) = map.get(key).filter(|v| v.is_object()) {
                    walk(v, &format!("{at}.{key}"));
                }
            }
        }
        for (name, schema) in [
            ("BackendPolicy", spec_schema::<BackendPolicySpec>()),
            ("ServerPolicy", spec_schema::<ServerPolicySpec>()),
        ] {
            walk(&schema, name);
        }
    }

    /// The example policies are what the schemas describe: every field they set is a
    /// property of the schema at that place.
    #[test]
    fn the_examples_fit_the_schemas() {
        fn fits(value: &Value, schema: &Value, at: &str) {
            match value {
                Value::Object(fields) => {
                    let props = schema.get("properties").and_then(Value::as_object);
                    let extra = schema.get("additionalProperties").filter(|v| v.is_object());
                    for (k, v) in fields {
                        let sub = props
                            .and_then(|p| p.get(k))
                            .or(extra)
                            .unwrap_or_else(|| panic!("{at}.{k} is not in the schema"));
                        fits(v, sub, &format!("{at}.{k}"));
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        fits(v, &schema["items"], &format!("{at}[{i}]"));
                    }
                }
                _ => {}
            }
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in text.split("\n---") {
                let Ok(value) = serde_saphyr::from_str::<Value>(doc) else {
                    continue;
                };
                let schema = match value["kind"].as_str() {
                    Some("BackendPolicy") => spec_schema::<BackendPolicySpec>(),
                    Some("ServerPolicy") => spec_schema::<ServerPolicySpec>(),
                    _ => continue,
                };
                fits(
                    &value["spec"],
                    &schema,
                    &format!("{}: spec", path.display()),
                );
                seen += 1;
            }
        }
        assert!(seen >= 3, "the examples hold policies ({seen})");
    }
}
