//! Join tokens (`JoinToken: FromStr`), which arrive from files, the environment and the
//! command line. Properties: an accepted token reads back the same from what it reveals;
//! a refusal never repeats the secret part of what it was given.
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
            // The secret is what follows the `.` of the third part; a hex run of 8 or
            // more cannot come from the refusals' own words.
            let secret = text
                .trim()
                .split(':')
                .nth(2)
                .and_then(|p| p.split_once('.'))
                .map(|(_, s)| s)
                .filter(|s| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()));
            // The trust domain is named in refusals, and may hold the same run.
            let domain = text.trim().split(':').nth(1).unwrap_or_default();
            if let Some(secret) = secret.filter(|s| !domain.contains(s)) {
                assert!(
                    !e.to_string().contains(secret),
                    "the refusal repeats the secret: {e}"
                );
            }
        }
    }
});
