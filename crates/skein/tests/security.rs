//! Attacks on a live mesh, as a holder of a join token for one service would try them:
//! each attack, the refusal the attacker sees, and legitimate traffic going on untouched
//! (zero failed requests for the real workload) throughout.
//!
//! Addresses: 127.0.0.181–199 and 141–143.

mod meshed;

use futures_util::StreamExt;
use meshed::*;
use skein_api::v1::proxy_control_client::ProxyControlClient;
use skein_api::v1::{proxy_message, ProxyMessage, Register, Snapshot};
use skein_control::server::RunningControl;
use skein_identity::SpiffeId;
use skein_testkit::control::{eventually, TempDir};
use skein_testkit::loopback;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A steady GET loop from `proxy` to `url` until stopped (at most 3,000 requests or 90 s),
/// counting successes and failures; the first failure is kept to explain itself.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_failure: Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: SocketAddr, url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let first_failure = Arc::new(std::sync::Mutex::new(None));
        let (s, o, f, first) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            first_failure.clone(),
        );
        let task = tokio::spawn(async move {
            let started = Instant::now();
            for _ in 0..3000 {
                if s.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                match get(proxy, &url).await {
                    Ok((200, _)) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        f.fetch_add(1, Ordering::SeqCst);
                        first.lock().unwrap().get_or_insert(format!("{other:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Load {
            stop,
            ok,
            failed,
            first_failure,
            task,
        }
    }

    /// Lets at least 50 requests through, stops the loop, and asserts that every request
    /// succeeded.
    async fn finish_without_failures(self) -> usize {
        let ok = self.ok.clone();
        let _ = eventually("50 requests of steady load", SOON, async || {
            ok.load(Ordering::SeqCst) >= 50
        })
        .await;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let (ok, failed) = (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        );
        assert_eq!(
            failed,
            0,
            "legitimate requests failed during the attacks ({ok} succeeded); first: {:?}",
            self.first_failure.lock().unwrap()
        );
        assert!(ok >= 50, "the load ran ({ok} requests)");
        ok
    }
}

fn spiffe(service: &str) -> SpiffeId {
    SpiffeId::new("skein.local", "default", service).unwrap()
}

/// What a proxy holding a join token for `service` gets when it opens a `Sync` stream from
/// `source` and registers `register`: the first snapshot, or the refusal. The stream is
/// kept open (by the returned sender) while the caller holds it.
async fn register_as(
    control: &RunningControl,
    service: &str,
    source: IpAddr,
    register: Register,
) -> Result<
    (
        Snapshot,
        tokio::sync::mpsc::Sender<ProxyMessage>,
        tonic::Streaming<Snapshot>,
    ),
    tonic::Status,
> {
    let join = join(control, service, SocketAddr::new(source, 4143)).await;
    let identity = skein_proxy::control::certify(&join, &spiffe(service))
        .await
        .expect("the token gets its own service's certificate");
    let control_id = skein_proxy::control::control_identity(&join.token).unwrap();
    let tls = identity.client_config(&control_id).unwrap();
    let channel = skein_proxy::control::tls_channel(
        &control.grpc.to_string(),
        tls,
        &control_id,
        Some(source),
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ProxyMessage {
        message: Some(proxy_message::Message::Register(register)),
    })
    .await
    .unwrap();
    let outgoing = tokio_stream_from(rx);
    let mut snapshots = ProxyControlClient::new(channel)
        .sync(outgoing)
        .await?
        .into_inner();
    let first = snapshots
        .next()
        .await
        .unwrap_or_else(|| Err(tonic::Status::aborted("stream ended")))?;
    Ok((first, tx, snapshots))
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<ProxyMessage>,
) -> impl futures_util::Stream<Item = ProxyMessage> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

fn registration(workload: &str, service: &str, address: IpAddr, app: &str) -> Register {
    Register {
        workload: workload.into(),
        namespace: "default".into(),
        service: service.into(),
        labels: HashMap::from([("app".to_string(), app.to_string())]),
        address: address.to_string(),
        inbound_port: 4143,
        app_ports: vec![u32::from(PORT)],
        last_version: 0,
        admin_address: String::new(),
        ..Default::default()
    }
}

/// Registers `register` with a token for `service` from `source`, expecting a refusal
/// with `code` whose message contains `says`.
async fn refused(
    control: &RunningControl,
    service: &str,
    source: IpAddr,
    register: Register,
    code: tonic::Code,
    says: &str,
) {
    let e = register_as(control, service, source, register)
        .await
        .err()
        .unwrap_or_else(|| panic!("the registration was accepted; expected {code:?}"));
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(says), "{}", e.message());
}

#[tokio::test]
async fn a_token_for_one_service_cannot_take_over_another_services_workloads() {
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-hijack").unwrap();
    let control = control(181, data.path()).await;
    // web, plus a declared record web-2 running as web (labelled so that it is no endpoint:
    // nothing listens at its address).
    apply(
        &control,
        &format!(
            "{}---\napiVersion: skein.dev/v1alpha1\nkind: Workload\n\
             metadata: {{name: web-2, labels: {{app: web-legacy}}}}\n\
             spec: {{address: 127.0.0.189, ports: [{PORT}], serviceAccount: web}}\n",
            service_yaml("web")
        ),
    )
    .await;
    let (web_app, _web) = workload(&control, 182, "web", None).await;
    let caller = client(&control, 183).await;
    let proxy = caller.addrs.http_proxy.unwrap();
    until_ok(proxy, &url("web", "warmup")).await;
    let load = Load::start(proxy, url("web", "steady"));
    let evil_ip = loopback(184);

    // 1. Evil registers web's live workload name with web's labels.
    let as_evil = |name: &str, address: IpAddr| registration(name, "evil", address, "web");
    refused(
        &control,
        "evil",
        evil_ip,
        as_evil("web-1", evil_ip),
        tonic::Code::AlreadyExists,
        "workload default/web-1 is held by another live proxy connection",
    )
    .await;
    // 2. Evil registers the name of web's declared (disconnected) workload.
    refused(
        &control,
        "evil",
        evil_ip,
        as_evil("web-2", evil_ip),
        tonic::Code::FailedPrecondition,
        "workload default/web-2 belongs to service account \"web\"; this proxy's certificate is for account \"evil\"",
    )
    .await;
    // 3. Evil announces web's address under a name of its own.
    refused(
        &control,
        "evil",
        evil_ip,
        as_evil("evil-2", loopback(182)),
        tonic::Code::PermissionDenied,
        "Register.address 127.0.0.182 is not the address this proxy connects from (127.0.0.184)",
    )
    .await;

    // 4. Evil joins properly, as itself, wearing web's labels: it becomes a workload, but
    //    never an endpoint of web.
    let (evil_app, _evil) =
        workload_as(&control, 184, "evil-1", "evil", &[("app", "web")], None).await;
    eventually("evil-1 registered", SOON, async || {
        control
            .connections
            .list()
            .iter()
            .any(|c| c.workload == "evil-1")
    })
    .await
    .unwrap();
    let web = caller.ctx.config();
    let web = web
        .destinations
        .iter()
        .find(|d| d.service == "web")
        .unwrap();
    let endpoints: Vec<_> = web.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(
        endpoints,
        [SocketAddr::new(loopback(182), 4143)],
        "web's only endpoint is the real one"
    );
    assert_eq!(web.identities, ["spiffe://skein.local/ns/default/sa/web"]);
    for i in 0..20 {
        let (status, body) = get(proxy, &url("web", &format!("after-{i}")))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let served = load.finish_without_failures().await;
    assert_eq!(
        evil_app.hits(),
        0,
        "evil's app received none of web's requests"
    );
    assert!(
        web_app.hits() >= served + 20,
        "the real web served them all"
    );

    // The records say who runs what.
    let table = cli(&control, data.path(), &["get", "workloads"]).await;
    let rows: Vec<&str> = table.ok().lines().collect();
    assert!(rows[0].contains("ACCOUNT"), "{rows:?}");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.split_whitespace().nth(1) == Some(name))
            .map(|r| r.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row for {name}: {rows:?}"))
    };
    assert_eq!(row("web-1")[3], "web", "{rows:?}");
    assert_eq!(row("web-2")[3], "web", "{rows:?}");
    assert_eq!(row("evil-1")[3], "evil", "{rows:?}");
    control.shutdown().await;
}

/// A fresh join token for `service` made through the CLI; (its text, what the CLI said on
/// stderr).
async fn cli_token(
    control: &RunningControl,
    data: &std::path::Path,
    service: &str,
    extra: &[&str],
) -> (skein_identity::JoinToken, String) {
    let args = [&["token", "create", "--service", service][..], extra].concat();
    let out = cli(control, data, &args).await;
    let token = out.ok().trim().parse().expect("the CLI prints the token");
    (token, out.stderr.clone())
}

fn join_with(
    control: &RunningControl,
    token: &skein_identity::JoinToken,
    host: u8,
) -> skein_proxy::control::ControlConfig {
    skein_proxy::control::ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise: SocketAddr::new(loopback(host), 4143),
        token: token.clone(),
    }
}

#[tokio::test]
async fn join_tokens_are_single_use_short_lived_and_say_when_they_name_no_service() {
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-tokens").unwrap();
    let control = control(185, data.path()).await;
    apply(&control, &service_yaml("web")).await;

    // Default: one join, then refused for good (the proxy would give up, not retry).
    let (once, said) = cli_token(&control, data.path(), "web", &[]).await;
    assert!(said.contains("one proxy may join with it"), "{said}");
    assert!(!said.contains("warning"), "web exists: {said}");
    skein_proxy::control::certify(&join_with(&control, &once, 185), &spiffe("web"))
        .await
        .expect("the first join");
    let e = skein_proxy::control::certify(&join_with(&control, &once, 186), &spiffe("web"))
        .await
        .unwrap_err();
    assert!(e.fatal, "{e}");
    assert!(
        e.message.contains(&format!(
            "join token {} is used up (1 of 1 joins; tokens are single-use unless created with --uses N)",
            once.id()
        )),
        "{e}"
    );

    // --uses 3: three joins, each its own lineage; the fourth is refused.
    let (fleet, said) = cli_token(&control, data.path(), "web", &["--uses", "3"]).await;
    assert!(said.contains("3 proxies may join with it"), "{said}");
    let mut lineages = Vec::new();
    for host in [187, 188, 189] {
        let identity =
            skein_proxy::control::certify(&join_with(&control, &fleet, host), &spiffe("web"))
                .await
                .unwrap();
        lineages.push(identity.status().lineage.unwrap_or_default());
    }
    lineages.sort();
    let id = fleet.id();
    assert_eq!(
        lineages,
        [format!("{id}.1"), format!("{id}.2"), format!("{id}.3")]
    );
    let e = skein_proxy::control::certify(&join_with(&control, &fleet, 190), &spiffe("web"))
        .await
        .unwrap_err();
    assert!(
        e.fatal && e.message.contains("is used up (3 of 3 joins"),
        "{e}"
    );

    // Tokens live an hour unless told otherwise; the list shows their uses.
    let list = cli(&control, data.path(), &["token", "list"]).await;
    let row = list
        .ok()
        .lines()
        .find(|l| l.starts_with(once.id()))
        .unwrap()
        .to_string();
    assert!(row.contains(" 1/1 "), "{row}");
    let tokens = control.pki.list_tokens().await.unwrap();
    let record = tokens.iter().find(|t| t.id == once.id()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (3590..=3600).contains(&(record.expires_unix - now)),
        "default lifetime 1h: {record:?}"
    );

    // A token for a Service that does not exist is made, with a warning.
    let (_, said) = cli_token(&control, data.path(), "wbe", &[]).await;
    assert!(
        said.contains("warning: no Service default/wbe exists yet"),
        "{said}"
    );
    control.shutdown().await;
}

#[tokio::test]
async fn etcd_replicas_seal_the_ca_and_admin_token_and_race_a_single_use_token_once() {
    skein_testkit::init_tracing();
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server); CI installs it");
        return;
    }
    let etcd = skein_testkit::etcd::Etcd::start().expect("start etcd");
    let (d1, d2) = (
        TempDir::new("sec-race-1").unwrap(),
        TempDir::new("sec-race-2").unwrap(),
    );
    let key: skein_control::secrets::SecretsKey =
        skein_testkit::control::TEST_SECRETS_KEY.parse().unwrap();
    let replica =
        |octet: u8, dir: &std::path::Path, name: &str| skein_control::server::ControlOptions {
            store: skein_control::server::StoreChoice::Etcd {
                endpoints: vec![etcd.endpoint()],
                prefix: "/skein/".into(),
            },
            secrets_key: Some(key.clone()),
            ..skein_control::server::ControlOptions::embedded(dir, loopback(octet), name)
        };
    let r1 = RunningControl::start(replica(191, d1.path(), "r1"))
        .await
        .unwrap();
    let r2 = RunningControl::start(replica(192, d2.path(), "r2"))
        .await
        .unwrap();

    // What etcd holds of the CA and the admin token is sealed: no key, no token in it.
    let raw = skein_control::store::etcd::EtcdStore::connect(&[etcd.endpoint()], "/skein/")
        .await
        .unwrap();
    let (secrets, _) = skein_control::store::Store::list(&raw, "secrets/")
        .await
        .unwrap();
    for name in ["secrets/ca", "secrets/admin-token"] {
        let value = &secrets.iter().find(|e| e.key == name).unwrap().value;
        assert!(
            value.starts_with(skein_control::secrets::MAGIC),
            "{name} is sealed"
        );
        let text = String::from_utf8_lossy(value);
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains(&r1.token),
            "{name}: {text}"
        );
    }
    // A replica without the key, or with another one, refuses to start, saying why.
    let d3 = TempDir::new("sec-race-3").unwrap();
    let mut keyless = replica(192, d3.path(), "r3");
    keyless.secrets_key = None;
    let e = RunningControl::start(keyless)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--store etcd needs a secrets key"), "{e}");
    let mut wrong = replica(192, d3.path(), "r3");
    wrong.secrets_key = Some("ab".repeat(32).parse().unwrap());
    let e = RunningControl::start(wrong)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("sealed with another key"), "{e}");
    // Ten single-use tokens, each raced by two proxies, one through each replica.
    let mut won = 0;
    for _ in 0..10 {
        let (token, _) = r1
            .pki
            .create_token("default", "web", Duration::from_secs(600), 1)
            .await
            .unwrap();
        let (via1, via2, web) = (
            join_with(&r1, &token, 191),
            join_with(&r2, &token, 192),
            spiffe("web"),
        );
        let (a, b) = tokio::join!(
            skein_proxy::control::certify(&via1, &web),
            skein_proxy::control::certify(&via2, &web),
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "exactly one of the two joins: {:?} / {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        );
        let lost = a.err().or(b.err()).unwrap();
        assert!(lost.fatal && lost.message.contains("is used up"), "{lost}");
        won += 1;
    }
    assert_eq!(won, 10);
    r1.shutdown().await;
    r2.shutdown().await;
    drop(etcd);
}

#[tokio::test]
async fn a_revoked_workload_is_out_of_the_mesh_at_once_and_callers_never_notice() {
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-revoke").unwrap();
    let control = control(193, data.path()).await;
    apply(&control, &service_yaml("web")).await;
    // Two replicas of web joined with one token (--uses 3): lineages <id>.1 and <id>.2.
    let (token, _) = control
        .pki
        .create_token("default", "web", Duration::from_secs(600), 3)
        .await
        .unwrap();
    let (_app1, web1) = workload_with(194, "web-1", "web", join_with(&control, &token, 194)).await;
    let (app2, web2) = workload_with(195, "web-2", "web", join_with(&control, &token, 195)).await;
    let caller = client(&control, 196).await;
    caller.discover(&["web"]).await.unwrap();
    let proxy = caller.addrs.http_proxy.unwrap();
    let endpoints = || {
        let config = caller.ctx.config();
        config
            .destinations
            .iter()
            .find(|d| d.service == "web")
            .map_or(0, |d| d.endpoints.len())
    };
    eventually("caller knows both endpoints", SOON, async || {
        endpoints() == 2
    })
    .await
    .unwrap();
    until_ok(proxy, &url("web", "warmup")).await;
    let load = Load::start(proxy, url("web", "steady"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Revoke web-2 alone.
    let lineage2 = web2.ctx.identity.get().unwrap().status().lineage.unwrap();
    // The two joined at the same time: either may have taken the first use.
    let id = token.id();
    assert!(
        [format!("{id}.1"), format!("{id}.2")].contains(&lineage2),
        "{lineage2}"
    );
    let out = cli(&control, data.path(), &["workload", "revoke", "web-2"]).await;
    assert!(
        out.ok().contains(&format!(
            "workload default/web-2 revoked (join lineage {lineage2})"
        )),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&format!(
            "join token {} can join no more proxies",
            token.id()
        )),
        "{out:?}"
    );
    // Whoever holds the token cannot join again with its remaining use.
    let e = skein_proxy::control::certify(&join_with(&control, &token, 195), &spiffe("web"))
        .await
        .unwrap_err();
    assert!(
        e.fatal && e.message.contains("is used up (3 of 3 joins"),
        "{e}"
    );
    // Its proxy is told, and gives up for good (`skein proxy` would exit non-zero).
    let reason = tokio::time::timeout(SOON, web2.fatal())
        .await
        .expect("the revoked proxy learns it at once");
    assert!(
        reason.contains(&format!("(join lineage {lineage2}) was revoked")),
        "{reason}"
    );
    // Callers stop choosing it in the same snapshot.
    eventually("caller drops web-2", SOON, async || endpoints() == 1)
        .await
        .unwrap();
    let hits = app2.hits();
    for i in 0..20 {
        let (status, body) = get(proxy, &url("web", &format!("after-{i}")))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        app2.hits(),
        hits,
        "the revoked workload gets no more requests"
    );
    // Its certificate fails at the next handshake with a peer that still trusts the CA.
    let revoked = web2.ctx.identity.get().unwrap().clone();
    let cfg = revoked.client_config(&spiffe("web")).unwrap();
    let e = tls_attempt(SocketAddr::new(loopback(194), 4143), cfg, &spiffe("web"))
        .await
        .unwrap_err();
    assert!(!e.is_empty(), "web-1 refuses web-2's certificate");
    // And it cannot renew, also with a new root.
    let renewal = |identity: &skein_proxy::identity::Identity| {
        let key = skein_identity::WorkloadKey::generate().unwrap();
        let req = skein_api::v1::CertifyRequest {
            token: String::new(),
            csr_pem: key.csr(&spiffe("web")).unwrap(),
        };
        let presented = skein_control::pki::Presented {
            id: spiffe("web"),
            lineage: identity.status().lineage,
            expires: std::time::SystemTime::now() + Duration::from_secs(60),
        };
        (req, presented)
    };
    let (req, presented) = renewal(&revoked);
    let e = control
        .pki
        .certify(&req, Some(&presented), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("is revoked: workload default/web-2 was revoked at"),
        "{e:?}"
    );
    for _ in 0..3 {
        control.pki.advance().await.unwrap();
    }
    let e = control
        .pki
        .certify(&req, Some(&presented), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("is revoked"),
        "after a root rotation: {e:?}"
    );
    // web-1, same token, renews.
    let (req, presented) = renewal(web1.ctx.identity.get().unwrap());
    control
        .pki
        .certify(&req, Some(&presented), Duration::from_secs(60))
        .await
        .expect("the other workload of the token is unaffected");
    load.finish_without_failures().await;

    // Revoking the token takes every workload that joined with it.
    let out = cli(&control, data.path(), &["token", "revoke", token.id()]).await;
    assert!(out.ok().contains("revoked"), "{out:?}");
    let reason = tokio::time::timeout(SOON, web1.fatal()).await.unwrap();
    assert!(reason.contains("was revoked"), "{reason}");
    eventually("web has no endpoints left", SOON, async || endpoints() == 0)
        .await
        .unwrap();
    let (status, body) = get(proxy, &url("web", "gone")).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let list = cli(&control, data.path(), &["token", "list"]).await;
    assert!(list.ok().contains("revoked"), "{list:?}");
    control.shutdown().await;
}

#[tokio::test]
async fn a_proxy_refused_for_good_exits_non_zero_saying_why() {
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-fatal").unwrap();
    let control = control(197, data.path()).await;
    apply(&control, &service_yaml("web")).await;
    let (token, _) = control
        .pki
        .create_token("default", "web", Duration::from_secs(600), 1)
        .await
        .unwrap();
    // Its one use goes to someone else first.
    skein_proxy::control::certify(&join_with(&control, &token, 197), &spiffe("web"))
        .await
        .unwrap();
    let mut config =
        skein_testkit::MeshSpec::new(198, 198).client_config(SocketAddr::new(loopback(198), 1));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    config.workload.name = "web-9".into();
    config.workload.service = "web".into();
    config.inbound.listen = SocketAddr::new(loopback(198), 4143);
    config.admin.listen = skein_testkit::control::free_port(loopback(198)).unwrap();
    let e = skein_testkit::control::ControlledProxy::start(
        std::path::Path::new(BIN),
        &config,
        control.grpc,
        &token,
    )
    .await
    .err()
    .expect("the proxy exits instead of retrying forever");
    let text = format!("{e:#}");
    assert!(text.contains("exited (exit status: 1)"), "{text}");
    assert!(
        text.contains("the control plane refused this proxy")
            && text.contains("is used up (1 of 1 joins"),
        "{text}"
    );
    assert!(
        !text.contains("retrying"),
        "refused at once, not retried: {text}"
    );
    control.shutdown().await;
}

/// Whether the server closes `stream` (EOF or reset) within `within`, reading and
/// discarding whatever it sends first.
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A GET of `path` on a fresh or given connection to `addr`: the status line.
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(SOON, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_control_planes_listeners_hold_no_idle_or_half_sent_connection() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-sockets").unwrap();
    let fast = skein_control::limits::ConnLimits {
        max_connections: 4,
        max_per_source: 4,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
    };
    let limits = skein_control::limits::ListenerLimits {
        api: fast,
        proxy_api: skein_control::limits::ConnLimits {
            max_connections: 8,
            max_per_source: 3,
            ..fast
        },
    };
    let control = control_with(199, data.path(), limits).await;
    let api = control.http;
    // The store file holds the CA's keys: owner-only, as is its directory.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&data.path().join("store.redb")), 0o600);
    assert_eq!(mode(data.path()), 0o700);

    // HTTP API: an idle connection, a half-sent head and a half-sent body are all closed
    // (or answered with an error), and a legitimate request on a new connection works.
    let mut idle = TcpStream::connect(api).await.unwrap();
    let mut half_head = TcpStream::connect(api).await.unwrap();
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(api).await.unwrap();
    half_body
        .write_all(
            format!(
                "POST /api/v1/apply HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\nkind: Serv",
                control.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert!(
        closed_within(&mut idle, SOON).await,
        "idle API connection closed"
    );
    assert!(
        closed_within(&mut half_head, SOON).await,
        "half-sent head closed"
    );
    assert!(
        closed_within(&mut half_body, SOON).await,
        "half-sent body ended"
    );
    let mut fresh = TcpStream::connect(api).await.unwrap();
    assert_eq!(get_on(&mut fresh, "/healthz").await, "HTTP/1.1 200 OK");
    drop(fresh);

    // The cap: four connections open, the fifth is closed at once while the four work.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(api).await.unwrap());
    }
    let mut over = TcpStream::connect(api).await.unwrap();
    assert!(closed_within(&mut over, SOON).await, "over the cap: closed");
    // Closed by the cap, not a timeout: the older connections still serve.
    assert_eq!(get_on(&mut held[0], "/healthz").await, "HTTP/1.1 200 OK");
    drop(held);

    // Proxy API: a TLS connection without a client certificate that never calls Certify
    // is closed; a plain TCP connection that never starts TLS too.
    let pin = skein_identity::ca_pin(
        &<rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
            control.pki.root_pem().as_bytes(),
        )
        .next()
        .unwrap()
        .unwrap(),
    );
    let control_id = skein_control::pki::control_identity("skein.local").unwrap();
    let tls = skein_identity::tls::bootstrap_client_config(&pin, control_id.clone()).unwrap();
    let tcp = TcpStream::connect(control.grpc).await.unwrap();
    let mut anonymous = tokio_rustls::TlsConnector::from(tls)
        .connect(skein_identity::tls::server_name(&control_id).unwrap(), tcp)
        .await
        .expect("TLS without a client certificate is accepted, for Certify");
    assert!(
        closed_within(&mut anonymous, SOON).await,
        "an anonymous connection that never certifies is closed"
    );
    // A certificate whose token was revoked buys no long-lived connection either, while a
    // valid one keeps its connection (for Sync).
    apply(&control, &service_yaml("web")).await;
    let mesh_tls = async |service: &str, revoke: bool| {
        let join = join(&control, service, SocketAddr::new(loopback(199), 4143)).await;
        let identity = skein_proxy::control::certify(&join, &spiffe(service))
            .await
            .unwrap();
        if revoke {
            control.pki.revoke_token(join.token.id()).await.unwrap();
        }
        let tls = identity.client_config(&control_id).unwrap();
        let tcp = TcpStream::connect(control.grpc).await.unwrap();
        tokio_rustls::TlsConnector::from(tls)
            .connect(skein_identity::tls::server_name(&control_id).unwrap(), tcp)
            .await
            .unwrap()
    };
    let mut valid = mesh_tls("web", false).await;
    let mut revoked = mesh_tls("web", true).await;
    assert!(
        closed_within(&mut revoked, SOON).await,
        "a revoked certificate's connection closes"
    );
    assert!(
        !closed_within(&mut valid, Duration::from_secs(2)).await,
        "a valid certificate's connection stays (it outlived the revoked one's short life)"
    );
    // One source address holds at most 3 proxy API connections; another still gets in.
    let from = async |octet: u8| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(loopback(octet), 0)).unwrap();
        socket.connect(control.grpc).await.unwrap()
    };
    let mut held = vec![from(192).await, from(192).await, from(192).await];
    let mut over = from(192).await;
    assert!(
        closed_within(&mut over, SOON).await,
        "a fourth from one source is closed"
    );
    let mut other = from(193).await;
    assert!(
        !closed_within(&mut other, Duration::from_millis(300)).await,
        "another source still gets in"
    );
    held.clear();
    drop(valid);

    // Meanwhile a proxy joins and syncs normally.
    let (_app, web) = workload(&control, 186, "web", None).await;
    eventually("web applied a snapshot", SOON, async || {
        web.ctx.ready.load(Ordering::SeqCst)
    })
    .await
    .unwrap();
    control.shutdown().await;
}

#[tokio::test]
async fn a_proxys_admin_listener_holds_no_idle_connection_and_caps_them() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-admin").unwrap();
    let control = control(187, data.path()).await;
    let caller = client(&control, 188).await;
    let admin = caller.addrs.admin;
    let mut idle = TcpStream::connect(admin).await.unwrap();
    let mut half = TcpStream::connect(admin).await.unwrap();
    half.write_all(b"GET /ready HTTP/1.1\r\n").await.unwrap();
    let mut held = Vec::new();
    for _ in 0..skein_proxy::admin::MAX_CONNECTIONS - 2 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    let mut over = TcpStream::connect(admin).await.unwrap();
    assert!(closed_within(&mut over, SOON).await, "over the cap: closed");
    // Closed by the cap, not a timeout: the older connections still serve.
    assert_eq!(get_on(&mut held[0], "/live").await, "HTTP/1.1 200 OK");
    assert!(
        closed_within(&mut idle, SOON).await,
        "idle admin connection closed"
    );
    assert!(
        closed_within(&mut half, SOON).await,
        "half-sent head closed"
    );
    drop(held);
    let mut fresh = TcpStream::connect(admin).await.unwrap();
    assert_eq!(get_on(&mut fresh, "/live").await, "HTTP/1.1 200 OK");
    control.shutdown().await;
}

#[tokio::test]
async fn a_revoked_caller_loses_the_tunnels_it_opened_before() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    skein_testkit::init_tracing();
    let data = TempDir::new("sec-tunnel").unwrap();
    let control = control(141, data.path()).await;
    apply(
        &control,
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: echo}\n\
         spec: {selector: {app: echo}, ports: [{port: 19100, protocol: tcp}]}\n",
    )
    .await;
    let echo = skein_testkit::TcpEcho::start(SocketAddr::new(loopback(142), 19100))
        .await
        .unwrap();
    let mut config = skein_testkit::MeshSpec::new(142, 142)
        .service("echo", echo.addr(), skein_model::Protocol::Tcp)
        .server_config();
    config.workload.name = "echo-1".into();
    config.workload.service = "echo".into();
    config.inbound.listen = SocketAddr::new(loopback(142), 4143);
    let join = join(&control, "echo", config.inbound.listen).await;
    let server = skein_proxy::RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap();
    let _caller = client_of(&control, 143, "client", &[(19100, "echo", 19100)]).await;
    let listener = SocketAddr::new(loopback(143), 19100);
    let mut tunnel = None;
    eventually("a tunnel to echo", SOON, async || {
        let Ok(mut s) = tokio::net::TcpStream::connect(listener).await else {
            return false;
        };
        let mut buf = [0u8; 5];
        let ok = s.write_all(b"hello").await.is_ok()
            && tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok());
        if ok {
            tunnel = Some(s);
        }
        ok
    })
    .await
    .unwrap();
    let mut tunnel = tunnel.unwrap();

    // The caller is revoked while its tunnel is open: the echo side closes it.
    let out = cli(&control, data.path(), &["workload", "revoke", "client-1"]).await;
    assert!(out.ok().contains("revoked"), "{out:?}");
    let closed = tokio::time::timeout(SOON, async {
        let mut buf = [0u8; 64];
        loop {
            if tunnel.write_all(b"still?").await.is_err() {
                return;
            }
            match tunnel.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the revoked caller's open tunnel was closed"
    );
    let metrics = server.ctx.metrics.encode();
    assert!(
        metric(
            &metrics,
            "skein_proxy_errors_total{direction=\"inbound\",reason=\"revoked\"}"
        ) >= 1.0,
        "{metrics}"
    );
    control.shutdown().await;
}
