//! Manifests for a test: the examples in `manifests/examples/` with the test's own pods, compiled
//! into a proxy's config by the real `weft compile`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use weft_api::config::ProxyConfig;

use crate::paths::{bin_path, scratch_dir};

/// A set of manifest documents.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    docs: Vec<String>,
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

/// Splits a YAML stream at `---` lines.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

impl Manifests {
    pub fn new() -> Manifests {
        Manifests::default()
    }

    /// Adds an example's documents, except its Pods: a test brings pods on its own addresses.
    pub fn example(self, name: &str) -> Manifests {
        self.example_with(name, &[])
    }

    /// Adds an example as [`Manifests::example`] does, with each `(from, to)` of `edits`
    /// replaced (each must be there).
    pub fn example_with(mut self, name: &str, edits: &[(&str, &str)]) -> Manifests {
        let path = examples_dir().join(format!("{name}.yaml"));
        let mut text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for (from, to) in edits {
            assert!(text.contains(from), "{} has no {from:?}", path.display());
            text = text.replace(from, to);
        }
        self.docs.extend(
            documents(&text)
                .into_iter()
                .filter(|d| !d.lines().any(|l| l.trim() == "kind: Pod")),
        );
        self
    }

    /// Adds a pod whose container port `http` is `addr`'s port.
    pub fn pod(
        mut self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        addr: SocketAddr,
        meshed: bool,
    ) -> Manifests {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let annotations = if meshed {
            "{weft.dev/inject: enabled}"
        } else {
            "{}"
        };
        self.docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{{}}}\n  annotations: {annotations}\nspec:\n  serviceAccountName: {name}\n  containers: [{{name: app, ports: [{{name: http, containerPort: {}}}]}}]\nstatus: {{podIP: {}}}\n",
            labels.join(", "),
            addr.port(),
            addr.ip(),
        ));
        self
    }

    pub fn doc(mut self, yaml: &str) -> Manifests {
        self.docs.push(yaml.to_owned());
        self
    }

    /// The manifests as one YAML stream.
    pub fn yaml(&self) -> String {
        self.docs.join("---\n")
    }

    /// Writes the manifests to a directory and returns it.
    pub fn write(&self) -> PathBuf {
        let dir = scratch_dir("manifests");
        std::fs::write(dir.join("manifests.yaml"), self.docs.join("---\n"))
            .expect("writing manifests");
        dir
    }

    /// The config a proxy in `namespace` gets, by `weft compile`.
    pub fn compile(&self, namespace: &str) -> ProxyConfig {
        self.compile_for(namespace, None, &[])
    }

    /// The config of the proxy of pod `<namespace>/<pod>` (its ServerPolicies included).
    pub fn compile_pod(&self, namespace: &str, pod: &str) -> ProxyConfig {
        self.compile_for(namespace, Some(pod), &[])
    }

    /// As [`Manifests::compile_pod`], with more arguments for `weft compile`.
    pub fn compile_pod_with(&self, namespace: &str, pod: &str, args: &[&str]) -> ProxyConfig {
        self.compile_for(namespace, Some(pod), args)
    }

    fn compile_for(&self, namespace: &str, pod: Option<&str>, args: &[&str]) -> ProxyConfig {
        let dir = self.write();
        let out = Command::new(bin_path("weft"))
            .args(["compile", "-o", "json", "--namespace", namespace])
            .args(pod.map(|p| ["--pod", p]).into_iter().flatten())
            .args(args)
            .arg("-f")
            .arg(&dir)
            .output()
            .expect("running weft compile");
        assert!(
            out.status.success(),
            "weft compile failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        serde_json::from_slice(&out.stdout).expect("weft compile prints a config")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn documents_split_and_comments_drop() {
        let docs = super::documents("# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\n");
        assert_eq!(docs, ["a: 1\n", "b: 2\n"]);
    }
}
