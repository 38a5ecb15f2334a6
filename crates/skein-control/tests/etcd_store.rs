//! The etcd store and leader election against a real etcd (Debian's `etcd-server`, started
//! per test on loopback by `skein_testkit::etcd::Etcd`). Skipped, with a message, only when
//! etcd is not installed.

use skein_control::store::etcd::{Election, EtcdStore};
use skein_control::store::{Event, Op, Store, StoreError};
use skein_testkit::etcd::Etcd;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Generous bound for anything that should take milliseconds.
const SOON: Duration = Duration::from_secs(15);

fn start_etcd() -> Option<Etcd> {
    skein_testkit::init_tracing();
    if !Etcd::available() {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server); CI installs it");
        return None;
    }
    Some(Etcd::start().expect("start etcd"))
}

async fn connect(etcd: &Etcd, prefix: &str) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()], prefix)
        .await
        .expect("connect to etcd")
}

fn put(key: &str, value: &str, expect: Option<u64>) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expect,
    }
}

fn delete(key: &str, expect: Option<u64>) -> Op {
    Op::Delete {
        key: key.into(),
        expect,
    }
}

/// The next event, one at a time (the watch delivers whole commits; this unpacks them).
async fn recv(rx: &mut mpsc::Receiver<Vec<Event>>) -> Event {
    thread_local! {
        static PENDING: std::cell::RefCell<std::collections::VecDeque<Event>> = Default::default();
    }
    if let Some(e) = PENDING.with(|p| p.borrow_mut().pop_front()) {
        return e;
    }
    let batch = tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("an event within the deadline")
        .expect("the watch is open");
    PENDING.with(|p| p.borrow_mut().extend(batch));
    PENDING
        .with(|p| p.borrow_mut().pop_front())
        .expect("commits carry at least one event")
}

async fn keys_and_values(store: &EtcdStore, prefix: &str) -> Vec<(String, String)> {
    let (entries, _) = store.list(prefix).await.unwrap();
    entries
        .into_iter()
        .map(|e| (e.key, String::from_utf8(e.value).unwrap()))
        .collect()
}

#[tokio::test]
async fn commits_are_atomic_with_per_key_preconditions() {
    let Some(etcd) = start_etcd() else { return };
    let store = connect(&etcd, "/skein-test").await;
    assert_eq!(store.prefix(), "/skein-test/");

    let r1 = store
        .commit(vec![put("r/a", "1", Some(0)), put("r/b", "2", None)])
        .await
        .unwrap();
    let (entries, at) = store.list("r/").await.unwrap();
    assert_eq!(at, r1);
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.revision == r1));

    // A failed precondition writes nothing, not even the valid op before it.
    let err = store
        .commit(vec![put("r/c", "3", None), put("r/a", "x", Some(0))])
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            key,
            expected,
            found,
        } => assert_eq!((key.as_str(), expected, found), ("r/a", 0, r1)),
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(
        keys_and_values(&store, "r/").await,
        [("r/a".into(), "1".into()), ("r/b".into(), "2".into())]
    );

    // Optimistic update: the current revision wins once, then is stale.
    let r2 = store
        .commit(vec![put("r/a", "10", Some(r1))])
        .await
        .unwrap();
    assert!(r2 > r1);
    let err = store
        .commit(vec![put("r/a", "11", Some(r1))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, expected, found } if key == "r/a" && expected == r1 && found == r2),
        "{err}"
    );
    // A precondition on an absent key reports found 0.
    let err = store
        .commit(vec![put("r/zz", "1", Some(r1))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { found: 0, .. }),
        "{err}"
    );

    let r3 = store
        .commit(vec![delete("r/b", Some(r1)), delete("r/never", Some(0))])
        .await
        .unwrap();
    assert!(r3 > r2);
    // The last op on a key wins, as when applied in order.
    let r4 = store
        .commit(vec![put("r/d", "1", None), put("r/d", "2", Some(0))])
        .await
        .unwrap();
    assert!(r4 > r3);
    assert_eq!(
        keys_and_values(&store, "r/").await,
        [("r/a".into(), "10".into()), ("r/d".into(), "2".into())]
    );

    // Prefixes separate: a neighbouring key and another store prefix are not listed.
    store.commit(vec![put("rx", "1", None)]).await.unwrap();
    assert_eq!(keys_and_values(&store, "r/").await.len(), 2);
    let other = connect(&etcd, "/other/").await;
    let (entries, at) = other.list("").await.unwrap();
    assert!(entries.is_empty());
    assert!(at >= r4, "the store revision is etcd's");
}

#[tokio::test]
async fn lists_larger_than_one_page_are_complete() {
    let Some(etcd) = start_etcd() else { return };
    let store = connect(&etcd, "/skein/").await;
    // Several commits (etcd allows 128 ops per transaction by default).
    for batch in 0..12 {
        let ops = (0..100)
            .map(|i| put(&format!("many/{batch:02}-{i:03}"), "v", None))
            .collect();
        store.commit(ops).await.unwrap();
    }
    let (entries, _) = store.list("many/").await.unwrap();
    assert_eq!(entries.len(), 1200);
    assert!(entries.windows(2).all(|w| w[0].key < w[1].key));

    let too_many = (0..200)
        .map(|i| put(&format!("big/{i}"), "v", None))
        .collect();
    let err = store.commit(too_many).await.unwrap_err().to_string();
    assert!(err.contains("--max-txn-ops"), "{err}");
}

#[tokio::test]
async fn connect_names_every_endpoint_it_tried() {
    // Ports nobody listens on (bound and released).
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let err = match EtcdStore::connect(&dead, "/skein/").await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    for endpoint in &dead {
        assert!(err.contains(endpoint.as_str()), "{err}");
    }
    assert!(err.contains("--store etcd://"), "{err}");
    let err = match EtcdStore::connect(&["localhost".into()], "/skein/").await {
        Ok(_) => panic!("accepted an endpoint without a port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("HOST:PORT"), "{err}");

    // The first endpoint that answers is used.
    let Some(etcd) = start_etcd() else { return };
    let endpoints = [dead[0].clone(), etcd.endpoint()];
    let store = EtcdStore::connect(&endpoints, "/skein/").await.unwrap();
    assert_eq!(store.endpoint(), etcd.endpoint());
}

#[tokio::test]
async fn watch_sees_changes_in_order_under_its_prefix_only() {
    let Some(etcd) = start_etcd() else { return };
    let store = connect(&etcd, "/skein/").await;
    let mut rx = store.watch("w/");
    let r1 = store
        .commit(vec![put("w/a", "1", None), put("other/x", "1", None)])
        .await
        .unwrap();
    let r2 = store.commit(vec![put("w/b", "2", None)]).await.unwrap();
    let r3 = store.commit(vec![delete("w/a", None)]).await.unwrap();
    store.commit(vec![put("wx", "1", None)]).await.unwrap();
    let r4 = store.commit(vec![put("w/z", "end", None)]).await.unwrap();

    match recv(&mut rx).await {
        Event::Put(e) => assert_eq!(
            (e.key.as_str(), e.value.as_slice(), e.revision),
            ("w/a", &b"1"[..], r1)
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(recv(&mut rx).await, Event::Put(e) if e.key == "w/b" && e.revision == r2));
    assert_eq!(
        recv(&mut rx).await,
        Event::Delete {
            key: "w/a".into(),
            revision: r3
        }
    );
    // Neither other/x nor wx came in between.
    assert!(matches!(recv(&mut rx).await, Event::Put(e) if e.key == "w/z" && e.revision == r4));
}

#[tokio::test]
async fn watch_resumes_after_etcd_restarts() {
    let Some(mut etcd) = start_etcd() else { return };
    let store = connect(&etcd, "/skein/").await;
    let mut rx = store.watch("w/");
    store
        .commit(vec![put("w/1", "before", None)])
        .await
        .unwrap();
    assert!(matches!(recv(&mut rx).await, Event::Put(e) if e.key == "w/1"));

    etcd.restart().expect("restart etcd");
    // The connection comes back by itself; commits fail until it has.
    let deadline = Instant::now() + SOON;
    let r2 = loop {
        match store.commit(vec![put("w/2", "after", None)]).await {
            Ok(revision) => break revision,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for etcd: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    };
    // The next event is the new one: nothing lost, nothing repeated.
    assert!(matches!(recv(&mut rx).await, Event::Put(e) if e.key == "w/2" && e.revision == r2));
}

#[tokio::test]
async fn watch_closes_when_the_history_it_needs_was_compacted() {
    let Some(etcd) = start_etcd() else { return };
    // This store last heard of etcd's revision at connect; its next watch starts there.
    let stale = connect(&etcd, "/skein/").await;
    let writer = connect(&etcd, "/skein/").await;
    let mut last = 0;
    for i in 0..3 {
        last = writer
            .commit(vec![put("w/x", &i.to_string(), None)])
            .await
            .unwrap();
    }
    etcd.compact(last).expect("compact etcd");
    let mut rx = stale.watch("w/");
    let closed = tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("the watch ends within the deadline");
    assert_eq!(closed, None, "closed, so that the consumer re-lists");
    // The consumer's re-list gives the current state; a new watch carries on from it.
    let (entries, at) = stale.list("w/").await.unwrap();
    assert_eq!((entries.len(), at), (1, last));
    let mut rx = stale.watch("w/");
    let next = writer.commit(vec![delete("w/x", None)]).await.unwrap();
    assert_eq!(
        recv(&mut rx).await,
        Event::Delete {
            key: "w/x".into(),
            revision: next
        }
    );
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_leader_at_a_time_and_the_other_takes_over() {
    let Some(etcd) = start_etcd() else { return };
    // Separate connections, as two replicas would have.
    let (s1, s2) = (
        connect(&etcd, "/skein/").await,
        connect(&etcd, "/skein/").await,
    );
    let ttl = Duration::from_secs(2);
    let mut e1 = Some(Election::campaign(&s1, "canary", "one", ttl).await.unwrap());
    let mut e2 = Some(Election::campaign(&s2, "canary", "two", ttl).await.unwrap());
    let leaders = |a: &Option<Election>, b: &Option<Election>| {
        [a, b]
            .iter()
            .filter(|e| e.as_ref().is_some_and(Election::is_leader))
            .count()
    };
    wait_for("a leader", || leaders(&e1, &e2) == 1).await;
    // Give a wrong second leader time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leaders(&e1, &e2), 1);

    let (leader, follower, follower_id) = if e1.as_ref().unwrap().is_leader() {
        (&mut e1, &mut e2, "two")
    } else {
        (&mut e2, &mut e1, "one")
    };
    let leader_id = if follower_id == "one" { "two" } else { "one" };
    assert_eq!(
        follower
            .as_ref()
            .unwrap()
            .leader()
            .await
            .unwrap()
            .as_deref(),
        Some(leader_id)
    );
    let mut changes = follower.as_ref().unwrap().subscribe();

    // Resigning hands over at once.
    leader.take().unwrap().resign().await.unwrap();
    tokio::time::timeout(SOON, changes.wait_for(|leads| *leads))
        .await
        .expect("the follower takes over")
        .unwrap();
    assert_eq!(
        follower
            .as_ref()
            .unwrap()
            .leader()
            .await
            .unwrap()
            .as_deref(),
        Some(follower_id)
    );

    // A new candidate waits; dropping the leader (as a replica that exits) hands over too.
    let s3 = connect(&etcd, "/skein/").await;
    let e3 = Election::campaign(&s3, "canary", "three", ttl)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!e3.is_leader());
    drop(follower.take());
    wait_for("the third candidate to lead", || e3.is_leader()).await;
    assert_eq!(e3.leader().await.unwrap().as_deref(), Some("three"));
}

#[tokio::test]
async fn a_leader_that_cannot_renew_its_lease_steps_down() {
    let Some(mut etcd) = start_etcd() else { return };
    let store = connect(&etcd, "/skein/").await;
    let election = Election::campaign(&store, "canary", "one", Duration::from_secs(2))
        .await
        .unwrap();
    let mut changes = election.subscribe();
    tokio::time::timeout(SOON, changes.wait_for(|leads| *leads))
        .await
        .expect("leads alone")
        .unwrap();
    // Renewals keep it leader well beyond its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(election.is_leader());
    assert!(!changes.has_changed().unwrap(), "leadership flapped");

    etcd.stop();
    tokio::time::timeout(SOON, changes.wait_for(|leads| !*leads))
        .await
        .expect("steps down without etcd")
        .unwrap();

    // Once etcd is back (its old lease expires there), it campaigns again and leads.
    etcd.restart().expect("restart etcd");
    tokio::time::timeout(SOON * 2, changes.wait_for(|leads| *leads))
        .await
        .expect("leads again")
        .unwrap();
}
