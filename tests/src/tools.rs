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
    none_missing(test, missing)
}

/// True when nothing is missing; otherwise a loud skip, or a failure under
/// `WEFT_REQUIRE_ROOT_TESTS=1`.
fn none_missing(test: &str, missing: Vec<String>) -> bool {
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
    if !none_missing(
        test,
        (!python_module("prometheus_client.openmetrics.parser"))
            .then(|| "the OpenMetrics parser (python3-prometheus-client)".to_owned())
            .into_iter()
            .collect(),
    ) {
        return None;
    }
    let mut child = Command::new("/usr/bin/python3")
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

/// Drives a headless Chromium (Debian's `chromium`) over the DevTools protocol, through a
/// small Python client (Debian's `python3-websocket`): one JSON command per line in, its
/// answer per line out.
const DEVTOOLS_DRIVER: &str = r#"
import json, os, shutil, subprocess, sys, tempfile, time, urllib.request
import websocket
profile = tempfile.mkdtemp(prefix="weft-chromium-")
browser = subprocess.Popen(
    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
     "--no-first-run", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
     "--remote-allow-origins=*", "--user-data-dir=" + profile, "--window-size=1280,1100",
     "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.time() + 60
    while not (os.path.exists(port_file) and "\n" in open(port_file).read()):
        if time.time() > deadline or browser.poll() is not None:
            raise SystemExit("chromium did not start")
        time.sleep(0.05)
    port = int(open(port_file).read().split("\n")[0])
    targets = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port))
    page = next(t for t in targets if t["type"] == "page")
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
    print(json.dumps({"ready": True}), flush=True)
    n = 0
    for line in sys.stdin:
        command = json.loads(line)
        n += 1
        ws.send(json.dumps({"id": n, "method": command["method"], "params": command.get("params", {})}))
        while True:
            message = json.loads(ws.recv())
            if message.get("id") == n:
                break
        print(json.dumps(message), flush=True)
finally:
    browser.kill()
    browser.wait()
    shutil.rmtree(profile, ignore_errors=True)
"#;

/// A headless Chromium page. Closing its driver's input (on drop) ends the browser.
pub struct Browser {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Browser {
    /// `None` when Chromium or the driver's module is missing: skipped loudly, unless
    /// `WEFT_REQUIRE_ROOT_TESTS=1`.
    pub fn start(test: &str) -> Option<Browser> {
        let mut missing = Vec::new();
        if !has_command("chromium") {
            missing.push("chromium (chromium)".to_owned());
        }
        if !python_module("websocket") {
            missing.push("the Python module websocket (python3-websocket)".to_owned());
        }
        if !none_missing(test, missing) {
            return None;
        }
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", DEVTOOLS_DRIVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the DevTools driver");
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut browser = Browser {
            child,
            stdin,
            stdout,
        };
        let ready = browser
            .read_line()
            .expect("the DevTools driver's first line");
        assert_eq!(ready["ready"], true, "{ready}");
        Some(browser)
    }

    fn read_line(&mut self) -> Result<serde_json::Value, String> {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("the DevTools driver exited".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
    }

    /// One DevTools command; its `result`.
    pub fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().ok_or("the driver is closed")?;
        let command = serde_json::json!({ "method": method, "params": params });
        writeln!(stdin, "{command}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let answer = self.read_line()?;
        match answer.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(answer["result"].clone()),
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }))
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// A JavaScript expression's value in the page.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .unwrap_or_else(|e| panic!("evaluating {expression}: {e}"));
        result["result"]["value"].clone()
    }

    /// The page as a PNG.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .expect("a screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("the screenshot's base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of input: the driver closes the browser and exits.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// Whether Debian's Python has the module.
fn python_module(module: &str) -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
