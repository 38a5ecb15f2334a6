//! Graceful shutdown: a signal that stops accept loops and asks HTTP connections to finish
//! (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY), a tracker of every
//! task still running, and a hard stop for whatever outlives the drain deadline.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every task of one proxy.
#[derive(Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    /// A fresh, un-signalled drain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or the hard stop fires; counted until then.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let hard = self.hard.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = hard.cancelled() => {}
            }
        });
    }

    /// Resolves when shutdown has been requested.
    pub async fn signalled(&self) {
        self.signal.cancelled().await
    }

    /// Resolves when the drain deadline has passed (or draining finished).
    pub async fn stopped(&self) {
        self.hard.cancelled().await
    }

    /// True once shutdown has been requested.
    pub fn is_signalled(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Requests shutdown, waits up to `deadline` for every task, then stops the rest.
    /// Returns true when everything finished within the deadline.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.signal.cancel();
        self.tracker.close();
        let clean = tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok();
        self.hard.cancel();
        self.tracker.wait().await;
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_tasks_then_stops_the_rest() {
        let drain = Drain::new();
        let d = drain.clone();
        drain.spawn(async move {
            d.signalled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        assert!(drain.shutdown(Duration::from_secs(5)).await);

        let drain = Drain::new();
        drain.spawn(std::future::pending());
        assert!(!drain.shutdown(Duration::from_millis(20)).await);
    }
}
