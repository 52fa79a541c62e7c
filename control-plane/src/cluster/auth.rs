//! Authentication against the cluster: ServiceAccount tokens checked with a TokenReview
//! ([`TokenReviewer`]), and the CA kept in a Secret ([`ca_from_secret`]).

use kube::Client;
use kube::api::Api;

/// Checks ServiceAccount tokens with the cluster's TokenReview API.
pub struct TokenReviewer {
    client: Client,
    /// The audiences a token must be for (the projected token's `audience`); empty: the API
    /// server's own.
    audiences: Vec<String>,
}

impl TokenReviewer {
    pub fn new(client: Client, audiences: Vec<String>) -> TokenReviewer {
        TokenReviewer { client, audiences }
    }

    /// The namespace and service account the token proves.
    pub async fn verify(&self, token: &str) -> Result<(String, String), String> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("the TokenReview failed: {e}"))?;
        let status = reviewed
            .status
            .ok_or("the TokenReview came back without a status")?;
        if status.authenticated != Some(true) {
            return Err(format!(
                "the cluster does not authenticate the token{}",
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        if !self.audiences.is_empty()
            && !status
                .audiences
                .iter()
                .flatten()
                .any(|a| self.audiences.contains(a))
        {
            return Err(format!(
                "the token is not for audience {}",
                self.audiences.join(" or ")
            ));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&username).ok_or_else(|| format!("{username:?} is not a ServiceAccount"))
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| (ns.to_owned(), sa.to_owned()))
}

/// The CA kept in a Secret (`tls.crt`, `tls.key`, and `ca.crt` for an intermediate's
/// roots), created with a new root at first start. Every replica of the control plane
/// reads the same one; when two create it at once, the loser reads the winner's.
pub async fn ca_from_secret(
    client: Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> anyhow::Result<crate::ca::CaMaterial> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let read = |secret: Secret| -> anyhow::Result<crate::ca::CaMaterial> {
        let data = secret.data.unwrap_or_default();
        let field = |key: &str| -> anyhow::Result<Option<String>> {
            data.get(key)
                .map(|b| String::from_utf8(b.0.clone()))
                .transpose()
                .map_err(|_| anyhow::anyhow!("Secret {namespace}/{name}: {key} is not PEM text"))
        };
        Ok(crate::ca::CaMaterial {
            cert_pem: field("tls.crt")?
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no tls.crt"))?,
            key_pem: field("tls.key")?
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no tls.key"))?,
            anchors_pem: field("ca.crt")?.filter(|a| !a.trim().is_empty()),
        })
    };
    if let Some(secret) = api.get_opt(name).await? {
        tracing::info!(secret = %format!("{namespace}/{name}"), "CA read from its Secret");
        return read(secret);
    }
    let root = crate::ca::CaMaterial::generate_root(trust_domain)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "weft".to_owned())].into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                (
                    "tls.crt".to_owned(),
                    ByteString(root.cert_pem.clone().into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(root.key_pem.clone().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&kube::api::PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated a root CA into its Secret");
            Ok(root)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await?;
            tracing::info!(secret = %format!("{namespace}/{name}"), "another replica created the CA first; using it");
            read(secret)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_review_usernames_name_a_service_account() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:reviews"),
            Some(("shop".to_owned(), "reviews".to_owned()))
        );
        for not_sa in [
            "system:admin",
            "system:serviceaccount:shop",
            "system:serviceaccount::x",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(service_account_of(not_sa), None, "{not_sa}");
        }
    }
}
