//! Outbound HTTP: each request from the application is routed to a destination service
//! and sent to a peer proxy as an HTTP/2 stream on the shared connection, carrying the
//! target port and the client's protocol so the peer can speak it to the application.
//! Upgrade requests (WebSocket) travel over a CONNECT tunnel as HTTP/1 instead.
//!
//! Each request reads the state in force once, is planned against it ([`super::plan`]),
//! and ends in [`request::finish`] with its record.

use super::plan::{self, authority_of, Addressed, Plan, RuleRef};
use super::tcp;
use crate::balance::{self, Picked};
use crate::destinations::Target;
use crate::error::ProxyError;
use crate::http::replay::Tee;
use crate::http::{boxed, empty, full, headers, Body, Deadline, Holding, Watched};
use crate::limit::{Admitted, Full};
use crate::metrics::{Direction, Proto};
use crate::overload::ConnectionSlot;
use crate::request::{self, Record};
use crate::retry::{self, Outcome};
use crate::server::Handler;
use crate::state::State;
use crate::Ctx;
use ::http::header::{EXPECT, HOST};
use ::http::uri::{PathAndQuery, Uri};
use ::http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use skein_model::resource::filter::RequestMirror;
use skein_model::resource::{RouteRetry, TryDeadline};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

/// What every request on one application connection shares: what it addresses, and the
/// connection's slot of `limits.maxConnections` (handed to an upgrade or tunnel, which
/// can outlive the connection's task).
struct Conn {
    addressed: Addressed,
    slot: ConnectionSlot,
}

/// The per-request handler for one application connection.
pub fn handler(
    ctx: Arc<Ctx>,
    addressed: Addressed,
    proto: Proto,
    slot: ConnectionSlot,
) -> impl Handler {
    let conn = Arc::new(Conn { addressed, slot });
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (ctx, conn) = (ctx.clone(), conn.clone());
        if req.method() == Method::CONNECT
            || (proto == Proto::Http1 && headers::wants_upgrade(req.headers()))
        {
            req.extensions_mut().insert(conn.slot.clone());
        }
        async move { Ok::<_, Infallible>(handle(&ctx, &conn.addressed, proto, req).await) }
    })
}

/// One request: reads the state in force once, forwards, and ends in [`request::finish`].
async fn handle(
    ctx: &Ctx,
    addressed: &Addressed,
    proto: Proto,
    req: Request<Incoming>,
) -> Response<Body> {
    let state = ctx.state();
    let grpc = crate::inbound::is_grpc(&req);
    // Peers are reached only over mutual TLS once the proxy has (or awaits) an identity.
    let mut rec = Record::new(
        Direction::Outbound,
        proto,
        grpc,
        ctx.own_account(&state),
        ctx.identity.required,
    );
    // A CONNECT tunnel is an edge, not a request: telemetry records it as a TCP connection.
    rec.recorded = state.config.telemetry.requests && req.method() != Method::CONNECT;
    rec.for_taps(ctx, &req);
    rec.request_id = Some(crate::ids::request_id(req.headers()).0);
    let tracing = &state.config.telemetry.tracing;
    if tracing.enabled && req.method() != Method::CONNECT {
        let mut t = crate::spans::Traced::new(&req, tracing.ratio());
        if let Some(id) = &rec.request_id {
            t.untraced_ids(id.as_bytes(), &rec.src);
        }
        rec.trace = Some(t);
    }
    // At the proxy's ceiling on requests: shed before anything is sent.
    let result = match ctx.overload.request(Direction::Outbound) {
        Some(_ticket) => forward(ctx, &state, addressed, proto, req, &mut rec).await,
        None => Err(shed_request(ctx, Direction::Outbound)),
    };
    let mut resp = request::finish(ctx, rec, result);
    if proto == Proto::Http1 {
        *resp.version_mut() = Version::HTTP_11;
    }
    resp
}

/// Whether what `req` addresses could be a mesh Service's name (`svc`, `svc.ns`,
/// `svc.ns.svc[.domain]`): only those are asked about, not every external host.
fn discoverable<B>(state: &State, addressed: &Addressed, req: &Request<B>) -> bool {
    let domain = state
        .config
        .dns
        .as_ref()
        .map_or(crate::destinations::DEFAULT_DOMAIN, |d| d.domain.as_str());
    let host = match addressed {
        Addressed::Name { service, .. } => service.to_ascii_lowercase(),
        Addressed::Addr(_) => return false,
        // `mesh_name` takes the one final dot itself: `web..` is no name.
        Addressed::Authority => match plan::authority_of(req) {
            Some(a) => host_part(&a).to_string(),
            None => return false,
        },
    };
    crate::discovery::mesh_form(&host, domain)
}

/// The service a request that could not be planned addressed, when it is one this proxy
/// holds (no route matched it, its backend is unresolved): what its telemetry reads
/// rather than `unknown`.
fn addressed_service<B>(
    destinations: &crate::destinations::Destinations,
    addressed: &Addressed,
    req: &Request<B>,
) -> Option<crate::telemetry::Named> {
    plan::target(destinations, addressed, req)
        .ok()
        .map(|t| t.service.label.clone())
}

/// The host of an authority, without its port.
fn host_part(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// The host of an authority as the control plane is asked about it: lowercase, without
/// port or its one final dot.
fn host_of(authority: &str) -> String {
    let host = host_part(authority);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Counts and logs a request shed at `limits.maxRequests` on side `d`; the error it is
/// answered with.
pub(crate) fn shed_request(ctx: &Ctx, d: Direction) -> ProxyError {
    let requests = crate::overload::Resource::Requests;
    ctx.shed(requests, d, d.as_str());
    ProxyError::ProxyOverloaded(ctx.overload.why(requests, d))
}

/// refuse userinfo → plan → (tunnel | upgrade | streams to the peer, with the rule's
/// timeouts and retries).
async fn forward(
    ctx: &Ctx,
    state: &State,
    addressed: &Addressed,
    proto: Proto,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<Body>, ProxyError> {
    let started = tokio::time::Instant::now();
    // Before the authority is used to route: `admin@web` must not reach the app as Host.
    if let Some(why) = headers::userinfo(&req) {
        return Err(ProxyError::BadRequest(why));
    }
    let plan = match plan::plan(&state.destinations, addressed, &req, crate::route::random()) {
        // A name this proxy does not hold: ask the control plane, then plan again.
        Err(ProxyError::UnknownService(name))
            if ctx.discovery.on_demand() && discoverable(state, addressed, &req) =>
        {
            let asked = match addressed {
                Addressed::Name { service, .. } => service.to_string(),
                _ => plan::authority_of(&req).map_or(name.clone(), |a| host_of(&a)),
            };
            let asked_result = ctx.discovery.ask(&asked).await;
            // Planned again whatever the answer: another request's answer may have
            // brought the destination meanwhile.
            let now = ctx.state();
            let again = plan::plan(&now.destinations, addressed, &req, crate::route::random());
            match (again, asked_result) {
                (Ok(p), _) => p,
                (Err(e), Ok(_)) => {
                    rec.dst = addressed_service(&now.destinations, addressed, &req);
                    return Err(e);
                }
                (Err(_), Err(why)) => {
                    return Err(ProxyError::Undiscovered {
                        name: asked,
                        why: why.to_string(),
                    })
                }
            }
        }
        planned => planned.inspect_err(|_| {
            rec.dst = addressed_service(&state.destinations, addressed, &req);
        })?,
    };
    rec.dst = Some(plan.target.service.label.clone());
    rec.backend = Some(plan.backend.service.label.name.clone());
    if let Some(rule) = &plan.rule {
        rec.route = Some((rule.route_label(), rule.index as u16));
    }
    if req.method() == Method::CONNECT {
        // Boxed, as is `upgrade` below: rare paths with large futures would otherwise make
        // every request's future (which hyper moves per request) twice the size.
        return Box::pin(tcp::connect_method(ctx, req, &plan.target)).await;
    }
    let Plan {
        backend,
        rule,
        target,
    } = plan;
    let rule = rule.as_ref();
    let mut req = req;
    if let Some(rule) = rule {
        // The rule's (and backend's) filters: a redirect is answered here; the others
        // change the request now and the response when it comes.
        if let Some(r) = rule.filters().find_map(|f| f.request_redirect.as_ref()) {
            return Ok(redirect(&req, r, rule.matched_prefix(), target.port.port));
        }
        if let Some(fault) = rule.filters().find_map(|f| f.fault.as_ref()) {
            crate::filter::inject(fault, crate::route::random(), crate::route::random()).await?;
        }
        apply_request_filters(&mut req, rule)?;
    }
    let policy = backend.policy();
    if proto == Proto::Http1 && headers::wants_upgrade(req.headers()) {
        // An upgraded connection lives as long as its parties want: no route timeout,
        // and it counts against the connection limit, not the request limit.
        let held = policy.connections.try_admit().map_err(|_| {
            let max = policy.spec.connection_pool.max_connections;
            backend.overloaded("connectionPool.maxConnections", max)
        })?;
        return Box::pin(upgrade(ctx, req, &backend, rec, held)).await;
    }
    // Admitted before anything is held for the request; waits only as long as the
    // policy lets requests wait, and never past the route's timeout.
    let admit = policy.requests.admit();
    let admitted = match try_deadline(rule, started, started) {
        None => admit.await,
        Some((at, rule, d)) => tokio::time::timeout_at(at, admit)
            .await
            .map_err(|_| rule.timeout(&d))?,
    }
    .map_err(|full| match full {
        Full::Max(max) => backend.overloaded("connectionPool.maxConcurrentRequests", max),
        Full::Waiting(max) => backend.overloaded("connectionPool.maxPendingRequests", max),
    })?;
    let (req, body_failure) = to_peer_request(req, &backend, proto, rec)?;
    // `_held`: the share of limits.maxBufferedBytes the held copy takes, until the tries end.
    let (mut requests, retry, _held) = prepare(ctx, state, &backend, rule, req, started).await?;
    let (resp, picked, deadline) = tries(ctx, &backend, rule, retry, &mut requests, started, rec)
        .await
        .map_err(|e| match body_failure.get() {
            // The stream failed because the client's own body did (e.g. a bad chunk size).
            Some(why) if matches!(e, ProxyError::Upstream { .. }) => {
                ProxyError::RequestBody(why.clone())
            }
            _ => e,
        })?;
    let mut resp = resp;
    if let Some(rule) = rule {
        for m in rule
            .filters()
            .filter_map(|f| f.response_header_modifier.as_ref())
        {
            crate::filter::modify_headers(resp.headers_mut(), m);
        }
    }
    // The request counts as in flight (to the limit and to its endpoint's load) until its
    // response ends.
    let held = (admitted, picked);
    Ok(match deadline {
        None => resp.map(|b| boxed(Holding::new(b, held))),
        Some((at, _, d)) => {
            let what: Arc<str> = format!("{} {:?}", d.field, d.after).into();
            resp.map(|b| boxed(Holding::new(Deadline::new(b, at, what), held)))
        }
    })
}

/// How each try gets the request: a copy held in memory when it is mirrored (a small
/// body of known length), a bounded tee when its rule retries ([`Tee`]: the first try
/// streams), its head alone when it has no body, otherwise streamed once (and handed back
/// by a try that never sent it); the mirror's copy is sent here. Returns the retry in
/// force: the rule's, [`retry::UNSENT_ONLY`] when it sets none, or none when it sets
/// `attempts: 0`; and the share of `limits.maxBufferedBytes` a held body takes (at that
/// ceiling the request is streamed once instead, without retry or mirror).
async fn prepare<'r>(
    ctx: &Ctx,
    state: &State,
    backend: &Target,
    rule: Option<&'r RuleRef>,
    req: Request<Body>,
    started: tokio::time::Instant,
) -> Result<
    (
        Requests,
        Option<&'r RouteRetry>,
        Option<crate::overload::Slot>,
    ),
    ProxyError,
> {
    let (retry, configured) = match rule.and_then(RuleRef::retry) {
        Some(r) if r.attempts == 0 => (None, false),
        Some(r) => (Some(r), true),
        None => (Some(&retry::UNSENT_ONLY), false),
    };
    // Each mirror of the rule (and the picked backendRef) copies its own share.
    let mut mirrors: Vec<&RequestMirror> = rule
        .into_iter()
        .flat_map(|r| r.filters().filter_map(|f| f.request_mirror.as_ref()))
        .filter(|m| {
            if m.backend_ref.refused.is_some() {
                ctx.metrics.mirror("not_permitted");
                return false;
            }
            crate::route::random() % 1_000_000 < u64::from(m.per_million())
        })
        .collect();
    if !mirrors.is_empty()
        && !retry::replayable(
            http_body::Body::is_end_stream(req.body()),
            http_body::Body::size_hint(req.body()).exact(),
        )
    {
        for _ in &mirrors {
            ctx.metrics.mirror("skipped_streamed_body");
        }
        mirrors.clear();
    }
    if !configured && mirrors.is_empty() {
        // The common case: a request without a body is sent again from its head, one
        // with a body streamed once (a try that never sent it hands it back).
        // (CONNECT never comes here: `forward` tunnels it.)
        let bodiless = retry.is_some() && http_body::Body::is_end_stream(req.body());
        let requests = if bodiless {
            Requests::Held(req.into_parts().0, bytes::Bytes::new())
        } else {
            Requests::Once(Some(req), "body_too_large")
        };
        return Ok((requests, retry, None));
    }
    // What is held counts against limits.maxBufferedBytes: a mirrored body (of known
    // length, at most 64 KiB) whole, a tee up to what it may keep.
    let exact = http_body::Body::size_hint(req.body()).exact();
    let want = match exact {
        Some(n) if !mirrors.is_empty() || n < retry::MAX_REPLAY_BYTES => n,
        _ => retry::MAX_REPLAY_BYTES,
    };
    let Some(held) = ctx
        .overload
        .buffer(usize::try_from(want).unwrap_or(usize::MAX))
    else {
        // At the ceiling: streamed once, so no retry of this body and no mirror.
        ctx.shed(
            crate::overload::Resource::Buffers,
            Direction::Outbound,
            "outbound",
        );
        for _ in &mirrors {
            ctx.metrics.mirror("dropped");
        }
        return Ok((Requests::Once(Some(req), "buffers_shed"), retry, None));
    };
    let (parts, body) = req.into_parts();
    let mut requests = if !mirrors.is_empty() {
        let held = match try_deadline(rule, started, started) {
            None => body.collect().await,
            Some((at, rule, d)) => tokio::time::timeout_at(at, body.collect())
                .await
                .map_err(|_| rule.timeout(&d))?,
        };
        let bytes = held
            .map_err(|e| ProxyError::RequestBody(e.to_string()))?
            .to_bytes();
        Requests::Held(parts, bytes)
    } else {
        Requests::Tee(parts, Tee::new(body, retry::MAX_REPLAY_BYTES as usize))
    };
    if configured {
        let policy = backend.policy();
        let budget = &policy.spec.retry_budget;
        ctx.retry_budget
            .deposit(&backend.service.key, budget, std::time::Instant::now());
    }
    for m in mirrors {
        super::mirror::send(ctx, state, backend, m, requests.next(), rule);
    }
    Ok((requests, retry, Some(held)))
}

/// The deadline a try runs under: when, the rule that set it, and which timeout it is.
type TryDeadlineAt<'r> = Option<(tokio::time::Instant, &'r RuleRef, TryDeadline)>;

/// The tries of one request: pick an endpoint (another than the last try's, if any),
/// send under the try's deadline, tell the balancer how it went, and again while the
/// rule's `retry` and the service's budget allow. Returns the answer, the endpoint that
/// gave it, and the deadline its body must end by.
async fn tries<'r>(
    ctx: &Ctx,
    backend: &Target,
    rule: Option<&'r RuleRef>,
    retry: Option<&RouteRetry>,
    requests: &mut Requests,
    started: tokio::time::Instant,
    rec: &mut Record,
) -> Result<(Response<Incoming>, Picked, TryDeadlineAt<'r>), ProxyError> {
    let policy = backend.policy();
    let service = backend.service.spec.service.as_str();
    let budget = &policy.spec.retry_budget;
    let mut tried: Option<std::net::SocketAddr> = None;
    let configured = retry.is_some_and(|r| !std::ptr::eq(r, &retry::UNSENT_ONLY));
    if configured {
        rec.retry_attempts = retry.map(|r| r.attempts);
    }
    loop {
        rec.attempts += 1;
        let deadline = try_deadline(rule, started, tokio::time::Instant::now());
        let picked = backend.pick(tried)?;
        rec.endpoint = Some(picked.upstream.addr);
        let mut req = requests.next();
        // Whether a try that may have reached the application can go again.
        let repeatable = if configured {
            retry::idempotent(req.method())
        } else {
            retry::safe(req.method())
        };
        // Each try is a span of its own, the parent of the callee's.
        let try_span = rec.trace.as_ref().map(|t| {
            let id = crate::ids::random_u128() as u64 | 1;
            t.inject(req.headers_mut(), Some(id));
            id
        });
        let try_started = std::time::Instant::now();
        let send = ctx.peers.try_send(&picked.upstream, req);
        // Dropping the send on expiry resets the stream to the peer, which drops the
        // application request.
        let sent = match deadline {
            None => Ok(send.await),
            Some((at, rule, d)) => tokio::time::timeout_at(at, send)
                .await
                .map_err(|_| rule.timeout(&d)),
        };
        // A request that never left is handed back, for the next try.
        let (sent, unsent) = match sent {
            Ok(Err((e, back))) => {
                let unsent = back.is_some();
                if let Some(back) = back {
                    requests.give_back(back);
                }
                (Ok(Err(e)), unsent)
            }
            Ok(Ok(resp)) => (Ok(Ok(resp)), false),
            Err(timed_out) => (Err(timed_out), false),
        };
        let ejected = learn(ctx, backend, &picked, &sent);
        let (status, error) = match &sent {
            Ok(Ok(resp)) => (
                resp.status().as_u16(),
                resp.headers()
                    .get(headers::ERROR)
                    .map_or("", |v| ProxyError::reason_of(v.as_bytes())),
            ),
            Ok(Err(e)) | Err(e) => (0, e.reason()),
        };
        rec.tries.push(crate::spans::Try {
            span_id: try_span.unwrap_or(0),
            started: try_started,
            ended: std::time::Instant::now(),
            endpoint: picked.upstream.addr,
            // Proved by its certificate only if the try reached it.
            peer: (status != 0)
                .then(|| picked.upstream.identity.clone())
                .flatten(),
            status,
            error,
            ejected,
        });
        if let Some(t) = rec.trace.as_mut() {
            if let (true, None, Some((_, _, d))) = (t.ctx.sampled, &t.timeout, &deadline) {
                t.timeout = Some(format!(
                    "{} {}",
                    d.field,
                    skein_model::duration::format(d.after)
                ));
            }
        }
        if let Some(retry) = retry {
            let outcome = match &sent {
                // Reached no application, whatever `codes` say: safe on another endpoint.
                // Believed only from a peer whose certificate proved it a mesh proxy.
                Ok(Ok(_))
                    if picked.upstream.identity.is_some()
                        && retry::unsent_by_peer(status, error) =>
                {
                    Outcome::NotSent
                }
                // The peer's application broke the connection before answering.
                Ok(Ok(_))
                    if repeatable
                        && picked.upstream.identity.is_some()
                        && retry::broken_at_peer(status, error) =>
                {
                    Outcome::Broken
                }
                Ok(Ok(resp)) => Outcome::Status(resp.status().as_u16()),
                Err(_) => Outcome::TryTimedOut,
                Ok(Err(e)) if unsent || e.retryable() => Outcome::NotSent,
                // The connection to the peer broke before an answer: the application may
                // have had the request, so only one that means the same twice goes again.
                Ok(Err(ProxyError::Upstream { .. })) if repeatable => Outcome::Broken,
                Ok(Err(_)) => Outcome::Failed,
            };
            let resume = tokio::time::Instant::now() + retry.backoff;
            let in_time = try_deadline(rule, started, resume).is_none_or(|(at, _, _)| at > resume);
            // Without a rule `retry`, only to another endpoint that is not ejected.
            if retry::should_retry(retry, rec.attempts, outcome)
                && in_time
                && (configured || backend.has_healthy_other_than(picked.upstream.addr))
            {
                if let Some(why) = requests.why_not_again() {
                    // Without a `retry`, a request streamed once is simply not retried.
                    if configured {
                        ctx.metrics.retry(why);
                    }
                } else if !ctx.retry_budget.withdraw(
                    &backend.service.key,
                    budget,
                    std::time::Instant::now(),
                ) {
                    ctx.metrics.retry("budget_exhausted");
                } else if !requests.retire() {
                    // Read past the cap since the check above.
                    ctx.metrics.retry("body_too_large");
                } else {
                    // The try's body is stopped now, so that it reads no further during
                    // the backoff (see `http::replay`).
                    ctx.metrics.retry("sent");
                    tracing::debug!(service, tries = rec.attempts, ?outcome, "retrying");
                    drop(sent);
                    tried = Some(picked.upstream.addr);
                    drop(picked);
                    tokio::time::sleep_until(resume).await;
                    continue;
                }
            }
        }
        // No try follows this one.
        requests.seal();
        return match sent {
            Err(timed_out) => Err(timed_out),
            Ok(Ok(resp)) => Ok((resp, picked, deadline)),
            Ok(Err(e)) => Err(e),
        };
    }
}

/// The redirect a rule's `RequestRedirect` answers `req` with; `port` is the service port
/// the request was sent to (when its authority names none).
fn redirect(
    req: &Request<Incoming>,
    r: &skein_model::resource::filter::RequestRedirect,
    matched: Option<&str>,
    port: u16,
) -> Response<Body> {
    let authority = authority_of(req).unwrap_or_default();
    let (host, named_port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') => (h.to_string(), p.parse().ok()),
        _ => (authority.clone(), None),
    };
    let scheme = req.uri().scheme_str().unwrap_or("http");
    crate::filter::redirect(
        r,
        scheme,
        &host,
        named_port.or(Some(port)),
        req.uri().path(),
        req.uri().query(),
        matched,
    )
}

/// Applies the request filters of `rule` (and its picked backend): header modifiers, then
/// a `URLRewrite` of the path (query kept) and of the host the backend sees.
fn apply_request_filters(req: &mut Request<Incoming>, rule: &RuleRef) -> Result<(), ProxyError> {
    for f in rule.filters() {
        if let Some(m) = &f.request_header_modifier {
            crate::filter::modify_headers(req.headers_mut(), m);
        }
        let Some(rewrite) = &f.url_rewrite else {
            continue;
        };
        if let Some(path) = &rewrite.path {
            let new = crate::filter::rewrite_path(req.uri().path(), path, rule.matched_prefix());
            let with_query = match req.uri().query() {
                Some(q) => format!("{new}?{q}"),
                None => new,
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query =
                Some(with_query.parse().map_err(|_| {
                    ProxyError::BadRequest("a rewritten path is not a valid URI path")
                })?);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::NoAuthority)?;
        }
        if let Some(host) = &rewrite.hostname {
            // The backend sees the new host: as the Host header, and in the authority of
            // an absolute-form URI.
            let value = HeaderValue::from_str(host)
                .map_err(|_| ProxyError::BadRequest("a rewritten hostname is not a valid Host"))?;
            req.headers_mut().insert(HOST, value);
            if req.uri().authority().is_some() {
                let path = req.uri().path_and_query().cloned();
                let mut parts = req.uri().clone().into_parts();
                parts.authority = host.parse().ok();
                parts.path_and_query = path;
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
    Ok(())
}

/// Tells the balancer how a try to `picked` went: a 5xx, a failure to deliver or the
/// try's timeout is a failure; the client's own fault says nothing about the endpoint.
fn learn(
    ctx: &Ctx,
    backend: &Target,
    picked: &Picked,
    sent: &Result<Result<Response<Incoming>, ProxyError>, ProxyError>,
) -> Option<String> {
    let outcome = match sent {
        // The peer proxy's own refusal (a denial, its load shedding) says nothing about
        // how fast the application answers: it must not make the endpoint look fast.
        Ok(Ok(resp))
            if !resp.status().is_server_error() && resp.headers().contains_key(headers::ERROR) =>
        {
            return None
        }
        Ok(Ok(resp)) if !resp.status().is_server_error() => balance::Outcome::Success,
        Ok(Err(e)) if e.source_kind() == crate::error::Source::Downstream => return None,
        _ => balance::Outcome::Failure,
    };
    super::learn(ctx, backend, picked, outcome)
}

/// The request to send on each try: the client's, streamed once (with why it is not
/// held: `body_too_large` for a rule without `retry`, `buffers_shed` at
/// `limits.maxBufferedBytes`, as `skein_route_retries_total` reads); a held copy; or a
/// replay of the client's body through a bounded tee.
enum Requests {
    Once(Option<Request<Body>>, &'static str),
    Held(::http::request::Parts, bytes::Bytes),
    Tee(::http::request::Parts, Tee<Body>),
}

impl Requests {
    fn next(&mut self) -> Request<Body> {
        let (parts, body) = match self {
            // Only one try is made without a held copy or a tee.
            Requests::Once(req, _) => return req.take().unwrap_or_else(|| Request::new(empty())),
            Requests::Held(parts, body) => (parts, full(body.clone())),
            Requests::Tee(parts, tee) => (parts, boxed(tee.next_try())),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        req
    }

    /// A try handed back the request it never sent: the next try sends it.
    fn give_back(&mut self, req: Request<Body>) {
        if let Requests::Once(slot, _) = self {
            *slot = Some(req);
        }
    }

    /// Why another try could not send the whole request, as the retry metric counts it
    /// (a request streamed once is retried only when a try handed it back unsent).
    fn why_not_again(&self) -> Option<&'static str> {
        match self {
            Requests::Once(Some(_), _) => None,
            Requests::Once(None, why) => Some(why),
            Requests::Held(..) => None,
            Requests::Tee(_, tee) => tee.why_not(),
        }
    }

    /// Stops the current try's body where it is, before the next try; whether the next
    /// can still send the whole body.
    fn retire(&self) -> bool {
        match self {
            Requests::Once(req, _) => req.is_some(),
            Requests::Held(..) => true,
            Requests::Tee(_, tee) => tee.retire(),
        }
    }

    /// No try follows: let go of the copy.
    fn seal(&self) {
        if let Requests::Tee(_, tee) = self {
            tee.seal();
        }
    }
}

/// When a try starting at `now` must end, by the rule's timeouts, if it has any.
fn try_deadline(
    rule: Option<&RuleRef>,
    started: tokio::time::Instant,
    now: tokio::time::Instant,
) -> Option<(tokio::time::Instant, &RuleRef, TryDeadline)> {
    let rule = rule?;
    let d = rule.deadline(now.saturating_duration_since(started))?;
    Some((started + d.at, rule, d))
}

/// Rewrites an application request into the HTTP/2 stream sent to the peer proxy; the
/// returned cell records a failure of the client's body.
fn to_peer_request(
    req: Request<Incoming>,
    target: &Target,
    proto: Proto,
    rec: &mut Record,
) -> Result<(Request<Body>, Arc<OnceLock<String>>), ProxyError> {
    let authority = authority_of(&req)
        .unwrap_or_else(|| format!("{}:{}", target.service.spec.service, target.port.port));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_internal(&mut parts.headers);
    if let Some(id) = &rec.request_id {
        parts.headers.insert(headers::REQUEST_ID, id.clone());
    }
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
    let (body, failure) = Watched::new(body, rec.body_counter());
    Ok((Request::from_parts(parts, boxed(body)), failure))
}

/// Sends an HTTP/1 upgrade request through an HTTP/1 tunnel to the peer, then splices;
/// `held` (the connection-limit permit) lives as long as the upgraded connection.
async fn upgrade(
    ctx: &Ctx,
    mut req: Request<Incoming>,
    target: &Target,
    rec: &mut Record,
    held: Admitted,
) -> Result<Response<Body>, ProxyError> {
    let picked = target.pick(None)?;
    rec.attempts = 1;
    rec.endpoint = Some(picked.upstream.addr);
    let tunnel = tcp::open_tunnel(ctx, &picked.upstream, target, "http1").await;
    let sent = tunnel.as_ref().map(|_| ()).map_err(|e| e.reason());
    tcp::learn_connect(ctx, target, &picked, sent);
    let tunnel = tunnel?;
    let endpoint = picked.upstream.clone();
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
    if let Some(id) = &rec.request_id {
        req.headers_mut().insert(headers::REQUEST_ID, id.clone());
    }
    if let Some(t) = &rec.trace {
        t.inject(req.headers_mut(), None);
    }
    let origin_form = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(origin_form);
    // The connection's slot too: the upgraded bytes outlive its task.
    let slot = req.extensions_mut().remove::<ConnectionSlot>();
    crate::http::upgrade::forward(sender, endpoint.addr, req, &ctx.drain, (held, picked, slot))
        .await
}
