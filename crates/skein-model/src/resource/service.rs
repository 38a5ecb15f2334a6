//! `Service`: a set of workloads chosen by labels and by the identity they run under,
//! reachable on declared ports, each with its protocol (reusing the proxy's [`Protocol`]),
//! and optionally on virtual IPs that transparently intercepted connections use.
//!
//! Labels are what a workload says about itself; its service account is what its
//! certificate proves. A Service therefore selects only workloads whose account it admits
//! ([`ServiceSpec::accounts`]): by default the account named after the Service, so a proxy
//! that joined with a token for `evil` can never become an endpoint of `web`, whatever
//! labels it registers.

use super::validate::{is_dns_subdomain, Problems, DNS_SUBDOMAIN};
use crate::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `spec` of a `Service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Workloads whose labels include all of these belong to the service. Required, at
    /// least one label.
    pub selector: BTreeMap<String, String>,
    /// The ports callers use; at least one, each port number and name at most once.
    pub ports: Vec<ServicePort>,
    /// Virtual IPs (cluster IPs) that reach this service when connections are intercepted
    /// transparently; each at most once. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// The service accounts (in the Service's namespace) whose workloads may serve it: a
    /// workload is an endpoint only if its certificate's account is listed, and callers'
    /// proxies accept only these identities from its endpoints. Default: the account named
    /// after the Service. List more for subsets and versions that run under a shared
    /// account, e.g. `restaurant-v2` selecting `{app: restaurant, version: v2}` with
    /// `serviceAccounts: [restaurant]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Namespaces whose proxies are sent this Service up front, before their application
    /// first calls it (`"*"`: every namespace). Default none: a proxy is sent a Service
    /// the first time its application calls it, and holds only what it calls. Unlike
    /// Istio's field of this name it never hides a Service from anyone: who may call it
    /// is what AuthorizationPolicies decide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// Most namespaces one Service may list in `exportTo`.
pub const MAX_EXPORT_TO: usize = 64;

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "RawServicePort")]
pub struct ServicePort {
    /// Optional name (a DNS-1123 label), which routes and policies may refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port callers connect to.
    pub port: u16,
    /// The workloads' port that receives the traffic. Default: the same as `port`.
    pub target_port: u16,
    /// What is spoken on the port. Default `detect`.
    pub protocol: Protocol,
}

/// A port as written, before `targetPort` takes its default from `port`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawServicePort {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default)]
    target_port: Option<u16>,
    #[serde(default)]
    protocol: Protocol,
}

impl From<RawServicePort> for ServicePort {
    fn from(raw: RawServicePort) -> Self {
        ServicePort {
            name: raw.name,
            port: raw.port,
            target_port: raw.target_port.unwrap_or(raw.port),
            protocol: raw.protocol,
        }
    }
}

impl ServiceSpec {
    /// The service accounts admitted as endpoints of the Service named `name`:
    /// `serviceAccounts`, or `[name]` when none are listed.
    pub fn accounts(&self, name: &str) -> Vec<String> {
        if self.service_accounts.is_empty() {
            vec![name.to_owned()]
        } else {
            self.service_accounts.clone()
        }
    }

    /// The port spec for service port `port`, if declared.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        if self.selector.is_empty() {
            p.add(
                "spec.selector",
                "{}",
                "at least one label, e.g. {app: restaurant}",
            );
        }
        p.labels("spec.selector", &self.selector);
        if self.ports.is_empty() {
            p.add("spec.ports", "[]", "at least one port");
        }
        for (i, port) in self.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            if let Some(name) = &port.name {
                p.dns_label(format!("{at}.name"), name);
            }
            p.port(format!("{at}.port"), port.port);
            // When targetPort took its default, the port's own check covers it.
            if port.target_port != port.port {
                p.port(format!("{at}.targetPort"), port.target_port);
            }
        }
        let numbers: Vec<_> = self.ports.iter().map(|p| p.port).collect();
        p.unique(
            "spec.ports",
            ".port",
            &numbers,
            u16::to_string,
            "each port number listed once",
        );
        for (i, port) in self.ports.iter().enumerate() {
            let earlier = &self.ports[..i];
            if let Some(name) = &port.name {
                let repeated = earlier.iter().any(|e| e.name.as_ref() == Some(name));
                p.check(
                    !repeated,
                    format!("spec.ports[{i}].name"),
                    name,
                    "each port name used once",
                );
            }
        }
        p.unique(
            "spec.addresses",
            "",
            &self.addresses,
            IpAddr::to_string,
            "each address listed once",
        );
        for (i, account) in self.service_accounts.iter().enumerate() {
            p.check(
                is_dns_subdomain(account),
                format!("spec.serviceAccounts[{i}]"),
                account,
                DNS_SUBDOMAIN,
            );
        }
        p.unique(
            "spec.serviceAccounts",
            "",
            &self.service_accounts,
            String::clone,
            "each account listed once",
        );
        for (i, ns) in self.export_to.iter().enumerate() {
            if ns != "*" {
                p.dns_label(format!("spec.exportTo[{i}]"), ns);
            }
        }
        p.unique(
            "spec.exportTo",
            "",
            &self.export_to,
            String::clone,
            "each namespace listed once",
        );
        p.check(
            !(self.export_to.len() > 1 && self.export_to.iter().any(|n| n == "*")),
            "spec.exportTo",
            format!("{:?}", self.export_to),
            "either [\"*\"] (every namespace) or a list of namespaces, not both",
        );
        p.check(
            self.export_to.len() <= MAX_EXPORT_TO,
            "spec.exportTo",
            format!("{} namespaces", self.export_to.len()),
            &format!("at most {MAX_EXPORT_TO} namespaces, or [\"*\"] for every one"),
        );
    }

    /// Whether proxies in `namespace` are sent this Service up front.
    pub fn exported_to(&self, namespace: &str) -> bool {
        self.export_to.iter().any(|n| n == "*" || n == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: ServiceSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_target_port_and_protocol() {
        let spec: ServiceSpec =
            serde_yaml_ng::from_str("{selector: {app: web}, ports: [{port: 80}, {port: 81, targetPort: 8081, protocol: grpc}]}")
                .unwrap();
        assert_eq!(spec.ports[0].target_port, 80);
        assert_eq!(spec.ports[0].protocol, Protocol::Detect);
        assert_eq!(spec.port(81).unwrap().target_port, 8081);
        assert_eq!(spec.port(81).unwrap().protocol, Protocol::Grpc);
        assert_eq!(
            serde_json::to_string(&spec.ports[0]).unwrap(),
            r#"{"port":80,"targetPort":80,"protocol":"detect"}"#
        );
    }

    #[test]
    fn export_to_lists_namespaces_or_every_one() {
        let spec: ServiceSpec = serde_yaml_ng::from_str(
            "{selector: {app: web}, ports: [{port: 80}], exportTo: [shop, web]}",
        )
        .unwrap();
        assert!(spec.exported_to("shop") && spec.exported_to("web"));
        assert!(!spec.exported_to("other"));
        let everywhere: ServiceSpec =
            serde_yaml_ng::from_str("{selector: {app: web}, ports: [{port: 80}], exportTo: ['*']}")
                .unwrap();
        assert!(everywhere.exported_to("anything"));
        assert!(
            problems("{selector: {app: web}, ports: [{port: 80}], exportTo: ['*']}").is_empty()
        );
        let bad = problems("{selector: {app: web}, ports: [{port: 80}], exportTo: [Shop_1]}");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].starts_with("spec.exportTo[0]: \"Shop_1\" is not accepted"),
            "{bad:?}"
        );
        let both = problems("{selector: {app: web}, ports: [{port: 80}], exportTo: ['*', shop]}");
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].contains("either [\"*\"]"), "{both:?}");
        let twice = problems("{selector: {app: web}, ports: [{port: 80}], exportTo: [shop, shop]}");
        assert_eq!(twice.len(), 1, "{twice:?}");
        assert!(twice[0].contains("each namespace listed once"), "{twice:?}");
        let many: Vec<String> = (0..=MAX_EXPORT_TO).map(|i| format!("ns{i}")).collect();
        let too_many = problems(&format!(
            "{{selector: {{app: web}}, ports: [{{port: 80}}], exportTo: [{}]}}",
            many.join(", ")
        ));
        assert_eq!(too_many.len(), 1, "{too_many:?}");
        assert!(
            too_many[0].contains("at most 64 namespaces"),
            "{too_many:?}"
        );
    }

    #[test]
    fn selector_must_not_be_empty() {
        assert_eq!(
            problems("{selector: {}, ports: [{port: 80}]}"),
            ["spec.selector: \"{}\" is not accepted; expected at least one label, e.g. {app: restaurant}"]
        );
    }

    #[test]
    fn needs_a_port() {
        assert_eq!(
            problems("{selector: {app: web}, ports: []}"),
            ["spec.ports: \"[]\" is not accepted; expected at least one port"]
        );
    }

    #[test]
    fn ports_and_names_are_unique_and_nonzero() {
        assert_eq!(
            problems(
                "{selector: {app: web}, ports: [{name: http, port: 80}, {name: http, port: 80}, {name: Admin, port: 0}, {port: 90, targetPort: 0}]}"
            ),
            [
                "spec.ports[2].name: \"Admin\" is not accepted; expected a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                "spec.ports[2].port: \"0\" is not accepted; expected a port from 1 to 65535",
                "spec.ports[3].targetPort: \"0\" is not accepted; expected a port from 1 to 65535",
                "spec.ports[1].port: \"80\" is not accepted; expected each port number listed once",
                "spec.ports[1].name: \"http\" is not accepted; expected each port name used once",
            ]
        );
    }

    #[test]
    fn accounts_default_to_the_service_name_and_are_checked() {
        let spec: ServiceSpec =
            serde_yaml_ng::from_str("{selector: {app: web}, ports: [{port: 80}]}").unwrap();
        assert_eq!(spec.accounts("web"), ["web"]);
        let spec: ServiceSpec = serde_yaml_ng::from_str(
            "{selector: {app: web, version: v2}, ports: [{port: 80}], serviceAccounts: [web, web-canary]}",
        )
        .unwrap();
        assert_eq!(spec.accounts("web-v2"), ["web", "web-canary"]);
        assert_eq!(
            problems("{selector: {app: web}, ports: [{port: 80}], serviceAccounts: [Web_SA, web, web]}"),
            [
                format!("spec.serviceAccounts[0]: \"Web_SA\" is not accepted; expected {DNS_SUBDOMAIN}"),
                "spec.serviceAccounts[2]: \"web\" is not accepted; expected each account listed once".into(),
            ]
        );
    }

    #[test]
    fn addresses_are_unique() {
        assert_eq!(
            problems("{selector: {app: web}, ports: [{port: 80}], addresses: [10.0.0.1, 10.0.0.1]}"),
            ["spec.addresses[1]: \"10.0.0.1\" is not accepted; expected each address listed once"]
        );
    }
}
