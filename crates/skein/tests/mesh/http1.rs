//! HTTP/1.1 through two proxies, with curl and with a hyper client.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use skein_model::Protocol;
use skein_proxy::http::{boxed, empty, full};
use skein_testkit::client::{body_bytes, curl, h1};
use skein_testkit::{loopback, HttpBackend, Mesh, MeshSpec, Side};
use std::net::SocketAddr;

async fn mesh(client: u8, server: u8, protocol: Protocol) -> (Mesh, HttpBackend) {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(server), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(client, server)
        .service("web", backend.addr(), protocol)
        .start()
        .await
        .unwrap();
    (mesh, backend)
}

#[tokio::test]
async fn curl_get_reaches_the_server_through_both_proxies() {
    let (mesh, backend) = mesh(21, 22, Protocol::Detect).await;
    let url = format!("http://{}/hello?x=1", mesh.upstream("web"));
    let out = curl(&["-i", "-H", "Host: web.default:80", &url])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-echo-path: /hello?x=1"), "{text}");
    assert!(
        text.contains("x-echo-version: HTTP/1.1"),
        "the app got HTTP/1.1: {text}"
    );
    assert!(
        text.contains("x-echo-host: web.default:80"),
        "Host preserved: {text}"
    );
    assert_eq!(backend.hits(), 1);
    let outbound = ["direction=\"outbound\"", "protocol=\"http1\""];
    assert_eq!(
        mesh.metric(Side::Client, "skein_requests_total", &outbound),
        1
    );
    let inbound = ["direction=\"inbound\"", "protocol=\"http1\""];
    assert_eq!(
        mesh.metric(Side::Server, "skein_requests_total", &inbound),
        1
    );
}

#[tokio::test]
async fn http_proxy_mode_routes_by_authority() {
    let (mesh, backend) = mesh(23, 24, Protocol::Detect).await;
    let proxy = format!("http://{}", mesh.http_proxy());
    let url = format!("http://{}/via-proxy", mesh.authority("web"));
    let out = curl(&["-i", "-x", &proxy, &url]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("x-echo-path: /via-proxy"),
        "origin-form reached the app: {text}"
    );
    assert_eq!(backend.seen()[0].path, "/via-proxy");

    // An unknown service gets a 502 that says what to do.
    let out = curl(&["-i", "-x", &proxy, "http://payments:80/"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.contains("skein-error: unknown_service"), "{text}");
    assert!(text.contains("add it to `destinations`"), "{text}");
}

#[tokio::test]
async fn post_50mb_streams_end_to_end() {
    let (mesh, backend) = mesh(25, 26, Protocol::Detect).await;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 800; // 50 MiB
    let chunks =
        futures_util::stream::iter((0..CHUNKS).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![7u8; CHUNK])))
        }));
    let req = Request::post("/upload")
        .header("host", "web")
        .body(boxed(StreamBody::new(chunks)))
        .unwrap();
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Count the echoed body frame by frame, never holding it whole.
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == 7));
            total += data.len();
        }
    }
    assert_eq!(total, CHUNK * CHUNKS);
    let seen = backend.seen();
    assert_eq!(seen[0].body_len, CHUNK * CHUNKS);
    assert!(seen[0].body_complete);
}

#[tokio::test]
async fn chunked_response_and_keep_alive_reuse() {
    let (mesh, backend) = mesh(27, 28, Protocol::Detect).await;
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    for round in 0..3 {
        let req = Request::get("/chunked?n=5")
            .header("host", "web")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        let body = body_bytes(resp).await.unwrap();
        assert_eq!(&body[..], b"chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n");
    }
    // Three requests, one client connection.
    let conns = ["direction=\"outbound\"", "protocol=\"http1\""];
    assert_eq!(
        mesh.metric(Side::Client, "skein_tcp_connections_total", &conns),
        1
    );
    assert_eq!(backend.hits(), 3);

    // curl reuses its connection for two URLs on the command line.
    let url = format!("http://{}/a", mesh.upstream("web"));
    let out = curl(&["-v", &url, &url]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing"),
        "{err}"
    );
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let (mesh, backend) = mesh(29, 30, Protocol::Detect).await;
    let url = format!("http://{}/expect", mesh.upstream("web"));
    let payload = "x".repeat(2048);
    let out = curl(&[
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "20",
        "--data-binary",
        &payload,
        &url,
    ])
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP/1.1 100 Continue"),
        "the proxy answered 100: {err}"
    );
    assert!(err.contains("HTTP/1.1 200"), "{err}");
    assert_eq!(out.stdout.len(), payload.len());
    assert_eq!(backend.seen()[0].body_len, 2048);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_internal_ones_cannot_be_forged() {
    let (mesh, backend) = mesh(31, 32, Protocol::Detect).await;
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    let req = Request::get("/hbh")
        .header("host", "web")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "must not travel")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "secret")
        .header("skein-dst-port", "22")
        .header("x-test-kept", "yes")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-test-kept"], "yes");
    let seen = &backend.seen()[0];
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "skein-dst-port",
        "skein-orig-proto",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the app");
    }
    assert_eq!(seen.header("x-test-kept"), Some("yes"));
}

#[tokio::test]
async fn trailers_cross_http1_hops() {
    let (mesh, _backend) = mesh(33, 34, Protocol::Detect).await;
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    let req = Request::get("/trailers")
        .header("host", "web")
        .header("te", "trailers")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-trailer"], "done");
    assert_eq!(&collected.to_bytes()[..], b"ok");
}

#[tokio::test]
async fn declared_http_port_skips_detection() {
    let (mesh, backend) = mesh(35, 36, Protocol::Http).await;
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    let req = Request::post("/declared")
        .header("host", "web")
        .body(full("hi"))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&body_bytes(resp).await.unwrap()[..], b"hi");
    assert_eq!(backend.hits(), 1);
    let timeouts = mesh.metric(Side::Client, "skein_detect_timeouts_total", &[]);
    assert_eq!(timeouts, 0);
}

#[tokio::test]
async fn http_proxy_connect_opens_a_tunnel_to_the_service() {
    let (mesh, backend) = mesh(37, 38, Protocol::Detect).await;
    let proxy = format!("http://{}", mesh.http_proxy());
    let url = format!("http://{}/tunnelled", mesh.authority("web"));
    // -p: CONNECT through the proxy, then speak HTTP inside the tunnel.
    let out = curl(&["-i", "-p", "-x", &proxy, &url]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200 Connection established") || text.contains("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("x-echo-path: /tunnelled"), "{text}");
    assert_eq!(backend.hits(), 1);
    let tcp_in = ["direction=\"inbound\"", "protocol=\"tcp\""];
    assert_eq!(
        mesh.metric(Side::Server, "skein_tcp_connections_total", &tcp_in),
        1
    );

    // CONNECT to a service the proxy does not know: refused with a reason.
    let out = curl(&["-i", "-p", "-x", &proxy, "http://payments:443/"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("502"), "{text}");
}

#[tokio::test]
async fn every_request_carries_a_request_id_to_the_app_and_back_and_mesh_errors_name_it() {
    let (mesh, backend) = mesh(68, 69, Protocol::Http).await;
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    let mut get = async |path: &str, id: Option<&str>| {
        let mut req = Request::get(path).header("host", "web");
        if let Some(id) = id {
            req = req.header("skein-request-id", id);
        }
        let resp = sender
            .send_request(req.body(empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let id = resp.headers()["skein-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body = String::from_utf8(body_bytes(resp).await.unwrap().to_vec()).unwrap();
        (status, id, body)
    };

    // None sent: the first proxy makes one; the application and the caller see the same.
    let (status, id, _) = get("/a", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(
        backend.seen()[0].header("skein-request-id"),
        Some(id.as_str())
    );
    let (_, again, _) = get("/a", None).await;
    assert_ne!(again, id, "each request its own");

    // The caller's own ID is kept end to end; one the mesh cannot log safely is replaced.
    let (_, kept, _) = get("/b", Some("checkout-7f3a:2")).await;
    assert_eq!(kept, "checkout-7f3a:2");
    assert_eq!(
        backend.seen()[2].header("skein-request-id"),
        Some("checkout-7f3a:2")
    );
    let (_, replaced, _) = get("/c", Some("two words")).await;
    assert_ne!(replaced, "two words");
    assert_eq!(
        backend.seen()[3].header("skein-request-id"),
        Some(replaced.as_str())
    );

    // An answer the mesh gives itself (here: no application on that port) names it.
    let backend_addr = backend.addr();
    drop(backend);
    let (status, id, body) = get("/d", Some("order-99")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(id, "order-99");
    assert!(body.contains("request id: order-99"), "{body}");

    // Each proxy remembers what it decided, under the request's ID: the callee's proxy
    // could not reach its application; the caller's saw its peer answer for the mesh.
    let decisions = async |admin: SocketAddr, path: &str| {
        let mut s = h1(admin).await.unwrap();
        let req = Request::get(path)
            .header("host", "admin")
            .body(empty())
            .unwrap();
        let body = body_bytes(s.send_request(req).await.unwrap())
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["items"].as_array().unwrap().clone()
    };
    let one = "/decisions?request_id=order-99";
    let server = decisions(mesh.server.addrs.admin, one).await;
    assert_eq!(server.len(), 1, "{server:?}");
    assert_eq!(server[0]["direction"], "inbound");
    // `connect`, or `upstream` if a pooled connection to the app was closed under it.
    let reason = server[0]["reason"].as_str().unwrap();
    assert!(matches!(reason, "connect" | "upstream"), "{reason}");
    assert_eq!(server[0]["status"], 502);
    let why = server[0]["why"].as_str().unwrap();
    assert!(why.contains(&backend_addr.to_string()), "{why}");
    let client = decisions(mesh.client.addrs.admin, one).await;
    assert_eq!(client.len(), 1, "{client:?}");
    assert_eq!(client[0]["direction"], "outbound");
    assert_eq!(
        client[0]["why"],
        format!("502 from the peer proxy: {reason}")
    );
    // Requests the application answered on the first try leave nothing behind.
    let all = decisions(mesh.server.addrs.admin, "/decisions").await;
    assert_eq!(all.len(), 1, "{all:?}");
}
