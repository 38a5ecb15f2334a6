//! The HTTP/1 framing guard (`FramingGuard`), fed every byte a client sends before hyper
//! sees it. Properties: however the bytes are split into three reads, the guard releases
//! the same bytes and refuses the same way; it never releases more than it was given; a
//! head with both `Content-Length` and `Transfer-Encoding` is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_proxy::http::guard::{FramingGuard, GuardLimits};

/// Feeds `reads` in order: bytes released before the guard held or refused, and the
/// refusal (status and reason) if any.
fn run(reads: &[&[u8]]) -> (usize, Option<(u16, &'static str)>) {
    let mut guard = FramingGuard::new(GuardLimits {
        max_head: 512,
        max_line: 128,
        max_headers: 16,
    });
    let mut released = 0;
    for read in reads {
        match guard.feed(read) {
            Ok(n) => {
                assert!(n <= read.len());
                released += n;
                if n < read.len() {
                    // Held (an upgrade awaits its answer, or a broken chunked body).
                    return (released, None);
                }
            }
            Err(refusal) => return (released, Some((refusal.status(), refusal.reason()))),
        }
    }
    (released, None)
}

fuzz_target!(|data: &[u8]| {
    let [first, second, bytes @ ..] = data else {
        return;
    };
    let at = usize::from(*first) % (bytes.len() + 1);
    let then = at + usize::from(*second) % (bytes.len() - at + 1);
    let whole = run(&[bytes]);
    let split_up = run(&[&bytes[..at], &bytes[at..then], &bytes[then..]]);
    // A refusal may come after a first read was released whole; the verdict is the same.
    assert_eq!(whole.1, split_up.1, "split at {at} and {then}");
    if whole.1.is_none() {
        assert_eq!(whole.0, split_up.0, "split at {at} and {then}");
    }
    // A head with both framings is refused, whatever follows it.
    let mut smuggled =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    smuggled.extend_from_slice(bytes);
    let (released, refusal) = run(&[&smuggled]);
    assert!(
        refusal.is_some(),
        "released {released} bytes of a smuggling head"
    );
});
