//! What a proxy changes in a message on its way through, and nothing more: the application
//! sees the request as it was sent.
//!
//! - Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection and are removed:
//!   `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
//!   `Transfer-Encoding` (hyper frames the body again), `TE` except `trailers` on HTTP/2, and
//!   `Upgrade` unless the request is being upgraded.
//! - An HTTP/1 request in absolute form (`GET http://reviews:9080/x`, as an HTTP proxy
//!   receives it) is sent upstream in origin form (`GET /x`) with `Host` taken from the
//!   target, as RFC 9112 section 3.2.2 requires.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};

/// How a request asks to leave HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket).
    Protocol,
    /// `CONNECT host:port`: a tunnel.
    Connect,
}

/// Whether the request asks for an upgrade or a tunnel.
pub fn upgrade_of<B>(req: &Request<B>) -> Option<Upgrade> {
    if req.method() == Method::CONNECT {
        return Some(Upgrade::Connect);
    }
    let asks = req.version() <= Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade");
    asks.then_some(Upgrade::Protocol)
}

/// The request's authority: the URI's (absolute form, HTTP/2 `:authority`, CONNECT) or else
/// the `Host` header.
pub fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// Readies a downstream request for the upstream connection.
pub fn prepare_request<B>(req: &mut Request<B>, upgrade: Option<Upgrade>) {
    let keep_upgrade = upgrade == Some(Upgrade::Protocol);
    let http2 = req.version() == Version::HTTP_2;
    strip_hop_by_hop(req.headers_mut(), keep_upgrade, http2);
    if !http2 && upgrade != Some(Upgrade::Connect) {
        to_origin_form(req);
    }
}

/// Readies an upstream response for the downstream connection.
pub fn prepare_response<B>(resp: &mut Response<B>, upgraded: bool) {
    strip_hop_by_hop(resp.headers_mut(), upgraded, false);
}

/// Whether a header is hop-by-hop by its name alone (headers named by `Connection` are too,
/// but a message that has them also has `Connection`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, http2: bool) {
    // Most messages have none: one pass over the names, instead of a lookup per name.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named by Connection are hop-by-hop too.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if keep_upgrade && token.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::TRANSFER_ENCODING);
    let te_trailers = headers.get(header::TE).is_some_and(|te| {
        te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers && http2 {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn to_origin_form<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority().cloned() else {
        return;
    };
    let path = match req.uri().path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => pq.clone(),
        _ if req.method() == Method::OPTIONS => PathAndQuery::from_static("*"),
        _ => PathAndQuery::from_static("/"),
    };
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    *req.uri_mut() = Uri::from(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("http://reviews.shop:9080/a?b=c");
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host() {
        let mut r = req(&[("host", "stale")]);
        prepare_request(&mut r, None);
        assert_eq!(r.uri(), "/a?b=c");
        assert_eq!(r.headers()["host"], "reviews.shop:9080");
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_kept() {
        let mut r = req(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("x-app", "kept"),
            ("trailer", "grpc-status"),
        ]);
        prepare_request(&mut r, None);
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "trailer", "x-app"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "upgrade",
        ] {
            let mut r = req(&[(name, "x"), ("x-app", "kept")]);
            prepare_request(&mut r, None);
            assert!(!r.headers().contains_key(name), "{name} was kept");
            assert_eq!(r.headers()["x-app"], "kept");
        }
    }

    #[test]
    fn te_trailers_survives_on_http2() {
        let mut r = req(&[("te", "trailers")]);
        *r.version_mut() = Version::HTTP_2;
        prepare_request(&mut r, None);
        assert_eq!(r.headers()["te"], "trailers");
        assert_eq!(
            r.uri(),
            "http://reviews.shop:9080/a?b=c",
            "HTTP/2 keeps the absolute URI"
        );
    }

    #[test]
    fn websocket_upgrade_keeps_its_headers() {
        let mut r = req(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert_eq!(upgrade_of(&r), Some(Upgrade::Protocol));
        prepare_request(&mut r, Some(Upgrade::Protocol));
        assert_eq!(r.headers()["connection"], "upgrade");
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert_eq!(r.headers()["sec-websocket-key"], "k");
    }

    #[test]
    fn connect_keeps_its_authority_form() {
        let mut r = Request::builder()
            .method("CONNECT")
            .uri("db.shop:3306")
            .body(())
            .unwrap();
        assert_eq!(upgrade_of(&r), Some(Upgrade::Connect));
        prepare_request(&mut r, Some(Upgrade::Connect));
        assert_eq!(r.uri(), "db.shop:3306");
        assert_eq!(authority_of(&r), Some("db.shop:3306"));
    }

    #[test]
    fn authority_falls_back_to_host() {
        let r = Request::builder()
            .uri("/x")
            .header("host", "reviews:9080")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&r), Some("reviews:9080"));
    }
}
