//! The config stream, proxy side: subscribe to the control plane, apply each snapshot it sends,
//! and answer ACK or NACK.
//!
//! A snapshot is parsed and validated before anything changes; a bad one is refused with the
//! reason and the proxy keeps the config it has. A good one is compiled and swapped in whole:
//! requests in flight finish on the snapshot they started with, new ones see the new one, and
//! the state of backends and endpoints that remain carries over. When the control plane is
//! unreachable the proxy keeps serving its last config and reconnects with jittered backoff;
//! on reconnect it says which version it runs, so an unchanged config is not sent again.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Uri;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::mpsc;
use weft_api::config::ProxyConfig;
use weft_api::proto::config_service_client::ConfigServiceClient;
use weft_api::proto::proxy_message::Message;
use weft_api::proto::{Ack, Hello, Nack, ProxyMessage, Snapshot};

use crate::grpc::Channel;
use crate::settings::MAX_SNAPSHOT;
use crate::shared::Shared;
use crate::state;

/// Who this proxy is, as the control plane should know it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_ip: Option<IpAddr>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Tls(crate::identity::IdentityError),
    #[error("the config stream needs an identity: run with --trust-anchor and --token-file")]
    NoIdentity,
    #[error("HTTP/2 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("the config stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

/// Keeps the proxy subscribed until the process exits.
pub async fn run(shared: Arc<Shared>, control_plane: String, identity: Subscriber) {
    let mut failures = 0u32;
    loop {
        match session(&shared, &control_plane, &identity, &mut failures).await {
            Ok(()) | Err(SessionError::Closed) => {
                tracing::info!(%control_plane, "config stream closed; reconnecting")
            }
            Err(e) => {
                tracing::warn!(%control_plane, error = %e, "config stream down; the last config keeps serving")
            }
        }
        failures = failures.saturating_add(1);
        let ceiling = MIN_BACKOFF
            .saturating_mul(1 << failures.min(6))
            .min(MAX_BACKOFF);
        tokio::time::sleep(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
    }
}

async fn session(
    shared: &Arc<Shared>,
    control_plane: &str,
    identity: &Subscriber,
    failures: &mut u32,
) -> Result<(), SessionError> {
    // The stream is authenticated by this proxy's certificate: wait for the first one.
    let (Some(workload), Some(issuer)) = (&shared.identity, &shared.issuer) else {
        return Err(SessionError::NoIdentity);
    };
    workload.certified().await;
    let stream = crate::identity::connect_control_plane(workload, issuer)
        .await
        .map_err(SessionError::Tls)?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SessionError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "config stream connection ended");
        }
    });
    let origin = Uri::try_from(format!("http://{control_plane}"))
        .unwrap_or_else(|_| Uri::from_static("http://weft-control"));
    let mut client = ConfigServiceClient::with_origin(Channel(sender), origin)
        .max_decoding_message_size(MAX_SNAPSHOT);

    let (tx, rx) = mpsc::channel(4);
    let version = shared.state.load().version.to_string();
    let hello = Hello {
        namespace: identity.namespace.clone(),
        service_account: identity.service_account.clone(),
        pod_name: identity.pod_name.clone(),
        pod_ip: identity.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        version,
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let _ = tx
        .send(ProxyMessage {
            message: Some(Message::Hello(hello)),
        })
        .await;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut snapshots = client.subscribe(outbound).await?.into_inner();
    tracing::info!(%control_plane, "subscribed to the config stream");
    *failures = 0;
    while let Some(snapshot) = snapshots.message().await? {
        let reply = match apply(shared, &snapshot) {
            Ok(()) => Message::Ack(Ack {
                version: snapshot.version,
            }),
            Err((kind, reason)) => {
                tracing::warn!(version = %snapshot.version, kind, %reason, "config refused; keeping the one in force");
                shared.metrics.config_rejected();
                Message::Nack(Nack {
                    version: snapshot.version,
                    reason,
                    kind: kind.to_owned(),
                })
            }
        };
        if tx
            .send(ProxyMessage {
                message: Some(reply),
            })
            .await
            .is_err()
        {
            break;
        }
    }
    Err(SessionError::Closed)
}

/// Validates and swaps in a snapshot; a refusal says its kind (the NACK's label) and why.
fn apply(shared: &Shared, snapshot: &Snapshot) -> Result<(), (&'static str, String)> {
    let max = shared.settings.max_config_bytes;
    if snapshot.config.len() > max {
        return Err((
            "too-large",
            format!(
                "the config is {} bytes, over this proxy's --max-config-bytes {max}",
                snapshot.config.len()
            ),
        ));
    }
    let config: ProxyConfig = serde_json::from_slice(&snapshot.config)
        .map_err(|e| ("unreadable", format!("unreadable config: {e}")))?;
    if config.version != snapshot.version {
        return Err((
            "version-mismatch",
            format!(
                "the config says version {:?}, the snapshot {:?}",
                config.version, snapshot.version
            ),
        ));
    }
    config.validate().map_err(|errors| {
        let reason = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ("invalid", reason)
    })?;
    let version = config.version.clone();
    let compiled = state::Snapshot::build(
        config,
        &shared.settings.namespace,
        &shared.registry,
        &shared.inbound_buckets,
    );
    shared.state.store(Arc::new(compiled));
    shared.metrics.config_applied(&version);
    if !shared.config_loaded.swap(true, Ordering::AcqRel) {
        tracing::info!(%version, "first config applied; ready");
    } else {
        tracing::info!(%version, "config applied");
    }
    Ok(())
}
