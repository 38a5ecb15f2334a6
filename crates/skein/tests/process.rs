//! Tests that run `skein proxy` as real processes: graceful shutdown on SIGTERM, and memory
//! that stays bounded while a large body streams through (and the allocator's own account
//! of it on `/metrics`).

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use skein_model::{Protocol, ProxyConfig};
use skein_proxy::http::{boxed, empty};
use skein_testkit::client::{body_bytes, h1, h2};
use skein_testkit::{loopback, HttpBackend, MeshSpec, ProxyProcess};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_skein");

/// Two proxy processes on fixed ports of their own loopback addresses.
struct Pair {
    client: ProxyProcess,
    server: ProxyProcess,
    upstream: SocketAddr,
}

async fn pair(client: u8, server: u8, backend: SocketAddr) -> Pair {
    let spec = MeshSpec::new(client, server).service("web", backend, Protocol::Detect);
    let mut server_cfg: ProxyConfig = spec.server_config();
    server_cfg.inbound.listen = SocketAddr::new(loopback(server), 4143);
    server_cfg.admin.listen = SocketAddr::new(loopback(server), 4191);
    let mut client_cfg = spec.client_config(server_cfg.inbound.listen);
    client_cfg.inbound.listen = SocketAddr::new(loopback(client), 4143);
    client_cfg.admin.listen = SocketAddr::new(loopback(client), 4191);
    client_cfg.outbound.http_proxy = None;
    let upstream = SocketAddr::new(loopback(client), 15001);
    client_cfg.outbound.upstreams[0].listen = upstream;
    let bin = Path::new(BIN);
    let server = ProxyProcess::spawn(bin, &server_cfg, &[]).await.unwrap();
    let client = ProxyProcess::spawn(bin, &client_cfg, &[]).await.unwrap();
    Pair {
        client,
        server,
        upstream,
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(91), 0))
        .await
        .unwrap();
    let mut p = pair(90, 91, backend.addr()).await;

    let mut http1 = h1(p.upstream).await.unwrap();
    let mut http2 = h2(p.upstream).await.unwrap();
    let slow1 = tokio::spawn(async move {
        let req = Request::get("/slow?ms=1500")
            .header("host", "web")
            .body(empty())
            .unwrap();
        let resp = http1.send_request(req).await.unwrap();
        (resp.status(), body_bytes(resp).await.unwrap())
    });
    let slow2 = tokio::spawn(async move {
        let req = Request::get("http://web/slow?ms=1500")
            .body(empty())
            .unwrap();
        let resp = http2.send_request(req).await.unwrap();
        (resp.status(), body_bytes(resp).await.unwrap())
    });
    // Both requests are at the backend before the signals.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backend.hits() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend.hits(), 2);
    p.client.signal("TERM").unwrap();
    p.server.signal("TERM").unwrap();

    // New connections are refused while the old ones drain.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(p.upstream).await.is_err(),
        "a draining proxy stops accepting"
    );

    for slow in [slow1, slow2] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), slow)
            .await
            .expect("in-flight request finishes")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"slow done");
    }
    for proxy in [&mut p.client, &mut p.server] {
        let status = proxy.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

#[tokio::test]
async fn memory_stays_bounded_while_50mb_streams_through() {
    skein_testkit::init_tracing();
    let backend = HttpBackend::start(SocketAddr::new(loopback(93), 0))
        .await
        .unwrap();
    let p = pair(92, 93, backend.addr()).await;
    let baseline = (
        p.client.peak_rss_kib().unwrap(),
        p.server.peak_rss_kib().unwrap(),
    );

    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 800; // 50 MiB
    let chunks =
        futures_util::stream::iter((0..CHUNKS).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![3u8; CHUNK])))
        }));
    let req = Request::post("/upload")
        .header("host", "web")
        .body(boxed(StreamBody::new(chunks)))
        .unwrap();
    let mut sender = h1(p.upstream).await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len();
        }
    }
    assert_eq!(total, CHUNK * CHUNKS);

    // Each proxy held far less than the 50 MiB body at its peak: it streamed.
    for (name, proxy, before) in [
        ("client", &p.client, baseline.0),
        ("server", &p.server, baseline.1),
    ] {
        let peak = proxy.peak_rss_kib().unwrap();
        eprintln!("{name} proxy peak RSS: {peak} KiB (at start {before} KiB)");
        assert!(
            peak < 40 * 1024,
            "{name} proxy peak RSS {peak} KiB: the body was buffered"
        );
        // Its allocator says what it holds: jemalloc's counters, in order, and nowhere
        // near the body's size now that the body has gone.
        // One scrape, one reading: the three are taken together.
        let text = proxy.admin_get("/metrics").await.unwrap();
        let heap = |kind: &str| {
            let name = format!("skein_memory_heap_{kind}_bytes");
            skein_proxy::metrics::sum_samples(&text, &name, &[])
        };
        let (allocated, active, resident) = (heap("allocated"), heap("active"), heap("resident"));
        eprintln!("{name} proxy heap: {allocated} allocated, {active} active, {resident} resident");
        assert!(allocated > 0, "{name}: no heap metrics on /metrics");
        assert!(allocated <= active && active <= resident, "{name}");
        assert!(allocated < 16 << 20, "{name} still holds {allocated} bytes");
    }
}
