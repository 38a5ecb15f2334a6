//! Every message the proxy accepts from the control plane, decoded from protobuf as it
//! arrives: the first byte picks which. Properties:
//! - `Snapshot` (complete or delta, through `control::next_config`, as the proxy applies
//!   it): a refusal says why; what a snapshot cannot change (workload, listeners, admin,
//!   DNS listener) is unchanged; applying a complete snapshot twice gives what applying
//!   it once gave; the same content sent as a delta gives the same configuration; a
//!   delta for another version is refused; a configuration that validates builds a
//!   destination table in which every destination resolves by `name.namespace:port`;
//!   its revoked lineages are accepted or refused, never a panic.
//! - `TapCommand`: applied, a tap is in force exactly when the command was not a stop.
//! - `CertifyResponse`: a chain that is not for this proxy's key is refused, naming
//!   neither the key nor the chain's PEM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use skein_api::v1::{self as pb, CertifyResponse, Snapshot, TapCommand};
use skein_identity::{DenyList, WorkloadCert, WorkloadKey};
use skein_model::ProxyConfig;
use skein_proxy::control::next_config;
use skein_proxy::state::State;
use skein_proxy::telemetry::tap::Taps;
use std::sync::OnceLock;

const BASE: &str = include_str!("../seeds/proxy_config/proxy.yaml");
const HELD: u64 = 7;

fn base() -> &'static ProxyConfig {
    static BASE_ONCE: OnceLock<ProxyConfig> = OnceLock::new();
    BASE_ONCE.get_or_init(|| ProxyConfig::from_yaml(BASE, "proxy.yaml").unwrap())
}

fn fixed(c: &ProxyConfig) -> String {
    format!(
        "{:?}",
        (
            &c.workload,
            c.inbound.listen,
            &c.outbound,
            &c.admin,
            c.dns.as_ref().map(|d| (d.listen, &d.upstreams))
        )
    )
}

fn sorted(mut c: ProxyConfig) -> ProxyConfig {
    c.destinations
        .sort_by(|a, b| (&a.namespace, &a.service).cmp(&(&b.namespace, &b.service)));
    c
}

fn snapshot(s: Snapshot) {
    let base = base();
    let next = match next_config(base, HELD, &s) {
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
        Ok(next) => next,
    };
    assert_eq!(
        fixed(&next),
        fixed(base),
        "a snapshot changed what needs a restart"
    );
    if let Some(delta) = &s.delta {
        let mut other = delta.clone();
        other.base_version = HELD + 1;
        let wrong = Snapshot {
            delta: Some(other),
            ..Default::default()
        };
        assert!(
            next_config(base, HELD, &wrong).is_err(),
            "a delta for another version"
        );
    } else {
        let twice = next_config(&next, HELD, &s).expect("accepted once, so again");
        assert_eq!(twice, next, "applying the same snapshot twice");
        let delta = Snapshot {
            version: s.version,
            delta: Some(Box::new(pb::Delta {
                base_version: HELD,
                destinations: s.destinations.clone(),
                removed: base
                    .destinations
                    .iter()
                    .map(|d| format!("{}/{}", d.namespace, d.service))
                    .collect(),
                rest: Some(Box::new(Snapshot {
                    destinations: Vec::new(),
                    ..s.clone()
                })),
            })),
            ..Default::default()
        };
        let via_delta = next_config(base, HELD, &delta).expect("the same content as a delta");
        assert_eq!(
            sorted(via_delta),
            sorted(next.clone()),
            "delta and snapshot differ"
        );
        let _ = DenyList::new(s.revoked_lineages.clone());
    }
    if next.validate_since("fuzz", Some(base)).is_ok() {
        let state = State::new(next.clone(), None);
        for d in &next.destinations {
            for p in &d.ports {
                let name = format!("{}.{}", d.service, d.namespace);
                state
                    .destinations
                    .resolve(&name, p.port)
                    .unwrap_or_else(|e| panic!("{name}:{}: {e}", p.port));
            }
        }
    }
}

fn tap(c: TapCommand) {
    let taps = Taps::default();
    let stop = c.stop;
    taps.command(c);
    assert_eq!(taps.on(), !stop);
    assert_eq!(taps.count(), usize::from(!stop));
}

fn certify(r: CertifyResponse) {
    let key = WorkloadKey::generate().unwrap();
    let secret = key.to_pem();
    match WorkloadCert::new(key, &r.chain_pem) {
        // Only a chain issued for a key made just now could be accepted.
        Ok(cert) => panic!("a chain for a fresh key was accepted: {cert:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty());
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            for line in secret.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!text.contains(line), "the refusal repeats the key");
            }
            if r.chain_pem.len() > 64 {
                assert!(
                    !text.contains(&r.chain_pem),
                    "the refusal repeats the chain"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(s) = Snapshot::decode(message) {
                snapshot(s);
            }
        }
        1 => {
            if let Ok(c) = TapCommand::decode(message) {
                tap(c);
            }
        }
        _ => {
            if let Ok(r) = CertifyResponse::decode(message) {
                certify(r);
            }
        }
    }
});
