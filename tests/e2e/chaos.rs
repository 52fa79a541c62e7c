//! Chaos under load: four clients send throughout (three GETs, one POST, each one after
//! another on its own connection to the client's sidecar) while a fault strikes: an
//! application killed with -9, the control plane killed and restarted on its state, a
//! server pod's sidecar killed, and a peer that accepts and never answers. Every failed
//! request is reported with its reason. What a retry could save must be saved: a GET never
//! fails, and a POST only where it may have reached the application (a reset after it was
//! sent), never for a connect failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use weft_tests::client::{self, error_header, served_by};
use weft_tests::control::ControlPlane;
use weft_tests::eventually;
use weft_tests::manifests::Manifests;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;

const TESTBED: &str = env!("CARGO_BIN_EXE_weft-testbed");
/// How long the clients send, and when the fault strikes.
const LOAD: Duration = Duration::from_secs(6);
const FAULT_AT: Duration = Duration::from_secs(2);

/// An application as a process of its own, so that it can die as a process does.
struct App {
    child: Child,
    addr: SocketAddr,
}

impl App {
    async fn start(addr: SocketAddr, name: &str) -> App {
        let child = Command::new(TESTBED)
            .args(["http", "--listen", &addr.to_string(), "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weft-testbed");
        eventually(
            &format!("{name} listening on {addr}"),
            Duration::from_secs(10),
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
        )
        .await;
        App { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Report {
    sent: usize,
    /// Failed requests by method, status and `x-weft-error` (or the client's error).
    failed: BTreeMap<String, usize>,
    /// Answers by who served them.
    served: BTreeMap<String, usize>,
    latencies: Vec<Duration>,
}

impl Report {
    fn p99(&mut self) -> Duration {
        self.latencies.sort();
        self.latencies
            .get(self.latencies.len() * 99 / 100)
            .copied()
            .unwrap_or_default()
    }

    fn print(&mut self, fault: &str, rss_kib: u64) {
        let p99 = self.p99();
        eprintln!(
            "chaos: {fault}: {} requests, {} failed {:?}; served by {:?}; p99 {p99:?}; client sidecar peak RSS {rss_kib} KiB",
            self.sent,
            self.failed.values().sum::<usize>(),
            self.failed,
            self.served,
        );
    }

    /// GETs never fail; a POST fails only where it was sent and then reset.
    fn assert_saved(&self, fault: &str) {
        for (what, n) in &self.failed {
            assert!(
                what.starts_with("POST 502 upstream-reset"),
                "{fault}: {n} requests failed as {what}: {:?}",
                self.failed
            );
        }
    }
}

/// Four clients send to `url` through `proxy` for [`LOAD`]; `fault` runs at [`FAULT_AT`].
async fn under_load(proxy: SocketAddr, url: &'static str, fault: impl AsyncFnOnce()) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let method = if i == 3 { "POST" } else { "GET" };
                let mut report = Report::default();
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        conn = Some(client::http1(proxy).await.unwrap());
                    }
                    let sender = conn.as_mut().unwrap();
                    let req = http::Request::builder()
                        .method(method)
                        .uri(url)
                        .body(client::body(if i == 3 { "an order" } else { "" }))
                        .unwrap();
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                        sender.ready().await?;
                        let resp = sender.send_request(req).await?;
                        let status = resp.status().as_u16();
                        let (by, error) = (served_by(&resp), error_header(&resp));
                        client::text(resp).await?;
                        anyhow::Ok((status, by, error))
                    })
                    .await;
                    report.sent += 1;
                    report.latencies.push(started.elapsed());
                    match outcome {
                        Ok(Ok((200, by, _))) => *report.served.entry(by).or_default() += 1,
                        Ok(Ok((status, _, error))) => {
                            *report
                                .failed
                                .entry(format!("{method} {status} {error}"))
                                .or_default() += 1;
                        }
                        Ok(Err(e)) => {
                            *report
                                .failed
                                .entry(format!("{method} client error: {e}"))
                                .or_default() += 1;
                            conn = None;
                        }
                        Err(_) => {
                            *report
                                .failed
                                .entry(format!("{method} no answer within 10 s"))
                                .or_default() += 1;
                            conn = None;
                        }
                    }
                }
                report
            })
        })
        .collect();
    tokio::time::sleep(FAULT_AT).await;
    fault().await;
    tokio::time::sleep(LOAD - FAULT_AT).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Report::default();
    for c in clients {
        let r = c.await.unwrap();
        all.sent += r.sent;
        all.latencies.extend(r.latencies);
        for (k, v) in r.failed {
            *all.failed.entry(k).or_default() += v;
        }
        for (k, v) in r.served {
            *all.served.entry(k).or_default() += v;
        }
    }
    all
}

/// Two server pods, each an application process behind its sidecar, and a client's sidecar
/// with their Service.
struct TwoPods {
    apps: [App; 2],
    sidecars: [Proxy; 2],
    client: Proxy,
}

async fn two_pods() -> TwoPods {
    let (a, b) = (pod_ip(), pod_ip());
    let apps = [
        App::start(at(a, 8080), "reviews-a").await,
        App::start(at(b, 8080), "reviews-b").await,
    ];
    let sidecars = [
        Proxy::start(a, &Mesh::new("server").build(), &[]).await,
        Proxy::start(b, &Mesh::new("server").build(), &[]).await,
    ];
    let mesh = Mesh::new("client").service(
        "shop",
        "reviews",
        None,
        8080,
        &[Ep::meshed(apps[0].addr), Ep::meshed(apps[1].addr)],
    );
    let client = Proxy::start(pod_ip(), &mesh.build(), &[]).await;
    TwoPods {
        apps,
        sidecars,
        client,
    }
}

const URL: &str = "http://reviews.shop:8080/";

#[tokio::test]
async fn an_application_killed_under_load_loses_no_get() {
    let mut pods = two_pods().await;
    let outbound = pods.client.outbound;
    let apps = &mut pods.apps;
    let mut report = under_load(outbound, URL, async || apps[0].kill()).await;
    report.print(
        "kill -9 of one of two applications",
        pods.client.memory_kib().1,
    );
    report.assert_saved("an application killed");
    assert!(report.served.get("reviews-b").copied().unwrap_or(0) > 0);
    drop(pods.sidecars);
}

#[tokio::test]
async fn a_server_sidecar_killed_under_load_loses_no_get() {
    let pods = two_pods().await;
    let outbound = pods.client.outbound;
    let sidecar = &pods.sidecars[0];
    let mut report = under_load(outbound, URL, async || sidecar.signal("KILL")).await;
    report.print(
        "kill -9 of one of two server sidecars",
        pods.client.memory_kib().1,
    );
    report.assert_saved("a server sidecar killed");
    assert!(report.served.get("reviews-b").copied().unwrap_or(0) > 0);
}

#[tokio::test]
async fn a_peer_that_accepts_and_never_answers_loses_no_get() {
    // The second pod's sidecar port accepts connections and never says a word.
    let (a, hole) = (pod_ip(), pod_ip());
    let _app = App::start(at(a, 8080), "reviews-a").await;
    let _sidecar = Proxy::start(a, &Mesh::new("server").build(), &[]).await;
    let black_hole = TcpListener::bind(at(hole, 15143)).await.unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = black_hole.accept().await {
            held.push(tcp);
        }
    });
    let client = Proxy::start(
        pod_ip(),
        &Mesh::new("client")
            .service(
                "shop",
                "reviews",
                None,
                8080,
                &[Ep::meshed(at(a, 8080)), Ep::meshed(at(hole, 8080))],
            )
            .build(),
        &[],
    )
    .await;
    let mut report = under_load(client.outbound, URL, async || {}).await;
    report.print(
        "a peer that accepts and never answers",
        client.memory_kib().1,
    );
    report.assert_saved("a black-hole peer");
}

#[tokio::test]
async fn the_control_plane_killed_and_restarted_under_load_loses_nothing() {
    let mut cp = ControlPlane::start(pod_ip()).await;
    let (a, b) = (pod_ip(), pod_ip());
    let apps = [
        App::start(at(a, 8080), "reviews-a").await,
        App::start(at(b, 8080), "reviews-b").await,
    ];
    let manifests = Manifests::new()
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  selector: {app: reviews}\n  ports: [{port: 8080}]\n")
        .pod("shop", "reviews-a", &[("app", "reviews")], apps[0].addr, true)
        .pod("shop", "reviews-b", &[("app", "reviews")], apps[1].addr, true);
    cp.write("mesh.yaml", &manifests.yaml());
    let _servers = [
        Proxy::joined(a, &cp, "shop", "reviews-a", &[]).await,
        Proxy::joined(b, &cp, "shop", "reviews-b", &[]).await,
    ];
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    crate::identity::all_acked(&cp, &manifests, &[(&client, None)]).await;
    let cp_ref = &mut cp;
    let mut report = under_load(client.outbound, URL, async || {
        cp_ref.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cp_ref.restart().await;
    })
    .await;
    report.print(
        "kill -9 of the control plane, restarted on its state",
        client.memory_kib().1,
    );
    assert!(
        report.failed.is_empty(),
        "the control plane's death cost requests: {:?}",
        report.failed
    );
    // The proxies came back to the restarted control plane, on the same CA.
    crate::identity::all_acked(&cp, &manifests, &[(&client, None)]).await;
    let resp = client::get(client.outbound, URL).await.unwrap();
    assert_eq!(resp.status(), 200);
}
