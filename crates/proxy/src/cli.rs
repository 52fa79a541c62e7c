//! The command line: `weft-proxy run`. Every flag has a `WEFT_<FLAG>` environment variable.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use weft_api::duration::Dur;

use crate::settings::{DEFAULT_OPAQUE_PORTS, Settings};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about = "weft's sidecar proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar proxy.
    Run(Box<RunArgs>),
    /// Install the iptables rules that redirect the pod's traffic to the proxy (the init
    /// container's job; needs NET_ADMIN). Idempotent.
    Init(crate::init::InitArgs),
    /// Wait until the proxy beside this process is ready (the `postStart` hook that holds an
    /// app until its proxy runs, where native sidecars are not available).
    Wait(crate::wait::WaitArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A static config file (YAML, or JSON by extension) in the compiled format, instead of a
    /// control plane.
    #[arg(
        long,
        env = "WEFT_CONFIG",
        conflicts_with = "control_plane",
        required_unless_present = "control_plane"
    )]
    pub config: Option<PathBuf>,
    /// The control plane's config stream, `host:port`.
    #[arg(long, env = "WEFT_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// The pod's service account: its identity in the mesh.
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// The trust anchors (PEM) of the mesh's CA. With a control plane, the proxy gets a
    /// certificate for its identity and speaks mutual TLS to meshed peers.
    #[arg(long, env = "WEFT_TRUST_ANCHOR", requires = "token_file")]
    pub trust_anchor: Option<PathBuf>,
    /// A file holding the token that proves the proxy's identity to the CA.
    #[arg(long, env = "WEFT_TOKEN_FILE", requires = "trust_anchor")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The control plane's SPIFFE ID [default: spiffe://<trust-domain>/ns/weft-system/sa/weft-control].
    #[arg(long, env = "WEFT_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<String>,

    /// The pod's address: app probes and the inbound proxy reach the app there. A listener
    /// with no address of its own binds it (local mode: a pod is a loopback address).
    #[arg(long, env = "WEFT_POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// The pod's namespace; short Service names resolve there.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "WEFT_POD_NAME")]
    pub pod_name: Option<String>,

    /// Outbound listener [default: <pod-ip>:15140, or 127.0.0.1:15140].
    #[arg(long, env = "WEFT_OUTBOUND_ADDR")]
    pub outbound_addr: Option<SocketAddr>,
    /// Inbound listener [default: <pod-ip>:15143, or 0.0.0.0:15143].
    #[arg(long, env = "WEFT_INBOUND_ADDR")]
    pub inbound_addr: Option<SocketAddr>,
    /// Admin listener [default: <pod-ip>:15191, or 127.0.0.1:15191].
    #[arg(long, env = "WEFT_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Worker threads (a sidecar is budgeted per core).
    #[arg(long, env = "WEFT_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Ports forwarded as opaque TCP without protocol detection (server-first protocols).
    #[arg(long, env = "WEFT_OPAQUE_PORTS", value_delimiter = ',', default_values_t = DEFAULT_OPAQUE_PORTS)]
    pub opaque_ports: Vec<u16>,
    /// How long a silent connection to a Service waits before it is forwarded as opaque TCP.
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", default_value = "1s")]
    pub detect_timeout: Dur,
    /// How long a client may take to send a request head.
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT", default_value = "30s")]
    pub header_read_timeout: Dur,
    /// The largest request head accepted; larger ones get 431.
    #[arg(long, env = "WEFT_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "3s")]
    pub connect_timeout: Dur,
    /// Idle upstream HTTP/1 connections are closed after this long.
    #[arg(long, env = "WEFT_UPSTREAM_IDLE_TIMEOUT", default_value = "30s")]
    pub upstream_idle_timeout: Dur,
    /// How long in-flight requests may run once a drain begins (SIGTERM, POST /drain).
    #[arg(long, env = "WEFT_DRAIN_GRACE", default_value = "20s")]
    pub drain_grace: Dur,

    /// The log filter, in `RUST_LOG` syntax.
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Write one line per request on standard output, JSON with `--log-format json`: time,
    /// direction, method, authority, path, status, duration, bytes, upstream endpoint, route,
    /// backend, attempts, peer identity, `x-weft-error`, trace id and request id.
    #[arg(long, env = "WEFT_ACCESS_LOG")]
    pub access_log: bool,
    /// Export traces over OTLP/gRPC to this collector (`http://collector:4317`): a SERVER
    /// span per inbound request and a CLIENT span per outbound one, with W3C `traceparent`
    /// propagation. Without it no span is made and trace headers pass untouched.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of requests without a `traceparent` that start a sampled trace (0 to 1). A
    /// request with one is sampled as its sampled flag says.
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,
    /// The most downstream connections (inbound and outbound together) held open at once;
    /// beyond, a new connection is reset at once and counted in
    /// `weft_refused_connections_total`.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// The largest config snapshot, in bytes, taken from the control plane: a larger one is
    /// refused (a NACK, which `weft status` shows) and the config in force is kept.
    #[arg(long, env = "WEFT_MAX_CONFIG_BYTES", default_value_t = 64 << 20)]
    pub max_config_bytes: usize,
    /// The app's own probes, JSON from `<container>/<kind>` to the probe (the injector
    /// writes it): `GET /app-health/<container>/<kind>` on the admin port runs it.
    #[arg(long, env = "WEFT_APP_PROBES")]
    pub app_probes: Option<String>,
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        let mut s = Settings::default();
        if let Some(ip) = self.pod_ip {
            s.bind_pod_ip(ip);
        }
        s.namespace = self.namespace.clone();
        s.pod_name = self.pod_name.clone();
        s.outbound_addr = self.outbound_addr.unwrap_or(s.outbound_addr);
        s.inbound_addr = self.inbound_addr.unwrap_or(s.inbound_addr);
        s.admin_addr = self.admin_addr.unwrap_or(s.admin_addr);
        s.threads = self.threads;
        s.opaque_ports = self.opaque_ports.iter().copied().collect::<BTreeSet<u16>>();
        s.detect_timeout = self.detect_timeout;
        s.header_read_timeout = self.header_read_timeout;
        s.max_header_bytes = self.max_header_bytes;
        s.connect_timeout = self.connect_timeout;
        s.upstream_idle_timeout = self.upstream_idle_timeout;
        s.drain_grace = self.drain_grace;
        s.access_log = self.access_log;
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            return Err(format!(
                "--trace-sampling {} is not between 0 and 1",
                self.trace_sampling
            ));
        }
        s.max_connections = self.max_connections;
        s.max_config_bytes = self.max_config_bytes;
        if let Some(probes) = &self.app_probes {
            s.app_probes =
                weft_api::probes::parse(probes).map_err(|e| format!("--app-probes: {e}"))?;
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ip_moves_every_listener_and_flags_override() {
        let cli = Cli::try_parse_from([
            "weft-proxy",
            "run",
            "--config",
            "c.yaml",
            "--pod-ip",
            "127.0.10.1",
            "--admin-addr",
            "0.0.0.0:9999",
            "--opaque-ports",
            "3306,5432",
            "--drain-grace",
            "5s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        let s = args.settings().unwrap();
        assert_eq!(s.outbound_addr.to_string(), "127.0.10.1:15140");
        assert_eq!(s.inbound_addr.to_string(), "127.0.10.1:15143");
        assert_eq!(s.admin_addr.to_string(), "0.0.0.0:9999");
        assert_eq!(s.opaque_ports.into_iter().collect::<Vec<_>>(), [3306, 5432]);
        assert_eq!(s.drain_grace, Dur::from_secs(5));
    }

    #[test]
    fn bad_durations_are_refused() {
        let err = Cli::try_parse_from([
            "weft-proxy",
            "run",
            "--config",
            "c",
            "--connect-timeout",
            "3",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
