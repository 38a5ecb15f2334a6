//! Between the resource model and the wire: HTTPRoute rules, BackendPolicies and
//! authorization as typed protobuf messages, one conversion each way, used by the control
//! plane (model → wire) and the proxy (wire → model).
//!
//! Reading is forgiving where that is safe and strict where it is not. Fields a proxy does
//! not know are dropped by protobuf itself; a route condition of a kind it does not know
//! makes that match never fit (a rule with no match left never applies); an unknown load
//! balancer is the default. An authorization action or caller kind it does not know is
//! an error: the proxy refuses the snapshot rather than guess who may call.

use crate::v1 as pb;
use skein_model::authz::path::{AmbiguousPaths, EncodedSlashes};
use skein_model::authz::{Policy, PolicySet};
use skein_model::resource::filter::{
    ExtensionRef, FilterType, HeaderModifier, HttpHeader, MirrorRef, PathModifier,
    PathModifierType, RequestMirror, RequestRedirect, RouteFilter, UrlRewrite,
};
use skein_model::resource::{
    AdaptiveLimit, AuthorizationPolicySpec, AuthorizationRule, BackendPolicySpec, BackendRef,
    ConnectionPool, FaultAbort, FaultDelay, FaultInjectionSpec, HeaderMatch, InboundLimit,
    LoadBalancer, Operation, OutlierDetection, PathMatch, PathMatchType, PolicyAction,
    ResolvedFault, RetryBudget, RouteMatch, RouteRetry, RouteRule, RouteTimeouts, Source,
    TargetRef, ValueMatchType,
};
use skein_model::{DestinationPolicy, DestinationRoute};
use std::time::Duration;

/// The routes of a destination, for the wire.
pub fn routes_to_wire(routes: &[DestinationRoute]) -> Vec<pb::Route> {
    routes
        .iter()
        .map(|r| pb::Route {
            name: r.name.clone(),
            port: r.port.map(u32::from),
            rules: r.rules.iter().map(rule_to_wire).collect(),
            hostnames: r.hostnames.clone(),
        })
        .collect()
}

fn rule_to_wire(rule: &RouteRule) -> pb::RouteRule {
    pb::RouteRule {
        name: rule.name.clone(),
        matches: rule.matches.iter().map(match_to_wire).collect(),
        backends: rule
            .backend_refs
            .iter()
            .map(|b| pb::BackendRef {
                name: b.name.clone(),
                namespace: b.namespace.clone().unwrap_or_default(),
                port: b.port.map(u32::from),
                weight: b.weight,
                filters: filters_to_wire(&b.filters),
                refused: b.refused.clone().unwrap_or_default(),
            })
            .collect(),
        timeouts: rule.timeouts.as_ref().map(|t| pb::RouteTimeouts {
            request_ms: t.request.map(ms),
            backend_request_ms: t.backend_request.map(ms),
        }),
        retry: rule.retry.as_ref().map(|r| pb::RouteRetry {
            attempts: r.attempts,
            codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
            backoff_ms: ms(r.backoff),
        }),
        filters: filters_to_wire(&rule.filters),
    }
}

fn filters_to_wire(filters: &[RouteFilter]) -> Vec<pb::RouteFilter> {
    use pb::route_filter::Filter;
    let headers = |m: &HeaderModifier| pb::HeaderModifier {
        set: m.set.iter().map(header_to_wire).collect(),
        add: m.add.iter().map(header_to_wire).collect(),
        remove: m.remove.clone(),
    };
    filters
        .iter()
        .filter_map(|f| {
            let filter = match f.kind {
                FilterType::RequestHeaderModifier => {
                    Filter::RequestHeaderModifier(headers(f.request_header_modifier.as_ref()?))
                }
                FilterType::ResponseHeaderModifier => {
                    Filter::ResponseHeaderModifier(headers(f.response_header_modifier.as_ref()?))
                }
                FilterType::UrlRewrite => {
                    let r = f.url_rewrite.as_ref()?;
                    Filter::UrlRewrite(pb::UrlRewrite {
                        hostname: r.hostname.clone(),
                        path: r.path.as_ref().map(path_to_wire),
                    })
                }
                FilterType::RequestRedirect => {
                    let r = f.request_redirect.as_ref()?;
                    Filter::RequestRedirect(pb::RequestRedirect {
                        scheme: r.scheme.clone(),
                        hostname: r.hostname.clone(),
                        path: r.path.as_ref().map(path_to_wire),
                        port: r.port.map(u32::from),
                        status_code: u32::from(r.status_code),
                    })
                }
                FilterType::RequestMirror => {
                    let m = f.request_mirror.as_ref()?;
                    let r = &m.backend_ref;
                    Filter::RequestMirror(pb::RequestMirror {
                        backend: Some(pb::BackendRef {
                            name: r.name.clone(),
                            namespace: r.namespace.clone().unwrap_or_default(),
                            port: r.port.map(u32::from),
                            weight: 1,
                            filters: Vec::new(),
                            refused: r.refused.clone().unwrap_or_default(),
                        }),
                        percent: m.percent,
                        fraction_numerator: m.fraction.map_or(0, |f| f.numerator),
                        fraction_denominator: m.fraction.map_or(0, |f| f.denominator),
                    })
                }
                FilterType::ExtensionRef => {
                    let ref_name = f.extension_ref.as_ref().map(|r| r.name.clone());
                    let f = f.fault.as_ref()?;
                    let per_million =
                        |percent: f64| (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
                    Filter::Fault(pb::Fault {
                        name: f.name.clone(),
                        delay_per_million: f.spec.delay.map_or(0, |d| per_million(d.percent)),
                        delay_ms: f.spec.delay.map_or(0, |d| ms(d.fixed_delay)),
                        abort_per_million: f.spec.abort.map_or(0, |a| per_million(a.percent)),
                        abort_status: f.spec.abort.map_or(0, |a| u32::from(a.http_status)),
                        ref_name: ref_name.unwrap_or_default(),
                    })
                }
            };
            Some(pb::RouteFilter {
                filter: Some(filter),
            })
        })
        .collect()
}

fn header_to_wire(h: &HttpHeader) -> pb::Header {
    pb::Header {
        name: h.name.clone(),
        value: h.value.clone(),
    }
}

fn path_to_wire(p: &PathModifier) -> pb::PathModifier {
    use pb::path_modifier::Replace;
    let replace = match p.kind {
        PathModifierType::ReplaceFullPath => p.replace_full_path.clone().map(Replace::FullPath),
        PathModifierType::ReplacePrefixMatch => {
            p.replace_prefix_match.clone().map(Replace::PrefixMatch)
        }
    };
    pb::PathModifier { replace }
}

/// Filters from the wire; a filter of a kind this proxy does not know is skipped (a
/// control plane that adds one lists it in `Snapshot.requires`).
fn filters_from_wire(filters: &[pb::RouteFilter]) -> Vec<RouteFilter> {
    use pb::route_filter::Filter;
    let headers = |m: &pb::HeaderModifier| HeaderModifier {
        set: m.set.iter().map(header_from_wire).collect(),
        add: m.add.iter().map(header_from_wire).collect(),
        remove: m.remove.clone(),
    };
    filters
        .iter()
        .filter_map(|f| {
            let mut out = RouteFilter {
                kind: FilterType::RequestHeaderModifier,
                request_header_modifier: None,
                response_header_modifier: None,
                url_rewrite: None,
                request_redirect: None,
                request_mirror: None,
                extension_ref: None,
                fault: None,
            };
            match f.filter.as_ref()? {
                Filter::RequestHeaderModifier(m) => {
                    out.request_header_modifier = Some(headers(m));
                }
                Filter::ResponseHeaderModifier(m) => {
                    out.kind = FilterType::ResponseHeaderModifier;
                    out.response_header_modifier = Some(headers(m));
                }
                Filter::UrlRewrite(r) => {
                    out.kind = FilterType::UrlRewrite;
                    out.url_rewrite = Some(UrlRewrite {
                        hostname: r.hostname.clone(),
                        path: r.path.as_ref().and_then(path_from_wire),
                    });
                }
                Filter::RequestMirror(m) => {
                    let b = m.backend.as_ref()?;
                    out.kind = FilterType::RequestMirror;
                    out.request_mirror = Some(RequestMirror {
                        backend_ref: MirrorRef {
                            group: String::new(),
                            kind: "Service".into(),
                            name: b.name.clone(),
                            namespace: (!b.namespace.is_empty()).then(|| b.namespace.clone()),
                            port: b.port.and_then(|p| u16::try_from(p).ok()),
                            refused: (!b.refused.is_empty()).then(|| b.refused.clone()),
                        },
                        percent: m.percent,
                        fraction: (m.fraction_denominator > 0).then_some(
                            skein_model::resource::filter::MirrorFraction {
                                numerator: m.fraction_numerator,
                                denominator: m.fraction_denominator,
                            },
                        ),
                    });
                }
                Filter::Fault(f) => {
                    let percent = |per_million: u32| f64::from(per_million) / 10_000.0;
                    out.kind = FilterType::ExtensionRef;
                    out.extension_ref = Some(ExtensionRef {
                        group: "skein.dev".into(),
                        kind: "FaultInjection".into(),
                        name: f.ref_name.clone(),
                    });
                    out.fault = Some(ResolvedFault {
                        name: f.name.clone(),
                        spec: FaultInjectionSpec {
                            delay: (f.delay_per_million > 0).then(|| FaultDelay {
                                percent: percent(f.delay_per_million),
                                fixed_delay: Duration::from_millis(f.delay_ms),
                            }),
                            abort: (f.abort_per_million > 0).then(|| FaultAbort {
                                percent: percent(f.abort_per_million),
                                http_status: u16::try_from(f.abort_status).unwrap_or(500),
                            }),
                        },
                    });
                }
                Filter::RequestRedirect(r) => {
                    out.kind = FilterType::RequestRedirect;
                    out.request_redirect = Some(RequestRedirect {
                        scheme: r.scheme.clone(),
                        hostname: r.hostname.clone(),
                        path: r.path.as_ref().and_then(path_from_wire),
                        port: r.port.and_then(|p| u16::try_from(p).ok()),
                        status_code: u16::try_from(r.status_code).unwrap_or(302),
                    });
                }
            }
            Some(out)
        })
        .collect()
}

fn header_from_wire(h: &pb::Header) -> HttpHeader {
    HttpHeader {
        name: h.name.clone(),
        value: h.value.clone(),
    }
}

fn path_from_wire(p: &pb::PathModifier) -> Option<PathModifier> {
    use pb::path_modifier::Replace;
    Some(match p.replace.as_ref()? {
        Replace::FullPath(v) => PathModifier {
            kind: PathModifierType::ReplaceFullPath,
            replace_full_path: Some(v.clone()),
            replace_prefix_match: None,
        },
        Replace::PrefixMatch(v) => PathModifier {
            kind: PathModifierType::ReplacePrefixMatch,
            replace_full_path: None,
            replace_prefix_match: Some(v.clone()),
        },
    })
}

fn match_to_wire(m: &RouteMatch) -> pb::RouteMatch {
    let values = |list: &[HeaderMatch]| -> Vec<pb::ValueMatch> {
        list.iter()
            .map(|h| pb::ValueMatch {
                kind: match h.kind {
                    ValueMatchType::Exact => pb::MatchKind::MatchExact,
                    ValueMatchType::RegularExpression => pb::MatchKind::MatchRegex,
                } as i32,
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: match m.path.kind {
                PathMatchType::Exact => pb::MatchKind::MatchExact,
                PathMatchType::PathPrefix => pb::MatchKind::MatchPathPrefix,
                PathMatchType::RegularExpression => pb::MatchKind::MatchRegex,
            } as i32,
            value: m.path.value.clone(),
        }),
        headers: values(&m.headers),
        query_params: values(&m.query_params),
        method: m.method.clone(),
        cookies: values(&m.cookies),
    }
}

/// The routes of a destination, from the wire. Never fails: what cannot be read makes a
/// match that never fits (see the module docs).
pub fn routes_from_wire(routes: &[pb::Route]) -> Vec<DestinationRoute> {
    routes
        .iter()
        .map(|r| DestinationRoute {
            name: r.name.clone(),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            rules: r.rules.iter().map(rule_from_wire).collect(),
            hostnames: r.hostnames.clone(),
        })
        .collect()
}

fn rule_from_wire(rule: &pb::RouteRule) -> RouteRule {
    let matches = if rule.matches.is_empty() {
        vec![RouteMatch::default()]
    } else {
        // A match this proxy cannot read is left out; with none left, the rule's
        // `matches` is empty and it never applies.
        rule.matches.iter().filter_map(match_from_wire).collect()
    };
    RouteRule {
        name: rule.name.clone(),
        matches,
        backend_refs: rule
            .backends
            .iter()
            .map(|b| BackendRef {
                group: String::new(),
                kind: "Service".into(),
                name: b.name.clone(),
                namespace: (!b.namespace.is_empty()).then(|| b.namespace.clone()),
                port: b.port.and_then(|p| u16::try_from(p).ok()),
                weight: b.weight,
                filters: filters_from_wire(&b.filters),
                refused: (!b.refused.is_empty()).then(|| b.refused.clone()),
            })
            .collect(),
        timeouts: rule.timeouts.as_ref().map(|t| RouteTimeouts {
            request: t.request_ms.map(Duration::from_millis),
            backend_request: t.backend_request_ms.map(Duration::from_millis),
        }),
        retry: rule.retry.as_ref().map(|r| RouteRetry {
            attempts: r.attempts,
            codes: r
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            backoff: Duration::from_millis(r.backoff_ms),
        }),
        filters: filters_from_wire(&rule.filters),
    }
}

fn match_from_wire(m: &pb::RouteMatch) -> Option<RouteMatch> {
    let path = match &m.path {
        None => PathMatch::default(),
        Some(p) => PathMatch {
            kind: match pb::MatchKind::try_from(p.kind).ok()? {
                pb::MatchKind::MatchExact => PathMatchType::Exact,
                pb::MatchKind::MatchPathPrefix => PathMatchType::PathPrefix,
                pb::MatchKind::MatchRegex => PathMatchType::RegularExpression,
                pb::MatchKind::MatchUnspecified => return None,
            },
            value: p.value.clone(),
        },
    };
    let values = |list: &[pb::ValueMatch]| -> Option<Vec<HeaderMatch>> {
        list.iter()
            .map(|v| {
                Some(HeaderMatch {
                    kind: match pb::MatchKind::try_from(v.kind).ok()? {
                        pb::MatchKind::MatchExact => ValueMatchType::Exact,
                        pb::MatchKind::MatchRegex => ValueMatchType::RegularExpression,
                        _ => return None,
                    },
                    name: v.name.clone(),
                    value: v.value.clone(),
                })
            })
            .collect()
    };
    Some(RouteMatch {
        path,
        headers: values(&m.headers)?,
        query_params: values(&m.query_params)?,
        method: m.method.clone(),
        cookies: values(&m.cookies)?,
    })
}

/// A destination's BackendPolicies, for the wire.
pub fn policies_to_wire(policies: &[DestinationPolicy]) -> Vec<pb::BackendPolicy> {
    policies
        .iter()
        .map(|p| {
            let s = &p.spec;
            let (pool, od, budget) = (&s.connection_pool, &s.outlier_detection, &s.retry_budget);
            pb::BackendPolicy {
                name: p.name.clone(),
                port: s.target_ref.port.map(u32::from),
                load_balancer: match s.load_balancer {
                    LoadBalancer::Ewma => pb::LoadBalancer::Ewma,
                    LoadBalancer::RoundRobin => pb::LoadBalancer::RoundRobin,
                    LoadBalancer::LeastRequest => pb::LoadBalancer::LeastRequest,
                } as i32,
                connection_pool: Some(pb::ConnectionPool {
                    max_connections: pool.max_connections,
                    max_concurrent_requests: pool.max_concurrent_requests,
                    max_pending_requests: pool.max_pending_requests,
                    max_requests_per_endpoint: pool.max_requests_per_endpoint,
                }),
                outlier_detection: Some(pb::OutlierDetection {
                    consecutive_5xx: od.consecutive_5xx,
                    interval_ms: ms(od.interval),
                    base_ejection_time_ms: ms(od.base_ejection_time),
                    max_ejection_percent: od.max_ejection_percent,
                }),
                retry_budget: Some(pb::RetryBudget {
                    ratio: budget.ratio,
                    min_per_second: budget.min_per_second,
                    ttl_ms: ms(budget.ttl),
                }),
                inbound: s.inbound.map(|l| pb::InboundLimit {
                    max_concurrent_requests: l.max_concurrent_requests,
                    max_pending_requests: l.max_pending_requests,
                    adaptive: l.adaptive.as_ref().map(adaptive_to_wire),
                }),
            }
        })
        .collect()
}

/// An adaptive inbound limit, for the wire (0: the default floor).
pub fn adaptive_to_wire(a: &AdaptiveLimit) -> pb::AdaptiveLimit {
    pb::AdaptiveLimit {
        min_concurrent_requests: a.min_concurrent_requests.unwrap_or(0),
        latency_tolerance: a.latency_tolerance,
    }
}

/// An adaptive inbound limit from the wire. The control plane validated it at apply;
/// what is out of range anyway (a bug, or a newer control plane's wider range) is
/// brought within range rather than refusing the whole snapshot: a tolerance that is not
/// a number takes the default, others are clamped to 1–10.
pub fn adaptive_from_wire(a: &pb::AdaptiveLimit) -> AdaptiveLimit {
    let tolerance = if a.latency_tolerance.is_nan() {
        AdaptiveLimit::default().latency_tolerance
    } else {
        a.latency_tolerance.clamp(1.0, 10.0)
    };
    AdaptiveLimit {
        min_concurrent_requests: (a.min_concurrent_requests > 0)
            .then_some(a.min_concurrent_requests),
        latency_tolerance: tolerance,
    }
}

/// A destination's BackendPolicies from the wire; `service` is the destination's name.
/// An absent part takes its defaults (ranges are validated when the configuration is
/// applied). A retry budget ratio that is not a number is refused here: no range holds
/// it, and a configuration holding it would not even equal itself.
pub fn policies_from_wire(
    service: &str,
    policies: &[pb::BackendPolicy],
) -> Result<Vec<DestinationPolicy>, String> {
    policies
        .iter()
        .map(|p| {
            if let Some(b) = p.retry_budget.filter(|b| b.ratio.is_nan()) {
                return Err(format!(
                    "destination {service}: policy {}: retryBudget.ratio {} is not a number; a fraction from 0 to 1 is accepted",
                    p.name, b.ratio
                ));
            }
            let pool = p
                .connection_pool
                .map_or_else(ConnectionPool::default, |c| ConnectionPool {
                    max_connections: c.max_connections,
                    max_concurrent_requests: c.max_concurrent_requests,
                    max_pending_requests: c.max_pending_requests,
                    max_requests_per_endpoint: c.max_requests_per_endpoint,
                });
            let od = p
                .outlier_detection
                .map_or_else(OutlierDetection::default, |o| OutlierDetection {
                    consecutive_5xx: o.consecutive_5xx,
                    interval: Duration::from_millis(o.interval_ms),
                    base_ejection_time: Duration::from_millis(o.base_ejection_time_ms),
                    max_ejection_percent: o.max_ejection_percent,
                });
            let budget = p
                .retry_budget
                .map_or_else(RetryBudget::default, |b| RetryBudget {
                    ratio: b.ratio,
                    min_per_second: b.min_per_second,
                    ttl: Duration::from_millis(b.ttl_ms),
                });
            Ok(DestinationPolicy {
                name: p.name.clone(),
                spec: BackendPolicySpec {
                    target_ref: target(service, p.port),
                    load_balancer: match pb::LoadBalancer::try_from(p.load_balancer) {
                        Ok(pb::LoadBalancer::RoundRobin) => LoadBalancer::RoundRobin,
                        Ok(pb::LoadBalancer::LeastRequest) => LoadBalancer::LeastRequest,
                        Ok(pb::LoadBalancer::Ewma) | Err(_) => LoadBalancer::Ewma,
                    },
                    connection_pool: pool,
                    outlier_detection: od,
                    retry_budget: budget,
                    inbound: p.inbound.map(|l| InboundLimit {
                        max_concurrent_requests: l.max_concurrent_requests,
                        max_pending_requests: l.max_pending_requests,
                        adaptive: l.adaptive.as_ref().map(adaptive_from_wire),
                    }),
                },
            })
        })
        .collect()
}

fn target(name: &str, port: Option<u32>) -> TargetRef {
    TargetRef {
        group: String::new(),
        kind: "Service".into(),
        name: name.to_string(),
        port: port.and_then(|p| u16::try_from(p).ok()),
    }
}

fn action_to_wire(a: PolicyAction) -> i32 {
    (match a {
        PolicyAction::Allow => pb::PolicyAction::Allow,
        PolicyAction::Deny => pb::PolicyAction::Deny,
        PolicyAction::Audit => pb::PolicyAction::Audit,
    }) as i32
}

fn action_from_wire(a: i32, at: &str) -> Result<PolicyAction, String> {
    match pb::PolicyAction::try_from(a) {
        Ok(pb::PolicyAction::Allow) => Ok(PolicyAction::Allow),
        Ok(pb::PolicyAction::Deny) => Ok(PolicyAction::Deny),
        Ok(pb::PolicyAction::Audit) => Ok(PolicyAction::Audit),
        Err(_) => Err(format!(
            "{at}: action {a} is unknown to this proxy (it knows allow, deny, audit); upgrade the proxy"
        )),
    }
}

/// The authorization a workload enforces, for the wire.
pub fn authorization_to_wire(set: &PolicySet) -> pb::Authorization {
    pb::Authorization {
        default_action: action_to_wire(set.default),
        policies: set
            .policies
            .iter()
            .map(|p| pb::AuthorizationPolicy {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                target: p.spec.target_ref.name.clone(),
                target_port: p.spec.target_ref.port.map(u32::from),
                action: action_to_wire(p.spec.action),
                rules: p
                    .spec
                    .rules
                    .iter()
                    .map(|r| pb::AuthorizationRule {
                        from: r.from.iter().map(caller_to_wire).collect(),
                        to: r
                            .to
                            .iter()
                            .map(|o| pb::RequestMatch {
                                ports: o.ports.iter().map(|p| u32::from(*p)).collect(),
                                methods: o.methods.clone(),
                                paths: o.paths.clone(),
                                hosts: o.hosts.clone(),
                            })
                            .collect(),
                    })
                    .collect(),
                ports: p.ports.iter().map(|p| u32::from(*p)).collect(),
            })
            .collect(),
        keep_encoded_slashes: set.encoded_slashes == EncodedSlashes::Keep,
        forward_ambiguous_paths: set.ambiguous_paths == AmbiguousPaths::Forward,
    }
}

fn caller_to_wire(s: &Source) -> pb::Caller {
    use pb::caller::Who;
    let who = if let Some(v) = &s.service {
        Some(Who::Service(v.clone()))
    } else if let Some(v) = &s.identity {
        Some(Who::Identity(v.clone()))
    } else if let Some(v) = &s.namespace {
        Some(Who::Namespace(v.clone()))
    } else {
        s.unauthenticated.map(Who::Unauthenticated)
    };
    pb::Caller { who }
}

/// The authorization a workload enforces, from the wire; an error (naming the policy)
/// when a part cannot be read safely.
pub fn authorization_from_wire(a: &pb::Authorization) -> Result<PolicySet, String> {
    let mut policies = Vec::with_capacity(a.policies.len());
    for p in &a.policies {
        let at = format!("AuthorizationPolicy {}/{}", p.namespace, p.name);
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let from = r
                .from
                .iter()
                .enumerate()
                .map(|(j, c)| caller_from_wire(c, &format!("{at} rules[{i}].from[{j}]")))
                .collect::<Result<_, _>>()?;
            let to =
                r.to.iter()
                    .map(|o| {
                        Ok(Operation {
                            ports: ports(&o.ports, &at)?,
                            methods: o.methods.clone(),
                            paths: o.paths.clone(),
                            hosts: o.hosts.clone(),
                        })
                    })
                    .collect::<Result<_, String>>()?;
            rules.push(AuthorizationRule { from, to });
        }
        policies.push(Policy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            spec: AuthorizationPolicySpec {
                target_ref: TargetRef {
                    port: match p.target_port {
                        Some(port) => Some(ports(&[port], &at)?[0]),
                        None => None,
                    },
                    ..target(&p.target, None)
                },
                action: action_from_wire(p.action, &at)?,
                rules,
            },
            ports: ports(&p.ports, &at)?,
        });
    }
    Ok(PolicySet {
        default: action_from_wire(a.default_action, "the mesh's defaultPolicy")?,
        policies,
        encoded_slashes: if a.keep_encoded_slashes {
            EncodedSlashes::Keep
        } else {
            EncodedSlashes::Reject
        },
        ambiguous_paths: if a.forward_ambiguous_paths {
            AmbiguousPaths::Forward
        } else {
            AmbiguousPaths::Reject
        },
    })
}

/// Ports of a policy, each 1 to 65535: one out of range is refused, not dropped (an
/// allow rule whose only port was dropped would govern every port).
fn ports(list: &[u32], at: &str) -> Result<Vec<u16>, String> {
    list.iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{at}: port {p} is not 1 to 65535; refusing the snapshot"))
        })
        .collect()
}

fn caller_from_wire(c: &pb::Caller, at: &str) -> Result<Source, String> {
    use pb::caller::Who;
    let mut s = Source::default();
    match &c.who {
        Some(Who::Service(v)) => s.service = Some(v.clone()),
        Some(Who::Identity(v)) => s.identity = Some(v.clone()),
        Some(Who::Namespace(v)) => s.namespace = Some(v.clone()),
        Some(Who::Unauthenticated(v)) => s.unauthenticated = Some(*v),
        None => {
            return Err(format!(
                "{at}: a kind of caller unknown to this proxy (it knows service, identity, namespace, unauthenticated); upgrade the proxy"
            ))
        }
    }
    Ok(s)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const ROUTES: &str = "
- name: default/restaurant
  port: 8080
  hostnames: [restaurant.example, '*.shop.example']
  rules:
  - name: canary
    matches:
    - {path: {type: RegularExpression, value: '/menu/[0-9]+'}, method: GET, cookies: [{name: beta, value: '1'}]}
    - {headers: [{name: x-canary, value: 'true'}], queryParams: [{type: RegularExpression, name: v, value: '2|3'}]}
    backendRefs: [{name: restaurant-v2, namespace: default, port: 8080, weight: 5}, {name: restaurant, namespace: default}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 2, codes: [503], backoff: 10ms}
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}], add: [{name: x-b, value: '2'}], remove: [x-c]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, namespace: default, port: 81}, percent: 10}}
    - type: ExtensionRef
      extensionRef: {group: skein.dev, kind: FaultInjection, name: chaos}
      fault: {name: default/chaos, spec: {delay: {percent: 12.5, fixedDelay: 50ms}, abort: {percent: 0.25, httpStatus: 503}}}
    - {type: URLRewrite, urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
  - backendRefs: [{name: restaurant, namespace: default, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /x}}}]}]
  - backendRefs: [{name: restaurant, namespace: default}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.com, port: 8443, statusCode: 301}}]
";

    #[test]
    fn routes_round_trip() {
        let routes: Vec<DestinationRoute> = serde_yaml_ng::from_str(ROUTES).unwrap();
        let wire = routes_to_wire(&routes);
        let bytes = pb::Destination {
            routes: wire,
            ..Default::default()
        }
        .encode_to_vec();
        let back = pb::Destination::decode(bytes.as_slice()).unwrap();
        assert_eq!(routes_from_wire(&back.routes), routes);
    }

    #[test]
    fn policies_and_authorization_round_trip() {
        let spec: BackendPolicySpec = serde_yaml_ng::from_str(
            "{targetRef: {name: api, port: 80}, loadBalancer: least-request, \
             connectionPool: {maxConcurrentRequests: 10, maxPendingRequests: 0, maxRequestsPerEndpoint: 3}, \
             outlierDetection: {consecutive5xx: 2, baseEjectionTime: 5s}, retryBudget: {ratio: 0.5, ttl: 20s}, \
             inbound: {maxConcurrentRequests: 20, maxPendingRequests: 5, adaptive: {minConcurrentRequests: 4, latencyTolerance: 2.5}}}",
        )
        .unwrap();
        let policies = vec![DestinationPolicy {
            name: "default/api".into(),
            spec,
        }];
        assert_eq!(
            policies_from_wire("api", &policies_to_wire(&policies)).unwrap(),
            policies
        );
        let set: PolicySet = serde_yaml_ng::from_str(
            "{default: deny, encodedSlashes: keep, ambiguousPaths: forward, policies: [\
             {namespace: default, name: p, ports: [80], spec: {targetRef: {name: api}, action: audit, rules: [\
             {from: [{service: web}, {identity: 'spiffe://skein.local/ns/a/sa/b'}, {namespace: ops}, {unauthenticated: true}], \
              to: [{ports: [80], methods: [GET], paths: ['/x/*'], hosts: [a.example]}]}]}}]}",
        )
        .unwrap();
        assert_eq!(
            authorization_from_wire(&authorization_to_wire(&set)).unwrap(),
            set
        );
    }

    /// Appends an unknown field (number 99, a length-delimited payload) to a message.
    fn with_future_field(mut bytes: Vec<u8>) -> Vec<u8> {
        // The tag (99 << 3 | 2 = 794) as a varint.
        bytes.extend_from_slice(&[0x9a, 0x06]);
        bytes.extend_from_slice(&[5, b'l', b'a', b't', b'e', b'r']);
        bytes
    }

    #[test]
    fn fields_from_the_future_are_ignored_and_unknown_kinds_never_match() {
        let routes: Vec<DestinationRoute> = serde_yaml_ng::from_str(ROUTES).unwrap();
        let mut rule = rule_to_wire(&routes[0].rules[0]);
        // A future match kind on the first match's path: that match never fits.
        rule.matches[0].path.as_mut().unwrap().kind = 42;
        let bytes = with_future_field(rule.encode_to_vec());
        let read = rule_from_wire(&pb::RouteRule::decode(bytes.as_slice()).unwrap());
        assert_eq!(read.matches.len(), 1, "the unreadable match is left out");
        assert_eq!(read.matches[0], routes[0].rules[0].matches[1]);
        let mut only = rule_to_wire(&routes[0].rules[0]);
        only.matches.truncate(1);
        only.matches[0].headers.push(pb::ValueMatch {
            kind: 7,
            name: "x".into(),
            value: "y".into(),
        });
        assert!(
            rule_from_wire(&only).matches.is_empty(),
            "no readable match: the rule never applies (not: every request)"
        );
        let policy = pb::BackendPolicy {
            load_balancer: 9,
            ..Default::default()
        };
        let read = policies_from_wire("api", &[policy]).unwrap();
        assert_eq!(read[0].spec.load_balancer, LoadBalancer::Ewma);
        assert_eq!(read[0].spec.connection_pool, ConnectionPool::default());
    }

    #[test]
    fn a_ratio_that_is_not_a_number_is_refused() {
        let policy = pb::BackendPolicy {
            name: "default/api".into(),
            retry_budget: Some(pb::RetryBudget {
                ratio: f64::NAN,
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = policies_from_wire("api", &[policy]).unwrap_err();
        assert!(e.contains("retryBudget.ratio NaN is not a number"), "{e}");
        assert!(e.contains("from 0 to 1"), "{e}");
    }

    #[test]
    fn unknown_authorization_kinds_are_refused() {
        let mut a = authorization_to_wire(&PolicySet::default());
        a.policies.push(pb::AuthorizationPolicy {
            namespace: "default".into(),
            name: "p".into(),
            target: "api".into(),
            rules: vec![pb::AuthorizationRule {
                from: vec![pb::Caller { who: None }],
                to: vec![],
            }],
            ..Default::default()
        });
        let err = authorization_from_wire(&a).unwrap_err();
        assert!(
            err.contains(
                "AuthorizationPolicy default/p rules[0].from[0]: a kind of caller unknown"
            ),
            "{err}"
        );
        a.policies[0].rules = vec![pb::AuthorizationRule {
            from: vec![],
            to: vec![pb::RequestMatch {
                ports: vec![70000],
                ..Default::default()
            }],
        }];
        let err = authorization_from_wire(&a).unwrap_err();
        assert!(err.contains("port 70000 is not 1 to 65535"), "{err}");
        a.policies[0].rules.clear();
        a.policies[0].action = 5;
        let err = authorization_from_wire(&a).unwrap_err();
        assert!(err.contains("action 5 is unknown"), "{err}");
    }
}
