//! Losing the control plane: SIGKILL it under steady traffic; the proxies keep serving on
//! their last good configuration with zero failed requests, and when it returns they
//! reconnect and acknowledge the version it serves. An outage longer than the
//! certificates live (8 s here): the connection the proxies hold carries on, a new one
//! fails closed saying why, and both proxies renew by themselves when the control plane
//! returns. A control connection gone silent is noticed and replaced.
//!
//! Addresses 127.0.0.160–166 and 127.0.22.50–52.

use http::{Request, StatusCode};
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::control::ControlConfig;
use skein_proxy::http::empty;
use skein_proxy::RunningProxy;
use skein_testkit::client::{body_bytes, h1};
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skein");
/// How long traffic runs without a control plane (the issue asks for 30 s).
const OUTAGE: Duration = Duration::from_secs(30);

struct Control {
    child: Child,
}

impl Control {
    fn start(dir: &Path, ip: std::net::IpAddr) -> Control {
        let child = Command::new(BIN)
            .args(["control", "--data-dir"])
            .arg(dir)
            .args([
                "--http",
                &format!("{ip}:9990"),
                "--grpc",
                &format!("{ip}:9991"),
                "--otlp",
                &format!("{ip}:0"),
            ])
            .env("SKEIN_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start skein control");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((ip, 9991)).is_err() {
            assert!(Instant::now() < deadline, "control plane did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Control { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(dir: &Path, ip: std::net::IpAddr, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--server", &format!("{ip}:9990"), "--data-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "skein {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skein get workloads -o json`.
fn workloads(dir: &Path, ip: std::net::IpAddr) -> serde_json::Value {
    let out = cli(dir, ip, &["get", "workloads", "-o", "json"], None);
    serde_json::from_str(&out).unwrap()
}

/// How a proxy of `service` reaches the control plane: a join token made with the CLI.
fn control_config(
    dir: &Path,
    control_ip: std::net::IpAddr,
    advertise: SocketAddr,
    service: &str,
) -> Option<ControlConfig> {
    let out = cli(
        dir,
        control_ip,
        &["token", "create", "--service", service],
        None,
    );
    Some(ControlConfig {
        endpoint: format!("{control_ip}:9991"),
        advertise,
        token: out
            .trim()
            .parse()
            .expect("skein token create prints a token"),
    })
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend and its proxy, a workload of Service `web` (applied here) on `server_ip`,
/// and a caller's proxy on `client_ip` holding web's endpoint; both joined to the control
/// plane at `control_ip` with tokens the CLI made. Returns the backend, the two proxies
/// and web's port.
async fn pair(
    dir: &Path,
    control_ip: std::net::IpAddr,
    server_ip: std::net::IpAddr,
    client_ip: std::net::IpAddr,
) -> (HttpBackend, RunningProxy, RunningProxy, u16) {
    let backend = HttpBackend::start(SocketAddr::new(server_ip, 0))
        .await
        .unwrap();
    let port = backend.addr().port();
    let service = format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec: {{selector: {{app: web}}, ports: [{{port: {port}, protocol: http}}]}}\n"
    );
    assert!(
        cli(dir, control_ip, &["apply", "-f", "-"], Some(&service)).contains("service/web created")
    );
    let spec = MeshSpec {
        client_ip,
        server_ip,
        ..MeshSpec::new(1, 1)
    }
    .service("web", backend.addr(), Protocol::Http);
    let mut server_cfg = spec.server_config();
    server_cfg.workload.name = "web-1".into();
    server_cfg.workload.service = "web".into();
    server_cfg.inbound.listen = SocketAddr::new(server_ip, 4143);
    let server = RunningProxy::start_with_control(
        server_cfg.clone(),
        control_config(dir, control_ip, server_cfg.inbound.listen, "web"),
    )
    .await
    .unwrap();
    // Caller side: destinations from the control plane only.
    let mut client_cfg: ProxyConfig = spec.client_config(server_cfg.inbound.listen);
    client_cfg.destinations.clear();
    client_cfg.outbound.upstreams.clear();
    client_cfg.inbound.listen = SocketAddr::new(client_ip, 4143);
    let client = RunningProxy::start_with_control(
        client_cfg.clone(),
        control_config(
            dir,
            control_ip,
            client_cfg.inbound.listen,
            &client_cfg.workload.service,
        ),
    )
    .await
    .unwrap();
    client.discover(&["web"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .ctx
        .config()
        .destinations
        .iter()
        .any(|d| !d.endpoints.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "caller never learned web's endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (backend, server, client, port)
}

/// GETs to `web` through the caller's HTTP proxy listener at `proxy`, one every 5 ms on
/// one keep-alive connection until `end` (bounded in time, so in count): how many
/// succeeded and how many failed.
fn steady(proxy: SocketAddr, port: u16, end: Instant) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let mut sender = h1(proxy).await.unwrap();
        let (mut ok, mut failed) = (0u64, 0u64);
        while Instant::now() < end {
            let req = Request::get(format!("http://web:{port}/steady"))
                .body(empty())
                .unwrap();
            match sender.send_request(req).await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    body_bytes(resp).await.unwrap();
                    ok += 1;
                }
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
}

#[tokio::test]
async fn proxies_serve_through_a_control_plane_outage_and_resync() {
    skein_testkit::init_tracing();
    let dir = TempDir(std::env::temp_dir().join(format!("skein-loss-{}", std::process::id())));
    let control_ip = loopback(160);
    let mut control = Control::start(&dir.0, control_ip);

    let (_backend, server, client, port) =
        pair(&dir.0, control_ip, loopback(161), loopback(162)).await;

    // Steady traffic for the whole outage, counting every failure.
    let proxy = client.addrs.http_proxy.unwrap();
    let traffic = steady(
        proxy,
        port,
        Instant::now() + OUTAGE + Duration::from_secs(2),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    control.kill();
    let (ok, failed) = traffic.await.unwrap();
    eprintln!("during the outage: {ok} requests ok, {failed} failed");
    assert_eq!(
        failed, 0,
        "no request may fail while the control plane is gone"
    );
    assert!(ok > 100, "traffic flowed: {ok}");
    assert_eq!(client.ctx.metrics.control_connected.get(), 0);

    // Back: both proxies reconnect (backoff is at most 10 s) and acknowledge.
    let _control = Control::start(&dir.0, control_ip);
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = client.ctx.config_version.load(Ordering::SeqCst);
    loop {
        let json = workloads(&dir.0, control_ip);
        let items = json["items"].as_array().cloned().unwrap_or_default();
        let acked: Vec<u64> = items
            .iter()
            .filter_map(|w| w["status"]["acknowledgedVersion"].as_u64())
            .collect();
        let client_version = client.ctx.config_version.load(Ordering::SeqCst);
        let server_version = server.ctx.config_version.load(Ordering::SeqCst);
        if acked.len() == 2
            && acked.contains(&client_version)
            && acked.contains(&server_version)
            && client_version > before
        {
            break;
        }
        assert!(Instant::now() < deadline, "proxies did not resync: {json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.ctx.metrics.control_connected.get(), 1);
    client.shutdown().await;
    server.shutdown().await;
}

/// A TCP relay on loopback that can go silent: the connections it carries then stop
/// moving bytes either way while their sockets stay open, as a partition or a dropped
/// NAT entry leaves them (no reset, no FIN; the kernel still acknowledges what arrives).
/// Connections accepted later are carried.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections numbered below this are silent.
    silent_below: tokio::sync::watch::Sender<usize>,
    tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    /// Carries connections to `listen` on to `to`, from `source` (the proxy's own
    /// address, which the control plane checks against what it announces).
    async fn start(listen: SocketAddr, to: SocketAddr, source: std::net::IpAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (silent_below, silence) = tokio::sync::watch::channel(0usize);
        let mut tasks = tokio::task::JoinSet::new();
        let count = accepted.clone();
        tasks.spawn(async move {
            let mut carried = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let id = count.fetch_add(1, Ordering::SeqCst);
                let mut silence = silence.clone();
                carried.spawn(async move {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::new(source, 0)).unwrap();
                    let Ok(mut outbound) = socket.connect(to).await else {
                        return;
                    };
                    let silenced = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        r = silence.wait_for(|below| id < *below) => r.is_ok(),
                    };
                    if silenced {
                        // Both sockets stay open, and nothing moves.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Relay {
            addr,
            accepted,
            silent_below,
            tasks,
        }
    }

    /// Every connection carried so far goes silent.
    fn silence_all(&self) -> usize {
        let n = self.accepted.load(Ordering::SeqCst);
        self.silent_below.send_replace(n);
        n
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[tokio::test]
async fn a_proxy_whose_control_connection_goes_silent_reconnects() {
    skein_testkit::init_tracing();
    let dir = TempDir(std::env::temp_dir().join(format!("skein-silent-{}", std::process::id())));
    let control_ip = loopback(163);
    let _control = Control::start(&dir.0, control_ip);
    let service = "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: quiet}\nspec: {selector: {app: quiet}, ports: [{port: 8080, protocol: http}]}\n";
    assert!(
        cli(&dir.0, control_ip, &["apply", "-f", "-"], Some(service))
            .contains("service/quiet created")
    );
    // The proxy reaches the control plane only through the relay.
    let relay = Relay::start(
        SocketAddr::new(loopback(164), 0),
        SocketAddr::new(control_ip, 9991),
        loopback(165),
    )
    .await;
    let spec = MeshSpec::new(165, 166);
    let mut cfg = spec.server_config();
    cfg.workload.name = "quiet-1".into();
    cfg.workload.service = "quiet".into();
    cfg.inbound.listen = SocketAddr::new(loopback(165), 4143);
    let mut control = control_config(&dir.0, control_ip, cfg.inbound.listen, "quiet").unwrap();
    control.endpoint = relay.addr.to_string();
    let proxy = RunningProxy::start_with_control(cfg, Some(control))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.ctx.metrics.control_connected.get() != 1 {
        assert!(Instant::now() < deadline, "the proxy never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Its connection goes silent. The proxy's pings go unanswered, so it gives the
    // connection up and opens another, which the relay carries; the control plane sees
    // its workload connected again. (TCP alone would never tell: the relay's kernel
    // acknowledges every byte.)
    let silenced = relay.silence_all();
    let bound = skein_proxy::control::KEEPALIVE_INTERVAL
        + skein_proxy::control::KEEPALIVE_TIMEOUT
        + Duration::from_secs(30);
    let deadline = Instant::now() + bound;
    loop {
        if relay.accepted.load(Ordering::SeqCst) > silenced
            && proxy.ctx.metrics.control_connected.get() == 1
        {
            let json = workloads(&dir.0, control_ip);
            let version = proxy.ctx.config_version.load(Ordering::SeqCst);
            let acked = json["items"].as_array().is_some_and(|items| {
                items.iter().any(|w| {
                    w["metadata"]["name"] == "quiet-1"
                        && w["status"]["connected"] == true
                        && w["status"]["acknowledgedVersion"].as_u64() == Some(version)
                })
            });
            if acked {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the proxy kept its silent connection for {bound:?} (connections the relay accepted: {}, silenced: {silenced}, proxy connected: {})",
            relay.accepted.load(Ordering::SeqCst),
            proxy.ctx.metrics.control_connected.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.shutdown().await;
}

/// One GET to `web` on a new connection to the caller's proxy: status, `skein-error`
/// and body.
async fn get_once(proxy: SocketAddr, port: u16) -> (StatusCode, String, String) {
    let mut sender = h1(proxy).await.unwrap();
    let req = Request::get(format!("http://web:{port}/once"))
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let error = resp
        .headers()
        .get("skein-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = String::from_utf8_lossy(&body_bytes(resp).await.unwrap()).into_owned();
    (status, error, body)
}

#[tokio::test]
async fn certificates_that_expire_in_an_outage_fail_closed_for_new_connections_and_renew_after() {
    skein_testkit::init_tracing();
    let dir = TempDir(std::env::temp_dir().join(format!("skein-expiry-{}", std::process::id())));
    let control_ip = std::net::IpAddr::from([127, 0, 22, 50]);
    let mut control = Control::start(&dir.0, control_ip);
    // Certificates live 8 s (renewed at 70 %); the outage outlasts them.
    let mesh = "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                spec: {workloadCertTTL: 8s}\n";
    cli(&dir.0, control_ip, &["apply", "-f", "-"], Some(mesh));
    let (_backend, server, client, port) = pair(
        &dir.0,
        control_ip,
        std::net::IpAddr::from([127, 0, 22, 51]),
        std::net::IpAddr::from([127, 0, 22, 52]),
    )
    .await;
    let proxy = client.addrs.http_proxy.unwrap();
    assert_eq!(get_once(proxy, port).await.0, StatusCode::OK);
    let expiry = |p: &RunningProxy| p.ctx.metrics.cert_expiry_seconds.get();
    assert!(
        expiry(&client) <= 8 && expiry(&server) <= 8,
        "short-lived certificates"
    );

    // The control plane goes for longer than the certificates live; traffic goes on over
    // the connection the proxies hold.
    let traffic = steady(proxy, port, Instant::now() + Duration::from_secs(12));
    control.kill();
    let (ok, failed) = traffic.await.unwrap();
    eprintln!("through the outage, on the open connection: {ok} ok, {failed} failed");
    assert!(
        expiry(&client) < 0 && expiry(&server) < 0,
        "both certificates expired during the outage: {} s, {} s",
        expiry(&client),
        expiry(&server)
    );
    assert_eq!(
        failed, 0,
        "a connection verified before the expiry carries on"
    );
    assert!(ok > 100, "traffic flowed: {ok}");

    // A new connection with expired certificates fails closed, saying why.
    client.ctx.peers.clear();
    let (status, error, body) = get_once(proxy, port).await;
    eprintln!("a new connection after the expiry: {status} {error}: {body}");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error, "connect");
    assert!(body.to_lowercase().contains("certificate"), "{body}");

    // The control plane returns: both proxies renew with their expired certificates, by
    // themselves, and new connections work again.
    let _control = Control::start(&dir.0, control_ip);
    let returned = Instant::now();
    let deadline = returned + Duration::from_secs(40);
    loop {
        if expiry(&client) > 0 && expiry(&server) > 0 {
            client.ctx.peers.clear();
            if get_once(proxy, port).await.0 == StatusCode::OK {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: certificates expire in {} s and {} s",
            expiry(&client),
            expiry(&server)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "renewed and serving new connections {:?} after the control plane returned",
        returned.elapsed()
    );
    client.shutdown().await;
    server.shutdown().await;
}
