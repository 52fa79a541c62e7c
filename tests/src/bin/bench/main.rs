//! `make bench`: weft against a direct connection and against HAProxy, on loopback, in one run.
//!
//! Core 0 runs the backend, the load generators and the control plane; core 1 runs the proxies
//! under test (one worker thread each), so that every comparison is per core. Each figure is
//! the median of interleaved rounds. CPU time comes from `/proc/<pid>/stat`, memory from
//! `/proc/<pid>/status`, and instruction counts from `valgrind --tool=callgrind`: the figures
//! that do not drift with the machine. Results go to `bench/results/<date>-<commit>.md`.
//!
//! `weft-bench backend ADDR` is the backend: a minimal hyper server (`/` answers "ok" at once,
//! `/slow` after two seconds).
//!
//! This file reads the command line and runs the steps in order; the targets, the measurements
//! and the report live in the modules below.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark driver: a failed setup step aborts the run with its message"
)]

mod backend;
mod callgrind;
mod handshake;
mod http2;
mod load;
mod memory;
mod options;
mod procs;
mod propagation;
mod report;
mod stats;
mod target;
mod tracing;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::backend::backend;
use crate::callgrind::instruction_counts;
use crate::handshake::measure_handshakes;
use crate::http2::{H2_ROUNDS, H2Kind, measure_h2};
use crate::load::{LATENCY_SPAN, RATE, fixed_rate, latency, saturation};
use crate::memory::memory_figures;
use crate::options::Options;
use crate::procs::{Proc, addr, pin, wait_serving};
use crate::propagation::config_figures;
use crate::report::{commit, render, render_h2, today};
use crate::stats::{Figures, Tails, median, median_figures, percentile};
use crate::target::{
    CLIENT_IP, SERVER_IP, Target, WEFT_AA_IP, haproxy_one_hop, haproxy_two_hops, weft_one_hop,
    weft_two_hops, write_weft_config,
};
use crate::tracing::{render_tracing, tracing_figures};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("backend") {
        let addr: SocketAddr = args.get(1).context("backend ADDR")?.parse()?;
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(backend(addr));
    }
    if args.first().map(String::as_str) == Some("fixed") {
        // Latency at the fixed rate, for comparing builds or settings by hand: the targets
        // share one sliced schedule, as in the bench's rounds.
        let usage = "fixed SECONDS ADDR...";
        let seconds: u64 = args.get(1).context(usage)?.parse().context(usage)?;
        let addrs = args[2..]
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        anyhow::ensure!(!addrs.is_empty(), usage);
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let lats = fixed_rate(&addrs, RATE, Duration::from_secs(seconds)).await?;
                for (addr, lat) in addrs.iter().zip(lats) {
                    println!(
                        "{addr}: {} requests at {RATE}/s: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
                        lat.len(),
                        percentile(&lat, 0.5),
                        percentile(&lat, 0.99),
                        percentile(&lat, 0.999)
                    );
                }
                Ok(())
            });
    }
    let mut opts = Options {
        rounds: 5,
        duration: Duration::from_secs(5),
        out: PathBuf::from("bench/results"),
        instructions_only: false,
        tracing_only: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => opts.rounds = it.next().context("--rounds N")?.parse()?,
            "--seconds" => {
                opts.duration = Duration::from_secs(it.next().context("--seconds N")?.parse()?)
            }
            "--out" => opts.out = PathBuf::from(it.next().context("--out DIR")?),
            "--instructions-only" => opts.instructions_only = true,
            "--tracing-only" => opts.tracing_only = true,
            other => bail!(
                "unknown argument {other:?} (--rounds N, --seconds N, --out DIR, --instructions-only, --tracing-only)"
            ),
        }
    }
    // This process (load generators, backend, control plane) stays on core 0; proxies get core 1.
    pin(std::process::id(), "0")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&opts))
}

async fn run(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let me = std::env::current_exe()?;
    let backend_addr = addr(SERVER_IP, 8080);
    let _backend = Proc::spawn(
        "backend",
        Command::new(&me).args(["backend", &backend_addr.to_string()]),
        &scratch.join("backend.log"),
    )?;
    wait_serving(backend_addr, "the backend").await?;
    if opts.instructions_only {
        write_weft_config(&scratch, backend_addr)?;
        for (name, ir) in instruction_counts(&scratch, backend_addr).await? {
            println!("{name}: {ir:.0} instructions per request");
        }
        println!("callgrind profiles kept in {}", scratch.display());
        return Ok(());
    }
    if opts.tracing_only {
        let (figures, exported) =
            tracing_figures(&scratch, backend_addr, opts.rounds, opts.duration).await?;
        println!("{}", render_tracing(&figures, exported));
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(());
    }

    println!(
        "weft-bench: backend on core 0; proxies on core 1; {} rounds of {:?} per figure",
        opts.rounds, opts.duration
    );
    let weft1 = weft_one_hop(&scratch, backend_addr, CLIENT_IP, "weft").await?;
    let weft_aa = weft_one_hop(&scratch, backend_addr, WEFT_AA_IP, "weft A/A").await?;
    let haproxy1 = haproxy_one_hop(&scratch, backend_addr).await?;
    let (weft2, _control) = weft_two_hops(&scratch, backend_addr).await?;
    let haproxy2 = haproxy_two_hops(&scratch, backend_addr, "http", (8002, 8003)).await?;
    let haproxy_tcp = haproxy_two_hops(&scratch, backend_addr, "tcp", (8004, 8005)).await?;
    let direct = Target {
        name: "direct",
        addr: backend_addr,
        procs: Vec::new(),
    };
    // Idle: started and one request served, before any load.
    let idle = [weft1.memory_kib().0, haproxy1.memory_kib().0];
    let targets = [direct, weft1, haproxy1, weft2, haproxy2];

    // Interleaved rounds, so drift hits every target alike. In each: every target at saturation
    // in turn, then all of them at the fixed rate in one sliced schedule ([`schedule`]), with a
    // second weft one-hop instance as an A/A control: its distance from the first is what the
    // run can resolve. Latency percentiles are taken over the samples of all rounds together:
    // a p99 from five times the samples, where a median of five rounds' p99s would rest on
    // one round's tail.
    let mut samples: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    let mut pooled: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..opts.rounds {
        let mut saturated = Vec::new();
        for t in &targets {
            saturated.push(saturation(t, opts.duration).await?);
        }
        let timed: Vec<&Target> = targets.iter().chain([&weft_aa]).collect();
        let fixed = latency(&timed, opts.duration * LATENCY_SPAN).await?;
        for (i, (t, (lat, cpu_fixed))) in timed.iter().zip(fixed).enumerate() {
            let (max_rps, cpu_sat, cpu_sat_user) = saturated.get(i).copied().unwrap_or_default();
            let f = Figures {
                max_rps,
                cpu_sat,
                cpu_sat_user,
                lat: Tails::of(&lat),
                cpu_fixed,
                peak_rss_kib: t.memory_kib().1 as f64,
            };
            println!(
                "  round {} {:<14} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  cpu {:>6.1} / {:>6.1} ms per 1k",
                round + 1,
                t.name,
                f.max_rps,
                f.lat.p50_us,
                f.lat.p99_us,
                f.cpu_fixed,
                f.cpu_sat
            );
            samples.entry(t.name).or_default().push(f);
            pooled.entry(t.name).or_default().extend(lat);
        }
    }
    drop(weft_aa);
    let pooled: BTreeMap<&str, Tails> = pooled
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, Tails::of(&v))
        })
        .collect();
    let direct_lat = pooled.get("direct").copied().unwrap_or_default();
    let medians: BTreeMap<&str, Figures> = samples
        .iter()
        .map(|(k, v)| {
            let lat = pooled.get(k).copied().unwrap_or_default().over(direct_lat);
            (
                *k,
                Figures {
                    lat,
                    ..median_figures(v)
                },
            )
        })
        .collect();

    // HTTP/2 and gRPC, direct and through weft (HAProxy's h2 to the backend is not set up).
    let mut h2_samples: BTreeMap<(&str, &str), Vec<Figures>> = BTreeMap::new();
    for _ in 0..opts.rounds.min(H2_ROUNDS) {
        for kind in [H2Kind::Http2, H2Kind::Grpc] {
            for t in &targets[..2] {
                let f = measure_h2(t, kind, opts.duration).await?;
                println!(
                    "  {:<5} {:<8} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  cpu {:>6.1} ms per 1k",
                    kind.name(),
                    t.name,
                    f.max_rps,
                    f.lat.p50_us,
                    f.lat.p99_us,
                    f.cpu_fixed
                );
                h2_samples.entry((kind.name(), t.name)).or_default().push(f);
            }
        }
    }
    let h2: Vec<((&str, &str), Figures)> = h2_samples
        .iter()
        .map(|(k, v)| (*k, median_figures(v)))
        .collect();

    // New connections, each one mutual-TLS handshake between the two proxies of a pair.
    let mut hs_samples: [Vec<(f64, f64)>; 2] = Default::default();
    for _ in 0..opts.rounds {
        for (i, (t, tunnel)) in [(&targets[3], true), (&haproxy_tcp, false)]
            .into_iter()
            .enumerate()
        {
            let (rate, cpu) = measure_handshakes(t, tunnel, opts.duration).await?;
            println!(
                "  handshakes {:<16} {rate:>8.0} connections/s  cpu {cpu:>6.1} ms per 1k",
                t.name
            );
            hs_samples[i].push((rate, cpu));
        }
    }
    let handshakes = hs_samples.map(|v| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    });
    drop(haproxy_tcp);

    let (tracing, exported) =
        tracing_figures(&scratch, backend_addr, opts.rounds, opts.duration).await?;

    let memory = memory_figures([(&targets[1], idle[0]), (&targets[2], idle[1])]).await?;
    drop(targets);
    let instructions = instruction_counts(&scratch, backend_addr).await?;
    let config = config_figures(&scratch).await?;

    let mut report = render(
        &medians,
        &memory,
        &handshakes,
        &instructions,
        &config,
        opts,
        started.elapsed(),
    );
    report.push_str(&render_h2(&h2));
    report.push_str(&render_tracing(&tracing, exported));
    println!("\n{report}");
    std::fs::create_dir_all(&opts.out)?;
    let file = opts.out.join(format!("{}-{}.md", today(), commit()));
    std::fs::write(&file, &report)?;
    println!("written to {}", file.display());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
