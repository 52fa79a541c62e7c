//! TLS for the control plane's gRPC port and its admission webhook: its own certificate, issued by its CA and renewed
//! before it expires, and client certificates verified against the trust anchors but not
//! required (a proxy asks for its first certificate before it has one).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use weft_api::identity::{self, SpiffeId};

use crate::ca::{Ca, CaError};

/// The control plane's serving certificate, swapped in place when renewed.
pub struct ServerCredentials {
    current: ArcSwap<CertifiedKey>,
    identity: SpiffeId,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("trust anchors: {0}")]
    Anchors(#[from] identity::IdentityError),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn certified(
    ca: &Ca,
    id: &SpiffeId,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<CertifiedKey, TlsError> {
    let (issued, key) = ca.issue_server(id, dns, ips)?;
    let chain = identity::certs_from_pem(&issued.chain_pem)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = identity::provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signing))
}

impl ServerCredentials {
    pub fn issue(
        ca: &Ca,
        identity: SpiffeId,
        dns: Vec<String>,
        ips: Vec<IpAddr>,
    ) -> Result<Arc<ServerCredentials>, TlsError> {
        let key = certified(ca, &identity, &dns, &ips)?;
        Ok(Arc::new(ServerCredentials {
            current: ArcSwap::from_pointee(key),
            identity,
            dns,
            ips,
        }))
    }

    /// Renews the certificate at half its lifetime, forever.
    pub async fn renew(self: Arc<Self>, ca: Arc<Ca>) {
        loop {
            tokio::time::sleep(ca.lifetime() / 2).await;
            match certified(&ca, &self.identity, &self.dns, &self.ips) {
                Ok(key) => self.current.store(Arc::new(key)),
                Err(e) => {
                    tracing::error!(error = %e, "renewing the control plane's certificate failed; retrying");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }
}

impl ResolvesServerCert for ServerCredentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The server config of the gRPC port.
pub fn server_config(
    anchors_pem: &str,
    credentials: Arc<ServerCredentials>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots: RootCertStore = identity::anchors_from_pem(anchors_pem)?;
    let provider = identity::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The server config of the admission webhook: the same certificate, no client
/// certificate (the API server presents none by default), HTTP/2 or HTTP/1.1.
pub fn webhook_config(credentials: Arc<ServerCredentials>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(identity::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
