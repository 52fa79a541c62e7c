//! A `weft-proxy run` process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use weft_api::config::ProxyConfig;

use crate::client;
use crate::paths::{bin_path, scratch_dir};

/// A running proxy in local mode on a loopback pod address. Killed when dropped.
pub struct Proxy {
    child: Child,
    pub pod_ip: IpAddr,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl Proxy {
    /// Starts a proxy for `pod_ip` with `config`, plus extra flags, and waits until `/ready`.
    pub async fn start(pod_ip: IpAddr, config: &ProxyConfig, extra: &[&str]) -> Proxy {
        let proxy = Proxy::spawn(pod_ip, config, extra);
        proxy.wait_ready().await;
        proxy
    }

    /// Starts a proxy without waiting for it.
    pub fn spawn(pod_ip: IpAddr, config: &ProxyConfig, extra: &[&str]) -> Proxy {
        let dir = scratch_dir("proxy");
        let config_path = dir.join("config.json");
        let json = serde_json::to_vec_pretty(config).expect("config json");
        std::fs::write(&config_path, json).expect("write config");
        let source = ["--config".to_owned(), config_path.display().to_string()];
        Proxy::spawn_with(dir, pod_ip, &source, extra)
    }

    /// Starts a proxy that joins `cp` as `namespace/service_account`, and waits until it is
    /// ready (certified, with a first config).
    pub async fn joined(
        pod_ip: IpAddr,
        cp: &crate::control::ControlPlane,
        namespace: &str,
        service_account: &str,
        extra: &[&str],
    ) -> Proxy {
        let proxy = Proxy::join(pod_ip, cp, namespace, service_account, extra);
        proxy.wait_ready().await;
        proxy
    }

    /// Starts a proxy that joins `cp`, without waiting.
    pub fn join(
        pod_ip: IpAddr,
        cp: &crate::control::ControlPlane,
        namespace: &str,
        service_account: &str,
        extra: &[&str],
    ) -> Proxy {
        let source = cp.proxy_flags(namespace, service_account);
        Proxy::spawn_with(scratch_dir("proxy"), pod_ip, &source, extra)
    }

    /// Starts a proxy with flags of the caller's choosing and no config source added.
    pub fn spawn_raw(pod_ip: IpAddr, flags: &[String]) -> Proxy {
        Proxy::spawn_with(scratch_dir("proxy"), pod_ip, flags, &[])
    }

    fn spawn_with(
        dir: std::path::PathBuf,
        pod_ip: IpAddr,
        source: &[String],
        extra: &[&str],
    ) -> Proxy {
        let log = std::fs::File::create(dir.join("proxy.log")).expect("log file");
        let child = Command::new(bin_path("weft-proxy"))
            .arg("run")
            .args(source)
            .arg("--pod-ip")
            .arg(pod_ip.to_string())
            .args(["--log-level", "info,weft_proxy=debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning weft-proxy");
        Proxy {
            child,
            pod_ip,
            outbound: SocketAddr::new(pod_ip, 15140),
            inbound: SocketAddr::new(pod_ip, 15143),
            admin: SocketAddr::new(pod_ip, 15191),
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.admin_get("/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy on {} never became ready; log:\n{}",
                self.pod_ip,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET` on the admin API: status and body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        client::request_text(
            self.admin,
            "GET",
            &format!("http://{}{path}", self.admin),
            "",
        )
        .await
    }

    /// The value of one metric sample (exact label match), or 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await.expect("metrics");
        metric_value(&text, sample)
    }

    /// Resident and peak resident memory in KiB, from `/proc/<pid>/status`.
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid())
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "--- log of the proxy on {} ---\n{}",
                self.pod_ip,
                self.log()
            );
        }
    }
}

/// Finds `sample` (a metric name with its exact label set) in Prometheus text.
/// (VmRSS, VmHWM) of process `pid`, in KiB; zeros when it is gone.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
