//! The fuzz target for manifests (see `fuzz/`): any bytes, read as a manifest file, checked
//! as `weft check` and the control plane check them, and compiled for every namespace and
//! pod they name. Besides not panicking: what the checks accept compiles to configs that a
//! proxy accepts (a config the proxies refuse would be a NACK for a manifest the control
//! plane called valid).

use std::collections::BTreeSet;

use weft_api::resources::Resource;

use crate::compile::{Index, MeshSettings, Target};

pub fn manifests(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (parsed, _) = weft_api::resources::parse_file("fuzz.yaml", &text);
    let accepted = weft_api::resources::check::check(parsed).accepted;
    let index = Index::new(&accepted);
    let mesh = MeshSettings::default();
    let mut namespaces: BTreeSet<&str> = BTreeSet::from(["default"]);
    let mut pods = Vec::new();
    for m in &accepted {
        namespaces.insert(m.resource.meta().namespace());
        if let Resource::Pod(p) = &m.resource {
            let ip = p.status.pod_ip.clone().unwrap_or_default();
            pods.push(Target::of_proxy(
                p.metadata.namespace(),
                &p.metadata.name,
                &ip,
            ));
        }
    }
    for namespace in namespaces {
        let config = index.compile_namespace(namespace, &mesh);
        if let Err(e) = config.validate() {
            panic!(
                "accepted manifests compiled, for {namespace}, to a config a proxy refuses: {e:?}"
            );
        }
    }
    for pod in pods {
        let mut config = index.compile_namespace(&pod.namespace, &mesh);
        config.inbound.policies = index.inbound_policies(&pod);
        if let Err(e) = config.validate() {
            panic!("accepted manifests compiled, for {pod:?}, to a config a proxy refuses: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_corpus_input_and_regression_passes_the_manifests_target() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let n = weft_api::fuzzing::replay(&fuzz, "manifests", super::manifests);
        assert!(n > 0, "no corpus for manifests");
    }

    /// The duplicate cluster IP that once passed the checks and failed every proxy.
    #[test]
    fn two_services_on_one_cluster_ip_compile_to_a_valid_config() {
        super::manifests(
            b"apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: shop}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n",
        );
    }
}
