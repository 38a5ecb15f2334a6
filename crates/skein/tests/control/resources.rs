//! The CLI against a `skein control` process: apply / get / delete for every kind,
//! validation refusals, and the admin token.

use crate::{json, row, start_control, write, BIN};
use skein_testkit::control::{skein_cli, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One kind's round trip: a first version, a changed one, and what `get` must show.
struct Case {
    /// The word given to `get` / `delete` (aliases vary on purpose).
    word: &'static str,
    kind: &'static str,
    name: &'static str,
    v1: &'static str,
    v2: &'static str,
    /// Lines `get -o yaml` shows although v1 does not write them (defaults).
    defaults: &'static [&'static str],
    /// Table cells of the resource's row (by header).
    cells: &'static [(&'static str, &'static str)],
    /// The JSON path and value that show v2 is in force.
    changed: (&'static str, &'static str),
}

const CASES: &[Case] = &[
    Case {
        word: "mesh",
        kind: "Mesh",
        name: "default",
        v1: "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {trustDomain: example.org}\n",
        v2: "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {trustDomain: example.org, mtls: permissive}\n",
        defaults: &["mtls: strict", "defaultPolicy: allow", "workloadCertTTL: 1h"],
        cells: &[("NAME", "default")],
        changed: ("/spec/mtls", "permissive"),
    },
    Case {
        word: "services",
        kind: "Service",
        name: "web",
        v1: "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080}]\n",
        v2: "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080, protocol: http}]\n",
        defaults: &["targetPort: 8080", "protocol: detect", "namespace: default"],
        cells: &[
            ("NAMESPACE", "default"),
            ("PORTS", "8080/detect"),
            ("SELECTOR", "app=web"),
            ("ACCOUNTS", "web"),
        ],
        changed: ("/spec/ports/0/protocol", "http"),
    },
    Case {
        word: "wl",
        kind: "Workload",
        name: "web-1",
        v1: "apiVersion: skein.dev/v1alpha1\nkind: Workload\nmetadata: {name: web-1, labels: {app: web}}\nspec: {address: 127.0.0.120, ports: [8080]}\n",
        v2: "apiVersion: skein.dev/v1alpha1\nkind: Workload\nmetadata: {name: web-1, labels: {app: web}}\nspec: {address: 127.0.0.120, serviceAccount: web}\n",
        defaults: &["serviceAccount: default", "inboundPort: 4143"],
        cells: &[
            ("NAMESPACE", "default"),
            ("ADDRESS", "127.0.0.120:4143"),
            ("ACCOUNT", "default"),
            ("CONNECTED", "false"),
        ],
        changed: ("/spec/serviceAccount", "web"),
    },
    Case {
        word: "routes",
        kind: "HTTPRoute",
        name: "web",
        v1: "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: web}]}]\n",
        v2: "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: web}], timeouts: {request: 5s}}]\n",
        defaults: &["weight: 1", "type: PathPrefix", "value: /", "kind: Service"],
        cells: &[("NAMESPACE", "default"), ("PARENTS", "web"), ("RULES", "1")],
        changed: ("/spec/rules/0/timeouts/request", "5s"),
    },
    Case {
        word: "authz",
        kind: "AuthorizationPolicy",
        name: "web",
        v1: "apiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: web}\nspec:\n  targetRef: {name: web}\n  rules: [{from: [{service: frontend}]}]\n",
        v2: "apiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: web}\nspec:\n  targetRef: {name: web}\n  action: deny\n  rules: [{from: [{service: frontend}]}]\n",
        defaults: &["action: allow", "kind: Service"],
        cells: &[("NAMESPACE", "default")],
        changed: ("/spec/action", "deny"),
    },
    Case {
        word: "backendpolicy",
        kind: "BackendPolicy",
        name: "web",
        v1: "apiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: web}\nspec: {targetRef: {name: web}}\n",
        v2: "apiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: web}\nspec: {targetRef: {name: web}, loadBalancer: round-robin}\n",
        defaults: &[
            "loadBalancer: ewma",
            "maxConnections: 1024",
            "consecutive5xx: 5",
            "ratio: 0.2",
        ],
        cells: &[("NAMESPACE", "default")],
        changed: ("/spec/loadBalancer", "round-robin"),
    },
    Case {
        word: "fault",
        kind: "FaultInjection",
        name: "chaos",
        v1: "apiVersion: skein.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: chaos}\nspec: {delay: {percent: 5, fixedDelay: 100ms}}\n",
        v2: "apiVersion: skein.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: chaos}\nspec: {delay: {percent: 5, fixedDelay: 200ms}}\n",
        defaults: &["fixedDelay: 100ms"],
        cells: &[("NAMESPACE", "default")],
        changed: ("/spec/delay/fixedDelay", "200ms"),
    },
];

#[tokio::test]
async fn apply_get_delete_round_trip_for_every_kind() {
    skein_testkit::init_tracing();
    let (data, files) = (
        TempDir::new("ctl-data").unwrap(),
        TempDir::new("ctl-files").unwrap(),
    );
    let cp = start_control(120, data.path(), &[]).await;
    // The process runs on jemalloc as built (crates/skein/src/allocator.rs): its one
    // background thread, which hands freed memory back, is there.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", cp.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    assert_eq!(
        threads.iter().filter(|t| *t == "jemalloc_bg_thd").count(),
        1,
        "one jemalloc background thread: {threads:?}"
    );

    for c in CASES {
        let lower = c.kind.to_lowercase();
        let id = format!("{lower}/{}", c.name);
        let v1 = write(&files, &format!("{lower}-v1.yaml"), c.v1);
        let v1 = v1.to_str().unwrap();

        // created, then unchanged. Each case is deleted before the next, so the route's
        // Service is gone by then: apply says so, and what happens meanwhile.
        let out = cp.cli(&["apply", "-f", v1]).await;
        assert_eq!(out.ok(), format!("{id} created\n"), "{}", c.kind);
        let dangling = "warning: HTTPRoute/default/web: parentRefs names Service/default/web, which does not exist: the route applies once it does";
        if c.kind == "HTTPRoute" {
            assert!(out.stderr.contains(dangling), "{}", out.stderr);
        } else {
            assert!(
                !out.stderr.contains("warning"),
                "{}: {}",
                c.kind,
                out.stderr
            );
        }
        let out = cp.cli(&["apply", "-f", v1]).await;
        assert_eq!(out.ok(), format!("{id} unchanged\n"), "{}", c.kind);

        // Listed in a table.
        let out = cp.cli(&["get", c.word]).await;
        let listed = row(out.ok(), c.name).unwrap_or_else(|| {
            panic!("{} not listed by `get {}`:\n{}", c.name, c.word, out.stdout)
        });
        for (header, cell) in c.cells {
            assert_eq!(
                listed.get(*header).map(String::as_str),
                Some(*cell),
                "{}: {header} in\n{}",
                c.kind,
                out.stdout
            );
        }
        if c.kind == "Mesh" {
            assert!(
                !listed.contains_key("NAMESPACE"),
                "Mesh is cluster-scoped:\n{}",
                out.stdout
            );
        }

        // One resource as YAML shows the defaults.
        let out = cp.cli(&["get", c.word, c.name, "-o", "yaml"]).await;
        let yaml = out.ok();
        assert!(yaml.contains(&format!("kind: {}\n", c.kind)), "{yaml}");
        assert!(yaml.contains("generation: 1\n"), "{yaml}");
        for default in c.defaults {
            assert!(
                yaml.contains(default),
                "{}: default {default:?} not shown in\n{yaml}",
                c.kind
            );
        }

        // …and as JSON.
        let first = json(cp.cli(&["get", c.word, c.name, "-o", "json"]).await.ok());
        assert_eq!(first["kind"], c.kind);
        assert_eq!(first["metadata"]["name"], c.name);
        assert_eq!(first["metadata"]["generation"], 1);
        let version: u64 = first["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            first["metadata"]["creationTimestamp"].is_string(),
            "{first}"
        );
        let list = json(cp.cli(&["get", c.word, "-o", "json"]).await.ok());
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list["items"][0], first);

        // A change is `configured`: new generation and version, same creation time.
        let v2 = write(&files, &format!("{lower}-v2.yaml"), c.v2);
        let out = cp.cli(&["apply", "-f", v2.to_str().unwrap()]).await;
        assert_eq!(out.ok(), format!("{id} configured\n"), "{}", c.kind);
        let second = json(cp.cli(&["get", c.word, c.name, "-o", "json"]).await.ok());
        let (pointer, value) = c.changed;
        assert_eq!(
            second.pointer(pointer).and_then(|v| v.as_str()),
            Some(value),
            "{second}"
        );
        assert_eq!(second["metadata"]["generation"], 2, "{second}");
        assert_eq!(
            second["metadata"]["creationTimestamp"],
            first["metadata"]["creationTimestamp"]
        );
        let version2: u64 = second["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(version2 > version, "{version2} > {version}");

        // Deleted; then `get` fails saying so.
        let out = cp.cli(&["delete", c.word, c.name]).await;
        assert!(
            out.ok().contains(&format!("\"{}\" deleted", c.name)),
            "{out:?}"
        );
        let out = cp.cli(&["get", c.word, c.name]).await;
        let err = out.failed();
        let key = if c.kind == "Mesh" {
            format!("Mesh/{}", c.name)
        } else {
            format!("{}/default/{}", c.kind, c.name)
        };
        assert!(
            err.contains(&format!("{key} not found")),
            "{}: {err}",
            c.kind
        );
        let out = cp.cli(&["get", c.word]).await;
        assert_eq!(out.ok(), "");
        assert!(out.stderr.contains("No resources found"), "{out:?}");
        // Deleting again is an error too.
        assert!(cp
            .cli(&["delete", c.word, c.name])
            .await
            .failed()
            .contains("not found"));
    }

    // Every kind at once, from a directory and from stdin.
    let dir = TempDir::new("ctl-dir").unwrap();
    for (i, c) in CASES.iter().enumerate() {
        write(&dir, &format!("{i}-{}.yaml", c.kind.to_lowercase()), c.v1);
    }
    write(&dir, "notes.txt", "not a resource: ignored");
    let out = cp.cli(&["apply", "-f", dir.path().to_str().unwrap()]).await;
    let lines: Vec<&str> = out.ok().lines().collect();
    let expected: Vec<String> = CASES
        .iter()
        .map(|c| format!("{}/{} created", c.kind.to_lowercase(), c.name))
        .collect();
    assert_eq!(lines, expected);
    let all: String = CASES.iter().map(|c| format!("---\n{}", c.v2)).collect();
    let out = cp
        .cli_with(&["apply", "-f", "-"], data.path(), Some(&all))
        .await;
    assert!(
        out.ok().lines().all(|l| l.ends_with(" configured")),
        "{out:?}"
    );
    assert_eq!(out.stdout.lines().count(), CASES.len());

    // An unknown kind word is refused with the accepted words.
    let err = cp.cli(&["get", "gateways"]).await.failed().to_string();
    assert!(
        err.contains("unknown resource kind \"gateways\"") && err.contains("service|services|svc"),
        "{err}"
    );
}

/// Every resource of the kinds the validation cases touch, as JSON: the state in force.
async fn state(cp: &skein_testkit::control::ControlProcess) -> String {
    let mut all = String::new();
    for word in ["services", "routes", "backendpolicies", "meshes"] {
        all.push_str(cp.cli(&["get", word, "-o", "json"]).await.ok());
    }
    all
}

#[tokio::test]
async fn invalid_resources_are_refused_precisely_and_the_state_stays() {
    skein_testkit::init_tracing();
    let (data, files) = (
        TempDir::new("ctl-data").unwrap(),
        TempDir::new("ctl-files").unwrap(),
    );
    let cp = start_control(121, data.path(), &[]).await;
    let good = "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080, protocol: http}]\n\
        ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: web}]}]\n\
        ---\napiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: web}\nspec: {targetRef: {name: web}}\n";
    let file = write(&files, "good.yaml", good);
    cp.cli(&["apply", "-f", file.to_str().unwrap()]).await.ok();
    let before = state(&cp).await;

    let service = |spec: &str| {
        format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{spec}"
        )
    };
    let route = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web}}\n\
             spec:\n  parentRefs: [{{name: web}}]\n  rules: [{rule}]\n"
        )
    };
    // (case, document(s), what stderr must say: resource, path, value, what is accepted)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown field",
            service("  selector: {app: web}\n  ports: [{port: 8080, protcol: http}]\n"),
            vec![
                "Service default/web",
                "spec.ports[0].protcol: unknown field",
                "expected one of name, port, targetPort, protocol",
            ],
        ),
        (
            "bad DNS name",
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: Web_1}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080}]\n".into(),
            vec!["Service default/Web_1", "metadata.name", "\"Web_1\"", "DNS-1123 label"],
        ),
        (
            "duplicate port",
            service("  selector: {app: web}\n  ports: [{port: 8080}, {port: 8080, protocol: http}]\n"),
            vec!["Service default/web", "spec.ports[1].port", "\"8080\"", "each port number listed once"],
        ),
        (
            "empty selector",
            service("  selector: {}\n  ports: [{port: 8080}]\n"),
            vec!["Service default/web", "spec.selector", "\"{}\"", "at least one label"],
        ),
        (
            "backendRef weight out of range",
            route("{backendRefs: [{name: web, weight: 1000001}]}"),
            vec![
                "HTTPRoute default/web",
                "spec.rules[0].backendRefs[0].weight",
                "\"1000001\"",
                "0 to 1000000",
            ],
        ),
        (
            "retry code out of range",
            route("{backendRefs: [{name: web}], retry: {codes: [503, 302]}}"),
            vec![
                "HTTPRoute default/web",
                "spec.rules[0].retry.codes[1]",
                "\"302\"",
                "an HTTP error status from 400 to 599",
            ],
        ),
        (
            "bad duration",
            route("{backendRefs: [{name: web}], timeouts: {request: 5sec}}"),
            vec![
                "HTTPRoute default/web",
                "spec.rules[0].timeouts.request",
                "\"5sec\"",
                "a whole number followed by ms, s, m or h",
            ],
        ),
        (
            "every error at once",
            route("{backendRefs: [{name: web, weight: 2000000}], retry: {codes: [302, 600], attempts: 11}}"),
            vec![
                "4 problems",
                "spec.rules[0].backendRefs[0].weight: \"2000000\"",
                "spec.rules[0].retry.attempts: \"11\" is not accepted; expected 0 to 10 retries",
                "spec.rules[0].retry.codes[0]: \"302\"",
                "spec.rules[0].retry.codes[1]: \"600\"",
            ],
        ),
        (
            "unknown kind",
            "apiVersion: skein.dev/v1alpha1\nkind: Gateway\nmetadata: {name: web}\nspec: {steps: [10, 50]}\n".into(),
            vec![
                "Gateway web",
                "kind: \"Gateway\" is not accepted",
                "expected one of Mesh, Service, Workload, AuthorizationPolicy, BackendPolicy, FaultInjection, Canary",
                "HTTPRoute (apiVersion gateway.networking.k8s.io/v1)",
            ],
        ),
        (
            "a Canary with steps out of order and a metric without its bound",
            "apiVersion: skein.dev/v1alpha1\nkind: Canary\nmetadata: {name: web}\nspec: {targetRef: {name: web}, stable: web-v1, canary: web-v2, analysis: {stepWeights: [50, 10], metrics: [{name: request-duration, thresholdRange: {min: 1}}]}}\n".into(),
            vec![
                "Canary default/web",
                "spec.analysis.stepWeights[1]: \"10\" is not accepted; expected weights in increasing order",
                "spec.analysis.metrics[0].thresholdRange.max: \"none\" is not accepted; expected a p99 in milliseconds",
            ],
        ),
        (
            "wrong apiVersion",
            "apiVersion: skein.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 8080}]\n".into(),
            vec![
                "Service default/web",
                "apiVersion: \"skein.dev/v1\" is not accepted",
                "expected skein.dev/v1alpha1 (for kind Service)",
            ],
        ),
        (
            "one bad document of two",
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {name: newsvc}\nspec:\n  selector: {app: new}\n  ports: [{port: 80}]\n\
             ---\napiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: web}\nspec: {targetRef: {name: web}, loadBalancer: random}\n".into(),
            vec![
                "1 problem",
                "BackendPolicy default/web",
                "spec.loadBalancer: \"random\" is not accepted",
                "expected one of ewma, round-robin, least-request",
            ],
        ),
    ];
    for (i, (case, doc, says)) in cases.iter().enumerate() {
        let file = write(&files, &format!("bad-{i}.yaml"), doc);
        let out = cp.cli(&["apply", "-f", file.to_str().unwrap()]).await;
        let err = out.failed();
        assert!(
            out.stdout.is_empty(),
            "{case}: nothing applied, nothing printed: {out:?}"
        );
        for s in says {
            assert!(err.contains(s), "{case}: stderr lacks {s:?}:\n{err}");
        }
        assert_eq!(
            state(&cp).await,
            before,
            "{case}: the state in force changed"
        );
    }
    // The good document of the refused multi-document apply was not applied.
    let err = cp.cli(&["get", "svc", "newsvc"]).await.failed().to_string();
    assert!(err.contains("Service/default/newsvc not found"), "{err}");
    // The state in force still takes valid applies.
    let good = files.join("good.yaml");
    let out = cp.cli(&["apply", "-f", good.to_str().unwrap()]).await;
    assert_eq!(
        out.ok(),
        "service/web unchanged\nhttproute/web unchanged\nbackendpolicy/web unchanged\n"
    );
}

#[tokio::test]
async fn the_api_requires_the_admin_token() {
    skein_testkit::init_tracing();
    let data = TempDir::new("ctl-data").unwrap();
    let dir_mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_ne!(
        dir_mode(data.path()),
        0o700,
        "the test starts from a looser mode"
    );
    let cp = start_control(122, data.path(), &[]).await;
    let token = cp.token();
    assert_eq!(token.len(), 64, "a 256-bit hex token");
    assert_eq!(
        dir_mode(&data.join("admin.token")),
        0o600,
        "token file mode"
    );
    assert_eq!(dir_mode(data.path()), 0o700, "data dir mode");

    let url = format!("http://{}/api/v1/resources/services", cp.http);
    let call = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = skein_testkit::client::curl(&args).await.expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("body and status");
        (code.to_string(), body.to_string())
    };
    let with = |header: Option<String>| {
        let mut args = vec!["-w".to_string(), "\n%{http_code}".to_string()];
        if let Some(h) = header {
            args.extend(["-H".to_string(), h]);
        }
        args.push(url.clone());
        args
    };
    let (code, body) = call(with(None)).await;
    assert_eq!(code, "401", "{body}");
    assert!(
        body.contains("missing credential") && body.contains("Authorization: Bearer"),
        "{body}"
    );
    let (code, body) = call(with(Some("Authorization: Bearer wrong".into()))).await;
    assert_eq!(code, "401", "{body}");
    assert!(
        body.contains("the credential is wrong") && body.contains("DATA_DIR/admin.token"),
        "{body}"
    );
    let (code, body) = call(with(Some(format!("Authorization: Bearer {}x", token)))).await;
    assert_eq!(code, "401", "a longer token is wrong too: {body}");
    let (code, body) = call(with(Some("Authorization: Basic YWRtaW46YWRtaW4=".into()))).await;
    assert_eq!(code, "401", "{body}");
    let (code, body) = call(with(Some(format!("Authorization: Bearer {token}")))).await;
    assert_eq!(code, "200", "{body}");
    // Every route is protected, the health check is not.
    for (method, path) in [
        ("POST", "/api/v1/apply"),
        ("DELETE", "/api/v1/resources/services/web"),
        ("GET", "/api/v1/connections"),
    ] {
        let (code, body) = call(vec![
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
            format!("http://{}{path}", cp.http),
        ])
        .await;
        assert_eq!(code, "401", "{method} {path}: {body}");
    }
    let (code, _) = call(vec![
        "-w".into(),
        "\n%{http_code}".into(),
        format!("http://{}/healthz", cp.http),
    ])
    .await;
    assert_eq!(code, "200");

    // The CLI: a wrong token says unauthorized; no token at all says where to find one.
    let err = cp
        .cli(&["get", "services", "--token", "wrong"])
        .await
        .failed()
        .to_string();
    assert!(err.contains("unauthorized"), "{err}");
    let empty = TempDir::new("ctl-empty").unwrap();
    let out = cp.cli_with(&["get", "services"], empty.path(), None).await;
    let err = out.failed();
    assert!(
        err.contains("no admin token") && err.contains("--token"),
        "{err}"
    );
    // The right token given explicitly (no data dir) works.
    let args = [
        "get",
        "services",
        "--server",
        &cp.http.to_string(),
        "--token",
        &token,
        "--data-dir",
        "/nonexistent",
    ];
    let out = skein_cli(Path::new(BIN), &args, None).await;
    assert!(out.success(), "{out:?}");
}
