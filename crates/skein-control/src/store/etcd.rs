//! The etcd store: Skein's resources in an etcd v3 cluster (Debian's `etcd-server`), so that
//! several `skein control` replicas share one state, each watching it, and elect a leader
//! ([`Election`]) for work that must run once.
//!
//! It speaks etcd's gRPC API through a thin client generated from the subset of etcd's
//! `.proto` files in `proto/etcd/` (compiled with protox: nothing to install). Keys live under
//! a prefix (default [`DEFAULT_PREFIX`]); an entry's revision is etcd's `mod_revision` and the
//! store revision is etcd's. A commit is one etcd transaction whose compares are the ops'
//! preconditions; a watch is an etcd watch stream that resumes where it stopped when the
//! connection drops, and closes (the consumer re-lists) when etcd has compacted the history
//! it would need.
//!
//! The store talks to one member at a time. When a request or stream to it fails as
//! unavailable (the member died, lost quorum, or stopped answering), it checks that member
//! with a test read and, if that fails too, moves to the first other member given that
//! answers one ([`EtcdStore::fail_over`]): the request that failed is refused (its caller
//! retries, as for any store error), and what follows goes to the member that works.
//! Watches resume on it from the revision they had reached, and the leader's lease
//! keepalive follows.

mod election;
mod pb;
mod watch;

pub use election::Election;

use super::{Entry, Event, Op, Store, StoreError};
use futures_util::future::BoxFuture;
use pb::etcdserverpb as rpc;
use pb::etcdserverpb::kv_client::KvClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// The key prefix used when none is configured: every Skein key is `/skein/…`.
pub const DEFAULT_PREFIX: &str = "/skein/";

/// How long one request (not a stream) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a failover waits for a member's test read (members are tried at once).
const FAILOVER_PROBE: Duration = Duration::from_millis(1500);
/// Keys per Range page when listing, so that large lists stay under message limits.
const LIST_PAGE: i64 = 1000;
/// Largest response accepted from etcd (tonic's default, 4 MiB, is too small for a page of
/// large values).
const MAX_MESSAGE: usize = 64 << 20;

/// What can go wrong talking to etcd, worded for the operator; callers see it as
/// [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
enum EtcdError {
    #[error("no etcd endpoint given: pass --store etcd://HOST:PORT[,HOST:PORT…]")]
    NoEndpoint,
    #[error("invalid etcd endpoint {0:?}: expected HOST:PORT, e.g. 127.0.0.1:2379 (plain http; TLS to etcd is not supported)")]
    BadEndpoint(String),
    #[error("the etcd key prefix is empty: give one (default {DEFAULT_PREFIX}) so Skein's keys stay apart from others' in a shared etcd")]
    EmptyPrefix,
    #[error("cannot reach etcd; tried {tried}. Is etcd running and serving clients there (`etcdctl --endpoints HOST:PORT endpoint health`)? Point Skein at it with --store etcd://HOST:PORT[,HOST:PORT…]")]
    Unreachable { tried: String },
    #[error("etcd at {endpoint} did not answer {op} within {REQUEST_TIMEOUT:?}; check that it is running and healthy (`etcdctl --endpoints {endpoint} endpoint health`); the control plane moves to another etcd endpoint it was given if one answers")]
    Timeout { endpoint: String, op: &'static str },
    #[error("etcd at {endpoint} failed {op}: {message}{hint}")]
    Request {
        endpoint: String,
        op: &'static str,
        message: String,
        hint: &'static str,
    },
    #[error("a commit of {ops} changes exceeds etcd's limit of operations per transaction (etcd flag --max-txn-ops, default 128): raise it on etcd or apply fewer resources at once")]
    TooManyOps { ops: usize },
    #[error("etcd at {endpoint} refused {op}: {message}")]
    Refused {
        endpoint: String,
        op: &'static str,
        message: String,
    },
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// One etcd member and the connection to it.
#[derive(Clone)]
struct Member {
    channel: Channel,
    /// As given (`HOST:PORT`), for messages.
    endpoint: String,
    /// Its place in [`Inner::endpoints`].
    index: usize,
}

/// A [`Store`] backed by etcd. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoint", &self.endpoint())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Every endpoint given, in order: (URI, as given).
    endpoints: Vec<(String, String)>,
    /// The member in use; replaced when it fails and another answers.
    current: std::sync::RwLock<Member>,
    /// Held while a failover checks the members, so that one runs at a time.
    failing_over: tokio::sync::Mutex<()>,
    /// Counts moves to another member: open streams (watches, the lease keepalive) end
    /// and start again on the new member when it changes.
    moves: tokio::sync::watch::Sender<u64>,
    /// The etcd cluster's ID, from the first answer: a member of another cluster (a
    /// decommissioned member restarted alone, a restore made a new cluster) is never
    /// taken.
    cluster_id: u64,
    /// Prepended to every key; ends with `/`.
    prefix: String,
    /// The highest store revision seen in any response: where new watches start.
    revision: AtomicU64,
}

impl EtcdStore {
    /// Connects to the first of `endpoints` (`HOST:PORT`, plain http) that answers, and
    /// keeps Skein's keys under `prefix` (e.g. [`DEFAULT_PREFIX`]; a missing trailing `/` is
    /// added). The endpoints are tried in order; the error names each one and why it failed.
    /// After connecting, the store stays on that endpoint (the connection is re-established
    /// if it drops) until it fails and another answers ([`EtcdStore::fail_over`]).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint.into());
        }
        let prefix = normalize_prefix(prefix)?;
        let endpoints = endpoints
            .iter()
            .map(|e| Ok((parse_endpoint(e)?, e.clone())))
            .collect::<Result<Vec<_>, EtcdError>>()?;
        let mut tried = Vec::new();
        for (index, (uri, endpoint)) in endpoints.iter().enumerate() {
            match Self::open(uri, &prefix, CONNECT_TIMEOUT).await {
                Ok((channel, header)) => {
                    let store = EtcdStore {
                        inner: Arc::new(Inner {
                            current: std::sync::RwLock::new(Member {
                                channel,
                                endpoint: endpoint.clone(),
                                index,
                            }),
                            endpoints,
                            failing_over: tokio::sync::Mutex::new(()),
                            moves: tokio::sync::watch::Sender::new(0),
                            cluster_id: header.as_ref().map_or(0, |h| h.cluster_id),
                            prefix,
                            revision: AtomicU64::new(0),
                        }),
                    };
                    store.observe(header.as_ref());
                    return Ok(store);
                }
                Err(why) => tried.push(format!("{endpoint} ({why})")),
            }
        }
        Err(EtcdError::Unreachable {
            tried: tried.join(", "),
        }
        .into())
    }

    /// A connection to the member at `uri`, and the header of a test read through it
    /// (answered within `read_within`).
    async fn open(
        uri: &str,
        prefix: &str,
        read_within: Duration,
    ) -> Result<(Channel, Option<rpc::ResponseHeader>), String> {
        let channel = Endpoint::from_shared(uri.to_string())
            .map_err(|e| error_chain(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            // Pings find a dead peer under an idle watch; etcd refuses pings more often than
            // every 5 s by default (--grpc-keepalive-min-time).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, channel.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(error_chain(&e)),
            Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        let header = Self::test_read(&channel, prefix, read_within).await?;
        Ok((channel, header))
    }

    /// A connection alone does not prove it is etcd, nor that it serves requests (a member
    /// without quorum accepts connections): one small read does.
    async fn test_read(
        channel: &Channel,
        prefix: &str,
        within: Duration,
    ) -> Result<Option<rpc::ResponseHeader>, String> {
        let probe = rpc::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            count_only: true,
            ..Default::default()
        };
        let mut kv = KvClient::new(channel.clone());
        match tokio::time::timeout(within, kv.range(probe)).await {
            Ok(Ok(response)) => Ok(response.into_inner().header),
            Ok(Err(status)) => Err(status_text(&status)),
            Err(_) => Err(format!("no answer to a test read within {within:?}")),
        }
    }

    /// After a failure that says the member in use is unavailable: unless it answers a test
    /// read, moves to the first other endpoint (in the order given, after it) that does,
    /// for the same cluster, with every revision already seen; the others are tried at
    /// once. Runs in the background, one at a time; a failover already under way covers
    /// this failure too. With no member to move to the store stays where it is (its
    /// connection keeps trying) and checks again at the next failure. Open watches and the
    /// lease keepalive follow the move ([`EtcdStore::moved`]).
    pub(crate) fn fail_over(&self, why: String) {
        if self.inner.endpoints.len() < 2 {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let Ok(_running) = store.inner.failing_over.try_lock() else {
                return;
            };
            let from = store.member();
            let prefix = &store.inner.prefix;
            if Self::test_read(&from.channel, prefix, FAILOVER_PROBE)
                .await
                .is_ok()
            {
                return;
            }
            let count = store.inner.endpoints.len();
            let candidates: Vec<usize> =
                (1..count).map(|step| (from.index + step) % count).collect();
            let opened = futures_util::future::join_all(candidates.iter().map(|&index| {
                let uri = store.inner.endpoints[index].0.clone();
                async move { Self::open(&uri, prefix, FAILOVER_PROBE).await }
            }))
            .await;
            let seen = store.inner.revision.load(Ordering::Relaxed);
            for (&index, result) in candidates.iter().zip(opened) {
                let endpoint = &store.inner.endpoints[index].1;
                let refusal = match &result {
                    Err(e) => Some(e.clone()),
                    Ok((_, header)) => store.unsuitable(header.as_ref(), seen),
                };
                if let Some(refusal) = refusal {
                    tracing::debug!(endpoint = %endpoint, "etcd endpoint not taken in a failover: {refusal}");
                    continue;
                }
                let Ok((channel, header)) = result else {
                    continue;
                };
                store.observe(header.as_ref());
                *store
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Member {
                    channel,
                    endpoint: endpoint.clone(),
                    index,
                };
                store.inner.moves.send_modify(|n| *n += 1);
                tracing::warn!(from = %from.endpoint, to = %endpoint, "etcd at {} failed ({why}); moved to {endpoint}", from.endpoint);
                return;
            }
            tracing::warn!(endpoint = %from.endpoint, "etcd at {} failed ({why}) and no other endpoint answers for this cluster; staying on it", from.endpoint);
        });
    }

    /// Why a member that answered with `header` must not be moved to: another cluster,
    /// or behind what this store has already seen (`seen`).
    fn unsuitable(&self, header: Option<&rpc::ResponseHeader>, seen: u64) -> Option<String> {
        let header = header?;
        if self.inner.cluster_id != 0 && header.cluster_id != self.inner.cluster_id {
            return Some(format!(
                "it belongs to etcd cluster {:x}, not {:x}",
                header.cluster_id, self.inner.cluster_id
            ));
        }
        let at = revision(header.revision);
        (at < seen).then(|| format!("it is at revision {at}, behind {seen} already seen"))
    }

    /// Notified when the store moves to another member.
    pub(crate) fn moved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.moves.subscribe()
    }

    /// The key prefix in use (ends with `/`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn member(&self) -> Member {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The endpoint in use (`HOST:PORT`).
    pub fn endpoint(&self) -> String {
        self.member().endpoint
    }

    /// The connection to the member in use.
    fn channel(&self) -> Channel {
        self.member().channel
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Runs one unary request with [`REQUEST_TIMEOUT`], naming `op` in errors.
    async fn call<T>(
        &self,
        op: &'static str,
        request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(op, &status)),
            Err(_) => {
                self.fail_over(format!("no answer to {op} within {REQUEST_TIMEOUT:?}"));
                Err(EtcdError::Timeout {
                    endpoint: self.endpoint(),
                    op,
                })
            }
        }
    }

    fn status_error(&self, op: &'static str, status: &tonic::Status) -> EtcdError {
        let endpoint = self.endpoint();
        let message = status_text(status);
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                self.fail_over(message.clone());
                EtcdError::Request {
                    endpoint,
                    op,
                    message,
                    hint: "; is etcd running and healthy (`etcdctl endpoint health`)?",
                }
            }
            _ => EtcdError::Refused {
                endpoint,
                op,
                message,
            },
        }
    }

    /// Records a response's revision as the latest known one; returns it.
    fn observe(&self, header: Option<&rpc::ResponseHeader>) -> u64 {
        let revision = header.map_or(0, |h| revision(h.revision));
        self.inner.revision.fetch_max(revision, Ordering::Relaxed);
        revision
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.inner.prefix).into_bytes()
    }

    /// The Skein key of an etcd key under the prefix (`None` for anything else).
    fn skein_key(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.inner.prefix.as_str())
            .map(str::to_string)
    }

    fn entry(&self, kv: pb::mvccpb::KeyValue) -> Option<Entry> {
        let Some(key) = self.skein_key(&kv.key) else {
            tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "ignoring a non-UTF-8 key in etcd under Skein's prefix");
            return None;
        };
        Some(Entry {
            key,
            value: kv.value,
            revision: revision(kv.mod_revision),
        })
    }

    async fn list_pages(&self, prefix: &str) -> Result<(Vec<Entry>, u64), EtcdError> {
        let start = self.full_key(prefix);
        let range_end = prefix_end(&start);
        let mut request = rpc::RangeRequest {
            key: start,
            range_end,
            limit: LIST_PAGE,
            ..Default::default()
        };
        let mut entries = Vec::new();
        loop {
            let response = self
                .call("a list", self.kv().range(request.clone()))
                .await?;
            let at = self.observe(response.header.as_ref());
            // Later pages read at the first page's revision: one consistent snapshot.
            if request.revision == 0 {
                request.revision = at as i64;
            }
            let next = response.kvs.last().map(|kv| {
                let mut k = kv.key.clone();
                k.push(0);
                k
            });
            entries.extend(response.kvs.into_iter().filter_map(|kv| self.entry(kv)));
            match next {
                Some(next) if response.more => request.key = next,
                _ => return Ok((entries, request.revision as u64)),
            }
        }
    }

    async fn commit_txn(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let op_count = ops.len();
        let txn = Txn::build(self, ops);
        let response = match self.call("a commit", self.kv().txn(txn.request)).await {
            Err(EtcdError::Refused { message, .. }) if message.contains("too many operations") => {
                return Err(EtcdError::TooManyOps { ops: op_count }.into())
            }
            other => other?,
        };
        let at = self.observe(response.header.as_ref());
        if response.succeeded {
            return Ok(at);
        }
        // The failure branch read every checked key in the same transaction: find the
        // precondition that did not hold.
        let mut found = HashMap::new();
        for (key, reply) in txn.checked_keys.iter().zip(&response.responses) {
            if let Some(rpc::response_op::Response::ResponseRange(range)) = &reply.response {
                let rev = range.kvs.first().map_or(0, |kv| revision(kv.mod_revision));
                found.insert(key.as_str(), rev);
            }
        }
        for (key, expected) in txn.expectations {
            let found = found.get(key.as_str()).copied().unwrap_or(0);
            if found != expected {
                return Err(StoreError::Conflict {
                    key,
                    expected,
                    found,
                });
            }
        }
        Err(StoreError::Backend(
            "etcd refused the commit although every precondition holds now (a concurrent change came and went); retry".into(),
        ))
    }
}

/// One commit as an etcd transaction.
struct Txn {
    request: rpc::TxnRequest,
    /// (Skein key, expected revision) for every op with a precondition, in op order.
    expectations: Vec<(String, u64)>,
    /// The Skein keys read by the failure branch, in response order.
    checked_keys: Vec<String>,
}

impl Txn {
    /// Compares: one per precondition (`Some(0)`: the key was never created, or deleted
    /// since; otherwise its `mod_revision`). Success: the writes. etcd refuses two writes to
    /// one key in a transaction, so the last op on a key wins (as when applied in order);
    /// every precondition is checked against the state before the commit. Failure: read
    /// every checked key, to report which precondition failed.
    fn build(store: &EtcdStore, ops: Vec<Op>) -> Txn {
        use rpc::compare::{CompareResult, CompareTarget, TargetUnion};
        let mut txn = Txn {
            request: rpc::TxnRequest::default(),
            expectations: Vec::new(),
            checked_keys: Vec::new(),
        };
        let mut writes: Vec<rpc::RequestOp> = Vec::with_capacity(ops.len());
        let mut write_index: HashMap<String, usize> = HashMap::new();
        for op in ops {
            let (key, expect) = match &op {
                Op::Put { key, expect, .. } | Op::Delete { key, expect } => (key.clone(), *expect),
            };
            let full = store.full_key(&key);
            if let Some(expected) = expect {
                let (target, union) = match expected {
                    0 => (CompareTarget::Create, TargetUnion::CreateRevision(0)),
                    rev => (CompareTarget::Mod, TargetUnion::ModRevision(rev as i64)),
                };
                txn.request.compare.push(rpc::Compare {
                    result: CompareResult::Equal as i32,
                    target: target as i32,
                    key: full.clone(),
                    target_union: Some(union),
                });
                if !txn.checked_keys.contains(&key) {
                    txn.request.failure.push(rpc::RequestOp {
                        request: Some(rpc::request_op::Request::RequestRange(rpc::RangeRequest {
                            key: full.clone(),
                            ..Default::default()
                        })),
                    });
                    txn.checked_keys.push(key.clone());
                }
                txn.expectations.push((key.clone(), expected));
            }
            let write = match op {
                Op::Put { value, .. } => rpc::request_op::Request::RequestPut(rpc::PutRequest {
                    key: full,
                    value,
                    ..Default::default()
                }),
                Op::Delete { .. } => {
                    rpc::request_op::Request::RequestDeleteRange(rpc::DeleteRangeRequest {
                        key: full,
                        ..Default::default()
                    })
                }
            };
            let write = rpc::RequestOp {
                request: Some(write),
            };
            match write_index.get(&key) {
                Some(&i) => writes[i] = write,
                None => {
                    write_index.insert(key, writes.len());
                    writes.push(write);
                }
            }
        }
        txn.request.success = writes;
        txn
    }
}

impl Store for EtcdStore {
    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<Entry>, u64), StoreError>> {
        let prefix = prefix.to_string();
        Box::pin(async move { Ok(self.list_pages(&prefix).await?) })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.commit_txn(ops))
    }

    /// Starts after the latest revision this store has seen (from any list, commit or
    /// watch), so changes committed after the call are delivered; a few changes from just
    /// before it may be delivered too. Needs a tokio runtime (the stream runs in a task);
    /// without one the channel is closed at once.
    fn watch(&self, prefix: &str) -> mpsc::Receiver<Vec<Event>> {
        let from = self.inner.revision.load(Ordering::Relaxed) + 1;
        watch::spawn(self.clone(), prefix, from)
    }
}

/// A streaming request that etcd ends (`no leader`) when its member loses the cluster's
/// leader, instead of keeping it open on a member that hears nothing (etcd's `hasleader`
/// metadata, as etcd's own clients send with `WithRequireLeader`).
fn require_leader<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

/// etcd revisions are `int64` but never negative.
fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end for
/// a prefix): the prefix with its last byte below 0xff incremented and the rest dropped.
/// `[0]` (which etcd reads as "to the end of the keyspace") when there is no such byte.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn normalize_prefix(prefix: &str) -> Result<String, EtcdError> {
    match prefix {
        "" => Err(EtcdError::EmptyPrefix),
        p if p.ends_with('/') => Ok(p.to_string()),
        p => Ok(format!("{p}/")),
    }
}

/// `HOST:PORT` (an `http://` scheme is tolerated) → the URI tonic connects to.
fn parse_endpoint(endpoint: &str) -> Result<String, EtcdError> {
    let bad = || EtcdError::BadEndpoint(endpoint.to_string());
    let trimmed = endpoint.trim();
    let authority = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains("://") || authority.contains('/') {
        return Err(bad());
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(format!("http://{authority}"))
}

/// An error and its sources on one line ("transport error: … Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A gRPC status as "message: cause" ("tcp connect error: Connection refused (os error
/// 111)"), without tonic's debug rendering.
fn status_text(status: &tonic::Status) -> String {
    let mut text = match status.message() {
        "" => format!("{:?}", status.code()),
        m => m.to_string(),
    };
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Exponential backoff with jitter between reconnection attempts: 100 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next delay: the current step plus up to half of it at random.
    fn next_delay(&mut self) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let step = self.next;
        self.next = (step * 2).min(Self::MAX);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let half = u64::try_from(step.as_millis() / 2).unwrap_or(0).max(1);
        step + Duration::from_millis(random % half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/skein/"), b"/skein0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn endpoints_are_host_and_port() {
        assert_eq!(
            parse_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint("http://etcd.local:2379/").unwrap(),
            "http://etcd.local:2379"
        );
        assert_eq!(parse_endpoint("[::1]:2379").unwrap(), "http://[::1]:2379");
        for bad in [
            "127.0.0.1",
            ":2379",
            "https://h:2379",
            "h:0",
            "h:x",
            "h:1/path",
        ] {
            let err = parse_endpoint(bad).unwrap_err().to_string();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn prefixes_end_with_a_slash() {
        assert_eq!(normalize_prefix("/skein").unwrap(), "/skein/");
        assert_eq!(normalize_prefix("/a/").unwrap(), "/a/");
        assert!(normalize_prefix("").is_err());
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Backoff::FIRST && first < Backoff::FIRST * 2);
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped >= Backoff::MAX && capped <= Backoff::MAX * 3 / 2);
        b.reset();
        assert!(b.next_delay() < Backoff::FIRST * 2);
    }
}
