//! What the dashboard is told when something it shows may have changed: `GET
//! /api/v1/updates`, a stream of server-sent events. Each `change` event carries the
//! store's revision (resources: a canary's step, a new route) and how many telemetry
//! summaries the control plane has taken in (signals); the page redraws what it shows
//! when either moved, instead of asking every few seconds whether anything did.
//!
//! The control plane looks at the store's revision once a second and at the telemetry
//! count every [`TELEMETRY_EVERY`] seconds (proxies report every few seconds: a page
//! redrawn each time would ask more than one that polls), and sends an event only when a
//! number moved, plus a comment every 15 s that keeps idle connections open through
//! proxies and shows a closed one. A stream ends after [`LOOKS`] looks, and the browser
//! opens it again with the credential it has then, so a revoked token or an ended session
//! stops being told within minutes. At most [`MAX_WATCHERS`] streams are open at once
//! (a page polls when refused, and tries the stream again a minute later).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Streams open at once, for every credential together.
pub const MAX_WATCHERS: usize = 64;

/// How often the store's revision is looked at.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Every how many looks the telemetry count is read.
pub const TELEMETRY_EVERY: u64 = 5;

/// Looks before a stream ends (five minutes).
pub const LOOKS: u64 = 300;

/// What a `change` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Versions {
    /// The store's revision.
    pub resources: u64,
    /// Telemetry summaries taken in.
    pub telemetry: u64,
}

/// The open streams' count.
#[derive(Debug, Default, Clone)]
pub struct Watchers(Arc<AtomicUsize>);

/// One open stream; dropping it (the browser went) frees its place.
#[derive(Debug)]
pub struct Watching(Arc<AtomicUsize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Watchers {
    /// A place for one more stream, or `None` at [`MAX_WATCHERS`].
    pub fn enter(&self) -> Option<Watching> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Watching(self.0.clone()))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Whether `now` is news to a watcher last told `told`.
pub fn news(told: Option<Versions>, now: Versions) -> bool {
    told != Some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_freed() {
        let w = Watchers::default();
        let held: Vec<Watching> = (0..MAX_WATCHERS).map(|_| w.enter().unwrap()).collect();
        assert!(w.enter().is_none(), "the bound holds");
        assert_eq!(w.open(), MAX_WATCHERS);
        drop(held);
        assert_eq!(w.open(), 0);
        assert!(w.enter().is_some());
    }

    #[test]
    fn only_a_moved_number_is_news() {
        let v = Versions {
            resources: 3,
            telemetry: 10,
        };
        assert!(news(None, v), "the first look is always news");
        assert!(!news(Some(v), v));
        assert!(news(Some(v), Versions { telemetry: 11, ..v }));
    }
}
