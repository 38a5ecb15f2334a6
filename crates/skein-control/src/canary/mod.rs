//! The canary controller: progressive delivery from the telemetry the control plane already
//! holds, no Prometheus and no second controller. It runs on the leader only (always, with
//! the embedded store).
//!
//! For each `Canary`, every interval: call the webhooks due ([`webhook`]), measure what the
//! canary's workloads served since the last check ([`metrics`]), decide ([`plan::step`]),
//! record the new status (checks, events, weight) in the store, then make the route it
//! owns ([`route`]) send traffic as the status says. The route follows from the recorded
//! status alone, so a restarted or new leader re-asserts it and continues at the recorded
//! step: the interval in progress when leadership changed is measured again from the
//! takeover, never skipped and never counted on half its data.
//!
//! Operators' requests (`skein canary promote|abort|pause|resume`) are written into the
//! status by the API and carried out at the next pass (within [`TICK`]).
//!
//! With several replicas (etcd) each proxy reports to the replica it is connected to;
//! [`shared`] brings every replica's share of the canary's traffic to the leader.

pub mod metrics;
pub mod plan;
pub mod route;
pub mod shared;
pub mod webhook;

use crate::registry::Registry;
use crate::state::MeshState;
use crate::telemetry::Served;
use metrics::MetricsSource;
use plan::Pass;
use skein_model::resource::{
    Canary, CanaryPhase, CanaryStatus, Kind, Resource, ResourceKey, WebhookType,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the controller looks at every Canary (operators' requests and new
/// generations are acted on this soon; checks come every `analysis.interval`).
pub const TICK: Duration = Duration::from_millis(250);

/// What the controller remembers of one Canary between passes (in memory: a new leader
/// starts a fresh interval).
struct Track {
    /// Totals at the start of the interval being measured.
    baseline: BTreeMap<String, Served>,
    /// The canary's workloads then: measured at the end too, even if gone from the
    /// Service meanwhile (their failures count).
    workloads: Vec<String>,
    /// When that interval started.
    since: Instant,
    /// When the next pass is due.
    due: Instant,
    /// The status the baseline belongs to: a change by anyone else (an operator, another
    /// replica) starts a new interval.
    seen: (CanaryPhase, u32, bool, u64),
}

/// Runs the controller until `shutdown`, while `leader` says this replica leads.
pub async fn run(
    registry: Arc<Registry>,
    source: Arc<dyn MetricsSource>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut tracks: HashMap<ResourceKey, Track> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes: tokio::task::JoinSet<Option<Track>> = tokio::task::JoinSet::new();
    // The Canary each running pass is for (a pass that panics still frees its Canary).
    let mut busy: HashMap<tokio::task::Id, ResourceKey> = HashMap::new();
    let mut ticks: u64 = 0;
    // With the embedded store leadership never changes (its sender is gone at once).
    let mut follow_leader = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = leader.changed(), if follow_leader => {
                follow_leader = changed.is_ok();
            }
            _ = tick.tick() => {}
            Some(done) = passes.join_next_with_id() => {
                let (id, track) = match done {
                    Ok((id, track)) => (id, track),
                    Err(e) => {
                        if !e.is_cancelled() {
                            tracing::error!(error = %e, "a canary pass failed; the next one starts afresh");
                        }
                        (e.id(), None)
                    }
                };
                if let (Some(key), Some(track)) = (busy.remove(&id), track) {
                    tracks.insert(key, track);
                }
                continue;
            }
        }
        if !*leader.borrow() {
            // No longer leading: passes in flight stop (no more webhooks or writes).
            passes.abort_all();
            busy.clear();
            tracks.clear();
            continue;
        }
        let canaries = registry.list(Kind::Canary, None);
        ticks += 1;
        if ticks.is_multiple_of(8) {
            route::release_orphans(&registry, &canaries).await;
        }
        let keys: std::collections::HashSet<ResourceKey> =
            canaries.iter().map(Resource::key).collect();
        tracks.retain(|k, _| keys.contains(k));
        for resource in canaries {
            let Resource::Canary(canary) = resource else {
                continue;
            };
            let key = resource_key(&canary);
            if busy.values().any(|k| *k == key) {
                continue;
            }
            let track = tracks.remove(&key);
            let (registry, source) = (registry.clone(), source.clone());
            let handle =
                passes.spawn(async move { reconcile(&registry, &*source, *canary, track).await });
            busy.insert(handle.id(), key);
        }
    }
}

fn resource_key(c: &Canary) -> ResourceKey {
    ResourceKey::new(Kind::Canary, &c.metadata.namespace, &c.metadata.name)
}

/// A digest of `value`'s JSON (FNV-1a), stable across restarts and replicas: of the
/// canary Service's spec (a new version) and of the Canary's spec (a new rollout).
pub fn digest<T: serde::Serialize>(value: &T) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The workloads `service` (in `namespace`) selects now.
pub(crate) fn workloads_of(state: &MeshState, namespace: &str, service: &str) -> Vec<String> {
    let Some(view) = state
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == service)
    else {
        return Vec::new();
    };
    state
        .workloads
        .iter()
        .filter(|w| view.selects(w))
        .map(|w| w.name.clone())
        .collect()
}

/// One pass over one Canary; returns what to remember.
async fn reconcile(
    registry: &Registry,
    source: &dyn MetricsSource,
    canary: Canary,
    track: Option<Track>,
) -> Option<Track> {
    let key = resource_key(&canary);
    let ns = canary.metadata.namespace.clone();
    let spec = &canary.spec;
    let status = canary.status.clone().unwrap_or_default();
    let now = Instant::now();
    let interval = spec.analysis.interval;
    let state = registry.subscribe().borrow().clone();
    let workloads = workloads_of(&state, &ns, &spec.canary);
    let totals = |also: &[String]| {
        let mut all = workloads.clone();
        all.extend(also.iter().filter(|w| !workloads.contains(w)).cloned());
        source.served(&ns, &all)
    };
    let service = |name: &str| registry.get(&ResourceKey::new(Kind::Service, &ns, name));
    let canary_revision = match service(&spec.canary) {
        Some(Resource::Service(s)) => Some(digest(&s.spec)),
        _ => None,
    };
    let mut missing: Vec<String> = [&spec.target_ref.name, &spec.stable, &spec.canary]
        .into_iter()
        .filter(|name| service(name).is_none())
        .map(|name| format!("Service {ns}/{name} does not exist"))
        .collect();
    if missing.is_empty() && workloads.is_empty() {
        // Its share of the traffic would fail: not a start, and a failed check later.
        missing.push(format!(
            "Service {ns}/{} selects no workloads (none registered with its labels and an account it admits)",
            spec.canary
        ));
    }
    // With no stable Service the owned route would send the target's traffic nowhere.
    let routable = service(&spec.stable).is_some();
    let mut pass = Pass {
        generation: canary.metadata.generation,
        spec_revision: digest(&canary.spec),
        canary_revision,
        missing: (!missing.is_empty()).then(|| missing.join("; ")),
        now: crate::registry::now_rfc3339(),
        ..Pass::default()
    };
    let seen = (
        status.phase,
        status.iterations,
        status.paused,
        status.failed_checks as u64,
    );
    // A pause or resume is acknowledged at once; a restart or an operator's request is
    // carried out at once.
    let toggled = track.as_ref().is_some_and(|t| t.seen.2 != status.paused);
    let restart = plan::restarts(&status, &pass).is_some();
    // A new generation with the same spec (labels, annotations) is only recorded.
    let relabelled = status.observed_generation != pass.generation;
    let urgent = restart || status.requested.is_some() || toggled || relabelled;
    if routable {
        // Every tick (a comparison unless something changed it): whatever the last leader
        // managed to write, or someone deleted, the route follows the recorded status.
        route::ensure(registry, &canary, &status).await;
    }
    if track.is_none() && !source.ready() {
        // Not yet able to take a baseline that covers every replica: next tick.
        return None;
    }
    let mut track = match track {
        Some(t) if t.seen == seen => t,
        // New to this leader, or its status changed under us: a fresh interval from now.
        _ => Track {
            baseline: totals(&[]),
            workloads: workloads.clone(),
            since: now,
            due: if status.phase == CanaryPhase::Initializing {
                now
            } else {
                now + interval
            },
            seen,
        },
    };
    if !urgent && now < track.due {
        return Some(track);
    }
    if status.phase.is_final() && !urgent {
        track.due = now + interval;
        return Some(track);
    }
    let measured = totals(&track.workloads);
    if status.phase == CanaryPhase::Progressing
        && now.duration_since(track.since) + TICK >= interval
    {
        pass.observation = Some(metrics::observe(
            &track.baseline,
            &track.workloads,
            &measured,
        ));
    }
    // Webhooks are called at passes that decide something: not at a restart, not while a
    // Service is missing, not before a full interval was measured.
    let unmeasured = status.phase == CanaryPhase::Progressing && pass.observation.is_none();
    let due = if restart || pass.missing.is_some() || unmeasured {
        Vec::new()
    } else {
        plan::due(spec, &status)
    };
    let mut answers = Vec::new();
    for hook in spec.webhooks.iter().filter(|h| due.contains(&h.kind)) {
        answers.push(call(&canary, &status, hook));
    }
    pass.hooks = futures_util::future::join_all(answers).await;
    let mut next = plan::step(spec, &status, &pass);
    let ended = next.phase.is_final() && !status.phase.is_final();
    for e in next
        .events
        .iter()
        .skip(status.events.len().min(next.events.len()))
    {
        if !status.events.contains(e) {
            tracing::info!(canary = %key, phase = ?e.phase, weight = e.weight, "{}", e.message);
        }
    }
    next.next_check_time = (!next.phase.is_final()).then(|| rfc3339_in(interval));
    if next != status && write_status(registry, &canary, next.clone()).await && ended {
        // Once the end is recorded (never twice: a lost compare-and-set calls nothing).
        if let Some(Resource::Canary(written)) = registry.get(&key) {
            let mut last = next.clone();
            post_rollout(&written, &mut last).await;
            if last != next {
                write_status(registry, &written, last).await;
            }
        }
    }
    let recorded = registry_status(registry, &key).unwrap_or(status);
    if routable {
        route::ensure(registry, &canary, &recorded).await;
    }
    Some(Track {
        // The next interval starts where this one was measured: traffic summarised while
        // webhooks answered counts in it.
        baseline: measured,
        workloads,
        since: now,
        // After a restart, the rollout begins at the next tick, not an interval later.
        due: if restart { now } else { now + interval },
        seen: seen_of(&recorded),
    })
}

fn seen_of(s: &CanaryStatus) -> (CanaryPhase, u32, bool, u64) {
    (s.phase, s.iterations, s.paused, s.failed_checks as u64)
}

fn registry_status(registry: &Registry, key: &ResourceKey) -> Option<CanaryStatus> {
    match registry.get(key) {
        Some(Resource::Canary(c)) => c.status,
        _ => None,
    }
}

async fn call(
    canary: &Canary,
    status: &CanaryStatus,
    hook: &skein_model::resource::Webhook,
) -> plan::HookAnswer {
    let payload = webhook::Payload {
        name: &canary.metadata.name,
        namespace: &canary.metadata.namespace,
        phase: status.phase,
        kind: hook.kind.as_str(),
        canary_weight: status.canary_weight,
        metadata: &hook.metadata,
    };
    webhook::call(hook, &payload).await
}

/// Calls the `post-rollout` webhooks once the rollout ended; their answers become events.
async fn post_rollout(canary: &Canary, next: &mut CanaryStatus) {
    let hooks: Vec<_> = canary
        .spec
        .webhooks
        .iter()
        .filter(|h| h.kind == WebhookType::PostRollout)
        .collect();
    let status = next.clone();
    let answers =
        futures_util::future::join_all(hooks.iter().map(|h| call(canary, &status, h))).await;
    for a in answers {
        let message = format!("post-rollout webhook {} {}", a.name, a.detail);
        next.events.push(skein_model::resource::CanaryEvent {
            time: crate::registry::now_rfc3339(),
            phase: next.phase,
            weight: next.canary_weight,
            message,
        });
    }
    let extra = next
        .events
        .len()
        .saturating_sub(skein_model::resource::MAX_HISTORY);
    next.events.drain(..extra);
}

/// Writes `status` if the Canary is still at the version read (a newer one, written by an
/// operator or another replica, wins: the next pass reads it).
async fn write_status(registry: &Registry, canary: &Canary, status: CanaryStatus) -> bool {
    let mut c = canary.clone();
    c.status = Some(status);
    match registry
        .apply_with(vec![Resource::Canary(Box::new(c))], true)
        .await
    {
        Ok(_) => true,
        Err(crate::registry::RegistryError::Store(crate::store::StoreError::Conflict {
            ..
        })) => {
            tracing::debug!(canary = %resource_key(canary), "status changed meanwhile; reading it again");
            false
        }
        Err(e) => {
            tracing::warn!(canary = %resource_key(canary), error = %e, "cannot record the canary's status; retrying at the next pass");
            false
        }
    }
}

/// RFC 3339 of now plus `d`.
fn rfc3339_in(d: Duration) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|n| (n + d).as_secs())
        .unwrap_or(0);
    skein_model::time::UtcTime::from_unix(secs).rfc3339()
}
