use super::*;
use crate::resource::{AuthorizationRule, TargetRef};
use proptest::prelude::*;

const RESERVATION: &str = "spiffe://skein.local/ns/default/sa/reservation";
const FRONTEND: &str = "spiffe://skein.local/ns/default/sa/frontend";
const SHOP_CART: &str = "spiffe://skein.local/ns/shop/sa/cart";

fn policy(name: &str, yaml: &str) -> Policy {
    Policy {
        namespace: "default".into(),
        name: name.into(),
        spec: serde_yaml_ng::from_str(yaml).unwrap(),
        ports: Vec::new(),
    }
}

fn set(default: PolicyAction, policies: Vec<Policy>) -> PolicySet {
    PolicySet {
        default,
        policies,
        ..PolicySet::default()
    }
}

fn get(path: &str) -> Request<'_> {
    http("GET", path)
}

fn http<'a>(method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        port: 8080,
        http: Some(HttpRequest {
            method,
            path,
            host: "restaurant",
        }),
    }
}

fn tcp(port: u16) -> Request<'static> {
    Request { port, http: None }
}

fn seed() -> Policy {
    policy(
        "restaurant",
        "{targetRef: {name: restaurant}, action: allow, rules: [{from: [{service: reservation}], to: [{methods: [GET], paths: ['/menu/*']}]}]}",
    )
}

#[test]
fn the_design_sample_allows_reservation_get_menu_and_nothing_else() {
    let s = set(PolicyAction::Deny, vec![seed()]);
    let d = s.decide(&Caller::Mesh(RESERVATION), &get("/menu/1"));
    assert_eq!(d.verdict, Verdict::Allowed);
    assert_eq!(d.policy_label(), "default/restaurant");
    assert_eq!(
        d.to_string(),
        "allowed by AuthorizationPolicy default/restaurant (action allow, rule 0)"
    );
    for (caller, req) in [
        (Caller::Mesh(RESERVATION), http("POST", "/menu/1")),
        (Caller::Mesh(RESERVATION), get("/admin")),
        (Caller::Mesh(FRONTEND), get("/menu/1")),
        (Caller::Unauthenticated, get("/menu/1")),
    ] {
        let d = s.decide(&caller, &req);
        assert_eq!(d.verdict, Verdict::Denied, "{caller:?} {req:?}");
        assert_eq!(
            d.to_string(),
            "denied: no rule of AuthorizationPolicy default/restaurant matches; it allows only: service reservation → GET /menu/*"
        );
        assert_eq!(d.policy_label(), "not-allowed");
    }
}

#[test]
fn an_allow_policy_is_an_allow_list_even_when_the_mesh_default_is_allow() {
    let s = set(PolicyAction::Allow, vec![seed()]);
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &get("/menu/1")).verdict,
        Verdict::Denied
    );
    // Audit mode reports instead of refusing.
    let s = set(PolicyAction::Audit, vec![seed()]);
    let d = s.decide(&Caller::Mesh(FRONTEND), &get("/menu/1"));
    assert_eq!(d.verdict, Verdict::Audited);
    assert!(d
        .to_string()
        .starts_with("audited (would be denied): no rule"));
}

#[test]
fn without_policies_the_mesh_default_decides() {
    for (default, verdict) in [
        (PolicyAction::Allow, Verdict::Allowed),
        (PolicyAction::Deny, Verdict::Denied),
        (PolicyAction::Audit, Verdict::Audited),
    ] {
        let d = set(default, vec![]).decide(&Caller::Mesh(FRONTEND), &get("/"));
        assert_eq!(d.verdict, verdict);
        assert_eq!(d.by, DecidedBy::Default { action: default });
        assert_eq!(d.policy_label(), "default");
    }
    let d = set(PolicyAction::Deny, vec![]).decide(&Caller::Unauthenticated, &tcp(9000));
    assert_eq!(
        d.to_string(),
        "denied by the mesh's defaultPolicy (deny); no AuthorizationPolicy governs this target"
    );
}

#[test]
fn deny_wins_over_allow_and_audit_sits_between() {
    let allow_all = policy("all", "{targetRef: {name: restaurant}, rules: [{}]}");
    let deny_frontend = policy(
        "no-frontend",
        "{targetRef: {name: restaurant}, action: deny, rules: [{from: [{service: frontend}]}]}",
    );
    let audit_admin = policy(
        "watch-admin",
        "{targetRef: {name: restaurant}, action: audit, rules: [{to: [{paths: ['/admin/*']}]}]}",
    );
    let s = set(
        PolicyAction::Allow,
        vec![allow_all, deny_frontend, audit_admin],
    );
    let d = s.decide(&Caller::Mesh(FRONTEND), &get("/admin/x"));
    assert_eq!(d.verdict, Verdict::Denied);
    assert_eq!(d.policy_label(), "default/no-frontend");
    let d = s.decide(&Caller::Mesh(RESERVATION), &get("/admin/x"));
    assert_eq!(d.verdict, Verdict::Audited);
    assert_eq!(d.policy_label(), "default/watch-admin");
    let d = s.decide(&Caller::Mesh(RESERVATION), &get("/menu"));
    assert_eq!(d.verdict, Verdict::Allowed);
    assert_eq!(d.policy_label(), "default/all");
}

#[test]
fn an_audit_policy_never_lets_through_what_the_rest_denies() {
    let audit_dev = policy(
        "watch-dev",
        "{targetRef: {name: restaurant}, action: audit, rules: [{from: [{namespace: default}]}]}",
    );
    let d =
        set(PolicyAction::Deny, vec![audit_dev.clone()]).decide(&Caller::Mesh(FRONTEND), &get("/"));
    assert_eq!(d.verdict, Verdict::Denied);
    assert_eq!(d.policy_label(), "default");
    let d = set(PolicyAction::Allow, vec![audit_dev]).decide(&Caller::Mesh(FRONTEND), &get("/"));
    assert_eq!(d.verdict, Verdict::Audited);
    assert_eq!(d.policy_label(), "default/watch-dev");
}

#[test]
fn refusing_rules_match_conservatively_allowing_rules_do_not() {
    let deny_admin = policy(
        "no-admin",
        "{targetRef: {name: restaurant}, action: deny, rules: [{to: [{methods: [DELETE], paths: [/admin]}]}]}",
    );
    let allow_menu = policy(
        "menu",
        "{targetRef: {name: restaurant}, rules: [{to: [{paths: ['/menu/*']}]}]}",
    );
    let s = set(PolicyAction::Allow, vec![deny_admin]);
    let d = s.decide(&Caller::Mesh(FRONTEND), &tcp(8080));
    assert_eq!(
        d.verdict,
        Verdict::Denied,
        "a raw tunnel could carry DELETE /admin"
    );
    for (method, path) in [
        ("DELETE", "/admin"),
        ("delete", "/admin/"),
        ("Delete", "/admin"),
    ] {
        let d = s.decide(&Caller::Mesh(FRONTEND), &http(method, path));
        assert_eq!(d.verdict, Verdict::Denied, "{method} {path}");
    }
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &http("DELETE", "/admin/x"))
            .verdict,
        Verdict::Allowed,
        "an exact path is not a prefix"
    );
    let s = set(PolicyAction::Allow, vec![allow_menu]);
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &tcp(8080)).verdict,
        Verdict::Denied,
        "a raw tunnel cannot prove it only asks for /menu"
    );
    let exact = policy(
        "about",
        "{targetRef: {name: restaurant}, rules: [{to: [{paths: [/about]}]}]}",
    );
    let s = set(PolicyAction::Allow, vec![exact]);
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &get("/about/")).verdict,
        Verdict::Denied,
        "allowing rules do not stretch to a trailing slash"
    );
}

#[test]
fn a_request_naming_no_host_meets_deny_hosts_but_not_allow_hosts() {
    let no_host = Request {
        port: 8080,
        http: Some(HttpRequest {
            method: "GET",
            path: "/",
            host: "",
        }),
    };
    let deny = policy(
        "no-admin-site",
        "{targetRef: {name: restaurant}, action: deny, rules: [{to: [{hosts: [admin.shop]}]}]}",
    );
    let s = set(PolicyAction::Allow, vec![deny]);
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &no_host).verdict,
        Verdict::Denied,
        "the app may serve its default site, which could be admin.shop"
    );
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &get("/")).verdict,
        Verdict::Allowed
    );
    let allow = policy(
        "www",
        "{targetRef: {name: restaurant}, rules: [{to: [{hosts: ['*.shop']}]}]}",
    );
    let s = set(PolicyAction::Allow, vec![allow]);
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &no_host).verdict,
        Verdict::Denied,
        "an allow for *.shop cannot be met without a host"
    );
}

#[test]
fn a_policy_governs_its_services_ports_only() {
    let mut p = policy(
        "admin-api",
        "{targetRef: {name: admin}, rules: [{from: [{service: reservation}]}]}",
    );
    p.ports = vec![9090];
    let s = set(PolicyAction::Allow, vec![p]);
    assert_eq!(
        s.decide(
            &Caller::Mesh(FRONTEND),
            &Request {
                port: 9090,
                http: None
            }
        )
        .verdict,
        Verdict::Denied
    );
    let d = s.decide(&Caller::Mesh(FRONTEND), &get("/"));
    assert_eq!(
        d.verdict,
        Verdict::Allowed,
        "port 8080 belongs to another Service"
    );
    assert_eq!(d.policy_label(), "default");
}

#[test]
fn the_summary_for_callers_names_the_decider_without_the_rules() {
    let s = set(PolicyAction::Deny, vec![seed()]);
    let d = s.decide(&Caller::Mesh(FRONTEND), &get("/menu/1"));
    assert_eq!(
        d.summary(),
        "denied: not allowed by AuthorizationPolicy default/restaurant"
    );
    let d = set(PolicyAction::Deny, vec![]).decide(&Caller::Mesh(FRONTEND), &get("/"));
    assert_eq!(d.summary(), "denied by the mesh's defaultPolicy (deny)");
}

#[test]
fn a_policy_with_no_rules_matches_nothing() {
    let empty = policy("locked", "{targetRef: {name: restaurant}}");
    let d = set(PolicyAction::Allow, vec![empty]).decide(&Caller::Mesh(FRONTEND), &get("/"));
    assert_eq!(d.verdict, Verdict::Denied);
    assert!(d.to_string().ends_with("it allows only: no caller"), "{d}");
    let deny_nothing = policy("d", "{targetRef: {name: restaurant}, action: deny}");
    let d = set(PolicyAction::Allow, vec![deny_nothing]).decide(&Caller::Mesh(FRONTEND), &get("/"));
    assert_eq!(d.verdict, Verdict::Allowed);
}

#[test]
fn target_port_limits_which_policies_govern() {
    let p = policy(
        "http-only",
        "{targetRef: {name: restaurant, port: 8080}, action: deny, rules: [{}]}",
    );
    let s = set(PolicyAction::Allow, vec![p]);
    assert_eq!(
        s.decide(&Caller::Mesh(FRONTEND), &get("/")).verdict,
        Verdict::Denied
    );
    let d = s.decide(&Caller::Mesh(FRONTEND), &tcp(9000));
    assert_eq!(d.verdict, Verdict::Allowed);
    assert_eq!(d.policy_label(), "default");
}

#[test]
fn sources_service_identity_namespace_and_unauthenticated() {
    let allow = |from: &str| {
        set(
            PolicyAction::Deny,
            vec![policy(
                "p",
                &format!("{{targetRef: {{name: restaurant}}, rules: [{{from: [{from}]}}]}}"),
            )],
        )
    };
    let allowed = |s: &PolicySet, c: Caller| s.decide(&c, &get("/")).verdict == Verdict::Allowed;

    let s = allow("{service: reservation}");
    assert!(allowed(&s, Caller::Mesh(RESERVATION)));
    assert!(!allowed(&s, Caller::Mesh(FRONTEND)));
    assert!(!allowed(
        &s,
        Caller::Mesh("spiffe://skein.local/ns/shop/sa/reservation")
    ));
    assert!(!allowed(&s, Caller::Unauthenticated));
    // Not fooled by look-alike IDs.
    assert!(!allowed(
        &s,
        Caller::Mesh("spiffe://skein.local/ns/default/sa/reservation/x")
    ));
    assert!(!allowed(
        &s,
        Caller::Mesh("spiffe://skein.local/ns/default/reservation")
    ));

    let s = allow("{service: cart.shop}");
    assert!(allowed(&s, Caller::Mesh(SHOP_CART)));
    assert!(!allowed(
        &s,
        Caller::Mesh("spiffe://skein.local/ns/default/sa/cart")
    ));

    let s = allow(&format!("{{identity: '{FRONTEND}'}}"));
    assert!(allowed(&s, Caller::Mesh(FRONTEND)));
    assert!(!allowed(&s, Caller::Mesh(RESERVATION)));
    assert!(!allowed(&s, Caller::Unauthenticated));

    let s = allow("{namespace: shop}");
    assert!(allowed(&s, Caller::Mesh(SHOP_CART)));
    assert!(!allowed(&s, Caller::Mesh(FRONTEND)));
    assert!(!allowed(&s, Caller::Unauthenticated));

    let s = allow("{unauthenticated: true}");
    assert!(allowed(&s, Caller::Unauthenticated));
    assert!(!allowed(&s, Caller::Mesh(FRONTEND)));

    // No `from`: any caller, authenticated or not.
    let s = set(
        PolicyAction::Deny,
        vec![policy(
            "p",
            "{targetRef: {name: restaurant}, rules: [{to: [{methods: [GET]}]}]}",
        )],
    );
    assert!(allowed(&s, Caller::Unauthenticated));
    assert!(allowed(&s, Caller::Mesh(SHOP_CART)));
}

#[test]
fn operations_ports_methods_paths_hosts() {
    let s = |to: &str| {
        set(
            PolicyAction::Deny,
            vec![policy(
                "p",
                &format!("{{targetRef: {{name: restaurant}}, rules: [{{to: [{to}]}}]}}"),
            )],
        )
    };
    let ok = |s: &PolicySet, r: Request| {
        s.decide(&Caller::Mesh(FRONTEND), &r).verdict == Verdict::Allowed
    };

    let ports = s("{ports: [9000]}");
    assert!(ok(&ports, tcp(9000)));
    assert!(!ok(&ports, tcp(9001)));
    assert!(!ok(&ports, get("/")), "port 8080");

    let methods = s("{methods: [GET, HEAD]}");
    assert!(ok(&methods, get("/x")));
    assert!(ok(&methods, http("HEAD", "/x")));
    assert!(!ok(&methods, http("POST", "/x")));
    assert!(
        ok(&methods, http("get", "/x")),
        "methods compare without case"
    );
    assert!(!ok(&methods, tcp(8080)), "HTTP conditions never match TCP");

    let paths = s("{paths: ['/menu/*', /about]}");
    for p in ["/menu", "/menu/", "/menu/1", "/menu/1/2", "/about"] {
        assert!(ok(&paths, get(p)), "{p}");
    }
    for p in ["/menus", "/menu1", "/about/", "/About", "/", "/admin"] {
        assert!(!ok(&paths, get(p)), "{p}");
    }
    assert!(ok(&s("{paths: ['*']}"), get("/anything")));
    assert!(ok(&s("{paths: ['/*']}"), get("/anything")));

    let hosts = s("{hosts: ['*.shop', restaurant.default]}");
    let with_host = |host| Request {
        port: 8080,
        http: Some(HttpRequest {
            method: "GET",
            path: "/",
            host,
        }),
    };
    for h in ["a.shop", "a.b.SHOP", "Restaurant.Default"] {
        assert!(ok(&hosts, with_host(h)), "{h}");
    }
    for h in ["shop", "evilshop", ".shop", "restaurant"] {
        assert!(!ok(&hosts, with_host(h)), "{h}");
    }

    // Every field of one `to` entry must match; any entry suffices.
    let both = s("{methods: [POST], paths: [/orders]}, {methods: [GET]}");
    assert!(ok(&both, http("POST", "/orders")));
    assert!(!ok(&both, http("POST", "/menu")));
    assert!(ok(&both, http("GET", "/menu")));
}

#[test]
fn decisions_serialise_for_the_api() {
    let d =
        set(PolicyAction::Deny, vec![seed()]).decide(&Caller::Mesh(RESERVATION), &get("/menu/1"));
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::json!({"verdict": "allowed", "by": "policy", "policy": "default/restaurant", "action": "allow", "rule": 0})
    );
}

#[test]
fn the_path_settings_travel_in_the_policy_set() {
    // The default is not written, so proxies that predate `ambiguousPaths` accept it.
    let strict = PolicySet::default();
    assert_eq!(
        serde_json::to_value(&strict).unwrap(),
        serde_json::json!({"default": "allow", "policies": [], "encodedSlashes": "reject"})
    );
    let back: PolicySet = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(back.ambiguous_paths, path::AmbiguousPaths::Reject);
    assert_eq!(
        strict.normalize_path("/public/..;/private"),
        Err(path::PathError::HiddenSegment("..;".into()))
    );
    let lenient = PolicySet {
        ambiguous_paths: path::AmbiguousPaths::Forward,
        ..PolicySet::default()
    };
    let json = serde_json::to_value(&lenient).unwrap();
    assert_eq!(json["ambiguousPaths"], "forward");
    assert_eq!(serde_json::from_value::<PolicySet>(json).unwrap(), lenient);
    assert_eq!(
        lenient.normalize_path("/public/..;/private").unwrap(),
        "/public/..;/private"
    );
}

// Property tests: policies and requests drawn from small alphabets, so that matches are
// frequent, and the precedence rules checked against what matched.

const CALLERS: [Caller<'static>; 4] = [
    Caller::Mesh(RESERVATION),
    Caller::Mesh(FRONTEND),
    Caller::Mesh(SHOP_CART),
    Caller::Unauthenticated,
];

fn arb_source() -> impl Strategy<Value = Source> {
    prop_oneof![
        prop::sample::select(vec!["reservation", "frontend", "cart.shop"]).prop_map(|s| Source {
            service: Some(s.into()),
            ..Source::default()
        }),
        prop::sample::select(vec![RESERVATION, FRONTEND]).prop_map(|s| Source {
            identity: Some(s.into()),
            ..Source::default()
        }),
        prop::sample::select(vec!["default", "shop"]).prop_map(|s| Source {
            namespace: Some(s.into()),
            ..Source::default()
        }),
        Just(Source {
            unauthenticated: Some(true),
            ..Source::default()
        }),
    ]
}

fn arb_operation() -> impl Strategy<Value = Operation> {
    (
        prop::collection::vec(prop::sample::select(vec![8080u16, 9000]), 0..2),
        prop::collection::vec(prop::sample::select(vec!["GET", "POST"]), 0..2),
        prop::collection::vec(prop::sample::select(vec!["/menu/*", "/admin", "*"]), 0..2),
    )
        .prop_map(|(mut ports, methods, paths)| {
            ports.dedup();
            Operation {
                ports,
                methods: methods.into_iter().map(String::from).collect(),
                paths: paths.into_iter().map(String::from).collect(),
                hosts: Vec::new(),
            }
        })
}

fn arb_policy(i: usize) -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec![
            PolicyAction::Allow,
            PolicyAction::Deny,
            PolicyAction::Audit,
        ]),
        prop::option::of(prop::sample::select(vec![8080u16, 9000])),
        prop::collection::vec(
            (
                prop::collection::vec(arb_source(), 0..3),
                prop::collection::vec(arb_operation(), 0..3),
            )
                .prop_map(|(from, to)| AuthorizationRule { from, to }),
            0..3,
        ),
    )
        .prop_map(move |(action, port, rules)| Policy {
            namespace: "default".into(),
            name: format!("p{i}"),
            ports: Vec::new(),
            spec: AuthorizationPolicySpec {
                target_ref: TargetRef {
                    group: String::new(),
                    kind: "Service".into(),
                    name: "restaurant".into(),
                    port,
                },
                action,
                rules,
            },
        })
}

fn arb_set() -> impl Strategy<Value = PolicySet> {
    (
        prop::sample::select(vec![
            PolicyAction::Allow,
            PolicyAction::Deny,
            PolicyAction::Audit,
        ]),
        (0usize..5).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>()),
    )
        .prop_map(|(default, policies)| PolicySet {
            default,
            policies,
            ..PolicySet::default()
        })
}

fn arb_request() -> impl Strategy<Value = (usize, Option<(&'static str, &'static str)>, u16)> {
    (
        0..CALLERS.len(),
        prop::option::of((
            prop::sample::select(vec!["GET", "POST"]),
            prop::sample::select(vec!["/menu", "/menu/1", "/admin", "/"]),
        )),
        prop::sample::select(vec![8080u16, 9000]),
    )
}

fn request(method_path: Option<(&'static str, &'static str)>, port: u16) -> Request<'static> {
    Request {
        port,
        http: method_path.map(|(method, path)| HttpRequest {
            method,
            path,
            host: "restaurant",
        }),
    }
}

fn matching(s: &PolicySet, action: PolicyAction, c: &Caller, r: &Request) -> bool {
    s.policies
        .iter()
        .any(|p| p.spec.action == action && p.governs(r.port) && p.matching_rule(c, r).is_some())
}

proptest! {
    #[test]
    fn precedence_deny_then_allow_list_and_default_then_audit(
        s in arb_set(),
        (caller, mp, port) in arb_request(),
    ) {
        let c = CALLERS[caller];
        let r = request(mp, port);
        let d = s.decide(&c, &r);
        let enforced = if matching(&s, PolicyAction::Allow, &c, &r) {
            Verdict::Allowed
        } else if s.policies.iter().any(|p| p.spec.action == PolicyAction::Allow && p.governs(port)) {
            if s.default == PolicyAction::Audit { Verdict::Audited } else { Verdict::Denied }
        } else {
            match s.default {
                PolicyAction::Allow => Verdict::Allowed,
                PolicyAction::Deny => Verdict::Denied,
                PolicyAction::Audit => Verdict::Audited,
            }
        };
        let expected = if matching(&s, PolicyAction::Deny, &c, &r) {
            Verdict::Denied
        } else if enforced != Verdict::Denied && matching(&s, PolicyAction::Audit, &c, &r) {
            Verdict::Audited
        } else {
            enforced
        };
        prop_assert_eq!(d.verdict, expected, "{}", d);
        // The named policy really has the action the verdict implies.
        if let DecidedBy::Policy { policy, action, .. } = &d.by {
            let named = s.policies.iter().find(|p| format!("default/{}", p.name) == *policy).unwrap();
            prop_assert_eq!(named.spec.action, *action);
        }
    }

    #[test]
    fn policy_order_does_not_matter(s in arb_set(), (caller, mp, port) in arb_request()) {
        let c = CALLERS[caller];
        let r = request(mp, port);
        let mut reversed = s.clone();
        reversed.policies.reverse();
        prop_assert_eq!(s.decide(&c, &r).verdict, reversed.decide(&c, &r).verdict);
    }

    #[test]
    fn a_deny_for_everything_denies_everything(s in arb_set(), (caller, mp, port) in arb_request()) {
        let mut with_deny = s.clone();
        with_deny.policies.push(policy("deny-all", "{targetRef: {name: restaurant}, action: deny, rules: [{}]}"));
        let d = with_deny.decide(&CALLERS[caller], &request(mp, port));
        prop_assert_eq!(d.verdict, Verdict::Denied);
        prop_assert!(matches!(d.by, DecidedBy::Policy { action: PolicyAction::Deny, .. }), "{}", d);
    }

    #[test]
    fn adding_an_allow_never_overturns_a_deny_policy(s in arb_set(), (caller, mp, port) in arb_request()) {
        let c = CALLERS[caller];
        let r = request(mp, port);
        let before = s.decide(&c, &r);
        let mut more = s.clone();
        more.policies.push(policy("allow-all", "{targetRef: {name: restaurant}, rules: [{}]}"));
        let after = more.decide(&c, &r);
        if matches!(before.by, DecidedBy::Policy { action: PolicyAction::Deny, .. }) {
            prop_assert_eq!(after, before);
        } else {
            prop_assert!(after.verdict.admits(), "{}", after);
        }
    }
}
