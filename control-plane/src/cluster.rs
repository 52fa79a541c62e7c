//! `weft control --kubernetes`: the cluster's API as the manifest source.
//!
//! One watcher per kind (Services, EndpointSlices, Pods, Namespaces, HTTPRoutes, GRPCRoutes
//! and weft's policy kinds) feeds the same [`Store`] that local mode fills from files: each object is a
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

pub mod auth;
pub mod publish;

pub use crate::route_status::CONTROLLER_NAME;
use crate::route_status::{self, RouteView, is_service_parent};
pub use auth::{TokenReviewer, ca_from_secret};
pub use publish::{publish_trust_anchor, set_webhook_ca_bundle};

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
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
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
        // For their annotation: the outbound traffic policy of their pods.
        WatchedKind {
            resource: ApiResource::erase::<Namespace>(&()),
            keep_status: false,
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
    view: RouteView,
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
        let unresolved = self.store.unresolved();
        let accepted = self.store.accepted();
        let now = route_status::rfc3339(time::OffsetDateTime::now_utc());
        self.ours = self
            .routes
            .iter()
            .map(|(name, route)| {
                let own: Vec<&ManifestError> =
                    errors.iter().filter(|e| e.origin.file == *name).collect();
                let missing: Vec<&ManifestError> = unresolved
                    .iter()
                    .filter(|e| e.origin.file == *name)
                    .collect();
                let serving = accepted.iter().any(|m| m.source.file == *name);
                (
                    name.clone(),
                    route_status::entries(&route.view, &own, &missing, serving, &now),
                )
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
        let parents = route_status::merged(&route.view, ours);
        if parents == route.view.status_parents {
            return;
        }
        let mut update = route.clone();
        update.view.status_parents = parents;
        if self.statuses.try_send(update).is_err() {
            tracing::warn!(route = %name, "status writes are backed up; this one waits for the route's next change");
        }
    }
}

/// `Kind/namespace/name`, or `Kind/name` for a kind of no namespace: the object's name in the
/// store (and in its errors), as [`weft_api::resources::ResourceKey`] writes it.
fn object_name(resource: &ApiResource, object: &DynamicObject) -> String {
    if weft_api::resources::is_cluster_scoped(&resource.kind) {
        return format!(
            "{}/{}",
            resource.kind,
            object.metadata.name.as_deref().unwrap_or_default()
        );
    }
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
        view: RouteView {
            generation: object.metadata.generation,
            parent_refs: list(object.data.pointer("/spec/parentRefs")),
            status_parents: list(object.data.pointer("/status/parents")),
        },
    }
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
        let mut patch = json!({"status": {"parents": route.view.status_parents}});
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

#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(test)]
mod tests;
