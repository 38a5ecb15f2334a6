//! `AuthorizationPolicy`: who may call a service, optionally narrowed to ports, methods,
//! paths and hosts; and [`TargetRef`], how policies name the Service they apply to (shared
//! with `BackendPolicy`).
//!
//! A policy's rule matches a request when the caller matches any `from` entry (none: any
//! caller) and the request matches any `to` entry (none: any request); within one `to`
//! entry every listed field must match one of its values. `allow` lets matching requests
//! through, `deny` refuses them, `audit` lets them through but reports them. A policy with
//! no rules matches nothing.

use super::mesh::PolicyAction;
use super::route::is_clean_path;
use super::validate::{is_dns_label, is_dns_subdomain, Problems};
use serde::{Deserialize, Serialize};

/// `spec` of an `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The Service (and optionally port) whose inbound traffic the policy governs.
    pub target_ref: TargetRef,
    /// What happens to matching requests. Default `allow`.
    #[serde(default)]
    pub action: PolicyAction,
    /// Which requests match; a policy with no rules matches none. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

/// The Service a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// API group; only `""` (core) is accepted. Default `""`.
    #[serde(default)]
    pub group: String,
    /// Only `Service` is accepted. Default `Service`.
    #[serde(default = "default_service_kind")]
    pub kind: String,
    /// The Service's name, in the policy's namespace.
    pub name: String,
    /// Only this service port. Default: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One rule: callers (`from`) and requests (`to`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Callers; any one matching suffices. Default (empty): any caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    /// Requests; any one matching suffices. Default (empty): any request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
}

/// One kind of caller; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Workloads of a service: `reservation` (in the policy's namespace) or
    /// `reservation.shop` (in namespace `shop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// An exact SPIFFE ID (`spiffe://skein.local/ns/default/sa/reservation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Every mesh workload of a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `true`: callers without a mesh identity (plaintext, in `permissive` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
}

/// Conditions on the request; every listed field must match one of its values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Destination ports. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// HTTP methods (`GET`, …). Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths: exact (`/menu`), prefix (`/menu/*`, which matches `/menu` and below) or `*`.
    /// Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Host names (`*.` wildcard allowed). Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

const SOURCE_FIELDS: &str = "exactly one of service, identity, namespace, unauthenticated";
const SERVICE_SOURCE: &str =
    "a service name, or name.namespace, each a DNS-1123 label (e.g. reservation or reservation.shop)";
const SPIFFE_ID: &str =
    "a SPIFFE ID: spiffe://<trust-domain>/<path>, e.g. spiffe://skein.local/ns/default/sa/reservation";
const AUTHZ_PATH: &str =
    "\"*\", an exact path such as /menu, or a prefix such as /menu/* (starting with '/', \
     without '//', '/./', '/../', '%2F', '%5C', '#' or escapes of letters, digits and -._~)";

impl TargetRef {
    /// Checks the reference; `at` is its path (`spec.targetRef`).
    pub(crate) fn validate(&self, p: &mut Problems, at: &str) {
        let group = &self.group;
        p.check(
            group.is_empty(),
            format!("{at}.group"),
            group,
            "\"\" (the core API group)",
        );
        p.check(
            self.kind == "Service",
            format!("{at}.kind"),
            &self.kind,
            "Service",
        );
        p.dns_label(format!("{at}.name"), &self.name);
        if let Some(port) = self.port {
            p.port(format!("{at}.port"), port);
        }
    }
}

impl AuthorizationPolicySpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        self.target_ref.validate(p, "spec.targetRef");
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, source) in rule.from.iter().enumerate() {
                source.validate(p, &format!("{at}.from[{j}]"));
            }
            for (j, op) in rule.to.iter().enumerate() {
                op.validate(p, &format!("{at}.to[{j}]"));
            }
        }
    }
}

impl Source {
    fn validate(&self, p: &mut Problems, at: &str) {
        let set: Vec<&str> = [
            ("service", self.service.is_some()),
            ("identity", self.identity.is_some()),
            ("namespace", self.namespace.is_some()),
            ("unauthenticated", self.unauthenticated.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if set.len() != 1 {
            let value = if set.is_empty() {
                "{}".to_string()
            } else {
                set.join(", ")
            };
            p.add(at, value, SOURCE_FIELDS);
        }
        if let Some(service) = &self.service {
            p.check(
                is_service_source(service),
                format!("{at}.service"),
                service,
                SERVICE_SOURCE,
            );
        }
        if let Some(identity) = &self.identity {
            p.check(
                is_spiffe_id(identity),
                format!("{at}.identity"),
                identity,
                SPIFFE_ID,
            );
        }
        if let Some(ns) = &self.namespace {
            p.dns_label(format!("{at}.namespace"), ns);
        }
        if self.unauthenticated == Some(false) {
            let expected = "true (or leave the entry out)";
            p.add(format!("{at}.unauthenticated"), "false", expected);
        }
    }
}

impl Operation {
    fn validate(&self, p: &mut Problems, at: &str) {
        for (i, port) in self.ports.iter().enumerate() {
            p.port(format!("{at}.ports[{i}]"), *port);
        }
        p.unique(
            &format!("{at}.ports"),
            "",
            &self.ports,
            u16::to_string,
            "each port listed once",
        );
        for (i, method) in self.methods.iter().enumerate() {
            p.method(format!("{at}.methods[{i}]"), method);
        }
        for (i, path) in self.paths.iter().enumerate() {
            p.check(
                is_authz_path(path),
                format!("{at}.paths[{i}]"),
                path,
                AUTHZ_PATH,
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            p.hostname(format!("{at}.hosts[{i}]"), host);
        }
    }
}

fn is_service_source(s: &str) -> bool {
    match s.split_once('.') {
        Some((name, ns)) => is_dns_label(name) && is_dns_label(ns),
        None => is_dns_label(s),
    }
}

fn is_spiffe_id(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("spiffe://") else {
        return false;
    };
    let Some((domain, path)) = rest.split_once('/') else {
        return false;
    };
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
    };
    is_dns_subdomain(domain) && path.split('/').all(segment_ok)
}

fn is_authz_path(path: &str) -> bool {
    if path == "*" {
        return true;
    }
    // `/menu/*` is a prefix; a `*` anywhere else is a typo, not a glob.
    let exact = path.strip_suffix("/*").unwrap_or(path);
    // Requests are matched after normalisation, so a rule must already be normalised
    // (`/%6Denu` would never match anything).
    let normal = |p: &str| {
        use crate::authz::path::{AmbiguousPaths, EncodedSlashes, PathRules};
        let lenient = PathRules {
            encoded_slashes: EncodedSlashes::Keep,
            ambiguous_paths: AmbiguousPaths::Forward,
        };
        crate::authz::path::normalize(p, lenient).is_ok_and(|n| n == p)
    };
    !exact.contains('*') && (exact.is_empty() || (is_clean_path(exact) && normal(exact)))
}

fn default_service_kind() -> String {
    "Service".into()
}

#[cfg(test)]
mod tests {
    use super::super::validate::DNS_LABEL;
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: AuthorizationPolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_and_the_design_sample() {
        let spec: AuthorizationPolicySpec = serde_yaml_ng::from_str(
            "{targetRef: {name: restaurant}, rules: [{from: [{service: reservation}], to: [{methods: [GET], paths: ['/menu/*']}]}]}",
        )
        .unwrap();
        assert_eq!(spec.action, PolicyAction::Allow);
        assert_eq!(spec.target_ref.kind, "Service");
        let mut p = Problems::new();
        spec.validate(&mut p);
        assert!(p.into_vec().is_empty());
    }

    #[test]
    fn target_ref_names_a_core_service() {
        assert_eq!(
            problems("{targetRef: {group: apps, kind: Deployment, name: Web, port: 0}}"),
            [
                "spec.targetRef.group: \"apps\" is not accepted; expected \"\" (the core API group)".to_string(),
                "spec.targetRef.kind: \"Deployment\" is not accepted; expected Service".into(),
                format!("spec.targetRef.name: \"Web\" is not accepted; expected {DNS_LABEL}"),
                "spec.targetRef.port: \"0\" is not accepted; expected a port from 1 to 65535".into(),
            ]
        );
    }

    #[test]
    fn each_source_sets_exactly_one_field() {
        assert_eq!(
            problems("{targetRef: {name: web}, rules: [{from: [{}, {service: a, namespace: b}, {unauthenticated: true}]}]}"),
            [
                format!("spec.rules[0].from[0]: \"{{}}\" is not accepted; expected {SOURCE_FIELDS}"),
                format!("spec.rules[0].from[1]: \"service, namespace\" is not accepted; expected {SOURCE_FIELDS}"),
            ]
        );
    }

    #[test]
    fn source_values() {
        assert_eq!(
            problems(
                "{targetRef: {name: web}, rules: [{from: [{service: a.b.c}, {identity: 'spiffe://skein.local'}, \
                 {namespace: Shop}, {unauthenticated: false}, {service: reservation.shop}, \
                 {identity: 'spiffe://skein.local/ns/default/sa/web'}]}]}"
            ),
            [
                format!("spec.rules[0].from[0].service: \"a.b.c\" is not accepted; expected {SERVICE_SOURCE}"),
                format!("spec.rules[0].from[1].identity: \"spiffe://skein.local\" is not accepted; expected {SPIFFE_ID}"),
                format!("spec.rules[0].from[2].namespace: \"Shop\" is not accepted; expected {DNS_LABEL}"),
                "spec.rules[0].from[3].unauthenticated: \"false\" is not accepted; expected true (or leave the entry out)".into(),
            ]
        );
    }

    #[test]
    fn operation_values() {
        assert_eq!(
            problems(
                "{targetRef: {name: web}, rules: [{to: [{ports: [0, 80, 80], methods: [FETCH], \
                 paths: ['*', /menu, '/menu/*', 'menu', '/a*', '/a/../b', '/%6Denu', '/a%20b'], hosts: ['*.shop', 'a b']}]}]}"
            ),
            [
                "spec.rules[0].to[0].ports[0]: \"0\" is not accepted; expected a port from 1 to 65535".to_string(),
                "spec.rules[0].to[0].ports[2]: \"80\" is not accepted; expected each port listed once".into(),
                "spec.rules[0].to[0].methods[0]: \"FETCH\" is not accepted; expected an HTTP method: one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH".into(),
                format!("spec.rules[0].to[0].paths[3]: \"menu\" is not accepted; expected {AUTHZ_PATH}"),
                format!("spec.rules[0].to[0].paths[4]: \"/a*\" is not accepted; expected {AUTHZ_PATH}"),
                format!("spec.rules[0].to[0].paths[5]: \"/a/../b\" is not accepted; expected {AUTHZ_PATH}"),
                format!("spec.rules[0].to[0].paths[6]: \"/%6Denu\" is not accepted; expected {AUTHZ_PATH}"),
                format!("spec.rules[0].to[0].hosts[1]: \"a b\" is not accepted; expected {}", super::super::validate::HOSTNAME),
            ]
        );
    }
}
