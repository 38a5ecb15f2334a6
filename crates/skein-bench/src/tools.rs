//! External load tools and the children the orchestrator measures with: `wrk` (closed-model
//! HTTP/1.1 throughput and new-connection rate), `h2load` (HTTP/2 streams), and this
//! binary's own `load` and `tcp-bulk` subcommands. Each run is bounded in time, killed if
//! it overstays, and its output parsed into figures; the parsers are pure and unit-tested.

use crate::load::LoadReport;
use crate::tcp::BulkReport;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

/// Figures from one `wrk` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkReport {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second (`Requests/sec:`).
    pub rps: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
    /// Mean latency (closed model: for information only), µs.
    pub latency_avg_us: Option<f64>,
    /// What the errors were, as wrk printed them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_detail: String,
}

/// Figures from one `h2load` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct H2Report {
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests failed, errored or timed out.
    pub errors: u64,
    /// Requests per second (`finished in …, N req/s`).
    pub rps: f64,
    /// Mean time per request, µs.
    pub mean_us: Option<f64>,
    /// Non-2xx responses.
    pub non_2xx: u64,
}

/// Runs `cmd`, killing it if it runs past `limit`; returns stdout, or fails with stderr.
pub(crate) async fn output(
    mut cmd: Command,
    what: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}

pub(crate) fn limit(secs: u64) -> Duration {
    Duration::from_secs(secs + 30)
}

/// `program`, run inside the network namespace at `netns` (`nsenter --net=…`) when given.
pub fn command(program: &Path, netns: Option<&Path>) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(program);
            cmd
        }
    }
}

/// `wrk -t2 -cC -dDs`: maximum throughput on keep-alive connections, or, with `close`,
/// the new-connection rate (`Connection: close` on every request).
pub async fn wrk(
    wrk: &Path,
    netns: Option<&Path>,
    addr: SocketAddr,
    conns: u32,
    secs: u64,
    close: bool,
) -> anyhow::Result<WrkReport> {
    let mut cmd = command(wrk, netns);
    cmd.arg("-t2")
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-H")
        .arg(format!("Host: {}", crate::setups::HOST));
    if close {
        cmd.arg("-H").arg("Connection: close");
    }
    cmd.arg(format!("http://{addr}/"));
    let text = output(cmd, "wrk", limit(secs)).await?;
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// `h2load -cC -mM -D S`: HTTP/2 with prior knowledge, many streams per connection.
/// With `grpc` (a file holding one request message), unary gRPC calls instead: each a
/// POST of that file to [`crate::grpc::PATH`] with gRPC's headers.
pub async fn h2load(
    h2load: &Path,
    netns: Option<&Path>,
    addr: SocketAddr,
    (clients, streams): (u32, u32),
    secs: u64,
    grpc: Option<&Path>,
) -> anyhow::Result<H2Report> {
    let mut cmd = command(h2load, netns);
    cmd.arg(format!("-c{clients}"))
        .arg(format!("-m{streams}"))
        .arg("-t1")
        .arg("-D")
        .arg(secs.to_string());
    match grpc {
        Some(message) => grpc_calls_args(cmd.as_std_mut(), message, addr),
        None => {
            cmd.arg(format!("http://{addr}/"));
        }
    }
    let text = output(cmd, "h2load", limit(secs)).await?;
    parse_h2load(&text).with_context(|| format!("cannot read h2load's output:\n{text}"))
}

/// h2load's arguments for unary gRPC calls to `addr`, each sending `message` (a framed
/// request message) with gRPC's headers.
pub fn grpc_calls_args(cmd: &mut std::process::Command, message: &Path, addr: SocketAddr) {
    cmd.arg("-d")
        .arg(message)
        .arg("-H")
        .arg(format!("content-type: {}", crate::grpc::CONTENT_TYPE))
        .args(["-H", "te: trailers"])
        .arg(format!("http://{addr}{}", crate::grpc::PATH));
}

/// How [`load`] sends: where from, and which HTTP version.
#[derive(Debug, Clone, Copy, Default)]
pub struct From<'a> {
    /// The network namespace it runs in (`None`: this one).
    pub netns: Option<&'a Path>,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub h2: bool,
}

/// This binary's open-model `load` subcommand.
pub async fn load(
    me: &Path,
    from: From<'_>,
    addr: SocketAddr,
    rate: u32,
    secs: u64,
    connections: u32,
) -> anyhow::Result<LoadReport> {
    let mut cmd = command(me, from.netns);
    cmd.arg("load")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--host")
        .arg(crate::setups::HOST)
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--duration")
        .arg(format!("{secs}s"))
        .arg("--connections")
        .arg(connections.to_string());
    if from.h2 {
        cmd.arg("--h2");
    }
    let text = output(cmd, "skein-bench load", limit(secs)).await?;
    serde_json::from_str(text.trim()).with_context(|| format!("cannot read load's output: {text}"))
}

/// This binary's `grpc-calls` subcommand: `count` unary calls to `addr`, each checked
/// for `grpc-status: 0`.
pub async fn grpc_calls(
    me: &Path,
    netns: Option<&Path>,
    addr: SocketAddr,
    count: u64,
) -> anyhow::Result<()> {
    let mut cmd = command(me, netns);
    cmd.arg("grpc-calls")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--count")
        .arg(count.to_string());
    output(cmd, "skein-bench grpc-calls", limit(10))
        .await
        .map(|_| ())
}

/// This binary's `tcp-bulk` subcommand: send for `secs` seconds at most.
pub async fn tcp_bulk(
    me: &Path,
    netns: Option<&Path>,
    addr: SocketAddr,
    secs: u64,
) -> anyhow::Result<BulkReport> {
    let mut cmd = command(me, netns);
    cmd.arg("tcp-bulk")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--bytes")
        .arg((1u64 << 40).to_string())
        .arg("--duration")
        .arg(format!("{secs}s"));
    let text = output(cmd, "skein-bench tcp-bulk", limit(2 * secs)).await?;
    serde_json::from_str(text.trim())
        .with_context(|| format!("cannot read tcp-bulk's output: {text}"))
}

/// A duration as wrk and h2load print them (`812.00us`, `1.25ms`, `2.00s`, `1.00m`), in µs.
pub fn parse_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

fn number_before(line: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .collect();
    let i = words.iter().position(|w| *w == word)?;
    words[..i]
        .iter()
        .rev()
        .find(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// Reads wrk's summary.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkReport> {
    let mut r = WrkReport::default();
    let mut saw_rps = false;
    let mut details = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("Requests/sec")?;
            saw_rps = true;
        } else if line.contains(" requests in ") {
            r.requests = number_before(line, "requests").context("requests count")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            for kind in ["connect", "read", "write", "timeout"] {
                let n = v
                    .split(',')
                    .find_map(|p| p.trim().strip_prefix(kind))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                r.errors += n;
            }
            details.push(line.to_string());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().context("Non-2xx count")?;
            details.push(line.to_string());
        } else if let Some(v) = line.strip_prefix("Latency") {
            if let Some(avg) = v.split_whitespace().next() {
                r.latency_avg_us = parse_duration_us(avg);
            }
        }
    }
    if !saw_rps {
        bail!("no Requests/sec line");
    }
    r.error_detail = details.join("; ");
    Ok(r)
}

/// Reads h2load's summary.
pub fn parse_h2load(text: &str) -> anyhow::Result<H2Report> {
    let mut r = H2Report::default();
    let mut saw = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("finished in ") {
            let rps = v.split(',').nth(1).context("req/s after 'finished in'")?;
            let rps = rps.trim().strip_suffix("req/s").context("req/s unit")?;
            r.rps = rps.trim().parse().context("req/s value")?;
            saw = true;
        } else if let Some(v) = line.strip_prefix("requests:") {
            r.succeeded = number_before(v, "succeeded").context("succeeded")?;
            for word in ["failed", "errored", "timeout"] {
                r.errors += number_before(v, word).unwrap_or(0);
            }
        } else if let Some(v) = line.strip_prefix("status codes:") {
            for word in ["3xx", "4xx", "5xx"] {
                r.non_2xx += number_before(v, word).unwrap_or(0);
            }
        } else if let Some(v) = line.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            r.mean_us = v.split_whitespace().nth(2).and_then(parse_duration_us);
        }
    }
    if !saw {
        bail!("no 'finished in' line");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.150:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.25ms  812.00us  21.03ms   91.20%
    Req/Sec    26.01k     1.90k   29.63k    73.33%
  155241 requests in 3.00s, 180.94MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  51703.68
Transfer/sec:     60.26MB
";

    #[test]
    fn wrk_summary() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 155_241);
        assert_eq!(r.rps, 51_703.68);
        assert_eq!(r.errors, 7);
        assert_eq!(r.latency_avg_us, Some(1250.0));
        assert!(r.error_detail.contains("read 2"), "{}", r.error_detail);
        assert!(parse_wrk("unable to connect to 127.0.0.1:1").is_err());
    }

    const H2LOAD: &str = "starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 3s of main duration for measurements.
Main benchmark duration is started for client #0.

finished in 3.00s, 40123.33 req/s, 44.98MB/s
requests: 120370 total, 120498 started, 120370 done, 120368 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 120368 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 134.93MB (141486354) total, 1.62MB (1701264) headers (space savings 90.91%), 117.55MB (123258880) data
                     min         max         mean         sd        +/- sd
time for request:      211us     10.39ms      3.16ms       1.02ms    71.85%
time for connect:      139us       244us       186us        47us    75.00%
";

    #[test]
    fn h2load_summary() {
        let r = parse_h2load(H2LOAD).unwrap();
        assert_eq!(r.rps, 40_123.33);
        assert_eq!(r.succeeded, 120_368);
        assert_eq!(r.errors, 2);
        assert_eq!(r.non_2xx, 2);
        assert_eq!(r.mean_us, Some(3160.0));
    }

    #[test]
    fn durations_in_wrk_and_h2load_units() {
        assert_eq!(parse_duration_us("812.00us"), Some(812.0));
        assert_eq!(parse_duration_us("2.00s"), Some(2e6));
        assert_eq!(parse_duration_us("1.00m"), Some(60e6));
        assert_eq!(parse_duration_us("12"), None);
        assert_eq!(parse_duration_us("3.0parsecs"), None);
    }
}
