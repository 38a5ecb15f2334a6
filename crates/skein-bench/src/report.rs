//! From raw figures to what people read: medians over repetitions, ratios to direct and
//! added latency (the headline), a Markdown section (printed, and appended to
//! `docs/BENCHMARKS.md`), and a JSON document holding every raw and derived figure.

use crate::scenarios::{Plan, ProxyUsage, SetupResults};
use crate::setups::Kind;
use crate::slow::SlowEndpoint;
use serde::Serialize;
use std::fmt::Write as _;

/// The scenarios with processes of their own, run beside the setups or alone (`--only`);
/// `None` for each that did not run. In the JSON, each is a top-level key.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Extras<'a> {
    /// Peak-EWMA against round robin ([`crate::slow`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_endpoint: Option<&'a SlowEndpoint>,
    /// Callers against a concurrency limit ([`crate::overload`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overload: Option<&'a crate::overload::Overload>,
    /// Instructions per request ([`crate::callgrind`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callgrind: Option<&'a crate::callgrind::Callgrind>,
    /// Full against resumed TLS handshakes ([`crate::resumption`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumption: Option<&'a crate::resumption::Resumption>,
    /// The dashboard's API for 200 services ([`crate::dashboard`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_api: Option<&'a crate::dashboard::DashboardApi>,
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// Short git commit, `+dirty` when the work tree had changes.
    pub commit: String,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Cores available.
    pub cores: usize,
    /// The command as a user would type it.
    pub command: String,
    /// Whether skein's proxy-to-proxy hop used mTLS.
    pub skein_mtls: bool,
    /// What was measured and for how long.
    pub plan: Plan,
    /// Seconds the whole run took (setups, probes and measurements).
    pub run_secs: f64,
    /// `SKEIN_PROXY_WORKERS` as the proxies inherited it, when set (unset: each proxy's
    /// default, one thread since commit c1a47dc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_workers: Option<String>,
    /// Why the deployed shape (the namespaced setups) did not run, when it was meant to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_na: Option<String>,
}

/// One figure of one setup, with its ratio to its direct baseline, or why there is none.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figure {
    /// Which setup.
    pub setup: String,
    /// Median over repetitions.
    pub value: Option<f64>,
    /// `value / direct value`, direct being the setup's baseline (`direct` for the
    /// loopback setups, `direct (namespaces)` for the namespaced pair).
    pub ratio_to_direct: Option<f64>,
    /// Why the figure is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub na: Option<String>,
}

/// The percentiles the latency tables show, in the order of [`Latency::us`].
pub const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
/// Index of p99 in [`PERCENTILES`].
const P99: usize = 2;

/// Latency figures of one setup at one rate (medians over repetitions; `max` is the
/// largest seen), µs, and the same minus its direct baseline's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Which setup.
    pub setup: String,
    /// p50, p90, p99, p99.9, max.
    #[serde(serialize_with = "percentiles")]
    pub us: [f64; 5],
    /// Setup minus its direct baseline, same order; zero for a baseline itself.
    #[serde(serialize_with = "percentiles")]
    pub added_us: [f64; 5],
    /// Largest p99 over smallest p99 across the repetitions (1.0 = identical); `None`
    /// with one repetition.
    pub p99_spread: Option<f64>,
}

/// Latency of every setup at one rate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyRow {
    /// Requests per second.
    pub rate: u32,
    /// Per setup, in the order of [`Summary::setups`]; `None` when not measured.
    pub setups: Vec<Option<Latency>>,
}

fn percentiles<S: serde::Serializer>(v: &[f64; 5], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, x) in PERCENTILES.iter().zip(v) {
        m.serialize_entry(k, x)?;
    }
    m.end()
}

/// Derived figures, per setup in the order of `setups`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Setup names.
    pub setups: Vec<String>,
    /// Per setup, the index of its baseline in `setups` (its own for a baseline).
    pub baselines: Vec<usize>,
    /// Per rate, per setup.
    pub latency: Vec<LatencyRow>,
    /// HTTP/1.1 requests/s at fixed concurrency.
    pub throughput_rps: Vec<Figure>,
    /// HTTP/2 requests/s.
    pub h2_rps: Vec<Figure>,
    /// Unary gRPC calls/s.
    pub grpc_rps: Vec<Figure>,
    /// TCP bulk MB/s.
    pub tcp_mb_per_s: Vec<Figure>,
    /// New connections/s.
    pub conn_per_s: Vec<Figure>,
    /// New mutual-TLS connections/s into the receiving proxy (no ratio: direct has no
    /// hop between proxies).
    pub handshakes_per_s: Vec<Figure>,
    /// What per-request telemetry costs in CPU; absent when the run had no skein setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry_cost: Option<TelemetryCost>,
    /// What tracing at the default ratio costs in CPU (the skein pair against the same
    /// pair with tracing off); absent when the run had no skein setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing_cost: Option<TelemetryCost>,
}

/// The CPU cost of the proxies' per-request telemetry, from one run: CPU s per 1,000
/// requests (HTTP scenarios, both proxies of the pair summed) of the skein pair and of
/// the identical pair whose proxies run with `telemetry.requests: false`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryCost {
    /// The skein pair (telemetry on), CPU s per 1,000 requests.
    pub on: Option<f64>,
    /// The telemetry-off pair, CPU s per 1,000 requests.
    pub off: Option<f64>,
    /// `(on / off − 1) × 100`: how much more CPU per request telemetry costs, in percent.
    pub increase_pct: Option<f64>,
    /// Why there is no figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub na: Option<String>,
}

/// The median of `v` (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// `value / direct`, when both exist and direct is positive.
pub fn ratio(value: Option<f64>, direct: Option<f64>) -> Option<f64> {
    match (value, direct) {
        (Some(v), Some(d)) if d > 0.0 => Some(v / d),
        _ => None,
    }
}

/// One proxy's CPU seconds per 1,000 requests during the HTTP scenarios.
fn proxy_cpu_per_1k_requests(p: &ProxyUsage) -> Option<f64> {
    (p.http_requests > 0).then(|| p.http_cpu_secs / p.http_requests as f64 * 1000.0)
}

/// A setup's CPU seconds per 1,000 requests during the HTTP scenarios, all its proxies
/// summed (what the resources table shows as `(both)`); `None` without proxies or
/// requests.
pub fn cpu_per_1k_requests(r: &SetupResults) -> Option<f64> {
    if r.proxies.is_empty() {
        return None;
    }
    r.proxies
        .iter()
        .map(proxy_cpu_per_1k_requests)
        .sum::<Option<f64>>()
}

/// Telemetry on against off, from the two skein setups; `None` when the run had no skein
/// setup at all.
fn telemetry_cost(results: &[SetupResults]) -> Option<TelemetryCost> {
    cost_against(results, Kind::SkeinTelemetryOff)
}

/// Tracing on (at the default ratio) against off.
fn tracing_cost(results: &[SetupResults]) -> Option<TelemetryCost> {
    cost_against(results, Kind::SkeinTracingOff)
}

/// The skein pair's CPU per request against the pair `off`, from one run.
fn cost_against(results: &[SetupResults], off: Kind) -> Option<TelemetryCost> {
    let find = |k: Kind| results.iter().find(|r| r.setup == k.name());
    let on = find(Kind::Skein)?;
    let Some(off) = find(off) else {
        return Some(TelemetryCost {
            na: Some(format!(
                "setup \"{}\" did not run (skipped with {})",
                off.name(),
                crate::run::NO_TELEMETRY_SETUP_ENV
            )),
            ..TelemetryCost::default()
        });
    };
    let (on, off) = (cpu_per_1k_requests(on), cpu_per_1k_requests(off));
    let increase_pct = ratio(on, off).map(|r| (r - 1.0) * 100.0);
    Some(TelemetryCost {
        on,
        off,
        increase_pct,
        na: increase_pct
            .is_none()
            .then(|| "no CPU per request measured for both skein setups".to_string()),
    })
}

fn figures(
    results: &[SetupResults],
    pick: impl Fn(&SetupResults) -> (Vec<f64>, Option<String>),
) -> Vec<Figure> {
    let values: Vec<(Option<f64>, Option<String>)> = results
        .iter()
        .map(|r| {
            let (v, na) = pick(r);
            (median(&v), na)
        })
        .collect();
    let direct: Vec<Option<f64>> = (0..results.len())
        .map(|i| values[baseline(results, i)].0)
        .collect();
    values
        .into_iter()
        .zip(results)
        .zip(direct)
        .map(|(((value, na), r), direct)| Figure {
            setup: r.setup.clone(),
            value,
            ratio_to_direct: ratio(value, direct),
            na: if value.is_none() { na } else { None },
        })
        .collect()
}

/// Index of the setup `results[i]` is compared against: the one its `baseline` names
/// (itself, for a baseline other than the first, or when the one it names did not run:
/// no ratio is better than one against the wrong direct), else the first (direct).
pub fn baseline(results: &[SetupResults], i: usize) -> usize {
    match &results[i].baseline {
        None => 0,
        Some(name) => results.iter().position(|r| &r.setup == name).unwrap_or(i),
    }
}

/// Medians and ratios, each setup against its baseline (see [`baseline`]).
pub fn summarize(results: &[SetupResults]) -> Summary {
    let rates: Vec<u32> = results
        .first()
        .map(|r| r.latency.keys().copied().collect())
        .unwrap_or_default();
    let latency = rates
        .iter()
        .map(|rate| {
            let per: Vec<Option<([f64; 5], Option<f64>)>> = results
                .iter()
                .map(|r| {
                    let runs = r.latency.get(rate)?;
                    let pick = |f: fn(&crate::load::LoadReport) -> u64| {
                        runs.iter().map(|x| f(x) as f64).collect::<Vec<_>>()
                    };
                    let p99s = pick(|x| x.p99_us);
                    let (lo, hi) = p99s
                        .iter()
                        .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                    let spread = (p99s.len() > 1 && lo > 0.0).then(|| hi / lo);
                    Some((
                        [
                            median(&pick(|x| x.p50_us))?,
                            median(&pick(|x| x.p90_us))?,
                            median(&p99s)?,
                            median(&pick(|x| x.p999_us))?,
                            pick(|x| x.max_us).into_iter().fold(0.0, f64::max),
                        ],
                        spread,
                    ))
                })
                .collect();
            let setups = (0..results.len())
                .map(|i| {
                    let (us, p99_spread) = per[i]?;
                    let (d, _) = per[baseline(results, i)]?;
                    Some(Latency {
                        setup: results[i].setup.clone(),
                        us,
                        added_us: std::array::from_fn(|k| us[k] - d[k]),
                        p99_spread,
                    })
                })
                .collect();
            LatencyRow {
                rate: *rate,
                setups,
            }
        })
        .collect();
    let na = |n: &Option<String>| n.clone().or(Some("not measured".into()));
    Summary {
        setups: results.iter().map(|r| r.setup.clone()).collect(),
        baselines: (0..results.len()).map(|i| baseline(results, i)).collect(),
        latency,
        throughput_rps: figures(results, |r| {
            (r.throughput.iter().map(|x| x.rps).collect(), None)
        }),
        h2_rps: figures(results, |r| {
            (r.h2.iter().map(|x| x.rps).collect(), na(&r.h2_na))
        }),
        grpc_rps: figures(results, |r| {
            (r.grpc.iter().map(|x| x.rps).collect(), na(&r.grpc_na))
        }),
        tcp_mb_per_s: figures(results, |r| {
            (r.tcp.iter().map(|x| x.mb_per_s).collect(), na(&r.tcp_na))
        }),
        conn_per_s: figures(results, |r| {
            (r.conn_rate.iter().map(|x| x.rps).collect(), None)
        }),
        handshakes_per_s: figures(results, |r| {
            (
                r.handshakes.iter().map(|x| x.per_s).collect(),
                na(&r.handshake_na),
            )
        }),
        telemetry_cost: telemetry_cost(results),
        tracing_cost: tracing_cost(results),
    }
}

/// Groups digits in threes: 51703.6 → `51,704`.
pub(crate) fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < -0.5 {
        format!("-{out}")
    } else {
        out
    }
}

fn cell(f: &Figure, fmt: impl Fn(f64) -> String) -> String {
    match f.value {
        Some(v) => fmt(v),
        None => "n/a".into(),
    }
}

fn ratio_cell(f: &Figure) -> String {
    match f.ratio_to_direct {
        Some(r) => format!("{r:.2}×"),
        None => "n/a".into(),
    }
}

fn signed(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", thousands(v))
    } else {
        thousands(v)
    }
}

/// A table's header and alignment rows.
pub(crate) fn header_row(out: &mut String, first: &str, cols: &[String]) {
    let _ = writeln!(out, "| {first} | {} |", cols.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(cols.len()));
}

/// The Markdown section for one run; `results` is empty when only the slow-endpoint
/// or the overload scenario ran.
pub fn markdown(
    meta: &Meta,
    summary: &Summary,
    results: &[SetupResults],
    extras: Extras<'_>,
    json_path: &str,
) -> String {
    let mut o = String::new();
    let p = &meta.plan;
    let _ = writeln!(
        o,
        "## {} — {} — {} × {}\n",
        meta.date, meta.commit, meta.cpu_model, meta.cores
    );
    if results.is_empty() {
        // Only a scenario with its own processes ran: the plan and mTLS describe setups it
        // has not.
        let _ = writeln!(
            o,
            "Command: `{}` · run took {:.0} s.\n",
            meta.command, meta.run_secs
        );
    } else {
        let _ = writeln!(
            o,
            "Command: `{}{}` · {} s per measurement, {} repetition{} (median), setups interleaved · \
             skein mTLS: **{}** · run took {:.0} s.\n",
            meta.proxy_workers
                .as_ref()
                .map_or(String::new(), |w| format!("SKEIN_PROXY_WORKERS={w} ")),
            meta.command,
            p.secs,
            p.repetitions,
            if p.repetitions == 1 { "" } else { "s" },
            if meta.skein_mtls {
                "on"
            } else {
                "off (plaintext between proxies)"
            },
            meta.run_secs
        );
    }
    if !results.is_empty() {
        for r in results {
            let _ = writeln!(o, "- **{}**: {}", r.setup, r.description);
        }
        o.push('\n');
        headline(&mut o, summary);
        latency_table(&mut o, summary);
        throughput_tables(&mut o, summary, p);
        resources_table(&mut o, results);
        telemetry_section(&mut o, summary);
        tracing_section(&mut o, summary);
        notes(&mut o, summary);
    }
    if let Some(why) = &meta.deployed_na {
        let _ = writeln!(
            o,
            "- n/a — {} and {} (the deployed shape): {why}.\n",
            Kind::DirectNs.name(),
            Kind::SkeinNs.name()
        );
    }
    if let Some(slow) = extras.slow_endpoint {
        crate::slow::markdown(&mut o, slow);
    }
    if let Some(overload) = extras.overload {
        crate::overload::markdown(&mut o, overload);
    }
    if let Some(callgrind) = extras.callgrind {
        crate::callgrind::markdown(&mut o, callgrind);
    }
    if let Some(resumption) = extras.resumption {
        crate::resumption::markdown(&mut o, resumption);
    }
    if let Some(dashboard) = extras.dashboard_api {
        crate::dashboard::markdown(&mut o, dashboard);
    }
    let _ = writeln!(o, "Every figure: `{json_path}`.\n");
    o
}

fn throughput_tables(o: &mut String, summary: &Summary, p: &Plan) {
    let simple = [
        (
            format!(
                "Maximum throughput (HTTP/1.1, wrk, {} keep-alive connections)",
                p.wrk_connections
            ),
            "requests/s",
            &summary.throughput_rps,
        ),
        (
            format!(
                "HTTP/2 (h2load, {} connections × {} concurrent streams)",
                p.h2_clients, p.h2_streams
            ),
            "requests/s",
            &summary.h2_rps,
        ),
        (
            format!(
                "gRPC (unary calls, h2load, {} connections × {} concurrent streams; \
                 {}-byte request and {}-byte reply messages, each call checked for \
                 `grpc-status: 0` in the probe)",
                p.h2_clients,
                p.h2_streams,
                crate::grpc::REQUEST_LEN,
                crate::backend::BODY_LEN
            ),
            "calls/s",
            &summary.grpc_rps,
        ),
        (
            "Opaque TCP bulk (one connection)".to_string(),
            "MB/s",
            &summary.tcp_mb_per_s,
        ),
        (
            format!(
                "New connections (wrk, `Connection: close`, {} concurrent)",
                p.wrk_connections
            ),
            "connections/s",
            &summary.conn_per_s,
        ),
    ];
    for (title, unit, figs) in simple {
        let _ = writeln!(o, "### {title}\n");
        header_row(o, "", &summary.setups);
        let row =
            |f: &dyn Fn(&Figure) -> String| figs.iter().map(f).collect::<Vec<_>>().join(" | ");
        let _ = writeln!(o, "| {unit} | {} |", row(&|f| cell(f, thousands)));
        let _ = writeln!(o, "| ratio to its direct | {} |\n", row(&ratio_cell));
    }
    handshake_table(o, summary, p);
}

/// New mutual-TLS connections into the receiving proxy: no direct baseline, so the
/// pairs are compared with the nginx pair.
fn handshake_table(o: &mut String, summary: &Summary, p: &Plan) {
    let figs = &summary.handshakes_per_s;
    if figs.iter().all(|f| f.value.is_none()) {
        return;
    }
    let _ = writeln!(
        o,
        "### New mutual-TLS connections between proxies ({} workers, each: connect, full TLS 1.3 \
         handshake with a client certificate, one request, close)\n",
        p.handshake_workers
    );
    // Baselines have no hop between proxies.
    let figs: Vec<&Figure> = figs
        .iter()
        .enumerate()
        .filter(|(i, _)| summary.baselines.get(*i).is_some_and(|b| b != i))
        .map(|(_, f)| f)
        .collect();
    let cols: Vec<String> = figs.iter().map(|f| f.setup.clone()).collect();
    header_row(o, "", &cols);
    let cells: Vec<String> = figs.iter().map(|f| cell(f, thousands)).collect();
    let _ = writeln!(o, "| connections/s | {} |", cells.join(" | "));
    let nginx = figs
        .iter()
        .find(|f| f.setup == "nginx pair")
        .and_then(|f| f.value);
    let cells: Vec<String> = figs
        .iter()
        .map(|f| ratio(f.value, nginx).map_or("n/a".into(), |r| format!("{r:.2}×")))
        .collect();
    let _ = writeln!(o, "| ratio to nginx pair | {} |\n", cells.join(" | "));
}

fn headline(o: &mut String, s: &Summary) {
    let _ = writeln!(o, "### Headline: throughput as a ratio to direct (1.00× = no cost), latency added to direct\n");
    // Baselines compare with themselves: only the setups with a baseline get a column.
    let measured: Vec<usize> = (0..s.setups.len())
        .filter(|i| s.baselines.get(*i).is_some_and(|b| *b != *i))
        .collect();
    let cols: Vec<String> = measured
        .iter()
        .map(|i| {
            let against = &s.setups[s.baselines[*i]];
            if *against == s.setups[0] {
                s.setups[*i].clone()
            } else {
                format!("{}, against {against}", s.setups[*i])
            }
        })
        .collect();
    header_row(o, "", &cols);
    for (what, figs) in [
        ("HTTP/1.1 max throughput", &s.throughput_rps),
        ("HTTP/2 throughput", &s.h2_rps),
        ("gRPC throughput", &s.grpc_rps),
        ("TCP bulk throughput", &s.tcp_mb_per_s),
        ("new connections/s", &s.conn_per_s),
    ] {
        let cells: Vec<String> = measured.iter().map(|i| ratio_cell(&figs[*i])).collect();
        let _ = writeln!(o, "| {what} | {} |", cells.join(" | "));
    }
    // The rates from 1,000 RPS up (the lowest one alone when all are below).
    let shown = s
        .latency
        .iter()
        .filter(|r| r.rate >= 1000 || s.latency.len() == 1);
    for LatencyRow { rate, setups: row } in shown {
        for (i, pct) in [(0, "p50"), (P99, "p99"), (3, "p99.9")] {
            let cells: Vec<String> = measured
                .iter()
                .map(|k| {
                    row[*k]
                        .as_ref()
                        .map_or("n/a".into(), |l| format!("{} µs", signed(l.added_us[i])))
                })
                .collect();
            let _ = writeln!(
                o,
                "| added {pct} latency at {} RPS | {} |",
                thousands(*rate as f64),
                cells.join(" | ")
            );
        }
    }
    o.push('\n');
}

fn latency_table(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "### Latency at fixed request rates (open model, µs from each request's intended send time)\n"
    );
    let compared = |j: usize| s.baselines.get(j).is_some_and(|b| *b != j);
    let mut cols = vec![String::from("pct")];
    for (j, name) in s.setups.iter().enumerate() {
        cols.push(name.clone());
        if compared(j) {
            cols.push(format!("{name} added"));
        }
    }
    header_row(o, "RPS", &cols);
    let spread = s
        .latency
        .iter()
        .any(|r| r.setups.iter().flatten().any(|l| l.p99_spread.is_some()));
    for LatencyRow { rate, setups: row } in &s.latency {
        for (i, pct) in PERCENTILES.iter().enumerate() {
            let mut cells = vec![pct.to_string()];
            for (j, l) in row.iter().enumerate() {
                cells.push(l.as_ref().map_or("n/a".into(), |l| thousands(l.us[i])));
                if compared(j) {
                    cells.push(l.as_ref().map_or("n/a".into(), |l| signed(l.added_us[i])));
                }
            }
            let first = if i == 0 {
                thousands(*rate as f64)
            } else {
                String::new()
            };
            let _ = writeln!(o, "| {first} | {} |", cells.join(" | "));
        }
        if spread {
            // How repeatable the tail is: largest p99 ÷ smallest over the repetitions.
            let mut cells = vec!["p99 max÷min".to_string()];
            for (j, l) in row.iter().enumerate() {
                let v = l.as_ref().and_then(|l| l.p99_spread);
                cells.push(v.map_or("n/a".into(), |v| format!("{v:.2}×")));
                if compared(j) {
                    cells.push(String::new());
                }
            }
            let _ = writeln!(o, "| | {} |", cells.join(" | "));
        }
    }
    o.push('\n');
}

fn resources_table(o: &mut String, results: &[SetupResults]) {
    let _ = writeln!(
        o,
        "### Resources per proxy (from /proc; nginx: master + worker)\n"
    );
    let mut cols = Vec::new();
    let mut per: Vec<[Option<f64>; 6]> = Vec::new();
    for r in results.iter().filter(|r| !r.proxies.is_empty()) {
        let mut pair = [Some(0.0); 6];
        for p in &r.proxies {
            let v = [
                Some(p.idle_rss_kib as f64 / 1024.0),
                (p.idle_anon_kib > 0).then(|| p.idle_anon_kib as f64 / 1024.0),
                Some(p.peak_rss_kib as f64 / 1024.0),
                proxy_cpu_per_1k_requests(p),
                (p.tcp_bytes > 0).then(|| p.tcp_cpu_secs / (p.tcp_bytes as f64 / 1e9)),
                (r.handshakes.iter().any(|h| h.handshakes > 0))
                    .then(|| p.handshake_cpu_secs / p.handshakes.max(1) as f64 * 1000.0),
            ];
            for (acc, x) in pair.iter_mut().zip(v) {
                *acc = acc.zip(x).map(|(a, b)| a + b);
            }
            cols.push(p.name.clone());
            per.push(v);
        }
        cols.push(format!("{} (both)", r.setup));
        per.push(pair);
    }
    if cols.is_empty() {
        return;
    }
    header_row(o, "", &cols);
    let rows = [
        ("idle RSS (MiB)", 1),
        ("of which private: heap and stacks (MiB)", 1),
        ("peak RSS (MiB)", 1),
        ("CPU s per 1,000 requests", 4),
        ("CPU s per GB of TCP", 2),
        ("CPU s per 1,000 mTLS connections", 3),
    ];
    for (i, (what, digits)) in rows.iter().enumerate() {
        let cells: Vec<String> = per
            .iter()
            .map(|v| v[i].map_or("n/a".into(), |x| format!("{x:.digits$}")))
            .collect();
        let _ = writeln!(o, "| {what} | {} |", cells.join(" | "));
    }
    o.push('\n');
}

/// The CPU cost of per-request telemetry: the skein pair against the identical pair with
/// `telemetry.requests: false`, from this run.
fn telemetry_section(o: &mut String, s: &Summary) {
    let (on, off) = (Kind::Skein.name(), Kind::SkeinTelemetryOff.name());
    let about = format!(
        "CPU per request of the {on} pair against an identical pair in the same run whose \
         proxies record no per-request golden signals (`telemetry.requests: false`): \
         {on} ÷ {off} − 1, CPU s per 1,000 requests in the HTTP scenarios, both proxies \
         summed."
    );
    cost_section(o, s.telemetry_cost.as_ref(), "Telemetry cost", off, &about);
}

/// The CPU cost of tracing at the default ratio: the skein pair against the identical
/// pair whose Mesh turns tracing off, from this run.
fn tracing_section(o: &mut String, s: &Summary) {
    let (on, off) = (Kind::Skein.name(), Kind::SkeinTracingOff.name());
    let about = format!(
        "CPU per request of the {on} pair (tracing on, new traces sampled at the default \
         1 %) against an identical pair in the same run whose Mesh turns tracing off \
         (`spec.tracing.enabled: false`): {on} ÷ {off} − 1, CPU s per 1,000 requests in the \
         HTTP scenarios, both proxies summed. The target is at most +10 %."
    );
    cost_section(o, s.tracing_cost.as_ref(), "Tracing cost", off, &about);
}

/// One cost section: `title`, what it compares, and the skein pair against `off`.
fn cost_section(o: &mut String, cost: Option<&TelemetryCost>, title: &str, off: &str, about: &str) {
    let Some(t) = cost else {
        return;
    };
    let _ = writeln!(o, "### {title}\n\n{about}\n");
    if let Some(na) = &t.na {
        let _ = writeln!(o, "{title}: n/a — {na}.\n");
        return;
    }
    let cols = [
        Kind::Skein.name().to_string(),
        off.to_string(),
        title.to_lowercase(),
    ];
    header_row(o, "", &cols);
    let cpu = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.4}"));
    let pct = t.increase_pct.map_or("n/a".into(), |p| format!("{p:+.1}%"));
    let _ = writeln!(
        o,
        "| CPU s per 1,000 requests (both proxies) | {} | {} | {pct} |\n",
        cpu(t.on),
        cpu(t.off)
    );
}

fn notes(o: &mut String, s: &Summary) {
    let mut seen = Vec::new();
    for (what, figs) in [
        ("HTTP/2", &s.h2_rps),
        ("gRPC", &s.grpc_rps),
        ("TCP bulk", &s.tcp_mb_per_s),
    ] {
        for (name, f) in s.setups.iter().zip(figs.iter()) {
            if let Some(na) = &f.na {
                seen.push(format!("- n/a — {name}, {what}: {na}"));
            }
        }
    }
    if !seen.is_empty() {
        let _ = writeln!(o, "{}\n", seen.join("\n"));
    }
}

/// UTC now as (`YYYY-MM-DD HH:MM UTC`, `YYYYMMDD-HHMMSS`).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = skein_model::time::UtcTime::from_unix(secs);
    let (y, m, d, hh, mm, ss) = (t.year, t.month, t.day, t.hour, t.minute, t.second);
    (
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC"),
        format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::WrkReport;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(ratio(Some(50.0), Some(200.0)), Some(0.25));
        assert_eq!(ratio(Some(50.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn summary_takes_ratios_to_the_first_setup() {
        let setup = |name: &str, rps: &[f64]| SetupResults {
            setup: name.into(),
            throughput: rps
                .iter()
                .map(|r| WrkReport {
                    rps: *r,
                    ..WrkReport::default()
                })
                .collect(),
            tcp_na: (name == "nginx pair").then(|| "no stream module".to_string()),
            ..SetupResults::default()
        };
        let results = [
            setup("direct", &[100.0, 300.0]),
            setup("skein", &[50.0, 50.0]),
            setup("nginx pair", &[40.0]),
        ];
        let s = summarize(&results);
        let r: Vec<_> = s.throughput_rps.iter().map(|f| f.ratio_to_direct).collect();
        assert_eq!(r, [Some(1.0), Some(0.25), Some(0.2)]);
        assert_eq!(s.tcp_mb_per_s[2].na.as_deref(), Some("no stream module"));
        assert_eq!(s.tcp_mb_per_s[1].na.as_deref(), Some("not measured"));
        assert_eq!(thousands(51_703.6), "51,704");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(signed(-1234.0), "-1,234");
        // A skein setup without its telemetry-off twin: the cost is n/a, and says why.
        let t = s.telemetry_cost.unwrap();
        assert_eq!(t.increase_pct, None);
        assert!(t.na.unwrap().contains("did not run"));
        // No skein setup at all: no telemetry section.
        assert!(summarize(&results[..1]).telemetry_cost.is_none());
    }

    #[test]
    fn the_namespaced_pair_is_compared_with_its_own_direct() {
        let setup = |kind: Kind, rps: f64, p99: u64| {
            let mut r = SetupResults {
                setup: kind.name().into(),
                baseline: kind.baseline().map(|k| k.name().to_string()),
                throughput: vec![WrkReport {
                    rps,
                    ..WrkReport::default()
                }],
                ..SetupResults::default()
            };
            let runs = [p99, p99 * 2].map(|p99_us| crate::load::LoadReport {
                p50_us: 100,
                p99_us,
                p999_us: p99_us * 3,
                ..Default::default()
            });
            r.latency.insert(1000, runs.to_vec());
            r
        };
        let results = [
            setup(Kind::Direct, 100.0, 200),
            setup(Kind::Skein, 25.0, 500),
            setup(Kind::DirectNs, 80.0, 300),
            setup(Kind::SkeinNs, 40.0, 900),
        ];
        let s = summarize(&results);
        assert_eq!(s.baselines, [0, 0, 2, 2]);
        let r: Vec<_> = s.throughput_rps.iter().map(|f| f.ratio_to_direct).collect();
        assert_eq!(r, [Some(1.0), Some(0.25), Some(1.0), Some(0.5)]);
        let ns = s.latency[0].setups[3].as_ref().unwrap();
        // p99: the median of 900 and 1,800 against the median of 300 and 600.
        assert_eq!(ns.us[P99], 1350.0);
        assert_eq!(ns.added_us[P99], 1350.0 - 450.0);
        assert_eq!(ns.added_us[3], 4050.0 - 1350.0, "p99.9");
        assert_eq!(ns.p99_spread, Some(2.0));
        let mut o = String::new();
        headline(&mut o, &s);
        assert!(
            o.contains("| skein | skein (namespaces), against direct (namespaces) |"),
            "{o}"
        );
        assert!(
            o.contains("| HTTP/1.1 max throughput | 0.25× | 0.50× |"),
            "{o}"
        );
        assert!(
            o.contains("| added p99 latency at 1,000 RPS | +450 µs | +900 µs |"),
            "{o}"
        );
        let mut o = String::new();
        latency_table(&mut o, &s);
        assert!(
            o.contains("| | p99 max÷min | 2.00× | 2.00× |  | 2.00× | 2.00× |  |"),
            "{o}"
        );
    }

    #[test]
    fn telemetry_cost_compares_the_two_skein_pairs() {
        let proxy = |cpu: f64, requests: u64| ProxyUsage {
            http_cpu_secs: cpu,
            http_requests: requests,
            ..ProxyUsage::default()
        };
        let setup = |kind: Kind, proxies: Vec<ProxyUsage>| SetupResults {
            setup: kind.name().into(),
            proxies,
            ..SetupResults::default()
        };
        let direct = setup(Kind::Direct, Vec::new());
        // 1.5 + 1.0 = 2.5 CPU s per 1,000 requests with telemetry, 1.2 + 0.8 = 2.0
        // without: +25 %.
        let on = setup(Kind::Skein, vec![proxy(3.0, 2000), proxy(2.0, 2000)]);
        let off = setup(
            Kind::SkeinTelemetryOff,
            vec![proxy(3.6, 3000), proxy(2.4, 3000)],
        );
        let nginx = setup(Kind::Nginx, vec![proxy(1.0, 1000), proxy(1.0, 1000)]);
        assert_eq!(cpu_per_1k_requests(&direct), None);
        assert_eq!(cpu_per_1k_requests(&nginx), Some(2.0));

        // Tracing off: 1.2 + 1.1 = 2.3 CPU s per 1,000 requests; tracing on costs +8.7 %.
        let tracing_off = setup(
            Kind::SkeinTracingOff,
            vec![proxy(2.4, 2000), proxy(2.2, 2000)],
        );
        let results = [direct.clone(), on.clone(), nginx.clone(), off, tracing_off];
        let s = summarize(&results);
        let tr = s.tracing_cost.clone().unwrap();
        assert!((tr.off.unwrap() - 2.3).abs() < 1e-9);
        assert!((tr.increase_pct.unwrap() - (2.5 / 2.3 - 1.0) * 100.0).abs() < 1e-9);
        let mut o = String::new();
        tracing_section(&mut o, &s);
        assert!(
            o.contains("| CPU s per 1,000 requests (both proxies) | 2.5000 | 2.3000 | +8.7% |"),
            "{o}"
        );
        let t = s.telemetry_cost.clone().unwrap();
        assert!((t.on.unwrap() - 2.5).abs() < 1e-9);
        assert!((t.off.unwrap() - 2.0).abs() < 1e-9);
        assert!((t.increase_pct.unwrap() - 25.0).abs() < 1e-9);
        assert!(t.na.is_none());
        let mut o = String::new();
        telemetry_section(&mut o, &s);
        assert!(o.contains("### Telemetry cost"), "{o}");
        assert!(
            o.contains("| CPU s per 1,000 requests (both proxies) | 2.5000 | 2.0000 | +25.0% |"),
            "{o}"
        );

        // Without the telemetry-off pair: n/a, with the reason.
        let s = summarize(&[direct, on, nginx]);
        let t = s.telemetry_cost.clone().unwrap();
        assert_eq!(t.increase_pct, None);
        assert!(t.na.as_deref().unwrap().contains("did not run"));
        let mut o = String::new();
        telemetry_section(&mut o, &s);
        assert!(o.contains("Telemetry cost: n/a"), "{o}");
    }
}
