//! `FaultInjection` (`skein.dev/v1alpha1`): delays and errors injected into a share of a
//! route rule's requests, for resilience testing. An HTTPRoute rule uses one through
//! Gateway API's extension point: a filter `{type: ExtensionRef, extensionRef: {group:
//! skein.dev, kind: FaultInjection, name: NAME}}` naming a FaultInjection in the route's
//! namespace. Off unless a route names one.

use super::validate::Problems;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `spec` of a `FaultInjection`: at least one of `delay` and `abort`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjectionSpec {
    /// Hold a share of requests before they are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with an error instead of sending them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay injected into `percent` of requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of requests delayed, 0 to 100 (fractions allowed, e.g. 0.5).
    pub percent: f64,
    /// How long; 1ms to 1h.
    #[serde(with = "crate::duration")]
    pub fixed_delay: Duration,
}

/// An error answered to `percent` of requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of requests aborted, 0 to 100 (fractions allowed).
    pub percent: f64,
    /// The status answered, 200 to 599 (gRPC callers get the matching gRPC status).
    pub http_status: u16,
}

impl FaultInjectionSpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        if self.delay.is_none() && self.abort.is_none() {
            p.add("spec", "{}", "at least one of delay and abort");
        }
        let percent = |p: &mut Problems, at: &str, v: f64| {
            p.check(
                (0.0..=100.0).contains(&v),
                at,
                v,
                "a percentage from 0 to 100",
            );
        };
        if let Some(d) = &self.delay {
            percent(p, "spec.delay.percent", d.percent);
            p.duration(
                "spec.delay.fixedDelay",
                d.fixed_delay,
                Duration::from_millis(1),
                Duration::from_secs(3600),
                "a duration from 1ms to 1h",
            );
        }
        if let Some(a) = &self.abort {
            percent(p, "spec.abort.percent", a.percent);
            p.check(
                (200..=599).contains(&a.http_status),
                "spec.abort.httpStatus",
                a.http_status,
                "an HTTP status from 200 to 599",
            );
        }
    }
}

/// A FaultInjection resolved for proxies: what a rule's `ExtensionRef` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolvedFault {
    /// `namespace/name` of the FaultInjection, named in every injected error.
    pub name: String,
    /// What it injects.
    pub spec: FaultInjectionSpec,
}

impl ResolvedFault {
    /// What a rule gets when its ExtensionRef names no FaultInjection: every request is
    /// answered 500, as Gateway API requires of a filter that cannot be resolved.
    pub fn unresolved(namespace: &str, name: &str) -> Self {
        ResolvedFault {
            name: format!("{namespace}/{name} (no such FaultInjection)"),
            spec: FaultInjectionSpec {
                delay: None,
                abort: Some(FaultAbort {
                    percent: 100.0,
                    http_status: 500,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: FaultInjectionSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn bounds_are_checked() {
        assert!(problems(
            "{delay: {percent: 10, fixedDelay: 50ms}, abort: {percent: 0.5, httpStatus: 503}}"
        )
        .is_empty());
        assert_eq!(
            problems("{delay: {percent: 101, fixedDelay: 0ms}, abort: {percent: -1, httpStatus: 600}}"),
            [
                "spec.delay.percent: \"101\" is not accepted; expected a percentage from 0 to 100",
                "spec.delay.fixedDelay: \"0s\" is not accepted; expected a duration from 1ms to 1h",
                "spec.abort.percent: \"-1\" is not accepted; expected a percentage from 0 to 100",
                "spec.abort.httpStatus: \"600\" is not accepted; expected an HTTP status from 200 to 599",
            ]
        );
        assert_eq!(
            problems("{}"),
            ["spec: \"{}\" is not accepted; expected at least one of delay and abort"]
        );
    }
}
