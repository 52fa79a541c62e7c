//! The proxy's identity: a key made in memory (it never leaves the process), a certificate for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` from the control plane's CA,
//! renewed at 70% of its lifetime, and the TLS configs that present it.
//!
//! Certificates are swapped atomically behind rustls' certificate resolvers: connections open
//! during a renewal keep working, and every new handshake uses the new certificate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use weft_api::identity::{self, SpiffeId, SpiffeServerVerifier};
use weft_api::proto::identity::SignRequest;
use weft_api::proto::identity::identity_service_client::IdentityServiceClient;
use weft_api::sync::lock;

use crate::metrics::Metrics;

/// ALPN of a mesh hop between two proxies.
pub const MESH_ALPN: &[u8] = b"weft/1";

/// A certificate in force.
#[derive(Debug)]
pub struct Credentials {
    pub key: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
    pub renew_at: i64,
}

/// A client config is made per expected peer identity and ALPN.
type PeerKey = (String, &'static [u8]);

/// The workload's identity and its certificates.
pub struct Identity {
    pub id: SpiffeId,
    pub anchors: Arc<RootCertStore>,
    anchors_fingerprint: String,
    current: ArcSwapOption<Credentials>,
    certified: watch::Sender<bool>,
    client_configs: Mutex<HashMap<PeerKey, Arc<ClientConfig>>>,
    server_config: Mutex<Option<Arc<ServerConfig>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("trust anchors: {0}")]
    Anchors(#[from] identity::IdentityError),
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("making a key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("connecting to the control plane at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the control plane refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the certificate from the control plane is unusable: {0}")]
    Unusable(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl Identity {
    pub fn new(id: SpiffeId, anchors_pem: &str) -> Result<Arc<Identity>, IdentityError> {
        let anchors = identity::anchors_from_pem(anchors_pem)?;
        let first = identity::certs_from_pem(anchors_pem)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, first[0].as_ref());
        let anchors_fingerprint = digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Arc::new(Identity {
            id,
            anchors: Arc::new(anchors),
            anchors_fingerprint,
            current: ArcSwapOption::empty(),
            certified: watch::Sender::new(false),
            client_configs: Mutex::new(HashMap::new()),
            server_config: Mutex::new(None),
        }))
    }

    pub fn is_certified(&self) -> bool {
        self.current.load().is_some()
    }

    /// Waits until the first certificate is in.
    pub async fn certified(&self) {
        let mut rx = self.certified.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// A client config that presents this identity and accepts only a server that presents
    /// `expected`, with ALPN `alpn`. Cached: the certificate is resolved per handshake.
    pub fn client_config(
        self: &Arc<Self>,
        expected: &str,
        alpn: &'static [u8],
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        let mut configs = lock(&self.client_configs);
        if let Some(c) = configs.get(&(expected.to_owned(), alpn)) {
            return Ok(c.clone());
        }
        let verifier = SpiffeServerVerifier::new(self.anchors.clone(), expected.to_owned());
        let mut config = ClientConfig::builder_with_provider(identity::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = Arc::new(config);
        configs.insert((expected.to_owned(), alpn), config.clone());
        Ok(config)
    }

    /// The server config of the inbound side: clients may present a certificate (verified
    /// against the trust anchors); whether they must is the server policy's decision.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, IdentityError> {
        let mut slot = lock(&self.server_config);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let provider = identity::provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.anchors.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| IdentityError::Unusable(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![MESH_ALPN.to_vec()];
        let config = Arc::new(config);
        *slot = Some(config.clone());
        Ok(config)
    }

    /// `/certs`.
    pub fn describe(&self) -> serde_json::Value {
        let creds = self.current.load();
        serde_json::json!({
            "spiffeId": self.id.to_string(),
            "certified": creds.is_some(),
            "notBefore": creds.as_ref().map(|c| rfc3339(c.not_before)),
            "notAfter": creds.as_ref().map(|c| rfc3339(c.not_after)),
            "nextRenewal": creds.as_ref().map(|c| rfc3339(c.renew_at)),
            "trustAnchorFingerprint": format!("sha256:{}", self.anchors_fingerprint),
        })
    }

    fn install(&self, chain_pem: &str, key: &KeyPair) -> Result<Arc<Credentials>, IdentityError> {
        let chain = identity::certs_from_pem(chain_pem)?;
        let got = identity::spiffe_id_of(chain[0].as_ref())?;
        if got != self.id.to_string() {
            return Err(IdentityError::Unusable(format!(
                "it is for {got}, not {}",
                self.id
            )));
        }
        let (not_before, not_after) = identity::validity(chain[0].as_ref())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = identity::provider().key_provider.load_private_key(der)?;
        // 70% of the lifetime from when it was issued: `notBefore` is backdated by the CA's
        // clock-skew allowance, which would shorten short lifetimes a lot.
        let issued = not_before.max(unix_now().min(not_after));
        let renew_at = issued + (not_after - issued) * 7 / 10;
        let creds = Arc::new(Credentials {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            not_before,
            not_after,
            renew_at,
        });
        self.current.store(Some(creds.clone()));
        self.certified.send_replace(true);
        Ok(creds)
    }
}

/// `2026-11-23T10:00:00Z`: a Unix time as RFC 3339, in UTC.
fn rfc3339(unix: i64) -> String {
    let Some(at) = u64::try_from(unix)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
    else {
        return String::new();
    };
    crate::telemetry::rfc3339(at)
}

/// Resolves the current certificate for each handshake.
#[derive(Debug)]
struct Resolver(Arc<Identity>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.to_string())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.load().as_ref().map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current.load().as_ref().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Where and how to get certificates.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub control_plane: String,
    /// The control plane's own SPIFFE ID.
    pub control_plane_identity: String,
    /// A file holding the token; read again at every request, so it can rotate.
    pub token_file: PathBuf,
    /// The proxy's pod, named in each request.
    pub pod_name: String,
    pub pod_ip: String,
}

/// A TLS connection to the control plane, with this proxy's certificate once it has one.
pub async fn connect_control_plane(
    identity: &Arc<Identity>,
    issuer: &Issuer,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, IdentityError> {
    let addr = &issuer.control_plane;
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .map_err(|_| IdentityError::Connect(addr.clone(), std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| IdentityError::Connect(addr.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let config = identity.client_config(&issuer.control_plane_identity, b"h2")?;
    let name =
        ServerName::try_from("weft-control").map_err(|e| IdentityError::Unusable(e.to_string()))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| IdentityError::Connect(addr.clone(), std::io::ErrorKind::TimedOut.into()))?
    .map_err(|e| IdentityError::Connect(addr.clone(), e))
}

/// Gets a certificate: a new key, a CSR for our identity, the token, the CA's answer.
async fn request(
    identity: &Arc<Identity>,
    issuer: &Issuer,
) -> Result<Arc<Credentials>, IdentityError> {
    let token = std::fs::read_to_string(&issuer.token_file)
        .map_err(|e| IdentityError::Read(issuer.token_file.clone(), e))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.id.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let tls = connect_control_plane(identity, issuer).await?;
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| {
                IdentityError::Connect(issuer.control_plane.clone(), std::io::Error::other(e))
            })?;
    tokio::spawn(conn);
    let origin = http::Uri::from_static("https://weft-control");
    let mut client = IdentityServiceClient::with_origin(crate::grpc::Channel(sender), origin);
    let resp = client
        .sign(SignRequest {
            csr,
            token: token.trim().to_owned(),
            pod_name: issuer.pod_name.clone(),
            pod_ip: issuer.pod_ip.clone(),
        })
        .await?
        .into_inner();
    identity.install(&resp.certificate_chain, &key)
}

/// Gets the first certificate and renews it for as long as the process runs.
pub async fn run(identity: Arc<Identity>, issuer: Issuer, metrics: Arc<Metrics>) {
    let mut failures = 0u32;
    loop {
        match request(&identity, &issuer).await {
            Ok(creds) => {
                failures = 0;
                metrics.identity_renewed(true, creds.not_after);
                tracing::info!(identity = %identity.id, not_after = creds.not_after, "certificate in force");
                let now = unix_now();
                let wait = u64::try_from(creds.renew_at - now).unwrap_or(0);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics.identity_renewed(false, identity.credentials().map_or(0, |c| c.not_after));
                let ceiling = Duration::from_millis(250)
                    .saturating_mul(1 << failures.min(7))
                    .min(Duration::from_secs(30));
                tracing::warn!(identity = %identity.id, error = %e, retry_in = ?ceiling, "getting a certificate failed");
                tokio::time::sleep(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_392_000), "2026-11-23T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
