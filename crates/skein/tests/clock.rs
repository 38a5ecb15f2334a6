//! A proxy whose host's wall clock jumps, forward then back, under steady traffic: it keeps
//! checking certificates, and timing its renewals, by the control plane's clock (carried
//! forward by its boot-time clock), so no request fails, a peer restarted after each jump
//! with a fresh certificate is verified and used, and renewal neither races nor stalls.
//!
//! The jump is real for the proxy and no one else: its process runs under libfaketime
//! (`LD_PRELOAD`, Debian's `faketime`), which moves the wall clock (`CLOCK_REALTIME`) of
//! that process by an offset read from a file the test rewrites, and leaves the monotonic
//! and boot-time clocks alone, as an NTP step or `date -s` on the host would. Certificates
//! live 10 s here (renewed at 70 %), so each jump of two hours is many lifetimes.
//!
//! Without libfaketime the test says so and passes only outside CI (`.ci/run` installs it).
//!
//! Addresses 127.0.22.70–73; every process and directory goes with drop guards.

use http::{Request, StatusCode};
use skein_control::server::{ControlOptions, RunningControl};
use skein_model::resource::parse_documents;
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::http::empty;
use skein_testkit::client::{body_bytes, h1};
use skein_testkit::control::{free_port, ControlledProxy, TempDir};
use skein_testkit::{HttpBackend, MeshSpec};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skein");
const PORT: u16 = 18090;
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 22, last])
}

fn at(host: IpAddr) -> MeshSpec {
    MeshSpec {
        client_ip: host,
        server_ip: host,
        ..MeshSpec::new(1, 1)
    }
}

async fn token(control: &RunningControl, service: &str) -> skein_identity::JoinToken {
    control
        .pki
        .create_token("default", service, Duration::from_secs(600), 1)
        .await
        .unwrap()
        .0
}

/// The application's proxy on `host` (a `skein proxy` process with the host's clock).
async fn server(control: &RunningControl, host: IpAddr, app: SocketAddr) -> ControlledProxy {
    let mut config = at(host)
        .service("ticks", app, Protocol::Http)
        .server_config();
    config.workload.labels.insert("app".into(), "ticks".into());
    config.workload.name = format!("ticks-{}", host.to_string().replace('.', "-"));
    config.workload.service = "ticks".into();
    config.inbound.listen = SocketAddr::new(host, 4143);
    config.admin.listen = free_port(host).unwrap();
    ControlledProxy::start(
        Path::new(BIN),
        &config,
        control.grpc,
        &token(control, "ticks").await,
    )
    .await
    .unwrap()
}

/// A sample of `name` (labels included, e.g. `x{result="issued"}`) from Prometheus text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GETs to `ticks` through the caller's HTTP proxy listener, one every 10 ms on one
/// keep-alive connection until `end`: `(ok, failures as "status skein-error: body")`.
async fn steady(via: SocketAddr, end: Instant) -> (u64, Vec<String>) {
    let mut sender = h1(via).await.unwrap();
    let (mut ok, mut failed) = (0, Vec::new());
    while Instant::now() < end {
        if sender.is_closed() {
            sender = h1(via).await.unwrap();
        }
        let req = Request::get(format!("http://ticks:{PORT}/tick"))
            .body(empty())
            .unwrap();
        match sender.send_request(req).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                body_bytes(resp).await.unwrap();
                ok += 1;
            }
            Ok(resp) => {
                let status = resp.status();
                let error = resp
                    .headers()
                    .get("skein-error")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let body = body_bytes(resp).await.unwrap_or_default();
                failed.push(format!(
                    "{status} {error}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(e) => failed.push(format!("connection: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, failed)
}

#[tokio::test]
async fn a_proxy_whose_host_clock_jumps_keeps_verifying_and_renewing_by_the_control_planes_clock() {
    skein_testkit::init_tracing();
    if !Path::new(FAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{FAKETIME} is missing: apt-get install faketime (.ci/run does)"
        );
        eprintln!("skipped: {FAKETIME} is missing (apt-get install faketime)");
        return;
    }
    let dir = TempDir::new("clock").unwrap();
    let control = RunningControl::start(ControlOptions::embedded(dir.path(), ip(70), "test"))
        .await
        .unwrap();
    let resources = format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{workloadCertTTL: 10s}}\n\
         ---\napiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: ticks}}\n\
         spec: {{selector: {{app: ticks}}, ports: [{{port: {PORT}, protocol: http}}]}}\n\
         ---\napiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {{name: ticks}}\n\
         spec: {{targetRef: {{name: ticks}}, loadBalancer: round-robin}}\n"
    );
    control
        .registry
        .apply(parse_documents(&resources, "test").unwrap())
        .await
        .unwrap();

    let stable_app = HttpBackend::start(SocketAddr::new(ip(71), PORT))
        .await
        .unwrap();
    let _stable = server(&control, ip(71), stable_app.addr()).await;
    let restarted_app = HttpBackend::start(SocketAddr::new(ip(72), PORT))
        .await
        .unwrap();
    let mut restarted = server(&control, ip(72), restarted_app.addr()).await;

    // The caller's proxy, its wall clock under the test's control.
    let offset_file = dir.join("faketime");
    std::fs::write(&offset_file, "+0\n").unwrap();
    let host = ip(73);
    let mut config: ProxyConfig = at(host).client_config(SocketAddr::new(host, 4143));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    config.outbound.http_proxy = Some(free_port(host).unwrap());
    config.inbound.listen = SocketAddr::new(host, 4143);
    config.admin.listen = free_port(host).unwrap();
    let caller = ControlledProxy::start_with_env(
        Path::new(BIN),
        &config,
        control.grpc,
        &token(&control, "client").await,
        &[
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", offset_file.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await
    .unwrap();
    let via = config.outbound.http_proxy.unwrap();
    // Both endpoints serve through the caller before anything moves.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stable_app.hits() == 0 || restarted_app.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "no traffic through the caller; its log:\n{}",
            caller.log()
        );
        let _ = steady(via, Instant::now() + Duration::from_millis(200)).await;
    }
    let metrics = || async { caller.admin_get("/metrics").await.unwrap() };
    let offset_ms = || async {
        let body = caller.admin_get("/config").await.unwrap();
        let json = body.split_once("\r\n\r\n").unwrap().1;
        let config: serde_json::Value = serde_json::from_str(json).unwrap();
        config["identity"]["hostClockOffsetMs"].as_i64()
    };
    let two_hours_ms = 2 * 3_600_000_i64;

    for (jump, expected_offset) in [("+2h", two_hours_ms), ("-2h", -two_hours_ms)] {
        std::fs::write(&offset_file, format!("{jump}\n")).unwrap();
        // The jump reaches the proxy (libfaketime reads the file at each clock reading).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let offset = offset_ms().await.unwrap_or_default();
            if (offset - expected_offset).abs() < 60_000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the caller's host clock did not jump {jump}: offset {offset} ms"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let renewals_before = sample(
            &metrics().await,
            "skein_identity_cert_requests_total{result=\"issued\"",
        );
        // Traffic for 18 s (more than a certificate's life, so the caller must renew), with
        // the second endpoint restarted after 3 s: a new proxy, a fresh certificate, new
        // mutual-TLS connections from the jumped caller, and time left to use them.
        let load = tokio::spawn(steady(via, Instant::now() + Duration::from_secs(18)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        restarted.signal("TERM").unwrap();
        restarted.wait_exit(Duration::from_secs(20)).await.unwrap();
        let hits_before = restarted_app.hits();
        restarted = server(&control, ip(72), restarted_app.addr()).await;
        let (ok, failed) = load.await.unwrap();
        let after = metrics().await;
        let renewals = sample(
            &after,
            "skein_identity_cert_requests_total{result=\"issued\"",
        ) - renewals_before;
        let failed_renewals = sample(
            &after,
            "skein_identity_cert_requests_total{result=\"failed\"",
        );
        let expiry = sample(&after, "skein_identity_cert_expiry_seconds");
        eprintln!(
            "clock {jump}: {ok} ok, {} failed; the restarted endpoint served {} after its restart; {renewals} renewals, {failed_renewals} failed renewals in all; certificate expires in {expiry} s",
            failed.len(),
            restarted_app.hits() - hits_before
        );
        assert!(
            failed.is_empty(),
            "after a {jump} jump requests failed: {failed:#?}\ncaller's log:\n{}",
            caller.log()
        );
        assert!(ok > 300, "traffic ran: {ok}");
        assert!(
            restarted_app.hits() > hits_before + 50,
            "the endpoint restarted after the {jump} jump (fresh certificate, new connections) took traffic: {} requests; caller's log:\n{}",
            restarted_app.hits() - hits_before,
            caller.log()
        );
        // Certificates live 10 s and renew at 7 s: two or three renewals in 18 s, not a
        // renewal loop (the host's clock past expiry) nor none (renewal stalled for 2 h).
        assert!(
            (1.0..=5.0).contains(&renewals),
            "{renewals} renewals in 18 s after a {jump} jump"
        );
        assert_eq!(failed_renewals, 0.0);
        assert!(
            (0.0..=10.0).contains(&expiry),
            "the certificate's expiry is counted by the control plane's clock: {expiry} s"
        );
    }
}
