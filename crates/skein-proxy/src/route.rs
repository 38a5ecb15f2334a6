//! HTTP route selection (Gateway API HTTPRoute semantics, pure): the first rule with a
//! match that fits the request wins, then a backend is chosen by weight.
//!
//! Matching: path `Exact` or `PathPrefix` (on `/` boundaries: `/menu` matches `/menu`,
//! `/menu/` and `/menu/1`, not `/menus`), headers (exact; names case-insensitive), query
//! parameters (exact), method. All conditions of one match must hold; any match of a rule
//! selects it. Regular-expression matches never match here (no regex engine yet), although
//! the control plane accepts them; docs/resources.md says so.

use skein_model::resource::{BackendRef, PathMatchType, RouteMatch, RouteRule, ValueMatchType};
use skein_model::DestinationRoute;

/// The rule that handles a request, and where it is written (for diagnostics).
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The HTTPRoute.
    pub route: &'a DestinationRoute,
    /// The HTTPRoute's index among the destination's routes.
    pub route_index: usize,
    /// The rule's index in it.
    pub index: usize,
    /// The rule.
    pub rule: &'a RouteRule,
}

/// The rule of `routes` that handles a request to `port`, if any.
pub fn select<'a, B>(
    routes: &'a [DestinationRoute],
    port: u16,
    req: &http::Request<B>,
) -> Option<Selected<'a>> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.port.is_none_or(|p| p == port))
        .flat_map(|(route_index, route)| {
            route
                .rules
                .iter()
                .enumerate()
                .map(move |(index, rule)| Selected {
                    route,
                    route_index,
                    index,
                    rule,
                })
        })
        .find(|s| s.rule.matches.iter().any(|m| matches(m, req)))
}

/// Whether one match's conditions all hold.
pub fn matches<B>(m: &RouteMatch, req: &http::Request<B>) -> bool {
    let path = req.uri().path();
    let path_ok = match m.path.kind {
        PathMatchType::Exact => path == m.path.value,
        PathMatchType::PathPrefix => prefix_matches(&m.path.value, path),
        PathMatchType::RegularExpression => false,
    };
    path_ok
        && m.method
            .as_deref()
            .is_none_or(|want| req.method().as_str() == want)
        && m.headers.iter().all(|h| {
            h.kind == ValueMatchType::Exact
                && req
                    .headers()
                    .get_all(h.name.as_str())
                    .iter()
                    .any(|v| v.as_bytes() == h.value.as_bytes())
        })
        && m.query_params.iter().all(|q| {
            q.kind == ValueMatchType::Exact
                && query_pairs(req.uri().query().unwrap_or(""))
                    .any(|(k, v)| k == q.name && v == q.value)
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

/// Picks a backend of `rule` by weight; `random` is any uniformly random number. Backends
/// of weight 0 are never picked; `None` when every weight is 0.
pub fn pick(rule: &RouteRule, random: u64) -> Option<&BackendRef> {
    let total: u64 = rule.backend_refs.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for b in &rule.backend_refs {
        let w = u64::from(b.weight);
        if point < w {
            return Some(b);
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
        select(routes, port, r).map(|s| s.rule.backend_refs[0].name.clone())
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
        let selected = select(&routes, 8080, &admin).unwrap();
        assert_eq!(
            (selected.route.name.as_str(), selected.index),
            ("default/restaurant", 1),
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
            .filter(|i| pick(rule, *i).unwrap().name == "restaurant-v2")
            .count();
        assert_eq!(v2, 100, "1 in 100 over a full cycle of the random space");
        let mut zero = rule.clone();
        zero.backend_refs.iter_mut().for_each(|b| b.weight = 0);
        assert!(pick(&zero, 5).is_none());
    }

    #[test]
    fn regex_matches_never_match_without_an_engine() {
        let routes = rules("- rules: [{matches: [{path: {type: RegularExpression, value: '/.*'}}], backendRefs: [{name: x}]}]");
        assert!(select(&routes, 80, &req("GET", "/a", &[])).is_none());
    }
}
