//! `skein-bench load`: an open-model HTTP load generator.
//!
//! Requests are scheduled at fixed intervals (1/rate) by a pacing thread, whatever happens
//! to earlier requests; each one's latency runs from its *intended* send time to the end of
//! its response body. A stall therefore shows up in the latency of every request scheduled
//! during it (no coordinated omission). HTTP/1.1 requests run on a pool of keep-alive
//! connections that grows, up to a bound, while every connection is busy; with `--h2`
//! they are streams spread over a fixed set of HTTP/2 connections. Any transport error,
//! timeout, non-200 status or short body counts as an error.

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// What one load run is asked to do.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to send requests.
    pub addr: SocketAddr,
    /// `Host` header (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    /// Requests per second.
    pub rate: f64,
    /// How long requests are scheduled for.
    pub duration: Duration,
    /// Connections opened before the first request (HTTP/1.1) or used throughout (HTTP/2).
    pub connections: usize,
    /// Most HTTP/1.1 connections open at once (a request waits for one beyond it).
    pub max_connections: usize,
    /// Use HTTP/2 with prior knowledge.
    pub h2: bool,
    /// A request still unanswered this long after its intended send time is an error.
    pub timeout: Duration,
}

/// The figures of one run, printed as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests scheduled.
    pub sent: u64,
    /// Requests answered 200 with the full body.
    pub ok: u64,
    /// Requests that failed in any way.
    pub errors: u64,
    /// Latency percentiles from intended send time, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    #[serde(default)]
    pub p999_us: u64,
    /// Largest latency seen.
    pub max_us: u64,
    /// Successful requests per second over the run.
    pub achieved_rps: f64,
    /// The first error's description, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl LoadReport {
    /// Fails, naming the first error, unless every request was answered (and some were).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.errors > 0 || self.ok == 0 {
            bail!(
                "{} of {} requests failed; first error: {}",
                self.errors,
                self.sent,
                self.first_error.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }
}

/// Runs the load described by `spec` and returns its figures.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    if !spec.rate.is_finite() || spec.rate <= 0.0 || spec.connections == 0 {
        bail!("--rate and --connections must be positive");
    }
    let client = Arc::new(Client::open(&spec).await?);
    let stats = Arc::new(Mutex::new(Stats::new()?));
    let total = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let mut due = pace(start, spec.rate, total);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(intended) = due.recv().await {
        let (client, stats) = (client.clone(), stats.clone());
        let deadline = intended + spec.timeout;
        tasks.spawn(async move {
            let result = tokio::time::timeout_at(deadline.into(), client.request()).await;
            let latency = intended.elapsed();
            let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            lock(&stats).record(latency, result);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let stats = lock(&stats);
    Ok(stats.report(total, elapsed))
}

/// Sends one request and checks the answer: the setup works end to end.
pub async fn probe(addr: SocketAddr, host: &str, h2: bool) -> anyhow::Result<()> {
    let spec = LoadSpec {
        addr,
        host: host.to_string(),
        rate: 1.0,
        duration: Duration::from_secs(1),
        connections: 1,
        max_connections: 1,
        h2,
        timeout: Duration::from_secs(5),
    };
    let client = Client::open(&spec).await?;
    tokio::time::timeout(spec.timeout, client.request())
        .await
        .context("no answer within 5s")?
}

/// A thread that sleeps until each request's intended time and then hands it over. A
/// thread (rather than the async timer, which ticks in milliseconds) keeps the schedule
/// accurate to tens of microseconds at thousands of requests per second.
fn pace(start: Instant, rate: f64, total: u64) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
        }
    });
    rx
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Stats {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            // 1 µs to 10 min at 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3)
                .context("cannot create the latency histogram")?,
            ok: 0,
            errors: 0,
            first_error: None,
        })
    }

    fn record(&mut self, latency: Duration, result: anyhow::Result<()>) {
        self.hist.saturating_record(latency.as_micros() as u64);
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn report(&self, sent: u64, elapsed_secs: f64) -> LoadReport {
        LoadReport {
            sent,
            ok: self.ok,
            errors: self.errors + sent.saturating_sub(self.ok + self.errors),
            p50_us: self.hist.value_at_quantile(0.50),
            p90_us: self.hist.value_at_quantile(0.90),
            p99_us: self.hist.value_at_quantile(0.99),
            p999_us: self.hist.value_at_quantile(0.999),
            max_us: self.hist.max(),
            achieved_rps: if elapsed_secs > 0.0 {
                self.ok as f64 / elapsed_secs
            } else {
                0.0
            },
            first_error: self.first_error.clone(),
        }
    }
}

type Sender1 = http1::SendRequest<Empty<Bytes>>;
type Sender2 = http2::SendRequest<Empty<Bytes>>;

/// Where requests go and the connections they use.
struct Client {
    addr: SocketAddr,
    host: String,
    h2: bool,
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Mutex<Vec<Sender1>>,
    /// One permit per HTTP/1.1 connection that may be in use at once.
    permits: Semaphore,
    /// HTTP/2 connections, used in turn.
    h2_conns: Vec<Sender2>,
    next: AtomicUsize,
}

impl Client {
    async fn open(spec: &LoadSpec) -> anyhow::Result<Self> {
        let mut idle = Vec::new();
        let mut h2_conns = Vec::new();
        for _ in 0..spec.connections {
            if spec.h2 {
                h2_conns.push(connect_h2(spec.addr).await?);
            } else {
                idle.push(connect_h1(spec.addr).await?);
            }
        }
        Ok(Client {
            addr: spec.addr,
            host: spec.host.clone(),
            h2: spec.h2,
            idle: Mutex::new(idle),
            permits: Semaphore::new(spec.max_connections.max(spec.connections)),
            h2_conns,
            next: AtomicUsize::new(0),
        })
    }

    async fn request(&self) -> anyhow::Result<()> {
        if self.h2 {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.h2_conns.len();
            let mut conn = self.h2_conns[i].clone();
            conn.ready().await.context("HTTP/2 connection closed")?;
            let req = Request::get(format!("http://{}/", self.host))
                .body(Empty::new())
                .context("building the request")?;
            return check(conn.send_request(req).await).await;
        }
        let _permit = self.permits.acquire().await.context("client closed")?;
        let pooled = lock(&self.idle).pop();
        let mut conn = match pooled {
            Some(mut c) => match c.ready().await {
                Ok(()) => c,
                // The server closed it while idle: open a fresh one.
                Err(_) => connect_h1(self.addr).await?,
            },
            None => connect_h1(self.addr).await?,
        };
        let req = Request::get("/")
            .header(header::HOST, &self.host)
            .body(Empty::new())
            .context("building the request")?;
        let result = check(conn.send_request(req).await).await;
        if result.is_ok() {
            lock(&self.idle).push(conn);
        }
        result
    }
}

/// Reads the whole response and checks it is the backend's `200` with a full body.
pub(crate) async fn check(
    resp: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> anyhow::Result<()> {
    let resp = resp.context("request failed")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("response body failed")?
        .to_bytes();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        bail!("status {status}: {text}");
    }
    if body.len() != crate::backend::BODY_LEN {
        bail!(
            "body of {} bytes, expected {}",
            body.len(),
            crate::backend::BODY_LEN
        );
    }
    Ok(())
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(stream))
}

async fn connect_h1(addr: SocketAddr) -> anyhow::Result<Sender1> {
    let (send, conn) = http1::handshake(tcp(addr).await?)
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    Ok(send)
}

/// An HTTP/2 connection (prior knowledge) to `addr`, its driver spawned.
pub(crate) async fn connect_h2<B>(addr: SocketAddr) -> anyhow::Result<http2::SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = http2::handshake(TokioExecutor::new(), tcp(addr).await?)
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(conn);
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_unfinished_requests_as_errors() {
        let mut s = Stats::new().unwrap();
        for us in 1..=100u64 {
            s.record(Duration::from_micros(us * 10), Ok(()));
        }
        s.record(Duration::from_millis(50), Err(anyhow::anyhow!("boom")));
        let r = s.report(105, 2.0);
        assert_eq!((r.sent, r.ok, r.errors), (105, 100, 5));
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        let e = r.check().unwrap_err().to_string();
        assert_eq!(e, "5 of 105 requests failed; first error: boom");
        let clean = LoadReport {
            ok: 3,
            sent: 3,
            ..LoadReport::default()
        };
        assert!(clean.check().is_ok());
        assert!(
            LoadReport::default().check().is_err(),
            "nothing answered is a failure"
        );
        assert!((500..=520).contains(&r.p50_us), "{}", r.p50_us);
        assert!((995..=1005).contains(&r.p99_us), "{}", r.p99_us);
        assert!((49_900..=50_100).contains(&r.max_us), "{}", r.max_us);
        assert_eq!(r.achieved_rps, 50.0);
        let back: LoadReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
