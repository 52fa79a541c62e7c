//! Compiled routes: what an HTTPRoute or GRPCRoute attached to a Service port means to one
//! proxy, with backend references resolved to backend names.
//!
//! The proxy orders matches by the Gateway API's precedence itself (exact path, longest
//! prefix, method, most headers, most query parameters, oldest route, name), so the order of
//! routes here does not matter.

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::gateway::{
    Cors, HeaderModifier, HttpRouteMatch, PathMatchType, RequestRedirect, UrlRewrite,
};
use crate::validate::Problems;

/// The largest weight the Gateway API allows.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// The most retries a rule may ask for.
pub const MAX_RETRIES: u32 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// `<namespace>/<name>` of the manifest; the `route` label of metrics.
    pub name: String,
    /// The manifest's creation time (RFC 3339): older routes win precedence ties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// The rule's `name` in its route, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// No matches means every request (`PathPrefix /`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// No backends, or only zero weights, answers 500.
    #[serde(default)]
    pub backends: Vec<WeightedBackend>,
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
    /// Sends a copy of `numerator` in `denominator` requests to `backend` and ignores the
    /// answer (a manifest's `percent` is over 100).
    RequestMirror {
        backend: String,
        #[serde(default = "hundred", alias = "percent")]
        numerator: u32,
        #[serde(default = "hundred")]
        denominator: u32,
    },
    /// Answers with a redirect; no backend is asked.
    RequestRedirect(RequestRedirect),
    /// Answers preflights, and marks the answers to actual requests.
    #[serde(rename = "CORS")]
    Cors(Cors),
}

fn hundred() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedBackend {
    pub backend: String,
    #[serde(default = "one")]
    pub weight: u32,
    /// Header modifiers for the requests sent to this backend, after the rule's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Why the reference names no backend (the Gateway API's ResolvedRefs reason and its
    /// detail): its share of the rule's requests is answered 500, gRPC UNAVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// The whole exchange, retries included: 504 `timeout` when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    /// Each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Dur>,
}

impl Timeouts {
    pub fn is_empty(&self) -> bool {
        self.request.is_none() && self.backend_request.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// HTTP status codes that are retried (400 to 599).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// gRPC status codes that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<u8>,
    /// Retries after the first attempt.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// The first backoff; each later one doubles, with full jitter.
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
}

fn default_attempts() -> u32 {
    2
}

pub fn default_backoff() -> Dur {
    Dur::from_millis(25)
}

impl HttpRoute {
    /// Checks a route; `backend_exists` resolves backend names.
    pub fn validate(
        &self,
        at: &str,
        backend_exists: &dyn Fn(&str) -> bool,
        problems: &mut Problems,
    ) {
        if self.name.is_empty() {
            problems.add(format!("{at}.name"), "must not be empty");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rules[{i}]");
            for (j, m) in rule.matches.iter().enumerate() {
                m.validate(&format!("{at}.matches[{j}]"), problems);
            }
            let prefix_only = rule.matches.len() == 1
                && rule.matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
                });
            validate_filters(&rule.filters, &at, prefix_only, backend_exists, problems);
            for (j, b) in rule.backends.iter().enumerate() {
                if b.unresolved.is_none() && !backend_exists(&b.backend) {
                    problems.add(
                        format!("{at}.backends[{j}].backend"),
                        format!("no backend named {:?}", b.backend),
                    );
                }
                if b.weight > MAX_WEIGHT {
                    problems.add(
                        format!("{at}.backends[{j}].weight"),
                        format!("must be at most {MAX_WEIGHT}"),
                    );
                }
                let at = format!("{at}.backends[{j}]");
                for (k, f) in b.filters.iter().enumerate() {
                    if !matches!(
                        f,
                        Filter::RequestHeaderModifier(_) | Filter::ResponseHeaderModifier(_)
                    ) {
                        problems.add(
                            format!("{at}.filters[{k}]"),
                            "a backend takes header modifiers only",
                        );
                    }
                }
                validate_filters(&b.filters, &at, prefix_only, backend_exists, problems);
            }
            if let Some(retry) = &rule.retry {
                retry.validate(&format!("{at}.retry"), problems);
            }
            if let (Some(req), Some(per_try)) =
                (rule.timeouts.request, rule.timeouts.backend_request)
                && per_try > req
                && !req.0.is_zero()
            {
                problems.add(
                    format!("{at}.timeouts.backendRequest"),
                    "must not be longer than timeouts.request",
                );
            }
        }
    }
}

/// Checks the filters of a rule, or of one of its backends, at `at`.
fn validate_filters(
    filters: &[Filter],
    at: &str,
    prefix_only: bool,
    backend_exists: &dyn Fn(&str) -> bool,
    problems: &mut Problems,
) {
    for (j, f) in filters.iter().enumerate() {
        let at = format!("{at}.filters[{j}]");
        match f {
            Filter::RequestHeaderModifier(m) | Filter::ResponseHeaderModifier(m) => {
                m.validate(&at, problems)
            }
            Filter::UrlRewrite(r) => r.validate(&at, prefix_only, problems),
            Filter::RequestRedirect(r) => r.validate(&at, prefix_only, problems),
            Filter::Cors(c) => c.validate(&at, problems),
            Filter::RequestMirror {
                backend,
                numerator,
                denominator,
            } => {
                if !backend_exists(backend) {
                    problems.add(
                        format!("{at}.backend"),
                        format!("no backend named {backend:?}"),
                    );
                }
                if *denominator == 0 {
                    problems.add(format!("{at}.denominator"), "must be at least 1");
                }
                if numerator > denominator {
                    problems.add(
                        format!("{at}.numerator"),
                        "must not be greater than the denominator",
                    );
                }
            }
        }
    }
}

impl Retry {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        for (i, code) in self.codes.iter().enumerate() {
            if !(400..=599).contains(code) {
                problems.add(
                    format!("{at}.codes[{i}]"),
                    format!("{code} is not a status code between 400 and 599"),
                );
            }
        }
        for (i, code) in self.grpc_codes.iter().enumerate() {
            if *code == 0 || *code > 16 {
                problems.add(
                    format!("{at}.grpcCodes[{i}]"),
                    format!("{code} is not a gRPC error code (1 to 16)"),
                );
            }
        }
        if self.attempts > MAX_RETRIES {
            problems.add(
                format!("{at}.attempts"),
                format!("must be at most {MAX_RETRIES}"),
            );
        }
    }
}
