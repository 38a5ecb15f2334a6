//! `BackendPolicy`: how callers reach a service's endpoints — load balancing, connection
//! limits, outlier detection (circuit breaking) and the retry budget. Every part is
//! optional; what is left out takes its default, shown by `get -o yaml`.

use super::policy::TargetRef;
use super::validate::Problems;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `spec` of a `BackendPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendPolicySpec {
    /// The Service (and optionally port) whose callers follow this policy.
    pub target_ref: TargetRef,
    /// How an endpoint is picked. Default `ewma`.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Limits per caller proxy. Defaults: 1024 connections, 256 pending requests.
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// Ejection of failing endpoints. Defaults: 5 consecutive 5xx, checked every 5s,
    /// ejected for 30s and longer each time, at most 50 % of endpoints.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// How many retries may be added on top of requests. Defaults: 20 % plus 10 per second.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// What each workload of the Service accepts at once from all its callers together,
    /// enforced by its own (inbound) proxy. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundLimit>,
}

/// Load shedding at the edge of an application: requests beyond the limit are refused
/// by the workload's own proxy at once (503, `Retry-After`), instead of piling up in the
/// application's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundLimit {
    /// Most requests the application is sent at once; 1 to 1000000. With `adaptive`,
    /// the most the limit grows to.
    pub max_concurrent_requests: u32,
    /// Most requests waiting for one of those to finish; 0 to 1000000. Default 0.
    #[serde(default)]
    pub max_pending_requests: u32,
    /// Finds the limit from the application's latency instead (within
    /// `adaptive.minConcurrentRequests` and `maxConcurrentRequests`). Default: fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveLimit>,
}

/// An inbound limit found from latency: the proxy lowers it while the application
/// answers more than `latencyTolerance` times slower than when it is not queueing (or
/// says it is overloaded), and raises it while it keeps its pace and the limit is used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptiveLimit {
    /// The least the limit falls to; 1 to `maxConcurrentRequests`. Default 5 (or
    /// `maxConcurrentRequests` if lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_concurrent_requests: Option<u32>,
    /// How many times its unqueued latency the application may take before the limit
    /// falls; 1 to 10. Default 1.5.
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
}

/// The floor of an adaptive limit when none is written.
pub const DEFAULT_MIN_CONCURRENT_REQUESTS: u32 = 5;

impl AdaptiveLimit {
    /// The floor in force under a ceiling of `max`.
    pub fn min(&self, max: u32) -> u32 {
        self.min_concurrent_requests
            .unwrap_or(DEFAULT_MIN_CONCURRENT_REQUESTS)
            .clamp(1, max.max(1))
    }

    /// What is out of range with a ceiling of `max`: (field under `adaptive.`, value,
    /// what is accepted).
    pub fn problems(&self, max: u32) -> Vec<(&'static str, String, &'static str)> {
        let mut out = Vec::new();
        if let Some(min) = self.min_concurrent_requests {
            if !(1..=max.max(1)).contains(&min) {
                out.push((
                    "minConcurrentRequests",
                    min.to_string(),
                    "1 to maxConcurrentRequests (the limit moves between them)",
                ));
            }
        }
        if !(1.0..=10.0).contains(&self.latency_tolerance) {
            out.push((
                "latencyTolerance",
                self.latency_tolerance.to_string(),
                "1 to 10: how many times its unqueued latency the application may take, e.g. 1.5",
            ));
        }
        out
    }
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        AdaptiveLimit {
            min_concurrent_requests: None,
            latency_tolerance: default_latency_tolerance(),
        }
    }
}

fn default_latency_tolerance() -> f64 {
    1.5
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Peak-EWMA latency with power-of-two choices (the default).
    #[default]
    Ewma,
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with the fewest requests in flight (of two picked at random).
    LeastRequest,
}

/// Connection and request limits towards the service, per caller proxy. Requests beyond
/// them are refused at once by the caller's proxy (503 with `skein-error: overloaded` and
/// `Retry-After`; gRPC `UNAVAILABLE`), never queued without bound.
///
/// Between proxies, HTTP requests share one multiplexed HTTP/2 connection per endpoint,
/// so `maxConcurrentRequests` bounds requests and `maxConnections` bounds the opaque
/// TCP (and upgraded WebSocket) connections the application holds to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// Most opaque TCP and upgraded connections open to the service; 1 to 1000000.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most HTTP requests (and gRPC calls) in flight to the service; 1 to 1000000.
    /// Default 10000.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: u32,
    /// Most requests waiting for one of `maxConcurrentRequests` to finish; beyond it
    /// requests fail at once with 503. 0 to 1000000 (0: none wait). Default 256.
    #[serde(default = "default_max_pending")]
    pub max_pending_requests: u32,
    /// Most requests in flight to any one endpoint; an endpoint at its limit is not
    /// picked, and when every endpoint is, the request is refused. 1 to 1000000.
    /// Default: no per-endpoint limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_endpoint: Option<u32>,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        ConnectionPool {
            max_connections: default_max_connections(),
            max_concurrent_requests: default_max_concurrent(),
            max_pending_requests: default_max_pending(),
            max_requests_per_endpoint: None,
        }
    }
}

/// When endpoints are ejected from balancing for failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint: 5xx responses from it, and requests
    /// the mesh could not deliver to it (connection refused or reset, TLS failure, try
    /// timeout); 1 to 1000. Default 5.
    #[serde(default = "default_consecutive_5xx", rename = "consecutive5xx")]
    pub consecutive_5xx: u32,
    /// How long an endpoint must stay healthy after an ejection for its next ejection to
    /// be one step shorter again; 100ms to 1h. Default `5s`.
    #[serde(default = "default_interval", with = "crate::duration")]
    pub interval: Duration,
    /// First ejection's length, multiplied by the number of ejections in a row; 1s to 1h
    /// (an ejection never lasts longer than 10 × this or 1h). Default `30s`. After an
    /// ejection the endpoint is on probation: one failure ejects it again.
    #[serde(default = "default_base_ejection", with = "crate::duration")]
    pub base_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent; 0 to 100 (0 turns ejection off).
    /// Default 50.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: default_consecutive_5xx(),
            interval: default_interval(),
            base_ejection_time: default_base_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

/// Retries allowed on top of original requests, so retries cannot multiply an overload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries as a fraction of requests; 0 to 1. Default 0.2.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Retries always allowed per second, whatever the ratio; 0 to 100000. Default 10.
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
    /// How long a request counts towards the ratio (and unspent minimum is saved); 1s to
    /// 60s. Default `10s`.
    #[serde(default = "default_ttl", with = "crate::duration")]
    pub ttl: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: default_ratio(),
            min_per_second: default_min_per_second(),
            ttl: default_ttl(),
        }
    }
}

impl BackendPolicySpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        self.target_ref.validate(p, "spec.targetRef");
        let pool = &self.connection_pool;
        p.check(
            (1..=1_000_000).contains(&pool.max_connections),
            "spec.connectionPool.maxConnections",
            pool.max_connections,
            "1 to 1000000",
        );
        p.check(
            (1..=1_000_000).contains(&pool.max_concurrent_requests),
            "spec.connectionPool.maxConcurrentRequests",
            pool.max_concurrent_requests,
            "1 to 1000000",
        );
        if let Some(n) = pool.max_requests_per_endpoint {
            p.check(
                (1..=1_000_000).contains(&n),
                "spec.connectionPool.maxRequestsPerEndpoint",
                n,
                "1 to 1000000",
            );
        }
        p.check(
            pool.max_pending_requests <= 1_000_000,
            "spec.connectionPool.maxPendingRequests",
            pool.max_pending_requests,
            "0 to 1000000",
        );
        let od = &self.outlier_detection;
        p.check(
            (1..=1000).contains(&od.consecutive_5xx),
            "spec.outlierDetection.consecutive5xx",
            od.consecutive_5xx,
            "1 to 1000",
        );
        let (ms, hour) = (Duration::from_millis(100), Duration::from_secs(3600));
        let expected = "a duration from 100ms to 1h";
        p.duration(
            "spec.outlierDetection.interval",
            od.interval,
            ms,
            hour,
            expected,
        );
        let (second, expected) = (Duration::from_secs(1), "a duration from 1s to 1h");
        let ejection = od.base_ejection_time;
        p.duration(
            "spec.outlierDetection.baseEjectionTime",
            ejection,
            second,
            hour,
            expected,
        );
        p.check(
            od.max_ejection_percent <= 100,
            "spec.outlierDetection.maxEjectionPercent",
            od.max_ejection_percent,
            "0 to 100 (percent)",
        );
        let budget = &self.retry_budget;
        p.check(
            (0.0..=1.0).contains(&budget.ratio),
            "spec.retryBudget.ratio",
            budget.ratio,
            "a fraction from 0 to 1, e.g. 0.2",
        );
        p.check(
            budget.min_per_second <= 100_000,
            "spec.retryBudget.minPerSecond",
            budget.min_per_second,
            "0 to 100000",
        );
        if let Some(inbound) = &self.inbound {
            // The application's limit covers all its ports: it cannot be one port's.
            p.check(
                self.target_ref.port.is_none(),
                "spec.inbound",
                "set with targetRef.port",
                "inbound only in a BackendPolicy for every port (no targetRef.port): it limits the application as a whole",
            );
            p.check(
                (1..=1_000_000).contains(&inbound.max_concurrent_requests),
                "spec.inbound.maxConcurrentRequests",
                inbound.max_concurrent_requests,
                "1 to 1000000",
            );
            p.check(
                inbound.max_pending_requests <= 1_000_000,
                "spec.inbound.maxPendingRequests",
                inbound.max_pending_requests,
                "0 to 1000000",
            );
            let adaptive = inbound.adaptive.as_ref();
            for (field, value, expected) in adaptive
                .map(|a| a.problems(inbound.max_concurrent_requests))
                .unwrap_or_default()
            {
                p.add(format!("spec.inbound.adaptive.{field}"), &value, expected);
            }
        }
        p.duration(
            "spec.retryBudget.ttl",
            budget.ttl,
            second,
            Duration::from_secs(60),
            "a duration from 1s to 60s",
        );
    }
}

fn default_max_connections() -> u32 {
    1024
}
fn default_max_pending() -> u32 {
    256
}
fn default_max_concurrent() -> u32 {
    10_000
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_consecutive_5xx() -> u32 {
    5
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_ratio() -> f64 {
    0.2
}
fn default_min_per_second() -> u32 {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: BackendPolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_part_defaults() {
        let spec: BackendPolicySpec = serde_yaml_ng::from_str("{targetRef: {name: web}}").unwrap();
        assert_eq!(spec.load_balancer, LoadBalancer::Ewma);
        assert_eq!(spec.connection_pool, ConnectionPool::default());
        assert_eq!(spec.outlier_detection, OutlierDetection::default());
        assert_eq!(spec.retry_budget, RetryBudget::default());
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"targetRef":{"group":"","kind":"Service","name":"web"},"loadBalancer":"ewma","connectionPool":{"maxConnections":1024,"maxConcurrentRequests":10000,"maxPendingRequests":256},"outlierDetection":{"consecutive5xx":5,"interval":"5s","baseEjectionTime":"30s","maxEjectionPercent":50},"retryBudget":{"ratio":0.2,"minPerSecond":10,"ttl":"10s"}}"#
        );
        // A part given in part keeps the defaults of the rest.
        let spec: BackendPolicySpec = serde_yaml_ng::from_str(
            "{targetRef: {name: web}, loadBalancer: round-robin, outlierDetection: {consecutive5xx: 3}}",
        )
        .unwrap();
        assert_eq!(spec.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(spec.outlier_detection.consecutive_5xx, 3);
        assert_eq!(spec.outlier_detection.interval, Duration::from_secs(5));
        assert!(problems("{targetRef: {name: web}}").is_empty());
    }

    #[test]
    fn every_bound() {
        assert_eq!(
            problems(
                "{targetRef: {name: web}, connectionPool: {maxConnections: 0, maxConcurrentRequests: 0, maxPendingRequests: 1000001, maxRequestsPerEndpoint: 0}, \
                 outlierDetection: {consecutive5xx: 0, interval: 50ms, baseEjectionTime: 2h, maxEjectionPercent: 101}, \
                 retryBudget: {ratio: 1.5, minPerSecond: 100001, ttl: 61s}}"
            ),
            [
                "spec.connectionPool.maxConnections: \"0\" is not accepted; expected 1 to 1000000",
                "spec.connectionPool.maxConcurrentRequests: \"0\" is not accepted; expected 1 to 1000000",
                "spec.connectionPool.maxRequestsPerEndpoint: \"0\" is not accepted; expected 1 to 1000000",
                "spec.connectionPool.maxPendingRequests: \"1000001\" is not accepted; expected 0 to 1000000",
                "spec.outlierDetection.consecutive5xx: \"0\" is not accepted; expected 1 to 1000",
                "spec.outlierDetection.interval: \"50ms\" is not accepted; expected a duration from 100ms to 1h",
                "spec.outlierDetection.baseEjectionTime: \"2h\" is not accepted; expected a duration from 1s to 1h",
                "spec.outlierDetection.maxEjectionPercent: \"101\" is not accepted; expected 0 to 100 (percent)",
                "spec.retryBudget.ratio: \"1.5\" is not accepted; expected a fraction from 0 to 1, e.g. 0.2",
                "spec.retryBudget.minPerSecond: \"100001\" is not accepted; expected 0 to 100000",
                "spec.retryBudget.ttl: \"61s\" is not accepted; expected a duration from 1s to 60s",
            ]
        );
    }

    #[test]
    fn an_inbound_limit_is_for_the_whole_application() {
        assert!(
            problems("{targetRef: {name: web}, inbound: {maxConcurrentRequests: 20}}").is_empty()
        );
        assert_eq!(
            problems("{targetRef: {name: web, port: 80}, inbound: {maxConcurrentRequests: 0}}"),
            [
                "spec.inbound: \"set with targetRef.port\" is not accepted; expected inbound only in a BackendPolicy for every port (no targetRef.port): it limits the application as a whole",
                "spec.inbound.maxConcurrentRequests: \"0\" is not accepted; expected 1 to 1000000",
            ]
        );
    }

    #[test]
    fn an_adaptive_inbound_limit_moves_within_its_bounds() {
        let spec: BackendPolicySpec = serde_yaml_ng::from_str(
            "{targetRef: {name: web}, inbound: {maxConcurrentRequests: 200, adaptive: {}}}",
        )
        .unwrap();
        assert_eq!(
            spec.inbound.and_then(|i| i.adaptive),
            Some(AdaptiveLimit::default()),
            "every field has a default"
        );
        assert!(problems(
            "{targetRef: {name: web}, inbound: {maxConcurrentRequests: 200, adaptive: {minConcurrentRequests: 200, latencyTolerance: 10}}}"
        )
        .is_empty());
        let default = AdaptiveLimit::default();
        assert_eq!(
            (default.min(200), default.min(3)),
            (5, 3),
            "5, or the ceiling if lower"
        );
        assert!(problems(
            "{targetRef: {name: web}, inbound: {maxConcurrentRequests: 3, adaptive: {}}}"
        )
        .is_empty());
        assert_eq!(
            problems(
                "{targetRef: {name: web}, inbound: {maxConcurrentRequests: 20, adaptive: {minConcurrentRequests: 21, latencyTolerance: 0.5}}}"
            ),
            [
                "spec.inbound.adaptive.minConcurrentRequests: \"21\" is not accepted; expected 1 to maxConcurrentRequests (the limit moves between them)",
                "spec.inbound.adaptive.latencyTolerance: \"0.5\" is not accepted; expected 1 to 10: how many times its unqueued latency the application may take, e.g. 1.5",
            ]
        );
    }
}
