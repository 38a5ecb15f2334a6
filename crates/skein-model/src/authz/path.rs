//! Request path normalisation before authorization, so that a rule for `/admin` cannot
//! be slipped past with `/menu/../admin`, `/%2e%2e/admin` or `//admin`.
//!
//! The steps follow RFC 3986: percent-encoded unreserved characters are decoded (and other
//! escapes upper-cased), `.` and `..` segments are resolved (never above the root), and
//! runs of `/` are merged. Encoded `/` (`%2F`) and `\` (`%5C`) are refused unless the
//! mesh keeps them (`Mesh.spec.encodedSlashes: keep`), because applications disagree on
//! whether they separate segments. A raw `\` is refused too. The query is not touched.

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

/// The normalised form of `path` (no query), or why it is refused.
pub fn normalize(path: &str, slashes: EncodedSlashes) -> Result<Cow<'_, str>, PathError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, EncodedSlashes::Reject).map(Cow::into_owned)
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
            assert!(matches!(normalize(p, EncodedSlashes::Reject), Ok(Cow::Borrowed(x)) if x == p));
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
            let kept = normalize(raw, EncodedSlashes::Keep).unwrap();
            assert!(
                kept.contains("%2F") || kept.contains("%5C"),
                "{raw} → {kept}"
            );
        }
        assert_eq!(
            normalize("/menu%2f..%2fadmin", EncodedSlashes::Keep).unwrap(),
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
}
