//! `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`, the Gateway API's own resource
//! and shape): lets HTTPRoutes in other namespaces send traffic to Services in the grant's
//! namespace. A route's `backendRef` (or mirror) into another namespace is followed only
//! when a grant in that namespace permits it; otherwise the control plane marks it refused
//! and the caller's proxy answers `500` for the requests it would have carried.
//!
//! Skein resolves references from HTTPRoutes to Services only, so a grant's `from` must
//! name HTTPRoutes and its `to` Services: a grant for anything else would be accepted and
//! enforce nothing, and is refused instead.

use super::validate::Problems;
use serde::{Deserialize, Serialize};

/// The Gateway API group of HTTPRoute.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Most entries in `from` or `to` (as the Gateway API's CRD allows).
pub const MAX_GRANT_ENTRIES: usize = 16;

/// `spec` of a `ReferenceGrant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    /// Who may refer to the `to` resources; 1 to 16.
    pub from: Vec<GrantFrom>,
    /// What, in the grant's namespace, they may refer to; 1 to 16.
    pub to: Vec<GrantTo>,
}

/// Resources that may refer: every HTTPRoute of `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantFrom {
    /// Must be `gateway.networking.k8s.io`.
    pub group: String,
    /// Must be `HTTPRoute`.
    pub kind: String,
    /// The namespace of the routes permitted.
    pub namespace: String,
}

/// Resources that may be referred to, in the grant's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantTo {
    /// Must be `""` (the core group).
    #[serde(default)]
    pub group: String,
    /// Must be `Service`.
    pub kind: String,
    /// Only this Service; default every Service of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ReferenceGrantSpec {
    /// Checks every entry; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        for (list, len) in [("spec.from", self.from.len()), ("spec.to", self.to.len())] {
            if len == 0 {
                p.add(list, "[]", "at least one entry");
            }
            p.max_items(list, len, MAX_GRANT_ENTRIES);
        }
        for (i, f) in self.from.iter().enumerate() {
            let at = format!("spec.from[{i}]");
            let only = "gateway.networking.k8s.io (Skein resolves references from HTTPRoutes only)";
            p.check(
                f.group == GATEWAY_GROUP,
                format!("{at}.group"),
                &f.group,
                only,
            );
            p.check(
                f.kind == "HTTPRoute",
                format!("{at}.kind"),
                &f.kind,
                "HTTPRoute (Skein resolves references from HTTPRoutes only)",
            );
            p.dns_label(format!("{at}.namespace"), &f.namespace);
        }
        for (i, t) in self.to.iter().enumerate() {
            let at = format!("spec.to[{i}]");
            p.check(
                t.group.is_empty(),
                format!("{at}.group"),
                &t.group,
                "\"\" (the core API group: routes refer to Services)",
            );
            p.check(
                t.kind == "Service",
                format!("{at}.kind"),
                &t.kind,
                "Service (routes refer to Services)",
            );
            if let Some(name) = &t.name {
                p.dns_label(format!("{at}.name"), name);
            }
        }
    }

    /// Whether this grant lets HTTPRoutes of `from_namespace` refer to the Service
    /// `service` of the grant's own namespace.
    pub fn permits(&self, from_namespace: &str, service: &str) -> bool {
        let from = self.from.iter().any(|f| {
            f.group == GATEWAY_GROUP && f.kind == "HTTPRoute" && f.namespace == from_namespace
        });
        let to = self.to.iter().any(|t| {
            t.group.is_empty()
                && t.kind == "Service"
                && t.name.as_deref().is_none_or(|n| n == service)
        });
        from && to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ReferenceGrantSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn problems(yaml: &str) -> Vec<String> {
        let mut p = Problems::new();
        spec(yaml).validate(&mut p);
        p.into_vec().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_grant_permits_routes_of_its_from_namespaces_to_its_services() {
        let all = spec(
            "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{kind: Service}]}",
        );
        assert!(all.permits("shop", "payments"));
        assert!(
            !all.permits("other", "payments"),
            "only the named namespace"
        );
        let one = spec(
            "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{group: '', kind: Service, name: payments}]}",
        );
        assert!(one.permits("shop", "payments"));
        assert!(!one.permits("shop", "ledger"), "only the named Service");
    }

    #[test]
    fn grants_for_what_skein_does_not_resolve_are_refused() {
        let p = problems(
            "{from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: Shop}], to: [{group: apps, kind: Deployment, name: x_y}]}",
        );
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(
            p[0].starts_with("spec.from[0].kind: \"Gateway\" is not accepted; expected HTTPRoute"),
            "{p:#?}"
        );
        assert!(p[1].starts_with("spec.from[0].namespace"), "{p:#?}");
        assert!(p[2].starts_with("spec.to[0].group: \"apps\""), "{p:#?}");
        assert!(
            p[3].starts_with("spec.to[0].kind: \"Deployment\" is not accepted; expected Service"),
            "{p:#?}"
        );
        assert!(p[4].starts_with("spec.to[0].name"), "{p:#?}");
        assert_eq!(
            problems("{from: [], to: []}"),
            [
                "spec.from: \"[]\" is not accepted; expected at least one entry",
                "spec.to: \"[]\" is not accepted; expected at least one entry"
            ]
        );
    }
}
