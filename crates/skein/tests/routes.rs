//! Live routing through the control plane: an HTTPRoute changed while traffic flows is in
//! force on the proxies within a second, and no request fails on the way; a route or
//! endpoint change reaches the next request on connections that are already open
//! (HTTP/1.1 keep-alive, HTTP/2, gRPC).

use http::{Request, StatusCode};
use skein_control::server::{ControlOptions, RunningControl};
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
    let proxy = workload_proxy(control, host, service, backend.addr(), Protocol::Http, &[]).await;
    (backend, proxy)
}

/// A control-plane-managed proxy on 127.0.0.`host` in front of the application at `app`,
/// registered as a workload of `service` with `labels` besides `app: <service>`.
async fn workload_proxy(
    control: &RunningControl,
    host: u8,
    service: &str,
    app: SocketAddr,
    protocol: Protocol,
    labels: &[(&str, &str)],
) -> RunningProxy {
    let mut config = MeshSpec::new(host, host)
        .service(service, app, protocol)
        .server_config();
    for (k, v) in labels {
        config.workload.labels.insert(k.to_string(), v.to_string());
    }
    config.workload.labels.insert("app".into(), service.into());
    config.workload.name = format!("{service}-{host}");
    config.workload.service = service.into();
    config.inbound.listen = SocketAddr::new(loopback(host), 4143);
    let advertise = config.inbound.listen;
    RunningProxy::start_with_control(config, control_for(control, advertise, service).await)
        .await
        .unwrap()
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

/// A control plane with an embedded store on 127.0.0.`host`, in a fresh data dir that
/// goes when the returned guard drops, however the test ends.
async fn control_at(host: u8) -> (RunningControl, skein_testkit::control::TempDir) {
    let dir = skein_testkit::control::TempDir::new(&format!("routes-{host}")).unwrap();
    let control =
        RunningControl::start(ControlOptions::embedded(dir.path(), loopback(host), "test"))
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
    caller_with(control, host, services, &[]).await
}

/// Like [`caller_at`], with local upstream listeners on 127.0.0.`host`:`port` for each
/// `(service, port)` of `upstreams`.
async fn caller_with(
    control: &RunningControl,
    host: u8,
    services: &[(&str, usize)],
    upstreams: &[(&str, u16)],
) -> RunningProxy {
    let mut config: ProxyConfig =
        MeshSpec::new(host, host).client_config(SocketAddr::new(loopback(host), 4143));
    config.destinations.clear();
    config.outbound.upstreams = upstreams
        .iter()
        .map(|(service, port)| skein_model::Upstream {
            listen: SocketAddr::new(loopback(host), *port),
            service: service.to_string(),
            port: *port,
        })
        .collect();
    let advertise = SocketAddr::new(loopback(host), 4143);
    config.inbound.listen = advertise;
    let service = config.workload.service.clone();
    let client =
        RunningProxy::start_with_control(config, control_for(control, advertise, &service).await)
            .await
            .unwrap();
    // It holds what it calls (on-demand discovery), as its first requests would ask.
    let names: Vec<&str> = services.iter().map(|(s, _)| *s).collect();
    client.discover(&names).await.unwrap();
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
    drop(dir);
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
  - matches: [{{path: {{type: PathPrefix, value: /slow}}, headers: [{{name: x-patient, value: 'yes'}}]}}]
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
    drop(dir);
}

#[tokio::test]
async fn route_retries_carry_requests_past_a_dead_endpoint() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(177).await;
    // Round robin without ejection, so that the dead endpoint keeps taking its share and
    // only retries carry requests past it (resilience.rs tests ejection and peak-EWMA).
    let resources = format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: menu}}
spec: {{selector: {{app: menu}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: menu}}
spec: {{targetRef: {{name: menu}}, loadBalancer: round-robin, outlierDetection: {{maxEjectionPercent: 0}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: menu}}
spec:
  parentRefs: [{{name: menu, port: {PORT}}}]
  rules:
  - matches: [{{headers: [{{name: x-no-retry, value: 'yes'}}]}}]
    backendRefs: [{{name: menu, port: {PORT}}}]
    retry: {{attempts: 0}}
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

    // With retries turned off (`attempts: 0`: not even a request the peer proxy says
    // reached no application goes again), those that land on the dead endpoint fail
    // (round robin: half).
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
    // Only the requests that meet the dead endpoint are retried, well within the budget
    // (`retry.rs` tests the budget itself).
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

    // The central view counts each request once and its retries apart: the route's
    // callers sent 30 requests (10 on the no-retry rule), and `sent` retries.
    use skein_control::telemetry::query::StatKind;
    // The endpoints' proxies saw every try.
    let want = ((30, sent), 30 + sent);
    let mut seen = ((0, 0), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && seen != want {
        let now = skein_control::telemetry::unix_now();
        let minute = Duration::from_secs(60);
        let route = control
            .central
            .stat(StatKind::Routes, Some("default/menu"), minute, now);
        let service = control
            .central
            .stat(StatKind::Services, Some("menu"), minute, now);
        seen = (
            route
                .first()
                .map_or((0, 0), |r| (r.signals.requests, r.signals.retries)),
            service.first().map_or(0, |r| r.signals.requests),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen, want,
        "((route requests, retries), tries the endpoints served)"
    );
    control.shutdown().await;
    drop(dir);
}

const GRPC_PORT: u16 = 18090;

fn service_doc(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: {port}, protocol: {protocol}}}]}}
---
"
    )
}

fn split(parent: &str, port: u16, backends: &[(&str, u32)]) -> String {
    let refs: Vec<String> = backends
        .iter()
        .map(|(name, weight)| format!("{{name: {name}, port: {port}, weight: {weight}}}"))
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {parent}}}
spec:
  parentRefs: [{{name: {parent}, port: {port}}}]
  rules:
  - backendRefs: [{}]
",
        refs.join(", ")
    )
}

/// Waits until the caller's proxy has applied a snapshot in which `service`'s first route
/// sends everything to `backend` (the proxy's acknowledgement of the change).
async fn acknowledged(client: &RunningProxy, service: &str, backend: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = client.ctx.state();
        let in_force = state.config.destinations.iter().any(|d| {
            d.service == service
                && d.routes.first().is_some_and(|r| {
                    r.rules[0]
                        .backend_refs
                        .iter()
                        .all(|b| (b.name == backend) == (b.weight > 0))
                })
        });
        if in_force {
            return;
        }
        assert!(Instant::now() < deadline, "the route change never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_route_flip_reaches_open_http1_h2_and_grpc_connections() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(20).await;
    let mut docs = String::new();
    for s in ["web", "web-a", "web-b"] {
        docs += &service_doc(s, PORT, "http");
    }
    for s in ["echo", "echo-a", "echo-b"] {
        docs += &service_doc(s, GRPC_PORT, "grpc");
    }
    docs += &split("web", PORT, &[("web-a", 1), ("web-b", 0)]);
    docs += "---\n";
    docs += &split("echo", GRPC_PORT, &[("echo-a", 1), ("echo-b", 0)]);
    apply(&control, &docs).await;
    let (a, _pa) = workload(&control, 21, "web-a").await;
    let (b, _pb) = workload(&control, 22, "web-b").await;
    let echo_a = skein_testkit::GrpcBackend::start(SocketAddr::new(loopback(23), GRPC_PORT))
        .await
        .unwrap();
    let _pea = workload_proxy(&control, 23, "echo-a", echo_a.addr(), Protocol::Grpc, &[]).await;
    let echo_b = skein_testkit::GrpcBackend::start(SocketAddr::new(loopback(24), GRPC_PORT))
        .await
        .unwrap();
    let _peb = workload_proxy(&control, 24, "echo-b", echo_b.addr(), Protocol::Grpc, &[]).await;
    let client = caller_with(
        &control,
        25,
        &[("web-a", 1), ("web-b", 1), ("echo-a", 1), ("echo-b", 1)],
        &[("web", PORT), ("echo", GRPC_PORT)],
    )
    .await;
    let web = client.addrs.upstreams[0];
    let echo = client.addrs.upstreams[1];

    // One connection of each kind, opened while the route points at `-a`.
    let mut http1 = h1(web).await.unwrap();
    let mut http2 = skein_testkit::client::h2(web).await.unwrap();
    let mut grpc = skein_testkit::pb::echo_client::EchoClient::connect(format!("http://{echo}"))
        .await
        .unwrap();
    let get = || {
        Request::get(format!("http://web:{PORT}/menu"))
            .body(empty())
            .unwrap()
    };
    let unary = || skein_testkit::pb::EchoRequest {
        message: "hi".into(),
        count: 0,
        fail_with_code: 0,
    };
    for _ in 0..3 {
        assert_eq!(http1.send_request(get()).await.unwrap().status(), 200);
        assert_eq!(http2.send_request(get()).await.unwrap().status(), 200);
        grpc.unary(unary()).await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (6, 0));
    assert_eq!((echo_a.hits(), echo_b.hits()), (3, 0));

    // Flip both routes; once the caller's proxy has the change, the next request on each
    // open connection goes to `-b`.
    let mut flip = split("web", PORT, &[("web-a", 0), ("web-b", 1)]);
    flip += "---\n";
    flip += &split("echo", GRPC_PORT, &[("echo-a", 0), ("echo-b", 1)]);
    apply(&control, &flip).await;
    acknowledged(&client, "web", "web-b").await;
    acknowledged(&client, "echo", "echo-b").await;
    let resp = http1.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        (a.hits(), b.hits()),
        (6, 1),
        "HTTP/1.1 keep-alive: the same connection, the new backend"
    );
    assert_eq!(http2.send_request(get()).await.unwrap().status(), 200);
    assert_eq!(
        (a.hits(), b.hits()),
        (6, 2),
        "HTTP/2: a new stream, the new backend"
    );
    grpc.unary(unary()).await.unwrap();
    assert_eq!(
        (echo_a.hits(), echo_b.hits()),
        (3, 1),
        "gRPC: the next call, the new backend"
    );
    assert!(
        http1.is_ready() && !http1.is_closed(),
        "the HTTP/1.1 connection stayed open"
    );
    control.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_weight_shift_under_load_leaves_the_old_backend_within_a_second() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(26).await;
    let mut docs = String::new();
    for s in ["shop", "shop-a", "shop-b"] {
        docs += &service_doc(s, PORT, "http");
    }
    docs += &split("shop", PORT, &[("shop-a", 100), ("shop-b", 0)]);
    apply(&control, &docs).await;
    let (a, _pa) = workload(&control, 27, "shop-a").await;
    let (b, _pb) = workload(&control, 28, "shop-b").await;
    let client = caller_with(
        &control,
        29,
        &[("shop-a", 1), ("shop-b", 1)],
        &[("shop", PORT)],
    )
    .await;
    let listener = client.addrs.upstreams[0];

    // Four pooled keep-alive connections, each sending requests back to back, bounded
    // in count and time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        let mut conn = h1(listener).await.unwrap();
        load.push(tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let req = Request::get(format!("http://shop:{PORT}/"))
                    .body(empty())
                    .unwrap();
                match conn.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = skein_testkit::client::body_bytes(resp).await;
                    }
                    _ => failed += 1,
                }
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.hits() > 0 && b.hits() == 0);
    apply(
        &control,
        &split("shop", PORT, &[("shop-a", 0), ("shop-b", 100)]),
    )
    .await;
    acknowledged(&client, "shop", "shop-b").await;
    let at_ack = a.hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = a.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for l in load {
        failed += l.await.unwrap();
    }
    assert_eq!(failed, 0, "no request failed during the shift");
    assert!(
        after_a_second - at_ack <= 4,
        "only requests already under way at the acknowledgement (at most one per connection) reached the old backend: {}",
        after_a_second - at_ack
    );
    assert_eq!(
        a.hits(),
        after_a_second,
        "0 requests reached the old backend after a second"
    );
    assert!(b.hits() > 0, "the new backend took the load");
    control.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_withdrawn_endpoint_gets_no_request_from_an_open_connection() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(30).await;
    let round_robin =
        "apiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: menu}\n\
                       spec: {targetRef: {name: menu}, loadBalancer: round-robin}\n";
    apply(
        &control,
        &format!("{}{round_robin}", service_doc("menu", PORT, "http")),
    )
    .await;
    let main = HttpBackend::start(SocketAddr::new(loopback(31), PORT))
        .await
        .unwrap();
    let _pm = workload_proxy(
        &control,
        31,
        "menu",
        main.addr(),
        Protocol::Http,
        &[("tier", "main")],
    )
    .await;
    let extra = HttpBackend::start(SocketAddr::new(loopback(33), PORT))
        .await
        .unwrap();
    let _pe = workload_proxy(
        &control,
        33,
        "menu",
        extra.addr(),
        Protocol::Http,
        &[("tier", "extra")],
    )
    .await;
    let client = caller_with(&control, 34, &[("menu", 2)], &[("menu", PORT)]).await;
    let mut conn = h1(client.addrs.upstreams[0]).await.unwrap();
    let get = || {
        Request::get(format!("http://menu:{PORT}/"))
            .body(empty())
            .unwrap()
    };
    for _ in 0..10 {
        assert_eq!(conn.send_request(get()).await.unwrap().status(), 200);
    }
    assert_eq!(
        (main.hits(), extra.hits()),
        (5, 5),
        "round robin over both endpoints"
    );

    // The Service stops selecting the extra workload: its endpoint is withdrawn, though
    // its proxy and application still run.
    let narrowed = "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: menu}
spec: {selector: {app: menu, tier: main}, ports: [{port: 18080, protocol: http}]}
";
    apply(&control, narrowed).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .ctx
        .config()
        .destinations
        .iter()
        .any(|d| d.service == "menu" && d.endpoints.len() != 1)
    {
        assert!(Instant::now() < deadline, "the withdrawal never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..10 {
        assert_eq!(conn.send_request(get()).await.unwrap().status(), 200);
    }
    assert_eq!(
        (main.hits(), extra.hits()),
        (15, 5),
        "every request on the open connection went to the endpoint still selected"
    );
    control.shutdown().await;
    drop(dir);
}

/// A request body streamed in `chunks`, each after a pause of `gap`, with no length.
fn streamed_body(chunks: Vec<Vec<u8>>, gap: Duration) -> skein_proxy::http::Body {
    use futures_util::StreamExt;
    let stream = futures_util::stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(gap).await;
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(c)))
    });
    skein_proxy::http::boxed(http_body_util::StreamBody::new(stream))
}

#[tokio::test]
async fn streamed_request_bodies_are_retried_by_replaying_a_bounded_copy() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(115).await;
    // Two services of two endpoints each, round robin without ejection, so that each
    // failing endpoint keeps taking every other request: on `menu` one endpoint is gone
    // (its proxy answers 502 before reading the body), on `bulk` one reads each body
    // whole and then answers 503.
    let mut resources = String::new();
    // On `menu`, a long backoff: the failed try must not read on from the client
    // meanwhile (or the retry would miss what it read).
    for (name, backoff) in [("menu", "200ms"), ("bulk", "1ms")] {
        resources.push_str(&format!(
            "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: {name}}}
spec: {{targetRef: {{name: {name}}}, loadBalancer: round-robin, outlierDetection: {{maxEjectionPercent: 0}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: {name}, port: {PORT}}}]
  rules:
  - backendRefs: [{{name: {name}, port: {PORT}}}]
    retry: {{attempts: 1, backoff: {backoff}}}
---
"
        ));
    }
    apply(&control, &resources).await;
    let (menu, _menu_proxy) = workload(&control, 116, "menu").await;
    let (gone, _gone_proxy) = workload(&control, 118, "menu").await;
    drop(gone);
    let (bulk, _bulk_proxy) = workload(&control, 119, "bulk").await;
    let (late, _late_proxy) = workload(&control, 58, "bulk").await;
    late.fail_after_body(503);
    let client = caller_with(&control, 59, &[("menu", 2), ("bulk", 2)], &[("bulk", PORT)]).await;
    let retries = |result: &str| {
        skein_proxy::metrics::sum_samples(
            &client.ctx.metrics.encode(),
            "skein_route_retries_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    let chunks = |n: usize, size: usize| -> Vec<Vec<u8>> {
        let all = skein_testkit::pattern_bytes(n * size);
        all.chunks(size).map(<[u8]>::to_vec).collect()
    };

    // HTTP/1.1 chunked bodies, still arriving when the gone endpoint's proxy answers
    // 502: the retry sends what was read so far, then reads on from the client.
    let mut h1c = h1(client.addrs.http_proxy.unwrap()).await.unwrap();
    for i in 0..10 {
        let body = chunks(5, 10);
        let req = Request::post(format!("http://menu:{PORT}/order"))
            .body(streamed_body(body.clone(), Duration::from_millis(20)))
            .unwrap();
        let resp = h1c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let got = skein_testkit::client::body_bytes(resp).await.unwrap();
        assert_eq!(got, body.concat(), "request {i}: the body arrived whole");
    }
    assert_eq!(
        menu.hits(),
        10,
        "every request was served by the live endpoint"
    );
    let sent = retries("sent");
    assert!(
        (4..=6).contains(&sent),
        "the half that met the gone endpoint were retried: {sent}"
    );

    // Bodies far past the 64 KiB kept, sent as fast as the client can: the gone
    // endpoint's answer comes early, and its try stops there, so the retry still has the
    // beginning and sends the body whole.
    for i in 0..4 {
        let body = chunks(10, 10 * 1024);
        let req = Request::post(format!("http://menu:{PORT}/order"))
            .body(streamed_body(body.clone(), Duration::ZERO))
            .unwrap();
        let resp = h1c.send_request(req).await.unwrap();
        let status = resp.status();
        let got = skein_testkit::client::body_bytes(resp).await.unwrap();
        // A try that sent more than the 64 KiB kept before its answer came is not retried
        // (502), but a body is never cut short.
        match status {
            StatusCode::OK => assert_eq!(got, body.concat(), "request {i}: whole"),
            StatusCode::BAD_GATEWAY => {}
            s => panic!("request {i}: {s}"),
        }
    }
    let large = &menu.seen()[10..];
    assert!(
        large.iter().all(|s| s.body_len == 100 * 1024),
        "the live endpoint got every body whole: {:?}",
        large.iter().map(|s| s.body_len).collect::<Vec<_>>()
    );
    let not_retried = retries("body_too_large");
    println!(
        "100 KiB bodies: {} served whole, {not_retried} not retried",
        large.len()
    );
    assert_eq!(large.len() as u64 + not_retried, 4);
    let sent = retries("sent");

    // HTTP/2 streams whose body the late endpoint read whole before failing: the retry
    // replays the copy.
    let mut h2c = skein_testkit::client::h2(SocketAddr::new(loopback(59), PORT))
        .await
        .unwrap();
    for i in 0..10 {
        let body = chunks(4, 1000);
        let req = Request::post(format!("http://bulk:{PORT}/upload"))
            .body(streamed_body(body.clone(), Duration::from_millis(5)))
            .unwrap();
        let resp = h2c.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let got = skein_testkit::client::body_bytes(resp).await.unwrap();
        assert_eq!(got, body.concat(), "request {i}: the body arrived whole");
    }
    let late_seen = late.seen();
    assert!(
        (4..=6).contains(&late_seen.len()),
        "the late endpoint took its turns: {}",
        late_seen.len()
    );
    assert!(
        late_seen.iter().all(|s| s.body_len == 4000),
        "and read each body whole before failing"
    );
    assert_eq!(retries("sent"), sent + late_seen.len() as u64);

    // Past the 64 KiB kept for a replay, a request is not retried: the caller gets the
    // late endpoint's answer, and the refusal is counted.
    let (mut ok, mut failed) = (0, 0);
    for i in 0..4 {
        let body = chunks(10, 10 * 1024);
        let req = Request::post(format!("http://bulk:{PORT}/upload"))
            .body(streamed_body(body.clone(), Duration::from_millis(1)))
            .unwrap();
        let resp = h2c.send_request(req).await.unwrap();
        let status = resp.status();
        let got = skein_testkit::client::body_bytes(resp).await.unwrap();
        match status {
            StatusCode::OK => {
                assert_eq!(got.len(), 100 * 1024, "request {i}");
                assert_eq!(got, body.concat(), "request {i}");
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(&got[..], b"read 102400 bytes", "request {i}");
                failed += 1;
            }
            s => panic!("request {i}: {s}"),
        }
    }
    assert_eq!((ok, failed), (2, 2), "round robin: two of each");
    assert_eq!(retries("body_too_large") - not_retried, 2);
    assert_eq!(
        bulk.seen()
            .iter()
            .filter(|s| s.body_len == 100 * 1024)
            .count(),
        2
    );
    control.shutdown().await;
    drop(dir);
}
