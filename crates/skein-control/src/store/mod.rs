//! The resource store: a key-value map with a global revision, atomic multi-key commits
//! with optimistic concurrency, and a stream of changes.
//!
//! Two implementations share the [`Store`] trait: [`embedded::EmbeddedStore`] (one file in
//! the data directory, nothing to install) and, for several control-plane replicas, etcd.
//! Values are opaque bytes here; the layer above stores resources as JSON.

pub mod embedded;
pub mod etcd;

use futures_util::future::BoxFuture;

/// One stored value with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, e.g. `resources/HTTPRoute/default/restaurant`.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The store revision of the write that produced this value.
    pub revision: u64,
}

/// One write in an atomic commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace `key`. With `expect`, the key's current revision must equal it
    /// (`Some(0)`: the key must not exist).
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Optimistic-concurrency precondition.
        expect: Option<u64>,
    },
    /// Remove `key`; with `expect`, only if its revision equals it.
    Delete {
        /// The key.
        key: String,
        /// Optimistic-concurrency precondition.
        expect: Option<u64>,
    },
}

/// A committed change, as seen by watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `entry` was written.
    Put(Entry),
    /// `key` was removed at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the removal.
        revision: u64,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(e) => &e.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of a commit did not hold; nothing was written.
    #[error("{key} was changed concurrently (expected revision {expected}, found {found}); get it again and retry")]
    Conflict {
        /// The key whose precondition failed.
        key: String,
        /// The revision the caller expected.
        expected: u64,
        /// The revision found (0: absent).
        found: u64,
    },
    /// The backing storage failed.
    #[error("store unavailable: {0}")]
    Backend(String),
}

/// The JSON record at exactly `key` (not its children), with the revision that wrote it;
/// `corrupt` turns a decoding failure into the caller's error.
pub async fn get_json<T: serde::de::DeserializeOwned, E: From<StoreError>>(
    store: &dyn Store,
    key: &str,
    corrupt: impl FnOnce(serde_json::Error) -> E,
) -> Result<Option<(T, u64)>, E> {
    let (found, _) = store.list(key).await?;
    match found.into_iter().find(|e| e.key == key) {
        None => Ok(None),
        Some(e) => serde_json::from_slice(&e.value)
            .map(|r| Some((r, e.revision)))
            .map_err(corrupt),
    }
}

/// What every store provides.
pub trait Store: Send + Sync + 'static {
    /// Every entry whose key starts with `prefix`, and the store revision they reflect.
    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<Entry>, u64), StoreError>>;

    /// Applies every op or none; returns the new store revision.
    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Changes committed after this call, in revision order, for keys under `prefix`: one
    /// message per commit (every change of an atomic commit together). The channel closes
    /// if the watcher falls too far behind or the history it needs is gone; re-list then.
    fn watch(&self, prefix: &str) -> tokio::sync::mpsc::Receiver<Vec<Event>>;
}
