//! HTTP pieces shared by the inbound and outbound sides: body types, header rules, the
//! HTTP/1 framing guard, and the error responses the proxy itself produces.

pub mod guard;
pub mod headers;
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
    /// A body that remembers whether it failed, so that a failed upstream exchange can be
    /// blamed on the client's body (400) rather than the upstream (502).
    pub struct Watched<B> {
        #[pin]
        inner: B,
        failure: std::sync::Arc<std::sync::OnceLock<String>>,
    }
}

impl<B> Watched<B> {
    /// Wraps `inner`; the returned cell holds the body's error message once it fails.
    pub fn new(inner: B) -> (Self, std::sync::Arc<std::sync::OnceLock<String>>) {
        let failure = std::sync::Arc::new(std::sync::OnceLock::new());
        let body = Watched {
            inner,
            failure: failure.clone(),
        };
        (body, failure)
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body,
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
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            let _ = this.failure.set(e.to_string());
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
