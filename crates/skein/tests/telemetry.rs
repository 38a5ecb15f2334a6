//! Golden signals end to end: requests through a meshed pair (mutual TLS, accounts from
//! certificates) are counted exactly on both proxies, labelled with who called whom;
//! latency histograms put percentiles where the backend's delays are; gRPC statuses come
//! from the trailers; an opaque TCP edge shows its bytes; paths never become labels; and
//! promtool accepts every exposition.

mod meshed;

use meshed::*;
use skein_model::Protocol;
use skein_proxy::metrics::sum_samples;
use skein_proxy::telemetry::Status;
use skein_proxy::RunningProxy;
use skein_testkit::control::{eventually, TempDir};
use skein_testkit::loopback;
use std::net::SocketAddr;
use std::time::Duration;

const GRPC_PORT: u16 = 18091;
const TCP_PORT: u16 = 18092;

/// Waits until `proxy` knows an endpoint of each of `services`.
async fn knows(proxy: &RunningProxy, services: &[&str]) {
    proxy.discover(services).await.unwrap();
    eventually("the caller learns its destinations", SOON, async || {
        let config = proxy.ctx.config();
        services.iter().all(|s| {
            config
                .destinations
                .iter()
                .any(|d| d.service == *s && !d.endpoints.is_empty())
        })
    })
    .await
    .unwrap();
}

/// Waits until the sum of `name` samples matching `want` on `proxy` reaches `n` (a
/// request is recorded when its response ends, a moment after the client has it), then
/// returns it, checked once more a moment later so that overcounting shows.
async fn settled(proxy: &RunningProxy, name: &str, want: &[&str], n: u64) -> u64 {
    let read = || sum_samples(&proxy.ctx.metrics.encode(), name, want);
    let _ = eventually("the count settles", Duration::from_secs(5), async || {
        read() >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    read()
}

/// Runs `promtool check metrics` on a text-format exposition and fails on any complaint.
fn promtool(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus; .ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool refused the exposition:\n{said}\n{text}"
    );
}

/// `GET /metrics` from `proxy`'s admin listener with `accept` (none: no header): the
/// `Content-Type` and the body.
async fn scrape(proxy: &RunningProxy, accept: Option<&str>) -> (String, String) {
    let mut sender = skein_testkit::client::h1(proxy.addrs.admin).await.unwrap();
    let mut req = http::Request::get("/metrics").header("host", "admin");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = sender
        .send_request(req.body(skein_proxy::http::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body = skein_testkit::client::body_bytes(resp).await.unwrap();
    (kind, String::from_utf8(body.to_vec()).unwrap())
}

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The `q` latency quantile of `proxy`'s requests in `direction` to `service` with
/// `status`, from the full-resolution histograms.
fn quantile_ms(proxy: &RunningProxy, inbound: bool, service: &str, q: f64) -> f64 {
    let mut merged = skein_proxy::telemetry::histogram::Snapshot::default();
    for (k, s) in proxy.ctx.metrics.telemetry.request_series_now() {
        let direction = matches!(k.direction, skein_proxy::metrics::Direction::Inbound);
        if direction == inbound && &*k.dst.name == service && k.status == Status::Code(200) {
            merged.add(&s.duration.snapshot());
        }
    }
    merged.quantile(q).unwrap().as_secs_f64() * 1e3
}

#[tokio::test]
async fn requests_and_edges_are_counted_exactly_with_who_called_whom() {
    skein_testkit::init_tracing();
    let dir = TempDir::new("telemetry").unwrap();
    let control = control(35, dir.path()).await;
    let docs = format!(
        "{}---\n\
         apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: echo}}\n\
         spec: {{selector: {{app: echo}}, ports: [{{port: {GRPC_PORT}, protocol: grpc}}]}}\n---\n\
         apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: db}}\n\
         spec: {{selector: {{app: db}}, ports: [{{port: {TCP_PORT}, protocol: tcp}}]}}\n",
        service_yaml("api")
    );
    apply(&control, &docs).await;
    let (_api, server) = workload(&control, 36, "api", None).await;
    let echo = skein_testkit::GrpcBackend::start(SocketAddr::new(loopback(38), GRPC_PORT))
        .await
        .unwrap();
    let echo_proxy = app_workload(&control, 38, "echo", echo.addr(), Protocol::Grpc).await;
    let db = skein_testkit::TcpEcho::start(SocketAddr::new(loopback(39), TCP_PORT))
        .await
        .unwrap();
    let db_proxy = app_workload(&control, 39, "db", db.addr(), Protocol::Tcp).await;
    let web = client_of(
        &control,
        37,
        "web",
        &[(GRPC_PORT, "echo", GRPC_PORT), (TCP_PORT, "db", TCP_PORT)],
    )
    .await;
    knows(&web, &["api", "echo", "db"]).await;
    let proxy = web.addrs.http_proxy.unwrap();

    // 25 fast requests, 10 that take 50 ms, 3 that fail with 503 at the app.
    for _ in 0..25 {
        assert_eq!(
            get(proxy, &format!("http://api:{PORT}/status/204"))
                .await
                .unwrap()
                .0,
            204
        );
    }
    for _ in 0..10 {
        let (status, _) = get(proxy, &format!("http://api:{PORT}/slow?ms=50"))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            get(proxy, &format!("http://api:{PORT}/status/503"))
                .await
                .unwrap()
                .0,
            503
        );
    }
    let edge = [
        "tls=\"true\"",
        "src_namespace=\"default\"",
        "src_account=\"web\"",
        "dst_namespace=\"default\"",
        "dst_service=\"api\"",
    ];
    let with = |more: &[&'static str]| -> Vec<&'static str> {
        edge.iter().copied().chain(more.iter().copied()).collect()
    };
    let out = with(&["direction=\"outbound\""]);
    let inb = with(&["direction=\"inbound\""]);
    assert_eq!(
        settled(&web, "skein_requests_total", &out, 38).await,
        38,
        "the caller's proxy"
    );
    assert_eq!(
        settled(&server, "skein_requests_total", &inb, 38).await,
        38,
        "the callee's proxy"
    );
    for (status, n) in [("204", 25), ("200", 10), ("503", 3)] {
        let code = format!("status_code=\"{status}\"");
        let mut want = out.clone();
        want.push(&code);
        assert_eq!(
            sum_samples(&web.ctx.metrics.encode(), "skein_requests_total", &want),
            n
        );
    }
    assert_eq!(
        settled(&web, "skein_response_latency_seconds_count", &out, 38).await,
        38,
        "one latency observation per request"
    );

    // Latency truth: the 50 ms requests read 50–60 ms at p50 on both sides; p99 stays
    // in the buckets just above (to 100 ms: a test run in parallel with others can hold a
    // response back a few ms past a bucket bound).
    for (side, inbound) in [(&web, false), (&server, true)] {
        let (p50, p99) = (
            quantile_ms(side, inbound, "api", 0.5),
            quantile_ms(side, inbound, "api", 0.99),
        );
        assert!(
            (50.0..=60.0).contains(&p50),
            "p50 {p50} ms (inbound: {inbound})"
        );
        assert!(
            (50.0..=100.0).contains(&p99),
            "p99 {p99} ms (inbound: {inbound})"
        );
    }

    // gRPC: the status comes from the trailers, on both proxies.
    let mut grpc = skein_testkit::pb::echo_client::EchoClient::connect(format!(
        "http://{}",
        web.addrs.upstreams[0]
    ))
    .await
    .unwrap();
    let call = |fail| skein_testkit::pb::EchoRequest {
        message: "hi".into(),
        count: 0,
        fail_with_code: fail,
    };
    grpc.unary(call(0)).await.unwrap();
    let refused = grpc.unary(call(5)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    for (side, dir) in [(&web, "outbound"), (&echo_proxy, "inbound")] {
        for (grpc_status, n) in [("0", 1), ("5", 1)] {
            let d = format!("direction=\"{dir}\"");
            let g = format!("grpc_status=\"{grpc_status}\"");
            let want = ["dst_service=\"echo\"", "status_code=\"200\"", &d, &g];
            assert_eq!(
                settled(side, "skein_requests_total", &want, n).await,
                n,
                "{dir} grpc-status {grpc_status}"
            );
        }
    }

    // An opaque TCP edge: opened, closed, its bytes each way.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(web.addrs.upstreams[1])
            .await
            .unwrap();
        conn.write_all(&[7u8; 1000]).await.unwrap();
        let mut back = [0u8; 1000];
        conn.read_exact(&mut back).await.unwrap();
        conn.shutdown().await.unwrap();
        let _ = conn.read(&mut back).await;
    }
    let tcp = [
        "direction=\"outbound\"",
        "src_account=\"web\"",
        "dst_service=\"db\"",
        "tls=\"true\"",
    ];
    assert_eq!(
        settled(&web, "skein_tcp_edge_closed_total", &tcp, 1).await,
        1
    );
    assert_eq!(
        settled(&web, "skein_tcp_sent_bytes_total", &tcp, 1000).await,
        1000
    );
    assert_eq!(
        settled(&web, "skein_tcp_received_bytes_total", &tcp, 1000).await,
        1000
    );
    let tcp_in = [
        "direction=\"inbound\"",
        "src_account=\"web\"",
        "dst_service=\"db\"",
    ];
    assert_eq!(
        settled(&db_proxy, "skein_tcp_sent_bytes_total", &tcp_in, 1000).await,
        1000
    );
    assert_eq!(
        sum_samples(
            &web.ctx.metrics.encode(),
            "skein_requests_total",
            &["dst_service=\"db\""]
        ),
        0,
        "a tunnel is an edge, not a request"
    );

    // Standard tools accept every exposition: the text format, asked for by nothing in
    // particular, passes promtool without a complaint; Prometheus gets OpenMetrics.
    for p in [&web, &server, &echo_proxy, &db_proxy] {
        let (kind, text) = scrape(p, None).await;
        assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            text.contains("# TYPE skein_requests_total counter"),
            "{text}"
        );
        promtool(&text);
        let (kind, open) = scrape(p, Some(PROMETHEUS_ACCEPT)).await;
        assert_eq!(
            kind,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE skein_requests counter"), "{open}");
    }
    control.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_paths_add_no_series() {
    skein_testkit::init_tracing();
    let dir = TempDir::new("telemetry-paths").unwrap();
    let control = control(40, dir.path()).await;
    apply(&control, &service_yaml("api")).await;
    let (_api, server) = workload(&control, 41, "api", None).await;
    let web = client_of(&control, 42, "web", &[]).await;
    knows(&web, &["api"]).await;
    let proxy = web.addrs.http_proxy.unwrap();
    let mut conn = skein_testkit::client::h1(proxy).await.unwrap();
    for i in 0..10_000 {
        let req = http::Request::get(format!("http://api:{PORT}/item/{i}?q={i}"))
            .body(skein_proxy::http::empty())
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        skein_testkit::client::body_bytes(resp).await.unwrap();
    }
    let want = ["direction=\"outbound\"", "dst_service=\"api\""];
    assert_eq!(
        settled(&web, "skein_requests_total", &want, 10_000).await,
        10_000
    );
    for p in [&web, &server] {
        let (requests, tcp) = p.ctx.metrics.telemetry.series();
        assert_eq!(
            (requests, tcp),
            (1, 0),
            "one series: paths are never labels"
        );
        let text = p.ctx.metrics.encode();
        assert!(!text.contains("/item/"), "no path in the exposition");
        assert!(text.len() < 64 * 1024, "{} bytes of metrics", text.len());
    }
    control.shutdown().await;
}

#[tokio::test]
async fn idle_series_go_and_come_back_from_zero() {
    skein_testkit::init_tracing();
    let backend = skein_testkit::HttpBackend::start(SocketAddr::new(loopback(69), 0))
        .await
        .unwrap();
    let spec = skein_testkit::MeshSpec::new(68, 69).service("web", backend.addr(), Protocol::Http);
    let idle = |mut c: skein_model::ProxyConfig| {
        // Long enough that a slow moment between two checks does not let the series go.
        c.telemetry.idle_series = Duration::from_secs(3);
        c.validate("test").unwrap();
        c
    };
    let server = RunningProxy::start(idle(spec.server_config()))
        .await
        .unwrap();
    let client = RunningProxy::start(idle(spec.client_config(server.addrs.inbound)))
        .await
        .unwrap();
    let upstream = client.addrs.upstreams[0];
    let call = async || {
        let mut conn = skein_testkit::client::h1(upstream).await.unwrap();
        let req = http::Request::get("/menu")
            .header("host", "web")
            .body(skein_proxy::http::empty())
            .unwrap();
        let resp = conn.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        skein_testkit::client::body_bytes(resp).await.unwrap();
    };
    // On the server's proxy, calls are to its own workload's service.
    let web = ["status_code=\"200\""];
    for _ in 0..3 {
        call().await;
    }
    for p in [&client, &server] {
        assert_eq!(settled(p, "skein_requests_total", &web, 3).await, 3);
    }
    // Idle for 3 s (telemetry.idleSeries), the series go from /metrics on both sides.
    for p in [&client, &server] {
        eventually("the idle series go", Duration::from_secs(20), async || {
            let (_, text) = scrape(p, None).await;
            !text.contains("skein_requests_total{")
                && meshed::metric(&text, "skein_telemetry_evicted_series_total") >= 1.0
        })
        .await
        .unwrap();
        assert_eq!(p.ctx.metrics.telemetry.series(), (0, 0));
        let (_, text) = scrape(p, None).await;
        promtool(&text);
    }
    // Traffic again: a new series, counted from zero.
    call().await;
    for p in [&client, &server] {
        assert_eq!(settled(p, "skein_requests_total", &web, 1).await, 1);
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_configuration_built_in_code_is_refused_as_a_file_would_be() {
    let backend = SocketAddr::new(loopback(69), 18093);
    let spec = skein_testkit::MeshSpec::new(68, 69).service("web", backend, Protocol::Http);
    let mut config = spec.server_config();
    config.telemetry.idle_series = Duration::from_millis(100);
    let Err(e) = RunningProxy::start(config).await else {
        panic!("a proxy started with telemetry.idleSeries 100ms");
    };
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let said = e.to_string();
    assert!(
        said.contains("telemetry.idleSeries") && said.contains("at least twice"),
        "{said}"
    );
}

/// `skein stat`/`edges` as JSON rows (retried until `done` holds for them, since proxies
/// report every 200 ms in tests).
async fn rows(
    control: &skein_control::server::RunningControl,
    dir: &std::path::Path,
    args: &[&str],
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    let _ = eventually(
        "the control plane's view settles",
        Duration::from_secs(10),
        async || {
            let out = cli(control, dir, args).await;
            let json: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
            last = json["rows"].as_array().cloned().unwrap_or_default();
            done(&last)
        },
    )
    .await;
    // Settled: a moment later nothing more arrives (no double counting).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = cli(control, dir, args).await;
    let json: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    let again = json["rows"].as_array().cloned().unwrap_or_default();
    // Rates move with the clock (the covered part of the window grows); counts must not.
    let counts = |rows: &[serde_json::Value]| -> Vec<serde_json::Value> {
        rows.iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().map(|o| o.remove("rps"));
                r
            })
            .collect()
    };
    assert_eq!(
        counts(&again),
        counts(&last),
        "the view changed after it settled"
    );
    last
}

fn row<'a>(rows: &'a [serde_json::Value], key: &str, name: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r[key] == name)
        .unwrap_or_else(|| panic!("no row {key}={name} in {rows:#?}"))
}

#[tokio::test]
async fn stat_and_edges_show_exactly_what_the_proxies_saw() {
    skein_testkit::init_tracing();
    let dir = TempDir::new("telemetry-stat").unwrap();
    let control = control(43, dir.path()).await;
    let docs = format!(
        "{}---\n{}---\n\
         apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: db}}\n\
         spec: {{selector: {{app: db}}, ports: [{{port: {TCP_PORT}, protocol: tcp}}]}}\n---\n\
         apiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: slow}}\n\
         spec: {{targetRef: {{name: slow}}, rules: [{{from: [{{service: web}}]}}]}}\n",
        service_yaml("api"),
        service_yaml("slow"),
    );
    apply(&control, &docs).await;
    // Two replicas of api, one of slow, one of db.
    let (_a1, _pa1) = workload_as(&control, 44, "api-1", "api", &[], None).await;
    let (_a2, _pa2) = workload_as(&control, 45, "api-2", "api", &[], None).await;
    let (_s, _ps) = workload(&control, 46, "slow", None).await;
    let db = skein_testkit::TcpEcho::start(SocketAddr::new(loopback(47), TCP_PORT))
        .await
        .unwrap();
    let _pdb = app_workload(&control, 47, "db", db.addr(), Protocol::Tcp).await;
    let web = client_of(&control, 48, "web", &[(TCP_PORT, "db", TCP_PORT)]).await;
    let intruder = client_of(&control, 49, "intruder", &[]).await;
    for p in [&web, &intruder] {
        p.discover(&["api", "slow", "db"]).await.unwrap();
    }
    eventually("the callers learn both api endpoints", SOON, async || {
        let ok = |p: &RunningProxy| {
            let c = p.ctx.config();
            let n = |s: &str| {
                c.destinations
                    .iter()
                    .find(|d| d.service == s)
                    .map_or(0, |d| d.endpoints.len())
            };
            n("api") == 2 && n("slow") == 1 && n("db") == 1
        };
        ok(&web) && ok(&intruder)
    })
    .await
    .unwrap();
    let (from_web, from_intruder) = (
        web.addrs.http_proxy.unwrap(),
        intruder.addrs.http_proxy.unwrap(),
    );

    // Known call patterns: web → api (90 fast, 10 of 50 ms, 3 failures), web → slow
    // (20 of 50 ms), intruder → slow (5, denied), web → db (one TCP connection).
    for _ in 0..90 {
        assert_eq!(
            get(from_web, &format!("http://api:{PORT}/status/204"))
                .await
                .unwrap()
                .0,
            204
        );
    }
    for _ in 0..10 {
        assert_eq!(
            get(from_web, &format!("http://api:{PORT}/slow?ms=50"))
                .await
                .unwrap()
                .0,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            get(from_web, &format!("http://api:{PORT}/status/503"))
                .await
                .unwrap()
                .0,
            503
        );
    }
    for _ in 0..20 {
        assert_eq!(
            get(from_web, &format!("http://slow:{PORT}/slow?ms=50"))
                .await
                .unwrap()
                .0,
            200
        );
    }
    for _ in 0..5 {
        assert_eq!(
            get(from_intruder, &format!("http://slow:{PORT}/"))
                .await
                .unwrap()
                .0,
            403
        );
    }
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(web.addrs.upstreams[0])
            .await
            .unwrap();
        conn.write_all(&[1u8; 4096]).await.unwrap();
        let mut back = vec![0u8; 4096];
        conn.read_exact(&mut back).await.unwrap();
        conn.shutdown().await.unwrap();
        let _ = conn.read(&mut back).await;
    }

    let d = dir.path();
    let services = rows(&control, d, &["stat", "services", "-o", "json"], |rows| {
        let n = |name: &str| {
            rows.iter()
                .find(|r| r["name"] == name)
                .and_then(|r| r["requests"].as_u64())
        };
        n("api") == Some(103)
            && n("slow") == Some(25)
            && rows
                .iter()
                .any(|r| r["name"] == "db" && r["tcp_connections"] == 1)
    })
    .await;
    let api = row(&services, "name", "api");
    assert_eq!(
        api["requests"], 103,
        "exactly the requests sent, both replicas merged"
    );
    let success = api["success_rate"].as_f64().unwrap();
    assert!((success - 100.0 / 103.0).abs() < 1e-9, "{success}");
    let p50 = api["p50_ms"].as_f64().unwrap();
    let p99 = api["p99_ms"].as_f64().unwrap();
    assert!(p50 < 10.0, "most calls are fast: p50 {p50} ms");
    assert!(
        (50.0..=60.0).contains(&p99),
        "the slowest tenth: p99 {p99} ms"
    );
    assert_eq!(api["mtls"], true);
    let slow = row(&services, "name", "slow");
    assert_eq!(
        (slow["requests"].as_u64(), slow["denied"].as_u64()),
        (Some(25), Some(5))
    );
    let p99 = slow["p99_ms"].as_f64().unwrap();
    assert!((50.0..=60.0).contains(&p99), "p99 {p99} ms");
    let db_row = row(&services, "name", "db");
    assert_eq!(db_row["tcp_sent_bytes"], 4096);
    assert_eq!(db_row["tcp_received_bytes"], 4096);

    // Workloads: the two api replicas split the 103.
    let workloads = rows(&control, d, &["stat", "workloads", "-o", "json"], |rows| {
        rows.iter()
            .filter(|r| r["service"] == "api")
            .filter_map(|r| r["requests"].as_u64())
            .sum::<u64>()
            == 103
    })
    .await;
    let (w1, w2) = (
        row(&workloads, "name", "api-1"),
        row(&workloads, "name", "api-2"),
    );
    assert_eq!(
        w1["requests"].as_u64().unwrap() + w2["requests"].as_u64().unwrap(),
        103
    );
    assert!(w1["requests"].as_u64().unwrap() > 0 && w2["requests"].as_u64().unwrap() > 0);

    // Latency truth on its own: a service whose only allowed calls sleep 50 ms.
    let slow_only = rows(
        &control,
        d,
        &["stat", "services", "slow", "-o", "json"],
        |rows| rows.len() == 1,
    )
    .await;
    assert_eq!(slow_only.len(), 1, "NAME filters");
    let edges = rows(&control, d, &["edges", "-o", "json"], |rows| {
        rows.len() == 4
    })
    .await;
    let pairs: Vec<(String, String)> = edges
        .iter()
        .map(|e| {
            (
                e["src"].as_str().unwrap().to_string(),
                e["dst"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("intruder", "slow"),
            ("web", "api"),
            ("web", "db"),
            ("web", "slow")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "exactly the pairs that talked"
    );
    let denied = &edges[0];
    assert_eq!(
        (denied["requests"].as_u64(), denied["denied"].as_u64()),
        (Some(5), Some(5))
    );
    let web_slow = &edges[3];
    assert_eq!(
        (web_slow["requests"].as_u64(), web_slow["denied"].as_u64()),
        (Some(20), Some(0))
    );
    let p50 = web_slow["p50_ms"].as_f64().unwrap();
    let p99 = web_slow["p99_ms"].as_f64().unwrap();
    assert!(
        (50.0..=60.0).contains(&p50) && (50.0..=60.0).contains(&p99),
        "50 ms calls: p50 {p50}, p99 {p99}"
    );
    assert!(
        edges.iter().all(|e| e["mtls"] == true),
        "every edge is mutual TLS"
    );
    assert_eq!(
        edges[2]["tcp_sent_bytes"], 4096,
        "the TCP edge shows its bytes"
    );

    // Prometheus finds every proxy through the control plane: promtool runs the
    // HTTP service discovery against it with the admin token.
    let token = std::fs::read_to_string(d.join("admin.token")).unwrap();
    let config = d.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "scrape_configs:\n- job_name: skein\n  http_sd_configs:\n  - url: http://{}/api/v1/prometheus/targets\n    authorization: {{type: Bearer, credentials: {}}}\n",
            control.http,
            token.trim()
        ),
    )
    .unwrap();
    // The control plane runs on this test's runtime: wait for promtool without blocking it.
    let sd = tokio::process::Command::new("promtool")
        .args(["check", "service-discovery", "--timeout", "3s"])
        .arg(&config)
        .arg("skein")
        .output()
        .await
        .expect("promtool is installed");
    let found = String::from_utf8_lossy(&sd.stdout);
    assert!(
        sd.status.success(),
        "{found}{}",
        String::from_utf8_lossy(&sd.stderr)
    );
    for (proxy, service) in [(&web, "web"), (&intruder, "intruder"), (&_pdb, "db")] {
        let admin = proxy.addrs.admin.to_string();
        assert!(
            found.contains(&admin),
            "{service}'s admin {admin} in:\n{found}"
        );
    }
    assert!(found.contains("\"skein_service\": \"api\""), "{found}");

    // The map: every service a node, every pair an edge, the denied one drawn apart;
    // Graphviz renders the DOT.
    let map = cli(&control, d, &["map", "--format", "json"]).await;
    let map: serde_json::Value = serde_json::from_str(map.ok()).unwrap();
    let edges: Vec<(&str, &str, &str, &str)> = map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap();
            (s("src"), s("dst"), s("protocol"), s("authorization"))
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("intruder", "slow", "http", "denied"),
            ("web", "api", "http", "allowed"),
            ("web", "db", "tcp", "allowed"),
            ("web", "slow", "http", "allowed"),
        ]
    );
    let nodes: Vec<&str> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["api", "db", "intruder", "slow", "web"]);
    let dot_text = cli(&control, d, &["map", "--format", "dot"]).await;
    let mut render = tokio::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz is installed (apt-get install graphviz; .ci/run does)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = render.stdin.take().unwrap();
        stdin.write_all(dot_text.ok().as_bytes()).await.unwrap();
    }
    let svg = render.wait_with_output().await.unwrap();
    assert!(
        svg.status.success(),
        "dot refused:\n{}\n{}",
        dot_text.ok(),
        String::from_utf8_lossy(&svg.stderr)
    );
    let svg = String::from_utf8_lossy(&svg.stdout);
    assert!(
        svg.contains("<svg") && svg.contains("default/intruder") && svg.contains("denied"),
        "{svg}"
    );
    let mermaid = cli(&control, d, &["map", "--format", "mermaid"]).await;
    assert!(
        mermaid.ok().contains("default_intruder -.->|"),
        "{}",
        mermaid.ok()
    );

    // The tables people read.
    let table = cli(&control, d, &["stat", "services"]).await;
    let text = table.ok();
    assert!(text.starts_with("NAMESPACE   NAME"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("default     api ") && l.contains("97.09%")),
        "{text}"
    );
    let table = cli(&control, d, &["edges", "slow", "-o", "wide"]).await;
    assert!(table.ok().contains("default/intruder"), "{}", table.ok());
    let refused = cli(&control, d, &["stat", "services", "--window", "2h"]).await;
    assert!(
        refused.failed().contains("10s to 1h"),
        "{}",
        refused.failed()
    );
    let refused = cli(&control, d, &["stat", "pods"]).await;
    assert!(
        refused
            .failed()
            .contains("use services, workloads, routes or rules"),
        "{}",
        refused.failed()
    );
    control.shutdown().await;
}

/// One exchange of the observed traffic: web's HTTP calls to api and a TCP round trip to
/// db. Returns the HTTP statuses and whether the TCP echo came back.
async fn observed_traffic(web: &RunningProxy) -> (Vec<u16>, bool) {
    let proxy = web.addrs.http_proxy.unwrap();
    let mut statuses = Vec::new();
    for (method, path) in [
        ("GET", "/menu/1"),
        ("GET", "/menu/2"),
        ("GET", "/about"),
        ("POST", "/orders"),
    ] {
        let url = format!("http://api:{PORT}{path}");
        statuses.push(send(proxy, method, &url, &[]).await.unwrap().0);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(web.addrs.upstreams[0])
        .await
        .unwrap();
    let echoed = async {
        conn.write_all(b"ledger line\n").await.ok()?;
        let mut back = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back))
            .await
            .ok()?
            .ok()?;
        Some(&back == b"ledger line\n")
    }
    .await
    .unwrap_or(false);
    (statuses, echoed)
}

/// Applies `yaml` with the CLI, then waits until `proxy` holds `policies` policies and
/// the default `default`.
async fn apply_and_wait(
    control: &skein_control::server::RunningControl,
    dir: &std::path::Path,
    yaml: &str,
    proxy: &RunningProxy,
    policies: usize,
    default: skein_model::resource::PolicyAction,
) {
    let file = dir.join(format!("apply-{}.yaml", policies));
    std::fs::write(&file, yaml).unwrap();
    let out = cli(control, dir, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.success(), "{}", out.failed());
    eventually("the policies reach the proxy", SOON, async || {
        let c = proxy.ctx.config();
        c.authorization.policies.len() == policies && c.authorization.default == default
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn suggested_policies_take_an_audited_mesh_to_deny_without_breaking_it() {
    use skein_model::resource::PolicyAction;
    skein_testkit::init_tracing();
    let dir = TempDir::new("telemetry-suggest").unwrap();
    let d = dir.path();
    let control = control(50, d).await;
    let mesh = |default: &str| {
        format!("apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{defaultPolicy: {default}}}\n")
    };
    let docs = format!(
        "{}---\n{}---\n\
         apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: db}}\n\
         spec: {{selector: {{app: db}}, ports: [{{port: {TCP_PORT}, protocol: tcp}}]}}\n",
        mesh("audit"),
        service_yaml("api"),
    );
    apply(&control, &docs).await;
    let (_api, api_proxy) = workload(&control, 51, "api", None).await;
    let db = skein_testkit::TcpEcho::start(SocketAddr::new(loopback(52), TCP_PORT))
        .await
        .unwrap();
    let db_proxy = app_workload(&control, 52, "db", db.addr(), Protocol::Tcp).await;
    let web = client_of(&control, 53, "web", &[(TCP_PORT, "db", TCP_PORT)]).await;
    let intruder = client_of(&control, 54, "intruder", &[]).await;
    knows(&web, &["api", "db"]).await;
    knows(&intruder, &["api"]).await;
    let audited = |p: &RunningProxy| {
        sum_samples(
            &p.ctx.metrics.encode(),
            "skein_authz_decisions_total",
            &["decision=\"audited\""],
        )
    };

    // Observe: under audit everything passes, and every decision is a would-be denial.
    let ok = (vec![200, 200, 200, 200], true);
    assert_eq!(observed_traffic(&web).await, ok);
    assert!(audited(&api_proxy) >= 4 && audited(&db_proxy) >= 1);

    // Suggest.
    let mut yaml = String::new();
    eventually("the control plane saw the pathways", SOON, async || {
        let out = cli(&control, d, &["policy", "suggest", "--window", "10m"]).await;
        yaml = out.ok().to_string();
        yaml.contains("name: api-observed")
            && yaml.contains("name: db-observed")
            && yaml.contains("/menu/*")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{yaml}"));
    assert!(
        yaml.contains("# default/web: "),
        "a comment per rule:\n{yaml}"
    );
    assert!(
        yaml.contains("methods: [GET]") && yaml.contains("methods: [POST]"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("intruder"),
        "only callers that called:\n{yaml}"
    );
    // The control plane counts the would-be denials per caller, as the proxies did.
    let mut edges = serde_json::Value::Null;
    eventually(
        "the audited counts reached the control plane",
        SOON,
        async || {
            let out = cli(&control, d, &["edges", "--window", "10m", "-o", "json"]).await;
            edges = serde_json::from_str(out.ok()).unwrap_or_default();
            let audited = |dst: &str| {
                edges["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["src"] == "web" && r["dst"] == dst)
                    .and_then(|r| r["audited"].as_u64())
                    .unwrap_or(0)
            };
            audited("api") >= 4 && audited("db") >= 1
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {edges}"));
    let wide = cli(&control, d, &["edges", "--window", "10m", "-o", "wide"]).await;
    assert!(wide.ok().contains("AUDITED"), "{}", wide.ok());

    // Apply it while still auditing: the observed traffic raises no more audits.
    apply_and_wait(&control, d, &yaml, &api_proxy, 1, PolicyAction::Audit).await;
    let before = (audited(&api_proxy), audited(&db_proxy));
    assert_eq!(observed_traffic(&web).await, ok);
    assert_eq!(
        (audited(&api_proxy), audited(&db_proxy)),
        before,
        "zero would-be denials"
    );

    // Deny by default: the observed traffic still succeeds, anything else is refused.
    apply_and_wait(
        &control,
        d,
        &mesh("deny"),
        &api_proxy,
        1,
        PolicyAction::Deny,
    )
    .await;
    assert_eq!(
        observed_traffic(&web).await,
        ok,
        "every observed pathway still works"
    );
    let from_intruder = intruder.addrs.http_proxy.unwrap();
    let refused = send(
        from_intruder,
        "GET",
        &format!("http://api:{PORT}/menu/1"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(refused.0, 403, "a new caller is denied");
    let from_web = web.addrs.http_proxy.unwrap();
    for (method, path) in [("DELETE", "/menu/1"), ("GET", "/admin")] {
        let r = send(from_web, method, &format!("http://api:{PORT}{path}"), &[])
            .await
            .unwrap();
        assert_eq!(r.0, 403, "{method} {path} was never observed");
    }
    control.shutdown().await;
}

#[tokio::test]
async fn tap_shows_matching_requests_only_never_header_values_and_stops_with_its_client() {
    use tokio::io::AsyncBufReadExt;
    skein_testkit::init_tracing();
    let dir = TempDir::new("telemetry-tap").unwrap();
    let d = dir.path();
    let control = control(55, d).await;
    apply(&control, &service_yaml("api")).await;
    let (_api, api_proxy) = workload(&control, 56, "api", None).await;
    let web = client_of(&control, 57, "web", &[]).await;
    knows(&web, &["api"]).await;
    let tapping = |p: &RunningProxy| p.ctx.metrics.telemetry.taps.count();
    assert_eq!((tapping(&web), tapping(&api_proxy)), (0, 0));

    // `skein tap --to api --path /menu` in the background.
    let (server, data) = (control.http.to_string(), d.display().to_string());
    let mut tap = tokio::process::Command::new(BIN)
        .args([
            "tap",
            "--to",
            "api",
            "--path",
            "/menu",
            "--json",
            "--server",
            &server,
            "--data-dir",
            &data,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("both proxies tap", SOON, async || {
        tapping(&web) == 1 && tapping(&api_proxy) == 1
    })
    .await
    .unwrap();

    let proxy = web.addrs.http_proxy.unwrap();
    let secret = [
        ("authorization", "Bearer secret-header-value"),
        ("x-api-key", "another-secret"),
    ];
    for i in 0..5 {
        let url = format!("http://api:{PORT}/menu/{i}?token=query-secret");
        assert_eq!(send(proxy, "GET", &url, &secret).await.unwrap().0, 200);
    }
    for _ in 0..3 {
        let url = format!("http://api:{PORT}/about");
        assert_eq!(send(proxy, "GET", &url, &secret).await.unwrap().0, 200);
    }
    // Each matching request is seen twice: leaving web's proxy and entering api's.
    let mut lines = tokio::io::BufReader::new(tap.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    while events.len() < 10 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("tap events arrive")
            .unwrap()
            .expect("tap keeps running");
        events.push(line);
    }
    // Nothing more arrives: the /about requests matched nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), lines.next_line())
            .await
            .is_err(),
        "only matching requests"
    );
    for line in &events {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(e["path"].as_str().unwrap().starts_with("/menu/"), "{line}");
        assert_eq!(
            (e["src"].as_str(), e["dst"].as_str()),
            (Some("default/web"), Some("default/api"))
        );
        assert_eq!(e["status"], 200);
        assert!(
            !line.contains("secret"),
            "no header value and no query string: {line}"
        );
    }
    let inbound = events
        .iter()
        .filter(|l| l.contains("\"direction\":\"inbound\""))
        .count();
    assert_eq!(inbound, 5);

    // The client goes: every proxy stops tapping.
    tap.kill().await.unwrap();
    eventually("the proxies stop tapping", SOON, async || {
        tapping(&web) == 0 && tapping(&api_proxy) == 0
    })
    .await
    .unwrap();
    assert_eq!(control.taps.subscribers(), 0);
    // And a bad filter is refused, saying what is accepted.
    let refused = cli(&control, d, &["tap", "--status", "6xx"]).await;
    assert!(
        refused.failed().contains("use 1xx, 2xx, 3xx, 4xx or 5xx"),
        "{}",
        refused.failed()
    );
    control.shutdown().await;
}
