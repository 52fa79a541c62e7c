//! Identity and mTLS end to end: `weft control` as the CA, proxies certified by it, mutual
//! TLS between them, ServerPolicy enforcement, and certificate rotation under load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use weft_tests::client::{self, error_header};
use weft_tests::control::ControlPlane;
use weft_tests::eventually;
use weft_tests::fake_control::{TestCa, certified};
use weft_tests::manifests::Manifests;
use weft_tests::mesh::Mesh;
use weft_tests::pods::pod_ip;
use weft_tests::proxy::Proxy;

use crate::{ServerPod, get};

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/shop/sa/productpage";

/// Service `shop/reviews` (port 9080 → 8080) over the pod `shop/reviews` at `server`.
fn reviews(server: &ServerPod) -> Manifests {
    Manifests::new()
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  selector: {app: reviews}\n  ports: [{port: 9080, targetPort: 8080}]\n")
        .pod("shop", "reviews", &[("app", "reviews")], server.app.addr, true)
}

fn server_policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: policy.weft.dev/v1alpha1\nkind: ServerPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n{spec}"
    )
}

/// Waits until the control plane reports every listed proxy (by pod IP) up to date with the
/// version its pod compiles to.
pub(crate) async fn all_acked(
    cp: &ControlPlane,
    manifests: &Manifests,
    pods: &[(&Proxy, Option<&str>)],
) {
    let want: Vec<(String, String)> = pods
        .iter()
        .map(|(proxy, pod)| {
            let config = match pod {
                Some(pod) => manifests.compile_pod("shop", pod),
                None => manifests.compile("shop"),
            };
            (proxy.pod_ip.to_string(), config.version)
        })
        .collect();
    eventually(
        &format!("the proxies to ack {want:?}"),
        Duration::from_secs(10),
        || async {
            let status = cp.status().await;
            let list = status["proxies"].as_array()?;
            want.iter()
                .all(|(ip, version)| {
                    list.iter()
                        .any(|p| p["podIp"] == *ip && p["acked"] == *version)
                })
                .then_some(())
        },
    )
    .await;
}

/// The caller identity the application was told, if any.
fn caller(seen: &serde_json::Value) -> Option<&str> {
    seen["headers"]["x-weft-peer-identity"].as_str()
}

/// The JSON the `/head` path of the test application answers with: the request it saw.
async fn head_seen(proxy: SocketAddr, url: &str) -> (u16, serde_json::Value) {
    let resp = client::get(proxy, url).await.unwrap();
    let status = resp.status().as_u16();
    let seen = serde_json::from_slice(resp.body()).unwrap_or(serde_json::Value::Null);
    (status, seen)
}

#[tokio::test]
async fn two_proxies_speak_tls_1_3_and_the_server_knows_the_caller() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let manifests = reviews(&server);
    cp.write("mesh.yaml", &manifests.yaml());
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &manifests, &[(&client, None), (&server.proxy, None)]).await;

    let (status, seen) = head_seen(client.outbound, "http://reviews.shop:9080/head").await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-weft-peer-identity"], PRODUCTPAGE);

    let ok_13 = r#"{direction="inbound",result="ok",reason="",version="TLSv1.3"}"#;
    assert!(
        server
            .proxy
            .metric(&format!("weft_tls_handshakes_total{ok_13}"))
            .await
            >= 1.0
    );
    let out_13 = r#"{direction="outbound",result="ok",reason="",version="TLSv1.3"}"#;
    assert!(
        client
            .metric(&format!("weft_tls_handshakes_total{out_13}"))
            .await
            >= 1.0
    );
    // A client cannot claim an identity by sending the header itself.
    let resp = client::get(client.outbound, "http://reviews.shop:9080/head")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut conn = client::http1(client.outbound).await.unwrap();
    let forged = conn
        .send_request(get(
            "http://reviews.shop:9080/head",
            &[(
                "x-weft-peer-identity",
                "spiffe://cluster.local/ns/kube-system/sa/admin",
            )],
        ))
        .await
        .unwrap();
    let body = forged.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-weft-peer-identity"], PRODUCTPAGE);
}

/// Accepts any server certificate: the tests below check what the *server* does with a bad
/// client certificate.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a client of the server's inbound port presents, in the mTLS matrix.
enum Presents {
    /// The transport header and a request in plaintext.
    Plaintext,
    /// Mesh TLS with this certificate (or none), offering these versions and protocols.
    Tls {
        cert: Option<Box<(String, rcgen::KeyPair)>>,
        version: &'static rustls::SupportedProtocolVersion,
        alpn: &'static [u8],
    },
}

/// Sends `GET /head` for application port 8080 to the inbound port `inbound`, as `presents`
/// says, and returns what came back before the server closed (nothing, when it refused the
/// connection).
async fn attempt(inbound: SocketAddr, presents: Presents) -> Vec<u8> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn exchange(mut io: impl AsyncRead + AsyncWrite + Unpin) -> Vec<u8> {
        // The transport header (magic, version 1, 3 bytes: the port, HTTP/1), then a request.
        let mut request = b"\0weft\x01\x00\x03".to_vec();
        request.extend_from_slice(&8080u16.to_be_bytes());
        request.push(1);
        request
            .extend_from_slice(b"GET /head HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n");
        let mut answer = Vec::new();
        if io.write_all(&request).await.is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut answer)).await;
        }
        answer
    }
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let Presents::Tls {
        cert,
        version,
        alpn,
    } = presents
    else {
        return exchange(tcp).await;
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match cert {
        Some(cert) => {
            let (chain, key) = certified(&cert.0, &cert.1);
            config.with_client_auth_cert(chain, key).unwrap()
        }
        None => config.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from("weft-mesh").unwrap();
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(tls) => exchange(tls).await,
        Err(_) => Vec::new(),
    }
}

/// A mesh TLS server on `addr` presenting `cert` (as a server pod's sidecar would), that
/// counts the application bytes any client sends it after a handshake.
async fn presenting(addr: SocketAddr, cert: (String, rcgen::KeyPair)) -> Arc<AtomicU64> {
    use tokio::io::AsyncReadExt;
    let (chain, key) = certified(&cert.0, &cert.1);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"weft/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    received
}

/// Log lines of `proxy` that say `reason`.
fn logged(proxy: &Proxy, reason: &str) -> usize {
    proxy
        .log()
        .lines()
        .filter(|l| l.contains("refused") && l.contains(reason))
        .count()
}

/// The mTLS negative matrix against a STRICT server sidecar whose policy allows one caller:
/// each way in that is not a mesh workload's is refused, counted with its reason and logged,
/// and the application sees nothing; the one allowed caller, presented the same way, is
/// served. Then the client's side: a server that presents a certificate for another
/// identity, or one from another CA, gets no request.
#[tokio::test]
async fn the_mtls_negative_matrix_refuses_counts_and_logs_each_and_the_app_sees_nothing() {
    use rustls::version::{TLS12, TLS13};
    // The control plane signs with a root this test holds, so that the test can also forge
    // certificates from the right CA.
    let ca = TestCa::new();
    let dir = weft_tests::paths::scratch_dir("ca");
    let (cert, key) = ca.write_files(&dir);
    let cp = ControlPlane::start_with(
        pod_ip(),
        &[
            "--ca-cert".into(),
            cert.display().to_string(),
            "--ca-key".into(),
            key.display().to_string(),
        ],
    )
    .await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    // The client side's server pods: TLS servers of the test's on their inbound ports.
    let (ratings, details) = (pod_ip(), pod_ip());
    let manifests = reviews(&server)
        .doc(&server_policy(
            "mtls",
            &format!("  mtls: STRICT\n  rules:\n    - action: Allow\n      from: {{identities: [\"{PRODUCTPAGE}\"]}}\n"),
        ))
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: shop}\nspec:\n  selector: {app: ratings}\n  ports: [{port: 9080, targetPort: 8080}]\n")
        .pod(
            "shop",
            "ratings",
            &[("app", "ratings")],
            weft_tests::pods::at(ratings, 8080),
            true,
        )
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: details, namespace: shop}\nspec:\n  selector: {app: details}\n  ports: [{port: 9080, targetPort: 8080}]\n")
        .pod(
            "shop",
            "details",
            &[("app", "details")],
            weft_tests::pods::at(details, 8080),
            true,
        );
    cp.write("mesh.yaml", &manifests.yaml());
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(
        &cp,
        &manifests,
        &[(&client, None), (&server.proxy, Some("reviews"))],
    )
    .await;

    let inbound = SocketAddr::new(server.proxy.pod_ip, 15143);
    let now = time::OffsetDateTime::now_utc();
    let hours = time::Duration::hours;
    let other = TestCa::new();
    let valid = || Some(Box::new(ca.issue_now(PRODUCTPAGE)));
    let tls = |cert, version, alpn| Presents::Tls {
        cert,
        version,
        alpn,
    };
    let handshake = |reason: &str| {
        format!(
            r#"weft_tls_handshakes_total{{direction="inbound",result="error",reason="{reason}",version=""}}"#
        )
    };
    let denied = |reason: &str| {
        format!(r#"weft_inbound_denied_total{{policy="shop/mtls",reason="{reason}"}}"#)
    };
    // (what the client presents, the sample that counts its refusal, the reason logged, the
    // answer's status line: none when the connection is refused)
    let cases: Vec<(&str, Presents, String, &str, Option<&str>)> = vec![
        (
            "plaintext",
            Presents::Plaintext,
            denied("plaintext"),
            "plaintext",
            None,
        ),
        (
            "no client certificate",
            tls(None, &TLS13, b"weft/1"),
            denied("no-client-cert"),
            "no-client-cert",
            None,
        ),
        (
            "another CA",
            tls(
                Some(Box::new(other.issue_now(PRODUCTPAGE))),
                &TLS13,
                b"weft/1",
            ),
            handshake("unknown-ca"),
            "unknown-ca",
            None,
        ),
        (
            "expired",
            tls(
                Some(Box::new(ca.issue(
                    PRODUCTPAGE,
                    now - hours(2),
                    now - hours(1),
                ))),
                &TLS13,
                b"weft/1",
            ),
            handshake("expired"),
            "expired",
            None,
        ),
        (
            "not yet valid",
            tls(
                Some(Box::new(ca.issue(
                    PRODUCTPAGE,
                    now + hours(1),
                    now + hours(2),
                ))),
                &TLS13,
                b"weft/1",
            ),
            handshake("not-yet-valid"),
            "not-yet-valid",
            None,
        ),
        (
            "an identity of another trust domain",
            tls(
                Some(Box::new(
                    ca.issue_now("spiffe://evil.example/ns/shop/sa/productpage"),
                )),
                &TLS13,
                b"weft/1",
            ),
            handshake("identity-mismatch"),
            "identity-mismatch",
            None,
        ),
        (
            "an identity the policy does not allow",
            tls(
                Some(Box::new(
                    ca.issue_now("spiffe://cluster.local/ns/shop/sa/intruder"),
                )),
                &TLS13,
                b"weft/1",
            ),
            denied("unauthorized"),
            "unauthorized",
            Some("HTTP/1.1 403"),
        ),
        (
            "a TLS 1.2-only client",
            tls(valid(), &TLS12, b"weft/1"),
            handshake("tls-version"),
            "tls-version",
            None,
        ),
        (
            "the wrong ALPN",
            tls(valid(), &TLS13, b"h2"),
            handshake("alpn"),
            "alpn",
            None,
        ),
    ];
    for (name, presents, sample, reason, answer) in cases {
        let (requests, count, lines) = (
            server.app.requests(),
            server.proxy.metric(&sample).await,
            logged(&server.proxy, reason),
        );
        let got = attempt(inbound, presents).await;
        let got = String::from_utf8_lossy(&got);
        match answer {
            None => assert!(got.is_empty(), "{name}: answered {got}"),
            Some(status) => assert!(got.starts_with(status), "{name}: answered {got}"),
        }
        eventually(
            &format!("{name}: refused and counted in {sample}"),
            Duration::from_secs(10),
            || async { (server.proxy.metric(&sample).await == count + 1.0).then_some(()) },
        )
        .await;
        assert!(
            logged(&server.proxy, reason) > lines,
            "{name}: no log line says {reason}:\n{}",
            server.proxy.log()
        );
        assert_eq!(
            server.app.requests(),
            requests,
            "{name}: reached the application"
        );
    }
    // The allowed caller, presented the same way: served.
    let got = attempt(inbound, tls(valid(), &TLS13, b"weft/1")).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "the allowed caller: {got}");
    assert!(
        got.contains(PRODUCTPAGE),
        "the application told the caller: {got}"
    );

    // From the client's side: each pod's sidecar must present its own service account.
    let outbound = |reason: &str| {
        format!(
            r#"weft_tls_handshakes_total{{direction="outbound",result="error",reason="{reason}",version=""}}"#
        )
    };
    let server_cases = [
        (
            "a server certified for another identity",
            ratings,
            "ratings",
            ca.issue_now("spiffe://cluster.local/ns/shop/sa/imposter"),
            "identity-mismatch",
        ),
        (
            "a server certified by another CA",
            details,
            "details",
            other.issue_now("spiffe://cluster.local/ns/shop/sa/details"),
            "unknown-ca",
        ),
    ];
    for (name, ip, service, cert, reason) in server_cases {
        let before = client.metric(&outbound(reason)).await;
        let received = presenting(SocketAddr::new(ip, 15143), cert).await;
        let resp = client::get(client.outbound, &format!("http://{service}.shop:9080/"))
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), error_header(&resp).as_str()),
            (502, "connect-failed"),
            "{name}"
        );
        assert!(
            client.metric(&outbound(reason)).await > before,
            "{name}: not counted"
        );
        assert!(
            client.log().contains("mesh TLS handshake failed"),
            "{name}: not logged"
        );
        assert_eq!(
            received.load(Ordering::SeqCst),
            0,
            "{name}: a request was sent"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A proxy certified as another identity takes a pod's address: the client's sidecar refuses
/// it, ejects it, and its retries reach the real pod.
#[tokio::test]
async fn a_server_proxy_certified_as_another_identity_gets_nothing() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    // The Pod says service account `reviews`; a proxy certified as `imposter` takes its IP.
    let imposter_ip = pod_ip();
    let imposter_app = weft_tests::workloads::HttpBackend::start(
        weft_tests::pods::at(imposter_ip, 8080),
        "imposter",
    )
    .await;
    let imposter = Proxy::joined(imposter_ip, &cp, "shop", "imposter", &[]).await;
    let manifests = reviews(&server).pod(
        "shop",
        "reviews-2",
        &[("app", "reviews")],
        imposter_app.addr,
        true,
    );
    // `Manifests::pod` names the service account after the pod: `reviews-2`, not `imposter`.
    cp.write("mesh.yaml", &manifests.yaml());
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &manifests, &[(&client, None), (&imposter, None)]).await;
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let resp = client::get(client.outbound, "http://reviews.shop:9080/")
            .await
            .unwrap();
        *served
            .entry((resp.status().as_u16(), client::served_by(&resp)))
            .or_insert(0) += 1;
    }
    // The breaker ejects the impostor after its first failures; retries of connect failures
    // land on the real pod. Nothing ever reaches the impostor.
    assert!(served.keys().all(|(_, by)| by != "imposter"), "{served:?}");
    assert!(
        served.contains_key(&(200, "reviews".to_owned())),
        "{served:?}"
    );
    let mismatch = r#"weft_tls_handshakes_total{direction="outbound",result="error",reason="identity-mismatch",version=""}"#;
    assert!(client.metric(mismatch).await >= 1.0, "{}", client.log());
    drop(imposter_app);
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_accepts_it() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let strict = reviews(&server).doc(&server_policy("mtls", "  mtls: STRICT\n"));
    cp.write("mesh.yaml", &strict.yaml());
    let meshed = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    // A proxy without an identity: it reaches the server's inbound port in plaintext.
    let plain = Proxy::start(
        pod_ip(),
        &Mesh::new("plain")
            .service("shop", "reviews", None, 9080, &[server.endpoint()])
            .build(),
        &[],
    )
    .await;
    all_acked(
        &cp,
        &strict,
        &[(&meshed, None), (&server.proxy, Some("reviews"))],
    )
    .await;

    let (status, seen) = head_seen(meshed.outbound, "http://reviews.shop:9080/head").await;
    assert_eq!((status, caller(&seen)), (200, Some(PRODUCTPAGE)), "{seen}");
    let resp = client::get(plain.outbound, "http://reviews.shop:9080/")
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "plaintext to a STRICT port");
    let denied = r#"weft_inbound_denied_total{policy="shop/mtls",reason="plaintext"}"#;
    assert!(server.proxy.metric(denied).await >= 1.0);

    let permissive = reviews(&server).doc(&server_policy("mtls", "  mtls: PERMISSIVE\n"));
    cp.write("mesh.yaml", &permissive.yaml());
    all_acked(&cp, &permissive, &[(&server.proxy, Some("reviews"))]).await;
    let (status, seen) = head_seen(plain.outbound, "http://reviews.shop:9080/head").await;
    assert_eq!(status, 200, "plaintext to a PERMISSIVE port");
    assert_eq!(caller(&seen), None, "no identity without mesh TLS");
    let (status, seen) = head_seen(meshed.outbound, "http://reviews.shop:9080/head").await;
    assert_eq!((status, caller(&seen)), (200, Some(PRODUCTPAGE)), "{seen}");

    // DISABLE: clients are told to send plaintext, and the server takes it.
    let disabled = reviews(&server).doc(&server_policy("mtls", "  mtls: DISABLE\n"));
    cp.write("mesh.yaml", &disabled.yaml());
    all_acked(
        &cp,
        &disabled,
        &[(&meshed, None), (&server.proxy, Some("reviews"))],
    )
    .await;
    let handshakes = r#"weft_tls_handshakes_total{direction="outbound",result="ok",reason="",version="TLSv1.3"}"#;
    let before = meshed.metric(handshakes).await;
    // A new connection from the client: pooled TLS connections were made under the old config.
    let fresh = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &disabled, &[(&fresh, None)]).await;
    let (status, seen) = head_seen(fresh.outbound, "http://reviews.shop:9080/head").await;
    assert_eq!(status, 200);
    assert_eq!(caller(&seen), None, "{seen}");
    assert_eq!(
        fresh.metric(handshakes).await,
        0.0,
        "no mesh TLS under DISABLE"
    );
    assert_eq!(meshed.metric(handshakes).await, before);
}

#[tokio::test]
async fn authorization_allows_and_denies_by_identity_namespace_path_and_method() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let policy = server_policy(
        "authz",
        "  mtls: STRICT\n  rules:\n    - action: Allow\n      from: {identities: [\"spiffe://cluster.local/ns/shop/sa/productpage\"]}\n      to: {paths: [\"/api/*\"], methods: [GET]}\n    - action: Allow\n      from: {identities: [\"spiffe://cluster.local/ns/shop/sa/productpage\"]}\n      to: {paths: [\"/head/*\"]}\n    - action: Allow\n      from: {namespaces: [data]}\n      to: {paths: [/public]}\n    - action: Deny\n      to: {paths: [\"/api/admin*\"]}\n",
    );
    let manifests = reviews(&server).doc(&policy);
    cp.write("mesh.yaml", &manifests.yaml());
    let productpage = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    let ratings_shop = Proxy::joined(pod_ip(), &cp, "shop", "ratings", &[]).await;
    let ratings_data = Proxy::joined(pod_ip(), &cp, "data", "ratings", &[]).await;
    all_acked(&cp, &manifests, &[(&server.proxy, Some("reviews"))]).await;

    let cases: &[(&Proxy, &str, &str, u16)] = &[
        (&productpage, "GET", "/api/items", 200),
        (&productpage, "POST", "/api/items", 403),
        (&productpage, "GET", "/other", 403),
        (&productpage, "GET", "/api/admin", 403),
        // Deny rules see the normalized path: no way around them by spelling.
        (&productpage, "GET", "/api//admin", 403),
        (&productpage, "GET", "/api/x/../admin/users", 403),
        (&productpage, "GET", "/api/%61dmin", 403),
        (&productpage, "GET", "/api/a%2Fb", 403),
        (&ratings_shop, "GET", "/api/items", 403),
        (&ratings_data, "GET", "/public", 200),
        (&ratings_data, "GET", "/api/items", 403),
    ];
    for (proxy, method, path, want) in cases {
        let (host, port) = ("reviews.shop.svc.cluster.local", 9080);
        let req = Request::builder()
            .method(*method)
            .uri(format!("http://{host}:{port}{path}"))
            .body(client::empty())
            .unwrap();
        let mut conn = client::http1(proxy.outbound).await.unwrap();
        let resp = conn.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let error = error_header(&resp);
        assert_eq!(status, *want, "{method} {path} from {}", proxy.pod_ip);
        if *want == 403 {
            assert_eq!(error, "unauthorized");
        }
    }
    let denied = r#"weft_inbound_denied_total{policy="shop/authz",reason="unauthorized"}"#;
    assert_eq!(server.proxy.metric(denied).await, 9.0);
    // The application gets the normalized path that was authorized, query intact.
    let (status, seen) = head_seen(
        productpage.outbound,
        "http://reviews.shop:9080/head/./x//../y?q=1",
    )
    .await;
    assert_eq!(
        (status, seen["uri"].as_str()),
        (200, Some("/head/y?q=1")),
        "{seen}"
    );
}

#[tokio::test]
async fn the_inbound_rate_limit_answers_429_beyond_its_burst() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let manifests = reviews(&server).doc(&server_policy(
        "limit",
        "  rateLimit: {requestsPerSecond: 1, burst: 3}\n",
    ));
    cp.write("mesh.yaml", &manifests.yaml());
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &manifests, &[(&server.proxy, Some("reviews"))]).await;

    let start = Instant::now();
    let mut conn = client::http1(client.outbound).await.unwrap();
    let (mut ok, mut limited) = (0u64, 0u64);
    for _ in 0..10 {
        conn.ready().await.unwrap();
        let resp = conn
            .send_request(get("http://reviews.shop:9080/", &[]))
            .await
            .unwrap();
        match (resp.status().as_u16(), error_header(&resp).as_str()) {
            (200, _) => ok += 1,
            (429, "rate-limited") => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        resp.into_body().collect().await.unwrap();
    }
    // The burst, plus at most one token per second that passed.
    let refills = start.elapsed().as_secs() + 1;
    assert!(ok >= 3 && ok <= 3 + refills, "{ok} passed");
    assert_eq!(ok + limited, 10);
    let counted = r#"weft_inbound_denied_total{policy="shop/limit",reason="rate-limited"}"#;
    assert_eq!(server.proxy.metric(counted).await, limited as f64);
}

#[tokio::test]
async fn certificates_rotate_three_times_under_load_without_losing_a_request() {
    let cp = ControlPlane::start_with(pod_ip(), &["--cert-lifetime".into(), "60s".into()]).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let manifests = reviews(&server);
    cp.write("mesh.yaml", &manifests.yaml());
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &manifests, &[(&client, None), (&server.proxy, None)]).await;
    let issued = r#"weft_identity_renewals_total{result="issued"}"#;

    // A response that streams across every renewal: 1 KiB each 20 ms for 140 s.
    let long = {
        let addr = client.outbound;
        tokio::spawn(async move {
            let resp = client::get(addr, "http://reviews.shop:9080/drip/7000").await?;
            anyhow::Ok((resp.status().as_u16(), resp.body().len()))
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for reconnect_every in [u64::MAX, 20] {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), client.outbound);
        load.push(tokio::spawn(async move {
            let mut conn = client::http1(addr).await.unwrap();
            let mut sent = 0u64;
            // Bounded: the test stops it long before this count.
            while !stop.load(Ordering::Relaxed) && sent < 2_000_000 {
                sent += 1;
                if sent.is_multiple_of(reconnect_every) || conn.ready().await.is_err() {
                    conn = client::http1(addr).await.unwrap();
                }
                let good = match conn
                    .send_request(get("http://reviews.shop:9080/", &[]))
                    .await
                {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    conn = client::http1(addr).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // The first certificate plus three renewals, on both sides (70% of 60 s each).
    for proxy in [&client, &server.proxy] {
        eventually("three renewals", Duration::from_secs(180), || async {
            (proxy.metric(issued).await >= 4.0).then_some(())
        })
        .await;
    }
    let (status, bytes) = long.await.unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        (status, bytes),
        (200, 7000 * 1024),
        "the long response outlived its certificates"
    );
    assert_eq!(failed, 0, "{ok} succeeded");
    assert!(ok > 1000, "{ok} requests");
    for proxy in [&client, &server.proxy] {
        let failures = r#"weft_identity_renewals_total{result="failed"}"#;
        assert_eq!(proxy.metric(failures).await, 0.0);
    }
    // The original certificates have expired: new handshakes succeed on renewed ones.
    let fresh = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &manifests, &[(&fresh, None)]).await;
    let (status, seen) = head_seen(fresh.outbound, "http://reviews.shop:9080/head").await;
    assert_eq!((status, caller(&seen)), (200, Some(PRODUCTPAGE)), "{seen}");
}

#[tokio::test]
async fn http1_between_proxies_shares_one_http2_connection_and_arrives_as_http1() {
    let cp = ControlPlane::start(pod_ip()).await;
    let server = ServerPod::joined("reviews", &cp, "reviews").await;
    let manifests = reviews(&server);
    cp.write("mesh.yaml", &manifests.yaml());
    let client = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    all_acked(&cp, &manifests, &[(&client, None), (&server.proxy, None)]).await;

    // Eight HTTP/1 clients at once, each on a connection of its own, each response taking
    // 200 ms: one HTTP/2 connection between the proxies carries them all.
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let addr = client.outbound;
            tokio::spawn(async move {
                let resp = client::get(addr, "http://reviews.shop:9080/drip/10").await?;
                anyhow::Ok((resp.status().as_u16(), resp.body().len()))
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), (200, 10 * 1024));
    }
    let (status, body) = client::request_text(
        client.outbound,
        "POST",
        "http://reviews.shop:9080/echo",
        "a body that streams back",
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "a body that streams back"));
    // The application sees HTTP/1.1 as the client sent it, without the proxies' marker.
    let (status, seen) = head_seen(client.outbound, "http://reviews.shop:9080/head?x=1").await;
    assert_eq!(status, 200);
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
    assert_eq!(seen["uri"], "/head?x=1", "{seen}");
    assert_eq!(seen["headers"]["host"], "reviews.shop:9080", "{seen}");
    assert_eq!(seen["headers"].get("x-weft-orig-proto"), None, "{seen}");
    assert_eq!(caller(&seen), Some(PRODUCTPAGE));

    let inbound = |protocol: &str| {
        format!(r#"weft_connections_total{{direction="inbound",protocol="{protocol}"}}"#)
    };
    assert_eq!(server.proxy.metric(&inbound("http2")).await, 1.0);
    assert_eq!(server.proxy.metric(&inbound("http1")).await, 0.0);
}

#[tokio::test]
async fn the_ca_refuses_a_bad_token_and_any_identity_the_token_does_not_prove() {
    use std::os::unix::fs::PermissionsExt;
    let cp = ControlPlane::start(pod_ip()).await;
    let key_mode = std::fs::metadata(cp.state.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the CA key is private");

    let productpage = cp.token("shop", "productpage");
    let garbage = cp.state.join("garbage.token");
    std::fs::write(&garbage, "v1.shop.productpage.9999999999.forged").unwrap();
    // (token, namespace, service account the proxy asks for)
    let cases = [
        (&garbage, "shop", "productpage"),
        // A token for shop/productpage, used to ask for an identity in another namespace and
        // for another service account: the CSR names what the token does not prove.
        (&productpage, "data", "productpage"),
        (&productpage, "shop", "admin"),
    ];
    let mut proxies = Vec::new();
    for (token, namespace, service_account) in cases {
        let mut flags = cp.proxy_flags(namespace, service_account);
        let at = flags.iter().position(|f| f == "--token-file").unwrap() + 1;
        flags[at] = token.display().to_string();
        proxies.push(Proxy::spawn_raw(pod_ip(), &flags));
    }
    let sample = |result: &str| format!(r#"weft_control_certificates_total{{result="{result}"}}"#);
    eventually("three refusals", Duration::from_secs(15), || async {
        let (_, metrics) = cp.get("/metrics").await.ok()?;
        (weft_tests::proxy::metric_value(&metrics, &sample("refused")) >= 3.0).then_some(())
    })
    .await;
    let (_, metrics) = cp.get("/metrics").await.unwrap();
    assert_eq!(
        weft_tests::proxy::metric_value(&metrics, &sample("issued")),
        0.0
    );
    for proxy in &proxies {
        let (status, body) = proxy.admin_get("/ready").await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (503, "waiting for a certificate\n")
        );
    }
    let log = cp.log();
    assert!(log.contains("certificate refused: bad token"), "{log}");
    assert!(
        log.lines().any(|l| l.contains("certificate refused")
            && l.contains("identity=spiffe://cluster.local/ns/shop/sa/productpage")),
        "{log}"
    );
    let issued = std::fs::read_to_string(cp.state.join("issued.log")).unwrap_or_default();
    assert!(
        !issued.contains("/sa/admin") && !issued.contains("/ns/data/"),
        "{issued}"
    );
}
