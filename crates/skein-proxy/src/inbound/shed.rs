//! Load shedding at the application's edge: past its limit (`inbound.limit`, from the
//! BackendPolicies of the Services selecting the workload) a request is refused at once
//! with 503, rather than left to pile up in the application's accept queue.
//!
//! The limit is fixed, or adaptive ([`crate::adaptive`]): then each request's time to
//! the application's response head (and whether the application said it is overloaded)
//! is fed to the controller, which resizes the limiter as it learns. An [`AppLimit`]
//! lives across configuration changes (kept by [`crate::state::State::new`]), so that
//! requests in flight still count and what was learnt about the application stays.

use crate::adaptive::{Gradient, Signal};
use crate::error::ProxyError;
use crate::http::Body;
use crate::limit::{Admitted, Full, Limiter};
use crate::state::State;
use crate::Ctx;
use http::{Response, StatusCode};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// The limit on requests the application is sent at once.
#[derive(Debug)]
pub struct AppLimit {
    limiter: Limiter,
    /// The controller, when the limit is adaptive.
    adaptive: Mutex<Option<Gradient>>,
}

impl AppLimit {
    /// The limit `config` describes, taking over `previous` (its holders and what it
    /// learnt) if there was one.
    pub fn new(config: &skein_model::AppLimit, previous: Option<&Arc<AppLimit>>) -> Arc<Self> {
        let limit = match previous {
            Some(kept) => kept.clone(),
            None => Arc::new(AppLimit {
                limiter: Limiter::new(config.max_concurrent_requests, config.max_pending_requests),
                adaptive: Mutex::new(None),
            }),
        };
        limit.configure(config);
        limit
    }

    fn configure(&self, config: &skein_model::AppLimit) {
        let (max, waiting) = (config.max_concurrent_requests, config.max_pending_requests);
        let mut adaptive = self.adaptive.lock().unwrap_or_else(PoisonError::into_inner);
        let now = match (&config.adaptive, adaptive.as_mut()) {
            (None, _) => {
                *adaptive = None;
                max
            }
            (Some(a), Some(g)) => {
                g.reconfigure(a.min_concurrent_requests, max, a.latency_tolerance);
                g.limit()
            }
            (Some(a), None) => {
                let g = Gradient::new(a.min_concurrent_requests, max, a.latency_tolerance);
                let limit = g.limit();
                *adaptive = Some(g);
                limit
            }
        };
        self.limiter.resize(now, waiting);
    }

    /// The limit in force now.
    pub fn current(&self) -> u32 {
        self.limiter.max()
    }

    /// Whether the limit is found from latency.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Tells an adaptive limit how a request admitted at `started` went.
    fn observe(&self, ctx: &Ctx, started: Instant, signal: Signal) {
        let latency = started.elapsed();
        let in_flight = self.limiter.in_use();
        let mut adaptive = self.adaptive.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(g) = adaptive.as_mut() else {
            return;
        };
        if let Some(limit) = g.observe(latency, in_flight, signal) {
            let base = g.base();
            drop(adaptive);
            self.limiter.resize(limit, self.limiter.max_waiting());
            ctx.metrics.inbound_limit.set(i64::from(limit));
            tracing::debug!(limit, ?base, "adaptive inbound limit moved");
        }
    }
}

/// A request admitted under the application's limit: it counts until its response ends.
pub(crate) struct Shed {
    admitted: Admitted,
    started: Instant,
    limit: Arc<AppLimit>,
}

/// Admits the request under `state`'s limit, if it has one, or refuses it at once.
pub(crate) async fn admit(ctx: &Ctx, state: &State) -> Result<Option<Shed>, ProxyError> {
    let Some(limit) = &state.app_limit else {
        return Ok(None);
    };
    let config = &state.config;
    let admitted = limit.limiter.admit().await.map_err(|full| {
        let (field, value) = match full {
            Full::Max(v) if limit.is_adaptive() => ("inbound.adaptive", v),
            Full::Max(v) => ("inbound.maxConcurrentRequests", v),
            Full::Waiting(v) => ("inbound.maxPendingRequests", v),
        };
        ProxyError::Overloaded {
            service: config.workload.service.clone(),
            policy: config
                .inbound
                .limit
                .as_ref()
                .map_or_else(String::new, |l| l.policy.clone()),
            limit: field,
            value,
        }
    })?;
    ctx.metrics.inbound_limit.set(i64::from(limit.current()));
    Ok(Some(Shed {
        admitted,
        started: Instant::now(),
        limit: limit.clone(),
    }))
}

/// What the application's answer (or the failure to get one) says about its load:
/// `None` when it says nothing (the request itself was at fault).
fn signal(result: &Result<Response<Body>, ProxyError>) -> Option<Signal> {
    match result {
        Ok(resp) => Some(match resp.status() {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => Signal::Overloaded,
            _ => Signal::Answered,
        }),
        Err(ProxyError::Connect { .. } | ProxyError::Timeout { .. }) => Some(Signal::Overloaded),
        Err(_) => None,
    }
}

/// Ends the admission's wait for the application's answer: an adaptive limit learns from
/// it, and the admission is held until the response body ends.
pub(crate) fn hold(
    ctx: &Ctx,
    result: Result<Response<Body>, ProxyError>,
    shed: Option<Shed>,
) -> Result<Response<Body>, ProxyError> {
    let Some(shed) = shed else {
        return result;
    };
    if let Some(signal) = signal(&result) {
        shed.limit.observe(ctx, shed.started, signal);
    }
    let held = shed.admitted;
    result.map(|resp| resp.map(|b| crate::http::boxed(crate::http::Holding::new(b, held))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::resource::AdaptiveLimit;

    fn config(max: u32, adaptive: Option<AdaptiveLimit>) -> skein_model::AppLimit {
        skein_model::AppLimit {
            policy: "default/api".into(),
            max_concurrent_requests: max,
            max_pending_requests: 0,
            adaptive,
        }
    }

    #[test]
    fn a_limit_switches_between_fixed_and_adaptive_in_place() {
        let fixed = AppLimit::new(&config(100, None), None);
        assert_eq!((fixed.current(), fixed.is_adaptive()), (100, false));
        let held = fixed.limiter.try_admit().unwrap();
        // Adaptive: it starts at 20 (within its bounds), the same limiter kept.
        let adaptive = AppLimit::new(&config(100, Some(AdaptiveLimit::default())), Some(&fixed));
        assert!(Arc::ptr_eq(&fixed, &adaptive));
        assert_eq!((adaptive.current(), adaptive.is_adaptive()), (20, true));
        assert_eq!(
            adaptive.limiter.in_use(),
            1,
            "the admitted request still counts"
        );
        // A lower ceiling bounds what it learnt.
        let lower = AppLimit::new(&config(10, Some(AdaptiveLimit::default())), Some(&adaptive));
        assert_eq!(lower.current(), 10);
        let back = AppLimit::new(&config(50, None), Some(&lower));
        assert_eq!((back.current(), back.is_adaptive()), (50, false));
        drop(held);
        assert_eq!(back.limiter.in_use(), 0);
    }

    #[test]
    fn overload_answers_and_unreachable_applications_are_signals_and_bad_requests_are_not() {
        let status = |s: u16| {
            let mut r = Response::new(crate::http::empty());
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            signal(&Ok(r))
        };
        assert_eq!(status(200), Some(Signal::Answered));
        assert_eq!(status(500), Some(Signal::Answered));
        assert_eq!(status(503), Some(Signal::Overloaded));
        assert_eq!(status(429), Some(Signal::Overloaded));
        let refused = ProxyError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(signal(&Err(refused)), Some(Signal::Overloaded));
        assert_eq!(
            signal(&Err(ProxyError::RequestBody("bad chunk".into()))),
            None
        );
    }
}
