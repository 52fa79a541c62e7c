//! The paths under test and the addresses they listen on: a [`Target`] is one way to reach the
//! backend with the proxy processes on it. weft and HAProxy, one hop and two hops with
//! mutual TLS, and the `weft control` ([`Control`]) that certifies the weft sidecars.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use weft_tests::mesh::{Ep, Mesh};

use crate::procs::{Proc, addr, bin, wait_serving};

pub(crate) const CLIENT_IP: &str = "127.88.0.1";
pub(crate) const SERVER_IP: &str = "127.88.0.2";
/// A second one-hop weft, the A/A control of the latency rounds.
pub(crate) const WEFT_AA_IP: &str = "127.88.0.3";
const HAPROXY_IP: &str = "127.88.0.10";
const CONTROL_IP: &str = "127.88.0.100";

/// One way to reach the backend: its address, and the proxy processes on the path.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    pub(crate) procs: Vec<Arc<Proc>>,
}

impl Target {
    pub(crate) fn cpu(&self) -> Duration {
        self.procs.iter().map(|p| p.cpu()).sum()
    }

    pub(crate) fn user_cpu(&self) -> Duration {
        self.procs.iter().map(|p| p.cpu_split().0).sum()
    }

    /// Summed over the proxies: (RSS, peak RSS) in KiB.
    pub(crate) fn memory_kib(&self) -> (u64, u64) {
        self.procs.iter().fold((0, 0), |(r, h), p| {
            let (pr, ph) = p.memory_kib();
            (r + pr, h + ph)
        })
    }
}

/// The one-hop proxy's static config: the Service `bench.shop` with the backend as its endpoint.
pub(crate) fn write_weft_config(scratch: &Path, backend: SocketAddr) -> anyhow::Result<PathBuf> {
    let config = Mesh::new("bench")
        .service("shop", "bench", None, 8080, &[Ep::direct(backend)])
        .build();
    let file = scratch.join("weft.json");
    std::fs::write(&file, serde_json::to_vec(&config)?)?;
    Ok(file)
}

/// A one-hop weft for pod `ip`, listening on `ip`:15140.
pub(crate) async fn weft_one_hop(
    scratch: &Path,
    backend: SocketAddr,
    ip: &'static str,
    name: &'static str,
) -> anyhow::Result<Target> {
    weft_one_hop_with(scratch, backend, ip, name, &[]).await
}

/// [`weft_one_hop`] with more flags for `weft-proxy run`.
pub(crate) async fn weft_one_hop_with(
    scratch: &Path,
    backend: SocketAddr,
    ip: &'static str,
    name: &'static str,
    extra: &[&str],
) -> anyhow::Result<Target> {
    let file = write_weft_config(scratch, backend)?;
    let proxy = Proc::spawn(
        name,
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(bin("weft-proxy")?)
            .args([
                "run",
                "--config",
                &file.display().to_string(),
                "--pod-ip",
                ip,
                "--namespace",
                "shop",
                "--log-level",
                "warn",
            ])
            .args(extra),
        &scratch.join(format!("weft-{ip}.log")),
    )?;
    let addr = addr(ip, 15140);
    wait_serving(addr, name).await?;
    Ok(Target {
        name,
        addr,
        procs: vec![Arc::new(proxy)],
    })
}

/// `mode http` (with `http-reuse always`) or `mode tcp`.
pub(crate) fn haproxy_config(mode: &str, frontend: &str, backend: &str) -> String {
    let reuse = if mode == "http" {
        "  http-reuse always\n"
    } else {
        ""
    };
    format!(
        "global\n  nbthread 1\n  maxconn 5000\n\ndefaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{reuse}\nfrontend f\n  bind {frontend}\n  default_backend b\n\nbackend b\n  server s1 {backend}\n"
    )
}

async fn start_haproxy(
    scratch: &Path,
    name: &'static str,
    config: &str,
    listen: SocketAddr,
) -> anyhow::Result<Proc> {
    let file = scratch.join(format!("{name}.cfg"));
    std::fs::write(&file, config)?;
    let proc = Proc::spawn(
        name,
        Command::new("taskset")
            .args(["-c", "1", "haproxy", "-db", "-f"])
            .arg(&file),
        &scratch.join(format!("{name}.log")),
    )?;
    wait_serving(listen, name).await?;
    Ok(proc)
}

pub(crate) async fn haproxy_one_hop(scratch: &Path, backend: SocketAddr) -> anyhow::Result<Target> {
    let listen = addr(HAPROXY_IP, 8001);
    let proc = start_haproxy(
        scratch,
        "haproxy",
        &haproxy_config("http", &listen.to_string(), &backend.to_string()),
        listen,
    )
    .await?;
    Ok(Target {
        name: "haproxy",
        addr: listen,
        procs: vec![Arc::new(proc)],
    })
}

/// A `weft control` on `<dir>/manifests` and `<dir>/state`, serving on `ip` (core 0, like
/// this process).
pub(crate) struct Control {
    proc: Proc,
    pub(crate) ip: &'static str,
    dir: PathBuf,
}

impl Control {
    pub(crate) async fn start(dir: &Path, ip: &'static str) -> anyhow::Result<Control> {
        let state = dir.join("state");
        let proc = Proc::spawn(
            "weft control",
            Command::new(bin("weft")?)
                .arg("control")
                .arg("--manifests")
                .arg(dir.join("manifests"))
                .arg("--state")
                .arg(&state)
                .args([
                    "--listen",
                    &addr(ip, 15190).to_string(),
                    "--admin-listen",
                    &addr(ip, 15192).to_string(),
                    "--log-level",
                    "warn",
                ]),
            &dir.join("control.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("trust-anchor.pem").exists()
            || TcpStream::connect(addr(ip, 15190)).await.is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "weft control never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Control {
            proc,
            ip,
            dir: dir.to_owned(),
        })
    }

    /// A weft-proxy on core 1 for pod `ip`, certified as `shop/<service_account>`.
    pub(crate) fn sidecar(
        &self,
        ip: &str,
        service_account: &str,
        extra: &[&str],
        name: &str,
    ) -> anyhow::Result<Proc> {
        let state = self.dir.join("state");
        let out = Command::new(bin("weft")?)
            .args(["token", "create", "--namespace", "shop"])
            .args(["--service-account", service_account, "--state"])
            .arg(&state)
            .output()?;
        anyhow::ensure!(out.status.success(), "weft token create failed");
        let token = self.dir.join(format!("{name}.token"));
        std::fs::write(&token, &out.stdout)?;
        Proc::spawn(
            "weft-proxy",
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(bin("weft-proxy")?)
                .args([
                    "run",
                    "--control-plane",
                    &addr(self.ip, 15190).to_string(),
                    "--trust-anchor",
                    &state.join("trust-anchor.pem").display().to_string(),
                    "--token-file",
                    &token.display().to_string(),
                    "--pod-ip",
                    ip,
                    "--namespace",
                    "shop",
                    "--service-account",
                    service_account,
                    "--log-level",
                    "warn",
                ])
                .args(extra),
            &self.dir.join(format!("{name}.log")),
        )
    }
}

/// Two weft proxies with real identities from `weft control`: client pod → its sidecar →
/// mutual TLS → the server pod's sidecar → the backend.
pub(crate) async fn weft_two_hops(
    scratch: &Path,
    backend: SocketAddr,
) -> anyhow::Result<(Target, Proc)> {
    let manifests = scratch.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("bench.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bench, namespace: shop}}\nspec:\n  selector: {{app: bench}}\n  ports: [{{port: 8080}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: bench, namespace: shop, labels: {{app: bench}}, annotations: {{weft.dev/inject: enabled}}}}\nspec: {{serviceAccountName: bench, containers: [{{name: app}}]}}\nstatus: {{podIP: {}}}\n",
            backend.ip()
        ),
    )?;
    let control = Control::start(scratch, CONTROL_IP).await?;
    // The two-hop client sidecar listens on other ports than the one-hop one, same IP.
    let client_ports = [
        "--outbound-addr",
        "127.88.0.1:25140",
        "--inbound-addr",
        "127.88.0.1:25143",
        "--admin-addr",
        "127.88.0.1:25191",
    ];
    let procs = vec![
        Arc::new(control.sidecar(SERVER_IP, "bench", &[], "sidecar-bench")?),
        Arc::new(control.sidecar(CLIENT_IP, "client", &client_ports, "sidecar-client")?),
    ];
    let addr = addr(CLIENT_IP, 25140);
    wait_serving(addr, "the weft mTLS pair").await?;
    Ok((
        Target {
            name: "weft mTLS",
            addr,
            procs,
        },
        control.proc,
    ))
}

/// Two HAProxies with a throwaway CA: plain HTTP in, TLS with client certificates
/// (`verify required` both ways) between them. In `mode http` the client side keeps and
/// reuses its TLS connections; in `mode tcp` every connection is its own TLS connection.
pub(crate) async fn haproxy_two_hops(
    scratch: &Path,
    backend: SocketAddr,
    mode: &'static str,
    ports: (u16, u16),
) -> anyhow::Result<Target> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let issue = |name: &str| -> anyhow::Result<String> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
    };
    let ca_file = scratch.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    let (server_pem, client_pem) = (scratch.join("server.pem"), scratch.join("client.pem"));
    std::fs::write(&server_pem, issue("bench-server")?)?;
    std::fs::write(&client_pem, issue("bench-client")?)?;
    let middle = addr(HAPROXY_IP, ports.1);
    let server_side = haproxy_config(
        mode,
        &format!(
            "{middle} ssl crt {} ca-file {} verify required",
            server_pem.display(),
            ca_file.display()
        ),
        &backend.to_string(),
    );
    let listen = addr(HAPROXY_IP, ports.0);
    let client_side = haproxy_config(
        mode,
        &listen.to_string(),
        &format!(
            "{middle} ssl crt {} ca-file {} verify required verifyhost bench-server",
            client_pem.display(),
            ca_file.display()
        ),
    );
    let file = scratch.join(format!("haproxy-server-{mode}.cfg"));
    std::fs::write(&file, server_side)?;
    let server = Proc::spawn(
        "haproxy server",
        Command::new("taskset")
            .args(["-c", "1", "haproxy", "-db", "-f"])
            .arg(&file),
        &scratch.join(format!("haproxy-server-{mode}.log")),
    )?;
    let name = if mode == "http" {
        "haproxy-client"
    } else {
        "haproxy-client-tcp"
    };
    let client = start_haproxy(scratch, name, &client_side, listen).await?;
    Ok(Target {
        name: if mode == "http" {
            "haproxy TLS"
        } else {
            "haproxy TLS tcp"
        },
        addr: listen,
        procs: vec![Arc::new(client), Arc::new(server)],
    })
}
