//! The scenarios and the interleaved schedule that runs them.
//!
//! For every scenario and repetition each setup is measured in turn, the order rotating
//! per scenario and repetition, so slow drift of the machine (thermal, other tenants)
//! lands on all setups alike. Around every measurement the proxies' CPU time is read from
//! `/proc`, which gives CPU per request (HTTP scenarios) and per byte (TCP) per proxy.
//! Any failed request, tool error or dead process stops the run with the setup and the
//! scenario named.

use crate::handshake::{HandshakeReport, HandshakeTarget};
use crate::load::LoadReport;
use crate::procs::{usage, Usage};
use crate::setups::{Setup, Target};
use crate::tcp::BulkReport;
use crate::tools::{self, H2Report, WrkReport};
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How much to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `--quick`: one repetition of short measurements.
    pub quick: bool,
    /// Length of each measurement, seconds.
    pub secs: u64,
    /// Repetitions of every measurement (the report takes the median).
    pub repetitions: usize,
    /// Fixed request rates for the latency scenario.
    pub rates: Vec<u32>,
    /// Keep-alive connections the open-model generator opens up front (it may grow to 4×).
    pub load_connections: u32,
    /// Connections for the throughput and new-connection scenarios (wrk).
    pub wrk_connections: u32,
    /// HTTP/2 clients (connections) for h2load.
    pub h2_clients: u32,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_streams: u32,
    /// Workers opening mutual-TLS connections to the receiving proxy, one at a time each.
    pub handshake_workers: u32,
}

/// Seconds per measurement, instead of the plan's own (3 quick, 10 full).
pub const SECS_ENV: &str = "SKEIN_BENCH_SECS";

impl Plan {
    /// The quick plan (`--quick`, CI) or the full one. [`SECS_ENV`] sets how long each
    /// measurement runs (CI's smoke run, which measures nothing, takes 1 s).
    pub fn new(quick: bool) -> Plan {
        let secs = std::env::var(SECS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)
            .unwrap_or(if quick { 3 } else { 10 });
        Plan {
            quick,
            secs,
            repetitions: if quick { 1 } else { 2 },
            rates: if quick {
                vec![500, 1000]
            } else {
                vec![500, 1000, 2000]
            },
            load_connections: 16,
            wrk_connections: 64,
            h2_clients: 4,
            h2_streams: 32,
            handshake_workers: 16,
        }
    }

    /// Every scenario, in the order they run.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut s: Vec<Scenario> = self.rates.iter().map(|r| Scenario::Latency(*r)).collect();
        s.extend([
            Scenario::Throughput,
            Scenario::H2,
            Scenario::Grpc,
            Scenario::Tcp,
            Scenario::ConnRate,
            Scenario::Handshakes,
        ]);
        s
    }
}

/// One thing measured on every setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Open-model latency at a fixed rate (requests per second).
    Latency(u32),
    /// Maximum HTTP/1.1 throughput at fixed concurrency.
    Throughput,
    /// HTTP/2: many streams over few connections.
    H2,
    /// Unary gRPC calls, as many at once as in [`Scenario::H2`].
    Grpc,
    /// Opaque TCP bulk transfer.
    Tcp,
    /// New connections per second (no keep-alive).
    ConnRate,
    /// New mutual-TLS connections per second into the receiving proxy, as its peer
    /// would open them (see [`crate::handshake`]).
    Handshakes,
}

impl Scenario {
    /// For messages.
    pub fn title(self) -> String {
        match self {
            Scenario::Latency(r) => format!("latency at {r} RPS"),
            Scenario::Throughput => "maximum throughput".into(),
            Scenario::H2 => "HTTP/2 streams".into(),
            Scenario::Grpc => "gRPC unary calls".into(),
            Scenario::Tcp => "TCP bulk".into(),
            Scenario::ConnRate => "new-connection rate".into(),
            Scenario::Handshakes => "mTLS handshakes".into(),
        }
    }
}

/// Every raw figure measured on one setup.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupResults {
    /// Setup name.
    pub setup: String,
    /// How its hops talk.
    pub description: String,
    /// The setup its ratios and added latency are taken against (`None`: the first,
    /// direct); a baseline names itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Open-model runs per rate.
    pub latency: BTreeMap<u32, Vec<LoadReport>>,
    /// wrk keep-alive runs.
    pub throughput: Vec<WrkReport>,
    /// h2load runs.
    pub h2: Vec<H2Report>,
    /// Why there are no HTTP/2 figures, if so.
    pub h2_na: Option<String>,
    /// h2load runs of unary gRPC calls.
    pub grpc: Vec<H2Report>,
    /// Why there are no gRPC figures, if so.
    pub grpc_na: Option<String>,
    /// tcp-bulk runs.
    pub tcp: Vec<BulkReport>,
    /// Why there are no TCP figures, if so.
    pub tcp_na: Option<String>,
    /// wrk `Connection: close` runs.
    pub conn_rate: Vec<WrkReport>,
    /// New mutual-TLS connections into the receiving proxy.
    pub handshakes: Vec<HandshakeReport>,
    /// Why there are no handshake figures, if so.
    pub handshake_na: Option<String>,
    /// Resources of each proxy process.
    pub proxies: Vec<ProxyUsage>,
}

/// Resource use of one proxy (for nginx: master and worker together).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProxyUsage {
    /// e.g. `skein outbound proxy`.
    pub name: String,
    /// Resident memory once started, probed (a request of each kind, a second of TCP) and
    /// idle for a few seconds, before any load, KiB.
    pub idle_rss_kib: u64,
    /// The anonymous (private) part of the idle memory, KiB: what one more proxy of the
    /// same binary costs, the code pages being shared.
    pub idle_anon_kib: u64,
    /// Peak resident memory at the end of the run, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds spent during HTTP scenarios.
    pub http_cpu_secs: f64,
    /// Requests served during HTTP scenarios.
    pub http_requests: u64,
    /// CPU seconds spent during the TCP scenario.
    pub tcp_cpu_secs: f64,
    /// Bytes carried during the TCP scenario.
    pub tcp_bytes: u64,
    /// CPU seconds spent during the handshake scenario.
    pub handshake_cpu_secs: f64,
    /// Connections completed during the handshake scenario.
    pub handshakes: u64,
    /// CPU seconds over the whole run (including probes and idle time).
    pub total_cpu_secs: f64,
}

/// Paths of the measuring tools.
pub struct Tools {
    /// This binary.
    pub me: PathBuf,
    /// `wrk`.
    pub wrk: PathBuf,
    /// `h2load`.
    pub h2load: PathBuf,
    /// The request message h2load sends in gRPC calls (see [`crate::grpc`]).
    pub grpc_message: PathBuf,
}

impl SetupResults {
    /// Empty results for `setup`, with its proxies' idle memory read now.
    pub fn start(setup: &Setup) -> anyhow::Result<SetupResults> {
        let mut proxies = Vec::new();
        for p in &setup.proxies {
            let u = usage(p.pid()).with_context(|| format!("cannot read /proc for {}", p.name))?;
            proxies.push(ProxyUsage {
                name: p.name.clone(),
                idle_rss_kib: u.rss_kib,
                idle_anon_kib: u.anon_kib,
                ..ProxyUsage::default()
            });
        }
        Ok(SetupResults {
            setup: setup.kind.name().into(),
            description: setup.description.clone(),
            baseline: setup.kind.baseline().map(|k| k.name().to_string()),
            h2_na: setup.h2.clone().err(),
            grpc_na: setup.grpc.clone().err(),
            tcp_na: setup.tcp.clone().err(),
            handshake_na: setup.handshake.as_ref().err().cloned(),
            proxies,
            ..SetupResults::default()
        })
    }

    /// Reads peak memory and total CPU at the end of the run.
    pub fn finish(&mut self, setup: &Setup) -> anyhow::Result<()> {
        for (p, r) in setup.proxies.iter().zip(self.proxies.iter_mut()) {
            let u = usage(p.pid()).with_context(|| format!("cannot read /proc for {}", p.name))?;
            r.peak_rss_kib = u.peak_rss_kib;
            r.total_cpu_secs = u.cpu_secs;
        }
        Ok(())
    }
}

/// Runs every scenario on every setup, interleaved.
pub async fn run_all(
    tools: &Tools,
    plan: &Plan,
    setups: &mut [Setup],
    results: &mut [SetupResults],
) -> anyhow::Result<()> {
    let scenarios = plan.scenarios();
    let n = setups.len();
    let total = scenarios.len() * plan.repetitions * n;
    let mut done = 0;
    for (si, scenario) in scenarios.iter().enumerate() {
        for rep in 0..plan.repetitions {
            for k in 0..n {
                let i = (k + si + rep) % n;
                done += 1;
                let (setup, result) = (&mut setups[i], &mut results[i]);
                let name = setup.kind.name();
                let line = match measure(tools, plan, setup, result, *scenario).await {
                    Ok(line) => line,
                    // A dead process explains failed requests better than they do.
                    Err(e) => match setup.check_alive() {
                        Ok(()) => Err(e),
                        Err(dead) => Err(anyhow::anyhow!("{dead:#}\nwhile: {e:#}")),
                    }
                    .with_context(|| format!("setup {name}, scenario {}", scenario.title()))?,
                };
                eprintln!(
                    "[{done:>2}/{total}] {name:<20} {:<22} {line}",
                    scenario.title()
                );
                // Let sockets and CPU frequency settle between measurements.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    Ok(())
}

/// Fills every connection pool a setup has (nginx A's TLS connections to B, skein's
/// connections to its peer and the backend) with a short burst at full concurrency, so
/// the first measurement does not pay for handshakes the others do not. Not measured.
pub async fn warm_up(tools: &Tools, plan: &Plan, setup: &mut Setup) -> anyhow::Result<()> {
    let name = setup.kind.name();
    let ns = setup.netns.as_deref();
    let r = tools::wrk(&tools.wrk, ns, setup.http, plan.wrk_connections, 1, false)
        .await
        .with_context(|| format!("{name}: warm-up failed"))?;
    if r.errors > 0 || r.requests == 0 {
        bail!(
            "{name}: warm-up saw {} errors: {}",
            r.errors,
            r.error_detail
        );
    }
    setup.check_alive()
}

/// What one measurement contributes to CPU accounting.
enum Work {
    Requests(u64),
    Bytes(u64),
    Handshakes(u64),
    None,
}

/// Runs one measurement and accounts the proxies' CPU time to it; returns a one-line
/// summary for the progress log.
async fn measure(
    tools: &Tools,
    plan: &Plan,
    setup: &mut Setup,
    result: &mut SetupResults,
    scenario: Scenario,
) -> anyhow::Result<String> {
    setup.check_alive()?;
    let before = proxy_usage(setup)?;
    let (work, line) = match scenario {
        Scenario::Latency(rate) => latency(tools, plan, setup, result, rate).await?,
        Scenario::Throughput => wrk(tools, plan, setup, result, false).await?,
        Scenario::ConnRate => wrk(tools, plan, setup, result, true).await?,
        Scenario::Handshakes => match &setup.handshake {
            Err(_) => (Work::None, "n/a".to_string()),
            Ok(target) => handshakes(plan, target, result).await?,
        },
        Scenario::H2 => match target(&setup.h2) {
            None => (Work::None, "n/a".to_string()),
            Some(addr) => h2(tools, plan, setup.netns.as_deref(), addr, result, false).await?,
        },
        Scenario::Grpc => match target(&setup.grpc) {
            None => (Work::None, "n/a".to_string()),
            Some(addr) => h2(tools, plan, setup.netns.as_deref(), addr, result, true).await?,
        },
        Scenario::Tcp => match target(&setup.tcp) {
            None => (Work::None, "n/a".to_string()),
            Some(addr) => {
                let r = tools::tcp_bulk(&tools.me, setup.netns.as_deref(), addr, plan.secs).await?;
                let line = format!("{:.0} MB/s", r.mb_per_s);
                let n = r.bytes;
                result.tcp.push(r);
                (Work::Bytes(n), line)
            }
        },
    };
    setup.check_alive()?;
    let after = proxy_usage(setup)?;
    for ((b, a), p) in before.iter().zip(&after).zip(result.proxies.iter_mut()) {
        let cpu = (a.cpu_secs - b.cpu_secs).max(0.0);
        match work {
            Work::Requests(n) => {
                p.http_cpu_secs += cpu;
                p.http_requests += n;
            }
            Work::Bytes(n) => {
                p.tcp_cpu_secs += cpu;
                p.tcp_bytes += n;
            }
            Work::Handshakes(n) => {
                p.handshake_cpu_secs += cpu;
                p.handshakes += n;
            }
            Work::None => {}
        }
    }
    Ok(line)
}

async fn latency(
    tools: &Tools,
    plan: &Plan,
    setup: &Setup,
    result: &mut SetupResults,
    rate: u32,
) -> anyhow::Result<(Work, String)> {
    let from = tools::From {
        netns: setup.netns.as_deref(),
        h2: false,
    };
    let r = tools::load(
        &tools.me,
        from,
        setup.http,
        rate,
        plan.secs,
        plan.load_connections,
    )
    .await?;
    r.check()?;
    let line = format!(
        "p50 {} µs, p99 {} µs, max {} µs ({:.0} RPS)",
        r.p50_us, r.p99_us, r.max_us, r.achieved_rps
    );
    let ok = r.ok;
    result.latency.entry(rate).or_default().push(r);
    Ok((Work::Requests(ok), line))
}

async fn wrk(
    tools: &Tools,
    plan: &Plan,
    setup: &Setup,
    result: &mut SetupResults,
    close: bool,
) -> anyhow::Result<(Work, String)> {
    let r = tools::wrk(
        &tools.wrk,
        setup.netns.as_deref(),
        setup.http,
        plan.wrk_connections,
        plan.secs,
        close,
    )
    .await?;
    if r.errors > 0 || r.requests == 0 {
        bail!("wrk saw {} errors: {}", r.errors, r.error_detail);
    }
    let line = format!("{:.0} {}/s", r.rps, if close { "conn" } else { "req" });
    let n = r.requests;
    if close {
        result.conn_rate.push(r);
    } else {
        result.throughput.push(r);
    }
    Ok((Work::Requests(n), line))
}

async fn h2(
    tools: &Tools,
    plan: &Plan,
    netns: Option<&std::path::Path>,
    addr: std::net::SocketAddr,
    result: &mut SetupResults,
    grpc: bool,
) -> anyhow::Result<(Work, String)> {
    let r = tools::h2load(
        &tools.h2load,
        netns,
        addr,
        (plan.h2_clients, plan.h2_streams),
        plan.secs,
        grpc.then_some(tools.grpc_message.as_path()),
    )
    .await?;
    if r.errors > 0 || r.non_2xx > 0 || r.succeeded == 0 {
        bail!(
            "h2load: {} succeeded, {} failed, {} non-2xx",
            r.succeeded,
            r.errors,
            r.non_2xx
        );
    }
    let line = format!("{:.0} {}/s", r.rps, if grpc { "calls" } else { "req" });
    let n = r.succeeded;
    if grpc {
        result.grpc.push(r);
    } else {
        result.h2.push(r);
    }
    Ok((Work::Requests(n), line))
}

async fn handshakes(
    plan: &Plan,
    target: &HandshakeTarget,
    result: &mut SetupResults,
) -> anyhow::Result<(Work, String)> {
    let r = crate::handshake::run(
        target,
        crate::setups::HOST,
        plan.handshake_workers,
        plan.secs,
    )
    .await?;
    if r.errors > 0 || r.handshakes == 0 {
        bail!(
            "{} of {} connections failed; first error: {}",
            r.errors,
            r.errors + r.handshakes,
            r.first_error.as_deref().unwrap_or("none")
        );
    }
    let line = format!("{:.0} conn/s, {:.0} µs each", r.per_s, r.mean_us);
    let n = r.handshakes;
    result.handshakes.push(r);
    Ok((Work::Handshakes(n), line))
}

fn target(t: &Target) -> Option<std::net::SocketAddr> {
    t.as_ref().ok().copied()
}

fn proxy_usage(setup: &Setup) -> anyhow::Result<Vec<Usage>> {
    setup
        .proxies
        .iter()
        .map(|p| usage(p.pid()).with_context(|| format!("cannot read /proc for {}", p.name)))
        .collect()
}
