//! Semantic and reference checks over a set of manifests: the second half of validation,
//! after parsing. A manifest that fails is rejected alone; the rest are accepted.
//!
//! References are checked against the accepted Services: a route's `parentRefs` and
//! `backendRefs`, and a policy's `targetRefs`, must name a Service (and port) that exists.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::core::{IntOrString, SERVICE_NAME_LABEL, Service};
use super::routes::{
    BackendRef, FilterSpec, GrpcRouteManifest, HttpRouteManifest, ParentRef, core_group,
    grpc_annotations,
};
use super::{Manifest, ManifestError, ObjectMeta, Resource, Subject};
use crate::config::route::{MAX_WEIGHT, Retry, Timeouts, default_backoff};
use crate::config::{OUTBOUND_TRAFFIC_POLICY_ANNOTATION, OutboundTrafficPolicy};
use crate::duration::Dur;
use crate::gateway::MatchType;
use crate::validate::{Problems, grpc_code, is_dns_label, is_dns_name};

/// The outcome of checking a set of manifests.
#[derive(Debug, Default)]
pub struct Checked {
    pub accepted: Vec<Manifest>,
    /// What rejected a manifest: it is not in `accepted`.
    pub errors: Vec<ManifestError>,
    /// References of accepted routes that name nothing there is (a parent, a backend, a
    /// mirror): the route serves without them. A parent that is not there holds no route; a
    /// backend's share of the rule's requests is answered 500 (gRPC: UNAVAILABLE); a mirror
    /// copies nothing. These are the Gateway API's `Accepted` (NoMatchingParent) and
    /// `ResolvedRefs` (BackendNotFound, InvalidKind) conditions turned false.
    pub unresolved: Vec<ManifestError>,
}

/// Checks every manifest; the accepted ones keep their order.
pub fn check(manifests: Vec<Manifest>) -> Checked {
    let mut out = Checked::default();
    let mut seen = HashMap::new();
    // Each cluster IP belongs to one Service, the first to claim it (as the API server
    // allocates them): a later one that names it again is refused, or the proxies would be
    // told two Services answer on one address.
    let mut allocated: HashMap<IpAddr, (String, String)> = HashMap::new();
    let mut candidates = Vec::new();
    for m in manifests {
        let key = m.resource.key();
        if let Some(first) = seen.get(&key) {
            out.errors.push(error(
                &m,
                "metadata.name",
                format!("{key} is already defined at {first}"),
            ));
            continue;
        }
        seen.insert(key, m.source.clone());
        let mut problems = Problems::default();
        check_one(&m.resource, &mut problems);
        if let (Resource::Service(svc), true) = (&m.resource, problems.is_empty()) {
            let ips = service_ips(svc);
            for (field, ip) in &ips {
                if let Some((owner, at)) = allocated.get(ip) {
                    problems.add(
                        *field,
                        format!("{ip} is already allocated to Service {owner} ({at})"),
                    );
                }
            }
            if problems.is_empty() {
                let owner = format!("{}/{}", svc.metadata.namespace(), svc.metadata.name);
                for (_, ip) in ips {
                    allocated.insert(ip, (owner.clone(), m.source.to_string()));
                }
            }
        }
        reject_or_keep(m, problems, &mut candidates, &mut out.errors);
    }
    // References resolve against the Services that were accepted.
    let services: HashMap<(String, String), &Service> = candidates
        .iter()
        .filter_map(|m: &Manifest| match &m.resource {
            Resource::Service(s) => Some((
                (s.metadata.namespace().to_owned(), s.metadata.name.clone()),
                s,
            )),
            _ => None,
        })
        .collect();
    let mut accepted = Vec::new();
    for m in &candidates {
        let mut problems = Problems::default();
        let mut unresolved = Problems::default();
        check_references(&m.resource, &services, &mut problems, &mut unresolved);
        let errors = |problems: Problems| {
            problems.into_vec().into_iter().map(|p| ManifestError {
                origin: m.source.clone(),
                path: p.path,
                message: p.message,
                subject: Subject::Resource(m.resource.key()),
            })
        };
        if problems.is_empty() {
            accepted.push(m.clone());
            out.unresolved.extend(errors(unresolved));
        } else {
            out.errors.extend(errors(problems));
        }
    }
    out.accepted = accepted;
    out
}

/// Why a backend reference names nothing that can take requests, at `field` of the
/// reference, with the Gateway API's `ResolvedRefs` reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: &'static str,
    pub field: &'static str,
    pub message: String,
}

/// Resolves a route's backend reference against the Services there are (`service` looks one
/// up by namespace and name).
pub fn resolve_backend<'a>(
    r: &BackendRef,
    route_ns: &str,
    service: impl Fn(&str, &str) -> Option<&'a Service>,
) -> Result<&'a Service, Unresolved> {
    if !r.names_a_service() {
        return Err(Unresolved {
            reason: "InvalidKind",
            field: "kind",
            message: "weft sends to Services only (group \"\", kind Service)".to_owned(),
        });
    }
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    let Some(svc) = service(ns, &r.name) else {
        return Err(Unresolved {
            reason: "BackendNotFound",
            field: "name",
            message: format!("no Service {ns}/{}", r.name),
        });
    };
    if let Some(port) = r.port
        && !svc.spec.ports.iter().any(|p| p.port == port)
    {
        return Err(Unresolved {
            reason: "BackendNotFound",
            field: "port",
            message: format!("Service {ns}/{} has no port {port}", r.name),
        });
    }
    Ok(svc)
}

/// The cluster IPs a Service names, with the field each is in.
fn service_ips(svc: &Service) -> Vec<(&'static str, IpAddr)> {
    let single = svc.spec.cluster_ip.iter().map(|ip| ("spec.clusterIP", ip));
    let many = svc
        .spec
        .cluster_ips
        .iter()
        .map(|ip| ("spec.clusterIPs", ip));
    let mut ips: Vec<(&'static str, IpAddr)> = single
        .chain(many)
        .filter_map(|(field, ip)| Some((field, ip.parse().ok()?)))
        .collect();
    ips.sort_by_key(|(_, ip)| *ip);
    ips.dedup_by_key(|(_, ip)| *ip);
    ips
}

fn reject_or_keep(
    m: Manifest,
    problems: Problems,
    keep: &mut Vec<Manifest>,
    errors: &mut Vec<ManifestError>,
) {
    if problems.is_empty() {
        keep.push(m);
    } else {
        errors.extend(problems.into_vec().into_iter().map(|p| ManifestError {
            origin: m.source.clone(),
            path: p.path,
            message: p.message,
            subject: Subject::Resource(m.resource.key()),
        }));
    }
}

fn error(m: &Manifest, path: &str, message: String) -> ManifestError {
    ManifestError {
        origin: m.source.clone(),
        path: path.to_owned(),
        message,
        subject: Subject::Resource(m.resource.key()),
    }
}

fn check_meta(meta: &ObjectMeta, problems: &mut Problems) {
    if meta.name.is_empty() {
        problems.add("metadata.name", "is required");
    } else if !is_dns_name(&meta.name) {
        problems.add(
            "metadata.name",
            format!(
                "{:?} is not a DNS subdomain (lowercase letters, digits, '-', '.')",
                meta.name
            ),
        );
    }
    if let Some(ns) = &meta.namespace
        && !is_dns_label(ns)
    {
        problems.add("metadata.namespace", format!("{ns:?} is not a DNS label"));
    }
}

fn check_one(resource: &Resource, problems: &mut Problems) {
    check_meta(resource.meta(), problems);
    match resource {
        Resource::Service(s) => check_service(s, problems),
        Resource::Pod(p) => {
            if let Some(ip) = &p.status.pod_ip
                && ip.parse::<IpAddr>().is_err()
            {
                problems.add("status.podIP", format!("{ip:?} is not an IP address"));
            }
        }
        Resource::EndpointSlice(e) => {
            if !e.metadata.labels.contains_key(SERVICE_NAME_LABEL) {
                problems.add(
                    "metadata.labels",
                    format!("needs the {SERVICE_NAME_LABEL} label naming its Service"),
                );
            }
            for (i, ep) in e.endpoints.iter().enumerate() {
                for (j, a) in ep.addresses.iter().enumerate() {
                    if a.parse::<IpAddr>().is_err() {
                        problems.add(
                            format!("endpoints[{i}].addresses[{j}]"),
                            format!("{a:?} is not an IP address"),
                        );
                    }
                }
            }
        }
        Resource::HttpRoute(r) => check_http_route(r, problems),
        Resource::GrpcRoute(r) => check_grpc_route(r, problems),
        Resource::BackendPolicy(p) => p.spec.validate("spec", problems),
        Resource::ServerPolicy(p) => p.spec.validate("spec", problems),
        Resource::Namespace(n) => {
            if !is_dns_label(&n.metadata.name) {
                problems.add(
                    "metadata.name",
                    format!("{:?} is not a DNS label", n.metadata.name),
                );
            }
            if let Some(value) = n
                .metadata
                .annotations
                .get(OUTBOUND_TRAFFIC_POLICY_ANNOTATION)
                && let Err(e) = value.parse::<OutboundTrafficPolicy>()
            {
                problems.add(
                    format!("metadata.annotations.{OUTBOUND_TRAFFIC_POLICY_ANNOTATION}"),
                    e,
                );
            }
        }
    }
}

fn check_service(s: &Service, problems: &mut Problems) {
    let mut ports = BTreeMap::new();
    for (i, p) in s.spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if p.port == 0 {
            problems.add(format!("{at}.port"), "must be between 1 and 65535");
        }
        if let Some(first) = ports.insert(p.port, i) {
            problems.add(
                format!("{at}.port"),
                format!("port {} is also spec.ports[{first}]", p.port),
            );
        }
        match &p.target_port {
            Some(IntOrString::Int(0)) => {
                problems.add(format!("{at}.targetPort"), "must be between 1 and 65535")
            }
            Some(IntOrString::String(name)) if !is_dns_label(name) => {
                problems.add(
                    format!("{at}.targetPort"),
                    format!("{name:?} is not a port name"),
                );
            }
            _ => {}
        }
    }
    for (i, ip) in s
        .spec
        .cluster_ip
        .iter()
        .chain(&s.spec.cluster_ips)
        .enumerate()
    {
        if !ip.is_empty() && ip != "None" && ip.parse::<IpAddr>().is_err() {
            problems.add(
                if i == 0 && s.spec.cluster_ip.is_some() {
                    "spec.clusterIP".to_owned()
                } else {
                    "spec.clusterIPs".to_owned()
                },
                format!("{ip:?} is not an IP address"),
            );
        }
    }
}

fn check_parent_refs(refs: &[ParentRef], problems: &mut Problems) {
    if refs.is_empty() {
        problems.add("spec.parentRefs", "must name at least one Service");
    }
    for (i, r) in refs.iter().enumerate() {
        if !core_group(r.group.as_deref()) || r.kind.as_deref() != Some("Service") {
            problems.add(
                format!("spec.parentRefs[{i}].kind"),
                "weft is a mesh: routes attach to Services (group \"\", kind Service), not Gateways",
            );
        }
        if r.section_name.is_some() {
            problems.add(
                format!("spec.parentRefs[{i}].sectionName"),
                "is not supported for Services; use port",
            );
        }
    }
}

/// The fields of a backend reference; what it names is resolved later ([`resolve_backend`]).
fn check_backend_ref(r: &BackendRef, at: &str, problems: &mut Problems) {
    if r.names_a_service() && r.port.is_none() {
        problems.add(format!("{at}.port"), "is required for a Service backend");
    }
    if r.port == Some(0) {
        problems.add(format!("{at}.port"), "must be between 1 and 65535");
    }
    if let Some(w) = r.weight
        && w > MAX_WEIGHT
    {
        problems.add(
            format!("{at}.weight"),
            format!("must be between 0 and {MAX_WEIGHT}"),
        );
    }
}

/// Where a list of filters stands: a rule's, or one backend's of a rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filters {
    Rule,
    Backend,
}

fn check_filters(
    filters: &[FilterSpec],
    at: &str,
    prefix_only: bool,
    grpc: bool,
    place: Filters,
    problems: &mut Problems,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (j, f) in filters.iter().enumerate() {
        let at = format!("{at}.filters[{j}]");
        let (field, present) = match f.kind.as_str() {
            "RequestHeaderModifier" => {
                ("requestHeaderModifier", f.request_header_modifier.is_some())
            }
            "ResponseHeaderModifier" => (
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            "URLRewrite" if !grpc && place == Filters::Rule => {
                ("urlRewrite", f.url_rewrite.is_some())
            }
            "RequestRedirect" if !grpc && place == Filters::Rule => {
                ("requestRedirect", f.request_redirect.is_some())
            }
            "RequestMirror" if place == Filters::Rule => {
                ("requestMirror", f.request_mirror.is_some())
            }
            "CORS" if !grpc && place == Filters::Rule => ("cors", f.cors.is_some()),
            "URLRewrite" | "RequestRedirect" | "CORS" if grpc => {
                problems.add(
                    format!("{at}.type"),
                    format!("a GRPCRoute has no {} filter", f.kind),
                );
                continue;
            }
            "URLRewrite" | "RequestRedirect" | "RequestMirror" | "CORS" => {
                problems.add(
                    format!("{at}.type"),
                    format!(
                        "{} in backendRefs[].filters is not supported by weft: put it in the rule's filters",
                        f.kind
                    ),
                );
                continue;
            }
            other => {
                problems.add(
                    format!("{at}.type"),
                    format!("filter {other:?} is not supported by weft"),
                );
                continue;
            }
        };
        if !present {
            problems.add(
                format!("{at}.{field}"),
                format!("is required with type {}", f.kind),
            );
        }
        // The Gateway API allows each of these once per list; mirrors may repeat.
        if f.kind != "RequestMirror" {
            if seen.contains(&f.kind.as_str()) {
                problems.add(
                    format!("{at}.type"),
                    format!("{} may appear only once", f.kind),
                );
            }
            seen.push(f.kind.as_str());
        }
        let set = [
            f.request_header_modifier.is_some(),
            f.response_header_modifier.is_some(),
            f.url_rewrite.is_some(),
            f.request_mirror.is_some(),
            f.request_redirect.is_some(),
            f.cors.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            problems.add(at.clone(), "sets more than the one field its type names");
        }
        if let Some(m) = &f.request_header_modifier {
            m.validate(&format!("{at}.requestHeaderModifier"), problems);
        }
        if let Some(m) = &f.response_header_modifier {
            m.validate(&format!("{at}.responseHeaderModifier"), problems);
        }
        if let Some(r) = &f.url_rewrite {
            r.validate(&format!("{at}.urlRewrite"), prefix_only, problems);
        }
        if let Some(r) = &f.request_redirect {
            r.validate(&format!("{at}.requestRedirect"), prefix_only, problems);
        }
        if let Some(c) = &f.cors {
            c.validate(&format!("{at}.cors"), problems);
        }
        if let Some(m) = &f.request_mirror {
            check_backend_ref(
                &m.backend_ref,
                &format!("{at}.requestMirror.backendRef"),
                problems,
            );
            if !m.backend_ref.filters.is_empty() {
                problems.add(
                    format!("{at}.requestMirror.backendRef.filters"),
                    "a mirror's backend takes no filters",
                );
            }
            if m.percent.is_some_and(|p| p > 100) {
                problems.add(
                    format!("{at}.requestMirror.percent"),
                    "must be between 0 and 100",
                );
            }
            if let Some(f) = &m.fraction {
                if m.percent.is_some() {
                    problems.add(
                        format!("{at}.requestMirror"),
                        "sets both percent and fraction; set one",
                    );
                }
                let denominator = f.denominator.unwrap_or(100);
                if denominator == 0 {
                    problems.add(
                        format!("{at}.requestMirror.fraction.denominator"),
                        "must be at least 1",
                    );
                }
                if f.numerator > denominator {
                    problems.add(
                        format!("{at}.requestMirror.fraction.numerator"),
                        "must not be greater than the denominator",
                    );
                }
            }
        }
    }
    if seen.contains(&"RequestRedirect") && seen.contains(&"URLRewrite") {
        problems.add(
            format!("{at}.filters"),
            "RequestRedirect and URLRewrite cannot both be set",
        );
    }
}

/// A rule's backend references, their own filters included.
fn check_rule_backends(
    refs: &[BackendRef],
    at: &str,
    prefix_only: bool,
    grpc: bool,
    problems: &mut Problems,
) {
    for (j, b) in refs.iter().enumerate() {
        let at = format!("{at}.backendRefs[{j}]");
        check_backend_ref(b, &at, problems);
        check_filters(
            &b.filters,
            &at,
            prefix_only,
            grpc,
            Filters::Backend,
            problems,
        );
    }
}

/// Rule names: each a DNS label, none twice in a route.
fn check_rule_names<'a>(names: impl Iterator<Item = Option<&'a String>>, problems: &mut Problems) {
    let mut seen = Vec::new();
    for (i, name) in names.enumerate() {
        let Some(name) = name else { continue };
        let at = format!("spec.rules[{i}].name");
        if !is_dns_label(name) {
            problems.add(at.clone(), format!("{name:?} is not a DNS label"));
        }
        if seen.contains(&name) {
            problems.add(at, format!("{name:?} names another rule of this route"));
        }
        seen.push(name);
    }
}

fn check_http_route(r: &HttpRouteManifest, problems: &mut Problems) {
    check_parent_refs(&r.spec.parent_refs, problems);
    check_rule_names(r.spec.rules.iter().map(|r| r.name.as_ref()), problems);
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            m.validate(&format!("{at}.matches[{j}]"), problems);
        }
        // What ReplacePrefixMatch needs: one match, by path prefix.
        let prefix_only = rule.matches.len() == 1
            && rule.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.kind == crate::gateway::PathMatchType::PathPrefix)
            });
        check_filters(
            &rule.filters,
            &at,
            prefix_only,
            false,
            Filters::Rule,
            problems,
        );
        check_rule_backends(&rule.backend_refs, &at, prefix_only, false, problems);
        if !rule.backend_refs.is_empty() && rule.filters.iter().any(|f| f.kind == "RequestRedirect")
        {
            problems.add(
                format!("{at}.backendRefs"),
                "a rule that redirects sends nothing to backends: remove them or the RequestRedirect",
            );
        }
        if let Some(retry) = &rule.retry {
            // GEP-1731 as of v1.6: the codes are a set, and a retry policy retries.
            for (j, code) in retry.codes.iter().enumerate() {
                if retry.codes[..j].contains(code) {
                    problems.add(
                        format!("{at}.retry.codes[{j}]"),
                        format!("{code} is listed twice"),
                    );
                }
            }
            if retry.attempts == Some(0) {
                problems.add(format!("{at}.retry.attempts"), "must be at least 1");
            }
            Retry {
                codes: retry.codes.clone(),
                grpc_codes: vec![],
                attempts: retry.attempts.unwrap_or(2),
                backoff: retry.backoff.unwrap_or_else(default_backoff),
            }
            .validate(&format!("{at}.retry"), problems);
        }
        if let Some(t) = &rule.timeouts {
            check_timeouts(t, &format!("{at}.timeouts"), problems);
        }
    }
}

fn check_timeouts(t: &Timeouts, at: &str, problems: &mut Problems) {
    if let (Some(req), Some(per_try)) = (t.request, t.backend_request)
        && per_try > req
        && !req.0.is_zero()
    {
        problems.add(
            format!("{at}.backendRequest"),
            "must not be longer than request",
        );
    }
}

fn check_grpc_route(r: &GrpcRouteManifest, problems: &mut Problems) {
    check_parent_refs(&r.spec.parent_refs, problems);
    check_rule_names(r.spec.rules.iter().map(|r| r.name.as_ref()), problems);
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(method) = &m.method {
                if method.service.is_none() && method.method.is_none() {
                    problems.add(format!("{at}.method"), "needs a service, a method, or both");
                }
                for (field, v) in [("service", &method.service), ("method", &method.method)] {
                    let Some(v) = v else { continue };
                    match method.kind {
                        MatchType::Exact if v.is_empty() || v.contains('/') => {
                            problems.add(
                                format!("{at}.method.{field}"),
                                format!("{v:?} is not a gRPC {field} name"),
                            );
                        }
                        MatchType::RegularExpression if regex::Regex::new(v).is_err() => {
                            problems
                                .add(format!("{at}.method.{field}"), "invalid regular expression");
                        }
                        _ => {}
                    }
                }
            }
            let as_http = crate::gateway::HttpRouteMatch {
                headers: m.headers.clone(),
                ..Default::default()
            };
            as_http.validate(&at, problems);
        }
        check_filters(&rule.filters, &at, false, true, Filters::Rule, problems);
        check_rule_backends(&rule.backend_refs, &at, false, true, problems);
    }
    let (retry, timeouts) = grpc_route_extras(&r.metadata, problems);
    if let Some(retry) = retry {
        retry.validate(
            &format!("metadata.annotations[{}]", grpc_annotations::RETRY_CODES),
            problems,
        );
    }
    check_timeouts(&timeouts, "metadata.annotations", problems);
}

/// The retry and timeouts a GRPCRoute's annotations ask for; problems are reported at the
/// annotation.
pub fn grpc_route_extras(meta: &ObjectMeta, problems: &mut Problems) -> (Option<Retry>, Timeouts) {
    use grpc_annotations::*;
    let at = |key: &str| format!("metadata.annotations[{key}]");
    let dur = |key: &str, problems: &mut Problems| -> Option<Dur> {
        let v = meta.annotations.get(key)?;
        v.parse()
            .map_err(|e| problems.add(at(key), format!("{e}")))
            .ok()
    };
    let timeouts = Timeouts {
        request: dur(TIMEOUT_REQUEST, problems),
        backend_request: dur(TIMEOUT_BACKEND_REQUEST, problems),
    };
    let retry = meta.annotations.get(RETRY_CODES).map(|codes| {
        let mut grpc_codes = Vec::new();
        for name in codes.split(',').filter(|c| !c.trim().is_empty()) {
            match grpc_code(name) {
                Some(0) | None => problems.add(
                    at(RETRY_CODES),
                    format!("{:?} is not a gRPC error code", name.trim()),
                ),
                Some(code) => grpc_codes.push(code),
            }
        }
        let attempts = match meta.annotations.get(RETRY_ATTEMPTS) {
            None => 2,
            Some(a) => a.trim().parse().unwrap_or_else(|_| {
                problems.add(at(RETRY_ATTEMPTS), format!("{a:?} is not a number"));
                2
            }),
        };
        Retry {
            codes: vec![],
            grpc_codes,
            attempts,
            backoff: dur(RETRY_BACKOFF, problems).unwrap_or_else(default_backoff),
        }
    });
    if retry.is_none() {
        for key in [RETRY_ATTEMPTS, RETRY_BACKOFF] {
            if meta.annotations.contains_key(key) {
                problems.add(at(key), format!("needs {RETRY_CODES} too"));
            }
        }
    }
    (retry, timeouts)
}

/// The references of a manifest: what rejects it goes to `problems`, what the route serves
/// without to `unresolved`.
fn check_references(
    resource: &Resource,
    services: &HashMap<(String, String), &Service>,
    problems: &mut Problems,
    unresolved: &mut Problems,
) {
    let ns = resource.meta().namespace();
    let service = |ns: &str, name: &str| services.get(&(ns.to_owned(), name.to_owned())).copied();
    let parent = |refs: &[ParentRef], unresolved: &mut Problems| {
        for (i, r) in refs.iter().enumerate() {
            let target_ns = r.namespace.as_deref().unwrap_or(ns);
            match service(target_ns, &r.name) {
                None => unresolved.add(
                    format!("spec.parentRefs[{i}].name"),
                    format!("no Service {target_ns}/{}", r.name),
                ),
                Some(svc) => {
                    if let Some(port) = r.port
                        && !svc.spec.ports.iter().any(|p| p.port == port)
                    {
                        unresolved.add(
                            format!("spec.parentRefs[{i}].port"),
                            format!("Service {target_ns}/{} has no port {port}", r.name),
                        );
                    }
                }
            }
        }
    };
    let backend = |r: &BackendRef, at: String, unresolved: &mut Problems| {
        if let Err(e) = resolve_backend(r, ns, service) {
            unresolved.add(format!("{at}.{}", e.field), e.message);
        }
    };
    let filters = |filters: &[FilterSpec], at: &str, unresolved: &mut Problems| {
        for (j, f) in filters.iter().enumerate() {
            if let Some(m) = &f.request_mirror {
                backend(
                    &m.backend_ref,
                    format!("{at}.filters[{j}].requestMirror.backendRef"),
                    unresolved,
                );
            }
        }
    };
    let rule =
        |i: usize, refs: &[BackendRef], rule_filters: &[FilterSpec], unresolved: &mut Problems| {
            let at = format!("spec.rules[{i}]");
            for (j, b) in refs.iter().enumerate() {
                backend(b, format!("{at}.backendRefs[{j}]"), unresolved);
            }
            filters(rule_filters, &at, unresolved);
        };
    match resource {
        Resource::HttpRoute(r) => {
            parent(&r.spec.parent_refs, unresolved);
            for (i, x) in r.spec.rules.iter().enumerate() {
                rule(i, &x.backend_refs, &x.filters, unresolved);
            }
        }
        Resource::GrpcRoute(r) => {
            parent(&r.spec.parent_refs, unresolved);
            for (i, x) in r.spec.rules.iter().enumerate() {
                rule(i, &x.backend_refs, &x.filters, unresolved);
            }
        }
        Resource::BackendPolicy(p) => {
            for (i, t) in p.spec.target_refs.iter().enumerate() {
                if !services.contains_key(&(ns.to_owned(), t.name.clone())) {
                    problems.add(
                        format!("spec.targetRefs[{i}].name"),
                        format!("no Service {ns}/{}", t.name),
                    );
                }
            }
        }
        Resource::Service(_)
        | Resource::Pod(_)
        | Resource::EndpointSlice(_)
        | Resource::ServerPolicy(_)
        | Resource::Namespace(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_file;
    use super::*;

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec: {selector: {app: reviews, version: v2}, ports: [{port: 9080}]}
"#;

    fn checked(extra: &str) -> (Vec<ManifestError>, Checked) {
        let (mut manifests, mut errors) = parse_file("base.yaml", SERVICES);
        let (more, more_errors) = parse_file("test.yaml", extra);
        manifests.extend(more);
        errors.extend(more_errors);
        (errors, check(manifests))
    }

    fn errors_of(extra: &str) -> Vec<String> {
        let (mut errors, checked) = checked(extra);
        errors.extend(checked.errors);
        errors.iter().map(ToString::to_string).collect()
    }

    /// References that name nothing keep the route: accepted, with each one said.
    #[test]
    fn unresolved_references_leave_the_route_accepted() {
        let cases = [
            (
                "    - backendRefs: [{name: ghost, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].name: no Service shop/ghost",
            ),
            (
                "    - backendRefs: [{name: reviews, port: 1234}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].port: Service shop/reviews has no port 1234",
            ),
            (
                "    - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].kind: weft sends to Services only",
            ),
            (
                "    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: ghost, port: 1}}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestMirror.backendRef.name: no Service shop/ghost",
            ),
        ];
        for (rules, want) in cases {
            let (errors, checked) = checked(&route(rules));
            assert!(
                errors.is_empty() && checked.errors.is_empty(),
                "{rules}: {errors:?} {:?}",
                checked.errors
            );
            assert_eq!(checked.accepted.len(), 3, "{rules}: the route is accepted");
            let got: Vec<String> = checked.unresolved.iter().map(ToString::to_string).collect();
            assert!(
                got.len() == 1 && got[0].starts_with(want),
                "want {want:?}\n got {got:#?}"
            );
        }
        let (_, checked) = checked(
            &route("    - backendRefs: [{name: reviews, port: 9080}]\n").replace(
                "name: reviews, port: 9080}]\n  rules",
                "name: reviews, port: 9080}, {kind: Service, name: gone}]\n  rules",
            ),
        );
        assert_eq!(checked.accepted.len(), 3);
        assert_eq!(
            checked.unresolved[0].to_string(),
            "test.yaml:1:spec.parentRefs[1].name: no Service shop/gone"
        );
    }

    fn route(rules: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: reviews, port: 9080}}]\n  rules:\n{rules}"
        )
    }

    #[test]
    fn every_invalid_field_is_named() {
        let cases: &[(&str, &str)] = &[
            (
                "    - backendRefs: [{name: reviews, port: 9080, weight: -5}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].weight: invalid value: integer `-5`",
            ),
            (
                "    - matches: [{path: {type: RegularExpression, value: '/a('}}]\n",
                "test.yaml:1:spec.rules[0].matches[0].path.value: invalid regular expression",
            ),
            (
                "    - timeouts: {request: 10 seconds}\n",
                "test.yaml:1:spec.rules[0].timeouts.request: invalid duration",
            ),
            (
                "    - retry: {codes: [200, 503]}\n",
                "test.yaml:1:spec.rules[0].retry.codes[0]: 200 is not a status code between 400 and 599",
            ),
            (
                "    - retry: {codes: [600]}\n",
                "test.yaml:1:spec.rules[0].retry.codes[0]: 600 is not a status code",
            ),
            (
                "    - backendRefs: [{name: reviews}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].port: is required",
            ),
            (
                "    - name: a\n      backendRefs: [{name: reviews, port: 9080}]\n    - name: a\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[1].name: \"a\" names another rule of this route",
            ),
            (
                "    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews, port: 9080}, fraction: {numerator: 3, denominator: 2}}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestMirror.fraction.numerator: must not be greater than the denominator",
            ),
            (
                "    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews, port: 9080}, percent: 5, fraction: {numerator: 1}}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestMirror: sets both percent and fraction",
            ),
            (
                "    - retry: {codes: [503, 503]}\n",
                "test.yaml:1:spec.rules[0].retry.codes[1]: 503 is listed twice",
            ),
            (
                "    - retry: {attempts: 0}\n",
                "test.yaml:1:spec.rules[0].retry.attempts: must be at least 1",
            ),
            (
                "    - filters: [{type: CORS, cors: {allowOrigins: ['*', 'https://a.org']}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].filters[0].cors.allowOrigins: `*` must be the only entry",
            ),
            (
                "    - filters: [{type: CORS, cors: {allowOrigins: ['ftp://a.org']}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].filters[0].cors.allowOrigins[0]: \"ftp://a.org\" is not an origin",
            ),
            (
                "    - filters: [{type: CORS, cors: {allowCredentials: true, exposeHeaders: ['*']}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].filters[0].cors.exposeHeaders: `*` is not allowed with allowCredentials",
            ),
            (
                "    - filters: [{type: ExternalAuth}]\n",
                "test.yaml:1:spec.rules[0].filters[0].type: filter \"ExternalAuth\" is not supported by weft",
            ),
            (
                "    - filters: [{type: RequestRedirect}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestRedirect: is required with type RequestRedirect",
            ),
            (
                "    - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestRedirect.statusCode: 304 is not one of 301, 302, 303, 307 and 308",
            ),
            (
                "    - filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestRedirect.scheme: \"ftp\" is not http or https",
            ),
            (
                "    - filters: [{type: RequestRedirect, requestRedirect: {hostname: 'a.org:80'}}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestRedirect.hostname: \"a.org:80\" is not a hostname",
            ),
            (
                "    - filters: [{type: RequestRedirect, requestRedirect: {hostname: a.org}}]\n      backendRefs: [{name: reviews, port: 9080}]\n",
                "test.yaml:1:spec.rules[0].backendRefs: a rule that redirects sends nothing to backends",
            ),
            (
                "    - filters: [{type: RequestRedirect, requestRedirect: {hostname: a.org}}, {type: URLRewrite, urlRewrite: {hostname: b}}]\n",
                "test.yaml:1:spec.rules[0].filters: RequestRedirect and URLRewrite cannot both be set",
            ),
            (
                "    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}, {type: RequestHeaderModifier, requestHeaderModifier: {remove: [b]}}]\n",
                "test.yaml:1:spec.rules[0].filters[1].type: RequestHeaderModifier may appear only once",
            ),
            (
                "    - matches: [{path: {value: /a}}, {path: {value: /b}}]\n      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /c}}}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestRedirect.path.type: ReplacePrefixMatch needs the rule to have exactly one match, a PathPrefix match",
            ),
            (
                "    - backendRefs: [{name: reviews, port: 9080, filters: [{type: RequestRedirect, requestRedirect: {hostname: a.org}}]}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].filters[0].type: RequestRedirect in backendRefs[].filters is not supported by weft",
            ),
            (
                "    - filters: [{type: RequestHeaderModifier}]\n",
                "test.yaml:1:spec.rules[0].filters[0].requestHeaderModifier: is required",
            ),
            (
                "    - backendRefs: [{name: reviews, port: 9080, weight: 2000000}]\n",
                "test.yaml:1:spec.rules[0].backendRefs[0].weight: must be between 0 and 1000000",
            ),
        ];
        for (rules, want) in cases {
            let got = errors_of(&route(rules));
            assert!(
                got.len() == 1 && got[0].starts_with(want),
                "want {want:?}\n got {got:#?}"
            );
        }
    }

    /// A Namespace is read for its outbound traffic policy: a value that is neither policy
    /// is an error at the annotation; the kind has no namespace of its own.
    #[test]
    fn a_namespace_annotation_names_a_policy() {
        let ns = |policy: &str| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {{weft.dev/outbound-traffic-policy: {policy}}}\nspec: {{finalizers: [kubernetes]}}\nstatus: {{phase: Active}}\n"
            )
        };
        assert_eq!(errors_of(&ns("REGISTRY_ONLY")), Vec::<String>::new());
        assert_eq!(
            errors_of(&ns("registry_only")),
            [
                "test.yaml:1:metadata.annotations.weft.dev/outbound-traffic-policy: \"registry_only\" is neither ALLOW_ANY nor REGISTRY_ONLY"
            ]
        );
    }

    #[test]
    fn unknown_kinds_and_gateway_parents_are_refused() {
        let got = errors_of("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n");
        assert!(
            got[0].starts_with("test.yaml:1:kind: unknown kind \"ConfigMap\""),
            "{got:?}"
        );
        let got = errors_of(
            &route("    - backendRefs: [{name: reviews, port: 9080}]\n").replace(
                "kind: Service, name: reviews, port: 9080",
                "kind: Gateway, name: gw",
            ),
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("test.yaml:1:spec.parentRefs[0].kind: weft is a mesh")),
            "{got:?}"
        );
    }

    #[test]
    fn policies_and_grpc_annotations_are_checked() {
        let got = errors_of(
            "apiVersion: policy.weft.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, name: nope}]\n  loadBalancer: {type: ConsistentHash}\n",
        );
        assert_eq!(
            got.len(),
            1,
            "reference checks wait for the semantic ones: {got:?}"
        );
        assert!(
            got[0].starts_with("test.yaml:1:spec.loadBalancer.consistentHash: is required"),
            "{got:?}"
        );
        let got = errors_of(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: g\n  namespace: shop\n  annotations: {retry.weft.dev/grpc-codes: 'UNAVAILABLE,BOGUS'}\nspec:\n  parentRefs: [{kind: Service, name: reviews}]\n  rules: [{backendRefs: [{name: reviews, port: 9080}]}]\n",
        );
        assert_eq!(
            got,
            [
                "test.yaml:1:metadata.annotations[retry.weft.dev/grpc-codes]: \"BOGUS\" is not a gRPC error code"
            ]
        );
    }

    #[test]
    fn a_duplicate_is_rejected_and_the_first_kept() {
        let (manifests, _) = parse_file("a.yaml", &format!("{SERVICES}\n---\n{SERVICES}"));
        let checked = check(manifests);
        assert_eq!(checked.accepted.len(), 2);
        assert_eq!(checked.errors.len(), 2);
        assert!(
            checked.errors[0]
                .to_string()
                .contains("is already defined at a.yaml:1"),
            "{:?}",
            checked.errors
        );
    }

    #[test]
    fn a_cluster_ip_belongs_to_the_first_service_that_names_it() {
        let svc = |name: &str, ips: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  {ips}\n  ports: [{{port: 80}}]\n"
            )
        };
        let text = [
            svc("a", "clusterIP: 10.96.0.50"),
            // Another port on the same address is still the same address.
            svc("b", "clusterIP: 10.96.0.50"),
            svc("c", "clusterIPs: [10.96.0.51, \"fd00::50\"]"),
            svc("d", "clusterIPs: [10.96.0.52, \"fd00::50\"]"),
            svc("e", "clusterIP: None"),
            svc("f", "clusterIP: None"),
        ]
        .join("---\n");
        let (manifests, _) = parse_file("a.yaml", &text);
        let checked = check(manifests);
        let names: Vec<String> = checked
            .accepted
            .iter()
            .map(|m| m.resource.key().to_string())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let errors: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(
                "spec.clusterIP: 10.96.0.50 is already allocated to Service shop/a (a.yaml:1)"
            ),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("spec.clusterIPs: fd00::50 is already allocated to Service shop/c"),
            "{errors:?}"
        );
    }

    #[test]
    fn valid_routes_are_accepted() {
        let got = errors_of(&route(
            "    - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: 'true'}]}]\n      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]\n      backendRefs: [{name: reviews, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]\n      timeouts: {request: 10s, backendRequest: 2s}\n      retry: {codes: [503], attempts: 3, backoff: 100ms}\n",
        ));
        assert!(got.is_empty(), "{got:?}");
    }
}
