//! Many clients at once: the proxy holds at most `--max-connections` downstream connections
//! (inbound and outbound together, as Istio's `globalDownstreamConnectionLimit`), and beyond
//! resets a new one at once and counts it: a refusal, never a hang. Room made by a closing
//! connection is taken again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use weft_tests::eventually;
use weft_tests::mesh::Mesh;

use crate::bad_input::{assert_still_serving, proxy_with};

/// Connects, and reads until the proxy ends the connection (or a second passes with it open).
/// True when the proxy closed or reset it.
async fn refused(addr: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return true;
    };
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn beyond_the_connection_limit_a_new_connection_is_reset_and_counted() {
    // Idle connections wait for their first bytes far longer than this test runs.
    let flags = ["--max-connections", "4", "--detect-timeout", "60s"];
    let (proxy, _app) = proxy_with(Mesh::new("c1"), &flags).await;
    // Four idle clients: three on the outbound listener, one on the inbound one.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(proxy.outbound).await.unwrap());
    }
    idle.push(TcpStream::connect(proxy.inbound).await.unwrap());
    eventually("four connections held", Duration::from_secs(10), || async {
        let open = proxy
            .metric(r#"weft_open_connections{direction="outbound"}"#)
            .await
            + proxy
                .metric(r#"weft_open_connections{direction="inbound"}"#)
                .await;
        (open == 4.0).then_some(())
    })
    .await;
    assert!(refused(proxy.outbound).await, "a fifth on outbound");
    assert!(refused(proxy.inbound).await, "a fifth on inbound");
    assert_eq!(
        proxy
            .metric(r#"weft_refused_connections_total{direction="outbound"}"#)
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric(r#"weft_refused_connections_total{direction="inbound"}"#)
            .await,
        1.0
    );
    // One client leaves: its place is taken by the next request.
    drop(idle.pop());
    eventually("room again", Duration::from_secs(10), || async {
        let open = proxy
            .metric(r#"weft_open_connections{direction="outbound"}"#)
            .await
            + proxy
                .metric(r#"weft_open_connections{direction="inbound"}"#)
                .await;
        (open == 3.0).then_some(())
    })
    .await;
    assert_still_serving(&proxy).await;
}

/// Sends `n` requests, each on a new connection, and counts the 200s (saying why any other
/// answer came).
async fn served(proxy: &weft_tests::proxy::Proxy, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        match weft_tests::client::get(proxy.outbound, "http://ok/").await {
            Ok(resp) if resp.status() == 200 => ok += 1,
            Ok(resp) => eprintln!(
                "answered {} {}",
                resp.status(),
                weft_tests::client::error_header(&resp)
            ),
            Err(e) => eprintln!("failed: {e:#}"),
        }
    }
    ok
}

/// 5,000 idle connections, then 2,000 slowloris clients trickling a head, then 500 clients
/// trickling a body: the header-read timeout cuts the slowloris ones, and legitimate clients
/// are served all along. The memory figures are printed for the record.
#[tokio::test]
async fn idle_slowloris_and_slow_body_clients_leave_the_others_served() {
    use tokio::io::AsyncWriteExt;
    let flags = ["--header-read-timeout", "3s", "--detect-timeout", "60s"];
    let (proxy, _app) = proxy_with(Mesh::new("c1"), &flags).await;
    // Two legitimate clients, keep-alive, all through the test.
    let legit = weft_tests::legit::start(proxy.outbound, "http://ok/", 2);
    let open = || async {
        proxy
            .metric(r#"weft_open_connections{direction="outbound"}"#)
            .await
    };
    let (rss_before, _) = proxy.memory_kib();

    // In batches that the proxy accepts before the next: a burst beyond the listen backlog
    // would have its handshakes retried with backoff, for seconds.
    let mut idle = Vec::new();
    for _ in 0..5 {
        for _ in 0..1_000 {
            idle.push(TcpStream::connect(proxy.outbound).await.unwrap());
        }
        let held = idle.len() as f64;
        eventually(
            "the idle connections held",
            Duration::from_secs(30),
            || async { (open().await >= held).then_some(()) },
        )
        .await;
    }
    let (rss_idle, _) = proxy.memory_kib();
    assert_eq!(
        served(&proxy, 20).await,
        20,
        "served beside 5,000 idle connections"
    );
    eprintln!(
        "5,000 idle connections: RSS {rss_before} -> {rss_idle} KiB, {} bytes each",
        (rss_idle.saturating_sub(rss_before)) * 1024 / 5_000
    );
    drop(idle);
    eventually("the idle ones gone", Duration::from_secs(30), || async {
        (open().await < 10.0).then_some(())
    })
    .await;

    // Slowloris: a head never finished, a byte every half second, for at most 20 s.
    let slowloris: Vec<_> = (0..2_000)
        .map(|_| {
            let addr = proxy.outbound;
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.ok()?;
                tcp.write_all(b"GET http://ok/ HTTP/1.1\r\nHost: ok\r\nx-slow: ")
                    .await
                    .ok()?;
                let started = std::time::Instant::now();
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if tcp.write_all(b"a").await.is_err() {
                        break;
                    }
                }
                let mut answer = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
                    .await;
                Some((started.elapsed(), answer))
            })
        })
        .collect();
    eventually(
        "2,000 slowloris clients connected",
        Duration::from_secs(30),
        || async { (open().await >= 1_500.0).then_some(()) },
    )
    .await;
    let (rss_slowloris, _) = proxy.memory_kib();
    assert_eq!(
        served(&proxy, 20).await,
        20,
        "served beside 2,000 slowloris clients"
    );
    let mut cut = 0;
    for client in slowloris {
        if let Some((_, answer)) = client.await.unwrap()
            && answer.starts_with(b"HTTP/1.1 408 ")
        {
            cut += 1;
        }
    }
    assert_eq!(
        cut, 2_000,
        "every slowloris client was cut by the header timeout"
    );
    eprintln!("2,000 slowloris clients: RSS {rss_slowloris} KiB while they trickled");

    // Slow bodies: the head is whole, the body comes a byte every half second.
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut tcp = TcpStream::connect(proxy.outbound).await.unwrap();
        tcp.write_all(b"POST http://ok/ HTTP/1.1\r\nHost: ok\r\nContent-Length: 1000\r\n\r\nx")
            .await
            .unwrap();
        slow.push(tcp);
    }
    eventually("500 slow uploads held", Duration::from_secs(30), || async {
        (open().await >= 500.0).then_some(())
    })
    .await;
    for _ in 0..3 {
        for tcp in &mut slow {
            let _ = tcp.write_all(b"x").await;
        }
        assert_eq!(
            served(&proxy, 10).await,
            10,
            "served beside 500 slow uploads"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rss_slow, peak) = proxy.memory_kib();
    eprintln!("500 slow uploads: RSS {rss_slow} KiB; peak over the test {peak} KiB");
    let mut served = legit.stop().await;
    eprintln!("legitimate clients all along: {}", served.summary());
    assert!(
        served.failed.is_empty() && served.ok > 0,
        "{}",
        served.summary()
    );
    assert_still_serving(&proxy).await;
}

/// 300 slow uploads through two sidecars fill the one HTTP/2 connection between them past
/// its 200 streams; the client's sidecar opens another, and the GETs behind are answered.
#[tokio::test]
async fn slow_uploads_filling_the_mesh_connection_do_not_hold_up_the_rest() {
    use tokio::io::AsyncWriteExt;
    let server = crate::ServerPod::start("reviews").await;
    let config = Mesh::new("client")
        .service("shop", "reviews", None, 8080, &[server.endpoint()])
        .build();
    let client = weft_tests::proxy::Proxy::start(weft_tests::pods::pod_ip(), &config, &[]).await;
    let mut uploads = Vec::new();
    for _ in 0..300 {
        let mut tcp = TcpStream::connect(client.outbound).await.unwrap();
        tcp.write_all(
            b"POST http://reviews.shop:8080/count HTTP/1.1\r\nHost: reviews.shop:8080\r\nContent-Length: 1000000\r\n\r\nx",
        )
        .await
        .unwrap();
        uploads.push(tcp);
    }
    eventually(
        "300 uploads at the app",
        Duration::from_secs(30),
        || async {
            (server
                .proxy
                .metric(r#"weft_open_connections{direction="inbound"}"#)
                .await
                >= 1.0
                && client
                    .metric(r#"weft_open_connections{direction="outbound"}"#)
                    .await
                    >= 300.0)
                .then_some(())
        },
    )
    .await;
    for i in 0..20 {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            weft_tests::client::get(client.outbound, "http://reviews.shop:8080/"),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {i} waited behind the uploads"))
        .unwrap();
        assert_eq!(resp.status(), 200);
    }
    drop(uploads);
}
