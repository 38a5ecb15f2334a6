//! HTTP/1 framing guard: refuses request-smuggling shapes that hyper would otherwise
//! tolerate, before any byte of such a request reaches the application.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding` (it
//! drops the length and closes afterwards). A proxy must not forward such a request:
//! proxies and servers that disagree on where it ends are how requests get smuggled.
//! The guard watches the bytes hyper reads, finds each request head exactly where
//! hyper's parser (httparse, same configuration, same header limit) finds it — bare `\n`
//! line endings included, so `\r\n\r\n`, `\n\n`, `\r\n\n` and `\n\r\n` all end a head —
//! and skips bodies by the same framing rules hyper's decoder follows.
//!
//! It refuses, with a complete error response and a closed connection: both
//! `Content-Length` and `Transfer-Encoding`, a bad `Content-Length` or
//! `Transfer-Encoding` (400); a head hyper's parser rejects (400, or 431 for too many
//! header fields); a head over `maxHeaderBytes` (431); a request line over
//! `maxRequestLine` (414). Only an actual switch of protocols ends inspection: after a
//! request that asks for one (an `Upgrade` header on HTTP/1.1, or `CONNECT`) the guard
//! releases nothing more until the server has answered it ([`FramingGuard::settle`]);
//! a `101` (or a `2xx` to `CONNECT`) lets the rest through untouched, anything else
//! resumes inspection. A chunked body hyper's decoder rejects ends the stream there.

mod io;
#[cfg(test)]
mod tests;

pub use io::{GuardedIo, OnRefuse, ReportSwitches, SwitchSignal};
use std::mem::MaybeUninit;

/// Why the guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("request has both Content-Length and Transfer-Encoding; send exactly one of them")]
    ContentLengthAndTransferEncoding,
    /// Several `Content-Length` values that differ, or one that is not a number.
    #[error("request has an invalid or conflicting Content-Length; send one decimal length")]
    BadContentLength,
    /// A `Transfer-Encoding` whose last coding is not `chunked`, or one on HTTP/1.0.
    #[error("request has a Transfer-Encoding that does not end in chunked, or one on HTTP/1.0; send Transfer-Encoding: chunked with HTTP/1.1, or a Content-Length")]
    BadTransferEncoding,
    /// A request line longer than the configured limit.
    #[error("request line is longer than {0} bytes (limits.maxRequestLine of the proxy's configuration); shorten the URL")]
    RequestLineTooLong(usize),
    /// A request head longer than the configured limit.
    #[error("request head is longer than {0} bytes (limits.maxHeaderBytes of the proxy's configuration); send fewer or shorter headers")]
    HeadTooLarge(usize),
    /// More header fields than the configured limit.
    #[error("request has more than {0} header fields (limits.maxHeaders of the proxy's configuration); send fewer")]
    TooManyHeaders(usize),
    /// A head the HTTP/1 parser rejects.
    #[error("request head is malformed ({0}); send a request line such as `GET /path HTTP/1.1`, then `Name: value` lines, then an empty line")]
    MalformedHead(httparse::Error),
}

impl Refusal {
    /// The status sent to the client.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::RequestLineTooLong(_) => 414,
            Refusal::HeadTooLarge(_) | Refusal::TooManyHeaders(_) => 431,
            _ => 400,
        }
    }

    /// A short label for metrics and the `skein-error` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ContentLengthAndTransferEncoding => "cl_and_te",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::BadTransferEncoding => "bad_transfer_encoding",
            Refusal::RequestLineTooLong(_) => "request_line_too_long",
            Refusal::HeadTooLarge(_) => "head_too_large",
            Refusal::TooManyHeaders(_) => "too_many_headers",
            Refusal::MalformedHead(_) => "malformed_head",
        }
    }

    /// The complete HTTP/1.1 response written before the connection is closed, naming
    /// the request's ID when it has one (one the proxy made: a refused head is not read
    /// for the caller's).
    pub fn response(&self, request_id: Option<&str>) -> Vec<u8> {
        let status = self.status();
        let text = match status {
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let (header, body) = match request_id {
            Some(id) => (
                format!("skein-request-id: {id}\r\n"),
                format!("{self}\nrequest id: {id}\n"),
            ),
            None => (String::new(), format!("{self}\n")),
        };
        format!(
            "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nskein-error: {}\r\n{header}connection: close\r\n\r\n{body}",
            body.len(),
            self.reason()
        )
        .into_bytes()
    }
}

/// The limits the guard enforces, as hyper's server is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// Longest request head in bytes (`maxHeaderBytes`).
    pub max_head: usize,
    /// Longest request line in bytes (`maxRequestLine`).
    pub max_line: usize,
    /// Most header fields (`maxHeaders`, hyper's `max_headers`).
    pub max_headers: usize,
}

impl From<&skein_model::Limits> for GuardLimits {
    fn from(l: &skein_model::Limits) -> Self {
        GuardLimits {
            max_head: l.max_header_bytes,
            max_line: l.max_request_line,
            max_headers: l.max_headers,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// Skipping a chunked body.
    Chunk(Chunk),
    /// After request `n`, which asked to switch protocols: nothing is released until the
    /// server's answer to it is known.
    AwaitSwitch(u64),
    /// The server switched protocols: no longer HTTP, no longer inspected.
    Passthrough,
    /// A chunked body hyper's decoder rejects: the stream ends after the bad byte.
    Broken,
}

/// Where the chunked decoder is; the states of hyper's `ChunkedState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// What one byte does to a chunked body.
enum Step {
    Next(Chunk),
    End,
    Bad,
}

/// What a request head says about the bytes that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    body: BodyLen,
    /// Whether hyper treats the request as asking to switch protocols.
    upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    Empty,
    Length(u64),
    Chunked,
}

/// The pure state machine: feed it every byte the server reads.
#[derive(Debug)]
pub struct FramingGuard {
    state: State,
    head: Vec<u8>,
    /// Between requests: a `\r` of an empty line was seen, its `\n` must follow.
    leading_cr: bool,
    /// Whether `head` already holds the end of the request line.
    line_ended: bool,
    /// Request heads completed so far; the next request's number is this plus one.
    heads: u64,
    /// The number of a request that asked to switch protocols, while its body is read.
    upgrade: Option<u64>,
    limits: GuardLimits,
}

impl FramingGuard {
    /// A guard enforcing `limits`.
    pub fn new(limits: GuardLimits) -> Self {
        FramingGuard {
            state: State::Head,
            head: Vec::new(),
            leading_cr: false,
            line_ended: false,
            heads: 0,
            upgrade: None,
            limits,
        }
    }

    /// Inspects the next bytes read from the client; returns how many of them may be
    /// released to the server now. Fewer than all only while the guard waits for the
    /// answer to a request that asked to switch protocols (the caller holds the rest and
    /// feeds it again after [`FramingGuard::settle`]), or once a chunked body is broken.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        let mut used = 0;
        while used < bytes.len() {
            let rest = &bytes[used..];
            used += match &mut self.state {
                State::Passthrough => rest.len(),
                State::AwaitSwitch(_) | State::Broken => return Ok(used),
                State::Head => self.feed_head(rest)?,
                State::Body(left) => {
                    let n = (*left).min(rest.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.body_done();
                    }
                    n as usize
                }
                State::Chunk(_) => self.feed_chunk(rest),
            };
        }
        Ok(used)
    }

    /// The request whose answer the guard waits for, if it does.
    pub fn awaiting(&self) -> Option<u64> {
        match self.state {
            State::AwaitSwitch(n) => Some(n),
            _ => None,
        }
    }

    /// The server answered the awaited request: `switched` (101, or 2xx to `CONNECT`)
    /// ends inspection, anything else resumes it.
    pub fn settle(&mut self, switched: bool) {
        if let State::AwaitSwitch(_) = self.state {
            self.state = if switched {
                State::Passthrough
            } else {
                State::Head
            };
        }
    }

    /// Whether a chunked body broke the framing: nothing more is released.
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    fn body_done(&mut self) {
        self.state = match self.upgrade.take() {
            Some(n) => State::AwaitSwitch(n),
            None => State::Head,
        };
    }

    /// Buffers head bytes up to where httparse would end the head; returns bytes used.
    fn feed_head(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        let skipped = if self.head.is_empty() {
            self.skip_empty_lines(bytes)?
        } else {
            0
        };
        let rest = &bytes[skipped..];
        if rest.is_empty() {
            return Ok(skipped);
        }
        let end = head_end(&self.head, rest);
        let take = &rest[..end.unwrap_or(rest.len())];
        self.check_request_line(take)?;
        if self.head.len() + take.len() > self.limits.max_head {
            return Err(Refusal::HeadTooLarge(self.limits.max_head));
        }
        self.head.extend_from_slice(take);
        if end.is_some() {
            self.finish_head()?;
        }
        Ok(skipped + take.len())
    }

    /// Empty lines before a request are skipped, as httparse does: `\n`, or `\r\n`.
    fn skip_empty_lines(&mut self, bytes: &[u8]) -> Result<usize, Refusal> {
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match (self.leading_cr, b) {
                (true, b'\n') => self.leading_cr = false,
                (true, _) => return Err(Refusal::MalformedHead(httparse::Error::NewLine)),
                (false, b'\r') => self.leading_cr = true,
                (false, b'\n') => {}
                (false, _) => break,
            }
            i += 1;
        }
        Ok(i)
    }

    /// Refuses a request line longer than the limit as soon as that is certain.
    fn check_request_line(&mut self, more: &[u8]) -> Result<(), Refusal> {
        if self.line_ended {
            return Ok(());
        }
        let max = self.limits.max_line;
        match more.iter().position(|b| *b == b'\n') {
            Some(at) if self.head.len() + at <= max => self.line_ended = true,
            None if self.head.len() + more.len() <= max => {}
            _ => return Err(Refusal::RequestLineTooLong(max)),
        }
        Ok(())
    }

    fn finish_head(&mut self) -> Result<(), Refusal> {
        // `None`: no head yet (cannot happen once leading empty lines are skipped, but
        // then collecting on is what hyper does too).
        let Some(framing) = inspect(&self.head, self.limits.max_headers)? else {
            return Ok(());
        };
        self.head.clear();
        self.line_ended = false;
        self.heads += 1;
        self.upgrade = framing.upgrade.then_some(self.heads);
        match framing.body {
            BodyLen::Empty => self.body_done(),
            BodyLen::Length(n) => self.state = State::Body(n),
            BodyLen::Chunked => self.state = State::Chunk(Chunk::Start),
        }
        Ok(())
    }

    /// Advances through chunked framing; returns bytes used. A byte hyper's decoder
    /// rejects is the last one released.
    fn feed_chunk(&mut self, bytes: &[u8]) -> usize {
        let State::Chunk(mut chunk) = self.state else {
            return 0;
        };
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(left) = chunk {
                let n = left.min((bytes.len() - i) as u64);
                i += n as usize;
                chunk = match left - n {
                    0 => Chunk::DataCr,
                    left => Chunk::Data(left),
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            match chunk_step(chunk, b) {
                Step::Next(next) => chunk = next,
                Step::End => {
                    self.body_done();
                    return i;
                }
                Step::Bad => {
                    self.state = State::Broken;
                    return i;
                }
            }
        }
        self.state = State::Chunk(chunk);
        i
    }
}

/// Where a head ends in `rest` (exclusive), given the head bytes already buffered: the
/// first `\n\n` or `\n\r\n`, the only ways an empty line can follow a line in httparse
/// (a `\r` must be followed by `\n`, and every `\n` ends a line or is an error).
fn head_end(head: &[u8], rest: &[u8]) -> Option<usize> {
    // The byte `back` positions before `rest[i]`, looking into `head` if needed.
    let before = |i: usize, back: usize| match i.checked_sub(back) {
        Some(j) => rest.get(j).copied(),
        None => head.len().checked_sub(back - i).map(|j| head[j]),
    };
    (0..rest.len())
        .filter(|&i| rest[i] == b'\n')
        .find(|&i| {
            before(i, 1) == Some(b'\n')
                || (before(i, 1) == Some(b'\r') && before(i, 2) == Some(b'\n'))
        })
        .map(|i| i + 1)
}

/// Header slots kept on the stack; more (up to 1,000) are allocated.
const STACK_SLOTS: usize = 128;

/// Parses a complete head as hyper does, with `max_headers` header slots. `Ok(None)`:
/// httparse wants more bytes.
fn inspect(head: &[u8], max_headers: usize) -> Result<Option<Framing>, Refusal> {
    if max_headers <= STACK_SLOTS {
        let mut slots = [const { MaybeUninit::uninit() }; STACK_SLOTS];
        parse(head, &mut slots[..max_headers])
    } else {
        let mut slots = Vec::with_capacity(max_headers);
        slots.resize_with(max_headers, MaybeUninit::uninit);
        parse(head, &mut slots)
    }
}

fn parse<'b>(
    head: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<Framing>, Refusal> {
    let max = slots.len();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => framing(&req).map(Some),
        // The head ended before our candidate: two heads in one buffer is not a shape
        // hyper reads either way, so it is refused rather than guessed.
        Ok(httparse::Status::Complete(_)) => Err(Refusal::MalformedHead(httparse::Error::NewLine)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::TooManyHeaders(max)),
        Err(e) => Err(Refusal::MalformedHead(e)),
    }
}

/// Body framing and upgrade intent, by hyper's server rules (`role.rs`): a
/// `Content-Length` must be all digits and agree with any other; `Transfer-Encoding`
/// needs HTTP/1.1 and `chunked` last; `CONNECT`, or any `Upgrade` header on HTTP/1.1,
/// asks to switch protocols. Both framings at once are refused outright.
fn framing(req: &httparse::Request<'_, '_>) -> Result<Framing, Refusal> {
    let http11 = req.version == Some(1);
    let mut upgrade = req.method == Some("CONNECT");
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = digits(h.value).ok_or(Refusal::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::BadContentLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(ends_in_chunked(h.value));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    let body = match (chunked, length) {
        (Some(_), Some(_)) => return Err(Refusal::ContentLengthAndTransferEncoding),
        (Some(true), None) if http11 => BodyLen::Chunked,
        (Some(_), None) => return Err(Refusal::BadTransferEncoding),
        (None, Some(n)) if n > 0 => BodyLen::Length(n),
        (None, _) => BodyLen::Empty,
    };
    Ok(Framing { body, upgrade })
}

/// A decimal length as hyper reads it: digits only, no sign, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Whether the last coding is `chunked`, as hyper's `is_chunked_` decides (the value
/// must be visible ASCII).
fn ends_in_chunked(value: &[u8]) -> bool {
    let visible = value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b));
    let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
    visible && last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// One byte of chunked framing, exactly as hyper's decoder takes it (its limits on
/// extension and trailer sizes aside: hyper refuses those itself).
fn chunk_step(chunk: Chunk, b: u8) -> Step {
    let hex = (b as char).to_digit(16).map(u64::from);
    let grow = |size: u64, d: u64| size.checked_mul(16)?.checked_add(d);
    let next = match (chunk, b) {
        (Chunk::Start, _) => hex.map(Chunk::Size),
        (Chunk::Size(size), _) if hex.is_some() => hex.and_then(|d| grow(size, d)).map(Chunk::Size),
        (Chunk::Size(size) | Chunk::SizeLws(size), b'\t' | b' ') => Some(Chunk::SizeLws(size)),
        (Chunk::Size(size) | Chunk::SizeLws(size), b';') => Some(Chunk::Extension(size)),
        (Chunk::Size(size) | Chunk::SizeLws(size) | Chunk::Extension(size), b'\r') => {
            Some(Chunk::SizeLf(size))
        }
        (Chunk::Extension(_), b'\n') => None,
        (Chunk::Extension(size), _) => Some(Chunk::Extension(size)),
        (Chunk::SizeLf(0), b'\n') => Some(Chunk::EndCr),
        (Chunk::SizeLf(size), b'\n') => Some(Chunk::Data(size)),
        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
        (Chunk::DataLf, b'\n') => Some(Chunk::Start),
        (Chunk::EndCr, b'\r') => Some(Chunk::EndLf),
        (Chunk::Trailer, b'\r') => Some(Chunk::TrailerLf),
        (Chunk::EndCr | Chunk::Trailer, _) => Some(Chunk::Trailer),
        (Chunk::TrailerLf, b'\n') => Some(Chunk::EndCr),
        (Chunk::EndLf, b'\n') => return Step::End,
        _ => None,
    };
    next.map_or(Step::Bad, Step::Next)
}
