//! Forwarding an HTTP request from a peer to the local application, in the protocol the
//! original client spoke (HTTP/1.1 on a pooled connection, or HTTP/2).

use super::Caller;
use crate::error::ProxyError;
use crate::http::{boxed, headers, Body};
use crate::request::Record;
use crate::Ctx;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use skein_model::ProxyConfig;
use std::net::SocketAddr;

/// Sends `req` to the application's `port` and returns its response with hop-by-hop
/// headers removed. The application learns the caller from `skein-client-id` only.
pub async fn forward(
    ctx: &Ctx,
    config: &ProxyConfig,
    req: Request<Incoming>,
    port: u16,
    to_h2: bool,
    caller: &Caller,
    rec: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(config.inbound.app_host, port);
    rec.endpoint = Some(addr);
    rec.attempts = 1;
    let (mut parts, body) = req.into_parts();
    let (body, _) = crate::http::Watched::new(body, rec.body_counter());
    // Hop-by-hop first: a `Connection: skein-client-id` must not remove the header we add.
    headers::strip_hop_by_hop(&mut parts.headers);
    identify(&mut parts.headers, caller);
    if let Some(id) = &rec.request_id {
        parts.headers.insert(headers::REQUEST_ID, id.clone());
    }
    // The application's own spans are children of this proxy's.
    if let Some(t) = &rec.trace {
        t.inject(&mut parts.headers, None);
    }
    let authority = parts.uri.authority().cloned();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let resp = if to_h2 {
        let authority = authority
            .map(|a| a.to_string())
            .unwrap_or_else(|| addr.to_string());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadPeerRequest("invalid :authority"))?;
        parts.version = Version::HTTP_2;
        parts.headers.remove(HOST);
        ctx.app_h2
            .send(&addr.into(), Request::from_parts(parts, boxed(body)))
            .await?
    } else {
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
        if let Some(a) = authority {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
        ctx.app_h1
            .send(addr, Request::from_parts(parts, boxed(body)))
            .await?
    };
    let mut resp = resp.map(|body| boxed(http_body_util::BodyExt::map_err(body, app_body_error)));
    headers::strip_hop_by_hop(resp.headers_mut());
    // Only proxies set skein-* headers (e.g. skein-error); an application cannot.
    headers::strip_internal(resp.headers_mut());
    Ok(resp)
}

/// What a failure of the application's response body becomes on the caller's stream. The
/// HTTP/2 server resets the stream with the reason it finds in the error, and a reset with
/// `REFUSED_STREAM` tells the caller's proxy that nothing was processed, so that it sends
/// the request again elsewhere (RFC 9113 §8.7): only this proxy may say that, never the
/// application (whose response had begun). Its `REFUSED_STREAM` becomes `INTERNAL_ERROR`;
/// any other reason (`CANCEL`, gRPC's use of them) goes on as it was.
fn app_body_error<E>(e: E) -> crate::http::BoxError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if crate::error::h2_error(&e).and_then(h2::Error::reason) == Some(h2::Reason::REFUSED_STREAM) {
        return Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR));
    }
    Box::new(e)
}

/// Removes every header a caller could forge an identity with ([`headers::is_internal`],
/// also when named in `Connection`), then names the verified caller in `skein-client-id`.
pub fn identify(headers: &mut http::HeaderMap, caller: &Caller) {
    headers::strip_internal(headers);
    // An upgrade keeps its `Connection` header: drop any token naming those headers.
    let names_internal = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(headers::is_internal));
    if names_internal {
        let connection: Vec<String> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter(|t| !headers::is_internal(t))
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        headers.remove(http::header::CONNECTION);
        for v in connection.iter().filter(|v| !v.is_empty()) {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                headers.append(http::header::CONNECTION, v);
            }
        }
    }
    if let Caller::Mesh(id) = caller {
        headers.insert(headers::CLIENT_ID, id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::app_body_error;

    /// An error caused by another, as hyper wraps h2's.
    #[derive(Debug)]
    struct Wrapped(h2::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("body failed")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn reason(e: &crate::http::BoxError) -> Option<h2::Reason> {
        crate::error::h2_error(e.as_ref()).and_then(h2::Error::reason)
    }

    #[test]
    fn an_applications_refused_stream_never_reaches_the_caller_as_one() {
        let refused = || h2::Error::from(h2::Reason::REFUSED_STREAM);
        for e in [
            app_body_error(refused()),
            app_body_error(Wrapped(refused())),
        ] {
            assert_eq!(reason(&e), Some(h2::Reason::INTERNAL_ERROR));
        }
        // Other reasons go on as they were.
        let cancel = app_body_error(Wrapped(h2::Error::from(h2::Reason::CANCEL)));
        assert_eq!(reason(&cancel), Some(h2::Reason::CANCEL));
        let plain = app_body_error(std::io::Error::other("closed"));
        assert_eq!(reason(&plain), None);
    }

    use super::*;

    #[test]
    fn forged_identity_headers_go_and_the_verified_one_is_set() {
        let mut h = http::HeaderMap::new();
        for (n, v) in [
            ("skein-client-id", "spiffe://x/ns/a/sa/b"),
            ("skein_client_id", "spiffe://x/ns/a/sa/b"),
            ("x-forwarded-client-cert", "URI=spiffe://x"),
            ("x_forwarded_client_cert", "URI=spiffe://x"),
            ("connection", "upgrade, skein-client-id"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ] {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let id = http::HeaderValue::from_static("spiffe://skein.local/ns/default/sa/web");
        identify(&mut h, &Caller::Mesh(id.clone()));
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "connection", "skein-client-id", "upgrade"]
        );
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(
            h.get_all("skein-client-id").iter().collect::<Vec<_>>(),
            [&id]
        );
        identify(&mut h, &Caller::Unauthenticated);
        assert!(
            !h.contains_key("skein-client-id"),
            "plaintext callers get none"
        );
    }
}
