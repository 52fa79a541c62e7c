//! The config stream: `weft.config.v1.ConfigService/Subscribe` over gRPC (HTTP/2) on 15190.
//!
//! A proxy says hello with its identity and the version it runs; the stream then sends its
//! namespace's config whenever that differs from what the proxy has, and records the proxy's
//! ACK or NACK of each. The service is served by hyper directly, one HTTP/2 connection per
//! proxy.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use weft_api::config::is_dns_label;
use weft_api::proto::config_service_server::{ConfigService, ConfigServiceServer};
use weft_api::proto::proxy_message::Message;
use weft_api::proto::{Hello, ProxyMessage, Snapshot};

use crate::hub::{Hub, ProxyRecord};

pub struct ConfigServer {
    hub: Arc<Hub>,
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
    // What the proxy runs; after a reconnect that may already be the current version.
    let mut has = Some(hello.version).filter(|v| !v.is_empty());
    let mut sent_at = None;
    loop {
        let generation = generations.borrow_and_update().clone();
        let compiled = generation.for_namespace(&hello.namespace);
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
            if tx.send(Ok(snapshot)).await.is_err() {
                return;
            }
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
                    hub.update(id, |r| r.acked = Some(ack.version));
                }
                Ok(Some(ProxyMessage { message: Some(Message::Nack(nack)) })) => {
                    hub.metrics.reply(false, None);
                    tracing::warn!(id, version = %nack.version, reason = %nack.reason, "proxy refused a config");
                    hub.update(id, |r| r.nacked = Some((nack.version, nack.reason)));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            },
        }
    }
}

/// Serves the config stream until `shutdown`.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, shutdown: CancellationToken) {
    let service = ConfigServiceServer::from_arc(Arc::new(ConfigServer { hub }))
        .max_encoding_message_size(usize::MAX);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "config stream accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "config stream connection ended");
            }
        });
    }
}
