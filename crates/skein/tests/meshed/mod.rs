//! Shared by the end-to-end tests that run an in-process control plane with in-process
//! proxies joined to it (identity, authorization): start the control plane, apply
//! resources, start a workload behind its proxy or a calling proxy, send requests.

#![allow(dead_code)]

use skein_control::server::{ControlOptions, RunningControl};
use skein_model::{Protocol, ProxyConfig, Upstream};
use skein_proxy::control::ControlConfig;
use skein_proxy::RunningProxy;
use skein_testkit::control::{eventually, CliOutput};
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_skein");
pub const PORT: u16 = 18090;
pub const SOON: Duration = Duration::from_secs(20);

pub async fn control(octet: u8, data: &Path) -> RunningControl {
    control_with(octet, data, Default::default()).await
}

/// Like [`control`] with these listener limits.
pub async fn control_with(
    octet: u8,
    data: &Path,
    limits: skein_control::limits::ListenerLimits,
) -> RunningControl {
    RunningControl::start(ControlOptions {
        limits,
        otlp: Some(SocketAddr::new(loopback(octet), 0)),
        ..ControlOptions::embedded(data, loopback(octet), "test")
    })
    .await
    .expect("start the control plane")
}

/// Runs `skein ARGS` against `control`, whose data directory (and admin token) is `data`.
pub async fn cli(control: &RunningControl, data: &Path, args: &[&str]) -> CliOutput {
    let (server, data) = (control.http.to_string(), data.display().to_string());
    let all = [args, &["--server", &server, "--data-dir", &data]].concat();
    skein_testkit::control::skein_cli(Path::new(BIN), &all, None).await
}

pub async fn apply(control: &RunningControl, yaml: &str) {
    let docs = skein_model::parse_documents(yaml, "test").unwrap();
    control.registry.apply(docs).await.unwrap();
}

pub fn service_yaml(name: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{port: {PORT}, protocol: http}}]}}\n"
    )
}

pub async fn join(control: &RunningControl, service: &str, advertise: SocketAddr) -> ControlConfig {
    let (token, _) = control
        .pki
        .create_token("default", service, Duration::from_secs(600), 1)
        .await
        .unwrap();
    ControlConfig {
        endpoint: control.grpc.to_string(),
        advertise,
        token,
    }
}

/// A backend on 127.0.0.`host`:PORT behind its own proxy, registered as `service`;
/// peers are told to reach it at `advertise` (default: its inbound listener).
pub async fn workload(
    control: &RunningControl,
    host: u8,
    service: &str,
    advertise: Option<SocketAddr>,
) -> (HttpBackend, RunningProxy) {
    workload_as(
        control,
        host,
        &format!("{service}-1"),
        service,
        &[],
        advertise,
    )
    .await
}

/// Like [`workload`] with the workload's name and the labels its proxy registers.
pub async fn workload_as(
    control: &RunningControl,
    host: u8,
    name: &str,
    service: &str,
    labels: &[(&str, &str)],
    advertise: Option<SocketAddr>,
) -> (HttpBackend, RunningProxy) {
    let (backend, config) = backend_config(host, name, service, labels).await;
    let advertise = advertise.unwrap_or(config.inbound.listen);
    let join = join(control, service, advertise).await;
    start_backend_proxy(backend, config, join).await
}

/// Like [`workload_as`] without labels, joining with `join` (a token made elsewhere).
pub async fn workload_with(
    host: u8,
    name: &str,
    service: &str,
    join: ControlConfig,
) -> (HttpBackend, RunningProxy) {
    let (backend, config) = backend_config(host, name, service, &[]).await;
    start_backend_proxy(backend, config, join).await
}

/// A proxy on 127.0.0.`host` in front of the application at `app` speaking `protocol`,
/// registered as the workload `<service>-1` of `service`.
pub async fn app_workload(
    control: &RunningControl,
    host: u8,
    service: &str,
    app: SocketAddr,
    protocol: Protocol,
) -> RunningProxy {
    let mut config = MeshSpec::new(host, host)
        .service(service, app, protocol)
        .server_config();
    config.workload.name = format!("{service}-1");
    config.workload.service = service.into();
    config.workload.labels.clear();
    config.inbound.listen = SocketAddr::new(loopback(host), 4143);
    let join = join(control, service, config.inbound.listen).await;
    RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap()
}

/// An app on 127.0.0.`host`:PORT and the config of the proxy in front of it.
async fn backend_config(
    host: u8,
    name: &str,
    service: &str,
    labels: &[(&str, &str)],
) -> (HttpBackend, ProxyConfig) {
    let backend = HttpBackend::start(SocketAddr::new(loopback(host), PORT))
        .await
        .unwrap();
    let mut config = MeshSpec::new(host, host)
        .service(service, backend.addr(), Protocol::Http)
        .server_config();
    config.workload.name = name.into();
    config.workload.service = service.into();
    config.workload.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.inbound.listen = SocketAddr::new(loopback(host), 4143);
    (backend, config)
}

async fn start_backend_proxy(
    backend: HttpBackend,
    config: ProxyConfig,
    join: ControlConfig,
) -> (HttpBackend, RunningProxy) {
    let proxy = RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap();
    (backend, proxy)
}

/// A calling proxy on 127.0.0.`host` with an HTTP proxy listener, for service `client`.
pub async fn client(control: &RunningControl, host: u8) -> RunningProxy {
    client_of(control, host, "client", &[]).await
}

/// A calling proxy on 127.0.0.`host` for `service`, with an HTTP proxy listener and a
/// local upstream listener on 127.0.0.`host`:`listen` for each `(listen, service, port)`.
pub async fn client_of(
    control: &RunningControl,
    host: u8,
    service: &str,
    upstreams: &[(u16, &str, u16)],
) -> RunningProxy {
    let mut config: ProxyConfig =
        MeshSpec::new(host, host).client_config(SocketAddr::new(loopback(host), 1));
    config.destinations.clear();
    config.workload.name = format!("{service}-1");
    config.workload.service = service.into();
    config.outbound.upstreams = upstreams
        .iter()
        .map(|(listen, service, port)| Upstream {
            listen: SocketAddr::new(loopback(host), *listen),
            service: (*service).into(),
            port: *port,
        })
        .collect();
    let advertise = SocketAddr::new(loopback(host), 4143);
    config.inbound.listen = advertise;
    let join = join(control, service, advertise).await;
    RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap()
}

/// One request through the HTTP proxy listener `proxy`, on a fresh client connection:
/// (status, body).
pub async fn get(proxy: SocketAddr, url: &str) -> Result<(u16, String), String> {
    send(proxy, "GET", url, &[])
        .await
        .map(|(status, _, body)| (status, body))
}

/// Like [`get`] with any method and extra headers; also returns the response headers.
pub async fn send(
    proxy: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, String), String> {
    use http_body_util::BodyExt;
    let mut sender = skein_testkit::client::h1(proxy)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(skein_proxy::http::empty())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let head = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
}

/// Opens TLS to `addr` with `config` and tries an HTTP/2 exchange: Ok if the server
/// answered with bytes, Err with what failed otherwise. (TLS 1.3 servers judge the client
/// certificate after the client's handshake completes, so only reading tells.)
pub async fn tls_attempt(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    server: &skein_identity::SpiffeId,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = skein_identity::tls::server_name(server).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed by the server".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer".into()),
    }
}

pub fn url(service: &str, path: &str) -> String {
    format!("http://{service}:{PORT}/{path}")
}

pub async fn until_ok(proxy: SocketAddr, url: &str) {
    eventually(&format!("200 from {url}"), SOON, async || {
        matches!(get(proxy, url).await, Ok((200, _)))
    })
    .await
    .unwrap();
}

pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
