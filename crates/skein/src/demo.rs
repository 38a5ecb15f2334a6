//! `skein demo`: a meshed sample application on loopback (as root, [`crate::demo_ns`]
//! runs the same applications in network namespaces with `skein run` instead).
//!
//! Workloads (each on its own 127.0.N.x address, each with its own `skein proxy` process):
//!
//! ```text
//! traffic ──► frontend ──HTTP──► restaurant
//!    ╎             └─────TCP───► ledger
//!    └╌╌╌╌ denied ╌╌╌╌╌╌╌╌╌╌╌╌╌► restaurant (every 2 s; no policy allows it)
//! ```
//!
//! With `--canary`, two more versions of the restaurant run beside it (v2 healthy, v3
//! answering one request in ten with 500), and once traffic flows the demo releases each
//! as a `Canary`: v2 is promoted step by step, v3 is rolled back by its failed checks. The
//! terminal shows each step with the metric values that decided it.
//!
//! A control plane (in this process, embedded store in a temporary directory) holds the
//! mesh's Services; every proxy gets its destinations from it. The traffic generator and
//! the frontend reach their destinations through their proxy's
//! local upstream listeners; every hop between workloads crosses two proxies. The demo
//! prints the admin addresses and live request counts read from the proxies' own
//! `/metrics`, and removes every process and file it made when it stops.

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skein_control::server::{ControlOptions, RunningControl};
use skein_proxy::connect::{H1Pool, TcpConnector};
use skein_proxy::http::{boxed, Body};
use skein_proxy::metrics::sum_samples;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub(crate) const APP_PORT: u16 = 8080;
pub(crate) const LEDGER_PORT: u16 = 9000;
const INBOUND_PORT: u16 = 4143;
const ADMIN_PORT: u16 = 4191;
const UPSTREAM_A: u16 = 15001;
const UPSTREAM_B: u16 = 15002;

struct Workload {
    /// Its name (the workload is `NAME-1`).
    name: &'static str,
    /// Its service account, which is the service it joins.
    service: &'static str,
    /// Its `version` label, if any.
    version: Option<&'static str>,
    host: u8,
}

const fn workload(name: &'static str, host: u8) -> Workload {
    Workload {
        name,
        service: name,
        version: None,
        host,
    }
}

const TRAFFIC: Workload = workload("traffic", 10);
const FRONTEND: Workload = workload("frontend", 11);
const RESTAURANT: Workload = Workload {
    version: Some("v1"),
    ..workload("restaurant", 12)
};
const LEDGER: Workload = workload("ledger", 13);
/// The restaurant's next version (healthy) and the one after (one answer in ten a 500),
/// run with `--canary`.
const RESTAURANT_V2: Workload = Workload {
    name: "restaurant-v2",
    service: "restaurant",
    version: Some("v2"),
    host: 14,
};
const RESTAURANT_V3: Workload = Workload {
    name: "restaurant-v3",
    service: "restaurant",
    version: Some("v3"),
    host: 15,
};

/// Runs the demo for `duration` (or until Ctrl-C) at `rps` requests per second; with
/// `canary`, two releases of the restaurant as Canaries.
pub async fn run(
    duration: Duration,
    rps: u32,
    net: u8,
    canary: bool,
    loopback: bool,
) -> anyhow::Result<()> {
    if canary && rps < 10 {
        bail!("skein demo --canary needs --rps 10 or more: each check wants at least 5 requests to the canary at 20 % in 3 s");
    }
    // As root, each application runs in a network namespace of its own with `skein run`
    // (docs/getting-started.md); otherwise, and with --canary or --loopback, on loopback.
    let why_loopback = match (loopback, canary) {
        (true, _) => None,
        (_, true) => Some("--canary runs on loopback".to_string()),
        _ => match crate::demo_ns::supported() {
            Ok(()) => return crate::demo_ns::run(duration, rps, net).await,
            Err(why) => Some(why),
        },
    };
    if let Some(why) = why_loopback {
        println!("skein demo: on loopback ({why}); as root it runs each application in a network namespace of its own with `skein run`");
    }
    let ip = move |w: &Workload| IpAddr::from([127, 0, net, w.host]);
    let dir = std::env::temp_dir().join(format!("skein-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!("skein demo: starting a meshed sample application on 127.0.{net}.0/24");
    let result = run_in(&dir, duration, rps, canary, &ip).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: &Path,
    duration: Duration,
    rps: u32,
    canary: bool,
    ip: &dyn Fn(&Workload) -> IpAddr,
) -> anyhow::Result<()> {
    let mut apps = tokio::task::JoinSet::new();
    let listen = |w: &Workload, port| SocketAddr::new(ip(w), port);
    let restaurant = TcpListener::bind(listen(&RESTAURANT, APP_PORT)).await?;
    apps.spawn(serve_http(
        restaurant,
        Arc::new(|_req| async { Ok(menu()) }),
    ));
    let workloads: &[&Workload] = if canary {
        &[
            &TRAFFIC,
            &FRONTEND,
            &RESTAURANT,
            &LEDGER,
            &RESTAURANT_V2,
            &RESTAURANT_V3,
        ]
    } else {
        &[&TRAFFIC, &FRONTEND, &RESTAURANT, &LEDGER]
    };
    if canary {
        let v2 = TcpListener::bind(listen(&RESTAURANT_V2, APP_PORT)).await?;
        apps.spawn(serve_http(v2, Arc::new(|_req| async { Ok(menu()) })));
        let v3 = TcpListener::bind(listen(&RESTAURANT_V3, APP_PORT)).await?;
        let served = Arc::new(AtomicU64::new(0));
        apps.spawn(serve_http(
            v3,
            Arc::new(move |_req| {
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    if n.is_multiple_of(10) {
                        let mut r =
                            Response::new(boxed(Full::new(Bytes::from_static(b"v3 broke\n"))));
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        Ok(r)
                    } else {
                        Ok(menu())
                    }
                }
            }),
        ));
    }
    let ledger = TcpListener::bind(listen(&LEDGER, LEDGER_PORT)).await?;
    apps.spawn(serve_ledger(ledger));
    let frontend = TcpListener::bind(listen(&FRONTEND, APP_PORT)).await?;
    let upstreams = (listen(&FRONTEND, UPSTREAM_A), listen(&FRONTEND, UPSTREAM_B));
    let pool = Arc::new(H1Pool::new(Arc::new(TcpConnector::default())));
    apps.spawn(serve_http(
        frontend,
        Arc::new(move |req: Request<Incoming>| {
            frontend_handler(pool.clone(), upstreams, req.headers().clone())
        }),
    ));
    println!("  apps      restaurant (HTTP), ledger (TCP), frontend (HTTP; calls both)");
    if canary {
        println!("            restaurant v2 (healthy) and v3 (one answer in ten a 500), released as canaries below");
    }

    let control_ip = ip(&workload("control", 1));
    let grpc = SocketAddr::new(control_ip, 9991);
    let control = start_control(dir, control_ip, grpc).await?;
    let mut text = RESOURCES.to_string();
    if canary {
        // Until a release routes it, the restaurant's traffic goes to v1 only.
        text = text.replace(
            "metadata: {name: restaurant}\nspec: {selector: {app: restaurant}",
            "metadata: {name: restaurant}\nspec: {selector: {app: restaurant, version: v1}",
        );
        text += CANARY_SERVICES;
    }
    let resources = skein_model::parse_documents(&text, "demo resources")?;
    control.registry.apply(resources).await?;
    println!(
        "  control   HTTP API http://{}  proxies connect to {}",
        control.http, control.grpc
    );
    println!(
        "            try: skein get workloads --server {} --data-dir {}",
        control.http,
        dir.join("control").display()
    );
    print_dashboard(&control, dir).await?;

    let mut proxies = Vec::new();
    let grpc = control.grpc;
    let result = async {
        for w in workloads {
            let config = proxy_config(w, ip, canary);
            // One join token per workload, short-lived: it is used once, at start.
            let (token, _) = control
                .pki
                .create_token("default", w.service, Duration::from_secs(600), 1)
                .await?;
            proxies.push(spawn_proxy(dir, w, &config, grpc, &token.reveal()).await?);
        }
        println!(
            "  identity  mesh CA for {}; each proxy joined with its own token and holds a certificate (mutual TLS between proxies)",
            control.pki.trust_domain()
        );
        println!(
            "  authz     deny by default; allowed: traffic → frontend (GET), frontend → restaurant (GET /menu/*), frontend → ledger"
        );
        println!(
            "            the traffic generator also calls restaurant directly every {} s, which no policy allows: the mesh denies it (403)",
            PROBE_EVERY.as_secs()
        );
        println!(
            "            ledger-audit dry-runs cutting frontend off the ledger: its connections pass, counted as audited (would-be denials)"
        );
        println!(
            "            try: skein policy check --from traffic --to restaurant --server {} --data-dir {}",
            control.http,
            dir.join("control").display()
        );
        for w in workloads {
            wait_ready(listen(w, ADMIN_PORT)).await?;
            println!(
                "  proxy     {:<10} inbound {}  admin http://{}/metrics",
                w.name,
                listen(w, INBOUND_PORT),
                listen(w, ADMIN_PORT)
            );
        }
        println!("  logs      {}", dir.display());
        let target = format!(
            "--server {} --data-dir {}",
            control.http,
            dir.join("control").display()
        );
        println!(
            "  signals   every proxy reports its golden signals to the control plane every {}",
            if canary { "1 s" } else { "2 s" }
        );
        println!("            try: skein stat services {target}");
        println!("                 skein stat workloads {target}");
        println!("                 skein edges {target}");
        println!(
            "  traces    10 % of requests traced end to end (the frontend passes traceparent on), every failure recorded; OTLP receiver on {}",
            control.otlp.map_or("none".to_string(), |a| a.to_string())
        );
        println!("            try: skein trace list {target}");
        println!("                 skein trace show TRACE_ID {target}");
        if canary {
            println!("  canary    restaurant v2 then v3 released as Canaries: steps 20% → 50% → promote, a check every 3 s");
            println!("            try: skein canary status restaurant --watch {target}");
        }
        println!(
            "  traffic   {rps} req/s to frontend for {}; press Ctrl-C to stop\n",
            skein_model::duration::format(duration)
        );
        let traffic = generate(
            listen(&TRAFFIC, UPSTREAM_A),
            listen(&TRAFFIC, UPSTREAM_B),
            duration,
            rps,
            !canary,
            |w| listen(w, ADMIN_PORT),
        );
        if canary {
            let releases = releases(&control);
            tokio::pin!(releases);
            tokio::pin!(traffic);
            tokio::select! {
                r = &mut traffic => r,
                r = &mut releases => {
                    r?;
                    println!("\n  both releases done; traffic goes on until --duration or Ctrl-C");
                    traffic.await
                }
            }
        } else {
            traffic.await
        }
    }
    .await;
    println!("\nskein demo: stopping proxies (SIGTERM, drain) and apps");
    for child in &mut proxies {
        stop(child).await;
    }
    apps.abort_all();
    control.shutdown().await;
    result
}

/// The demo's control plane, in this process: embedded store in `dir/control`, HTTP API
/// on `ip:9990`, OTLP on `ip:4317`, the proxy API on `grpc`.
pub(crate) async fn start_control(
    dir: &Path,
    ip: IpAddr,
    grpc: SocketAddr,
) -> anyhow::Result<RunningControl> {
    RunningControl::start(ControlOptions {
        http: SocketAddr::new(ip, 9990),
        grpc,
        workload_grace: Duration::from_secs(10),
        otlp: Some(SocketAddr::new(ip, 4317)),
        ..ControlOptions::embedded(dir.join("control"), ip, "demo")
    })
    .await
    .context("cannot start the demo's control plane")
}

/// The YAML config for `w`'s proxy: its workload, listeners and upstream listeners.
/// Destinations come from the control plane.
fn proxy_config(w: &Workload, ip: &dyn Fn(&Workload) -> IpAddr, canary: bool) -> String {
    let at = |w: &Workload, port: u16| format!("'{}:{port}'", ip(w));
    let (app_port, app_proto) = if w.name == "ledger" {
        (LEDGER_PORT, "tcp")
    } else {
        (APP_PORT, "detect")
    };
    let labels = w
        .version
        .map_or(String::new(), |v| format!(", labels: {{version: {v}}}"));
    // A canary's checks want its traffic counted soon: summaries every second.
    let summary = if canary { "1s" } else { "2s" };
    let mut yaml = format!(
        "workload: {{name: {name}-1, service: {service}{labels}}}\n\
         inbound: {{listen: {inbound}, appHost: '{host}', ports: [{{port: {app_port}, protocol: {app_proto}}}]}}\n\
         admin: {{listen: {admin}}}\n\
         drainTimeout: 5s\n\
         telemetry: {{summaryInterval: {summary}}}\n",
        name = w.name,
        service = w.service,
        inbound = at(w, INBOUND_PORT),
        host = ip(w),
        admin = at(w, ADMIN_PORT),
    );
    match w.name {
        "traffic" => {
            yaml += &format!(
                "outbound:\n  upstreams:\n  - {{listen: {}, service: frontend, port: {APP_PORT}}}\n  - {{listen: {}, service: restaurant, port: {APP_PORT}}}\n",
                at(w, UPSTREAM_A),
                at(w, UPSTREAM_B)
            );
        }
        "frontend" => {
            yaml += &format!(
                "outbound:\n  upstreams:\n  - {{listen: {}, service: restaurant, port: {APP_PORT}}}\n  - {{listen: {}, service: ledger, port: {LEDGER_PORT}}}\n",
                at(w, UPSTREAM_A),
                at(w, UPSTREAM_B)
            );
        }
        _ => {}
    }
    yaml
}

/// The mesh's resources, applied to the demo's control plane: deny by default, one
/// AuthorizationPolicy per pathway the sample application uses, and an audit policy that
/// dry-runs taking one away (what the dashboard's audited counts show).
pub(crate) const RESOURCES: &str = "
apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {defaultPolicy: deny, tracing: {samplingPercent: 10}}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend}
spec: {targetRef: {name: frontend}, rules: [{from: [{service: traffic}], to: [{methods: [GET]}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: restaurant}
spec: {targetRef: {name: restaurant}, rules: [{from: [{service: frontend}], to: [{methods: [GET], paths: ['/menu/*']}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger}
spec: {targetRef: {name: ledger}, rules: [{from: [{service: frontend}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger-audit}
spec: {targetRef: {name: ledger}, action: audit, rules: [{from: [{service: frontend}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: frontend}
spec: {selector: {app: frontend}, ports: [{name: http, port: 8080}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant}
spec: {selector: {app: restaurant}, ports: [{name: http, port: 8080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: ledger}
spec: {selector: {app: ledger}, ports: [{name: ledger, port: 9000, protocol: tcp}]}
";

/// With `--canary`: one Service per version of the restaurant (the workloads all run under
/// the `restaurant` account, told apart by their `version` label), each open to the
/// frontend as the restaurant is.
const CANARY_SERVICES: &str = "
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant-v1}
spec: {selector: {app: restaurant, version: v1}, serviceAccounts: [restaurant], ports: [{name: http, port: 8080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant-v2}
spec: {selector: {app: restaurant, version: v2}, serviceAccounts: [restaurant], ports: [{name: http, port: 8080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant-v3}
spec: {selector: {app: restaurant, version: v3}, serviceAccounts: [restaurant], ports: [{name: http, port: 8080, protocol: http}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: restaurant-v2}
spec: {targetRef: {name: restaurant-v2}, rules: [{from: [{service: frontend}], to: [{methods: [GET], paths: ['/menu/*']}]}]}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: restaurant-v3}
spec: {targetRef: {name: restaurant-v3}, rules: [{from: [{service: frontend}], to: [{methods: [GET], paths: ['/menu/*']}]}]}
";

/// The Canary releasing `canary` over `stable`.
fn canary_release(stable: &str, canary: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1
kind: Canary
metadata: {{name: restaurant}}
spec:
  targetRef: {{name: restaurant, port: {APP_PORT}}}
  stable: {stable}
  canary: {canary}
  analysis: {{interval: 3s, threshold: 2, stepWeights: [20, 50], minRequests: 5,
             metrics: [{{name: request-success-rate, thresholdRange: {{min: 99}}}}, {{name: request-duration, thresholdRange: {{max: 500}}}}]}}
"
    )
}

/// Releases v2 (promoted step by step), then v3 (rolled back), printing every step.
async fn releases(control: &RunningControl) -> anyhow::Result<()> {
    use skein_model::resource::CanaryPhase;
    // Let v1's traffic flow first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (stable, canary, expect) in [
        ("restaurant-v1", "restaurant-v2", "promoted"),
        ("restaurant-v2", "restaurant-v3", "rolled back"),
    ] {
        println!("\n  canary    releasing {canary} over {stable} (expect: {expect})");
        let docs = skein_model::parse_documents(&canary_release(stable, canary), "demo canary")?;
        control.registry.apply(docs).await?;
        let phase = follow_canary(control).await?;
        let outcome = match phase {
            CanaryPhase::Succeeded => {
                format!("{canary} promoted: it serves all of restaurant's traffic")
            }
            _ => format!("{canary} rolled back: {stable} serves all of restaurant's traffic"),
        };
        println!("  canary    {outcome}");
    }
    Ok(())
}

/// Prints each new event of the restaurant's Canary until its rollout ends (at most 2
/// minutes); returns the phase it ended in.
async fn follow_canary(
    control: &RunningControl,
) -> anyhow::Result<skein_model::resource::CanaryPhase> {
    use skein_model::resource::{Kind, Resource, ResourceKey};
    let key = ResourceKey::new(Kind::Canary, "default", "restaurant");
    let generation = match control.registry.get(&key) {
        Some(r) => r.meta().generation,
        None => bail!("the demo's Canary is gone"),
    };
    let mut shown = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let Some(Resource::Canary(c)) = control.registry.get(&key) else {
            bail!("the demo's Canary is gone");
        };
        let status = c.status.unwrap_or_default();
        if status.observed_generation == generation {
            let start = status
                .events
                .iter()
                .rposition(|e| {
                    e.message == "rollout started" || e.message.contains("analysis restarts")
                })
                .unwrap_or(0);
            let new = &status.events[start.max(shown)..];
            for e in new {
                let filled = (e.weight.min(100) as usize * 20).div_ceil(100);
                println!(
                    "  canary    [{}{}] {:>3}%  {}",
                    "#".repeat(filled),
                    "-".repeat(20 - filled),
                    e.weight,
                    e.message
                );
            }
            shown = start.max(shown) + new.len();
            if status.phase.is_final() && shown > start {
                return Ok(status.phase);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the rollout did not finish within 2 minutes: {}",
                status.message
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts `skein proxy` for `w` as a child process that dies with the demo.
async fn spawn_proxy(
    dir: &Path,
    w: &Workload,
    config: &str,
    control: SocketAddr,
    join_token: &str,
) -> anyhow::Result<Child> {
    let config_path = dir.join(format!("{}.yaml", w.name));
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join(format!("{}.log", w.name)))?;
    let exe = std::env::current_exe().context("cannot find the skein binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("proxy")
        .arg("--config")
        .arg(&config_path)
        .arg("--control")
        .arg(control.to_string())
        // In the environment, not argv: `ps` shows arguments to every user.
        .env("SKEIN_JOIN_TOKEN", join_token)
        .env("SKEIN_LOG", "info")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it makes the kernel stop the proxy if the demo
    // itself is killed, so no process outlives it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start the {} proxy", w.name))
}

/// SIGTERM, then wait for the drain; SIGKILL if it takes too long.
pub(crate) async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(8), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(body) = admin_get(admin, "/ready").await {
            if body.contains("ready") && !body.contains("not ready") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("proxy with admin {admin} did not become ready in 10s; see its log")
}

/// A plain GET on an admin listener (HTTP/1.0, so the server closes after the response).
pub(crate) async fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text)).await??;
    Ok(text)
}

/// Requests to the frontend at a fixed rate, at most four seconds' worth outstanding,
/// counted as answered (`200`) or failed. With a probe, every [`PROBE_EVERY`] one more
/// request goes straight to the restaurant, which no policy lets the traffic generator
/// call: the mesh denies it (`403`), and the dashboard's map draws the pair denied.
pub(crate) struct Load {
    pool: Arc<H1Pool>,
    target: SocketAddr,
    rps: u32,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    inflight: tokio::task::JoinSet<()>,
    /// Where the restaurant is reached from the traffic generator, if it is probed.
    probe: Option<SocketAddr>,
    /// Probes the mesh denied.
    denied: Arc<AtomicU64>,
    /// Requests fired so far.
    fired: u64,
}

/// How often the traffic generator tries the restaurant it may not call.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(2);

impl Load {
    /// Load on the frontend at `target`.
    pub(crate) fn new(target: SocketAddr, rps: u32) -> Load {
        Load {
            pool: Arc::new(H1Pool::new(Arc::new(TcpConnector::default()))),
            target,
            rps: rps.max(1),
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            inflight: tokio::task::JoinSet::new(),
            probe: None,
            denied: Arc::new(AtomicU64::new(0)),
            fired: 0,
        }
    }

    /// Also tries the restaurant at `restaurant` every [`PROBE_EVERY`]; an answer other
    /// than the mesh's `403` counts as failed (the policy did not hold).
    pub(crate) fn probing(mut self, restaurant: SocketAddr) -> Load {
        self.probe = Some(restaurant);
        self
    }

    /// How often [`Load::fire`] is to be called.
    pub(crate) fn every(&self) -> Duration {
        Duration::from_secs(1) / self.rps
    }

    /// Sends one request, unless too many are outstanding.
    pub(crate) fn fire(&mut self) {
        while self.inflight.try_join_next().is_some() {}
        if self.inflight.len() >= (self.rps as usize * 4).max(8) {
            return;
        }
        let every = (u64::from(self.rps) * PROBE_EVERY.as_secs()).max(1);
        if let Some(restaurant) = self.probe.filter(|_| self.fired.is_multiple_of(every)) {
            let pool = self.pool.clone();
            let (denied, failed) = (self.denied.clone(), self.failed.clone());
            self.inflight.spawn(async move {
                let counter = match get(&pool, restaurant, "restaurant:8080", "/menu", &[]).await {
                    Ok(resp) if resp.status() == StatusCode::FORBIDDEN => denied,
                    _ => failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
        self.fired += 1;
        let (pool, target) = (self.pool.clone(), self.target);
        let (ok, failed) = (self.ok.clone(), self.failed.clone());
        self.inflight.spawn(async move {
            let counter = match get(&pool, target, "frontend:8080", "/", &[]).await {
                Ok(resp) if resp.status() == StatusCode::OK => ok,
                _ => failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// `traffic → restaurant denied N times, as policy says`, if probing.
    pub(crate) fn denials(&self) -> Option<String> {
        self.probe.map(|_| {
            format!(
                "traffic → restaurant (no policy allows it) denied {} times",
                self.denied.load(Ordering::Relaxed)
            )
        })
    }

    /// `ok=N failed=M` so far.
    pub(crate) fn counts(&self) -> String {
        format!(
            "ok={} failed={}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.inflight.abort_all();
    }
}

/// What the proxies themselves counted, from their `/metrics`: ` frontend=N restaurant=N
/// ledger(tcp conns)=N` (0 for a proxy that does not answer).
pub(crate) async fn proxy_counts(admin: impl Fn(&str) -> Option<SocketAddr>) -> String {
    let metrics = async |name: &str| match admin(name) {
        Some(a) => admin_get(a, "/metrics").await.unwrap_or_default(),
        None => String::new(),
    };
    let mut line = String::new();
    for name in ["frontend", "restaurant"] {
        let text = metrics(name).await;
        let n = sum_samples(&text, "skein_requests_total", &["direction=\"inbound\""]);
        line += &format!(" {name}={n}");
    }
    let text = metrics("ledger").await;
    let inbound_tcp = ["direction=\"inbound\"", "protocol=\"tcp\""];
    let n = sum_samples(&text, "skein_tcp_connections_total", &inbound_tcp);
    line + &format!(" ledger(tcp conns)={n}")
}

/// Sends `rps` requests per second to `target` until `duration` passes or Ctrl-C, printing
/// counts every two seconds.
async fn generate(
    target: SocketAddr,
    probe: SocketAddr,
    duration: Duration,
    rps: u32,
    report_counts: bool,
    admin: impl Fn(&Workload) -> SocketAddr,
) -> anyhow::Result<()> {
    let mut load = Load::new(target, rps).probing(probe);
    let started = Instant::now();
    let mut tick = tokio::time::interval(load.every());
    let mut report = tokio::time::interval(Duration::from_secs(2));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let by_name = |name: &str| {
        [&FRONTEND, &RESTAURANT, &LEDGER]
            .into_iter()
            .find(|w| w.name == name)
            .map(&admin)
    };
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep_until((started + duration).into()) => break,
            _ = tick.tick() => load.fire(),
            _ = report.tick(), if report_counts => {
                println!(
                    "  [{:>4}s] traffic sent {}  | inbound requests seen by proxies:{}",
                    started.elapsed().as_secs(),
                    load.counts(),
                    proxy_counts(by_name).await
                );
            }
        }
    }
    println!("  total: {}", load.counts());
    if let Some(denials) = load.denials() {
        println!("  denied: {denials}");
    }
    Ok(())
}

pub(crate) async fn get(
    pool: &H1Pool,
    addr: SocketAddr,
    host: &str,
    path: &str,
    copied: &[(http::HeaderName, http::HeaderValue)],
) -> anyhow::Result<Response<Bytes>> {
    let mut req = Request::get(path)
        .header(http::header::HOST, host)
        .body(boxed(http_body_util::Empty::<Bytes>::new()))?;
    for (name, value) in copied {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), pool.send(addr, req)).await??;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Serves HTTP/1.1 with `handler` on every connection.
pub(crate) async fn serve_http<F, Fut>(listener: TcpListener, handler: Arc<F>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Response<Body>>> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler(req);
                async move {
                    Ok::<_, std::convert::Infallible>(fut.await.unwrap_or_else(|e| {
                        let mut r = Response::new(boxed(Full::new(Bytes::from(format!("{e}\n")))));
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        r
                    }))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) fn menu() -> Response<Body> {
    Response::new(boxed(Full::new(Bytes::from_static(
        b"{\"menu\": [\"soup\", \"bread\", \"pie\"]}",
    ))))
}

/// The frontend calls the restaurant over HTTP and the ledger over TCP for every request,
/// passing its request's trace headers on.
pub(crate) async fn frontend_handler(
    pool: Arc<H1Pool>,
    (restaurant, ledger): (SocketAddr, SocketAddr),
    headers: http::HeaderMap,
) -> anyhow::Result<Response<Body>> {
    // What an application copies so that its trace and `skein why` follow the request
    // (docs/telemetry.md).
    let passed_on = skein_proxy::trace::HEADERS
        .into_iter()
        .chain([skein_proxy::http::headers::REQUEST_ID]);
    let copied: Vec<_> = passed_on
        .filter_map(|name| {
            let value = headers.get(&name)?.clone();
            Some((name, value))
        })
        .collect();
    let menu = get(&pool, restaurant, "restaurant:8080", "/menu", &copied).await?;
    if menu.status() != StatusCode::OK {
        bail!("restaurant answered {}", menu.status());
    }
    let mut conn = TcpStream::connect(ledger).await?;
    conn.write_all(b"record visit\n").await?;
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).await?;
    let body = format!(
        "frontend: menu={} ledger={}",
        String::from_utf8_lossy(menu.body()),
        line.trim()
    );
    Ok(Response::new(boxed(Full::new(Bytes::from(body)))))
}

/// The ledger: a line-oriented TCP service that acknowledges each line.
pub(crate) async fn serve_ledger(listener: TcpListener) {
    let entries = Arc::new(AtomicU64::new(0));
    while let Ok((stream, _)) = listener.accept().await {
        let entries = entries.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                let n = entries.fetch_add(1, Ordering::Relaxed) + 1;
                if write
                    .write_all(format!("entry {n} recorded\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// Prints where the dashboard is, with a read-only login made for the demo (a day long)
/// and where the admin token is; `dir` is the demo's directory.
pub(crate) async fn print_dashboard(
    control: &skein_control::server::RunningControl,
    dir: &Path,
) -> anyhow::Result<()> {
    let (viewer, _) = control
        .dashboard_tokens
        .create(
            Duration::from_secs(24 * 3600),
            skein_control::ui::now_unix(),
        )
        .await?;
    println!(
        "  dashboard http://{}/ui/  read-only login: {viewer}",
        control.http
    );
    println!(
        "            (the admin token, for the buttons that change things: {})",
        dir.join("control").join("admin.token").display()
    );
    Ok(())
}
