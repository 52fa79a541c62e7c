//! `weft control`: the control plane, serving a manifest directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use weft_api::identity::SpiffeId;

use crate::ca::{Ca, ProvidedCa};
use crate::compile::MeshSettings;
use crate::hub::Hub;
use crate::metrics::ControlMetrics;
use crate::server::Signer;
use crate::store::Store;
use crate::tls::{self, ServerCredentials};
use crate::token::Tokens;
use crate::{admin, server, watch};

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The manifest directory, watched for changes.
    #[arg(long, env = "WEFT_MANIFESTS")]
    pub manifests: PathBuf,
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
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
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
}

pub fn run(args: &ControlArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).context("--log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: &ControlArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("creating the state directory {}", args.state.display()))?;
    anyhow::ensure!(
        args.manifests.is_dir(),
        "the manifest directory {} does not exist",
        args.manifests.display()
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the config stream on {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", args.admin_listen))?;

    let mesh = MeshSettings {
        cluster_domain: args.cluster_domain.clone(),
        trust_domain: args.trust_domain.clone(),
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
    let ca = Arc::new(Ca::open(
        &args.state,
        &args.trust_domain,
        provided.as_ref(),
        args.cert_lifetime.0,
    )?);
    let tokens = Tokens::open(&args.state).context("opening the token secret")?;
    let own = SpiffeId::new(&args.trust_domain, &args.namespace, "weft-control");
    let ips = if args.listen.ip().is_unspecified() {
        vec![std::net::Ipv4Addr::LOCALHOST.into()]
    } else {
        vec![args.listen.ip()]
    };
    let credentials = ServerCredentials::issue(&ca, own.clone(), args.server_names.clone(), ips)?;
    let tls = tls::server_config(ca.anchors_pem(), credentials.clone())?;
    tokio::spawn(credentials.renew(ca.clone()));
    tracing::info!(identity = %own, anchors = %args.state.join("trust-anchor.pem").display(), "CA ready");
    let signer = Arc::new(Signer {
        ca,
        tokens,
        trust_domain: args.trust_domain.clone(),
        hub: hub.clone(),
    });
    let mut store = Store::new();
    watch::load_all(&args.manifests, &mut store, &hub)
        .with_context(|| format!("reading {}", args.manifests.display()))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(admin::serve(admin_listener, hub.clone(), shutdown.clone()));
    tokio::spawn(server::serve(
        listener,
        hub.clone(),
        signer,
        tls,
        shutdown.clone(),
    ));
    let watcher = tokio::spawn(watch::run(
        args.manifests.clone(),
        store,
        hub.clone(),
        shutdown.clone(),
    ));
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, manifests = %args.manifests.display(), "control plane ready");

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        result = watcher => {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("watching {}: {e}", args.manifests.display()),
                Err(e) => anyhow::bail!("the watcher stopped: {e}"),
            }
        }
    }
    shutdown.cancel();
    Ok(())
}
