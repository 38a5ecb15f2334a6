//! rustls configurations for proxy-to-proxy mutual TLS: TLS 1.3 only, ALPN `h2`, both peers
//! verified against the mesh trust bundle and identified by their SPIFFE IDs.
//!
//! The server side requires a client certificate (so the inbound proxy learns who calls, see
//! [`peer_identity`]); the client side verifies the chain and that the server's SPIFFE ID is
//! the one the control plane announced for the endpoint. DNS names are never checked: in the
//! mesh, the SPIFFE ID is the name.
//!
//! Certificates and roots live in swappable holders, [`CertResolver`] and [`TrustBundle`].
//! Configs read them at every handshake, so `store()` takes effect for new connections while
//! established ones carry on untouched. The bundle also holds the [`DenyList`] of revoked
//! join lineages: a peer whose certificate descends from one is refused at the handshake,
//! and the [`MeshClock`] certificates are checked against. Session resumption is off on both sides: a resumed
//! session would skip verification against the current bundle and identity.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};

use rustls::time_provider::{DefaultTimeProvider, TimeProvider};

use crate::clock::MeshClock;
use crate::{DenyList, IdentityError, Result, SpiffeId, WorkloadCert};

/// The one application protocol spoken between proxies.
pub const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a lock even if a writer panicked: the value is always a complete `Arc`.
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(PoisonError::into_inner) = value;
}

/// The workload's current certificate, presented by both server and client configs.
pub struct CertResolver {
    current: RwLock<Arc<Current>>,
}

struct Current {
    key: Arc<CertifiedKey>,
    identity: SpiffeId,
    serial: String,
}

impl CertResolver {
    /// A resolver presenting `cert`.
    pub fn new(cert: &WorkloadCert) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(Current::new(cert)?)),
        }))
    }

    /// Presents `cert` from the next handshake on; established connections are unaffected.
    pub fn store(&self, cert: &WorkloadCert) -> Result<()> {
        write(&self.current, Arc::new(Current::new(cert)?));
        Ok(())
    }

    /// The identity currently presented.
    pub fn identity(&self) -> SpiffeId {
        read(&self.current).identity.clone()
    }

    fn key(&self) -> Arc<CertifiedKey> {
        read(&self.current).key.clone()
    }
}

impl Current {
    fn new(cert: &WorkloadCert) -> Result<Self> {
        let key = CertifiedKey::from_der(
            cert.chain().to_vec(),
            cert.key().private_key_der(),
            &provider(),
        )
        .map_err(IdentityError::tls)?;
        Ok(Self {
            key: Arc::new(key),
            identity: cert.identity().clone(),
            serial: cert.serial().to_owned(),
        })
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = read(&self.current);
        f.debug_struct("CertResolver")
            .field("identity", &current.identity)
            .field("serial", &current.serial)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The roots peers are verified against (during a root rotation, old and new) and the
/// revoked lineages whose certificates are refused although they chain to a root.
pub struct TrustBundle {
    current: RwLock<Arc<Roots>>,
    denied: RwLock<Arc<DenyList>>,
    /// The time certificates are checked against (see [`crate::clock`]).
    clock: Arc<MeshClock>,
}

struct Roots {
    store: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustBundle {
    /// A bundle of `roots` (DER). Refuses an empty bundle or a certificate that is no anchor.
    /// Certificates are checked against the host's wall clock.
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<Arc<Self>> {
        Self::with_clock(roots, Arc::new(MeshClock::new()))
    }

    /// A bundle of `roots` whose certificates are checked against `clock` (a proxy's,
    /// which keeps the control plane's time).
    pub fn with_clock(
        roots: &[CertificateDer<'static>],
        clock: Arc<MeshClock>,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(Roots::new(roots)?)),
            denied: RwLock::new(Arc::new(DenyList::default())),
            clock,
        }))
    }

    /// The clock certificates are checked against.
    pub fn clock(&self) -> &Arc<MeshClock> {
        &self.clock
    }

    /// Refuses certificates of the lineages in `denied` from the next handshake on.
    /// Returns whether the list changed.
    pub fn store_denied(&self, denied: DenyList) -> bool {
        if *read(&self.denied) == denied {
            return false;
        }
        write(&self.denied, Arc::new(denied));
        true
    }

    /// The revoked lineages in force.
    pub fn denied(&self) -> Arc<DenyList> {
        read(&self.denied)
    }

    /// Whether a certificate of `lineage` is revoked (no copy of the list is made).
    pub fn denies(&self, lineage: &str) -> bool {
        let denied = self.denied.read().unwrap_or_else(PoisonError::into_inner);
        !denied.is_empty() && denied.denies(lineage).is_some()
    }

    /// Refuses `leaf` (DER, its chain already verified) if it descends from a revoked
    /// lineage.
    fn check_denied(&self, leaf: &[u8], id: &SpiffeId) -> std::result::Result<(), rustls::Error> {
        let denied = self.denied();
        if denied.is_empty() {
            return Ok(());
        }
        match crate::lineage_of(leaf) {
            Some(lineage) if denied.denies(&lineage).is_some() => {
                Err(identity_error(IdentityError::Revoked {
                    identity: Box::new(id.clone()),
                    lineage,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Verifies against `roots` from the next handshake on.
    pub fn store(&self, roots: &[CertificateDer<'static>]) -> Result<()> {
        write(&self.current, Arc::new(Roots::new(roots)?));
        Ok(())
    }

    /// How many roots are trusted.
    pub fn len(&self) -> usize {
        read(&self.current).store.len()
    }

    /// Whether no roots are trusted (never true: empty bundles are refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn roots(&self) -> Arc<Roots> {
        read(&self.current)
    }
}

impl Roots {
    fn new(roots: &[CertificateDer<'static>]) -> Result<Self> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root.clone())
                .map_err(|e| IdentityError::tls(format!("a trust bundle root is unusable: {e}")))?;
        }
        if store.is_empty() {
            return Err(IdentityError::tls(
                "the trust bundle is empty; pass the mesh CA's roots",
            ));
        }
        let store = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
                .build()
                .map_err(IdentityError::tls)?;
        Ok(Self {
            store,
            client_verifier,
        })
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.len())
            .finish()
    }
}

/// Config for the inbound side: TLS 1.3, ALPN `h2`, client certificates required and
/// verified against `bundle`, and the client's SPIFFE ID required to be in our trust domain.
pub fn server_config(
    resolver: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
) -> Result<Arc<ServerConfig>> {
    build_server_config(resolver, bundle, true)
}

/// Config for the control plane's proxy API: like [`server_config`], but a client without a
/// certificate may connect (a new proxy has only its join token), and an expired mesh
/// certificate is accepted (a proxy whose certificate ran out while the control plane was
/// unreachable renews with it; the control plane decides how long after expiry, and
/// refuses everything else to it). A certificate that is presented is verified all the
/// same, and [`peer_identity`] tells the cases apart.
pub fn control_server_config(
    resolver: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
) -> Result<Arc<ServerConfig>> {
    build_server_config(resolver, bundle, false)
}

fn build_server_config(
    resolver: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
    mandatory: bool,
) -> Result<Arc<ServerConfig>> {
    let clock = bundle.clock.clone();
    let verifier = Arc::new(MeshClientVerifier {
        trust_domain: resolver.identity().trust_domain().to_owned(),
        bundle,
        algs: provider().signature_verification_algorithms,
        mandatory,
        accept_expired: !mandatory,
    });
    let mut config = ServerConfig::builder_with_details(provider(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::tls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Config for the outbound side towards a peer that must be `expected`: TLS 1.3, ALPN `h2`,
/// our certificate from `resolver`, the server's chain verified against `bundle` and its
/// SPIFFE ID compared with `expected`. Connect with any server name, e.g. [`server_name`];
/// it is neither checked nor sent.
pub fn client_config(
    resolver: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>> {
    let clock: Arc<dyn TimeProvider> = bundle.clock.clone();
    let verifier = Arc::new(MeshServerVerifier {
        anchors: Anchors::Bundle(bundle),
        expected,
        algs: provider().signature_verification_algorithms,
    });
    build_client_config(verifier, Some(resolver), clock)
}

/// Config for a proxy's first contact with the control plane, before it has a certificate:
/// no client certificate; the server's chain must end in the root whose SHA-256 is `pin`
/// (the join token's CA pin; the control plane sends its root with its chain) and the
/// server's SPIFFE ID must be `expected`.
pub fn bootstrap_client_config(pin: &str, expected: SpiffeId) -> Result<Arc<ClientConfig>> {
    let verifier = Arc::new(MeshServerVerifier {
        anchors: Anchors::Pinned(pin.to_owned()),
        expected,
        algs: provider().signature_verification_algorithms,
    });
    // No mesh time yet: a proxy's first contact is checked by the host's clock.
    build_client_config(verifier, None, Arc::new(DefaultTimeProvider))
}

fn build_client_config(
    verifier: Arc<MeshServerVerifier>,
    resolver: Option<Arc<CertResolver>>,
    clock: Arc<dyn TimeProvider>,
) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_details(provider(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(IdentityError::tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// A syntactically valid server name for `id` (`<account>.<namespace>.<trust-domain>`), for
/// APIs that need one; mesh verification ignores it.
pub fn server_name(id: &SpiffeId) -> Result<ServerName<'static>> {
    let name = format!("{}.{}.{}", id.account(), id.namespace(), id.trust_domain());
    ServerName::try_from(name).map_err(IdentityError::tls)
}

/// The last second `leaf` (DER) is valid.
fn expiry(leaf: &[u8]) -> Result<UnixTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| IdentityError::parse("X.509 certificate", e))?;
    let not_after = cert.validity().not_after.timestamp().max(1) as u64;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        not_after - 1,
    )))
}

/// The SPIFFE ID of the peer's verified leaf certificate, once the handshake is done. Pass a
/// `ServerConnection` or `ClientConnection` (they deref to `CommonState`).
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    SpiffeId::from_cert(leaf).ok()
}

/// The handshake-signature methods both verifiers share: checked with the provider's
/// algorithms in the verifier's `algs` field.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Wraps an identity failure as a rustls error whose message is ours.
fn identity_error(err: IdentityError) -> rustls::Error {
    rustls::Error::Other(OtherError(Arc::new(err)))
}

/// Server side: verifies client chains with the bundle's current `WebPkiClientVerifier`,
/// then requires a SPIFFE ID in our trust domain.
#[derive(Debug)]
struct MeshClientVerifier {
    trust_domain: String,
    bundle: Arc<TrustBundle>,
    algs: WebPkiSupportedAlgorithms,
    /// False only for the control plane, where a new proxy has no certificate yet.
    mandatory: bool,
    /// True only for the control plane: an expired certificate that was valid (chain,
    /// signatures, trust domain) when it expired is accepted, for renewal.
    accept_expired: bool,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us, and our clients hold exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let roots = self.bundle.roots();
        match roots
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(_) => {}
            Err(
                e @ rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. },
                ),
            ) if self.accept_expired => {
                // Verified as of its last valid second: everything but the time must hold.
                let at = expiry(end_entity).map_err(identity_error)?;
                if roots
                    .client_verifier
                    .verify_client_cert(end_entity, intermediates, at)
                    .is_err()
                {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        let id = SpiffeId::from_cert(end_entity).map_err(identity_error)?;
        if id.trust_domain() != self.trust_domain {
            return Err(identity_error(IdentityError::CertificateIdentity(format!(
                "client {id} is not in trust domain {:?}",
                self.trust_domain
            ))));
        }
        self.bundle.check_denied(end_entity, &id)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// What a server chain must lead to.
#[derive(Debug)]
enum Anchors {
    /// Any root of the mesh trust bundle.
    Bundle(Arc<TrustBundle>),
    /// The root (sent by the server with its chain) whose SHA-256 is this hex pin.
    Pinned(String),
}

/// Client side: verifies the server chain against its anchors (webpki, serverAuth usage, no
/// DNS names) and that the leaf's SPIFFE ID is `expected`.
#[derive(Debug)]
struct MeshServerVerifier {
    anchors: Anchors,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let pinned;
        let store: &RootCertStore = match &self.anchors {
            Anchors::Bundle(bundle) => {
                pinned = bundle.roots().store.clone();
                &pinned
            }
            Anchors::Pinned(pin) => {
                let root = intermediates
                    .iter()
                    .find(|c| crate::ca_pin(c) == *pin)
                    .ok_or_else(|| {
                        identity_error(IdentityError::CertificateIdentity(format!(
                            "the control plane's chain does not end in the root the join token pins (sha256 {pin}); \
                             the token was made by another control plane, or the mesh CA was rotated since: create a new token"
                        )))
                    })?;
                let mut store = RootCertStore::empty();
                store.add(root.clone().into_owned()).map_err(|e| {
                    identity_error(IdentityError::tls(format!(
                        "the pinned root is unusable: {e}"
                    )))
                })?;
                pinned = Arc::new(store);
                &pinned
            }
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            store,
            intermediates,
            now,
            self.algs.all,
        )?;
        let presented = SpiffeId::from_cert(end_entity).map_err(identity_error)?;
        if presented != self.expected {
            return Err(identity_error(IdentityError::UnexpectedPeer {
                presented: Box::new(presented),
                expected: Box::new(self.expected.clone()),
            }));
        }
        if let Anchors::Bundle(bundle) = &self.anchors {
            bundle.check_denied(end_entity, &presented)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests;
