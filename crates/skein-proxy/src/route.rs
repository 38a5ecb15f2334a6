//! HTTP route selection (Gateway API HTTPRoute semantics, pure): the first rule with a
//! match that fits the request wins, then a backend is chosen by weight.
//!
//! Matching: path `Exact`, `PathPrefix` (on `/` boundaries: `/menu` matches `/menu`,
//! `/menu/` and `/menu/1`, not `/menus`) or `RegularExpression`; headers (names
//! case-insensitive), query parameters and cookies (by name, whatever other cookies the
//! request carries), each `Exact` or `RegularExpression`; method. Regular expressions
//! use RE2 syntax (linear-time, no back-references), match the whole path or value, and
//! are compiled once per configuration with a size limit
//! ([`skein_model::resource::compile_regex`]). All conditions of one match must hold;
//! any match of a rule selects it; a rule with no match it can read never applies.

use http::HeaderName;
use regex::Regex;
use skein_model::resource::{
    compile_regex, HeaderMatch, PathMatchType, RouteMatch, RouteRule, ValueMatchType,
};
use skein_model::DestinationRoute;

/// A destination's HTTPRoutes compiled for matching (same order as the routes).
#[derive(Debug, Default)]
pub struct Table {
    routes: Vec<CompiledRoute>,
}

#[derive(Debug)]
struct CompiledRoute {
    port: Option<u16>,
    /// Lower-cased; empty: any host.
    hostnames: Vec<String>,
    /// Per rule, its matches.
    rules: Vec<Vec<Matcher>>,
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
    /// Compiles `routes`.
    pub fn new(routes: &[DestinationRoute]) -> Table {
        Table {
            routes: routes
                .iter()
                .map(|r| CompiledRoute {
                    port: r.port,
                    hostnames: r.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    rules: r
                        .rules
                        .iter()
                        .map(|rule| rule.matches.iter().map(Matcher::new).collect())
                        .collect(),
                })
                .collect(),
        }
    }

    /// The first rule (its route's index and its own) that handles a request to `port`.
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
        let host = request_host(req);
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.port.is_none_or(|p| p == port))
            .filter(|(_, r)| {
                r.hostnames.is_empty()
                    || host.as_deref().is_some_and(|h| host_fits(&r.hostnames, h))
            })
            .find_map(|(route, r)| {
                r.rules.iter().enumerate().find_map(|(rule, matches)| {
                    let m = matches.iter().position(|m| m.fits(req))?;
                    Some((route, rule, m))
                })
            })
    }
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

/// Whether `host` is one of `hostnames`: equal, or under a `*.` wildcard (any number of
/// labels in its place, at least one).
fn host_fits(hostnames: &[String], host: &str) -> bool {
    hostnames.iter().any(|h| match h.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => h == host,
    })
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
    fn first_matching_rule_wins() {
        let routes = rules(ROUTES);
        let canary = req("GET", "/menu", &[("x-canary", "true")]);
        assert_eq!(
            backend_of(&routes, 8080, &canary).as_deref(),
            Some("restaurant-v2")
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
