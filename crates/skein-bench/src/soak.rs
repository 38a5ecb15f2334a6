//! `skein-bench soak`: whether the mesh holds steady over a long run. It starts
//! `skein demo` (a control plane in the demo's own process, four applications each behind
//! its own `skein proxy`, and the demo's steady traffic generator), and every `--sample`
//! for `--duration` reads, for every process of the demo's tree (found by walking parent
//! ids in `/proc`), its resident memory (`VmRSS`, and `RssAnon`, `Threads`, from
//! `/proc/PID/status`) and its open file descriptors (the entries of `/proc/PID/fd`), and
//! scrapes every proxy's `/metrics`.
//!
//! Requests are counted from the proxies' own counters (`skein_requests_total`, and
//! `skein_proxy_errors_total` by reason), folded scrape by scrape so that a series the
//! proxy lets go of while idle (`telemetry.idleSeries`) and creates again is still
//! counted once; and from the demo's traffic generator (`ok=N failed=M`). A request is
//! failed when its status is 400 or more or the mesh answered it itself (`error` set).
//!
//! The verdict per process, after a warm-up (a tenth of the run, at most 2 minutes; for
//! the demo's own process, which hosts the control plane, until its bounded stores are
//! full too, since a bounded store filling is not a leak: its trace store, see
//! [`store_full_at`], and its hour of golden signals, see [`history_full_at`]; with less
//! than [`MIN_SETTLED`] of the run left after that, it is not judged):
//! growth of memory when the least-squares slope of its RSS over the second half of the
//! run exceeds [`RSS_SLOPE_LIMIT_KIB_PER_HOUR`] and its RSS at the end exceeds its RSS
//! after the warm-up by more than [`RSS_RISE_LIMIT_KIB`]; growth of descriptors when the
//! fewest it held in the last third of the run are more than the most it held in the
//! first third after the warm-up, and the median climbs from third to third (so that a
//! connection pool that grows once is not a leak). The run fails (exit status 1) on
//! growth, on a process that exits, and on any failed request or proxy error.
//!
//! The demo runs as `skein demo` does on the machine: as root, each application in a
//! network namespace of its own on 198.18.N.0/24 (`skein run`), otherwise, or with
//! `--loopback`, on 127.0.N.0/24; N is `--net` (93 unless told: not the demo's default 77,
//! nor a network the tests use). The report names the shape that ran. Every request goes to
//! those addresses; the demo is stopped as Ctrl-C stops it (SIGINT: it stops its
//! applications in order and removes its files), and its process group killed after.
//!
//! Written to `--out` (default a new directory under `$TMPDIR`, kept and printed):
//! `soak.json` (the report), `samples.csv` (every reading of every process),
//! `counters.csv` (each proxy's request counts at each sample), `control.csv` (the control
//! plane's trace store at each sample: what its process's memory follows while the store
//! fills), `demo.log` and the demo's own logs (`demo-logs/`, copied before it stops).

use crate::procs::{self, Proc};
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What `skein-bench soak` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to sample, from the moment the demo's traffic flows.
    pub duration: Duration,
    /// How often.
    pub sample: Duration,
    /// The `skein` binary.
    pub skein: PathBuf,
    /// Where to write the report and the raw samples.
    pub out: Option<PathBuf>,
    /// The demo's traffic, requests per second.
    pub rps: u32,
    /// The demo's network number (127.0.N.0/24 or 198.18.N.0/24).
    pub net: u8,
    /// Run the demo on loopback even as root.
    pub loopback: bool,
    /// The command line, for the report.
    pub command: String,
}

/// RSS slope (least squares over the second half of the run) above which a process may
/// be growing: 1 MiB per hour.
pub const RSS_SLOPE_LIMIT_KIB_PER_HOUR: f64 = 1024.0;
/// How much more RSS than after the warm-up a process must hold at the end to be called
/// growing, with the slope: 2 MiB.
pub const RSS_RISE_LIMIT_KIB: f64 = 2048.0;
/// The warm-up is a tenth of the run, at most this.
const WARM_UP_MAX: Duration = Duration::from_secs(120);
/// How long the demo may take to start every application and its traffic.
const READY_WITHIN: Duration = Duration::from_secs(180);
/// How long the demo may take to stop after SIGINT (it drains each proxy, up to 8 s each).
const STOP_WITHIN: Duration = Duration::from_secs(90);
/// Readings a process needs after the warm-up to be judged (fewer: a short-lived helper).
const MIN_SAMPLES: usize = 3;

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    /// Seconds since sampling began.
    t: f64,
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
}

/// Every reading of one process, under the name its command line gives it.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    readings: Vec<Reading>,
}

/// The run's time line, in seconds since sampling began.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Readings before this are the warm-up.
    warm_up: f64,
    /// The second half of the run starts here.
    half: f64,
    /// The last sample was taken here.
    end: f64,
    /// Seconds between samples.
    sample: f64,
}

/// What one process did over the run, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSummary {
    /// From its command line (and the workload it runs for).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Readings after the warm-up.
    pub samples: usize,
    /// When it was first and last seen, s since sampling began.
    pub first_s: f64,
    /// See `first_s`.
    pub last_s: f64,
    /// RSS at the first reading after the warm-up, KiB.
    pub rss_start_kib: u64,
    /// RSS at its last reading, KiB.
    pub rss_end_kib: u64,
    /// The most RSS seen after the warm-up, KiB.
    pub rss_max_kib: u64,
    /// Private (anonymous) RSS after the warm-up and at the end, KiB.
    pub anon_start_kib: u64,
    /// See `anon_start_kib`.
    pub anon_end_kib: u64,
    /// Least-squares slope of RSS over every reading after the warm-up, KiB per hour.
    pub rss_slope_kib_per_hour: Option<f64>,
    /// The same over the second half of the run: what the verdict reads.
    pub rss_slope_second_half_kib_per_hour: Option<f64>,
    /// Open file descriptors after the warm-up: fewest, most, at the end.
    pub fd_min: u64,
    /// See `fd_min`.
    pub fd_max: u64,
    /// See `fd_min`.
    pub fd_end: u64,
    /// Least-squares slope of open descriptors after the warm-up, per hour.
    pub fd_slope_per_hour: Option<f64>,
    /// `steady`, or what is wrong: `rss growth`, `fd growth`, `exited`; `not judged`
    /// for a process seen too briefly.
    pub verdict: Vec<String>,
}

impl ProcessSummary {
    /// Whether its verdict fails the run.
    fn failed(&self) -> bool {
        self.verdict
            .iter()
            .any(|v| v != "steady" && !v.starts_with("not judged"))
    }
}

/// The least-squares slope of `y` over `x`; `None` for fewer than two distinct `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Slope of `value` per hour over `readings` (their `t` in seconds).
fn per_hour(readings: &[Reading], value: impl Fn(&Reading) -> u64) -> Option<f64> {
    let points: Vec<(f64, f64)> = readings.iter().map(|r| (r.t, value(r) as f64)).collect();
    slope(&points).map(|s| s * 3600.0)
}

/// Memory growth: a second-half slope above the limit and an end above the start by more
/// than the limit.
fn rss_grows(second_half_slope: Option<f64>, start_kib: u64, end_kib: u64) -> bool {
    second_half_slope.is_some_and(|s| s > RSS_SLOPE_LIMIT_KIB_PER_HOUR)
        && end_kib as f64 - start_kib as f64 > RSS_RISE_LIMIT_KIB
}

/// Descriptor growth: over thirds of the readings' time span, the fewest descriptors of
/// the last third are more than the most of the first, and the median rises from each
/// third to the next. Connections come and go, so the count moves; a pool that grows once
/// moves it up one step, which lifts at most one of the medians; a leak lifts the floor
/// past where the count ever was early on, and keeps climbing.
fn fds_grow(readings: &[Reading]) -> bool {
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return false;
    };
    let third = (last.t - first.t) / 3.0;
    if third <= 0.0 {
        return false;
    }
    let part = |from: f64, to: f64| -> Vec<u64> {
        let mut v: Vec<u64> = readings
            .iter()
            .filter(|r| r.t >= from && (r.t < to || to >= last.t))
            .map(|r| r.fds)
            .collect();
        v.sort_unstable();
        v
    };
    let (a, b, c) = (
        part(first.t, first.t + third),
        part(first.t + third, first.t + 2.0 * third),
        part(first.t + 2.0 * third, last.t),
    );
    // The lower median: always a count that was seen.
    let median = |v: &[u64]| v[(v.len() - 1) / 2];
    if a.is_empty() || b.is_empty() || c.is_empty() {
        return false;
    }
    c[0] > a[a.len() - 1] && median(&a) < median(&b) && median(&b) < median(&c)
}

/// The summary and verdict of one process.
fn summarize(pid: u32, series: &Series, w: Window) -> Option<ProcessSummary> {
    let all = &series.readings;
    let (first, last) = (all.first()?, all.last()?);
    let post: Vec<Reading> = all.iter().copied().filter(|r| r.t >= w.warm_up).collect();
    // Seen only during the warm-up: judged on what there is.
    let judged = if post.is_empty() { all.clone() } else { post };
    let second: Vec<Reading> = judged.iter().copied().filter(|r| r.t >= w.half).collect();
    let start = judged.first()?;
    let end = judged.last()?;
    let mut s = ProcessSummary {
        name: series.name.clone(),
        pid,
        samples: judged.len(),
        first_s: first.t,
        last_s: last.t,
        rss_start_kib: start.rss_kib,
        rss_end_kib: end.rss_kib,
        rss_max_kib: judged.iter().map(|r| r.rss_kib).max().unwrap_or(0),
        anon_start_kib: start.anon_kib,
        anon_end_kib: end.anon_kib,
        rss_slope_kib_per_hour: per_hour(&judged, |r| r.rss_kib),
        rss_slope_second_half_kib_per_hour: per_hour(&second, |r| r.rss_kib),
        fd_min: judged.iter().map(|r| r.fds).min().unwrap_or(0),
        fd_max: judged.iter().map(|r| r.fds).max().unwrap_or(0),
        fd_end: end.fds,
        fd_slope_per_hour: per_hour(&judged, |r| r.fds),
        verdict: Vec::new(),
    };
    if judged.len() < MIN_SAMPLES || last.t < w.warm_up {
        s.verdict.push("not judged".into());
        return Some(s);
    }
    if rss_grows(
        s.rss_slope_second_half_kib_per_hour,
        s.rss_start_kib,
        s.rss_end_kib,
    ) {
        s.verdict.push("rss growth".into());
    }
    if fds_grow(&judged) {
        s.verdict.push("fd growth".into());
    }
    // Gone more than a sample and a half before the end.
    if last.t < w.end - 1.5 * w.sample {
        s.verdict
            .push(format!("exited (last seen at {:.0} s)", last.t));
    }
    if s.verdict.is_empty() {
        s.verdict.push("steady".into());
    }
    Some(s)
}

/// What the demo printed as it started, from its log.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
struct DemoInfo {
    /// `network namespaces (skein run)` or `loopback`.
    shape: String,
    /// Why the demo ran on loopback, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    loopback_because: Option<String>,
    /// The control plane's HTTP API.
    control: Option<String>,
    /// The control plane's data directory (where its admin token is).
    data_dir: Option<String>,
    /// Each workload's proxy and its admin listener.
    proxies: Vec<(String, SocketAddr)>,
    /// The traffic line came: every application is up and traffic flows.
    ready: bool,
}

/// Reads [`DemoInfo`] from the demo's output (either shape's).
fn parse_demo(log: &str) -> DemoInfo {
    let mut info = DemoInfo::default();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("skein demo: on loopback (") {
            info.loopback_because = rest.split_once(')').map(|(why, _)| why.to_string());
        } else if line.starts_with("skein demo: starting") {
            info.shape = if line.contains("network namespace") {
                "network namespaces (skein run)".into()
            } else {
                "loopback".into()
            };
        }
        if info.data_dir.is_none() {
            info.data_dir = line
                .split_once("--data-dir ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_string);
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("control"), _) => {
                info.control = line
                    .split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .map(str::to_string);
            }
            (Some("proxy" | "app"), Some(name)) => {
                let admin = line
                    .split("http://")
                    .nth(1)
                    .and_then(|rest| rest.split_once("/metrics"))
                    .and_then(|(addr, _)| addr.parse().ok());
                if let Some(admin) = admin {
                    info.proxies.push((name.to_string(), admin));
                }
            }
            (Some("traffic"), Some(_)) if line.contains("req/s") => info.ready = true,
            _ => {}
        }
    }
    info
}

/// The last `ok=N failed=M` the demo printed (its traffic generator's counts, from the
/// start of its traffic).
fn last_counts(log: &str) -> Option<(u64, u64)> {
    log.lines().rev().find_map(|line| {
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((value("ok=")?, value("failed=")?))
    })
}

/// A name for a process from its arguments, and the workload it is for when they say;
/// a process that does not say belongs to its parent's workload.
fn describe(args: &[String]) -> (String, Option<String>) {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let Some(program) = args.first().map(|a| base(a)) else {
        return ("?".into(), None);
    };
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if program != "skein" {
        let label = match args.get(1) {
            Some(a) if !a.starts_with('-') => format!("{program} {}", base(a)),
            _ => program,
        };
        return (label, None);
    }
    match args.get(1).map(String::as_str) {
        Some("demo") => ("skein demo (control plane)".into(), None),
        Some("proxy") => {
            // The loopback demo's proxies read `DIR/NAME.yaml`; `skein run`'s read stdin.
            let workload = after("--config")
                .filter(|c| c != "-")
                .map(|c| base(&c).trim_end_matches(".yaml").to_string());
            ("skein proxy".into(), workload)
        }
        Some("run") => ("skein run".into(), after("--service")),
        Some("demo-app") => ("skein demo-app".into(), args.get(2).cloned()),
        Some(sub) => (format!("skein {sub}"), None),
        None => ("skein".into(), None),
    }
}

/// `label` with its workload: `skein proxy frontend`, `sleep infinity (frontend)`.
fn display_name(label: &str, workload: Option<&str>) -> String {
    match workload {
        Some(w) if label.starts_with("skein ") => format!("{label} {w}"),
        Some(w) => format!("{label} ({w})"),
        None => label.to_string(),
    }
}

/// Every process of `root`'s tree now: pid, name, and its reading (skipped when it
/// exits while being read, or is a zombie).
fn snapshot(root: u32, t: f64) -> Vec<(u32, String, Reading, u64)> {
    let mut workload_of: HashMap<u32, Option<String>> = HashMap::new();
    let mut out = Vec::new();
    for pid in procs::family(root) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = procs::parse_stat(&stat).map_or(0, |(ppid, _)| ppid);
        let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let (label, own) = describe(&args);
        let workload = own.or_else(|| workload_of.get(&ppid).cloned().flatten());
        workload_of.insert(pid, workload.clone());
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let Some(reading) = read_status(&status, t) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let reading = Reading {
            fds: fds.count() as u64,
            ..reading
        };
        let threads = procs::status_kib(&status, "Threads").unwrap_or(0);
        out.push((
            pid,
            display_name(&label, workload.as_deref()),
            reading,
            threads,
        ));
    }
    out
}

/// RSS and private RSS from `/proc/PID/status` (none for a zombie, which has no memory
/// lines); descriptors are counted apart.
fn read_status(status: &str, t: f64) -> Option<Reading> {
    Some(Reading {
        t,
        rss_kib: procs::status_kib(status, "VmRSS")?,
        anon_kib: procs::status_kib(status, "RssAnon").unwrap_or(0),
        fds: 0,
    })
}

/// `GET path` on the control plane's HTTP API with the admin token: its JSON answer, if
/// it gave a `200`.
fn api_get(control: SocketAddr, token: &str, path: &str) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&control, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {control}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    serde_json::from_str(ok_body(&out)?).ok()
}

/// The control plane's trace store: traces kept and the bytes it counts them as, from
/// its API (`GET /api/v1/traces`, behind the admin token).
fn trace_store(control: SocketAddr, token: &str) -> Option<StoreReading> {
    let v = api_get(control, token, "/api/v1/traces?limit=1")?;
    Some(StoreReading {
        kept: v["kept"].as_u64()?,
        bytes: v["bytes"].as_u64()?,
        max_traces: v["limits"]["traces"].as_u64(),
        max_bytes: v["limits"]["bytes"].as_u64(),
    })
}

/// The control plane's history of golden signals, from `GET /api/v1/status`
/// (`telemetry`: how far back it goes, and how far back it keeps).
fn history(control: SocketAddr, token: &str) -> Option<(u64, u64)> {
    let v = api_get(control, token, "/api/v1/status")?;
    let t = &v["telemetry"];
    Some((t["seconds"].as_u64()?, t["windowSeconds"].as_u64()?))
}

/// When the control plane's history of golden signals first reached back its whole window
/// (less two 10-second slots), s since sampling began: until then it grows by a slot's
/// series every 10 s.
fn history_full_at(readings: &[(f64, u64, u64)]) -> Option<f64> {
    readings
        .iter()
        .find(|(_, seconds, window)| *window > 0 && seconds + 20 >= *window)
        .map(|(t, _, _)| *t)
}

/// How much of the run must be left, once the control plane's bounded stores are full,
/// for its process to be judged.
const MIN_SETTLED: f64 = 600.0;

/// One reading of the control plane's trace store, with its limits (from a control plane
/// that says them).
#[derive(Debug, Clone, Copy, PartialEq)]
struct StoreReading {
    kept: u64,
    bytes: u64,
    max_traces: Option<u64>,
    max_bytes: Option<u64>,
}

impl StoreReading {
    /// At 99 % of either limit (the store evicts down to just under a limit, by at most
    /// one trace): from here on it evicts as much as it takes in, so its memory no longer
    /// grows.
    fn full(&self) -> bool {
        let near = |v: u64, max: Option<u64>| max.is_some_and(|m| m > 0 && v * 100 >= m * 99);
        near(self.kept, self.max_traces) || near(self.bytes, self.max_bytes)
    }
}

/// When the demo process is judged from: once both bounded stores are full, if that
/// leaves [`MIN_SETTLED`] of the run; `None` (not judged) otherwise.
fn settled_at(trace_full: Option<f64>, history_full: Option<f64>, w: Window) -> Option<f64> {
    let at = match (trace_full, history_full) {
        (Some(a), Some(b)) => a.max(b),
        _ => return None,
    }
    .max(w.warm_up);
    (w.end - at >= MIN_SETTLED).then_some(at)
}

/// When the trace store first read full (s since sampling began), if it did. The demo's
/// process is judged from then: until then its memory grows by what the store takes in,
/// up to the store's limit, which is the store working as documented. Growth after it is
/// full is what a leak would be.
fn store_full_at(readings: &[(f64, StoreReading)]) -> Option<f64> {
    readings.iter().find(|(_, r)| r.full()).map(|(t, _)| *t)
}

/// The control plane's trace store over the run, beside the demo process's memory: the
/// store fills (at most 10,000 traces or 64 MiB as it counts them, docs/telemetry.md),
/// and the process that hosts it grows with it until it is full.
#[derive(Debug, Clone, Serialize)]
pub struct TraceStore {
    /// Traces kept after the warm-up and at the end.
    pub kept_start: u64,
    /// See `kept_start`.
    pub kept_end: u64,
    /// Bytes the store counts them as, after the warm-up and at the end.
    pub bytes_start: u64,
    /// See `bytes_start`.
    pub bytes_end: u64,
    /// Its limits, as the control plane states them.
    pub max_traces: Option<u64>,
    /// See `max_traces`.
    pub max_bytes: Option<u64>,
    /// When it first read full (99 % of a limit), s since sampling began: the demo's
    /// process is judged from then.
    pub full_at_s: Option<f64>,
    /// The demo process's RSS growth from the warm-up until the store was full (or the
    /// end) divided by the store's counted growth over the same time: how much memory
    /// each byte it counts takes (when the store grew).
    pub rss_growth_per_counted_byte: Option<f64>,
}

/// One proxy's counters, summed scrape by scrape.
#[derive(Debug, Default, Clone)]
struct CounterFold {
    /// Each series' value at the last scrape.
    last: HashMap<String, f64>,
    /// The first good scrape sets the baseline: what came before the run is not counted.
    baselined: bool,
    /// Each series' growth since the baseline.
    totals: BTreeMap<String, f64>,
    /// Scrapes that failed.
    failed_scrapes: u32,
}

impl CounterFold {
    /// Adds one scrape: each series' growth since the last scrape; a series that is new,
    /// or smaller than before (let go of and made again), counts from zero. A series
    /// missing from this scrape is forgotten, so that it counts from zero if it returns.
    fn observe(&mut self, now: Vec<(String, f64)>) {
        let mut next = HashMap::with_capacity(now.len());
        for (key, value) in now {
            let grew = match self.last.get(&key) {
                Some(before) if value >= *before => value - before,
                _ => value,
            };
            if self.baselined && grew > 0.0 {
                *self.totals.entry(key.clone()).or_default() += grew;
            }
            next.insert(key, value);
        }
        self.last = next;
        self.baselined = true;
    }
}

/// The families the soak counts.
const FAMILIES: [&str; 3] = [
    "skein_requests_total",
    "skein_proxy_errors_total",
    "skein_tcp_edge_opened_total",
];

/// Samples of `families` in Prometheus text: (`name{labels}`, value).
fn samples(text: &str, families: &[&str]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| {
            families.iter().any(|f| {
                l.strip_prefix(f)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
        })
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The family and labels of `name{a="x",b="y"}`.
fn labels(key: &str) -> (&str, BTreeMap<String, String>) {
    let Some((name, rest)) = key.split_once('{') else {
        return (key.trim(), BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let label = label.trim_start_matches(',').trim().to_string();
        if label.is_empty() || label.starts_with('}') || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(label, value);
    }
    (name, out)
}

/// A request series whose requests failed: status 400 or more, or answered by the mesh.
fn is_failure(labels: &BTreeMap<String, String>) -> bool {
    let status = labels
        .get("status_code")
        .and_then(|s| s.parse::<u16>().ok());
    status.is_none_or(|s| s >= 400) || labels.get("error").is_some_and(|e| !e.is_empty())
}

/// One proxy's counts over the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProxyCounts {
    /// The workload.
    pub proxy: String,
    /// Its admin listener.
    pub admin: String,
    /// Requests it served to its application's callers (`direction="inbound"`).
    pub inbound_requests: u64,
    /// Of them, failed.
    pub inbound_failed: u64,
    /// Requests its application made (`direction="outbound"`).
    pub outbound_requests: u64,
    /// Of them, failed.
    pub outbound_failed: u64,
    /// Opaque TCP connections it opened, both directions.
    pub tcp_connections: u64,
    /// `skein_proxy_errors_total`, all reasons.
    pub proxy_errors: u64,
    /// Scrapes of `/metrics` that failed.
    pub failed_scrapes: u32,
}

/// A series that counted failures, with its labels.
#[derive(Debug, Clone, Serialize)]
pub struct FailedSeries {
    /// Which proxy counted it.
    pub proxy: String,
    /// `skein_requests_total` or `skein_proxy_errors_total`.
    pub family: String,
    /// Its labels (direction, services, status, error or reason).
    pub labels: BTreeMap<String, String>,
    /// How many over the run.
    pub count: u64,
}

/// Counts of one proxy, and its failed series, from its fold.
fn proxy_counts(
    proxy: &str,
    admin: SocketAddr,
    fold: &CounterFold,
) -> (ProxyCounts, Vec<FailedSeries>) {
    let mut c = ProxyCounts {
        proxy: proxy.to_string(),
        admin: admin.to_string(),
        failed_scrapes: fold.failed_scrapes,
        ..Default::default()
    };
    let mut failed = Vec::new();
    for (key, value) in &fold.totals {
        let n = value.round() as u64;
        let (family, labels) = labels(key);
        let inbound = labels.get("direction").is_some_and(|d| d == "inbound");
        match family {
            "skein_requests_total" => {
                let bad = is_failure(&labels);
                match (inbound, bad) {
                    (true, false) => c.inbound_requests += n,
                    (true, true) => {
                        c.inbound_requests += n;
                        c.inbound_failed += n;
                    }
                    (false, false) => c.outbound_requests += n,
                    (false, true) => {
                        c.outbound_requests += n;
                        c.outbound_failed += n;
                    }
                }
                if bad && n > 0 {
                    failed.push(FailedSeries {
                        proxy: proxy.to_string(),
                        family: family.to_string(),
                        labels,
                        count: n,
                    });
                }
            }
            "skein_proxy_errors_total" => {
                c.proxy_errors += n;
                if n > 0 {
                    failed.push(FailedSeries {
                        proxy: proxy.to_string(),
                        family: family.to_string(),
                        labels,
                        count: n,
                    });
                }
            }
            "skein_tcp_edge_opened_total" => c.tcp_connections += n,
            _ => {}
        }
    }
    (c, failed)
}

/// Requests and failures over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    /// Requests the traffic application made (its proxy's outbound requests): each is
    /// one request end to end (traffic → frontend → restaurant, and a TCP connection
    /// frontend → ledger).
    pub end_to_end: u64,
    /// Of them, failed.
    pub end_to_end_failed: u64,
    /// End-to-end requests per second over the sampled time.
    pub end_to_end_per_s: f64,
    /// Requests counted by every proxy, in both directions (a request end to end is
    /// counted four times: out of traffic, into frontend, out of frontend, into
    /// restaurant).
    pub all_hops: u64,
    /// Of them, failed.
    pub all_hops_failed: u64,
    /// The demo's traffic generator over the sampled time: answered `200`, failed.
    pub generator_ok: u64,
    /// See `generator_ok`.
    pub generator_failed: u64,
    /// The generator's counts over the demo's whole life (warm-up and stop included).
    pub generator_ok_whole_run: u64,
    /// See `generator_ok_whole_run`.
    pub generator_failed_whole_run: u64,
    /// Per proxy.
    pub per_proxy: Vec<ProxyCounts>,
    /// Every series that counted a failed request or a proxy error.
    pub failures: Vec<FailedSeries>,
}

/// The whole report, as `soak.json` holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `YYYY-MM-DD HH:MM UTC` when the run began.
    pub date: String,
    /// The command.
    pub command: String,
    /// Commit of the work tree when the run began (`+dirty` with changes), when the
    /// bench runs from one.
    pub commit: String,
    /// CPU model and cores.
    pub cpu_model: String,
    /// See `cpu_model`.
    pub cores: usize,
    /// Sampled time, s.
    pub duration_s: f64,
    /// Seconds between samples.
    pub sample_s: f64,
    /// The warm-up, s: readings before it are left out of the figures.
    pub warm_up_s: f64,
    /// How the demo ran (namespaces or loopback) and where.
    pub demo_shape: String,
    /// Why it ran on loopback, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo_loopback_because: Option<String>,
    /// The demo's control plane (in the demo's process).
    pub control: Option<String>,
    /// Its trace store, when its API answered.
    pub trace_store: Option<TraceStore>,
    /// When its history of golden signals first went back its whole window (an hour),
    /// s since sampling began; and how far back it went at the end, s.
    pub history_full_at_s: Option<f64>,
    /// See `history_full_at_s`.
    pub history_end_s: Option<u64>,
    /// When the demo process (the control plane) is judged from: both bounded stores
    /// full; `None`: not judged.
    pub control_plane_judged_from_s: Option<f64>,
    /// The demo's traffic, requests per second.
    pub rps: u32,
    /// The growth thresholds.
    pub rss_slope_limit_kib_per_hour: f64,
    /// See `rss_slope_limit_kib_per_hour`.
    pub rss_rise_limit_kib: f64,
    /// Per process, in the order of the tree.
    pub processes: Vec<ProcessSummary>,
    /// All processes summed: RSS after the warm-up and at the end, KiB.
    pub total_rss_start_kib: u64,
    /// See `total_rss_start_kib`.
    pub total_rss_end_kib: u64,
    /// Requests and failures.
    pub requests: Requests,
    /// Unexplained failures: failed requests on any proxy, proxy errors, failures the
    /// generator counted.
    pub unexplained_failures: u64,
    /// Processes whose verdict fails the run.
    pub flagged: Vec<String>,
    /// No growth, no exit, no failure.
    pub passed: bool,
    /// Where the files are.
    pub out: String,
}

/// `skein demo`, stopped the way Ctrl-C stops it when dropped.
struct Demo {
    proc: Proc,
    stopped: bool,
}

impl Demo {
    /// SIGINT, then wait for it to stop its applications; true if it exited in time.
    fn stop(&mut self) -> bool {
        self.stopped = true;
        self.proc.interrupt(STOP_WITHIN)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
        // The `Proc` then stops whatever is left of its process group.
    }
}

/// Writes CSV rows as they come, so that a run that fails keeps what it read.
struct Csv {
    file: std::io::BufWriter<std::fs::File>,
}

impl Csv {
    fn create(path: &Path, header: &str) -> anyhow::Result<Csv> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut csv = Csv {
            file: std::io::BufWriter::new(file),
        };
        writeln!(csv.file, "{header}")?;
        Ok(csv)
    }

    fn row(&mut self, row: std::fmt::Arguments) -> anyhow::Result<()> {
        self.file.write_fmt(row)?;
        self.file.write_all(b"\n")?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.file.flush()?)
    }
}

/// A name in a CSV cell.
fn cell(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The body of an HTTP/1.0 answer, if it is a `200`.
fn ok_body(response: &str) -> Option<&str> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"))
        .then_some(body)
}

/// Copies the demo's logs (its directory is removed when it stops).
fn copy_logs(demo_pid: u32, to: &Path) {
    let from = std::env::temp_dir().join(format!("skein-demo-{demo_pid}"));
    let Ok(entries) = std::fs::read_dir(&from) else {
        return;
    };
    if std::fs::create_dir_all(to).is_err() {
        return;
    }
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "log") {
            let _ = std::fs::copy(&path, to.join(e.file_name()));
        }
    }
}

/// Runs the soak; prints the table and returns the report (check `passed`).
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.sample < Duration::from_secs(1) {
        bail!("--sample must be 1s or more");
    }
    if opts.duration < opts.sample * 6 {
        bail!("--duration must be at least six samples long");
    }
    if opts.duration > Duration::from_secs(7 * 24 * 3600) {
        bail!("--duration must be at most a week");
    }
    let (date, stamp) = crate::report::utc_now();
    let commit = crate::run::workspace_root()
        .map(|r| crate::run::git_commit(&r))
        .unwrap_or_else(|_| "unknown commit".into());
    let out = match &opts.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("skein-soak-{stamp}")),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    eprintln!("soak: writing to {}", out.display());

    let demo_log = out.join("demo.log");
    // The demo outlives the sampling by a margin; the soak stops it.
    let demo_for = opts.duration + Duration::from_secs(300);
    let mut cmd = Command::new(&opts.skein);
    cmd.arg("demo")
        .args(["--duration", &skein_model::duration::format(demo_for)])
        .args(["--rps", &opts.rps.to_string()])
        .args(["--net", &opts.net.to_string()])
        .env_remove("RUST_LOG");
    if opts.loopback {
        cmd.arg("--loopback");
    }
    let proc = Proc::spawn("skein demo", cmd, &demo_log)?.with_grace(Duration::from_secs(10));
    let mut demo = Demo {
        proc,
        stopped: false,
    };
    let demo_pid = demo.proc.pid();

    let started = Instant::now();
    let info = loop {
        let info = parse_demo(&std::fs::read_to_string(&demo_log).unwrap_or_default());
        if info.ready {
            break info;
        }
        demo.proc.check_alive()?;
        if started.elapsed() > READY_WITHIN {
            bail!(
                "skein demo was not running traffic within {READY_WITHIN:?}; its output ends with:\n{}",
                demo.proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if info.proxies.is_empty() {
        bail!(
            "skein demo printed no proxy admin address:\n{}",
            demo.proc.log_tail()
        );
    }
    eprintln!(
        "soak: skein demo (pid {demo_pid}) up in {:.1} s on {}{}; control plane {}; proxies: {}",
        started.elapsed().as_secs_f64(),
        info.shape,
        info.loopback_because
            .as_ref()
            .map_or(String::new(), |w| format!(" ({w})")),
        info.control.as_deref().unwrap_or("?"),
        info.proxies
            .iter()
            .map(|(n, a)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let warm_up = (opts.duration / 10).min(WARM_UP_MAX);
    eprintln!(
        "soak: sampling every {} for {} ({} warm-up); {} req/s of demo traffic",
        skein_model::duration::format(opts.sample),
        skein_model::duration::format(opts.duration),
        skein_model::duration::format(warm_up),
        opts.rps
    );

    let mut samples_csv = Csv::create(
        &out.join("samples.csv"),
        "t_s,pid,process,rss_kib,anon_kib,fds,threads",
    )?;
    let mut control_csv = Csv::create(
        &out.join("control.csv"),
        "t_s,traces_kept,trace_bytes,history_s",
    )?;
    let mut histories: Vec<(f64, u64, u64)> = Vec::new();
    let control_api: Option<(SocketAddr, String)> = info
        .control
        .as_deref()
        .and_then(|c| c.trim_start_matches("http://").parse().ok())
        .zip(
            info.data_dir
                .as_ref()
                .and_then(|d| std::fs::read_to_string(Path::new(d).join("admin.token")).ok()),
        )
        .map(|(addr, token)| (addr, token.trim().to_string()));
    let mut traces: Vec<(f64, StoreReading)> = Vec::new();
    let mut counters_csv = Csv::create(
        &out.join("counters.csv"),
        "t_s,proxy,inbound_requests,inbound_failed,outbound_requests,outbound_failed,tcp_connections,proxy_errors",
    )?;
    let mut series: BTreeMap<u32, Series> = BTreeMap::new();
    let mut order: Vec<u32> = Vec::new();
    let mut folds: Vec<CounterFold> = vec![CounterFold::default(); info.proxies.len()];
    let generator_at_start = last_counts(&std::fs::read_to_string(&demo_log).unwrap_or_default());

    let t0 = Instant::now();
    let steps = opts.duration.as_secs_f64() / opts.sample.as_secs_f64();
    let steps = steps.ceil() as u32;
    let progress_every = (60.0 / opts.sample.as_secs_f64()).ceil().max(1.0) as u32;
    for i in 0..=steps {
        let at = t0 + (opts.sample * i).min(opts.duration);
        tokio::time::sleep_until(at.into()).await;
        demo.proc.check_alive()?;
        let t = t0.elapsed().as_secs_f64();
        for (pid, name, reading, threads) in snapshot(demo_pid, t) {
            samples_csv.row(format_args!(
                "{t:.1},{pid},{},{},{},{},{threads}",
                cell(&name),
                reading.rss_kib,
                reading.anon_kib,
                reading.fds
            ))?;
            let s = series.entry(pid).or_insert_with(|| {
                order.push(pid);
                Series {
                    name: name.clone(),
                    readings: Vec::new(),
                }
            });
            // The latest name: a child read between fork and exec still had its parent's.
            s.name = name;
            s.readings.push(reading);
        }
        samples_csv.flush()?;
        for ((name, admin), fold) in info.proxies.iter().zip(folds.iter_mut()) {
            match crate::scale::http_get(*admin, "/metrics")
                .as_deref()
                .and_then(ok_body)
            {
                Some(body) => fold.observe(samples(body, &FAMILIES)),
                None => fold.failed_scrapes += 1,
            }
            let (c, _) = proxy_counts(name, *admin, fold);
            counters_csv.row(format_args!(
                "{t:.1},{},{},{},{},{},{},{}",
                cell(name),
                c.inbound_requests,
                c.inbound_failed,
                c.outbound_requests,
                c.outbound_failed,
                c.tcp_connections,
                c.proxy_errors
            ))?;
        }
        counters_csv.flush()?;
        if let Some((addr, token)) = control_api.as_ref() {
            let store = trace_store(*addr, token);
            let held = history(*addr, token);
            if let Some(store) = store {
                traces.push((t, store));
            }
            if let Some((seconds, window)) = held {
                histories.push((t, seconds, window));
            }
            if store.is_some() || held.is_some() {
                let field = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
                control_csv.row(format_args!(
                    "{t:.1},{},{},{}",
                    field(store.map(|s| s.kept)),
                    field(store.map(|s| s.bytes)),
                    field(held.map(|h| h.0))
                ))?;
                control_csv.flush()?;
            }
        }
        if i % progress_every == 0 || i == steps {
            let rss: u64 = series
                .values()
                .filter_map(|s| s.readings.last().filter(|r| r.t == t))
                .map(|r| r.rss_kib)
                .sum();
            let failed: u64 = info
                .proxies
                .iter()
                .zip(&folds)
                .map(|((n, a), f)| {
                    let (c, _) = proxy_counts(n, *a, f);
                    c.inbound_failed + c.outbound_failed + c.proxy_errors
                })
                .sum();
            eprintln!(
                "soak: [{:>5.0} s] {} processes, {:.1} MiB RSS in all; failures so far: {failed}",
                t,
                series
                    .values()
                    .filter(|s| s.readings.last().is_some_and(|r| r.t == t))
                    .count(),
                rss as f64 / 1024.0,
            );
        }
    }
    let sampled = t0.elapsed().as_secs_f64();
    let generator_at_end_of_sampling =
        last_counts(&std::fs::read_to_string(&demo_log).unwrap_or_default());

    copy_logs(demo_pid, &out.join("demo-logs"));
    eprintln!("soak: stopping skein demo (SIGINT, as Ctrl-C)");
    let stopped = demo.stop();
    drop(demo);
    if !stopped {
        eprintln!(
            "soak: skein demo did not stop within {STOP_WITHIN:?}; its process group was killed"
        );
    }
    let demo_text = std::fs::read_to_string(&demo_log).unwrap_or_default();
    let generator_final = last_counts(&demo_text).or(generator_at_end_of_sampling);

    let window = Window {
        warm_up: warm_up.as_secs_f64(),
        half: sampled / 2.0,
        end: sampled,
        sample: opts.sample.as_secs_f64(),
    };
    let full_at = store_full_at(&traces);
    let history_at = history_full_at(&histories);
    let settled = settled_at(full_at, history_at, window);
    let processes: Vec<ProcessSummary> = order
        .iter()
        .filter_map(|pid| {
            if *pid != demo_pid {
                return summarize(*pid, &series[pid], window);
            }
            let w = Window {
                warm_up: window.warm_up.max(settled.unwrap_or(window.end)),
                ..window
            };
            let mut s = summarize(*pid, &series[pid], w)?;
            if settled.is_none() {
                s.verdict = vec![format!(
                    "not judged: its bounded stores were full for less than {:.0} minutes of the run (trace store {}; golden-signal history {}); run longer",
                    MIN_SETTLED / 60.0,
                    full_at.map_or("never full".into(), |t| format!("full at {t:.0} s")),
                    history_at.map_or_else(
                        || format!("{:.0} of {:.0} minutes at the end", histories.last().map_or(0, |h| h.1) as f64 / 60.0, histories.last().map_or(3600, |h| h.2) as f64 / 60.0),
                        |t| format!("full at {t:.0} s")
                    ),
                )];
            }
            Some(s)
        })
        .collect();
    let mut per_proxy = Vec::new();
    let mut failures = Vec::new();
    for ((name, admin), fold) in info.proxies.iter().zip(&folds) {
        let (c, f) = proxy_counts(name, *admin, fold);
        per_proxy.push(c);
        failures.extend(f);
    }
    let traffic = per_proxy.iter().find(|c| c.proxy == "traffic");
    let (g0, g1) = (
        generator_at_start.unwrap_or((0, 0)),
        generator_final.unwrap_or((0, 0)),
    );
    let end_to_end = traffic.map_or(0, |c| c.outbound_requests);
    let requests = Requests {
        end_to_end,
        end_to_end_failed: traffic.map_or(0, |c| c.outbound_failed),
        end_to_end_per_s: end_to_end as f64 / sampled.max(1.0),
        all_hops: per_proxy
            .iter()
            .map(|c| c.inbound_requests + c.outbound_requests)
            .sum(),
        all_hops_failed: per_proxy
            .iter()
            .map(|c| c.inbound_failed + c.outbound_failed)
            .sum(),
        generator_ok: g1.0.saturating_sub(g0.0),
        generator_failed: g1.1.saturating_sub(g0.1),
        generator_ok_whole_run: g1.0,
        generator_failed_whole_run: g1.1,
        per_proxy,
        failures,
    };
    let trace_store = {
        let after = traces.iter().find(|(t, _)| *t >= window.warm_up);
        // Over the fill: from the warm-up until the store was full (or the end).
        let fill_end = full_at.unwrap_or(window.end);
        let at = |t: f64| traces.iter().find(|(u, _)| *u >= t).or(traces.last());
        let rss_at = |t: f64| {
            series
                .get(&demo_pid)
                .and_then(|s| s.readings.iter().find(|r| r.t >= t))
                .map(|r| r.rss_kib as f64 * 1024.0)
        };
        after.zip(traces.last()).map(|((_, a), (_, z))| {
            let counted = at(fill_end).map_or(0.0, |(_, f)| f.bytes as f64 - a.bytes as f64);
            TraceStore {
                kept_start: a.kept,
                kept_end: z.kept,
                bytes_start: a.bytes,
                bytes_end: z.bytes,
                max_traces: z.max_traces,
                max_bytes: z.max_bytes,
                full_at_s: full_at,
                rss_growth_per_counted_byte: rss_at(window.warm_up)
                    .zip(rss_at(fill_end))
                    .filter(|_| counted > 0.0)
                    .map(|(from, to)| ((to - from) / counted * 100.0).round() / 100.0),
            }
        })
    };
    let proxy_errors: u64 = requests.per_proxy.iter().map(|c| c.proxy_errors).sum();
    let unexplained = requests.all_hops_failed + proxy_errors + requests.generator_failed;
    let flagged: Vec<String> = processes
        .iter()
        .filter(|p| p.failed())
        .map(|p| format!("{} (pid {}): {}", p.name, p.pid, p.verdict.join(", ")))
        .collect();
    let unscraped: Vec<&str> = requests
        .per_proxy
        .iter()
        .filter(|c| c.failed_scrapes > 0)
        .map(|c| c.proxy.as_str())
        .collect();
    if !unscraped.is_empty() {
        eprintln!(
            "soak: some /metrics scrapes failed ({}); counts may miss requests",
            unscraped.join(", ")
        );
    }
    let judged = |p: &&ProcessSummary| !p.verdict.iter().any(|v| v.starts_with("not judged"));
    let report = Report {
        date,
        command: opts.command.clone(),
        commit,
        cpu_model: crate::run::cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        duration_s: sampled,
        sample_s: window.sample,
        warm_up_s: window.warm_up,
        demo_shape: match info.shape.as_str() {
            "loopback" => format!("loopback, 127.0.{}.0/24", opts.net),
            s => format!("{s}, 198.18.{}.0/24", opts.net),
        },
        demo_loopback_because: info.loopback_because.clone(),
        control: info.control.clone(),
        trace_store,
        history_full_at_s: history_at,
        history_end_s: histories.last().map(|h| h.1),
        control_plane_judged_from_s: settled,
        rps: opts.rps,
        rss_slope_limit_kib_per_hour: RSS_SLOPE_LIMIT_KIB_PER_HOUR,
        rss_rise_limit_kib: RSS_RISE_LIMIT_KIB,
        total_rss_start_kib: processes
            .iter()
            .filter(judged)
            .map(|p| p.rss_start_kib)
            .sum(),
        total_rss_end_kib: processes.iter().filter(judged).map(|p| p.rss_end_kib).sum(),
        processes,
        requests,
        unexplained_failures: unexplained,
        passed: flagged.is_empty() && unexplained == 0,
        flagged,
        out: out.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("soak.json"), &json)?;
    println!("{}", table(&report));
    println!("JSON: {}", out.join("soak.json").display());
    println!(
        "raw samples: {}, {}",
        out.join("samples.csv").display(),
        out.join("counters.csv").display()
    );
    Ok(report)
}

/// KiB as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// A signed figure, or `-`.
fn signed(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.0}"))
}

/// The human table.
fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nsoak: {} — {:.0} s sampled every {:.0} s after {:.0} s of warm-up — demo on {} at {} req/s — {} × {}",
        r.date, r.duration_s, r.sample_s, r.warm_up_s, r.demo_shape, r.rps, r.cpu_model, r.cores
    );
    let width = r
        .processes
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(
        s,
        "{:<width$} {:>7} {:>9} {:>9} {:>9} {:>9} {:>14} {:>15} {:>8}  verdict",
        "process",
        "pid",
        "RSS start",
        "RSS end",
        "RSS max",
        "KiB/h",
        "2nd half KiB/h",
        "fds min/max/end",
        "fds/h"
    );
    for p in &r.processes {
        let _ = writeln!(
            s,
            "{:<width$} {:>7} {:>9} {:>9} {:>9} {:>9} {:>14} {:>15} {:>8}  {}",
            p.name,
            p.pid,
            mib(p.rss_start_kib),
            mib(p.rss_end_kib),
            mib(p.rss_max_kib),
            signed(p.rss_slope_kib_per_hour),
            signed(p.rss_slope_second_half_kib_per_hour),
            format!("{}/{}/{}", p.fd_min, p.fd_max, p.fd_end),
            signed(p.fd_slope_per_hour),
            p.verdict.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "(RSS in MiB; slopes by least squares, after the warm-up and over the second half of the run)\nall processes: {} MiB after the warm-up, {} MiB at the end",
        mib(r.total_rss_start_kib),
        mib(r.total_rss_end_kib)
    );
    let q = &r.requests;
    let _ = writeln!(
        s,
        "requests end to end: {} ({:.1}/s), {} failed; at every proxy, both directions: {}, {} failed; the demo's generator: {} ok, {} failed (whole run: {} ok, {} failed)",
        q.end_to_end,
        q.end_to_end_per_s,
        q.end_to_end_failed,
        q.all_hops,
        q.all_hops_failed,
        q.generator_ok,
        q.generator_failed,
        q.generator_ok_whole_run,
        q.generator_failed_whole_run
    );
    for c in &q.per_proxy {
        let _ = writeln!(
            s,
            "  {:<12} inbound {} ({} failed), outbound {} ({} failed), TCP connections {}, proxy errors {}{}",
            c.proxy,
            c.inbound_requests,
            c.inbound_failed,
            c.outbound_requests,
            c.outbound_failed,
            c.tcp_connections,
            c.proxy_errors,
            if c.failed_scrapes > 0 {
                format!(", {} scrapes failed", c.failed_scrapes)
            } else {
                String::new()
            }
        );
    }
    for f in &q.failures {
        let labels: Vec<String> = f
            .labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            s,
            "  failed: {} × {} at {}: {}",
            f.count,
            f.family,
            f.proxy,
            labels.join(" ")
        );
    }
    if let Some(ts) = &r.trace_store {
        let _ = writeln!(
            s,
            "control plane's trace store: {} → {} traces, {:.1} → {:.1} MB as it counts them{}",
            ts.kept_start,
            ts.kept_end,
            ts.bytes_start as f64 / 1e6,
            ts.bytes_end as f64 / 1e6,
            ts.rss_growth_per_counted_byte
                .map_or(String::new(), |x| format!(
                    "; the demo process's RSS grew {x:.2} bytes for each byte the store counts"
                ))
        );
        let _ = writeln!(
            s,
            "  {}",
            match ts.full_at_s {
                Some(t) => format!("full (99 % of a limit) at {t:.0} s"),
                None => "not full by the end (run longer, or faster)".into(),
            }
        );
    }
    if let Some(end) = r.history_end_s {
        let _ = writeln!(
            s,
            "control plane's golden-signal history (an hour of 10 s slots): {}",
            match r.history_full_at_s {
                Some(t) => format!("an hour back at {t:.0} s"),
                None => format!("{:.0} minutes back at the end", end as f64 / 60.0),
            }
        );
    }
    let _ = writeln!(
        s,
        "the demo process (control plane) is {}",
        match r.control_plane_judged_from_s {
            Some(t) => format!("judged from {t:.0} s, when both stores were full"),
            None => format!(
                "not judged: both stores must be full with {:.0} minutes of the run left (run the soak for 75 minutes or more)",
                MIN_SETTLED / 60.0
            ),
        }
    );
    if r.rps < 100 {
        let _ = writeln!(
            s,
            "note: {} req/s is light traffic: this run looks for memory and descriptors that grow with time, not for load (raise it with --rps, up to 500)",
            r.rps
        );
    }
    let _ = write!(
        s,
        "verdict: {}",
        if r.passed {
            "PASS: no growth, no process exited, no failure".to_string()
        } else {
            let mut why = r.flagged.clone();
            if r.unexplained_failures > 0 {
                why.push(format!("{} unexplained failures", r.unexplained_failures));
            }
            format!("FAIL: {}", why.join("; "))
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(t: f64, rss_kib: u64, fds: u64) -> Reading {
        Reading {
            t,
            rss_kib,
            anon_kib: rss_kib / 2,
            fds,
        }
    }

    /// Readings every 10 s for 30 minutes.
    fn run_of(rss: impl Fn(f64) -> u64, fds: impl Fn(f64) -> u64) -> Series {
        Series {
            name: "skein proxy frontend".into(),
            readings: (0..=180)
                .map(|i| {
                    let t = i as f64 * 10.0;
                    reading(t, rss(t), fds(t))
                })
                .collect(),
        }
    }

    const WINDOW: Window = Window {
        warm_up: 120.0,
        half: 900.0,
        end: 1800.0,
        sample: 10.0,
    };

    #[test]
    fn slope_is_least_squares() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 5.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        let flat = [(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)];
        assert_eq!(slope(&flat), Some(0.0));
        // Noise symmetric about a line does not move it.
        let noisy = [(0.0, 1.0), (1.0, 0.0), (2.0, 3.0), (3.0, 2.0)];
        assert!((slope(&noisy).unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), None);
        assert_eq!(slope(&[]), None);
    }

    #[test]
    fn slope_per_hour_from_seconds() {
        // 1 KiB a minute is 60 KiB an hour.
        let r: Vec<Reading> = (0..10)
            .map(|i| reading(i as f64 * 60.0, 1000 + i, 10))
            .collect();
        assert!((per_hour(&r, |r| r.rss_kib).unwrap() - 60.0).abs() < 1e-6);
    }

    #[test]
    fn steady_memory_with_noise_is_steady() {
        // ±300 KiB of allocator noise around 20 MiB, descriptors between 12 and 20.
        let s = run_of(
            |t| {
                20 * 1024
                    + if (t as u64 / 10).is_multiple_of(2) {
                        300
                    } else {
                        0
                    }
            },
            |t| 12 + (t as u64 / 10) % 9,
        );
        let sum = summarize(7, &s, WINDOW).unwrap();
        assert_eq!(sum.verdict, vec!["steady"]);
        assert_eq!(sum.rss_start_kib, 20 * 1024 + 300);
        assert_eq!((sum.fd_min, sum.fd_max), (12, 20));
        assert!(!sum.failed());
    }

    #[test]
    fn memory_that_climbs_is_growth() {
        // 8 MiB an hour: 4 MiB over the run.
        let s = run_of(|t| 20 * 1024 + (t * 8.0 * 1024.0 / 3600.0) as u64, |_| 15);
        let sum = summarize(7, &s, WINDOW).unwrap();
        assert_eq!(sum.verdict, vec!["rss growth"]);
        let slope = sum.rss_slope_second_half_kib_per_hour.unwrap();
        assert!((slope - 8.0 * 1024.0).abs() < 50.0, "{slope}");
        assert!(sum.failed());
    }

    #[test]
    fn a_bounded_store_filling_is_not_growth_once_it_is_full() {
        let store = |kept, bytes| StoreReading {
            kept,
            bytes,
            max_traces: Some(10_000),
            max_bytes: Some(64 << 20),
        };
        assert!(!store(5_000, 60 << 20).full());
        assert!(store(5_448, 67_108_392).full(), "by bytes");
        assert!(store(9_900, 1 << 20).full(), "by count");
        assert!(!store(9_800, 1 << 20).full());
        // A control plane that does not state its limits is never called full.
        let unstated = StoreReading {
            max_traces: None,
            max_bytes: None,
            ..store(10_000, 64 << 20)
        };
        assert!(!unstated.full());
        // Filling at 64 KiB a second until its limit, 1,000 s in (past half the run),
        // then steady: the process hosting it follows.
        let bytes = |t: f64| ((t * 65_536.0) as u64).min(64 << 20);
        let readings: Vec<(f64, StoreReading)> = (0..=180)
            .map(|i| i as f64 * 10.0)
            .map(|t| (t, store(t as u64 * 5, bytes(t))))
            .collect();
        let full = store_full_at(&readings).unwrap();
        assert!((1010.0..=1020.0).contains(&full), "{full}");
        assert_eq!(store_full_at(&readings[..50]), None);
        let s = run_of(|t| 20 * 1024 + bytes(t) / 1024, |_| 15);
        // Judged from the warm-up, the fill is growth.
        assert_eq!(
            summarize(7, &s, WINDOW).unwrap().verdict,
            vec!["rss growth"]
        );
        // Judged from when the store is full, it is steady.
        let from_full = Window {
            warm_up: full,
            ..WINDOW
        };
        let sum = summarize(7, &s, from_full).unwrap();
        assert_eq!(sum.verdict, vec!["steady"]);
        assert_eq!(
            sum.rss_start_kib,
            20 * 1024 + (full as u64 * 64).min(64 * 1024)
        );
    }

    #[test]
    fn the_control_plane_is_judged_once_both_stores_are_full_with_time_left() {
        // History grows 10 s per 10 s sample from the demo's start, 5 s before sampling.
        let readings: Vec<(f64, u64, u64)> = (0..=540)
            .map(|i| (i as f64 * 10.0, (i * 10 + 5).min(3_605), 3_600))
            .collect();
        let full = history_full_at(&readings).unwrap();
        assert_eq!(full, 3_580.0, "two slots short of the hour counts as full");
        assert_eq!(history_full_at(&readings[..300]), None);
        // A control plane that states no window is never full.
        assert_eq!(history_full_at(&[(0.0, 5_000, 0)]), None);
        let run = |end: f64| Window {
            warm_up: 120.0,
            half: end / 2.0,
            end,
            sample: 10.0,
        };
        // Both full, ten minutes or more left: judged from the later of the two.
        assert_eq!(
            settled_at(Some(300.0), Some(3_580.0), run(5_400.0)),
            Some(3_580.0)
        );
        assert_eq!(
            settled_at(Some(300.0), Some(3_580.0), run(4_180.0)),
            Some(3_580.0)
        );
        // Less than ten minutes left, or a store never full: not judged.
        assert_eq!(settled_at(Some(300.0), Some(3_580.0), run(4_100.0)), None);
        assert_eq!(settled_at(None, Some(600.0), run(5_400.0)), None);
        assert_eq!(settled_at(Some(300.0), None, run(5_400.0)), None);
        // Never before the warm-up.
        assert_eq!(
            settled_at(Some(10.0), Some(20.0), run(5_400.0)),
            Some(120.0)
        );
    }

    #[test]
    fn growth_needs_both_the_slope_and_the_rise() {
        assert!(rss_grows(Some(2048.0), 10_000, 13_000));
        // Climbing, but not far: slower than the limit, or less than 2 MiB in all.
        assert!(!rss_grows(Some(512.0), 10_000, 13_000));
        assert!(!rss_grows(Some(4096.0), 10_000, 11_000));
        // A step early in the run, flat in its second half.
        assert!(!rss_grows(Some(0.0), 10_000, 13_000));
        assert!(!rss_grows(None, 10_000, 20_000));
        // Memory that falls is never growth.
        assert!(!rss_grows(Some(-4096.0), 13_000, 10_000));
    }

    #[test]
    fn descriptors_whose_floor_rises_past_the_early_ceiling_grow() {
        let leak = run_of(|_| 20 * 1024, |t| 12 + (t / 60.0) as u64);
        assert_eq!(
            summarize(7, &leak, WINDOW).unwrap().verdict,
            vec!["fd growth"]
        );
        // Coming and going between 10 and 30 all run long is not growth, even ending high.
        let busy = run_of(
            |_| 20 * 1024,
            |t| {
                if t >= 1790.0 {
                    30
                } else {
                    10 + (t as u64 / 10) % 21
                }
            },
        );
        assert_eq!(summarize(7, &busy, WINDOW).unwrap().verdict, vec!["steady"]);
    }

    #[test]
    fn a_process_that_goes_away_is_flagged_and_a_brief_one_is_not_judged() {
        let mut gone = run_of(|_| 20 * 1024, |_| 12);
        gone.readings.retain(|r| r.t <= 1000.0);
        let v = summarize(7, &gone, WINDOW).unwrap().verdict;
        assert_eq!(v, vec!["exited (last seen at 1000 s)"]);
        let mut brief = run_of(|_| 1024, |_| 3);
        brief.readings.retain(|r| (600.0..=610.0).contains(&r.t));
        let sum = summarize(8, &brief, WINDOW).unwrap();
        assert_eq!(sum.verdict, vec!["not judged"]);
        assert!(!sum.failed());
    }

    #[test]
    fn status_gives_rss_and_private_rss() {
        let status = "Name:\tskein\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  812345 kB\n\
                      VmHWM:\t   30720 kB\nVmRSS:\t   24576 kB\nRssAnon:\t   10240 kB\n\
                      RssFile:\t   14336 kB\nThreads:\t4\n";
        let r = read_status(status, 5.0).unwrap();
        assert_eq!((r.t, r.rss_kib, r.anon_kib), (5.0, 24576, 10240));
        assert_eq!(procs::status_kib(status, "Threads"), Some(4));
        // A zombie has no memory lines.
        assert_eq!(read_status("Name:\tskein\nState:\tZ (zombie)\n", 1.0), None);
    }

    #[test]
    fn processes_are_named_by_command_line_and_workload() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            describe(&args("/work/target/release/skein demo --duration 35m")),
            ("skein demo (control plane)".into(), None)
        );
        assert_eq!(
            describe(&args(
                "/x/skein proxy --config /tmp/skein-demo-9/frontend.yaml --control 1.2.3.4:9991"
            )),
            ("skein proxy".into(), Some("frontend".into()))
        );
        assert_eq!(
            describe(&args("skein proxy --config - --control 127.0.0.1:9991")),
            ("skein proxy".into(), None)
        );
        assert_eq!(
            describe(&args(
                "/x/skein run --service ledger --control 127.0.0.1:1 -- /x/skein demo-app ledger"
            )),
            ("skein run".into(), Some("ledger".into()))
        );
        assert_eq!(
            describe(&args("/x/skein demo-app traffic --rps 20")),
            ("skein demo-app".into(), Some("traffic".into()))
        );
        assert_eq!(
            describe(&args("/usr/bin/sleep infinity")),
            ("sleep infinity".into(), None)
        );
        assert_eq!(describe(&[]), ("?".into(), None));
        assert_eq!(
            display_name("skein proxy", Some("ledger")),
            "skein proxy ledger"
        );
        assert_eq!(
            display_name("sleep infinity", Some("ledger")),
            "sleep infinity (ledger)"
        );
    }

    #[test]
    fn the_demos_output_names_its_shape_and_proxies() {
        let ns = "skein demo: starting a meshed sample application, each application in a network namespace of its own (skein run) on 198.18.93.0/24\n\
                  \x20 control   HTTP API http://127.0.93.1:9990  proxies connect to port 40001 on the bridge's address\n\
                  \x20           try: skein get services --server 127.0.93.1:9990 --data-dir /tmp/skein-demo-9/control\n\
                  \x20 app       ledger     at 198.18.93.2 in its own namespace; its proxy's metrics at http://198.18.93.2:4191/metrics\n\
                  \x20 app       traffic    at 198.18.93.5 in its own namespace; its proxy's metrics at http://198.18.93.5:4191/metrics\n";
        let info = parse_demo(ns);
        assert_eq!(info.shape, "network namespaces (skein run)");
        assert_eq!(info.control.as_deref(), Some("http://127.0.93.1:9990"));
        assert_eq!(info.data_dir.as_deref(), Some("/tmp/skein-demo-9/control"));
        assert_eq!(
            info.proxies,
            vec![
                ("ledger".to_string(), "198.18.93.2:4191".parse().unwrap()),
                ("traffic".to_string(), "198.18.93.5:4191".parse().unwrap()),
            ]
        );
        assert!(!info.ready);
        let ready = format!("{ns}  traffic   20 req/s to frontend for 35m; press Ctrl-C to stop\n");
        assert!(parse_demo(&ready).ready);

        let lo = "skein demo: on loopback (not root); as root it runs each application in a network namespace of its own with `skein run`\n\
                  skein demo: starting a meshed sample application on 127.0.93.0/24\n\
                  \x20 proxy     frontend   inbound 127.0.93.11:4143  admin http://127.0.93.11:4191/metrics\n";
        let info = parse_demo(lo);
        assert_eq!(info.shape, "loopback");
        assert_eq!(info.loopback_because.as_deref(), Some("not root"));
        assert_eq!(
            info.proxies,
            vec![("frontend".to_string(), "127.0.93.11:4191".parse().unwrap())]
        );
    }

    #[test]
    fn the_generators_counts_are_the_last_printed() {
        let log = "  [   2s] traffic ok=38 failed=0  | inbound requests seen by proxies: frontend=38\n\
                   \x20 [   4s] traffic sent ok=78 failed=1 | inbound requests seen by proxies: frontend=79\n";
        assert_eq!(last_counts(log), Some((78, 1)));
        assert_eq!(
            last_counts(&format!(
                "{log}  total: ok=80 failed=1\n\nskein demo: stopping\n"
            )),
            Some((80, 1))
        );
        assert_eq!(last_counts("nothing yet"), None);
    }

    #[test]
    fn counters_fold_across_scrapes_and_series_that_come_back() {
        let s = |v: &[(&str, f64)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<Vec<_>>()
        };
        let mut f = CounterFold::default();
        // What came before the run is the baseline.
        f.observe(s(&[("a", 100.0), ("b", 5.0)]));
        assert!(f.totals.is_empty());
        f.observe(s(&[("a", 150.0), ("b", 5.0), ("c", 2.0)]));
        assert_eq!(f.totals.get("a"), Some(&50.0));
        assert_eq!(f.totals.get("c"), Some(&2.0));
        assert_eq!(f.totals.get("b"), None);
        // `c` let go of while idle, then made again: its new count is new.
        f.observe(s(&[("a", 160.0), ("b", 5.0)]));
        f.observe(s(&[("a", 170.0), ("b", 5.0), ("c", 1.0)]));
        assert_eq!(f.totals.get("c"), Some(&3.0));
        // A counter smaller than before was restarted.
        f.observe(s(&[("a", 4.0), ("b", 5.0), ("c", 1.0)]));
        assert_eq!(f.totals.get("a"), Some(&74.0));
    }

    #[test]
    fn metrics_text_gives_series_labels_and_failures() {
        let text = "# HELP skein_requests_total HTTP requests\n\
                    skein_requests_total{direction=\"inbound\",dst_service=\"frontend\",status_code=\"200\",error=\"\"} 41\n\
                    skein_requests_total{direction=\"outbound\",dst_service=\"restaurant\",status_code=\"502\",error=\"connect\"} 2\n\
                    skein_request_body_bytes_total{direction=\"inbound\"} 999\n\
                    skein_proxy_errors_total{direction=\"outbound\",reason=\"say \\\"no\\\"\"} 1\n";
        let got = samples(text, &FAMILIES);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1, 41.0);
        let (family, l) = labels(&got[1].0);
        assert_eq!(family, "skein_requests_total");
        assert_eq!(l["status_code"], "502");
        assert_eq!(l["error"], "connect");
        assert!(is_failure(&l));
        assert!(!is_failure(&labels(&got[0].0).1));
        let (_, l) = labels(&got[2].0);
        assert_eq!(l["reason"], "say \"no\"");
        let mut denied = BTreeMap::new();
        denied.insert("status_code".to_string(), "200".to_string());
        denied.insert("error".to_string(), "denied".to_string());
        assert!(is_failure(&denied));

        let mut fold = CounterFold::default();
        fold.observe(Vec::new());
        fold.observe(got);
        let (c, failed) = proxy_counts("frontend", "127.0.0.1:4191".parse().unwrap(), &fold);
        assert_eq!((c.inbound_requests, c.inbound_failed), (41, 0));
        assert_eq!((c.outbound_requests, c.outbound_failed), (2, 2));
        assert_eq!(c.proxy_errors, 1);
        assert_eq!(failed.len(), 2);
    }

    #[test]
    fn only_a_200_has_a_body() {
        assert_eq!(
            ok_body("HTTP/1.0 200 OK\r\nA: b\r\n\r\nx 1\n"),
            Some("x 1\n")
        );
        assert_eq!(ok_body("HTTP/1.0 503 Service Unavailable\r\n\r\nno"), None);
        assert_eq!(ok_body("garbage"), None);
    }
}
