//! HTTP/2 with prior knowledge: many concurrent streams on one connection, end to end.

use http::Request;
use std::time::Duration;
use weft_tests::client::{self, served_by};
use weft_tests::eventually;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

use crate::ServerPod;

#[tokio::test]
async fn a_hundred_concurrent_streams_share_one_connection_each_hop() {
    let server = ServerPod::start("h2-app").await;
    let plain = HttpBackend::start(at(pod_ip(), 8080), "h2-plain").await;
    let config = Mesh::new("c1")
        .service("shop", "meshed", None, 80, &[server.endpoint()])
        .service("shop", "plain", None, 80, &[Ep::direct(plain.addr)])
        .build();
    let client = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;

    for (host, backend) in [("meshed", &server.app), ("plain", &plain)] {
        let sender = client::http2(client.outbound).await.unwrap();
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let mut sender = sender.clone();
                let req = Request::get(format!("http://{host}/hold?i={i}"))
                    .version(http::Version::HTTP_2)
                    .body(client::empty())
                    .unwrap();
                tokio::spawn(async move { sender.send_request(req).await })
            })
            .collect();
        // All hundred are in flight at the application at once before any is answered.
        eventually("100 held requests", Duration::from_secs(20), || async {
            (backend.held() == 100).then_some(())
        })
        .await;
        backend.release();
        for call in calls {
            let resp = call.await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(served_by(&resp), backend.name);
            assert_eq!(client::text(resp).await.unwrap().1, "released");
        }
        assert_eq!(
            backend.connections(),
            1,
            "{host}: the hundred streams share one upstream connection"
        );
    }
    let inbound_h2 = server
        .proxy
        .metric(r#"weft_connections_total{direction="inbound",protocol="http2"}"#)
        .await;
    assert_eq!(inbound_h2, 1.0, "one HTTP/2 connection between the proxies");
}
