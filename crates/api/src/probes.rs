//! The app's own probes, as the proxy forwards them.
//!
//! The kubelet probes a pod in plaintext from the node, which STRICT mTLS refuses. So the
//! injector points each app container's httpGet, tcpSocket and gRPC probe at the proxy's
//! admin port, `GET /app-health/<container>/<kind>`, and hands the proxy the originals in
//! `WEFT_APP_PROBES`: a JSON object from `<container>/<kind>` to an [`AppProbe`]. The proxy
//! runs the original against the pod's own address and answers 200 when it passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `<container>/<kind>` (`web/readiness`) to the probe it stands for.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// One of the app's probes: what to check, with its original port resolved to a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(flatten)]
    pub check: ProbeCheck,
    /// The probe's own `timeoutSeconds`.
    #[serde(default = "one_second")]
    pub timeout_seconds: u32,
}

fn one_second() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeCheck {
    /// A GET that passes with a status from 200 to 399, as the kubelet's does.
    HttpGet(HttpGetCheck),
    /// A TCP connection that opens.
    TcpSocket(TcpCheck),
    /// `grpc.health.v1.Health/Check` that answers SERVING.
    Grpc(GrpcCheck),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetCheck {
    pub port: u16,
    #[serde(default = "root")]
    pub path: String,
    /// `HTTP` or `HTTPS` (the certificate is not checked, as the kubelet does not).
    #[serde(default = "http")]
    pub scheme: String,
    /// Another host than the pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

fn root() -> String {
    "/".into()
}

fn http() -> String {
    "HTTP".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcCheck {
    pub port: u16,
    /// The service name asked about; empty for the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Reads `WEFT_APP_PROBES`.
pub fn parse(text: &str) -> Result<AppProbes, String> {
    let probes: AppProbes =
        serde_json::from_str(text).map_err(|e| format!("the app probes are not valid: {e}"))?;
    for (key, probe) in &probes {
        let parts: Vec<&str> = key.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("app probe {key:?}: the key is <container>/<kind>"));
        }
        if let ProbeCheck::HttpGet(h) = &probe.check {
            if !h.path.starts_with('/') {
                return Err(format!("app probe {key:?}: the path must start with /"));
            }
            if !matches!(h.scheme.as_str(), "HTTP" | "HTTPS") {
                return Err(format!("app probe {key:?}: the scheme is HTTP or HTTPS"));
            }
        }
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_read_as_the_injector_writes_them() {
        let text = r#"{"web/readiness": {"httpGet": {"port": 8080, "path": "/healthz",
            "httpHeaders": [{"name": "x-probe", "value": "1"}]}, "timeoutSeconds": 3},
            "web/liveness": {"tcpSocket": {"port": 8080}},
            "api/startup": {"grpc": {"port": 9090, "service": "api"}}}"#;
        let probes = parse(text).unwrap();
        assert_eq!(probes.len(), 3);
        let ready = &probes["web/readiness"];
        assert_eq!(ready.timeout_seconds, 3);
        let ProbeCheck::HttpGet(h) = &ready.check else {
            panic!("{ready:?}")
        };
        assert_eq!(
            (h.port, h.path.as_str(), h.scheme.as_str()),
            (8080, "/healthz", "HTTP")
        );
        assert_eq!(probes["web/liveness"].timeout_seconds, 1);
        let again = parse(&serde_json::to_string(&probes).unwrap()).unwrap();
        assert_eq!(again, probes);
    }

    #[test]
    fn bad_probes_are_refused_with_their_key() {
        for (text, message) in [
            (
                r#"{"web": {"tcpSocket": {"port": 1}}}"#,
                "<container>/<kind>",
            ),
            (
                r#"{"a/b": {"httpGet": {"port": 1, "path": "x"}}}"#,
                "start with /",
            ),
            (
                r#"{"a/b": {"httpGet": {"port": 1, "scheme": "FTP"}}}"#,
                "HTTP or HTTPS",
            ),
            (r#"{"a/b": {"exec": {"command": ["true"]}}}"#, "not valid"),
            (r#"{"a/b": {"tcpSocket": {"port": 70000}}}"#, "not valid"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(message), "{text}: {e}");
        }
    }
}
