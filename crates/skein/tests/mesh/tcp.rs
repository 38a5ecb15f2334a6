//! Opaque TCP through two proxies: detected, declared, and server-speaks-first.

use skein_model::Protocol;
use skein_testkit::{loopback, BannerServer, MeshSpec, Side, TcpEcho};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn echo_detected_and_declared_with_half_close() {
    skein_testkit::init_tracing();
    let echo = TcpEcho::start(SocketAddr::new(loopback(61), 0))
        .await
        .unwrap();
    let echo2 = TcpEcho::start(SocketAddr::new(loopback(61), 0))
        .await
        .unwrap();
    let mesh = MeshSpec::new(60, 61)
        .service("echo", echo.addr(), Protocol::Detect)
        .service("echo-tcp", echo2.addr(), Protocol::Tcp)
        .start()
        .await
        .unwrap();
    for service in ["echo", "echo-tcp"] {
        let mut conn = TcpStream::connect(mesh.upstream(service)).await.unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = conn.split();
        let send = async {
            write.write_all(&payload).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = read.read_to_end(&mut back);
        let (_, n) = tokio::join!(send, recv);
        assert_eq!(n.unwrap(), payload.len(), "{service}");
        assert!(
            back == payload,
            "{service}: bytes came back intact after half-close"
        );
    }
    let tcp_in = ["direction=\"inbound\"", "protocol=\"tcp\""];
    assert_eq!(
        mesh.metric(Side::Server, "skein_tcp_connections_total", &tcp_in),
        2
    );
    let sent = mesh.metric(Side::Client, "skein_tcp_sent_bytes_total", &[]);
    assert_eq!(sent, 2_000_000);
}

#[tokio::test]
async fn server_speaks_first_connects_after_the_detection_timeout() {
    skein_testkit::init_tracing();
    let banner = BannerServer::start(SocketAddr::new(loopback(63), 0), "220 skein-test ready\r\n")
        .await
        .unwrap();
    let mesh = MeshSpec::new(62, 63)
        .service("smtp", banner.addr(), Protocol::Detect)
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let mut conn = TcpStream::connect(mesh.upstream("smtp")).await.unwrap();
    let mut buf = [0u8; 22];
    // The client says nothing; the banner must arrive once detection gives up (300 ms),
    // far sooner than this generous bound — a multi-second stall would fail.
    tokio::time::timeout(Duration::from_secs(3), conn.read_exact(&mut buf))
        .await
        .expect("banner within the detection timeout, not a long stall")
        .unwrap();
    assert_eq!(&buf, b"220 skein-test ready\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited for detection"
    );
    conn.write_all(b"EHLO test\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    conn.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO test\r\n");
    assert_eq!(
        mesh.metric(Side::Client, "skein_detect_timeouts_total", &[]),
        1
    );
}
