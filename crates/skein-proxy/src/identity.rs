//! The proxy's workload identity: its current certificate and trust bundle, the rustls
//! configurations built on them, and the connector that dials peer proxies with mutual TLS.
//!
//! A proxy run with a control plane gets its identity from it (see [`crate::control`]):
//! until it has one, it neither accepts peers nor dials them, and it never falls back to
//! plaintext. Certificates and roots are swapped in place ([`Identity::install_cert`],
//! [`Identity::install_bundle`]); connections already open keep their session, new ones use
//! the new material. A proxy run from a static file without a control plane has no
//! identity and speaks plaintext between proxies, which it logs at start.

use crate::connect::{Connect, TcpConnector, Upstream};
use crate::io::BoxedIo;
use futures_util::future::BoxFuture;
use serde::Serialize;
use skein_identity::tls::{self, CertResolver, TrustBundle};
use skein_identity::{CertificateDer, MeshClock, SpiffeId, WorkloadCert};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;
use tokio::sync::Notify;

/// What the proxy presents now, as `/config` shows it (never the key).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    /// The SPIFFE ID.
    pub identity: String,
    /// Serial number of the leaf.
    pub serial: String,
    /// Expiry (RFC 3339).
    pub expires: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// When renewal is due (RFC 3339).
    pub renew_at: String,
    /// The CA generation that signed it.
    pub ca_generation: u64,
    /// How many roots peers are verified against.
    pub trusted_roots: usize,
    /// `strict` or `permissive`.
    pub mtls: &'static str,
    /// The join lineage it records (`<token id>.<n>`), which revocation refers to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    /// How far this host's wall clock is ahead of the control plane's, in milliseconds
    /// (negative: behind). Certificates are checked, and renewal timed, by the control
    /// plane's clock; this says how wrong the host's is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_clock_offset_ms: Option<i64>,
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn rfc3339(t: SystemTime) -> String {
    skein_model::time::UtcTime::from_unix(unix(t).max(0) as u64).rfc3339()
}

/// A live identity.
pub struct Identity {
    resolver: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
    roots: Mutex<Vec<CertificateDer<'static>>>,
    server: Arc<rustls::ServerConfig>,
    clients: Mutex<HashMap<SpiffeId, Arc<rustls::ClientConfig>>>,
    status: RwLock<(CertStatus, SystemTime, SystemTime)>,
    permissive: AtomicBool,
    /// Wakes the renewal loop early (the control plane rolled to a new CA generation).
    pub renew_now: Notify,
    /// Counts certificate changes, so the control session can report each one.
    changes: tokio::sync::watch::Sender<u64>,
    /// Counts changes of the revoked lineages, so open connections can re-check theirs.
    denied_changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity presenting `cert`, trusting `roots`.
    pub fn new(
        cert: &WorkloadCert,
        roots: Vec<CertificateDer<'static>>,
        ca_generation: u64,
    ) -> Result<Arc<Identity>, skein_identity::IdentityError> {
        Self::with_clock(cert, roots, ca_generation, Arc::new(MeshClock::new()))
    }

    /// An identity presenting `cert`, trusting `roots`, checking certificates (peers' and
    /// its own) and timing renewal by `clock`, which keeps the control plane's time.
    pub fn with_clock(
        cert: &WorkloadCert,
        roots: Vec<CertificateDer<'static>>,
        ca_generation: u64,
        clock: Arc<MeshClock>,
    ) -> Result<Arc<Identity>, skein_identity::IdentityError> {
        let resolver = CertResolver::new(cert)?;
        let bundle = TrustBundle::with_clock(&roots, clock)?;
        let server = tls::server_config(resolver.clone(), bundle.clone())?;
        let renew_at = cert.renew_after(bundle.clock().now());
        let status = Self::describe(cert, renew_at, ca_generation, roots.len(), false);
        Ok(Arc::new(Identity {
            resolver,
            bundle,
            roots: Mutex::new(roots),
            server,
            clients: Mutex::new(HashMap::new()),
            status: RwLock::new((status, renew_at, cert.not_after())),
            permissive: AtomicBool::new(false),
            renew_now: Notify::new(),
            changes: tokio::sync::watch::Sender::new(0),
            denied_changes: tokio::sync::watch::Sender::new(0),
        }))
    }

    fn describe(
        cert: &WorkloadCert,
        renew_at: SystemTime,
        ca_generation: u64,
        roots: usize,
        permissive: bool,
    ) -> CertStatus {
        CertStatus {
            identity: cert.identity().to_string(),
            serial: cert.serial().to_owned(),
            expires: rfc3339(cert.not_after()),
            not_after_unix: unix(cert.not_after()),
            renew_at: rfc3339(renew_at),
            ca_generation,
            trusted_roots: roots,
            mtls: if permissive { "permissive" } else { "strict" },
            lineage: cert
                .chain()
                .first()
                .and_then(|leaf| skein_identity::lineage_of(leaf)),
            host_clock_offset_ms: None,
        }
    }

    /// Presents `cert` from the next handshake on.
    pub fn install_cert(
        &self,
        cert: &WorkloadCert,
        ca_generation: u64,
    ) -> Result<(), skein_identity::IdentityError> {
        self.resolver.store(cert)?;
        let roots = self.roots.lock().unwrap_or_else(|p| p.into_inner()).len();
        let renew_at = cert.renew_after(self.clock().now());
        let status = Self::describe(cert, renew_at, ca_generation, roots, self.is_permissive());
        *self.status.write().unwrap_or_else(|p| p.into_inner()) =
            (status, renew_at, cert.not_after());
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Notified after each [`Self::install_cert`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Verifies peers against `roots` from the next handshake on (no-op if unchanged).
    pub fn install_bundle(
        &self,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<bool, skein_identity::IdentityError> {
        let mut current = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        if *current == roots {
            return Ok(false);
        }
        self.bundle.store(&roots)?;
        self.status
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .trusted_roots = roots.len();
        *current = roots;
        Ok(true)
    }

    /// Refuses peers whose certificate descends from a lineage in `denied` from the next
    /// handshake on. Returns whether the list changed.
    pub fn install_denied(&self, denied: skein_identity::DenyList) -> bool {
        let changed = self.bundle.store_denied(denied);
        if changed {
            self.denied_changes.send_modify(|n| *n += 1);
        }
        changed
    }

    /// Resolves once `lineage` is revoked (never, while it is not).
    pub async fn revoked(&self, lineage: &str) {
        let mut changes = self.denied_changes.subscribe();
        loop {
            if self.is_revoked(lineage) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether a peer certificate of `lineage` is revoked (for connections that were
    /// verified before the revocation).
    pub fn is_revoked(&self, lineage: &str) -> bool {
        self.bundle.denies(lineage)
    }

    /// Sets the mesh's mTLS mode (`permissive`: inbound also accepts plaintext).
    pub fn set_permissive(&self, permissive: bool) {
        self.permissive.store(permissive, Ordering::SeqCst);
        self.status
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .mtls = if permissive { "permissive" } else { "strict" };
    }

    /// Whether inbound accepts plaintext too.
    pub fn is_permissive(&self) -> bool {
        self.permissive.load(Ordering::SeqCst)
    }

    /// The identity presented.
    pub fn id(&self) -> SpiffeId {
        self.resolver.identity()
    }

    /// What is presented now.
    pub fn status(&self) -> CertStatus {
        let mut status = self
            .status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        status.host_clock_offset_ms = self.clock().host_offset_ms();
        status
    }

    /// When the current certificate should be renewed.
    pub fn renew_at(&self) -> SystemTime {
        self.status.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.status.read().unwrap_or_else(|p| p.into_inner()).2
    }

    /// Whether the current certificate is still valid (by [`Self::clock`]).
    pub fn is_valid(&self) -> bool {
        self.clock().now() < self.not_after()
    }

    /// The clock certificates are checked against: the control plane's time, carried
    /// forward by the host's boot-time clock, so that a jump of the host's wall clock
    /// neither makes peers' certificates look expired nor stalls renewal.
    pub fn clock(&self) -> &Arc<MeshClock> {
        self.bundle.clock()
    }

    /// The CA generation of the current certificate.
    pub fn ca_generation(&self) -> u64 {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .ca_generation
    }

    /// The inbound TLS configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// A client configuration that accepts only `expected` as the server.
    pub fn client_config(
        &self,
        expected: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, skein_identity::IdentityError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(expected) {
            return Ok(c.clone());
        }
        let config =
            tls::client_config(self.resolver.clone(), self.bundle.clone(), expected.clone())?;
        clients.insert(expected.clone(), config.clone());
        Ok(config)
    }
}

/// The identity slot of one proxy: empty until the control plane issued a certificate.
#[derive(Debug, Default)]
pub struct IdentitySlot {
    /// Whether this proxy must use mutual TLS (it runs with a control plane).
    pub required: bool,
    cell: OnceLock<Arc<Identity>>,
}

impl IdentitySlot {
    /// A slot; `required` when the proxy runs with a control plane.
    pub fn new(required: bool) -> Self {
        IdentitySlot {
            required,
            cell: OnceLock::new(),
        }
    }

    /// The identity, once issued.
    pub fn get(&self) -> Option<&Arc<Identity>> {
        self.cell.get()
    }

    /// Installs the first identity; later ones are installed into it in place.
    pub fn set(&self, identity: Arc<Identity>) {
        let _ = self.cell.set(identity);
    }
}

/// Dials peer proxies: mutual TLS 1.3 verifying the identity the control plane announced
/// for the endpoint. Plaintext only when this proxy has no control plane and the endpoint
/// announces no identity (a static configuration).
pub struct PeerConnector {
    tcp: TcpConnector,
    slot: Arc<IdentitySlot>,
}

impl PeerConnector {
    /// A connector using `slot`'s identity.
    pub fn new(slot: Arc<IdentitySlot>) -> Self {
        PeerConnector {
            tcp: TcpConnector::default(),
            slot,
        }
    }
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

impl Connect for PeerConnector {
    fn connect(&self, to: &Upstream) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let (tcp, to) = (self.tcp, to.clone());
        let identity = self.slot.get().cloned();
        let required = self.slot.required;
        Box::pin(async move {
            let (identity, expected) = match (identity, to.identity.clone()) {
                (Some(identity), Some(expected)) => (identity, expected),
                (None, None) if !required => {
                    return Ok(Box::new(tcp.tcp(to.addr).await?) as BoxedIo)
                }
                (None, _) => {
                    return Err(refused(
                        "this proxy has no workload certificate yet (it gets one from the control plane with its join token); refusing to send plaintext to a peer".into(),
                    ))
                }
                (Some(_), None) => {
                    return Err(refused(format!(
                        "no identity is known for peer {}; refusing to send plaintext to it",
                        to.addr
                    )))
                }
            };
            if !identity.is_valid() {
                return Err(refused(format!(
                    "this proxy's workload certificate expired at {} and could not be renewed (is the control plane reachable?); refusing to connect without valid mTLS",
                    identity.status().expires
                )));
            }
            let config = identity
                .client_config(&expected)
                .map_err(|e| refused(e.to_string()))?;
            let name = tls::server_name(&expected).map_err(|e| refused(e.to_string()))?;
            let stream = tcp.tcp(to.addr).await?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("mutual TLS with {expected} at {} failed: {e}", to.addr),
                    )
                })?;
            Ok(Box::new(tls) as BoxedIo)
        })
    }
}
