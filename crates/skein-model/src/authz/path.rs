//! Request path normalisation before authorization, so that a rule for `/admin` cannot
//! be slipped past with `/menu/../admin`, `/%2e%2e/admin` or `//admin`.
//!
//! The steps follow RFC 3986: percent-encoded unreserved characters are decoded (and other
//! escapes upper-cased), `.` and `..` segments are resolved (never above the root), and
//! runs of `/` are merged. Encoded `/` (`%2F`) and `\` (`%5C`) are refused unless the
//! mesh keeps them (`Mesh.spec.encodedSlashes: keep`), because applications disagree on
//! whether they separate segments. A raw `\` is refused too. The query is not touched.
//!
//! The normalised path is what the application receives. Some applications read it
//! differently from this proxy, so that a path authorized under `/public/*` reaches
//! something else; unless the mesh forwards them (`Mesh.spec.ambiguousPaths: forward`),
//! such paths are refused after normalisation ([`AmbiguousPaths`] has the exact rules):
//! `;` parameters that hide a dot or empty segment (`/public/..;/private` is
//! `/private` to servers that strip parameters), escapes of `%` (`/public/%252e%252e/x`
//! is `/x` to servers that decode twice) and escapes that are not UTF-8 (`%C0%AE` is an
//! overlong `.` to lenient decoders).

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Keep them encoded: they are part of a segment, not separators.
    Keep,
}

/// What to do with a path that applications may resolve differently from the proxy.
///
/// A normalised path is ambiguous when any of these holds:
/// - **a `;` parameter hides a segment**: removing every parameter (from a `;` or `%3B`
///   to the end of its segment) would leave a path that is no longer normalised, i.e. a
///   segment whose name before the parameter is `.` or `..`, or is empty and not the
///   last (`/a/..;/b`, `/a/.;x/b`, `/a/;x/b`). Parameters on ordinary segments
///   (`/menu;v=2/1`, `/;jsessionid=1`) are not ambiguous;
/// - **double encoding**: an escaped `%` followed by two hex digits (`%252e`, `%252F`,
///   `%255c`, `%2561`, any case), which a server that decodes twice turns into a `.`, a
///   separator or another character;
/// - **escapes that are not UTF-8**: the percent-escapes decode to bytes that are not
///   valid UTF-8, such as overlong encodings (`%C0%AE`, `%E0%80%AE` for `.`) that
///   lenient decoders accept.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AmbiguousPaths {
    /// Refuse the request with 400 (the default).
    #[default]
    Reject,
    /// Authorize the normalised path as written and forward it.
    Forward,
}

impl AmbiguousPaths {
    /// Whether this is the default, [`AmbiguousPaths::Reject`].
    pub fn is_reject(&self) -> bool {
        *self == AmbiguousPaths::Reject
    }
}

/// The mesh's path settings, as [`normalize`] applies them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathRules {
    /// `%2F` and `%5C`.
    pub encoded_slashes: EncodedSlashes,
    /// Paths applications may read differently.
    pub ambiguous_paths: AmbiguousPaths,
}

/// Why a path cannot be normalised; the request is refused with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error(
        "the request path {0:?} does not start with '/'; send an absolute path such as /menu/1"
    )]
    NotAbsolute(String),
    /// `%` not followed by two hex digits.
    #[error("the request path has an invalid percent-escape at byte {0}; '%' must be followed by two hex digits")]
    BadEscape(usize),
    /// `%2F` or `%5C` while the mesh rejects them.
    #[error("the request path contains an encoded '/' or '\\' ({0}), which this mesh refuses (Mesh spec.encodedSlashes: reject); send the path unencoded, or set encodedSlashes: keep")]
    EncodedSlash(String),
    /// A raw backslash.
    #[error("the request path contains '\\', which is not allowed in a URL path; use '/'")]
    Backslash,
    /// A `;` parameter on a `.`, `..` or empty segment.
    #[error("the request path segment {0:?} hides a '.', '..' or empty segment behind a ';' parameter, which servers that strip parameters resolve differently; this mesh refuses it (Mesh spec.ambiguousPaths: reject). Send the path without that parameter; parameters on named segments (/menu;v=2) are accepted")]
    HiddenSegment(String),
    /// An escaped `%` that forms another escape.
    #[error("the request path contains {0}, an encoded '%' followed by hex digits, which servers that decode twice read as another character; this mesh refuses it (Mesh spec.ambiguousPaths: reject). Percent-encode the path exactly once")]
    DoubleEncoded(String),
    /// Escapes that do not decode to UTF-8 (e.g. overlong encodings).
    #[error("the request path's percent-escapes {0} do not decode to valid UTF-8 (overlong forms such as %C0%AE hide characters like '.'); this mesh refuses it (Mesh spec.ambiguousPaths: reject). Encode the path's characters as UTF-8")]
    NotUtf8(String),
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes unreserved escapes, upper-cases the others, applies the slash policy.
fn decode(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !bytes.contains(&b'\\') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape(i));
                };
                let decoded = h << 4 | l;
                if unreserved(decoded) {
                    out.push(decoded as char);
                } else if matches!(decoded, b'/' | b'\\') && slashes == EncodedSlashes::Reject {
                    return Err(PathError::EncodedSlash(path[i..i + 3].to_string()));
                } else {
                    out.push('%');
                    out.push_str(&format!("{decoded:02X}"));
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next special byte at once (keeps UTF-8 intact).
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\'))
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// The normalised form of `path` (no query) under the mesh's `rules`, or why it is
/// refused.
pub fn normalize(path: &str, rules: PathRules) -> Result<Cow<'_, str>, PathError> {
    let normal = resolve(path, rules.encoded_slashes)?;
    if rules.ambiguous_paths == AmbiguousPaths::Reject {
        refuse_ambiguous(&normal)?;
    }
    Ok(normal)
}

/// Decodes and resolves dot segments and duplicate slashes.
fn resolve(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute(path.to_string()));
    }
    let decoded = decode(path, slashes)?;
    let clean = !decoded.contains("//")
        && !decoded.contains("/./")
        && !decoded.contains("/../")
        && !decoded.ends_with("/.")
        && !decoded.ends_with("/..");
    if clean {
        return Ok(decoded);
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// Refuses a normalised path that applications may read differently (see
/// [`AmbiguousPaths`]). Checked on the normalised path because that is what the
/// application receives.
fn refuse_ambiguous(path: &str) -> Result<(), PathError> {
    if !path.contains(['%', ';']) {
        return Ok(());
    }
    refuse_hidden_segments(path)?;
    refuse_double_encoding(path)?;
    refuse_non_utf8_escapes(path)
}

/// Removing the parameters must leave a normalised path: no `.` or `..` name, and no
/// empty name except in the last segment (`/;jsessionid=1` is `/`).
fn refuse_hidden_segments(path: &str) -> Result<(), PathError> {
    let last = path[1..].split('/').count() - 1;
    for (i, segment) in path[1..].split('/').enumerate() {
        let Some(at) = parameter_start(segment) else {
            continue;
        };
        let name = &segment[..at];
        if name == "." || name == ".." || (name.is_empty() && i != last) {
            return Err(PathError::HiddenSegment(segment.to_string()));
        }
    }
    Ok(())
}

/// Where a segment's parameters start: its first `;` or `%3B` (servers that decode
/// before stripping see the escape as a `;`).
fn parameter_start(segment: &str) -> Option<usize> {
    let b = segment.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b';'
            || (b[i] == b'%'
                && b.get(i + 1) == Some(&b'3')
                && matches!(b.get(i + 2), Some(b'b' | b'B')))
    })
}

/// `%25` followed by two hex digits becomes an escape when decoded again.
fn refuse_double_encoding(path: &str) -> Result<(), PathError> {
    let found = path.as_bytes().windows(5).position(|w| {
        w[0] == b'%' && w[1] == b'2' && w[2] == b'5' && hex(w[3]).is_some() && hex(w[4]).is_some()
    });
    match found {
        // Five ASCII bytes: the slice is on character boundaries.
        Some(i) => Err(PathError::DoubleEncoded(path[i..i + 5].to_string())),
        None => Ok(()),
    }
}

/// Each run of consecutive escapes must decode to valid UTF-8. Raw characters are whole
/// UTF-8 characters already, so a character cannot straddle a run's edge.
fn refuse_non_utf8_escapes(path: &str) -> Result<(), PathError> {
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let mut run = Vec::new();
        while let Some(byte) = escape_at(b, i) {
            run.push(byte);
            i += 3;
        }
        if run.is_empty() {
            i += 1;
        } else if !run.is_ascii() && std::str::from_utf8(&run).is_err() {
            return Err(PathError::NotUtf8(path[start..i].to_string()));
        }
    }
    Ok(())
}

/// The byte a `%XX` escape at `i` stands for.
fn escape_at(b: &[u8], i: usize) -> Option<u8> {
    if *b.get(i)? != b'%' {
        return None;
    }
    Some(hex(*b.get(i + 1)?)? << 4 | hex(*b.get(i + 2)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// The default rules: both settings `reject`.
    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, PathRules::default()).map(Cow::into_owned)
    }

    fn keep() -> PathRules {
        PathRules {
            encoded_slashes: EncodedSlashes::Keep,
            ..PathRules::default()
        }
    }

    fn forward() -> PathRules {
        PathRules {
            ambiguous_paths: AmbiguousPaths::Forward,
            ..PathRules::default()
        }
    }

    #[test]
    fn clean_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/menu",
            "/menu/",
            "/menu/1",
            "/a.b/c~d_e-f",
            "/caf\u{e9}",
        ] {
            assert!(matches!(normalize(p, PathRules::default()), Ok(Cow::Borrowed(x)) if x == p));
        }
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_resolve() {
        for (raw, want) in [
            ("/menu/../admin", "/admin"),
            ("/menu/./1", "/menu/1"),
            ("//admin", "/admin"),
            ("/menu//1///", "/menu/1/"),
            ("/..", "/"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/../../..", "/"),
            ("/./", "/"),
            ("//", "/"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/.b", "/a/.b"),
        ] {
            assert_eq!(n(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn unreserved_escapes_decode_and_others_are_upper_cased() {
        for (raw, want) in [
            ("/%2e%2e/admin", "/admin"),
            ("/menu/%2E%2E/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/menu/%2e/1", "/menu/1"),
        ] {
            assert_eq!(n(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_are_refused_unless_kept() {
        for raw in ["/%2Fadmin", "/menu%2f..%2fadmin", "/a%5Cb", "/a%5cb"] {
            assert!(matches!(n(raw), Err(PathError::EncodedSlash(_))), "{raw}");
            let kept = normalize(raw, keep()).unwrap();
            assert!(
                kept.contains("%2F") || kept.contains("%5C"),
                "{raw} → {kept}"
            );
        }
        assert_eq!(
            normalize("/menu%2f..%2fadmin", keep()).unwrap(),
            "/menu%2F..%2Fadmin",
            "a kept %2F is not a separator, so `..` next to it is an ordinary segment"
        );
        let e = n("/%2Fadmin").unwrap_err().to_string();
        assert!(
            e.contains("%2F") && e.contains("encodedSlashes: keep"),
            "{e}"
        );
    }

    #[test]
    fn malformed_paths_are_refused_with_reasons() {
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape(2)));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape(2)));
        assert_eq!(n("menu"), Err(PathError::NotAbsolute("menu".into())));
        assert_eq!(n("*"), Err(PathError::NotAbsolute("*".into())));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in [
            "/menu/../admin",
            "//a//b/./c/..",
            "/%2e%2e/x%20y/",
            "/a/b/../../../c",
        ] {
            let once = n(raw).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn parameters_that_hide_dot_or_empty_segments_are_refused() {
        for (raw, segment) in [
            ("/public/..;/private", "..;"),
            ("/public/..;x=1/private", "..;x=1"),
            ("/public/.;/private", ".;"),
            ("/public/%2e%2e;/private", "..;"),
            ("/public/..%3b/private", "..%3B"),
            ("/public/..;", "..;"),
            ("/public/.;x", ".;x"),
            ("/public/;x/private", ";x"),
            ("/;x/admin", ";x"),
        ] {
            assert_eq!(
                n(raw),
                Err(PathError::HiddenSegment(segment.into())),
                "{raw}"
            );
            assert!(
                normalize(raw, forward()).is_ok(),
                "{raw} is forwarded when asked"
            );
        }
        let e = n("/public/..;/private").unwrap_err().to_string();
        assert!(
            e.contains("\"..;\"")
                && e.contains("ambiguousPaths: reject")
                && e.contains("/menu;v=2"),
            "says what was wrong and what is accepted: {e}"
        );
    }

    #[test]
    fn parameters_on_named_segments_pass() {
        for raw in [
            "/menu;v=2/1",
            "/menu/1;jsessionid=ab",
            "/;jsessionid=ab",
            "/menu/;x",
            "/a..;/b",
            "/a/.b;c/d",
        ] {
            assert_eq!(n(raw).unwrap(), raw, "{raw}");
        }
        // A hiding segment that normalisation removes never reaches the application.
        assert_eq!(n("/public/;x/../private").unwrap(), "/public/private");
    }

    #[test]
    fn double_encoding_is_refused_in_any_case() {
        for (raw, shown) in [
            ("/public/%252e%252e/private", "%252e"),
            ("/public/%252E%252E/private", "%252E"),
            ("/public%252fprivate", "%252f"),
            ("/public%252Fprivate", "%252F"),
            ("/public%255cprivate", "%255c"),
            ("/%2561dmin", "%2561"),
            ("/a%25%32%65", "%252e"),
            ("/a%25252e", "%2525"),
        ] {
            assert_eq!(n(raw), Err(PathError::DoubleEncoded(shown.into())), "{raw}");
            assert!(normalize(raw, forward()).is_ok(), "{raw}");
        }
        // A '%' that forms no second escape is plain data.
        for raw in ["/100%25", "/100%25off", "/a%25zz"] {
            assert!(n(raw).is_ok(), "{raw}");
        }
        let e = n("/%252e").unwrap_err().to_string();
        assert!(e.contains("%252e") && e.contains("exactly once"), "{e}");
    }

    #[test]
    fn escapes_must_decode_to_utf8() {
        for (raw, shown) in [
            ("/public/%c0%ae%c0%ae/private", "%C0%AE%C0%AE"),
            ("/%e0%80%ae", "%E0%80%AE"),
            ("/%f0%80%80%ae", "%F0%80%80%AE"),
            ("/caf%e9", "%E9"),
            ("/%ff", "%FF"),
            ("/%ed%a0%80", "%ED%A0%80"),
            ("/%c3", "%C3"),
        ] {
            assert_eq!(n(raw), Err(PathError::NotUtf8(shown.into())), "{raw}");
            assert!(normalize(raw, forward()).is_ok(), "{raw}");
        }
        for raw in [
            "/caf%C3%A9",
            "/%E2%82%AC",
            "/caf\u{e9}%20x",
            "/%F0%9F%A6%80",
        ] {
            assert!(n(raw).is_ok(), "{raw}");
        }
        let e = n("/%c0%ae").unwrap_err().to_string();
        assert!(e.contains("%C0%AE") && e.contains("UTF-8"), "{e}");
    }

    /// Path pieces that exercise every rule: dot segments, parameters, escapes of dots,
    /// slashes, `;` and `%`, overlong and valid multi-byte escapes.
    const PIECES: &[&str] = &[
        "a",
        "b",
        ".",
        "..",
        "",
        ";",
        ";x",
        "..;",
        ".;",
        "..;x",
        "a;b",
        "%2e",
        "%2E%2e",
        "%3b",
        "%3B",
        "%25",
        "%252e",
        "%252F",
        "%255c",
        "%2541",
        "%25zz",
        "%c0%ae",
        "%e0%80%ae",
        "%c3%a9",
        "%C3",
        "%ff",
        "%41",
        "é",
        "%2f",
        "%5C",
        "%20",
    ];

    fn arb_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..8)
            .prop_map(|pieces| format!("/{}", pieces.join("/")))
    }

    /// Every escape decoded once, as a server that decodes the path it receives does;
    /// bytes of an invalid escape are kept as they are.
    fn decode_all(path: &str) -> Vec<u8> {
        let b = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match escape_at(b, i) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// What a server that strips `;` parameters (also spelled `%3B`) does.
    fn strip_parameters(path: &str) -> String {
        path.split('/')
            .map(|s| &s[..parameter_start(s).unwrap_or(s.len())])
            .collect::<Vec<_>>()
            .join("/")
    }

    proptest! {
        #[test]
        fn rejecting_only_refuses_and_never_changes_the_result(p in arb_path()) {
            if let Ok(strict) = n(&p) {
                prop_assert_eq!(normalize(&p, forward()).map(Cow::into_owned), Ok(strict));
            }
        }

        #[test]
        fn an_accepted_path_reads_the_same_after_stripping_parameters(p in arb_path()) {
            if let Ok(normal) = n(&p) {
                let stripped = strip_parameters(&normal);
                prop_assert_eq!(
                    normalize(&stripped, forward()).map(Cow::into_owned),
                    Ok(stripped.clone()),
                    "{} → {} → {}", p, normal, stripped
                );
            }
        }

        #[test]
        fn an_accepted_path_reads_the_same_after_decoding_twice(p in arb_path()) {
            if let Ok(normal) = n(&p) {
                let once = decode_all(&normal);
                let text = String::from_utf8(once.clone());
                prop_assert!(text.is_ok(), "{} → {} does not decode to UTF-8", p, normal);
                let text = text.unwrap_or_default();
                prop_assert_eq!(decode_all(&text), once, "{} → {}: a second decoding changes it", p, normal);
                // Decoding creates no separator and no dot segment.
                prop_assert_eq!(text.split('/').count(), normal.split('/').count());
                prop_assert!(!text.split('/').any(|s| s == "." || s == ".."), "{} → {}", p, text);
            }
        }

        #[test]
        fn normalising_is_idempotent(p in arb_path()) {
            if let Ok(normal) = n(&p) {
                prop_assert_eq!(n(&normal), Ok(normal.clone()));
            }
        }
    }
}
