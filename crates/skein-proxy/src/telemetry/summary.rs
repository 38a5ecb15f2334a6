//! Summaries for the control plane: what the proxy recorded since the previous summary
//! (deltas of every series that moved), taken every `telemetry.summaryInterval` and sent
//! on the control-plane stream.
//!
//! Sending never blocks traffic: summaries wait in a bounded [`Outbox`] while the control
//! plane is unreachable, and the oldest are dropped (and counted) when it is full.

use super::histogram::Snapshot;
use super::{Named, RequestKey, Status, TcpKey, Telemetry};
use crate::metrics::Direction;
use skein_api::v1 as pb;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Summaries kept while the control plane is unreachable (a minute at the default
/// interval); older ones are dropped.
pub const MAX_QUEUED: usize = 12;

/// The histogram layout summaries carry: [`super::histogram::BOUNDS_US`].
pub const BUCKET_LAYOUT: u32 = 1;

/// A request series' totals at the last summary.
#[derive(Debug, Clone, Default)]
struct RequestTotals {
    count: u64,
    retries: u64,
    latency: Snapshot,
    request_bytes: u64,
    response_bytes: u64,
}

/// A TCP series' totals at the last summary.
#[derive(Debug, Clone, Default)]
struct TcpTotals {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
    duration: Snapshot,
}

/// Each series' totals at the previous summary, tied to the series itself.
type Last<K, S, T> = HashMap<K, (Weak<S>, T)>;

/// Takes summaries: remembers each series' totals at the previous one. Its memory is
/// bounded by the telemetry's series limit, and it forgets series the telemetry let go.
#[derive(Debug, Default)]
pub struct Summarizer {
    requests: Last<RequestKey, super::RequestSeries, RequestTotals>,
    tcp: Last<TcpKey, super::TcpSeries, TcpTotals>,
    pathways: Last<super::PathwayKey, super::PathwaySeries, (u64, u64)>,
    folded: u64,
    sequence: u64,
}

/// The totals `series` had at the previous summary, taken out of `last`. A series that
/// was let go and came back under the same labels is another series, and starts from
/// zero rather than from its predecessor's totals.
fn previous<K: Hash + Eq, S, T: Default>(last: &mut Last<K, S, T>, key: &K, series: &Arc<S>) -> T {
    match last.remove(key) {
        Some((seen, totals)) if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(series)) => totals,
        _ => T::default(),
    }
}

impl Summarizer {
    /// What moved since the previous call; `None` when nothing did.
    pub fn take(
        &mut self,
        t: &Telemetry,
        decisions: &crate::decisions::DecisionLog,
        spans: &crate::spans::Spans,
        taken_unix_ms: i64,
        interval_ms: u32,
    ) -> Option<pb::Summary> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Rebuilt from the series there are now: what was let go is forgotten.
        let mut last = std::mem::take(&mut self.requests);
        let mut requests = Vec::new();
        for (key, series) in t.request_series_now() {
            let now = RequestTotals {
                count: load(&series.count),
                retries: load(&series.retries),
                latency: series.latency.snapshot(),
                request_bytes: load(&series.request_bytes),
                response_bytes: load(&series.response_bytes),
            };
            let before = previous(&mut last, &key, &series);
            if now.count != before.count || now.response_bytes != before.response_bytes {
                requests.push(request_stats(&key, &now, &before));
            }
            self.requests.insert(key, (Arc::downgrade(&series), now));
        }
        let mut last = std::mem::take(&mut self.tcp);
        let mut tcp = Vec::new();
        for (key, series) in t.tcp_series_now() {
            let now = TcpTotals {
                opened: load(&series.opened),
                closed: load(&series.closed),
                sent: load(&series.sent),
                received: load(&series.received),
                duration: series.duration.snapshot(),
            };
            let before = previous(&mut last, &key, &series);
            if now.opened == before.opened && now.closed == before.closed {
                self.tcp.insert(key, (Arc::downgrade(&series), now));
                continue;
            }
            tcp.push(pb::TcpStats {
                inbound: key.direction == Direction::Inbound,
                tls: key.tls,
                src: Some(account(&key.src)),
                dst: Some(account(&key.dst)),
                opened: now.opened - before.opened,
                closed: now.closed - before.closed,
                sent_bytes: now.sent - before.sent,
                received_bytes: now.received - before.received,
                duration: Some(histogram(&now.duration.since(&before.duration))),
            });
            self.tcp.insert(key, (Arc::downgrade(&series), now));
        }
        let mut last = std::mem::take(&mut self.pathways);
        let mut pathways = Vec::new();
        for (key, series) in t.pathways_now() {
            // (audited, allowed + audited): each request adds to one of the two counters,
            // so the total's delta covers the audited delta whatever the reads' order.
            let audited = load(&series.audited);
            let now = (audited, load(&series.allowed).wrapping_add(audited));
            let before = previous(&mut last, &key, &series);
            if now == before {
                self.pathways.insert(key, (Arc::downgrade(&series), before));
                continue;
            }
            pathways.push(pb::PathwayStats {
                src: Some(account(&key.src)),
                port: u32::from(key.port),
                method: key.method.to_string(),
                prefix: key.prefix.to_string(),
                count: now.1 - before.1,
                audited: now.0 - before.0,
            });
            self.pathways.insert(key, (Arc::downgrade(&series), now));
        }
        let folded = t.folded();
        let folded_delta = folded - self.folded.min(folded);
        self.folded = folded;
        let decisions: Vec<pb::Decision> =
            decisions.take_pending().into_iter().map(decision).collect();
        let (spans, dropped_spans) = spans.take_for_summary();
        if requests.is_empty()
            && spans.is_empty()
            && tcp.is_empty()
            && pathways.is_empty()
            && folded_delta == 0
            && decisions.is_empty()
        {
            return None;
        }
        self.sequence += 1;
        Some(pb::Summary {
            sequence: self.sequence,
            taken_unix_ms,
            interval_ms,
            bucket_layout: BUCKET_LAYOUT,
            requests,
            tcp,
            folded_requests: folded_delta,
            dropped_summaries: 0,
            pathways,
            decisions,
            spans,
            dropped_spans,
        })
    }
}

fn decision(d: crate::decisions::Decision) -> pb::Decision {
    pb::Decision {
        request_id: d.request_id,
        at_unix_ms: i64::try_from(d.at_unix_ms).unwrap_or(i64::MAX),
        inbound: d.direction == "inbound",
        service: d.service.unwrap_or_default(),
        route: d.route.unwrap_or_default(),
        rule: d.rule.map(u32::from),
        endpoint: d.endpoint.unwrap_or_default(),
        tries: d.tries,
        status: u32::from(d.status),
        reason: d.reason.to_string(),
        why: d.why,
    }
}

fn account(n: &Named) -> pb::Account {
    pb::Account {
        namespace: n.namespace.to_string(),
        name: n.name.to_string(),
    }
}

fn request_stats(
    key: &RequestKey,
    now: &RequestTotals,
    before: &RequestTotals,
) -> pb::RequestStats {
    let (status_code, status_class) = match key.status {
        Status::Code(c) => (u32::from(c), 0),
        Status::Class(c) => (0, u32::from(c)),
    };
    pb::RequestStats {
        inbound: key.direction == Direction::Inbound,
        protocol: key.protocol.as_str().to_string(),
        tls: key.tls,
        src: Some(account(&key.src)),
        dst: Some(account(&key.dst)),
        route: key.route.to_string(),
        rule: key.rule.map(u32::from),
        status_code,
        status_class,
        grpc_status: key.grpc_status.map(u32::from),
        error: key.error.to_string(),
        count: now.count - before.count,
        retries: now.retries - before.retries,
        latency: Some(histogram(&now.latency.since(&before.latency))),
        request_bytes: now.request_bytes - before.request_bytes,
        response_bytes: now.response_bytes - before.response_bytes,
    }
}

/// The sparse form of a histogram.
pub fn histogram(s: &Snapshot) -> pb::Histogram {
    let (buckets, counts) = s
        .counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (i as u32, *n))
        .unzip();
    pb::Histogram {
        buckets,
        counts,
        sum_us: s.sum_us,
    }
}

/// Summaries waiting to be sent.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<pb::Summary>>,
    ready: tokio::sync::Notify,
    dropped: AtomicU64,
}

impl Outbox {
    /// Queues `summary`, dropping the oldest when full; never waits.
    pub fn push(&self, mut summary: pb::Summary) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= MAX_QUEUED {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            summary.dropped_summaries = self.dropped.load(Ordering::Relaxed);
            queue.push_back(summary);
        }
        self.ready.notify_one();
    }

    /// Waits until a summary is queued.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Takes everything queued.
    pub fn drain(&self) -> Vec<pb::Summary> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.drain(..).collect()
    }

    /// Summaries dropped unsent so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Proto;
    use crate::telemetry::Ended;
    use std::time::Duration;

    fn key(status: u16) -> RequestKey {
        RequestKey {
            direction: Direction::Inbound,
            protocol: Proto::Http2,
            tls: true,
            src: Named::new("default", "web"),
            dst: Named::new("default", "api"),
            route: "".into(),
            rule: None,
            status: Status::Code(status),
            grpc_status: Some(0),
            error: "",
        }
    }

    fn ended(ms: u64, retries: u64) -> Ended {
        Ended {
            latency: Duration::from_millis(ms),
            duration: Duration::from_millis(ms),
            request_bytes: 1,
            response_bytes: 2,
            retries,
        }
    }

    fn spans() -> crate::spans::Spans {
        let workload = skein_model::WorkloadInfo {
            name: "web-1".into(),
            service: "web".into(),
            namespace: "default".into(),
            labels: Default::default(),
        };
        crate::spans::Spans::new(&workload, Default::default())
    }

    #[test]
    fn summaries_carry_what_moved_since_the_last_one() {
        let t = Telemetry::default();
        let mut s = Summarizer::default();
        let spans = spans();
        assert!(
            s.take(&t, &Default::default(), &spans, 0, 1000).is_none(),
            "nothing recorded"
        );
        for _ in 0..3 {
            t.request(key(200), ended(5, 0));
        }
        t.request(key(503), ended(50, 2));
        let first = s.take(&t, &Default::default(), &spans, 1, 1000).unwrap();
        assert_eq!(first.sequence, 1);
        assert_eq!(first.requests.len(), 2);
        let ok = first
            .requests
            .iter()
            .find(|r| r.status_code == 200)
            .unwrap();
        assert_eq!((ok.count, ok.request_bytes, ok.response_bytes), (3, 3, 6));
        assert_eq!(ok.grpc_status, Some(0));
        let latency = ok.latency.as_ref().unwrap();
        assert_eq!(latency.counts.iter().sum::<u64>(), 3);
        assert_eq!(
            latency.buckets.len(),
            1,
            "sparse: one bucket holds all three"
        );
        let failed = first
            .requests
            .iter()
            .find(|r| r.status_code == 503)
            .unwrap();
        assert_eq!(failed.retries, 2);
        assert!(first.pathways.is_empty());
        let menu = crate::telemetry::PathwayKey {
            src: Named::new("default", "web"),
            port: 8080,
            method: "GET",
            prefix: "/menu/*".into(),
        };
        t.pathway(menu.clone(), false);
        t.pathway(menu, true);

        t.request(key(200), ended(5, 0));
        let second = s.take(&t, &Default::default(), &spans, 2, 1000).unwrap();
        assert_eq!(second.sequence, 2);
        assert_eq!(second.requests.len(), 1, "only the series that moved");
        assert_eq!(second.requests[0].count, 1, "a delta, not a total");
        assert_eq!(second.pathways.len(), 1);
        let p = &second.pathways[0];
        assert_eq!((p.prefix.as_str(), p.count, p.audited), ("/menu/*", 2, 1));
        assert!(s.take(&t, &Default::default(), &spans, 3, 1000).is_none());
    }

    #[test]
    fn audited_counts_taken_while_requests_arrive_are_never_lost_or_above_the_count() {
        let t = std::sync::Arc::new(Telemetry::default());
        let mut s = Summarizer::default();
        let spans = spans();
        let key = crate::telemetry::PathwayKey {
            src: Named::new("default", "web"),
            port: 9000,
            method: "",
            prefix: crate::telemetry::empty(),
        };
        let counting = {
            let (t, key) = (t.clone(), key.clone());
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    t.pathway(key.clone(), i % 3 == 0);
                }
            })
        };
        let (mut count, mut audited, mut taken) = (0, 0, 0u64);
        let mut add = |s: Option<pb::Summary>| {
            for p in s.into_iter().flat_map(|s| s.pathways) {
                assert!(p.audited <= p.count, "{} audited of {}", p.audited, p.count);
                (count, audited) = (count + p.count, audited + p.audited);
            }
        };
        while !counting.is_finished() {
            taken += 1;
            add(s.take(&t, &Default::default(), &spans, taken as i64, 1000));
        }
        counting.join().unwrap();
        add(s.take(&t, &Default::default(), &spans, taken as i64 + 1, 1000));
        assert_eq!((count, audited), (20_000, 6_667), "after {taken} summaries");
    }

    #[test]
    fn a_series_let_go_and_back_is_summarised_from_zero() {
        let t = Telemetry::default();
        let mut s = Summarizer::default();
        let spans = spans();
        for _ in 0..3 {
            t.request(key(200), ended(5, 0));
        }
        t.request(key(404), ended(5, 0));
        let first = s.take(&t, &Default::default(), &spans, 1, 1000).unwrap();
        assert_eq!(first.requests.len(), 2);
        let (idle, secs) = (Duration::from_secs(10), Duration::from_secs);
        t.sweep(secs(0), idle);
        assert_eq!(t.sweep(secs(11), idle), 2);
        assert!(s.take(&t, &Default::default(), &spans, 2, 1000).is_none());
        assert!(s.requests.is_empty(), "what went is forgotten");
        t.request(key(200), ended(5, 0));
        let again = s.take(&t, &Default::default(), &spans, 3, 1000).unwrap();
        assert_eq!(again.requests.len(), 1);
        assert_eq!(again.requests[0].count, 1, "counted from zero, not 1 - 3");
        assert_eq!(again.requests[0].response_bytes, 2);
        // Let go and back under the same labels before the next summary: another
        // series, whose totals are not its predecessor's (that would make this 2 - 1).
        t.sweep(secs(20), idle);
        assert_eq!(t.sweep(secs(31), idle), 1);
        t.request(key(200), ended(5, 0));
        t.request(key(200), ended(5, 0));
        let back = s.take(&t, &Default::default(), &spans, 4, 1000).unwrap();
        assert_eq!(back.requests.len(), 1);
        assert_eq!(back.requests[0].count, 2);
        assert_eq!(back.requests[0].request_bytes, 2);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let outbox = Outbox::default();
        for sequence in 1..=(MAX_QUEUED as u64 + 3) {
            outbox.push(pb::Summary {
                sequence,
                ..Default::default()
            });
        }
        assert_eq!(outbox.dropped(), 3);
        let queued = outbox.drain();
        assert_eq!(queued.len(), MAX_QUEUED);
        assert_eq!(queued[0].sequence, 4, "the oldest went");
        assert_eq!(queued.last().unwrap().dropped_summaries, 3);
        assert!(outbox.drain().is_empty());
    }
}
