//! The admission webhook (15443, HTTPS): a mutating `admission.k8s.io/v1` AdmissionReview
//! endpoint that injects pods with the same function as `weft inject`.
//!
//! A pod is injected when its annotation `weft.dev/inject` says `enabled`, or when it says
//! nothing and its namespace is labelled `weft.dev/inject=enabled`; `disabled` on the pod
//! wins over its namespace. A review names only the namespace: on [`LABELLED_PATH`] (the
//! configuration's entry for labelled namespaces) the API server has matched the label, and
//! on [`PATH`] the webhook looks the namespace up in the control plane's view of the cluster. The answer is a JSONPatch from the pod as
//! sent to the pod as injected. The webhook writes nothing anywhere, so a dry-run review is
//! answered the same way with no side effect (`sideEffects: None`).
//!
//! A body that is not an AdmissionReview gets 400 with the reason; a review whose request
//! cannot be injected (a bad annotation) is answered `allowed: false` with the reason, so
//! the pod's creator sees why. Either way the server goes on serving.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use weft_api::resources::Resource;

use crate::hub::Hub;
use crate::inject::{self, Settings, Template};

/// The path of a review whose namespace the webhook looks up in its own view of the cluster.
pub const PATH: &str = "/inject";
/// The path of the configuration's entry for labelled namespaces: the API server has matched
/// the namespace's label already, so a namespace the control plane's watch has not delivered
/// yet (created a moment ago) is not taken for an unlabelled one.
pub const LABELLED_PATH: &str = "/inject/labelled-namespace";
/// The largest review read: a pod is at most 1.5 MiB in etcd, and a review holds it once.
const MAX_REVIEW_BYTES: usize = 4 << 20;

pub struct Webhook {
    pub hub: Arc<Hub>,
    pub settings: Settings,
}

/// Serves the webhook over TLS until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (acceptor, webhook) = (acceptor.clone(), webhook.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, std::convert::Infallible>(webhook.handle(peer, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Webhook {
    async fn handle(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let labelled = match (req.method(), req.uri().path()) {
            (&Method::POST, PATH) => false,
            (&Method::POST, LABELLED_PATH) => true,
            (_, PATH | LABELLED_PATH) => {
                return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
            }
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the review could not be read whole: {e}\n"),
                );
            }
        };
        match self.review(&body, labelled) {
            Ok(review) => json(StatusCode::OK, &review),
            Err(reason) => {
                tracing::warn!(%peer, %reason, "malformed admission review");
                text(StatusCode::BAD_REQUEST, &format!("{reason}\n"))
            }
        }
    }

    /// Answers one review: `Err` only when the body is not an AdmissionReview at all.
    /// `labelled`: the API server says the pod's namespace is labelled for injection.
    pub fn review(&self, body: &[u8], labelled: bool) -> Result<Value, String> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}"))?;
        let request: AdmissionRequest<DynamicObject> = review
            .try_into()
            .map_err(|_| "the AdmissionReview holds no request".to_owned())?;
        let response = self.answer(&request, labelled);
        let mut review = serde_json::to_value(response.into_review()).map_err(|e| e.to_string())?;
        // kube-core holds the patch as bytes, which serde writes as an array of numbers; the
        // API server's field is Go's []byte, conventionally base64 text, as written here.
        if let Some(patch) = review.pointer_mut("/response/patch")
            && let Some(bytes) = patch.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Vec<u8>>()
            })
        {
            *patch = Value::String(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                bytes,
            ));
        }
        Ok(review)
    }

    fn answer(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        labelled: bool,
    ) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
        let namespace = request.namespace.clone().unwrap_or_default();
        if request.kind.kind != "Pod" || request.operation != Operation::Create {
            return allowed;
        }
        let Some(object) = &request.object else {
            return AdmissionResponse::invalid("a pod's CREATE review carries no object");
        };
        let original = match serde_json::to_value(object) {
            Ok(v) => v,
            Err(e) => return AdmissionResponse::invalid(format!("the pod: {e}")),
        };
        let mut pod = original.clone();
        let outcome = match self.mutate(&mut pod, &namespace, labelled) {
            Ok(outcome) => outcome,
            Err(reason) => {
                self.hub.metrics.injection("refused");
                return allowed.deny(format!("weft cannot inject this pod: {reason}"));
            }
        };
        let name = object
            .metadata
            .name
            .clone()
            .or_else(|| object.metadata.generate_name.clone())
            .unwrap_or_default();
        tracing::info!(
            namespace, pod = name, dry_run = request.dry_run, %outcome, "admission review"
        );
        if !outcome.changed() {
            self.hub.metrics.injection("skipped");
            return allowed;
        }
        self.hub.metrics.injection("injected");
        match allowed.with_patch(json_patch::diff(&original, &pod)) {
            Ok(response) => response,
            Err(e) => AdmissionResponse::invalid(format!("writing the patch: {e}")),
        }
    }

    /// Injects `pod` in place if it is selected; the pod's annotation, else its namespace's
    /// label, decides.
    fn mutate(
        &self,
        pod: &mut Value,
        namespace: &str,
        labelled: bool,
    ) -> Result<inject::Outcome, String> {
        let annotation = pod
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(inject::pod::INJECT))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let selected = match annotation.as_deref() {
            Some("enabled") => true,
            Some("disabled") => return Ok(inject::Outcome::OptedOut),
            Some(other) => {
                return Err(format!(
                    "annotation {}: {other:?} is neither enabled nor disabled",
                    inject::pod::INJECT
                ));
            }
            None => labelled || self.namespace_enabled(namespace),
        };
        if !selected {
            return Ok(inject::Outcome::NotSelected);
        }
        let Some(object) = pod.as_object_mut() else {
            return Err("the pod is not an object".into());
        };
        let mut metadata = match object.remove("metadata") {
            Some(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let result = match object.get_mut("spec") {
            Some(Value::Object(spec)) => inject::pod::inject(
                Template {
                    metadata: &mut metadata,
                    spec,
                },
                &self.settings,
            ),
            _ => Err("the pod has no spec".into()),
        };
        object.insert("metadata".into(), Value::Object(metadata));
        result
    }

    fn namespace_enabled(&self, namespace: &str) -> bool {
        self.hub
            .current()
            .accepted
            .iter()
            .any(|m| match &m.resource {
                Resource::Namespace(ns) => {
                    ns.metadata.name == namespace
                        && ns
                            .metadata
                            .labels
                            .get(inject::pod::INJECT)
                            .map(String::as_str)
                            == Some("enabled")
                }
                _ => false,
            })
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
