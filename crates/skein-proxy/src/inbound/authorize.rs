//! Inbound authorization: every request (HTTP) or tunnel (TCP) is decided on the caller's
//! verified identity by [`skein_model::authz`], the same code `skein policy check` runs,
//! against the policies in the state the request loaded when it arrived (a policy pushed
//! by the control plane applies to the next request of a live connection).
//!
//! HTTP paths are normalised first and the request is rewritten to the normalised path,
//! so the application receives exactly what was authorized. Every decision is counted;
//! denials and audits are logged once per caller → target pair per [`LOG_INTERVAL`],
//! with how many were folded into that line.

use super::Caller;
use crate::error::ProxyError;
use crate::telemetry::Pathway;
use crate::Ctx;
use foldhash::HashMap;
use http::uri::{PathAndQuery, Uri};
use http::Request;
use skein_model::authz::{self, Decision, HttpRequest, Verdict};
use skein_model::ProxyConfig;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one caller → target pair's denials (or audits) are logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Above this many remembered pairs the log forgets the oldest half (bounded memory with
/// many distinct callers).
const MAX_PAIRS: usize = 4096;

/// Decides an HTTP request on `port`; on success `req` carries the normalised path, and
/// the decision (allowed or audited) is returned.
pub fn http<B>(
    ctx: &Ctx,
    config: &ProxyConfig,
    caller: &Caller,
    req: &mut Request<B>,
    port: u16,
) -> Result<Decision, ProxyError> {
    let policy = &config.authorization;
    let normal = policy
        .normalize_path(req.uri().path())
        .map_err(ProxyError::BadPath)?;
    if let std::borrow::Cow::Owned(normal) = &normal {
        rewrite_path(req, normal)?;
    }
    let host = host_of(req)?;
    let request = authz::Request {
        port,
        http: Some(HttpRequest {
            method: req.method().as_str(),
            path: req.uri().path(),
            host: &host,
        }),
    };
    let decision = policy.decide(&caller.as_authz(), &request);
    record(ctx, caller, &config.workload.service, port, decision)
}

/// The pathway a request `decision` let through took (its port, method and normalised
/// path prefix, and whether it was only audited).
pub fn pathway<B>(req: &Request<B>, port: u16, decision: &Decision) -> Pathway {
    Pathway {
        port,
        method: crate::telemetry::pathway_method(req.method()),
        prefix: crate::telemetry::path_prefix(req.uri().path()).into(),
        audited: decision.verdict == Verdict::Audited,
    }
}

/// Decides an opaque TCP tunnel to `port`; on success the decision (allowed or audited)
/// is returned.
pub fn tcp(
    ctx: &Ctx,
    config: &ProxyConfig,
    caller: &Caller,
    port: u16,
) -> Result<Decision, ProxyError> {
    let request = authz::Request { port, http: None };
    let decision = config.authorization.decide(&caller.as_authz(), &request);
    record(ctx, caller, &config.workload.service, port, decision)
}

/// Counts and (rate-limited) logs the decision; a denial becomes the error returned.
fn record(
    ctx: &Ctx,
    caller: &Caller,
    target: &str,
    port: u16,
    decision: Decision,
) -> Result<Decision, ProxyError> {
    let source = caller.as_authz();
    ctx.metrics.authz(
        decision.verdict.as_str(),
        source.label(),
        target,
        decision.policy_label(),
    );
    if decision.verdict != Verdict::Allowed {
        if let Some(folded) = ctx.authz_log.due(source.label(), target, decision.verdict) {
            let also = if folded > 0 {
                format!(" (and {folded} more since the last line)")
            } else {
                String::new()
            };
            match decision.verdict {
                Verdict::Denied => tracing::warn!(
                    caller = source.label(),
                    target,
                    port,
                    "authorization: {decision}{also}"
                ),
                _ => tracing::info!(
                    caller = source.label(),
                    target,
                    port,
                    "authorization: {decision}{also}"
                ),
            }
        }
    }
    if decision.verdict.admits() {
        Ok(decision)
    } else {
        Err(ProxyError::Denied {
            caller: source.label().to_string(),
            target: format!("{target}:{port}"),
            reason: decision.summary(),
            policy: decision.policy_label().to_string(),
            detail: decision.to_string(),
        })
    }
}

fn rewrite_path<B>(req: &mut Request<B>, normal: &str) -> Result<(), ProxyError> {
    let with_query = match req.uri().query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal.to_string(),
    };
    let pq = PathAndQuery::try_from(with_query)
        .map_err(|_| ProxyError::BadRequest("the normalised path is not a valid URI path"))?;
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("the normalised path is not a valid URI path"))?;
    Ok(())
}

/// The host the request names (`:authority`, or `Host`), without a port or trailing dot.
///
/// Host rules must not be dodged by the spelling of the request, so anything ambiguous is
/// refused rather than guessed: a repeated or unparseable `Host`, a `Host` that names
/// another host than the URI's authority (RFC 9113 §8.3.1 calls that malformed), and an
/// HTTP/1.1 or HTTP/2 request that names no host at all, and userinfo (`admin@web`) in
/// either, which the application would receive as the host. Only HTTP/1.0 may omit it;
/// its host is then empty, which matches no `hosts` rule of an allow and every one of a
/// deny.
fn host_of<B>(req: &Request<B>) -> Result<String, ProxyError> {
    if let Some(why) = crate::http::headers::userinfo(req) {
        return Err(ProxyError::BadRequest(why));
    }
    let mut headers = req.headers().get_all(http::header::HOST).iter();
    let header = match (headers.next(), headers.next()) {
        (None, _) => None,
        (Some(h), None) => {
            let authority = h
                .to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .ok_or(ProxyError::BadRequest(
                    "the Host header is not a valid host[:port]; send one host name",
                ))?;
            Some(authority.host().to_string())
        }
        (Some(_), Some(_)) => {
            return Err(ProxyError::BadRequest(
                "the request has more than one Host header; send exactly one",
            ))
        }
    };
    let host = match (req.uri().host(), header) {
        (Some(uri), Some(header)) if !uri.eq_ignore_ascii_case(&header) => {
            return Err(ProxyError::BadRequest(
                "the Host header names another host than the request's authority; make them agree",
            ))
        }
        (Some(uri), _) => uri.to_string(),
        (None, Some(header)) => header,
        (None, None) if req.version() <= http::Version::HTTP_10 => String::new(),
        (None, None) => {
            return Err(ProxyError::BadRequest(
                "the request names no host (no :authority and no Host header); HTTP/1.1 and HTTP/2 require one",
            ))
        }
    };
    Ok(host.trim_end_matches('.').to_string())
}

/// Caller, target, verdict.
type Pair = (String, String, Verdict);

/// Remembers when each caller → target pair was last logged, and how many decisions
/// were folded since.
#[derive(Default)]
pub struct DecisionLog {
    pairs: Mutex<HashMap<Pair, (Instant, u64)>>,
}

impl DecisionLog {
    /// Whether to log now; if so, how many decisions were folded since the last line.
    pub fn due(&self, caller: &str, target: &str, verdict: Verdict) -> Option<u64> {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (caller.to_string(), target.to_string(), verdict);
        match pairs.get_mut(&key) {
            Some((last, folded)) if now.duration_since(*last) < LOG_INTERVAL => {
                *folded += 1;
                None
            }
            Some((last, folded)) => {
                let n = *folded;
                *last = now;
                *folded = 0;
                Some(n)
            }
            None => {
                if pairs.len() >= MAX_PAIRS {
                    if let Some(cutoff) = now.checked_sub(LOG_INTERVAL) {
                        pairs.retain(|_, (last, _)| *last > cutoff);
                    }
                    if pairs.len() >= MAX_PAIRS {
                        pairs.clear();
                    }
                }
                pairs.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_speaks_once_per_pair_per_interval() {
        let log = DecisionLog::default();
        assert_eq!(log.due("a", "web", Verdict::Denied), Some(0));
        assert_eq!(log.due("a", "web", Verdict::Denied), None);
        assert_eq!(log.due("a", "web", Verdict::Denied), None);
        assert_eq!(
            log.due("b", "web", Verdict::Denied),
            Some(0),
            "another caller"
        );
        assert_eq!(
            log.due("a", "web", Verdict::Audited),
            Some(0),
            "another verdict"
        );
        // Age the entry: the next line reports what was folded.
        {
            let mut pairs = log.pairs.lock().unwrap();
            let entry = pairs
                .get_mut(&("a".into(), "web".into(), Verdict::Denied))
                .unwrap();
            entry.0 = entry.0.checked_sub(LOG_INTERVAL).unwrap();
        }
        assert_eq!(log.due("a", "web", Verdict::Denied), Some(2));
    }

    #[test]
    fn hosts_lose_their_port() {
        let req = Request::get("http://restaurant:8080/menu")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).unwrap(), "restaurant");
        let req = Request::get("/menu")
            .header("host", "Restaurant.default.:80")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).unwrap(), "Restaurant.default");
        let req = Request::get("http://web:80/menu")
            .header("host", "WEB")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).unwrap(), "web", "same host, other case");
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        let refused = |req: Request<()>, what: &str| {
            let err = host_of(&req).expect_err(what);
            assert_eq!(err.reason(), "bad_request", "{what}");
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{what}");
            err.to_string()
        };
        let msg = refused(
            Request::get("/admin")
                .header("host", "web")
                .header("host", "admin")
                .body(())
                .unwrap(),
            "two Host headers",
        );
        assert!(msg.contains("more than one Host"), "{msg}");
        let msg = refused(
            Request::get("http://web/admin")
                .header("host", "admin")
                .body(())
                .unwrap(),
            "Host disagrees with the authority",
        );
        assert!(msg.contains("another host"), "{msg}");
        let msg = refused(
            Request::get("/admin")
                .header("host", "we b")
                .body(())
                .unwrap(),
            "unparseable Host",
        );
        assert!(msg.contains("not a valid host"), "{msg}");
        let msg = refused(
            Request::get("http://admin@web/menu").body(()).unwrap(),
            "userinfo in the authority",
        );
        assert!(
            msg.contains("userinfo") && msg.contains("host[:port]"),
            "{msg}"
        );
        let msg = refused(
            Request::get("/menu")
                .header("host", "admin@web")
                .body(())
                .unwrap(),
            "userinfo in Host",
        );
        assert!(msg.contains("Host header carries userinfo"), "{msg}");
        let msg = refused(Request::get("/admin").body(()).unwrap(), "no host");
        assert!(msg.contains("names no host"), "{msg}");
        let old = Request::get("/admin")
            .version(http::Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(host_of(&old).unwrap(), "", "HTTP/1.0 may omit Host");
    }

    #[test]
    fn the_path_is_rewritten_and_the_query_kept() {
        let mut req = Request::get("http://web/menu/../admin?x=%2F..")
            .body(())
            .unwrap();
        rewrite_path(&mut req, "/admin").unwrap();
        assert_eq!(req.uri().to_string(), "http://web/admin?x=%2F..");
    }
}
