//! The proxy's own ceilings (`limits.maxConnections`, `maxRequests`, `maxBufferedBytes`):
//! at each, new work is shed at once with a clear error, what the proxy holds is served
//! on, and once work finishes new work is taken again; a tunnel keeps its connection's
//! share until it closes, and so does a WebSocket; a silent client of a declared HTTP/2
//! port is closed. Addresses 127.0.22.20–33.

use http::{Request, StatusCode};
use skein_model::{DestinationRoute, Limits, Protocol};
use skein_proxy::http::{empty, full};
use skein_testkit::client::{body_bytes, h1, h2};
use skein_testkit::mesh::{Mesh, MeshSpec, Side};
use skein_testkit::HttpBackend;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 22, n])
}

/// A mesh with proxy A's `limits` and one service `web`, whose backend it returns;
/// `routes` are attached to `web` in proxy A's configuration.
async fn start(client: u8, server: u8, limits: Limits, routes: &str) -> (Mesh, HttpBackend) {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(ip(server), 0))
        .await
        .unwrap();
    let spec = MeshSpec {
        client_ip: ip(client),
        server_ip: ip(server),
        ..MeshSpec::new(1, 1)
    }
    .service("web", backend.addr(), Protocol::Http);
    let server_proxy = skein_proxy::RunningProxy::start(spec.server_config())
        .await
        .unwrap();
    let mut config = spec.client_config(server_proxy.addrs.inbound);
    config.limits = limits;
    if !routes.is_empty() {
        let routes: Vec<DestinationRoute> = serde_yaml_ng::from_str(routes).unwrap();
        Arc::make_mut(&mut config.destinations[0]).routes = routes;
    }
    let client_proxy = skein_proxy::RunningProxy::start(config).await.unwrap();
    let mesh = Mesh {
        spec,
        client: client_proxy,
        server: server_proxy,
    };
    (mesh, backend)
}

/// Whether the proxy closes `conn` within 2 s.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn at_its_connection_ceiling_the_proxy_closes_new_connections_and_serves_those_it_holds() {
    let limits = Limits {
        max_connections: 16,
        ..Limits::default()
    };
    let (mesh, _backend) = start(20, 21, limits, "").await;
    let web = mesh.upstream("web");
    // One client in keep-alive use, then 15 idle connections: the ceiling is reached.
    let mut client = h1(web).await.unwrap();
    let get = |c: &mut hyper::client::conn::http1::SendRequest<_>| {
        c.send_request(Request::get("/echo").body(empty()).unwrap())
    };
    assert_eq!(get(&mut client).await.unwrap().status(), StatusCode::OK);
    let mut idle = Vec::new();
    for _ in 0..15 {
        idle.push(TcpStream::connect(web).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(web).await.unwrap();
    assert!(
        closed(&mut over).await,
        "the 17th connection is closed at once"
    );
    // What it holds is served on.
    for _ in 0..20 {
        let resp = get(&mut client).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        body_bytes(resp).await.unwrap();
    }
    assert!(
        mesh.metric(
            Side::Client,
            "skein_overload_shed_total",
            &["resource=\"connections\""]
        ) >= 1
    );
    // Connections that end free their slots: a new one is served.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = h1(web).await.unwrap();
    assert_eq!(get(&mut again).await.unwrap().status(), StatusCode::OK);
    mesh.shutdown().await;
}

#[tokio::test]
async fn at_its_request_ceiling_the_proxy_answers_503_naming_the_limit_and_finishes_the_rest() {
    let limits = Limits {
        max_requests: 16,
        ..Limits::default()
    };
    let (mesh, _backend) = start(22, 23, limits, "").await;
    let web = mesh.upstream("web");
    // 16 requests held at the application for 1.5 s, on one HTTP/2 connection.
    let conn = h2(web).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut c = conn.clone();
        held.push(tokio::spawn(async move {
            let resp = c
                .send_request(Request::get("/echo?delay=1500ms").body(empty()).unwrap())
                .await
                .unwrap();
            resp.status()
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = conn.clone();
    let resp = c
        .send_request(Request::get("/echo").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["skein-error"], "proxy_overloaded");
    let text = String::from_utf8(body_bytes(resp).await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains("limits.maxRequests 16") && text.contains("16 outbound requests in progress"),
        "the answer says which ceiling and how full: {text}"
    );
    for h in held {
        assert_eq!(h.await.unwrap(), StatusCode::OK, "held requests finish");
    }
    let resp = c
        .send_request(Request::get("/echo").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "taken again once they finished"
    );
    assert_eq!(
        mesh.metric(
            Side::Client,
            "skein_overload_shed_total",
            &["resource=\"requests\""]
        ),
        1
    );
    mesh.shutdown().await;
}

#[tokio::test]
async fn at_its_buffer_ceiling_the_proxy_streams_a_body_once_instead_of_holding_it() {
    let routes = "
- name: default/web
  rules:
  - backendRefs: [{name: web}]
    retry: {attempts: 1, codes: [503]}
";
    // The first try of each POST is answered 503, the second succeeds.
    let post = async |web: SocketAddr, id: &str| {
        let mut c = h1(web).await.unwrap();
        let req = Request::post(format!("/echo?responseCode=503&succeedAfter=1&uuid={id}"))
            .body(full("a body to hold"))
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        let status = resp.status();
        body_bytes(resp).await.unwrap();
        status
    };
    // Room to hold it: the retry carries the POST to a 200.
    let (mesh, backend) = start(24, 25, Limits::default(), routes).await;
    assert_eq!(post(mesh.upstream("web"), "roomy").await, StatusCode::OK);
    assert_eq!(backend.hits(), 2);
    mesh.shutdown().await;
    drop(backend);
    // No room: sent once, streamed, so its 503 is the answer, and the shed is counted.
    let none = Limits {
        max_buffered_bytes: 0,
        ..Limits::default()
    };
    let (mesh, backend) = start(24, 25, none, routes).await;
    assert_eq!(
        post(mesh.upstream("web"), "cramped").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(backend.hits(), 1, "not sent again");
    assert_eq!(
        mesh.metric(
            Side::Client,
            "skein_overload_shed_total",
            &["resource=\"buffers\""]
        ),
        1
    );
    assert_eq!(
        mesh.metric(
            Side::Client,
            "skein_route_retries_total",
            &["result=\"buffers_shed\""]
        ),
        1,
        "the retry it would have had is counted as shed"
    );
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_tunnel_keeps_its_connections_share_of_the_ceiling_until_it_closes() {
    use tokio::io::AsyncWriteExt;
    let limits = Limits {
        max_connections: 16,
        ..Limits::default()
    };
    let (mesh, _backend) = start(28, 29, limits, "").await;
    let (proxy, authority) = (mesh.http_proxy(), mesh.authority("web"));
    // 16 CONNECT tunnels: once each is established its connection's task has handed the
    // socket to the tunnel, which must keep the connection's share.
    let mut tunnels = Vec::new();
    for _ in 0..16 {
        let mut conn = TcpStream::connect(proxy).await.unwrap();
        conn.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tunnels.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(proxy).await.unwrap();
    assert!(
        closed(&mut over).await,
        "the 17th connection is closed: the tunnels hold 16"
    );
    assert_eq!(
        mesh.metric(
            Side::Client,
            "skein_overload_shed_total",
            &["resource=\"connections\"", "direction=\"outbound\""]
        ),
        1,
        "closed by the ceiling"
    );
    // The tunnels carry bytes meanwhile.
    let t = &mut tunnels[0];
    t.write_all(b"GET /echo HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = t.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Closed tunnels give their shares back.
    drop(tunnels);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = h1(mesh.upstream("web")).await.unwrap();
    let resp = c
        .send_request(Request::get("/echo").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_websocket_keeps_its_connections_share_of_the_ceiling_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let limits = Limits {
        max_connections: 16,
        ..Limits::default()
    };
    let (mesh, _backend) = start(32, 33, limits, "").await;
    let web = mesh.upstream("web");
    // 16 WebSockets: each upgraded connection is a byte stream the proxy splices, and must
    // keep its connection's share after the HTTP exchange that opened it has ended.
    let mut sockets = Vec::new();
    for _ in 0..16 {
        let tcp = TcpStream::connect(web).await.unwrap();
        let url = format!("ws://{}/ws", mesh.authority("web"));
        let (ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(web).await.unwrap();
    assert!(
        closed(&mut over).await,
        "the 17th connection is closed: the WebSockets hold 16"
    );
    assert_eq!(
        mesh.metric(
            Side::Client,
            "skein_overload_shed_total",
            &["resource=\"connections\"", "direction=\"outbound\""]
        ),
        1,
        "closed by the ceiling"
    );
    // The WebSockets carry messages meanwhile.
    let ws = &mut sockets[0];
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    // Closed WebSockets give their shares back.
    for mut ws in sockets {
        ws.close(None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = h1(web).await.unwrap();
    let resp = c
        .send_request(Request::get("/echo").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_of_a_declared_http2_port_is_closed_at_the_header_timeout() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(ip(31), 0))
        .await
        .unwrap();
    let mut spec = MeshSpec {
        client_ip: ip(30),
        server_ip: ip(31),
        ..MeshSpec::new(1, 1)
    }
    .service("grpcish", backend.addr(), Protocol::Http2);
    spec.limits.header_timeout = Duration::from_millis(500);
    let mesh = spec.start().await.unwrap();
    let listener = mesh.upstream("grpcish");
    // Silent: closed (HTTP/2 keepalive would begin only after a preface).
    let mut silent = TcpStream::connect(listener).await.unwrap();
    assert!(closed(&mut silent).await, "a silent client is closed");
    // A client that sends its preface at once is served.
    let mut c = h2(listener).await.unwrap();
    let resp = c
        .send_request(Request::get("/echo").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    mesh.shutdown().await;
}
