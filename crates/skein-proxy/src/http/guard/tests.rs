//! Tests of the framing guard: each refusal, the agreement with httparse on where heads
//! end (property-tested), chunked framing as hyper decodes it, and switching protocols.

use super::*;
use proptest::prelude::*;

const LIMITS: GuardLimits = GuardLimits {
    max_head: 65536,
    max_line: 8192,
    max_headers: 100,
};

const SMUGGLED: &[u8] =
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Feeds `input` one byte at a time and all at once; both must agree. `Ok` holds how
/// many bytes were released.
fn check_with(limits: GuardLimits, input: &[u8]) -> Result<usize, Refusal> {
    let whole = FramingGuard::new(limits).feed(input);
    let mut g = FramingGuard::new(limits);
    let mut bytewise = Ok(0);
    for b in input {
        match g.feed(std::slice::from_ref(b)) {
            Ok(n) => bytewise = bytewise.map(|sum| sum + n),
            Err(e) => {
                bytewise = Err(e);
                break;
            }
        }
    }
    assert_eq!(whole, bytewise, "split reads must not change the verdict");
    whole
}

fn check(input: &[u8]) -> Result<usize, Refusal> {
    check_with(LIMITS, input)
}

fn passes(input: &[u8]) {
    assert_eq!(
        check(input),
        Ok(input.len()),
        "{}",
        String::from_utf8_lossy(input)
    );
}

fn with_smuggled(head: &[u8]) -> Vec<u8> {
    [head, SMUGGLED].concat()
}

#[test]
fn plain_requests_pass() {
    passes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    passes(b"\r\n\nGET / HTTP/1.1\nHost: a\n\nGET /2 HTTP/1.0\r\n\r\n");
}

#[test]
fn cl_and_te_is_refused() {
    let r = check(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(r, Err(Refusal::ContentLengthAndTransferEncoding));
    let r = check(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(r, Err(Refusal::ContentLengthAndTransferEncoding));
}

#[test]
fn lengths_and_codings_hyper_would_misread_are_refused() {
    for head in [
        &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        assert_eq!(check(head), Err(Refusal::BadContentLength), "{head:?}");
    }
    passes(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd");
    for head in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: \xffchunked, chunked\r\n\r\n",
    ] {
        assert_eq!(check(head), Err(Refusal::BadTransferEncoding), "{head:?}");
    }
    passes(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n0\r\n\r\n");
}

#[test]
fn smuggling_hidden_in_a_body_is_not_mistaken_for_a_head() {
    // The body of the first request contains text shaped like a smuggled request; it
    // is body, so it passes, and the real second request is inspected.
    let mut input = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        SMUGGLED.len()
    )
    .into_bytes();
    input.extend_from_slice(SMUGGLED);
    passes(&input);
    input.extend_from_slice(SMUGGLED);
    assert_eq!(
        check(&input),
        Err(Refusal::ContentLengthAndTransferEncoding)
    );
}

#[test]
fn chunked_bodies_are_skipped_to_the_next_head() {
    let body = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\nA \t;x\r\n0123456789\r\n00000000000000000000\r\nx-t: 1\r\nx-u: 2\r\n\r\n";
    passes(body);
    assert_eq!(
        check(&with_smuggled(body)),
        Err(Refusal::ContentLengthAndTransferEncoding)
    );
}

#[test]
fn a_chunked_body_hyper_rejects_releases_nothing_after_the_bad_byte() {
    for (body, bad_at) in [
        (&b"zz\r\n"[..], 0),
        (b"4\nabcd", 1),
        (b"4;x\nabcd", 3),
        (b"4 5\r\n", 2),
        (b"4\r\nabcdX", 7),
        (b"0\r\nx-t: 1\rX", 10),
        (b"11111111111111111\r\n", 16),
    ] {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = [&head[..], body, SMUGGLED].concat();
        assert_eq!(
            check(&input),
            Ok(head.len() + bad_at + 1),
            "{}",
            String::from_utf8_lossy(body)
        );
        let mut g = FramingGuard::new(LIMITS);
        g.feed(&input).unwrap();
        assert!(g.is_broken());
        assert_eq!(g.feed(b"more"), Ok(0));
    }
}

#[test]
fn long_request_lines_and_heads_are_refused() {
    let limits = GuardLimits {
        max_line: 64,
        max_head: 1024,
        ..LIMITS
    };
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 100));
    assert_eq!(
        check_with(limits, &line),
        Err(Refusal::RequestLineTooLong(64))
    );
    let exact = [&b"GET /"[..], &[b'a'; 49], b" HTTP/1.1\r\n\r\n"].concat();
    assert_eq!(
        check_with(limits, &exact),
        Ok(exact.len()),
        "64 bytes with its \\r"
    );
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "v".repeat(1024));
    assert_eq!(
        check_with(limits, big.as_bytes()),
        Err(Refusal::HeadTooLarge(1024))
    );
}

#[test]
fn the_header_limit_is_the_configured_one() {
    let many = |n: usize| {
        let mut head = String::from("POST / HTTP/1.1\r\n");
        for i in 0..n {
            head += &format!("x-h{i}: v\r\n");
        }
        head + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    };
    // 200 headers under maxHeaders 1000 are inspected, not waved through.
    let wide = GuardLimits {
        max_headers: 1000,
        ..LIMITS
    };
    assert_eq!(
        check_with(wide, many(200).as_bytes()),
        Err(Refusal::ContentLengthAndTransferEncoding)
    );
    assert_eq!(
        check_with(LIMITS, many(150).as_bytes()),
        Err(Refusal::TooManyHeaders(100))
    );
    let r = Refusal::TooManyHeaders(100);
    assert!(String::from_utf8(r.response(None))
        .unwrap()
        .starts_with("HTTP/1.1 431 "));
}

#[test]
fn heads_ending_in_bare_line_feeds_end_where_httparse_ends_them() {
    for head in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\n\r\n",
    ] {
        assert_eq!(
            check(&with_smuggled(head)),
            Err(Refusal::ContentLengthAndTransferEncoding),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn malformed_heads_are_refused_not_waved_through() {
    for head in [
        &b"GET /x HTTP/1.1 junk\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"\rGET / HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            matches!(check(&with_smuggled(head)), Err(Refusal::MalformedHead(_))),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn an_upgrade_request_holds_what_follows_until_it_is_answered() {
    let ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    let input = with_smuggled(ws);
    for switched in [true, false] {
        let mut g = FramingGuard::new(LIMITS);
        assert_eq!(g.feed(&input), Ok(ws.len()), "the rest is held");
        assert_eq!(g.awaiting(), Some(1));
        assert_eq!(g.feed(&input[ws.len()..]), Ok(0), "still held");
        g.settle(switched);
        let rest = g.feed(&input[ws.len()..]);
        if switched {
            assert_eq!(rest, Ok(SMUGGLED.len()), "after 101 the bytes are not HTTP");
        } else {
            assert_eq!(rest, Err(Refusal::ContentLengthAndTransferEncoding));
        }
    }
}

#[test]
fn what_counts_as_asking_to_switch_is_what_hyper_counts() {
    let asks = |head: &[u8]| {
        let mut g = FramingGuard::new(LIMITS);
        g.feed(head).unwrap();
        g.awaiting().is_some()
    };
    assert!(asks(
        b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    ));
    assert!(asks(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
    assert!(asks(b"CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n"));
    assert!(!asks(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"));
    assert!(!asks(b"CONNECT web:80 HTTP/1.0\r\nUpgrade: x\r\n\r\n"));
    assert!(!asks(b"connect web:80 HTTP/1.1\r\n\r\n"));
    // The body of an upgrade request is read first; then the guard waits.
    let mut g = FramingGuard::new(LIMITS);
    let head = b"POST / HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(g.feed(head), Ok(head.len()));
    assert_eq!(g.awaiting(), None);
    assert_eq!(g.feed(b"abcGET"), Ok(3));
    assert_eq!(g.awaiting(), Some(1));
}

#[test]
fn requests_are_numbered_in_order() {
    let mut g = FramingGuard::new(LIMITS);
    let plain = b"GET / HTTP/1.1\r\n\r\n";
    let upgrade = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n";
    let input = [&plain[..], plain, upgrade, plain].concat();
    assert_eq!(g.feed(&input), Ok(2 * plain.len() + upgrade.len()));
    assert_eq!(g.awaiting(), Some(3));
    g.settle(false);
    assert_eq!(g.feed(plain), Ok(plain.len()));
}

#[test]
fn refusal_response_is_complete_http() {
    let resp = Refusal::ContentLengthAndTransferEncoding.response(Some("r-1"));
    let text = String::from_utf8(resp).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(text.contains("connection: close"));
    assert!(text.contains("skein-request-id: r-1\r\n"), "{text}");
    assert!(
        text.ends_with("send exactly one of them\nrequest id: r-1\n"),
        "{text}"
    );
    let text =
        String::from_utf8(Refusal::MalformedHead(httparse::Error::HeaderName).response(None))
            .unwrap();
    assert!(text.contains("malformed (invalid header name)"), "{text}");
}

// Property test: heads built from pieces that stress line endings, fed in random
// splits, end (or fail) exactly where httparse says.

fn arb_head() -> impl Strategy<Value = Vec<u8>> {
    let eol = prop::sample::select(vec![&b"\r\n"[..], b"\n", b"\r", b"\n\r", b""]);
    let line = prop::sample::select(vec![
        &b"Host: a"[..],
        b"X-A: b c",
        b"X-B:",
        b"bad name: x",
        b" folded",
        b"",
        b"X-C: \r",
    ]);
    let start = prop::sample::select(vec![
        &b"GET / HTTP/1.1"[..],
        b"GET / HTTP/1.0",
        b"GET /\r HTTP/1.1",
        b"\r\nGET / HTTP/1.1",
        b"\nGET / HTTP/1.1",
    ]);
    (
        start,
        eol.clone(),
        prop::collection::vec((line, eol.clone()), 0..5),
        eol,
    )
        .prop_map(|(start, first_eol, lines, end)| {
            let mut head = [start, first_eol].concat();
            for (line, eol) in lines {
                head.extend_from_slice(line);
                head.extend_from_slice(eol);
            }
            head.extend_from_slice(end);
            head
        })
}

fn httparse_end(input: &[u8]) -> Result<Option<usize>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    match httparse::Request::new(&mut headers).parse(input) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e),
    }
}

proptest! {
    #[test]
    fn heads_end_exactly_where_httparse_ends_them(
        head in arb_head(),
        splits in prop::collection::vec(1usize..8, 0..40),
    ) {
        let input = with_smuggled(&head);
        let mut g = FramingGuard::new(LIMITS);
        let mut verdict = Ok(0);
        let mut at: usize = 0;
        for step in splits.iter().copied().chain(std::iter::once(usize::MAX)) {
            let end = at.saturating_add(step).min(input.len());
            match g.feed(&input[at..end]) {
                Ok(n) => verdict = verdict.map(|sum| sum + n),
                Err(e) => { verdict = Err(e); break; }
            }
            at = end;
            if at == input.len() { break; }
        }
        match httparse_end(&input) {
            // The smuggled request right after the head must be found and refused.
            Ok(Some(n)) if n == head.len() => prop_assert_eq!(
                verdict, Err(Refusal::ContentLengthAndTransferEncoding),
                "{:?}", String::from_utf8_lossy(&head)
            ),
            // httparse reads the smuggled headers as part of this head: refused too.
            Ok(Some(_)) => prop_assert!(verdict.is_err(), "{:?}", String::from_utf8_lossy(&head)),
            // A head httparse rejects is refused before anything is released.
            Err(e) => prop_assert_eq!(
                verdict, Err(if e == httparse::Error::TooManyHeaders { Refusal::TooManyHeaders(100) } else { Refusal::MalformedHead(e) }),
                "{:?}", String::from_utf8_lossy(&head)
            ),
            // Still incomplete: nothing refused, the guard is still collecting.
            Ok(None) => {
                prop_assert!(verdict.is_ok(), "{:?}", String::from_utf8_lossy(&head));
                prop_assert_eq!(g.heads, 0);
            }
        }
    }
}
