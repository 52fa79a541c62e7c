//! The injector: `weft inject`, `weft uninject` and the admission webhook share it.
//!
//! [`inject_stream`] reads a multi-document YAML stream and writes it back in the same order.
//! Each pod template it finds (in a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! ReplicationController, Job, CronJob, or an item of a `List`) goes through
//! [`pod::inject`] or [`pod::uninject`]; every other document, and every document left as it
//! was (opted out, `hostNetwork`, already injected), is written back byte for byte.
//! [`probes`] rewrites the app's probes, and [`value`] holds the JSON helpers both use.

pub mod pod;
pub mod probes;
pub mod value;

use serde_json::Value;
use weft_api::resources::documents;

pub use pod::{Outcome, Settings, Template};

/// Which way [`inject_stream`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inject,
    Uninject,
}

/// What happened to one pod template, for the operator's stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `document 2 (Deployment shop/web)`, or with ` item 3` for a List's item.
    pub subject: String,
    pub outcome: Outcome,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.outcome)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: document {document}: {message}")]
pub struct StreamError {
    pub origin: String,
    pub document: usize,
    pub message: String,
}

/// Injects into (or removes the mesh from) every pod template of `text`. `origin` names the
/// input in errors. A document that is not valid YAML fails the whole stream, naming the
/// document: half a stream written back would be worse than none.
pub fn inject_stream(
    origin: &str,
    text: &str,
    settings: &Settings,
    direction: Direction,
) -> Result<(String, Vec<Notice>), StreamError> {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut notices = Vec::new();
    for (i, doc) in documents(text).into_iter().enumerate() {
        out.push_str(doc.marker);
        let number = i + 1;
        let fail = |message: String| StreamError {
            origin: origin.to_owned(),
            document: number,
            message,
        };
        if is_blank(doc.body) {
            out.push_str(doc.body);
            continue;
        }
        let mut value: Value = serde_saphyr::from_str(doc.body)
            .map_err(|e| fail(format!("not valid YAML: {}", first_line(&e.to_string()))))?;
        let subject = format!("document {number} ({})", describe(&value));
        let mut changed = false;
        visit_templates(&mut value, &subject, &mut |template, subject| {
            let outcome = match direction {
                Direction::Inject => pod::inject(template, settings)?,
                Direction::Uninject => pod::uninject(template),
            };
            changed |= outcome.changed();
            notices.push(Notice {
                subject: subject.to_owned(),
                outcome,
            });
            Ok(())
        })
        .map_err(fail)?;
        if changed {
            let yaml = serde_saphyr::to_string(&value)
                .map_err(|e| fail(format!("cannot write back: {e}")))?;
            out.push_str(&yaml);
            if !yaml.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(doc.body);
        }
    }
    Ok((out, notices))
}

/// The path from an object of `kind` to its pod template (`metadata` and `spec` beside each
/// other at its end); `None` for kinds without one.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Calls `f` on every pod template of `value`, descending into a `List`'s items.
fn visit_templates(
    value: &mut Value,
    subject: &str,
    f: &mut dyn FnMut(Template<'_>, &str) -> Result<(), String>,
) -> Result<(), String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        for (i, item) in items.iter_mut().enumerate() {
            let subject = format!("{subject} item {} ({})", i + 1, describe(item));
            visit_templates(item, &subject, f).map_err(|e| format!("item {}: {e}", i + 1))?;
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        return Ok(());
    };
    let mut at = value;
    for (depth, key) in path.iter().enumerate() {
        at = match at.get_mut(*key) {
            Some(next) => next,
            None => {
                return Err(format!(
                    "a {kind} without {}: there is no pod template to inject into",
                    path[..=depth].join(".")
                ));
            }
        };
    }
    let Some(object) = at.as_object_mut() else {
        return Err(format!("{kind}'s pod template is not a mapping"));
    };
    // A template may omit its metadata; the mesh's annotations need one.
    let had_metadata = object.contains_key("metadata");
    let mut metadata = match object.remove("metadata") {
        Some(Value::Object(m)) => m,
        None => serde_json::Map::new(),
        Some(other) => {
            object.insert("metadata".into(), other);
            return Err(format!(
                "{kind}'s pod template has a `metadata` that is not a mapping"
            ));
        }
    };
    let result = match object.get_mut("spec") {
        Some(Value::Object(spec)) => f(
            Template {
                metadata: &mut metadata,
                spec,
            },
            subject,
        ),
        _ => Err(format!("{kind}'s pod template needs a mapping `spec`")),
    };
    if had_metadata || !metadata.is_empty() {
        object.insert("metadata".into(), Value::Object(metadata));
    }
    result
}

/// `Deployment shop/web`, for notices.
fn describe(value: &Value) -> String {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn is_blank(doc: &str) -> bool {
    doc.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests;
