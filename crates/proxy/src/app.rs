//! Wiring: the runtime, the listeners, the tasks, and the drain on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::config::ProxyConfig;

use crate::access_log::AccessLog;
use crate::admin::{self, Admin};
use crate::authz::RateBuckets;
use crate::backends::Registry;
use crate::cli::RunArgs;
use crate::config_client::{self, Subscriber};
use crate::count::Counted;
use crate::http::client::{PoolSettings, Pools};
use crate::identity::{Identity, Issuer};
use crate::metrics::{Direction, Metrics};
use crate::shared::Shared;
use crate::state::Snapshot;
use crate::traces::Observer;
use crate::upstream::Connector;
use crate::{inbound, outbound, telemetry};
use weft_api::identity::SpiffeId;

/// `weft-proxy run`.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let log = telemetry::init(&args.log_level, args.log_format)?;
    let settings = args.settings().map_err(anyhow::Error::msg)?;
    let mut runtime = if settings.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(settings.threads);
        b
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args, settings, log))
}

async fn serve(
    args: &RunArgs,
    settings: crate::settings::Settings,
    log: telemetry::LogHandle,
) -> anyhow::Result<()> {
    tracing::info!(settings = %serde_json::to_string(&settings).unwrap_or_default(), "starting weft-proxy");
    // A static config is in force from the start; from a control plane, readiness waits for
    // the first snapshot.
    let config = match &args.config {
        Some(path) => Some(ProxyConfig::load(path)?),
        None => None,
    };

    // Bind everything before serving anything: a taken port fails the start, loudly.
    let outbound_listener = bind(settings.outbound_addr, "outbound")?;
    let inbound_listener = bind(settings.inbound_addr, "inbound")?;
    let admin_listener = bind(settings.admin_addr, "admin")?;

    let metrics = Metrics::new();
    // With a CA, the proxy has an identity and gets its certificate from the control plane.
    let (identity, issuer) = match (&args.trust_anchor, &args.token_file, &args.control_plane) {
        (Some(anchor), Some(token_file), Some(control_plane)) => {
            let pem = std::fs::read_to_string(anchor)
                .with_context(|| format!("reading {}", anchor.display()))?;
            let id = SpiffeId::new(
                &args.trust_domain,
                &settings.namespace,
                &args.service_account,
            );
            let identity =
                Identity::new(id, &pem).with_context(|| format!("loading {}", anchor.display()))?;
            let control_plane_identity = args.control_plane_identity.clone().unwrap_or_else(|| {
                SpiffeId::new(&args.trust_domain, "weft-system", "weft-control").to_string()
            });
            let issuer = Issuer {
                control_plane: control_plane.clone(),
                control_plane_identity,
                token_file: token_file.clone(),
                pod_name: settings.pod_name.clone().unwrap_or_default(),
                pod_ip: settings.pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            };
            (Some(identity), Some(issuer))
        }
        (Some(_), _, None) => {
            anyhow::bail!("--trust-anchor needs --control-plane, whose CA issues the certificate")
        }
        _ => (None, None),
    };
    let pools = Pools::new(
        Connector {
            connect_timeout: settings.connect_timeout.0,
            identity: identity.clone(),
            metrics: metrics.clone(),
        },
        PoolSettings {
            idle_timeout: settings.upstream_idle_timeout.0,
            // Enough that a burst's connections are kept for the next burst rather than closed
            // and opened again (with 256, 1,000 concurrent clients through one endpoint opened
            // 25,839 upstream connections in 5 s, and 1,000 with this); an idle HTTP/1
            // connection holds a socket and no buffer (http::client::h1).
            max_idle_per_key: 4096,
        },
        metrics.clone(),
    );
    let registry = Registry::default();
    let inbound_buckets = RateBuckets::default();
    let loaded = config.is_some();
    let version = config.as_ref().map(|c| c.version.clone());
    let initial = Snapshot::build(
        config.unwrap_or_default(),
        &settings.namespace,
        &registry,
        &inbound_buckets,
    );
    let state = Arc::new(ArcSwap::from_pointee(initial));
    if let Some(version) = &version {
        metrics.config_applied(version);
        tracing::info!(%version, "static config applied");
    }
    let http_limits = crate::http::server::Limits {
        header_read_timeout: settings.header_read_timeout.0,
        max_header_bytes: settings.max_header_bytes,
        timer: Default::default(),
    };
    let mut observer = Observer::new(metrics.clone());
    if let Some(endpoint) = &args.otlp_endpoint {
        let resource = vec![
            opentelemetry::KeyValue::new("service.name", "weft-proxy"),
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("k8s.namespace.name", settings.namespace.clone()),
            opentelemetry::KeyValue::new(
                "k8s.pod.name",
                settings.pod_name.clone().unwrap_or_default(),
            ),
        ];
        let export = observer
            .export_to(endpoint, args.trace_sampling, resource)
            .map_err(anyhow::Error::msg)?;
        tokio::spawn(export);
        tracing::info!(
            endpoint,
            sampling = args.trace_sampling,
            "exporting traces over OTLP"
        );
    }
    if settings.access_log {
        observer
            .log_to(AccessLog::stdout(args.log_format).context("starting the access log writer")?);
    }
    let observer =
        (args.otlp_endpoint.is_some() || settings.access_log).then(|| Arc::new(observer));
    let shared = Arc::new(Shared {
        settings,
        http_limits,
        state,
        pools,
        metrics,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        config_loaded: loaded.into(),
        registry,
        inbound_buckets,
        mirrors_in_flight: Default::default(),
        identity,
        issuer,
        observer,
    });
    if let (Some(identity), Some(issuer)) = (&shared.identity, &shared.issuer) {
        tokio::spawn(crate::identity::run(
            identity.clone(),
            issuer.clone(),
            shared.metrics.clone(),
        ));
    }
    if let Some(control_plane) = &args.control_plane {
        let subscriber = Subscriber {
            namespace: shared.settings.namespace.clone(),
            service_account: args.service_account.clone(),
            pod_name: shared.settings.pod_name.clone().unwrap_or_default(),
            pod_ip: shared.settings.pod_ip,
        };
        tokio::spawn(config_client::run(
            shared.clone(),
            control_plane.clone(),
            subscriber,
        ));
    }

    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(Admin {
            shared: shared.clone(),
            log,
        }),
    ));
    let accepting = TaskTracker::new();
    // One count of open downstream connections for both listeners.
    let open = Arc::new(AtomicUsize::new(0));
    accepting.spawn(accept(
        outbound_listener,
        Direction::Outbound,
        open.clone(),
        shared.clone(),
        |s, c, sh| outbound::handle(sh, s, c),
    ));
    accepting.spawn(accept(
        inbound_listener,
        Direction::Inbound,
        open,
        shared.clone(),
        |s, c, sh| inbound::handle(sh, s, c),
    ));
    accepting.close();
    let sweeper = {
        let pools = shared.pools.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                pools.sweep();
            }
        })
    };

    tracing::info!(
        outbound = %shared.settings.outbound_addr,
        inbound = %shared.settings.inbound_addr,
        admin = %shared.settings.admin_addr,
        "proxy ready"
    );
    wait_for_drain(&shared.shutdown).await?;

    // Drain: stop accepting (listeners close, so new connections are refused), ask open
    // connections to finish (GOAWAY, Connection: close), then wait up to the grace period.
    shared.metrics.set_draining();
    let grace = shared.settings.drain_grace.0;
    tracing::info!(grace = ?grace, "draining");
    accepting.wait().await;
    shared.tasks.close();
    match tokio::time::timeout(grace, shared.tasks.wait()).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(
            remaining = shared.tasks.len(),
            "grace period over; exiting with work in flight"
        ),
    }
    sweeper.abort();
    Ok(())
}

/// Connections the kernel completes for a listener before the proxy accepts them (capped
/// by `net.core.somaxconn`). A burst beyond it has its handshakes dropped and retried with
/// backoff, seconds late: a sidecar takes every connection of its pod's bursts. (tokio's
/// default is 1,024; Envoy's 128.)
const LISTEN_BACKLOG: u32 = 4_096;

fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    let bound = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bound().with_context(|| format!("binding the {name} listener on {addr}"))
}

/// Waits for SIGTERM, SIGINT or a drain request, then marks the drain as begun.
async fn wait_for_drain(shutdown: &CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    Ok(())
}

/// Accepts connections until the drain begins, each handled in its own tracked task. While
/// `open` (shared with the other listener) is at `--max-connections`, a new connection is
/// reset at once and counted: a refusal the client sees, never a hang.
async fn accept<F, Fut>(
    listener: TcpListener,
    direction: Direction,
    open: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let max = shared.settings.max_connections;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                // A place under `--max-connections`, held by the connection's task.
                let Some(slot) = Counted::try_take(&open, max) else {
                    shared.metrics.connection_refused(direction);
                    tracing::debug!(%client, max, "connection limit reached; resetting a new connection");
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                    continue;
                };
                crate::io::tune(&stream);
                let connection = handle(stream, crate::orig_dst::canonical(client), shared.clone());
                shared.tasks.spawn(async move {
                    let _slot = slot;
                    connection.await
                });
            }
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
