//! App probes that keep working under STRICT mTLS.
//!
//! The kubelet probes from the node in plaintext, which STRICT refuses. Each app container's
//! httpGet, tcpSocket and gRPC probe is pointed at the proxy's admin port,
//! `/app-health/<container>/<kind>`, keeping its timing. The proxy is handed the original
//! check (`WEFT_APP_PROBES`, [`weft_api::probes`]) and runs it against the pod's own
//! address. The probes as written are kept in the annotation [`ORIGINALS`], from which
//! `weft uninject` restores them. An `exec` probe runs inside the container and is left alone.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use weft_api::probes::{
    AppProbe, AppProbes, GrpcCheck, HttpGetCheck, ProbeCheck, ProbeHeader, TcpCheck,
};

use super::value::{list_mut, name_of};

/// The proxy's admin port, where the kubelet's probes go.
pub const ADMIN_PORT: u16 = 15191;

/// The annotation holding the app's probes as they were written (JSON: container, then the
/// probe's field name, then the probe).
pub const ORIGINALS: &str = "weft.dev/app-probes";

/// A container's probe fields and the kind each is called in the proxy's path.
const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

/// What [`rewrite`] did: the annotation of originals and the proxy's targets, both JSON, or
/// nothing when no probe was rewritten.
#[derive(Debug, Default)]
pub struct Rewritten {
    pub originals: Option<String>,
    pub targets: Option<String>,
    count: usize,
}

impl Rewritten {
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Points every app container's network probe at the proxy's admin port.
pub fn rewrite(spec: &mut Map<String, Value>) -> Result<Rewritten, String> {
    let mut originals: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut targets = AppProbes::new();
    for (i, container) in list_mut(spec, "containers").iter_mut().enumerate() {
        let name = name_of(container)
            .ok_or_else(|| format!("spec.containers[{i}] has no name"))?
            .to_owned();
        let ports: Vec<(String, u16)> = container
            .get("ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| {
                        let name = p.get("name")?.as_str()?.to_owned();
                        let port = u16::try_from(p.get("containerPort")?.as_u64()?).ok()?;
                        Some((name, port))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let Some(object) = container.as_object_mut() else {
            continue;
        };
        for (field, kind) in KINDS {
            let Some(probe) = object.get(field).and_then(Value::as_object) else {
                continue;
            };
            let at = format!("spec.containers[{name}].{field}");
            let Some(check) = check(probe, &ports, &at)? else {
                continue;
            };
            let timeout_seconds = probe
                .get("timeoutSeconds")
                .and_then(Value::as_u64)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(1);
            targets.insert(
                format!("{name}/{kind}"),
                AppProbe {
                    check,
                    timeout_seconds,
                },
            );
            originals
                .entry(name.clone())
                .or_default()
                .insert(field.to_owned(), Value::Object(probe.clone()));
            let mut through_proxy = probe.clone();
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                through_proxy.remove(handler);
            }
            through_proxy.insert(
                "httpGet".into(),
                json!({"path": format!("/app-health/{name}/{kind}"), "port": ADMIN_PORT}),
            );
            object.insert(field.to_owned(), Value::Object(through_proxy));
        }
    }
    if targets.is_empty() {
        return Ok(Rewritten::default());
    }
    let count = targets.len();
    // Maps of strings and JSON values: writing them cannot fail.
    Ok(Rewritten {
        originals: Some(serde_json::to_string(&originals).unwrap_or_default()),
        targets: Some(serde_json::to_string(&targets).unwrap_or_default()),
        count,
    })
}

/// Puts back the probes [`rewrite`] recorded in `originals` (the annotation's value).
pub fn restore(spec: &mut Map<String, Value>, originals: &str) {
    let Ok(originals) = serde_json::from_str::<BTreeMap<String, Map<String, Value>>>(originals)
    else {
        return;
    };
    for container in list_mut(spec, "containers") {
        let Some(probes) = name_of(container).and_then(|n| originals.get(n)) else {
            continue;
        };
        let Some(object) = container.as_object_mut() else {
            continue;
        };
        for (field, probe) in probes {
            object.insert(field.clone(), probe.clone());
        }
    }
}

/// The check a probe makes, with a named port resolved; `None` for an exec probe.
fn check(
    probe: &Map<String, Value>,
    ports: &[(String, u16)],
    at: &str,
) -> Result<Option<ProbeCheck>, String> {
    let port = |handler: &Map<String, Value>, path: &str| -> Result<u16, String> {
        match handler.get("port") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{at}.{path}.port: {n} is not a port")),
            Some(Value::String(name)) => ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .or_else(|| name.parse().ok())
                .ok_or_else(|| format!("{at}.{path}.port: the container has no port named {name}")),
            _ => Err(format!("{at}.{path}.port is required")),
        }
    };
    let text = |handler: &Map<String, Value>, key: &str| {
        handler.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    if let Some(h) = probe.get("httpGet").and_then(Value::as_object) {
        let headers = h
            .get("httpHeaders")
            .and_then(Value::as_array)
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| {
                        Some(ProbeHeader {
                            name: h.get("name")?.as_str()?.to_owned(),
                            value: h.get("value")?.as_str().unwrap_or_default().to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let path = text(h, "path").unwrap_or_else(|| "/".into());
        return Ok(Some(ProbeCheck::HttpGet(HttpGetCheck {
            port: port(h, "httpGet")?,
            path: if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            },
            scheme: text(h, "scheme").unwrap_or_else(|| "HTTP".into()),
            host: text(h, "host"),
            http_headers: headers,
        })));
    }
    if let Some(t) = probe.get("tcpSocket").and_then(Value::as_object) {
        return Ok(Some(ProbeCheck::TcpSocket(TcpCheck {
            port: port(t, "tcpSocket")?,
            host: text(t, "host"),
        })));
    }
    if let Some(g) = probe.get("grpc").and_then(Value::as_object) {
        return Ok(Some(ProbeCheck::Grpc(GrpcCheck {
            port: port(g, "grpc")?,
            service: text(g, "service"),
        })));
    }
    Ok(None)
}
