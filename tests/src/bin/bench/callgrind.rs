//! Instructions per request, counted by `valgrind --tool=callgrind` over a one-hop weft and a
//! one-hop HAProxy: a figure that does not drift with the machine.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use crate::procs::{Proc, addr, bin, http1, request, wait_serving};
use crate::target::haproxy_config;

/// Instructions per request from callgrind: two runs of different lengths, so that start-up
/// and shutdown cancel out. (name, instructions per request).
pub(crate) async fn instruction_counts(
    scratch: &Path,
    backend: SocketAddr,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!("valgrind is missing (make bench installs it)");
    }
    let (short, long) = (200u64, 1200u64);
    let mut out = Vec::new();
    // Tracing's share: the same weft with an OTLP endpoint, sampling nothing, and sampling
    // (and exporting) every request, to a receiver in this process.
    let receiver = weft_tests::otlp::OtlpReceiver::start("127.88.0.23".parse()?).await;
    let endpoint = receiver.endpoint();
    for name in ["weft", "haproxy", "weft, sampling 0", "weft, sampling all"] {
        let mut irs = Vec::new();
        for n in [short, long] {
            let file = scratch.join(format!(
                "callgrind-{}-{n}.out",
                name.replace([',', ' '], "")
            ));
            let listen = addr("127.88.0.20", 9000);
            let mut cmd = Command::new("valgrind");
            cmd.args(["--tool=callgrind", "--trace-children=no"])
                .arg(format!("--callgrind-out-file={}", file.display()));
            let tracing: &[&str] = match name {
                "weft, sampling 0" => &["--otlp-endpoint", &endpoint, "--trace-sampling", "0"],
                "weft, sampling all" => &["--otlp-endpoint", &endpoint, "--trace-sampling", "1"],
                _ => &[],
            };
            match name {
                "haproxy" => {
                    let cfg = scratch.join("haproxy-callgrind.cfg");
                    std::fs::write(
                        &cfg,
                        haproxy_config("http", &listen.to_string(), &backend.to_string()),
                    )?;
                    cmd.args(["haproxy", "-db", "-f"]).arg(&cfg);
                }
                _ => {
                    let config = scratch.join("weft.json");
                    cmd.arg(bin("weft-proxy")?).args([
                        "run",
                        "--config",
                        &config.display().to_string(),
                        "--outbound-addr",
                        &listen.to_string(),
                        "--inbound-addr",
                        "127.88.0.20:9001",
                        "--admin-addr",
                        "127.88.0.20:9002",
                        "--namespace",
                        "shop",
                        "--log-level",
                        "warn",
                    ]);
                    cmd.args(tracing);
                }
            }
            let mut proc = Proc::spawn(
                "valgrind",
                &mut cmd,
                &scratch.join(format!("valgrind-{}-{n}.log", name.replace([',', ' '], ""))),
            )?;
            wait_serving(listen, "the proxy under callgrind").await?;
            let mut conn = http1(listen).await?;
            for _ in 0..n {
                let resp = conn.send_request(request("/")).await?;
                anyhow::ensure!(resp.status() == 200, "callgrind run failed");
                resp.into_body().collect().await?;
            }
            drop(conn);
            // A signal that ends the program lets valgrind write its totals. Under valgrind a
            // signal can wait for a blocked system call, so it is repeated, alternating.
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut signals = ["-INT", "-TERM"].iter().cycle();
            'exit: loop {
                let signal = signals.next().copied().unwrap_or("-TERM");
                let _ = Command::new("kill")
                    .args([signal, &proc.pid().to_string()])
                    .status();
                let wait_until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < wait_until {
                    if proc.child.try_wait()?.is_some() {
                        break 'exit;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                anyhow::ensure!(Instant::now() < deadline, "valgrind did not exit");
                // Wake a program blocked in epoll_wait.
                let _ = TcpStream::connect(listen).await;
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let total: f64 = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("summary:")
                        .or_else(|| l.strip_prefix("totals:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .context("no totals in the callgrind output")?;
            irs.push(total);
        }
        // The health polls before the requests are the same in both runs, up to jitter.
        out.push((name, (irs[1] - irs[0]) / (long - short) as f64));
    }
    Ok(out)
}
