//! A live mesh for the standards tests on 127.0.5.0/24: a control plane with an embedded
//! store, workloads (a real HTTP backend behind its own proxy, joined with a token) and
//! callers' proxies in any namespace, and the requests they send.

#![allow(dead_code)]

use http::{Request, StatusCode};
use skein_control::server::{ControlOptions, RunningControl};
use skein_model::resource::parse_documents;
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::control::ControlConfig;
use skein_proxy::http::empty;
use skein_proxy::RunningProxy;
use skein_testkit::client::h1;
use skein_testkit::{HttpBackend, MeshSpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub const PORT: u16 = 18080;

pub fn ip(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 5, host))
}

/// A control plane with an embedded store on 127.0.5.`host`; its data dir goes with the
/// guard, however the test ends.
pub async fn control_at(host: u8) -> (RunningControl, skein_testkit::control::TempDir) {
    let dir = skein_testkit::control::TempDir::new(&format!("gateway-api-{host}")).unwrap();
    let control = RunningControl::start(ControlOptions::embedded(dir.path(), ip(host), "test"))
        .await
        .unwrap();
    (control, dir)
}

pub async fn apply(control: &RunningControl, yaml: &str) {
    control
        .registry
        .apply(parse_documents(yaml, "test").unwrap())
        .await
        .unwrap();
}

/// How a proxy of `namespace/service` reaches `control`, with a fresh join token.
pub async fn control_for(
    control: &RunningControl,
    advertise: SocketAddr,
    namespace: &str,
    service: &str,
) -> Option<ControlConfig> {
    let (token, _) = control
        .pki
        .create_token(namespace, service, Duration::from_secs(600), 1)
        .await
        .unwrap();
    Some(ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise,
        token,
    })
}

/// A backend on 127.0.5.`host`:PORT behind its own proxy, a workload of `service` in
/// `default`.
pub async fn workload(
    control: &RunningControl,
    host: u8,
    service: &str,
) -> (HttpBackend, RunningProxy) {
    let backend = HttpBackend::start(SocketAddr::new(ip(host), PORT))
        .await
        .unwrap();
    let proxy = workload_proxy(control, host, service).await;
    (backend, proxy)
}

/// The proxy of a workload of `service` in `default` on 127.0.5.`host`, its application
/// expected on port PORT of the same address.
pub async fn workload_proxy(control: &RunningControl, host: u8, service: &str) -> RunningProxy {
    workload_proxy_in(control, host, "default", service).await
}

/// Like [`workload_proxy`], in `namespace`.
pub async fn workload_proxy_in(
    control: &RunningControl,
    host: u8,
    namespace: &str,
    service: &str,
) -> RunningProxy {
    let config = workload_config(host, service, SocketAddr::new(ip(host), PORT));
    start_proxy(control, host, namespace, config).await
}

/// The configuration of a workload of `service` (labelled `app: SERVICE`) on
/// 127.0.5.`host`, its application at `app`, on that same address.
pub fn workload_config(host: u8, service: &str, app: SocketAddr) -> ProxyConfig {
    let mut spec = MeshSpec::new(1, 1);
    (spec.client_ip, spec.server_ip) = (ip(host), ip(host));
    let mut config = spec.service(service, app, Protocol::Http).server_config();
    config.workload.labels.insert("app".into(), service.into());
    config.workload.name = format!("{service}-{host}");
    config.workload.service = service.into();
    config
}

/// The configuration of a caller on 127.0.5.`host`: no destinations until the control
/// plane sends them.
pub fn caller_config(host: u8) -> ProxyConfig {
    let mut spec = MeshSpec::new(1, 1);
    (spec.client_ip, spec.server_ip) = (ip(host), ip(host));
    let mut config = spec.client_config(SocketAddr::new(ip(host), 4143));
    config.destinations.clear();
    config.workload.name = format!("caller-{host}");
    config
}

/// Starts `config`'s proxy in `namespace`, its inbound listener on 127.0.5.`host`:4143,
/// joined with a fresh token for its workload's service.
pub async fn start_proxy(
    control: &RunningControl,
    host: u8,
    namespace: &str,
    mut config: ProxyConfig,
) -> RunningProxy {
    config.workload.namespace = namespace.into();
    config.inbound.listen = SocketAddr::new(ip(host), 4143);
    let advertise = config.inbound.listen;
    let service = config.workload.service.clone();
    RunningProxy::start_with_control(
        config,
        control_for(control, advertise, namespace, &service).await,
    )
    .await
    .unwrap()
}

/// A caller's proxy on 127.0.5.`host` in `namespace`, reached as an HTTP proxy; returned
/// once it holds `routes` routes for the first of `services` (all in `default`; the
/// routed Service, which has no workload of its own) and knows an endpoint of each other.
/// It asks for each of `services` (on-demand discovery) as its first requests would.
pub async fn caller(
    control: &RunningControl,
    host: u8,
    namespace: &str,
    services: &[&str],
    routes: usize,
) -> RunningProxy {
    let proxy = start_proxy(control, host, namespace, caller_config(host)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // It holds what it calls (on-demand discovery), as its first requests would ask.
    proxy.discover(services).await.unwrap();
    loop {
        let cfg = proxy.ctx.config();
        let known = |s: &&str| {
            cfg.destinations
                .iter()
                .any(|d| d.service == *s && !d.endpoints.is_empty())
        };
        let routed = cfg
            .destinations
            .iter()
            .any(|d| d.service == services[0] && d.routes.len() == routes);
        if services[1..].iter().all(known) && routed {
            return proxy;
        }
        assert!(
            Instant::now() < deadline,
            "the caller in {namespace} never learned the services and routes: it knows {:?}",
            cfg.destinations
                .iter()
                .map(|d| (&d.service, d.endpoints.len(), d.routes.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET http://service:PORT{path}` through the caller's proxy: status and `skein-error`.
pub async fn get(caller: &RunningProxy, service: &str, path: &str) -> (StatusCode, String) {
    let mut sender = h1(caller.addrs.http_proxy.unwrap()).await.unwrap();
    let req = Request::get(format!("http://{service}:{PORT}{path}"))
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let error = resp
        .headers()
        .get("skein-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    skein_testkit::client::body_bytes(resp).await.unwrap();
    (status, error)
}

pub fn services(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: {n}}}
spec: {{selector: {{app: {n}}}, ports: [{{port: {PORT}, protocol: http}}]}}
---
"
            )
        })
        .collect()
}
