//! `Mesh`: the mesh-wide settings (trust domain, mTLS mode, the policy for traffic no
//! `AuthorizationPolicy` covers, certificate lifetime, how proxies treat request paths
//! before authorizing them). Cluster-scoped; one per mesh.

use super::validate::Problems;
pub use crate::authz::path::{AmbiguousPaths, EncodedSlashes};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shortest workload certificate lifetime accepted: 5 seconds. Lifetimes under a few
/// minutes are for exercising rotation (tests, drills); each renewal is one request to the
/// control plane per proxy.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(5);
/// Longest workload certificate lifetime accepted: 90 days (2160h).
pub const MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

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
            serde_json::to_string(&spec).unwrap(),
            r#"{"trustDomain":"skein.local","mtls":"strict","defaultPolicy":"allow","workloadCertTTL":"1h","encodedSlashes":"reject","ambiguousPaths":"reject","tracing":{"enabled":true,"samplingPercent":1.0}}"#
        );
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
