//! `skein why` for each kind of decision the mesh makes about a request, naming the
//! resource and field that decided: a denial (the AuthorizationPolicy and the callers it
//! allows), retries exhausted (the HTTPRoute rule's `retry.attempts`, each try, and the
//! ejection a failure caused with the BackendPolicy's `outlierDetection`), an overloaded
//! service (the BackendPolicy's `connectionPool` limit and its value), no route (the
//! missing Service) and bad input (the Mesh's `ambiguousPaths`; a head over the proxy's
//! `limits.maxHeaderBytes`, refused before it is parsed, under an ID the proxy makes).
//! Timeouts are in `resilience.rs`.

mod meshed;

use meshed::*;
use skein_testkit::control::{eventually, TempDir};
use std::time::Duration;

/// `skein why ID` once `done` holds for what it says.
async fn why_when(
    cp: &skein_control::server::RunningControl,
    data: &std::path::Path,
    id: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut said = String::new();
    let found = eventually(&format!("skein why {id}"), SOON, async || {
        said = cli(cp, data, &["why", id]).await.ok().to_string();
        done(&said)
    })
    .await;
    assert!(found.is_ok(), "{said}");
    println!("{said}");
    said
}

#[tokio::test]
async fn skein_why_names_the_resource_and_field_for_each_kind_of_decision() {
    skein_testkit::init_tracing();
    let data = TempDir::new("why-kinds").unwrap();
    let cp = control(7, data.path()).await;
    let resources = [
        service_yaml("guarded"),
        service_yaml("flaky"),
        service_yaml("narrow"),
        "apiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: guarded}\n\
         spec: {targetRef: {kind: Service, name: guarded}, rules: [{from: [{service: reservation}]}]}\n"
            .to_string(),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: flaky}}\n\
             spec:\n  parentRefs: [{{name: flaky, port: {PORT}}}]\n  rules:\n\
             \x20 - backendRefs: [{{name: flaky, port: {PORT}}}]\n\
             \x20   retry: {{attempts: 2, codes: [503], backoff: 1ms}}\n"
        ),
        "apiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: flaky}\n\
         spec: {targetRef: {kind: Service, name: flaky}, outlierDetection: {consecutive5xx: 1, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n"
            .to_string(),
        "apiVersion: skein.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: narrow}\n\
         spec: {targetRef: {kind: Service, name: narrow}, connectionPool: {maxConcurrentRequests: 1, maxPendingRequests: 0}}\n"
            .to_string(),
    ];
    apply(&cp, &resources.join("---\n")).await;
    let (_guarded_app, guarded) = workload(&cp, 11, "guarded", None).await;
    let (flaky_app_1, flaky_1) = workload_as(&cp, 12, "flaky-1", "flaky", &[], None).await;
    let (flaky_app_2, flaky_2) = workload_as(&cp, 13, "flaky-2", "flaky", &[], None).await;
    let (narrow_app, narrow) = workload(&cp, 14, "narrow", None).await;
    let caller = client(&cp, 7).await;
    caller
        .discover(&["guarded", "flaky", "narrow"])
        .await
        .unwrap();
    let via = caller.addrs.http_proxy.unwrap();
    eventually("the caller knows every service", SOON, async || {
        let config = caller.ctx.config();
        ["guarded", "flaky", "narrow"].iter().all(|s| {
            config
                .destinations
                .iter()
                .any(|d| d.service == *s && d.endpoints.len() == 1 + usize::from(*s == "flaky"))
        }) && config
            .destinations
            .iter()
            .any(|d| d.service == "flaky" && !d.routes.is_empty())
    })
    .await
    .unwrap();
    until_ok(via, &url("narrow", "x")).await;

    // A denial: the policy, and the callers it allows.
    let (status, _, _) = send(
        via,
        "GET",
        &url("guarded", "x"),
        &[("skein-request-id", "why-denied")],
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    let said = why_when(&cp, data.path(), "why-denied", |s| {
        s.contains("- callee's proxy") && s.contains("- caller's proxy")
    })
    .await;
    assert!(
        said.contains("AuthorizationPolicy default/guarded"),
        "{said}"
    );
    assert!(
        said.contains("allows only: ") && said.contains("reservation"),
        "{said}"
    );
    assert!(
        said.contains("- caller's proxy default/client-1 (to default/guarded): 403"),
        "{said}"
    );
    assert!(
        said.contains("403 from the peer proxy: denied (skein-denied-by: not-allowed)"),
        "{said}"
    );
    assert!(
        said.contains(
            "- callee's proxy default/guarded-1 (to default/guarded): 403, answered by this proxy"
        ),
        "{said}"
    );

    // Bad input: the Mesh field that refuses it.
    let (status, _, _) = send(
        via,
        "GET",
        &url("guarded", "a/..;/b"),
        &[("skein-request-id", "why-bad-path")],
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let said = why_when(&cp, data.path(), "why-bad-path", |s| {
        s.contains("- callee's proxy") && s.contains("- caller's proxy")
    })
    .await;
    assert!(said.contains("Mesh spec.ambiguousPaths"), "{said}");

    // A head over the proxy's limit, refused before it is parsed: the answer names the
    // request ID the proxy made for it, and the record names the setting.
    let huge = "h".repeat(100 << 10);
    let (status, head, body) = send(via, "GET", &url("guarded", "x"), &[("x-huge", &huge)])
        .await
        .unwrap();
    assert_eq!(status, 431, "{body}");
    let id = head["skein-request-id"].to_str().unwrap().to_string();
    assert!(body.ends_with(&format!("request id: {id}\n")), "{body}");
    let said = why_when(&cp, data.path(), &id, |s| s.contains("- caller's proxy")).await;
    assert!(said.contains("limits.maxHeaderBytes"), "{said}");

    // No route: there is no such Service.
    let (status, _, _) = send(
        via,
        "GET",
        &url("nowhere", "x"),
        &[("skein-request-id", "why-nowhere")],
    )
    .await
    .unwrap();
    assert_eq!(status, 502);
    let said = why_when(&cp, data.path(), "why-nowhere", |s| {
        s.contains("- caller's proxy")
    })
    .await;
    assert!(
        said.contains("no destination named \"nowhere\"") && said.contains("Service"),
        "{said}"
    );

    // Retries exhausted: the rule's retry.attempts, each try, and the ejection the first
    // failure caused, with the BackendPolicy's outlierDetection.
    flaky_app_1.fail_after_body(503);
    flaky_app_2.fail_after_body(503);
    let (status, _, _) = send(
        via,
        "GET",
        &url("flaky", "x"),
        &[("skein-request-id", "why-retries")],
    )
    .await
    .unwrap();
    assert_eq!(status, 503);
    let said = why_when(&cp, data.path(), "why-retries", |s| {
        s.contains("- caller's proxy")
    })
    .await;
    assert!(
        said.contains("503 from the application after 3 tries (HTTPRoute default/flaky rule 0 retry.attempts 2)"),
        "{said}"
    );
    assert!(
        said.contains("try 1 to ") && said.contains("try 3 to "),
        "{said}"
    );
    assert!(
        said.contains("this failure ejected it for 30s (BackendPolicy default/flaky outlierDetection: consecutive5xx 1"),
        "{said}"
    );

    // Overloaded: the BackendPolicy's limit and its value.
    narrow_app.set_delay(Duration::from_secs(2));
    narrow_app.reset_max_in_flight();
    let busy = tokio::spawn(async move { get(via, &url("narrow", "slow")).await });
    eventually("the first request holds the only slot", SOON, async || {
        narrow_app.max_in_flight() >= 1
    })
    .await
    .unwrap();
    let (status, _, _) = send(
        via,
        "GET",
        &url("narrow", "x"),
        &[("skein-request-id", "why-overloaded")],
    )
    .await
    .unwrap();
    assert_eq!(status, 503);
    let said = why_when(&cp, data.path(), "why-overloaded", |s| {
        s.contains("- caller's proxy")
    })
    .await;
    assert!(
        said.contains("connectionPool.maxConcurrentRequests 1"),
        "{said}"
    );
    assert!(said.contains("default/narrow"), "{said}");
    let _ = busy.await;

    for p in [&caller, &guarded, &flaky_1, &flaky_2, &narrow] {
        p.shutdown().await;
    }
    cp.shutdown().await;
}
