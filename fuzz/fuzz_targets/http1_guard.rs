//! The HTTP/1 framing guard (`FramingGuard`), fed every byte a client sends before hyper
//! sees it. Properties: however the bytes are split into reads, the guard releases the
//! same bytes and refuses the same way; it never releases more than it was given.
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
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let at = usize::from(split) % (bytes.len() + 1);
    let whole = run(&[bytes]);
    let (a, b) = bytes.split_at(at);
    let split_up = run(&[a, b]);
    // A refusal may come after a first read was released whole; the verdict is the same.
    assert_eq!(whole.1, split_up.1, "split at {at}");
    if whole.1.is_none() {
        assert_eq!(whole.0, split_up.0, "split at {at}");
    }
});
