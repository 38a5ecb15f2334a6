//! Sealing the records that must stay secret even from whoever can read the store: the
//! mesh CA (its private keys) and the admin token. With etcd the store is shared and often
//! backed up or readable by other teams, so these records are encrypted with AES-256-GCM
//! under a **secrets key** that lives outside etcd (a file or an environment variable given
//! to every replica). The key name is the associated data, so a sealed record cannot be
//! moved to another key.
//!
//! Sealed values start with [`MAGIC`]; a value without it is plaintext (an embedded store,
//! or a store from before sealing), which a control plane that has a key seals on its next
//! start.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Prefix of a sealed value: `MAGIC ‖ nonce (12 bytes) ‖ ciphertext ‖ tag`.
pub const MAGIC: &[u8] = b"skein-sealed-v1:";

/// What went wrong reading or sealing a secret; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key text is not 64 hex characters.
    #[error("the secrets key is not accepted: {0}; expected 64 hex characters (32 random bytes), e.g. from `od -An -vtx1 -N32 /dev/urandom | tr -d ' \\n'`")]
    BadKey(String),
    /// A sealed record but no key to open it.
    #[error("{0} in the store is encrypted; start the control plane with the secrets key every replica uses (--secrets-key-file FILE or SKEIN_SECRETS_KEY)")]
    NoKey(String),
    /// The key does not open the record (another key, or a damaged record).
    #[error("{0} in the store cannot be decrypted with this secrets key: it was sealed with another key (give every replica the same one) or the record is damaged")]
    WrongKey(String),
    /// The system random source failed.
    #[error("cannot draw a random nonce: {0}")]
    Random(String),
}

/// The secrets key: 32 bytes. Its `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey([u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl std::str::FromStr for SecretsKey {
    type Err = SecretsError;

    /// 64 hex characters; surrounding whitespace (a trailing newline in a file) is ignored.
    fn from_str(text: &str) -> Result<Self, SecretsError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(SecretsError::BadKey(format!(
                "it has {} characters",
                text.len()
            )));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| SecretsError::BadKey("it has a character that is not hex".into()))?;
        }
        Ok(SecretsKey(key))
    }
}

/// Seals and opens secret records with an optional key.
#[derive(Debug, Clone, Default)]
pub struct Sealer {
    key: Option<SecretsKey>,
}

impl Sealer {
    /// A sealer with `key` (none: records are stored as they are).
    pub fn new(key: Option<SecretsKey>) -> Self {
        Sealer { key }
    }

    /// Whether records are sealed.
    pub fn seals(&self) -> bool {
        self.key.is_some()
    }

    fn aead(&self) -> Option<LessSafeKey> {
        let key = self.key.as_ref()?;
        UnboundKey::new(&AES_256_GCM, &key.0)
            .ok()
            .map(LessSafeKey::new)
    }

    /// The value to store for record `name` holding `plain`: sealed when there is a key.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let Some(aead) = self.aead() else {
            return Ok(plain.to_vec());
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|e| SecretsError::Random(e.to_string()))?;
        let mut body = plain.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut body,
        )
        .map_err(|_| SecretsError::WrongKey(name.to_owned()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plaintext of record `name` as stored (`stored`), and whether it was sealed.
    pub fn open(&self, name: &str, stored: &[u8]) -> Result<(Vec<u8>, bool), SecretsError> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Ok((stored.to_vec(), false));
        };
        let aead = self
            .aead()
            .ok_or_else(|| SecretsError::NoKey(name.to_owned()))?;
        if rest.len() < NONCE_LEN {
            return Err(SecretsError::WrongKey(name.to_owned()));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SecretsError::WrongKey(name.to_owned()))?;
        let mut body = body.to_vec();
        let plain = aead
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| SecretsError::WrongKey(name.to_owned()))?;
        Ok((plain.to_vec(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: char) -> SecretsKey {
        byte.to_string().repeat(64).parse().unwrap()
    }

    #[test]
    fn sealed_records_open_only_with_their_key_and_name() {
        let sealer = Sealer::new(Some(key('a')));
        let sealed = sealer
            .seal("secrets/ca", b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert!(sealed.starts_with(MAGIC));
        assert!(!sealed.windows(7).any(|w| w == b"PRIVATE"), "no plaintext");
        assert_eq!(
            sealer.open("secrets/ca", &sealed).unwrap(),
            (b"-----BEGIN PRIVATE KEY-----".to_vec(), true)
        );
        assert_ne!(
            sealer.seal("secrets/ca", b"x").unwrap(),
            sealer.seal("secrets/ca", b"x").unwrap(),
            "fresh nonces"
        );
        let e = sealer.open("secrets/admin-token", &sealed).unwrap_err();
        assert!(
            matches!(e, SecretsError::WrongKey(_)),
            "bound to its name: {e}"
        );
        let e = Sealer::new(Some(key('b')))
            .open("secrets/ca", &sealed)
            .unwrap_err();
        assert!(e.to_string().contains("sealed with another key"), "{e}");
        let e = Sealer::default().open("secrets/ca", &sealed).unwrap_err();
        assert!(
            e.to_string()
                .contains("start the control plane with the secrets key"),
            "{e}"
        );
        // Plaintext passes through (and is reported as such, to be sealed).
        assert_eq!(
            sealer.open("secrets/ca", b"{}").unwrap(),
            (b"{}".to_vec(), false)
        );
        assert_eq!(Sealer::default().seal("k", b"v").unwrap(), b"v");
    }

    #[test]
    fn keys_are_64_hex_characters_and_never_printed() {
        assert!("ab".parse::<SecretsKey>().is_err());
        let e = "zz".repeat(32).parse::<SecretsKey>().unwrap_err();
        assert!(e.to_string().contains("not hex"), "{e}");
        let k: SecretsKey = format!("{}\n", "0f".repeat(32)).parse().unwrap();
        assert_eq!(format!("{k:?}"), "SecretsKey(..)");
    }
}
