//! Load shedding at the application's edge: past its limit (`inbound.limit`, from the
//! BackendPolicies of the Services selecting the workload) a request is refused at once
//! with 503, rather than left to pile up in the application's accept queue.
//!
//! The limit is fixed, or adaptive ([`crate::adaptive`]): then each request's time to
//! the application's response head (and whether the application said it is overloaded)
//! is fed to the controller, which resizes the limiter as it learns; a request its caller
//! gave up on counts with the time it had taken. An [`AppLimit`] lives across
//! configuration changes (kept by [`crate::state::State::new`]), so that requests in
//! flight still count and what was learnt about the application stays.

use crate::adaptive::{Gradient, Signal};
use crate::error::ProxyError;
use crate::http::Body;
use crate::limit::{Admitted, Full, Limiter};
use crate::state::State;
use crate::Ctx;
use http::{Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// The limit on requests the application is sent at once.
#[derive(Debug)]
pub struct AppLimit {
    limiter: Limiter,
    /// The controller, when the limit is adaptive; resizes happen under its lock, so
    /// that they apply in the order decided.
    adaptive: Mutex<Option<Gradient>>,
    /// Whether `adaptive` holds one (read on every refusal, without the lock).
    is_adaptive: AtomicBool,
}

impl AppLimit {
    /// The limit `config` describes, taking over `previous` (its holders and what it
    /// learnt) if there was one.
    pub fn new(config: &skein_model::AppLimit, previous: Option<&Arc<AppLimit>>) -> Arc<Self> {
        let (limit, fresh) = match previous {
            Some(kept) => (kept.clone(), false),
            None => {
                let max = config.max_concurrent_requests;
                let limit = Arc::new(AppLimit {
                    limiter: Limiter::new(max, config.max_pending_requests),
                    adaptive: Mutex::new(None),
                    is_adaptive: AtomicBool::new(false),
                });
                (limit, true)
            }
        };
        limit.configure(config, fresh);
        limit
    }

    fn configure(&self, config: &skein_model::AppLimit, fresh: bool) {
        let (max, waiting) = (config.max_concurrent_requests, config.max_pending_requests);
        let mut adaptive = self.adaptive.lock().unwrap_or_else(PoisonError::into_inner);
        let now = match (&config.adaptive, adaptive.as_mut()) {
            (None, _) => {
                *adaptive = None;
                max
            }
            (Some(a), Some(g)) => {
                g.reconfigure(a.min(max), max, a.latency_tolerance);
                g.limit()
            }
            (Some(a), None) => {
                let mut g = Gradient::new(a.min(max), max, a.latency_tolerance);
                if !fresh {
                    // Made adaptive while serving: from the limit in force, not from
                    // scratch (a busy service would lose most of its capacity at once).
                    g = g.starting_at(self.limiter.max());
                }
                let limit = g.limit();
                *adaptive = Some(g);
                limit
            }
        };
        self.is_adaptive
            .store(adaptive.is_some(), Ordering::Release);
        self.limiter.resize(now, waiting);
    }

    /// The limit in force now.
    pub fn current(&self) -> u32 {
        self.limiter.max()
    }

    /// Whether the limit is found from latency.
    pub fn is_adaptive(&self) -> bool {
        self.is_adaptive.load(Ordering::Acquire)
    }

    /// Tells an adaptive limit how a request admitted at `started` went.
    fn observe(&self, gauge: &Gauge, started: Instant, signal: Signal) {
        if !self.is_adaptive() {
            return;
        }
        let latency = started.elapsed();
        let in_flight = self.limiter.in_use();
        let mut adaptive = self.adaptive.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(g) = adaptive.as_mut() else {
            return;
        };
        if let Some(limit) = g.observe(latency, in_flight, signal) {
            self.limiter.set_max(limit);
            gauge.set(i64::from(limit));
            tracing::debug!(limit, base = ?g.base(), "adaptive inbound limit moved");
        }
    }
}

/// A request admitted under the application's limit: it counts until its response ends.
pub(crate) struct Shed {
    admitted: Option<Admitted>,
    started: Instant,
    limit: Arc<AppLimit>,
    gauge: Gauge,
    /// The application's answer (or failure) was seen.
    observed: bool,
}

impl Drop for Shed {
    fn drop(&mut self) {
        if !self.observed {
            // The caller gave up (its timeout, its user) before the application answered:
            // it took at least this long.
            self.limit
                .observe(&self.gauge, self.started, Signal::Answered);
        }
    }
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
    Ok(Some(Shed {
        admitted: Some(admitted),
        started: Instant::now(),
        limit: limit.clone(),
        gauge: ctx.metrics.inbound_limit.clone(),
        observed: false,
    }))
}

/// What the application's answer (or the failure to get one) says about its load:
/// `None` when it says nothing (the request itself was at fault).
fn signal(result: &Result<Response<Body>, ProxyError>) -> Option<Signal> {
    match result {
        Ok(resp)
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE
                && resp.headers().contains_key(http::header::RETRY_AFTER) =>
        {
            Some(Signal::Overloaded)
        }
        Ok(_) => Some(Signal::Answered),
        Err(ProxyError::Connect { .. }) => Some(Signal::Overloaded),
        Err(_) => None,
    }
}

/// Ends the admission's wait for the application's answer: an adaptive limit learns from
/// it, and the admission is held until the response body ends.
pub(crate) fn hold(
    result: Result<Response<Body>, ProxyError>,
    shed: Option<Shed>,
) -> Result<Response<Body>, ProxyError> {
    let Some(mut shed) = shed else {
        return result;
    };
    shed.observed = true;
    if let Some(signal) = signal(&result) {
        shed.limit.observe(&shed.gauge, shed.started, signal);
    }
    let Some(held) = shed.admitted.take() else {
        return result;
    };
    result.map(|resp| resp.map(|b| crate::http::boxed(crate::http::Holding::new(b, held))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_model::resource::AdaptiveLimit;
    use std::time::Duration;

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
        // Made adaptive while serving: from the limit in force, the same limiter kept.
        let adaptive = AppLimit::new(&config(100, Some(AdaptiveLimit::default())), Some(&fixed));
        assert!(Arc::ptr_eq(&fixed, &adaptive));
        assert_eq!((adaptive.current(), adaptive.is_adaptive()), (100, true));
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
        // Adaptive from the start: from 20.
        let fresh = AppLimit::new(&config(100, Some(AdaptiveLimit::default())), None);
        assert_eq!(fresh.current(), crate::adaptive::INITIAL);
    }

    #[tokio::test]
    async fn a_request_its_caller_gave_up_on_counts_with_the_time_it_took() {
        let limit = AppLimit::new(&config(100, Some(AdaptiveLimit::default())), None);
        let gauge = Gauge::default();
        let shed = |ms: u64| Shed {
            admitted: limit.limiter.try_admit().ok(),
            started: Instant::now() - Duration::from_millis(ms),
            limit: limit.clone(),
            gauge: gauge.clone(),
            observed: false,
        };
        // A window of quick answers with the limit in use (it grows to 24), then one of
        // requests given up on after 10× as long: the limit falls.
        let held: Vec<_> = (0..20).map(|_| shed(10)).collect();
        for s in held {
            let ok = Ok(Response::new(crate::http::empty()));
            hold(ok, Some(s)).unwrap();
        }
        assert_eq!(limit.current(), 24);
        let slow: Vec<_> = (0..24).map(|_| shed(100)).collect();
        drop(slow);
        assert!(
            limit.current() < crate::adaptive::INITIAL,
            "{}",
            limit.current()
        );
        assert_eq!(gauge.get(), i64::from(limit.current()));
    }

    #[test]
    fn explicit_overload_answers_and_refused_connections_are_signals_and_nothing_else() {
        let status = |s: u16, retry_after: bool| {
            let mut r = Response::new(crate::http::empty());
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            if retry_after {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, "1".parse().unwrap());
            }
            signal(&Ok(r))
        };
        assert_eq!(status(200, false), Some(Signal::Answered));
        assert_eq!(status(500, false), Some(Signal::Answered));
        assert_eq!(status(503, true), Some(Signal::Overloaded));
        // A dependency's failure passed on, or one client's rate limit: not the
        // application's load.
        assert_eq!(status(503, false), Some(Signal::Answered));
        assert_eq!(status(429, true), Some(Signal::Answered));
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
