//! Authorization decisions: given the policies that govern a workload's inbound traffic,
//! the mesh's default, the caller's verified identity and the request, who decides and
//! what. Pure, so the inbound proxy and `skein policy check` run the same code.
//!
//! Precedence:
//! 1. a matching `deny` policy: **denied**;
//! 2. otherwise the enforcing outcome: a matching `allow` policy allows; if `allow`
//!    policies govern the target but none matched, **denied** (an allow policy is an
//!    allow-list, so "reservation may call restaurant" also means "nothing else may"), or
//!    **audited** while the mesh's `defaultPolicy` is `audit`; if no policy governs it,
//!    the mesh's `defaultPolicy`;
//! 3. `audit` policies are a dry run of a deny: when one matches a request the rest lets
//!    through, the request is **audited** (let through, reported as a would-be denial).
//!    An audit policy never lets through what the rest denies.
//!
//! Conservative matching where information is missing: on an opaque TCP connection the
//! HTTP conditions (methods, paths, hosts) of `deny` and `audit` rules count as matched
//! (a deny for `/admin/*` also refuses a raw tunnel to that port), while those of `allow`
//! rules count as not matched. Likewise a request that names no host (HTTP/1.0) matches
//! the `hosts` of refusing rules and of no allowing rule. Exact paths of `deny` and
//! `audit` rules also match with a trailing `/`, and methods compare without regard to
//! case.
//!
//! Callers are matched on the SPIFFE ID from their verified certificate only, never on
//! anything a request carries. HTTP paths are matched after [`path::normalize`].

pub mod path;

use crate::resource::{AuthorizationPolicySpec, Operation, PolicyAction, Source};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Who is calling, as the transport proved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A mesh workload with this verified SPIFFE ID.
    Mesh(&'a str),
    /// Plaintext from outside the mesh (`mtls: permissive`).
    Unauthenticated,
}

impl Caller<'_> {
    /// `(namespace, account)` of a `spiffe://<td>/ns/<ns>/sa/<account>` ID.
    fn workload(&self) -> Option<(&str, &str)> {
        let Caller::Mesh(id) = self else { return None };
        let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
        let rest = path.strip_prefix("ns/")?;
        let (ns, rest) = rest.split_once('/')?;
        let account = rest.strip_prefix("sa/")?;
        (!account.contains('/')).then_some((ns, account))
    }

    /// How metrics and messages name the caller.
    pub fn label(&self) -> &str {
        match self {
            Caller::Mesh(id) => id,
            Caller::Unauthenticated => "unauthenticated",
        }
    }
}

/// What is asked for: the workload port and, for HTTP, the request line and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The application port.
    pub port: u16,
    /// HTTP attributes; `None` for an opaque TCP connection.
    pub http: Option<HttpRequest<'a>>,
}

/// The HTTP attributes rules can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRequest<'a> {
    /// Method, upper case as sent.
    pub method: &'a str,
    /// Path after [`path::normalize`], without the query.
    pub path: &'a str,
    /// Host without a port.
    pub host: &'a str,
}

/// One `AuthorizationPolicy` as proxies receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Its namespace (also that of the Service it targets).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The spec as applied.
    pub spec: AuthorizationPolicySpec,
    /// The target Service's ports, filled in by the control plane: a policy without
    /// `targetRef.port` governs these only, not the ports of other Services selecting
    /// the same workload. Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl Policy {
    fn governs(&self, port: u16) -> bool {
        match self.spec.target_ref.port {
            Some(p) => p == port,
            None => self.ports.is_empty() || self.ports.contains(&port),
        }
    }

    /// The first rule matching, if any.
    fn matching_rule(&self, caller: &Caller, req: &Request) -> Option<usize> {
        // Refusing rules match conservatively (see the module docs).
        let refusing = self.spec.action != PolicyAction::Allow;
        self.spec.rules.iter().position(|rule| {
            (rule.from.is_empty()
                || rule
                    .from
                    .iter()
                    .any(|s| source_matches(s, &self.namespace, caller)))
                && (rule.to.is_empty()
                    || rule
                        .to
                        .iter()
                        .any(|op| operation_matches(op, req, refusing)))
        })
    }
}

fn source_matches(source: &Source, policy_ns: &str, caller: &Caller) -> bool {
    if source.unauthenticated == Some(true) {
        return *caller == Caller::Unauthenticated;
    }
    if let Some(id) = &source.identity {
        return *caller == Caller::Mesh(id);
    }
    let Some((ns, account)) = caller.workload() else {
        return false;
    };
    if let Some(want) = &source.namespace {
        return ns == want;
    }
    if let Some(service) = &source.service {
        // A workload's identity is its service's account (join tokens are per service).
        let (name, namespace) = service.split_once('.').unwrap_or((service, policy_ns));
        return account == name && ns == namespace;
    }
    false
}

/// Whether `op` matches; `refusing` (deny and audit rules) makes missing HTTP attributes
/// (an opaque connection, a request naming no host) and a trailing `/` count as matches.
fn operation_matches(op: &Operation, req: &Request, refusing: bool) -> bool {
    if !op.ports.is_empty() && !op.ports.contains(&req.port) {
        return false;
    }
    let http_fields = !op.methods.is_empty() || !op.paths.is_empty() || !op.hosts.is_empty();
    let Some(http) = req.http else {
        // An opaque connection could carry any request: a refusing rule's HTTP
        // conditions cannot be ruled out, an allowing rule's cannot be proved.
        return refusing || !http_fields;
    };
    let method_ok = |m: &String| m.eq_ignore_ascii_case(http.method);
    (op.methods.is_empty() || op.methods.iter().any(method_ok))
        && (op.paths.is_empty()
            || op
                .paths
                .iter()
                .any(|p| path_matches(p, http.path, refusing)))
        && (op.hosts.is_empty()
            || (refusing && http.host.is_empty())
            || op.hosts.iter().any(|h| host_matches(h, http.host)))
}

/// `*` any; `/menu/*` the prefix `/menu` and below; otherwise exact (and, for refusing
/// rules, also with a trailing `/`, which many frameworks route to the same handler).
fn path_matches(pattern: &str, path: &str, refusing: bool) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => {
            path == prefix
                || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        }
        None => path == pattern || (refusing && path.strip_suffix('/') == Some(pattern)),
    }
}

/// Exact, case-insensitive; `*.shop` matches any name below `shop`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let through.
    Allowed,
    /// Refused.
    Denied,
    /// Let through, reported as what a deny would refuse.
    Audited,
}

impl Verdict {
    /// Whether the request goes to the application.
    pub fn admits(self) -> bool {
        self != Verdict::Denied
    }

    /// `allowed`, `denied` or `audited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Audited => "audited",
        }
    }
}

/// What decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "by")]
pub enum DecidedBy {
    /// One rule of one policy matched.
    Policy {
        /// `namespace/name`.
        policy: String,
        /// The policy's action.
        action: PolicyAction,
        /// Index of the first matching rule.
        rule: usize,
    },
    /// Allow policies govern the target and none matched.
    NotAllowed {
        /// The allow policies, `namespace/name`.
        policies: Vec<String>,
        /// What their rules allow, for the message (`service reservation → GET /menu/*`).
        allowed: Vec<String>,
    },
    /// No policy governs it: the mesh's default.
    Default {
        /// The mesh's `defaultPolicy`.
        action: PolicyAction,
    },
}

/// A decision and its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The outcome.
    pub verdict: Verdict,
    /// Why.
    #[serde(flatten)]
    pub by: DecidedBy,
}

impl Decision {
    /// A short, stable label for metrics: `namespace/name`, `default` or `not-allowed`.
    pub fn policy_label(&self) -> &str {
        match &self.by {
            DecidedBy::Policy { policy, .. } => policy,
            DecidedBy::NotAllowed { .. } => "not-allowed",
            DecidedBy::Default { .. } => "default",
        }
    }
}

impl Decision {
    /// What a denied caller is told: the verdict and what decided, without the rules
    /// (the full [`Decision`] text, with what the policies allow, goes to the proxy's log
    /// and to `skein policy check`).
    pub fn summary(&self) -> String {
        let verdict = self.verdict.as_str();
        match &self.by {
            DecidedBy::Policy { policy, .. } => {
                format!("{verdict} by AuthorizationPolicy {policy}")
            }
            DecidedBy::NotAllowed { policies, .. } => {
                format!(
                    "{verdict}: not allowed by AuthorizationPolicy {}",
                    policies.join(", ")
                )
            }
            DecidedBy::Default { action } => format!(
                "{verdict} by the mesh's defaultPolicy ({})",
                action_word(*action)
            ),
        }
    }
}

fn action_word(a: PolicyAction) -> &'static str {
    match a {
        PolicyAction::Allow => "allow",
        PolicyAction::Deny => "deny",
        PolicyAction::Audit => "audit",
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = self.verdict.as_str();
        match &self.by {
            DecidedBy::Policy {
                policy,
                action,
                rule,
            } => write!(
                f,
                "{verdict} by AuthorizationPolicy {policy} (action {}, rule {rule})",
                action_word(*action)
            ),
            DecidedBy::NotAllowed { policies, allowed } => {
                let what = if self.verdict == Verdict::Audited {
                    "audited (would be denied)"
                } else {
                    verdict
                };
                let who = if allowed.is_empty() {
                    "no caller".to_string()
                } else {
                    allowed.join(", ")
                };
                write!(
                    f,
                    "{what}: no rule of AuthorizationPolicy {} matches; it allows only: {who}",
                    policies.join(", ")
                )
            }
            DecidedBy::Default { action } => write!(
                f,
                "{verdict} by the mesh's defaultPolicy ({}); no AuthorizationPolicy governs this target",
                action_word(*action)
            ),
        }
    }
}

/// The policies governing one workload's inbound traffic and the mesh's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySet {
    /// The mesh's `defaultPolicy`. Default `allow`.
    #[serde(default)]
    pub default: PolicyAction,
    /// Policies whose target Service selects the workload, sorted by namespace and name.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// What `%2F` and `%5C` in request paths do (the mesh's `encodedSlashes`). Default
    /// `reject`.
    #[serde(default)]
    pub encoded_slashes: path::EncodedSlashes,
    /// What request paths that applications may resolve differently do (the mesh's
    /// `ambiguousPaths`). Default `reject`. Written only when `forward`, so that proxies
    /// that predate the field (and refuse unknown fields) accept the default.
    #[serde(default, skip_serializing_if = "path::AmbiguousPaths::is_reject")]
    pub ambiguous_paths: path::AmbiguousPaths,
}

impl PolicySet {
    /// The mesh's path settings.
    pub fn path_rules(&self) -> path::PathRules {
        path::PathRules {
            encoded_slashes: self.encoded_slashes,
            ambiguous_paths: self.ambiguous_paths,
        }
    }

    /// `raw` (a request path without its query) as the policies match it, or why the
    /// request must be refused with 400 before it is authorized.
    pub fn normalize_path<'p>(&self, raw: &'p str) -> Result<Cow<'p, str>, path::PathError> {
        path::normalize(raw, self.path_rules())
    }

    /// Decides `req` from `caller`.
    pub fn decide(&self, caller: &Caller, req: &Request) -> Decision {
        let governing: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.governs(req.port))
            .collect();
        let first_match = |action: PolicyAction| {
            governing
                .iter()
                .filter(|p| p.spec.action == action)
                .find_map(|p| Some((*p, p.matching_rule(caller, req)?)))
        };
        let by_policy = |verdict, (p, rule): (&Policy, usize)| Decision {
            verdict,
            by: DecidedBy::Policy {
                policy: format!("{}/{}", p.namespace, p.name),
                action: p.spec.action,
                rule,
            },
        };
        if let Some(hit) = first_match(PolicyAction::Deny) {
            return by_policy(Verdict::Denied, hit);
        }
        let enforced = self.enforce(&governing, first_match(PolicyAction::Allow), &by_policy);
        if !enforced.verdict.admits() {
            return enforced;
        }
        match first_match(PolicyAction::Audit) {
            Some(hit) => by_policy(Verdict::Audited, hit),
            None => enforced,
        }
    }

    /// What allow policies and the mesh default make of a request no deny policy matched.
    fn enforce(
        &self,
        governing: &[&Policy],
        allowed_by: Option<(&Policy, usize)>,
        by_policy: &dyn Fn(Verdict, (&Policy, usize)) -> Decision,
    ) -> Decision {
        if let Some(hit) = allowed_by {
            return by_policy(Verdict::Allowed, hit);
        }
        let allow: Vec<&&Policy> = governing
            .iter()
            .filter(|p| p.spec.action == PolicyAction::Allow)
            .collect();
        if !allow.is_empty() {
            let mut allowed: Vec<String> = allow
                .iter()
                .flat_map(|p| p.spec.rules.iter().map(|r| describe_rule(r, &p.namespace)))
                .collect();
            allowed.sort();
            allowed.dedup();
            return Decision {
                verdict: if self.default == PolicyAction::Audit {
                    Verdict::Audited
                } else {
                    Verdict::Denied
                },
                by: DecidedBy::NotAllowed {
                    policies: allow
                        .iter()
                        .map(|p| format!("{}/{}", p.namespace, p.name))
                        .collect(),
                    allowed,
                },
            };
        }
        Decision {
            verdict: match self.default {
                PolicyAction::Allow => Verdict::Allowed,
                PolicyAction::Deny => Verdict::Denied,
                PolicyAction::Audit => Verdict::Audited,
            },
            by: DecidedBy::Default {
                action: self.default,
            },
        }
    }
}

/// `service reservation → GET /menu/*`, for messages.
fn describe_rule(rule: &crate::resource::AuthorizationRule, policy_ns: &str) -> String {
    let from = if rule.from.is_empty() {
        "any caller".to_string()
    } else {
        rule.from
            .iter()
            .map(|s| describe_source(s, policy_ns))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let to: Vec<String> = rule.to.iter().map(describe_operation).collect();
    if to.is_empty() {
        from
    } else {
        format!("{from} → {}", to.join(" or "))
    }
}

fn describe_source(s: &Source, policy_ns: &str) -> String {
    if let Some(service) = &s.service {
        return match service.split_once('.') {
            Some((name, ns)) if ns != policy_ns => format!("service {name} (namespace {ns})"),
            Some((name, _)) => format!("service {name}"),
            None => format!("service {service}"),
        };
    }
    if let Some(id) = &s.identity {
        return format!("identity {id}");
    }
    if let Some(ns) = &s.namespace {
        return format!("namespace {ns}");
    }
    "unauthenticated callers".into()
}

fn describe_operation(op: &Operation) -> String {
    let mut parts = Vec::new();
    if !op.methods.is_empty() {
        parts.push(op.methods.join("|"));
    }
    if !op.paths.is_empty() {
        parts.push(op.paths.join("|"));
    }
    if !op.hosts.is_empty() {
        parts.push(format!("host {}", op.hosts.join("|")));
    }
    if !op.ports.is_empty() {
        let ports: Vec<String> = op.ports.iter().map(u16::to_string).collect();
        parts.push(format!("port {}", ports.join("|")));
    }
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests;
