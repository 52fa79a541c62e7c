//! Workload identity: SPIFFE IDs, reading them from certificates, and the certificate checks
//! both ends of a mesh connection make.
//!
//! A workload is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, carried as the
//! one URI SAN of an X.509-SVID. rustls verifies the chain to the trust anchors; it cannot read
//! URI SANs, so the identity is read here with x509-parser and compared exactly.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

/// A workload's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{0:?} is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
    )]
    NotWorkload(String),
    #[error("the certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("the certificate has more than one URI SAN")]
    ManyUris,
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the peer presents {got}, not {expected}")]
    Mismatch { expected: String, got: String },
    #[error("no certificate in the PEM")]
    EmptyPem,
    #[error("invalid PEM: {0}")]
    Pem(String),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    pub fn parse(s: &str) -> Result<SpiffeId, IdentityError> {
        let bad = || IdentityError::NotWorkload(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let label = |v: &str| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !label(td) || !label(ns) || !label(sa) {
            return Err(bad());
        }
        Ok(SpiffeId::new(td, ns, sa))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The SPIFFE ID of a certificate: its one `spiffe://` URI SAN.
pub fn spiffe_id_of(cert: &[u8]) -> Result<String, IdentityError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(cert).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| {
                    if let GeneralName::URI(u) = n {
                        Some(*u)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(IdentityError::NoSpiffeId),
        [one] if one.starts_with("spiffe://") => Ok((*one).to_owned()),
        [_] => Err(IdentityError::NoSpiffeId),
        _ => Err(IdentityError::ManyUris),
    }
}

/// When a certificate starts and stops being valid, in seconds since the Unix epoch.
pub fn validity(cert: &[u8]) -> Result<(i64, i64), IdentityError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(cert).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// When a certificate stops being valid, in seconds since the Unix epoch.
pub fn not_after(cert: &[u8]) -> Result<i64, IdentityError> {
    validity(cert).map(|(_, end)| end)
}

/// Certificates from PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::EmptyPem);
    }
    Ok(certs)
}

/// Trust anchors from PEM text.
pub fn anchors_from_pem(pem: &str) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem)? {
        roots
            .add(cert)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    }
    Ok(roots)
}

/// The crypto weft uses everywhere: rustls with the ring provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server verifier for mesh connections: the chain must lead to the trust anchors and the
/// certificate must name exactly the expected workload. Host names play no part.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expected: String) -> SpiffeServerVerifier {
        SpiffeServerVerifier {
            roots,
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }
}

fn other(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let got = spiffe_id_of(end_entity).map_err(other)?;
        if got != self.expected {
            return Err(other(IdentityError::Mismatch {
                expected: self.expected.clone(),
                got,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Why a handshake failed, as a metric label: `unknown-ca`, `expired`, `not-yet-valid`,
/// `identity-mismatch`, `no-client-cert`, `bad-certificate`, `tls-version` (a peer without
/// TLS 1.3), `alpn` (a peer that does not speak the mesh's protocol), `incompatible` (no
/// common cipher suite, group or signature scheme) or `handshake`.
pub fn failure_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown-ca",
            CertificateError::BadSignature => "bad-signature",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::Other(OtherError(inner)) => {
                match inner.downcast_ref::<IdentityError>() {
                    Some(IdentityError::Mismatch { .. }) => "identity-mismatch",
                    _ => "bad-certificate",
                }
            }
            _ => "bad-certificate",
        },
        rustls::Error::NoCertificatesPresented => "no-client-cert",
        rustls::Error::PeerIncompatible(p) => {
            use rustls::PeerIncompatible as P;
            match p {
                P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls12NotOfferedOrEnabled
                | P::ServerDoesNotSupportTls12Or13
                | P::ServerTlsVersionIsDisabledByOurConfig => "tls-version",
                _ => "incompatible",
            }
        }
        rustls::Error::NoApplicationProtocol => "alpn",
        rustls::Error::AlertReceived(alert) => match alert {
            rustls::AlertDescription::UnknownCA => "unknown-ca",
            rustls::AlertDescription::CertificateExpired => "expired",
            rustls::AlertDescription::CertificateRequired => "no-client-cert",
            rustls::AlertDescription::ProtocolVersion => "tls-version",
            rustls::AlertDescription::NoApplicationProtocol => "alpn",
            _ => "handshake",
        },
        _ => "handshake",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_and_print() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/reviews").unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "shop", "reviews"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/reviews");
        for bad in [
            "https://cluster.local/ns/shop/sa/reviews",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/reviews/extra",
            "spiffe://cluster.local/sa/shop/ns/reviews",
            "spiffe:///ns/shop/sa/reviews",
            "spiffe://cluster.local/ns/sh op/sa/reviews",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_identity_is_the_one_spiffe_uri() {
        let uri = |u: &str| rcgen::SanType::URI(u.try_into().unwrap());
        let der = cert_with(vec![uri("spiffe://td/ns/a/sa/b")]);
        assert_eq!(spiffe_id_of(&der).unwrap(), "spiffe://td/ns/a/sa/b");
        let dns = cert_with(vec![rcgen::SanType::DnsName(
            "a.example".try_into().unwrap(),
        )]);
        assert_eq!(spiffe_id_of(&dns), Err(IdentityError::NoSpiffeId));
        let two = cert_with(vec![
            uri("spiffe://td/ns/a/sa/b"),
            uri("spiffe://td/ns/c/sa/d"),
        ]);
        assert_eq!(spiffe_id_of(&two), Err(IdentityError::ManyUris));
        assert!(matches!(
            spiffe_id_of(b"garbage"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
