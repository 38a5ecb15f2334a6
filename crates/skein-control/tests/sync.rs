//! The proxy sync protocol end to end: a real control-plane gRPC server and a real proxy
//! (`skein proxy` with a control plane), real requests through the proxies.

mod common;

use common::{identity_for, pki};
use skein_control::grpc::{ProxyControlService, Registrar};
use skein_control::pki::Pki;
use skein_control::snapshot::{ServiceView, WorkloadView};
use skein_control::state::{Connections, MeshState};
use skein_control::tls_incoming::incoming;
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::control::ControlConfig;
use skein_proxy::RunningProxy;
use skein_testkit::client::curl;
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Registrar for Recorder {
    fn register(
        &self,
        w: &WorkloadView,
    ) -> futures_util::future::BoxFuture<'_, Result<(), tonic::Status>> {
        self.0.lock().unwrap().push(format!("+{}", w.name));
        Box::pin(async { Ok(()) })
    }
    fn disconnected(&self, w: WorkloadView) {
        self.0.lock().unwrap().push(format!("-{}", w.name));
    }
}

/// Serves the sync API (over TLS, with `pki`'s certificate) on `addr` until `stop` fires.
async fn serve(
    addr: SocketAddr,
    pki: &Arc<Pki>,
    state: watch::Receiver<Arc<MeshState>>,
    registrar: Arc<Recorder>,
    connections: Arc<Connections>,
    stop: CancellationToken,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let svc = ProxyControlService::new(state, pki.clone(), registrar, connections, stop.clone());
    let incoming = incoming(
        listener,
        pki.server_tls().unwrap(),
        skein_control::limits::ConnLimits::PROXY_API,
        pki.clone(),
        stop.clone(),
    );
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(skein_api::v1::proxy_control_server::ProxyControlServer::new(svc))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
            .unwrap();
    });
    bound
}

fn mesh_state(revision: u64, backend_proxy: SocketAddr, port: u16, with_web: bool) -> MeshState {
    let web_workload = WorkloadView {
        name: "web-1".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        address: backend_proxy.ip(),
        inbound_port: backend_proxy.port(),
        app_ports: vec![port],
        account: "web".into(),
        lineage: None,
    };
    MeshState {
        revision,
        services: if with_web {
            vec![ServiceView {
                name: "web".into(),
                namespace: "default".into(),
                selector: [("app".to_string(), "web".to_string())].into(),
                accounts: vec!["web".into()],
                ports: vec![(port, Protocol::Http)],
                addresses: vec![],
                routes: vec![],
                policies: vec![],
                export_to: vec![],
                target_ports: Default::default(),
            }]
        } else {
            vec![]
        },
        workloads: vec![web_workload],
        trust_domain: "skein.local".into(),
        ..MeshState::default()
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn status_via(proxy: SocketAddr, url: &str) -> String {
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-x",
        &format!("http://{proxy}"),
        url,
    ])
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn snapshots_are_pushed_applied_acked_and_survive_control_plane_loss() {
    skein_testkit::init_tracing();
    // Server side: backend + a static proxy in front of it.
    let backend = HttpBackend::start(SocketAddr::new(loopback(111), 0))
        .await
        .unwrap();
    let spec = MeshSpec::new(110, 111).service("web", backend.addr(), Protocol::Http);
    let pki = pki("snapshots").await;
    let server =
        RunningProxy::start_with_identity(spec.server_config(), identity_for(&pki, "web").await)
            .await
            .unwrap();
    let port = backend.addr().port();

    // Control plane.
    let (state_tx, state_rx) =
        watch::channel(Arc::new(mesh_state(1, server.addrs.inbound, port, true)));
    let (recorder, connections) = (
        Arc::new(Recorder::default()),
        Arc::new(Connections::default()),
    );
    let stop = CancellationToken::new();
    let control_addr = serve(
        SocketAddr::new(loopback(112), 0),
        &pki,
        state_rx.clone(),
        recorder.clone(),
        connections.clone(),
        stop.clone(),
    )
    .await;

    // Client proxy, configured by the control plane (no static destinations).
    let mut config: ProxyConfig = spec.client_config(server.addrs.inbound);
    config.destinations.clear();
    config.outbound.upstreams.clear();
    let (token, _) = pki
        .create_token(
            "default",
            &config.workload.service,
            Duration::from_secs(600),
            1,
        )
        .await
        .unwrap();
    let control = ControlConfig {
        endpoint: control_addr.to_string(),
        advertise: SocketAddr::new(loopback(110), 4143),
        token,
    };
    let client = RunningProxy::start_with_control(config, Some(control))
        .await
        .unwrap();
    let ctx = client.ctx.clone();
    let proxy = client.addrs.http_proxy.unwrap();
    let url = format!("http://web:{port}/pushed");

    eventually("first snapshot applied", async || {
        ctx.config_version.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        ctx.ready.load(Ordering::SeqCst),
        "ready after the first snapshot"
    );
    assert_eq!(status_via(proxy, &url).await, "200");
    eventually("ack recorded", async || {
        connections.list().first().map(|c| c.acked_version) == Some(1)
    })
    .await;
    assert_eq!(recorder.0.lock().unwrap().as_slice(), ["+client-1"]);

    // A change that does not affect this proxy is not sent.
    let mut same = mesh_state(2, server.addrs.inbound, port, true);
    same.workloads[0].app_ports = vec![port]; // identical content, new revision
    state_tx.send(Arc::new(same)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connections.list()[0].sent_version,
        1,
        "unchanged proxy gets nothing"
    );

    // A real change is pushed promptly: the service disappears.
    state_tx
        .send(Arc::new(mesh_state(3, server.addrs.inbound, port, false)))
        .unwrap();
    eventually("version 3 applied", async || {
        ctx.config_version.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(status_via(proxy, &url).await, "502");

    // A snapshot the proxy cannot apply is refused with the reason; the old one stays.
    // (It holds `web`, which it called: the bad content goes there.)
    let mut bad = mesh_state(31, server.addrs.inbound, port, true);
    bad.services[0].ports = vec![(0, Protocol::Http)];
    state_tx.send(Arc::new(bad)).unwrap();
    eventually("refusal reported", async || {
        connections
            .list()
            .first()
            .and_then(|c| c.last_error.clone())
            .is_some()
    })
    .await;
    let error = connections.list()[0].last_error.clone().unwrap();
    assert!(
        error.contains("version 31") && error.contains("port 0 is not 1 to 65535"),
        "{error}"
    );
    assert_eq!(
        ctx.config_version.load(Ordering::SeqCst),
        3,
        "previous config in force"
    );
    let refused = ctx.metrics.encode();
    assert!(
        refused.contains("skein_config_updates_total{result=\"refused\"} 1"),
        "{refused}"
    );

    // Back again; then the control plane goes away: the proxy keeps its last config.
    state_tx
        .send(Arc::new(mesh_state(4, server.addrs.inbound, port, true)))
        .unwrap();
    eventually("version 4 applied", async || {
        ctx.config_version.load(Ordering::SeqCst) == 4
    })
    .await;
    stop.cancel();
    eventually("proxy noticed the loss", async || {
        ctx.metrics.control_connected.get() == 0
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            status_via(proxy, &url).await,
            "200",
            "serving on the last good config"
        );
    }

    // The control plane returns on the same address with newer state: the proxy reconnects
    // (with backoff) and acknowledges the current version.
    let stop2 = CancellationToken::new();
    let (state_tx2, state_rx2) =
        watch::channel(Arc::new(mesh_state(5, server.addrs.inbound, port, true)));
    serve(
        control_addr,
        &pki,
        state_rx2,
        recorder.clone(),
        connections.clone(),
        stop2.clone(),
    )
    .await;
    eventually("reconnected and applied version 5", async || {
        ctx.config_version.load(Ordering::SeqCst) == 5
    })
    .await;
    assert_eq!(status_via(proxy, &url).await, "200");
    drop(state_tx2);
    stop2.cancel();
    client.shutdown().await;
    server.shutdown().await;
}
