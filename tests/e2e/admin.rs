//! The admin API and the proxy's start-up checks.

use std::time::Duration;

use weft_tests::client;
use weft_tests::mesh::{Ep, Mesh};
use weft_tests::paths::bin_path;
use weft_tests::pods::{at, pod_ip};
use weft_tests::proxy::Proxy;
use weft_tests::workloads::HttpBackend;

#[tokio::test]
async fn probes_metrics_config_and_log_level() {
    let app = HttpBackend::start(at(pod_ip(), 8080), "app").await;
    let config = Mesh::new("v-admin-7")
        .service(
            "shop",
            "app",
            Some("10.96.3.4".parse().unwrap()),
            80,
            &[Ep::direct(app.addr)],
        )
        .build();
    let proxy = Proxy::start(pod_ip(), &config, &["--namespace", "shop"]).await;

    assert_eq!(
        proxy.admin_get("/live").await.unwrap(),
        (200, "live\n".into())
    );
    assert_eq!(
        proxy.admin_get("/ready").await.unwrap(),
        (200, "ready\n".into())
    );
    for _ in 0..3 {
        assert_eq!(
            client::get(proxy.outbound, "http://app/")
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        client::get(proxy.outbound, "http://10.96.3.4/")
            .await
            .unwrap()
            .status(),
        200,
        "cluster IP as authority"
    );
    let sample = r#"weft_requests_total{direction="outbound",route="default",backend="shop/app:80",status_code="200"}"#;
    assert_eq!(proxy.metric(sample).await, 4.0);
    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("weft_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weft_config_info{version="v-admin-7"} 1"#),
        "{metrics}"
    );

    let (status, dump) = proxy.admin_get("/config_dump").await.unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], "v-admin-7");
    assert_eq!(dump["listeners"]["outbound"], proxy.outbound.to_string());
    assert_eq!(dump["config"]["services"][0]["name"], "app");

    let (status, clusters) = proxy.admin_get("/clusters").await.unwrap();
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    assert_eq!(
        clusters["backends"][0]["endpoints"][0]["address"],
        app.addr.to_string()
    );

    assert_eq!(
        proxy.admin_get("/log-level").await.unwrap(),
        (200, "info,weft_proxy=debug\n".into())
    );
    let url = format!("http://{}/log-level", proxy.admin);
    assert_eq!(
        client::request_text(proxy.admin, "PUT", &url, "warn")
            .await
            .unwrap(),
        (200, "warn\n".into())
    );
    assert_eq!(
        proxy.admin_get("/log-level").await.unwrap(),
        (200, "warn\n".into())
    );
    let (status, body) = client::request_text(proxy.admin, "PUT", &url, "[[[")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        proxy.admin_get("/log-level").await.unwrap().1,
        "warn\n",
        "a bad filter changes nothing"
    );

    let (status, page) = proxy.admin_get("/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("shop/app") && page.contains("/config_dump"),
        "{page}"
    );
    assert_eq!(proxy.admin_get("/nope").await.unwrap().0, 404);
}

#[tokio::test]
async fn an_invalid_config_fails_the_start_and_names_the_field() {
    let dir = weft_tests::paths::scratch_dir("bad-config");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "version: bad\nservices:\n  - name: app\n    namespace: shop\n    ports: [{port: 80, backend: missing}]\n",
    )
    .unwrap();
    let ip = pod_ip().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(bin_path("weft-proxy"))
            .args(["run", "--pod-ip", &ip, "--config"])
            .arg(&path)
            .output(),
    )
    .await
    .expect("the proxy exits")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("services[0].ports[0].backend: no backend named \"missing\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_taken_port_fails_the_start_loudly() {
    let ip = pod_ip();
    let _squatter = std::net::TcpListener::bind(at(ip, 15143)).unwrap();
    let mut proxy = Proxy::spawn(ip, &Mesh::new("x").build(), &[]);
    let exit = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits");
    assert!(!exit.success());
    assert!(
        proxy.log().contains("binding the inbound listener"),
        "{}",
        proxy.log()
    );
}
