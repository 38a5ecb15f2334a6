//! The rollout's decisions, pure: given a Canary's spec, its recorded status and what was
//! observed since the last check (the canary's requests, the webhooks' answers), the next
//! status. The route follows from the status alone ([`shape`]), so a control plane that
//! restarts or takes over re-asserts the route from what is recorded and goes on from the
//! recorded step.
//!
//! A pass, in order: a restart (new generation or new canary) resets the analysis; a
//! pause holds; an operator's promote or abort is carried out; then by phase:
//!
//! - `Initializing`: the Services must exist; `pre-rollout` webhooks must pass (each
//!   failure is a failed check); then the first step (a mirror phase, the first weight,
//!   or A/B matching).
//! - `Progressing`: each interval, `rollback` webhooks (a 2xx rolls back), `rollout`
//!   webhooks and the metrics over the interval decide the check: passed (next step),
//!   failed (counted; at `threshold` the canary is rolled back to 0 %), or inconclusive
//!   (fewer than `minRequests`: the rollout holds). After the last step, `confirm-promotion`
//!   webhooks gate promotion.
//! - `Promoting`: all traffic on the canary for one interval, then `Succeeded`.

use skein_model::resource::{
    CanaryAction, CanaryEvent, CanaryPhase, CanarySpec, CanaryStatus, CheckRecord, CheckResult,
    MetricName, WebhookType, MAX_HISTORY,
};

/// What the canary's workloads served over the interval just ended.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Requests served.
    pub requests: u64,
    /// Of which failed (5xx, failed gRPC status).
    pub failures: u64,
    /// p99 to response headers, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl Observation {
    /// Percent of requests that succeeded (none: no requests).
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| {
            100.0 * (self.requests - self.failures.min(self.requests)) as f64 / self.requests as f64
        })
    }
}

/// One webhook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAnswer {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: WebhookType,
    /// Whether it answered 2xx in time.
    pub ok: bool,
    /// The answer in words (`answered 503`, `no answer within 2s`).
    pub detail: String,
}

/// What the controller knows at this pass.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// The Canary's `metadata.generation`.
    pub generation: u64,
    /// The digest of the Canary's spec ([`super::digest`]).
    pub spec_revision: String,
    /// The canary Service's digest ([`super::revision`]); `None`: it does not exist.
    pub canary_revision: Option<String>,
    /// Why the rollout cannot start, if something it needs is missing (a Service).
    pub missing: Option<String>,
    /// A full interval's observation, when one was measured (none right after a start,
    /// a resume or a takeover: the interval begins now).
    pub observation: Option<Observation>,
    /// The answers of the webhooks [`due`] named.
    pub hooks: Vec<HookAnswer>,
    /// Now, RFC 3339.
    pub now: String,
}

/// How the owned route sends the target's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `weight` percent to the canary, the rest to stable.
    Split(u32),
    /// Requests matching `analysis.match` to the canary, the rest to stable.
    Ab,
    /// Everything to stable, each request copied to the canary.
    Mirror,
}

/// Whether the status wants the analysis restarted: a rollout never started, a changed
/// spec, or a changed canary Service while the rollout is not promoted.
pub fn restarts(status: &CanaryStatus, pass: &Pass) -> Option<String> {
    if status.observed_generation == 0 && status.spec_revision.is_empty() {
        return Some("rollout started".to_string());
    }
    if !status.spec_revision.is_empty() && status.spec_revision != pass.spec_revision {
        return Some("the Canary's spec changed: analysis restarts".to_string());
    }
    let changed = pass
        .canary_revision
        .as_ref()
        .is_some_and(|r| !status.canary_revision.is_empty() && *r != status.canary_revision);
    (changed && status.phase != CanaryPhase::Succeeded)
        .then(|| "the canary Service changed (a new version): analysis restarts".to_string())
}

/// The step positions of a rollout: the mirror phase (if any) then each weight, or the
/// A/B iterations.
fn positions(spec: &CanarySpec) -> Vec<Shape> {
    let a = &spec.analysis;
    if let Some(n) = a.iterations {
        return vec![Shape::Ab; n as usize];
    }
    let mirror = a.mirror.then_some(Shape::Mirror);
    mirror
        .into_iter()
        .chain(a.steps().into_iter().map(Shape::Split))
        .collect()
}

/// How the route sends traffic for this status.
pub fn shape(spec: &CanarySpec, status: &CanaryStatus) -> Shape {
    match status.phase {
        CanaryPhase::Initializing | CanaryPhase::Failed => Shape::Split(0),
        CanaryPhase::Promoting | CanaryPhase::Succeeded => Shape::Split(100),
        CanaryPhase::Progressing => positions(spec)
            .get(status.iterations as usize)
            .cloned()
            .unwrap_or(Shape::Split(status.canary_weight)),
    }
}

fn weight_of(shape: &Shape) -> u32 {
    match shape {
        Shape::Split(w) => *w,
        Shape::Ab | Shape::Mirror => 0,
    }
}

fn describe(shape: &Shape) -> String {
    match shape {
        Shape::Split(w) => format!("{w}%"),
        Shape::Ab => "matching requests (A/B)".into(),
        Shape::Mirror => "mirrored traffic".into(),
    }
}

/// The webhooks to call at this pass, by type.
pub fn due(spec: &CanarySpec, status: &CanaryStatus) -> Vec<WebhookType> {
    if status.paused || status.requested.is_some() {
        return Vec::new();
    }
    match status.phase {
        CanaryPhase::Initializing => vec![WebhookType::PreRollout],
        CanaryPhase::Progressing => {
            let mut d = vec![WebhookType::Rollback, WebhookType::Rollout];
            if status.iterations as usize + 1 >= positions(spec).len() {
                d.push(WebhookType::ConfirmPromotion);
            }
            d
        }
        _ => Vec::new(),
    }
}

/// The next status after this pass (the input when nothing changes).
pub fn step(spec: &CanarySpec, old: &CanaryStatus, pass: &Pass) -> CanaryStatus {
    let mut s = old.clone();
    let mut next = Next {
        s: &mut s,
        now: &pass.now,
    };
    if let Some(why) = restarts(old, pass) {
        let history = (old.checks.clone(), old.events.clone());
        *next.s = CanaryStatus {
            observed_generation: pass.generation,
            spec_revision: pass.spec_revision.clone(),
            canary_revision: pass.canary_revision.clone().unwrap_or_default(),
            checks: history.0,
            events: history.1,
            last_transition_time: Some(pass.now.clone()),
            ..CanaryStatus::default()
        };
        next.transition(CanaryPhase::Initializing, 0, &why);
        return s;
    }
    if pass.canary_revision.is_some() && old.canary_revision.is_empty() {
        next.s.canary_revision = pass.canary_revision.clone().unwrap_or_default();
    }
    // Labels and annotations change the generation, not the rollout.
    next.s.observed_generation = pass.generation;
    if old.spec_revision.is_empty() {
        next.s.spec_revision = pass.spec_revision.clone();
    }
    match old.requested {
        Some(CanaryAction::Abort) if !old.phase.is_final() => {
            next.s.requested = None;
            next.s.paused = false;
            next.transition(
                CanaryPhase::Failed,
                0,
                "rolled back: aborted by an operator",
            );
            return s;
        }
        Some(CanaryAction::Promote) if pass.missing.is_some() => {
            next.s.requested = None;
            let missing = pass.missing.as_deref().unwrap_or_default();
            next.event(&format!("cannot promote: {missing}"));
            return s;
        }
        Some(CanaryAction::Promote)
            if matches!(
                old.phase,
                CanaryPhase::Initializing | CanaryPhase::Progressing
            ) =>
        {
            next.s.requested = None;
            next.s.paused = false;
            next.transition(
                CanaryPhase::Promoting,
                100,
                "promoting: an operator skipped the remaining steps",
            );
            return s;
        }
        Some(_) => {
            next.s.requested = None;
            next.s.message = format!("nothing to do: the rollout is {:?}", old.phase);
            return s;
        }
        None => {}
    }
    if old.paused {
        next.s.message =
            "paused by an operator: no checks, the weight holds (`skein canary resume`)".into();
        return s;
    }
    match old.phase {
        CanaryPhase::Initializing => next.initialize(spec, pass),
        CanaryPhase::Progressing => next.progress(spec, pass),
        CanaryPhase::Promoting => next.transition(
            CanaryPhase::Succeeded,
            100,
            "promoted: the canary serves all the target's traffic",
        ),
        CanaryPhase::Succeeded | CanaryPhase::Failed => {}
    }
    s
}

struct Next<'a> {
    s: &'a mut CanaryStatus,
    now: &'a str,
}

impl Next<'_> {
    fn transition(&mut self, phase: CanaryPhase, weight: u32, message: &str) {
        if phase != self.s.phase {
            self.s.last_transition_time = Some(self.now.to_string());
        }
        self.s.phase = phase;
        self.s.canary_weight = weight;
        self.event(message);
    }

    fn event(&mut self, message: &str) {
        self.s.message = message.to_string();
        push(
            &mut self.s.events,
            CanaryEvent {
                time: self.now.to_string(),
                phase: self.s.phase,
                weight: self.s.canary_weight,
                message: message.to_string(),
            },
        );
    }

    fn check(&mut self, result: CheckResult, o: Option<&Observation>, message: &str) {
        push(
            &mut self.s.checks,
            CheckRecord {
                time: self.now.to_string(),
                weight: self.s.canary_weight,
                result,
                requests: o.map_or(0, |o| o.requests),
                success_rate: o.and_then(Observation::success_rate).map(round2),
                p99_ms: o.and_then(|o| o.p99_ms).map(round2),
                message: message.to_string(),
            },
        );
    }

    /// Counts a failed check; at the threshold, rolls back.
    fn fail(&mut self, spec: &CanarySpec, o: Option<&Observation>, why: &str) {
        self.s.failed_checks += 1;
        self.check(CheckResult::Failed, o, why);
        let (n, of) = (self.s.failed_checks, spec.analysis.threshold);
        if n >= of {
            self.transition(
                CanaryPhase::Failed,
                0,
                &format!("rolled back to 0% after {n} failed checks (threshold {of}): {why}"),
            );
        } else {
            self.event(&format!(
                "check failed ({n} of {of} before rollback): {why}"
            ));
        }
    }

    fn initialize(&mut self, spec: &CanarySpec, pass: &Pass) {
        if let Some(missing) = &pass.missing {
            self.s.message = format!("waiting: {missing}");
            return;
        }
        let failed: Vec<_> = hooks(pass, WebhookType::PreRollout)
            .filter(|h| !h.ok)
            .map(|h| format!("pre-rollout webhook {} {}", h.name, h.detail))
            .collect();
        if !failed.is_empty() {
            self.fail(spec, None, &failed.join("; "));
            return;
        }
        let first = positions(spec).first().cloned().unwrap_or(Shape::Split(0));
        self.s.iterations = 0;
        let msg = format!("analysis begins: canary receives {}", describe(&first));
        self.transition(CanaryPhase::Progressing, weight_of(&first), &msg);
    }

    fn progress(&mut self, spec: &CanarySpec, pass: &Pass) {
        if let Some(h) = hooks(pass, WebhookType::Rollback).find(|h| h.ok) {
            let why = format!(
                "rolled back to 0%: rollback webhook {} answered 2xx",
                h.name
            );
            self.check(CheckResult::Failed, pass.observation.as_ref(), &why);
            self.transition(CanaryPhase::Failed, 0, &why);
            return;
        }
        let Some(o) = pass.observation else {
            self.s.message = "measuring: the first check comes after a full interval".into();
            return;
        };
        if let Some(missing) = &pass.missing {
            self.fail(spec, Some(&o), missing);
            return;
        }
        let mut failed: Vec<String> = hooks(pass, WebhookType::Rollout)
            .filter(|h| !h.ok)
            .map(|h| format!("rollout webhook {} {}", h.name, h.detail))
            .collect();
        let a = &spec.analysis;
        if failed.is_empty() && o.requests < a.min_requests {
            let why = format!(
                "inconclusive: the canary served {} requests in the interval, fewer than minRequests {}; the rollout holds",
                o.requests, a.min_requests
            );
            self.check(CheckResult::Inconclusive, Some(&o), &why);
            self.s.message = why;
            return;
        }
        if o.requests >= a.min_requests {
            failed.extend(metric_failures(spec, &o));
        }
        if !failed.is_empty() {
            self.fail(spec, Some(&o), &failed.join("; "));
            return;
        }
        let values = values(&o);
        let steps = positions(spec);
        let done = self.s.iterations as usize + 1;
        if done < steps.len() {
            self.check(CheckResult::Passed, Some(&o), "");
            let from = describe(&steps[done - 1]);
            let to = &steps[done];
            self.s.iterations = done as u32;
            self.s.canary_weight = weight_of(to);
            self.event(&format!(
                "check passed ({values}): canary {from} → {}",
                describe(to)
            ));
            return;
        }
        self.check(CheckResult::Passed, Some(&o), "");
        let waiting: Vec<_> = hooks(pass, WebhookType::ConfirmPromotion)
            .filter(|h| !h.ok)
            .map(|h| format!("confirm-promotion webhook {} {}", h.name, h.detail))
            .collect();
        if !waiting.is_empty() {
            self.s.message = format!(
                "last step passed ({values}); waiting for approval: {}",
                waiting.join("; ")
            );
            return;
        }
        self.s.iterations = done as u32;
        self.transition(
            CanaryPhase::Promoting,
            100,
            &format!("every step passed ({values}): promoting, the canary receives 100%"),
        );
    }
}

fn hooks(pass: &Pass, kind: WebhookType) -> impl Iterator<Item = &HookAnswer> {
    pass.hooks.iter().filter(move |h| h.kind == kind)
}

/// The metrics out of range, in words.
fn metric_failures(spec: &CanarySpec, o: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    for m in &spec.analysis.metrics {
        let r = m.threshold_range;
        match m.name {
            MetricName::RequestSuccessRate => {
                let (Some(rate), Some(min)) = (o.success_rate(), r.min) else {
                    continue;
                };
                if rate < min {
                    out.push(format!(
                        "request-success-rate {:.2}% < min {min}% ({} of {} requests failed)",
                        rate, o.failures, o.requests
                    ));
                }
            }
            MetricName::RequestDuration => {
                let (Some(p99), Some(max)) = (o.p99_ms, r.max) else {
                    continue;
                };
                if p99 > max {
                    out.push(format!("request-duration p99 {p99:.1}ms > max {max}ms"));
                }
            }
        }
    }
    out
}

fn values(o: &Observation) -> String {
    let rate = o.success_rate().map_or("-".into(), |r| format!("{r:.2}%"));
    let p99 = o.p99_ms.map_or("-".into(), |p| format!("{p:.1}ms"));
    format!("{} requests, success {rate}, p99 {p99}", o.requests)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn push<T>(list: &mut Vec<T>, item: T) {
    list.push(item);
    if list.len() > MAX_HISTORY {
        let extra = list.len() - MAX_HISTORY;
        list.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(analysis: &str) -> CanarySpec {
        serde_yaml_ng::from_str(&format!(
            "{{targetRef: {{name: web}}, stable: web-v1, canary: web-v2, analysis: {analysis}}}"
        ))
        .unwrap()
    }

    fn pass(o: Option<Observation>) -> Pass {
        Pass {
            generation: 1,
            spec_revision: "s1".into(),
            canary_revision: Some("r1".into()),
            observation: o,
            now: "2026-12-03T00:00:00Z".into(),
            ..Pass::default()
        }
    }

    fn good(n: u64) -> Option<Observation> {
        Some(Observation {
            requests: n,
            failures: 0,
            p99_ms: Some(3.0),
        })
    }

    fn run(spec: &CanarySpec, mut s: CanaryStatus, passes: &[Pass]) -> CanaryStatus {
        for p in passes {
            s = step(spec, &s, p);
        }
        s
    }

    #[test]
    fn a_healthy_canary_walks_every_step_then_promotes() {
        let spec = spec("{stepWeights: [1, 5, 25, 50], minRequests: 10}");
        let mut s = step(&spec, &CanaryStatus::default(), &pass(None));
        assert_eq!((s.phase, s.canary_weight), (CanaryPhase::Initializing, 0));
        assert_eq!(s.events[0].message, "rollout started");
        assert_eq!(
            s.last_transition_time.as_deref(),
            Some("2026-12-03T00:00:00Z")
        );
        let mut seen = vec![];
        for _ in 0..6 {
            s = step(&spec, &s, &pass(good(100)));
            seen.push((s.phase, s.canary_weight));
            assert_eq!(shape(&spec, &s), Shape::Split(s.canary_weight), "{s:?}");
        }
        use CanaryPhase::*;
        assert_eq!(
            seen,
            [
                (Progressing, 1),
                (Progressing, 5),
                (Progressing, 25),
                (Progressing, 50),
                (Promoting, 100),
                (Succeeded, 100)
            ]
        );
        assert_eq!(s.checks.len(), 4);
        assert!(s.checks.iter().all(|c| c.result == CheckResult::Passed));
        assert_eq!(shape(&spec, &s), Shape::Split(100));
        // Finished: further passes change nothing.
        assert_eq!(step(&spec, &s, &pass(good(100))), s);
    }

    #[test]
    fn failed_checks_roll_back_at_the_threshold_and_say_why() {
        let spec = spec("{stepWeight: 10, threshold: 2, minRequests: 10}");
        let bad = Some(Observation {
            requests: 100,
            failures: 20,
            p99_ms: Some(3.0),
        });
        let s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        assert_eq!((s.phase, s.canary_weight), (CanaryPhase::Progressing, 10));
        let s = step(&spec, &s, &pass(bad));
        assert_eq!(
            (s.phase, s.canary_weight, s.failed_checks),
            (CanaryPhase::Progressing, 10, 1)
        );
        assert!(s.message.contains("check failed (1 of 2 before rollback): request-success-rate 80.00% < min 99% (20 of 100 requests failed)"), "{}", s.message);
        let s = step(&spec, &s, &pass(bad));
        assert_eq!((s.phase, s.canary_weight), (CanaryPhase::Failed, 0));
        assert!(
            s.message
                .starts_with("rolled back to 0% after 2 failed checks (threshold 2)"),
            "{}",
            s.message
        );
        assert_eq!(s.checks.last().unwrap().success_rate, Some(80.0));
        assert_eq!(shape(&spec, &s), Shape::Split(0));
    }

    #[test]
    fn a_slow_canary_fails_its_checks() {
        let spec = spec("{stepWeight: 10, threshold: 1, minRequests: 1, metrics: [{name: request-duration, thresholdRange: {max: 100}}]}");
        let slow = Some(Observation {
            requests: 50,
            failures: 0,
            p99_ms: Some(250.0),
        });
        let s = run(
            &spec,
            CanaryStatus::default(),
            &[pass(None), pass(None), pass(slow)],
        );
        assert_eq!(s.phase, CanaryPhase::Failed);
        assert!(
            s.message
                .contains("request-duration p99 250.0ms > max 100ms"),
            "{}",
            s.message
        );
    }

    #[test]
    fn too_little_traffic_holds_and_never_promotes() {
        let spec = spec("{stepWeights: [50], minRequests: 20}");
        let mut s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        for _ in 0..10 {
            s = step(&spec, &s, &pass(good(19)));
        }
        assert_eq!(
            (s.phase, s.canary_weight, s.failed_checks),
            (CanaryPhase::Progressing, 50, 0)
        );
        assert!(s
            .checks
            .iter()
            .all(|c| c.result == CheckResult::Inconclusive));
        assert!(
            s.message
                .contains("served 19 requests in the interval, fewer than minRequests 20"),
            "{}",
            s.message
        );
        // No observation at all (a fresh leader) measures first.
        let held = step(&spec, &s, &pass(None));
        assert_eq!(held.checks, s.checks);
        assert!(held.message.starts_with("measuring"));
    }

    #[test]
    fn ab_mode_sends_matches_then_promotes_after_iterations() {
        let spec = spec(
            "{iterations: 3, minRequests: 5, match: [{headers: [{name: x-canary, value: 'yes'}]}]}",
        );
        let mut s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        assert_eq!(shape(&spec, &s), Shape::Ab);
        for _ in 0..2 {
            s = step(&spec, &s, &pass(good(10)));
            assert_eq!(
                (s.phase, shape(&spec, &s)),
                (CanaryPhase::Progressing, Shape::Ab)
            );
        }
        s = step(&spec, &s, &pass(good(10)));
        assert_eq!(s.phase, CanaryPhase::Promoting);
        assert_eq!(s.checks.len(), 3);
    }

    #[test]
    fn mirror_comes_first() {
        let spec = spec("{stepWeights: [20], mirror: true, minRequests: 1}");
        let s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        assert_eq!(shape(&spec, &s), Shape::Mirror);
        assert_eq!(s.canary_weight, 0);
        let s = step(&spec, &s, &pass(good(5)));
        assert_eq!((shape(&spec, &s), s.canary_weight), (Shape::Split(20), 20));
        assert!(
            s.message.contains("canary mirrored traffic → 20%"),
            "{}",
            s.message
        );
    }

    #[test]
    fn webhooks_gate_start_checks_and_promotion() {
        let spec = spec("{stepWeights: [10], threshold: 3, minRequests: 1}");
        let answer = |kind, ok| HookAnswer {
            name: "h".into(),
            kind,
            ok,
            detail: if ok {
                "answered 200"
            } else {
                "no answer within 1s"
            }
            .into(),
        };
        let with = |o, hooks: Vec<HookAnswer>| Pass { hooks, ..pass(o) };
        let s = step(&spec, &CanaryStatus::default(), &pass(None));
        assert_eq!(due(&spec, &s), [WebhookType::PreRollout]);
        // A failing pre-rollout: a failed check, still initializing.
        let s = step(
            &spec,
            &s,
            &with(None, vec![answer(WebhookType::PreRollout, false)]),
        );
        assert_eq!((s.phase, s.failed_checks), (CanaryPhase::Initializing, 1));
        assert!(
            s.message
                .contains("pre-rollout webhook h no answer within 1s"),
            "{}",
            s.message
        );
        let s = step(
            &spec,
            &s,
            &with(None, vec![answer(WebhookType::PreRollout, true)]),
        );
        assert_eq!((s.phase, s.canary_weight), (CanaryPhase::Progressing, 10));
        // The only step is the last: confirm-promotion is due, and holds while refused.
        assert_eq!(
            due(&spec, &s),
            [
                WebhookType::Rollback,
                WebhookType::Rollout,
                WebhookType::ConfirmPromotion
            ]
        );
        let held = step(
            &spec,
            &s,
            &with(good(5), vec![answer(WebhookType::ConfirmPromotion, false)]),
        );
        assert_eq!(
            (held.phase, held.failed_checks),
            (CanaryPhase::Progressing, 1)
        );
        assert!(
            held.message.contains("waiting for approval"),
            "{}",
            held.message
        );
        // A failing rollout webhook fails the check even with good metrics.
        let failed = step(
            &spec,
            &held,
            &with(good(5), vec![answer(WebhookType::Rollout, false)]),
        );
        assert_eq!(failed.failed_checks, 2);
        let promoted = step(
            &spec,
            &failed,
            &with(good(5), vec![answer(WebhookType::ConfirmPromotion, true)]),
        );
        assert_eq!(promoted.phase, CanaryPhase::Promoting);
        // A rollback webhook answering 2xx rolls back at once.
        let back = step(
            &spec,
            &held,
            &with(good(5), vec![answer(WebhookType::Rollback, true)]),
        );
        assert_eq!((back.phase, back.canary_weight), (CanaryPhase::Failed, 0));
    }

    #[test]
    fn operators_pause_promote_and_abort() {
        let spec = spec("{stepWeights: [10, 20], minRequests: 1}");
        let mut s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        s.paused = true;
        let p = step(&spec, &s, &pass(good(5)));
        assert_eq!((p.canary_weight, p.checks.len()), (10, 0));
        assert!(p.message.starts_with("paused"));
        s.paused = false;
        s.requested = Some(CanaryAction::Promote);
        let p = step(&spec, &s, &pass(good(5)));
        assert_eq!(
            (p.phase, p.canary_weight, p.requested),
            (CanaryPhase::Promoting, 100, None)
        );
        let gone = Pass {
            missing: Some("Service default/web-v2 does not exist".into()),
            ..pass(good(5))
        };
        let refused = step(&spec, &s, &gone);
        assert_eq!(
            (refused.phase, refused.requested),
            (CanaryPhase::Progressing, None)
        );
        assert_eq!(
            refused.message,
            "cannot promote: Service default/web-v2 does not exist"
        );
        s.requested = Some(CanaryAction::Abort);
        let a = step(&spec, &s, &pass(good(5)));
        assert_eq!((a.phase, a.canary_weight), (CanaryPhase::Failed, 0));
        assert_eq!(
            a.events.last().unwrap().message,
            "rolled back: aborted by an operator"
        );
    }

    #[test]
    fn a_new_generation_or_canary_restarts_but_a_promoted_one_stays() {
        let spec = spec("{stepWeights: [10], minRequests: 1}");
        let s = run(
            &spec,
            CanaryStatus::default(),
            &[pass(None), pass(None), pass(good(5))],
        );
        assert_eq!(s.phase, CanaryPhase::Promoting);
        let changed = Pass {
            canary_revision: Some("r2".into()),
            ..pass(good(5))
        };
        let r = step(&spec, &s, &changed);
        assert_eq!(
            (r.phase, r.canary_weight, r.canary_revision.as_str()),
            (CanaryPhase::Initializing, 0, "r2")
        );
        assert!(r.message.contains("canary Service changed"));
        let done = step(&spec, &s, &pass(good(5)));
        assert_eq!(done.phase, CanaryPhase::Succeeded);
        assert_eq!(step(&spec, &done, &changed).phase, CanaryPhase::Succeeded);
        // New labels or annotations: a new generation, the same rollout.
        let relabelled = Pass {
            generation: 2,
            ..pass(None)
        };
        let same = step(&spec, &done, &relabelled);
        assert_eq!(
            (same.phase, same.observed_generation),
            (CanaryPhase::Succeeded, 2)
        );
        let next_spec = Pass {
            generation: 3,
            spec_revision: "s2".into(),
            ..pass(None)
        };
        let r = step(&spec, &done, &next_spec);
        assert_eq!(
            (r.phase, r.observed_generation, r.spec_revision.as_str()),
            (CanaryPhase::Initializing, 3, "s2")
        );
        assert_eq!(r.message, "the Canary's spec changed: analysis restarts");
        assert!(r.events.len() > done.events.len(), "history is kept");
    }

    #[test]
    fn a_service_gone_mid_rollout_fails_the_checks() {
        let spec = spec("{stepWeights: [10, 20], threshold: 1, minRequests: 1}");
        let s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        let gone = Pass {
            missing: Some("Service default/web-v2 does not exist".into()),
            ..pass(good(5))
        };
        let s = step(&spec, &s, &gone);
        assert_eq!((s.phase, s.canary_weight), (CanaryPhase::Failed, 0));
        assert!(
            s.message.ends_with("Service default/web-v2 does not exist"),
            "{}",
            s.message
        );
        // Before the rollout starts, a missing Service only waits.
        let w = step(&spec, &CanaryStatus::default(), &pass(None));
        let w = step(
            &spec,
            &w,
            &Pass {
                missing: gone.missing.clone(),
                ..pass(None)
            },
        );
        assert_eq!((w.phase, w.failed_checks), (CanaryPhase::Initializing, 0));
        assert!(w.message.starts_with("waiting: Service"), "{}", w.message);
    }

    #[test]
    fn history_is_bounded() {
        let spec = spec("{stepWeights: [50], minRequests: 20}");
        let mut s = run(&spec, CanaryStatus::default(), &[pass(None), pass(None)]);
        for _ in 0..200 {
            s = step(&spec, &s, &pass(good(1)));
        }
        assert_eq!(s.checks.len(), MAX_HISTORY);
    }
}
