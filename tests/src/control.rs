//! A `weft control` process serving a manifest directory, for tests.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU32, Ordering};

use crate::client;

static TOKENS: AtomicU32 = AtomicU32::new(0);
use crate::paths::{bin_path, scratch_dir};

/// A running control plane on its own loopback address. Killed when dropped.
pub struct ControlPlane {
    child: Option<Child>,
    pub ip: IpAddr,
    pub stream: SocketAddr,
    pub admin: SocketAddr,
    pub manifests: PathBuf,
    pub state: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    /// Cluster mode: the kubeconfig of the (fake) API server, instead of a manifest directory.
    kubeconfig: Option<PathBuf>,
    /// The scratch directory (manifests, state with the CA key, log): removed on drop unless
    /// the test failed.
    dir: PathBuf,
}

impl ControlPlane {
    /// Starts a control plane on `ip` with an empty manifest directory.
    pub async fn start(ip: IpAddr) -> ControlPlane {
        ControlPlane::start_with(ip, &[]).await
    }

    /// Starts a control plane with extra `weft control` flags.
    pub async fn start_with(ip: IpAddr, extra: &[String]) -> ControlPlane {
        ControlPlane::launch(ip, extra, None).await
    }

    /// Starts `weft control --kubernetes` against the API server at `api` (plain HTTP). Its
    /// proxies' tokens are ServiceAccount tokens as [`crate::kube_api::FakeApi`] reads them.
    pub async fn start_kubernetes(ip: IpAddr, api: SocketAddr) -> ControlPlane {
        let dir = scratch_dir("kubeconfig");
        let path = dir.join("kubeconfig");
        std::fs::write(&path, crate::kube_api::kubeconfig(api)).expect("kubeconfig");
        ControlPlane::launch(ip, &[], Some(path)).await
    }

    async fn launch(ip: IpAddr, extra: &[String], kubeconfig: Option<PathBuf>) -> ControlPlane {
        let dir = scratch_dir("control");
        let manifests = dir.join("manifests");
        let state = dir.join("state");
        std::fs::create_dir_all(&manifests).expect("manifest dir");
        let mut cp = ControlPlane {
            child: None,
            ip,
            stream: SocketAddr::new(ip, 15190),
            admin: SocketAddr::new(ip, 15192),
            manifests,
            state,
            log: dir.join("control.log"),
            extra: extra.to_vec(),
            kubeconfig,
            dir: dir.clone(),
        };
        cp.restart().await;
        cp
    }

    /// (Re)starts the process on the same directories and addresses.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = Command::new(bin_path("weft"));
        command.arg("control");
        match &self.kubeconfig {
            // The webhook, on by default in cluster mode, gets the test's own address too.
            Some(kubeconfig) => command
                .arg("--kubernetes")
                .env("KUBECONFIG", kubeconfig)
                .arg("--webhook-listen")
                .arg(SocketAddr::new(self.ip, 15443).to_string()),
            None => command.arg("--manifests").arg(&self.manifests),
        };
        let child = command
            .arg("--state")
            .arg(&self.state)
            .args([
                "--listen",
                &self.stream.to_string(),
                "--admin-listen",
                &self.admin.to_string(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning weft control");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.get("/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the control plane never became ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        client::request_text(
            self.admin,
            "GET",
            &format!("http://{}{path}", self.admin),
            "",
        )
        .await
    }

    /// The control plane's `/status`.
    pub async fn status(&self) -> serde_json::Value {
        let (_, body) = self.get("/status").await.expect("status");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// The trust anchors the control plane's CA wrote.
    pub fn trust_anchor(&self) -> PathBuf {
        self.state.join("trust-anchor.pem")
    }

    /// A token file proving `namespace/service_account`, by `weft token create`.
    pub fn token(&self, namespace: &str, service_account: &str) -> PathBuf {
        let path = self.state.join(format!(
            "token-{namespace}-{service_account}-{}",
            TOKENS.fetch_add(1, Ordering::Relaxed)
        ));
        if self.kubeconfig.is_some() {
            let token = crate::kube_api::service_account_token(namespace, service_account);
            std::fs::write(&path, token).expect("token file");
            return path;
        }
        let out = Command::new(bin_path("weft"))
            .args([
                "token",
                "create",
                "--namespace",
                namespace,
                "--service-account",
                service_account,
                "--state",
            ])
            .arg(&self.state)
            .output()
            .expect("weft token create");
        assert!(
            out.status.success(),
            "weft token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&path, out.stdout).expect("token file");
        path
    }

    /// The flags a proxy in `namespace` running as `service_account` needs to join.
    pub fn proxy_flags(&self, namespace: &str, service_account: &str) -> Vec<String> {
        vec![
            "--control-plane".into(),
            self.stream.to_string(),
            "--trust-anchor".into(),
            self.trust_anchor().display().to_string(),
            "--token-file".into(),
            self.token(namespace, service_account).display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--service-account".into(),
            service_account.into(),
        ]
    }

    /// Writes a manifest file the way editors and tools do: a temporary file, renamed into place.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("writing a manifest");
        std::fs::rename(&tmp, self.manifests.join(name)).expect("renaming a manifest into place");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(name)).expect("removing a manifest");
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of the control plane on {} ---\n{}",
                self.ip,
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
