//! The mesh CA as the control plane runs it: where its keys live, join tokens, certificate
//! issuance for proxies, the control plane's own certificate, and root rotation.
//!
//! The CA (keys included) is one record in the store (`secrets/ca`), so with etcd every
//! replica signs with the same intermediate; with the embedded store it sits in the data
//! directory's store file (directory 0700, file 0600). Replicas watch the record and pick
//! up a rotation another replica made.
//!
//! Join tokens are records under `secrets/tokens/<id>` holding the identity they grant, the
//! SHA-256 of their secret (never the secret itself), and how many of their uses are left:
//! single-use by default, each use counted by an atomic compare-and-set on the record, so
//! two proxies (on two replicas) racing with one token cannot both join on its last use.
//!
//! Every certificate records its **lineage**, `<token id>.<n>` for the n-th join with the
//! token, and keeps it across renewals (also across a root rotation). Revoking a token or
//! a workload adds its lineage to the deny list (`secrets/denylist`): renewals and `Sync`
//! of that lineage are refused, and every proxy receives the list and refuses its
//! certificates at the next handshake. An entry lives as long as the longest certificate
//! it could still cover.
//!
//! Root rotation runs in three phases, each published to every proxy before the next:
//! **prepare** (a new root joins the trust bundle; the old one still signs) → **switch** (the
//! new CA signs and the generation rises, so proxies renew at once; the old root is still
//! trusted for certificates not yet renewed) → **finish** (the old root leaves the bundle).
//! [`rotate`] drives the phases, waiting for proxies between them.

use crate::state::Connections;
use crate::store::{Op, Store, StoreError};
use serde::{Deserialize, Serialize};
use skein_api::v1::{CertifyRequest, CertifyResponse};
use skein_identity::tls::{control_server_config, CertResolver, TrustBundle};
use skein_identity::{
    CaPem, CertificateAuthority, CertificateDer, JoinToken, SpiffeId, WorkloadCert, WorkloadKey,
};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Namespace of the control plane's own identity.
pub const CONTROL_NAMESPACE: &str = "skein-system";
/// Account of the control plane's own identity.
pub const CONTROL_ACCOUNT: &str = "skein-control";
/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long after its certificate expired a proxy may still renew with it (it was cut off
/// from the control plane meanwhile); after that it needs a new join token.
pub const EXPIRED_RENEWAL_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Added to a deny entry's lifetime for clock skew between issuers and verifiers.
const BACKDATE_SLACK: Duration = Duration::from_secs(3600);
/// Lifetime of the control plane's own serving certificate.
const CONTROL_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

const CA_KEY: &str = "secrets/ca";
const TOKEN_PREFIX: &str = "secrets/tokens/";
const DENY_KEY: &str = "secrets/denylist";
/// Tries of a compare-and-set on a record other replicas may write at the same time.
const CAS_TRIES: usize = 16;

/// The control plane's SPIFFE ID in `trust_domain`; proxies expect exactly this server.
pub fn control_identity(trust_domain: &str) -> Result<SpiffeId, PkiError> {
    Ok(SpiffeId::new(
        trust_domain,
        CONTROL_NAMESPACE,
        CONTROL_ACCOUNT,
    )?)
}

/// What can go wrong managing identities; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate work failed.
    #[error(transparent)]
    Identity(#[from] skein_identity::IdentityError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record is unreadable.
    #[error("the stored {what} is unreadable ({reason}); restore it from a backup of the store")]
    Corrupt {
        /// Which record.
        what: String,
        /// The parse error.
        reason: String,
    },
    /// The operator asked for something that conflicts with the mesh's state.
    #[error("{0}")]
    Refused(String),
    /// No token has this id.
    #[error("no join token has id {0}; `skein token list` shows the tokens")]
    UnknownToken(String),
    /// A sealed record could not be opened (or sealed).
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
}

/// The CA record in the store.
#[derive(Serialize, Deserialize)]
struct CaRecord {
    /// Rises at each switch to a new root.
    generation: u64,
    active: PemRecord,
    /// The next CA during a rotation's first phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<PemRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PemRecord {
    trust_domain: String,
    root_cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root_key: Option<String>,
    intermediate_cert: String,
    intermediate_key: String,
    bundle: String,
}

impl From<CaPem> for PemRecord {
    fn from(p: CaPem) -> Self {
        PemRecord {
            trust_domain: p.trust_domain,
            root_cert: p.root_cert,
            root_key: p.root_key,
            intermediate_cert: p.intermediate_cert,
            intermediate_key: p.intermediate_key,
            bundle: p.bundle,
        }
    }
}

impl PemRecord {
    fn load(&self) -> Result<CertificateAuthority, PkiError> {
        Ok(CertificateAuthority::from_pem_set(&CaPem {
            trust_domain: self.trust_domain.clone(),
            root_cert: self.root_cert.clone(),
            root_key: self.root_key.clone(),
            intermediate_cert: self.intermediate_cert.clone(),
            intermediate_key: self.intermediate_key.clone(),
            bundle: self.bundle.clone(),
        })?)
    }
}

/// Where a root rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// One root, no rotation under way.
    Idle,
    /// The next root is in the bundle; the old one still signs.
    Prepared,
    /// The new root signs; old roots are still trusted.
    Switched,
}

/// The CA loaded from the store at one revision.
struct Authority {
    ca: CertificateAuthority,
    next: Option<CertificateAuthority>,
    generation: u64,
    /// Store revision of the record (0 before it was first written).
    revision: u64,
    /// Whether the record is stored encrypted.
    sealed: bool,
}

impl Authority {
    fn from_record(record: &CaRecord, revision: u64) -> Result<Self, PkiError> {
        Ok(Authority {
            ca: record.active.load()?,
            next: record.next.as_ref().map(PemRecord::load).transpose()?,
            generation: record.generation,
            revision,
            sealed: false,
        })
    }

    fn record(&self) -> CaRecord {
        CaRecord {
            generation: self.generation,
            active: self.ca.to_pem_set().into(),
            next: self.next.as_ref().map(|n| n.to_pem_set().into()),
        }
    }

    fn phase(&self) -> Phase {
        if self.next.is_some() {
            Phase::Prepared
        } else if self.ca.trust_bundle().len() > 1 {
            Phase::Switched
        } else {
            Phase::Idle
        }
    }
}

/// What proxy sessions see of `authority` and the deny list `(record, revision)`.
fn view(authority: &Authority, denied: &(DenyRecord, u64)) -> PkiView {
    PkiView {
        revision: authority.revision,
        generation: authority.generation,
        trust_domain: authority.ca.trust_domain().to_owned(),
        bundle: authority
            .ca
            .trust_bundle()
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
        phase: authority.phase(),
        // Entries were validated when they were written; a damaged one denies nothing.
        denied: skein_identity::DenyList::new(denied.0.in_force(unix(SystemTime::now())))
            .unwrap_or_default(),
        denied_revision: denied.1,
    }
}

/// What proxy sessions need to know about the CA; published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiView {
    /// Store revision of the CA record (part of the snapshot version).
    pub revision: u64,
    /// CA generation: proxies holding an older certificate renew at once.
    pub generation: u64,
    /// The trust domain the CA signs for.
    pub trust_domain: String,
    /// Trusted roots, DER.
    pub bundle: Vec<Vec<u8>>,
    /// Rotation phase.
    pub phase: Phase,
    /// Revoked lineages (token ids and whole lineages) still covering a live certificate.
    pub denied: skein_identity::DenyList,
    /// Store revision of the deny list (part of the snapshot version).
    pub denied_revision: u64,
}

/// One revoked lineage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DenyEntry {
    /// A token id (every workload that joined with it) or a whole lineage (one workload).
    pub lineage: String,
    /// What was revoked, for listings: `token <id> (<identity>)` or `workload <ns>/<name>`.
    pub what: String,
    /// When (RFC 3339).
    pub revoked: String,
    /// Until when it must be kept (Unix seconds): no certificate it covers lives longer.
    pub until_unix: u64,
}

/// The deny list as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DenyRecord {
    entries: Vec<DenyEntry>,
}

impl DenyRecord {
    /// The entries still in force at `now`.
    fn in_force(&self, now: u64) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.until_unix > now)
            .map(|e| e.lineage.clone())
            .collect()
    }
}

/// When the active CA's certificates are valid.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaValidity {
    /// The root (the trust anchor proxies pin).
    pub root: Validity,
    /// The intermediate that signs workload certificates.
    pub intermediate: Validity,
}

/// One certificate's validity window, in Unix seconds and RFC 3339.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Validity {
    /// Start, Unix seconds.
    pub not_before_unix: i64,
    /// End, Unix seconds.
    pub not_after_unix: i64,
    /// Start, RFC 3339.
    pub not_before: String,
    /// End, RFC 3339.
    pub not_after: String,
}

impl Validity {
    fn of_pem(pem: &str, what: &str) -> Result<Validity, PkiError> {
        let corrupt = |reason: String| PkiError::Corrupt {
            what: format!("CA {what}"),
            reason,
        };
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        let cert = pem.parse_x509().map_err(|e| corrupt(e.to_string()))?;
        let (start, end) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        let text = |t: i64| skein_model::time::UtcTime::from_unix(t.max(0) as u64).rfc3339();
        Ok(Validity {
            not_before_unix: start,
            not_after_unix: end,
            not_before: text(start),
            not_after: text(end),
        })
    }
}

/// What the TLS layer proved about a certificate a caller presented.
#[derive(Debug, Clone)]
pub struct Presented {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// The join lineage it records (none: issued before lineages were recorded).
    pub lineage: Option<String>,
    /// When it expires (it may have already: the proxy API accepts expired certificates
    /// for renewal only).
    pub expires: SystemTime,
}

impl Presented {
    /// Whether it has expired.
    pub fn expired(&self) -> bool {
        SystemTime::now() >= self.expires
    }
}

/// A join token as stored (and listed): the identity it grants, never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub secret_sha256: String,
    /// The identity it grants.
    pub identity: String,
    /// Namespace of that identity.
    pub namespace: String,
    /// Service (and account) of that identity.
    pub service: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it stops being accepted (Unix seconds).
    pub expires_unix: u64,
    /// When it stops being accepted (RFC 3339).
    pub expires: String,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
    /// How many proxies may join with it. Default 1.
    #[serde(default = "one")]
    pub uses: u32,
    /// How many have.
    #[serde(default)]
    pub used: u32,
}

fn one() -> u32 {
    1
}

impl TokenRecord {
    /// The record without its secret hash, for listings.
    pub fn public(&self) -> TokenRecord {
        TokenRecord {
            secret_sha256: String::new(),
            ..self.clone()
        }
    }
}

/// The control plane's identity machinery.
pub struct Pki {
    store: Arc<dyn Store>,
    current: RwLock<Arc<Authority>>,
    published: watch::Sender<PkiView>,
    /// The control plane's own certificate, served on the proxy gRPC port.
    resolver: Arc<CertResolver>,
    /// Roots client certificates are verified against.
    bundle: Arc<TrustBundle>,
    own_renew_at: RwLock<SystemTime>,
    /// The deny list and its store revision.
    denied: RwLock<(Arc<DenyRecord>, u64)>,
    /// Encrypts the CA record when the control plane has a secrets key.
    sealer: crate::secrets::Sealer,
    /// Held while a join token's use is counted (see `take_use`).
    redeeming: tokio::sync::Mutex<()>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    skein_model::time::UtcTime::from_unix(unix(t)).rfc3339()
}

impl Pki {
    /// Loads the CA from the store, creating it at first start: generated for
    /// `trust_domain`, or `import`ed (a team's own root and intermediate). An import that
    /// differs from the CA already in the store is refused.
    /// With a key in `sealer`, the CA record is encrypted in the store (and a plaintext
    /// one is sealed now).
    pub async fn open(
        store: Arc<dyn Store>,
        trust_domain: &str,
        import: Option<CaPem>,
        sealer: crate::secrets::Sealer,
    ) -> Result<Arc<Pki>, PkiError> {
        let authority = match Self::read(&*store, &sealer).await? {
            Some(mut existing) => {
                if sealer.seals() && !existing.sealed {
                    existing.revision =
                        Self::write(&*store, &sealer, &existing, Some(existing.revision)).await?;
                    tracing::info!("sealed the mesh CA record with the secrets key");
                }
                if let Some(import) = &import {
                    if existing.ca.root_cert_pem().trim() != import.root_cert.trim() {
                        return Err(PkiError::Refused(
                            "the store already holds a mesh CA with another root; an imported CA is used only at first start (use `skein ca rotate` to change roots)".into(),
                        ));
                    }
                }
                existing
            }
            None => {
                let ca = match import {
                    Some(pem) => {
                        let ca = CertificateAuthority::from_pem_set(&pem)?;
                        tracing::info!(trust_domain = %ca.trust_domain(), "imported the mesh CA");
                        ca
                    }
                    None => {
                        let ca = CertificateAuthority::generate(trust_domain)?;
                        tracing::info!(%trust_domain, "created the mesh CA (root and intermediate)");
                        ca
                    }
                };
                let fresh = Authority {
                    ca,
                    next: None,
                    generation: 1,
                    revision: 0,
                    sealed: sealer.seals(),
                };
                match Self::write(&*store, &sealer, &fresh, Some(0)).await {
                    Ok(revision) => Authority { revision, ..fresh },
                    // Another replica created it first: use theirs.
                    Err(PkiError::Store(StoreError::Conflict { .. })) => {
                        Self::read(&*store, &sealer)
                            .await?
                            .ok_or_else(|| PkiError::Refused("the CA record vanished".into()))?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let td = authority.ca.trust_domain().to_owned();
        let (own, bundle) = Self::own_cert(&authority)?;
        let resolver = CertResolver::new(&own)?;
        let bundle = TrustBundle::new(&bundle)?;
        let denied = Self::read_denied(&*store).await?;
        let (published, _) = watch::channel(view(&authority, &denied));
        tracing::info!(identity = %control_identity(&td)?, "control plane certificate issued");
        Ok(Arc::new(Pki {
            store,
            own_renew_at: RwLock::new(own.renew_at()),
            current: RwLock::new(Arc::new(authority)),
            published,
            resolver,
            bundle,
            denied: RwLock::new((Arc::new(denied.0), denied.1)),
            sealer,
            redeeming: Default::default(),
        }))
    }

    async fn read_denied(store: &dyn Store) -> Result<(DenyRecord, u64), PkiError> {
        let (found, _) = store.list(DENY_KEY).await?;
        match found.into_iter().find(|e| e.key == DENY_KEY) {
            None => Ok((DenyRecord::default(), 0)),
            Some(e) => serde_json::from_slice(&e.value)
                .map(|r| (r, e.revision))
                .map_err(|err| PkiError::Corrupt {
                    what: "deny list".into(),
                    reason: err.to_string(),
                }),
        }
    }

    fn denied(&self) -> (Arc<DenyRecord>, u64) {
        self.denied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes the CA and deny list in force to proxy sessions.
    fn publish(&self) {
        let (record, revision) = self.denied();
        self.published.send_replace(view(
            &self.authority(),
            &(DenyRecord::clone(&record), revision),
        ));
    }

    async fn read(
        store: &dyn Store,
        sealer: &crate::secrets::Sealer,
    ) -> Result<Option<Authority>, PkiError> {
        let (found, _) = store.list(CA_KEY).await?;
        let Some(entry) = found.into_iter().find(|e| e.key == CA_KEY) else {
            return Ok(None);
        };
        let (plain, sealed) = sealer.open(CA_KEY, &entry.value)?;
        let record: CaRecord = serde_json::from_slice(&plain).map_err(|e| PkiError::Corrupt {
            what: "mesh CA".into(),
            reason: e.to_string(),
        })?;
        let mut authority = Authority::from_record(&record, entry.revision)?;
        authority.sealed = sealed;
        Ok(Some(authority))
    }

    async fn write(
        store: &dyn Store,
        sealer: &crate::secrets::Sealer,
        authority: &Authority,
        expect: Option<u64>,
    ) -> Result<u64, PkiError> {
        let plain = serde_json::to_vec(&authority.record()).map_err(|e| PkiError::Corrupt {
            what: "mesh CA".into(),
            reason: e.to_string(),
        })?;
        let value = sealer.seal(CA_KEY, &plain)?;
        Ok(store
            .commit(vec![Op::Put {
                key: CA_KEY.into(),
                value,
                expect,
            }])
            .await?)
    }

    /// A certificate for the control plane itself, its chain ending in the active root
    /// (proxies bootstrapping with a token check that root against the token's pin).
    fn own_cert(
        authority: &Authority,
    ) -> Result<(WorkloadCert, Vec<CertificateDer<'static>>), PkiError> {
        let ca = &authority.ca;
        let id = control_identity(ca.trust_domain())?;
        let key = WorkloadKey::generate()?;
        let issued = ca.issue(key.csr(&id)?, &id, CONTROL_CERT_TTL)?;
        let chain = format!("{}{}", issued.chain_pem, ca.root_cert_pem());
        let mut bundle = ca.trust_bundle();
        if let Some(next) = &authority.next {
            bundle.push(next.root_cert().clone());
        }
        Ok((WorkloadCert::new(key, &chain)?, bundle))
    }

    fn authority(&self) -> Arc<Authority> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in `next` and publishes it to proxy sessions, re-issuing our own certificate.
    fn install(&self, next: Authority) -> Result<(), PkiError> {
        self.refresh_own(&next)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.publish();
        Ok(())
    }

    /// Issues the control plane a fresh certificate from `authority` and trusts its bundle.
    fn refresh_own(&self, authority: &Authority) -> Result<(), PkiError> {
        let (own, bundle) = Self::own_cert(authority)?;
        self.bundle.store(&bundle)?;
        self.resolver.store(&own)?;
        *self.own_renew_at.write().unwrap_or_else(|p| p.into_inner()) = own.renew_at();
        Ok(())
    }

    /// Follows the CA record in the store (another replica's rotation) and renews the
    /// control plane's own certificate at 70 % of its life, until `shutdown`.
    pub fn spawn_maintenance(self: &Arc<Self>, shutdown: CancellationToken) {
        let pki = self.clone();
        tokio::spawn(async move {
            let mut changes = pki.store.watch(CA_KEY);
            let mut deny_changes = pki.store.watch(DENY_KEY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = changes.recv() => {
                        if event.is_none() {
                            // The watch lapsed: watch again, then re-read.
                            changes = pki.store.watch(CA_KEY);
                        }
                        pki.reload().await;
                    }
                    event = deny_changes.recv() => {
                        if event.is_none() {
                            deny_changes = pki.store.watch(DENY_KEY);
                        }
                        pki.reload_denied().await;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {
                        let renew_at = *pki.own_renew_at.read().unwrap_or_else(|p| p.into_inner());
                        if SystemTime::now() >= renew_at {
                            if let Err(e) = pki.refresh_own(&pki.authority()) {
                                tracing::error!(error = %e, "could not renew the control plane's certificate");
                            }
                        }
                    }
                }
            }
        });
    }

    async fn reload(&self) {
        match Self::read(&*self.store, &self.sealer).await {
            // Every replica with the key writes sealed records; a plaintext one appearing
            // now was written by someone without it.
            Ok(Some(a)) if self.sealer.seals() && !a.sealed => {
                tracing::error!("the mesh CA record in the store is no longer sealed; ignoring it (someone without the secrets key wrote it)");
            }
            Ok(Some(a)) if a.revision != self.authority().revision => {
                let generation = a.generation;
                if let Err(e) = self.install(a) {
                    tracing::error!(error = %e, "could not load the rotated mesh CA");
                } else {
                    tracing::info!(generation, "loaded a new mesh CA record");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not re-read the mesh CA"),
        }
    }

    async fn reload_denied(&self) {
        match Self::read_denied(&*self.store).await {
            Ok((record, revision)) if revision != self.denied().1 => {
                *self.denied.write().unwrap_or_else(|p| p.into_inner()) =
                    (Arc::new(record), revision);
                self.publish();
                tracing::info!(revision, "loaded a new deny list");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not re-read the deny list"),
        }
    }

    /// Adds `entry` to the deny list (compare-and-set against other replicas) and
    /// publishes it at once.
    async fn deny(&self, entry: DenyEntry) -> Result<(), PkiError> {
        for _ in 0..CAS_TRIES {
            let (mut record, revision) = Self::read_denied(&*self.store).await?;
            let now = unix(SystemTime::now());
            record.entries.retain(|e| e.until_unix > now);
            if record.entries.iter().any(|e| e.lineage == entry.lineage) {
                return Ok(());
            }
            record.entries.push(entry.clone());
            let value = serde_json::to_vec(&record).map_err(|e| PkiError::Corrupt {
                what: "deny list".into(),
                reason: e.to_string(),
            })?;
            let put = Op::Put {
                key: DENY_KEY.into(),
                value,
                expect: Some(revision),
            };
            match self.store.commit(vec![put]).await {
                Ok(revision) => {
                    *self.denied.write().unwrap_or_else(|p| p.into_inner()) =
                        (Arc::new(record), revision);
                    self.publish();
                    tracing::info!(lineage = %entry.lineage, what = %entry.what, "revoked");
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PkiError::Refused(
            "the deny list kept changing under this write; try again".into(),
        ))
    }

    /// A deny-list entry for `lineage` revoked now: kept until the longest certificate it
    /// can cover has expired and could no longer be renewed (no workload certificate lives
    /// longer than the Mesh's largest `workloadCertTTL`, and an expired one renews for at
    /// most [`EXPIRED_RENEWAL_GRACE`]).
    fn deny_entry(lineage: &str, what: String) -> DenyEntry {
        let now = SystemTime::now();
        DenyEntry {
            lineage: lineage.to_owned(),
            what,
            revoked: rfc3339(now),
            // The longest certificate, plus the time an expired one may still renew.
            until_unix: unix(
                now + skein_model::resource::MAX_CERT_TTL + EXPIRED_RENEWAL_GRACE + BACKDATE_SLACK,
            ),
        }
    }

    /// Revokes one workload's lineage (`<token id>.<n>`): its proxy can no longer renew or
    /// sync, and every proxy refuses its certificate at the next handshake.
    pub async fn revoke_lineage(&self, lineage: &str, what: String) -> Result<DenyEntry, PkiError> {
        skein_identity::validate_lineage(lineage, false)?;
        let entry = Self::deny_entry(lineage, what);
        self.deny(entry.clone()).await?;
        Ok(entry)
    }

    /// Lets no further proxy join with the token of `lineage` (its remaining uses are
    /// spent); the workloads that already joined with it are not affected. Returns the
    /// token id, or `None` when the token record is gone.
    pub async fn close_token(&self, lineage: &str) -> Result<Option<String>, PkiError> {
        let id = lineage.split('.').next().unwrap_or_default().to_owned();
        for _ in 0..CAS_TRIES {
            let Some((mut record, revision)) = self.get_token(&id).await? else {
                return Ok(None);
            };
            if record.used >= record.uses {
                return Ok(Some(id));
            }
            record.used = record.uses;
            match self.put_token(&record, Some(revision)).await {
                Ok(_) => return Ok(Some(id)),
                Err(PkiError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(PkiError::Refused(
            "the token record kept changing under this write; try again".into(),
        ))
    }

    /// The revoked lineages in force, with what each was.
    pub fn deny_list(&self) -> Vec<DenyEntry> {
        let now = unix(SystemTime::now());
        self.denied()
            .0
            .entries
            .iter()
            .filter(|e| e.until_unix > now)
            .cloned()
            .collect()
    }

    /// Why `lineage` is refused, if it is.
    pub fn revoked(&self, lineage: &str) -> Option<DenyEntry> {
        // The published list answers the common "no" without copying anything.
        let hit = self.published.borrow().denied.denies(lineage)?.to_owned();
        self.deny_list().into_iter().find(|e| e.lineage == hit)
    }

    /// Changes to the CA as proxy sessions see them.
    pub fn subscribe(&self) -> watch::Receiver<PkiView> {
        self.published.subscribe()
    }

    /// The CA as published now.
    pub fn view(&self) -> PkiView {
        self.published.borrow().clone()
    }

    /// TLS for the proxy gRPC port: our certificate, client certificates optional but
    /// verified when presented.
    pub fn server_tls(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        Ok(control_server_config(
            self.resolver.clone(),
            self.bundle.clone(),
        )?)
    }

    /// The trust domain the CA signs for.
    pub fn trust_domain(&self) -> String {
        self.authority().ca.trust_domain().to_owned()
    }

    /// The active root's PEM.
    pub fn root_pem(&self) -> String {
        self.authority().ca.root_cert_pem()
    }

    /// When the active root and intermediate are valid (what `skein check` shows): a
    /// workload certificate never outlives the intermediate, and nothing verifies once the
    /// root has expired.
    pub fn validity(&self) -> Result<CaValidity, PkiError> {
        let authority = self.authority();
        let pems = authority.ca.to_pem_set();
        Ok(CaValidity {
            root: Validity::of_pem(&pems.root_cert, "root certificate")?,
            intermediate: Validity::of_pem(&pems.intermediate_cert, "intermediate certificate")?,
        })
    }

    /// Makes a join token for `service` in `namespace`, valid for `ttl`, with which `uses`
    /// proxies may join (1 to 100000).
    pub async fn create_token(
        &self,
        namespace: &str,
        service: &str,
        ttl: Duration,
        uses: u32,
    ) -> Result<(JoinToken, TokenRecord), PkiError> {
        if !(1..=100_000).contains(&uses) {
            return Err(PkiError::Refused(format!(
                "token uses {uses} is not accepted; use 1 (the default: one proxy) to 100000"
            )));
        }
        let authority = self.authority();
        let identity = SpiffeId::new(authority.ca.trust_domain(), namespace, service)?;
        if ttl.is_zero() || ttl > Duration::from_secs(365 * 24 * 3600) {
            return Err(PkiError::Refused(format!(
                "token lifetime {ttl:?} is not accepted; use a duration from 1s to 8760h"
            )));
        }
        let token = JoinToken::generate(authority.ca.trust_domain(), authority.ca.root_cert())?;
        let now = SystemTime::now();
        let expires = now + ttl;
        let record = TokenRecord {
            id: token.id().to_owned(),
            secret_sha256: token.secret_hash(),
            identity: identity.to_string(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            created: rfc3339(now),
            expires_unix: unix(expires),
            expires: rfc3339(expires),
            revoked: None,
            uses,
            used: 0,
        };
        self.put_token(&record, Some(0)).await?;
        tracing::info!(token = %token.id(), %identity, uses, "join token created");
        Ok((token, record.public()))
    }

    async fn put_token(&self, record: &TokenRecord, expect: Option<u64>) -> Result<u64, PkiError> {
        let value = serde_json::to_vec(record).map_err(|e| PkiError::Corrupt {
            what: format!("token {}", record.id),
            reason: e.to_string(),
        })?;
        Ok(self
            .store
            .commit(vec![Op::Put {
                key: format!("{TOKEN_PREFIX}{}", record.id),
                value,
                expect,
            }])
            .await?)
    }

    async fn get_token(&self, id: &str) -> Result<Option<(TokenRecord, u64)>, PkiError> {
        let key = format!("{TOKEN_PREFIX}{id}");
        crate::store::get_json(&*self.store, &key, |err| PkiError::Corrupt {
            what: format!("token {id}"),
            reason: err.to_string(),
        })
        .await
    }

    /// Every token (without secret hashes), oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, PkiError> {
        let (found, _) = self.store.list(TOKEN_PREFIX).await?;
        let mut tokens: Vec<TokenRecord> = found
            .iter()
            .filter_map(|e| serde_json::from_slice::<TokenRecord>(&e.value).ok())
            .map(|t| t.public())
            .collect();
        tokens.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(tokens)
    }

    /// Revokes token `id`: no proxy joins with it from now on, and every workload that
    /// joined with it is out of the mesh: its renewals and `Sync` are refused and every
    /// proxy refuses its certificate at the next handshake (the deny list).
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, PkiError> {
        for _ in 0..CAS_TRIES {
            let (mut record, revision) = self
                .get_token(id)
                .await?
                .ok_or_else(|| PkiError::UnknownToken(id.to_owned()))?;
            if record.revoked.is_none() {
                record.revoked = Some(rfc3339(SystemTime::now()));
                match self.put_token(&record, Some(revision)).await {
                    Ok(_) => {}
                    Err(PkiError::Store(StoreError::Conflict { .. })) => continue,
                    Err(e) => return Err(e),
                }
                tracing::info!(token = %id, identity = %record.identity, "join token revoked");
            }
            // Also when it was revoked before: the deny entry may have lapsed or failed.
            let what = format!("token {id} ({})", record.identity);
            self.deny(Self::deny_entry(id, what)).await?;
            return Ok(record.public());
        }
        Err(PkiError::Refused(
            "the token record kept changing under this write; try again".into(),
        ))
    }

    /// Checks a join token without using it: its record, that record's revision, and the
    /// identity it grants.
    async fn check_token(
        &self,
        token: &JoinToken,
    ) -> Result<(TokenRecord, u64, SpiffeId), tonic::Status> {
        use tonic::Status;
        let td = self.trust_domain();
        if token.trust_domain() != td {
            return Err(Status::permission_denied(format!(
                "the join token is for trust domain {:?}, but this control plane serves {td:?}; create a token with this control plane's `skein token create`",
                token.trust_domain()
            )));
        }
        let (record, revision) = self
            .get_token(token.id())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "join token {} is unknown to this control plane; create one with `skein token create`",
                    token.id()
                ))
            })?;
        if !skein_identity::constant_time_eq(&record.secret_sha256, &token.secret_hash()) {
            return Err(Status::unauthenticated(format!(
                "join token {} has the wrong secret; copy the whole token `skein token create` printed",
                token.id()
            )));
        }
        if let Some(when) = &record.revoked {
            return Err(Status::permission_denied(format!(
                "join token {} was revoked at {when}; create a new one with `skein token create`",
                token.id()
            )));
        }
        if unix(SystemTime::now()) >= record.expires_unix {
            return Err(Status::permission_denied(format!(
                "join token {} expired at {}; create a new one with `skein token create`",
                token.id(),
                record.expires
            )));
        }
        if record.used >= record.uses {
            return Err(Status::permission_denied(format!(
                "join token {} is used up ({} of {} joins; tokens are single-use unless created with --uses N); create a new one with `skein token create`",
                token.id(),
                record.used,
                record.uses
            )));
        }
        let identity = record
            .identity
            .parse()
            .map_err(|e: skein_identity::IdentityError| {
                Status::internal(format!("token {}: {e}", token.id()))
            })?;
        Ok((record, revision, identity))
    }

    /// Uses the token once (compare-and-set, so a use is never counted twice nor a last
    /// use granted twice, whichever replica redeems it) and returns the new lineage,
    /// `<token id>.<n>` for the n-th join.
    async fn take_use(&self, token: &JoinToken) -> Result<String, tonic::Status> {
        // One redemption at a time on this replica: a fleet starting together would
        // otherwise make every compare-and-set but one fail, round after round. Other
        // replicas' redemptions still conflict, and are retried.
        let _one = self.redeeming.lock().await;
        for _ in 0..CAS_TRIES {
            let (mut record, revision, _) = self.check_token(token).await?;
            record.used += 1;
            match self.put_token(&record, Some(revision)).await {
                Ok(_) => return Ok(format!("{}.{}", token.id(), record.used)),
                Err(PkiError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
            }
        }
        Err(tonic::Status::unavailable(
            "the join token is being redeemed by many proxies at once; retry",
        ))
    }

    /// Who a renewal is for: the presented certificate's identity and lineage, unless the
    /// lineage was revoked, the certificate expired too long ago, or it predates lineages.
    fn check_renewal(&self, presented: &Presented) -> Result<String, tonic::Status> {
        use tonic::Status;
        let id = &presented.id;
        let Some(lineage) = presented.lineage.clone() else {
            return Err(Status::permission_denied(format!(
                "the certificate of {id} records no join lineage (issued before lineages were recorded); restart the proxy with a new join token"
            )));
        };
        if let Some(entry) = self.revoked(&lineage) {
            return Err(Status::permission_denied(format!(
                "{id} (join lineage {lineage}) is revoked: {} was revoked at {}; the workload is out of the mesh until it joins with a new token",
                entry.what, entry.revoked
            )));
        }
        if let Ok(ago) = SystemTime::now().duration_since(presented.expires) {
            if ago > EXPIRED_RENEWAL_GRACE {
                return Err(Status::permission_denied(format!(
                    "the certificate of {id} expired at {}, more than {}h ago; restart the proxy with a new join token",
                    rfc3339(presented.expires),
                    EXPIRED_RENEWAL_GRACE.as_secs() / 3600
                )));
            }
        }
        Ok(lineage)
    }

    /// Issues a workload certificate: for the token's identity (using the token once), or
    /// (renewal) for the identity and lineage of the certificate the caller presented, also
    /// an expired one within [`EXPIRED_RENEWAL_GRACE`]. `ttl` is the mesh's
    /// `workloadCertTTL`.
    pub async fn certify(
        &self,
        req: &CertifyRequest,
        presented: Option<&Presented>,
        ttl: Duration,
    ) -> Result<CertifyResponse, tonic::Status> {
        use tonic::Status;
        let bad_csr = |e: skein_identity::IdentityError| Status::invalid_argument(e.to_string());
        let (identity, lineage) = match (req.token.is_empty(), presented) {
            (false, _) => {
                let token: JoinToken = req.token.parse().map_err(bad_csr)?;
                let (_, _, identity) = self.check_token(&token).await?;
                refuse_control_identity(&identity)?;
                // Check the CSR before the token's use is taken.
                self.authority()
                    .ca
                    .issue(req.csr_pem.as_bytes(), &identity, ttl)
                    .map_err(bad_csr)?;
                (identity, self.take_use(&token).await?)
            }
            (true, Some(p)) => (p.id.clone(), self.check_renewal(p)?),
            (true, None) => {
                return Err(Status::unauthenticated(
                    "Certify needs a join token (first start) or the current workload certificate as the TLS client certificate (renewal)",
                ))
            }
        };
        refuse_control_identity(&identity)?;
        let authority = self.authority();
        let issued = authority
            .ca
            .issue_in_lineage(req.csr_pem.as_bytes(), &identity, ttl, &lineage)
            .map_err(bad_csr)?;
        tracing::info!(%identity, %lineage, serial = %issued.serial, expires = %rfc3339(issued.not_after), renewal = req.token.is_empty(), "issued workload certificate");
        let mut bundle: Vec<Vec<u8>> = authority
            .ca
            .trust_bundle()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        if let Some(next) = &authority.next {
            bundle.push(next.root_cert().as_ref().to_vec());
        }
        Ok(CertifyResponse {
            chain_pem: issued.chain_pem,
            trust_bundle: bundle,
            identity: identity.to_string(),
            ca_generation: authority.generation,
            issued_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or_default(),
        })
    }

    /// Moves a rotation one phase on: idle → prepared → switched → idle.
    pub async fn advance(&self) -> Result<Phase, PkiError> {
        let current = self.authority();
        let copy = |ca: &CertificateAuthority| CertificateAuthority::from_pem_set(&ca.to_pem_set());
        let next = match current.phase() {
            Phase::Idle => {
                let mut ca = copy(&current.ca)?;
                let next = CertificateAuthority::generate(ca.trust_domain())?;
                ca.add_trusted_root(next.root_cert().clone())?;
                Authority {
                    ca,
                    next: Some(next),
                    generation: current.generation,
                    revision: 0,
                    sealed: self.sealer.seals(),
                }
            }
            Phase::Prepared => {
                let mut ca = copy(current.next.as_ref().expect("prepared has a next CA"))?;
                for root in current.ca.trust_bundle() {
                    ca.add_trusted_root(root)?;
                }
                Authority {
                    ca,
                    next: None,
                    generation: current.generation + 1,
                    revision: 0,
                    sealed: self.sealer.seals(),
                }
            }
            Phase::Switched => {
                let mut ca = copy(&current.ca)?;
                let active = ca.root_cert().clone();
                for root in ca.trust_bundle() {
                    if root != active {
                        ca.remove_trusted_root(&root)?;
                    }
                }
                Authority {
                    ca,
                    next: None,
                    generation: current.generation,
                    revision: 0,
                    sealed: self.sealer.seals(),
                }
            }
        };
        let revision =
            Self::write(&*self.store, &self.sealer, &next, Some(current.revision)).await?;
        let next = Authority { revision, ..next };
        let phase = next.phase();
        self.install(next)?;
        Ok(phase)
    }
}

fn refuse_control_identity(identity: &SpiffeId) -> Result<(), tonic::Status> {
    if identity.namespace() == CONTROL_NAMESPACE && identity.account() == CONTROL_ACCOUNT {
        return Err(tonic::Status::permission_denied(
            "the control plane's own identity is never issued to a proxy",
        ));
    }
    Ok(())
}

/// How long [`rotate`] waits for proxies at each phase before going on without the ones
/// that have not caught up (they fail closed and recover on their next renewal).
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Longest wait per phase.
    pub phase_timeout: Duration,
}

/// Runs a whole root rotation, reporting progress through `progress`: prepare, wait until
/// every connected proxy applied the bundle with both roots, switch, wait until every
/// connected proxy renewed from the new root, finish. Resumes a rotation left half-done.
pub async fn rotate(
    pki: &Pki,
    connections: &Connections,
    opts: RotateOptions,
    progress: impl Fn(String),
) -> Result<(), PkiError> {
    if pki.view().phase == Phase::Idle {
        pki.advance().await?;
        progress("prepared: the new root is in the trust bundle, the old root still signs".into());
    }
    if pki.view().phase == Phase::Prepared {
        let revision = pki.view().revision;
        wait(opts, &progress, "apply the bundle with both roots", || {
            connections.lagging_config(revision)
        })
        .await;
        pki.advance().await?;
        let generation = pki.view().generation;
        progress(format!(
            "switched: the new root signs (CA generation {generation}); proxies renew now"
        ));
    }
    if pki.view().phase == Phase::Switched {
        let generation = pki.view().generation;
        wait(opts, &progress, "renew from the new root", || {
            connections.lagging_cert(generation)
        })
        .await;
        pki.advance().await?;
        progress("finished: the old root left the trust bundle".into());
    }
    Ok(())
}

async fn wait(
    opts: RotateOptions,
    progress: &impl Fn(String),
    what: &str,
    lagging: impl Fn() -> Vec<String>,
) {
    let deadline = tokio::time::Instant::now() + opts.phase_timeout;
    let mut last = usize::MAX;
    loop {
        let behind = lagging();
        if behind.is_empty() {
            return;
        }
        if behind.len() != last {
            progress(format!(
                "waiting for {} proxies to {what}: {}",
                behind.len(),
                behind.join(", ")
            ));
            last = behind.len();
        }
        if tokio::time::Instant::now() >= deadline {
            progress(format!(
                "going on after {:?}: {} proxies did not {what} ({})",
                opts.phase_timeout,
                behind.len(),
                behind.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    async fn pki(name: &str) -> (Arc<Pki>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("skein-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir).unwrap());
        let sealer = crate::secrets::Sealer::default();
        (
            Pki::open(store, "skein.local", None, sealer).await.unwrap(),
            dir,
        )
    }

    fn web() -> SpiffeId {
        SpiffeId::new("skein.local", "default", "web").unwrap()
    }

    fn presented(lineage: Option<&str>, expired_ago: Option<Duration>) -> Presented {
        let now = SystemTime::now();
        Presented {
            id: web(),
            lineage: lineage.map(str::to_owned),
            expires: match expired_ago {
                Some(ago) => now - ago,
                None => now + Duration::from_secs(600),
            },
        }
    }

    #[tokio::test]
    async fn renewal_keeps_the_lineage_within_the_grace_and_refuses_otherwise() {
        let (pki, dir) = pki("renewal").await;
        assert_eq!(
            pki.check_renewal(&presented(Some("aa.1"), None)).unwrap(),
            "aa.1"
        );
        let hour = Duration::from_secs(3600);
        assert!(
            pki.check_renewal(&presented(Some("aa.1"), Some(hour)))
                .is_ok(),
            "expired an hour ago"
        );
        let e = pki
            .check_renewal(&presented(Some("aa.1"), Some(EXPIRED_RENEWAL_GRACE + hour)))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("more than 24h ago; restart the proxy with a new join token"),
            "{}",
            e.message()
        );
        let e = pki.check_renewal(&presented(None, None)).unwrap_err();
        assert!(
            e.message().contains("records no join lineage"),
            "{}",
            e.message()
        );
        // Revoking the token denies every lineage of it, not other tokens'.
        pki.deny(Pki::deny_entry("aa", "token aa (web)".into()))
            .await
            .unwrap();
        let e = pki
            .check_renewal(&presented(Some("aa.1"), None))
            .unwrap_err();
        assert!(
            e.message().contains("token aa (web) was revoked at"),
            "{}",
            e.message()
        );
        assert!(pki.check_renewal(&presented(Some("aab.1"), None)).is_ok());
        assert_eq!(
            pki.view().denied.entries(),
            ["aa"],
            "published to proxy sessions"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn tokens_count_their_uses_and_refuse_past_the_last() {
        let (pki, dir) = pki("uses").await;
        let (token, record) = pki
            .create_token("default", "web", Duration::from_secs(60), 2)
            .await
            .unwrap();
        assert_eq!((record.uses, record.used), (2, 0));
        assert_eq!(
            pki.take_use(&token).await.unwrap(),
            format!("{}.1", token.id())
        );
        assert_eq!(
            pki.take_use(&token).await.unwrap(),
            format!("{}.2", token.id())
        );
        let e = pki.take_use(&token).await.unwrap_err();
        assert!(
            e.message().contains("is used up (2 of 2 joins"),
            "{}",
            e.message()
        );
        assert!(pki
            .create_token("default", "web", Duration::from_secs(60), 0)
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
