//! The embedded store: a single redb file (`store.redb`) in the control plane's data
//! directory. Crash-safe (copy-on-write B-trees, fsync on commit), nothing to install.
//! Watchers are fed in-process, since only one control plane can own the file.
//!
//! A failed write (a full disk, a filesystem remounted read-only) is refused with what was
//! wrong and what to do, and writes nothing: the commit before it stays the file's state.
//! redb refuses every later operation on a database that met an I/O error, so the store
//! then drops its handle and opens the file again at the next operation (redb checks and
//! repairs it on opening). Until that succeeds (space is back) operations are refused with
//! the same clear error; once it does, every watcher's channel is closed, so that what
//! follows the file re-lists it and holds exactly what it holds. Everything served from
//! memory (the API's reads, the proxies' configurations, certificates) goes on meanwhile.

use super::{Entry, Event, Op, Store, StoreError};
use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
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
    file: Arc<File>,
    watchers: Watchers,
}

/// The store file and the open database (none after an I/O error, until reopened).
struct File {
    path: PathBuf,
    db: Mutex<Option<Arc<Database>>>,
    /// `store.lock`, locked for as long as this process runs: redb's own lock on the file
    /// goes while the database is closed to be reopened, and this one keeps another
    /// control plane from taking the file meanwhile.
    _lock: std::fs::File,
    /// Whether a reopening is under way, and when the last one failed (reopening runs
    /// redb's repair: at most once a second while the disk is still full).
    reopening: Mutex<Reopening>,
}

#[derive(Default)]
struct Reopening {
    busy: bool,
    failed: Option<(std::time::Instant, String)>,
}

/// How often a failed reopening is tried again at most.
const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a reopening waits for operations that still hold the old handle (begun
/// before the I/O error) to finish: redb refuses to open a file this process has open.
const RELEASE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the store's file again once every operation holding the old handle has let go
/// of it (at most [`RELEASE_WITHIN`]).
fn open_when_released(path: &Path) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + RELEASE_WITHIN;
    loop {
        match Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Why an operation on the database failed: a refusal of the store's own (a conflict), or
/// redb's error.
enum Failed {
    Store(StoreError),
    Redb(redb::Error),
}

/// A redb error, worded for the operator: a full or read-only filesystem says so and what
/// to do; the rest as redb puts it.
fn backend(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    let io = match &e {
        redb::Error::Io(io) => io,
        redb::Error::DatabaseAlreadyOpen => {
            return StoreError::Backend(format!(
                "the store {} is being reopened after an I/O error, and an operation begun before it still holds the file; try again",
                path.display()
            ))
        }
        other => return StoreError::Backend(format!("{}: {other}", path.display())),
    };
    use std::io::ErrorKind;
    // Refused before anything reached the disk, or a failure that may have come after
    // (a disk error during the commit's flush).
    let (advice, outcome) = match io.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => (
            "its filesystem is full: free space there (`df -h` on the data directory)",
            "Nothing was written",
        ),
        ErrorKind::ReadOnlyFilesystem => (
            "its filesystem is read-only: the kernel does this to a filesystem after disk errors (check `dmesg`); repair it and remount it read-write",
            "Nothing was written",
        ),
        ErrorKind::PermissionDenied => (
            "permission denied: the control plane's user must own the data directory",
            "Nothing was written",
        ),
        _ => (
            "check the disk and filesystem of the data directory",
            "The change may or may not have been made (check with `skein get` once the store works)",
        ),
    };
    StoreError::Backend(format!(
        "cannot use the store {}: {io}; {advice}. {outcome}; the control plane keeps serving what it holds and will write again once the store can",
        path.display()
    ))
}

/// A failure of the machinery around redb (a blocking task that panicked).
fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `DIR/store.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        owner_only(&path)?;
        let lock = lock_dir(dir)?;
        let db = Database::create(&path).map_err(|e| backend(&path, e))?;
        let txn = db.begin_write().map_err(|e| backend(&path, e))?;
        txn.open_table(DATA).map_err(|e| backend(&path, e))?;
        txn.open_table(META).map_err(|e| backend(&path, e))?;
        txn.commit().map_err(|e| backend(&path, e))?;
        Ok(EmbeddedStore {
            file: Arc::new(File {
                path,
                db: Mutex::new(Some(Arc::new(db))),
                _lock: lock,
                reopening: Mutex::default(),
            }),
            watchers: Arc::default(),
        })
    }

    /// The open database, opening the file again (in a blocking task, one at a time, at
    /// most once every [`REOPEN_EVERY`] while it fails) if an I/O error closed it. A
    /// reopening closes every watcher's channel (they re-list).
    async fn database(&self) -> Result<Arc<Database>, StoreError> {
        // An operation that finds a reopening under way waits for its outcome (it takes
        // at most about `RELEASE_WITHIN`) rather than being refused for it.
        let wait_until = std::time::Instant::now() + 2 * RELEASE_WITHIN;
        loop {
            if let Some(db) = &*self.file.db.lock().unwrap_or_else(|p| p.into_inner()) {
                return Ok(db.clone());
            }
            // Ok(true): this operation reopens; Ok(false): another one is.
            let ours = {
                let mut reopening = self
                    .file
                    .reopening
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match &reopening.failed {
                    _ if reopening.busy => Ok(false),
                    Some((at, why)) if at.elapsed() < REOPEN_EVERY => {
                        Err(StoreError::Backend(why.clone()))
                    }
                    _ => {
                        reopening.busy = true;
                        Ok(true)
                    }
                }
            };
            if ours? {
                break;
            }
            if std::time::Instant::now() > wait_until {
                return Err(StoreError::Backend(format!(
                    "the store {} is being opened again after an I/O error; try again shortly",
                    self.file.path.display()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let path = self.file.path.clone();
        let opened = tokio::task::spawn_blocking(move || open_when_released(&path))
            .await
            .map_err(internal)
            .and_then(|r| r.map_err(|e| backend(&self.file.path, e)));
        let mut reopening = self
            .file
            .reopening
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        reopening.busy = false;
        let db = match opened {
            Ok(db) => Arc::new(db),
            Err(e) => {
                // Kept as the message alone: it is returned as a `Backend` error again.
                let why = match &e {
                    StoreError::Backend(why) => why.clone(),
                    other => other.to_string(),
                };
                reopening.failed = Some((std::time::Instant::now(), why));
                return Err(e);
            }
        };
        reopening.failed = None;
        *self.file.db.lock().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
        drop(reopening);
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        tracing::info!(path = %self.file.path.display(), "reopened the store after an I/O error; watchers re-list it");
        Ok(db)
    }

    /// Runs `op` on the database in a blocking task; after an I/O error, lets go of the
    /// database so that the next operation opens the file again.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.database().await?;
        let used = db.clone();
        let result = tokio::task::spawn_blocking(move || op(&used))
            .await
            .map_err(internal)?;
        match result {
            Ok(value) => Ok(value),
            Err(Failed::Store(e)) => Err(e),
            Err(Failed::Redb(e)) => {
                // redb refuses every later operation after an I/O error.
                let io = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
                let error = backend(&self.file.path, e);
                if io {
                    let mut slot = self.file.db.lock().unwrap_or_else(|p| p.into_inner());
                    if slot
                        .as_ref()
                        .is_some_and(|current| Arc::ptr_eq(current, &db))
                    {
                        *slot = None;
                        tracing::warn!(path = %self.file.path.display(), error = %error, "the store met an I/O error; it will be opened again at the next operation");
                    }
                }
                Err(error)
            }
        }
    }

    fn list_sync(db: &Database, prefix: &str) -> Result<(Vec<Entry>, u64), Failed> {
        let backend = Failed::Redb;
        let txn = db.begin_read().map_err(|e| backend(e.into()))?;
        let data = txn.open_table(DATA).map_err(|e| backend(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| backend(e.into()))?;
        let revision = meta
            .get("revision")
            .map_err(|e| backend(e.into()))?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut out = Vec::new();
        for item in data.range(prefix..).map_err(|e| backend(e.into()))? {
            let (k, v) = item.map_err(|e| backend(e.into()))?;
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

    fn commit_sync(db: &Database, ops: &[Op]) -> Result<(u64, Vec<Event>), Failed> {
        let backend = Failed::Redb;
        let txn = db.begin_write().map_err(|e| backend(e.into()))?;
        let mut events = Vec::with_capacity(ops.len());
        let revision = {
            let mut data = txn.open_table(DATA).map_err(|e| backend(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| backend(e.into()))?;
            let revision = meta
                .get("revision")
                .map_err(|e| backend(e.into()))?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            for op in ops {
                let (key, expect) = match op {
                    Op::Put { key, expect, .. } | Op::Delete { key, expect } => (key, expect),
                };
                let found = data
                    .get(key.as_str())
                    .map_err(|e| backend(e.into()))?
                    .map(|v| v.value().0)
                    .unwrap_or(0);
                if let Some(expected) = *expect {
                    if expected != found {
                        // Dropping the transaction without commit discards every write.
                        return Err(Failed::Store(StoreError::Conflict {
                            key: key.clone(),
                            expected,
                            found,
                        }));
                    }
                }
                match op {
                    Op::Put { key, value, .. } => {
                        data.insert(key.as_str(), (revision, value.as_slice()))
                            .map_err(|e| backend(e.into()))?;
                        events.push(Event::Put(Entry {
                            key: key.clone(),
                            value: value.clone(),
                            revision,
                        }));
                    }
                    Op::Delete { key, .. } => {
                        if data
                            .remove(key.as_str())
                            .map_err(|e| backend(e.into()))?
                            .is_some()
                        {
                            events.push(Event::Delete {
                                key: key.clone(),
                                revision,
                            });
                        }
                    }
                }
            }
            meta.insert("revision", revision)
                .map_err(|e| backend(e.into()))?;
            revision
        };
        txn.commit().map_err(|e| backend(e.into()))?;
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
        let prefix = prefix.to_string();
        Box::pin(async move { self.run(move |db| Self::list_sync(db, &prefix)).await })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let (revision, events) = self.run(move |db| Self::commit_sync(db, &ops)).await?;
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

/// Locks `DIR/store.lock` for the life of the process: one control plane per data
/// directory, also while the store file itself is closed to be reopened.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("store.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "another control plane uses the data directory {} ({} is locked): stop it, or give this one its own --data-dir",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
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

    #[test]
    fn io_errors_say_what_was_wrong_and_what_to_do() {
        let path = Path::new("/data/store.redb");
        let say = |errno: i32| backend(path, std::io::Error::from_raw_os_error(errno)).to_string();
        let full = say(28); // ENOSPC
        assert!(full.contains("/data/store.redb"), "{full}");
        assert!(full.contains("filesystem is full: free space"), "{full}");
        assert!(full.contains("Nothing was written"), "{full}");
        let read_only = say(30);
        assert!(read_only.contains("read-only: the kernel"), "{read_only}");
        assert!(read_only.contains("Nothing was written"), "{read_only}");
        assert!(say(13).contains("permission denied"), "{}", say(13));
        // A disk error may come after the commit reached the disk: not said to be unwritten.
        let eio = say(5);
        assert!(eio.contains("check the disk"), "{eio}");
        assert!(eio.contains("may or may not have been made"), "{eio}");
        let other = backend(path, redb::Error::PreviousIo).to_string();
        assert!(
            other.starts_with("store unavailable: /data/store.redb: "),
            "{other}"
        );
    }

    #[test]
    fn reopening_waits_for_the_old_handle_to_go() {
        let dir = temp_dir("release");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.redb");
        let old = Database::create(&path).unwrap();
        // redb refuses a second handle while the first lives (what an operation begun
        // before an I/O error holds)...
        assert!(matches!(
            Database::create(&path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        // ...and the reopening waits for it to go instead of failing.
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(old);
        });
        open_when_released(&path).expect("opened once the old handle went");
        holder.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn one_store_per_data_directory() {
        let dir = temp_dir("lock");
        let first = EmbeddedStore::open(&dir).unwrap();
        let second = EmbeddedStore::open(&dir)
            .err()
            .expect("the directory is in use");
        assert!(
            second
                .to_string()
                .contains("another control plane uses the data directory"),
            "{second}"
        );
        drop(first);
        drop(EmbeddedStore::open(&dir).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
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
