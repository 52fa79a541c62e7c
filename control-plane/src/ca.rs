//! The certificate authority: it issues workload certificates (X.509-SVIDs) and the control
//! plane's own.
//!
//! At first start it generates a root key and certificate into the state directory (the key
//! file is mode 0600); an operator can bring a root or an intermediate instead. The trust
//! anchors proxies verify with are written to `trust-anchor.pem`. Every certificate issued is
//! logged and appended to `issued.log` (identity, serial, expiry).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use weft_api::identity::SpiffeId;

/// How far back a certificate's validity starts, for clocks slightly behind.
const SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the CSR cannot be used: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {asked}, but the token proves {proven}")]
    WrongIdentity { asked: String, proven: String },
    #[error("the CA certificate and key do not fit together: {0}")]
    BadCa(String),
}

/// Where an operator's CA comes from.
#[derive(Debug, Clone)]
pub struct ProvidedCa {
    /// The signing CA's certificate, PEM, optionally followed by its chain up to (not
    /// including) the root.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The roots; defaults to the CA certificate itself, which must then be self-signed.
    pub anchors: Option<PathBuf>,
}

/// A CA's certificate and key, PEM.
#[derive(Clone)]
pub struct CaMaterial {
    /// The signing CA's certificate, optionally followed by its chain up to (not including)
    /// the root.
    pub cert_pem: String,
    pub key_pem: String,
    /// The roots, when the CA is an intermediate; `None` for a self-signed root.
    pub anchors_pem: Option<String>,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("intermediate", &self.anchors_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl CaMaterial {
    /// A new self-signed root (ECDSA P-256, ten years).
    pub fn generate_root(trust_domain: &str) -> Result<CaMaterial, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "weft root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        Ok(CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            anchors_pem: None,
        })
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate then the intermediates, PEM.
    pub chain_pem: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Intermediates between the CA and the roots, PEM (empty for a root CA).
    intermediates_pem: String,
    anchors_pem: String,
    lifetime: Duration,
    log: Mutex<std::fs::File>,
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::Io(path.display().to_string(), e))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CaError::Io(path.display().to_string(), e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| CaError::Io(path.display().to_string(), e))
}

fn write_public(path: &Path, contents: &str) -> Result<(), CaError> {
    std::fs::write(path, contents).map_err(|e| CaError::Io(path.display().to_string(), e))
}

impl Ca {
    /// Loads the CA from `state`, or from the operator's files, or creates a root.
    pub fn open(
        state: &Path,
        trust_domain: &str,
        provided: Option<&ProvidedCa>,
        lifetime: Duration,
    ) -> Result<Ca, CaError> {
        let material = match provided {
            Some(p) => CaMaterial {
                cert_pem: read(&p.cert)?,
                key_pem: read(&p.key)?,
                anchors_pem: p.anchors.as_deref().map(read).transpose()?,
            },
            None => {
                let key_path = state.join("ca.key");
                let cert_path = state.join("ca.crt");
                if key_path.exists() {
                    CaMaterial {
                        cert_pem: read(&cert_path)?,
                        key_pem: read(&key_path)?,
                        anchors_pem: None,
                    }
                } else {
                    let root = CaMaterial::generate_root(trust_domain)?;
                    write_private(&key_path, &root.key_pem)?;
                    write_public(&cert_path, &root.cert_pem)?;
                    tracing::info!(key = %key_path.display(), "generated a root CA");
                    root
                }
            }
        };
        Ca::from_material(state, &material, lifetime)
    }

    /// The CA from its certificate and key, wherever they were kept (files, a Secret).
    /// `state` receives `trust-anchor.pem` and the issued-certificate log.
    pub fn from_material(
        state: &Path,
        material: &CaMaterial,
        lifetime: Duration,
    ) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(&material.key_pem)?;
        let certs = weft_api::identity::certs_from_pem(&material.cert_pem)
            .map_err(|e| CaError::BadCa(e.to_string()))?;
        let first = pem_of(certs[0].as_ref());
        let rest: String = certs[1..].iter().map(|c| pem_of(c.as_ref())).collect();
        let issuer =
            Issuer::from_ca_cert_pem(&first, key).map_err(|e| CaError::BadCa(e.to_string()))?;
        // A root is its own anchor; an intermediate travels in every chain it signs.
        let (intermediates_pem, anchors_pem) = match &material.anchors_pem {
            Some(anchors) => (format!("{first}{rest}"), anchors.clone()),
            None => (rest, first),
        };
        write_public_replace(&state.join("trust-anchor.pem"), &anchors_pem)?;
        let log_path = state.join("issued.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| CaError::Io(log_path.display().to_string(), e))?;
        Ok(Ca {
            issuer,
            intermediates_pem,
            anchors_pem,
            lifetime,
            log: Mutex::new(log),
        })
    }

    pub fn anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Signs a workload's CSR for `identity`. The CSR's signature must verify, and it must ask
    /// for exactly that identity and nothing else.
    pub fn sign_csr(&self, csr_pem: &str, identity: &SpiffeId) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        let proven = identity.to_string();
        if asked != [proven.clone()] {
            return Err(CaError::WrongIdentity {
                asked: asked.join(", "),
                proven,
            });
        }
        let params = self.leaf_params(identity, &[], &[])?;
        let (serial, not_after) = (params.serial_number.clone(), params.not_after);
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(self.record(identity, signed.pem(), serial, not_after))
    }

    /// Issues a certificate and key for a server of the control plane itself.
    pub fn issue_server(
        &self,
        identity: &SpiffeId,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<(Issued, KeyPair), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = self.leaf_params(identity, dns, ips)?;
        let (serial, not_after) = (params.serial_number.clone(), params.not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((self.record(identity, cert.pem(), serial, not_after), key))
    }

    fn leaf_params(
        &self,
        identity: &SpiffeId,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let mut sans = vec![SanType::URI(identity.to_string().try_into()?)];
        for name in dns {
            sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + self.lifetime;
        params.serial_number = Some(serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn record(
        &self,
        identity: &SpiffeId,
        pem: String,
        serial: Option<SerialNumber>,
        not_after: OffsetDateTime,
    ) -> Issued {
        let serial = serial.as_ref().map(|s| hex(s.as_ref())).unwrap_or_default();
        tracing::info!(identity = %identity, %serial, %not_after, "issued a certificate");
        let line = serde_json::json!({
            "identity": identity.to_string(),
            "serial": serial,
            "notAfter": not_after.unix_timestamp(),
            "issuedAt": OffsetDateTime::now_utc().unix_timestamp(),
        });
        if let Ok(mut log) = self.log.lock() {
            let _ = writeln!(log, "{line}");
        }
        Issued {
            chain_pem: format!("{pem}{}", self.intermediates_pem),
            serial,
            not_after,
        }
    }
}

fn write_public_replace(path: &Path, contents: &str) -> Result<(), CaError> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == contents) {
        return Ok(());
    }
    write_public(path, contents)
}

/// A random positive 128-bit serial.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            CaError::Io(
                "the system random source".into(),
                std::io::ErrorKind::Other.into(),
            )
        })?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn state() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "weft-ca-test-{}-{}",
            std::process::id(),
            fastrand_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fastrand_u64() -> u64 {
        let mut b = [0u8; 8];
        ring::rand::SystemRandom::new().fill(&mut b).unwrap();
        u64::from_le_bytes(b)
    }

    fn csr_for(uris: &[&str]) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_root_is_created_once_with_a_private_key_file() {
        let dir = state();
        let ca = Ca::open(&dir, "cluster.local", None, Duration::from_secs(3600)).unwrap();
        let mode = std::fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let anchors = ca.anchors_pem().to_owned();
        drop(ca);
        let again = Ca::open(&dir, "cluster.local", None, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            again.anchors_pem(),
            anchors,
            "the same root after a restart"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("trust-anchor.pem")).unwrap(),
            anchors
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_csr_gets_exactly_the_identity_the_token_proves() {
        let dir = state();
        let ca = Ca::open(&dir, "cluster.local", None, Duration::from_secs(3600)).unwrap();
        let id = SpiffeId::new("cluster.local", "shop", "reviews");
        let issued = ca
            .sign_csr(
                &csr_for(&["spiffe://cluster.local/ns/shop/sa/reviews"]),
                &id,
            )
            .unwrap();
        let certs = weft_api::identity::certs_from_pem(&issued.chain_pem).unwrap();
        assert_eq!(
            weft_api::identity::spiffe_id_of(certs[0].as_ref()).unwrap(),
            id.to_string()
        );
        let lifetime = weft_api::identity::not_after(certs[0].as_ref()).unwrap()
            - OffsetDateTime::now_utc().unix_timestamp();
        assert!((3590..=3600).contains(&lifetime), "{lifetime}");

        let other = ca.sign_csr(&csr_for(&["spiffe://cluster.local/ns/shop/sa/admin"]), &id);
        assert!(
            matches!(other, Err(CaError::WrongIdentity { .. })),
            "another identity is refused"
        );
        let more = ca.sign_csr(
            &csr_for(&[
                "spiffe://cluster.local/ns/shop/sa/reviews",
                "spiffe://x/ns/a/sa/b",
            ]),
            &id,
        );
        assert!(
            matches!(more, Err(CaError::WrongIdentity { .. })),
            "extra names are refused"
        );
        assert!(matches!(
            ca.sign_csr("not a csr", &id),
            Err(CaError::BadCsr(_))
        ));
        let log = std::fs::read_to_string(dir.join("issued.log")).unwrap();
        assert_eq!(log.lines().count(), 1);
        assert!(
            log.contains("spiffe://cluster.local/ns/shop/sa/reviews") && log.contains("serial")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
