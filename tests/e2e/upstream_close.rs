//! Upstreams that end their connections the ordinary way lose no request. nginx, run as users
//! run it, ends a connection after `keepalive_requests` requests: over HTTP/2 with a graceful
//! GOAWAY naming the last stream it will process (the streams above it never reached it, and
//! are sent again on a new connection, whatever their method), over HTTP/1 with
//! `Connection: close`. Neither is the endpoint's failure, so its breaker never opens.

use std::net::SocketAddr;

use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::tools::{Nginx, Serve, h2load, tools_present};

const TOOLS: &[(&str, &str)] = &[("nginx", "nginx"), ("h2load", "nghttp2-client")];
/// The Service nginx serves.
const AUTHORITY: &str = "web.shop:8080";
/// Requests per connection before nginx ends it (its default is 1,000).
const KEEPALIVE_REQUESTS: u32 = 100;

/// nginx behind the client's sidecar, directly (one hop) or behind a sidecar of its own (two
/// hops, mutual TLS off: this is about the connection to nginx).
struct Path {
    client: Proxy,
    /// Kept running for the two-hop path.
    server: Option<Proxy>,
    nginx: Nginx,
}

async fn path(serve: Serve, two_hops: bool) -> Path {
    let ip = pod_ip();
    let nginx = Nginx::start(at(ip, 8080), serve, KEEPALIVE_REQUESTS).await;
    let (server, endpoint) = if two_hops {
        let server = Proxy::start(ip, &Mesh::new("server").build(), &[]).await;
        (Some(server), Ep::meshed(nginx.addr))
    } else {
        (None, Ep::direct(nginx.addr))
    };
    let config = Mesh::new("client")
        .service("shop", "web", None, 8080, &[endpoint])
        .build();
    let client = Proxy::start(pod_ip(), &config, &[]).await;
    Path {
        client,
        server,
        nginx,
    }
}

/// What the client's sidecar counted against the endpoint: breaker ejections and answers of
/// its own other than 2xx.
async fn blamed(client: &Proxy) -> Vec<String> {
    let (_, metrics) = client.admin_get("/metrics").await.unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("weft_breaker_ejections_total")
                || l.starts_with("weft_proxy_errors_total")
        })
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

/// Checks what nginx served: every request exactly once (a stream a GOAWAY refused was not
/// processed, so it is not in the log twice), over many connections (they were recycled).
fn served_once_each(nginx: &Nginx, requests: usize) {
    let served = nginx.served();
    assert_eq!(served.len(), requests, "every request reached nginx once");
    assert!(served.iter().all(|(_, status)| *status == 200));
    let connections: std::collections::BTreeSet<u64> = served.iter().map(|(c, _)| *c).collect();
    assert!(
        connections.len() >= requests / KEEPALIVE_REQUESTS as usize,
        "nginx ended its connections: {} for {requests} requests",
        connections.len()
    );
}

async fn h2c_goaways_lose_nothing(two_hops: bool) {
    let p = path(Serve::Http2, two_hops).await;
    let requests = 3_000;
    let run = h2load(p.client.outbound, AUTHORITY, requests, 2, 8);
    assert_eq!(
        (run.succeeded, run.ok, run.failed, run.errored),
        (u64::from(requests), u64::from(requests), 0, 0),
        "{run:?}\n{}",
        p.client.log()
    );
    served_once_each(&p.nginx, requests as usize);
    assert_eq!(blamed(&p.client).await, Vec::<String>::new());
    // What was sent again, and why (for the log of a failing run; it varies run to run).
    for proxy in std::iter::once(&p.client).chain(p.server.as_ref()) {
        let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("weft_retries_total"))
        {
            eprintln!("two hops {two_hops}: {line}");
        }
    }
}

#[tokio::test]
async fn an_h2c_upstream_that_sends_goaway_loses_no_request_one_hop() {
    if tools_present(
        "an_h2c_upstream_that_sends_goaway_loses_no_request_one_hop",
        TOOLS,
    ) {
        h2c_goaways_lose_nothing(false).await;
    }
}

#[tokio::test]
async fn an_h2c_upstream_that_sends_goaway_loses_no_request_two_hops() {
    if tools_present(
        "an_h2c_upstream_that_sends_goaway_loses_no_request_two_hops",
        TOOLS,
    ) {
        h2c_goaways_lose_nothing(true).await;
    }
}

/// HTTP/1: the last response of each connection says `Connection: close`; the connection
/// is not used again, and every request is answered.
#[tokio::test]
async fn an_http1_upstream_that_closes_after_each_hundred_loses_no_request() {
    if !tools_present(
        "an_http1_upstream_that_closes_after_each_hundred_loses_no_request",
        TOOLS,
    ) {
        return;
    }
    for two_hops in [false, true] {
        let p = path(Serve::Http1, two_hops).await;
        let requests = 600;
        let outbound: SocketAddr = p.client.outbound;
        // Four clients, each on its own keep-alive connection to its sidecar.
        let clients = (0..4).map(|_| {
            tokio::spawn(async move {
                crate::tally(outbound, requests / 4, |_| {
                    crate::get(&format!("http://{AUTHORITY}/"), &[])
                })
                .await
            })
        });
        let mut ok = 0;
        for client in clients {
            for ((status, _), n) in client.await.unwrap() {
                assert_eq!(status, 200, "two hops: {two_hops}");
                ok += n;
            }
        }
        assert_eq!(ok, requests);
        served_once_each(&p.nginx, requests);
        assert_eq!(
            blamed(&p.client).await,
            Vec::<String>::new(),
            "two hops: {two_hops}"
        );
    }
}
