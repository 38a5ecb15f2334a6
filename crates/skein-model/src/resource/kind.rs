//! The kinds of resource Skein knows, their API versions and the words the CLI accepts for
//! them, and [`ResourceKey`], the identity of one resource in the store.

use crate::ModelError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// API version of Skein's own kinds.
pub const SKEIN_API_VERSION: &str = "skein.dev/v1alpha1";
/// API version of the Gateway API kinds (`HTTPRoute`).
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// API version of `ReferenceGrant`, which the Gateway API still serves as beta.
pub const GATEWAY_API_BETA_VERSION: &str = "gateway.networking.k8s.io/v1beta1";

/// One kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Mesh-wide settings; cluster-scoped (no namespace).
    Mesh,
    /// A set of workloads selected by labels, reachable on declared ports.
    Service,
    /// One instance of an application (a proxy registers it, or it is declared).
    Workload,
    /// Gateway API routing rules for a service.
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    /// Who may call a service.
    AuthorizationPolicy,
    /// How callers reach a service's endpoints: balancing, limits, ejection, retry budget.
    BackendPolicy,
    /// Delays and errors injected into route rules that name it (resilience testing).
    FaultInjection,
    /// Progressive delivery of a new version of a Service.
    Canary,
    /// Gateway API permission for routes in other namespaces to use this namespace's
    /// Services as backends.
    ReferenceGrant,
}

impl Kind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [Kind; 9] = [
        Kind::Mesh,
        Kind::Service,
        Kind::Workload,
        Kind::HttpRoute,
        Kind::AuthorizationPolicy,
        Kind::BackendPolicy,
        Kind::FaultInjection,
        Kind::Canary,
        Kind::ReferenceGrant,
    ];

    /// The canonical name as written in `kind:` (`HTTPRoute`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::Service => "Service",
            Kind::Workload => "Workload",
            Kind::HttpRoute => "HTTPRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::BackendPolicy => "BackendPolicy",
            Kind::FaultInjection => "FaultInjection",
            Kind::Canary => "Canary",
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }

    /// The `apiVersion:` this kind is written with.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::HttpRoute => GATEWAY_API_VERSION,
            Kind::ReferenceGrant => GATEWAY_API_BETA_VERSION,
            _ => SKEIN_API_VERSION,
        }
    }

    /// Lowercase plural (`httproutes`), used in API paths and storage keys.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::Service => "services",
            Kind::Workload => "workloads",
            Kind::HttpRoute => "httproutes",
            Kind::AuthorizationPolicy => "authorizationpolicies",
            Kind::BackendPolicy => "backendpolicies",
            Kind::FaultInjection => "faultinjections",
            Kind::Canary => "canaries",
            Kind::ReferenceGrant => "referencegrants",
        }
    }

    /// Every word the CLI accepts for this kind (matched case-insensitively); the first is
    /// the singular lowercase name.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Kind::Mesh => &["mesh", "meshes"],
            Kind::Service => &["service", "services", "svc"],
            Kind::Workload => &["workload", "workloads", "wl"],
            Kind::HttpRoute => &["httproute", "httproutes", "route", "routes"],
            Kind::AuthorizationPolicy => &["authorizationpolicy", "authorizationpolicies", "authz"],
            Kind::BackendPolicy => &["backendpolicy", "backendpolicies"],
            Kind::FaultInjection => &["faultinjection", "faultinjections", "fault", "faults"],
            Kind::Canary => &["canary", "canaries"],
            Kind::ReferenceGrant => &["referencegrant", "referencegrants", "refgrant"],
        }
    }

    /// Whether resources of this kind live in a namespace (all but `Mesh`).
    pub fn is_namespaced(self) -> bool {
        self != Kind::Mesh
    }

    /// The kind written as `kind: NAME` (exact, case-sensitive, as Kubernetes does).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind named by a CLI word: any alias, case-insensitively (`routes`, `SVC`,
    /// `HTTPRoute`). The error lists every accepted word.
    pub fn from_cli(word: &str) -> Result<Kind, ModelError> {
        let lower = word.trim().to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.aliases().contains(&lower.as_str()))
            .ok_or_else(|| ModelError::UnknownKind {
                word: word.to_string(),
            })
    }

    /// The accepted CLI words, grouped by kind: `mesh|meshes, service|services|svc, …`.
    pub fn accepted_words() -> String {
        Kind::ALL
            .iter()
            .map(|k| k.aliases().join("|"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The accepted `kind:` values with their apiVersions, for error messages.
    pub fn accepted_kinds() -> String {
        let skein: Vec<_> = Kind::ALL
            .iter()
            .filter(|k| k.api_version() == SKEIN_API_VERSION)
            .map(|k| k.name())
            .collect();
        format!(
            "one of {} (apiVersion {SKEIN_API_VERSION}), HTTPRoute (apiVersion {GATEWAY_API_VERSION}) or ReferenceGrant (apiVersion {GATEWAY_API_BETA_VERSION})",
            skein.join(", ")
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = ModelError;

    /// Same as [`Kind::from_cli`].
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Kind::from_cli(word)
    }
}

/// The identity of one resource: kind, namespace (empty for `Mesh`) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// The resource's kind.
    pub kind: Kind,
    /// Its namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResourceKey {
    /// A key; `namespace` is ignored (stored empty) for cluster-scoped kinds.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ResourceKey {
        let namespace = if kind.is_namespaced() { namespace } else { "" };
        ResourceKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The stable storage form: `httproutes/default/restaurant`, or `meshes/default` for a
    /// cluster-scoped kind. Names and namespaces never contain `/`, so it is unambiguous;
    /// [`ResourceKey::from_storage_path`] reads it back.
    pub fn storage_path(&self) -> String {
        format!(
            "{}{}",
            Self::storage_prefix(self.kind, &self.namespace),
            self.name
        )
    }

    /// The prefix shared by the storage paths of one kind in one namespace
    /// (`httproutes/default/`); for cluster-scoped kinds the namespace is ignored
    /// (`meshes/`). With an empty namespace it is the prefix of the kind in every namespace
    /// only for cluster-scoped kinds; use [`Kind::plural`] plus `/` for that.
    pub fn storage_prefix(kind: Kind, namespace: &str) -> String {
        if kind.is_namespaced() {
            format!("{}/{namespace}/", kind.plural())
        } else {
            format!("{}/", kind.plural())
        }
    }

    /// Reads a path written by [`ResourceKey::storage_path`].
    pub fn from_storage_path(path: &str) -> Option<ResourceKey> {
        let (plural, rest) = path.split_once('/')?;
        let kind = Kind::ALL.into_iter().find(|k| k.plural() == plural)?;
        let (namespace, name) = if kind.is_namespaced() {
            rest.split_once('/')?
        } else {
            ("", rest)
        };
        let valid = |s: &str| !s.is_empty() && !s.contains('/');
        (valid(name) && (namespace.is_empty() != kind.is_namespaced()) && !namespace.contains('/'))
            .then(|| ResourceKey::new(kind, namespace, name))
    }
}

impl fmt::Display for ResourceKey {
    /// `HTTPRoute/default/restaurant`, or `Mesh/default` for a cluster-scoped kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_namespaced() {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{}/{}", self.kind, self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_aliases_name_their_kind() {
        let cases = [
            ("httproute", Kind::HttpRoute),
            ("HTTPRoute", Kind::HttpRoute),
            ("httproutes", Kind::HttpRoute),
            ("route", Kind::HttpRoute),
            ("routes", Kind::HttpRoute),
            ("svc", Kind::Service),
            ("services", Kind::Service),
            ("wl", Kind::Workload),
            ("workloads", Kind::Workload),
            ("authz", Kind::AuthorizationPolicy),
            ("authorizationpolicies", Kind::AuthorizationPolicy),
            ("AuthorizationPolicy", Kind::AuthorizationPolicy),
            ("backendpolicies", Kind::BackendPolicy),
            ("mesh", Kind::Mesh),
            ("meshes", Kind::Mesh),
        ];
        for (word, kind) in cases {
            assert_eq!(word.parse::<Kind>().unwrap(), kind, "{word}");
        }
    }

    #[test]
    fn unknown_cli_word_lists_accepted_words() {
        let err = Kind::from_cli("gateway").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown resource kind \"gateway\"; accepted: mesh|meshes, service|services|svc, \
             workload|workloads|wl, httproute|httproutes|route|routes, \
             authorizationpolicy|authorizationpolicies|authz, backendpolicy|backendpolicies, \
             faultinjection|faultinjections|fault|faults, canary|canaries, \
             referencegrant|referencegrants|refgrant"
        );
    }

    #[test]
    fn names_versions_and_scope() {
        assert_eq!(Kind::HttpRoute.name(), "HTTPRoute");
        assert_eq!(Kind::HttpRoute.plural(), "httproutes");
        assert_eq!(
            Kind::HttpRoute.api_version(),
            "gateway.networking.k8s.io/v1"
        );
        assert_eq!(Kind::Mesh.api_version(), "skein.dev/v1alpha1");
        assert!(!Kind::Mesh.is_namespaced());
        assert!(Kind::ALL[1..].iter().all(|k| k.is_namespaced()));
        assert_eq!(Kind::from_name("HTTPRoute"), Some(Kind::HttpRoute));
        assert_eq!(Kind::from_name("httproute"), None);
    }

    #[test]
    fn keys_display_and_storage_paths_round_trip() {
        let route = ResourceKey::new(Kind::HttpRoute, "default", "restaurant");
        assert_eq!(route.to_string(), "HTTPRoute/default/restaurant");
        assert_eq!(route.storage_path(), "httproutes/default/restaurant");
        let mesh = ResourceKey::new(Kind::Mesh, "ignored", "default");
        assert_eq!(mesh.namespace, "");
        assert_eq!(mesh.to_string(), "Mesh/default");
        assert_eq!(mesh.storage_path(), "meshes/default");
        for key in [route, mesh] {
            assert_eq!(
                ResourceKey::from_storage_path(&key.storage_path()),
                Some(key)
            );
        }
        for bad in [
            "",
            "routes/a/b",
            "httproutes/a",
            "httproutes/a/b/c",
            "meshes/a/b",
        ] {
            assert_eq!(ResourceKey::from_storage_path(bad), None, "{bad}");
        }
    }
}
