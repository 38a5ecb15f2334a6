//! Join tokens: how a new proxy proves which workload identity it may claim, and how it
//! recognises the right control plane before trusting it.
//!
//! A token reads `skein1:<trust-domain>:<id>.<secret>:<ca-pin>`:
//!
//! - the trust domain it was made in (checked by both sides, so a token from another mesh
//!   fails with a message saying so);
//! - a public `id` (how the control plane finds the token, and what `skein token revoke`
//!   names) and a `secret` the control plane keeps only as a SHA-256 hash;
//! - the SHA-256 of the mesh root certificate, like kubeadm's CA hash: the proxy refuses a
//!   control plane whose chain does not end in that root, so a token cannot be phished by a
//!   look-alike server.
//!
//! The identity a token grants is not in the token: it lives with the control plane's record
//! of the token, so changing the token text cannot change the identity.

use std::fmt;
use std::str::FromStr;

use crate::ca::{hex, random_bytes};
use crate::spiffe::validate_trust_domain;
use crate::{IdentityError, Result};

const PREFIX: &str = "skein1";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A parsed join token. `Debug` and `Display` never show the secret; use [`Self::reveal`]
/// to print the whole token once, at creation.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    trust_domain: String,
    id: String,
    secret: String,
    ca_pin: String,
}

impl JoinToken {
    /// A fresh random token for `trust_domain`, pinned to the root whose DER is `root`.
    pub fn generate(trust_domain: &str, root: &[u8]) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            id: hex(&random_bytes::<ID_BYTES>()?),
            secret: hex(&random_bytes::<SECRET_BYTES>()?),
            ca_pin: ca_pin(root),
        })
    }

    /// The trust domain the token was made in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The public token id (safe to log and to show in listings).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// SHA-256 of the secret, hex: what the control plane stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    /// The pinned root's SHA-256, hex.
    pub fn ca_pin(&self) -> &str {
        &self.ca_pin
    }

    /// The full token text, secret included: print it once, to the person who asked for it.
    pub fn reveal(&self) -> String {
        format!(
            "{PREFIX}:{}:{}.{}:{}",
            self.trust_domain, self.id, self.secret, self.ca_pin
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("trust_domain", &self.trust_domain)
            .field("id", &self.id)
            .field("ca_pin", &self.ca_pin)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {} (trust domain {})", self.id, self.trust_domain)
    }
}

impl FromStr for JoinToken {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| IdentityError::InvalidToken(reason.to_owned());
        let mut parts = s.trim().split(':');
        let (Some(prefix), Some(td), Some(id_secret), Some(pin), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("it does not have the four ':'-separated parts"));
        };
        if prefix != PREFIX {
            // Not repeated: a mangled token may have its secret in the first part.
            return Err(bad(&format!("it does not start with \"{PREFIX}:\"")));
        }
        // Not repeated either: a token missing its trust domain has its id and secret
        // in this place.
        validate_trust_domain(td).map_err(|_| {
            bad("the trust domain (the second part) is not a lowercase DNS-style name such as skein.local")
        })?;
        let (id, secret) = id_secret
            .split_once('.')
            .ok_or_else(|| bad("the third part is not <id>.<secret>"))?;
        let is_hex = |v: &str, len: usize| {
            v.len() == len
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !is_hex(id, ID_BYTES * 2) {
            return Err(bad("the id is not 16 lowercase hex digits"));
        }
        if !is_hex(secret, SECRET_BYTES * 2) {
            return Err(bad("the secret is not 64 lowercase hex digits"));
        }
        if !is_hex(pin, 64) {
            return Err(bad("the CA pin is not a 64-digit SHA-256 in hex"));
        }
        Ok(Self {
            trust_domain: td.to_owned(),
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_pin: pin.to_owned(),
        })
    }
}

/// The pin of a root certificate: SHA-256 of its DER, lowercase hex.
pub fn ca_pin(root_der: &[u8]) -> String {
    sha256_hex(root_der)
}

/// SHA-256, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Compares two strings in constant time (for secret hashes).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_the_secret() {
        let t = JoinToken::generate("skein.local", b"root der").unwrap();
        let text = t.reveal();
        assert!(text.starts_with("skein1:skein.local:"), "{text}");
        let back: JoinToken = text.parse().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ca_pin(), ca_pin(b"root der"));
        let secret = text.split(':').nth(2).unwrap().split_once('.').unwrap().1;
        assert!(!format!("{t:?}").contains(secret));
        assert!(!t.to_string().contains(secret));
        assert_ne!(t.secret_hash(), secret);
        assert!(constant_time_eq(&t.secret_hash(), &back.secret_hash()));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let t = JoinToken::generate("skein.local", b"r").unwrap().reveal();
        for (input, expected) in [
            ("nonsense", "four ':'-separated parts"),
            (
                &t.replacen("skein1", "skein2", 1),
                "does not start with \"skein1:\"",
            ),
            (&t.replacen("skein.local", "Bad_Domain", 1), "trust domain"),
            (
                &t.replacen('.', "-", 2)
                    .replacen("skein-local", "skein.local", 1),
                "<id>.<secret>",
            ),
            (&format!("{}0", t), "CA pin"),
        ] {
            let e = input.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains(expected), "{input}: {e}");
        }
        // A token mangled so that its secret lands in the first part: not repeated (found
        // by the `join_token` fuzz target).
        let secret = t.split(':').nth(2).unwrap().split_once('.').unwrap().1;
        let mangled = t.replacen(':', ".", 2);
        let e = format!("{mangled}:x:y:z").parse::<JoinToken>().unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        // Nor one whose trust domain is missing, so that the id and secret come second.
        let without_domain = t.replacen(":skein.local", "", 1) + ":x";
        let e = without_domain.parse::<JoinToken>().unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(e.to_string().contains("trust domain"), "{e}");
    }
}
