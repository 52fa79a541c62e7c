//! Hostile manifests, given to `weft check` and written into a running control plane's
//! directory: an alias bomb, 10,000-deep nesting, a 50 MB file, a document with 100,000
//! routes, and annotations over Kubernetes' 256 KiB. Each is refused with a clear error, in
//! bounded memory; the last good config keeps serving and the next good edit propagates.

use std::time::Duration;

use weft_tests::control::ControlPlane;
use weft_tests::eventually;
use weft_tests::manifests::Manifests;
use weft_tests::paths::{bin_path, scratch_dir};
use weft_tests::pods::pod_ip;
use weft_tests::proxy::{Proxy, memory_kib};

use crate::{app, get, tally};

/// Each hostile file: its name, its text, and what its error says.
fn hostile() -> Vec<(&'static str, String, &'static str)> {
    let mut laughs = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: lol, namespace: shop}\nspec:\n  a0: &a0 \"lol\"\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        laughs.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let deep = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: deep, namespace: shop}}\nspec: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut huge = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: huge, namespace: shop}\nspec: {ports: [{port: 80}]}\n# ",
    );
    huge.push_str(&"x".repeat(50_000_000));
    huge.push('\n');
    let mut routes = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: many, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, name: reviews, port: 9080}]\n  rules:\n",
    );
    for i in 0..100_000 {
        routes.push_str(&format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]\n    backendRefs: [{{name: reviews-v2, port: 9080}}]\n"
        ));
    }
    let annotated = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: annotated\n  namespace: shop\n  annotations: {{a: \"{}\"}}\nspec: {{ports: [{{port: 80}}]}}\n",
        "x".repeat(300 << 10)
    );
    vec![
        ("laughs.yaml", laughs, "refused: the document would grow"),
        ("deep.yaml", deep, "refused: nested deeper"),
        (
            "huge.yaml",
            huge,
            "weft reads manifest files of at most 16 MiB",
        ),
        ("routes.yaml", routes, "an object is at most 1536 KiB"),
        (
            "annotated.yaml",
            annotated,
            "annotations may hold at most 256 KiB",
        ),
    ]
}

#[tokio::test]
async fn weft_check_refuses_hostile_manifests_in_bounded_memory() {
    let dir = scratch_dir("hostile");
    for (name, text, message) in hostile() {
        let file = dir.join(name);
        std::fs::write(&file, &text).unwrap();
        // At most 1 GiB of address space, and a minute: a parser that expanded what it reads
        // would die or hang here.
        let out = tokio::process::Command::new("timeout")
            .arg("60")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v 1048576 && exec {} check -f {}",
                bin_path("weft").display(),
                file.display()
            ))
            .output()
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {report}");
        assert!(
            report.contains(&format!("{}:", file.display())) && report.contains(message),
            "{name}: {report}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_control_plane_refuses_hostile_manifests_and_keeps_serving() {
    let cp = ControlPlane::start(pod_ip()).await;
    let (v1, v2) = (app("reviews-v1").await, app("reviews-v2").await);
    let v1_labels = [("app", "reviews"), ("version", "v1")];
    let v2_labels = [("app", "reviews"), ("version", "v2")];
    let good = Manifests::new()
        .example("workloads")
        .pod("shop", "v1", &v1_labels, v1.addr, false)
        .pod("shop", "v2", &v2_labels, v2.addr, false);
    let split = |w1: u32, w2: u32| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews-split, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: reviews, port: 9080}}]\n  rules:\n    - backendRefs:\n        - {{name: reviews-v1, port: 9080, weight: {w1}}}\n        - {{name: reviews-v2, port: 9080, weight: {w2}}}\n"
        )
    };
    cp.write("workloads.yaml", &good.yaml());
    cp.write("split.yaml", &split(100, 0));
    let proxy = Proxy::joined(pod_ip(), &cp, "shop", "productpage", &[]).await;
    let serving = |who: &'static str| {
        let proxy = &proxy;
        async move {
            let t = tally(proxy.outbound, 5, |_| get("http://reviews:9080/", &[])).await;
            t.keys()
                .all(|(status, by)| *status == 200 && by == who)
                .then_some(())
        }
    };
    eventually("v1 serving", Duration::from_secs(10), || {
        serving("reviews-v1")
    })
    .await;
    let pid = cp.pid().unwrap();
    let (_, peak_before) = memory_kib(pid);

    for (name, text, message) in hostile() {
        cp.write(name, &text);
        let file = cp.manifests.join(name).display().to_string();
        eventually(
            &format!("{name} refused"),
            Duration::from_secs(30),
            || async {
                let status = cp.status().await;
                let errors = status["manifests"]["errors"].as_array()?.clone();
                errors
                    .iter()
                    .filter_map(|e| e.as_str())
                    .any(|e| e.starts_with(&file) && e.contains(message))
                    .then_some(())
            },
        )
        .await;
        // The last good config serves on.
        assert_eq!(serving("reviews-v1").await, Some(()), "{name}");
        cp.remove(name);
    }
    let (_, peak_after) = memory_kib(pid);
    eprintln!("PEAK control plane: {peak_before} KiB before, {peak_after} KiB after");
    assert!(
        peak_after < peak_before + 200 * 1024,
        "the control plane's peak RSS went from {peak_before} to {peak_after} KiB"
    );
    // The next good edit propagates.
    cp.write("split.yaml", &split(0, 100));
    eventually("v2 serving", Duration::from_secs(10), || {
        serving("reviews-v2")
    })
    .await;
}
