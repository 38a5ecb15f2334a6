//! The registry: every resource of the mesh, mirrored in memory from the store and kept
//! current by the store's watch, so that every replica sees every change (its own and
//! other replicas'). It turns resources into the [`MeshState`] proxies are configured
//! from (giving Services that name no `spec.addresses` their virtual IPs, see
//! [`crate::vip`]), and it is where applies and deletes become atomic store commits.

use crate::snapshot::{ServiceView, WorkloadView};
use crate::state::MeshState;
use crate::store::{Entry, Event, Op, Store, StoreError};
use crate::vip;
use ipnet::IpNet;
use skein_model::resource::{Kind, MeshSpec, Resource, ResourceKey};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Store key prefix under which resources live.
pub const PREFIX: &str = "resources/";

/// The trust domain when no Mesh resource sets one.
pub const DEFAULT_TRUST_DOMAIN: &str = "skein.local";

/// What an apply did to one resource (kubectl's words).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// `HTTPRoute/default/restaurant`.
    pub resource: String,
    /// `created`, `configured` or `unchanged`.
    pub action: &'static str,
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A resource could not be encoded.
    #[error("cannot encode {0}: {1}")]
    Encode(String, String),
    /// A resource contradicts one already stored (or another in the same request).
    #[error("{0}")]
    Contradicts(String),
}

/// The in-memory mirror of every resource.
pub struct Registry {
    store: Arc<dyn Store>,
    resources: RwLock<BTreeMap<ResourceKey, Resource>>,
    revision: AtomicU64,
    state: watch::Sender<Arc<MeshState>>,
    /// The Services last reported as left without a virtual IP: the state is recomputed on
    /// every store change (workloads connecting included), so each is warned about once.
    unallocated: Mutex<Vec<vip::Unallocated>>,
    /// Every HTTPRoute's status, recomputed with the state on every change (never stored:
    /// a condition's `lastTransitionTime` is when this replica saw it change).
    route_status: Mutex<BTreeMap<ResourceKey, skein_model::resource::RouteStatus>>,
    /// The revision the last publish (state and route status) was computed at: what a
    /// write waits for, so that what it answers reflects it.
    published: AtomicU64,
}

impl Registry {
    /// Loads every resource from `store` and follows its changes from then on.
    pub async fn load(store: Arc<dyn Store>) -> Result<Arc<Registry>, RegistryError> {
        let (state, _) = watch::channel(Arc::new(MeshState::default()));
        let registry = Arc::new(Registry {
            store,
            resources: RwLock::new(BTreeMap::new()),
            revision: AtomicU64::new(0),
            state,
            unallocated: Mutex::new(Vec::new()),
            route_status: Mutex::new(BTreeMap::new()),
            published: AtomicU64::new(0),
        });
        let events = registry.resync().await?;
        let weak = Arc::downgrade(&registry);
        tokio::spawn(follow(weak, events));
        Ok(registry)
    }

    /// Replaces the mirror with a fresh listing and returns the watch that continues it.
    /// Watch first, then list: a change between the two is seen twice, never missed.
    async fn resync(&self) -> Result<tokio::sync::mpsc::Receiver<Vec<Event>>, RegistryError> {
        let events = self.store.watch(PREFIX);
        let (entries, revision) = self.store.list(PREFIX).await?;
        let resources: BTreeMap<_, _> = entries.iter().filter_map(decode).collect();
        *self.resources.write().unwrap_or_else(|p| p.into_inner()) = resources;
        self.revision.fetch_max(revision, Ordering::SeqCst);
        self.publish();
        Ok(events)
    }

    /// Applies the changes of whole commits, then publishes once, so proxies never see
    /// half of an atomic apply.
    fn apply_events(&self, events: Vec<Event>) {
        let mut newest = 0;
        {
            let mut resources = self.resources.write().unwrap_or_else(|p| p.into_inner());
            for event in events {
                match event {
                    Event::Put(entry) => {
                        newest = newest.max(entry.revision);
                        if let Some((key, resource)) = decode(&entry) {
                            resources.insert(key, resource);
                        }
                    }
                    Event::Delete { key, revision } => {
                        newest = newest.max(revision);
                        let k = key
                            .strip_prefix(PREFIX)
                            .and_then(ResourceKey::from_storage_path);
                        if let Some(k) = k {
                            resources.remove(&k);
                        }
                    }
                }
            }
        }
        self.revision.fetch_max(newest, Ordering::SeqCst);
        self.publish();
    }

    /// Recomputes the mesh state; proxies' sessions are woken only if it changed.
    fn publish(&self) {
        let next = self.mesh_state();
        self.refresh_route_status(&next.services);
        let revision = next.revision;
        self.state.send_if_modified(|current| {
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
        self.published.fetch_max(revision, Ordering::SeqCst);
    }

    /// Recomputes every HTTPRoute's conditions against `services` and the stored grants;
    /// a condition keeps its `lastTransitionTime` while its status and reason stay.
    fn refresh_route_status(&self, services: &[crate::snapshot::ServiceView]) {
        use skein_model::resource::{Condition, RouteParentStatus, RouteStatus, CONTROLLER_NAME};
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        let grants = grants_of(&resources);
        let services = crate::routes::index(services);
        let now = now_rfc3339();
        let mut statuses = self.route_status.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for resource in resources.values() {
            let Resource::HttpRoute(route) = resource else {
                continue;
            };
            let key = resource.key();
            let before = statuses.get(&key);
            let parents = crate::routes::verdicts(route, &services, &grants)
                .into_iter()
                .enumerate()
                .map(|(i, (parent_ref, verdicts))| {
                    let conditions = verdicts
                        .into_iter()
                        .map(|v| {
                            let status = if v.ok { "True" } else { "False" };
                            let since = before
                                .and_then(|b| b.parents.get(i))
                                .and_then(|p| {
                                    p.conditions.iter().find(|c| {
                                        c.kind == v.kind
                                            && c.status == status
                                            && c.reason == v.reason
                                    })
                                })
                                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
                            Condition {
                                kind: v.kind.into(),
                                status: status.into(),
                                reason: v.reason.into(),
                                message: v.message,
                                observed_generation: route.metadata.generation,
                                last_transition_time: since,
                            }
                        })
                        .collect();
                    RouteParentStatus {
                        parent_ref,
                        controller_name: CONTROLLER_NAME.into(),
                        conditions,
                    }
                })
                .collect();
            next.insert(key, RouteStatus { parents });
        }
        *statuses = next;
    }

    /// The status of the HTTPRoute `key`, as of the last change to the mesh.
    pub fn route_status(&self, key: &ResourceKey) -> Option<skein_model::resource::RouteStatus> {
        let statuses = self.route_status.lock().unwrap_or_else(|p| p.into_inner());
        statuses.get(key).cloned()
    }

    fn mesh_state(&self) -> MeshState {
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        let mut state = MeshState {
            revision: self.revision.load(Ordering::SeqCst),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_ttl: skein_identity::DEFAULT_WORKLOAD_TTL,
            ..MeshState::default()
        };
        let mut service_cidrs = MeshSpec::default().service_cidrs;
        for resource in resources.values() {
            match resource {
                Resource::Mesh(m) => {
                    service_cidrs = m.spec.service_cidrs.clone();
                    state.trust_domain = m.spec.trust_domain.clone();
                    state.mtls = m.spec.mtls;
                    state.cert_ttl = m.spec.workload_cert_ttl;
                    state.default_policy = m.spec.default_policy;
                    state.encoded_slashes = m.spec.encoded_slashes;
                    state.ambiguous_paths = m.spec.ambiguous_paths;
                    state.tracing = m.spec.tracing.clone();
                }
                Resource::AuthorizationPolicy(p) => {
                    state.policies.push(skein_model::authz::Policy {
                        namespace: p.metadata.namespace.clone(),
                        name: p.metadata.name.clone(),
                        spec: p.spec.clone(),
                        ports: Vec::new(),
                    })
                }
                Resource::Service(s) => state.services.push(ServiceView {
                    name: s.metadata.name.clone(),
                    namespace: s.metadata.namespace.clone(),
                    selector: s.spec.selector.clone(),
                    accounts: s.spec.accounts(&s.metadata.name),
                    ports: s.spec.ports.iter().map(|p| (p.port, p.protocol)).collect(),
                    target_ports: s
                        .spec
                        .ports
                        .iter()
                        .filter(|p| p.target_port != p.port)
                        .map(|p| (p.port, p.target_port))
                        .collect(),
                    addresses: s.spec.addresses.clone(),
                    routes: Vec::new(),
                    policies: Vec::new(),
                    export_to: s.spec.export_to.clone(),
                }),
                Resource::Workload(w) => state.workloads.push(WorkloadView {
                    name: w.metadata.name.clone(),
                    namespace: w.metadata.namespace.clone(),
                    labels: w.metadata.labels.clone(),
                    address: w.spec.address,
                    inbound_port: w.spec.inbound_port,
                    app_ports: w.spec.ports.clone(),
                    account: w.spec.service_account.clone(),
                    lineage: w.status.as_ref().and_then(|s| s.join_lineage.clone()),
                }),
                _ => {}
            }
        }
        self.allocate_addresses(&resources, &service_cidrs, &mut state.services);
        state.service_cidrs = service_cidrs;
        // Attach each HTTPRoute to the services it names as parents, producer and consumer
        // routes alike: each caller's snapshot takes those that apply to it, in order
        // (`crate::routes`).
        let grants = grants_of(&resources);
        // Services by namespace and name, so that attaching is linear in routes and
        // policies, not their product with Services.
        let index: std::collections::HashMap<(String, String), usize> = state
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.namespace.clone(), s.name.clone()), i))
            .collect();
        let find = |ns: &str, name: &str| index.get(&(ns.to_string(), name.to_string())).copied();
        for resource in resources.values() {
            let Resource::HttpRoute(route) = resource else {
                continue;
            };
            let route_ns = &route.metadata.namespace;
            let mut rules = route.spec.rules.clone();
            for backend in rules.iter_mut().flat_map(|r| r.backend_refs.iter_mut()) {
                backend.namespace.get_or_insert_with(|| route_ns.clone());
            }
            let mirrors = rules.iter_mut().flat_map(|r| {
                let backends = r.backend_refs.iter_mut().flat_map(|b| b.filters.iter_mut());
                r.filters.iter_mut().chain(backends)
            });
            for filter in mirrors {
                if let Some(mirror) = filter.request_mirror.as_mut() {
                    let to = &mut mirror.backend_ref;
                    to.namespace.get_or_insert_with(|| route_ns.clone());
                }
                // An ExtensionRef reaches proxies resolved: the FaultInjection it names,
                // or (named but missing) a 500 for every request, as Gateway API asks.
                if let Some(ext) = &filter.extension_ref {
                    let key = ResourceKey::new(Kind::FaultInjection, route_ns, &ext.name);
                    filter.fault = Some(match resources.get(&key) {
                        Some(Resource::FaultInjection(f)) => skein_model::resource::ResolvedFault {
                            name: format!("{route_ns}/{}", ext.name),
                            spec: f.spec.clone(),
                        },
                        _ => skein_model::resource::ResolvedFault::unresolved(route_ns, &ext.name),
                    });
                }
            }
            for parent in &route.spec.parent_refs {
                let ns = parent.namespace.as_ref().unwrap_or(route_ns);
                let service = find(ns, &parent.name).map(|i| &mut state.services[i]);
                if let Some(service) = service {
                    // What may be followed depends on whose traffic the route moves.
                    let mut rules = rules.clone();
                    let consumer = ns != route_ns;
                    crate::routes::mark_refusals(&mut rules, &grants, route_ns, consumer);
                    service.routes.push(crate::routes::AttachedRoute {
                        namespace: route_ns.clone(),
                        created: route.metadata.creation_timestamp.clone(),
                        route: skein_model::DestinationRoute {
                            name: format!("{route_ns}/{}", route.metadata.name),
                            port: parent.port,
                            hostnames: route.spec.hostnames.clone(),
                            rules,
                        },
                    });
                }
            }
        }
        // Attach each BackendPolicy to its target Service (in the policy's namespace).
        // Applying a second one for the same port is refused (`check_backend_policies`);
        // should the store hold two anyway, the first by name wins.
        for resource in resources.values() {
            let Resource::BackendPolicy(policy) = resource else {
                continue;
            };
            let (ns, target) = (&policy.metadata.namespace, &policy.spec.target_ref);
            let service = find(ns, &target.name).map(|i| &mut state.services[i]);
            if let Some(service) = service {
                let taken = service
                    .policies
                    .iter()
                    .any(|p| p.spec.target_ref.port == target.port);
                if !taken {
                    service.policies.push(skein_model::DestinationPolicy {
                        name: format!("{ns}/{}", policy.metadata.name),
                        spec: policy.spec.clone(),
                    });
                }
            }
        }
        state
    }

    /// Gives the Services that name no `spec.addresses` their virtual IPs from `ranges`
    /// (the same on every replica: a function of the stored Services alone), and warns
    /// about Services a full range leaves without one.
    fn allocate_addresses(
        &self,
        resources: &BTreeMap<ResourceKey, Resource>,
        ranges: &[IpNet],
        services: &mut [ServiceView],
    ) {
        let claims: Vec<vip::Claim> = resources
            .values()
            .filter_map(|r| match r {
                Resource::Service(s) => Some(vip::Claim {
                    namespace: &s.metadata.namespace,
                    name: &s.metadata.name,
                    created: s.metadata.creation_timestamp.as_deref(),
                    addresses: &s.spec.addresses,
                }),
                _ => None,
            })
            .collect();
        let mut allocation = vip::allocate(ranges, &claims);
        for service in services.iter_mut() {
            let key = (service.namespace.clone(), service.name.clone());
            if let Some(addresses) = allocation.addresses.remove(&key) {
                service.addresses = addresses;
            }
        }
        self.report_unallocated(allocation.unallocated);
    }

    /// Warns about the Services newly left without a virtual IP (one line per range), and
    /// says when none is left any more; returns those it warned about.
    fn report_unallocated(&self, now: Vec<vip::Unallocated>) -> Vec<vip::Unallocated> {
        let mut reported = self.unallocated.lock().unwrap_or_else(|p| p.into_inner());
        if *reported == now {
            return Vec::new();
        }
        let new: Vec<vip::Unallocated> = now
            .iter()
            .filter(|u| !reported.contains(u))
            .cloned()
            .collect();
        let mut ranges: Vec<IpNet> = new.iter().map(|u| u.range).collect();
        ranges.sort();
        ranges.dedup();
        for range in ranges {
            let names: Vec<String> = new
                .iter()
                .filter(|u| u.range == range)
                .map(|u| format!("{}/{}", u.namespace, u.name))
                .collect();
            let shown = match names.len() {
                0..=10 => names.join(", "),
                n => format!("{}, and {} more", names[..10].join(", "), n - 10),
            };
            tracing::warn!(
                %range,
                count = names.len(),
                services = %shown,
                "serviceCIDRs range is full: these Services get no virtual IP from it; widen the Mesh's serviceCIDRs, delete unused Services, or set spec.addresses"
            );
        }
        if now.is_empty() {
            tracing::info!("every Service has its virtual IPs again");
        }
        *reported = now;
        new
    }

    /// Every Service's virtual IPs as proxies receive them (its `spec.addresses`, or those
    /// allocated from the Mesh's `serviceCIDRs`), by `namespace/name`, optionally in one
    /// namespace. Computed, never stored.
    pub fn service_addresses(&self, namespace: Option<&str>) -> BTreeMap<String, Vec<IpAddr>> {
        let state = self.state.borrow();
        state
            .services
            .iter()
            .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
            .map(|s| (format!("{}/{}", s.namespace, s.name), s.addresses.clone()))
            .collect()
    }

    /// Follows the mesh state proxies are configured from.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.state.subscribe()
    }

    /// The store revision the registry reflects.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// One resource.
    pub fn get(&self, key: &ResourceKey) -> Option<Resource> {
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        resources.get(key).cloned()
    }

    /// Every resource of `kind`, optionally in one namespace, sorted by key.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Resource> {
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        resources
            .iter()
            .filter(|(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Applies every resource or none. A resource carrying `metadata.resourceVersion`
    /// must still be at that version (optimistic concurrency); others replace whatever is
    /// there. Returns what happened to each, once the registry reflects the commit.
    ///
    /// This is what users' applies go through: a Canary's status is the controller's and
    /// stays as stored, and routes a Canary drives are refused ([`Registry::check_canaries`]).
    pub async fn apply(&self, docs: Vec<Resource>) -> Result<Vec<Applied>, RegistryError> {
        let versioned = docs.iter().any(|d| d.meta().resource_version != 0);
        let mut attempt = 0;
        loop {
            self.check_canaries(&docs)?;
            let mut docs = docs.clone();
            for doc in &mut docs {
                let Resource::Canary(c) = doc else {
                    continue;
                };
                let stored = self.get(&doc_key(c));
                c.status = match &stored {
                    Some(Resource::Canary(stored)) => stored.status.clone(),
                    _ => None,
                };
                // A change is written only if still at the version whose status it keeps:
                // a status written meanwhile is read again, never overwritten.
                if let Some(stored) = stored {
                    let probe = Resource::Canary(c.clone());
                    if !versioned && !same_desired_state(&stored, &probe) {
                        c.metadata.resource_version = stored.meta().resource_version;
                    }
                }
            }
            match self.apply_with(docs, false).await {
                // The controller wrote a status in between: read it again.
                Err(RegistryError::Store(StoreError::Conflict { .. }))
                    if !versioned && attempt < 3 =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Refuses what would contradict a Canary, stored or in the same request: a second
    /// Canary for the same Service, a user route for a Service a Canary drives, and a write
    /// of the route a Canary owns (the one named after it).
    fn check_canaries(&self, docs: &[Resource]) -> Result<(), RegistryError> {
        use skein_model::resource::{CANARY_ANNOTATION, CANARY_RELEASED_ANNOTATION};
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        let mut all: BTreeMap<ResourceKey, &Resource> =
            resources.iter().map(|(k, r)| (k.clone(), r)).collect();
        for d in docs {
            all.insert(d.key(), d);
        }
        let sent = |k: &ResourceKey| docs.iter().any(|d| &d.key() == k);
        let canaries: Vec<_> = all
            .values()
            .filter_map(|r| match r {
                Resource::Canary(c) => Some(c),
                _ => None,
            })
            .collect();
        for c in &canaries {
            let (ns, name) = (&c.metadata.namespace, &c.metadata.name);
            let target = &c.spec.target_ref.name;
            let key = doc_key(c);
            // A promoted canary serves all the target's traffic: the next rollout starts
            // from it, or a new spec would send everything back to the old stable.
            if let (true, Some(Resource::Canary(stored))) = (sent(&key), resources.get(&key)) {
                let promoted = stored
                    .status
                    .as_ref()
                    .is_some_and(|s| s.phase == skein_model::resource::CanaryPhase::Succeeded);
                if promoted && stored.spec != c.spec && c.spec.stable != stored.spec.canary {
                    return Err(RegistryError::Contradicts(format!(
                        "{key} promoted Service {promoted_svc}, which serves all of Service {target}'s traffic now; a new rollout starts from it: set stable: {promoted_svc} and canary: the new version's Service (this spec would send everything back to stable: {stable} first)",
                        promoted_svc = stored.spec.canary,
                        stable = c.spec.stable,
                    )));
                }
            }
            let owned = ResourceKey::new(Kind::HttpRoute, ns, name);
            for other in &canaries {
                let other_key = doc_key(other);
                if other_key != key
                    && other.metadata.namespace == *ns
                    && other.spec.target_ref.name == *target
                    && sent(&key)
                {
                    return Err(RegistryError::Contradicts(format!(
                        "{key}: {other_key} already drives Service {target}; one Canary per Service: edit {other_key}, or delete it first"
                    )));
                }
            }
            for (k, r) in &all {
                let Resource::HttpRoute(route) = r else {
                    continue;
                };
                let ann = &route.metadata.annotations;
                if *k == owned {
                    if sent(k) {
                        return Err(RegistryError::Contradicts(format!(
                            "{k} is written by {key}'s controller, which moves its weights; change the Canary instead (deleting the Canary leaves the route as it is, yours to edit)"
                        )));
                    }
                    let ours = ann.get(CANARY_ANNOTATION) == Some(name)
                        || ann.get(CANARY_RELEASED_ANNOTATION) == Some(name);
                    if !ours && sent(&key) {
                        return Err(RegistryError::Contradicts(format!(
                            "{key}: {k} exists and was not written by this Canary, which writes the route named after it; delete {k} or give the Canary another name"
                        )));
                    }
                    continue;
                }
                let route_ns = &route.metadata.namespace;
                let names_target =
                    route.spec.parent_refs.iter().any(|p| {
                        p.name == *target && p.namespace.as_ref().unwrap_or(route_ns) == ns
                    });
                if names_target && (sent(k) || sent(&key)) {
                    return Err(RegistryError::Contradicts(format!(
                        "{k} routes Service {ns}/{target}, which {key} drives through its own route {owned}: a Service's traffic follows one of them only; delete {k} (or the Canary), or target another Service"
                    )));
                }
            }
        }
        Ok(())
    }

    /// [`Registry::apply`]; with `force`, resources are written even when their desired
    /// state is unchanged (to record a new status).
    pub async fn apply_with(
        &self,
        docs: Vec<Resource>,
        force: bool,
    ) -> Result<Vec<Applied>, RegistryError> {
        self.check_backend_policies(&docs)?;
        let mut ops = Vec::new();
        let mut results = Vec::new();
        for mut doc in docs {
            let key = doc.key();
            let existing = self.get(&key);
            let given_version = doc.meta().resource_version;
            let action = match &existing {
                None => "created",
                Some(old) if same_desired_state(old, &doc) => "unchanged",
                Some(_) => "configured",
            };
            results.push(Applied {
                resource: key.to_string(),
                action,
            });
            if action == "unchanged" && given_version == 0 && !force {
                continue;
            }
            let meta = doc.meta_mut();
            meta.resource_version = 0;
            match &existing {
                Some(old) => {
                    meta.creation_timestamp = old.meta().creation_timestamp.clone();
                    meta.generation = old.meta().generation + u64::from(action != "unchanged");
                }
                None => {
                    meta.creation_timestamp = Some(now_rfc3339());
                    meta.generation = 1;
                }
            }
            let expect = if given_version != 0 {
                Some(given_version)
            } else {
                Some(
                    existing
                        .as_ref()
                        .map(|r| r.meta().resource_version)
                        .unwrap_or(0),
                )
            };
            let value = serde_json::to_vec(&doc)
                .map_err(|e| RegistryError::Encode(key.to_string(), e.to_string()))?;
            ops.push(Op::Put {
                key: format!("{PREFIX}{}", key.storage_path()),
                value,
                expect,
            });
        }
        if !ops.is_empty() {
            let revision = self.store.commit(ops).await?;
            self.wait_for(revision).await;
        }
        Ok(results)
    }

    /// Refuses a BackendPolicy whose target (Service and port) another BackendPolicy, stored
    /// or in the same request, already governs: callers could follow only one.
    fn check_backend_policies(&self, docs: &[Resource]) -> Result<(), RegistryError> {
        // Most writes (workload registrations above all) carry no BackendPolicy: nothing
        // to compare, and no pass over every stored resource.
        if !docs.iter().any(|d| matches!(d, Resource::BackendPolicy(_))) {
            return Ok(());
        }
        let replaced: std::collections::BTreeSet<ResourceKey> =
            docs.iter().map(Resource::key).collect();
        let resources = self.resources.read().unwrap_or_else(|p| p.into_inner());
        let stored = resources.iter().filter_map(|(key, r)| {
            // A stored policy this request replaces is not a rival.
            (matches!(r, Resource::BackendPolicy(_)) && !replaced.contains(key)).then_some(r)
        });
        let mut seen: Vec<(ResourceKey, &Resource)> = Vec::new();
        for r in stored.chain(docs.iter()) {
            let Resource::BackendPolicy(p) = r else {
                continue;
            };
            let target = &p.spec.target_ref;
            let rival = seen.iter().find(|(_, other)| match other {
                Resource::BackendPolicy(o) => {
                    o.metadata.namespace == p.metadata.namespace
                        && o.spec.target_ref.name == target.name
                        && o.spec.target_ref.port == target.port
                }
                _ => false,
            });
            if let Some((key, _)) = rival {
                let port = target
                    .port
                    .map_or("every port".to_string(), |p| format!("port {p}"));
                return Err(RegistryError::Contradicts(format!(
                    "{}: {key} already governs Service {} ({port}); a Service has one BackendPolicy per port (and one for every other port): edit {key}, delete it first, or set targetRef.port",
                    r.key(),
                    target.name,
                )));
            }
            seen.push((r.key(), r));
        }
        Ok(())
    }

    /// Deletes one resource; `Ok(false)` when there was none.
    pub async fn delete(&self, key: &ResourceKey) -> Result<bool, RegistryError> {
        let Some(existing) = self.get(key) else {
            return Ok(false);
        };
        let revision = self
            .store
            .commit(vec![Op::Delete {
                key: format!("{PREFIX}{}", key.storage_path()),
                expect: Some(existing.meta().resource_version),
            }])
            .await?;
        self.wait_for(revision).await;
        Ok(true)
    }

    /// Waits (briefly) until the watch has delivered `revision`, so a read right after a
    /// write sees it.
    async fn wait_for(&self, revision: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.published.load(Ordering::SeqCst) < revision
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Follows the store's changes. When the watch ends (the store dropped a watcher that fell
/// behind, or etcd compacted what it needed), the registry re-lists and watches again.
/// After a publish of the mesh state that took t, the next waits this many t (see
/// `follow`).
pub const PUBLISH_PACE: u32 = 2;
/// The longest wait between two publishes.
pub const PUBLISH_PAUSE_MAX: Duration = Duration::from_millis(200);

async fn follow(
    weak: std::sync::Weak<Registry>,
    mut events: tokio::sync::mpsc::Receiver<Vec<Event>>,
) {
    // When the next publish may start.
    let mut next = tokio::time::Instant::now();
    loop {
        while let Some(mut batch) = events.recv().await {
            // Under a stream of commits (a reconnect storm re-registering thousands of
            // workloads), each publish is a pass over the whole mesh: publishing per
            // commit would cost commits × mesh. So when commits queued up during a
            // publish that took t, the next waits PUBLISH_PACE × t (at most
            // PUBLISH_PAUSE_MAX), gathering those that arrive meanwhile: publishing then
            // takes at most a third of a core. A commit that finds no backlog (one
            // writer waiting for its own change) is published at once.
            tokio::time::sleep_until(next).await;
            // Take every commit waiting by then, and publish once for all of them.
            while let Ok(more) = events.try_recv() {
                batch.extend(more);
            }
            let Some(registry) = weak.upgrade() else {
                return;
            };
            let started = tokio::time::Instant::now();
            registry.apply_events(batch);
            let took = started.elapsed();
            next = tokio::time::Instant::now();
            if !events.is_empty() {
                next += (took * PUBLISH_PACE).min(PUBLISH_PAUSE_MAX);
            }
        }
        let Some(registry) = weak.upgrade() else {
            return;
        };
        tracing::warn!("store watch ended (fell behind, history compacted, or the store was reopened after an I/O error); re-listing");
        loop {
            match registry.resync().await {
                Ok(fresh) => {
                    events = fresh;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot re-list resources; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Every ReferenceGrant, with its namespace.
fn grants_of(resources: &BTreeMap<ResourceKey, Resource>) -> Vec<crate::routes::Grant> {
    resources
        .values()
        .filter_map(|r| match r {
            Resource::ReferenceGrant(g) => Some((g.metadata.namespace.clone(), g.spec.clone())),
            _ => None,
        })
        .collect()
}

/// Whether two versions of a resource want the same thing (labels, annotations, spec);
/// bookkeeping and status do not count.
fn same_desired_state(a: &Resource, b: &Resource) -> bool {
    let strip = |r: &Resource| {
        let mut r = r.clone();
        let m = r.meta_mut();
        m.resource_version = 0;
        m.generation = 0;
        m.creation_timestamp = None;
        r.clear_status();
        r
    };
    strip(a) == strip(b)
}

fn doc_key(c: &skein_model::resource::Canary) -> ResourceKey {
    ResourceKey::new(Kind::Canary, &c.metadata.namespace, &c.metadata.name)
}

fn decode(entry: &Entry) -> Option<(ResourceKey, Resource)> {
    let key = entry
        .key
        .strip_prefix(PREFIX)
        .and_then(ResourceKey::from_storage_path)?;
    match serde_json::from_slice::<Resource>(&entry.value) {
        Ok(mut resource) => {
            resource.meta_mut().resource_version = entry.revision;
            Some((key, resource))
        }
        Err(e) => {
            tracing::error!(key = %entry.key, error = %e, "stored resource cannot be read; ignoring it");
            None
        }
    }
}

/// The current UTC time as RFC 3339 (`2026-11-22T04:05:06Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    skein_model::time::UtcTime::from_unix(secs).rfc3339()
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
