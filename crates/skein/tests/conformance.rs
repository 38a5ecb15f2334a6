//! The Gateway API's conformance cases translated into our own suite: its mesh tests
//! (`conformance/tests/mesh/` of kubernetes-sigs/gateway-api) and those of its `HTTPRoute*`
//! tests, written for a Gateway, whose facts hold for a mesh — the same Services, the same
//! HTTPRoutes and the same requests with the same expected outcomes, against a live Skein
//! mesh (a control plane, the backends behind their own proxies with mutual TLS, callers'
//! proxies in the namespaces the tests send from). Each test also checks its routes'
//! `Accepted` and `ResolvedRefs` conditions. docs/gateway-api.md lists every test.
//!
//! How the Kubernetes machinery maps onto Skein (docs/gateway-api.md, "Conformance"):
//! - The Services `echo` (both versions), `echo-v1` and `echo-v2` in
//!   `gateway-conformance-mesh`, each with ports 80 and 8080 to the application's 8080.
//! - A request "to `echo-v1:8080`" goes to the caller proxy's upstream listener for that
//!   Service port: as with a ClusterIP, where the connection goes decides the Service, not
//!   the `Host` header (which `MeshFrontendHostname` sets to another Service's name).
//! - The backend that answered is the one whose request count grew; what it saw (path,
//!   headers) is what it recorded.
//! - Each case is checked until it holds three times in a row, within 10 s of its routes
//!   reaching the callers, as the conformance harness does.
//!
//! Checked beyond what the upstream harness compares: the redirect `Location`, and the
//! path the backend saw after a rewrite. Skipped, with the reason: `MeshFrontend`'s
//! request to the echo-v2 pod's own address (Skein workloads are reached through their
//! proxies; there is no pod address to send to).
//!
//! Every address is in 127.0.5.100–104, 110–114, 120–127 and 130–137.

mod live;

use http::{HeaderMap, Request, StatusCode};
use live::*;
use skein_control::server::RunningControl;
use skein_proxy::http::empty;
use skein_proxy::RunningProxy;
use skein_testkit::client::h1;
use skein_testkit::HttpBackend;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const NS: &str = "gateway-conformance-mesh";
const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";
/// The echo application's port; the Services' ports 80 and 8080 both lead to it.
const APP: u16 = 8080;

/// A backend Deployment of the suite: its name, namespace and labels; its proxy runs as
/// account `account`.
struct BackendSpec {
    name: &'static str,
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
    account: &'static str,
}

/// What one suite's mesh is made of: Services (YAML), backends, the callers (their
/// namespaces) and the upstream listener each caller has for each Service port
/// (`service`, its namespace, the port, the listener's port).
struct Layout {
    services: String,
    backends: Vec<BackendSpec>,
    callers: Vec<(Side, &'static str)>,
    listeners: Vec<(&'static str, &'static str, u16, u16)>,
}

/// The mesh the cases run in.
struct Infra {
    control: RunningControl,
    backends: Vec<(&'static str, HttpBackend)>,
    callers: Vec<(Side, std::net::IpAddr, RunningProxy)>,
    listeners: Vec<(&'static str, &'static str, u16, u16)>,
    _proxies: Vec<RunningProxy>,
    _dir: skein_testkit::control::TempDir,
}

/// Which backend a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// This one (its Deployment's name).
    Named(&'static str),
    /// Any (no route decides).
    Any,
    /// None: the mesh answers itself (a redirect, a 404, a 500).
    Nobody,
}

/// The mesh suite's backends.
const V1: Backend = Backend::Named("echo-v1");
const V2: Backend = Backend::Named("echo-v2");
/// The Gateway suite's backends.
const I1: Backend = Backend::Named("infra-backend-v1");
const I2: Backend = Backend::Named("infra-backend-v2");
const I3: Backend = Backend::Named("infra-backend-v3");

/// Who sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Mesh,
    Consumer,
}

/// One request and what must come of it.
#[derive(Debug, Clone)]
struct Case {
    from: Side,
    service: &'static str,
    port: u16,
    host: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    backend: Backend,
    /// Request headers the backend must see, values joined with ",".
    seen: Vec<(&'static str, &'static str)>,
    /// Request headers the backend must not see.
    unseen: Vec<&'static str>,
    /// Response headers the caller must get.
    answered: Vec<(&'static str, &'static str)>,
    /// Response headers the caller must not get.
    unanswered: Vec<&'static str>,
    /// The path (and query) the backend must see.
    backend_path: Option<&'static str>,
    /// The redirect's `Location`.
    location: Option<&'static str>,
    /// The backends that must each receive a copy (mirrors).
    mirrors: Vec<&'static str>,
    /// The `Host` the backend must see.
    backend_host: Option<&'static str>,
}

impl Case {
    /// `GET path` to `service:port` from the mesh namespace, expecting 200 from anyone.
    fn get(service: &'static str, port: u16, path: &'static str) -> Case {
        Case {
            from: Side::Mesh,
            service,
            port,
            host: None,
            method: "GET",
            path,
            headers: Vec::new(),
            status: 200,
            backend: Backend::Any,
            seen: Vec::new(),
            unseen: Vec::new(),
            answered: Vec::new(),
            unanswered: Vec::new(),
            backend_path: None,
            location: None,
            mirrors: Vec::new(),
            backend_host: None,
        }
    }
    /// `GET path` to the Gateway suite's parent Service.
    fn gw(path: &'static str) -> Case {
        Case::get("gateway", 80, path)
    }
    fn method(mut self, method: &'static str) -> Case {
        self.method = method;
        self
    }
    fn mirrored_to(mut self, backend: &'static str) -> Case {
        self.mirrors.push(backend);
        self
    }
    fn host_seen(mut self, host: &'static str) -> Case {
        self.backend_host = Some(host);
        self
    }
    fn echo(path: &'static str) -> Case {
        Case::get("echo", 80, path)
    }
    fn to(mut self, backend: Backend) -> Case {
        self.backend = backend;
        self
    }
    fn status(mut self, status: u16) -> Case {
        self.status = status;
        if status != 200 {
            self.backend = Backend::Nobody;
        }
        self
    }
    fn redirect(self, status: u16, location: &'static str) -> Case {
        let mut c = self.status(status);
        c.location = Some(location);
        c
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Case {
        self.headers.push((name, value));
        self
    }
    fn host(mut self, host: &'static str) -> Case {
        self.host = Some(host);
        self
    }
    fn sent_by_consumer(mut self) -> Case {
        self.from = Side::Consumer;
        self
    }
    fn sees(mut self, name: &'static str, value: &'static str) -> Case {
        self.seen.push((name, value));
        self
    }
    fn not_sees(mut self, name: &'static str) -> Case {
        self.unseen.push(name);
        self
    }
    fn answers(mut self, name: &'static str, value: &'static str) -> Case {
        self.answered.push((name, value));
        self
    }
    fn not_answers(mut self, name: &'static str) -> Case {
        self.unanswered.push(name);
        self
    }
    fn path_seen(mut self, path: &'static str) -> Case {
        self.backend_path = Some(path);
        self
    }
}

/// One conformance test: its ShortName, its routes (documents in the mesh namespace
/// unless they say otherwise) and its cases.
struct Conformance {
    name: &'static str,
    routes: String,
    cases: Vec<Case>,
}

/// An HTTPRoute document `name` in `NS` with the spec `spec` (YAML flow or block).
fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{spec}---\n"
    )
}

/// A redirect rule: `PathPrefix prefix` answered by `redirect` (a requestRedirect body).
fn redirect_rule(prefix: &str, redirect: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
    )
}

fn echo_parent() -> &'static str {
    "  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]\n  rules:\n"
}

/// The mesh conformance tests for HTTP, as published.
fn tests() -> Vec<Conformance> {
    let header_rules = |backend_level: bool| {
        let modifiers = [
            ("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
            ("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
            ("/remove", "{remove: [X-Header-Remove]}"),
            (
                "/multiple",
                "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], \
                 add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], \
                 remove: [X-Header-Remove-1, X-Header-Remove-2]}",
            ),
            (
                "/case-insensitivity",
                "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}",
            ),
        ];
        let mut spec = echo_parent().to_string();
        for (prefix, m) in modifiers {
            let filter = format!("{{type: RequestHeaderModifier, requestHeaderModifier: {m}}}");
            if backend_level {
                spec += &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{name: echo-v1, port: 8080, filters: [{filter}]}}]\n"
                );
            } else {
                spec += &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{filter}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n"
                );
            }
        }
        spec
    };
    let header_cases = || {
        vec![
            Case::echo("/set")
                .header("Some-Other-Header", "val")
                .to(V1)
                .sees("Some-Other-Header", "val")
                .sees("X-Header-Set", "set-overwrites-values"),
            Case::echo("/set")
                .header("Some-Other-Header", "val")
                .header("X-Header-Set", "some-other-value")
                .to(V1)
                .sees("Some-Other-Header", "val")
                .sees("X-Header-Set", "set-overwrites-values"),
            Case::echo("/add")
                .header("Some-Other-Header", "val")
                .to(V1)
                .sees("Some-Other-Header", "val")
                .sees("X-Header-Add", "add-appends-values"),
            Case::echo("/add")
                .header("Some-Other-Header", "val")
                .header("X-Header-Add", "some-other-value")
                .to(V1)
                .sees("Some-Other-Header", "val")
                .sees("X-Header-Add", "some-other-value,add-appends-values"),
            Case::echo("/remove")
                .header("X-Header-Remove", "val")
                .to(V1)
                .not_sees("X-Header-Remove"),
            Case::echo("/multiple")
                .header("X-Header-Set-2", "set-val-2")
                .header("X-Header-Add-2", "add-val-2")
                .header("X-Header-Remove-2", "remove-val-2")
                .header("Another-Header", "another-header-val")
                .to(V1)
                .sees("X-Header-Set-1", "header-set-1")
                .sees("X-Header-Set-2", "header-set-2")
                .sees("X-Header-Add-1", "header-add-1")
                .sees("X-Header-Add-2", "add-val-2,header-add-2")
                .sees("X-Header-Add-3", "header-add-3")
                .sees("Another-Header", "another-header-val")
                .not_sees("X-Header-Remove-1")
                .not_sees("X-Header-Remove-2"),
            Case::echo("/case-insensitivity")
                .header("x-header-set", "original-val-set")
                .header("x-header-add", "original-val-add")
                .header("x-header-remove", "original-val-remove")
                .header("Another-Header", "another-header-val")
                .to(V1)
                .sees("X-Header-Set", "header-set")
                .sees("X-Header-Add", "original-val-add,header-add")
                .sees("Another-Header", "another-header-val")
                .not_sees("X-Header-Remove"),
        ]
    };
    let rewrite_headers = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let rewrite_case = |path: &'static str, seen: &'static str| {
        Case::echo(path)
            .header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .header("X-Header-Set", "set-val")
            .to(V1)
            .path_seen(seen)
            .sees("X-Header-Add", "header-val-1")
            .sees("X-Header-Add-Append", "append-val-1,header-val-2")
            .sees("X-Header-Set", "set-overwrites-values")
            .not_sees("X-Header-Remove")
    };
    vec![
        Conformance {
            name: "MeshBasic",
            routes: String::new(),
            cases: vec![Case::echo("/")],
        },
        Conformance {
            name: "MeshFrontend",
            routes: route(
                "mesh-split-v1",
                "  parentRefs: [{group: '', kind: Service, name: echo-v2}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
            ),
            cases: vec![Case::get("echo-v2", 80, "/")
                .to(V2)
                .answers("X-Header-Set", "set")],
        },
        Conformance {
            name: "MeshFrontendHostname",
            routes: route(
                "mesh-split-v1",
                "  parentRefs: [{group: '', kind: Service, name: echo-v2}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
            ),
            cases: vec![
                Case::get("echo-v2", 80, "/")
                    .host("echo-v1")
                    .to(V2)
                    .answers("X-Header-Set", "set"),
                Case::get("echo-v1", 80, "/")
                    .host("echo-v2")
                    .to(V1)
                    .not_answers("X-Header-Set"),
            ],
        },
        Conformance {
            name: "MeshPorts",
            routes: route(
                "mesh-split-v1",
                "  parentRefs: [{group: '', kind: Service, name: echo-v1, port: 80}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n",
            ) + &route(
                "mesh-split-v2",
                "  parentRefs: [{group: '', kind: Service, name: echo-v2}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
            ),
            cases: vec![
                Case::get("echo-v1", 80, "/").to(V1).answers("X-Header-Set", "v1"),
                Case::get("echo-v1", 8080, "/")
                    .to(V1)
                    .not_answers("X-Header-Set"),
                Case::get("echo-v2", 80, "/").to(V2).answers("X-Header-Set", "v2"),
                Case::get("echo-v2", 8080, "/")
                    .to(V2)
                    .answers("X-Header-Set", "v2"),
            ],
        },
        Conformance {
            name: "MeshTrafficSplit",
            routes: route(
                "mesh-split",
                "  parentRefs: [{group: '', kind: Service, name: echo}]\n  rules:\n  - matches: [{path: {type: Exact, value: /v1}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /v2}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
            ),
            cases: vec![Case::echo("/v1").to(V1), Case::echo("/v2").to(V2)],
        },
        Conformance {
            name: "MeshConsumerRoute",
            routes: format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: mesh-echo-add-header, namespace: {CONSUMER_NS}}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: echo-v1, namespace: {NS}}}]\n  rules:\n  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}}}]\n    backendRefs: [{{name: echo-v1, namespace: {NS}, port: 80}}]\n---\n"
            ),
            cases: vec![
                Case::get("echo-v1", 80, "/")
                    .sent_by_consumer()
                    .host("echo-v1.gateway-conformance-mesh")
                    .to(V1)
                    .answers("X-Header-Set", "set"),
                Case::get("echo-v1", 80, "/")
                    .host("echo-v1.gateway-conformance-mesh")
                    .to(V1)
                    .not_answers("X-Header-Set"),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteSimpleSameNamespace",
            routes: route(
                "gateway-conformance-mesh-test",
                &format!("{}  - backendRefs: [{{name: echo-v1, port: 8080}}]\n", echo_parent()),
            ),
            cases: vec![Case::echo("/").to(V1)],
        },
        Conformance {
            name: "MeshHTTPRouteMatching",
            routes: route(
                "mesh-matching",
                &format!(
                    "{}  - matches: [{{path: {{type: PathPrefix, value: /}}}}, {{headers: [{{name: version, value: one}}]}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}, {{headers: [{{name: version, value: two}}]}}]\n    backendRefs: [{{name: echo-v2, port: 8080}}]\n",
                    echo_parent()
                ),
            ),
            cases: vec![
                Case::echo("/").to(V1),
                Case::echo("/example").to(V1),
                Case::echo("/").header("Version", "one").to(V1),
                Case::echo("/v2").to(V2),
                Case::echo("/v2/example").to(V2),
                Case::echo("/").header("Version", "two").to(V2),
                Case::echo("/v2/").to(V2),
                Case::echo("/v2example").to(V1),
                Case::echo("/foo/v2/example").to(V1),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteQueryParamMatching",
            routes: route(
                "mesh-query-param-matching",
                &format!(
                    "{}  - matches: [{{queryParams: [{{name: animal, value: whale}}]}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n\
                     \x20 - matches: [{{queryParams: [{{name: animal, value: dolphin}}]}}]\n    backendRefs: [{{name: echo-v2, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /path1}}, queryParams: [{{name: animal, value: whale}}]}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n\
                     \x20 - matches: [{{headers: [{{name: version, value: one}}], queryParams: [{{name: animal, value: whale}}]}}]\n    backendRefs: [{{name: echo-v2, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /path3}}, queryParams: [{{name: animal, value: shark}}]}}, {{path: {{type: PathPrefix, value: /path4}}, headers: [{{name: version, value: three}}], queryParams: [{{name: animal, value: kraken}}]}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /path5}}}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n\
                     \x20 - matches: [{{queryParams: [{{name: animal, value: hydra}}]}}]\n    backendRefs: [{{name: echo-v2, port: 8080}}]\n",
                    echo_parent()
                ),
            ),
            cases: vec![
                Case::echo("/?animal=whale").to(V1),
                Case::echo("/?animal=dolphin").to(V2),
                Case::echo("/?animal=whale&otherparam=irrelevant").to(V1),
                Case::echo("/?animal=dolphin&color=yellow").to(V2),
                Case::echo("/?color=blue").status(404),
                Case::echo("/?animal=dog").status(404),
                Case::echo("/?animal=whaledolphin").status(404),
                Case::echo("/").status(404),
                Case::echo("/path1?animal=whale").to(V1),
                Case::echo("/?animal=whale").header("version", "one").to(V2),
                Case::echo("/path3?animal=shark").to(V1),
                Case::echo("/path4?animal=kraken")
                    .header("version", "three")
                    .to(V1),
                Case::echo("/?animal=shark").status(404),
                Case::echo("/path4?animal=kraken").status(404),
                Case::echo("/path5?animal=hydra").to(V1),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteNamedRule",
            routes: route(
                "mesh-http-named-rules",
                &format!(
                    "{}  - name: named-rule\n    matches: [{{path: {{type: PathPrefix, value: /named}}}}]\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /unnamed}}}}]\n    backendRefs: [{{name: echo-v2, port: 8080}}]\n",
                    echo_parent()
                ),
            ),
            cases: vec![
                Case::echo("/named").to(V1).path_seen("/named"),
                // Upstream writes "/named" here, a copy-paste slip: nothing rewrites.
                Case::echo("/unnamed").to(V2).path_seen("/unnamed"),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteRequestHeaderModifier",
            routes: route("mesh-request-header-modifier", &header_rules(false)),
            cases: header_cases(),
        },
        Conformance {
            name: "MeshHTTPRouteBackendRequestHeaderModifier",
            routes: route("mesh-request-header-modifier-backend", &header_rules(true)),
            cases: header_cases(),
        },
        Conformance {
            name: "MeshHTTPRouteRewritePath",
            routes: route(
                "mesh-rewrite-path",
                &format!(
                    "{}  - matches: [{{path: {{type: PathPrefix, value: /prefix/one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}}}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /strip-prefix}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /full/one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /one}}}}}}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /test}}}}}}, {rewrite_headers}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}}}}, {rewrite_headers}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n",
                    echo_parent()
                ),
            ),
            cases: vec![
                Case::echo("/prefix/one/two").to(V1).path_seen("/one/two"),
                Case::echo("/strip-prefix/three").to(V1).path_seen("/three"),
                Case::echo("/strip-prefix").to(V1).path_seen("/"),
                Case::echo("/full/one/two").to(V1).path_seen("/one"),
                rewrite_case("/full/rewrite-path-and-modify-headers/test", "/test"),
                rewrite_case(
                    "/prefix/rewrite-path-and-modify-headers/one",
                    "/prefix/one",
                ),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteRedirectHostAndStatus",
            routes: route(
                "mesh-redirect-host-and-status",
                &(echo_parent().to_string()
                    + &redirect_rule("/hostname-redirect", "{hostname: example.org}")
                    + &redirect_rule("/host-and-status", "{statusCode: 301, hostname: example.org}")
                    + &redirect_rule("/host-and-temporary", "{statusCode: 307, hostname: example.org}")
                    + &redirect_rule("/host-and-permanent", "{statusCode: 308, hostname: example.org}")),
            ),
            cases: vec![
                Case::echo("/hostname-redirect")
                    .redirect(302, "http://example.org/hostname-redirect"),
                Case::echo("/host-and-status").redirect(301, "http://example.org/host-and-status"),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteRedirectPath",
            routes: route(
                "mesh-redirect-path",
                &(echo_parent().to_string()
                    + &redirect_rule("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}")
                    + &redirect_rule("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}")
                    + &redirect_rule("/path-and-host", "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}")
                    + &redirect_rule("/path-and-status", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}")
                    + &redirect_rule("/path-and-temporary", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 307}")
                    + &redirect_rule("/path-and-permanent", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 308}")
                    + &redirect_rule("/full-path-and-host", "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}")
                    + &redirect_rule("/full-path-and-status", "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}")
                    + &redirect_rule("/full-path-and-temporary", "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 307}")
                    + &redirect_rule("/full-path-and-permanent", "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 308}")),
            ),
            cases: vec![
                Case::echo("/original-prefix/lemon")
                    .redirect(302, "http://echo/replacement-prefix/lemon"),
                Case::echo("/full/path/original").redirect(302, "http://echo/full-path-replacement"),
                Case::echo("/path-and-host").redirect(302, "http://example.org/replacement-prefix"),
                Case::echo("/path-and-status").redirect(301, "http://echo/replacement-prefix"),
                Case::echo("/full-path-and-host")
                    .redirect(302, "http://example.org/replacement-full"),
                Case::echo("/full-path-and-status").redirect(301, "http://echo/replacement-full"),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteRedirectPort",
            routes: route(
                "mesh-redirect-port",
                &(echo_parent().to_string()
                    + &redirect_rule("/port", "{port: 8083}")
                    + &redirect_rule("/port-and-host", "{hostname: example.org, port: 8083}")
                    + &redirect_rule("/port-and-status", "{port: 8083, statusCode: 301}")
                    + &redirect_rule("/port-and-temporary", "{port: 8083, statusCode: 307}")
                    + &redirect_rule("/port-and-permanent", "{port: 8083, statusCode: 308}")
                    + &redirect_rule("/port-and-host-and-status", "{port: 8083, hostname: example.org, statusCode: 302}")),
            ),
            cases: vec![
                Case::echo("/port").redirect(302, "http://echo:8083/port"),
                Case::echo("/port-and-host").redirect(302, "http://example.org:8083/port-and-host"),
                Case::echo("/port-and-status").redirect(301, "http://echo:8083/port-and-status"),
                Case::echo("/port-and-host-and-status")
                    .redirect(302, "http://example.org:8083/port-and-host-and-status"),
            ],
        },
        Conformance {
            name: "MeshHTTPRouteSchemeRedirect",
            routes: route(
                "mesh-redirect-scheme",
                &(echo_parent().to_string()
                    + &redirect_rule("/scheme", "{scheme: https}")
                    + &redirect_rule("/scheme-and-host", "{hostname: example.org, scheme: https}")
                    + &redirect_rule("/scheme-and-status", "{scheme: https, statusCode: 301}")
                    + &redirect_rule("/scheme-and-temporary", "{scheme: https, statusCode: 307}")
                    + &redirect_rule("/scheme-and-permanent", "{scheme: https, statusCode: 308}")
                    + &redirect_rule("/scheme-and-host-and-status", "{scheme: https, statusCode: 302, hostname: example.org}")),
            ),
            cases: vec![
                Case::echo("/scheme").redirect(302, "https://echo/scheme"),
                Case::echo("/scheme-and-host").redirect(302, "https://example.org/scheme-and-host"),
                Case::echo("/scheme-and-status").redirect(301, "https://echo/scheme-and-status"),
                Case::echo("/scheme-and-host-and-status")
                    .redirect(302, "https://example.org/scheme-and-host-and-status"),
            ],
        },
        Conformance {
            name: "MeshHTTPRoute303Redirect",
            routes: route(
                "mesh-303-redirect",
                &(echo_parent().to_string() + &redirect_rule("/redirect", "{statusCode: 303}")),
            ),
            cases: vec![Case::echo("/redirect").redirect(303, "http://echo/redirect")],
        },
        Conformance {
            name: "MeshHTTPRoute307Redirect",
            routes: route(
                "mesh-307-redirect",
                &(echo_parent().to_string() + &redirect_rule("/temporary", "{statusCode: 307}")),
            ),
            cases: vec![Case::echo("/temporary").redirect(307, "http://echo/temporary")],
        },
        Conformance {
            name: "MeshHTTPRoute308Redirect",
            routes: route(
                "mesh-308-redirect",
                &(echo_parent().to_string() + &redirect_rule("/permanent", "{statusCode: 308}")),
            ),
            cases: vec![Case::echo("/permanent").redirect(308, "http://echo/permanent")],
        },
        Conformance {
            name: "MeshHTTPRouteAdditionalRedirectHostAndStatus",
            routes: route(
                "mesh-additional-redirect-host-and-status",
                &(echo_parent().to_string()
                    + &redirect_rule("/host-and-status-temporary", "{statusCode: 307, hostname: example.org}")
                    + &redirect_rule("/host-and-status-permanent", "{statusCode: 308, hostname: example.org}")),
            ),
            cases: vec![
                Case::echo("/host-and-status-temporary")
                    .redirect(307, "http://example.org/host-and-status-temporary"),
                Case::echo("/host-and-status-permanent")
                    .redirect(308, "http://example.org/host-and-status-permanent"),
            ],
        },
        Conformance {
            name: "MeshHTTPRoute303RedirectHostAndStatus",
            routes: route(
                "mesh-303-redirect-host-and-status",
                &(echo_parent().to_string()
                    + &redirect_rule("/host-and-status-temporary", "{statusCode: 303, hostname: example.org}")),
            ),
            cases: vec![Case::echo("/host-and-status-temporary")
                .redirect(303, "http://example.org/host-and-status-temporary")],
        },
    ]
}

/// A Service document in `namespace` selecting `selector`, for account `account`, with
/// `ports` (each to the application's port).
fn service_doc(
    name: &str,
    namespace: &str,
    selector: &str,
    account: &str,
    ports: &[u16],
) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{port: {p}, targetPort: {APP}, protocol: http}}"))
        .collect();
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{selector: {selector}, serviceAccounts: [{account}], ports: [{}]}}\n---\n",
        ports.join(", ")
    )
}

/// The mesh suite: `echo` over both versions, `echo-v1`, `echo-v2` in
/// `gateway-conformance-mesh`, each with ports 80 and 8080 to the application's 8080; a
/// caller in that namespace and one in the consumer namespace.
fn mesh_layout() -> Layout {
    let services = [
        ("echo", "{app: echo}"),
        ("echo-v1", "{app: echo, version: v1}"),
        ("echo-v2", "{app: echo, version: v2}"),
    ]
    .iter()
    .map(|(name, selector)| service_doc(name, NS, selector, "echo", &[80, 8080]))
    .collect();
    let mut listeners = Vec::new();
    for (i, service) in ["echo", "echo-v1", "echo-v2"].into_iter().enumerate() {
        for (j, port) in [80, 8080].into_iter().enumerate() {
            listeners.push((service, NS, port, 15080 + (2 * i + j) as u16));
        }
    }
    Layout {
        services,
        backends: vec![
            BackendSpec {
                name: "echo-v1",
                namespace: NS,
                labels: &[("app", "echo"), ("version", "v1")],
                account: "echo",
            },
            BackendSpec {
                name: "echo-v2",
                namespace: NS,
                labels: &[("app", "echo"), ("version", "v2")],
                account: "echo",
            },
        ],
        callers: vec![(Side::Mesh, NS), (Side::Consumer, CONSUMER_NS)],
        listeners,
    }
}

/// The Gateway suite's namespaces.
const INFRA_NS: &str = "gateway-conformance-infra";
const APP_NS: &str = "gateway-conformance-app-backend";
const WEB_NS: &str = "gateway-conformance-web-backend";

/// The Gateway suite: `infra-backend-v1..v3` in `gateway-conformance-infra`,
/// `app-backend-v1..v2` and `web-backend` in their own namespaces, all on port 8080; the
/// parent every route attaches to, which stands for the suite's Gateway, is the Service
/// `gateway` (port 80) over infra-backend-v1, which no route ever leaves as the answer.
fn gateway_layout() -> Layout {
    let backends = vec![
        ("infra-backend-v1", INFRA_NS),
        ("infra-backend-v2", INFRA_NS),
        ("infra-backend-v3", INFRA_NS),
        ("app-backend-v1", APP_NS),
        ("app-backend-v2", APP_NS),
        ("web-backend", WEB_NS),
    ];
    let mut services = service_doc(
        "gateway",
        INFRA_NS,
        "{app: infra-backend-v1}",
        "infra-backend-v1",
        &[80],
    );
    for (name, ns) in &backends {
        services += &service_doc(name, ns, &format!("{{app: {name}}}"), name, &[8080]);
    }
    Layout {
        services,
        backends: backends
            .into_iter()
            .map(|(name, namespace)| BackendSpec {
                name,
                namespace,
                labels: match name {
                    "infra-backend-v1" => &[("app", "infra-backend-v1")],
                    "infra-backend-v2" => &[("app", "infra-backend-v2")],
                    "infra-backend-v3" => &[("app", "infra-backend-v3")],
                    "app-backend-v1" => &[("app", "app-backend-v1")],
                    "app-backend-v2" => &[("app", "app-backend-v2")],
                    _ => &[("app", "web-backend")],
                },
                account: name,
            })
            .collect(),
        callers: vec![(Side::Mesh, INFRA_NS)],
        listeners: vec![("gateway", INFRA_NS, 80, 15080)],
    }
}

/// A backend of `spec` on 127.0.5.`host` behind its own proxy.
async fn backend(
    control: &RunningControl,
    host: u8,
    spec: &BackendSpec,
) -> (HttpBackend, RunningProxy) {
    let backend = HttpBackend::start(SocketAddr::new(ip(host), APP))
        .await
        .unwrap();
    let mut config = workload_config(host, spec.account, backend.addr());
    for (k, v) in spec.labels {
        config.workload.labels.insert(k.to_string(), v.to_string());
    }
    config.workload.name = spec.name.into();
    let proxy = start_proxy(control, host, spec.namespace, config).await;
    (backend, proxy)
}

/// A caller's proxy on 127.0.5.`host` in `namespace`, with the upstream listeners of
/// `listeners`, returned once it knows an endpoint of every Service they lead to.
async fn client(
    control: &RunningControl,
    host: u8,
    namespace: &str,
    listeners: &[(&'static str, &'static str, u16, u16)],
    endpoints: &[(&str, usize)],
) -> RunningProxy {
    let mut config = caller_config(host);
    config.outbound.upstreams = listeners
        .iter()
        .map(|(service, ns, port, listen)| skein_model::Upstream {
            listen: SocketAddr::new(ip(host), *listen),
            service: format!("{service}.{ns}"),
            port: *port,
        })
        .collect();
    let proxy = start_proxy(control, host, namespace, config).await;
    // It holds what it calls (on-demand discovery), as its first requests would ask.
    let names: Vec<&str> = endpoints.iter().map(|(name, _)| *name).collect();
    proxy.discover(&names).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cfg = proxy.ctx.config();
        let known = |(name, n): &(&str, usize)| {
            cfg.destinations
                .iter()
                .any(|d| d.service == *name && d.endpoints.len() >= *n)
        };
        if endpoints.iter().all(known) {
            return proxy;
        }
        assert!(
            Instant::now() < deadline,
            "the client in {namespace} never learned the Services"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Infra {
    /// `layout`'s mesh from 127.0.5.`base` (the control plane) on: the backends, then the
    /// callers.
    async fn start_at(base: u8, layout: Layout) -> Infra {
        let (control, dir) = control_at(base).await;
        apply(&control, &layout.services).await;
        let mut backends = Vec::new();
        let mut proxies = Vec::new();
        let mut host = base;
        for spec in &layout.backends {
            host += 1;
            let (b, p) = backend(&control, host, spec).await;
            backends.push((spec.name, b));
            proxies.push(p);
        }
        // Every Service with its endpoints: one per backend it selects.
        let mut endpoints: Vec<(&str, usize)> = Vec::new();
        for (service, _, _, _) in &layout.listeners {
            if !endpoints.iter().any(|(s, _)| s == service) {
                endpoints.push((service, 1));
            }
        }
        for spec in &layout.backends {
            endpoints.push((spec.account, 1));
        }
        if layout.backends.len() == 2 {
            // The mesh suite's `echo` selects both.
            endpoints.push(("echo", 2));
        }
        let mut callers = Vec::new();
        for (side, namespace) in &layout.callers {
            host += 1;
            let proxy = client(&control, host, namespace, &layout.listeners, &endpoints).await;
            callers.push((*side, ip(host), proxy));
        }
        Infra {
            control,
            backends,
            callers,
            listeners: layout.listeners,
            _proxies: proxies,
            _dir: dir,
        }
    }

    fn caller(&self, side: Side) -> &(Side, std::net::IpAddr, RunningProxy) {
        self.callers.iter().find(|(s, _, _)| *s == side).unwrap()
    }

    fn backend(&self, name: &str) -> &HttpBackend {
        &self.backends.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// The route names (`namespace/name`) every caller holds.
    fn held(&self) -> Vec<String> {
        self.callers
            .iter()
            .flat_map(|(_, _, proxy)| {
                let cfg = proxy.ctx.config();
                cfg.destinations
                    .iter()
                    .flat_map(|d| d.routes.iter().map(|r| r.name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Applies `docs` (routes, grants) and waits until a caller holds each route; returns
    /// the keys of everything applied.
    async fn apply_routes(&self, docs: &str) -> Vec<skein_model::resource::ResourceKey> {
        if docs.is_empty() {
            return Vec::new();
        }
        let docs = skein_model::resource::parse_documents(docs, "conformance").unwrap();
        let keys: Vec<_> = docs.iter().map(|d| d.key()).collect();
        self.control.registry.apply(docs).await.unwrap();
        let names: Vec<String> = keys
            .iter()
            .filter(|k| k.kind == skein_model::resource::Kind::HttpRoute)
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !names.iter().all(|n| self.held().contains(n)) {
            assert!(Instant::now() < deadline, "routes {names:?} never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        keys
    }

    /// Deletes `keys` and waits until no caller holds the routes among them.
    async fn delete_routes(&self, keys: &[skein_model::resource::ResourceKey]) {
        for k in keys {
            self.control.registry.delete(k).await.unwrap();
        }
        let names: Vec<String> = keys
            .iter()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while names.iter().any(|n| self.held().contains(n)) {
            assert!(Instant::now() < deadline, "routes {names:?} never went");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `case`'s request once; `Err` says what differed.
    async fn check(&self, case: &Case) -> Result<(), String> {
        let listen = self
            .listeners
            .iter()
            .find(|(s, _, p, _)| *s == case.service && *p == case.port)
            .map(|(_, _, _, l)| *l)
            .unwrap();
        let (_, caller_ip, _) = self.caller(case.from);
        let to = SocketAddr::new(*caller_ip, listen);
        let host = case.host.map(str::to_string).unwrap_or_else(|| {
            if case.port == 80 {
                case.service.to_string()
            } else {
                format!("{}:{}", case.service, case.port)
            }
        });
        let before: Vec<usize> = self.backends.iter().map(|(_, b)| b.hits()).collect();
        let mut sender = h1(to).await.map_err(|e| format!("connect: {e}"))?;
        // A fresh request id for each probe (the retry simulation counts per id).
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = case.path.replace("{uuid}", &format!("probe-{probe}"));
        let mut req = Request::builder()
            .method(case.method)
            .uri(path)
            .header("host", host);
        for (k, v) in &case.headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(empty()).unwrap())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        skein_testkit::client::body_bytes(resp)
            .await
            .map_err(|e| format!("body: {e}"))?;
        if status != StatusCode::from_u16(case.status).unwrap() {
            return Err(format!("status {status}, expected {}", case.status));
        }
        for mirror in &case.mirrors {
            // The copy travels on its own task: give it a moment.
            let i = self.backends.iter().position(|(n, _)| n == mirror).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.backends[i].1.hits() == before[i] {
                if Instant::now() > deadline {
                    return Err(format!("no copy reached {mirror}"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let grew: Vec<&str> = self
            .backends
            .iter()
            .zip(&before)
            .filter(|((name, b), n)| b.hits() > **n && !case.mirrors.contains(name))
            .map(|((name, _), _)| *name)
            .collect();
        let answered = match grew.as_slice() {
            [] => None,
            [one] => Some(*one),
            many => return Err(format!("requests reached {many:?}")),
        };
        match (case.backend, answered) {
            (Backend::Nobody, None) | (Backend::Any, Some(_)) => {}
            (Backend::Named(want), Some(got)) if want == got => {}
            (want, got) => return Err(format!("answered by {got:?}, expected {want:?}")),
        }
        response_headers(case, &headers)?;
        if let Some(name) = answered {
            let seen = self.backend(name).seen().pop().ok_or("nothing recorded")?;
            let values = |name: &str| -> Vec<String> {
                seen.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            for (name, want) in &case.seen {
                let got = values(name).join(",");
                if got != *want {
                    return Err(format!("backend saw {name}: {got:?}, expected {want:?}"));
                }
            }
            for name in &case.unseen {
                if !values(name).is_empty() {
                    return Err(format!("backend saw {name}, which should be gone"));
                }
            }
            if let Some(path) = case.backend_path {
                if seen.path != path {
                    return Err(format!("backend saw path {}, expected {path}", seen.path));
                }
            }
            if let Some(host) = case.backend_host {
                let got = values("host").join(",");
                if got != host {
                    return Err(format!("backend saw Host {got:?}, expected {host:?}"));
                }
            }
        }
        Ok(())
    }
}

/// The response headers and `Location` a case expects.
fn response_headers(case: &Case, headers: &HeaderMap) -> Result<(), String> {
    for (name, want) in &case.answered {
        let got: Vec<&str> = headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if got.join(",") != *want {
            return Err(format!("response {name}: {got:?}, expected {want:?}"));
        }
    }
    for name in &case.unanswered {
        if headers.contains_key(*name) {
            return Err(format!("response carries {name}, which it should not"));
        }
    }
    if let Some(want) = case.location {
        let got = headers.get("location").and_then(|v| v.to_str().ok());
        if got != Some(want) {
            return Err(format!("Location {got:?}, expected {want:?}"));
        }
    }
    Ok(())
}

/// Checks a case until it holds three times in a row, within 10 s.
async fn eventually(infra: &Infra, case: &Case) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    loop {
        match infra.check(case).await {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row == 3 {
                    return Ok(());
                }
            }
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => {
                in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The `ResolvedRefs` reason a test expects of its routes where it is not
/// `ResolvedRefs` (the condition `True`), as the upstream tests check it.
const NOT_RESOLVED: [(&str, &str); 4] = [
    ("HTTPRouteInvalidBackendRefUnknownKind", "InvalidKind"),
    ("HTTPRouteInvalidNonExistentBackendRef", "BackendNotFound"),
    (
        "HTTPRouteInvalidCrossNamespaceBackendRef",
        "RefNotPermitted",
    ),
    (
        "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant",
        "RefNotPermitted",
    ),
];

/// Every route of a test is `Accepted` at each parent, and its `ResolvedRefs` is what the
/// test expects ([`NOT_RESOLVED`], else `True`).
fn conditions(
    infra: &Infra,
    test: &str,
    keys: &[skein_model::resource::ResourceKey],
) -> Result<(), String> {
    let reason = NOT_RESOLVED
        .iter()
        .find(|(t, _)| *t == test)
        .map_or("ResolvedRefs", |(_, r)| *r);
    for key in keys
        .iter()
        .filter(|k| k.kind == skein_model::resource::Kind::HttpRoute)
    {
        let status = infra
            .control
            .registry
            .route_status(key)
            .ok_or(format!("{key} has no status"))?;
        for parent in &status.parents {
            let found = |kind: &str| parent.conditions.iter().find(|c| c.kind == kind);
            let accepted = found("Accepted").ok_or("no Accepted condition")?;
            if accepted.status != "True" {
                return Err(format!("{key}: Accepted {accepted:?}"));
            }
            let resolved = found("ResolvedRefs").ok_or("no ResolvedRefs condition")?;
            let want = if reason == "ResolvedRefs" {
                "True"
            } else {
                "False"
            };
            if resolved.status != want || resolved.reason != reason {
                return Err(format!(
                    "{key}: ResolvedRefs {} ({}), expected {want} ({reason})",
                    resolved.status, resolved.reason
                ));
            }
        }
    }
    Ok(())
}

/// Runs each test of `suite` in `infra`: its resources applied, every case checked, its
/// resources removed. Returns the failures, one line each.
async fn run(infra: &Infra, suite: Vec<Conformance>) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut passed = 0;
    for test in suite {
        let keys = infra.apply_routes(&test.routes).await;
        if let Err(why) = conditions(infra, test.name, &keys) {
            failures.push(format!("{}: {why}", test.name));
        }
        for (i, case) in test.cases.iter().enumerate() {
            match eventually(infra, case).await {
                Ok(()) => passed += 1,
                Err(why) => failures.push(format!(
                    "{} case {i} ({:?} {} {}:{}{}): {why}",
                    test.name, case.from, case.method, case.service, case.port, case.path
                )),
            }
        }
        infra.delete_routes(&keys).await;
    }
    (passed, failures)
}

#[tokio::test]
async fn the_gateway_api_mesh_conformance_cases_pass() {
    skein_testkit::init_tracing();
    let infra = Infra::start_at(100, mesh_layout()).await;
    let (passed, failures) = run(&infra, tests()).await;
    eprintln!(
        "{passed} mesh conformance cases passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    infra.control.shutdown().await;
}

#[tokio::test]
async fn the_gateway_api_mesh_weight_case_splits_seventy_thirty() {
    // MeshHTTPRouteWeight: 500 requests, each backend's share within 0.05 of its weight.
    skein_testkit::init_tracing();
    let infra = Infra::start_at(110, mesh_layout()).await;
    let keys = infra
        .apply_routes(&route(
            "mesh-weighted-backends",
            &format!(
                "{}  - backendRefs: [{{name: echo-v1, port: 8080, weight: 70}}, {{name: echo-v2, port: 8080, weight: 30}}]\n",
                echo_parent()
            ),
        ))
        .await;
    eventually(&infra, &Case::echo("/")).await.unwrap();
    let (v1, v2) = (infra.backend("echo-v1"), infra.backend("echo-v2"));
    let (v1_before, v2_before) = (v1.hits(), v2.hits());
    let to = SocketAddr::new(infra.caller(Side::Mesh).1, 15080);
    let mut sender = h1(to).await.unwrap();
    for _ in 0..500 {
        let req = Request::get("/")
            .header("host", "echo")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        skein_testkit::client::body_bytes(resp).await.unwrap();
    }
    let (n1, n2) = (v1.hits() - v1_before, v2.hits() - v2_before);
    assert_eq!(n1 + n2, 500);
    let share = n1 as f64 / 500.0;
    assert!((share - 0.70).abs() <= 0.05, "v1 {n1}, v2 {n2} of 500");
    infra.delete_routes(&keys).await;
    infra.control.shutdown().await;
}

/// An HTTPRoute of the Gateway suite in `gateway-conformance-infra`, attached to the
/// Service standing for its Gateway, with `extra` spec lines (e.g. hostnames) and `rules`.
fn groute(name: &str, extra: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA_NS}}}\nspec:\n  parentRefs: [{{name: gateway, port: 80}}]\n{extra}  rules:\n{rules}---\n"
    )
}

/// A rule: `matches` (flow YAML) to `backend` on 8080, with optional filters.
fn grule(matches: &str, backend: &str) -> String {
    format!("  - matches: {matches}\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

/// The Gateway suite's HTTPRoute tests (written for a Gateway; their facts hold for a
/// mesh), each attached to the Service standing for the Gateway.
fn gateway_tests() -> Vec<Conformance> {
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let modified = |c: Case| {
        c.header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .sees("X-Header-Add", "header-val-1")
            .sees("X-Header-Add-Append", "append-val-1,header-val-2")
            .sees("X-Header-Set", "set-overwrites-values")
            .not_sees("X-Header-Remove")
    };
    vec![
        Conformance {
            name: "HTTPExactPathMatching",
            routes: groute(
                "exact-matching",
                "",
                &(grule("[{path: {type: Exact, value: /one}}]", "infra-backend-v1")
                    + &grule("[{path: {type: Exact, value: /two}}]", "infra-backend-v2")),
            ),
            cases: vec![
                Case::gw("/one").to(I1),
                Case::gw("/two").to(I2),
                Case::gw("/").status(404),
                Case::gw("/one/example").status(404),
                Case::gw("/two/").status(404),
                Case::gw("/Two").status(404),
            ],
        },
        Conformance {
            name: "HTTPRouteHeaderMatching",
            routes: groute(
                "header-matching",
                "",
                &(grule("[{headers: [{name: version, value: one}]}]", "infra-backend-v1")
                    + &grule("[{headers: [{name: version, value: two}]}]", "infra-backend-v2")
                    + &grule("[{headers: [{name: version, value: two}, {name: color, value: orange}]}]", "infra-backend-v1")
                    + &grule("[{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]", "infra-backend-v1")
                    + &grule("[{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]", "infra-backend-v2")),
            ),
            cases: vec![
                Case::gw("/").header("Version", "one").to(I1),
                Case::gw("/").header("Version", "two").to(I2),
                Case::gw("/").header("Version", "two").header("Color", "orange").to(I1),
                Case::gw("/").header("Version", "two").header("Color", "blue").to(I2),
                Case::gw("/").header("Color", "orange").status(404),
                Case::gw("/").header("Some-Other-Header", "one").status(404),
                Case::gw("/").header("Color", "blue").to(I1),
                Case::gw("/").header("Color", "green").to(I1),
                Case::gw("/").header("Color", "red").to(I2),
                Case::gw("/").header("Color", "yellow").to(I2),
                Case::gw("/").header("Color", "purple").status(404),
            ],
        },
        Conformance {
            name: "HTTPRouteMethodMatching",
            routes: groute(
                "method-matching",
                "",
                &(grule("[{method: POST}]", "infra-backend-v1")
                    + &grule("[{method: GET}]", "infra-backend-v2")
                    + &grule("[{path: {type: PathPrefix, value: /path1}, method: GET}]", "infra-backend-v1")
                    + &grule("[{headers: [{name: version, value: one}], method: PUT}]", "infra-backend-v2")
                    + &grule("[{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}]", "infra-backend-v3")
                    + &grule("[{path: {type: PathPrefix, value: /path3}, method: PATCH}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}]", "infra-backend-v1")
                    + &grule("[{path: {type: PathPrefix, value: /path5}}]", "infra-backend-v1")
                    + &grule("[{method: PATCH}]", "infra-backend-v2")
                    + &grule("[{headers: [{name: version, value: four}]}]", "infra-backend-v3")),
            ),
            cases: vec![
                Case::gw("/").method("POST").to(I1),
                Case::gw("/").to(I2),
                Case::gw("/").method("HEAD").status(404),
                Case::gw("/path1").to(I1),
                Case::gw("/").method("PUT").header("version", "one").to(I2),
                Case::gw("/path2").method("POST").header("version", "two").to(I3),
                Case::gw("/path3").method("PATCH").to(I1),
                Case::gw("/path4").method("DELETE").header("version", "three").to(I1),
                Case::gw("/").method("PUT").status(404),
                Case::gw("/path4").method("DELETE").status(404),
                Case::gw("/path5").method("PATCH").to(I1),
                Case::gw("/").method("PATCH").header("version", "four").to(I2),
            ],
        },
        Conformance {
            name: "HTTPRouteQueryParamMatching",
            routes: groute(
                "query-param-matching",
                "",
                &(grule("[{queryParams: [{name: animal, value: whale}]}]", "infra-backend-v1")
                    + &grule("[{queryParams: [{name: animal, value: dolphin}]}]", "infra-backend-v2")
                    + &grule("[{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}, {queryParams: [{name: ANIMAL, value: Whale}]}]", "infra-backend-v3")
                    + &grule("[{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]", "infra-backend-v1")
                    + &grule("[{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]", "infra-backend-v2")
                    + &grule("[{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], queryParams: [{name: animal, value: whale}]}]", "infra-backend-v3")
                    + &grule("[{path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}]", "infra-backend-v1")
                    + &grule("[{path: {type: PathPrefix, value: /path5}}]", "infra-backend-v1")
                    + &grule("[{queryParams: [{name: animal, value: hydra}]}]", "infra-backend-v2")
                    + &grule("[{headers: [{name: version, value: four}]}]", "infra-backend-v3")),
            ),
            cases: vec![
                Case::gw("/?animal=whale").to(I1).path_seen("/?animal=whale"),
                Case::gw("/?animal=dolphin").to(I2),
                Case::gw("/?animal=dolphin&color=blue").to(I3),
                Case::gw("/?ANIMAL=Whale").to(I3),
                Case::gw("/?animal=whale&otherparam=irrelevant").to(I1),
                Case::gw("/?animal=dolphin&color=yellow").to(I2),
                Case::gw("/?color=blue").status(404),
                Case::gw("/?animal=dog").status(404),
                Case::gw("/?animal=whaledolphin").status(404),
                Case::gw("/").status(404),
                Case::gw("/path1?animal=whale").to(I1),
                Case::gw("/?animal=whale").header("version", "one").to(I2),
                Case::gw("/path2?animal=whale").header("version", "two").to(I3),
                Case::gw("/path3?animal=shark").to(I1),
                Case::gw("/path4?animal=kraken").header("version", "three").to(I1),
                Case::gw("/?animal=shark").status(404),
                Case::gw("/path4?animal=kraken").status(404),
                Case::gw("/path5?animal=hydra").to(I1),
                Case::gw("/?animal=hydra").header("version", "four").to(I3),
            ],
        },
        Conformance {
            name: "HTTPRouteMatching",
            routes: groute(
                "matching",
                "",
                &(grule("[{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]", "infra-backend-v1")
                    + &grule("[{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]", "infra-backend-v2")),
            ),
            cases: vec![
                Case::gw("/").to(I1),
                Case::gw("/example").to(I1),
                Case::gw("/").header("Version", "one").to(I1),
                Case::gw("/v2").to(I2),
                Case::gw("/v2/example").to(I2),
                Case::gw("/").header("Version", "two").to(I2),
                Case::gw("/v2/").to(I2),
                Case::gw("/v2example").to(I1),
                Case::gw("/foo/v2/example").to(I1),
            ],
        },
        Conformance {
            name: "HTTPRouteMatchingAcrossRoutes",
            routes: groute(
                "matching-part1",
                "  hostnames: [example.com, example.net]\n",
                &grule("[{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]", "infra-backend-v1"),
            ) + &groute(
                "matching-part2",
                "  hostnames: [example.com]\n",
                &grule("[{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]", "infra-backend-v2"),
            ),
            cases: vec![
                Case::gw("/").host("example.com").to(I1),
                Case::gw("/example").host("example.com").to(I1),
                Case::gw("/example").host("example.net").to(I1),
                Case::gw("/example").host("example.com").header("Version", "one").to(I1),
                Case::gw("/v2").host("example.com").to(I2),
                Case::gw("/v2").host("example.net").to(I1),
                Case::gw("/v2/example").host("example.com").to(I2),
                Case::gw("/").host("example.com").header("Version", "two").to(I2),
            ],
        },
        Conformance {
            name: "HTTPRoutePathMatchOrder",
            routes: groute(
                "path-matching-order",
                "",
                &(grule("[{path: {type: Exact, value: /match}}]", "infra-backend-v1")
                    + &grule("[{path: {type: Exact, value: /match/exact}}]", "infra-backend-v2")
                    + &grule("[{path: {type: Exact, value: /match/exact/one}}]", "infra-backend-v3")
                    + &grule("[{path: {type: PathPrefix, value: /match/}}]", "infra-backend-v3")
                    + &grule("[{path: {type: PathPrefix, value: /match/prefix/}}]", "infra-backend-v1")
                    + &grule("[{path: {type: PathPrefix, value: /match/prefix/one}}]", "infra-backend-v2")),
            ),
            cases: vec![
                Case::gw("/match/exact/one").to(I3),
                Case::gw("/match/exact").to(I2),
                Case::gw("/match").to(I1),
                Case::gw("/match/prefix/one/any").to(I2),
                Case::gw("/match/prefix/any").to(I1),
                Case::gw("/match/any").to(I3),
            ],
        },
        Conformance {
            name: "HTTPRouteInvalidBackendRefUnknownKind",
            routes: groute(
                "invalid-backend-ref-unknown-kind",
                "",
                "  - backendRefs: [{group: unknownkind.example.com, kind: NonExistent, name: infra-backend-v1, port: 8080}]\n",
            ),
            cases: vec![Case::gw("/v2").status(500)],
        },
        Conformance {
            name: "HTTPRouteInvalidNonExistentBackendRef",
            routes: groute(
                "invalid-nonexistent-backend-ref",
                "",
                &format!("  - backendRefs: [{{name: nonexistent, namespace: {INFRA_NS}, port: 8080}}]\n"),
            ),
            cases: vec![Case::gw("/").status(500)],
        },
        Conformance {
            name: "HTTPRouteInvalidCrossNamespaceBackendRef",
            routes: groute(
                "invalid-cross-namespace-backend-ref",
                "",
                &format!("  - backendRefs: [{{name: web-backend, namespace: {WEB_NS}, port: 8080}}]\n"),
            ),
            cases: vec![Case::gw("/").status(500)],
        },
        Conformance {
            name: "HTTPRouteAllBackendsWeightZero",
            routes: groute(
                "all-backends-weight-zero",
                "",
                "  - backendRefs: [{name: infra-backend-v1, port: 8080, weight: 0}, {name: infra-backend-v2, port: 8080, weight: 0}]\n",
            ),
            cases: vec![Case::gw("/").status(500)],
        },
        Conformance {
            name: "HTTPRouteRequestHeaderModifier",
            routes: groute(
                "request-header-modifier",
                "",
                &[
                    ("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
                    ("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
                    ("/remove", "{remove: [X-Header-Remove]}"),
                ]
                .iter()
                .map(|(prefix, m)| {
                    format!(
                        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {m}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
                    )
                })
                .collect::<String>(),
            ),
            cases: vec![
                Case::gw("/set")
                    .header("Some-Other-Header", "val")
                    .header("X-Header-Set", "some-other-value")
                    .to(I1)
                    .sees("Some-Other-Header", "val")
                    .sees("X-Header-Set", "set-overwrites-values"),
                Case::gw("/add")
                    .header("Some-Other-Header", "val")
                    .header("X-Header-Add", "some-other-value")
                    .to(I1)
                    .sees("X-Header-Add", "some-other-value,add-appends-values"),
                Case::gw("/remove")
                    .header("X-Header-Remove", "val")
                    .to(I1)
                    .not_sees("X-Header-Remove"),
            ],
        },
        Conformance {
            name: "HTTPRouteRewritePath",
            routes: groute(
                "rewrite-path",
                "",
                &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: /prefix/one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /strip-prefix}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /full/one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /one}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /test}}}}}}, {modify}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
                ),
            ),
            cases: vec![
                Case::gw("/prefix/one/two").to(I1).path_seen("/one/two"),
                Case::gw("/strip-prefix/three").to(I1).path_seen("/three"),
                Case::gw("/strip-prefix").to(I1).path_seen("/"),
                Case::gw("/full/one/two").to(I1).path_seen("/one"),
                modified(Case::gw("/full/rewrite-path-and-modify-headers/test"))
                    .header("X-Header-Set", "set-val")
                    .to(I1)
                    .path_seen("/test"),
            ],
        },
        Conformance {
            name: "HTTPRouteRewriteHost",
            routes: groute(
                "rewrite-host",
                "  hostnames: [rewrite.example]\n",
                &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: /one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{hostname: one.example.org}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
                     \x20 - filters: [{{type: URLRewrite, urlRewrite: {{hostname: example.org}}}}]\n    backendRefs: [{{name: infra-backend-v2, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /rewrite-host-and-modify-headers}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{hostname: test.example.org}}}}, {modify}]\n    backendRefs: [{{name: infra-backend-v2, port: 8080}}]\n"
                ),
            ),
            cases: vec![
                Case::gw("/one")
                    .host("rewrite.example")
                    .to(I1)
                    .host_seen("one.example.org")
                    .path_seen("/one"),
                Case::gw("/two")
                    .host("rewrite.example")
                    .to(I2)
                    .host_seen("example.org")
                    .path_seen("/two"),
                modified(Case::gw("/rewrite-host-and-modify-headers").host("rewrite.example"))
                    .to(I2)
                    .host_seen("test.example.org"),
            ],
        },
        Conformance {
            name: "HTTPRouteRequestMirror",
            routes: groute(
                "request-mirror",
                "",
                &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, namespace: {INFRA_NS}, port: 8080}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, namespace: {INFRA_NS}, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /mirror-and-modify-headers}}}}]\n    filters: [{modify}, {{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, namespace: {INFRA_NS}, port: 8080}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, namespace: {INFRA_NS}, port: 8080}}]\n"
                ),
            ),
            cases: vec![
                Case::gw("/mirror")
                    .to(I1)
                    .path_seen("/mirror")
                    .mirrored_to("infra-backend-v2"),
                modified(Case::gw("/mirror-and-modify-headers"))
                    .to(I1)
                    .mirrored_to("infra-backend-v2"),
            ],
        },
        Conformance {
            name: "HTTPRouteRequestMultipleMirrors",
            routes: groute(
                "request-multiple-mirrors",
                "",
                &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: /multi-mirror}}}}]\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, port: 8080}}}}}}, {{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v3, port: 8080}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
                     \x20 - matches: [{{path: {{type: PathPrefix, value: /multi-mirror-and-modify-request-headers}}}}]\n    filters: [{modify}, {{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, port: 8080}}}}}}, {{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v3, port: 8080}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
                ),
            ),
            cases: vec![
                Case::gw("/multi-mirror")
                    .to(I1)
                    .mirrored_to("infra-backend-v2")
                    .mirrored_to("infra-backend-v3"),
                modified(Case::gw("/multi-mirror-and-modify-request-headers"))
                    .to(I1)
                    .mirrored_to("infra-backend-v2")
                    .mirrored_to("infra-backend-v3"),
            ],
        },
        Conformance {
            name: "HTTPRouteNamedRule",
            routes: groute(
                "http-named-rules",
                "",
                "  - name: named-rule\n    matches: [{path: {type: PathPrefix, value: /named}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /unnamed}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
            ),
            cases: vec![Case::gw("/named").to(I1), Case::gw("/unnamed").to(I2)],
        },
        Conformance {
            name: "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant",
            routes: format!(
                "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: invalid-reference-grant, namespace: {APP_NS}}}\n\
                 spec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA_NS}}}]\n  to: [{{group: '', kind: Service, name: app-backend-v1}}]\n---\n"
            ) + &groute(
                "invalid-reference-grant",
                "",
                &format!(
                    "  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    backendRefs: [{{name: app-backend-v2, namespace: {APP_NS}, port: 8080}}]\n  - backendRefs: [{{name: app-backend-v1, namespace: {APP_NS}, port: 8080}}]\n"
                ),
            ),
            cases: vec![
                Case::gw("/v2").status(500),
                Case::gw("/").to(Backend::Named("app-backend-v1")),
            ],
        },
        Conformance {
            name: "HTTPRouteReferenceGrant",
            routes: format!(
                "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: reference-grant, namespace: {WEB_NS}}}\n\
                 spec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA_NS}}}]\n  to: [{{group: '', kind: Service, name: web-backend}}]\n---\n"
            ) + &groute(
                "reference-grant",
                "",
                &format!("  - backendRefs: [{{name: web-backend, namespace: {WEB_NS}, port: 8080}}]\n"),
            ),
            cases: vec![Case::gw("/").to(Backend::Named("web-backend"))],
        },
        Conformance {
            name: "HTTPRouteResponseHeaderModifier",
            routes: groute(
                "response-header-modifier",
                "",
                &[
                    ("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
                    ("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
                    ("/remove", "{remove: [X-Header-Remove]}"),
                    (
                        "/multiple",
                        "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], \
                         add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], \
                         remove: [X-Header-Remove-1, X-Header-Remove-2]}",
                    ),
                    (
                        "/case-insensitivity",
                        "{set: [{name: X-Header-Set, value: header-set}], \
                         add: [{name: X-Header-Add, value: header-add}, {name: x-lowercase-add, value: lowercase-add}, {name: x-Mixedcase-ADD-1, value: mixedcase-add-1}, {name: X-mixeDcase-add-2, value: mixedcase-add-2}, {name: X-UPPERCASE-ADD, value: uppercase-add}], \
                         remove: [X-Header-Remove]}",
                    ),
                ]
                .iter()
                .map(|(prefix, m)| {
                    format!(
                        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {m}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
                    )
                })
                .collect::<String>(),
            ),
            cases: vec![
                Case::gw("/set")
                    .header("X-Echo-Set-Header", "Some-Other-Header:val")
                    .to(I1)
                    .answers("Some-Other-Header", "val")
                    .answers("X-Header-Set", "set-overwrites-values"),
                Case::gw("/set")
                    .header("X-Echo-Set-Header", "Some-Other-Header:val,X-Header-Set:some-other-value")
                    .to(I1)
                    .answers("Some-Other-Header", "val")
                    .answers("X-Header-Set", "set-overwrites-values"),
                Case::gw("/add")
                    .header("X-Echo-Set-Header", "Some-Other-Header:val")
                    .to(I1)
                    .answers("Some-Other-Header", "val")
                    .answers("X-Header-Add", "add-appends-values"),
                Case::gw("/add")
                    .header("X-Echo-Set-Header", "Some-Other-Header:val,X-Header-Add:some-other-value")
                    .to(I1)
                    .answers("Some-Other-Header", "val")
                    .answers("X-Header-Add", "some-other-value,add-appends-values"),
                Case::gw("/remove")
                    .header("X-Echo-Set-Header", "X-Header-Remove:val")
                    .to(I1)
                    .not_answers("X-Header-Remove"),
                Case::gw("/multiple")
                    .header(
                        "X-Echo-Set-Header",
                        "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,X-Header-Remove-2:remove-val-2,Another-Header:another-header-val,X-Header-Remove-1:val",
                    )
                    .to(I1)
                    .answers("X-Header-Set-1", "header-set-1")
                    .answers("X-Header-Set-2", "header-set-2")
                    .answers("X-Header-Add-1", "header-add-1")
                    .answers("X-Header-Add-2", "add-val-2,header-add-2")
                    .answers("X-Header-Add-3", "header-add-3")
                    .answers("Another-Header", "another-header-val")
                    .not_answers("X-Header-Remove-1")
                    .not_answers("X-Header-Remove-2"),
                Case::gw("/case-insensitivity")
                    .header(
                        "X-Echo-Set-Header",
                        "x-header-set:original-val-set,x-header-add:original-val-add,x-header-remove:original-val-remove,Another-Header:another-header-val",
                    )
                    .to(I1)
                    .answers("X-Header-Set", "header-set")
                    .answers("X-Header-Add", "original-val-add,header-add")
                    .answers("X-Lowercase-Add", "lowercase-add")
                    .answers("X-Mixedcase-Add-1", "mixedcase-add-1")
                    .answers("X-Mixedcase-Add-2", "mixedcase-add-2")
                    .answers("X-Uppercase-Add", "uppercase-add")
                    .answers("Another-Header", "another-header-val")
                    .not_answers("X-Header-Remove"),
            ],
        },
        Conformance {
            name: "HTTPRouteTimeoutRequest",
            routes: groute(
                "request-timeout",
                "",
                "  - matches: [{path: {type: PathPrefix, value: /request-timeout}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n    timeouts: {request: 500ms}\n\
                 \x20 - matches: [{path: {type: PathPrefix, value: /disable-request-timeout}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n    timeouts: {request: 0s}\n",
            ),
            cases: vec![
                Case::gw("/request-timeout").to(I1),
                Case::gw("/request-timeout?delay=1s").status(504).to(I1),
                Case::gw("/disable-request-timeout?delay=1s").to(I1),
            ],
        },
        Conformance {
            name: "HTTPRouteTimeoutBackendRequest",
            routes: groute(
                "backend-request-timeout",
                "",
                "  - matches: [{path: {type: PathPrefix, value: /backend-timeout}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n    timeouts: {backendRequest: 500ms}\n\
                 \x20 - matches: [{path: {type: PathPrefix, value: /disable-backend-timeout}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n    timeouts: {backendRequest: 0s}\n",
            ),
            cases: vec![
                Case::gw("/backend-timeout").to(I1),
                Case::gw("/backend-timeout?delay=1s").status(504).to(I1),
                Case::gw("/disable-backend-timeout?delay=1s").to(I1),
            ],
        },
        Conformance {
            name: "HTTPRouteRetry",
            routes: groute(
                "retries",
                "",
                "  - matches: [{path: {type: PathPrefix, value: /retry/code-500-attempts-3}}]\n    retry: {codes: [500], attempts: 3}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n\
                 \x20 - matches: [{path: {type: PathPrefix, value: /retry/code-all-attempts-2}}]\n    retry: {codes: [500, 502, 503, 504], attempts: 2}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n",
            ),
            cases: vec![
                Case::gw("/retry/code-500-attempts-3?responseCode=500&succeedAfter=2&uuid={uuid}").to(I3),
                Case::gw("/retry/code-500-attempts-3?responseCode=500&succeedAfter=4&uuid={uuid}").status(500).to(I3),
                Case::gw("/retry/code-500-attempts-3?responseCode=503&succeedAfter=2&uuid={uuid}").status(503).to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=500&succeedAfter=1&uuid={uuid}").to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=500&succeedAfter=3&uuid={uuid}").status(500).to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=502&succeedAfter=1&uuid={uuid}").to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=502&succeedAfter=3&uuid={uuid}").status(502).to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=503&succeedAfter=1&uuid={uuid}").to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=503&succeedAfter=3&uuid={uuid}").status(503).to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=504&succeedAfter=1&uuid={uuid}").to(I3),
                Case::gw("/retry/code-all-attempts-2?responseCode=504&succeedAfter=3&uuid={uuid}").status(504).to(I3),
            ],
        },
        Conformance {
            name: "HTTPRouteRetryWithTimeouts",
            routes: groute(
                "retries-with-timeouts",
                "",
                "  - matches: [{path: {type: PathPrefix, value: /retry/backend-request-timeout-200ms}}]\n    retry: {attempts: 2}\n    timeouts: {backendRequest: 200ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n\
                 \x20 - matches: [{path: {type: PathPrefix, value: /retry/request-timeout-200ms}}]\n    retry: {codes: [500], attempts: 5}\n    timeouts: {backendRequest: 200ms, request: 400ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n",
            ),
            cases: vec![
                Case::gw("/retry/backend-request-timeout-200ms?responseCode=500&succeedAfter=2&delayRetry=300ms&uuid={uuid}").to(I3),
                Case::gw("/retry/backend-request-timeout-200ms?responseCode=500&succeedAfter=3&delayRetry=300ms&uuid={uuid}").status(504).to(I3),
                Case::gw("/retry/request-timeout-200ms?responseCode=500&succeedAfter=1&uuid={uuid}").to(I3),
                Case::gw("/retry/request-timeout-200ms?responseCode=500&succeedAfter=4&delayRetry=100ms&uuid={uuid}").status(504).to(I3),
            ],
        },
    ]
}

#[tokio::test]
async fn the_gateway_api_httproute_conformance_cases_pass() {
    skein_testkit::init_tracing();
    let infra = Infra::start_at(120, gateway_layout()).await;
    let (passed, failures) = run(&infra, gateway_tests()).await;
    eprintln!(
        "{passed} HTTPRoute conformance cases passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    infra.control.shutdown().await;
}

#[tokio::test]
async fn the_gateway_api_percentage_mirror_case_copies_its_share() {
    // HTTPRouteRequestPercentageMirror: 500 requests per path; the copies reaching the
    // mirror within 15 % (relative) of 500 × its share.
    skein_testkit::init_tracing();
    let infra = Infra::start_at(130, gateway_layout()).await;
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let mirror = |share: &str| {
        format!("{{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, port: 8080}}, {share}}}}}")
    };
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /percent-mirror}}}}]\n    filters: [{}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /percent-mirror-fraction}}}}]\n    filters: [{}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /percent-mirror-and-modify-headers}}}}]\n    filters: [{modify}, {}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n",
        mirror("percent: 20"),
        mirror("fraction: {numerator: 25, denominator: 50}"),
        mirror("percent: 35"),
    );
    let keys = infra
        .apply_routes(&groute("request-percentage-mirror", "", &rules))
        .await;
    let (v1, v2) = (
        infra.backend("infra-backend-v1"),
        infra.backend("infra-backend-v2"),
    );
    let to = SocketAddr::new(infra.caller(Side::Mesh).1, 15080);
    for (path, share) in [
        ("/percent-mirror", 0.20),
        ("/percent-mirror-fraction", 0.50),
        ("/percent-mirror-and-modify-headers", 0.35),
    ] {
        eventually(&infra, &Case::gw(path).to(I1)).await.unwrap();
        // Copies of the probes may still be arriving.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (sent_before, copies_before) = (v1.hits(), v2.hits());
        let mut sender = h1(to).await.unwrap();
        for _ in 0..500 {
            let req = Request::get(path)
                .header("host", "gateway")
                .header("X-Header-Remove", "remove-val")
                .body(empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            skein_testkit::client::body_bytes(resp).await.unwrap();
        }
        assert_eq!(v1.hits() - sent_before, 500);
        // Let the last copies land.
        let mut copies = v2.hits() - copies_before;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = v2.hits() - copies_before;
            if now == copies {
                break;
            }
            copies = now;
        }
        let expected = 500.0 * share;
        let off = (copies as f64 - expected).abs() / expected;
        assert!(
            off <= 0.15,
            "{path}: {copies} copies of 500, expected {expected} ± 15 %"
        );
    }
    infra.delete_routes(&keys).await;
    infra.control.shutdown().await;
}
