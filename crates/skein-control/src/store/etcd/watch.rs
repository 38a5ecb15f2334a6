//! Watches: one background task per [`Store::watch`](super::Store::watch) call, holding an
//! etcd watch stream on the prefix and feeding the caller's channel in revision order.
//!
//! When the stream breaks (etcd restarted, connection lost) the task reconnects with
//! backoff and resumes just after the last revision it delivered, so nothing is lost or
//! repeated. When etcd has compacted that revision away, the history is gone: the task
//! closes the channel and the consumer re-lists. The task ends when the receiver is dropped.

use super::pb::etcdserverpb::{self as rpc, watch_client::WatchClient};
use super::pb::mvccpb;
use super::{prefix_end, revision, status_text, Backoff, EtcdStore, MAX_MESSAGE};
use crate::store::Event;
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Events buffered for a slow consumer; beyond this the task waits (and etcd buffers).
const WATCH_BUFFER: usize = 4096;

/// Starts a watch on Skein keys under `prefix`, from store revision `from`.
pub(super) fn spawn(store: EtcdStore, prefix: &str, from: u64) -> mpsc::Receiver<Vec<Event>> {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("an etcd watch needs a tokio runtime; closing it");
        return rx;
    };
    let key = store.full_key(prefix);
    let range = Range {
        range_end: prefix_end(&key),
        key,
    };
    runtime.spawn(run(store, range, from, tx));
    rx
}

/// The etcd keys watched: `[key, range_end)`.
struct Range {
    key: Vec<u8>,
    range_end: Vec<u8>,
}

/// Why one watch stream ended.
enum Ended {
    /// The consumer dropped its receiver: stop.
    ReceiverGone,
    /// etcd no longer has the revisions we need: close the channel.
    Compacted(i64),
    /// The stream or connection failed: reconnect.
    Failed(String),
}

async fn run(store: EtcdStore, range: Range, from: u64, tx: mpsc::Sender<Vec<Event>>) {
    let mut next = i64::try_from(from).unwrap_or(i64::MAX);
    let mut backoff = Backoff::new();
    loop {
        let before = next;
        match stream_once(&store, &range, &mut next, &tx).await {
            Ended::ReceiverGone => return,
            Ended::Compacted(compacted) => {
                tracing::warn!(
                    key = %String::from_utf8_lossy(&range.key),
                    wanted = next,
                    compacted,
                    "etcd compacted the history this watch needs; closing it so its consumer re-lists"
                );
                return;
            }
            Ended::Failed(why) => {
                if next > before {
                    backoff.reset();
                }
                store.fail_over(format!("a watch: {why}"));
                let delay = backoff.next_delay();
                tracing::warn!(
                    endpoint = store.endpoint(),
                    resume_at = next,
                    "etcd watch interrupted ({why}); reconnecting in {delay:?}"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
        }
    }
}

/// Runs one watch stream from revision `*next`, advancing `*next` past every delivered
/// event, until it ends.
async fn stream_once(
    store: &EtcdStore,
    range: &Range,
    next: &mut i64,
    tx: &mpsc::Sender<Vec<Event>>,
) -> Ended {
    let create = rpc::WatchRequest {
        request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
            rpc::WatchCreateRequest {
                key: range.key.clone(),
                range_end: range.range_end.clone(),
                start_revision: *next,
                progress_notify: true,
                ..Default::default()
            },
        )),
    };
    // The request side stays open: closing it would end the watch on some etcd versions.
    let requests = futures_util::stream::iter([create]).chain(futures_util::stream::pending());
    let mut moved = store.moved();
    let mut client = WatchClient::new(store.channel()).max_decoding_message_size(MAX_MESSAGE);
    let mut stream = tokio::select! {
        opened = tokio::time::timeout(super::REQUEST_TIMEOUT, client.watch(super::require_leader(requests))) => match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Ended::Failed(status_text(&status)),
            Err(_) => return Ended::Failed("no answer to the watch request".into()),
        },
        () = tx.closed() => return Ended::ReceiverGone,
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = tx.closed() => return Ended::ReceiverGone,
            _ = moved.changed() => return Ended::Failed("the store moved to another etcd member".into()),
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Ended::Failed("etcd ended the stream".into()),
            Err(status) => return Ended::Failed(status_text(&status)),
        };
        if response.compact_revision > 0 {
            return Ended::Compacted(response.compact_revision);
        }
        if response.canceled {
            return Ended::Failed(format!("etcd canceled it: {}", response.cancel_reason));
        }
        let at = store.observe(response.header.as_ref());
        if response.events.is_empty() && !response.created {
            // A progress notification: every change up to `at` has been delivered.
            *next = (*next).max(i64::try_from(at).unwrap_or(i64::MAX).saturating_add(1));
            continue;
        }
        // One response holds whole revisions (no fragmentation is requested), so one
        // message per response keeps each commit together.
        let mut batch = Vec::with_capacity(response.events.len());
        for event in response.events {
            let Some(kv) = event.kv.as_ref() else {
                continue;
            };
            *next = (*next).max(kv.mod_revision.saturating_add(1));
            if let Some(event) = to_event(store, event) {
                batch.push(event);
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return Ended::ReceiverGone;
        }
    }
}

/// An etcd event as a store [`Event`] (`None` for keys that are not Skein's).
fn to_event(store: &EtcdStore, event: mvccpb::Event) -> Option<Event> {
    let kv = event.kv?;
    if event.r#type == mvccpb::event::EventType::Delete as i32 {
        Some(Event::Delete {
            key: store.skein_key(&kv.key)?,
            revision: revision(kv.mod_revision),
        })
    } else {
        store.entry(kv).map(Event::Put)
    }
}
