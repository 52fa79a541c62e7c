//! The compiler: from a set of accepted manifests to the config of one proxy.
//!
//! Every Service port becomes a destination with a backend named `<namespace>/<name>:<port>`.
//! Endpoints come from the Pods a Service selects (local mode, and the cluster's Pods), or, for
//! a Service without a selector, from its EndpointSlices. A Pod that runs a weft sidecar is a
//! meshed endpoint, reached through its proxy and expected to present
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`.
//!
//! Routes attach as GAMMA says: a route in the Service's namespace (a producer route) applies
//! to every client; a route in the client's own namespace (a consumer route) applies to that
//! namespace's clients only, and replaces the producer routes for them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use weft_api::config::route::{
    Filter, HttpRoute, RouteRule, Timeouts, WeightedBackend, default_backoff,
};
use weft_api::config::server::ServerPolicySpec;
use weft_api::config::{
    self, DEFAULT_INBOUND_PORT, MeshPeer, MtlsMode, OutboundTrafficPolicy, ProxyConfig,
    ServerPolicy,
};
use weft_api::gateway::{HttpRouteMatch, MatchType, PathMatch, PathMatchType};
use weft_api::identity::SpiffeId;
use weft_api::resources::check::{self, grpc_route_extras};
use weft_api::resources::core::{EndpointSlice, IntOrString, Pod, SERVICE_NAME_LABEL, Service};
use weft_api::resources::routes::{
    BackendRef, FilterSpec, GrpcRouteManifest, HttpRouteManifest, ParentRef,
};
use weft_api::resources::{Manifest, ObjectMeta, Resource};
use weft_api::validate::Problems;

/// Who a config is compiled for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Target {
    /// The proxy's namespace: short names and consumer routes depend on it.
    pub namespace: String,
    /// The proxy's pod, by name (in `namespace`) or else by IP: its labels pick the
    /// ServerPolicies compiled into the inbound side.
    pub pod_name: Option<String>,
    pub pod_ip: Option<IpAddr>,
}

impl Target {
    pub fn namespace(namespace: impl Into<String>) -> Target {
        Target {
            namespace: namespace.into(),
            ..Target::default()
        }
    }

    /// The target a subscribed proxy describes in its Hello: an empty pod name, or a pod IP
    /// that does not parse, is none.
    pub fn of_proxy(namespace: &str, pod_name: &str, pod_ip: &str) -> Target {
        Target {
            namespace: namespace.to_owned(),
            pod_name: Some(pod_name.to_owned()).filter(|n| !n.is_empty()),
            pod_ip: pod_ip.parse().ok(),
        }
    }
}

/// Settings of the mesh as a whole.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub cluster_domain: String,
    pub trust_domain: String,
    /// For the pods of namespaces whose annotation sets none.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            cluster_domain: config::DEFAULT_CLUSTER_DOMAIN.into(),
            trust_domain: "cluster.local".into(),
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
        }
    }
}

/// Accepted manifests, indexed for compiling.
pub struct Index<'a> {
    services: BTreeMap<(&'a str, &'a str), &'a Service>,
    pods: Vec<&'a Pod>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    http_routes: Vec<&'a HttpRouteManifest>,
    grpc_routes: Vec<&'a GrpcRouteManifest>,
    /// The policy for each Service, by `(namespace, name)`: the first by name wins.
    policies: HashMap<(&'a str, &'a str), (&'a str, &'a config::BackendPolicySpec)>,
    /// By namespace and name.
    server_policies: BTreeMap<(&'a str, &'a str), &'a ServerPolicySpec>,
    /// The namespaces whose annotation sets their pods' outbound traffic policy.
    outbound_policies: HashMap<&'a str, OutboundTrafficPolicy>,
}

impl<'a> Index<'a> {
    pub fn new(manifests: &'a [Manifest]) -> Index<'a> {
        let mut index = Index {
            services: BTreeMap::new(),
            pods: Vec::new(),
            slices: HashMap::new(),
            http_routes: Vec::new(),
            grpc_routes: Vec::new(),
            policies: HashMap::new(),
            server_policies: BTreeMap::new(),
            outbound_policies: HashMap::new(),
        };
        for m in manifests {
            match &m.resource {
                Resource::Service(s) => {
                    index
                        .services
                        .insert((s.metadata.namespace(), &s.metadata.name), s);
                }
                Resource::Pod(p) => index.pods.push(p),
                Resource::EndpointSlice(e) => {
                    if let Some(svc) = e.metadata.labels.get(SERVICE_NAME_LABEL) {
                        index
                            .slices
                            .entry((e.metadata.namespace(), svc.as_str()))
                            .or_default()
                            .push(e);
                    }
                }
                Resource::HttpRoute(r) => index.http_routes.push(r),
                Resource::GrpcRoute(r) => index.grpc_routes.push(r),
                Resource::ServerPolicy(p) => {
                    index
                        .server_policies
                        .insert((p.metadata.namespace(), &p.metadata.name), &p.spec);
                }
                Resource::Namespace(n) => {
                    if let Some(policy) = n.outbound_traffic_policy() {
                        index.outbound_policies.insert(&n.metadata.name, policy);
                    }
                }
                Resource::BackendPolicy(p) => {
                    for t in &p.spec.target_refs {
                        let key = (p.metadata.namespace(), t.name.as_str());
                        let name = p.metadata.name.as_str();
                        let replace = index
                            .policies
                            .get(&key)
                            .is_none_or(|(other, _)| name < *other);
                        if replace {
                            index.policies.insert(key, (name, &p.spec));
                        }
                    }
                }
            }
        }
        index
    }

    /// Compiles the config for one proxy. The version is a digest of the content, so an
    /// unchanged result has an unchanged version.
    pub fn compile(&self, target: &Target, mesh: &MeshSettings) -> ProxyConfig {
        let mut config = self.compile_namespace(&target.namespace, mesh);
        let policies = self.inbound_policies(target);
        if !policies.is_empty() {
            config.inbound.policies = policies;
            config.version = digest(&config);
        }
        config
    }

    /// The pod a proxy runs in: by name, else by IP.
    fn pod_of(&self, target: &Target) -> Option<&'a Pod> {
        let in_ns = |p: &&&Pod| p.metadata.namespace() == target.namespace;
        match &target.pod_name {
            Some(name) if !name.is_empty() => self
                .pods
                .iter()
                .filter(in_ns)
                .find(|p| p.metadata.name == *name)
                .copied(),
            _ => {
                let ip = target.pod_ip?;
                self.pods
                    .iter()
                    .filter(in_ns)
                    .find(|p| {
                        p.status
                            .pod_ip
                            .as_deref()
                            .and_then(|a| a.parse::<IpAddr>().ok())
                            == Some(ip)
                    })
                    .copied()
            }
        }
    }

    /// The ServerPolicies that select the target's pod, by name.
    pub fn inbound_policies(&self, target: &Target) -> Vec<ServerPolicy> {
        self.pod_of(target)
            .map(|pod| self.policies_of(pod))
            .unwrap_or_default()
    }

    fn policies_of(&self, pod: &Pod) -> Vec<ServerPolicy> {
        let ns = pod.metadata.namespace();
        self.server_policies
            .range((ns, "")..)
            .take_while(|((n, _), _)| *n == ns)
            .filter(|(_, spec)| spec.selector.selects(&pod.metadata.labels))
            .map(|((n, name), spec)| ServerPolicy::new(format!("{n}/{name}"), spec))
            .collect()
    }

    /// The config every proxy in `namespace` shares: everything but the inbound policies.
    pub fn compile_namespace(&self, namespace: &str, mesh: &MeshSettings) -> ProxyConfig {
        let mut config = ProxyConfig {
            cluster_domain: mesh.cluster_domain.clone(),
            ..ProxyConfig::default()
        };
        config.outbound.traffic_policy = self
            .outbound_policies
            .get(namespace)
            .copied()
            .unwrap_or(mesh.outbound_traffic_policy);
        for ((ns, name), svc) in &self.services {
            let mut ports = Vec::new();
            for port in &svc.spec.ports {
                if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let backend = backend_name(ns, name, port.port);
                let protocol = match port.app_protocol.as_deref() {
                    Some("weft.dev/opaque" | "tcp") => config::Protocol::Opaque,
                    _ => config::Protocol::Detect,
                };
                let mut policy = self
                    .policies
                    .get(&(*ns, *name))
                    .map(|(_, p)| (*p).clone())
                    .unwrap_or_default();
                policy.target_refs.clear();
                config.backends.push(config::Backend {
                    name: backend.clone(),
                    endpoints: self.endpoints(svc, port, mesh),
                    policy,
                });
                ports.push(config::ServicePort {
                    port: port.port,
                    name: port.name.clone(),
                    protocol,
                    backend,
                    routes: self.routes_for(ns, name, port.port, namespace),
                });
            }
            if ports.is_empty() {
                continue;
            }
            config.services.push(config::Service {
                name: (*name).to_owned(),
                namespace: (*ns).to_owned(),
                cluster_ips: cluster_ips(svc),
                ports,
            });
        }
        config.version = digest(&config);
        config
    }

    fn endpoints(
        &self,
        svc: &Service,
        port: &weft_api::resources::core::ServicePort,
        mesh: &MeshSettings,
    ) -> Vec<config::Endpoint> {
        let ns = svc.metadata.namespace();
        let mut out = Vec::new();
        match &svc.spec.selector {
            Some(selector) if !selector.is_empty() => {
                for pod in self
                    .pods
                    .iter()
                    .filter(|p| p.metadata.namespace() == ns && selects(selector, &p.metadata))
                {
                    if !pod.is_ready() {
                        continue;
                    }
                    let Some(ip) = pod
                        .status
                        .pod_ip
                        .as_deref()
                        .and_then(|ip| ip.parse::<IpAddr>().ok())
                    else {
                        continue;
                    };
                    let target_port = match &port.target_port {
                        None => Some(port.port),
                        Some(IntOrString::Int(p)) => Some(*p),
                        Some(IntOrString::String(name)) => {
                            pod.port_named(name).or_else(|| name.parse().ok())
                        }
                    };
                    let Some(target_port) = target_port else {
                        continue;
                    };
                    out.push(self.endpoint(SocketAddr::new(ip, target_port), Some(pod), mesh));
                }
            }
            _ => {
                for slice in self
                    .slices
                    .get(&(ns, svc.metadata.name.as_str()))
                    .into_iter()
                    .flatten()
                {
                    let slice_port = slice
                        .ports
                        .iter()
                        .find(|p| {
                            p.name == port.name || (slice.ports.len() == 1 && port.name.is_none())
                        })
                        .and_then(|p| p.port);
                    let Some(target_port) = slice_port else {
                        continue;
                    };
                    for ep in &slice.endpoints {
                        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                            continue;
                        }
                        let pod =
                            ep.target_ref
                                .as_ref()
                                .filter(|r| r.kind == "Pod")
                                .and_then(|r| {
                                    let pod_ns = r.namespace.as_deref().unwrap_or(ns);
                                    self.pods
                                        .iter()
                                        .find(|p| {
                                            p.metadata.name == r.name
                                                && p.metadata.namespace() == pod_ns
                                        })
                                        .copied()
                                });
                        for addr in &ep.addresses {
                            if let Ok(ip) = addr.parse::<IpAddr>() {
                                out.push(self.endpoint(
                                    SocketAddr::new(ip, target_port),
                                    pod,
                                    mesh,
                                ));
                            }
                        }
                    }
                }
            }
        }
        out.sort_by_key(|e| e.address);
        out.dedup_by_key(|e| e.address);
        out
    }

    fn endpoint(
        &self,
        address: SocketAddr,
        pod: Option<&Pod>,
        mesh: &MeshSettings,
    ) -> config::Endpoint {
        config::Endpoint {
            address,
            mesh: pod.filter(|p| p.is_meshed()).map(|p| {
                let policies = self.policies_of(p);
                let mtls = ServerPolicy::for_port(&policies, address.port())
                    .map_or(MtlsMode::default(), |(_, policy)| policy.mtls);
                MeshPeer {
                    identity: SpiffeId::new(
                        &mesh.trust_domain,
                        p.metadata.namespace(),
                        p.service_account(),
                    )
                    .to_string(),
                    inbound_port: DEFAULT_INBOUND_PORT,
                    tls: mtls != MtlsMode::Disable,
                }
            }),
            pod: pod.map(|p| format!("{}/{}", p.metadata.namespace(), p.metadata.name)),
        }
    }

    /// The routes attached to a Service port, as a client in `client_ns` sees them.
    fn routes_for(&self, svc_ns: &str, svc: &str, port: u16, client_ns: &str) -> Vec<HttpRoute> {
        let attaches = |meta: &ObjectMeta, parents: &[ParentRef]| {
            parents.iter().any(|p| {
                p.name == svc
                    && p.namespace.as_deref().unwrap_or(meta.namespace()) == svc_ns
                    && p.port.is_none_or(|p| p == port)
            })
        };
        let mut producer = Vec::new();
        let mut consumer = Vec::new();
        let mut sort = |meta: &ObjectMeta, route: HttpRoute| {
            if meta.namespace() == client_ns {
                consumer.push(route.clone());
            }
            if meta.namespace() == svc_ns {
                producer.push(route);
            }
        };
        for r in self
            .http_routes
            .iter()
            .filter(|r| attaches(&r.metadata, &r.spec.parent_refs))
        {
            let resolve = |b: &BackendRef| self.unresolved(b, r.metadata.namespace());
            sort(&r.metadata, compile_http_route(r, &resolve));
        }
        for r in self
            .grpc_routes
            .iter()
            .filter(|r| attaches(&r.metadata, &r.spec.parent_refs))
        {
            let resolve = |b: &BackendRef| self.unresolved(b, r.metadata.namespace());
            sort(&r.metadata, compile_grpc_route(r, &resolve));
        }
        if client_ns != svc_ns && !consumer.is_empty() {
            consumer
        } else {
            producer
        }
    }
}

impl Index<'_> {
    /// Why `r`, of a route in `route_ns`, names no backend the proxies have; `None` when it
    /// does. A port the proxies do not serve (not TCP) names none either.
    fn unresolved(&self, r: &BackendRef, route_ns: &str) -> Option<String> {
        let found = check::resolve_backend(r, route_ns, |ns, name| {
            self.services.get(&(ns, name)).copied()
        });
        match found {
            Err(e) => Some(format!("{}: {}", e.reason, e.message)),
            Ok(svc) => svc
                .spec
                .ports
                .iter()
                .find(|p| Some(p.port) == r.port)
                .filter(|p| p.protocol.as_deref().is_some_and(|p| p != "TCP"))
                .map(|p| format!("UnsupportedProtocol: port {} is not TCP", p.port)),
        }
    }
}

pub fn backend_name(ns: &str, name: &str, port: u16) -> String {
    format!("{ns}/{name}:{port}")
}

fn selects(selector: &BTreeMap<String, String>, meta: &ObjectMeta) -> bool {
    selector.iter().all(|(k, v)| meta.labels.get(k) == Some(v))
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = svc
        .spec
        .cluster_ip
        .iter()
        .chain(&svc.spec.cluster_ips)
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn route_name(meta: &ObjectMeta) -> String {
    format!("{}/{}", meta.namespace(), meta.name)
}

fn backend_ref_name(r: &BackendRef, route_ns: &str) -> String {
    backend_name(
        r.namespace.as_deref().unwrap_or(route_ns),
        &r.name,
        r.port.unwrap_or_default(),
    )
}

/// Why a route's backend reference names no backend the proxies have: the Gateway API's
/// ResolvedRefs reason and its detail.
type Resolve<'r> = &'r dyn Fn(&BackendRef) -> Option<String>;

fn compile_filters(filters: &[FilterSpec], ns: &str, resolve: Resolve<'_>) -> Vec<Filter> {
    filters
        .iter()
        .filter_map(|f| {
            if let Some(m) = &f.request_header_modifier {
                return Some(Filter::RequestHeaderModifier(m.clone()));
            }
            if let Some(m) = &f.response_header_modifier {
                return Some(Filter::ResponseHeaderModifier(m.clone()));
            }
            if let Some(r) = &f.url_rewrite {
                return Some(Filter::UrlRewrite(r.clone()));
            }
            if let Some(r) = &f.request_redirect {
                return Some(Filter::RequestRedirect(r.clone()));
            }
            if let Some(c) = &f.cors {
                return Some(Filter::Cors(c.clone()));
            }
            // A mirror to nothing copies nothing.
            f.request_mirror
                .as_ref()
                .filter(|m| resolve(&m.backend_ref).is_none())
                .map(|m| {
                    let (numerator, denominator) = m.share();
                    Filter::RequestMirror {
                        backend: backend_ref_name(&m.backend_ref, ns),
                        numerator,
                        denominator,
                    }
                })
        })
        .collect()
}

fn compile_backends(refs: &[BackendRef], ns: &str, resolve: Resolve<'_>) -> Vec<WeightedBackend> {
    refs.iter()
        .map(|r| WeightedBackend {
            backend: backend_ref_name(r, ns),
            weight: r.weight.unwrap_or(1),
            filters: compile_filters(&r.filters, ns, resolve),
            unresolved: resolve(r),
        })
        .collect()
}

fn compile_http_route(r: &HttpRouteManifest, resolve: Resolve<'_>) -> HttpRoute {
    let ns = r.metadata.namespace();
    HttpRoute {
        name: route_name(&r.metadata),
        created: r.metadata.creation_timestamp.clone(),
        rules: r
            .spec
            .rules
            .iter()
            .map(|rule| RouteRule {
                name: rule.name.clone(),
                matches: rule.matches.clone(),
                filters: compile_filters(&rule.filters, ns, resolve),
                backends: compile_backends(&rule.backend_refs, ns, resolve),
                timeouts: rule.timeouts.clone().unwrap_or_default(),
                retry: rule.retry.as_ref().map(|retry| config::Retry {
                    codes: retry.codes.clone(),
                    grpc_codes: vec![],
                    attempts: retry.attempts.unwrap_or(2),
                    backoff: retry.backoff.unwrap_or_else(default_backoff),
                }),
            })
            .collect(),
    }
}

fn compile_grpc_route(r: &GrpcRouteManifest, resolve: Resolve<'_>) -> HttpRoute {
    let ns = r.metadata.namespace();
    // Validation already reported any problem in the annotations.
    let (retry, timeouts) = grpc_route_extras(&r.metadata, &mut Problems::default());
    HttpRoute {
        name: route_name(&r.metadata),
        created: r.metadata.creation_timestamp.clone(),
        rules: r
            .spec
            .rules
            .iter()
            .map(|rule| RouteRule {
                name: rule.name.clone(),
                matches: rule
                    .matches
                    .iter()
                    .map(|m| HttpRouteMatch {
                        path: m.method.as_ref().map(|method| {
                            grpc_path(
                                method.kind,
                                method.service.as_deref(),
                                method.method.as_deref(),
                            )
                        }),
                        headers: m.headers.clone(),
                        query_params: vec![],
                        method: None,
                    })
                    .collect(),
                filters: compile_filters(&rule.filters, ns, resolve),
                backends: compile_backends(&rule.backend_refs, ns, resolve),
                timeouts: Timeouts { ..timeouts.clone() },
                retry: retry.clone(),
            })
            .collect(),
    }
}

/// A gRPC method match as a path match on `/<service>/<method>`.
fn grpc_path(kind: MatchType, service: Option<&str>, method: Option<&str>) -> PathMatch {
    match (kind, service, method) {
        (MatchType::Exact, Some(s), Some(m)) => PathMatch {
            kind: PathMatchType::Exact,
            value: format!("/{s}/{m}"),
        },
        (MatchType::Exact, Some(s), None) => PathMatch {
            kind: PathMatchType::PathPrefix,
            value: format!("/{s}"),
        },
        (MatchType::Exact, None, Some(m)) => PathMatch {
            kind: PathMatchType::RegularExpression,
            value: format!("/[^/]+/{}", regex::escape(m)),
        },
        (MatchType::RegularExpression, s, m) => PathMatch {
            kind: PathMatchType::RegularExpression,
            value: format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        },
        (MatchType::Exact, None, None) => PathMatch {
            kind: PathMatchType::PathPrefix,
            value: "/".into(),
        },
    }
}

/// A config's version: a short digest of its content, the first 16 hex digits of the SHA-256
/// of its JSON, so that every process and every build (replicas, restarts, upgrades) gives
/// the same content the same version. A config that cannot be written as JSON (none can,
/// with these types; it would not reach a proxy either) gets a version that says so.
pub fn digest(config: &ProxyConfig) -> String {
    struct Sha256(ring::digest::Context);
    impl std::io::Write for Sha256 {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sha = Sha256(ring::digest::Context::new(&ring::digest::SHA256));
    if let Err(e) = serde_json::to_writer(&mut sha, config) {
        tracing::error!(error = %e, "a compiled config cannot be written as JSON");
        return format!("unserializable: {e}");
    }
    sha.0.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::resources::{check::check, parse_file};

    const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  selector: {app: reviews, version: v2}
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}, annotations: {weft.dev/inject: enabled}}
spec: {serviceAccountName: reviews, containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 127.0.10.2}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: shop, labels: {app: reviews, version: v2}}
spec: {containers: [{name: app, ports: [{name: http, containerPort: 9080}]}]}
status: {podIP: 127.0.10.3}
---
apiVersion: v1
kind: Pod
metadata: {name: unready, namespace: shop, labels: {app: reviews}}
spec: {containers: []}
status: {podIP: 127.0.10.9, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: reviews, port: 9080}]
  rules:
    - backendRefs: [{name: reviews, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: web}
spec:
  parentRefs: [{kind: Service, name: reviews, namespace: shop}]
  rules: [{backendRefs: [{name: reviews-v2, namespace: shop, port: 9080}]}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: BackendPolicy
metadata: {name: reviews, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: reviews}]
  loadBalancer: {type: RoundRobin}
"#;

    fn compiled(client_ns: &str) -> ProxyConfig {
        let (manifests, errors) = parse_file("mesh.yaml", MESH);
        assert!(errors.is_empty(), "{errors:?}");
        let checked = check(manifests);
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        let config = Index::new(&checked.accepted)
            .compile(&Target::namespace(client_ns), &MeshSettings::default());
        config.validate().unwrap_or_else(|e| panic!("{e:?}"));
        config
    }

    /// The mesh's outbound traffic policy, unless the proxy's Namespace annotates its own;
    /// the default is left out of the config, so that its version is as it was before.
    #[test]
    fn a_namespace_annotation_overrides_the_mesh_outbound_policy() {
        use OutboundTrafficPolicy::{AllowAny, RegistryOnly};
        let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, annotations: {weft.dev/outbound-traffic-policy: ALLOW_ANY}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
        let (manifests, errors) = parse_file("mesh.yaml", &format!("{MESH}---\n{namespaces}"));
        assert!(errors.is_empty(), "{errors:?}");
        let checked = check(manifests);
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        let index = Index::new(&checked.accepted);
        let registry_only = MeshSettings {
            outbound_traffic_policy: RegistryOnly,
            ..MeshSettings::default()
        };
        let policy = |ns: &str, mesh: &MeshSettings| {
            index
                .compile(&Target::namespace(ns), mesh)
                .outbound
                .traffic_policy
        };
        assert_eq!(policy("shop", &registry_only), RegistryOnly);
        assert_eq!(policy("web", &registry_only), AllowAny);
        assert_eq!(policy("shop", &MeshSettings::default()), AllowAny);
        let default = index.compile(&Target::namespace("shop"), &MeshSettings::default());
        assert_eq!(default.version, compiled("shop").version);
        let json = serde_json::to_string(&default).unwrap();
        assert!(!json.contains("outbound"), "{json}");
    }

    #[test]
    fn services_become_destinations_with_pod_endpoints() {
        let config = compiled("shop");
        let reviews = config
            .backends
            .iter()
            .find(|b| b.name == "shop/reviews:9080")
            .unwrap();
        let addrs: Vec<String> = reviews
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["127.0.10.2:8080", "127.0.10.3:9080"],
            "named target ports resolve per pod; unready pods are left out"
        );
        assert_eq!(
            reviews.endpoints[0].mesh.as_ref().unwrap().identity,
            "spiffe://cluster.local/ns/shop/sa/reviews"
        );
        assert!(
            reviews.endpoints[1].mesh.is_none(),
            "a pod without a sidecar is reached directly"
        );
        assert_eq!(
            reviews.policy.load_balancer.as_ref().unwrap().kind,
            weft_api::config::policy::LoadBalancerType::RoundRobin
        );
        let svc = config
            .services
            .iter()
            .find(|s| s.name == "reviews")
            .unwrap();
        assert_eq!(svc.cluster_ips, ["10.96.0.20".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace() {
        let from_shop = compiled("shop");
        let route = |c: &ProxyConfig| {
            let svc = c.services.iter().find(|s| s.name == "reviews").unwrap();
            svc.ports[0]
                .routes
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(route(&from_shop), ["shop/split"]);
        assert_eq!(route(&compiled("web")), ["web/mine"]);
        assert_eq!(route(&compiled("other")), ["shop/split"]);
        let split = &from_shop
            .services
            .iter()
            .find(|s| s.name == "reviews")
            .unwrap()
            .ports[0]
            .routes[0];
        let weights: Vec<(String, u32)> = split.rules[0]
            .backends
            .iter()
            .map(|b| (b.backend.clone(), b.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("shop/reviews:9080".into(), 90),
                ("shop/reviews-v2:9080".into(), 10)
            ]
        );
    }

    #[test]
    fn the_version_follows_the_content() {
        assert_eq!(compiled("shop").version, compiled("shop").version);
        assert_ne!(compiled("shop").version, compiled("web").version);
    }

    #[test]
    fn grpc_methods_become_path_matches() {
        let exact = grpc_path(MatchType::Exact, Some("pkg.Echo"), Some("Unary"));
        assert_eq!(
            (exact.kind, exact.value.as_str()),
            (PathMatchType::Exact, "/pkg.Echo/Unary")
        );
        let service = grpc_path(MatchType::Exact, Some("pkg.Echo"), None);
        assert_eq!(
            (service.kind, service.value.as_str()),
            (PathMatchType::PathPrefix, "/pkg.Echo")
        );
        let method = grpc_path(MatchType::Exact, None, Some("Get.All"));
        assert_eq!(method.value, r"/[^/]+/Get\.All");
    }
}

#[cfg(test)]
mod server_policy_tests {
    use super::*;
    use weft_api::resources::{check::check, parse_file};

    const PODS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-1, namespace: shop, labels: {app: reviews}, annotations: {weft.dev/inject: enabled}}
spec: {serviceAccountName: reviews, containers: [{name: app}]}
status: {podIP: 127.0.10.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}, annotations: {weft.dev/inject: enabled}}
spec: {serviceAccountName: web, containers: [{name: app}]}
status: {podIP: 127.0.10.4}
---
apiVersion: policy.weft.dev/v1alpha1
kind: ServerPolicy
metadata: {name: b-reviews-plain, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  ports: [8080]
  mtls: DISABLE
---
apiVersion: policy.weft.dev/v1alpha1
kind: ServerPolicy
metadata: {name: a-everyone, namespace: shop}
spec:
  mtls: STRICT
  rules: [{action: Deny, to: {paths: [/admin*]}}]
---
apiVersion: policy.weft.dev/v1alpha1
kind: ServerPolicy
metadata: {name: elsewhere, namespace: web}
spec: {mtls: STRICT}
"#;

    fn index_of(yaml: &str) -> Vec<Manifest> {
        let (manifests, errors) = parse_file("pods.yaml", yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let checked = check(manifests);
        assert!(checked.errors.is_empty(), "{:?}", checked.errors);
        checked.accepted
    }

    #[test]
    fn policies_follow_pod_labels_and_disable_turns_peers_to_plaintext() {
        let accepted = index_of(PODS);
        let index = Index::new(&accepted);
        let names = |t: &Target| -> Vec<String> {
            index
                .inbound_policies(t)
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        let by_name = Target {
            pod_name: Some("reviews-1".into()),
            ..Target::namespace("shop")
        };
        let by_ip = Target {
            pod_ip: Some("127.0.10.4".parse().unwrap()),
            ..Target::namespace("shop")
        };
        assert_eq!(names(&by_name), ["shop/a-everyone", "shop/b-reviews-plain"]);
        assert_eq!(names(&by_ip), ["shop/a-everyone"]);
        assert!(names(&Target::namespace("shop")).is_empty());

        let config = index.compile(&by_name, &MeshSettings::default());
        config.validate().unwrap();
        let shared = index.compile(&Target::namespace("shop"), &MeshSettings::default());
        assert_ne!(
            config.version, shared.version,
            "the policies are in the version"
        );
        // Port 8080 of reviews-1 is DISABLE: its clients send plaintext.
        let mesh = config.backends[0].endpoints[0].mesh.as_ref().unwrap();
        assert_eq!(
            (mesh.identity.as_str(), mesh.tls),
            ("spiffe://cluster.local/ns/shop/sa/reviews", false)
        );
        // The port-specific policy wins on 8080, the catch-all elsewhere.
        let policies = &config.inbound.policies;
        assert_eq!(
            ServerPolicy::for_port(policies, 8080).map(|(_, p)| p.mtls),
            Some(MtlsMode::Disable)
        );
        assert_eq!(
            ServerPolicy::for_port(policies, 9090).map(|(_, p)| p.mtls),
            Some(MtlsMode::Strict)
        );
    }
}
