//! One pod template: what injection adds, and what uninjection takes away.
//!
//! Injection adds, to a template that is not opted out, not on the host's network and not
//! injected already:
//! - `weft-init`, the first init container: `weft-proxy init` with exactly NET_ADMIN and
//!   NET_RAW, excluding the ports and CIDRs the pod's annotations name;
//! - `weft-proxy`: a native sidecar (an init container with `restartPolicy: Always`, right
//!   after `weft-init`), or with `native_sidecar` off the first app container, holding the
//!   others until it is ready (a `postStart` hook that waits for `/ready`);
//! - the volumes of the projected ServiceAccount token (audience `weft`) and of the trust
//!   anchor (the ConfigMap the control plane publishes in every namespace);
//! - the app containers' probes, rewritten through the proxy's admin port ([`super::probes`]);
//! - the annotations: `weft.dev/inject: enabled`, `weft.dev/injected` (the version and the
//!   settings), `weft.dev/app-probes` (the original probes) and the default container.
//!
//! Uninjection removes exactly that, from what the annotations recorded.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::probes::{self, ADMIN_PORT};
use super::value::{list, list_mut, map_mut, name_of, string_map};

/// A pod template found in an object: its `metadata` and `spec`, both mappings.
pub struct Template<'a> {
    pub metadata: &'a mut Map<String, Value>,
    pub spec: &'a mut Map<String, Value>,
}

/// The annotation that opts a pod in (`enabled`) or out (`disabled`).
pub const INJECT: &str = weft_api::resources::core::INJECT_ANNOTATION;
/// What injected the pod, and with which settings (JSON).
pub const INJECTED: &str = "weft.dev/injected";
pub const EXCLUDE_INBOUND_PORTS: &str = "weft.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "weft.dev/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "weft.dev/exclude-outbound-cidrs";
/// `false` keeps the app's probes as they are (they then fail under STRICT).
pub const REWRITE_APP_PROBES: &str = "weft.dev/rewrite-app-probes";
pub const PROXY_LOG_LEVEL: &str = "weft.dev/proxy-log-level";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The proxy's resources and the annotations that override each.
const RESOURCES: [(&str, &str, &str, &str); 4] = [
    ("requests", "cpu", "weft.dev/proxy-cpu-request", "50m"),
    (
        "requests",
        "memory",
        "weft.dev/proxy-memory-request",
        "32Mi",
    ),
    ("limits", "cpu", "weft.dev/proxy-cpu-limit", "1"),
    ("limits", "memory", "weft.dev/proxy-memory-limit", "256Mi"),
];

pub const INIT_CONTAINER: &str = "weft-init";
pub const PROXY_CONTAINER: &str = "weft-proxy";
const TOKEN_VOLUME: &str = "weft-token";
const TRUST_VOLUME: &str = "weft-trust-anchor";
/// The ConfigMap, in every namespace with meshed pods, that holds the mesh's trust anchor.
pub const TRUST_ANCHOR_CONFIG_MAP: &str = "weft-trust-anchor";
pub const TRUST_ANCHOR_KEY: &str = "ca.crt";
const TOKEN_DIR: &str = "/var/run/secrets/weft/token";
const TRUST_DIR: &str = "/var/run/weft/trust";
/// Where the image keeps the proxy.
const PROXY_BINARY: &str = "/usr/local/bin/weft-proxy";

pub const PROXY_UID: i64 = 2102;
const INBOUND_PORT: u16 = 15143;
const OUTBOUND_PORT: u16 = 15140;
/// The audience of the projected token (`weft control --token-audience`).
pub const TOKEN_AUDIENCE: &str = "weft";

/// The image `weft inject` names unless told otherwise: what `make image` builds.
pub const DEFAULT_IMAGE: &str = concat!("localhost/weft:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_CONTROL_PLANE: &str = "weft-control.weft-system.svc:15190";

/// How pods are injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The image holding `weft-proxy`.
    pub image: String,
    /// The control plane's config stream and CA, `host:port`.
    pub control_plane: String,
    /// The control plane's namespace (its identity's).
    pub control_plane_namespace: String,
    pub trust_domain: String,
    /// The proxy as a native sidecar (Kubernetes 1.29 and later), else a regular container.
    pub native_sidecar: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            image: DEFAULT_IMAGE.into(),
            control_plane: DEFAULT_CONTROL_PLANE.into(),
            control_plane_namespace: "weft-system".into(),
            trust_domain: "cluster.local".into(),
            native_sidecar: true,
        }
    }
}

/// What happened to a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The mesh was added; so many app probes now go through the proxy.
    Injected {
        probes: usize,
    },
    Uninjected,
    /// Left alone: `weft.dev/inject: disabled`.
    OptedOut,
    /// Left alone: a pod on the host's network would have the node's traffic redirected.
    HostNetwork,
    /// Left alone: it has the mesh already.
    AlreadyInjected,
    /// Left alone by uninjection: it has no mesh.
    NotInjected,
    /// Left alone by the webhook: neither the pod nor its namespace asks for the mesh.
    NotSelected,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        matches!(self, Outcome::Injected { .. } | Outcome::Uninjected)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Injected { probes: 0 } => "injected",
            Outcome::Injected { probes: 1 } => "injected; 1 app probe goes through the proxy",
            Outcome::Injected { probes } => {
                return write!(f, "injected; {probes} app probes go through the proxy");
            }
            Outcome::Uninjected => "uninjected",
            Outcome::OptedOut => "skipped: annotated weft.dev/inject: disabled",
            Outcome::HostNetwork => {
                "skipped: hostNetwork is true, and redirecting the pod's traffic would redirect \
                 the node's"
            }
            Outcome::AlreadyInjected => "skipped: already injected",
            Outcome::NotInjected => "skipped: not injected",
            Outcome::NotSelected => {
                "skipped: neither the pod nor its namespace asks for the mesh (weft.dev/inject)"
            }
        })
    }
}

/// Adds the mesh to a template. An annotation with a bad value is an error naming it.
pub fn inject(t: Template<'_>, settings: &Settings) -> Result<Outcome, String> {
    let annotations = string_map(t.metadata.get("annotations"));
    match annotations.get(INJECT).map(String::as_str) {
        Some("disabled") => return Ok(Outcome::OptedOut),
        Some("enabled") | None => {}
        Some(other) => {
            return Err(format!(
                "annotation {INJECT}: {other:?} is neither enabled nor disabled"
            ));
        }
    }
    if t.spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(Outcome::HostNetwork);
    }
    if is_injected(t.spec) {
        return Ok(Outcome::AlreadyInjected);
    }
    // What injection extends must be lists: anything else is refused, never replaced.
    for key in ["containers", "initContainers", "volumes"] {
        match t.spec.get(key) {
            None | Some(Value::Null) | Some(Value::Array(_)) => {}
            Some(_) => return Err(format!("spec.{key} is not a list")),
        }
    }
    if list(t.spec, "containers").is_empty() {
        return Err("spec.containers: the pod has no containers".into());
    }
    for name in [TOKEN_VOLUME, TRUST_VOLUME] {
        if list(t.spec, "volumes")
            .iter()
            .any(|v| name_of(v) == Some(name))
        {
            return Err(format!(
                "spec.volumes: the pod has a volume named {name}, which weft adds"
            ));
        }
    }

    let init = init_container(&annotations, settings)?;
    let rewrite = annotations.get(REWRITE_APP_PROBES).map(String::as_str) != Some("false");
    let rewritten = if rewrite {
        probes::rewrite(t.spec)?
    } else {
        probes::Rewritten::default()
    };
    let proxy = proxy_container(&annotations, settings, &rewritten)?;
    let first_app = list(t.spec, "containers")
        .first()
        .and_then(name_of)
        .map(str::to_owned);

    let mut inits = vec![init];
    if settings.native_sidecar {
        inits.push(proxy);
    } else {
        list_mut(t.spec, "containers").insert(0, proxy);
    }
    let existing = std::mem::take(list_mut(t.spec, "initContainers"));
    inits.extend(existing);
    *list_mut(t.spec, "initContainers") = inits;
    list_mut(t.spec, "volumes").extend([
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}
        }),
        json!({
            "name": TRUST_VOLUME,
            "configMap": {"name": TRUST_ANCHOR_CONFIG_MAP,
                          "items": [{"key": TRUST_ANCHOR_KEY, "path": TRUST_ANCHOR_KEY}]}
        }),
    ]);

    let mut added = Vec::new();
    let has_default = annotations.contains_key(DEFAULT_CONTAINER);
    let annotations = map_mut(t.metadata, "annotations");
    let mut set = |key: &str, value: String, added: &mut Vec<String>| {
        if !annotations.contains_key(key) {
            added.push(key.to_owned());
        }
        annotations.insert(key.to_owned(), Value::String(value));
    };
    if let Some(app) = first_app.filter(|_| !has_default) {
        set(DEFAULT_CONTAINER, app, &mut added);
    }
    let probes = rewritten.count();
    if let Some(originals) = rewritten.originals {
        set(probes::ORIGINALS, originals, &mut added);
    }
    set(INJECT, "enabled".into(), &mut added);
    let record = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "image": settings.image,
        "controlPlane": settings.control_plane,
        "nativeSidecar": settings.native_sidecar,
        "added": added,
    });
    set(INJECTED, record.to_string(), &mut Vec::new());
    Ok(Outcome::Injected { probes })
}

/// Removes what [`inject`] added, from what its annotations recorded.
pub fn uninject(t: Template<'_>) -> Outcome {
    if !is_injected(t.spec) {
        return Outcome::NotInjected;
    }
    let annotations = string_map(t.metadata.get("annotations"));
    for key in ["initContainers", "containers"] {
        list_mut(t.spec, key)
            .retain(|c| !matches!(name_of(c), Some(INIT_CONTAINER | PROXY_CONTAINER)));
    }
    list_mut(t.spec, "volumes")
        .retain(|v| !matches!(name_of(v), Some(TOKEN_VOLUME | TRUST_VOLUME)));
    if let Some(originals) = annotations.get(probes::ORIGINALS) {
        probes::restore(t.spec, originals);
    }
    for key in ["initContainers", "volumes"] {
        if t.spec
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            t.spec.remove(key);
        }
    }
    let added: Vec<String> = annotations
        .get(INJECTED)
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .and_then(|r| serde_json::from_value(r["added"].clone()).ok())
        .unwrap_or_default();
    let map = map_mut(t.metadata, "annotations");
    map.remove(INJECTED);
    map.remove(probes::ORIGINALS);
    for key in added {
        map.remove(&key);
    }
    if map.is_empty() {
        t.metadata.remove("annotations");
    }
    Outcome::Uninjected
}

/// A template has the mesh when it holds weft's proxy or init container.
pub fn is_injected(spec: &Map<String, Value>) -> bool {
    ["initContainers", "containers"].iter().any(|key| {
        list(spec, key)
            .iter()
            .any(|c| matches!(name_of(c), Some(INIT_CONTAINER | PROXY_CONTAINER)))
    })
}

fn init_container(
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Value, String> {
    let mut args = vec!["init".to_owned()];
    for (key, flag, check) in [
        (
            EXCLUDE_INBOUND_PORTS,
            "--exclude-inbound-ports",
            port_list as fn(&str) -> Result<String, String>,
        ),
        (
            EXCLUDE_OUTBOUND_PORTS,
            "--exclude-outbound-ports",
            port_list,
        ),
        (
            EXCLUDE_OUTBOUND_CIDRS,
            "--exclude-outbound-cidrs",
            cidr_list,
        ),
    ] {
        if let Some(value) = annotations.get(key) {
            let value = check(value).map_err(|e| format!("annotation {key}: {e}"))?;
            if !value.is_empty() {
                args.extend([flag.to_owned(), value]);
            }
        }
    }
    Ok(json!({
        "name": INIT_CONTAINER,
        "image": settings.image,
        "command": [PROXY_BINARY],
        "args": args,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
    }))
}

fn proxy_container(
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
    rewritten: &probes::Rewritten,
) -> Result<Value, String> {
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = vec![
        (
            "WEFT_CONTROL_PLANE",
            json!({"value": settings.control_plane}),
        ),
        (
            "WEFT_CONTROL_PLANE_IDENTITY",
            json!({"value": format!(
                "spiffe://{}/ns/{}/sa/weft-control",
                settings.trust_domain, settings.control_plane_namespace
            )}),
        ),
        ("WEFT_TRUST_DOMAIN", json!({"value": settings.trust_domain})),
        ("WEFT_POD_NAME", field("metadata.name")),
        ("WEFT_NAMESPACE", field("metadata.namespace")),
        ("WEFT_POD_IP", field("status.podIP")),
        ("WEFT_SERVICE_ACCOUNT", field("spec.serviceAccountName")),
        // iptables delivers outbound connections to loopback and inbound ones to the pod's
        // address; the kubelet and Prometheus reach the admin port on the pod's address.
        (
            "WEFT_OUTBOUND_ADDR",
            json!({"value": format!("127.0.0.1:{OUTBOUND_PORT}")}),
        ),
        (
            "WEFT_INBOUND_ADDR",
            json!({"value": format!("0.0.0.0:{INBOUND_PORT}")}),
        ),
        (
            "WEFT_ADMIN_ADDR",
            json!({"value": format!("0.0.0.0:{ADMIN_PORT}")}),
        ),
        (
            "WEFT_TRUST_ANCHOR",
            json!({"value": format!("{TRUST_DIR}/{TRUST_ANCHOR_KEY}")}),
        ),
        (
            "WEFT_TOKEN_FILE",
            json!({"value": format!("{TOKEN_DIR}/token")}),
        ),
    ];
    if let Some(level) = annotations.get(PROXY_LOG_LEVEL) {
        env.push(("WEFT_LOG_LEVEL", json!({"value": level})));
    }
    if let Some(targets) = &rewritten.targets {
        env.push(("WEFT_APP_PROBES", json!({"value": targets})));
    }
    let env: Vec<Value> = env
        .into_iter()
        .map(|(name, mut value)| {
            value["name"] = json!(name);
            value
        })
        .collect();

    let mut resources = json!({"requests": {}, "limits": {}});
    for (section, resource, key, default) in RESOURCES {
        let value = match annotations.get(key) {
            Some(v) => quantity(v).map_err(|e| format!("annotation {key}: {e}"))?,
            None => default.to_owned(),
        };
        resources[section][resource] = json!(value);
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({"httpGet": {"path": path, "port": ADMIN_PORT},
               "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 1})
    };
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "command": [PROXY_BINARY],
        "args": ["run"],
        "env": env,
        "ports": [{"name": "weft-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": resources,
        // The app starts only once the proxy has its certificate and a config.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true},
        ],
    });
    if settings.native_sidecar {
        proxy["restartPolicy"] = json!("Always");
    } else {
        // The kubelet starts the next container only once this hook returns, as Istio's
        // holdApplicationUntilProxyStarts does.
        proxy["lifecycle"] = json!({"postStart": {"exec": {"command": [PROXY_BINARY, "wait"]}}});
    }
    Ok(proxy)
}

/// `8080, 9090` → `8080,9090`, refusing what is not a port.
fn port_list(value: &str) -> Result<String, String> {
    let ports: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n.to_string()),
            _ => Err(format!("{p:?} is not a port (1 to 65535)")),
        })
        .collect::<Result<_, _>>()?;
    Ok(ports.join(","))
}

/// `10.0.0.0/8, fd00::/8` → `10.0.0.0/8,fd00::/8`, refusing what is not a CIDR.
fn cidr_list(value: &str) -> Result<String, String> {
    let cidrs: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (ip, len) = c
                .split_once('/')
                .ok_or_else(|| format!("{c:?} is not a CIDR (address/length)"))?;
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| format!("{c:?} is not a CIDR: {ip:?} is not an address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(n) if n <= max => Ok(c.to_owned()),
                _ => Err(format!("{c:?} is not a CIDR: the length is 0 to {max}")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(cidrs.join(","))
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2G`).
fn quantity(value: &str) -> Result<String, String> {
    let value = value.trim();
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits
            .parse::<f64>()
            .is_ok_and(|n| n.is_finite() && n >= 0.0)
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    if number_ok && suffix_ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a resource quantity (e.g. 100m, 64Mi)"
        ))
    }
}
