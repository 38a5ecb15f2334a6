//! A real HTTP echo backend: one hyper server per port that speaks HTTP/1.1 (with upgrades)
//! and HTTP/2 prior knowledge, echoes what it received, serves a few fixed routes that stress
//! streaming, trailers, slowness, status codes and WebSocket upgrades, and records every
//! request it saw so end-to-end tests can assert what the application behind the proxy got.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::server::{self, BoxError, Handler, Protocols, RespBody};

/// Size of each data frame sent by `GET /bytes`.
pub const BYTES_FRAME_SIZE: usize = 16 * 1024;

/// One request as the backend saw it, recorded when its head arrived and updated as its body
/// is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    /// Request method.
    pub method: Method,
    /// Path and query, e.g. `/a/b?c=d`.
    pub path: String,
    /// HTTP version the request arrived with.
    pub version: Version,
    /// Request headers in arrival order (HTTP/2 pseudo-headers are not included); values that
    /// are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// Body bytes read so far; final once `body_complete` is true. Only the echo route reads
    /// request bodies, so other routes leave this at 0.
    pub body_len: usize,
    /// Whether the body was read to its end (always true for requests without a body).
    pub body_complete: bool,
}

impl SeenRequest {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// State shared by the accept loop, every connection and the handle.
struct State {
    hits: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
    token: CancellationToken,
    /// Added before every response, in milliseconds (see [`HttpBackend::set_delay`]).
    delay_ms: std::sync::atomic::AtomicU64,
    /// How many requests at once it can handle; beyond, it answers 500 (0: no limit).
    capacity: AtomicUsize,
    /// Requests being handled now, and the most ever at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// The status every request is answered with once its body was read (0: none).
    fail_after_body: std::sync::atomic::AtomicU16,
    /// Every n-th request is answered 500 (0: none).
    fail_every: AtomicUsize,
    /// Workers: requests beyond them wait inside the application (None: no such limit).
    workers: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Requests seen per `uuid` query parameter (the retry simulation).
    attempts: Mutex<HashMap<String, usize>>,
}

impl State {
    fn record(&self, req: &Request<Incoming>) -> usize {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), value)
            })
            .collect();
        let seen = SeenRequest {
            method: req.method().clone(),
            path: path_and_query(req.uri()).to_owned(),
            version: req.version(),
            headers,
            body_len: 0,
            body_complete: req.body().is_end_stream(),
        };
        let mut list = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(seen);
        list.len() - 1
    }

    fn update_body(&self, index: usize, len: usize, complete: bool) {
        let mut list = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seen) = list.get_mut(index) {
            seen.body_len = len;
            seen.body_complete = complete;
        }
    }
}

/// Handle to a running [`HttpBackend`]; dropping it stops the accept loop, every connection,
/// in-flight handler and WebSocket session.
pub struct HttpBackend {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: DropGuard,
}

impl HttpBackend {
    /// Binds `addr` (port 0 picks a free port) and serves HTTP/1.1 and HTTP/2 prior knowledge
    /// on it.
    ///
    /// Routes (anything not listed is echoed):
    /// - echo: status 200, the request body streamed back frame by frame, and headers
    ///   `x-echo-method`, `x-echo-path` (path and query), `x-echo-host` (the `Host` header on
    ///   HTTP/1, the URI authority on HTTP/2, empty if none), `x-echo-version` (`HTTP/1.1` or
    ///   `HTTP/2.0`), `x-echo-headers` (number of request headers), plus every request header
    ///   named `x-test-*`.
    /// - `GET /bytes?n=N`: N bytes of [`pattern_bytes`] in [`BYTES_FRAME_SIZE`] frames, no
    ///   content-length (HTTP/1 uses chunked encoding).
    /// - `GET /chunked?n=K`: K chunks `chunk-i\n`, 1 ms apart, no content-length.
    /// - `GET /trailers`: body `ok` then trailer `x-trailer: done` (HTTP/1 clients must send
    ///   `TE: trailers` to receive it).
    /// - `GET /slow?ms=N`: waits N ms, then 200 `slow done`.
    /// - `GET /status/CODE`: that status, empty body.
    /// - `GET /ws` with `Upgrade: websocket` (HTTP/1): WebSocket that echoes text and binary
    ///   messages until close.
    ///
    /// On any path, as the Gateway API conformance suite's echo backend does: `delay=D`
    /// (`500ms`, `1s`) waits D before answering; `responseCode=C&succeedAfter=N&uuid=U`
    /// answers C to the first N requests carrying that `uuid` (each after `delayRetry=D` if
    /// given), then as usual; and the echo route sets the response headers a request names
    /// in `X-Echo-Set-Header: Name:value,Name:value`.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(addr, Protocols::Auto).await
    }

    /// As [`HttpBackend::start`], serving HTTP/1.x only (an HTTP/2 preface gets an
    /// HTTP/1 error), as many applications do.
    pub async fn start_http1_only(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(addr, Protocols::Http1Only).await
    }

    async fn start_with(addr: SocketAddr, protocols: Protocols) -> anyhow::Result<Self> {
        let listener = server::bind(addr).await?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let state = Arc::new(State {
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            token: token.clone(),
            delay_ms: Default::default(),
            capacity: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            fail_after_body: Default::default(),
            fail_every: AtomicUsize::new(0),
            workers: Mutex::new(None),
            attempts: Mutex::new(HashMap::new()),
        });
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |req| Box::pin(handle(handler_state.clone(), req)));
        server::spawn_http_server(listener, token.clone(), protocols, handler);
        tracing::debug!(%addr, "HTTP test backend listening");
        Ok(Self {
            addr,
            state,
            _stop: token.drop_guard(),
        })
    }

    /// Delays every response by `delay` from now on (a slow endpoint; zero: none).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Makes the backend fall over beyond `n` requests at once: each request beyond
    /// them is answered `500 overwhelmed` (an application that cannot take more).
    pub fn set_capacity(&self, n: usize) {
        self.state.capacity.store(n, Ordering::SeqCst);
    }

    /// Makes the backend work on at most `n` requests at once from now on; the others
    /// wait inside it, first come first served (an application with a pool of `n`
    /// workers, whose latency grows with its queue). Counted in flight while they wait.
    pub fn set_workers(&self, n: usize) {
        let pool = Arc::new(tokio::sync::Semaphore::new(n));
        *self
            .state
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(pool);
    }

    /// Makes the backend answer every request from now on with `status` (and the body
    /// `read N bytes`) after reading its whole body: an application that fails late.
    pub fn fail_after_body(&self, status: u16) {
        self.state.fail_after_body.store(status, Ordering::SeqCst);
    }

    /// Makes every `n`-th request from now on (counting every request received) answer
    /// `500 injected failure` (`n` = 5: 20 % of requests fail); 0: none.
    pub fn fail_every(&self, n: usize) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// The most requests the backend has handled at once (from arrival until its handler
    /// returned the response head), since it started or since [`Self::reset_max_in_flight`].
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Starts measuring [`Self::max_in_flight`] afresh.
    pub fn reset_max_in_flight(&self) {
        let now = self.state.in_flight.load(Ordering::SeqCst);
        self.state.max_in_flight.store(now, Ordering::SeqCst);
    }

    /// The address the backend listens on (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of requests received so far, on any route.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The bytes `GET /bytes?n=N` sends: `a`..`z` repeating, starting with `a`.
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    pattern_range(0, n)
}

fn pattern_range(start: usize, end: usize) -> Vec<u8> {
    // `i % 26` always fits in a u8.
    (start..end).map(|i| b'a' + (i % 26) as u8).collect()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    // Counted out however the handler ends (a cancelled request drops it).
    struct Out<'a>(&'a AtomicUsize);
    impl Drop for Out<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _out = Out(&state.in_flight);
    let capacity = state.capacity.load(Ordering::SeqCst);
    if capacity > 0 && now > capacity {
        return full(StatusCode::INTERNAL_SERVER_ERROR, "overwhelmed");
    }
    let pool = state
        .workers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let _worker = match pool {
        Some(pool) => pool.acquire_owned().await.ok(),
        None => None,
    };
    respond(&state, req).await
}

async fn respond(state: &Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let index = state.record(&req);
    let every = state.fail_every.load(Ordering::SeqCst);
    if every > 0 && (index + 1).is_multiple_of(every) {
        return full(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
    }
    let fail = state.fail_after_body.load(Ordering::SeqCst);
    if let Ok(status) = StatusCode::from_u16(fail) {
        let read = req.into_body().collect().await.map(|b| b.to_bytes().len());
        if let Ok(n) = read {
            state.update_body(index, n, true);
        }
        return full(status, format!("read {} bytes", read.unwrap_or(0)));
    }
    let get = req.method() == Method::GET;
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri());
    if let Some(d) = query
        .get("delay")
        .and_then(|v| skein_model::duration::parse(v))
    {
        tokio::time::sleep(d).await;
    }
    if let (Some(code), Some(n), Some(id)) = (
        number(&query, "responseCode").and_then(|c| StatusCode::from_u16(c as u16).ok()),
        number(&query, "succeedAfter"),
        query.get("uuid"),
    ) {
        let attempt = {
            let mut seen = state
                .attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = seen.entry(id.clone()).or_insert(0);
            *count += 1;
            *count
        };
        if attempt <= n {
            if let Some(d) = query
                .get("delayRetry")
                .and_then(|v| skein_model::duration::parse(v))
            {
                tokio::time::sleep(d).await;
            }
            return full(code, format!("simulated failure {attempt} of {n}"));
        }
    }
    match path.as_str() {
        "/bytes" if get => match number(&query, "n") {
            Some(n) => bytes_response(n),
            None => bad_request("expected /bytes?n=<count>"),
        },
        "/chunked" if get => match number(&query, "n") {
            Some(k) => chunked_response(k),
            None => bad_request("expected /chunked?n=<chunks>"),
        },
        "/trailers" if get => trailers_response(),
        "/slow" if get => match number(&query, "ms") {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms as u64)).await;
                full(StatusCode::OK, "slow done")
            }
            None => bad_request("expected /slow?ms=<millis>"),
        },
        "/ws" if get && is_websocket_upgrade(&req) => websocket_response(state, req),
        p if get && p.starts_with("/status/") => status_response(&p["/status/".len()..]),
        _ => echo_response(state.clone(), index, req),
    }
}

fn echo_response(state: Arc<State>, index: usize, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let host = if parts.version == Version::HTTP_2 {
        parts.uri.authority().map(|a| value(a.as_str()))
    } else {
        parts.headers.get(header::HOST).cloned()
    };
    let body = CountingBody {
        inner: body,
        len: 0,
        index,
        state,
    };
    let mut resp = Response::new(body.map_err(BoxError::from).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert("x-echo-method", value(parts.method.as_str()));
    headers.insert("x-echo-path", value(path_and_query(&parts.uri)));
    headers.insert(
        "x-echo-host",
        host.unwrap_or_else(|| HeaderValue::from_static("")),
    );
    headers.insert("x-echo-version", value(&format!("{:?}", parts.version)));
    headers.insert("x-echo-headers", HeaderValue::from(parts.headers.len()));
    for (name, v) in &parts.headers {
        if name.as_str().starts_with("x-test-") {
            headers.append(name.clone(), v.clone());
        }
    }
    let set = parts
        .headers
        .get("x-echo-set-header")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for pair in set.split(',').filter(|p| !p.is_empty()) {
        if let Some((name, v)) = pair.split_once(':') {
            if let Ok(name) = header::HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.append(name, value(v.trim()));
            }
        }
    }
    resp
}

/// Passes the request body through untouched while counting its bytes into the request's
/// [`SeenRequest`] record.
struct CountingBody {
    inner: Incoming,
    len: usize,
    index: usize,
    state: Arc<State>,
}

impl CountingBody {
    fn report(&self, complete: bool) {
        self.state.update_body(self.index, self.len, complete);
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.len += data.len();
                }
                // Trailers are the last frame, and hyper may stop polling once the inner body
                // reports its end, so record completion as soon as either is seen.
                this.report(frame.is_trailers() || this.inner.is_end_stream());
            }
            Poll::Ready(None) => this.report(true),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn bytes_response(n: usize) -> Response<RespBody> {
    let frames = futures_util::stream::iter((0..n).step_by(BYTES_FRAME_SIZE).map(move |start| {
        let end = (start + BYTES_FRAME_SIZE).min(n);
        Ok::<_, BoxError>(Frame::data(Bytes::from(pattern_range(start, end))))
    }));
    Response::new(StreamBody::new(frames).boxed_unsync())
}

fn chunked_response(k: usize) -> Response<RespBody> {
    let frames = futures_util::stream::unfold(0, move |i| async move {
        if i >= k {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let chunk = Bytes::from(format!("chunk-{i}\n"));
        Some((Ok::<_, BoxError>(Frame::data(chunk)), i + 1))
    });
    Response::new(StreamBody::new(frames).boxed_unsync())
}

fn trailers_response() -> Response<RespBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-trailer", HeaderValue::from_static("done"));
    let frames = futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"ok"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    // HTTP/1 only sends trailer fields that the response announces.
    resp.headers_mut()
        .insert(header::TRAILER, HeaderValue::from_static("x-trailer"));
    resp
}

fn status_response(code: &str) -> Response<RespBody> {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) => {
            let mut resp = Response::new(Empty::new().map_err(BoxError::from).boxed_unsync());
            *resp.status_mut() = status;
            resp
        }
        None => bad_request("expected /status/<100-999>"),
    }
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn websocket_response(state: &State, mut req: Request<Incoming>) -> Response<RespBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request("missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    server::spawn_until(&state.token, async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                echo_websocket(ws).await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Empty::new().map_err(BoxError::from).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, value(&accept));
    resp
}

async fn echo_websocket<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Keep reading after a Close frame: tungstenite sends the close reply on the next read
    // and then ends the stream.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(msg) if msg.is_text() || msg.is_binary() => {
                if let Err(error) = ws.send(msg).await {
                    tracing::debug!(%error, "WebSocket echo send failed");
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "WebSocket echo read ended");
                return;
            }
        }
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(BoxError::from)
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

fn bad_request(msg: &'static str) -> Response<RespBody> {
    full(StatusCode::BAD_REQUEST, msg)
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn parse_query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

fn number(query: &HashMap<String, String>, key: &str) -> Option<usize> {
    query.get(key)?.parse().ok()
}

/// A header value from text the backend produced itself; anything a header cannot carry is
/// replaced by a marker rather than failing the response.
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("<invalid>"))
}
