//! `weft demo`, the first thing a new user runs, end to end: it must finish, and each scene
//! must show what it says (a scene that printed the wrong thing would mislead the user
//! before any error did).

use std::time::{Duration, Instant};

use weft_tests::paths::{bin_path, scratch_dir};

/// The demo's output, cut at its `== ` headings: (heading, the lines under it).
fn scenes(output: &str) -> Vec<(String, String)> {
    let mut scenes: Vec<(String, String)> = Vec::new();
    for line in output.lines() {
        if let Some(heading) = line.strip_prefix("== ") {
            scenes.push((heading.to_owned(), String::new()));
        } else if let Some((_, body)) = scenes.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    scenes
}

#[test]
fn weft_demo_runs_every_scene_and_each_shows_what_it_says() {
    let subnet = weft_tests::pods::subnet();
    let logs = scratch_dir("demo");
    let mut child = std::process::Command::new(bin_path("weft"))
        .args(["demo", "--subnet", &subnet.to_string(), "--proxy-bin"])
        .arg(bin_path("weft-proxy"))
        .arg("--logs")
        .arg(&logs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft demo");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "weft demo still running after 180 s (logs in {})",
                logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success(),
        "weft demo: {status}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scenes = scenes(&stdout);
    let scene = |prefix: &str| -> &str {
        scenes
            .iter()
            .find(|(h, _)| h.starts_with(prefix))
            .map(|(_, body)| body.as_str())
            .unwrap_or_else(|| panic!("no scene {prefix:?} in\n{stdout}"))
    };
    // (scene, what it must show)
    let shows: &[(&str, &[&str])] = &[
        (
            "The pods",
            &["three sidecars subscribed to the control plane"],
        ),
        (
            "1. Weighted split",
            &["200 reviews-v1", "200 reviews-v2", "over HTTP/2.0"],
        ),
        (
            "2. A live edit",
            &["every sidecar acknowledged it", "t=2.5s"],
        ),
        (
            "3. Header canary",
            &["200 reviews-v2       20", "200 reviews-v1       20"],
        ),
        (
            "4. Resilience",
            &[
                "200 reviews-v1      100",
                "reason=\"consecutive-failures\"} 1",
                "the shadow received 100 mirrored copies",
                "-> 504, x-weft-error: timeout",
                "200 reviews-v2",
            ],
        ),
        (
            "5. A bad edit",
            &[
                "MANIFEST ERRORS (1)",
                "routes.yaml:1:spec.rules[1].retry.attempts",
                "up to date",
            ],
        ),
        (
            "6. Identity",
            &[
                "spiffe://cluster.local/ns/shop/sa/productpage, valid until",
                "the caller is spiffe://cluster.local/ns/shop/sa/productpage",
                "version=\"TLSv1.3\"} 1",
            ],
        ),
        (
            "7. ServerPolicy",
            &[
                "GET  /reviews           -> 200",
                "POST /reviews           -> 403 unauthorized",
                "GET  /admin/users       -> 403 unauthorized",
                "GET  /reviews/../admin  -> 403 unauthorized",
            ],
        ),
        (
            "8. Bad input",
            &[
                "a good request                                     -> 200 OK",
                "-> 400 Bad Request (x-weft-error: bad-request)",
                "-> 431 Request Header Fields Too Large (x-weft-error: header-too-large)",
            ],
        ),
        (
            "9. Egress",
            &[
                "/ready -> 200",
                "/ready -> 503, x-weft-error: no-route",
                "/reviews -> 200",
            ],
        ),
        ("What the sidecars counted", &["weft_requests_total"]),
        ("Drain", &["exited (exit status: 0)"]),
    ];
    for (prefix, expected) in shows {
        let body = scene(prefix);
        for line in *expected {
            assert!(
                body.contains(line),
                "scene {prefix:?} does not show {line:?}:\n{body}"
            );
        }
    }
    assert!(
        stdout
            .trim_end()
            .ends_with("manifests/examples/ holds the manifests.")
    );
    // The three refusals, counted by the reviews sidecars between them.
    let denied: u64 = scene("7. ServerPolicy")
        .lines()
        .filter(|l| l.contains("reason=\"unauthorized\"}"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    assert_eq!(denied, 3, "the policy's refusals counted");
    // Scene 1 is 90/10 over 200 requests: v1 carries most.
    let split = scene("1. Weighted split");
    let count = |who: &str| -> usize {
        split
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("200 {who} ")))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (v1, v2) = (count("reviews-v1"), count("reviews-v2"));
    assert!(v1 + v2 == 200 && v1 > 3 * v2, "the split showed {v1}/{v2}");
    let _ = std::fs::remove_dir_all(&logs);
}
