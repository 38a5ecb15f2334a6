//! Exercises every test backend directly with real clients (hyper HTTP/1 and HTTP/2, the
//! generated tonic client, tokio-tungstenite, raw TCP), so proxy tests can trust them.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skein_testkit::pb::echo_client::EchoClient;
use skein_testkit::pb::EchoRequest;
use skein_testkit::{
    init_tracing, loopback, pattern_bytes, BannerServer, GrpcBackend, HttpBackend, TcpEcho,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every awaited step gets this long; a hang fails the test instead of stalling CI.
const STEP: Duration = Duration::from_secs(10);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("test step timed out")
}

fn any_port(n: u8) -> SocketAddr {
    SocketAddr::new(loopback(n), 0)
}

async fn h1_client<B>(addr: SocketAddr) -> http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tcp = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (sender, conn) = bounded(http1::handshake(TokioIo::new(tcp)))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

async fn h2_client<B>(addr: SocketAddr) -> http2::SendRequest<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tcp = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (sender, conn) = bounded(http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "backend.test")
        .body(Empty::new())
        .expect("valid request")
}

fn header<'a>(resp: &'a http::Response<Incoming>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing response header {name}"))
        .to_str()
        .expect("ascii header")
}

async fn body_bytes(resp: http::Response<Incoming>) -> Bytes {
    bounded(resp.into_body().collect())
        .await
        .expect("read body")
        .to_bytes()
}

/// A request body the test feeds chunk by chunk, to prove the echo streams.
type ChannelBody = StreamBody<
    futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
>;

fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(stream.boxed()))
}

async fn next_data(resp: &mut http::Response<Incoming>) -> Bytes {
    let frame = bounded(resp.body_mut().frame())
        .await
        .expect("body ended early")
        .expect("body frame");
    frame.into_data().expect("data frame")
}

#[tokio::test]
async fn http1_echo_reports_request_and_records_it() {
    init_tracing();
    let backend = HttpBackend::start(any_port(11)).await.expect("start");
    assert_ne!(backend.addr().port(), 0);
    let mut client = h1_client(backend.addr()).await;
    let req = Request::post("/some/path?x=1")
        .header("host", "app.test:8080")
        .header("x-test-trace", "abc")
        .header("x-other", "not-copied")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("valid request");
    let resp = bounded(client.send_request(req)).await.expect("response");

    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-echo-method"), "POST");
    assert_eq!(header(&resp, "x-echo-path"), "/some/path?x=1");
    assert_eq!(header(&resp, "x-echo-host"), "app.test:8080");
    assert_eq!(header(&resp, "x-echo-version"), "HTTP/1.1");
    // host, x-test-trace, x-other, content-length
    assert_eq!(header(&resp, "x-echo-headers"), "4");
    assert_eq!(header(&resp, "x-test-trace"), "abc");
    assert!(resp.headers().get("x-other").is_none());
    assert_eq!(body_bytes(resp).await, "hello");

    assert_eq!(backend.hits(), 1);
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/some/path?x=1");
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[0].header("X-Test-Trace"), Some("abc"));
    assert_eq!(seen[0].body_len, 5);
    assert!(seen[0].body_complete);
}

#[tokio::test]
async fn http1_echo_streams_body_without_buffering() {
    init_tracing();
    let backend = HttpBackend::start(any_port(12)).await.expect("start");
    let mut client = h1_client(backend.addr()).await;
    let (tx, body) = channel_body();
    let req = Request::post("/stream")
        .header("host", "app.test")
        .body(body)
        .expect("valid request");
    tx.send(Bytes::from_static(b"first")).await.expect("send");
    let mut resp = bounded(client.send_request(req)).await.expect("response");
    // The second chunk is only sent once the first came back, so a buffering echo would hang.
    assert_eq!(next_data(&mut resp).await, "first");
    tx.send(Bytes::from_static(b"second")).await.expect("send");
    assert_eq!(next_data(&mut resp).await, "second");
    drop(tx);
    assert_eq!(body_bytes(resp).await, "");

    let seen = backend.seen();
    assert_eq!(seen[0].body_len, "firstsecond".len());
    assert!(seen[0].body_complete);
}

#[tokio::test]
async fn http2_echo_reports_authority_and_streams() {
    init_tracing();
    let backend = HttpBackend::start(any_port(13)).await.expect("start");
    let mut client = h2_client(backend.addr()).await;
    let (tx, body) = channel_body();
    let req = Request::put("http://app.test:9090/h2/path?q=2")
        .header("x-test-h2", "yes")
        .body(body)
        .expect("valid request");
    tx.send(Bytes::from_static(b"one")).await.expect("send");
    let mut resp = bounded(client.send_request(req)).await.expect("response");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(header(&resp, "x-echo-method"), "PUT");
    assert_eq!(header(&resp, "x-echo-path"), "/h2/path?q=2");
    assert_eq!(header(&resp, "x-echo-host"), "app.test:9090");
    assert_eq!(header(&resp, "x-echo-version"), "HTTP/2.0");
    assert_eq!(header(&resp, "x-echo-headers"), "1");
    assert_eq!(header(&resp, "x-test-h2"), "yes");
    assert_eq!(next_data(&mut resp).await, "one");
    tx.send(Bytes::from_static(b"two")).await.expect("send");
    assert_eq!(next_data(&mut resp).await, "two");
    drop(tx);
    assert_eq!(body_bytes(resp).await, "");

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].body_len, 6);
    assert!(seen[0].body_complete);
}

#[tokio::test]
async fn bytes_route_streams_chunked_on_http1_and_http2() {
    init_tracing();
    let backend = HttpBackend::start(any_port(14)).await.expect("start");
    let n = 40_000;
    let mut h1 = h1_client(backend.addr()).await;
    let resp = bounded(h1.send_request(get(&format!("/bytes?n={n}"))))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "transfer-encoding"), "chunked");
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(body_bytes(resp).await, pattern_bytes(n));

    let mut h2 = h2_client(backend.addr()).await;
    let req = Request::get(format!("http://backend.test/bytes?n={n}"))
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let resp = bounded(h2.send_request(req)).await.expect("response");
    assert_eq!(body_bytes(resp).await, pattern_bytes(n));

    let resp = bounded(h1.send_request(get("/bytes")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(backend.hits(), 3);
}

#[tokio::test]
async fn chunked_slow_and_status_routes() {
    init_tracing();
    let backend = HttpBackend::start(any_port(15)).await.expect("start");
    let mut client = h1_client(backend.addr()).await;

    let resp = bounded(client.send_request(get("/chunked?n=3")))
        .await
        .expect("response");
    assert_eq!(header(&resp, "transfer-encoding"), "chunked");
    assert_eq!(body_bytes(resp).await, "chunk-0\nchunk-1\nchunk-2\n");

    let started = Instant::now();
    let resp = bounded(client.send_request(get("/slow?ms=50")))
        .await
        .expect("response");
    assert_eq!(body_bytes(resp).await, "slow done");
    assert!(started.elapsed() >= Duration::from_millis(50));

    let resp = bounded(client.send_request(get("/status/503")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_bytes(resp).await, "");

    let resp = bounded(client.send_request(get("/status/nope")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn trailers_route_on_http1_and_http2() {
    init_tracing();
    let backend = HttpBackend::start(any_port(16)).await.expect("start");

    let mut h1 = h1_client(backend.addr()).await;
    let mut req = get("/trailers");
    req.headers_mut()
        .insert("te", http::HeaderValue::from_static("trailers"));
    let resp = bounded(h1.send_request(req)).await.expect("response");
    let collected = bounded(resp.into_body().collect()).await.expect("body");
    assert_eq!(
        collected.trailers().and_then(|t| t.get("x-trailer")),
        Some(&http::HeaderValue::from_static("done"))
    );
    assert_eq!(collected.to_bytes(), "ok");

    let mut h2 = h2_client(backend.addr()).await;
    let req = Request::get("http://backend.test/trailers")
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let resp = bounded(h2.send_request(req)).await.expect("response");
    let collected = bounded(resp.into_body().collect()).await.expect("body");
    assert_eq!(
        collected.trailers().and_then(|t| t.get("x-trailer")),
        Some(&http::HeaderValue::from_static("done"))
    );
    assert_eq!(collected.to_bytes(), "ok");
}

#[tokio::test]
async fn websocket_echoes_until_close() {
    init_tracing();
    let backend = HttpBackend::start(any_port(17)).await.expect("start");
    let tcp = bounded(TcpStream::connect(backend.addr()))
        .await
        .expect("connect");
    let url = format!("ws://{}/ws", backend.addr());
    let (mut ws, resp) = bounded(tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello ws")).await.expect("send text");
    let echoed = bounded(ws.next()).await.expect("open").expect("message");
    assert_eq!(echoed, Message::text("hello ws"));
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let echoed = bounded(ws.next()).await.expect("open").expect("message");
    assert_eq!(echoed, Message::binary(vec![1u8, 2, 3]));

    ws.close(None).await.expect("close");
    // The server answers the close; the stream then ends.
    while let Some(msg) = bounded(ws.next()).await {
        match msg {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected message after close: {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(backend.hits(), 1);
    assert_eq!(backend.seen()[0].path, "/ws");
}

#[tokio::test]
async fn dropping_http_backend_stops_connections_and_listener() {
    init_tracing();
    let backend = HttpBackend::start(any_port(18)).await.expect("start");
    let addr = backend.addr();
    let mut h1 = h1_client(addr).await;
    let mut h2 = h2_client(addr).await;
    let slow_h1 = tokio::spawn(h1.send_request(get("/slow?ms=60000")));
    let req = Request::get("http://backend.test/slow?ms=60000")
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let slow_h2 = tokio::spawn(h2.send_request(req));
    while backend.hits() < 2 {
        bounded(tokio::time::sleep(Duration::from_millis(5))).await;
    }
    drop(backend);

    let h1_result = bounded(slow_h1).await.expect("join");
    assert!(h1_result.is_err(), "in-flight HTTP/1 request must fail");
    let h2_result = bounded(slow_h2).await.expect("join");
    assert!(h2_result.is_err(), "in-flight HTTP/2 request must fail");
    bounded(async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn echo_request(message: &str, count: u32) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        count,
        fail_with_code: 0,
    }
}

async fn grpc_client(addr: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    bounded(EchoClient::connect(format!("http://{addr}")))
        .await
        .expect("gRPC connect")
}

#[tokio::test]
async fn grpc_unary_and_requested_failure() {
    init_tracing();
    let backend = GrpcBackend::start(any_port(21)).await.expect("start");
    let mut client = grpc_client(backend.addr()).await;

    let reply = bounded(client.unary(echo_request("hi", 7)))
        .await
        .expect("unary ok")
        .into_inner();
    assert_eq!((reply.message.as_str(), reply.count), ("hi", 7));

    let failing = EchoRequest {
        fail_with_code: tonic::Code::PermissionDenied as i32,
        ..echo_request("no", 0)
    };
    let status = bounded(client.unary(failing))
        .await
        .expect_err("requested failure");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "requested failure");
    assert_eq!(
        status
            .metadata()
            .get("x-test-detail")
            .and_then(|v| v.to_str().ok()),
        Some("failed-on-purpose")
    );
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn grpc_streaming_calls() {
    init_tracing();
    let backend = GrpcBackend::start(any_port(22)).await.expect("start");
    let mut client = grpc_client(backend.addr()).await;

    let mut stream = bounded(client.server_stream(echo_request("s", 3)))
        .await
        .expect("server stream")
        .into_inner();
    let mut counts = Vec::new();
    while let Some(reply) = bounded(stream.message()).await.expect("stream message") {
        assert_eq!(reply.message, "s");
        counts.push(reply.count);
    }
    assert_eq!(counts, [1, 2, 3]);

    let requests = futures_util::stream::iter(["a", "b", "c"].map(|m| echo_request(m, 0)));
    let reply = bounded(client.client_stream(requests))
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!((reply.message.as_str(), reply.count), ("abc", 3));

    // Bidi: each reply must arrive before the next request is sent.
    let (tx, rx) = mpsc::channel::<EchoRequest>(4);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
        let req = rx.recv().await?;
        Some((req, rx))
    });
    tx.send(echo_request("ping-1", 1)).await.expect("send");
    let mut inbound = bounded(client.bidi(outbound))
        .await
        .expect("bidi")
        .into_inner();
    for i in 1..=3u32 {
        if i > 1 {
            tx.send(echo_request(&format!("ping-{i}"), i))
                .await
                .expect("send");
        }
        let reply = bounded(inbound.message())
            .await
            .expect("bidi message")
            .expect("bidi reply");
        assert_eq!(reply.message, format!("ping-{i}"));
        assert_eq!(reply.count, i);
    }
    drop(tx);
    assert!(bounded(inbound.message()).await.expect("end").is_none());
    assert_eq!(backend.hits(), 3);
}

#[tokio::test]
async fn tcp_echo_half_closes_after_client_eof() {
    init_tracing();
    let server = TcpEcho::start(any_port(31)).await.expect("start");
    let mut stream = bounded(TcpStream::connect(server.addr()))
        .await
        .expect("connect");
    stream.write_all(b"raw bytes").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut echoed = Vec::new();
    bounded(stream.read_to_end(&mut echoed))
        .await
        .expect("read");
    assert_eq!(echoed, b"raw bytes");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn banner_server_speaks_first_then_echoes() {
    init_tracing();
    let banner = "220 skein-test ready\r\n";
    let server = BannerServer::start(any_port(32), banner)
        .await
        .expect("start");
    let mut stream = bounded(TcpStream::connect(server.addr()))
        .await
        .expect("connect");
    let mut got = vec![0u8; banner.len()];
    bounded(stream.read_exact(&mut got))
        .await
        .expect("read banner");
    assert_eq!(got, banner.as_bytes());
    stream.write_all(b"HELO\r\n").await.expect("write");
    let mut reply = [0u8; 6];
    bounded(stream.read_exact(&mut reply))
        .await
        .expect("read echo");
    assert_eq!(&reply, b"HELO\r\n");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn dropping_tcp_echo_closes_open_connections() {
    init_tracing();
    let server = TcpEcho::start(any_port(33)).await.expect("start");
    let addr = server.addr();
    let mut stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    stream.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    bounded(stream.read_exact(&mut one)).await.expect("echo");
    drop(server);
    let mut rest = Vec::new();
    // EOF or reset, but promptly: the connection task is gone.
    let _ = bounded(stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn dropping_backends_ends_websocket_and_grpc_streams() {
    init_tracing();
    let http = HttpBackend::start(any_port(19)).await.expect("start");
    let tcp = bounded(TcpStream::connect(http.addr()))
        .await
        .expect("connect");
    let url = format!("ws://{}/ws", http.addr());
    let (mut ws, _) = bounded(tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("websocket handshake");
    drop(http);
    // Closed or reset without a close handshake, but promptly.
    match bounded(ws.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(msg)) => panic!("unexpected message from dropped backend: {msg:?}"),
    }

    let grpc = GrpcBackend::start(any_port(23)).await.expect("start");
    let mut client = grpc_client(grpc.addr()).await;
    let (tx, rx) = mpsc::channel::<EchoRequest>(4);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
        let req = rx.recv().await?;
        Some((req, rx))
    });
    tx.send(echo_request("before-drop", 1)).await.expect("send");
    let mut inbound = bounded(client.bidi(outbound))
        .await
        .expect("bidi")
        .into_inner();
    bounded(inbound.message())
        .await
        .expect("bidi message")
        .expect("bidi reply");
    drop(grpc);
    assert!(
        bounded(inbound.message()).await.is_err(),
        "open bidi stream must fail once the backend is dropped"
    );
}
