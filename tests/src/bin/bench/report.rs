//! The report: the Markdown written to `bench/results/<date>-<commit>.md` and printed at the end,
//! with the date and the commit measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::http2::H2_ROUNDS;
use crate::load::{LATENCY_SPAN, RATE, SLICE};
use crate::memory::Memory;
use crate::options::Options;
use crate::propagation::{ConfigFigures, PROXIES, ROUTES};
use crate::stats::{Figures, percentile};

pub(crate) fn render(
    m: &BTreeMap<&str, Figures>,
    memory: &Memory,
    handshakes: &[(f64, f64); 2],
    instructions: &[(&str, f64)],
    config: &ConfigFigures,
    opts: &Options,
    took: Duration,
) -> String {
    let get = |n: &str| m.get(n).cloned().unwrap_or_default();
    let (direct, weft, haproxy, weft2, haproxy2, weft_aa) = (
        get("direct"),
        get("weft"),
        get("haproxy"),
        get("weft mTLS"),
        get("haproxy TLS"),
        get("weft A/A"),
    );
    let mut s = String::new();
    let _ = writeln!(s, "# weft benchmark, {} (commit {})\n", today(), commit());
    let _ = writeln!(
        s,
        "Loopback, 2 cores: backend and load on core 0, proxies on core 1 with one worker thread each. \
{rounds} interleaved rounds of {secs} s per target and figure ({lsecs} s at the fixed rate; HTTP/2 and gRPC {h2rounds} rounds); \
medians of the rounds, but for latency.\n\n\
- Max req/s: closed loop, `wrk -t1 -c32`, one target after another.\n\
- Latency: fixed rate, {RATE} requests/s per target, open loop over 32 connections per target, counted from each \
request's scheduled time. The targets share one schedule that moves to the next target every {slice} ms, so all of \
them are measured across the same stretch of each round. Percentiles are over all rounds' samples together \
({pooled} per target); added latency is over direct's.\n\
- A/A: a second weft one-hop instance, the same binary and config, in the same slices. Its distance from the first \
is what this run can resolve: on these VMs a request that meets a halted virtual CPU waits on the hypervisor, and \
those waits, not the proxies, set most of p99.\n\
- CPU: the proxies' user+system time per 1,000 requests from /proc/<pid>/stat (two processes for the two-hop \
rows). Ratios are weft / HAProxy: below 1 is better for weft.\n",
        rounds = opts.rounds,
        secs = opts.duration.as_secs(),
        lsecs = (opts.duration * LATENCY_SPAN).as_secs(),
        h2rounds = opts.rounds.min(H2_ROUNDS),
        slice = SLICE.as_millis(),
        pooled = opts.rounds as u64 * u64::from(RATE) * (opts.duration * LATENCY_SPAN).as_secs()
    );
    let _ = writeln!(
        s,
        "| path | max req/s | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | CPU ms/1k (fixed) | CPU ms/1k (saturated) | peak RSS KiB |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let or_dash = |v: f64, digits: usize| {
        if v > 0.0 {
            format!("{v:.digits$}")
        } else {
            "-".to_string()
        }
    };
    for (name, f) in [
        ("direct", &direct),
        ("weft, one hop", &weft),
        ("weft, one hop (A/A copy)", &weft_aa),
        ("HAProxy, one hop", &haproxy),
        ("weft, two hops, mTLS", &weft2),
        ("HAProxy, two hops, TLS", &haproxy2),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            or_dash(f.max_rps, 0),
            f.lat.p50_us,
            f.lat.p99_us,
            f.lat.p999_us,
            f.lat.added_p50_us,
            f.lat.added_p99_us,
            or_dash(f.cpu_fixed, 2),
            or_dash(f.cpu_sat, 2),
            or_dash(f.peak_rss_kib, 0)
        );
    }
    let ratio = |a: f64, b: f64| {
        if b.abs() > f64::EPSILON {
            a / b
        } else {
            f64::NAN
        }
    };
    let _ = writeln!(
        s,
        "\n| ratio | max req/s | added p50 | added p99 | p99.9 | CPU (fixed) | CPU (saturated) |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, w, h) in [
        ("weft / HAProxy, one hop", &weft, &haproxy),
        ("weft / HAProxy, two hops", &weft2, &haproxy2),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ratio(w.max_rps, h.max_rps),
            ratio(w.lat.added_p50_us, h.lat.added_p50_us),
            ratio(w.lat.added_p99_us, h.lat.added_p99_us),
            ratio(w.lat.p999_us, h.lat.p999_us),
            ratio(w.cpu_fixed, h.cpu_fixed),
            ratio(w.cpu_sat, h.cpu_sat),
        );
    }
    let _ = writeln!(
        s,
        "| A/A: weft copy / weft, one hop | - | {:.2} | {:.2} | {:.2} | {:.2} | - |",
        ratio(weft_aa.lat.added_p50_us, weft.lat.added_p50_us),
        ratio(weft_aa.lat.added_p99_us, weft.lat.added_p99_us),
        ratio(weft_aa.lat.p999_us, weft.lat.p999_us),
        ratio(weft_aa.cpu_fixed, weft.cpu_fixed),
    );
    let _ = writeln!(
        s,
        "\nSaturated CPU per 1,000 requests, user space and kernel apart (the kernel's share is the sockets' work, \
which both proxies do alike; the user-space share is the proxy's own code):\n"
    );
    let _ = writeln!(s, "| path | user ms/1k | system ms/1k |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    for (name, f) in [
        ("weft, one hop", &weft),
        ("HAProxy, one hop", &haproxy),
        ("weft, two hops, mTLS", &weft2),
        ("HAProxy, two hops, TLS", &haproxy2),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {:.2} |",
            f.cpu_sat_user,
            f.cpu_sat - f.cpu_sat_user
        );
    }
    let _ = writeln!(
        s,
        "\n## Handshake cost (two hops, a new connection each time)\n\n\
16 concurrent clients open a connection, send one request with `Connection: close`, read the answer and close. \
weft: an HTTP CONNECT tunnel through the client proxy, which opens its own mutual-TLS connection to the server proxy \
for every tunnel; HAProxy: `mode tcp` on both sides, one TLS connection with client certificates per connection. \
Both resume TLS sessions as they do by default. CPU: both proxies of the pair.\n"
    );
    let _ = writeln!(
        s,
        "| path | new connections/s | CPU ms per 1,000 new connections |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: |");
    let [(w_rate, w_cpu), (h_rate, h_cpu)] = *handshakes;
    let _ = writeln!(
        s,
        "| weft, mTLS per CONNECT tunnel | {w_rate:.0} | {w_cpu:.1} |"
    );
    let _ = writeln!(
        s,
        "| HAProxy, TLS per connection | {h_rate:.0} | {h_cpu:.1} |"
    );
    let _ = writeln!(
        s,
        "| weft / HAProxy | {:.2} | {:.2} |",
        ratio(w_rate, h_rate),
        ratio(w_cpu, h_cpu)
    );
    let _ = writeln!(s, "\n## Memory (one hop, VmRSS)\n");
    let _ = writeln!(
        s,
        "| proxy | idle KiB | 1,000 open keep-alive connections KiB | load over 1,000 connections (wrk -c1000), highest KiB | 1,000 concurrent slow requests KiB |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for r in &memory.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.name, r.idle, r.open, r.loaded, r.slow
        );
    }
    let _ = writeln!(
        s,
        "\n## Instructions per request (callgrind, one hop, keep-alive, sequential)\n"
    );
    let _ = writeln!(s, "| proxy | instructions per request |");
    let _ = writeln!(s, "| --- | ---: |");
    for (name, ir) in instructions {
        let _ = writeln!(s, "| {name} | {ir:.0} |");
    }
    let ir = |name: &str| {
        instructions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ir)| *ir)
    };
    if let (Some(w), Some(h)) = (ir("weft"), ir("haproxy")) {
        let _ = writeln!(s, "| weft / HAProxy | {:.2} |", w / h);
    }
    if let (Some(w), Some(zero), Some(all)) =
        (ir("weft"), ir("weft, sampling 0"), ir("weft, sampling all"))
    {
        let _ = writeln!(
            s,
            "| weft, sampling 0 / weft | {:.2} |\n| one span exported, in instructions | {:.0} |\n| weft, sampling 1% / weft (estimated) | {:.3} |",
            zero / w,
            all - zero,
            (zero + (all - zero) / 100.0) / w
        );
    }
    let _ = writeln!(
        s,
        "\n## Config ({PROXIES} weft-proxy processes subscribed to one weft control)\n"
    );
    let _ = writeln!(
        s,
        "| change | proxies x changes | p50 ms | p99 ms | max ms |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        s,
        "| a route's weights (manifest write → each proxy's ACK) | {} | {:.1} | {:.1} | {:.1} |",
        config.small.len(),
        percentile(&config.small, 0.5),
        config.small_p99_ms,
        percentile(&config.small, 1.0)
    );
    let _ = writeln!(
        s,
        "| {ROUTES} HTTPRoutes added (write → each ACK) | {} | {:.1} | {:.1} | {:.1} |",
        config.big.len(),
        percentile(&config.big, 0.5),
        percentile(&config.big, 0.99),
        percentile(&config.big, 1.0)
    );
    let _ = writeln!(
        s,
        "\n`weft compile` of {ROUTES} HTTPRoutes (parse, check, compile, print; median of 3): {:.0} ms.",
        config.compile_ms
    );
    let weft_mem = memory
        .rows
        .first()
        .map_or((0, 0, 0, 0), |r| (r.idle, r.open, r.loaded, r.slow));
    let _ = writeln!(s, "\n## SPEC section 9\n");
    let verdict = |ok: bool| if ok { "holds" } else { "DOES NOT HOLD" };
    let _ = writeln!(
        s,
        "- Added p99 over direct, one hop: weft {:.0} µs vs HAProxy {:.0} µs: {} ({:.2}; the A/A copy of weft was {:.2} of the first).",
        weft.lat.added_p99_us,
        haproxy.lat.added_p99_us,
        verdict(weft.lat.added_p99_us <= haproxy.lat.added_p99_us),
        ratio(weft.lat.added_p99_us, haproxy.lat.added_p99_us),
        ratio(weft_aa.lat.added_p99_us, weft.lat.added_p99_us)
    );
    let _ = writeln!(
        s,
        "- Added p99 over direct, two hops with mTLS: weft {:.0} µs vs HAProxy {:.0} µs: {} ({:.2}; the A/A copy of weft was {:.2} of the first).",
        weft2.lat.added_p99_us,
        haproxy2.lat.added_p99_us,
        verdict(weft2.lat.added_p99_us <= haproxy2.lat.added_p99_us),
        ratio(weft2.lat.added_p99_us, haproxy2.lat.added_p99_us),
        ratio(weft_aa.lat.added_p99_us, weft.lat.added_p99_us)
    );
    let _ = writeln!(
        s,
        "- CPU per request, one hop: fixed rate {:.2} vs {:.2} ms/1k ({}), saturated {:.2} vs {:.2} ms/1k ({}).",
        weft.cpu_fixed,
        haproxy.cpu_fixed,
        verdict(weft.cpu_fixed <= haproxy.cpu_fixed),
        weft.cpu_sat,
        haproxy.cpu_sat,
        verdict(weft.cpu_sat <= haproxy.cpu_sat)
    );
    let _ = writeln!(
        s,
        "- Memory: idle {} KiB (budget 10 MB: {}); 1,000 open connections {} KiB, under load over 1,000 connections {} KiB, 1,000 concurrent slow requests {} KiB (budget 20 MB: {}).",
        weft_mem.0,
        verdict(weft_mem.0 <= 10 * 1024),
        weft_mem.1,
        weft_mem.2,
        weft_mem.3,
        verdict(weft_mem.1.max(weft_mem.2).max(weft_mem.3) <= 20 * 1024)
    );
    let _ = writeln!(
        s,
        "- Config propagation to {} proxies, p99 from the manifest write to each ACK: {:.1} ms (budget 100 ms: {}).",
        PROXIES,
        config.small_p99_ms,
        verdict(config.small_p99_ms <= 100.0)
    );
    let _ = writeln!(
        s,
        "- Hot swap and certificate rotation under load losing zero requests: asserted by the end-to-end tests (tests/e2e/control_plane.rs, tests/e2e/identity.rs), not timed here."
    );
    let _ = writeln!(s, "\nThe run took {:.0} s.", took.as_secs_f64());
    s
}

pub(crate) fn render_h2(rows: &[((&str, &str), Figures)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## HTTP/2 and gRPC (one connection; through weft vs direct)\n"
    );
    let _ = writeln!(
        s,
        "Closed loop: 32 concurrent streams. Fixed rate: {RATE} calls/s, each its own stream, latency from its scheduled time.\n"
    );
    let _ = writeln!(
        s,
        "| protocol | path | max req/s | p50 µs | p99 µs | p99.9 µs | CPU ms/1k (fixed) | CPU ms/1k (saturated) |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((kind, path), f) in rows {
        let _ = writeln!(
            s,
            "| {kind} | {path} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            f.max_rps, f.lat.p50_us, f.lat.p99_us, f.lat.p999_us, f.cpu_fixed, f.cpu_sat
        );
    }
    s
}

pub(crate) fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "undated".into(), |s| s.trim().to_owned())
}

/// The commit measured; `-dirty` when the tree has uncommitted changes outside the results.
pub(crate) fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let hash = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!bench/results",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}-dirty") } else { hash }
}
