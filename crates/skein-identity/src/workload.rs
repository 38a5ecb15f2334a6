//! A workload's own key and certificate. The key is generated here, inside the proxy, and
//! only its CSR travels to the control plane; [`WorkloadCert`] then pairs the key with the
//! issued chain and says when to renew (at 70 % of the certificate's life).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fsutil;
use crate::{IdentityError, Result, SpiffeId};

/// Share of a certificate's lifetime after which it should be renewed.
pub const RENEW_AT_FRACTION: f64 = 0.7;

/// A workload's private key (ECDSA P-256). `Debug` never prints the key.
pub struct WorkloadKey {
    key: KeyPair,
}

impl WorkloadKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self> {
        Ok(Self {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// Loads a key from PKCS#8 PEM (as written by [`WorkloadKey::to_pem`]).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(pem).map_err(|e| IdentityError::parse("private key PEM", e))?;
        Ok(Self { key })
    }

    /// A PEM certificate signing request for `identity`, signed by this key. The request
    /// carries the identity as its only SAN; the CA still issues for the token's identity.
    pub fn csr(&self, identity: &SpiffeId) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(identity)?];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// The key as PKCS#8 PEM. This is secret: write it only with mode 0600
    /// ([`WorkloadKey::write_pem`] does) and never log it.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Writes the key as PKCS#8 PEM to `path` with mode 0600, replacing any previous file.
    pub fn write_pem(&self, path: &Path) -> Result<()> {
        fsutil::write_file(path, self.to_pem().as_bytes(), fsutil::SECRET_MODE)
    }

    /// The public half, as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A workload's key with its issued chain (leaf first, then the intermediate).
#[derive(Debug)]
pub struct WorkloadCert {
    key: WorkloadKey,
    chain: Vec<CertificateDer<'static>>,
    identity: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When this process received the chain: renewal counts from here, because issuers
    /// backdate `not_before` for clock skew, which would otherwise pull renewal forward.
    received: SystemTime,
    serial: String,
}

impl WorkloadCert {
    /// Pairs `key` with the PEM chain the CA issued for it. Refuses a chain whose leaf is not
    /// for this key or carries no valid SPIFFE ID.
    pub fn new(key: WorkloadKey, chain_pem: &str) -> Result<Self> {
        let chain = parse_cert_chain(chain_pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::InvalidChain("the PEM holds no certificate".into()))?;
        let info = CertInfo::parse(leaf)?;
        if info.spki != key.public_key_der() {
            return Err(IdentityError::KeyMismatch(format!(
                "workload certificate {}",
                info.serial
            )));
        }
        Ok(Self {
            identity: SpiffeId::from_cert(leaf)?,
            key,
            chain,
            not_before: info.not_before,
            not_after: info.not_after,
            received: SystemTime::now(),
            serial: info.serial,
        })
    }

    /// The private key.
    pub fn key(&self) -> &WorkloadKey {
        &self.key
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The identity in the leaf certificate.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's serial number, lowercase hex with colons.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When to renew: 70 % of the way from the start of validity to `not_after`, where the
    /// start is the later of `not_before` and the moment the chain arrived (issuers backdate
    /// `not_before` a minute for clock skew; counting from there would renew a short-lived
    /// certificate at once).
    pub fn renew_at(&self) -> SystemTime {
        self.renew_after(self.received)
    }

    /// [`Self::renew_at`] for a chain that arrived at `received` by another clock than
    /// the host's (a proxy's [`crate::MeshClock`]).
    pub fn renew_after(&self, received: SystemTime) -> SystemTime {
        let start = self.not_before.max(received);
        let life = self
            .not_after
            .duration_since(start)
            .unwrap_or(Duration::ZERO);
        start + life.mul_f64(RENEW_AT_FRACTION)
    }

    /// Seconds until the certificate expires; negative once it has.
    pub fn seconds_to_expiry(&self) -> i64 {
        seconds_between(SystemTime::now(), self.not_after)
    }
}

/// Signed whole seconds from `from` to `to`.
fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn uri_san(identity: &SpiffeId) -> Result<SanType> {
    let uri = identity.to_string().try_into()?;
    Ok(SanType::URI(uri))
}

/// Parses every certificate in a PEM string.
pub(crate) fn parse_cert_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::parse("certificate PEM", e))
}

/// The facts about a certificate this crate needs.
pub(crate) struct CertInfo {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) serial: String,
    pub(crate) spki: Vec<u8>,
    pub(crate) is_ca: bool,
}

impl CertInfo {
    pub(crate) fn parse(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::parse("X.509 certificate", e))?;
        let validity = cert.validity();
        Ok(Self {
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
            serial: cert.raw_serial_as_string(),
            spki: cert.public_key().raw.to_vec(),
            is_ca: cert.is_ca(),
        })
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    fn id(account: &str) -> SpiffeId {
        SpiffeId::new("skein.local", "default", account).unwrap()
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let key = WorkloadKey::generate().unwrap();
        let pem = key.to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let debug = format!("{key:?}");
        assert!(debug.contains("[redacted]"), "{debug}");
        assert!(!debug.contains(&body[..40]), "{debug}");

        let ca = CertificateAuthority::generate("skein.local").unwrap();
        let issued = ca.issue(
            key.csr(&id("a")).unwrap(),
            &id("a"),
            Duration::from_secs(60),
        );
        let cert = WorkloadCert::new(key, &issued.unwrap().chain_pem).unwrap();
        let debug = format!("{cert:?}");
        assert!(!debug.contains(&body[..40]), "{debug}");
    }

    #[test]
    fn key_written_0600_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workload.key");
        let key = WorkloadKey::generate().unwrap();
        key.write_pem(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = WorkloadKey::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(again.public_key_der(), key.public_key_der());
    }

    #[test]
    fn renewal_at_seventy_percent_and_expiry() {
        let ca = CertificateAuthority::generate("skein.local").unwrap();
        let key = WorkloadKey::generate().unwrap();
        let ttl = Duration::from_secs(24 * 3600);
        let issued = ca.issue(key.csr(&id("a")).unwrap(), &id("a"), ttl).unwrap();
        let cert = WorkloadCert::new(key, &issued.chain_pem).unwrap();
        assert_eq!(cert.identity(), &id("a"));
        assert_eq!(cert.chain().len(), 2);
        // Counted from arrival, not from the backdated not_before.
        let now = SystemTime::now();
        let renew_in = cert.renew_at().duration_since(now).unwrap();
        let expected = ttl.mul_f64(0.7).as_secs();
        assert!(
            (expected - 5..=expected).contains(&renew_in.as_secs()),
            "{renew_in:?}"
        );
        let short = WorkloadKey::generate().unwrap();
        let issued = ca
            .issue(
                short.csr(&id("a")).unwrap(),
                &id("a"),
                Duration::from_secs(10),
            )
            .unwrap();
        let short = WorkloadCert::new(short, &issued.chain_pem).unwrap();
        let renew_in = short.renew_at().duration_since(SystemTime::now()).unwrap();
        assert!(
            renew_in >= Duration::from_secs(5),
            "a 10 s cert renews at ~7 s: {renew_in:?}"
        );
        let left = cert.seconds_to_expiry();
        assert!(
            (ttl.as_secs() as i64 - 5..=ttl.as_secs() as i64).contains(&left),
            "{left}"
        );
    }

    #[test]
    fn chain_for_another_key_is_refused() {
        let ca = CertificateAuthority::generate("skein.local").unwrap();
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .issue(
                key.csr(&id("a")).unwrap(),
                &id("a"),
                Duration::from_secs(60),
            )
            .unwrap();
        let other = WorkloadKey::generate().unwrap();
        let err = WorkloadCert::new(other, &issued.chain_pem)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}
