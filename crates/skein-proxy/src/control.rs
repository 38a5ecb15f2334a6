//! The control-plane client: registers this proxy's workload with `skein control`, applies
//! each configuration snapshot it pushes (atomically, or not at all), and acknowledges it.
//!
//! While the control plane is unreachable the proxy keeps serving on its last good
//! configuration and reconnects with exponential backoff and jitter. A snapshot that
//! cannot be applied is refused with the reason (a NACK), and the old one stays in force.

use crate::metrics::Direction;
use crate::Ctx;
use skein_api::v1::proxy_control_client::ProxyControlClient;
use skein_api::v1::{self as pb, proxy_message, Ack, ProxyMessage, Register, Snapshot};
use skein_model::{Destination, Endpoint, PortSpec, Protocol, ProxyConfig};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// First reconnect delay; doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// gRPC address, e.g. `http://127.0.0.1:9991`.
    pub endpoint: String,
    /// The address peers should use to reach this proxy's inbound listener.
    pub advertise: SocketAddr,
}

/// Keeps a session with the control plane until shutdown.
pub async fn run(ctx: Arc<Ctx>, control: ControlConfig) {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            _ = ctx.drain.signalled() => return,
            r = session(&ctx, &control) => r,
        };
        ctx.metrics.control_connected.set(0);
        match result {
            Ok(()) => {
                tracing::warn!(endpoint = %control.endpoint, "control plane closed the stream; reconnecting");
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(endpoint = %control.endpoint, error = %e, failures, "control plane unreachable; serving the last good configuration");
            }
        }
        let delay = backoff(failures);
        tokio::select! {
            _ = ctx.drain.signalled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential backoff with full jitter: a random delay in [d/2, d].
fn backoff(failures: u32) -> Duration {
    let exp = MIN_BACKOFF.saturating_mul(1u32 << failures.min(16));
    let capped = exp.min(MAX_BACKOFF);
    let random = RandomState::new().hash_one(failures) % 1000;
    capped / 2 + capped / 2 * random as u32 / 1000
}

/// One stream: register, then apply and acknowledge snapshots until it ends.
async fn session(ctx: &Arc<Ctx>, control: &ControlConfig) -> Result<(), tonic::Status> {
    let mut client = ProxyControlClient::connect(control.endpoint.clone())
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    let (tx, rx) = mpsc::channel::<ProxyMessage>(8);
    tx.send(register_message(&ctx.config(), control.advertise, ctx))
        .await
        .map_err(|_| tonic::Status::internal("stream closed"))?;
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut snapshots = client.sync(outgoing).await?.into_inner();
    ctx.metrics.control_connected.set(1);
    tracing::info!(endpoint = %control.endpoint, "connected to the control plane");
    while let Some(snapshot) = snapshots.message().await? {
        let version = snapshot.version;
        let error = match to_config(&ctx.config(), &snapshot).map(|c| ctx.apply(c)) {
            Ok(Ok(())) => {
                ctx.config_version.store(version, Ordering::SeqCst);
                ctx.metrics.config_version.set(version as i64);
                ctx.metrics.config_updates("applied");
                ctx.ready.store(true, Ordering::SeqCst);
                tracing::info!(version, "applied configuration snapshot");
                String::new()
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e,
        };
        if !error.is_empty() {
            ctx.metrics.config_updates("refused");
            ctx.metrics.error(Direction::Inbound, "config_refused");
            tracing::error!(version, %error, "refused configuration snapshot; keeping the previous one");
        }
        let ack = ProxyMessage {
            message: Some(proxy_message::Message::Ack(Ack { version, error })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn register_message(config: &ProxyConfig, advertise: SocketAddr, ctx: &Ctx) -> ProxyMessage {
    let w = &config.workload;
    let mut labels: std::collections::HashMap<String, String> =
        w.labels.clone().into_iter().collect();
    labels
        .entry("app".into())
        .or_insert_with(|| w.service.clone());
    ProxyMessage {
        message: Some(proxy_message::Message::Register(Register {
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            service: w.service.clone(),
            labels,
            address: advertise.ip().to_string(),
            inbound_port: u32::from(advertise.port()),
            app_ports: config
                .inbound
                .ports
                .iter()
                .map(|p| u32::from(p.port))
                .collect(),
            last_version: ctx.config_version.load(Ordering::SeqCst),
        })),
    }
}

/// Builds the configuration a snapshot describes: the proxy's own listeners and workload
/// stay, destinations and application ports come from the snapshot. Pure, so it is
/// unit-tested; validation happens when the result is applied.
pub fn to_config(base: &ProxyConfig, snapshot: &Snapshot) -> Result<ProxyConfig, String> {
    let mut next = base.clone();
    if !snapshot.inbound_ports.is_empty() {
        next.inbound.ports = snapshot
            .inbound_ports
            .iter()
            .map(port)
            .collect::<Result<_, _>>()?;
    }
    next.destinations = snapshot
        .destinations
        .iter()
        .map(|d| {
            Ok(Destination {
                service: d.service.clone(),
                namespace: d.namespace.clone(),
                ports: d.ports.iter().map(port).collect::<Result<_, String>>()?,
                addresses: d
                    .addresses
                    .iter()
                    .map(|a| {
                        a.parse::<IpAddr>().map_err(|_| {
                            format!("destination {}: address {a:?} is not an IP", d.service)
                        })
                    })
                    .collect::<Result<_, _>>()?,
                endpoints: d
                    .endpoints
                    .iter()
                    .map(|e| {
                        e.address
                            .parse::<SocketAddr>()
                            .map(|address| Endpoint { address })
                            .map_err(|_| {
                                format!(
                                    "destination {}: endpoint {:?} is not IP:PORT",
                                    d.service, e.address
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?,
                routes: if d.routes_json.is_empty() {
                    Vec::new()
                } else {
                    serde_json::from_slice(&d.routes_json).map_err(|e| {
                        format!("destination {}: routes are not readable: {e}", d.service)
                    })?
                },
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(next)
}

fn port(p: &pb::Port) -> Result<PortSpec, String> {
    let number = u16::try_from(p.port)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("port {} is not 1 to 65535", p.port))?;
    let protocol = match pb::Protocol::try_from(p.protocol) {
        Ok(pb::Protocol::Detect) => Protocol::Detect,
        Ok(pb::Protocol::Http) => Protocol::Http,
        Ok(pb::Protocol::Http2) => Protocol::Http2,
        Ok(pb::Protocol::Grpc) => Protocol::Grpc,
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Err(_) => return Err(format!("port {number}: unknown protocol {}", p.protocol)),
    };
    Ok(PortSpec {
        port: number,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ProxyConfig {
        ProxyConfig::from_yaml(
            "workload: {name: web-1, service: web}\ninbound: {ports: [{port: 8080}]}\n",
            "test",
        )
        .unwrap()
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 7,
            destinations: vec![pb::Destination {
                service: "api".into(),
                namespace: "default".into(),
                ports: vec![pb::Port {
                    port: 80,
                    protocol: pb::Protocol::Http as i32,
                }],
                addresses: vec!["198.18.1.10".into()],
                endpoints: vec![pb::Endpoint {
                    address: "127.0.0.5:4143".into(),
                    workload: "api-1".into(),
                }],
                routes_json: Vec::new(),
            }],
            inbound_ports: vec![pb::Port {
                port: 9090,
                protocol: pb::Protocol::Grpc as i32,
            }],
            trust_domain: "skein.local".into(),
        }
    }

    #[test]
    fn snapshot_becomes_config_keeping_listeners() {
        let base = base();
        let c = to_config(&base, &snapshot()).unwrap();
        assert_eq!(c.inbound.listen, base.inbound.listen);
        assert_eq!(c.inbound.ports[0].port, 9090);
        assert_eq!(c.inbound.ports[0].protocol, Protocol::Grpc);
        assert_eq!(c.destinations[0].endpoints[0].address.port(), 4143);
        c.validate("snapshot").unwrap();
    }

    #[test]
    fn malformed_snapshots_are_refused_with_reasons() {
        let mut s = snapshot();
        s.destinations[0].endpoints[0].address = "nowhere".into();
        let err = to_config(&base(), &s).unwrap_err();
        assert!(err.contains("endpoint \"nowhere\" is not IP:PORT"), "{err}");
        let mut s = snapshot();
        s.inbound_ports[0].port = 70000;
        assert!(to_config(&base(), &s)
            .unwrap_err()
            .contains("not 1 to 65535"));
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let first = backoff(1);
        assert!(
            first >= MIN_BACKOFF && first <= MIN_BACKOFF * 2,
            "{first:?}"
        );
        for failures in [10, 20, 100] {
            let d = backoff(failures);
            assert!(d >= MAX_BACKOFF / 2 && d <= MAX_BACKOFF, "{d:?}");
        }
    }
}
