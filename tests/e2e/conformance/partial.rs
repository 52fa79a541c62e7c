//! Partial failure as the Gateway API defines it: a route whose references name nothing is
//! still accepted. A backend that is not there takes its share of the rule's requests and
//! answers them 500 (gRPC: UNAVAILABLE); the rest are served. ResolvedRefs says why, in
//! `/status` and `weft status` in local mode as in a cluster's route status.

use std::time::Duration;

use weft_tests::control::ControlPlane;
use weft_tests::echo;
use weft_tests::pods::pod_ip;

use super::{NS, Suite, http_route};

const RULE: &str = "  - backendRefs: [{name: echo-v1, port: 8080}, {name: ghost, port: 8080}, {group: example.com, kind: Bucket, name: b, weight: 0}]\n";

#[tokio::test]
async fn an_invalid_backend_fails_its_share_and_the_rest_is_served() {
    let grpc = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: grpc-partial, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 7070}}]\n  rules:\n  - backendRefs: [{{name: echo-v2, port: 7070}}, {{name: ghost, port: 7070}}]\n"
    );
    let routes = [http_route("partial", "echo", Some(80), RULE), grpc].join("---\n");
    let suite = Suite::start(&routes).await;

    let n = 400;
    let (mut served, mut failed) = (0, 0);
    for _ in 0..n {
        let answer = suite.get("http://echo/", &[]).await;
        match answer.status {
            200 => {
                assert_eq!(answer.pod(), "echo-v1");
                served += 1;
            }
            500 => {
                assert_eq!(
                    answer.header("x-weft-error"),
                    Some("no-backend"),
                    "{answer:?}"
                );
                failed += 1;
            }
            other => panic!("{other}: {answer:?}"),
        }
    }
    eprintln!("HTTP, one of two backends missing: {served} served, {failed} answered 500");
    // Half each: 200 ± 60 is six standard deviations.
    assert!((140..=260).contains(&failed), "{failed} of {n} failed");

    let (mut served, mut unavailable) = (0, 0);
    for _ in 0..n {
        let answer = echo::grpc(suite.v1.proxy.outbound, "echo:7070", &[])
            .await
            .unwrap();
        match answer.grpc_status.as_deref() {
            Some("0") => {
                assert_eq!(answer.pod(), "echo-v2");
                served += 1;
            }
            Some("14") => unavailable += 1,
            other => panic!("{other:?}: {answer:?}"),
        }
    }
    eprintln!("gRPC, one of two backends missing: {served} served, {unavailable} UNAVAILABLE");
    assert!(
        (140..=260).contains(&unavailable),
        "{unavailable} of {n} UNAVAILABLE"
    );
}

#[tokio::test]
async fn local_mode_shows_an_unresolved_backend_and_a_missing_parent_in_status() {
    let cp = ControlPlane::start(pod_ip()).await;
    let services = super::services();
    cp.write("services.yaml", &services);
    let route = http_route("partial", "echo", Some(80), RULE).replace(
        "name: echo, port: 80}]",
        "name: echo, port: 80}, {group: \"\", kind: Service, name: gone}]",
    );
    cp.write("route.yaml", &route);
    let status = weft_tests::eventually(
        "the route's conditions in /status",
        Duration::from_secs(20),
        || async {
            let status = cp.status().await;
            (status["routes"].as_array().is_some_and(|r| !r.is_empty())).then_some(status)
        },
    )
    .await;
    assert_eq!(
        status["manifests"]["errors"],
        serde_json::json!([]),
        "{status:#}"
    );
    let unresolved: Vec<String> = status["manifests"]["unresolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unresolved.len(), 3, "{unresolved:?}");
    for (path, message) in [
        (
            "spec.parentRefs[1].name",
            "no Service gateway-conformance-mesh/gone",
        ),
        (
            "spec.rules[0].backendRefs[1].name",
            "no Service gateway-conformance-mesh/ghost",
        ),
        (
            "spec.rules[0].backendRefs[2].kind",
            "weft sends to Services only",
        ),
    ] {
        assert!(
            unresolved
                .iter()
                .any(|u| u.contains(&format!("{path}: {message}"))),
            "{path}: {unresolved:?}"
        );
    }
    let parents = &status["routes"][0]["parents"];
    let conditions = |i: usize| -> Vec<(String, String, String)> {
        parents[i]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let f = |k: &str| c[k].as_str().unwrap_or("").to_owned();
                (f("type"), f("status"), f("reason"))
            })
            .collect()
    };
    let c = |t: &str, s: &str, r: &str| (t.to_owned(), s.to_owned(), r.to_owned());
    assert_eq!(
        conditions(0),
        [
            c("Accepted", "True", "Accepted"),
            c("ResolvedRefs", "False", "BackendNotFound")
        ],
        "{parents:#}"
    );
    assert_eq!(
        conditions(1),
        [
            c("Accepted", "False", "NoMatchingParent"),
            c("ResolvedRefs", "False", "BackendNotFound")
        ],
        "{parents:#}"
    );

    let out = std::process::Command::new(weft_tests::paths::bin_path("weft"))
        .args(["status", "--control-plane", &cp.admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "unresolved references make weft status fail:\n{text}"
    );
    assert!(
        text.contains("HTTPRoute gateway-conformance-mesh/partial")
            && text.contains("Accepted=True ResolvedRefs=False (BackendNotFound: spec.rules[0].backendRefs[1].name: no Service gateway-conformance-mesh/ghost"),
        "{text}"
    );
    assert!(text.contains("Accepted=False (NoMatchingParent"), "{text}");

    // weft check accepts the route and warns of each reference.
    let dir = weft_tests::paths::scratch_dir("check");
    std::fs::write(dir.join("all.yaml"), format!("{services}---\n{route}")).unwrap();
    let out = std::process::Command::new(weft_tests::paths::bin_path("weft"))
        .args(["check", "-f"])
        .arg(dir.join("all.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("warning: ").count(), 3, "{text}");
    assert!(text.contains("4 manifests valid"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
