//! The MESH-GRPC profile's tests.

use weft_tests::echo;

use super::{NS, Suite};

fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 7070}}]\n  rules:\n{rules}"
    )
}

#[tokio::test]
async fn mesh_grpc_route_request_header_modifier() {
    let rule = |case: &str, modifier: &str, backend: &str| {
        format!(
            "  - matches: [{{headers: [{{name: x-test-case, value: {case}}}]}}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]\n    backendRefs: [{{name: {backend}, port: 7070}}]\n"
        )
    };
    let rules = [
        rule("set", "{set: [{name: x-header-set, value: set-overwrites-values}]}", "echo-v1"),
        rule("add", "{add: [{name: x-header-add, value: add-appends-values}]}", "echo-v1"),
        rule("remove", "{remove: [x-header-remove]}", "echo-v1"),
        rule(
            "multi",
            "{set: [{name: x-header-set-1, value: header-set-1}, {name: x-header-set-2, value: header-set-2}], add: [{name: x-header-add-1, value: header-add-1}, {name: x-header-add-2, value: header-add-2}], remove: [x-header-remove-1, x-header-remove-2]}",
            "echo-v2",
        ),
    ]
    .concat();
    let suite = Suite::start(&grpc_route("grpc-request-header-modifier", &rules)).await;
    type Row<'a> = (
        &'a super::Pod,
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
        &'a str,
    );
    let rows: [Row<'_>; 4] = [
        (
            &suite.v1,
            &[
                ("x-test-case", "set"),
                ("some-other-header", "this-header-should-be-set"),
                ("x-header-set", "this-value-should-be-overwritten"),
            ],
            &[
                ("x-test-case", "set"),
                ("some-other-header", "this-header-should-be-set"),
                ("x-header-set", "set-overwrites-values"),
            ],
            &[],
            "echo-v1",
        ),
        (
            &suite.v1,
            &[
                ("x-test-case", "add"),
                ("x-header-add", "this-value-should-be-appended"),
            ],
            &[
                ("x-test-case", "add"),
                (
                    "x-header-add",
                    "this-value-should-be-appended,add-appends-values",
                ),
            ],
            &[],
            "echo-v1",
        ),
        (
            &suite.v1,
            &[
                ("x-test-case", "remove"),
                ("x-header-remove", "this-should-be-removed"),
            ],
            &[("x-test-case", "remove")],
            &["x-header-remove"],
            "echo-v1",
        ),
        (
            &suite.v2,
            &[
                ("x-test-case", "multi"),
                ("x-header-set-2", "set-header-2"),
                ("x-header-add-2", "add-header-2"),
                ("x-header-remove-2", "should-be-removed-2"),
            ],
            &[
                ("x-test-case", "multi"),
                ("x-header-set-1", "header-set-1"),
                ("x-header-set-2", "header-set-2"),
                ("x-header-add-1", "header-add-1"),
                ("x-header-add-2", "add-header-2,header-add-2"),
            ],
            &["x-header-remove-1", "x-header-remove-2"],
            "echo-v2",
        ),
    ];
    for (client, sent, sees, absent, pod) in rows {
        let answer = echo::grpc(client.proxy.outbound, "echo:7070", sent)
            .await
            .unwrap();
        let at = format!("MeshGRPCRouteRequestHeaderModifier {sent:?}");
        assert_eq!(
            (answer.status, answer.grpc_status.as_deref()),
            (200, Some("0")),
            "{at}: {answer:?}"
        );
        let echoed = answer.echoed.as_ref().expect("a pod answers");
        assert_eq!(
            (echoed.namespace.as_str(), echoed.pod.as_str()),
            (NS, pod),
            "{at}"
        );
        assert_eq!(echoed.path, "/conformance.Echo/Echo", "{at}");
        for (name, value) in sees {
            assert_eq!(echoed.header(name), Some(*value), "{at}: {name}");
        }
        for name in absent {
            assert_eq!(echoed.header(name), None, "{at}: {name}");
        }
    }
}

/// The route names a third backend, `echo-v3`, with weight 0 and no such Service: it is an
/// invalid reference that receives nothing, and the rule splits 70/30 all the same.
#[tokio::test]
async fn mesh_grpc_route_weight() {
    let rules = "  - backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070, weight: 30}, {name: echo-v3, port: 7070, weight: 0}]\n";
    let suite = Suite::start(&grpc_route("mesh-grpc-weighted-backends", rules)).await;
    let n = 2_000;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let answer = echo::grpc(suite.v1.proxy.outbound, "echo:7070", &[])
            .await
            .unwrap();
        assert_eq!(answer.grpc_status.as_deref(), Some("0"), "{answer:?}");
        *counts.entry(answer.pod().to_owned()).or_default() += 1;
    }
    eprintln!("MeshGRPCRouteWeight: {counts:?}");
    let share = |pod: &str| counts.get(pod).copied().unwrap_or(0) as f64 / n as f64;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!((share("echo-v1") - 0.7).abs() <= 0.05, "{counts:?}");
    assert!((share("echo-v2") - 0.3).abs() <= 0.05, "{counts:?}");
}

/// GRPCRoute filters beyond the suite's: a mirror of one call in two (`fraction`) to
/// echo-v2 while echo-v1 answers, and a response header modifier.
#[tokio::test]
async fn grpc_route_mirrors_a_fraction_and_modifies_responses() {
    let rules = "  - filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 7070}, fraction: {numerator: 1, denominator: 2}}}\n    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-route, value: grpc}]}}\n    backendRefs: [{name: echo-v1, port: 7070}]\n";
    let suite = Suite::start(&grpc_route("grpc-mirror", rules)).await;
    let n = 400;
    for _ in 0..n {
        let answer = echo::grpc(suite.v1.proxy.outbound, "echo:7070", &[])
            .await
            .unwrap();
        assert_eq!(
            (answer.grpc_status.as_deref(), answer.pod()),
            (Some("0"), "echo-v1"),
            "{answer:?}"
        );
        assert_eq!(answer.header("x-route"), Some("grpc"));
    }
    // Half are copied: 200 ± 60 is six standard deviations. The copies finish on their own.
    let mirrored = super::copies_at(&suite.v2, 140).await;
    eprintln!("{mirrored} of {n} calls mirrored at one in two");
    assert!(mirrored <= 260, "{mirrored} of {n} mirrored");
}

#[tokio::test]
async fn mesh_grpc_route_request_mirror() {
    let mirror = "{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 7070}}}";
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let rules = format!(
        "  - matches: [{{headers: [{{name: x-mirror-only, value: 'true'}}]}}]\n    filters: [{mirror}]\n    backendRefs: [{{name: echo-v1, port: 7070}}]\n  - matches: [{{headers: [{{name: x-mirror-and-modify, value: 'true'}}]}}]\n    filters: [{modify}, {mirror}]\n    backendRefs: [{{name: echo-v1, port: 7070}}]\n"
    );
    let suite = Suite::start(&grpc_route("mesh-grpc-request-mirror", &rules)).await;
    type Headers = &'static [(&'static str, &'static str)];
    // (metadata sent, what echo-v1 sees, what it must not)
    let cases: [(Headers, Headers, &[&str]); 2] = [
        (&[("x-mirror-only", "true")], &[], &[]),
        (
            &[
                ("x-mirror-and-modify", "true"),
                ("x-header-remove", "remove-val"),
                ("x-header-add-append", "append-val-1"),
            ],
            &[
                ("x-header-set", "set-overwrites-values"),
                ("x-header-add", "header-val-1"),
                ("x-header-add-append", "append-val-1,header-val-2"),
            ],
            &["x-header-remove"],
        ),
    ];
    for (sent, sees, absent) in cases {
        let before = suite
            .v2
            .app
            .requests
            .load(std::sync::atomic::Ordering::SeqCst);
        let answer = echo::grpc(suite.v1.proxy.outbound, "echo:7070", sent)
            .await
            .unwrap();
        let at = format!("MeshGRPCRouteRequestMirror {sent:?}");
        assert_eq!(answer.grpc_status.as_deref(), Some("0"), "{at}: {answer:?}");
        let echoed = answer.echoed.as_ref().expect("a pod answers");
        assert_eq!(
            (echoed.namespace.as_str(), echoed.pod.as_str()),
            (NS, "echo-v1"),
            "{at}"
        );
        for (name, value) in sees {
            assert_eq!(echoed.header(name), Some(*value), "{at}: {name}");
        }
        for name in absent {
            assert_eq!(echoed.header(name), None, "{at}: {name}");
        }
        // The copy reached echo-v2.
        super::copies_at(&suite.v2, before + 1).await;
    }
}
