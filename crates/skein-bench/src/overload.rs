//! The overload scenario: what callers see when a service is at its
//! `maxConcurrentRequests`, measured on the release build.
//!
//! One backend answering after [`DELAY`], behind its own `skein proxy` (inbound, on
//! 127.0.0.168), is called through a standalone outbound proxy (127.0.0.169) whose
//! BackendPolicy for it says `connectionPool: {maxConcurrentRequests: 10,
//! maxPendingRequests: 0}`. [`CALLERS`] closed-loop callers (`skein-bench callers`, its
//! own process), each on its own keep-alive HTTP/1.1 connection, send one request after
//! another; a refused caller waits [`PAUSE`] before the next (a client backing off a
//! little; without it the callers would only measure how fast a 2-core machine can say
//! no). The figures: how many requests were answered and refused, the latency of each
//! kind from sending to the end of the response, whether every refusal carried
//! `Retry-After` and `skein-limited-by`, the answered rate (at most
//! `LIMIT / DELAY` per second if the limit holds: 10 in flight, 20 each per second), and
//! the caller proxy's memory before and after. The proxies run standalone (no control
//! plane, plaintext between them): the scenario measures the limit, not mutual TLS.
//!
//! Addresses, used by nothing else in the harness nor the tests: 127.0.0.168 and
//! 127.0.0.169.

use crate::procs::{usage, TempDir, Usage};
use crate::report::{header_row, thousands};
use crate::setups::{delayed_backend, ip, proxy_config, start_proxy, workload, APP_PORT, HOST};
use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use skein_model::resource::{BackendPolicySpec, ConnectionPool, TargetRef};
use skein_model::{
    Destination, DestinationPolicy, Endpoint, PortSpec, Protocol, ProxyConfig, TelemetryConfig,
    Upstream,
};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long the backend takes to answer.
pub const DELAY: Duration = Duration::from_millis(50);
/// The caller's `maxConcurrentRequests` for the service.
pub const LIMIT: u32 = 10;
/// Concurrent callers.
pub const CALLERS: u32 = 200;
/// How long a refused caller waits before its next request.
pub const PAUSE: Duration = Duration::from_millis(20);
/// Most requests one caller sends in a measurement (the time bounds it first).
const MAX_PER_CALLER: u64 = 100_000;

/// The backend and its inbound proxy.
const BACKEND_HOST: IpAddr = ip(168);
/// The caller's outbound proxy.
const CALLER_HOST: IpAddr = ip(169);
/// Every address the scenario uses (for the test that setups do not share any).
#[cfg(test)]
pub const HOSTS: [IpAddr; 2] = [BACKEND_HOST, CALLER_HOST];

const INBOUND_PORT: u16 = 4143;
const UP_HTTP: u16 = 15001;

/// Set to `1` to leave the scenario out, e.g. to measure a `skein` binary older than
/// BackendPolicy enforcement, which refuses the caller's `policies`.
pub const SKIP_ENV: &str = "SKEIN_BENCH_NO_OVERLOAD";

/// Whether [`SKIP_ENV`] asks to skip the scenario.
pub fn skipped() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| !matches!(v.trim(), "" | "0"))
}

/// Seconds per measurement.
pub fn secs(quick: bool) -> u64 {
    if quick {
        3
    } else {
        10
    }
}

/// What `skein-bench callers` is asked to do.
#[derive(Debug, Clone)]
pub struct CallersSpec {
    /// Where to send requests.
    pub addr: SocketAddr,
    /// `Host` header.
    pub host: String,
    /// Concurrent callers.
    pub callers: u32,
    /// How long they call.
    pub duration: Duration,
    /// How long a refused caller waits before its next request.
    pub pause: Duration,
}

/// What the callers saw, printed as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallersReport {
    /// Requests answered 200.
    pub answered: u64,
    /// Requests refused with 503.
    pub refused: u64,
    /// Refusals without `Retry-After` or `skein-limited-by`.
    pub refused_unlabelled: u64,
    /// Anything else: other statuses, transport errors.
    pub other: u64,
    /// The first of those, described.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_other: Option<String>,
    /// Answered latency percentiles, µs, from sending to the end of the body.
    pub answered_p50_us: u64,
    /// 99th percentile.
    pub answered_p99_us: u64,
    /// Refused latency percentiles, µs.
    pub refused_p50_us: u64,
    /// 90th percentile.
    pub refused_p90_us: u64,
    /// 99th percentile.
    pub refused_p99_us: u64,
    /// Largest refusal latency.
    pub refused_max_us: u64,
    /// Answered requests per second over the measurement.
    pub answered_rps: f64,
}

/// One caller's tally.
struct Tally {
    answered: Histogram<u64>,
    refused: Histogram<u64>,
    unlabelled: u64,
    other: u64,
    first_other: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        let h = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
        Ok(Tally {
            answered: h()?,
            refused: h()?,
            unlabelled: 0,
            other: 0,
            first_other: None,
        })
    }

    fn fail(&mut self, what: String) {
        self.other += 1;
        self.first_other.get_or_insert(what);
    }
}

/// Runs the callers and returns what they saw (`skein-bench callers`).
pub async fn callers(spec: CallersSpec) -> anyhow::Result<CallersReport> {
    if spec.callers == 0 {
        bail!("--callers must be positive");
    }
    let started = Instant::now();
    let until = started + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.callers {
        let spec = spec.clone();
        tasks.spawn(async move { call(&spec, until).await });
    }
    let mut all = Tally::new()?;
    while let Some(done) = tasks.join_next().await {
        let t = done.context("a caller panicked")??;
        all.answered.add(&t.answered)?;
        all.refused.add(&t.refused)?;
        all.unlabelled += t.unlabelled;
        all.other += t.other;
        if all.first_other.is_none() {
            all.first_other = t.first_other;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (a, r) = (&all.answered, &all.refused);
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    Ok(CallersReport {
        answered: a.len(),
        refused: r.len(),
        refused_unlabelled: all.unlabelled,
        other: all.other,
        first_other: all.first_other,
        answered_p50_us: q(a, 0.5),
        answered_p99_us: q(a, 0.99),
        refused_p50_us: q(r, 0.5),
        refused_p90_us: q(r, 0.9),
        refused_p99_us: q(r, 0.99),
        refused_max_us: r.max(),
        answered_rps: a.len() as f64 / elapsed,
    })
}

/// One caller: one request after another on a keep-alive connection until `until`.
async fn call(spec: &CallersSpec, until: Instant) -> anyhow::Result<Tally> {
    let mut t = Tally::new()?;
    let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
    for _ in 0..MAX_PER_CALLER {
        if Instant::now() >= until {
            break;
        }
        let s = match sender.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(spec.addr).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    t.fail(format!("connect: {e:#}"));
                    tokio::time::sleep(spec.pause).await;
                    continue;
                }
            },
        };
        let req = Request::get("/")
            .header(header::HOST, &spec.host)
            .body(Empty::new())?;
        let start = Instant::now();
        let resp = match s.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                sender = None;
                t.fail(format!("request: {e}"));
                continue;
            }
        };
        let status = resp.status();
        let labelled = resp.headers().contains_key(header::RETRY_AFTER)
            && resp.headers().contains_key("skein-limited-by");
        if let Err(e) = resp.into_body().collect().await {
            sender = None;
            t.fail(format!("body: {e}"));
            continue;
        }
        let us = (start.elapsed().as_micros() as u64).max(1);
        match status {
            StatusCode::OK => t.answered.record(us)?,
            StatusCode::SERVICE_UNAVAILABLE => {
                t.refused.record(us)?;
                t.unlabelled += u64::from(!labelled);
                tokio::time::sleep(spec.pause).await;
            }
            s => t.fail(format!("status {s}")),
        }
    }
    Ok(t)
}

async fn connect(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Overload {
    /// The backend's delay, ms.
    pub delay_ms: u64,
    /// `maxConcurrentRequests`.
    pub limit: u32,
    /// Concurrent callers.
    pub callers: u32,
    /// A refused caller's pause, ms.
    pub pause_ms: u64,
    /// Length of the measurement, seconds.
    pub secs: u64,
    /// What the callers saw.
    pub seen: CallersReport,
    /// The caller proxy before the measurement.
    pub proxy_before: Usage,
    /// Halfway through it.
    pub proxy_halfway: Usage,
    /// And after it.
    pub proxy_after: Usage,
}

/// The report's section.
pub fn markdown(o: &mut String, s: &Overload) {
    let _ = writeln!(
        o,
        "### Overload: {} callers against `maxConcurrentRequests: {}`\n",
        s.callers, s.limit
    );
    let _ = writeln!(
        o,
        "One service whose backend answers after {} ms, behind its own skein proxy, called \
         through a standalone outbound proxy whose BackendPolicy sets \
         `connectionPool: {{maxConcurrentRequests: {}, maxPendingRequests: 0}}`. {} callers, \
         each on its own keep-alive HTTP/1.1 connection, send one request after another for \
         {} s; a refused caller waits {} ms before its next. Latency in µs from sending to \
         the end of the response. If the limit holds, at most {} requests per second are \
         answered ({} in flight, each {} ms).\n",
        s.delay_ms,
        s.limit,
        s.callers,
        s.secs,
        s.pause_ms,
        thousands(f64::from(s.limit) * 1000.0 / s.delay_ms.max(1) as f64),
        s.limit,
        s.delay_ms
    );
    let c = &s.seen;
    let cols = ["requests", "p50", "p90", "p99", "max"].map(String::from);
    header_row(o, "outcome", &cols);
    let n = |v: u64| thousands(v as f64);
    let _ = writeln!(
        o,
        "| refused (503 overloaded) | {} | {} | {} | {} | {} |",
        n(c.refused),
        n(c.refused_p50_us),
        n(c.refused_p90_us),
        n(c.refused_p99_us),
        n(c.refused_max_us)
    );
    let _ = writeln!(
        o,
        "| answered (200) | {} | {} | | {} | |",
        n(c.answered),
        n(c.answered_p50_us),
        n(c.answered_p99_us)
    );
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let (b, h, a) = (&s.proxy_before, &s.proxy_halfway, &s.proxy_after);
    let _ = writeln!(
        o,
        "\nAnswered {:.0} per second. Refusals without `Retry-After` and `skein-limited-by`: \
         {}; other outcomes: {}{}. The caller's proxy, resident (anonymous): {} ({}) before, \
         {} ({}) halfway with every caller connected, {} ({}) at the end; peak {}.\n",
        c.answered_rps,
        c.refused_unlabelled,
        c.other,
        c.first_other
            .as_deref()
            .map_or(String::new(), |e| format!(" (first: {e})")),
        mib(b.rss_kib),
        mib(b.anon_kib),
        mib(h.rss_kib),
        mib(h.anon_kib),
        mib(a.rss_kib),
        mib(a.anon_kib),
        mib(a.peak_rss_kib)
    );
}

/// Starts the scenario's processes, measures once and stops them.
pub async fn run(dir: &TempDir, me: &Path, skein: &Path, quick: bool) -> anyhow::Result<Overload> {
    let backend_addr = SocketAddr::new(BACKEND_HOST, APP_PORT);
    let mut backend = delayed_backend(me, dir.path(), backend_addr, DELAY, "overload").await?;
    let mut endpoint = start_proxy(
        dir.path(),
        skein,
        "overload inbound proxy",
        "overload-inbound-proxy",
        &endpoint_config(),
        None,
    )
    .await?;
    let mut caller = start_proxy(
        dir.path(),
        skein,
        "overload caller",
        "overload-caller",
        &caller_config(),
        None,
    )
    .await
    .with_context(|| {
        format!("a skein binary without BackendPolicy refuses it: set {SKIP_ENV}=1 to skip the scenario")
    })?;
    let addr = SocketAddr::new(CALLER_HOST, UP_HTTP);
    crate::load::probe(addr, HOST, false)
        .await
        .with_context(|| format!("overload caller: probe to {addr} failed"))?;
    let secs = secs(quick);
    let pid = caller.pid();
    let proxy_before = usage(pid)?;
    // Memory halfway through, once every caller is connected: from there to the end,
    // only the number of requests grows.
    let halfway = async {
        tokio::time::sleep(Duration::from_millis(secs * 500)).await;
        usage(pid)
    };
    let (seen, proxy_halfway) = tokio::join!(measure(me, addr, secs), halfway);
    let proxy_halfway = proxy_halfway?;
    let logs = || {
        [&endpoint, &caller]
            .iter()
            .map(|p| format!("\n--- {} ---\n{}", p.name, p.log_tail()))
            .collect::<String>()
    };
    let seen = seen.with_context(|| format!("overload; proxy logs:{}", logs()))?;
    let proxy_after = usage(caller.pid())?;
    for p in [&mut backend, &mut endpoint, &mut caller] {
        p.check_alive()?;
    }
    eprintln!(
        "[overload] {} answered ({:.0}/s), {} refused (p50 {} µs, p99 {} µs, max {} µs), {} other",
        seen.answered,
        seen.answered_rps,
        seen.refused,
        seen.refused_p50_us,
        seen.refused_p99_us,
        seen.refused_max_us,
        seen.other
    );
    Ok(Overload {
        delay_ms: DELAY.as_millis() as u64,
        limit: LIMIT,
        callers: CALLERS,
        pause_ms: PAUSE.as_millis() as u64,
        secs,
        seen,
        proxy_before,
        proxy_halfway,
        proxy_after,
    })
}

/// This binary's `callers` subcommand against `addr`.
async fn measure(me: &Path, addr: SocketAddr, secs: u64) -> anyhow::Result<CallersReport> {
    let mut cmd = tokio::process::Command::new(me);
    cmd.arg("callers")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--host")
        .arg(HOST)
        .arg("--callers")
        .arg(CALLERS.to_string())
        .arg("--duration")
        .arg(format!("{secs}s"))
        .arg("--pause")
        .arg(format!("{}ms", PAUSE.as_millis()));
    let text = crate::tools::output(cmd, "skein-bench callers", crate::tools::limit(secs)).await?;
    serde_json::from_str(text.trim())
        .with_context(|| format!("cannot read callers' output: {text}"))
}

/// The backend's inbound proxy.
fn endpoint_config() -> ProxyConfig {
    let ports = vec![PortSpec::new(APP_PORT, Protocol::Http)];
    proxy_config(
        BACKEND_HOST,
        workload("bench-overload", "bench"),
        ports,
        TelemetryConfig::default(),
    )
}

/// The caller: one upstream listener for `bench`, under a BackendPolicy holding it to
/// [`LIMIT`] requests at once with none waiting.
fn caller_config() -> ProxyConfig {
    let ports = vec![PortSpec::new(APP_PORT, Protocol::Http)];
    let mut config = proxy_config(
        CALLER_HOST,
        workload("loadgen-1", "loadgen"),
        ports,
        TelemetryConfig::default(),
    );
    config.outbound.upstreams = vec![Upstream {
        listen: SocketAddr::new(CALLER_HOST, UP_HTTP),
        service: HOST.into(),
        port: APP_PORT,
    }];
    config.destinations = vec![std::sync::Arc::new(Destination {
        service: HOST.into(),
        namespace: "default".into(),
        ports: config.inbound.ports.clone(),
        addresses: Vec::new(),
        endpoints: vec![Endpoint {
            address: SocketAddr::new(BACKEND_HOST, INBOUND_PORT),
            identity: None,
        }],
        routes: Vec::new(),
        identities: Vec::new(),
        policies: vec![DestinationPolicy {
            name: "default/bench-limit".into(),
            spec: BackendPolicySpec {
                target_ref: TargetRef {
                    group: String::new(),
                    kind: "Service".into(),
                    name: HOST.into(),
                    port: None,
                },
                load_balancer: Default::default(),
                connection_pool: ConnectionPool {
                    max_concurrent_requests: LIMIT,
                    max_pending_requests: 0,
                    ..ConnectionPool::default()
                },
                outlier_detection: Default::default(),
                retry_budget: Default::default(),
                inbound: None,
            },
        }],
    })];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configs_are_valid_and_the_caller_holds_the_limit() {
        endpoint_config().validate("endpoint").unwrap();
        let caller = caller_config();
        caller.validate("caller").unwrap();
        let back = ProxyConfig::from_yaml(&caller.to_yaml(), "again").unwrap();
        assert_eq!(back, caller);
        let policy = caller.destinations[0].policy(APP_PORT).unwrap();
        assert_eq!(policy.spec.connection_pool.max_concurrent_requests, LIMIT);
        assert_eq!(policy.spec.connection_pool.max_pending_requests, 0);
    }

    #[test]
    fn the_section_gives_the_refusals_and_the_memory() {
        let s = Overload {
            delay_ms: 50,
            limit: 10,
            callers: 200,
            pause_ms: 20,
            secs: 3,
            seen: CallersReport {
                answered: 600,
                refused: 25_000,
                refused_p50_us: 150,
                refused_p90_us: 300,
                refused_p99_us: 900,
                refused_max_us: 4_000,
                answered_p50_us: 50_400,
                answered_p99_us: 52_000,
                answered_rps: 199.6,
                ..CallersReport::default()
            },
            proxy_before: Usage {
                rss_kib: 10_240,
                anon_kib: 2_048,
                ..Usage::default()
            },
            proxy_halfway: Usage {
                rss_kib: 11_264,
                anon_kib: 3_072,
                ..Usage::default()
            },
            proxy_after: Usage {
                rss_kib: 11_264,
                anon_kib: 3_072,
                peak_rss_kib: 12_288,
                ..Usage::default()
            },
        };
        let mut md = String::new();
        markdown(&mut md, &s);
        assert!(md.contains("### Overload: 200 callers against `maxConcurrentRequests: 10`"));
        assert!(md.contains("at most 200 requests per second"), "{md}");
        assert!(
            md.contains("| refused (503 overloaded) | 25,000 | 150 | 300 | 900 | 4,000 |"),
            "{md}"
        );
        assert!(
            md.contains("| answered (200) | 600 | 50,400 | | 52,000 | |"),
            "{md}"
        );
        assert!(md.contains("Answered 200 per second"), "{md}");
        assert!(md.contains("resident (anonymous): 10.0 MiB (2.0 MiB) before, 11.0 MiB (3.0 MiB) halfway with every caller connected, 11.0 MiB (3.0 MiB) at the end; peak 12.0 MiB"), "{md}");
    }

    #[tokio::test]
    async fn callers_count_answers_and_refusals_apart() {
        // A server that answers every other request 503 with the limit's headers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let served = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            let mut resp = http::Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"x"),
                            ));
                            if n % 2 == 1 {
                                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                resp.headers_mut()
                                    .insert("retry-after", "1".parse().unwrap());
                                resp.headers_mut()
                                    .insert("skein-limited-by", "p x".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let report = callers(CallersSpec {
            addr,
            host: "bench".into(),
            callers: 1,
            duration: Duration::from_millis(300),
            pause: Duration::from_millis(1),
        })
        .await
        .unwrap();
        assert!(report.answered > 10, "{report:?}");
        assert!(report.answered.abs_diff(report.refused) <= 1, "{report:?}");
        assert_eq!(
            (report.refused_unlabelled, report.other),
            (0, 0),
            "{report:?}"
        );
        assert!(report.refused_max_us >= report.refused_p50_us);
    }
}
