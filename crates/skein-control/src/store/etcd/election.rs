//! Leader election on etcd, for control-plane work that must run on one replica only.
//!
//! Each candidate holds a lease (kept alive by a background task) and tries to create the
//! key `PREFIX + "leader/" + NAME` attached to it, in a transaction that succeeds only if
//! the key does not exist. The winner is leader while the key exists; the others watch the
//! key and try again when it is deleted, which happens when the leader resigns (its lease
//! is revoked) or stops renewing its lease (etcd expires it). A candidate that cannot renew
//! its lease steps down before etcd would expire it, so two replicas never both believe
//! they lead (given clocks that run at about the same rate).

use super::pb::etcdserverpb::{self as rpc, lease_client::LeaseClient, watch_client::WatchClient};
use super::pb::mvccpb;
use super::{revision, status_text, Backoff, EtcdError, EtcdStore};
use crate::store::StoreError;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A candidacy in a named election. Dropping it (or [`Election::resign`]) ends it: the
/// lease is revoked, so another candidate takes over at once.
pub struct Election {
    store: EtcdStore,
    /// The etcd key whose holder is the leader.
    key: Vec<u8>,
    state: Arc<watch::Sender<bool>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), EtcdError>>>,
}

/// A granted lease and when the last renewal etcd confirmed was sent.
#[derive(Clone, Copy)]
struct Lease {
    id: i64,
    ttl: Duration,
    renewed_at: Instant,
}

/// What the campaign task needs.
struct Candidate {
    store: EtcdStore,
    key: Vec<u8>,
    id: String,
    ttl_secs: i64,
    state: Arc<watch::Sender<bool>>,
    /// The lease currently held (0: none), revoked when the candidacy ends.
    lease: AtomicI64,
}

impl Election {
    /// Enters the election `name` as `candidate_id` (e.g. the replica's host name), with a
    /// lease of `ttl` (rounded up to whole seconds; etcd may raise it to its minimum): the
    /// leader's failure is noticed within about that long. Returns once the lease is granted;
    /// leadership follows in the background (see [`Election::is_leader`] and
    /// [`Election::subscribe`]).
    pub async fn campaign(
        store: &EtcdStore,
        name: &str,
        candidate_id: &str,
        ttl: Duration,
    ) -> Result<Election, StoreError> {
        if name.is_empty() {
            return Err(StoreError::Backend(
                "an election needs a name, e.g. \"canary\"".into(),
            ));
        }
        let ttl_secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let lease = grant(store, ttl_secs).await?;
        let (state, _) = watch::channel(false);
        let state = Arc::new(state);
        let key = format!("{}leader/{name}", store.prefix()).into_bytes();
        let candidate = Arc::new(Candidate {
            store: store.clone(),
            key: key.clone(),
            id: candidate_id.to_string(),
            ttl_secs,
            state: state.clone(),
            lease: AtomicI64::new(lease.id),
        });
        let (shutdown, stop) = oneshot::channel();
        let task = tokio::spawn(run(candidate, lease, stop));
        Ok(Election {
            store: store.clone(),
            key,
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Whether this candidate leads now.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Leadership changes: `true` when this candidate becomes leader, `false` when it stops
    /// being leader (resigned, lease lost, key removed).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// The current leader's candidate id, if any (read from etcd).
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let request = rpc::RangeRequest {
            key: self.key.clone(),
            ..Default::default()
        };
        let response = self
            .store
            .call("a leader read", self.store.kv().range(request))
            .await?;
        Ok(response
            .kvs
            .into_iter()
            .next()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Leaves the election: stops being leader at once, then revokes the lease so another
    /// candidate can take over without waiting for it to expire.
    pub async fn resign(mut self) -> Result<(), StoreError> {
        if let Some(shutdown) = self.shutdown.take() {
            // Err: the task has already ended, which the join below reports.
            let _ = shutdown.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => Ok(result?),
            Err(e) => Err(StoreError::Backend(format!(
                "the election task failed: {e}"
            ))),
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        set(&self.state, false);
        if let Some(shutdown) = self.shutdown.take() {
            // The task revokes the lease on its way out (if the runtime still runs; if not,
            // etcd expires the lease after its TTL).
            let _ = shutdown.send(());
        }
    }
}

/// The campaign task: campaigns until told to stop, then steps down and revokes the lease.
async fn run(
    candidate: Arc<Candidate>,
    lease: Lease,
    stop: oneshot::Receiver<()>,
) -> Result<(), EtcdError> {
    tokio::select! {
        _ = stop => {}
        () = campaign_forever(&candidate, lease) => {}
    }
    set(&candidate.state, false);
    match candidate.lease.swap(0, Ordering::SeqCst) {
        0 => Ok(()),
        id => revoke(&candidate.store, id).await,
    }
}

/// Holds a lease and competes for the key with it; when the lease is lost, steps down and
/// starts over with a new one.
async fn campaign_forever(candidate: &Candidate, mut lease: Lease) {
    loop {
        tokio::select! {
            why = keep_alive(&candidate.store, lease) => {
                set(&candidate.state, false);
                tracing::warn!(lease = lease.id, "lost the election lease ({why}); stepping down and campaigning again");
            }
            () = compete(candidate, lease.id) => {}
        }
        // The lease may still exist at etcd (we step down early): free the key for others.
        let old = candidate.lease.swap(0, Ordering::SeqCst);
        let unrevoked = revoke(&candidate.store, old).await.err();
        lease = grant_with_retry(candidate).await;
        if unrevoked.is_some() {
            // etcd is back (it granted a lease): try again rather than wait for the expiry.
            if let Err(e) = revoke(&candidate.store, old).await {
                tracing::debug!("revoking the lost lease failed ({e}); etcd will expire it");
            }
        }
    }
}

async fn grant_with_retry(candidate: &Candidate) -> Lease {
    let mut backoff = Backoff::new();
    loop {
        match grant(&candidate.store, candidate.ttl_secs).await {
            Ok(lease) => {
                candidate.lease.store(lease.id, Ordering::SeqCst);
                return lease;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("cannot get an election lease ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Tries to take the key with `lease`; while someone holds it, waits for its deletion and
/// tries again. Never returns: the lease's loss ends it from outside.
async fn compete(candidate: &Candidate, lease: i64) {
    let mut backoff = Backoff::new();
    loop {
        let from = match try_acquire(candidate, lease).await {
            Ok((won, at)) => {
                set(&candidate.state, won);
                at + 1
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("election: cannot read the leader key ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        match wait_deleted(&candidate.store, &candidate.key, from).await {
            Ok(()) => {
                // The holder (maybe us) is gone: compete again right away.
                set(&candidate.state, false);
                backoff.reset();
            }
            Err(why) => {
                // Unknown whether the key changed: look again after a pause. Leadership
                // stands meanwhile: it lasts as long as the lease, which is watched apart.
                let delay = backoff.next_delay();
                tracing::debug!(
                    "election: watch on the leader key ended ({why}); retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One attempt: create the key if absent. Returns whether we hold it and the revision read.
async fn try_acquire(candidate: &Candidate, lease: i64) -> Result<(bool, i64), EtcdError> {
    use rpc::compare::{CompareResult, CompareTarget, TargetUnion};
    use rpc::request_op::Request;
    let key = candidate.key.clone();
    let txn = rpc::TxnRequest {
        compare: vec![rpc::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::CreateRevision(0)),
        }],
        success: vec![rpc::RequestOp {
            request: Some(Request::RequestPut(rpc::PutRequest {
                key: key.clone(),
                value: candidate.id.clone().into_bytes(),
                lease,
                ..Default::default()
            })),
        }],
        failure: vec![rpc::RequestOp {
            request: Some(Request::RequestRange(rpc::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    };
    let store = &candidate.store;
    let response = store.call("a leader claim", store.kv().txn(txn)).await?;
    let at = response.header.as_ref().map_or(0, |h| h.revision);
    if response.succeeded {
        return Ok((true, at));
    }
    // Taken: by us (a claim whose answer was lost, or a re-check after a broken watch) or
    // by someone else.
    let ours = response.responses.iter().any(|r| match &r.response {
        Some(rpc::response_op::Response::ResponseRange(range)) => {
            range.kvs.iter().any(|kv| kv.lease == lease)
        }
        _ => false,
    });
    Ok((ours, at))
}

/// Waits until `key` is deleted at or after revision `from`. `Err` when the watch breaks
/// (the caller looks at the key again).
async fn wait_deleted(store: &EtcdStore, key: &[u8], from: i64) -> Result<(), String> {
    let create = rpc::WatchRequest {
        request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
            rpc::WatchCreateRequest {
                key: key.to_vec(),
                start_revision: from,
                filters: vec![rpc::watch_create_request::FilterType::Noput as i32],
                ..Default::default()
            },
        )),
    };
    let requests = futures_util::stream::iter([create]).chain(futures_util::stream::pending());
    let mut moved = store.moved();
    let mut client = WatchClient::new(store.channel());
    let mut stream = match tokio::time::timeout(
        super::REQUEST_TIMEOUT,
        client.watch(super::require_leader(requests)),
    )
    .await
    {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(status_text(&status)),
        Err(_) => return Err("no answer to the watch request".into()),
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = moved.changed() => return Err("the store moved to another etcd member".into()),
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Err("etcd ended the stream".into()),
            Err(status) => return Err(status_text(&status)),
        };
        if response.compact_revision > 0 || response.canceled {
            return Err(format!("etcd canceled it: {}", response.cancel_reason));
        }
        store.observe(response.header.as_ref());
        let deleted = mvccpb::event::EventType::Delete as i32;
        if response.events.iter().any(|e| e.r#type == deleted) {
            return Ok(());
        }
    }
}

/// Renews `lease` every third of its TTL. Returns (why) once the lease must be considered
/// lost: etcd says it expired, or no renewal was confirmed for three quarters of the TTL
/// (stepping down before etcd can expire it and let another candidate in).
async fn keep_alive(store: &EtcdStore, lease: Lease) -> String {
    let interval = (lease.ttl / 3).max(Duration::from_millis(100));
    let give_up_after = lease.ttl * 3 / 4;
    let mut renewed_at = lease.renewed_at;
    loop {
        // A new client each time round: the store may have moved to another member.
        let mut client = LeaseClient::new(store.channel());
        let lost_at = renewed_at + give_up_after;
        if Instant::now() >= lost_at {
            return format!("no renewal confirmed for {give_up_after:?}");
        }
        // The first renewal is queued before the call: etcd answers the stream's headers
        // only along with its first response.
        let (requests, rx) = mpsc::channel(1);
        let mut sent_at = Instant::now();
        let renew = rpc::LeaseKeepAliveRequest { id: lease.id };
        if requests.try_send(renew).is_err() {
            return "the keepalive queue is broken".into();
        }
        let rx = futures_util::stream::unfold(rx, |mut rx: mpsc::Receiver<_>| async move {
            rx.recv().await.map(|request| (request, rx))
        });
        let mut moved = store.moved();
        let opened =
            tokio::time::timeout_at(lost_at, client.lease_keep_alive(super::require_leader(rx)))
                .await;
        let mut responses = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(
                    lease = lease.id,
                    "lease keepalive failed: {}",
                    status_text(&status)
                );
                store.fail_over(format!("a lease keepalive: {}", status_text(&status)));
                tokio::time::sleep_until((Instant::now() + interval / 2).min(lost_at)).await;
                continue;
            }
            Err(_) => {
                store.fail_over("no answer to a lease keepalive".into());
                continue;
            }
        };
        loop {
            // An answer is due within a renewal interval: a member that gives none is
            // left for another (the lease is lost only at `give_up_after`).
            let lost_at = renewed_at + give_up_after;
            let due = (sent_at + interval).min(lost_at);
            let answer = tokio::select! {
                a = tokio::time::timeout_at(due, responses.message()) => a,
                _ = moved.changed() => break,
            };
            match answer {
                Ok(Ok(Some(response))) if response.ttl <= 0 => {
                    return "etcd reports that the lease expired".into()
                }
                Ok(Ok(Some(_))) => renewed_at = sent_at,
                Ok(Ok(None)) => break,
                Ok(Err(status)) => {
                    tracing::debug!(
                        lease = lease.id,
                        "lease keepalive failed: {}",
                        status_text(&status)
                    );
                    store.fail_over(format!("a lease keepalive: {}", status_text(&status)));
                    break;
                }
                Err(_) if Instant::now() >= lost_at => {
                    return format!("no renewal confirmed for {give_up_after:?}")
                }
                Err(_) => {
                    store.fail_over(format!(
                        "no answer to a lease keepalive within {interval:?}"
                    ));
                    break;
                }
            }
            tokio::time::sleep(interval).await;
            sent_at = Instant::now();
            if requests
                .send(rpc::LeaseKeepAliveRequest { id: lease.id })
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

async fn grant(store: &EtcdStore, ttl_secs: i64) -> Result<Lease, EtcdError> {
    let sent_at = Instant::now();
    let request = rpc::LeaseGrantRequest {
        ttl: ttl_secs,
        id: 0,
    };
    let mut client = LeaseClient::new(store.channel());
    let response = store
        .call("a lease grant", client.lease_grant(request))
        .await?;
    if !response.error.is_empty() {
        return Err(EtcdError::Refused {
            endpoint: store.endpoint(),
            op: "a lease grant",
            message: response.error,
        });
    }
    store.observe(response.header.as_ref());
    Ok(Lease {
        id: response.id,
        ttl: Duration::from_secs(revision(response.ttl).max(1)),
        renewed_at: sent_at,
    })
}

/// Revokes a lease, deleting the keys attached to it. A lease etcd no longer knows counts
/// as revoked.
async fn revoke(store: &EtcdStore, id: i64) -> Result<(), EtcdError> {
    if id == 0 {
        return Ok(());
    }
    let mut client = LeaseClient::new(store.channel());
    let request = rpc::LeaseRevokeRequest { id };
    match store
        .call("a lease revoke", client.lease_revoke(request))
        .await
    {
        Ok(response) => {
            store.observe(response.header.as_ref());
            Ok(())
        }
        Err(EtcdError::Refused { message, .. }) if message.contains("not found") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Publishes a leadership state, notifying subscribers only on change.
fn set(state: &watch::Sender<bool>, leader: bool) {
    state.send_if_modified(|current| {
        let changed = *current != leader;
        *current = leader;
        changed
    });
}
