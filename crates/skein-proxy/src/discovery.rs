//! On-demand discovery: a proxy connected to a control plane holds only the destinations
//! its application uses. The first connection to a virtual IP it does not hold, the first
//! request for a name it does not hold and the first DNS query for one, ask the control
//! plane (`Want` on the `Sync` stream) and wait for the answer, which arrives with the
//! destination in the same message; the request then goes on as if the proxy had always
//! held it, so the first request does not fail.
//!
//! Order, per miss: is it worth asking (an address inside the mesh's virtual-IP ranges, a
//! name of a mesh form) → a recent "nothing answers to it"? answer at once → ask (one
//! question in flight per name, however many requests wait on it) → wait for the answer,
//! at most [`WAIT`] → the caller resolves again against the configuration now in force.
//!
//! What was asked is kept (bounded) and sent again when the stream reconnects, and the
//! control plane keeps the proxy's copy of each destination current from then on; it also
//! sends a destination later should a Service come to answer to a name that had none.
//! What was asked is forgotten when the destination it found is removed (its Service
//! deleted, or the name now leads elsewhere): the next request for it asks again, so a
//! proxy that once called thousands of Services keeps nothing of those that are gone but
//! the names that found nothing (kept, bounded, so that a Service answering to one later
//! is still sent).
//! Also kept here: the digests of the destinations held, which a reconnecting proxy
//! reports so that it is sent only what changed while it was away.

use crate::heap::fit;
use skein_api::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Longest wait for an answer before the request goes on as a miss.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing in the mesh answers to it" is believed before asking again (the
/// control plane sends the destination anyway should one appear).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// How long an unanswered question waits before it is asked again.
pub const RESEND: Duration = Duration::from_secs(1);
/// Most names and addresses remembered (and re-sent on reconnect).
pub const MAX_ASKED: usize = 10_000;

/// An answer to a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `namespace/name` of the destination now held.
    Found(String),
    /// Nothing in the mesh answers to it.
    Nothing,
}

/// Why there is no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Unanswered {
    /// This proxy has no control plane, or does not discover on demand.
    #[error("this proxy holds every destination it may use (no on-demand discovery)")]
    NotOnDemand,
    /// The control plane is not connected now.
    #[error("the control plane is not connected, so {0} could not be looked up; this proxy holds only destinations it used before")]
    Disconnected(String),
    /// No answer within [`WAIT`].
    #[error("the control plane did not answer within {WAIT:?} where {0} is; check `skein check` for its health")]
    TimedOut(String),
}

/// Where virtual IPs live, as the control plane said.
#[derive(Debug, Clone, Default)]
struct Ranges(Vec<(IpAddr, u8)>);

impl Ranges {
    fn parse(ranges: &[String]) -> Ranges {
        Ranges(
            ranges
                .iter()
                .filter_map(|r| {
                    let (ip, len) = r.split_once('/')?;
                    Some((ip.parse().ok()?, len.parse().ok()?))
                })
                .collect(),
        )
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let shift = 32u32.saturating_sub(u32::from(*len));
                let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let shift = 128u32.saturating_sub(u32::from(*len));
                let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    on_demand: bool,
    ranges: Ranges,
    /// The current stream's outgoing messages (None: not connected).
    stream: Option<mpsc::Sender<pb::ProxyMessage>>,
    /// Everything asked, re-sent on reconnect, with the destination (`namespace/name`)
    /// it found, once answered.
    asked: HashMap<String, Option<String>>,
    /// Asked on this stream, not answered yet.
    in_flight: HashSet<String>,
    /// Recent "nothing answers to it".
    nothing: HashMap<String, Instant>,
    /// Digests of the destinations held, by `namespace/name`.
    held: HashMap<String, u64>,
}

/// The proxy's side of on-demand discovery.
#[derive(Debug)]
pub struct Discovery {
    inner: Mutex<Inner>,
    /// `inner.on_demand`, read without the lock on the request path.
    on_demand: std::sync::atomic::AtomicBool,
    /// Bumped after each message with answers is applied.
    answered: watch::Sender<u64>,
    /// Recent answers (of the last [`WAIT`], as long as anyone waits), by what was asked.
    latest: Mutex<HashMap<String, (Answer, Instant)>>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            inner: Mutex::default(),
            on_demand: Default::default(),
            answered: watch::channel(0).0,
            latest: Mutex::default(),
        }
    }
}

/// Whether `name` (lowercase, without port or trailing dot) has a form a mesh Service
/// answers to under `domain`: `svc`, `svc.ns`, `svc.ns.svc` or `svc.ns.svc.<domain>`.
pub fn mesh_form(name: &str, domain: &str) -> bool {
    crate::destinations::mesh_name(name, domain).is_some()
}

impl Discovery {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this proxy discovers on demand (the control plane said so).
    pub fn on_demand(&self) -> bool {
        self.on_demand.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a connection to `ip`, which no destination holds, should be asked about.
    pub fn covers(&self, ip: IpAddr) -> bool {
        let inner = self.lock();
        inner.on_demand && inner.ranges.contains(ip)
    }

    /// A stream opened: questions go on it. Questions left unanswered on the last one are
    /// asked again.
    pub fn connected(&self, stream: mpsc::Sender<pb::ProxyMessage>) {
        let mut inner = self.lock();
        let pending: Vec<String> = inner.in_flight.iter().cloned().collect();
        if !pending.is_empty() {
            let _ = stream.try_send(want(pending));
        }
        inner.stream = Some(stream);
    }

    /// The stream ended.
    pub fn disconnected(&self) {
        self.lock().stream = None;
    }

    /// What to tell a control plane at registration: what this proxy can take, what it
    /// holds (when it holds a configuration of version `version`) and what it asked.
    pub fn register(&self, r: &mut pb::Register) {
        let inner = self.lock();
        r.supports = vec!["deltas".into(), "on-demand".into()];
        if r.last_version > 0 {
            let mut held: Vec<pb::Held> = inner
                .held
                .iter()
                .map(|(k, d)| pb::Held {
                    destination: k.clone(),
                    digest: *d,
                })
                .collect();
            held.sort_by(|a, b| a.destination.cmp(&b.destination));
            r.held = held;
        }
        if !inner.asked.is_empty() {
            let mut all: Vec<String> = inner.asked.keys().cloned().collect();
            all.sort();
            let (addresses, names): (Vec<String>, Vec<String>) =
                all.into_iter().partition(|a| a.parse::<IpAddr>().is_ok());
            r.wanted = Some(pb::Want { names, addresses });
        }
    }

    /// A message was applied: records what it says about discovery and what is held now,
    /// then wakes those waiting on its answers.
    pub fn applied(&self, message: &pb::Snapshot) {
        let mut inner = self.lock();
        let rest = match &message.delta {
            None => Some(message),
            Some(d) => d.rest.as_deref(),
        };
        if let Some(rest) = rest {
            let d = rest.discovery.as_ref();
            inner.on_demand = d.is_some_and(|d| d.on_demand);
            inner.ranges = Ranges::parse(d.map_or(&[][..], |d| &d.ranges));
            self.on_demand
                .store(inner.on_demand, std::sync::atomic::Ordering::Relaxed);
        }
        let key = |d: &pb::Destination| format!("{}/{}", d.namespace, d.service);
        let removed: HashSet<String> = match &message.delta {
            None => {
                let held: HashMap<String, u64> = message
                    .destinations
                    .iter()
                    .map(|d| (key(d), d.digest))
                    .collect();
                let old = std::mem::replace(&mut inner.held, held);
                old.into_keys()
                    .filter(|k| !inner.held.contains_key(k))
                    .collect()
            }
            Some(delta) => {
                for r in &delta.removed {
                    inner.held.remove(r);
                }
                for d in &delta.destinations {
                    inner.held.insert(key(d), d.digest);
                }
                delta
                    .removed
                    .iter()
                    .filter(|r| !inner.held.contains_key(*r))
                    .cloned()
                    .collect()
            }
        };
        if !removed.is_empty() {
            inner
                .asked
                .retain(|_, found| !found.as_ref().is_some_and(|f| removed.contains(f)));
            fit(&mut inner.asked);
            fit(&mut inner.held);
        }
        drop(inner);
        self.answer(&message.answers);
    }

    /// A message was refused: its answers still wake those waiting (who then find the
    /// destination missing and say so, rather than wait).
    pub fn refused(&self, message: &pb::Snapshot) {
        self.answer(&message.answers);
    }

    fn answer(&self, answers: &[pb::Answer]) {
        let now = Instant::now();
        if answers.is_empty() {
            // Every message lets go of old answers, so the last burst of them (and the
            // room it took) does not stay until the next name is asked.
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            latest.retain(|_, (_, at)| now.duration_since(*at) < WAIT);
            fit(&mut latest);
            return;
        }
        let mut inner = self.lock();
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        // An answer is kept while anyone may wait for it: a waiter gives up [`WAIT`]
        // after asking, and never takes an answer older than its question.
        latest.retain(|_, (_, at)| now.duration_since(*at) < WAIT);
        for a in answers {
            let asked = a.asked.to_ascii_lowercase();
            inner.in_flight.remove(&asked);
            let answer = if a.destination.is_empty() {
                inner.nothing.insert(asked.clone(), now);
                Answer::Nothing
            } else {
                inner.nothing.remove(&asked);
                Answer::Found(a.destination.clone())
            };
            if let Some(found) = inner.asked.get_mut(&asked) {
                *found = match &answer {
                    Answer::Found(d) => Some(d.clone()),
                    Answer::Nothing => None,
                };
            }
            // Bounded however fast names come: at the bound the recent answers go (their
            // waiters ask again in a second) rather than the new one.
            if latest.len() >= MAX_ASKED && !latest.contains_key(&asked) {
                latest.clear();
            }
            latest.insert(asked, (answer, now));
        }
        fit(&mut latest);
        inner
            .nothing
            .retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
        // Bounded, however many names an application makes up: beyond the bound the
        // oldest half goes (those names are asked again, which is all it costs).
        if inner.nothing.len() > MAX_ASKED {
            let mut ages: Vec<Instant> = inner.nothing.values().copied().collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            inner.nothing.retain(|_, at| *at > cut);
        }
        fit(&mut inner.nothing);
        drop(latest);
        drop(inner);
        self.answered.send_modify(|n| *n += 1);
    }

    /// How many destinations are held.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Asks the control plane about `asked` (a name, lowercase, or an address) and waits
    /// for the answer.
    pub async fn ask(&self, asked: &str) -> Result<Answer, Unanswered> {
        let asked = asked.to_ascii_lowercase();
        let mut answers = self.answered.subscribe();
        let stream = {
            let mut inner = self.lock();
            if !inner.on_demand {
                return Err(Unanswered::NotOnDemand);
            }
            if let Some(at) = inner.nothing.get(&asked) {
                if at.elapsed() < NEGATIVE_TTL {
                    return Ok(Answer::Nothing);
                }
            }
            let Some(stream) = inner.stream.clone() else {
                return Err(Unanswered::Disconnected(asked));
            };
            if inner.asked.len() < MAX_ASKED && !inner.asked.contains_key(&asked) {
                inner.asked.insert(asked.clone(), None);
            }
            // A fresh question (none in flight) is sent; an older answer to it must not
            // satisfy it.
            let fresh = inner.in_flight.insert(asked.clone());
            if fresh {
                self.latest
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&asked);
            }
            fresh.then_some(stream)
        };
        if let Some(stream) = stream {
            // Queued behind acks and summaries, never dropped for want of room.
            let sent = tokio::time::timeout(WAIT, stream.send(want(vec![asked.clone()])));
            if !matches!(sent.await, Ok(Ok(()))) {
                self.lock().in_flight.remove(&asked);
                return Err(Unanswered::Disconnected(asked));
            }
        }
        // Asked again every second until answered (at most [`WAIT`]): a question lost with
        // a stream that broke, or on its way, costs a second, not the request.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = (tokio::time::Instant::now() + RESEND).min(deadline);
            match tokio::time::timeout_at(next, answers.changed()).await {
                Ok(Ok(())) => {
                    let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((a, _)) = latest.get(&asked) {
                        return Ok(a.clone());
                    }
                }
                Ok(Err(_)) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => {
                    let stream = self.lock().stream.clone();
                    if let Some(stream) = stream {
                        let _ = stream.try_send(want(vec![asked.clone()]));
                    }
                }
            }
        }
        self.lock().in_flight.remove(&asked);
        Err(Unanswered::TimedOut(asked))
    }
}

fn want(asked: Vec<String>) -> pb::ProxyMessage {
    let (addresses, names) = asked
        .into_iter()
        .partition(|a: &String| a.parse::<IpAddr>().is_ok());
    pb::ProxyMessage {
        message: Some(pb::proxy_message::Message::Want(pb::Want {
            names,
            addresses,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_demand(d: &Discovery) {
        d.applied(&pb::Snapshot {
            discovery: Some(pb::Discovery {
                on_demand: true,
                ranges: vec!["198.18.0.0/16".into(), "10.1.2.3/32".into()],
            }),
            ..Default::default()
        });
    }

    #[test]
    fn ranges_decide_which_addresses_are_asked_about() {
        let d = Discovery::default();
        assert!(
            !d.covers("198.18.0.1".parse().unwrap()),
            "not on demand yet"
        );
        on_demand(&d);
        assert!(d.covers("198.18.200.1".parse().unwrap()));
        assert!(d.covers("10.1.2.3".parse().unwrap()));
        assert!(!d.covers("10.1.2.4".parse().unwrap()));
        assert!(!d.covers("::1".parse().unwrap()));
    }

    #[test]
    fn mesh_forms() {
        for yes in [
            "web",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
        ] {
            assert!(mesh_form(yes, "cluster.local"), "{yes}");
        }
        for no in [
            "web.shop.example.com",
            "a.b.c",
            "web..x",
            "web.shop.svc.other.domain",
        ] {
            assert!(!mesh_form(no, "cluster.local"), "{no}");
        }
    }

    #[tokio::test]
    async fn a_question_is_asked_once_and_answered() {
        let d = std::sync::Arc::new(Discovery::default());
        assert_eq!(d.ask("web").await, Err(Unanswered::NotOnDemand));
        on_demand(&d);
        assert_eq!(
            d.ask("web").await,
            Err(Unanswered::Disconnected("web".into()))
        );
        let (tx, mut rx) = mpsc::channel(8);
        d.connected(tx);
        let (a, b) = (d.clone(), d.clone());
        let one = tokio::spawn(async move { a.ask("Web").await });
        let two = tokio::spawn(async move { b.ask("web").await });
        let sent = rx.recv().await.unwrap();
        let Some(pb::proxy_message::Message::Want(w)) = sent.message else {
            panic!("a Want");
        };
        assert_eq!(w.names, ["web"]);
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "asked once for both");
        d.applied(&pb::Snapshot {
            delta: Some(Box::new(pb::Delta {
                destinations: vec![pb::Destination {
                    service: "web".into(),
                    namespace: "default".into(),
                    digest: 7,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            answers: vec![pb::Answer {
                asked: "web".into(),
                destination: "default/web".into(),
            }],
            ..Default::default()
        });
        let found = Answer::Found("default/web".into());
        assert_eq!(one.await.unwrap(), Ok(found.clone()));
        assert_eq!(two.await.unwrap(), Ok(found));
        assert_eq!(d.held(), 1);
        // A reconnect reports what it holds and what it asked.
        let mut r = pb::Register {
            last_version: 3,
            ..Default::default()
        };
        d.register(&mut r);
        assert_eq!(r.held[0].destination, "default/web");
        assert_eq!(r.held[0].digest, 7);
        assert_eq!(r.wanted.unwrap().names, ["web"]);
        assert_eq!(r.supports, ["deltas", "on-demand"]);
    }

    /// Asks for `name` on `d` and answers it with `destination`, held from then on.
    /// Asks for `name` on `d` and answers it with `destination` (`namespace/name`, held
    /// from then on), or with "nothing" when it is empty; what the asker got.
    async fn answered(
        d: &std::sync::Arc<Discovery>,
        name: &str,
        destination: &str,
    ) -> Result<Answer, Unanswered> {
        let asking = tokio::spawn({
            let (d, name) = (d.clone(), name.to_string());
            async move { d.ask(&name).await }
        });
        tokio::task::yield_now().await;
        let held = destination
            .split_once('/')
            .map(|(namespace, service)| pb::Destination {
                service: service.into(),
                namespace: namespace.into(),
                ..Default::default()
            });
        d.applied(&pb::Snapshot {
            delta: Some(Box::new(pb::Delta {
                destinations: held.into_iter().collect(),
                ..Default::default()
            })),
            answers: vec![pb::Answer {
                asked: name.into(),
                destination: destination.into(),
            }],
            ..Default::default()
        });
        asking.await.unwrap()
    }

    async fn found(d: &std::sync::Arc<Discovery>, name: &str, destination: &str) {
        let got = answered(d, name, destination).await;
        assert_eq!(got, Ok(Answer::Found(destination.into())));
    }

    /// A Discovery on demand, connected to a stream (kept open by the receiver).
    fn connected() -> (std::sync::Arc<Discovery>, mpsc::Receiver<pb::ProxyMessage>) {
        let d = std::sync::Arc::new(Discovery::default());
        on_demand(&d);
        let (tx, rx) = mpsc::channel(64);
        d.connected(tx);
        (d, rx)
    }

    /// Applies a delta removing `key` (`namespace/name`).
    fn remove(d: &Discovery, key: &str) {
        d.applied(&pb::Snapshot {
            delta: Some(Box::new(pb::Delta {
                removed: vec![key.into()],
                ..Default::default()
            })),
            ..Default::default()
        });
    }

    fn wanted(d: &Discovery) -> Vec<String> {
        let mut r = pb::Register::default();
        d.register(&mut r);
        r.wanted
            .map(|w| w.names.into_iter().chain(w.addresses).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn what_was_asked_is_forgotten_with_the_destination_it_found() {
        let (d, _rx) = connected();
        found(&d, "web", "default/web").await;
        found(&d, "web.default.svc.cluster.local", "default/web").await;
        found(&d, "db", "default/db").await;
        found(&d, "198.18.0.7", "default/db").await;
        assert_eq!(d.held(), 2);
        assert_eq!(wanted(&d).len(), 4);
        // Its Service deleted, `web` goes, with both names that found it.
        remove(&d, "default/web");
        assert_eq!(d.held(), 1);
        assert_eq!(wanted(&d), ["db", "198.18.0.7"]);
        // A whole configuration without `db` lets go of it too.
        on_demand(&d);
        assert_eq!(d.held(), 0);
        assert!(wanted(&d).is_empty());
        // Asking again works as the first time.
        found(&d, "web", "default/web").await;
        assert_eq!(wanted(&d), ["web"]);
    }

    #[tokio::test]
    async fn a_name_that_found_nothing_stays_asked() {
        let (d, _rx) = connected();
        assert_eq!(answered(&d, "later", "").await, Ok(Answer::Nothing));
        found(&d, "web", "default/web").await;
        remove(&d, "default/web");
        // The control plane sends a destination should one come to answer to it.
        assert_eq!(wanted(&d), ["later"]);
    }

    #[tokio::test]
    async fn old_answers_go_with_the_next_message_whatever_it_carries() {
        let (d, _rx) = connected();
        found(&d, "web", "default/web").await;
        let long_ago = Instant::now() - WAIT - Duration::from_secs(1);
        {
            let mut latest = d.latest.lock().unwrap();
            for i in 0..1000 {
                latest.insert(format!("old-{i}"), (Answer::Nothing, long_ago));
            }
        }
        // A change with no answers in it, as after the mesh shrank.
        d.applied(&pb::Snapshot::default());
        let latest = d.latest.lock().unwrap();
        assert_eq!(
            latest.keys().collect::<Vec<_>>(),
            ["web"],
            "only the recent one"
        );
        assert!(latest.capacity() < 100, "{}", latest.capacity());
    }

    #[test]
    fn maps_give_back_their_room() {
        let mut m: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let grown = m.capacity();
        m.retain(|k, _| *k < 10);
        fit(&mut m);
        assert!(m.capacity() < grown / 100, "{} of {grown}", m.capacity());
        assert_eq!(m.len(), 10);
        let mut small: HashMap<u32, u32> = (0..20).map(|i| (i, i)).collect();
        small.retain(|k, _| *k < 2);
        // What `capacity` reads after removals depends on where the hashes put the
        // entries (a removed one may leave a tombstone), so compare after `retain`.
        let room = small.capacity();
        fit(&mut small);
        assert_eq!(small.capacity(), room, "small maps are left alone");
    }

    #[tokio::test]
    async fn nothing_is_remembered_for_a_while() {
        let (d, _rx) = connected();
        assert_eq!(answered(&d, "198.18.0.9", "").await, Ok(Answer::Nothing));
        // Asked again: answered at once, without the stream.
        d.disconnected();
        assert_eq!(d.ask("198.18.0.9").await, Ok(Answer::Nothing));
    }
}
