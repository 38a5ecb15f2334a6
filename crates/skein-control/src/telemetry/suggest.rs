//! `skein policy suggest`: the least-privilege AuthorizationPolicies that allow exactly the
//! pathways proxies observed (callers per service; ports, methods and path prefixes),
//! written as YAML that `skein apply` accepts, with a comment per rule saying what it
//! covers. Pure over [`Central`].
//!
//! Grouping, per service and caller: a port the caller reached over opaque TCP gets a
//! port-only rule (which admits HTTP on that port too). For HTTP, each method's path
//! prefixes (first segment: `/menu/*`, an exact one-segment path, or `/`) are collected;
//! more than [`MAX_PATHS`] prefixes become `/*`; methods with the same prefixes share one
//! `to` entry, and a method outside the standard ones drops the method condition.
//! Callers that cannot be named in a policy (folded into `other`) are reported in a
//! comment, never allowed.

use super::{Central, Who, OTHER};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The methods a rule can name.
const STANDARD_METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];

/// Path prefixes per method and port beyond which a rule allows every path (`/*`).
pub const MAX_PATHS: usize = 8;

/// One `to` entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct To {
    /// The port.
    pub ports: Vec<u16>,
    /// Methods; empty: any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths; empty: any (a TCP port).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// One rule: a caller and what it may reach.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rule {
    /// The caller's namespace (empty: unauthenticated).
    pub from_namespace: String,
    /// The caller's account (`unauthenticated` for plaintext callers).
    pub from: String,
    /// What it may reach.
    pub to: Vec<To>,
    /// HTTP requests this rule covers in the window.
    pub requests: u64,
    /// TCP connections it covers.
    pub connections: u64,
    /// Distinct path prefixes it saw.
    pub prefixes: usize,
}

/// The policy suggested for one service.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Suggested {
    /// Namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// One per caller, sorted.
    pub rules: Vec<Rule>,
    /// Requests and connections from callers folded into `other`: not allowed by any rule.
    pub unattributed: u64,
}

type PortUse = (u64, BTreeMap<String, BTreeMap<String, u64>>);

impl Central {
    /// The policies that allow exactly what was observed in the window, per service
    /// (only those in `namespace`, if given).
    pub fn suggest(&self, namespace: Option<&str>, window: Duration, now: i64) -> Vec<Suggested> {
        // service → caller → port → (tcp connections, method → prefix → requests)
        let mut seen: BTreeMap<Who, BTreeMap<Who, BTreeMap<u16, PortUse>>> = BTreeMap::new();
        self.each_slot(super::query::window_start(now, window), |_, slot| {
            for (k, agg) in &slot.pathways {
                let n = &agg.count;
                if namespace.is_some_and(|ns| *k.dst.namespace != *ns) {
                    continue;
                }
                let port = seen
                    .entry(k.dst.clone())
                    .or_default()
                    .entry(k.src.clone())
                    .or_default()
                    .entry(k.port)
                    .or_default();
                if k.method.is_empty() {
                    port.0 += n;
                } else {
                    *port
                        .1
                        .entry(k.method.to_string())
                        .or_default()
                        .entry(k.prefix.to_string())
                        .or_default() += n;
                }
            }
        });
        seen.into_iter()
            .map(|(service, callers)| {
                let mut unattributed = 0;
                let mut rules = Vec::new();
                for (caller, ports) in callers {
                    if &*caller.name == OTHER || &*caller.name == "unknown" {
                        unattributed += ports
                            .values()
                            .map(|(tcp, m)| tcp + m.values().flat_map(|p| p.values()).sum::<u64>())
                            .sum::<u64>();
                        continue;
                    }
                    rules.push(rule(&caller, &ports));
                }
                Suggested {
                    namespace: service.namespace.to_string(),
                    service: service.name.to_string(),
                    rules,
                    unattributed,
                }
            })
            .collect()
    }
}

fn rule(caller: &Who, ports: &BTreeMap<u16, PortUse>) -> Rule {
    let mut to = Vec::new();
    let (mut requests, mut connections) = (0, 0);
    let mut prefixes = BTreeSet::new();
    for (&port, (tcp, methods)) in ports {
        connections += tcp;
        for by_prefix in methods.values() {
            requests += by_prefix.values().sum::<u64>();
            prefixes.extend(by_prefix.keys().cloned());
        }
        if *tcp > 0 {
            // A port-only rule: the TCP connections, and HTTP on the port with them.
            to.push(To {
                ports: vec![port],
                methods: Vec::new(),
                paths: Vec::new(),
            });
            continue;
        }
        // Methods that reached the same paths share an entry.
        let mut by_paths: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
        for (method, by_prefix) in methods {
            // Only the standard methods can be written in a rule; others mean any.
            let method = if STANDARD_METHODS.contains(&method.as_str()) {
                method.clone()
            } else {
                "*".to_string()
            };
            let mut paths: Vec<String> = by_prefix.keys().cloned().collect();
            if paths.len() > MAX_PATHS || paths.iter().any(|p| p == "/*") {
                paths = vec!["/*".into()];
            }
            by_paths.entry(paths).or_default().insert(method);
        }
        for (paths, methods) in by_paths {
            let methods = if methods.contains("*") {
                Vec::new()
            } else {
                methods.into_iter().collect()
            };
            to.push(To {
                ports: vec![port],
                methods,
                paths,
            });
        }
    }
    Rule {
        from_namespace: caller.namespace.to_string(),
        from: caller.name.to_string(),
        to,
        requests,
        connections,
        prefixes: prefixes.len(),
    }
}

/// A YAML single-quoted scalar.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The suggestions as YAML documents `skein apply` accepts, with a comment per rule.
pub fn to_yaml(suggested: &[Suggested], window: Duration, now: i64) -> String {
    let until = skein_model::time::UtcTime::from_unix(now.max(0) as u64).rfc3339();
    let mut out = format!(
        "# skein policy suggest: AuthorizationPolicies allowing exactly the pathways observed in\n\
         # the {} until {until}. Review them, then `skein apply -f`. With the Mesh's\n\
         # defaultPolicy at audit, watch audited decisions stay at zero before switching to deny.\n",
        skein_model::duration::format(window)
    );
    if suggested.is_empty() {
        out += "# No pathways observed in the window: nothing to suggest.\n";
    }
    for s in suggested {
        out += &format!(
            "---\napiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {}-observed\n  namespace: {}\nspec:\n  targetRef:\n    name: {}\n  action: allow\n",
            s.service, s.namespace, s.service
        );
        if s.unattributed > 0 {
            out += &format!(
                "  # {} requests or connections came from callers this view could not name (too many distinct callers); no rule allows them.\n",
                s.unattributed
            );
        }
        out += "  rules:\n";
        for r in &s.rules {
            let mut covers = Vec::new();
            if r.requests > 0 {
                covers.push(format!(
                    "{} request{} under {} path prefix{}",
                    r.requests,
                    if r.requests == 1 { "" } else { "s" },
                    r.prefixes,
                    if r.prefixes == 1 { "" } else { "es" }
                ));
            }
            if r.connections > 0 {
                covers.push(format!(
                    "{} TCP connection{}",
                    r.connections,
                    if r.connections == 1 { "" } else { "s" }
                ));
            }
            let who = if r.from_namespace.is_empty() {
                "unauthenticated callers".to_string()
            } else {
                format!("{}/{}", r.from_namespace, r.from)
            };
            out += &format!("  # {who}: {}\n", covers.join(" and "));
            let from = if r.from_namespace.is_empty() {
                "unauthenticated: true".to_string()
            } else if r.from_namespace == s.namespace {
                format!("service: {}", r.from)
            } else {
                format!("service: {}.{}", r.from, r.from_namespace)
            };
            out += &format!("  - from:\n    - {from}\n    to:\n");
            for t in &r.to {
                let ports: Vec<String> = t.ports.iter().map(u16::to_string).collect();
                out += &format!("    - ports: [{}]\n", ports.join(", "));
                if !t.methods.is_empty() {
                    out += &format!("      methods: [{}]\n", t.methods.join(", "));
                }
                if !t.paths.is_empty() {
                    let paths: Vec<String> = t.paths.iter().map(|p| quoted(p)).collect();
                    out += &format!("      paths: [{}]\n", paths.join(", "));
                }
            }
        }
    }
    out
}
