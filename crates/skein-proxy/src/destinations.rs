//! Destinations: which services this proxy can reach, on which ports, through which peer
//! proxies. Resolves an authority (`service[:port]`) or an intercepted address to a
//! [`Target`] and picks an endpoint.
//!
//! The table is immutable: it is built with the configuration and swapped with it as
//! one [`crate::state::State`]; requests in flight keep the snapshot they resolved
//! against.

use crate::balance::{Balancer, NoPick, Picked};
use crate::connect::Upstream;
use crate::error::ProxyError;
use crate::limit::Limiter;
use foldhash::HashMap;
use skein_model::resource::{BackendPolicySpec, TargetRef};
use skein_model::{Destination, PortSpec, Protocol};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A resolved service port: where a request or connection is going.
#[derive(Debug, Clone)]
pub struct Target {
    /// The destination service.
    pub service: Arc<Service>,
    /// The service port and its declared protocol.
    pub port: PortSpec,
}

impl Target {
    /// The BackendPolicy governing calls to this port (or the defaults).
    pub fn policy(&self) -> &Governed {
        self.service.governed(self.port.port)
    }

    /// Picks the peer proxy for a try, avoiding `avoid` (the endpoint a retry follows)
    /// when another will do; the pick counts as in flight until dropped.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Result<Picked, ProxyError> {
        let policy = self.policy();
        let now = std::time::Instant::now();
        policy
            .balancer
            .pick(now, avoid, crate::route::random())
            .map_err(|no| match no {
                NoPick::NoEndpoints => ProxyError::NoEndpoints(self.service.spec.service.clone()),
                NoPick::AtLimit(value) => {
                    self.overloaded("connectionPool.maxRequestsPerEndpoint", value)
                }
            })
    }

    /// Whether the Service has an endpoint other than `than` that is not ejected: where a
    /// retry without a rule `retry` may go (the pick then avoids `than`).
    pub fn has_healthy_other_than(&self, than: SocketAddr) -> bool {
        let now = std::time::Instant::now();
        self.policy()
            .balancer
            .endpoints()
            .any(|(upstream, stats)| upstream.addr != than && !stats.ejected(now))
    }

    /// The refusal for `limit` (at `value`) of this port's policy.
    pub fn overloaded(&self, limit: &'static str, value: u32) -> ProxyError {
        ProxyError::Overloaded {
            service: self.service.spec.service.clone(),
            policy: self.policy().name.to_string(),
            limit,
            value,
        }
    }
}

/// What a BackendPolicy (or its defaults) sets for calls to some ports of a service.
#[derive(Debug)]
pub struct Governed {
    /// The port it governs; `None`: every port without its own.
    port: Option<u16>,
    /// `namespace/name` of the BackendPolicy, or `the default BackendPolicy`.
    pub name: Arc<str>,
    /// The policy.
    pub spec: BackendPolicySpec,
    /// Picks endpoints.
    pub balancer: Balancer,
    /// Requests in flight and waiting.
    pub requests: Arc<Limiter>,
    /// Opaque connections open.
    pub connections: Arc<Limiter>,
}

/// One destination service with its endpoints.
#[derive(Debug)]
pub struct Service {
    /// The configuration it was built from (shared with the configuration in force).
    pub spec: Arc<Destination>,
    /// Its namespace and name, as telemetry labels it.
    pub label: crate::telemetry::Named,
    /// `namespace/name`: what per-service state outside the table (the retry budget) is
    /// keyed by.
    pub key: String,
    /// Its HTTPRoutes' names, as telemetry labels them (same order as `spec.routes`).
    pub route_labels: Vec<crate::telemetry::Label>,
    /// Its HTTPRoutes, compiled for matching.
    pub routes: crate::route::Table,
    /// One per BackendPolicy (those naming a port first), or one with the defaults.
    policies: Vec<Governed>,
}

impl Service {
    /// Builds a service, keeping from `previous` (the same service in the table this
    /// one replaces) what was learnt about its endpoints and its policies' limiters
    /// (resized when a limit changed, so that requests already admitted still count).
    fn new(spec: &Arc<Destination>, previous: Option<&Service>) -> Service {
        let upstreams: Vec<Upstream> = spec
            .endpoints
            .iter()
            .map(|e| Upstream {
                addr: e.address,
                // Validated when the configuration was accepted (see ProxyConfig::validate).
                identity: e
                    .identity
                    .as_deref()
                    .and_then(|i| i.parse().ok())
                    .map(Arc::new),
            })
            .collect();
        let mut named: Vec<(Option<u16>, Arc<str>, BackendPolicySpec)> = spec
            .policies
            .iter()
            .map(|p| {
                (
                    p.spec.target_ref.port,
                    p.name.as_str().into(),
                    p.spec.clone(),
                )
            })
            .collect();
        named.sort_by_key(|(port, _, _)| port.is_none());
        if !named.iter().any(|(port, _, _)| port.is_none()) {
            let defaults = BackendPolicySpec {
                target_ref: TargetRef {
                    group: String::new(),
                    kind: "Service".into(),
                    name: spec.service.clone(),
                    port: None,
                },
                load_balancer: Default::default(),
                connection_pool: Default::default(),
                outlier_detection: Default::default(),
                retry_budget: Default::default(),
                inbound: None,
            };
            named.push((None, "the default BackendPolicy".into(), defaults));
        }
        let now = std::time::Instant::now();
        let mut policies: Vec<Governed> = Vec::with_capacity(named.len());
        for (port, name, spec) in named {
            let before = previous.and_then(|p| p.policies.iter().find(|g| g.port == port));
            // Endpoint state is per endpoint: every policy of the service shares it.
            let learnt = policies
                .first()
                .map(|g| &g.balancer)
                .or(before.map(|g| &g.balancer));
            let pool = spec.connection_pool;
            let keep = |old: Option<&Arc<Limiter>>, max: u32, waiting: u32| match old {
                Some(l) => {
                    l.resize(max, waiting);
                    l.clone()
                }
                None => Arc::new(Limiter::new(max, waiting)),
            };
            let requests = keep(
                before.map(|g| &g.requests),
                pool.max_concurrent_requests,
                pool.max_pending_requests,
            );
            let connections = keep(before.map(|g| &g.connections), pool.max_connections, 0);
            policies.push(Governed {
                port,
                name,
                balancer: Balancer::new(
                    upstreams.clone(),
                    learnt,
                    spec.load_balancer,
                    spec.outlier_detection,
                    pool.max_requests_per_endpoint,
                    now,
                ),
                spec,
                requests,
                connections,
            });
        }
        Service {
            spec: Arc::clone(spec),
            label: crate::telemetry::Named::new(&spec.namespace, &spec.service),
            key: format!("{}/{}", spec.namespace, spec.service),
            route_labels: spec.routes.iter().map(|r| r.name.as_str().into()).collect(),
            routes: crate::route::Table::new(&spec.routes),
            policies,
        }
    }

    /// The policy governing calls to `port`.
    pub fn governed(&self, port: u16) -> &Governed {
        let found = self
            .policies
            .iter()
            .find(|g| g.port.is_none_or(|p| p == port));
        // The list always ends with one for every port.
        found.unwrap_or(&self.policies[self.policies.len() - 1])
    }
}

/// An immutable snapshot of every destination.
#[derive(Debug, Default)]
pub struct Destinations {
    /// The calling workload's namespace: short names resolve here first.
    local_namespace: String,
    /// The mesh DNS domain (`cluster.local` unless the configuration says otherwise):
    /// `name.namespace.svc.<domain>` names a service, `name.namespace.<anything else>`
    /// does not.
    domain: String,
    /// Services by name, one per namespace that has the name.
    by_name: HashMap<String, Vec<Arc<Service>>>,
    by_ip: HashMap<IpAddr, Arc<Service>>,
}

impl Destinations {
    /// Builds the lookup tables from configuration; `local_namespace` is the namespace
    /// of the workload beside this proxy. What `previous` (the table this one replaces)
    /// learnt about endpoints and holds in its limiters carries over; a service whose
    /// configuration did not change is taken over whole.
    pub fn new(
        specs: &[Arc<Destination>],
        local_namespace: &str,
        previous: Option<&Destinations>,
    ) -> Self {
        let mut table = Destinations {
            local_namespace: local_namespace.to_string(),
            domain: DEFAULT_DOMAIN.to_string(),
            ..Destinations::default()
        };
        for spec in specs {
            let before = previous.and_then(|p| p.exact(&spec.service, &spec.namespace));
            // Unchanged, it is the same service: shared with the table it replaces, so
            // that a change to one destination costs little in a proxy holding thousands.
            let service = match before {
                Some(b) if Arc::ptr_eq(&b.spec, spec) || b.spec == *spec => b,
                b => Arc::new(Service::new(spec, b.as_deref())),
            };
            for ip in &spec.addresses {
                table.by_ip.insert(*ip, service.clone());
            }
            let same = table.by_name.entry(spec.service.clone()).or_default();
            same.retain(|s| s.spec.namespace != spec.namespace);
            same.push(service);
        }
        table
    }

    /// The same table for a mesh whose DNS domain is `domain` (default `cluster.local`).
    pub fn in_domain(mut self, domain: &str) -> Self {
        self.domain = domain.to_ascii_lowercase();
        self
    }

    /// Resolves an authority `service[.namespace[.svc[.<domain>]]][.][:port]`. A name
    /// without a namespace means the caller's own namespace, like Kubernetes DNS; failing
    /// that, the only service of that name. Without a port: port 80 if the service has
    /// it, otherwise its only port. Any other name (`web.shop.example.com`) is not a
    /// service, whatever its first two labels.
    pub fn resolve_authority(&self, authority: &str) -> Result<Target, ProxyError> {
        let (host, port) = split_authority(authority)?;
        let service = self
            .lookup(host)
            .ok_or_else(|| ProxyError::UnknownService(host.to_string()))?;
        let ports = &service.spec.ports;
        let found = match port {
            Some(p) => service.spec.port(p),
            None => service
                .spec
                .port(80)
                .or_else(|| (ports.len() == 1).then(|| ports[0])),
        };
        match found {
            Some(port) => Ok(Target { service, port }),
            None => Err(ProxyError::UnknownPort {
                service: service.spec.service.clone(),
                port: port.unwrap_or(80),
                ports: ports.iter().map(|p| p.port).collect(),
            }),
        }
    }

    /// The service a host in one of the [`mesh_name`] forms names, looked up without
    /// allocating (names are compared without regard to case).
    fn lookup(&self, host: &str) -> Option<Arc<Service>> {
        let (name, namespace) = mesh_name(host, &self.domain)?;
        let name = lower(name);
        let namespace = namespace.map(lower);
        let same = self.by_name.get(name.as_ref())?;
        let in_ns = |ns: &str| same.iter().find(|s| s.spec.namespace == ns).cloned();
        match namespace {
            Some(ns) => in_ns(&ns),
            None => in_ns(&self.local_namespace).or_else(|| match same.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            }),
        }
    }

    /// Whether a service has this [`Service::key`] (`namespace/name`).
    pub fn has_key(&self, key: &str) -> bool {
        key.split_once('/')
            .is_some_and(|(ns, name)| self.exact(name, ns).is_some())
    }

    /// The service `name` in `namespace`.
    fn exact(&self, name: &str, namespace: &str) -> Option<Arc<Service>> {
        let same = self.by_name.get(name)?;
        same.iter().find(|s| s.spec.namespace == namespace).cloned()
    }

    /// Resolves the original destination of an intercepted connection. `None` means no
    /// destination claims the address: the connection passes through unchanged.
    pub fn resolve_addr(&self, addr: SocketAddr) -> Option<Target> {
        let service = self.by_ip.get(&addr.ip())?.clone();
        let port = service.spec.port(addr.port())?;
        Some(Target { service, port })
    }

    /// Resolves a service by name and port, as a local upstream listener does.
    pub fn resolve(&self, service: &str, port: u16) -> Result<Target, ProxyError> {
        let found = self
            .lookup(service)
            .ok_or_else(|| ProxyError::UnknownService(service.to_string()))?;
        match found.spec.port(port) {
            Some(p) => Ok(Target {
                service: found,
                port: p,
            }),
            None => Err(ProxyError::UnknownPort {
                service: found.spec.service.clone(),
                port,
                ports: found.spec.ports.iter().map(|p| p.port).collect(),
            }),
        }
    }
}

/// The mesh DNS domain when the configuration names none.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// `(name, namespace)` of a host in a form that can name a mesh service, as Kubernetes
/// DNS resolves them: `name`, `name.namespace`, `name.namespace.svc` and
/// `name.namespace.svc.<domain>`, each also with one final `.`; labels compare without
/// regard to case, and the name and namespace must be DNS labels (letters, digits, `-`).
/// `None` for every other host: an external name such as `api.github.com` must not
/// reach the mesh Service `api` of a namespace `github`, nor an IP literal be taken for
/// a name. Like Kubernetes' search path, `name.namespace` does match a Service even
/// where an external host has that name (`web.dev` with a namespace `dev`).
pub fn mesh_name<'h>(host: &'h str, domain: &str) -> Option<(&'h str, Option<&'h str>)> {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut labels = host.splitn(4, '.');
    let name = labels.next().filter(|l| label(l))?;
    let Some(namespace) = labels.next() else {
        return Some((name, None));
    };
    if !label(namespace) {
        return None;
    }
    match (labels.next(), labels.next()) {
        (None, _) => {}
        (Some(svc), None) if svc.eq_ignore_ascii_case("svc") => {}
        (Some(svc), Some(rest))
            if svc.eq_ignore_ascii_case("svc") && rest.eq_ignore_ascii_case(domain) => {}
        _ => return None,
    }
    Some((name, Some(namespace)))
}

/// `s` in lower case, copied only when it has an upper-case letter.
fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Splits `host[:port]`; IPv6 literals in brackets are accepted.
pub fn split_authority(authority: &str) -> Result<(&str, Option<u16>), ProxyError> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None),
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| ProxyError::NoAuthority)?),
        None => None,
    };
    if host.is_empty() {
        return Err(ProxyError::NoAuthority);
    }
    Ok((host, port))
}

/// True when a declared protocol means HTTP/2 should be spoken to the application.
pub fn speaks_h2(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Http2 | Protocol::Grpc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::Endpoint;

    fn dest(name: &str, ports: &[u16], endpoints: usize) -> Arc<Destination> {
        Arc::new(Destination {
            service: name.into(),
            namespace: "default".into(),
            ports: ports
                .iter()
                .map(|&port| PortSpec {
                    port,
                    protocol: Protocol::Detect,
                    target_port: None,
                })
                .collect(),
            addresses: vec!["198.18.0.10".parse().unwrap()],
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 10 + i as u8], 4143)),
                    identity: None,
                })
                .collect(),
            routes: Vec::new(),
            identities: Vec::new(),
            policies: Vec::new(),
        })
    }

    #[test]
    fn a_retry_avoids_the_endpoint_it_follows() {
        let d = Destinations::new(&[dest("api", &[8080], 3)], "default", None);
        let t = d.resolve_authority("api").unwrap();
        for _ in 0..20 {
            let first = t.pick(None).unwrap();
            let retry = t.pick(Some(first.upstream.addr)).unwrap();
            assert_ne!(retry.upstream.addr, first.upstream.addr);
        }
        let only = Destinations::new(&[dest("one", &[80], 1)], "default", None);
        let t = only.resolve_authority("one").unwrap();
        let first = t.pick(None).unwrap();
        assert_eq!(
            t.pick(Some(first.upstream.addr)).unwrap().upstream,
            first.upstream,
            "the only endpoint, again"
        );
    }

    #[test]
    fn endpoint_state_and_limits_survive_a_new_table() {
        let mut spec = dest("api", &[8080], 2);
        Arc::make_mut(&mut spec).policies = vec![skein_model::DestinationPolicy {
            name: "default/api".into(),
            spec: serde_yaml_ng::from_str(
                "{targetRef: {name: api}, connectionPool: {maxConcurrentRequests: 1, maxPendingRequests: 0}}",
            )
            .unwrap(),
        }];
        let d = Destinations::new(std::slice::from_ref(&spec), "default", None);
        let t = d.resolve("api", 8080).unwrap();
        let held = t.policy().requests.try_admit().unwrap();
        let picked = t.pick(None).unwrap();
        // A push that changes something else (an address) keeps both.
        Arc::make_mut(&mut spec)
            .addresses
            .push("198.18.0.11".parse().unwrap());
        let d2 = Destinations::new(std::slice::from_ref(&spec), "default", Some(&d));
        let t2 = d2.resolve("api", 8080).unwrap();
        assert!(
            t2.policy().requests.try_admit().is_err(),
            "the held request still counts"
        );
        let pending: u32 = t2
            .policy()
            .balancer
            .endpoints()
            .map(|(_, s)| s.pending())
            .sum();
        assert_eq!(pending, 1, "the request in flight still counts");
        assert_eq!(&*t2.policy().name, "default/api");
        drop((held, picked));
        assert!(t2.policy().requests.try_admit().is_ok());
        // Without a policy: the defaults, named as such.
        let plain = Destinations::new(&[dest("web", &[80], 1)], "default", None);
        let web = plain.resolve("web", 80).unwrap();
        assert_eq!(&*web.policy().name, "the default BackendPolicy");
        assert_eq!(
            web.overloaded("connectionPool.maxConcurrentRequests", 10000)
                .status(),
            503
        );
    }

    #[test]
    fn an_unchanged_service_is_taken_over_whole() {
        let (api, mut web) = (dest("api", &[8080], 2), dest("web", &[80], 1));
        let d = Destinations::new(&[api.clone(), web.clone()], "default", None);
        Arc::make_mut(&mut web).endpoints.clear();
        let d2 = Destinations::new(&[api, web], "default", Some(&d));
        let same = |t: &Destinations, name: &str| t.exact(name, "default").unwrap();
        assert!(Arc::ptr_eq(&same(&d, "api"), &same(&d2, "api")));
        assert!(!Arc::ptr_eq(&same(&d, "web"), &same(&d2, "web")));
        assert!(d2.resolve("web", 80).unwrap().pick(None).is_err());
        assert!(d2.resolve("api", 8080).unwrap().pick(None).is_ok());
    }

    #[test]
    fn resolves_authorities() {
        let d = Destinations::new(
            &[dest("api", &[8080], 1), dest("web", &[80, 443], 1)],
            "default",
            None,
        );
        assert_eq!(d.resolve_authority("api:8080").unwrap().port.port, 8080);
        assert_eq!(d.resolve_authority("api").unwrap().port.port, 8080);
        assert_eq!(d.resolve_authority("web").unwrap().port.port, 80);
        assert_eq!(
            d.resolve_authority("api.default.svc.cluster.local:8080")
                .unwrap()
                .port
                .port,
            8080
        );
        assert!(matches!(
            d.resolve_authority("api:9"),
            Err(ProxyError::UnknownPort { port: 9, .. })
        ));
        assert!(matches!(
            d.resolve_authority("nope"),
            Err(ProxyError::UnknownService(_))
        ));
        assert!(matches!(
            d.resolve_authority("api.other"),
            Err(ProxyError::UnknownService(_))
        ));
        assert!(matches!(
            d.resolve_authority(":80"),
            Err(ProxyError::NoAuthority)
        ));
        assert!(matches!(
            d.resolve_authority("api:x"),
            Err(ProxyError::NoAuthority)
        ));
        assert_eq!(
            d.resolve_authority("API.Default:8080").unwrap().port.port,
            8080,
            "any case"
        );
        assert_eq!(d.resolve("api", 8080).unwrap().port.port, 8080);
        assert!(matches!(
            d.resolve("api", 9),
            Err(ProxyError::UnknownPort { port: 9, .. })
        ));
    }

    #[test]
    fn only_mesh_forms_of_a_name_resolve() {
        let d = Destinations::new(&[dest("api", &[80], 1)], "default", None);
        for yes in [
            "api",
            "api.",
            "api.default",
            "api.default.svc",
            "API.Default.SVC.Cluster.Local",
            "api.default.svc.cluster.local.:80",
        ] {
            assert!(d.resolve_authority(yes).is_ok(), "{yes}");
        }
        for no in [
            "api.default.example.com",
            "api.default.com",
            "api.default.svc.example.com",
            "api.default.svc.cluster.local.evil",
            "api..svc",
            ".api",
            "api.default.svc..",
        ] {
            assert!(
                matches!(d.resolve_authority(no), Err(ProxyError::UnknownService(_))),
                "{no}"
            );
        }
        let other =
            Destinations::new(&[dest("api", &[80], 1)], "default", None).in_domain("Mesh.Example");
        assert!(other
            .resolve_authority("api.default.svc.mesh.example")
            .is_ok());
        assert!(other
            .resolve_authority("api.default.svc.cluster.local")
            .is_err());
        assert_eq!(mesh_name("a.b.svc.x.y", "x.y"), Some(("a", Some("b"))));
        assert_eq!(mesh_name("a..svc", "x"), None);
        for not_a_name in ["[::1]", "10.0.0.1", "api..", "a_b", "-a", "a.b-", "web:80"] {
            assert_eq!(mesh_name(not_a_name, "cluster.local"), None, "{not_a_name}");
        }
    }

    #[test]
    fn short_names_prefer_the_local_namespace() {
        let mut other = dest("api", &[81], 1);
        Arc::make_mut(&mut other).namespace = "shop".into();
        let d = Destinations::new(&[dest("api", &[80], 1), other.clone()], "shop", None);
        assert_eq!(d.resolve_authority("api").unwrap().port.port, 81);
        assert_eq!(d.resolve_authority("api.default").unwrap().port.port, 80);
        let d = Destinations::new(&[dest("api", &[80], 1), other], "billing", None);
        assert!(
            d.resolve_authority("api").is_err(),
            "ambiguous without a namespace"
        );
    }

    #[test]
    fn resolves_intercepted_addresses() {
        let d = Destinations::new(&[dest("api", &[8080], 1)], "default", None);
        assert!(d
            .resolve_addr("198.18.0.10:8080".parse().unwrap())
            .is_some());
        assert!(d
            .resolve_addr("198.18.0.10:9999".parse().unwrap())
            .is_none());
        assert!(d
            .resolve_addr("198.18.0.11:8080".parse().unwrap())
            .is_none());
    }

    #[test]
    fn picks_endpoints_and_reports_none() {
        let d = Destinations::new(
            &[dest("api", &[80], 2), dest("empty", &[80], 0)],
            "default",
            None,
        );
        let t = d.resolve_authority("api").unwrap();
        let seen: std::collections::HashSet<_> = (0..50)
            .map(|_| t.pick(None).unwrap().upstream.addr)
            .collect();
        assert_eq!(seen.len(), 2, "both endpoints are used");
        let e = d
            .resolve_authority("empty")
            .unwrap()
            .pick(None)
            .unwrap_err();
        assert!(matches!(e, ProxyError::NoEndpoints(_)));
    }
}
