//! The authorization decision (`PolicySet::decide`), on policy sets and requests built
//! from the input out of a small vocabulary, so that rules and requests often meet.
//! Properties (the ones the proxy's safety rests on, none a restatement of the code):
//! - what decided is real: a policy that governs the port, a rule it has, an action
//!   that gives the verdict;
//! - an opaque connection is never let through where some HTTP request on the same
//!   port from the same caller would be refused, nor a request naming no host where one
//!   naming a host would be;
//! - an `audit` policy added never changes whether a request is let through, and a
//!   `deny` policy added never lets through what was refused;
//! - methods and hosts compare without regard to case;
//! - a path a `deny` policy refuses is refused with a trailing `/` too;
//! - decisions are made on normalised paths, and deciding again on the normalised
//!   path decides the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_model::authz::{Caller, DecidedBy, HttpRequest, Policy, PolicySet, Request, Verdict};
use skein_model::resource::{
    AuthorizationPolicySpec, AuthorizationRule, Operation, PolicyAction, Source, TargetRef,
};

const IDS: &[&str] = &[
    "spiffe://mesh.local/ns/default/sa/web",
    "spiffe://mesh.local/ns/shop/sa/api",
    "spiffe://mesh.local/ns/shop/sa/web",
    "spiffe://other.local/ns/default/sa/web",
    "spiffe://mesh.local/odd",
];
const NAMESPACES: &[&str] = &["default", "shop"];
const SERVICES: &[&str] = &["web", "api.shop", "web.shop"];
const METHODS: &[&str] = &["GET", "POST", "get", "DELETE", "Put"];
const PATTERNS: &[&str] = &["*", "/menu/*", "/menu", "/admin", "/", "/a/b/*", "/a/b"];
const PATHS: &[&str] = &[
    "/",
    "/menu",
    "/menu/",
    "/menu/x",
    "/menux",
    "/admin",
    "/admin/",
    "/a/b",
    "/a/b/c",
    "/a",
    "/menu/../admin",
    "/%61dmin",
    "/menu//x",
    "/admin%2F",
    "/./admin",
    "/a/b/./c/..",
    "/ADMIN",
];
const HOST_PATTERNS: &[&str] = &["*.shop", "web", "WEB.shop", "api.shop"];
const HOSTS: &[&str] = &[
    "web",
    "web.shop",
    "Web.Shop",
    "x.web.shop",
    "api.shop",
    "shop",
];
const PORTS: &[u16] = &[80, 8080];

/// Reads choices from the input; past its end, every choice is the first.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
    fn count(&mut self, max: u8) -> usize {
        usize::from(self.byte() % (max + 1))
    }
    fn strings(&mut self, from: &[&str], max: u8) -> Vec<String> {
        (0..self.count(max))
            .map(|_| self.pick(from).to_string())
            .collect()
    }
    fn source(&mut self) -> Source {
        let mut s = Source::default();
        match self.byte() % 4 {
            0 => s.identity = Some(self.pick(IDS).into()),
            1 => s.namespace = Some(self.pick(NAMESPACES).into()),
            2 => s.service = Some(self.pick(SERVICES).into()),
            _ => s.unauthenticated = Some(true),
        }
        s
    }
    fn operation(&mut self) -> Operation {
        Operation {
            ports: (0..self.count(1)).map(|_| self.pick(PORTS)).collect(),
            methods: self.strings(METHODS, 2),
            paths: self.strings(PATTERNS, 2),
            hosts: self.strings(HOST_PATTERNS, 1),
        }
    }
    fn policy(&mut self, n: usize, action: PolicyAction) -> Policy {
        let rules = (0..self.count(2))
            .map(|_| AuthorizationRule {
                from: (0..self.count(2)).map(|_| self.source()).collect(),
                to: (0..self.count(2)).map(|_| self.operation()).collect(),
            })
            .collect();
        let port = (self.byte() % 3 == 0).then(|| self.pick(PORTS));
        Policy {
            namespace: "default".into(),
            name: format!("p{n}"),
            spec: AuthorizationPolicySpec {
                target_ref: TargetRef {
                    group: String::new(),
                    kind: "Service".into(),
                    name: "web".into(),
                    port,
                },
                action,
                rules,
            },
            ports: if self.byte() % 2 == 0 {
                Vec::new()
            } else {
                vec![self.pick(PORTS)]
            },
        }
    }
    fn action(&mut self) -> PolicyAction {
        self.pick(&[PolicyAction::Allow, PolicyAction::Deny, PolicyAction::Audit])
    }
}

fn admits(set: &PolicySet, caller: &Caller, req: &Request) -> bool {
    set.decide(caller, req).verdict.admits()
}

fuzz_target!(|data: &[u8]| {
    let mut c = Choices(data);
    let mut set = PolicySet {
        default: c.action(),
        ..PolicySet::default()
    };
    for n in 0..c.count(3) {
        let action = c.action();
        set.policies.push(c.policy(n, action));
    }
    let caller = match c.byte() % (IDS.len() as u8 + 1) {
        0 => Caller::Unauthenticated,
        i => Caller::Mesh(IDS[usize::from(i) - 1]),
    };
    let port = c.pick(PORTS);
    let raw = c.pick(PATHS);
    let Ok(path) = set.normalize_path(raw) else {
        return;
    };
    let http = HttpRequest {
        method: c.pick(METHODS),
        path: &path,
        host: if c.byte() % 4 == 0 { "" } else { c.pick(HOSTS) },
    };
    let req = Request {
        port,
        http: Some(http),
    };
    let decision = set.decide(&caller, &req);

    // What decided is real.
    if let DecidedBy::Policy {
        policy,
        action,
        rule,
    } = &decision.by
    {
        let p = set
            .policies
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == *policy)
            .expect("the deciding policy exists");
        assert_eq!(p.spec.action, *action);
        assert!(*rule < p.spec.rules.len());
        let expected = match action {
            PolicyAction::Allow => Verdict::Allowed,
            PolicyAction::Deny => Verdict::Denied,
            PolicyAction::Audit => Verdict::Audited,
        };
        assert_eq!(decision.verdict, expected, "{decision}");
    }
    assert!(!decision.to_string().is_empty() && !decision.summary().is_empty());

    // Less information never lets more through.
    let opaque = Request { port, http: None };
    if admits(&set, &caller, &opaque) {
        assert!(
            decision.verdict.admits(),
            "opaque admitted, {http:?} not: {decision}"
        );
    }
    if !http.host.is_empty() {
        let nameless = Request {
            port,
            http: Some(HttpRequest { host: "", ..http }),
        };
        if admits(&set, &caller, &nameless) {
            assert!(decision.verdict.admits(), "no host admitted, {http:?} not");
        }
    }

    // Case does not matter.
    let (lower_m, lower_h) = (
        http.method.to_ascii_lowercase(),
        http.host.to_ascii_uppercase(),
    );
    let cased = Request {
        port,
        http: Some(HttpRequest {
            method: &lower_m,
            host: &lower_h,
            ..http
        }),
    };
    assert_eq!(
        set.decide(&caller, &cased).verdict,
        decision.verdict,
        "case"
    );

    // Normalising again decides the same.
    let again = set
        .normalize_path(&path)
        .expect("a normalised path normalises");
    let re = Request {
        port,
        http: Some(HttpRequest {
            path: &again,
            ..http
        }),
    };
    assert_eq!(set.decide(&caller, &re), decision);

    // A deny's refusal holds with a trailing slash.
    if let DecidedBy::Policy {
        action: PolicyAction::Deny,
        ..
    } = decision.by
    {
        if !path.ends_with('/') {
            let slash = format!("{path}/");
            let r = Request {
                port,
                http: Some(HttpRequest {
                    path: &slash,
                    ..http
                }),
            };
            assert_eq!(set.decide(&caller, &r).verdict, Verdict::Denied, "{slash}");
        }
    }

    // Adding an audit never changes admission; adding a deny never admits more.
    let admitted = decision.verdict.admits();
    for action in [PolicyAction::Audit, PolicyAction::Deny] {
        let mut more = set.clone();
        more.policies.push(c.policy(9, action));
        let now = admits(&more, &caller, &req);
        match action {
            PolicyAction::Audit => assert_eq!(now, admitted, "an audit policy changed admission"),
            _ => assert!(
                !now || admitted,
                "a deny policy let through what was refused"
            ),
        }
    }
});
