//! HTTP route selection (Gateway API HTTPRoute semantics, pure): of every rule's matches
//! that fit a request, the most specific wins, then a backend is chosen by weight.
//!
//! Matching: path `Exact`, `PathPrefix` (on `/` boundaries: `/menu` matches `/menu`,
//! `/menu/` and `/menu/1`, not `/menus`) or `RegularExpression`; headers (names
//! case-insensitive), query parameters and cookies (by name, whatever other cookies the
//! request carries), each `Exact` or `RegularExpression`; method. Regular expressions
//! use RE2 syntax (linear-time, no back-references), match the whole path or value, and
//! are compiled once per configuration with a size limit
//! ([`skein_model::resource::compile_regex`]). All conditions of one match must hold;
//! a rule with no match it can read never applies.
//!
//! Precedence, as the Gateway API orders it across every rule of every route that
//! applies: a route whose matching hostname is longer (an exact name before a
//! wildcard); then an `Exact` path, then a `RegularExpression` path (longer pattern
//! first; the spec leaves regular expressions to the implementation, and this is
//! linkerd's and Envoy Gateway's order), then a `PathPrefix` (longer first); then a
//! method match; then more header matches; then more query-parameter matches; then more
//! cookie matches (a Skein extension). Ties go to the route listed first (the control
//! plane lists the oldest first, then by `namespace/name`), then to the rule listed first
//! in it. [`Specificity`] is that order; the table sorts every match by it once, so a
//! request is checked against the most specific match first and stops at the first that
//! fits (unless some route names hostnames, when a later fit with a longer hostname can
//! still win).

use http::HeaderName;
use regex::Regex;
use skein_model::resource::{
    compile_regex, HeaderMatch, PathMatchType, RouteMatch, RouteRule, ValueMatchType,
};
use skein_model::DestinationRoute;

/// A destination's HTTPRoutes compiled for matching.
#[derive(Debug, Default)]
pub struct Table {
    /// In the order given: the order that breaks ties.
    routes: Vec<CompiledRoute>,
    /// Every match of every rule, most specific first; ties in route, rule and match order.
    order: Vec<Candidate>,
    /// Whether any route names hostnames (then a fit's hostname can outrank its path).
    hostnames: bool,
}

#[derive(Debug)]
struct CompiledRoute {
    port: Option<u16>,
    /// Lower-cased; empty: any host.
    hostnames: Vec<String>,
}

/// One match of one rule, where it is written.
#[derive(Debug)]
struct Candidate {
    route: usize,
    rule: usize,
    matched: usize,
    matcher: Matcher,
}

/// How specific a match is; the greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// The path condition.
    pub path: PathRank,
    /// Whether it names a method.
    pub method: bool,
    /// How many header conditions.
    pub headers: usize,
    /// How many query-parameter conditions.
    pub query: usize,
    /// How many cookie conditions.
    pub cookies: usize,
}

/// A path condition's rank: a prefix below any regular expression, below any exact path;
/// among prefixes and among regular expressions, the longer wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathRank {
    /// `PathPrefix`, by its length without a trailing `/`.
    Prefix(usize),
    /// `RegularExpression`, by the pattern's length.
    Regex(usize),
    /// `Exact`.
    Exact,
}

impl Specificity {
    /// The rank of `m`.
    pub fn of(m: &RouteMatch) -> Specificity {
        let value = &m.path.value;
        Specificity {
            path: match m.path.kind {
                PathMatchType::Exact => PathRank::Exact,
                PathMatchType::RegularExpression => PathRank::Regex(value.len()),
                PathMatchType::PathPrefix => PathRank::Prefix(value.trim_end_matches('/').len()),
            },
            method: m.method.is_some(),
            headers: m.headers.len(),
            query: m.query_params.len(),
            cookies: m.cookies.len(),
        }
    }
}

#[derive(Debug)]
struct Matcher {
    path: Cond,
    prefix: bool,
    method: Option<http::Method>,
    headers: Vec<(HeaderName, Cond)>,
    query: Vec<(String, Cond)>,
    cookies: Vec<(String, Cond)>,
}

/// One compiled condition on a value.
#[derive(Debug)]
enum Cond {
    Exact(String),
    Regex(Regex),
    /// A condition that could not be compiled (never the case for a validated
    /// configuration): it never holds.
    Never,
}

impl Cond {
    fn new(kind: ValueMatchType, value: &str) -> Cond {
        match kind {
            ValueMatchType::Exact => Cond::Exact(value.to_string()),
            ValueMatchType::RegularExpression => regex_cond(value),
        }
    }

    fn holds(&self, value: &[u8]) -> bool {
        match self {
            Cond::Exact(want) => want.as_bytes() == value,
            Cond::Regex(re) => std::str::from_utf8(value).is_ok_and(|v| re.is_match(v)),
            Cond::Never => false,
        }
    }
}

fn regex_cond(pattern: &str) -> Cond {
    match compile_regex(pattern) {
        Ok(re) => Cond::Regex(re),
        Err(e) => {
            tracing::warn!(pattern, error = %e, "route regular expression not compiled; its match never fits");
            Cond::Never
        }
    }
}

impl Matcher {
    fn new(m: &RouteMatch) -> Matcher {
        let path = match m.path.kind {
            PathMatchType::Exact => Cond::Exact(m.path.value.clone()),
            PathMatchType::PathPrefix => {
                Cond::Exact(m.path.value.trim_end_matches('/').to_string())
            }
            PathMatchType::RegularExpression => regex_cond(&m.path.value),
        };
        let values = |list: &[HeaderMatch]| -> Vec<(String, Cond)> {
            list.iter()
                .map(|h| (h.name.clone(), Cond::new(h.kind, &h.value)))
                .collect()
        };
        Matcher {
            path,
            prefix: m.path.kind == PathMatchType::PathPrefix,
            method: m.method.as_deref().and_then(|x| x.parse().ok()),
            headers: m
                .headers
                .iter()
                .map(|h| match HeaderName::try_from(h.name.as_str()) {
                    Ok(name) => (name, Cond::new(h.kind, &h.value)),
                    Err(_) => (HeaderName::from_static("x-invalid"), Cond::Never),
                })
                .collect(),
            query: values(&m.query_params),
            cookies: values(&m.cookies),
        }
    }

    fn fits<B>(&self, req: &http::Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match (&self.path, self.prefix) {
            (Cond::Exact(prefix), true) => prefix_matches(prefix, path),
            (cond, _) => cond.holds(path.as_bytes()),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| req.method() == m)
            && self.headers.iter().all(|(name, cond)| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| cond.holds(v.as_bytes()))
            })
            && self.query.iter().all(|(name, cond)| {
                query_pairs(req.uri().query().unwrap_or(""))
                    .any(|(k, v)| k == name && cond.holds(v.as_bytes()))
            })
            && self.cookies.iter().all(|(name, cond)| {
                cookies(req.headers()).any(|(k, v)| k == name && cond.holds(v.as_bytes()))
            })
    }
}

impl Table {
    /// Compiles `routes`, whose order breaks ties between equally specific matches.
    pub fn new(routes: &[DestinationRoute]) -> Table {
        let mut order: Vec<(Specificity, Candidate)> = routes
            .iter()
            .enumerate()
            .flat_map(|(route, r)| {
                r.rules.iter().enumerate().flat_map(move |(rule, spec)| {
                    spec.matches.iter().enumerate().map(move |(matched, m)| {
                        let candidate = Candidate {
                            route,
                            rule,
                            matched,
                            matcher: Matcher::new(m),
                        };
                        (Specificity::of(m), candidate)
                    })
                })
            })
            .collect();
        // Stable: equal specificity keeps route, rule and match order.
        order.sort_by_key(|c| std::cmp::Reverse(c.0));
        Table {
            routes: routes
                .iter()
                .map(|r| CompiledRoute {
                    port: r.port,
                    hostnames: r.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
                })
                .collect(),
            order: order.into_iter().map(|(_, c)| c).collect(),
            hostnames: routes.iter().any(|r| !r.hostnames.is_empty()),
        }
    }

    /// Whether any route applies to `req` on `port` (its port, and its hostnames if it
    /// names any): then a request none of their rules matches is refused (404), as the
    /// Gateway API asks of a mesh, rather than passed to the service.
    pub fn attached<B>(&self, port: u16, req: &http::Request<B>) -> bool {
        let host = if self.hostnames {
            request_host(req)
        } else {
            None
        };
        self.routes.iter().any(|r| {
            r.port.is_none_or(|p| p == port) && host_rank(&r.hostnames, host.as_deref()).is_some()
        })
    }

    /// The rule (its route's index and its own) that handles a request to `port`: the
    /// most specific fitting match's.
    pub fn select<B>(&self, port: u16, req: &http::Request<B>) -> Option<(usize, usize)> {
        self.select_match(port, req)
            .map(|(route, rule, _)| (route, rule))
    }

    /// Like [`Table::select`], with the index of the rule's match that fitted.
    pub fn select_match<B>(
        &self,
        port: u16,
        req: &http::Request<B>,
    ) -> Option<(usize, usize, usize)> {
        let host = if self.hostnames {
            request_host(req)
        } else {
            None
        };
        let mut best: Option<(HostRank, &Candidate)> = None;
        for c in &self.order {
            let route = &self.routes[c.route];
            if route.port.is_some_and(|p| p != port) {
                continue;
            }
            let Some(rank) = host_rank(&route.hostnames, host.as_deref()) else {
                continue;
            };
            // Everything after the best so far is no more specific in its path and
            // conditions: only a longer hostname can still win.
            if best.is_some_and(|(b, _)| rank <= b) || !c.matcher.fits(req) {
                continue;
            }
            best = Some((rank, c));
            if !self.hostnames {
                break;
            }
        }
        best.map(|(_, c)| (c.route, c.rule, c.matched))
    }
}

/// How well a route's hostnames name a request's host: characters of a matching exact
/// name, then of any matching name; `(0, 0)` for a route with no hostnames.
type HostRank = (usize, usize);

/// The route's [`HostRank`] for `host`, or `None` when it names hostnames and none fits.
fn host_rank(hostnames: &[String], host: Option<&str>) -> Option<HostRank> {
    if hostnames.is_empty() {
        return Some((0, 0));
    }
    let host = host?;
    hostnames
        .iter()
        .filter(|h| host_fits(h, host))
        .map(|h| {
            let exact = if h.starts_with("*.") { 0 } else { h.len() };
            (exact, h.len())
        })
        .max()
}

/// The host a request names (its URI's authority, else its `Host` header), without
/// the port, lower-cased only when it has to be.
fn request_host<B>(req: &http::Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let host = match authority.rsplit_once(':') {
        Some((h, port))
            if !authority.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => authority,
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// Whether `host` is named by `hostname`: equal, or under a `*.` wildcard (any number of
/// labels in its place, at least one).
fn host_fits(hostname: &str, host: &str) -> bool {
    match hostname.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => hostname == host,
    }
}

/// Every `name=value` pair of the request's `Cookie` headers.
fn cookies(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.trim(), v.trim()))
        })
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// A well-mixed pseudo-random number (splitmix64 over a shared counter): cheap, and
/// uniform enough to split traffic by weight.
pub fn random() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x9e37_79b9);
    let mut z = COUNTER
        .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks a backend of `rule` by weight (its index); `random` is any uniformly random
/// number. Backends of weight 0 are never picked; `None` when every weight is 0.
pub fn pick(rule: &RouteRule, random: u64) -> Option<usize> {
    let total: u64 = rule.backend_refs.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for (i, b) in rule.backend_refs.iter().enumerate() {
        let w = u64::from(b.weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<DestinationRoute> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const ROUTES: &str = "
- name: default/restaurant
  port: 8080
  rules:
  - matches: [{headers: [{name: x-canary, value: 'true'}]}]
    backendRefs: [{name: restaurant-v2}]
  - matches: [{path: {type: Exact, value: /admin}, method: POST}]
    backendRefs: [{name: admin}]
  - matches: [{path: {type: PathPrefix, value: /menu}}, {queryParams: [{name: v, value: '2'}]}]
    backendRefs: [{name: restaurant-v1, weight: 99}, {name: restaurant-v2, weight: 1}]
";

    fn backend_of(routes: &[DestinationRoute], port: u16, r: &http::Request<()>) -> Option<String> {
        let (route, rule) = Table::new(routes).select(port, r)?;
        Some(routes[route].rules[rule].backend_refs[0].name.clone())
    }

    #[test]
    fn a_rule_applies_when_one_of_its_matches_fits() {
        let routes = rules(ROUTES);
        let canary = req("GET", "/", &[("x-canary", "true")]);
        assert_eq!(
            backend_of(&routes, 8080, &canary).as_deref(),
            Some("restaurant-v2")
        );
        let canary_menu = req("GET", "/menu", &[("x-canary", "true")]);
        assert_eq!(
            backend_of(&routes, 8080, &canary_menu).as_deref(),
            Some("restaurant-v1"),
            "a longer path prefix outranks a header match"
        );
        let admin = req("POST", "/admin", &[]);
        assert_eq!(backend_of(&routes, 8080, &admin).as_deref(), Some("admin"));
        assert_eq!(
            Table::new(&routes).select(8080, &admin),
            Some((0, 1)),
            "where the rule is written, for timeout errors"
        );
        assert_eq!(
            backend_of(&routes, 8080, &req("GET", "/admin", &[])),
            None,
            "method"
        );
        let menu = req("GET", "/menu/3", &[]);
        assert_eq!(
            backend_of(&routes, 8080, &menu).as_deref(),
            Some("restaurant-v1")
        );
        let by_query = req("GET", "/other?a=1&v=2", &[]);
        assert_eq!(
            backend_of(&routes, 8080, &by_query).as_deref(),
            Some("restaurant-v1")
        );
        assert_eq!(
            backend_of(&routes, 9090, &menu),
            None,
            "route bound to port 8080"
        );
    }

    /// The backend of the rule chosen for `GET uri` with `headers`, on port 80.
    fn chosen(routes: &str, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        backend_of(&rules(routes), 80, &req(method, uri, headers))
    }

    #[test]
    fn an_exact_path_outranks_any_prefix_and_a_longer_prefix_a_shorter() {
        // The case: listed first, the catch-all still loses to /v2.
        let routes = "- rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: root}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: v2}]
  - matches: [{path: {type: PathPrefix, value: /v2/api/}}]
    backendRefs: [{name: v2-api}]
  - matches: [{path: {type: Exact, value: /v2}}]
    backendRefs: [{name: exact}]
";
        assert_eq!(chosen(routes, "GET", "/v2", &[]).as_deref(), Some("exact"));
        assert_eq!(chosen(routes, "GET", "/v2/x", &[]).as_deref(), Some("v2"));
        assert_eq!(
            chosen(routes, "GET", "/v2/api/x", &[]).as_deref(),
            Some("v2-api"),
            "a trailing slash does not lengthen a prefix, but the longer one wins"
        );
        assert_eq!(chosen(routes, "GET", "/v3", &[]).as_deref(), Some("root"));
    }

    #[test]
    fn a_regular_expression_ranks_between_exact_paths_and_prefixes() {
        let routes = "- rules:
  - matches: [{path: {type: PathPrefix, value: /items}}]
    backendRefs: [{name: prefix}]
  - matches: [{path: {type: RegularExpression, value: '/items/[0-9]+'}}]
    backendRefs: [{name: regex}]
  - matches: [{path: {type: RegularExpression, value: '/items/[0-9]+/?'}}]
    backendRefs: [{name: longer-regex}]
  - matches: [{path: {type: Exact, value: /items/42}}]
    backendRefs: [{name: exact}]
";
        assert_eq!(
            chosen(routes, "GET", "/items/42", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(
            chosen(routes, "GET", "/items/7", &[]).as_deref(),
            Some("longer-regex"),
            "the longer pattern first"
        );
        assert_eq!(
            chosen(routes, "GET", "/items/x", &[]).as_deref(),
            Some("prefix")
        );
    }

    #[test]
    fn past_the_path_a_method_then_more_headers_then_more_query_params_win() {
        let routes = "- rules:
  - matches: [{path: {type: PathPrefix, value: /a}, queryParams: [{name: q, value: '1'}, {name: r, value: '1'}]}]
    backendRefs: [{name: two-query}]
  - matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: h, value: '1'}], queryParams: [{name: q, value: '1'}]}]
    backendRefs: [{name: header-and-query}]
  - matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: h, value: '1'}, {name: i, value: '1'}]}]
    backendRefs: [{name: two-headers}]
  - matches: [{path: {type: PathPrefix, value: /a}, method: GET}]
    backendRefs: [{name: method}]
  - matches: [{path: {type: PathPrefix, value: /a}, cookies: [{name: c, value: '1'}]}]
    backendRefs: [{name: cookie}]
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: path-only}]
  - matches: [{path: {type: PathPrefix, value: /}, method: GET, headers: [{name: h, value: '1'}]}]
    backendRefs: [{name: shorter-path}]
";
        let all = [("h", "1"), ("i", "1"), ("cookie", "c=1")];
        let of = |method, uri, headers| chosen(routes, method, uri, headers);
        assert_eq!(of("GET", "/a?q=1&r=1", &all).as_deref(), Some("method"));
        assert_eq!(
            of("POST", "/a?q=1&r=1", &all).as_deref(),
            Some("two-headers")
        );
        assert_eq!(
            of("POST", "/a?q=1&r=1", &all[..1]).as_deref(),
            Some("header-and-query"),
            "one header each: the one with a query match too"
        );
        assert_eq!(
            of("POST", "/a?q=1&r=1", &all[2..]).as_deref(),
            Some("two-query"),
            "query params outrank a cookie"
        );
        assert_eq!(of("POST", "/a", &all[2..]).as_deref(), Some("cookie"));
        assert_eq!(of("POST", "/a", &[]).as_deref(), Some("path-only"));
        assert_eq!(
            of("GET", "/b", &all).as_deref(),
            Some("shorter-path"),
            "method and headers count only past an equal path"
        );
    }

    #[test]
    fn ties_go_to_the_route_listed_first_then_the_rule_listed_first() {
        let routes = "- name: default/older
  rules:
  - matches: [{headers: [{name: h, value: '1'}]}]
    backendRefs: [{name: older-first}]
  - matches: [{headers: [{name: h, value: '1'}]}]
    backendRefs: [{name: older-second}]
- name: default/newer
  rules:
  - matches: [{headers: [{name: h, value: '1'}]}, {headers: [{name: i, value: '1'}]}]
    backendRefs: [{name: newer}]
";
        assert_eq!(
            chosen(routes, "GET", "/", &[("h", "1")]).as_deref(),
            Some("older-first")
        );
        assert_eq!(
            chosen(routes, "GET", "/", &[("i", "1")]).as_deref(),
            Some("newer"),
            "the match that fits, whichever route"
        );
        let t = Table::new(&rules(routes));
        let r = req("GET", "/", &[("i", "1")]);
        assert_eq!(
            t.select_match(80, &r),
            Some((1, 0, 1)),
            "where it is written"
        );
    }

    #[test]
    fn a_longer_matching_hostname_outranks_the_path() {
        let routes = "- name: default/any-host
  rules:
  - matches: [{path: {type: Exact, value: /x}}]
    backendRefs: [{name: any-host}]
- name: default/wildcard
  hostnames: ['*.example']
  rules: [{backendRefs: [{name: wildcard}]}]
- name: default/exact
  hostnames: [api.example]
  rules: [{backendRefs: [{name: exact-host}]}]
";
        let of = |host| chosen(routes, "GET", "/x", &[("host", host)]);
        assert_eq!(of("api.example").as_deref(), Some("exact-host"));
        assert_eq!(of("web.example").as_deref(), Some("wildcard"));
        assert_eq!(of("other.test").as_deref(), Some("any-host"));
    }

    #[test]
    fn a_table_is_attached_to_the_ports_and_hosts_its_routes_name() {
        let any = req("GET", "/", &[]);
        let t = Table::new(&rules(ROUTES));
        assert!(t.attached(8080, &any));
        assert!(!t.attached(9090, &any), "its only route names port 8080");
        let every_port = Table::new(&rules("- rules: [{backendRefs: [{name: x}]}]"));
        assert!(every_port.attached(9090, &any));
        assert!(!Table::new(&[]).attached(80, &any));
        let by_host = Table::new(&rules(
            "- hostnames: [api.example]\n  rules: [{backendRefs: [{name: x}]}]",
        ));
        assert!(by_host.attached(80, &req("GET", "/", &[("host", "api.example")])));
        assert!(
            !by_host.attached(80, &req("GET", "/", &[("host", "web.example")])),
            "a route for other hosts does not apply"
        );
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/menu", "/menu"));
        assert!(prefix_matches("/menu", "/menu/1"));
        assert!(prefix_matches("/menu/", "/menu/1"));
        assert!(!prefix_matches("/menu", "/menus"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn weights_split_traffic_proportionally() {
        let routes = rules(ROUTES);
        let rule = &routes[0].rules[2];
        let v2 = (0..10_000u64)
            .filter(|i| rule.backend_refs[pick(rule, *i).unwrap()].name == "restaurant-v2")
            .count();
        assert_eq!(v2, 100, "1 in 100 over a full cycle of the random space");
        let mut zero = rule.clone();
        zero.backend_refs.iter_mut().for_each(|b| b.weight = 0);
        assert!(pick(&zero, 5).is_none());
    }

    #[test]
    fn regular_expressions_match_whole_paths_and_values() {
        let routes = rules(
            "- rules:
  - matches: [{path: {type: RegularExpression, value: '/menu/[0-9]+'}}]
    backendRefs: [{name: by-path}]
  - matches: [{headers: [{type: RegularExpression, name: user-agent, value: '.*Firefox.*'}]}]
    backendRefs: [{name: by-header}]
  - matches: [{queryParams: [{type: RegularExpression, name: v, value: '2|3'}]}]
    backendRefs: [{name: by-query}]
",
        );
        let of = |uri: &str, headers: &[(&str, &str)]| {
            backend_of(&routes, 80, &req("GET", uri, headers))
        };
        assert_eq!(of("/menu/42", &[]).as_deref(), Some("by-path"));
        assert_eq!(of("/menu/42/x", &[]), None, "anchored: the whole path");
        assert_eq!(of("/x/menu/42", &[]), None, "anchored at the start too");
        let ff = [("user-agent", "Mozilla/5.0 Firefox/120")];
        assert_eq!(of("/", &ff).as_deref(), Some("by-header"));
        assert_eq!(of("/?v=3", &[]).as_deref(), Some("by-query"));
        assert_eq!(of("/?v=23", &[]), None);
    }

    #[test]
    fn cookies_match_by_name_whatever_else_the_request_carries() {
        let routes = rules(
            "- rules:
  - matches: [{cookies: [{name: beta, value: '1'}]}]
    backendRefs: [{name: beta}]
  - matches: [{cookies: [{type: RegularExpression, name: group, value: 'a|b'}]}]
    backendRefs: [{name: ab}]
",
        );
        let of = |cookie: &str| backend_of(&routes, 80, &req("GET", "/", &[("cookie", cookie)]));
        assert_eq!(of("beta=1").as_deref(), Some("beta"));
        assert_eq!(
            of("session=xyz; beta=1; theme=dark").as_deref(),
            Some("beta")
        );
        assert_eq!(of("session=xyz;beta=10"), None);
        assert_eq!(of("notbeta=1"), None);
        assert_eq!(of("x=1; group=b").as_deref(), Some("ab"));
        let two_headers = req("GET", "/", &[("cookie", "a=1"), ("cookie", "beta=1")]);
        assert_eq!(
            backend_of(&routes, 80, &two_headers).as_deref(),
            Some("beta"),
            "HTTP/2 sends cookies apart"
        );
    }

    #[test]
    fn hostnames_narrow_a_route_to_its_hosts() {
        let routes = rules(
            "- hostnames: [api.example, '*.shop.example']
  rules: [{backendRefs: [{name: by-host}]}]
- rules: [{backendRefs: [{name: any}]}]
",
        );
        let of = |host: &str| backend_of(&routes, 80, &req("GET", "/", &[("host", host)]));
        assert_eq!(of("api.example").as_deref(), Some("by-host"));
        assert_eq!(
            of("API.Example:8080").as_deref(),
            Some("by-host"),
            "port ignored, any case"
        );
        assert_eq!(of("a.shop.example").as_deref(), Some("by-host"));
        assert_eq!(of("a.b.shop.example").as_deref(), Some("by-host"));
        assert_eq!(
            of("shop.example").as_deref(),
            Some("any"),
            "a wildcard needs a label"
        );
        assert_eq!(of("other.example").as_deref(), Some("any"));
        let h2 = req("GET", "http://a.shop.example:80/", &[]);
        assert_eq!(
            backend_of(&routes, 80, &h2).as_deref(),
            Some("by-host"),
            "HTTP/2 :authority"
        );
    }

    #[test]
    fn a_rule_without_a_readable_match_never_applies() {
        let mut routes = rules("- rules: [{backendRefs: [{name: x}]}]");
        routes[0].rules[0].matches.clear();
        assert_eq!(backend_of(&routes, 80, &req("GET", "/", &[])), None);
    }
}
