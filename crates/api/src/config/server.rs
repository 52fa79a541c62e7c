//! Server-side policy: who may reach a workload, over what, and how fast.
//!
//! A `ServerPolicy` manifest selects pods by label and optionally names ports. The control
//! plane compiles the policies that select a pod into that pod's proxy config
//! ([`crate::config::Inbound::policies`]); the proxy enforces them on inbound traffic.
//!
//! Evaluation, for one request (or one opaque TCP connection):
//! 1. the mTLS mode: under `STRICT` a peer without a verified mesh certificate is refused
//!    before anything else;
//! 2. any matching `Deny` rule denies;
//! 3. with at least one `Allow` rule, a request no `Allow` rule matches is denied;
//! 4. otherwise the request is allowed, then counted against the rate limit.
//!
//! An opaque TCP connection has no path or method: a `Deny` rule matches it on its `from`
//! alone (denying more, never less), and an `Allow` rule that names paths or methods never
//! matches it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::policy::RateLimit;
use crate::validate::Problems;

/// How a server treats mesh TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only peers with a verified mesh certificate; plaintext connections are closed.
    Strict,
    /// Mesh TLS and plaintext are both accepted (the default, as with no policy).
    #[default]
    Permissive,
    /// Peers are told to send plaintext; identities are not known, so rules cannot name them.
    Disable,
}

/// The `spec` of a `ServerPolicy` manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPolicySpec {
    /// The pods (in the policy's namespace) it applies to; empty selects them all.
    #[serde(default)]
    pub selector: PodSelector,
    /// The application ports it covers; empty covers every port. A policy that names a port
    /// takes precedence over one that names none.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ports: BTreeSet<u16>,
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
    /// Requests (and opaque connections) per second the workload accepts, over all peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Pods whose labels include all of these.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl PodSelector {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A compiled policy in a proxy's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPolicy {
    /// `<namespace>/<name>`, the `policy` label of metrics.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ports: BTreeSet<u16>,
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl ServerPolicy {
    pub fn new(name: String, spec: &ServerPolicySpec) -> ServerPolicy {
        ServerPolicy {
            name,
            ports: spec.ports.clone(),
            mtls: spec.mtls,
            rules: spec.rules.clone(),
            rate_limit: spec.rate_limit.clone(),
        }
    }

    /// The policy for application port `port` among `policies`: the first that names it,
    /// else the first that names no port.
    pub fn for_port(policies: &[ServerPolicy], port: u16) -> Option<(usize, &ServerPolicy)> {
        policies
            .iter()
            .enumerate()
            .find(|(_, p)| p.ports.contains(&port))
            .or_else(|| {
                policies
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.ports.is_empty())
            })
    }
}

/// One allow or deny rule. Every field present must match; a list matches when any entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    pub action: RuleAction,
    #[serde(default)]
    pub from: RuleSource,
    #[serde(default)]
    pub to: RuleOperation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RuleAction {
    Allow,
    Deny,
}

/// Who the peer is. Empty lists match any peer, including one without an identity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSource {
    /// SPIFFE IDs; a trailing `*` matches any ID with that prefix, and `*` alone any verified
    /// identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// The namespace of the peer's SPIFFE ID (`/ns/<namespace>/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// What the request asks for. Empty lists match any request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleOperation {
    /// Paths, matched after normalization (dot segments resolved, repeated slashes merged):
    /// exact, or a prefix when they end in `*` (`/api/*`), or `*` for any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

impl RuleOperation {
    pub fn is_http_only(&self) -> bool {
        !self.paths.is_empty() || !self.methods.is_empty()
    }
}

impl ServerPolicySpec {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        ServerPolicy::new(String::new(), self).validate(at, problems);
    }
}

impl ServerPolicy {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.ports.contains(&0) {
            problems.add(format!("{at}.ports"), "ports must be between 1 and 65535");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rules[{i}]");
            if self.mtls == MtlsMode::Disable
                && !(rule.from.identities.is_empty() && rule.from.namespaces.is_empty())
            {
                problems.add(
                    format!("{at}.from"),
                    "cannot name identities or namespaces with mtls: DISABLE (peers are not authenticated)",
                );
            }
            for (j, id) in rule.from.identities.iter().enumerate() {
                let prefix = id.strip_suffix('*').unwrap_or(id);
                if !(id == "*" || prefix.starts_with("spiffe://") && !prefix.contains('*')) {
                    problems.add(
                        format!("{at}.from.identities[{j}]"),
                        format!("{id:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, a prefix ending in *, or *)"),
                    );
                }
            }
            for (j, ns) in rule.from.namespaces.iter().enumerate() {
                if !(ns == "*" || crate::validate::is_dns_label(ns)) {
                    problems.add(
                        format!("{at}.from.namespaces[{j}]"),
                        format!("{ns:?} is not a namespace name"),
                    );
                }
            }
            for (j, path) in rule.to.paths.iter().enumerate() {
                let prefix = path.strip_suffix('*').unwrap_or(path);
                if !(path == "*" || prefix.starts_with('/') && !prefix.contains(['*', '?', '#'])) {
                    problems.add(
                        format!("{at}.to.paths[{j}]"),
                        format!("{path:?} must start with / (optionally ending in * for a prefix), or be *"),
                    );
                }
            }
            for (j, m) in rule.to.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    problems.add(
                        format!("{at}.to.methods[{j}]"),
                        format!("{m:?} is not an HTTP method in upper case"),
                    );
                }
            }
        }
        if let Some(r) = &self.rate_limit {
            r.validate(&format!("{at}.rateLimit"), problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, ports: &[u16]) -> ServerPolicy {
        ServerPolicy {
            name: name.into(),
            ports: ports.iter().copied().collect(),
            mtls: MtlsMode::Strict,
            rules: Vec::new(),
            rate_limit: None,
        }
    }

    #[test]
    fn a_policy_naming_the_port_wins_over_one_naming_none() {
        let policies = [policy("a", &[]), policy("b", &[8080]), policy("c", &[8080])];
        let name = |port| ServerPolicy::for_port(&policies, port).map(|(_, p)| p.name.as_str());
        assert_eq!(name(8080), Some("b"));
        assert_eq!(name(9090), Some("a"));
        assert_eq!(ServerPolicy::for_port(&policies[1..], 9090), None);
    }

    #[test]
    fn rules_are_checked_field_by_field() {
        let spec: ServerPolicySpec = serde_json::from_value(serde_json::json!({
            "mtls": "DISABLE",
            "ports": [0],
            "rules": [{
                "action": "Allow",
                "from": {"identities": ["productpage", "spiffe://x/*"], "namespaces": ["Shop"]},
                "to": {"paths": ["api", "/a*b", "/ok/*", "*"], "methods": ["get", "POST"]}
            }],
            "rateLimit": {"requestsPerSecond": 0}
        }))
        .unwrap();
        let mut problems = Problems::default();
        spec.validate("spec", &mut problems);
        let fields: Vec<String> = problems.into_vec().into_iter().map(|p| p.path).collect();
        assert_eq!(
            fields,
            [
                "spec.ports",
                "spec.rules[0].from",
                "spec.rules[0].from.identities[0]",
                "spec.rules[0].from.namespaces[0]",
                "spec.rules[0].to.paths[0]",
                "spec.rules[0].to.paths[1]",
                "spec.rules[0].to.methods[0]",
                "spec.rateLimit.requestsPerSecond",
            ]
        );
    }
}
