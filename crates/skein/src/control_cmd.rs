//! `skein control`: run the control plane until SIGTERM/SIGINT.

use anyhow::Context;
use skein_control::server::{ControlOptions, RunningControl, StoreChoice};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Options of `skein control`.
#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    /// Data directory: the embedded store and the admin token (mode 0600).
    #[arg(long, env = "SKEIN_DATA_DIR", default_value_os_t = crate::cli::default_data_dir())]
    data_dir: PathBuf,
    /// `embedded` (default) or `etcd://HOST:PORT[,HOST:PORT…]` for replicas sharing etcd.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/skein/")]
    etcd_prefix: String,
    /// HTTP API (CLI, dashboard) listen address.
    #[arg(long, default_value = "127.0.0.1:9990")]
    http: SocketAddr,
    /// Proxy gRPC API listen address.
    #[arg(long, default_value = "0.0.0.0:9991")]
    grpc: SocketAddr,
    /// How long a workload whose proxy disconnected stays an endpoint.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    workload_grace: Duration,
    /// This replica's name (default: host name and process id).
    #[arg(long)]
    replica: Option<String>,
}

/// Parses `--store`.
fn store(spec: &str, prefix: &str) -> anyhow::Result<StoreChoice> {
    if spec == "embedded" {
        return Ok(StoreChoice::Embedded);
    }
    let Some(list) = spec.strip_prefix("etcd://") else {
        anyhow::bail!(
            "--store {spec:?} is not understood; use `embedded` or `etcd://HOST:PORT[,HOST:PORT…]`"
        );
    };
    let endpoints: Vec<String> = list
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        anyhow::bail!("--store etcd:// needs at least one HOST:PORT");
    }
    Ok(StoreChoice::Etcd {
        endpoints,
        prefix: prefix.to_string(),
    })
}

/// Runs until a signal.
pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    let replica = args.replica.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let opts = ControlOptions {
        data_dir: args.data_dir.clone(),
        store: store(&args.store, &args.etcd_prefix)?,
        http: args.http,
        grpc: args.grpc,
        workload_grace: args.workload_grace,
        replica,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let control = RunningControl::start(opts)
        .await
        .context("cannot start the control plane")?;
    eprintln!(
        "skein control: HTTP API on {}, proxies connect to {}, admin token in {}",
        control.http,
        control.grpc,
        skein_control::token::path(&args.data_dir).display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    control.shutdown().await;
    Ok(())
}
