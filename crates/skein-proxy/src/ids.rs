//! Request IDs (`skein-request-id`): kept from the caller when usable, made by the first
//! proxy otherwise, sent to the application and returned on the response, so that a
//! request can be found in every proxy's logs and records (and, with tracing, its spans).
//!
//! A new ID is 64 bits in 16 lowercase hex digits, from a per-process random seed
//! (`RandomState`) run through splitmix with a counter: unique across proxies and calls
//! without a system call per request (two IDs among a billion requests collide with a
//! chance of about 3 %; IDs are looked up among recent requests, not forever). Not
//! secret: an ID names a request, it proves nothing. Short, because every request
//! carries it through HPACK's Huffman coder.

use http::{HeaderMap, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The longest caller-sent ID kept.
pub const MAX_LEN: usize = 64;

/// The ID `headers` carry in `skein-request-id`, if usable: 1 to [`MAX_LEN`] of
/// `A-Z a-z 0-9 . _ : -` (safe to log and to print). Anything else is replaced.
pub fn request_id_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let v = headers.get(crate::http::headers::REQUEST_ID)?;
    let ok = (1..=MAX_LEN).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| v.clone())
}

/// The request's ID: the caller's if usable (then `true`), a new one otherwise. Marked
/// sensitive, so that HPACK never enters it in the connection's dynamic table: every
/// value is new, and indexing them would only evict useful entries (and cost a search of
/// the table per request).
pub fn request_id(headers: &HeaderMap) -> (HeaderValue, bool) {
    match request_id_of(headers) {
        Some(mut id) => {
            id.set_sensitive(true);
            (id, true)
        }
        None => (new_request_id(), false),
    }
}

/// A new ID: 16 lowercase hex digits, marked sensitive (see [`request_id`]).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = random_u128() as u64;
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    let mut id = HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"));
    id.set_sensitive(true);
    id
}

/// 128 random bits, different in every process and every call.
pub fn random_u128() -> u128 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = mix(seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let lo = mix(hi ^ seed.rotate_left(32));
    (u128::from(hi) << 64) | u128::from(lo)
}

/// A 128-bit value both proxies of a hop derive from the same inputs (FNV-1a over the
/// parts, each ended by a 0xff byte, then splitmix's finalizer): how an untraced request's
/// spans, should the mesh fail it, find each other without a header on the wire.
pub fn derive(parts: &[&[u8]]) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let hi = mix(h);
    let lo = mix(hi ^ 0x9e37_79b9_7f4a_7c15);
    ((u128::from(hi) << 64) | u128::from(lo)).max(1)
}

/// splitmix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::REQUEST_ID;

    fn with(id: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        h
    }

    #[test]
    fn a_usable_caller_id_is_kept_and_anything_else_replaced() {
        let kept = request_id(&with(b"order-42:retry.1_a")).0;
        assert_eq!(kept, "order-42:retry.1_a");
        for bad in [&b"has space"[..], b"semi;colon", b"quote\"", &[b'a'; 65]] {
            let (id, sent) = request_id(&with(bad));
            assert!(!sent);
            assert_ne!(id.as_bytes(), bad, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(id.len(), 16);
        }
        assert_eq!(
            request_id(&with(&[b'a'; 64])),
            (HeaderValue::from_bytes(&[b'a'; 64]).unwrap(), true)
        );
        assert_eq!(request_id(&HeaderMap::new()).0.len(), 16);
    }

    #[test]
    fn ids_are_never_indexed_by_hpack() {
        assert!(request_id(&HeaderMap::new()).0.is_sensitive());
        assert!(request_id(&with(b"order-1")).0.is_sensitive());
        assert!(new_request_id().is_sensitive());
    }

    #[test]
    fn new_ids_are_16_hex_digits_and_do_not_repeat() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            assert!(id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
            assert_eq!(id.len(), 16);
        }
    }
}
