//! `weft control --kubernetes`: the cluster's API as the manifest source.
//!
//! One watcher per kind (Services, EndpointSlices, Pods, HTTPRoutes, GRPCRoutes and weft's
//! policy kinds) feeds the same [`Store`] that local mode fills from files: each object is a
//! "file" named `Kind/namespace/name`, so validation, last good versions and errors work the
//! same way in both modes. The watchers' relists (at start, and whenever a watch expires
//! with 410 Gone) replace a kind's whole set, so deletions missed while a watch was down
//! are not kept.
//!
//! Nothing is published until every kind has been listed once: a proxy never receives a
//! config built from half of the cluster. A kind whose API is not installed (no Gateway API
//! CRDs, say) counts as listed and empty, and is retried.
//!
//! After each rebuild, every mesh route (an HTTPRoute or GRPCRoute with a Service among its
//! `parentRefs`) gets its `status.parents` entries for weft's controller written back, with
//! the Gateway API's `Accepted` and `ResolvedRefs` conditions. Entries of other
//! controllers are kept; an unchanged status is not written again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_api::resources::ManifestError;

use crate::hub::Hub;
use crate::store::Store;

/// The `controllerName` of weft's entries in a route's `status.parents`.
pub const CONTROLLER_NAME: &str = "weft.dev/mesh";

/// How long changes are gathered before a rebuild: a burst (a relist, `kubectl apply` of a
/// directory) is one rebuild.
const QUIET: Duration = Duration::from_millis(20);

/// A kind weft watches.
#[derive(Debug, Clone)]
pub struct WatchedKind {
    pub resource: ApiResource,
    /// Pods keep their status (their address and readiness); for the other kinds it is
    /// output, not input.
    keep_status: bool,
    /// Routes are weft's when they attach to a Service, and get their status written back.
    route: bool,
}

/// The kinds `weft control --kubernetes` watches.
pub fn watched_kinds() -> Vec<WatchedKind> {
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let custom = |group: &str, version: &str, kind: &str, route: bool| WatchedKind {
        resource: ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)),
        keep_status: false,
        route,
    };
    vec![
        WatchedKind {
            resource: ApiResource::erase::<Service>(&()),
            keep_status: false,
            route: false,
        },
        WatchedKind {
            resource: ApiResource::erase::<EndpointSlice>(&()),
            keep_status: false,
            route: false,
        },
        WatchedKind {
            resource: ApiResource::erase::<Pod>(&()),
            keep_status: true,
            route: false,
        },
        custom("gateway.networking.k8s.io", "v1", "HTTPRoute", true),
        custom("gateway.networking.k8s.io", "v1", "GRPCRoute", true),
        custom("policy.weft.dev", "v1alpha1", "BackendPolicy", false),
        custom("policy.weft.dev", "v1alpha1", "ServerPolicy", false),
    ]
}

/// What a watcher reports.
enum Change {
    Event(usize, Box<Event<DynamicObject>>),
    /// The kind's API is not served: it counts as listed and empty.
    NotInstalled(usize),
}

/// A route as the cluster has it: what its status is computed from.
#[derive(Debug, Clone)]
struct RouteObject {
    resource: ApiResource,
    namespace: String,
    name: String,
    resource_version: Option<String>,
    generation: Option<i64>,
    parent_refs: Vec<Value>,
    status_parents: Vec<Value>,
}

/// Watches the cluster and publishes every change to the hub until `shutdown`. Resolves
/// `synced` once every kind has been listed and the first config published.
pub async fn run(
    client: Client,
    hub: Arc<Hub>,
    synced: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let kinds = watched_kinds();
    let (tx, mut rx) = mpsc::channel(256);
    for (index, kind) in kinds.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource);
        tokio::spawn(watch_kind(
            index,
            kind.resource.kind.clone(),
            api,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    let (status_tx, status_rx) = mpsc::channel(1024);
    tokio::spawn(write_statuses(client, status_rx, shutdown.clone()));

    let mut mirror = Mirror::new(kinds, status_tx);
    let mut synced = Some(synced);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = rx.recv() => change,
        };
        let Some(first) = first else { return };
        let mut changed = mirror.apply(first);
        // Gather the rest of the burst.
        let deadline = tokio::time::sleep(QUIET);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                change = rx.recv() => match change {
                    Some(change) => changed |= mirror.apply(change),
                    None => break,
                },
            }
        }
        if !mirror.all_listed() || !(changed || synced.is_some()) {
            continue;
        }
        mirror.publish(&hub);
        if let Some(tx) = synced.take() {
            let _ = tx.send(());
        }
    }
}

async fn watch_kind(
    index: usize,
    kind: String,
    api: Api<DynamicObject>,
    tx: mpsc::Sender<Change>,
    shutdown: CancellationToken,
) {
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::pin!(stream);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = stream.next() => next,
        };
        let change = match next {
            None => return,
            Some(Ok(event)) => Change::Event(index, Box::new(event)),
            Some(Err(e)) => {
                if let watcher::Error::InitialListFailed(kube::Error::Api(status)) = &e
                    && status.code == 404
                {
                    tracing::warn!(%kind, "the cluster does not serve this kind (CRD not installed?); treating it as empty and retrying");
                    Change::NotInstalled(index)
                } else {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            }
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

/// The cluster's objects, as the store sees them, and the routes' current status.
struct Mirror {
    kinds: Vec<WatchedKind>,
    store: Store,
    /// Per kind: the names of its objects in the store.
    names: Vec<BTreeSet<String>>,
    /// Per kind: the names seen by a relist in progress.
    relisting: Vec<Option<BTreeSet<String>>>,
    listed: Vec<bool>,
    routes: BTreeMap<String, RouteObject>,
    /// weft's `status.parents` entries for each route, as of the last rebuild.
    ours: BTreeMap<String, Vec<Value>>,
    statuses: mpsc::Sender<RouteObject>,
}

impl Mirror {
    fn new(kinds: Vec<WatchedKind>, statuses: mpsc::Sender<RouteObject>) -> Mirror {
        let n = kinds.len();
        Mirror {
            ours: BTreeMap::new(),
            statuses,
            kinds,
            store: Store::new(),
            names: vec![BTreeSet::new(); n],
            relisting: vec![None; n],
            listed: vec![false; n],
            routes: BTreeMap::new(),
        }
    }

    fn all_listed(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    /// Applies one change; returns whether the store changed.
    fn apply(&mut self, change: Change) -> bool {
        let (k, event) = match change {
            Change::NotInstalled(k) => {
                self.listed[k] = true;
                return false;
            }
            Change::Event(k, event) => (k, *event),
        };
        match event {
            Event::Init => {
                self.relisting[k] = Some(BTreeSet::new());
                false
            }
            Event::InitApply(object) => {
                let (name, _) = self.put(k, object);
                if let Some(seen) = self.relisting[k].as_mut() {
                    seen.insert(name);
                }
                // Changes apply once the relist is complete.
                false
            }
            Event::InitDone => {
                let seen = self.relisting[k].take().unwrap_or_default();
                let gone: Vec<String> = self.names[k].difference(&seen).cloned().collect();
                for name in gone {
                    self.remove(k, &name);
                }
                self.listed[k] = true;
                // A relist always rebuilds: what it replaced was applied without one.
                true
            }
            Event::Apply(object) => self.put(k, object).1,
            Event::Delete(object) => {
                let name = object_name(&self.kinds[k].resource, &object);
                self.remove(k, &name)
            }
        }
    }

    /// Puts an object into the store; returns its name and whether the store changed.
    fn put(&mut self, k: usize, object: DynamicObject) -> (String, bool) {
        let kind = &self.kinds[k];
        let name = object_name(&kind.resource, &object);
        let route = kind.route.then(|| route_object(&kind.resource, &object));
        let Some(input) = as_input(kind, object) else {
            // A route that attaches to no Service is another implementation's (a Gateway's).
            return (name.clone(), self.remove(k, &name));
        };
        if let Some(route) = route {
            // A version whose status lacks weft's current entries (a write that lost a race,
            // another controller's write) gets them written again.
            self.write_status(&name, &route);
            self.routes.insert(name.clone(), route);
        }
        self.names[k].insert(name.clone());
        let changed = self.store.set_object(&name, Some(input));
        (name, changed)
    }

    fn remove(&mut self, k: usize, name: &str) -> bool {
        self.names[k].remove(name);
        self.routes.remove(name);
        self.ours.remove(name);
        self.store.set_object(name, None)
    }

    /// Rebuilds, publishes, and writes the route statuses that changed.
    fn publish(&mut self, hub: &Hub) {
        crate::watch::publish(&mut self.store, hub, true);
        // A route's errors and accepted version carry its store name as their origin.
        let errors = self.store.errors();
        let accepted = self.store.accepted();
        let now = rfc3339(time::OffsetDateTime::now_utc());
        self.ours = self
            .routes
            .iter()
            .map(|(name, route)| {
                let own: Vec<&ManifestError> =
                    errors.iter().filter(|e| e.origin.file == *name).collect();
                let serving = accepted.iter().any(|m| m.source.file == *name);
                (name.clone(), own_status(route, &own, serving, &now))
            })
            .collect();
        for (name, route) in &self.routes {
            self.write_status(name, route);
        }
    }

    /// Queues a status write when the route's status differs from what weft has to say.
    fn write_status(&self, name: &str, route: &RouteObject) {
        let Some(ours) = self.ours.get(name) else {
            return;
        };
        let parents = merged_status(route, ours);
        if parents == route.status_parents {
            return;
        }
        let update = RouteObject {
            status_parents: parents,
            ..route.clone()
        };
        if self.statuses.try_send(update).is_err() {
            tracing::warn!(route = %name, "status writes are backed up; this one waits for the route's next change");
        }
    }
}

/// `Kind/namespace/name`: the object's name in the store (and in its errors).
fn object_name(resource: &ApiResource, object: &DynamicObject) -> String {
    format!(
        "{}/{}/{}",
        resource.kind,
        object.metadata.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

fn route_object(resource: &ApiResource, object: &DynamicObject) -> RouteObject {
    let list = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    RouteObject {
        resource: resource.clone(),
        namespace: object
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: object.metadata.name.clone().unwrap_or_default(),
        resource_version: object.metadata.resource_version.clone(),
        generation: object.metadata.generation,
        parent_refs: list(object.data.pointer("/spec/parentRefs")),
        status_parents: list(object.data.pointer("/status/parents")),
    }
}

fn is_service_parent(parent: &Value) -> bool {
    let group = parent.get("group").and_then(Value::as_str).unwrap_or("");
    parent.get("kind").and_then(Value::as_str) == Some("Service")
        && (group.is_empty() || group == "core")
}

/// The object as a manifest document, or `None` when it is not weft's to read.
fn as_input(kind: &WatchedKind, object: DynamicObject) -> Option<Value> {
    let mut value = serde_json::to_value(object).ok()?;
    let map = value.as_object_mut()?;
    // List items carry no apiVersion and kind: the watched API says what they are.
    map.insert(
        "apiVersion".into(),
        kind.resource.api_version.clone().into(),
    );
    map.insert("kind".into(), kind.resource.kind.clone().into());
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    }
    if !kind.keep_status {
        map.remove("status");
    }
    if kind.route {
        let parents = value.pointer("/spec/parentRefs").and_then(Value::as_array);
        if !parents.is_some_and(|p| p.iter().any(is_service_parent)) {
            return None;
        }
    }
    Some(value)
}

/// Which condition an error belongs to, with the Gateway API's reason.
#[derive(Clone, Copy, PartialEq)]
enum Blame {
    /// The route's `parentRefs[i]`.
    Parent(usize, &'static str),
    /// A backend reference.
    Backend(&'static str),
    /// Anything else the route got wrong.
    Route,
}

impl Blame {
    fn reason(self) -> &'static str {
        match self {
            Blame::Parent(_, reason) | Blame::Backend(reason) => reason,
            Blame::Route => "UnsupportedValue",
        }
    }
}

/// Reads the reference errors of `weft_api::resources::check` by their path and message.
fn blame(error: &ManifestError) -> Blame {
    let path = error.path.as_str();
    let missing = error.message.starts_with("no Service") || error.message.contains("has no port");
    if let Some(rest) = path.strip_prefix("spec.parentRefs[")
        && let Some(i) = rest.split(']').next().and_then(|i| i.parse().ok())
    {
        return Blame::Parent(
            i,
            if missing {
                "NoMatchingParent"
            } else {
                "UnsupportedValue"
            },
        );
    }
    if path.contains("backendRef") {
        if path.ends_with(".kind") || path.ends_with(".group") {
            return Blame::Backend("InvalidKind");
        }
        if missing {
            return Blame::Backend("BackendNotFound");
        }
    }
    Blame::Route
}

fn is_ours(parent_status: &Value) -> bool {
    parent_status.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
}

/// The route's `status.parents`: the other controllers' entries as they are, then weft's.
fn merged_status(route: &RouteObject, ours: &[Value]) -> Vec<Value> {
    route
        .status_parents
        .iter()
        .filter(|p| !is_ours(p))
        .chain(ours)
        .cloned()
        .collect()
}

/// weft's `status.parents` entries for a route: one per Service parent. Any error keeps the
/// whole route out (weft never applies part of one), so it makes every parent's Accepted
/// false: with the parent's own reason if it has one, else the route's. A condition's
/// `lastTransitionTime` moves only when its status does.
fn own_status(
    route: &RouteObject,
    errors: &[&ManifestError],
    serving: bool,
    now: &str,
) -> Vec<Value> {
    let blamed: Vec<(Blame, &ManifestError)> = errors.iter().map(|e| (blame(e), *e)).collect();
    let shown = |pick: &dyn Fn(Blame) -> bool| -> String {
        blamed
            .iter()
            .filter(|(b, _)| pick(*b))
            .map(|(_, e)| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let consequence = if serving {
        "the last accepted version keeps serving"
    } else {
        "the route is not in effect"
    };
    let backend = blamed.iter().find(|(b, _)| matches!(b, Blame::Backend(_)));
    // What rejects the route for every parent: its own errors first, then its backends'.
    let route_wide = blamed
        .iter()
        .find(|(b, _)| *b == Blame::Route)
        .or(backend)
        .or(blamed.first())
        .map(|(b, _)| b.reason());
    let previous = |parent: &Value, kind: &str| -> Option<(String, String)> {
        let entry = route
            .status_parents
            .iter()
            .find(|p| is_ours(p) && p.get("parentRef") == Some(parent))?;
        let condition = entry
            .get("conditions")?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?;
        Some((
            condition.get("status")?.as_str()?.to_owned(),
            condition.get("lastTransitionTime")?.as_str()?.to_owned(),
        ))
    };
    let condition = |parent: &Value, kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = match previous(parent, kind) {
            Some((s, t)) if s == status => t,
            _ => now.to_owned(),
        };
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": route.generation.unwrap_or(0),
            "lastTransitionTime": since,
        })
    };
    let resolved = match backend {
        Some((b, _)) => (
            false,
            b.reason(),
            shown(&|b| matches!(b, Blame::Backend(_))),
        ),
        None => (true, "ResolvedRefs", "all references resolved".to_owned()),
    };
    route
        .parent_refs
        .iter()
        .enumerate()
        .filter(|(_, parent)| is_service_parent(parent))
        .map(|(i, parent)| {
            let own = blamed.iter().find_map(|(b, _)| match b {
                Blame::Parent(j, reason) if *j == i => Some(*reason),
                _ => None,
            });
            let accepted = match (own, route_wide) {
                (Some(reason), _) => (
                    false,
                    reason,
                    format!(
                        "{}; {consequence}",
                        shown(&|b| matches!(b, Blame::Parent(j, _) if j == i))
                    ),
                ),
                (None, Some(reason)) => (
                    false,
                    reason,
                    format!("{}; {consequence}", shown(&|_| true)),
                ),
                (None, None) => (true, "Accepted", "accepted by weft".to_owned()),
            };
            json!({
                "parentRef": parent,
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    condition(parent, "Accepted", accepted.0, accepted.1, accepted.2),
                    condition(parent, "ResolvedRefs", resolved.0, resolved.1, resolved.2.clone()),
                ],
            })
        })
        .collect()
}

/// Writes route statuses, one at a time, with the route's resourceVersion as a
/// precondition: a conflict means a newer version is on its way through the watch, and its
/// status will be computed again.
async fn write_statuses(
    client: Client,
    mut rx: mpsc::Receiver<RouteObject>,
    shutdown: CancellationToken,
) {
    loop {
        let route = tokio::select! {
            _ = shutdown.cancelled() => return,
            route = rx.recv() => match route {
                Some(route) => route,
                None => return,
            },
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &route.namespace, &route.resource);
        let mut patch = json!({"status": {"parents": route.status_parents}});
        if let Some(version) = &route.resource_version {
            patch["metadata"] = json!({"resourceVersion": version});
        }
        match api
            .patch_status(&route.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(kind = %route.resource.kind, namespace = %route.namespace, name = %route.name, "route status written")
            }
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                tracing::debug!(name = %route.name, code = status.code, "route changed or went away before its status was written");
            }
            Err(e) => {
                tracing::warn!(kind = %route.resource.kind, namespace = %route.namespace, name = %route.name, error = %e, "cannot write the route's status")
            }
        }
    }
}

/// `2026-11-23T10:00:00Z`, as Kubernetes writes times: whole seconds, UTC.
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks ServiceAccount tokens with the cluster's TokenReview API.
pub struct TokenReviewer {
    client: Client,
    /// The audiences a token must be for (the projected token's `audience`); empty: the API
    /// server's own.
    audiences: Vec<String>,
}

impl TokenReviewer {
    pub fn new(client: Client, audiences: Vec<String>) -> TokenReviewer {
        TokenReviewer { client, audiences }
    }

    /// The namespace and service account the token proves.
    pub async fn verify(&self, token: &str) -> Result<(String, String), String> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("the TokenReview failed: {e}"))?;
        let status = reviewed
            .status
            .ok_or("the TokenReview came back without a status")?;
        if status.authenticated != Some(true) {
            return Err(format!(
                "the cluster does not authenticate the token{}",
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        if !self.audiences.is_empty()
            && !status
                .audiences
                .iter()
                .flatten()
                .any(|a| self.audiences.contains(a))
        {
            return Err(format!(
                "the token is not for audience {}",
                self.audiences.join(" or ")
            ));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&username).ok_or_else(|| format!("{username:?} is not a ServiceAccount"))
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| (ns.to_owned(), sa.to_owned()))
}

/// The CA kept in a Secret (`tls.crt`, `tls.key`, and `ca.crt` for an intermediate's
/// roots), created with a new root at first start. Every replica of the control plane
/// reads the same one; when two create it at once, the loser reads the winner's.
pub async fn ca_from_secret(
    client: Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> anyhow::Result<crate::ca::CaMaterial> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let read = |secret: Secret| -> anyhow::Result<crate::ca::CaMaterial> {
        let data = secret.data.unwrap_or_default();
        let field = |key: &str| -> anyhow::Result<Option<String>> {
            data.get(key)
                .map(|b| String::from_utf8(b.0.clone()))
                .transpose()
                .map_err(|_| anyhow::anyhow!("Secret {namespace}/{name}: {key} is not PEM text"))
        };
        Ok(crate::ca::CaMaterial {
            cert_pem: field("tls.crt")?
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no tls.crt"))?,
            key_pem: field("tls.key")?
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no tls.key"))?,
            anchors_pem: field("ca.crt")?.filter(|a| !a.trim().is_empty()),
        })
    };
    if let Some(secret) = api.get_opt(name).await? {
        tracing::info!(secret = %format!("{namespace}/{name}"), "CA read from its Secret");
        return read(secret);
    }
    let root = crate::ca::CaMaterial::generate_root(trust_domain)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "weft".to_owned())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                (
                    "tls.crt".to_owned(),
                    ByteString(root.cert_pem.clone().into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(root.key_pem.clone().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&kube::api::PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated a root CA into its Secret");
            Ok(root)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await?;
            tracing::info!(secret = %format!("{namespace}/{name}"), "another replica created the CA first; using it");
            read(secret)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(dead_code)] // `serve` is for the end-to-end tests, which include this file too.
mod fake;
#[cfg(test)]
mod tests;
