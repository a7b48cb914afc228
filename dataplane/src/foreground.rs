//! Whether the node is serving: client requests in flight (HTTP API, S3, tus), peer shard I/O,
//! and when the last of them ended. Background work that competes with them for the drives
//! (the continuous scrub) slows down while the node is serving.
//!
//! Process-wide, because a node is a process and its executors share its drives.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Milliseconds since [`epoch`] of the last sign of foreground work.
static LAST_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Foreground work is going on now (a response body chunk went out, for example).
pub fn touch() {
    LAST_MS.store(now_ms(), Ordering::Relaxed);
}

/// A request in flight until dropped.
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        touch();
    }
}

/// Marks a request in flight until the returned guard is dropped.
pub fn begin() -> InFlight {
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    touch();
    InFlight(())
}

/// Whether a request is in flight, or foreground work happened less than `quiet` ago.
pub fn busy(quiet: Duration) -> bool {
    IN_FLIGHT.load(Ordering::Relaxed) > 0
        || now_ms().saturating_sub(LAST_MS.load(Ordering::Relaxed)) < quiet.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_while_in_flight_and_for_the_quiet_time_after() {
        // The statics are shared by this one test only.
        let g = begin();
        assert!(busy(Duration::ZERO));
        drop(g);
        assert!(busy(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!busy(Duration::from_millis(10)));
        touch();
        assert!(busy(Duration::from_millis(10)));
    }
}
