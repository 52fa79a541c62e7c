//! A WebSocket upgrade through two proxies becomes a tunnel, both ways.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::ws_echo;

#[tokio::test]
async fn websocket_echo_through_two_proxies() {
    let ip = pod_ip();
    let _ws = ws_echo(TcpListener::bind(at(ip, 8081)).await.unwrap()).await;
    let _server_proxy = Proxy::start(ip, &Mesh::new("s").build(), &[]).await;
    let config = Mesh::new("c1")
        .service("shop", "ws", None, 8081, &[Ep::meshed(at(ip, 8081))])
        .build();
    let client = Proxy::start(pod_ip(), &config, &[]).await;

    let stream = TcpStream::connect(client.outbound).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.shop:8081/chat", stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    let blob = vec![7u8; 100_000];
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
}
