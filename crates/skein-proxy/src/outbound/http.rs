//! Outbound HTTP: each request from the application is routed to a destination service
//! and sent to a peer proxy as an HTTP/2 stream on the shared connection, carrying the
//! target port and the client's protocol so the peer can speak it to the application.
//! Upgrade requests (WebSocket) travel over a CONNECT tunnel as HTTP/1 instead.

use super::tcp;
use crate::destinations::Target;
use crate::error::ProxyError;
use crate::http::{boxed, empty, full, headers, Body, Deadline, Watched};
use crate::metrics::{Direction, Proto};
use crate::retry::{self, Outcome};
use crate::server::Handler;
use crate::Ctx;
use ::http::header::{EXPECT, HOST};
use ::http::uri::{PathAndQuery, Uri};
use ::http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use skein_model::resource::{RouteRetry, RouteRule, TryDeadline};
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

/// refuse userinfo → route → (tunnel | upgrade | stream to the peer).
async fn forward(
    ctx: &Ctx,
    route: &Route,
    proto: Proto,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let started = tokio::time::Instant::now();
    // Before the authority is used to route: `admin@web` must not reach the app as Host.
    if let Some(why) = headers::userinfo(&req) {
        return Err(ProxyError::BadRequest(why));
    }
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
    let (target, plan) = apply_routes(ctx, target, &req)?;
    if proto == Proto::Http1 && headers::wants_upgrade(req.headers()) {
        // An upgraded connection lives as long as its parties want: no route timeout.
        return upgrade(ctx, req, &target).await;
    }
    let (req, body_failure) = to_peer_request(req, &target, proto)?;
    let plan = plan.as_ref();
    // Retried only if the request can be sent again: a small body of known length.
    let retry = plan.and_then(RoutePlan::retry).filter(|r| {
        r.attempts > 0
            && retry::replayable(
                http_body::Body::is_end_stream(req.body()),
                http_body::Body::size_hint(req.body()).exact(),
            )
    });
    let service = target.service.spec.service.as_str();
    let mut requests = match retry {
        None => Requests::Once(Some(req)),
        Some(_) => {
            let (parts, body) = req.into_parts();
            let held = match try_deadline(plan, started, started) {
                None => body.collect().await,
                Some((at, plan, d)) => tokio::time::timeout_at(at, body.collect())
                    .await
                    .map_err(|_| plan.error(service, &d))?,
            };
            let bytes = held
                .map_err(|e| ProxyError::RequestBody(e.to_string()))?
                .to_bytes();
            ctx.retry_budget.deposit(service, std::time::Instant::now());
            Requests::Replay(parts, bytes)
        }
    };
    let mut tries = 0;
    let mut tried: Option<crate::connect::Upstream> = None;
    loop {
        tries += 1;
        let deadline = try_deadline(plan, started, tokio::time::Instant::now());
        let endpoint = match &tried {
            None => target.endpoint()?,
            Some(failed) => target.endpoint_after(failed)?,
        };
        let req = requests.next();
        let send = ctx.peers.send(&endpoint, req);
        // Dropping the send on expiry resets the stream to the peer, which drops the
        // application request.
        let sent = match deadline {
            None => Ok(send.await),
            Some((at, plan, d)) => tokio::time::timeout_at(at, send)
                .await
                .map_err(|_| plan.error(service, &d)),
        };
        if let Some(retry) = retry {
            let outcome = match &sent {
                Ok(Ok(resp)) => Outcome::Status(resp.status().as_u16()),
                Err(_) => Outcome::TryTimedOut,
                Ok(Err(e)) if e.retryable() => Outcome::NotSent,
                Ok(Err(_)) => Outcome::Failed,
            };
            let resume = tokio::time::Instant::now() + retry.backoff;
            let in_time = try_deadline(plan, started, resume).is_none_or(|(at, _, _)| at > resume);
            if retry::should_retry(retry, tries, outcome) && in_time {
                if ctx
                    .retry_budget
                    .withdraw(service, std::time::Instant::now())
                {
                    ctx.metrics.retry("sent");
                    tracing::debug!(service, tries, ?outcome, "retrying");
                    drop(sent);
                    tried = Some(endpoint);
                    tokio::time::sleep_until(resume).await;
                    continue;
                }
                ctx.metrics.retry("budget_exhausted");
            }
        }
        return match sent {
            Err(timed_out) => Err(timed_out),
            Ok(Ok(resp)) => Ok(match deadline {
                None => resp.map(boxed),
                Some((at, _, d)) => {
                    let what: Arc<str> = format!("{} {:?}", d.field, d.after).into();
                    resp.map(|b| boxed(Deadline::new(b, at, what)))
                }
            }),
            // The stream failed because the client's own body did (e.g. a bad chunk size).
            Ok(Err(_)) if body_failure.get().is_some() => Err(ProxyError::RequestBody(
                body_failure.get().cloned().unwrap_or_default(),
            )),
            Ok(Err(e)) => Err(e),
        };
    }
}

/// The request to send on each try: the client's, streamed once, or a held copy.
enum Requests {
    Once(Option<Request<Body>>),
    Replay(::http::request::Parts, bytes::Bytes),
}

impl Requests {
    fn next(&mut self) -> Request<Body> {
        match self {
            // Only one try is made without a held copy.
            Requests::Once(req) => req.take().unwrap_or_else(|| Request::new(empty())),
            Requests::Replay(parts, body) => {
                let mut req = Request::new(full(body.clone()));
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                *req.headers_mut() = parts.headers.clone();
                req
            }
        }
    }
}

/// The route rule that matched a request, for what it asks besides where the request
/// goes (timeouts, retries). Held through the destination's `Arc`, so that nothing of
/// the rule is copied per request.
struct RoutePlan {
    parent: Arc<crate::destinations::Service>,
    /// Index of the HTTPRoute among the parent's routes, and of the rule in it.
    route: usize,
    rule: usize,
}

impl RoutePlan {
    fn rule(&self) -> &RouteRule {
        &self.parent.spec.routes[self.route].rules[self.rule]
    }

    fn retry(&self) -> Option<&RouteRetry> {
        self.rule().retry.as_ref()
    }

    fn error(&self, service: &str, d: &TryDeadline) -> ProxyError {
        ProxyError::Timeout {
            service: service.to_string(),
            after: d.after,
            field: d.field,
            route: self.parent.spec.routes[self.route].name.clone(),
            rule: self.rule,
        }
    }
}

/// When a try starting at `now` must end, by the plan's timeouts, if it has any.
fn try_deadline(
    plan: Option<&RoutePlan>,
    started: tokio::time::Instant,
    now: tokio::time::Instant,
) -> Option<(tokio::time::Instant, &RoutePlan, TryDeadline)> {
    let plan = plan?;
    let into = now.saturating_duration_since(started);
    let d = plan.rule().timeouts.as_ref()?.try_deadline(into)?;
    Some((started + d.at, plan, d))
}

/// Sends the request where the destination's HTTPRoutes say: the first matching rule's
/// backends, split by weight, with the rule's timeouts and retries. Without a matching
/// rule, the destination itself, with neither.
fn apply_routes<B>(
    ctx: &Ctx,
    target: Target,
    req: &Request<B>,
) -> Result<(Target, Option<RoutePlan>), ProxyError> {
    let spec = &target.service.spec;
    let Some(selected) = crate::route::select(&spec.routes, target.port.port, req) else {
        return Ok((target, None));
    };
    let rule = selected.rule;
    let plan = (rule.timeouts.is_some() || rule.retry.is_some()).then(|| RoutePlan {
        parent: target.service.clone(),
        route: selected.route_index,
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
    Ok((backend, plan))
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
