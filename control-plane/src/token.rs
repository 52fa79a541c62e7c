//! Bootstrap tokens for local mode: `weft token create` prints one that proves a namespace and
//! service account, signed with HMAC-SHA256 by a secret in the state directory.
//!
//! ```text
//! weft1.<base64url(payload)>.<base64url(HMAC-SHA256(secret, "weft1.<payload>"))>
//! payload: {"ns": ..., "sa": ..., "iat": unix seconds, "exp": unix seconds}
//! ```

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "weft1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a weft token")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired")]
    Expired,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    ns: String,
    sa: String,
    iat: u64,
    exp: u64,
}

/// Issues and checks tokens.
pub struct Tokens {
    key: hmac::Key,
}

impl Tokens {
    /// Opens the secret in `state/token.key`, creating it (mode 0600) the first time.
    pub fn open(state: &Path) -> std::io::Result<Tokens> {
        let path = state.join("token.key");
        let secret = match std::fs::read(&path) {
            Ok(secret) => secret,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| std::io::Error::other("no randomness"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::io::Write::write_all(&mut f, &secret)?;
                secret
            }
            Err(e) => return Err(e),
        };
        Ok(Tokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    pub fn create(&self, namespace: &str, service_account: &str, ttl: Duration) -> String {
        let now = now();
        let claims = Claims {
            ns: namespace.into(),
            sa: service_account.into(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{payload}");
        let tag = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The namespace and service account a token proves.
    pub fn verify(&self, token: &str) -> Result<(String, String), TokenError> {
        let token = token.trim();
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (prefix, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(payload)
                .map_err(|_| TokenError::Malformed)?,
        )
        .map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now() {
            return Err(TokenError::Expired);
        }
        Ok((claims.ns, claims.sa))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_prove_one_identity_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("weft-token-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = Tokens::open(&dir).unwrap();
        let t = tokens.create("shop", "reviews", Duration::from_secs(60));
        assert_eq!(tokens.verify(&t), Ok(("shop".into(), "reviews".into())));
        assert_eq!(
            Tokens::open(&dir).unwrap().verify(&t),
            Ok(("shop".into(), "reviews".into())),
            "the secret persists"
        );

        // Changing the payload to another identity breaks the signature.
        let (signed, tag) = t.rsplit_once('.').unwrap();
        let forged_claims =
            URL_SAFE_NO_PAD.encode(br#"{"ns":"shop","sa":"admin","iat":0,"exp":99999999999}"#);
        let forged = format!("{PREFIX}.{forged_claims}.{tag}");
        assert_eq!(tokens.verify(&forged), Err(TokenError::BadSignature));
        assert_eq!(
            tokens.verify(&format!("{signed}.AAAA")),
            Err(TokenError::BadSignature)
        );
        assert_eq!(tokens.verify("nonsense"), Err(TokenError::Malformed));
        let expired = tokens.create("shop", "reviews", Duration::ZERO);
        assert_eq!(tokens.verify(&expired), Err(TokenError::Expired));
        let other_dir = dir.join("other");
        std::fs::create_dir_all(&other_dir).unwrap();
        assert_eq!(
            Tokens::open(&other_dir).unwrap().verify(&t),
            Err(TokenError::BadSignature),
            "another control plane's token"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
