//! Progressive delivery end to end: a control plane, real proxies in front of two versions
//! of a service (HTTP test backends), a caller's proxy with a bounded load generator, and a
//! `Canary` the control plane drives from the telemetry those proxies report. Intervals
//! are a second; proxies summarise every 200 ms.
//!
//! Every workload of this file lives in 127.0.2.0/24 (its own /24 of loopback, so no other
//! test's hosts are touched).

use http::{Request, StatusCode};
use skein_control::server::{ControlOptions, RunningControl, StoreChoice};
use skein_model::resource::{
    parse_documents, CanaryPhase, CanaryStatus, CheckResult, Kind, Resource, ResourceKey,
    CANARY_ANNOTATION, CANARY_RELEASED_ANNOTATION,
};
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::control::ControlConfig;
use skein_proxy::RunningProxy;
use skein_testkit::control::{skein_cli, TempDir};
use skein_testkit::{HttpBackend, MeshSpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PORT: u16 = 18080;
const BIN: &str = env!("CARGO_BIN_EXE_skein");

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, n))
}

/// The target and its two versions' Services.
const SERVICES: &str = "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant}
spec: {selector: {app: restaurant}, ports: [{port: 18080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant-v1}
spec: {selector: {app: restaurant-v1}, ports: [{port: 18080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant-v2}
spec: {selector: {app: restaurant-v2}, ports: [{port: 18080, protocol: http}]}
";

/// A Canary for `restaurant` with this `analysis` (flow YAML) and extra spec lines.
fn canary(analysis: &str, extra: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1
kind: Canary
metadata: {{name: restaurant}}
spec:
  targetRef: {{name: restaurant, port: {PORT}}}
  stable: restaurant-v1
  canary: restaurant-v2
  analysis: {analysis}
{extra}"
    )
}

fn options(dir: &Path, host: u8, store: StoreChoice, grpc: SocketAddr) -> ControlOptions {
    ControlOptions {
        store,
        grpc,
        ..ControlOptions::embedded(dir, ip(host), &format!("r{host}"))
    }
}

/// An embedded control plane on 127.0.2.`host`.
async fn control_at(host: u8) -> (RunningControl, TempDir) {
    let dir = TempDir::new(&format!("canary-{host}")).unwrap();
    let grpc = SocketAddr::new(ip(host), 0);
    let control = RunningControl::start(options(dir.path(), host, StoreChoice::Embedded, grpc))
        .await
        .unwrap();
    (control, dir)
}

async fn apply(control: &RunningControl, yaml: &str) {
    control
        .registry
        .apply(parse_documents(yaml, "test").unwrap())
        .await
        .unwrap();
}

/// A control plane's HTTP API, in-process or a child process alike.
struct Api {
    http: SocketAddr,
    token: String,
}

fn api(c: &RunningControl) -> Api {
    Api {
        http: c.http,
        token: c.token.clone(),
    }
}

impl Api {
    async fn call(&self, method: http::Method, path: &str, body: &str) -> serde_json::Value {
        use http_body_util::BodyExt;
        let mut sender = skein_testkit::client::h1(self.http).await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.http.to_string())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(skein_proxy::http::full(body.to_string()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            status.is_success(),
            "{path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn apply(&self, yaml: &str) {
        self.call(http::Method::POST, "/api/v1/apply", yaml).await;
    }

    async fn status(&self) -> CanaryStatus {
        let v = self
            .call(
                http::Method::GET,
                "/api/v1/resources/canaries/restaurant",
                "",
            )
            .await;
        match serde_json::from_value::<Resource>(v).unwrap() {
            Resource::Canary(c) => c.status.unwrap_or_default(),
            other => panic!("{other:?}"),
        }
    }

    async fn join(
        &self,
        endpoint: &str,
        advertise: SocketAddr,
        service: &str,
    ) -> Option<ControlConfig> {
        let token = skein_testkit::control::join_token(self.http, &self.token, "default", service)
            .await
            .unwrap();
        Some(ControlConfig {
            endpoint: endpoint.to_string(),
            advertise,
            token,
        })
    }
}

/// A version's backend on 127.0.2.`host` behind its own proxy, a workload of `service`.
async fn version(
    control: &Api,
    endpoint: &str,
    host: u8,
    service: &str,
) -> (HttpBackend, RunningProxy) {
    let app = HttpBackend::start(SocketAddr::new(ip(host), PORT))
        .await
        .unwrap();
    let mut spec = MeshSpec::new(1, 1);
    spec.server_ip = ip(host);
    spec.client_ip = ip(host);
    let mut config = spec
        .service(service, app.addr(), Protocol::Http)
        .server_config();
    config.workload.labels.insert("app".into(), service.into());
    config.workload.name = format!("{service}-1");
    config.workload.service = service.into();
    config.inbound.listen = SocketAddr::new(ip(host), 4143);
    let advertise = config.inbound.listen;
    let proxy =
        RunningProxy::start_with_control(config, control.join(endpoint, advertise, service).await)
            .await
            .unwrap();
    (app, proxy)
}

/// The caller's proxy on 127.0.2.`host`, reached as an HTTP proxy; returned once it knows
/// both versions' endpoints.
async fn caller(control: &Api, endpoint: &str, host: u8) -> RunningProxy {
    let mut spec = MeshSpec::new(1, 1);
    spec.client_ip = ip(host);
    let mut config: ProxyConfig = spec.client_config(SocketAddr::new(ip(host), 4143));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    let advertise = SocketAddr::new(ip(host), 4143);
    config.inbound.listen = advertise;
    let proxy =
        RunningProxy::start_with_control(config, control.join(endpoint, advertise, "client").await)
            .await
            .unwrap();
    // It holds what it calls (on-demand discovery), as its first requests would ask.
    proxy
        .discover(&["restaurant", "restaurant-v1", "restaurant-v2"])
        .await
        .unwrap();
    eventually(
        "the caller knows both versions",
        Duration::from_secs(10),
        || {
            let cfg = proxy.ctx.config();
            ["restaurant-v1", "restaurant-v2"].iter().all(|s| {
                cfg.destinations
                    .iter()
                    .any(|d| d.service == *s && !d.endpoints.is_empty())
            })
        },
    )
    .await;
    proxy
}

async fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A control plane on 127.0.2.`base` with [`SERVICES`], the two versions' backends and
/// proxies on `base + 1` (v1) and `base + 2` (v2), and the caller's proxy on `base`.
struct Bed {
    control: RunningControl,
    _dir: TempDir,
    v1: HttpBackend,
    v2: HttpBackend,
    _versions: [RunningProxy; 2],
    client: RunningProxy,
}

async fn bed(base: u8) -> Bed {
    let (control, _dir) = control_at(base).await;
    let endpoint = control.grpc.to_string();
    apply(&control, SERVICES).await;
    let (v1, p1) = version(&api(&control), &endpoint, base + 1, "restaurant-v1").await;
    let (v2, p2) = version(&api(&control), &endpoint, base + 2, "restaurant-v2").await;
    let client = caller(&api(&control), &endpoint, base).await;
    Bed {
        control,
        _dir,
        v1,
        v2,
        _versions: [p1, p2],
        client,
    }
}

impl Bed {
    async fn finish(self) {
        self.client.shutdown().await;
        self.control.shutdown().await;
    }
}

/// A bounded load generator: sequential GETs to `restaurant` through the caller's proxy,
/// one at least every 4 ms, for at most 90 s or until stopped. `tag(i)` gives request
/// `i`'s extra headers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: SocketAddr, tag: fn(usize) -> Vec<(&'static str, String)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(90);
            let mut sender = None;
            let mut i = 0;
            while !s.load(Ordering::SeqCst) && Instant::now() < until {
                let pace = tokio::time::sleep(Duration::from_millis(4));
                if sender.is_none() {
                    sender = skein_testkit::client::h1(proxy).await.ok();
                }
                let Some(tx) = sender.as_mut() else {
                    pace.await;
                    continue;
                };
                let mut req = Request::get(format!("http://restaurant:{PORT}/status/200?i={i}"));
                for (k, v) in tag(i) {
                    req = req.header(k, v);
                }
                match tx
                    .send_request(req.body(skein_proxy::http::empty()).unwrap())
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = skein_testkit::client::body_bytes(resp).await;

                        if status == StatusCode::OK {
                            o.fetch_add(1, Ordering::SeqCst);
                        } else {
                            f.lock().unwrap().push(status.as_u16());
                        }
                    }
                    Err(_) => sender = None,
                }
                i += 1;
                pace.await;
            }
        });
        Load {
            stop,
            ok,
            failed,
            task,
        }
    }

    fn plain(proxy: SocketAddr) -> Load {
        Load::start(proxy, |_| Vec::new())
    }

    /// Stops; returns (succeeded, failed statuses).
    async fn finish(self) -> (usize, Vec<u16>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failed)
    }
}

/// Applies a Canary and waits until the caller routes `restaurant` by its route.
async fn start(control: &RunningControl, client: &RunningProxy, yaml: &str) {
    apply(control, yaml).await;
    eventually(
        "the canary's route reaches the caller",
        Duration::from_secs(10),
        || {
            client
                .ctx
                .config()
                .destinations
                .iter()
                .any(|d| d.service == "restaurant" && !d.routes.is_empty())
        },
    )
    .await;
}

fn status_of(control: &RunningControl) -> CanaryStatus {
    let key = ResourceKey::new(Kind::Canary, "default", "restaurant");
    match control.registry.get(&key) {
        Some(Resource::Canary(c)) => c.status.unwrap_or_default(),
        _ => CanaryStatus::default(),
    }
}

async fn wait_for(
    control: &RunningControl,
    within: Duration,
    what: &str,
    ok: impl Fn(&CanaryStatus) -> bool,
) -> CanaryStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = status_of(control);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; status now:\n{}",
            serde_yaml_ng::to_string(&s).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (5 s at most) until the owned route's weights are `want`: the controller records
/// a decision in the status first, then writes the route.
async fn route_becomes(control: &RunningControl, want: (u32, u32)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while route_weights(control) != want {
        assert!(
            Instant::now() < deadline,
            "the route's weights stayed {:?}, not {want:?}",
            route_weights(control)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The owned route's (restaurant-v1, restaurant-v2) weights of its last rule.
fn route_weights(control: &RunningControl) -> (u32, u32) {
    let key = ResourceKey::new(Kind::HttpRoute, "default", "restaurant");
    let Some(Resource::HttpRoute(r)) = control.registry.get(&key) else {
        panic!("no route written");
    };
    assert_eq!(
        r.metadata
            .annotations
            .get(CANARY_ANNOTATION)
            .map(String::as_str),
        Some("restaurant")
    );
    let rule = r.spec.rules.last().unwrap();
    let w = |name: &str| {
        rule.backend_refs
            .iter()
            .find(|b| b.name == name)
            .map_or(0, |b| b.weight)
    };
    (w("restaurant-v1"), w("restaurant-v2"))
}

async fn cli(control: &RunningControl, args: &[&str]) -> skein_testkit::control::CliOutput {
    let server = control.http.to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&[
        "--server",
        server.as_str(),
        "--token",
        control.token.as_str(),
    ]);
    skein_cli(Path::new(BIN), &all, None).await
}

#[tokio::test]
async fn what_a_canary_drives_is_refused_to_others_and_released_when_it_goes() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(5).await;
    apply(&control, SERVICES).await;
    let try_apply = async |yaml: &str| {
        control
            .registry
            .apply(parse_documents(yaml, "test").unwrap())
            .await
            .map_err(|e| e.to_string())
    };
    // A user's route for the target is in the way of a Canary.
    let user_route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: split}}\n\
         spec: {{parentRefs: [{{name: restaurant}}], rules: [{{backendRefs: [{{name: restaurant-v1, port: {PORT}}}]}}]}}\n"
    );
    try_apply(&user_route).await.unwrap();
    let c = canary("{interval: 1s, stepWeights: [10]}", "");
    let err = try_apply(&c).await.unwrap_err();
    assert!(
        err.contains("HTTPRoute/default/split routes Service default/restaurant, which Canary/default/restaurant drives through its own route HTTPRoute/default/restaurant"),
        "{err}"
    );
    assert!(
        status_of(&control) == CanaryStatus::default(),
        "nothing was stored"
    );
    control
        .registry
        .delete(&ResourceKey::new(Kind::HttpRoute, "default", "split"))
        .await
        .unwrap();
    try_apply(&c).await.unwrap();
    // The controller writes its route at once: everything to stable.
    eventually("the owned route", Duration::from_secs(5), || {
        control
            .registry
            .get(&ResourceKey::new(Kind::HttpRoute, "default", "restaurant"))
            .is_some()
    })
    .await;
    assert_eq!(route_weights(&control), (100, 0));
    // Now a user's route for the target, a write of the owned route, and a second Canary
    // for the same Service are refused, each saying why.
    let err = try_apply(&user_route).await.unwrap_err();
    assert!(
        err.contains("which Canary/default/restaurant drives"),
        "{err}"
    );
    let over = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: restaurant}}\n\
         spec: {{parentRefs: [{{name: restaurant}}], rules: [{{backendRefs: [{{name: restaurant-v2, port: {PORT}}}]}}]}}\n"
    );
    let err = try_apply(&over).await.unwrap_err();
    assert!(
        err.contains(
            "HTTPRoute/default/restaurant is written by Canary/default/restaurant's controller"
        ),
        "{err}"
    );
    let second = c.replace("name: restaurant}\nspec", "name: other}\nspec");
    let err = try_apply(&second).await.unwrap_err();
    assert!(
        err.contains(
            "Canary/default/other: Canary/default/restaurant already drives Service restaurant"
        ),
        "{err}"
    );
    // An invalid Canary is refused whole, naming the field; the stored one stays.
    let bad = canary("{interval: 1s, stepWeights: [50, 10]}", "");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let out = cli(&control, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(
        out.failed().contains("spec.analysis.stepWeights[1]: \"10\" is not accepted; expected weights in increasing order"),
        "{}",
        out.failed()
    );
    // Re-applying the same Canary keeps the controller's status.
    let before = wait_for(&control, Duration::from_secs(5), "started", |s| {
        s.observed_generation == 1
    })
    .await;
    assert_eq!(try_apply(&c).await.unwrap()[0].action, "unchanged");
    assert_eq!(
        status_of(&control).observed_generation,
        before.observed_generation
    );
    // Operators' requests to an unknown Canary say so.
    let out = cli(&control, &["canary", "pause", "nosuch"]).await;
    assert!(
        out.failed().contains("Canary/default/nosuch not found"),
        "{}",
        out.failed()
    );

    // Deleting the Canary leaves its route as it was, released to the user.
    control
        .registry
        .delete(&ResourceKey::new(Kind::Canary, "default", "restaurant"))
        .await
        .unwrap();
    eventually(
        "the route is released",
        Duration::from_secs(5),
        || match control
            .registry
            .get(&ResourceKey::new(Kind::HttpRoute, "default", "restaurant"))
        {
            Some(Resource::HttpRoute(r)) => {
                r.metadata
                    .annotations
                    .get(CANARY_RELEASED_ANNOTATION)
                    .map(String::as_str)
                    == Some("restaurant")
                    && !r.metadata.annotations.contains_key(CANARY_ANNOTATION)
            }
            _ => false,
        },
    )
    .await;
    try_apply(&over).await.unwrap();
    control.shutdown().await;
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_step_by_step_and_callers_see_no_failures() {
    skein_testkit::init_tracing();
    let bed = bed(10).await;
    let (control, client, v1, v2) = (&bed.control, &bed.client, &bed.v1, &bed.v2);
    let proxy = client.addrs.http_proxy.unwrap();
    start(
        control,
        client,
        &canary(
            "{interval: 1s, threshold: 2, stepWeights: [10, 30, 50], minRequests: 10}",
            "",
        ),
    )
    .await;
    let load = Load::plain(proxy);
    let mut weights = Vec::new();
    let done = {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let s = status_of(control);
            if weights.last() != Some(&s.canary_weight) {
                weights.push(s.canary_weight);
            }
            if s.phase == CanaryPhase::Succeeded {
                break s;
            }

            assert!(
                Instant::now() < deadline,
                "not promoted within 40 s:\n{}",
                serde_yaml_ng::to_string(&s).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (ok, failed) = load.finish().await;
    assert!(failed.is_empty(), "callers saw failures: {failed:?}");
    assert!(ok > 200, "the load flowed: {ok}");
    assert_eq!(weights, [0, 10, 30, 50, 100], "every step, in order");
    let passed: Vec<_> = done
        .checks
        .iter()
        .filter(|c| c.result == CheckResult::Passed)
        .collect();
    assert_eq!(
        passed.len(),
        3,
        "one passed check per step: {:#?}",
        done.checks
    );
    assert_eq!(
        passed.iter().map(|c| c.weight).collect::<Vec<_>>(),
        [10, 30, 50]
    );
    for c in &passed {
        assert!(c.requests >= 10, "{c:?}");
        assert_eq!(c.success_rate, Some(100.0));
        assert!(c.p99_ms.is_some_and(|p| p < 500.0), "{c:?}");
    }
    assert_eq!(done.failed_checks, 0);
    let messages: Vec<_> = done.events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("check passed (") && m.ends_with("canary 10% → 30%")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("every step passed")),
        "{messages:#?}"
    );
    assert_eq!(
        *messages.last().unwrap(),
        "promoted: the canary serves all the target's traffic"
    );
    route_becomes(control, (0, 100)).await;
    // Every caller now reaches the canary only.
    let (a, b) = (v1.hits(), v2.hits());
    let load = Load::plain(proxy);
    eventually("40 more requests", Duration::from_secs(10), || {
        load.ok.load(Ordering::SeqCst) >= 40
    })
    .await;
    let (ok, failed) = load.finish().await;
    assert!(failed.is_empty());
    assert_eq!(v1.hits(), a, "stable gets nothing after promotion");
    assert_eq!(v2.hits() - b, ok, "the canary gets everything");

    // What an operator reads.
    let out = cli(control, &["canary", "status", "restaurant"]).await;
    let text = out.ok();
    assert!(text.contains("Canary default/restaurant: Service restaurant from restaurant-v1 (stable) to restaurant-v2 (canary)"), "{text}");
    assert!(text.contains("Phase:    Succeeded"), "{text}");
    assert!(
        text.contains(&format!(
            "[{}] 100%   steps 10% → 30% → 50% → promote",
            "#".repeat(40)
        )),
        "{text}"
    );
    assert!(
        text.contains("Last checks:") && text.contains("passed"),
        "{text}"
    );
    assert!(
        text.contains("promoted: the canary serves all the target's traffic"),
        "{text}"
    );
    let out = cli(control, &["get", "canary", "restaurant", "-o", "yaml"]).await;
    assert!(out.ok().contains("phase: Succeeded"), "{}", out.ok());
    assert!(out.ok().contains("canaryWeight: 100"), "{}", out.ok());
    let out = cli(control, &["get", "canaries"]).await;
    let table = out.ok();
    assert!(table.lines().next().unwrap().contains("TARGET"), "{table}");
    assert!(table.contains("restaurant   Succeeded   100%"), "{table}");
    let out = cli(control, &["canary", "promote", "restaurant"]).await;
    assert!(
        out.failed().contains("is Succeeded: the rollout is over"),
        "{}",
        out.failed()
    );
    // A new spec that would send everything back to the old stable is refused; the next
    // release starts from the promoted Service, and labels alone restart nothing.
    let back = canary(
        "{interval: 2s, threshold: 2, stepWeights: [10, 30, 50], minRequests: 10}",
        "",
    );
    let err = control
        .registry
        .apply(parse_documents(&back, "test").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Canary/default/restaurant promoted Service restaurant-v2, which serves all of Service restaurant's traffic now; a new rollout starts from it: set stable: restaurant-v2"),
        "{err}"
    );
    assert_eq!(status_of(control).phase, CanaryPhase::Succeeded);
    let labelled = canary(
        "{interval: 1s, threshold: 2, stepWeights: [10, 30, 50], minRequests: 10}",
        "",
    )
    .replace(
        "metadata: {name: restaurant}",
        "metadata: {name: restaurant, labels: {team: food}}",
    );
    apply(control, &labelled).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = status_of(control);
    assert_eq!(
        (s.phase, s.canary_weight),
        (CanaryPhase::Succeeded, 100),
        "{s:?}"
    );
    assert_eq!(s.observed_generation, 2);
    let next = canary("{interval: 1s, stepWeights: [10]}", "").replace(
        "stable: restaurant-v1\n  canary: restaurant-v2",
        "stable: restaurant-v2\n  canary: restaurant-v1",
    );
    apply(control, &next).await;
    let s = wait_for(control, Duration::from_secs(5), "the next release", |s| {
        s.phase == CanaryPhase::Progressing
    })
    .await;
    assert_eq!(s.canary_weight, 10, "{s:?}");
    route_becomes(control, (10, 90)).await;
    bed.finish().await;
}

#[tokio::test]
async fn a_canary_answering_errors_is_rolled_back_within_threshold_checks() {
    skein_testkit::init_tracing();
    let bed = bed(20).await;
    let (control, client, v2) = (&bed.control, &bed.client, &bed.v2);
    v2.fail_every(5);
    let proxy = client.addrs.http_proxy.unwrap();
    start(
        control,
        client,
        &canary(
            "{interval: 1s, threshold: 2, stepWeights: [20, 40, 60], minRequests: 10}",
            "",
        ),
    )
    .await;
    let load = Load::plain(proxy);
    let done = wait_for(control, Duration::from_secs(30), "rolled back", |s| {
        s.phase == CanaryPhase::Failed
    })
    .await;
    let (ok, failed) = load.finish().await;
    // Rolled back at the second failed check, the one after the first.
    let first = done
        .checks
        .iter()
        .position(|c| c.result == CheckResult::Failed)
        .unwrap();
    assert_eq!(done.checks.len() - first, 2, "{:#?}", done.checks);
    assert!(done.checks[first..]
        .iter()
        .all(|c| c.result == CheckResult::Failed));
    assert!(
        done.checks.iter().all(|c| c.weight == 20),
        "never past the first step: {:#?}",
        done.checks
    );
    let rate = done.checks[first].success_rate.unwrap();
    assert!((70.0..=90.0).contains(&rate), "about 80 %: {rate}");
    assert_eq!(done.canary_weight, 0);
    let last = &done.events.last().unwrap().message;
    assert!(
        last.starts_with(
            "rolled back to 0% after 2 failed checks (threshold 2): request-success-rate"
        ),
        "{last}"
    );
    route_becomes(control, (100, 0)).await;
    // What callers saw stayed within the canary's weight: 20 % of 20 %.
    let total = ok + failed.len();
    assert!(failed.iter().all(|s| *s == 500), "{failed:?}");
    assert!(
        failed.len() as f64 <= total as f64 * 0.2 * 0.2 * 1.6 + 5.0,
        "{} of {total} failed",
        failed.len()
    );
    // After the rollback nobody reaches the canary.
    let before = v2.hits();
    let load = Load::plain(proxy);
    eventually("40 more requests", Duration::from_secs(10), || {
        load.ok.load(Ordering::SeqCst) >= 40
    })
    .await;
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(v2.hits(), before);
    bed.finish().await;
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back() {
    skein_testkit::init_tracing();
    let bed = bed(30).await;
    let (control, client, v2) = (&bed.control, &bed.client, &bed.v2);
    v2.set_delay(Duration::from_millis(120));
    let analysis = "{interval: 1s, threshold: 1, stepWeights: [30, 60], minRequests: 3, \
                    metrics: [{name: request-success-rate, thresholdRange: {min: 99}}, {name: request-duration, thresholdRange: {max: 50}}]}";
    start(control, client, &canary(analysis, "")).await;
    let load = Load::plain(client.addrs.http_proxy.unwrap());
    let done = wait_for(control, Duration::from_secs(30), "rolled back", |s| {
        s.phase == CanaryPhase::Failed
    })
    .await;
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "slow, not failing: {failed:?}");
    let check = done.checks.last().unwrap();
    assert_eq!(check.result, CheckResult::Failed);
    assert!(check.p99_ms.is_some_and(|p| p >= 100.0), "{check:?}");
    assert!(
        check.message.starts_with("request-duration p99 ")
            && check.message.ends_with("ms > max 50ms"),
        "{check:?}"
    );
    route_becomes(control, (100, 0)).await;
    bed.finish().await;
}

#[tokio::test]
async fn a_canary_with_too_little_traffic_holds_and_is_never_promoted() {
    skein_testkit::init_tracing();
    let bed = bed(40).await;
    let (control, client) = (&bed.control, &bed.client);
    // A trickle: far fewer than minRequests reach the canary per interval.
    let mut sender = skein_testkit::client::h1(client.addrs.http_proxy.unwrap())
        .await
        .unwrap();
    start(
        control,
        client,
        &canary("{interval: 1s, stepWeights: [50], minRequests: 200}", ""),
    )
    .await;
    let held = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = Request::get(format!("http://restaurant:{PORT}/"))
                .body(skein_proxy::http::empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let s = status_of(control);
            if s.checks.len() >= 4 {
                break s;
            }
            assert!(Instant::now() < deadline, "no checks: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(held.phase, CanaryPhase::Progressing);
    assert_eq!((held.canary_weight, held.failed_checks), (50, 0));
    assert!(
        held.checks
            .iter()
            .all(|c| c.result == CheckResult::Inconclusive),
        "{:#?}",
        held.checks
    );
    assert!(
        held.message
            .contains("fewer than minRequests 200; the rollout holds"),
        "{}",
        held.message
    );
    route_becomes(control, (50, 50)).await;
    bed.finish().await;
}

#[tokio::test]
async fn ab_mode_sends_only_matching_requests_to_the_canary_then_promotes() {
    skein_testkit::init_tracing();
    let bed = bed(50).await;
    let (control, client, v1, v2) = (&bed.control, &bed.client, &bed.v1, &bed.v2);
    let analysis = "{interval: 1s, iterations: 3, minRequests: 10, match: [{headers: [{name: x-canary, value: 'yes'}]}, {cookies: [{name: canary, value: always}]}]}";
    start(control, client, &canary(analysis, "")).await;
    eventually(
        "the A/B route reaches the caller",
        Duration::from_secs(10),
        || {
            client
                .ctx
                .config()
                .destinations
                .iter()
                .any(|d| d.service == "restaurant" && d.routes.iter().any(|r| r.rules.len() == 2))
        },
    )
    .await;
    // Every third request asks for the canary by header, every fifth by cookie.
    let load = Load::start(client.addrs.http_proxy.unwrap(), |i| {
        let mut h = vec![("x-test-i", i.to_string())];
        if i % 3 == 0 {
            h.push(("x-canary", "yes".to_string()));
        } else if i % 5 == 0 {
            h.push(("cookie", "theme=dark; canary=always".to_string()));
        }
        h
    });
    let done = wait_for(control, Duration::from_secs(30), "promoted", |s| {
        s.phase == CanaryPhase::Succeeded
    })
    .await;
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        done.checks
            .iter()
            .filter(|c| c.result == CheckResult::Passed)
            .count(),
        3
    );
    let asked = |r: &skein_testkit::http::SeenRequest| {
        r.header("x-canary") == Some("yes")
            || r.header("cookie")
                .is_some_and(|c| c.contains("canary=always"))
    };
    // Stable never saw a request that asked for the canary…
    let stable = v1.seen();
    assert!(stable.len() > 100, "{}", stable.len());
    assert!(
        stable.iter().all(|r| !asked(r)),
        "a matching request reached stable"
    );
    // …and the canary saw only those until it was promoted (then everything).
    let canary = v2.seen();
    let first_plain = canary
        .iter()
        .position(|r| !asked(r))
        .unwrap_or(canary.len());
    assert!(
        first_plain >= 30,
        "the canary saw a plain request after {first_plain} matching ones"
    );
    assert!(
        canary[..first_plain]
            .iter()
            .any(|r| r.header("cookie").is_some()),
        "cookies matched too"
    );
    bed.finish().await;
}

#[tokio::test]
async fn a_mirror_phase_checks_copies_of_the_traffic_before_any_weight_moves() {
    skein_testkit::init_tracing();
    let bed = bed(90).await;
    let (control, client, v1, v2) = (&bed.control, &bed.client, &bed.v1, &bed.v2);
    let analysis = "{interval: 1s, mirror: true, stepWeights: [50], minRequests: 10}";
    start(control, client, &canary(analysis, "")).await;
    eventually(
        "the mirror route reaches the caller",
        Duration::from_secs(10),
        || {
            client.ctx.config().destinations.iter().any(|d| {
                d.service == "restaurant" && d.routes.iter().any(|r| !r.rules[0].filters.is_empty())
            })
        },
    )
    .await;
    let load = Load::plain(client.addrs.http_proxy.unwrap());
    // While mirrored: callers are answered by stable, the canary gets copies, and its
    // check counts them.
    let moved = wait_for(
        control,
        Duration::from_secs(20),
        "past the mirror phase",
        |s| s.canary_weight == 50,
    )
    .await;
    let first = &moved.checks[0];
    assert_eq!(
        (first.weight, first.result),
        (0, CheckResult::Passed),
        "{first:?}"
    );
    assert!(first.requests >= 10, "the copies counted: {first:?}");
    assert!(
        moved
            .events
            .iter()
            .any(|e| e.message.ends_with("canary mirrored traffic → 50%")),
        "{:#?}",
        moved.events
    );
    let done = wait_for(control, Duration::from_secs(20), "promoted", |s| {
        s.phase == CanaryPhase::Succeeded
    })
    .await;
    let (ok, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        done.checks
            .iter()
            .filter(|c| c.result == CheckResult::Passed)
            .count(),
        2
    );
    // Stable answered every request until the split; the canary saw copies before that.
    assert!(v1.hits() > 0 && v2.hits() > 0);
    assert!(
        v1.hits() + v2.hits() > ok,
        "copies are extra requests: {} + {} vs {ok}",
        v1.hits(),
        v2.hits()
    );
    bed.finish().await;
}

#[tokio::test]
async fn webhooks_gate_the_start_the_checks_and_the_promotion() {
    skein_testkit::init_tracing();
    let bed = bed(60).await;
    let (control, client) = (&bed.control, &bed.client);
    let hooks = HttpBackend::start(SocketAddr::new(ip(63), 0))
        .await
        .unwrap();
    let gate = HttpBackend::start(SocketAddr::new(ip(63), 0))
        .await
        .unwrap();
    let slow = HttpBackend::start(SocketAddr::new(ip(63), 0))
        .await
        .unwrap();
    hooks.fail_after_body(500); // pre-rollout refuses at first
    gate.fail_after_body(403); // confirm-promotion refuses until approved
    slow.set_delay(Duration::from_secs(5)); // the rollout webhook hangs at first
    let webhooks = format!(
        "  webhooks:
  - {{name: smoke, type: pre-rollout, url: 'http://{}/pre', timeout: 2s}}
  - {{name: load, type: rollout, url: 'http://{}/load', timeout: 300ms, metadata: {{cmd: 'hey -z 1m'}}}}
  - {{name: approve, type: confirm-promotion, url: 'http://{}/approve'}}
  - {{name: notify, type: post-rollout, url: 'http://{}/done'}}
",
        hooks.addr(),
        slow.addr(),
        gate.addr(),
        hooks.addr()
    );
    start(
        control,
        client,
        &canary(
            "{interval: 1s, threshold: 4, stepWeights: [20], minRequests: 5}",
            &webhooks,
        ),
    )
    .await;
    let load = Load::plain(client.addrs.http_proxy.unwrap());
    // A failing pre-rollout webhook: failed checks, no traffic moves.
    let s = wait_for(control, Duration::from_secs(15), "pre-rollout fails", |s| {
        s.failed_checks >= 1
    })
    .await;
    assert_eq!((s.phase, s.canary_weight), (CanaryPhase::Initializing, 0));
    assert!(
        s.checks
            .last()
            .unwrap()
            .message
            .contains("pre-rollout webhook smoke answered 500"),
        "{:?}",
        s.checks
    );
    route_becomes(control, (100, 0)).await;
    hooks.fail_after_body(0);
    let s = wait_for(control, Duration::from_secs(15), "progressing", |s| {
        s.phase == CanaryPhase::Progressing
    })
    .await;
    let failed_before = s.failed_checks;
    // The rollout webhook hangs: its check fails on the timeout.
    let s = wait_for(control, Duration::from_secs(15), "a timed-out check", |s| {
        s.failed_checks > failed_before
    })
    .await;
    let msg = &s.checks.last().unwrap().message;
    assert!(
        msg.contains("rollout webhook load gave no answer within its timeout 300ms"),
        "{msg}"
    );
    slow.set_delay(Duration::ZERO);
    // Every step passed, but promotion waits for approval, checks going on.
    let s = wait_for(
        control,
        Duration::from_secs(15),
        "waiting for approval",
        |s| s.message.contains("waiting for approval"),
    )
    .await;
    assert!(
        s.message
            .contains("confirm-promotion webhook approve answered 403"),
        "{}",
        s.message
    );
    let checks = s.checks.len();
    let s = wait_for(control, Duration::from_secs(15), "still waiting", |s| {
        s.checks.len() >= checks + 2
    })
    .await;
    assert_eq!(
        (s.phase, s.canary_weight),
        (CanaryPhase::Progressing, 20),
        "held at the last step"
    );
    gate.fail_after_body(0);
    // Post-rollout webhooks are called once the end is recorded, so their event comes a
    // pass after `Succeeded`.
    let s = wait_for(
        control,
        Duration::from_secs(15),
        "promoted and notified",
        |s| {
            s.phase == CanaryPhase::Succeeded
                && s.events
                    .iter()
                    .any(|e| e.message.starts_with("post-rollout webhook notify"))
        },
    )
    .await;
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        s.events
            .iter()
            .any(|e| e.message == "post-rollout webhook notify answered 200"),
        "{:#?}",
        s.events
    );
    // What webhooks were told.
    let seen = hooks.seen();
    assert!(seen
        .iter()
        .any(|r| r.path == "/pre" && r.method == http::Method::POST));
    assert!(seen.iter().any(|r| r.path == "/done"));
    assert!(gate
        .seen()
        .iter()
        .all(|r| r.header("content-type") == Some("application/json")));
    bed.finish().await;
}

#[tokio::test]
async fn a_killed_control_plane_resumes_the_rollout_at_the_recorded_step() {
    use skein_testkit::control::ControlProcess;
    skein_testkit::init_tracing();
    let dir = TempDir::new("canary-restart").unwrap();
    let grpc = skein_testkit::control::free_port(ip(70)).unwrap();
    let boot = async || {
        let http = SocketAddr::new(ip(70), 0);
        ControlProcess::start(Path::new(BIN), dir.path(), http, grpc, &[])
            .await
            .unwrap()
    };
    let cp = boot().await;
    let control = Api {
        http: cp.http,
        token: cp.token(),
    };
    let endpoint = grpc.to_string();
    control.apply(SERVICES).await;
    let (_v1, _p1) = version(&control, &endpoint, 71, "restaurant-v1").await;
    let (_v2, _p2) = version(&control, &endpoint, 72, "restaurant-v2").await;
    let client = caller(&control, &endpoint, 70).await;
    let steps = "{interval: 1s, stepWeights: [10, 20, 30, 40, 50], minRequests: 10}";
    control.apply(&canary(steps, "")).await;
    eventually(
        "the canary's route reaches the caller",
        Duration::from_secs(10),
        || {
            client
                .ctx
                .config()
                .destinations
                .iter()
                .any(|d| d.service == "restaurant" && !d.routes.is_empty())
        },
    )
    .await;
    let load = Load::plain(client.addrs.http_proxy.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mid = loop {
        let s = control.status().await;
        if s.canary_weight >= 20 {
            break s;
        }
        assert!(Instant::now() < deadline, "two steps: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Killed mid-rollout: only the store remembers.
    cp.signal("KILL").unwrap();
    drop(cp);
    let cp = boot().await;
    let control = Api {
        http: cp.http,
        token: cp.token(),
    };
    // The recorded status is where the new control plane starts: never earlier.
    let resumed = control.status().await;
    assert!(
        resumed.iterations >= mid.iterations && resumed.canary_weight >= mid.canary_weight,
        "{resumed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        let s = control.status().await;
        if s.phase == CanaryPhase::Succeeded {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "promoted after the restart: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    // One passed check per step, no step skipped, none checked twice.
    let passed: Vec<u32> = done
        .checks
        .iter()
        .filter(|c| c.result == CheckResult::Passed)
        .map(|c| c.weight)
        .collect();
    assert_eq!(passed, [10, 20, 30, 40, 50], "{:#?}", done.checks);
    client.shutdown().await;
}

/// A control-plane replica on 127.0.2.`host` sharing `etcd`.
async fn replica(etcd: &skein_testkit::etcd::Etcd, dir: &Path, host: u8) -> RunningControl {
    let store = StoreChoice::Etcd {
        endpoints: vec![etcd.endpoint()],
        prefix: "/skein/".into(),
    };
    let mut o = options(dir, host, store, SocketAddr::new(ip(host), 0));
    o.secrets_key = Some("7d".repeat(32).parse().unwrap());
    RunningControl::start(o).await.unwrap()
}

/// Two replicas sharing a fresh etcd, on 127.0.2.`h1` (the leader) and `h2`; `None`
/// (the test skipped) without etcd.
struct Replicas {
    etcd: skein_testkit::etcd::Etcd,
    _dirs: (TempDir, TempDir),
    r1: RunningControl,
    r2: RunningControl,
}

async fn two_replicas(tag: &str, h1: u8, h2: u8) -> Option<Replicas> {
    if !skein_testkit::etcd::Etcd::available() {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server); CI installs it");
        return None;
    }
    let etcd = skein_testkit::etcd::Etcd::start().unwrap();
    let dirs = (
        TempDir::new(&format!("{tag}1")).unwrap(),
        TempDir::new(&format!("{tag}2")).unwrap(),
    );
    let r1 = replica(&etcd, dirs.0.path(), h1).await;
    assert!(*r1.leader.borrow(), "the first replica leads");
    let r2 = replica(&etcd, dirs.1.path(), h2).await;
    assert!(!*r2.leader.borrow());
    Some(Replicas {
        etcd,
        _dirs: dirs,
        r1,
        r2,
    })
}

#[tokio::test]
async fn the_leader_counts_canary_traffic_reported_to_other_replicas() {
    skein_testkit::init_tracing();
    let Some(Replicas {
        etcd,
        _dirs,
        r1,
        r2,
    }) = two_replicas("canary-s", 84, 85).await
    else {
        return;
    };
    apply(&r1, SERVICES).await;
    // The canary's proxy reports to r2 only; the leader, r1, never hears from it directly.
    let (on_r1, on_r2) = (r1.grpc.to_string(), r2.grpc.to_string());
    let (_v1, _p1) = version(&api(&r1), &on_r1, 86, "restaurant-v1").await;
    let (_v2, _p2) = version(&api(&r1), &on_r2, 87, "restaurant-v2").await;
    let client = caller(&api(&r1), &on_r1, 84).await;
    start(
        &r1,
        &client,
        &canary("{interval: 2s, stepWeights: [20, 50], minRequests: 10}", ""),
    )
    .await;
    let load = Load::plain(client.addrs.http_proxy.unwrap());
    let done = wait_for(&r1, Duration::from_secs(40), "promoted", |s| {
        s.phase == CanaryPhase::Succeeded
    })
    .await;
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    let passed: Vec<_> = done
        .checks
        .iter()
        .filter(|c| c.result == CheckResult::Passed)
        .collect();
    assert_eq!(passed.len(), 2, "{:#?}", done.checks);
    assert!(passed.iter().all(|c| c.requests >= 10), "{passed:#?}");
    assert!(
        r1.central
            .served("default", &["restaurant-v2-1".to_string()])
            .is_empty(),
        "the leader's own view never had the canary"
    );
    client.shutdown().await;
    r2.shutdown().await;
    r1.shutdown().await;
    drop(etcd);
}

#[tokio::test]
async fn a_new_leader_resumes_the_rollout_at_the_recorded_step() {
    skein_testkit::init_tracing();
    let Some(Replicas {
        etcd,
        _dirs,
        r1,
        r2,
    }) = two_replicas("canary-r", 80, 81).await
    else {
        return;
    };
    // Proxies know both replicas and start on r1.
    let endpoint = format!("{},{}", r1.grpc, r2.grpc);
    apply(&r1, SERVICES).await;
    let (_v1, _p1) = version(&api(&r1), &endpoint, 82, "restaurant-v1").await;
    let (_v2, _p2) = version(&api(&r1), &endpoint, 83, "restaurant-v2").await;
    let client = caller(&api(&r1), &endpoint, 80).await;
    start(
        &r1,
        &client,
        &canary(
            "{interval: 1s, stepWeights: [10, 20, 30, 40, 50], minRequests: 10}",
            "",
        ),
    )
    .await;
    let load = Load::plain(client.addrs.http_proxy.unwrap());
    let mid = wait_for(&r1, Duration::from_secs(30), "two steps", |s| {
        s.canary_weight >= 20
    })
    .await;
    r1.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !*r2.leader.borrow() {
        assert!(Instant::now() < deadline, "r2 never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = status_of(&r2);
    assert!(resumed.iterations >= mid.iterations, "{resumed:?}");
    let done = wait_for(
        &r2,
        Duration::from_secs(40),
        "promoted by the new leader",
        |s| s.phase == CanaryPhase::Succeeded,
    )
    .await;
    let (_, failed) = load.finish().await;
    assert!(failed.is_empty(), "{failed:?}");
    let passed: Vec<u32> = done
        .checks
        .iter()
        .filter(|c| c.result == CheckResult::Passed)
        .map(|c| c.weight)
        .collect();
    assert_eq!(passed, [10, 20, 30, 40, 50], "{:#?}", done.checks);
    client.shutdown().await;
    r2.shutdown().await;
    drop(etcd);
}
