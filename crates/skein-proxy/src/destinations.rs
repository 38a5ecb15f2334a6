//! Destinations: which services this proxy can reach, on which ports, through which peer
//! proxies. Resolves an authority (`service[:port]`) or an intercepted address to a
//! [`Target`] and picks an endpoint.
//!
//! The table is immutable: it is built with the configuration and swapped with it as
//! one [`crate::state::State`]; requests in flight keep the snapshot they resolved
//! against.

use crate::connect::Upstream;
use crate::error::ProxyError;
use skein_model::{Destination, PortSpec, Protocol};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Picks the peer proxy to send to (round robin), with the identity it must prove.
    pub fn endpoint(&self) -> Result<Upstream, ProxyError> {
        self.service.pick()
    }

    /// The endpoint for a retry after `tried` failed: the one after it, without moving
    /// the round robin, so that a retry does not push the next request onto the endpoint
    /// that just failed.
    pub fn endpoint_after(&self, tried: &Upstream) -> Result<Upstream, ProxyError> {
        self.service.pick_after(tried)
    }
}

/// One destination service with its endpoints.
#[derive(Debug)]
pub struct Service {
    /// The configuration it was built from.
    pub spec: Destination,
    /// Its namespace and name, as telemetry labels them.
    pub label: crate::telemetry::Named,
    /// Its HTTPRoutes' names, as telemetry labels them (same order as `spec.routes`).
    pub route_labels: Vec<crate::telemetry::Label>,
    /// The endpoints, with identities parsed once.
    endpoints: Vec<Upstream>,
    next: AtomicUsize,
}

impl Service {
    fn new(spec: &Destination) -> Service {
        let endpoints = spec
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
        Service {
            spec: spec.clone(),
            label: crate::telemetry::Named::new(&spec.namespace, &spec.service),
            route_labels: spec.routes.iter().map(|r| r.name.as_str().into()).collect(),
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Result<Upstream, ProxyError> {
        if self.endpoints.is_empty() {
            return Err(ProxyError::NoEndpoints(self.spec.service.clone()));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Ok(self.endpoints[i].clone())
    }

    fn pick_after(&self, tried: &Upstream) -> Result<Upstream, ProxyError> {
        let n = self.endpoints.len();
        match self.endpoints.iter().position(|e| e.addr == tried.addr) {
            Some(i) => Ok(self.endpoints[(i + 1) % n].clone()),
            // Gone from the table since (or no endpoints at all): a fresh pick.
            None => self.pick(),
        }
    }
}

/// An immutable snapshot of every destination.
#[derive(Debug, Default)]
pub struct Destinations {
    /// The calling workload's namespace: short names resolve here first.
    local_namespace: String,
    /// Services by name, one per namespace that has the name.
    by_name: HashMap<String, Vec<Arc<Service>>>,
    by_ip: HashMap<IpAddr, Arc<Service>>,
}

impl Destinations {
    /// Builds the lookup tables from configuration; `local_namespace` is the namespace
    /// of the workload beside this proxy.
    pub fn new(specs: &[Destination], local_namespace: &str) -> Self {
        let mut table = Destinations {
            local_namespace: local_namespace.to_string(),
            ..Destinations::default()
        };
        for spec in specs {
            let service = Arc::new(Service::new(spec));
            for ip in &spec.addresses {
                table.by_ip.insert(*ip, service.clone());
            }
            let same = table.by_name.entry(spec.service.clone()).or_default();
            same.retain(|s| s.spec.namespace != spec.namespace);
            same.push(service);
        }
        table
    }

    /// Resolves an authority `service[.namespace[.svc…]][:port]`. A name without a
    /// namespace means the caller's own namespace, like Kubernetes DNS; failing that, the
    /// only service of that name. Without a port: port 80 if the service has it,
    /// otherwise its only port.
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

    /// The service a host `name[.namespace[.svc…]]` names, looked up without allocating
    /// (names are compared without regard to case).
    fn lookup(&self, host: &str) -> Option<Arc<Service>> {
        let mut labels = host.split('.');
        let name = lower(labels.next().unwrap_or_default());
        let namespace = labels.next().map(lower);
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

/// `s` in lower case, copied only when it has an upper-case letter.
fn lower(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Splits `host[:port]`; IPv6 literals in brackets are accepted.
fn split_authority(authority: &str) -> Result<(&str, Option<u16>), ProxyError> {
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

    fn dest(name: &str, ports: &[u16], endpoints: usize) -> Destination {
        Destination {
            service: name.into(),
            namespace: "default".into(),
            ports: ports
                .iter()
                .map(|&port| PortSpec {
                    port,
                    protocol: Protocol::Detect,
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
        }
    }

    #[test]
    fn a_retry_takes_the_next_endpoint_without_moving_the_round_robin() {
        let d = Destinations::new(&[dest("api", &[8080], 3)], "default");
        let t = d.resolve_authority("api").unwrap();
        let first = t.endpoint().unwrap();
        let retry = t.endpoint_after(&first).unwrap();
        assert_ne!(retry.addr, first.addr);
        assert_eq!(
            t.endpoint().unwrap().addr,
            retry.addr,
            "the round robin moved one step for the request, none for its retry"
        );
        let gone = Upstream::from(SocketAddr::from(([127, 0, 0, 99], 4143)));
        assert!(
            t.endpoint_after(&gone).is_ok(),
            "an endpoint gone since: a fresh pick"
        );
    }

    #[test]
    fn resolves_authorities() {
        let d = Destinations::new(
            &[dest("api", &[8080], 1), dest("web", &[80, 443], 1)],
            "default",
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
    fn short_names_prefer_the_local_namespace() {
        let mut other = dest("api", &[81], 1);
        other.namespace = "shop".into();
        let d = Destinations::new(&[dest("api", &[80], 1), other.clone()], "shop");
        assert_eq!(d.resolve_authority("api").unwrap().port.port, 81);
        assert_eq!(d.resolve_authority("api.default").unwrap().port.port, 80);
        let d = Destinations::new(&[dest("api", &[80], 1), other], "billing");
        assert!(
            d.resolve_authority("api").is_err(),
            "ambiguous without a namespace"
        );
    }

    #[test]
    fn resolves_intercepted_addresses() {
        let d = Destinations::new(&[dest("api", &[8080], 1)], "default");
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
    fn round_robins_endpoints_and_reports_none() {
        let d = Destinations::new(&[dest("api", &[80], 2), dest("empty", &[80], 0)], "default");
        let t = d.resolve_authority("api").unwrap();
        let (a, b, c) = (
            t.endpoint().unwrap(),
            t.endpoint().unwrap(),
            t.endpoint().unwrap(),
        );
        assert_ne!(a, b);
        assert_eq!(a, c);
        let e = d
            .resolve_authority("empty")
            .unwrap()
            .endpoint()
            .unwrap_err();
        assert!(matches!(e, ProxyError::NoEndpoints(_)));
    }
}
