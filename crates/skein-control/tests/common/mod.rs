//! Shared by the control-plane integration tests: a CA in a fresh store, certificates
//! straight from it, and mTLS channels to the proxy API.

#![allow(dead_code)]

use skein_api::v1::CertifyRequest;
use skein_control::pki::Pki;
use skein_control::store::embedded::EmbeddedStore;
use skein_identity::{CertificateDer, SpiffeId, WorkloadCert, WorkloadKey};
use skein_proxy::identity::Identity;
use std::sync::Arc;
use std::time::Duration;

/// A CA in a fresh embedded store.
pub async fn pki(tag: &str) -> Arc<Pki> {
    let dir = std::env::temp_dir().join(format!("skein-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir).unwrap());
    // The store keeps its file open; the directory goes now, so that nothing is left
    // behind however the test ends.
    let _ = std::fs::remove_dir_all(&dir);
    Pki::open(store, "skein.local", None, Default::default())
        .await
        .unwrap()
}

/// A certificate for `service` (namespace `default`) issued through a join token, as a
/// proxy would get it.
pub async fn identity_for(pki: &Pki, service: &str) -> Arc<Identity> {
    let (token, _) = pki
        .create_token("default", service, Duration::from_secs(600), 1)
        .await
        .unwrap();
    identity_with(pki, service, &token).await
}

/// A certificate for `service` through `token` (one of its uses): its own join lineage.
pub async fn identity_with(
    pki: &Pki,
    service: &str,
    token: &skein_identity::JoinToken,
) -> Arc<Identity> {
    let id = SpiffeId::new(pki.trust_domain(), "default", service).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let req = CertifyRequest {
        token: token.reveal(),
        csr_pem: key.csr(&id).unwrap(),
    };
    let resp = pki
        .certify(&req, None, Duration::from_secs(3600))
        .await
        .unwrap();
    let cert = WorkloadCert::new(key, &resp.chain_pem).unwrap();
    let roots = resp
        .trust_bundle
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Identity::new(&cert, roots, resp.ca_generation).unwrap()
}

/// An mTLS gRPC channel to the proxy API at `addr`, presenting `identity`, leaving from
/// `source` (the address registrations on it announce).
pub async fn channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: &Identity,
    source: std::net::IpAddr,
) -> tonic::transport::Channel {
    let control = skein_control::pki::control_identity(&pki.trust_domain()).unwrap();
    let tls = identity.client_config(&control).unwrap();
    skein_proxy::control::tls_channel(&addr.to_string(), tls, &control, Some(source))
        .await
        .unwrap()
}
