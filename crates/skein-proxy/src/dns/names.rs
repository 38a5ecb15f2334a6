//! The mesh's DNS names: which names the proxy answers itself, and with which addresses.
//! Pure; built once per [`crate::state::State`] from its destinations.
//!
//! A service `NAME` in namespace `NAMESPACE` answers to `NAME.NAMESPACE`,
//! `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.<domain>` and, for the caller's own
//! namespace only, to `NAME`. The names above a service (`NAMESPACE.svc`,
//! `NAMESPACE.svc.<domain>`, `svc.<domain>`, `<domain>`) exist without records: calling
//! them nonexistent would tell a resolver that follows RFC 8020 that nothing below exists
//! either. Any other name ending in `.svc` or in `<domain>` does not exist, and the proxy
//! says so at once rather than asking upstream. Every other name is not the mesh's.

use skein_model::ProxyConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The mesh DNS domain when the configuration sets none.
const DEFAULT_DOMAIN: &str = "cluster.local";

/// What the table says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    /// A mesh service: its `namespace/name` and its addresses (possibly none).
    Service {
        /// `namespace/name`, for logs.
        service: &'a str,
        /// Its virtual addresses, in configuration order.
        addresses: &'a [IpAddr],
    },
    /// A name above some services, which has no records of its own.
    Exists,
    /// A name in the mesh's part of the namespace that no service has.
    NxDomain,
    /// Not a mesh name: ask upstream.
    Forward,
}

#[derive(Debug)]
enum Entry {
    Service {
        key: Arc<str>,
        addresses: Arc<[IpAddr]>,
    },
    Exists,
}

/// Every mesh name of one configuration.
#[derive(Debug)]
pub struct Table {
    names: HashMap<String, Entry>,
    /// The mesh domain, lowercase, e.g. `cluster.local`.
    domain: String,
    /// `.` and the domain, for suffix checks.
    dot_domain: String,
    /// The TTL of the proxy's own answers, in seconds.
    pub ttl: u32,
}

impl Table {
    /// The names of `config`'s destinations, as seen from its workload's namespace, under
    /// `dns.domain` (or `cluster.local` without a `dns` section).
    pub fn new(config: &ProxyConfig) -> Table {
        let dns = config.dns.as_ref();
        let domain = dns
            .map_or(DEFAULT_DOMAIN, |d| d.domain.as_str())
            .to_ascii_lowercase();
        let ttl = dns.map_or(5, |d| u32::try_from(d.ttl.as_secs()).unwrap_or(u32::MAX));
        let own = config.workload.namespace.to_ascii_lowercase();
        let mut names = HashMap::new();
        for above in [format!("svc.{domain}"), domain.clone()] {
            names.insert(above, Entry::Exists);
        }
        for d in &config.destinations {
            let ns = d.namespace.to_ascii_lowercase();
            names.insert(format!("{ns}.svc"), Entry::Exists);
            names.insert(format!("{ns}.svc.{domain}"), Entry::Exists);
        }
        // Services after the names above them, so that a service wins a clash.
        for d in &config.destinations {
            let (name, ns) = (
                d.service.to_ascii_lowercase(),
                d.namespace.to_ascii_lowercase(),
            );
            let key: Arc<str> = format!("{ns}/{name}").into();
            let addresses: Arc<[IpAddr]> = d.addresses.clone().into();
            let mut forms = vec![
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.{domain}"),
            ];
            if ns == own {
                forms.push(name.clone());
            }
            for form in forms {
                let entry = Entry::Service {
                    key: key.clone(),
                    addresses: addresses.clone(),
                };
                names.insert(form, entry);
            }
        }
        let dot_domain = format!(".{domain}");
        Table {
            names,
            domain,
            dot_domain,
            ttl,
        }
    }

    /// What `name` is, matched case-insensitively, with or without its trailing dot.
    pub fn lookup(&self, name: &str) -> Found<'_> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        match self.names.get(name) {
            Some(Entry::Service { key, addresses }) => Found::Service {
                service: key,
                addresses,
            },
            Some(Entry::Exists) => Found::Exists,
            None if self.is_mesh_zone(name) => Found::NxDomain,
            None => Found::Forward,
        }
    }

    /// The mesh domain, lowercase.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True for names the proxy is the authority for.
    fn is_mesh_zone(&self, name: &str) -> bool {
        name.ends_with(".svc") || name == self.domain || name.ends_with(&self.dot_domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dns: &str) -> Table {
        let yaml = format!(
            "workload: {{name: w, service: web, namespace: default}}
inbound: {{ports: [{{port: 80}}]}}
{dns}
destinations:
- {{service: restaurant, ports: [{{port: 80}}], endpoints: [], addresses: ['198.18.1.10', 'fd00::10']}}
- {{service: kitchen, namespace: food, ports: [{{port: 80}}], endpoints: [], addresses: ['198.18.2.20']}}
- {{service: ledger, ports: [{{port: 80}}], endpoints: []}}
"
        );
        Table::new(&ProxyConfig::from_yaml(&yaml, "test").unwrap())
    }

    fn service(found: Found<'_>) -> (&str, Vec<String>) {
        match found {
            Found::Service { service, addresses } => {
                (service, addresses.iter().map(ToString::to_string).collect())
            }
            other => panic!("expected a service, got {other:?}"),
        }
    }

    #[test]
    fn the_four_forms_answer_case_insensitively_with_or_without_the_dot() {
        let t = table("");
        for name in [
            "restaurant",
            "restaurant.default",
            "restaurant.default.svc",
            "restaurant.default.svc.cluster.local",
            "Restaurant.DEFAULT.svc.Cluster.Local.",
            "restaurant.",
        ] {
            let (key, addresses) = service(t.lookup(name));
            assert_eq!(key, "default/restaurant", "{name}");
            assert_eq!(addresses, ["198.18.1.10", "fd00::10"], "{name}");
        }
        assert_eq!(t.ttl, 5);
    }

    #[test]
    fn a_bare_name_is_only_the_callers_own_namespace() {
        let t = table("");
        assert_eq!(t.lookup("kitchen"), Found::Forward);
        assert_eq!(service(t.lookup("kitchen.food")).0, "food/kitchen");
        assert_eq!(
            service(t.lookup("kitchen.food.svc.cluster.local")).0,
            "food/kitchen"
        );
    }

    #[test]
    fn a_service_without_addresses_is_known_with_none() {
        let t = table("");
        assert_eq!(
            service(t.lookup("ledger.default.svc")),
            ("default/ledger", vec![])
        );
    }

    #[test]
    fn unknown_names_in_the_mesh_zone_do_not_exist_and_others_go_upstream() {
        let t = table("");
        for name in [
            "nosuch.default.svc.cluster.local",
            "nosuch.default.svc",
            "restaurant.other.svc",
            "pod.cluster.local",
            "google.com.default.svc.cluster.local",
        ] {
            assert_eq!(t.lookup(name), Found::NxDomain, "{name}");
        }
        for name in [
            "outside.test",
            "nosuch",
            "nosuch.default",
            "svc",
            "",
            "local",
        ] {
            assert_eq!(t.lookup(name), Found::Forward, "{name}");
        }
    }

    #[test]
    fn names_above_services_exist_without_records() {
        let t = table("");
        for name in [
            "default.svc",
            "food.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local.",
        ] {
            assert_eq!(t.lookup(name), Found::Exists, "{name}");
        }
        assert_eq!(t.lookup("empty.svc.cluster.local"), Found::NxDomain);
    }

    #[test]
    fn the_domain_and_ttl_come_from_the_dns_section() {
        let t = table("dns: {domain: mesh.example, ttl: 30s}");
        assert_eq!(
            service(t.lookup("kitchen.food.svc.mesh.example")).0,
            "food/kitchen"
        );
        assert_eq!(t.lookup("kitchen.food.svc.cluster.local"), Found::Forward);
        assert_eq!(t.lookup("nosuch.mesh.example"), Found::NxDomain);
        assert_eq!(t.ttl, 30);
    }
}
