//! Live taps (`skein tap`): the control plane starts and stops them on the proxy's `Tap`
//! stream; each request that ends while a tap is in force and matches its filter is sent
//! as metadata (never bodies, query strings or header values), at most
//! `max_per_second` per tap, dropped rather than queued when the stream is slow.
//!
//! With no tap in force a request pays one atomic load ([`Taps::on`]): the record
//! carries no path, and nothing is matched.

use super::Named;
use skein_api::v1 as pb;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Events per second per tap when the filter does not say.
pub const DEFAULT_PER_SECOND: u32 = 100;

/// The most events per second per tap a proxy sends, whatever the filter says.
pub const MAX_PER_SECOND: u32 = 1000;

/// What a request's record carries for taps (only while one is in force).
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
}

/// A request that ended, as taps see it.
#[derive(Debug)]
pub struct Ended<'a> {
    /// Recorded by the callee's proxy.
    pub inbound: bool,
    /// The peer was verified by mutual TLS.
    pub tls: bool,
    /// The caller's account.
    pub src: &'a Named,
    /// The service called.
    pub dst: &'a Named,
    /// Method and path.
    pub seen: &'a Seen,
    /// The response status.
    pub status: u16,
    /// The gRPC status.
    pub grpc_status: Option<u8>,
    /// Time to response headers.
    pub latency: std::time::Duration,
    /// Time to the end of the response.
    pub duration: std::time::Duration,
    /// Body bytes each way.
    pub bytes: (u64, u64),
    /// The HTTPRoute, or empty.
    pub route: &'a str,
    /// Why the mesh answered itself, or empty.
    pub error: &'a str,
}

/// One tap in force.
#[derive(Debug)]
struct Active {
    id: u64,
    filter: pb::TapFilter,
    per_second: u32,
    /// Events sent in the current second, and when it started.
    window: Mutex<(u32, Instant)>,
}

impl Active {
    fn matches(&self, e: &Ended<'_>) -> bool {
        let f = &self.filter;
        (f.to.is_empty() || *e.dst.name == *f.to)
            && (f.from.is_empty() || *e.src.name == *f.from)
            && (f.path_prefix.is_empty() || e.seen.path.starts_with(&f.path_prefix))
            && (f.method.is_empty() || e.seen.method.eq_ignore_ascii_case(&f.method))
            && (f.status_class == 0 || u32::from(e.status / 100) == f.status_class)
    }

    fn admit(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.1.elapsed().as_secs() >= 1 {
            *w = (0, Instant::now());
        }
        if w.0 >= self.per_second {
            return false;
        }
        w.0 += 1;
        true
    }
}

/// The taps in force on this proxy and where their events go.
#[derive(Debug, Default)]
pub struct Taps {
    on: AtomicBool,
    active: RwLock<Vec<Arc<Active>>>,
    out: Mutex<Option<tokio::sync::mpsc::Sender<pb::TapEvent>>>,
}

impl Taps {
    /// Whether any tap is in force: the one check every request makes.
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Sends events to `out` from now on (a new `Tap` stream); no tap is in force until
    /// the control plane starts one.
    pub fn connect(&self, out: tokio::sync::mpsc::Sender<pb::TapEvent>) {
        self.clear();
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
    }

    /// Stops every tap (the stream ended).
    pub fn clear(&self) {
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        active.clear();
        self.on.store(false, Ordering::Relaxed);
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Applies a command from the control plane.
    pub fn command(&self, c: pb::TapCommand) {
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        active.retain(|a| a.id != c.id);
        if !c.stop {
            let filter = c.filter.unwrap_or_default();
            let per_second = match filter.max_per_second {
                0 => DEFAULT_PER_SECOND,
                n => n.min(MAX_PER_SECOND),
            };
            active.push(Arc::new(Active {
                id: c.id,
                filter,
                per_second,
                window: Mutex::new((0, Instant::now())),
            }));
        }
        self.on.store(!active.is_empty(), Ordering::Relaxed);
    }

    /// Taps in force.
    pub fn count(&self) -> usize {
        self.active.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Offers an ended request to every tap in force.
    pub fn observe(&self, e: &Ended<'_>) {
        if !self.on() {
            return;
        }
        let Some(out) = self.out.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let active = self
            .active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for tap in active.iter().filter(|t| t.matches(e)) {
            if !tap.admit() {
                continue;
            }
            // A full stream drops the event rather than holding the request up.
            let _ = out.try_send(event(tap.id, e));
        }
    }
}

fn event(tap_id: u64, e: &Ended<'_>) -> pb::TapEvent {
    let account = |n: &Named| pb::Account {
        namespace: n.namespace.to_string(),
        name: n.name.to_string(),
    };
    pb::TapEvent {
        tap_id,
        inbound: e.inbound,
        tls: e.tls,
        src: Some(account(e.src)),
        dst: Some(account(e.dst)),
        method: e.seen.method.clone(),
        path: e.seen.path.clone(),
        status: u32::from(e.status),
        grpc_status: e.grpc_status.map(u32::from),
        latency_us: e.latency.as_micros() as u64,
        duration_us: e.duration.as_micros() as u64,
        request_bytes: e.bytes.0,
        response_bytes: e.bytes.1,
        route: e.route.to_string(),
        error: e.error.to_string(),
        unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default(),
        workload: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ended<'a>(src: &'a Named, dst: &'a Named, seen: &'a Seen, status: u16) -> Ended<'a> {
        Ended {
            inbound: true,
            tls: true,
            src,
            dst,
            seen,
            status,
            grpc_status: None,
            latency: Duration::from_millis(1),
            duration: Duration::from_millis(2),
            bytes: (0, 10),
            route: "",
            error: "",
        }
    }

    #[tokio::test]
    async fn taps_send_what_matches_within_their_rate_and_stop_when_told() {
        let taps = Taps::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        taps.connect(tx);
        assert!(
            !taps.on(),
            "nothing in force until the control plane starts a tap"
        );
        taps.command(pb::TapCommand {
            id: 7,
            stop: false,
            filter: Some(pb::TapFilter {
                to: "api".into(),
                path_prefix: "/menu".into(),
                status_class: 5,
                max_per_second: 3,
                ..Default::default()
            }),
        });
        assert!(taps.on());
        let (web, api, other) = (
            Named::new("default", "web"),
            Named::new("default", "api"),
            Named::new("default", "db"),
        );
        let menu = Seen {
            method: "GET".into(),
            path: "/menu/1".into(),
        };
        let about = Seen {
            method: "GET".into(),
            path: "/about".into(),
        };
        for _ in 0..10 {
            taps.observe(&ended(&web, &api, &menu, 503));
        }
        taps.observe(&ended(&web, &api, &menu, 200));
        taps.observe(&ended(&web, &api, &about, 503));
        taps.observe(&ended(&web, &other, &menu, 503));
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        assert_eq!(got.len(), 3, "only 5xx to api under /menu, 3 per second");
        assert!(got
            .iter()
            .all(|e| e.tap_id == 7 && e.path == "/menu/1" && e.status == 503));
        taps.command(pb::TapCommand {
            id: 7,
            stop: true,
            filter: None,
        });
        assert!(!taps.on(), "no tap, no cost");
        taps.observe(&ended(&web, &api, &menu, 503));
        assert!(rx.try_recv().is_err());
    }
}
