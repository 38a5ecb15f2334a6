//! Live taps (`skein tap`, `skein top`): an admin's request for live request metadata is
//! a [`Subscription`]; the hub tells every proxy's `Tap` stream to start it, routes the
//! proxies' events to it, and tells them to stop as soon as the subscriber goes (its HTTP
//! client disconnected), so a tap nobody reads costs the proxies nothing.
//!
//! Events are bounded twice: each proxy sends at most the tap's `max_per_second`, and the
//! hub passes on at most that many per second in all, dropping the rest.

use skein_api::v1 as pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// What a proxy's `Tap` stream receives.
pub type CommandSender = mpsc::Sender<Result<pb::TapCommand, tonic::Status>>;

/// A subscriber's events and its rate window.
struct Subscriber {
    filter: pb::TapFilter,
    events: mpsc::Sender<pb::TapEvent>,
    per_second: u32,
    window: (u32, Instant),
}

/// The most taps the API keeps open at once (each asks every proxy for a stream of
/// events of up to 1,000 a second).
pub const MAX_TAPS: usize = 16;

/// Every proxy's tap stream and every subscriber.
#[derive(Default)]
pub struct TapHub {
    next: AtomicU64,
    proxies: Mutex<HashMap<u64, CommandSender>>,
    subscribers: Mutex<HashMap<u64, Subscriber>>,
}

impl TapHub {
    /// A new hub.
    pub fn new() -> Arc<TapHub> {
        Arc::new(TapHub::default())
    }

    /// A proxy opened its `Tap` stream: it is told the taps in force. Returns its key.
    pub fn attach(&self, commands: CommandSender) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for (id, s) in subscribers.iter() {
            let _ = commands.try_send(Ok(start(*id, &s.filter)));
        }
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, commands);
        key
    }

    /// The proxy's stream ended.
    pub fn detach(&self, key: u64) {
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    fn broadcast(&self, command: pb::TapCommand) {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        for tx in proxies.values() {
            // A proxy whose stream is full or gone misses it; it drops taps when its
            // stream ends, and the next stream learns the taps in force on attach.
            let _ = tx.try_send(Ok(command.clone()));
        }
    }

    /// Starts a tap with `filter`; every proxy starts sending matching events.
    pub fn subscribe(self: &Arc<Self>, filter: pb::TapFilter) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = mpsc::channel(256);
        let per_second = match filter.max_per_second {
            0 => 100,
            n => n.min(1000),
        };
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Subscriber {
                    filter: filter.clone(),
                    events,
                    per_second,
                    window: (0, Instant::now()),
                },
            );
        self.broadcast(start(id, &filter));
        tracing::info!(tap = id, to = %filter.to, from = %filter.from, "tap started");
        Subscription {
            id,
            hub: self.clone(),
            events: rx,
        }
    }

    /// Routes a proxy's event to its subscriber, within the tap's rate.
    pub fn deliver(&self, event: pb::TapEvent) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = subscribers.get_mut(&event.tap_id) else {
            return;
        };
        if s.window.1.elapsed().as_secs() >= 1 {
            s.window = (0, Instant::now());
        }
        if s.window.0 >= s.per_second {
            return;
        }
        s.window.0 += 1;
        let _ = s.events.try_send(event);
    }

    fn unsubscribe(&self, id: u64) {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.broadcast(pb::TapCommand {
            id,
            stop: true,
            filter: None,
        });
        tracing::info!(tap = id, "tap stopped");
    }

    /// Taps in force.
    pub fn subscribers(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

fn start(id: u64, filter: &pb::TapFilter) -> pb::TapCommand {
    pb::TapCommand {
        id,
        stop: false,
        filter: Some(filter.clone()),
    }
}

/// A tap in force; dropping it stops the tap on every proxy.
pub struct Subscription {
    id: u64,
    hub: Arc<TapHub>,
    /// The events, as they arrive.
    pub events: mpsc::Receiver<pb::TapEvent>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxies_learn_taps_and_subscribers_get_their_events_until_they_go() {
        let hub = TapHub::new();
        let (early, mut early_rx) = mpsc::channel(8);
        hub.attach(early);
        let filter = pb::TapFilter {
            to: "api".into(),
            max_per_second: 2,
            ..Default::default()
        };
        let mut sub = hub.subscribe(filter);
        let started = early_rx.recv().await.unwrap().unwrap();
        assert!(!started.stop);
        // A proxy attaching later learns the tap in force.
        let (late, mut late_rx) = mpsc::channel(8);
        hub.attach(late);
        assert_eq!(late_rx.recv().await.unwrap().unwrap().id, started.id);
        for _ in 0..5 {
            hub.deliver(pb::TapEvent {
                tap_id: started.id,
                ..Default::default()
            });
        }
        hub.deliver(pb::TapEvent {
            tap_id: 999,
            ..Default::default()
        });
        assert!(sub.events.recv().await.is_some());
        assert!(sub.events.recv().await.is_some());
        assert!(
            sub.events.try_recv().is_err(),
            "two per second, the rest dropped"
        );
        drop(sub);
        let stop = early_rx.recv().await.unwrap().unwrap();
        assert!(stop.stop && stop.id == started.id, "proxies told to stop");
        assert_eq!(hub.subscribers(), 0);
    }
}
