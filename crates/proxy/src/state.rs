//! The config in force: an immutable [`Snapshot`] compiled from a [`ProxyConfig`], swapped
//! atomically as a whole.
//!
//! A connection or request loads the snapshot once and keeps it until it ends, so a swap
//! never changes the rules under a request in flight. The snapshot indexes Services by every
//! name an application may use and by cluster IP and port.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use weft_api::config::{self, Filter, ProxyConfig, Retry};
use weft_api::gateway::{HttpRouteMatch, RequestRedirect, UrlRewrite};

use crate::authz::{InboundPolicy, RateBuckets};
use crate::backends::{Backend, Registry};
use crate::cors::Cors;
use crate::filters::HeaderModifier;
use crate::map::FastMap;
use crate::metrics::{Direction, Metrics, Name, RequestStats, RouteId};
use crate::routing::{Origin, Router};
use crate::upstream::Dial;

/// The config in force, shared by every task.
pub type State = Arc<ArcSwap<Snapshot>>;

/// A compiled config.
pub struct Snapshot {
    pub config: ProxyConfig,
    pub version: Arc<str>,
    /// When it was compiled: when it came into force.
    pub built_at: std::time::SystemTime,
    by_host: FastMap<Box<str>, Vec<(u16, Arc<Destination>)>>,
    by_vip: FastMap<SocketAddr, Arc<Destination>>,
    backends: Vec<Arc<Backend>>,
    /// The hosts of every endpoint the config knows, by address: for a meshed pod, its
    /// sidecar.
    hosts: FastMap<IpAddr, Option<Sidecar>>,
    pub inbound_opaque_ports: BTreeSet<u16>,
    /// The ServerPolicies, in the config's order.
    inbound_policies: Vec<Arc<InboundPolicy>>,
}

/// A meshed pod's sidecar: its inbound port, and the identity it presents when it takes mesh
/// TLS.
type Sidecar = (u16, Option<Arc<str>>);

/// One Service port: what a request for it means.
pub struct Destination {
    /// `<namespace>/<name>:<port>`.
    pub name: Name,
    pub port: u16,
    pub protocol: config::Protocol,
    /// The Service's own backend, where CONNECT tunnels and the default route go.
    pub backend: Arc<Backend>,
    /// With routes attached: the rules, by precedence. A request that matches none gets 404.
    pub router: Option<Router<Arc<Rule>>>,
    /// Without routes: everything goes to `backend`.
    pub default_rule: Arc<Rule>,
}

/// What a matched rule does with a request.
pub struct Rule {
    /// `<namespace>/<route>`, or `default`, and the rule's name if it has one: the `route`
    /// and `rule` labels of metrics.
    pub route: RouteId,
    pub backends: Vec<Arc<Backend>>,
    /// One per backend, and one more after them when references that name no backend have
    /// weight: their share.
    pub weights: Vec<u32>,
    /// The request metrics per backend (same order), resolved at the first request.
    stats: Vec<OnceLock<RequestStats>>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub rewrite: Option<UrlRewrite>,
    /// Answers every request with a redirect, and `backends` are not asked.
    pub redirect: Option<RequestRedirect>,
    /// Answers preflights and marks the answers to actual requests.
    pub cors: Option<Cors>,
    /// The header modifiers of each backend (same order), after the rule's.
    pub backend_filters: Vec<BackendFilters>,
    /// Each mirror with its share: numerator, denominator.
    pub mirrors: Vec<(Arc<Backend>, u32, u32)>,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

impl Rule {
    fn default_for(backend: Arc<Backend>) -> Rule {
        Rule {
            route: RouteId::new("default"),
            backends: vec![backend],
            weights: vec![1],
            stats: vec![OnceLock::new()],
            request_headers: None,
            response_headers: None,
            rewrite: None,
            redirect: None,
            cors: None,
            backend_filters: vec![BackendFilters::default()],
            mirrors: Vec::new(),
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        }
    }

    fn compile(
        route: &config::HttpRoute,
        rule: &config::RouteRule,
        backends: &HashMap<&str, Arc<Backend>>,
    ) -> Rule {
        let backend = |name: &str| backends.get(name).cloned();
        let mut out = Rule::default_for(Arc::new(Backend::placeholder()));
        out.route = RouteId {
            route: Name(route.name.as_str().into()),
            rule: rule.name.as_deref().map(|n| Name(n.into())),
        };
        out.backends.clear();
        out.weights.clear();
        out.backend_filters.clear();
        // The references that name no backend keep their share of the requests, as one last
        // weight with no backend: a request that draws it is answered 500 (`no-backend`).
        let mut unresolved = 0u32;
        for b in &rule.backends {
            match backend(&b.backend).filter(|_| b.unresolved.is_none()) {
                Some(backend) => {
                    out.backends.push(backend);
                    out.weights.push(b.weight);
                    out.backend_filters.push(BackendFilters::new(&b.filters));
                }
                None => unresolved = unresolved.saturating_add(b.weight),
            }
        }
        if unresolved > 0 {
            out.weights.push(unresolved);
        }
        for f in &rule.filters {
            match f {
                Filter::RequestRedirect(r) => out.redirect = Some(r.clone()),
                Filter::Cors(c) => out.cors = Some(Cors::new(c)),
                Filter::RequestHeaderModifier(m) => {
                    out.request_headers = Some(HeaderModifier::new(m))
                }
                Filter::ResponseHeaderModifier(m) => {
                    out.response_headers = Some(HeaderModifier::new(m))
                }
                Filter::UrlRewrite(r) => out.rewrite = Some(r.clone()),
                Filter::RequestMirror {
                    backend: name,
                    numerator,
                    denominator,
                } => {
                    if let Some(b) = backend(name) {
                        out.mirrors.push((b, *numerator, *denominator));
                    }
                }
            }
        }
        // A zero timeout means none, as in the Gateway API.
        out.request_timeout = rule.timeouts.request.map(|d| d.0).filter(|d| !d.is_zero());
        out.backend_timeout = rule
            .timeouts
            .backend_request
            .map(|d| d.0)
            .filter(|d| !d.is_zero());
        out.retry = rule.retry.clone();
        out.stats = out.backends.iter().map(|_| OnceLock::new()).collect();
        out
    }

    /// The request metrics for the backend at `index` (rules route outbound requests).
    pub fn stats(&self, index: usize, metrics: &Metrics) -> Option<&RequestStats> {
        let backend = self.backends.get(index)?;
        let cell = self.stats.get(index)?;
        Some(
            cell.get_or_init(|| {
                metrics.request_stats(Direction::Outbound, &self.route, &backend.name)
            }),
        )
    }
}

/// What a backend of a rule does to the requests sent to it and their responses.
#[derive(Default)]
pub struct BackendFilters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
}

impl BackendFilters {
    fn new(filters: &[Filter]) -> BackendFilters {
        let mut out = BackendFilters::default();
        for f in filters {
            match f {
                Filter::RequestHeaderModifier(m) => {
                    out.request_headers = Some(HeaderModifier::new(m))
                }
                Filter::ResponseHeaderModifier(m) => {
                    out.response_headers = Some(HeaderModifier::new(m))
                }
                // Validation allows a backend header modifiers only.
                Filter::UrlRewrite(_)
                | Filter::RequestMirror { .. }
                | Filter::RequestRedirect(_)
                | Filter::Cors(_) => {}
            }
        }
        out
    }
}

impl Snapshot {
    /// Compiles a validated config. `namespace` is the proxy's own: short Service names
    /// (`reviews`) resolve only there, as Kubernetes DNS search paths do. Backend and endpoint
    /// state comes from `registry`, and the inbound rate limits' buckets from `buckets`, so
    /// that they survive the swap.
    pub fn build(
        config: ProxyConfig,
        namespace: &str,
        registry: &Registry,
        buckets: &RateBuckets,
    ) -> Snapshot {
        let now = Instant::now();
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(registry.backend(b, now)))
            .collect();
        registry.prune();
        buckets.prune();
        let by_name: HashMap<&str, Arc<Backend>> =
            backends.iter().map(|b| (&*b.name.0, b.clone())).collect();

        let mut by_host: FastMap<Box<str>, Vec<(u16, Arc<Destination>)>> = FastMap::default();
        let mut by_vip = FastMap::default();
        for svc in &config.services {
            let hosts = service_hosts(&svc.name, &svc.namespace, &config.cluster_domain, namespace);
            for port in &svc.ports {
                // Validation guarantees the backend exists; a config that skipped it gets an
                // empty backend rather than a panic.
                let backend = by_name
                    .get(port.backend.as_str())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::placeholder()));
                let router =
                    (!port.routes.is_empty()).then(|| build_router(&port.routes, &by_name));
                let dest = Arc::new(Destination {
                    name: Name(format!("{}/{}:{}", svc.namespace, svc.name, port.port).into()),
                    port: port.port,
                    protocol: port.protocol,
                    default_rule: Arc::new(Rule::default_for(backend.clone())),
                    backend,
                    router,
                });
                for host in &hosts {
                    by_host
                        .entry(host.as_str().into())
                        .or_default()
                        .push((port.port, dest.clone()));
                }
                for ip in &svc.cluster_ips {
                    by_vip.insert(SocketAddr::new(*ip, port.port), dest.clone());
                }
            }
        }
        let mut hosts = FastMap::default();
        for endpoint in config.backends.iter().flat_map(|b| &b.endpoints) {
            let mesh = endpoint.mesh.as_ref().map(|mesh| {
                let identity = mesh.tls.then(|| mesh.identity.as_str().into());
                (mesh.inbound_port, identity)
            });
            // A pod that is another Service's endpoint too keeps its sidecar.
            let host = hosts.entry(endpoint.address.ip()).or_insert(None);
            if mesh.is_some() {
                *host = mesh;
            }
        }
        let inbound_policies = config
            .inbound
            .policies
            .iter()
            .map(|p| {
                let rate = p
                    .rate_limit
                    .as_ref()
                    .map(|r| buckets.bucket(&p.name, r.requests_per_second, r.burst, now));
                Arc::new(InboundPolicy::new(p.clone(), rate))
            })
            .collect();
        Snapshot {
            inbound_policies,
            version: config.version.as_str().into(),
            built_at: std::time::SystemTime::now(),
            inbound_opaque_ports: config.inbound.opaque_ports.clone(),
            config,
            by_host,
            by_vip,
            backends,
            hosts,
        }
    }

    /// How to reach an address and port that is no Service's, as it would be reached without
    /// a mesh: a meshed pod through its sidecar, with mesh TLS when it takes it, as a
    /// Service's endpoint would be; anything else straight. `None` when REGISTRY_ONLY refuses
    /// it: it is no endpoint's host.
    pub fn address_dial(&self, addr: SocketAddr) -> Option<Dial> {
        match self.hosts.get(&addr.ip()) {
            Some(Some((inbound, identity))) => {
                Some(Dial::through_sidecar(addr, *inbound, identity.clone()))
            }
            Some(None) => Some(Dial::Direct(addr)),
            None if self.config.outbound.traffic_policy
                == config::OutboundTrafficPolicy::RegistryOnly =>
            {
                None
            }
            None => Some(Dial::Direct(addr)),
        }
    }

    /// The ServerPolicy for an application port of this workload, if any selects it.
    pub fn inbound_policy(&self, port: u16) -> Option<&Arc<InboundPolicy>> {
        let (i, _) = config::ServerPolicy::for_port(&self.config.inbound.policies, port)?;
        self.inbound_policies.get(i)
    }

    /// The Service port at a virtual IP and port.
    pub fn by_vip(&self, addr: SocketAddr) -> Option<&Arc<Destination>> {
        self.by_vip.get(&addr)
    }

    /// The Service port an HTTP authority (`host[:port]`) names. A missing port means 80.
    pub fn by_authority(&self, authority: &str) -> Option<&Arc<Destination>> {
        let (host, port) = split_authority(authority)?;
        // Only an address starts with a digit or holds a colon: names skip the parse.
        let maybe_ip = host.starts_with(|c: char| c.is_ascii_digit()) || host.contains(':');
        if maybe_ip && let Ok(ip) = host.parse::<IpAddr>() {
            return self.by_vip(SocketAddr::new(ip, port));
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let ports = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(host.to_ascii_lowercase().as_str())?
        } else {
            self.by_host.get(host)?
        };
        ports.iter().find(|(p, _)| *p == port).map(|(_, d)| d)
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name.0 == name)
    }
}

/// The router of one Service port: every match of every rule, sharing its rule.
fn build_router(
    routes: &[config::HttpRoute],
    backends: &HashMap<&str, Arc<Backend>>,
) -> Router<Arc<Rule>> {
    let mut entries = Vec::new();
    for route in routes {
        for (r, rule) in route.rules.iter().enumerate() {
            let compiled = Arc::new(Rule::compile(route, rule, backends));
            let matches = if rule.matches.is_empty() {
                vec![HttpRouteMatch::default()]
            } else {
                rule.matches.clone()
            };
            for (index, m) in matches.into_iter().enumerate() {
                let origin = Origin {
                    created: route.created.clone(),
                    route: route.name.clone(),
                    rule: r,
                    index,
                };
                entries.push((origin, m, compiled.clone()));
            }
        }
    }
    Router::new(entries).unwrap_or_else(|e| {
        // Validation compiles every regular expression first; this is a config that skipped it.
        tracing::error!(error = %e, "a route's regular expression does not compile; its Service answers 404");
        Router::empty()
    })
}

/// Every name a Service answers to from a proxy in `own_namespace`.
fn service_hosts(name: &str, namespace: &str, domain: &str, own_namespace: &str) -> Vec<String> {
    let mut hosts = vec![
        format!("{name}.{namespace}.svc.{domain}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}"),
    ];
    if namespace == own_namespace {
        hosts.push(name.to_owned());
    }
    hosts
}

/// Splits `host[:port]`, `[v6]:port` or `[v6]`; the port defaults to 80.
fn split_authority(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Dial;

    fn snapshot() -> Snapshot {
        let config: ProxyConfig = serde_saphyr_free::parse();
        config.validate().unwrap();
        Snapshot::build(
            config,
            "shop",
            &Registry::default(),
            &RateBuckets::default(),
        )
    }

    /// The sample config, built in code so this crate's tests need no YAML parser.
    mod serde_saphyr_free {
        use weft_api::config::*;

        pub fn parse() -> ProxyConfig {
            let svc = |name: &str, ns: &str, vip: &str, port: u16| Service {
                name: name.into(),
                namespace: ns.into(),
                cluster_ips: vec![vip.parse().unwrap()],
                ports: vec![ServicePort {
                    port,
                    name: None,
                    protocol: Protocol::Detect,
                    backend: format!("{ns}/{name}:{port}"),
                    routes: vec![],
                }],
            };
            let backend = |name: String, addr: &str, meshed: bool| Backend {
                name,
                policy: Default::default(),
                endpoints: vec![Endpoint {
                    address: addr.parse().unwrap(),
                    mesh: meshed.then(|| MeshPeer {
                        identity: "spiffe://cluster.local/ns/shop/sa/x".into(),
                        inbound_port: 15143,
                        tls: true,
                    }),
                    pod: None,
                }],
            };
            ProxyConfig {
                version: "v1".into(),
                services: vec![
                    svc("reviews", "shop", "10.96.0.10", 9080),
                    svc("ratings", "data", "10.96.0.11", 80),
                ],
                backends: vec![
                    backend("shop/reviews:9080".into(), "127.0.10.1:9080", true),
                    backend("data/ratings:80".into(), "127.0.10.2:8080", false),
                ],
                ..ProxyConfig::default()
            }
        }
    }

    #[test]
    fn authorities_resolve_like_cluster_dns() {
        let s = snapshot();
        let cases = [
            ("reviews:9080", Some("shop/reviews:9080")),
            ("reviews.shop:9080", Some("shop/reviews:9080")),
            ("reviews.shop.svc:9080", Some("shop/reviews:9080")),
            (
                "reviews.shop.svc.cluster.local:9080",
                Some("shop/reviews:9080"),
            ),
            (
                "reviews.shop.svc.cluster.local.:9080",
                Some("shop/reviews:9080"),
            ),
            ("REVIEWS.Shop:9080", Some("shop/reviews:9080")),
            ("10.96.0.10:9080", Some("shop/reviews:9080")),
            ("reviews", None),
            ("reviews:80", None),
            // Short names resolve only in the proxy's own namespace.
            ("ratings", None),
            ("ratings.data", Some("data/ratings:80")),
            ("ratings.data:80", Some("data/ratings:80")),
            ("10.96.0.11", Some("data/ratings:80")),
            ("[::1]:80", None),
            ("reviews:notaport", None),
            ("", None),
        ];
        for (authority, want) in cases {
            let got = s.by_authority(authority).map(|d| &*d.name.0);
            assert_eq!(got, want, "{authority}");
        }
    }

    #[test]
    fn meshed_endpoints_are_dialled_through_their_proxy() {
        let s = snapshot();
        let reviews = s.by_vip("10.96.0.10:9080".parse().unwrap()).unwrap();
        assert_eq!(
            reviews.backend.endpoints[0].dial,
            Dial::Peer {
                proxy: "127.0.10.1:15143".parse().unwrap(),
                port: 9080,
                identity: Some("spiffe://cluster.local/ns/shop/sa/x".into()),
            }
        );
        let ratings = s.by_authority("ratings.data").unwrap();
        assert_eq!(
            ratings.backend.endpoints[0].dial,
            Dial::Direct("127.0.10.2:8080".parse().unwrap())
        );
    }

    /// Addresses that are no Service's: the registry's hosts are reached as their endpoints
    /// are, whatever the port; any other address straight, unless REGISTRY_ONLY refuses it.
    #[test]
    fn addresses_are_dialled_as_the_outbound_policy_says() {
        let build = |policy| {
            let mut config = serde_saphyr_free::parse();
            config.outbound.traffic_policy = policy;
            Snapshot::build(
                config,
                "shop",
                &Registry::default(),
                &RateBuckets::default(),
            )
        };
        let pod = Dial::Peer {
            proxy: "127.0.10.1:15143".parse().unwrap(),
            port: 8000,
            identity: Some("spiffe://cluster.local/ns/shop/sa/x".into()),
        };
        let endpoint = Dial::Direct("127.0.10.2:9999".parse().unwrap());
        let outside = Dial::Direct("192.0.2.1:80".parse().unwrap());
        for (policy, want_outside) in [
            (config::OutboundTrafficPolicy::AllowAny, Some(outside)),
            (config::OutboundTrafficPolicy::RegistryOnly, None),
        ] {
            let s = build(policy);
            let dial = |a: &str| s.address_dial(a.parse().unwrap());
            assert_eq!(dial("127.0.10.1:8000"), Some(pod.clone()), "{policy:?}");
            assert_eq!(
                dial("127.0.10.2:9999"),
                Some(endpoint.clone()),
                "{policy:?}"
            );
            assert_eq!(dial("192.0.2.1:80"), want_outside, "{policy:?}");
        }
    }

    #[test]
    fn split_authority_handles_every_form() {
        assert_eq!(split_authority("a:1"), Some(("a", 1)));
        assert_eq!(split_authority("a"), Some(("a", 80)));
        assert_eq!(split_authority("[::1]:8080"), Some(("::1", 8080)));
        assert_eq!(split_authority("[::1]"), Some(("::1", 80)));
        assert_eq!(split_authority("[::1"), None);
        assert_eq!(split_authority("[::1]x"), None);
    }
}
