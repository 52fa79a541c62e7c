//! What tracing costs: weft one hop without tracing, with an OTLP endpoint and sampling at 0,
//! and with sampling at 1% (each sampled request exported to a receiver in this process),
//! measured in the same interleaved rounds: CPU per 1,000 requests at the fixed rate and at
//! saturation, as ratios to tracing disabled.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use weft_tests::otlp::OtlpReceiver;

use crate::load::{LATENCY_SPAN, latency, saturation};
use crate::stats::median;
use crate::target::weft_one_hop_with;

const IPS: [&str; 3] = ["127.88.0.20", "127.88.0.21", "127.88.0.22"];

/// Per configuration: (name, CPU per 1k at the fixed rate, CPU per 1k at saturation).
pub(crate) type TracingFigures = Vec<(&'static str, f64, f64)>;

pub(crate) async fn tracing_figures(
    scratch: &Path,
    backend: SocketAddr,
    rounds: usize,
    duration: Duration,
) -> anyhow::Result<(TracingFigures, usize)> {
    let receiver = OtlpReceiver::start(IPS[0].parse()?).await;
    let endpoint = receiver.endpoint();
    let off = weft_one_hop_with(scratch, backend, IPS[0], "tracing off", &[]).await?;
    let zero = weft_one_hop_with(
        scratch,
        backend,
        IPS[1],
        "sampling 0",
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "0"],
    )
    .await?;
    let one = weft_one_hop_with(
        scratch,
        backend,
        IPS[2],
        "sampling 1%",
        &["--otlp-endpoint", &endpoint, "--trace-sampling", "0.01"],
    )
    .await?;
    let targets = [&off, &zero, &one];
    let mut fixed: [Vec<f64>; 3] = Default::default();
    let mut sat: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let (_, cpu, _) = saturation(t, duration).await?;
            sat[i].push(cpu);
        }
        let timed = latency(&targets, duration * LATENCY_SPAN).await?;
        for (i, (_, cpu)) in timed.into_iter().enumerate() {
            fixed[i].push(cpu);
        }
        println!(
            "  round {} tracing: cpu at the fixed rate {:.1} / {:.1} / {:.1}, at saturation {:.1} / {:.1} / {:.1} ms per 1k (off / 0 / 1%)",
            round + 1,
            fixed[0][round],
            fixed[1][round],
            fixed[2][round],
            sat[0][round],
            sat[1][round],
            sat[2][round]
        );
    }
    let figures = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name, median(fixed[i].clone()), median(sat[i].clone())))
        .collect();
    Ok((figures, receiver.spans().len()))
}

pub(crate) fn render_tracing(figures: &TracingFigures, exported: usize) -> String {
    let mut out = String::from(
        "\n## What tracing costs (weft one hop)\n\nCPU per 1,000 requests, medians of the rounds; ratios to tracing off.\n\n| tracing | CPU at 2,000 req/s | ratio | CPU at saturation | ratio |\n| --- | --- | --- | --- | --- |\n",
    );
    let (base_fixed, base_sat) = figures.first().map_or((f64::NAN, f64::NAN), |f| (f.1, f.2));
    for (name, cpu_fixed, cpu_sat) in figures {
        let _ = writeln!(
            out,
            "| {name} | {cpu_fixed:.1} ms | {:.2}× | {cpu_sat:.1} ms | {:.2}× |",
            cpu_fixed / base_fixed,
            cpu_sat / base_sat
        );
    }
    let _ = writeln!(
        out,
        "\nThe receiver got {exported} spans from the 1% configuration."
    );
    out
}
