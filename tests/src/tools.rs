//! Third-party tools the tests drive as users have them: Debian's nginx as an upstream, and
//! h2load as a client. A test that needs one skips loudly when it is missing, unless
//! `WEFT_REQUIRE_ROOT_TESTS=1` (as in CI, which installs them), where a skip is a failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::paths::{has_command, scratch_dir};

/// True when every command of `tools` (command, Debian package) is installed.
pub fn tools_present(test: &str, tools: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(command, _)| !has_command(command))
        .map(|(command, package)| format!("{command} ({package})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("WEFT_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test} needs {missing:?}; WEFT_REQUIRE_ROOT_TESTS=1 forbids skipping it"
    );
    eprintln!("\n!!!!! SKIPPED {test}: it needs {missing:?}. !!!!!\n");
    false
}

/// How nginx serves.
#[derive(Debug, Clone, Copy)]
pub enum Serve {
    /// HTTP/1.1.
    Http1,
    /// h2c with prior knowledge.
    Http2,
}

/// An nginx answering `ok` on `/`, that closes each connection after `keepalive_requests`
/// requests as nginx does by default after 1,000: with `Connection: close` over HTTP/1, with a
/// graceful GOAWAY over HTTP/2. Its access log names each request's connection. Stopped when
/// dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    pub async fn start(addr: SocketAddr, serve: Serve, keepalive_requests: u32) -> Nginx {
        let dir = scratch_dir("nginx");
        let d = dir.display();
        let http2 = match serve {
            Serve::Http1 => "",
            Serve::Http2 => " http2",
        };
        let config = format!(
            // One process, no master: killing it (on drop) leaves no orphaned worker.
            "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  log_format conn '$connection $status';\n  access_log {d}/access.log conn;\n\
             client_body_temp_path {d}/body;\n  keepalive_requests {keepalive_requests};\n\
             server {{\n    listen {addr}{http2};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let nginx = Nginx { child, addr, dir };
        crate::eventually("nginx listening", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        nginx
    }

    /// The access log: (connection number, status) per request served.
    pub fn served(&self) -> Vec<(u64, u16)> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (c, s) = l.split_once(' ')?;
                Some((c.parse().ok()?, s.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an h2load run reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2load {
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
}

/// `h2load -n requests -c clients -m streams` against `target` (plain HTTP/2 with prior
/// knowledge), naming `authority` in every request; stopped after two minutes at most.
pub fn h2load(
    target: SocketAddr,
    authority: &str,
    requests: u32,
    clients: u32,
    streams: u32,
) -> H2load {
    let out = Command::new("timeout")
        .args(["120", "h2load", "-n", &requests.to_string()])
        .args(["-c", &clients.to_string(), "-m", &streams.to_string()])
        .args(["-H", &format!(":authority: {authority}")])
        .arg(format!("http://{target}/"))
        .output()
        .expect("running h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    // `requests: 5000 total, 5000 started, 5000 done, 5000 succeeded, 0 failed, ...`
    let count = |prefix: &str, what: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| {
                rest.split(',').find_map(|part| {
                    let mut words = part.split_whitespace();
                    let n = words.next()?;
                    (words.next()? == what).then(|| n.parse().ok()).flatten()
                })
            })
            .unwrap_or_else(|| panic!("no {what:?} on h2load's {prefix:?} line:\n{text}"))
    };
    H2load {
        succeeded: count("requests:", "succeeded"),
        failed: count("requests:", "failed"),
        errored: count("requests:", "errored"),
        ok: count("status codes:", "2xx"),
    }
}

/// The Prometheus project's own OpenMetrics parser, from Debian's python3-prometheus-client,
/// as Debian's interpreter runs it.
const OPENMETRICS_PARSER: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    samples = [{"name": s.name, "labels": s.labels,
                "value": s.value if math.isfinite(s.value) else str(s.value)}
               for s in f.samples]
    families.append({"name": f.name, "type": f.type, "help": f.documentation,
                     "samples": samples})
print(json.dumps(families))
"#;

/// Parses an OpenMetrics exposition strictly (a malformed one is an error, its message the
/// parser's) into its families: `[{name, type, help, samples: [{name, labels, value}]}]`.
/// `None` when the parser is not installed: skipped loudly, unless `WEFT_REQUIRE_ROOT_TESTS=1`.
pub fn parse_openmetrics(test: &str, text: &str) -> Option<Result<serde_json::Value, String>> {
    let python = "/usr/bin/python3";
    let installed = Command::new(python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let required = std::env::var("WEFT_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test} needs python3-prometheus-client; WEFT_REQUIRE_ROOT_TESTS=1 forbids skipping it"
        );
        eprintln!("\n!!!!! SKIPPED {test}: it needs python3-prometheus-client. !!!!!\n");
        return None;
    }
    let mut child = Command::new(python)
        .args(["-c", OPENMETRICS_PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the OpenMetrics parser");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .expect("writing the exposition");
    }
    let out = child.wait_with_output().expect("the OpenMetrics parser");
    if !out.status.success() {
        return Some(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Some(serde_json::from_slice(&out.stdout).map_err(|e| e.to_string()))
}
