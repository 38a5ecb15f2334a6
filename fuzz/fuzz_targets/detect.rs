//! Protocol detection (`detect::classify`) on a connection's first bytes. Property: once
//! a prefix decides the protocol, every longer prefix decides the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_proxy::detect::{classify, Verdict};

fuzz_target!(|data: &[u8]| {
    let max_line = 64;
    let mut decided = None;
    for end in 0..=data.len() {
        match classify(&data[..end], max_line) {
            Verdict::NeedMore => assert!(decided.is_none(), "undecided again at {end}"),
            Verdict::Done(d) => match decided {
                None => decided = Some(d),
                Some(first) => assert_eq!(first, d, "changed its mind at {end}"),
            },
        }
    }
});
