//! Read-only dashboard tokens: credentials for people who should see the mesh and
//! change nothing (`skein token create --dashboard --read-only`).
//!
//! A token reads `skein-dashboard.ID.SECRET`; the store keeps its id, the SHA-256 of its
//! secret and its lifetime under `secrets/dashboard-tokens/ID` (shared by every replica),
//! never the secret. It logs a browser in as a viewer ([`super::session::Role::Viewer`])
//! and may also be sent as `Authorization: Bearer` for reads. Every request of a viewer
//! session checks the token again, so revoking it (`skein token revoke ID`) ends its
//! sessions at once.

use crate::store::{Op, Store, StoreError};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "secrets/dashboard-tokens/";
/// What every dashboard token starts with.
pub const TOKEN_START: &str = "skein-dashboard.";
/// The longest lifetime accepted.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The lifetime when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A dashboard token as stored and listed (without its secret's hash when listed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DashboardToken {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub secret_sha256: String,
    /// What it grants: `viewer` (read only).
    pub role: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it stops being accepted (Unix seconds).
    pub expires_unix: u64,
    /// When it stops being accepted (RFC 3339).
    pub expires: String,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// Why a dashboard token is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a dashboard token, or not one this mesh issued, or its secret is wrong: the
    /// same answer for each, so that guessing learns nothing.
    #[error("the credential is neither the admin token nor a dashboard token of this mesh")]
    Unknown,
    /// Revoked.
    #[error("dashboard token {0} was revoked; ask for a new one (`skein token create --dashboard --read-only`)")]
    Revoked(String),
    /// Past its lifetime.
    #[error("dashboard token {0} expired; ask for a new one (`skein token create --dashboard --read-only`)")]
    Expired(String),
    /// A lifetime outside what is accepted.
    #[error(
        "a dashboard token's lifetime of {0:?} is not accepted; use a duration from 1s to 8760h"
    )]
    Lifetime(Duration),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The record could not be read or written.
    #[error("dashboard token {id}: {reason}")]
    Corrupt {
        /// Which.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The dashboard tokens in the store.
pub struct DashboardTokens {
    store: Arc<dyn Store>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(text: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source answers");
    hex(&bytes)
}

/// The id and secret of `presented`, if it has a dashboard token's form.
fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(TOKEN_START)?;
    let (id, secret) = rest.split_once('.')?;
    let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id, 16) && ok(secret, 64)).then_some((id, secret))
}

impl DashboardTokens {
    /// The tokens kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> DashboardTokens {
        DashboardTokens { store }
    }

    /// A new read-only token valid for `ttl` from `now_unix`: its text (shown once) and
    /// its record (without the hash).
    pub async fn create(
        &self,
        ttl: Duration,
        now_unix: u64,
    ) -> Result<(String, DashboardToken), TokenError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(TokenError::Lifetime(ttl));
        }
        let id = random_hex(8);
        let secret = random_hex(32);
        let expires = now_unix + ttl.as_secs();
        let record = DashboardToken {
            id: id.clone(),
            secret_sha256: sha256_hex(&secret),
            role: "viewer".into(),
            created: skein_model::time::UtcTime::from_unix(now_unix).rfc3339(),
            expires_unix: expires,
            expires: skein_model::time::UtcTime::from_unix(expires).rfc3339(),
            revoked: None,
        };
        self.put(&record, Some(0)).await?;
        tracing::info!(token = %id, "read-only dashboard token created");
        Ok((format!("{TOKEN_START}{id}.{secret}"), public(record)))
    }

    async fn put(&self, record: &DashboardToken, expect: Option<u64>) -> Result<(), TokenError> {
        let value = serde_json::to_vec(record).map_err(|e| TokenError::Corrupt {
            id: record.id.clone(),
            reason: e.to_string(),
        })?;
        self.store
            .commit(vec![Op::Put {
                key: format!("{PREFIX}{}", record.id),
                value,
                expect,
            }])
            .await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<(DashboardToken, u64)>, TokenError> {
        let key = format!("{PREFIX}{id}");
        crate::store::get_json(&*self.store, &key, |err| TokenError::Corrupt {
            id: id.to_string(),
            reason: err.to_string(),
        })
        .await
    }

    /// The token `presented` stands for, if it is one of these and valid at `now_unix`.
    pub async fn check(
        &self,
        presented: &str,
        now_unix: u64,
    ) -> Result<DashboardToken, TokenError> {
        let (id, secret) = parse(presented.trim()).ok_or(TokenError::Unknown)?;
        let (record, _) = self.get(id).await?.ok_or(TokenError::Unknown)?;
        if !crate::token::matches(&record.secret_sha256, &sha256_hex(secret)) {
            return Err(TokenError::Unknown);
        }
        valid(&record, now_unix)?;
        Ok(public(record))
    }

    /// Whether token `id` (a viewer session's) is still valid at `now_unix`.
    pub async fn still_valid(&self, id: &str, now_unix: u64) -> Result<(), TokenError> {
        let (record, _) = self.get(id).await?.ok_or(TokenError::Unknown)?;
        valid(&record, now_unix)
    }

    /// Every dashboard token (without hashes), oldest first.
    pub async fn list(&self) -> Result<Vec<DashboardToken>, TokenError> {
        let (found, _) = self.store.list(PREFIX).await?;
        let mut all: Vec<DashboardToken> = found
            .iter()
            .filter_map(|e| serde_json::from_slice::<DashboardToken>(&e.value).ok())
            .map(public)
            .collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Revokes token `id` (its sessions end at their next request); `None` when no
    /// dashboard token has that id.
    pub async fn revoke(
        &self,
        id: &str,
        now_unix: u64,
    ) -> Result<Option<DashboardToken>, TokenError> {
        for _ in 0..5 {
            let Some((mut record, revision)) = self.get(id).await? else {
                return Ok(None);
            };
            if record.revoked.is_some() {
                return Ok(Some(public(record)));
            }
            record.revoked = Some(skein_model::time::UtcTime::from_unix(now_unix).rfc3339());
            match self.put(&record, Some(revision)).await {
                Ok(()) => {
                    tracing::info!(token = %id, "dashboard token revoked");
                    return Ok(Some(public(record)));
                }
                Err(TokenError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(TokenError::Corrupt {
            id: id.to_string(),
            reason: "the record kept changing under this write; try again".into(),
        })
    }
}

fn public(record: DashboardToken) -> DashboardToken {
    DashboardToken {
        secret_sha256: String::new(),
        ..record
    }
}

fn valid(record: &DashboardToken, now_unix: u64) -> Result<(), TokenError> {
    if record.revoked.is_some() {
        return Err(TokenError::Revoked(record.id.clone()));
    }
    if now_unix >= record.expires_unix {
        return Err(TokenError::Expired(record.id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// Tokens in an embedded store of their own (removed with the returned guard).
    fn tokens(name: &str) -> (DashboardTokens, Dir) {
        let dir = std::env::temp_dir().join(format!("skein-dash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::store::embedded::EmbeddedStore::open(&dir).unwrap();
        (DashboardTokens::new(Arc::new(store)), Dir(dir))
    }

    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_token_is_checked_listed_and_revoked() {
        let (t, _dir) = tokens("lifecycle");
        let (text, record) = t.create(Duration::from_secs(3600), NOW).await.unwrap();
        assert!(text.starts_with(TOKEN_START), "{text}");
        assert!(
            record.secret_sha256.is_empty(),
            "the hash is not handed out"
        );
        assert_eq!(t.check(&text, NOW + 1).await.unwrap().id, record.id);
        let listed = t.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].secret_sha256.is_empty());
        let secret = text.rsplit('.').next().unwrap();
        assert!(!serde_json::to_string(&listed).unwrap().contains(secret));
        // Expired, then revoked.
        assert!(matches!(
            t.check(&text, NOW + 3600).await,
            Err(TokenError::Expired(_))
        ));
        t.revoke(&record.id, NOW + 2).await.unwrap().unwrap();
        assert!(matches!(
            t.check(&text, NOW + 3).await,
            Err(TokenError::Revoked(_))
        ));
        assert!(matches!(
            t.still_valid(&record.id, NOW + 3).await,
            Err(TokenError::Revoked(_))
        ));
        assert!(t.revoke("0000000000000000", NOW).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wrong_and_malformed_tokens_are_unknown_alike() {
        let (t, _dir) = tokens("wrong");
        let (text, _) = t.create(Duration::from_secs(3600), NOW).await.unwrap();
        let mut wrong = text.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        for bad in [
            wrong.as_str(),
            "",
            "admin",
            "skein-dashboard.",
            "skein-dashboard.zz.zz",
            &format!("{TOKEN_START}{}.{}", "0".repeat(16), "0".repeat(64)),
        ] {
            let e = t.check(bad, NOW).await.unwrap_err();
            assert!(matches!(e, TokenError::Unknown), "{bad:?}: {e}");
        }
        assert!(matches!(
            t.create(Duration::ZERO, NOW).await,
            Err(TokenError::Lifetime(_))
        ));
        assert!(matches!(
            t.create(MAX_TTL + Duration::from_secs(1), NOW).await,
            Err(TokenError::Lifetime(_))
        ));
    }
}
