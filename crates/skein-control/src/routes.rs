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
//! A producer route's reference to a Service in another namespace (a `backendRef`, a
//! mirror) is followed only when a `ReferenceGrant` in the Service's namespace permits
//! routes of the route's namespace ([`refusal`]); otherwise proxies receive it marked
//! refused and answer `500` for the requests it would carry. A producer route moves every
//! caller's traffic, so the namespace receiving it must opt in. A consumer route needs no
//! grant: it moves only its own namespace's callers, who may call that Service directly
//! anyway (GEP-1294 lets meshes follow every such reference; the mesh conformance case
//! `MeshConsumerRoute` sends into the parent's namespace without a grant).
//!
//! Where the spec leaves a choice: consumer routes replace the producer's for the whole
//! Service, not port by port (a consumer route for port 80 leaves the caller with no
//! producer route on port 81 either), since the spec describes the sets per Service; and
//! a route without a creation time (a static file's) counts as the newest.

use crate::snapshot::ServiceView;
use skein_model::resource::{HttpRoute, ParentRef, ReferenceGrantSpec, RouteRule};
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
/// when it may: same namespace, a consumer route (`consumer`: it applies only to callers
/// of its own namespace), or a grant in `target_ns` permits it.
pub fn refusal(
    grants: &[Grant],
    route_ns: &str,
    target_ns: &str,
    service: &str,
    consumer: bool,
) -> Option<String> {
    let permitted = consumer
        || route_ns == target_ns
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

/// One condition as computed, before the registry adds the generation and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Accepted` or `ResolvedRefs`.
    pub kind: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// The Gateway API's reason.
    pub reason: &'static str,
    /// What holds, or what is wrong and what to do.
    pub message: String,
}

/// The mesh's Services by namespace and name: built once per change, for every route's
/// references to be looked up in.
pub type ServiceIndex<'a> = std::collections::HashMap<(&'a str, &'a str), &'a ServiceView>;

/// Indexes `services` by namespace and name.
pub fn index(services: &[ServiceView]) -> ServiceIndex<'_> {
    services
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect()
}

/// A route's `Accepted` and `ResolvedRefs` conditions at each of its parents, in
/// `parentRefs` order (each parent's namespace filled in), against the mesh's `services`
/// and `grants`.
pub fn verdicts(
    route: &HttpRoute,
    services: &ServiceIndex<'_>,
    grants: &[Grant],
) -> Vec<(ParentRef, [Verdict; 2])> {
    let route_ns = route.metadata.namespace.as_str();
    let find = |ns: &str, name: &str| services.get(&(ns, name)).copied();
    route
        .spec
        .parent_refs
        .iter()
        .enumerate()
        .map(|(i, parent)| {
            let ns = parent.namespace.as_deref().unwrap_or(route_ns);
            let mut filled = parent.clone();
            filled.namespace = Some(ns.to_string());
            let accepted = match (find(ns, &parent.name), parent.port) {
                (None, _) => Verdict {
                    kind: "Accepted",
                    ok: false,
                    reason: "NoMatchingParent",
                    message: format!(
                        "parentRefs[{i}]: Service {ns}/{} does not exist; the route applies once it does",
                        parent.name
                    ),
                },
                (Some(s), Some(port)) if !s.ports.iter().any(|(p, _)| *p == port) => Verdict {
                    kind: "Accepted",
                    ok: false,
                    reason: "NoMatchingParent",
                    message: format!(
                        "parentRefs[{i}]: Service {ns}/{} has no port {port} (its ports: {:?}); name one of them, or leave port out for every port",
                        parent.name,
                        s.ports.iter().map(|(p, _)| *p).collect::<Vec<_>>()
                    ),
                },
                (Some(_), port) => {
                    let on = port.map_or("every port".to_string(), |p| format!("port {p}"));
                    let whom = if ns == route_ns {
                        "callers in every namespace (a producer route)".to_string()
                    } else {
                        format!(
                            "callers in namespace {route_ns} only (a consumer route: for them it replaces the Service's own routes)"
                        )
                    };
                    Verdict {
                        kind: "Accepted",
                        ok: true,
                        reason: "Accepted",
                        message: format!("applies to requests to Service {ns}/{} on {on} from {whom}", parent.name),
                    }
                }
            };
            let resolved = resolved_refs(route, &find, grants, ns != route_ns);
            (filled, [accepted, resolved])
        })
        .collect()
}

/// The route's `ResolvedRefs`: every backendRef and mirror names a Service that exists,
/// on a port it has, that the route may refer to.
fn resolved_refs<'a>(
    route: &HttpRoute,
    find: &impl Fn(&str, &str) -> Option<&'a ServiceView>,
    grants: &[Grant],
    consumer: bool,
) -> Verdict {
    let route_ns = route.metadata.namespace.as_str();
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    let mut invalid: Vec<(&'static str, String)> = Vec::new();
    let mut check = |at: String, name: &str, ns: Option<&String>, port: Option<u16>| {
        let ns = ns.map_or(route_ns, String::as_str);
        match find(ns, name) {
            None => problems.push((
                "BackendNotFound",
                format!("{at}: Service {ns}/{name} does not exist"),
            )),
            Some(s) if port.is_some_and(|p| !s.ports.iter().any(|(sp, _)| *sp == p)) => problems
                .push((
                    "BackendNotFound",
                    format!(
                        "{at}: Service {ns}/{name} has no port {} (its ports: {:?})",
                        port.unwrap_or_default(),
                        s.ports.iter().map(|(p, _)| *p).collect::<Vec<_>>()
                    ),
                )),
            Some(_) => {
                if let Some(why) = refusal(grants, route_ns, ns, name, consumer) {
                    problems.push(("RefNotPermitted", format!("{at}: {why}")));
                }
            }
        }
    };
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for (j, b) in rule.backend_refs.iter().enumerate() {
            if !b.is_service() {
                invalid.push((
                    "InvalidKind",
                    format!(
                        "rules[{i}].backendRefs[{j}]: {}",
                        invalid_kind(&b.group, &b.kind)
                    ),
                ));
                continue;
            }
            check(
                format!("rules[{i}].backendRefs[{j}]"),
                &b.name,
                b.namespace.as_ref(),
                b.port,
            );
        }
        let filters = rule
            .filters
            .iter()
            .chain(rule.backend_refs.iter().flat_map(|b| &b.filters));
        for m in filters.filter_map(|f| f.request_mirror.as_ref()) {
            let r = &m.backend_ref;
            check(
                format!("rules[{i}] mirror"),
                &r.name,
                r.namespace.as_ref(),
                r.port,
            );
        }
    }
    // Kinds first: InvalidKind is the reason when there is one.
    invalid.extend(problems);
    let problems = invalid;
    match problems.first() {
        None => Verdict {
            kind: "ResolvedRefs",
            ok: true,
            reason: "ResolvedRefs",
            message: "every backendRef and mirror resolves".into(),
        },
        Some((reason, _)) => Verdict {
            kind: "ResolvedRefs",
            ok: false,
            reason,
            message: format!(
                "{}; requests to such a backend are answered 500, copies to such a mirror are not sent",
                problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ")
            ),
        },
    }
}

/// Marks every backendRef and mirror of `rules` (namespaces filled in) that proxies must
/// not follow: another kind than Service, or a Service [`refusal`] refuses.
pub fn mark_refusals(rules: &mut [RouteRule], grants: &[Grant], route_ns: &str, consumer: bool) {
    for rule in rules {
        for b in &mut rule.backend_refs {
            let ns = b.namespace.clone().unwrap_or_else(|| route_ns.to_string());
            b.refused = if b.is_service() {
                refusal(grants, route_ns, &ns, &b.name, consumer)
            } else {
                Some(invalid_kind(&b.group, &b.kind))
            };
        }
        let backends = rule
            .backend_refs
            .iter_mut()
            .flat_map(|b| b.filters.iter_mut());
        for filter in rule.filters.iter_mut().chain(backends) {
            if let Some(m) = filter.request_mirror.as_mut() {
                let to = &mut m.backend_ref;
                let ns = to.namespace.clone().unwrap_or_else(|| route_ns.to_string());
                to.refused = refusal(grants, route_ns, &ns, &to.name, consumer);
            }
        }
    }
}

/// Why a backendRef of another kind than Service is not followed.
pub fn invalid_kind(group: &str, kind: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    format!("its kind {kind} (group {group}) is not one Skein resolves; only Services (group \"\", kind Service) are")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_view(ns: &str, name: &str, ports: &[u16]) -> ServiceView {
        ServiceView {
            name: name.into(),
            namespace: ns.into(),
            selector: Default::default(),
            accounts: vec![name.into()],
            ports: ports
                .iter()
                .map(|p| (*p, skein_model::Protocol::Http))
                .collect(),
            target_ports: Default::default(),
            addresses: vec![],
            routes: vec![],
            policies: vec![],
            export_to: vec![],
        }
    }

    fn http_route(ns: &str, spec: &str) -> HttpRoute {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {ns}}}\nspec: {spec}\n"
        );
        match skein_model::resource::parse_documents(&yaml, "test")
            .unwrap()
            .remove(0)
        {
            skein_model::resource::Resource::HttpRoute(r) => r,
            _ => unreachable!(),
        }
    }

    fn conditions(v: &[(ParentRef, [Verdict; 2])]) -> Vec<(bool, &str, bool, &str)> {
        v.iter()
            .map(|(_, [a, r])| (a.ok, a.reason, r.ok, r.reason))
            .collect()
    }

    #[test]
    fn a_route_is_accepted_where_its_parent_exists_with_that_port() {
        let services = [
            service_view("shop", "web", &[80]),
            service_view("shop", "api", &[80]),
        ];
        let route = http_route(
            "shop",
            "{parentRefs: [{name: web, port: 80}, {name: gone}, {name: api, port: 81}, {name: web, namespace: other}], rules: [{backendRefs: [{name: api}]}]}",
        );
        let v = verdicts(&route, &index(&services), &[]);
        assert_eq!(
            conditions(&v),
            [
                (true, "Accepted", true, "ResolvedRefs"),
                (false, "NoMatchingParent", true, "ResolvedRefs"),
                (false, "NoMatchingParent", true, "ResolvedRefs"),
                (false, "NoMatchingParent", true, "ResolvedRefs"),
            ]
        );
        assert_eq!(v[0].0.namespace.as_deref(), Some("shop"), "filled in");
        assert!(
            v[0].1[0]
                .message
                .contains("from callers in every namespace (a producer route)"),
            "{:?}",
            v[0].1[0]
        );
        assert!(
            v[1].1[0]
                .message
                .contains("Service shop/gone does not exist"),
            "{:?}",
            v[1].1[0]
        );
        assert!(
            v[2].1[0]
                .message
                .contains("has no port 81 (its ports: [80])"),
            "{:?}",
            v[2].1[0]
        );
        let consumer = http_route(
            "fast",
            "{parentRefs: [{name: web, namespace: shop}], rules: [{backendRefs: [{name: web, namespace: shop}]}]}",
        );
        let v = verdicts(&consumer, &index(&services), &[]);
        assert!(v[0].1[0].ok);
        assert!(
            v[0].1[0]
                .message
                .contains("callers in namespace fast only (a consumer route"),
            "{:?}",
            v[0].1[0]
        );
    }

    #[test]
    fn references_resolve_when_the_service_and_port_exist_and_a_grant_permits() {
        let services = [
            service_view("shop", "web", &[80]),
            service_view("payments", "ledger", &[8080]),
        ];
        let route = |backend: &str| {
            http_route(
                "shop",
                &format!("{{parentRefs: [{{name: web}}], rules: [{{backendRefs: [{backend}]}}]}}"),
            )
        };
        let resolved = |backend: &str, grants: &[Grant]| {
            let v = verdicts(&route(backend), &index(&services), grants);
            v[0].1[1].clone()
        };
        let missing = resolved("{name: nowhere}", &[]);
        assert_eq!((missing.ok, missing.reason), (false, "BackendNotFound"));
        assert!(
            missing
                .message
                .starts_with("rules[0].backendRefs[0]: Service shop/nowhere does not exist;"),
            "{missing:?}"
        );
        let kind = resolved("{group: apps, kind: Deployment, name: web}", &[]);
        assert_eq!((kind.ok, kind.reason), (false, "InvalidKind"));
        assert!(
            kind.message
                .contains("its kind Deployment (group apps) is not one Skein resolves"),
            "{kind:?}"
        );
        let port = resolved("{name: web, port: 81}", &[]);
        assert_eq!((port.ok, port.reason), (false, "BackendNotFound"));
        let across = resolved("{name: ledger, namespace: payments, port: 8080}", &[]);
        assert_eq!((across.ok, across.reason), (false, "RefNotPermitted"));
        assert!(
            across
                .message
                .contains("no ReferenceGrant in namespace payments"),
            "{across:?}"
        );
        let grant: Grant = (
            "payments".into(),
            serde_yaml_ng::from_str("{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{kind: Service}]}").unwrap(),
        );
        let granted = resolved("{name: ledger, namespace: payments, port: 8080}", &[grant]);
        assert_eq!((granted.ok, granted.reason), (true, "ResolvedRefs"));
        let mirror = verdicts(
            &http_route(
                "shop",
                "{parentRefs: [{name: web}], rules: [{backendRefs: [{name: web}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]}]}",
            ),
            &index(&services),
            &[],
        );
        assert_eq!(mirror[0].1[1].reason, "BackendNotFound");
        assert!(mirror[0].1[1]
            .message
            .starts_with("rules[0] mirror: Service shop/shadow does not exist"));
    }

    #[test]
    fn a_reference_into_another_namespace_needs_a_grant_there() {
        let grant =
            |ns: &str, yaml: &str| -> Grant { (ns.into(), serde_yaml_ng::from_str(yaml).unwrap()) };
        let open = grant(
            "payments",
            "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{kind: Service, name: ledger}]}",
        );
        assert_eq!(
            refusal(&[], "shop", "shop", "web", false),
            None,
            "same namespace"
        );
        let why = refusal(&[], "shop", "payments", "ledger", false).unwrap();
        assert_eq!(
            why,
            "no ReferenceGrant in namespace payments lets HTTPRoutes of namespace shop refer to Service payments/ledger"
        );
        let grants = [open];
        assert_eq!(refusal(&grants, "shop", "payments", "ledger", false), None);
        assert!(
            refusal(&grants, "shop", "payments", "cards", false).is_some(),
            "another Service"
        );
        assert!(
            refusal(&grants, "blog", "payments", "ledger", false).is_some(),
            "another namespace"
        );
        let elsewhere = [grant(
            "shop",
            "{from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], to: [{kind: Service}]}",
        )];
        assert!(
            refusal(&elsewhere, "shop", "payments", "ledger", false).is_some(),
            "a grant opens only its own namespace"
        );
        assert_eq!(
            refusal(&[], "shop", "payments", "ledger", true),
            None,
            "a consumer route moves only its own namespace's callers"
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
