//! Handshake tests: real TLS over real loopback TCP sockets with tokio-rustls.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{client::TlsStream, TlsAcceptor, TlsConnector};

use super::*;
use crate::workload::CertInfo;
use crate::{CertificateAuthority, WorkloadKey, DEFAULT_WORKLOAD_TTL};

fn id(account: &str) -> SpiffeId {
    SpiffeId::new("skein.local", "default", account).unwrap()
}

fn workload_cert(ca: &CertificateAuthority, account: &str) -> WorkloadCert {
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(
            key.csr(&id(account)).unwrap(),
            &id(account),
            DEFAULT_WORKLOAD_TTL,
        )
        .unwrap();
    WorkloadCert::new(key, &issued.chain_pem).unwrap()
}

fn expired_cert(ca: &CertificateAuthority, account: &str) -> WorkloadCert {
    let key = WorkloadKey::generate().unwrap();
    let now = SystemTime::now();
    let issued = ca
        .issue_with_validity(
            key.csr(&id(account)).unwrap(),
            &id(account),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    WorkloadCert::new(key, &issued.chain_pem).unwrap()
}

/// A workload's TLS side: its resolver and bundle.
struct Side {
    resolver: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
}

fn side(cert: &WorkloadCert, ca: &CertificateAuthority) -> Side {
    Side {
        resolver: CertResolver::new(cert).unwrap(),
        bundle: TrustBundle::new(&ca.trust_bundle()).unwrap(),
    }
}

/// What the server learned about one accepted connection.
#[derive(Debug)]
struct Accepted {
    peer: Option<SpiffeId>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

/// Accepts TLS connections on 127.0.0.1, reports each handshake's outcome, then echoes.
async fn start_server(
    config: Arc<ServerConfig>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<Accepted, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(e) => return drop(tx.send(Err(e.to_string()))),
                };
                let conn = stream.get_ref().1;
                let _ = tx.send(Ok(Accepted {
                    peer: peer_identity(conn),
                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    version: conn.protocol_version(),
                }));
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    expected: &SpiffeId,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(server_name(expected).unwrap(), tcp)
        .await
}

async fn ping(stream: &mut TlsStream<TcpStream>) -> std::io::Result<()> {
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

async fn server_outcome(
    rx: &mut mpsc::UnboundedReceiver<Result<Accepted, String>>,
) -> Result<Accepted, String> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("server reported in time")
        .expect("server task alive")
}

fn leaf_serial(stream: &TlsStream<TcpStream>) -> String {
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    CertInfo::parse(&certs[0]).unwrap().serial
}

#[tokio::test]
async fn mutual_handshake_sees_both_identities_over_h2_tls13() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let (server_cert, client_cert) = (
        workload_cert(&ca, "restaurant"),
        workload_cert(&ca, "reservation"),
    );
    let server = side(&server_cert, &ca);
    let client = side(&client_cert, &ca);
    let (addr, mut rx) = start_server(server_config(server.resolver, server.bundle).unwrap()).await;

    let cfg = client_config(client.resolver, client.bundle, id("restaurant")).unwrap();
    let mut stream = connect(addr, cfg, &id("restaurant")).await.unwrap();
    ping(&mut stream).await.unwrap();
    let conn = stream.get_ref().1;
    assert_eq!(peer_identity(conn), Some(id("restaurant")));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let accepted = server_outcome(&mut rx).await.unwrap();
    assert_eq!(accepted.peer, Some(id("reservation")));
    assert_eq!(accepted.alpn.as_deref(), Some(ALPN_H2));
    assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let server = side(&workload_cert(&ca, "restaurant"), &ca);
    let (addr, mut rx) =
        start_server(server_config(server.resolver, server.bundle.clone()).unwrap()).await;

    let verifier = Arc::new(MeshServerVerifier {
        anchors: Anchors::Bundle(server.bundle),
        expected: id("restaurant"),
        algs: provider().signature_verification_algorithms,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // In TLS 1.3 the client finishes first; the refusal shows on its first read.
    let outcome = async {
        let mut stream = connect(addr, Arc::new(cfg), &id("restaurant")).await?;
        ping(&mut stream).await
    };
    assert!(outcome.await.is_err());
    let err = server_outcome(&mut rx).await.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn client_from_a_foreign_ca_is_refused() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let foreign = CertificateAuthority::generate("skein.local").unwrap();
    let server = side(&workload_cert(&ca, "restaurant"), &ca);
    let (addr, mut rx) = start_server(server_config(server.resolver, server.bundle).unwrap()).await;

    // The intruder trusts our root (so it would accept the server) but its cert is foreign.
    let intruder = side(&workload_cert(&foreign, "reservation"), &ca);
    let cfg = client_config(intruder.resolver, intruder.bundle, id("restaurant")).unwrap();
    let outcome = async {
        let mut stream = connect(addr, cfg, &id("restaurant")).await?;
        ping(&mut stream).await
    };
    assert!(outcome.await.is_err());
    let err = server_outcome(&mut rx).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let server = side(&workload_cert(&ca, "restaurant"), &ca);
    let (addr, mut rx) = start_server(server_config(server.resolver, server.bundle).unwrap()).await;

    let expired_client = side(&expired_cert(&ca, "reservation"), &ca);
    let cfg = client_config(
        expired_client.resolver,
        expired_client.bundle,
        id("restaurant"),
    )
    .unwrap();
    let outcome = async {
        let mut stream = connect(addr, cfg, &id("restaurant")).await?;
        ping(&mut stream).await
    };
    assert!(outcome.await.is_err());
    let err = server_outcome(&mut rx).await.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");

    let expired_server = side(&expired_cert(&ca, "restaurant"), &ca);
    let (addr, _rx) =
        start_server(server_config(expired_server.resolver, expired_server.bundle).unwrap()).await;
    let client = side(&workload_cert(&ca, "reservation"), &ca);
    let cfg = client_config(client.resolver, client.bundle, id("restaurant")).unwrap();
    let err = connect(addr, cfg, &id("restaurant"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn server_with_the_wrong_identity_is_refused_with_both_names() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let evil = side(&workload_cert(&ca, "evil"), &ca);
    let (addr, _rx) = start_server(server_config(evil.resolver, evil.bundle).unwrap()).await;

    let client = side(&workload_cert(&ca, "reservation"), &ca);
    let cfg = client_config(client.resolver, client.bundle, id("restaurant")).unwrap();
    let err = connect(addr, cfg, &id("restaurant"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "peer presented spiffe://skein.local/ns/default/sa/evil, \
             expected spiffe://skein.local/ns/default/sa/restaurant"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn swapped_certificate_serves_new_handshakes_and_old_connections_keep_working() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let first = workload_cert(&ca, "restaurant");
    let server = side(&first, &ca);
    let resolver = server.resolver.clone();
    let (addr, mut rx) = start_server(server_config(server.resolver, server.bundle).unwrap()).await;
    let client = side(&workload_cert(&ca, "reservation"), &ca);
    let cfg = client_config(client.resolver, client.bundle, id("restaurant")).unwrap();

    let mut old = connect(addr, cfg.clone(), &id("restaurant")).await.unwrap();
    ping(&mut old).await.unwrap();
    assert_eq!(leaf_serial(&old), first.serial());
    server_outcome(&mut rx).await.unwrap();

    let second = workload_cert(&ca, "restaurant");
    assert_ne!(second.serial(), first.serial());
    resolver.store(&second).unwrap();

    let mut new = connect(addr, cfg, &id("restaurant")).await.unwrap();
    ping(&mut new).await.unwrap();
    assert_eq!(leaf_serial(&new), second.serial());
    let new_leaf = &new.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(
        CertInfo::parse(new_leaf).unwrap().not_after,
        second.not_after()
    );
    server_outcome(&mut rx).await.unwrap();

    // The connection made before the swap still carries traffic on the old certificate.
    ping(&mut old).await.unwrap();
    assert_eq!(leaf_serial(&old), first.serial());
}

#[tokio::test]
async fn swapped_trust_bundle_admits_a_rotated_root() {
    let old_ca = CertificateAuthority::generate("skein.local").unwrap();
    let mut new_ca = CertificateAuthority::generate("skein.local").unwrap();
    let server = side(&workload_cert(&old_ca, "restaurant"), &old_ca);
    let server_bundle = server.bundle.clone();
    let (addr, mut rx) = start_server(server_config(server.resolver, server.bundle).unwrap()).await;

    // A client re-issued from the new root, trusting both roots.
    new_ca.add_trusted_root(old_ca.root_cert().clone()).unwrap();
    let client = side(&workload_cert(&new_ca, "reservation"), &new_ca);
    assert_eq!(client.bundle.len(), 2);
    let cfg = client_config(client.resolver, client.bundle, id("restaurant")).unwrap();

    let refused = async {
        let mut stream = connect(addr, cfg.clone(), &id("restaurant")).await?;
        ping(&mut stream).await
    };
    assert!(refused.await.is_err());
    assert!(
        server_outcome(&mut rx).await.is_err(),
        "new root not yet trusted"
    );

    server_bundle.store(&new_ca.trust_bundle()).unwrap();
    let mut stream = connect(addr, cfg, &id("restaurant")).await.unwrap();
    ping(&mut stream).await.unwrap();
    assert_eq!(
        server_outcome(&mut rx).await.unwrap().peer,
        Some(id("reservation"))
    );
}

#[test]
fn empty_trust_bundle_is_refused() {
    let err = TrustBundle::new(&[]).unwrap_err().to_string();
    assert!(err.contains("trust bundle is empty"), "{err}");
}

/// The control plane's side: its chain carries the root, so a proxy can check the pin.
fn control_side(ca: &CertificateAuthority) -> (Side, SpiffeId) {
    let control = SpiffeId::new("skein.local", "skein-system", "skein-control").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(key.csr(&control).unwrap(), &control, DEFAULT_WORKLOAD_TTL)
        .unwrap();
    let chain = format!("{}{}", issued.chain_pem, ca.root_cert_pem());
    let cert = WorkloadCert::new(key, &chain).unwrap();
    (side(&cert, ca), control)
}

#[tokio::test]
async fn bootstrap_trusts_only_the_pinned_root_and_needs_no_client_cert() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let (control, control_id) = control_side(&ca);
    let (addr, mut rx) =
        start_server(control_server_config(control.resolver, control.bundle).unwrap()).await;

    // Right pin, no client certificate: accepted, and the server sees no identity.
    let pin = crate::ca_pin(ca.root_cert());
    let cfg = bootstrap_client_config(&pin, control_id.clone()).unwrap();
    let mut s = connect(addr, cfg, &control_id).await.unwrap();
    ping(&mut s).await.unwrap();
    assert_eq!(server_outcome(&mut rx).await.unwrap().peer, None);

    // A mesh workload's certificate is verified and its identity seen.
    let web = workload_cert(&ca, "web");
    let web = side(&web, &ca);
    let cfg = client_config(web.resolver, web.bundle, control_id.clone()).unwrap();
    let mut s = connect(addr, cfg, &control_id).await.unwrap();
    ping(&mut s).await.unwrap();
    assert_eq!(server_outcome(&mut rx).await.unwrap().peer, Some(id("web")));

    // A token pinning another CA's root: refused, saying why.
    let other = CertificateAuthority::generate("skein.local").unwrap();
    let cfg =
        bootstrap_client_config(&crate::ca_pin(other.root_cert()), control_id.clone()).unwrap();
    let err = connect(addr, cfg, &control_id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not end in the root the join token pins"),
        "{err}"
    );

    // The right root but the wrong identity (not the control plane): refused.
    let cfg = bootstrap_client_config(&pin, id("web")).unwrap();
    let err = connect(addr, cfg, &id("web"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected spiffe://skein.local/ns/default/sa/web"),
        "{err}"
    );
}

fn lineage_cert(ca: &CertificateAuthority, account: &str, lineage: &str) -> WorkloadCert {
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue_in_lineage(
            key.csr(&id(account)).unwrap(),
            &id(account),
            DEFAULT_WORKLOAD_TTL,
            lineage,
        )
        .unwrap();
    let cert = WorkloadCert::new(key, &issued.chain_pem).unwrap();
    assert_eq!(
        crate::lineage_of(&cert.chain()[0]).as_deref(),
        Some(lineage),
        "the certificate records its lineage"
    );
    cert
}

#[tokio::test]
async fn revoked_lineages_are_refused_at_the_handshake_on_both_sides() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let server = side(&lineage_cert(&ca, "restaurant", "aa.1"), &ca);
    let server_bundle = server.bundle.clone();
    let (addr, mut rx) = start_server(server_config(server.resolver, server.bundle).unwrap()).await;
    let client = side(&lineage_cert(&ca, "reservation", "bb.3"), &ca);
    let client_bundle = client.bundle.clone();
    let cfg = client_config(client.resolver, client.bundle, id("restaurant")).unwrap();
    let mut ok = connect(addr, cfg.clone(), &id("restaurant")).await.unwrap();
    ping(&mut ok).await.unwrap();
    server_outcome(&mut rx).await.unwrap();

    // The server denies the client's whole token: the next handshake fails, naming it;
    // the open connection is not this layer's business.
    assert!(server_bundle.store_denied(DenyList::new(vec!["bb".into()]).unwrap()));
    assert!(
        !server_bundle.store_denied(DenyList::new(vec!["bb".into()]).unwrap()),
        "unchanged"
    );
    let attempt = async {
        let mut s = connect(addr, cfg.clone(), &id("restaurant")).await?;
        ping(&mut s).await
    };
    assert!(attempt.await.is_err());
    let err = server_outcome(&mut rx).await.unwrap_err();
    assert!(err.contains("(join lineage bb.3) was revoked"), "{err}");
    ping(&mut ok).await.unwrap();

    // The client denies the server's lineage: it refuses to send to it.
    server_bundle.store_denied(DenyList::default());
    client_bundle.store_denied(DenyList::new(vec!["aa.1".into()]).unwrap());
    let err = connect(addr, cfg, &id("restaurant"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "spiffe://skein.local/ns/default/sa/restaurant (join lineage aa.1) was revoked"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_control_plane_accepts_an_expired_mesh_certificate_but_not_a_foreign_one() {
    let ca = CertificateAuthority::generate("skein.local").unwrap();
    let (control, control_id) = control_side(&ca);
    let (addr, mut rx) =
        start_server(control_server_config(control.resolver, control.bundle).unwrap()).await;
    // Expired a few seconds ago (within the intermediate's life, as a real one would be).
    let key = WorkloadKey::generate().unwrap();
    let now = SystemTime::now();
    let issued = ca
        .issue_with_validity(
            key.csr(&id("web")).unwrap(),
            &id("web"),
            now - Duration::from_secs(30),
            now - Duration::from_secs(5),
        )
        .unwrap();
    let expired = side(&WorkloadCert::new(key, &issued.chain_pem).unwrap(), &ca);
    let cfg = client_config(expired.resolver, expired.bundle, control_id.clone()).unwrap();
    let mut s = connect(addr, cfg, &control_id).await.unwrap();
    ping(&mut s).await.unwrap();
    assert_eq!(server_outcome(&mut rx).await.unwrap().peer, Some(id("web")));

    // Expired and from a foreign CA: still refused.
    let foreign = CertificateAuthority::generate("skein.local").unwrap();
    let stranger = side(&expired_cert(&foreign, "web"), &ca);
    let cfg = client_config(stranger.resolver, stranger.bundle, control_id.clone()).unwrap();
    let attempt = async {
        let mut s = connect(addr, cfg, &control_id).await?;
        ping(&mut s).await
    };
    assert!(attempt.await.is_err());
    let err = server_outcome(&mut rx).await.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
}
