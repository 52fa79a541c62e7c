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

/// The proxies' own refusals of gRPC calls, each as the status a gRPC client acts on: a
/// route's timeout as DEADLINE_EXCEEDED, the server's policy as PERMISSION_DENIED, and the
/// client-side rate limit as RESOURCE_EXHAUSTED, each with its `x-weft-error`.
#[tokio::test]
async fn timeouts_policy_denials_and_rate_limits_arrive_as_their_grpc_statuses() {
    use weft_tests::manifests::Manifests;
    let ip = pod_ip();
    let _server = grpc_echo(TcpListener::bind(at(ip, 50051)).await.unwrap()).await;
    let manifests = Manifests::new()
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: shop}\nspec:\n  selector: {app: echo}\n  ports: [{name: grpc, port: 50051, targetPort: 50051, appProtocol: kubernetes.io/h2c}]\n")
        .doc("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: echo\n  namespace: shop\n  annotations: {timeout.weft.dev/request: 300ms}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 50051}]\n  rules:\n    - backendRefs: [{name: echo, port: 50051}]\n")
        .doc("apiVersion: policy.weft.dev/v1alpha1\nkind: ServerPolicy\nmetadata: {name: no-streams, namespace: shop}\nspec:\n  selector: {matchLabels: {app: echo}}\n  rules:\n    - action: Deny\n      to: {paths: [/weft.test.Echo/ServerStream]}\n")
        .doc("apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: slow-down, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: echo}]\n  rateLimit: {requestsPerSecond: 1, burst: 4}\n")
        .pod("shop", "echo", &[("app", "echo")], at(ip, 50051), true);
    let flags = ["--namespace", "shop"];
    let _server_proxy = Proxy::start(ip, &manifests.compile_pod("shop", "echo"), &flags).await;
    let client_proxy = Proxy::start(pod_ip(), &manifests.compile("shop"), &flags).await;
    let mut client = EchoClient::new(channel_via(client_proxy.outbound, "echo.shop:50051").await);
    let weft_error = |status: &tonic::Status| {
        status
            .metadata()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };

    let slow = client
        .unary(EchoRequest {
            message: "slow".into(),
            delay_ms: 3_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (slow.code(), weft_error(&slow).as_str()),
        (Code::DeadlineExceeded, "timeout"),
        "{slow:?}"
    );

    let denied = client
        .server_stream(StreamRequest {
            message: "s".into(),
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), weft_error(&denied).as_str()),
        (Code::PermissionDenied, "unauthorized"),
        "{denied:?}"
    );

    // Two of the burst's four are spent: of ten calls at once, two pass and the rest are
    // limited (a token a second may come back meanwhile).
    let (mut served, mut limited) = (0, 0);
    for _ in 0..10 {
        match client
            .unary(EchoRequest {
                message: "hi".into(),
                ..Default::default()
            })
            .await
        {
            Ok(reply) => {
                assert_eq!(reply.into_inner().message, "hi");
                served += 1;
            }
            Err(status) => {
                assert_eq!(
                    (status.code(), weft_error(&status).as_str()),
                    (Code::ResourceExhausted, "rate-limited"),
                    "{status:?}"
                );
                limited += 1;
            }
        }
    }
    assert!(
        served >= 1 && limited >= 5,
        "{served} served, {limited} limited"
    );
}
