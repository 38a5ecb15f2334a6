//! Turning a snapshot into the configuration the proxy applies: pure, so every rule is
//! unit-tested here; validation happens when the result is applied.

use skein_api::convert;
use skein_api::v1 as pb;
use skein_api::v1::Snapshot;
use skein_identity::SpiffeId;
use skein_model::{Destination, Endpoint, PortSpec, Protocol, ProxyConfig};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The configuration a message on the `Sync` stream leaves this proxy with, given the
/// configuration in force (`base`, of version `held`): a complete snapshot's
/// ([`to_config`]) or a delta's ([`apply_delta`]). Not yet validated: applying it does
/// that.
pub fn next_config(
    base: &ProxyConfig,
    held: u64,
    message: &Snapshot,
) -> Result<ProxyConfig, String> {
    match &message.delta {
        None => to_config(base, message),
        Some(delta) => apply_delta(base, held, delta),
    }
}

/// Builds the configuration a snapshot describes: the proxy's own listeners and workload
/// stay, destinations and application ports come from the snapshot. Pure, so it is
/// unit-tested; validation happens when the result is applied.
pub fn to_config(base: &ProxyConfig, snapshot: &Snapshot) -> Result<ProxyConfig, String> {
    let mut next = local_to_config(base, snapshot)?;
    let held: HashMap<(&str, &str), &Arc<Destination>> = base
        .destinations
        .iter()
        .map(|d| ((d.namespace.as_str(), d.service.as_str()), d))
        .collect();
    next.destinations = snapshot
        .destinations
        .iter()
        .map(|d| {
            let d = destination(d)?;
            let same = held.get(&(d.namespace.as_str(), d.service.as_str()));
            Ok(shared(same.copied(), d))
        })
        .collect::<Result<_, String>>()?;
    Ok(next)
}

/// `d`, or `held` (the destination of that name held now) if equal to it: a destination
/// received again unchanged (as the proxy keeps it; the wire may differ in what the proxy
/// drops) is the one held, shared rather than copied.
fn shared(held: Option<&Arc<Destination>>, d: Destination) -> Arc<Destination> {
    match held {
        Some(h) if **h == d => Arc::clone(h),
        _ => Arc::new(d),
    }
}

/// Applies a delta to `base` (the configuration in force, of version `held`): its
/// `rest` if present, then its destinations added or replaced and those it removes
/// dropped. Refuses a delta made for another version than the one held.
pub fn apply_delta(
    base: &ProxyConfig,
    held: u64,
    delta: &pb::Delta,
) -> Result<ProxyConfig, String> {
    if delta.base_version != held {
        return Err(format!(
            "the delta changes version {}, but this proxy holds version {held}; send the whole configuration",
            delta.base_version
        ));
    }
    let mut next = match &delta.rest {
        Some(rest) => local_to_config(base, rest)?,
        None => base.clone(),
    };
    let added: Vec<Arc<Destination>> = delta
        .destinations
        .iter()
        .map(|d| {
            let d = destination(d)?;
            let same = base
                .destinations
                .iter()
                .find(|h| h.namespace == d.namespace && h.service == d.service);
            Ok(shared(same, d))
        })
        .collect::<Result<_, String>>()?;
    // By `(namespace, name)`, compared without building a key per destination held.
    let gone: HashSet<(&str, &str)> = delta
        .removed
        .iter()
        .filter_map(|r| r.split_once('/'))
        .chain(
            added
                .iter()
                .map(|a| (a.namespace.as_str(), a.service.as_str())),
        )
        .collect();
    next.destinations
        .retain(|d| !gone.contains(&(d.namespace.as_str(), d.service.as_str())));
    next.destinations.extend(added);
    next.destinations
        .sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
    Ok(next)
}

/// One destination as the proxy holds it: addresses and identities parsed, every
/// endpoint's identity one the service admits.
fn destination(d: &pb::Destination) -> Result<Destination, String> {
    Ok(Destination {
        service: d.service.clone(),
        namespace: d.namespace.clone(),
        ports: d.ports.iter().map(port).collect::<Result<_, String>>()?,
        addresses: d
            .addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| format!("destination {}: address {a:?} is not an IP", d.service))
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
        routes: convert::routes_from_wire(&d.routes),
        policies: convert::policies_from_wire(&d.service, &d.policies)?,
        identities: admitted(d)?,
    })
}

/// Everything a snapshot sets but destinations, applied to `base` (whose destinations
/// stay).
fn local_to_config(base: &ProxyConfig, snapshot: &Snapshot) -> Result<ProxyConfig, String> {
    if let Some(missing) = snapshot
        .requires
        .iter()
        .find(|r| !CAPABILITIES.contains(&r.as_str()))
    {
        return Err(format!(
            "the snapshot requires {missing:?}, which this proxy does not implement (it implements: {}); upgrade the proxy",
            if CAPABILITIES.is_empty() { "nothing beyond the base protocol".to_string() } else { CAPABILITIES.join(", ") }
        ));
    }
    let mut next = base.clone();
    if !snapshot.inbound_ports.is_empty() {
        next.inbound.ports = snapshot
            .inbound_ports
            .iter()
            .map(port)
            .collect::<Result<_, _>>()?;
    }
    next.inbound.limit = snapshot.app_limit.as_ref().map(|l| skein_model::AppLimit {
        policy: l.policy.clone(),
        max_concurrent_requests: l.max_concurrent_requests,
        max_pending_requests: l.max_pending_requests,
        adaptive: l.adaptive.as_ref().map(convert::adaptive_from_wire),
    });
    if let Some(t) = &snapshot.tracing {
        // The range is checked when the configuration is applied; a value that is not a
        // number has no range and would not even equal itself.
        if t.sampling_percent.is_nan() {
            return Err(format!(
                "tracing.samplingPercent {} is not a number; {}",
                t.sampling_percent,
                skein_model::SAMPLING_FORM
            ));
        }
        next.telemetry.tracing = skein_model::TracingSpec {
            enabled: !t.disabled,
            sampling_percent: t.sampling_percent,
            collector: (!t.collector.is_empty()).then(|| t.collector.clone()),
        };
    }
    // A control plane always sends who may call this workload. Without it (a control
    // plane from before typed authorization), keeping the file's policy could allow
    // what the mesh denies: refuse instead.
    let Some(a) = &snapshot.authorization else {
        return Err("the snapshot carries no authorization (a control plane older than this proxy?); refusing it rather than falling back to this proxy's own policy; upgrade the control plane".into());
    };
    next.authorization = convert::authorization_from_wire(a)?;
    Ok(next)
}

/// The capabilities this proxy implements beyond the base protocol, as a snapshot's
/// `requires` names them. None yet: the list grows with the first feature that must not
/// be ignored by older proxies.
const CAPABILITIES: &[&str] = &[];

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
    let target_port = match p.target_port {
        None => None,
        Some(t) => Some(
            u16::try_from(t)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("port {number}: targetPort {t} is not 1 to 65535"))?,
        ),
    };
    Ok(PortSpec {
        port: number,
        protocol,
        target_port,
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
                    target_port: None,
                }],
                addresses: vec!["198.18.1.10".into()],
                endpoints: vec![pb::Endpoint {
                    address: "127.0.0.5:4143".into(),
                    workload: "api-1".into(),
                    identity: "spiffe://skein.local/ns/default/sa/api".into(),
                }],
                routes: Vec::new(),
                policies: Vec::new(),
                identities: vec!["spiffe://skein.local/ns/default/sa/api".into()],
                digest: 0,
            }],
            inbound_ports: vec![pb::Port {
                port: 9090,
                protocol: pb::Protocol::Grpc as i32,
                target_port: None,
            }],
            trust_domain: "skein.local".into(),
            authorization: Some(pb::Authorization::default()),
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
        s.authorization = None;
        let err = to_config(&base(), &s).unwrap_err();
        assert!(err.contains("carries no authorization"), "{err}");
        let mut s = snapshot();
        s.inbound_ports[0].port = 70000;
        assert!(to_config(&base(), &s)
            .unwrap_err()
            .contains("not 1 to 65535"));
        // Numbers that are not numbers: no range check could hold them.
        let mut s = snapshot();
        s.tracing = Some(pb::Tracing {
            sampling_percent: f64::NAN,
            ..Default::default()
        });
        let err = to_config(&base(), &s).unwrap_err();
        assert!(
            err.contains("tracing.samplingPercent NaN is not a number; a percentage from 0 to 100"),
            "{err}"
        );
        let mut s = snapshot();
        s.destinations[0].policies.push(pb::BackendPolicy {
            name: "default/api".into(),
            retry_budget: Some(pb::RetryBudget {
                ratio: f64::NAN,
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = to_config(&base(), &s).unwrap_err();
        assert!(
            err.contains("retryBudget.ratio NaN is not a number"),
            "{err}"
        );
    }

    /// Messages as a newer control plane might send them: today's fields and one more
    /// (tag 99) at every level this proxy reads.
    mod future {
        use skein_api::v1 as pb;

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Snapshot {
            #[prost(uint64, tag = "1")]
            pub version: u64,
            #[prost(message, repeated, tag = "2")]
            pub destinations: Vec<Destination>,
            #[prost(message, repeated, tag = "3")]
            pub inbound_ports: Vec<pb::Port>,
            #[prost(string, tag = "4")]
            pub trust_domain: String,
            #[prost(message, optional, tag = "10")]
            pub authorization: Option<Authorization>,
            #[prost(string, tag = "99")]
            pub novelty: String,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Destination {
            #[prost(string, tag = "1")]
            pub service: String,
            #[prost(string, tag = "2")]
            pub namespace: String,
            #[prost(message, repeated, tag = "3")]
            pub ports: Vec<pb::Port>,
            #[prost(message, repeated, tag = "5")]
            pub endpoints: Vec<pb::Endpoint>,
            #[prost(string, repeated, tag = "7")]
            pub identities: Vec<String>,
            #[prost(message, repeated, tag = "8")]
            pub routes: Vec<Route>,
            #[prost(message, repeated, tag = "9")]
            pub policies: Vec<BackendPolicy>,
            #[prost(uint32, tag = "99")]
            pub novelty: u32,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Route {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(message, repeated, tag = "3")]
            pub rules: Vec<RouteRule>,
            #[prost(string, repeated, tag = "99")]
            pub novelty: Vec<String>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct RouteRule {
            #[prost(message, repeated, tag = "2")]
            pub matches: Vec<pb::RouteMatch>,
            #[prost(message, repeated, tag = "3")]
            pub backends: Vec<pb::BackendRef>,
            #[prost(message, optional, tag = "99")]
            pub mirror: Option<pb::BackendRef>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct BackendPolicy {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(message, optional, tag = "4")]
            pub connection_pool: Option<ConnectionPool>,
            #[prost(bool, tag = "99")]
            pub novelty: bool,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ConnectionPool {
            #[prost(uint32, tag = "1")]
            pub max_connections: u32,
            #[prost(uint32, tag = "2")]
            pub max_concurrent_requests: u32,
            #[prost(uint32, tag = "3")]
            pub max_pending_requests: u32,
            #[prost(uint32, tag = "99")]
            pub max_requests_per_second: u32,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Authorization {
            #[prost(int32, tag = "1")]
            pub default_action: i32,
            #[prost(message, repeated, tag = "2")]
            pub policies: Vec<pb::AuthorizationPolicy>,
            #[prost(string, tag = "99")]
            pub novelty: String,
        }
    }

    /// `snapshot()`'s destination renamed `name`, on endpoint `127.0.0.<host>`.
    fn named(name: &str, host: u8) -> pb::Destination {
        let mut d = snapshot().destinations.remove(0);
        d.service = name.into();
        d.addresses.clear();
        d.endpoints[0].address = format!("127.0.0.{host}:4143");
        d
    }

    #[test]
    fn a_delta_replaces_adds_and_removes_sharing_the_rest() {
        let mut full = snapshot();
        full.destinations = vec![named("api", 5), named("db", 6), named("cache", 7)];
        let held = to_config(&base(), &full).unwrap();
        let delta = pb::Delta {
            base_version: 7,
            destinations: vec![named("api", 9), named("queue", 8)],
            removed: vec!["default/cache".into()],
            rest: None,
        };
        let next = apply_delta(&held, 7, &delta).unwrap();
        let names: Vec<&str> = next
            .destinations
            .iter()
            .map(|d| d.service.as_str())
            .collect();
        assert_eq!(names, ["api", "db", "queue"]);
        assert_eq!(next.destinations[0].endpoints[0].address.port(), 4143);
        assert_eq!(
            next.destinations[0].endpoints[0].address.ip().to_string(),
            "127.0.0.9"
        );
        // `db` is the one held, not a copy.
        assert!(Arc::ptr_eq(&held.destinations[1], &next.destinations[1]));
        next.validate_since("delta", Some(&held)).unwrap();
        // Made for another version: refused, saying what to do.
        let err = apply_delta(&held, 6, &delta).unwrap_err();
        assert!(err.contains("send the whole configuration"), "{err}");
        // Sent again unchanged, a destination is the one held.
        let resent = pb::Delta {
            base_version: 8,
            destinations: vec![named("db", 6)],
            ..Default::default()
        };
        let same = apply_delta(&next, 8, &resent).unwrap();
        assert!(Arc::ptr_eq(&same.destinations[1], &next.destinations[1]));
        // A whole configuration equal in part shares that part too.
        let again = to_config(&next, &full).unwrap();
        assert!(Arc::ptr_eq(&again.destinations[1], &next.destinations[1]));
        assert!(!Arc::ptr_eq(&again.destinations[0], &next.destinations[0]));
    }

    #[test]
    fn a_snapshot_with_fields_from_the_future_applies() {
        use prost::Message;
        let id = "spiffe://skein.local/ns/default/sa/api";
        let route_match = pb::RouteMatch {
            path: Some(pb::PathMatch {
                kind: pb::MatchKind::MatchPathPrefix as i32,
                value: "/v2".into(),
            }),
            ..Default::default()
        };
        let newer = future::Snapshot {
            version: 9,
            trust_domain: "skein.local".into(),
            destinations: ["api", "api-v2"]
                .iter()
                .enumerate()
                .map(|(i, name)| future::Destination {
                    service: name.to_string(),
                    namespace: "default".into(),
                    ports: vec![pb::Port {
                        port: 80,
                        protocol: pb::Protocol::Http as i32,
                        target_port: None,
                    }],
                    endpoints: vec![pb::Endpoint {
                        address: format!("127.0.0.{}:4143", 5 + i),
                        workload: format!("{name}-1"),
                        identity: id.into(),
                    }],
                    identities: vec![id.into()],
                    routes: (i == 0)
                        .then(|| future::Route {
                            name: "default/api".into(),
                            rules: vec![future::RouteRule {
                                matches: vec![route_match.clone()],
                                backends: vec![pb::BackendRef {
                                    name: "api-v2".into(),
                                    namespace: "default".into(),
                                    port: None,
                                    weight: 1,
                                    filters: vec![],
                                    refused: String::new(),
                                }],
                                mirror: Some(pb::BackendRef::default()),
                            }],
                            novelty: vec!["x".into()],
                        })
                        .into_iter()
                        .collect(),
                    policies: vec![future::BackendPolicy {
                        name: format!("default/{name}"),
                        connection_pool: Some(future::ConnectionPool {
                            max_connections: 100,
                            max_concurrent_requests: 7,
                            max_pending_requests: 0,
                            max_requests_per_second: 50,
                        }),
                        novelty: true,
                    }],
                    novelty: 3,
                })
                .collect(),
            authorization: Some(future::Authorization {
                default_action: pb::PolicyAction::Deny as i32,
                policies: vec![],
                novelty: "later".into(),
            }),
            novelty: "from a newer control plane".into(),
            ..Default::default()
        };
        let bytes = newer.encode_to_vec();
        let snapshot = Snapshot::decode(bytes.as_slice()).expect("unknown fields are skipped");
        let config = to_config(&base(), &snapshot).expect("applies");
        config.validate("snapshot").expect("valid");
        let api = &config.destinations[0];
        assert_eq!(
            api.policies[0].spec.connection_pool.max_concurrent_requests,
            7
        );
        assert_eq!(
            config.authorization.default,
            skein_model::resource::PolicyAction::Deny
        );
        // In force: the route sends /v2 to api-v2, under the policy's limit.
        let state = crate::state::State::new(config, None);
        let req = http::Request::get("http://api/v2/menu").body(()).unwrap();
        let plan = crate::outbound::plan::plan(
            &state.destinations,
            &crate::outbound::Addressed::Authority,
            &req,
            0,
        )
        .unwrap();
        assert_eq!(plan.backend.service.spec.service, "api-v2");
        assert_eq!(&*plan.target.policy().name, "default/api");

        // What must not be ignored is refused, naming it.
        let mut strict = snapshot.clone();
        strict.requires.push("authorization.headers".into());
        let err = to_config(&base(), &strict).unwrap_err();
        assert!(
            err.contains("requires \"authorization.headers\", which this proxy does not implement"),
            "{err}"
        );
    }
}
