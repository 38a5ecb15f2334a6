//! `RequestMirror`: a copy of a request sent to another Service on its own task, its
//! answer thrown away, so that the original is never slowed by the mirror. Bounded: at
//! most [`MAX_IN_FLIGHT`] copies at once per proxy (beyond, copies are dropped), each
//! given at most the rule's `timeouts.request` or [`DEFAULT_TIMEOUT`]; only requests
//! whose body the proxy holds (none, or a known length up to 64 KiB) are copied.
//! `skein_route_mirrors_total{result}` counts `sent`, `failed`, `dropped` and
//! `skipped_streamed_body`.

use super::plan::RuleRef;
use crate::destinations::Target;
use crate::http::{headers, Body};
use crate::state::State;
use crate::Ctx;
use ::http::{HeaderValue, Request};
use skein_model::resource::filter::RequestMirror;
use std::time::Duration;

/// Most mirrored requests in flight per proxy.
pub const MAX_IN_FLIGHT: u32 = 256;
/// How long a mirrored request may take when its rule sets no request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` (the request as it goes to `original`, already in its peer form) as a
/// copy to the mirror's Service, without waiting for it.
pub fn send(
    ctx: &Ctx,
    state: &State,
    original: &Target,
    mirror: &RequestMirror,
    mut req: Request<Body>,
    rule: Option<&RuleRef>,
) {
    let r = &mirror.backend_ref;
    if let Some(why) = &r.refused {
        tracing::debug!(why, "mirror not permitted; copy not sent");
        ctx.metrics.mirror("not_permitted");
        return;
    }
    let namespace = r
        .namespace
        .as_deref()
        .unwrap_or(&original.service.spec.namespace);
    let port = r.port.unwrap_or(original.port.port);
    let target = match state
        .destinations
        .resolve(&format!("{}.{namespace}", r.name), port)
    {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "mirror target unknown; copy dropped");
            ctx.metrics.mirror("failed");
            return;
        }
    };
    let Ok(admitted) = ctx.mirrors.try_admit() else {
        ctx.metrics.mirror("dropped");
        return;
    };
    let Ok(picked) = target.pick(None) else {
        ctx.metrics.mirror("failed");
        return;
    };
    req.headers_mut()
        .insert(headers::DST_PORT, HeaderValue::from(target.port.port));
    // A copy is its own request: what befalls it must not show as the original's.
    req.headers_mut()
        .insert(headers::REQUEST_ID, crate::ids::new_request_id());
    // Nor in the original's trace.
    crate::trace::strip(req.headers_mut());
    let timeout = rule
        .and_then(|r| r.rule().timeouts.as_ref()?.request)
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT);
    let peers = ctx.peers.clone();
    let metrics = ctx.metrics.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        let sent = tokio::time::timeout(timeout, async {
            let resp = peers.send(&picked.upstream, req).await?;
            // Read to the end, so the stream closes cleanly, keeping nothing: a mirror
            // that streams without end costs time (cut at the timeout), not memory.
            let mut body = std::pin::pin!(resp.into_body());
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                frame.map_err(|e| crate::ProxyError::RequestBody(e.to_string()))?;
            }
            Ok::<_, crate::ProxyError>(())
        })
        .await;
        metrics.mirror(if matches!(sent, Ok(Ok(()))) {
            "sent"
        } else {
            "failed"
        });
        drop(picked);
    });
}
