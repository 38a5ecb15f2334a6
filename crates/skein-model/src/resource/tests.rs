//! Tests of whole resources: the design's sample, defaults, every-problem-at-once errors,
//! paths of unknown fields, and round trips through YAML and JSON.

use super::*;
use crate::Protocol;
use std::time::Duration;

/// The sample of DESIGN.md "Resources", without its `Canary` document.
const SAMPLE: &str = r#"
apiVersion: skein.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {trustDomain: skein.local, mtls: strict, defaultPolicy: deny, workloadCertTTL: 24h}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: restaurant, namespace: default}
spec:
  selector: {app: restaurant}            # workloads register with labels
  ports: [{name: http, port: 8080, protocol: http}]   # http | http2 | grpc | tcp; omitted: detect
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: restaurant, namespace: default}
spec:
  parentRefs: [{kind: Service, name: restaurant, port: 8080}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: restaurant-v2, port: 8080}]
  - backendRefs: [{name: restaurant-v1, port: 8080, weight: 99}, {name: restaurant-v2, port: 8080, weight: 1}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {attempts: 2, codes: [502, 503, 504], backoff: 25ms}
---
apiVersion: skein.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: restaurant, namespace: default}
spec:
  targetRef: {kind: Service, name: restaurant}
  action: allow                          # allow | deny | audit
  rules: [{from: [{service: reservation}], to: [{methods: [GET], paths: ["/menu/*"]}]}]
---
apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {name: restaurant, namespace: default}
spec:
  targetRef: {kind: Service, name: restaurant}
  loadBalancer: ewma                     # ewma | round-robin | least-request
  connectionPool: {maxConnections: 1024, maxPendingRequests: 256}
  outlierDetection: {consecutive5xx: 5, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  retryBudget: {ratio: 0.2, minPerSecond: 10}
"#;

const CANARY: &str = "
---
apiVersion: skein.dev/v1alpha1
kind: Canary
metadata: {name: restaurant, namespace: default}
spec:
  targetRef: {kind: Service, name: restaurant}
";

const WORKLOAD: &str = "
apiVersion: skein.dev/v1alpha1
kind: Workload
metadata: {name: restaurant-1, labels: {app: restaurant}}
spec: {address: 127.0.0.2, ports: [8080]}
status: {connected: true, since: '2024-05-01T10:00:00Z', acknowledgedVersion: 3, controlPlane: control-0}
";

fn problems(text: &str) -> Vec<String> {
    match parse_documents(text, "app.yaml") {
        Ok(docs) => panic!("expected problems, parsed {docs:?}"),
        Err(ModelError::Resources { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected ModelError::Resources, got {other}"),
    }
}

fn parse_one(text: &str) -> Resource {
    let mut docs = parse_documents(text, "test.yaml").unwrap();
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

#[test]
fn design_sample_parses_with_defaults() {
    let docs = parse_documents(SAMPLE, "sample.yaml").unwrap();
    let kinds: Vec<_> = docs.iter().map(Resource::kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Mesh,
            Kind::Service,
            Kind::HttpRoute,
            Kind::AuthorizationPolicy,
            Kind::BackendPolicy
        ]
    );
    let Resource::Mesh(mesh) = &docs[0] else {
        panic!()
    };
    assert_eq!(mesh.metadata.namespace, "");
    assert_eq!(mesh.spec.default_policy, PolicyAction::Deny);
    assert_eq!(docs[0].key().to_string(), "Mesh/default");
    let Resource::Service(svc) = &docs[1] else {
        panic!()
    };
    assert_eq!(svc.spec.ports[0].target_port, 8080);
    assert_eq!(svc.spec.ports[0].protocol, Protocol::Http);
    let Resource::HttpRoute(route) = &docs[2] else {
        panic!()
    };
    assert_eq!(
        docs[2].key().storage_path(),
        "httproutes/default/restaurant"
    );
    let rule = &route.spec.rules[0];
    assert_eq!(rule.matches[0].path.value, "/");
    assert_eq!(rule.matches[0].headers[0].kind, ValueMatchType::Exact);
    assert_eq!(rule.backend_refs[0].weight, 1);
    let rule = &route.spec.rules[1];
    assert_eq!(rule.matches, [RouteMatch::default()]);
    let timeouts = rule.timeouts.as_ref().unwrap();
    assert_eq!(timeouts.backend_request, Some(Duration::from_millis(500)));
    assert_eq!(rule.retry.as_ref().unwrap().attempts, 2);
    let Resource::BackendPolicy(bp) = &docs[4] else {
        panic!()
    };
    assert_eq!(bp.spec.retry_budget.ratio, 0.2);
    assert_eq!(bp.spec.target_ref.group, "");
}

#[test]
fn defaults_show_when_printed() {
    let route = parse_one(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\n\
         spec: {parentRefs: [{name: web}], rules: [{backendRefs: [{name: web}]}]}",
    );
    assert_eq!(route.meta().namespace, "default");
    assert_eq!(
        route.to_yaml(),
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: default
spec:
  parentRefs:
  - group: ''
    kind: Service
    name: web
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
    backendRefs:
    - group: ''
      kind: Service
      name: web
      weight: 1
"
    );
    let mesh = parse_one(
        "{apiVersion: skein.dev/v1alpha1, kind: Mesh, metadata: {name: default}, spec: {}}",
    );
    assert_eq!(
        mesh.to_json(),
        r#"{
  "apiVersion": "skein.dev/v1alpha1",
  "kind": "Mesh",
  "metadata": {
    "name": "default"
  },
  "spec": {
    "trustDomain": "skein.local",
    "mtls": "strict",
    "defaultPolicy": "allow",
    "workloadCertTTL": "1h",
    "encodedSlashes": "reject",
    "ambiguousPaths": "reject",
    "tracing": {
      "enabled": true,
      "samplingPercent": 1.0
    },
    "serviceCIDRs": [
      "10.240.0.0/16"
    ]
  }
}"#
    );
}

#[test]
fn yaml_and_json_round_trip() {
    let mut text = format!("{SAMPLE}---{WORKLOAD}");
    text.push_str("---\n{apiVersion: skein.dev/v1alpha1, kind: Service, metadata: {name: api, namespace: shop, resourceVersion: '12', generation: 2, creationTimestamp: '2024-05-01T10:00:00Z', annotations: {note: hi}}, spec: {selector: {app: api}, ports: [{port: 80}], addresses: [10.96.0.10]}}\n");
    let docs = parse_documents(&text, "all.yaml").unwrap();
    assert_eq!(docs.len(), 7);
    for doc in &docs {
        assert_eq!(&parse_one(&doc.to_yaml()), doc, "{}", doc.to_yaml());
        assert_eq!(&parse_one(&doc.to_json()), doc, "{}", doc.to_json());
        // The store's path: serde_json both ways.
        let stored = serde_json::to_vec(doc).unwrap();
        assert_eq!(&serde_json::from_slice::<Resource>(&stored).unwrap(), doc);
    }
    let Resource::Workload(w) = &docs[5] else {
        panic!()
    };
    assert_eq!(w.status.as_ref().unwrap().acknowledged_version, Some(3));
    assert_eq!(w.spec.inbound_port, 4143);
    assert_eq!(docs[6].meta().resource_version, 12);
}

#[test]
fn json_input_is_accepted() {
    let doc = parse_one(
        r#"{"apiVersion": "skein.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"address": "10.0.0.7", "ports": [80]}}"#,
    );
    assert_eq!(doc.key(), ResourceKey::new(Kind::Workload, "shop", "web-1"));
}

#[test]
fn empty_documents_are_skipped() {
    let text = format!("---\n# nothing here\n---\n{WORKLOAD}\n---\n");
    assert_eq!(parse_documents(&text, "x").unwrap().len(), 1);
    assert!(parse_documents("", "x").unwrap().is_empty());
}

#[test]
fn an_unknown_kind_is_refused_naming_the_supported_kinds() {
    assert_eq!(
        problems("apiVersion: skein.dev/v1alpha1\nkind: Gateway\nmetadata: {name: web}\nspec: {}"),
        ["Gateway web: kind: \"Gateway\" is not accepted; expected one of Mesh, Service, \
          Workload, AuthorizationPolicy, BackendPolicy, FaultInjection, Canary (apiVersion skein.dev/v1alpha1), HTTPRoute \
          (apiVersion gateway.networking.k8s.io/v1) or ReferenceGrant (apiVersion gateway.networking.k8s.io/v1beta1)"]
    );
}

#[test]
fn a_canary_needs_its_two_versions() {
    assert_eq!(
        problems(&format!("{SAMPLE}{CANARY}")),
        ["Canary default/restaurant: spec.stable: required field is missing; expected a value"]
    );
}

#[test]
fn api_version_must_match_the_kind() {
    assert_eq!(
        problems("apiVersion: skein.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: web}\nspec: {}"),
        ["HTTPRoute default/web: apiVersion: \"skein.dev/v1alpha1\" is not accepted; expected gateway.networking.k8s.io/v1 (for kind HTTPRoute)"]
    );
    assert_eq!(
        problems("kind: Service\nmetadata: {name: web}\nspec: {}"),
        ["Service default/web: apiVersion: required field is missing; expected skein.dev/v1alpha1 (for kind Service)"]
    );
}

#[test]
fn unknown_field_is_reported_with_its_path() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: restaurant}\n\
                spec: {parentRefs: [{name: restaurant}], rules: [{backendRefs: [{name: v1, wieght: 2}]}]}";
    assert_eq!(
        problems(text),
        [
            "HTTPRoute default/restaurant: spec.rules[0].backendRefs[0].wieght: unknown field; \
          expected one of group, kind, name, namespace, port, weight, filters, refused"
        ]
    );
}

#[test]
fn unknown_top_level_field_lists_every_top_level_field() {
    let text = format!("{WORKLOAD}specs: {{}}\n");
    assert_eq!(
        problems(&text),
        ["Workload default/restaurant-1: specs: unknown field; expected one of apiVersion, kind, metadata, spec, status"]
    );
}

#[test]
fn wrong_types_and_missing_fields_name_path_value_and_expectation() {
    let svc = |spec: &str| {
        format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}"
        )
    };
    let cases = [
        (
            "{selector: {app: web}, ports: [{port: 70000}]}",
            "Service default/web: spec.ports[0].port: \"70000\" is not accepted; expected a whole number from 0 to 65535",
        ),
        (
            "{selector: {app: web}, ports: [{port: 80, protocol: htp}]}",
            "Service default/web: spec.ports[0].protocol: \"htp\" is not accepted; expected one of detect, http, http2, grpc, tcp",
        ),
        (
            "{selector: {app: web}, ports: [{port: 80}], addresses: [10.0.0.300]}",
            "Service default/web: spec.addresses[0]: \"10.0.0.300\" is not accepted; expected an IP address such as 10.0.0.1 or fd00::1",
        ),
        (
            "{ports: [{port: 80}]}",
            "Service default/web: spec.selector: required field is missing; expected a value",
        ),
        (
            "{selector: {app: web}, ports: {port: 80}}",
            "Service default/web: spec.ports: \"{\\\"port\\\":80}\" is not accepted; expected a sequence",
        ),
    ];
    for (spec, message) in cases {
        assert_eq!(problems(&svc(spec)), [message], "{spec}");
    }
    let mesh = "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
                spec: {serviceCIDRs: [10.240.0.0/16, 10.250.0.0]}";
    assert_eq!(
        problems(mesh),
        ["Mesh default: spec.serviceCIDRs[1]: \"10.250.0.0\" is not accepted; expected a network such as 10.240.0.0/16 or fd00:10:240::/112 (an address, '/' and a prefix length)"]
    );
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\n\
                 spec: {parentRefs: [{name: web}], rules: [{backendRefs: [{name: web}], timeouts: {request: soon}}]}";
    assert_eq!(
        problems(route),
        ["HTTPRoute default/web: spec.rules[0].timeouts.request: \"soon\" is not accepted; expected a whole number followed by ms, s, m or h (e.g. 250ms, 10s)"]
    );
}

#[test]
fn mesh_path_settings_name_the_accepted_values() {
    let mesh = |spec: &str| {
        format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {spec}"
        )
    };
    let docs = parse_documents(
        &mesh("{ambiguousPaths: forward, encodedSlashes: keep}"),
        "m.yaml",
    );
    assert!(docs.is_ok(), "{docs:?}");
    assert_eq!(
        problems(&mesh("{ambiguousPaths: allow}")),
        ["Mesh default: spec.ambiguousPaths: \"allow\" is not accepted; expected reject or forward"]
    );
}

#[test]
fn every_problem_of_every_document_at_once() {
    let text = "
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: good}
spec: {selector: {app: good}, ports: [{port: 80}]}
---
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: bad, namespace: Shop}
spec: {selector: {}, ports: [{port: 0}]}
---
apiVersion: skein.dev/v1alpha1
kind: BackendPolicy
metadata: {namespace: shop}
spec: {targetRef: {name: web}, loadBalancer: random}
";
    let err = parse_documents(text, "app.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid app.yaml (4 problems):
  - Service Shop/bad: metadata.namespace: \"Shop\" is not accepted; expected a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit
  - Service Shop/bad: spec.selector: \"{}\" is not accepted; expected at least one label, e.g. {app: restaurant}
  - Service Shop/bad: spec.ports[0].port: \"0\" is not accepted; expected a port from 1 to 65535
  - document 3 of app.yaml: metadata.name: required field is missing; expected a value"
    );
    // The serde error of document 3 is its first; fix it and its next problem shows.
    let fixed = text.replace(
        "metadata: {namespace: shop}",
        "metadata: {name: web, namespace: shop}",
    );
    assert_eq!(
        problems(&fixed)[3],
        "BackendPolicy shop/web: spec.loadBalancer: \"random\" is not accepted; expected one of ewma, round-robin, least-request"
    );
}

#[test]
fn unnamed_documents_are_numbered() {
    let text = format!("{WORKLOAD}---\napiVersion: skein.dev/v1alpha1\nkind: Workload\nmetadata: {{name: ''}}\nspec: {{address: 10.0.0.1}}\n---\n[1, 2]\n");
    assert_eq!(
        problems(&text),
        [
            format!("document 2 of app.yaml: metadata.name: \"\" is not accepted; expected {}", validate::DNS_LABEL),
            "document 3 of app.yaml: .: \"[1,2]\" is not accepted; expected a mapping with apiVersion, kind, metadata and spec".into(),
        ]
    );
}

#[test]
fn a_resource_is_defined_once_per_apply() {
    let text = format!("{WORKLOAD}---{WORKLOAD}");
    assert_eq!(
        problems(&text),
        ["Workload default/restaurant-1: metadata.name: \"restaurant-1\" is not accepted; expected each resource once per apply; document 1 already defines it"]
    );
}

#[test]
fn syntax_errors_stop_reading_and_say_where() {
    let text = format!("{WORKLOAD}---\nkind: [\n---\n{WORKLOAD}");
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].starts_with("document 2 of app.yaml: not valid YAML: "),
        "{}",
        all[0]
    );
    assert!(all[0].contains("line 9 column 1"), "{}", all[0]);
    assert!(
        all[0].ends_with("(documents after it were not read)"),
        "{}",
        all[0]
    );
}

#[test]
fn mesh_is_cluster_scoped() {
    let text = "{apiVersion: skein.dev/v1alpha1, kind: Mesh, metadata: {name: default, namespace: default}, spec: {}}";
    assert_eq!(
        problems(text),
        ["Mesh default: metadata.namespace: \"default\" is not accepted; expected no namespace: Mesh is cluster-scoped"]
    );
}

#[test]
fn status_can_be_cleared() {
    let mut doc = parse_one(WORKLOAD);
    assert!(doc.has_status());
    doc.clear_status();
    assert!(!doc.has_status());
    assert!(!doc.to_yaml().contains("status"));
}

#[test]
fn validate_names_the_resource() {
    let mut doc = parse_one(WORKLOAD);
    assert!(doc.validate().is_ok());
    if let Resource::Workload(w) = &mut doc {
        w.spec.inbound_port = 0;
    }
    assert_eq!(
        doc.validate().unwrap_err().to_string(),
        "invalid Workload default/restaurant-1 (1 problem):
  - Workload default/restaurant-1: spec.inboundPort: \"0\" is not accepted; expected a port from 1 to 65535"
    );
}

#[test]
fn deserialize_errors_carry_the_path() {
    let err = serde_json::from_str::<Resource>(
        r#"{"apiVersion": "skein.dev/v1alpha1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"selector": {}, "ports": [{"prot": 1}]}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.ports[0].prot: unknown field; expected one of name, port, targetPort, protocol"
    );
}

#[test]
fn yaml_merge_keys_work() {
    let text = "
apiVersion: skein.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - &http {port: 80, protocol: http}
  - {<<: *http, port: 81}
";
    let Resource::Service(svc) = parse_one(text) else {
        panic!()
    };
    assert_eq!(svc.spec.ports[1].protocol, Protocol::Http);
    assert_eq!(svc.spec.ports[1].port, 81);
}

#[test]
fn the_examples_parse_and_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mesh = std::fs::read_to_string(dir.join("mesh.yaml")).unwrap();
    let resources = parse_documents(&mesh, "examples/mesh.yaml").unwrap();
    assert!(resources.len() >= 5, "{}", resources.len());
    for r in &resources {
        r.validate().unwrap();
    }
    let proxy = std::fs::read_to_string(dir.join("proxy.yaml")).unwrap();
    let config: crate::ProxyConfig = serde_yaml_ng::from_str(&proxy).unwrap();
    config.validate("examples/proxy.yaml").unwrap();
}
