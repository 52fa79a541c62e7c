//! Load generation over HTTP/1: the closed loop (`wrk`) for throughput, and the open loop at a
//! fixed rate, over one sliced schedule shared by all targets, for latency. Each comes with the
//! proxies' CPU time per 1,000 requests.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::BodyExt;

use crate::procs::{HOST, http1, per_1k, request};
use crate::target::Target;

/// The fixed moderate rate of the latency runs.
pub(crate) const RATE: u32 = 2000;

/// How many times `--seconds` a round at the fixed rate lasts: a p99 is the 1% of the samples,
/// and the one-hop paths are within tens of microseconds of each other there.
pub(crate) const LATENCY_SPAN: u32 = 2;

/// How long the fixed-rate schedule stays with one target before it moves to the next.
pub(crate) const SLICE: Duration = Duration::from_millis(10);

/// Max throughput (wrk, closed loop) through `t`, with the proxies' CPU time per 1,000 requests:
/// (requests per second, all CPU, user-space CPU).
pub(crate) async fn saturation(t: &Target, duration: Duration) -> anyhow::Result<(f64, f64, f64)> {
    let (cpu0, user0) = (t.cpu(), t.user_cpu());
    let (rps, total) = wrk(t.addr, 32, duration)?;
    Ok((
        rps,
        per_1k(t.cpu() - cpu0, total),
        per_1k(t.user_cpu() - user0, total),
    ))
}

/// One round at the fixed rate over all `targets` together ([`fixed_rate`]): each one's latencies
/// (sorted, µs) and its proxies' CPU time per 1,000 requests. A proxy works only in its own
/// slices, so its CPU time over the round is the cost of its own requests.
pub(crate) async fn latency(
    targets: &[&Target],
    duration: Duration,
) -> anyhow::Result<Vec<(Vec<f64>, f64)>> {
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let cpu0: Vec<Duration> = targets.iter().map(|t| t.cpu()).collect();
    let lats = fixed_rate(&addrs, RATE, duration).await?;
    Ok(lats
        .into_iter()
        .zip(targets.iter().zip(cpu0))
        .map(|(lat, (t, c0))| {
            let cpu = per_1k(t.cpu() - c0, lat.len() as u64);
            (lat, cpu)
        })
        .collect())
}

/// `wrk` closed loop over `connections`: (requests per second, requests).
pub(crate) fn wrk(
    target: SocketAddr,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let out = Command::new("taskset")
        .args(["-c", "0", "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("http://{target}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no rate:\n{text}"))?;
    let total = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .with_context(|| format!("wrk printed no count:\n{text}"))?;
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    Ok((rps, total))
}

/// The due times of an open-loop run at `rate` over `targets` targets: request `i` is due at
/// `start + i / rate`, and the requests go to one target for a slice ([`SLICE`]) at a time. So
/// every target is measured across the same stretch of machine time, and a stall of the machine
/// lands on all of them alike instead of on whichever target happened to be measured then.
/// Those stalls set p99 on these VMs, and they last tens of milliseconds: in a hand run of
/// 100 ms slices, a third of one weft's top-1% samples came from a single 43 ms stretch, and
/// two identical wefts differed by up to 2.8× in added p99 over six runs (at most 1.4× with
/// 10 ms slices). So a slice is 10 ms, 20 requests: a stall spreads over several targets.
/// One target at a time keeps the proxies' core to one proxy, as in a run of its own. Each
/// cycle of slices visits every target once, in an order shuffled per cycle, so that no target
/// always comes after the same one: a slice that follows direct's finds the proxies' core
/// idle, and its first requests wait for the core to wake.
///
/// A thread of its own sleeps until each due time (the kernel's high-resolution timers wake it
/// within tens of microseconds) and hands it over. tokio's timer would round every due time up
/// to the next millisecond, and every latency counted from the due time would carry that wait:
/// up to a millisecond of the generator's own in every figure, varying from request to request.
pub(crate) fn schedule(
    rate: u32,
    n: u64,
    targets: usize,
) -> Vec<tokio::sync::mpsc::Receiver<Instant>> {
    let capacity = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..targets.max(1))
        .map(|_| tokio::sync::mpsc::channel(capacity))
        .unzip();
    let period = Duration::from_secs(1) / rate;
    let slice = (u64::from(rate) * SLICE.as_millis() as u64 / 1000).max(1);
    std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(10);
        let mut order: Vec<usize> = (0..txs.len()).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..n {
            let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let at = usize::try_from(i / slice).unwrap_or(0);
            if at % order.len() == 0 && i % slice == 0 {
                shuffle(&mut order, &mut seed);
            }
            let to = order[at % order.len()];
            // The receiver is gone when the run failed early.
            if txs[to].blocking_send(due).is_err() {
                break;
            }
        }
    });
    rxs
}

/// Puts `order` in a new order, from a fixed sequence (xorshift), so runs are repeatable.
fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        order.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

/// An open-loop generator over `targets` ([`schedule`]): each gets `rate` requests per second
/// of its slices, `duration`'s worth in all, over 32 connections of its own. A request's
/// latency is counted from its due time, not from when a connection was free (no coordinated
/// omission). Returns each target's latencies in microseconds, sorted.
pub(crate) async fn fixed_rate(
    targets: &[SocketAddr],
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let per_target = u64::from(rate) * duration.as_secs();
    let n = per_target * targets.len() as u64;
    let mut pools = Vec::new();
    for &target in targets {
        let mut conns = Vec::new();
        for _ in 0..32 {
            conns.push(http1(target).await?);
        }
        pools.push(conns);
    }
    let mut runs = Vec::new();
    for ((rx, conns), &target) in schedule(rate, n, targets.len())
        .into_iter()
        .zip(pools)
        .zip(targets)
    {
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let workers: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    loop {
                        let due = { rx.lock().await.recv().await };
                        let Some(due) = due else { break };
                        let ok = match conn.send_request(request("/")).await {
                            Ok(resp) => {
                                resp.status() == 200 && resp.into_body().collect().await.is_ok()
                            }
                            Err(_) => false,
                        };
                        if ok {
                            lat.push(due.elapsed().as_secs_f64() * 1e6);
                        } else {
                            errors += 1;
                            if let Ok(c) = http1(target).await {
                                conn = c;
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        runs.push((target, workers));
    }
    let mut out = Vec::new();
    for (target, workers) in runs {
        let mut all = Vec::with_capacity(per_target as usize);
        let mut errors = 0;
        for w in workers {
            let (lat, e) = w.await?;
            all.extend(lat);
            errors += e;
        }
        anyhow::ensure!(
            errors == 0,
            "{errors} requests failed at the fixed rate through {target}"
        );
        all.sort_by(f64::total_cmp);
        out.push(all);
    }
    Ok(out)
}
