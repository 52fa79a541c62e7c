//! `weft control`: the control plane, serving a manifest directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use weft_api::config::OutboundTrafficPolicy;
use weft_api::identity::SpiffeId;

use crate::ca::{Ca, ProvidedCa};
use crate::cluster::{self, TokenReviewer};
use crate::compile::MeshSettings;
use crate::hub::Hub;
use crate::metrics::ControlMetrics;
use crate::server::{Signer, TokenCheck};
use crate::store::Store;
use crate::telemetry::{self, LogFormat};
use crate::tls::{self, ServerCredentials};
use crate::token::Tokens;
use crate::{admin, server, watch, webhook};

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The manifest directory, watched for changes.
    #[arg(
        long,
        env = "WEFT_MANIFESTS",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub manifests: Option<PathBuf>,
    /// Watch the cluster's API instead of a directory (in-cluster config, else KUBECONFIG):
    /// Services, EndpointSlices, Pods, HTTPRoutes, GRPCRoutes and weft's policy kinds.
    /// Route statuses are written back; proxies prove themselves with ServiceAccount tokens
    /// (TokenReview); the CA lives in the Secret --ca-secret unless --ca-cert is given.
    #[arg(long, env = "WEFT_KUBERNETES")]
    pub kubernetes: bool,
    /// Cluster mode: the Secret (in --namespace) holding the CA, created with a new root when
    /// missing.
    #[arg(long, env = "WEFT_CA_SECRET", default_value = "weft-ca")]
    pub ca_secret: String,
    /// Cluster mode: the audiences a proxy's ServiceAccount token must be for.
    #[arg(
        long = "token-audience",
        env = "WEFT_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "weft"
    )]
    pub token_audiences: Vec<String>,
    /// Where the control plane keeps its state (the CA key, the issued-certificate log).
    #[arg(long, env = "WEFT_STATE")]
    pub state: PathBuf,
    /// The config stream (gRPC).
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:15190")]
    pub listen: SocketAddr,
    /// The admin API (HTTP): /status, /metrics, /ready.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "127.0.0.1:15192")]
    pub admin_listen: SocketAddr,
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Where workloads may connect besides the mesh's Services: ALLOW_ANY, or REGISTRY_ONLY
    /// (only Services, their endpoints and meshed pods). A Namespace's annotation
    /// `weft.dev/outbound-traffic-policy` overrides it for its pods.
    #[arg(
        long,
        env = "WEFT_OUTBOUND_TRAFFIC_POLICY",
        default_value = "ALLOW_ANY"
    )]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Export the control plane's traces (each config push, from its send to the proxy's
    /// reply; each certificate request) over OTLP/gRPC to this collector.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How long workload certificates last.
    #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h")]
    pub cert_lifetime: weft_api::duration::Dur,
    /// An operator's CA certificate (a root, or an intermediate followed by its chain), instead
    /// of a root generated into --state.
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The roots for an intermediate --ca-cert.
    #[arg(long, env = "WEFT_CA_TRUST_ANCHORS", requires = "ca_cert")]
    pub ca_trust_anchors: Option<PathBuf>,
    /// The control plane's own identity: spiffe://<trust-domain>/ns/<this>/sa/weft-control.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "weft-system")]
    pub namespace: String,
    /// DNS names in the control plane's certificate, besides its listen address.
    #[arg(
        long = "server-name",
        env = "WEFT_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,weft-control"
    )]
    pub server_names: Vec<String>,
    /// The admission webhook, HTTPS [default: 0.0.0.0:15443 with --kubernetes, else off].
    /// Its certificate is the control plane's, for the Service's DNS names
    /// (weft-control.<namespace>.svc), issued by the mesh's CA.
    #[arg(long, env = "WEFT_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// Cluster mode: the MutatingWebhookConfiguration whose caBundle is set at start-up.
    #[arg(
        long,
        env = "WEFT_WEBHOOK_CONFIGURATION",
        default_value = "weft-control"
    )]
    pub webhook_configuration: String,
    /// The image the webhook's injected pods run weft-proxy from.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = crate::inject::pod::DEFAULT_IMAGE)]
    pub proxy_image: String,
    /// Where the webhook's injected proxies reach the control plane
    /// [default: weft-control.<namespace>.svc:15190].
    #[arg(long, env = "WEFT_PROXY_CONTROL_PLANE")]
    pub proxy_control_plane: Option<String>,
    /// The webhook injects the proxy as a native sidecar (Kubernetes 1.29 and later); with
    /// false, as the first regular container, holding the app until it is ready.
    #[arg(long, env = "WEFT_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
}

impl ControlArgs {
    /// The webhook's address: given, or 15443 on every address in cluster mode.
    fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_listen.or_else(|| {
            self.kubernetes
                .then(|| SocketAddr::from(([0, 0, 0, 0], 15443)))
        })
    }

    /// How the webhook injects pods.
    pub fn inject_settings(&self) -> crate::inject::Settings {
        crate::inject::Settings {
            image: self.proxy_image.clone(),
            control_plane: self
                .proxy_control_plane
                .clone()
                .unwrap_or_else(|| format!("weft-control.{}.svc:15190", self.namespace)),
            control_plane_namespace: self.namespace.clone(),
            trust_domain: self.trust_domain.clone(),
            native_sidecar: self.native_sidecar,
        }
    }

    /// The DNS names of the control plane's certificate: --server-name, and its Service's.
    fn dns_names(&self) -> Vec<String> {
        let mut names = self.server_names.clone();
        let service = format!("weft-control.{}.svc", self.namespace);
        names.push(format!("{service}.{}", self.cluster_domain));
        names.push(service);
        names.dedup();
        names
    }
}

pub fn run(args: &ControlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The exporter's channel is made on the runtime; its guard is dropped (flushing the
    // spans) outside `block_on`, while the runtime's workers still run.
    let telemetry = runtime.block_on(async {
        telemetry::init(
            &args.log_level,
            args.log_format,
            args.otlp_endpoint.as_deref(),
            &args.namespace,
        )
    })?;
    let result = runtime.block_on(serve(args));
    drop(telemetry);
    result
}

async fn serve(args: &ControlArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("creating the state directory {}", args.state.display()))?;
    if let Some(dir) = &args.manifests {
        anyhow::ensure!(
            dir.is_dir(),
            "the manifest directory {} does not exist",
            dir.display()
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the config stream on {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", args.admin_listen))?;
    let webhook_listener = match args.webhook_addr() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admission webhook on {addr}"))?,
        ),
        None => None,
    };
    let client = if args.kubernetes {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config, else KUBECONFIG)")?,
        )
    } else {
        None
    };

    let mesh = MeshSettings {
        cluster_domain: args.cluster_domain.clone(),
        trust_domain: args.trust_domain.clone(),
        outbound_traffic_policy: args.outbound_traffic_policy,
    };
    let hub = Hub::new(mesh, ControlMetrics::new());

    let provided = args
        .ca_cert
        .as_ref()
        .zip(args.ca_key.as_ref())
        .map(|(cert, key)| ProvidedCa {
            cert: cert.clone(),
            key: key.clone(),
            anchors: args.ca_trust_anchors.clone(),
        });
    let ca = match (&client, &provided) {
        (Some(client), None) => {
            let material = cluster::ca_from_secret(
                client.clone(),
                &args.namespace,
                &args.ca_secret,
                &args.trust_domain,
            )
            .await
            .with_context(|| format!("the CA Secret {}/{}", args.namespace, args.ca_secret))?;
            Ca::from_material(&args.state, &material, args.cert_lifetime.0)?
        }
        _ => Ca::open(
            &args.state,
            &args.trust_domain,
            provided.as_ref(),
            args.cert_lifetime.0,
        )?,
    };
    let ca = Arc::new(ca);
    let tokens = match &client {
        Some(client) => TokenCheck::Kubernetes(TokenReviewer::new(
            client.clone(),
            args.token_audiences.clone(),
        )),
        None => TokenCheck::Local(Tokens::open(&args.state).context("opening the token secret")?),
    };
    let own = SpiffeId::new(&args.trust_domain, &args.namespace, "weft-control");
    let mut ips = Vec::new();
    for addr in std::iter::once(args.listen).chain(args.webhook_addr()) {
        let ip = if addr.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            addr.ip()
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let credentials = ServerCredentials::issue(&ca, own.clone(), args.dns_names(), ips)?;
    let tls = tls::server_config(ca.anchors_pem(), credentials.clone())?;
    let webhook_tls = tls::webhook_config(credentials.clone())?;
    tokio::spawn(credentials.renew(ca.clone()));
    tracing::info!(identity = %own, anchors = %args.state.join("trust-anchor.pem").display(), "CA ready");
    let anchors_pem = ca.anchors_pem().to_owned();
    let cluster_client = client.clone();
    let signer = Arc::new(Signer {
        ca,
        tokens,
        trust_domain: args.trust_domain.clone(),
        hub: hub.clone(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(admin::serve(admin_listener, hub.clone(), shutdown.clone()));
    // The manifest source: the first config is complete before any proxy is served. It
    // runs until shutdown; its end before that is the control plane's end.
    let (source, watcher): (String, BoxFuture<'static, anyhow::Result<()>>) =
        match (client, &args.manifests) {
            (Some(client), _) => {
                let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(cluster::run(
                    client,
                    hub.clone(),
                    synced_tx,
                    shutdown.clone(),
                ));
                tracing::info!("listing the cluster's resources");
                synced_rx
                    .await
                    .context("the cluster watch stopped before its first complete list")?;
                let ended = async move {
                    task.await.context("the cluster watch")?;
                    anyhow::bail!("the cluster watch stopped")
                };
                ("kubernetes".to_owned(), Box::pin(ended))
            }
            (None, Some(dir)) => {
                let mut store = Store::new();
                watch::load_all(dir, &mut store, &hub)
                    .with_context(|| format!("reading {}", dir.display()))?;
                let task = tokio::spawn(watch::run(
                    dir.clone(),
                    store,
                    hub.clone(),
                    shutdown.clone(),
                ));
                let shown = dir.display().to_string();
                let ended = async move {
                    task.await
                        .context("the manifest watcher")?
                        .with_context(|| format!("watching {shown}"))
                };
                (dir.display().to_string(), Box::pin(ended))
            }
            (None, None) => anyhow::bail!("--manifests DIR or --kubernetes is required"),
        };
    if let Some(client) = &cluster_client {
        tokio::spawn(cluster::publish_trust_anchor(
            client.clone(),
            args.namespace.clone(),
            hub.clone(),
            anchors_pem.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(webhook_listener) = webhook_listener {
        if let Some(client) = &cluster_client {
            cluster::set_webhook_ca_bundle(
                client.clone(),
                &args.webhook_configuration,
                &anchors_pem,
            )
            .await;
        }
        let webhook = Arc::new(webhook::Webhook {
            hub: hub.clone(),
            settings: args.inject_settings(),
        });
        tokio::spawn(webhook::serve(
            webhook_listener,
            webhook_tls,
            webhook,
            shutdown.clone(),
        ));
    }
    tokio::spawn(server::serve(
        listener,
        hub.clone(),
        signer,
        tls,
        shutdown.clone(),
    ));
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, %source, "control plane ready");

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        result = watcher => result?,
    }
    shutdown.cancel();
    Ok(())
}
