//! Request bodies that can be sent again while they are still arriving: a bounded tee.
//!
//! A [`Tee`] owns the client's body. Each try of the request gets a [`Replay`] from it
//! ([`Tee::next_try`]), which first yields what earlier tries already read, then goes on
//! reading the client's body where they stopped, keeping a copy of each chunk for the
//! next try. So the first try streams with no added wait, and a try answered early (a
//! 503 from an overloaded peer before it read anything) is followed by one that sends
//! the whole body.
//!
//! The copy is bounded by the tee's cap: once more than that has been read, the copy is
//! dropped and the body can no longer be replayed ([`Tee::replayable`] turns false);
//! the try reading it carries on streaming. A failed client body cannot be replayed
//! either. Only the newest try reads: starting one retires the bodies of the earlier
//! ones, which fail with [`Superseded`] if polled again (their streams are reset, so no
//! peer ever takes a cut-short body for a whole one).

use super::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// The body of a try that a later try replaced.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry of the request")]
pub struct Superseded;

/// The client's body could not be read for a replay (it failed in an earlier try).
#[derive(Debug, thiserror::Error)]
#[error("request body failed in an earlier try: {0}")]
pub struct FailedEarlier(String);

/// Owns a request body and hands each try a [`Replay`] of it.
pub struct Tee<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// The body's whole length, when the client said it.
    length: Option<u64>,
}

/// What the tries share: the client's body and the copy of what was read from it.
struct Shared<B> {
    /// The client's body, until it ends or fails.
    source: Option<B>,
    /// What was read so far, while within the cap.
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    held: usize,
    /// Bytes more than which are not kept.
    cap: usize,
    /// The body ended (after `trailers`, if any).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// More than `cap` was read: the copy is gone.
    overflowed: bool,
    /// The client's body failed, with this message.
    failed: Option<String>,
    /// The try allowed to read; bodies of earlier ones are retired.
    current: u64,
}

/// One try's view of a [`Tee`]'s body.
pub struct Replay<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Which try this is (see `Shared::current`).
    generation: u64,
    /// Chunks of the copy already yielded.
    next: usize,
    /// Bytes yielded.
    sent: u64,
    /// Trailers yielded (or the body ended).
    done: bool,
    length: Option<u64>,
}

impl<B> Tee<B> {
    /// A tee of `body` keeping copies of up to `cap` bytes.
    pub fn new(body: B, cap: usize) -> Self
    where
        B: Body,
    {
        let length = body.size_hint().exact();
        let ended = body.is_end_stream();
        Tee {
            shared: Arc::new(Mutex::new(Shared {
                source: (!ended).then_some(body),
                chunks: Vec::new(),
                held: 0,
                cap,
                ended,
                trailers: None,
                overflowed: false,
                failed: None,
                current: 0,
            })),
            length,
        }
    }

    /// Whether another try can send the whole body: nothing beyond the cap was read and
    /// the client's body did not fail.
    pub fn replayable(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        !shared.overflowed && shared.failed.is_none()
    }

    /// The body for the next try; the bodies of earlier tries are retired.
    pub fn next_try(&self) -> Replay<B> {
        let generation = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.current += 1;
            shared.current
        };
        Replay {
            shared: self.shared.clone(),
            generation,
            next: 0,
            sent: 0,
            done: false,
            length: self.length,
        }
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.current != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        // What earlier tries read, first.
        if let Some(chunk) = shared.chunks.get(this.next).cloned() {
            this.next += 1;
            this.sent += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if shared.ended {
            this.done = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        if let Some(why) = &shared.failed {
            return Poll::Ready(Some(Err(FailedEarlier(why.clone()).into())));
        }
        let Some(source) = shared.source.as_mut() else {
            // Not ended, not failed: the source is always there.
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.source = None;
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                shared.failed = Some(e.to_string());
                shared.source = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        this.sent += data.len() as u64;
                        if !shared.overflowed {
                            if shared.held + data.len() > shared.cap {
                                // Beyond the cap: this try streams on; no other can.
                                shared.overflowed = true;
                                shared.chunks = Vec::new();
                                shared.held = 0;
                            } else {
                                shared.held += data.len();
                                shared.chunks.push(data.clone());
                                this.next += 1;
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            shared.trailers = Some(trailers.clone());
                            shared.ended = true;
                            shared.source = None;
                            this.done = true;
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.current == self.generation
            && shared.ended
            && shared.trailers.is_none()
            && self.next >= shared.chunks.len()
            && !shared.overflowed
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    type Chunk = Result<Frame<Bytes>, std::io::Error>;

    /// A client body fed by hand.
    struct Fed(mpsc::UnboundedReceiver<Chunk>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx)
        }
    }

    /// A client body fed by hand, and its feeder.
    fn streamed() -> (mpsc::UnboundedSender<Chunk>, Fed) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Fed(rx))
    }

    fn data(s: &'static str) -> Chunk {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    /// The next frame of `body` as text (data) or `trailers:<names>`, `end` at its end,
    /// `error:<message>` on failure.
    async fn next<B: Body<Data = Bytes, Error = BoxError> + Unpin>(body: &mut B) -> String {
        match body.frame().await {
            None => "end".into(),
            Some(Err(e)) => format!("error:{e}"),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => String::from_utf8_lossy(&d).into_owned(),
                Err(f) => {
                    let t = f.into_trailers().unwrap_or_default();
                    format!(
                        "trailers:{}",
                        t.keys().map(|k| k.as_str()).collect::<String>()
                    )
                }
            },
        }
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_read_then_reads_on_where_the_first_try_stopped() {
        let (tx, body) = streamed();
        let tee = Tee::new(body, 1024);
        let mut first = tee.next_try();
        tx.send(data("a")).unwrap();
        tx.send(data("b")).unwrap();
        assert_eq!(next(&mut first).await, "a");
        assert_eq!(next(&mut first).await, "b");
        // The first try's peer answered before the rest came: the second try starts.
        assert!(tee.replayable());
        let mut second = tee.next_try();
        assert_eq!(next(&mut second).await, "a");
        assert_eq!(next(&mut second).await, "b");
        tx.send(data("c")).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "abc".parse().unwrap());
        tx.send(Ok(Frame::trailers(trailers))).unwrap();
        drop(tx);
        assert_eq!(next(&mut second).await, "c");
        assert_eq!(next(&mut second).await, "trailers:x-sum");
        assert_eq!(next(&mut second).await, "end");
        assert!(second.is_end_stream());
        // The earlier try is retired: it fails rather than send a cut-short body.
        assert!(next(&mut first)
            .await
            .starts_with("error:request body superseded"));
        // A third try gets everything, trailers included, from the copy.
        let mut third = tee.next_try();
        let mut got = Vec::new();
        loop {
            let f = next(&mut third).await;
            if f == "end" {
                break;
            }
            got.push(f);
        }
        assert_eq!(got, ["a", "b", "c", "trailers:x-sum"]);
    }

    #[tokio::test]
    async fn beyond_the_cap_the_try_streams_on_and_no_other_can_be_made() {
        let (tx, body) = streamed();
        let tee = Tee::new(body, 4);
        let mut first = tee.next_try();
        tx.send(data("abc")).unwrap();
        tx.send(data("defg")).unwrap();
        tx.send(data("h")).unwrap();
        drop(tx);
        assert_eq!(next(&mut first).await, "abc");
        assert!(tee.replayable(), "3 bytes are within the cap of 4");
        assert_eq!(next(&mut first).await, "defg");
        assert!(!tee.replayable(), "7 bytes are not");
        assert_eq!(next(&mut first).await, "h");
        assert_eq!(next(&mut first).await, "end");
        let shared = tee.shared.lock().unwrap();
        assert!(shared.chunks.is_empty(), "the copy was dropped");
    }

    #[tokio::test]
    async fn a_failed_client_body_is_not_replayed() {
        let (tx, body) = streamed();
        let tee = Tee::new(body, 1024);
        let mut first = tee.next_try();
        tx.send(data("a")).unwrap();
        tx.send(Err(std::io::Error::other("bad chunk size")))
            .unwrap();
        assert_eq!(next(&mut first).await, "a");
        assert_eq!(next(&mut first).await, "error:bad chunk size");
        assert!(!tee.replayable());
        let mut second = tee.next_try();
        assert_eq!(next(&mut second).await, "a");
        assert_eq!(
            next(&mut second).await,
            "error:request body failed in an earlier try: bad chunk size"
        );
    }

    #[tokio::test]
    async fn a_known_length_is_told_to_each_try_and_an_empty_body_ends_at_once() {
        let tee = Tee::new(http_body_util::Full::new(Bytes::from_static(b"hello")), 64);
        let mut first = tee.next_try();
        assert_eq!(first.size_hint().exact(), Some(5));
        assert_eq!(next(&mut first).await, "hello");
        assert_eq!(first.size_hint().exact(), Some(0));
        let second = tee.next_try();
        assert_eq!(second.size_hint().exact(), Some(5));
        let collected = second.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");

        let tee = Tee::new(http_body_util::Empty::<Bytes>::new(), 64);
        let try_ = tee.next_try();
        assert!(try_.is_end_stream());
        assert_eq!(try_.size_hint().exact(), Some(0));
    }
}
