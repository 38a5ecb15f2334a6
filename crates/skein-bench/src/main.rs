//! `skein-bench`: Skein's benchmark harness in one binary. `run` is the orchestrator
//! behind `bench/run`; the other subcommands are the parts it starts as processes (the
//! backend, the open-model load generator, the TCP sink and bulk sender) and can be run by
//! hand to look at one thing. See bench/README.md.

mod backend;
mod callgrind;
mod dashboard;
mod deployed;
mod grpc;
mod handshake;
mod link_order;
mod load;
mod memory;
mod nginx;
mod overload;
mod pair;
mod procs;
mod report;
mod resumption;
mod run;
mod scale;
mod scenarios;
mod setups;
mod slow;
mod soak;
mod tcp;
mod tools;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Benchmarks Skein against a direct connection and an nginx pair, on loopback.
#[derive(Parser)]
#[command(name = "skein-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 + HTTP/2 (prior knowledge) server answering every request 200 with 1 KiB.
    Backend {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Wait this long before answering each request, e.g. 20ms (default: answer at once).
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        delay: Duration,
    },
    /// Open-model load generator; prints JSON {sent, ok, errors, p50_us, …, achieved_rps}.
    ///
    /// Requests are scheduled every 1/RATE seconds regardless of earlier ones; latency is
    /// measured from each request's intended send time (no coordinated omission).
    Load {
        /// Where to send requests.
        #[arg(long)]
        addr: SocketAddr,
        /// Host header (HTTP/1.1) or :authority (HTTP/2).
        #[arg(long, default_value = "bench")]
        host: String,
        /// Requests per second.
        #[arg(long)]
        rate: f64,
        /// How long to schedule requests, e.g. 10s.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// Keep-alive connections opened up front (HTTP/1.1; the pool grows to 4× while all
        /// are busy) or HTTP/2 connections used throughout.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Use HTTP/2 with prior knowledge.
        #[arg(long)]
        h2: bool,
        /// A request unanswered this long after its intended send time is an error.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Closed-loop callers, each on its own keep-alive HTTP/1.1 connection, counting
    /// answers (200) and refusals (503) apart; prints JSON.
    Callers {
        /// Where to send requests.
        #[arg(long)]
        addr: SocketAddr,
        /// Host header.
        #[arg(long, default_value = "bench")]
        host: String,
        /// Concurrent callers.
        #[arg(long, default_value_t = 200)]
        callers: u32,
        /// How long they call, e.g. 10s.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// How long a refused caller waits before its next request.
        #[arg(long, default_value = "20ms", value_parser = parse_duration)]
        pause: Duration,
    },
    /// Makes unary gRPC calls one after another on one HTTP/2 connection, failing unless
    /// each ends with `grpc-status: 0` and the whole reply; prints JSON {calls}.
    GrpcCalls {
        /// Where to call.
        #[arg(long)]
        addr: SocketAddr,
        /// How many calls.
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
    /// Accepts TCP connections and discards what they send; closes each at end of stream.
    TcpSink {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Sends bytes to a sink, half-closes, waits for its close; prints JSON {bytes, secs, mb_per_s}.
    TcpBulk {
        /// The sink (or a proxy in front of it).
        #[arg(long)]
        addr: SocketAddr,
        /// Bytes to send.
        #[arg(long)]
        bytes: u64,
        /// Stop sending after this long even if fewer bytes went out.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Measures, in this process, full against resumed mutual-TLS handshakes with the
    /// mesh's own configurations; prints JSON (CPU µs and bytes per handshake).
    Resumption {
        /// Handshakes of each kind (rounded up to a whole block of 50).
        #[arg(long, default_value_t = 1000)]
        handshakes: u64,
    },
    /// One `skein control` against N simulated proxies (real certificates, real
    /// mutual-TLS gRPC streams): connect time, memory per proxy, a route change reaching
    /// every proxy (p50/p99/max) and the reconnect storm after a restart; prints JSON.
    Scale {
        /// Simulated proxies.
        #[arg(long, default_value_t = 1000)]
        proxies: usize,
        /// Services in the mesh besides the one every proxy calls (each with an HTTPRoute
        /// and an AuthorizationPolicy).
        #[arg(long, default_value_t = 100)]
        services: usize,
        /// The skein binary (default: next to this one).
        #[arg(long)]
        skein: Option<PathBuf>,
        /// Skip the restart and reconnect storm.
        #[arg(long)]
        no_restart: bool,
        /// Two replicas sharing an etcd started for the run (apt-get install etcd-server),
        /// proxies split between them; the storm kills and restarts the first.
        #[arg(long)]
        etcd: bool,
    },
    /// A real proxy's memory as the mesh grows to N Services (its application calling
    /// every one) and shrinks back to 10, against a fresh proxy's; prints JSON.
    Memory {
        /// Services the mesh grows to.
        #[arg(long, default_value_t = 5000)]
        services: usize,
        /// The skein binary (default: next to this one).
        #[arg(long)]
        skein: Option<PathBuf>,
        /// KEY=VALUE added to the proxies' environment (repeatable), e.g.
        /// LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 to compare allocators.
        #[arg(long = "proxy-env")]
        proxy_env: Vec<String>,
    },
    /// The functions the skein binary's linker places first (crates/skein/link-order.txt),
    /// from callgrind profiles written with --demangle=no: what they ran, the most
    /// instructions first. bench/link-order records the profiles and calls this.
    LinkOrder {
        /// Profiles, or directories of them.
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
        /// The binary that ran in them (only functions it defines are listed).
        #[arg(long)]
        binary: PathBuf,
        /// Where to write the list.
        #[arg(long)]
        out: PathBuf,
    },
    /// `skein demo` held up for a long run: every process of it sampled (RSS, open file
    /// descriptors), every proxy's request counters read; a JSON report and a table of
    /// growth per process and failures. Exits 1 on growth, an exited process or a failed
    /// request. See docs/reliability.md, "Soak".
    Soak {
        /// How long to sample once the demo's traffic flows, e.g. 30m.
        /// The default is long enough to judge the control plane, whose bounded stores
        /// fill for the first hour of traffic.
        #[arg(long, default_value = "80m", value_parser = parse_duration)]
        duration: Duration,
        /// How often to sample, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        sample: Duration,
        /// The skein binary (default: next to this one).
        #[arg(long)]
        skein: Option<PathBuf>,
        /// Where to write soak.json, samples.csv, counters.csv and the demo's logs
        /// (default: a new directory under $TMPDIR, kept).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Requests per second of the demo's traffic generator (1 to 500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        rps: u32,
        /// The demo's network: 198.18.N.0/24 in namespaces (as root), else 127.0.N.0/24.
        #[arg(long, default_value_t = 93)]
        net: u8,
        /// Run the demo on loopback even as root.
        #[arg(long)]
        loopback: bool,
    },
    /// Start the benchmark's skein pair (control plane, mutual TLS, authorization,
    /// telemetry) on 127.0.0.174–176 and hold it up until Ctrl-C, printing its addresses
    /// and the proxies' process ids: for profiling by hand (perf, strace).
    Pair,
    /// Run every setup and scenario, print a Markdown report, append it to
    /// docs/BENCHMARKS.md and write every figure as JSON.
    Run {
        /// Short measurements, one repetition: proves the harness works (CI).
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON (default target/bench/results-<timestamp>.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not append the report to docs/BENCHMARKS.md.
        #[arg(long)]
        no_append: bool,
        /// Run only this scenario (its own processes; no other setup starts).
        #[arg(long, value_enum)]
        only: Option<run::Only>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skein_model::duration::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration; write e.g. 500ms, 10s or 2m"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Backend { listen, delay } => multi_thread()?.block_on(backend::serve(listen, delay)),
        Cmd::Load {
            addr,
            host,
            rate,
            duration,
            connections,
            h2,
            timeout,
        } => {
            let spec = load::LoadSpec {
                addr,
                host,
                rate,
                duration,
                connections,
                max_connections: connections * 4,
                h2,
                timeout,
            };
            let report = current_thread()?.block_on(load::run(spec))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Callers {
            addr,
            host,
            callers,
            duration,
            pause,
        } => {
            let spec = overload::CallersSpec {
                addr,
                host,
                callers,
                duration,
                pause,
            };
            let report = multi_thread()?.block_on(overload::callers(spec))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::GrpcCalls { addr, count } => {
            let report = current_thread()?.block_on(grpc::calls(addr, count))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::TcpSink { listen } => current_thread()?.block_on(tcp::sink(listen)),
        Cmd::TcpBulk {
            addr,
            bytes,
            duration,
        } => {
            let report = current_thread()?.block_on(tcp::bulk(addr, bytes, duration))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Resumption { handshakes } => {
            let report = resumption::run(handshakes)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Scale {
            proxies,
            services,
            skein,
            no_restart,
            etcd,
        } => {
            let skein = skein_binary(skein)?;
            let opts = scale::Options {
                proxies,
                services,
                skein,
                restart: !no_restart,
                etcd,
            };
            let figures = multi_thread()?.block_on(scale::run(opts))?;
            println!("{figures}");
            Ok(())
        }
        Cmd::Memory {
            services,
            skein,
            proxy_env,
        } => {
            let env = proxy_env
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => Err(anyhow::anyhow!(
                        "--proxy-env {kv:?} is not accepted; expected KEY=VALUE"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = memory::Options {
                services,
                skein: skein_binary(skein)?,
                env,
            };
            let figures = multi_thread()?.block_on(memory::run(opts))?;
            println!("{figures}");
            Ok(())
        }
        Cmd::LinkOrder {
            profiles,
            binary,
            out,
        } => link_order::run(&profiles, &binary, &out),
        Cmd::Soak {
            duration,
            sample,
            skein,
            out,
            rps,
            net,
            loopback,
        } => {
            let opts = soak::Options {
                duration,
                sample,
                skein: skein_binary(skein)?,
                out,
                rps,
                net,
                loopback,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            // One thread, as for `run`: the demo is spawned from it (PR_SET_PDEATHSIG).
            let report = current_thread()?.block_on(until_signal(soak::run(opts)))?;
            if !report.passed {
                anyhow::bail!(
                    "soak: FAIL: {} flagged processes, {} failures (the verdict is above; the report in {})",
                    report.flagged.len(),
                    report.unexplained_failures,
                    report.out
                );
            }
            Ok(())
        }
        Cmd::Pair => multi_thread()?.block_on(pair::hold()),
        Cmd::Run {
            quick,
            out,
            no_append,
            only,
        } => {
            let args = run::RunArgs {
                quick,
                out,
                no_append,
                only,
            };
            // One thread: children are spawned from it, which PR_SET_PDEATHSIG relies on.
            current_thread()?.block_on(until_signal(run::run(args)))
        }
    }
}

/// Runs `work` (the orchestrator, the soak); on SIGINT or SIGTERM drops it, which stops
/// every child.
async fn until_signal<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        result = work => return result,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // The run future has been dropped by now: its processes are stopped, its files gone.
    anyhow::bail!("{name} received: stopped every process started and removed scratch files")
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `skein` as given, else the one next to this binary.
fn skein_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("skein"))
            .ok_or_else(|| anyhow::anyhow!("cannot find the skein binary; pass --skein")),
    }
}

fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
