//! Concurrency limits that refuse at once instead of queueing without bound: the
//! `connectionPool` of a destination's `BackendPolicy` (requests in flight, requests
//! waiting, opaque connections open), enforced by the caller's proxy.
//!
//! A [`Limiter`] admits up to `max` holders; up to `max_waiting` more may wait (first come,
//! first served) for one to finish; anyone beyond is refused on the spot, so a caller
//! learns in microseconds that the service is saturated, and the proxy's memory stays
//! flat however many callers pile on. Limits belong to the policy, not to one
//! configuration: a policy keeps its limiter (and its holders) across pushes, and a
//! changed limit resizes it, so requests admitted under the old limit still count.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admits at most `max` at once, lets `max_waiting` more wait.
#[derive(Debug)]
pub struct Limiter {
    permits: Arc<Semaphore>,
    max: AtomicU32,
    max_waiting: AtomicU32,
    waiting: AtomicU32,
    /// Permits to retire as holders leave, after the limit was lowered below what was
    /// in use.
    debt: Arc<AtomicU32>,
}

/// Held while admitted; dropping it admits the next (or retires the permit, if the
/// limit was lowered meanwhile).
#[derive(Debug)]
pub struct Admitted {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicU32>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if owed.is_ok() {
            permit.forget();
        }
    }
}

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
            max: AtomicU32::new(max),
            max_waiting: AtomicU32::new(max_waiting),
            waiting: AtomicU32::new(0),
            debt: Arc::new(AtomicU32::new(0)),
        }
    }

    fn admitted(&self, permit: OwnedSemaphorePermit) -> Admitted {
        Admitted {
            permit: Some(permit),
            debt: self.debt.clone(),
        }
    }

    /// Changes the limits in place: a higher `max` admits more at once; a lower one
    /// retires free permits now and the rest as holders leave.
    pub fn resize(&self, max: u32, max_waiting: u32) {
        self.max_waiting.store(max_waiting, Ordering::Release);
        self.set_max(max);
    }

    /// Changes `max` alone, as [`Limiter::resize`] does.
    pub fn set_max(&self, max: u32) {
        let old = self.max.swap(max, Ordering::AcqRel);
        if max > old {
            // Repay what is still owed first.
            let mut more = max - old;
            while more > 0 {
                let owed = self.debt.load(Ordering::Acquire);
                if owed == 0 {
                    break;
                }
                let paid = owed.min(more);
                if self
                    .debt
                    .compare_exchange(owed, owed - paid, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    more -= paid;
                }
            }
            self.permits.add_permits(more as usize);
        } else if max < old {
            let shrink = old - max;
            let retired = self.permits.forget_permits(shrink as usize) as u32;
            self.debt.fetch_add(shrink - retired, Ordering::AcqRel);
        }
    }

    /// Admits now if there is room, otherwise waits if few enough already do, otherwise
    /// refuses at once.
    pub async fn admit(&self) -> Result<Admitted, Full> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(self.admitted(permit));
        }
        let (max, max_waiting) = (
            self.max.load(Ordering::Acquire),
            self.max_waiting.load(Ordering::Acquire),
        );
        if max_waiting == 0 {
            return Err(Full::Max(max));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::Waiting(max_waiting));
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
            Ok(permit) => Ok(self.admitted(permit)),
            // The semaphore is never closed.
            Err(_) => Err(Full::Max(max)),
        }
    }

    /// Admits now or refuses: for connections, which never wait.
    pub fn try_admit(&self) -> Result<Admitted, Full> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(self.admitted(permit)),
            Err(_) => Err(Full::Max(self.max.load(Ordering::Acquire))),
        }
    }

    /// The most admitted at once now.
    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Acquire)
    }

    /// Holders now.
    pub fn in_use(&self) -> u32 {
        let max = self.max.load(Ordering::Acquire) + self.debt.load(Ordering::Acquire);
        max.saturating_sub(self.permits.available_permits() as u32)
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
    async fn a_lower_limit_counts_those_already_in_and_a_higher_one_admits_more() {
        let l = Limiter::new(3, 0);
        let held: Vec<_> = (0..3).map(|_| l.try_admit().unwrap()).collect();
        l.resize(1, 0);
        let mut held = held.into_iter();
        drop(held.next());
        assert!(l.try_admit().is_err(), "two still in, limit one");
        drop(held.next());
        assert!(l.try_admit().is_err(), "one still in, limit one");
        drop(held.next());
        let one = l.try_admit().expect("none in: one may enter");
        assert!(l.try_admit().is_err());
        l.resize(3, 0);
        let _two = l.try_admit().unwrap();
        let _three = l.try_admit().unwrap();
        assert!(l.try_admit().is_err(), "three at most");
        drop(one);
        assert_eq!(l.in_use(), 2);
        // Lowered while in use, then raised before they left: nothing is lost.
        l.resize(1, 0);
        l.resize(4, 0);
        let _four = l.try_admit().unwrap();
        let _five = l.try_admit().unwrap();
        assert!(l.try_admit().is_err(), "four at most");
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
