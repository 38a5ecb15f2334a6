//! Skein workload identity: SPIFFE IDs, the mesh certificate authority, workload keys and
//! CSRs, and the rustls configurations that make proxy-to-proxy traffic mutual TLS 1.3 with
//! both peers' SPIFFE IDs verified.
//!
//! The pieces fit together in the order a proxy meets them:
//!
//! 1. [`WorkloadKey::generate`] makes the proxy's private key, which never leaves it, and
//!    [`WorkloadKey::csr`] a certificate signing request for its identity;
//! 2. the control plane's [`CertificateAuthority::issue`] signs the CSR for the identity the
//!    caller's join token names (never the one the CSR asks for);
//! 3. [`WorkloadCert`] joins key and chain and says when to renew;
//! 4. [`tls::CertResolver`] and [`tls::TrustBundle`] hold the current certificate and roots,
//!    swappable without dropping connections, and [`tls::server_config`] /
//!    [`tls::client_config`] build the rustls configurations from them.
//!
//! Everything is pure library code: no sockets, no background tasks. All cryptography uses
//! the `ring` provider, so nothing needs cmake or nasm to build.

mod ca;
pub mod clock;
mod error;
mod fsutil;
mod lineage;
mod spiffe;
pub mod tls;
mod token;
mod workload;

pub use ca::{CaPem, CertificateAuthority, IssuedCert, DEFAULT_WORKLOAD_TTL};
pub use clock::MeshClock;
pub use error::{IdentityError, Result};
pub use lineage::{expiry_of, lineage_of, validate_lineage, DenyList, LINEAGE_PREFIX};
pub use spiffe::SpiffeId;
pub use token::{ca_pin, constant_time_eq, sha256_hex, JoinToken};
pub use workload::{WorkloadCert, WorkloadKey, RENEW_AT_FRACTION};

/// Re-exported so callers name the same certificate type as this crate's API.
pub use rustls_pki_types::CertificateDer;
