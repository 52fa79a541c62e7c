//! Route matching: which rule a request takes, by the Gateway API's precedence.
//!
//! Every match of every rule of every route attached to a Service port becomes one entry; the
//! entries are sorted once, when the config is compiled, and a request takes the first entry
//! that matches. Precedence, highest first:
//!
//! 1. the path: an exact match; then a regular expression (longer first); then a prefix
//!    (longer first). The Gateway API leaves regular expressions to implementations; weft
//!    ranks them between exact and prefix matches, as Contour does.
//! 2. a method match;
//! 3. more header matches;
//! 4. more query parameter matches;
//! 5. the older route (creation time), then the route's `<namespace>/<name>`;
//! 6. the earlier rule, then the earlier match.

use std::cmp::Reverse;

use http::{HeaderMap, HeaderName, Method, Uri};
use regex::Regex;
use weft_api::gateway::{HttpRouteMatch, MatchType, PathMatchType};

/// Where a match came from, for ordering ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// RFC 3339 creation time; routes without one sort after those with one.
    pub created: Option<String>,
    pub route: String,
    pub rule: usize,
    pub index: usize,
}

/// The entries of one Service port, in precedence order.
#[derive(Debug)]
pub struct Router<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    matcher: Matcher,
    action: T,
}

#[derive(Debug)]
struct Matcher {
    path: PathMatcher,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// The prefix without its trailing slash; empty for `/`, which matches everything.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn new(kind: MatchType, value: &str) -> Result<ValueMatcher, regex::Error> {
        Ok(match kind {
            MatchType::Exact => ValueMatcher::Exact(value.to_owned()),
            MatchType::RegularExpression => ValueMatcher::Regex(anchored(value)?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => v == value,
            ValueMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// The whole value must match, as the Gateway API's RegularExpression means.
fn anchored(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

/// The rule a request matched, and for a prefix match the prefix (for ReplacePrefixMatch).
#[derive(Debug)]
pub struct Matched<'a, T> {
    pub action: &'a T,
    pub prefix: Option<&'a str>,
}

impl<T> Router<T> {
    /// Builds a router from `(origin, match, action)`; a rule without matches should be given
    /// one default match (`PathPrefix /`).
    pub fn new(
        matches: impl IntoIterator<Item = (Origin, HttpRouteMatch, T)>,
    ) -> Result<Router<T>, regex::Error> {
        let mut keyed = Vec::new();
        for (origin, m, action) in matches {
            let (kind, value) = m
                .path
                .as_ref()
                .map_or((PathMatchType::PathPrefix, "/"), |p| {
                    (p.kind, p.value.as_str())
                });
            let path = match kind {
                PathMatchType::Exact => PathMatcher::Exact(value.to_owned()),
                PathMatchType::PathPrefix => {
                    PathMatcher::Prefix(value.trim_end_matches('/').to_owned())
                }
                PathMatchType::RegularExpression => PathMatcher::Regex(anchored(value)?),
            };
            let rank = match &path {
                PathMatcher::Exact(_) => (3, value.len()),
                PathMatcher::Regex(_) => (2, value.len()),
                PathMatcher::Prefix(p) => (1, p.len()),
            };
            let key = (
                Reverse(rank),
                Reverse(m.method.is_some()),
                Reverse(m.headers.len()),
                Reverse(m.query_params.len()),
                origin.created.is_none(),
                origin,
            );
            let matcher = Matcher {
                path,
                method: m
                    .method
                    .as_deref()
                    .and_then(|s| Method::from_bytes(s.as_bytes()).ok()),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|h| {
                        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                        Some(ValueMatcher::new(h.kind, &h.value).map(|v| (name, v)))
                    })
                    .collect::<Result<_, _>>()?,
                query: m
                    .query_params
                    .iter()
                    .map(|q| ValueMatcher::new(q.kind, &q.value).map(|v| (q.name.clone(), v)))
                    .collect::<Result<_, _>>()?,
            };
            keyed.push((key, Entry { matcher, action }));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Router {
            entries: keyed.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// A router that matches nothing.
    pub fn empty() -> Router<T> {
        Router {
            entries: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first entry the request matches.
    pub fn route(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Matched<'_, T>> {
        let path = uri.path();
        let mut query: Option<Vec<(String, String)>> = None;
        'entries: for entry in &self.entries {
            let m = &entry.matcher;
            let prefix = match &m.path {
                PathMatcher::Exact(p) if p == path => None,
                PathMatcher::Prefix(p) if prefix_matches(p, path) => Some(p.as_str()),
                PathMatcher::Regex(re) if re.is_match(path) => None,
                _ => continue,
            };
            if m.method.as_ref().is_some_and(|want| want != method) {
                continue;
            }
            for (name, value) in &m.headers {
                let any = headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| value.matches(v)));
                if !any {
                    continue 'entries;
                }
            }
            if !m.query.is_empty() {
                let params = query.get_or_insert_with(|| parse_query(uri.query().unwrap_or("")));
                for (name, value) in &m.query {
                    let first = params.iter().find(|(k, _)| k == name);
                    if !first.is_some_and(|(_, v)| value.matches(v)) {
                        continue 'entries;
                    }
                }
            }
            return Some(Matched {
                action: &entry.action,
                prefix,
            });
        }
        None
    }
}

/// Element-wise prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// `a=1&b=x%20y` as decoded pairs, in order.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::gateway::{HeaderMatch, PathMatch, QueryParamMatch};

    fn path(kind: PathMatchType, value: &str) -> Option<PathMatch> {
        Some(PathMatch {
            kind,
            value: value.into(),
        })
    }

    fn origin(route: &str, rule: usize) -> Origin {
        Origin {
            created: None,
            route: route.into(),
            rule,
            index: 0,
        }
    }

    fn router(entries: Vec<(Origin, HttpRouteMatch, &'static str)>) -> Router<&'static str> {
        Router::new(entries).unwrap()
    }

    fn route(
        r: &Router<&'static str>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'static str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r.route(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri.parse().unwrap(),
            &map,
        )
        .map(|m| *m.action)
    }

    #[test]
    fn prefixes_match_whole_path_elements() {
        let cases = [
            ("/api", "/api", true),
            ("/api", "/api/", true),
            ("/api", "/api/x", true),
            ("/api", "/apix", false),
            ("/api/", "/api", true),
            ("/api/", "/api/x", true),
            ("", "/anything", true),
            ("/a/b", "/a/bc", false),
        ];
        for (prefix, p, want) in cases {
            assert_eq!(
                prefix_matches(prefix.trim_end_matches('/'), p),
                want,
                "{prefix} vs {p}"
            );
        }
    }

    #[test]
    fn precedence_follows_the_gateway_api() {
        use PathMatchType::*;
        let m = |p, v| HttpRouteMatch {
            path: path(p, v),
            ..Default::default()
        };
        let r = router(vec![
            (origin("ns/a", 0), m(PathPrefix, "/"), "catch-all"),
            (origin("ns/a", 1), m(PathPrefix, "/api"), "api"),
            (origin("ns/a", 2), m(PathPrefix, "/api/v2"), "api-v2"),
            (origin("ns/a", 3), m(Exact, "/api/v2/health"), "exact"),
            (
                origin("ns/a", 4),
                m(RegularExpression, "/api/v2/users/[0-9]+"),
                "regex",
            ),
            (
                origin("ns/a", 5),
                HttpRouteMatch {
                    path: path(PathPrefix, "/api"),
                    method: Some("POST".into()),
                    ..Default::default()
                },
                "api-post",
            ),
            (
                origin("ns/a", 6),
                HttpRouteMatch {
                    path: path(PathPrefix, "/api"),
                    method: Some("POST".into()),
                    headers: vec![HeaderMatch {
                        kind: MatchType::Exact,
                        name: "x-canary".into(),
                        value: "true".into(),
                    }],
                    ..Default::default()
                },
                "api-post-canary",
            ),
            (
                origin("ns/a", 7),
                HttpRouteMatch {
                    path: path(PathPrefix, "/api"),
                    method: Some("POST".into()),
                    headers: vec![HeaderMatch {
                        kind: MatchType::Exact,
                        name: "x-canary".into(),
                        value: "true".into(),
                    }],
                    query_params: vec![QueryParamMatch {
                        kind: MatchType::Exact,
                        name: "v".into(),
                        value: "2".into(),
                    }],
                },
                "api-post-canary-v2",
            ),
        ]);
        let cases = [
            ("GET", "/", vec![], Some("catch-all")),
            ("GET", "/apix", vec![], Some("catch-all")),
            ("GET", "/api/users", vec![], Some("api")),
            ("GET", "/api/v2/x", vec![], Some("api-v2")),
            ("GET", "/api/v2/health", vec![], Some("exact")),
            ("GET", "/api/v2/health?x=1", vec![], Some("exact")),
            ("GET", "/api/v2/users/42", vec![], Some("regex")),
            ("GET", "/api/v2/users/bob", vec![], Some("api-v2")),
            ("POST", "/api/x", vec![], Some("api-post")),
            (
                "POST",
                "/api/x",
                vec![("x-canary", "true")],
                Some("api-post-canary"),
            ),
            (
                "POST",
                "/api/x?v=2",
                vec![("x-canary", "true")],
                Some("api-post-canary-v2"),
            ),
            (
                "POST",
                "/api/x?v=3",
                vec![("X-Canary", "true")],
                Some("api-post-canary"),
            ),
            (
                "POST",
                "/api/x?v=2",
                vec![("x-canary", "TRUE")],
                Some("api-post"),
            ),
        ];
        for (method, uri, headers, want) in cases {
            assert_eq!(
                route(&r, method, uri, &headers),
                want,
                "{method} {uri} {headers:?}"
            );
        }
    }

    #[test]
    fn ties_go_to_the_older_route_then_the_name_then_the_rule() {
        let m = HttpRouteMatch {
            path: path(PathMatchType::PathPrefix, "/x"),
            ..Default::default()
        };
        let at = |created: Option<&str>, route: &str, rule| Origin {
            created: created.map(Into::into),
            route: route.into(),
            rule,
            index: 0,
        };
        let r = router(vec![
            (at(None, "ns/a", 0), m.clone(), "no-timestamp"),
            (
                at(Some("2026-01-02T00:00:00Z"), "ns/a", 0),
                m.clone(),
                "newer",
            ),
            (
                at(Some("2026-01-01T00:00:00Z"), "ns/z", 0),
                m.clone(),
                "older",
            ),
        ]);
        assert_eq!(route(&r, "GET", "/x", &[]), Some("older"));
        let r = router(vec![
            (at(None, "ns/b", 0), m.clone(), "b"),
            (at(None, "ns/a", 1), m.clone(), "a1"),
            (at(None, "ns/a", 0), m, "a0"),
        ]);
        assert_eq!(route(&r, "GET", "/x", &[]), Some("a0"));
    }

    #[test]
    fn nothing_matches_when_no_entry_does() {
        let m = HttpRouteMatch {
            path: path(PathMatchType::Exact, "/only"),
            ..Default::default()
        };
        let r = router(vec![(origin("ns/a", 0), m, "only")]);
        assert_eq!(route(&r, "GET", "/other", &[]), None);
    }

    #[test]
    fn query_and_header_regexes_are_anchored() {
        let m = HttpRouteMatch {
            headers: vec![HeaderMatch {
                kind: MatchType::RegularExpression,
                name: "x-user".into(),
                value: "a.c".into(),
            }],
            query_params: vec![QueryParamMatch {
                kind: MatchType::Exact,
                name: "q".into(),
                value: "a b".into(),
            }],
            ..Default::default()
        };
        let r = router(vec![(origin("ns/a", 0), m, "hit")]);
        assert_eq!(
            route(&r, "GET", "/?q=a%20b", &[("x-user", "abc")]),
            Some("hit")
        );
        assert_eq!(route(&r, "GET", "/?q=a%20b", &[("x-user", "xabc")]), None);
        assert_eq!(route(&r, "GET", "/?q=ab", &[("x-user", "abc")]), None);
    }

    #[test]
    fn the_matched_prefix_is_reported() {
        let m = HttpRouteMatch {
            path: path(PathMatchType::PathPrefix, "/v1/"),
            ..Default::default()
        };
        let r = router(vec![(origin("ns/a", 0), m, "v1")]);
        let got = r
            .route(&Method::GET, &"/v1/x".parse().unwrap(), &HeaderMap::new())
            .unwrap();
        assert_eq!(got.prefix, Some("/v1"));
    }
}
