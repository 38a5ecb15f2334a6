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
    /// OTLP/gRPC receiver for applications' spans (`skein trace` shows them with the
    /// proxies'), or `off`.
    #[arg(long, default_value = "127.0.0.1:4317", value_parser = parse_otlp)]
    otlp: OtlpAddr,
    /// How long a workload whose proxy disconnected stays an endpoint.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    workload_grace: Duration,
    /// This replica's name (default: host name and process id).
    #[arg(long)]
    replica: Option<String>,
    /// Bring your own CA (used at first start only): the root certificate (PEM) …
    #[arg(long, requires_all = ["ca_cert", "ca_key"])]
    ca_root_cert: Option<PathBuf>,
    /// … optionally the root's key (needed only for `skein ca rotate` to mint anew) …
    #[arg(long, requires = "ca_root_cert")]
    ca_root_key: Option<PathBuf>,
    /// … and the intermediate certificate that signs workload certificates …
    #[arg(long, requires = "ca_root_cert")]
    ca_cert: Option<PathBuf>,
    /// … with its key (mode 0600 recommended).
    #[arg(long, requires = "ca_root_cert")]
    ca_key: Option<PathBuf>,
    /// Trust domain of an imported CA (a generated CA takes the Mesh resource's).
    #[arg(long, default_value = "skein.local")]
    ca_trust_domain: String,
    /// An address range (CIDR, repeatable) proxies may announce although they connect from
    /// another address, for proxies behind NAT. Without it a proxy may announce only the
    /// address the control plane sees it connect from.
    #[arg(long = "workload-cidr", value_name = "CIDR")]
    workload_cidrs: Vec<skein_control::IpNet>,
    /// A file holding the secrets key (64 hex characters) that encrypts the mesh CA's keys
    /// and the admin token in the store; required with etcd, the same for every replica.
    /// Or set SKEIN_SECRETS_KEY (never on the command line, where `ps` shows it).
    #[arg(long, value_name = "FILE")]
    secrets_key_file: Option<PathBuf>,
}

/// `--otlp`: an address, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct OtlpAddr(Option<SocketAddr>);

fn parse_otlp(text: &str) -> Result<OtlpAddr, String> {
    if text == "off" {
        return Ok(OtlpAddr(None));
    }
    text.parse().map(|a| OtlpAddr(Some(a))).map_err(|_| {
        format!("{text:?} is not an address; use IP:PORT (e.g. 127.0.0.1:4317) or off")
    })
}

/// The secrets key from `--secrets-key-file` or `SKEIN_SECRETS_KEY`, if given.
fn secrets_key(args: &ControlArgs) -> anyhow::Result<Option<skein_control::secrets::SecretsKey>> {
    let text = match (&args.secrets_key_file, std::env::var("SKEIN_SECRETS_KEY")) {
        (Some(path), _) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .with_context(|| format!("cannot read the secrets key file {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the secrets key file is readable by others; make it 0600");
            }
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the secrets key file {}", path.display()))?
        }
        (None, Ok(text)) => text,
        (None, Err(_)) => return Ok(None),
    };
    Ok(Some(text.parse()?))
}

/// Reads an imported CA's files, if given.
fn ca_import(args: &ControlArgs) -> anyhow::Result<Option<skein_identity::CaPem>> {
    let Some(root) = &args.ca_root_cert else {
        return Ok(None);
    };
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) else {
        anyhow::bail!("--ca-root-cert needs --ca-cert and --ca-key");
    };
    Ok(Some(skein_identity::CaPem {
        trust_domain: args.ca_trust_domain.clone(),
        root_cert: read(root)?,
        root_key: args.ca_root_key.as_ref().map(read).transpose()?,
        intermediate_cert: read(cert)?,
        intermediate_key: read(key)?,
        bundle: String::new(),
    }))
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
        ca_import: ca_import(&args)?,
        workload_cidrs: args.workload_cidrs.clone(),
        limits: Default::default(),
        secrets_key: secrets_key(&args)?,
        otlp: args.otlp.0,
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
