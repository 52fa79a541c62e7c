//! The proxy's own settings (not the routing config): listeners, timeouts, limits. Built from
//! flags and `WEFT_*` environment variables, logged at startup and shown in `/config_dump`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use weft_api::duration::Dur;

pub const OUTBOUND_PORT: u16 = 15140;
pub const INBOUND_PORT: u16 = 15143;
pub const ADMIN_PORT: u16 = 15191;

/// Ports whose protocols speak first from the server (or must never be sniffed): SMTP,
/// MySQL, Galera, PostgreSQL, Redis, Elasticsearch transport, memcached. The same list
/// Linkerd skips by default.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// The proxy's namespace: short Service names resolve there.
    pub namespace: String,
    pub pod_name: Option<String>,
    /// The pod's address: app probes and inbound connections go there. With `--pod-ip` and no
    /// listener address, every listener binds it (local mode).
    pub pod_ip: Option<IpAddr>,
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Worker threads; 1 runs everything on one thread.
    pub threads: usize,
    /// Ports forwarded as opaque TCP without reading first bytes, in both directions.
    pub opaque_ports: BTreeSet<u16>,
    /// How long a connection to a known destination may stay silent before it is treated as
    /// opaque TCP.
    pub detect_timeout: Dur,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Dur,
    /// The largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    pub connect_timeout: Dur,
    /// Idle upstream HTTP/1 connections are closed after this long.
    pub upstream_idle_timeout: Dur,
    /// How long in-flight work may run after a drain begins.
    pub drain_grace: Dur,
    /// Write one line per request on standard output (the access log).
    pub access_log: bool,
    /// The most connections the inbound and outbound listeners hold open together; beyond,
    /// a new one is closed at once (reset) and counted.
    pub max_connections: usize,
    /// The largest config snapshot taken from the control plane, in bytes; a larger one is
    /// refused (NACK) and the config in force kept.
    pub max_config_bytes: usize,
    /// The app's own probes, which `GET /app-health/<container>/<kind>` runs (the injector
    /// points the kubelet's probes there, so that they pass under STRICT mTLS).
    pub app_probes: weft_api::probes::AppProbes,
}

/// The largest snapshot message read from the config stream (configs are large with many
/// routes); `--max-config-bytes`, at most this, caps the config a proxy takes, refused with a
/// NACK.
pub const MAX_SNAPSHOT: usize = 256 << 20;

impl Default for Settings {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Settings {
            namespace: "default".into(),
            pod_name: None,
            pod_ip: None,
            outbound_addr: SocketAddr::new(localhost, OUTBOUND_PORT),
            inbound_addr: SocketAddr::new(any, INBOUND_PORT),
            admin_addr: SocketAddr::new(localhost, ADMIN_PORT),
            threads: 1,
            opaque_ports: DEFAULT_OPAQUE_PORTS.into_iter().collect(),
            detect_timeout: Dur::from_secs(1),
            header_read_timeout: Dur::from_secs(30),
            max_header_bytes: 64 * 1024,
            connect_timeout: Dur::from_secs(3),
            upstream_idle_timeout: Dur::from_secs(30),
            drain_grace: Dur::from_secs(20),
            access_log: false,
            max_connections: 10_000,
            max_config_bytes: 64 << 20,
            app_probes: Default::default(),
        }
    }
}

impl Settings {
    /// Listener addresses for local mode: everything binds the pod IP.
    pub fn bind_pod_ip(&mut self, ip: IpAddr) {
        self.pod_ip = Some(ip);
        self.outbound_addr = SocketAddr::new(ip, OUTBOUND_PORT);
        self.inbound_addr = SocketAddr::new(ip, INBOUND_PORT);
        self.admin_addr = SocketAddr::new(ip, ADMIN_PORT);
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_config_bytes == 0 || self.max_config_bytes > MAX_SNAPSHOT {
            return Err(format!(
                "--max-config-bytes must be between 1 and {}",
                MAX_SNAPSHOT
            ));
        }
        if self.max_header_bytes < 8192 {
            return Err("--max-header-bytes must be at least 8192".into());
        }
        let addrs = [self.outbound_addr, self.inbound_addr, self.admin_addr];
        if addrs[0] == addrs[1] || addrs[0] == addrs[2] || addrs[1] == addrs[2] {
            return Err(format!("listener addresses must differ: {addrs:?}"));
        }
        Ok(())
    }

    /// True for ports of the proxy's own listeners, which must never be a forwarding target.
    pub fn is_own_port(&self, port: u16) -> bool {
        [self.outbound_addr, self.inbound_addr, self.admin_addr]
            .iter()
            .any(|a| a.port() == port)
    }
}
