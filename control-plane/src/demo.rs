//! `weft demo`: a small mesh on loopback addresses, with no cluster and no root.
//!
//! Each pod is a loopback address (SPEC "Local mode"). The demo starts sample workloads
//! in-process, and `weft control` and a `weft-proxy` beside each meshed workload as processes.
//! It applies the example manifests of `manifests/examples/` by writing them into the control
//! plane's directory (with a weight edit while traffic runs), sends traffic through the client's
//! sidecar as an application would (the sidecar is its `http_proxy`), and prints what happened.

pub mod app;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use app::Workload;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// The example manifests the demo applies, built into the binary.
const WORKLOADS: &str = include_str!("../../manifests/examples/workloads.yaml");
const SPLIT: &str = include_str!("../../manifests/examples/traffic-split.yaml");
const CANARY: &str = include_str!("../../manifests/examples/canary-by-header.yaml");
const RESILIENCE: &str = include_str!("../../manifests/examples/resilience.yaml");
const SERVER_POLICY: &str = include_str!("../../manifests/examples/server-policy.yaml");

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The loopback /24 the demo's pods live in.
    #[arg(long, default_value = "127.0.10.0")]
    pub subnet: std::net::Ipv4Addr,
    /// The `weft-proxy` binary [default: next to `weft`, else on PATH].
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// Keep the sidecars' logs and configs in this directory.
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
    let manifests = logs.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let ip = |host| pod_ip(args.subnet, host);
    let (client_ip, v1_ip, v2_ip, shadow_ip, control_ip) = (ip(1), ip(2), ip(3), ip(5), ip(100));
    // The examples place their pods on 127.0.10.0/24; follow --subnet.
    let [a, b, c, _] = args.subnet.octets();
    let workloads = WORKLOADS.replace("127.0.10.", &format!("{a}.{b}.{c}."));

    heading("The control plane");
    let control = ControlPlane::start(&logs, &manifests, control_ip)?;
    control.wait_ready().await?;
    println!(
        "  weft control --manifests {} (config stream {}, admin {})",
        manifests.display(),
        control.stream(),
        control.admin()
    );

    heading("The pods (manifests/examples/workloads.yaml)");
    let who = |service, version, pod: &str| Workload {
        service,
        version,
        pod: pod.into(),
    };
    let _v1 = app::serve(
        SocketAddr::new(v1_ip, 9080),
        who("reviews", "v1", "reviews-v1"),
    )
    .await?;
    let v2 = app::serve(
        SocketAddr::new(v2_ip, 9080),
        who("reviews", "v2", "reviews-v2"),
    )
    .await?;
    let shadow = app::serve(
        SocketAddr::new(shadow_ip, 9080),
        who("reviews-shadow", "v1", "reviews-shadow"),
    )
    .await?;
    println!(
        "  productpage     {client_ip:<12} the client: its app sends through its sidecar (http_proxy)"
    );
    println!("  reviews-v1      {v1_ip:<12} app on :9080 behind a sidecar (meshed)");
    println!("  reviews-v2      {v2_ip:<12} app on :9080 behind a sidecar (meshed)");
    println!("  reviews-shadow  {shadow_ip:<12} app on :9080, no sidecar");
    let generation = control.generation().await?;
    apply(&manifests, "workloads.yaml", &workloads)?;
    apply(&manifests, "routes.yaml", SPLIT)?;
    let join = |name, ip, service_account| Join {
        name,
        ip,
        service_account,
        control: &control,
        logs: &logs,
    };
    let sidecars = [
        start_sidecar(&proxy_bin, join("productpage", client_ip, "productpage"))?,
        start_sidecar(&proxy_bin, join("reviews-v1", v1_ip, "reviews"))?,
        start_sidecar(&proxy_bin, join("reviews-v2", v2_ip, "reviews"))?,
    ];
    for s in &sidecars {
        wait_ready(s).await?;
    }
    let client = &sidecars[0];
    control.wait_settled(sidecars.len(), generation).await?;
    println!(
        "  three sidecars subscribed to the control plane; logs in {}",
        logs.display()
    );

    heading("1. Weighted split: 90% to v1, 10% to v2 (traffic-split.yaml)");
    show(&send(client.outbound(), 200, &[], "/reviews").await?, 200);
    println!(
        "  (each request crossed from productpage's sidecar to the reviews pod's sidecar on 15143)"
    );
    let h2 = http2(client.outbound()).await?;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let req = Request::get("http://reviews.shop.svc.cluster.local:9080/reviews")
                    .version(http::Version::HTTP_2)
                    .body(Empty::<Bytes>::new())?;
                let resp = h2.send_request(req).await?;
                anyhow::Ok(format!(
                    "{} {} over {:?}",
                    resp.status().as_u16(),
                    served_by(&resp),
                    resp.version()
                ))
            })
        })
        .collect();
    let mut tally = BTreeMap::new();
    for call in calls {
        *tally.entry(call.await??).or_insert(0) += 1;
    }
    println!("  and 20 concurrent HTTP/2 streams on one connection:");
    show(&tally, 20);

    heading("2. A live edit: the weights change while traffic flows");
    let traffic = tokio::spawn(windows(client.outbound(), 6, Duration::from_millis(500)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Swap the two weights: 90/10 becomes 10/90.
    let swapped = SPLIT
        .replace("weight: 90", "weight: V1")
        .replace("weight: 10", "weight: 90")
        .replace("weight: V1", "weight: 10");
    let generation = control.generation().await?;
    let edited = Instant::now();
    apply(&manifests, "routes.yaml", &swapped)?;
    control.wait_settled(sidecars.len(), generation).await?;
    println!(
        "  t=1.0s  routes.yaml now says 10/90; every sidecar acknowledged it {:?} after the write",
        edited.elapsed()
    );
    for (i, window) in traffic.await??.iter().enumerate() {
        let v2 = window.get("200 reviews-v2").copied().unwrap_or(0);
        let total: usize = window.values().sum();
        println!(
            "  t={:.1}s  {:>3} requests, v2 {:>3}%  {}",
            i as f64 * 0.5,
            total,
            v2 * 100 / total.max(1),
            "#".repeat(v2 * 40 / total.max(1))
        );
    }

    heading("3. Header canary: x-canary: true goes to v2 (canary-by-header.yaml)");
    let generation = control.generation().await?;
    apply(&manifests, "routes.yaml", CANARY)?;
    control.wait_settled(sidecars.len(), generation).await?;
    show(
        &send(client.outbound(), 20, &[("x-canary", "true")], "/reviews").await?,
        20,
    );
    show(&send(client.outbound(), 20, &[], "/reviews").await?, 20);

    heading("4. Resilience: retries, a breaker, a mirror and a timeout (resilience.yaml)");
    let generation = control.generation().await?;
    apply(&manifests, "routes.yaml", RESILIENCE)?;
    control.wait_settled(sidecars.len(), generation).await?;
    v2.set_failing(true);
    println!("  reviews-v2 now answers 500 to everything.");
    let before = shadow.requests();
    show(&send(client.outbound(), 100, &[], "/reviews").await?, 100);
    let metrics = admin_get(client.admin(), "/metrics").await?;
    let sample = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!("  retries hid the failures, and the breaker ejected v2 after 3 in a row:");
    println!("{}", sample("weft_retries_total"));
    println!("{}", sample("weft_breaker_ejections_total"));
    println!(
        "  the shadow received {} mirrored copies; their answers went nowhere",
        shadow.requests() - before
    );
    let (status, error) = get_once(client.outbound(), "http://reviews.shop:9080/slow").await?;
    println!(
        "  GET /slow (the app takes 2s; the route allows 300ms) -> {status}, x-weft-error: {error}"
    );
    v2.set_failing(false);
    println!(
        "  reviews-v2 recovers; once its ejection time has passed, one probe is let through..."
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    show(&send(client.outbound(), 40, &[], "/reviews").await?, 40);

    heading("5. A bad edit is refused; the last good version keeps serving");
    apply(
        &manifests,
        "routes.yaml",
        &RESILIENCE.replace("attempts: 2", "attempts: -2"),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    show(&send(client.outbound(), 20, &[], "/reviews").await?, 20);
    println!("  weft status:");
    for line in crate::status::render(&control.status().await?).lines() {
        println!("    {line}");
    }

    heading("6. Identity: every sidecar holds a SPIFFE certificate from weft control's CA");
    let certs: serde_json::Value =
        serde_json::from_str(&admin_get(client.admin(), "/certs").await?)?;
    println!(
        "  productpage's sidecar (GET /certs): {}, valid until {}, renews at {}",
        certs["spiffeId"].as_str().unwrap_or("?"),
        certs["notAfter"].as_str().unwrap_or("?"),
        certs["nextRenewal"].as_str().unwrap_or("?"),
    );
    let (_, _, body) = call(
        client.outbound(),
        Method::GET,
        "http://reviews.shop:9080/reviews",
    )
    .await?;
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    println!(
        "  {} answered; its sidecar told it the caller is {} (x-weft-peer-identity)",
        seen["pod"].as_str().unwrap_or("?"),
        seen["caller"].as_str().unwrap_or("nobody"),
    );
    for s in &sidecars[1..] {
        let metrics = admin_get(s.admin(), "/metrics").await?;
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("weft_tls_handshakes_total"))
        {
            println!("  {:<12} {line}", s.name);
        }
    }

    heading("7. ServerPolicy: STRICT mTLS, only productpage, only reads (server-policy.yaml)");
    let generation = control.generation().await?;
    apply(&manifests, "server-policy.yaml", SERVER_POLICY)?;
    control.wait_settled(sidecars.len(), generation).await?;
    for (method, path) in [
        (Method::GET, "/reviews"),
        (Method::POST, "/reviews"),
        (Method::GET, "/admin/users"),
        (Method::GET, "/reviews/../admin"),
    ] {
        let url = format!("http://reviews.shop:9080{path}");
        let (status, error, _) = call(client.outbound(), method.clone(), &url).await?;
        println!("  {:<4} {path:<18} -> {status} {error}", method.as_str());
    }
    for s in &sidecars[1..] {
        let metrics = admin_get(s.admin(), "/metrics").await?;
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("weft_inbound_denied_total"))
        {
            println!("  {:<12} {line}", s.name);
        }
    }

    heading("8. Bad input: each request on a keep-alive connection is judged, none gets through");
    let exchanges: [(&str, &[u8]); 3] = [
        (
            "a good request",
            b"GET http://reviews.shop:9080/reviews HTTP/1.1\r\nHost: reviews.shop:9080\r\nConnection: close\r\n\r\n",
        ),
        (
            "Content-Length and Transfer-Encoding (smuggling)",
            b"POST http://reviews.shop:9080/reviews HTTP/1.1\r\nHost: reviews.shop:9080\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "a header over --max-header-bytes",
            b"GET http://reviews.shop:9080/reviews HTTP/1.1\r\nHost: reviews.shop:9080\r\nx-big: ",
        ),
    ];
    for (what, bytes) in exchanges {
        let answer = raw_after_good_request(client.outbound(), bytes).await?;
        println!("  {what:<50} -> {answer}");
    }
    let metrics = admin_get(client.admin(), "/metrics").await?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("weft_proxy_errors_total") && !l.contains("timeout"))
    {
        println!("  productpage  {line}");
    }

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
    let [mut client, _v1_sidecar, _v2_sidecar] = sidecars;
    if !Command::new("kill")
        .args(["-TERM", &client.child.id().to_string()])
        .status()?
        .success()
    {
        bail!("kill -TERM failed");
    }
    let exited = wait_exit(&mut client.child, Duration::from_secs(30)).await?;
    println!(
        "  it stopped accepting, finished in-flight work and exited ({exited}) in {:?}",
        start.elapsed()
    );
    println!("\nDone. README.md explains what you saw; manifests/examples/ holds the manifests.");
    Ok(())
}

/// Writes a manifest into the control plane's directory as editors do: a temporary file
/// renamed into place.
fn apply(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Sends requests continuously for `n` windows of `width`, counting each window's answers.
async fn windows(
    proxy: SocketAddr,
    n: usize,
    width: Duration,
) -> anyhow::Result<Vec<BTreeMap<String, usize>>> {
    let mut conn = http1(proxy).await?;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = Instant::now() + width;
        let mut tally = BTreeMap::new();
        while Instant::now() < end {
            conn.ready().await?;
            let resp = conn
                .send_request(
                    Request::get("http://reviews.shop:9080/reviews").body(Empty::<Bytes>::new())?,
                )
                .await?;
            let key = format!("{} {}", resp.status().as_u16(), served_by(&resp));
            resp.into_body().collect().await?;
            *tally.entry(key).or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.push(tally);
    }
    Ok(out)
}

/// `weft control` as a process of its own, as in a cluster.
struct ControlPlane {
    child: Child,
    ip: IpAddr,
    state: PathBuf,
}

impl ControlPlane {
    fn start(logs: &Path, manifests: &Path, ip: IpAddr) -> anyhow::Result<ControlPlane> {
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

    fn stream(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15190)
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15192)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
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

    async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &admin_get(self.admin(), "/status").await?,
        )?)
    }

    async fn generation(&self) -> anyhow::Result<u64> {
        Ok(self.status().await?["generation"].as_u64().unwrap_or(0))
    }

    /// Waits until the control plane has read a change made after `generation`, and `proxies`
    /// proxies have acknowledged the config it produced.
    async fn wait_settled(&self, proxies: usize, generation: u64) -> anyhow::Result<()> {
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

/// Sends `n` requests to reviews through the sidecar, counting answers by status and replier.
async fn send(
    proxy: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
    path: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut conn = http1(proxy).await?;
    let mut tally = BTreeMap::new();
    for _ in 0..n {
        conn.ready().await?;
        let mut req = Request::get(format!("http://reviews.shop:9080{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = conn.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let key = format!("{} {}", resp.status().as_u16(), served_by(&resp));
        resp.into_body().collect().await?;
        *tally.entry(key).or_insert(0) += 1;
    }
    Ok(tally)
}

fn show(tally: &BTreeMap<String, usize>, total: usize) {
    for (what, n) in tally {
        let bar = "#".repeat((n * 50).div_ceil(total.max(1)));
        println!("  {what:<18} {n:>4}  {bar}");
    }
}

async fn get_once(proxy: SocketAddr, url: &str) -> anyhow::Result<(u16, String)> {
    let (status, error, _) = call(proxy, Method::GET, url).await?;
    Ok((status, error))
}

/// One request: its status, `x-weft-error` and body.
async fn call(
    proxy: SocketAddr,
    method: Method,
    url: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut conn = http1(proxy).await?;
    let resp = conn
        .send_request(
            Request::builder()
                .method(method)
                .uri(url)
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let error = resp
        .headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, error, String::from_utf8_lossy(&body).into_owned()))
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

/// What a sidecar needs to join the mesh.
struct Join<'a> {
    name: &'static str,
    ip: IpAddr,
    service_account: &'static str,
    control: &'a ControlPlane,
    logs: &'a Path,
}

fn start_sidecar(bin: &Path, join: Join<'_>) -> anyhow::Result<Sidecar> {
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

/// Sends a good request on a new connection, then `bytes` (padded past the header limit when
/// it ends inside a header), and returns the status line and `x-weft-error` of the second
/// answer.
async fn raw_after_good_request(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            b"GET http://reviews.shop:9080/reviews HTTP/1.1\r\nHost: reviews.shop:9080\r\n\r\n",
        )
        .await?;
    let mut next = bytes.to_vec();
    if next.ends_with(b": ") {
        next.resize(70 * 1024, b'a');
    }
    // The first answer comes back before the second request is sent: a keep-alive exchange.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await??;
        if n == 0 {
            bail!("the proxy closed the connection after a good request");
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(&next).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await??;
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    let last = answers.last().copied().unwrap_or_default();
    let status = last.lines().next().unwrap_or_default().to_owned();
    let error = last
        .lines()
        .find_map(|l| l.strip_prefix("x-weft-error: "))
        .map(|e| format!(" (x-weft-error: {e})"))
        .unwrap_or_default();
    let closed = if answers.len() == 2 {
        ", then closed"
    } else {
        ""
    };
    Ok(format!("{status}{error}{closed}"))
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
