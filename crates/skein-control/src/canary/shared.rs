//! Canary analysis across control-plane replicas (etcd). Each proxy reports its telemetry
//! to the replica it is connected to, so no replica's [`Central`] alone holds all of a
//! canary's traffic. Every replica therefore publishes, every [`PUBLISH_EVERY`], what the
//! workloads of each running Canary's canary Service served according to its own proxies
//! (one store key per replica, [`PREFIX`]`<replica>`, totals since each proxy's record on
//! that replica began); the leader reads the records of the replicas that are alive
//! ([`crate::replicas::live`]) and adds its own live view ([`Shared`], a
//! [`MetricsSource`]).
//!
//! Totals are keyed by replica and workload, so a proxy that moves to another replica
//! counts from zero there (its old replica's record goes when that replica dies: what it
//! had not published yet is not counted, never counted twice). Published totals are at
//! most [`PUBLISH_EVERY`] older than the leader's own, and are counted in the interval in
//! which they arrive.

use super::metrics::MetricsSource;
use crate::registry::Registry;
use crate::store::{Op, Store};
use crate::telemetry::{Central, Served};
use serde::{Deserialize, Serialize};
use skein_model::resource::{Kind, Resource};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Store keys of the replicas' records (under the store's own prefix).
pub const PREFIX: &str = "canary-served/";

/// How often each replica publishes, and the leader reads.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// What one replica's proxies report for the workloads of running Canaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    served: Vec<Entry>,
}

/// One workload's totals, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    namespace: String,
    workload: String,
    requests: u64,
    failures: u64,
    /// Non-empty latency buckets: (index, count).
    buckets: Vec<(u16, u64)>,
    sum_us: u64,
}

impl Entry {
    fn new(namespace: &str, workload: String, s: &Served) -> Entry {
        let buckets = s
            .latency
            .counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u16, *n))
            .collect();
        Entry {
            namespace: namespace.to_string(),
            workload,
            requests: s.requests,
            failures: s.failures,
            buckets,
            sum_us: s.latency.sum_us,
        }
    }

    fn served(&self) -> Served {
        let mut s = Served {
            requests: self.requests,
            failures: self.failures,
            ..Served::default()
        };
        for &(i, n) in &self.buckets {
            if let Some(c) = s.latency.counts.get_mut(usize::from(i)) {
                *c = n;
            }
        }
        s.latency.sum_us = self.sum_us;
        s
    }
}

/// The workloads whose totals matter now: those of each unfinished Canary's canary
/// Service, by namespace.
fn wanted(registry: &Registry) -> Vec<(String, Vec<String>)> {
    let state = registry.subscribe().borrow().clone();
    registry
        .list(Kind::Canary, None)
        .into_iter()
        .filter_map(|r| match r {
            Resource::Canary(c) => Some(c),
            _ => None,
        })
        .filter(|c| !c.status.as_ref().is_some_and(|s| s.phase.is_final()))
        .map(|c| {
            let ns = c.metadata.namespace.clone();
            let workloads = super::workloads_of(&state, &ns, &c.spec.canary);
            (ns, workloads)
        })
        .collect()
}

/// Publishes this replica's record every [`PUBLISH_EVERY`] until `stop` (every replica,
/// leader or not: the leader's own record is not read, its live view is).
pub async fn publish(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    central: Arc<Central>,
    replica: String,
    stop: CancellationToken,
) {
    let key = format!("{PREFIX}{replica}");
    let mut last: Option<Record> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // A replica that stops takes its record with it (a killed one's is removed
                // by the leader once its presence is gone).
                if last.is_some() {
                    let _ = store.commit(vec![Op::Delete { key, expect: None }]).await;
                }
                return;
            }
            _ = tokio::time::sleep(PUBLISH_EVERY) => {}
        }
        let mut record = Record::default();
        for (ns, workloads) in wanted(&registry) {
            for (w, s) in central.served(&ns, &workloads) {
                record.served.push(Entry::new(&ns, w, &s));
            }
        }
        record
            .served
            .sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
        record.served.dedup();
        if last.as_ref() == Some(&record) || (last.is_none() && record.served.is_empty()) {
            continue;
        }
        let Ok(value) = serde_json::to_vec(&record) else {
            continue;
        };
        let put = Op::Put {
            key: key.clone(),
            value,
            expect: None,
        };
        match store.commit(vec![put]).await {
            Ok(_) => last = Some(record),
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish this replica's canary traffic; retrying")
            }
        }
    }
}

/// The leader's view of every canary's traffic: its own proxies' live totals plus the
/// records live replicas published.
pub struct Shared {
    central: Arc<Central>,
    replica: String,
    /// Other live replicas' published entries: (replica, entry).
    others: RwLock<Vec<(String, Entry)>>,
    /// Whether `others` was read since this replica became leader.
    fresh: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A view for `replica` over its own `central`.
    pub fn new(central: Arc<Central>, replica: &str) -> Arc<Shared> {
        Arc::new(Shared {
            central,
            replica: replica.to_string(),
            others: RwLock::new(Vec::new()),
            fresh: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Reads the live replicas' records every [`PUBLISH_EVERY`] while `leader` says this
    /// replica leads, until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        mut leader: watch::Receiver<bool>,
        stop: CancellationToken,
    ) {
        use std::sync::atomic::Ordering;
        loop {
            if !*leader.borrow_and_update() {
                self.fresh.store(false, Ordering::SeqCst);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = leader.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match read(&*store, &self.replica).await {
                Ok(others) => {
                    *self.others.write().unwrap_or_else(|p| p.into_inner()) = others;
                    self.fresh.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the replicas' canary traffic; using the last read")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PUBLISH_EVERY) => {}
            }
        }
    }
}

/// The entries of every live replica but `own`.
async fn read(
    store: &dyn Store,
    own: &str,
) -> Result<Vec<(String, Entry)>, crate::store::StoreError> {
    let live = crate::replicas::live(store).await?;
    let (records, _) = store.list(PREFIX).await?;
    let mut out = Vec::new();
    let mut dead = Vec::new();
    for r in records {
        let Some(replica) = r.key.strip_prefix(PREFIX) else {
            continue;
        };
        if !live.contains(replica) && replica != own {
            dead.push(Op::Delete {
                key: r.key.clone(),
                expect: Some(r.revision),
            });
            continue;
        }
        if replica == own {
            continue;
        }
        match serde_json::from_slice::<Record>(&r.value) {
            Ok(record) => out.extend(record.served.into_iter().map(|e| (replica.to_string(), e))),
            Err(e) => {
                tracing::warn!(key = %r.key, error = %e, "unreadable canary traffic record; ignoring it")
            }
        }
    }
    for op in dead {
        // The leader removes dead replicas' records; a conflict means it came back.
        let _ = store.commit(vec![op]).await;
    }
    Ok(out)
}

impl MetricsSource for Shared {
    fn ready(&self) -> bool {
        self.fresh.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn served(&self, namespace: &str, workloads: &[String]) -> BTreeMap<String, Served> {
        let mut out: BTreeMap<String, Served> = self
            .central
            .served(namespace, workloads)
            .into_iter()
            .map(|(w, s)| (format!("{}/{w}", self.replica), s))
            .collect();
        let others = self.others.read().unwrap_or_else(|p| p.into_inner());
        for (replica, e) in others.iter() {
            if e.namespace == namespace && workloads.contains(&e.workload) {
                out.insert(format!("{replica}/{}", e.workload), e.served());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_views_add_up_by_replica() {
        let mut s = Served {
            requests: 10,
            failures: 2,
            ..Served::default()
        };
        s.latency.counts[5] = 7;
        s.latency.counts[9] = 3;
        s.latency.sum_us = 1234;
        let e = Entry::new("shop", "web-v2-1".into(), &s);
        assert_eq!(e.buckets, [(5, 7), (9, 3)]);
        let json = serde_json::to_string(&e).unwrap();
        let back: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(back.served(), s);

        let shared = Shared::new(Central::new(), "r1");
        *shared.others.write().unwrap() = vec![
            ("r2".into(), e.clone()),
            ("r3".into(), Entry::new("shop", "web-v1-1".into(), &s)),
            ("r3".into(), Entry::new("other", "web-v2-1".into(), &s)),
        ];
        let view = shared.served("shop", &["web-v2-1".to_string()]);
        assert_eq!(view.keys().collect::<Vec<_>>(), ["r2/web-v2-1"]);
        assert_eq!(view["r2/web-v2-1"].requests, 10);
    }
}
