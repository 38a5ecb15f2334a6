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
//! dropped and the body can no longer be replayed; the try reading it carries on
//! streaming. A failed client body cannot be replayed either. Only the newest try reads:
//! [`Tee::retire`] stops the current one where it is (before the retry's backoff, so that
//! it reads no further meanwhile), and its body fails with [`Superseded`] if polled again
//! (its stream is reset, so no peer takes a cut-short body for a whole one). A try that
//! would have to start past what is held fails rather than send a body missing its
//! beginning. [`Tee::seal`] drops the copy once no other try can follow.
//!
//! Small chunks (1-byte HTTP/2 DATA frames, tiny chunked-encoding chunks) are copied
//! into one buffer rather than each kept as its own handle, so the copy costs about its
//! cap in memory however the client slices its body.

use super::BoxError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// Chunks smaller than this are copied into a shared buffer instead of kept by handle.
const SMALL_CHUNK: usize = 4096;

/// The body of a try that a later try replaced.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry of the request")]
pub struct Superseded;

/// A try could not be given the whole body (it failed in an earlier try, or more of it
/// was read than is held).
#[derive(Debug, thiserror::Error)]
#[error("request body cannot be sent again: {0}")]
pub struct NotHeld(String);

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
    /// What was read so far, while within the cap, oldest first; then `small`.
    chunks: Vec<Bytes>,
    /// Small chunks read since the last entry of `chunks`, copied together.
    small: BytesMut,
    /// Bytes in `chunks` and `small`.
    held: usize,
    /// Bytes more than which are not kept.
    cap: usize,
    /// The body ended (after `trailers`, if any).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// More than `cap` was read, or no try can follow: the copy is gone.
    dropped: bool,
    /// The client's body failed, with this message.
    failed: Option<String>,
    /// The try allowed to read (0: none yet); bodies of other tries are retired.
    current: u64,
    /// The chunks of `chunks` the current try has yielded.
    cursor: usize,
}

impl<B> Shared<B> {
    /// `small` becomes the last of `chunks`, for a try that starts now.
    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            let small = self.small.split().freeze();
            self.chunks.push(small);
        }
    }

    /// Keeps a copy of `data`, just read by the current try, if within the cap.
    fn keep(&mut self, data: &Bytes) {
        if self.dropped {
            return;
        }
        if self.held + data.len() > self.cap {
            // Beyond the cap: this try streams on; no other can.
            self.drop_copy();
            return;
        }
        self.held += data.len();
        if data.len() < SMALL_CHUNK {
            self.small.extend_from_slice(data);
        } else {
            self.flush_small();
            self.chunks.push(data.clone());
        }
        // The current try has seen all of it.
        self.cursor = self.chunks.len();
    }

    fn drop_copy(&mut self) {
        self.dropped = true;
        self.chunks = Vec::new();
        self.small = BytesMut::new();
        self.held = 0;
        self.cursor = 0;
    }

    fn replayable(&self) -> bool {
        !self.dropped && self.failed.is_none()
    }
}

/// One try's view of a [`Tee`]'s body.
pub struct Replay<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Which try this is (see `Shared::current`).
    generation: u64,
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
                small: BytesMut::new(),
                held: 0,
                cap,
                ended,
                trailers: None,
                dropped: false,
                failed: None,
                current: 0,
                cursor: 0,
            })),
            length,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<B>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether another try could send the whole body now: nothing beyond the cap was
    /// read and the client's body did not fail.
    pub fn replayable(&self) -> bool {
        self.lock().replayable()
    }

    /// Why another try could not send the whole body: `body_too_large` (more than the
    /// cap was read, or the copy was sealed), `body_failed`; `None` if it could.
    pub fn why_not(&self) -> Option<&'static str> {
        let shared = self.lock();
        if shared.failed.is_some() {
            Some("body_failed")
        } else if shared.dropped {
            Some("body_too_large")
        } else {
            None
        }
    }

    /// Stops the current try's body where it is, if the whole body can still be sent
    /// again; returns whether it could. Called when a retry is decided, so that the try
    /// does not read on during the backoff.
    pub fn retire(&self) -> bool {
        let mut shared = self.lock();
        if !shared.replayable() {
            return false;
        }
        shared.current += 1;
        shared.cursor = 0;
        shared.flush_small();
        true
    }

    /// The body for the next try (after [`Tee::retire`], or the first); the bodies of
    /// earlier tries are retired.
    pub fn next_try(&self) -> Replay<B> {
        let generation = {
            let mut shared = self.lock();
            shared.current += 1;
            shared.cursor = 0;
            shared.flush_small();
            shared.current
        };
        Replay {
            shared: self.shared.clone(),
            generation,
            sent: 0,
            done: false,
            length: self.length,
        }
    }

    /// No try follows the current one: the copy is dropped (past what the current try
    /// has yet to send), and nothing more is copied.
    pub fn seal(&self) {
        let mut shared = self.lock();
        shared.dropped = true;
        let yielded = shared.cursor;
        shared.chunks.drain(..yielded);
        shared.cursor = 0;
        // The current try has read what is there.
        shared.small = BytesMut::new();
        shared.held = shared.chunks.iter().map(Bytes::len).sum();
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
        let mut guard = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = &mut *guard;
        if shared.current != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        // What earlier tries read, first.
        if shared.cursor < shared.chunks.len() {
            let chunk = if shared.dropped {
                // Sealed: what this last try has sent is let go at once.
                let at = shared.cursor;
                let chunk = shared.chunks.remove(at);
                shared.held -= chunk.len();
                chunk
            } else {
                shared.cursor += 1;
                shared.chunks[shared.cursor - 1].clone()
            };
            this.sent += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.sent == 0 && this.generation > 1 && shared.dropped && shared.held == 0 {
            // A later try that would start past what is held: never a body without its
            // beginning.
            let bytes_read = !shared.ended || shared.trailers.is_some();
            if bytes_read {
                return Poll::Ready(Some(Err(
                    NotHeld("more was read than is kept".into()).into()
                )));
            }
        }
        if shared.ended {
            this.done = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        if let Some(why) = &shared.failed {
            return Poll::Ready(Some(Err(NotHeld(why.clone()).into())));
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
                        shared.keep(&data);
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
            && shared.cursor >= shared.chunks.len()
            && !shared.dropped
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
        // Small chunks come back together.
        assert_eq!(next(&mut second).await, "ab");
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
        assert_eq!(got, ["ab", "c", "trailers:x-sum"]);
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
            "error:request body cannot be sent again: bad chunk size"
        );
    }

    #[tokio::test]
    async fn a_retired_try_reads_no_further_during_the_backoff() {
        let (tx, body) = streamed();
        let tee = Tee::new(body, 8);
        let mut first = tee.next_try();
        tx.send(data("abc")).unwrap();
        assert_eq!(next(&mut first).await, "abc");
        // A retry is decided: the first try stops here, whatever arrives meanwhile.
        assert!(tee.retire());
        tx.send(data("defghijk")).unwrap();
        assert!(next(&mut first)
            .await
            .starts_with("error:request body superseded"));
        assert!(tee.replayable(), "nothing was read past the cap");
        let mut second = tee.next_try();
        assert_eq!(next(&mut second).await, "abc");
        assert_eq!(next(&mut second).await, "defghijk");
        // Past the cap now: no third try.
        assert!(!tee.retire());
    }

    #[tokio::test]
    async fn a_try_that_would_start_past_what_is_held_fails() {
        let (tx, body) = streamed();
        let tee = Tee::new(body, 2);
        let mut first = tee.next_try();
        tx.send(data("abc")).unwrap();
        assert_eq!(next(&mut first).await, "abc");
        let mut second = tee.next_try();
        tx.send(data("d")).unwrap();
        assert_eq!(
            next(&mut second).await,
            "error:request body cannot be sent again: more was read than is kept"
        );
    }

    #[tokio::test]
    async fn small_chunks_are_held_together_and_a_seal_drops_the_copy() {
        let (tx, body) = streamed();
        let tee = Tee::new(body, 64 * 1024);
        let mut first = tee.next_try();
        for _ in 0..1000 {
            tx.send(data("x")).unwrap();
            assert_eq!(next(&mut first).await, "x");
        }
        tx.send(Ok(Frame::data(Bytes::from(vec![b'y'; SMALL_CHUNK]))))
            .unwrap();
        next(&mut first).await;
        {
            let shared = tee.shared.lock().unwrap();
            assert_eq!(
                shared.chunks.len(),
                2,
                "1000 bytes in one buffer, then the big one"
            );
            assert_eq!(shared.held, 1000 + SMALL_CHUNK);
        }
        assert!(tee.retire());
        let mut second = tee.next_try();
        assert_eq!(next(&mut second).await, "x".repeat(1000));
        // The answer to this try is final: what it has sent is let go, the rest it still
        // sends, and nothing more is copied.
        tee.seal();
        {
            let shared = tee.shared.lock().unwrap();
            assert_eq!((shared.chunks.len(), shared.held), (1, SMALL_CHUNK));
        }
        assert_eq!(next(&mut second).await, "y".repeat(SMALL_CHUNK));
        tx.send(data("z")).unwrap();
        drop(tx);
        assert_eq!(next(&mut second).await, "z");
        assert_eq!(next(&mut second).await, "end");
        let shared = tee.shared.lock().unwrap();
        assert_eq!(
            (shared.chunks.len(), shared.held, shared.small.len()),
            (0, 0, 0)
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
