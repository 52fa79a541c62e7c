//! The control plane's gRPC port (15190, TLS 1.3): certificate signing and the config stream.
//!
//! - `weft.identity.v1.IdentityService/Sign`: a CSR and a token proving an identity; the CA
//!   signs a certificate for exactly that identity. No client certificate is needed: this is
//!   how a proxy gets its first one.
//! - `weft.config.v1.ConfigService/Subscribe`: a proxy says hello with its identity and the
//!   version it runs, and must present a certificate for that identity; the stream then sends
//!   its namespace's config whenever that differs from what the proxy has, and records the
//!   proxy's ACK or NACK of each.
//!
//! Both are served by hyper's HTTP/2 directly, one connection per proxy; the peer's verified
//! SPIFFE ID travels with each request as a [`PeerIdentity`] extension.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use weft_api::identity::{SpiffeId, spiffe_id_of};
use weft_api::proto::config_service_server::{ConfigService, ConfigServiceServer};
use weft_api::proto::identity::identity_service_server::{IdentityService, IdentityServiceServer};
use weft_api::proto::identity::{SignRequest, SignResponse};
use weft_api::proto::proxy_message::Message;
use weft_api::proto::{Hello, ProxyMessage, Snapshot};
use weft_api::validate::is_dns_label;

use crate::ca::Ca;
use crate::cluster::TokenReviewer;
use crate::compile::Target;
use crate::hub::{CertificateRecord, Hub, ProxyRecord};
use crate::token::Tokens;

/// How a Sign request's token is checked.
pub enum TokenCheck {
    /// Local mode: a `weft token create` token.
    Local(Tokens),
    /// Cluster mode: a ServiceAccount token, by TokenReview.
    Kubernetes(TokenReviewer),
}

impl TokenCheck {
    /// The namespace and service account the token proves.
    pub async fn verify(&self, token: &str) -> Result<(String, String), String> {
        match self {
            TokenCheck::Local(tokens) => tokens.verify(token).map_err(|e| e.to_string()),
            TokenCheck::Kubernetes(reviewer) => reviewer.verify(token).await,
        }
    }
}

/// The SPIFFE ID of the client certificate the connection presented, if any.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<String>);

pub struct ConfigServer {
    hub: Arc<Hub>,
}

/// Signs workload certificates.
pub struct Signer {
    pub ca: Arc<Ca>,
    pub tokens: TokenCheck,
    pub trust_domain: String,
    pub hub: Arc<Hub>,
}

#[tonic::async_trait]
impl IdentityService for Signer {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let span = tracing::info_span!(
            parent: None,
            "certificate",
            identity = tracing::field::Empty,
            result = tracing::field::Empty,
        );
        let answer = self
            .sign_traced(request, &span)
            .instrument(span.clone())
            .await;
        span.record("result", if answer.is_ok() { "issued" } else { "refused" });
        answer
    }
}

impl Signer {
    async fn sign_traced(
        &self,
        request: Request<SignRequest>,
        span: &tracing::Span,
    ) -> Result<Response<SignResponse>, Status> {
        let req = request.into_inner();
        let (namespace, service_account) = self.tokens.verify(&req.token).await.map_err(|e| {
            tracing::warn!(error = %e, "certificate refused: bad token");
            self.hub.metrics.certificate(false);
            Status::unauthenticated(format!("token refused: {e}"))
        })?;
        let identity = SpiffeId::new(&self.trust_domain, &namespace, &service_account);
        span.record("identity", identity.to_string());
        let issued = self.ca.sign_csr(&req.csr, &identity).map_err(|e| {
            tracing::warn!(%identity, error = %e, "certificate refused");
            self.hub.metrics.certificate(false);
            Status::permission_denied(e.to_string())
        })?;
        self.hub.metrics.certificate(true);
        self.hub.certified(
            &namespace,
            &req.pod_ip,
            CertificateRecord {
                identity: identity.to_string(),
                serial: issued.serial.clone(),
                not_after: issued.not_after.into(),
                issued_at: SystemTime::now(),
            },
        );
        Ok(Response::new(SignResponse {
            certificate_chain: issued.chain_pem,
            trust_anchors: self.ca.anchors_pem().to_owned(),
        }))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ConfigService for ConfigServer {
    type SubscribeStream = SnapshotStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(ProxyMessage {
                message: Some(Message::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        if !is_dns_label(&hello.namespace) {
            return Err(Status::invalid_argument(format!(
                "namespace {:?} is not a DNS label",
                hello.namespace
            )));
        }
        let id = self.hub.register(ProxyRecord {
            id: 0,
            namespace: hello.namespace.clone(),
            service_account: hello.service_account.clone(),
            pod_name: hello.pod_name.clone(),
            pod_ip: hello.pod_ip.clone(),
            proxy_version: hello.proxy_version.clone(),
            connected_at: SystemTime::now(),
            sent: None,
            acked: None,
            nacked: None,
        });
        tracing::info!(id, namespace = %hello.namespace, pod = %hello.pod_name, ip = %hello.pod_ip, version = %hello.version, "proxy subscribed");
        let (tx, rx) = mpsc::channel(4);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            serve_proxy(&hub, id, hello, inbound, tx).await;
            hub.unregister(id);
            tracing::info!(id, "proxy stream ended");
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Sends the proxy its config whenever it changes, and records its replies.
async fn serve_proxy(
    hub: &Hub,
    id: u64,
    hello: Hello,
    mut inbound: Streaming<ProxyMessage>,
    tx: mpsc::Sender<Result<Snapshot, Status>>,
) {
    let mut generations = hub.subscribe();
    let target = Target::of_proxy(&hello.namespace, &hello.pod_name, &hello.pod_ip);
    // What the proxy runs; after a reconnect that may already be the current version.
    let mut has = Some(hello.version).filter(|v| !v.is_empty());
    let mut sent_at = None;
    // The span of the push in flight: from the send to the proxy's reply.
    let mut pushing: Option<tracing::Span> = None;
    loop {
        let generation = generations.borrow_and_update().clone();
        let compiled = generation.for_target(&target);
        if has.as_deref() == Some(compiled.version.as_str()) {
            hub.update(id, |r| {
                if r.sent.is_none() {
                    r.sent = Some(compiled.version.clone());
                    r.acked = Some(compiled.version.clone());
                }
            });
        } else {
            let snapshot = Snapshot {
                version: compiled.version.clone(),
                config: compiled.json.clone(),
            };
            let span = tracing::info_span!(
                parent: None,
                "push",
                proxy.namespace = %hello.namespace,
                proxy.pod = %hello.pod_name,
                proxy.pod_ip = %hello.pod_ip,
                version = %compiled.version,
                bytes = compiled.json.len(),
                result = tracing::field::Empty,
                reason = tracing::field::Empty,
            );
            if let Some(superseded) = pushing.take() {
                superseded.record("result", "superseded");
            }
            if tx
                .send(Ok(snapshot))
                .instrument(span.clone())
                .await
                .is_err()
            {
                return;
            }
            pushing = Some(span);
            hub.metrics.snapshot_sent();
            has = Some(compiled.version.clone());
            sent_at = Some(generation.since);
            hub.update(id, |r| r.sent = Some(compiled.version.clone()));
        }
        tokio::select! {
            changed = generations.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            message = inbound.message() => match message {
                Ok(Some(ProxyMessage { message: Some(Message::Ack(ack)) })) => {
                    hub.metrics.reply(true, sent_at.take().map(|t| t.elapsed()));
                    if let Some(span) = pushing.take() {
                        span.record("result", "ack");
                    }
                    hub.update(id, |r| r.acked = Some(ack.version));
                }
                Ok(Some(ProxyMessage { message: Some(Message::Nack(nack)) })) => {
                    hub.metrics.reply(false, None);
                    hub.metrics.nack(&nack.kind);
                    if let Some(span) = pushing.take() {
                        span.record("result", "nack");
                        span.record("reason", nack.reason.as_str());
                    }
                    tracing::warn!(id, version = %nack.version, reason = %nack.reason, "proxy refused a config");
                    hub.update(id, |r| r.nacked = Some((nack.version, nack.reason)));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            },
        }
    }
}

/// Serves the gRPC port until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    signer: Arc<Signer>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let config = ConfigServiceServer::from_arc(Arc::new(ConfigServer { hub }))
        .max_encoding_message_size(usize::MAX);
    let identity = IdentityServiceServer::from_arc(signer);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (config, identity, acceptor, shutdown) = (
            config.clone(),
            identity.clone(),
            acceptor.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake on the gRPC port failed");
                    return;
                }
                Err(_) => return,
            };
            let presented = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| spiffe_id_of(c.as_ref()));
            let identity_of_peer = PeerIdentity(presented.and_then(Result::ok));
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(identity_of_peer.clone());
                    let (mut config, mut identity) = (config.clone(), identity.clone());
                    async move {
                        use tower_service::Service as _;
                        if req
                            .uri()
                            .path()
                            .starts_with("/weft.identity.v1.IdentityService/")
                        {
                            identity.call(req).await
                        } else {
                            config.call(req).await
                        }
                    }
                });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "gRPC connection ended");
            }
        });
    }
}
