//! The Gateway API's mesh conformance cases (`conformance/tests/mesh/` of
//! kubernetes-sigs/gateway-api), translated into our own suite: the same Services, the
//! same HTTPRoutes and the same requests with the same expected outcomes, against a live
//! Skein mesh (a control plane, the echo backends behind their own proxies with mutual
//! TLS, callers' proxies in the mesh namespace and in a consumer namespace).
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
//! Every address is in 127.0.5.100–104 and 127.0.5.110–114.

mod live;

use http::{HeaderMap, Request, StatusCode};
use live::*;
use skein_control::server::RunningControl;
use skein_model::{Protocol, ProxyConfig};
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

/// Upstream listener port of each Service port on a caller's proxy.
const LISTENERS: [(&str, u16, u16); 6] = [
    ("echo", 80, 15080),
    ("echo", 8080, 15081),
    ("echo-v1", 80, 15082),
    ("echo-v1", 8080, 15083),
    ("echo-v2", 80, 15084),
    ("echo-v2", 8080, 15085),
];

/// The mesh the cases run in.
struct Infra {
    control: RunningControl,
    v1: HttpBackend,
    v2: HttpBackend,
    mesh: RunningProxy,
    consumer: RunningProxy,
    /// The callers' addresses.
    mesh_ip: std::net::IpAddr,
    consumer_ip: std::net::IpAddr,
    _proxies: Vec<RunningProxy>,
    _dir: skein_testkit::control::TempDir,
}

/// Which backend a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    V1,
    V2,
    /// Either (no route decides).
    Any,
    /// None: the mesh answers itself (a redirect, a 404).
    Nobody,
}

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
}

impl Case {
    /// `GET path` to `service:port` from the mesh namespace, expecting 200 from anyone.
    fn get(service: &'static str, port: u16, path: &'static str) -> Case {
        Case {
            from: Side::Mesh,
            service,
            port,
            host: None,
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
        }
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
    use Backend::*;
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

/// The Services of the conformance mesh: `echo` over both versions, `echo-v1`, `echo-v2`,
/// each with ports 80 and 8080 to the application's 8080.
fn services_yaml() -> String {
    [
        ("echo", "{app: echo}"),
        ("echo-v1", "{app: echo, version: v1}"),
        ("echo-v2", "{app: echo, version: v2}"),
    ]
    .iter()
    .map(|(name, selector)| {
        format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\n\
             spec: {{selector: {selector}, serviceAccounts: [echo], ports: [{{port: 80, targetPort: {APP}, protocol: http}}, {{port: 8080, targetPort: {APP}, protocol: http}}]}}\n---\n"
        )
    })
    .collect()
}

/// An echo backend of `version` on 127.0.5.`host` behind its own proxy, a workload of
/// account `echo` labelled `app: echo, version: VERSION`.
async fn echo(control: &RunningControl, host: u8, version: &str) -> (HttpBackend, RunningProxy) {
    let backend = HttpBackend::start(SocketAddr::new(ip(host), APP))
        .await
        .unwrap();
    let mut spec = skein_testkit::MeshSpec::new(1, 1);
    (spec.client_ip, spec.server_ip) = (ip(host), ip(host));
    let mut config = spec
        .service("echo", backend.addr(), Protocol::Http)
        .server_config();
    config.workload.labels.insert("app".into(), "echo".into());
    config
        .workload
        .labels
        .insert("version".into(), version.into());
    config.workload.name = format!("echo-{version}");
    config.workload.service = "echo".into();
    config.workload.namespace = NS.into();
    config.inbound.listen = SocketAddr::new(ip(host), 4143);
    let advertise = config.inbound.listen;
    let proxy =
        RunningProxy::start_with_control(config, control_for(control, advertise, NS, "echo").await)
            .await
            .unwrap();
    (backend, proxy)
}

/// A caller's proxy on 127.0.5.`host` in `namespace`, with an upstream listener for each
/// of [`LISTENERS`] (named `service.gateway-conformance-mesh`), returned once it knows
/// every Service's endpoints.
async fn client(control: &RunningControl, host: u8, namespace: &str) -> RunningProxy {
    let mut spec = skein_testkit::MeshSpec::new(1, 1);
    (spec.client_ip, spec.server_ip) = (ip(host), ip(host));
    let advertise = SocketAddr::new(ip(host), 4143);
    let mut config: ProxyConfig = spec.client_config(advertise);
    config.destinations.clear();
    config.inbound.listen = advertise;
    config.workload.namespace = namespace.into();
    config.workload.name = format!("client-{host}");
    config.outbound.upstreams = LISTENERS
        .iter()
        .map(|(service, port, listen)| skein_model::Upstream {
            listen: SocketAddr::new(ip(host), *listen),
            service: format!("{service}.{NS}"),
            port: *port,
        })
        .collect();
    let service = config.workload.service.clone();
    let proxy = RunningProxy::start_with_control(
        config,
        control_for(control, advertise, namespace, &service).await,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cfg = proxy.ctx.config();
        let known = |name: &str, n: usize| {
            cfg.destinations
                .iter()
                .any(|d| d.service == name && d.endpoints.len() >= n)
        };
        if known("echo", 2) && known("echo-v1", 1) && known("echo-v2", 1) {
            return proxy;
        }
        assert!(
            Instant::now() < deadline,
            "the client in {namespace} never learned the echo Services"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Infra {
    /// The mesh on 127.0.5.`base` (control plane) to `base + 4` (the consumer's caller).
    async fn start_at(base: u8) -> Infra {
        let (control, dir) = control_at(base).await;
        apply(&control, &services_yaml()).await;
        let (v1, p1) = echo(&control, base + 1, "v1").await;
        let (v2, p2) = echo(&control, base + 2, "v2").await;
        let mesh = client(&control, base + 3, NS).await;
        let consumer = client(&control, base + 4, CONSUMER_NS).await;
        Infra {
            control,
            v1,
            v2,
            mesh,
            consumer,
            mesh_ip: ip(base + 3),
            consumer_ip: ip(base + 4),
            _proxies: vec![p1, p2],
            _dir: dir,
        }
    }

    fn caller(&self, from: Side) -> &RunningProxy {
        match from {
            Side::Mesh => &self.mesh,
            Side::Consumer => &self.consumer,
        }
    }

    /// The route names (`namespace/name`) each caller holds.
    fn held(&self, from: Side) -> Vec<String> {
        let cfg = self.caller(from).ctx.config();
        cfg.destinations
            .iter()
            .flat_map(|d| d.routes.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// Applies `routes` and waits until a caller holds each of them; returns their keys.
    async fn apply_routes(&self, routes: &str) -> Vec<skein_model::resource::ResourceKey> {
        if routes.is_empty() {
            return Vec::new();
        }
        let docs = skein_model::resource::parse_documents(routes, "conformance").unwrap();
        let keys: Vec<_> = docs.iter().map(|d| d.key()).collect();
        self.control.registry.apply(docs).await.unwrap();
        let names: Vec<String> = keys
            .iter()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !names
            .iter()
            .all(|n| self.held(Side::Mesh).contains(n) || self.held(Side::Consumer).contains(n))
        {
            assert!(Instant::now() < deadline, "routes {names:?} never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        keys
    }

    /// Deletes `keys` and waits until no caller holds them.
    async fn delete_routes(&self, keys: &[skein_model::resource::ResourceKey]) {
        for k in keys {
            self.control.registry.delete(k).await.unwrap();
        }
        let names: Vec<String> = keys
            .iter()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while names
            .iter()
            .any(|n| self.held(Side::Mesh).contains(n) || self.held(Side::Consumer).contains(n))
        {
            assert!(Instant::now() < deadline, "routes {names:?} never went");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `case`'s request once; `Err` says what differed.
    async fn check(&self, case: &Case) -> Result<(), String> {
        let listen = LISTENERS
            .iter()
            .find(|(s, p, _)| *s == case.service && *p == case.port)
            .map(|(_, _, l)| *l)
            .unwrap();
        let caller_ip = match case.from {
            Side::Mesh => self.mesh_ip,
            Side::Consumer => self.consumer_ip,
        };
        let to = SocketAddr::new(caller_ip, listen);
        let host = case.host.map(str::to_string).unwrap_or_else(|| {
            if case.port == 80 {
                case.service.to_string()
            } else {
                format!("{}:{}", case.service, case.port)
            }
        });
        let (v1_before, v2_before) = (self.v1.hits(), self.v2.hits());
        let mut sender = h1(to).await.map_err(|e| format!("connect: {e}"))?;
        let mut req = Request::get(case.path).header("host", host);
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
        let answered = match (self.v1.hits() - v1_before, self.v2.hits() - v2_before) {
            (1, 0) => Some((Backend::V1, &self.v1)),
            (0, 1) => Some((Backend::V2, &self.v2)),
            (0, 0) => None,
            other => return Err(format!("requests reached (v1, v2) {other:?}")),
        };
        match (case.backend, answered) {
            (Backend::Nobody, None) | (Backend::Any, Some(_)) => {}
            (want, Some((got, _))) if want == got => {}
            (want, got) => {
                return Err(format!(
                    "answered by {:?}, expected {want:?}",
                    got.map(|(b, _)| b)
                ))
            }
        }
        response_headers(case, &headers)?;
        if let Some((_, backend)) = answered {
            let seen = backend.seen().pop().ok_or("nothing recorded")?;
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
        }
        Ok(())
    }
}

/// The response headers and `Location` a case expects.
fn response_headers(case: &Case, headers: &HeaderMap) -> Result<(), String> {
    for (name, want) in &case.answered {
        let got = headers.get(*name).and_then(|v| v.to_str().ok());
        if got != Some(*want) {
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

#[tokio::test]
async fn the_gateway_api_mesh_conformance_cases_pass() {
    skein_testkit::init_tracing();
    let infra = Infra::start_at(100).await;
    let mut failures = Vec::new();
    let mut passed = 0;
    for test in tests() {
        let keys = infra.apply_routes(&test.routes).await;
        for (i, case) in test.cases.iter().enumerate() {
            match eventually(&infra, case).await {
                Ok(()) => passed += 1,
                Err(why) => failures.push(format!(
                    "{} case {i} ({} {}:{}{}): {why}",
                    test.name,
                    if case.from == Side::Consumer {
                        "consumer"
                    } else {
                        "mesh"
                    },
                    case.service,
                    case.port,
                    case.path
                )),
            }
        }
        infra.delete_routes(&keys).await;
    }
    eprintln!(
        "{passed} conformance cases passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    infra.control.shutdown().await;
}

#[tokio::test]
async fn the_gateway_api_mesh_weight_case_splits_seventy_thirty() {
    // MeshHTTPRouteWeight: 500 requests, each backend's share within 0.05 of its weight.
    skein_testkit::init_tracing();
    let infra = Infra::start_at(110).await;
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
    let (v1_before, v2_before) = (infra.v1.hits(), infra.v2.hits());
    let to = SocketAddr::new(infra.mesh_ip, 15080);
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
    let (v1, v2) = (infra.v1.hits() - v1_before, infra.v2.hits() - v2_before);
    assert_eq!(v1 + v2, 500);
    let share = v1 as f64 / 500.0;
    assert!((share - 0.70).abs() <= 0.05, "v1 {v1}, v2 {v2} of 500");
    infra.delete_routes(&keys).await;
    infra.control.shutdown().await;
}
