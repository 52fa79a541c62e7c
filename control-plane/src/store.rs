//! The manifest store: what the control plane believes the operator applied.
//!
//! Files are parsed once per change of their content. The accepted set is rebuilt from all
//! files after every change, with two guarantees:
//!
//! - A resource whose new version is rejected keeps serving its last good version; only a
//!   resource that disappears from every file is removed.
//! - A file holding a document that cannot even be identified (invalid YAML, no kind or name:
//!   what a half-written file looks like) keeps its previous contents entirely, so that a
//!   write caught midway never deletes the resources further down the file.
//!
//! Every error is kept, with its file, document and field, for `weft status`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use weft_api::resources::check::check;
use weft_api::resources::{
    Manifest, ManifestError, ResourceKey, Subject, parse_file, parse_object,
};

#[derive(Debug, Clone)]
struct FileEntry {
    hash: u64,
    /// The manifests the file contributes: its current ones, or its previous ones while it
    /// holds an unidentifiable document.
    manifests: Vec<Manifest>,
    errors: Vec<ManifestError>,
}

#[derive(Debug, Default)]
pub struct Store {
    files: BTreeMap<String, FileEntry>,
    last_good: HashMap<ResourceKey, Manifest>,
    accepted: Arc<Vec<Manifest>>,
    errors: Arc<Vec<ManifestError>>,
    unresolved: Arc<Vec<ManifestError>>,
    generation: u64,
}

/// What a rebuild found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub generation: u64,
    pub accepted: usize,
    pub errors: usize,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Sets a file's contents (`None`: the file is gone). Returns whether anything changed.
    pub fn set_file(&mut self, file: &str, text: Option<&str>) -> bool {
        match text {
            Some(text) => self.set(file, content_hash(text), || parse_file(file, text)),
            None => self.files.remove(file).is_some(),
        }
    }

    /// Records that `file` could not be read (it is too large), keeping what it held before.
    /// Returns whether anything changed.
    pub fn refuse_file(&mut self, file: &str, error: ManifestError) -> bool {
        let hash = content_hash(&error.message);
        if self.files.get(file).is_some_and(|e| e.hash == hash) {
            return false;
        }
        let manifests = self
            .files
            .get(file)
            .map(|e| e.manifests.clone())
            .unwrap_or_default();
        self.files.insert(
            file.to_owned(),
            FileEntry {
                hash,
                manifests,
                errors: vec![error],
            },
        );
        true
    }

    /// Sets an object read from the Kubernetes API (`None`: it was deleted), named `name`
    /// (`Kind/namespace/name`) as a file would be. Returns whether anything changed.
    pub fn set_object(&mut self, name: &str, object: Option<serde_json::Value>) -> bool {
        match object {
            Some(object) => {
                let hash = content_hash(&object.to_string());
                self.set(name, hash, || parse_object(name, object))
            }
            None => self.files.remove(name).is_some(),
        }
    }

    /// Parses content whose hash differs from what `file` holds. A file holding a document
    /// that cannot be identified keeps its previous manifests.
    fn set(
        &mut self,
        file: &str,
        hash: u64,
        parse: impl FnOnce() -> (Vec<Manifest>, Vec<ManifestError>),
    ) -> bool {
        if self.files.get(file).is_some_and(|e| e.hash == hash) {
            return false;
        }
        let (manifests, errors) = parse();
        let half_written = errors.iter().any(|e| e.subject == Subject::Unidentified);
        let manifests = match (half_written, self.files.get(file)) {
            (true, Some(previous)) => previous.manifests.clone(),
            _ => manifests,
        };
        self.files.insert(
            file.to_owned(),
            FileEntry {
                hash,
                manifests,
                errors,
            },
        );
        true
    }

    /// Files the store holds.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Recomputes the accepted set from the files.
    pub fn rebuild(&mut self) -> Summary {
        let mut errors: Vec<ManifestError> = Vec::new();
        let mut candidates = Vec::new();
        for entry in self.files.values() {
            candidates.extend(entry.manifests.iter().cloned());
            errors.extend(entry.errors.iter().cloned());
        }
        let first = check(candidates);
        errors.extend(first.errors.iter().cloned());
        let accepted: HashSet<ResourceKey> =
            first.accepted.iter().map(|m| m.resource.key()).collect();
        // Resources whose current version was rejected keep their last good one.
        let rejected: HashSet<&ResourceKey> = errors
            .iter()
            .filter_map(|e| match &e.subject {
                Subject::Resource(key) => Some(key),
                _ => None,
            })
            .filter(|k| !accepted.contains(*k))
            .collect();
        let mut set = first.accepted;
        let mut kept = Vec::new();
        for key in rejected {
            if let Some(previous) = self.last_good.get(key) {
                kept.push(key.clone());
                set.push(previous.clone());
            }
        }
        let second = check(set);
        for e in second.errors {
            errors.push(ManifestError {
                message: format!("{} (its last good version no longer applies)", e.message),
                ..e
            });
        }
        if !kept.is_empty() {
            kept.sort();
            tracing::info!(resources = ?kept.iter().map(ToString::to_string).collect::<Vec<_>>(), "rejected changes: the last good versions keep serving");
        }
        self.last_good = second
            .accepted
            .iter()
            .map(|m| (m.resource.key(), m.clone()))
            .collect();
        errors.sort_by(|a, b| (&a.origin, &a.path).cmp(&(&b.origin, &b.path)));
        errors.dedup();
        let mut unresolved = second.unresolved;
        unresolved.sort_by(|a, b| (&a.origin, &a.path).cmp(&(&b.origin, &b.path)));
        self.accepted = Arc::new(second.accepted);
        self.errors = Arc::new(errors);
        self.unresolved = Arc::new(unresolved);
        self.generation += 1;
        Summary {
            generation: self.generation,
            accepted: self.accepted.len(),
            errors: self.errors.len(),
        }
    }

    pub fn accepted(&self) -> Arc<Vec<Manifest>> {
        self.accepted.clone()
    }

    pub fn errors(&self) -> Arc<Vec<ManifestError>> {
        self.errors.clone()
    }

    /// The references of accepted routes that name nothing (`weft_api::resources::check::Checked::unresolved`).
    pub fn unresolved(&self) -> Arc<Vec<ManifestError>> {
        self.unresolved.clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Whether a file's text changed since it was last parsed. Compared within this process only,
/// so std's hasher does; nothing outside the process ever sees the value.
fn content_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::resources::Resource;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {selector: {app: reviews}, ports: [{port: 9080}]}\n";

    fn route(weight: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: split, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: reviews}}]\n  rules: [{{backendRefs: [{{name: reviews, port: 9080, weight: {weight}}}]}}]\n"
        )
    }

    fn weight(store: &Store) -> Option<u32> {
        store.accepted().iter().find_map(|m| match &m.resource {
            Resource::HttpRoute(r) => r.spec.rules[0].backend_refs[0].weight,
            _ => None,
        })
    }

    #[test]
    fn a_rejected_edit_keeps_the_last_good_version() {
        let mut store = Store::new();
        store.set_file("svc.yaml", Some(SVC));
        store.set_file("route.yaml", Some(&route("7")));
        assert_eq!(
            store.rebuild(),
            Summary {
                generation: 1,
                accepted: 2,
                errors: 0
            }
        );
        assert_eq!(weight(&store), Some(7));

        store.set_file("route.yaml", Some(&route("-3")));
        let summary = store.rebuild();
        assert_eq!((summary.accepted, summary.errors), (2, 1));
        assert_eq!(
            weight(&store),
            Some(7),
            "the last good version keeps serving"
        );
        assert!(
            store.errors()[0]
                .to_string()
                .starts_with("route.yaml:1:spec.rules[0].backendRefs[0].weight")
        );

        store.set_file("route.yaml", Some(&route("9")));
        store.rebuild();
        assert_eq!((weight(&store), store.errors().len()), (Some(9), 0));
    }

    #[test]
    fn a_half_written_file_keeps_its_previous_contents() {
        let mut store = Store::new();
        let both = format!("{SVC}---\n{}", route("5"));
        store.set_file("all.yaml", Some(&both));
        store.rebuild();
        // Cut inside the second document's first line: the service survives and the route,
        // which the reader cannot see at all, is not taken for deleted.
        let cut = &both[..SVC.len() + 12];
        store.set_file("all.yaml", Some(cut));
        let summary = store.rebuild();
        assert_eq!(summary.accepted, 2, "{:?}", store.errors());
        assert_eq!(weight(&store), Some(5));
        assert_eq!(summary.errors, 1);
    }

    #[test]
    fn deleting_a_file_removes_its_resources_and_leaves_routes_unresolved() {
        let mut store = Store::new();
        store.set_file("svc.yaml", Some(SVC));
        store.set_file("route.yaml", Some(&route("1")));
        store.rebuild();
        assert!(store.set_file("svc.yaml", None));
        let summary = store.rebuild();
        assert_eq!(
            (summary.accepted, summary.errors),
            (1, 0),
            "the route stays, naming a Service that is gone"
        );
        assert!(
            store
                .unresolved()
                .iter()
                .any(|e| e.path == "spec.parentRefs[0].name"
                    && e.message.contains("no Service shop/reviews")),
            "{:?}",
            store.unresolved()
        );
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again() {
        let mut store = Store::new();
        assert!(store.set_file("svc.yaml", Some(SVC)));
        assert!(!store.set_file("svc.yaml", Some(SVC)));
    }

    #[test]
    fn a_foreign_kind_does_not_freeze_its_file() {
        let mut store = Store::new();
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        store.set_file("all.yaml", Some(&format!("{deployment}---\n{SVC}")));
        store.rebuild();
        store.set_file(
            "all.yaml",
            Some(&format!("{deployment}---\n{SVC}---\n{}", route("4"))),
        );
        let summary = store.rebuild();
        assert_eq!(
            (summary.accepted, summary.errors),
            (2, 1),
            "the Deployment is reported; the route applies"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_files_never_panic_the_store(
            texts in proptest::collection::vec("(?s).{0,200}", 1..4),
            shaped in proptest::collection::vec("( {0,4})(apiVersion: v1|kind: Service|kind: HTTPRoute|metadata:|  name: [a-z]{1,3}|spec:|  ports: \\\\[\\\\{port: [0-9]{1,6}\\\\}\\\\]|---|- [a-z]{1,3})", 0..25),
        ) {
            let mut store = Store::new();
            for (i, t) in texts.iter().enumerate() {
                store.set_file(&format!("f{i}.yaml"), Some(t));
            }
            store.set_file("shaped.yaml", Some(&shaped.join("\n")));
            store.rebuild();
            store.set_file("f0.yaml", None);
            store.rebuild();
        }
    }
}
