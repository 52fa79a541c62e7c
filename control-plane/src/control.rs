//! `weft control`: the control plane, serving a manifest directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::compile::MeshSettings;
use crate::hub::Hub;
use crate::metrics::ControlMetrics;
use crate::store::Store;
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
    let mut store = Store::new();
    watch::load_all(&args.manifests, &mut store, &hub)
        .with_context(|| format!("reading {}", args.manifests.display()))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(admin::serve(admin_listener, hub.clone(), shutdown.clone()));
    tokio::spawn(server::serve(listener, hub.clone(), shutdown.clone()));
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
