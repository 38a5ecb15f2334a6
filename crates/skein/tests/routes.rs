//! Live routing through the control plane: an HTTPRoute changed while traffic flows is in
//! force on the proxies within a second, and no request fails on the way.

use http::{Request, StatusCode};
use skein_control::server::{ControlOptions, RunningControl, StoreChoice};
use skein_model::resource::parse_documents;
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::control::ControlConfig;
use skein_proxy::http::empty;
use skein_proxy::RunningProxy;
use skein_testkit::client::h1;
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const PORT: u16 = 18080;

/// How a proxy of `service` reaches `control`, with a fresh join token.
async fn control_for(
    control: &RunningControl,
    advertise: SocketAddr,
    service: &str,
) -> Option<ControlConfig> {
    let (token, _) = control
        .pki
        .create_token("default", service, Duration::from_secs(600), 1)
        .await
        .unwrap();
    Some(ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise,
        token,
    })
}

/// A backend on 127.0.0.`host`:PORT behind its own control-plane-managed proxy,
/// registered as a workload of `service`.
async fn workload(
    control: &RunningControl,
    host: u8,
    service: &str,
) -> (HttpBackend, RunningProxy) {
    let backend = HttpBackend::start(SocketAddr::new(loopback(host), PORT))
        .await
        .unwrap();
    let mut config = MeshSpec::new(host, host)
        .service(service, backend.addr(), Protocol::Http)
        .server_config();
    config.workload.name = format!("{service}-{host}");
    config.workload.service = service.into();
    config.inbound.listen = SocketAddr::new(loopback(host), 4143);
    let advertise = config.inbound.listen;
    let proxy =
        RunningProxy::start_with_control(config, control_for(control, advertise, service).await)
            .await
            .unwrap();
    (backend, proxy)
}

fn route_to(backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: restaurant}}
spec:
  parentRefs: [{{name: restaurant, port: {PORT}}}]
  rules:
  - backendRefs: [{{name: {backend}, port: {PORT}}}]
"
    )
}

/// A control plane with an embedded store on 127.0.0.`host`, in a fresh data dir.
async fn control_at(host: u8) -> (RunningControl, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("skein-routes-{}-{host}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let control = RunningControl::start(ControlOptions {
        data_dir: dir.clone(),
        store: StoreChoice::Embedded,
        http: SocketAddr::new(loopback(host), 0),
        grpc: SocketAddr::new(loopback(host), 0),
        workload_grace: Duration::from_secs(30),
        replica: "test".into(),
        ca_import: None,
        workload_cidrs: Vec::new(),
        limits: Default::default(),
        secrets_key: None,
    })
    .await
    .unwrap();
    (control, dir)
}

/// Applies the resources in `yaml` and waits until they are stored.
async fn apply(control: &RunningControl, yaml: &str) {
    control
        .registry
        .apply(parse_documents(yaml, "test").unwrap())
        .await
        .unwrap();
}

/// The caller's proxy on 127.0.0.`host`: everything from the control plane, reached as
/// an HTTP proxy; returned once it knows at least the given number of endpoints of each
/// service.
async fn caller_at(control: &RunningControl, host: u8, services: &[(&str, usize)]) -> RunningProxy {
    let mut config: ProxyConfig =
        MeshSpec::new(host, host).client_config(SocketAddr::new(loopback(host), 4143));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    let advertise = SocketAddr::new(loopback(host), 4143);
    config.inbound.listen = advertise;
    let service = config.workload.service.clone();
    let client =
        RunningProxy::start_with_control(config, control_for(control, advertise, &service).await)
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cfg = client.ctx.config();
        let ready = services.iter().all(|(s, n)| {
            cfg.destinations
                .iter()
                .any(|d| d.service == *s && d.endpoints.len() >= *n)
        });
        if ready {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "caller never learned the endpoints"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn route_change_takes_effect_within_a_second_without_failures() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(170).await;
    let services = format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: restaurant}}
spec: {{selector: {{app: restaurant}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: restaurant-v1}}
spec: {{selector: {{app: restaurant-v1}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: restaurant-v2}}
spec: {{selector: {{app: restaurant-v2}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
{}",
        route_to("restaurant-v1")
    );
    apply(&control, &services).await;
    let (v1, _p1) = workload(&control, 171, "restaurant-v1").await;
    let (v2, _p2) = workload(&control, 172, "restaurant-v2").await;

    let client = caller_at(&control, 173, &[("restaurant-v1", 1), ("restaurant-v2", 1)]).await;
    let proxy = client.addrs.http_proxy.unwrap();

    let mut sender = h1(proxy).await.unwrap();
    let mut send = async || {
        let req = Request::get(format!("http://restaurant:{PORT}/menu"))
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        skein_testkit::client::body_bytes(resp).await.unwrap();
        status
    };
    for _ in 0..50 {
        assert_eq!(send().await, StatusCode::OK);
    }
    assert_eq!(
        (v1.hits(), v2.hits()),
        (50, 0),
        "the route sends everything to v1"
    );

    // Change the route while requests keep flowing; every request must succeed.
    let changed_at = Instant::now();
    let apply = control
        .registry
        .apply(parse_documents(&route_to("restaurant-v2"), "test").unwrap());
    let (applied, ()) = tokio::join!(apply, async {
        for _ in 0..20 {
            assert_eq!(send().await, StatusCode::OK);
        }
    });
    assert_eq!(applied.unwrap()[0].action, "configured");
    let v2_before = v2.hits();
    let mut switched = None;
    for _ in 0..2000 {
        assert_eq!(
            send().await,
            StatusCode::OK,
            "no request fails during the change"
        );
        if v2.hits() > v2_before || v2_before > 0 {
            switched = Some(changed_at.elapsed());
            break;
        }
    }
    let switched = switched.expect("traffic moved to v2");
    eprintln!("route change in force after {switched:?}");
    assert!(switched < Duration::from_secs(1), "took {switched:?}");
    // From now on everything goes to v2.
    let v1_now = v1.hits();
    for _ in 0..20 {
        assert_eq!(send().await, StatusCode::OK);
    }
    assert_eq!(v1.hits(), v1_now, "no more traffic to v1");
    assert!(client.ctx.config_version.load(Ordering::SeqCst) > 0);
    control.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn route_timeouts_answer_504_and_cut_responses_that_outlive_them() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(174).await;
    let resources = format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: restaurant}}
spec: {{selector: {{app: restaurant}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: restaurant}}
spec:
  parentRefs: [{{name: restaurant, port: {PORT}}}]
  rules:
  - matches: [{{headers: [{{name: x-patient, value: 'yes'}}]}}]
    backendRefs: [{{name: restaurant, port: {PORT}}}]
    timeouts: {{request: 0s}}
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}, {{path: {{type: PathPrefix, value: /chunked}}}}]
    backendRefs: [{{name: restaurant, port: {PORT}}}]
    timeouts: {{request: 5s, backendRequest: 300ms}}
"
    );
    apply(&control, &resources).await;
    let (backend, _server) = workload(&control, 175, "restaurant").await;
    let client = caller_at(&control, 176, &[("restaurant", 1)]).await;
    let proxy = client.addrs.http_proxy.unwrap();
    let get = |path: &str, patient: bool| {
        let mut req = Request::get(format!("http://restaurant:{PORT}{path}"));
        if patient {
            req = req.header("x-patient", "yes");
        }
        req.body(empty()).unwrap()
    };

    // No response headers within 300 ms: 504 naming the route, the rule and the field,
    // long before the backend would have answered.
    let mut sender = h1(proxy).await.unwrap();
    let started = Instant::now();
    let resp = sender
        .send_request(get("/slow?ms=5000", false))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(resp.headers()["skein-error"], "timeout");
    let body = skein_testkit::client::body_bytes(resp).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains(
            "within 300ms (timeouts.backendRequest of HTTPRoute default/restaurant, rule 1)"
        ),
        "{body}"
    );
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    let text = client.ctx.metrics.encode();
    assert!(
        text.lines().any(|l| l
            .starts_with("skein_proxy_errors_total{direction=\"outbound\",reason=\"timeout\"}")
            && !l.ends_with(" 0")),
        "the caller's proxy counts the timeout"
    );

    // The same slow request on a rule whose timeout is 0s (disabled) waits for the answer.
    let resp = sender
        .send_request(get("/slow?ms=600", true))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = skein_testkit::client::body_bytes(resp).await.unwrap();
    assert_eq!(&body[..], b"slow done");

    // Headers in time but a body still streaming at 300 ms: the response is cut, not
    // completed late (Gateway API's timeouts cover the whole response).
    let mut sender = h1(proxy).await.unwrap();
    let resp = sender
        .send_request(get("/chunked?n=5000", false))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the headers came in time");
    let cut = skein_testkit::client::body_bytes(resp).await;
    assert!(cut.is_err(), "a body that outlives the timeout is cut");

    // Other requests on the route are unaffected.
    let mut sender = h1(proxy).await.unwrap();
    let resp = sender
        .send_request(get("/chunked?n=3", false))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = skein_testkit::client::body_bytes(resp).await.unwrap();
    assert_eq!(&body[..], b"chunk-0\nchunk-1\nchunk-2\n");
    assert!(backend.hits() >= 4);
    control.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn route_retries_carry_requests_past_a_dead_endpoint() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(177).await;
    let resources = format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: menu}}
spec: {{selector: {{app: menu}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: menu}}
spec:
  parentRefs: [{{name: menu, port: {PORT}}}]
  rules:
  - matches: [{{headers: [{{name: x-no-retry, value: 'yes'}}]}}]
    backendRefs: [{{name: menu, port: {PORT}}}]
  - backendRefs: [{{name: menu, port: {PORT}}}]
    retry: {{attempts: 1, backoff: 1ms}}
    timeouts: {{request: 5s, backendRequest: 2s}}
"
    );
    apply(&control, &resources).await;
    let (alive, _alive_proxy) = workload(&control, 178, "menu").await;
    // The second endpoint's proxy runs, but its application is gone: it answers 502.
    let (dead, _dead_proxy) = workload(&control, 179, "menu").await;
    drop(dead);
    let client = caller_at(&control, 180, &[("menu", 2)]).await;
    let proxy = client.addrs.http_proxy.unwrap();
    let mut sender = h1(proxy).await.unwrap();
    let mut send = async |headers: &[(&str, &str)], body: &'static str| {
        let mut req = Request::post(format!("http://menu:{PORT}/order"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(skein_proxy::http::full(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = skein_testkit::client::body_bytes(resp).await.unwrap();
        (status, body)
    };

    // Without a retry, requests that land on the dead endpoint fail (round robin: half).
    let mut failed = 0;
    for _ in 0..10 {
        let (status, _) = send(&[("x-no-retry", "yes")], "").await;
        if status == StatusCode::BAD_GATEWAY {
            failed += 1;
        }
    }
    assert!(
        failed >= 4,
        "the dead endpoint takes its share: {failed} of 10 failed"
    );

    // With `retry`, each is sent again to the other endpoint, body and all: none fails.
    // A retry does not move the round robin, so only the requests that meet the dead
    // endpoint are retried, well within the budget (`retry.rs` tests the budget itself).
    let served_before = alive.hits();
    for i in 0..20 {
        let (status, body) = send(&[], "two soups").await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(
            &body[..],
            b"two soups",
            "the held body was sent again whole"
        );
    }
    assert_eq!(alive.hits() - served_before, 20);
    let text = client.ctx.metrics.encode();
    let sent =
        skein_proxy::metrics::sum_samples(&text, "skein_route_retries_total", &["result=\"sent\""]);
    assert!(
        (8..=12).contains(&sent),
        "the half that met the dead endpoint were retried: {sent}"
    );
    let refused = skein_proxy::metrics::sum_samples(
        &text,
        "skein_route_retries_total",
        &["result=\"budget_exhausted\""],
    );
    assert_eq!(refused, 0);
    control.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
