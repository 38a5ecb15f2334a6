//! The setups under comparison, each on its own 127.0.0.x addresses with its own backend
//! and TCP sink, all started before the first measurement and kept running so scenarios
//! can interleave them:
//!
//! - **direct**: load generator → backend (127.0.0.150);
//! - **skein**: load generator → `skein proxy` outbound (127.0.0.151) → `skein proxy`
//!   inbound (127.0.0.152) → backend (127.0.0.152), configured with local upstream
//!   listeners, one per protocol. Both proxies join a `skein control` (127.0.0.155) with
//!   join tokens, as in production: destinations, endpoint identities and certificates
//!   come from it, and the proxies talk HTTP/2 over mutual TLS 1.3. The harness makes the
//!   mesh CA and the control plane imports it, so the handshake scenario's client can
//!   hold a mesh certificate of its own;
//! - **nginx pair**: see [`crate::nginx`];
//! - **skein, telemetry off**: an identical skein pair with its own control plane,
//!   backend and sink (outbound 127.0.0.156, inbound, backend and sink 127.0.0.157,
//!   control plane 127.0.0.158) whose proxies run with `telemetry.requests: false`, so
//!   that the report can give the CPU cost of per-request telemetry from the same run.
//!   Skipped when `SKEIN_BENCH_NO_TELEMETRY_SETUP=1` (a `skein` binary older than the
//!   `telemetry` setting refuses the config).
//!
//! Each setup is probed end to end (one HTTP/1.1 request, one HTTP/2 request, a small TCP
//! transfer) before any measurement, so a broken setup fails fast and by name.

use crate::handshake::{HandshakeTarget, PeerRequest};
use crate::procs::{Proc, TempDir};
use anyhow::{bail, Context};
use skein_identity::{CertificateAuthority, SpiffeId, WorkloadCert, WorkloadKey};
use skein_model::{
    AdminConfig, InboundConfig, Limits, OutboundConfig, PortSpec, Protocol, ProxyConfig,
    TelemetryConfig, Upstream, WorkloadInfo,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Port of every setup's HTTP backend.
pub const APP_PORT: u16 = 8080;
/// Port of every setup's TCP sink.
pub const SINK_PORT: u16 = 9000;
/// The `Host` (and `:authority`) requests carry.
pub const HOST: &str = "bench";
/// Whether the skein setup's proxies talk mutual TLS (the report shows it). They do: each
/// joins the control plane with a token and dials its peer with the certificate it got.
pub const SKEIN_MTLS: bool = true;

/// What the orchestrator runs things with.
pub struct Env {
    /// Scratch directory for configs, certificates and logs.
    pub dir: TempDir,
    /// This binary (backend, sink, load generator).
    pub me: PathBuf,
    /// The `skein` binary.
    pub skein: PathBuf,
    /// The `nginx` binary.
    pub nginx: PathBuf,
}

impl Env {
    /// A scratch directory of its own, for a run that starts one skein pair (nginx only
    /// if installed).
    pub fn scratch(me: &Path, skein: &Path) -> anyhow::Result<Env> {
        Ok(Env {
            dir: TempDir::new()?,
            me: me.to_path_buf(),
            skein: skein.to_path_buf(),
            nginx: find_tool("nginx").unwrap_or_default(),
        })
    }
}

/// Which setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Load generator straight to the backend.
    Direct,
    /// Through two skein proxies.
    Skein,
    /// Through two skein proxies that record no per-request telemetry.
    SkeinTelemetryOff,
    /// Through two skein proxies with tracing off (`Mesh spec.tracing.enabled: false`).
    SkeinTracingOff,
    /// Through two nginx instances talking mutual TLS.
    Nginx,
    /// Load generator and application each in a network namespace of their own, on a
    /// bridge, no proxies ([`crate::deployed`]).
    DirectNs,
    /// The same shape with each side under `skein run`: transparent capture, two proxies,
    /// mutual TLS, authorization ([`crate::deployed`]).
    SkeinNs,
}

impl Kind {
    /// Short name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Skein => "skein",
            Kind::SkeinTelemetryOff => "skein, telemetry off",
            Kind::SkeinTracingOff => "skein, tracing off",
            Kind::Nginx => "nginx pair",
            Kind::DirectNs => "direct (namespaces)",
            Kind::SkeinNs => "skein (namespaces)",
        }
    }

    /// The setup this one's ratios and added latency are taken against, when it is not
    /// the first (direct): the namespaced pair against direct over the same network.
    pub fn baseline(self) -> Option<Kind> {
        match self {
            Kind::DirectNs | Kind::SkeinNs => Some(Kind::DirectNs),
            _ => None,
        }
    }
}

/// gRPC calls in a setup's probe, each checked for `grpc-status: 0` (h2load, which
/// measures, counts HTTP statuses only).
const GRPC_PROBE_CALLS: u64 = 20;

/// An endpoint a scenario sends to, or why the setup has none for it.
pub type Target = Result<SocketAddr, String>;

/// A running setup.
pub struct Setup {
    /// Which one.
    pub kind: Kind,
    /// How the hops talk, for the report.
    pub description: String,
    /// HTTP/1.1 entry point.
    pub http: SocketAddr,
    /// HTTP/2 (prior knowledge) entry point.
    pub h2: Target,
    /// Unary gRPC entry point (HTTP/2 with prior knowledge; [`crate::grpc`]).
    pub grpc: Target,
    /// Opaque TCP entry point.
    pub tcp: Target,
    /// The receiving proxy, for new mutual-TLS connections as its peer would open them
    /// (none for direct: there is no hop between proxies).
    pub handshake: Result<HandshakeTarget, String>,
    /// The proxies whose resources are measured (none for direct).
    pub proxies: Vec<Proc>,
    /// Backend and sink.
    pub apps: Vec<Proc>,
    /// The network namespace the load tools run in (`None`: this one).
    pub netns: Option<PathBuf>,
    /// What else the setup holds until it is dropped, after its processes (the
    /// namespaces and bridge of [`crate::deployed`]).
    #[allow(dead_code, reason = "held for its Drop, never read")]
    pub holds: Option<Box<dyn Send>>,
}

impl Setup {
    /// Fails if any process of the setup has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.proxies.iter_mut().chain(self.apps.iter_mut()) {
            p.check_alive()?;
        }
        Ok(())
    }

    /// One request per protocol and a small TCP transfer, each checked.
    pub async fn probe(&mut self, me: &Path) -> anyhow::Result<()> {
        if let Some(ns) = self.netns.clone() {
            return self.probe_from(me, &ns).await;
        }
        let name = self.kind.name();
        crate::load::probe(self.http, HOST, false)
            .await
            .with_context(|| format!("{name}: HTTP/1.1 probe to {} failed", self.http))?;
        if let Ok(addr) = self.h2 {
            crate::load::probe(addr, HOST, true)
                .await
                .with_context(|| format!("{name}: HTTP/2 probe to {addr} failed"))?;
        }
        if let Ok(addr) = self.grpc {
            crate::grpc::calls(addr, GRPC_PROBE_CALLS)
                .await
                .with_context(|| format!("{name}: gRPC probe to {addr} failed"))?;
        }
        if let Ok(addr) = self.tcp {
            crate::tcp::bulk(addr, 1 << 20, Duration::from_secs(5))
                .await
                .with_context(|| format!("{name}: TCP probe to {addr} failed"))?;
        }
        self.check_alive()
    }

    /// The same probe from inside the namespace `ns`, with the tools that measure there:
    /// a second of requests at a low rate per protocol, and a second of TCP.
    async fn probe_from(&mut self, me: &Path, ns: &Path) -> anyhow::Result<()> {
        let name = self.kind.name();
        let targets = [(Ok(self.http), false), (self.h2.clone(), true)];
        for (addr, h2) in targets {
            let Ok(addr) = addr else { continue };
            let from = crate::tools::From {
                netns: Some(ns),
                h2,
            };
            let version = if h2 { "HTTP/2" } else { "HTTP/1.1" };
            crate::tools::load(me, from, addr, 20, 1, 1)
                .await
                .and_then(|r| r.check())
                .with_context(|| format!("{name}: {version} probe to {addr} failed"))?;
        }
        if let Ok(addr) = self.grpc {
            crate::tools::grpc_calls(me, Some(ns), addr, GRPC_PROBE_CALLS)
                .await
                .with_context(|| format!("{name}: gRPC probe to {addr} failed"))?;
        }
        if let Ok(addr) = self.tcp {
            crate::tools::tcp_bulk(me, Some(ns), addr, 1)
                .await
                .with_context(|| format!("{name}: TCP probe to {addr} failed"))?;
        }
        self.check_alive()
    }
}

/// 127.0.0.`n`.
pub const fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Starts the backend and the TCP sink on `host`.
pub async fn start_apps(env: &Env, host: IpAddr, tag: &str) -> anyhow::Result<Vec<Proc>> {
    let mut apps = Vec::new();
    for (what, port) in [("backend", APP_PORT), ("tcp-sink", SINK_PORT)] {
        let addr = SocketAddr::new(host, port);
        let mut cmd = Command::new(&env.me);
        cmd.arg(what).arg("--listen").arg(addr.to_string());
        let log = env.dir.path().join(format!("{tag}-{what}.log"));
        let mut p = Proc::spawn(&format!("{tag} {what}"), cmd, &log)?;
        wait_listening(&mut p, addr).await?;
        apps.push(p);
    }
    Ok(apps)
}

/// `skein-bench backend` on `addr` answering after `delay`, logging to `<tag>-backend.log`
/// in `dir`; returned once it listens.
pub async fn delayed_backend(
    me: &Path,
    dir: &Path,
    addr: SocketAddr,
    delay: Duration,
    tag: &str,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(me);
    cmd.arg("backend")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--delay")
        .arg(format!("{}ms", delay.as_millis()));
    let log = dir.join(format!("{tag}-backend.log"));
    let mut p = Proc::spawn(&format!("{tag} backend"), cmd, &log)?;
    wait_listening(&mut p, addr).await?;
    Ok(p)
}

/// Waits until `addr` accepts connections, failing early if `proc` exits.
pub async fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        proc.check_alive()?;
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} is not listening on {addr} after 10s", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The direct setup: backend and sink on 127.0.0.150.
pub async fn direct(env: &Env) -> anyhow::Result<Setup> {
    let host = ip(150);
    Ok(Setup {
        kind: Kind::Direct,
        description: "load generator → backend".into(),
        http: SocketAddr::new(host, APP_PORT),
        h2: Ok(SocketAddr::new(host, APP_PORT)),
        grpc: Ok(SocketAddr::new(host, APP_PORT)),
        tcp: Ok(SocketAddr::new(host, SINK_PORT)),
        handshake: Err("no hop between proxies".into()),
        proxies: Vec::new(),
        apps: start_apps(env, host, "direct").await?,
        netns: None,
        holds: None,
    })
}

const INBOUND_PORT: u16 = 4143;
const ADMIN_PORT: u16 = 4191;
const UP_HTTP: u16 = 15001;
const UP_H2: u16 = 15002;
const UP_TCP: u16 = 15003;
const UP_GRPC: u16 = 15004;

/// One skein pair: where its parts listen and how its proxies are configured.
#[derive(Debug, Clone, Copy)]
pub struct SkeinPair {
    /// Which setup it is.
    pub kind: Kind,
    /// Prefix of its processes' names (`<label> outbound proxy`, …), for messages and the
    /// report.
    pub label: &'static str,
    /// Prefix of its scratch files (configs, logs, the control plane's store).
    pub tag: &'static str,
    /// The outbound proxy's address (its upstream listeners and admin).
    pub outbound: IpAddr,
    /// The inbound proxy's, the backend's and the sink's address.
    pub inbound: IpAddr,
    /// The control plane's address.
    pub control: IpAddr,
    /// `telemetry.requests` of both proxies.
    pub telemetry_requests: bool,
    /// Whether the mesh traces (`Mesh spec.tracing.enabled`; sampling at the default 1 %).
    pub tracing: bool,
    /// Run both proxies under `valgrind --tool=callgrind` (profiles `cg.<tag>-*.PID.N` in
    /// the scratch directory), with the waits stretched to match ([`crate::callgrind`]).
    pub under_callgrind: bool,
}

/// The skein setup: outbound proxy on 127.0.0.151, inbound proxy, backend and sink on
/// 127.0.0.152, control plane on 127.0.0.155; per-request telemetry on (the default).
pub const SKEIN: SkeinPair = SkeinPair {
    kind: Kind::Skein,
    label: "skein",
    tag: "skein",
    outbound: ip(151),
    inbound: ip(152),
    control: ip(155),
    telemetry_requests: true,
    tracing: true,
    under_callgrind: false,
};

/// The same pair with `telemetry.requests: false` on both proxies: outbound proxy on
/// 127.0.0.156, inbound proxy, backend and sink on 127.0.0.157, control plane on
/// 127.0.0.158.
pub const SKEIN_TELEMETRY_OFF: SkeinPair = SkeinPair {
    kind: Kind::SkeinTelemetryOff,
    label: "skein (telemetry off)",
    tag: "skein-telemetry-off",
    outbound: ip(156),
    inbound: ip(157),
    control: ip(158),
    telemetry_requests: false,
    tracing: true,
    under_callgrind: false,
};

/// The skein pair with tracing off (`Mesh spec.tracing.enabled: false`), golden signals
/// on: outbound proxy on 127.0.0.160, inbound proxy, backend and sink on 127.0.0.161,
/// control plane on 127.0.0.162.
pub const SKEIN_TRACING_OFF: SkeinPair = SkeinPair {
    kind: Kind::SkeinTracingOff,
    label: "skein (tracing off)",
    tag: "skein-tracing-off",
    outbound: ip(160),
    inbound: ip(161),
    control: ip(162),
    telemetry_requests: true,
    tracing: false,
    under_callgrind: false,
};

/// Starts a skein pair: its backend and sink, its control plane, then the inbound and the
/// outbound proxy, and checks that the first request passed authorization.
pub async fn skein(env: &Env, pair: SkeinPair) -> anyhow::Result<Setup> {
    let (client, server) = (pair.outbound, pair.inbound);
    let (label, tag) = (pair.label, pair.tag);
    let mut apps = start_apps(env, server, tag).await?;
    let resources = if pair.tracing {
        RESOURCES.to_string()
    } else {
        RESOURCES.replace(
            "spec: {defaultPolicy: deny}",
            "spec: {defaultPolicy: deny, tracing: {enabled: false}}",
        )
    };
    let grpc = SocketAddr::new(pair.control, CONTROL_GRPC);
    let control = start_control(env, pair.control, grpc, label, tag, &resources).await?;
    let bench_token = control.token(env, "bench")?;
    let loadgen_token = control.token(env, "loadgen")?;
    let grpc = control.grpc;
    let handshake =
        peer_client(&control.ca, SocketAddr::new(server, INBOUND_PORT)).with_context(|| {
            format!("{label}: cannot make the handshake scenario's client certificate")
        })?;
    apps.push(control.proc);
    let telemetry = TelemetryConfig {
        requests: pair.telemetry_requests,
        ..TelemetryConfig::default()
    };
    let wrap = |side: &str| {
        pair.under_callgrind
            .then(|| crate::callgrind::valgrind(env.dir.path(), &format!("{tag}-{side}")))
    };
    let inbound = start_proxy_wrapped(
        env.dir.path(),
        (wrap("inbound"), &env.skein),
        &format!("{label} inbound proxy"),
        &format!("{tag}-inbound-proxy"),
        &server_config(server, telemetry.clone()),
        Some((grpc, &bench_token)),
    )
    .await?;
    let outbound = start_proxy_wrapped(
        env.dir.path(),
        (wrap("outbound"), &env.skein),
        &format!("{label} outbound proxy"),
        &format!("{tag}-outbound-proxy"),
        &client_config(client, telemetry),
        Some((grpc, &loadgen_token)),
    )
    .await?;
    // The outbound proxy is ready once its first snapshot applied; the inbound proxy
    // registered before it started, so its endpoint is in that snapshot. Wait for the
    // first request to pass anyway, so that a slow start is not reported as a failure.
    let deadline = Instant::now() + ready_within(pair.under_callgrind);
    while crate::load::probe(SocketAddr::new(client, UP_HTTP), HOST, false)
        .await
        .is_err()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = SocketAddr::new(server, ADMIN_PORT);
    authorized(admin, "default/bench", &inbound)
        .await
        .with_context(|| format!("the {label} pair"))?;
    let setup = Setup {
        kind: pair.kind,
        description: format!(
            "load generator → skein proxy (outbound) → skein proxy (inbound) → backend; \
             proxies talk HTTP/2 {}; the mesh denies by default and one AuthorizationPolicy \
             per Service allows the load generator{}",
            if SKEIN_MTLS {
                "over mutual TLS 1.3 with certificates from `skein control` (joined with tokens)"
            } else {
                "in plaintext"
            },
            match (pair.telemetry_requests, pair.tracing) {
                (true, true) => "",
                (false, _) =>
                    "; both proxies run with `telemetry.requests: false` (no per-request golden \
                 signals), otherwise identical to the skein pair",
                (true, false) =>
                    "; the Mesh turns tracing off (`spec.tracing.enabled: false`: \
                 no trace headers read or written, no spans), otherwise identical to the skein pair",
            }
        ),
        http: SocketAddr::new(client, UP_HTTP),
        h2: Ok(SocketAddr::new(client, UP_H2)),
        grpc: Ok(SocketAddr::new(client, UP_GRPC)),
        tcp: Ok(SocketAddr::new(client, UP_TCP)),
        handshake: Ok(handshake),
        proxies: vec![outbound, inbound],
        apps,
        netns: None,
        holds: None,
    };
    Ok(setup)
}

/// Port of every control plane's HTTP API.
pub(crate) const CONTROL_HTTP: u16 = 9990;
const CONTROL_GRPC: u16 = 9991;

/// The figures are meant to include authorization: fails unless the receiving proxy
/// (admin API at `admin`) allowed a request by `policy`.
pub(crate) async fn authorized(
    admin: SocketAddr,
    policy: &str,
    proxy: &Proc,
) -> anyhow::Result<()> {
    let metrics = http_get(admin, "/metrics").await?;
    let allowed = metrics.lines().any(|l| {
        l.starts_with("skein_authz_decisions_total{")
            && l.contains("decision=\"allowed\"")
            && l.contains(&format!("policy=\"{policy}\""))
    });
    if !allowed {
        bail!(
            "the first request was not allowed by AuthorizationPolicy {policy}; {}'s log \
             ends:\n{}",
            proxy.name,
            proxy.log_tail()
        );
    }
    Ok(())
}

/// The Services the outbound proxy's upstream listeners name, all selecting the inbound
/// proxy's workload (`app: bench`), one per protocol so that no detection runs. The mesh
/// denies by default, as production meshes should, and one AuthorizationPolicy per
/// Service lets the load generator through, so every request and tunnel is authorized
/// (HTTP ones on method and path) as it would be in production.
const RESOURCES: &str = "\
apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {defaultPolicy: deny}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bench}
spec: {targetRef: {name: bench}, rules: [{from: [{service: loadgen}], to: [{methods: [GET], paths: ['/*']}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bench-h2}
spec: {targetRef: {name: bench-h2}, rules: [{from: [{service: loadgen}], to: [{methods: [GET], paths: ['/*']}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bench-tcp}
spec: {targetRef: {name: bench-tcp}, rules: [{from: [{service: loadgen}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bench-grpc}
spec: {targetRef: {name: bench-grpc}, rules: [{from: [{service: loadgen}], to: [{methods: [POST], paths: ['/bench.Bench/*']}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: bench}
spec: {selector: {app: bench}, ports: [{name: http, port: 8080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: bench-h2}
spec: {selector: {app: bench}, ports: [{name: h2, port: 8080, protocol: http2}], serviceAccounts: [bench]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: bench-tcp}
spec: {selector: {app: bench}, ports: [{name: sink, port: 9000, protocol: tcp}], serviceAccounts: [bench]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: bench-grpc}
spec: {selector: {app: bench}, ports: [{name: grpc, port: 8080, protocol: grpc}], serviceAccounts: [bench]}
";

/// A running `skein control` with the bench's Services applied.
pub(crate) struct Control {
    pub(crate) proc: Proc,
    http: SocketAddr,
    pub(crate) grpc: SocketAddr,
    data_dir: PathBuf,
    /// The mesh CA, made here and imported by the control plane (bring-your-own-CA), so
    /// that the handshake scenario's client can hold a mesh certificate.
    ca: CertificateAuthority,
}

impl Control {
    /// Runs the `skein` CLI against this control plane and returns its stdout.
    pub(crate) fn cli(&self, env: &Env, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&env.skein)
            .args(args)
            .arg("--server")
            .arg(self.http.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("SKEIN_LOG", "warn")
            .env_remove("SKEIN_TOKEN")
            .env_remove("SKEIN_SERVER")
            .output()
            .with_context(|| format!("cannot run skein {args:?}"))?;
        if !out.status.success() {
            bail!(
                "skein {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A join token for `service` (namespace `default`).
    pub(crate) fn token(&self, env: &Env, service: &str) -> anyhow::Result<String> {
        let out = self.cli(
            env,
            &["token", "create", "--service", service, "--ttl", "10m"],
        )?;
        Ok(out.trim().to_string())
    }
}

/// Starts `skein control` (HTTP API on `host`, proxy API on `grpc`) with an embedded
/// store in the scratch directory and applies `resources`; `label` names the process,
/// `tag` prefixes its scratch files.
pub(crate) async fn start_control(
    env: &Env,
    host: IpAddr,
    grpc: SocketAddr,
    label: &str,
    tag: &str,
    resources: &str,
) -> anyhow::Result<Control> {
    let http = SocketAddr::new(host, CONTROL_HTTP);
    let data_dir = env.dir.path().join(format!("{tag}-control"));
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).context("cannot make the mesh CA")?;
    let ca_dir = env.dir.path().join(format!("{tag}-mesh-ca"));
    ca.to_pem_files(&ca_dir)
        .with_context(|| format!("cannot write the mesh CA to {}", ca_dir.display()))?;
    let mut cmd = Command::new(&env.skein);
    cmd.arg("control")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--ca-trust-domain")
        .arg(TRUST_DOMAIN)
        .arg("--ca-root-cert")
        .arg(ca_dir.join("root.crt"))
        .arg("--ca-root-key")
        .arg(ca_dir.join("root.key"))
        .arg("--ca-cert")
        .arg(ca_dir.join("intermediate.crt"))
        .arg("--ca-key")
        .arg(ca_dir.join("intermediate.key"))
        .arg("--http")
        .arg(http.to_string())
        .arg("--grpc")
        .arg(grpc.to_string())
        .arg("--otlp")
        .arg(std::net::SocketAddr::new(http.ip(), 0).to_string())
        .env("SKEIN_LOG", "warn");
    let log = env.dir.path().join(format!("{tag}-control.log"));
    let mut proc = Proc::spawn(&format!("{label} control"), cmd, &log)?;
    wait_listening(&mut proc, http).await?;
    wait_listening(&mut proc, grpc).await?;
    let control = Control {
        proc,
        http,
        grpc,
        data_dir,
        ca,
    };
    let file = env.dir.path().join(format!("{tag}-resources.yaml"));
    std::fs::write(&file, resources).with_context(|| format!("cannot write {}", file.display()))?;
    control.cli(env, &["apply", "-f", &file.display().to_string()])?;
    Ok(control)
}

/// The mesh's trust domain (the Mesh resource's default).
const TRUST_DOMAIN: &str = "skein.local";

/// The handshake scenario's client for the skein pair: a key made here and a certificate
/// from the mesh CA for `loadgen` (the identity the bench's policies allow), verifying
/// that the server is `bench`, as the outbound proxy does.
fn peer_client(ca: &CertificateAuthority, inbound: SocketAddr) -> anyhow::Result<HandshakeTarget> {
    use skein_identity::tls;
    let me = SpiffeId::new(TRUST_DOMAIN, "default", "loadgen")?;
    let peer = SpiffeId::new(TRUST_DOMAIN, "default", "bench")?;
    let key = WorkloadKey::generate()?;
    let issued = ca.issue(key.csr(&me)?, &me, Duration::from_secs(24 * 3600))?;
    let cert = WorkloadCert::new(key, &issued.chain_pem)?;
    let config = tls::client_config(
        tls::CertResolver::new(&cert)?,
        tls::TrustBundle::new(&ca.trust_bundle())?,
        peer.clone(),
    )?;
    Ok(HandshakeTarget {
        addr: inbound,
        tls: config,
        server_name: tls::server_name(&peer)?,
        request: PeerRequest::SkeinPeer { port: APP_PORT },
    })
}

/// A workload in `default` without labels.
pub(crate) fn workload(name: &str, service: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        service: service.into(),
        namespace: "default".into(),
        labels: Default::default(),
    }
}

fn port(port: u16, protocol: Protocol) -> PortSpec {
    PortSpec::new(port, protocol)
}

/// The inbound proxy: serves the backend (HTTP) and the sink (TCP) on its own address.
fn server_config(host: IpAddr, telemetry: TelemetryConfig) -> ProxyConfig {
    let ports = vec![
        port(APP_PORT, Protocol::Http),
        port(SINK_PORT, Protocol::Tcp),
    ];
    proxy_config(host, workload("bench-1", "bench"), ports, telemetry)
}

/// A standalone proxy on `host` (inbound, admin) serving `ports`, with no way out yet.
pub(crate) fn proxy_config(
    host: IpAddr,
    workload: WorkloadInfo,
    ports: Vec<PortSpec>,
    telemetry: TelemetryConfig,
) -> ProxyConfig {
    ProxyConfig {
        workload,
        inbound: InboundConfig {
            listen: SocketAddr::new(host, INBOUND_PORT),
            app_host: host,
            ports,
            limit: None,
        },
        outbound: OutboundConfig::default(),
        admin: AdminConfig {
            listen: SocketAddr::new(host, ADMIN_PORT),
        },
        destinations: Vec::new(),
        authorization: Default::default(),
        limits: Limits::default(),
        detect_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(1),
        telemetry,
        dns: None,
    }
}

/// The outbound proxy: one upstream listener per protocol, each naming a service with one
/// port declared so no detection runs (`bench` HTTP/1.1, `bench-h2` HTTP/2, `bench-tcp`
/// TCP, `bench-grpc` gRPC). The services, their endpoints and identities come from the control plane.
fn client_config(host: IpAddr, telemetry: TelemetryConfig) -> ProxyConfig {
    let services = [
        ("bench", APP_PORT, UP_HTTP),
        ("bench-h2", APP_PORT, UP_H2),
        ("bench-tcp", SINK_PORT, UP_TCP),
        ("bench-grpc", APP_PORT, UP_GRPC),
    ];
    let upstreams = services
        .iter()
        .map(|(name, p, listen)| Upstream {
            listen: SocketAddr::new(host, *listen),
            service: (*name).into(),
            port: *p,
        })
        .collect();
    let ports = vec![port(APP_PORT, Protocol::Http)];
    let mut config = proxy_config(host, workload("loadgen-1", "loadgen"), ports, telemetry);
    config.outbound.upstreams = upstreams;
    config
}

/// Writes `config` to `<tag>.yaml` in `dir`, starts `skein` `proxy` on it (joining the
/// control plane at `control` with the token, if given; log in `<tag>.log`) and waits for
/// `/ready`.
pub async fn start_proxy(
    dir: &Path,
    skein: &Path,
    name: &str,
    tag: &str,
    config: &ProxyConfig,
    control: Option<(SocketAddr, &str)>,
) -> anyhow::Result<Proc> {
    start_proxy_wrapped(dir, (None, skein), name, tag, config, control).await
}

/// How long a proxy may take to be ready and pass its first request: valgrind slows
/// start-up (and everything else) some fifty times.
fn ready_within(under_valgrind: bool) -> Duration {
    Duration::from_secs(if under_valgrind { 180 } else { 15 })
}

/// [`start_proxy`], the `skein` binary run by the `wrapper` command when given (e.g.
/// valgrind).
pub async fn start_proxy_wrapped(
    dir: &Path,
    (wrapper, skein): (Option<Command>, &Path),
    name: &str,
    tag: &str,
    config: &ProxyConfig,
    control: Option<(SocketAddr, &str)>,
) -> anyhow::Result<Proc> {
    config
        .validate(name)
        .with_context(|| format!("{name}: the generated config is invalid"))?;
    let path = dir.join(format!("{tag}.yaml"));
    std::fs::write(&path, proxy_yaml(config))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let wrapped = wrapper.is_some();
    let mut cmd = wrapper.unwrap_or_else(|| Command::new(skein));
    if wrapped {
        cmd.arg(skein);
    }
    cmd.arg("proxy").arg("--config").arg(&path);
    if let Some((grpc, token)) = control {
        // The token goes through the environment, never argv (visible in ps).
        cmd.arg("--control")
            .arg(grpc.to_string())
            .env("SKEIN_JOIN_TOKEN", token);
    }
    cmd.env("SKEIN_LOG", "warn");
    let log = dir.join(format!("{tag}.log"));
    let mut p = Proc::spawn(name, cmd, &log)?;
    let admin = config.admin.listen;
    let within = ready_within(wrapped);
    let deadline = Instant::now() + within;
    loop {
        p.check_alive()?;
        if let Ok(text) = http_get(admin, "/ready").await {
            if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
                return Ok(p);
            }
        }
        if Instant::now() > deadline {
            bail!("{name} not ready (admin {admin}/ready) within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// `config` as YAML for `skein proxy --config`, with only the `telemetry` settings that
/// differ from their defaults (none for the skein pair, `requests: false` for the
/// telemetry-off pair). The proxy reads it back the same, and `skein` binaries older than
/// some of those settings (they refuse unknown keys) still run: every version runs the
/// skein pair (with `SKEIN_BENCH_NO_TELEMETRY_SETUP=1` for the rest of the run), and every
/// version that knows `telemetry.requests` runs the telemetry-off pair too. See
/// bench/README.md.
fn proxy_yaml(config: &ProxyConfig) -> String {
    let yaml = config.to_yaml();
    let mut out = String::with_capacity(yaml.len());
    let mut in_telemetry = false;
    for line in yaml.lines() {
        if line.starts_with("telemetry:") {
            in_telemetry = true;
            continue;
        }
        // The block ends at the next top-level key.
        if in_telemetry && line.starts_with([' ', '-']) {
            continue;
        }
        in_telemetry = false;
        out.push_str(line);
        out.push('\n');
    }
    let (Ok(serde_json::Value::Object(set)), Ok(serde_json::Value::Object(default))) = (
        serde_json::to_value(&config.telemetry),
        serde_json::to_value(TelemetryConfig::default()),
    ) else {
        // Not a map: keep the block as written.
        return yaml;
    };
    let changed: serde_json::Map<String, serde_json::Value> = set
        .into_iter()
        .filter(|(k, v)| default.get(k) != Some(v))
        .collect();
    if !changed.is_empty() {
        // JSON is a YAML flow mapping.
        out.push_str(&format!(
            "telemetry: {}\n",
            serde_json::Value::Object(changed)
        ));
    }
    out
}

/// A bare `GET` with HTTP/1.0; returns the whole response.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text)).await??;
    Ok(text)
}

/// `name` on `$PATH` or in the sbin directories (Debian puts nginx in /usr/sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_skein_configs_are_valid() {
        for pair in [SKEIN, SKEIN_TELEMETRY_OFF] {
            let telemetry = TelemetryConfig {
                requests: pair.telemetry_requests,
                ..TelemetryConfig::default()
            };
            let server = server_config(pair.inbound, telemetry.clone());
            server.validate("server").unwrap();
            let client = client_config(pair.outbound, telemetry);
            client.validate("client").unwrap();
            for config in [server, client] {
                let yaml = proxy_yaml(&config);
                let back = ProxyConfig::from_yaml(&yaml, "again").unwrap();
                assert_eq!(back, config);
                assert_eq!(back.telemetry.requests, pair.telemetry_requests);
                // Only what differs from the default, for binaries older than some
                // telemetry settings.
                let want = if pair.telemetry_requests {
                    None
                } else {
                    Some("telemetry: {\"requests\":false}")
                };
                let got = yaml.lines().find(|l| l.contains("telemetry"));
                assert_eq!(got, want, "{yaml}");
            }
        }
    }

    #[test]
    fn setups_use_distinct_addresses() {
        // direct, the nginx pair (A, B), the slow-endpoint and overload scenarios, the
        // skein pairs, the callgrind pair, `skein-bench pair`'s and the deployed shape's
        // control plane.
        let mut hosts = vec![ip(150), ip(153), ip(154), crate::deployed::CONTROL_HOST];
        hosts.extend(crate::slow::HOSTS);
        hosts.extend(crate::overload::HOSTS);
        for pair in [
            SKEIN,
            SKEIN_TELEMETRY_OFF,
            SKEIN_TRACING_OFF,
            crate::callgrind::PAIR,
            crate::pair::PAIR,
        ] {
            hosts.extend([pair.outbound, pair.inbound, pair.control]);
        }
        let n = hosts.len();
        hosts.sort();
        hosts.dedup();
        assert_eq!(hosts.len(), n, "two setups share an address");
        assert_ne!(SKEIN.label, SKEIN_TELEMETRY_OFF.label);
        assert_ne!(SKEIN.tag, SKEIN_TELEMETRY_OFF.tag);
        assert_ne!(SKEIN_TRACING_OFF.tag, SKEIN_TELEMETRY_OFF.tag);
    }
}
