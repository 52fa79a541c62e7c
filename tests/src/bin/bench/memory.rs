//! The one-hop proxies' resident memory: idle, with many open connections, with many slow
//! requests in flight, and under load over many connections.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::load::wrk;
use crate::procs::{http1, request};
use crate::target::Target;

/// RSS of the one-hop proxies, in KiB: idle (measured before any load), with 1,000 open
/// keep-alive connections, the highest seen under closed-loop load over 1,000 connections,
/// and with 1,000 concurrent slow requests.
pub(crate) struct Memory {
    pub(crate) rows: Vec<MemoryRow>,
}

pub(crate) struct MemoryRow {
    pub(crate) name: &'static str,
    pub(crate) idle: u64,
    pub(crate) open: u64,
    pub(crate) loaded: u64,
    pub(crate) slow: u64,
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

pub(crate) async fn memory_figures(targets: [(&Target, u64); 2]) -> anyhow::Result<Memory> {
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
