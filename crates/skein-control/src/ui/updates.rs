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
//! stops being told within minutes. At most [`MAX_WATCHERS`] streams are open at once,
//! and at most [`MAX_PER_TOKEN`] of them for one read-only dashboard token, so that one
//! viewer's credential cannot take every place (a page polls when refused, and tries the
//! stream again a minute later). The admin token is not held to the second bound: it
//! may do anything else anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Streams open at once, for every credential together.
pub const MAX_WATCHERS: usize = 64;

/// Streams open at once for one read-only dashboard token (its sessions included).
pub const MAX_PER_TOKEN: usize = 16;

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

/// Streams open now: in all, and per dashboard token (only tokens with one open).
#[derive(Debug, Default)]
struct Open {
    all: usize,
    by_token: HashMap<String, usize>,
}

/// The open streams' counts.
#[derive(Debug, Default, Clone)]
pub struct Watchers(Arc<Mutex<Open>>);

/// One open stream; dropping it (the browser went) frees its place.
#[derive(Debug)]
pub struct Watching {
    open: Arc<Mutex<Open>>,
    token: Option<String>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.all -= 1;
        if let Some(token) = &self.token {
            if let Some(n) = open.by_token.get_mut(token) {
                *n -= 1;
                if *n == 0 {
                    open.by_token.remove(token);
                }
            }
        }
    }
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// Every place is taken.
    #[error("{MAX_WATCHERS} dashboard pages are watching this control plane, the most it serves at once; close one, or the page polls instead")]
    All,
    /// This dashboard token holds its share.
    #[error("this read-only dashboard token already has {MAX_PER_TOKEN} pages watching, the most one token may; close one (or give each viewer a token of their own: skein token create --dashboard --read-only), or the page polls instead")]
    Token,
}

impl Watchers {
    /// A place for one more stream of a caller holding the dashboard token `token` (none:
    /// the admin token), or why there is none.
    pub fn enter(&self, token: Option<&str>) -> Result<Watching, Full> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if open.all >= MAX_WATCHERS {
            return Err(Full::All);
        }
        if let Some(token) = token {
            let n = open.by_token.entry(token.to_string()).or_default();
            if *n >= MAX_PER_TOKEN {
                return Err(Full::Token);
            }
            *n += 1;
        }
        open.all += 1;
        Ok(Watching {
            open: self.0.clone(),
            token: token.map(str::to_string),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).all
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
        let held: Vec<Watching> = (0..MAX_WATCHERS).map(|_| w.enter(None).unwrap()).collect();
        assert_eq!(w.enter(None).unwrap_err(), Full::All, "the bound holds");
        assert_eq!(w.enter(Some("t1")).unwrap_err(), Full::All);
        assert_eq!(w.open(), MAX_WATCHERS);
        drop(held);
        assert_eq!(w.open(), 0);
        assert!(w.enter(None).is_ok());
    }

    #[test]
    fn one_dashboard_token_holds_at_most_its_share() {
        let w = Watchers::default();
        let one: Vec<Watching> = (0..MAX_PER_TOKEN)
            .map(|_| w.enter(Some("t1")).unwrap())
            .collect();
        assert_eq!(w.enter(Some("t1")).unwrap_err(), Full::Token);
        let other = w.enter(Some("t2")).expect("another token has places");
        let admin = w
            .enter(None)
            .expect("the admin token is held to the total only");
        assert_eq!(w.open(), MAX_PER_TOKEN + 2);
        drop(one);
        assert!(w.enter(Some("t1")).is_ok(), "places come back");
        drop((other, admin));
        assert_eq!(
            w.0.lock().unwrap().by_token.len(),
            0,
            "no token is remembered without a stream"
        );
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
