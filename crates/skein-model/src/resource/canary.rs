//! `Canary` (`skein.dev/v1alpha1`): progressive delivery of a new version of a Service,
//! driven by the control plane from the telemetry it already holds. Shaped like Flagger's
//! `Canary` so its users recognise it: `targetRef`, `analysis` (`interval`, `threshold`,
//! `stepWeight`/`stepWeights`, `maxWeight`, `iterations` + `match` for A/B), `metrics`
//! with `thresholdRange`, and `webhooks` by `type`.
//!
//! The target is the Service callers use; `stable` and `canary` are two other Services
//! selecting the two versions' workloads. The controller owns one HTTPRoute for the
//! target, named after the Canary, and moves its weights. `status` is the controller's:
//! applying a Canary never changes it.

use super::route::RouteMatch;
use super::validate::Problems;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The annotation on the HTTPRoute a Canary drives: the Canary's name.
pub const CANARY_ANNOTATION: &str = "skein.dev/canary";

/// The annotation a Canary's route keeps when the Canary is deleted (the route stays as
/// it was, the user's now; a Canary of that name may take it back).
pub const CANARY_RELEASED_ANNOTATION: &str = "skein.dev/released-by-canary";

/// Most checks and events kept in a Canary's status (the newest).
pub const MAX_HISTORY: usize = 64;

/// `spec` of a `Canary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanarySpec {
    /// The Service whose callers are shifted (in the Canary's namespace).
    pub target_ref: CanaryTarget,
    /// The Service selecting the current version's workloads.
    pub stable: String,
    /// The Service selecting the new version's workloads.
    pub canary: String,
    /// How the rollout advances and what it checks.
    pub analysis: Analysis,
    /// HTTP calls at points of the rollout; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

/// `targetRef` of a Canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryTarget {
    /// Only `Service`. Default `Service`.
    #[serde(default = "super::route::default_service_kind")]
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// Only this service port. Default: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `analysis` of a Canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// Time between checks; 1s to 24h. Default 1m.
    #[serde(default = "default_interval", with = "crate::duration")]
    pub interval: Duration,
    /// Failed checks that roll the canary back; 1 to 1000. Default 5.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Weight added at each passed check, up to `maxWeight`; 1 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<u32>,
    /// The weights in order (each 1 to 100, increasing), instead of `stepWeight`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_weights: Vec<u32>,
    /// The last weight before promotion; 1 to 100. Default 50 (with `stepWeight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<u32>,
    /// A/B mode: passed checks before promotion; 1 to 1000. Requires `match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    /// A/B mode: requests matching any of these go to the canary, all others to stable.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Before any weight moves, one interval of every request mirrored to the canary
    /// (its answers dropped), which must pass its check. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror: bool,
    /// Requests the canary must serve in an interval for its check to count; below, the
    /// check is inconclusive and the rollout holds. 1 to 1000000. Default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// What each check requires. Default: success rate at least 99 % and p99 at most
    /// 500 ms.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<CanaryMetric>,
}

/// One metric a check requires, computed by the control plane from the canary's own
/// traffic (what its workloads' proxies received) over the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryMetric {
    /// `request-success-rate` (percent of requests not answered 5xx or a failed gRPC
    /// status) or `request-duration` (p99 to response headers, milliseconds).
    pub name: MetricName,
    /// The accepted range: `min` for the success rate, `max` for the duration.
    pub threshold_range: ThresholdRange,
}

/// The built-in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricName {
    /// Percent of requests that succeeded.
    RequestSuccessRate,
    /// p99 latency to response headers, in milliseconds.
    RequestDuration,
}

impl MetricName {
    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::RequestSuccessRate => "request-success-rate",
            MetricName::RequestDuration => "request-duration",
        }
    }
}

/// Bounds of a metric, inclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThresholdRange {
    /// The least accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The greatest accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// An HTTP call at a point of the rollout: `POST url` with a JSON body naming the Canary,
/// its phase and weight, and `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// A name (DNS-1123 label), unique in the Canary; shown in checks and events.
    pub name: String,
    /// When it is called.
    #[serde(rename = "type")]
    pub kind: WebhookType,
    /// `http://host:port/path`.
    pub url: String,
    /// How long to wait for the answer; 1ms to 5m. Default 10s.
    #[serde(default = "default_webhook_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Sent in the body's `metadata`; at most 32 entries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// When a webhook is called and what its answer means (as Flagger's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookType {
    /// Before the first step; anything but 2xx (or no answer in time) is a failed check
    /// and the rollout waits, trying again each interval.
    PreRollout,
    /// At every check (a load generator, an acceptance test); anything but 2xx is a
    /// failed check.
    Rollout,
    /// Before promotion (manual approval); the rollout holds at its last step until it
    /// answers 2xx. Holding is not a failed check.
    ConfirmPromotion,
    /// After the rollout ends, promoted or rolled back; its answer is recorded only.
    PostRollout,
    /// At every check; a 2xx answer rolls the canary back at once (a manual abort).
    Rollback,
}

impl WebhookType {
    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::PreRollout => "pre-rollout",
            WebhookType::Rollout => "rollout",
            WebhookType::ConfirmPromotion => "confirm-promotion",
            WebhookType::PostRollout => "post-rollout",
            WebhookType::Rollback => "rollback",
        }
    }
}

/// `status` of a Canary, written by the controller only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStatus {
    /// Where the rollout is.
    #[serde(default)]
    pub phase: CanaryPhase,
    /// The share of the target's requests the canary receives now, in percent.
    #[serde(default)]
    pub canary_weight: u32,
    /// Index of the current step (weights), or passed checks (A/B mode).
    #[serde(default)]
    pub iterations: u32,
    /// Failed checks since the rollout began.
    #[serde(default)]
    pub failed_checks: u32,
    /// Whether an operator paused the rollout (`skein canary pause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// An operator's request the controller carries out at its next pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<CanaryAction>,
    /// The Canary generation the controller last saw.
    #[serde(default)]
    pub observed_generation: u64,
    /// A digest of the spec the rollout is for; a change of the spec (not of labels or
    /// annotations) restarts the analysis.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec_revision: String,
    /// A digest of the canary Service's selector and ports when the rollout began; a
    /// change (a new version) restarts the analysis.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canary_revision: String,
    /// When the phase last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// When the next check is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_time: Option<String>,
    /// What the controller is doing or waiting for, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Checks with their metric values, oldest first (the newest 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRecord>,
    /// Transitions and decisions, oldest first (the newest 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<CanaryEvent>,
}

/// The phases of a rollout (Flagger's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CanaryPhase {
    /// Not started, or waiting for its Services, route or pre-rollout webhooks.
    #[default]
    Initializing,
    /// Checks run every interval and the weight moves.
    Progressing,
    /// Every step passed: all traffic goes to the canary for one interval.
    Promoting,
    /// The canary serves all the target's traffic.
    Succeeded,
    /// Rolled back: the stable serves all the target's traffic.
    Failed,
}

impl CanaryPhase {
    /// Whether the rollout is over (until the canary changes).
    pub fn is_final(self) -> bool {
        matches!(self, CanaryPhase::Succeeded | CanaryPhase::Failed)
    }
}

/// What an operator can ask of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CanaryAction {
    /// Promote now, skipping the remaining steps and confirmation.
    Promote,
    /// Roll back now.
    Abort,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CheckResult {
    /// Every metric within range and every webhook answered 2xx.
    Passed,
    /// A metric out of range or a webhook failed.
    Failed,
    /// Too few requests to judge; the rollout holds.
    Inconclusive,
}

/// One check, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRecord {
    /// When (RFC 3339).
    pub time: String,
    /// The canary's weight during the interval checked.
    pub weight: u32,
    /// The outcome.
    pub result: CheckResult,
    /// Requests the canary served in the interval.
    pub requests: u64,
    /// Their success rate, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Their p99 to response headers, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Why, in words (which metric or webhook failed, and its value).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One transition or decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryEvent {
    /// When (RFC 3339).
    pub time: String,
    /// The phase after it.
    pub phase: CanaryPhase,
    /// The canary's weight after it.
    pub weight: u32,
    /// What happened.
    pub message: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_threshold() -> u32 {
    5
}
fn default_min_requests() -> u64 {
    20
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_metrics() -> Vec<CanaryMetric> {
    vec![
        CanaryMetric {
            name: MetricName::RequestSuccessRate,
            threshold_range: ThresholdRange {
                min: Some(99.0),
                max: None,
            },
        },
        CanaryMetric {
            name: MetricName::RequestDuration,
            threshold_range: ThresholdRange {
                min: None,
                max: Some(500.0),
            },
        },
    ]
}

/// Default `maxWeight` with `stepWeight`.
pub const DEFAULT_MAX_WEIGHT: u32 = 50;

impl Analysis {
    /// Whether this is an A/B rollout (`iterations` with `match`).
    pub fn is_ab(&self) -> bool {
        self.iterations.is_some()
    }

    /// The canary's weight at each step, in order (empty in A/B mode): `stepWeights`, or
    /// `stepWeight`, twice it, … up to `maxWeight`.
    pub fn steps(&self) -> Vec<u32> {
        if self.is_ab() {
            return Vec::new();
        }
        if !self.step_weights.is_empty() {
            return self.step_weights.clone();
        }
        let step = self.step_weight.unwrap_or(0).max(1);
        let max = self.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT).clamp(1, 100);
        let mut out: Vec<u32> = (1..).map(|i| i * step).take_while(|w| *w < max).collect();
        out.push(max);
        out
    }
}

impl CanarySpec {
    /// Checks every rule of the spec; paths start with `spec`.
    pub(crate) fn validate(&self, p: &mut Problems) {
        let t = &self.target_ref;
        p.check(
            t.kind == "Service",
            "spec.targetRef.kind",
            &t.kind,
            "Service",
        );
        p.dns_label("spec.targetRef.name", &t.name);
        if let Some(port) = t.port {
            p.port("spec.targetRef.port", port);
        }
        p.dns_label("spec.stable", &self.stable);
        p.dns_label("spec.canary", &self.canary);
        p.check(
            self.stable != t.name,
            "spec.stable",
            &self.stable,
            "a Service other than the target (the target's selector usually selects both versions): one selecting only the current version's workloads",
        );
        p.check(
            self.canary != t.name,
            "spec.canary",
            &self.canary,
            "a Service other than the target: one selecting only the new version's workloads",
        );
        p.check(
            self.canary != self.stable,
            "spec.canary",
            &self.canary,
            "a Service other than spec.stable",
        );
        self.analysis.validate(p);
        p.max_items("spec.webhooks", self.webhooks.len(), 16);
        for (i, hook) in self.webhooks.iter().enumerate() {
            hook.validate(p, &format!("spec.webhooks[{i}]"));
        }
        let names: Vec<_> = self.webhooks.iter().map(|w| w.name.clone()).collect();
        p.unique(
            "spec.webhooks",
            ".name",
            &names,
            String::clone,
            "each webhook name used once",
        );
    }
}

impl Analysis {
    fn validate(&self, p: &mut Problems) {
        p.duration(
            "spec.analysis.interval",
            self.interval,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
            "a duration from 1s to 24h",
        );
        p.check(
            (1..=1000).contains(&self.threshold),
            "spec.analysis.threshold",
            self.threshold,
            "1 to 1000 failed checks",
        );
        p.check(
            (1..=1_000_000).contains(&self.min_requests),
            "spec.analysis.minRequests",
            self.min_requests,
            "1 to 1000000 requests per interval",
        );
        let percent = |p: &mut Problems, at: &str, v: u32| {
            p.check(
                (1..=100).contains(&v),
                at,
                v,
                "a weight from 1 to 100 (percent)",
            );
        };
        let weighted = self.step_weight.is_some() || !self.step_weights.is_empty();
        if let Some(iterations) = self.iterations {
            p.check(
                (1..=1000).contains(&iterations),
                "spec.analysis.iterations",
                iterations,
                "1 to 1000 passed checks",
            );
            p.check(
                !self.matches.is_empty(),
                "spec.analysis.match",
                "[]",
                "at least one match with iterations (A/B mode: which requests go to the canary)",
            );
            p.check(
                !weighted && self.max_weight.is_none(),
                "spec.analysis.iterations",
                iterations,
                "either iterations with match (A/B) or stepWeight/stepWeights (canary), not both",
            );
            p.check(
                !self.mirror,
                "spec.analysis.mirror",
                "true",
                "mirror only with stepWeight or stepWeights (A/B mode sends the matching requests themselves)",
            );
        } else {
            p.check(
                self.matches.is_empty(),
                "spec.analysis.match",
                format!("{} matches", self.matches.len()),
                "match only with iterations (A/B mode)",
            );
            p.check(
                weighted,
                "spec.analysis",
                "no steps",
                "stepWeight (with maxWeight) or stepWeights, or iterations with match for A/B",
            );
        }
        if self.step_weight.is_some() && !self.step_weights.is_empty() {
            p.add(
                "spec.analysis.stepWeights",
                format!("{:?}", self.step_weights),
                "either stepWeight or stepWeights, not both",
            );
        }
        if let Some(w) = self.step_weight {
            percent(p, "spec.analysis.stepWeight", w);
        }
        if let Some(w) = self.max_weight {
            percent(p, "spec.analysis.maxWeight", w);
            p.check(
                self.step_weights.is_empty(),
                "spec.analysis.maxWeight",
                w,
                "maxWeight only with stepWeight (stepWeights lists every weight)",
            );
        }
        p.max_items("spec.analysis.stepWeights", self.step_weights.len(), 100);
        for (i, &w) in self.step_weights.iter().enumerate() {
            let at = format!("spec.analysis.stepWeights[{i}]");
            percent(p, &at, w);
            if i > 0 && w <= self.step_weights[i - 1] {
                p.add(at, w.to_string(), "weights in increasing order");
            }
        }
        p.max_items("spec.analysis.match", self.matches.len(), 16);
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(p, &format!("spec.analysis.match[{i}]"));
        }
        if self.metrics.is_empty() {
            p.add(
                "spec.analysis.metrics",
                "[]",
                "at least one metric (omit the field for the defaults: request-success-rate min 99, request-duration max 500)",
            );
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let at = format!("spec.analysis.metrics[{i}].thresholdRange");
            let r = m.threshold_range;
            match m.name {
                MetricName::RequestSuccessRate => {
                    p.check(
                        r.min.is_some_and(|v| (0.0..=100.0).contains(&v)),
                        format!("{at}.min"),
                        show(r.min),
                        "a success rate from 0 to 100 (percent)",
                    );
                    p.check(
                        r.max.is_none(),
                        format!("{at}.max"),
                        show(r.max),
                        "no max for request-success-rate (a check fails below min)",
                    );
                }
                MetricName::RequestDuration => {
                    p.check(
                        r.max.is_some_and(|v| v > 0.0 && v <= 3_600_000.0),
                        format!("{at}.max"),
                        show(r.max),
                        "a p99 in milliseconds, above 0 and at most 3600000",
                    );
                    p.check(
                        r.min.is_none(),
                        format!("{at}.min"),
                        show(r.min),
                        "no min for request-duration (a check fails above max)",
                    );
                }
            }
        }
        let names: Vec<_> = self.metrics.iter().map(|m| m.name).collect();
        p.unique(
            "spec.analysis.metrics",
            ".name",
            &names,
            |n| n.as_str().to_string(),
            "each metric listed once",
        );
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or("none".to_string(), |v| v.to_string())
}

impl Webhook {
    fn validate(&self, p: &mut Problems, at: &str) {
        p.dns_label(format!("{at}.name"), &self.name);
        p.check(
            webhook_addr(&self.url).is_some(),
            format!("{at}.url"),
            &self.url,
            "http://host:port/path (http only: the control plane calls it directly)",
        );
        p.duration(
            &format!("{at}.timeout"),
            self.timeout,
            Duration::from_millis(1),
            Duration::from_secs(300),
            "a duration from 1ms to 5m",
        );
        p.max_items(&format!("{at}.metadata"), self.metadata.len(), 32);
    }
}

/// The `host:port` and path of an `http://` webhook URL (port default 80), if it is one.
pub fn webhook_addr(url: &str) -> Option<(String, String)> {
    // Printed in checks and logs, and sent as a request line: no controls, no spaces.
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.chars().any(char::is_whitespace) {
        return None;
    }
    let host_port = if authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok_and(|p| p != 0)
    }) {
        authority.to_string()
    } else if authority.contains(':') && !authority.starts_with('[') {
        return None;
    } else {
        format!("{authority}:80")
    };
    Some((host_port, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let spec: CanarySpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut p = Problems::new();
        spec.validate(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    const BASE: &str = "{targetRef: {name: web}, stable: web-v1, canary: web-v2, ";

    #[test]
    fn a_plain_canary_takes_the_defaults() {
        let spec: CanarySpec =
            serde_yaml_ng::from_str(&format!("{BASE}analysis: {{stepWeight: 10}}}}")).unwrap();
        assert!(problems(&format!("{BASE}analysis: {{stepWeight: 10}}}}")).is_empty());
        assert_eq!(spec.analysis.interval, Duration::from_secs(60));
        assert_eq!(spec.analysis.threshold, 5);
        assert_eq!(spec.analysis.min_requests, 20);
        assert_eq!(spec.analysis.metrics.len(), 2);
        assert_eq!(spec.analysis.steps(), [10, 20, 30, 40, 50]);
        assert_eq!(spec.target_ref.kind, "Service");
    }

    #[test]
    fn steps_come_from_the_list_or_step_and_max() {
        let a = |yaml: &str| -> Analysis { serde_yaml_ng::from_str(yaml).unwrap() };
        assert_eq!(a("{stepWeights: [1, 5, 25, 50]}").steps(), [1, 5, 25, 50]);
        assert_eq!(a("{stepWeight: 30, maxWeight: 80}").steps(), [30, 60, 80]);
        assert_eq!(
            a("{stepWeight: 25, maxWeight: 100}").steps(),
            [25, 50, 75, 100]
        );
        assert_eq!(a("{stepWeight: 60}").steps(), [50]);
        assert!(
            a("{iterations: 3, match: [{headers: [{name: x, value: y}]}]}")
                .steps()
                .is_empty()
        );
    }

    #[test]
    fn every_problem_is_named() {
        let got = problems(
            "{targetRef: {kind: Deployment, name: web}, stable: web, canary: web, \
             analysis: {interval: 0s, threshold: 0, stepWeight: 0, stepWeights: [5, 5], \
             minRequests: 0, metrics: [{name: request-success-rate, thresholdRange: {min: 101}}, \
             {name: request-duration, thresholdRange: {min: 1}}]}, \
             webhooks: [{name: a, type: rollout, url: 'https://x/'}, {name: a, type: rollback, url: 'http://h:1/', timeout: 0s}]}",
        );
        let want = [
            "spec.targetRef.kind: \"Deployment\" is not accepted; expected Service",
            "spec.stable: \"web\" is not accepted",
            "spec.canary: \"web\" is not accepted; expected a Service other than the target",
            "spec.canary: \"web\" is not accepted; expected a Service other than spec.stable",
            "spec.analysis.interval: \"0s\"",
            "spec.analysis.threshold: \"0\"",
            "spec.analysis.minRequests: \"0\"",
            "spec.analysis.stepWeights: \"[5, 5]\" is not accepted; expected either stepWeight or stepWeights",
            "spec.analysis.stepWeight: \"0\"",
            "spec.analysis.stepWeights[1]: \"5\" is not accepted; expected weights in increasing order",
            "spec.analysis.metrics[0].thresholdRange.min: \"101\"",
            "spec.analysis.metrics[1].thresholdRange.max: \"none\"",
            "spec.analysis.metrics[1].thresholdRange.min: \"1\"",
            "spec.webhooks[0].url: \"https://x/\" is not accepted; expected http://host:port/path",
            "spec.webhooks[1].timeout: \"0s\"",
            "spec.webhooks[1].name: \"a\" is not accepted; expected each webhook name used once",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g}\n  does not start with\n{w}");
        }
    }

    #[test]
    fn ab_mode_needs_match_and_no_steps() {
        assert!(problems(&format!(
            "{BASE}analysis: {{iterations: 3, match: [{{headers: [{{name: x-canary, value: 'yes'}}]}}]}}}}"
        ))
        .is_empty());
        let got = problems(&format!(
            "{BASE}analysis: {{iterations: 3, stepWeight: 5}}}}"
        ));
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got[0].starts_with("spec.analysis.match: \"[]\""),
            "{}",
            got[0]
        );
        assert!(got[1].contains("not both"), "{}", got[1]);
        let got = problems(&format!(
            "{BASE}analysis: {{stepWeight: 5, match: [{{headers: [{{name: x, value: y}}]}}]}}}}"
        ));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("match only with iterations"), "{}", got[0]);
        let got = problems(&format!(
            "{BASE}analysis: {{iterations: 2, mirror: true, match: [{{headers: [{{name: x, value: y}}]}}]}}}}"
        ));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].starts_with("spec.analysis.mirror: \"true\" is not accepted; expected mirror only with stepWeight"), "{}", got[0]);
        let got = problems(&format!("{BASE}analysis: {{}}}}"));
        assert!(
            got[0].contains("stepWeight (with maxWeight) or stepWeights"),
            "{got:?}"
        );
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(
            webhook_addr("http://127.0.0.1:8080/gate"),
            Some(("127.0.0.1:8080".into(), "/gate".into()))
        );
        assert_eq!(
            webhook_addr("http://loadtester"),
            Some(("loadtester:80".into(), "/".into()))
        );
        for bad in [
            "https://x/",
            "http://",
            "http://u@h/",
            "http://h:0/",
            "http://h:x/",
            "ftp://h/",
            "http://h\u{1b}[2J:80/",
            "http://h/a b",
        ] {
            assert_eq!(webhook_addr(bad), None, "{bad}");
        }
    }
}
