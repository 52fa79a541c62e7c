//! Child processes and the plumbing every measurement shares: a process killed when dropped,
//! with its CPU time and memory; pinning to a core; the built binaries; addresses; and the
//! HTTP/1 client that sends the bench's request and waits for a target to serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The Host of every request: the Service `bench.shop` and its port.
pub(crate) const HOST: &str = "bench.shop:8080";

/// Pins every thread of `pid` to `cpus`.
pub(crate) fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed");
    Ok(())
}

/// A child process, killed (by its pid) when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time so far.
    pub(crate) fn cpu(&self) -> Duration {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// User and system CPU time so far, apart.
    pub(crate) fn cpu_split(&self) -> (Duration, Duration) {
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
    pub(crate) fn memory_kib(&self) -> (u64, u64) {
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

pub(crate) fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("binary dir")?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the release binaries first",
        path.display()
    );
    Ok(path)
}

pub(crate) fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Polls `addr` until an HTTP request through it succeeds.
pub(crate) async fn wait_serving(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
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

pub(crate) async fn http1(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

pub(crate) fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, HOST)
        .body(Empty::new())
        .unwrap()
}

pub(crate) fn per_1k(cpu: Duration, requests: u64) -> f64 {
    cpu.as_secs_f64() * 1e3 / (requests.max(1) as f64 / 1000.0)
}
