//! HTTP/1 framing guard: refuses request-smuggling shapes that hyper would otherwise
//! tolerate, before any byte of such a request reaches the application.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding` (it
//! drops the length and closes afterwards). A proxy must not forward such a request:
//! proxies and servers that disagree on where it ends are how requests get smuggled.
//! The guard watches the bytes hyper reads, finds each request head (skipping bodies by
//! their framing), and refuses an ambiguous head with `400` and a closed connection.
//! Over-long request lines get `414`. Everything else (bad chunk sizes, too many or too
//! large headers) is left to hyper's own parser, which refuses it with 400 or 431.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why the guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("request has both Content-Length and Transfer-Encoding; send exactly one of them")]
    ContentLengthAndTransferEncoding,
    /// Several `Content-Length` values that differ, or one that is not a number.
    #[error("request has an invalid or conflicting Content-Length; send one decimal length")]
    BadContentLength,
    /// A request line longer than the configured limit.
    #[error("request line is longer than {0} bytes; shorten the URL")]
    RequestLineTooLong(usize),
}

impl Refusal {
    /// The status sent to the client.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::RequestLineTooLong(_) => 414,
            _ => 400,
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ContentLengthAndTransferEncoding => "cl_and_te",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::RequestLineTooLong(_) => "request_line_too_long",
        }
    }

    /// The complete HTTP/1.1 response written before the connection is closed.
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let text = if status == 414 {
            "URI Too Long"
        } else {
            "Bad Request"
        };
        let body = format!("{self}\n");
        format!(
            "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nskein-error: {}\r\nconnection: close\r\n\r\n{body}",
            body.len(),
            self.reason()
        )
        .into_bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// Skipping a chunked body.
    Chunk(Chunk),
    /// No longer inspecting (after an upgrade, CONNECT, or a shape hyper will refuse).
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u32 },
    Extension { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerEndLf,
}

/// The pure state machine: feed it every byte the server reads.
#[derive(Debug)]
pub struct FramingGuard {
    state: State,
    head: Vec<u8>,
    /// Whether `head` already holds the end of the request line.
    line_ended: bool,
    max_head: usize,
    max_line: usize,
}

impl FramingGuard {
    /// A guard for heads up to `max_head` bytes and request lines up to `max_line` bytes.
    pub fn new(max_head: usize, max_line: usize) -> Self {
        FramingGuard {
            state: State::Head,
            head: Vec::new(),
            line_ended: false,
            max_head,
            max_line,
        }
    }

    /// Inspects the next bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refusal> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Passthrough => return Ok(()),
                State::Head => {
                    let used = self.feed_head(bytes)?;
                    bytes = &bytes[used..];
                }
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunk(_) => {
                    let used = self.feed_chunk(bytes);
                    bytes = &bytes[used..];
                }
            }
        }
        Ok(())
    }

    fn feed_head(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        // Leading empty lines before a request are allowed (RFC 9112 §2.2).
        let mut used = 0;
        if self.head.is_empty() {
            used = bytes
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
        }
        for (i, b) in bytes[used..].iter().enumerate() {
            self.head.push(*b);
            self.line_ended |= *b == b'\n';
            if !self.line_ended && self.head.len() > self.max_line {
                return Err(Refusal::RequestLineTooLong(self.max_line));
            }
            if self.head.ends_with(b"\r\n\r\n") || self.head.ends_with(b"\n\n") {
                let consumed = used + i + 1;
                self.finish_head()?;
                return Ok(consumed);
            }
            if self.head.len() > self.max_head {
                // hyper answers 431 for this; stop inspecting.
                self.state = State::Passthrough;
                self.head = Vec::new();
                return Ok(bytes.len());
            }
        }
        Ok(bytes.len())
    }

    fn finish_head(&mut self) -> Result<(), Refusal> {
        let head = std::mem::take(&mut self.head);
        self.line_ended = false;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            // Malformed or too many headers: hyper refuses it with 400 or 431.
            self.state = State::Passthrough;
            return Ok(());
        }
        let mut lengths = Vec::new();
        let mut chunked = None;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                for part in h.value.split(|b| *b == b',') {
                    let text = std::str::from_utf8(part).map_err(|_| Refusal::BadContentLength)?;
                    let text = text.trim();
                    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(Refusal::BadContentLength);
                    }
                    lengths.push(text.parse::<u64>().map_err(|_| Refusal::BadContentLength)?);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if chunked.is_some() && !lengths.is_empty() {
            return Err(Refusal::ContentLengthAndTransferEncoding);
        }
        if lengths.windows(2).any(|w| w[0] != w[1]) {
            return Err(Refusal::BadContentLength);
        }
        self.state = match (upgrade, chunked, lengths.first()) {
            (true, _, _) => State::Passthrough,
            (_, Some(true), _) => State::Chunk(Chunk::Size {
                value: 0,
                digits: 0,
            }),
            // Not chunked last: hyper refuses it with 400.
            (_, Some(false), _) => State::Passthrough,
            (_, None, Some(&n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        Ok(())
    }

    /// Advances through chunked framing; returns bytes used. Malformed framing switches to
    /// passthrough so hyper's decoder reports it.
    fn feed_chunk(&mut self, bytes: &[u8]) -> usize {
        let State::Chunk(chunk) = &mut self.state else {
            return 0;
        };
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let next = match chunk {
                Chunk::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) if *digits < 16 => Some(Chunk::Size {
                        value: *value * 16 + d as u64,
                        digits: *digits + 1,
                    }),
                    _ if *digits == 0 => None,
                    _ if b == b';' || b == b' ' || b == b'\t' => {
                        Some(Chunk::Extension { size: *value })
                    }
                    _ if b == b'\r' => Some(Chunk::SizeLf { size: *value }),
                    _ => None,
                },
                Chunk::Extension { size } if b == b'\r' => Some(Chunk::SizeLf { size: *size }),
                Chunk::Extension { .. } if b == b'\n' => None,
                Chunk::Extension { size } => Some(Chunk::Extension { size: *size }),
                Chunk::SizeLf { size } if b == b'\n' => match *size {
                    0 => Some(Chunk::TrailerLineStart),
                    n => Some(Chunk::Data(n)),
                },
                Chunk::Data(left) => {
                    let n = (*left).min((bytes.len() - i) as u64);
                    *left -= n;
                    i += n as usize;
                    if *left == 0 {
                        *chunk = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr if b == b'\r' => Some(Chunk::DataLf),
                Chunk::DataLf if b == b'\n' => Some(Chunk::Size {
                    value: 0,
                    digits: 0,
                }),
                Chunk::TrailerLineStart if b == b'\r' => Some(Chunk::TrailerEndLf),
                Chunk::TrailerLineStart | Chunk::TrailerLine if b == b'\n' => {
                    Some(Chunk::TrailerLineStart)
                }
                Chunk::TrailerLineStart | Chunk::TrailerLine => Some(Chunk::TrailerLine),
                Chunk::TrailerEndLf if b == b'\n' => {
                    self.state = State::Head;
                    return i + 1;
                }
                _ => None,
            };
            match next {
                Some(c) => *chunk = c,
                None => {
                    self.state = State::Passthrough;
                    return bytes.len();
                }
            }
            i += 1;
        }
        i
    }
}

/// Wraps a client connection served by hyper's HTTP/1 server: every byte read passes the
/// [`FramingGuard`]; a refused request gets its error response written here and the read
/// fails, so hyper closes the connection without dispatching the request.
pub struct GuardedIo<T> {
    inner: T,
    guard: FramingGuard,
    refusal: Option<(Refusal, Vec<u8>, usize)>,
    on_refuse: Option<Box<dyn FnOnce(Refusal) + Send>>,
}

impl<T> GuardedIo<T> {
    /// Guards `inner`; `on_refuse` is called once if a request is refused (for metrics).
    pub fn new(inner: T, guard: FramingGuard, on_refuse: Box<dyn FnOnce(Refusal) + Send>) -> Self {
        GuardedIo {
            inner,
            guard,
            refusal: None,
            on_refuse: Some(on_refuse),
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
        if let Some((refusal, response, written)) = &mut this.refusal {
            while *written < response.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &response[*written..]))?;
                if n == 0 {
                    break;
                }
                *written += n;
            }
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                refusal.to_string(),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Err(refusal) = this.guard.feed(&buf.filled()[before..]) {
            buf.set_filled(before);
            if let Some(f) = this.on_refuse.take() {
                f(refusal);
            }
            this.refusal = Some((refusal, refusal.response(), 0));
            return self.poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

crate::io::forward_async_write!(GuardedIo);

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> FramingGuard {
        FramingGuard::new(65536, 8192)
    }

    /// Feeds `input` one byte at a time and all at once; both must agree.
    fn check(input: &[u8]) -> Result<(), Refusal> {
        let whole = guard().feed(input);
        let mut g = guard();
        let bytewise = input
            .iter()
            .try_for_each(|b| g.feed(std::slice::from_ref(b)));
        assert_eq!(whole, bytewise, "split reads must not change the verdict");
        whole
    }

    #[test]
    fn plain_requests_pass() {
        check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    }

    #[test]
    fn cl_and_te_is_refused() {
        let r =
            check(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r, Err(Refusal::ContentLengthAndTransferEncoding));
        let r =
            check(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(r, Err(Refusal::ContentLengthAndTransferEncoding));
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let r = check(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r, Err(Refusal::BadContentLength));
        let r = check(b"POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n");
        assert_eq!(r, Err(Refusal::BadContentLength));
        let r = check(b"POST / HTTP/1.1\r\nContent-Length: -4\r\n\r\n");
        assert_eq!(r, Err(Refusal::BadContentLength));
        check(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd").unwrap();
    }

    #[test]
    fn smuggling_hidden_in_a_body_is_not_mistaken_for_a_head() {
        // The body of the first request contains text shaped like a smuggled request; it
        // is body, so it passes, and the real second request is inspected.
        let body = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        check(&input).unwrap();
        input.extend_from_slice(
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(
            check(&input),
            Err(Refusal::ContentLengthAndTransferEncoding)
        );
    }

    #[test]
    fn chunked_bodies_are_skipped_to_the_next_head() {
        let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n".to_vec();
        check(&input).unwrap();
        input.extend_from_slice(
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(
            check(&input),
            Err(Refusal::ContentLengthAndTransferEncoding)
        );
    }

    #[test]
    fn long_request_line_is_refused() {
        let mut g = FramingGuard::new(65536, 64);
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(g.feed(&line), Err(Refusal::RequestLineTooLong(64)));
    }

    #[test]
    fn upgrades_stop_inspection() {
        check(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n").unwrap();
    }

    #[test]
    fn refusal_response_is_complete_http() {
        let resp = Refusal::ContentLengthAndTransferEncoding.response();
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("connection: close"));
        assert!(text.ends_with("send exactly one of them\n"));
    }
}
