//! Unit tests for the CA: issuance for the token's identity only, CSR checks, import and
//! persistence.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::WorkloadKey;

fn id(account: &str) -> SpiffeId {
    SpiffeId::new("skein.local", "default", account).unwrap()
}

fn leaf(issued: &IssuedCert) -> CertificateDer<'static> {
    parse_cert_chain(&issued.chain_pem).unwrap().remove(0)
}

#[test]
fn issues_for_the_token_identity() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr(&id("restaurant")).unwrap();
    let issued = ca
        .issue(&csr, &id("restaurant"), DEFAULT_WORKLOAD_TTL)
        .unwrap();

    let chain = parse_cert_chain(&issued.chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(SpiffeId::from_cert(&chain[0]).unwrap(), id("restaurant"));

    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert!(!cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1, "URI SAN only: {sans:?}");
    assert_eq!(cert.public_key().raw, key.public_key_der().as_slice());

    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - 62..=now - 58).contains(&nb), "backdated one minute");
    assert!((na - now - 3600).abs() <= 2);
    assert_eq!(
        issued.not_after,
        CertInfo::parse(&chain[0]).unwrap().not_after
    );

    // The chain verifies against the trust bundle with webpki.
    let anchors: Vec<_> = ca
        .trust_bundle()
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    ee.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        &anchors,
        &chain[1..],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();
}

#[test]
fn csr_without_sans_gets_the_token_identity() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let issued = ca
        .issue(csr.der(), &id("a"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(SpiffeId::from_cert(&leaf(&issued)).unwrap(), id("a"));
}

#[test]
fn csr_asking_for_another_identity_is_refused() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr(&id("restaurant")).unwrap();
    let err = ca
        .issue(&csr, &id("evil"), DEFAULT_WORKLOAD_TTL)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR asks for spiffe://skein.local/ns/default/sa/restaurant but the token is for \
         spiffe://skein.local/ns/default/sa/evil; a workload can only obtain a certificate for \
         its own token's identity"
    );
}

#[test]
fn csr_with_an_extra_dns_san_is_refused() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["restaurant.example".to_string()]).unwrap();
    params.subject_alt_names.push(uri_san(&id("a")).unwrap());
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = ca
        .issue(&csr, &id("a"), DEFAULT_WORKLOAD_TTL)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("CSR asks for DNSName(restaurant.example) but the token is for spiffe://skein.local/ns/default/sa/a"), "{err}");
}

#[test]
fn tampered_csr_is_refused() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "restaurant");
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    // Change the subject's common name in place: the signature no longer covers these bytes.
    let pos = der.windows(10).position(|w| w == b"restaurant").unwrap();
    der[pos] = b'R';
    let err = ca.issue(&der, &id("a"), DEFAULT_WORKLOAD_TTL).unwrap_err();
    assert!(matches!(err, IdentityError::CsrSignature(_)), "{err}");
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );

    let err = ca
        .issue(b"garbage", &id("a"), DEFAULT_WORKLOAD_TTL)
        .unwrap_err();
    assert!(err.to_string().starts_with("could not parse CSR"), "{err}");
}

#[test]
fn refuses_foreign_trust_domain_and_zero_ttl() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let other = SpiffeId::new("other.local", "default", "a").unwrap();
    let err = ca
        .issue(key.csr(&other).unwrap(), &other, DEFAULT_WORKLOAD_TTL)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("signs only for trust domain \"skein.local\""),
        "{err}"
    );
    let err = ca
        .issue(key.csr(&id("a")).unwrap(), &id("a"), Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, IdentityError::InvalidTtl(_)));
}

#[test]
fn serials_differ_when_renewing_with_the_same_key() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr(&id("a")).unwrap();
    let a = ca.issue(&csr, &id("a"), DEFAULT_WORKLOAD_TTL).unwrap();
    let b = ca.issue(&csr, &id("a"), DEFAULT_WORKLOAD_TTL).unwrap();
    assert_ne!(a.serial, b.serial);
}

#[test]
fn persists_with_keys_0600_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    ca.to_pem_files(&ca_dir).unwrap();
    for (name, mode) in [
        (ROOT_KEY_FILE, 0o600),
        (INTERMEDIATE_KEY_FILE, 0o600),
        (ROOT_CERT_FILE, 0o644),
        (INTERMEDIATE_CERT_FILE, 0o644),
    ] {
        let meta = std::fs::metadata(ca_dir.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    let dir_mode = std::fs::metadata(&ca_dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let loaded = CertificateAuthority::load(&ca_dir).unwrap();
    assert_eq!(loaded.trust_domain(), "skein.local");
    assert_eq!(loaded.trust_bundle(), ca.trust_bundle());
    let key = WorkloadKey::generate().unwrap();
    let issued = loaded
        .issue(key.csr(&id("a")).unwrap(), &id("a"), DEFAULT_WORKLOAD_TTL)
        .unwrap();
    // The reloaded CA signs with the same intermediate.
    assert!(issued.chain_pem.ends_with(&to_pem(&ca.intermediate_cert)));
}

#[test]
fn imports_a_team_root_and_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let team = CertificateAuthority::generate("skein.local").unwrap();
    team.to_pem_files(dir.path()).unwrap();
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();

    let imported = CertificateAuthority::from_pem(
        "skein.local",
        &read(ROOT_CERT_FILE),
        None,
        &read(INTERMEDIATE_CERT_FILE),
        &read(INTERMEDIATE_KEY_FILE),
    )
    .unwrap();
    assert_eq!(imported.trust_bundle(), team.trust_bundle());

    // Wrong key for the intermediate.
    let err = CertificateAuthority::from_pem(
        "skein.local",
        &read(ROOT_CERT_FILE),
        None,
        &read(INTERMEDIATE_CERT_FILE),
        &read(ROOT_KEY_FILE),
    )
    .unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch(_)), "{err}");

    // Intermediate from another root.
    let other = CertificateAuthority::generate("skein.local").unwrap();
    let err = CertificateAuthority::from_pem(
        "skein.local",
        &to_pem(other.root_cert()),
        None,
        &read(INTERMEDIATE_CERT_FILE),
        &read(INTERMEDIATE_KEY_FILE),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not signed by the given root"),
        "{err}"
    );
}

#[test]
fn rotation_keeps_the_old_root_trusted_until_removed() {
    let mut ca = CertificateAuthority::generate("skein.local").unwrap();
    let old_root = ca.root_cert().clone();
    ca.rotate().unwrap();
    let bundle = ca.trust_bundle();
    assert_eq!(bundle.len(), 2);
    assert_ne!(bundle[0], old_root, "the new root comes first");
    assert_eq!(bundle[1], old_root);
    assert!(
        ca.remove_trusted_root(&bundle[0]).is_err(),
        "active root stays"
    );
    ca.remove_trusted_root(&old_root).unwrap();
    assert_eq!(ca.trust_bundle().len(), 1);
}

#[test]
fn debug_does_not_print_keys() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let key_pem = ca.intermediate.key().serialize_pem();
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let debug = format!("{ca:?}");
    assert!(debug.contains("[redacted]"), "{debug}");
    assert!(!debug.contains(&body[..40]), "{debug}");
}
