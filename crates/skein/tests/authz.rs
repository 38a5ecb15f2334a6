//! Authorization end to end: a real control plane pushing AuthorizationPolicies and the
//! mesh default, real proxies joined to it deciding on the caller's verified identity, and
//! real HTTP/1.1, gRPC and TCP clients and servers that show who got through.
//!
//! Addresses: 127.0.0.230–254.

mod meshed;

use meshed::*;
use skein_control::server::RunningControl;
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::RunningProxy;
use skein_testkit::control::{eventually, TempDir};
use skein_testkit::pb::echo_client::EchoClient;
use skein_testkit::pb::EchoRequest;
use skein_testkit::{loopback, GrpcBackend, MeshSpec};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GRPC_PORT: u16 = 50051;
const TCP_PORT: u16 = 19000;
const RESERVATION: &str = "spiffe://skein.local/ns/default/sa/reservation";
const FRONTEND: &str = "spiffe://skein.local/ns/default/sa/frontend";

fn mesh(default_policy: &str) -> String {
    format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{defaultPolicy: {default_policy}}}\n"
    )
}

fn service(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "---\napiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{port: {port}, protocol: {protocol}}}]}}\n"
    )
}

fn policy(name: &str, target: &str, action: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: skein.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\n\
         spec: {{targetRef: {{name: {target}}}, action: {action}, rules: {rules}}}\n"
    )
}

/// A proxy for `service` on 127.0.0.`host` serving application ports `ports` (their
/// servers already listen on 127.0.0.`host`).
async fn server(
    control: &RunningControl,
    host: u8,
    service: &str,
    ports: &[(u16, Protocol)],
) -> RunningProxy {
    let mut spec = MeshSpec::new(host, host);
    for (port, protocol) in ports {
        spec = spec.service(service, SocketAddr::new(loopback(host), *port), *protocol);
    }
    let mut config: ProxyConfig = spec.server_config();
    config.workload.name = format!("{service}-1");
    config.workload.service = service.into();
    config.inbound.listen = SocketAddr::new(loopback(host), 4143);
    let join = join(control, service, config.inbound.listen).await;
    RunningProxy::start_with_control(config, Some(join))
        .await
        .unwrap()
}

/// A TCP server on `addr` that answers every connection with `ledger\n` and counts them.
async fn tcp_server(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = s.write_all(b"ledger\n").await;
                let mut sink = [0u8; 64];
                let _ = s.read(&mut sink).await;
            });
        }
    });
    accepted
}

/// Connects through `upstream`, sends a line, returns what came back before the close.
async fn tcp_exchange(upstream: SocketAddr) -> String {
    let mut s = TcpStream::connect(upstream).await.unwrap();
    let _ = s.write_all(b"hello\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

fn decisions(proxy: &RunningProxy, decision: &str, source: &str, policy: &str) -> f64 {
    metric(
        &proxy.ctx.metrics.encode(),
        &format!(
            "skein_authz_decisions_total{{decision=\"{decision}\",source=\"{source}\",target=\"restaurant\",policy=\"{policy}\"}}"
        ),
    )
}

fn restaurant_url(path: &str) -> String {
    format!("http://restaurant:{PORT}{path}")
}

#[tokio::test]
async fn deny_by_default_lets_through_only_the_named_pathway() {
    skein_testkit::init_tracing();
    let data = TempDir::new("authz-seed").unwrap();
    let control = control(230, data.path()).await;
    apply(
        &control,
        &format!(
            "{}{}{}{}{}{}",
            mesh("deny"),
            service("restaurant", PORT, "http"),
            service("payments", PORT, "http"),
            service("ledger", TCP_PORT, "tcp"),
            service("echo", GRPC_PORT, "grpc"),
            policy(
                "restaurant",
                "restaurant",
                "allow",
                "[{from: [{service: reservation}]}]"
            ),
        ),
    )
    .await;
    let (restaurant_app, restaurant) = workload(&control, 231, "restaurant", None).await;
    let (payments_app, _payments) = workload(&control, 232, "payments", None).await;
    let ledger_accepts = tcp_server(SocketAddr::new(loopback(233), TCP_PORT)).await;
    let _ledger = server(&control, 233, "ledger", &[(TCP_PORT, Protocol::Tcp)]).await;
    let echo = GrpcBackend::start(SocketAddr::new(loopback(234), GRPC_PORT))
        .await
        .unwrap();
    let _echo = server(&control, 234, "echo", &[(GRPC_PORT, Protocol::Grpc)]).await;
    let upstreams = [(19001, "ledger", TCP_PORT), (19002, "echo", GRPC_PORT)];
    let reservation = client_of(&control, 235, "reservation", &upstreams).await;
    let frontend = client_of(&control, 236, "frontend", &upstreams).await;
    let (via_reservation, via_frontend) = (
        reservation.addrs.http_proxy.unwrap(),
        frontend.addrs.http_proxy.unwrap(),
    );

    // reservation → restaurant: the one allowed pathway.
    until_ok(via_reservation, &restaurant_url("/menu")).await;
    assert!(decisions(&restaurant, "allowed", RESERVATION, "default/restaurant") >= 1.0);

    // frontend → restaurant: 403 naming the decision; the app never sees it.
    let (status, head, body) = send(via_frontend, "GET", &restaurant_url("/from-frontend"), &[])
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(FRONTEND) && body.contains("AuthorizationPolicy default/restaurant"),
        "{body}"
    );
    assert!(
        body.contains("denied: not allowed by AuthorizationPolicy default/restaurant"),
        "{body}"
    );
    assert!(
        !body.contains("reservation"),
        "the body names the decision, not the rules a caller could aim at: {body}"
    );
    assert_eq!(head["skein-error"], "denied");
    assert_eq!(head["skein-denied-by"], "not-allowed");
    assert!(!restaurant_app
        .seen()
        .iter()
        .any(|r| r.path.contains("from-frontend")));
    assert!(decisions(&restaurant, "denied", FRONTEND, "not-allowed") >= 1.0);
    // The caller's proxy recorded the denial too.
    assert!(
        metric(
            &frontend.ctx.metrics.encode(),
            "skein_proxy_errors_total{direction=\"outbound\",reason=\"denied\"}"
        ) >= 1.0
    );

    // reservation → payments: no policy, the mesh default denies.
    let (status, body) = get(via_reservation, &format!("http://payments:{PORT}/pay"))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("defaultPolicy (deny)"), "{body}");
    assert_eq!(payments_app.hits(), 0);

    // TCP: closed right after the connection is made, nothing reaches the ledger.
    let got = tcp_exchange(SocketAddr::new(loopback(235), 19001)).await;
    assert_eq!(got, "", "denied TCP gets no bytes");
    assert_eq!(ledger_accepts.load(Ordering::SeqCst), 0);

    // gRPC: PERMISSION_DENIED from a real client.
    let mut grpc = EchoClient::connect(format!("http://{}", SocketAddr::new(loopback(236), 19002)))
        .await
        .unwrap();
    let status = grpc
        .unary(EchoRequest {
            message: "hi".into(),
            ..EchoRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("defaultPolicy (deny)"),
        "{status:?}"
    );
    assert_eq!(echo.hits(), 0);

    // `skein policy check` answers the same without traffic.
    let check = |from: &'static str, to: &'static str, extra: &'static [&'static str]| {
        let (control, data) = (&control, data.path());
        async move {
            let args = [&["policy", "check", "--from", from, "--to", to][..], extra].concat();
            let out = cli(control, data, &args).await;
            // Exit codes as `kubectl auth can-i`: 0 allowed, 1 denied, 2 no answer.
            let want = if out.stdout.starts_with("denied") {
                1
            } else {
                0
            };
            assert_eq!(out.code, Some(want), "{out:?}");
            out.stdout
        }
    };
    let out = check("reservation", "restaurant", &[]).await;
    assert!(
        out.starts_with("allowed by AuthorizationPolicy default/restaurant"),
        "{out}"
    );
    let out = check("frontend", "restaurant", &["--path", "/menu/1"]).await;
    assert!(
        out.starts_with("denied: no rule of AuthorizationPolicy default/restaurant"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "checked: {FRONTEND} → restaurant.default:{PORT} GET /menu/1"
        )),
        "{out}"
    );
    let out = check("reservation", "ledger", &[]).await;
    assert!(
        out.starts_with("denied by the mesh's defaultPolicy (deny)") && out.contains(" tcp"),
        "{out}"
    );
    let refused = cli(
        &control,
        data.path(),
        &["policy", "check", "--from", "x", "--to", "nope"],
    )
    .await;
    assert!(
        refused.failed().contains("no Service \"nope\""),
        "{refused:?}"
    );
    assert_eq!(refused.code, Some(2), "an unanswerable question exits 2");
    control.shutdown().await;
}

#[tokio::test]
async fn l7_rules_and_path_normalisation_land_on_the_right_decision() {
    skein_testkit::init_tracing();
    let data = TempDir::new("authz-l7").unwrap();
    let control = control(237, data.path()).await;
    apply(
        &control,
        &format!(
            "{}{}{}",
            mesh("deny"),
            service("restaurant", PORT, "http"),
            policy(
                "menu",
                "restaurant",
                "allow",
                "[{from: [{service: reservation}], to: [{methods: [GET], paths: ['/menu/*']}]}]"
            ),
        ),
    )
    .await;
    let (app, _restaurant) = workload(&control, 238, "restaurant", None).await;
    let reservation = client_of(&control, 239, "reservation", &[]).await;
    let proxy = reservation.addrs.http_proxy.unwrap();
    until_ok(proxy, &restaurant_url("/menu/1")).await;

    // (method, path as sent, status, path the app must see if let through)
    let cases = [
        ("GET", "/menu/1", 200, Some("/menu/1")),
        ("GET", "/menu", 200, Some("/menu")),
        ("GET", "/menu/./2", 200, Some("/menu/2")),
        ("GET", "/%6Denu/3?q=%2F", 200, Some("/menu/3?q=%2F")),
        ("GET", "/menu//4", 200, Some("/menu/4")),
        ("POST", "/menu/1", 403, None),
        ("GET", "/admin", 403, None),
        ("GET", "/menu/../admin", 403, None),
        ("GET", "/menu/%2e%2e/admin", 403, None),
        ("GET", "/menu/%2E%2E/%2E%2E/admin", 403, None),
        ("GET", "//admin", 403, None),
        ("GET", "/menus", 403, None),
        ("GET", "/menu/%2Fadmin", 400, None),
        ("GET", "/menu/..%2fadmin", 400, None),
        ("GET", "/menu/%5cadmin", 400, None),
    ];
    for (method, path, want, seen_as) in cases {
        let before = app.seen().len();
        let (status, head, body) = send(proxy, method, &restaurant_url(path), &[])
            .await
            .unwrap();
        assert_eq!(status, want, "{method} {path}: {body}");
        let seen = app.seen();
        match seen_as {
            Some(p) => {
                assert_eq!(seen.len(), before + 1, "{method} {path}");
                assert_eq!(seen.last().unwrap().path, p, "{method} {path}");
            }
            None => assert_eq!(seen.len(), before, "{method} {path} reached the app"),
        }
        if want == 400 {
            assert_eq!(head["skein-error"], "bad_path", "{path}");
            assert!(body.contains("encodedSlashes"), "{path}: {body}");
        }
    }
    control.shutdown().await;
}

#[tokio::test]
async fn audit_mode_lets_traffic_through_and_shows_the_would_be_denials() {
    skein_testkit::init_tracing();
    let data = TempDir::new("authz-audit").unwrap();
    let control = control(240, data.path()).await;
    apply(
        &control,
        &format!(
            "{}{}{}",
            mesh("audit"),
            service("restaurant", PORT, "http"),
            policy(
                "restaurant",
                "restaurant",
                "allow",
                "[{from: [{service: reservation}]}]"
            ),
        ),
    )
    .await;
    let (app, restaurant) = workload(&control, 241, "restaurant", None).await;
    let reservation = client_of(&control, 242, "reservation", &[]).await;
    let frontend = client_of(&control, 243, "frontend", &[]).await;
    until_ok(reservation.addrs.http_proxy.unwrap(), &restaurant_url("/r")).await;
    until_ok(frontend.addrs.http_proxy.unwrap(), &restaurant_url("/f")).await;
    assert!(
        app.seen().iter().any(|r| r.path == "/f"),
        "audited traffic flows"
    );
    assert!(decisions(&restaurant, "audited", FRONTEND, "not-allowed") >= 1.0);
    assert!(decisions(&restaurant, "allowed", RESERVATION, "default/restaurant") >= 1.0);
    assert_eq!(
        decisions(&restaurant, "denied", FRONTEND, "not-allowed"),
        0.0
    );
    let out = cli(
        &control,
        data.path(),
        &[
            "policy",
            "check",
            "--from",
            "frontend",
            "--to",
            "restaurant",
        ],
    )
    .await;
    assert!(
        out.ok().starts_with(
            "audited (would be denied): no rule of AuthorizationPolicy default/restaurant"
        ),
        "{out:?}"
    );
    control.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_denies_the_new_pair_within_a_second_and_leaves_others_alone() {
    skein_testkit::init_tracing();
    let data = TempDir::new("authz-live").unwrap();
    let control = control(244, data.path()).await;
    apply(
        &control,
        &format!("{}{}", mesh("allow"), service("restaurant", PORT, "http")),
    )
    .await;
    let (_app, _restaurant) = workload(&control, 245, "restaurant", None).await;
    let reservation = client_of(&control, 246, "reservation", &[]).await;
    let frontend = client_of(&control, 247, "frontend", &[]).await;
    let (via_r, via_f) = (
        reservation.addrs.http_proxy.unwrap(),
        frontend.addrs.http_proxy.unwrap(),
    );
    until_ok(via_r, &restaurant_url("/r")).await;
    until_ok(via_f, &restaurant_url("/f")).await;

    // Both callers keep one live HTTP/1.1 connection each and send steadily.
    let stop = Arc::new(AtomicBool::new(false));
    let first_403 = Arc::new(Mutex::new(None::<Instant>));
    let reservation_failures = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for (via, name) in [(via_r, "reservation"), (via_f, "frontend")] {
        let (stop, first_403, failures) = (
            stop.clone(),
            first_403.clone(),
            reservation_failures.clone(),
        );
        tasks.spawn(async move {
            use http_body_util::BodyExt;
            let mut sender = skein_testkit::client::h1(via).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let req = http::Request::get(restaurant_url("/live"))
                    .body(skein_proxy::http::empty())
                    .unwrap();
                let status = match sender.send_request(req).await {
                    Ok(resp) => {
                        let s = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        s
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("{name}: {e}"));
                        return;
                    }
                };
                match (name, status) {
                    ("reservation", 200) | ("frontend", 200) => {}
                    ("frontend", 403) => {
                        first_403.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                    (_, s) => failures.lock().unwrap().push(format!("{name}: {s}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = Instant::now();
    apply(
        &control,
        &policy(
            "no-frontend",
            "restaurant",
            "deny",
            "[{from: [{service: frontend}]}]",
        ),
    )
    .await;
    eventually("frontend denied", SOON, async || {
        first_403.lock().unwrap().is_some()
    })
    .await
    .unwrap();
    let took = first_403.lock().unwrap().unwrap() - applied;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    while tasks.join_next().await.is_some() {}
    eprintln!("policy change: frontend denied {took:?} after the apply");
    assert!(
        took < Duration::from_secs(1),
        "the new deny took {took:?} to reach the proxy"
    );
    let failures = reservation_failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:?}");
    control.shutdown().await;
}

#[tokio::test]
async fn headers_a_caller_sets_neither_decide_nor_reach_the_app() {
    skein_testkit::init_tracing();
    let data = TempDir::new("authz-forged").unwrap();
    let control = control(248, data.path()).await;
    // Permissive, so that a plaintext client can talk to the inbound proxy directly and
    // forge whatever it likes, not only through a caller's outbound proxy.
    apply(
        &control,
        &format!(
            "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec: {{defaultPolicy: deny, mtls: permissive}}\n{}{}",
            service("restaurant", PORT, "http"),
            policy(
                "restaurant",
                "restaurant",
                "allow",
                "[{from: [{service: reservation}]}, {from: [{unauthenticated: true}], to: [{paths: ['/open/*']}]}]"
            ),
        ),
    )
    .await;
    let (app, restaurant) = workload(&control, 249, "restaurant", None).await;
    let reservation = client_of(&control, 250, "reservation", &[]).await;
    let frontend = client_of(&control, 251, "frontend", &[]).await;
    until_ok(
        reservation.addrs.http_proxy.unwrap(),
        &restaurant_url("/warm"),
    )
    .await;
    let forged = [
        ("skein-client-id", RESERVATION),
        (
            "x-forwarded-client-cert",
            "By=spiffe://skein.local/ns/default/sa/restaurant;URI=spiffe://skein.local/ns/default/sa/reservation",
        ),
    ];
    // frontend pretending to be reservation: still frontend, still denied.
    let (status, _, body) = send(
        frontend.addrs.http_proxy.unwrap(),
        "GET",
        &restaurant_url("/forged"),
        &forged,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(FRONTEND), "{body}");

    // reservation with a forged frontend identity: allowed as reservation, and the app
    // sees the verified identity only.
    let (status, _, _) = send(
        reservation.addrs.http_proxy.unwrap(),
        "GET",
        &restaurant_url("/real"),
        &[
            ("skein-client-id", FRONTEND),
            ("skein_client_id", FRONTEND),
            ("x-forwarded-client-cert", "URI=spiffe://evil"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);

    // A plaintext peer straight to the inbound listener, claiming to be reservation.
    let direct = async |path: &str, extra: &[(&str, &str)]| {
        use http_body_util::BodyExt;
        let mut h2 = skein_testkit::client::h2(restaurant.addrs.inbound)
            .await
            .unwrap();
        let mut req =
            http::Request::get(restaurant_url(path)).header("skein-dst-port", PORT.to_string());
        for (name, value) in forged.iter().chain(extra) {
            req = req.header(*name, *value);
        }
        let resp = h2
            .send_request(req.body(skein_proxy::http::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = direct("/direct", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unauthenticated may not call"), "{body}");
    // A Host that names another host than the authority could steer the app past a host
    // rule: refused, and the proxy goes on serving.
    let (status, body) = direct("/open/ambiguous", &[("host", "admin.restaurant")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("another host than the request's authority"),
        "{body}"
    );
    // So could userinfo, which the app would read as part of the host.
    let (status, body) = direct("/open/userinfo", &[("host", "admin@restaurant")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Host header carries userinfo"), "{body}");
    let (status, body) = direct("/open/door", &[]).await;
    assert_eq!(status, 200, "{body}");

    let seen = app.seen();
    assert!(!seen.iter().any(|r| r.path == "/forged"
        || r.path == "/direct"
        || r.path == "/open/ambiguous"
        || r.path == "/open/userinfo"));
    let real = seen.iter().find(|r| r.path == "/real").unwrap();
    let ids: Vec<_> = real
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("skein-client-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ids, [RESERVATION], "exactly one, the verified one");
    assert_eq!(real.header("x-forwarded-client-cert"), None);
    assert_eq!(real.header("skein_client_id"), None, "nor in CGI spelling");
    let open = seen.iter().find(|r| r.path == "/open/door").unwrap();
    assert_eq!(
        open.header("skein-client-id"),
        None,
        "a plaintext caller has no identity"
    );
    assert_eq!(open.header("x-forwarded-client-cert"), None);
    control.shutdown().await;
}

#[tokio::test]
async fn ambiguous_paths_and_hosts_are_refused_before_they_reach_the_app() {
    skein_testkit::init_tracing();
    let data = TempDir::new("authz-ambiguous").unwrap();
    let control = control(252, data.path()).await;
    let allow_public = policy(
        "public",
        "restaurant",
        "allow",
        "[{from: [{service: reservation}], to: [{methods: [GET], paths: ['/public/*']}]}]",
    );
    apply(
        &control,
        &format!(
            "{}{}{allow_public}",
            mesh("deny"),
            service("restaurant", PORT, "http")
        ),
    )
    .await;
    let (app, _restaurant) = workload(&control, 253, "restaurant", None).await;
    let upstream = SocketAddr::new(loopback(254), 19003);
    let reservation = client_of(&control, 254, "reservation", &[(19003, "restaurant", PORT)]).await;
    let proxy = reservation.addrs.http_proxy.unwrap();
    until_ok(proxy, &restaurant_url("/public/warm")).await;

    // (path as sent, status, path the app must see if let through)
    let cases = [
        ("/public/menu", 200, Some("/public/menu")),
        ("/public/menu;v=2", 200, Some("/public/menu;v=2")),
        ("/public/caf%C3%A9", 200, Some("/public/caf%C3%A9")),
        ("/public/100%25", 200, Some("/public/100%25")),
        ("/private", 403, None),
        ("/public/..;/private", 400, None),
        ("/public/.;x/private", 400, None),
        ("/public/;x/../../private", 403, None),
        ("/public/..%3B/private", 400, None),
        ("/public/%252e%252e/private", 400, None),
        ("/public/%252E%252E%252Fprivate", 400, None),
        ("/public/%c0%ae%c0%ae/private", 400, None),
        ("/public/%e0%80%ae%e0%80%ae/private", 400, None),
    ];
    for (path, want, seen_as) in cases {
        let before = app.seen().len();
        let (status, head, body) = send(proxy, "GET", &restaurant_url(path), &[])
            .await
            .unwrap();
        assert_eq!(status, want, "{path}: {body}");
        let seen = app.seen();
        match seen_as {
            Some(p) => assert_eq!(seen.last().unwrap().path, p, "{path}"),
            None => assert_eq!(seen.len(), before, "{path} reached the app"),
        }
        if want == 400 {
            assert_eq!(head["skein-error"], "bad_path", "{path}");
            assert!(
                body.contains("ambiguousPaths: reject") && body.contains("; this mesh refuses"),
                "{path}: {body}"
            );
        }
    }

    // Userinfo in the authority: the app would see `Host: admin@restaurant`. Refused by
    // the caller's proxy, through a listener that routes by service and by authority.
    let userinfo_url = format!("http://admin@restaurant:{PORT}/public/x");
    for (via, url, headers) in [
        (upstream, userinfo_url.as_str(), &[][..]),
        (proxy, userinfo_url.as_str(), &[][..]),
        (upstream, "/public/x", &[("host", "admin@restaurant")][..]),
    ] {
        let before = app.seen().len();
        let (status, head, body) = send(via, "GET", url, headers).await.unwrap();
        assert_eq!(status, 400, "{url} {headers:?}: {body}");
        assert_eq!(head["skein-error"], "bad_request");
        assert!(
            body.contains("userinfo") && body.contains("send only host[:port]"),
            "{body}"
        );
        assert_eq!(app.seen().len(), before, "{url} reached the app");
    }
    let (status, _, body) = send(upstream, "GET", "/public/fine", &[("host", "restaurant")])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(app
        .seen()
        .iter()
        .all(|r| !r.header("host").unwrap_or_default().contains('@')));

    // `skein policy check` judges paths as the proxies do.
    let refused = cli(
        &control,
        data.path(),
        &[
            "policy",
            "check",
            "--from",
            "reservation",
            "--to",
            "restaurant",
            "--path",
            "/public/..;/private",
        ],
    )
    .await;
    let why = refused.failed();
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        why.contains("would refuse this request with 400") && why.contains("ambiguousPaths"),
        "{why}"
    );

    // The Mesh setting reaches the proxies: with `forward` the same path is judged as
    // written (and allowed under /public/*), as the operator then asked.
    apply(
        &control,
        "apiVersion: skein.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
         spec: {defaultPolicy: deny, ambiguousPaths: forward}\n",
    )
    .await;
    eventually("ambiguousPaths: forward in force", SOON, async || {
        matches!(
            get(proxy, &restaurant_url("/public/..;/private")).await,
            Ok((200, _))
        )
    })
    .await
    .unwrap();
    assert_eq!(app.seen().last().unwrap().path, "/public/..;/private");
    control.shutdown().await;
}
