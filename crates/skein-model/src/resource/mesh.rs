//! `Mesh`: the mesh-wide settings (trust domain, mTLS mode, the policy for traffic no
//! `AuthorizationPolicy` covers, certificate lifetime, how proxies treat request paths
//! before authorizing them, the networks Services' virtual IPs come from). Cluster-scoped;
//! one per mesh.

use super::validate::Problems;
pub use crate::authz::path::{AmbiguousPaths, EncodedSlashes};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shortest workload certificate lifetime accepted: 5 seconds. Lifetimes under a few
/// minutes are for exercising rotation (tests, drills); each renewal is one request to the
/// control plane per proxy.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(5);
/// Longest workload certificate lifetime accepted: 90 days (2160h).
pub const MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// The network Services' virtual IPs come from when the Mesh names none.
pub const DEFAULT_SERVICE_CIDR: &str = "10.240.0.0/16";

/// What a `serviceCIDRs` entry may be.
pub const SERVICE_CIDR: &str =
    "a network such as 10.240.0.0/16: IPv4 /8 to /30 or IPv6 /64 to /126, \
     outside the loopback, link-local, unspecified, multicast and reserved ranges \
     (0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, ::/8, fe80::/10, ff00::/8)";

/// Ranges no virtual IP may come from: connections to them are never intercepted as a
/// Service's, or mean something else to every host.
const REFUSED_RANGES: [&str; 7] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/3",
    "::/8",
    "fe80::/10",
    "ff00::/8",
];

/// `spec` of a `Mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    /// The SPIFFE trust domain of workload identities
    /// (`spiffe://<trustDomain>/ns/<ns>/sa/<account>`): a DNS-1123 subdomain. Default
    /// `skein.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Whether proxies also accept plaintext from outside the mesh. Default `strict`.
    #[serde(default)]
    pub mtls: MtlsMode,
    /// What happens to a request no `AuthorizationPolicy` decides. Default `allow`.
    #[serde(default)]
    pub default_policy: PolicyAction,
    /// Lifetime of workload certificates; rotated at 70 %. Between 5s and 2160h (90 days);
    /// default `1h`, which also bounds how long a revoked workload can still be accepted by
    /// a proxy that cannot reach the control plane.
    #[serde(
        default = "default_cert_ttl",
        rename = "workloadCertTTL",
        with = "crate::duration"
    )]
    pub workload_cert_ttl: Duration,
    /// What proxies do with `%2F` and `%5C` in request paths before authorizing them:
    /// `reject` (400) or `keep` (left encoded, part of a segment). Default `reject`.
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// What proxies do with request paths that applications may resolve differently from
    /// the proxy (see [`AmbiguousPaths`]): `;` parameters hiding `.`, `..` or empty
    /// segments, escaped `%` followed by hex digits, escapes that are not UTF-8. `reject`
    /// (400) or `forward` (authorized and forwarded as written). Default `reject`, also
    /// for a Mesh stored before this field existed.
    #[serde(default)]
    pub ambiguous_paths: AmbiguousPaths,
    /// How proxies trace requests: the sampling percentage of new traces (default 1) and
    /// an OTLP collector to export to (default none: the control plane keeps them).
    #[serde(default)]
    pub tracing: crate::TracingSpec,
    /// The networks the control plane allocates a virtual IP from to every Service that
    /// sets no `addresses`: at most one IPv4 and one IPv6 network (a Service gets one
    /// address of each). Default `[10.240.0.0/16]`, also for a Mesh stored before this
    /// field existed.
    #[serde(
        default = "default_service_cidrs",
        rename = "serviceCIDRs",
        with = "cidrs"
    )]
    pub service_cidrs: Vec<IpNet>,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            trust_domain: default_trust_domain(),
            mtls: MtlsMode::default(),
            default_policy: PolicyAction::default(),
            workload_cert_ttl: default_cert_ttl(),
            encoded_slashes: EncodedSlashes::default(),
            ambiguous_paths: AmbiguousPaths::default(),
            tracing: Default::default(),
            service_cidrs: default_service_cidrs(),
        }
    }
}

/// The mesh's mTLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Inbound traffic must be mutual TLS from a mesh identity (the default).
    #[default]
    Strict,
    /// Plaintext is accepted too (migration); such callers are unauthenticated.
    Permissive,
}

/// What a policy does with the requests it matches (also the mesh's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// Let them through (the default).
    #[default]
    Allow,
    /// Refuse them.
    Deny,
    /// Let them through but report them as what a deny would have refused.
    Audit,
}

impl MeshSpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        p.dns_subdomain("spec.trustDomain", &self.trust_domain);
        p.duration(
            "spec.workloadCertTTL",
            self.workload_cert_ttl,
            MIN_CERT_TTL,
            MAX_CERT_TTL,
            "a duration from 5s to 2160h (90 days)",
        );
        self.tracing.validate("spec.tracing", p);
        self.validate_service_cidrs(p);
    }

    /// At least one network, at most one per family, each a usable range given by its
    /// network address.
    fn validate_service_cidrs(&self, p: &mut Problems) {
        if self.service_cidrs.is_empty() {
            p.add(
                "spec.serviceCIDRs",
                "[]",
                &format!("at least one network, e.g. [{DEFAULT_SERVICE_CIDR}]"),
            );
        }
        for (i, net) in self.service_cidrs.iter().enumerate() {
            let path = format!("spec.serviceCIDRs[{i}]");
            if !is_service_cidr(net) {
                p.add(path, net.to_string(), SERVICE_CIDR);
            } else if net.trunc() != *net {
                let expected = format!(
                    "the network's own address: {} (host bits zero)",
                    net.trunc()
                );
                p.add(path, net.to_string(), &expected);
            } else {
                let same_family = self.service_cidrs[..i]
                    .iter()
                    .any(|earlier| earlier.addr().is_ipv4() == net.addr().is_ipv4());
                p.check(
                    !same_family,
                    path,
                    net,
                    "at most one IPv4 and one IPv6 network (each Service gets one address of each)",
                );
            }
        }
    }
}

/// Whether `net` has a prefix length virtual IPs can be allocated in and lies outside every
/// refused range.
fn is_service_cidr(net: &IpNet) -> bool {
    let prefixes = match net {
        IpNet::V4(_) => 8..=30,
        IpNet::V6(_) => 64..=126,
    };
    let overlaps = |refused: &IpNet| refused.contains(&net.trunc()) || net.contains(refused);
    prefixes.contains(&net.prefix_len())
        && !REFUSED_RANGES
            .iter()
            .filter_map(|r| r.parse::<IpNet>().ok())
            .any(|r| overlaps(&r))
}

fn default_service_cidrs() -> Vec<IpNet> {
    DEFAULT_SERVICE_CIDR.parse().into_iter().collect()
}

/// `serviceCIDRs` as strings (`10.240.0.0/16`), each read with a message that shows the
/// form expected.
mod cidrs {
    use ipnet::IpNet;
    use serde::de::{Error, Unexpected, Visitor};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let nets = Vec::<Cidr>::deserialize(d)?;
        Ok(nets.into_iter().map(|c| c.0).collect())
    }

    /// One entry; a newtype so that errors carry the entry's index in their path.
    struct Cidr(IpNet);

    impl<'de> Deserialize<'de> for Cidr {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(CidrVisitor)
        }
    }

    struct CidrVisitor;

    impl Visitor<'_> for CidrVisitor {
        type Value = Cidr;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a network such as 10.240.0.0/16 or fd00:10:240::/112 (an address, '/' and a prefix length)")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Cidr, E> {
            text.trim()
                .parse()
                .map(Cidr)
                .map_err(|_| E::invalid_value(Unexpected::Str(text), &self))
        }
    }
}

fn default_trust_domain() -> String {
    "skein.local".into()
}

fn default_cert_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: MeshSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults() {
        let spec: MeshSpec = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(spec, MeshSpec::default());
        assert_eq!(spec.trust_domain, "skein.local");
        assert_eq!(spec.mtls, MtlsMode::Strict);
        assert_eq!(spec.default_policy, PolicyAction::Allow);
        assert_eq!(spec.workload_cert_ttl, Duration::from_secs(3600));
        assert_eq!(spec.ambiguous_paths, AmbiguousPaths::Reject);
        assert_eq!(
            spec.service_cidrs,
            ["10.240.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"trustDomain":"skein.local","mtls":"strict","defaultPolicy":"allow","workloadCertTTL":"1h","encodedSlashes":"reject","ambiguousPaths":"reject","tracing":{"enabled":true,"samplingPercent":1.0},"serviceCIDRs":["10.240.0.0/16"]}"#
        );
        assert!(problems("{}").is_empty(), "the defaults are valid");
    }

    #[test]
    fn service_cidrs_round_trip_and_default_for_an_older_mesh() {
        let spec: MeshSpec =
            serde_yaml_ng::from_str("{serviceCIDRs: [198.18.128.0/20, 'fd00:10:240::/112']}")
                .unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["serviceCIDRs"],
            serde_json::json!(["198.18.128.0/20", "fd00:10:240::/112"])
        );
        assert!(problems("{serviceCIDRs: [198.18.128.0/20, 'fd00:10:240::/112']}").is_empty());
        // A Mesh stored before the field existed gets the default range.
        let spec: MeshSpec = serde_json::from_str(r#"{"trustDomain":"skein.local"}"#).unwrap();
        assert_eq!(spec.service_cidrs, MeshSpec::default().service_cidrs);
    }

    #[test]
    fn a_service_cidr_that_is_no_network_is_refused_when_read() {
        for bad in ["10.240.0.0", "10.240.0.0/33", "ten/8"] {
            let err = serde_yaml_ng::from_str::<MeshSpec>(&format!("{{serviceCIDRs: ['{bad}']}}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("expected a network such as 10.240.0.0/16"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn service_cidrs_need_one_network() {
        assert_eq!(
            problems("{serviceCIDRs: []}"),
            ["spec.serviceCIDRs: \"[]\" is not accepted; expected at least one network, e.g. [10.240.0.0/16]"]
        );
    }

    #[test]
    fn service_cidrs_hold_one_network_per_family() {
        assert_eq!(
            problems("{serviceCIDRs: [10.240.0.0/16, 'fd00::/64', 10.241.0.0/16, 'fd01::/64']}"),
            [
                "spec.serviceCIDRs[2]: \"10.241.0.0/16\" is not accepted; expected at most one IPv4 and one IPv6 network (each Service gets one address of each)",
                "spec.serviceCIDRs[3]: \"fd01::/64\" is not accepted; expected at most one IPv4 and one IPv6 network (each Service gets one address of each)",
            ]
        );
    }

    #[test]
    fn a_service_cidr_is_given_by_its_network_address() {
        assert_eq!(
            problems("{serviceCIDRs: [10.240.3.7/16, 'fd00::1/64']}"),
            [
                "spec.serviceCIDRs[0]: \"10.240.3.7/16\" is not accepted; expected the network's own address: 10.240.0.0/16 (host bits zero)",
                "spec.serviceCIDRs[1]: \"fd00::1/64\" is not accepted; expected the network's own address: fd00::/64 (host bits zero)",
            ]
        );
    }

    #[test]
    fn service_cidr_sizes_and_special_ranges_are_refused() {
        assert!(
            problems("{serviceCIDRs: [10.0.0.0/8]}").is_empty(),
            "/8 is the widest"
        );
        assert!(
            problems("{serviceCIDRs: [10.0.0.0/30]}").is_empty(),
            "/30 the narrowest"
        );
        assert!(problems("{serviceCIDRs: ['fd00::/126']}").is_empty());
        for bad in [
            "10.0.0.0/7",
            "10.0.0.0/31",
            "10.0.0.1/32",
            "fd00::/63",
            "fd00::/127",
            "127.0.0.0/8",
            "127.1.0.0/16",
            "0.0.0.0/8",
            "169.254.0.0/16",
            "169.0.0.0/8",
            "224.0.0.0/8",
            "239.1.0.0/16",
            "240.0.0.0/8",
            "::/64",
            "::/120",
            "fe80::/64",
            "ff02::/64",
        ] {
            assert_eq!(
                problems(&format!("{{serviceCIDRs: ['{bad}']}}")),
                [format!(
                    "spec.serviceCIDRs[0]: \"{bad}\" is not accepted; expected {SERVICE_CIDR}"
                )],
                "{bad}"
            );
        }
    }

    #[test]
    fn ambiguous_paths_is_reject_or_forward() {
        let spec: MeshSpec = serde_yaml_ng::from_str("{ambiguousPaths: forward}").unwrap();
        assert_eq!(spec.ambiguous_paths, AmbiguousPaths::Forward);
        assert!(problems("{ambiguousPaths: forward}").is_empty());
        // A Mesh written before the field existed gets the safe default.
        let spec: MeshSpec =
            serde_json::from_str(r#"{"trustDomain":"skein.local","encodedSlashes":"keep"}"#)
                .unwrap();
        assert_eq!(spec.ambiguous_paths, AmbiguousPaths::Reject);
    }

    #[test]
    fn trust_domain_must_be_a_dns_name() {
        assert_eq!(
            problems("{trustDomain: Skein_Local}"),
            ["spec.trustDomain: \"Skein_Local\" is not accepted; expected a DNS-1123 subdomain: at most 253 characters of lowercase letters, digits, '-' or '.', each dot-separated part starting and ending with a letter or digit"]
        );
    }

    #[test]
    fn cert_ttl_bounds() {
        assert!(problems("{workloadCertTTL: 5s}").is_empty());
        assert!(problems("{workloadCertTTL: 2160h}").is_empty());
        for (ttl, shown) in [("4s", "4s"), ("2161h", "2161h"), ("0s", "0s")] {
            assert_eq!(
                problems(&format!("{{workloadCertTTL: {ttl}}}")),
                [format!("spec.workloadCertTTL: \"{shown}\" is not accepted; expected a duration from 5s to 2160h (90 days)")]
            );
        }
    }
}
