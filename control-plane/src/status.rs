//! `weft status`: the connected proxies, the versions they acknowledged, and the manifests the
//! control plane rejected, from its admin API.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The control plane's admin API.
    #[arg(long, env = "WEFT_CONTROL_ADMIN", default_value = "127.0.0.1:15192")]
    pub control_plane: SocketAddr,
    /// `table`, or `json`: the control plane's `/status` (with `POD`, the proxy's record and
    /// its `/config_dump`).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    /// The same as `-o json`.
    #[arg(long)]
    pub json: bool,
    /// One proxy, by `POD` or `NAMESPACE/POD`: its versions, its certificate, and a summary of
    /// its `/config_dump`, read from its admin API (as `istioctl proxy-status POD` and
    /// `proxy-config` do).
    pub pod: Option<String>,
    /// The proxies' admin port, for `weft status POD`.
    #[arg(long, default_value_t = 15191)]
    pub proxy_admin_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<bool> {
    let json = args.json || args.output == Output::Json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(fetch(args.control_plane, "/status"))?;
    if let Some(pod) = &args.pod {
        let proxy = find(&status, pod)?;
        let admin = format!("{}:{}", s(&proxy["podIp"]), args.proxy_admin_port);
        let dump = match admin.parse() {
            Ok(addr) => runtime.block_on(fetch(addr, "/config_dump")),
            Err(e) => Err(anyhow::anyhow!("the proxy's admin address {admin}: {e}")),
        };
        if json {
            let mut both = proxy.clone();
            both["configDump"] = dump.unwrap_or_else(|e| json_error(&e));
            println!("{}", serde_json::to_string_pretty(&both)?);
        } else {
            print!("{}", render_proxy(&proxy, dump.as_ref(), SystemTime::now()));
        }
        return Ok(proxy["upToDate"] == true);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    let healthy = status["manifests"]["errors"]
        .as_array()
        .is_none_or(Vec::is_empty)
        && status["manifests"]["unresolved"]
            .as_array()
            .is_none_or(Vec::is_empty)
        && status["proxies"]
            .as_array()
            .is_none_or(|p| p.iter().all(|p| p["upToDate"] == true));
    Ok(healthy)
}

/// `GET path` on an admin API, as JSON.
async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(path)
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&body).with_context(|| format!("reading {path} from {addr}"))
}

fn json_error(e: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({ "error": format!("{e:#}") })
}

fn s(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// The proxy of `pod` (`POD` or `NAMESPACE/POD`) among the connected ones.
fn find(status: &serde_json::Value, pod: &str) -> anyhow::Result<serde_json::Value> {
    let (namespace, name) = match pod.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, pod),
    };
    let proxies = status["proxies"].as_array().cloned().unwrap_or_default();
    let found: Vec<&serde_json::Value> = proxies
        .iter()
        .filter(|p| p["podName"] == name && namespace.is_none_or(|ns| p["namespace"] == ns))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => anyhow::bail!("no connected proxy is pod {pod:?}"),
        _ => anyhow::bail!(
            "{} proxies are pod {pod:?}: name its namespace too (NAMESPACE/POD)",
            found.len()
        ),
    }
}

/// How long until `unix` (seconds), as `23h59m`, or `expired`.
fn remaining(unix: &serde_json::Value, now: SystemTime) -> String {
    let Some(at) = unix.as_u64() else {
        return "-".into();
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if at <= now {
        return "expired".into();
    }
    let left = at - now;
    match left {
        0..60 => format!("{left}s"),
        60..3600 => format!("{}m", left / 60),
        _ => format!("{}h{:02}m", left / 3600, left % 3600 / 60),
    }
}

/// One proxy: its record and the summary of its `/config_dump`.
pub fn render_proxy(
    proxy: &serde_json::Value,
    dump: Result<&serde_json::Value, &anyhow::Error>,
    now: SystemTime,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}/{} ({})",
        s(&proxy["namespace"]),
        s(&proxy["podName"]),
        s(&proxy["podIp"])
    );
    let _ = writeln!(out, "  service account  {}", s(&proxy["serviceAccount"]));
    let _ = writeln!(out, "  proxy version    {}", s(&proxy["proxyVersion"]));
    let _ = writeln!(
        out,
        "  acked            {}",
        proxy["acked"].as_str().unwrap_or("-")
    );
    let _ = writeln!(out, "  current          {}", s(&proxy["current"]));
    if let serde_json::Value::Array(n) = &proxy["nacked"]
        && n.len() == 2
    {
        let _ = writeln!(out, "  refused          {}: {}", s(&n[0]), s(&n[1]));
    }
    let cert = &proxy["certificate"];
    if cert.is_object() {
        let _ = writeln!(
            out,
            "  certificate      {} (serial {}), expires in {}",
            s(&cert["identity"]),
            s(&cert["serial"]),
            remaining(&cert["notAfter"], now)
        );
    } else {
        let _ = writeln!(
            out,
            "  certificate      - (none issued by this control plane that names the pod)"
        );
    }
    match dump {
        Err(e) => {
            let _ = writeln!(out, "\nCONFIG: unavailable ({e:#})");
        }
        Ok(dump) => {
            let config = &dump["config"];
            let services = config["services"].as_array().cloned().unwrap_or_default();
            let backends = config["backends"].as_array().cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "\nCONFIG {} in force: {} Services, {} backends",
                dump["version"].as_str().unwrap_or("-"),
                services.len(),
                backends.len()
            );
            let _ = writeln!(out, "{:<40} {:<8} ROUTES", "SERVICE", "PORT");
            for svc in &services {
                for port in svc["ports"].as_array().into_iter().flatten() {
                    let routes: Vec<String> = port["routes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| s(&r["name"]))
                        .collect();
                    let _ = writeln!(
                        out,
                        "{:<40} {:<8} {}",
                        format!("{}/{}", s(&svc["namespace"]), s(&svc["name"])),
                        port["port"],
                        if routes.is_empty() {
                            "-".into()
                        } else {
                            routes.join(", ")
                        }
                    );
                }
            }
            let _ = writeln!(out, "\n{:<40} ENDPOINTS", "BACKEND");
            for b in &backends {
                let endpoints = b["endpoints"].as_array().map_or(0, Vec::len);
                let meshed = b["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["mesh"].is_object())
                    .count();
                let _ = writeln!(out, "{:<40} {endpoints} ({meshed} meshed)", s(&b["name"]));
            }
        }
    }
    out
}

/// The status as a table.
pub fn render(status: &serde_json::Value) -> String {
    render_at(status, SystemTime::now())
}

fn render_at(status: &serde_json::Value, now: SystemTime) -> String {
    let mut out = String::new();
    let short = |v: &serde_json::Value| {
        v.as_str()
            .map_or("-".to_owned(), |v| v.chars().take(12).collect())
    };
    let _ = writeln!(
        out,
        "generation {}, {} manifests accepted",
        status["generation"], status["manifests"]["accepted"]
    );
    let proxies = status["proxies"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nPROXIES ({})", proxies.len());
    let _ = writeln!(
        out,
        "{:<32} {:<16} {:<14} {:<14} {:<12} STATE",
        "NAMESPACE/POD", "POD IP", "ACKED", "CURRENT", "CERT EXPIRES"
    );
    for p in &proxies {
        let pod = format!("{}/{}", s(&p["namespace"]), s(&p["podName"]));
        let state = match (&p["nacked"], p["upToDate"].as_bool()) {
            (serde_json::Value::Array(n), _) if n.len() == 2 => {
                format!("refused {}: {}", short(&n[0]), s(&n[1]))
            }
            (_, Some(true)) => "up to date".to_owned(),
            _ => "updating".to_owned(),
        };
        let _ = writeln!(
            out,
            "{pod:<32} {:<16} {:<14} {:<14} {:<12} {state}",
            s(&p["podIp"]),
            short(&p["acked"]),
            short(&p["current"]),
            remaining(&p["certificate"]["notAfter"], now)
        );
    }
    let errors = status["manifests"]["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(out, "\nMANIFEST ERRORS ({})", errors.len());
    for e in &errors {
        let _ = writeln!(out, "{}", s(e));
    }
    let routes = status["routes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nROUTES ({})", routes.len());
    for r in &routes {
        let route = format!("{} {}/{}", s(&r["kind"]), s(&r["namespace"]), s(&r["name"]));
        for p in r["parents"].as_array().into_iter().flatten() {
            let parent = &p["parentRef"];
            let port = parent["port"]
                .as_u64()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let target = format!(
                "{}{}{port}",
                parent["namespace"]
                    .as_str()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                s(&parent["name"])
            );
            let conditions: Vec<String> = p["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let head = format!("{}={}", s(&c["type"]), s(&c["status"]));
                    if c["status"] == "True" {
                        head
                    } else {
                        format!("{head} ({}: {})", s(&c["reason"]), s(&c["message"]))
                    }
                })
                .collect();
            let _ = writeln!(out, "{route:<40} {target:<24} {}", conditions.join(" "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_shows_proxies_and_errors() {
        let status = serde_json::json!({
            "generation": 3,
            "manifests": {"accepted": 5, "errors": ["a.yaml:2:spec.rules[0].backendRefs[0].weight: invalid value"]},
            "proxies": [
                {"namespace": "shop", "podName": "web-1", "podIp": "127.0.10.1", "acked": "0123456789abcdef", "current": "0123456789abcdef", "upToDate": true, "nacked": null},
                {"namespace": "shop", "podName": "web-2", "podIp": "127.0.10.2", "acked": null, "current": "0123456789abcdef", "upToDate": false, "nacked": ["0123456789abcdef", "bad regex"]},
            ],
        });
        let mut status = status;
        status["routes"] = serde_json::json!([{
            "kind": "HTTPRoute", "namespace": "shop", "name": "split",
            "parents": [{"parentRef": {"kind": "Service", "name": "reviews", "port": 9080}, "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted by weft"},
                {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "spec.rules[0].backendRefs[1].name: no Service shop/gone"},
            ]}],
        }]);
        let table = super::render(&status);
        assert!(
            table.contains("HTTPRoute shop/split") && table.contains("reviews:9080") && table.contains("Accepted=True ResolvedRefs=False (BackendNotFound: spec.rules[0].backendRefs[1].name: no Service shop/gone)"),
            "{table}"
        );
        assert!(table.contains("shop/web-1"), "{table}");
        assert!(table.contains("up to date"), "{table}");
        assert!(table.contains("refused 0123456789ab: bad regex"), "{table}");
        assert!(
            table.contains("a.yaml:2:spec.rules[0].backendRefs[0].weight"),
            "{table}"
        );
    }
}
