//! Gateway API value types shared by the manifests (HTTPRoute, GRPCRoute) and the compiled
//! config: request matches, header modifiers, URL rewrites and redirects. The YAML shape is the Gateway
//! API's, so a match reads the same in a manifest and in `/config_dump`.

use serde::{Deserialize, Serialize};

use crate::validate::Problems;

/// One way a request can match a rule: all of its conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Absent means `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    #[serde(default = "slash")]
    pub value: String,
}

fn slash() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    /// Element-wise: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[default]
    PathPrefix,
    /// The whole path must match the regular expression.
    RegularExpression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: MatchType,
    /// Case-insensitive.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParamMatch {
    #[serde(rename = "type", default)]
    pub kind: MatchType,
    /// Case-sensitive.
    pub name: String,
    pub value: String,
}

/// Sets, adds or removes headers (RequestHeaderModifier, ResponseHeaderModifier).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replaces any value the header had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Appends a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

/// URLRewrite.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

/// RequestRedirect: the client's sidecar answers with a redirect, and no backend is asked.
/// What is not set is the request's own: its scheme, its host, its path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Absent: the scheme's own port when the scheme is set, else the port the request was
    /// addressed to. A scheme's default port never shows in the Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// The CORS filter: the client's sidecar answers preflights from the allowed origins, and
/// marks the answers to their actual requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// `scheme://host[:port]`; the host may start with a `*.` that stands for any labels;
    /// `*` alone allows every origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// `*` alone allows every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `*` alone allows every header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight's answer may be cached (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

impl Cors {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        let alone = |list: &[String], field: &str, problems: &mut Problems| {
            if list.len() > 1 && list.iter().any(|v| v == "*") {
                problems.add(format!("{at}.{field}"), "`*` must be the only entry");
            }
        };
        alone(&self.allow_origins, "allowOrigins", problems);
        alone(&self.allow_methods, "allowMethods", problems);
        alone(&self.allow_headers, "allowHeaders", problems);
        for (i, origin) in self.allow_origins.iter().enumerate() {
            if origin != "*" && parse_origin(origin).is_none() {
                problems.add(
                    format!("{at}.allowOrigins[{i}]"),
                    format!("{origin:?} is not an origin (http or https://host[:port], the host may start with *.)"),
                );
            }
        }
        for (i, m) in self.allow_methods.iter().enumerate() {
            if m != "*" && !is_http_method(m) {
                problems.add(
                    format!("{at}.allowMethods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                );
            }
        }
        for (field, list) in [
            ("allowHeaders", &self.allow_headers),
            ("exposeHeaders", &self.expose_headers),
        ] {
            for (i, h) in list.iter().enumerate() {
                if h != "*" && !is_header_name(h) {
                    problems.add(
                        format!("{at}.{field}[{i}]"),
                        format!("{h:?} is not a header name"),
                    );
                }
            }
        }
        if self.allow_credentials && self.expose_headers.iter().any(|h| h == "*") {
            problems.add(
                format!("{at}.exposeHeaders"),
                "`*` is not allowed with allowCredentials",
            );
        }
        if self.max_age == Some(0) {
            problems.add(format!("{at}.maxAge"), "must be at least 1");
        }
    }
}

/// An allowed origin as (scheme, host, port): the port is the scheme's own when absent.
pub fn parse_origin(origin: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok().filter(|p| *p > 0)?),
        None => (rest, default),
    };
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = host == "*"
        || (!name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    valid.then_some((scheme, host, port))
}

/// The status codes a redirect may answer with.
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

impl HttpRouteMatch {
    /// Checks the match; `at` is the field path of the match itself.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if let Some(path) = &self.path {
            match path.kind {
                PathMatchType::Exact | PathMatchType::PathPrefix => {
                    if !path.value.starts_with('/') {
                        problems.add(format!("{at}.path.value"), "must start with /");
                    }
                }
                PathMatchType::RegularExpression => {
                    check_regex(&path.value, &format!("{at}.path.value"), problems)
                }
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            if !is_header_name(&h.name) {
                problems.add(
                    format!("{at}.headers[{i}].name"),
                    format!("{:?} is not a valid header name", h.name),
                );
            }
            if h.kind == MatchType::RegularExpression {
                check_regex(&h.value, &format!("{at}.headers[{i}].value"), problems);
            }
        }
        for (i, q) in self.query_params.iter().enumerate() {
            if q.name.is_empty() {
                problems.add(format!("{at}.queryParams[{i}].name"), "must not be empty");
            }
            if q.kind == MatchType::RegularExpression {
                check_regex(&q.value, &format!("{at}.queryParams[{i}].value"), problems);
            }
        }
        if let Some(method) = &self.method
            && !is_http_method(method)
        {
            problems.add(
                format!("{at}.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
}

impl HeaderModifier {
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        for (list, values) in [("set", &self.set), ("add", &self.add)] {
            for (i, h) in values.iter().enumerate() {
                if !is_header_name(&h.name) {
                    problems.add(
                        format!("{at}.{list}[{i}].name"),
                        format!("{:?} is not a valid header name", h.name),
                    );
                }
                if http_value_invalid(&h.value) {
                    problems.add(
                        format!("{at}.{list}[{i}].value"),
                        "holds characters a header value cannot",
                    );
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            if !is_header_name(name) {
                problems.add(
                    format!("{at}.remove[{i}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
}

impl UrlRewrite {
    /// `prefix_match` says whether the rule has one match and it is a PathPrefix match,
    /// which ReplacePrefixMatch requires.
    pub fn validate(&self, at: &str, prefix_match: bool, problems: &mut Problems) {
        if let Some(host) = &self.hostname
            && (host.is_empty() || http_value_invalid(host) || host.contains('/'))
        {
            problems.add(
                format!("{at}.hostname"),
                format!("{host:?} is not a hostname"),
            );
        }
        if let Some(path) = &self.path {
            check_path_modifier(path, at, prefix_match, problems);
        }
    }
}

/// A path modifier of a rewrite or a redirect at `at`.
fn check_path_modifier(path: &PathModifier, at: &str, prefix_match: bool, problems: &mut Problems) {
    let (field, value) = match path.kind {
        PathModifierType::ReplaceFullPath => ("replaceFullPath", &path.replace_full_path),
        PathModifierType::ReplacePrefixMatch => ("replacePrefixMatch", &path.replace_prefix_match),
    };
    match value {
        None => problems.add(
            format!("{at}.path.{field}"),
            format!("is required with type {:?}", path.kind),
        ),
        Some(v) if !v.starts_with('/') => {
            problems.add(format!("{at}.path.{field}"), "must start with /")
        }
        Some(_) => {}
    }
    if path.kind == PathModifierType::ReplacePrefixMatch && !prefix_match {
        problems.add(
            format!("{at}.path.type"),
            "ReplacePrefixMatch needs the rule to have exactly one match, a PathPrefix match",
        );
    }
}

impl RequestRedirect {
    /// `prefix_match` as for [`UrlRewrite::validate`].
    pub fn validate(&self, at: &str, prefix_match: bool, problems: &mut Problems) {
        if let Some(scheme) = &self.scheme
            && scheme != "http"
            && scheme != "https"
        {
            problems.add(
                format!("{at}.scheme"),
                format!("{scheme:?} is not http or https"),
            );
        }
        if let Some(host) = &self.hostname
            && !crate::validate::is_dns_name(host)
        {
            problems.add(
                format!("{at}.hostname"),
                format!("{host:?} is not a hostname (a DNS name, without a port)"),
            );
        }
        if self.port == Some(0) {
            problems.add(format!("{at}.port"), "must be between 1 and 65535");
        }
        if let Some(code) = self.status_code
            && !REDIRECT_CODES.contains(&code)
        {
            problems.add(
                format!("{at}.statusCode"),
                format!("{code} is not one of 301, 302, 303, 307 and 308"),
            );
        }
        if let Some(path) = &self.path {
            check_path_modifier(path, at, prefix_match, problems);
        }
    }

    pub fn status(&self) -> u16 {
        self.status_code.unwrap_or(302)
    }
}

fn check_regex(re: &str, at: &str, problems: &mut Problems) {
    if let Err(e) = regex::Regex::new(re) {
        problems.add(
            at.to_owned(),
            format!(
                "invalid regular expression: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
        );
    }
}

/// An RFC 9110 token.
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http_value_invalid(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

pub fn is_http_method(s: &str) -> bool {
    matches!(
        s,
        "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(f: impl FnOnce(&mut Problems)) -> Vec<String> {
        let mut p = Problems::default();
        f(&mut p);
        p.into_vec().into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn matches_are_checked_field_by_field() {
        let m = HttpRouteMatch {
            path: Some(PathMatch {
                kind: PathMatchType::RegularExpression,
                value: "/a(".into(),
            }),
            headers: vec![HeaderMatch {
                kind: MatchType::Exact,
                name: "bad name".into(),
                value: "x".into(),
            }],
            query_params: vec![QueryParamMatch {
                kind: MatchType::RegularExpression,
                name: "q".into(),
                value: "[".into(),
            }],
            method: Some("FETCH".into()),
        };
        let got = problems_of(|p| m.validate("rules[0].matches[1]", p));
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got[0].starts_with("rules[0].matches[1].path.value: invalid regular expression"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("rules[0].matches[1].headers[0].name:"),
            "{got:?}"
        );
        assert!(
            got[2].starts_with(
                "rules[0].matches[1].queryParams[0].value: invalid regular expression"
            ),
            "{got:?}"
        );
        assert_eq!(
            got[3],
            "rules[0].matches[1].method: \"FETCH\" is not an HTTP method"
        );
    }

    #[test]
    fn prefix_rewrites_need_prefix_matches() {
        let r = UrlRewrite {
            hostname: None,
            path: Some(PathModifier {
                kind: PathModifierType::ReplacePrefixMatch,
                replace_full_path: None,
                replace_prefix_match: Some("/v2".into()),
            }),
        };
        assert!(problems_of(|p| r.validate("f", true, p)).is_empty());
        assert_eq!(problems_of(|p| r.validate("f", false, p)).len(), 1);
    }

    #[test]
    fn a_match_reads_as_the_gateway_api_writes_it() {
        let m: HttpRouteMatch = serde_json::from_value(serde_json::json!({
            "path": {"type": "PathPrefix", "value": "/api"},
            "headers": [{"name": "x-canary", "value": "true"}],
            "queryParams": [{"type": "RegularExpression", "name": "v", "value": "^2"}],
            "method": "GET"
        }))
        .unwrap();
        assert_eq!(m.path.unwrap().kind, PathMatchType::PathPrefix);
        assert_eq!(m.headers[0].kind, MatchType::Exact);
        assert_eq!(m.query_params[0].kind, MatchType::RegularExpression);
    }
}
