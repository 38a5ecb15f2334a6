//! `skein policy check`: would this caller be let through to that service? Answered from
//! the mesh state with the evaluation code the inbound proxies run
//! ([`skein_model::authz`]), over the policy set a workload of the target service
//! receives, without sending traffic. Pure: the API handler only parses and serialises.

use crate::snapshot::policies_for;
use crate::state::MeshState;
use serde::{Deserialize, Serialize};
use skein_model::authz::{self, path, Decision, HttpRequest, Policy, PolicySet};
use skein_model::Protocol;

/// The question, as the API receives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// `reservation`, `reservation.shop`, a SPIFFE ID, or `unauthenticated`.
    pub from: String,
    /// The caller's namespace when `from` is a bare service name. Default `default`.
    #[serde(default)]
    pub from_namespace: Option<String>,
    /// The target Service.
    pub to: String,
    /// The target's namespace. Default `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The service port. Default: its first port.
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP method. Default `GET` for an HTTP port.
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP path (normalised as the proxy would). Default `/` for an HTTP port.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP host. Default: the service name.
    #[serde(default)]
    pub host: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckAnswer {
    /// The decision, as the proxy would make it.
    #[serde(flatten)]
    pub decision: Decision,
    /// The decision in words.
    pub message: String,
    /// The caller as matched (SPIFFE ID or `unauthenticated`).
    pub caller: String,
    /// `service.namespace:port`.
    pub target: String,
    /// `GET /menu/1` (normalised), or `tcp` for an opaque port.
    pub request: String,
}

/// Why the question cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No such Service.
    #[error("no Service {name:?} in namespace {namespace:?}; known: {known}")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// Its namespace.
        namespace: String,
        /// The services that exist there.
        known: String,
    },
    /// The Service has no such port.
    #[error("Service {service} has no port {port}; its ports are {ports:?}")]
    UnknownPort {
        /// The service.
        service: String,
        /// The port asked for.
        port: u16,
        /// Its ports.
        ports: Vec<u16>,
    },
    /// `from` is not a caller.
    #[error("from: {0:?} is not accepted; expected a service (reservation or reservation.shop), a SPIFFE ID, or unauthenticated")]
    BadCaller(String),
    /// The path would be refused before authorization.
    #[error("the proxy would refuse this request with 400 before authorizing it: {0}")]
    BadPath(path::PathError),
    /// HTTP attributes for a TCP port.
    #[error("port {0} is tcp: it carries no method, path or host; leave them out")]
    HttpOnTcp(u16),
}

/// Answers `q` from `state`.
pub fn check(state: &MeshState, q: &CheckRequest) -> Result<CheckAnswer, CheckError> {
    let namespace = q.namespace.as_deref().unwrap_or("default");
    let caller_id = caller(state, q)?;
    let service = state
        .services
        .iter()
        .find(|s| s.name == q.to && s.namespace == namespace)
        .ok_or_else(|| {
            let mut known: Vec<&str> = state
                .services
                .iter()
                .filter(|s| s.namespace == namespace)
                .map(|s| s.name.as_str())
                .collect();
            known.sort();
            CheckError::UnknownService {
                name: q.to.clone(),
                namespace: namespace.into(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            }
        })?;
    let ports: Vec<u16> = service.ports.iter().map(|(p, _)| *p).collect();
    let (port, protocol) = match q.port {
        Some(p) => service
            .ports
            .iter()
            .find(|(n, _)| *n == p)
            .copied()
            .ok_or_else(|| CheckError::UnknownPort {
                service: service.name.clone(),
                port: p,
                ports: ports.clone(),
            })?,
        None => *service
            .ports
            .first()
            .ok_or_else(|| CheckError::UnknownPort {
                service: service.name.clone(),
                port: 0,
                ports: Vec::new(),
            })?,
    };
    // What a workload of the service enforces: the policies of every service selecting
    // it. Without a workload yet, the policies naming this service.
    let set = match state.workloads.iter().find(|w| service.selects(w)) {
        Some(w) => policies_for(
            w,
            &state.services,
            &state.policies,
            state.default_policy,
            state.encoded_slashes,
            state.ambiguous_paths,
        ),
        None => PolicySet {
            default: state.default_policy,
            policies: state
                .policies
                .iter()
                .filter(|p: &&Policy| p.namespace == namespace && p.spec.target_ref.name == q.to)
                .map(|p| Policy {
                    ports: ports.clone(),
                    ..p.clone()
                })
                .collect(),
            encoded_slashes: state.encoded_slashes,
            ambiguous_paths: state.ambiguous_paths,
        },
    };
    let wants_http = q.method.is_some() || q.path.is_some() || q.host.is_some();
    let caller = match &caller_id {
        Some(id) => authz::Caller::Mesh(id),
        None => authz::Caller::Unauthenticated,
    };
    let target = format!("{}.{namespace}:{port}", service.name);
    let label = caller.label().to_string();
    if protocol == Protocol::Tcp {
        if wants_http {
            return Err(CheckError::HttpOnTcp(port));
        }
        let decision = set.decide(&caller, &authz::Request { port, http: None });
        return Ok(answer(decision, label, target, "tcp".into()));
    }
    let method = q.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let raw_path = q.path.as_deref().unwrap_or("/");
    let raw_path = raw_path.split('?').next().unwrap_or(raw_path);
    let normal = set.normalize_path(raw_path).map_err(CheckError::BadPath)?;
    let host = q.host.clone().unwrap_or_else(|| service.name.clone());
    let request = authz::Request {
        port,
        http: Some(HttpRequest {
            method: &method,
            path: &normal,
            host: &host,
        }),
    };
    let decision = set.decide(&caller, &request);
    Ok(answer(
        decision,
        label,
        target,
        format!("{method} {normal}"),
    ))
}

fn answer(decision: Decision, caller: String, target: String, request: String) -> CheckAnswer {
    CheckAnswer {
        message: decision.to_string(),
        decision,
        caller,
        target,
        request,
    }
}

/// The caller's SPIFFE ID (`None`: unauthenticated).
fn caller(state: &MeshState, q: &CheckRequest) -> Result<Option<String>, CheckError> {
    let from = q.from.trim();
    if from == "unauthenticated" {
        return Ok(None);
    }
    if from.starts_with("spiffe://") {
        return Ok(Some(from.to_string()));
    }
    let default_ns = q.from_namespace.as_deref().unwrap_or("default");
    let (name, ns) = from.split_once('.').unwrap_or((from, default_ns));
    let label = |s: &str| skein_model::resource::validate::is_dns_label(s);
    if !label(name) || !label(ns) {
        return Err(CheckError::BadCaller(q.from.clone()));
    }
    Ok(Some(format!(
        "spiffe://{}/ns/{ns}/sa/{name}",
        state.trust_domain
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ServiceView, WorkloadView};
    use skein_model::resource::PolicyAction;
    use std::collections::BTreeMap;

    fn state() -> MeshState {
        let svc = |name: &str, port: u16, p: Protocol| ServiceView {
            name: name.into(),
            namespace: "default".into(),
            selector: BTreeMap::from([("app".to_string(), name.to_string())]),
            accounts: vec![name.to_string()],
            ports: vec![(port, p)],
            addresses: vec![],
            routes: vec![],
            policies: vec![],
            export_to: vec![],
            target_ports: Default::default(),
        };
        let policy = Policy {
            namespace: "default".into(),
            name: "restaurant".into(),
            spec: serde_json::from_value(serde_json::json!({
                "targetRef": {"name": "restaurant"},
                "rules": [{"from": [{"service": "reservation"}], "to": [{"methods": ["GET"], "paths": ["/menu/*"]}]}]
            }))
            .unwrap(),
            ports: Vec::new(),
        };
        MeshState {
            services: vec![
                svc("restaurant", 8080, Protocol::Http),
                svc("ledger", 9000, Protocol::Tcp),
            ],
            workloads: vec![WorkloadView {
                name: "restaurant-1".into(),
                namespace: "default".into(),
                labels: BTreeMap::from([("app".to_string(), "restaurant".to_string())]),
                address: [127, 0, 0, 1].into(),
                inbound_port: 4143,
                app_ports: vec![8080],
                account: "restaurant".into(),
                lineage: None,
            }],
            policies: vec![policy],
            default_policy: PolicyAction::Deny,
            ..MeshState::default()
        }
    }

    fn ask(
        from: &str,
        to: &str,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Result<CheckAnswer, CheckError> {
        check(
            &state(),
            &CheckRequest {
                from: from.into(),
                to: to.into(),
                method: method.map(String::from),
                path: path.map(String::from),
                ..CheckRequest::default()
            },
        )
    }

    #[test]
    fn answers_with_the_proxys_decision_and_says_what_was_checked() {
        let a = ask("reservation", "restaurant", None, Some("/menu/1")).unwrap();
        assert_eq!(a.decision.verdict, authz::Verdict::Allowed);
        assert_eq!(a.caller, "spiffe://skein.local/ns/default/sa/reservation");
        assert_eq!(a.target, "restaurant.default:8080");
        assert_eq!(a.request, "GET /menu/1");
        let a = ask("reservation", "restaurant", Some("post"), Some("/menu/1")).unwrap();
        assert_eq!(a.decision.verdict, authz::Verdict::Denied);
        assert!(
            a.message
                .contains("it allows only: service reservation → GET /menu/*"),
            "{}",
            a.message
        );
        // Normalised as the proxy does: the bypass attempt is judged as /admin.
        let a = ask("reservation", "restaurant", None, Some("/menu/../admin")).unwrap();
        assert_eq!(a.request, "GET /admin");
        assert_eq!(a.decision.verdict, authz::Verdict::Denied);
        let a = ask("frontend", "restaurant", None, Some("/menu/1")).unwrap();
        assert_eq!(a.decision.verdict, authz::Verdict::Denied);
        // A TCP service has no policy: the mesh default.
        let a = ask("frontend", "ledger", None, None).unwrap();
        assert_eq!(a.request, "tcp");
        assert_eq!(a.decision.policy_label(), "default");
        assert_eq!(a.decision.verdict, authz::Verdict::Denied);
    }

    #[test]
    fn bad_questions_get_reasons() {
        let e = ask("frontend", "payments", None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no Service \"payments\" in namespace \"default\"; known: ledger, restaurant"
        );
        let e = ask("Front End", "restaurant", None, None).unwrap_err();
        assert!(matches!(e, CheckError::BadCaller(_)));
        let e = ask("frontend", "ledger", Some("GET"), None).unwrap_err();
        assert_eq!(e, CheckError::HttpOnTcp(9000));
        let e = ask("frontend", "restaurant", None, Some("/%2Fadmin")).unwrap_err();
        assert!(e.to_string().contains("400"), "{e}");
        let e = check(
            &state(),
            &CheckRequest {
                from: "frontend".into(),
                to: "restaurant".into(),
                port: Some(81),
                ..CheckRequest::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Service restaurant has no port 81; its ports are [8080]"
        );
    }

    #[test]
    fn ambiguous_paths_are_judged_as_the_proxy_judges_them() {
        for raw in [
            "/menu/..;/admin",
            "/menu/%252e%252e/admin",
            "/menu/%c0%ae%c0%ae/admin",
        ] {
            let e = ask("reservation", "restaurant", None, Some(raw)).unwrap_err();
            assert!(matches!(e, CheckError::BadPath(_)), "{raw}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("400") && text.contains("ambiguousPaths"),
                "{raw}: {text}"
            );
        }
        // With `ambiguousPaths: forward` the path is judged as written, as proxies do.
        let lenient = MeshState {
            ambiguous_paths: skein_model::authz::path::AmbiguousPaths::Forward,
            ..state()
        };
        let a = check(
            &lenient,
            &CheckRequest {
                from: "reservation".into(),
                to: "restaurant".into(),
                path: Some("/menu/..;/admin".into()),
                ..CheckRequest::default()
            },
        )
        .unwrap();
        assert_eq!(a.request, "GET /menu/..;/admin");
        assert_eq!(a.decision.verdict, authz::Verdict::Allowed);
    }
}
