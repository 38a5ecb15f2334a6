//! Instructions per request through each proxy of the skein pair, counted by callgrind: a
//! figure the machine's noise cannot move, so that a change's cost shows in one run
//! (`bench/run --only callgrind`).
//!
//! The pair is the loopback skein setup's ([`crate::setups::skein`]: a control plane, join
//! tokens, mutual TLS 1.3, deny by default with one AuthorizationPolicy per Service,
//! telemetry and tracing at their defaults) on addresses of its own (outbound proxy
//! 127.0.0.173, inbound proxy, backend and sink 127.0.0.172, control plane 127.0.0.171),
//! both proxies under `valgrind --tool=callgrind`. For each protocol: a warm-up, both
//! proxies' counters zeroed (`callgrind_control -z`), a fixed amount of work, the counters
//! dumped (`callgrind_control -d`) and divided by it. HTTP/1.1: h2load `--h1`, 8 keep-alive
//! connections; HTTP/2: h2load, 4 connections × 8 streams; gRPC: the same, unary calls
//! with a 128-byte request message (the bench backend answers 1 KiB and `grpc-status:
//! 0`); TCP: one `tcp-bulk` transfer, per MB. Everything each process executed in that window counts, on every thread: the
//! runtime's own bookkeeping and the periodic work of an idle proxy too (about a thousand
//! instructions in ten idle seconds, nothing next to the requests'). The kernel's work
//! (system calls, the TCP stack) is not counted: callgrind sees only user space.

use crate::procs::Proc;
use crate::setups::{self, ip, Env, Kind, SkeinPair};
use crate::tools;
use anyhow::{bail, Context};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The pair measured: the skein setup's, under callgrind, on its own addresses.
pub(crate) const PAIR: SkeinPair = SkeinPair {
    kind: Kind::Skein,
    label: "skein (callgrind)",
    tag: "cg",
    outbound: ip(173),
    inbound: ip(172),
    control: ip(171),
    telemetry_requests: true,
    tracing: true,
    under_callgrind: true,
};

/// Requests (HTTP) and megabytes (TCP) counted, in a full and a quick run.
fn amounts(quick: bool) -> (u64, u64) {
    if quick {
        (2_000, 8)
    } else {
        (20_000, 64)
    }
}

/// Requests of warm-up before each HTTP measurement (pools filled, first-time paths run).
const WARM_UP: u64 = 300;

/// The `valgrind` command that runs a proxy under callgrind, its profiles written to
/// `cg.<tag>.PID.N` in `dir`.
pub fn valgrind(dir: &Path, tag: &str) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!(
            "--callgrind-out-file={}/cg.{tag}.%p",
            dir.display()
        ))
        // Collect from the start; `-z` zeroes before each measurement.
        .arg("--collect-atstart=yes");
    // More of callgrind's options, e.g. `--demangle=no` for `bench/link-order`.
    if let Ok(extra) = std::env::var(ARGS_ENV) {
        cmd.args(extra.split_whitespace());
    }
    cmd
}

/// Further `valgrind` options for the proxies, separated by spaces.
pub const ARGS_ENV: &str = "SKEIN_BENCH_CALLGRIND_ARGS";

/// Why callgrind cannot run here, if it cannot.
pub fn supported() -> Result<(), String> {
    for (tool, package) in [("valgrind", "valgrind"), ("callgrind_control", "valgrind")] {
        if setups::find_tool(tool).is_none() {
            return Err(format!("`{tool}` not found (Debian package {package})"));
        }
    }
    Ok(())
}

/// One measured protocol: instructions per unit in each proxy.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// e.g. `HTTP/1.1`.
    pub what: String,
    /// `request` or `MB`.
    pub unit: String,
    /// Units measured.
    pub units: u64,
    /// Instructions per unit, outbound proxy.
    pub outbound: u64,
    /// Instructions per unit, inbound proxy.
    pub inbound: u64,
}

/// What `--only callgrind` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Callgrind {
    /// One row per protocol.
    pub rows: Vec<Row>,
}

/// Starts the pair under callgrind and counts each protocol.
pub async fn run(env: &Env, quick: bool) -> anyhow::Result<Callgrind> {
    let (requests, megabytes) = amounts(quick);
    eprintln!(
        "skein-bench: starting the skein pair under callgrind (slow: valgrind runs the proxies \
         some fifty times slower)"
    );
    let h2load = setups::find_tool("h2load").context("h2load not found (nghttp2-client)")?;
    let setup = setups::skein(env, PAIR).await?;
    let [outbound, inbound] = [&setup.proxies[0], &setup.proxies[1]];
    let grpc_message = env.dir.path().join("grpc-request.bin");
    std::fs::write(
        &grpc_message,
        crate::grpc::message(crate::grpc::REQUEST_LEN),
    )
    .with_context(|| format!("cannot write {}", grpc_message.display()))?;
    let mut rows = Vec::new();
    for (what, addr, load) in [
        ("HTTP/1.1", setup.http, Load::Http1),
        (
            "HTTP/2",
            setup.h2.clone().map_err(anyhow::Error::msg)?,
            Load::Http2,
        ),
        (
            "gRPC",
            setup.grpc.clone().map_err(anyhow::Error::msg)?,
            Load::Grpc(&grpc_message),
        ),
    ] {
        h2load_n(&h2load, addr, WARM_UP, load).await?;
        let counts = measure(env.dir.path(), what, [outbound, inbound], || {
            h2load_n(&h2load, addr, requests, load)
        })
        .await
        .with_context(|| format!("callgrind, {what}"))?;
        eprintln!(
            "[callgrind] {what}: {} + {} instructions per request (outbound + inbound)",
            counts[0] / requests,
            counts[1] / requests
        );
        rows.push(Row {
            what: what.into(),
            unit: "request".into(),
            units: requests,
            outbound: counts[0] / requests,
            inbound: counts[1] / requests,
        });
    }
    let tcp = setup.tcp.clone().map_err(anyhow::Error::msg)?;
    let counts = measure(env.dir.path(), "TCP", [outbound, inbound], || async {
        crate::tcp::bulk(tcp, megabytes * 1_000_000, Duration::from_secs(600))
            .await
            .map(|_| ())
    })
    .await
    .context("callgrind, TCP")?;
    eprintln!(
        "[callgrind] TCP: {} + {} instructions per MB (outbound + inbound)",
        counts[0] / megabytes,
        counts[1] / megabytes
    );
    rows.push(Row {
        what: "opaque TCP".into(),
        unit: "MB".into(),
        units: megabytes,
        outbound: counts[0] / megabytes,
        inbound: counts[1] / megabytes,
    });
    Ok(Callgrind { rows })
}

/// What h2load sends.
#[derive(Debug, Clone, Copy)]
enum Load<'a> {
    /// HTTP/1.1 GETs on 8 keep-alive connections.
    Http1,
    /// HTTP/2 GETs on 4 connections × 8 streams.
    Http2,
    /// Unary gRPC calls, this request message each, on 4 connections × 8 streams.
    Grpc(&'a Path),
}

/// `h2load -n N` against `addr`; fails unless every request succeeded (for gRPC, with a
/// 200: h2load does not read trailers, the setup's probe checked `grpc-status`).
async fn h2load_n(h2load: &Path, addr: SocketAddr, n: u64, load: Load<'_>) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(h2load);
    match load {
        Load::Http1 => {
            cmd.args(["--h1", "-c8"]);
        }
        Load::Http2 | Load::Grpc(_) => {
            cmd.args(["-c4", "-m8"]);
        }
    }
    cmd.arg(format!("-n{n}")).arg("-t1");
    match load {
        Load::Grpc(message) => tools::grpc_calls_args(cmd.as_std_mut(), message, addr),
        Load::Http1 | Load::Http2 => {
            cmd.arg(format!("http://{addr}/"));
        }
    }
    let text = tools::output(cmd, "h2load", Duration::from_secs(900)).await?;
    let r = tools::parse_h2load(&text)?;
    if r.succeeded != n || r.errors > 0 || r.non_2xx > 0 {
        bail!(
            "h2load: {} of {n} succeeded, {} failed, {} non-2xx",
            r.succeeded,
            r.errors,
            r.non_2xx
        );
    }
    Ok(())
}

/// With this set to a directory, each measurement's profiles are copied there
/// (`<what>.<proxy>.callgrind`) for `callgrind_annotate`: where the instructions went.
pub const KEEP_ENV: &str = "SKEIN_BENCH_CALLGRIND_KEEP";

/// Zeroes both proxies' counters, runs `work`, dumps them: the instructions each
/// executed meanwhile. The profiles are kept when [`KEEP_ENV`] names a directory, and
/// then so is what each proxy ran since the previous dump (for the first measurement,
/// start-up; then each measurement's warm-up): dumped rather than zeroed, as
/// `<what>-before`.
async fn measure<F, Fut>(
    dir: &Path,
    what: &str,
    procs: [&Proc; 2],
    work: F,
) -> anyhow::Result<[u64; 2]>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let keeping = keep_dir().is_some();
    for p in procs {
        if keeping {
            // A dump zeroes the counters too.
            dump(dir, p, &format!("{what}-before")).await?;
        } else {
            control(p, &["-z"])?;
        }
    }
    work().await?;
    let mut counts = [0; 2];
    for (p, count) in procs.iter().zip(counts.iter_mut()) {
        *count = dump(dir, p, what).await?;
    }
    Ok(counts)
}

/// Dumps a proxy's counters (which zeroes them), waits for the dump and keeps it as
/// `what`; the instructions it counts.
async fn dump(dir: &Path, p: &Proc, what: &str) -> anyhow::Result<u64> {
    let before = dumps(dir, p.pid()).len();
    control(p, &["-d"])?;
    // The dump is complete once its totals (written last) are in it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = dumps(dir, p.pid());
        let last = files[before.min(files.len())..].last();
        if let Some((f, n)) =
            last.and_then(|f| Some((f, total(&std::fs::read_to_string(f).ok()?)?)))
        {
            keep(f, what, &p.name)?;
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("{}: callgrind wrote no complete dump within 60 s", p.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`KEEP_ENV`]'s directory, when it is set.
fn keep_dir() -> Option<std::ffi::OsString> {
    std::env::var_os(KEEP_ENV).filter(|d| !d.is_empty())
}

/// Copies a complete profile to [`KEEP_ENV`]'s directory, when it is set.
fn keep(profile: &Path, what: &str, proxy: &str) -> anyhow::Result<()> {
    let Some(dir) = keep_dir() else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).with_context(|| format!("{KEEP_ENV}: {}", dir.display()))?;
    let name: String = format!("{what}.{proxy}.callgrind")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    std::fs::copy(profile, dir.join(&name)).with_context(|| {
        format!(
            "{KEEP_ENV}: copying {} to {}",
            profile.display(),
            dir.display()
        )
    })?;
    eprintln!("[callgrind] kept {}", dir.join(name).display());
    Ok(())
}

/// `callgrind_control ARGS PID`.
fn control(p: &Proc, args: &[&str]) -> anyhow::Result<()> {
    let what = format!(
        "callgrind_control {} {} ({})",
        args.join(" "),
        p.pid(),
        p.name
    );
    crate::procs::run_checked(
        Command::new("callgrind_control")
            .args(args)
            .arg(p.pid().to_string()),
        &what,
    )
}

/// The numbered dumps of process `pid` in `dir` (`cg.TAG.PID.N`), oldest first.
fn dumps(dir: &Path, pid: u32) -> Vec<std::path::PathBuf> {
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let (head, n) = name.rsplit_once('.')?;
            let n: u32 = n.parse().ok()?;
            (name.starts_with("cg.") && head.ends_with(&format!(".{pid}"))).then(|| (n, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// The instruction count of a callgrind profile (its `summary:` or `totals:` line).
fn total(profile: &str) -> Option<u64> {
    profile
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The report's section.
pub fn markdown(o: &mut String, c: &Callgrind) {
    let _ = writeln!(
        o,
        "### Instructions per request through each proxy (callgrind)\n\n\
         The skein pair (mutual TLS, authorization, telemetry and tracing on) with both \
         proxies under `valgrind --tool=callgrind`; user-space instructions each proxy \
         executed per request (per MB for TCP) over a fixed amount of work after a warm-up. \
         Noise does not move these: compare them between commits.\n"
    );
    let _ = writeln!(o, "| | counted | outbound proxy | inbound proxy | both |");
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for r in &c.rows {
        let n = |v: u64| crate::report::thousands(v as f64);
        let _ = writeln!(
            o,
            "| {} (per {}) | {} {} | {} | {} | {} |",
            r.what,
            r.unit,
            n(r.units),
            if r.unit == "request" {
                "requests"
            } else {
                &r.unit
            },
            n(r.outbound),
            n(r.inbound),
            n(r.outbound + r.inbound)
        );
    }
    o.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_come_from_the_summary_or_totals_line() {
        assert_eq!(total("events: Ir\nsummary: 123456789\n"), Some(123_456_789));
        assert_eq!(total("events: Ir\ntotals: 42 7\n"), Some(42));
        assert_eq!(total("events: Ir\n"), None);
    }

    #[test]
    fn dumps_are_the_processs_own_in_order() {
        let dir = std::env::temp_dir().join(format!("skein-bench-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "cg.cg-outbound.77.2",
            "cg.cg-outbound.77.10",
            "cg.cg-inbound.78.1",
            "cg.cg-outbound.77",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let names: Vec<String> = dumps(&dir, 77)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["cg.cg-outbound.77.2", "cg.cg-outbound.77.10"]);
    }

    #[test]
    fn the_section_shows_each_proxy_and_their_sum() {
        let c = Callgrind {
            rows: vec![Row {
                what: "HTTP/1.1".into(),
                unit: "request".into(),
                units: 20_000,
                outbound: 61_000,
                inbound: 55_500,
            }],
        };
        let mut o = String::new();
        markdown(&mut o, &c);
        assert!(
            o.contains("| HTTP/1.1 (per request) | 20,000 requests | 61,000 | 55,500 | 116,500 |"),
            "{o}"
        );
    }
}
