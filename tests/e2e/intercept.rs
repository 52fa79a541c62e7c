//! Real interception: pods are network namespaces on a bridge, `weft-proxy init` installs the
//! iptables rules, and the proxies route by `SO_ORIGINAL_DST`, IPv4 and IPv6. Needs root.
//!
//! - pod `client` (10.77.0.1): a sidecar with iptables; the test's client commands run here.
//! - pod `meshed` (10.77.0.2): an HTTP app and a server-first "database" on 3306, behind a
//!   sidecar with iptables.
//! - pod `plain` (10.77.0.3): an HTTP app and a server-first service on 2525, no sidecar.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_tests::mesh::{Ep, Mesh};
use weft_tests::netns::{Lan, Netns, root_tests_enabled, run};
use weft_tests::paths::{bin_path, scratch_dir};
use weft_tests::proxy::metric_value;

const TESTBED: &str = env!("CARGO_BIN_EXE_weft-testbed");
const UID: u32 = 2102;

/// Runs `weft-testbed` in a pod and parses its JSON line.
fn testbed(pod: &Netns, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = pod
        .command(TESTBED)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn get(pod: &Netns, url: &str) -> serde_json::Value {
    testbed(pod, &["get", url]).unwrap_or_else(|e| panic!("GET {url} from {}: {e}", pod.name))
}

fn wait_ready(pod: &Netns, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if testbed(pod, &["get", "http://127.0.0.1:15191/ready"]).is_ok_and(|r| r["status"] == 200)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} never became ready");
}

fn metrics(pod: &Netns) -> String {
    get(pod, "http://127.0.0.1:15191/metrics")["body"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Starts a sidecar in `pod` after its init, with `--detect-timeout detect_timeout`.
fn start_sidecar(
    pod: &Netns,
    config: &Path,
    log: &Path,
    detect_timeout: &str,
) -> weft_tests::netns::NsChild {
    run(pod
        .command(bin_path("weft-proxy").to_str().unwrap())
        .args(["init", "--ipv6"]));
    let mut cmd = pod.command_as(UID, bin_path("weft-proxy").to_str().unwrap());
    cmd.arg("run").arg("--config").arg(config).args([
        "--outbound-addr",
        "[::]:15140",
        "--inbound-addr",
        "[::]:15143",
        "--admin-addr",
        "0.0.0.0:15191",
        "--detect-timeout",
        detect_timeout,
        "--log-level",
        "info,weft_proxy=debug",
    ]);
    pod.spawn(&mut cmd, log)
}

#[test]
fn iptables_redirection_routes_by_original_destination() {
    if !root_tests_enabled("iptables_redirection_routes_by_original_destination") {
        return;
    }
    let dir = scratch_dir("intercept");
    let mut lan = Lan::new();
    let client = lan.add_pod("client", "10.77.0.1/24", "fd77::1/64");
    let meshed = lan.add_pod("meshed", "10.77.0.2/24", "fd77::2/64");
    let plain = lan.add_pod("plain", "10.77.0.3/24", "fd77::3/64");
    let (client, meshed, plain) = (&lan.pods[client], &lan.pods[meshed], &lan.pods[plain]);

    let _meshed_http = meshed.spawn(
        meshed
            .command(TESTBED)
            .args(["http", "--listen", "10.77.0.2:8080", "--name", "meshed"]),
        &dir.join("meshed-http.log"),
    );
    let _meshed_db = meshed.spawn(
        meshed
            .command(TESTBED)
            .args(["greet", "--listen", "10.77.0.2:3306"]),
        &dir.join("meshed-db.log"),
    );
    let _plain_http = plain.spawn(
        plain
            .command(TESTBED)
            .args(["http", "--listen", "10.77.0.3:8080", "--name", "plain"]),
        &dir.join("plain-http.log"),
    );
    let _plain_smtp = plain.spawn(
        plain
            .command(TESTBED)
            .args(["greet", "--listen", "10.77.0.3:2525"]),
        &dir.join("plain-smtp.log"),
    );

    let empty = dir.join("empty.json");
    std::fs::write(
        &empty,
        serde_json::to_vec(&Mesh::new("meshed-v1").build()).unwrap(),
    )
    .unwrap();
    // Detection would hold a silent connection for a minute: a server-first protocol
    // answering within the client's 10 s proves detection was skipped.
    let _meshed_proxy = start_sidecar(meshed, &empty, &dir.join("meshed-proxy.log"), "60s");

    let config = Mesh::new("client-v1")
        .service(
            "shop",
            "meshed",
            Some("10.96.0.10".parse().unwrap()),
            80,
            &[Ep::meshed("10.77.0.2:8080".parse().unwrap())],
        )
        .service(
            "shop",
            "meshed6",
            Some("fd00:96::10".parse().unwrap()),
            80,
            &[Ep::meshed("10.77.0.2:8080".parse().unwrap())],
        )
        .service(
            "shop",
            "plain",
            Some("10.96.0.11".parse().unwrap()),
            80,
            &[Ep::direct("10.77.0.3:8080".parse().unwrap())],
        )
        .service(
            "shop",
            "db",
            Some("10.96.0.12".parse().unwrap()),
            3306,
            &[Ep::direct("10.77.0.2:3306".parse().unwrap())],
        )
        .build();
    let config_path = dir.join("client.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let _client_proxy = start_sidecar(client, &config_path, &dir.join("client-proxy.log"), "60s");
    wait_ready(meshed, "the meshed pod's proxy");
    wait_ready(client, "the client pod's proxy");

    // Init is idempotent: a second run leaves one jump per chain.
    run(client
        .command(bin_path("weft-proxy").to_str().unwrap())
        .args(["init", "--ipv6"]));
    let rules = String::from_utf8(run(client.command("iptables").args(["-t", "nat", "-S"])).stdout)
        .unwrap();
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j WEFT_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules
            .matches("-A PREROUTING -p tcp -j WEFT_INBOUND")
            .count(),
        1,
        "{rules}"
    );

    // HTTP to a virtual IP reaches the Service behind it: meshed (through the peer sidecar)...
    let resp = get(client, "http://10.96.0.10/head");
    assert_eq!(resp["status"], 200, "{resp}");
    assert_eq!(resp["headers"]["x-served-by"], "meshed");
    let head: serde_json::Value = serde_json::from_str(resp["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        head["headers"]["host"], "10.96.0.10",
        "the app sees the request as sent"
    );
    // ...over IPv6...
    let resp = get(client, "http://[fd00:96::10]/");
    assert_eq!(
        (
            resp["status"].as_u64(),
            resp["headers"]["x-served-by"].as_str()
        ),
        (Some(200), Some("meshed")),
        "{resp}"
    );
    // ...and directly.
    let resp = get(client, "http://10.96.0.11/");
    assert_eq!(
        (
            resp["status"].as_u64(),
            resp["headers"]["x-served-by"].as_str()
        ),
        (Some(200), Some("plain")),
        "{resp}"
    );

    // A server-first protocol on an opaque port: skipped by detection on the client's
    // outbound side and on the meshed pod's inbound side (redirected there by its iptables).
    let db = testbed(
        client,
        &["tcp", "10.96.0.12:3306", "--banner", "--send", "select 1"],
    )
    .expect("db exchange");
    assert_eq!(db["banner"], "220 weft-testbed ready\r\n");
    assert_eq!(db["echo"], "select 1");

    // An address that is no Service passes through untouched, without detection.
    let smtp = testbed(
        client,
        &["tcp", "10.77.0.3:2525", "--banner", "--send", "EHLO"],
    )
    .expect("passthrough exchange");
    assert_eq!(smtp["banner"], "220 weft-testbed ready\r\n");
    assert_eq!(smtp["echo"], "EHLO");

    let m = metrics(client);
    for (sample, at_least) in [
        (
            r#"weft_requests_total{direction="outbound",route="default",backend="shop/meshed:80",status_code="200"}"#,
            1.0,
        ),
        (
            r#"weft_requests_total{direction="outbound",route="default",backend="shop/meshed6:80",status_code="200"}"#,
            1.0,
        ),
        (
            r#"weft_requests_total{direction="outbound",route="default",backend="shop/plain:80",status_code="200"}"#,
            1.0,
        ),
        (
            r#"weft_connections_total{direction="outbound",protocol="opaque"}"#,
            1.0,
        ),
        (
            r#"weft_connections_total{direction="outbound",protocol="passthrough"}"#,
            1.0,
        ),
    ] {
        assert!(metric_value(&m, sample) >= at_least, "{sample} in\n{m}");
    }
    let m = metrics(meshed);
    assert!(
        metric_value(
            &m,
            r#"weft_connections_total{direction="inbound",protocol="opaque"}"#
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_value(
            &m,
            r#"weft_requests_total{direction="inbound",route="inbound",backend="10.77.0.2:8080",status_code="200"}"#
        ) >= 2.0,
        "{m}"
    );

    // The admin API answers reads from the network but refuses changes from non-loopback.
    let live = get(plain, "http://10.77.0.1:15191/live");
    assert_eq!(live["status"], 200);
    let put = testbed(
        plain,
        &["get", "http://10.77.0.1:15191/log-level", "--method", "PUT"],
    )
    .unwrap();
    assert_eq!(put["status"], 403, "{put}");

    // Cleanup removes every rule init added.
    run(client
        .command(bin_path("weft-proxy").to_str().unwrap())
        .args(["init", "--ipv6", "--cleanup"]));
    let rules =
        String::from_utf8(run(client.command("iptables-save").args(["-t", "nat"])).stdout).unwrap();
    assert!(!rules.contains("WEFT"), "{rules}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A server-first protocol on a Service port not declared opaque: detection waits for the
/// client to speak, and once the detection timeout passes in silence it forwards the
/// connection as opaque TCP, so the server's banner comes through.
#[test]
fn a_silent_client_falls_back_to_opaque_tcp_after_the_detection_timeout() {
    if !root_tests_enabled("a_silent_client_falls_back_to_opaque_tcp_after_the_detection_timeout") {
        return;
    }
    let dir = scratch_dir("detect-fallback");
    let mut lan = Lan::new();
    let client = lan.add_pod("client", "10.78.0.1/24", "fd78::1/64");
    let server = lan.add_pod("server", "10.78.0.2/24", "fd78::2/64");
    let (client, server) = (&lan.pods[client], &lan.pods[server]);
    let _mail = server.spawn(
        server
            .command(TESTBED)
            .args(["greet", "--listen", "10.78.0.2:2526"]),
        &dir.join("mail.log"),
    );
    let config = Mesh::new("client-v1")
        .service(
            "shop",
            "mail",
            Some("10.96.0.30".parse().unwrap()),
            2526,
            &[Ep::direct("10.78.0.2:2526".parse().unwrap())],
        )
        .build();
    let config_path = dir.join("client.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let _proxy = start_sidecar(client, &config_path, &dir.join("client-proxy.log"), "1s");
    wait_ready(client, "the client pod's proxy");

    let mail = testbed(
        client,
        &["tcp", "10.96.0.30:2526", "--banner", "--send", "EHLO"],
    )
    .expect("the exchange after the detection timeout");
    assert_eq!(mail["banner"], "220 weft-testbed ready\r\n");
    assert_eq!(mail["echo"], "EHLO");
    let m = metrics(client);
    assert_eq!(
        metric_value(
            &m,
            r#"weft_connections_total{direction="outbound",protocol="opaque"}"#
        ),
        1.0,
        "{m}"
    );
}

/// Under iptables a request's route is the Service its cluster IP names, whatever its Host
/// header says (the Gateway API's MeshClusterIPMatching, the conformance test
/// MeshFrontendHostname), and a meshed pod's own address is no Service: the request goes to
/// that pod through its sidecar, untouched by the Service's routes (MeshFrontend).
#[test]
fn the_cluster_ip_not_the_host_picks_the_route() {
    if !root_tests_enabled("the_cluster_ip_not_the_host_picks_the_route") {
        return;
    }
    let dir = scratch_dir("cluster-ip-matching");
    let mut lan = Lan::new();
    let client = lan.add_pod("client", "10.79.0.1/24", "fd79::1/64");
    let v1 = lan.add_pod("v1", "10.79.0.2/24", "fd79::2/64");
    let v2 = lan.add_pod("v2", "10.79.0.3/24", "fd79::3/64");
    let (client, v1, v2) = (&lan.pods[client], &lan.pods[v1], &lan.pods[v2]);
    let mut children = Vec::new();
    for (pod, ip, name) in [(v1, "10.79.0.2", "echo-v1"), (v2, "10.79.0.3", "echo-v2")] {
        children.push(
            pod.spawn(
                pod.command(TESTBED).args([
                    "http",
                    "--listen",
                    &format!("{ip}:8080"),
                    "--name",
                    name,
                ]),
                &dir.join(format!("{name}-app.log")),
            ),
        );
        let empty = dir.join(format!("{name}.json"));
        std::fs::write(
            &empty,
            serde_json::to_vec(&Mesh::new(name).build()).unwrap(),
        )
        .unwrap();
        children.push(start_sidecar(
            pod,
            &empty,
            &dir.join(format!("{name}-proxy.log")),
            "60s",
        ));
    }
    let service = |name: &str, ip: &str, version: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: echo, version: {version}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        )
    };
    let manifests = weft_tests::manifests::Manifests::new()
        .doc(&service("echo-v1", "10.96.0.21", "v1"))
        .doc(&service("echo-v2", "10.96.0.22", "v2"))
        .pod("shop", "echo-v1", &[("app", "echo"), ("version", "v1")], "10.79.0.2:8080".parse().unwrap(), true)
        .pod("shop", "echo-v2", &[("app", "echo"), ("version", "v2")], "10.79.0.3:8080".parse().unwrap(), true)
        .doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: frontend, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo-v2}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n");
    let config_path = dir.join("client.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&manifests.compile("shop")).unwrap(),
    )
    .unwrap();
    let _client_proxy = start_sidecar(client, &config_path, &dir.join("client-proxy.log"), "60s");
    for pod in [v1, v2, client] {
        wait_ready(pod, &pod.name);
    }

    let answer = |url: &str, host: &str| {
        testbed(client, &["get", url, "--host", host])
            .unwrap_or_else(|e| panic!("GET {url} (Host {host}): {e}"))
    };
    // MeshFrontendHostname: to echo-v2's cluster IP, named echo-v1 in the Host header...
    let resp = answer("http://10.96.0.22/head", "echo-v1");
    assert_eq!(resp["status"], 200, "{resp}");
    assert_eq!(resp["headers"]["x-served-by"], "echo-v2", "{resp}");
    assert_eq!(
        resp["headers"]["x-header-set"], "set",
        "echo-v2's route holds: {resp}"
    );
    let head: serde_json::Value = serde_json::from_str(resp["body"].as_str().unwrap()).unwrap();
    assert_eq!(head["headers"]["host"], "echo-v1", "the Host as sent");
    // ...and the other way round.
    let resp = answer("http://10.96.0.21/", "echo-v2");
    assert_eq!(resp["headers"]["x-served-by"], "echo-v1", "{resp}");
    assert!(resp["headers"].get("x-header-set").is_none(), "{resp}");
    // MeshFrontend: echo-v2's pod address, through its sidecar, with no route.
    let resp = answer("http://10.79.0.3:8080/", "10.79.0.3:8080");
    assert_eq!(resp["status"], 200, "{resp}");
    assert_eq!(resp["headers"]["x-served-by"], "echo-v2", "{resp}");
    assert!(resp["headers"].get("x-header-set").is_none(), "{resp}");
    let m = metrics(client);
    assert_eq!(
        metric_value(
            &m,
            r#"weft_connections_total{direction="outbound",protocol="pod"}"#
        ),
        1.0,
        "{m}"
    );
    let m = metrics(v2);
    assert!(
        metric_value(
            &m,
            r#"weft_connections_total{direction="inbound",protocol="opaque"}"#
        ) >= 1.0,
        "echo-v2's sidecar carried the pod-IP connection: {m}"
    );
    drop(children);
    let _ = std::fs::remove_dir_all(dir);
}

/// The outbound traffic policy REGISTRY_ONLY, set by the client's Namespace annotation,
/// under iptables: Services and the hosts of their endpoints are reached as ever, on any of
/// their ports; an address outside the registry is refused, an HTTP request with 503
/// `no-route` whatever its Host header names, any other connection by closing it.
#[test]
fn registry_only_refuses_addresses_outside_the_registry() {
    if !root_tests_enabled("registry_only_refuses_addresses_outside_the_registry") {
        return;
    }
    let dir = scratch_dir("registry-only");
    let mut lan = Lan::new();
    let client = lan.add_pod("client", "10.80.0.1/24", "fd80::1/64");
    let known = lan.add_pod("known", "10.80.0.2/24", "fd80::2/64");
    let outside = lan.add_pod("outside", "10.80.0.3/24", "fd80::3/64");
    let (client, known, outside) = (&lan.pods[client], &lan.pods[known], &lan.pods[outside]);
    let mut children = Vec::new();
    for (pod, ip, name) in [
        (known, "10.80.0.2", "known"),
        (outside, "10.80.0.3", "outside"),
    ] {
        children.push(
            pod.spawn(
                pod.command(TESTBED).args([
                    "http",
                    "--listen",
                    &format!("{ip}:8080"),
                    "--name",
                    name,
                ]),
                &dir.join(format!("{name}-http.log")),
            ),
        );
        children.push(
            pod.spawn(
                pod.command(TESTBED)
                    .args(["greet", "--listen", &format!("{ip}:2525")]),
                &dir.join(format!("{name}-greet.log")),
            ),
        );
    }
    let manifests = weft_tests::manifests::Manifests::new()
        .doc("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {weft.dev/outbound-traffic-policy: REGISTRY_ONLY}\n")
        .doc("apiVersion: v1\nkind: Service\nmetadata: {name: known, namespace: shop}\nspec:\n  clusterIP: 10.96.0.40\n  selector: {app: known}\n  ports: [{port: 80, targetPort: 8080}]\n")
        .pod("shop", "known", &[("app", "known")], "10.80.0.2:8080".parse().unwrap(), false);
    let config = manifests.compile("shop");
    assert_eq!(
        config.outbound.traffic_policy,
        weft_api::config::OutboundTrafficPolicy::RegistryOnly
    );
    let config_path = dir.join("client.json");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    // Detection gives up on a silent refused connection after 1 s.
    let _proxy = start_sidecar(client, &config_path, &dir.join("client-proxy.log"), "1s");
    wait_ready(client, "the client pod's proxy");

    let status_and_server = |url: &str, host: &str| {
        let resp = testbed(client, &["get", url, "--host", host])
            .unwrap_or_else(|e| panic!("GET {url} (Host {host}): {e}"));
        (
            resp["status"].as_u64().unwrap_or_default(),
            resp["headers"]["x-served-by"]
                .as_str()
                .or(resp["headers"]["x-weft-error"].as_str())
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let cases = [
        // The Service, by its cluster IP.
        ("http://10.96.0.40/", "known", 200, "known"),
        // Its endpoint's host, on the endpoint's port and on another.
        ("http://10.80.0.2:8080/", "10.80.0.2:8080", 200, "known"),
        // Outside the registry, whatever the Host header names.
        ("http://10.80.0.3:8080/", "10.80.0.3:8080", 503, "no-route"),
        ("http://10.80.0.3:8080/", "known.shop", 503, "no-route"),
    ];
    for (url, host, status, by) in cases {
        assert_eq!(
            status_and_server(url, host),
            (status, by.to_owned()),
            "{url} (Host {host})"
        );
    }
    let known_tcp = testbed(
        client,
        &["tcp", "10.80.0.2:2525", "--banner", "--send", "EHLO"],
    )
    .expect("a registry host's other port passes through");
    assert_eq!(known_tcp["banner"], "220 weft-testbed ready\r\n");
    assert_eq!(known_tcp["echo"], "EHLO");
    let refused = testbed(
        client,
        &["tcp", "10.80.0.3:2525", "--banner", "--send", "EHLO"],
    );
    // Closed before a byte either way: an error, or an empty exchange.
    let got_through = refused
        .as_ref()
        .is_ok_and(|r| r["banner"] != "" || r["echo"] != "");
    assert!(
        !got_through,
        "a server-first protocol outside the registry is closed: {refused:?}"
    );

    let m = metrics(client);
    for (sample, want) in [
        (
            r#"weft_proxy_errors_total{direction="outbound",reason="no-route"}"#,
            3.0,
        ),
        (
            r#"weft_connections_total{direction="outbound",protocol="passthrough"}"#,
            2.0,
        ),
    ] {
        assert_eq!(metric_value(&m, sample), want, "{sample} in\n{m}");
    }
    drop(children);
    let _ = std::fs::remove_dir_all(dir);
}
