//! Gateway API route status as weft's mesh controller writes it: for each Service parent of
//! a route, its `Accepted` and `ResolvedRefs` conditions, from the route's errors and its
//! unresolved references in the store. Pure: the caller reads the route and writes the result
//! (cluster mode, [`crate::cluster`]) or shows it (`/status`, [`crate::admin`]).

use serde_json::{Value, json};
use weft_api::resources::ManifestError;

/// weft's `controllerName` in route status.
pub const CONTROLLER_NAME: &str = "weft.dev/mesh";

/// What a route's status is computed from, as the cluster has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteView {
    pub generation: Option<i64>,
    pub parent_refs: Vec<Value>,
    pub status_parents: Vec<Value>,
}

/// Whether a `parentRefs` entry names a Service (GAMMA): the routes weft serves.
pub fn is_service_parent(parent: &Value) -> bool {
    let group = parent.get("group").and_then(Value::as_str).unwrap_or("");
    parent.get("kind").and_then(Value::as_str) == Some("Service")
        && (group.is_empty() || group == "core")
}

/// Which condition an error belongs to, with the Gateway API's reason.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Blame {
    /// The route's `parentRefs[i]`.
    Parent(usize, &'static str),
    /// A backend reference.
    Backend(&'static str),
    /// Anything else the route got wrong.
    Route,
}

impl Blame {
    fn reason(self) -> &'static str {
        match self {
            Blame::Parent(_, reason) | Blame::Backend(reason) => reason,
            Blame::Route => "UnsupportedValue",
        }
    }
}

/// Reads the reference errors of `weft_api::resources::check` by their path and message.
fn blame(error: &ManifestError) -> Blame {
    let path = error.path.as_str();
    let missing = error.message.starts_with("no Service") || error.message.contains("has no port");
    if let Some(rest) = path.strip_prefix("spec.parentRefs[")
        && let Some(i) = rest.split(']').next().and_then(|i| i.parse().ok())
    {
        return Blame::Parent(
            i,
            if missing {
                "NoMatchingParent"
            } else {
                "UnsupportedValue"
            },
        );
    }
    if path.contains("backendRef") {
        if path.ends_with(".kind") || path.ends_with(".group") {
            return Blame::Backend("InvalidKind");
        }
        if missing {
            return Blame::Backend("BackendNotFound");
        }
    }
    Blame::Route
}

/// The errors `pick` keeps, as a condition's message says them.
fn said(blamed: &[(Blame, &ManifestError)], pick: &dyn Fn(Blame) -> bool) -> String {
    blamed
        .iter()
        .filter(|(b, _)| pick(*b))
        .map(|(_, e)| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn is_ours(parent_status: &Value) -> bool {
    parent_status.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
}

/// The route's `status.parents`: the other controllers' entries as they are, then weft's.
pub fn merged(route: &RouteView, ours: &[Value]) -> Vec<Value> {
    route
        .status_parents
        .iter()
        .filter(|p| !is_ours(p))
        .chain(ours)
        .cloned()
        .collect()
}

/// weft's `status.parents` entries for a route: one per Service parent. An error keeps the
/// whole route out (weft never applies part of one), so it makes every parent's Accepted
/// false: with the parent's own reason if it has one, else the route's. An unresolved
/// reference (`unresolved`) leaves the route serving: a parent that is not there has its own
/// Accepted false, and a backend that is not there makes ResolvedRefs false. A condition's
/// `lastTransitionTime` moves only when its status does.
pub fn entries(
    route: &RouteView,
    errors: &[&ManifestError],
    unresolved: &[&ManifestError],
    serving: bool,
    now: &str,
) -> Vec<Value> {
    let blamed: Vec<(Blame, &ManifestError)> = errors.iter().map(|e| (blame(e), *e)).collect();
    let missing: Vec<(Blame, &ManifestError)> = unresolved.iter().map(|e| (blame(e), *e)).collect();
    let shown = |pick: &dyn Fn(Blame) -> bool| said(&blamed, pick);
    let shown_missing = |pick: &dyn Fn(Blame) -> bool| said(&missing, pick);
    let consequence = if serving {
        "the last accepted version keeps serving"
    } else {
        "the route is not in effect"
    };
    let is_backend = |(b, _): &&(Blame, &ManifestError)| matches!(b, Blame::Backend(_));
    let backend = blamed.iter().chain(&missing).find(is_backend);
    // What rejects the route for every parent: its own errors first, then its backends'.
    let route_wide = blamed
        .iter()
        .find(|(b, _)| *b == Blame::Route)
        .or(blamed.iter().find(is_backend))
        .or(blamed.first())
        .map(|(b, _)| b.reason());
    let previous = |parent: &Value, kind: &str| -> Option<(String, String)> {
        let entry = route
            .status_parents
            .iter()
            .find(|p| is_ours(p) && p.get("parentRef") == Some(parent))?;
        let condition = entry
            .get("conditions")?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?;
        Some((
            condition.get("status")?.as_str()?.to_owned(),
            condition.get("lastTransitionTime")?.as_str()?.to_owned(),
        ))
    };
    let condition = |parent: &Value, kind: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = match previous(parent, kind) {
            Some((s, t)) if s == status => t,
            _ => now.to_owned(),
        };
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": route.generation.unwrap_or(0),
            "lastTransitionTime": since,
        })
    };
    let resolved = match backend {
        Some((b, _)) => (
            false,
            b.reason(),
            [
                shown(&|b| matches!(b, Blame::Backend(_))),
                shown_missing(&|b| matches!(b, Blame::Backend(_))),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        ),
        None => (true, "ResolvedRefs", "all references resolved".to_owned()),
    };
    route
        .parent_refs
        .iter()
        .enumerate()
        .filter(|(_, parent)| is_service_parent(parent))
        .map(|(i, parent)| {
            let own = blamed.iter().find_map(|(b, _)| match b {
                Blame::Parent(j, reason) if *j == i => Some(*reason),
                _ => None,
            });
            let absent = missing.iter().find_map(|(b, _)| match b {
                Blame::Parent(j, reason) if *j == i => Some(*reason),
                _ => None,
            });
            let accepted = match (own, route_wide) {
                (None, None) if let Some(reason) = absent => (
                    false,
                    reason,
                    format!(
                        "{}; the route holds for its other parents",
                        shown_missing(&|b| matches!(b, Blame::Parent(j, _) if j == i))
                    ),
                ),
                (Some(reason), _) => (
                    false,
                    reason,
                    format!(
                        "{}; {consequence}",
                        shown(&|b| matches!(b, Blame::Parent(j, _) if j == i))
                    ),
                ),
                (None, Some(reason)) => (
                    false,
                    reason,
                    format!("{}; {consequence}", shown(&|_| true)),
                ),
                (None, None) => (true, "Accepted", "accepted by weft".to_owned()),
            };
            json!({
                "parentRef": parent,
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    condition(parent, "Accepted", accepted.0, accepted.1, accepted.2),
                    condition(parent, "ResolvedRefs", resolved.0, resolved.1, resolved.2.clone()),
                ],
            })
        })
        .collect()
}

/// `2026-11-23T10:00:00Z`, as Kubernetes writes times: whole seconds, UTC.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::resources::{Source, Subject};

    fn error(path: &str, message: &str) -> ManifestError {
        ManifestError {
            origin: Source {
                file: "HTTPRoute/shop/split".into(),
                document: 1,
            },
            path: path.into(),
            message: message.into(),
            subject: Subject::Foreign,
        }
    }

    fn service(name: &str) -> Value {
        json!({"group": "", "kind": "Service", "name": name})
    }

    /// (type, status, reason) of each condition of the entry for `parents[i]`.
    fn conditions(entries: &[Value], i: usize) -> Vec<(String, String, String)> {
        entries[i]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let field = |k: &str| c[k].as_str().unwrap().to_owned();
                (field("type"), field("status"), field("reason"))
            })
            .collect()
    }

    fn cond(kind: &str, status: &str, reason: &str) -> (String, String, String) {
        (kind.into(), status.into(), reason.into())
    }

    #[test]
    fn errors_are_blamed_on_their_condition() {
        let cases = [
            (
                "spec.parentRefs[1].name",
                "no Service shop/x",
                Blame::Parent(1, "NoMatchingParent"),
            ),
            (
                "spec.parentRefs[0].port",
                "Service shop/x has no port 81",
                Blame::Parent(0, "NoMatchingParent"),
            ),
            (
                "spec.parentRefs[0].namespace",
                "must be the route's namespace",
                Blame::Parent(0, "UnsupportedValue"),
            ),
            (
                "spec.rules[0].backendRefs[0].name",
                "no Service shop/gone",
                Blame::Backend("BackendNotFound"),
            ),
            (
                "spec.rules[2].backendRefs[1].port",
                "Service shop/v2 has no port 81",
                Blame::Backend("BackendNotFound"),
            ),
            (
                "spec.rules[0].backendRefs[0].kind",
                "only Service is supported",
                Blame::Backend("InvalidKind"),
            ),
            (
                "spec.rules[0].backendRefs[0].group",
                "only the core group is supported",
                Blame::Backend("InvalidKind"),
            ),
            (
                "spec.rules[0].matches[0].path.value",
                "not a valid regular expression",
                Blame::Route,
            ),
        ];
        for (path, message, expected) in cases {
            assert_eq!(blame(&error(path, message)), expected, "{path}: {message}");
        }
    }

    #[test]
    fn conditions_of_each_service_parent() {
        let route = RouteView {
            generation: Some(3),
            parent_refs: vec![
                service("a"),
                json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}),
                service("b"),
            ],
            status_parents: Vec::new(),
        };
        let missing_parent = error("spec.parentRefs[2].name", "no Service shop/b");
        let missing_backend = error("spec.rules[0].backendRefs[0].name", "no Service shop/gone");
        let bad_match = error("spec.rules[0].matches[0].path.value", "not a regex");
        let accepted = cond("Accepted", "True", "Accepted");
        let resolved = cond("ResolvedRefs", "True", "ResolvedRefs");
        // (errors, expected conditions of parent a, of parent b)
        let cases: Vec<(Vec<&ManifestError>, Vec<_>, Vec<_>)> = vec![
            (
                vec![],
                vec![accepted.clone(), resolved.clone()],
                vec![accepted.clone(), resolved.clone()],
            ),
            (
                vec![&missing_parent],
                vec![
                    cond("Accepted", "False", "NoMatchingParent"),
                    resolved.clone(),
                ],
                vec![
                    cond("Accepted", "False", "NoMatchingParent"),
                    resolved.clone(),
                ],
            ),
            (
                vec![&missing_backend],
                vec![
                    cond("Accepted", "False", "BackendNotFound"),
                    cond("ResolvedRefs", "False", "BackendNotFound"),
                ],
                vec![
                    cond("Accepted", "False", "BackendNotFound"),
                    cond("ResolvedRefs", "False", "BackendNotFound"),
                ],
            ),
            (
                vec![&missing_backend, &bad_match],
                vec![
                    cond("Accepted", "False", "UnsupportedValue"),
                    cond("ResolvedRefs", "False", "BackendNotFound"),
                ],
                vec![
                    cond("Accepted", "False", "UnsupportedValue"),
                    cond("ResolvedRefs", "False", "BackendNotFound"),
                ],
            ),
        ];
        for (errors, a, b) in cases {
            let entries = entries(&route, &errors, &[], true, "2026-12-01T00:00:00Z");
            assert_eq!(entries.len(), 2, "the Gateway parent is not weft's");
            assert_eq!(entries[0]["parentRef"], service("a"));
            assert_eq!(entries[0]["controllerName"], CONTROLLER_NAME);
            assert_eq!(conditions(&entries, 0), a, "{errors:?}");
            assert_eq!(conditions(&entries, 1), b, "{errors:?}");
            assert_eq!(entries[0]["conditions"][0]["observedGeneration"], 3);
        }
        // Unresolved references leave the route serving: only the missing parent is not
        // accepted, and the missing backend turns ResolvedRefs false on every parent.
        let partial = entries(
            &route,
            &[],
            &[&missing_parent, &missing_backend],
            true,
            "now",
        );
        assert_eq!(
            conditions(&partial, 0),
            [
                accepted.clone(),
                cond("ResolvedRefs", "False", "BackendNotFound")
            ]
        );
        assert_eq!(
            conditions(&partial, 1),
            [
                cond("Accepted", "False", "NoMatchingParent"),
                cond("ResolvedRefs", "False", "BackendNotFound")
            ]
        );
        let message = partial[0]["conditions"][1]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "spec.rules[0].backendRefs[0].name: no Service shop/gone"
        );
        let serving = entries(&route, &[&bad_match], &[], true, "now");
        let message = serving[0]["conditions"][0]["message"].as_str().unwrap();
        assert!(
            message.ends_with("the last accepted version keeps serving"),
            "{message}"
        );
        let gone = entries(&route, &[&bad_match], &[], false, "now");
        let message = gone[0]["conditions"][0]["message"].as_str().unwrap();
        assert!(message.ends_with("the route is not in effect"), "{message}");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut route = RouteView {
            generation: Some(1),
            parent_refs: vec![service("a")],
            status_parents: Vec::new(),
        };
        let first = entries(&route, &[], &[], true, "t1");
        route.status_parents = first;
        let same = entries(&route, &[], &[], true, "t2");
        assert_eq!(same[0]["conditions"][0]["lastTransitionTime"], "t1");
        let broken = error("spec.rules[0].matches[0].path.value", "not a regex");
        let changed = entries(&route, &[&broken], &[], true, "t3");
        assert_eq!(changed[0]["conditions"][0]["lastTransitionTime"], "t3");
        assert_eq!(
            changed[0]["conditions"][1]["lastTransitionTime"], "t1",
            "ResolvedRefs stayed True"
        );
    }

    #[test]
    fn other_controllers_entries_are_kept() {
        let theirs = json!({"parentRef": service("a"), "controllerName": "istio.io/mesh"});
        let stale = json!({"parentRef": service("a"), "controllerName": CONTROLLER_NAME});
        let route = RouteView {
            generation: None,
            parent_refs: vec![service("a")],
            status_parents: vec![theirs.clone(), stale],
        };
        let ours = entries(&route, &[], &[], true, "now");
        assert_eq!(merged(&route, &ours), vec![theirs, ours[0].clone()]);
    }

    #[test]
    fn times_are_whole_seconds_in_utc() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_392_000_123_456_789).unwrap();
        assert_eq!(rfc3339(t), "2026-11-23T00:00:00Z");
    }
}
