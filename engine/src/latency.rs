//! Deadlines from observed latency. Sans-IO: durations come in as microseconds, nothing here
//! reads a clock.
//!
//! A [`LatencyWindow`] keeps the last [`WINDOW`] latencies of one kind of operation (a shard
//! read, a peer round trip) and answers how long to wait before an operation counts as late:
//! a multiple of a high quantile of what was observed, within a floor and a cap. The floor keeps
//! a burst of fast operations from making an ordinary hiccup look fatal; the cap bounds what one
//! hung peer can cost a request. Before [`MIN_SAMPLES`] are in, the cap's worth of patience is
//! not spent on a guess: the configured `initial` is used.

/// Latencies kept.
pub const WINDOW: usize = 256;
/// Samples needed before the window's quantile is trusted.
pub const MIN_SAMPLES: usize = 16;

/// How a deadline follows observed latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadlineRule {
    /// The quantile of observed latencies the deadline is a multiple of (0.0..=1.0).
    pub quantile: f64,
    /// The multiple.
    pub factor: f64,
    /// Never less than this, in µs.
    pub floor_us: u64,
    /// Never more than this, in µs.
    pub cap_us: u64,
    /// Until [`MIN_SAMPLES`] are observed, in µs.
    pub initial_us: u64,
}

impl DeadlineRule {
    /// When a shard read is late enough that a read of another shard (parity) is started
    /// beside it: three times the 90th percentile, between 30 ms and 300 ms.
    pub const HEDGE: DeadlineRule = DeadlineRule {
        quantile: 0.9,
        factor: 3.0,
        floor_us: 30_000,
        cap_us: 300_000,
        initial_us: 100_000,
    };
    /// When a peer operation (open, a write's or sync's answer) is given up on: eight times the
    /// 99th percentile, between 2 s and 10 s (a peer's fdatasync on a busy disk takes hundreds
    /// of milliseconds; a hung peer must not hold a PUT for long).
    pub const PEER_OP: DeadlineRule = DeadlineRule {
        quantile: 0.99,
        factor: 8.0,
        floor_us: 2_000_000,
        cap_us: 10_000_000,
        initial_us: 3_000_000,
    };
}

/// The last [`WINDOW`] latencies of one kind of operation.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    samples: Vec<u64>,
    next: usize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyWindow {
    pub fn new() -> LatencyWindow {
        LatencyWindow {
            samples: Vec::with_capacity(WINDOW),
            next: 0,
        }
    }

    /// Records one operation's latency, replacing the oldest once the window is full.
    pub fn observe(&mut self, us: u64) {
        if self.samples.len() < WINDOW {
            self.samples.push(us);
        } else {
            self.samples[self.next] = us;
        }
        self.next = (self.next + 1) % WINDOW;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q` quantile (nearest rank) of the latencies kept, if any.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut s = self.samples.clone();
        s.sort_unstable();
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        Some(s[rank - 1])
    }

    /// How long, in µs, an operation may take before it counts as late under `rule`.
    pub fn deadline_us(&self, rule: DeadlineRule) -> u64 {
        let base = if self.samples.len() < MIN_SAMPLES {
            rule.initial_us
        } else {
            let q = self.quantile(rule.quantile).unwrap_or(rule.initial_us) as f64;
            let d = q * rule.factor;
            if d >= u64::MAX as f64 {
                u64::MAX
            } else {
                d as u64
            }
        };
        base.clamp(rule.floor_us, rule.cap_us.max(rule.floor_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_enough_samples_the_initial_deadline_holds() {
        let mut w = LatencyWindow::new();
        assert_eq!(w.deadline_us(DeadlineRule::HEDGE), 100_000);
        for _ in 0..MIN_SAMPLES - 1 {
            w.observe(1);
        }
        assert_eq!(w.deadline_us(DeadlineRule::HEDGE), 100_000);
        w.observe(1);
        // Fast reads: the floor.
        assert_eq!(w.deadline_us(DeadlineRule::HEDGE), 30_000);
    }

    #[test]
    fn the_deadline_follows_the_quantile_within_floor_and_cap() {
        let mut w = LatencyWindow::new();
        // 90 % at 20 ms, 10 % at 1 s: the 90th percentile is 20 ms, the deadline 60 ms.
        for i in 0..100 {
            w.observe(if i % 10 == 9 { 1_000_000 } else { 20_000 });
        }
        assert_eq!(w.quantile(0.9), Some(20_000));
        assert_eq!(w.deadline_us(DeadlineRule::HEDGE), 60_000);
        // The 99th percentile is 1 s: a peer operation gets eight of them.
        assert_eq!(w.deadline_us(DeadlineRule::PEER_OP), 8_000_000);
        // Slow everything: the hedge is capped.
        for _ in 0..WINDOW {
            w.observe(400_000);
        }
        assert_eq!(w.deadline_us(DeadlineRule::HEDGE), 300_000);
    }

    #[test]
    fn the_window_forgets_the_oldest() {
        let mut w = LatencyWindow::new();
        for _ in 0..WINDOW {
            w.observe(5_000_000);
        }
        assert_eq!(w.quantile(0.5), Some(5_000_000));
        for _ in 0..WINDOW {
            w.observe(10);
        }
        assert_eq!(w.len(), WINDOW);
        assert_eq!(w.quantile(1.0), Some(10));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut w = LatencyWindow::new();
        assert_eq!(w.quantile(0.5), None);
        for us in [5, 1, 4, 2, 3] {
            w.observe(us);
        }
        assert_eq!(w.quantile(0.0), Some(1));
        assert_eq!(w.quantile(0.5), Some(3));
        assert_eq!(w.quantile(0.99), Some(5));
        assert_eq!(w.quantile(7.0), Some(5));
    }

    #[test]
    fn absurd_latencies_do_not_overflow() {
        let mut w = LatencyWindow::new();
        for _ in 0..WINDOW {
            w.observe(u64::MAX);
        }
        assert_eq!(w.deadline_us(DeadlineRule::PEER_OP), 10_000_000);
    }
}
