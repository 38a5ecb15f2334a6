//! Request path normalisation (`skein_model::authz::path::normalize`) under every
//! combination of the mesh's path rules. Properties: normalising is idempotent; an
//! accepted path has no `.` or `..` segment, no `//`, no escaped unreserved byte and
//! upper-case escapes, and starts with `/` when the input did; rejecting ambiguous paths only ever
//! refuses, never changes an accepted result; keeping encoded slashes only ever accepts
//! more, and what both accept reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_model::authz::path::{normalize, AmbiguousPaths, EncodedSlashes, PathRules};

fn rules(slashes: EncodedSlashes, ambiguous: AmbiguousPaths) -> PathRules {
    PathRules {
        encoded_slashes: slashes,
        ambiguous_paths: ambiguous,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let all = [
        rules(EncodedSlashes::Reject, AmbiguousPaths::Reject),
        rules(EncodedSlashes::Reject, AmbiguousPaths::Forward),
        rules(EncodedSlashes::Keep, AmbiguousPaths::Reject),
        rules(EncodedSlashes::Keep, AmbiguousPaths::Forward),
    ];
    let results: Vec<Option<String>> = all
        .iter()
        .map(|r| normalize(path, *r).ok().map(|n| n.into_owned()))
        .collect();
    for (r, result) in all.iter().zip(&results) {
        if let Some(normal) = result {
            let again = normalize(normal, *r).map(|n| n.into_owned());
            assert_eq!(
                again.as_ref(),
                Ok(normal),
                "not idempotent: {path:?} → {normal:?}"
            );
            if path.starts_with('/') {
                assert!(normal.starts_with('/'), "{path:?} → {normal:?}");
                assert!(!normal.contains("//"), "{path:?} → {normal:?}");
            }
            for segment in normal.split('/') {
                assert!(segment != "." && segment != "..", "{path:?} → {normal:?}");
            }
            // Escapes left are of reserved bytes only, in upper case.
            let bytes = normal.as_bytes();
            for (i, _) in normal.match_indices('%') {
                let hex = bytes.get(i + 1..i + 3).expect("a whole escape");
                let text = std::str::from_utf8(hex).unwrap();
                assert_eq!(text, text.to_ascii_uppercase(), "{path:?} → {normal:?}");
                let byte = u8::from_str_radix(text, 16).expect("hex digits");
                let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
                assert!(!unreserved, "{path:?} → {normal:?} keeps %{text}");
            }
        }
    }
    // Reject vs Forward for ambiguous paths: the strict one only refuses more.
    for (strict, lenient) in [(0, 1), (2, 3)] {
        if let Some(s) = &results[strict] {
            assert_eq!(results[lenient].as_ref(), Some(s), "{path:?}");
        }
    }
    // Keeping encoded slashes accepts everything rejecting them accepts, the same way.
    for (reject, keep) in [(0, 2), (1, 3)] {
        if let Some(s) = &results[reject] {
            assert_eq!(results[keep].as_ref(), Some(s), "{path:?}");
        }
    }
});
