//! HTTPRoutes attached to Services, pure: which of a Service's routes apply to a caller,
//! and in what order proxies break ties between equally specific matches.
//!
//! Gateway API for meshes (GEP-1294, "Namespace boundaries") sorts routes by where they
//! live. A **producer route** is in its Service's namespace and applies to every caller.
//! A **consumer route** is in another namespace and applies only to callers in its own
//! namespace; for them it replaces the producer's routes, so that a namespace can shape
//! its own calls without changing anyone else's. Within the set that applies, the routes
//! are merged as the spec merges them: the proxy ranks every match by specificity
//! (`skein_proxy::route`) and breaks ties by route order, oldest route first, then by
//! `namespace/name`.
//!
//! A reference from a route to a Service in another namespace (a `backendRef`, a mirror)
//! is followed only when a `ReferenceGrant` in the Service's namespace permits routes of
//! the route's namespace ([`refusal`]); otherwise proxies receive it marked refused and
//! answer `500` for the requests it would carry.
//!
//! Where the spec leaves a choice: consumer routes replace the producer's for the whole
//! Service, not port by port (a consumer route for port 80 leaves the caller with no
//! producer route on port 81 either), since the spec describes the sets per Service; and
//! a route without a creation time (a static file's) counts as the newest.

use skein_model::resource::ReferenceGrantSpec;
use skein_model::DestinationRoute;

/// An HTTPRoute attached to a Service, with what decides whom it applies to and its rank
/// among equals.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedRoute {
    /// The route's namespace.
    pub namespace: String,
    /// When the store created it (RFC 3339, UTC, second precision): older routes win ties.
    pub created: Option<String>,
    /// What proxies receive (its `name` is `namespace/name`).
    pub route: DestinationRoute,
}

/// The routes of a Service in `service_ns` that apply to a caller in `caller_ns`, in the
/// order that breaks ties: the caller namespace's consumer routes if it has any, else the
/// producer routes; oldest first, then by `namespace/name`.
pub fn for_caller(
    service_ns: &str,
    routes: &[AttachedRoute],
    caller_ns: &str,
) -> Vec<DestinationRoute> {
    let consumer = caller_ns != service_ns && routes.iter().any(|r| r.namespace == caller_ns);
    let from = if consumer { caller_ns } else { service_ns };
    let mut applying: Vec<&AttachedRoute> = routes.iter().filter(|r| r.namespace == from).collect();
    applying.sort_by(|a, b| {
        let key = |r: &AttachedRoute| (r.created.is_none(), r.created.clone());
        key(a)
            .cmp(&key(b))
            .then_with(|| a.route.name.cmp(&b.route.name))
    });
    applying.into_iter().map(|r| r.route.clone()).collect()
}

/// A `ReferenceGrant` with its namespace (the namespace whose Services it opens).
pub type Grant = (String, ReferenceGrantSpec);

/// Why a route in `route_ns` may not refer to Service `service` in `target_ns`, or `None`
/// when it may: same namespace, or a grant in `target_ns` permits it.
pub fn refusal(grants: &[Grant], route_ns: &str, target_ns: &str, service: &str) -> Option<String> {
    let permitted = route_ns == target_ns
        || grants
            .iter()
            .any(|(ns, g)| ns == target_ns && g.permits(route_ns, service));
    (!permitted).then(|| {
        format!(
            "no ReferenceGrant in namespace {target_ns} lets HTTPRoutes of namespace {route_ns} \
             refer to Service {target_ns}/{service}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_into_another_namespace_needs_a_grant_there() {
        let grant =
            |ns: &str, yaml: &str| -> Grant { (ns.into(), serde_yaml_ng::from_str(yaml).unwrap()) };
        let open = grant(
            "payments",
            "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{kind: Service, name: ledger}]}",
        );
        assert_eq!(refusal(&[], "shop", "shop", "web"), None, "same namespace");
        let why = refusal(&[], "shop", "payments", "ledger").unwrap();
        assert_eq!(
            why,
            "no ReferenceGrant in namespace payments lets HTTPRoutes of namespace shop refer to Service payments/ledger"
        );
        let grants = [open];
        assert_eq!(refusal(&grants, "shop", "payments", "ledger"), None);
        assert!(
            refusal(&grants, "shop", "payments", "cards").is_some(),
            "another Service"
        );
        assert!(
            refusal(&grants, "blog", "payments", "ledger").is_some(),
            "another namespace"
        );
        let elsewhere = [grant(
            "shop",
            "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{kind: Service}]}",
        )];
        assert!(
            refusal(&elsewhere, "shop", "payments", "ledger").is_some(),
            "a grant opens only its own namespace"
        );
    }

    fn route(namespace: &str, name: &str, created: Option<&str>) -> AttachedRoute {
        AttachedRoute {
            namespace: namespace.into(),
            created: created.map(str::to_string),
            route: DestinationRoute {
                name: format!("{namespace}/{name}"),
                port: None,
                hostnames: Vec::new(),
                rules: Vec::new(),
            },
        }
    }

    fn names(routes: &[DestinationRoute]) -> Vec<&str> {
        routes.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn producer_routes_apply_to_every_caller_without_consumer_routes() {
        let routes = [
            route("shop", "web", Some("2026-01-01T00:00:00Z")),
            route("fast", "web-fast", Some("2026-01-02T00:00:00Z")),
        ];
        assert_eq!(names(&for_caller("shop", &routes, "shop")), ["shop/web"]);
        assert_eq!(names(&for_caller("shop", &routes, "slow")), ["shop/web"]);
    }

    #[test]
    fn a_consumer_route_replaces_the_producers_for_its_own_namespace_only() {
        let routes = [
            route("shop", "web", Some("2026-01-01T00:00:00Z")),
            route("fast", "web-fast", Some("2026-01-02T00:00:00Z")),
            route("fast", "web-fast-2", Some("2026-01-02T00:00:00Z")),
        ];
        assert_eq!(
            names(&for_caller("shop", &routes, "fast")),
            ["fast/web-fast", "fast/web-fast-2"],
            "both of its namespace's, merged"
        );
        assert_eq!(
            names(&for_caller("shop", &routes, "shop")),
            ["shop/web"],
            "the Service's own namespace keeps the producer route"
        );
        assert_eq!(names(&for_caller("shop", &routes, "other")), ["shop/web"]);
    }

    #[test]
    fn the_oldest_route_comes_first_then_namespace_and_name() {
        let routes = [
            route("shop", "b", Some("2026-01-01T00:00:00Z")),
            route("shop", "untimed", None),
            route("shop", "c", Some("2025-12-31T23:59:59Z")),
            route("shop", "a", Some("2026-01-01T00:00:00Z")),
        ];
        assert_eq!(
            names(&for_caller("shop", &routes, "shop")),
            ["shop/c", "shop/a", "shop/b", "shop/untimed"]
        );
    }

    #[test]
    fn no_routes_of_the_service_namespace_or_the_callers_means_none() {
        let routes = [route("elsewhere", "web", None)];
        assert!(for_caller("shop", &routes, "shop").is_empty());
        assert!(for_caller("shop", &[], "fast").is_empty());
    }
}
