//! The mesh certificate authority: a long-lived root, an intermediate that signs workload
//! certificates, and the trust bundle peers verify against.
//!
//! [`CertificateAuthority::issue`] is the heart of identity: it signs a workload's CSR for
//! the identity the caller was authorised for (its join token), never for what the CSR asks.
//! A CSR naming anything else is refused, so a workload holding a token for `evil` cannot
//! obtain a certificate for `restaurant`.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::fsutil::{self, PUBLIC_MODE, SECRET_MODE};
use crate::spiffe::validate_trust_domain;
use crate::workload::{parse_cert_chain, uri_san, CertInfo};
use crate::{IdentityError, Result, SpiffeId};

/// Default workload certificate lifetime (the `Mesh` resource's `workloadCertTTL` default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a generated root: long, because replacing it means `skein ca rotate`.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated intermediate.
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start slightly in the past so peers with a lagging clock accept them.
const BACKDATE: Duration = Duration::from_secs(60);

const TRUST_DOMAIN_FILE: &str = "trust-domain";
const ROOT_CERT_FILE: &str = "root.crt";
const ROOT_KEY_FILE: &str = "root.key";
const INTERMEDIATE_CERT_FILE: &str = "intermediate.crt";
const INTERMEDIATE_KEY_FILE: &str = "intermediate.key";
const BUNDLE_FILE: &str = "bundle.crt";

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM chain: the leaf, then the intermediate.
    pub chain_pem: String,
    /// End of the leaf's validity (never later than the intermediate's).
    pub not_after: SystemTime,
    /// The leaf's serial number, hex with colons.
    pub serial: String,
}

/// The mesh CA. `Debug` shows certificates' facts, never keys.
pub struct CertificateAuthority {
    trust_domain: String,
    root_cert: CertificateDer<'static>,
    /// Absent when a team imported only its root certificate and an intermediate.
    root_key: Option<KeyPair>,
    intermediate_cert: CertificateDer<'static>,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_not_after: SystemTime,
    /// Trusted roots: the active root first, then any kept during a rotation.
    bundle: Vec<CertificateDer<'static>>,
}

impl CertificateAuthority {
    /// Creates a new root (10 years) and intermediate (1 year) for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let now = SystemTime::now();
        // A per-CA tag keeps the names of two CAs (e.g. before and after a rotation) apart,
        // so a chain from a foreign CA fails as "unknown issuer", not as a bad signature.
        let tag = hex(&random_bytes::<4>()?);
        let root_key = new_key()?;
        let root_params = ca_params(
            &format!("{trust_domain} root CA {tag}"),
            BasicConstraints::Unconstrained,
            now,
            ROOT_LIFETIME,
        )?;
        let root_cert = root_params.self_signed(&root_key)?.der().clone();
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key = new_key()?;
        let mut int_params = ca_params(
            &format!("{trust_domain} intermediate CA {tag}"),
            BasicConstraints::Constrained(0),
            now,
            INTERMEDIATE_LIFETIME,
        )?;
        int_params.use_authority_key_identifier_extension = true;
        let int_cert = int_params.signed_by(&int_key, &root_issuer)?.der().clone();
        let int_not_after = CertInfo::parse(&int_cert)?.not_after;
        let root_key = KeyPair::from_pem(&root_issuer.key().serialize_pem())?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            bundle: vec![root_cert.clone()],
            root_cert,
            root_key: Some(root_key),
            intermediate_cert: int_cert,
            intermediate: Issuer::new(int_params, int_key),
            intermediate_not_after: int_not_after,
        })
    }

    /// Imports a team's own CA from PEM: the root certificate, optionally its key (needed only
    /// to mint new intermediates), and the intermediate certificate and key that will sign.
    /// Checks the intermediate is a CA signed by the root and that each key fits its cert.
    pub fn from_pem(
        trust_domain: &str,
        root_cert_pem: &str,
        root_key_pem: Option<&str>,
        intermediate_cert_pem: &str,
        intermediate_key_pem: &str,
    ) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let root_cert = single_cert(root_cert_pem, "root certificate")?;
        let int_cert = single_cert(intermediate_cert_pem, "intermediate certificate")?;
        let root_key = root_key_pem
            .map(|pem| KeyPair::from_pem(pem).map_err(|e| IdentityError::parse("root key", e)))
            .transpose()?;
        let int_key = KeyPair::from_pem(intermediate_key_pem)
            .map_err(|e| IdentityError::parse("intermediate key", e))?;

        check_ca_pair(&root_cert, &int_cert)?;
        let root_info = CertInfo::parse(&root_cert)?;
        let int_info = CertInfo::parse(&int_cert)?;
        if let Some(key) = &root_key {
            if key.subject_public_key_info() != root_info.spki {
                return Err(IdentityError::KeyMismatch("root certificate".into()));
            }
        }
        if int_key.subject_public_key_info() != int_info.spki {
            return Err(IdentityError::KeyMismatch(
                "intermediate certificate".into(),
            ));
        }
        if int_info.not_after <= SystemTime::now() {
            return Err(IdentityError::InconsistentCa(
                "the intermediate certificate has expired; issue a new one from the root".into(),
            ));
        }
        let intermediate = Issuer::from_ca_cert_der(&int_cert, int_key)
            .map_err(|e| IdentityError::parse("intermediate certificate", e))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            bundle: vec![root_cert.clone()],
            root_cert,
            root_key,
            intermediate_cert: int_cert,
            intermediate,
            intermediate_not_after: int_info.not_after,
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The active root certificate.
    pub fn root_cert(&self) -> &CertificateDer<'static> {
        &self.root_cert
    }

    /// The active root as PEM (a server that proxies pin at bootstrap appends it to its
    /// chain, see [`crate::tls::bootstrap_client_config`]).
    pub fn root_cert_pem(&self) -> String {
        to_pem(&self.root_cert)
    }

    /// The roots peers should trust: the active root first, then any kept during a rotation.
    pub fn trust_bundle(&self) -> Vec<CertificateDer<'static>> {
        self.bundle.clone()
    }

    /// The trust bundle as PEM.
    pub fn trust_bundle_pem(&self) -> String {
        self.bundle.iter().map(|c| to_pem(c)).collect()
    }

    /// Adds a root to the trust bundle (e.g. the next root before a rotation). Must be a CA.
    pub fn add_trusted_root(&mut self, root: CertificateDer<'static>) -> Result<()> {
        if !CertInfo::parse(&root)?.is_ca {
            return Err(IdentityError::InconsistentCa(
                "a trusted root must be a CA certificate".into(),
            ));
        }
        if !self.bundle.contains(&root) {
            self.bundle.push(root);
        }
        Ok(())
    }

    /// Removes a root from the trust bundle (the old one, once every workload has been
    /// re-issued). The active root cannot be removed.
    pub fn remove_trusted_root(&mut self, root: &CertificateDer<'_>) -> Result<()> {
        if root.as_ref() == self.root_cert.as_ref() {
            return Err(IdentityError::InconsistentCa(
                "cannot remove the active root from the trust bundle; rotate to a new root first"
                    .into(),
            ));
        }
        self.bundle.retain(|c| c.as_ref() != root.as_ref());
        Ok(())
    }

    /// Rolls to a freshly generated root and intermediate. The old root stays in the trust
    /// bundle, so certificates it issued keep verifying until [`Self::remove_trusted_root`].
    pub fn rotate(&mut self) -> Result<()> {
        let next = Self::generate(&self.trust_domain)?;
        let mut bundle = next.bundle.clone();
        bundle.extend(
            self.bundle
                .iter()
                .filter(|c| !next.bundle.contains(c))
                .cloned(),
        );
        *self = Self { bundle, ..next };
        Ok(())
    }

    /// Signs `csr` (PEM or DER) for `identity`, valid from one minute ago for `ttl`.
    ///
    /// `identity` must be the one the caller is authorised for (its token's); the CSR only
    /// contributes its public key. A CSR asking for any other SAN is refused, as is one whose
    /// self-signature does not verify.
    pub fn issue(
        &self,
        csr: impl AsRef<[u8]>,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        self.issue_for(csr.as_ref(), identity, ttl, None)
    }

    /// Like [`Self::issue`], recording `lineage` (`<token id>.<n>`, see [`crate::lineage_of`])
    /// in the certificate: the join it descends from, which revocation refers to.
    pub fn issue_in_lineage(
        &self,
        csr: impl AsRef<[u8]>,
        identity: &SpiffeId,
        ttl: Duration,
        lineage: &str,
    ) -> Result<IssuedCert> {
        crate::validate_lineage(lineage, false)?;
        self.issue_for(csr.as_ref(), identity, ttl, Some(lineage))
    }

    /// Issues for `ttl` from now (backdated for clock skew).
    fn issue_for(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        ttl: Duration,
        lineage: Option<&str>,
    ) -> Result<IssuedCert> {
        if ttl.is_zero() {
            return Err(IdentityError::InvalidTtl(
                "the lifetime must be positive; the default is 1h".into(),
            ));
        }
        let now = SystemTime::now();
        let not_after = now
            .checked_add(ttl)
            .ok_or_else(|| IdentityError::InvalidTtl(format!("{ttl:?} is too long")))?;
        self.issue_window(csr, identity, now - BACKDATE, not_after, lineage)
    }

    /// Like [`Self::issue`] with an explicit validity window, for tests of expired and
    /// not-yet-valid certificates.
    #[cfg(any(test, feature = "test-util"))]
    pub fn issue_with_validity(
        &self,
        csr: impl AsRef<[u8]>,
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert> {
        self.issue_window(csr.as_ref(), identity, not_before, not_after, None)
    }

    fn issue_window(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
        lineage: Option<&str>,
    ) -> Result<IssuedCert> {
        if identity.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                identity: Box::new(identity.clone()),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        let public_key = verified_csr_key(csr, identity)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(lineage) = lineage {
            params.distinguished_name.push(
                DnType::OrganizationalUnitName,
                format!("{}{lineage}", crate::LINEAGE_PREFIX),
            );
        }
        params.subject_alt_names = vec![uri_san(identity)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before.into();
        // A leaf outliving its intermediate would fail verification early; cap it.
        params.not_after = not_after.min(self.intermediate_not_after).into();
        let leaf = params.signed_by(&public_key, &self.intermediate)?;
        let info = CertInfo::parse(leaf.der())?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", leaf.pem(), to_pem(&self.intermediate_cert)),
            not_after: info.not_after,
            serial: info.serial,
        })
    }

    /// The CA as PEM texts, keys included: for storing it where every control-plane replica
    /// can read it (a store that only the control plane can reach). Never log or serve it.
    pub fn to_pem_set(&self) -> CaPem {
        CaPem {
            trust_domain: self.trust_domain.clone(),
            root_cert: to_pem(&self.root_cert),
            root_key: self.root_key.as_ref().map(KeyPair::serialize_pem),
            intermediate_cert: to_pem(&self.intermediate_cert),
            intermediate_key: self.intermediate.key().serialize_pem(),
            bundle: self.trust_bundle_pem(),
        }
    }

    /// Rebuilds a CA from [`Self::to_pem_set`], checking it hangs together.
    pub fn from_pem_set(set: &CaPem) -> Result<Self> {
        let mut ca = Self::from_pem(
            set.trust_domain.trim(),
            &set.root_cert,
            set.root_key.as_deref(),
            &set.intermediate_cert,
            &set.intermediate_key,
        )?;
        if !set.bundle.trim().is_empty() {
            for root in parse_cert_chain(&set.bundle)? {
                ca.add_trusted_root(root)?;
            }
        }
        Ok(ca)
    }

    /// Writes the CA to `dir` (created 0700): certificates 0644, keys 0600.
    pub fn to_pem_files(&self, dir: &Path) -> Result<()> {
        fsutil::create_dir(dir)?;
        let set = self.to_pem_set();
        let write = |name: &str, text: &str, mode| {
            fsutil::write_file(&dir.join(name), text.as_bytes(), mode)
        };
        write(
            TRUST_DOMAIN_FILE,
            &format!("{}\n", set.trust_domain),
            PUBLIC_MODE,
        )?;
        write(ROOT_CERT_FILE, &set.root_cert, PUBLIC_MODE)?;
        if let Some(key) = &set.root_key {
            write(ROOT_KEY_FILE, key, SECRET_MODE)?;
        }
        write(INTERMEDIATE_CERT_FILE, &set.intermediate_cert, PUBLIC_MODE)?;
        write(INTERMEDIATE_KEY_FILE, &set.intermediate_key, SECRET_MODE)?;
        write(BUNDLE_FILE, &set.bundle, PUBLIC_MODE)
    }

    /// Loads a CA written by [`Self::to_pem_files`].
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| fsutil::read_string(&dir.join(name));
        let optional = |name: &str| {
            let path = dir.join(name);
            if path.exists() {
                fsutil::read_string(&path).map(Some)
            } else {
                Ok(None)
            }
        };
        Self::from_pem_set(&CaPem {
            trust_domain: read(TRUST_DOMAIN_FILE)?,
            root_cert: read(ROOT_CERT_FILE)?,
            root_key: optional(ROOT_KEY_FILE)?,
            intermediate_cert: read(INTERMEDIATE_CERT_FILE)?,
            intermediate_key: read(INTERMEDIATE_KEY_FILE)?,
            bundle: optional(BUNDLE_FILE)?.unwrap_or_default(),
        })
    }
}

/// A CA as PEM texts (see [`CertificateAuthority::to_pem_set`]). `Debug` hides the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem {
    /// The trust domain it signs for.
    pub trust_domain: String,
    /// The root certificate.
    pub root_cert: String,
    /// The root key, if this CA holds it (imported CAs may not).
    pub root_key: Option<String>,
    /// The signing intermediate's certificate.
    pub intermediate_cert: String,
    /// The signing intermediate's key.
    pub intermediate_key: String,
    /// Every trusted root (the active one first).
    pub bundle: String,
}

impl fmt::Debug for CaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaPem")
            .field("trust_domain", &self.trust_domain)
            .field("keys", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("has_root_key", &self.root_key.is_some())
            .field("intermediate_not_after", &self.intermediate_not_after)
            .field("trusted_roots", &self.bundle.len())
            .field("keys", &"[redacted]")
            .finish()
    }
}

/// Parses a CSR, verifies its self-signature, refuses any SAN other than `identity`, and
/// returns its public key.
fn verified_csr_key(csr: &[u8], identity: &SpiffeId) -> Result<rcgen::SubjectPublicKeyInfo> {
    let der = if csr.starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|e| IdentityError::parse("CSR PEM", e))?
    } else {
        CertificateSigningRequestDer::from(csr.to_vec())
    };
    let (_, req) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| IdentityError::parse("CSR", e))?;
    req.verify_signature()
        .map_err(|e| IdentityError::CsrSignature(e.to_string()))?;
    let wanted = identity.to_string();
    let sans = req
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|ext| match ext {
            ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.iter()),
            _ => None,
        })
        .flatten();
    for name in sans {
        match name {
            GeneralName::URI(uri) if *uri == wanted => {}
            GeneralName::URI(uri) => {
                return Err(IdentityError::CsrIdentityMismatch {
                    requested: (*uri).to_owned(),
                    token: Box::new(identity.clone()),
                })
            }
            other => {
                return Err(IdentityError::CsrIdentityMismatch {
                    requested: other.to_string(),
                    token: Box::new(identity.clone()),
                })
            }
        }
    }
    rcgen::SubjectPublicKeyInfo::from_der(req.certification_request_info.subject_pki.raw)
        .map_err(|e| IdentityError::parse("CSR public key", e))
}

fn ca_params(
    common_name: &str,
    constraints: BasicConstraints,
    now: SystemTime,
    lifetime: Duration,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Skein");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
    Ok(params)
}

fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// 16 random bytes, positive: serials must be unique per issuer even when a workload renews
/// with the same key (rcgen's default derives the serial from the key).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::tls("the system random number generator failed"))?;
    Ok(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn single_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    let mut certs = parse_cert_chain(pem)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        n => Err(IdentityError::parse(
            what,
            format!("expected exactly one PEM certificate, found {n}"),
        )),
    }
}

/// Both are CAs, the root is self-signed, and the intermediate is signed by the root.
fn check_ca_pair(root: &[u8], intermediate: &[u8]) -> Result<()> {
    let parse = |der, what: &str| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c)
            .map_err(|e| IdentityError::parse(what, e))
    };
    let root = parse(root, "root certificate")?;
    let int = parse(intermediate, "intermediate certificate")?;
    if !root.is_ca() || !int.is_ca() {
        return Err(IdentityError::InconsistentCa(
            "root and intermediate must both be CA certificates (basicConstraints CA:TRUE)".into(),
        ));
    }
    root.verify_signature(None).map_err(|_| {
        IdentityError::InconsistentCa("the root certificate is not self-signed".into())
    })?;
    int.verify_signature(Some(root.public_key())).map_err(|_| {
        IdentityError::InconsistentCa(
            "the intermediate certificate is not signed by the given root".into(),
        )
    })
}

fn to_pem(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref()))
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
