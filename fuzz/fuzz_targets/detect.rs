//! Protocol detection (`detect::classify`) on a connection's first bytes. Properties:
//! once a prefix decides the protocol, every longer prefix decides the same; and a
//! well-formed request line built from the input is HTTP/1, every shorter prefix of it
//! undecided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_proxy::detect::{classify, Detected, Verdict};

const MAX_LINE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len() {
        match classify(&data[..end], MAX_LINE) {
            Verdict::NeedMore => {
                assert!(decided.is_none(), "undecided again at {end}");
                assert!(
                    end <= MAX_LINE + 1,
                    "undecided past the line limit at {end}"
                );
            }
            Verdict::Done(d) => match decided {
                None => decided = Some(d),
                Some(first) => assert_eq!(first, d, "changed its mind at {end}"),
            },
        }
    }
    // `METHOD /TARGET HTTP/1.1\r\n` from the input: letters for the method, visible
    // characters for the target, within the limit.
    let method: Vec<u8> = data.iter().take(8).map(|b| b'A' + b % 26).collect();
    if method.is_empty() {
        return;
    }
    let target: Vec<u8> = data
        .iter()
        .skip(8)
        .take(MAX_LINE - method.len() - 12)
        .map(|b| b'!' + b % 94)
        .collect();
    let mut line = method;
    line.extend_from_slice(b" /");
    line.extend_from_slice(&target);
    line.extend_from_slice(b" HTTP/1.1\r\n");
    if line.starts_with(b"PRI") {
        return; // a prefix of the HTTP/2 preface: decided by the preface's bytes
    }
    for end in 0..line.len() {
        assert_eq!(
            classify(&line[..end], MAX_LINE),
            Verdict::NeedMore,
            "{line:?} at {end}"
        );
    }
    assert_eq!(
        classify(&line, MAX_LINE),
        Verdict::Done(Detected::Http1),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
});
