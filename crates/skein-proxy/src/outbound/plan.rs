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

/// Plans a request: resolves what it addressed, then, unless it is a CONNECT, applies the
/// addressed service's HTTPRoutes (the first matching rule, a backend picked by weight
/// with `random`). Without a matching rule the request goes to the addressed service.
pub fn plan<B>(
    destinations: &Destinations,
    addressed: &Addressed,
    req: &Request<B>,
    random: u64,
) -> Result<Plan, ProxyError> {
    let target = match addressed {
        Addressed::Addr(addr) => destinations.resolve_addr(*addr).ok_or_else(|| {
            ProxyError::UnknownService(format!(
                "{addr} (the service at this address was removed; new connections to it pass through unmeshed)"
            ))
        })?,
        Addressed::Name { service, port } => destinations.resolve(service, *port)?,
        Addressed::Authority => {
            let authority = authority_of(req).ok_or(ProxyError::NoAuthority)?;
            destinations.resolve_authority(&authority)?
        }
    };
    if req.method() == Method::CONNECT {
        return Ok(Plan {
            backend: target.clone(),
            target,
            rule: None,
        });
    }
    let spec = &target.service.spec;
    let Some((route, index, matched)) = target.service.routes.select_match(target.port.port, req)
    else {
        return Ok(Plan {
            backend: target.clone(),
            target,
            rule: None,
        });
    };
    let rule_spec = &spec.routes[route].rules[index];
    let picked = crate::route::pick(rule_spec, random).ok_or_else(|| {
        ProxyError::NoEndpoints(format!("{} (every backend has weight 0)", spec.service))
    })?;
    let backend_ref = &rule_spec.backend_refs[picked];
    let namespace = backend_ref.namespace.as_deref().unwrap_or(&spec.namespace);
    let port = backend_ref.port.unwrap_or(target.port.port);
    let backend = destinations.resolve(&format!("{}.{namespace}", backend_ref.name), port)?;
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
            off.to_string().contains("every backend has weight 0"),
            "{off}"
        );
        let gone = Addressed::Addr("198.18.0.99:80".parse().unwrap());
        let e = plan(&d, &gone, &req("GET", "/", &[]), 0).unwrap_err();
        assert!(e.to_string().contains("was removed"), "{e}");
        let missing_backend = TABLE.replace("name: web-a, weight: 3", "name: nowhere, weight: 3");
        let d = table(&missing_backend);
        let e = plan(&d, &to, &req("GET", "/x", &[]), 0).unwrap_err();
        assert!(
            matches!(e, ProxyError::UnknownService(ref s) if s.contains("nowhere")),
            "{e}"
        );
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
