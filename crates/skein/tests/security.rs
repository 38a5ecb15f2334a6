//! Attacks on a live mesh, as a holder of a join token for one service would try them:
//! each attack, the refusal the attacker sees, and legitimate traffic going on untouched
//! (zero failed requests for the real workload) throughout.
//!
//! Addresses: 127.0.0.181–199.

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
        tonic::Code::PermissionDenied,
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
