//! Graceful drain: SIGTERM stops new connections, lets in-flight requests finish, and exits
//! within the grace period.

use std::time::Duration;

use http::Request;
use weft_tests::client;
use weft_tests::eventually;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_refuses_new_connections() {
    let app = HttpBackend::start(at(pod_ip(), 8080), "slow").await;
    let config = Mesh::new("c1")
        .service("shop", "slow", None, 80, &[Ep::direct(app.addr)])
        .build();
    let mut proxy = Proxy::start(
        pod_ip(),
        &config,
        &["--namespace", "shop", "--drain-grace", "30s"],
    )
    .await;

    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut conn = client::http1(proxy.outbound).await.unwrap();
        calls.push(tokio::spawn(async move {
            let resp = conn
                .send_request(
                    Request::get("http://slow/hold")
                        .body(client::empty())
                        .unwrap(),
                )
                .await?;
            let close = resp
                .headers()
                .get("connection")
                .is_some_and(|v| v == "close");
            anyhow::Ok((client::text(resp).await?, close))
        }));
    }
    let h2 = client::http2(proxy.outbound).await.unwrap();
    for _ in 0..3 {
        let mut h2 = h2.clone();
        calls.push(tokio::spawn(async move {
            let req = Request::get("http://slow/hold")
                .version(http::Version::HTTP_2)
                .body(client::empty())
                .unwrap();
            anyhow::Ok((client::text(h2.send_request(req).await?).await?, true))
        }));
    }
    eventually(
        "six requests in flight",
        Duration::from_secs(10),
        || async { (app.held() == 6).then_some(()) },
    )
    .await;

    proxy.signal("TERM");
    eventually(
        "new connections refused",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(proxy.outbound)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let (status, body) = proxy.admin_get("/ready").await.unwrap();
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).await.is_none(),
        "exited with requests in flight"
    );

    app.release();
    for call in calls {
        let ((status, body), close) = call.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, "released"));
        assert!(
            close,
            "HTTP/1 responses during a drain carry Connection: close"
        );
    }
    let exit = proxy
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the proxy exits once drained");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let app = HttpBackend::start(at(pod_ip(), 8080), "stuck").await;
    let config = Mesh::new("c1")
        .service("shop", "stuck", None, 80, &[Ep::direct(app.addr)])
        .build();
    let mut proxy = Proxy::start(
        pod_ip(),
        &config,
        &["--namespace", "shop", "--drain-grace", "1s"],
    )
    .await;
    let mut conn = client::http1(proxy.outbound).await.unwrap();
    let call = tokio::spawn(async move {
        conn.send_request(
            Request::get("http://stuck/hold")
                .body(client::empty())
                .unwrap(),
        )
        .await
    });
    eventually("request in flight", Duration::from_secs(10), || async {
        (app.held() == 1).then_some(())
    })
    .await;
    proxy.signal("TERM");
    let exit = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits when the grace period ends");
    assert!(exit.success(), "{exit:?}");
    assert!(
        call.await.unwrap().is_err(),
        "the request still held when the process exited cannot succeed"
    );
}

#[tokio::test]
async fn post_drain_on_the_admin_api_drains_like_sigterm() {
    let mut proxy = Proxy::start(
        pod_ip(),
        &Mesh::new("c1").build(),
        &["--drain-grace", "10s"],
    )
    .await;
    let url = format!("http://{}/drain", proxy.admin);
    let (status, body) = client::request_text(proxy.admin, "POST", &url, "")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (202, "draining\n"));
    let exit = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits after POST /drain");
    assert!(exit.success(), "{exit:?}");
}
