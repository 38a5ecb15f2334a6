//! Header rules for proxied HTTP: hop-by-hop headers are removed (RFC 9110 §7.6.1), and
//! Skein's own `skein-*` headers carry routing facts between proxies; callers cannot set
//! them, because the outbound side strips whatever an application sent. The names are
//! `HeaderName` constants, so the per-request path never parses or hashes them from text.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The application port the request is for (set by the outbound proxy).
pub const DST_PORT: HeaderName = HeaderName::from_static("skein-dst-port");
/// How the client spoke to its proxy: `http1` or `h2`; the inbound side speaks the same to
/// the application.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("skein-orig-proto");
/// On a CONNECT stream between proxies: what the tunnel carries, `tcp` or `http1`.
pub const TUNNEL: HeaderName = HeaderName::from_static("skein-tunnel");
/// The request's ID ([`crate::ids`]): kept from the caller if usable, made by the first
/// proxy otherwise; sent to the application and returned on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("skein-request-id");
/// Set on responses the proxy produced itself, naming the reason.
pub const ERROR: HeaderName = HeaderName::from_static("skein-error");
/// On a denial: the policy that decided (`namespace/name`, `default` or `not-allowed`).
pub const DENIED_BY: HeaderName = HeaderName::from_static("skein-denied-by");
/// On an `overloaded` refusal: the BackendPolicy and the limit that decided
/// (`default/api connectionPool.maxConcurrentRequests`).
pub const LIMITED_BY: HeaderName = HeaderName::from_static("skein-limited-by");
/// To the application: the caller's verified SPIFFE ID (absent for plaintext callers).
/// Set only by the inbound proxy, after every `skein-*` header the request carried is
/// removed, so an application can trust it.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("skein-client-id");
/// Envoy's client-certificate header; removed before the application, since a caller
/// could set it and an application might believe it.
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Headers that belong to one connection and never travel past a proxy. `te` is handled
/// separately because `te: trailers` is allowed in HTTP/2.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers, including any named in `Connection`, and `TE` other than
/// `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of them: one pass over the names (comparisons of
    // standard names are of an enum), and no lookup at all.
    let any = headers
        .keys()
        .any(|n| n == header::TE || HOP_BY_HOP.contains(n));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let keeps_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if keeps_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `name` is a header only a proxy may set: `skein-*` (routing facts, the
/// caller's identity) or `x-forwarded-client-cert`, in any case and also spelled with `_`,
/// which CGI-style servers read as the same variable. Allocation-free: it runs on every
/// header of every request.
pub fn is_internal(name: &str) -> bool {
    fn same(a: &[u8], b: &[u8]) -> bool {
        let norm = |c: u8| {
            if c == b'_' {
                b'-'
            } else {
                c.to_ascii_lowercase()
            }
        };
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(*x) == norm(*y))
    }
    let n = name.trim().as_bytes();
    n.get(..6).is_some_and(|p| same(p, b"skein-"))
        || same(n, FORWARDED_CLIENT_CERT.as_str().as_bytes())
}

/// Removes every header [`is_internal`] names, so that an application or a caller cannot
/// forge routing facts or an identity.
pub fn strip_internal(headers: &mut HeaderMap) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_internal(name.as_str()))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
}

/// True when an HTTP/1 request asks to switch protocols (e.g. WebSocket). An upgrade
/// offering `h2c` does not count: the `Upgrade` header is dropped with the other
/// hop-by-hop headers and the request proxied as plain HTTP/1, because an application
/// that switched to HTTP/2 would take later requests on that connection past the
/// proxy's per-request authorization and metrics.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut tokens = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    let offers_upgrade = tokens.peek().is_some();
    let offers_h2c = tokens.any(|t| t.eq_ignore_ascii_case(b"h2c"));
    offers_upgrade
        && !offers_h2c
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Why a request naming userinfo in its authority (`http://admin@web/`, `Host:
/// admin@web`) is refused, or `None`. HTTP forbids it there (RFC 9110 §4.2.4; RFC 9113
/// §8.3.1 for `:authority`), and it is ambiguous: the proxy routes and authorizes by the
/// host part while an application may read the whole field.
pub fn userinfo<B>(req: &http::Request<B>) -> Option<&'static str> {
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Some("the request target's authority carries userinfo (user@host), which HTTP does not allow; send only host[:port], and credentials in the Authorization header");
    }
    if req
        .headers()
        .get_all(header::HOST)
        .iter()
        .any(|v| v.as_bytes().contains(&b'@'))
    {
        return Some("the Host header carries userinfo (user@host); send only host[:port], and credentials in the Authorization header");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed_and_others_left_untouched() {
        let names = [
            "connection",
            "proxy-authenticate",
            "proxy-authorization",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "te",
        ];
        assert!(HOP_BY_HOP.iter().all(|n| names.contains(&n.as_str())));
        for name in names {
            let mut h = map(&[("x-kept", "1"), (name, "x"), ("accept", "*/*")]);
            strip_hop_by_hop(&mut h);
            let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["x-kept", "accept"], "{name}");
        }
        // A header named in `Connection`, with no other hop-by-hop header present.
        let mut h = map(&[
            ("connection", "x-private"),
            ("x-private", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        let mut h = map(&[("x-kept", "1"), ("accept", "*/*"), ("host", "a")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn internal_headers_cannot_be_forged() {
        let mut h = map(&[("skein-dst-port", "22"), ("skein-x", "1"), ("x-ok", "1")]);
        strip_internal(&mut h);
        assert_eq!(h.len(), 1);
        for name in [
            "skein_client_id",
            "Skein-Client-Id",
            "x_forwarded_client_cert",
        ] {
            assert!(is_internal(name), "{name}");
        }
        for name in ["skein", "skeins-x", "x-forwarded-client", "x-forwarded-for"] {
            assert!(!is_internal(name), "{name}");
        }
    }

    #[test]
    fn detects_upgrade_requests() {
        assert!(wants_upgrade(&map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&map(&[("connection", "keep-alive")])));
        for offer in ["h2c", "H2C", "websocket, h2c"] {
            assert!(
                !wants_upgrade(&map(&[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", offer)
                ])),
                "{offer}: an h2c upgrade would carry later requests past authorization"
            );
        }
    }

    #[test]
    fn userinfo_in_an_authority_is_named() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = http::Request::get(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap()
        };
        let why = userinfo(&req("http://admin@web/menu", None)).unwrap();
        assert!(
            why.contains("request target") && why.contains("host[:port]"),
            "{why}"
        );
        assert!(userinfo(&req("http://admin:pw@web:80/", Some("web"))).is_some());
        let why = userinfo(&req("/menu", Some("admin@web"))).unwrap();
        assert!(why.contains("Host header"), "{why}");
        assert_eq!(
            userinfo(&req("http://web:80/a@b?x=@", Some("web:80"))),
            None
        );
        assert_eq!(
            userinfo(&req("/a@b", Some("web"))),
            None,
            "'@' in a path is fine"
        );
    }
}
