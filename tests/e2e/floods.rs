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
