//! Bad input: each malformed or abusive request is refused with a clear status, never
//! reaches the application, and the proxies keep serving normal requests afterwards.

use http::{Request, StatusCode};
use skein_model::Protocol;
use skein_proxy::http::empty;
use skein_testkit::client::h1;
use skein_testkit::{loopback, HttpBackend, Mesh, MeshSpec};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn mesh(client: u8, server: u8) -> (Mesh, HttpBackend) {
    mesh_with(client, server, skein_model::Limits::default()).await
}

async fn mesh_with(client: u8, server: u8, limits: skein_model::Limits) -> (Mesh, HttpBackend) {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(server), 0))
        .await
        .unwrap();
    let declared = HttpBackend::start(SocketAddr::new(loopback(server), 0))
        .await
        .unwrap();
    let mut spec = MeshSpec::new(client, server);
    spec.limits = limits;
    let mesh = spec
        .service("web", backend.addr(), Protocol::Detect)
        .service("declared", declared.addr(), Protocol::Http)
        .start()
        .await
        .unwrap();
    // The declared backend only needs to stay alive with the mesh.
    std::mem::forget(declared);
    (mesh, backend)
}

/// Writes `bytes` on a fresh connection and reads until the proxy closes it (bounded).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "proxy must close the connection after refusing"
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// A normal request still works.
async fn still_serves(mesh: &Mesh) {
    let mut sender = h1(mesh.upstream("web")).await.unwrap();
    let req = Request::get("/after")
        .header("host", "web")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_request_lines_and_headers_get_400() {
    let (mesh, backend) = mesh(70, 71).await;
    // On a port declared `http`, the request line is parsed as HTTP whatever it holds.
    let text = exchange(
        mesh.upstream("declared"),
        b"GET /x HTTP/1.1 junk\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // A valid request line with a broken header line, on a detecting port.
    let text = exchange(
        mesh.upstream("web"),
        b"GET /x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(backend.hits(), 0);
    still_serves(&mesh).await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_long_request_lines_414() {
    let (mesh, backend) = mesh(72, 73).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let text = exchange(mesh.upstream("web"), big.as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        many += &format!("x-h{i}: v\r\n");
    }
    many += "\r\n";
    let text = exchange(mesh.upstream("web"), many.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(10_000));
    for service in ["web", "declared"] {
        let text = exchange(mesh.upstream(service), long.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 414"), "{service}: {text}");
        assert!(
            text.contains("request line is longer than 8192 bytes"),
            "{text}"
        );
    }
    assert_eq!(backend.hits(), 0);
    still_serves(&mesh).await;
}

#[tokio::test]
async fn smuggling_attempts_get_400_and_never_reach_the_app() {
    let (mesh, backend) = mesh(74, 75).await;
    let cl_te = b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";
    let text = exchange(mesh.upstream("web"), cl_te).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("both Content-Length and Transfer-Encoding"),
        "{text}"
    );

    // The same attempt as the second request on a kept-alive connection.
    let mut conn = TcpStream::connect(mesh.upstream("web")).await.unwrap();
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    conn.write_all(b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    let two_lengths =
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let text = exchange(mesh.upstream("web"), two_lengths).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    let seen: Vec<_> = backend.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/first"], "only the honest request reached the app");
    still_serves(&mesh).await;
}

#[tokio::test]
async fn bad_chunk_size_is_refused_and_no_complete_request_arrives() {
    let (mesh, backend) = mesh(76, 77).await;
    let bad = b"POST /chunks HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let text = exchange(mesh.upstream("web"), bad).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("request body could not be read"), "{text}");
    // The body failed at its first byte: if the head reached the app at all, its body
    // never completed, so the app never saw a whole request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        backend.seen().iter().all(|s| !s.body_complete),
        "{:?}",
        backend.seen()
    );
    still_serves(&mesh).await;
}

#[tokio::test]
async fn garbage_on_the_inbound_port_is_dropped() {
    let (mesh, backend) = mesh(78, 79).await;
    let inbound = mesh.server.addrs.inbound;
    let _ = exchange(
        inbound,
        b"\x16\x03\x01garbage that is not HTTP/2 \x00\xff\r\n\r\n",
    )
    .await;
    let _ = exchange(inbound, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert_eq!(backend.hits(), 0, "nothing reached the app");
    still_serves(&mesh).await;
}

/// A request the framing guard must refuse, with the request it would smuggle in its body.
const SMUGGLE: &str = "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";

/// The responses in `text`, by status line, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn upgrades_that_do_not_switch_leave_the_connection_inspected() {
    let (mesh, backend) = mesh(84, 85).await;
    let asks = [
        // h2c: proxied as plain HTTP/1, never switched.
        "GET /h2c HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        // An Upgrade header without `Connection: upgrade`.
        "GET /no-connection HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\n\r\n",
        // A real upgrade attempt through both proxies that the application declines.
        "GET /declined HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ];
    for ask in asks {
        // Pipelined: the smuggling attempt arrives before the answer to the upgrade.
        let text = exchange(mesh.upstream("web"), format!("{ask}{SMUGGLE}").as_bytes()).await;
        assert_eq!(statuses(&text), ["200", "400"], "{ask}\n{text}");
        assert!(
            text.contains("both Content-Length and Transfer-Encoding"),
            "{text}"
        );
        // After the answer, on the same connection.
        let mut conn = TcpStream::connect(mesh.upstream("web")).await.unwrap();
        conn.write_all(ask.as_bytes()).await.unwrap();
        let mut first = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut first))
            .await
            .unwrap()
            .unwrap();
        let first = String::from_utf8_lossy(&first[..n]).into_owned();
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        conn.write_all(SMUGGLE.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with("HTTP/1.1 400"), "{ask}\n{rest}");
    }
    let seen: Vec<_> = backend.seen().into_iter().map(|s| s.path).collect();
    assert!(
        seen.iter().all(|p| p != "/smuggled" && p != "/"),
        "nothing smuggled reached the app: {seen:?}"
    );
    assert_eq!(seen.len(), 2 * asks.len(), "{seen:?}");
    still_serves(&mesh).await;
}

#[tokio::test]
async fn heads_end_where_the_parser_ends_them_and_every_header_counts() {
    let limits = skein_model::Limits {
        max_headers: 1000,
        ..Default::default()
    };
    let (mesh, backend) = mesh_with(86, 87, limits).await;
    // A head ending in a bare LF before the final CRLF is a complete head to hyper, so
    // what follows is the next request and is inspected: sent at once (refused with the
    // read it arrived in) and after the answer.
    let lf = "GET /lf HTTP/1.1\r\nHost: web\n\r\n";
    let text = exchange(mesh.upstream("web"), format!("{lf}{SMUGGLE}").as_bytes()).await;
    assert_eq!(statuses(&text).last(), Some(&"400"), "{text}");
    assert!(
        text.contains("both Content-Length and Transfer-Encoding"),
        "{text}"
    );
    let mut conn = TcpStream::connect(mesh.upstream("web")).await.unwrap();
    conn.write_all(lf.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    conn.write_all(SMUGGLE.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    // Far more header fields than 128, within maxHeaders: still inspected.
    let mut many = String::from("POST /many HTTP/1.1\r\nHost: web\r\n");
    for i in 0..300 {
        many += &format!("x-h{i}: v\r\n");
    }
    many += "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";
    let text = exchange(mesh.upstream("web"), many.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let seen: Vec<_> = backend.seen().into_iter().map(|s| s.path).collect();
    assert!(
        seen.iter().all(|p| p == "/lf"),
        "only the honest request reached the app: {seen:?}"
    );
    still_serves(&mesh).await;
}

#[tokio::test]
async fn a_peer_cannot_smuggle_through_an_http1_tunnel() {
    let (mesh, backend) = mesh(88, 89).await;
    let port = backend.addr().port();
    // A caller that writes the tunnel's bytes itself, straight to the inbound listener
    // (these test proxies have no identity, so plaintext HTTP/2 is served).
    let mut h2 = skein_testkit::client::h2(mesh.server.addrs.inbound)
        .await
        .unwrap();
    let req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("web:{port}"))
        .version(http::Version::HTTP_2)
        .header("skein-tunnel", "http1")
        .header("skein-dst-port", port.to_string())
        .body(empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let tunnel = hyper::upgrade::on(resp).await.unwrap();
    let mut tunnel = hyper_util::rt::TokioIo::new(tunnel);
    tunnel
        .write_all(b"GET /through HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tunnel.write_all(SMUGGLE.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    assert!(
        rest.contains("both Content-Length and Transfer-Encoding"),
        "{rest}"
    );
    let seen: Vec<_> = backend.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        seen,
        ["/through"],
        "only the honest request reached the app"
    );
    assert_eq!(
        mesh.metric(
            skein_testkit::Side::Server,
            "skein_proxy_errors_total",
            &["direction=\"inbound\"", "reason=\"cl_and_te\""]
        ),
        1
    );
    still_serves(&mesh).await;
}
