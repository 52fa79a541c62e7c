//! HTTP/2 and gRPC over one connection: the closed loop with 32 concurrent streams, then the
//! fixed rate with each call its own stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::load::{RATE, schedule};
use crate::procs::{HOST, per_1k};
use crate::stats::{Figures, Tails};
use crate::target::Target;

/// Rounds of the HTTP/2 and gRPC figures, which compare weft with direct only: three, at most,
/// leave the time to the latency rounds.
pub(crate) const H2_ROUNDS: usize = 3;

#[derive(Debug, Clone, Copy)]
pub(crate) enum H2Kind {
    Http2,
    Grpc,
}

impl H2Kind {
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) async fn measure_h2(
    t: &Target,
    kind: H2Kind,
    duration: Duration,
) -> anyhow::Result<Figures> {
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
