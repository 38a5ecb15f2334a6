//! The time certificates are checked against.
//!
//! X.509 validity is wall-clock time, and a host's wall clock jumps: an NTP step, a
//! virtual machine resumed with a stale clock, someone's `date -s`. Checked against the
//! host's clock, a jump larger than the life left in a certificate makes every peer's
//! certificate look expired (forward) or not yet valid (backward), and a proxy would refuse
//! the whole mesh, and time its own renewal wrongly.
//!
//! So a proxy keeps the time of the CA that issues every certificate it checks: the control
//! plane stamps each message it sends with its wall clock, and between stamps the proxy
//! carries the last reading forward by the host's boot-time clock (`CLOCK_BOOTTIME`), which
//! never jumps and, unlike the monotonic clock, also counts time the host was suspended.
//! Until the first stamp the host's wall clock serves (a proxy's first contact with the
//! control plane is checked by it). The stamps come over the proxy's authenticated control
//! connection, so no peer can move this clock.
//!
//! The control plane itself is the mesh's time: its [`MeshClock`] is never stamped and
//! reads the host's wall clock.

use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;

/// How far behind the time kept a stamp may be and still count as late rather than as a
/// correction of the clock.
const LATE: Duration = Duration::from_secs(5);

/// A reading of the control plane's clock and the host's boot-time clock at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    control: SystemTime,
    boot: Duration,
}

/// Wall-clock time as the control plane keeps it, carried forward between its stamps by
/// a clock that does not jump. Shared by every TLS configuration of one proxy (it is their
/// rustls [`TimeProvider`]) and by its renewal timer.
#[derive(Debug, Default)]
pub struct MeshClock {
    anchor: RwLock<Option<Anchor>>,
}

impl MeshClock {
    /// A clock that reads the host's wall clock until its first [`MeshClock::observe`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `control_unix_ms` (the control plane's wall clock when it sent a message,
    /// Unix milliseconds) as the time now. Zero or less (a control plane that does not
    /// stamp its messages) changes nothing.
    pub fn observe(&self, control_unix_ms: i64) {
        self.observe_at(control_unix_ms, boot_time());
    }

    fn observe_at(&self, control_unix_ms: i64, boot: Duration) {
        let Ok(ms) = u64::try_from(control_unix_ms) else {
            return;
        };
        if ms == 0 {
            return;
        }
        let control = UNIX_EPOCH + Duration::from_millis(ms);
        let mut anchor = self.anchor.write().unwrap_or_else(PoisonError::into_inner);
        // A stamp a little behind the time kept is a late one (the message waited in a
        // queue, or came from a replica a little behind): keeping the later time, the
        // clock never steps back for it. One far behind is a correction, and is taken.
        if let Some(current) = anchor.map(|a| a.control + boot.saturating_sub(a.boot)) {
            if control < current && current.duration_since(control).unwrap_or_default() < LATE {
                return;
            }
        }
        *anchor = Some(Anchor { control, boot });
    }

    /// The time now: the last stamp plus the boot-time clock's advance since, or the host's
    /// wall clock before any stamp.
    pub fn now(&self) -> SystemTime {
        self.at(boot_time()).unwrap_or_else(SystemTime::now)
    }

    fn at(&self, boot: Duration) -> Option<SystemTime> {
        let anchor = (*self.anchor.read().unwrap_or_else(PoisonError::into_inner))?;
        Some(anchor.control + boot.saturating_sub(anchor.boot))
    }

    /// How far the host's wall clock is ahead of this one, in milliseconds (negative:
    /// behind); `None` before the first stamp.
    pub fn host_offset_ms(&self) -> Option<i64> {
        let mesh = self.at(boot_time())?;
        let host = SystemTime::now();
        Some(match host.duration_since(mesh) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        })
    }
}

impl TimeProvider for MeshClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            self.now().duration_since(UNIX_EPOCH).ok()?,
        ))
    }
}

/// Time since the host booted, suspended time included; it never jumps.
fn boot_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Not expected on Linux; the monotonic clock is the next best (it only misses
        // suspended time).
        return monotonic_fallback();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn monotonic_fallback() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn before_any_stamp_it_reads_the_host_clock() {
        let clock = MeshClock::new();
        let before = SystemTime::now();
        let now = clock.now();
        assert!(now >= before && now <= SystemTime::now());
        assert_eq!(clock.host_offset_ms(), None);
    }

    #[test]
    fn a_stamp_is_carried_forward_by_the_boot_clock_whatever_the_host_clock_does() {
        let clock = MeshClock::new();
        // The control plane says 2026-01-01T00:00:00Z when the host has been up 100 s.
        let stamp = 1_767_225_600_000;
        clock.observe_at(stamp, 100 * S);
        let at = |boot| clock.at(boot).unwrap();
        assert_eq!(
            at(100 * S),
            UNIX_EPOCH + Duration::from_millis(stamp as u64)
        );
        assert_eq!(
            at(190 * S),
            at(100 * S) + 90 * S,
            "advances with the boot clock"
        );
        // A boot reading older than the stamp's (never happens) does not run it backwards.
        assert_eq!(at(50 * S), at(100 * S));
        // A later stamp replaces the earlier one, even if it says an earlier time by more
        // than a late message could (a correction).
        clock.observe_at(stamp - 6_000, 100 * S);
        assert_eq!(
            at(100 * S),
            UNIX_EPOCH + Duration::from_millis(stamp as u64) - 6 * S
        );
    }

    #[test]
    fn a_late_stamp_never_steps_the_clock_back() {
        let clock = MeshClock::new();
        let stamp = 1_767_225_600_000_i64;
        clock.observe_at(stamp, 100 * S);
        let kept = clock.at(110 * S).unwrap();
        // Sent 2 s before it arrived (queued): the clock keeps its time.
        clock.observe_at(stamp + 8_000, 110 * S);
        assert_eq!(clock.at(110 * S).unwrap(), kept);
        // A stamp ahead moves it forward.
        clock.observe_at(stamp + 12_000, 110 * S);
        assert_eq!(clock.at(110 * S).unwrap(), kept + 2 * S);
    }

    #[test]
    fn an_unstamped_message_changes_nothing() {
        let clock = MeshClock::new();
        clock.observe_at(0, 10 * S);
        clock.observe_at(-5, 10 * S);
        assert_eq!(clock.at(10 * S), None);
        clock.observe_at(1_000, 10 * S);
        clock.observe_at(0, 20 * S);
        assert_eq!(clock.at(10 * S), Some(UNIX_EPOCH + S));
    }

    #[test]
    fn rustls_is_given_the_stamped_time() {
        let clock = MeshClock::new();
        // A stamp a day behind the host's clock: rustls sees the stamp's day.
        let host = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let day_ago = host - Duration::from_secs(86_400);
        clock.observe(day_ago.as_millis() as i64);
        let given = clock.current_time().unwrap().as_secs();
        assert!(
            given.abs_diff(day_ago.as_secs()) <= 2,
            "{given} vs {}",
            day_ago.as_secs()
        );
        let offset = clock.host_offset_ms().unwrap();
        assert!((86_398_000..=86_402_000).contains(&offset), "{offset}");
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = boot_time();
        std::thread::sleep(Duration::from_millis(20));
        let b = boot_time();
        assert!(b > a && b - a >= Duration::from_millis(15), "{a:?} {b:?}");
    }
}
