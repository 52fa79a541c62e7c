//! `weft status`: the connected proxies, the versions they acknowledged, and the manifests the
//! control plane rejected, from its admin API.

use std::fmt::Write as _;
use std::net::SocketAddr;

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
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &StatusArgs) -> anyhow::Result<bool> {
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fetch(args.control_plane))?;
    if args.json {
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

async fn fetch(addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the control plane's admin API at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/status")
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&body).context("reading /status")
}

/// The status as a table.
pub fn render(status: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
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
        "{:<32} {:<16} {:<14} {:<14} STATE",
        "NAMESPACE/POD", "POD IP", "ACKED", "CURRENT"
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
            "{pod:<32} {:<16} {:<14} {:<14} {state}",
            s(&p["podIp"]),
            short(&p["acked"]),
            short(&p["current"])
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
