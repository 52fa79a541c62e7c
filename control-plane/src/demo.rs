//! `weft demo`: a small mesh on loopback addresses, with no cluster and no root.
//!
//! Each pod is a loopback address (SPEC "Local mode"). The demo starts sample workloads
//! in-process and a real `weft-proxy` process beside each meshed one, gives the client's
//! sidecar a static config, sends traffic through it as an application would (the sidecar is
//! its `http_proxy`), and prints what happened.

pub mod app;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weft_api::config::{Backend, Endpoint, MeshPeer, Protocol, ProxyConfig, Service, ServicePort};

use app::Workload;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The loopback /24 the demo's pods live in.
    #[arg(long, default_value = "127.0.10.0")]
    pub subnet: std::net::Ipv4Addr,
    /// The `weft-proxy` binary [default: next to `weft`, else on PATH].
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Keep the sidecars' logs in this directory.
    #[arg(long)]
    pub logs: Option<PathBuf>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(demo(args))
}

/// A sidecar process, stopped when dropped.
struct Sidecar {
    name: &'static str,
    ip: IpAddr,
    child: Child,
}

impl Sidecar {
    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15191)
    }

    fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15140)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod_ip(subnet: std::net::Ipv4Addr, host: u8) -> IpAddr {
    let [a, b, c, _] = subnet.octets();
    IpAddr::from([a, b, c, host])
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let proxy_bin = find_proxy(args.proxy_bin.as_deref())?;
    let logs = match &args.logs {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("weft-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&logs)?;
    let ip = |host| pod_ip(args.subnet, host);
    let (client_ip, v1_ip, v2_ip, ratings_ip) = (ip(1), ip(2), ip(3), ip(4));

    heading("The pods");
    let _apps = [
        app::serve(
            SocketAddr::new(v1_ip, 9080),
            Workload {
                service: "reviews",
                version: "v1",
                pod: "reviews-v1".into(),
            },
        )
        .await?,
        app::serve(
            SocketAddr::new(v2_ip, 9080),
            Workload {
                service: "reviews",
                version: "v2",
                pod: "reviews-v2".into(),
            },
        )
        .await?,
        app::serve(
            SocketAddr::new(ratings_ip, 9080),
            Workload {
                service: "ratings",
                version: "v1",
                pod: "ratings".into(),
            },
        )
        .await?,
    ];
    println!(
        "  productpage  {client_ip:<12} the client: its app sends through its sidecar (http_proxy)"
    );
    println!("  reviews-v1   {v1_ip:<12} app on :9080, behind a sidecar (meshed)");
    println!("  reviews-v2   {v2_ip:<12} app on :9080, behind a sidecar (meshed)");
    println!("  ratings      {ratings_ip:<12} app on :9080, no sidecar");

    let config = demo_config(v1_ip, v2_ip, ratings_ip);
    let config_path = logs.join("productpage.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let empty_path = logs.join("empty.json");
    std::fs::write(
        &empty_path,
        serde_json::to_vec_pretty(&ProxyConfig {
            version: "server-1".into(),
            ..Default::default()
        })?,
    )?;

    let sidecars = [
        start_sidecar(&proxy_bin, "productpage", client_ip, &config_path, &logs)?,
        start_sidecar(&proxy_bin, "reviews-v1", v1_ip, &empty_path, &logs)?,
        start_sidecar(&proxy_bin, "reviews-v2", v2_ip, &empty_path, &logs)?,
    ];
    for s in &sidecars {
        wait_ready(s).await?;
    }
    let client = &sidecars[0];
    println!("\n  sidecars ready; logs in {}", logs.display());

    heading("HTTP/1.1: 12 requests to reviews.shop:9080, one keep-alive connection");
    let mut conn = http1(client.outbound()).await?;
    let mut tally = BTreeMap::new();
    for _ in 0..12 {
        let resp = conn
            .send_request(
                Request::get("http://reviews.shop:9080/reviews").body(Empty::<Bytes>::new())?,
            )
            .await?;
        let who = served_by(&resp);
        resp.into_body().collect().await?;
        *tally.entry(who).or_insert(0) += 1;
    }
    for (who, n) in &tally {
        println!("  {who:<12} {n:>3} {}", "#".repeat(*n));
    }
    println!(
        "  each request went productpage sidecar -> reviews pod's sidecar (port 15143) -> app"
    );

    heading("HTTP/2 (prior knowledge): 12 concurrent streams on one connection");
    let h2 = http2(client.outbound()).await?;
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let req = Request::get("http://reviews.shop.svc.cluster.local:9080/reviews")
                    .version(http::Version::HTTP_2)
                    .body(Empty::<Bytes>::new())?;
                let resp = h2.send_request(req).await?;
                anyhow::Ok((resp.status().as_u16(), served_by(&resp)))
            })
        })
        .collect();
    let mut tally = BTreeMap::new();
    for call in calls {
        let (status, who) = call.await??;
        *tally.entry(format!("{status} {who}")).or_insert(0) += 1;
    }
    for (what, n) in &tally {
        println!("  {what:<16} {n:>3}");
    }

    heading("A workload without a sidecar, and a name that is no Service");
    conn.ready().await?;
    let resp = conn
        .send_request(Request::get("http://ratings.shop:9080/").body(Empty::<Bytes>::new())?)
        .await?;
    println!(
        "  GET http://ratings.shop:9080/   -> {} from {}",
        resp.status(),
        served_by(&resp)
    );
    resp.into_body().collect().await?;
    let resp = conn
        .send_request(Request::get("http://unknown.shop:9080/").body(Empty::<Bytes>::new())?)
        .await?;
    let err = resp
        .headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    println!(
        "  GET http://unknown.shop:9080/   -> {} with x-weft-error: {err}",
        resp.status()
    );
    resp.into_body().collect().await?;

    heading("What the sidecars counted (GET /metrics on their admin port)");
    for s in &sidecars {
        let metrics = admin_get(s.admin(), "/metrics").await?;
        for line in metrics.lines().filter(|l| {
            l.starts_with("weft_requests_total") || l.starts_with("weft_proxy_errors_total")
        }) {
            println!("  {:<12} {line}", s.name);
        }
    }

    heading("Drain: SIGTERM the productpage sidecar");
    let start = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &client.child.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM failed");
    }
    let mut sidecars = sidecars;
    let exited = wait_exit(&mut sidecars[0].child, Duration::from_secs(30)).await?;
    println!(
        "  it stopped accepting, finished in-flight work and exited ({exited}) in {:?}",
        start.elapsed()
    );
    println!("\nDone. `weft-proxy run --help` lists every flag; README.md explains the rest.");
    Ok(())
}

/// The productpage sidecar's config: two Services, one meshed with two pods.
fn demo_config(v1: IpAddr, v2: IpAddr, ratings: IpAddr) -> ProxyConfig {
    let meshed = |ip: IpAddr| Endpoint {
        address: SocketAddr::new(ip, 9080),
        mesh: Some(MeshPeer {
            identity: "spiffe://cluster.local/ns/shop/sa/reviews".into(),
            inbound_port: 15143,
        }),
        pod: None,
    };
    ProxyConfig {
        version: "demo-1".into(),
        services: vec![
            Service {
                name: "reviews".into(),
                namespace: "shop".into(),
                cluster_ips: vec!["10.96.0.20".parse().expect("ip")],
                ports: vec![ServicePort {
                    port: 9080,
                    name: None,
                    protocol: Protocol::Detect,
                    backend: "shop/reviews:9080".into(),
                    routes: vec![],
                }],
            },
            Service {
                name: "ratings".into(),
                namespace: "shop".into(),
                cluster_ips: vec![],
                ports: vec![ServicePort {
                    port: 9080,
                    name: None,
                    protocol: Protocol::Detect,
                    backend: "shop/ratings:9080".into(),
                    routes: vec![],
                }],
            },
        ],
        backends: vec![
            Backend {
                name: "shop/reviews:9080".into(),
                endpoints: vec![meshed(v1), meshed(v2)],
                policy: Default::default(),
            },
            Backend {
                name: "shop/ratings:9080".into(),
                endpoints: vec![Endpoint {
                    address: SocketAddr::new(ratings, 9080),
                    mesh: None,
                    pod: None,
                }],
                policy: Default::default(),
            },
        ],
        ..ProxyConfig::default()
    }
}

fn find_proxy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let beside = std::env::current_exe()?.with_file_name("weft-proxy");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("weft-proxy"))
}

fn start_sidecar(
    bin: &Path,
    name: &'static str,
    ip: IpAddr,
    config: &Path,
    logs: &Path,
) -> anyhow::Result<Sidecar> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .args([
            "--pod-ip",
            &ip.to_string(),
            "--namespace",
            "shop",
            "--drain-grace",
            "5s",
        ])
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

async fn wait_ready(sidecar: &Sidecar) -> anyhow::Result<()> {
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

async fn wait_exit(
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

async fn http1(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(addr).await?))
            .await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn http2(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(addr).await?),
    )
    .await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = http1(addr).await?;
    let resp = conn
        .send_request(
            Request::get(path)
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    Ok(String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned())
}

fn served_by<B>(resp: &http::Response<B>) -> String {
    resp.headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

fn heading(title: &str) {
    println!("\n== {title}");
}
