//! Concurrency limits that refuse at once instead of queueing without bound: the
//! `connectionPool` of a destination's `BackendPolicy` (requests in flight, requests
//! waiting, opaque connections open), enforced by the caller's proxy.
//!
//! A [`Limiter`] admits up to `max` holders; up to `max_waiting` more may wait (first come,
//! first served) for one to finish; anyone beyond is refused on the spot, so a caller
//! learns in microseconds that the service is saturated, and the proxy's memory stays
//! flat however many callers pile on. Limits belong to the policy, not to one
//! configuration: an unchanged policy keeps its limiter (and its holders) across pushes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admits at most `max` at once, lets `max_waiting` more wait.
#[derive(Debug)]
pub struct Limiter {
    permits: Arc<Semaphore>,
    max: u32,
    max_waiting: u32,
    waiting: AtomicU32,
}

/// Held while admitted; dropping it admits the next.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

/// Why a [`Limiter`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max` are in and none may wait.
    Max(u32),
    /// `max` are in and `max_waiting` already wait.
    Waiting(u32),
}

impl Limiter {
    /// A limiter admitting `max` at once with `max_waiting` waiting.
    pub fn new(max: u32, max_waiting: u32) -> Self {
        Limiter {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            max_waiting,
            waiting: AtomicU32::new(0),
        }
    }

    /// Admits now if there is room, otherwise waits if few enough already do, otherwise
    /// refuses at once.
    pub async fn admit(&self) -> Result<Admitted, Full> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(Admitted(permit));
        }
        if self.max_waiting == 0 {
            return Err(Full::Max(self.max));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Waiting(self.max_waiting));
        }
        // Counted as waiting until admitted or abandoned (the request cancelled).
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => Ok(Admitted(permit)),
            // The semaphore is never closed.
            Err(_) => Err(Full::Max(self.max)),
        }
    }

    /// Admits now or refuses: for connections, which never wait.
    pub fn try_admit(&self) -> Result<Admitted, Full> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map(Admitted)
            .map_err(|_| Full::Max(self.max))
    }

    /// Holders now.
    pub fn in_use(&self) -> u32 {
        self.max - self.permits.available_permits() as u32
    }

    /// Whether this limiter enforces exactly these limits.
    pub fn is(&self, max: u32, max_waiting: u32) -> bool {
        self.max == max && self.max_waiting == max_waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn admits_the_max_lets_some_wait_and_refuses_the_rest_at_once() {
        let l = Arc::new(Limiter::new(2, 1));
        let a = l.admit().await.unwrap();
        let _b = l.admit().await.unwrap();
        assert_eq!(l.in_use(), 2);
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.admit().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            l.admit().await.unwrap_err(),
            Full::Waiting(1),
            "the queue is full"
        );
        drop(a);
        waiter
            .await
            .unwrap()
            .expect("the waiter got in when one left");
        let none_wait = Limiter::new(1, 0);
        let _held = none_wait.admit().await.unwrap();
        assert_eq!(none_wait.admit().await.unwrap_err(), Full::Max(1));
        assert_eq!(none_wait.try_admit().unwrap_err(), Full::Max(1));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_frees_its_place() {
        let l = Arc::new(Limiter::new(1, 1));
        let _held = l.admit().await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(10), l.admit()).await;
        assert!(cancelled.is_err(), "it waited");
        let again = tokio::time::timeout(Duration::from_millis(10), l.admit()).await;
        assert!(
            again.is_err(),
            "it waited again instead of being refused as a second waiter"
        );
    }
}
