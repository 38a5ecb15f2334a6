//! `skein proxy`: load the configuration, run the proxy, drain on SIGTERM/SIGINT. A
//! refusal from the control plane that retrying cannot fix (revoked or used-up token,
//! a token for another service, a control plane the token does not pin) drains the proxy
//! too and exits non-zero with the reason. `--intercept` instead installs (or with
//! `--uninstall` removes) the transparent capture rules for the configuration in the
//! current network namespace, and exits.

use anyhow::Context;
use skein_model::ProxyConfig;
use skein_proxy::RunningProxy;
use std::path::Path;
use tokio::signal::unix::{signal, SignalKind};

/// Reads and validates the configuration file, or stdin for `-`.
fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the proxy config from stdin")?;
        text
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read proxy config {}", path.display()))?
    };
    let source = match path == Path::new("-") {
        true => "stdin".to_string(),
        false => path.display().to_string(),
    };
    Ok(ProxyConfig::from_yaml(&text, &source)?)
}

/// What `--intercept` captures beyond the configuration's own ports.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct InterceptArgs {
    /// Install the transparent capture rules for this configuration in the current
    /// network namespace (as an init container or CNI plugin does) and exit; the proxy
    /// must then run with --proxy-gid as its group.
    #[arg(long)]
    pub intercept: bool,
    /// With --intercept: remove the rules instead.
    #[arg(long, requires = "intercept")]
    pub uninstall: bool,
    /// With --intercept: the group id the proxy runs with (its connections are not
    /// captured).
    #[arg(long, default_value_t = crate::capture::DEFAULT_PROXY_GID, requires = "intercept")]
    pub proxy_gid: u32,
    /// With --intercept: outbound TCP to these ports bypasses the proxy (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "intercept")]
    pub exclude_outbound_ports: Vec<u16>,
    /// With --intercept: outbound traffic to these IPv4 networks bypasses the proxy.
    #[arg(long, value_delimiter = ',', requires = "intercept")]
    pub exclude_outbound_cidrs: Vec<String>,
    /// With --intercept: inbound TCP to these ports reaches the application directly.
    #[arg(long, value_delimiter = ',', requires = "intercept")]
    pub exclude_inbound_ports: Vec<u16>,
}

/// `skein proxy --intercept [--uninstall]`.
pub fn intercept(path: &Path, args: &InterceptArgs) -> anyhow::Result<()> {
    let iptables = crate::capture::Iptables { netns: None };
    if args.uninstall {
        iptables.uninstall()?;
        eprintln!(
            "removed the capture chains {} and {} and the jumps into them",
            crate::capture::OUTPUT_CHAIN,
            crate::capture::INBOUND_CHAIN
        );
        return Ok(());
    }
    let config = load(path)?;
    let mut capture = crate::capture::Capture::for_config(&config, args.proxy_gid)?;
    capture.exclude_outbound_ports = args.exclude_outbound_ports.clone();
    for c in &args.exclude_outbound_cidrs {
        let net = crate::capture::parse_cidr(c)
            .map_err(|e| anyhow::anyhow!("--exclude-outbound-cidrs: {e}"))?;
        capture.exclude_outbound_cidrs.push(net);
    }
    capture.exclude_inbound_ports = args.exclude_inbound_ports.clone();
    iptables.install(&capture)?;
    let missing = iptables.missing(&capture)?;
    if !missing.is_empty() {
        anyhow::bail!(
            "installed the capture rules, but iptables does not list these: {}",
            missing.join("; ")
        );
    }
    for rule in capture.plan() {
        println!("iptables -t nat {}", rule.join(" "));
    }
    eprintln!(
        "installed; run the proxy with group id {} (its own connections are exempt by it, any other process's are captured)",
        args.proxy_gid
    );
    if has_global_ipv6() {
        eprintln!("warning: this namespace has a global IPv6 address; IPv6 traffic is not captured (only IPv4 is), so disable IPv6 here or do not rely on the proxy for it");
    }
    Ok(())
}

/// Whether an interface here has a global IPv6 address (`/proc/net/if_inet6`, scope 00).
fn has_global_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| t.lines().any(|l| l.split_whitespace().nth(3) == Some("00")))
        .unwrap_or(false)
}

/// Runs the proxy until a shutdown signal, then drains and returns.
pub async fn run(
    path: &Path,
    check: bool,
    control: Option<String>,
    join_token: Option<String>,
    advertise: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    // The proxy holds a private key and perhaps a join token: no core dumps, and no other
    // process of the same user may read its memory or environment.
    // SAFETY: prctl with PR_SET_DUMPABLE only changes this process's flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let config = load(path)?;
    let warnings = config.warnings();
    if check {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    if control.is_none() {
        for w in &warnings {
            tracing::warn!("{w}");
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let control = match control {
        Some(addr) => {
            let advertise = advertise.unwrap_or(config.inbound.listen);
            if advertise.ip().is_unspecified() {
                anyhow::bail!(
                    "the inbound listener is {advertise}: pass --advertise IP:PORT so peers know where to reach this proxy"
                );
            }
            let token = join_token
                .context("--control needs a join token: pass --join-token or set SKEIN_JOIN_TOKEN (create one with `skein token create --service NAME`)")?
                .parse::<skein_identity::JoinToken>()?;
            Some(skein_proxy::control::ControlConfig {
                endpoint: addr,
                advertise,
                token,
            })
        }
        None => None,
    };
    let proxy = RunningProxy::start_with_control(config, control).await?;
    let refused = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM received: draining in-flight requests"); None }
        _ = int.recv() => { tracing::info!("SIGINT received: draining in-flight requests"); None }
        reason = proxy.fatal() => Some(reason),
    };
    if !proxy.shutdown().await {
        tracing::warn!("drain deadline passed; remaining connections were closed");
    }
    match refused {
        None => Ok(()),
        Some(reason) => anyhow::bail!("the control plane refused this proxy: {reason}"),
    }
}
