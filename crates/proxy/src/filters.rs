//! HTTPRoute filters that change a message: header modifiers and URL rewrites. Compiled once
//! per config, applied per request.

use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Version};
use weft_api::gateway::{self, PathModifierType};

/// A header modifier with its names and values already parsed.
#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderModifier {
    /// Validation has checked names and values; anything unparsable is skipped.
    pub fn new(m: &gateway::HeaderModifier) -> HeaderModifier {
        let pairs = |list: &[gateway::HeaderValue]| {
            list.iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        HeaderValue::from_str(&h.value).ok()?,
                    ))
                })
                .collect()
        };
        HeaderModifier {
            set: pairs(&m.set),
            add: pairs(&m.add),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Applies a URLRewrite. `matched_prefix` is the PathPrefix the request matched, without its
/// trailing slash, which ReplacePrefixMatch replaces.
pub fn rewrite_url<B>(
    req: &mut Request<B>,
    rewrite: &gateway::UrlRewrite,
    matched_prefix: Option<&str>,
) {
    if let Some(host) = &rewrite.hostname {
        set_host(req, host);
    }
    let Some(modifier) = &rewrite.path else {
        return;
    };
    let path = req.uri().path();
    let new_path = match modifier.kind {
        PathModifierType::ReplaceFullPath => modifier
            .replace_full_path
            .clone()
            .unwrap_or_else(|| "/".into()),
        PathModifierType::ReplacePrefixMatch => {
            let Some(prefix) = matched_prefix else { return };
            let replacement = modifier.replace_prefix_match.as_deref().unwrap_or("/");
            replace_prefix(path, prefix, replacement)
        }
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// `/foo/bar` with prefix `/foo` replaced by `/xyz` is `/xyz/bar`; by `/`, it is `/bar`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    let base = replacement.trim_end_matches('/');
    let joined = format!("{base}{rest}");
    if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    }
}

fn set_host<B>(req: &mut Request<B>, host: &str) {
    if req.version() == Version::HTTP_2 || req.uri().authority().is_some() {
        let mut parts = req.uri().clone().into_parts();
        if let Ok(authority) = Authority::try_from(host) {
            parts.authority = Some(authority);
            if parts.scheme.is_none() {
                parts.scheme = Some(http::uri::Scheme::HTTP);
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        req.headers_mut().insert(HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::gateway::{PathModifier, UrlRewrite};

    #[test]
    fn prefix_replacement_follows_the_gateway_api_examples() {
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "/", "/bar"),
            ("/foo", "/foo", "/", "/"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/anything", "", "/v2", "/v2/anything"),
        ];
        for (path, prefix, replacement, want) in cases {
            assert_eq!(
                replace_prefix(path, prefix, replacement),
                want,
                "{path} {prefix} -> {replacement}"
            );
        }
    }

    #[test]
    fn rewrites_keep_the_query_and_set_the_host() {
        let mut req = Request::get("/old/items?page=2")
            .header("host", "reviews:9080")
            .body(())
            .unwrap();
        let rewrite = UrlRewrite {
            hostname: Some("internal.reviews".into()),
            path: Some(PathModifier {
                kind: PathModifierType::ReplacePrefixMatch,
                replace_full_path: None,
                replace_prefix_match: Some("/new".into()),
            }),
        };
        rewrite_url(&mut req, &rewrite, Some("/old"));
        assert_eq!(req.uri(), "/new/items?page=2");
        assert_eq!(req.headers()["host"], "internal.reviews");

        let mut req = Request::get("http://reviews:9080/a/b")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let rewrite = UrlRewrite {
            hostname: Some("other".into()),
            path: Some(PathModifier {
                kind: PathModifierType::ReplaceFullPath,
                replace_full_path: Some("/z".into()),
                replace_prefix_match: None,
            }),
        };
        rewrite_url(&mut req, &rewrite, None);
        assert_eq!(req.uri(), "http://other/z");
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let m = HeaderModifier::new(&gateway::HeaderModifier {
            set: vec![gateway::HeaderValue {
                name: "x-env".into(),
                value: "canary".into(),
            }],
            add: vec![gateway::HeaderValue {
                name: "x-tag".into(),
                value: "b".into(),
            }],
            remove: vec!["x-secret".into()],
        });
        let mut headers = HeaderMap::new();
        headers.insert("x-env", "prod".parse().unwrap());
        headers.insert("x-tag", "a".parse().unwrap());
        headers.insert("x-secret", "s".parse().unwrap());
        m.apply(&mut headers);
        assert_eq!(headers["x-env"], "canary");
        assert_eq!(
            headers.get_all("x-tag").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!headers.contains_key("x-secret"));
    }
}
