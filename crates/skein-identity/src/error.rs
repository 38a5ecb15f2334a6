//! The crate's one error type. Every message names what was wrong and, where there is one,
//! what to do about it; none ever contains key material.

use std::path::PathBuf;

use crate::SpiffeId;

/// Shorthand for results in this crate.
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// What can go wrong with identities, certificates and TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A string is not a Skein SPIFFE ID.
    #[error(
        "invalid SPIFFE ID {input:?}: {reason}; expected spiffe://<trust-domain>/ns/<namespace>/sa/<account>"
    )]
    InvalidSpiffeId { input: String, reason: String },

    /// A trust domain, namespace or account name breaks the naming rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// A certificate carries no SPIFFE ID, or more than one URI SAN.
    #[error("certificate identity unusable: {0}; Skein certificates carry exactly one spiffe:// URI SAN, issue one with the mesh CA")]
    CertificateIdentity(String),

    /// Bytes that should be a certificate, key or CSR could not be parsed.
    #[error("could not parse {what}: {reason}")]
    Parse { what: String, reason: String },

    /// The CSR's self-signature does not verify: it was altered or not signed by its key.
    #[error("the CSR's signature does not verify ({0}); it was altered in transit or not signed with the key it carries: regenerate it with WorkloadKey::csr")]
    CsrSignature(String),

    /// The CSR asks for an identity other than the one the caller is authorised for.
    #[error("CSR asks for {requested} but the token is for {token}; a workload can only obtain a certificate for its own token's identity")]
    CsrIdentityMismatch {
        requested: String,
        token: Box<SpiffeId>,
    },

    /// The identity to issue for belongs to another trust domain than the CA's.
    #[error("cannot issue for {identity}: this CA signs only for trust domain {ca_trust_domain:?}; create the token in that trust domain")]
    ForeignTrustDomain {
        identity: Box<SpiffeId>,
        ca_trust_domain: String,
    },

    /// A requested lifetime is unusable.
    #[error("invalid certificate lifetime: {0}")]
    InvalidTtl(String),

    /// An imported CA does not hang together.
    #[error("CA material is inconsistent: {0}")]
    InconsistentCa(String),

    /// A certificate's public key does not match the private key offered with it.
    #[error("{0}: the private key does not match the certificate's public key; pair the certificate with the key its CSR was made from")]
    KeyMismatch(String),

    /// A join token's text is malformed.
    #[error("invalid join token: {0}; expected the skein1:<trust-domain>:<id>.<secret>:<ca-pin> text `skein token create` printed")]
    InvalidToken(String),

    /// A workload certificate chain is unusable.
    #[error("invalid certificate chain: {0}")]
    InvalidChain(String),

    /// The TLS peer is a valid mesh member but not the one we meant to reach.
    #[error("peer presented {presented}, expected {expected}: the endpoint does not run the identity the control plane announced for it (refusing to send traffic there)")]
    UnexpectedPeer {
        presented: Box<SpiffeId>,
        expected: Box<SpiffeId>,
    },

    /// The peer's certificate belongs to a revoked join lineage (a revoked token or
    /// workload).
    #[error("the certificate of {identity} (join lineage {lineage}) was revoked; that workload is out of the mesh until it joins again with a new token")]
    Revoked {
        /// The peer's SPIFFE ID.
        identity: Box<SpiffeId>,
        /// The revoked lineage.
        lineage: String,
    },

    /// A lineage to record in a certificate is malformed.
    #[error("invalid join lineage {0:?}: expected <token id>.<n>, lowercase hex and a number")]
    InvalidLineage(String),

    /// Certificate or key generation / signing failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),

    /// rustls refused a configuration (for example an unusable key or an empty trust bundle).
    #[error("TLS configuration failed: {0}")]
    Tls(String),

    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}; check the path exists and this process may use it")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IdentityError {
    pub(crate) fn parse(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Parse {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn tls(reason: impl std::fmt::Display) -> Self {
        Self::Tls(reason.to_string())
    }
}
