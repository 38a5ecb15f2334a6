//! `skein`: one binary for the whole mesh. Today it runs the sidecar proxy and the demo;
//! the control plane and the kubectl-like CLI join it as they land.

mod demo;
mod proxy_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Skein: a service mesh in one binary.
#[derive(Parser)]
#[command(name = "skein", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `skein_proxy=debug` (also read from RUST_LOG).
    #[arg(long, global = true, env = "SKEIN_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy beside one workload.
    ///
    /// The proxy intercepts the workload's outbound connections (transparently via iptables
    /// REDIRECT, as an HTTP proxy, or on local upstream listeners), sends them to the peer
    /// proxies of the destination service over HTTP/2, and forwards inbound traffic from
    /// peers to the local application. SIGTERM or SIGINT drains in-flight requests, then
    /// exits 0. See docs/proxy-config.md for the configuration file.
    Proxy {
        /// The proxy's YAML configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Validate the configuration, print it with defaults applied, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run a meshed sample application on loopback with traffic flowing through proxies.
    ///
    /// Starts four proxies (one per workload, each a real `skein proxy` process), three
    /// sample services (frontend → restaurant over HTTP, frontend → ledger over TCP) and a
    /// bounded traffic generator; prints where to look and live request counts. Stops on
    /// Ctrl-C or after --duration, leaving nothing running.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Requests per second the traffic generator sends (1 to 500).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        rps: u32,
        /// Loopback network 127.0.N.0/24 the demo's workloads use.
        #[arg(long, default_value_t = 77)]
        net: u8,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    skein_model::duration::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration; write e.g. 30s, 5m or 1h"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Proxy { config, check } => proxy_cmd::run(&config, check).await,
            Command::Demo { duration, rps, net } => demo::run(duration, rps, net).await,
        }
    })
}
