//! Distributed tracing end to end: proxies continue W3C and B3 trace contexts (and start
//! one when a request has none), record one span per hop and direction with each try as
//! a child, sample new traces at the Mesh's ratio and record every request the mesh
//! failed whatever the ratio; the control plane keeps traces (`skein trace list|show`);
//! spans reach a third-party OTLP receiver (Python's grpcio with the published
//! OpenTelemetry protobufs); an application instrumented with the OpenTelemetry SDK sends
//! its spans to `skein control` and they join the proxies'; and a collector that is down
//! or never answers costs requests nothing.
//!
//! The Python peers need the venv `.ci/run` makes (`SKEIN_TEST_PYTHON`, or
//! `.ci/venv/bin/python`); without it those two tests say so and skip, except under CI,
//! where they fail.

mod meshed;

use meshed::*;
use skein_model::Protocol;
use skein_proxy::RunningProxy;
use skein_testkit::control::{eventually, TempDir};
use skein_testkit::{loopback, MeshSpec};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mesh_tracing(percent: f64) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{tracing: {{samplingPercent: {percent}}}}}\n"
    )
}

/// Waits until `proxy` samples `percent` of new traces (the Mesh reached it).
async fn samples(proxy: &RunningProxy, percent: f64) {
    eventually("the proxy takes the Mesh's tracing", SOON, async || {
        proxy.ctx.config().telemetry.tracing.sampling_percent == percent
    })
    .await
    .unwrap();
}

/// An application on `addr` that answers each request by calling `service` (same path)
/// through its proxy's HTTP proxy listener `via`, copying the trace headers as an
/// application must for its trace to join up.
fn relay(addr: SocketAddr, via: SocketAddr, service: &'static str) -> tokio::task::JoinHandle<()> {
    use hyper_util::rt::TokioIo;
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| async move {
                    // What an application must copy (docs/telemetry.md).
                    let copied: Vec<(String, String)> = skein_proxy::trace::HEADERS
                        .iter()
                        .filter_map(|h| {
                            let v = req.headers().get(h)?.to_str().ok()?;
                            Some((h.to_string(), v.to_string()))
                        })
                        .collect();
                    let headers: Vec<(&str, &str)> = copied
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let path = req.uri().path().trim_start_matches('/').to_string();
                    let (status, body) =
                        match send(via, "GET", &url(service, &path), &headers).await {
                            Ok((status, _, body)) => (status, body),
                            Err(e) => (502, e),
                        };
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap(),
                    )
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// A proxy on 127.0.0.`host` in front of the application at `app`, registered as
/// `<service>-1`, with an HTTP proxy listener on 127.0.0.`host`:3128 for the
/// application's own calls.
async fn middle_workload(
    cp: &skein_control::server::RunningControl,
    host: u8,
    service: &str,
    app: SocketAddr,
) -> RunningProxy {
    let mut config = MeshSpec::new(host, host)
        .service(service, app, Protocol::Http)
        .server_config();
    config.workload.name = format!("{service}-1");
    config.workload.service = service.into();
    config.workload.labels.clear();
    config.inbound.listen = SocketAddr::new(loopback(host), 4143);
    config.outbound.http_proxy = Some(SocketAddr::new(loopback(host), 3128));
    let join = join(cp, service, config.inbound.listen).await;
    RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap()
}

/// A trace's spans from the control plane (`skein trace show ID --json`), once `done`
/// holds for them.
async fn trace_when(
    cp: &skein_control::server::RunningControl,
    data: &std::path::Path,
    id: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut spans = Vec::new();
    let found = eventually(&format!("trace {id} is complete"), SOON, async || {
        let out = cli(cp, data, &["trace", "show", id, "--json"]).await;
        if !out.success() {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        spans = v["spans"].as_array().cloned().unwrap_or_default();
        done(&spans)
    })
    .await;
    assert!(found.is_ok(), "trace {id}: {spans:#?}");
    spans
}

fn s<'a>(span: &'a serde_json::Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or_default()
}

fn attr<'a>(span: &'a serde_json::Value, key: &str) -> &'a str {
    span["attributes"][key].as_str().unwrap_or_default()
}

/// The one span of `service` (`namespace/name`) and `kind` whose name starts with `name`.
fn find<'a>(spans: &'a [serde_json::Value], service: &str, name: &str) -> &'a serde_json::Value {
    let found: Vec<_> = spans
        .iter()
        .filter(|sp| s(sp, "service") == service && s(sp, "name").starts_with(name))
        .collect();
    assert_eq!(found.len(), 1, "{service} {name}: {spans:#?}");
    found[0]
}

/// `child` is `parent`'s child and runs within it (with 2 ms for the clocks' rounding:
/// each proxy maps its monotonic clock to wall time when the span ends).
fn nests(child: &serde_json::Value, parent: &serde_json::Value) {
    assert_eq!(
        s(child, "parentSpanId"),
        s(parent, "spanId"),
        "{} under {}",
        s(child, "name"),
        s(parent, "name")
    );
    let t = |sp: &serde_json::Value, k: &str| sp[k].as_u64().unwrap();
    let slack = 2_000_000;
    assert!(
        t(child, "startUnixNano") + slack >= t(parent, "startUnixNano")
            && t(child, "endUnixNano") <= t(parent, "endUnixNano") + slack,
        "{} runs within {}",
        s(child, "name"),
        s(parent, "name")
    );
}

/// The hop spans of a traffic → frontend → restaurant call in parent/child order, each
/// try between its outbound span and the callee's inbound one.
fn assert_three_hops(spans: &[serde_json::Value], caller_span: Option<&str>) {
    let traffic_out = find(spans, "default/traffic", "outbound GET frontend");
    let traffic_try = find(spans, "default/traffic", "try 1 GET frontend");
    let frontend_in = find(spans, "default/frontend", "inbound GET frontend");
    let frontend_out = find(spans, "default/frontend", "outbound GET restaurant");
    let frontend_try = find(spans, "default/frontend", "try 1 GET restaurant");
    let restaurant_in = find(spans, "default/restaurant", "inbound GET restaurant");
    match caller_span {
        Some(parent) => assert_eq!(s(traffic_out, "parentSpanId"), parent),
        None => assert!(
            traffic_out.get("parentSpanId").is_none(),
            "a new trace's root"
        ),
    }
    nests(traffic_try, traffic_out);
    nests(frontend_in, traffic_try);
    nests(frontend_out, frontend_in);
    nests(frontend_try, frontend_out);
    nests(restaurant_in, frontend_try);
    for (span, kind) in [
        (traffic_out, "internal"),
        (traffic_try, "client"),
        (frontend_in, "server"),
        (restaurant_in, "server"),
    ] {
        assert_eq!(s(span, "kind"), kind, "{}", s(span, "name"));
        assert_eq!(s(span, "source"), "proxy");
    }
    // What a span records: the verified caller, the decision, the service, the status.
    assert_eq!(attr(restaurant_in, "skein.caller"), "default/frontend");
    assert_eq!(attr(restaurant_in, "skein.authz.decision"), "allowed");
    assert_eq!(attr(frontend_in, "skein.caller"), "default/traffic");
    assert_eq!(
        attr(traffic_try, "skein.peer"),
        "spiffe://skein.local/ns/default/sa/frontend",
        "the callee's proxy as its certificate proved it"
    );
    assert_eq!(attr(traffic_out, "skein.service"), "default/frontend");
    assert_eq!(attr(traffic_out, "http.response.status_code"), "200");
    assert_eq!(attr(traffic_out, "skein.tries"), "1");
    assert_eq!(attr(restaurant_in, "url.path"), "/menu");
    assert_eq!(s(restaurant_in, "workload"), "default/restaurant-1");
    assert!(!attr(traffic_out, "skein.request_id").is_empty());
}

/// traffic → frontend → restaurant, each behind its proxy under `cp`, sampling every new
/// trace: the traffic proxy on 127.0.0.`hosts[0]`, the frontend's on `hosts[1]` in front
/// of its application on `hosts[1]`:PORT (which the caller starts, calling restaurant
/// through 127.0.0.`hosts[1]`:3128), restaurant's on `hosts[2]`.
struct ThreeHops {
    traffic: RunningProxy,
    frontend: RunningProxy,
    restaurant: RunningProxy,
    restaurant_app: skein_testkit::HttpBackend,
    /// The traffic proxy's HTTP proxy listener.
    via: SocketAddr,
}

impl ThreeHops {
    async fn start(cp: &skein_control::server::RunningControl, hosts: [u8; 3]) -> ThreeHops {
        let services = [
            service_yaml("restaurant"),
            service_yaml("frontend"),
            mesh_tracing(100.0),
        ];
        apply(cp, &services.join("---\n")).await;
        let (restaurant_app, restaurant) = workload(cp, hosts[2], "restaurant", None).await;
        let app = SocketAddr::new(loopback(hosts[1]), PORT);
        let frontend = middle_workload(cp, hosts[1], "frontend", app).await;
        let traffic = client_of(cp, hosts[0], "traffic", &[]).await;
        for p in [&traffic, &frontend, &restaurant] {
            samples(p, 100.0).await;
        }
        let via = traffic.addrs.http_proxy.unwrap();
        until_ok(via, &url("frontend", "menu")).await;
        ThreeHops {
            traffic,
            frontend,
            restaurant,
            restaurant_app,
            via,
        }
    }

    async fn shutdown(self) {
        for p in [&self.traffic, &self.frontend, &self.restaurant] {
            p.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_three_hop_call_is_one_trace_continued_from_w3c_b3_or_started_anew() {
    skein_testkit::init_tracing();
    let data = TempDir::new("traces-three-hops").unwrap();
    let cp = control(9, data.path()).await;
    let relay_addr = SocketAddr::new(loopback(17), PORT);
    let _relay = relay(
        relay_addr,
        SocketAddr::new(loopback(17), 3128),
        "restaurant",
    );
    let mesh = ThreeHops::start(&cp, [9, 17, 19]).await;
    let (via, restaurant_app) = (mesh.via, &mesh.restaurant_app);

    // W3C: the caller's trace goes on, under the caller's span.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let (status, _, _) = send(
        via,
        "GET",
        &url("frontend", "menu"),
        &[("traceparent", &tp), ("tracestate", "vendor=x")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let spans = trace_when(&cp, data.path(), trace, |spans| spans.len() >= 6).await;
    assert_eq!(spans.len(), 6, "four hop spans and two tries: {spans:#?}");
    assert_three_hops(&spans, Some("00f067aa0ba902b7"));
    // The application behind the last proxy is told the trace, under that proxy's span.
    let seen = restaurant_app.seen();
    let last = seen.last().unwrap();
    let restaurant_in = find(&spans, "default/restaurant", "inbound");
    assert_eq!(
        last.header("traceparent").unwrap(),
        format!("00-{trace}-{}-01", s(restaurant_in, "spanId"))
    );
    assert_eq!(last.header("tracestate"), Some("vendor=x"));

    // The terminal waterfall: nested, caller first.
    let shown = cli(&cp, data.path(), &["trace", "show", trace]).await;
    let text = shown.ok();
    println!("{text}");
    assert!(
        text.starts_with(&format!("Trace {trace}: 6 spans")),
        "{text}"
    );
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle}: {text}"))
    };
    assert!(at("default/traffic ") < at("  default/frontend "), "{text}");
    assert!(
        at("  default/frontend ") < at("      default/restaurant "),
        "{text}"
    );
    let listed = cli(
        &cp,
        data.path(),
        &["trace", "list", "--service", "restaurant"],
    )
    .await;
    assert!(listed.ok().contains(trace), "{}", listed.ok());

    // B3, single header and multi: continued in the format they came in.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3 = format!("{b3_trace}-e457b5a2e4d86bd1-1");
    let (status, _, _) = send(via, "GET", &url("frontend", "menu"), &[("b3", &b3)])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let spans = trace_when(&cp, data.path(), b3_trace, |spans| spans.len() >= 6).await;
    assert_three_hops(&spans, Some("e457b5a2e4d86bd1"));
    let seen = restaurant_app.seen();
    let b3_seen = seen.last().unwrap().header("b3").unwrap().to_string();
    assert!(
        b3_seen.starts_with(&format!("{b3_trace}-")) && b3_seen.contains("-1-"),
        "{b3_seen}"
    );
    assert!(
        seen.last().unwrap().header("traceparent").is_none(),
        "no format is added"
    );

    let multi_trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let headers = [
        ("x-b3-traceid", multi_trace),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let (status, _, _) = send(via, "GET", &url("frontend", "menu"), &headers)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let spans = trace_when(&cp, data.path(), multi_trace, |spans| spans.len() >= 6).await;
    assert_three_hops(&spans, Some("a2fb4a1d1a96d312"));
    let seen = restaurant_app.seen();
    assert_eq!(
        seen.last().unwrap().header("x-b3-traceid"),
        Some(multi_trace)
    );

    // No context: the first proxy starts a trace, and it is one trace end to end.
    let (status, _, _) = send(via, "GET", &url("frontend", "menu"), &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = restaurant_app.seen();
    let started = seen
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_string();
    let new_trace = started.split('-').nth(1).unwrap().to_string();
    assert_eq!(new_trace.len(), 32);
    let spans = trace_when(&cp, data.path(), &new_trace, |spans| spans.len() >= 6).await;
    assert_three_hops(&spans, None);

    // A trace ID that is not one is refused with the form expected.
    let bad = cli(&cp, data.path(), &["trace", "show", "nope"]).await;
    assert!(!bad.success());
    assert!(bad.stderr.contains("32 hex digits"), "{}", bad.stderr);
    mesh.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn new_traces_are_sampled_at_the_mesh_ratio_and_failed_requests_always_recorded() {
    skein_testkit::init_tracing();
    let data = TempDir::new("traces-sampling").unwrap();
    let cp = control(82, data.path()).await;
    apply(&cp, &(service_yaml("api") + "---\n" + &mesh_tracing(10.0))).await;
    let (_app, api) = workload(&cp, 83, "api", None).await;
    let caller = client(&cp, 82).await;
    samples(&caller, 10.0).await;
    samples(&api, 10.0).await;
    let via = caller.addrs.http_proxy.unwrap();
    until_ok(via, &url("api", "x")).await;
    let count = async || {
        let out = cli(
            &cp,
            data.path(),
            &[
                "trace",
                "list",
                "--service",
                "api",
                "--limit",
                "1000",
                "--json",
            ],
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
        v["traces"].as_array().unwrap().len()
    };
    let before = count().await;

    // 2,000 requests with no trace context: each a new trace, sampled at 10 %.
    let mut sender = skein_testkit::client::h1(via).await.unwrap();
    for _ in 0..2000 {
        let req = http::Request::get(url("api", "x"))
            .body(skein_proxy::http::empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        skein_testkit::client::body_bytes(resp).await.unwrap();
    }
    // Settled: two summary intervals with no change.
    let mut last = usize::MAX;
    let mut sampled = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        sampled = count().await - before;
        if sampled == last {
            break;
        }
        last = sampled;
    }
    // 10 % of 2,000 is 200; five standard deviations of the binomial are ±67.
    println!("sampled {sampled} of 2000 new traces at 10 %");
    assert!((133..=267).contains(&sampled), "{sampled}");

    // Nothing sampled, and callers that said "not sampled": requests the mesh fails are
    // recorded all the same, on both proxies.
    apply(
        &cp,
        &(mesh_tracing(0.0)
            + "---\napiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\n\
               metadata: {name: nobody}\nspec: {targetRef: {kind: Service, name: api}, action: deny, rules: [{}]}\n"),
    )
    .await;
    samples(&caller, 0.0).await;
    eventually("the denial is in force", SOON, async || {
        matches!(get(via, &url("api", "x")).await, Ok((403, _)))
    })
    .await
    .unwrap();
    let ids: Vec<String> = (0..20u32)
        .map(|i| format!("{:032x}", 0xfa11_0000 + i))
        .collect();
    for id in &ids {
        let tp = format!("00-{id}-00000000000000aa-00");
        let (status, _, _) = send(via, "GET", &url("api", "x"), &[("traceparent", &tp)])
            .await
            .unwrap();
        assert_eq!(status, 403);
    }
    for id in &ids {
        // Both proxies' spans: each proxy reports on its own schedule.
        let both = |spans: &[serde_json::Value]| {
            ["default/api", "default/client"]
                .iter()
                .all(|svc| spans.iter().any(|sp| s(sp, "service") == *svc))
        };
        let spans = trace_when(&cp, data.path(), id, both).await;
        let denied = find(&spans, "default/api", "inbound");
        assert_eq!(denied["error"], true);
        assert_eq!(attr(denied, "skein.error"), "denied");
        assert!(
            s(denied, "statusMessage").contains("default/nobody"),
            "{denied:#}"
        );
        let out = find(&spans, "default/client", "outbound");
        assert_eq!(attr(out, "http.response.status_code"), "403");
        assert_eq!(out["error"], true);
    }
    // No context at all: the two proxies' spans of a request the mesh failed share the
    // trace both derive from its request ID, the callee's under the caller's.
    let (status, _, _) = send(
        via,
        "GET",
        &url("api", "x"),
        &[("skein-request-id", "untraced-1")],
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    let trace = format!(
        "{:032x}",
        skein_proxy::ids::derive(&[b"trace", b"untraced-1"])
    );
    let spans = trace_when(&cp, data.path(), &trace, |spans| spans.len() >= 3).await;
    let denied = find(&spans, "default/api", "inbound");
    let out = find(&spans, "default/client", "outbound");
    nests(denied, out);
    assert_eq!(attr(denied, "skein.request_id"), "untraced-1");
    let errors = cli(
        &cp,
        data.path(),
        &["trace", "list", "--errors", "--limit", "1000", "--json"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(errors.ok()).unwrap();
    assert!(v["traces"].as_array().unwrap().len() >= 20);
    // The store says what it holds against its limits.
    assert_eq!(v["limits"]["traces"], 10_000, "{v}");
    assert_eq!(v["limits"]["bytes"], 64 << 20, "{v}");
    assert!(v["kept"].as_u64().unwrap() >= 20, "{v}");
    let bytes = v["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes <= 64 << 20, "{v}");
    // The status says how much golden-signal history the proxies' summaries made.
    let status = api_json(&cp, "/api/v1/status").await;
    let held = &status["telemetry"];
    assert_eq!(held["windowSeconds"], 3600, "{status}");
    assert!(held["seriesSlots"].as_u64().unwrap() > 0, "{status}");
    assert!(held["seconds"].as_u64().unwrap() < 3600, "{status}");
    caller.shutdown().await;
    api.shutdown().await;
    cp.shutdown().await;
}

/// The venv's Python with grpcio and the OpenTelemetry SDK; `None` (the test skips)
/// outside CI, a failure under it.
fn python(test: &str) -> Option<PathBuf> {
    skein_testkit::python::venv_python(
        "grpc, opentelemetry.sdk, opentelemetry.proto",
        true,
        &format!("{test} needs Python with grpcio and the OpenTelemetry SDK"),
    )
}

/// `GET path` on the control plane's HTTP API with its admin token, as JSON (a `200`).
async fn api_json(cp: &skein_control::server::RunningControl, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(cp.http).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        cp.http, cp.token
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    serde_json::from_str(body).unwrap()
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

#[tokio::test]
async fn spans_reach_a_third_party_otlp_receiver_with_their_attributes() {
    let Some(python) = python("the OTLP export test") else {
        return;
    };
    skein_testkit::init_tracing();
    let dir = TempDir::new("traces-receiver").unwrap();
    let out = dir.path().join("spans.jsonl");
    let receiver = Command::new(&python)
        .arg(script("otlp_receiver.py"))
        .arg("127.0.0.139:0")
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut receiver = Killed(receiver);
    let port = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(receiver.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim()
            .strip_prefix("listening ")
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let backend = skein_testkit::HttpBackend::start(SocketAddr::new(loopback(140), 0))
        .await
        .unwrap();
    let spec = MeshSpec::new(139, 140).service("web", backend.addr(), Protocol::Http);
    let collector = format!("http://127.0.0.139:{port}");
    let tracing = skein_model::TracingSpec {
        enabled: true,
        sampling_percent: 100.0,
        collector: Some(collector.clone()),
    };
    let mut server_config = spec.server_config();
    server_config.telemetry.tracing = tracing.clone();
    let server = RunningProxy::start(server_config).await.unwrap();
    let mut client_config = spec.client_config(server.addrs.inbound);
    client_config.telemetry.tracing = tracing;
    let client = RunningProxy::start(client_config).await.unwrap();
    let via = client.addrs.http_proxy.unwrap();
    let web = format!("http://web:{}/orders/7?secret=1", backend.addr().port());
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace}-b7ad6b7169203331-01");
    let (status, _, _) = send(
        via,
        "POST",
        &web,
        &[("traceparent", &tp), ("skein-request-id", "otlp-1")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    let mut spans: Vec<serde_json::Value> = Vec::new();
    eventually("the receiver has the three spans", SOON, async || {
        spans = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|s: &serde_json::Value| s["traceId"] == trace)
            .collect();
        spans.len() >= 3
    })
    .await
    .unwrap();
    let by_name: HashMap<&str, &serde_json::Value> = spans
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s))
        .collect();
    let out_span = by_name["outbound POST web"];
    let try_span = by_name["try 1 POST web"];
    // The callee's proxy names its own workload's service.
    let callee = server.ctx.config().workload.service.clone();
    let in_span = by_name[&*format!("inbound POST {callee}")];
    assert_eq!(out_span["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(try_span["parentSpanId"], out_span["spanId"]);
    assert_eq!(in_span["parentSpanId"], try_span["spanId"]);
    assert_eq!(
        (
            out_span["kind"].as_str(),
            try_span["kind"].as_str(),
            in_span["kind"].as_str()
        ),
        (
            Some("SPAN_KIND_INTERNAL"),
            Some("SPAN_KIND_CLIENT"),
            Some("SPAN_KIND_SERVER")
        )
    );
    let a = &in_span["attributes"];
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["url.path"], "/orders/7", "the query is never recorded");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["skein.request_id"], "otlp-1");
    assert_eq!(a["skein.direction"], "inbound");
    assert_eq!(
        a["skein.service"].as_str().unwrap().rsplit('/').next(),
        Some(&*callee)
    );
    assert_eq!(out_span["attributes"]["skein.tries"], 1);
    assert_eq!(
        out_span["resource"]["service.name"],
        client.ctx.config().workload.service.as_str()
    );
    assert_eq!(
        in_span["resource"]["service.name"],
        server.ctx.config().workload.service.as_str()
    );
    assert!(out_span["endTimeUnixNano"].as_u64() >= out_span["startTimeUnixNano"].as_u64());
    let sent = |p: &RunningProxy| {
        skein_proxy::metrics::sum_samples(
            &p.ctx.metrics.encode(),
            "skein_trace_spans_total",
            &["destination=\"collector\"", "result=\"sent\""],
        )
    };
    assert!(sent(&client) >= 2 && sent(&server) >= 1);
    client.shutdown().await;
    server.shutdown().await;
    drop(receiver);
}

#[tokio::test]
async fn a_collector_that_is_down_or_never_answers_costs_requests_nothing() {
    skein_testkit::init_tracing();
    // Accepts connections and never answers a byte.
    let hang = std::net::TcpListener::bind("127.0.0.159:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in hang.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    // Nothing listens here.
    let down = std::net::TcpListener::bind("127.0.0.159:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let backend = skein_testkit::HttpBackend::start(SocketAddr::new(loopback(163), 0))
        .await
        .unwrap();
    let spec = MeshSpec::new(159, 163).service("web", backend.addr(), Protocol::Http);
    let server = RunningProxy::start(spec.server_config()).await.unwrap();
    let client = RunningProxy::start(spec.client_config(server.addrs.inbound))
        .await
        .unwrap();
    let via = client.addrs.http_proxy.unwrap();
    let web = format!("http://web:{}/x", backend.addr().port());
    let set = |collector: Option<String>| {
        for p in [&client, &server] {
            let mut c = (*p.ctx.config()).clone();
            c.telemetry.tracing = skein_model::TracingSpec {
                enabled: true,
                sampling_percent: 100.0,
                collector: collector.clone(),
            };
            p.ctx.apply(c).unwrap();
        }
    };
    // Median latency of `n` requests on one connection; every one must succeed.
    let run = async |n: usize| {
        let mut sender = skein_testkit::client::h1(via).await.unwrap();
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let req = http::Request::get(&web)
                .body(skein_proxy::http::empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            skein_testkit::client::body_bytes(resp).await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        took[n / 2]
    };
    let dropped = |p: &RunningProxy, result: &str| {
        let want = format!("result=\"{result}\"");
        skein_proxy::metrics::sum_samples(
            &p.ctx.metrics.encode(),
            "skein_trace_spans_total",
            &["destination=\"collector\"", &want],
        )
    };
    set(None);
    run(50).await;
    let without = run(400).await;
    set(Some(format!("http://{hang_addr}")));
    let hanging = run(400).await;
    set(Some(format!("http://{down}")));
    let absent = run(400).await;
    set(None);
    let again = run(400).await;
    println!("median latency: no collector {without:?} / {again:?}, hanging {hanging:?}, down {absent:?}");
    // Noise allowed, a stall not: one export timeout is 2 s, a thousand times a request.
    let base = without.max(again);
    assert!(
        hanging < base * 3 + Duration::from_millis(1),
        "{hanging:?} vs {base:?}"
    );
    assert!(
        absent < base * 3 + Duration::from_millis(1),
        "{absent:?} vs {base:?}"
    );
    // The spans that could not go are counted, not kept.
    eventually("failed exports are counted", SOON, async || {
        dropped(&client, "dropped_failed") > 0 && dropped(&server, "dropped_failed") > 0
    })
    .await
    .unwrap();
    assert!(
        !held.lock().unwrap().is_empty(),
        "the exporter did reach the hanging collector"
    );
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_applications_sdk_spans_join_the_proxies_spans_in_skein_trace_show() {
    let Some(python) = python("the OpenTelemetry SDK test") else {
        return;
    };
    skein_testkit::init_tracing();
    let data = TempDir::new("traces-sdk").unwrap();
    let cp = control(204, data.path()).await;
    let otlp = cp.otlp.expect("the test control plane receives OTLP");
    // The application: Python's OpenTelemetry SDK, exporting to `skein control`.
    let app = Command::new(&python)
        .arg(script("traced_app.py"))
        .arg(SocketAddr::new(loopback(228), PORT).to_string())
        .arg("127.0.0.228:3128")
        .arg(format!("http://restaurant:{PORT}"))
        .arg(format!("http://{otlp}"))
        .spawn()
        .unwrap();
    let _app = Killed(app);
    let mesh = ThreeHops::start(&cp, [204, 228, 229]).await;
    let via = mesh.via;
    let trace = "5b8efff798038103d269b633813fc60c";
    let tp = format!("00-{trace}-eee19b7ec3c1b174-01");
    let (status, _, body) = send(
        via,
        "GET",
        &url("frontend", "menu"),
        &[("traceparent", &tp)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let spans = trace_when(&cp, data.path(), trace, |spans| {
        spans
            .iter()
            .filter(|s| s["source"] == "application")
            .count()
            >= 2
            && spans.len() >= 8
    })
    .await;
    // The application's server span is the frontend proxy's inbound span's child, and
    // its client span the parent of the frontend proxy's outbound span.
    let frontend_in = find(&spans, "default/frontend", "inbound GET frontend");
    let handle = find(&spans, "app:frontend", "handle /menu");
    let call = find(&spans, "app:frontend", "call restaurant");
    let frontend_out = find(&spans, "default/frontend", "outbound GET restaurant");
    assert_eq!(s(handle, "source"), "application");
    nests(handle, frontend_in);
    nests(call, handle);
    nests(frontend_out, call);
    let shown = cli(&cp, data.path(), &["trace", "show", trace]).await;
    println!("{}", shown.ok());
    assert!(shown.ok().contains("handle /menu"), "{}", shown.ok());
    mesh.shutdown().await;
    cp.shutdown().await;
}
