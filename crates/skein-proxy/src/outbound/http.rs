//! Outbound HTTP: each request from the application is routed to a destination service
//! and sent to a peer proxy as an HTTP/2 stream on the shared connection, carrying the
//! target port and the client's protocol so the peer can speak it to the application.
//! Upgrade requests (WebSocket) travel over a CONNECT tunnel as HTTP/1 instead.

use super::tcp;
use crate::destinations::Target;
use crate::error::ProxyError;
use crate::http::{boxed, headers, Body, Deadline, Watched};
use crate::metrics::{Direction, Proto};
use crate::server::Handler;
use crate::Ctx;
use ::http::header::{EXPECT, HOST};
use ::http::uri::{PathAndQuery, Uri};
use ::http::{HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

/// How requests on a connection find their destination.
#[derive(Debug, Clone)]
pub enum Route {
    /// All requests go to one service port (transparent and upstream listeners).
    To(Target),
    /// Each request names its destination in its authority (HTTP proxy mode).
    ByAuthority,
}

/// The per-request handler for one application connection.
pub fn handler(ctx: Arc<Ctx>, route: Route, proto: Proto) -> impl Handler {
    let route = Arc::new(route);
    hyper::service::service_fn(move |req| {
        let (ctx, route) = (ctx.clone(), route.clone());
        async move { Ok::<_, Infallible>(handle(&ctx, &route, proto, req).await) }
    })
}

async fn handle(ctx: &Ctx, route: &Route, proto: Proto, req: Request<Incoming>) -> Response<Body> {
    let mut resp = match forward(ctx, route, proto, req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            ctx.metrics
                .request(Direction::Outbound, proto, Some(status));
            if let Some(policy) = denied_by(resp.headers()) {
                // The peer's authorization refused it: counted here too, so the caller's
                // side shows denials without reading the server's metrics.
                ctx.metrics.error(Direction::Outbound, "denied");
                tracing::debug!(policy, "the peer proxy denied the request");
            }
            resp
        }
        Err(e) => {
            tracing::debug!(error = %e, "outbound request failed");
            ctx.metrics.error(Direction::Outbound, e.reason());
            ctx.metrics.request(Direction::Outbound, proto, None);
            e.to_response()
        }
    };
    if proto == Proto::Http1 {
        *resp.version_mut() = Version::HTTP_11;
    }
    resp
}

/// The deciding policy, when the response is a peer proxy's authorization denial.
fn denied_by(h: &http::HeaderMap) -> Option<&str> {
    if h.get(headers::ERROR)?.as_bytes() != b"denied" {
        return None;
    }
    h.get(headers::DENIED_BY)?.to_str().ok()
}

/// route → (tunnel | upgrade | stream to the peer).
async fn forward(
    ctx: &Ctx,
    route: &Route,
    proto: Proto,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let started = tokio::time::Instant::now();
    let target = match route {
        Route::To(t) => t.clone(),
        Route::ByAuthority => {
            let authority = authority_of(&req).ok_or(ProxyError::NoAuthority)?;
            ctx.destinations.load().resolve_authority(&authority)?
        }
    };
    if req.method() == Method::CONNECT {
        return tcp::connect_method(ctx, req, &target).await;
    }
    let (target, timeout) = apply_routes(ctx, target, &req)?;
    if proto == Proto::Http1 && headers::wants_upgrade(req.headers()) {
        // An upgraded connection lives as long as its parties want: no route timeout.
        return upgrade(ctx, req, &target).await;
    }
    let endpoint = target.endpoint()?;
    let (req, body_failure) = to_peer_request(req, &target, proto)?;
    let send = ctx.peers.send(&endpoint, req);
    let sent = match &timeout {
        None => send.await,
        // Dropping the send on expiry resets the stream to the peer, which drops the
        // application request.
        Some(t) => match tokio::time::timeout_at(started + t.after, send).await {
            Ok(sent) => sent,
            Err(_) => return Err(t.error(&target)),
        },
    };
    match sent {
        Ok(resp) => Ok(match timeout {
            None => resp.map(boxed),
            Some(t) => {
                let what: Arc<str> = format!("{} {:?}", t.field, t.after).into();
                resp.map(|b| boxed(Deadline::new(b, started + t.after, what)))
            }
        }),
        // The stream failed because the client's own body did (e.g. a bad chunk size).
        Err(_) if body_failure.get().is_some() => Err(ProxyError::RequestBody(
            body_failure.get().cloned().unwrap_or_default(),
        )),
        Err(e) => Err(e),
    }
}

/// A route rule's timeout, in force for one request.
struct RouteTimeout {
    after: std::time::Duration,
    field: &'static str,
    route: String,
    rule: usize,
}

impl RouteTimeout {
    fn error(&self, target: &Target) -> ProxyError {
        ProxyError::Timeout {
            service: target.service.spec.service.clone(),
            after: self.after,
            field: self.field,
            route: self.route.clone(),
            rule: self.rule,
        }
    }
}

/// Sends the request where the destination's HTTPRoutes say: the first matching rule's
/// backends, split by weight, under the rule's timeout. Without a matching rule, the
/// destination itself, with no timeout.
fn apply_routes<B>(
    ctx: &Ctx,
    target: Target,
    req: &Request<B>,
) -> Result<(Target, Option<RouteTimeout>), ProxyError> {
    let spec = &target.service.spec;
    let Some(selected) = crate::route::select(&spec.routes, target.port.port, req) else {
        return Ok((target, None));
    };
    let rule = selected.rule;
    let timeout = rule
        .timeouts
        .as_ref()
        .and_then(|t| t.effective())
        .map(|(after, field)| RouteTimeout {
            after,
            field,
            route: selected.route.name.clone(),
            rule: selected.index,
        });
    let backend = crate::route::pick(rule, crate::route::random()).ok_or_else(|| {
        ProxyError::NoEndpoints(format!("{} (every backend has weight 0)", spec.service))
    })?;
    let namespace = backend.namespace.as_deref().unwrap_or(&spec.namespace);
    let port = backend.port.unwrap_or(target.port.port);
    let backend = ctx
        .destinations
        .load()
        .resolve(&format!("{}.{namespace}", backend.name), port)?;
    Ok((backend, timeout))
}

/// The authority a request names: its URI's (absolute form, HTTP/2) or its Host header.
fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| req.headers().get(HOST)?.to_str().ok().map(str::to_string))
}

/// Rewrites an application request into the HTTP/2 stream sent to the peer proxy; the
/// returned cell records a failure of the client's body.
fn to_peer_request(
    req: Request<Incoming>,
    target: &Target,
    proto: Proto,
) -> Result<(Request<Body>, Arc<OnceLock<String>>), ProxyError> {
    let authority = authority_of(&req)
        .unwrap_or_else(|| format!("{}:{}", target.service.spec.service, target.port.port));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_internal(&mut parts.headers);
    parts.headers.remove(HOST);
    // This proxy already answered `100 Continue` (hyper does when the body is first read).
    parts.headers.remove(EXPECT);
    parts
        .headers
        .insert(headers::DST_PORT, HeaderValue::from(target.port.port));
    let orig = if proto == Proto::Http2 { "h2" } else { "http1" };
    parts
        .headers
        .insert(headers::ORIG_PROTO, HeaderValue::from_static(orig));
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::NoAuthority)?;
    parts.version = Version::HTTP_2;
    let (body, failure) = Watched::new(body);
    Ok((Request::from_parts(parts, boxed(body)), failure))
}

/// Sends an HTTP/1 upgrade request through an HTTP/1 tunnel to the peer, then splices.
async fn upgrade(
    ctx: &Ctx,
    mut req: Request<Incoming>,
    target: &Target,
) -> Result<Response<Body>, ProxyError> {
    let endpoint = target.endpoint()?;
    let tunnel = tcp::open_tunnel(ctx, &endpoint, target, "http1").await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(tunnel)
        .await
        .map_err(|source| ProxyError::Upstream {
            addr: endpoint.addr,
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade tunnel connection ended");
        }
    });
    if let Some(authority) = authority_of(&req) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            req.headers_mut().insert(HOST, v);
        }
    }
    headers::strip_internal(req.headers_mut());
    let origin_form = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(origin_form);
    crate::http::upgrade::forward(sender, endpoint.addr, req, &ctx.drain).await
}
