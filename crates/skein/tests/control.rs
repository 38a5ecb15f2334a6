//! `skein control` end to end, as real processes on real sockets: the CLI's apply / get /
//! delete round trips for every kind, validation refusals that leave the state in force,
//! the admin token, persistence across a restart, workloads following their proxies, and
//! two replicas sharing one etcd.
//!
//! Each test has its own 127.0.0.x addresses (120–139) and lets the OS pick ports; every
//! process and directory is removed by a drop guard, also when a test fails.

mod control {
    pub mod resources;
    pub mod sync;
}

use serde_json::Value;
use skein_identity::SpiffeId;
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::control::ControlConfig;
use skein_proxy::RunningProxy;
use skein_testkit::control::{ControlProcess, TempDir};
use skein_testkit::{loopback, HttpBackend, MeshSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `skein` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_skein");

/// Bound for anything that should take milliseconds (generous: 2 shared cores).
pub const SOON: Duration = Duration::from_secs(15);

/// Starts `skein control` on 127.0.0.`octet` (ports picked by the OS) with `data`.
pub async fn start_control(octet: u8, data: &Path, extra: &[&str]) -> ControlProcess {
    let any = SocketAddr::new(loopback(octet), 0);
    ControlProcess::start(Path::new(BIN), data, any, any, extra)
        .await
        .expect("start skein control")
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a resource file");
    path
}

/// Parses CLI JSON output.
#[track_caller]
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The rows of a kubectl-style table (header first), split on runs of spaces.
pub fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The row of `table` whose NAME column is `name`, as a map from header to cell.
pub fn row(text: &str, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let rows = table(text);
    let (header, body) = rows.split_first()?;
    let at = header.iter().position(|h| h == "NAME")?;
    body.iter()
        .find(|r| r.get(at).map(String::as_str) == Some(name))
        .map(|r| header.iter().cloned().zip(r.iter().cloned()).collect())
}

/// HTTP status of a GET through a proxy's HTTP proxy listener, with curl.
pub async fn status_via(proxy: SocketAddr, url: &str) -> String {
    let out = skein_testkit::client::curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "-x",
        &format!("http://{proxy}"),
        url,
    ])
    .await
    .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An echo backend on 127.0.0.`octet` and a proxy in front of it (both in this process)
/// with a certificate for `web` from the control plane but no configuration stream: the
/// "web" workload that declared control-plane resources point at.
pub struct Web {
    pub backend: HttpBackend,
    pub proxy: RunningProxy,
}

impl Web {
    pub async fn start(octet: u8, cp: &ControlProcess) -> Web {
        let backend = HttpBackend::start(SocketAddr::new(loopback(octet), 0))
            .await
            .expect("start the backend");
        let spec = MeshSpec::new(octet, octet).service("web", backend.addr(), Protocol::Http);
        let control = ControlConfig {
            endpoint: cp.grpc.to_string(),
            advertise: SocketAddr::new(loopback(octet), 4143),
            token: cp.join_token("web").await.expect("create a join token"),
        };
        let id = SpiffeId::new("skein.local", "default", "web").unwrap();
        let identity = skein_proxy::control::certify(&control, &id)
            .await
            .expect("certificate for web");
        let proxy = RunningProxy::start_with_identity(spec.server_config(), identity)
            .await
            .expect("start the server proxy");
        Web { backend, proxy }
    }

    /// The application port (also the service port).
    pub fn port(&self) -> u16 {
        self.backend.addr().port()
    }

    /// A Service `name` selecting `app: web` (running as account web) on the backend's port, plus (with
    /// `workload`) the declared Workload `web-1` at the static proxy.
    pub fn resources(&self, name: &str, workload: bool) -> String {
        let port = self.port();
        let mut yaml = format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec:\n  selector: {{app: web}}\n  serviceAccounts: [web]\n  ports: [{{port: {port}, protocol: http}}]\n"
        );
        if workload {
            let inbound = self.proxy.addrs.inbound;
            yaml.push_str(&format!(
                "---\napiVersion: skein.dev/v1alpha1\nkind: Workload\n\
                 metadata: {{name: web-1, labels: {{app: web}}}}\n\
                 spec: {{address: {}, inboundPort: {}, ports: [{port}], serviceAccount: web}}\n",
                inbound.ip(),
                inbound.port()
            ));
        }
        yaml
    }

    /// `http://SERVICE:PORT/PATH`.
    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://{service}:{}/{path}", self.port())
    }
}

/// A caller-side proxy config on 127.0.0.`octet` (listeners on OS-picked ports, an HTTP
/// proxy listener, no static destinations) for workload `name` of service `client`.
pub fn client_config(octet: u8, name: &str) -> ProxyConfig {
    let mut config = MeshSpec::new(octet, octet).client_config(SocketAddr::new(loopback(octet), 1));
    config.destinations.clear();
    config.outbound.upstreams.clear();
    config.workload.name = name.to_string();
    config
}

/// Starts an in-process proxy configured by the control plane `cp`.
pub async fn client_proxy(octet: u8, name: &str, cp: &ControlProcess) -> RunningProxy {
    let config = client_config(octet, name);
    let control = ControlConfig {
        endpoint: cp.grpc.to_string(),
        // Nobody calls the client side; the address only has to be valid.
        advertise: SocketAddr::new(loopback(octet), 4143),
        token: cp
            .join_token(&config.workload.service)
            .await
            .expect("create a join token"),
    };
    RunningProxy::start_with_control(config, Some(control))
        .await
        .expect("start a proxy with a control plane")
}
