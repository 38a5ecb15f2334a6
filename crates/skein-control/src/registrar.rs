//! The registrar: turns connected proxies into Workload resources, refuses a registration
//! that would take another account's record or a name a live proxy holds, and removes a
//! workload a grace period after its proxy left.
//!
//! Workload writes (registrations, and marking a workload disconnected) go through
//! [`Writes`]: whatever is queued while one store commit is under way goes into the next,
//! so a thousand proxies connecting at once cost a few commits, and a few recomputations
//! of the mesh state, rather than a thousand.

use crate::grpc::Registrar;
use crate::registry::Registry;
use crate::snapshot::WorkloadView;
use crate::state::Connections;
use futures_util::future::BoxFuture;
use skein_model::resource::{
    Kind, Object, ObjectMeta, Resource, ResourceKey, WorkloadSpec, WorkloadStatus,
};
use std::sync::Arc;
use std::time::Duration;

/// Most workload writes in one store commit: each is a compare and a put, and etcd
/// refuses transactions of more than 128 operations by default.
const MAX_BATCH: usize = 64;

/// One queued workload write and who waits for it.
struct Write {
    resource: Resource,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Workload writes gathered into store commits (group commit: no waiting for a batch to
/// fill, only for the commit before it to finish).
#[derive(Clone)]
pub(crate) struct Writes {
    tx: tokio::sync::mpsc::Sender<Write>,
}

impl Writes {
    /// Starts the writer for `registry`; it stops when every handle is dropped.
    pub(crate) fn start(registry: Arc<Registry>) -> Writes {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Write>(MAX_BATCH * 4);
        tokio::spawn(async move {
            // A write for a key already in the batch starts the next one, so that writes
            // to one workload are committed in the order they were made.
            let mut carried: Option<Write> = None;
            loop {
                let first = match carried.take() {
                    Some(w) => w,
                    None => match rx.recv().await {
                        Some(w) => w,
                        None => return,
                    },
                };
                let mut keys = std::collections::HashSet::new();
                keys.insert(first.resource.key());
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(w) if keys.insert(w.resource.key()) => batch.push(w),
                        Ok(w) => {
                            carried = Some(w);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit(&registry, batch).await;
            }
        });
        Writes { tx }
    }

    /// Writes `resource` (forced, as its proxy is the authority on it) with whatever else
    /// is queued; returns once the commit is published.
    pub(crate) async fn write(&self, resource: Resource) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Write { resource, done })
            .await
            .map_err(|_| "the control plane is shutting down".to_string())?;
        wait.await
            .map_err(|_| "the control plane is shutting down".to_string())?
    }
}

/// Commits `batch` (one write per key) at once; should that be refused, each half on its
/// own, and so on down to single writes, so that one bad write (a stale version, say)
/// fails only its own caller.
fn commit(registry: &Registry, batch: Vec<Write>) -> futures_util::future::BoxFuture<'_, ()> {
    Box::pin(async move {
        let docs: Vec<Resource> = batch.iter().map(|w| w.resource.clone()).collect();
        let all = registry.apply_with(docs, true).await;
        if all.is_ok() || batch.len() == 1 {
            let result = all.map(|_| ()).map_err(|e| e.to_string());
            for w in batch {
                let _ = w.done.send(result.clone());
            }
            return;
        }
        let mut first = batch;
        let second = first.split_off(first.len() / 2);
        commit(registry, first).await;
        commit(registry, second).await;
    })
}

/// Records proxies as Workload resources.
#[derive(Clone)]
pub(crate) struct StoreRegistrar {
    pub(crate) registry: Arc<Registry>,
    /// Where workload writes are queued.
    pub(crate) writes: Writes,
    pub(crate) connections: Arc<Connections>,
    pub(crate) grace: Duration,
    pub(crate) replica: String,
    /// Whether every registered workload is this replica's (single-replica stores).
    pub(crate) any_replica: bool,
    /// The replicas alive now (etcd; `None` until first read, and always with the
    /// embedded store).
    pub(crate) live: tokio::sync::watch::Receiver<Option<std::collections::BTreeSet<String>>>,
}

impl Registrar for StoreRegistrar {
    fn register(&self, w: &WorkloadView) -> BoxFuture<'_, Result<(), tonic::Status>> {
        let resource = Resource::Workload(Object {
            metadata: ObjectMeta {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                labels: w.labels.clone(),
                ..ObjectMeta::default()
            },
            spec: WorkloadSpec {
                address: w.address,
                inbound_port: w.inbound_port,
                ports: w.app_ports.clone(),
                service_account: w.account.clone(),
            },
            status: Some(WorkloadStatus {
                connected: true,
                since: Some(crate::registry::now_rfc3339()),
                acknowledged_version: None,
                control_plane: Some(self.replica.clone()),
                join_lineage: w.lineage.clone(),
            }),
        });
        let existing = match self.registry.get(&resource.key()) {
            Some(Resource::Workload(o)) => Some(o),
            _ => None,
        };
        let live = self.live.borrow().clone();
        let holders = Holders {
            me: &self.replica,
            single: self.any_replica,
            live: live.as_ref(),
        };
        let allowed = may_register(existing.as_ref(), w, &holders);
        Box::pin(async move {
            if let Err(e) = resource.validate() {
                return Err(tonic::Status::invalid_argument(e.to_string()));
            }
            allowed?;
            self.writes
                .write(resource)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("cannot record the workload: {e}")))
        })
    }

    fn disconnected(&self, w: WorkloadView) {
        tokio::spawn(self.clone().retire(w.namespace, w.name));
    }
}

/// What the registrar knows about who may hold a workload record.
struct Holders<'a> {
    /// This replica.
    me: &'a str,
    /// Whether this is the only replica (embedded store): a record marked connected is a
    /// leftover of its previous run.
    single: bool,
    /// The replicas alive now, when known.
    live: Option<&'a std::collections::BTreeSet<String>>,
}

/// Whether the proxy of `w` may write its Workload record over `existing`: never over a
/// record of another service account (that would hand one workload's address and traffic
/// to another identity), nor over one that a live proxy holds through another replica —
/// unless that is this same proxy (the same join lineage) failing over, or that replica is
/// no longer alive.
fn may_register(
    existing: Option<&Object<WorkloadSpec, WorkloadStatus>>,
    w: &WorkloadView,
    holders: &Holders<'_>,
) -> Result<(), tonic::Status> {
    let Some(existing) = existing else {
        return Ok(());
    };
    let (ns, name) = (&w.namespace, &w.name);
    if existing.spec.service_account != w.account {
        // Not PERMISSION_DENIED: that would make the proxy give up, and a name someone else
        // registered first (by mistake or to squat it) is freed when its holder leaves.
        return Err(tonic::Status::failed_precondition(format!(
            "workload {ns}/{name} belongs to service account {:?}; this proxy's certificate is for account {:?}, so it may not register under that name: give it its own workload.name (this proxy retries, in case the other one leaves)",
            existing.spec.service_account, w.account
        )));
    }
    if let Some(status) = existing
        .status
        .as_ref()
        .filter(|s| s.connected && !holders.single)
    {
        let same_proxy = w.lineage.is_some() && status.join_lineage == w.lineage;
        let holder = status.control_plane.as_deref().filter(|r| {
            *r != holders.me && !same_proxy && holders.live.is_none_or(|l| l.contains(*r))
        });
        if let Some(other) = holder {
            return Err(tonic::Status::already_exists(format!(
                "workload {ns}/{name} is held by a live proxy connected to control-plane replica {other:?}; each proxy needs its own workload name (workload.name). This proxy retries, in case that is its own earlier connection"
            )));
        }
    }
    Ok(())
}

impl StoreRegistrar {
    /// Whether this replica recorded the workload (with the embedded store there is only
    /// one replica, so every registered workload is ours).
    fn owns(&self, status: Option<&WorkloadStatus>) -> bool {
        status.is_some_and(|s| {
            self.any_replica || s.control_plane.as_deref() == Some(self.replica.as_str())
        })
    }

    /// A workload's proxy is gone: mark it disconnected now; after the grace period, if it
    /// has not come back (here or to another replica), remove it from the endpoints.
    async fn retire(self, namespace: String, name: String) {
        let key = ResourceKey::new(Kind::Workload, &namespace, &name);
        let Some(Resource::Workload(mut current)) = self.registry.get(&key) else {
            return;
        };
        if !self.owns(current.status.as_ref()) || self.connections.is_connected(&namespace, &name) {
            return;
        }
        if let Some(status) = current.status.as_mut() {
            if status.connected {
                status.connected = false;
                status.since = Some(crate::registry::now_rfc3339());
                if let Err(e) = self.writes.write(Resource::Workload(current)).await {
                    tracing::warn!(workload = %key, error = %e, "could not mark workload disconnected");
                }
            }
        }
        tokio::time::sleep(self.grace).await;
        if self.connections.is_connected(&namespace, &name) {
            return;
        }
        let Some(Resource::Workload(current)) = self.registry.get(&key) else {
            return;
        };
        // Back on another replica (it rewrote the status as connected): not ours to remove.
        let still_gone = current.status.as_ref().is_some_and(|s| !s.connected);
        if self.owns(current.status.as_ref()) && still_gone {
            match self.registry.delete(&key).await {
                Ok(_) => {
                    tracing::info!(workload = %key, "workload removed: its proxy left {:?} ago", self.grace)
                }
                Err(e) => tracing::warn!(workload = %key, error = %e, "could not remove workload"),
            }
        }
    }

    /// At start-up: workloads this replica registered before it restarted have no session
    /// now; give each the grace period to reconnect, then remove it.
    pub(crate) fn sweep(&self) {
        for resource in self.registry.list(Kind::Workload, None) {
            if let Resource::Workload(w) = resource {
                if self.owns(w.status.as_ref()) {
                    let (ns, name) = (w.metadata.namespace.clone(), w.metadata.name.clone());
                    tokio::spawn(self.clone().retire(ns, name));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(account: &str) -> WorkloadView {
        WorkloadView {
            name: "web-1".into(),
            namespace: "default".into(),
            labels: Default::default(),
            address: [127, 0, 0, 5].into(),
            inbound_port: 4143,
            app_ports: vec![],
            account: account.into(),
            lineage: None,
        }
    }

    fn record(account: &str, connected_via: Option<&str>) -> Object<WorkloadSpec, WorkloadStatus> {
        Object {
            metadata: ObjectMeta::default(),
            spec: WorkloadSpec {
                service_account: account.into(),
                ..WorkloadSpec::default()
            },
            status: connected_via.map(|r| WorkloadStatus {
                connected: true,
                control_plane: Some(r.into()),
                ..WorkloadStatus::default()
            }),
        }
    }

    const ONE: Holders<'static> = Holders {
        me: "r1",
        single: true,
        live: None,
    };
    const R1: Holders<'static> = Holders {
        me: "r1",
        single: false,
        live: None,
    };

    #[test]
    fn records_are_never_taken_across_accounts() {
        assert!(may_register(None, &view("evil"), &R1).is_ok());
        let e = may_register(Some(&record("web", None)), &view("evil"), &R1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message()
                .starts_with("workload default/web-1 belongs to service account \"web\""),
            "{}",
            e.message()
        );
        // Also when the owner is disconnected, and with one replica.
        assert!(may_register(Some(&record("web", Some("r1"))), &view("evil"), &ONE).is_err());
        // The same account re-registers (a restarted proxy, a declared workload).
        assert!(may_register(Some(&record("web", None)), &view("web"), &R1).is_ok());
        assert!(may_register(Some(&record("web", Some("r1"))), &view("web"), &R1).is_ok());
    }

    #[test]
    fn a_record_held_through_another_replica_is_refused() {
        let e = may_register(Some(&record("web", Some("r2"))), &view("web"), &R1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        assert!(e.message().contains("replica \"r2\""), "{}", e.message());
        // The same proxy failing over from r2 (same join lineage) takes it back.
        let mut held = record("web", Some("r2"));
        held.status.as_mut().unwrap().join_lineage = Some("aa.1".into());
        let mut me = view("web");
        me.lineage = Some("aa.1".into());
        assert!(may_register(Some(&held), &me, &R1).is_ok());
        // r2 is known to be dead: its mark blocks nobody.
        let live = std::collections::BTreeSet::from(["r1".to_string()]);
        let after = Holders {
            live: Some(&live),
            ..R1
        };
        assert!(may_register(Some(&record("web", Some("r2"))), &view("web"), &after).is_ok());
        // One replica: a connected mark is left over from its previous run.
        assert!(may_register(Some(&record("web", Some("r2"))), &view("web"), &ONE).is_ok());
    }
}
