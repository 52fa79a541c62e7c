//! A client that gives up is never the endpoint's failure: gRPC clients cancel on every
//! deadline, and a client may leave inside its request body. Through one hop and two, many
//! cancelled calls on shared connections leave the endpoint's breaker closed, and the next
//! call is served.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use weft_tests::eventually;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::grpc::echo_client::EchoClient;
use weft_tests::workloads::grpc::{EchoRequest, StreamRequest};
use weft_tests::workloads::grpc_echo;

/// More cancellations than the default breaker's consecutive failures (5).
const CANCELLED: usize = 12;

/// The client's sidecar in front of `upstream` on `port`, directly or through a sidecar of
/// the upstream's own.
async fn sidecars(upstream: SocketAddr, two_hops: bool) -> (Proxy, Option<Proxy>) {
    let server = if two_hops {
        Some(Proxy::start(upstream.ip(), &Mesh::new("server").build(), &[]).await)
    } else {
        None
    };
    let endpoint = if two_hops {
        Ep::meshed(upstream)
    } else {
        Ep::direct(upstream)
    };
    let config = Mesh::new("client")
        .service("shop", "echo", None, upstream.port(), &[endpoint])
        .build();
    (Proxy::start(pod_ip(), &config, &[]).await, server)
}

/// The client sidecar's breaker ejections and own answers, but those that say the client
/// left (`client-cancelled`): none of them may be.
async fn blamed(client: &Proxy) -> Vec<String> {
    let (_, metrics) = client.admin_get("/metrics").await.unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("weft_breaker_ejections_total")
                || (l.starts_with("weft_proxy_errors_total") && !l.contains("client-cancelled"))
        })
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

/// An upstream (HTTP/1 and HTTP/2) that notes each request as its head arrives, and answers
/// one once its whole body is in; one whose body never ends is never answered.
async fn noting_upstream(addr: SocketAddr) -> Arc<Mutex<usize>> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let arrived = Arc::new(Mutex::new(0));
    let listener = TcpListener::bind(addr).await.unwrap();
    let seen = arrived.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        *seen.lock().unwrap() += 1;
                        async move {
                            let whole = req.into_body().collect().await.is_ok();
                            let resp = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", if whole { "0" } else { "1" })
                                .body(http_body_util::Empty::<Bytes>::new())
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    arrived
}

/// Waits until `arrived` counts `n` requests.
async fn arrivals(arrived: &Arc<Mutex<usize>>, n: usize) {
    eventually(
        "the request reaching the upstream",
        Duration::from_secs(10),
        || {
            let arrived = arrived.clone();
            async move { (*arrived.lock().unwrap() >= n).then_some(()) }
        },
    )
    .await;
}

/// A gRPC-shaped request to the echo Service through `proxy`.
fn call() -> http::Request<()> {
    http::Request::post("http://echo.shop:50051/weft.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Clients that leave inside their request body, after the proxy has forwarded it: the proxy
/// resets its upstream stream itself, and that is the client's doing.
async fn cancelled_inside_the_body(two_hops: bool) {
    let upstream = at(pod_ip(), 50051);
    let arrived = noting_upstream(upstream).await;
    let (client, _server) = sidecars(upstream, two_hops).await;
    let tcp = TcpStream::connect(client.outbound).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    for i in 1..=CANCELLED {
        let mut h2 = h2.clone().ready().await.unwrap();
        let (_response, mut stream) = h2.send_request(call(), false).unwrap();
        // Half of a gRPC message: its 5-byte prefix says 10 bytes follow.
        stream
            .send_data(Bytes::from_static(b"\0\0\0\0\x0aabc"), false)
            .unwrap();
        arrivals(&arrived, i).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    // The next call, whole, on the same connection.
    let mut h2 = h2.ready().await.unwrap();
    let (response, _) = h2.send_request(call(), true).unwrap();
    let resp = response.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "served, not breaker-open: {:?}",
        resp.headers()
    );
    assert_eq!(
        blamed(&client).await,
        Vec::<String>::new(),
        "two hops: {two_hops}"
    );
}

#[tokio::test]
async fn clients_leaving_inside_their_body_are_not_the_endpoints_failure_one_hop() {
    cancelled_inside_the_body(false).await;
}

#[tokio::test]
async fn clients_leaving_inside_their_body_are_not_the_endpoints_failure_two_hops() {
    cancelled_inside_the_body(true).await;
}

/// HTTP/1 clients that close their connection inside a chunked request body, once the
/// request has reached the upstream. Through two hops the body streams over the HTTP/2
/// connection between the sidecars, whose stream the client's sidecar resets itself.
async fn closed_inside_the_body(two_hops: bool) {
    use tokio::io::AsyncWriteExt;
    let upstream = at(pod_ip(), 50051);
    let arrived = noting_upstream(upstream).await;
    let (client, _server) = sidecars(upstream, two_hops).await;
    for i in 1..=CANCELLED {
        let mut tcp = TcpStream::connect(client.outbound).await.unwrap();
        tcp.write_all(
            b"POST http://echo.shop:50051/upload HTTP/1.1\r\nhost: echo.shop:50051\r\n\
              transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        arrivals(&arrived, i).await;
        drop(tcp);
    }
    let resp = weft_tests::client::get(client.outbound, "http://echo.shop:50051/after")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "served, not breaker-open");
    eventually("the cancelled requests to be counted", Duration::from_secs(10), || {
        let client = &client;
        async move {
            let cancelled = client
                .metric(r#"weft_proxy_errors_total{direction="outbound",reason="client-cancelled"}"#)
                .await;
            (cancelled >= CANCELLED as f64).then_some(())
        }
    })
    .await;
    assert_eq!(
        blamed(&client).await,
        Vec::<String>::new(),
        "two hops: {two_hops}"
    );
}

#[tokio::test]
async fn http1_clients_closing_inside_their_body_are_not_the_endpoints_failure_one_hop() {
    closed_inside_the_body(false).await;
}

#[tokio::test]
async fn http1_clients_closing_inside_their_body_are_not_the_endpoints_failure_two_hops() {
    closed_inside_the_body(true).await;
}

/// tonic clients giving up on slow unary calls (their deadline) and dropping server streams
/// after the first message.
async fn cancelled_calls(two_hops: bool) {
    let upstream = at(pod_ip(), 50051);
    let _echo = grpc_echo(TcpListener::bind(upstream).await.unwrap()).await;
    let (client, _server) = sidecars(upstream, two_hops).await;
    let channel = crate::grpc::channel_via(client.outbound, "echo.shop:50051").await;
    let mut echo = EchoClient::new(channel);
    for _ in 0..CANCELLED {
        let slow = echo.unary(EchoRequest {
            message: "slow".into(),
            delay_ms: 5_000,
            ..Default::default()
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), slow)
                .await
                .is_err(),
            "the call outlives its deadline"
        );
        let mut stream = echo
            .server_stream(StreamRequest {
                message: "long".into(),
                count: 1_000,
                delay_ms: 20,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
        drop(stream);
    }
    let reply = echo
        .unary(EchoRequest {
            message: "after".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "after");
    assert_eq!(
        blamed(&client).await,
        Vec::<String>::new(),
        "two hops: {two_hops}"
    );
}

#[tokio::test]
async fn cancelled_grpc_calls_are_not_the_endpoints_failure_one_hop() {
    cancelled_calls(false).await;
}

#[tokio::test]
async fn cancelled_grpc_calls_are_not_the_endpoints_failure_two_hops() {
    cancelled_calls(true).await;
}

/// Downloads the clients give up: more than h2's default allowance of resets a connection
/// makes itself (1,024, hyperium/h2#856), all cancelled by the client sidecar on its one
/// mesh connection to the server sidecar.
const GIVEN_UP: usize = 2_000;

/// Thousands of legitimate cancellations on shared connections (downloads closed after the
/// head, and requests cut by the client's own deadline before their answer) cost nothing to the streams sharing
/// those connections: a long download through the same two sidecars arrives whole, and
/// requests sent meanwhile are all answered.
#[tokio::test]
async fn thousands_of_cancelled_downloads_leave_the_shared_connections_whole() {
    use http_body_util::BodyExt;
    let server = crate::ServerPod::start("reviews").await;
    let config = Mesh::new("client")
        .service("shop", "reviews", None, 8080, &[server.endpoint()])
        .build();
    let client = Proxy::start(pod_ip(), &config, &[]).await;
    let outbound = client.outbound;
    let get = |path: &str| {
        http::Request::get(format!("http://reviews.shop:8080{path}"))
            .body(weft_tests::client::empty())
            .unwrap()
    };
    // 300 KiB over about six seconds, on the connection the cancellations share.
    let h2 = weft_tests::client::http2(outbound).await.unwrap();
    let mut long = h2.clone();
    let long_get = get("/drip/300");
    let download = tokio::spawn(async move {
        let resp = long.send_request(long_get).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body.len()))
    });
    // Twenty clients on that connection give the downloads up.
    let mut cancellers = Vec::new();
    for c in 0..20 {
        let mut h2 = h2.clone();
        cancellers.push(tokio::spawn(async move {
            for i in 0..GIVEN_UP / 20 {
                if (c + i) % 2 == 0 {
                    // A download closed after its head, its data flowing.
                    let resp = h2.send_request(get("/bytes/1048576")).await?;
                    anyhow::ensure!(
                        resp.status() == 200,
                        "a download answered {}",
                        resp.status()
                    );
                    drop(resp);
                } else {
                    // A request cut by the client's deadline before its answer (the
                    // application holds it).
                    let held = tokio::time::timeout(
                        Duration::from_millis(50),
                        h2.send_request(get("/hold")),
                    )
                    .await;
                    anyhow::ensure!(held.is_err(), "a held request answered: {held:?}");
                }
            }
            anyhow::Ok(())
        }));
    }
    // Meanwhile, requests on the same connection and on others.
    let mut answered = 0;
    let mut other = weft_tests::client::http1(outbound).await.unwrap();
    let mut shared = h2.clone();
    while !cancellers.iter().all(|c| c.is_finished()) {
        let a = shared.send_request(get("/")).await.unwrap();
        assert_eq!(a.status(), 200, "a request sharing the connection");
        let b = other.send_request(get("/")).await.unwrap();
        assert_eq!(b.status(), 200, "a request on another connection");
        let _ = b.into_body().collect().await;
        answered += 2;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in cancellers {
        c.await.unwrap().unwrap();
    }
    let (status, len) = download.await.unwrap().unwrap();
    assert_eq!((status, len), (200, 300 * 1024), "the long download");
    let after = weft_tests::client::get(outbound, "http://reviews.shop:8080/")
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    eprintln!("{GIVEN_UP} downloads given up; {answered} requests answered meanwhile");
    assert!(
        blamed(&client).await.is_empty(),
        "{:?}",
        blamed(&client).await
    );
}
