//! On-demand discovery, scoping and deltas, through a live mesh on 127.0.5.140–159: a
//! control plane with an embedded store, real backends behind their own proxies, and
//! callers' proxies that start holding nothing and learn what they call.
//!
//! What a proxy holds is read the way an operator reads it: its admin `/config` and its
//! `/metrics` (`skein_config_destinations_received_total`, `skein_config_updates_total`).

mod live;

use http::{Request, StatusCode};
use live::*;
use skein_model::resource::{parse_documents, Kind, ResourceKey};
use skein_proxy::http::empty;
use skein_proxy::RunningProxy;
use skein_testkit::client::h1;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The services `proxy`'s admin `/config` lists, `namespace/name`, sorted.
async fn held(proxy: &RunningProxy) -> Vec<String> {
    let mut sender = h1(proxy.addrs.admin).await.unwrap();
    let req = Request::get("/config").body(empty()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = skein_testkit::client::body_bytes(resp).await.unwrap();
    let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut names: Vec<String> = config["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["namespace"].as_str().unwrap_or("default"),
                d["service"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

/// One sample of `proxy`'s `/metrics` (the whole line's value), 0 when absent.
async fn metric(proxy: &RunningProxy, series: &str) -> f64 {
    let mut sender = h1(proxy.addrs.admin).await.unwrap();
    let req = Request::get("/metrics").body(empty()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = skein_testkit::client::body_bytes(resp).await.unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A caller's proxy in `default` that has applied its first configuration and asked for
/// nothing.
async fn fresh_caller(control: &skein_control::server::RunningControl, host: u8) -> RunningProxy {
    let proxy = start_proxy(control, host, "default", caller_config(host)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.ctx.config_version.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no first configuration");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_proxy_that_never_heard_of_a_service_reaches_it_on_the_first_request() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(140).await;
    let mut yaml = services(&["web", "web-v2", "api", "cart", "ledger"]);
    // web's route sends a share to web-v2: whoever calls web needs both.
    yaml.push_str(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-split}}
spec:
  parentRefs: [{{group: '', kind: Service, name: web, port: {PORT}}}]
  rules: [{{backendRefs: [{{name: web, port: {PORT}, weight: 1}}, {{name: web-v2, port: {PORT}, weight: 1}}]}}]
"
    ));
    apply(&control, &yaml).await;
    let (web, _p1) = workload(&control, 141, "web").await;
    let (_v2, _p2) = workload(&control, 142, "web-v2").await;
    let (api, _p3) = workload(&control, 143, "api").await;
    let me = fresh_caller(&control, 145).await;
    assert!(held(&me).await.is_empty(), "holds nothing before it calls");

    // The first request to a service it never heard of succeeds.
    let (status, error) = get(&me, "web", "/first").await;
    assert_eq!((status, error.as_str()), (StatusCode::OK, ""));
    assert!(
        web.hits() + _v2.hits() == 1,
        "the request reached the application"
    );
    assert_eq!(
        held(&me).await,
        ["default/web", "default/web-v2"],
        "exactly what it called and where its route sends"
    );
    assert_eq!(metric(&me, "skein_config_destinations").await, 2.0);

    // A new dependency: held as soon as its first request returns.
    let (status, _) = get(&me, "api", "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.hits(), 1);
    assert_eq!(
        held(&me).await,
        ["default/api", "default/web", "default/web-v2"]
    );

    // A name nothing answers to: refused, named, and the proxy keeps serving.
    let (status, error) = get(&me, "nosuch", "/").await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::BAD_GATEWAY, "unknown_service")
    );
    assert_eq!(get(&me, "web", "/again").await.0, StatusCode::OK);
    // ... and is sent once a Service comes to answer to it.
    apply(&control, &services(&["nosuch"])).await;
    until("nosuch is sent unasked once it exists", async || {
        held(&me).await.contains(&"default/nosuch".to_string())
    })
    .await;

    // A removed Service disappears from the proxies holding it.
    control
        .registry
        .delete(&ResourceKey::new(Kind::Service, "default", "api"))
        .await
        .unwrap();
    until("api leaves the caller", async || {
        !held(&me).await.contains(&"default/api".to_string())
    })
    .await;
    assert_eq!(
        held(&me).await,
        ["default/nosuch", "default/web", "default/web-v2"]
    );
    drop(dir);
}

#[tokio::test]
async fn a_change_to_one_service_goes_only_to_the_proxies_holding_it() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(150).await;
    apply(&control, &services(&["web", "api"])).await;
    let (_web, _p1) = workload(&control, 151, "web").await;
    let (_api, _p2) = workload(&control, 152, "api").await;
    let a = fresh_caller(&control, 153).await;
    let b = fresh_caller(&control, 154).await;
    assert_eq!(get(&a, "web", "/").await.0, StatusCode::OK);
    assert_eq!(get(&b, "api", "/").await.0, StatusCode::OK);
    assert_eq!(held(&a).await, ["default/web"]);
    assert_eq!(held(&b).await, ["default/api"]);

    let received = "skein_config_destinations_received_total";
    let applied = "skein_config_updates_total{result=\"applied\"}";
    let counts = async |p: &RunningProxy| (metric(p, received).await, metric(p, applied).await);
    let (a0, b0) = (counts(&a).await, counts(&b).await);

    let policy = |service: &str| {
        format!(
            "apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: {service}}}
spec: {{targetRef: {{kind: Service, name: {service}}}, loadBalancer: round-robin}}
"
        )
    };
    // A change to web: A, which holds web, receives web and only web.
    apply(&control, &policy("web")).await;
    until("A applies web's policy", async || {
        a.ctx.config().destinations[0].policies.len() == 1
    })
    .await;
    let a1 = counts(&a).await;
    assert_eq!(a1, (a0.0 + 1.0, a0.1 + 1.0), "one message, one destination");
    // A change to api: B's next message is api's, so it got nothing for web's change.
    apply(&control, &policy("api")).await;
    until("B applies api's policy", async || {
        b.ctx.config().destinations[0].policies.len() == 1
    })
    .await;
    let b1 = counts(&b).await;
    assert_eq!(
        b1,
        (b0.0 + 1.0, b0.1 + 1.0),
        "B received api's change and nothing for web's"
    );
    assert_eq!(counts(&a).await, a1, "A received nothing for api's change");

    // The control plane's count agrees: after the first complete snapshot, deltas, each
    // of one destination.
    let conns = control.connections.list();
    for caller in ["caller-153", "caller-154"] {
        let c = conns.iter().find(|c| c.workload == caller).unwrap();
        assert_eq!(c.destinations, 1, "{caller} holds one destination");
        assert_eq!(c.pushes.complete, 1, "{caller}: {:?}", c.pushes);
        assert_eq!(
            c.pushes.destinations, 2,
            "{caller}: its service when it asked, then the change: {:?}",
            c.pushes
        );
    }
    drop(dir);
}

/// A Service with `exportTo` naming a namespace, in YAML.
fn exported(name: &str, to: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: {PORT}, protocol: http}}], exportTo: {to}}}
---
"
    )
}

#[tokio::test]
async fn services_exported_to_a_namespace_are_held_before_any_call() {
    skein_testkit::init_tracing();
    let (control, dir) = control_at(155).await;
    let mut yaml = exported("web", "[default]");
    yaml.push_str(&exported("api", "['*']"));
    yaml.push_str(&exported("cart", "[shop]"));
    yaml.push_str(&services(&["ledger"]));
    apply(&control, &yaml).await;
    let (web, _p1) = workload(&control, 156, "web").await;
    let me = fresh_caller(&control, 157).await;
    assert_eq!(
        held(&me).await,
        ["default/api", "default/web"],
        "its first configuration holds what is exported to its namespace, and only that"
    );
    let pushes = || {
        let conns = control.connections.list();
        let c = conns.iter().find(|c| c.workload == "caller-157").unwrap();
        (c.pushes.complete, c.pushes.deltas, c.destinations)
    };
    assert_eq!(pushes(), (1, 0, 2), "sent whole in its first configuration");
    assert_eq!(get(&me, "web", "/").await.0, StatusCode::OK);
    assert_eq!(web.hits(), 1);
    // Had it asked, the answer would be a message of its own.
    assert_eq!(pushes(), (1, 0, 2), "an exported Service is not asked for");

    // Exports withdrawn: both leave (it never asked for either), and its next call to
    // web asks for it, answered before the request goes on.
    apply(&control, &services(&["web", "api"])).await;
    until("exports withdrawn leave the proxy", async || {
        held(&me).await.is_empty()
    })
    .await;
    assert_eq!(get(&me, "web", "/after").await.0, StatusCode::OK);
    assert_eq!(web.hits(), 2);
    assert_eq!(held(&me).await, ["default/web"]);

    // A bad exportTo is refused as `skein apply` would be (the API parses the same way),
    // saying what is accepted, and what is in force stays.
    let refused = parse_documents(&exported("api", "['*', shop]"), "test")
        .expect_err("exportTo mixing '*' and namespaces");
    assert!(
        refused.to_string().contains("spec.exportTo")
            && refused.to_string().contains("either [\"*\"]"),
        "the message names the field and what is accepted: {refused}"
    );
    assert_eq!(get(&me, "web", "/again").await.0, StatusCode::OK);
    assert_eq!(held(&me).await, ["default/web"]);
    drop(dir);
}
