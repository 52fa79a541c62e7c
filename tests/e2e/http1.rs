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

/// The established TCP sockets of this network namespace from `/proc/net/tcp`: (local,
/// remote, timer, ticks until it fires). Timer 2 is the keep-alive timer.
fn tcp_sockets() -> Vec<(std::net::SocketAddr, std::net::SocketAddr, u8, u64)> {
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
            if f.get(3) != Some(&"01") {
                return None;
            }
            let (timer, when) = f.get(5)?.split_once(':')?;
            Some((
                addr(f.get(1)?)?,
                addr(f.get(2)?)?,
                timer.parse().ok()?,
                u64::from_str_radix(when, 16).ok()?,
            ))
        })
        .collect()
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
    let held = |(local, remote, _, _): &(_, _, u8, u64)| {
        [client.outbound, server.proxy.inbound].contains(local)
            || [server.proxy.inbound, server.app.addr].contains(remote)
    };
    let sockets = weft_tests::eventually(
        "four idle proxy sockets with keep-alive timers",
        std::time::Duration::from_secs(10),
        || async {
            let held: Vec<_> = tcp_sockets().into_iter().filter(held).collect();
            (held.len() == 4 && held.iter().all(|s| s.2 == 2)).then_some(held)
        },
    )
    .await;
    for (local, remote, _, when) in sockets {
        assert!(
            when <= 20 * 100,
            "{local} -> {remote}: keep-alive fires in {when} ticks, beyond 20 s"
        );
    }
}
