//! Which control-plane replicas are alive, and what happens to the workloads of one that
//! died (etcd only: the embedded store has one replica).
//!
//! Each replica holds a presence key, `leader/replica-<name>`, bound to a lease it keeps
//! alive (an [`Election`] it alone enters): when the replica dies, etcd expires the lease
//! within [`PRESENCE_TTL`] and the key disappears. Every replica reads the presence keys
//! every [`SCAN_EVERY`]:
//!
//! - the registrar learns which replicas are alive, so a workload record that a dead
//!   replica still marks connected does not block its proxy (or a successor) from
//!   registering elsewhere;
//! - the leader sweeps the records of dead replicas ([`orphan_plan`]): connected ones are
//!   marked disconnected, and disconnected ones older than the grace period are deleted,
//!   so callers stop using endpoints whose proxies are gone. The plan reads only the
//!   records, so a new leader continues where a dead one stopped.

use crate::registry::Registry;
use crate::store::etcd::{Election, EtcdStore};
use crate::store::{Store, StoreError};
use skein_model::resource::{Kind, Resource, ResourceKey, WorkloadStatus};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How soon a dead replica's presence key disappears.
pub const PRESENCE_TTL: Duration = Duration::from_secs(5);
/// How often replicas read the presence keys (and the leader sweeps).
pub const SCAN_EVERY: Duration = Duration::from_secs(2);
/// Presence keys, relative to the store's prefix.
const PRESENCE_PREFIX: &str = "leader/replica-";

/// Enters this replica's presence: the key exists while this process renews its lease.
pub async fn announce(etcd: &EtcdStore, replica: &str) -> Result<Election, StoreError> {
    Election::campaign(etcd, &format!("replica-{replica}"), replica, PRESENCE_TTL).await
}

/// The replicas whose presence keys exist now.
pub async fn live(store: &dyn Store) -> Result<BTreeSet<String>, StoreError> {
    let (found, _) = store.list(PRESENCE_PREFIX).await?;
    Ok(found
        .into_iter()
        .filter_map(|e| e.key.strip_prefix(PRESENCE_PREFIX).map(str::to_owned))
        .collect())
}

/// What to do with a workload record whose replica is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Orphan {
    /// It still says connected: mark it disconnected now (the grace period starts).
    MarkDisconnected,
    /// Disconnected for longer than the grace period: delete it.
    Delete,
}

/// The actions for `records` (key and status of every registered Workload) given the
/// `live` replicas, at `now` (RFC 3339, as statuses are written) with `cutoff` = now minus
/// the grace period. Records of live replicas, and declared ones (no replica), are left
/// alone. Timestamps written by Skein (`YYYY-MM-DDTHH:MM:SSZ`) sort as they occur, so
/// they compare as text.
pub fn orphan_plan(
    records: &[(ResourceKey, WorkloadStatus)],
    live: &BTreeSet<String>,
    cutoff: &str,
) -> Vec<(ResourceKey, Orphan)> {
    records
        .iter()
        .filter(|(_, s)| s.control_plane.as_ref().is_some_and(|r| !live.contains(r)))
        .filter_map(|(key, s)| {
            if s.connected {
                Some((key.clone(), Orphan::MarkDisconnected))
            } else if s.since.as_deref().is_none_or(|since| since <= cutoff) {
                Some((key.clone(), Orphan::Delete))
            } else {
                None
            }
        })
        .collect()
}

fn rfc3339_ago(ago: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    skein_model::time::UtcTime::from_unix(now.saturating_sub(ago.as_secs())).rfc3339()
}

/// Reads the presence keys every [`SCAN_EVERY`] until `stop`, publishing the live replicas
/// on `live_tx`, and while `leader` says so, sweeps the workloads of dead replicas.
pub async fn watch(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    leader: watch::Receiver<bool>,
    live_tx: watch::Sender<Option<BTreeSet<String>>>,
    grace: Duration,
    stop: CancellationToken,
) {
    loop {
        match live(&*store).await {
            Ok(replicas) => {
                live_tx.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&replicas);
                    *current = Some(replicas.clone());
                    changed
                });
                if *leader.borrow() {
                    sweep(&registry, &replicas, grace).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which control-plane replicas are alive")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}

/// Carries out [`orphan_plan`] on the registry's workloads.
async fn sweep(registry: &Registry, live: &BTreeSet<String>, grace: Duration) {
    let records: Vec<(ResourceKey, WorkloadStatus)> = registry
        .list(Kind::Workload, None)
        .into_iter()
        .filter_map(|r| match r {
            Resource::Workload(w) => {
                let key = ResourceKey::new(Kind::Workload, &w.metadata.namespace, &w.metadata.name);
                w.status.map(|s| (key, s))
            }
            _ => None,
        })
        .collect();
    for (key, action) in orphan_plan(&records, live, &rfc3339_ago(grace)) {
        let result = match action {
            Orphan::Delete => registry.delete(&key).await.map(|_| ()),
            Orphan::MarkDisconnected => {
                let Some(Resource::Workload(mut w)) = registry.get(&key) else {
                    continue;
                };
                if let Some(s) = w.status.as_mut() {
                    s.connected = false;
                    s.since = Some(crate::registry::now_rfc3339());
                }
                registry
                    .apply_with(vec![Resource::Workload(w)], true)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(workload = %key, ?action, "swept a workload whose control-plane replica is gone")
            }
            // Another writer got there first (its proxy re-registered): the next scan sees it.
            Err(e) => tracing::debug!(workload = %key, error = %e, "could not sweep a workload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        name: &str,
        via: Option<&str>,
        connected: bool,
        since: &str,
    ) -> (ResourceKey, WorkloadStatus) {
        (
            ResourceKey::new(Kind::Workload, "default", name),
            WorkloadStatus {
                connected,
                since: Some(since.into()),
                control_plane: via.map(str::to_owned),
                ..WorkloadStatus::default()
            },
        )
    }

    #[test]
    fn a_dead_replicas_workloads_are_disconnected_then_deleted_after_the_grace() {
        let live = BTreeSet::from(["r2".to_string()]);
        let records = [
            record("a", Some("r1"), true, "2026-12-03T10:00:00Z"),
            record("b", Some("r1"), false, "2026-12-03T10:00:00Z"),
            record("c", Some("r1"), false, "2026-12-03T10:00:45Z"),
            record("d", Some("r2"), true, "2026-12-03T09:00:00Z"),
            record("e", None, false, "2026-12-03T09:00:00Z"),
        ];
        let plan = orphan_plan(&records, &live, "2026-12-03T10:00:30Z");
        let names: Vec<_> = plan
            .iter()
            .map(|(k, a)| (k.name.as_str(), a.clone()))
            .collect();
        assert_eq!(
            names,
            [("a", Orphan::MarkDisconnected), ("b", Orphan::Delete)],
            "c is within the grace, d's replica lives, e was declared"
        );
    }
}
