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

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark driver: a failed setup step aborts the run with its message"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::mesh::{Ep, Mesh};

const HOST: &str = "bench.shop:8080";
const CLIENT_IP: &str = "127.88.0.1";
const SERVER_IP: &str = "127.88.0.2";
/// A second one-hop weft, the A/A control of the latency rounds.
const WEFT_AA_IP: &str = "127.88.0.3";
const HAPROXY_IP: &str = "127.88.0.10";
const CONTROL_IP: &str = "127.88.0.100";
/// The fixed moderate rate of the latency runs.
const RATE: u32 = 2000;

struct Options {
    rounds: usize,
    duration: Duration,
    out: PathBuf,
    /// Only the callgrind step, keeping its output files: for profiling the request path.
    instructions_only: bool,
}

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
            other => bail!(
                "unknown argument {other:?} (--rounds N, --seconds N, --out DIR, --instructions-only)"
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

/// Pins every thread of `pid` to `cpus`.
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed");
    Ok(())
}

async fn backend(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let grpc = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                if grpc {
                    // A unary gRPC answer: one empty message, then `grpc-status: 0` trailers.
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames = futures_util::stream::iter([
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(&[
                            0, 0, 0, 0, 0,
                        ]))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ]);
                    let mut resp = Response::new(http_body_util::StreamBody::new(frames).boxed());
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    return Ok::<_, Infallible>(resp);
                }
                Ok(Response::new(
                    Full::new(Bytes::from_static(b"ok"))
                        .map_err(|e| match e {})
                        .boxed(),
                ))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A child process, killed (by its pid) when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// User and system CPU time so far, apart.
    fn cpu_split(&self) -> (Duration, Duration) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let secs = |t: u64| Duration::from_secs_f64(t as f64 / clock_ticks() as f64);
        (secs(ticks(11)), secs(ticks(12)))
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        weft_tests::proxy::memory_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary dir")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the release binaries first",
        path.display()
    );
    Ok(path)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Polls `addr` until an HTTP request through it succeeds.
async fn wait_serving(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut conn) = http1(addr).await
            && let Ok(resp) = conn.send_request(request("/")).await
            && resp.status() == 200
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} never served a request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http1(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, HOST)
        .body(Empty::new())
        .unwrap()
}

/// One way to reach the backend: its address, and the proxy processes on the path.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    procs: Vec<Arc<Proc>>,
}

impl Target {
    fn cpu(&self) -> Duration {
        self.procs.iter().map(|p| p.cpu()).sum()
    }

    fn user_cpu(&self) -> Duration {
        self.procs.iter().map(|p| p.cpu_split().0).sum()
    }

    /// Summed over the proxies: (RSS, peak RSS) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        self.procs.iter().fold((0, 0), |(r, h), p| {
            let (pr, ph) = p.memory_kib();
            (r + pr, h + ph)
        })
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    /// Closed loop, wrk -t1 -c32.
    max_rps: f64,
    /// Proxy CPU milliseconds per 1,000 requests at saturation.
    cpu_sat: f64,
    /// The user-space part of `cpu_sat`.
    cpu_sat_user: f64,
    /// Latency at the fixed rate.
    lat: Tails,
    /// Proxy CPU milliseconds per 1,000 requests at the fixed rate.
    cpu_fixed: f64,
    peak_rss_kib: f64,
}

/// Latency percentiles of one target in one fixed-rate run, in microseconds, and what they add
/// to direct's in the same run.
#[derive(Debug, Default, Clone, Copy)]
struct Tails {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    added_p50_us: f64,
    added_p99_us: f64,
}

impl Tails {
    /// `lat` sorted.
    fn of(lat: &[f64]) -> Tails {
        Tails {
            p50_us: percentile(lat, 0.50),
            p99_us: percentile(lat, 0.99),
            p999_us: percentile(lat, 0.999),
            added_p50_us: 0.0,
            added_p99_us: 0.0,
        }
    }

    /// What `self` adds to `direct`.
    fn over(self, direct: Tails) -> Tails {
        Tails {
            added_p50_us: self.p50_us - direct.p50_us,
            added_p99_us: self.p99_us - direct.p99_us,
            ..self
        }
    }
    fn median(v: &[Tails]) -> Tails {
        let m = |f: fn(&Tails) -> f64| median(v.iter().map(f).collect());
        Tails {
            p50_us: m(|t| t.p50_us),
            p99_us: m(|t| t.p99_us),
            p999_us: m(|t| t.p999_us),
            added_p50_us: m(|t| t.added_p50_us),
            added_p99_us: m(|t| t.added_p99_us),
        }
    }
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
    println!("\n{report}");
    std::fs::create_dir_all(&opts.out)?;
    let file = opts.out.join(format!("{}-{}.md", today(), commit()));
    std::fs::write(&file, &report)?;
    println!("written to {}", file.display());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// The one-hop proxy's static config: the Service `bench.shop` with the backend as its endpoint.
fn write_weft_config(scratch: &Path, backend: SocketAddr) -> anyhow::Result<PathBuf> {
    let config = Mesh::new("bench")
        .service("shop", "bench", None, 8080, &[Ep::direct(backend)])
        .build();
    let file = scratch.join("weft.json");
    std::fs::write(&file, serde_json::to_vec(&config)?)?;
    Ok(file)
}

/// A one-hop weft for pod `ip`, listening on `ip`:15140.
async fn weft_one_hop(
    scratch: &Path,
    backend: SocketAddr,
    ip: &'static str,
    name: &'static str,
) -> anyhow::Result<Target> {
    let file = write_weft_config(scratch, backend)?;
    let proxy = Proc::spawn(
        name,
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(bin("weft-proxy")?)
            .args([
                "run",
                "--config",
                &file.display().to_string(),
                "--pod-ip",
                ip,
                "--namespace",
                "shop",
                "--log-level",
                "warn",
            ]),
        &scratch.join(format!("weft-{ip}.log")),
    )?;
    let addr = addr(ip, 15140);
    wait_serving(addr, name).await?;
    Ok(Target {
        name,
        addr,
        procs: vec![Arc::new(proxy)],
    })
}

/// `mode http` (with `http-reuse always`) or `mode tcp`.
fn haproxy_config(mode: &str, frontend: &str, backend: &str) -> String {
    let reuse = if mode == "http" {
        "  http-reuse always\n"
    } else {
        ""
    };
    format!(
        "global\n  nbthread 1\n  maxconn 5000\n\ndefaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{reuse}\nfrontend f\n  bind {frontend}\n  default_backend b\n\nbackend b\n  server s1 {backend}\n"
    )
}

async fn start_haproxy(
    scratch: &Path,
    name: &'static str,
    config: &str,
    listen: SocketAddr,
) -> anyhow::Result<Proc> {
    let file = scratch.join(format!("{name}.cfg"));
    std::fs::write(&file, config)?;
    let proc = Proc::spawn(
        name,
        Command::new("taskset")
            .args(["-c", "1", "haproxy", "-db", "-f"])
            .arg(&file),
        &scratch.join(format!("{name}.log")),
    )?;
    wait_serving(listen, name).await?;
    Ok(proc)
}

async fn haproxy_one_hop(scratch: &Path, backend: SocketAddr) -> anyhow::Result<Target> {
    let listen = addr(HAPROXY_IP, 8001);
    let proc = start_haproxy(
        scratch,
        "haproxy",
        &haproxy_config("http", &listen.to_string(), &backend.to_string()),
        listen,
    )
    .await?;
    Ok(Target {
        name: "haproxy",
        addr: listen,
        procs: vec![Arc::new(proc)],
    })
}

/// A `weft control` on `<dir>/manifests` and `<dir>/state`, serving on `ip` (core 0, like
/// this process).
struct Control {
    proc: Proc,
    ip: &'static str,
    dir: PathBuf,
}

impl Control {
    async fn start(dir: &Path, ip: &'static str) -> anyhow::Result<Control> {
        let state = dir.join("state");
        let proc = Proc::spawn(
            "weft control",
            Command::new(bin("weft")?)
                .arg("control")
                .arg("--manifests")
                .arg(dir.join("manifests"))
                .arg("--state")
                .arg(&state)
                .args([
                    "--listen",
                    &addr(ip, 15190).to_string(),
                    "--admin-listen",
                    &addr(ip, 15192).to_string(),
                    "--log-level",
                    "warn",
                ]),
            &dir.join("control.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("trust-anchor.pem").exists()
            || TcpStream::connect(addr(ip, 15190)).await.is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "weft control never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Control {
            proc,
            ip,
            dir: dir.to_owned(),
        })
    }

    /// A weft-proxy on core 1 for pod `ip`, certified as `shop/<service_account>`.
    fn sidecar(
        &self,
        ip: &str,
        service_account: &str,
        extra: &[&str],
        name: &str,
    ) -> anyhow::Result<Proc> {
        let state = self.dir.join("state");
        let out = Command::new(bin("weft")?)
            .args(["token", "create", "--namespace", "shop"])
            .args(["--service-account", service_account, "--state"])
            .arg(&state)
            .output()?;
        anyhow::ensure!(out.status.success(), "weft token create failed");
        let token = self.dir.join(format!("{name}.token"));
        std::fs::write(&token, &out.stdout)?;
        Proc::spawn(
            "weft-proxy",
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(bin("weft-proxy")?)
                .args([
                    "run",
                    "--control-plane",
                    &addr(self.ip, 15190).to_string(),
                    "--trust-anchor",
                    &state.join("trust-anchor.pem").display().to_string(),
                    "--token-file",
                    &token.display().to_string(),
                    "--pod-ip",
                    ip,
                    "--namespace",
                    "shop",
                    "--service-account",
                    service_account,
                    "--log-level",
                    "warn",
                ])
                .args(extra),
            &self.dir.join(format!("{name}.log")),
        )
    }
}

/// Two weft proxies with real identities from `weft control`: client pod → its sidecar →
/// mutual TLS → the server pod's sidecar → the backend.
async fn weft_two_hops(scratch: &Path, backend: SocketAddr) -> anyhow::Result<(Target, Proc)> {
    let manifests = scratch.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("bench.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bench, namespace: shop}}\nspec:\n  selector: {{app: bench}}\n  ports: [{{port: 8080}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: bench, namespace: shop, labels: {{app: bench}}, annotations: {{weft.dev/inject: enabled}}}}\nspec: {{serviceAccountName: bench, containers: [{{name: app}}]}}\nstatus: {{podIP: {}}}\n",
            backend.ip()
        ),
    )?;
    let control = Control::start(scratch, CONTROL_IP).await?;
    // The two-hop client sidecar listens on other ports than the one-hop one, same IP.
    let client_ports = [
        "--outbound-addr",
        "127.88.0.1:25140",
        "--inbound-addr",
        "127.88.0.1:25143",
        "--admin-addr",
        "127.88.0.1:25191",
    ];
    let procs = vec![
        Arc::new(control.sidecar(SERVER_IP, "bench", &[], "sidecar-bench")?),
        Arc::new(control.sidecar(CLIENT_IP, "client", &client_ports, "sidecar-client")?),
    ];
    let addr = addr(CLIENT_IP, 25140);
    wait_serving(addr, "the weft mTLS pair").await?;
    Ok((
        Target {
            name: "weft mTLS",
            addr,
            procs,
        },
        control.proc,
    ))
}

/// Two HAProxies with a throwaway CA: plain HTTP in, TLS with client certificates
/// (`verify required` both ways) between them. In `mode http` the client side keeps and
/// reuses its TLS connections; in `mode tcp` every connection is its own TLS connection.
async fn haproxy_two_hops(
    scratch: &Path,
    backend: SocketAddr,
    mode: &'static str,
    ports: (u16, u16),
) -> anyhow::Result<Target> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let issue = |name: &str| -> anyhow::Result<String> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
    };
    let ca_file = scratch.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    let (server_pem, client_pem) = (scratch.join("server.pem"), scratch.join("client.pem"));
    std::fs::write(&server_pem, issue("bench-server")?)?;
    std::fs::write(&client_pem, issue("bench-client")?)?;
    let middle = addr(HAPROXY_IP, ports.1);
    let server_side = haproxy_config(
        mode,
        &format!(
            "{middle} ssl crt {} ca-file {} verify required",
            server_pem.display(),
            ca_file.display()
        ),
        &backend.to_string(),
    );
    let listen = addr(HAPROXY_IP, ports.0);
    let client_side = haproxy_config(
        mode,
        &listen.to_string(),
        &format!(
            "{middle} ssl crt {} ca-file {} verify required verifyhost bench-server",
            client_pem.display(),
            ca_file.display()
        ),
    );
    let file = scratch.join(format!("haproxy-server-{mode}.cfg"));
    std::fs::write(&file, server_side)?;
    let server = Proc::spawn(
        "haproxy server",
        Command::new("taskset")
            .args(["-c", "1", "haproxy", "-db", "-f"])
            .arg(&file),
        &scratch.join(format!("haproxy-server-{mode}.log")),
    )?;
    let name = if mode == "http" {
        "haproxy-client"
    } else {
        "haproxy-client-tcp"
    };
    let client = start_haproxy(scratch, name, &client_side, listen).await?;
    Ok(Target {
        name: if mode == "http" {
            "haproxy TLS"
        } else {
            "haproxy TLS tcp"
        },
        addr: listen,
        procs: vec![Arc::new(client), Arc::new(server)],
    })
}

/// Max throughput (wrk, closed loop) through `t`, with the proxies' CPU time per 1,000 requests:
/// (requests per second, all CPU, user-space CPU).
async fn saturation(t: &Target, duration: Duration) -> anyhow::Result<(f64, f64, f64)> {
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
async fn latency(targets: &[&Target], duration: Duration) -> anyhow::Result<Vec<(Vec<f64>, f64)>> {
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

fn per_1k(cpu: Duration, requests: u64) -> f64 {
    cpu.as_secs_f64() * 1e3 / (requests.max(1) as f64 / 1000.0)
}

#[derive(Debug, Clone, Copy)]
enum H2Kind {
    Http2,
    Grpc,
}

impl H2Kind {
    fn name(self) -> &'static str {
        match self {
            H2Kind::Http2 => "HTTP/2",
            H2Kind::Grpc => "gRPC",
        }
    }

    fn request(self) -> Request<Full<Bytes>> {
        match self {
            H2Kind::Http2 => Request::get(format!("http://{HOST}/"))
                .version(http::Version::HTTP_2)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            H2Kind::Grpc => Request::post(format!("http://{HOST}/bench.Bench/Call"))
                .version(http::Version::HTTP_2)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .unwrap(),
        }
    }
}

async fn h2_client(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One HTTP/2 exchange, body and trailers read; for gRPC, `grpc-status: 0` required.
async fn h2_call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    kind: H2Kind,
) -> bool {
    let Ok(resp) = sender.send_request(kind.request()).await else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let Ok(collected) = resp.into_body().collect().await else {
        return false;
    };
    match kind {
        H2Kind::Http2 => true,
        H2Kind::Grpc => collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s == "0"),
    }
}

/// HTTP/2 over one connection: closed loop with 32 concurrent streams, then the fixed rate
/// open loop (each request its own stream, due at its scheduled time).
async fn measure_h2(t: &Target, kind: H2Kind, duration: Duration) -> anyhow::Result<Figures> {
    let sender = h2_client(t.addr).await?;
    let cpu0 = t.cpu();
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let mut s = sender.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    if h2_call(&mut s, kind).await {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut total, mut failed) = (0u64, 0u64);
    for w in workers {
        let (o, f) = w.await?;
        total += o;
        failed += f;
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} {} calls failed through {}",
        kind.name(),
        t.name
    );
    let rps = total as f64 / started.elapsed().as_secs_f64();
    let cpu_sat = per_1k(t.cpu() - cpu0, total);

    let cpu1 = t.cpu();
    let n = u64::from(RATE) * duration.as_secs();
    let mut dues = schedule(RATE, n, 1).remove(0);
    let mut calls = Vec::with_capacity(n as usize);
    while let Some(due) = dues.recv().await {
        let mut s = sender.clone();
        calls.push(tokio::spawn(async move {
            let ok = h2_call(&mut s, kind).await;
            (ok, due.elapsed().as_secs_f64() * 1e6)
        }));
    }
    let mut lat = Vec::with_capacity(calls.len());
    for c in calls {
        let (ok, us) = c.await?;
        anyhow::ensure!(
            ok,
            "a {} call failed at the fixed rate through {}",
            kind.name(),
            t.name
        );
        lat.push(us);
    }
    lat.sort_by(f64::total_cmp);
    let cpu_fixed = per_1k(t.cpu() - cpu1, n);
    Ok(Figures {
        max_rps: rps,
        cpu_sat,
        cpu_sat_user: 0.0,
        lat: Tails::of(&lat),
        cpu_fixed,
        peak_rss_kib: t.memory_kib().1 as f64,
    })
}

fn render_h2(rows: &[((&str, &str), Figures)]) -> String {
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

/// `wrk` closed loop over `connections`: (requests per second, requests).
fn wrk(target: SocketAddr, connections: u32, duration: Duration) -> anyhow::Result<(f64, u64)> {
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
fn schedule(rate: u32, n: u64, targets: usize) -> Vec<tokio::sync::mpsc::Receiver<Instant>> {
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

/// How many times `--seconds` a round at the fixed rate lasts: a p99 is the 1% of the samples,
/// and the one-hop paths are within tens of microseconds of each other there.
const LATENCY_SPAN: u32 = 2;

/// Rounds of the HTTP/2 and gRPC figures, which compare weft with direct only: three, at most,
/// leave the time to the latency rounds.
const H2_ROUNDS: usize = 3;

/// How long the fixed-rate schedule stays with one target before it moves to the next.
const SLICE: Duration = Duration::from_millis(10);

/// An open-loop generator over `targets` ([`schedule`]): each gets `rate` requests per second
/// of its slices, `duration`'s worth in all, over 32 connections of its own. A request's
/// latency is counted from its due time, not from when a connection was free (no coordinated
/// omission). Returns each target's latencies in microseconds, sorted.
async fn fixed_rate(
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median_figures(v: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    Figures {
        max_rps: m(|f| f.max_rps),
        cpu_sat: m(|f| f.cpu_sat),
        cpu_sat_user: m(|f| f.cpu_sat_user),
        lat: Tails::median(&v.iter().map(|f| f.lat).collect::<Vec<_>>()),
        cpu_fixed: m(|f| f.cpu_fixed),
        peak_rss_kib: m(|f| f.peak_rss_kib),
    }
}

/// New connections through a two-hop pair for `duration`, 16 at a time, each carrying one
/// request and closing, so that each costs one TLS handshake between the proxies. With
/// `tunnel`, the request goes through an HTTP CONNECT tunnel (weft); otherwise the bytes go
/// as they are (HAProxy in `mode tcp`). Returns (connections per second, CPU ms per 1,000).
async fn measure_handshakes(
    t: &Target,
    tunnel: bool,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let cpu0 = t.cpu();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let addr = t.addr;
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    one_connection(addr, tunnel).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (t.cpu() - cpu0).as_secs_f64();
    anyhow::ensure!(total > 0, "no connection completed through {}", t.name);
    Ok((total as f64 / elapsed, cpu * 1e6 / total as f64))
}

/// One connection carrying one request; fails unless the backend's answer comes back whole.
async fn one_connection(addr: SocketAddr, tunnel: bool) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    if tunnel {
        stream
            .write_all(format!("CONNECT {HOST} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await?;
        // Nothing follows the answer's head until the request is sent.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the tunnel closed before its answer");
            head.extend_from_slice(&chunk[..n]);
        }
        anyhow::ensure!(
            head.starts_with(b"HTTP/1.1 200"),
            "CONNECT refused: {}",
            String::from_utf8_lossy(&head)
        );
    }
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    anyhow::ensure!(
        answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"ok"),
        "unexpected answer: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// RSS of the one-hop proxies, in KiB: idle (measured before any load), with 1,000 open
/// keep-alive connections, the highest seen under closed-loop load over 1,000 connections,
/// and with 1,000 concurrent slow requests.
struct Memory {
    rows: Vec<MemoryRow>,
}

struct MemoryRow {
    name: &'static str,
    idle: u64,
    open: u64,
    loaded: u64,
    slow: u64,
}

/// Waits (up to 5 s) until the proxies' RSS has stopped falling: less than 1% over 500 ms.
async fn settle(t: &Target) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = t.memory_kib().0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = t.memory_kib().0;
        if now + last / 100 >= last {
            return;
        }
        last = now;
    }
}

async fn memory_figures(targets: [(&Target, u64); 2]) -> anyhow::Result<Memory> {
    let mut rows = Vec::new();
    for (t, idle) in targets {
        let mut conns = Vec::new();
        for _ in 0..1000 {
            let mut c = http1(t.addr).await?;
            c.send_request(request("/"))
                .await?
                .into_body()
                .collect()
                .await?;
            conns.push(c);
        }
        let open = t.memory_kib().0;
        drop(conns);
        // What the closed connections freed is still resident for a while (weft's allocator
        // returns pages after a second); measured on top of it, the next figure would depend on
        // when it was taken.
        settle(t).await;
        let slow: Vec<_> = (0..1000)
            .map(|_| {
                let a = t.addr;
                tokio::spawn(async move {
                    let mut c = http1(a).await?;
                    let resp = c.send_request(request("/slow")).await?;
                    resp.into_body().collect().await?;
                    anyhow::Ok(())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let in_flight = t.memory_kib().0;
        for s in slow {
            s.await??;
        }
        // Last, since what the allocator keeps from it would count in the figures above:
        // load over 1,000 connections, RSS sampled every 100 ms; the highest sample counts.
        let (addr, duration) = (t.addr, Duration::from_secs(5));
        let load = std::thread::spawn(move || wrk(addr, 1000, duration));
        let mut loaded = 0;
        while !load.is_finished() {
            loaded = loaded.max(t.memory_kib().0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        load.join()
            .map_err(|_| anyhow::anyhow!("the wrk thread panicked"))??;
        rows.push(MemoryRow {
            name: t.name,
            idle,
            open,
            loaded,
            slow: in_flight,
        });
    }
    Ok(Memory { rows })
}

/// Instructions per request from callgrind: two runs of different lengths, so that start-up
/// and shutdown cancel out. (name, instructions per request).
async fn instruction_counts(
    scratch: &Path,
    backend: SocketAddr,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!("valgrind is missing (make bench installs it)");
    }
    let (short, long) = (200u64, 1200u64);
    let mut out = Vec::new();
    for name in ["weft", "haproxy"] {
        let mut irs = Vec::new();
        for n in [short, long] {
            let file = scratch.join(format!("callgrind-{name}-{n}.out"));
            let listen = addr("127.88.0.20", 9000);
            let mut cmd = Command::new("valgrind");
            cmd.args(["--tool=callgrind", "--trace-children=no"])
                .arg(format!("--callgrind-out-file={}", file.display()));
            match name {
                "weft" => {
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
                }
                _ => {
                    let cfg = scratch.join("haproxy-callgrind.cfg");
                    std::fs::write(
                        &cfg,
                        haproxy_config("http", &listen.to_string(), &backend.to_string()),
                    )?;
                    cmd.args(["haproxy", "-db", "-f"]).arg(&cfg);
                }
            }
            let mut proc = Proc::spawn(
                "valgrind",
                &mut cmd,
                &scratch.join(format!("valgrind-{name}-{n}.log")),
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

fn render(
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
    if let [(_, w), (_, h)] = instructions {
        let _ = writeln!(s, "| weft / HAProxy | {:.2} |", w / h);
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

const PROXIES: usize = 100;
const ROUTES: usize = 10_000;

struct ConfigFigures {
    /// Milliseconds from a manifest write to each proxy's ACK, over every change, sorted.
    small: Vec<f64>,
    small_p99_ms: f64,
    /// The same for one change that adds ROUTES routes.
    big: Vec<f64>,
    compile_ms: f64,
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
async fn config_figures(scratch: &Path) -> anyhow::Result<ConfigFigures> {
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

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "undated".into(), |s| s.trim().to_owned())
}

/// The commit measured; `-dirty` when the tree has uncommitted changes outside the results.
fn commit() -> String {
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
