//! `skein-bench memory`: whether a proxy's memory comes back after the mesh it lives in
//! grows and shrinks. One `skein control` (embedded store) with 10 Services, and one real
//! `skein proxy` whose application then calls every Service of a mesh grown to
//! `--services`, so that it holds them all; its admin `/config` is read once; then the
//! mesh shrinks back to 10 Services, and the proxy lets go of the rest. Its RSS and
//! private memory are read at each stage (after 12 s of quiet) and compared with a fresh
//! proxy's, started on the shrunk mesh; then again after both made the same 1,200
//! requests, which replace the bounded records of recent requests each keeps. Each
//! reading includes the allocator's own account (`skein_memory_heap_*_bytes`).
//!
//! Both proxies let idle metric series go after [`IDLE_SERIES`] (`telemetry.idleSeries`,
//! 10 minutes by default), and the reading after the shrink waits until the proxy that
//! grew has let go of its series for the deleted Services: the bench compresses the
//! minutes a real proxy would wait.
//!
//! `--proxy-env KEY=VALUE` sets the proxies' environment, e.g. `LD_PRELOAD` of another
//! allocator, or glibc's `GLIBC_TUNABLES`: how the allocator choice in
//! docs/ARCHITECTURE.md was measured. Every wait has a deadline; every request goes to
//! loopback (the control plane on 127.0.0.181, the proxies on 127.0.0.186–187).

use crate::scale::{
    free_port, http_get, metric, resources, service_docs, until, ControlPlane, Probe, TARGET,
};
use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `skein-bench memory` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Services the mesh grows to.
    pub services: usize,
    /// The `skein` binary.
    pub skein: PathBuf,
    /// Added to the proxies' environment.
    pub env: Vec<(String, String)>,
}

/// Services the mesh starts and ends with, besides the target.
const SMALL: usize = 10;
/// How long each stage rests before memory is read: allocators hand freed memory back
/// over seconds (jemalloc's default decay is 10 s), and what counts is where it settles.
const QUIET: Duration = Duration::from_secs(12);
/// Requests both proxies make at the end: more than the 1,024 request records a proxy
/// keeps (`skein_proxy::decisions::CAPACITY`).
const ROLL: usize = 1_200;
const _: () = assert!(ROLL > skein_proxy::decisions::CAPACITY);
/// The proxies' `telemetry.idleSeries`: longer than the growth takes, so the proxy holds
/// every series while it holds every Service.
const IDLE_SERIES: Duration = Duration::from_secs(60);
const CONTROL_IP: [u8; 4] = [127, 0, 0, 181];
const LONG_LIVED_IP: [u8; 4] = [127, 0, 0, 186];
const FRESH_IP: [u8; 4] = [127, 0, 0, 187];

/// A memory reading, as JSON.
fn reading(probe: &Probe) -> anyhow::Result<serde_json::Value> {
    let (rss, private) = probe.memory()?;
    let mib = |v: f64| (v * 10.0).round() / 10.0;
    // One scrape: the gauges are read together.
    let text = probe.metrics().unwrap_or_default();
    let heap = |kind: &str| {
        metric(&text, &format!("skein_memory_heap_{kind}_bytes"))
            .map(|b| mib(b / (1024.0 * 1024.0)))
    };
    Ok(serde_json::json!({
        "rss_mib": mib(rss),
        "private_mib": mib(private),
        "heap_allocated_mib": heap("allocated"),
        "heap_active_mib": heap("active"),
        "heap_resident_mib": heap("resident"),
        "destinations_held": metric(&text, "skein_config_destinations").unwrap_or(-1.0),
    }))
}

/// Deletes Service `name` in `default` through the admin API.
fn delete_service(http: SocketAddr, token: &str, name: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE /api/v1/resources/service/{name}?namespace=default HTTP/1.1\r\nHost: {http}\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 2") {
        bail!(
            "deleting service {name}: {}",
            out.lines().next().unwrap_or("no answer")
        );
    }
    Ok(())
}

/// Waits at most `within` for `done`, else fails saying `what`.
async fn wait(within: Duration, what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    until(within, done)
        .await
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("{what} did not happen within {within:?}"))
}

/// Runs the measurement; prints progress and returns the figures as JSON.
pub async fn run(opts: Options) -> anyhow::Result<serde_json::Value> {
    if opts.services <= SMALL {
        bail!("--services must be more than {SMALL} (the mesh grows from {SMALL})");
    }
    let dir = std::env::temp_dir().join(format!("skein-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ip = IpAddr::from(CONTROL_IP);
    let mut cp = ControlPlane::spawn(&opts.skein, &dir, free_port(ip)?, free_port(ip)?, &[])?;
    cp.wait_ready().await?;
    eprintln!(
        "memory: skein control on {} (data in {}); {SMALL} Services",
        cp.http,
        dir.display()
    );
    cp.apply(&resources(SMALL))?;
    let quiet = || tokio::time::sleep(QUIET);

    let extra = format!("telemetry: {{idleSeries: {}s}}\n", IDLE_SERIES.as_secs());
    let long = Probe::start(&cp, "probe-1", LONG_LIVED_IP.into(), &opts.env, &extra).await?;
    long.call(TARGET);
    quiet().await;
    let fresh = reading(&long)?;
    eprintln!("memory: a fresh proxy that called one Service: {fresh}");

    eprintln!("memory: growing the mesh to {} Services", opts.services);
    cp.apply(&service_docs(SMALL..opts.services))?;
    let started = Instant::now();
    for i in 0..opts.services {
        long.call(&format!("svc-{i}"));
        if (i + 1) % 1000 == 0 {
            eprintln!("memory: the proxy called {} Services", i + 1);
        }
    }
    let all = (opts.services + 1) as f64;
    wait(Duration::from_secs(30), "holding every Service", || {
        long.held() >= all
    })
    .await?;
    let calls_s = started.elapsed().as_secs_f64();
    quiet().await;
    let grown = reading(&long)?;
    eprintln!(
        "memory: after calling all {} Services: {grown}",
        opts.services
    );

    let config = http_get(long.admin, "/config").context("GET /config")?;
    let config_bytes = config.len();
    quiet().await;
    let after_config = reading(&long)?;
    eprintln!("memory: after one GET /config ({config_bytes} bytes): {after_config}");

    eprintln!("memory: shrinking the mesh back to {SMALL} Services");
    let token = std::fs::read_to_string(dir.join("data").join("admin.token"))
        .context("reading the admin token")?;
    // Eight at a time: each delete waits until the control plane has published it.
    let doomed: Vec<usize> = (SMALL..opts.services).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = doomed
            .chunks(doomed.len().div_ceil(8))
            .map(|part| {
                s.spawn(|| {
                    part.iter().try_for_each(|i| {
                        delete_service(cp.http, token.trim(), &format!("svc-{i}"))
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a delete worker panicked"))
    })?;
    let small = (SMALL + 1) as f64;
    wait(
        Duration::from_secs(60),
        "letting go of deleted Services",
        || long.held() <= small,
    )
    .await?;
    let deleted_series = || {
        let text = long.metrics().unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("skein_requests_total{") && l.contains("dst_service=\"svc-"))
            .count()
    };
    // Once a second: scraping more often would be traffic of its own.
    let within = IDLE_SERIES * 2 + Duration::from_secs(30);
    let deadline = Instant::now() + within;
    while deleted_series() > 0 {
        if Instant::now() > deadline {
            bail!("the proxy kept the deleted Services' metric series past {within:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    quiet().await;
    let shrunk = reading(&long)?;
    // What it still keeps per Service it once called: its metric series.
    let metrics = http_get(long.admin, "/metrics").unwrap_or_default();
    let metrics_bytes = metrics.len();
    let metric_series = metrics.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!(
        "memory: after the mesh shrank: {shrunk}; /metrics {metrics_bytes} bytes, {metric_series} series"
    );

    let other = Probe::start(&cp, "probe-2", FRESH_IP.into(), &opts.env, &extra).await?;
    other.call(TARGET);
    quiet().await;
    let fresh_again = reading(&other)?;
    eprintln!("memory: a fresh proxy on the shrunk mesh: {fresh_again}");
    // What a proxy keeps of its recent past (the last 1,024 request records, spans) was
    // written while it held thousands of destinations, and pins pages among theirs. Both
    // proxies now serve the same traffic, enough to replace that past.
    for _ in 0..ROLL {
        long.call(TARGET);
        other.call(TARGET);
    }
    quiet().await;
    let (shrunk_rolled, fresh_rolled) = (reading(&long)?, reading(&other)?);
    eprintln!(
        "memory: after {ROLL} more requests each: the proxy that grew {shrunk_rolled}, the fresh one {fresh_rolled}"
    );
    drop(other);
    drop(long);
    cp.kill();
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        let (a, b) = (a[k].as_f64().unwrap_or(0.0), b[k].as_f64().unwrap_or(1.0));
        ((a / b) * 100.0).round() / 100.0
    };
    Ok(serde_json::json!({
        "services": opts.services,
        "env": opts.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "fresh": fresh,
        "grown": grown,
        "calls_s": (calls_s * 10.0).round() / 10.0,
        "config_bytes": config_bytes,
        "after_config": after_config,
        "shrunk": shrunk,
        "shrunk_metrics_bytes": metrics_bytes,
        "shrunk_metric_series": metric_series,
        "fresh_on_shrunk_mesh": fresh_again,
        "shrunk_over_fresh_rss": ratio(&shrunk, &fresh_again, "rss_mib"),
        "shrunk_over_fresh_private": ratio(&shrunk, &fresh_again, "private_mib"),
        "requests_after": ROLL,
        "shrunk_after_requests": shrunk_rolled,
        "fresh_after_requests": fresh_rolled,
        "after_requests_rss": ratio(&shrunk_rolled, &fresh_rolled, "rss_mib"),
        "after_requests_private": ratio(&shrunk_rolled, &fresh_rolled, "private_mib"),
    }))
}
