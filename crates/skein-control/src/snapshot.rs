//! Computing the configuration one proxy needs, from the mesh's state. Pure: no I/O, so
//! every rule is unit-tested here.
//!
//! A proxy receives the services it calls ([`crate::catalog`] computes each once for all
//! proxies; [`crate::push`] picks each proxy's) with the endpoints of the workloads the
//! service's selector matches, and its own application ports from the services that
//! select it ([`local_for`]).

use skein_api::v1 as pb;
use skein_identity::DenyList;
use skein_model::authz::path::{AmbiguousPaths, EncodedSlashes};
use skein_model::authz::{Policy, PolicySet};
use skein_model::resource::PolicyAction;
use skein_model::Protocol;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What the snapshot needs to know of a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels a workload must carry (all of them) to serve the service.
    pub selector: BTreeMap<String, String>,
    /// Service accounts (in `namespace`) whose workloads may serve it; never empty (the
    /// Service's own name by default).
    pub accounts: Vec<String>,
    /// Ports and their protocols.
    pub ports: Vec<(u16, Protocol)>,
    /// The ports whose `targetPort` differs from the port: port → targetPort.
    pub target_ports: BTreeMap<u16, u16>,
    /// Virtual IPs for transparent interception.
    pub addresses: Vec<IpAddr>,
    /// HTTPRoutes whose parent is this service, producer and consumer routes alike
    /// ([`crate::routes`] picks those that apply to each caller).
    pub routes: Vec<crate::routes::AttachedRoute>,
    /// BackendPolicies targeting this service, sorted by name (one per port at most).
    pub policies: Vec<skein_model::DestinationPolicy>,
    /// Namespaces whose proxies are sent it up front (`exportTo`; `"*"`: all).
    pub export_to: Vec<String>,
}

/// What the snapshot needs to know of a Workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadView {
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Where its proxy's inbound listener is reachable.
    pub address: IpAddr,
    /// The proxy's inbound port.
    pub inbound_port: u16,
    /// The application ports it declared.
    pub app_ports: Vec<u16>,
    /// The service account of its identity (`spiffe://<td>/ns/<namespace>/sa/<account>`).
    pub account: String,
    /// The join lineage of its proxy's certificate (`<token id>.<n>`), once it registered:
    /// what `skein workload revoke` revokes.
    pub lineage: Option<String>,
}

impl WorkloadView {
    /// The SPIFFE ID its proxy presents in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.account
        )
    }
}

impl ServiceView {
    /// Whether `w` serves this service: same namespace, every selector label matches, and
    /// it runs under an account the service admits. Labels are the registrant's word; the
    /// account is what its certificate proved, so labels alone never make an endpoint. An
    /// empty selector selects nothing (a Service must say what it selects).
    pub fn selects(&self, w: &WorkloadView) -> bool {
        w.namespace == self.namespace
            && !self.selector.is_empty()
            && self.accounts.contains(&w.account)
            && self
                .selector
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
    }

    /// The SPIFFE IDs of the accounts it admits, in `trust_domain`.
    pub fn identities(&self, trust_domain: &str) -> Vec<String> {
        self.accounts
            .iter()
            .map(|a| format!("spiffe://{trust_domain}/ns/{}/sa/{a}", self.namespace))
            .collect()
    }
}

/// The authorization `me`'s inbound proxy enforces: the policies whose target Service
/// (in the policy's namespace) selects `me`, with the mesh's settings. Policies naming a
/// Service that does not exist, or that does not select `me`, are left out.
pub fn policies_for<'a>(
    me: &WorkloadView,
    services: impl IntoIterator<Item = &'a ServiceView> + Clone,
    policies: impl IntoIterator<Item = &'a Policy>,
    default: PolicyAction,
    encoded_slashes: EncodedSlashes,
    ambiguous_paths: AmbiguousPaths,
) -> PolicySet {
    let governing = policies.into_iter().filter_map(|p| {
        let target = services.clone().into_iter().find(|s| {
            s.name == p.spec.target_ref.name && s.namespace == p.namespace && s.selects(me)
        })?;
        // Only the target's ports: another Service selecting the same workload keeps
        // its own policies.
        let mut p = p.clone();
        p.ports = target.ports.iter().map(|(port, _)| *port).collect();
        Some(p)
    });
    PolicySet {
        default,
        policies: governing.collect(),
        encoded_slashes,
        ambiguous_paths,
    }
}

/// The snapshot for `me` (version left 0; the caller numbers it) with every service of
/// the mesh as a destination. Output order is stable (sorted), so equal inputs give equal
/// snapshots. Workloads of a `denied` lineage are no endpoints: callers stop choosing
/// them in the same snapshot that tells them to refuse their certificates. Sessions build
/// the same from a shared [`crate::catalog::Catalog`] instead; this is the whole
/// computation in one call.
pub fn snapshot_for(
    me: &WorkloadView,
    services: &[ServiceView],
    workloads: &[WorkloadView],
    trust_domain: &str,
    denied: &DenyList,
) -> pb::Snapshot {
    let mesh = std::sync::Arc::new(crate::state::MeshState {
        services: services.to_vec(),
        workloads: workloads.to_vec(),
        ..Default::default()
    });
    let catalog = crate::catalog::Catalog::build(mesh, trust_domain, denied, 0, None);
    let mut destinations: Vec<pb::Destination> = catalog
        .keys()
        .filter_map(|k| catalog.get(k))
        .map(|e| (*e.for_caller(&me.namespace).destination).clone())
        .collect();
    destinations.sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
    pb::Snapshot {
        destinations,
        ..local_for(me, services.iter(), trust_domain)
    }
}

/// A protocol as the wire numbers it.
pub(crate) fn protocol(p: Protocol) -> i32 {
    (match p {
        Protocol::Detect => pb::Protocol::Detect,
        Protocol::Http => pb::Protocol::Http,
        Protocol::Http2 => pb::Protocol::Http2,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Tcp => pb::Protocol::Tcp,
    }) as i32
}

/// What `me`'s snapshot says about `me` itself, from `services` (at least those of its
/// namespace): its application ports, what its application accepts at once, and the
/// trust domain. No destinations; the caller adds what comes from the CA and the Mesh.
pub fn local_for<'a>(
    me: &WorkloadView,
    services: impl Iterator<Item = &'a ServiceView> + Clone,
    trust_domain: &str,
) -> pb::Snapshot {
    let selecting = services.filter(|s| s.selects(me));
    // Own application ports: those of the services that select this workload, else the
    // ports it declared, sniffed.
    let mut own: BTreeMap<u16, Protocol> = BTreeMap::new();
    for s in selecting.clone() {
        for (port, p) in &s.ports {
            own.entry(*port).or_insert(*p);
        }
    }
    // A port the application listens on for a selecting Service's port (its targetPort)
    // is reached through that port only: as a port of its own it would be governed by no
    // AuthorizationPolicy of that Service.
    let targets: Vec<u16> = selecting
        .clone()
        .flat_map(|s| s.target_ports.values().copied())
        .collect();
    for port in me.app_ports.iter().filter(|p| !targets.contains(p)) {
        own.entry(*port).or_insert(Protocol::Detect);
    }
    // What the application accepts at once: the strictest `inbound` limit of the
    // BackendPolicies of the services selecting it.
    // Each field the smallest of any; the policy named is the one with the smallest
    // maxConcurrentRequests.
    let limits: Vec<(&str, skein_model::resource::InboundLimit)> = selecting
        .clone()
        .flat_map(|s| &s.policies)
        .filter_map(|p| Some((p.name.as_str(), p.spec.inbound?)))
        .collect();
    // An adaptive limit is stricter than a fixed one with the same ceiling, so any policy
    // asking for one makes the limit adaptive, each bound again the smallest.
    let adaptive: Vec<_> = limits.iter().filter_map(|(_, l)| l.adaptive).collect();
    let app_limit = limits
        .iter()
        .min_by_key(|(name, l)| (l.max_concurrent_requests, *name))
        .map(|(name, l)| pb::AppLimit {
            policy: name.to_string(),
            max_concurrent_requests: l.max_concurrent_requests,
            max_pending_requests: limits
                .iter()
                .map(|(_, l)| l.max_pending_requests)
                .min()
                .unwrap_or(0),
            adaptive: (!adaptive.is_empty()).then(|| pb::AdaptiveLimit {
                min_concurrent_requests: adaptive
                    .iter()
                    .map(|a| a.min(l.max_concurrent_requests))
                    .min()
                    .unwrap_or(1),
                latency_tolerance: adaptive
                    .iter()
                    .map(|a| a.latency_tolerance)
                    .fold(f64::INFINITY, f64::min),
            }),
        });
    pb::Snapshot {
        version: 0,
        inbound_ports: own
            .into_iter()
            .map(|(port, p)| pb::Port {
                port: u32::from(port),
                protocol: protocol(p),
                // Where the application listens for it: the selecting Service's targetPort.
                target_port: selecting
                    .clone()
                    .find_map(|s| s.target_ports.get(&port))
                    .map(|t| u32::from(*t)),
            })
            .collect(),
        trust_domain: trust_domain.to_string(),
        app_limit,
        // The caller adds what comes from the CA and the Mesh resource.
        ..pb::Snapshot::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn workload(name: &str, app: &str, last_octet: u8) -> WorkloadView {
        WorkloadView {
            name: name.into(),
            namespace: "default".into(),
            labels: labels(&[("app", app)]),
            address: IpAddr::from([127, 0, 0, last_octet]),
            inbound_port: 4143,
            app_ports: vec![8080],
            account: app.into(),
            lineage: None,
        }
    }

    fn service(name: &str, app: &str, port: u16, p: Protocol) -> ServiceView {
        ServiceView {
            name: name.into(),
            namespace: "default".into(),
            selector: labels(&[("app", app)]),
            accounts: vec![app.into()],
            ports: vec![(port, p)],
            addresses: vec![],
            routes: vec![],
            policies: vec![],
            export_to: vec![],
            target_ports: BTreeMap::new(),
        }
    }

    #[test]
    fn a_workload_gets_the_policies_of_the_services_that_select_it() {
        let services = [
            service("restaurant", "restaurant", 8080, Protocol::Http),
            service("menu", "restaurant", 8080, Protocol::Http),
            service("frontend", "frontend", 8080, Protocol::Http),
        ];
        let policy = |name: &str, target: &str, ns: &str| Policy {
            namespace: ns.into(),
            name: name.into(),
            spec: serde_json::from_value(serde_json::json!({"targetRef": {"name": target}}))
                .unwrap(),
            ports: Vec::new(),
        };
        let policies = [
            policy("a", "restaurant", "default"),
            policy("b", "menu", "default"),
            policy("c", "frontend", "default"),
            policy("d", "restaurant", "shop"),
            policy("e", "missing", "default"),
        ];
        let me = workload("restaurant-1", "restaurant", 11);
        let set = policies_for(
            &me,
            &services,
            &policies,
            PolicyAction::Deny,
            EncodedSlashes::Keep,
            AmbiguousPaths::Forward,
        );
        let names: Vec<_> = set.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            set.policies[0].ports,
            [8080],
            "each limited to its Service's ports"
        );
        assert_eq!(
            names,
            ["a", "b"],
            "other services, namespaces and dangling targets are left out"
        );
        assert_eq!(set.default, PolicyAction::Deny);
        assert_eq!(set.encoded_slashes, EncodedSlashes::Keep);
        assert_eq!(set.ambiguous_paths, AmbiguousPaths::Forward);
        let other = workload("frontend-1", "frontend", 10);
        let set = policies_for(
            &other,
            &services,
            &policies,
            PolicyAction::Allow,
            EncodedSlashes::Reject,
            AmbiguousPaths::Reject,
        );
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.policies[0].name, "c");
    }

    #[test]
    fn endpoints_are_the_selected_workloads() {
        let services = [service("restaurant", "restaurant", 8080, Protocol::Http)];
        let workloads = [
            workload("restaurant-2", "restaurant", 12),
            workload("restaurant-1", "restaurant", 11),
            workload("frontend-1", "frontend", 10),
        ];
        let snap = snapshot_for(
            &workloads[2],
            &services,
            &workloads,
            "skein.local",
            &DenyList::default(),
        );
        let d = &snap.destinations[0];
        let eps: Vec<_> = d.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(eps, ["127.0.0.11:4143", "127.0.0.12:4143"]);
        assert_eq!(d.ports[0].protocol, pb::Protocol::Http as i32);
        // The frontend is selected by no service: its declared port, sniffed.
        assert_eq!(snap.inbound_ports[0].port, 8080);
        assert_eq!(snap.inbound_ports[0].protocol, pb::Protocol::Detect as i32);
    }

    #[test]
    fn backend_policies_travel_with_their_service_and_the_strictest_inbound_limit_wins() {
        let policy = |name: &str, inbound: Option<u32>, adaptive: Option<(u32, f64)>| {
            skein_model::DestinationPolicy {
                name: format!("default/{name}"),
                spec: serde_json::from_value(serde_json::json!({
                    "targetRef": {"name": name},
                    "loadBalancer": "round-robin",
                }))
                .map(|mut s: skein_model::resource::BackendPolicySpec| {
                    s.inbound = inbound.map(|n| skein_model::resource::InboundLimit {
                        max_concurrent_requests: n,
                        max_pending_requests: 0,
                        adaptive: adaptive.map(|(min, tolerance)| {
                            skein_model::resource::AdaptiveLimit {
                                min_concurrent_requests: Some(min),
                                latency_tolerance: tolerance,
                            }
                        }),
                    });
                    s
                })
                .unwrap(),
            }
        };
        let mut restaurant = service("restaurant", "restaurant", 8080, Protocol::Http);
        restaurant.policies = vec![policy("restaurant", Some(50), Some((30, 2.0)))];
        let mut menu = service("menu", "restaurant", 8080, Protocol::Http);
        menu.policies = vec![policy("menu", Some(20), None)];
        let mut other = service("frontend", "frontend", 8080, Protocol::Http);
        other.policies = vec![policy("frontend", Some(1), None)];
        let services = [restaurant, menu, other];
        let me = workload("restaurant-1", "restaurant", 11);
        let snap = snapshot_for(
            &me,
            &services,
            std::slice::from_ref(&me),
            "td",
            &DenyList::default(),
        );
        let limit = snap.app_limit.expect("a limit");
        assert_eq!(
            (limit.policy.as_str(), limit.max_concurrent_requests),
            ("default/menu", 20)
        );
        // One of them asks for an adaptive limit: it is, within the strictest bounds.
        let adaptive = limit.adaptive.expect("adaptive");
        assert_eq!(
            (adaptive.min_concurrent_requests, adaptive.latency_tolerance),
            (20, 2.0)
        );
        let d = snap
            .destinations
            .iter()
            .find(|d| d.service == "restaurant")
            .unwrap();
        assert_eq!(d.policies[0].name, "default/restaurant");
        assert_eq!(
            d.policies[0].load_balancer,
            pb::LoadBalancer::RoundRobin as i32
        );
        let lone = workload("frontend-1", "nobody", 12);
        let snap = snapshot_for(&lone, &services, &[], "td", &DenyList::default());
        assert!(snap.app_limit.is_none(), "no service selects it: no limit");
    }

    #[test]
    fn a_target_port_is_reached_only_through_its_service_port() {
        let mut api = service("api", "restaurant", 80, Protocol::Http);
        api.target_ports.insert(80, 8080);
        // The workload announces its application's own port, 8080.
        let me = workload("restaurant-1", "restaurant", 11);
        let snap = snapshot_for(
            &me,
            &[api],
            std::slice::from_ref(&me),
            "td",
            &DenyList::default(),
        );
        let ports: Vec<(u32, Option<u32>)> = snap
            .inbound_ports
            .iter()
            .map(|p| (p.port, p.target_port))
            .collect();
        assert_eq!(ports, [(80, Some(8080))], "8080 is not a port of its own");
    }

    #[test]
    fn labels_alone_never_make_an_endpoint() {
        let services = [service("web", "web", 8080, Protocol::Http)];
        // evil registers web's labels (and even a web-like name) under its own account.
        let mut evil = workload("web-1", "web", 66);
        evil.account = "evil".into();
        let real = workload("web-2", "web", 12);
        let snap = snapshot_for(
            &real,
            &services,
            &[evil.clone(), real.clone()],
            "td",
            &DenyList::default(),
        );
        let d = &snap.destinations[0];
        let eps: Vec<_> = d.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(eps, ["127.0.0.12:4143"], "only the workload running as web");
        assert_eq!(d.identities, ["spiffe://td/ns/default/sa/web"]);
        assert!(
            d.endpoints
                .iter()
                .all(|e| d.identities.contains(&e.identity)),
            "every endpoint's identity is admitted"
        );
        // Nor does evil get web's ports or policies.
        let own = snapshot_for(
            &evil,
            &services,
            &[evil.clone()],
            "td",
            &DenyList::default(),
        );
        assert_eq!(own.inbound_ports[0].protocol, pb::Protocol::Detect as i32);
        // A Service that lists evil's account admits it.
        let mut widened = services[0].clone();
        widened.accounts.push("evil".into());
        assert!(widened.selects(&evil));
        assert_eq!(widened.identities("td").len(), 2);
    }

    #[test]
    fn revoked_workloads_are_no_endpoints() {
        let services = [service("web", "web", 8080, Protocol::Http)];
        let mut one = workload("web-1", "web", 11);
        one.lineage = Some("aa.1".into());
        let mut two = workload("web-2", "web", 12);
        two.lineage = Some("bb.1".into());
        let all = [one.clone(), two];
        let denied = DenyList::new(vec!["bb".into()]).unwrap();
        let snap = snapshot_for(&one, &services, &all, "td", &denied);
        let eps: Vec<_> = snap.destinations[0]
            .endpoints
            .iter()
            .map(|e| e.workload.as_str())
            .collect();
        assert_eq!(eps, ["web-1"]);
    }

    #[test]
    fn own_ports_come_from_selecting_services() {
        let services = [service("ledger", "ledger", 9000, Protocol::Tcp)];
        let me = workload("ledger-1", "ledger", 13);
        let snap = snapshot_for(
            &me,
            &services,
            std::slice::from_ref(&me),
            "skein.local",
            &DenyList::default(),
        );
        let ports: Vec<_> = snap
            .inbound_ports
            .iter()
            .map(|p| (p.port, p.protocol))
            .collect();
        assert_eq!(ports, [(8080, 0), (9000, pb::Protocol::Tcp as i32)]);
    }

    #[test]
    fn selectors_respect_namespaces_and_empty_selects_nothing() {
        let mut other_ns = workload("api-1", "api", 20);
        other_ns.namespace = "shop".into();
        let mut empty = service("api", "api", 80, Protocol::Http);
        assert!(!empty.selects(&other_ns), "other namespace");
        empty.selector.clear();
        assert!(!empty.selects(&workload("api-2", "api", 21)));
    }

    #[test]
    fn equal_inputs_give_equal_snapshots() {
        let services = [
            service("b", "b", 80, Protocol::Http),
            service("a", "a", 80, Protocol::Http),
        ];
        let w = [workload("a-1", "a", 1), workload("b-1", "b", 2)];
        let one = snapshot_for(&w[0], &services, &w, "x", &DenyList::default());
        let mut reversed = services.clone();
        reversed.reverse();
        let two = snapshot_for(
            &w[0],
            &reversed,
            &[w[1].clone(), w[0].clone()],
            "x",
            &DenyList::default(),
        );
        assert_eq!(one, two);
        assert_eq!(one.destinations[0].service, "a");
    }

    #[test]
    fn each_caller_gets_the_routes_that_apply_to_its_namespace() {
        let attached = |ns: &str, name: &str| crate::routes::AttachedRoute {
            namespace: ns.into(),
            created: None,
            route: skein_model::DestinationRoute {
                name: format!("{ns}/{name}"),
                port: None,
                hostnames: Vec::new(),
                rules: serde_yaml_ng::from_str("[{backendRefs: [{name: web}]}]").unwrap(),
            },
        };
        let mut web = service("web", "web", 8080, Protocol::Http);
        web.routes = vec![
            attached("default", "producer"),
            attached("fast", "consumer"),
        ];
        let services = [web];
        let route_names = |me: &WorkloadView| -> Vec<String> {
            let snap = snapshot_for(me, &services, &[], "skein.local", &DenyList::default());
            snap.destinations[0]
                .routes
                .iter()
                .map(|r| r.name.clone())
                .collect()
        };
        let mut caller = workload("caller-1", "caller", 20);
        assert_eq!(route_names(&caller), ["default/producer"]);
        caller.namespace = "fast".into();
        assert_eq!(route_names(&caller), ["fast/consumer"]);
        caller.namespace = "slow".into();
        assert_eq!(route_names(&caller), ["default/producer"]);
    }
}
