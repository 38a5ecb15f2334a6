//! The guard in the read path of an HTTP/1 server connection ([`GuardedIo`]), and how it
//! learns whether the server switched protocols: [`ReportSwitches`] wraps the server's
//! handler and settles a [`SwitchSignal`] with the status of each response, by the rule
//! hyper itself switches on (`101` to a request that asked for an upgrade, `2xx` to
//! `CONNECT`), once the response's body is done. Until the request that asked is
//! answered, bytes after it are held here, neither inspected nor given to hyper, so an
//! upgrade that does not happen cannot carry uninspected requests in behind it.

use super::{FramingGuard, Refusal};
use futures_util::task::AtomicWaker;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::Service;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Called once if the guard refuses a request (for metrics and the log).
pub type OnRefuse = Box<dyn FnOnce(Refusal) -> Option<String> + Send>;

/// Shared by a connection's [`GuardedIo`] and its [`ReportSwitches`] handler: requests
/// are numbered in the order hyper dispatches them, which is the order the guard saw
/// their heads (HTTP/1 answers one request at a time).
#[derive(Clone, Default)]
pub struct SwitchSignal(Arc<Switches>);

#[derive(Default)]
struct Switches {
    /// Requests dispatched so far.
    dispatched: AtomicU64,
    /// The last answered request's number, shifted left, with 1 if it switched.
    settled: AtomicU64,
    waker: AtomicWaker,
}

impl SwitchSignal {
    /// The number of the request being dispatched now (1, 2, …).
    fn next_request(&self) -> u64 {
        self.0.dispatched.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records how request `n` was answered and wakes a guard waiting for it.
    fn settle(&self, n: u64, switched: bool) {
        self.0
            .settled
            .store(n << 1 | u64::from(switched), Ordering::Release);
        self.0.waker.wake();
    }

    /// Whether request `n` switched protocols, once it is answered.
    fn poll_settled(&self, cx: &mut Context<'_>, n: u64) -> Poll<bool> {
        let settled = || {
            let v = self.0.settled.load(Ordering::Acquire);
            (v >> 1 == n).then_some(v & 1 == 1)
        };
        if let Some(switched) = settled() {
            return Poll::Ready(switched);
        }
        self.0.waker.register(cx.waker());
        settled().map_or(Poll::Pending, Poll::Ready)
    }
}

/// Wraps a client connection served by hyper's HTTP/1 server: every byte read passes the
/// [`FramingGuard`]; a refused request gets its error response written here and the read
/// fails, so hyper closes the connection without dispatching the request.
pub struct GuardedIo<T> {
    inner: T,
    guard: FramingGuard,
    signal: SwitchSignal,
    /// Bytes read but not yet released: they follow a request whose answer decides
    /// whether they are HTTP.
    held: Vec<u8>,
    refusal: Option<(Refusal, Vec<u8>, usize)>,
    on_refuse: Option<OnRefuse>,
}

impl<T> GuardedIo<T> {
    /// Guards `inner`; `signal` must be the one the connection's [`ReportSwitches`] holds.
    pub fn new(inner: T, guard: FramingGuard, signal: SwitchSignal, on_refuse: OnRefuse) -> Self {
        GuardedIo {
            inner,
            guard,
            signal,
            held: Vec::new(),
            refusal: None,
            on_refuse: Some(on_refuse),
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        let id = self.on_refuse.take().and_then(|f| f(refusal));
        self.refusal = Some((refusal, refusal.response(id.as_deref()), 0));
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> GuardedIo<T> {
    /// Writes the refusal's response, then fails the read.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((refusal, response, written)) = &mut self.refusal else {
            return Poll::Ready(Ok(()));
        };
        while *written < response.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &response[*written..]))?;
            if n == 0 {
                break;
            }
            *written += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            refusal.to_string(),
        )))
    }

    /// Releases held bytes the guard lets through into `buf`; `true` if any were.
    fn release_held(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let n = self.held.len().min(buf.remaining());
        match self.guard.feed(&self.held[..n]) {
            Ok(released) => {
                buf.put_slice(&self.held[..released]);
                self.held.drain(..released);
                released > 0
            }
            Err(refusal) => {
                self.refuse(refusal);
                false
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.refusal.is_some() {
                return this.poll_refusal(cx);
            }
            if this.guard.is_broken() {
                // hyper refused the body at the bad byte; nothing after it is HTTP.
                return Poll::Ready(Ok(()));
            }
            if let Some(n) = this.guard.awaiting() {
                let switched = ready!(this.signal.poll_settled(cx, n));
                this.guard.settle(switched);
            }
            if !this.held.is_empty() {
                if this.release_held(buf) {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.guard.feed(&buf.filled()[before..]) {
                Err(refusal) => {
                    buf.set_filled(before);
                    this.refuse(refusal);
                }
                Ok(released) => {
                    this.held
                        .extend_from_slice(&buf.filled()[before + released..]);
                    buf.set_filled(before + released);
                    if released > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

crate::io::forward_async_write!(GuardedIo);

/// A connection's request handler that reports each answer to the connection's
/// [`SwitchSignal`], once the answer's body has been handed to hyper whole (or dropped):
/// held bytes are inspected, and a refusal written, only after the answer before them.
pub struct ReportSwitches<H> {
    inner: H,
    signal: SwitchSignal,
}

impl<H> ReportSwitches<H> {
    /// Wraps `inner`; `signal` must be the one the connection's [`GuardedIo`] holds.
    pub fn new(inner: H, signal: SwitchSignal) -> Self {
        ReportSwitches { inner, signal }
    }
}

impl<H, B> Service<Request<Incoming>> for ReportSwitches<H>
where
    H: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Settling<B>>;
    type Error = H::Error;
    type Future = Reported<H::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // hyper marks a request it would switch for with `OnUpgrade`; the handler may take
        // the mark, so it is read first.
        let asked = req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some();
        let connect = req.method() == Method::CONNECT;
        Reported {
            inner: self.inner.call(req),
            signal: self.signal.clone(),
            request: self.signal.next_request(),
            asked,
            connect,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future whose response settles the [`SwitchSignal`] when its body ends.
    pub struct Reported<F> {
        #[pin]
        inner: F,
        signal: SwitchSignal,
        request: u64,
        asked: bool,
        connect: bool,
    }
}

impl<F, B, E> Future for Reported<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Settling<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        // hyper's own rule (`role.rs`): 101 ends HTTP on the connection, and so does a 2xx
        // to CONNECT; either only for a request hyper prepared to upgrade.
        let status = resp.status();
        let switched = *this.asked
            && (status == StatusCode::SWITCHING_PROTOCOLS
                || (*this.connect && status.is_success()));
        let settle = Settle {
            signal: this.signal.clone(),
            request: *this.request,
            switched,
        };
        Poll::Ready(Ok(resp.map(|inner| Settling {
            inner,
            settle: Some(settle),
        })))
    }
}

/// How one request was answered, reported once.
struct Settle {
    signal: SwitchSignal,
    request: u64,
    switched: bool,
}

pin_project_lite::pin_project! {
    /// A response body that settles the [`SwitchSignal`] when it ends, fails or is
    /// dropped.
    pub struct Settling<B> {
        #[pin]
        inner: B,
        settle: Option<Settle>,
    }

    impl<B> PinnedDrop for Settling<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(s) = this.project().settle.take() {
                s.signal.settle(s.request, s.switched);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for Settling<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            if let Some(s) = this.settle.take() {
                s.signal.settle(s.request, s.switched);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::guard::GuardLimits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded(
        io: tokio::io::DuplexStream,
    ) -> (
        GuardedIo<tokio::io::DuplexStream>,
        SwitchSignal,
        Arc<std::sync::Mutex<Vec<Refusal>>>,
    ) {
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = refused.clone();
        let limits = GuardLimits {
            max_head: 65536,
            max_line: 8192,
            max_headers: 100,
        };
        let signal = SwitchSignal::default();
        let io = GuardedIo::new(
            io,
            FramingGuard::new(limits),
            signal.clone(),
            Box::new(move |r| {
                seen.lock().unwrap().push(r);
                None
            }),
        );
        (io, signal, refused)
    }

    const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n";
    const SMUGGLED: &[u8] =
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    /// Reads what the server side gets within 100 ms (`None`: nothing yet).
    async fn read_some(io: &mut GuardedIo<tokio::io::DuplexStream>) -> Option<io::Result<Vec<u8>>> {
        let mut buf = vec![0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_millis(100), io.read(&mut buf));
        match read.await {
            Err(_) => None,
            Ok(r) => Some(r.map(|n| buf[..n].to_vec())),
        }
    }

    #[tokio::test]
    async fn bytes_after_an_unanswered_upgrade_are_held_then_inspected() {
        let (mut client, server) = tokio::io::duplex(8192);
        let (mut io, signal, refused) = guarded(server);
        client
            .write_all(&[UPGRADE, SMUGGLED].concat())
            .await
            .unwrap();
        let first = read_some(&mut io).await.unwrap().unwrap();
        assert_eq!(first, UPGRADE, "only the upgrade request is released");
        assert!(
            read_some(&mut io).await.is_none(),
            "the rest waits for the answer"
        );
        // hyper dispatched request 1 and the handler answered 200: no switch.
        let n = signal.next_request();
        signal.settle(n, false);
        let err = read_some(&mut io).await.unwrap().unwrap_err();
        assert!(err.to_string().contains("both Content-Length"), "{err}");
        assert_eq!(
            *refused.lock().unwrap(),
            [Refusal::ContentLengthAndTransferEncoding]
        );
        drop(io);
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn after_a_switch_the_held_bytes_pass_untouched() {
        let (mut client, server) = tokio::io::duplex(8192);
        let (mut io, signal, refused) = guarded(server);
        client
            .write_all(&[UPGRADE, SMUGGLED].concat())
            .await
            .unwrap();
        assert_eq!(read_some(&mut io).await.unwrap().unwrap(), UPGRADE);
        let waiting = tokio::spawn(async move { (read_some(&mut io).await, io) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let n = signal.next_request();
        signal.settle(n, true);
        let (rest, _io) = waiting.await.unwrap();
        assert_eq!(
            rest.unwrap().unwrap(),
            SMUGGLED,
            "woken and released as tunnel bytes"
        );
        assert!(refused.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_answer_to_an_earlier_request_does_not_release_the_held_bytes() {
        let (mut client, server) = tokio::io::duplex(8192);
        let (mut io, signal, _) = guarded(server);
        let plain = b"GET / HTTP/1.1\r\n\r\n";
        client
            .write_all(&[&plain[..], UPGRADE, SMUGGLED].concat())
            .await
            .unwrap();
        assert_eq!(
            read_some(&mut io).await.unwrap().unwrap(),
            [&plain[..], UPGRADE].concat()
        );
        let first = signal.next_request();
        signal.settle(first, true);
        assert!(
            read_some(&mut io).await.is_none(),
            "request 1 is not the one asked"
        );
        let second = signal.next_request();
        signal.settle(second, false);
        assert!(read_some(&mut io).await.unwrap().is_err());
    }

    /// A handler's answer, ready at once.
    type Answer = std::future::Ready<Result<Response<crate::http::Body>, ()>>;

    fn reported(
        signal: &SwitchSignal,
        status: StatusCode,
        asked: bool,
        connect: bool,
    ) -> (u64, Reported<Answer>) {
        let mut resp = Response::new(crate::http::full("answer"));
        *resp.status_mut() = status;
        let request = signal.next_request();
        let fut = Reported {
            inner: std::future::ready(Ok(resp)),
            signal: signal.clone(),
            request,
            asked,
            connect,
        };
        (request, fut)
    }

    #[tokio::test]
    async fn an_answer_settles_once_its_body_is_done_by_hyper_rules() {
        use http_body_util::BodyExt;
        let signal = SwitchSignal::default();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let (n, fut) = reported(&signal, StatusCode::OK, true, false);
        let resp = fut.await.unwrap();
        assert!(
            signal.poll_settled(&mut cx, n).is_pending(),
            "not while the body may still be written"
        );
        resp.into_body().collect().await.unwrap();
        assert_eq!(signal.poll_settled(&mut cx, n), Poll::Ready(false));
        for (status, asked, connect, switched) in [
            (StatusCode::SWITCHING_PROTOCOLS, true, false, true),
            (StatusCode::OK, true, true, true),
            (StatusCode::FORBIDDEN, true, true, false),
            (StatusCode::SWITCHING_PROTOCOLS, false, false, false),
            (StatusCode::OK, false, true, false),
        ] {
            let (n, fut) = reported(&signal, status, asked, connect);
            drop(fut.await.unwrap());
            assert_eq!(
                signal.poll_settled(&mut cx, n),
                Poll::Ready(switched),
                "{status} asked={asked} connect={connect}"
            );
        }
    }
}
