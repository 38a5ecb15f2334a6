//! The mesh's destinations as proxies receive them, computed once per change of the mesh
//! (or of the deny list) and shared by every proxy session, so that a change costs the
//! control plane one pass over the Services, whatever the number of proxies.
//!
//! Each Service becomes one [`pb::Destination`] for every caller, except that a caller in
//! a namespace with consumer routes for it receives those routes instead of the
//! producer's ([`crate::routes::for_caller`]): such a Service has one variant per
//! consumer namespace besides the shared one. Every variant carries a digest of its
//! content (its version), and a variant whose content did not change keeps the digest and
//! the allocation of the previous catalog, so sessions compare digests, not content.
//!
//! Endpoints are found through an index of workloads by namespace and account (a
//! workload serves a Service only under an account the Service admits), so building is
//! linear in Services plus workloads, not their product.

use crate::snapshot::{ServiceView, WorkloadView};
use crate::state::MeshState;
use ipnet::IpNet;
use prost::Message;
use skein_api::v1 as pb;
use skein_identity::DenyList;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// `namespace/name` of a Service: how destinations are keyed everywhere on the wire.
pub type Key = Arc<str>;

/// One variant of a Service's destination.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// What proxies receive, its `digest` set.
    pub destination: Arc<pb::Destination>,
    /// The Services its routes send or mirror requests to (followed references only):
    /// a proxy holding it needs them too.
    pub references: Arc<[Key]>,
}

/// A Service's destination for each kind of caller.
#[derive(Debug, Clone)]
pub struct Entry {
    /// For callers in namespaces without consumer routes for it.
    pub shared: Versioned,
    /// For callers in these namespaces: their consumer routes replace the producer's.
    pub consumers: BTreeMap<String, Versioned>,
}

impl Entry {
    /// The variant a caller in `caller_ns` receives.
    pub fn for_caller(&self, caller_ns: &str) -> &Versioned {
        self.consumers.get(caller_ns).unwrap_or(&self.shared)
    }
}

/// Every destination of the mesh, with the indexes sessions resolve wants through.
#[derive(Debug)]
pub struct Catalog {
    /// The mesh state it was built from (sessions compute their local part from it).
    pub mesh: Arc<MeshState>,
    /// The deny-list revision and trust domain it was built with.
    built_with: (u64, String),
    entries: HashMap<Key, Entry>,
    /// Virtual IP → Service.
    addresses: HashMap<IpAddr, Key>,
    /// Service name → the namespaces that have a Service of that name.
    names: HashMap<String, Vec<String>>,
    /// Namespace (or `"*"`) → the Services exported to its proxies (`exportTo`).
    exported: HashMap<String, Vec<Key>>,
    /// Where virtual IPs live: the Mesh's serviceCidrs, plus any address a Service names
    /// outside them.
    pub ranges: Vec<IpNet>,
    /// Indexes into `mesh.services` by namespace.
    services_in: HashMap<String, Vec<usize>>,
    /// Moves when something every proxy's configuration may depend on changes: the
    /// Mesh's settings, or which Services (names, addresses, exports) exist.
    pub mesh_generation: u64,
    /// Moves, per namespace, when its Services or AuthorizationPolicies change: what a
    /// proxy's local part (its ports, limits, authorization) is computed from.
    namespace_generations: HashMap<String, u64>,
}

/// 64-bit FNV-1a: a digest every replica and version computes alike (unlike the standard
/// library's hashers, whose output may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 means "no digest" on the wire.
    h.max(1)
}

/// Sets `d.digest` from its content (the digest field itself excluded).
pub fn seal(d: &mut pb::Destination) {
    d.digest = 0;
    d.digest = fnv1a(&d.encode_to_vec());
}

/// The Services a destination's routes send or mirror to, deduplicated.
fn references(d: &pb::Destination) -> Arc<[Key]> {
    let mut keys: Vec<String> = Vec::new();
    let mut add = |namespace: &str, name: &str, refused: &str| {
        if refused.is_empty() && !name.is_empty() {
            let ns = if namespace.is_empty() {
                d.namespace.as_str()
            } else {
                namespace
            };
            keys.push(format!("{ns}/{name}"));
        }
    };
    let mirrors = |filters: &[pb::RouteFilter]| -> Vec<pb::BackendRef> {
        filters
            .iter()
            .filter_map(|f| match &f.filter {
                Some(pb::route_filter::Filter::RequestMirror(m)) => m.backend.clone(),
                _ => None,
            })
            .collect()
    };
    for rule in d.routes.iter().flat_map(|r| &r.rules) {
        for b in &rule.backends {
            add(&b.namespace, &b.name, &b.refused);
            for m in mirrors(&b.filters) {
                add(&m.namespace, &m.name, &m.refused);
            }
        }
        for m in mirrors(&rule.filters) {
            add(&m.namespace, &m.name, &m.refused);
        }
    }
    let own = format!("{}/{}", d.namespace, d.service);
    keys.retain(|k| *k != own);
    keys.sort();
    keys.dedup();
    keys.into_iter().map(Key::from).collect()
}

/// The endpoints of `s`: the workloads it selects that are not revoked, by address.
fn endpoints(
    s: &ServiceView,
    by_account: &HashMap<(&str, &str), Vec<&WorkloadView>>,
    trust_domain: &str,
    denied: &DenyList,
) -> Vec<pb::Endpoint> {
    let revoked = |w: &WorkloadView| {
        !denied.is_empty()
            && w.lineage
                .as_deref()
                .is_some_and(|l| denied.denies(l).is_some())
    };
    let mut endpoints: Vec<pb::Endpoint> = s
        .accounts
        .iter()
        .filter_map(|a| by_account.get(&(s.namespace.as_str(), a.as_str())))
        .flatten()
        .filter(|w| s.selects(w) && !revoked(w))
        .map(|w| pb::Endpoint {
            address: std::net::SocketAddr::new(w.address, w.inbound_port).to_string(),
            workload: w.name.clone(),
            identity: w.identity(trust_domain),
        })
        .collect();
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    endpoints.dedup_by(|a, b| a.address == b.address && a.workload == b.workload);
    endpoints
}

/// Reuses `previous` when it has the same content, else seals `next`.
fn versioned(mut next: pb::Destination, previous: Option<&Versioned>) -> Versioned {
    if let Some(p) = previous {
        next.digest = p.destination.digest;
        if *p.destination == next {
            return p.clone();
        }
    }
    seal(&mut next);
    Versioned {
        references: references(&next),
        destination: Arc::new(next),
    }
}

impl Catalog {
    /// Builds the catalog of `mesh`, reusing what did not change from `previous`.
    pub fn build(
        mesh: Arc<MeshState>,
        trust_domain: &str,
        denied: &DenyList,
        denied_revision: u64,
        previous: Option<&Catalog>,
    ) -> Catalog {
        let mut by_account: HashMap<(&str, &str), Vec<&WorkloadView>> = HashMap::new();
        for w in &mesh.workloads {
            by_account
                .entry((w.namespace.as_str(), w.account.as_str()))
                .or_default()
                .push(w);
        }
        let mut entries = HashMap::with_capacity(mesh.services.len());
        let mut addresses = HashMap::new();
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        let mut exported: HashMap<String, Vec<Key>> = HashMap::new();
        let mut services_in: HashMap<String, Vec<usize>> = HashMap::new();
        let mut ranges = mesh.service_cidrs.clone();
        for (i, s) in mesh.services.iter().enumerate() {
            let key: Key = format!("{}/{}", s.namespace, s.name).into();
            services_in.entry(s.namespace.clone()).or_default().push(i);
            names
                .entry(s.name.clone())
                .or_default()
                .push(s.namespace.clone());
            for ns in &s.export_to {
                exported.entry(ns.clone()).or_default().push(key.clone());
            }
            for a in &s.addresses {
                addresses.insert(*a, key.clone());
                if !ranges.iter().any(|r| r.contains(a)) {
                    ranges.push(IpNet::from(*a));
                }
            }
            let before = previous.and_then(|p| p.entries.get(&key));
            let base = pb::Destination {
                service: s.name.clone(),
                namespace: s.namespace.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|(port, p)| pb::Port {
                        port: u32::from(*port),
                        protocol: crate::snapshot::protocol(*p),
                        target_port: None,
                    })
                    .collect(),
                addresses: s.addresses.iter().map(|a| a.to_string()).collect(),
                endpoints: endpoints(s, &by_account, trust_domain, denied),
                routes: Vec::new(),
                policies: skein_api::convert::policies_to_wire(&s.policies),
                identities: s.identities(trust_domain),
                digest: 0,
            };
            let variant = |caller_ns: &str, before: Option<&Versioned>| {
                let mut d = base.clone();
                d.routes = skein_api::convert::routes_to_wire(&crate::routes::for_caller(
                    &s.namespace,
                    &s.routes,
                    caller_ns,
                ));
                versioned(d, before)
            };
            let shared = variant(&s.namespace, before.map(|b| &b.shared));
            let consumers = s
                .routes
                .iter()
                .map(|r| r.namespace.as_str())
                .filter(|ns| *ns != s.namespace)
                .map(|ns| {
                    let before = before.and_then(|b| b.consumers.get(ns));
                    (ns.to_string(), variant(ns, before))
                })
                .collect();
            entries.insert(key, Entry { shared, consumers });
        }
        for namespaces in names.values_mut() {
            namespaces.sort();
        }
        for keys in exported.values_mut() {
            keys.sort();
        }
        let index = Index {
            names: &names,
            addresses: &addresses,
            exported: &exported,
        };
        let (mesh_generation, namespace_generations) =
            generations(&mesh, &services_in, index, previous);
        Catalog {
            built_with: (denied_revision, trust_domain.to_string()),
            mesh_generation,
            namespace_generations,
            mesh,
            entries,
            addresses,
            names,
            exported,
            ranges,
            services_in,
        }
    }

    /// The Services exported to proxies in `namespace` (`exportTo` naming it or `"*"`).
    pub fn exported_to<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Key> + 'a {
        let listed = self.exported.get(namespace).into_iter().flatten();
        listed.chain(self.exported.get("*").into_iter().flatten())
    }

    /// The generation of `namespace`'s local inputs (see `namespace_generations`).
    pub fn namespace_generation(&self, namespace: &str) -> u64 {
        self.namespace_generations
            .get(namespace)
            .copied()
            .unwrap_or(0)
    }

    /// The Service `key` (`namespace/name`).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Every Service's key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.keys()
    }

    /// How many Services there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The Service whose virtual IP `ip` is.
    pub fn by_address(&self, ip: IpAddr) -> Option<&Key> {
        self.addresses.get(&ip)
    }

    /// The Service a caller in `caller_ns` means by `name`: `svc`, `svc.ns`, or either
    /// followed by `.svc` and a cluster domain, with or without a port. A bare name is
    /// the caller's own namespace's Service if there is one, else the only Service of
    /// that name in the mesh.
    pub fn by_name(&self, name: &str, caller_ns: &str) -> Option<Key> {
        let host = name.trim_end_matches('.');
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.to_ascii_lowercase();
        let mut labels = host.split('.');
        let service = labels.next().filter(|s| !s.is_empty())?;
        let namespace = labels.next();
        match labels.next() {
            None | Some("svc") => {}
            Some(_) => return None,
        }
        let namespaces = self.names.get(service)?;
        let ns = match namespace {
            Some(ns) => namespaces.iter().find(|n| *n == ns)?,
            None => namespaces
                .iter()
                .find(|n| *n == caller_ns)
                .or_else(|| (namespaces.len() == 1).then(|| &namespaces[0]))?,
        };
        let key = format!("{ns}/{service}");
        self.entries
            .get_key_value(key.as_str())
            .map(|(k, _)| k.clone())
    }

    /// Indexes into `mesh.services` of the Services in `namespace`.
    pub fn services_in(&self, namespace: &str) -> &[usize] {
        self.services_in.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// `keys` and every Service their variants for `caller_ns` refer to, transitively.
    pub fn closure<'a>(
        &'a self,
        keys: impl IntoIterator<Item = &'a Key>,
        caller_ns: &str,
    ) -> std::collections::BTreeSet<Key> {
        let mut out = std::collections::BTreeSet::new();
        let mut todo: Vec<Key> = keys.into_iter().cloned().collect();
        while let Some(k) = todo.pop() {
            let Some(entry) = self.entries.get(&k) else {
                continue;
            };
            if !out.insert(k) {
                continue;
            }
            for r in entry.for_caller(caller_ns).references.iter() {
                if !out.contains(r) {
                    todo.push(r.clone());
                }
            }
        }
        out
    }
}

/// What of a Service a selected workload's local part is computed from (not its routes
/// or addresses, which only its callers receive).
fn local_inputs(s: &ServiceView) -> impl PartialEq + '_ {
    (
        &s.name,
        &s.selector,
        &s.accounts,
        &s.ports,
        &s.target_ports,
        &s.policies,
    )
}

/// The Mesh's settings, as far as proxies' configurations depend on them.
fn settings(m: &MeshState) -> impl PartialEq + '_ {
    (
        &m.trust_domain,
        m.mtls,
        m.default_policy,
        m.encoded_slashes,
        m.ambiguous_paths,
        &m.tracing,
        &m.service_cidrs,
    )
}

/// The indexes a catalog resolves wants through, which the mesh generation covers.
#[derive(Clone, Copy)]
struct Index<'a> {
    names: &'a HashMap<String, Vec<String>>,
    addresses: &'a HashMap<IpAddr, Key>,
    exported: &'a HashMap<String, Vec<Key>>,
}

/// The mesh generation and each namespace's, carried over from `previous` where their
/// inputs are equal and moved on where they are not (a counter shared by all, so a
/// generation is never reused).
fn generations(
    mesh: &MeshState,
    services_in: &HashMap<String, Vec<usize>>,
    index: Index<'_>,
    previous: Option<&Catalog>,
) -> (u64, HashMap<String, u64>) {
    let next = previous.map_or(1, |p| {
        p.namespace_generations
            .values()
            .copied()
            .chain([p.mesh_generation])
            .max()
            .unwrap_or(0)
            + 1
    });
    let same_mesh = previous.is_some_and(|p| {
        // The same Services exist (names by namespace) at the same addresses, exported to
        // the same namespaces.
        settings(&p.mesh) == settings(mesh)
            && p.names == *index.names
            && p.addresses == *index.addresses
            && p.exported == *index.exported
    });
    let mesh_generation = match previous {
        Some(p) if same_mesh => p.mesh_generation,
        _ => next,
    };
    let mut namespaces: std::collections::BTreeSet<&str> =
        services_in.keys().map(String::as_str).collect();
    namespaces.extend(mesh.policies.iter().map(|p| p.namespace.as_str()));
    let generations = namespaces
        .into_iter()
        .map(|ns| {
            let same = previous.is_some_and(|p| {
                let ours = services_in.get(ns).map_or(&[][..], Vec::as_slice);
                let theirs = p.services_in(ns);
                ours.len() == theirs.len()
                    && ours.iter().zip(theirs).all(|(a, b)| {
                        local_inputs(&mesh.services[*a]) == local_inputs(&p.mesh.services[*b])
                    })
                    && mesh.policies.iter().filter(|x| x.namespace == ns).eq(p
                        .mesh
                        .policies
                        .iter()
                        .filter(|x| x.namespace == ns))
            });
            let g = match previous {
                Some(p) if same => p.namespace_generation(ns),
                _ => next,
            };
            (ns.to_string(), g)
        })
        .collect();
    (mesh_generation, generations)
}

/// The catalog sessions share: built by the first session that needs it after a change,
/// then handed to the others.
#[derive(Debug, Default)]
pub struct CatalogCache {
    current: Mutex<Option<Arc<Catalog>>>,
}

impl CatalogCache {
    /// The catalog of `mesh` with `ca`'s trust domain and deny list.
    pub fn get(&self, mesh: &Arc<MeshState>, ca: &crate::pki::PkiView) -> Arc<Catalog> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = current.as_ref() {
            if Arc::ptr_eq(&c.mesh, mesh)
                && c.built_with.0 == ca.denied_revision
                && c.built_with.1 == ca.trust_domain
            {
                return c.clone();
            }
        }
        let next = Arc::new(Catalog::build(
            mesh.clone(),
            &ca.trust_domain,
            &ca.denied,
            ca.denied_revision,
            current.as_deref(),
        ));
        *current = Some(next.clone());
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::AttachedRoute;
    use skein_model::Protocol;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn service(ns: &str, name: &str) -> ServiceView {
        ServiceView {
            name: name.into(),
            namespace: ns.into(),
            selector: labels(&[("app", name)]),
            accounts: vec![name.into()],
            ports: vec![(8080, Protocol::Http)],
            target_ports: BTreeMap::new(),
            addresses: vec![],
            routes: vec![],
            policies: vec![],
            export_to: vec![],
        }
    }

    fn workload(ns: &str, app: &str, octet: u8) -> WorkloadView {
        WorkloadView {
            name: format!("{app}-{octet}"),
            namespace: ns.into(),
            labels: labels(&[("app", app)]),
            address: IpAddr::from([127, 0, 0, octet]),
            inbound_port: 4143,
            app_ports: vec![8080],
            account: app.into(),
            lineage: None,
        }
    }

    fn route(ns: &str, name: &str, to: &[(&str, &str)]) -> AttachedRoute {
        let backends: Vec<serde_json::Value> = to
            .iter()
            .map(|(ns, name)| serde_json::json!({"name": name, "namespace": ns}))
            .collect();
        AttachedRoute {
            namespace: ns.into(),
            created: None,
            route: skein_model::DestinationRoute {
                name: format!("{ns}/{name}"),
                port: None,
                hostnames: Vec::new(),
                rules: serde_json::from_value(serde_json::json!([{"backendRefs": backends}]))
                    .unwrap(),
            },
        }
    }

    fn mesh(services: Vec<ServiceView>, workloads: Vec<WorkloadView>) -> Arc<MeshState> {
        Arc::new(MeshState {
            services,
            workloads,
            ..MeshState::default()
        })
    }

    fn build(m: &Arc<MeshState>, previous: Option<&Catalog>) -> Catalog {
        Catalog::build(m.clone(), "td", &DenyList::default(), 0, previous)
    }

    #[test]
    fn endpoints_come_from_the_workload_index() {
        let mut web = service("default", "web");
        web.accounts.push("legacy".into());
        let mut legacy = workload("default", "web", 12);
        legacy.account = "legacy".into();
        let m = mesh(
            vec![web, service("shop", "web")],
            vec![
                workload("default", "web", 11),
                legacy,
                workload("shop", "web", 13),
                workload("default", "api", 14),
            ],
        );
        let c = build(&m, None);
        let d = &c.get("default/web").unwrap().shared.destination;
        let eps: Vec<_> = d.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(eps, ["127.0.0.11:4143", "127.0.0.12:4143"]);
        let d = &c.get("shop/web").unwrap().shared.destination;
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn unchanged_destinations_keep_their_digest_and_allocation() {
        let m = mesh(
            vec![service("default", "web"), service("default", "api")],
            vec![workload("default", "web", 11)],
        );
        let one = build(&m, None);
        let web = one.get("default/web").unwrap().shared.destination.clone();
        assert_ne!(web.digest, 0);
        // A new endpoint for api only.
        let m2 = mesh(
            m.services.clone(),
            vec![
                workload("default", "web", 11),
                workload("default", "api", 12),
            ],
        );
        let two = build(&m2, Some(&one));
        let web2 = &two.get("default/web").unwrap().shared.destination;
        assert!(
            Arc::ptr_eq(&web, web2),
            "web did not change: same allocation"
        );
        let api1 = &one.get("default/api").unwrap().shared.destination;
        let api2 = &two.get("default/api").unwrap().shared.destination;
        assert_ne!(api1.digest, api2.digest, "api changed: a new digest");
        // Built from scratch, equal content has the same digest.
        let fresh = build(&m2, None);
        assert_eq!(
            fresh.get("default/api").unwrap().shared.destination.digest,
            api2.digest
        );
    }

    #[test]
    fn consumer_namespaces_get_their_own_variant() {
        let mut web = service("default", "web");
        web.routes = vec![
            route("default", "producer", &[("default", "web")]),
            route("fast", "consumer", &[("default", "web-fast")]),
        ];
        let m = mesh(vec![web, service("default", "web-fast")], vec![]);
        let c = build(&m, None);
        let e = c.get("default/web").unwrap();
        let names = |v: &Versioned| -> Vec<String> {
            v.destination
                .routes
                .iter()
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(names(e.for_caller("other")), ["default/producer"]);
        assert_eq!(names(e.for_caller("fast")), ["fast/consumer"]);
        assert_ne!(
            e.for_caller("fast").destination.digest,
            e.shared.destination.digest
        );
        // The consumer's route sends to web-fast: its callers need it too.
        let web: Key = "default/web".into();
        let fast: Vec<_> = c.closure([&web], "fast").into_iter().collect();
        assert_eq!(
            fast,
            [Key::from("default/web"), Key::from("default/web-fast")]
        );
        let other: Vec<_> = c.closure([&web], "other").into_iter().collect();
        assert_eq!(other, [Key::from("default/web")]);
    }

    #[test]
    fn names_and_addresses_resolve_like_the_proxy_does() {
        let mut web = service("default", "web");
        web.addresses = vec!["198.18.0.10".parse().unwrap()];
        let mut outside = service("shop", "web");
        outside.addresses = vec!["10.9.9.9".parse().unwrap()];
        let m = Arc::new(MeshState {
            services: vec![web, outside, service("shop", "cart")],
            service_cidrs: vec!["198.18.0.0/16".parse().unwrap()],
            ..MeshState::default()
        });
        let c = build(&m, None);
        let key = |s: &str, ns: &str| c.by_name(s, ns).map(|k| k.to_string());
        assert_eq!(key("web", "default").as_deref(), Some("default/web"));
        assert_eq!(key("web", "shop").as_deref(), Some("shop/web"));
        assert_eq!(key("web", "other"), None, "ambiguous");
        assert_eq!(key("cart", "other").as_deref(), Some("shop/cart"));
        assert_eq!(key("WEB.shop:8080", "x").as_deref(), Some("shop/web"));
        assert_eq!(
            key("web.shop.svc.cluster.local.", "x").as_deref(),
            Some("shop/web")
        );
        assert_eq!(key("web.nowhere", "x"), None);
        assert_eq!(key("example.com", "x"), None);
        assert_eq!(
            c.by_address("10.9.9.9".parse().unwrap()).map(|k| &**k),
            Some("shop/web")
        );
        let ranges: Vec<String> = c.ranges.iter().map(ToString::to_string).collect();
        assert_eq!(ranges, ["198.18.0.0/16", "10.9.9.9/32"]);
    }

    #[test]
    fn refused_references_are_not_followed() {
        let mut web = service("default", "web");
        web.routes = vec![route("default", "r", &[("shop", "cart")])];
        let m = mesh(vec![web, service("shop", "cart")], vec![]);
        let c = build(&m, None);
        let web: Key = "default/web".into();
        assert_eq!(c.closure([&web], "default").len(), 2);
        // The same route, its reference refused (no ReferenceGrant).
        let mut refused = m.services.clone();
        let rules = &mut refused[0].routes[0].route.rules;
        rules[0].backend_refs[0].refused = Some("no grant".into());
        let c = build(&mesh(refused, vec![]), None);
        assert_eq!(c.closure([&web], "default").len(), 1);
    }

    #[test]
    fn generations_move_only_with_what_they_cover() {
        let m = mesh(
            vec![service("default", "web"), service("shop", "cart")],
            vec![workload("default", "web", 11)],
        );
        let one = build(&m, None);
        // A workload more: neither the mesh's nor any namespace's local inputs moved.
        let more = mesh(
            m.services.clone(),
            vec![
                workload("default", "web", 11),
                workload("default", "web", 12),
            ],
        );
        let two = build(&more, Some(&one));
        assert_eq!(two.mesh_generation, one.mesh_generation);
        assert_eq!(
            two.namespace_generation("default"),
            one.namespace_generation("default")
        );
        // shop's Service changes: shop's generation moves, default's does not.
        let mut services = m.services.clone();
        services[1].ports = vec![(9090, Protocol::Grpc)];
        let three = build(&mesh(services.clone(), vec![]), Some(&two));
        assert_ne!(
            three.namespace_generation("shop"),
            two.namespace_generation("shop")
        );
        assert_eq!(
            three.namespace_generation("default"),
            two.namespace_generation("default")
        );
        assert_eq!(three.mesh_generation, two.mesh_generation);
        // A new Service: wants may resolve differently, so the mesh generation moves.
        services.push(service("shop", "ledger"));
        let four = build(&mesh(services, vec![]), Some(&three));
        assert_ne!(four.mesh_generation, three.mesh_generation);
    }

    #[test]
    fn digests_are_fixed_by_content() {
        let mut d = pb::Destination {
            service: "web".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        seal(&mut d);
        // FNV-1a of the encoding: the same on every replica and release.
        let again = d.digest;
        seal(&mut d);
        assert_eq!(d.digest, again);
        d.service = "api".into();
        seal(&mut d);
        assert_ne!(d.digest, again);
    }
}
