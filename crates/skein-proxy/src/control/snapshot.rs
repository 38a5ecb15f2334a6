//! Turning a snapshot into the configuration the proxy applies: pure, so every rule is
//! unit-tested here; validation happens when the result is applied.

use skein_api::v1 as pb;
use skein_api::v1::Snapshot;
use skein_identity::SpiffeId;
use skein_model::{Destination, Endpoint, PortSpec, Protocol, ProxyConfig};
use std::net::{IpAddr, SocketAddr};

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
                        let address = e.address.parse::<SocketAddr>().map_err(|_| {
                            format!(
                                "destination {}: endpoint {:?} is not IP:PORT",
                                d.service, e.address
                            )
                        })?;
                        if e.identity.is_empty() {
                            return Err(format!(
                                "destination {}: endpoint {} has no identity; refusing it rather than sending plaintext",
                                d.service, e.address
                            ));
                        }
                        let identity: SpiffeId = e.identity.parse().map_err(|err| {
                            format!("destination {}: endpoint {}: {err}", d.service, e.address)
                        })?;
                        Ok(Endpoint {
                            address,
                            identity: Some(identity.to_string()),
                        })
                    })
                    .collect::<Result<_, String>>()?,
                routes: if d.routes_json.is_empty() {
                    Vec::new()
                } else {
                    serde_json::from_slice(&d.routes_json).map_err(|e| {
                        format!("destination {}: routes are not readable: {e}", d.service)
                    })?
                },
                identities: admitted(d)?,
            })
        })
        .collect::<Result<_, String>>()?;
    // Empty from a control plane that predates authorization: the file's (default allow).
    if !snapshot.authorization_json.is_empty() {
        next.authorization = serde_json::from_slice(&snapshot.authorization_json)
            .map_err(|e| format!("the authorization policies are not readable: {e}"))?;
    }
    Ok(next)
}

/// The identities destination `d` admits, each parsed; every endpoint's identity must be
/// one of them, so a registrant cannot make this proxy accept another account as the
/// service. Empty from a control plane that predates `identities`.
fn admitted(d: &pb::Destination) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(d.identities.len());
    for text in &d.identities {
        let id: SpiffeId = text
            .parse()
            .map_err(|e| format!("destination {}: admitted identity: {e}", d.service))?;
        ids.push(id.to_string());
    }
    if !ids.is_empty() {
        if let Some(e) = d.endpoints.iter().find(|e| !ids.contains(&e.identity)) {
            return Err(format!(
                "destination {}: endpoint {} announces identity {}, which the service does not admit ({}); refusing the snapshot",
                d.service,
                e.address,
                e.identity,
                ids.join(", ")
            ));
        }
    }
    Ok(ids)
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
                    identity: "spiffe://skein.local/ns/default/sa/api".into(),
                }],
                routes_json: Vec::new(),
                identities: vec!["spiffe://skein.local/ns/default/sa/api".into()],
            }],
            inbound_ports: vec![pb::Port {
                port: 9090,
                protocol: pb::Protocol::Grpc as i32,
            }],
            trust_domain: "skein.local".into(),
            ..Snapshot::default()
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
        s.destinations[0].endpoints[0].identity = "spiffe://skein.local/ns/default/sa/evil".into();
        let err = to_config(&base(), &s).unwrap_err();
        assert!(
            err.contains("endpoint 127.0.0.5:4143 announces identity spiffe://skein.local/ns/default/sa/evil, which the service does not admit (spiffe://skein.local/ns/default/sa/api)"),
            "{err}"
        );
        let mut s = snapshot();
        s.inbound_ports[0].port = 70000;
        assert!(to_config(&base(), &s)
            .unwrap_err()
            .contains("not 1 to 65535"));
    }
}
