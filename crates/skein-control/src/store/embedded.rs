//! The embedded store: a single redb file (`store.redb`) in the control plane's data
//! directory. Crash-safe (copy-on-write B-trees, fsync on commit), nothing to install.
//! Watchers are fed in-process, since only one control plane can own the file.

use super::{Entry, Event, Op, Store, StoreError};
use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// key → (revision, value)
const DATA: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("data");
/// "revision" → the store's current revision
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Watch channels are bounded (in commits); a watcher that falls this far behind is dropped
/// and must re-list (it sees its channel close).
const WATCH_BUFFER: usize = 4096;

/// Watchers: each with the key prefix it follows.
type Watchers = Arc<Mutex<Vec<(String, mpsc::Sender<Vec<Event>>)>>>;

/// A persistent store in one file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    watchers: Watchers,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `DIR/store.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        owner_only(&path)?;
        let db = Database::create(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(DATA).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            watchers: Arc::default(),
        })
    }

    fn list_sync(db: &Database, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let data = txn.open_table(DATA).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta
            .get("revision")
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut out = Vec::new();
        for item in data.range(prefix..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (rev, value) = v.value();
            out.push(Entry {
                key: key.to_string(),
                value: value.to_vec(),
                revision: rev,
            });
        }
        Ok((out, revision))
    }

    fn commit_sync(db: &Database, ops: &[Op]) -> Result<(u64, Vec<Event>), StoreError> {
        let txn = db.begin_write().map_err(backend)?;
        let mut events = Vec::with_capacity(ops.len());
        let revision = {
            let mut data = txn.open_table(DATA).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let revision = meta
                .get("revision")
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            for op in ops {
                let (key, expect) = match op {
                    Op::Put { key, expect, .. } | Op::Delete { key, expect } => (key, expect),
                };
                let found = data
                    .get(key.as_str())
                    .map_err(backend)?
                    .map(|v| v.value().0)
                    .unwrap_or(0);
                if let Some(expected) = *expect {
                    if expected != found {
                        // Dropping the transaction without commit discards every write.
                        return Err(StoreError::Conflict {
                            key: key.clone(),
                            expected,
                            found,
                        });
                    }
                }
                match op {
                    Op::Put { key, value, .. } => {
                        data.insert(key.as_str(), (revision, value.as_slice()))
                            .map_err(backend)?;
                        events.push(Event::Put(Entry {
                            key: key.clone(),
                            value: value.clone(),
                            revision,
                        }));
                    }
                    Op::Delete { key, .. } => {
                        if data.remove(key.as_str()).map_err(backend)?.is_some() {
                            events.push(Event::Delete {
                                key: key.clone(),
                                revision,
                            });
                        }
                    }
                }
            }
            meta.insert("revision", revision).map_err(backend)?;
            revision
        };
        txn.commit().map_err(backend)?;
        Ok((revision, events))
    }

    fn notify(&self, events: &[Event]) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|(prefix, tx)| {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| e.key().starts_with(prefix.as_str()))
                .cloned()
                .collect();
            mine.is_empty() || tx.try_send(mine).is_ok()
        });
    }
}

impl Store for EmbeddedStore {
    fn list(&self, prefix: &str) -> BoxFuture<'_, Result<(Vec<Entry>, u64), StoreError>> {
        let (db, prefix) = (self.db.clone(), prefix.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::list_sync(&db, &prefix))
                .await
                .map_err(backend)?
        })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            let (revision, events) =
                tokio::task::spawn_blocking(move || Self::commit_sync(&db, &ops))
                    .await
                    .map_err(backend)??;
            self.notify(&events);
            Ok(revision)
        })
    }

    fn watch(&self, prefix: &str) -> mpsc::Receiver<Vec<Event>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.push((prefix.to_string(), tx));
        rx
    }
}

/// Makes `path` (the store file, which holds the mesh CA's keys) readable by its owner
/// only: created `0600`, or set back to `0600` with a warning if it was wider.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Backend(format!("cannot {what} {}: {e}", path.display()))
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail("create", e)),
    }
    let mode = std::fs::metadata(path)
        .map_err(|e| fail("inspect", e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the store file was readable by others; setting it to 0600 (it holds the mesh CA's keys)");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail("restrict", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, expect: Option<u64>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            expect,
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("skein-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn the_store_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        drop(EmbeddedStore::open(&dir).unwrap());
        let file = dir.join("store.redb");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600, "created owner-only");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(EmbeddedStore::open(&dir).unwrap());
        assert_eq!(mode(&file), 0o600, "set back when it was wider");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn commits_are_atomic_and_persist_across_reopen() {
        let dir = temp_dir("persist");
        {
            let store = EmbeddedStore::open(&dir).unwrap();
            let rev = store
                .commit(vec![put("r/a", "1", Some(0)), put("r/b", "2", None)])
                .await
                .unwrap();
            assert_eq!(rev, 1);
            // A failed precondition writes nothing, not even the valid op before it.
            let err = store
                .commit(vec![put("r/c", "3", None), put("r/a", "x", Some(0))])
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Conflict {
                        expected: 0,
                        found: 1,
                        ..
                    }
                ),
                "{err}"
            );
            store
                .commit(vec![Op::Delete {
                    key: "r/b".into(),
                    expect: Some(1),
                }])
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(&dir).unwrap();
        let (entries, revision) = store.list("r/").await.unwrap();
        assert_eq!(revision, 2);
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].key.as_str(), entries[0].value.as_slice()),
            ("r/a", &b"1"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn watchers_see_committed_changes_under_their_prefix() {
        let dir = temp_dir("watch");
        let store = EmbeddedStore::open(&dir).unwrap();
        let mut rx = store.watch("r/");
        store
            .commit(vec![put("r/a", "1", None), put("other/x", "1", None)])
            .await
            .unwrap();
        store
            .commit(vec![Op::Delete {
                key: "r/a".into(),
                expect: None,
            }])
            .await
            .unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first.len(), 1, "one commit, only keys under r/: {first:?}");
        assert!(matches!(first[0], Event::Put(ref e) if e.key == "r/a" && e.revision == 1));
        let second = rx.recv().await.unwrap();
        let delete = Event::Delete {
            key: "r/a".into(),
            revision: 2,
        };
        assert_eq!(second, [delete]);
        assert!(rx.try_recv().is_err(), "other/ is not under the prefix");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
