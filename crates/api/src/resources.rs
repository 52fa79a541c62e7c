//! Manifests: the Kubernetes-shaped resources operators apply (SPEC section 4), parsed from
//! multi-document YAML, with errors that name the file, the document and the field.
//!
//! - [`core`]: `v1` Service and Pod, `discovery.k8s.io/v1` EndpointSlice. Real cluster objects
//!   carry many fields weft does not read, so these kinds ignore unknown fields.
//! - [`routes`]: Gateway API HTTPRoute and GRPCRoute, strict: a field weft does not support is
//!   an error rather than a silent no-op.
//! - [`policy`]: weft's `policy.weft.dev/v1alpha1` kinds, strict.
//! - [`meta`]: the object metadata every kind carries.
//! - [`check`]: semantic and reference checks over a whole set of manifests.

use std::fmt;

pub mod check;
pub mod core;
pub mod meta;
pub mod policy;
pub mod routes;

pub use meta::ObjectMeta;

/// Where a manifest came from: a file and the 1-based index of its YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub file: String,
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.document)
    }
}

/// A problem in a manifest: `file:document:field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{path}: {message}")]
pub struct ManifestError {
    pub origin: Source,
    pub path: String,
    pub message: String,
    /// What the document was meant to be.
    pub subject: Subject,
}

/// What a failed document was meant to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A resource of a kind weft reads: its last good version can keep serving.
    Resource(ResourceKey),
    /// Something that is not weft's to read (another kind or API version).
    Foreign,
    /// A document that cannot be told apart: invalid YAML, or no kind or name. A file in that
    /// state may be half-written.
    Unidentified,
}

/// A parsed resource of a kind weft reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Service(core::Service),
    Pod(core::Pod),
    EndpointSlice(core::EndpointSlice),
    HttpRoute(routes::HttpRouteManifest),
    GrpcRoute(routes::GrpcRouteManifest),
    BackendPolicy(policy::BackendPolicy),
    ServerPolicy(policy::ServerPolicy),
    Namespace(core::Namespace),
}

/// The kinds weft reads, with the API versions accepted for each.
pub const KINDS: &[(&str, &[&str])] = &[
    ("Service", &["v1"]),
    ("Pod", &["v1"]),
    ("EndpointSlice", &["discovery.k8s.io/v1"]),
    (
        "HTTPRoute",
        &[
            "gateway.networking.k8s.io/v1",
            "gateway.networking.k8s.io/v1beta1",
        ],
    ),
    (
        "GRPCRoute",
        &[
            "gateway.networking.k8s.io/v1",
            "gateway.networking.k8s.io/v1alpha2",
        ],
    ),
    ("BackendPolicy", &["policy.weft.dev/v1alpha1"]),
    ("ServerPolicy", &["policy.weft.dev/v1alpha1"]),
    ("Namespace", &["v1"]),
];

/// Whether objects of the kind belong to no namespace: their key's namespace is empty.
pub fn is_cluster_scoped(kind: &str) -> bool {
    kind == "Namespace"
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::Pod(_) => "Pod",
            Resource::EndpointSlice(_) => "EndpointSlice",
            Resource::HttpRoute(_) => "HTTPRoute",
            Resource::GrpcRoute(_) => "GRPCRoute",
            Resource::BackendPolicy(_) => "BackendPolicy",
            Resource::ServerPolicy(_) => "ServerPolicy",
            Resource::Namespace(_) => "Namespace",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Resource::Service(r) => &r.metadata,
            Resource::Pod(r) => &r.metadata,
            Resource::EndpointSlice(r) => &r.metadata,
            Resource::HttpRoute(r) => &r.metadata,
            Resource::GrpcRoute(r) => &r.metadata,
            Resource::BackendPolicy(r) => &r.metadata,
            Resource::ServerPolicy(r) => &r.metadata,
            Resource::Namespace(r) => &r.metadata,
        }
    }

    /// `Kind/namespace/name`: what identifies the resource across files and versions.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: if is_cluster_scoped(self.kind()) {
                String::new()
            } else {
                self.meta().namespace().to_owned()
            },
            name: self.meta().name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub source: Source,
    pub resource: Resource,
}

/// The largest manifest file weft reads: room for ten thousand routes several times over.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The largest document: Kubernetes stores an object of at most 1.5 MiB (etcd's limit).
pub const MAX_DOCUMENT_BYTES: usize = 1536 << 10;
/// The most an object's annotations may hold, keys and values together, as Kubernetes
/// validates them.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 << 10;

/// The error for a file larger than [`MAX_FILE_BYTES`], which is not read at all. It cannot be
/// told what it holds, so whatever the file held before keeps serving.
pub fn oversized_file(file: &str, bytes: u64) -> ManifestError {
    ManifestError {
        origin: Source {
            file: file.to_owned(),
            document: 0,
        },
        path: String::new(),
        message: format!(
            "the file is {bytes} bytes; weft reads manifest files of at most {} MiB",
            MAX_FILE_BYTES >> 20
        ),
        subject: Subject::Unidentified,
    }
}

/// Parses every document of a YAML file. Documents that fail are reported and skipped; the
/// others are returned. A YAML syntax error spoils only its own document. A file over
/// [`MAX_FILE_BYTES`] or a document over [`MAX_DOCUMENT_BYTES`] is refused unread, and the YAML
/// parser's budget (node count, depth, alias expansion) refuses what would grow beyond its
/// size: an alias bomb, deep nesting.
pub fn parse_file(file: &str, text: &str) -> (Vec<Manifest>, Vec<ManifestError>) {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    if text.len() as u64 > MAX_FILE_BYTES {
        errors.push(oversized_file(file, text.len() as u64));
        return (manifests, errors);
    }
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let source = Source {
            file: file.to_owned(),
            document: i + 1,
        };
        if doc
            .trim()
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        if doc.len() > MAX_DOCUMENT_BYTES {
            let message = format!(
                "the document is {} bytes; an object is at most {} KiB, as Kubernetes stores it",
                doc.len(),
                MAX_DOCUMENT_BYTES >> 10
            );
            let error = DocError::new("", message, Subject::Unidentified);
            collect(source, Err(error), &mut manifests, &mut errors);
            continue;
        }
        collect(source, parse_document(doc), &mut manifests, &mut errors);
    }
    (manifests, errors)
}

/// Reads one object that arrives already structured (from the Kubernetes API), with the same
/// checks as a document of a file. `origin` names it in errors, as a file name would.
pub fn parse_object(origin: &str, value: serde_json::Value) -> (Vec<Manifest>, Vec<ManifestError>) {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    let source = Source {
        file: origin.to_owned(),
        document: 1,
    };
    collect(source, parse_value(value), &mut manifests, &mut errors);
    (manifests, errors)
}

fn collect(
    source: Source,
    parsed: Result<Option<Resource>, DocError>,
    manifests: &mut Vec<Manifest>,
    errors: &mut Vec<ManifestError>,
) {
    match parsed {
        Ok(Some(resource)) => manifests.push(Manifest { source, resource }),
        Ok(None) => {}
        Err(DocError {
            path,
            message,
            subject,
        }) => errors.push(ManifestError {
            origin: source,
            path,
            message,
            subject,
        }),
    }
}

/// One document of a YAML stream: the `---` line that opens it (empty for a first document
/// without one) and its text. Concatenating a stream's documents gives the stream back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Document<'a> {
    pub marker: &'a str,
    pub body: &'a str,
}

/// Splits a YAML stream at `---` document markers. A stream that opens with a marker has no
/// empty document before it: what precedes that marker (blank lines) belongs to the marker.
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let (mut marker, mut start, mut offset) = ("", 0, 0);
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            let body = &text[start..offset];
            if docs.is_empty() && marker.is_empty() && body.trim().is_empty() {
                // The leading marker: the blank text before it is part of it.
                marker = &text[..offset + line.len()];
            } else {
                docs.push(Document { marker, body });
                marker = &text[offset..offset + line.len()];
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(Document {
        marker,
        body: &text[start..],
    });
    docs
}

fn split_documents(text: &str) -> Vec<&str> {
    documents(text).into_iter().map(|d| d.body).collect()
}

struct DocError {
    path: String,
    message: String,
    subject: Subject,
}

impl DocError {
    fn new(path: impl Into<String>, message: impl Into<String>, subject: Subject) -> DocError {
        DocError {
            path: path.into(),
            message: message.into(),
            subject,
        }
    }
}

fn parse_document(text: &str) -> Result<Option<Resource>, DocError> {
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        let text = e.to_string();
        let message = if text.contains("budget breached") {
            // The parser's own words name its counter; say what it means.
            format!(
                "refused: the document would grow beyond what a manifest holds (too many nodes, \
                 or aliases that expand too far): {}",
                first_line(&text)
            )
        } else if text.contains("recursion limit") {
            format!(
                "refused: nested deeper than a manifest ever is: {}",
                first_line(&text)
            )
        } else {
            format!("invalid YAML: {}", first_line(&text))
        };
        DocError::new("", message, Subject::Unidentified)
    })?;
    parse_value(value)
}

fn parse_value(value: serde_json::Value) -> Result<Option<Resource>, DocError> {
    if value.is_null() {
        return Ok(None);
    }
    let Some(obj) = value.as_object() else {
        return Err(DocError::new(
            "",
            "a manifest must be a mapping with apiVersion, kind, metadata",
            Subject::Unidentified,
        ));
    };
    let api_version = obj
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or_else(|| DocError::new("apiVersion", "is required", Subject::Unidentified))?;
    let kind = obj
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or_else(|| DocError::new("kind", "is required", Subject::Unidentified))?;
    let Some((kind, versions)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(DocError::new(
            "kind",
            format!("unknown kind {kind:?}; weft reads {}", known.join(", ")),
            Subject::Foreign,
        ));
    };
    if !versions.contains(&api_version) {
        return Err(DocError::new(
            "apiVersion",
            format!(
                "{kind} is read as {}, not {api_version:?}",
                versions.join(" or ")
            ),
            Subject::Foreign,
        ));
    }
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(DocError::new(
            "metadata.name",
            "is required",
            Subject::Unidentified,
        ));
    };
    let namespace = if is_cluster_scoped(kind) {
        ""
    } else {
        meta.and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
    };
    let subject = Subject::Resource(ResourceKey {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    });
    let annotations: usize = meta
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.as_object())
        .map_or(0, |a| {
            a.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        });
    if annotations > MAX_ANNOTATIONS_BYTES {
        return Err(DocError::new(
            "metadata.annotations",
            format!(
                "{annotations} bytes; annotations may hold at most {} KiB in all",
                MAX_ANNOTATIONS_BYTES >> 10
            ),
            subject,
        ));
    }
    let resource = match *kind {
        "Service" => Resource::Service(typed(value, &subject)?),
        "Pod" => Resource::Pod(typed(value, &subject)?),
        "EndpointSlice" => Resource::EndpointSlice(typed(value, &subject)?),
        "HTTPRoute" => Resource::HttpRoute(typed(value, &subject)?),
        "GRPCRoute" => Resource::GrpcRoute(typed(value, &subject)?),
        "BackendPolicy" => Resource::BackendPolicy(typed(value, &subject)?),
        "Namespace" => Resource::Namespace(typed(value, &subject)?),
        _ => Resource::ServerPolicy(typed(value, &subject)?),
    };
    Ok(Some(resource))
}

/// Deserializes with the path of the failing field.
fn typed<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    subject: &Subject,
) -> Result<T, DocError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.inner().to_string();
        DocError::new(path, unsupported(first_line(&inner)), subject.clone())
    })
}

/// serde's "unknown field `x`, expected one of ..." as what it means to an operator: a field
/// of the Gateway API (or a typo) that weft does not implement, and refuses rather than ignore.
/// The error's path already ends with the field.
fn unsupported(message: &str) -> String {
    match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        Some((field, _)) => format!("`{field}` is not supported by weft"),
        None => message.to_owned(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile manifests: each is refused alone, with a clear message.
    #[test]
    fn hostile_manifests_are_refused_with_a_clear_error() {
        let mut laughs = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: lol}\nspec:\n  a0: &a0 \"lol\"\n",
        );
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            laughs.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
        }
        let deep = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let mut many = String::from(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: many}\nspec:\n  rules:\n",
        );
        for i in 0..100_000 {
            many.push_str(&format!(
                "  - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]\n"
            ));
        }
        let annotated = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  annotations: {{a: \"{}\"}}\nspec: {{ports: [{{port: 80}}]}}\n",
            "x".repeat(300 << 10)
        );
        let huge = format!("# {}\n", "x".repeat(17 << 20));
        let cases: [(&str, &str, &str, Subject); 5] = [
            (
                "laughs",
                &laughs,
                "refused: the document would grow",
                Subject::Unidentified,
            ),
            (
                "deep",
                &deep,
                "refused: nested deeper",
                Subject::Unidentified,
            ),
            ("many", &many, "the document is", Subject::Unidentified),
            (
                "annotated",
                &annotated,
                "annotations may hold at most 256 KiB",
                Subject::Resource(ResourceKey {
                    kind: "Service",
                    namespace: "default".into(),
                    name: "big".into(),
                }),
            ),
            (
                "huge",
                &huge,
                "weft reads manifest files of at most 16 MiB",
                Subject::Unidentified,
            ),
        ];
        for (name, text, message, subject) in cases {
            let (manifests, errors) = parse_file(name, text);
            assert!(manifests.is_empty(), "{name}");
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            assert!(errors[0].message.contains(message), "{name}: {}", errors[0]);
            assert_eq!(errors[0].subject, subject, "{name}");
        }
    }

    #[test]
    fn documents_are_split_and_numbered_as_written() {
        let text = "---\na: 1\n---\nb: 2\n--- # comment\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs, ["a: 1\n", "b: 2\n", "c: 3\n"]);
        for text in [text, "\n---\na: 1\n", "# head\na: 1\n---\n", "a: 1", ""] {
            let joined: String = documents(text)
                .iter()
                .flat_map(|d| [d.marker, d.body])
                .collect();
            assert_eq!(joined, text, "the documents of {text:?} give it back");
        }
        assert_eq!(documents("\n---\na: 1\n").len(), 1);
    }

    #[test]
    fn a_bad_document_is_reported_alone() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Secret
metadata: {name: s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: reviews}]
  rules:
    - backendRefs:
        - {name: reviews, port: 9080, weight: -1}
---
this: [is: not yaml
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r2, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews, port: 9080}], retries: {}}]
"#;
        let (ok, errors) = parse_file("app.yaml", text);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].resource.key().to_string(), "Service/shop/reviews");
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("app.yaml:2:kind: unknown kind \"Secret\""),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with(
                "app.yaml:3:spec.rules[0].backendRefs[0].weight: invalid value: integer `-1`"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[2].starts_with("app.yaml:4:: invalid YAML"),
            "{shown:#?}"
        );
        assert!(
            shown[3] == "app.yaml:5:spec.rules[0].retries: `retries` is not supported by weft",
            "{shown:#?}"
        );
    }

    #[test]
    fn api_versions_are_checked_per_kind() {
        let (_, errors) = parse_file("f", "apiVersion: v2\nkind: Service\nmetadata: {name: a}\n");
        assert_eq!(errors[0].path, "apiVersion");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,300}") {
            let _ = parse_file("f", &text);
        }

        #[test]
        fn arbitrary_yaml_shaped_text_never_panics(
            lines in proptest::collection::vec("( {0,4})(apiVersion|kind|metadata|spec|name|rules|ports|- |---|[a-z]{1,6})(: )?([a-zA-Z0-9./{}\\[\\], -]{0,12})", 0..20)
        ) {
            let _ = parse_file("f", &lines.join("\n"));
        }
    }
}
