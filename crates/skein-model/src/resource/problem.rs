//! What goes wrong in resource documents: each [`ResourceProblem`] names the resource, the
//! field path, the value and what is accepted, so one refused apply can list every problem
//! of every document at once.

use crate::FieldError;
use serde::Serialize;
use std::fmt;

/// Why a field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// The value is present but breaks a rule or has the wrong type.
    Invalid,
    /// The field is not part of the resource's schema (a typo, or a feature Skein lacks).
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// The document is not YAML; `value` holds the parser's message with line and column.
    Syntax,
}

/// One problem in one resource document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProblem {
    /// The resource: `HTTPRoute default/restaurant`, `Mesh default`, or
    /// `document 3 of FILE` when the document names none.
    pub resource: String,
    /// Why the field was refused.
    pub cause: Cause,
    /// The field path (`spec.rules[0].backendRefs[0].weight`), the refused value as written
    /// and what is accepted.
    #[serde(flatten)]
    pub field: FieldError,
}

impl ResourceProblem {
    /// A refused value of `resource`.
    pub fn invalid(resource: &str, field: FieldError) -> ResourceProblem {
        ResourceProblem {
            resource: resource.to_string(),
            cause: Cause::Invalid,
            field,
        }
    }
}

impl fmt::Display for ResourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.resource, detail(self.cause, &self.field))
    }
}

/// The problem without the resource's name: `spec.x: unknown field; expected …`.
pub(crate) fn detail(cause: Cause, field: &FieldError) -> String {
    let (path, expected) = (&field.path, &field.expected);
    match cause {
        Cause::Invalid => field.to_string(),
        Cause::UnknownField => format!("{path}: unknown field; expected {expected}"),
        Cause::MissingField => format!("{path}: required field is missing; expected {expected}"),
        Cause::Syntax => format!("not valid YAML: {}", field.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(cause: Cause, path: &str, value: &str, expected: &str) -> String {
        ResourceProblem {
            resource: "HTTPRoute default/web".into(),
            cause,
            field: FieldError {
                path: path.into(),
                value: value.into(),
                expected: expected.into(),
            },
        }
        .to_string()
    }

    #[test]
    fn each_cause_reads_as_a_sentence() {
        assert_eq!(
            problem(Cause::Invalid, "spec.x", "7", "1 to 5"),
            "HTTPRoute default/web: spec.x: \"7\" is not accepted; expected 1 to 5"
        );
        assert_eq!(
            problem(
                Cause::UnknownField,
                "spec.wieght",
                "wieght",
                "one of: weight"
            ),
            "HTTPRoute default/web: spec.wieght: unknown field; expected one of: weight"
        );
        assert_eq!(
            problem(Cause::MissingField, "spec.name", "", "a value"),
            "HTTPRoute default/web: spec.name: required field is missing; expected a value"
        );
        assert_eq!(
            problem(Cause::Syntax, "", "bad indent at line 3", ""),
            "HTTPRoute default/web: not valid YAML: bad indent at line 3"
        );
    }

    #[test]
    fn serializes_flat_for_the_api() {
        let p = ResourceProblem::invalid(
            "Service default/web",
            FieldError {
                path: "spec.ports".into(),
                value: "[]".into(),
                expected: "at least one port".into(),
            },
        );
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"resource":"Service default/web","cause":"invalid","path":"spec.ports","value":"[]","expected":"at least one port"}"#
        );
    }
}
