//! The fuzz targets of the control plane (see `fuzz/`).
//!
//! - [`manifests`]: any bytes, read as a manifest file, checked as `weft check` and the
//!   control plane check them, and compiled for every namespace and pod they name. Besides
//!   not panicking: what the checks accept compiles to configs that a proxy accepts (a config
//!   the proxies refuse would be a NACK for a manifest the control plane called valid).
//! - [`inject`]: any bytes through `weft inject`. Besides not panicking: what it writes is
//!   YAML with as many documents, injecting it again changes nothing, and uninjecting it
//!   succeeds.

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

pub fn inject(data: &[u8]) {
    use crate::inject::{Direction, Settings, inject_stream};
    let text = String::from_utf8_lossy(data);
    if text.len() > 1 << 20 {
        return;
    }
    let settings = Settings::default();
    let Ok((out, _)) = inject_stream("fuzz.yaml", &text, &settings, Direction::Inject) else {
        return;
    };
    let documents = |t: &str| weft_api::resources::documents(t).len();
    assert_eq!(
        documents(&out),
        documents(&text),
        "injection changed the documents"
    );
    let again = inject_stream("fuzz.yaml", &out, &settings, Direction::Inject);
    match again {
        Ok((again, _)) => assert_eq!(again, out, "injecting weft's own output changed it"),
        Err(e) => panic!("weft's own output does not inject again: {e}"),
    }
    if let Err(e) = inject_stream("fuzz.yaml", &out, &settings, Direction::Uninject) {
        panic!("weft's own output does not uninject: {e}");
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

    #[test]
    fn every_corpus_input_passes_the_inject_target() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let n = weft_api::fuzzing::replay(&fuzz, "inject", super::inject);
        assert!(n > 0, "no corpus for inject");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Lines of the inject corpus dropped, repeated and cut short keep the oracles.
        #[test]
        fn edited_workloads_keep_the_inject_targets_oracles(
            file in 0usize..3,
            edits in proptest::collection::vec((0usize..200, 0u8..3, 0usize..40), 0..8),
        ) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/inject");
            let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            let text = std::fs::read_to_string(&files[file % files.len()]).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            for (at, kind, cut) in edits {
                if lines.is_empty() {
                    break;
                }
                let at = at % lines.len();
                match kind {
                    0 => {
                        lines.remove(at);
                    }
                    1 => {
                        let line = lines[at].clone();
                        lines.insert(at, line);
                    }
                    _ => {
                        let line = &mut lines[at];
                        let keep = line.char_indices().nth(cut).map_or(line.len(), |(i, _)| i);
                        line.truncate(keep);
                    }
                }
            }
            super::inject(lines.join("\n").as_bytes());
        }
    }

    /// The duplicate cluster IP that once passed the checks and failed every proxy.
    #[test]
    fn two_services_on_one_cluster_ip_compile_to_a_valid_config() {
        super::manifests(
            b"apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: shop}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{port: 80}]\n",
        );
    }
}
