//! Opaque TCP through two proxies: echo with half-close, and a server-first protocol that
//! must not wait for detection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::{greeter, tcp_echo};

/// Opens a CONNECT tunnel through the proxy, as an application with `http_proxy` would.
async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(
        line.starts_with("HTTP/1.1 200"),
        "CONNECT answered {line:?}"
    );
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            return stream;
        }
    }
}

#[tokio::test]
async fn opaque_echo_keeps_half_close() {
    let ip = pod_ip();
    let _echo = tcp_echo(TcpListener::bind(at(ip, 9000)).await.unwrap()).await;
    let _server_proxy = Proxy::start(ip, &Mesh::new("s").build(), &[]).await;
    let config = Mesh::new("c1")
        .opaque_service("shop", "echo", None, 9000, &[Ep::meshed(at(ip, 9000))])
        .build();
    let client = Proxy::start(pod_ip(), &config, &[]).await;

    let mut tunnel = connect_tunnel(client.outbound, "echo.shop:9000").await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tunnel.get_mut().write_all(&payload).await.unwrap();
    // Half-close: the echo server sees EOF only if the FIN crosses both proxies, and only
    // then closes its side; the full echo must still arrive.
    tunnel.get_mut().shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut back))
        .await
        .expect("echo ends")
        .unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload);
}

#[tokio::test]
async fn a_server_first_protocol_crosses_a_connect_tunnel_without_waiting() {
    let ip = pod_ip();
    // A CONNECT tunnel is opaque from the start: the client proxy tells the server proxy so in
    // the transport header, and neither waits for the client to speak. With a one-minute
    // detection timeout, a banner within the test's 10 s proves no one waited for detection.
    // (The opaque-ports list itself matters under iptables; `intercept.rs` covers it.)
    let _db = greeter(
        TcpListener::bind(at(ip, 3306)).await.unwrap(),
        "220 hello from the server\r\n",
    )
    .await;
    let _server_proxy =
        Proxy::start(ip, &Mesh::new("s").build(), &["--detect-timeout", "60s"]).await;
    let config = Mesh::new("c1")
        .service("shop", "db", None, 3306, &[Ep::meshed(at(ip, 3306))])
        .build();
    let client = Proxy::start(pod_ip(), &config, &["--detect-timeout", "60s"]).await;

    let mut tunnel = connect_tunnel(client.outbound, "db.shop:3306").await;
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_line(&mut banner))
        .await
        .expect("banner in time")
        .unwrap();
    assert_eq!(banner, "220 hello from the server\r\n");
    tunnel.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    tunnel.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    tunnel.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "QUIT\r\n");
}

/// Opaque TCP between two sidecars certified by the control plane rides mutual TLS, and a
/// connection open across a config swap keeps flowing; a new one after it works as well.
#[tokio::test]
async fn opaque_tcp_rides_mtls_between_proxies_and_outlives_a_config_swap() {
    use weft_tests::control::ControlPlane;
    use weft_tests::manifests::Manifests;
    let cp = ControlPlane::start(pod_ip()).await;
    let ip = pod_ip();
    let _echo = tcp_echo(TcpListener::bind(at(ip, 9000)).await.unwrap()).await;
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: shop}\nspec:\n  selector: {app: echo}\n  ports: [{port: 9000, targetPort: 9000, appProtocol: tcp}]\n";
    let manifests =
        Manifests::new()
            .doc(service)
            .pod("shop", "echo", &[("app", "echo")], at(ip, 9000), true);
    cp.write("mesh.yaml", &manifests.yaml());
    let server = Proxy::joined(ip, &cp, "shop", "echo", &[]).await;
    let client = Proxy::joined(pod_ip(), &cp, "shop", "client", &[]).await;
    crate::identity::all_acked(&cp, &manifests, &[(&client, None)]).await;

    let mut tunnel = connect_tunnel(client.outbound, "echo.shop:9000").await;
    let round_trip = async |tunnel: &mut BufReader<TcpStream>, line: &str| {
        tunnel.get_mut().write_all(line.as_bytes()).await.unwrap();
        let mut back = String::new();
        tokio::time::timeout(Duration::from_secs(10), tunnel.read_line(&mut back))
            .await
            .expect("the echo in time")
            .unwrap();
        assert_eq!(back, line);
    };
    round_trip(&mut tunnel, "before the swap\n").await;
    let inbound_tls =
        r#"weft_tls_handshakes_total{direction="inbound",result="ok",reason="",version="TLSv1.3"}"#;
    assert!(server.metric(inbound_tls).await >= 1.0, "{}", server.log());
    let opaque = r#"weft_connections_total{direction="inbound",protocol="opaque"}"#;
    assert_eq!(server.metric(opaque).await, 1.0);

    // Another Service: every proxy gets a new config while the tunnel is open.
    let swapped = manifests.clone().doc(
        "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec:\n  selector: {app: other}\n  ports: [{port: 80}]\n",
    );
    cp.write("mesh.yaml", &swapped.yaml());
    crate::identity::all_acked(&cp, &swapped, &[(&client, None)]).await;
    round_trip(&mut tunnel, "after the swap\n").await;
    let mut fresh = connect_tunnel(client.outbound, "echo.shop:9000").await;
    round_trip(&mut fresh, "a new connection\n").await;
    tunnel.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    tunnel.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "", "the echo closed its side after ours");
    assert_eq!(server.metric(opaque).await, 2.0);
}
