//! `skein proxy`: load the configuration, run the proxy, drain on SIGTERM/SIGINT. A
//! refusal from the control plane that retrying cannot fix (revoked or used-up token,
//! a token for another service, a control plane the token does not pin) drains the proxy
//! too and exits non-zero with the reason.

use anyhow::Context;
use skein_model::ProxyConfig;
use skein_proxy::RunningProxy;
use std::path::Path;
use tokio::signal::unix::{signal, SignalKind};

/// Runs the proxy until a shutdown signal, then drains and returns.
pub async fn run(
    path: &Path,
    check: bool,
    control: Option<String>,
    join_token: Option<String>,
    advertise: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read proxy config {}", path.display()))?;
    let config = ProxyConfig::from_yaml(&text, &path.display().to_string())?;
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
