//! Join tokens (`JoinToken: FromStr`), which arrive from files, the environment and the
//! command line. Properties: an accepted token reads back the same from what it reveals;
//! a refusal never repeats a long hex run (an id, a secret, a pin) of what it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_identity::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<JoinToken>() {
        Ok(token) => {
            let again: JoinToken = token.reveal().parse().expect("a revealed token parses");
            assert_eq!(again.reveal(), token.reveal());
        }
        Err(e) => {
            // No run of 16 or more hex digits (ids, secrets, pins) from the input comes
            // back: the refusals' own words have none.
            let message = e.to_string();
            for run in text.split(|c: char| !c.is_ascii_hexdigit()) {
                for i in 0..run.len().saturating_sub(15) {
                    let part = &run[i..i + 16];
                    assert!(
                        !message.contains(part),
                        "the refusal repeats {part:?}: {message}"
                    );
                }
            }
        }
    }
});
