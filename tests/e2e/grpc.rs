//! gRPC through two proxies: unary and server-streaming calls keep their status codes,
//! messages and trailers; proxy-generated failures arrive as gRPC statuses.

use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::grpc::echo_client::EchoClient;
use weft_tests::workloads::grpc::{EchoRequest, StreamRequest};
use weft_tests::workloads::grpc_echo;

/// A tonic channel whose every connection goes to `proxy`, addressing `authority`.
pub(crate) async fn channel_via(proxy: SocketAddr, authority: &str) -> Channel {
    Endpoint::from_shared(format!("http://{authority}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| async move {
            TcpStream::connect(proxy).await.map(TokioIo::new)
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn unary_and_streaming_calls_keep_status_and_trailers() {
    let ip = pod_ip();
    let _server = grpc_echo(TcpListener::bind(at(ip, 50051)).await.unwrap()).await;
    let server_proxy = Proxy::start(ip, &Mesh::new("s").build(), &[]).await;
    let config = Mesh::new("c1")
        .service("shop", "echo", None, 50051, &[Ep::meshed(at(ip, 50051))])
        .service("shop", "empty", None, 50051, &[])
        .build();
    let client_proxy = Proxy::start(pod_ip(), &config, &[]).await;
    let mut client = EchoClient::new(channel_via(client_proxy.outbound, "echo.shop:50051").await);

    let reply = client
        .unary(EchoRequest {
            message: "hi".into(),
            fail_with: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "hi");

    let status = client
        .unary(EchoRequest {
            message: "x".into(),
            fail_with: Code::NotFound as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "failed on request with code 5");
    assert_eq!(
        status.metadata().get("x-failure-detail").unwrap(),
        "requested"
    );

    let mut stream = client
        .server_stream(StreamRequest {
            message: "s".into(),
            count: 10,
            fail_with: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        indexes.push(reply.index);
    }
    assert_eq!(indexes, (0..10).collect::<Vec<_>>());

    let mut stream = client
        .server_stream(StreamRequest {
            message: "s".into(),
            count: 3,
            fail_with: Code::Internal as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(stream.message().await.unwrap().unwrap().index, i);
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Internal,
        "the status in the trailers survives"
    );
    assert_eq!(
        status.metadata().get("x-failure-detail").unwrap(),
        "requested"
    );

    // The proxy's own failures are gRPC statuses too.
    let mut empty = EchoClient::new(channel_via(client_proxy.outbound, "empty.shop:50051").await);
    let status = empty
        .unary(EchoRequest {
            message: "x".into(),
            fail_with: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "no-healthy-endpoints");
    assert_eq!(
        status.metadata().get("x-weft-error").unwrap(),
        "no-healthy-endpoints"
    );
    drop(server_proxy);
}
