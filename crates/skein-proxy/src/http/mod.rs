//! HTTP pieces shared by the inbound and outbound sides: body types, header rules, the
//! HTTP/1 framing guard, and the error responses the proxy itself produces.

pub mod guard;
pub mod headers;
pub mod replay;
pub mod upgrade;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// Error type carried by proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type on every proxied request and response.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

pin_project_lite::pin_project! {
    /// A request body that counts its bytes (into the request's record) and remembers
    /// whether it failed, so that a failed upstream exchange can be blamed on the client's
    /// body (400) rather than the upstream (502).
    pub struct Watched<B> {
        #[pin]
        inner: B,
        bytes: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
        failure: std::sync::Arc<std::sync::OnceLock<String>>,
    }
}

impl<B> Watched<B> {
    /// Wraps `inner`, counting its data into `bytes` (if given); the returned cell holds
    /// the body's error message once it fails.
    pub fn new(
        inner: B,
        bytes: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> (Self, std::sync::Arc<std::sync::OnceLock<String>>) {
        let failure = std::sync::Arc::new(std::sync::OnceLock::new());
        let body = Watched {
            inner,
            bytes,
            failure: failure.clone(),
        };
        (body, failure)
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body,
    B::Data: bytes::Buf,
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(bytes)) = (frame.data_ref(), this.bytes.as_ref()) {
                    let n = bytes::Buf::remaining(data) as u64;
                    bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                let _ = this.failure.set(e.to_string());
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that fails once its deadline passes: a route's timeout covers the
    /// whole response, as Gateway API defines it, so a body still streaming then is cut
    /// (the client's HTTP/2 stream is reset, its HTTP/1 connection closed) rather than
    /// waited on.
    pub struct Deadline<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
        what: std::sync::Arc<str>,
    }
}

impl<B> Deadline<B> {
    /// Wraps `inner` to fail at `at` with `what` (the timeout, for the log).
    pub fn new(inner: B, at: tokio::time::Instant, what: std::sync::Arc<str>) -> Self {
        Deadline {
            inner,
            sleep: tokio::time::sleep_until(at),
            what,
        }
    }
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        let this = self.project();
        // The deadline first: a body that always has data ready is cut all the same.
        if this.sleep.poll(cx).is_ready() {
            tracing::debug!(timeout = %this.what, "response body cut at the route's timeout");
            return std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the response body outlived the route's timeout ({})",
                    this.what
                ),
            )
            .into())));
        }
        this.inner
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds something (a limit's permit, a picked endpoint) until
    /// the body ends, fails, or is dropped: a request counts as in flight until then.
    pub struct Holding<B, T> {
        #[pin]
        inner: B,
        held: Option<T>,
    }
}

impl<B, T> Holding<B, T> {
    /// Wraps `inner`, holding `held`.
    pub fn new(inner: B, held: T) -> Self {
        Holding {
            inner,
            held: Some(held),
        }
    }
}

impl<B: http_body::Body, T> http_body::Body for Holding<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None | Some(Err(_))) => true,
            std::task::Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            std::task::Poll::Pending => false,
        };
        if ended {
            this.held.take();
        }
        polled
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
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[tokio::test]
    async fn a_body_that_finishes_in_time_passes_whole() {
        let at = tokio::time::Instant::now() + Duration::from_secs(30);
        let body = Deadline::new(full("whole"), at, "timeouts.request 30s".into());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"whole");
    }

    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_is_cut() {
        // A body that sends one frame and then never ends.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let inner = http_body_util::StreamBody::new(tokio_stream_of(rx));
        let at = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut body = std::pin::pin!(Deadline::new(inner, at, "timeouts.request 50ms".into()));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("timeouts.request 50ms"), "{err}");
        drop(tx);
    }

    #[tokio::test]
    async fn holds_until_the_body_ends() {
        let held = std::sync::Arc::new(());
        let body = Holding::new(full("x"), held.clone());
        assert_eq!(std::sync::Arc::strong_count(&held), 2);
        let mut body = std::pin::pin!(body);
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            1,
            "released with the last frame"
        );
        let dropped = Holding::new(full("y"), held.clone());
        drop(dropped);
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            1,
            "released when dropped unread"
        );
    }

    /// A `Stream` over an mpsc receiver, without pulling in tokio-stream.
    fn tokio_stream_of<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
