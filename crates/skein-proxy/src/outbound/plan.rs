//! Route planning, pure: from the state in force and a request, which service port the
//! request addressed, which HTTPRoute rule handles it, and which backend it goes to. No
//! I/O and no clock: [`super::http`] drives the tries a plan asks for.
//!
//! Planning runs once per request against the snapshot the request loaded, so a route or
//! endpoint change reaches the next request on every open connection.

use crate::destinations::{Destinations, Service, Target};
use crate::error::ProxyError;
use http::header::HOST;
use http::{Method, Request};
use skein_model::resource::filter::RouteFilter;
use skein_model::resource::{PathMatchType, RouteRetry, RouteRule, TryDeadline};
use std::net::SocketAddr;
use std::sync::Arc;

/// How requests on one application connection name their destination.
#[derive(Debug, Clone)]
pub enum Addressed {
    /// An intercepted connection: the service that owns the address the application
    /// dialled (resolved again for every request).
    Addr(SocketAddr),
    /// A local upstream listener's service port.
    Name {
        /// `service[.namespace]`.
        service: Arc<str>,
        /// The service port.
        port: u16,
    },
    /// Each request names its destination in its authority (HTTP proxy mode).
    Authority,
}

/// Where one request goes.
#[derive(Debug)]
pub struct Plan {
    /// The service port the request addressed.
    pub target: Target,
    /// Where it is sent: the backend its rule picked, or the target itself.
    pub backend: Target,
    /// The rule that matched, if any.
    pub rule: Option<RuleRef>,
}

/// The HTTPRoute rule that matched a request, held through the destination's `Arc`, so
/// that nothing of the rule is copied per request.
#[derive(Debug)]
pub struct RuleRef {
    parent: Arc<Service>,
    /// Index of the HTTPRoute among the parent's routes.
    pub route: usize,
    /// Index of the rule in it.
    pub index: usize,
    /// Index of the rule's match that fitted.
    pub matched: usize,
    /// Index of the backendRef picked.
    pub backend: usize,
}

impl RuleRef {
    /// The rule.
    pub fn rule(&self) -> &RouteRule {
        &self.parent.spec.routes[self.route].rules[self.index]
    }

    /// The filters for this request: the rule's, then the picked backendRef's.
    pub fn filters(&self) -> impl Iterator<Item = &RouteFilter> {
        let rule = self.rule();
        let backend = rule.backend_refs.get(self.backend);
        rule.filters
            .iter()
            .chain(backend.into_iter().flat_map(|b| &b.filters))
    }

    /// The prefix the fitted match matched, when it is a `PathPrefix` match (what
    /// `ReplacePrefixMatch` replaces).
    pub fn matched_prefix(&self) -> Option<&str> {
        let m = self.rule().matches.get(self.matched)?;
        (m.path.kind == PathMatchType::PathPrefix).then_some(m.path.value.as_str())
    }

    /// The HTTPRoute's name, as telemetry labels it.
    pub fn route_label(&self) -> crate::telemetry::Label {
        self.parent.route_labels[self.route].clone()
    }

    /// The rule's retry policy.
    pub fn retry(&self) -> Option<&RouteRetry> {
        self.rule().retry.as_ref()
    }

    /// The error for a passed deadline `d`, naming where it is written.
    pub fn timeout(&self, d: &TryDeadline) -> ProxyError {
        ProxyError::Timeout {
            service: self.parent.spec.service.clone(),
            after: d.after,
            field: d.field,
            route: self.parent.spec.routes[self.route].name.clone(),
            rule: self.index,
        }
    }

    /// When a try starting `into` after the request must end, if the rule has timeouts.
    pub fn deadline(&self, into: std::time::Duration) -> Option<TryDeadline> {
        self.rule().timeouts.as_ref()?.try_deadline(into)
    }
}

/// The service port a request addressed, before any route applies: what its telemetry
/// is labelled with even when no route takes it.
pub fn target<B>(
    destinations: &Destinations,
    addressed: &Addressed,
    req: &Request<B>,
) -> Result<Target, ProxyError> {
    match addressed {
        Addressed::Addr(addr) => destinations.resolve_addr(*addr).ok_or_else(|| {
            ProxyError::UnknownService(format!(
                "{addr} (the service at this address was removed; new connections to it pass through unmeshed)"
            ))
        }),
        Addressed::Name { service, port } => destinations.resolve(service, *port),
        Addressed::Authority => {
            let authority = authority_of(req).ok_or(ProxyError::NoAuthority)?;
            destinations.resolve_authority(&authority)
        }
    }
}

/// Plans a request: resolves what it addressed, then, unless it is a CONNECT, applies the
/// addressed service's HTTPRoutes (the most specific matching rule, a backend picked by
/// weight with `random`). A service port without routes sends the request to the service
/// itself; one with routes refuses what none of them matches (404), and a rule whose
/// picked backendRef cannot be resolved answers 500, as the Gateway API asks.
pub fn plan<B>(
    destinations: &Destinations,
    addressed: &Addressed,
    req: &Request<B>,
    random: u64,
) -> Result<Plan, ProxyError> {
    let target = target(destinations, addressed, req)?;
    if req.method() == Method::CONNECT {
        return Ok(Plan {
            backend: target.clone(),
            target,
            rule: None,
        });
    }
    let spec = &target.service.spec;
    let table = &target.service.routes;
    let port = target.port.port;
    let Some((route, index, matched)) = table.select_match(port, req) else {
        if table.attached(port, req) {
            return Err(ProxyError::NoRouteMatched {
                service: spec.service.clone(),
                port,
                routes: attached_names(&spec.routes, port),
            });
        }
        return Ok(Plan {
            backend: target.clone(),
            target,
            rule: None,
        });
    };
    let route_spec = &spec.routes[route];
    let rule_spec = &route_spec.rules[index];
    let unresolved = |why: String| ProxyError::BackendUnresolved {
        route: route_spec.name.clone(),
        rule: index,
        why,
    };
    let redirects = rule_spec
        .filters
        .iter()
        .any(|f| f.request_redirect.is_some());
    if redirects {
        // Answered by the redirect: nothing is sent anywhere, whatever its backendRefs.
        let rule = RuleRef {
            parent: target.service.clone(),
            route,
            index,
            matched,
            backend: 0,
        };
        return Ok(Plan {
            backend: target.clone(),
            target,
            rule: Some(rule),
        });
    }
    let picked = crate::route::pick(rule_spec, random).ok_or_else(|| {
        unresolved(if rule_spec.backend_refs.is_empty() {
            "it has no backendRefs and no RequestRedirect to answer instead".into()
        } else {
            "every backendRef has weight 0".into()
        })
    })?;
    let backend_ref = &rule_spec.backend_refs[picked];
    if let Some(why) = &backend_ref.refused {
        return Err(unresolved(format!(
            "its backendRef is not permitted: {why}"
        )));
    }
    let namespace = backend_ref.namespace.as_deref().unwrap_or(&spec.namespace);
    let backend_port = backend_ref.port.unwrap_or(port);
    let name = format!("{}.{namespace}", backend_ref.name);
    let backend = destinations
        .resolve(&name, backend_port)
        .map_err(|e| match e {
            ProxyError::UnknownService(_) => {
                unresolved(format!("its backendRef {name} names no Service this proxy knows"))
            }
            ProxyError::UnknownPort { ports, .. } => unresolved(format!(
                "its backendRef {name} names port {backend_port}, which that Service does not have (its ports: {ports:?})"
            )),
            other => other,
        })?;
    let rule = RuleRef {
        parent: target.service.clone(),
        route,
        index,
        matched,
        backend: picked,
    };
    Ok(Plan {
        target,
        backend,
        rule: Some(rule),
    })
}

/// The `namespace/name` of the routes attached to `port` (hostnames aside), for a 404's
/// message.
fn attached_names(routes: &[skein_model::DestinationRoute], port: u16) -> String {
    let names: Vec<&str> = routes
        .iter()
        .filter(|r| r.port.is_none_or(|p| p == port))
        .map(|r| r.name.as_str())
        .collect();
    names.join(", ")
}

/// The authority a request names: its URI's (absolute form, HTTP/2) or its Host header.
pub fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| req.headers().get(HOST)?.to_str().ok().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::Destination;

    const TABLE: &str = "
- service: web
  addresses: [198.18.0.10]
  ports: [{port: 80}]
  endpoints: [{address: '127.0.0.10:4143'}]
  routes:
  - name: default/web-off
    rules:
    - matches: [{path: {type: Exact, value: /off}}]
      backendRefs: [{name: web-a, weight: 0}]
  - name: default/web-split
    rules:
    - matches: [{headers: [{name: x-canary, value: 'true'}]}]
      backendRefs: [{name: web-b}]
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: web-a, weight: 3}, {name: web-b, weight: 1}]
- service: web-a
  ports: [{port: 80}]
  endpoints: [{address: '127.0.0.11:4143'}]
- service: web-b
  ports: [{port: 80}, {port: 8080}]
  endpoints: [{address: '127.0.0.12:4143'}]
- service: plain
  addresses: [198.18.0.13]
  ports: [{port: 9000}]
  endpoints: []
";

    fn table(yaml: &str) -> Destinations {
        let specs: Vec<Destination> = serde_yaml_ng::from_str(yaml).unwrap();
        let specs: Vec<_> = specs.into_iter().map(std::sync::Arc::new).collect();
        Destinations::new(&specs, "default", None)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn backend(p: &Plan) -> &str {
        &p.backend.service.spec.service
    }

    #[test]
    fn the_first_matching_rule_picks_a_backend_by_weight() {
        let d = table(TABLE);
        let to = Addressed::Addr("198.18.0.10:80".parse().unwrap());
        let canary = plan(&d, &to, &req("GET", "/", &[("x-canary", "true")]), 0).unwrap();
        assert_eq!(backend(&canary), "web-b");
        let rule = canary.rule.as_ref().unwrap();
        assert_eq!(
            (&*rule.route_label(), rule.route, rule.index),
            ("default/web-split", 1, 0)
        );
        assert_eq!(
            canary.target.service.spec.service, "web",
            "what was addressed stays"
        );
        // Weights 3:1 over the random space.
        let picks: Vec<_> = (0..4)
            .map(|r| backend(&plan(&d, &to, &req("GET", "/x", &[]), r).unwrap()).to_string())
            .collect();
        assert_eq!(picks, ["web-a", "web-a", "web-a", "web-b"]);
    }

    #[test]
    fn without_a_matching_rule_or_for_connect_the_target_itself() {
        let d = table(TABLE);
        let to = Addressed::Name {
            service: "plain".into(),
            port: 9000,
        };
        let p = plan(&d, &to, &req("GET", "/", &[]), 0).unwrap();
        assert_eq!(backend(&p), "plain");
        assert!(p.rule.is_none());
        let connect = req("CONNECT", "web:80", &[]);
        let p = plan(&d, &Addressed::Authority, &connect, 0).unwrap();
        assert_eq!(
            backend(&p),
            "web",
            "routes apply to HTTP requests, not tunnels"
        );
    }

    #[test]
    fn an_upstream_listener_may_name_its_service_with_its_namespace() {
        let d = table(TABLE);
        for service in ["web-b", "web-b.default"] {
            let to = Addressed::Name {
                service: service.into(),
                port: 8080,
            };
            let p = plan(&d, &to, &req("GET", "/", &[]), 0).unwrap();
            assert_eq!(
                (backend(&p), p.target.port.port),
                ("web-b", 8080),
                "{service}"
            );
        }
        let elsewhere = Addressed::Name {
            service: "web-b.shop".into(),
            port: 8080,
        };
        let e = plan(&d, &elsewhere, &req("GET", "/", &[]), 0).unwrap_err();
        assert!(matches!(e, ProxyError::UnknownService(_)), "{e}");
    }

    #[test]
    fn the_authority_names_the_target_per_request() {
        let d = table(TABLE);
        let by_host = req("GET", "/", &[("host", "web-b:8080")]);
        let p = plan(&d, &Addressed::Authority, &by_host, 0).unwrap();
        assert_eq!((backend(&p), p.backend.port.port), ("web-b", 8080));
        let absolute = req("GET", "http://web-a/", &[]);
        assert_eq!(
            backend(&plan(&d, &Addressed::Authority, &absolute, 0).unwrap()),
            "web-a"
        );
        let none = req("GET", "/", &[]);
        assert!(matches!(
            plan(&d, &Addressed::Authority, &none, 0),
            Err(ProxyError::NoAuthority)
        ));
    }

    #[test]
    fn refusals_say_which_service_or_rule_is_at_fault() {
        let d = table(TABLE);
        let to = Addressed::Addr("198.18.0.10:80".parse().unwrap());
        let off = plan(&d, &to, &req("GET", "/off", &[]), 0).unwrap_err();
        assert!(
            off.to_string().contains(
                "HTTPRoute default/web-off rule 0 matched, but every backendRef has weight 0"
            ),
            "{off}"
        );
        assert_eq!(
            off.status(),
            500,
            "Gateway API: an unresolvable backendRef is a 500"
        );
        let gone = Addressed::Addr("198.18.0.99:80".parse().unwrap());
        let e = plan(&d, &gone, &req("GET", "/", &[]), 0).unwrap_err();
        assert!(e.to_string().contains("was removed"), "{e}");
        let missing_backend = TABLE.replace("name: web-a, weight: 3", "name: nowhere, weight: 3");
        let d = table(&missing_backend);
        let e = plan(&d, &to, &req("GET", "/x", &[]), 0).unwrap_err();
        assert!(
            e.to_string().contains(
                "HTTPRoute default/web-split rule 1 matched, but its backendRef nowhere.default names no Service"
            ),
            "{e}"
        );
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (500, "backend_unresolved")
        );
        let bad_port = TABLE.replace("name: web-a, weight: 3", "name: web-a, port: 81, weight: 3");
        let e = plan(&table(&bad_port), &to, &req("GET", "/x", &[]), 0).unwrap_err();
        assert!(
            e.to_string()
                .contains("names port 81, which that Service does not have (its ports: [80])"),
            "{e}"
        );
    }

    #[test]
    fn a_backend_the_control_plane_refused_answers_500_saying_why() {
        let d = table(&TABLE.replace(
            "backendRefs: [{name: web-b}]",
            "backendRefs: [{name: web-b, refused: 'no ReferenceGrant in namespace default lets HTTPRoutes of namespace shop refer to Service default/web-b'}]",
        ));
        let to = Addressed::Addr("198.18.0.10:80".parse().unwrap());
        let e = plan(&d, &to, &req("GET", "/", &[("x-canary", "true")]), 0).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (500, "backend_unresolved")
        );
        assert!(
            e.to_string().contains(
                "its backendRef is not permitted: no ReferenceGrant in namespace default"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_rule_without_backends_is_answered_by_its_redirect() {
        let routes = "
- service: web
  addresses: [198.18.0.10]
  ports: [{port: 80}]
  endpoints: [{address: '127.0.0.10:4143'}]
  routes:
  - name: default/moved
    rules:
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: new.example}}]
    - matches: [{path: {type: PathPrefix, value: /none}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
";
        let d = table(routes);
        let to = Addressed::Addr("198.18.0.10:80".parse().unwrap());
        let with_backends = table(&routes.replace(
            "filters: [{type: RequestRedirect, requestRedirect: {hostname: new.example}}]",
            "filters: [{type: RequestRedirect, requestRedirect: {hostname: new.example}}]\n      backendRefs: [{name: nowhere, weight: 0}]",
        ));
        let p = plan(&with_backends, &to, &req("GET", "/old/1", &[]), 0).unwrap();
        assert!(
            p.rule.is_some(),
            "the redirect answers, whatever its backendRefs"
        );
        let p = plan(&d, &to, &req("GET", "/old/1", &[]), 0).unwrap();
        let rule = p.rule.as_ref().unwrap();
        assert!(rule.filters().any(|f| f.request_redirect.is_some()));
        // Validation refuses the second rule; a proxy given it anyway answers 500.
        let e = plan(&d, &to, &req("GET", "/none", &[]), 0).unwrap_err();
        assert_eq!(e.status().as_u16(), 500);
        assert!(
            e.to_string()
                .contains("no backendRefs and no RequestRedirect"),
            "{e}"
        );
    }

    #[test]
    fn a_service_port_with_routes_answers_404_to_what_none_matches() {
        let narrow = "
- service: web
  addresses: [198.18.0.10]
  ports: [{port: 80}, {port: 81}]
  endpoints: [{address: '127.0.0.10:4143'}]
  routes:
  - name: default/only-api
    port: 80
    rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{name: web}]
";
        let d = table(narrow);
        let to = Addressed::Addr("198.18.0.10:80".parse().unwrap());
        let e = plan(&d, &to, &req("GET", "/other", &[]), 0).unwrap_err();
        assert_eq!((e.status().as_u16(), e.reason()), (404, "no_route"));
        assert!(
            e.to_string().contains(
                "no rule of the HTTPRoutes attached to web port 80 (default/only-api) matches"
            ),
            "{e}"
        );
        assert_eq!(
            backend(&plan(&d, &to, &req("GET", "/api/1", &[]), 0).unwrap()),
            "web"
        );
        let other_port = Addressed::Addr("198.18.0.10:81".parse().unwrap());
        let p = plan(&d, &other_port, &req("GET", "/other", &[]), 0).unwrap();
        assert!(p.rule.is_none(), "no route on port 81: the service itself");
    }

    #[test]
    fn a_new_table_changes_the_next_plan() {
        let to = Addressed::Addr("198.18.0.10:80".parse().unwrap());
        let before = table(TABLE);
        let after = table(&TABLE.replace(
            "weight: 3}, {name: web-b, weight: 1}",
            "weight: 0}, {name: web-b, weight: 1}",
        ));
        let r = req("GET", "/x", &[]);
        assert_eq!(backend(&plan(&before, &to, &r, 0).unwrap()), "web-a");
        assert!((0..8).all(|n| backend(&plan(&after, &to, &r, n).unwrap()) == "web-b"));
    }
}
