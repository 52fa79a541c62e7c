//! `weft demo`: a small mesh on loopback addresses, with no cluster and no root.
//!
//! Each pod is a loopback address (SPEC "Local mode"). The demo starts sample workloads
//! in-process, and `weft control` and a `weft-proxy` beside each meshed workload as processes.
//! It applies the example manifests of `manifests/examples/` by writing them into the control
//! plane's directory (with a weight edit while traffic runs), sends traffic through the client's
//! sidecar as an application would (the sidecar is its `http_proxy`), and prints what happened.

//!
//! [`demo`] runs the scenes in order, one function each; [`processes`] starts the control
//! plane and the sidecars, [`client`] sends the traffic, and [`app`] is the sample workload.

pub mod app;
pub mod client;
pub mod processes;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use app::Workload;
use bytes::Bytes;
use client::{
    admin_get, call, get_once, http2, raw_after_good_request, send, served_by, show, windows,
};
use http::{Method, Request};
use http_body_util::Empty;
use processes::{ControlPlane, Join, Sidecar, apply, start_sidecar, wait_exit, wait_ready};

/// The example manifests the demo applies, built into the binary.
const WORKLOADS: &str = include_str!("../../manifests/examples/workloads.yaml");
const SPLIT: &str = include_str!("../../manifests/examples/traffic-split.yaml");
const CANARY: &str = include_str!("../../manifests/examples/canary-by-header.yaml");
const RESILIENCE: &str = include_str!("../../manifests/examples/resilience.yaml");
const SERVER_POLICY: &str = include_str!("../../manifests/examples/server-policy.yaml");
const REGISTRY_ONLY: &str = include_str!("../../manifests/examples/registry-only.yaml");

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

/// The mesh the scenes play on: the control plane and its manifest directory, the client's
/// and the reviews pods' sidecars, and the workloads a scene changes.
struct Mesh {
    control: ControlPlane,
    manifests: PathBuf,
    /// productpage (the client), reviews-v1 and reviews-v2.
    sidecars: [Sidecar; 3],
    v2: app::App,
    shadow: app::App,
    /// Kept serving for the whole demo.
    _v1: app::App,
}

impl Mesh {
    fn client(&self) -> &Sidecar {
        &self.sidecars[0]
    }

    /// Writes a manifest into the control plane's directory and waits until every sidecar
    /// has acknowledged the config it produces.
    async fn apply(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let generation = self.control.generation().await?;
        apply(&self.manifests, name, text)?;
        self.control
            .wait_settled(self.sidecars.len(), generation)
            .await
    }

    /// The lines of a sidecar's `/metrics` whose name starts with `prefix`.
    async fn metric_lines(&self, sidecar: &Sidecar, prefix: &str) -> anyhow::Result<Vec<String>> {
        let metrics = admin_get(sidecar.admin(), "/metrics").await?;
        Ok(metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect())
    }
}

fn pod_ip(subnet: std::net::Ipv4Addr, host: u8) -> IpAddr {
    let [a, b, c, _] = subnet.octets();
    IpAddr::from([a, b, c, host])
}

/// The scenes, in order.
async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let mesh = start(args).await?;
    split(&mesh).await?;
    live_edit(&mesh).await?;
    canary(&mesh).await?;
    resilience(&mesh).await?;
    bad_edit(&mesh).await?;
    identity(&mesh).await?;
    server_policy(&mesh).await?;
    bad_input(&mesh).await?;
    registry_only(&mesh).await?;
    counters(&mesh).await?;
    drain(mesh).await?;
    println!("\nDone. README.md explains what you saw; manifests/examples/ holds the manifests.");
    Ok(())
}

/// The control plane, the pods and their sidecars, with the workloads and the 90/10 split
/// applied.
async fn start(args: &DemoArgs) -> anyhow::Result<Mesh> {
    let proxy_bin = processes::find_proxy(args.proxy_bin.as_deref())?;
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
    let v1 = app::serve(
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
    control.wait_settled(sidecars.len(), generation).await?;
    println!(
        "  three sidecars subscribed to the control plane; logs in {}",
        logs.display()
    );
    Ok(Mesh {
        control,
        manifests,
        sidecars,
        v2,
        shadow,
        _v1: v1,
    })
}

/// Scene 1: The 90/10 split, over HTTP/1 requests and HTTP/2 streams.
async fn split(mesh: &Mesh) -> anyhow::Result<()> {
    heading("1. Weighted split: 90% to v1, 10% to v2 (traffic-split.yaml)");
    let client = mesh.client();
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
    Ok(())
}

/// Scene 2: The weights swapped while traffic flows, and how long the sidecars took.
async fn live_edit(mesh: &Mesh) -> anyhow::Result<()> {
    heading("2. A live edit: the weights change while traffic flows");
    let traffic = tokio::spawn(windows(
        mesh.client().outbound(),
        6,
        Duration::from_millis(500),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Swap the two weights: 90/10 becomes 10/90.
    let swapped = SPLIT
        .replace("weight: 90", "weight: V1")
        .replace("weight: 10", "weight: 90")
        .replace("weight: V1", "weight: 10");
    let edited = Instant::now();
    mesh.apply("routes.yaml", &swapped).await?;
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
    Ok(())
}

/// Scene 3: A header match sends canary requests to v2.
async fn canary(mesh: &Mesh) -> anyhow::Result<()> {
    heading("3. Header canary: x-canary: true goes to v2 (canary-by-header.yaml)");
    mesh.apply("routes.yaml", CANARY).await?;
    let client = mesh.client();
    show(
        &send(client.outbound(), 20, &[("x-canary", "true")], "/reviews").await?,
        20,
    );
    show(&send(client.outbound(), 20, &[], "/reviews").await?, 20);
    Ok(())
}

/// Scene 4: v2 fails: retries hide it, its breaker ejects it, the shadow gets mirrored copies, a
/// slow path times out, and v2 is let back in once it recovers.
async fn resilience(mesh: &Mesh) -> anyhow::Result<()> {
    heading("4. Resilience: retries, a breaker, a mirror and a timeout (resilience.yaml)");
    mesh.apply("routes.yaml", RESILIENCE).await?;
    let client = mesh.client();
    mesh.v2.set_failing(true);
    println!("  reviews-v2 now answers 500 to everything.");
    let before = mesh.shadow.requests();
    show(&send(client.outbound(), 100, &[], "/reviews").await?, 100);
    println!("  retries hid the failures, and the breaker ejected v2 after 3 in a row:");
    for prefix in ["weft_retries_total", "weft_breaker_ejections_total"] {
        for line in mesh.metric_lines(client, prefix).await? {
            println!("    {line}");
        }
    }
    println!(
        "  the shadow received {} mirrored copies; their answers went nowhere",
        mesh.shadow.requests() - before
    );
    let (status, error) = get_once(client.outbound(), "http://reviews.shop:9080/slow").await?;
    println!(
        "  GET /slow (the app takes 2s; the route allows 300ms) -> {status}, x-weft-error: {error}"
    );
    mesh.v2.set_failing(false);
    println!(
        "  reviews-v2 recovers; once its ejection time has passed, one probe is let through..."
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    show(&send(client.outbound(), 40, &[], "/reviews").await?, 40);
    Ok(())
}

/// Scene 5: An invalid edit is refused, and `weft status` says why.
async fn bad_edit(mesh: &Mesh) -> anyhow::Result<()> {
    heading("5. A bad edit is refused; the last good version keeps serving");
    apply(
        &mesh.manifests,
        "routes.yaml",
        &RESILIENCE.replace("attempts: 2", "attempts: -2"),
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    show(
        &send(mesh.client().outbound(), 20, &[], "/reviews").await?,
        20,
    );
    println!("  weft status:");
    for line in crate::status::render(&mesh.control.status().await?).lines() {
        println!("    {line}");
    }
    Ok(())
}

/// Scene 6: Each sidecar's certificate, and the caller identity the server side sees.
async fn identity(mesh: &Mesh) -> anyhow::Result<()> {
    heading("6. Identity: every sidecar holds a SPIFFE certificate from weft control's CA");
    let client = mesh.client();
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
    for s in &mesh.sidecars[1..] {
        for line in mesh.metric_lines(s, "weft_tls_handshakes_total").await? {
            println!("  {:<12} {line}", s.name);
        }
    }
    Ok(())
}

/// Scene 7: A ServerPolicy admits only productpage's reads.
async fn server_policy(mesh: &Mesh) -> anyhow::Result<()> {
    heading("7. ServerPolicy: STRICT mTLS, only productpage, only reads (server-policy.yaml)");
    mesh.apply("server-policy.yaml", SERVER_POLICY).await?;
    for (method, path) in [
        (Method::GET, "/reviews"),
        (Method::POST, "/reviews"),
        (Method::GET, "/admin/users"),
        (Method::GET, "/reviews/../admin"),
    ] {
        let url = format!("http://reviews.shop:9080{path}");
        let (status, error, _) = call(mesh.client().outbound(), method.clone(), &url).await?;
        println!("  {:<4} {path:<18} -> {status} {error}", method.as_str());
    }
    for s in &mesh.sidecars[1..] {
        for line in mesh.metric_lines(s, "weft_inbound_denied_total").await? {
            println!("  {:<12} {line}", s.name);
        }
    }
    Ok(())
}

/// Scene 8: Requests that could be smuggled, or whose head is too large, refused mid-connection.
async fn bad_input(mesh: &Mesh) -> anyhow::Result<()> {
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
    let client = mesh.client();
    for (what, bytes) in exchanges {
        let answer = raw_after_good_request(client.outbound(), bytes).await?;
        println!("  {what:<50} -> {answer}");
    }
    for line in mesh.metric_lines(client, "weft_proxy_errors_total").await? {
        if !line.contains("timeout") {
            println!("  productpage  {line}");
        }
    }
    Ok(())
}

/// Scene 9: REGISTRY_ONLY on the shop namespace: an address outside the mesh is refused, the
/// Services are not.
async fn registry_only(mesh: &Mesh) -> anyhow::Result<()> {
    heading(
        "9. Egress: REGISTRY_ONLY keeps the shop's pods inside the registry (registry-only.yaml)",
    );
    let client = mesh.client();
    // The control plane's admin address is no Service's endpoint: outside the registry.
    let outside = format!("http://{}/ready", mesh.control.admin());
    let (status, _) = get_once(client.outbound(), &outside).await?;
    println!("  ALLOW_ANY (the default):  GET {outside} -> {status}");
    mesh.apply("registry-only.yaml", REGISTRY_ONLY).await?;
    let (status, error) = get_once(client.outbound(), &outside).await?;
    println!("  REGISTRY_ONLY:            GET {outside} -> {status}, x-weft-error: {error}");
    let (status, _) = get_once(client.outbound(), "http://reviews.shop:9080/reviews").await?;
    println!("  REGISTRY_ONLY:            GET http://reviews.shop:9080/reviews -> {status}");
    mesh.apply("registry-only.yaml", "").await?;
    Ok(())
}

/// What every sidecar counted.
async fn counters(mesh: &Mesh) -> anyhow::Result<()> {
    heading("What the sidecars counted (GET /metrics on their admin port)");
    for s in &mesh.sidecars {
        for prefix in ["weft_requests_total", "weft_proxy_errors_total"] {
            for line in mesh.metric_lines(s, prefix).await? {
                println!("  {:<12} {line}", s.name);
            }
        }
    }
    Ok(())
}

/// The client's sidecar drained by SIGTERM.
async fn drain(mesh: Mesh) -> anyhow::Result<()> {
    heading("Drain: SIGTERM the productpage sidecar");
    let start = Instant::now();
    let [mut client, _v1_sidecar, _v2_sidecar] = mesh.sidecars;
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
    Ok(())
}

fn heading(title: &str) {
    println!("\n== {title}");
}
