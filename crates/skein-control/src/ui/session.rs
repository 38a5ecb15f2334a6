//! Dashboard sessions: what a browser holds after logging in, instead of the credential
//! it logged in with.
//!
//! A session is a cookie value the control plane signed: the role it grants (`admin`,
//! from the admin token; `viewer`, from a read-only dashboard token, whose id it names so
//! that revoking the token ends its sessions), when it expires, and a random nonce,
//! followed by an HMAC-SHA256 over all of that. The key is derived from the admin token,
//! which every replica shares, so any replica accepts a session another issued, and a new
//! admin token ends every session. Nothing is kept per session on the server: logging out
//! clears the cookie, and a stolen cookie is good until it expires (at most
//! [`MAX_LIFETIME`]) or the token behind it is revoked.

use ring::hmac;
use std::fmt;

/// How long a session lasts at most.
pub const MAX_LIFETIME_SECS: u64 = 8 * 3600;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything the admin token may: buttons that change state included.
    Admin,
    /// Read only: every page, no change.
    Viewer,
}

impl Role {
    fn letter(self) -> char {
        match self {
            Role::Admin => 'a',
            Role::Viewer => 'v',
        }
    }

    /// `admin` or `viewer`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A session the control plane issued and its signature checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// When it ends (Unix seconds).
    pub expires_unix: u64,
    /// The dashboard token it was opened with (viewers), to check it is still valid.
    pub token_id: Option<String>,
}

/// Why a cookie is not a session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// Not in the form this control plane writes.
    #[error("the session cookie is not one this control plane wrote; log in again")]
    Malformed,
    /// Signed with another key (another mesh, or before the admin token changed) or
    /// altered.
    #[error("the session is not valid here (the admin token changed, or the cookie was altered); log in again")]
    BadSignature,
    /// Past its end.
    #[error("the session expired; log in again")]
    Expired,
}

/// Issues and checks sessions with the key derived from the admin token.
pub struct Sessions {
    key: hmac::Key,
}

impl Sessions {
    /// Sessions signed with a key derived from `admin_token`.
    pub fn new(admin_token: &str) -> Sessions {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, admin_token.as_bytes());
        let tag = hmac::sign(&derive, b"skein dashboard sessions v1");
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref()),
        }
    }

    /// A cookie value for a new session of `role`, ending `lifetime_secs` from `now_unix`
    /// (at most [`MAX_LIFETIME_SECS`]); `nonce` is random bytes from the caller.
    pub fn issue(
        &self,
        role: Role,
        token_id: Option<&str>,
        now_unix: u64,
        lifetime_secs: u64,
        nonce: [u8; 16],
    ) -> String {
        let expires = now_unix + lifetime_secs.min(MAX_LIFETIME_SECS);
        let body = format!(
            "v1.{}.{expires}.{}.{}",
            role.letter(),
            token_id.unwrap_or("-"),
            hex(&nonce)
        );
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex(tag.as_ref()))
    }

    /// The session `value` stands for, if this control plane signed it and it has not
    /// ended at `now_unix`.
    pub fn verify(&self, value: &str, now_unix: u64) -> Result<Session, SessionError> {
        let (body, tag) = value.rsplit_once('.').ok_or(SessionError::Malformed)?;
        let tag = unhex(tag).ok_or(SessionError::Malformed)?;
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| SessionError::BadSignature)?;
        let parts: Vec<&str> = body.split('.').collect();
        let [version, role, expires, token, _nonce] = parts[..] else {
            return Err(SessionError::Malformed);
        };
        if version != "v1" {
            return Err(SessionError::Malformed);
        }
        let role = match role {
            "a" => Role::Admin,
            "v" => Role::Viewer,
            _ => return Err(SessionError::Malformed),
        };
        let expires_unix: u64 = expires.parse().map_err(|_| SessionError::Malformed)?;
        if now_unix >= expires_unix {
            return Err(SessionError::Expired);
        }
        Ok(Session {
            role,
            expires_unix,
            token_id: (token != "-").then(|| token.to_string()),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    // Hex digits only: `from_str_radix` would also take a sign.
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_session_reads_back_as_issued() {
        let s = Sessions::new("admin-secret");
        let admin = s.issue(Role::Admin, None, NOW, 3600, [1; 16]);
        assert_eq!(
            s.verify(&admin, NOW + 10),
            Ok(Session {
                role: Role::Admin,
                expires_unix: NOW + 3600,
                token_id: None
            })
        );
        let viewer = s.issue(Role::Viewer, Some("d41f"), NOW, 3600, [2; 16]);
        let read = s.verify(&viewer, NOW).unwrap();
        assert_eq!(read.role, Role::Viewer);
        assert_eq!(read.token_id.as_deref(), Some("d41f"));
        assert!(
            !admin.contains("admin-secret"),
            "the token is not in the cookie"
        );
    }

    #[test]
    fn lifetimes_are_capped_and_ends_are_kept() {
        let s = Sessions::new("k");
        let long = s.issue(Role::Admin, None, NOW, 30 * 24 * 3600, [0; 16]);
        assert_eq!(
            s.verify(&long, NOW).unwrap().expires_unix,
            NOW + MAX_LIFETIME_SECS
        );
        let short = s.issue(Role::Admin, None, NOW, 60, [0; 16]);
        assert_eq!(s.verify(&short, NOW + 60), Err(SessionError::Expired));
    }

    #[test]
    fn altered_foreign_and_malformed_cookies_are_refused() {
        let s = Sessions::new("k");
        let viewer = s.issue(Role::Viewer, Some("d41f"), NOW, 3600, [3; 16]);
        // A viewer making itself admin, or living longer.
        let promoted = viewer.replacen("v1.v.", "v1.a.", 1);
        assert_eq!(s.verify(&promoted, NOW), Err(SessionError::BadSignature));
        let longer = viewer.replacen(
            &format!(".{}.", NOW + 3600),
            &format!(".{}.", NOW + 9_999_999),
            1,
        );
        assert_eq!(s.verify(&longer, NOW), Err(SessionError::BadSignature));
        // Another mesh's (another admin token's) session.
        // A tag in anything but hex digits is not one this control plane wrote.
        assert_eq!(
            s.verify("v1.a.1.-.00.+a", NOW),
            Err(SessionError::Malformed)
        );
        let other = Sessions::new("another").issue(Role::Admin, None, NOW, 3600, [3; 16]);
        assert_eq!(s.verify(&other, NOW), Err(SessionError::BadSignature));
        for junk in [
            "",
            "x",
            "v1.a.1.-.00",
            "v1.a.1.-.00.zz",
            "....",
            "v1.a.1.-.00.abc",
        ] {
            assert!(
                matches!(
                    s.verify(junk, NOW),
                    Err(SessionError::Malformed | SessionError::BadSignature)
                ),
                "{junk:?}"
            );
        }
    }
}
