//! The Gateway API's CORS filter, in the client's sidecar: a preflight from an allowed origin
//! is answered there, and the answer to an actual request from one is marked for the
//! browser. Compiled once per config, applied per request.
//!
//! Where the Gateway API leaves a choice: a preflight from an origin that is not allowed is
//! answered 200 with no CORS headers (the browser then refuses the actual request); a
//! wildcard (`*`) of methods or headers answers with what the preflight asked for; `*` origins
//! answer `*` unless credentials are allowed, when the origin is named instead.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use weft_api::gateway::{self, parse_origin};

/// An allowed origin, parsed.
#[derive(Debug, Clone)]
enum Origin {
    Any,
    Exact {
        scheme: String,
        host: String,
        port: u16,
    },
    /// `*.suffix`: any host with one label or more before `.suffix`.
    Wildcard {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

impl Origin {
    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = parse_origin(origin) else {
            return false;
        };
        match self {
            Origin::Any => true,
            Origin::Exact {
                scheme: s,
                host: h,
                port: p,
            } => scheme == s && port == *p && (h == "*" || host.eq_ignore_ascii_case(h)),
            Origin::Wildcard {
                scheme: s,
                suffix,
                port: p,
            } => {
                scheme == s
                    && port == *p
                    && host.len() > suffix.len() + 1
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// A CORS filter with its lists parsed.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<Origin>,
    credentials: bool,
    /// `None`: every method (`*`).
    methods: Option<HeaderValue>,
    /// `None`: every header (`*`); an empty list sends none.
    headers: Option<Option<HeaderValue>>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    any_origin: bool,
}

fn joined(list: &[String]) -> Option<HeaderValue> {
    (!list.is_empty())
        .then(|| HeaderValue::from_str(&list.join(", ")).ok())
        .flatten()
}

impl Cors {
    /// Validation has checked the lists; anything unparsable is left out.
    pub fn new(c: &gateway::Cors) -> Cors {
        let origins = c
            .allow_origins
            .iter()
            .filter_map(|o| {
                if o == "*" {
                    return Some(Origin::Any);
                }
                let (scheme, host, port) = parse_origin(o)?;
                Some(match host.strip_prefix("*.") {
                    Some(suffix) => Origin::Wildcard {
                        scheme: scheme.to_owned(),
                        suffix: suffix.to_owned(),
                        port,
                    },
                    None => Origin::Exact {
                        scheme: scheme.to_owned(),
                        host: host.to_owned(),
                        port,
                    },
                })
            })
            .collect();
        let star = |list: &[String]| list.iter().any(|v| v == "*");
        Cors {
            origins,
            credentials: c.allow_credentials,
            methods: (!star(&c.allow_methods))
                .then(|| joined(&c.allow_methods))
                .flatten(),
            headers: (!star(&c.allow_headers)).then(|| joined(&c.allow_headers)),
            expose: joined(&c.expose_headers),
            max_age: HeaderValue::from(c.max_age.unwrap_or(5)),
            any_origin: star(&c.allow_origins),
        }
    }

    /// The request's Origin, when it is one this filter allows.
    fn allowed<'r, B>(&self, req: &'r Request<B>) -> Option<&'r HeaderValue> {
        let origin = req.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o.matches(text))
            .then_some(origin)
    }

    /// What `Access-Control-Allow-Origin` says to `origin`.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight (an OPTIONS with an Origin and an
    /// Access-Control-Request-Method), or `None` for any other request.
    pub fn preflight<B>(&self, req: &Request<B>) -> Option<Response<()>> {
        if req.method() != Method::OPTIONS
            || !req.headers().contains_key(header::ORIGIN)
            || !req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::OK;
        let Some(origin) = self.allowed(req) else {
            return Some(resp);
        };
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        let methods = match &self.methods {
            Some(m) => Some(m.clone()),
            None => req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .cloned(),
        };
        if let Some(m) = methods {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        let headers = match &self.headers {
            Some(listed) => listed.clone(),
            None => req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned(),
        };
        if let Some(v) = headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        self.common(h);
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(resp)
    }

    /// The headers the answer to an actual request from an allowed origin gets; `None` when
    /// the request has no allowed Origin. Boxed: it waits in the request's future while the
    /// request is in flight.
    pub fn for_actual<B>(&self, req: &Request<B>) -> Option<Box<HeaderMap>> {
        let origin = self.allowed(req)?;
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        self.common(&mut h);
        Some(Box::new(h))
    }

    fn common(&self, h: &mut HeaderMap) {
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        // The answer depends on the Origin: caches must keep one per origin.
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// Copies CORS headers into an answer, replacing any the upstream set (its `Vary` is kept,
/// and `Origin` added to it).
pub fn mark(resp: &mut HeaderMap, cors: HeaderMap) {
    let mut last: Option<HeaderName> = None;
    for (name, value) in cors {
        if let Some(name) = name {
            if name != header::VARY {
                resp.remove(&name);
            }
            last = Some(name);
        }
        if let Some(name) = &last {
            resp.append(name.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool, methods: &[&str], headers: &[&str]) -> Cors {
        let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        Cors::new(&gateway::Cors {
            allow_origins: list(origins),
            allow_credentials: credentials,
            allow_methods: list(methods),
            allow_headers: list(headers),
            expose_headers: list(&["x-header-3", "x-header-4"]),
            max_age: Some(3600),
        })
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method("OPTIONS")
            .uri("/cors")
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(h) = headers {
            b = b.header("access-control-request-headers", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn origins_match_exactly_or_by_a_leading_wildcard() {
        let c = cors(
            &[
                "https://www.foo.com",
                "https://*.bar.com",
                "http://a.org:8080",
            ],
            true,
            &["GET"],
            &[],
        );
        for (origin, allowed) in [
            ("https://www.foo.com", true),
            ("https://WWW.FOO.COM", true),
            ("https://www.foo.com:443", true),
            ("http://www.foo.com", false),
            ("https://foo.com", false),
            ("https://www.bar.com", true),
            ("https://xpto.www.bar.com", true),
            ("https://bar.com", false),
            ("https://notbar.com", false),
            ("http://a.org:8080", true),
            ("http://a.org", false),
            ("null", false),
        ] {
            let req = preflight(origin, "GET", None);
            assert_eq!(c.allowed(&req).is_some(), allowed, "{origin}");
        }
    }

    #[test]
    fn a_preflight_is_answered_as_the_conformance_suite_expects() {
        let c = cors(
            &["https://www.foo.com", "https://*.bar.com"],
            true,
            &["GET", "OPTIONS"],
            &["x-header-1", "x-header-2"],
        );
        let resp: Response<()> = c
            .preflight(&preflight(
                "https://www.bar.com",
                "GET",
                Some("x-header-1, x-header-2"),
            ))
            .unwrap();
        let h = resp.headers();
        assert_eq!(resp.status(), 200);
        assert_eq!(h["access-control-allow-origin"], "https://www.bar.com");
        assert_eq!(h["access-control-allow-methods"], "GET, OPTIONS");
        assert_eq!(h["access-control-allow-headers"], "x-header-1, x-header-2");
        assert_eq!(h["access-control-expose-headers"], "x-header-3, x-header-4");
        assert_eq!(h["access-control-max-age"], "3600");
        assert_eq!(h["access-control-allow-credentials"], "true");

        let refused: Response<()> = c
            .preflight(&preflight("https://foobar.com", "GET", None))
            .unwrap();
        assert_eq!(refused.status(), 200);
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );

        // Wildcards answer with what the preflight asked for; `*` origins with `*` unless
        // credentials are allowed.
        let any = cors(&["*"], false, &["*"], &["*"]);
        let resp: Response<()> = any
            .preflight(&preflight("https://x.org", "PUT", Some("x-a")))
            .unwrap();
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert_eq!(resp.headers()["access-control-allow-methods"], "PUT");
        assert_eq!(resp.headers()["access-control-allow-headers"], "x-a");
        assert!(
            resp.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
        let with_credentials = cors(&["*"], true, &["*"], &["*"]);
        let resp: Response<()> = with_credentials
            .preflight(&preflight("https://x.org", "PUT", None))
            .unwrap();
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://x.org"
        );

        // Not a preflight: no Access-Control-Request-Method.
        let plain = Request::options("/")
            .header("origin", "https://www.foo.com")
            .body(())
            .unwrap();
        assert!(c.preflight(&plain).is_none());
        let actual = Request::get("/")
            .header("origin", "https://www.foo.com")
            .body(())
            .unwrap();
        let marks = c.for_actual(&actual).unwrap();
        assert_eq!(marks["access-control-allow-origin"], "https://www.foo.com");
        assert_eq!(marks["access-control-allow-credentials"], "true");
    }
}
