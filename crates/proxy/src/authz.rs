//! Inbound authorization: the ServerPolicy for an application port, applied to a peer and
//! what it asks for.
//!
//! The order is the one `weft_api::config::server` documents: the mTLS mode first, then deny
//! rules, then allow rules (any allow rule makes the policy default-deny), then the rate
//! limit, so that refused requests do not spend the workload's tokens. [`RateBuckets`] keeps
//! each policy's token bucket across config swaps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;
use weft_api::config::server::{AuthorizationRule, RuleAction};
use weft_api::config::{MtlsMode, ServerPolicy};
use weft_api::sync::lock;

use crate::metrics::Name;
use crate::policy::limits::TokenBucket;

/// Who is on the other end of an inbound connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The SPIFFE ID of the client certificate, for a mesh TLS connection that presented one.
    pub identity: Option<Arc<str>>,
    /// Whether the connection was mesh TLS.
    pub tls: bool,
}

/// A ServerPolicy in force, with the state that outlives config swaps.
pub struct InboundPolicy {
    /// `<namespace>/<name>`, the `policy` label of metrics.
    pub name: Name,
    pub spec: ServerPolicy,
    /// The inbound token bucket, shared by every connection to the ports it covers.
    pub rate: Option<Arc<Mutex<TokenBucket>>>,
    /// Whether any rule looks at paths: the request path is then normalized, and the
    /// application gets the normalized path that was authorized.
    pub matches_paths: bool,
}

/// Why a policy refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// STRICT mode, and the peer did not speak mesh TLS.
    Plaintext,
    /// STRICT mode, and the peer spoke mesh TLS without a client certificate.
    NoClientCert,
    /// A deny rule matched, or no allow rule did (or the path was ambiguous).
    Unauthorized,
    RateLimited,
}

impl Denied {
    /// The error the proxy answers an HTTP request with.
    pub fn reason(self) -> crate::errors::Reason {
        match self {
            Denied::Plaintext | Denied::NoClientCert | Denied::Unauthorized => {
                crate::errors::Reason::Unauthorized
            }
            Denied::RateLimited => crate::errors::Reason::RateLimited,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Plaintext => "plaintext",
            Denied::NoClientCert => "no-client-cert",
            Denied::Unauthorized => "unauthorized",
            Denied::RateLimited => "rate-limited",
        }
    }
}

/// What an HTTP request asks for; rules that name paths or methods look at it.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    pub method: &'a str,
    /// The normalized path ([`normalize_path`]).
    pub path: &'a str,
}

impl InboundPolicy {
    pub fn new(spec: ServerPolicy, rate: Option<Arc<Mutex<TokenBucket>>>) -> InboundPolicy {
        InboundPolicy {
            name: Name(spec.name.as_str().into()),
            matches_paths: spec.rules.iter().any(|r| !r.to.paths.is_empty()),
            rate,
            spec,
        }
    }

    /// The mTLS mode alone: STRICT refuses a peer without a verified mesh certificate.
    pub fn admits(&self, peer: &Peer) -> Result<(), Denied> {
        match (self.spec.mtls, &peer.identity, peer.tls) {
            (MtlsMode::Strict, None, false) => Err(Denied::Plaintext),
            (MtlsMode::Strict, None, true) => Err(Denied::NoClientCert),
            _ => Ok(()),
        }
    }

    /// Checks a peer (and, for HTTP, the request) against the policy. `op` is `None` for an
    /// opaque TCP connection.
    pub fn check(&self, peer: &Peer, op: Option<Operation<'_>>) -> Result<(), Denied> {
        self.admits(peer)?;
        let identity = match self.spec.mtls {
            // Identities are not authenticated for this port: rules cannot name them.
            MtlsMode::Disable => None,
            _ => peer.identity.as_deref(),
        };
        let matching = |action| {
            self.spec
                .rules
                .iter()
                .filter(move |r| r.action == action)
                .filter(move |r| rule_matches(r, identity, op))
        };
        if matching(RuleAction::Deny).next().is_some() {
            return Err(Denied::Unauthorized);
        }
        let has_allow = self
            .spec
            .rules
            .iter()
            .any(|r| r.action == RuleAction::Allow);
        if has_allow && matching(RuleAction::Allow).next().is_none() {
            return Err(Denied::Unauthorized);
        }
        if let Some(rate) = &self.rate
            && !lock(rate).try_take(Instant::now())
        {
            return Err(Denied::RateLimited);
        }
        Ok(())
    }
}

/// The token buckets of the ServerPolicies' rate limits, by policy name: a config swap that
/// leaves a policy's limit unchanged keeps its bucket, so that it never refills it.
#[derive(Default)]
pub struct RateBuckets {
    buckets: Mutex<HashMap<String, Weak<Mutex<TokenBucket>>>>,
}

impl RateBuckets {
    /// The bucket for `policy`'s limit: the one in force while the limit is unchanged.
    pub fn bucket(
        &self,
        policy: &str,
        per_second: u32,
        burst: Option<u32>,
        now: Instant,
    ) -> Arc<Mutex<TokenBucket>> {
        let burst = burst.unwrap_or(per_second);
        let mut known = lock(&self.buckets);
        if let Some(bucket) = known.get(policy).and_then(Weak::upgrade)
            && lock(&bucket).is_for(per_second, burst)
        {
            return bucket;
        }
        let bucket = Arc::new(Mutex::new(TokenBucket::new(per_second, burst, now)));
        known.insert(policy.to_owned(), Arc::downgrade(&bucket));
        bucket
    }

    /// Forgets the buckets of policies no snapshot has any more.
    pub fn prune(&self) {
        lock(&self.buckets).retain(|_, w| w.strong_count() > 0);
    }
}

fn rule_matches(
    rule: &AuthorizationRule,
    identity: Option<&str>,
    op: Option<Operation<'_>>,
) -> bool {
    let from = &rule.from;
    if !from.identities.is_empty()
        && !identity.is_some_and(|id| from.identities.iter().any(|p| pattern_matches(p, id)))
    {
        return false;
    }
    if !from.namespaces.is_empty()
        && !identity
            .and_then(namespace_of)
            .is_some_and(|ns| from.namespaces.iter().any(|n| n == "*" || n == ns))
    {
        return false;
    }
    let to = &rule.to;
    match op {
        Some(op) => {
            (to.methods.is_empty() || to.methods.iter().any(|m| m == op.method))
                && (to.paths.is_empty() || to.paths.iter().any(|p| pattern_matches(p, op.path)))
        }
        // Opaque TCP has no path or method: a deny rule matches on its source alone, an
        // allow rule that needs HTTP never matches.
        None => rule.action == RuleAction::Deny || !to.is_http_only(),
    }
}

/// Exact, a prefix ending in `*`, or `*` for anything.
fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// The namespace in `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
fn namespace_of(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?;
    let (_, path) = path.split_once('/')?;
    let mut parts = path.split('/');
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The path as authorization sees it: percent-encoded unreserved characters decoded, dot
/// segments resolved, repeated slashes merged. `None` when the path is ambiguous (an encoded
/// or literal backslash, or an encoded slash), since the application might read it either way.
pub fn normalize_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return None,
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                match value {
                    b'/' | b'\\' => return None,
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => decoded.push(b),
                    _ => {
                        decoded.push(b'%');
                        decoded.extend(hex.iter().map(u8::to_ascii_uppercase));
                    }
                }
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in decoded.split('/') {
        trailing = false;
        match segment {
            "" | "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::config::server::{RuleOperation, RuleSource};

    fn rule(
        action: RuleAction,
        ids: &[&str],
        nss: &[&str],
        paths: &[&str],
        methods: &[&str],
    ) -> AuthorizationRule {
        let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect();
        AuthorizationRule {
            action,
            from: RuleSource {
                identities: v(ids),
                namespaces: v(nss),
            },
            to: RuleOperation {
                paths: v(paths),
                methods: v(methods),
            },
        }
    }

    fn policy(mtls: MtlsMode, rules: Vec<AuthorizationRule>) -> InboundPolicy {
        let spec = ServerPolicy {
            name: "shop/p".into(),
            ports: Default::default(),
            mtls,
            rules,
            rate_limit: None,
        };
        InboundPolicy::new(spec, None)
    }

    fn peer(id: Option<&str>) -> Peer {
        Peer {
            identity: id.map(Arc::from),
            tls: id.is_some(),
        }
    }

    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/shop/sa/productpage";
    const RATINGS: &str = "spiffe://cluster.local/ns/data/sa/ratings";

    fn get(path: &str) -> Option<Operation<'_>> {
        Some(Operation {
            method: "GET",
            path,
        })
    }

    #[test]
    fn the_decision_table() {
        use Denied::*;
        use RuleAction::*;
        let rules = vec![
            rule(Allow, &[PRODUCTPAGE], &[], &["/api/*"], &["GET"]),
            rule(Allow, &[], &["data"], &["/public"], &[]),
            rule(Deny, &[], &[], &["/api/admin*"], &[]),
        ];
        let strict = policy(MtlsMode::Strict, rules.clone());
        let permissive = policy(MtlsMode::Permissive, rules);
        let post = Some(Operation {
            method: "POST",
            path: "/api/x",
        });
        type Case<'a> = (
            &'a InboundPolicy,
            Option<&'a str>,
            Option<Operation<'a>>,
            Result<(), Denied>,
        );
        let cases: &[Case<'_>] = &[
            (&strict, Some(PRODUCTPAGE), get("/api/x"), Ok(())),
            (&strict, None, get("/api/x"), Err(Plaintext)),
            (&permissive, None, get("/api/x"), Err(Unauthorized)),
            (&strict, Some(PRODUCTPAGE), post, Err(Unauthorized)),
            (
                &strict,
                Some(PRODUCTPAGE),
                get("/api/admin/users"),
                Err(Unauthorized),
            ),
            (&strict, Some(PRODUCTPAGE), get("/other"), Err(Unauthorized)),
            (&strict, Some(RATINGS), get("/public"), Ok(())),
            (&strict, Some(RATINGS), get("/api/x"), Err(Unauthorized)),
            // Opaque TCP: the path-scoped deny rule applies on its source alone; no allow
            // rule without HTTP fields exists, so nothing is allowed.
            (&strict, Some(PRODUCTPAGE), None, Err(Unauthorized)),
        ];
        for (i, (p, id, op, want)) in cases.iter().enumerate() {
            assert_eq!(p.check(&peer(*id), *op), *want, "case {i}");
        }
        // Mesh TLS without a client certificate is refused for what it is.
        let anonymous = Peer {
            identity: None,
            tls: true,
        };
        assert_eq!(strict.check(&anonymous, get("/api/x")), Err(NoClientCert));
        assert_eq!(
            permissive.check(&anonymous, get("/public")),
            Err(Unauthorized)
        );
        // No rules: everything allowed; STRICT still wants an identity.
        assert_eq!(
            policy(MtlsMode::Permissive, vec![]).check(&peer(None), None),
            Ok(())
        );
        assert_eq!(
            policy(MtlsMode::Strict, vec![]).check(&peer(None), None),
            Err(Plaintext)
        );
        // An allow rule without HTTP fields admits TCP.
        let tcp = policy(
            MtlsMode::Strict,
            vec![rule(
                Allow,
                &["spiffe://cluster.local/ns/shop/*"],
                &[],
                &[],
                &[],
            )],
        );
        assert_eq!(tcp.check(&peer(Some(PRODUCTPAGE)), None), Ok(()));
        assert_eq!(tcp.check(&peer(Some(RATINGS)), None), Err(Unauthorized));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_spend_no_tokens() {
        let mut p = policy(
            MtlsMode::Permissive,
            vec![rule(RuleAction::Deny, &[], &[], &["/no"], &[])],
        );
        p.rate = Some(Arc::new(Mutex::new(TokenBucket::new(1, 2, Instant::now()))));
        let anyone = peer(None);
        for _ in 0..5 {
            assert_eq!(p.check(&anyone, get("/no")), Err(Denied::Unauthorized));
        }
        assert_eq!(p.check(&anyone, get("/yes")), Ok(()));
        assert_eq!(p.check(&anyone, get("/yes")), Ok(()));
        assert_eq!(p.check(&anyone, get("/yes")), Err(Denied::RateLimited));
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        let cases = [
            ("/", Some("/")),
            ("", Some("/")),
            ("/a/b", Some("/a/b")),
            ("/a/b/", Some("/a/b/")),
            ("//admin", Some("/admin")),
            ("/api/../admin", Some("/admin")),
            ("/api/./x/.", Some("/api/x/")),
            ("/../../etc", Some("/etc")),
            ("/%61dmin", Some("/admin")),
            ("/%2e%2e/admin", Some("/admin")),
            ("/a%20b", Some("/a%20b")),
            ("/a%2fb", None),
            ("/a%5Cb", None),
            ("/a\\b", None),
            ("/a%zz", None),
            ("/a%2", None),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path).as_deref(), want, "{path:?}");
        }
    }

    #[test]
    fn namespaces_come_from_the_spiffe_id() {
        assert_eq!(namespace_of(PRODUCTPAGE), Some("shop"));
        assert_eq!(namespace_of("spiffe://td/ns//sa/x"), None);
        assert_eq!(namespace_of("spiffe://td/other/x"), None);
        assert_eq!(namespace_of("nope"), None);
    }
}
