//! Join lineage: which join token, and which redemption of it, a workload certificate
//! descends from. The control plane writes it into every certificate it issues (the
//! subject's `OU`, as `skein-lineage:<token id>.<n>`) and carries it over on renewal, so a
//! certificate says which join it comes from without any lookup.
//!
//! Revoking a token or a workload adds its lineage to a [`DenyList`] that the control
//! plane pushes to every proxy: peers refuse a certificate of a denied lineage at the next
//! handshake, and the control plane refuses to renew it. A token id denies every
//! redemption of the token (`<id>` denies `<id>.1`, `<id>.2`, …); a full lineage denies
//! one workload.

use crate::{IdentityError, Result};

/// Prefix of the subject `OU` value that carries the lineage.
pub const LINEAGE_PREFIX: &str = "skein-lineage:";

/// Checks a lineage (`<token id>.<n>`: lowercase hex, a dot, a positive number) or, with
/// `whole_token`, a bare token id as deny-list entries may hold.
pub fn validate_lineage(lineage: &str, whole_token: bool) -> Result<()> {
    let bad = || IdentityError::InvalidLineage(lineage.to_owned());
    let (id, n) = match lineage.split_once('.') {
        Some((id, n)) => (id, Some(n)),
        None if whole_token => (lineage, None),
        None => return Err(bad()),
    };
    let hex = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let number = |s: &str| {
        !s.is_empty()
            && s.len() <= 10
            && !s.starts_with('0')
            && s.bytes().all(|b| b.is_ascii_digit())
    };
    if hex(id) && n.is_none_or(number) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The lineage recorded in a certificate (DER), if any.
pub fn lineage_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let found = cert
        .subject()
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .find_map(|ou| ou.strip_prefix(LINEAGE_PREFIX))
        .map(str::to_owned);
    found.filter(|l| validate_lineage(l, false).is_ok())
}

/// When a certificate (DER) expires.
pub fn expiry_of(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Lineages whose certificates are no longer accepted: token ids (every redemption) and
/// whole lineages (one workload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    entries: Vec<String>,
}

impl DenyList {
    /// A list of `entries`; malformed ones are refused.
    pub fn new(entries: Vec<String>) -> Result<Self> {
        for e in &entries {
            validate_lineage(e, true)?;
        }
        Ok(DenyList { entries })
    }

    /// Whether nothing is denied (the common case: one comparison per handshake).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The entry that denies `lineage`, if one does.
    pub fn denies(&self, lineage: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| {
                lineage == e.as_str()
                    || lineage
                        .strip_prefix(e.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineages_are_token_ids_and_redemption_numbers() {
        assert!(validate_lineage("0a1b.1", false).is_ok());
        assert!(validate_lineage("0a1b.12", false).is_ok());
        assert!(validate_lineage("0a1b", true).is_ok(), "a whole token");
        for bad in [
            "0a1b", "0a1b.", "0a1b.0", "0a1b.01", "0A1B.1", "x.1", ".1", "0a1b.1.2", "",
        ] {
            assert!(validate_lineage(bad, false).is_err(), "{bad:?}");
        }
        assert!(DenyList::new(vec!["not hex".into()]).is_err());
    }

    #[test]
    fn a_token_denies_every_redemption_and_a_lineage_only_itself() {
        let list = DenyList::new(vec!["aa".into(), "bb.2".into()]).unwrap();
        assert_eq!(list.denies("aa.1"), Some("aa"));
        assert_eq!(list.denies("aa.7"), Some("aa"));
        assert_eq!(
            list.denies("aab.1"),
            None,
            "a longer token id is another token"
        );
        assert_eq!(list.denies("bb.2"), Some("bb.2"));
        assert_eq!(list.denies("bb.1"), None);
        assert_eq!(list.denies("bb.20"), None);
        assert!(DenyList::default().is_empty());
    }
}
