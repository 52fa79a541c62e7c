//! A fake Kubernetes API server behind kube's mock client (`tower_test::mock::pair`): the
//! protocol as kube speaks it (paginated lists, newline-delimited watch events, 410 Gone,
//! merge patches of the status subresource with resourceVersion preconditions, TokenReview,
//! Secrets), over an in-memory object set that tests change. The same fake serves real
//! HTTP for the end-to-end tests, which run `weft control --kubernetes` as a process: they
//! build this crate with its `testing` feature, which is all that feature adds.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a failed expectation is reported"
)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
struct State {
    /// By collection path (`/api/v1/services`), then `namespace/name`.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Collections the fake answers 404 for, as for a CRD that is not installed.
    missing: Vec<String>,
    version: u64,
    watches: HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>,
    /// Status patches received: the route's path and the patch.
    patches: Vec<(String, Value)>,
    reviews: Vec<Value>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// `/api/v1/services` for `v1`, `/apis/<group>/<version>/<plural>` otherwise.
pub fn collection(api_version: &str, plural: &str) -> String {
    if api_version == "v1" {
        format!("/api/v1/{plural}")
    } else {
        format!("/apis/{api_version}/{plural}")
    }
}

impl FakeApi {
    fn lock(&self) -> MutexGuard<'_, State> {
        weft_api::sync::lock(&self.state)
    }

    /// A kube client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let fake = fake.clone();
                tokio::spawn(async move {
                    reply.send_response(fake.answer(request).await);
                });
            }
        });
        kube::Client::new(service, "default")
    }

    pub fn set_missing(&self, collection: &str) {
        self.lock().missing.push(collection.to_owned());
    }

    /// Creates or updates an object through its main resource, telling the watchers when
    /// `announce`. As with a real API server, an update keeps the status the object has.
    pub fn put(&self, collection: &str, mut object: Value, announce: bool) {
        let key = object_key(&object);
        if let Some(status) = self
            .lock()
            .objects
            .get(collection)
            .and_then(|c| c.get(&key))
            .and_then(|o| o.get("status"))
        {
            object["status"] = status.clone();
        }
        self.store(collection, object, announce);
    }

    /// Replaces an object's status, as a write to its status subresource does.
    pub fn set_status(&self, collection: &str, namespace: &str, name: &str, status: Value) {
        if let Some(mut object) = self.object(collection, namespace, name) {
            object["status"] = status;
            self.store(collection, object, true);
        }
    }

    fn store(&self, collection: &str, mut object: Value, announce: bool) {
        let mut state = self.lock();
        state.version += 1;
        object["metadata"]["resourceVersion"] = state.version.to_string().into();
        let key = object_key(&object);
        let existed = state
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(key, object.clone())
            .is_some();
        if announce {
            let kind = if existed { "MODIFIED" } else { "ADDED" };
            send(
                &mut state,
                collection,
                &json!({"type": kind, "object": object}),
            );
        }
    }

    /// Deletes an object, telling the watchers when `announce`.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str, announce: bool) {
        let mut state = self.lock();
        let removed = state
            .objects
            .get_mut(collection)
            .and_then(|c| c.remove(&format!("{namespace}/{name}")));
        if let (Some(object), true) = (removed, announce) {
            state.version += 1;
            send(
                &mut state,
                collection,
                &json!({"type": "DELETED", "object": object}),
            );
        }
    }

    /// Ends the collection's watches with 410 Gone, as an API server does when the
    /// watcher's resourceVersion is too old: the client must list again.
    pub fn expire_watches(&self, collection: &str) {
        let mut state = self.lock();
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410,
        }});
        send(&mut state, collection, &gone);
        state.watches.remove(collection);
    }

    pub fn watching(&self, collection: &str) -> usize {
        self.lock()
            .watches
            .get(collection)
            .map_or(0, |w| w.iter().filter(|tx| !tx.is_closed()).count())
    }

    pub fn object(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(collection)?
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    pub fn patches(&self) -> Vec<(String, Value)> {
        self.lock().patches.clone()
    }

    pub fn reviews(&self) -> Vec<Value> {
        self.lock().reviews.clone()
    }

    /// Serves the API over plain HTTP on `listener` (for a kubeconfig's `server`).
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.answer(request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    }

    async fn answer<B: hyper::body::Body>(&self, request: Request<B>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("");
        let watch = query.split('&').any(|q| q == "watch=true");
        if let Some(route) = path.strip_suffix("/status")
            && parts.method == Method::PATCH
        {
            return self.patch_status(route, &body);
        }
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            return self.review(&body);
        }
        if path.contains("/secrets") {
            return self.secret(&parts.method, &path, &body);
        }
        if matches!(parts.method, Method::GET | Method::PATCH)
            && !watch
            && let Some((collection, ns, name)) = object_path(&path)
        {
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return self.object_call(
                &parts.method,
                content_type,
                (&collection, &ns, &name),
                &path,
                &body,
            );
        }
        if self.lock().missing.contains(&path) {
            return status(
                StatusCode::NOT_FOUND,
                "the server could not find the requested resource",
                "NotFound",
            );
        }
        if watch {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            self.lock().watches.entry(path).or_default().push(tx);
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let line = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(line)), rx))
            });
            return Response::new(StreamBody::new(stream).boxed_unsync());
        }
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .get(&path)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        json_response(
            StatusCode::OK,
            &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": state.version.to_string()}, "items": items}),
        )
    }

    /// GET or PATCH of one object: a JSON patch, a merge patch, or a server-side apply (which
    /// creates the object when it is missing).
    fn object_call(
        &self,
        method: &Method,
        content_type: &str,
        (collection, ns, name): (&str, &str, &str),
        path: &str,
        body: &[u8],
    ) -> Response<Body> {
        let existing = self.object(collection, ns, name);
        if *method == Method::GET {
            return match existing {
                Some(object) => json_response(StatusCode::OK, &object),
                None => status(StatusCode::NOT_FOUND, "not found", "NotFound"),
            };
        }
        let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.lock().patches.push((path.to_owned(), patch.clone()));
        let object = match (content_type, existing) {
            ("application/apply-patch+yaml", existing) => {
                let mut object = existing.unwrap_or(json!({}));
                json_patch::merge(&mut object, &patch);
                object
            }
            (_, None) => return status(StatusCode::NOT_FOUND, "not found", "NotFound"),
            ("application/json-patch+json", Some(mut object)) => {
                let Ok(ops) = serde_json::from_value::<json_patch::Patch>(patch) else {
                    return status(StatusCode::BAD_REQUEST, "not a JSON patch", "BadRequest");
                };
                if let Err(e) = json_patch::patch(&mut object, &ops) {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string(), "Invalid");
                }
                object
            }
            (_, Some(mut object)) => {
                json_patch::merge(&mut object, &patch);
                object
            }
        };
        self.store(collection, object.clone(), true);
        json_response(
            StatusCode::OK,
            &self.object(collection, ns, name).unwrap_or(object),
        )
    }

    fn patch_status(&self, route: &str, body: &[u8]) -> Response<Body> {
        let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let Some((collection, namespace, name)) = split_object_path(route) else {
            return status(StatusCode::NOT_FOUND, "no such path", "NotFound");
        };
        let Some(mut object) = self.object(&collection, &namespace, &name) else {
            return status(StatusCode::NOT_FOUND, "no such object", "NotFound");
        };
        if let Some(wanted) = patch.pointer("/metadata/resourceVersion")
            && object.pointer("/metadata/resourceVersion") != Some(wanted)
        {
            return status(
                StatusCode::CONFLICT,
                "the object has been modified",
                "Conflict",
            );
        }
        self.lock().patches.push((route.to_owned(), patch.clone()));
        object["status"] = patch["status"].clone();
        self.store(&collection, object.clone(), true);
        let object = self
            .object(&collection, &namespace, &name)
            .unwrap_or(object);
        json_response(StatusCode::OK, &object)
    }

    fn review(&self, body: &[u8]) -> Response<Body> {
        let review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.lock().reviews.push(review.clone());
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or("");
        // Tokens read `<namespace>:<service account>:<audience>`; anything else is invalid.
        let status = match token.split(':').collect::<Vec<_>>()[..] {
            [ns, sa, audience] => json!({
                "authenticated": true,
                "user": {"username": format!("system:serviceaccount:{ns}:{sa}")},
                "audiences": [audience],
            }),
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut out = review;
        out["status"] = status;
        json_response(StatusCode::CREATED, &out)
    }

    fn secret(&self, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
        let collection = "/api/v1/secrets";
        if *method == Method::POST {
            let object: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let (ns, name) = (
                object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            );
            if self.object(collection, ns, name).is_some() {
                return status(StatusCode::CONFLICT, "already exists", "AlreadyExists");
            }
            self.put(collection, object.clone(), false);
            return json_response(StatusCode::CREATED, &object);
        }
        let Some((_, ns, name)) = split_object_path(path) else {
            return status(StatusCode::NOT_FOUND, "no such path", "NotFound");
        };
        match self.object(collection, &ns, &name) {
            Some(object) => json_response(StatusCode::OK, &object),
            None => status(StatusCode::NOT_FOUND, "secrets not found", "NotFound"),
        }
    }
}

fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
}

/// `/apis/g/v/namespaces/ns/plural/name` → (`/apis/g/v/plural`, ns, name).
fn split_object_path(path: &str) -> Option<(String, String, String)> {
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let mut parts = rest.split('/');
    let (ns, plural, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some((format!("{prefix}/{plural}"), ns.to_owned(), name.to_owned()))
}

/// An object's path, namespaced or not, as (collection, namespace, name); the namespace of
/// a cluster-scoped object is `default`, as [`object_key`] files it.
fn object_path(path: &str) -> Option<(String, String, String)> {
    if path.contains("/namespaces/") {
        let (prefix, rest) = path.split_once("/namespaces/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts[..] {
            [ns, plural, name] => Some((format!("{prefix}/{plural}"), ns.into(), name.into())),
            _ => None,
        };
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts[..] {
        ["api", v, plural, name] => {
            Some((format!("/api/{v}/{plural}"), "default".into(), name.into()))
        }
        ["apis", g, v, plural, name] => Some((
            format!("/apis/{g}/{v}/{plural}"),
            "default".into(),
            name.into(),
        )),
        _ => None,
    }
}

fn send(state: &mut State, collection: &str, event: &Value) {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    let line = Bytes::from(line);
    if let Some(watches) = state.watches.get_mut(collection) {
        watches.retain(|tx| tx.send(line.clone()).is_ok());
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

fn status(code: StatusCode, message: &str, reason: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
