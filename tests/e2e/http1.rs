//! HTTP/1.1 through the proxies: keep-alive, chunked bodies, and 64 MiB streamed each way.

use bytes::Bytes;
use futures_util::stream;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use weft_tests::client::{self, served_by};
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::{BoxError, HttpBackend, TestBody, stream_bytes};

use crate::ServerPod;

fn chunked(parts: &'static [&'static str]) -> TestBody {
    let frames = parts
        .iter()
        .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))));
    BodyExt::boxed(StreamBody::new(stream::iter(frames)))
}

#[tokio::test]
async fn keep_alive_and_chunked_bodies_reach_direct_and_meshed_endpoints() {
    let server = ServerPod::start("meshed-app").await;
    let plain = HttpBackend::start(at(pod_ip(), 8080), "plain-app").await;
    let config = Mesh::new("c1")
        .service("shop", "meshed", None, 80, &[server.endpoint()])
        .service("shop", "plain", None, 80, &[Ep::direct(plain.addr)])
        .build();
    let client = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;

    for (host, backend) in [("meshed", &server.app), ("plain.shop", &plain)] {
        let mut conn = client::http1(client.outbound).await.unwrap();
        for i in 0..5 {
            conn.ready().await.unwrap();
            let req = Request::post(format!("http://{host}/echo"))
                .body(chunked(&["one ", "two ", "three"]))
                .unwrap();
            let resp = conn.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{host} request {i}");
            assert_eq!(served_by(&resp), backend.name);
            // The echo came back without a length: the request reached the app chunked.
            assert_eq!(resp.headers()["transfer-encoding"], "chunked");
            assert!(resp.headers().get("content-length").is_none());
            let (_, body) = client::text(resp).await.unwrap();
            assert_eq!(body, "one two three");
        }
        assert_eq!(backend.requests(), 5, "{host}");
        assert_eq!(
            backend.connections(),
            1,
            "{host}: five requests must share one upstream connection"
        );
    }
    // Between the proxies the HTTP/1 requests rode one HTTP/2 connection.
    let inbound = |protocol: &str| {
        let sample =
            format!(r#"weft_connections_total{{direction="inbound",protocol="{protocol}"}}"#);
        let proxy = &server.proxy;
        async move { proxy.metric(&sample).await }
    };
    assert_eq!(
        (inbound("http2").await, inbound("http1").await),
        (1.0, 0.0),
        "the client proxy reused one connection to the server proxy"
    );
}

#[tokio::test]
async fn the_application_sees_the_request_as_sent() {
    let server = ServerPod::start("app").await;
    let config = Mesh::new("c1")
        .service("shop", "app", None, 8080, &[server.endpoint()])
        .build();
    let client = Proxy::start(pod_ip(), &config, &[]).await;
    let mut conn = client::http1(client.outbound).await.unwrap();
    let req = Request::get("http://app.shop.svc.cluster.local:8080/head?q=1")
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "removed")
        .header("keep-alive", "timeout=5")
        .body(client::empty())
        .unwrap();
    let (status, body) = client::text(conn.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let head: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(head["method"], "GET");
    assert_eq!(head["uri"], "/head?q=1", "origin form reaches the app");
    assert_eq!(head["version"], "HTTP/1.1");
    let headers = head["headers"].as_object().unwrap();
    assert_eq!(headers["host"], "app.shop.svc.cluster.local:8080");
    assert_eq!(headers["x-custom"], "kept");
    for hop in ["x-hop", "keep-alive", "connection", "proxy-connection"] {
        assert!(
            !headers.contains_key(hop),
            "{hop} must not reach the app: {headers:?}"
        );
    }
}

#[tokio::test]
async fn sixty_four_mebibytes_stream_each_way_in_little_memory() {
    const SIZE: u64 = 64 << 20;
    let server = ServerPod::start("bulk").await;
    let config = Mesh::new("c1")
        .service("shop", "bulk", None, 80, &[server.endpoint()])
        .build();
    let client = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;
    let mut conn = client::http1(client.outbound).await.unwrap();

    let req = Request::post("http://bulk/count")
        .body(stream_bytes(SIZE))
        .unwrap();
    let (status, body) = client::text(conn.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!((status, body), (200, SIZE.to_string()), "upload");

    conn.ready().await.unwrap();
    let resp = conn
        .send_request(
            Request::get(format!("http://bulk/bytes/{SIZE}"))
                .body(client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE, "download");

    for (name, proxy) in [("client", &client), ("server", &server.proxy)] {
        let (rss, peak) = proxy.memory_kib();
        eprintln!("{name} proxy after 2 x 64 MiB: rss {rss} KiB, peak {peak} KiB");
        assert!(peak > 0, "no memory figures for {name}");
        assert!(
            peak < 32 * 1024,
            "{name} proxy peaked at {peak} KiB: bodies must stream, not buffer"
        );
    }
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = at(pod_ip(), 8080);
    let accepted = Arc::new(AtomicUsize::new(0));
    let _server = weft_tests::workloads::close_after_response(
        tokio::net::TcpListener::bind(app).await.unwrap(),
        accepted.clone(),
    )
    .await;
    let config = Mesh::new("c1")
        .service("shop", "closing", None, 80, &[Ep::direct(app)])
        .build();
    let client = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;
    let mut conn = client::http1(client.outbound).await.unwrap();
    for i in 0..20 {
        conn.ready().await.unwrap();
        let resp = conn
            .send_request(
                Request::get("http://closing.shop/")
                    .body(client::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        let (_, body) = client::text(resp).await.unwrap();
        assert_eq!(body, "ok", "request {i}");
    }
    // Each response left its connection in the pool, and the upstream closed it: every request
    // took a new one, and none met the closed one as an error.
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
    assert_eq!(
        client
            .metric(r#"weft_proxy_errors_total{direction="outbound",reason="upstream-reset"}"#)
            .await,
        0.0
    );
}

/// A TCP socket of this network namespace, as `/proc/net/tcp` lists it.
struct Socket {
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    /// 1 is ESTABLISHED.
    state: u8,
    /// Bytes received and not yet read.
    rx_queue: u64,
    /// Which timer runs (2: the keep-alive timer), and in how many ticks it fires.
    timer: u8,
    when: u64,
}

/// The TCP sockets of this network namespace from `/proc/net/tcp`.
fn tcp_sockets() -> Vec<Socket> {
    let addr = |field: &str| -> Option<std::net::SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        // The kernel prints the address as a number in host byte order.
        let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
        Some(
            (
                std::net::Ipv4Addr::from(ip),
                u16::from_str_radix(port, 16).ok()?,
            )
                .into(),
        )
    };
    let table = std::fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (_, rx_queue) = f.get(4)?.split_once(':')?;
            let (timer, when) = f.get(5)?.split_once(':')?;
            Some(Socket {
                local: addr(f.get(1)?)?,
                remote: addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                rx_queue: u64::from_str_radix(rx_queue, 16).ok()?,
                timer: timer.parse().ok()?,
                when: u64::from_str_radix(when, 16).ok()?,
            })
        })
        .collect()
}

/// An upstream that answers before it has read the request body (a 413 for an upload too
/// large) and closes at once resets the connection: its kernel holds body bytes nobody read.
/// The proxy, woken with the reset and more body to forward, must still pass on the answer
/// that came before the reset, not fail the request as `upstream-reset`. The proxy is stopped
/// while both arrive, so that it meets them together.
#[tokio::test]
async fn an_answer_sent_before_the_body_was_read_arrives_though_the_upstream_resets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app_addr = at(pod_ip(), 8080);
    let listener = tokio::net::TcpListener::bind(app_addr).await.unwrap();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // Byte by byte to the end of the head, so that the body stays unread.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let mut first = [0u8; 1];
        tcp.peek(&mut first).await.unwrap();
        read_tx.send(()).unwrap();
        answer_rx.await.unwrap();
        tcp.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo long")
            .await
            .unwrap();
        // Dropped with a body byte unread: the kernel resets the connection.
    });
    let config = Mesh::new("c1")
        .service("shop", "upload", None, 80, &[Ep::direct(app_addr)])
        .build();
    let proxy = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    let client_addr = tcp.local_addr().unwrap();
    tcp.write_all(
        b"POST http://upload.shop/ HTTP/1.1\r\nHost: upload.shop\r\nContent-Length: 100\r\n\r\na",
    )
    .await
    .unwrap();
    read_rx.await.unwrap();

    proxy.signal("STOP");
    tcp.write_all(b"b").await.unwrap();
    answer_tx.send(()).unwrap();
    app.await.unwrap();
    weft_tests::eventually(
        "the next body byte waiting for the stopped proxy, and its upstream connection reset",
        std::time::Duration::from_secs(10),
        || async {
            let sockets = tcp_sockets();
            let queued = sockets
                .iter()
                .any(|s| s.local == proxy.outbound && s.remote == client_addr && s.rx_queue > 0);
            let reset = !sockets.iter().any(|s| s.remote == app_addr);
            (queued && reset).then_some(())
        },
    )
    .await;
    proxy.signal("CONT");

    // The whole answer; the proxy then waits a while for the rest of the small body, to keep
    // the connection.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"too long") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.ends_with("too long"), "{answer}");
    assert_eq!(
        proxy
            .metric(r#"weft_proxy_errors_total{direction="outbound",reason="upstream-reset"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn every_connection_the_proxies_hold_is_probed_by_tcp_keepalive() {
    let server = ServerPod::start("kept-app").await;
    let config = Mesh::new("c1")
        .service("shop", "kept", None, 80, &[server.endpoint()])
        .build();
    let client = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;
    let mut conn = client::http1(client.outbound).await.unwrap();
    let resp = conn
        .send_request(Request::get("http://kept/").body(client::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    client::text(resp).await.unwrap();

    // The proxies' sockets: the two they accepted (app -> client proxy, client proxy ->
    // server proxy) and the two they opened (to the server proxy, to the app). Every one,
    // idle now, has its keep-alive timer running, set to the proxy's 20 s and not the
    // kernel's default two hours. /proc counts in USER_HZ, 100 per second on Linux.
    let held = |s: &Socket| {
        s.state == 1
            && ([client.outbound, server.proxy.inbound].contains(&s.local)
                || [server.proxy.inbound, server.app.addr].contains(&s.remote))
    };
    let sockets = weft_tests::eventually(
        "four idle proxy sockets with keep-alive timers",
        std::time::Duration::from_secs(10),
        || async {
            let held: Vec<_> = tcp_sockets().into_iter().filter(held).collect();
            (held.len() == 4 && held.iter().all(|s| s.timer == 2)).then_some(held)
        },
    )
    .await;
    for Socket {
        local,
        remote,
        when,
        ..
    } in sockets
    {
        assert!(
            when <= 20 * 100,
            "{local} -> {remote}: keep-alive fires in {when} ticks, beyond 20 s"
        );
    }
}
