//! HTTPRoute filters that change a message or answer it: header modifiers, URL rewrites and
//! redirects. Compiled once per config, applied per request.

use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Version};
use weft_api::gateway::{self, PathModifier, PathModifierType};

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
    let Some(new_path) = modified_path(req.uri().path(), modifier, matched_prefix) else {
        return;
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

/// The path a rewrite or a redirect makes of `path`; `None` for a ReplacePrefixMatch when the
/// request matched no prefix.
fn modified_path(
    path: &str,
    modifier: &PathModifier,
    matched_prefix: Option<&str>,
) -> Option<String> {
    Some(match modifier.kind {
        PathModifierType::ReplaceFullPath => modifier
            .replace_full_path
            .clone()
            .unwrap_or_else(|| "/".into()),
        PathModifierType::ReplacePrefixMatch => {
            let replacement = modifier.replace_prefix_match.as_deref().unwrap_or("/");
            replace_prefix(path, matched_prefix?, replacement)
        }
    })
}

/// The `Location` of a RequestRedirect, as the Gateway API builds it: the redirect's scheme,
/// host, port and path where it sets them, the request's otherwise. Without a port, a scheme
/// the redirect sets brings its own (80, 443), and otherwise the port the request was for
/// (`port`, the Service's) stays; a scheme's default port is left out.
pub fn redirect_location<B>(
    req: &Request<B>,
    redirect: &gateway::RequestRedirect,
    matched_prefix: Option<&str>,
    port: u16,
) -> Option<HeaderValue> {
    let scheme = redirect
        .scheme
        .as_deref()
        .or(req.uri().scheme_str())
        .unwrap_or("http");
    let host = match &redirect.hostname {
        Some(h) => h.clone(),
        None => crate::http::headers::authority_of(req)?
            .parse::<Authority>()
            .ok()?
            .host()
            .to_owned(),
    };
    let port = match (redirect.port, &redirect.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) if s == "https" => 443,
        (None, Some(_)) => 80,
        (None, None) => port,
    };
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &redirect.path {
        Some(m) => modified_path(req.uri().path(), m, matched_prefix)?,
        None => req.uri().path().to_owned(),
    };
    let mut location = format!("{scheme}://{host}");
    if !default_port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    HeaderValue::try_from(location).ok()
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
    fn a_redirect_location_keeps_what_the_redirect_does_not_set() {
        let prefix = |value: &str| {
            Some(PathModifier {
                kind: PathModifierType::ReplacePrefixMatch,
                replace_full_path: None,
                replace_prefix_match: Some(value.into()),
            })
        };
        let full = |value: &str| {
            Some(PathModifier {
                kind: PathModifierType::ReplaceFullPath,
                replace_full_path: Some(value.into()),
                replace_prefix_match: None,
            })
        };
        let redirect = |scheme: Option<&str>, host: Option<&str>, port: Option<u16>| {
            gateway::RequestRedirect {
                scheme: scheme.map(str::to_owned),
                hostname: host.map(str::to_owned),
                port,
                ..Default::default()
            }
        };
        // (request host, Service port, redirect, matched prefix, Location)
        let cases = [
            (
                "echo",
                80,
                redirect(None, Some("example.org"), None),
                None,
                "http://example.org/p/x?q=1",
            ),
            (
                "echo:8080",
                8080,
                redirect(None, Some("example.org"), None),
                None,
                "http://example.org:8080/p/x?q=1",
            ),
            (
                "echo",
                80,
                redirect(Some("https"), None, None),
                None,
                "https://echo/p/x?q=1",
            ),
            (
                "echo:8080",
                8080,
                redirect(Some("https"), None, None),
                None,
                "https://echo/p/x?q=1",
            ),
            (
                "echo",
                80,
                redirect(Some("https"), None, Some(8443)),
                None,
                "https://echo:8443/p/x?q=1",
            ),
            (
                "echo",
                80,
                redirect(Some("http"), None, Some(443)),
                None,
                "http://echo:443/p/x?q=1",
            ),
            (
                "echo",
                80,
                redirect(None, None, Some(8080)),
                None,
                "http://echo:8080/p/x?q=1",
            ),
            (
                "echo:8080",
                8080,
                redirect(None, None, Some(80)),
                None,
                "http://echo/p/x?q=1",
            ),
            (
                "[fd00::1]:80",
                80,
                redirect(None, None, Some(81)),
                None,
                "http://[fd00::1]:81/p/x?q=1",
            ),
            (
                "echo",
                80,
                gateway::RequestRedirect {
                    path: prefix("/new"),
                    ..Default::default()
                },
                Some("/p"),
                "http://echo/new/x?q=1",
            ),
            (
                "echo",
                80,
                gateway::RequestRedirect {
                    path: prefix("/"),
                    ..Default::default()
                },
                Some("/p"),
                "http://echo/x?q=1",
            ),
            (
                "echo",
                80,
                gateway::RequestRedirect {
                    path: full("/full"),
                    ..Default::default()
                },
                None,
                "http://echo/full?q=1",
            ),
        ];
        for (host, port, redirect, matched, want) in cases {
            let req = Request::get("/p/x?q=1")
                .header("host", host)
                .body(())
                .unwrap();
            let got = redirect_location(&req, &redirect, matched, port).unwrap();
            assert_eq!(got, want, "{host} {redirect:?}");
        }
        let hostless = Request::get("/p").body(()).unwrap();
        assert!(redirect_location(&hostless, &redirect(None, None, None), None, 80).is_none());
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
