//! The slow-endpoint scenario: what the caller's load balancing does for a service one of
//! whose two endpoints answers ten times slower than the other.
//!
//! Two backends, one answering after [`FAST`] and the other after [`SLOW`], each behind
//! its own `skein proxy` (inbound), are the two endpoints of one destination `bench`. Two
//! outbound proxies call it with the same configuration but for the BackendPolicy: one has
//! none (the default, peak-EWMA with power of two choices), the other
//! `loadBalancer: round-robin`. Each is loaded in turn at fixed rates (open model; a light
//! and a moderate load, [`RATES`]) after a warm-up that lets its balancer learn; the
//! figures are the latency percentiles of the service's requests and the share of them the
//! slow endpoint served, counted by its inbound proxy (`skein_requests_total`). The proxies run standalone (no control plane,
//! plaintext between them): the scenario measures balancing, not mutual TLS.
//!
//! Addresses, used by nothing else in the harness nor the tests (which have
//! 127.0.0.160–162): fast backend and its proxy 127.0.0.164, slow backend and its proxy
//! 127.0.0.165, the peak-EWMA caller 127.0.0.166, the round-robin caller 127.0.0.167.

use crate::load::LoadReport;
use crate::procs::{Proc, TempDir};
use crate::report::{header_row, median, thousands};
use crate::setups::{
    delayed_backend, http_get, ip, proxy_config, start_proxy, workload, APP_PORT, HOST,
};
use anyhow::Context;
use serde::Serialize;
use skein_model::resource::{BackendPolicySpec, LoadBalancer, TargetRef};
use skein_model::{
    Destination, DestinationPolicy, Endpoint, PortSpec, Protocol, ProxyConfig, TelemetryConfig,
    Upstream, WorkloadInfo,
};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// How long the fast backend takes to answer.
pub const FAST: Duration = Duration::from_millis(2);
/// How long the slow backend takes to answer: 10× [`FAST`].
pub const SLOW: Duration = Duration::from_millis(20);
/// Requests per second sent to the service: a light load, where the fast endpoint rarely
/// has a request in flight when the next arrives, and a moderate one, where it usually has
/// one or two (peak-EWMA weighs an endpoint's latency by its requests in flight + 1).
pub const RATES: [u32; 2] = [100, 400];
/// Unmeasured load before each measurement, seconds: the balancer learns the endpoints.
const WARM_UP_SECS: u64 = 1;
/// Keep-alive connections of the load generator (it may grow to 4×).
const CONNECTIONS: u32 = 16;

/// Fast backend and its inbound proxy.
const FAST_HOST: IpAddr = ip(164);
/// Slow backend and its inbound proxy.
const SLOW_HOST: IpAddr = ip(165);
/// Every address the scenario uses (for the test that setups do not share any).
pub const HOSTS: [IpAddr; 4] = [FAST_HOST, SLOW_HOST, ip(166), ip(167)];

const INBOUND_PORT: u16 = 4143;
const ADMIN_PORT: u16 = 4191;
const UP_HTTP: u16 = 15001;

/// Set to `1` to leave the scenario out, e.g. to measure a `skein` binary older than
/// BackendPolicy enforcement, which refuses the round-robin caller's `policies`.
pub const SKIP_ENV: &str = "SKEIN_BENCH_NO_SLOW_ENDPOINT";

/// Whether [`SKIP_ENV`] asks to skip the scenario.
pub fn skipped() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| !matches!(v.trim(), "" | "0"))
}

/// The callers' load-balancing modes under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No BackendPolicy: the default, peak-EWMA with power of two choices.
    Ewma,
    /// A BackendPolicy with `loadBalancer: round-robin`.
    RoundRobin,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Ewma, Mode::RoundRobin];

    /// For tables and messages.
    pub fn title(self) -> &'static str {
        match self {
            Mode::Ewma => "peak-EWMA (default)",
            Mode::RoundRobin => "round-robin",
        }
    }

    fn caller(self) -> IpAddr {
        match self {
            Mode::Ewma => HOSTS[2],
            Mode::RoundRobin => HOSTS[3],
        }
    }
}

/// One measurement of one mode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// The load generator's figures.
    pub load: LoadReport,
    /// Requests the fast endpoint's inbound proxy counted during it.
    pub fast_requests: u64,
    /// Requests the slow endpoint's inbound proxy counted during it.
    pub slow_requests: u64,
}

/// The figures of one mode at one rate: latency medians over repetitions (`max`: the
/// largest seen), the slow endpoint's share over all of them.
#[derive(Debug, Clone, Serialize)]
pub struct ModeFigures {
    /// Which mode.
    pub mode: Mode,
    /// Requests per second.
    pub rate: u32,
    /// p50, p90, p99, max in µs, from each request's intended send time.
    pub p50_us: Option<f64>,
    /// 90th percentile.
    pub p90_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// Largest latency seen.
    pub max_us: Option<f64>,
    /// Requests the slow endpoint served, percent of those both served.
    pub slow_share_pct: Option<f64>,
    /// Every measurement.
    pub runs: Vec<Run>,
}

impl ModeFigures {
    fn new(mode: Mode, rate: u32, runs: Vec<Run>) -> ModeFigures {
        let pick = |f: fn(&LoadReport) -> u64| -> Vec<f64> {
            runs.iter().map(|r| f(&r.load) as f64).collect()
        };
        let fast: u64 = runs.iter().map(|r| r.fast_requests).sum();
        let slow: u64 = runs.iter().map(|r| r.slow_requests).sum();
        ModeFigures {
            mode,
            rate,
            p50_us: median(&pick(|l| l.p50_us)),
            p90_us: median(&pick(|l| l.p90_us)),
            p99_us: median(&pick(|l| l.p99_us)),
            max_us: pick(|l| l.max_us).into_iter().reduce(f64::max),
            slow_share_pct: (fast + slow > 0).then(|| slow as f64 * 100.0 / (fast + slow) as f64),
            runs,
        }
    }
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct SlowEndpoint {
    /// The fast backend's delay, ms.
    pub fast_ms: u64,
    /// The slow backend's delay, ms.
    pub slow_ms: u64,
    /// Requests per second, per measurement.
    pub rates: Vec<u32>,
    /// Length of each measurement, seconds.
    pub secs: u64,
    /// Measurements per mode and rate.
    pub repetitions: usize,
    /// Per rate, per mode (peak-EWMA first).
    pub modes: Vec<ModeFigures>,
}

impl SlowEndpoint {
    /// Round robin's p99 over peak-EWMA's at `rate`, when both were measured.
    pub fn p99_ratio(&self, rate: u32) -> Option<f64> {
        let p99 = |m: Mode| {
            self.modes
                .iter()
                .find(|f| f.mode == m && f.rate == rate)?
                .p99_us
        };
        crate::report::ratio(p99(Mode::RoundRobin), p99(Mode::Ewma))
    }
}

/// The report's section: peak-EWMA against round robin, per rate.
pub fn markdown(o: &mut String, s: &SlowEndpoint) {
    let _ = writeln!(
        o,
        "### Slow endpoint: peak-EWMA against round robin (one endpoint {}× slower)\n",
        s.slow_ms / s.fast_ms.max(1)
    );
    let rates: Vec<String> = s.rates.iter().map(|r| thousands(*r as f64)).collect();
    let _ = writeln!(
        o,
        "One service, two endpoints: backends answering after {} ms and after {} ms, each \
         behind its own skein proxy. {} RPS, {} s per measurement ({} per balancer and rate, \
         each after a 1 s warm-up), open model, through a standalone outbound proxy without \
         a BackendPolicy (peak-EWMA) or with `loadBalancer: round-robin`; latency in µs from \
         each request's intended send time (median over measurements; max: the largest); \
         the slow endpoint's share as its inbound proxy counted it.\n",
        s.fast_ms,
        s.slow_ms,
        rates.join(" and "),
        s.secs,
        s.repetitions
    );
    let cols = [
        "load balancer",
        "p50",
        "p90",
        "p99",
        "max",
        "requests to the slow endpoint",
    ]
    .map(String::from);
    header_row(o, "RPS", &cols);
    let us = |v: Option<f64>| v.map_or("n/a".into(), thousands);
    let mut last = None;
    for m in &s.modes {
        let (slow, all) = m.runs.iter().fold((0, 0), |(s, a), r| {
            (s + r.slow_requests, a + r.slow_requests + r.fast_requests)
        });
        let share = m.slow_share_pct.map_or("n/a".into(), |p| {
            format!(
                "{p:.1}% ({} of {})",
                thousands(slow as f64),
                thousands(all as f64)
            )
        });
        let rate = if last == Some(m.rate) {
            String::new()
        } else {
            thousands(m.rate as f64)
        };
        last = Some(m.rate);
        let _ = writeln!(
            o,
            "| {rate} | {} | {} | {} | {} | {} | {share} |",
            m.mode.title(),
            us(m.p50_us),
            us(m.p90_us),
            us(m.p99_us),
            us(m.max_us)
        );
    }
    let ratios: Vec<String> = s
        .rates
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{:.1}× at {} RPS",
                s.p99_ratio(*r)?,
                thousands(*r as f64)
            ))
        })
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(o, "\np99, round robin ÷ peak-EWMA: {}.", ratios.join(", "));
    }
    o.push('\n');
}

/// Seconds per measurement: a few, the figures being far apart.
pub fn secs(quick: bool) -> u64 {
    if quick {
        3
    } else {
        5
    }
}

/// The processes of the scenario; all stopped when dropped.
struct Running {
    /// Fast and slow inbound proxies, in that order.
    endpoints: [Proc; 2],
    /// Callers, in the order of [`Mode::ALL`].
    callers: Vec<Proc>,
    _backends: Vec<Proc>,
}

/// Starts the scenario's processes, measures each mode `repetitions` times at each rate
/// (alternating which goes first) and stops them.
pub async fn run(
    dir: &TempDir,
    me: &Path,
    skein: &Path,
    quick: bool,
    repetitions: usize,
) -> anyhow::Result<SlowEndpoint> {
    let mut running = start(dir, me, skein).await?;
    let secs = secs(quick);
    let mut modes = Vec::new();
    for rate in RATES {
        let mut runs: [Vec<Run>; 2] = Default::default();
        for rep in 0..repetitions {
            for k in 0..Mode::ALL.len() {
                let i = (k + rep) % Mode::ALL.len();
                let mode = Mode::ALL[i];
                let r = measure(&mut running, me, i, rate, secs)
                    .await
                    .map_err(|e| {
                        let tails: String = running
                            .endpoints
                            .iter()
                            .chain(&running.callers)
                            .map(|p| format!("\n--- {} ---\n{}", p.name, p.log_tail()))
                            .collect();
                        e.context(format!(
                            "slow endpoint, {} at {rate} RPS; proxy logs:{tails}",
                            mode.title()
                        ))
                    })?;
                eprintln!(
                    "[slow endpoint] {rate:>4} RPS {:<20} p50 {} µs, p99 {} µs, slow endpoint {} of {} requests",
                    mode.title(),
                    r.load.p50_us,
                    r.load.p99_us,
                    r.slow_requests,
                    r.slow_requests + r.fast_requests
                );
                runs[i].push(r);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let [ewma, rr] = runs;
        modes.push(ModeFigures::new(Mode::Ewma, rate, ewma));
        modes.push(ModeFigures::new(Mode::RoundRobin, rate, rr));
    }
    Ok(SlowEndpoint {
        fast_ms: FAST.as_millis() as u64,
        slow_ms: SLOW.as_millis() as u64,
        rates: RATES.to_vec(),
        secs,
        repetitions,
        modes,
    })
}

/// Warms the caller of mode `i` up at `rate`, then measures it.
async fn measure(
    running: &mut Running,
    me: &Path,
    i: usize,
    rate: u32,
    secs: u64,
) -> anyhow::Result<Run> {
    let addr = SocketAddr::new(Mode::ALL[i].caller(), UP_HTTP);
    let warm = crate::tools::load(
        me,
        Default::default(),
        addr,
        rate,
        WARM_UP_SECS,
        CONNECTIONS,
    )
    .await?;
    warm.check().context("warm-up")?;
    let before = served().await?;
    let load = crate::tools::load(me, Default::default(), addr, rate, secs, CONNECTIONS).await?;
    load.check().context("measurement")?;
    let after = served().await?;
    for p in running.endpoints.iter_mut().chain(&mut running.callers) {
        p.check_alive()?;
    }
    Ok(Run {
        load,
        fast_requests: after[0].saturating_sub(before[0]),
        slow_requests: after[1].saturating_sub(before[1]),
    })
}

/// Requests each endpoint's inbound proxy has counted so far (fast, slow).
async fn served() -> anyhow::Result<[u64; 2]> {
    let mut out = [0; 2];
    for (n, host) in out.iter_mut().zip([FAST_HOST, SLOW_HOST]) {
        let admin = SocketAddr::new(host, ADMIN_PORT);
        let text = http_get(admin, "/metrics")
            .await
            .with_context(|| format!("cannot read {admin}/metrics"))?;
        *n = inbound_requests(&text);
    }
    Ok(out)
}

/// The sum of `skein_requests_total` over its inbound series.
fn inbound_requests(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("skein_requests_total{") && l.contains("direction=\"inbound\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Backends, endpoint proxies, then the callers, each checked to answer.
async fn start(dir: &TempDir, me: &Path, skein: &Path) -> anyhow::Result<Running> {
    let mut backends = Vec::new();
    let mut endpoints = Vec::new();
    for (host, delay, tag) in [(FAST_HOST, FAST, "fast"), (SLOW_HOST, SLOW, "slow")] {
        let addr = SocketAddr::new(host, APP_PORT);
        let name = format!("slow-endpoint-{tag}");
        backends.push(delayed_backend(me, dir.path(), addr, delay, &name).await?);
        let name = format!("slow-endpoint {tag} inbound proxy");
        let file = format!("slow-endpoint-{tag}-inbound-proxy");
        endpoints.push(
            start_proxy(
                dir.path(),
                skein,
                &name,
                &file,
                &endpoint_config(host, tag),
                None,
            )
            .await?,
        );
    }
    let mut callers = Vec::new();
    for mode in Mode::ALL {
        let name = format!("slow-endpoint caller ({})", mode.title());
        let file = format!("slow-endpoint-caller-{}", mode_tag(mode));
        let p = start_proxy(dir.path(), skein, &name, &file, &caller_config(mode), None)
            .await
            .with_context(|| {
                format!("a skein binary without BackendPolicy refuses it: set {SKIP_ENV}=1 to skip the scenario")
            })?;
        let addr = SocketAddr::new(mode.caller(), UP_HTTP);
        crate::load::probe(addr, HOST, false)
            .await
            .with_context(|| format!("{name}: probe to {addr} failed"))?;
        callers.push(p);
    }
    let [fast, slow]: [Proc; 2] = endpoints
        .try_into()
        .map_err(|_| anyhow::anyhow!("two endpoint proxies expected"))?;
    Ok(Running {
        endpoints: [fast, slow],
        callers,
        _backends: backends,
    })
}

fn mode_tag(mode: Mode) -> &'static str {
    match mode {
        Mode::Ewma => "ewma",
        Mode::RoundRobin => "round-robin",
    }
}

/// A standalone proxy on `host` serving the backend's port.
fn base_config(host: IpAddr, workload: WorkloadInfo) -> ProxyConfig {
    let ports = vec![PortSpec::new(APP_PORT, Protocol::Http)];
    proxy_config(host, workload, ports, TelemetryConfig::default())
}

/// An endpoint's inbound proxy, in front of the backend on its own address.
fn endpoint_config(host: IpAddr, tag: &str) -> ProxyConfig {
    base_config(host, workload(&format!("bench-{tag}"), "bench"))
}

/// A caller: one upstream listener for `bench`, whose two endpoints are the fast and the
/// slow one, with a round-robin BackendPolicy or none (the default, peak-EWMA).
fn caller_config(mode: Mode) -> ProxyConfig {
    let host = mode.caller();
    let mut config = base_config(host, workload("loadgen-1", "loadgen"));
    config.outbound.upstreams = vec![Upstream {
        listen: SocketAddr::new(host, UP_HTTP),
        service: HOST.into(),
        port: APP_PORT,
    }];
    let policies = match mode {
        Mode::Ewma => Vec::new(),
        Mode::RoundRobin => vec![DestinationPolicy {
            name: "default/bench-lb".into(),
            spec: BackendPolicySpec {
                target_ref: TargetRef {
                    group: String::new(),
                    kind: "Service".into(),
                    name: HOST.into(),
                    port: None,
                },
                load_balancer: LoadBalancer::RoundRobin,
                connection_pool: Default::default(),
                outlier_detection: Default::default(),
                retry_budget: Default::default(),
                inbound: None,
            },
        }],
    };
    config.destinations = vec![std::sync::Arc::new(Destination {
        service: HOST.into(),
        namespace: "default".into(),
        ports: config.inbound.ports.clone(),
        addresses: Vec::new(),
        endpoints: [FAST_HOST, SLOW_HOST]
            .map(|h| Endpoint {
                address: SocketAddr::new(h, INBOUND_PORT),
                identity: None,
            })
            .into(),
        routes: Vec::new(),
        identities: Vec::new(),
        policies,
    })];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_valid_and_differ_only_in_the_policy() {
        for host in [FAST_HOST, SLOW_HOST] {
            endpoint_config(host, "x").validate("endpoint").unwrap();
        }
        let ewma = caller_config(Mode::Ewma);
        let rr = caller_config(Mode::RoundRobin);
        for c in [&ewma, &rr] {
            c.validate("caller").unwrap();
            let back = ProxyConfig::from_yaml(&c.to_yaml(), "again").unwrap();
            assert_eq!(&back, c);
        }
        assert!(ewma.destinations[0].policies.is_empty(), "the default path");
        let policy = rr.destinations[0].policy(APP_PORT).unwrap();
        assert_eq!(policy.spec.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(ewma.destinations[0].endpoints, rr.destinations[0].endpoints);
    }

    #[test]
    fn counts_inbound_requests_and_summarizes() {
        let metrics = "# TYPE skein_requests_total counter\n\
            skein_requests_total{direction=\"inbound\",status_code=\"200\"} 40\n\
            skein_requests_total{direction=\"inbound\",status_code=\"503\"} 2\n\
            skein_requests_total{direction=\"outbound\",status_code=\"200\"} 7\n\
            skein_requests_totals{direction=\"inbound\"} 1000\n";
        assert_eq!(inbound_requests(metrics), 42);
        let run = |p99: u64, fast: u64, slow: u64| Run {
            load: LoadReport {
                p99_us: p99,
                max_us: p99 * 2,
                ..LoadReport::default()
            },
            fast_requests: fast,
            slow_requests: slow,
        };
        let f = ModeFigures::new(
            Mode::RoundRobin,
            100,
            vec![run(100, 50, 50), run(300, 70, 30)],
        );
        assert_eq!(f.p99_us, Some(200.0));
        assert_eq!(f.max_us, Some(600.0));
        assert_eq!(f.slow_share_pct, Some(40.0));
        let none = ModeFigures::new(Mode::Ewma, 100, Vec::new());
        assert_eq!((none.p99_us, none.slow_share_pct), (None, None));
    }

    #[test]
    fn a_slow_endpoint_only_run_reports_that_scenario_alone() {
        use crate::report::{markdown, summarize, Meta};
        use crate::scenarios::Plan;
        let figures = |mode, rate, p99: f64, share: f64, slow: u64| ModeFigures {
            mode,
            rate,
            p50_us: Some(2_500.0),
            p90_us: Some(3_000.0),
            p99_us: Some(p99),
            max_us: Some(p99 * 2.0),
            slow_share_pct: Some(share),
            runs: vec![Run {
                load: LoadReport::default(),
                fast_requests: 1000 - slow,
                slow_requests: slow,
            }],
        };
        let slow = SlowEndpoint {
            fast_ms: 2,
            slow_ms: 20,
            rates: vec![100, 400],
            secs: 3,
            repetitions: 1,
            modes: vec![
                figures(Mode::Ewma, 100, 3_100.0, 1.0, 10),
                figures(Mode::RoundRobin, 100, 22_500.0, 50.0, 500),
                figures(Mode::Ewma, 400, 22_000.0, 2.0, 20),
                figures(Mode::RoundRobin, 400, 22_000.0, 50.0, 500),
            ],
        };
        let meta = Meta {
            date: "2026-12-03 12:00 UTC".into(),
            commit: "abc1234".into(),
            cpu_model: "cpu".into(),
            cores: 2,
            command: "bench/run --quick --only slow-endpoint".into(),
            skein_mtls: true,
            plan: Plan::new(true),
            run_secs: 10.0,
            deployed_na: None,
            proxy_workers: None,
        };
        let extras = crate::report::Extras {
            slow_endpoint: Some(&slow),
            ..Default::default()
        };
        let md = markdown(&meta, &summarize(&[]), &[], extras, "x.json");
        assert!(!md.contains("### Headline"), "{md}");
        assert!(!md.contains("mTLS"), "{md}");
        assert!(md.contains("one endpoint 10× slower"), "{md}");
        assert!(
            md.contains(
                "| 100 | peak-EWMA (default) | 2,500 | 3,000 | 3,100 | 6,200 | 1.0% (10 of 1,000) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "|  | round-robin | 2,500 | 3,000 | 22,500 | 45,000 | 50.0% (500 of 1,000) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("p99, round robin ÷ peak-EWMA: 7.3× at 100 RPS, 1.0× at 400 RPS."),
            "{md}"
        );
    }
}
