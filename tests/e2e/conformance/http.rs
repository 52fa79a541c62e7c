//! The MESH-HTTP profile's tests, core and extended, and the HTTPRoute-extended ones the mesh
//! suite runs (response headers, parent ports, 303/307/308 redirects).

use super::{CONSUMER_NS, Case, NS, Suite, from, http_route, run};

#[tokio::test]
async fn mesh_basic() {
    let suite = Suite::start("").await;
    // Without routes the Service's own endpoints answer: both versions.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = suite.get("http://echo", &[]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        seen.insert(answer.pod().to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["echo-v1", "echo-v2"],
        "the Service echo selects both pods"
    );
}

#[tokio::test]
async fn mesh_http_route_simple_same_namespace() {
    let routes = http_route(
        "gateway-conformance-mesh-test",
        "echo",
        Some(80),
        "  - backendRefs: [{name: echo-v1, port: 8080}]\n",
    );
    let suite = Suite::start(&routes).await;
    for _ in 0..20 {
        Case::ok("/", "echo-v1").check(
            "MeshHTTPRouteSimpleSameNamespace",
            &suite.get("http://echo/", &[]).await,
        );
    }
}

#[tokio::test]
async fn mesh_http_route_matching() {
    let routes = http_route(
        "mesh-matching",
        "echo",
        Some(80),
        "  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n",
    );
    let suite = Suite::start(&routes).await;
    let with = |path, headers, pod| Case {
        headers,
        ..Case::ok(path, pod)
    };
    run(
        "MeshHTTPRouteMatching",
        &suite,
        &[
            Case::ok("/", "echo-v1"),
            Case::ok("/example", "echo-v1"),
            with("/", &[("Version", "one")], "echo-v1"),
            Case::ok("/v2", "echo-v2"),
            Case::ok("/v2/example", "echo-v2"),
            with("/", &[("Version", "two")], "echo-v2"),
            Case::ok("/v2/", "echo-v2"),
            Case::ok("/v2example", "echo-v1"),
            Case::ok("/foo/v2/example", "echo-v1"),
        ],
    )
    .await;
}

#[tokio::test]
async fn mesh_http_route_query_param_matching() {
    let rule = |matches: &str, backend: &str| {
        format!("  - matches: {matches}\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
    };
    let q = |name: &str, value: &str| format!("{{name: {name}, value: {value}}}");
    let rules = [
        rule(&format!("[{{queryParams: [{}]}}]", q("animal", "whale")), "echo-v1"),
        rule(&format!("[{{queryParams: [{}]}}]", q("animal", "dolphin")), "echo-v2"),
        rule(
            &format!("[{{path: {{type: PathPrefix, value: /path1}}, queryParams: [{}]}}]", q("animal", "whale")),
            "echo-v1",
        ),
        rule(
            &format!("[{{headers: [{}], queryParams: [{}]}}]", q("version", "one"), q("animal", "whale")),
            "echo-v2",
        ),
        rule(
            &format!(
                "[{{path: {{type: PathPrefix, value: /path3}}, queryParams: [{}]}}, {{path: {{type: PathPrefix, value: /path4}}, headers: [{}], queryParams: [{}]}}]",
                q("animal", "shark"),
                q("version", "three"),
                q("animal", "kraken")
            ),
            "echo-v1",
        ),
        rule("[{path: {type: PathPrefix, value: /path5}}]", "echo-v1"),
        rule(&format!("[{{queryParams: [{}]}}]", q("animal", "hydra")), "echo-v2"),
    ]
    .concat();
    let suite = Suite::start(&http_route(
        "mesh-query-param-matching",
        "echo",
        Some(80),
        &rules,
    ))
    .await;
    let not_found = |path| Case {
        status: 404,
        ..Case::ok(path, "")
    };
    run(
        "MeshHTTPRouteQueryParamMatching",
        &suite,
        &[
            Case::ok("/?animal=whale", "echo-v1"),
            Case::ok("/?animal=dolphin", "echo-v2"),
            Case::ok("/?animal=whale&otherparam=irrelevant", "echo-v1"),
            Case::ok("/?animal=dolphin&color=yellow", "echo-v2"),
            not_found("/?color=blue"),
            not_found("/?animal=dog"),
            not_found("/?animal=whaledolphin"),
            not_found("/"),
            Case::ok("/path1?animal=whale", "echo-v1"),
            Case {
                headers: &[("version", "one")],
                ..Case::ok("/?animal=whale", "echo-v2")
            },
            Case::ok("/path3?animal=shark", "echo-v1"),
            Case {
                headers: &[("version", "three")],
                ..Case::ok("/path4?animal=kraken", "echo-v1")
            },
            not_found("/?animal=shark"),
            not_found("/path4?animal=kraken"),
            Case::ok("/path5?animal=hydra", "echo-v1"),
        ],
    )
    .await;
}

#[tokio::test]
async fn mesh_traffic_split() {
    let routes = http_route(
        "mesh-split",
        "echo",
        None,
        "  - matches: [{path: {type: Exact, value: /v1}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /v2}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshTrafficSplit",
        &suite,
        &[
            Case::ok("/v1", "echo-v1"),
            Case::ok("/v2", "echo-v2"),
            Case {
                status: 404,
                ..Case::ok("/", "")
            },
        ],
    )
    .await;
    // Without a port, the route holds on every port of the Service.
    let answer = suite.get("http://echo:8080/v2", &[]).await;
    assert_eq!(
        (answer.status, answer.pod()),
        (200, "echo-v2"),
        "{answer:?}"
    );
}

/// Sends `n` requests from `echo-v1` and returns the share each pod answered.
pub async fn shares(suite: &Suite, url: &str, n: usize) -> std::collections::BTreeMap<String, f64> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let answer = suite.get(url, &[]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        *counts.entry(answer.pod().to_owned()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(pod, c)| (pod, c as f64 / n as f64))
        .collect()
}

/// The suite sends 500 requests and allows 5 points either way, trying up to 10 times; one
/// try of 2,000 holds the same 5 points about 5 standard deviations out, so it does not flake.
#[tokio::test]
async fn mesh_http_route_weight() {
    let routes = http_route(
        "mesh-weighted-backends",
        "echo",
        Some(80),
        "  - backendRefs: [{name: echo-v1, port: 8080, weight: 70}, {name: echo-v2, port: 8080, weight: 30}]\n",
    );
    let suite = Suite::start(&routes).await;
    let shares = shares(&suite, "http://echo/", 2_000).await;
    eprintln!("MeshHTTPRouteWeight: {shares:?}");
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert!((shares["echo-v1"] - 0.7).abs() <= 0.05, "{shares:?}");
    assert!((shares["echo-v2"] - 0.3).abs() <= 0.05, "{shares:?}");
}

/// The request header modifier rules of MeshHTTPRouteRequestHeaderModifier, with each
/// modifier in the rule (`in_backend` false) or in its one backend.
fn header_modifier_routes(in_backend: bool) -> String {
    let modifiers = [
        (
            "/set",
            "{set: [{name: X-Header-Set, value: set-overwrites-values}]}",
        ),
        (
            "/add",
            "{add: [{name: X-Header-Add, value: add-appends-values}]}",
        ),
        ("/remove", "{remove: [X-Header-Remove]}"),
        (
            "/multiple",
            "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}",
        ),
        (
            "/case-insensitivity",
            "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}",
        ),
    ];
    let rules: String = modifiers
        .iter()
        .map(|(path, m)| {
            let filter = format!("[{{type: RequestHeaderModifier, requestHeaderModifier: {m}}}]");
            if in_backend {
                format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: echo-v1, port: 8080, filters: {filter}}}]\n")
            } else {
                format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: {filter}\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n")
            }
        })
        .collect();
    http_route("mesh-request-header-modifier", "echo", Some(80), &rules)
}

const HEADER_MODIFIER_CASES: &[Case] = &[
    Case {
        headers: &[("Some-Other-Header", "val")],
        sees: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        ..Case::ok("/set", "echo-v1")
    },
    Case {
        headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
        sees: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        ..Case::ok("/set", "echo-v1")
    },
    Case {
        headers: &[("Some-Other-Header", "val")],
        sees: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        ..Case::ok("/add", "echo-v1")
    },
    Case {
        headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
        sees: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        ..Case::ok("/add", "echo-v1")
    },
    Case {
        headers: &[("X-Header-Remove", "val")],
        absent: &["X-Header-Remove"],
        ..Case::ok("/remove", "echo-v1")
    },
    Case {
        headers: &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
        sees: &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        absent: &["X-Header-Remove-1", "X-Header-Remove-2"],
        ..Case::ok("/multiple", "echo-v1")
    },
    Case {
        headers: &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
        sees: &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        absent: &["X-Header-Remove"],
        ..Case::ok("/case-insensitivity", "echo-v1")
    },
];

#[tokio::test]
async fn mesh_http_route_request_header_modifier() {
    let suite = Suite::start(&header_modifier_routes(false)).await;
    run(
        "MeshHTTPRouteRequestHeaderModifier",
        &suite,
        HEADER_MODIFIER_CASES,
    )
    .await;
}

#[tokio::test]
async fn mesh_http_route_backend_request_header_modifier() {
    let suite = Suite::start(&header_modifier_routes(true)).await;
    run(
        "MeshHTTPRouteBackendRequestHeaderModifier",
        &suite,
        HEADER_MODIFIER_CASES,
    )
    .await;
}

/// A backend's filters apply only to the requests sent to it: of two backends, the one with a
/// modifier gets the header and the other does not; response modifiers likewise.
#[tokio::test]
async fn backend_filters_apply_only_to_their_backend() {
    let routes = http_route(
        "per-backend",
        "echo",
        Some(80),
        "  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: both}]}}]\n    backendRefs:\n    - {name: echo-v1, port: 8080, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: v1}, {name: x-rule, value: v1-wins}]}}, {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-answered, value: by-v1}]}}]}\n    - {name: echo-v2, port: 8080}\n",
    );
    let suite = Suite::start(&routes).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = suite.get("http://echo/", &[]).await;
        let echoed = answer.echoed.as_ref().expect("a pod answers");
        match echoed.pod.as_str() {
            "echo-v1" => {
                assert_eq!(echoed.header("x-backend"), Some("v1"));
                assert_eq!(
                    echoed.header("x-rule"),
                    Some("v1-wins"),
                    "the backend's after the rule's"
                );
                assert_eq!(answer.header("x-answered"), Some("by-v1"));
            }
            other => {
                assert_eq!(other, "echo-v2");
                assert_eq!(echoed.header("x-backend"), None);
                assert_eq!(echoed.header("x-rule"), Some("both"));
                assert_eq!(answer.header("x-answered"), None);
            }
        }
        seen.insert(echoed.pod.clone());
    }
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
}

#[tokio::test]
async fn mesh_http_route_rewrite_path() {
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let rule = |prefix: &str, rewrite: &str, extra: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {rewrite}}}}}{extra}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n"
        )
    };
    let with = format!(", {modify}");
    let rules = [
        rule(
            "/prefix/one",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /one}",
            "",
        ),
        rule(
            "/strip-prefix",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /}",
            "",
        ),
        rule(
            "/full/one",
            "{type: ReplaceFullPath, replaceFullPath: /one}",
            "",
        ),
        rule(
            "/full/rewrite-path-and-modify-headers",
            "{type: ReplaceFullPath, replaceFullPath: /test}",
            &with,
        ),
        rule(
            "/prefix/rewrite-path-and-modify-headers",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /prefix}",
            &with,
        ),
    ]
    .concat();
    let suite = Suite::start(&http_route("mesh-rewrite-path", "echo", Some(80), &rules)).await;
    let sent: &[(&str, &str)] = &[
        ("X-Header-Remove", "remove-val"),
        ("X-Header-Add-Append", "append-val-1"),
        ("X-Header-Set", "set-val"),
    ];
    let sees: &[(&str, &str)] = &[
        ("X-Header-Add", "header-val-1"),
        ("X-Header-Add-Append", "append-val-1,header-val-2"),
        ("X-Header-Set", "set-overwrites-values"),
    ];
    let rewritten = |path, seen_path| Case {
        seen_path,
        ..Case::ok(path, "echo-v1")
    };
    run(
        "MeshHTTPRouteRewritePath",
        &suite,
        &[
            rewritten("/prefix/one/two", "/one/two"),
            rewritten("/strip-prefix/three", "/three"),
            rewritten("/strip-prefix", "/"),
            rewritten("/full/one/two", "/one"),
            rewritten("/full/one/two?keep=1", "/one?keep=1"),
            Case {
                headers: sent,
                sees,
                absent: &["X-Header-Remove"],
                ..rewritten("/full/rewrite-path-and-modify-headers/test", "/test")
            },
            Case {
                headers: sent,
                sees,
                absent: &["X-Header-Remove"],
                ..rewritten("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one")
            },
        ],
    )
    .await;
}

/// Redirect rules: each `(prefix, requestRedirect)`.
fn redirects(name: &str, rules: &[(&str, &str)]) -> String {
    let rules: String = rules
        .iter()
        .map(|(prefix, redirect)| {
            format!("  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n")
        })
        .collect();
    http_route(name, "echo", Some(80), &rules)
}

#[tokio::test]
async fn mesh_http_route_redirect_host_and_status() {
    let routes = redirects(
        "mesh-redirect-host-and-status",
        &[
            ("/hostname-redirect", "{hostname: example.org}"),
            (
                "/host-and-status",
                "{statusCode: 301, hostname: example.org}",
            ),
        ],
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshHTTPRouteRedirectHostAndStatus",
        &suite,
        &[
            Case::redirect(
                "/hostname-redirect",
                302,
                "http://example.org/hostname-redirect",
            ),
            Case::redirect(
                "/host-and-status",
                301,
                "http://example.org/host-and-status",
            ),
            Case::redirect(
                "/hostname-redirect/x?q=1",
                302,
                "http://example.org/hostname-redirect/x?q=1",
            ),
        ],
    )
    .await;
    // The redirect keeps the port the request was for, here the Service's 8080... which this
    // route, attached to port 80, does not hold: the request goes on to the Service.
    let answer = suite.get("http://echo:8080/hostname-redirect", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn mesh_http_route_scheme_redirect() {
    let routes = redirects(
        "mesh-redirect-scheme",
        &[
            ("/scheme", "{scheme: https}"),
            ("/scheme-and-host", "{hostname: example.org, scheme: https}"),
            ("/scheme-and-status", "{scheme: https, statusCode: 301}"),
            (
                "/scheme-and-host-and-status",
                "{scheme: https, statusCode: 302, hostname: example.org}",
            ),
        ],
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshHTTPRouteSchemeRedirect",
        &suite,
        &[
            Case::redirect("/scheme", 302, "https://echo/scheme"),
            Case::redirect(
                "/scheme-and-host",
                302,
                "https://example.org/scheme-and-host",
            ),
            Case::redirect("/scheme-and-status", 301, "https://echo/scheme-and-status"),
            Case::redirect(
                "/scheme-and-host-and-status",
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn mesh_http_route_redirect_port() {
    let routes = redirects(
        "mesh-redirect-port",
        &[
            ("/port", "{port: 8083}"),
            ("/port-and-host", "{hostname: example.org, port: 8083}"),
            ("/port-and-status", "{port: 8083, statusCode: 301}"),
            (
                "/port-and-host-and-status",
                "{port: 8083, hostname: example.org, statusCode: 302}",
            ),
            ("/port-default", "{port: 80, hostname: example.org}"),
            ("/port-and-scheme", "{port: 8443, scheme: https}"),
        ],
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshHTTPRouteRedirectPort",
        &suite,
        &[
            Case::redirect("/port", 302, "http://echo:8083/port"),
            Case::redirect(
                "/port-and-host",
                302,
                "http://example.org:8083/port-and-host",
            ),
            Case::redirect("/port-and-status", 301, "http://echo:8083/port-and-status"),
            Case::redirect(
                "/port-and-host-and-status",
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
            Case::redirect("/port-default", 302, "http://example.org/port-default"),
            Case::redirect("/port-and-scheme", 302, "https://echo:8443/port-and-scheme"),
        ],
    )
    .await;
}

#[tokio::test]
async fn mesh_http_route_redirect_path() {
    let prefix = "{type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}";
    let full = "{type: ReplaceFullPath, replaceFullPath: /replacement-full}";
    let routes = redirects(
        "mesh-redirect-path",
        &[
            ("/original-prefix", &format!("{{path: {prefix}}}")),
            (
                "/full",
                "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}",
            ),
            (
                "/path-and-host",
                &format!("{{hostname: example.org, path: {prefix}}}"),
            ),
            (
                "/path-and-status",
                &format!("{{path: {prefix}, statusCode: 301}}"),
            ),
            (
                "/full-path-and-host",
                &format!("{{hostname: example.org, path: {full}}}"),
            ),
            (
                "/full-path-and-status",
                &format!("{{path: {full}, statusCode: 301}}"),
            ),
        ],
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshHTTPRouteRedirectPath",
        &suite,
        &[
            Case::redirect(
                "/original-prefix/lemon",
                302,
                "http://echo/replacement-prefix/lemon",
            ),
            Case::redirect(
                "/full/path/original",
                302,
                "http://echo/full-path-replacement",
            ),
            Case::redirect(
                "/path-and-host",
                302,
                "http://example.org/replacement-prefix",
            ),
            Case::redirect("/path-and-status", 301, "http://echo/replacement-prefix"),
            Case::redirect(
                "/full-path-and-host",
                302,
                "http://example.org/replacement-full",
            ),
            Case::redirect("/full-path-and-status", 301, "http://echo/replacement-full"),
        ],
    )
    .await;
}

/// MeshHTTPRoute303Redirect, MeshHTTPRoute307Redirect and MeshHTTPRoute308Redirect.
#[tokio::test]
async fn mesh_http_route_303_307_308_redirect() {
    let routes = redirects(
        "mesh-30x-redirect",
        &[
            ("/redirect", "{statusCode: 303}"),
            ("/temporary", "{statusCode: 307}"),
            ("/permanent", "{statusCode: 308}"),
        ],
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshHTTPRoute30xRedirect",
        &suite,
        &[
            Case::redirect("/redirect", 303, "http://echo/redirect"),
            Case::redirect("/temporary", 307, "http://echo/temporary"),
            Case::redirect("/permanent", 308, "http://echo/permanent"),
        ],
    )
    .await;
}

#[tokio::test]
async fn mesh_http_route_named_rule() {
    let routes = http_route(
        "mesh-http-named-rules",
        "echo",
        Some(80),
        "  - name: named-rule\n    matches: [{path: {type: PathPrefix, value: /named}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /unnamed}}]\n    backendRefs: [{name: echo-v2, port: 8080}]\n",
    );
    let suite = Suite::start(&routes).await;
    run(
        "MeshHTTPRouteNamedRule",
        &suite,
        &[
            Case::ok("/named", "echo-v1"),
            Case::ok("/unnamed", "echo-v2"),
        ],
    )
    .await;
    // The rule's name is in the config the proxy runs.
    let (status, dump) = suite.v1.proxy.admin_get("/config_dump").await.unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let mut names = Vec::new();
    let mut stack = vec![&dump];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(o) => {
                if o.get("name").and_then(|n| n.as_str())
                    == Some(&format!("{NS}/mesh-http-named-rules"))
                {
                    for rule in o["rules"].as_array().into_iter().flatten() {
                        names.push(rule["name"].as_str().unwrap_or("-").to_owned());
                    }
                } else {
                    stack.extend(o.values());
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    assert!(
        !names.is_empty() && names.chunks(2).all(|pair| pair == ["named-rule", "-"]),
        "{names:?}"
    );
    // And in the metrics: the named rule's series carry its `rule` label.
    let route = format!("{NS}/mesh-http-named-rules");
    let named = format!(
        r#"weft_requests_total{{direction="outbound",route="{route}",rule="named-rule",backend="{NS}/echo-v1:8080",status_code="200"}}"#
    );
    let unnamed = format!(
        r#"weft_requests_total{{direction="outbound",route="{route}",backend="{NS}/echo-v2:8080",status_code="200"}}"#
    );
    assert_eq!(suite.v1.proxy.metric(&named).await, 1.0, "{named}");
    assert_eq!(suite.v1.proxy.metric(&unnamed).await, 1.0, "{unnamed}");
}

/// A route on a Service (and port) changes only the requests for it.
fn response_header_route(
    name: &str,
    parent: &str,
    port: Option<u16>,
    value: &str,
    backend: &str,
) -> String {
    http_route(
        name,
        parent,
        port,
        &format!(
            "  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: {value}}}]}}}}]\n    backendRefs: [{{name: {backend}, port: 80}}]\n"
        ),
    )
}

#[tokio::test]
async fn mesh_ports() {
    let routes = [
        response_header_route("mesh-split-v1", "echo-v1", Some(80), "v1", "echo-v1"),
        response_header_route("mesh-split-v2", "echo-v2", None, "v2", "echo-v2"),
    ]
    .join("---\n");
    let suite = Suite::start(&routes).await;
    for (url, header, pod) in [
        ("http://echo-v1", Some("v1"), "echo-v1"),
        ("http://echo-v1:8080", None, "echo-v1"),
        ("http://echo-v2", Some("v2"), "echo-v2"),
        ("http://echo-v2:8080", Some("v2"), "echo-v2"),
    ] {
        let answer = suite.get(url, &[]).await;
        assert_eq!(
            (answer.status, answer.pod()),
            (200, pod),
            "MeshPorts {url}: {answer:?}"
        );
        assert_eq!(answer.header("x-header-set"), header, "MeshPorts {url}");
    }
}

#[tokio::test]
async fn mesh_consumer_route() {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: mesh-echo-add-header, namespace: {}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo-v1, namespace: {NS}}}]\n  rules:\n  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}}}]\n    backendRefs: [{{name: echo-v1, namespace: {NS}, port: 80}}]\n",
        super::CONSUMER_NS
    );
    let suite = Suite::start(&route).await;
    let url = format!("http://echo-v1.{NS}/");
    for (client, header) in [(&suite.consumer, Some("set")), (&suite.v1, None)] {
        let answer = from(client, "GET", &url, &[]).await;
        let echoed = answer.echoed.as_ref().expect("a pod answers");
        assert_eq!(
            (
                answer.status,
                echoed.namespace.as_str(),
                echoed.pod.as_str()
            ),
            (200, NS, "echo-v1"),
            "MeshConsumerRoute from {}/{}",
            client.namespace,
            client.name
        );
        assert_eq!(
            answer.header("x-header-set"),
            header,
            "MeshConsumerRoute from {}/{}: the consumer's route holds for its own namespace alone",
            client.namespace,
            client.name
        );
    }
}

/// The route of MeshFrontend and MeshFrontendHostname: on `echo-v2`, every answer gets
/// `X-Header-Set: set`.
fn frontend_route() -> String {
    response_header_route("mesh-split-v1", "echo-v2", None, "set", "echo-v2")
}

#[tokio::test]
async fn mesh_frontend() {
    let suite = Suite::start(&frontend_route()).await;
    let to_service = suite.get("http://echo-v2", &[]).await;
    assert_eq!(
        (to_service.status, to_service.pod()),
        (200, "echo-v2"),
        "{to_service:?}"
    );
    assert_eq!(
        to_service.header("x-header-set"),
        Some("set"),
        "to the Service"
    );
    // The pod's own address is no Service: the route does not hold, and the request goes to
    // that pod through its sidecar.
    let url = format!("http://{}:8080", suite.v2.ip);
    let to_pod = suite.get(&url, &[]).await;
    assert_eq!(
        (to_pod.status, to_pod.pod()),
        (200, "echo-v2"),
        "{to_pod:?}"
    );
    assert_eq!(to_pod.header("x-header-set"), None, "to the pod IP");
    let inbound = suite
        .v2
        .proxy
        .metric(r#"weft_connections_total{direction="inbound",protocol="http2"}"#)
        .await;
    assert!(inbound >= 1.0, "the pod's sidecar carried it: {inbound}");
    // An address outside the mesh is reached straight; the proxy's own outbound listener is
    // refused, or the request would come back to it without end.
    let outside = suite
        .get(&format!("http://{}:8080/", suite.consumer.ip), &[])
        .await;
    assert_eq!(
        (outside.status, outside.pod()),
        (200, "echo-v1"),
        "{outside:?}"
    );
    let own = suite
        .get(&format!("http://{}/", suite.v1.proxy.outbound), &[])
        .await;
    assert_eq!(
        (own.status, own.header("x-weft-error")),
        (503, Some("no-route")),
        "{own:?}"
    );
}

/// The outbound traffic policy REGISTRY_ONLY, mesh-wide, in HTTP proxy mode as under
/// iptables (`intercept::registry_only_refuses_addresses_outside_the_registry`): Services and
/// meshed pods are reached as ever, and an address outside the registry is refused with 503
/// `no-route`. The consumer namespace's annotation sets ALLOW_ANY for its own pods.
#[tokio::test]
async fn registry_only_refuses_addresses_outside_the_registry() {
    let allow_any = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CONSUMER_NS}\n  annotations: {{weft.dev/outbound-traffic-policy: ALLOW_ANY}}\n"
    );
    let suite =
        Suite::start_with(&allow_any, &["--outbound-traffic-policy", "REGISTRY_ONLY"]).await;
    let to_service = suite.get("http://echo-v2", &[]).await;
    assert_eq!((to_service.status, to_service.pod()), (200, "echo-v2"));
    // A meshed pod that is a Service's endpoint is in the registry, on any port.
    let to_pod = suite
        .get(&format!("http://{}:8080", suite.v2.ip), &[])
        .await;
    assert_eq!(
        (to_pod.status, to_pod.pod()),
        (200, "echo-v2"),
        "{to_pod:?}"
    );
    // The consumer namespace's pod is no Service's endpoint.
    let outside_url = format!("http://{}:8080/", suite.consumer.ip);
    let outside = suite.get(&outside_url, &[]).await;
    assert_eq!(
        (outside.status, outside.header("x-weft-error")),
        (503, Some("no-route")),
        "{outside:?}"
    );
    assert!(outside.echoed.is_none(), "the proxy answers: {outside:?}");
    let refused = suite
        .v1
        .proxy
        .metric(r#"weft_proxy_errors_total{direction="outbound",reason="no-route"}"#)
        .await;
    assert_eq!(refused, 1.0);
    // Where the annotation says ALLOW_ANY, the same address is reached straight.
    let allowed = from(&suite.consumer, "GET", &outside_url, &[]).await;
    assert_eq!(
        (
            allowed.status,
            allowed.echoed.as_ref().map(|e| e.namespace.as_str())
        ),
        (200, Some(CONSUMER_NS)),
        "{allowed:?}"
    );
}

/// Where the request goes decides its route, not the Host header: in HTTP proxy mode the
/// request's absolute URI is where it goes (and, as RFC 9112 says, its authority replaces
/// the Host). Under iptables, by the cluster IP: `intercept::the_cluster_ip_not_the_host_picks_the_route`.
#[tokio::test]
async fn mesh_frontend_hostname() {
    let suite = Suite::start(&frontend_route()).await;
    let wrong_host = suite.get("http://echo-v2/", &[("host", "echo-v1")]).await;
    assert_eq!(
        (wrong_host.status, wrong_host.pod()),
        (200, "echo-v2"),
        "{wrong_host:?}"
    );
    assert_eq!(wrong_host.header("x-header-set"), Some("set"));
    assert_eq!(wrong_host.echoed.as_ref().unwrap().host, "echo-v2");
    let other = suite.get("http://echo-v1/", &[("host", "echo-v2")]).await;
    assert_eq!((other.status, other.pod()), (200, "echo-v1"), "{other:?}");
    assert_eq!(other.header("x-header-set"), None);
}

/// A consumer route (in the client's namespace) redirects and filters per backend as a
/// producer route does, for its own namespace alone.
#[tokio::test]
async fn a_consumer_route_redirects_and_filters_per_backend() {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: consumer, namespace: {}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, namespace: {NS}, port: 80}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}}}]\n  - backendRefs:\n    - {{name: echo-v2, namespace: {NS}, port: 8080, filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-consumer, value: set-by-consumer}}]}}}}, {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-from, value: consumer-route}}]}}}}]}}\n",
        super::CONSUMER_NS
    );
    let suite = Suite::start(&route).await;
    let url = |path: &str| format!("http://echo.{NS}{path}");
    let redirect = from(&suite.consumer, "GET", &url("/old/x?q=1"), &[]).await;
    assert_eq!(redirect.status, 301, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("http://echo.{NS}/new/x?q=1").as_str())
    );
    let filtered = from(&suite.consumer, "GET", &url("/"), &[]).await;
    let echoed = filtered.echoed.as_ref().expect("a pod answers");
    assert_eq!(
        (echoed.namespace.as_str(), echoed.pod.as_str()),
        (NS, "echo-v2")
    );
    assert_eq!(echoed.header("x-consumer"), Some("set-by-consumer"));
    assert_eq!(filtered.header("x-from"), Some("consumer-route"));
    // The producer's namespace has no route on echo: both versions answer, unfiltered.
    for _ in 0..10 {
        let plain = from(&suite.v1, "GET", &url("/old/x"), &[]).await;
        assert_eq!(plain.status, 200, "{plain:?}");
        let echoed = plain.echoed.as_ref().expect("a pod answers");
        assert_eq!(echoed.header("x-consumer"), None);
        assert_eq!(plain.header("x-from"), None);
    }
}

/// RequestMirror's `percent` and `fraction` (Standard since v1.3): a quarter of the requests
/// copied to each mirror.
#[tokio::test]
async fn a_mirror_copies_its_percentage_or_fraction() {
    let routes = http_route(
        "mirror-share",
        "echo",
        Some(80),
        "  - filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}, percent: 25}}\n    backendRefs: [{name: echo-v1, port: 8080}]\n",
    );
    let suite = Suite::start(&routes).await;
    let n = 800;
    for _ in 0..n {
        Case::ok("/", "echo-v1").check("mirror", &suite.get("http://echo/", &[]).await);
    }
    // 200 ± 75 is six standard deviations.
    let mirrored = super::copies_at(&suite.v2, 125).await;
    eprintln!("{mirrored} of {n} requests mirrored at 25%");
    assert!(mirrored <= 275, "{mirrored} of {n} mirrored");
}

/// The CORS filter (Standard since v1.5), as the Gateway API's HTTPRouteCORS test writes it,
/// through the client's sidecar: a preflight from an allowed origin is answered there (the
/// application never sees it), one from another origin gets no CORS headers, and the
/// answers to actual requests are marked.
#[tokio::test]
async fn http_route_cors() {
    let cors_rule = |prefix: &str, cors: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: CORS, cors: {cors}}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n"
        )
    };
    let rules = [
        cors_rule(
            "/cors-1",
            "{allowOrigins: ['https://www.foo.com', 'https://*.bar.com'], allowMethods: [GET, OPTIONS], allowHeaders: [x-header-1, x-header-2], exposeHeaders: [x-header-3, x-header-4], allowCredentials: true, maxAge: 3600}",
        ),
        cors_rule("/cors-2", "{allowOrigins: ['https://www.foo.com'], allowMethods: ['*']}"),
        cors_rule("/cors-wildcard-origin", "{allowOrigins: ['*'], allowMethods: [PUT]}"),
        cors_rule(
            "/cors-wildcard-methods-headers",
            "{allowOrigins: ['https://*.foo.com'], allowMethods: ['*'], allowHeaders: ['*'], allowCredentials: true}",
        ),
    ]
    .concat();
    let suite = Suite::start(&http_route("cors", "echo", Some(80), &rules)).await;
    let preflight = |path: &'static str,
                     origin: &'static str,
                     method: &'static str,
                     headers: Option<&'static str>| {
        let mut h = vec![
            ("Origin", origin),
            ("access-control-request-method", method),
        ];
        if let Some(v) = headers {
            h.push(("access-control-request-headers", v));
        }
        let suite = &suite;
        async move {
            suite
                .request("OPTIONS", &format!("http://echo{path}"), &h)
                .await
        }
    };
    let before = suite
        .v1
        .app
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    for origin in [
        "https://www.foo.com",
        "https://www.bar.com",
        "https://xpto.www.bar.com",
    ] {
        let answer = preflight("/cors-1", origin, "GET", Some("x-header-1, x-header-2")).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.echoed.is_none(), "the sidecar answers a preflight");
        for (name, value) in [
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", "GET, OPTIONS"),
            ("access-control-allow-headers", "x-header-1, x-header-2"),
            ("access-control-expose-headers", "x-header-3, x-header-4"),
            ("access-control-max-age", "3600"),
            ("access-control-allow-credentials", "true"),
        ] {
            assert_eq!(answer.header(name), Some(value), "{origin}: {name}");
        }
    }
    let refused = preflight("/cors-1", "https://foobar.com", "GET", None).await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.header("access-control-allow-origin"), None);

    let post = preflight("/cors-2", "https://www.foo.com", "POST", None).await;
    assert_eq!(post.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(
        post.header("access-control-allow-origin"),
        Some("https://www.foo.com")
    );
    assert_eq!(post.header("access-control-allow-credentials"), None);
    assert_eq!(
        post.header("access-control-max-age"),
        Some("5"),
        "the default"
    );

    for origin in ["https://foobar.com", "https://foobar.com:12345"] {
        let any = preflight("/cors-wildcard-origin", origin, "PUT", None).await;
        assert_eq!(any.header("access-control-allow-origin"), Some("*"));
        assert_eq!(any.header("access-control-allow-methods"), Some("PUT"));
        assert_eq!(any.header("access-control-allow-credentials"), None);
    }
    let echoed = preflight(
        "/cors-wildcard-methods-headers",
        "https://other.foo.com",
        "PUT",
        Some("x-header-1, x-header-2"),
    )
    .await;
    assert_eq!(
        echoed.header("access-control-allow-origin"),
        Some("https://other.foo.com")
    );
    assert_eq!(echoed.header("access-control-allow-methods"), Some("PUT"));
    assert_eq!(
        echoed.header("access-control-allow-headers"),
        Some("x-header-1, x-header-2")
    );
    assert_eq!(
        echoed.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        suite
            .v1
            .app
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        before,
        "no preflight reached the application"
    );

    // Actual requests reach the application, and their answers are marked.
    for (path, origin, allow) in [
        (
            "/cors-1",
            "https://www.foo.com",
            Some("https://www.foo.com"),
        ),
        (
            "/cors-1",
            "https://www.bar.com",
            Some("https://www.bar.com"),
        ),
        ("/cors-1", "https://foobar.com", None),
        (
            "/cors-wildcard-origin",
            "https://foobar.com:12345",
            Some("*"),
        ),
        (
            "/cors-wildcard-methods-headers",
            "https://other.foo.com",
            Some("https://other.foo.com"),
        ),
    ] {
        let answer = suite
            .get(&format!("http://echo{path}"), &[("Origin", origin)])
            .await;
        assert_eq!(
            (answer.status, answer.pod()),
            (200, "echo-v1"),
            "{answer:?}"
        );
        assert_eq!(
            answer.header("access-control-allow-origin"),
            allow,
            "{path} from {origin}"
        );
    }
    let credentialed = suite
        .get(
            "http://echo/cors-wildcard-methods-headers",
            &[
                ("Origin", "https://other.foo.com"),
                ("Authorization", "Bearer test"),
            ],
        )
        .await;
    assert_eq!(
        credentialed.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        credentialed
            .echoed
            .as_ref()
            .unwrap()
            .header("authorization"),
        Some("Bearer test")
    );
}
