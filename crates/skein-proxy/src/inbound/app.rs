//! Forwarding an HTTP request from a peer to the local application, in the protocol the
//! original client spoke (HTTP/1.1 on a pooled connection, or HTTP/2).

use super::Caller;
use crate::error::ProxyError;
use crate::http::{boxed, headers, Body};
use crate::Ctx;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;

/// Sends `req` to the application's `port` and returns its response with hop-by-hop
/// headers removed. The application learns the caller from `skein-client-id` only.
pub async fn forward(
    ctx: &Ctx,
    req: Request<Incoming>,
    port: u16,
    to_h2: bool,
    caller: &Caller,
) -> Result<Response<Body>, ProxyError> {
    let addr = SocketAddr::new(ctx.config().inbound.app_host, port);
    let (mut parts, body) = req.into_parts();
    identify(&mut parts.headers, caller);
    headers::strip_hop_by_hop(&mut parts.headers);
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
    let mut resp = resp.map(boxed);
    headers::strip_hop_by_hop(resp.headers_mut());
    // Only proxies set skein-* headers (e.g. skein-error); an application cannot.
    headers::strip_internal(resp.headers_mut());
    Ok(resp)
}

/// Removes every `skein-*` header and `x-forwarded-client-cert` a caller could have set,
/// then names the verified caller in `skein-client-id`.
pub fn identify(headers: &mut http::HeaderMap, caller: &Caller) {
    headers::strip_internal(headers);
    headers.remove(headers::FORWARDED_CLIENT_CERT);
    if let Caller::Mesh(id) = caller {
        headers.insert(headers::CLIENT_ID, id.clone());
    }
}
