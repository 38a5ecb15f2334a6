//! Reading resource documents: multi-document YAML (JSON too, being YAML) into typed
//! resources, with every problem of every document reported at once.
//!
//! Each document is read into a YAML value first, so that its kind, name and namespace can
//! name it in messages even when the rest is wrong; the typed read goes through
//! `serde_path_to_error`, so a misspelt or mistyped field is reported with its full path.
//! Serde stops at the first such error in a document; validation then finds every broken
//! rule of each document that did read.

use super::{Cause, Object};
use super::{Kind, Resource, ResourceKey, ResourceProblem};
use crate::{FieldError, ModelError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::HashMap;

/// Reads every resource in `text` (YAML documents separated by `---`, or JSON), skipping
/// empty documents, applying defaults and validating each. `source` names the text in
/// messages (a file name, `-`, `the request`).
///
/// Either every document is good and all are returned, or the error lists every problem
/// of every document ([`ModelError::Resources`]), each naming its resource
/// (`HTTPRoute default/restaurant`, or `document 3 of FILE` when the document names none),
/// the field path, the value and what is accepted. A resource defined twice is refused.
/// After a YAML syntax error the documents that follow cannot be read and are not checked.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, ModelError> {
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<ResourceKey, usize> = HashMap::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let fallback = format!("document {number} of {source}");
        let value = match Value::deserialize(doc) {
            Ok(value) => value,
            Err(e) => {
                problems.push(syntax_problem(&fallback, &e));
                // The parser cannot resynchronise: it would repeat this error forever.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let label = describe_value(&value).unwrap_or_else(|| fallback.clone());
        let resource = match from_value(value) {
            Ok(resource) => resource,
            Err((cause, field)) => {
                problems.push(ResourceProblem {
                    resource: label,
                    cause,
                    field,
                });
                continue;
            }
        };
        let label = if resource.meta().name.is_empty() {
            fallback
        } else {
            resource.describe()
        };
        for field in resource.problems() {
            problems.push(ResourceProblem::invalid(&label, field));
        }
        if let Some(first) = seen.insert(resource.key(), number) {
            let expected =
                format!("each resource once per apply; document {first} already defines it");
            let field = FieldError {
                path: "metadata.name".into(),
                value: resource.meta().name.clone(),
                expected,
            };
            problems.push(ResourceProblem::invalid(&label, field));
        }
        resources.push(resource);
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(ModelError::Resources {
            origin: source.to_string(),
            problems,
        })
    }
}

/// Reads one document's value into a resource and applies its defaults; no validation.
pub(crate) fn from_value(mut value: Value) -> Result<Resource, (Cause, FieldError)> {
    if let Err(e) = value.apply_merge() {
        return Err(invalid(".", "<<", &format!("valid YAML merge keys: {e}")));
    }
    let Value::Mapping(mut map) = value else {
        let shown = render(&value);
        return Err(invalid(
            ".",
            &shown,
            "a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let accepted = Kind::accepted_kinds();
    let kind_text = take_string(&mut map, "kind", &accepted)?;
    let kind = Kind::from_name(&kind_text).ok_or_else(|| invalid("kind", &kind_text, &accepted))?;
    let expected = format!("{} (for kind {kind})", kind.api_version());
    let api_version = take_string(&mut map, "apiVersion", &expected)?;
    if api_version != kind.api_version() {
        return Err(invalid("apiVersion", &api_version, &expected));
    }
    let value = Value::Mapping(map);
    let mut resource = match kind {
        Kind::Mesh => Resource::Mesh(typed(value)?),
        Kind::Service => Resource::Service(typed(value)?),
        Kind::Workload => Resource::Workload(typed(value)?),
        Kind::HttpRoute => Resource::HttpRoute(typed(value)?),
        Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(typed(value)?),
        Kind::BackendPolicy => Resource::BackendPolicy(typed(value)?),
        Kind::FaultInjection => Resource::FaultInjection(typed(value)?),
        Kind::Canary => Resource::Canary(Box::new(typed(value)?)),
        Kind::ReferenceGrant => Resource::ReferenceGrant(typed(value)?),
    };
    resource.apply_defaults();
    Ok(resource)
}

/// The typed read of `metadata`, `spec` and `status`, errors carrying their path.
fn typed<S: DeserializeOwned, St: DeserializeOwned>(
    value: Value,
) -> Result<Object<S, St>, (Cause, FieldError)> {
    let original = value.clone();
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().clone();
        let message = e.into_inner().to_string();
        let found = lookup(&original, &path).map(render).unwrap_or_default();
        let (cause, mut field) = serde_problem(&path.to_string(), &message, found);
        if cause == Cause::UnknownField && path.iter().count() == 1 {
            // apiVersion and kind were read (and removed) before; they are fields too.
            field.expected = "one of apiVersion, kind, metadata, spec, status".into();
        }
        (cause, field)
    })
}

/// Turns serde's message into a path, a value and what is accepted.
fn serde_problem(path: &str, message: &str, found: String) -> (Cause, FieldError) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = match expected.strip_prefix(", expected ") {
            Some(list) => plain(list),
            None => "no fields here".to_string(),
        };
        return (Cause::UnknownField, field(path, name, &expected));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        let path = if path == "." {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return (Cause::MissingField, field(&path, "", "a value"));
    }
    let expected = if let Some((_, expected)) = message.split_once(", expected ") {
        plain(expected)
    } else if let Some((_, expected)) = message.split_once(": expected ") {
        expected.to_string()
    } else if message == "invalid IP address syntax" {
        "an IP address such as 10.0.0.1 or fd00::1".to_string()
    } else {
        message.to_string()
    };
    (Cause::Invalid, field(path, &found, &expected))
}

/// Serde's type words (`u16`, backticks) as users would write them.
fn plain(expected: &str) -> String {
    let text = expected.replace('`', "");
    match text.as_str() {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" => "a whole number from 0 to 18446744073709551615".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        _ => text,
    }
}

/// The value at `path` in the document, if there is one.
fn lookup<'a>(value: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |v, segment| match segment {
        Segment::Map { key } => v.get(key.as_str()),
        Segment::Seq { index } => v.get(*index),
        Segment::Enum { .. } => Some(v),
        Segment::Unknown => None,
    })
}

/// A value as users wrote it: scalars bare, collections as compact JSON.
fn render(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Removes `key` from the document, which must be a string.
fn take_string(
    map: &mut serde_yaml_ng::Mapping,
    key: &str,
    expected: &str,
) -> Result<String, (Cause, FieldError)> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(key, &render(&other), expected)),
        None => Err((Cause::MissingField, field(key, "", expected))),
    }
}

/// `HTTPRoute default/restaurant` from whatever the document says, even if the rest of it
/// is wrong; `None` when it names no kind or no name.
fn describe_value(value: &Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let namespace = meta.get("namespace").and_then(Value::as_str);
    match (Kind::from_name(kind), namespace) {
        (Some(k), _) if !k.is_namespaced() => Some(format!("{kind} {name}")),
        (_, Some(ns)) if !ns.is_empty() => Some(format!("{kind} {ns}/{name}")),
        (Some(_), _) => Some(format!("{kind} default/{name}")),
        (None, _) => Some(format!("{kind} {name}")),
    }
}

fn syntax_problem(resource: &str, e: &serde_yaml_ng::Error) -> ResourceProblem {
    ResourceProblem {
        resource: resource.to_string(),
        cause: Cause::Syntax,
        field: field(
            "",
            &format!("{e} (documents after it were not read)"),
            "YAML or JSON",
        ),
    }
}

fn field(path: &str, value: &str, expected: &str) -> FieldError {
    FieldError {
        path: path.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn invalid(path: &str, value: &str, expected: &str) -> (Cause, FieldError) {
    (Cause::Invalid, field(path, value, expected))
}
