//! SPIFFE IDs as Skein uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
//!
//! Parsing is strict (lowercase, DNS-style names, exactly that path shape) because an ID is
//! compared byte for byte during authorization: two spellings of one identity must not exist.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

use crate::{IdentityError, Result};

const SCHEME: &str = "spiffe://";
/// Longest trust domain accepted (a DNS name's limit).
const MAX_TRUST_DOMAIN: usize = 253;
/// Longest namespace or account accepted (a DNS label's limit, as in Kubernetes).
const MAX_LABEL: usize = 63;

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<account>`.
///
/// Construct with [`SpiffeId::new`] or by parsing (`"spiffe://…".parse()`); both validate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    account: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, validating each: the trust domain is a lowercase DNS-style
    /// name (`skein.local`), namespace and account are DNS labels (`default`, `restaurant`).
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        account: impl Into<String>,
    ) -> Result<Self> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            account: account.into(),
        };
        validate_trust_domain(&id.trust_domain)?;
        validate_label("namespace", &id.namespace)?;
        validate_label("account", &id.account)?;
        Ok(id)
    }

    /// The trust domain, e.g. `skein.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace, e.g. `default`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account, e.g. `restaurant` (defaults to the service name upstream).
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Reads the SPIFFE ID from a DER certificate: it must carry exactly one URI SAN, and that
    /// URI must be a valid Skein SPIFFE ID.
    pub fn from_cert(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::parse("X.509 certificate", e))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::parse("subjectAltName extension", e))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [uri] => uri.parse(),
            [] => Err(IdentityError::CertificateIdentity(
                "it has no URI SAN".into(),
            )),
            many => Err(IdentityError::CertificateIdentity(format!(
                "it has {} URI SANs ({})",
                many.len(),
                many.join(", ")
            ))),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self> {
        let invalid = |reason: &str| IdentityError::InvalidSpiffeId {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("it must start with spiffe:// (lowercase)"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("it has no path after the trust domain"))?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, account] = parts.as_slice() else {
            return Err(invalid(
                "the path must be exactly /ns/<namespace>/sa/<account>",
            ));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(invalid(
                "the path must be exactly /ns/<namespace>/sa/<account>",
            ));
        }
        Self::new(trust_domain, *namespace, *account).map_err(|e| match e {
            IdentityError::InvalidName {
                what,
                value,
                reason,
            } => invalid(&format!("{what} {value:?}: {reason}")),
            other => other,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.account
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

/// Trust domain: lowercase DNS-style name of dot-separated labels.
pub(crate) fn validate_trust_domain(value: &str) -> Result<()> {
    let err = |reason: String| IdentityError::InvalidName {
        what: "trust domain",
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() || value.len() > MAX_TRUST_DOMAIN {
        return Err(err(format!("must be 1 to {MAX_TRUST_DOMAIN} characters")));
    }
    for label in value.split('.') {
        check_label(label).map_err(|reason| {
            err(format!(
                "{reason} (in label {label:?}); use a lowercase DNS-style name such as skein.local"
            ))
        })?;
    }
    Ok(())
}

/// Namespace and account: DNS labels, as Kubernetes names them.
fn validate_label(what: &'static str, value: &str) -> Result<()> {
    check_label(value).map_err(|reason| IdentityError::InvalidName {
        what,
        value: value.to_owned(),
        reason: format!("{reason}; use a DNS label such as default or my-service"),
    })
}

fn check_label(label: &str) -> std::result::Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL {
        return Err(format!("must be 1 to {MAX_LABEL} characters"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "character {c:?} is not allowed (only a-z, 0-9 and '-')"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("must not start or end with '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://skein.local/ns/default/sa/restaurant"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "skein.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.account(), "restaurant");
        assert_eq!(
            id.to_string(),
            "spiffe://skein.local/ns/default/sa/restaurant"
        );
        assert_eq!(
            id,
            SpiffeId::new("skein.local", "default", "restaurant").unwrap()
        );
    }

    #[test]
    fn rejects_bad_ids_with_reasons() {
        let cases = [
            ("http://skein.local/ns/a/sa/b", "must start with spiffe://"),
            (
                "SPIFFE://skein.local/ns/a/sa/b",
                "must start with spiffe://",
            ),
            ("spiffe://skein.local", "no path"),
            (
                "spiffe://skein.local/ns/a",
                "exactly /ns/<namespace>/sa/<account>",
            ),
            ("spiffe://skein.local/ns/a/sa/b/c", "exactly"),
            ("spiffe://skein.local/sa/a/ns/b", "exactly"),
            ("spiffe://Skein.local/ns/a/sa/b", "character 'S'"),
            ("spiffe://skein..local/ns/a/sa/b", "1 to 63"),
            ("spiffe://skein.local:8080/ns/a/sa/b", "character ':'"),
            ("spiffe://user@skein.local/ns/a/sa/b", "character '@'"),
            (
                "spiffe://skein.local/ns/Default/sa/b",
                "namespace \"Default\"",
            ),
            ("spiffe://skein.local/ns/a/sa/-b", "account \"-b\""),
            ("spiffe://skein.local/ns/a/sa/b?x=1", "character '?'"),
            ("spiffe://skein.local/ns//sa/b", "namespace \"\""),
        ];
        for (input, want) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
            assert!(
                err.contains("expected spiffe://<trust-domain>"),
                "{input}: {err}"
            );
        }
        let long = "a".repeat(64);
        assert!(SpiffeId::new("skein.local", "default", long).is_err());
    }

    #[test]
    fn from_cert_needs_exactly_one_uri_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let none = params.self_signed(&key).unwrap();
        let err = SpiffeId::from_cert(none.der()).unwrap_err().to_string();
        assert!(err.contains("no URI SAN"), "{err}");

        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
        params.subject_alt_names = vec![uri("spiffe://skein.local/ns/default/sa/a")];
        let one = params.self_signed(&key).unwrap();
        assert_eq!(
            SpiffeId::from_cert(one.der()).unwrap().to_string(),
            "spiffe://skein.local/ns/default/sa/a"
        );

        params
            .subject_alt_names
            .push(uri("spiffe://skein.local/ns/default/sa/b"));
        let two = params.self_signed(&key).unwrap();
        let err = SpiffeId::from_cert(two.der()).unwrap_err().to_string();
        assert!(err.contains("2 URI SANs"), "{err}");

        assert!(SpiffeId::from_cert(b"not a cert").is_err());
    }
}
