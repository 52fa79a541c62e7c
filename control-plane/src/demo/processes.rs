//! The demo's processes: `weft control` and a `weft-proxy` beside each meshed workload, as a
//! cluster would run them, and the manifests written into the control plane's directory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::client::admin_get;

/// A sidecar process, stopped when dropped.
pub struct Sidecar {
    pub name: &'static str,
    pub ip: IpAddr,
    pub child: Child,
}

impl Sidecar {
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15191)
    }

    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15140)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a manifest into the control plane's directory as editors do: a temporary file
/// renamed into place.
pub fn apply(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// `weft control` as a process of its own, as in a cluster.
pub struct ControlPlane {
    child: Child,
    ip: IpAddr,
    state: PathBuf,
}

impl ControlPlane {
    pub fn start(logs: &Path, manifests: &Path, ip: IpAddr) -> anyhow::Result<ControlPlane> {
        let log = std::fs::File::create(logs.join("control.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("control")
            .arg("--manifests")
            .arg(manifests)
            .arg("--state")
            .arg(logs.join("state"))
            .args([
                "--listen",
                &SocketAddr::new(ip, 15190).to_string(),
                "--admin-listen",
                &SocketAddr::new(ip, 15192).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting weft control")?;
        Ok(ControlPlane {
            child,
            ip,
            state: logs.join("state"),
        })
    }

    pub fn stream(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15190)
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15192)
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while admin_get(self.admin(), "/ready")
            .await
            .map(|b| b.trim() != "ready")
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                bail!("the control plane did not become ready on {}", self.admin());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &admin_get(self.admin(), "/status").await?,
        )?)
    }

    pub async fn generation(&self) -> anyhow::Result<u64> {
        Ok(self.status().await?["generation"].as_u64().unwrap_or(0))
    }

    /// Waits until the control plane has read a change made after `generation`, and `proxies`
    /// proxies have acknowledged the config it produced.
    pub async fn wait_settled(&self, proxies: usize, generation: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status().await?;
            let list = status["proxies"].as_array().cloned().unwrap_or_default();
            let newer = status["generation"].as_u64().unwrap_or(0) > generation;
            if newer && list.len() == proxies && list.iter().all(|p| p["upToDate"] == true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the sidecars did not acknowledge the config: {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn find_proxy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let beside = std::env::current_exe()?.with_file_name("weft-proxy");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("weft-proxy"))
}

/// What a sidecar needs to join the mesh.
pub struct Join<'a> {
    pub name: &'static str,
    pub ip: IpAddr,
    pub service_account: &'static str,
    pub control: &'a ControlPlane,
    pub logs: &'a Path,
}

pub fn start_sidecar(bin: &Path, join: Join<'_>) -> anyhow::Result<Sidecar> {
    let Join {
        name,
        ip,
        service_account,
        control,
        logs,
    } = join;
    // A bootstrap token from the control plane's state, as `weft token create` makes.
    let token = crate::token::Tokens::open(&control.state)?.create(
        "shop",
        service_account,
        Duration::from_secs(86_400),
    );
    let token_file = logs.join(format!("{name}.token"));
    std::fs::write(&token_file, token)?;
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .args(["run", "--control-plane", &control.stream().to_string()])
        .arg("--trust-anchor")
        .arg(control.state.join("trust-anchor.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .args([
            "--pod-ip",
            &ip.to_string(),
            "--namespace",
            "shop",
            "--service-account",
            service_account,
        ])
        .args(["--pod-name", name, "--drain-grace", "5s"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --bins`)",
                bin.display()
            )
        })?;
    Ok(Sidecar { name, ip, child })
}

pub async fn wait_ready(sidecar: &Sidecar) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(body) = admin_get(sidecar.admin(), "/ready").await
            && body.trim() == "ready"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the {} sidecar did not become ready on {}",
                sidecar.name,
                sidecar.admin()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("the sidecar did not exit within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
