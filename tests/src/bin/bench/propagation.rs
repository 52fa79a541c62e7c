//! Config propagation: many `weft-proxy` processes subscribed to one `weft control`, timed from
//! a manifest write to each proxy's acknowledgement, and `weft compile` of many routes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt, Empty};

use crate::procs::{addr, bin, http1};
use crate::stats::{median, percentile};
use crate::target::Control;

pub(crate) const PROXIES: usize = 100;
pub(crate) const ROUTES: usize = 10_000;

pub(crate) struct ConfigFigures {
    /// Milliseconds from a manifest write to each proxy's ACK, over every change, sorted.
    pub(crate) small: Vec<f64>,
    pub(crate) small_p99_ms: f64,
    /// The same for one change that adds ROUTES routes.
    pub(crate) big: Vec<f64>,
    pub(crate) compile_ms: f64,
}

/// The control plane's `/status`.
async fn control_status(admin: SocketAddr) -> Option<serde_json::Value> {
    let mut conn = http1(admin).await.ok()?;
    let req = Request::get("/status")
        .header("host", "weft")
        .body(Empty::new())
        .ok()?;
    let resp = conn.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Each proxy's acknowledged version, by pod IP.
async fn acked_versions(admin: SocketAddr) -> BTreeMap<String, (String, bool)> {
    control_status(admin)
        .await
        .and_then(|s| {
            s["proxies"].as_array().map(|l| {
                l.iter()
                    .map(|p| {
                        (
                            p["podIp"].to_string(),
                            (p["acked"].to_string(), p["upToDate"] == true),
                        )
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn write_manifest(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Writes a manifest, then records when each proxy acknowledges a version it did not have:
/// milliseconds from the write, one per proxy.
async fn change(admin: SocketAddr, dir: &Path, name: &str, text: &str) -> anyhow::Result<Vec<f64>> {
    let before = acked_versions(admin).await;
    let t0 = Instant::now();
    write_manifest(dir, name, text)?;
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    let deadline = t0 + Duration::from_secs(60);
    while done.len() < PROXIES {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the change never reached every proxy"
        );
        for (ip, (acked, up_to_date)) in acked_versions(admin).await {
            if up_to_date
                && before.get(&ip).map(|b| &b.0) != Some(&acked)
                && !done.contains_key(&ip)
            {
                done.insert(ip, t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(done.into_values().collect())
}

fn split_manifest(a: u32, b: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: prop, namespace: shop}}\nspec:\n  ports: [{{port: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: prop-v2, namespace: shop}}\nspec:\n  ports: [{{port: 80}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: prop, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: prop, port: 80}}]\n  rules:\n    - backendRefs: [{{name: prop, port: 80, weight: {a}}}, {{name: prop-v2, port: 80, weight: {b}}}]\n"
    )
}

/// Config propagation: PROXIES real `weft-proxy` processes (certified, subscribed) on one
/// `weft control`; for each change, the time from the manifest write until each proxy has
/// acknowledged the new version, read from the control plane's `/status` every 2 ms.
pub(crate) async fn config_figures(scratch: &Path) -> anyhow::Result<ConfigFigures> {
    let dir = scratch.join("propagation");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    write_manifest(&manifests, "prop.yaml", &split_manifest(50, 50))?;
    let weft = bin("weft")?;
    let control = Control::start(&dir, "127.89.0.100").await?;
    let admin = addr(control.ip, 15192);
    let mut proxies = Vec::new();
    for i in 0..PROXIES {
        let ip = format!("127.89.{}.{}", 1 + i / 200, 1 + i % 200);
        proxies.push(control.sidecar(&ip, "prop", &[], &format!("proxy-{i}"))?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let acked = acked_versions(admin).await;
        if acked.len() == PROXIES && acked.values().all(|(_, up)| *up) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{PROXIES} proxies never all subscribed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut small = Vec::new();
    for (a, b) in [(90, 10), (10, 90), (70, 30), (30, 70), (50, 50)] {
        small.extend(change(admin, &manifests, "prop.yaml", &split_manifest(a, b)).await?);
    }
    small.sort_by(f64::total_cmp);
    let routes = many_routes(ROUTES);
    let mut big = change(admin, &manifests, "many.yaml", &routes).await?;
    big.sort_by(f64::total_cmp);
    println!(
        "  config: {} acknowledgements of small changes, p99 {:.1} ms; {ROUTES} routes, p99 {:.1} ms",
        small.len(),
        percentile(&small, 0.99),
        percentile(&big, 0.99)
    );
    drop(proxies);

    // `weft compile` of the same routes.
    let compile_dir = dir.join("compile");
    std::fs::create_dir_all(&compile_dir)?;
    std::fs::write(compile_dir.join("prop.yaml"), split_manifest(50, 50))?;
    std::fs::write(compile_dir.join("many.yaml"), routes)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let status = Command::new(&weft)
            .args(["compile", "-o", "json", "--namespace", "shop", "-f"])
            .arg(&compile_dir)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "weft compile failed");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ConfigFigures {
        small_p99_ms: percentile(&small, 0.99),
        small,
        big,
        compile_ms: median(times),
    })
}

/// `n` HTTPRoutes on Service `prop`, each matching its own path prefix.
fn many_routes(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: prop, port: 80}}]\n  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}]\n      backendRefs: [{{name: prop-v2, port: 80}}]\n"
        );
    }
    s
}
