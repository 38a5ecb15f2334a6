//! HTTP/2 prior knowledge and gRPC through two proxies.

use futures_util::StreamExt;
use http::{Request, StatusCode};
use skein_model::Protocol;
use skein_proxy::http::empty;
use skein_testkit::client::{body_bytes, curl, h2};
use skein_testkit::pb::echo_client::EchoClient;
use skein_testkit::pb::EchoRequest;
use skein_testkit::{loopback, GrpcBackend, HttpBackend, MeshSpec, Side};
use std::net::SocketAddr;

fn request(message: &str, count: u32) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        count,
        fail_with_code: 0,
    }
}

#[tokio::test]
async fn curl_http2_prior_knowledge_reaches_an_http2_app() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(41), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(40, 41)
        .service("web", backend.addr(), Protocol::Detect)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}/h2?q=1", mesh.upstream("web"));
    let out = curl(&["-i", "--http2-prior-knowledge", "-H", "x-test-a: 1", &url])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(
        text.contains("x-echo-version: HTTP/2.0"),
        "the app got HTTP/2: {text}"
    );
    assert!(text.contains("x-echo-path: /h2?q=1"), "{text}");
    assert!(text.contains("x-test-a: 1"), "{text}");
    let h2_in = ["direction=\"inbound\"", "protocol=\"http2\""];
    assert_eq!(mesh.metric(Side::Server, "skein_requests_total", &h2_in), 1);
}

#[tokio::test]
async fn many_streams_share_one_connection_each_hop() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(43), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(42, 43)
        .service("web", backend.addr(), Protocol::Http2)
        .start()
        .await
        .unwrap();
    let sender = h2(mesh.upstream("web")).await.unwrap();
    let calls = (0..50).map(|i| {
        let mut sender = sender.clone();
        async move {
            let req = Request::get(format!("http://web/stream/{i}"))
                .body(empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-echo-path"], format!("/stream/{i}"));
            body_bytes(resp).await.unwrap();
        }
    });
    futures_util::future::join_all(calls).await;
    assert_eq!(backend.hits(), 50);
    // One connection from the client, one between the proxies.
    let out_conns = ["direction=\"outbound\"", "protocol=\"http2\""];
    assert_eq!(
        mesh.metric(Side::Client, "skein_tcp_connections_total", &out_conns),
        1
    );
    let in_conns = ["direction=\"inbound\"", "protocol=\"http2\""];
    assert_eq!(
        mesh.metric(Side::Server, "skein_tcp_connections_total", &in_conns),
        1
    );
}

#[tokio::test]
async fn grpc_all_call_kinds_and_error_status() {
    skein_testkit::init_tracing();
    let backend = GrpcBackend::start(SocketAddr::new(loopback(45), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(44, 45)
        .service("echo", backend.addr(), Protocol::Grpc)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}", mesh.upstream("echo"));
    let mut client = EchoClient::connect(url).await.unwrap();

    // Unary.
    let reply = client.unary(request("hi", 0)).await.unwrap().into_inner();
    assert_eq!(reply.message, "hi");

    // Server streaming.
    let mut stream = client
        .server_stream(request("s", 5))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        got.push(item.unwrap().count);
    }
    assert_eq!(got, [1, 2, 3, 4, 5]);

    // Client streaming.
    let outgoing = futures_util::stream::iter(["a", "b", "c"].map(|m| request(m, 0)));
    let reply = client.client_stream(outgoing).await.unwrap().into_inner();
    assert_eq!((reply.message.as_str(), reply.count), ("abc", 3));

    // Bidirectional: each message answered in turn.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .bidi(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(request(word, 0)).await.unwrap();
        let reply = replies.next().await.unwrap().unwrap();
        assert_eq!(reply.message, word);
    }
    drop(tx);
    assert!(
        replies.next().await.is_none(),
        "stream ends cleanly after the client closes"
    );

    // An error status, its message and its metadata travel back unchanged (trailers).
    let mut failing = request("x", 0);
    failing.fail_with_code = tonic::Code::NotFound as i32;
    let status = client.unary(failing).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "requested failure");
    assert_eq!(
        status.metadata().get("x-test-detail").unwrap(),
        "failed-on-purpose"
    );
    assert_eq!(backend.hits(), 5);
}

/// A `Stream` over an mpsc receiver (without pulling in tokio-stream).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test]
async fn port_declared_http_accepts_both_http_versions() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(47), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(46, 47)
        .service("web", backend.addr(), Protocol::Http)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}/both", mesh.upstream("web"));
    let h2 = curl(&["-i", "--http2-prior-knowledge", &url])
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&h2.stdout).starts_with("HTTP/2 200"));
    let h1 = curl(&["-i", &url]).await.unwrap();
    assert!(String::from_utf8_lossy(&h1.stdout).starts_with("HTTP/1.1 200"));
    assert_eq!(backend.hits(), 2);
}

/// An HTTP/2 client of an HTTP/1-only application: on an `http` port the proxy speaks
/// HTTP/1.1 to the application and it works; on a `detect` port (the request goes as the
/// client spoke) the failure says to declare the port `http`.
#[tokio::test]
async fn an_http2_client_reaches_an_http1_only_app_on_an_http_port() {
    skein_testkit::init_tracing();
    let old = HttpBackend::start_http1_only(SocketAddr::new(loopback(65), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(64, 65)
        .service("legacy", old.addr(), Protocol::Http)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}/menu", mesh.upstream("legacy"));
    let out = curl(&["-i", "--http2-prior-knowledge", &url])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(
        text.contains("x-echo-version: HTTP/1.1"),
        "the app got HTTP/1.1: {text}"
    );

    let old = HttpBackend::start_http1_only(SocketAddr::new(loopback(67), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(66, 67)
        .service("legacy", old.addr(), Protocol::Detect)
        .start()
        .await
        .unwrap();
    let url = format!("http://{}/menu", mesh.upstream("legacy"));
    let out = curl(&["-i", "--http2-prior-knowledge", &url])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 502"), "{text}");
    assert!(text.contains("skein-error: app_not_h2"), "{text}");
    assert!(text.contains("declare the port `protocol: http`"), "{text}");
    // HTTP/1.1 callers of the same port still get through.
    let out = curl(&["-i", &url]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// An HTTP/2 server (plaintext, prior knowledge, as a peer proxy speaks it) that resets
/// every request's stream with `REFUSED_STREAM`; counts the streams it refused.
async fn refusing_peer(
    addr: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = ::h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(::h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn a_stream_a_peer_refused_goes_to_another_endpoint_whatever_its_method() {
    use std::sync::atomic::Ordering;
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(47), 0))
        .await
        .unwrap();
    let spec = MeshSpec::new(46, 47).service("web", backend.addr(), Protocol::Http);
    let server = skein_proxy::RunningProxy::start(spec.server_config())
        .await
        .unwrap();
    // The caller holds two endpoints, round robin: the real peer proxy, and one that
    // refuses every stream (RFC 9113 §8.7: "closed prior to any processing").
    let (refuser, refused) = refusing_peer(SocketAddr::new(loopback(48), 0)).await;
    let mut config = spec.client_config(server.addrs.inbound);
    let web = std::sync::Arc::make_mut(&mut config.destinations[0]);
    web.endpoints.push(skein_model::Endpoint {
        address: refuser,
        identity: None,
    });
    web.policies = serde_yaml_ng::from_str(
        "- name: default/web\n  spec: {targetRef: {name: web}, loadBalancer: round-robin}\n",
    )
    .unwrap();
    let client = skein_proxy::RunningProxy::start(config).await.unwrap();
    let upstream = client.addrs.upstreams[0];

    // POSTs and DELETEs (without bodies: a body is streamed once unless a route `retry`
    // asks to keep a copy), which only a refusal that proves nothing was processed may
    // send again.
    let mut sender = skein_testkit::client::h1(upstream).await.unwrap();
    for i in 0..20 {
        let method = if i % 2 == 0 { "POST" } else { "DELETE" };
        let req = Request::builder()
            .method(method)
            .uri(format!("/order/{i}"))
            .header("host", "web")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = body_bytes(resp).await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{method} {i}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let refused = refused.load(Ordering::SeqCst);
    eprintln!("20 POSTs and DELETEs: all 200; the refusing endpoint refused {refused} streams");
    assert!(refused >= 3, "the refusing endpoint was tried: {refused}");
    assert_eq!(backend.hits(), 20, "each reached the application once");
    client.shutdown().await;
    server.shutdown().await;
}
