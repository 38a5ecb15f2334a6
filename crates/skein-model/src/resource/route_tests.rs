//! Tests of `HTTPRoute` defaults and validation, one per rule.

use super::*;

const PARENT: &str = "parentRefs: [{name: web, port: 80}]";

fn spec(rules: &str) -> HttpRouteSpec {
    serde_yaml_ng::from_str(&format!("{{{PARENT}, rules: {rules}}}")).unwrap()
}

fn problems_of(spec: &HttpRouteSpec) -> Vec<String> {
    let mut p = Problems::new();
    spec.validate(&mut p);
    p.into_vec().iter().map(ToString::to_string).collect()
}

fn problems(rules: &str) -> Vec<String> {
    problems_of(&spec(rules))
}

fn one(rules: &str) -> String {
    let all = problems(rules);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap_or_default()
}

#[test]
fn defaults_are_applied() {
    let s = spec(
        "[{backendRefs: [{name: web}]}, {matches: [], backendRefs: [{name: web}], retry: {}}]",
    );
    assert_eq!(s.parent_refs[0].group, "");
    assert_eq!(s.parent_refs[0].kind, "Service");
    for rule in &s.rules {
        assert_eq!(rule.matches, [RouteMatch::default()]);
        assert_eq!(rule.matches[0].path.kind, PathMatchType::PathPrefix);
        assert_eq!(rule.matches[0].path.value, "/");
        assert_eq!(rule.backend_refs[0].weight, 1);
        assert_eq!(rule.backend_refs[0].kind, "Service");
    }
    assert_eq!(s.rules[1].retry, Some(RouteRetry::default()));
    assert_eq!(
        serde_json::to_string(&s.rules[1]).unwrap(),
        r#"{"matches":[{"path":{"type":"PathPrefix","value":"/"}}],"backendRefs":[{"group":"","kind":"Service","name":"web","weight":1}],"retry":{"attempts":1,"codes":[502,503,504],"backoff":"25ms"}}"#
    );
    let h: HeaderMatch = serde_yaml_ng::from_str("{name: x, value: y}").unwrap();
    assert_eq!(h.kind, ValueMatchType::Exact);
    assert!(problems_of(&s).is_empty());
}

#[test]
fn needs_parents_and_rules() {
    let s: HttpRouteSpec = serde_yaml_ng::from_str("{parentRefs: [], rules: []}").unwrap();
    assert_eq!(
        problems_of(&s),
        [
            "spec.parentRefs: \"[]\" is not accepted; expected at least one parentRef naming a Service",
            "spec.rules: \"[]\" is not accepted; expected at least one rule",
        ]
    );
}

#[test]
fn parent_refs_name_core_services() {
    let s: HttpRouteSpec = serde_yaml_ng::from_str(
        "{parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: Web, namespace: Shop, port: 0}, \
          {name: api}, {name: api}], rules: [{backendRefs: [{name: web}]}]}",
    )
    .unwrap();
    let label = super::super::validate::DNS_LABEL;
    assert_eq!(
        problems_of(&s),
        [
            "spec.parentRefs[0].group: \"gateway.networking.k8s.io\" is not accepted; expected \"\" (the core API group)".to_string(),
            "spec.parentRefs[0].kind: \"Gateway\" is not accepted; expected Service".into(),
            format!("spec.parentRefs[0].name: \"Web\" is not accepted; expected {label}"),
            format!("spec.parentRefs[0].namespace: \"Shop\" is not accepted; expected {label}"),
            "spec.parentRefs[0].port: \"0\" is not accepted; expected a port from 1 to 65535".into(),
            "spec.parentRefs[2].name: \"api\" is not accepted; expected each parentRef listed once".into(),
        ]
    );
}

#[test]
fn hostnames_are_dns_names_with_optional_wildcard() {
    let s: HttpRouteSpec = serde_yaml_ng::from_str(&format!(
        "{{{PARENT}, hostnames: ['*.shop.example', '10.0.0.1', 'a:80', '*.shop.example'], rules: [{{backendRefs: [{{name: web}}]}}]}}"
    ))
    .unwrap();
    let expected = super::super::validate::HOSTNAME;
    assert_eq!(
        problems_of(&s),
        [
            format!("spec.hostnames[1]: \"10.0.0.1\" is not accepted; expected {expected}"),
            format!("spec.hostnames[2]: \"a:80\" is not accepted; expected {expected}"),
            "spec.hostnames[3]: \"*.shop.example\" is not accepted; expected each hostname listed once".into(),
        ]
    );
}

#[test]
fn limits_follow_gateway_api() {
    let backends = vec!["{name: web}"; 17].join(", ");
    assert_eq!(
        one(&format!("[{{backendRefs: [{backends}]}}]")),
        "spec.rules[0].backendRefs: \"17 entries\" is not accepted; expected at most 16 entries"
    );
    let headers: Vec<_> = (0..17)
        .map(|i| format!("{{name: h{i}, value: v}}"))
        .collect();
    assert_eq!(
        one(&format!(
            "[{{matches: [{{headers: [{}]}}], backendRefs: [{{name: web}}]}}]",
            headers.join(", ")
        )),
        "spec.rules[0].matches[0].headers: \"17 entries\" is not accepted; expected at most 16 entries"
    );
    let rules = vec!["{backendRefs: [{name: web}]}"; 17].join(", ");
    assert_eq!(
        one(&format!("[{rules}]")),
        "spec.rules: \"17 entries\" is not accepted; expected at most 16 entries"
    );
    let matches = vec!["{}"; 65].join(", ");
    assert_eq!(
        one(&format!(
            "[{{matches: [{matches}], backendRefs: [{{name: web}}]}}]"
        )),
        "spec.rules[0].matches: \"65 entries\" is not accepted; expected at most 64 entries"
    );
    let rule = format!(
        "{{matches: [{}], backendRefs: [{{name: web}}]}}",
        vec!["{}"; 60].join(", ")
    );
    assert_eq!(
        one(&format!("[{rule}, {rule}, {rule}]")),
        "spec.rules: \"180 matches\" is not accepted; expected at most 128 matches across all rules"
    );
}

#[test]
fn paths_must_be_clean() {
    assert!(problems(
        "[{matches: [{path: {type: Exact, value: /menu}}], backendRefs: [{name: web}]}]"
    )
    .is_empty());
    for bad in [
        "menu", "/a//b", "/a/../b", "/a/./b", "/a%2Fb", "/a#b", "/a/..", "/a/.",
    ] {
        assert_eq!(
            one(&format!("[{{matches: [{{path: {{value: '{bad}'}}}}], backendRefs: [{{name: web}}]}}]")),
            format!("spec.rules[0].matches[0].path.value: {bad:?} is not accepted; expected {CLEAN_PATH}")
        );
    }
    assert_eq!(
        one("[{matches: [{path: {type: RegularExpression, value: ''}}], backendRefs: [{name: web}]}]"),
        "spec.rules[0].matches[0].path.value: \"\" is not accepted; expected a regular expression of 1-1024 characters"
    );
}

#[test]
fn headers_are_tokens_once_each_with_values() {
    assert_eq!(
        problems(
            "[{matches: [{headers: [{name: 'x canary', value: a}, {name: X-Env, value: a}, \
              {name: x-env, value: ''}, {type: RegularExpression, name: y, value: ''}]}], backendRefs: [{name: web}]}]"
        ),
        [
            format!("spec.rules[0].matches[0].headers[0].name: \"x canary\" is not accepted; expected {HTTP_TOKEN}"),
            "spec.rules[0].matches[0].headers[2].name: \"x-env\" is not accepted; expected each header name once per match (case-insensitive)".into(),
            "spec.rules[0].matches[0].headers[2].value: \"\" is not accepted; expected a value of 1-4096 characters".into(),
            "spec.rules[0].matches[0].headers[3].value: \"\" is not accepted; expected a regular expression of 1-4096 characters".into(),
        ]
    );
}

#[test]
fn query_params_have_plain_names_once_each() {
    assert_eq!(
        problems(
            "[{matches: [{queryParams: [{name: 'a=b', value: x}, {name: v, value: x}, {name: v, value: y}]}], backendRefs: [{name: web}]}]"
        ),
        [
            format!("spec.rules[0].matches[0].queryParams[0].name: \"a=b\" is not accepted; expected {QUERY_NAME}"),
            "spec.rules[0].matches[0].queryParams[2].name: \"v\" is not accepted; expected each query parameter name once per match".into(),
        ]
    );
}

#[test]
fn methods_are_http_methods() {
    assert_eq!(
        one("[{matches: [{method: get}], backendRefs: [{name: web}]}]"),
        "spec.rules[0].matches[0].method: \"get\" is not accepted; expected an HTTP method: one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
    );
}

#[test]
fn backend_refs_have_bounded_weights_and_other_kinds_are_stored_not_refused() {
    assert_eq!(
        one("[{backendRefs: [{group: apps, kind: 9x, name: web}]}]"),
        "spec.rules[0].backendRefs[0].kind: \"9x\" is not accepted; expected a kind name: a letter, then letters, digits and '-', at most 63"
    );
    assert_eq!(
        problems("[{backendRefs: [{group: apps, kind: Deployment, name: web, namespace: a_b, port: 0, weight: 1000001}]}]"),
        [
            format!("spec.rules[0].backendRefs[0].namespace: \"a_b\" is not accepted; expected {}", super::super::validate::DNS_LABEL),
            "spec.rules[0].backendRefs[0].port: \"0\" is not accepted; expected a port from 1 to 65535".into(),
            "spec.rules[0].backendRefs[0].weight: \"1000001\" is not accepted; expected 0 to 1000000".into(),
        ]
    );
    let none = "spec.rules[0].backendRefs: \"[]\" is not accepted; expected at least one backendRef (a rule may have none only when a RequestRedirect filter answers it)";
    assert_eq!(one("[{backendRefs: []}]"), none);
    assert_eq!(
        one("[{matches: [{path: {value: /x}}]}]"),
        none,
        "omitted alike"
    );
    assert!(
        problems(
            "[{filters: [{type: RequestRedirect, requestRedirect: {hostname: new.example}}]}]"
        )
        .is_empty(),
        "a redirect answers without backends"
    );
    assert_eq!(
        one("[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]}]"),
        none,
        "a header modifier answers nothing"
    );
}

#[test]
fn backend_timeout_fits_in_request_timeout() {
    assert_eq!(
        one("[{backendRefs: [{name: web}], timeouts: {request: 1s, backendRequest: 2s}}]"),
        "spec.rules[0].timeouts.backendRequest: \"2s\" is not accepted; expected at most timeouts.request (1s)"
    );
    // 0s disables the request timeout, so any backend timeout fits.
    assert!(problems(
        "[{backendRefs: [{name: web}], timeouts: {request: 0s, backendRequest: 2s}}]"
    )
    .is_empty());
}

#[test]
fn retry_bounds() {
    assert_eq!(
        problems("[{backendRefs: [{name: web}], retry: {attempts: 11, codes: [200, 503, 503], backoff: 11s}}]"),
        [
            "spec.rules[0].retry.attempts: \"11\" is not accepted; expected 0 to 10 retries",
            "spec.rules[0].retry.codes[0]: \"200\" is not accepted; expected an HTTP error status from 400 to 599",
            "spec.rules[0].retry.codes[2]: \"503\" is not accepted; expected each code listed once",
            "spec.rules[0].retry.backoff: \"11s\" is not accepted; expected a duration from 0s to 10s",
        ]
    );
}

#[test]
fn rule_names_are_labels_used_once() {
    assert_eq!(
        problems("[{name: Canary, backendRefs: [{name: web}]}, {name: stable, backendRefs: [{name: web}]}, {name: stable, backendRefs: [{name: web}]}]"),
        [
            format!("spec.rules[0].name: \"Canary\" is not accepted; expected {}", super::super::validate::DNS_LABEL),
            "spec.rules[2].name: \"stable\" is not accepted; expected each rule name used once".into(),
        ]
    );
}

#[test]
fn a_try_ends_at_the_sooner_budget_and_zero_disables() {
    let t = |request: Option<u64>, backend: Option<u64>| RouteTimeouts {
        request: request.map(Duration::from_millis),
        backend_request: backend.map(Duration::from_millis),
    };
    let ms = |d: u64| Duration::from_millis(d);
    let first = Duration::ZERO;
    let at_field = |d: TryDeadline| (d.at, d.field);
    assert_eq!(t(None, None).try_deadline(first).map(at_field), None);
    assert_eq!(
        t(Some(0), Some(0)).try_deadline(first).map(at_field),
        None,
        "0s disables"
    );
    assert_eq!(
        t(Some(500), None).try_deadline(first).map(at_field),
        Some((ms(500), "timeouts.request"))
    );
    assert_eq!(
        t(Some(500), Some(200)).try_deadline(first).map(at_field),
        Some((ms(200), "timeouts.backendRequest"))
    );
    assert_eq!(
        t(Some(200), Some(200)).try_deadline(first).map(at_field),
        Some((ms(200), "timeouts.request")),
        "a tie names the whole-request budget"
    );
    assert_eq!(
        t(Some(0), Some(300)).try_deadline(first).map(at_field),
        Some((ms(300), "timeouts.backendRequest")),
        "request 0s: no whole-request budget, the per-try one holds"
    );
    // A retry that starts 250 ms in: its own 200 ms would end at 450 ms, but the
    // whole request's 400 ms ends first.
    assert_eq!(
        t(Some(400), Some(200)).try_deadline(ms(250)).map(at_field),
        Some((ms(400), "timeouts.request"))
    );
    assert_eq!(
        t(Some(1000), Some(200)).try_deadline(ms(250)).map(at_field),
        Some((ms(450), "timeouts.backendRequest"))
    );
    // The error names the configured timeout, not the time left.
    let d = t(Some(1000), Some(200)).try_deadline(ms(250)).unwrap();
    assert_eq!(d.after, ms(200));
    let d = t(Some(400), Some(200)).try_deadline(ms(250)).unwrap();
    assert_eq!(d.after, ms(400));
}

#[test]
fn filters_are_checked_against_gateway_api_rules() {
    assert!(problems(
        "[{backendRefs: [{name: web, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-b, value: '1'}]}}]}], \
          filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}], add: [{name: x-c, value: '2'}], remove: [x-d]}}, \
                    {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}, \
                    {type: URLRewrite, urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]}]"
    )
    .is_empty());
    let all = problems(
        "[{matches: [{path: {type: Exact, value: /a}}], backendRefs: [{name: web, filters: [{type: RequestRedirect, requestRedirect: {statusCode: 302}}]}], \
          filters: [{type: RequestHeaderModifier, responseHeaderModifier: {}}, \
                    {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}, \
                    {type: RequestRedirect, requestRedirect: {scheme: ftp, statusCode: 304}}, \
                    {type: RequestMirror, requestMirror: {backendRef: {name: shadow}, percent: 101}}, \
                    {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: skein-error, value: x}], remove: [Set-Cookie, set-cookie]}}]}]",
    );
    let want = [
        "spec.rules[0].filters[0].requestHeaderModifier: \"missing\"",
        "spec.rules[0].filters[0].responseHeaderModifier: \"set\"",
        "spec.rules[0].filters[1].urlRewrite.path.type: \"ReplacePrefixMatch\" is not accepted; expected ReplacePrefixMatch only in a rule whose matches are all PathPrefix",
        "spec.rules[0].filters[2].requestRedirect.scheme: \"ftp\" is not accepted; expected http or https",
        "spec.rules[0].filters[2].requestRedirect.statusCode: \"304\" is not accepted; expected 301, 302, 303, 307 or 308",
        "spec.rules[0].filters[3].requestMirror.percent: \"101\" is not accepted; expected 0 to 100",
        "spec.rules[0].filters[4].responseHeaderModifier.set[0].name: \"skein-error\" is not accepted",
        "each header name once across set, add and remove",
        "spec.rules[0].filters: \"RequestRedirect with URLRewrite\" is not accepted; expected RequestRedirect or URLRewrite, not both",
        "spec.rules[0].backendRefs[0].filters[0].type: \"RequestRedirect\" is not accepted",
    ];
    for w in want {
        assert!(all.iter().any(|p| p.contains(w)), "{w} in {all:#?}");
    }
}

#[test]
fn regular_expressions_that_do_not_compile_are_refused_with_the_reason() {
    let p = one("[{matches: [{headers: [{type: RegularExpression, name: x, value: '(a'}]}], backendRefs: [{name: web}]}]");
    assert!(
        p.starts_with("spec.rules[0].matches[0].headers[0].value: \"(a\" is not accepted; expected a regular expression in RE2 syntax"),
        "{p}"
    );
    assert!(p.contains("unclosed group"), "{p}");
    let p = one("[{matches: [{path: {type: RegularExpression, value: '/(?=x)'}}], backendRefs: [{name: web}]}]");
    assert!(p.contains("look-around"), "{p}");
    let p =
        one("[{matches: [{cookies: [{name: 'be ta', value: '1'}]}], backendRefs: [{name: web}]}]");
    assert!(p.contains("cookies[0].name"), "{p}");
}

#[test]
fn filters_may_not_touch_framing_connection_or_mesh_headers() {
    for name in [
        "content-length",
        "Transfer-Encoding",
        "host",
        "connection",
        "x-forwarded-client-cert",
        "proxy-authorization",
        "skein-client-id",
    ] {
        let p = one(&format!(
            "[{{backendRefs: [{{name: web}}], filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: {name}, value: '1'}}]}}}}]}}]"
        ));
        assert!(
            p.contains(".set[0].name") && p.contains("frame a message"),
            "{name}: {p}"
        );
    }
}

#[test]
fn what_only_the_control_plane_marks_is_refused_in_a_route() {
    assert_eq!(
        one("[{backendRefs: [{name: web, refused: by me}]}]"),
        "spec.rules[0].backendRefs[0].refused: \"set\" is not accepted; expected no such field in an HTTPRoute (the control plane sets it when no ReferenceGrant permits the reference)"
    );
    assert_eq!(
        one("[{backendRefs: [{name: web}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: copy, refused: x}}}]}]"),
        "spec.rules[0].filters[0].requestMirror.backendRef.refused: \"set\" is not accepted; expected no such field in an HTTPRoute (the control plane sets it when no ReferenceGrant permits the reference)"
    );
}

#[test]
fn a_rule_may_mirror_to_several_backends_each_its_own_share() {
    assert!(problems(
        "[{backendRefs: [{name: web}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}, {type: RequestMirror, requestMirror: {backendRef: {name: b}, fraction: {numerator: 25, denominator: 50}}}]}]"
    )
    .is_empty());
    assert_eq!(
        one("[{backendRefs: [{name: web}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}, percent: 20, fraction: {numerator: 1}}}]}]"),
        "spec.rules[0].filters[0].requestMirror.fraction: \"set with percent\" is not accepted; expected percent or fraction, not both"
    );
    assert_eq!(
        one("[{backendRefs: [{name: web}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}, fraction: {numerator: 3, denominator: 2}}}]}]"),
        "spec.rules[0].filters[0].requestMirror.fraction: \"3/2\" is not accepted; expected a numerator of at most the denominator, which is more than 0"
    );
    let mirror = |yaml: &str| -> crate::resource::filter::RequestMirror {
        serde_yaml_ng::from_str(yaml).unwrap()
    };
    assert_eq!(mirror("{backendRef: {name: a}}").per_million(), 1_000_000);
    assert_eq!(
        mirror("{backendRef: {name: a}, percent: 35}").per_million(),
        350_000
    );
    assert_eq!(
        mirror("{backendRef: {name: a}, fraction: {numerator: 25, denominator: 50}}").per_million(),
        500_000
    );
    assert_eq!(
        mirror("{backendRef: {name: a}, fraction: {numerator: 1, denominator: 3}}").per_million(),
        333_333
    );
}

#[test]
fn two_mirrors_of_one_rule_go_to_different_backends() {
    assert_eq!(
        one("[{backendRefs: [{name: web}], filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}, {type: RequestMirror, requestMirror: {backendRef: {name: a}}}]}]"),
        "spec.rules[0].filters: \"two RequestMirrors to a\" is not accepted; expected each RequestMirror to a different backend"
    );
}
