//! What one proxy session sends next. Pure: between the shared [`Catalog`] and what one
//! proxy holds, it decides whether to send a complete snapshot, a delta, or nothing, and
//! remembers what the proxy holds afterwards. `grpc` runs one per session.
//!
//! A proxy's *scope* is what it must hold: every Service, or, for a proxy that announced
//! `on-demand`, the Services its wants resolve to, those exported to its namespace
//! (`exportTo`), and every Service their routes send or mirror to. Wants are kept as asked (names and addresses) and resolved again on every
//! change, so a Service that comes to answer to one is sent then. A want that found a
//! Service which then left is forgotten, as the proxy forgets it (it asks again if its
//! application calls that name again), so a session's wants follow what its workload
//! calls now rather than everything it ever called.
//!
//! To a proxy that announced `deltas`, a change is sent as the destinations whose digest
//! differs from what it holds, the keys it holds that left its scope, and its local part
//! (everything but destinations) only when that changed. A proxy that refused a message
//! is sent a complete snapshot next. A reconnecting proxy reports what it holds
//! (`Register.held`), so one that is current is sent no destinations at all.

use crate::catalog::{Catalog, Key};
use skein_api::v1 as pb;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// Most wants one proxy may hold; beyond, further ones are answered "nothing" and not
/// remembered (a proxy asks only about what its application called, so this is far more
/// than any workload calls).
pub const MAX_WANTS: usize = 10_000;

/// Most names and addresses one `Want` may carry (a proxy asks about one at a time, and
/// re-asks what is pending after a reconnect a few at a time); a larger one ends the
/// stream with an error. `Register.wanted` is bounded by [`MAX_WANTS`] instead.
pub const MAX_PER_WANT: usize = 256;

/// Most `Register.held` entries read; a proxy reporting more is sent everything.
const MAX_HELD: usize = 100_000;

/// What a session has sent, and what it answers next.
#[derive(Debug)]
pub struct Push {
    caller_ns: String,
    deltas: bool,
    on_demand: bool,
    /// What the proxy holds as far as this session knows: key → digest. `None`: unknown,
    /// so the next message is complete.
    held: Option<HashMap<Key, u64>>,
    /// The local part as last sent.
    local: Option<pb::Snapshot>,
    /// Version of the last message sent (or held at reconnect).
    version: u64,
    /// Names asked, and whether each found a Service at the last plan.
    names: BTreeMap<String, bool>,
    /// Addresses asked, likewise.
    addresses: BTreeMap<IpAddr, bool>,
    answers: Vec<pb::Answer>,
    /// The catalog's mesh generation at the last plan.
    mesh_generation: Option<u64>,
}

/// What a message carried, for counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// A delta (else complete).
    pub delta: bool,
    /// Destinations it carried.
    pub destinations: usize,
    /// Destinations it removed.
    pub removed: usize,
    /// How many the proxy holds now.
    pub held: usize,
}

/// Whether `name` can be a host name (what a proxy asks about): 1 to 253 letters,
/// digits, `-` and `.`. Anything else is answered "nothing" and not kept.
fn host_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Push {
    /// A session for a proxy in `caller_ns` that announced `supports`, reporting
    /// `register`'s holdings and wants when it reconnects.
    pub fn new(caller_ns: &str, register: &pb::Register) -> Push {
        let supports = |what: &str| register.supports.iter().any(|s| s == what);
        let deltas = supports("deltas");
        let on_demand = deltas && supports("on-demand");
        let held =
            (deltas && register.last_version > 0 && register.held.len() <= MAX_HELD).then(|| {
                register
                    .held
                    .iter()
                    .map(|h| (Key::from(h.destination.as_str()), h.digest))
                    .collect()
            });
        let mut push = Push {
            caller_ns: caller_ns.to_string(),
            deltas,
            on_demand,
            held,
            local: None,
            version: register.last_version,
            names: BTreeMap::new(),
            addresses: BTreeMap::new(),
            answers: Vec::new(),
            mesh_generation: None,
        };
        if let (true, Some(w)) = (on_demand, &register.wanted) {
            push.remember(w);
        }
        push
    }

    /// Remembers `want`'s names and addresses (up to [`MAX_WANTS`]); returns those not
    /// remembered: beyond the bound, names that cannot be a host name, and addresses that
    /// are not IPs.
    fn remember(&mut self, want: &pb::Want) -> std::collections::HashSet<String> {
        let mut dropped = std::collections::HashSet::new();
        for n in &want.names {
            if self.names.len() + self.addresses.len() >= MAX_WANTS || !host_name(n) {
                dropped.insert(n.clone());
            } else {
                self.names.entry(n.to_ascii_lowercase()).or_insert(false);
            }
        }
        for a in &want.addresses {
            match a.parse::<IpAddr>() {
                Ok(ip) if self.names.len() + self.addresses.len() < MAX_WANTS => {
                    self.addresses.entry(ip).or_insert(false);
                }
                _ => {
                    dropped.insert(a.clone());
                }
            }
        }
        dropped
    }

    /// A proxy asked for `want`: remembers it and queues an answer to each name and
    /// address, sent with the next message (which the caller should plan at once).
    pub fn want(&mut self, want: &pb::Want, catalog: &Catalog) {
        if !self.on_demand {
            return;
        }
        let dropped = self.remember(want);
        for asked in want.names.iter().chain(&want.addresses) {
            let destination = if dropped.contains(asked) {
                None
            } else {
                self.resolve(asked, catalog)
            };
            self.answers.push(pb::Answer {
                asked: asked.clone(),
                destination: destination.map(|k| k.to_string()).unwrap_or_default(),
            });
        }
    }

    fn resolve(&self, asked: &str, catalog: &Catalog) -> Option<Key> {
        match asked.parse::<IpAddr>() {
            Ok(ip) => catalog.by_address(ip).cloned(),
            Err(_) => catalog.by_name(asked, &self.caller_ns),
        }
    }

    /// Whether planning against `catalog` would find nothing new for this proxy, its local
    /// part aside (the caller knows whether that changed): no answers due, the same
    /// Services and Mesh settings as at the last plan, and every destination it holds
    /// unchanged. Cheap (the destinations held, no more), so that a change elsewhere costs
    /// each session little.
    pub fn unchanged(&self, catalog: &Catalog) -> bool {
        self.answers.is_empty()
            && self.mesh_generation == Some(catalog.mesh_generation)
            && self.held.as_ref().is_some_and(|held| {
                held.iter().all(|(k, digest)| {
                    catalog.get(k).is_some_and(|e| {
                        e.for_caller(&self.caller_ns).destination.digest == *digest
                    })
                })
            })
    }

    /// The proxy refused a message: the next one is complete.
    pub fn refused(&mut self) {
        self.held = None;
        self.local = None;
    }

    /// The Services this proxy must hold now. Forgets the wants whose Service left; keeps
    /// those that never found one.
    fn scope(&mut self, catalog: &Catalog) -> BTreeSet<Key> {
        if !self.on_demand {
            return catalog.keys().cloned().collect();
        }
        let mut wanted: Vec<Key> = Vec::new();
        let mut keep = |key: Option<Key>, found: &mut bool| match key {
            Some(k) => {
                wanted.push(k);
                *found = true;
                true
            }
            None => !*found,
        };
        let ns = &self.caller_ns;
        self.names
            .retain(|n, found| keep(catalog.by_name(n, ns), found));
        self.addresses
            .retain(|a, found| keep(catalog.by_address(*a).cloned(), found));
        wanted.extend(catalog.exported_to(&self.caller_ns).cloned());
        catalog.closure(&wanted, &self.caller_ns)
    }

    /// The message to send now, if any, given `catalog` and the proxy's `local` part;
    /// its version is `floor`, the store revision its inputs reflect (a message that only
    /// answers wants repeats the version in force).
    pub fn next(
        &mut self,
        catalog: &Catalog,
        mut local: pb::Snapshot,
        floor: u64,
    ) -> Option<(pb::Snapshot, Sent)> {
        self.mesh_generation = Some(catalog.mesh_generation);
        if self.on_demand {
            local.discovery = Some(pb::Discovery {
                on_demand: true,
                ranges: catalog.ranges.iter().map(ToString::to_string).collect(),
            });
        }
        let scope = self.scope(catalog);
        let wanted: Vec<&pb::Destination> = scope
            .iter()
            .filter_map(|k| Some(&*catalog.get(k)?.for_caller(&self.caller_ns).destination))
            .collect();
        let next_held: HashMap<Key, u64> = scope
            .iter()
            .zip(&wanted)
            .map(|(k, d)| (k.clone(), d.digest))
            .collect();
        let local_changed = self.local.as_ref() != Some(&local);
        let version = floor;
        let sorted = |mut v: Vec<pb::Destination>| {
            v.sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
            v
        };
        let (message, sent) = match (&self.held, self.deltas) {
            (Some(held), true) => {
                let changed: Vec<pb::Destination> = scope
                    .iter()
                    .zip(&wanted)
                    .filter(|(k, d)| held.get(*k) != Some(&d.digest))
                    .map(|(_, d)| (*d).clone())
                    .collect();
                let mut removed: Vec<String> = held
                    .keys()
                    .filter(|k| !next_held.contains_key(*k))
                    .map(|k| k.to_string())
                    .collect();
                if changed.is_empty()
                    && removed.is_empty()
                    && !local_changed
                    && self.answers.is_empty()
                {
                    return None;
                }
                removed.sort();
                let sent = Sent {
                    delta: true,
                    destinations: changed.len(),
                    removed: removed.len(),
                    held: next_held.len(),
                };
                let delta = pb::Delta {
                    base_version: self.version,
                    destinations: sorted(changed),
                    removed,
                    rest: local_changed.then(|| Box::new(local.clone())),
                };
                let message = pb::Snapshot {
                    version,
                    delta: Some(Box::new(delta)),
                    answers: std::mem::take(&mut self.answers),
                    ..Default::default()
                };
                (message, sent)
            }
            (held, _) => {
                if held.as_ref() == Some(&next_held) && !local_changed && self.answers.is_empty() {
                    return None;
                }
                let sent = Sent {
                    delta: false,
                    destinations: wanted.len(),
                    removed: 0,
                    held: wanted.len(),
                };
                let message = pb::Snapshot {
                    version,
                    destinations: sorted(wanted.into_iter().cloned().collect()),
                    answers: std::mem::take(&mut self.answers),
                    ..local.clone()
                };
                (message, sent)
            }
        };
        self.held = Some(next_held);
        self.local = Some(local);
        self.version = version;
        Some((message, sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ServiceView;
    use crate::state::MeshState;
    use skein_identity::DenyList;
    use skein_model::Protocol;
    use std::sync::Arc;

    fn service(name: &str, octet: u8) -> ServiceView {
        ServiceView {
            name: name.into(),
            namespace: "default".into(),
            selector: [("app".to_string(), name.to_string())].into(),
            accounts: vec![name.into()],
            ports: vec![(8080, Protocol::Http)],
            target_ports: Default::default(),
            addresses: vec![IpAddr::from([198, 18, 0, octet])],
            routes: vec![],
            policies: vec![],
            export_to: vec![],
        }
    }

    fn catalog(services: Vec<ServiceView>, previous: Option<&Catalog>) -> Catalog {
        let mesh = Arc::new(MeshState {
            services,
            service_cidrs: vec!["198.18.0.0/24".parse().unwrap()],
            ..MeshState::default()
        });
        Catalog::build(mesh, "td", &DenyList::default(), 0, previous)
    }

    fn register(supports: &[&str]) -> pb::Register {
        pb::Register {
            supports: supports.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn local() -> pb::Snapshot {
        pb::Snapshot {
            trust_domain: "td".into(),
            ..Default::default()
        }
    }

    fn names(s: &pb::Snapshot) -> Vec<String> {
        let ds = s
            .delta
            .as_ref()
            .map_or(&s.destinations, |d| &d.destinations);
        ds.iter().map(|d| d.service.clone()).collect()
    }

    #[test]
    fn a_proxy_without_deltas_gets_every_destination_in_complete_snapshots() {
        let c = catalog(vec![service("a", 1), service("b", 2)], None);
        let mut p = Push::new("default", &register(&[]));
        let (s, sent) = p.next(&c, local(), 5).unwrap();
        assert_eq!(
            (names(&s), s.version, sent.delta),
            (vec!["a".into(), "b".into()], 5, false)
        );
        assert!(s.discovery.is_none());
        assert!(
            p.next(&c, local(), 6).is_none(),
            "nothing changed: nothing sent"
        );
        let mut changed = service("b", 2);
        changed.ports = vec![(9090, Protocol::Grpc)];
        let c2 = catalog(vec![service("a", 1), changed], Some(&c));
        let (s, _) = p.next(&c2, local(), 7).unwrap();
        assert_eq!(names(&s), ["a", "b"], "still complete");
        assert_eq!(s.version, 7);
    }

    #[test]
    fn a_change_to_one_service_is_a_delta_of_that_service_only() {
        let c = catalog(vec![service("a", 1), service("b", 2)], None);
        let mut p = Push::new("default", &register(&["deltas"]));
        let (first, _) = p.next(&c, local(), 5).unwrap();
        assert!(first.delta.is_none(), "the first message is complete");
        let mut changed = service("b", 2);
        changed.ports = vec![(9090, Protocol::Grpc)];
        let c2 = catalog(vec![service("a", 1), changed], Some(&c));
        let (s, sent) = p.next(&c2, local(), 9).unwrap();
        let delta = s.delta.as_ref().expect("a delta");
        assert_eq!(names(&s), ["b"]);
        assert_eq!((delta.base_version, s.version), (5, 9));
        assert!(delta.rest.is_none(), "the local part did not change");
        assert_eq!(
            sent,
            Sent {
                delta: true,
                destinations: 1,
                removed: 0,
                held: 2
            }
        );
        // b deleted: only its removal.
        let c3 = catalog(vec![service("a", 1)], Some(&c2));
        let (s, _) = p.next(&c3, local(), 10).unwrap();
        let delta = s.delta.unwrap();
        assert!(delta.destinations.is_empty());
        assert_eq!(delta.removed, ["default/b"]);
        // The local part changes alone: it travels as `rest`.
        let mut other = local();
        other.mtls = pb::MtlsMode::Permissive as i32;
        let (s, _) = p.next(&c3, other.clone(), 11).unwrap();
        let rest = s.delta.unwrap().rest.expect("rest");
        assert_eq!(rest.mtls, pb::MtlsMode::Permissive as i32);
        assert!(p.next(&c3, other, 12).is_none());
        // After a refusal, everything again.
        p.refused();
        let (s, _) = p.next(&c3, local(), 12).unwrap();
        assert!(s.delta.is_none());
        assert_eq!(names(&s), ["a"]);
    }

    #[test]
    fn an_on_demand_proxy_holds_what_it_asked_for_and_gets_answers() {
        let c = catalog(
            vec![service("a", 1), service("b", 2), service("c", 3)],
            None,
        );
        let mut p = Push::new("default", &register(&["deltas", "on-demand"]));
        let (first, _) = p.next(&c, local(), 5).unwrap();
        assert!(first.destinations.is_empty(), "nothing asked for yet");
        let discovery = first.discovery.expect("discovery");
        assert!(discovery.on_demand);
        assert_eq!(discovery.ranges, ["198.18.0.0/24"]);
        p.want(
            &pb::Want {
                names: vec!["a".into(), "nosuch".into()],
                addresses: vec!["198.18.0.2".into(), "198.18.0.99".into()],
            },
            &c,
        );
        let (s, sent) = p.next(&c, local(), 5).unwrap();
        assert_eq!(names(&s), ["a", "b"]);
        assert_eq!(sent.held, 2);
        let answers: Vec<(&str, &str)> = s
            .answers
            .iter()
            .map(|a| (a.asked.as_str(), a.destination.as_str()))
            .collect();
        assert_eq!(
            answers,
            [
                ("a", "default/a"),
                ("nosuch", ""),
                ("198.18.0.2", "default/b"),
                ("198.18.0.99", "")
            ]
        );
        // A change to c, which it does not hold: nothing.
        let mut changed = service("c", 3);
        changed.ports = vec![(1, Protocol::Tcp)];
        let c2 = catalog(vec![service("a", 1), service("b", 2), changed], Some(&c));
        assert!(p.next(&c2, local(), 8).is_none());
        // `nosuch` appears: it is sent, unasked.
        let mut more = c2.mesh.services.clone();
        more.push(service("nosuch", 4));
        let c3 = catalog(more, Some(&c2));
        let (s, _) = p.next(&c3, local(), 9).unwrap();
        assert_eq!(names(&s), ["nosuch"]);
        assert!(s.answers.is_empty());
    }

    #[test]
    fn a_current_proxy_reconnecting_is_sent_no_destinations() {
        let c = catalog(vec![service("a", 1), service("b", 2)], None);
        let mut first = Push::new("default", &register(&["deltas", "on-demand"]));
        let want = pb::Want {
            names: vec!["a".into(), "b".into()],
            addresses: vec![],
        };
        first.want(&want, &c);
        let (s, _) = first.next(&c, local(), 5).unwrap();
        // It reconnects holding what it was sent.
        let mut again = register(&["deltas", "on-demand"]);
        again.last_version = s.version;
        again.wanted = Some(want);
        again.held = s
            .destinations
            .iter()
            .map(|d| pb::Held {
                destination: format!("{}/{}", d.namespace, d.service),
                digest: d.digest,
            })
            .collect();
        // Meanwhile b changed.
        let mut changed = service("b", 2);
        changed.ports = vec![(1, Protocol::Tcp)];
        let c2 = catalog(vec![service("a", 1), changed], Some(&c));
        let mut p = Push::new("default", &again);
        let (s, sent) = p.next(&c2, local(), 6).unwrap();
        let delta = s.delta.as_ref().expect("a delta");
        assert_eq!(delta.base_version, 5);
        assert_eq!(names(&s), ["b"], "only what changed while it was away");
        assert!(delta.rest.is_some(), "its local part is not known here");
        assert_eq!(sent.held, 2);
    }

    #[test]
    fn a_change_elsewhere_leaves_a_proxy_unchanged() {
        let c = catalog(vec![service("a", 1), service("b", 2)], None);
        let mut p = Push::new("default", &register(&["deltas", "on-demand"]));
        assert!(!p.unchanged(&c), "never planned");
        p.want(
            &pb::Want {
                names: vec!["a".into()],
                addresses: vec![],
            },
            &c,
        );
        assert!(!p.unchanged(&c), "answers are due");
        p.next(&c, local(), 1).unwrap();
        assert!(p.unchanged(&c));
        // b changes: nothing this proxy holds.
        let mut changed = service("b", 2);
        changed.ports = vec![(1, Protocol::Tcp)];
        let c2 = catalog(vec![service("a", 1), changed.clone()], Some(&c));
        assert!(p.unchanged(&c2));
        // a changes: planning is due.
        let mut a = service("a", 1);
        a.ports = vec![(2, Protocol::Tcp)];
        let c3 = catalog(vec![a.clone(), changed.clone()], Some(&c2));
        assert!(!p.unchanged(&c3));
        p.next(&c3, local(), 2).unwrap();
        // A new Service: wants may resolve to it.
        let c4 = catalog(vec![a, changed, service("c", 3)], Some(&c3));
        assert!(!p.unchanged(&c4));
    }

    #[test]
    fn services_exported_to_a_namespace_are_sent_up_front() {
        let mut a = service("a", 1);
        a.export_to = vec!["default".into()];
        let mut b = service("b", 2);
        b.export_to = vec!["elsewhere".into()];
        let c = catalog(vec![a.clone(), b.clone(), service("c", 3)], None);
        let mut p = Push::new("default", &register(&["deltas", "on-demand"]));
        let (first, _) = p.next(&c, local(), 1).unwrap();
        assert_eq!(names(&first), ["a"], "exported here, nothing asked for");
        assert!(p.unchanged(&c));
        // c is exported everywhere: a change of exports moves the mesh generation.
        let mut c_all = service("c", 3);
        c_all.export_to = vec!["*".into()];
        let c2 = catalog(vec![a.clone(), b.clone(), c_all], Some(&c));
        assert!(!p.unchanged(&c2));
        let (s, _) = p.next(&c2, local(), 2).unwrap();
        assert_eq!(names(&s), ["c"]);
        // a no longer exported (and never asked for): it leaves.
        a.export_to.clear();
        let c3 = catalog(vec![a, b, service("c", 3)], Some(&c2));
        let (s, sent) = p.next(&c3, local(), 3).unwrap();
        let delta = s.delta.expect("a delta");
        assert_eq!(delta.removed, ["default/a", "default/c"]);
        assert_eq!(sent.held, 0);
    }

    #[test]
    fn a_want_whose_service_left_is_forgotten_one_that_found_nothing_stays() {
        let c = catalog(vec![service("a", 1), service("b", 2)], None);
        let mut p = Push::new("default", &register(&["deltas", "on-demand"]));
        p.want(
            &pb::Want {
                names: vec!["a".into(), "later".into()],
                addresses: vec!["198.18.0.2".into()],
            },
            &c,
        );
        let (s, _) = p.next(&c, local(), 1).unwrap();
        assert_eq!(names(&s), ["a", "b"]);
        // a and b are deleted: they leave, and so do the wants that found them.
        let c2 = catalog(vec![], Some(&c));
        let (s, _) = p.next(&c2, local(), 2).unwrap();
        assert_eq!(s.delta.unwrap().removed, ["default/a", "default/b"]);
        assert_eq!(p.names.keys().collect::<Vec<_>>(), ["later"]);
        assert!(p.addresses.is_empty());
        // A Service named a again is not sent unasked; one named `later` is.
        let c3 = catalog(vec![service("a", 1), service("later", 3)], Some(&c2));
        let (s, _) = p.next(&c3, local(), 3).unwrap();
        assert_eq!(names(&s), ["later"]);
        // Asked again, a is sent again.
        p.want(
            &pb::Want {
                names: vec!["a".into()],
                addresses: vec![],
            },
            &c3,
        );
        let (s, _) = p.next(&c3, local(), 3).unwrap();
        assert_eq!(names(&s), ["a"]);
    }

    #[test]
    fn wants_are_bounded() {
        let c = catalog(vec![service("a", 1)], None);
        let mut p = Push::new("default", &register(&["deltas", "on-demand"]));
        let mut names: Vec<String> = (0..MAX_WANTS + 5).map(|i| format!("n{i}")).collect();
        names.push("x".repeat(254));
        names.push("bad name/with spaces".into());
        let many = pb::Want {
            names,
            addresses: vec!["not-an-ip".into()],
        };
        p.want(&many, &c);
        assert_eq!(p.names.len(), MAX_WANTS);
        assert!(!p.names.keys().any(|n| n.len() > 253 || n.contains(' ')));
        let (s, _) = p.next(&c, local(), 1).unwrap();
        assert_eq!(s.answers.len(), MAX_WANTS + 8);
        assert!(s.answers.iter().all(|a| a.destination.is_empty()));
    }
}
