//! Throughput over the last few seconds, and pacing to a rate. Sans-IO: time comes in as
//! milliseconds, nothing here reads a clock.

/// Seconds a [`RateMeter`] averages over.
pub const RATE_WINDOW_S: u64 = 10;

/// Bytes per second over the last [`RATE_WINDOW_S`] whole seconds (the current second, still
/// filling, is left out so a rate does not dip at every second's start).
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    /// (second, bytes) for the seconds that saw any, oldest first.
    buckets: std::collections::VecDeque<(u64, u64)>,
}

impl RateMeter {
    pub fn new() -> RateMeter {
        RateMeter::default()
    }

    /// Counts `bytes` done at `now_ms`.
    pub fn add(&mut self, now_ms: u64, bytes: u64) {
        let s = now_ms / 1000;
        match self.buckets.back_mut() {
            Some((last, b)) if *last == s => *b = b.saturating_add(bytes),
            _ => self.buckets.push_back((s, bytes)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(first, _)| first + RATE_WINDOW_S < s)
        {
            self.buckets.pop_front();
        }
    }

    /// Bytes per second over the last [`RATE_WINDOW_S`] whole seconds before `now_ms`.
    pub fn per_second(&self, now_ms: u64) -> u64 {
        let s = now_ms / 1000;
        let from = s.saturating_sub(RATE_WINDOW_S);
        let sum: u64 = self
            .buckets
            .iter()
            .filter(|(b, _)| *b >= from && *b < s)
            .fold(0u64, |a, (_, n)| a.saturating_add(*n));
        sum / RATE_WINDOW_S
    }
}

/// Paces work to `bytes_per_s`, allowing a burst: told the bytes about to be done and the time,
/// answers how long to wait first.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// When (µs, on the caller's clock) the work taken so far will have used up the rate.
    due_us: u64,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// Forgets the work taken so far: the pace starts afresh at `now_us` (the rate changed).
    pub fn restart(&mut self, now_us: u64) {
        self.due_us = now_us;
    }

    /// Takes `bytes` at `now_us` under `bytes_per_s` (`u64::MAX`: no limit); returns the µs to
    /// wait before doing them (0 within `burst_us` of the pace).
    pub fn take(&mut self, now_us: u64, bytes: u64, bytes_per_s: u64, burst_us: u64) -> u64 {
        if bytes_per_s == u64::MAX || bytes_per_s == 0 {
            self.due_us = now_us;
            return 0;
        }
        let start = self.due_us.max(now_us);
        let cost = (bytes as u128 * 1_000_000 / bytes_per_s as u128).min(u64::MAX as u128) as u64;
        self.due_us = start.saturating_add(cost);
        self.due_us.saturating_sub(now_us).saturating_sub(burst_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_averages_whole_seconds_of_the_window() {
        let mut m = RateMeter::new();
        assert_eq!(m.per_second(50_000), 0);
        for s in 0..20u64 {
            m.add(s * 1000 + 500, 1000);
        }
        // Seconds 10..19 done, second 20 not yet started: 1000/s.
        assert_eq!(m.per_second(20_000), 1000);
        // The second still filling does not count.
        m.add(20_100, 1_000_000);
        assert_eq!(m.per_second(20_200), 1000);
        assert_eq!(m.per_second(21_000), (9 * 1000 + 1_000_000) / 10);
        // Nothing for a while: the rate falls to zero.
        assert_eq!(m.per_second(40_000), 0);
    }

    #[test]
    fn old_buckets_are_dropped() {
        let mut m = RateMeter::new();
        for s in 0..1000u64 {
            m.add(s * 1000, 1);
        }
        assert!(m.buckets.len() <= RATE_WINDOW_S as usize + 1);
    }

    #[test]
    fn the_pacer_holds_work_to_the_rate() {
        let mut p = Pacer::new();
        // 1 MB at 1 MB/s: the first is free within the burst, the next waits a second.
        assert_eq!(p.take(0, 1_000_000, 1_000_000, 1_000_000), 0);
        assert_eq!(p.take(0, 1_000_000, 1_000_000, 1_000_000), 1_000_000);
        // Later, idle time is not banked beyond the burst.
        assert_eq!(p.take(10_000_000, 500_000, 1_000_000, 0), 500_000);
        // No limit.
        assert_eq!(p.take(10_000_000, u64::MAX, u64::MAX, 0), 0);
        assert_eq!(p.take(10_000_000, 1, 1, 0), 1_000_000);
        // A restart forgives what was owed.
        assert_eq!(p.take(10_000_000, 10_000_000, 1_000_000, 0), 11_000_000);
        p.restart(10_000_000);
        assert_eq!(p.take(10_000_000, 1_000_000, 1_000_000, 0), 1_000_000);
    }
}
