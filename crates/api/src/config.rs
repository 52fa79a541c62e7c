//! The compiled proxy configuration: everything one proxy needs to route, as one immutable
//! snapshot.
//!
//! The shape mirrors what the proxy does, not what operators write: a [`Service`] is a
//! destination that applications name (DNS names, cluster IPs, ports); each [`ServicePort`]
//! sends its traffic to a [`Backend`], a set of endpoints reached the same way. Manifests
//! (Service, EndpointSlice, HTTPRoute, policies) are compiled into this form by the control
//! plane; `weft-proxy run --config FILE` reads it directly from YAML or JSON.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::validate::FieldError;
use crate::validate::{Problems, is_dns_label, is_dns_name};

pub mod policy;
pub mod route;
pub mod server;

pub use policy::BackendPolicySpec;
pub use route::{Filter, HttpRoute, Retry, RouteRule, Timeouts, WeightedBackend};
pub use server::{MtlsMode, ServerPolicy};

/// The port of a peer proxy's inbound listener, where meshed endpoints are reached.
pub const DEFAULT_INBOUND_PORT: u16 = 15143;
/// The cluster DNS suffix Services are named under.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// One proxy's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// An opaque version string; the proxy reports it in `/config_dump` and its metrics.
    pub version: String,
    /// The DNS suffix of Service names (`<name>.<namespace>.svc.<clusterDomain>`).
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// The destinations this proxy can route to.
    #[serde(default)]
    pub services: Vec<Service>,
    /// The endpoint sets that Service ports send to, by name.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// How the proxy treats traffic arriving for its own workload.
    #[serde(default)]
    pub inbound: Inbound,
    /// How the proxy treats its workload's traffic to addresses that are no Service's. Left
    /// out when it is the default, so that configs and their versions are as before it.
    #[serde(default, skip_serializing_if = "Outbound::is_default")]
    pub outbound: Outbound,
}

fn default_cluster_domain() -> String {
    DEFAULT_CLUSTER_DOMAIN.to_owned()
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            version: String::new(),
            cluster_domain: default_cluster_domain(),
            services: Vec::new(),
            backends: Vec::new(),
            inbound: Inbound::default(),
            outbound: Outbound::default(),
        }
    }
}

/// A destination applications address by name or virtual IP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Virtual IPs that resolve to this Service (a Kubernetes ClusterIP). May be empty.
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

/// One port of a Service and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// The backend that receives this port's traffic when no route is attached (a name in
    /// [`ProxyConfig::backends`]).
    pub backend: String,
    /// HTTPRoutes and GRPCRoutes attached to this port. With any, a request that matches none
    /// is answered 404 (GAMMA); with none, everything goes to `backend`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
}

/// How the proxy treats the bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect HTTP/1, HTTP/2 or TLS from the first bytes; anything else is opaque TCP.
    #[default]
    Detect,
    /// Never read the first bytes: forward as opaque TCP at once. Server-first protocols
    /// (MySQL, SMTP) need this, because their clients send nothing until the server speaks.
    Opaque,
}

/// A set of endpoints, reached the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Unique within the config, conventionally `<namespace>/<service>:<port>`.
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How clients treat this backend; absent knobs take the documented defaults.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub policy: BackendPolicySpec,
}

fn is_default_policy(p: &BackendPolicySpec) -> bool {
    *p == BackendPolicySpec::default()
}

/// One address that serves a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// Where the application listens (pod IP and target port).
    pub address: SocketAddr,
    /// Set when a weft proxy runs beside the endpoint: connections then go to that proxy's
    /// inbound port, which forwards them to `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshPeer>,
    /// The pod behind the endpoint, `<namespace>/<name>`, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The weft proxy in front of a meshed endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshPeer {
    /// The SPIFFE ID the peer proxy must present.
    pub identity: String,
    /// The peer proxy's inbound port on the endpoint's IP.
    #[serde(default = "default_inbound_port")]
    pub inbound_port: u16,
    /// Whether the peer takes mesh TLS; false when its ServerPolicy for the port says
    /// `mtls: DISABLE`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tls: bool,
}

fn yes() -> bool {
    true
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_true(b: &bool) -> bool {
    *b
}

fn default_inbound_port() -> u16 {
    DEFAULT_INBOUND_PORT
}

/// The proxy's own workload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inbound {
    /// Application ports whose inbound traffic is forwarded as opaque TCP without detection,
    /// in addition to the proxy's `--opaque-ports`.
    #[serde(default)]
    pub opaque_ports: BTreeSet<u16>,
    /// The ServerPolicies that select this workload, by name: for each port the first that
    /// names it applies, else the first that names no port. No policy: PERMISSIVE, allow all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<ServerPolicy>,
}

/// The proxy's own workload's outbound traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbound {
    #[serde(default)]
    pub traffic_policy: OutboundTrafficPolicy,
}

impl Outbound {
    pub fn is_default(&self) -> bool {
        *self == Outbound::default()
    }
}

/// Where the workload may connect besides the mesh's Services (Istio's
/// `outboundTrafficPolicy`): the default for the whole mesh is a flag of `weft control`, and a
/// Namespace's annotation [`OUTBOUND_TRAFFIC_POLICY_ANNOTATION`] overrides it for its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Any address: one outside the mesh is reached directly, as without a mesh.
    #[default]
    AllowAny,
    /// Only the registry: Services, their endpoints and meshed pods. Anything else is refused,
    /// an HTTP request with 503 `no-route`.
    RegistryOnly,
}

/// The Namespace annotation that sets its pods' [`OutboundTrafficPolicy`].
pub const OUTBOUND_TRAFFIC_POLICY_ANNOTATION: &str = "weft.dev/outbound-traffic-policy";

impl OutboundTrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundTrafficPolicy::AllowAny => "ALLOW_ANY",
            OutboundTrafficPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

impl std::str::FromStr for OutboundTrafficPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ALLOW_ANY" => Ok(OutboundTrafficPolicy::AllowAny),
            "REGISTRY_ONLY" => Ok(OutboundTrafficPolicy::RegistryOnly),
            other => Err(format!("{other:?} is neither ALLOW_ANY nor REGISTRY_ONLY")),
        }
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: invalid config:\n  {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: String,
        errors: Vec<FieldError>,
    },
}

impl ProxyConfig {
    /// Reads and validates a config file: JSON when the name ends in `.json`, YAML otherwise.
    pub fn load(path: &Path) -> Result<ProxyConfig, LoadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        let config = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<ProxyConfig>(&text).map_err(|e| LoadError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?
        } else {
            serde_saphyr::from_str::<ProxyConfig>(&text).map_err(|e| LoadError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?
        };
        config.validate().map_err(|errors| LoadError::Invalid {
            path: shown,
            errors,
        })?;
        Ok(config)
    }

    /// Checks the config's internal consistency, returning every problem found.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut problems = Problems::default();
        self.check(&mut problems);
        problems.into_result()
    }

    fn check(&self, errors: &mut Problems) {
        if !is_dns_name(&self.cluster_domain) {
            errors.add("clusterDomain", "must be a DNS name");
        }
        for (i, policy) in self.inbound.policies.iter().enumerate() {
            policy.validate(&format!("inbound.policies[{i}]"), errors);
        }
        let backends: HashMap<&str, usize> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let mut seen_backends = HashSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let at = format!("backends[{i}]");
            if backend.name.is_empty() {
                errors.add(format!("{at}.name"), "must not be empty");
            }
            if !seen_backends.insert(backend.name.as_str()) {
                errors.add(
                    format!("{at}.name"),
                    format!("duplicate backend {:?}", backend.name),
                );
            }
            backend.policy.validate(&format!("{at}.policy"), errors);
            let mut seen_endpoints = HashSet::new();
            for (j, ep) in backend.endpoints.iter().enumerate() {
                let at = format!("{at}.endpoints[{j}]");
                if ep.address.port() == 0 {
                    errors.add(format!("{at}.address"), "port must not be 0");
                }
                if !seen_endpoints.insert(ep.address) {
                    errors.add(
                        format!("{at}.address"),
                        format!("duplicate endpoint {}", ep.address),
                    );
                }
                if let Some(mesh) = &ep.mesh {
                    if mesh.inbound_port == 0 {
                        errors.add(format!("{at}.mesh.inboundPort"), "must not be 0");
                    }
                    if !mesh.identity.starts_with("spiffe://") {
                        errors.add(
                            format!("{at}.mesh.identity"),
                            "must be a SPIFFE ID (spiffe://<trust-domain>/...)",
                        );
                    }
                }
            }
        }
        let mut names = HashSet::new();
        let mut vips = HashMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !is_dns_label(&svc.name) {
                errors.add(format!("{at}.name"), "must be a DNS label");
            }
            if !is_dns_label(&svc.namespace) {
                errors.add(format!("{at}.namespace"), "must be a DNS label");
            }
            if !names.insert((svc.namespace.as_str(), svc.name.as_str())) {
                errors.add(
                    format!("{at}.name"),
                    format!("duplicate service {}/{}", svc.namespace, svc.name),
                );
            }
            if svc.ports.is_empty() {
                errors.add(format!("{at}.ports"), "must list at least one port");
            }
            let mut ports = HashSet::new();
            for (j, port) in svc.ports.iter().enumerate() {
                let at = format!("{at}.ports[{j}]");
                if port.port == 0 {
                    errors.add(format!("{at}.port"), "must not be 0");
                }
                if !ports.insert(port.port) {
                    errors.add(
                        format!("{at}.port"),
                        format!("duplicate port {}", port.port),
                    );
                }
                if !backends.contains_key(port.backend.as_str()) {
                    errors.add(
                        format!("{at}.backend"),
                        format!("no backend named {:?}", port.backend),
                    );
                }
                for ip in &svc.cluster_ips {
                    let vip = SocketAddr::new(*ip, port.port);
                    if let Some(other) = vips.insert(vip, (&svc.namespace, &svc.name)) {
                        errors.add(
                            format!("{at}.port"),
                            format!("{vip} is also served by {}/{}", other.0, other.1),
                        );
                    }
                }
                let backend_exists = |name: &str| backends.contains_key(name);
                for (k, route) in port.routes.iter().enumerate() {
                    route.validate(&format!("{at}.routes[{k}]"), &backend_exists, errors);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProxyConfig {
        serde_saphyr::from_str(
            r#"
version: v1
services:
  - name: reviews
    namespace: shop
    clusterIPs: [10.96.0.10]
    ports:
      - port: 9080
        backend: shop/reviews:9080
backends:
  - name: shop/reviews:9080
    endpoints:
      - address: 127.0.10.1:9080
        mesh: { identity: "spiffe://cluster.local/ns/shop/sa/reviews" }
      - address: 127.0.10.2:9080
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_sample_config_parses_with_defaults() {
        let config = sample();
        assert_eq!(config.cluster_domain, "cluster.local");
        let mesh = config.backends[0].endpoints[0].mesh.as_ref().unwrap();
        assert_eq!(mesh.inbound_port, DEFAULT_INBOUND_PORT);
        assert_eq!(config.services[0].ports[0].protocol, Protocol::Detect);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_saphyr::from_str::<ProxyConfig>("version: v1\nservicez: []\n");
        assert!(err.is_err());
    }

    #[test]
    fn validation_names_every_bad_field() {
        let mut config = sample();
        config.services[0].ports[0].backend = "missing".into();
        config.services[0].name = "Not_A_Label".into();
        config.backends[0].endpoints[1].address = "127.0.10.1:9080".parse().unwrap();
        config.backends[0].endpoints[0]
            .mesh
            .as_mut()
            .unwrap()
            .identity = "reviews".into();
        let errors = config.validate().unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backends[0].endpoints[0].mesh.identity",
                "backends[0].endpoints[1].address",
                "services[0].name",
                "services[0].ports[0].backend",
            ]
        );
    }

    #[test]
    fn two_services_cannot_share_a_virtual_ip_and_port() {
        let mut config = sample();
        let mut other = config.services[0].clone();
        other.name = "ratings".into();
        config.services.push(other);
        let errors = config.validate().unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("also served by shop/reviews"),
            "{}",
            errors[0]
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/config.example.yaml");
        let config = ProxyConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[1].ports[0].protocol, Protocol::Opaque);
        assert!(config.inbound.opaque_ports.contains(&5433));
    }
}
