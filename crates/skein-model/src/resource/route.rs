//! `HTTPRoute`: Gateway API v1 routing in its mesh profile (GAMMA). `parentRefs` name the
//! Service whose traffic the route governs; each rule matches requests by path, headers,
//! query parameters and method, and splits them by weight among `backendRefs`, with
//! timeouts and retries. Limits follow Gateway API's (16 rules, 64 matches per rule, …).

use super::validate::{is_http_token, Problems, HTTP_TOKEN};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// Most `parentRefs` in one route.
pub const MAX_PARENT_REFS: usize = 32;
/// Most `hostnames` in one route.
pub const MAX_HOSTNAMES: usize = 16;
/// Most `rules` in one route.
pub const MAX_RULES: usize = 16;
/// Most `matches` in one rule.
pub const MAX_MATCHES: usize = 64;
/// Most `matches` across all rules of one route.
pub const MAX_TOTAL_MATCHES: usize = 128;
/// Most header or query-parameter conditions in one match.
pub const MAX_CONDITIONS: usize = 16;
/// Most `backendRefs` in one rule.
pub const MAX_BACKEND_REFS: usize = 16;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Most retry attempts.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Longest retry backoff.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// `spec` of an `HTTPRoute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// The Services this route applies to; 1 to 32.
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route applies to (`*.` wildcard allowed); at most 16. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The rules; 1 to 16. Of every match that fits a request, the most specific wins
    /// (Gateway API precedence; the order written breaks ties).
    pub rules: Vec<RouteRule>,
}

/// A reference to the Service a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    /// API group; only `""` (the core group) is accepted. Default `""`.
    #[serde(default)]
    pub group: String,
    /// Only `Service` is accepted. Default `Service`.
    #[serde(default = "default_service_kind")]
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// The Service's namespace. Default: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only this service port. Default: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Optional name (a DNS-1123 label, unique in the route), shown in metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A request matching any of these is handled by this rule; at most 64. Default (also
    /// when empty): one match on path prefix `/`, i.e. every request.
    #[serde(default = "default_matches", deserialize_with = "matches_or_default")]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go, split by weight; at most 16. Empty only in a rule a
    /// `RequestRedirect` filter answers.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Request timeouts. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Retries of failed requests. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
    /// Filters applied to every request of the rule, in order; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<super::filter::RouteFilter>,
}

/// Conditions a request must all meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The path condition. Default: prefix `/`.
    #[serde(default)]
    pub path: PathMatch,
    /// Header conditions (names case-insensitive, each once); at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query-parameter conditions (each name once); at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
    /// The HTTP method (`GET`, `POST`, …). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Cookie conditions, by cookie name, whatever other cookies the request carries (a
    /// Skein extension: Gateway API can only match the whole `Cookie` header); at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<HeaderMatch>,
}

impl Default for RouteMatch {
    /// Every request: path prefix `/`.
    fn default() -> Self {
        RouteMatch {
            path: PathMatch::default(),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
            cookies: Vec::new(),
        }
    }
}

/// The largest compiled program of one route regular expression, in bytes.
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Compiles a route regular expression as proxies match it: RE2 syntax (no look-around
/// or back-references, so matching is linear in the input), anchored to the whole path
/// or value, at most [`REGEX_SIZE_LIMIT`] compiled. The error is one line.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(2 * REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let words: Vec<&str> = text.split_whitespace().collect();
            words.join(" ")
        })
}

/// A condition on the request path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// How `value` is compared. Default `PathPrefix`.
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    /// The path (or regular expression). Default `/`.
    #[serde(default = "default_path")]
    pub value: String,
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch {
            kind: PathMatchType::default(),
            value: default_path(),
        }
    }
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value, element by element (`/menu` matches `/menu/1`, not
    /// `/menus`). The default.
    #[default]
    PathPrefix,
    /// The path matches a regular expression.
    RegularExpression,
}

/// A condition on one header (or, as [`QueryParamMatch`], one query parameter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// How `value` is compared. Default `Exact`.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// The header (or parameter) name.
    pub name: String,
    /// The value to compare with; 1 to 4096 characters.
    pub value: String,
}

/// A condition on one query parameter; same shape as a header condition.
pub type QueryParamMatch = HeaderMatch;

/// How a header or query-parameter value is compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueMatchType {
    /// Equal (the default).
    #[default]
    Exact,
    /// Matches a regular expression.
    RegularExpression,
}

/// One destination of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// API group; only `""` (core) is accepted. Default `""`.
    #[serde(default)]
    pub group: String,
    /// Only `Service` is accepted. Default `Service`.
    #[serde(default = "default_service_kind")]
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// The Service's namespace. Default: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The service port. Default: the port the request was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Share of the rule's requests, relative to the other backends; 0 to 1000000.
    /// Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Filters for the requests sent to this backend, after the rule's; any but
    /// `RequestRedirect`; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<super::filter::RouteFilter>,
    /// Set by the control plane, never written in a route: why this reference may not be
    /// followed (no ReferenceGrant permits it). A proxy answers `500` instead of sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl BackendRef {
    /// Whether it names a core Service, the one kind of backend Skein resolves.
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }
}

/// Timeouts of one rule. `0s` disables a timeout (as in Gateway API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTimeouts {
    /// Whole-request budget, retries included. Default: none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::opt_duration"
    )]
    pub request: Option<Duration>,
    /// Budget of each try to a backend; at most `request`. Default: none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::opt_duration"
    )]
    pub backend_request: Option<Duration>,
}

/// When one try must end, and which timeout says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryDeadline {
    /// Counted from the request's arrival.
    pub at: Duration,
    /// The configured timeout that sets it, for the error a caller sees.
    pub after: Duration,
    /// `timeouts.request` or `timeouts.backendRequest`.
    pub field: &'static str,
}

impl RouteTimeouts {
    /// When a try that starts `into` the request must end: the sooner of the end of
    /// `request` and `into` + `backendRequest` (a zero one being disabled; a tie goes to
    /// `request`). `None` when neither is set to more than zero. With one try, `into` is
    /// zero.
    pub fn try_deadline(&self, into: Duration) -> Option<TryDeadline> {
        let set = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        let whole = set(self.request).map(|after| TryDeadline {
            at: after,
            after,
            field: "timeouts.request",
        });
        let per_try = set(self.backend_request).map(|after| TryDeadline {
            at: into + after,
            after,
            field: "timeouts.backendRequest",
        });
        match (whole, per_try) {
            (Some(w), Some(t)) => Some(if t.at < w.at { t } else { w }),
            (w, t) => w.or(t),
        }
    }
}

/// Retries of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRetry {
    /// Retries after the first try; 0 to 10 (0 disables). Default 1, so at most two tries.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Response codes that are retried, each 400 to 599. Default `[502, 503, 504]`.
    #[serde(default = "default_retry_codes")]
    pub codes: Vec<u16>,
    /// Pause before each retry; at most 10s. Default `25ms`.
    #[serde(default = "default_backoff", with = "crate::duration")]
    pub backoff: Duration,
}

impl Default for RouteRetry {
    fn default() -> Self {
        RouteRetry {
            attempts: default_attempts(),
            codes: default_retry_codes(),
            backoff: default_backoff(),
        }
    }
}

/// What a refusal marker written into a route is told.
const SET_BY_CONTROL: &str = "no such field in an HTTPRoute (the control plane sets it when no ReferenceGrant permits the reference)";

impl HttpRouteSpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        if self.parent_refs.is_empty() {
            p.add(
                "spec.parentRefs",
                "[]",
                "at least one parentRef naming a Service",
            );
        }
        p.max_items("spec.parentRefs", self.parent_refs.len(), MAX_PARENT_REFS);
        for (i, parent) in self.parent_refs.iter().enumerate() {
            let at = format!("spec.parentRefs[{i}]");
            check_ref(p, &at, &parent.group, &parent.kind, &parent.name);
            if let Some(ns) = &parent.namespace {
                p.dns_label(format!("{at}.namespace"), ns);
            }
            if let Some(port) = parent.port {
                p.port(format!("{at}.port"), port);
            }
        }
        let show = |r: &ParentRef| r.name.clone();
        p.unique(
            "spec.parentRefs",
            ".name",
            &self.parent_refs,
            show,
            "each parentRef listed once",
        );
        p.max_items("spec.hostnames", self.hostnames.len(), MAX_HOSTNAMES);
        for (i, host) in self.hostnames.iter().enumerate() {
            p.hostname(format!("spec.hostnames[{i}]"), host);
        }
        p.unique(
            "spec.hostnames",
            "",
            &self.hostnames,
            String::clone,
            "each hostname listed once",
        );
        if self.rules.is_empty() {
            p.add("spec.rules", "[]", "at least one rule");
        }
        p.max_items("spec.rules", self.rules.len(), MAX_RULES);
        let total: usize = self.rules.iter().map(|r| r.matches.len()).sum();
        p.check(
            total <= MAX_TOTAL_MATCHES,
            "spec.rules",
            format!("{total} matches"),
            "at most 128 matches across all rules",
        );
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(p, &format!("spec.rules[{i}]"));
            let backends = rule.backend_refs.iter().enumerate().flat_map(|(j, b)| {
                b.filters.iter().enumerate().map(move |(k, f)| {
                    (format!("spec.rules[{i}].backendRefs[{j}].filters[{k}]"), f)
                })
            });
            let own = rule
                .filters
                .iter()
                .enumerate()
                .map(|(k, f)| (format!("spec.rules[{i}].filters[{k}]"), f));
            for (at, f) in own.chain(backends) {
                if f.fault.is_some() {
                    p.add(
                        format!("{at}.fault"),
                        "set",
                        "no such field in an HTTPRoute: name a FaultInjection with {type: ExtensionRef, extensionRef: {group: skein.dev, kind: FaultInjection, name: NAME}}",
                    );
                }
                if f.request_mirror
                    .as_ref()
                    .is_some_and(|m| m.backend_ref.refused.is_some())
                {
                    p.add(
                        format!("{at}.requestMirror.backendRef.refused"),
                        "set",
                        SET_BY_CONTROL,
                    );
                }
            }
            for (j, b) in rule.backend_refs.iter().enumerate() {
                if b.refused.is_some() {
                    p.add(
                        format!("spec.rules[{i}].backendRefs[{j}].refused"),
                        "set",
                        SET_BY_CONTROL,
                    );
                }
            }
            if let Some(name) = &rule.name {
                let repeated = self.rules[..i]
                    .iter()
                    .any(|r| r.name.as_ref() == Some(name));
                p.check(
                    !repeated,
                    format!("spec.rules[{i}].name"),
                    name,
                    "each rule name used once",
                );
            }
        }
    }
}

impl RouteRule {
    /// Checks the rule; `at` is its path (`spec.rules[0]`).
    pub(crate) fn validate(&self, p: &mut Problems, at: &str) {
        if let Some(name) = &self.name {
            p.dns_label(format!("{at}.name"), name);
        }
        p.max_items(&format!("{at}.matches"), self.matches.len(), MAX_MATCHES);
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(p, &format!("{at}.matches[{i}]"));
        }
        let redirects = self
            .filters
            .iter()
            .any(|f| f.kind == super::filter::FilterType::RequestRedirect);
        if self.backend_refs.is_empty() && !redirects {
            p.add(
                format!("{at}.backendRefs"),
                "[]",
                "at least one backendRef (a rule may have none only when a RequestRedirect filter answers it)",
            );
        }
        p.max_items(
            &format!("{at}.backendRefs"),
            self.backend_refs.len(),
            MAX_BACKEND_REFS,
        );
        for (i, backend) in self.backend_refs.iter().enumerate() {
            let at = format!("{at}.backendRefs[{i}]");
            if backend.is_service() {
                p.dns_label(format!("{at}.name"), &backend.name);
            } else {
                // Accepted and stored, as the Gateway API asks: the route's status says
                // InvalidKind and its requests are answered 500.
                if !backend.group.is_empty() {
                    p.dns_subdomain(format!("{at}.group"), &backend.group);
                }
                p.check(
                    is_kind_name(&backend.kind),
                    format!("{at}.kind"),
                    &backend.kind,
                    "a kind name: a letter, then letters, digits and '-', at most 63",
                );
                p.dns_subdomain(format!("{at}.name"), &backend.name);
            }
            if let Some(ns) = &backend.namespace {
                p.dns_label(format!("{at}.namespace"), ns);
            }
            if let Some(port) = backend.port {
                p.port(format!("{at}.port"), port);
            }
            p.check(
                backend.weight <= MAX_WEIGHT,
                format!("{at}.weight"),
                backend.weight,
                "0 to 1000000",
            );
        }
        if let Some(t) = &self.timeouts {
            if let (Some(request), Some(backend)) = (t.request, t.backend_request) {
                p.check(
                    request.is_zero() || backend <= request,
                    format!("{at}.timeouts.backendRequest"),
                    crate::duration::format(backend),
                    &format!(
                        "at most timeouts.request ({})",
                        crate::duration::format(request)
                    ),
                );
            }
        }
        if let Some(retry) = &self.retry {
            retry.validate(p, &format!("{at}.retry"));
        }
        let prefix_only = self
            .matches
            .iter()
            .all(|m| m.path.kind == PathMatchType::PathPrefix);
        super::filter::validate_filters(p, &format!("{at}.filters"), &self.filters, prefix_only);
        for (i, backend) in self.backend_refs.iter().enumerate() {
            let b_at = format!("{at}.backendRefs[{i}].filters");
            super::filter::validate_filters(p, &b_at, &backend.filters, prefix_only);
            for (j, f) in backend.filters.iter().enumerate() {
                p.check(
                    f.kind != super::filter::FilterType::RequestRedirect,
                    format!("{b_at}[{j}].type"),
                    "RequestRedirect",
                    "any filter but RequestRedirect here (a redirect belongs to the rule's filters)",
                );
            }
        }
    }
}

impl RouteMatch {
    pub(crate) fn validate(&self, p: &mut Problems, at: &str) {
        let path = &self.path.value;
        let path_at = format!("{at}.path.value");
        match self.path.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                p.check(is_clean_path(path), path_at, path, CLEAN_PATH);
            }
            PathMatchType::RegularExpression => {
                if path.is_empty() || path.len() > 1024 {
                    p.add(path_at, path, "a regular expression of 1-1024 characters");
                } else if let Err(why) = compile_regex(path) {
                    p.add(path_at, path, &regex_expected(&why));
                }
            }
        }
        p.max_items(&format!("{at}.headers"), self.headers.len(), MAX_CONDITIONS);
        for (i, h) in self.headers.iter().enumerate() {
            let h_at = format!("{at}.headers[{i}]");
            p.check(
                is_http_token(&h.name),
                format!("{h_at}.name"),
                &h.name,
                HTTP_TOKEN,
            );
            let repeated = self.headers[..i]
                .iter()
                .any(|e| e.name.eq_ignore_ascii_case(&h.name));
            let expected = "each header name once per match (case-insensitive)";
            p.check(!repeated, format!("{h_at}.name"), &h.name, expected);
            check_match_value(p, &h_at, h);
        }
        p.max_items(
            &format!("{at}.queryParams"),
            self.query_params.len(),
            MAX_CONDITIONS,
        );
        for (i, q) in self.query_params.iter().enumerate() {
            let q_at = format!("{at}.queryParams[{i}]");
            p.check(
                is_query_name(&q.name),
                format!("{q_at}.name"),
                &q.name,
                QUERY_NAME,
            );
            let repeated = self.query_params[..i].iter().any(|e| e.name == q.name);
            let expected = "each query parameter name once per match";
            p.check(!repeated, format!("{q_at}.name"), &q.name, expected);
            check_match_value(p, &q_at, q);
        }
        if let Some(method) = &self.method {
            p.method(format!("{at}.method"), method);
        }
        p.max_items(&format!("{at}.cookies"), self.cookies.len(), MAX_CONDITIONS);
        for (i, c) in self.cookies.iter().enumerate() {
            let c_at = format!("{at}.cookies[{i}]");
            p.check(
                is_http_token(&c.name),
                format!("{c_at}.name"),
                &c.name,
                "a cookie name (an HTTP token)",
            );
            let repeated = self.cookies[..i].iter().any(|e| e.name == c.name);
            let expected = "each cookie name once per match";
            p.check(!repeated, format!("{c_at}.name"), &c.name, expected);
            check_match_value(p, &c_at, c);
        }
    }
}

fn regex_expected(why: &str) -> String {
    format!(
        "a regular expression in RE2 syntax (matched against the whole value; no look-around or back-references; compiled size at most 256 KiB); this one fails: {why}"
    )
}

impl RouteRetry {
    fn validate(&self, p: &mut Problems, at: &str) {
        p.check(
            self.attempts <= MAX_RETRY_ATTEMPTS,
            format!("{at}.attempts"),
            self.attempts,
            "0 to 10 retries",
        );
        for (i, code) in self.codes.iter().enumerate() {
            p.check(
                (400..=599).contains(code),
                format!("{at}.codes[{i}]"),
                code,
                "an HTTP error status from 400 to 599",
            );
        }
        p.unique(
            &format!("{at}.codes"),
            "",
            &self.codes,
            u16::to_string,
            "each code listed once",
        );
        p.duration(
            &format!("{at}.backoff"),
            self.backoff,
            Duration::ZERO,
            MAX_RETRY_BACKOFF,
            "a duration from 0s to 10s",
        );
    }
}

const CLEAN_PATH: &str = "a path of at most 1024 characters starting with '/', without '//', \
     '/./', '/../', '%2F', '%5C' or '#', not ending in '/.' or '/..'";

const QUERY_NAME: &str = "a query parameter name: 1-256 characters, no whitespace, '&', '=' or '#'";

/// Gateway API's path rules: paths that normalise to something else would let a request
/// slip past a match meant for it.
pub(crate) fn is_clean_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && path.len() <= 1024
        && !["//", "/./", "/../", "%2f", "%5c", "#"]
            .iter()
            .any(|bad| lower.contains(bad))
        && !path.ends_with("/.")
        && !path.ends_with("/..")
}

fn is_query_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "&=#".contains(c))
}

fn check_match_value(p: &mut Problems, at: &str, m: &HeaderMatch) {
    let expected = match m.kind {
        ValueMatchType::Exact => "a value of 1-4096 characters",
        ValueMatchType::RegularExpression => "a regular expression of 1-4096 characters",
    };
    let ok = !m.value.is_empty() && m.value.len() <= 4096;
    p.check(ok, format!("{at}.value"), &m.value, expected);
    if ok && m.kind == ValueMatchType::RegularExpression {
        if let Err(why) = compile_regex(&m.value) {
            p.add(format!("{at}.value"), &m.value, &regex_expected(&why));
        }
    }
}

/// Group, kind and name of a parentRef or backendRef (only core Services).
fn check_ref(p: &mut Problems, at: &str, group: &str, kind: &str, name: &str) {
    p.check(
        group.is_empty(),
        format!("{at}.group"),
        group,
        "\"\" (the core API group)",
    );
    p.check(kind == "Service", format!("{at}.kind"), kind, "Service");
    p.dns_label(format!("{at}.name"), name);
}

/// A Kubernetes kind name, as the Gateway API's `Kind` type allows.
fn is_kind_name(kind: &str) -> bool {
    let b = kind.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && !kind.ends_with('-')
}

pub(crate) fn default_service_kind() -> String {
    "Service".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_matches() -> Vec<RouteMatch> {
    vec![RouteMatch::default()]
}
fn default_weight() -> u32 {
    1
}
fn default_attempts() -> u32 {
    1
}
fn default_retry_codes() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_backoff() -> Duration {
    Duration::from_millis(25)
}

/// An empty `matches` list means the same as an absent one: every request.
fn matches_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RouteMatch>, D::Error> {
    let matches = Vec::<RouteMatch>::deserialize(d)?;
    Ok(if matches.is_empty() {
        default_matches()
    } else {
        matches
    })
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
