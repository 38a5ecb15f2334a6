//! Standards, through a live mesh (a control plane, real proxies with mutual TLS, real
//! HTTP backends), checked with the standards' own tools where they have them.
//!
//! HTTPRoutes mean what the Gateway API says: the most specific match wins whatever order
//! rules are written in, a Service with routes answers 404 to what none matches, a
//! backendRef that cannot be resolved answers 500, a rule a redirect answers needs no
//! backend, a consumer route changes only its own namespace's calls, a producer route
//! sends into another namespace only where a ReferenceGrant there permits it, and a
//! request that
//! reached no application is retried whatever the rule's codes. Metrics are what
//! Prometheus reads: a real Prometheus server scraping two proxies counts exactly the
//! requests sent.
//!
//! Every address is in 127.0.5.0/24.

mod live;

use http::{Request, StatusCode};
use live::*;
use skein_control::server::RunningControl;
use skein_proxy::http::empty;
use skein_testkit::client::h1;
use skein_testkit::HttpBackend;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test]
async fn precedence_404_and_500_hold_through_a_live_mesh() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(1).await;
    // Rules written least specific first: on a first-match proxy everything would go to
    // `root`.
    let yaml = format!(
        "{}apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: restaurant}}
spec:
  parentRefs: [{{name: restaurant, port: {PORT}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: root, port: {PORT}}}]
  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
    backendRefs: [{{name: v2, port: {PORT}}}]
  - matches: [{{path: {{type: PathPrefix, value: /v2}}, headers: [{{name: x-exact, value: '1'}}]}}]
    backendRefs: [{{name: root, port: {PORT}}}]
  - matches: [{{path: {{type: Exact, value: /v2/exact}}}}]
    backendRefs: [{{name: exact, port: {PORT}}}]
  - matches: [{{path: {{type: Exact, value: /gone}}}}]
    backendRefs: [{{name: nowhere, port: {PORT}}}]
  - matches: [{{path: {{type: Exact, value: /off}}}}]
    backendRefs: [{{name: v2, port: {PORT}, weight: 0}}]
  - matches: [{{path: {{type: Exact, value: /kind}}}}]
    backendRefs: [{{group: apps, kind: Deployment, name: v2}}]
  - matches: [{{path: {{type: PathPrefix, value: /moved}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: new.example, statusCode: 301}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: menu}}
spec:
  parentRefs: [{{name: menu, port: {PORT}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{name: menu, port: {PORT}}}]
",
        services(&["restaurant", "root", "v2", "exact", "menu"])
    );
    apply(&control, &yaml).await;
    let (root, _p1) = workload(&control, 11, "root").await;
    let (v2, _p2) = workload(&control, 12, "v2").await;
    let (exact, _p3) = workload(&control, 13, "exact").await;
    let (menu, _p4) = workload(&control, 14, "menu").await;
    let me = caller(
        &control,
        20,
        "default",
        &["restaurant", "root", "v2", "exact", "menu"],
        1,
    )
    .await;

    assert_eq!(get(&me, "restaurant", "/v2/x").await.0, StatusCode::OK);
    assert_eq!(
        (root.hits(), v2.hits()),
        (0, 1),
        "the longer prefix wins though the catch-all is written first"
    );
    assert_eq!(get(&me, "restaurant", "/v2/exact").await.0, StatusCode::OK);
    assert_eq!(exact.hits(), 1, "an exact path outranks every prefix");
    assert_eq!(get(&me, "restaurant", "/elsewhere").await.0, StatusCode::OK);
    assert_eq!(root.hits(), 1);

    let gone = get(&me, "restaurant", "/gone").await;
    assert_eq!(
        gone,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "backend_unresolved".into()
        )
    );
    let off = get(&me, "restaurant", "/off").await;
    assert_eq!(
        off,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "backend_unresolved".into()
        )
    );
    let kind = get(&me, "restaurant", "/kind").await;
    assert_eq!(
        kind,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "backend_unresolved".into()
        ),
        "a backendRef of a kind Skein does not resolve"
    );

    let moved = get(&me, "restaurant", "/moved/1").await;
    assert_eq!(
        moved.0,
        StatusCode::MOVED_PERMANENTLY,
        "a redirect needs no backend"
    );

    assert_eq!(get(&me, "menu", "/api/items").await.0, StatusCode::OK);
    let unmatched = get(&me, "menu", "/other").await;
    assert_eq!(unmatched, (StatusCode::NOT_FOUND, "no_route".into()));
    assert_eq!(
        menu.hits(),
        1,
        "the unmatched request reached no application"
    );
    // Telemetry names the service each refused request addressed, not `unknown` (a
    // request is recorded as its response ends, a moment after the client has it).
    let named = ["dst_service=\"menu\"", "error=\"no_route\""];
    skein_testkit::control::eventually(
        "the refusals are recorded",
        Duration::from_secs(5),
        async || {
            skein_proxy::metrics::sum_samples(
                &me.ctx.metrics.encode(),
                "skein_requests_total",
                &named,
            ) >= 1
        },
    )
    .await
    .unwrap();
    let text = me.ctx.metrics.encode();
    let refused = |service: &str, error: &str| {
        let labels = [
            format!("dst_service=\"{service}\""),
            format!("error=\"{error}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        skein_proxy::metrics::sum_samples(&text, "skein_requests_total", &labels)
    };
    assert_eq!(refused("menu", "no_route"), 1, "{text}");
    assert_eq!(refused("restaurant", "backend_unresolved"), 3, "{text}");
    assert_eq!(refused("unknown", "no_route"), 0, "{text}");
    assert_eq!((root.hits(), v2.hits(), exact.hits()), (1, 1, 1));
    control.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_consumer_route_changes_only_its_own_namespaces_calls() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(30).await;
    let route = |namespace: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: restaurant-{backend}, namespace: {namespace}}}
spec:
  parentRefs: [{{name: restaurant, namespace: default, port: {PORT}}}]
  rules:
  - backendRefs: [{{name: {backend}, namespace: default, port: {PORT}}}]
---
"
        )
    };
    let yaml = format!(
        "{}{}{}",
        services(&["restaurant", "v1", "v2"]),
        route("default", "v1"),
        route("fast", "v2")
    );
    apply(&control, &yaml).await;
    let (v1, _p1) = workload(&control, 31, "v1").await;
    let (v2, _p2) = workload(&control, 32, "v2").await;
    let producer_side = caller(&control, 40, "default", &["restaurant", "v1", "v2"], 1).await;
    let consumer_side = caller(&control, 41, "fast", &["restaurant", "v1", "v2"], 1).await;
    let other = caller(&control, 42, "slow", &["restaurant", "v1", "v2"], 1).await;

    for _ in 0..5 {
        assert_eq!(
            get(&consumer_side, "restaurant.default", "/").await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        (v1.hits(), v2.hits()),
        (0, 5),
        "`fast` follows its own route"
    );
    for caller in [&producer_side, &other] {
        for _ in 0..5 {
            assert_eq!(
                get(caller, "restaurant.default", "/").await.0,
                StatusCode::OK
            );
        }
    }
    assert_eq!(
        (v1.hits(), v2.hits()),
        (10, 5),
        "every other namespace follows the producer route"
    );

    control.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_request_that_reached_no_application_is_retried_whatever_the_codes() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(50).await;
    let yaml = format!(
        "{}apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api}}
spec:
  parentRefs: [{{name: api, port: {PORT}}}]
  rules:
  - backendRefs: [{{name: api, port: {PORT}}}]
    retry: {{attempts: 2, codes: [503], backoff: 1ms}}
---
apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: api}}
spec:
  targetRef: {{name: api}}
  loadBalancer: round-robin
  outlierDetection: {{consecutive5xx: 1000}}
",
        services(&["api"])
    );
    apply(&control, &yaml).await;
    let (alive, _p1) = workload(&control, 51, "api").await;
    // The second endpoint's proxy is up, its application is not: it answers 502 with
    // `skein-error: connect`, and 502 is not among the route's codes.
    let _dead = workload_proxy(&control, 52, "api").await;
    let me = caller(&control, 60, "default", &["api", "api"], 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while me
        .ctx
        .config()
        .destinations
        .iter()
        .all(|d| d.endpoints.len() < 2)
    {
        assert!(
            Instant::now() < deadline,
            "the caller never learned both endpoints"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        let (status, error) = get(&me, "api", "/").await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::OK, ""),
            "request {i}"
        );
    }
    assert_eq!(
        alive.hits(),
        20,
        "every request answered by the live endpoint"
    );
    let text = me.ctx.metrics.encode();
    let sent = text
        .lines()
        .find(|l| l.starts_with("skein_route_retries_total{") && l.contains("result=\"sent\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(sent >= 5, "about half the requests were retried: {sent}");
    control.shutdown().await;
    drop(dir);
}

/// A Prometheus server run for a test, stopped (SIGKILL) when dropped, however the test
/// ends.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` on `addr`, scraping `targets` every second, its data in `dir`.
    fn start(addr: SocketAddr, targets: &[SocketAddr], dir: &std::path::Path) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: skein\n  static_configs: [{{targets: [{}]}}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus; .ci/run does)");
        Prometheus { child, addr }
    }

    /// The value of the instant query `query`, if it has exactly one.
    async fn query(&self, query: &str) -> Option<f64> {
        let mut sender = h1(self.addr).await.ok()?;
        let mut encoded = String::new();
        for b in query.bytes() {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let req = Request::get(format!("/api/v1/query?query={encoded}"))
            .header("host", "prometheus")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.ok()?;
        let body = skein_testkit::client::body_bytes(resp).await.ok()?;
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_counts_exactly_the_requests_sent() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(70).await;
    apply(&control, &services(&["api"])).await;
    let (api, server) = workload(&control, 71, "api").await;
    let me = caller(&control, 72, "default", &["api", "api"], 0).await;
    const SENT: usize = 37;
    for _ in 0..SENT {
        assert_eq!(get(&me, "api", "/").await.0, StatusCode::OK);
    }
    assert_eq!(api.hits(), SENT);
    let prometheus = Prometheus::start(
        SocketAddr::new(ip(73), 9090),
        &[me.addrs.admin, server.addrs.admin],
        dir.path(),
    );
    let outbound =
        "sum(skein_requests_total{job=\"skein\",direction=\"outbound\",dst_service=\"api\"})";
    let inbound =
        "sum(skein_requests_total{job=\"skein\",direction=\"inbound\",dst_service=\"api\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen_out, mut seen_in, mut up) = (None, None, None);
    while Instant::now() < deadline {
        up = prometheus.query("sum(up{job=\"skein\"})").await;
        seen_out = prometheus.query(outbound).await;
        seen_in = prometheus.query(inbound).await;
        if up == Some(2.0) && seen_out.is_some() && seen_in.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(up, Some(2.0), "both proxies scraped");
    assert_eq!(
        seen_out,
        Some(SENT as f64),
        "the caller's proxy, as Prometheus read it"
    );
    assert_eq!(
        seen_in,
        Some(SENT as f64),
        "the callee's proxy, as Prometheus read it"
    );
    drop(prometheus);
    control.shutdown().await;
    drop(dir);
}

/// `skein ARGS` against `control` (its address and admin token given explicitly), with
/// `stdin`.
async fn skein(
    control: &RunningControl,
    args: &[&str],
    stdin: Option<&str>,
) -> skein_testkit::control::CliOutput {
    let server = control.http.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--server",
        &server,
        "--token",
        &control.token,
        "--data-dir",
        "/nonexistent",
    ]);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_skein"));
    skein_testkit::control::skein_cli(bin, &all, stdin).await
}

#[tokio::test]
async fn route_status_conditions_appear_and_clear_as_the_mesh_changes() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(80).await;
    apply(&control, &services(&["web"])).await;
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: web, port: {PORT}}}, {{name: gone}}]
  rules:
  - backendRefs: [{{name: api, port: {PORT}}}]
"
    );
    let applied = skein(&control, &["apply", "-f", "-"], Some(&route)).await;
    assert!(applied.success(), "{applied:?}");
    for said in [
        "warning: HTTPRoute/default/web: parent Service/default/gone: Accepted is False (NoMatchingParent): parentRefs[1]: Service default/gone does not exist",
        "warning: HTTPRoute/default/web: parent Service/default/web: ResolvedRefs is False (BackendNotFound): rules[0].backendRefs[0]: Service default/api does not exist",
    ] {
        assert!(applied.stderr.contains(said), "{}", applied.stderr);
    }
    let shown = skein(&control, &["get", "httproute", "web", "-o", "yaml"], None).await;
    assert!(shown.success(), "{shown:?}");
    for part in [
        "controllerName: skein.dev/mesh",
        "type: Accepted",
        "reason: NoMatchingParent",
        "type: ResolvedRefs",
        "reason: BackendNotFound",
        "lastTransitionTime:",
    ] {
        assert!(shown.stdout.contains(part), "{part}:\n{}", shown.stdout);
    }

    // The Service appears: the condition clears, and the route's own output, status and
    // all, applies back unchanged.
    apply(&control, &services(&["api"])).await;
    let shown = skein(&control, &["get", "httproute", "web", "-o", "yaml"], None).await;
    assert!(
        !shown.stdout.contains("BackendNotFound"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("reason: ResolvedRefs"),
        "{}",
        shown.stdout
    );
    let again = skein(&control, &["apply", "-f", "-"], Some(&shown.stdout)).await;
    assert!(again.success(), "{again:?}");
    assert!(again.stdout.contains("unchanged"), "{}", again.stdout);
    control.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_producer_route_sends_into_another_namespace_only_with_a_grant_there() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(90).await;
    let yaml = format!(
        "{}apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: ledger, namespace: payments}}
spec: {{selector: {{app: ledger}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: restaurant}}
spec:
  parentRefs: [{{name: restaurant, port: {PORT}}}]
  rules:
  - backendRefs: [{{name: ledger, namespace: payments, port: {PORT}}}]
",
        services(&["restaurant"])
    );
    apply(&control, &yaml).await;
    let ledger = HttpBackend::start(SocketAddr::new(ip(91), PORT))
        .await
        .unwrap();
    let _ledger_proxy = workload_proxy_in(&control, 91, "payments", "ledger").await;
    let me = caller(&control, 92, "default", &["restaurant", "ledger"], 1).await;
    let key = skein_model::resource::ResourceKey::new(
        skein_model::resource::Kind::HttpRoute,
        "default",
        "restaurant",
    );
    let resolved = || {
        let status = control.registry.route_status(&key).unwrap();
        let c = &status.parents[0].conditions[1];
        (c.kind.clone(), c.status.clone(), c.reason.clone())
    };

    // `payments` has granted nothing: every caller's traffic for restaurant would land on
    // its Service, so the reference is refused.
    let refused = (
        StatusCode::INTERNAL_SERVER_ERROR,
        "backend_unresolved".to_string(),
    );
    assert_eq!(get(&me, "restaurant", "/").await, refused);
    assert_eq!(
        resolved(),
        (
            "ResolvedRefs".into(),
            "False".into(),
            "RefNotPermitted".into()
        )
    );
    let grant = |to: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: from-default, namespace: payments}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}}]
  to: [{{group: '', kind: Service, name: {to}}}]
"
        )
    };
    apply(&control, &grant("cards")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&me, "restaurant", "/").await,
        refused,
        "a grant for another Service opens nothing"
    );
    apply(&control, &grant("ledger")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&me, "restaurant", "/").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the grant never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ledger.hits(), 1);
    assert_eq!(
        resolved(),
        ("ResolvedRefs".into(), "True".into(), "ResolvedRefs".into())
    );

    // The grant withdrawn, the reference is refused again.
    let grant_key = skein_model::resource::ResourceKey::new(
        skein_model::resource::Kind::ReferenceGrant,
        "payments",
        "from-default",
    );
    assert!(control.registry.delete(&grant_key).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&me, "restaurant", "/").await.0 == StatusCode::OK {
        assert!(Instant::now() < deadline, "the withdrawn grant still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&me, "restaurant", "/").await, refused);
    assert_eq!(ledger.hits(), 1, "nothing reached it once refused");
    control.shutdown().await;
    drop(dir);
}
