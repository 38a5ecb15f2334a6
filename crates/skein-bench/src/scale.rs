//! `skein-bench scale`: one `skein control` process against N simulated proxies in this
//! process. Each simulated proxy is what a real one is to the control plane: its own key
//! and certificate (obtained with `Certify` and one use of a fleet join token, so each has
//! its own join lineage), its own mutual-TLS HTTP/2 connection, a `Sync` stream that
//! registers (announcing deltas and on-demand discovery), asks for the Service it calls,
//! acknowledges every message and sends a telemetry summary every few seconds.
//!
//! Order: start the control plane (embedded store) with `--services` Services, each with an
//! HTTPRoute and an AuthorizationPolicy → certificates in bulk → every proxy connects and
//! holds the target → one route change to the target, timed until every proxy applied it
//! (p50/p99/max), with the control plane's CPU and memory → SIGKILL and restart the control
//! plane on the same data directory, timed until every proxy is back (the proxies back off
//! with jitter, as real ones do) → a JSON line of figures on stdout, and a short report.
//!
//! The control plane's memory per proxy is its RSS with every proxy connected, less its
//! RSS before any connected, over N. Load loops are bounded: every wait has a deadline.

use anyhow::{bail, Context};
use skein_api::v1 as pb;
use skein_api::v1::proxy_control_client::ProxyControlClient;
use skein_identity::{JoinToken, SpiffeId};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What `skein-bench scale` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated proxies.
    pub proxies: usize,
    /// Services in the mesh besides the target (each with a route and a policy).
    pub services: usize,
    /// The `skein` binary.
    pub skein: PathBuf,
    /// Also kill and restart the control plane and time the reconnect storm.
    pub restart: bool,
    /// Two replicas sharing an etcd (started here) instead of one with the embedded
    /// store; proxies split between them, each knowing both.
    pub etcd: bool,
}

/// The Service every simulated proxy calls, whose route changes.
pub(crate) const TARGET: &str = "scale-target";
/// Where the control plane listens (its own loopback address).
const CONTROL_IP: [u8; 4] = [127, 0, 0, 180];
/// Simulated proxies connect from 127.0.6.1–64, round robin (what they announce): the
/// control plane admits at most 1,024 connections from one address.
const SOURCES: u8 = 64;

fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 6, 1 + (i % usize::from(SOURCES)) as u8])
}
/// The real proxy whose memory is measured.
const PROBE_IP: [u8; 4] = [127, 0, 0, 185];
/// Certificates requested at once.
const CERTIFY_AT_ONCE: usize = 32;
/// Resources per `skein apply`: under etcd's default limit of 128 operations per
/// transaction.
const APPLY_AT_ONCE: usize = 120;
/// Streams opened at once while connecting.
const CONNECT_AT_ONCE: usize = 256;

/// The timeout in the target's route: what each change sets, and how a proxy tells it
/// applied that change.
fn route_yaml(timeout_ms: u64) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {TARGET}}}
spec:
  parentRefs: [{{group: '', kind: Service, name: {TARGET}, port: 8080}}]
  rules: [{{timeouts: {{request: {timeout_ms}ms}}, backendRefs: [{{name: {TARGET}, port: 8080}}]}}]
"
    )
}

/// Services `svc-N` for N in `range`, each with an HTTPRoute and an AuthorizationPolicy.
pub(crate) fn service_docs(range: std::ops::Range<usize>) -> String {
    let mut yaml = String::new();
    for i in range {
        let name = format!("svc-{i}");
        yaml.push_str(&format!(
            "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}, ports: [{{port: 8080, protocol: http}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{group: '', kind: Service, name: {name}, port: 8080}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /v1}}}}], backendRefs: [{{name: {name}, port: 8080}}]}}]
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {name}}}
spec: {{targetRef: {{kind: Service, name: {name}}}, action: allow, rules: [{{from: [{{service: sim}}]}}]}}
---
"
        ));
    }
    yaml
}

/// `services` Services (see [`service_docs`]) and the target with its route.
pub(crate) fn resources(services: usize) -> String {
    let mut yaml = service_docs(0..services);
    yaml.push_str(&format!(
        "apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {{name: {TARGET}}}
spec: {{selector: {{app: {TARGET}}}, ports: [{{port: 8080, protocol: http}}]}}
---
"
    ));
    yaml.push_str(&route_yaml(1000));
    yaml
}

/// The control plane process.
pub(crate) struct ControlPlane {
    child: Child,
    pub dir: PathBuf,
    pub http: SocketAddr,
    grpc: SocketAddr,
    skein: PathBuf,
}

impl ControlPlane {
    pub(crate) fn spawn(
        skein: &Path,
        dir: &Path,
        http: SocketAddr,
        grpc: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("control.log"))?;
        let child = Command::new(skein)
            .arg("control")
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--http")
            .arg(http.to_string())
            .arg("--grpc")
            .arg(grpc.to_string())
            .arg("--otlp")
            .arg(SocketAddr::new(http.ip(), 0).to_string())
            .env("SKEIN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} control", skein.display()))?;
        Ok(ControlPlane {
            child,
            dir: dir.to_path_buf(),
            http,
            grpc,
            skein: skein.to_path_buf(),
        })
    }

    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "skein control exited ({status}); its log is {}",
                    self.dir.join("control.log").display()
                );
            }
            if tokio::net::TcpStream::connect(self.grpc).await.is_ok()
                && tokio::net::TcpStream::connect(self.http).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("skein control did not listen within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.skein)
            .args(args)
            .arg("--server")
            .arg(self.http.to_string())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .env("SKEIN_LOG", "warn")
            .env_remove("SKEIN_TOKEN")
            .env_remove("SKEIN_SERVER")
            .output()?;
        if !out.status.success() {
            bail!(
                "skein {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies `yaml`'s documents, [`APPLY_AT_ONCE`] per `skein apply` (each apply is one
    /// store transaction, and etcd takes at most 128 operations in one).
    pub(crate) fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let docs: Vec<&str> = yaml
            .split("\n---\n")
            .filter(|d| !d.trim().is_empty())
            .collect();
        let file = self.dir.join("apply.yaml");
        for group in docs.chunks(APPLY_AT_ONCE) {
            std::fs::write(&file, group.join("\n---\n"))?;
            self.cli(&["apply", "-f", &file.display().to_string()])?;
        }
        Ok(())
    }

    /// RSS (KiB) and CPU time (user + system, seconds) of the process.
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.id();
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1;
                let f: Vec<&str> = after.split_whitespace().collect();
                let ticks: f64 =
                    f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
                Some(ticks / hz)
            })
            .unwrap_or(0.0);
        (rss, cpu)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd started for the two-replica run; killed when dropped.
struct EtcdProc {
    child: Child,
    client: SocketAddr,
}

impl EtcdProc {
    async fn start(dir: &Path, ip: IpAddr) -> anyhow::Result<EtcdProc> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("etcd is not installed (apt-get install etcd-server)")?;
        let (client, peer) = (free_port(ip)?, free_port(ip)?);
        let (client_url, peer_url) = (format!("http://{client}"), format!("http://{peer}"));
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = Command::new(bin)
            .args(["--name", "scale", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("scale={peer_url}")])
            .args([
                "--log-level",
                "error",
                "--quota-backend-bytes",
                "8589934592",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start etcd")?;
        let etcd = EtcdProc { child, client };
        let up = until(Duration::from_secs(20), || {
            http_get(client, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
        })
        .await;
        if up.is_err() {
            bail!(
                "etcd did not become healthy within 20 s (log: {})",
                dir.join("etcd.log").display()
            );
        }
        Ok(etcd)
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 32 random bytes, hex: the replicas' shared secrets key (written 0600).
fn secrets_key(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("secrets.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut f, hex.as_bytes())?;
    Ok(path)
}

/// What one simulated proxy has seen, shared with the driver.
#[derive(Default)]
struct Seen {
    /// Messages received on the current stream.
    messages: AtomicUsize,
    /// Streams opened (reconnects + 1).
    streams: AtomicUsize,
    /// The target's request timeout (ms) in the configuration held; 0: target not held.
    timeout_ms: AtomicU64,
    /// When (µs since the driver's epoch) the target's timeout last changed.
    changed_at_us: AtomicU64,
    /// Bytes of messages received.
    bytes: AtomicU64,
}

/// What the simulated proxies share.
struct Fleet {
    epoch: Instant,
    seen: Vec<Arc<Seen>>,
    /// Why the last stream that ended ended, for the report.
    last_error: Mutex<Option<String>>,
}

impl Fleet {
    fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.seen.iter().filter(|s| f(s)).count()
    }
}

/// One simulated proxy: holds a certificate; keeps a stream open, reconnecting with
/// backoff and full jitter; applies and acknowledges every message.
async fn proxy(
    i: usize,
    identity: Arc<skein_proxy::identity::Identity>,
    endpoint: String,
    expected: SpiffeId,
    source: IpAddr,
    fleet: Arc<Fleet>,
) {
    let seen = fleet.seen[i].clone();
    let mut held = Held::default();
    let mut failures = 0u32;
    loop {
        match session(
            i, &identity, &endpoint, &expected, source, &seen, &mut held, &fleet,
        )
        .await
        {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                *fleet.last_error.lock().unwrap() = Some(e);
            }
        }
        // As real proxies: d = 100 ms × 2ⁿ capped at 10 s, a random delay in [d/2, d].
        let d = Duration::from_millis(100)
            .saturating_mul(1 << failures.min(7))
            .min(Duration::from_secs(10));
        let jitter = rand_fraction(i as u64 ^ u64::from(failures));
        tokio::time::sleep(d / 2 + d.mul_f64(jitter / 2.0)).await;
    }
}

/// A cheap pseudo-random fraction in [0, 1) from `seed` and the clock.
fn rand_fraction(seed: u64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 1_000_000) as f64 / 1_000_000.0
}

/// What a simulated proxy holds: its version and destinations' digests (for resuming).
#[derive(Default)]
struct Held {
    version: u64,
    digests: std::collections::BTreeMap<String, u64>,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    i: usize,
    identity: &skein_proxy::identity::Identity,
    endpoint: &str,
    expected: &SpiffeId,
    source: IpAddr,
    seen: &Seen,
    held: &mut Held,
    fleet: &Fleet,
) -> Result<(), String> {
    let tls = identity
        .client_config(expected)
        .map_err(|e| e.to_string())?;
    let channel = skein_proxy::control::tls_channel(endpoint, tls, expected, Some(source))
        .await
        .map_err(|e| e.message().to_string())?;
    let mut client = ProxyControlClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::ProxyMessage>(8);
    let register = pb::Register {
        workload: format!("sim-{i}"),
        namespace: "default".into(),
        service: "sim".into(),
        address: source.to_string(),
        inbound_port: 20_000 + (i % 40_000) as u32,
        app_ports: vec![8080],
        last_version: held.version,
        supports: vec!["deltas".into(), "on-demand".into()],
        held: held
            .digests
            .iter()
            .map(|(k, d)| pb::Held {
                destination: k.clone(),
                digest: *d,
            })
            .collect(),
        wanted: Some(pb::Want {
            names: vec![TARGET.into()],
            addresses: vec![],
        }),
        ..Default::default()
    };
    let first = pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Register(register)),
    };
    tx.send(first).await.map_err(|e| e.to_string())?;
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut stream = client
        .sync(outgoing)
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    seen.streams.fetch_add(1, Ordering::SeqCst);
    seen.messages.store(0, Ordering::SeqCst);
    // Ask for the target at once (a reconnecting proxy's `wanted` already says it).
    let want = pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Want(pb::Want {
            names: vec![TARGET.into()],
            addresses: vec![],
        })),
    };
    tx.send(want).await.map_err(|e| e.to_string())?;
    let mut summary_due = Instant::now() + Duration::from_secs(5);
    let mut sequence = 0u64;
    loop {
        let next = tokio::time::timeout_at(summary_due.into(), stream.message()).await;
        let message = match next {
            Err(_) => {
                // A telemetry summary: one series of calls to the target.
                sequence += 1;
                summary_due = Instant::now() + Duration::from_secs(5);
                let summary = summary(sequence);
                if tx.send(summary).await.is_err() {
                    return Err("stream closed".into());
                }
                continue;
            }
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e.message().to_string()),
        };
        seen.bytes.fetch_add(
            prost::Message::encoded_len(&message) as u64,
            Ordering::Relaxed,
        );
        let error = apply(&message, held);
        if let Some(ms) = target_timeout(&message) {
            if seen.timeout_ms.swap(ms, Ordering::SeqCst) != ms {
                let at = fleet.epoch.elapsed().as_micros() as u64;
                seen.changed_at_us.store(at, Ordering::SeqCst);
            }
        }
        seen.messages.fetch_add(1, Ordering::SeqCst);
        let ack = pb::ProxyMessage {
            message: Some(pb::proxy_message::Message::Ack(pb::Ack {
                version: message.version,
                stale: error.is_some(),
                error: error.unwrap_or_default(),
                sent_unix_ms: 0,
            })),
        };
        if tx.send(ack).await.is_err() {
            return Err("stream closed".into());
        }
    }
}

/// Applies a message to `held` as a proxy would (digests only); the refusal, if any.
fn apply(message: &pb::Snapshot, held: &mut Held) -> Option<String> {
    let key = |d: &pb::Destination| format!("{}/{}", d.namespace, d.service);
    match &message.delta {
        None => {
            held.digests = message
                .destinations
                .iter()
                .map(|d| (key(d), d.digest))
                .collect();
        }
        Some(delta) => {
            if delta.base_version != held.version {
                return Some(format!(
                    "the delta changes version {}, this proxy holds {}",
                    delta.base_version, held.version
                ));
            }
            for r in &delta.removed {
                held.digests.remove(r);
            }
            for d in &delta.destinations {
                held.digests.insert(key(d), d.digest);
            }
        }
    }
    held.version = message.version;
    None
}

/// The target's request timeout in `message`, when it carries the target.
fn target_timeout(message: &pb::Snapshot) -> Option<u64> {
    let destinations = match &message.delta {
        None => &message.destinations,
        Some(d) => &d.destinations,
    };
    let target = destinations.iter().find(|d| d.service == TARGET)?;
    let rule = target.routes.first()?.rules.first()?;
    rule.timeouts.as_ref()?.request_ms
}

fn summary(sequence: u64) -> pb::ProxyMessage {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Summary(pb::Summary {
            sequence,
            taken_unix_ms: now,
            interval_ms: 5000,
            bucket_layout: 1,
            requests: vec![pb::RequestStats {
                protocol: "http1".into(),
                tls: true,
                dst: Some(pb::Account {
                    namespace: "default".into(),
                    name: TARGET.into(),
                }),
                status_code: 200,
                count: 50,
                latency: Some(pb::Histogram {
                    buckets: vec![10],
                    counts: vec![50],
                    sum_us: 50 * 900,
                }),
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

/// A real `skein proxy` process joined to a control plane, with an HTTP proxy listener
/// its "application" calls Services through; killed when dropped.
pub(crate) struct Probe {
    child: Child,
    /// Its admin listener.
    pub admin: SocketAddr,
    http_proxy: SocketAddr,
}

/// The value of the unlabelled metric `name` in the exposition `text`, if there.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

impl Probe {
    /// Starts workload `name` of Service `probe` on `ip`, with `env` added to its
    /// environment and `extra` (YAML lines) to its configuration, and waits until it is
    /// ready (at most 30 s).
    pub(crate) async fn start(
        cp: &ControlPlane,
        name: &str,
        ip: IpAddr,
        env: &[(String, String)],
        extra: &str,
    ) -> anyhow::Result<Probe> {
        let (inbound, admin, http_proxy) = (free_port(ip)?, free_port(ip)?, free_port(ip)?);
        let config = format!(
            "workload: {{name: {name}, service: probe}}\n\
             inbound: {{listen: '{inbound}', appHost: '{ip}', ports: [{{port: 8080, protocol: http}}]}}\n\
             outbound: {{httpProxy: '{http_proxy}'}}\n\
             admin: {{listen: '{admin}'}}\n{extra}"
        );
        let file = cp.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, config)?;
        let token = cp
            .cli(&["token", "create", "--service", "probe", "--ttl", "10m"])?
            .trim()
            .to_string();
        let log_path = cp.dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&cp.skein)
            .arg("proxy")
            .arg("--config")
            .arg(&file)
            .arg("--control")
            .arg(cp.grpc.to_string())
            .env("SKEIN_JOIN_TOKEN", token)
            .env("SKEIN_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let probe = Probe {
            child,
            admin,
            http_proxy,
        };
        let ready = until(Duration::from_secs(30), || {
            http_get(admin, "/ready")
                .is_some_and(|b| b.ends_with("ready\n") && !b.ends_with("not ready\n"))
        })
        .await;
        if ready.is_err() {
            bail!(
                "the probe proxy {name} was not ready within 30 s (log: {})",
                log_path.display()
            );
        }
        Ok(probe)
    }

    /// Its application calls `service` once; the response.
    pub(crate) fn call(&self, service: &str) -> Option<String> {
        http_proxy_get(self.http_proxy, service)
    }

    /// How many destinations it holds (`skein_config_destinations`), -1 if unknown.
    pub(crate) fn held(&self) -> f64 {
        self.metrics()
            .and_then(|m| metric(&m, "skein_config_destinations"))
            .unwrap_or(-1.0)
    }

    /// Its `/metrics` text, if it answers.
    pub(crate) fn metrics(&self) -> Option<String> {
        http_get(self.admin, "/metrics")
    }

    /// Its RSS and, of it, private (anonymous) memory, in MiB.
    pub(crate) fn memory(&self) -> anyhow::Result<(f64, f64)> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |field: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((kib("VmRSS:") / 1024.0, kib("RssAnon:") / 1024.0))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real proxy that called the target once (through its HTTP proxy listener: discovered
/// on demand) and then idled: its RSS and private memory after 3 s, and how many
/// destinations it holds.
async fn probe_proxy(cp: &ControlPlane) -> anyhow::Result<serde_json::Value> {
    let probe = Probe::start(cp, "probe-1", IpAddr::from(PROBE_IP), &[], "").await?;
    // The first request names a Service it never heard of: discovered, answered 503
    // (the target has no endpoints), and held from then on.
    let answer = probe.call(TARGET).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = probe.held();
    let (rss, private) = probe.memory()?;
    Ok(serde_json::json!({
        "rss_mib": rss,
        "private_mib": private,
        "destinations_held": held,
        "first_request": answer.lines().next().unwrap_or_default(),
    }))
}

/// A blocking HTTP/1.0 GET (admin listener); the whole response.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A GET of `http://SERVICE:8080/` through an HTTP proxy listener; the response.
fn http_proxy_get(proxy: SocketAddr, service: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&proxy, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(
        format!("GET http://{service}:8080/ HTTP/1.1\r\nHost: {service}:8080\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Waits until `done`, at most `within`; how long it took, or how far it got.
pub(crate) async fn until(within: Duration, done: impl Fn() -> bool) -> Result<Duration, Duration> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > within {
            return Err(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the scale measurement; prints the report and returns the figures as JSON.
pub async fn run(opts: Options) -> anyhow::Result<serde_json::Value> {
    let n = opts.proxies;
    let dir = std::env::temp_dir().join(format!("skein-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let control_ip = IpAddr::from(CONTROL_IP);
    // One replica with the embedded store, or two sharing an etcd.
    let mut etcd = None;
    let mut replicas: Vec<(PathBuf, SocketAddr, SocketAddr, Vec<String>)> = Vec::new();
    if opts.etcd {
        let e = EtcdProc::start(&dir, control_ip).await?;
        let key = secrets_key(&dir)?;
        for name in ["r1", "r2"] {
            let extra = vec![
                "--store".to_string(),
                format!("etcd://{}", e.client),
                "--replica".into(),
                name.into(),
                "--secrets-key-file".into(),
                key.display().to_string(),
            ];
            replicas.push((
                dir.join(name),
                free_port(control_ip)?,
                free_port(control_ip)?,
                extra,
            ));
        }
        etcd = Some(e);
    } else {
        replicas.push((
            dir.clone(),
            free_port(control_ip)?,
            free_port(control_ip)?,
            Vec::new(),
        ));
    }
    let mut cps = Vec::new();
    for (d, http, grpc, extra) in &replicas {
        eprintln!(
            "scale: starting skein control on {grpc} ({}, data in {})",
            if opts.etcd { "etcd" } else { "embedded store" },
            d.display()
        );
        let mut cp = ControlPlane::spawn(&opts.skein, d, *http, *grpc, extra)?;
        cp.wait_ready().await?;
        cps.push(cp);
    }
    let grpcs: Vec<SocketAddr> = cps.iter().map(|c| c.grpc).collect();
    // Proxy i's endpoints: its home replica first, then the others.
    let endpoint = |i: usize| -> String {
        (0..grpcs.len())
            .map(|k| grpcs[(i + k) % grpcs.len()].to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let usage = |cps: &[ControlPlane]| -> (u64, f64) {
        cps.iter()
            .map(ControlPlane::usage)
            .fold((0, 0.0), |(r, c), (r2, c2)| (r + r2, c + c2))
    };
    let cp = &cps[0];
    cp.apply(&resources(opts.services))?;
    let token_text = cp
        .cli(&[
            "token",
            "create",
            "--service",
            "sim",
            "--uses",
            &n.to_string(),
            "--ttl",
            "1h",
        ])?
        .trim()
        .to_string();
    let token: JoinToken = token_text.parse().context("the fleet token")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_idle, _) = usage(&cps);

    // Certificates, in bulk: one Certify (one use of the fleet token) each.
    eprintln!("scale: {n} certificates, {CERTIFY_AT_ONCE} requests at a time");
    let started = Instant::now();
    let claimed = SpiffeId::new(token.trust_domain(), "default", "sim")?;
    let mut identities = Vec::with_capacity(n);
    let mut pending = futures_util::stream::FuturesOrdered::new();
    use futures_util::StreamExt;
    for i in 0..n {
        let source = source(i);
        let control = skein_proxy::control::ControlConfig {
            endpoint: endpoint(i),
            advertise: SocketAddr::new(source, 0),
            token: token.clone(),
        };
        let claimed = claimed.clone();
        pending.push_back(async move {
            // Transient refusals are retried, as proxies do.
            let mut tries = 0;
            loop {
                match skein_proxy::control::certify(&control, &claimed).await {
                    Err(e) if !e.fatal && tries < 5 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                    }
                    other => break other,
                }
            }
        });
        if pending.len() >= CERTIFY_AT_ONCE {
            let issued = pending.next().await.expect("pending");
            identities.push(issued.map_err(|e| anyhow::anyhow!("Certify: {e}"))?);
        }
    }
    while let Some(issued) = pending.next().await {
        identities.push(issued.map_err(|e| anyhow::anyhow!("Certify: {e}"))?);
    }
    let certified = started.elapsed();
    eprintln!("scale: certificates in {:.1} s", certified.as_secs_f64());

    // Every proxy connects.
    let fleet = Arc::new(Fleet {
        epoch: Instant::now(),
        seen: (0..n).map(|_| Arc::default()).collect(),
        last_error: Mutex::new(None),
    });
    let expected = skein_proxy::control::control_identity(&token)?;
    let (_, cpu_before_connect) = usage(&cps);
    let connecting = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let source = source(i);
        tasks.spawn(proxy(
            i,
            identity,
            endpoint(i),
            expected.clone(),
            source,
            fleet.clone(),
        ));
        if i % CONNECT_AT_ONCE == CONNECT_AT_ONCE - 1 {
            // Let the control plane take a batch before the next (as proxies starting
            // across a fleet do; not all in the same millisecond).
            let opened = i + 1;
            let _ = until(Duration::from_secs(30), || {
                fleet.count(|s| s.messages.load(Ordering::SeqCst) > 0) + CONNECT_AT_ONCE >= opened
            })
            .await;
        }
    }
    let holding = || fleet.count(|s| s.timeout_ms.load(Ordering::SeqCst) == 1000);
    let connect = until(Duration::from_secs(240), || holding() == n).await;
    let connected_in = match connect {
        Ok(_) => connecting.elapsed(),
        Err(_) => bail!(
            "only {} of {n} proxies hold the target after 240 s; last stream error: {:?}",
            holding(),
            fleet.last_error.lock().unwrap()
        ),
    };
    let (_, cpu_after_connect) = usage(&cps);
    eprintln!(
        "scale: {n} proxies connected and hold the target in {:.1} s",
        connected_in.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_connected, cpu_settled) = usage(&cps);

    // One route change to the target, applied by every proxy.
    let (_, cpu_before) = usage(&cps);
    let changed_at = fleet.epoch.elapsed();
    cp.apply(&route_yaml(2000))?;
    let applied = || fleet.count(|s| s.timeout_ms.load(Ordering::SeqCst) == 2000);
    let all = until(Duration::from_secs(60), || applied() == n).await;
    if all.is_err() {
        bail!(
            "only {} of {n} proxies applied the route change within 60 s",
            applied()
        );
    }
    let mut delays: Vec<f64> = fleet
        .seen
        .iter()
        .map(|s| {
            let at = Duration::from_micros(s.changed_at_us.load(Ordering::SeqCst));
            at.saturating_sub(changed_at).as_secs_f64() * 1000.0
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_after_change, cpu_after) = usage(&cps);
    let change = serde_json::json!({
        "p50_ms": percentile(&delays, 50.0),
        "p99_ms": percentile(&delays, 99.0),
        "max_ms": percentile(&delays, 100.0),
        "control_cpu_s": cpu_after - cpu_before,
    });
    eprintln!("scale: the route change reached every proxy: {change}");

    // A real proxy's memory in this mesh: it holds what it called, whatever the mesh's size.
    let probe = probe_proxy(&cps[0]).await?;
    eprintln!("scale: a real proxy that called one Service: {probe}");

    // The reconnect storm: SIGKILL, restart on the same data directory.
    let mut storm = serde_json::Value::Null;
    if opts.restart {
        let streams_before: Vec<usize> = fleet
            .seen
            .iter()
            .map(|s| s.streams.load(Ordering::SeqCst))
            .collect();
        // The first replica (the only one with the embedded store): its proxies must
        // come back, to it once restarted or to the other replica; the other's stay.
        cps[0].kill();
        eprintln!(
            "scale: control plane (replica 1) killed; restarting it on the same data directory"
        );
        let (d, http, grpc, extra) = &replicas[0];
        let mut again = ControlPlane::spawn(&opts.skein, d, *http, *grpc, extra)?;
        again.wait_ready().await?;
        let restarted = Instant::now();
        let replicas_n = cps.len();
        let back = || {
            fleet
                .seen
                .iter()
                .zip(&streams_before)
                .enumerate()
                .filter(|(i, (s, before))| {
                    let moved = s.streams.load(Ordering::SeqCst) > **before
                        && s.messages.load(Ordering::SeqCst) > 0;
                    let elsewhere = i % replicas_n != 0
                        && s.streams.load(Ordering::SeqCst) == **before
                        && s.messages.load(Ordering::SeqCst) > 0;
                    moved || elsewhere
                })
                .count()
        };
        let done = until(Duration::from_secs(120), || back() == n).await;
        cps[0] = again;
        let (rss_back, _) = usage(&cps);
        storm = match done {
            Ok(d) => serde_json::json!({
                "all_back_s": d.as_secs_f64(),
                "control_rss_mib": rss_back as f64 / 1024.0,
            }),
            Err(d) => bail!(
                "only {} of {n} proxies were back {:.0} s after the control plane restarted; last stream error: {:?}",
                back(),
                d.as_secs_f64(),
                fleet.last_error.lock().unwrap()
            ),
        };
        eprintln!(
            "scale: reconnect storm: {storm} ({:.1} s after restart)",
            restarted.elapsed().as_secs_f64()
        );
    }
    let bytes: u64 = fleet
        .seen
        .iter()
        .map(|s| s.bytes.load(Ordering::Relaxed))
        .sum();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(cps);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    let per_proxy_kib = (rss_connected.saturating_sub(rss_idle)) as f64 / n as f64;
    Ok(serde_json::json!({
        "proxies": n,
        "replicas": replicas.len(),
        "store": if opts.etcd { "etcd" } else { "embedded" },
        "services": opts.services + 1,
        "certificates_s": certified.as_secs_f64(),
        "connect_s": connected_in.as_secs_f64(),
        "connect_control_cpu_s": cpu_after_connect - cpu_before_connect,
        "settle_control_cpu_s": cpu_settled - cpu_after_connect,
        "control_rss_idle_mib": rss_idle as f64 / 1024.0,
        "control_rss_connected_mib": rss_connected as f64 / 1024.0,
        "control_rss_after_change_mib": rss_after_change as f64 / 1024.0,
        "control_kib_per_proxy": per_proxy_kib,
        "route_change": change,
        "reconnect_storm": storm,
        "proxy": probe,
        "bytes_received_per_proxy": bytes / n as u64,
    }))
}

pub(crate) fn free_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(l.local_addr()?)
}
