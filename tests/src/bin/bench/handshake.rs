//! The cost of a new connection through a two-hop pair: one TLS handshake between the proxies
//! per connection, each connection carrying one request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::procs::HOST;
use crate::target::Target;

/// New connections through a two-hop pair for `duration`, 16 at a time, each carrying one
/// request and closing, so that each costs one TLS handshake between the proxies. With
/// `tunnel`, the request goes through an HTTP CONNECT tunnel (weft); otherwise the bytes go
/// as they are (HAProxy in `mode tcp`). Returns (connections per second, CPU ms per 1,000).
pub(crate) async fn measure_handshakes(
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
