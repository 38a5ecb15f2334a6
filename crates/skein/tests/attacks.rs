//! Attack traffic against a proxy's listeners, each while a well-behaved client calls
//! through the same proxies: its requests must all succeed (its p99 is printed), the
//! attacked proxy's peak resident memory must stay within a stated bound above where it
//! started, and the attacker must be cut off (its connections closed, or its stream
//! refused) where the attack has an end the proxy can see.
//!
//! The stage: a control plane (in this process), an application behind a `skein proxy`
//! process (the server side, attacked on its inbound listener, over mutual TLS with a
//! certificate the attacker obtained as a workload of the same Service, and in plain TCP
//! before any handshake), and a caller's `skein proxy` process (attacked on its outbound
//! upstream listener, as a misbehaving application beside it would). Both proxies run
//! with `limits.headerTimeout` and `limits.handshakeTimeout` of 2 s, so that what those
//! cut off is cut off within the test.
//!
//! The control plane (a `skein control` process) is attacked from an address of its own:
//! its HTTP API (HTTP/1.1) with slowloris, a thousand idle connections and bodies without
//! end, while a well-behaved client asks `/healthz` every 20 ms; its proxy API (gRPC over
//! TLS) with unfinished handshakes and the HTTP/2 attacks by a client without a
//! certificate (as every new proxy connects), while a well-behaved new proxy joins every
//! 100 ms. The caller's proxy's admin listener takes slowloris and idle connections (up
//! to its cap of 64; past it, connections are refused, which `security.rs` tests) while a
//! monitor asks `/ready`.
//!
//! Addresses 127.0.22.40–49; every process is killed and every directory removed by drop
//! guards, also when a test fails.

use http::{Request, StatusCode};
use skein_control::server::{ControlOptions, RunningControl};
use skein_identity::SpiffeId;
use skein_model::resource::parse_documents;
use skein_model::{Protocol, ProxyConfig, Upstream};
use skein_proxy::http::empty;
use skein_testkit::client::{body_bytes, h1};
use skein_testkit::control::{free_port, reset_peak_rss, status_kib, ControlledProxy, TempDir};
use skein_testkit::h2raw;
use skein_testkit::{HttpBackend, MeshSpec};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_skein");
/// The application's port.
const PORT: u16 = 18095;
/// Where the caller's proxy listens for its application's calls to `web`.
const UPSTREAM_PORT: u16 = 19200;
/// What a proxy's peak resident memory may grow by during one attack.
const GROWTH_BOUND_KIB: u64 = 32 * 1024;
/// Cut-off timeouts both proxies run with.
const CUT_OFF: Duration = Duration::from_secs(2);

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 22, n])
}

/// A mesh of one address.
fn at(host: IpAddr) -> MeshSpec {
    MeshSpec {
        client_ip: host,
        server_ip: host,
        ..MeshSpec::new(1, 1)
    }
}

struct Stage {
    control: RunningControl,
    _dir: TempDir,
    _app: HttpBackend,
    server: ControlledProxy,
    client: ControlledProxy,
    /// The caller's proxy's upstream listener for `web`.
    upstream: SocketAddr,
    /// The server's inbound listener.
    inbound: SocketAddr,
}

async fn token(control: &RunningControl, service: &str) -> skein_identity::JoinToken {
    control
        .pki
        .create_token("default", service, Duration::from_secs(600), 1)
        .await
        .unwrap()
        .0
}

fn short_timeouts(config: &mut ProxyConfig) {
    config.limits.header_timeout = CUT_OFF;
    config.limits.handshake_timeout = CUT_OFF;
}

/// The control plane on 127.0.22.`first`, the server side on `first`+1, the caller's
/// proxy on `first`+2.
async fn stage(first: u8) -> Stage {
    skein_testkit::init_tracing();
    let dir = TempDir::new(&format!("attacks-{first}")).unwrap();
    let control = RunningControl::start(ControlOptions::embedded(dir.path(), ip(first), "test"))
        .await
        .unwrap();
    let resources = format!(
        "apiVersion: skein.dev/v1alpha1\nkind: Service\nmetadata: {{name: web}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: {PORT}, protocol: http}}]}}\n"
    );
    control
        .registry
        .apply(parse_documents(&resources, "test").unwrap())
        .await
        .unwrap();
    let host = ip(first + 1);
    let app = HttpBackend::start(SocketAddr::new(host, PORT))
        .await
        .unwrap();
    let mut config = at(host)
        .service("web", app.addr(), Protocol::Http)
        .server_config();
    config.workload.labels.insert("app".into(), "web".into());
    config.workload.name = "web-1".into();
    config.workload.service = "web".into();
    config.inbound.listen = SocketAddr::new(host, 4143);
    config.admin.listen = free_port(host).unwrap();
    short_timeouts(&mut config);
    let server = ControlledProxy::start(
        Path::new(BIN),
        &config,
        control.grpc,
        &token(&control, "web").await,
    )
    .await
    .unwrap();
    let host = ip(first + 2);
    let mut config = at(host).client_config(SocketAddr::new(host, 4143));
    config.destinations.clear();
    let upstream = SocketAddr::new(host, UPSTREAM_PORT);
    config.outbound.upstreams = vec![Upstream {
        listen: upstream,
        service: "web".into(),
        port: PORT,
    }];
    config.inbound.listen = SocketAddr::new(host, 4143);
    config.admin.listen = free_port(host).unwrap();
    short_timeouts(&mut config);
    let client = ControlledProxy::start(
        Path::new(BIN),
        &config,
        control.grpc,
        &token(&control, &config.workload.service).await,
    )
    .await
    .unwrap();
    let stage = Stage {
        control,
        _dir: dir,
        _app: app,
        server,
        client,
        upstream,
        inbound: SocketAddr::new(ip(first + 1), 4143),
    };
    // The caller reaches `web` before any attack starts.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut c) = h1(stage.upstream).await {
            let req = Request::get("/echo").body(empty()).unwrap();
            if let Ok(resp) = c.send_request(req).await {
                if resp.status() == StatusCode::OK {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "the caller never reached web");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stage
}

/// What the well-behaved client calls.
#[derive(Clone)]
enum Target {
    /// GETs of a path on a keep-alive connection, every 20 ms: through the caller's proxy
    /// (its upstream listener for `web`), or of a listener's own page.
    Http(SocketAddr, &'static str),
    /// The control plane's proxy API: a new proxy joining every 100 ms (a fresh key, a
    /// TLS handshake, a `Certify` call with a token of many uses).
    Certify(skein_proxy::control::ControlConfig, SpiffeId),
}

/// A well-behaved client of a [`Target`], each call timed.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, Vec<String>, usize)>,
}

impl Watch {
    fn start(target: &Target) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = match target.clone() {
            Target::Http(addr, path) => tokio::spawn(Self::get(addr, path, stopped)),
            Target::Certify(join, id) => tokio::spawn(Self::certify(join, id, stopped)),
        };
        Watch { stop, task }
    }

    async fn certify(
        join: skein_proxy::control::ControlConfig,
        id: SpiffeId,
        stopped: Arc<AtomicBool>,
    ) -> (Vec<Duration>, Vec<String>, usize) {
        let (mut took, mut failed) = (Vec::new(), Vec::new());
        // Bounded: at most 60 s of calls.
        let until = Instant::now() + Duration::from_secs(60);
        while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
            let started = Instant::now();
            match skein_proxy::control::certify(&join, &id).await {
                Ok(_) => took.push(started.elapsed()),
                Err(e) => failed.push(e.message),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (took, failed, 0)
    }

    async fn get(
        upstream: SocketAddr,
        path: &'static str,
        stopped: Arc<AtomicBool>,
    ) -> (Vec<Duration>, Vec<String>, usize) {
        {
            let (mut took, mut failed) = (Vec::new(), Vec::new());
            let mut resent = 0;
            let mut sender = None;
            // Bounded: at most 60 s of requests.
            let until = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
                if sender.is_none() {
                    sender = h1(upstream).await.ok();
                }
                let started = Instant::now();
                let req = || {
                    Request::get(path)
                        .header("host", "web")
                        .body(empty())
                        .unwrap()
                };
                let mut answer = match sender.as_mut() {
                    Some(s) => s.send_request(req()).await,
                    None => {
                        failed.push("cannot connect".into());
                        continue;
                    }
                };
                // A keep-alive connection the proxy closed as idle (`headerTimeout`) just
                // as the request went out, the client having been slow to send it: sent
                // again on a new connection, as HTTP clients do with a request on a
                // reused connection that closed before any answer (hyper's pool,
                // browsers).
                if answer
                    .as_ref()
                    .is_err_and(|e| e.is_canceled() || e.is_incomplete_message())
                {
                    resent += 1;
                    sender = h1(upstream).await.ok();
                    if let Some(s) = sender.as_mut() {
                        answer = s.send_request(req()).await;
                    }
                }
                let answer = answer.map_err(|e| e.to_string());
                match answer {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        if body_bytes(resp).await.is_ok() {
                            took.push(started.elapsed());
                        } else {
                            failed.push("body failed".into());
                        }
                    }
                    Ok(resp) => failed.push(format!("status {}", resp.status())),
                    Err(e) => {
                        failed.push(e);
                        sender = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (took, failed, resent)
        }
    }

    /// Stops it: requests that succeeded, their p99, the failures, and how many were sent
    /// again after the proxy closed their idle keep-alive connection.
    async fn finish(self) -> (usize, Duration, Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut took, failed, resent) = self.task.await.unwrap();
        took.sort();
        let p99 = took
            .get((took.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default();
        (took.len(), p99, failed, resent)
    }
}

/// Runs `attack` against the process `pid` while a well-behaved client calls `target`;
/// `attack` says whether the attacker was cut off. Asserts the client lost nothing, the
/// process's peak RSS grew by at most [`GROWTH_BOUND_KIB`], and the cut-off when
/// `must_cut` says it is due.
async fn under<F>(name: &str, pid: u32, target: &Target, must_cut: bool, attack: F)
where
    F: std::future::Future<Output = bool>,
{
    reset_peak_rss(pid).unwrap();
    let before = status_kib(pid, "VmRSS").unwrap();
    let watch = Watch::start(target);
    let started = Instant::now();
    let cut = attack.await;
    let lasted = started.elapsed();
    let (ok, p99, failed, resent) = watch.finish().await;
    let peak = status_kib(pid, "VmHWM").unwrap();
    eprintln!(
        "attack {name}: {lasted:.1?}; cut off: {cut}; RSS {} → peak {} MiB (+{} KiB); well-behaved client: {ok} ok, {} failed, {resent} resent after an idle close, p99 {p99:.1?}",
        before / 1024,
        peak / 1024,
        peak.saturating_sub(before),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{name}: the well-behaved client failed: {failed:?}"
    );
    assert!(ok > 0, "{name}: the well-behaved client ran");
    assert!(
        peak.saturating_sub(before) <= GROWTH_BOUND_KIB,
        "{name}: the proxy grew from {before} KiB to a peak of {peak} KiB"
    );
    if must_cut {
        assert!(cut, "{name}: the attacker was not cut off");
    }
}

/// From `from`, sends `head` to `api` and then a body as fast as it is taken, for at most
/// 5 s; whether the API ended the connection within 8 s, and whether it answered `4xx`
/// first (a reset the kernel delivers before the answer can hide it).
async fn endless_body(from: SocketAddr, api: SocketAddr, head: &'static str) -> (bool, bool) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(from).unwrap();
    let conn = socket.connect(api).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let block = if head.contains("chunked") {
        [
            format!("{:x}\r\n", 64 * 1024).into_bytes(),
            vec![b'b'; 64 * 1024],
            b"\r\n".to_vec(),
        ]
        .concat()
    } else {
        vec![b'b'; 64 * 1024]
    };
    let writer = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if wr.write_all(&block).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), rd.read_to_end(&mut answer)).await;
    writer.abort();
    (read.is_ok(), answer.starts_with(b"HTTP/1.1 4"))
}

/// Opens `n` connections to `addr`, on each writes `first` then, every 300 ms, `drip`
/// (nothing if empty); true when the proxy closed every one within `within`.
async fn hold(
    addr: SocketAddr,
    n: usize,
    first: &'static [u8],
    drip: &'static [u8],
    within: Duration,
) -> bool {
    hold_from(None, addr, n, first, drip, within).await
}

/// [`hold`], from the address `from` (else the kernel's choice).
async fn hold_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    n: usize,
    first: &'static [u8],
    drip: &'static [u8],
    within: Duration,
) -> bool {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let mut conn = match from {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::new(ip, 0)).unwrap();
                    socket.connect(addr).await
                }
            }
            .expect("connect to the listener");
            // Closed before the first bytes went out: cut off, though not by a timeout.
            if conn.write_all(first).await.is_err() {
                return true;
            }
            let deadline = tokio::time::Instant::now() + within;
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    r = conn.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {
                        if !drip.is_empty() && conn.write_all(drip).await.is_err() {
                            return true;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return false,
                }
            }
        });
    }
    let mut open = 0;
    while let Some(closed) = tasks.join_next().await {
        open += usize::from(!closed.unwrap());
    }
    if open > 0 {
        eprintln!("{open} of {n} connections to {addr} still open after {within:?}");
        let out = std::process::Command::new("sh").arg("-c").arg(format!("ss -tan '( sport = :{} or dport = :{} )' | awk '{{print $1}}' | sort | uniq -c; cat /proc/net/netstat | grep -i listen", addr.port(), addr.port())).output().unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    open == 0
}

/// What an HTTP/2 peer saw back.
#[derive(Debug, Default)]
struct Seen {
    goaway: bool,
    closed: bool,
    /// Streams reset by the proxy.
    resets: usize,
    /// Response heads on stream 1, and whether the first was `:status 200`.
    heads: usize,
    ok_head: bool,
}

/// Reads frames until GOAWAY, EOF or `within`.
async fn read_frames(io: &mut (impl AsyncRead + Unpin), within: Duration) -> Seen {
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(within, async {
        let mut head = [0u8; 9];
        loop {
            if io.read_exact(&mut head).await.is_err() {
                seen.closed = true;
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut payload).await.is_err() {
                seen.closed = true;
                return;
            }
            match head[3] {
                h2raw::kind::GOAWAY => {
                    seen.goaway = true;
                    return;
                }
                h2raw::kind::RST_STREAM => seen.resets += 1,
                h2raw::kind::HEADERS => {
                    seen.heads += 1;
                    if seen.heads == 1 {
                        // `:status 200` is static index 8.
                        seen.ok_head = payload.first() == Some(&0x88);
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    seen
}

/// Writes `frames` (after the preface and an empty SETTINGS) without reading, giving
/// up after 10 s (a peer that stops reading stalls the writer); then reads what came
/// back for up to 1 s.
async fn flood(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    frames: impl Iterator<Item = Vec<u8>>,
) -> Seen {
    let wrote = tokio::time::timeout(Duration::from_secs(10), async {
        io.write_all(h2raw::PREFACE).await?;
        io.write_all(&h2raw::settings(&[])).await?;
        let mut batch = Vec::with_capacity(64 * 1024);
        for f in frames {
            batch.extend_from_slice(&f);
            if batch.len() >= 64 * 1024 {
                io.write_all(&batch).await?;
                batch.clear();
            }
        }
        io.write_all(&batch).await?;
        io.flush().await
    })
    .await;
    let broken = matches!(wrote, Ok(Err(_)));
    let mut seen = read_frames(&mut io, Duration::from_secs(1)).await;
    seen.closed |= broken;
    seen
}

/// Rapid reset: 20,000 streams each opened and cancelled at once.
fn rapid_reset(authority: &'static str) -> impl Iterator<Item = Vec<u8>> {
    let block = h2raw::get_block(authority, "/echo");
    (0..20_000u32).flat_map(move |i| {
        let id = 2 * i + 1;
        [
            h2raw::headers(id, &block, h2raw::END_HEADERS | h2raw::END_STREAM),
            h2raw::rst_stream(id, 8),
        ]
    })
}

/// A header block that never ends: HEADERS without END_HEADERS, then 1,000 CONTINUATION
/// frames of 16 KiB of headers each (16 MiB).
fn continuation_flood(authority: &'static str) -> impl Iterator<Item = Vec<u8>> {
    let mut filler = Vec::new();
    while filler.len() < 16_000 {
        h2raw::literal(b"x-flood", &[b'a'; 100], &mut filler);
    }
    std::iter::once(h2raw::headers(1, &h2raw::get_block(authority, "/echo"), 0))
        .chain((0..1_000).map(move |_| h2raw::continuation(1, &filler, 0)))
}

/// An HPACK bomb: one 4,000-byte header put in the dynamic table, then referenced 16,000
/// times (64 MB decoded from about 20 KB sent).
fn hpack_bomb(authority: &'static str) -> impl Iterator<Item = Vec<u8>> {
    let mut block = h2raw::get_block(authority, "/echo");
    h2raw::indexed_literal(b"x-bomb", &[b'b'; 4_000], &mut block);
    for _ in 0..16_000 {
        h2raw::indexed(62, &mut block);
    }
    let chunks: Vec<Vec<u8>> = block.chunks(16_000).map(<[u8]>::to_vec).collect();
    let last = chunks.len() - 1;
    chunks.into_iter().enumerate().map(move |(i, c)| {
        let flags = if i == last {
            h2raw::END_HEADERS | h2raw::END_STREAM
        } else {
            0
        };
        if i == 0 {
            h2raw::headers(1, &c, flags)
        } else {
            h2raw::continuation(1, &c, flags)
        }
    })
}

/// 100,000 SETTINGS frames, none of their acknowledgements read.
fn settings_flood() -> impl Iterator<Item = Vec<u8>> {
    (0..100_000).map(|_| h2raw::settings(&[(0x3, 100)]))
}

/// 100,000 PINGs, none of their answers read.
fn ping_flood() -> impl Iterator<Item = Vec<u8>> {
    (0..100_000u64).map(|i| h2raw::ping(i.to_be_bytes()))
}

/// An HTTP/2 attack, by name and the frames it sends on one connection.
type H2Attack = (
    &'static str,
    fn() -> Box<dyn Iterator<Item = Vec<u8>> + Send>,
);

/// The HTTP/2 attacks, each kept up for 2 s on fresh connections from `connect`.
/// Rapid reset, the CONTINUATION flood and the HPACK bomb must each end every connection
/// (GOAWAY or close; for the bomb, a refused stream will do). SETTINGS and PING floods
/// must hold nothing: each frame is answered and forgotten; an attacker that stops
/// reading is cut off by the keepalive (no answer to the proxy's PING within 20 s + 10 s),
/// later than this test waits.
async fn h2_floods<C, Fut, S>(name: &str, pid: u32, target: &Target, connect: C)
where
    C: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let attacks: [(H2Attack, bool); 5] = [
        (("rapid reset", || Box::new(rapid_reset("web"))), true),
        (
            ("CONTINUATION flood", || Box::new(continuation_flood("web"))),
            true,
        ),
        (("HPACK bomb", || Box::new(hpack_bomb("web"))), true),
        (("SETTINGS flood", || Box::new(settings_flood())), false),
        (("PING flood", || Box::new(ping_flood())), false),
    ];
    for ((kind, frames), must_cut) in attacks {
        let attack = format!("{name} {kind}");
        under(&attack, pid, target, must_cut, async {
            let until = Instant::now() + Duration::from_secs(2);
            let (mut connections, mut cut) = (0, 0);
            while Instant::now() < until {
                let seen = flood(connect().await, frames()).await;
                connections += 1;
                // Refused: the connection ended, or (the bomb) its stream was reset or
                // answered with anything but 200.
                cut += usize::from(
                    seen.goaway
                        || seen.closed
                        || seen.resets > 0
                        || (seen.heads > 0 && !seen.ok_head),
                );
            }
            eprintln!("{attack}: {cut} of {connections} connections cut off");
            cut == connections
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_listener_survives_hostile_applications() {
    let stage = stage(40).await;
    let (pid, upstream) = (stage.client.pid(), stage.upstream);
    let target = Target::Http(upstream, "/echo");
    // Slowloris: 200 request heads, a header line every 300 ms, never finished.
    under("outbound slowloris", pid, &target, true, async {
        hold(
            upstream,
            200,
            b"GET /echo HTTP/1.1\r\nhost: web\r\n",
            b"x-slow: 1\r\n",
            CUT_OFF * 3,
        )
        .await
    })
    .await;
    // 1,000 connections that send nothing.
    under("outbound idle connections", pid, &target, true, async {
        hold(upstream, 1_000, b"", b"", CUT_OFF * 3).await
    })
    .await;
    // Slow read: 50 streams of a 4 MiB response each, windows wide open, never read.
    under("outbound slow read", pid, &target, false, async {
        let mut conn = TcpStream::connect(upstream).await.unwrap();
        let mut frames = vec![
            h2raw::PREFACE.to_vec(),
            h2raw::settings(&[(0x4, 0x7fff_ffff)]),
            h2raw::window_update(0, 0x7fff_0000),
        ];
        let block = h2raw::get_block("web", "/bytes?n=4194304");
        for i in 0..50u32 {
            frames.push(h2raw::headers(
                2 * i + 1,
                &block,
                h2raw::END_HEADERS | h2raw::END_STREAM,
            ));
        }
        conn.write_all(&frames.concat()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(conn);
        false
    })
    .await;
    // An endless chunked body, sent as fast as the proxy takes it, for 3 s.
    under("outbound endless body", pid, &target, false, async {
        let mut conn = TcpStream::connect(upstream).await.unwrap();
        conn.write_all(b"POST /echo HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = [
            format!("{:x}\r\n", 64 * 1024).into_bytes(),
            vec![b'e'; 64 * 1024],
            b"\r\n".to_vec(),
        ]
        .concat();
        let (mut rd, mut wr) = conn.into_split();
        // The echoed body is read and thrown away, as a client would.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(wr);
        reader.abort();
        false
    })
    .await;
    h2_floods("outbound", pid, &target, || async {
        TcpStream::connect(upstream).await.unwrap()
    })
    .await;
    // The same proxy's admin listener (HTTP/1.1, at most 64 connections): 40 request
    // heads dripping and 20 connections that send nothing, while a monitor asks `/ready`
    // every 20 ms on a connection of its own.
    let admin = stage.client.admin;
    let ready = Target::Http(admin, "/ready");
    under(
        "admin slowloris and idle connections",
        pid,
        &ready,
        true,
        async {
            let slow = hold(
                admin,
                40,
                b"GET /metrics HTTP/1.1\r\nhost: x\r\n",
                b"x-slow: 1\r\n",
                Duration::from_secs(15),
            );
            let idle = hold(admin, 20, b"", b"", Duration::from_secs(15));
            let (slow, idle) = tokio::join!(slow, idle);
            slow && idle
        },
    )
    .await;
    drop(stage.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_listener_survives_hostile_peers() {
    let stage = stage(44).await;
    let (pid, upstream, inbound) = (stage.server.pid(), stage.upstream, stage.inbound);
    let target = Target::Http(upstream, "/echo");
    // TLS handshakes that never finish: a ClientHello record header announcing 512
    // bytes, and 10 of them.
    under(
        "inbound unfinished TLS handshakes",
        pid,
        &target,
        true,
        async {
            hold(
                inbound,
                300,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03",
                b"",
                CUT_OFF * 3,
            )
            .await
        },
    )
    .await;
    // Plain TCP that never starts TLS.
    under("inbound silent connections", pid, &target, true, async {
        hold(inbound, 300, b"", b"", CUT_OFF * 3).await
    })
    .await;
    // A compromised workload of the same Service, with a certificate of its own, floods
    // over mutual TLS.
    let join = skein_proxy::control::ControlConfig {
        endpoint: stage.control.grpc.to_string(),
        advertise: SocketAddr::new(ip(47), 4143),
        token: token(&stage.control, "web").await,
    };
    let web: SpiffeId = "spiffe://skein.local/ns/default/sa/web".parse().unwrap();
    let identity = skein_proxy::control::certify(&join, &web).await.unwrap();
    let tls = identity.client_config(&web).unwrap();
    h2_floods("inbound", pid, &target, || {
        let tls = tls.clone();
        let web = web.clone();
        async move {
            let tcp = TcpStream::connect(inbound).await.unwrap();
            tokio_rustls::TlsConnector::from(tls)
                .connect(skein_identity::tls::server_name(&web).unwrap(), tcp)
                .await
                .unwrap()
        }
    })
    .await;
    drop(stage.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_listeners_survive_hostile_clients() {
    skein_testkit::init_tracing();
    // A `skein control` process, so that its memory is its own; the attacker connects
    // from an address of its own (the control plane caps connections per source).
    let dir = TempDir::new("attack-control").unwrap();
    let host = ip(48);
    let control = skein_testkit::control::ControlProcess::start(
        Path::new(BIN),
        dir.path(),
        SocketAddr::new(host, 0),
        SocketAddr::new(host, 0),
        &[],
    )
    .await
    .unwrap();
    let pid = control.pid();
    let grpc = control.grpc;
    let token: skein_identity::JoinToken = control
        .cli(&["token", "create", "--service", "web", "--uses", "100000"])
        .await
        .ok()
        .trim()
        .parse()
        .unwrap();
    let pin = token.ca_pin().to_string();
    let web: SpiffeId = "spiffe://skein.local/ns/default/sa/web".parse().unwrap();
    let target = Target::Certify(
        skein_proxy::control::ControlConfig {
            endpoint: grpc.to_string(),
            advertise: SocketAddr::new(host, 4143),
            token,
        },
        web,
    );
    let attacker = || async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip(49), 0)).unwrap();
        socket.connect(grpc).await.unwrap()
    };
    // Its HTTP API (HTTP/1.1 only), while a well-behaved client asks `/healthz` every
    // 20 ms from another address: slowloris, a thousand idle connections, and bodies
    // without end from a client without the admin token.
    let api = control.http;
    let healthz = Target::Http(api, "/healthz");
    let from = Some(ip(49));
    under("control HTTP API slowloris", pid, &healthz, true, async {
        hold_from(
            from,
            api,
            200,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n",
            b"x-slow: 1\r\n",
            Duration::from_secs(15),
        )
        .await
    })
    .await;
    under(
        "control HTTP API idle connections",
        pid,
        &healthz,
        true,
        async { hold_from(from, api, 1_000, b"", b"", Duration::from_secs(15)).await },
    )
    .await;
    for (what, head) in [
        (
            "a 1 GiB body",
            "POST /api/v1/apply HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n",
        ),
        (
            "an endless chunked body",
            "POST /api/v1/apply HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
    ] {
        let name = format!("control HTTP API {what} without the token");
        under(&name, pid, &healthz, true, async move {
            // Again and again for 2 s, each connection cut off when the API answers (and
            // stops reading) or closes.
            let (mut tries, mut cut, mut refused) = (0, 0, 0);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                tries += 1;
                let (ended, answered) = endless_body(SocketAddr::new(ip(49), 0), api, head).await;
                cut += usize::from(ended);
                refused += usize::from(answered);
            }
            eprintln!(
                "{what}: {cut} of {tries} connections ended, {refused} with a 4xx answer read"
            );
            assert!(refused > 0, "{what}: the API answers 4xx");
            cut == tries
        })
        .await;
    }

    // Its proxy API: TLS handshakes that never finish, and connections that never start
    // one.
    under(
        "control API unfinished TLS handshakes",
        pid,
        &target,
        true,
        async {
            hold(
                grpc,
                200,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03",
                b"",
                Duration::from_secs(15),
            )
            .await
        },
    )
    .await;
    // HTTP/2 floods over TLS without a client certificate, as any new proxy connects.
    let control_id: SpiffeId = "spiffe://skein.local/ns/skein-system/sa/skein-control"
        .parse()
        .unwrap();
    let tls = skein_identity::tls::bootstrap_client_config(&pin, control_id.clone()).unwrap();
    h2_floods("control API", pid, &target, || {
        let (tls, control_id) = (tls.clone(), control_id.clone());
        async move {
            tokio_rustls::TlsConnector::from(tls)
                .connect(
                    skein_identity::tls::server_name(&control_id).unwrap(),
                    attacker().await,
                )
                .await
                .unwrap()
        }
    })
    .await;
}
