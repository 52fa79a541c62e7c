//! A control plane in the test process, speaking the real protocol (TLS, certificate signing,
//! the config stream), that sends whatever snapshots the test gives it and records the proxy's
//! replies: for what the real one never does, like sending a config a proxy must refuse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_api::proto::config_service_server::{ConfigService, ConfigServiceServer};
use weft_api::proto::identity::identity_service_server::{IdentityService, IdentityServiceServer};
use weft_api::proto::identity::{SignRequest, SignResponse};
use weft_api::proto::{ProxyMessage, Snapshot};

use crate::paths::scratch_dir;

/// A test CA: a root that signs whatever the test asks.
pub struct TestCa {
    pub root_pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Every test CA has a name of its own, as distinct CAs do.
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("weft test CA {:016x}", fastrand::u64(..)),
        );
        let root = params.self_signed(&key).expect("root");
        TestCa {
            root_pem: root.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key for `spiffe_id`, valid from `not_before` to `not_after`.
    pub fn issue(
        &self,
        spiffe_id: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (String, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("uri"))];
        params.not_before = not_before;
        params.not_after = not_after;
        (
            params.signed_by(&key, &self.issuer).expect("signed").pem(),
            key,
        )
    }

    /// A certificate for `spiffe_id`, valid for a day.
    pub fn issue_now(&self, spiffe_id: &str) -> (String, KeyPair) {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            spiffe_id,
            now - time::Duration::minutes(1),
            now + time::Duration::days(1),
        )
    }

    /// Writes the root and its key into `dir`, for `weft control --ca-cert --ca-key`.
    pub fn write_files(&self, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        std::fs::create_dir_all(dir).expect("ca dir");
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        std::fs::write(&cert, &self.root_pem).expect("writing the CA certificate");
        std::fs::write(&key, &self.key_pem).expect("writing the CA key");
        (cert, key)
    }

    /// Signs a CSR as it asks.
    pub fn sign_csr(&self, csr: &str) -> String {
        let csr = CertificateSigningRequestParams::from_pem(csr).expect("csr");
        csr.signed_by(&self.issuer).expect("signed").pem()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// Rustls server credentials from a PEM certificate and its key.
pub fn certified(
    cert_pem: &str,
    key: &KeyPair,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = weft_api::identity::certs_from_pem(cert_pem).expect("certs");
    (
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

struct Fake {
    ca: Arc<TestCa>,
    snapshots: Mutex<Option<mpsc::Receiver<Snapshot>>>,
    replies: mpsc::Sender<ProxyMessage>,
}

type SnapshotStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Snapshot, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for Fake {
    type SubscribeStream = SnapshotStream;

    async fn subscribe(
        &self,
        request: tonic::Request<tonic::Streaming<ProxyMessage>>,
    ) -> Result<tonic::Response<SnapshotStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let replies = self.replies.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let _ = replies.send(m).await;
            }
        });
        let rx = self
            .snapshots
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| tonic::Status::unavailable("one subscriber only"))?;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (Ok(s), rx))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl IdentityService for Fake {
    async fn sign(
        &self,
        request: tonic::Request<SignRequest>,
    ) -> Result<tonic::Response<SignResponse>, tonic::Status> {
        let chain = self.ca.sign_csr(&request.into_inner().csr);
        Ok(tonic::Response::new(SignResponse {
            certificate_chain: chain,
            trust_anchors: self.ca.root_pem.clone(),
        }))
    }
}

/// A running fake control plane.
pub struct FakeControlPlane {
    pub addr: SocketAddr,
    pub snapshots: mpsc::Sender<Snapshot>,
    pub replies: mpsc::Receiver<ProxyMessage>,
    pub anchor: PathBuf,
    pub token: PathBuf,
    task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl FakeControlPlane {
    pub async fn start(ip: std::net::IpAddr) -> FakeControlPlane {
        let ca = Arc::new(TestCa::new());
        let (snapshot_tx, snapshot_rx) = mpsc::channel(4);
        let (reply_tx, replies) = mpsc::channel(16);
        let fake = Arc::new(Fake {
            ca: ca.clone(),
            snapshots: Mutex::new(Some(snapshot_rx)),
            replies: reply_tx,
        });
        let (cert, key) = ca.issue_now("spiffe://cluster.local/ns/weft-system/sa/weft-control");
        let (chain, key) = certified(&cert, &key);
        let provider = weft_api::identity::provider();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("cert");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ConfigServiceServer::from_arc(fake.clone());
        let identity = IdentityServiceServer::from_arc(fake);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, config, identity) =
                    (acceptor.clone(), config.clone(), identity.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (mut config, mut identity) = (config.clone(), identity.clone());
                            async move {
                                use tower_service::Service as _;
                                if req.uri().path().starts_with("/weft.identity.v1.") {
                                    identity.call(req).await
                                } else {
                                    config.call(req).await
                                }
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        let dir = scratch_dir("fake-control");
        let anchor = dir.join("anchor.pem");
        std::fs::write(&anchor, &ca.root_pem).expect("anchor");
        let token = dir.join("token");
        std::fs::write(&token, "any").expect("token");
        FakeControlPlane {
            addr,
            snapshots: snapshot_tx,
            replies,
            anchor,
            token,
            task,
            dir,
        }
    }

    /// The flags a proxy needs to join.
    pub fn proxy_flags(&self) -> Vec<String> {
        [
            "--control-plane",
            &self.addr.to_string(),
            "--trust-anchor",
            &self.anchor.display().to_string(),
            "--token-file",
            &self.token.display().to_string(),
            "--namespace",
            "shop",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }
}
