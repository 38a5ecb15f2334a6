//! Identity and mutual TLS end to end: a real control plane (CA, join tokens), real proxies
//! that obtain, present and renew certificates, and real TLS clients that try what an
//! attacker or a misconfigured client would.
//!
//! Addresses: 127.0.0.200–229.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use skein_control::server::{ControlOptions, RunningControl};
use skein_identity::tls::{bootstrap_client_config, client_config, CertResolver, TrustBundle};
use skein_identity::{CertificateAuthority, SpiffeId, WorkloadCert, WorkloadKey};
use skein_model::Protocol;
use skein_proxy::control::ControlConfig;
use skein_proxy::RunningProxy;
use skein_testkit::control::{eventually, ControlProcess, TempDir};
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod meshed;
use meshed::*;

/// A TCP relay on `listen` to `to` that records what the client sent.
async fn tap(listen: SocketAddr, to: SocketAddr) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(listen).await.unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = wo.shutdown().await;
                };
                let down = tokio::io::copy(&mut ro, &mut wi);
                let _ = tokio::join!(up, down);
            });
        }
    });
    seen
}

fn id(service: &str) -> SpiffeId {
    SpiffeId::new("skein.local", "default", service).unwrap()
}

/// A workload certificate for `service` from a CA of our own.
fn cert_from(ca: &CertificateAuthority, service: &str) -> WorkloadCert {
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issue(
            key.csr(&id(service)).unwrap(),
            &id(service),
            Duration::from_secs(3600),
        )
        .unwrap();
    WorkloadCert::new(key, &issued.chain_pem).unwrap()
}

/// A workload certificate for `service` from the mesh CA, through a join token, living
/// `ttl`.
async fn mesh_cert(control: &RunningControl, service: &str, ttl: Duration) -> WorkloadCert {
    let (token, _) = control
        .pki
        .create_token("default", service, Duration::from_secs(600), 1)
        .await
        .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let req = skein_api::v1::CertifyRequest {
        token: token.reveal(),
        csr_pem: key.csr(&id(service)).unwrap(),
    };
    let resp = control.pki.certify(&req, None, ttl).await.unwrap();
    WorkloadCert::new(key, &resp.chain_pem).unwrap()
}

#[tokio::test]
async fn the_wire_is_tls_and_strict_mode_refuses_everything_else() {
    skein_testkit::init_tracing();
    let data = TempDir::new("id-wire").unwrap();
    let control = control(200, data.path()).await;
    apply(&control, &service_yaml("web")).await;
    // Peers reach web through a tap that records what the caller's proxy sends.
    let tap_addr = SocketAddr::new(loopback(203), 4143);
    let inbound = SocketAddr::new(loopback(201), 4143);
    let captured = tap(tap_addr, inbound).await;
    // Issued now, expired by the time it is tried below.
    let expired = mesh_cert(&control, "client", Duration::from_secs(5)).await;
    let (backend, web) = workload(&control, 201, "web", Some(tap_addr)).await;
    let caller = client(&control, 202).await;
    let proxy = caller.addrs.http_proxy.unwrap();
    until_ok(proxy, &url("web", "warmup")).await;

    let secret = "secret-payload-7f3a";
    let (status, body) = get(proxy, &url("web", secret)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        backend.seen().iter().any(|r| r.path.contains(secret)),
        "the app got it"
    );
    let bytes = captured.lock().unwrap().clone();
    assert!(bytes.len() > 100, "the tap saw the connection");
    assert_eq!(
        &bytes[..2],
        &[0x16, 0x03],
        "begins with a TLS handshake record"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains(secret),
        "no application payload in clear text"
    );
    assert!(
        !text.contains("PRI * HTTP/2.0"),
        "not even the HTTP/2 preface"
    );

    // The server recorded the caller's verified identity.
    let metrics = web.ctx.metrics.encode();
    assert!(
        metric(
            &metrics,
            "skein_inbound_security_connections_total{security=\"mtls\"}"
        ) >= 1.0
    );

    // Strict mode: each of these is refused; the meshed peer keeps working.
    // 1. Plaintext: told why, then closed.
    let mut plain = TcpStream::connect(inbound).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("accepts only mutual TLS"), "{answer}");
    // 1b. Plaintext HTTP/2 (prior knowledge): the same refusal as an HTTP/2 response, and
    // to a gRPC call as UNAUTHENTICATED, which gRPC clients can show.
    {
        use http_body_util::BodyExt;
        let mut h2 = skein_testkit::client::h2(inbound).await.unwrap();
        let req = http::Request::get("http://web/").body(skein_proxy::http::empty());
        let resp = h2.send_request(req.unwrap()).await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["skein-error"], "mtls_required");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("accepts only mutual TLS"), "{body}");
        let mut h2 = skein_testkit::client::h2(inbound).await.unwrap();
        let req = http::Request::post("http://web/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(skein_proxy::http::empty());
        let resp = h2.send_request(req.unwrap()).await.unwrap();
        assert_eq!(resp.headers()["grpc-status"], "16", "{:?}", resp.headers());
        let message = resp.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("accepts only mutual TLS"), "{message}");
    }

    let roots: Vec<_> = CertificateDer::pem_slice_iter(control.pki.root_pem().as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let mesh_roots = TrustBundle::new(&roots).unwrap();
    // 2. A certificate from a foreign CA (same trust domain, another root).
    let foreign = CertificateAuthority::generate("skein.local").unwrap();
    let cert = cert_from(&foreign, "client");
    let cfg = client_config(
        CertResolver::new(&cert).unwrap(),
        mesh_roots.clone(),
        id("web"),
    )
    .unwrap();
    let e = tls_attempt(inbound, cfg, &id("web")).await.unwrap_err();
    assert!(!e.is_empty(), "foreign CA refused");
    // 3. An expired certificate from the mesh CA itself.
    while SystemTime::now() < expired.not_after() + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cfg = client_config(
        CertResolver::new(&expired).unwrap(),
        mesh_roots.clone(),
        id("web"),
    )
    .unwrap();
    let e = tls_attempt(inbound, cfg, &id("web")).await.unwrap_err();
    assert!(!e.is_empty(), "expired certificate refused");
    // 4. No client certificate at all (the client verifies the server by the root pin).
    let pin = skein_identity::ca_pin(&roots[0]);
    let cfg = bootstrap_client_config(&pin, id("web")).unwrap();
    let e = tls_attempt(inbound, cfg, &id("web")).await.unwrap_err();
    assert!(!e.is_empty(), "no client certificate refused");
    // A valid mesh certificate through the same path works (the checks above are real).
    let good = mesh_cert(&control, "client", Duration::from_secs(3600)).await;
    let cfg = client_config(CertResolver::new(&good).unwrap(), mesh_roots, id("web")).unwrap();
    tls_attempt(inbound, cfg, &id("web")).await.unwrap();

    let metrics = web.ctx.metrics.encode();
    assert!(
        metric(
            &metrics,
            "skein_inbound_security_connections_total{security=\"refused_plaintext\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "skein_inbound_security_connections_total{security=\"handshake_failed\"}"
        ) >= 3.0
    );
    assert_eq!(get(proxy, &url("web", "still")).await.unwrap().0, 200);
    assert!(web
        .ctx
        .identity
        .get()
        .unwrap()
        .status()
        .identity
        .ends_with("/sa/web"));
    drop((caller, web));
    control.shutdown().await;
}

#[tokio::test]
async fn a_token_for_evil_gets_no_restaurant_certificate_and_no_restaurant_traffic() {
    skein_testkit::init_tracing();
    let data = TempDir::new("id-evil").unwrap();
    let control = control(205, data.path()).await;
    // restaurant's endpoint is (by a declared Workload) evil's proxy: a hijacked address.
    let evil_inbound = SocketAddr::new(loopback(206), 4143);
    apply(
        &control,
        &format!(
            "{}---\napiVersion: skein.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: restaurant-1, labels: {{app: restaurant}}}}\n\
             spec: {{address: {}, inboundPort: 4143, ports: [{PORT}], serviceAccount: restaurant}}\n",
            service_yaml("restaurant"),
            evil_inbound.ip()
        ),
    )
    .await;

    // With a token for evil, a CSR for restaurant is refused.
    let evil_join = join(&control, "evil", evil_inbound).await;
    let e = skein_proxy::control::certify(&evil_join, &id("restaurant"))
        .await
        .unwrap_err();
    assert!(
        e.fatal
            && e.message
                .contains("the token is for spiffe://skein.local/ns/default/sa/evil"),
        "{e}"
    );

    // Evil runs a real proxy (its own identity) where restaurant is announced.
    let (evil_backend, _evil) = workload(&control, 206, "evil", None).await;
    let caller = client(&control, 207).await;
    caller.discover(&["restaurant"]).await.unwrap();
    let proxy = caller.addrs.http_proxy.unwrap();
    eventually("caller knows restaurant", SOON, async || {
        caller
            .ctx
            .config()
            .destinations
            .iter()
            .any(|d| d.service == "restaurant")
    })
    .await
    .unwrap();
    let (status, body) = get(proxy, &url("restaurant", "menu")).await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("presented spiffe://skein.local/ns/default/sa/evil, expected spiffe://skein.local/ns/default/sa/restaurant"),
        "the caller's verification says why: {body}"
    );
    assert_eq!(evil_backend.hits(), 0, "evil's app received nothing");
    control.shutdown().await;
}

#[tokio::test]
async fn expired_foreign_and_revoked_tokens_are_refused_with_reasons() {
    skein_testkit::init_tracing();
    let data = TempDir::new("id-tokens").unwrap();
    let control = control(208, data.path()).await;
    let advertise = SocketAddr::new(loopback(208), 4143);
    let admin = control.token.clone();

    // Expired.
    let short =
        skein_testkit::control::join_token_with(control.http, &admin, "default", "web", "1s")
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let cfg = ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise,
        token: short,
    };
    let e = skein_proxy::control::certify(&cfg, &id("web"))
        .await
        .unwrap_err();
    assert!(e.fatal && e.message.contains("expired at"), "{e}");

    // Revoked (with the CLI), then replayed.
    let join = join(&control, "web", advertise).await;
    skein_proxy::control::certify(&join, &id("web"))
        .await
        .expect("valid token works");
    let out = cli(&control, data.path(), &["token", "revoke", join.token.id()]).await;
    assert!(out.ok().contains("revoked"), "{out:?}");
    let e = skein_proxy::control::certify(&join, &id("web"))
        .await
        .unwrap_err();
    assert!(e.fatal && e.message.contains("was revoked at"), "{e}");

    // Another mesh's token: its CA pin does not match this control plane.
    let other_data = TempDir::new("id-tokens-other").unwrap();
    let other = RunningControl::start(ControlOptions {
        ca_import: Some(
            CertificateAuthority::generate("other.mesh")
                .unwrap()
                .to_pem_set(),
        ),
        ..ControlOptions::embedded(other_data.path(), loopback(209), "other")
    })
    .await
    .unwrap();
    let (foreign, _) = other
        .pki
        .create_token("default", "web", Duration::from_secs(600), 1)
        .await
        .unwrap();
    let cfg = ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise,
        token: foreign.clone(),
    };
    let e = skein_proxy::control::certify(
        &cfg,
        &SpiffeId::new("other.mesh", "default", "web").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        e.fatal
            && e.message
                .contains("does not end in the root the join token pins"),
        "{e}"
    );
    // The same token with this mesh's pin: the proxy expects a control plane of trust
    // domain other.mesh and refuses ours (fails closed before sending the token).
    let text = foreign.reveal();
    let ours = skein_identity::ca_pin(
        &CertificateDer::pem_slice_iter(control.pki.root_pem().as_bytes())
            .next()
            .unwrap()
            .unwrap(),
    );
    let forged: skein_identity::JoinToken = format!("{}:{ours}", text.rsplit_once(':').unwrap().0)
        .parse()
        .unwrap();
    let cfg = ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise,
        token: forged,
    };
    let e = skein_proxy::control::certify(
        &cfg,
        &SpiffeId::new("other.mesh", "default", "web").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        e.fatal
            && e.message
                .contains("expected spiffe://other.mesh/ns/skein-system/sa/skein-control"),
        "{e}"
    );
    other.shutdown().await;
    control.shutdown().await;
}

/// Sends requests through `proxy` until `stop`, counting successes and failures (bounded:
/// at most one request per 10 ms per worker).
fn load(
    proxy: SocketAddr,
    target: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinSet<()>,
) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (ok, failures, stop, target) =
            (ok.clone(), failures.clone(), stop.clone(), target.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match get(proxy, &target).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    (ok, failures, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_and_the_root_rotates_under_load_without_a_failed_request() {
    skein_testkit::init_tracing();
    let data = TempDir::new("id-rotate").unwrap();
    let control = control(210, data.path()).await;
    apply(
        &control,
        &format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{workloadCertTTL: 5s}}\n---\n{}",
            service_yaml("web")
        ),
    )
    .await;
    let (_backend, web) = workload(&control, 211, "web", None).await;
    let caller = client(&control, 212).await;
    let proxy = caller.addrs.http_proxy.unwrap();
    until_ok(proxy, &url("web", "warmup")).await;
    let first_serial = web.ctx.identity.get().unwrap().status().serial;

    // 60 s of steady traffic across ~15 renewals on each side.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failures, mut tasks) = load(proxy, url("web", "steady"), 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let renewed = |p: &RunningProxy| {
        metric(
            &p.ctx.metrics.encode(),
            "skein_identity_cert_requests_total{result=\"issued\"}",
        )
    };
    assert!(renewed(&web) >= 10.0, "web renewed {} times", renewed(&web));
    assert!(
        renewed(&caller) >= 10.0,
        "caller renewed {} times",
        renewed(&caller)
    );
    assert_ne!(
        web.ctx.identity.get().unwrap().status().serial,
        first_serial
    );

    // Root rotation with the CLI, traffic still flowing.
    let generation = control.pki.view().generation;
    let out = cli(&control, data.path(), &["ca", "rotate", "--timeout", "30s"]).await;
    let printed = out.ok().to_string();
    assert!(
        printed.contains("prepared")
            && printed.contains("switched")
            && printed.contains("finished"),
        "{printed}"
    );
    assert!(
        !printed.contains("going on after"),
        "every proxy kept up: {printed}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::SeqCst) > 1000,
        "traffic flowed: {}",
        ok.load(Ordering::SeqCst)
    );
    let view = control.pki.view();
    assert_eq!(view.generation, generation + 1);
    assert_eq!(view.bundle.len(), 1, "the old root left the bundle");
    for p in [&web, &caller] {
        let status = p.ctx.identity.get().unwrap().status();
        assert_eq!(status.ca_generation, generation + 1);
        assert_eq!(status.trusted_roots, 1);
    }
    drop((web, caller));
    control.shutdown().await;
}

#[tokio::test]
async fn with_the_control_plane_down_traffic_flows_until_expiry_then_fails_closed_and_recovers() {
    skein_testkit::init_tracing();
    let data = TempDir::new("id-down").unwrap();
    let http = SocketAddr::new(loopback(215), 19990);
    let grpc = SocketAddr::new(loopback(215), 19991);
    let mut cp = ControlProcess::start(Path::new(BIN), data.path(), http, grpc, &[])
        .await
        .unwrap();
    let mesh = format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{workloadCertTTL: 8s}}\n---\n{}---\n{}",
        service_yaml("web"),
        service_yaml("api")
    );
    let file = data.join("mesh.yaml");
    std::fs::write(&file, mesh).unwrap();
    cp.cli(&["apply", "-f", file.to_str().unwrap()]).await.ok();

    let start = async |host: u8, service: &str, with_app: bool| {
        let backend = HttpBackend::start(SocketAddr::new(loopback(host), PORT))
            .await
            .unwrap();
        let mut config = MeshSpec::new(host, host)
            .service(service, backend.addr(), Protocol::Http)
            .server_config();
        if !with_app {
            config = MeshSpec::new(host, host).client_config(SocketAddr::new(loopback(host), 1));
            config.destinations.clear();
            config.outbound.upstreams.clear();
        }
        config.workload.name = format!("{service}-1");
        config.workload.service = service.into();
        config.inbound.listen = SocketAddr::new(loopback(host), 4143);
        let join = ControlConfig {
            endpoint: grpc.to_string(),
            advertise: config.inbound.listen,
            token: cp.join_token(service).await.unwrap(),
        };
        (
            backend,
            RunningProxy::start_with_control(config, Some(join))
                .await
                .unwrap(),
        )
    };
    let (_web_app, web) = start(216, "web", true).await;
    let (api_app, api) = start(217, "api", true).await;
    let (_c, caller) = start(218, "client", false).await;
    let proxy = caller.addrs.http_proxy.unwrap();
    until_ok(proxy, &url("web", "before")).await;
    // The caller holds api (it has looked it up) but has never connected to it: its
    // first call after expiry is a new handshake.
    caller.discover(&["api"]).await.unwrap();

    // Down while certificates are valid: traffic continues.
    cp.signal("KILL").unwrap();
    cp.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert_eq!(get(proxy, &url("web", "down")).await.unwrap().0, 200);

    // Expired with the control plane still down: /ready is false, and a new handshake
    // (the first call to api) fails closed, saying why; api's app sees nothing.
    let identity = caller.ctx.identity.get().unwrap().clone();
    eventually(
        "caller's certificate expired",
        Duration::from_secs(20),
        async || !identity.is_valid(),
    )
    .await
    .unwrap();
    let ready =
        skein_testkit::client::curl(&["-s", &format!("http://{}/ready", caller.addrs.admin)])
            .await
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "not ready\n");
    let (status, body) = get(proxy, &url("api", "after-expiry")).await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("workload certificate expired"), "{body}");
    assert_eq!(
        api_app.hits(),
        0,
        "nothing reached api, in plaintext or otherwise"
    );
    eventually(
        "the expiry gauge goes negative",
        Duration::from_secs(5),
        async || {
            metric(
                &caller.ctx.metrics.encode(),
                "skein_identity_cert_expiry_seconds",
            ) < 0.0
        },
    )
    .await
    .unwrap();
    let metrics = caller.ctx.metrics.encode();
    assert!(
        metric(
            &metrics,
            "skein_identity_cert_requests_total{result=\"failed\"}"
        ) >= 1.0
    );

    // The control plane returns: renewals succeed and api is reachable.
    let _cp = ControlProcess::start(Path::new(BIN), data.path(), http, grpc, &[])
        .await
        .unwrap();
    eventually("caller renewed", Duration::from_secs(30), async || {
        identity.is_valid()
    })
    .await
    .unwrap();
    until_ok(proxy, &url("api", "recovered")).await;
    assert!(api_app.hits() >= 1);
    drop((web, api, caller));
}

#[tokio::test]
async fn permissive_serves_plaintext_from_outside_the_mesh_until_strict_and_shows_identities() {
    skein_testkit::init_tracing();
    let data = TempDir::new("id-permissive").unwrap();
    let control = control(219, data.path()).await;
    let mesh = |mode: &str| {
        format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{mtls: {mode}}}\n---\n{}",
            service_yaml("web")
        )
    };
    apply(&control, &mesh("permissive")).await;
    let (backend, web) = workload(&control, 220, "web", None).await;
    let meshed = client(&control, 221).await;
    let meshed_proxy = meshed.addrs.http_proxy.unwrap();
    until_ok(meshed_proxy, &url("web", "meshed")).await;

    // A proxy outside the mesh (static config, no certificate) speaks plaintext HTTP/2 to
    // web's inbound port: served under permissive, counted as plaintext.
    let web_inbound = web.addrs.inbound;
    let outsider_config = MeshSpec::new(222, 220)
        .service("web", SocketAddr::new(loopback(220), PORT), Protocol::Http)
        .client_config(web_inbound);
    let outsider = RunningProxy::start(outsider_config).await.unwrap();
    let outside = outsider.addrs.http_proxy.unwrap();
    let (status, body) = get(outside, &url("web", "from-outside")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(backend
        .seen()
        .iter()
        .any(|r| r.path.contains("from-outside")));
    let metrics = web.ctx.metrics.encode();
    let security = |kind: &str| {
        metric(
            &metrics,
            &format!("skein_inbound_security_connections_total{{security=\"{kind}\"}}"),
        )
    };
    assert!(security("plaintext") >= 1.0, "{metrics}");
    assert!(
        security("mtls") >= 1.0,
        "the meshed caller still used mutual TLS under permissive"
    );

    // /config shows the identity and its expiry, never the key.
    let config =
        skein_testkit::client::curl(&["-s", &format!("http://{}/config", web.addrs.admin)])
            .await
            .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    let shown = &config["identity"];
    assert_eq!(shown["identity"], "spiffe://skein.local/ns/default/sa/web");
    assert_eq!(shown["mtls"], "permissive");
    let not_after = shown["notAfterUnix"].as_i64().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(not_after > now, "{shown}");
    assert!(!config.to_string().contains("PRIVATE KEY"));
    // So does `skein get workloads`.
    let out = cli(&control, data.path(), &["get", "workloads"]).await;
    let table = out.ok();
    assert!(
        table.contains("IDENTITY") && table.contains("CERT EXPIRES"),
        "{table}"
    );
    let web_row = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("web-1"))
        .unwrap_or_else(|| panic!("no web-1 row: {table}"));
    assert!(
        web_row.contains("spiffe://skein.local/ns/default/sa/web"),
        "{web_row}"
    );
    let expires = shown["expires"].as_str().unwrap();
    assert!(
        web_row.contains(&expires[..16]),
        "the row shows the expiry the proxy reports ({expires}): {web_row}"
    );
    assert!(!table.contains("PRIVATE KEY"));

    // Strict again: the outsider is refused on its open connection and on new ones, the
    // app sees none of it, and the meshed caller is unaffected.
    apply(&control, &mesh("strict")).await;
    eventually(
        "plaintext refused after the switch to strict",
        SOON,
        async || matches!(get(outside, &url("web", "probe")).await, Ok((s, _)) if s != 200),
    )
    .await
    .unwrap();
    let before = backend.hits();
    for _ in 0..3 {
        let (status, body) = get(outside, &url("web", "after-strict")).await.unwrap();
        assert!(status == 403 || status == 502, "{status} {body}");
        if status == 403 {
            assert!(body.contains("accepts only mutual TLS"), "{body}");
        }
    }
    assert_eq!(backend.hits(), before, "the app saw no plaintext request");
    assert!(!backend
        .seen()
        .iter()
        .any(|r| r.path.contains("after-strict")));
    assert_eq!(
        get(meshed_proxy, &url("web", "still")).await.unwrap().0,
        200
    );
    drop((outsider, meshed, web));
    control.shutdown().await;
}

#[tokio::test]
async fn replicas_on_etcd_share_one_ca_and_follow_a_rotation_started_on_the_other() {
    skein_testkit::init_tracing();
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server); CI installs it");
        return;
    }
    let etcd = skein_testkit::etcd::Etcd::start().expect("start etcd");
    let store = format!("etcd://{}", etcd.endpoint());
    let (d1, d2) = (
        TempDir::new("id-r1").unwrap(),
        TempDir::new("id-r2").unwrap(),
    );
    let replica = async |octet: u8, dir: &Path, name: &str| {
        let any = SocketAddr::new(loopback(octet), 0);
        let key = skein_testkit::control::secrets_key_file(dir).unwrap();
        let key = key.to_str().unwrap();
        ControlProcess::start(
            Path::new(BIN),
            dir,
            any,
            any,
            &[
                "--store",
                &store,
                "--replica",
                name,
                "--secrets-key-file",
                key,
            ],
        )
        .await
        .expect("start a replica")
    };
    let r1 = replica(223, d1.path(), "r1").await;
    let r2 = replica(224, d2.path(), "r2").await;
    let show = async |r: &ControlProcess| r.cli(&["ca", "show"]).await.ok().to_string();
    let before = show(&r1).await;
    assert_eq!(before, show(&r2).await, "one CA for both replicas");
    assert!(before.contains("rotation:      idle"), "{before}");

    let file = d1.join("mesh.yaml");
    std::fs::write(&file, service_yaml("web")).unwrap();
    r1.cli(&["apply", "-f", file.to_str().unwrap()]).await.ok();
    // Tokens cross replicas: web's is made on r2 and used on r1, the caller's the reverse.
    let web_app = HttpBackend::start(SocketAddr::new(loopback(225), PORT))
        .await
        .unwrap();
    let mut config = MeshSpec::new(225, 225)
        .service("web", web_app.addr(), Protocol::Http)
        .server_config();
    config.workload.name = "web-1".into();
    config.workload.service = "web".into();
    config.inbound.listen = SocketAddr::new(loopback(225), 4143);
    let join = ControlConfig {
        endpoint: r1.grpc.to_string(),
        advertise: config.inbound.listen,
        token: r2.join_token("web").await.unwrap(),
    };
    let web = RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap();
    let mut config = MeshSpec::new(226, 226).client_config(SocketAddr::new(loopback(226), 1));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    config.inbound.listen = SocketAddr::new(loopback(226), 4143);
    let join = ControlConfig {
        endpoint: r2.grpc.to_string(),
        advertise: config.inbound.listen,
        token: r1.join_token("client").await.unwrap(),
    };
    let caller = RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap();
    let proxy = caller.addrs.http_proxy.unwrap();
    until_ok(proxy, &url("web", "across-replicas")).await;
    let generation = web.ctx.identity.get().unwrap().status().ca_generation;
    assert_eq!(
        caller.ctx.identity.get().unwrap().status().ca_generation,
        generation
    );

    // Rotate on r1: r2 follows through its watch, and so does the proxy it serves.
    let out = r1.cli(&["ca", "rotate", "--timeout", "20s"]).await;
    assert!(out.ok().contains("finished"), "{out:?}");
    eventually("r2 shows the new root alone", SOON, async || {
        let now = show(&r2).await;
        now.contains(&format!("generation:    {}", generation + 1))
            && now.contains("rotation:      idle")
            && now.matches("trusted root:").count() == 1
    })
    .await
    .unwrap();
    let after = show(&r2).await;
    assert_ne!(after, before);
    for (name, p) in [("web (on r1)", &web), ("caller (on r2)", &caller)] {
        eventually(
            &format!("{name} renewed from the new root"),
            SOON,
            async || {
                let status = p.ctx.identity.get().unwrap().status();
                status.ca_generation == generation + 1 && status.trusted_roots == 1
            },
        )
        .await
        .unwrap();
    }
    // A new proxy-to-proxy connection, both certificates from the new root, works.
    let fresh_caller = {
        let mut config = MeshSpec::new(227, 227).client_config(SocketAddr::new(loopback(227), 1));
        config.destinations.clear();
        config.outbound.upstreams.clear();
        config.inbound.listen = SocketAddr::new(loopback(227), 4143);
        config.workload.name = "client-2".into();
        let join = ControlConfig {
            endpoint: r2.grpc.to_string(),
            advertise: config.inbound.listen,
            token: r2.join_token("client").await.unwrap(),
        };
        RunningProxy::start_with_control(config, Some(join))
            .await
            .unwrap()
    };
    until_ok(
        fresh_caller.addrs.http_proxy.unwrap(),
        &url("web", "new-root"),
    )
    .await;
    assert_eq!(get(proxy, &url("web", "still")).await.unwrap().0, 200);
    drop((fresh_caller, caller, web, r1, r2, etcd));
}
