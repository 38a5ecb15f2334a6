//! How fast the control plane's API answers what the dashboard's pages ask, for a mesh of
//! 200 services: a `skein control` in this process (embedded store, HTTP API on
//! 127.0.0.177) whose central view holds a full hour of what the proxies of such a mesh
//! report, timed over a real socket with the admin token.
//!
//! The mesh: [`SERVICES`] Services, each with two workloads whose proxies sent a summary
//! every 10 s for the last hour (so every window, up to the hour held, is full): requests
//! from three callers each (one failing one request in fifty), and for one service in ten
//! opaque TCP connections; ten Canaries. That is what the control plane's central view
//! holds for such a mesh whatever its traffic, since it keeps one series per label set and
//! slot, not per request.
//!
//! Each page's requests (the overview's two, the map over a minute and an hour, the
//! canaries list, the session) are sent one after another on one keep-alive connection,
//! [`ROUNDS`] times each (a quick run: [`QUICK_ROUNDS`]), in turns, so a change of the
//! machine's speed touches them alike; the figure is the time from sending the request to
//! the last byte of the answer. The goal is under 100 ms for each.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::Serialize;
use skein_api::v1 as pb;
use skein_control::server::{ControlOptions, RunningControl};
use skein_control::telemetry::Reporter;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Services in the mesh.
pub const SERVICES: usize = 200;
/// Requests of each kind in a full run.
const ROUNDS: usize = 200;
/// Requests of each kind in a quick run: enough to show the harness works (CI's smoke
/// run is a debug build, where an hour-wide map takes most of a second).
const QUICK_ROUNDS: usize = 5;
/// Where the control plane listens.
const IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 177);
/// The goal for each answer.
pub const GOAL_MS: f64 = 100.0;

/// What the page asks, and what it was measured at.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// The page.
    pub page: &'static str,
    /// The API path.
    pub path: &'static str,
    /// The answer's body size.
    pub bytes: usize,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardApi {
    /// Services in the mesh.
    pub services: usize,
    /// Workloads reporting.
    pub workloads: usize,
    /// Series-slots the central view held (its size).
    pub series_slots: usize,
    /// Requests of each kind timed.
    pub rounds: usize,
    /// One per request a page makes.
    pub requests: Vec<Request>,
}

/// Every request the pages make: page, path.
const PAGES: &[(&str, &str)] = &[
    ("every page", "/api/v1/session"),
    ("overview", "/api/v1/stat/services?window=1m"),
    ("overview", "/api/v1/series/services?window=1h"),
    ("map", "/api/v1/map?window=1m"),
    ("map (last hour)", "/api/v1/map?window=1h"),
    ("canaries", "/api/v1/resources/canaries"),
];

fn service(i: usize) -> String {
    format!("svc-{i:03}")
}

/// The mesh's Services and Canaries, as YAML.
fn resources() -> String {
    let mut y = String::new();
    for i in 0..SERVICES {
        let _ = write!(
            y,
            "---\napiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {s}}}\nspec: {{selector: {{app: {s}}}, ports: [{{port: 8080, protocol: http}}]}}\n",
            s = service(i)
        );
    }
    for i in 0..10 {
        let s = service(i * 20);
        let _ = write!(
            y,
            "---\napiVersion: skein.dev/v1alpha1\nkind: Canary\nmetadata: {{name: {s}}}\nspec:\n  targetRef: {{name: {s}, port: 8080}}\n  stable: {stable}\n  canary: {canary}\n  analysis: {{interval: 1m, stepWeights: [10, 50]}}\n",
            stable = service(i * 20 + 1),
            canary = service(i * 20 + 2),
        );
    }
    y
}

/// `n` requests to `dst` from `src` answered `status`, each about `us` microseconds.
fn requests(src: &str, dst: &str, status: u32, n: u64, us: u64) -> pb::RequestStats {
    let account = |name: &str| {
        Some(pb::Account {
            namespace: "default".into(),
            name: name.into(),
        })
    };
    pb::RequestStats {
        inbound: true,
        protocol: "http1".into(),
        tls: true,
        src: account(src),
        dst: account(dst),
        status_code: status,
        count: n,
        latency: Some(pb::Histogram {
            buckets: vec![skein_model::latency::bucket_of(us) as u32],
            counts: vec![n],
            sum_us: n * us,
        }),
        ..Default::default()
    }
}

/// Fills `cp`'s central view with an hour of summaries, 10 s apart, ending now.
fn fill(cp: &RunningControl) -> anyhow::Result<usize> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let slots: u64 = 360;
    let mut workloads = 0;
    for i in 0..SERVICES {
        let dst = service(i);
        let callers = [
            service((i + 1) % SERVICES),
            service((i + 7) % SERVICES),
            service((i + 31) % SERVICES),
        ];
        for replica in 1..=2 {
            workloads += 1;
            let from = Reporter {
                namespace: "default".into(),
                workload: format!("{dst}-{replica}"),
                account: dst.clone(),
            };
            for slot in 0..slots {
                let mut series = vec![
                    requests(&callers[0], &dst, 200, 97, 900),
                    requests(&callers[1], &dst, 200, 20, 2_500),
                    requests(&callers[2], &dst, 200, 49, 1_200),
                    requests(&callers[2], &dst, 503, 1, 30_000),
                ];
                series.rotate_left(slot as usize % 4);
                let mut tcp = Vec::new();
                if i % 10 == 0 {
                    tcp.push(pb::TcpStats {
                        inbound: true,
                        tls: true,
                        src: series[0].src.clone(),
                        dst: series[0].dst.clone(),
                        opened: 4,
                        closed: 4,
                        sent_bytes: 4_000,
                        received_bytes: 16_000,
                        duration: None,
                    });
                }
                let summary = pb::Summary {
                    sequence: slot + 1,
                    bucket_layout: 1,
                    interval_ms: 10_000,
                    requests: series,
                    tcp,
                    ..Default::default()
                };
                let at = now - (slots - 1 - slot) as i64 * 10;
                cp.central
                    .ingest(&from, &summary, at)
                    .map_err(|e| anyhow::anyhow!("the central view refused a summary: {e}"))?;
            }
        }
    }
    Ok(workloads)
}

/// `GET path` on `sender` with `token`: the body's size, or why not.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<usize> {
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body.len())
}

/// Runs the scenario: `quick` times each request [`QUICK_ROUNDS`] times.
pub async fn run(quick: bool) -> anyhow::Result<DashboardApi> {
    let dir = std::env::temp_dir().join(format!("skein-bench-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cp = RunningControl::start(ControlOptions::embedded(&dir, IpAddr::V4(IP), "bench"))
        .await
        .context("cannot start the control plane")?;
    let result = measure(&cp, quick).await;
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(cp: &RunningControl, quick: bool) -> anyhow::Result<DashboardApi> {
    let docs = skein_model::parse_documents(&resources(), "the bench's mesh")?;
    cp.registry.apply(docs).await?;
    let started = Instant::now();
    let workloads = fill(cp)?;
    let (_, series_slots, _) = cp.central.held();
    eprintln!(
        "skein-bench: dashboard API: {SERVICES} services, {workloads} workloads, an hour of summaries ({series_slots} series-slots) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stream = tokio::net::TcpStream::connect(cp.http).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let host = cp.http.to_string();
    let rounds = if quick { QUICK_ROUNDS } else { ROUNDS };
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); PAGES.len()];
    let mut sizes = vec![0; PAGES.len()];
    // One unmeasured turn first: the first answers allocate what later ones reuse.
    for (_, path) in PAGES {
        get(&mut sender, &host, path, &cp.token).await?;
    }
    for _ in 0..rounds {
        for (k, (_, path)) in PAGES.iter().enumerate() {
            let t = Instant::now();
            sizes[k] = get(&mut sender, &host, path, &cp.token).await?;
            times[k].push(t.elapsed());
        }
    }
    driver.abort();
    let requests = PAGES
        .iter()
        .zip(times.iter_mut())
        .zip(sizes)
        .map(|(((page, path), t), bytes)| {
            t.sort();
            let at = |q: f64| {
                let i = ((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1;
                t[i].as_secs_f64() * 1e3
            };
            Request {
                page,
                path,
                bytes,
                p50_ms: at(0.5),
                p99_ms: at(0.99),
                max_ms: at(1.0),
            }
        })
        .collect();
    Ok(DashboardApi {
        services: SERVICES,
        workloads,
        series_slots,
        rounds,
        requests,
    })
}

/// The report's section.
pub fn markdown(o: &mut String, d: &DashboardApi) {
    let _ = writeln!(
        o,
        "### The dashboard's API for a mesh of {} services (in process, over loopback)\n\n\
         A control plane whose central view holds a full hour of what {} workloads' proxies \
         report ({} series-slots), asked what each dashboard page asks, {} times each in \
         turns on one keep-alive connection with the admin token; time to the answer's last \
         byte. Goal: under {GOAL_MS:.0} ms each.\n",
        d.services,
        d.workloads,
        crate::report::thousands(d.series_slots as f64),
        d.rounds
    );
    let _ = writeln!(
        o,
        "| page | request | answer bytes | p50 ms | p99 ms | max ms | under {GOAL_MS:.0} ms |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---|");
    for r in &d.requests {
        let _ = writeln!(
            o,
            "| {} | `{}` | {} | {:.2} | {:.2} | {:.2} | {} |",
            r.page,
            r.path,
            crate::report::thousands(r.bytes as f64),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            if r.p99_ms < GOAL_MS { "yes" } else { "no" }
        );
    }
    o.push('\n');
}
