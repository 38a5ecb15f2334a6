//! `Workload`: one instance of an application and its proxy. Proxies register their own
//! workload with the control plane; workloads outside the mesh may be declared by hand.
//! Services select workloads by `metadata.labels`. The status says whether the proxy is
//! connected and which configuration version it has acknowledged (`skein get workloads`).

use super::validate::{is_dns_subdomain, is_rfc3339, Problems, DNS_SUBDOMAIN};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// `spec` of a `Workload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The service account whose identity the workload's proxy holds
    /// (`spiffe://<trust-domain>/ns/<ns>/sa/<serviceAccount>`): a DNS-1123 subdomain.
    /// Default `default`.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The IP address of the workload and its proxy.
    pub address: IpAddr,
    /// The proxy's inbound port, where peer proxies connect. Default 4143.
    #[serde(default = "default_inbound_port")]
    pub inbound_port: u16,
    /// The application's ports (reached through the proxy's inbound side); each at most
    /// once. Default none (a workload that only calls others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl Default for WorkloadSpec {
    /// The defaults, with the unspecified address `0.0.0.0`, which validation refuses: set
    /// `address`.
    fn default() -> Self {
        WorkloadSpec {
            service_account: default_service_account(),
            address: IpAddr::from([0, 0, 0, 0]),
            inbound_port: default_inbound_port(),
            ports: Vec::new(),
        }
    }
}

/// `status` of a `Workload`, reported by the control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadStatus {
    /// Whether the workload's proxy holds a watch stream to the control plane now.
    #[serde(default)]
    pub connected: bool,
    /// When `connected` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The last configuration version the proxy acknowledged applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_version: Option<u64>,
    /// The control-plane replica the proxy is (or was last) connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<String>,
    /// The join lineage of the proxy's certificate (`<token id>.<n>`: the n-th join with
    /// that token), which `skein workload revoke` revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_lineage: Option<String>,
}

impl WorkloadSpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        p.check(
            is_dns_subdomain(&self.service_account),
            "spec.serviceAccount",
            &self.service_account,
            DNS_SUBDOMAIN,
        );
        p.check(
            !self.address.is_unspecified() && !self.address.is_multicast(),
            "spec.address",
            self.address,
            "the workload's unicast IP address (not 0.0.0.0, :: or multicast)",
        );
        p.port("spec.inboundPort", self.inbound_port);
        for (i, port) in self.ports.iter().enumerate() {
            p.port(format!("spec.ports[{i}]"), *port);
        }
        p.unique(
            "spec.ports",
            "",
            &self.ports,
            u16::to_string,
            "each port listed once",
        );
    }
}

impl WorkloadStatus {
    /// Checks the status; paths start with `status`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        if let Some(since) = &self.since {
            p.check(
                is_rfc3339(since),
                "status.since",
                since,
                "an RFC 3339 timestamp such as 2024-05-01T10:00:00Z",
            );
        }
    }
}

fn default_service_account() -> String {
    "default".into()
}

fn default_inbound_port() -> u16 {
    4143
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: WorkloadSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults() {
        let spec: WorkloadSpec = serde_yaml_ng::from_str("{address: 127.0.0.2}").unwrap();
        assert_eq!(spec.service_account, "default");
        assert_eq!(spec.inbound_port, 4143);
        assert!(spec.ports.is_empty());
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"serviceAccount":"default","address":"127.0.0.2","inboundPort":4143}"#
        );
    }

    #[test]
    fn default_needs_an_address() {
        let spec = WorkloadSpec::default();
        assert_eq!(
            (spec.inbound_port, spec.service_account.as_str()),
            (4143, "default")
        );
        let mut p = Problems::new();
        spec.validate(&mut p);
        assert_eq!(p.into_vec()[0].path, "spec.address");
    }

    #[test]
    fn every_rule() {
        assert_eq!(
            problems("{serviceAccount: Web_SA, address: 0.0.0.0, inboundPort: 0, ports: [8080, 0, 8080]}"),
            [
                format!("spec.serviceAccount: \"Web_SA\" is not accepted; expected {DNS_SUBDOMAIN}"),
                "spec.address: \"0.0.0.0\" is not accepted; expected the workload's unicast IP address (not 0.0.0.0, :: or multicast)".into(),
                "spec.inboundPort: \"0\" is not accepted; expected a port from 1 to 65535".into(),
                "spec.ports[1]: \"0\" is not accepted; expected a port from 1 to 65535".into(),
                "spec.ports[2]: \"8080\" is not accepted; expected each port listed once".into(),
            ]
        );
    }

    #[test]
    fn status_round_trips_and_checks_since() {
        let status: WorkloadStatus = serde_yaml_ng::from_str(
            "{connected: true, since: '2024-05-01T10:00:00Z', acknowledgedVersion: 7, controlPlane: control-0}",
        )
        .unwrap();
        assert!(status.connected);
        assert_eq!(status.acknowledged_version, Some(7));
        let mut p = Problems::new();
        status.validate(&mut p);
        assert!(p.into_vec().is_empty());
        let bad = WorkloadStatus {
            since: Some("now".into()),
            ..status
        };
        let mut p = Problems::new();
        bad.validate(&mut p);
        assert_eq!(
            p.into_vec()[0].to_string(),
            "status.since: \"now\" is not accepted; expected an RFC 3339 timestamp such as 2024-05-01T10:00:00Z"
        );
    }
}
