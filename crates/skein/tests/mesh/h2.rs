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
